"""curate's filter chain on a Ray cluster (`curate.executor: ray`): the same kept records, byte for byte.

Records travel as rows of a Ray Dataset: `_idx` (position in the pile, the order every rule is defined by),
`_where` (file:line) and `rec` (the record, pickled, so Arrow never retypes a field or fills a missing one).
Each filter family maps onto Ray Data's own operators:

    normalize, pii, quality,      map: each batch goes through the local filter function itself; none of
    decontaminate, relevance      them looks past its record (relevance's lexical IDF is summed over the
                                  pile first, so a record's score does not depend on its batch)
    dedup                         group-by on the folded-text key (a distributed aggregation); the driver
                                  sees only the keys held by more than one record
    near_dedup                    MinHash signatures (map), LSH bands (map), shared buckets (group-by, then
                                  a self-join), candidate pairs verified against both signatures (two
                                  joins); the driver sees only the verified edges, never a signature

Near-dedup's rule is the local one: a record goes when it is similar to an *earlier kept* record. That is a
walk over the verified edges in record order, not connected components: with A~B and B~C but not A~C,
components would drop C as well, while the local filter keeps it (B, its only match, was dropped). The walk
needs each record's earlier neighbours only, so it runs on the driver over the edge list (two ints and a
float per edge). Why Ray and not datatrove: slmkit's filters are functions over records that Ray Data maps
as they are; datatrove's dedup steps come with their own document type, readers and on-disk stages, and its
MinHash clusters by connected components without verifying candidates or keeping numbers apart.

Reading the input and writing the outputs stay on the driver (curate/io.py), as on the local executor.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import time
from collections import Counter
from typing import Any

import numpy as np

from slmkit.pipelines.core.errors import SlmkitError
from slmkit.pipelines.curate.filters import (
    FILTERS,
    Env,
    dedup_key,
    document_frequencies,
    label,
    load_seeds,
    lsh_values,
    relevance_verdicts,
    resolve_method,
    signature,
    view,
)

EXAMPLES = 5  # removed records a report row shows (curate.EXAMPLES_PER_FILTER)


# --- the cluster --------------------------------------------------------------------------------------------

def _start(cfg: Any) -> tuple[Any, bool]:
    """Connect to (or start) Ray; returns the module and whether this run started the cluster."""
    try:
        import ray
    except ImportError:
        raise SlmkitError("curate.executor: ray needs Ray Data: pip install 'slmkit[ray]'") from None
    started = not ray.is_initialized()
    if started:
        kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING,
                                  "log_to_driver": False}
        if cfg.address:
            kwargs["address"] = cfg.address
        elif cfg.num_cpus:
            kwargs["num_cpus"] = cfg.num_cpus
        try:
            ray.init(**kwargs)
        except ConnectionError as err:
            raise SlmkitError(f"curate.ray.address: cannot reach a Ray cluster at '{cfg.address}': {err}") from None
    ctx = ray.data.DataContext.get_current()
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # a line per Dataset executed otherwise
    ctx.enable_progress_bars = False  # slmkit logs a line per filter; Ray's bars would garble a log file
    ctx.execution_options.preserve_order = False  # rows carry _idx; order is restored on the driver
    return ray, started


def _unwrap(err: Exception) -> Exception:
    """A SlmkitError raised inside a Ray task reaches the driver wrapped; show the user the original."""
    cause = err
    while cause is not None:
        if isinstance(cause, SlmkitError):
            return cause
        cause = getattr(cause, "cause", None) or cause.__cause__
    return err


# --- map filters: the local filter function over each batch ---------------------------------------------------

def _records(batch: dict[str, Any]) -> list[dict[str, Any]]:
    return [pickle.loads(b) for b in batch["rec"]]


def _tagged(batch: dict[str, Any], recs: list[bytes], drop: list[str | None]) -> dict[str, Any]:
    """The batch with `_drop` (the removal reason; "" keeps the record: an all-None column would not survive
    Arrow as strings), `_modified` and `_notes` (the filter's counts and notes, on the batch's first row)."""
    n = len(batch["_idx"])
    return {"_idx": batch["_idx"], "_where": batch["_where"], "rec": np.array(recs, dtype=object),
            "_drop": np.array([d or "" for d in drop], dtype=object),
            "_modified": np.zeros(n, dtype=np.int64), "_notes": np.array([""] * n, dtype=object)}


def _map_batch(batch: dict[str, Any], fn: Any, cfg: Any, evals: list, kwargs: dict[str, Any]) -> dict[str, Any]:
    recs = _records(batch)
    res = fn(cfg, recs, Env(num_proc=1, eval_items=evals), **kwargs)
    if res.modified:  # a rewrite (normalize, pii) changed some text: new records, one per input, none removed
        if len(res.kept) != len(recs):
            raise AssertionError(f"filter {label(cfg)} rewrote and removed records")  # a bug, not a user error
        out = _tagged(batch, [pickle.dumps(r, protocol=5) for r in res.kept], [None] * len(recs))
    else:  # nothing rewritten: the rows' own bytes; sift keeps and removes the very objects it was given
        why = {id(r): reason for r, reason in res.removed}
        out = _tagged(batch, list(batch["rec"]), [why.get(id(r)) for r in recs])
    if len(recs):
        out["_modified"][0] = res.modified
        out["_notes"][0] = json.dumps(res.notes) if res.notes else ""
    return out


def _merge_notes(ftype: str, parts: list[dict[str, Any]]) -> dict[str, Any]:
    """pii counts redactions per batch (summed); every other filter's notes describe its settings (the same
    in every batch)."""
    if not parts:
        return {}
    if ftype != "pii":
        return parts[0]
    total: Counter = Counter()
    for p in parts:
        total.update(p.get("redacted", {}))
    return {**parts[0], "redacted": {k: total.get(k, 0) for k in parts[0].get("redacted", {})}}


# --- summaries of a tagged dataset ---------------------------------------------------------------------------

def _summary_batch(batch: dict[str, Any]) -> dict[str, Any]:
    """Per batch: removed count, modified count, notes, and its first removed records (smallest _idx)."""
    from slmkit.pipelines.curate import example

    drop = batch["_drop"]
    gone = [i for i in range(len(drop)) if drop[i]]
    gone.sort(key=lambda i: batch["_idx"][i])
    examples = []
    for i in gone[:EXAMPLES]:
        rec = pickle.loads(batch["rec"][i])
        examples.append({"idx": int(batch["_idx"][i]), **example(rec, drop[i])})
    notes = [n for n in batch["_notes"] if n]
    return {"removed": [len(gone)], "modified": [int(np.sum(batch["_modified"]))],
            "examples": [json.dumps(examples)], "notes": [json.dumps(notes)]}


def _keep_batch(batch: dict[str, Any]) -> dict[str, Any]:
    keep = np.array([not d for d in batch["_drop"]], dtype=bool)
    return {"_idx": batch["_idx"][keep], "_where": batch["_where"][keep], "rec": batch["rec"][keep]}


def _tag_batch(batch: dict[str, Any], removed: dict[int, str]) -> dict[str, Any]:
    return _tagged(batch, list(batch["rec"]), [removed.get(int(i)) for i in batch["_idx"]])


def _held_by_several(batch: dict[str, Any], key: str) -> dict[str, Any]:
    """The keys of a `groupby(key).count()` that more than one record holds."""
    return {key: batch[key][batch["count()"] > 1]}


def _rows_among(batch: dict[str, Any], wanted: np.ndarray) -> dict[str, Any]:
    keep = np.isin(batch["_idx"], wanted)
    return {k: v[keep] for k, v in batch.items()}


# --- dedup: a group-by on the key ----------------------------------------------------------------------------

def _key_batch(batch: dict[str, Any], cfg: Any) -> dict[str, Any]:
    keys = [dedup_key(view(r, cfg.part), cfg.ignore_case, cfg.ignore_punctuation, cfg.ignore_digits)
            for r in _records(batch)]
    return {"_idx": batch["_idx"], "_where": batch["_where"], "key": np.array(keys, dtype=object)}


def _dedup_removals(ds: Any, cfg: Any, parts: int) -> dict[int, str]:
    keys = ds.map_batches(_key_batch, fn_kwargs={"cfg": cfg}, batch_format="numpy").materialize()
    shared = keys.groupby("key", num_partitions=parts).count().map_batches(
        _held_by_several, fn_kwargs={"key": "key"}, batch_format="numpy")
    members = keys.join(shared, join_type="inner", num_partitions=parts, on=("key",)).take_all()
    first: dict[bytes, tuple[int, str]] = {}
    for m in members:
        held = first.get(m["key"])
        if held is None or m["_idx"] < held[0]:
            first[m["key"]] = (m["_idx"], m["_where"])
    return {m["_idx"]: f"exact duplicate of {first[m['key']][1]}" for m in members
            if m["_idx"] != first[m["key"]][0]}


# --- near_dedup: signatures, bands, shared buckets, verified pairs --------------------------------------------

def _signature_batch(batch: dict[str, Any], cfg: Any) -> dict[str, Any]:
    hvs, nums = [], []
    for r in _records(batch):
        hv, n = signature(view(r, cfg.part), (cfg.num_perm, cfg.shingle_size, cfg.unit, cfg.seed))
        hvs.append(np.asarray(hv, dtype=np.uint32).tobytes())
        nums.append(n)
    return {"_idx": batch["_idx"], "_where": batch["_where"], "hv": np.array(hvs, dtype=object),
            "nums": np.array(nums, dtype=np.int64)}


def _band_batch(batch: dict[str, Any], ranges: list[tuple[int, int]], numbers_distinct: bool) -> dict[str, Any]:
    """One row per (record, band), cut from the values the local filter's LSH indexes (lsh_values). The key
    hashes the band's number and values: equal bands give equal keys, as in datasketch's tables; a rare
    64-bit collision only adds a candidate that verification then rejects."""
    idx, keys = [], []
    for i, hv, nums in zip(batch["_idx"], batch["hv"], batch["nums"], strict=True):
        values = lsh_values(np.frombuffer(hv, dtype=np.uint32), int(nums), numbers_distinct)
        for b, (start, end) in enumerate(ranges):
            digest = hashlib.blake2b(values[start:end].tobytes(), digest_size=8, person=b.to_bytes(2, "little"))
            keys.append(int.from_bytes(digest.digest(), "little", signed=True))
            idx.append(int(i))
    return {"bkey": np.array(keys, dtype=np.int64), "i": np.array(idx, dtype=np.int64)}


def _pair_batch(batch: dict[str, Any]) -> dict[str, Any]:
    keep = batch["i"] < batch["j"]
    return {"i": batch["i"][keep], "j": batch["j"][keep]}


def _verify_batch(batch: dict[str, Any], threshold: float, numbers_distinct: bool) -> dict[str, Any]:
    """The local filter's check, pair by pair: numbers equal (when asked) and estimated Jaccard ≥ threshold."""
    out: dict[str, list] = {"i": [], "j": [], "sim": []}
    for k in range(len(batch["i"])):
        if numbers_distinct and batch["nums_i"][k] != batch["nums_j"][k]:
            continue
        sim = float(np.mean(np.frombuffer(batch["hv_i"][k], dtype=np.uint32)
                            == np.frombuffer(batch["hv_j"][k], dtype=np.uint32)))
        if sim >= threshold:
            out["i"].append(int(batch["i"][k]))
            out["j"].append(int(batch["j"][k]))
            out["sim"].append(sim)
    return {"i": np.array(out["i"], dtype=np.int64), "j": np.array(out["j"], dtype=np.int64),
            "sim": np.array(out["sim"], dtype=np.float64)}


def _renamed(ds: Any, names: dict[str, str]) -> Any:
    return ds.select_columns(list(names)).rename_columns(names)


def keep_first_walk(edges: list[tuple[int, int, float]], where: dict[int, str]) -> dict[int, str]:
    """The local rule over verified edges (i < j): in record order, a record goes when it has an edge to an
    earlier record that was kept; the reason names the earliest such record, as the local filter's does."""
    earlier: dict[int, list[tuple[int, float]]] = {}
    for i, j, sim in edges:
        earlier.setdefault(j, []).append((i, sim))
    removed: dict[int, str] = {}
    for j in sorted(earlier):
        for i, sim in sorted(earlier[j]):
            if i not in removed:
                removed[j] = f"near duplicate of {where[i]} (Jaccard ≈ {sim:.2f})"
                break
    return removed


def _near_dedup_removals(ds: Any, cfg: Any, parts: int) -> dict[int, str]:
    from datasketch import MinHashLSH

    lsh = MinHashLSH(threshold=cfg.threshold, num_perm=cfg.num_perm, weights=(0.3, 0.7))  # the local banding
    sigs = ds.map_batches(_signature_batch, fn_kwargs={"cfg": cfg}, batch_format="numpy").materialize()
    bands = sigs.map_batches(_band_batch, fn_kwargs={"ranges": list(lsh.hashranges),
                                                       "numbers_distinct": cfg.numbers_distinct}, batch_format="numpy")
    bands = bands.materialize()
    shared = bands.groupby("bkey", num_partitions=parts).count().map_batches(
        _held_by_several, fn_kwargs={"key": "bkey"}, batch_format="numpy")
    members = bands.join(shared, join_type="inner", num_partitions=parts, on=("bkey",)).materialize()
    pairs = members.join(_renamed(members, {"bkey": "bkey", "i": "j"}), join_type="inner", num_partitions=parts,
                         on=("bkey",)).map_batches(_pair_batch, batch_format="numpy")
    pairs = pairs.groupby(["i", "j"], num_partitions=parts).count().select_columns(["i", "j"])  # a pair shares several bands
    left = _renamed(sigs, {"_idx": "i", "hv": "hv_i", "nums": "nums_i"})
    right = _renamed(sigs, {"_idx": "j", "hv": "hv_j", "nums": "nums_j"})
    joined = pairs.join(left, join_type="inner", num_partitions=parts, on=("i",)) \
                  .join(right, join_type="inner", num_partitions=parts, on=("j",))
    edges = joined.map_batches(_verify_batch, fn_kwargs={"threshold": cfg.threshold,
                                                         "numbers_distinct": cfg.numbers_distinct},
                               batch_format="numpy").take_all()
    edge_list = [(e["i"], e["j"], e["sim"]) for e in edges]
    ends = sorted({i for i, _, _ in edge_list})
    where = {}
    if ends:
        ends_ref = np.array(ends, dtype=np.int64)
        for row in sigs.select_columns(["_idx", "_where"]).map_batches(
                _rows_among, fn_kwargs={"wanted": ends_ref}, batch_format="numpy").take_all():
            where[row["_idx"]] = row["_where"]
    return keep_first_walk(edge_list, where)


# --- relevance: the method decided once, lexical IDF over the whole pile --------------------------------------

def _df_batch(batch: dict[str, Any], part: str) -> dict[str, Any]:
    df = document_frequencies([view(r, part) for r in _records(batch)])
    return {"word": np.array(list(df), dtype=object), "n": np.array(list(df.values()), dtype=np.int64)}


def _relevance_kwargs(ds: Any, cfg: Any, console: Any, n_records: int, parts: int
                      ) -> tuple[dict[str, Any], dict[str, Any]]:
    seeds = load_seeds(cfg)
    method, notes = resolve_method(cfg, Env(log=console.print))
    kwargs: dict[str, Any] = {"seeds": seeds, "method": method}
    if method == "lexical":
        counts = ds.map_batches(_df_batch, fn_kwargs={"part": cfg.part}, batch_format="numpy") \
                   .groupby("word", num_partitions=parts).sum("n").take_all()
        df = document_frequencies(seeds)
        for row in counts:
            df[row["word"]] += row["sum(n)"]
        kwargs.update(df=df, n_docs=len(seeds) + n_records)
    return kwargs, notes


# --- the chain ------------------------------------------------------------------------------------------------

# filter type -> how it runs: "map" (the local function per batch) or a function that finds the removals
GROUPED = {"dedup": _dedup_removals, "near_dedup": _near_dedup_removals}


def _step(fcfg: Any, ds: Any, evals: list, console: Any, parts: int, n_in: int, batch_size: int
          ) -> tuple[Any, dict[str, Any]]:
    """Run one filter; returns the tagged dataset (materialised) and the notes found before the map."""
    if fcfg.type in GROUPED:
        removed = GROUPED[fcfg.type](ds, fcfg, parts)
        return ds.map_batches(_tag_batch, fn_kwargs={"removed": removed}, batch_size=batch_size,
                              batch_format="numpy").materialize(), {}
    fn, kwargs, notes = FILTERS[fcfg.type], {}, {}
    if fcfg.type == "relevance":
        fn = relevance_verdicts
        kwargs, notes = _relevance_kwargs(ds, fcfg, console, n_in, parts)
    elif fcfg.type == "decontaminate" and not evals:
        raise SlmkitError("curate.filters (decontaminate): no eval sets to decontaminate against; set curate.eval")
    tagged = ds.map_batches(_map_batch, fn_kwargs={"fn": fn, "cfg": fcfg, "evals": evals, "kwargs": kwargs},
                            batch_size=batch_size, batch_format="numpy").materialize()
    return tagged, notes


def ray_chain(config: Any, records: list[dict[str, Any]], evals: list, console: Any
              ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    from slmkit.pipelines.curate import chain, filter_row

    ray, started = _start(config.ray)
    try:
        cpus = int(ray.cluster_resources().get("CPU", 1))
        parts = config.ray.partitions or 2 * cpus
        bs = config.ray.batch_size
        console.print(f"curate: Ray cluster with {cpus} CPUs, {len(records):,} records")
        rows_in = [{"_idx": i, "_where": r["_where"], "rec": pickle.dumps(r, protocol=5)}
                   for i, r in enumerate(records)]
        ds = ray.data.from_items(rows_in, override_num_blocks=max(2 * cpus, len(records) // bs + 1))
        del rows_in
        n_in = len(records)
        rows: list[dict[str, Any]] = []
        for position, fcfg in enumerate(chain(config), 1):
            start = time.perf_counter()
            try:
                tagged, notes = _step(fcfg, ds, evals, console, parts, n_in, bs)
                summary = tagged.map_batches(_summary_batch, batch_size=None, batch_format="numpy").take_all()
            except Exception as err:
                raise _unwrap(err) from None
            removed = sum(s["removed"] for s in summary)
            examples = sorted((e for s in summary for e in json.loads(s["examples"])), key=lambda e: e["idx"])
            batch_notes = [json.loads(n) for s in summary for n in json.loads(s["notes"])]
            rows.append(filter_row(position, fcfg, n_in, n_in - removed, removed,
                                   sum(s["modified"] for s in summary),
                                   {**notes, **_merge_notes(fcfg.type, batch_notes)},
                                   [{k: e[k] for k in ("where", "reason", "text")} for e in examples[:EXAMPLES]]))
            console.print(f"curate: {position}. {label(fcfg)}: {n_in:,} in, {removed:,} removed "
                          f"({time.perf_counter() - start:.1f} s)")
            ds = tagged.map_batches(_keep_batch, batch_format="numpy").materialize()
            n_in -= removed
        kept = sorted(ds.take_all(), key=lambda row: row["_idx"])
        return [pickle.loads(row["rec"]) for row in kept], rows
    finally:
        if started:
            ray.shutdown()
