"""One shorthand for naming a model, shared by every config that takes one (distill's teacher, bench's targets):

    openai:MODEL@http(s)://HOST/v1   an OpenAI-compatible endpoint (the shorthand sends no key: a config that
                                     needs one takes the mapping form with `api_key_env`)
    gguf:PATH                        a GGUF file, run in-process by llama-cpp-python
    hf:PATH_OR_ID                    a transformers model folder, a model slmkit knows, or an HF id
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from slmkit.pipelines.core import secrets

FORMS = "openai:MODEL@BASE_URL, gguf:PATH or hf:PATH_OR_NAME"


@dataclass(frozen=True)
class Spec:
    kind: str
    model: str | None = None  # endpoint model name, or a known name / HF id for hf
    path: str | None = None  # a local file or folder
    base_url: str | None = None


def parse_spec(spec: str, kinds: tuple[str, ...] = ("openai", "gguf", "hf")) -> Spec:
    """The parts of a shorthand; ValueError (naming no key: the text is scrubbed) when it is not one. A key
    inside the URL is left to the config's `base_url` field to refuse, so the error names that field."""
    kind, sep, rest = spec.partition(":")
    if not sep or not rest or kind not in kinds:
        raise ValueError(f"'{secrets.scrub(spec)}' is not {FORMS}")
    if kind == "openai":
        model, at, url = rest.partition("@")
        if not at or not model or not url.startswith(("http://", "https://")):
            raise ValueError(f"'{secrets.scrub(spec)}' needs the form openai:MODEL@http(s)://HOST/v1")
        return Spec("openai", model=model, base_url=url.rstrip("/"))
    if kind == "hf" and not Path(rest).expanduser().exists() and not rest.startswith((".", "/", "~")):
        return Spec("hf", model=rest)  # a known model name or an HF id
    return Spec(kind, path=rest)
