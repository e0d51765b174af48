"""Model clients: one interface over an OpenAI-compatible endpoint (`openai`), a GGUF file run by llama-cpp-python
(`gguf`) and a transformers model (`hf`), used by distill's teacher, bench's targets and what builds on them.

    from slmkit.pipelines.backends import ClientSpec, Request, make_client
    client = make_client(ClientSpec(kind="gguf", location="model.gguf", where="bench target 'q4'"))
    answer = client.complete(Request(messages=[{"role": "user", "content": "Hi"}], stream=True))

base (Request, Completion, ClientSpec, errors), spec (the `kind:...` shorthand), retry (the policy each caller
picks), registry (kinds), and one module per kind; llama_adapter holds the llama-cpp-python internals.
"""

from slmkit.pipelines.backends.base import (
    Client,
    ClientSpec,
    Completion,
    Interrupted,
    Request,
    RequestError,
    RetryableError,
    completion_prompt,
)
from slmkit.pipelines.backends.registry import CLIENTS, LOCAL, make_client, register
from slmkit.pipelines.backends.retry import NO_RETRY, RetryPolicy
from slmkit.pipelines.backends.spec import Spec, parse_spec

__all__ = ["CLIENTS", "LOCAL", "NO_RETRY", "Client", "ClientSpec", "Completion", "Interrupted", "Request",
           "RequestError", "RetryPolicy", "RetryableError", "Spec", "completion_prompt", "make_client", "parse_spec",
           "register"]
