"""Error-compensated rounding (GPTQ) for the 32-wide 4-bit blocks (IQ4_NL) of a quantised GGUF.

llama.cpp's quantiser rounds every block of 32 weights on its own, weighted by the importance matrix's diagonal
(how large each input column's activations are). GPTQ (Frantar et al., 2022) rounds a matrix one input column
at a time and moves each column's rounding error onto the columns not yet rounded, in proportion to the inverse
of H = E[x xᵀ], the calibration inputs' second moments: the errors of one column are partly cancelled by the
next, so the layer's output on calibration-like inputs moves less than the sum of its blocks' errors. The
blocks keep llama.cpp's IQ4_NL layout and grid, so the file is the same size and loads and runs unchanged.

On the demo's fine-tuned SmolLM2 (scripts/bench_quant_mixture.py) it takes Q4_K_NL's mean KLD against F16 from
0.10 to 0.07 (0.06 on its tickets) at the same 0.30x, most of it on the tied embedding, which is also the output
matrix.

Written here rather than taken from a GPTQ library (AutoGPTQ, GPTQModel, llm-compressor): those write their
own tensor formats for GPU kernels, none writes GGUF blocks, and the algorithm is short. The steps follow the
paper (lazy column blocks, Cholesky of the damped inverse); the per-block scale search is llama.cpp's for
IQ4_NL (try the scales that put the largest weight on each of a few grid points, keep the one whose
least-squares refit leaves the least weighted error), applied to the weights as GPTQ has updated them when
the block is reached.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BLOCK = 32  # weights per block in both formats below, each block one fp16 scale d: weight = d * grid[index]


def _nibbles(q: np.ndarray) -> np.ndarray:
    """Index j of a block in the low nibble of byte j, index j+16 in the high nibble (llama.cpp's order)."""
    return (q[:, :, :BLOCK // 2] & 0x0F) | ((q[:, :, BLOCK // 2:] & 0x0F) << 4)


def _pack_q5_0(q: np.ndarray) -> np.ndarray:
    # the low four bits as nibbles; the fifth bit of index j as bit j of a little-endian uint32 (qh)
    high = ((q >> 4) & 1).astype(np.uint32) << np.arange(BLOCK, dtype=np.uint32)
    qh = np.bitwise_or.reduce(high, axis=2).astype("<u4")[..., None].view(np.uint8)
    return np.concatenate([qh, _nibbles(q)], axis=2)


@dataclass(frozen=True)
class Format:
    grid: tuple[int, ...]  # the values an index stands for, ascending
    pack: Callable[[np.ndarray], np.ndarray]  # indices [rows, blocks, 32] → bytes after d [rows, blocks, n]
    nbytes: int  # bytes per block, d included


# The block types this module rewrites. IQ4_NL: 4.5 bits per weight on a non-uniform grid; Q5_0: 5.5 bits, uniform.
FORMATS = {
    "IQ4_NL": Format((-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113), _nibbles, 18),
    "Q5_0": Format(tuple(range(-16, 16)), _pack_q5_0, 22),
}
DAMP = 0.01  # share of H's mean diagonal added to its diagonal: keeps the inverse well conditioned
LAZY = 128  # columns whose updates are applied together (the paper's lazy batch; a multiple of BLOCK)
SCALE_TRIES = 7  # llama.cpp's ntry for IQ4_NL: 2 * 7 + 1 scales tried per block, a 127th of the grid apart


def second_moments(model_dir: Path, token_chunks: list[list[int]],
                   progress: Callable[[int, int], None] | None = None) -> dict[str, np.ndarray]:
    """GGUF tensor name → E[x xᵀ] of the matrix's input over the calibration text (float32, in × in).

    Matrices that read the same input (q/k/v, gate/up) share one array, summed once: the pass hands them the
    same tensor object one after the other. The diagonal is exactly the importance matrix (mean squared input
    per column)."""
    import torch

    from slmkit.pipelines.quantize.gguf_quant import each_matrix_input

    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    alias: dict[str, str] = {}
    last: list = [None, ""]  # the input the previous matrix read, and that matrix

    def add(name: str, x) -> None:
        if x is last[0]:
            alias[name] = alias.get(last[1], last[1])
            return
        last[:] = [x, name]
        x = x.detach().reshape(-1, x.shape[-1]).to(torch.float32)
        sums[name] = sums[name].addmm_(x.T, x) if name in sums else x.T @ x
        counts[name] = counts.get(name, 0) + x.shape[0]

    try:
        each_matrix_input(model_dir, token_chunks, add, progress)
    finally:
        last.clear()  # the last input tensor, not kept alive past the pass
    out = {k: (sums[k] / counts[k]).numpy() for k in sums}
    out.update({k: out[v] for k, v in alias.items()})
    return out


def importance(moments: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The importance matrix (mean squared input per column) from the second moments: their diagonals."""
    return {k: np.ascontiguousarray(np.diag(v), dtype=np.float32) for k, v in moments.items()}


# ---------------------------------------------------------------------------------------------- one matrix
def _grid(kind: str):
    import torch

    g = torch.tensor(FORMATS[kind].grid, dtype=torch.float32)
    return g, (g[1:] + g[:-1]) / 2  # the grid and the midpoints between its values, for rounding to nearest


def block_scales(x, weight, kind: str = "IQ4_NL"):
    """Per row of x [rows, 32] (weights of one block), the fp16-representable scale d with least weighted error
    for the block's `weight` [32]: llama.cpp's search for IQ4_NL (d putting the block's largest weight on
    points near the grid's end, each refitted by least squares)."""
    import torch

    grid, mid = _grid(kind)
    step = float(-grid[0]) / 127  # IQ4_NL's grid ends at -127: one grid unit, as llama.cpp tries
    peak = x.gather(1, x.abs().argmax(1, keepdim=True))[:, 0]
    peak = torch.where(peak == 0, torch.ones_like(peak), peak)
    best = torch.full_like(peak, -1.0)
    scale = torch.zeros_like(peak)
    for t in range(-SCALE_TRIES, SCALE_TRIES + 1):
        q = grid[torch.bucketize(x * ((t * step + grid[0]) / peak)[:, None], mid)]
        sqx, sq2 = (weight * x * q).sum(1), (weight * q * q).sum(1)
        # with d the least-squares fit sqx/sq2, the weighted error falls by sqx²/sq2: the larger the better
        gain = torch.where(sq2 > 0, sqx * sqx / sq2.clamp_min(1e-30), torch.zeros_like(sq2))
        better = gain > best
        best = torch.where(better, gain, best)
        scale = torch.where(better, sqx / sq2.clamp_min(1e-30), scale)
    return scale.half().float()  # the scale the file will hold, so the rounding below uses exactly it


def quantize_matrix(w: np.ndarray, h: np.ndarray, kind: str = "IQ4_NL", damp: float = DAMP
                    ) -> tuple[np.ndarray, np.ndarray]:
    """GPTQ of one matrix w [rows, cols] (cols a multiple of 32) for input second moments h [cols, cols].

    Returns (indices [rows, cols] uint8 into the format's grid, scales [rows, cols/32] float16)."""
    import torch

    grid, mid = _grid(kind)
    W = torch.from_numpy(np.array(w, dtype=np.float32))
    H = torch.from_numpy(np.array(h, dtype=np.float64))
    rows, cols = W.shape
    if cols % BLOCK or H.shape != (cols, cols):
        raise ValueError(f"matrix {tuple(W.shape)} and second moments {tuple(H.shape)} do not fit 32-wide blocks")
    dead = torch.diag(H) == 0  # an input column never active: its weights cannot matter
    H[dead, dead] = 1
    W[:, dead] = 0
    importance_w = torch.diag(H).to(torch.float32)
    H += damp * torch.mean(torch.diag(H)) * torch.eye(cols, dtype=H.dtype)
    # the upper Cholesky factor of H⁻¹ gives, row by row, how a column's error spreads over the later columns
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True).to(torch.float32)
    index = torch.zeros(rows, cols, dtype=torch.uint8)
    scales = torch.zeros(rows, cols // BLOCK)
    for c1 in range(0, cols, LAZY):
        c2 = min(c1 + LAZY, cols)
        W1 = W[:, c1:c2].clone()
        err = torch.zeros_like(W1)
        hi = hinv[c1:c2, c1:c2]
        for i in range(c2 - c1):
            c = c1 + i
            if c % BLOCK == 0:  # a new block: its scale from the weights as the earlier columns left them
                d = block_scales(W1[:, i:i + BLOCK], importance_w[c:c + BLOCK], kind)
                scales[:, c // BLOCK] = d
                inv = torch.where(d == 0, torch.zeros_like(d), 1 / torch.where(d == 0, torch.ones_like(d), d))
            idx = torch.bucketize(W1[:, i] * inv, mid)
            index[:, c] = idx.to(torch.uint8)
            e = (W1[:, i] - d * grid[idx]) / hi[i, i]
            W1[:, i:] -= e[:, None] * hi[i, i:][None, :]
            err[:, i] = e
        W[:, c2:] -= err @ hinv[c1:c2, c2:]
    return index.numpy(), scales.numpy().astype(np.float16)


def encode(index: np.ndarray, scales: np.ndarray, kind: str = "IQ4_NL") -> np.ndarray:
    """Blocks of `kind`, row-major, as llama.cpp lays them out (fp16 d first)."""
    rows, cols = index.shape
    q = index.astype(np.uint8).reshape(rows, cols // BLOCK, BLOCK)
    d = np.ascontiguousarray(scales, dtype=np.float16).reshape(rows, cols // BLOCK, 1).view(np.uint8)
    return np.concatenate([d, FORMATS[kind].pack(q).astype(np.uint8)], axis=2).reshape(-1)


def decode(blocks: np.ndarray, rows: int, cols: int, kind: str = "IQ4_NL") -> np.ndarray:
    """The weights a file's blocks of `kind` stand for (gguf-py's reading of them, as llama.cpp's)."""
    import gguf

    data = np.asarray(blocks, dtype=np.uint8).reshape(rows, cols // BLOCK * FORMATS[kind].nbytes)
    return gguf.quants.dequantize(data, gguf.GGMLQuantizationType[kind]).reshape(rows, cols)


# ---------------------------------------------------------------------------------------------- one file
def rewrite(quantised: Path, source: Path, moments: dict[str, np.ndarray],
            progress: Callable[[int, int], None] | None = None) -> dict:
    """Overwrite, in place, every IQ4_NL or Q5_0 tensor of `quantised` that has second moments with GPTQ's blocks,
    rounded from the same tensor of `source` (the unquantised GGUF it was made from). Same bytes, same offsets:
    nothing else in the file moves. The caller writes to a partial file and renames it once this returns."""
    import gguf

    src = {t.name: t for t in gguf.GGUFReader(str(source)).tensors}
    reader = gguf.GGUFReader(str(quantised), "r+")
    todo = [t for t in reader.tensors if t.tensor_type.name in FORMATS and t.name in moments]
    skipped = sorted(t.name for t in reader.tensors if t.tensor_type.name in FORMATS and t.name not in moments)
    for n, t in enumerate(todo):
        cols, rows = int(t.shape[0]), int(t.shape[1])
        s, kind = src[t.name], t.tensor_type.name
        w = gguf.quants.dequantize(s.data, s.tensor_type).reshape(rows, cols)
        blob = encode(*quantize_matrix(w, moments[t.name], kind), kind)
        target = t.data.reshape(-1).view(np.uint8)
        if blob.size != target.size:
            raise ValueError(f"{quantised}: {t.name} holds {target.size} bytes, its GPTQ blocks {blob.size}")
        target[:] = blob
        if progress:
            progress(n + 1, len(todo))
    reader.data.flush()
    del reader
    kinds = Counter(t.tensor_type.name for t in todo)
    return {"tensors": len(todo), "types": dict(kinds), "damp": DAMP, "without_moments": skipped}
