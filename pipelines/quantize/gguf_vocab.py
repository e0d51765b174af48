"""The tokenizer half of the GGUF export: BPE (llama.cpp's "gpt2" model) or SentencePiece ("llama"), special
tokens, add_bos/add_eos and the chat template.

llama.cpp re-implements each HF pre-tokenizer as a named regex set (`tokenizer.ggml.pre`). The wrong name
tokenises differently without any error, so the name is looked up from the structure of tokenizer.json's
`pre_tokenizer` in a table, and an unknown structure is refused rather than guessed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from slmkit.pipelines.core.errors import SlmkitError

# The split regexes of the two common Split-based BPE pre-tokenizers, as they appear in tokenizer.json.
_LLAMA3_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
              r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
             r"|\s*[\r\n]+|\s+(?!\S)|\s+")

# Signature of tokenizer.json's pre_tokenizer (see _signature) → llama.cpp pre-tokenizer name.
PRE_TOKENIZERS: dict[tuple, str] = {
    (("ByteLevel", True),): "gpt-2",  # GPT-2 regex inside ByteLevel
    (("Digits", True), ("ByteLevel", True)): "smollm",  # SmolLM/StarCoder: single digits, then GPT-2 regex
    (("Split", _LLAMA3_RE), ("ByteLevel", False)): "llama-bpe",  # Llama 3
    (("Split", _QWEN2_RE), ("ByteLevel", False)): "qwen2",  # Qwen2/2.5/3
}


def _signature(pre: dict | None) -> tuple:
    if not pre:
        return ()
    steps = pre.get("pretokenizers") if pre.get("type") == "Sequence" else [pre]
    sig = []
    for s in steps:
        kind = s.get("type")
        if kind == "ByteLevel":
            sig.append((kind, bool(s.get("use_regex", True))))
        elif kind == "Digits":
            sig.append((kind, bool(s.get("individual_digits"))))
        elif kind == "Split":
            pattern = s.get("pattern") or {}
            sig.append((kind, pattern.get("Regex") or pattern.get("String")))
        else:
            sig.append((kind, None))
    return tuple(sig)


def _special_vocab(writer, model_dir: Path, n_vocab: int, merges: bool):
    import gguf

    sv = gguf.SpecialVocab(model_dir, load_merges=merges, n_vocab=n_vocab)
    # add_bos/add_eos are measured from the HF tokenizer below, not read from a config that may omit them.
    sv.add_special_token = {}
    if sv.chat_template is None and (model_dir / "chat_template.jinja").is_file():
        sv.chat_template = (model_dir / "chat_template.jinja").read_text(encoding="utf-8")
    if merges and not sv.merges:
        # A byte-level vocabulary with no merges is valid, but llama.cpp refuses a file without the key and
        # gguf-py cannot write an empty array. BPE starts from single characters and only grows symbols by
        # merges, so a merge of two multi-character symbols that no merge can build never fires.
        writer.add_token_merges(["\u0100\u0100 \u0100\u0100"])
    sv.add_to_gguf(writer, quiet=True)


def _add_bos_eos(model_dir: Path, bos_default: bool) -> tuple[bool, bool]:
    """What the HF tokenizer actually adds around a text: the behaviour llama.cpp must reproduce.

    A folder with only a SentencePiece model that transformers cannot load falls back to tokenizer_config.json.
    """
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(model_dir))
    except Exception:  # noqa: BLE001 - any loader failure means: ask the config instead
        path = model_dir / "tokenizer_config.json"
        cfg = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        return bool(cfg.get("add_bos_token", bos_default)), bool(cfg.get("add_eos_token", False))
    plain = tok("hello", add_special_tokens=False)["input_ids"]
    full = tok("hello", add_special_tokens=True)["input_ids"]
    bos = tok.bos_token_id is not None and len(full) > len(plain) and full[0] == tok.bos_token_id
    eos = tok.eos_token_id is not None and len(full) > len(plain) and full[-1] == tok.eos_token_id
    return bos, eos


def _bpe(writer, model_dir: Path, tj: dict, n_vocab: int) -> dict[str, Any]:
    import gguf

    sig = _signature(tj.get("pre_tokenizer"))
    pre = PRE_TOKENIZERS.get(sig)
    if pre is None:
        raise SlmkitError(f"{model_dir / 'tokenizer.json'}: pre_tokenizer {sig} is not one slmkit can map to "
                          f"llama.cpp (known: {', '.join(sorted(set(PRE_TOKENIZERS.values())))})")
    vocab: dict[str, int] = tj["model"]["vocab"]
    added = {t["id"]: t for t in tj.get("added_tokens", [])}
    size = max(n_vocab, max(vocab.values()) + 1, max(added, default=-1) + 1)
    tokens = [f"[PAD{i}]" for i in range(size)]
    types = [gguf.TokenType.UNUSED] * size
    for text, i in vocab.items():
        tokens[i], types[i] = text, gguf.TokenType.NORMAL
    for i, t in added.items():
        tokens[i] = t["content"]
        types[i] = gguf.TokenType.CONTROL if t.get("special") else gguf.TokenType.USER_DEFINED
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    _special_vocab(writer, model_dir, size, merges=True)
    return {"model": "gpt2", "pre": pre, "size": size}


def _spm(writer, model_dir: Path, n_vocab: int) -> dict[str, Any]:
    import gguf
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(model_dir / "tokenizer.model"))
    kinds = ((sp.is_unknown, gguf.TokenType.UNKNOWN), (sp.is_control, gguf.TokenType.CONTROL),
             (sp.is_unused, gguf.TokenType.UNUSED), (sp.is_byte, gguf.TokenType.BYTE))
    tokens, scores, types = [], [], []
    for i in range(sp.vocab_size()):
        tokens.append(sp.id_to_piece(i))
        scores.append(sp.get_score(i))
        types.append(next((t for test, t in kinds if test(i)), gguf.TokenType.NORMAL))
    tj_path = model_dir / "tokenizer.json"
    if tj_path.is_file():  # tokens added on top of the SentencePiece model (chat markers and the like)
        for t in json.loads(tj_path.read_text(encoding="utf-8")).get("added_tokens", []):
            if t["id"] >= len(tokens):
                tokens.extend(f"[PAD{j}]" for j in range(len(tokens), t["id"] + 1))
                scores.extend([-1000.0] * (t["id"] + 1 - len(scores)))
                types.extend([gguf.TokenType.UNUSED] * (t["id"] + 1 - len(types)))
            tokens[t["id"]] = t["content"]
            types[t["id"]] = gguf.TokenType.CONTROL if t.get("special") else gguf.TokenType.USER_DEFINED
    while len(tokens) < n_vocab:
        tokens.append(f"[PAD{len(tokens)}]")
        scores.append(-1000.0)
        types.append(gguf.TokenType.UNUSED)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    # Whether the model prepends "▁" to a text (SentencePiece's add_dummy_prefix): Llama 2 does, Gemma does not.
    writer.add_add_space_prefix(sp.encode_as_pieces("a")[0].startswith("\u2581"))
    _special_vocab(writer, model_dir, len(tokens), merges=False)
    return {"model": "llama", "pre": "default", "size": len(tokens), "bos_default": True}


def _spm_from_json(writer, model_dir: Path, tj: dict, n_vocab: int) -> dict[str, Any]:
    """A SentencePiece-style BPE (byte fallback, "▁" for spaces) known only from tokenizer.json (e.g. Gemma).

    llama.cpp's SentencePiece tokenizer merges the adjacent pair whose joined text has the highest score;
    HF's BPE merges the pair of lowest merge rank. Scoring each token by minus the rank of the merge that
    makes it gives both the same order. Tokens no merge makes (characters, bytes, specials) score 0.
    """
    import gguf
    from transformers import AutoTokenizer

    vocab: dict[str, int] = tj["model"]["vocab"]
    merges = tj["model"].get("merges") or []
    made_by = {}
    for rank, m in enumerate(merges):
        a, b = m.split(" ", 1) if isinstance(m, str) else m
        made_by.setdefault(a + b, rank)
    added = {t["id"]: t for t in tj.get("added_tokens", [])}
    size = max(n_vocab, max(vocab.values()) + 1, max(added, default=-1) + 1)
    tokens = [f"[PAD{i}]" for i in range(size)]
    scores = [-1e9] * size
    types = [gguf.TokenType.UNUSED] * size
    for text, i in vocab.items():
        is_byte = len(text) == 6 and text.startswith("<0x") and text.endswith(">")
        tokens[i] = text
        scores[i] = -float(made_by[text]) if text in made_by else 0.0
        types[i] = gguf.TokenType.BYTE if is_byte else gguf.TokenType.NORMAL
    for i, t in added.items():
        tokens[i] = t["content"]
        types[i] = gguf.TokenType.CONTROL if t.get("special") else gguf.TokenType.USER_DEFINED
    unk = tj["model"].get("unk_token")
    if unk in vocab:
        types[vocab[unk]] = gguf.TokenType.UNKNOWN
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    first = tok.convert_ids_to_tokens(tok("a", add_special_tokens=False)["input_ids"])[0]
    writer.add_add_space_prefix(first.startswith("\u2581"))
    _special_vocab(writer, model_dir, size, merges=False)
    return {"model": "llama", "pre": "default", "size": size, "bos_default": True}


def write_vocab(writer, model_dir: Path, n_vocab: int) -> dict[str, Any]:
    """Write the tokenizer keys; returns {model, pre, size}."""
    model_dir = Path(model_dir)
    tj_path = model_dir / "tokenizer.json"
    tj = json.loads(tj_path.read_text(encoding="utf-8")) if tj_path.is_file() else None
    if tj is not None and tj.get("model", {}).get("type") == "BPE" and not tj["model"].get("byte_fallback"):
        info = _bpe(writer, model_dir, tj, n_vocab)
    elif (model_dir / "tokenizer.model").is_file():
        info = _spm(writer, model_dir, n_vocab)
    elif tj is not None and tj.get("model", {}).get("type") == "BPE":
        info = _spm_from_json(writer, model_dir, tj, n_vocab)
    else:
        kind = tj.get("model", {}).get("type") if tj else "none"
        raise SlmkitError(f"{model_dir}: tokenizer type {kind} is not supported (BPE tokenizer.json or "
                          "SentencePiece tokenizer.model)")
    bos, eos = _add_bos_eos(model_dir, info.pop("bos_default", False))
    writer.add_add_bos_token(bos)
    writer.add_add_eos_token(eos)
    return info
