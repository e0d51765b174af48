"""The exporter on the real SmolLM2-135M-Instruct: logits agree with transformers and the tokenizers agree."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm(tmp_path_factory):
    from slmkit.pipelines.core.models import resolve
    from slmkit.pipelines.quantize import gguf_export

    model_dir = Path(resolve("smollm2-135m-instruct"))
    path = gguf_export.export(model_dir, tmp_path_factory.mktemp("smol") / "model-f16.gguf").path
    return model_dir, path


def test_smollm2_f16_logits_match_transformers(smollm):
    from slmkit.pipelines import quantize
    from slmkit.pipelines.quantize import retention

    model_dir, path = smollm
    chunks = retention.token_chunks(model_dir, quantize.read_text(quantize.HELDOUT_SAMPLE), 512, 256)
    hf, gg = retention.HFScorer(model_dir), retention.GGUFScorer(path, 256, 2)
    try:
        fig = retention.compare(chunks, {"hf": hf, "f16": gg}, {"f16": ("hf", "f16")})["f16"]
    finally:
        gg.close()
    assert fig["tokens"] >= 500
    assert fig["kld_mean"] < 1e-3 and fig["top1_agreement"] >= 0.99
    assert abs(fig["ppl_ratio"] - 1) < 0.01


def test_smollm2_tokenizer_round_trip(smollm):
    import llama_cpp
    from transformers import AutoTokenizer

    model_dir, path = smollm
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    chat = tok.apply_chat_template([{"role": "system", "content": "Be brief."},
                                    {"role": "user", "content": "Café prices: 3×€4.50 = €13.50? Ünïcode ✓ 日本語"}],
                                   tokenize=False, add_generation_prompt=True)
    texts = [chat, "  Hello,   world!\n\n\tTabs and 12345 digits; (parens) [brackets] {braces} <tags>",
             "don't won't it's I'm we'll they've", quantize_sample()]
    llm = llama_cpp.Llama(str(path), n_ctx=256, verbose=False, vocab_only=True)
    try:
        for text in texts:
            want = tok(text, add_special_tokens=True)["input_ids"]
            got = llm.tokenize(text.encode(), add_bos=True, special=True)
            assert got == want, text[:60]
            assert np.array_equal(got, want)
    finally:
        llm.close()


def quantize_sample() -> str:
    from slmkit.pipelines import quantize

    return quantize.HELDOUT_SAMPLE.read_text()[:3000]


def test_gemma3_270m_export_matches_transformers():
    """Gemma 3: norm offsets, per-layer-type rope, a SentencePiece-style vocabulary known only from tokenizer.json."""
    import tempfile

    import llama_cpp
    from transformers import AutoTokenizer

    from slmkit.pipelines.core.models import resolve
    from slmkit.pipelines.quantize import gguf_export, retention

    model_dir = Path(resolve("gemma3-270m"))
    with tempfile.TemporaryDirectory() as tmp:
        path = gguf_export.export(model_dir, Path(tmp) / "g.gguf").path
        tok = AutoTokenizer.from_pretrained(str(model_dir))
        llm = llama_cpp.Llama(str(path), n_ctx=256, verbose=False, vocab_only=True)
        try:
            for text in ("Hello,   world!\n\n\tTabs 12345 ünï 日本語 <start_of_turn>user\nhi<end_of_turn>",
                         quantize_sample()):
                assert llm.tokenize(text.encode(), add_bos=True, special=True) == tok(text)["input_ids"]
        finally:
            llm.close()
        chunks = retention.token_chunks(model_dir, quantize_sample(), 256, 256)
        gg = retention.GGUFScorer(path, 256, 2)
        try:
            fig = retention.compare(chunks, {"hf": retention.HFScorer(model_dir), "f16": gg},
                                    {"f16": ("hf", "f16")})["f16"]
        finally:
            gg.close()
    assert fig["kld_mean"] < 1e-3 and fig["top1_agreement"] >= 0.99
