"""slmkit's quantize stage side by side with llama.cpp's own tools, on the same model and the same text; writes
bench-results/quantize_reference.json.

  python scripts/bench_quantize_reference.py [--threads 2] [--calib-tokens 4096]

Why: issue #3's Q4_K_M targets were set from llama.cpp's own pipeline (convert_hf_to_gguf.py, llama-imatrix,
llama-quantize, llama-perplexity) on text we do not have. This benchmark runs that pipeline here, on slmkit's
shipped calibration and held-out samples, so each of slmkit's figures can be read against llama.cpp's on equal
terms:
  1. F16 export: slmkit's exporter vs convert_hf_to_gguf.py, tensor by tensor (type, shape, bytes);
  2. importance matrix: slmkit's (PyTorch hooks) vs llama-imatrix's, per tensor (relative difference, correlation);
  3. Q4_K_M with and without each importance matrix: both quantised files scored against the F16 file by
     slmkit's meter (every position of 512-token windows) and by llama-perplexity --kl-divergence (second half
     of each window only), so neither meter's protocol decides the comparison.

The llama.cpp tools come from the source of the llama-cpp-python release installed here (the registry's sdist,
fetched with pip), built once with CMake into bench-results/cache/llama.cpp-<version>/ (about 5 minutes on two
cores); nothing else is downloaded.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from importlib import metadata
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ("llama-imatrix", "llama-quantize", "llama-perplexity")


def llama_cpp_source(cache: Path) -> Path:
    """vendor/llama.cpp of the installed llama-cpp-python's sdist, with the three tools built."""
    version = metadata.version("llama-cpp-python")
    home = cache / f"llama.cpp-{version}"
    src = home / f"llama_cpp_python-{version}" / "vendor" / "llama.cpp"
    if not src.is_dir():
        home.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", f"llama-cpp-python=={version}", "--no-binary",
                        ":all:", "--no-deps", "-d", str(home)], check=True)
        with tarfile.open(home / f"llama_cpp_python-{version}.tar.gz") as tar:
            tar.extractall(home, filter="data")
    build = src / "build"
    if not all((build / "bin" / t).is_file() for t in TOOLS):
        subprocess.run(["cmake", "-B", str(build), "-S", str(src), "-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_CURL=OFF",
                        "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_SERVER=OFF"], check=True, capture_output=True)
        subprocess.run(["cmake", "--build", str(build), "-j2", "--target", *TOOLS], check=True)
    return src


def compare_tensors(a: Path, b: Path) -> dict:
    import gguf

    ta = {t.name: t for t in gguf.GGUFReader(str(a)).tensors}
    tb = {t.name: t for t in gguf.GGUFReader(str(b)).tensors}
    common = sorted(set(ta) & set(tb))
    identical = [n for n in common if ta[n].tensor_type == tb[n].tensor_type and list(ta[n].shape) == list(tb[n].shape)
                 and np.array_equal(np.asarray(ta[n].data), np.asarray(tb[n].data))]
    return {"tensors": len(ta), "only_in_reference": sorted(set(ta) - set(tb)), "only_in_slmkit": sorted(set(tb) - set(ta)),
            "identical": len(identical), "type_mismatches": sum(ta[n].tensor_type != tb[n].tensor_type for n in common)}


def read_llama_imatrix(path: Path) -> dict[str, np.ndarray]:
    """llama-imatrix's GGUF output: per matrix, `<name>.in_sum2` (sum of squares per column) and `.counts`."""
    import gguf

    t = {x.name: np.asarray(x.data, dtype=np.float64).ravel() for x in gguf.GGUFReader(str(path)).tensors}
    return {n[: -len(".in_sum2")]: t[n] / t[n[: -len(".in_sum2")] + ".counts"][0] for n in t if n.endswith(".in_sum2")}


def compare_imatrix(ref: dict[str, np.ndarray], ours: dict[str, np.ndarray]) -> dict:
    common = sorted(set(ref) & set(ours))
    rel = [float(np.max(np.abs(ours[n] - ref[n]) / np.maximum(np.abs(ref[n]), 1e-12))) for n in common]
    corr = [float(np.corrcoef(ref[n], ours[n])[0, 1]) for n in common]
    return {"matrices_reference": len(ref), "matrices_slmkit": len(ours), "common": len(common),
            "only_in_slmkit": sorted(set(ours) - set(ref)), "only_in_reference": sorted(set(ref) - set(ours)),
            "max_relative_difference": max(rel), "min_correlation": min(corr)}


_PPL_FIELDS = {"kld_mean": r"Mean\s+KLD:\s+([\d.]+)", "kld_p99": r"99\.0%\s+KLD:\s+([\d.]+)",
               "top1_agreement": r"Same top p:\s+([\d.]+)", "ppl_ratio": r"Mean PPL\(Q\)/PPL\(base\)\s+:\s+([\d.]+)"}


def llama_perplexity_kld(bin_dir: Path, model: Path, base: Path, threads: int) -> dict:
    out = subprocess.run([str(bin_dir / "llama-perplexity"), "-m", str(model), "--kl-divergence-base", str(base),
                          "--kl-divergence", "-t", str(threads)], check=True, capture_output=True, text=True)
    text = out.stdout + out.stderr
    figs = {k: float(re.search(p, text).group(1)) for k, p in _PPL_FIELDS.items()}
    figs["top1_agreement"] /= 100
    return figs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--calib-tokens", type=int, default=4096, help="a multiple of 512 (llama-imatrix's chunk)")
    ap.add_argument("--eval-tokens", type=int, default=2400)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "bench-results" / "quantize_reference.json")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from slmkit.pipelines import quantize
    from slmkit.pipelines.core.models import resolve
    from slmkit.pipelines.quantize import gguf_export, gguf_quant, retention

    src = llama_cpp_source(ROOT / "bench-results" / "cache")
    bin_dir = src / "build" / "bin"
    model_dir = Path(resolve(args.model))
    calib_text, held_text = quantize.CALIB_SAMPLE, quantize.HELDOUT_SAMPLE
    result: dict = {"model": args.model, "llama_cpp_python": metadata.version("llama-cpp-python"),
                    "calib": str(calib_text.relative_to(ROOT)), "heldout": str(held_text.relative_to(ROOT))}
    with tempfile.TemporaryDirectory(prefix="bench-qref-") as tmp:
        tmp = Path(tmp)
        ours_f16, ref_f16 = tmp / "slmkit-f16.gguf", tmp / "llamacpp-f16.gguf"
        gguf_export.export(model_dir, ours_f16, "f16")
        subprocess.run([sys.executable, str(src / "convert_hf_to_gguf.py"), str(model_dir), "--outtype", "f16",
                        "--outfile", str(ref_f16)], check=True, capture_output=True,
                       env={**os.environ, "PYTHONPATH": str(src / "gguf-py")})
        result["f16_export"] = compare_tensors(ref_f16, ours_f16)

        chunks = retention.token_chunks(model_dir, quantize.read_text(calib_text), args.calib_tokens, 512)
        t = time.perf_counter()
        ours_im = gguf_quant.compute_imatrix(model_dir, chunks)
        ours_im_s = time.perf_counter() - t
        t = time.perf_counter()
        subprocess.run([str(bin_dir / "llama-imatrix"), "-m", str(ref_f16), "-f", str(calib_text), "-c", "512",
                        "--chunks", str(args.calib_tokens // 512), "-t", str(args.threads), "-o",
                        str(tmp / "imatrix.gguf")], check=True, capture_output=True)
        ref_im_s = time.perf_counter() - t
        result["imatrix"] = compare_imatrix(read_llama_imatrix(tmp / "imatrix.gguf"), ours_im)
        result["imatrix"].update(slmkit_seconds=ours_im_s, llama_imatrix_seconds=ref_im_s,
                                 calib_tokens=sum(len(c) for c in chunks))

        files = {"slmkit_imatrix": tmp / "s-im.gguf", "slmkit_plain": tmp / "s-plain.gguf",
                 "llamacpp_imatrix": tmp / "l-im.gguf", "llamacpp_plain": tmp / "l-plain.gguf"}
        gguf_quant.quantize(ours_f16, files["slmkit_imatrix"], "Q4_K_M", ours_im, args.threads)
        gguf_quant.quantize(ours_f16, files["slmkit_plain"], "Q4_K_M", None, args.threads)
        quant = str(bin_dir / "llama-quantize")
        subprocess.run([quant, "--imatrix", str(tmp / "imatrix.gguf"), str(ref_f16), str(files["llamacpp_imatrix"]),
                        "Q4_K_M", str(args.threads)], check=True, capture_output=True)
        subprocess.run([quant, str(ref_f16), str(files["llamacpp_plain"]), "Q4_K_M", str(args.threads)], check=True,
                       capture_output=True)
        result["q4km_plain_files"] = compare_tensors(files["llamacpp_plain"], files["slmkit_plain"])
        result["q4km_imatrix_files"] = compare_tensors(files["llamacpp_imatrix"], files["slmkit_imatrix"])
        result["q4km_bytes"] = {k: p.stat().st_size for k, p in files.items()}

        held = retention.token_chunks(model_dir, quantize.read_text(held_text), args.eval_tokens, 512)
        scorers = {"f16": retention.GGUFScorer(ours_f16, 512, args.threads)}
        scorers.update({k: retention.GGUFScorer(p, 512, args.threads) for k, p in files.items()})
        try:
            slmkit_meter = retention.compare(held, scorers, {k: ("f16", k) for k in files})
        finally:
            for s in scorers.values():
                s.close()
        base = tmp / "f16.kld"
        subprocess.run([str(bin_dir / "llama-perplexity"), "-m", str(ours_f16), "-f", str(held_text), "-c", "512",
                        "-t", str(args.threads), "--kl-divergence-base", str(base)], check=True, capture_output=True)
        llama_meter = {k: llama_perplexity_kld(bin_dir, p, base, args.threads) for k, p in files.items()}
        result["vs_f16"] = {"slmkit_meter": slmkit_meter, "llama_perplexity_meter": llama_meter}
        for meter, figs in result["vs_f16"].items():
            result.setdefault("imatrix_kld_reduction", {})[meter] = {
                who: 1 - figs[f"{who}_imatrix"]["kld_mean"] / figs[f"{who}_plain"]["kld_mean"]
                for who in ("slmkit", "llamacpp")}

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    e, im = result["f16_export"], result["imatrix"]
    print(f"F16 export: {e['identical']}/{e['tensors']} tensors byte-identical to convert_hf_to_gguf.py")
    print(f"imatrix: {im['common']} matrices in common, max relative difference {im['max_relative_difference']:.1e}, "
          f"min correlation {im['min_correlation']:.8f} ({im['slmkit_seconds']:.1f} s vs llama-imatrix "
          f"{im['llama_imatrix_seconds']:.1f} s)")
    print(f"Q4_K_M without imatrix: {result['q4km_plain_files']['identical']}/{result['q4km_plain_files']['tensors']} "
          f"tensors byte-identical")
    for meter, figs in result["vs_f16"].items():
        print(f"[{meter}]")
        for k, f in figs.items():
            print(f"  {k:18s} KLD mean {f['kld_mean']:.4f}  p99 {f['kld_p99']:.4f}  top-1 {f['top1_agreement']:.2%}  "
                  f"ppl ratio {f['ppl_ratio']:.4f}")
        r = result["imatrix_kld_reduction"][meter]
        print(f"  imatrix KLD reduction: slmkit {r['slmkit']:.1%}, llama.cpp {r['llamacpp']:.1%}")


if __name__ == "__main__":
    main()
