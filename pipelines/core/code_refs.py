"""Python code a recipe would import, found before anything runs.

A recipe is data, but some of what it names is code: an lm-eval task YAML (`bench.lm_eval.tasks`) may carry
`!function utils.process_docs` tags, which lm-eval resolves by importing `utils.py` from the YAML's folder, and
a config field of the `CodeSpec` type names a `module:function`. `slmkit validate` lists every such reference;
`slmkit run` and `slmkit bench` refuse a recipe that has any unless `--allow-code` is given or the recipe says
`allow_code: true`.

    find_code_refs(recipe_or_config, prefix="")  -> [CodeRef(where, source, what)]
    require_allowed(refs, allowed, how)           raises CodeNotAllowed listing them, unless allowed

The scan reads YAML only (its own loader records tags instead of resolving them): it never imports anything.
It follows `include:` the way lm-eval does, and also counts Python object tags (`!!python/…`), a dataset
loading script (`dataset_path: x.py`) and `trust_remote_code: true` as code. A task file that cannot be read
counts too: slmkit cannot tell what it would import.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import AfterValidator, BaseModel

from slmkit.pipelines.core.errors import SlmkitError

# ---------------------------------------------------------------- `module:function` fields


class IsCode:
    """Marks a config field whose value names Python code to import (`package.module:function`)."""


def _module_function(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", value):
        raise ValueError(f"'{value}' is not a code reference of the form package.module:function")
    return value


# For a config field that names a callable; find_code_refs lists every field of this type that is set.
CodeSpec = Annotated[str, AfterValidator(_module_function), IsCode()]


@dataclass(frozen=True)
class CodeRef:
    where: str   # the recipe key that leads to the code, e.g. bench.lm_eval.tasks[0]
    source: str  # the file that names the code (a task YAML), or "recipe"
    what: str    # what would be imported, e.g. "!function utils.process_docs -> /abs/utils.py"

    def __str__(self) -> str:
        return f"{self.where}: {self.what}" + ("" if self.source == "recipe" else f" (in {self.source})")


class CodeNotAllowed(SlmkitError):
    """A recipe names code to import and the user has not allowed it."""

    exit_code = 2


# ---------------------------------------------------------------- lm-eval task YAMLs


class _TagRecorder(yaml.SafeLoader):
    """A YAML loader that builds plain data and notes every non-standard tag instead of acting on it."""


def _record_tag(loader: _TagRecorder, suffix: str, node: yaml.Node, prefix: str = "") -> Any:
    tag = prefix + suffix
    value = node.value if isinstance(node, yaml.ScalarNode) else None
    loader.tags.append((tag, value, node.start_mark.line + 1))
    if isinstance(node, yaml.ScalarNode):
        return loader.construct_scalar(node)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_mapping(node, deep=True)


_TagRecorder.add_multi_constructor("!", lambda ld, sfx, node: _record_tag(ld, sfx, node, "!"))
_TagRecorder.add_multi_constructor("tag:yaml.org,2002:python/",
                                   lambda ld, sfx, node: _record_tag(ld, sfx, node, "!!python/"))


def _read_tags(path: Path) -> tuple[Any, list[tuple[str, str | None, int]]]:
    loader = _TagRecorder(path.read_text(encoding="utf-8"))
    loader.tags = []
    try:
        return loader.get_single_data(), loader.tags
    finally:
        loader.dispose()


def _walk(data: Any, key: str = ""):
    """(key, value) of every mapping entry, nested too."""
    if isinstance(data, dict):
        for k, v in data.items():
            yield str(k), v
            yield from _walk(v, str(k))
    elif isinstance(data, list):
        for v in data:
            yield from _walk(v, key)


def task_file_code(path: Path, seen: set[Path] | None = None) -> list[tuple[str, str]]:
    """(file, what) for every piece of code a task YAML (and what it includes) would make lm-eval import."""
    path = Path(path).resolve()
    seen = set() if seen is None else seen
    if path in seen:
        return []
    seen.add(path)
    try:
        data, tags = _read_tags(path)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        reason = type(exc).__name__ if not isinstance(exc, OSError) else (exc.strerror or type(exc).__name__)
        return [(str(path), f"cannot be read to check it for code ({reason}), so what it imports is unknown")]
    found: list[tuple[str, str]] = []
    for tag, value, line in tags:
        if tag == "!function" and value:
            # As lm-eval resolves it: `a.b.fn` -> a/b.py beside the YAML if that exists, else the module a.b.
            module = value.rpartition(".")[0]
            local = (path.parent / f"{module.replace('.', '/')}.py").resolve()
            target = str(local) if local.exists() else f"the module {module or value}"
            found.append((str(path), f"line {line}: !function {value} -> imports {target}"))
        elif tag == "!function" or tag.startswith("!!python/"):
            found.append((str(path), f"line {line}: {tag} {value or ''}".rstrip()))
    for key, value in _walk(data):
        if key == "dataset_path" and isinstance(value, str) and value.endswith(".py"):
            found.append((str(path), f"dataset_path: {value} (a dataset loading script runs as Python)"))
        if key == "trust_remote_code" and value is True:
            found.append((str(path), "trust_remote_code: true (the dataset's own code would run)"))
    includes = data.get("include") if isinstance(data, dict) else None
    for inc in [includes] if isinstance(includes, str) else includes if isinstance(includes, list) else []:
        if isinstance(inc, str):
            found += task_file_code(Path(inc) if Path(inc).is_absolute() else path.parent / inc, seen)  # lm-eval's rule
    return found


def _task_dir() -> Path:
    from importlib import resources

    return Path(str(resources.files("slmkit.evals"))) / "lm_eval"


def task_yaml(spec: str) -> Path | None:
    """The YAML an lm-eval task spec names, as slmkit's runner finds it: a task name in evals/lm_eval/, else a
    path to a .yaml/.yml file. None when neither (lm-eval would fail on it, and import nothing)."""
    folder = _task_dir()
    if folder.is_dir():
        for candidate in sorted(folder.rglob("*.y*ml")):
            try:
                data, _ = _read_tags(candidate)
            except (OSError, UnicodeDecodeError, yaml.YAMLError):
                continue
            if isinstance(data, dict) and data.get("task") == spec:
                return candidate
    path = Path(spec).expanduser()
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path.resolve()
    return None


# ---------------------------------------------------------------- a recipe or config


def find_code_refs(obj: Any, prefix: str = "") -> list[CodeRef]:
    """Every code reference in a validated recipe or stage config, with the recipe key that leads to it."""
    from slmkit.pipelines.bench import LmEvalConfig

    refs: list[CodeRef] = []

    def join(path: str, part: str | int) -> str:
        if isinstance(part, int):
            return f"{path}[{part}]"
        return f"{path}.{part}" if path else part

    def walk(value: Any, path: str) -> None:
        if isinstance(value, LmEvalConfig):
            for i, spec in enumerate(value.tasks):
                found = task_yaml(spec)
                for source, what in task_file_code(found) if found else []:
                    refs.append(CodeRef(join(join(path, "tasks"), i), source, what))
        if isinstance(value, BaseModel):
            for name, field in type(value).model_fields.items():
                item = getattr(value, name)
                if any(isinstance(m, IsCode) for m in field.metadata) and item is not None:
                    for j, ref in enumerate(item if isinstance(item, list) else [item]):
                        key = join(path, name) if not isinstance(item, list) else join(join(path, name), j)
                        refs.append(CodeRef(key, "recipe", f"imports {ref}"))
                else:
                    walk(item, join(path, field.alias or name))
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                walk(item, join(path, i))
        elif isinstance(value, dict):
            for k, item in value.items():
                walk(item, join(path, str(k)))

    walk(obj, prefix)
    return refs


def describe(refs: list[CodeRef]) -> str:
    return "\n".join(f"  - {r}" for r in refs)


def require_allowed(refs: list[CodeRef], allowed: bool, what: str = "this recipe") -> None:
    """Refuse to go on when `refs` is not empty and code was not allowed (--allow-code / allow_code: true)."""
    if refs and not allowed:
        raise CodeNotAllowed(f"{what} would import Python code, and nothing has been run:\n{describe(refs)}\n"
                             "If you trust that code, pass --allow-code (or set `allow_code: true` at the top "
                             "of the recipe).")
