"""Quantise a GGUF with llama.cpp's own quantiser (through llama-cpp-python), optionally guided by an importance
matrix computed here in PyTorch.

The importance matrix is, per linear layer, the mean squared input activation of each input column over the
calibration text: the weights that multiply large activations matter most, so the quantiser spends its error
budget elsewhere. It is handed to llama.cpp through `llama_model_quantize_params.imatrix`, keyed by GGUF tensor
names, and saved as `imatrix.npz` so the run can be repeated.
"""

from __future__ import annotations

import ctypes
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from slmkit.pipelines.backends import llama_adapter
from slmkit.pipelines.core.errors import SlmkitError


@dataclass(frozen=True)
class QType:
    ftype: int  # llama_ftype
    block: int  # row length must be a multiple of this, else llama.cpp falls back to another type
    # A mixture: a function from (tensor name, row length) to the ggml type that tensor gets, or None to leave it
    # to llama.cpp's own rule for `ftype`. Passed to llama.cpp as exact-name overrides (`tt_overrides`).
    mixture: Callable[[str, int], str | None] | None = None
    # After the mixture: (tensor name, type) pairs in order of need, from the file's matrix names (which say how
    # many layers there are); each is taken while the file stays within `budget` times the F16 file
    # (mixture_types), and one that does not fit is passed over for the next.
    upgrades: Callable[[list[str]], list[tuple[str, str]]] | None = None
    budget: float = 0.0


KV_MATRIX = re.compile(r"blk\.(\d+)\.attn_(k|v)\.weight$")  # an attention key or value matrix, and its layer


def q4_k_nl(name: str, row: int) -> str | None:
    """Q4_K_NL: Q4_K_M's 4-bit budget for rows that K-quants cannot take.

    llama.cpp sends a matrix whose rows are not a multiple of 256 (SmolLM2's 576, Gemma 3 270M's 640) from
    Q4_K to Q5_0 and the tied embedding to Q8_0, which leaves SmolLM2's Q4_K_M at 6.3 bits per weight (0.39x
    its F16). Here every such matrix takes IQ4_NL, the 32-wide 4.5-bit type that uses the importance matrix;
    rows that fit 256 take Q4_K (not Q4_K_M's Q6_K for half the ffn_down: the bits buy more below). The
    attention key and value matrices take Q8_0: with grouped-query attention each of them serves several query
    heads, and they are small (5% of SmolLM2's weights). On the demo's fine-tuned SmolLM2
    (scripts/bench_quant_mixture.py): 0.30x the F16 file, 4.8 bits per weight, mean KLD 0.10 against F16
    where Q4_K_M's is 0.04 at 0.39x. Its alternatives at the same size do no better (a 5-bit embedding
    instead of 8-bit k/v: KLD within 0.006 either way), Q4_0 for IQ4_NL is 1.6x worse, and an 8-bit embedding
    costs 0.34x for a KLD still twice Q4_K_M's: at this size, 4-bit rows cost what they cost. With GPTQ
    (gptq.py) it is otherwise: 4-bit k/v paying for a 5-bit embedding come out 0.051 / 0.057 on general text /
    tickets against this rule's 0.061 / 0.054, which is why Q4_K_NL30 exists; this rule stays for models whose
    embedding is too large to pay for (Gemma 3 270M's is 63% of its weights)."""
    return "Q8_0" if KV_MATRIX.search(name) else all_4bit(name, row)


def all_4bit(name: str, row: int) -> str | None:
    """Every matrix 4-bit, attention keys and values too: Q4_K where rows fit 256, IQ4_NL where they fit 32."""
    if not name.endswith(".weight") or "norm" in name:
        return None  # norms and biases stay as llama.cpp keeps them (F32)
    return "Q4_K" if row % 256 == 0 else "IQ4_NL" if row % 32 == 0 else None


def more_bits(n_layers: int) -> list[int]:
    """The layers whose attention values llama.cpp's Q4_K_M gives more bits (its use_more_bits): the first and
    last eighth and every third layer between, integer division as in C."""
    return [i for i in range(n_layers) if i < n_layers // 8 or i >= 7 * n_layers // 8 or (i - n_layers // 8) % 3 == 2]


def embedding_then_values(names: list[str]) -> list[tuple[str, str]]:
    """Q4_K_NL30's upgrades, most needed first: the embedding to Q5_0 (tied, it is also the output matrix, and
    on SmolLM2 it takes most of GPTQ's gain), then each layer's attention values to Q5_0, llama.cpp's more-bits
    layers first. On the demo's model the embedding and 11 of 30 value matrices fit 0.30x."""
    layers = 1 + max((int(m.group(1)) for n in names if (m := re.match(r"blk\.(\d+)\.", n))), default=-1)
    favoured = more_bits(layers)
    order = favoured + [i for i in range(layers) if i not in favoured]
    return [("token_embd.weight", "Q5_0")] + [(f"blk.{i}.attn_v.weight", "Q5_0") for i in order]


# llama_ftype values of llama.cpp (LLAMA_FTYPE_MOSTLY_*); K-quants work on 256-wide super-blocks.
QTYPES: dict[str, QType] = {
    "Q4_0": QType(2, 32),
    "Q8_0": QType(7, 32),
    "Q4_K_M": QType(15, 256),
    "Q4_K_NL": QType(15, 32, q4_k_nl),
    # Every matrix 4-bit, then the embedding and attention values 5-bit while the file stays within 0.30x of F16
    "Q4_K_NL30": QType(15, 32, all_4bit, embedding_then_values, 0.30),
    "Q5_K_M": QType(17, 256),
    "Q6_K": QType(18, 256),
}


def _bytes(n: int, kind: str, align: int = 32) -> int:
    """Bytes `n` weights of `kind` take in a GGUF file, padded to its alignment."""
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[kind]]
    return -(-n // block * size // align) * align


SPARE = 1024  # bytes a budget keeps free: llama.cpp's file adds a few metadata keys (64 bytes on SmolLM2)


def mixture_types(src: Path, spec: QType) -> dict[str, str]:
    """Tensor name → ggml type name for each matrix of `src` the qtype's mixture decides, its upgrades taken
    while the file stays within its budget times the F16 file's size. Both sizes are counted as files: the
    source's metadata and vectors as they are (SmolLM2's tokenizer alone is 0.7% of its F16 file), each matrix
    at its type, padded. A matrix the mixture leaves to llama.cpp counts as F16, its largest fallback."""
    import gguf

    reader = gguf.GGUFReader(str(src))
    tensors = [t for t in reader.tensors if len(t.shape) >= 2]
    matrices = {t.name: int(t.n_elements) for t in tensors}
    rows = {t.name: int(t.shape[0]) for t in tensors}  # row length: what a block type must divide
    chosen = {name: kind for name in matrices if (kind := spec.mixture(name, rows[name])) is not None}
    if spec.upgrades:
        other = Path(src).stat().st_size - sum(_bytes(matrices[t.name], t.tensor_type.name) for t in tensors)
        budget = spec.budget * (other + sum(_bytes(n, "F16") for n in matrices.values()))
        total = other + sum(_bytes(n, chosen.get(name, "F16")) for name, n in matrices.items())
        for name, kind in spec.upgrades(list(matrices)):
            if name not in chosen or rows[name] % gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[kind]][0]:
                continue
            extra = _bytes(matrices[name], kind) - _bytes(matrices[name], chosen[name])
            if total + extra <= budget - SPARE:
                chosen[name], total = kind, total + extra
    return chosen


def mixture_overrides(src: Path, spec: QType) -> list[tuple[str, str]]:
    """(anchored tensor-name pattern, ggml type name) for each tensor of `src` the qtype's mixture decides."""
    return [(f"^{re.escape(name)}$", kind) for name, kind in mixture_types(src, spec).items()]


def check_qtype(name: str) -> str:
    if name not in QTYPES:
        raise SlmkitError(f"unknown qtype '{name}' (choose from {', '.join(QTYPES)})")
    return name


# ---------------------------------------------------------------------------------------------- imatrix
def each_matrix_input(model_dir: Path, token_chunks: list[list[int]], on_input: Callable[[str, object], None],
                      progress: Callable[[int, int], None] | None = None,
                      on_attention: Callable[[int, object], None] | None = None) -> None:
    """Run the HF model over the token chunks, calling on_input(GGUF tensor name, input tensor) before every
    matrix of the GGUF multiplies: the one pass both calibration statistics (importance matrix, GPTQ's second
    moments) are gathered in. Matrices that read one tensor (q/k/v, gate/up) are called one after the other
    with that same tensor object. With `on_attention`, each layer's attention probabilities are handed on as
    the layer computes them: on_attention(layer index, [heads, query, key] tensor). The model then runs its
    eager attention, the one that computes them; they are taken from each attention module's output, not
    collected by the model for the whole pass (30 layers of them are 0.3 GB at 512 tokens, 4.5 GB at 2,048)."""
    import torch
    from transformers import AutoModelForCausalLM

    from slmkit.pipelines.quantize.gguf_export import iter_linear_names, open_model

    m = open_model(model_dir)
    gguf_names = dict(iter_linear_names(m))
    if m.hp["tied"]:
        # Tied models have no output.weight: llama.cpp multiplies by token_embd, whose columns are lm_head's
        # input columns, so lm_head's activations are exactly the importance data that matrix needs.
        gguf_names["lm_head"] = "token_embd.weight"
    eager = {"attn_implementation": "eager"} if on_attention else {}
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32, **eager).eval()

    def hook_for(name: str):
        def hook(_module, args):
            on_input(name, args[0])
        return hook

    hooks = [module.register_forward_pre_hook(hook_for(gguf_names[name]))
             for name, module in model.named_modules()
             if isinstance(module, torch.nn.Linear) and name in gguf_names]
    if on_attention:
        def attention_hook(layer: int):
            def hook(_module, _args, output):
                if isinstance(output, tuple) and len(output) > 1 and output[1] is not None:
                    on_attention(layer, output[1][0])
            return hook

        hooks += [module.register_forward_hook(attention_hook(int(found.group(1))))
                  for name, module in model.named_modules()
                  if (found := re.search(r"layers\.(\d+)\.self_attn$", name))]
    try:
        with torch.no_grad():
            for i, chunk in enumerate(token_chunks):
                model(torch.tensor([chunk]))
                if progress:
                    progress(i + 1, len(token_chunks))
    finally:
        for h in hooks:
            h.remove()


def compute_imatrix(model_dir: Path, token_chunks: list[list[int]], progress: Callable[[int, int], None] | None = None
                    ) -> dict[str, np.ndarray]:
    """GGUF tensor name → mean squared input activation per input column, from forward hooks on nn.Linear."""
    import torch

    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def add(name: str, x) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).to(torch.float32)
        sums[name] = sums.get(name, 0) + (x * x).sum(0)
        counts[name] = counts.get(name, 0) + x.shape[0]

    each_matrix_input(model_dir, token_chunks, add, progress)
    return {k: (sums[k] / counts[k]).numpy().astype(np.float32) for k in sums}


def save_imatrix(imatrix: dict[str, np.ndarray], path: Path) -> None:
    partial = path.with_name(path.name + ".partial.npz")
    np.savez(partial, **imatrix)
    os.replace(partial, path)


# ---------------------------------------------------------------------------------------------- quantise
def quantize(src: Path, dst: Path, qtype: str, imatrix: dict[str, np.ndarray] | None = None,
             threads: int | None = None, moments: dict[str, np.ndarray] | None = None,
             progress: Callable[[int, int], None] | None = None) -> dict:
    """Write `dst` (atomic: `.partial` renamed when llama.cpp reports success and, with `moments`, once GPTQ has
    rewritten its 4-bit blocks: pipelines/quantize/gptq.py); returns what it chose per tensor."""
    import llama_cpp

    spec = QTYPES[check_qtype(qtype)]
    dst = Path(dst)
    partial = dst.with_name(dst.name + ".partial")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = spec.ftype
    params.nthread = threads or max(1, (os.cpu_count() or 2) // 2)
    keep = []  # ctypes buffers must outlive the call
    if imatrix:
        entries = (llama_cpp.llama_model_imatrix_data * (len(imatrix) + 1))()
        for i, (name, values) in enumerate(imatrix.items()):
            buf = np.ascontiguousarray(values, dtype=np.float32)
            keep.append(buf)
            entries[i].name = name.encode()
            entries[i].data = buf.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            entries[i].size = buf.size
        entries[len(imatrix)].name = None  # the list ends with a NULL name
        keep.append(entries)
        params.imatrix = ctypes.cast(entries, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
    if spec.mixture is not None:
        import gguf

        rules = mixture_overrides(Path(src), spec)
        table = (llama_cpp.llama_model_tensor_override * (len(rules) + 1))()
        for i, (pattern, kind) in enumerate(rules):
            table[i].pattern = pattern.encode()
            table[i].type = gguf.GGMLQuantizationType[kind].value
        table[len(rules)].pattern = None  # the list ends with a NULL pattern
        keep.append(table)
        params.tt_overrides = ctypes.cast(table, ctypes.POINTER(llama_cpp.llama_model_tensor_override))
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        with llama_adapter.captured_log() as log:
            rc = llama_cpp.llama_model_quantize(str(src).encode(), str(partial).encode(), ctypes.byref(params))
        if rc != 0 or not partial.is_file():
            tail = "".join(log[-20:])
            raise SlmkitError(f"llama.cpp could not quantise {src} to {qtype} (code {rc}):\n{tail}")
        rewritten = None
        if moments:
            from slmkit.pipelines.quantize import gptq

            rewritten = gptq.rewrite(partial, Path(src), moments, progress)
        os.replace(partial, dst)
    except OSError as err:
        raise SlmkitError(f"{dst}: cannot write the quantised GGUF ({err.strerror})") from None
    finally:
        partial.unlink(missing_ok=True)
    report = tensor_report(dst, qtype)
    text = "".join(log)
    # llama.cpp says which matrices it found importance data for; report it so a name mismatch cannot hide.
    report["imatrix_entries"] = len(imatrix) if imatrix else 0
    report["imatrix_missing"] = sorted(set(_MISSING.findall(text)))
    if rewritten is not None:
        report["gptq"] = rewritten
    return report


_MISSING = re.compile(r"did not find weights for (\S+)")


def tensor_report(path: Path, qtype: str | None = None) -> dict:
    """Types chosen per tensor, and the matrices whose rows forced llama.cpp off the requested type."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    types: dict[str, int] = {}
    fallbacks = []
    n_params = 0
    block = QTYPES[qtype].block if qtype else 1
    for t in reader.tensors:
        kind = t.tensor_type.name
        types[kind] = types.get(kind, 0) + 1
        n_params += int(t.n_elements)
        row = int(t.shape[0])
        if qtype and len(t.shape) >= 2 and row % block:
            fallbacks.append({"tensor": t.name, "row": row, "type": kind,
                              "why": f"row length {row} not divisible by {block}"})
    size = path.stat().st_size
    return {"file": path.name, "bytes": size, "n_params": n_params, "bits_per_weight": round(size * 8 / n_params, 3),
            "tensor_types": types, "fallbacks": fallbacks}
