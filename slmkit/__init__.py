"""slmkit: build small language models that beat a cloud LLM on your own task, and measure it."""

__version__ = "0.1.0"
