"""The GGUF exporter: tiny random models of each supported architecture, exported, loaded back by llama.cpp and
compared with transformers on the same tokens; the tokenizer round trip; bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import CHAT_TEMPLATE, tiny_llama, tiny_tokenizer

from slmkit.pipelines.core.errors import SlmkitError
from slmkit.pipelines.quantize import gguf_export

TEXT = "The invoice 1001 is broken, Alice!  Ünïcödé 日本 €5.\n\tdone <|im_start|>user\nhi<|im_end|>"


def _gguf_logits(path: Path, ids: list[int]) -> np.ndarray:
    import llama_cpp

    # F32 KV cache: the default F16 cache alone moves logits by ~1e-4
    llm = llama_cpp.Llama(str(path), n_ctx=128, logits_all=True, verbose=False, n_threads=1, type_k=0, type_v=0)
    try:
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)])
    finally:
        llm.close()


def _hf_logits(path: Path, ids: list[int]) -> np.ndarray:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


def _ids(path: Path) -> list[int]:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))(TEXT, add_special_tokens=False)["input_ids"]


# arch → (config class, model class, extra config): what makes each architecture differ from llama.
OTHER_ARCHS = {
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),  # q/k/v biases
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 24}),  # q/k norms, head_dim ≠ hidden/heads
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", {"head_dim": 16, "query_pre_attn_scalar": 16,
                                                     "attn_logit_softcapping": 50.0,
                                                     "final_logit_softcapping": 30.0}),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", {"head_dim": 16, "query_pre_attn_scalar": 16}),
}
TIED = {"gemma2", "gemma3"}  # llama.cpp's Gemma graphs always reuse token_embd as the output matrix


def _tiny_other(path: Path, arch: str) -> Path:
    """A tiny model of another architecture with the shared tiny tokenizer."""
    import transformers

    tok = tiny_tokenizer(320)
    cls_cfg, cls_model, extra = OTHER_ARCHS[arch]
    torch.manual_seed(0)
    cfg = getattr(transformers, cls_cfg)(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         max_position_embeddings=256, tie_word_embeddings=arch in TIED,
                                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                         pad_token_id=tok.pad_token_id, **{"head_dim": 16, **extra})
    model = getattr(transformers, cls_model)(cfg)
    with torch.no_grad():  # random biases are zero at init; make them count so a dropped bias fails the test
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> Path:
    return tiny_llama(tmp_path_factory.mktemp("m") / "llama", vocab_size=320)


@pytest.mark.parametrize("outtype,tol", [("f32", 1e-4), ("f16", 5e-3), ("bf16", 5e-2)])
def test_llama_export_matches_transformers(llama_dir, tmp_path, outtype, tol):
    res = gguf_export.export(llama_dir, tmp_path / "m.gguf", outtype)
    assert res.path.is_file() and not (tmp_path / "m.gguf.partial").exists()
    assert (res.tokenizer, res.pre) == ("gpt2", "gpt-2")
    ids = _ids(llama_dir)
    diff = np.abs(_gguf_logits(res.path, ids) - _hf_logits(llama_dir, ids)).max()
    assert diff < tol, f"{outtype}: max |logit diff| {diff}"


def test_qk_permutation_is_what_makes_llama_right(llama_dir, tmp_path, monkeypatch):
    spec = gguf_export.ARCHITECTURES["LlamaForCausalLM"]
    monkeypatch.setitem(gguf_export.ARCHITECTURES, "LlamaForCausalLM",
                        gguf_export.ArchSpec(spec.gguf_arch, permute_qk=False, skip=spec.skip))
    res = gguf_export.export(llama_dir, tmp_path / "m.gguf", "f32")
    ids = _ids(llama_dir)
    assert np.abs(_gguf_logits(res.path, ids) - _hf_logits(llama_dir, ids)).max() > 1e-3


@pytest.mark.parametrize("arch", list(OTHER_ARCHS))
def test_other_architectures_match_transformers(tmp_path, arch):
    src = _tiny_other(tmp_path / arch, arch)
    res = gguf_export.export(src, tmp_path / "m.gguf", "f32")
    ids = _ids(src)
    hf = _hf_logits(src, ids)
    diff = np.abs(_gguf_logits(res.path, ids) - hf).max() / max(1.0, np.abs(hf).max())
    # ggml computes GELU (Gemma's activation) from an f16 lookup table: ~1e-4 relative, still far below the
    # error of a wrong layout (a missing norm offset or a transposed tensor moves logits by whole units).
    tol = 1e-3 if arch.startswith("gemma") else 1e-4
    assert diff < tol, f"{arch}: max |logit diff| relative to the largest logit {diff}"


def test_tokenizer_round_trip_and_metadata(llama_dir, tmp_path):
    import gguf
    import llama_cpp
    from transformers import AutoTokenizer

    path = gguf_export.export(llama_dir, tmp_path / "m.gguf").path
    tok = AutoTokenizer.from_pretrained(str(llama_dir))
    chat = tok.apply_chat_template([{"role": "user", "content": "Reset 42 passwords, ok?"}], tokenize=False,
                                   add_generation_prompt=True)
    llm = llama_cpp.Llama(str(path), n_ctx=128, verbose=False, vocab_only=True)
    try:
        for text in (TEXT, chat, "  leading spaces and trailing  ", "digits 1234567890"):
            want = tok(text, add_special_tokens=True)["input_ids"]
            got = llm.tokenize(text.encode(), add_bos=True, special=True)  # add_bos obeys the file's flag
            assert got == want, text
            assert llm.detokenize(got, special=True).decode() == tok.decode(want)
    finally:
        llm.close()
    fields = gguf.GGUFReader(str(path)).fields
    assert fields["tokenizer.chat_template"].contents() == CHAT_TEMPLATE
    assert fields["tokenizer.ggml.eos_token_id"].contents() == tok.eos_token_id
    assert fields["tokenizer.ggml.add_bos_token"].contents() is False
    assert "output.weight" not in {t.name for t in gguf.GGUFReader(str(path)).tensors}  # tied embeddings


def test_bad_inputs_are_clear_errors(llama_dir, tmp_path):
    with pytest.raises(SlmkitError, match="not a Hugging Face model folder"):
        gguf_export.export(tmp_path, tmp_path / "x.gguf")

    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "config.json").write_text(json.dumps({"architectures": ["MambaForCausalLM"]}))
    with pytest.raises(SlmkitError, match="not supported: MambaForCausalLM"):
        gguf_export.export(odd, tmp_path / "x.gguf")

    notok = tmp_path / "notok"
    notok.mkdir()
    for f in ("config.json", "model.safetensors"):
        (notok / f).write_bytes((llama_dir / f).read_bytes())
    with pytest.raises(SlmkitError, match="missing tokenizer"):
        gguf_export.export(notok, tmp_path / "x.gguf")
    assert not list(tmp_path.glob("x.gguf*"))


def test_failed_write_leaves_no_gguf(llama_dir, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = gguf_export._tensor_data

    def boom(*args):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(28, "No space left on device")
        return real(*args)

    monkeypatch.setattr(gguf_export, "_tensor_data", boom)
    with pytest.raises(SlmkitError, match="No space left"):
        gguf_export.export(llama_dir, tmp_path / "m.gguf")
    assert not list(tmp_path.glob("m.gguf*"))


def test_read_only_output_folder(llama_dir, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if (ro / "probe").exists() or _writable(ro):
            pytest.skip("running as a user that ignores permissions")
        with pytest.raises(SlmkitError, match="cannot write|writing the GGUF failed"):
            gguf_export.export(llama_dir, ro / "m.gguf")
    finally:
        ro.chmod(0o700)


def _writable(folder: Path) -> bool:
    try:
        (folder / ".probe").write_text("x")
        (folder / ".probe").unlink()
        return True
    except OSError:
        return False


def test_gemma_norm_offset_is_what_makes_gemma_right(tmp_path, monkeypatch):
    src = _tiny_other(tmp_path / "g", "gemma3")
    spec = gguf_export.ARCHITECTURES["Gemma3ForCausalLM"]
    monkeypatch.setitem(gguf_export.ARCHITECTURES, "Gemma3ForCausalLM",
                        gguf_export.ArchSpec(spec.gguf_arch, norm_plus_one=False, extra_hparams=spec.extra_hparams))
    res = gguf_export.export(src, tmp_path / "m.gguf", "f32")
    ids = _ids(src)
    hf = _hf_logits(src, ids)
    assert np.abs(_gguf_logits(res.path, ids) - hf).max() / max(1.0, np.abs(hf).max()) > 1e-2


def _spm_model_proto(symbols: tuple[str, ...] = ()) -> bytes:
    """A tiny SentencePiece BPE with byte fallback, configured as Llama's and Gemma's are (no NFKC, spaces kept)."""
    import io

    import sentencepiece as spm
    from helpers import CORPUS

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(CORPUS), model_writer=buf, vocab_size=360,
                                   model_type="bpe", byte_fallback=True, character_coverage=1.0, unk_id=0,
                                   bos_id=1, eos_id=2, pad_id=-1, minloglevel=2, user_defined_symbols=list(symbols),
                                   normalization_rule_name="identity", remove_extra_whitespaces=False)
    return buf.getvalue()


def _spm_folder(path: Path, model, proto: bytes) -> Path:
    model.save_pretrained(path)
    (path / "tokenizer.model").write_bytes(proto)
    (path / "tokenizer_config.json").write_text(json.dumps({"add_bos_token": True}))
    return path


def test_sentencepiece_vocab_round_trip(tmp_path):
    """A SentencePiece tokenizer.model: llama.cpp's tokenizer from the GGUF gives the ids sentencepiece gives."""
    import llama_cpp
    import sentencepiece as spm
    from transformers import LlamaConfig, LlamaForCausalLM

    proto = _spm_model_proto()
    cfg = LlamaConfig(vocab_size=360, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, bos_token_id=1, eos_token_id=2)
    model_dir = _spm_folder(tmp_path / "spm", LlamaForCausalLM(cfg), proto)
    path = gguf_export.export(model_dir, tmp_path / "spm.gguf").path
    sp = spm.SentencePieceProcessor(model_proto=proto)
    llm = llama_cpp.Llama(str(path), n_ctx=64, verbose=False, vocab_only=True)
    try:
        for text in ("Order 42 was shipped on Monday to Berlin.", "The quick  brown fox, ünïcödé 日本!"):
            assert llm.tokenize(text.encode(), add_bos=True) == [1, *sp.encode(text)], text
    finally:
        llm.close()


def test_phi3_matches_transformers(tmp_path):
    """Phi-3's fused q/k/v and gate/up tensors; its vocabulary is SentencePiece with "<|end|>" and "<|endoftext|>"."""
    import sentencepiece as spm
    from transformers import Phi3Config, Phi3ForCausalLM

    proto = _spm_model_proto(("<|end|>", "<|endoftext|>"))
    torch.manual_seed(0)
    cfg = Phi3Config(vocab_size=360, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, bos_token_id=1,
                     eos_token_id=2, pad_token_id=None)
    model_dir = _spm_folder(tmp_path / "phi3", Phi3ForCausalLM(cfg), proto)
    path = gguf_export.export(model_dir, tmp_path / "phi3.gguf", "f32").path
    ids = [1, *spm.SentencePieceProcessor(model_proto=proto).encode("Order 42 was shipped to Berlin.")]
    hf = _hf_logits(model_dir, ids)
    assert np.abs(_gguf_logits(path, ids) - hf).max() / max(1.0, np.abs(hf).max()) < 1e-4
