"""near_dedup: records whose shingles overlap an earlier kept record's by `threshold` (MinHash LSH, datasketch)."""

from __future__ import annotations

import re
import zlib
from functools import lru_cache, partial
from typing import Any, Literal

from pydantic import Field

from slmkit.pipelines.core.types import StrictModel
from slmkit.pipelines.curate.filters.base import (
    WORD,
    WS,
    Env,
    FilterResult,
    Part,
    Record,
    Verdict,
    pmap,
    sift,
    view,
)


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


_NUMBER = re.compile(r"(?<![^\W\d_])\d+(?:[.,]\d+)*")  # standalone numbers, not the digits of "mp3"


def shingles(text: str, size: int, unit: str) -> set[bytes]:
    """Character or word n-grams of the case-folded, whitespace-collapsed text."""
    text = WS.sub(" ", text.casefold()).strip()
    if unit == "word":
        words = WORD.findall(text)
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


def lsh_values(hv: Any, nums: int, numbers_distinct: bool) -> Any:
    """The hash values the LSH bands are cut from. With numbers_distinct each is XORed with the numbers' hash:
    records with equal numbers band exactly as before, records whose numbers differ (never duplicates) stop
    sharing buckets. Without it, 50,000 templated tickets that differ only in their order numbers fill the
    same buckets and every query walks them all (quadratic); candidates are verified on the true values."""
    import numpy as np

    return np.bitwise_xor(hv, np.uint32(nums)) if numbers_distinct else hv


def run_near_dedup(cfg: NearDedupFilter, records: list[Record], env: Env) -> FilterResult:
    import numpy as np
    from datasketch import LeanMinHash, MinHashLSH

    sig = partial(signature, cfg_tuple=(cfg.num_perm, cfg.shingle_size, cfg.unit, cfg.seed))
    sigs = pmap(sig, [view(r, cfg.part) for r in records], env)
    # Banding weighted towards recall: every candidate is verified below, so a false positive costs one
    # comparison while a false negative is a duplicate kept.
    lsh = MinHashLSH(threshold=cfg.threshold, num_perm=cfg.num_perm, weights=(0.3, 0.7))
    # The kept records so far, by their index in the LSH: hash values, numbers' hash, where they were read.
    kept_sigs: list[Any] = []
    kept_nums: list[int] = []
    kept_where: list[str] = []

    def decide(rec: Record, sig: tuple[Any, int]) -> Verdict:
        hv, nums = sig
        mh = LeanMinHash(seed=cfg.seed, hashvalues=lsh_values(hv, nums, cfg.numbers_distinct), scheme=SCHEME)
        # LSH gives candidates; the estimated Jaccard (share of equal hash values) confirms them, so the
        # banding's false positives never remove a record. Earliest first, so the reason names the same
        # record whatever order the index returns them in (and the Ray executor's walk names it too).
        for cand in sorted(lsh.query(mh)):
            if cfg.numbers_distinct and kept_nums[cand] != nums:
                continue
            sim = float(np.mean(kept_sigs[cand] == hv))
            if sim >= cfg.threshold:
                return f"near duplicate of {kept_where[cand]} (Jaccard ≈ {sim:.2f})"
        lsh.insert(len(kept_sigs), mh, check_duplication=False)
        kept_sigs.append(hv)
        kept_nums.append(nums)
        kept_where.append(rec["_where"])
        return None

    return sift(records, sigs, decide)
