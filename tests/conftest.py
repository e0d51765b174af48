from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
# Tests never reach a model hub: fail fast instead of waiting on a network that is not there.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random Llama with its tokenizer, saved once per session (read-only for tests)."""
    from helpers import tiny_llama

    return tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny-llama")


@pytest.fixture(scope="session")
def tiny_gguf(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny Llama as an F16 GGUF, exported once per session (read-only for tests)."""
    from slmkit.pipelines.quantize import gguf_export

    return gguf_export.export(tiny_model_dir, tmp_path_factory.mktemp("gguf") / "tiny-f16.gguf").path


@pytest.fixture
def toy_stages(monkeypatch):
    """The stage table with toy stages in every row, restored after the test."""
    import toy_stages as toys

    from slmkit.pipelines.core.stages import STAGES

    originals = toys.install(STAGES)
    toys.CALLS.clear()
    yield toys
    STAGES.update(originals)
