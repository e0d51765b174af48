"""Reading a messy pile of domain data into uniform records, and writing the curated JSONL.

Every record that leaves this module has one of three shapes, chosen by the field mapping:
- `prompt` / `response` (plus an optional `system`): instruction data; `prompt` alone: questions to distil,
- `messages`: a chat, a list of {role, content},
- `text`: raw documents (tickets, pages) that distill later turns into training pairs,
plus the source's other top-level fields carried along unchanged (ids, labels), and `_where` (file:line) that
names the record in error messages and removal examples and is dropped on output.

JSONL is read line by line here so a malformed line is named by file and line; JSON, CSV, Parquet and
Hugging Face datasets go through `datasets`, whose rows are numbered from 1 in messages.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slmkit.pipelines.core import jsonl
from slmkit.pipelines.core.errors import SlmkitError

ROLES = {"system", "user", "assistant"}
TEXT_SUFFIXES = {".txt", ".md", ".text"}
# file suffix -> format name; a folder is read as plain text documents
SUFFIX_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "csv",
                  ".parquet": "parquet", ".pq": "parquet", ".txt": "text", ".md": "text", ".text": "text"}
# the canonical field groups a mapping may name, tried in this order by auto-detection
# (prompt alone: questions for distill's teacher to answer)
SHAPES = (("messages",), ("prompt", "response"), ("prompt",), ("text",))
OPTIONAL = {"system"}


@dataclass
class LoadStats:
    read: int = 0  # records that came out well-formed
    malformed: int = 0  # lines/rows skipped with on_error: skip
    examples: list[dict[str, str]] = field(default_factory=list)

    def note(self, where: str, why: str) -> None:
        self.malformed += 1
        if len(self.examples) < 5:
            self.examples.append({"where": where, "reason": why})


# ---------------------------------------------------------------- raw rows


def detect_format(path: Path, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    if path.is_dir():
        return "text"
    if path.suffix.lower() in SUFFIX_FORMATS:
        return SUFFIX_FORMATS[path.suffix.lower()]
    raise SlmkitError(f"{path}: cannot tell the format from the suffix '{path.suffix}'; set curate.format "
                      f"(one of: jsonl, json, csv, parquet, text, hf)")


def _jsonl_rows(path: Path, stats: LoadStats, on_error: str) -> Iterator[tuple[str, Any]]:
    # Bytes, decoded line by line: a bad byte is then named by its own line, and skippable like bad JSON.
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                _bad(where, f"not UTF-8 text ({err.reason} at byte {err.start})", stats, on_error)
                continue
            if not line.strip():
                continue
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as err:
                _bad(where, f"not valid JSON ({err.msg} at column {err.colno})", stats, on_error)


def _json_rows(path: Path, stats: LoadStats, on_error: str) -> Iterator[tuple[str, Any]]:
    from slmkit.pipelines.core.jsonl import read_text

    try:
        data = json.loads(read_text(path))  # a byte that is not UTF-8: an error naming FILE:LINE:COLUMN
    except json.JSONDecodeError as err:
        raise SlmkitError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None
    if isinstance(data, dict):  # {"data": [...]} and similar wrappers: the one list inside
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise SlmkitError(f"{path}: expected a JSON list of records (or an object holding exactly one list)")
        data = lists[0]
    if not isinstance(data, list):
        raise SlmkitError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    for i, row in enumerate(data):
        yield f"{path}[{i}]", row


def _dataset_rows(ds: Any, name: str) -> Iterator[tuple[str, Any]]:
    for i, row in enumerate(ds):
        yield f"{name}:row {i + 1}", row


def _tabular_rows(path: Path, fmt: str) -> Iterator[tuple[str, Any]]:
    import datasets

    kwargs = {"delimiter": "\t"} if path.suffix.lower() == ".tsv" else {}
    try:
        ds = datasets.load_dataset(fmt, data_files=str(path), split="train", **kwargs)
    except Exception as err:  # datasets raises many types for a broken file; the user needs the file named
        raise SlmkitError(f"{path}: cannot read as {fmt}: {str(err).splitlines()[0][:300]}") from None
    # CSV rows start on line 2 (after the header): name them so the user can open the file at that line
    offset = 2 if fmt == "csv" else 1
    for i, row in enumerate(ds):
        yield (f"{path}:{i + offset}" if fmt == "csv" else f"{path}:row {i + 1}"), row


def _text_rows(path: Path) -> Iterator[tuple[str, Any]]:
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES) \
        if path.is_dir() else [path]
    if path.is_dir() and not files:
        raise SlmkitError(f"{path}: the folder holds no .txt or .md files")
    for f in files:
        try:
            text = f.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise SlmkitError(f"{f}: not UTF-8 text ({err.reason})") from None
        yield str(f), {"text": text, "source": str(f.relative_to(path) if path.is_dir() else f.name)}


def _hf_rows(spec: str, split: str) -> Iterator[tuple[str, Any]]:
    import datasets

    try:
        ds = datasets.load_dataset(spec, split=split)
    except Exception as err:
        raise SlmkitError(f"{spec}: cannot load the Hugging Face dataset (split '{split}'): "
                          f"{str(err).splitlines()[0][:300]}") from None
    yield from _dataset_rows(ds, spec)


def _bad(where: str, why: str, stats: LoadStats, on_error: str) -> None:
    if on_error == "fail":
        raise SlmkitError(f"{where}: {why} (set curate.on_error: skip to drop such lines)")
    stats.note(where, why)


def raw_rows(source: str | Path, fmt: str, stats: LoadStats, on_error: str, hf_split: str = "train"
             ) -> Iterator[tuple[str, Any]]:
    """(where, row) for each row of one input: a file, a folder of text files, or a Hugging Face dataset id."""
    if fmt == "hf":
        yield from _hf_rows(str(source), hf_split)
        return
    path = Path(source)
    kind = detect_format(path, fmt)
    readers = {
        "jsonl": lambda: _jsonl_rows(path, stats, on_error),
        "json": lambda: _json_rows(path, stats, on_error),
        "csv": lambda: _tabular_rows(path, "csv"),
        "parquet": lambda: _tabular_rows(path, "parquet"),
        "text": lambda: _text_rows(path),
    }
    if kind not in readers:
        raise SlmkitError(f"{path}: unknown format '{kind}'")
    yield from readers[kind]()


# ---------------------------------------------------------------- field mapping


def _get(row: dict, path: str) -> Any:
    """`a.b` reads row['a']['b']: nested sources (e.g. {"conversation": {"turns": [...]}}) need no reshaping."""
    node: Any = row
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(path)
        node = node[part]
    return node


def resolve_mapping(fields: dict[str, str], row: Any, where: str) -> dict[str, str]:
    """The mapping canonical -> source field. An empty mapping is detected from the first record."""
    if fields:
        return dict(fields)
    if not isinstance(row, dict):
        raise SlmkitError(f"{where}: expected a JSON object, got {type(row).__name__}")
    for shape in SHAPES:
        if all(k in row for k in shape):
            found = {k: k for k in shape}
            found.update({k: k for k in OPTIONAL if k in row})
            return found
    raise SlmkitError(f"{where}: cannot guess which fields hold the data (keys: {', '.join(map(str, row)) or 'none'}); "
                      "set curate.fields, e.g. {prompt: question, response: answer} or {text: body}")


def check_mapping(fields: dict[str, str]) -> None:
    keys = set(fields) - OPTIONAL
    if not any(keys == set(shape) for shape in SHAPES):
        shapes = " or ".join("{" + ", ".join(s) + "}" for s in SHAPES)
        raise SlmkitError(f"curate.fields: map exactly one of {shapes} (plus optional system); got "
                          f"{{{', '.join(fields)}}}")


def _messages(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise ValueError("must be a non-empty list of {role, content}")
    out = []
    for i, m in enumerate(value):
        role = m.get("role", m.get("from")) if isinstance(m, dict) else None
        content = m.get("content", m.get("value")) if isinstance(m, dict) else None
        role = {"human": "user", "gpt": "assistant"}.get(role, role)  # ShareGPT's names for the same roles
        if role not in ROLES or not isinstance(content, str):
            raise ValueError(f"item {i} must be {{role: system|user|assistant, content: str}}")
        out.append({"role": role, "content": content})
    return out


def to_record(row: Any, where: str, mapping: dict[str, str], carry: list[str] | None) -> dict[str, Any]:
    """One source row -> a canonical record. Raises ValueError (a malformed row) or KeyError (missing field)."""
    if not isinstance(row, dict):
        raise ValueError(f"expected an object, got {type(row).__name__}")
    rec: dict[str, Any] = {}
    for canon, src in mapping.items():
        try:
            value = _get(row, src)
        except KeyError:
            if canon in OPTIONAL:
                continue
            raise
        if canon == "messages":
            try:
                rec["messages"] = _messages(value)
            except ValueError as err:
                raise ValueError(f"field '{src}' {err}") from None
        elif isinstance(value, str):
            rec[canon] = value
        elif value is None:
            raise ValueError(f"field '{src}' is empty (null)")
        else:
            raise ValueError(f"field '{src}' must be text, got {type(value).__name__}")
    used = {src.split(".")[0] for src in mapping.values()}
    names = carry if carry is not None else [k for k in row if k not in used and k not in rec]
    for k in names:
        if k in row and k not in rec:
            rec[k] = row[k]
    rec["_where"] = where
    return rec


def load_records(sources: list[str | Path], *, fmt: str, fields: dict[str, str], carry: list[str] | None,
                 on_error: str, hf_split: str = "train") -> tuple[list[dict[str, Any]], LoadStats]:
    """Every input's rows as canonical records. The mapping is fixed by the first record seen (or `fields`), so
    all records share one shape; a mapped field missing from a file's first record is a mapping mistake and
    always an error, while later misses are malformed rows handled by `on_error`."""
    if fields:
        check_mapping(fields)
    stats = LoadStats()
    records: list[dict[str, Any]] = []
    mapping: dict[str, str] | None = dict(fields) if fields else None
    for source in sources:
        first = True
        for where, row in raw_rows(source, fmt, stats, on_error, hf_split):
            if mapping is None:
                mapping = resolve_mapping({}, row, where)
            try:
                rec = to_record(row, where, mapping, carry)
            except KeyError as err:
                missing = err.args[0]
                canon = next((c for c, s in mapping.items() if s == missing), missing)
                if first:
                    keys = ", ".join(map(str, row)) if isinstance(row, dict) else "none"
                    raise SlmkitError(f"{where}: curate.fields.{canon} names the field '{missing}', which this "
                                      f"record does not have (its keys: {keys})") from None
                _bad(where, f"missing field '{missing}'", stats, on_error)
                continue
            except ValueError as err:
                _bad(where, str(err), stats, on_error)
                continue
            first = False
            stats.read += 1
            records.append(rec)
    return records, stats


def eval_texts(sources: list[Path], on_error: str) -> list[tuple[str, list[str]]]:
    """(where, strings) for each eval item: every string value in it, whatever the schema, so decontamination
    sees the question, the passage and the answer alike. Kept apart, not joined: n-grams that straddle two
    fields appear in no training text and would dilute the overlap."""
    stats = LoadStats()
    out = []
    for source in sources:
        for where, row in raw_rows(source, "auto", stats, on_error):
            out.append((where, list(_strings(row))))
    return out


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


# ---------------------------------------------------------------- text views and output


def record_texts(rec: dict[str, Any]) -> list[str]:
    """The record's content in a fixed order: what dedup, quality and decontamination look at."""
    if "messages" in rec:
        return [m["content"] for m in rec["messages"]]
    return [rec[k] for k in ("system", "prompt", "response", "text") if k in rec]


def record_text(rec: dict[str, Any]) -> str:
    return "\n".join(record_texts(rec))


def map_texts(rec: dict[str, Any], fn) -> dict[str, Any]:
    """A copy of the record with `fn` applied to every content string (normalisation, redaction)."""
    out = dict(rec)
    if "messages" in rec:
        out["messages"] = [{**m, "content": fn(m["content"])} for m in rec["messages"]]
    for k in ("system", "prompt", "response", "text"):
        if k in rec:
            out[k] = fn(rec[k])
    return out


def output_record(rec: dict[str, Any], prompt_template: str | None) -> dict[str, Any]:
    """The record as written: content first, then carried fields. A text record also gets a `prompt` (the text,
    or the template filled with it) so distill can use it as the user turn."""
    out = {k: v for k, v in rec.items() if k != "_where"}
    if "text" in rec and "prompt" not in rec:
        out = {"prompt": prompt_template.replace("{text}", rec["text"]) if prompt_template else rec["text"], **out}
    return out


def write_jsonl(path: Path, records: list[dict[str, Any]], prompt_template: str | None) -> None:
    """curate's output records (see output_record), through the one JSONL writer."""
    jsonl.write_jsonl(path, (output_record(rec, prompt_template) for rec in records))
