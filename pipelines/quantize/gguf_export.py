"""slmkit's own HF → GGUF exporter, written on gguf-py (GGUFWriter, TensorNameMap, the architecture constants).

One tensor at a time: tensor infos are declared from the safetensors headers first, then each tensor is read,
converted and written before the next is touched, so peak memory stays near one tensor. The file is written
as `<name>.partial` and renamed into place only when complete, so a crash never leaves a GGUF that looks whole.

Layout choices follow what llama.cpp's loader expects (learnt from reading its converter, not copied):
- llama-style models store Q and K with the rotary halves interleaved per head, so their rows are permuted;
- 1-D tensors (norms, biases) stay F32; matrices take the chosen out-type;
- tied embeddings write no `output.weight` (llama.cpp reuses `token_embd.weight`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from slmkit.pipelines.core.errors import SlmkitError

OUTTYPES = ("f16", "f32", "bf16")


# ---------------------------------------------------------------------------------------------- architectures
@dataclass(frozen=True)
class ArchSpec:
    """How one HF architecture maps to a llama.cpp one."""

    gguf_arch: str  # key into gguf.MODEL_ARCH
    permute_qk: bool = False  # llama-style rotary layout needs Q/K rows interleaved per head
    norm_plus_one: bool = False  # Gemma's RMSNorm multiplies by (1 + w); llama.cpp by w
    extra_hparams: Callable[[Any, dict], None] | None = None  # writer, HF config → extra keys
    skip: tuple[str, ...] = ()  # HF tensor names llama.cpp has no use for


def _gemma_extra(w, cfg: dict) -> None:
    # llama.cpp fixes Gemma's local/global layer pattern itself (2 for Gemma 2, 6 for Gemma 3); the window
    # length, the soft-caps and the local layers' rope base come from the file.
    if cfg.get("sliding_window"):
        w.add_sliding_window(int(cfg["sliding_window"]))
    if cfg.get("attn_logit_softcapping"):
        w.add_attn_logit_softcapping(float(cfg["attn_logit_softcapping"]))
    if cfg.get("final_logit_softcapping"):
        w.add_final_logit_softcapping(float(cfg["final_logit_softcapping"]))
    local = (cfg.get("rope_parameters") or {}).get("sliding_attention") or {}
    base = local.get("rope_theta") or cfg.get("rope_local_base_freq")
    if base:
        w.add_rope_freq_base_swa(float(base))


def _phi3_extra(w, cfg: dict) -> None:
    if cfg.get("sliding_window"):
        w.add_sliding_window(int(cfg["sliding_window"]))


# Rows: HF `architectures[0]` → spec. llama-style covers Llama 2/3, SmolLM/SmolLM2 and Mistral.
ARCHITECTURES: dict[str, ArchSpec] = {
    "LlamaForCausalLM": ArchSpec("LLAMA", permute_qk=True, skip=("rotary_emb.inv_freq",)),
    "MistralForCausalLM": ArchSpec("LLAMA", permute_qk=True, skip=("rotary_emb.inv_freq",)),
    "Qwen2ForCausalLM": ArchSpec("QWEN2"),
    "Qwen3ForCausalLM": ArchSpec("QWEN3"),
    "Gemma2ForCausalLM": ArchSpec("GEMMA2", norm_plus_one=True, extra_hparams=_gemma_extra),
    "Gemma3ForCausalLM": ArchSpec("GEMMA3", norm_plus_one=True, extra_hparams=_gemma_extra),
    # Phi-3 keeps q/k/v fused (attn_qkv) and gate/up fused (ffn_up, gate half first), as llama.cpp reads them;
    # llama.cpp's Phi-3 loader also looks "<|end|>" and "<|endoftext|>" up by text (every Phi-3 vocabulary has them).
    "Phi3ForCausalLM": ArchSpec("PHI3", extra_hparams=_phi3_extra),
}
# Known to llama.cpp but not yet exported by slmkit: named in the error so the user knows it is a gap, not a typo.
NOT_YET = ("Gemma3ForConditionalGeneration", "Phi3SmallForCausalLM")


def _permute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF keeps each head's rotary pairs as two halves [x0..x(d/2-1) | y0..]; llama.cpp wants them interleaved."""
    out = w.shape[0]
    return w.reshape(n_head, 2, out // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# ---------------------------------------------------------------------------------------------- model folder
@dataclass
class HFModel:
    dir: Path
    config: dict
    arch_name: str
    spec: ArchSpec
    weight_files: list[Path]
    hp: dict = field(default_factory=dict)


def _load_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise SlmkitError(f"{path}: not valid JSON (line {err.lineno}: {err.msg})") from None


def open_model(model_dir: Path) -> HFModel:
    """Check the folder is an HF causal LM slmkit can export; clear errors for anything else."""
    model_dir = Path(model_dir)
    cfg_path = model_dir / "config.json"
    if not model_dir.is_dir() or not cfg_path.is_file():
        raise SlmkitError(f"{model_dir}: not a Hugging Face model folder (no config.json)")
    cfg = _load_json(cfg_path)
    if "text_config" in cfg and "num_hidden_layers" not in cfg:
        cfg = {**cfg, **cfg["text_config"]}
    archs = cfg.get("architectures") or []
    arch = archs[0] if archs else ""
    if arch not in ARCHITECTURES:
        extra = " (planned)" if arch in NOT_YET else ""
        known = ", ".join(sorted(ARCHITECTURES))
        raise SlmkitError(f"{cfg_path}: architecture not supported: {arch or '<none>'}{extra}; "
                          f"slmkit exports: {known}")
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        files = sorted({model_dir / f for f in _load_json(index)["weight_map"].values()})
    else:
        files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise SlmkitError(f"{model_dir}: no *.safetensors weights (save the model with safe_serialization=True)")
    if not (model_dir / "tokenizer.json").is_file() and not (model_dir / "tokenizer.model").is_file():
        raise SlmkitError(f"{model_dir}: missing tokenizer (no tokenizer.json or tokenizer.model)")
    m = HFModel(model_dir, cfg, arch, ARCHITECTURES[arch], files)
    m.hp = _hparams(cfg, cfg_path)
    return m


def _hparams(cfg: dict, where: Path) -> dict:
    try:
        n_embd = int(cfg["hidden_size"])
        n_head = int(cfg["num_attention_heads"])
        hp = {
            "n_embd": n_embd,
            "n_layer": int(cfg["num_hidden_layers"]),
            "n_ff": int(cfg["intermediate_size"]),
            "n_head": n_head,
            "n_head_kv": int(cfg.get("num_key_value_heads") or n_head),
            "head_dim": int(cfg.get("head_dim") or n_embd // n_head),
            "n_ctx": int(cfg.get("max_position_embeddings") or 2048),
            "eps": float(cfg.get("rms_norm_eps") or 1e-6),
            "vocab": int(cfg["vocab_size"]),
            "tied": bool(cfg.get("tie_word_embeddings", False)),
        }
    except KeyError as err:
        raise SlmkitError(f"{where}: missing key {err}") from None
    # transformers ≥5 keeps rope settings under `rope_parameters`; older configs use rope_theta/rope_scaling.
    rope = dict(cfg.get("rope_parameters") or {})
    if "full_attention" in rope:  # per-layer-type rope (Gemma 3): the global layers' settings are the model's
        rope = dict(rope["full_attention"])
    scaling = cfg.get("rope_scaling") or {}
    rope = {**scaling, **rope}
    hp["rope_theta"] = float(rope.get("rope_theta") or cfg.get("rope_theta") or 10000.0)
    hp["rope"] = rope
    return hp


# ---------------------------------------------------------------------------------------------- header
def _rope_scaling(w, hp: dict) -> np.ndarray | None:
    """Write rope-scaling keys; llama3-style scaling becomes a `rope_freqs` tensor of per-frequency factors."""
    import gguf

    rope = hp["rope"]
    kind = rope.get("rope_type") or rope.get("type") or "default"
    if kind == "default":
        return None
    factor = float(rope.get("factor") or 1.0)
    if kind == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(factor)
    elif kind == "yarn":
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(factor)
        w.add_rope_scaling_orig_ctx_len(int(rope.get("original_max_position_embeddings") or hp["n_ctx"]))
    elif kind == "llama3":
        # Llama 3.1's scaling: long wavelengths are divided by `factor`, short ones untouched, a smooth ramp
        # between. llama.cpp applies it as one divisor per rotary frequency, read from `rope_freqs.weight`.
        dim = hp["head_dim"]
        freqs = 1.0 / (hp["rope_theta"] ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
        old = float(rope.get("original_max_position_embeddings") or 8192)
        low, high = float(rope.get("low_freq_factor") or 1.0), float(rope.get("high_freq_factor") or 4.0)
        wavelen = 2 * math.pi / freqs
        smooth = (old / wavelen - low) / (high - low)
        ramp = 1.0 / ((1 - smooth) / factor + smooth)
        out = np.where(wavelen < old / high, 1.0, np.where(wavelen > old / low, factor, ramp))
        return out.astype(np.float32)
    else:
        raise SlmkitError(f"rope scaling type not supported by the exporter: {kind}")
    return None


def _write_header(w, m: HFModel, outtype: str, name: str) -> np.ndarray | None:
    import gguf

    hp = m.hp
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(name)
    w.add_context_length(hp["n_ctx"])
    w.add_embedding_length(hp["n_embd"])
    w.add_block_count(hp["n_layer"])
    w.add_feed_forward_length(hp["n_ff"])
    w.add_head_count(hp["n_head"])
    w.add_head_count_kv(hp["n_head_kv"])
    w.add_layer_norm_rms_eps(hp["eps"])
    w.add_rope_freq_base(hp["rope_theta"])
    w.add_rope_dimension_count(hp["head_dim"])
    if hp["head_dim"] != hp["n_embd"] // hp["n_head"]:
        w.add_key_length(hp["head_dim"])
        w.add_value_length(hp["head_dim"])
    w.add_vocab_size(hp["vocab"])
    w.add_file_type(FILE_TYPES[outtype])
    if m.spec.extra_hparams:
        m.spec.extra_hparams(w, m.config)
    return _rope_scaling(w, hp)


# ---------------------------------------------------------------------------------------------- tensors
def _np_dtype(outtype: str):
    import gguf

    return {"f32": (np.float32, None), "f16": (np.float16, None), "bf16": (np.int16, gguf.GGMLQuantizationType.BF16)}[
        outtype]


FILE_TYPES = {"f32": 0, "f16": 1, "bf16": 32}  # llama_ftype ALL_F32 / MOSTLY_F16 / MOSTLY_BF16


@dataclass
class _Plan:
    hf_name: str
    gguf_name: str
    shape: tuple[int, ...]
    file: Path
    kind: str  # "matrix" takes the out-type, "vector" stays F32
    permute_heads: int = 0


def _plan(m: HFModel, handles: dict[Path, Any]) -> list[_Plan]:
    import gguf

    arch = gguf.MODEL_ARCH[m.spec.gguf_arch]
    names = gguf.get_tensor_name_map(arch, m.hp["n_layer"])
    plans: list[_Plan] = []
    unknown: list[str] = []
    for path, h in handles.items():
        for key in h.keys():
            if any(key.endswith(s) for s in m.spec.skip):
                continue
            if key == "lm_head.weight" and m.hp["tied"]:
                continue  # llama.cpp reuses token_embd for the output when there is no output.weight
            new = names.get_name(key, try_suffixes=(".weight", ".bias"))
            if new is None:
                unknown.append(key)
                continue
            shape = tuple(h.get_slice(key).get_shape())
            heads = 0
            if m.spec.permute_qk and new.endswith("attn_q.weight"):
                heads = m.hp["n_head"]
            elif m.spec.permute_qk and new.endswith("attn_k.weight"):
                heads = m.hp["n_head_kv"]
            plans.append(_Plan(key, new, shape, path, "matrix" if len(shape) >= 2 else "vector", heads))
    if unknown:
        raise SlmkitError(f"{m.dir}: tensors the {m.arch_name} exporter does not know: {', '.join(unknown[:5])}"
                          + (f" (+{len(unknown) - 5} more)" if len(unknown) > 5 else ""))
    return plans


def _tensor_data(t, plan: _Plan, m: HFModel, outtype: str) -> np.ndarray:
    import torch

    t = t.to(torch.float32)
    if m.spec.norm_plus_one and plan.gguf_name.endswith("norm.weight"):
        t = t + 1
    arr = t.numpy()
    if plan.permute_heads:
        arr = _permute_rows(arr, plan.permute_heads)
    if plan.kind == "vector" or outtype == "f32":
        return np.ascontiguousarray(arr, dtype=np.float32)
    if outtype == "f16":
        return np.ascontiguousarray(arr.astype(np.float16))
    # bf16: round-to-nearest-even on the float32 bit pattern, kept as raw 16-bit words
    bits = torch.from_numpy(np.ascontiguousarray(arr)).to(torch.bfloat16).view(torch.int16)
    return bits.numpy()


# ---------------------------------------------------------------------------------------------- entry point
@dataclass
class ExportResult:
    path: Path
    arch: str
    n_tensors: int
    n_params: int
    tokenizer: str
    pre: str | None


def export(model_dir: Path, out_path: Path, outtype: str = "f16", progress: Callable[[int, int], None] | None = None,
           name: str | None = None) -> ExportResult:
    """Write `out_path` (GGUF) from the HF folder; atomic: a `.partial` file renamed when complete."""
    import gguf
    from safetensors import safe_open

    from slmkit.pipelines.quantize.gguf_vocab import write_vocab

    if outtype not in OUTTYPES:
        raise SlmkitError(f"unknown outtype '{outtype}' (choose from {', '.join(OUTTYPES)})")
    m = open_model(model_dir)
    out_path = Path(out_path)
    partial = out_path.with_name(out_path.name + ".partial")
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        partial.unlink(missing_ok=True)
    except OSError as err:
        raise SlmkitError(f"{out_path.parent}: cannot write the GGUF here ({err.strerror})") from None
    np_dtype, raw = _np_dtype(outtype)
    with ExitStack() as stack:
        handles = {p: stack.enter_context(safe_open(str(p), framework="pt")) for p in m.weight_files}
        plans = _plan(m, handles)
        writer = gguf.GGUFWriter(partial, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH[m.spec.gguf_arch]])
        rope_freqs = _write_header(writer, m, outtype, name or m.dir.name)
        vocab = write_vocab(writer, m.dir, m.hp["vocab"])
        extra: list[tuple[str, np.ndarray]] = []
        if rope_freqs is not None:
            extra.append((gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", rope_freqs))
        for name_, arr in extra:
            writer.add_tensor_info(name_, arr.shape, arr.dtype, arr.nbytes)
        n_params = 0
        data_bytes = sum(arr.nbytes for _, arr in extra)  # what the file needs on disk, less its header
        for p in plans:
            vec = p.kind == "vector" or outtype == "f32"
            dt = np.dtype(np.float32) if vec else np.dtype(np_dtype)
            nbytes = int(np.prod(p.shape)) * dt.itemsize
            writer.add_tensor_info(p.gguf_name, p.shape, dt, nbytes, raw_dtype=None if vec else raw)
            n_params += int(np.prod(p.shape))
            data_bytes += nbytes
        try:
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            for _, arr in extra:
                writer.write_tensor_data(arr)
            for i, p in enumerate(plans):
                writer.write_tensor_data(_tensor_data(handles[p.file].get_tensor(p.hf_name), p, m, outtype))
                if progress:
                    progress(i + 1, len(plans))
            writer.close()
            os.replace(partial, out_path)
        except BaseException as exc:
            try:  # closing flushes what is buffered, which fails again on a full disk
                writer.close()
            except OSError:
                pass
            partial.unlink(missing_ok=True)
            if not isinstance(exc, OSError):
                raise
            from slmkit.pipelines.core.rundir import write_error

            # numpy's tofile reports a full disk as "N requested and M written", with no errno (hence "(None)" once):
            # write_error names the path and the bytes the file needs
            err = write_error(out_path, exc, data_bytes, what="writing the GGUF failed")
            raise SlmkitError(f"{err}; no file left behind") from None
    return ExportResult(out_path, m.arch_name, len(plans) + len(extra), n_params, vocab["model"], vocab.get("pre"))


def iter_linear_names(m: HFModel) -> Iterator[tuple[str, str]]:
    """(HF module name, GGUF tensor name) for each weight matrix: the names the importance matrix is keyed by."""
    import gguf

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[m.spec.gguf_arch], m.hp["n_layer"])
    from safetensors import safe_open

    for path in m.weight_files:
        with safe_open(str(path), framework="pt") as h:
            for key in h.keys():
                if key.endswith(".weight") and len(h.get_slice(key).get_shape()) == 2:
                    new = names.get_name(key, try_suffixes=(".weight",))
                    if new:
                        yield key[: -len(".weight")], new
