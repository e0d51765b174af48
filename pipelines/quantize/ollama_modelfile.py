"""An Ollama `Modelfile` beside a GGUF, so `ollama create NAME -f Modelfile` serves the file with the right chat
format and stop tokens.

Ollama's TEMPLATE is a Go template, not the Jinja that HF tokenizers carry, and no library translates one into
the other. So the chat formats slmkit's exporter supports are a table, recognised by a marker that only that
format's Jinja template contains; a template that matches none gets no TEMPLATE line (Ollama then falls back
to its own detection from the GGUF's `tokenizer.chat_template`) and the file says so. Everything else comes
from the GGUF itself (template, end-of-sequence token) and, where present, the model's generation_config.json.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ChatFormat:
    marker: str  # a string only this format's Jinja template contains
    template: str  # Ollama Go template over .Messages (each with .Role and .Content)
    stops: tuple[str, ...]
    system_block: str | None = None  # regex of a system turn, its text in group 1; None: the format has none


# Qwen2/2.5/3 and SmolLM2 share ChatML; Gemma has no system role, so a system message becomes a user turn.
CHAT_FORMATS: dict[str, ChatFormat] = {
    "chatml": ChatFormat(
        "<|im_start|>",
        "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n",
        ("<|im_start|>", "<|im_end|>"), r"<\|im_start\|>system\n(.*?)<\|im_end\|>"),
    "gemma": ChatFormat(
        "<start_of_turn>",
        '{{- range .Messages }}<start_of_turn>{{ if eq .Role "assistant" }}model{{ else }}user{{ end }}\n'
        "{{ .Content }}<end_of_turn>\n{{ end }}<start_of_turn>model\n",
        ("<start_of_turn>", "<end_of_turn>")),
    "llama3": ChatFormat(
        "<|start_header_id|>",
        "{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>"
        "{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n",
        ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
        r"<\|start_header_id\|>system<\|end_header_id\|>\n\n(.*?)<\|eot_id\|>"),
    "phi3": ChatFormat(
        "<|assistant|>",
        "{{- range .Messages }}<|{{ .Role }}|>\n{{ .Content }}<|end|>\n{{ end }}<|assistant|>\n",
        ("<|end|>", "<|user|>", "<|assistant|>"), r"<\|system\|>\n(.*?)<\|end\|>"),
    "mistral": ChatFormat(
        "[INST]",
        '{{- range .Messages }}{{ if eq .Role "assistant" }}{{ .Content }}</s>'
        "{{ else }}[INST] {{ .Content }} [/INST]{{ end }}{{ end }}",
        ("[INST]", "[/INST]")),
}

# generation_config.json key → Ollama PARAMETER name
SAMPLING_PARAMS = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k",
                   "repetition_penalty": "repeat_penalty"}


def chat_format(chat_template: str | None) -> str | None:
    if not chat_template:
        return None
    return next((name for name, f in CHAT_FORMATS.items() if f.marker in chat_template), None)


def default_system(chat_template: str, fmt: ChatFormat) -> str | None:
    """The system message a Jinja chat template inserts when the conversation has none (SmolLM2's does). The
    model was fine-tuned with it in every prompt, so Ollama must send it too: it becomes the SYSTEM line.
    Rendered by transformers' own chat-template renderer, the one apply_chat_template uses in training."""
    import re

    from transformers.utils.chat_template_utils import render_jinja_template

    if fmt.system_block is None:
        return None
    user = "\x00slmkit-user\x00"
    try:
        (text,), _ = render_jinja_template([[{"role": "user", "content": user}]], chat_template=chat_template,
                                           bos_token="", eos_token="")
    except Exception:  # a template that needs more than transformers' usual context: no default to copy
        return None
    head = text.split(user, 1)[0]
    found = re.search(fmt.system_block, head, re.DOTALL)
    return found.group(1) if found else None


def _gguf_chat_info(gguf_path: Path) -> tuple[str | None, str | None]:
    """(chat template, end-of-sequence token text) as written in the GGUF. llama.cpp reads the vocabulary alone in
    half a second; gguf-py's reader parses every token array in Python and takes ten times longer."""
    import llama_cpp

    llm = llama_cpp.Llama(str(gguf_path), vocab_only=True, verbose=False)
    try:
        eos = llm.token_eos()
        eos_text = llm.detokenize([eos], special=True).decode("utf-8", errors="replace") if eos >= 0 else None
        return llm.metadata.get("tokenizer.chat_template"), eos_text
    finally:
        llm.close()


def _quote(text: str) -> str:
    return json.dumps(text)  # a double-quoted string with escapes, which Ollama's parser reads


def render(gguf_path: Path, model_dir: Path | None = None) -> str:
    template, eos = _gguf_chat_info(gguf_path)
    fmt_name = chat_format(template)
    lines = ["# Ollama Modelfile written by slmkit. In this folder: ollama create NAME -f Modelfile",
             f"FROM ./{gguf_path.name}", ""]
    stops: list[str] = []
    if fmt_name:
        fmt = CHAT_FORMATS[fmt_name]
        lines += [f"# chat format: {fmt_name} (recognised from the GGUF's chat template)",
                  f'TEMPLATE """{fmt.template}"""', ""]
        system = default_system(template, fmt)
        if system and '"""' not in system:  # a triple quote would end Ollama's string early
            lines += ["# the template's own default system message", f'SYSTEM """{system}"""', ""]
        stops += fmt.stops
    else:
        why = "the GGUF has no chat template" if not template else "its chat template is not one slmkit knows"
        lines += [f"# no TEMPLATE: {why}; Ollama uses its own detection from the GGUF"]
    if eos and eos not in stops:
        stops.append(eos)
    lines += [f"PARAMETER stop {_quote(s)}" for s in stops]
    gen = model_dir / "generation_config.json" if model_dir else None
    if gen and gen.is_file():
        cfg = json.loads(gen.read_text(encoding="utf-8"))
        lines += [f"PARAMETER {ollama} {cfg[key]}" for key, ollama in SAMPLING_PARAMS.items()
                  if isinstance(cfg.get(key), (int, float))]
    return "\n".join(lines) + "\n"


def write(gguf_path: Path, model_dir: Path | None = None) -> Path:
    """`Modelfile` in the GGUF's folder (written whole, then renamed into place)."""
    from slmkit.pipelines.core.rundir import write_text

    gguf_path = Path(gguf_path)
    dst = gguf_path.parent / "Modelfile"
    write_text(dst, render(gguf_path, model_dir))
    return dst
