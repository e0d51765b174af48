"""The Ollama Modelfile written beside a quantised GGUF: chat format recognised from the GGUF's own template, stop
tokens, sampling defaults from generation_config.json, and what happens when the format is unknown."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import tiny_llama

from slmkit.pipelines.quantize import gguf_export, ollama_modelfile

# One real-world-shaped Jinja fragment per format: each must be recognised as that format and no other.
JINJA = {
    "chatml": "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}",
    "gemma": "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ role }}\n{{ m['content'] }}<end_of_turn>",
    "llama3": "{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] }}",
    "phi3": "{% for m in messages %}<|user|>\n{{ m['content'] }}<|end|>\n<|assistant|>\n{% endfor %}",
    "mistral": "{% for m in messages %}[INST] {{ m['content'] }} [/INST]{% endfor %}",
}


@pytest.mark.parametrize("name", sorted(JINJA))
def test_each_chat_format_is_recognised_by_its_marker(name):
    assert ollama_modelfile.chat_format(JINJA[name]) == name


def test_unknown_or_missing_template_is_no_format():
    assert ollama_modelfile.chat_format("{{ messages[0]['content'] }}") is None
    assert ollama_modelfile.chat_format(None) is None


def test_templates_end_with_the_assistant_turn_their_format_opens():
    # Ollama generates from where the template stops, so each one must stop at an open assistant turn.
    opens = {"chatml": "<|im_start|>assistant\n", "gemma": "<start_of_turn>model\n",
             "llama3": "<|start_header_id|>assistant<|end_header_id|>\n\n", "phi3": "<|assistant|>\n",
             "mistral": "[/INST]{{ end }}{{ end }}"}
    assert set(opens) == set(ollama_modelfile.CHAT_FORMATS)
    for name, fmt in ollama_modelfile.CHAT_FORMATS.items():
        assert fmt.template.endswith(opens[name]), name
        assert fmt.template.count("{{ end }}") == fmt.template.count("{{- range") + fmt.template.count("{{ if ")


@pytest.fixture(scope="module")
def chatml_gguf(tmp_path_factory) -> tuple[Path, Path]:
    model = tiny_llama(tmp_path_factory.mktemp("m") / "llama")
    return model, gguf_export.export(model, tmp_path_factory.mktemp("g") / "model-Q4_K_M.gguf").path


def test_modelfile_for_a_chatml_model(chatml_gguf, tmp_path):
    model, gguf = chatml_gguf
    (model / "generation_config.json").write_text(json.dumps({"temperature": 0.2, "top_p": 0.9,
                                                              "repetition_penalty": 1.1, "do_sample": True}))
    text = ollama_modelfile.write(gguf, model).read_text()
    assert sorted(p.name for p in gguf.parent.iterdir()) == ["Modelfile", "model-Q4_K_M.gguf"]  # no temp file left
    assert "FROM ./model-Q4_K_M.gguf\n" in text and "# chat format: chatml" in text
    assert 'TEMPLATE """{{- range .Messages }}<|im_start|>{{ .Role }}\n' in text
    # ChatML's markers, and the tokenizer's EOS once even though it is also one of them
    assert text.count('PARAMETER stop "<|im_end|>"') == 1 and 'PARAMETER stop "<|im_start|>"' in text
    for line in ("PARAMETER temperature 0.2", "PARAMETER top_p 0.9", "PARAMETER repeat_penalty 1.1"):
        assert line in text
    assert "do_sample" not in text


def test_modelfile_without_a_known_template_keeps_the_eos_stop(tmp_path):
    model = tiny_llama(tmp_path / "llama")
    cfg = json.loads((model / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (model / "tokenizer_config.json").write_text(json.dumps(cfg))
    (model / "chat_template.jinja").unlink(missing_ok=True)
    gguf = gguf_export.export(model, tmp_path / "g" / "model-Q8_0.gguf").path
    text = ollama_modelfile.render(gguf, model)
    assert "TEMPLATE" not in text.replace("# no TEMPLATE", "")
    assert "# no TEMPLATE: the GGUF has no chat template" in text
    assert 'PARAMETER stop "<|im_end|>"' in text  # the tokenizer's EOS


SMOL_LIKE = ("{% for m in messages %}{% if loop.first and messages[0]['role'] != 'system' %}<|im_start|>system\n"
             "You are a helpful assistant{% endif %}{% if loop.first and messages[0]['role'] != 'system' %}"
             "<|im_end|>\n{% endif %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
             "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def test_a_default_system_message_becomes_the_system_line(tmp_path):
    chatml = ollama_modelfile.CHAT_FORMATS["chatml"]
    assert ollama_modelfile.default_system(SMOL_LIKE, chatml) == "You are a helpful assistant"
    assert ollama_modelfile.default_system(JINJA["chatml"], chatml) is None  # no system turn unless asked
    assert ollama_modelfile.default_system("{{ raise_exception('no') }}", chatml) is None
    model = tiny_llama(tmp_path / "llama")
    cfg = json.loads((model / "tokenizer_config.json").read_text())
    cfg["chat_template"] = SMOL_LIKE
    (model / "tokenizer_config.json").write_text(json.dumps(cfg))
    (model / "chat_template.jinja").unlink(missing_ok=True)
    gguf = gguf_export.export(model, tmp_path / "g" / "model-Q8_0.gguf").path
    assert 'SYSTEM """You are a helpful assistant"""' in ollama_modelfile.render(gguf, model)
