"""One test per llama-cpp-python internal that slmkit uses (pipelines/backends/llama_adapter.py): after an upgrade of
llama-cpp-python, the test that fails names the internal that moved."""

from __future__ import annotations

import json

import pytest

from slmkit.pipelines.backends import llama_adapter
from slmkit.pipelines.core.errors import SlmkitError


@pytest.fixture(scope="module")
def llm(tiny_gguf):
    model = llama_adapter.open_llama(tiny_gguf, n_ctx=256, n_threads=1, logits_all=True)
    yield model
    model.close()


@pytest.fixture(scope="module")
def metadata(tiny_gguf):
    import gguf

    reader = gguf.GGUFReader(str(tiny_gguf))
    return reader.fields


def _field(fields, name):
    f = fields[name]
    return f.contents() if hasattr(f, "contents") else f.parts[f.data[0]].tolist()


def test_open_llama_loads_on_the_cpu_and_names_a_missing_file(llm, tmp_path):
    assert llm.n_ctx() == 256
    with pytest.raises(SlmkitError, match="bench target 'x': no GGUF file at"):
        llama_adapter.open_llama(tmp_path / "none.gguf", 256, what="bench target 'x'")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 60)
    with pytest.raises(SlmkitError, match="llama.cpp could not load"):
        llama_adapter.open_llama(bad, 256)


def test_a_llama_for_requests_prefills_in_prefill_batches(tiny_gguf):
    # serve's slots and the in-process GGUF client reuse a shared prefix only in whole prefill batches, so both
    # must open their contexts with the same batch (llama.cpp's own default is 512)
    from slmkit.pipelines.core.defaults import PREFILL_BATCH

    model = llama_adapter.open_for_requests(tiny_gguf, 256, 1)
    try:
        assert model.n_batch == PREFILL_BATCH != 512
        assert model.context_params.n_ubatch == PREFILL_BATCH
    finally:
        model.close()


def test_n_ctx_train_is_the_models_own(llm, tiny_model_dir):
    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert llama_adapter.n_ctx_train(llm) == config["max_position_embeddings"]


def test_adds_bos_follows_the_gguf(llm, metadata):
    recorded = "tokenizer.ggml.add_bos_token" in metadata and bool(_field(metadata, "tokenizer.ggml.add_bos_token"))
    assert llama_adapter.adds_bos(llm) is recorded
    first = llm.tokenize(b"hello", add_bos=llama_adapter.adds_bos(llm), special=False)[0]
    assert (first == llm.token_bos()) is recorded


def test_is_end_of_generation(llm):
    assert llama_adapter.is_end_of_generation(llm, llm.token_eos())
    plain = llm.tokenize(b"hello", add_bos=False, special=False)[0]
    assert not llama_adapter.is_end_of_generation(llm, plain)


def test_longest_token_bytes_is_the_longest_token_text(llm, metadata):
    tokens = _field(metadata, "tokenizer.ggml.tokens")
    texts = [t if isinstance(t, str) else bytes(t).decode("utf-8", "replace") for t in tokens]
    assert llama_adapter.longest_token_bytes(llm) == max(len(t.encode("utf-8", "replace")) for t in texts)


def test_chat_handler_formats_with_the_models_template(llm):
    from slmkit.pipelines.serving.server import _Probe

    handler = llama_adapter.chat_handler(llm)
    with pytest.raises(_Probe.Prompt) as prompt:
        handler(llama=_Probe(llm), messages=[{"role": "user", "content": "hello there"}])
    text = llm.detokenize(prompt.value.tokens, special=True).decode("utf-8", "ignore")
    assert "hello there" in text and text.index("hello there") < text.rindex("assistant")


def test_wrap_method_wraps_one_instance_only(llm, tiny_gguf):
    seen = []

    def spy(original):
        def wrapped(tokens, *args, **kwargs):
            seen.append(len(tokens))
            return original(tokens, *args, **kwargs)
        return wrapped

    other = llama_adapter.open_llama(tiny_gguf, n_ctx=128, n_threads=1)
    try:
        llama_adapter.wrap_method(other, "generate", spy)
        llm.reset()
        llm.create_completion(prompt="hi", max_tokens=2, temperature=0.0)
        assert seen == []  # the other instance, and the class, are untouched
        other.create_completion(prompt="hi", max_tokens=2, temperature=0.0)
        assert seen and seen[0] == len(other.tokenize(b"hi", add_bos=llama_adapter.adds_bos(other), special=True))
    finally:
        other.close()
    with pytest.raises(ValueError, match="not one of create_completion, generate, eval"):
        llama_adapter.wrap_method(llm, "sample", spy)


def test_rewind_and_scores(llm):
    tokens = llm.tokenize(b"the quick brown fox", add_bos=False, special=False)
    llm.reset()
    llm.eval(tokens)
    logits = llama_adapter.scores(llm)[: len(tokens)].copy()
    assert logits.shape == (len(tokens), llm.n_vocab())
    llama_adapter.rewind(llm, len(tokens) - 1)
    assert llm.n_tokens == len(tokens) - 1
    llm.eval(tokens[-1:])  # the last position again, after the kept prefix
    again = llama_adapter.scores(llm)[len(tokens) - 1]
    assert abs(again - logits[-1]).max() < 1e-2 and abs(logits[0] - logits[-1]).max() > 1e-3


def test_chat_formatter_renders_a_template():
    template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</{{ m['role'] }}>{% endfor %}"
                "{% if add_generation_prompt %}<assistant>{% endif %}")
    render = llama_adapter.chat_formatter(template, eos_token="</s>", bos_token="<s>")
    assert render(messages=[{"role": "user", "content": "hi"}]).prompt == "<user>hi</user><assistant>"


def test_captured_log_keeps_llama_cpps_lines_and_puts_its_logger_back(tiny_gguf):
    with llama_adapter.captured_log() as lines:
        llama_adapter.open_llama(tiny_gguf, n_ctx=64, n_threads=1).close()
    assert any("llama" in line for line in lines), lines[:5]
    n = len(lines)
    llama_adapter.open_llama(tiny_gguf, n_ctx=64, n_threads=1).close()
    assert len(lines) == n  # outside the block, nothing more reaches the list
