"""The quantize stage: quantisation with and without an importance matrix, the retention report, the quality
gate, the stage's outputs, and the CLI's bad-input errors. Tiny models use hidden 256 so K-quants apply."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import tiny_llama

from slmkit.pipelines import quantize
from slmkit.pipelines.core.errors import SlmkitError, StageFailed
from slmkit.pipelines.core.runner import run_standalone
from slmkit.pipelines.quantize import gguf_export, gguf_quant, retention


@pytest.fixture(scope="module")
def model256(tmp_path_factory) -> Path:
    return tiny_llama(tmp_path_factory.mktemp("m") / "llama256", vocab_size=320, hidden=256)


@pytest.fixture(scope="module")
def f16(model256, tmp_path_factory) -> Path:
    return gguf_export.export(model256, tmp_path_factory.mktemp("g") / "model-f16.gguf").path


def _config(model: Path, **kw) -> quantize.QuantizeConfig:
    return quantize.QuantizeConfig.model_validate({"model": str(model), "eval_tokens": 400, "calib_tokens": 600,
                                                   "chunk": 128, "threads": 1, **kw})


@pytest.fixture
def by_head_asked(monkeypatch) -> list[bool]:
    """What each calibration pass was asked for: per-head k/v moments or not (gptq.second_moments' by_head)."""
    from slmkit.pipelines.quantize import gptq

    asked, real = [], gptq.second_moments

    def second_moments(model_dir, chunks, progress=None, by_head=True):
        asked.append(by_head)
        return real(model_dir, chunks, progress, by_head)

    monkeypatch.setattr(gptq, "second_moments", second_moments)
    return asked


def test_stage_writes_every_output_and_a_report(model256, tmp_path):
    res = run_standalone("quantize", _config(model256, qtypes=["Q4_K_M", "Q8_0"]), tmp_path / "out")
    assert set(res.outputs) == {"f16", "Q4_K_M", "Q8_0", "imatrix", "modelfile", "report"}
    for key in res.outputs:
        assert res.output(key).is_file()
    assert "FROM ./model-Q4_K_M.gguf\n" in res.output("modelfile").read_text()  # the first qtype is the one served
    report = json.loads(res.output("report").read_text())
    ret = report["retention"]
    assert ret["f16_vs_hf"]["kld_mean"] < 1e-3 and ret["f16_vs_hf"]["top1_agreement"] > 0.98
    q4, q8 = ret["Q4_K_M_vs_f16"], ret["Q8_0_vs_f16"]
    assert q8["kld_mean"] < q4["kld_mean"]  # more bits, less drift: figures that are measured, not invented
    assert q4["tokens"] >= 300 and 0 < q4["kld_mean"] <= q4["kld_p99"] * 10
    info = report["quantized"]["Q4_K_M"]
    assert info["bits_per_weight"] < 6 < report["quantized"]["Q8_0"]["bits_per_weight"] < 9
    assert info["fallbacks"] == [] and {"Q4_K", "Q6_K"} <= set(info["tensor_types"])
    assert info["imatrix_entries"] > 0 and info["imatrix_missing"] == []  # every matrix found its data


def test_imatrix_changes_the_quantised_weights(model256, f16, tmp_path):
    chunks = retention.token_chunks(model256, quantize.read_text(quantize.CALIB_SAMPLE), 512, 128)
    im = gguf_quant.compute_imatrix(model256, chunks)
    assert im["blk.0.attn_q.weight"].shape == (256,) and im["blk.0.ffn_down.weight"].shape == (512,)
    assert "token_embd.weight" in im  # tied: lm_head's inputs feed the shared matrix
    gguf_quant.save_imatrix(im, tmp_path / "im.npz")
    with np.load(tmp_path / "im.npz") as saved:  # the file other tools read: a plain .npz of the same arrays
        again = {k: saved[k] for k in saved.files}
    assert all(np.array_equal(im[k], again[k]) for k in im)
    a = gguf_quant.quantize(f16, tmp_path / "a.gguf", "Q4_K_M")
    b = gguf_quant.quantize(f16, tmp_path / "b.gguf", "Q4_K_M", again)
    assert a["bytes"] == b["bytes"]  # same types, same size …
    assert (tmp_path / "a.gguf").read_bytes() != (tmp_path / "b.gguf").read_bytes()  # … different rounding


def test_fallbacks_are_reported_for_rows_not_divisible_by_256(tmp_path):
    small = tiny_llama(tmp_path / "small", vocab_size=320, hidden=64)
    src = gguf_export.export(small, tmp_path / "f16.gguf").path
    info = gguf_quant.quantize(src, tmp_path / "q.gguf", "Q4_K_M")
    assert info["fallbacks"] and all(f["row"] % 256 for f in info["fallbacks"])
    assert "Q4_K" not in info["tensor_types"]


def test_quality_gate_fails_with_the_figures(model256, tmp_path):
    cfg = _config(model256, qtypes=["Q4_0"], imatrix=False, max_kld=1e-9, min_top1_agreement=1.0)
    with pytest.raises(StageFailed, match=r"Q4_0: mean KLD [0-9.]+ > max_kld") as err:
        run_standalone("quantize", cfg, tmp_path / "out")
    assert "top-1 agreement" in str(err.value)
    assert not (tmp_path / "out" / "DONE.json").exists()


def test_unknown_qtype_is_a_config_error(model256):
    with pytest.raises(Exception, match="unknown qtype Q3_XS"):
        _config(model256, qtypes=["Q3_XS"])
    with pytest.raises(SlmkitError, match="unknown qtype"):
        gguf_quant.check_qtype("Q3_XS")


def test_read_text_takes_jsonl_strings(tmp_path):
    p = tmp_path / "t.jsonl"
    p.write_text(json.dumps({"messages": [{"role": "user", "content": "hello there"}]}) + "\n\n{bad\n")
    with pytest.raises(SlmkitError, match=r"t.jsonl:3"):
        quantize.read_text(p)
    p.write_text(json.dumps({"messages": [{"role": "user", "content": "hello there"}]}) + "\n")
    assert "hello there" in quantize.read_text(p)


def test_shipped_samples_are_long_enough():
    assert len(quantize.HELDOUT_SAMPLE.read_text().split()) > 1400
    assert len(quantize.CALIB_SAMPLE.read_text().split()) > 500


def test_cli_bad_input_is_one_clear_line(tmp_path):
    import os
    import subprocess
    import sys

    def cli(*args):
        return subprocess.run([sys.executable, "-c", "from slmkit.cli.app import main; main()", "quantize", *args],
                              capture_output=True, text=True, timeout=120,
                              env={**os.environ, "COLUMNS": "400"})

    r = cli("--model", str(tmp_path), "--out", str(tmp_path / "o"))
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "not a Hugging Face model folder" in r.stderr
    r = cli("--model", str(tmp_path), "--out", str(tmp_path / "o"), "--qtype", "Q9_Z")
    assert r.returncode != 0 and "Traceback" not in r.stderr and "unknown qtype Q9_Z" in r.stderr


def test_recipe_defaults_read_merge_and_curate_outputs(model256, tmp_path):
    from slmkit.pipelines.core.stage import StageContext, StageResult

    curate_dir = tmp_path / "01_curate"
    curate_dir.mkdir()
    rec = {"messages": [{"role": "user", "content": "Order 42 was shipped on Monday to Berlin."},
                        {"role": "assistant", "content": '{"order": 42, "city": "Berlin"}'}]}
    (curate_dir / "train.jsonl").write_text("\n".join(json.dumps(rec) for _ in range(20)) + "\n")
    (curate_dir / "eval.jsonl").write_text(json.dumps({"text": "The invoice number is INV-1001. " * 20}) + "\n")
    upstream = {"curate": StageResult("curate", curate_dir, {"train": "train.jsonl", "eval": "eval.jsonl"}),
                "merge": StageResult("merge", model256.parent, {"model": model256.name})}
    out = tmp_path / "out"
    out.mkdir()
    ctx = StageContext("quantize", out, out / "state", tmp_path / "cache", upstream, "fp")
    cfg = quantize.QuantizeConfig.model_validate({"qtypes": ["Q8_0"], "chunk": 64, "threads": 1})
    outcome = quantize.run(cfg, ctx)
    report = json.loads((out / outcome.outputs["report"]).read_text())
    assert report["model"] == str(model256)
    assert report["imatrix"]["calib"] == str(curate_dir / "train.jsonl")
    assert report["retention"]["heldout"] == str(curate_dir / "eval.jsonl")
    assert outcome.metrics["Q8_0_vs_f16_kld"] >= 0 and "Q8_0_bpw" in outcome.metrics


def test_q4_k_nl_keeps_rows_k_quants_cannot_take_at_4_bits(tmp_path):
    """Rows of 64 (not a multiple of 256): Q4_K_M falls back to 5- and 8-bit types; Q4_K_NL gives them IQ4_NL,
    the attention k/v Q8_0, and the file still loads in llama.cpp and agrees with its F16 on most tokens."""
    small = tiny_llama(tmp_path / "small", vocab_size=320, hidden=64)
    src = gguf_export.export(small, tmp_path / "f16.gguf").path
    k_m = gguf_quant.quantize(src, tmp_path / "k_m.gguf", "Q4_K_M")
    nl = gguf_quant.quantize(src, tmp_path / "nl.gguf", "Q4_K_NL")
    assert set(nl["tensor_types"]) == {"F32", "IQ4_NL", "Q8_0"}, nl["tensor_types"]
    import gguf

    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(tmp_path / "nl.gguf")).tensors}
    assert {n for n, k in types.items() if k == "Q8_0"} == {n for n in types if "attn_k." in n or "attn_v." in n}
    assert types["token_embd.weight"] == "IQ4_NL"
    assert nl["bytes"] < k_m["bytes"] and not nl["fallbacks"]
    chunks = retention.token_chunks(small, "the quick brown fox jumps over the lazy dog " * 20, 120, 60)
    scorers = {"f16": retention.GGUFScorer(src, 64, 1), "nl": retention.GGUFScorer(tmp_path / "nl.gguf", 64, 1)}
    try:
        fig = retention.compare(chunks, scorers, {"nl_vs_f16": ("f16", "nl")})["nl_vs_f16"]
    finally:
        for s in scorers.values():
            s.close()
    assert fig["tokens"] > 50 and fig["top1_agreement"] > 0.5, fig


def test_retention_figures_do_not_depend_on_the_row_block(monkeypatch):
    """Rows are scored in blocks to bound memory; a block size that takes the whole chunk gives the same KLD,
    top-1 and perplexities (up to the float sum of the log-likelihoods)."""
    import numpy as np

    from slmkit.pipelines.quantize import retention

    rng = np.random.default_rng(0)
    ref = rng.normal(size=(300, 1000)).astype(np.float32)
    test = ref + rng.normal(scale=0.3, size=ref.shape).astype(np.float32)
    ids = [int(i) for i in rng.integers(0, 1000, size=300)]
    blocked = retention.Tally()
    blocked.add(ref, test, ids)
    monkeypatch.setattr(retention, "ROWS_PER_BLOCK", 10**9)
    whole = retention.Tally()
    whole.add(ref, test, ids)
    a, b = blocked.summary(), whole.summary()
    assert a["tokens"] == b["tokens"] == 299 and a["kld_mean"] > 0.01  # a real drift, not two equal models
    assert (a["kld_mean"], a["kld_p99"], a["top1_agreement"]) == (b["kld_mean"], b["kld_p99"], b["top1_agreement"])
    assert a["ppl_ratio"] == pytest.approx(b["ppl_ratio"], rel=1e-12)


def test_retention_frees_the_hf_model_before_the_quantised_files_open(model256, tmp_path, monkeypatch):
    """The fp32 HF model is the biggest thing the check holds: it is closed before any quantised file opens, and
    the figures equal those of one pass holding every scorer at once."""
    events: list[str] = []

    class Logged:
        def __init__(self, inner, name):
            self.inner, self.name = inner, name
            events.append(f"open {name}")

        def logits(self, ids):
            return self.inner.logits(ids)

        def close(self):
            events.append(f"close {self.name}")
            self.inner.close()

    real_hf, real_gguf = retention.HFScorer, retention.GGUFScorer
    monkeypatch.setattr(retention, "HFScorer", lambda d: Logged(real_hf(d), "hf"))
    monkeypatch.setattr(retention, "GGUFScorer", lambda p, n, t=None: Logged(real_gguf(p, n, t), Path(p).name))
    out = tmp_path / "out"
    run_standalone("quantize", _config(model256, qtypes=["Q4_K_M", "Q8_0"], retention=False), out)
    config = _config(model256, qtypes=["Q4_K_M", "Q8_0"])
    from rich.progress import Progress

    with Progress(disable=True) as progress:
        got = quantize._retention(model256, out, "model-f16.gguf", config, quantize.HELDOUT_SAMPLE, progress)
    first_quantised = min(events.index(f"open model-{q}.gguf") for q in ("Q4_K_M", "Q8_0"))
    assert events.index("close hf") < first_quantised
    assert all(events.count(f"open {n}") == events.count(f"close {n}") for n in ("hf", "model-f16.gguf"))

    chunks = retention.token_chunks(model256, quantize.read_text(quantize.HELDOUT_SAMPLE), config.eval_tokens,
                                    config.chunk)
    n_ctx = max(len(c) for c in chunks)
    scorers = {"hf": real_hf(model256), "f16": real_gguf(out / "model-f16.gguf", n_ctx, 1),
               **{q: real_gguf(out / f"model-{q}.gguf", n_ctx, 1) for q in ("Q4_K_M", "Q8_0")}}
    try:
        once = retention.compare(chunks, scorers, {"f16_vs_hf": ("hf", "f16"), "Q4_K_M_vs_f16": ("f16", "Q4_K_M"),
                                                   "Q8_0_vs_f16": ("f16", "Q8_0")})
    finally:
        for s in scorers.values():
            s.close()
    assert {k: got[k] for k in once} == once and once["Q4_K_M_vs_f16"]["kld_mean"] > 0


def test_stage_with_gptq_rewrites_q4_k_nl_and_keeps_the_importance_matrix(tmp_path, by_head_asked):
    """quantize.gptq: one calibration pass gives the importance matrix (saved as before) and GPTQ's second
    moments; Q4_K_NL's IQ4_NL blocks are rewritten, Q4_K_M is left as llama.cpp wrote it, and the report says so.
    Q4_K_NL keeps keys and values at Q8_0, so the pass gathers no per-head moments for them."""
    small = tiny_llama(tmp_path / "small", vocab_size=320, hidden=64)
    res = run_standalone("quantize", _config(small, qtypes=["Q4_K_NL", "Q4_K_M"], gptq=True), tmp_path / "out")
    assert by_head_asked == [False]
    report = json.loads(res.output("report").read_text())
    nl, k_m = report["quantized"]["Q4_K_NL"], report["quantized"]["Q4_K_M"]
    assert nl["gptq"]["tensors"] == nl["tensor_types"]["IQ4_NL"] > 0 and nl["gptq"]["without_moments"] == []
    assert "gptq" not in k_m
    assert report["retention"]["Q4_K_NL_vs_f16"]["tokens"] > 0  # the rewritten file loads and is scored
    with np.load(res.output("imatrix")) as saved:
        assert saved["blk.0.attn_q.weight"].shape == (64,)
    plain = run_standalone("quantize", _config(small, qtypes=["Q4_K_NL"]), tmp_path / "plain")
    assert res.output("Q4_K_NL").stat().st_size == plain.output("Q4_K_NL").stat().st_size
    assert res.output("Q4_K_NL").read_bytes() != plain.output("Q4_K_NL").read_bytes()


def test_general_text_joins_the_calibration_after_the_domain_text(model256, tmp_path):
    """quantize.calib_general_tokens: windows of the shipped general sample follow the calibration text's, the
    report counts each, and the importance matrix is computed over both."""
    domain = tmp_path / "domain.txt"
    domain.write_text("Order 42 was shipped on Monday to Berlin; the customer asks for a refund. " * 40)
    own, n_own = quantize.calibration_chunks(model256, domain, 600, 0, 128)
    both, n_both = quantize.calibration_chunks(model256, domain, 600, 300, 128)
    general = retention.token_chunks(model256, quantize.read_text(quantize.CALIB_SAMPLE), 300, 128)
    assert n_own == n_both == len(own) and both == own + general and general

    def imatrix(**kw):
        cfg = _config(model256, qtypes=["Q8_0"], calib=str(domain), retention=False, modelfile=False, **kw)
        res = run_standalone("quantize", cfg, tmp_path / f"out{len(kw)}")
        with np.load(res.output("imatrix")) as saved:
            return json.loads(res.output("report").read_text())["imatrix"], saved["blk.0.attn_q.weight"]

    (alone, im_alone), (mixed, im_mixed) = imatrix(), imatrix(calib_general_tokens=300)
    assert "general" not in alone and alone["calib"] == str(domain)
    assert mixed["general"] == {"text": str(quantize.CALIB_SAMPLE), "tokens": sum(map(len, general))}
    assert mixed["tokens"] == alone["tokens"] + mixed["general"]["tokens"]
    assert not np.allclose(im_alone, im_mixed)


def test_more_bits_layers_are_llama_cpps_and_q4_k_nl30_spends_on_the_embedding_first():
    assert gguf_quant.more_bits(30) == [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29]  # use_more_bits, n = 30
    names = ["token_embd.weight"] + [f"blk.{i}.{m}.weight" for i in range(30) for m in ("attn_k", "attn_v")]
    order = gguf_quant.QTYPES["Q4_K_NL30"].upgrades(names)
    assert order[0] == ("token_embd.weight", "Q5_0") and len(order) == 31
    assert [n for n, _ in order[1:4]] == ["blk.0.attn_v.weight", "blk.1.attn_v.weight", "blk.2.attn_v.weight"]
    assert order[4][0] == "blk.5.attn_v.weight" and order[15][0] == "blk.3.attn_v.weight"  # the others after


def test_a_budgeted_mixture_takes_upgrades_in_order_while_the_file_fits_and_the_file_does(tmp_path, monkeypatch):
    """Upgrades are taken in order while the file stays within the budget times the F16 file; one that does not
    fit is passed over and a smaller one after it still taken; the file llama.cpp writes is within the budget."""
    import gguf

    small = tiny_llama(tmp_path / "small", vocab_size=320, hidden=64)
    src = gguf_export.export(small, tmp_path / "f16.gguf").path
    base = gguf_quant.mixture_types(src, gguf_quant.QType(15, 32, gguf_quant.all_4bit))
    assert set(base.values()) == {"IQ4_NL"}  # rows of 64: every matrix 32-wide 4-bit, k and v too
    ups = [("token_embd.weight", "Q8_0"), ("blk.0.attn_v.weight", "Q5_0"), ("blk.1.attn_v.weight", "Q5_0")]
    n = {t.name: int(t.n_elements) for t in gguf.GGUFReader(str(src)).tensors}
    cost = {name: gguf_quant._bytes(n[name], kind) - gguf_quant._bytes(n[name], base[name]) for name, kind in ups}
    assert cost["token_embd.weight"] > 2 * cost["blk.0.attn_v.weight"]
    monkeypatch.setitem(gguf_quant.QTYPES, "plain4", gguf_quant.QType(15, 32, gguf_quant.all_4bit))
    four = gguf_quant.quantize(src, tmp_path / "four.gguf", "plain4", None, 1)["bytes"]
    # room for both value matrices and half the embedding's upgrade, no more
    budget = (four + cost["blk.0.attn_v.weight"] + cost["blk.1.attn_v.weight"] + cost["token_embd.weight"] // 2
              + gguf_quant.SPARE) / src.stat().st_size
    spec = gguf_quant.QType(15, 32, gguf_quant.all_4bit, lambda names: ups, budget)
    chosen = gguf_quant.mixture_types(src, spec)
    assert chosen["token_embd.weight"] == "IQ4_NL"  # did not fit: passed over
    assert chosen["blk.0.attn_v.weight"] == chosen["blk.1.attn_v.weight"] == "Q5_0"  # taken after it
    monkeypatch.setitem(gguf_quant.QTYPES, "budgeted", spec)
    info = gguf_quant.quantize(src, tmp_path / "budgeted.gguf", "budgeted", None, 1)
    assert info["bytes"] == four + cost["blk.0.attn_v.weight"] + cost["blk.1.attn_v.weight"]
    assert info["bytes"] <= budget * src.stat().st_size


def test_stage_with_gptq_and_q4_k_nl30_rounds_keys_and_values_per_head_and_the_file_loads(tmp_path, by_head_asked):
    """Q4_K_NL30 sends keys and values to IQ4_NL: the calibration pass gathers their per-head moments, GPTQ
    rounds them per head, and the file is scored against F16 (llama.cpp loads it)."""
    small = tiny_llama(tmp_path / "small", vocab_size=320, hidden=64)
    res = run_standalone("quantize", _config(small, qtypes=["Q4_K_NL30"], gptq=True), tmp_path / "out")
    report = json.loads(res.output("report").read_text())
    nl30 = report["quantized"]["Q4_K_NL30"]
    assert by_head_asked == [True] and nl30["gptq"]["by_head"] == 4  # k and v of both layers
    assert "Q8_0" not in nl30["tensor_types"]
    assert np.isfinite(report["retention"]["Q4_K_NL30_vs_f16"]["kld_mean"])
