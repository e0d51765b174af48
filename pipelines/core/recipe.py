"""Recipes: YAML validated by pydantic before anything runs, every problem reported at once with its key
path and line, `a.b=c` overrides from the command line, and the recipes that ship with slmkit."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, create_model

from slmkit.pipelines.core.errors import RecipeError
from slmkit.pipelines.core.stages import STAGES
from slmkit.pipelines.core.types import ModelSpec, StrictModel


class RecipeBase(StrictModel):
    name: str = Field(pattern=r"^[A-Za-z0-9][\w.-]*$", description="run name: runs/<name>/")
    description: str = ""
    model: ModelSpec | None = Field(None, description="the base (student) model every stage defaults to")
    seed: int = 0
    allow_code: bool = Field(False, description="the recipe may import the Python code it names (lm-eval "
                                                "`!function` tags, module:function fields), as --allow-code does")


_models: dict[tuple, type] = {}


def recipe_model() -> type[RecipeBase]:
    """The Recipe model: one optional section per row of the stage table (a section present means the stage
    is in the run). Built from the table as it is now, so tests may swap in toy stages."""
    key = tuple((name, stage.config) for name, stage in STAGES.items())
    if key not in _models:
        _models[key] = create_model(
            "Recipe", __base__=RecipeBase, **{name: (config | None, None) for name, config in key}
        )
    return _models[key]


def stages_in(recipe: Any) -> list[str]:
    return [name for name in STAGES if getattr(recipe, name, None) is not None]


# ---------------------------------------------------------------- loading


def _line_map(node: yaml.Node, path: tuple = (), lines: dict | None = None) -> dict[tuple, int]:
    """Key path -> 1-based line of that key in the YAML text (for error messages)."""
    lines = {} if lines is None else lines
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            sub = path + (str(key.value),)
            lines[sub] = key.start_mark.line + 1
            _line_map(value, sub, lines)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[path + (i,)] = item.start_mark.line + 1
            _line_map(item, path + (i,), lines)
    return lines


def parse_override(text: str) -> tuple[list[str | int], Any]:
    """`finetune.lora.r=16` -> (['finetune', 'lora', 'r'], 16); values are read as YAML scalars."""
    if "=" not in text:
        raise RecipeError("override", [f"'{text}': an override is KEY.PATH=VALUE"])
    key, raw = text.split("=", 1)
    if not re.fullmatch(r"[A-Za-z_][\w-]*(\.[\w-]+)*", key.strip()):
        raise RecipeError("override", [f"'{text}': '{key}' is not a key path like finetune.lora.r"])
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    parts: list[str | int] = [int(p) if p.isdigit() else p for p in key.strip().split(".")]
    return parts, value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for text in overrides:
        parts, value = parse_override(text)
        node: Any = data
        for i, part in enumerate(parts[:-1]):
            nxt = parts[i + 1]
            if isinstance(node, list) and isinstance(part, int) and part < len(node):
                node = node[part]
                continue
            if not isinstance(node, dict):
                raise RecipeError("override", [f"'{text}': {'.'.join(map(str, parts[:i]))} is not a mapping"])
            if not isinstance(node.get(part), (dict, list)):
                node[part] = [] if isinstance(nxt, int) else {}
            node = node[part]
        last = parts[-1]
        if isinstance(node, list) and isinstance(last, int):
            if last < len(node):
                node[last] = value
            elif last == len(node):
                node.append(value)
            else:
                raise RecipeError("override", [f"'{text}': index {last} is past the end of the list"])
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise RecipeError("override", [f"'{text}': cannot set a key inside a {type(node).__name__}"])
    return data


def _format_loc(loc: tuple) -> str:
    return ".".join(str(p) for p in loc) or "(top level)"


def _problems(err: ValidationError, lines: dict[tuple, int], overridden: set[tuple]) -> list[str]:
    """One line per error, `key.path: message (line N)`, in the order they appear in the file."""
    out: list[tuple[float, str]] = []
    for e in err.errors(include_url=False):
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and ("[" in p or p in ("function-after",))))
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] == "missing":
            msg = "required key is missing"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        where, order = "", float("inf")
        for n in range(len(loc), 0, -1):
            if loc[:n] in overridden:
                where = " (command-line override)"
                break
            if loc[:n] in lines:
                order = lines[loc[:n]]
                where = f" (line {order})"
                break
        out.append((order, f"{_format_loc(loc)}: {msg}{where}"))
    return [text for _, text in sorted(out, key=lambda item: item[0])]


def load_recipe(path: Path | str, overrides: list[str] | None = None):
    """Read, override and validate a recipe; raises RecipeError listing every problem."""
    path = find_recipe(path)
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RecipeError(source, [f"cannot read: {exc.strerror}"]) from None
    except UnicodeDecodeError as exc:
        line = exc.object.count(b"\n", 0, exc.start) + 1
        raise RecipeError(source, [f"line {line}: not UTF-8 text ({exc.reason}); save the file as UTF-8"]) from None
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f"line {mark.line + 1}: " if mark else ""
        raise RecipeError(source, [f"{line}not valid YAML: {exc.problem or exc}"]) from None
    if data is None:
        raise RecipeError(source, ["the recipe is empty"])
    if not isinstance(data, dict):
        raise RecipeError(source, ["a recipe is a YAML mapping (key: value), not a " + type(data).__name__])
    lines = _line_map(node) if node is not None else {}
    overrides = overrides or []
    apply_overrides(data, overrides)
    overridden = {tuple(parse_override(o)[0]) for o in overrides}
    return validate_data(data, source, lines, overridden, base_dir=path.parent)


def validate_data(data: dict, source: str = "recipe", lines: dict | None = None,
                  overridden: set | None = None, base_dir: Path | None = None):
    try:
        return recipe_model().model_validate(data, context={"base_dir": base_dir or Path.cwd()})
    except ValidationError as err:
        raise RecipeError(source, _problems(err, lines or {}, overridden or set())) from None


# ---------------------------------------------------------------- shipped recipes


def shipped() -> dict[str, Path]:
    """Recipes that ship inside the package, by name (file stem)."""
    root = resources.files("slmkit.recipes")
    return {Path(p.name).stem: Path(str(p)) for p in root.iterdir() if p.name.endswith(".yaml")}


def find_recipe(spec: Path | str) -> Path:
    """A recipe file path, or the name of a shipped recipe (`slmkit run demo`)."""
    path = Path(spec).expanduser()
    if path.exists():
        return path.resolve()
    known = shipped()
    if str(spec) in known:
        return known[str(spec)]
    names = ", ".join(sorted(known)) or "none"
    raise RecipeError(str(spec), [f"no such recipe file, and not a shipped recipe (shipped: {names})"])


def dump(recipe: Any) -> dict:
    """The resolved recipe as plain JSON-able data (paths as strings), for manifests and fingerprints."""
    return recipe.model_dump(mode="json")
