"""slmkit serve: an OpenAI-compatible server over a GGUF model, its request schemas, token streaming,
and the loopback endpoint distill and bench start for `serve:`."""
