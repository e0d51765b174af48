"""Error-compensated rounding (GPTQ) for the 4-bit blocks (IQ4_NL, Q4_K; Q5_0 too) of a quantised GGUF.

llama.cpp's quantiser rounds every block of 32 weights on its own, weighted by the importance matrix's diagonal
(how large each input column's activations are). GPTQ (Frantar et al., 2022) rounds a matrix one input column
at a time and moves each column's rounding error onto the columns not yet rounded, in proportion to the inverse
of H = E[x xᵀ], the calibration inputs' second moments: the errors of one column are partly cancelled by the
next, so the layer's output on calibration-like inputs moves less than the sum of its blocks' errors. The
blocks keep llama.cpp's layouts and grids, so the file is the same size and loads and runs unchanged.

On the demo's fine-tuned SmolLM2 (scripts/bench_quant_mixture.py, general-text calibration) it takes
Q4_K_NL's mean KLD against F16 from 0.10 to 0.061 (0.099 -> 0.054 on its tickets) and Q4_K_NL30's from 0.095 to
0.050 (0.106 -> 0.056) at the same 0.30x, most of it on the tied embedding, which is also the output matrix. Its
Q4_K matrices (ffn_down, whose inputs are the least correlated) gain least: output error 2-6% under
llama.cpp's.

Attention keys and values are rounded per key/value head against moments in which each token counts by the
attention it receives (second_moments' `by_head`). Against the plain moments, GPTQ lowered their output error
and still raised KLD (every row 4-bit: 0.099 -> 0.110), because it moved error onto the few tokens that
receive most of the attention; per head (before act-order and the refit below), the same 4-bit k/v with a
5-bit embedding gave 0.055 at 0.30x, and 5-bit k/v 0.050 at 0.302x.

Written here rather than taken from a GPTQ library (AutoGPTQ, GPTQModel, llm-compressor): those write their
own tensor formats for GPU kernels, none writes GGUF blocks, and the algorithm is short. The steps follow the
paper (lazy column blocks, Cholesky of the damped inverse). Each block's parameters are chosen as llama.cpp
chooses them, from the weights as GPTQ has updated them when the block is reached: for IQ4_NL the scale search
(try the scales that put the largest weight on each of a few grid points, keep the one whose least-squares
refit leaves the least weighted error); for Q4_K the per-32 affine fit (make_qkx3_quants) and the 6-bit
quantisation of those scales and offsets per 256 (make_qp_quants), weighted as its quantize_row_q4_K weights
them. Once every index of a matrix is chosen, the 32-wide blocks' scales are fitted again for those indices
against the same objective (refit_scales): the demo's matrices leave 4% less output error. Doing it twice
(round again with the refitted scales, refit again) overfitted the calibration text: held-out text's KLD fell
by 0.0003, the tickets' rose by 0.002.
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
    grid: tuple[int, ...]  # the values an index stands for, ascending: weight = scale * grid[index] + offset
    pack: Callable[..., np.ndarray]  # (indices [rows, groups, group], params) → bytes [rows, groups, nbytes]
    nbytes: int  # bytes per group, its parameters included
    group: int = BLOCK  # columns whose parameters are chosen together (a block, or a K-quant super-block)


def _pack_scaled(q: np.ndarray, d: np.ndarray, pack_q: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    return np.concatenate([np.ascontiguousarray(d, np.float16)[..., None].view(np.uint8), pack_q(q)], axis=2)


def _pack_q4_k(q: np.ndarray, params: dict) -> np.ndarray:
    """Q4_K's 144-byte super-block: fp16 d and dmin, the eight 6-bit scales and mins in 12 bytes (the first four
    of each whole, the top two bits of the last four above them, the low four bits of the last four paired),
    then 128 bytes of 4-bit indices: byte l of each 32-byte chunk c holds sub-block 2c's l-th index low and
    sub-block 2c+1's high."""
    sc, mn = params["sc"].astype(np.uint8), params["mn"].astype(np.uint8)
    scales = np.concatenate([(sc[..., :4] & 63) | ((sc[..., 4:] >> 4) << 6),
                             (mn[..., :4] & 63) | ((mn[..., 4:] >> 4) << 6),
                             (sc[..., 4:] & 0x0F) | ((mn[..., 4:] & 0x0F) << 4)], axis=-1)
    rows, groups = q.shape[:2]
    chunks = q.reshape(rows, groups, 4, 2, BLOCK)
    qs = (chunks[:, :, :, 0] | (chunks[:, :, :, 1] << 4)).reshape(rows, groups, 128)
    heads = [np.ascontiguousarray(params[k], np.float16)[..., None].view(np.uint8) for k in ("d", "dmin")]
    return np.concatenate([*heads, scales, qs], axis=2)


# The block types this module rewrites. IQ4_NL: 4.5 bits per weight on a non-uniform grid; Q5_0: 5.5 bits,
# uniform; Q4_K: 4.5 bits, uniform with an offset per 32 weights, its scales and offsets themselves quantised
# per 256 (the rows that fit 256 in Q4_K_NL: SmolLM2's ffn_down).
FORMATS = {
    "IQ4_NL": Format((-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113),
                     lambda q, d: _pack_scaled(q, d, _nibbles), 18),
    "Q5_0": Format(tuple(range(-16, 16)), lambda q, d: _pack_scaled(q, d, _pack_q5_0), 22),
    "Q4_K": Format(tuple(range(16)), _pack_q4_k, 144, 256),
}
# Share of H's mean diagonal added to its diagonal. It keeps the inverse well conditioned, and it is how far
# GPTQ trusts the calibration text: at the paper's 0.01 the error is pushed into input directions that text
# hardly uses and other text does. On the demo's model (Q4_K_NL, mean KLD on held-out text / tickets; 0.03,
# 0.1, 0.3 tried), calibrated on general text 0.066 / 0.060 at 0.01 and 0.063 / 0.056 at 0.1; on the
# tickets alone 0.115 / 0.034 and 0.090 / 0.032; on both 0.077 / 0.040 and 0.065 / 0.037.
DAMP = 0.1
LAZY = 128  # columns whose updates are applied together (the paper's lazy batch; Q4_K's take a super-block)
SCALE_TRIES = 7  # llama.cpp's ntry for IQ4_NL: 2 * 7 + 1 scales tried per block, a 127th of the grid apart
# Q4_K's affine fit per 32 weights, as llama.cpp's make_qkx3_quants tries it: 1 / scale from (15 + RMIN) / range
# to (15 + RMIN + RDELTA * NSTEP) / range, each refitted by weighted least squares.
RMIN, RDELTA, NSTEP = -0.9, 0.05, 36
QP_TRIES = 4  # make_qp_quants: 2 * 4 + 1 steps for the 6-bit scales, a tenth of a level apart


HEADS = "#heads"  # key suffix of a k/v matrix's per-head, attention-weighted second moments [kv heads, in, in]


def rounds_heads(types: dict[str, str]) -> bool:
    """Whether a mixture (tensor name → type) sends an attention key or value matrix to a format rounded here:
    only then are second_moments' per-head moments worth their cost (eager attention, ~0.1 GB for SmolLM2).
    Q4_K_NL keeps them Q8_0, which llama.cpp writes."""
    from slmkit.pipelines.quantize.gguf_quant import KV_MATRIX

    return any(kind in FORMATS and KV_MATRIX.search(name) for name, kind in types.items())


def second_moments(model_dir: Path, token_chunks: list[list[int]],
                   progress: Callable[[int, int], None] | None = None, by_head: bool = True) -> dict[str, np.ndarray]:
    """GGUF tensor name → E[x xᵀ] of the matrix's input over the calibration text (float32, in × in).

    Matrices that read the same input (q/k/v, gate/up) share one array, summed once: the pass hands them the
    same tensor object one after the other. The diagonal is exactly the importance matrix (mean squared input
    per column).

    With `by_head`, each attention key and value matrix also gets, under NAME + HEADS, one array per key/value
    head in which every token's input counts by the attention that head's queries pay it, Σ a_t x xᵀ / Σ a_t.
    Why: a value row's error reaches the output in proportion to the attention its token receives, and a few
    tokens (the first of a text above all) receive most of it. Rounded against the plain moments, GPTQ moves
    error onto exactly those tokens' directions, which the text's other tokens rarely use: on the demo's model
    it raised KLD (4-bit k/v: 0.099 → 0.110); rounded per head against these, 4-bit k/v with a 5-bit embedding
    reach 0.055 on held-out text (scripts/bench_quant_mixture.py, general calibration)."""
    import torch

    from slmkit.pipelines.quantize.gguf_quant import KV_MATRIX, each_matrix_input

    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    alias: dict[str, str] = {}
    last: list = [None, ""]  # the input the previous matrix read, and that matrix
    attn_in: dict[int, torch.Tensor] = {}  # layer → this chunk's attention input, until its probabilities come
    head_sums: dict[int, torch.Tensor] = {}
    head_mass: dict[int, torch.Tensor] = {}
    n_kv = 0
    if by_head:
        from transformers import AutoConfig

        cfg = AutoConfig.from_pretrained(str(model_dir))
        cfg = getattr(cfg, "text_config", cfg)
        n_kv = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads

    def add(name: str, x) -> None:
        kv = KV_MATRIX.search(name)
        if by_head and kv:
            attn_in[int(kv.group(1))] = x
        if x is last[0]:
            alias[name] = alias.get(last[1], last[1])
            return
        last[:] = [x, name]
        x = x.detach().reshape(-1, x.shape[-1]).to(torch.float32)
        sums[name] = sums[name].addmm_(x.T, x) if name in sums else x.T @ x
        counts[name] = counts.get(name, 0) + x.shape[0]

    def attend(layer: int, probs) -> None:
        x = attn_in.pop(layer, None)
        if x is None:
            return
        x = x.detach().reshape(-1, x.shape[-1]).to(torch.float32)  # [tokens, in]
        received = probs.to(torch.float32).sum(1)  # [query heads, tokens]: the attention each token is paid
        received = received.reshape(n_kv, -1, received.shape[-1]).sum(1)  # summed over each group's queries
        acc = torch.einsum("gt,ti,tj->gij", received, x, x)
        head_sums[layer] = head_sums[layer] + acc if layer in head_sums else acc
        head_mass[layer] = head_mass.get(layer, 0) + received.sum(1)

    try:
        each_matrix_input(model_dir, token_chunks, add, progress, attend if by_head else None)
    finally:
        last.clear()  # the last input tensor, not kept alive past the pass
        attn_in.clear()
    out = {k: (sums[k] / counts[k]).numpy() for k in sums}
    out.update({k: out[v] for k, v in alias.items()})
    for layer, acc in head_sums.items():
        per_head = (acc / head_mass[layer][:, None, None]).numpy()
        for kind in ("k", "v"):
            out[f"blk.{layer}.attn_{kind}.weight{HEADS}"] = per_head
    return out


def importance(moments: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The importance matrix (mean squared input per column) from the second moments: their diagonals."""
    return {k: np.ascontiguousarray(np.diag(v), dtype=np.float32) for k, v in moments.items() if not k.endswith(HEADS)}


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


def _affine(x, weight):
    """Per row of x [n, 32], (scale, low) with x ≈ scale * q + low, q in 0..15, low ≤ 0, of least error
    weighted by the row's `weight` [n, 32]: llama.cpp's search for Q4_K's sub-blocks (make_qkx3_quants)."""
    import torch

    low0 = x.amin(1).clamp_max(0.0)
    span = x.amax(1) - low0
    safe = torch.where(span > 0, span, torch.ones_like(span))
    sw = weight.sum(1)
    best_err = torch.full_like(span, float("inf"))
    scale, low = span / 15, low0.clone()
    for k in range(NSTEP + 1):
        q = ((RMIN + RDELTA * k + 15) / safe)[:, None].mul(x - low0[:, None]).round().clamp(0, 15)
        sl, sl2 = (weight * q).sum(1), (weight * q * q).sum(1)
        sx, slx = (weight * x).sum(1), (weight * q * x).sum(1)
        det = sw * sl2 - sl * sl
        ok = det > 0
        a = torch.where(ok, (sw * slx - sl * sx) / torch.where(ok, det, torch.ones_like(det)), span / 15)
        b = torch.where(ok, (sl2 * sx - sl * slx) / torch.where(ok, det, torch.ones_like(det)), low0)
        pos = b > 0  # an offset above zero: the fit without one
        a = torch.where(pos, slx / sl2.clamp_min(1e-30), a)
        b = torch.where(pos, torch.zeros_like(b), b)
        err = (weight * (a[:, None] * q + b[:, None] - x) ** 2).sum(1)
        better = err < best_err
        best_err, scale, low = (torch.where(better, err, best_err), torch.where(better, a, scale),
                                torch.where(better, b, low))
    return scale.clamp_min(0.0), low


def _six_bit(values, weight):
    """Per row of values [rows, 8] (≥ 0: sub-block scales or offsets), the fp16 step d and 6-bit integers
    L (0..63) with d·L ≈ values, of least error weighted by `weight` [rows, 8]: llama.cpp's make_qp_quants (steps
    a tenth of a level apart around max/63, each refitted by weighted least squares)."""
    import torch

    top = values.amax(1)
    safe = torch.where(top > 0, top, torch.ones_like(top))
    best_err = torch.full_like(top, float("inf"))
    best_d = torch.zeros_like(top)
    for k in range(-QP_TRIES, QP_TRIES + 1):
        levels = ((63 + 0.1 * k) / safe)[:, None].mul(values).round().clamp(0, 63)
        slx, sl2 = (weight * levels * values).sum(1), (weight * levels * levels).sum(1)
        d = torch.where(sl2 > 0, slx / sl2.clamp_min(1e-30), torch.zeros_like(slx)).half().float()
        err = (weight * (d[:, None] * levels - values) ** 2).sum(1)
        better = err < best_err
        best_err, best_d = torch.where(better, err, best_err), torch.where(better, d, best_d)
    inv = torch.where(best_d > 0, 1 / best_d.clamp_min(1e-30), torch.zeros_like(best_d))
    return best_d, (values * inv[:, None]).round().clamp(0, 63)


def _scaled_params(x, weight, kind: str):
    """A 32-wide block's fit (IQ4_NL, Q5_0): its scale, which is also its parameters, and no offset."""
    import torch

    d = block_scales(x, weight, kind)
    return d, d[:, None], torch.zeros(x.shape[0], 1)


def q4_k_params(x, weight, kind: str = "Q4_K") -> tuple[dict, object, object]:
    """A Q4_K super-block per row of x [rows, 256]: each 32-wide sub-block's affine fit, then its scale and
    offset quantised to 6 bits on the super-block's fp16 steps d and dmin, as llama.cpp's quantize_row_q4_K
    does with an importance matrix (weights: importance × sqrt(σ² + x²), σ² twice the block's mean square).
    Returns the parameters to pack and the per-sub-block scale and offset [rows, 8] the rounding uses."""
    import torch

    rows = x.shape[0]
    sigma2 = 2 * (x * x).mean(1, keepdim=True)
    w = weight[None, :] * torch.sqrt(sigma2 + x * x)
    scale, low = (v.reshape(rows, 8) for v in _affine(x.reshape(rows * 8, BLOCK), w.reshape(rows * 8, BLOCK)))
    sub_weight = w.reshape(rows, 8, BLOCK).sum(2)
    d, sc = _six_bit(scale, sub_weight)
    dmin, mn = _six_bit(-low, sub_weight)
    params = {"d": d.numpy().astype(np.float16), "dmin": dmin.numpy().astype(np.float16),
              "sc": sc.numpy().astype(np.uint8), "mn": mn.numpy().astype(np.uint8)}
    return params, d[:, None] * sc, -(dmin[:, None] * mn)


# The group fits that are not a 32-wide block's scale: (weights [rows, group], importance [group], kind) →
# (parameters to pack, scale and offset [rows, group / 32] that the rounding uses).
GROUP_FIT = {"Q4_K": q4_k_params}


def refit_scales(w, h, index, scales, kind: str):
    """Per row of w [rows, cols], the block scales [rows, cols/32] that, with GPTQ's grid indices fixed, leave
    the least error (w - ŵ) H (w - ŵ)ᵀ, ŵ = each block's scale times its grid values: a least-squares problem
    of one unknown per block, (Aᵀ H A) d = Aᵀ H w with A[c, b] = grid value of column c if c is in block b.
    Why: GPTQ fixes a block's scale when it reaches the block, from weights that later columns' errors have not
    yet moved; once every index is known, the scales that suit them all come from one small solve. A row keeps
    its scales where the fp16 rounding of the solution leaves more error (it cannot, before rounding).
    w, h: float64 torch tensors (h as GPTQ used it, damped); index [rows, cols] grid indices; scales float32."""
    import torch

    grid = torch.tensor(FORMATS[kind].grid, dtype=torch.float64)
    rows, cols = w.shape
    blocks = cols // BLOCK
    hb = h.reshape(blocks, BLOCK, cols)
    out = scales.clone()
    for r0 in range(0, rows, 1024):  # rows at a time: [rows, blocks, cols] floats
        g = grid[index[r0:r0 + 1024].long()].reshape(-1, blocks, BLOCK)
        gh = torch.einsum("rbi,bic->rbc", g, hb)  # each block's grid values times H's rows of its columns
        lhs = torch.einsum("rbkj,rkj->rbk", gh.reshape(len(g), blocks, blocks, BLOCK), g)
        rhs = torch.einsum("rbc,rc->rb", gh, w[r0:r0 + 1024])
        lhs += 1e-9 * lhs.diagonal(dim1=1, dim2=2).mean(1).clamp_min(1e-30)[:, None, None] * torch.eye(blocks)
        solved = torch.linalg.solve(lhs, rhs[..., None])[..., 0].to(torch.float16).to(torch.float64)

        def error(d, g=g, r0=r0):
            e = w[r0:r0 + 1024] - (g * d[..., None]).reshape(len(g), cols)
            return ((e @ h) * e).sum(1)

        old = scales[r0:r0 + 1024].to(torch.float64)
        better = torch.isfinite(solved).all(1) & (error(solved.nan_to_num()) < error(old))
        out[r0:r0 + 1024] = torch.where(better[:, None], solved, old).to(out.dtype)
    return out


def quantize_matrix(w: np.ndarray, h: np.ndarray, kind: str = "IQ4_NL", damp: float | None = None,
                    refit: bool = True, act_order: bool = True) -> tuple[np.ndarray, np.ndarray | dict]:
    """GPTQ of one matrix w [rows, cols] (cols a multiple of the format's group) for input second moments h
    [cols, cols].

    Returns (indices [rows, cols] uint8 into the format's grid, the groups' parameters): for the 32-wide formats
    their scales [rows, cols/32] float16; for Q4_K a dict of d, dmin [rows, cols/256] and the 6-bit sub-block
    scales sc and offsets mn [rows, cols/256, 8]. `damp` is DAMP as it stands when called unless given (the
    bench's --damp sets DAMP). With `refit`, the 32-wide formats' scales are fitted again once every index is
    chosen (refit_scales); Q4_K's 6-bit scales and offsets are kept as its search chose them. With `act_order`,
    the 32-wide formats' columns are rounded largest input first."""
    import torch

    fmt = FORMATS[kind]
    fit = GROUP_FIT.get(kind, _scaled_params)  # how each group's parameters are fitted
    grid, mid = _grid(kind)
    W = torch.from_numpy(np.array(w, dtype=np.float32))
    H = torch.from_numpy(np.array(h, dtype=np.float64))
    rows, cols = W.shape
    if cols % fmt.group or H.shape != (cols, cols):
        raise ValueError(f"matrix {tuple(W.shape)} and second moments {tuple(H.shape)} do not fit "
                         f"{fmt.group}-wide blocks")
    dead = torch.diag(H) == 0  # an input column never active: its weights cannot matter
    H[dead, dead] = 1
    W[:, dead] = 0
    importance_w = torch.diag(H).to(torch.float32)
    H += (DAMP if damp is None else damp) * torch.mean(torch.diag(H)) * torch.eye(cols, dtype=H.dtype)
    original = W.to(torch.float64)  # GPTQ updates W as it goes; the refit measures error against these
    # Act-order (32-wide formats): the columns whose inputs are largest go first, while the most columns are left
    # to take their error. A block's columns then come apart, so every block's scale is fixed first, from the
    # weights as given. Q4_K keeps column order and fits each super-block as it is reached: its affine fit and
    # 6-bit scales gain more from the moved weights than act-order gives (output error 2-3% worse with it).
    by_size = act_order and fmt.group == BLOCK
    order = torch.argsort(torch.diag(H), descending=True) if by_size else torch.arange(cols)
    if by_size:
        fixed = torch.stack([block_scales(W[:, b:b + BLOCK], importance_w[b:b + BLOCK], kind)
                             for b in range(0, cols, BLOCK)], 1)
        fixed_inv = torch.where(fixed == 0, torch.zeros_like(fixed), 1 / torch.where(fixed == 0, 1.0, fixed))
        off = torch.zeros(rows)
    # the upper Cholesky factor of H⁻¹ gives, row by row, how a column's error spreads over the later columns
    hp = H[order][:, order]
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(hp)), upper=True).to(torch.float32)
    W = W[:, order]
    index = torch.zeros(rows, cols, dtype=torch.uint8)
    groups: list = []
    lazy = max(LAZY, fmt.group)
    for c1 in range(0, cols, lazy):
        c2 = min(c1 + lazy, cols)
        W1 = W[:, c1:c2].clone()
        err = torch.zeros_like(W1)
        hi = hinv[c1:c2, c1:c2]
        for i in range(c2 - c1):
            c = int(order[c1 + i])  # the column's place in the matrix
            if by_size:
                d, inv = fixed[:, c // BLOCK], fixed_inv[:, c // BLOCK]
            else:
                if c % fmt.group == 0:  # a new group: its parameters from the weights as earlier columns left them
                    params, scale_g, offset_g = fit(W1[:, i:i + fmt.group], importance_w[c:c + fmt.group], kind)
                    groups.append(params)
                if c % BLOCK == 0:  # this 32-wide block's scale and offset
                    j = (c % fmt.group) // BLOCK
                    d, off = scale_g[:, j], offset_g[:, j]
                    inv = torch.where(d == 0, torch.zeros_like(d), 1 / torch.where(d == 0, torch.ones_like(d), d))
            idx = torch.bucketize((W1[:, i] - off) * inv, mid)
            index[:, c] = idx.to(torch.uint8)
            e = (W1[:, i] - (d * grid[idx] + off)) / hi[i, i]
            W1[:, i:] -= e[:, None] * hi[i, i:][None, :]
            err[:, i] = e
        W[:, c2:] -= err @ hinv[c1:c2, c2:]
    if groups and isinstance(groups[0], dict):  # several arrays per group (Q4_K): each stacked over the groups
        return index.numpy(), {k: np.stack([g[k] for g in groups], axis=1) for k in groups[0]}
    scales = fixed if by_size else torch.stack(groups, 1)
    if refit:
        scales = refit_scales(original, H, index, scales, kind)
    return index.numpy(), scales.numpy().astype(np.float16)


def encode(index: np.ndarray, params, kind: str = "IQ4_NL") -> np.ndarray:
    """Blocks of `kind`, row-major, as llama.cpp lays them out (parameters first), from quantize_matrix's
    indices and parameters."""
    fmt = FORMATS[kind]
    rows, cols = index.shape
    q = index.astype(np.uint8).reshape(rows, cols // fmt.group, fmt.group)
    return fmt.pack(q, params).astype(np.uint8).reshape(-1)


def decode(blocks: np.ndarray, rows: int, cols: int, kind: str = "IQ4_NL") -> np.ndarray:
    """The weights a file's blocks of `kind` stand for (gguf-py's reading of them, as llama.cpp's)."""
    import gguf

    fmt = FORMATS[kind]
    data = np.asarray(blocks, dtype=np.uint8).reshape(rows, cols // fmt.group * fmt.nbytes)
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
        by_head = moments.get(t.name + HEADS)
        if by_head is not None and rows % len(by_head) == 0:  # each head's rows against its own moments
            step = rows // len(by_head)
            blob = np.concatenate([encode(*quantize_matrix(w[g * step:(g + 1) * step], h, kind), kind)
                                   for g, h in enumerate(by_head)])
        else:
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
    heads = sum(t.name + HEADS in moments for t in todo)
    return {"tensors": len(todo), "types": dict(kinds), "damp": DAMP, "by_head": heads, "without_moments": skipped}
