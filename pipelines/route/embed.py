"""Sentence embeddings of requests for the classifier router: all-MiniLM-L6-v2 (shipped in a PyPI package) by
default, through sentence-transformers. Loaded once per process; vectors cached by text, since cross-fitting
asks for the same requests in every fold."""

from __future__ import annotations

import numpy as np

from slmkit.pipelines.core.defaults import usable_cores


class Embedder:
    """`cache=False` for serving: every request is new there, and a cache would only grow."""

    def __init__(self, model: str = "all-MiniLM-L6-v2", threads: int | None = None, cache: bool = True):
        self.name = model
        self.threads = threads or usable_cores()
        self.cache = cache
        self._model = None
        self._cache: dict[str, np.ndarray] = {}

    def _load(self):
        if self._model is None:
            import torch
            from sentence_transformers import SentenceTransformer

            from slmkit.pipelines.curate.filters.relevance import model_path

            torch.set_num_threads(self.threads)
            self._model = SentenceTransformer(model_path(self.name), device="cpu")
        return self._model

    def embed(self, texts: list[str]) -> np.ndarray:
        if not self.cache:
            return self._load().encode(texts, batch_size=32, normalize_embeddings=True,
                                       convert_to_numpy=True).reshape(len(texts), -1)
        todo = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if todo:
            vecs = self._load().encode(todo, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)
            self._cache.update(zip(todo, vecs, strict=True))
        return np.array([self._cache[t] for t in texts]).reshape(len(texts), -1)
