"""Model specs: known names, local folders, HF ids, and the GGUF-in-a-package models prepared into HF folders."""

from __future__ import annotations

import pytest

from slmkit.pipelines.core.models import KNOWN, check_model_spec, model_digest, resolve


def test_known_local_and_hf_ids(tmp_path, tiny_model_dir):
    assert check_model_spec("smollm2-135m-instruct") == "smollm2-135m-instruct"
    assert check_model_spec(str(tiny_model_dir)) == str(tiny_model_dir.resolve())
    assert check_model_spec("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    # an HF id passes through unchanged: the real hub path stays real
    assert resolve("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert model_digest("org/name") == "hf:org/name"


@pytest.mark.parametrize("spec, needle", [
    ("no-such-model", "unknown model 'no-such-model'"),
    ("./missing-folder", "path does not exist"),
    ("/abs/missing", "path does not exist"),
    ("model.gguf", "path does not exist"),
])
def test_bad_specs(spec, needle):
    with pytest.raises(ValueError, match=needle):
        check_model_spec(spec)


def test_folder_without_config_is_not_a_model(tmp_path):
    with pytest.raises(ValueError, match="not an HF model folder"):
        check_model_spec(str(tmp_path))


def test_folder_digest_follows_content(tmp_path, tiny_model_dir):
    import shutil

    copy = tmp_path / "m"
    shutil.copytree(tiny_model_dir, copy)
    before = model_digest(str(copy))
    assert before == model_digest(str(tiny_model_dir))
    (copy / "config.json").write_text((copy / "config.json").read_text().replace("64", "65", 1))
    assert model_digest(str(copy)) != before


def test_known_table_is_consistent():
    for name, m in KNOWN.items():
        assert m.name == name and m.kind in ("causal-lm", "embedding") and m.fmt in ("gguf", "hf")


@pytest.mark.slow
def test_prepare_smollm2_loads_and_generates(tmp_path, monkeypatch):
    """The real shipped model: GGUF -> HF folder that transformers loads and generates from; prepared once."""
    import subprocess
    import sys

    monkeypatch.setenv("SLMKIT_CACHE", str(tmp_path / "cache"))
    cmd = [sys.executable, "-m", "slmkit", "models", "prepare", "smollm2-135m-instruct"]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    path = first.stdout.strip().splitlines()[-1]
    assert path == str(tmp_path / "cache" / "models" / "smollm2-135m-instruct")
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.stdout.strip().splitlines()[-1] == path and "preparing" not in again.stderr

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    assert tok.chat_template and "<|im_start|>" in tok.chat_template
    ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, return_dict=True, return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    answer = tok.decode(out[0][ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer
