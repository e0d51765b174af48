"""quantize: export the HF model to GGUF with slmkit's own exporter, quantise it with llama.cpp's quantiser
(guided by an importance matrix from the domain's calibration text), and measure what each file keeps.

    HF folder → model-f16.gguf (gguf_export) → imatrix.npz (gguf_quant, torch hooks on calibration text)
              → model-<QTYPE>.gguf per qtype (gguf_quant) + Modelfile for Ollama (ollama_modelfile)
              → quantize.json (retention on held-out text)

Inputs default to the pipeline's own data: the model from merge, calibration text from curate's `train`,
held-out text from curate's `eval`; with none, two small shipped English samples (evals/*.txt).
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from slmkit.pipelines.core import jsonl
from slmkit.pipelines.core.errors import SlmkitError, StageFailed
from slmkit.pipelines.core.progress import LoggedProgress
from slmkit.pipelines.core.rundir import write_error, write_json
from slmkit.pipelines.core.stage import Outcome, StageContext
from slmkit.pipelines.core.types import InputPath, ModelSpec, StrictModel

# Shipped inside the package (slmkit.evals), so they exist wherever slmkit is installed.
SAMPLES = Path(str(importlib.resources.files("slmkit.evals")))
CALIB_SAMPLE = SAMPLES / "calib_sample.txt"
HELDOUT_SAMPLE = SAMPLES / "heldout_sample.txt"


class QuantizeConfig(StrictModel):
    model: InputPath | None = Field(None, description="HF folder; default: merge's output, else the recipe's model")
    base: ModelSpec | None = Field(None, description="a known model name or HF id, when no folder is given")
    qtypes: list[str] = Field(default_factory=lambda: ["Q4_K_M"], description="Q4_K_M, Q4_K_NL (4-bit where rows are not a multiple of 256), Q4_K_NL30 (every matrix 4-bit, then the embedding and attention values 5-bit within 0.30x of F16), Q4_0, Q5_K_M, Q6_K, Q8_0")
    outtype: Literal["f16", "f32", "bf16"] = Field("f16", description="type of the unquantised GGUF")
    calib: InputPath | None = Field(None, description="calibration text (.txt or .jsonl); default: curate's train")
    heldout: InputPath | None = Field(None, description="held-out text (.txt or .jsonl); default: curate's eval")
    imatrix: bool = Field(True, description="compute an importance matrix from the calibration text")
    gptq: bool = Field(False, description="round Q4_K_NL's or Q4_K_NL30's 4-bit and Q5_0 blocks with GPTQ's error compensation "
                       "(input second moments from the calibration text): same file size, lower KLD")
    calib_tokens: int = Field(4096, gt=0, description="calibration tokens for the importance matrix")
    calib_general_tokens: int = Field(0, ge=0, description="tokens of slmkit's shipped general-English sample "
                                      "added to the calibration text: a file calibrated on the domain alone keeps "
                                      "the domain and loses general text (README)")
    eval_tokens: int = Field(2048, gt=1, description="held-out tokens scored for the retention report")
    chunk: int = Field(512, ge=16, le=4096, description="tokens per scored window")
    retention: bool = Field(True, description="measure KL divergence / top-1 / perplexity")
    modelfile: bool = Field(True, description="write an Ollama Modelfile for the first qtype's GGUF")
    min_top1_agreement: float | None = Field(None, ge=0, le=1, description="fail if a quantised file agrees less")
    max_kld: float | None = Field(None, gt=0, description="fail if a quantised file's mean KLD is higher")
    threads: int | None = Field(None, gt=0, description="CPU threads for torch and llama.cpp (default: all usable)")

    @field_validator("qtypes")
    @classmethod
    def _known_qtypes(cls, value: list[str]) -> list[str]:
        from slmkit.pipelines.quantize.gguf_quant import QTYPES

        bad = [q for q in value if q not in QTYPES]
        if bad:
            raise ValueError(f"unknown qtype {', '.join(bad)} (choose from {', '.join(QTYPES)})")
        if not value:
            raise ValueError("give at least one qtype")
        return list(dict.fromkeys(value))

    @model_validator(mode="after")
    def _gptq_has_work(self):
        from slmkit.pipelines.quantize.gguf_quant import QTYPES

        if self.gptq and not self.imatrix:
            raise ValueError("quantize.gptq needs the calibration pass (quantize.imatrix: true)")
        if self.gptq and not any(QTYPES[q].mixture for q in self.qtypes):
            raise ValueError("quantize.gptq rewrites a mixture's blocks (IQ4_NL, Q4_K, Q5_0), which only Q4_K_NL's and "
                             "Q4_K_NL30's mixtures write; add one of them to quantize.qtypes")
        return self


# ---------------------------------------------------------------------------------------------- inputs
def calibration_chunks(model_dir: Path, calib_path: Path, tokens: int, general_tokens: int = 0,
                       chunk: int = 512) -> tuple[list[list[int]], int]:
    """The calibration text's first `tokens` tokens as windows, then `general_tokens` of the shipped general
    sample (fewer if it holds fewer); with the number of windows from the calibration text.

    Why both: on the demo's fine-tuned SmolLM2 (scripts/bench_quant_mixture.py), Q4_K_NL30 with GPTQ calibrated
    on general text alone drifts 0.050 (mean KLD) on general text and 0.056 on the tickets; on 4,096 tokens of
    the tickets and 4,096 of general text, 0.055 and 0.032. Calibrated on the tickets alone (Q4_K_NL, before
    act-order), 0.090 on general text: a file calibrated on the domain alone forgets the rest."""
    from slmkit.pipelines.quantize import retention

    own = retention.token_chunks(model_dir, read_text(calib_path), tokens, chunk)
    if not own:
        raise SlmkitError(f"{calib_path}: no calibration text found")
    general = retention.token_chunks(model_dir, read_text(CALIB_SAMPLE), general_tokens, chunk) if general_tokens else []
    return own + general, len(own)


def read_text(path: Path) -> str:
    """Plain text, or every string value of each JSONL record (chat messages, prompt/response, text …)."""
    path = Path(path)
    if path.suffix != ".jsonl":
        return path.read_text(encoding="utf-8", errors="replace")
    parts: list[str] = []

    def walk(v) -> None:
        if isinstance(v, str):
            parts.append(v)
        elif isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)

    for _, _, value in jsonl.records(path, objects=False):
        walk(value)
    return "\n\n".join(parts)


def _model_dir(config: QuantizeConfig, ctx: StageContext) -> Path:
    if config.model:
        return Path(config.model)
    merged = ctx.first_input("model", ["merge"])
    if merged is not None:
        return merged
    spec = config.base or ctx.base_model
    if not spec:
        raise SlmkitError("quantize: no model (set quantize.model, run merge first, or give the recipe a model)")
    from slmkit.pipelines.core.models import resolve

    path = Path(resolve(spec, log=ctx.console.print))
    if not path.is_dir():
        raise SlmkitError(f"quantize.base: '{spec}' is not a local model folder; the exporter reads local files")
    return path


def _text_source(explicit: Path | None, ctx: StageContext, key: str, sample: Path) -> Path:
    return Path(explicit) if explicit else (ctx.first_input(key, ["curate"]) or sample)


def _progress(ctx: StageContext) -> Progress:
    return LoggedProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=ctx.console, transient=True)


def _step(progress: Progress, label: str):
    task = progress.add_task(label, total=None)
    return lambda done, total: progress.update(task, completed=done, total=total)


# ---------------------------------------------------------------------------------------------- stage
def run(config: QuantizeConfig, ctx: StageContext) -> Outcome:
    from slmkit.pipelines.quantize import gguf_export, gguf_quant

    if config.threads:
        import torch

        torch.set_num_threads(config.threads)
    model_dir = _model_dir(config, ctx)
    gguf_export.open_model(model_dir)  # fail on a bad folder before any work
    out = ctx.out
    outputs: dict[str, str] = {}
    report: dict = {"model": str(model_dir), "outtype": config.outtype, "qtypes": config.qtypes}
    with _progress(ctx) as progress:
        base_name = f"model-{config.outtype}.gguf"
        res = gguf_export.export(model_dir, out / base_name, config.outtype, _step(progress, f"export {base_name}"))
        outputs[config.outtype] = base_name
        report["export"] = {"arch": res.arch, "tensors": res.n_tensors, "tokenizer": res.tokenizer, "pre": res.pre,
                            **gguf_quant.tensor_report(out / base_name)}

        imatrix = moments = None
        calib_path = _text_source(config.calib, ctx, "train", CALIB_SAMPLE)
        if config.imatrix:
            chunks, n_own = calibration_chunks(model_dir, calib_path, config.calib_tokens,
                                               config.calib_general_tokens, config.chunk)
            if config.gptq:  # one pass gives both: the importance matrix is the second moments' diagonal
                from slmkit.pipelines.quantize import gptq

                by_head = any(gptq.rounds_heads(gguf_quant.mixture_types(out / base_name, spec))
                              for spec in map(gguf_quant.QTYPES.get, config.qtypes) if spec.mixture)
                moments = gptq.second_moments(model_dir, chunks, _step(progress, "input second moments"), by_head)
                imatrix = gptq.importance(moments)
            else:
                imatrix = gguf_quant.compute_imatrix(model_dir, chunks, _step(progress, "importance matrix"))
            try:
                gguf_quant.save_imatrix(imatrix, out / "imatrix.npz")
            except OSError as err:  # a full disk: name the file, leave no half-written one
                for leftover in out.glob("imatrix.npz*"):
                    leftover.unlink(missing_ok=True)
                raise write_error(out / "imatrix.npz", err, sum(a.nbytes for a in imatrix.values())) from None
            outputs["imatrix"] = "imatrix.npz"
            report["imatrix"] = {"calib": str(calib_path), "tokens": sum(len(c) for c in chunks),
                                 "tensors": len(imatrix)}
            if config.calib_general_tokens:
                report["imatrix"]["general"] = {"text": str(CALIB_SAMPLE),
                                                "tokens": sum(len(c) for c in chunks[n_own:])}

        report["quantized"] = {}
        for q in config.qtypes:
            progress.add_task(f"quantise {q}", total=None)
            name = f"model-{q}.gguf"
            gptq_step = _step(progress, f"GPTQ {q}") if moments and gguf_quant.QTYPES[q].mixture else None
            report["quantized"][q] = gguf_quant.quantize(out / base_name, out / name, q, imatrix, config.threads,
                                                         moments if gptq_step else None, gptq_step)
            outputs[q] = name
        moments = None  # 0.4 GB for SmolLM2: gone before the retention pass opens its models
        if config.modelfile:
            from slmkit.pipelines.quantize import ollama_modelfile

            ollama_modelfile.write(out / f"model-{config.qtypes[0]}.gguf", model_dir)
            outputs["modelfile"] = "Modelfile"

        if config.retention:
            heldout = _text_source(config.heldout, ctx, "eval", HELDOUT_SAMPLE)
            report["retention"] = _retention(model_dir, out, base_name, config, heldout, progress)

    write_json(out / "quantize.json", report)
    outputs["report"] = "quantize.json"
    _show(ctx, report)
    _gate(config, report)
    return Outcome(outputs=outputs, metrics=_metrics(report))


def _retention(model_dir: Path, out: Path, base_name: str, config: QuantizeConfig, heldout: Path,
               progress: Progress) -> dict:
    from slmkit.pipelines.quantize import retention

    chunks = retention.token_chunks(model_dir, read_text(heldout), config.eval_tokens, config.chunk)
    if not chunks:
        raise SlmkitError(f"{heldout}: no held-out text to measure retention on")
    n_ctx = max(len(c) for c in chunks)
    base = out / base_name
    # Two passes, so the fp32 HF model (2× the F16 file, plus torch's runtime) is gone before the quantised files
    # load: the exported file against HF, then each quantised file against the exported one. The exported file
    # is scored twice; at a few thousand held-out tokens that costs seconds, where holding all at once cost the
    # demo's run its peak memory.
    passes = [
        ({"hf": lambda: retention.HFScorer(model_dir),
          config.outtype: lambda: retention.GGUFScorer(base, n_ctx, config.threads)},
         {f"{config.outtype}_vs_hf": ("hf", config.outtype)}),
        ({config.outtype: lambda: retention.GGUFScorer(base, n_ctx, config.threads),
          **{q: (lambda q=q: retention.GGUFScorer(out / f"model-{q}.gguf", n_ctx, config.threads))
             for q in config.qtypes}},
         {f"{q}_vs_{config.outtype}": (config.outtype, q) for q in config.qtypes}),
    ]
    figures: dict = {}
    for i, (openers, pairs) in enumerate(passes, 1):
        if pairs:
            figures.update(retention.compare_opened(chunks, openers, pairs,
                                                    _step(progress, f"retention {i}/{len(passes)}")))
    return {"heldout": str(heldout), **figures}


def _gate(config: QuantizeConfig, report: dict) -> None:
    misses = []
    for q in config.qtypes:
        fig = report.get("retention", {}).get(f"{q}_vs_{config.outtype}")
        if fig is None:
            continue
        if config.min_top1_agreement is not None and fig["top1_agreement"] < config.min_top1_agreement:
            misses.append(f"{q}: top-1 agreement {fig['top1_agreement']:.4f} < min_top1_agreement "
                          f"{config.min_top1_agreement}")
        if config.max_kld is not None and fig["kld_mean"] > config.max_kld:
            misses.append(f"{q}: mean KLD {fig['kld_mean']:.5f} > max_kld {config.max_kld}")
    if misses:
        raise StageFailed("quantize: quality retention below the recipe's bounds:\n  " + "\n  ".join(misses))


def _metrics(report: dict) -> dict:
    # The unquantised export's size, whatever its type (f16, bf16 or f32: `outtype`), beside each qtype's.
    m = {"export_bytes": report["export"]["bytes"], "export_type": report["outtype"]}
    for q, info in report["quantized"].items():
        m[f"{q}_bytes"] = info["bytes"]
        m[f"{q}_bpw"] = info["bits_per_weight"]
    for label, fig in report.get("retention", {}).items():
        if isinstance(fig, dict):
            m[f"{label}_kld"] = round(fig["kld_mean"], 6)
            m[f"{label}_top1"] = round(fig["top1_agreement"], 4)
    return m


def _show(ctx: StageContext, report: dict) -> None:
    from rich.table import Table

    table = Table(title="quantize")
    table.add_column("file", no_wrap=True)
    for col in ("size MB", "bits/w", "vs", "KLD mean", "KLD p99", "top-1", "ppl ratio"):
        table.add_column(col)
    ret = report.get("retention", {})
    rows = [(report["export"], f"{report['outtype']}_vs_hf")]
    rows += [(info, f"{q}_vs_{report['outtype']}") for q, info in report["quantized"].items()]
    for info, label in rows:
        fig = ret.get(label)
        cells = ["-"] * 5 if fig is None else [label.split("_vs_")[1], f"{fig['kld_mean']:.5f}",
                                               f"{fig['kld_p99']:.4f}", f"{fig['top1_agreement']:.2%}",
                                               f"{fig['ppl_ratio']:.4f}"]
        table.add_row(info["file"], f"{info['bytes'] / 1e6:.1f}", f"{info['bits_per_weight']:.2f}", *cells)
    ctx.console.print(table)
    for q, info in report["quantized"].items():
        if info["fallbacks"]:
            ctx.console.print(f"[yellow]{q}: {len(info['fallbacks'])} tensor(s) fell back from {q} "
                              f"(rows not divisible by its block), e.g. {info['fallbacks'][0]['tensor']} → "
                              f"{info['fallbacks'][0]['type']}[/]")
