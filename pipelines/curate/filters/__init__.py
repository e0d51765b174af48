"""curate's filters: a table from `type` to the function that runs it, applied in the order the recipe lists them.

Each filter takes the surviving records and returns a `FilterResult`: the records it keeps (possibly rewritten:
normalisation and PII redaction edit text, they remove nothing) and those it removes, each with a reason that
the report shows. One module per family, all over the keep/remove loop in `base`:

    base           views of a record, FilterResult, Env, the `sift` / `rewrite` loops, the worker pool
    normalize      Unicode form, control characters, whitespace           (rewrites)
    dedup          exact duplicates by a folded-text hash                 (removes)
    near_dedup     near duplicates by MinHash LSH                         (removes)
    quality        length, character mix, repetition, boilerplate         (removes)
    relevance      similarity to in-domain seeds                          (removes)
    pii            e-mail, IBAN, card and phone redaction                 (rewrites)
    decontaminate  overlap with the eval sets                             (removes)

Everything callers and tests use is importable from here, as it was from the single module this replaces.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from pydantic import Field

from slmkit.pipelines.curate.filters.base import (
    Env,
    FilterResult,
    Part,
    Record,
    Verdict,
    clip,
    pmap,
    rewrite,
    sift,
    view,
)
from slmkit.pipelines.curate.filters.decontaminate import DecontaminateFilter, run_decontaminate
from slmkit.pipelines.curate.filters.dedup import DedupFilter, dedup_key, run_dedup
from slmkit.pipelines.curate.filters.near_dedup import (
    SCHEME,
    NearDedupFilter,
    lsh_values,
    run_near_dedup,
    shingles,
    signature,
)
from slmkit.pipelines.curate.filters.normalize import NormalizeFilter, normalize_text, run_normalize
from slmkit.pipelines.curate.filters.pii import (
    PII_KINDS,
    PII_PATTERNS,
    PiiFilter,
    iban_ok,
    luhn_ok,
    phone_ok,
    redact,
    run_pii,
)
from slmkit.pipelines.curate.filters.quality import (
    BOILERPLATE,
    QualityFilter,
    quality_reason,
    repeated_line_fraction,
    repeated_ngram_fraction,
    run_quality,
)
from slmkit.pipelines.curate.filters.relevance import (
    MINILM_NAMES,
    STOPWORDS,
    RelevanceFilter,
    document_frequencies,
    embed_scores,
    lexical_scores,
    load_seeds,
    model_path,
    relevance_verdicts,
    resolve_method,
    run_relevance,
)

Filter = Annotated[NormalizeFilter | DedupFilter | NearDedupFilter | QualityFilter | RelevanceFilter | PiiFilter
                   | DecontaminateFilter, Field(discriminator="type")]

FILTERS: dict[str, Callable[[Any, list[dict[str, Any]], Env], FilterResult]] = {
    "normalize": run_normalize,
    "dedup": run_dedup,
    "near_dedup": run_near_dedup,
    "quality": run_quality,
    "relevance": run_relevance,
    "pii": run_pii,
    "decontaminate": run_decontaminate,
}


def default_filters(has_eval: bool) -> list[Any]:
    chain: list[Any] = [NormalizeFilter(type="normalize"), DedupFilter(type="dedup"),
                        NearDedupFilter(type="near_dedup"), QualityFilter(type="quality")]
    if has_eval:
        chain.append(DecontaminateFilter(type="decontaminate"))
    return chain


def label(cfg: Any) -> str:
    return cfg.name or cfg.type


__all__ = [
    "BOILERPLATE", "FILTERS", "MINILM_NAMES", "PII_KINDS", "PII_PATTERNS", "SCHEME", "STOPWORDS",
    "DecontaminateFilter", "DedupFilter", "Env", "Filter", "FilterResult", "NearDedupFilter", "NormalizeFilter",
    "Part", "PiiFilter", "QualityFilter", "Record", "RelevanceFilter", "Verdict",
    "clip", "dedup_key", "default_filters", "document_frequencies", "embed_scores", "iban_ok", "label", "lexical_scores", "load_seeds",
    "lsh_values", "luhn_ok", "model_path", "normalize_text", "phone_ok", "pmap", "quality_reason", "redact", "relevance_verdicts",
    "resolve_method",
    "repeated_line_fraction", "repeated_ngram_fraction", "rewrite", "run_decontaminate", "run_dedup",
    "run_near_dedup", "run_normalize", "run_pii", "run_quality", "run_relevance", "shingles", "sift", "signature",
    "view",
]
