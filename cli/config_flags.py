"""A stage verb's options, made from its stage's pydantic config: a new config field is a new flag, no CLI edit.

Every top-level field whose type a command line carries (str, int, float, bool, a path, an enum or Literal, a list
of those) is an option `--field-name`: its help is the field's description and default, its type and choices come
from the annotation, a list repeats (`--x a --x b`) and a bool is a `--x/--no-x` pair. Nested sections and values
of other types (mappings, lists of sections) are set with `--set STAGE.KEY.PATH=VALUE`, with or without --recipe.

A verb's FLAGS table (config key path -> Flag) holds only what is verb-specific: a short name (`-m`), another long
name (`--qtype` for qtypes), a flag for one key of a nested section (`--lora-r` for lora.r), help for a field that
has no description, and for a field of another type the command-line type and how its text becomes the config
value (`--field prompt=question` -> fields). Everything else about a flag comes from the config.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import typer
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined
from rich.markup import escape

from slmkit.cli.common import Flags, ForceOpt, RecipeOpt, RunsDirOpt, run_stage_verb

_SCALARS = (str, int, float, bool)
# The options every stage verb has besides its config's: parameter name -> typer option (--set is per stage).
_STANDARD = {"recipe": RecipeOpt, "runs_dir": RunsDirOpt, "force": ForceOpt}
_STANDARD_TYPES = {"out": Path | None, "recipe": str | None, "runs_dir": Path, "force": bool}


class Flag:
    """One row of a verb's FLAGS table: what the verb adds to the option made from a config key.

    names:   option names: a long one ("--qtype") renames the option, a short one ("-m") is added to it.
             Without a long name the option is the key path in kebab case (--max-steps, --lora-r).
    type:    the command-line value type, for a field whose own type no option carries (e.g. list[str]).
    convert: the command-line value -> the config value (e.g. ["prompt=question"] -> {"prompt": "question"}).
    help:    the help text when the field has no description, or when `convert` makes the command-line form
             differ from the config's; otherwise the field's description is the help.
    """

    __slots__ = ("names", "type", "convert", "help")

    def __init__(self, *names: str, type: Any = None, convert: Callable[[Any], Any] | None = None,
                 help: str | None = None):
        self.names, self.type, self.convert, self.help = names, type, convert, help

    def __repr__(self) -> str:
        return f"Flag{self.names!r}"


@dataclass(frozen=True)
class ConfigOption:
    """An option made for one config key."""

    path: str  # the config key path it sets, dotted for a nested key
    param: str  # the Python parameter name typer passes its value as
    decls: tuple[str, ...]  # option names, a bool's as "--x/--no-x"
    annotation: Any  # what typer parses the text as
    help: str
    convert: Callable[[Any], Any] | None
    show_choices: bool = True  # in the type column; long lists of choices go in the help text instead

    @property
    def flag(self) -> str:
        """The name errors give it: its first long name."""
        return next(d for d in self.decls if d.startswith("--")).split("/")[0]


# ---------------------------------------------------------------- annotations


def _strip(tp: Any) -> Any:
    while get_origin(tp) is Annotated:
        tp = get_args(tp)[0]
    return tp


def _members(tp: Any) -> list[Any]:
    """The non-None members of a union (or the type alone), each without its Annotated metadata."""
    tp = _strip(tp)
    if get_origin(tp) in (Union, types.UnionType):
        return [_strip(a) for a in get_args(tp) if a is not type(None)]
    return [tp]


def _scalar(tp: Any) -> Any | None:
    """The option type for one value of `tp`, or None when no command-line word is one."""
    found = []
    for m in _members(tp):
        if get_origin(m) is Literal or m in _SCALARS or (isinstance(m, type) and issubclass(m, Enum)):
            found.append(m)
        elif isinstance(m, type) and issubclass(m, Path):
            found.append(Path)
    if not found:
        return None
    return found[0] if len(found) == 1 else str  # e.g. int | str: the text, for pydantic to read


def cli_type(tp: Any) -> tuple[Any, bool] | None:
    """(value type, repeatable) of an option for a field of type `tp`, or None for a section or another type."""
    members = _members(tp)
    if len(members) == 1 and get_origin(members[0]) is list:
        (item,) = get_args(members[0]) or (str,)
        value = _scalar(item)
        return (value, True) if value is not None else None
    value = _scalar(tp)
    return (value, False) if value is not None else None


def _keys(model: type[BaseModel]) -> dict[str, FieldInfo]:
    """A config's fields by the key a recipe writes (the alias where there is one)."""
    return {f.alias or name: f for name, f in model.model_fields.items()}


def _section(tp: Any) -> type[BaseModel] | None:
    found = [m for m in _members(tp) if isinstance(m, type) and issubclass(m, BaseModel)]
    return found[0] if len(found) == 1 else None


def _field(model: type[BaseModel], path: str) -> FieldInfo:
    node: type[BaseModel] | None = model
    parts = path.split(".")
    for i, part in enumerate(parts):
        fields = _keys(node) if node is not None else {}
        if part not in fields:
            raise ValueError(f"{model.__name__} has no key '{path}' (a verb's FLAGS table names it)")
        if i == len(parts) - 1:
            return fields[part]
        node = _section(fields[part].annotation)
    raise AssertionError(path)


# ---------------------------------------------------------------- help text


def _default(f: FieldInfo) -> Any:
    if f.default is not PydanticUndefined:
        return f.default
    if f.default_factory is not None and not getattr(f, "default_factory_takes_data", False):
        return f.default_factory()
    return None


def _shown_default(value: Any, flag: str) -> str | None:
    if value is None or isinstance(value, BaseModel) or value in ([], {}, ()):
        return None
    if isinstance(value, bool):
        return flag if value else f"--no-{flag[2:]}"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v.value if isinstance(v, Enum) else v) for v in value)
    return str(value.value if isinstance(value, Enum) else value)


def _help(f: FieldInfo, row: Flag | None, *, flag: str, many: bool, top: bool, choices: str | None) -> str:
    text = f.description
    if row is not None and row.help and (row.convert is not None or not text):
        text = row.help
    parts = [text] if text else []
    if choices:
        parts.append(f"(one of: {choices})")
    if many:
        parts.append("(repeatable)")
    if top and f.is_required():
        parts.append("[required without --recipe]")
    elif row is None or row.convert is None:  # a converted flag's default is the config's form, not the flag's
        shown = _shown_default(_default(f), flag)
        if shown is not None:
            parts.append(f"[default: {shown}]")
    return escape(" ".join(parts))


# ---------------------------------------------------------------- the options


def _kebab(path: str) -> str:
    return "--" + path.replace("_", "-").replace(".", "-")


def _option(model: type[BaseModel], path: str, row: Flag | None, reserved: set[str]) -> ConfigOption | None:
    f = _field(model, path)
    own = cli_type(f.annotation)
    if row is not None and row.type is not None:
        wanted = _members(row.type)[0]
        value, many = (get_args(wanted)[0], True) if get_origin(wanted) is list else (wanted, False)
    elif own is not None:
        value, many = own
    elif row is not None:
        raise ValueError(f"{model.__name__}.{path}: a {f.annotation} is no option type; its Flag needs "
                         "type= (the command-line type) and convert= (to the config value)")
    else:
        return None
    given = list(row.names) if row is not None else []
    bad = [n for n in given if not n.startswith("-") or n.startswith("--no-")]
    if bad:
        raise ValueError(f"{model.__name__}.{path}: bad option names {bad}: a name is -x or --name, and a "
                         "bool's --no-name is made from its --name")
    longs = [n for n in given if n.startswith("--")]
    if not longs:  # the key's own name, unless the verb uses it for something else (then the key is --set's)
        own_name = _kebab(path)
        if own_name in reserved or f"--no-{own_name[2:]}" in reserved:
            if given:
                raise ValueError(f"{model.__name__}.{path}: {own_name} is taken; give the Flag a long name")
            return None
        longs = [own_name]
    choices = ", ".join(map(str, _choices(value)))
    long_choices = len(choices) > _CHOICES_WIDTH
    if value is bool:
        decls = [f"{n}/--no-{n[2:]}" for n in longs]
    else:
        decls = list(longs)
    decls += [n for n in given if not n.startswith("--")]
    return ConfigOption(path=path, param="cfg_" + path.replace(".", "__"), decls=tuple(decls),
                        annotation=list[value] | None if many else value | None,
                        help=_help(f, row, flag=longs[0], many=many, top="." not in path,
                                   choices=choices if long_choices else None),
                        convert=row.convert if row is not None else None, show_choices=not long_choices)


_CHOICES_WIDTH = 24  # a type column of choices wider than this squeezes every option's help


def _choices(tp: Any) -> list[Any]:
    if get_origin(tp) is Literal:
        return list(get_args(tp))
    if isinstance(tp, type) and issubclass(tp, Enum):
        return [m.value for m in tp]
    return []


def config_options(model: type[BaseModel], table: dict[str, Flag] | None = None,
                   reserved: set[str] | frozenset[str] = frozenset(), strict: bool = True) -> list[ConfigOption]:
    """The options for a config: one per top-level field an option carries, and one per row of `table`,
    each in its field's place. `reserved`: option names the verb already uses (a field's own name yields).

    `strict`: a row that names no key of the config is an error. The verbs build their commands when the CLI is
    imported, from whatever config the stage table holds then (tests and plugins may swap a stage's config), so
    they pass strict=False and skip such rows; tests/test_cli.py checks every verb's table strictly instead."""
    table = dict(table or {})
    for path in list(table):
        try:
            _field(model, path)
        except ValueError:
            if strict:
                raise
            del table[path]
    out: list[ConfigOption] = []
    taken = set(reserved) | {n for row in table.values() for n in row.names}
    for key in _keys(model):
        paths = [key] + [p for p in table if p.startswith(key + ".")]
        for path in paths:
            option = _option(model, path, table.get(path), taken - set(table.get(path, Flag()).names))
            if option is not None:
                out.append(option)
    return out


def unflagged(model: type[BaseModel], options: list[ConfigOption]) -> list[str]:
    """The top-level keys no option sets (a section as `KEY.*`): the ones --set is for."""
    flagged = {o.path for o in options}
    out = []
    for key, f in _keys(model).items():
        if key in flagged:
            continue
        out.append(f"{key}.*" if _section(f.annotation) is not None and cli_type(f.annotation) is None else key)
    return out


def _set_option(stage: str, keys: list[str]) -> Any:
    without = f", also those without a flag ({', '.join(keys)})" if keys else ""
    return typer.Option(None, "--set", "-s", help=escape(
        f"{stage}.KEY.PATH=VALUE (VALUE in YAML): any config key{without}; with --recipe, any key of the "
        "recipe; a flag wins over it; repeatable"))


def _plain(value: Any) -> Any:
    """An enum member as its value (what a recipe holds and JSON writes)."""
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value.value if isinstance(value, Enum) else value


def stage_options(stage: str, table: dict[str, Flag] | None = None, *, out_help: str,
                  model: type[BaseModel] | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a stage verb's function into a typer command with an option per config key.

    The function takes `flags` (a Flags: the config keys given, by key path), `out`, `sets`, `recipe`,
    `runs_dir` and `force` without defaults (they are made here), then any options of its own as typer
    parameters. `model` defaults to the stage's config in the stage registry."""
    if model is None:
        from slmkit.pipelines.core.stages import STAGES

        model = STAGES[stage].config

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        made = {"out": typer.Option(None, "--out", "-o", help=out_help), **_STANDARD}
        own: list[inspect.Parameter] = []
        for p in inspect.signature(func, eval_str=True).parameters.values():
            if p.name == "flags":
                continue
            if p.name == "sets":
                own.append(p)  # made below, once the keys without a flag are known
            elif p.name in made:
                own.append(p.replace(default=made[p.name], annotation=_STANDARD_TYPES[p.name]))
            elif isinstance(p.default, typer.models.ParameterInfo):
                own.append(p)
            else:
                raise TypeError(f"{func.__name__}: parameter '{p.name}' needs a typer.Option default")
        theirs = [o for p in own if isinstance(p.default, typer.models.OptionInfo) for o in _decl_opts(p.default)]
        options = config_options(model, table, reserved={"--help", "-h", "--set", "-s", *theirs}, strict=False)
        panel = f"{stage} config (any key: --set {stage}.KEY.PATH=VALUE)"
        params = [inspect.Parameter(o.param, inspect.Parameter.KEYWORD_ONLY, annotation=o.annotation,
                                    default=typer.Option(None, *o.decls, help=o.help, rich_help_panel=panel,
                                                         show_choices=o.show_choices))
                  for o in options]
        for p in own:
            if p.name == "sets":
                p = p.replace(default=_set_option(stage, unflagged(model, options)), annotation=list[str] | None)
            params.append(p.replace(kind=inspect.Parameter.KEYWORD_ONLY))
        _check_unique(stage, params)
        names = {o.path: o.flag for o in options}

        def command(**values: Any) -> Any:
            given = {}
            for o in options:
                value = values.pop(o.param)
                if value is None or value == []:
                    continue
                value = _plain(value)
                given[o.path] = o.convert(value) if o.convert is not None else value
            return func(flags=Flags(given, names), **values)

        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__doc__, command.__name__, command.__module__ = func.__doc__, func.__name__, func.__module__
        command.config_options = options  # type: ignore[attr-defined]
        return command

    return decorate


def _decl_opts(info: typer.models.OptionInfo) -> list[str]:
    return [o for d in (info.param_decls or ()) for o in d.split("/")]


def _check_unique(stage: str, params: list[inspect.Parameter]) -> None:
    seen: dict[str, str] = {}
    for p in params:
        for opt in _decl_opts(p.default) if isinstance(p.default, typer.models.OptionInfo) else []:
            if opt in seen or opt in ("--help", "-h"):
                raise ValueError(f"slmkit {stage}: option {opt} is given to both {seen.get(opt, 'help')} "
                                 f"and {p.name}")
            seen[opt] = p.name


def stage_command(stage: str, table: dict[str, Flag] | None = None, *, out_help: str, doc: str | None = None,
                  model: type[BaseModel] | None = None) -> Callable[..., Any]:
    """The whole command of a stage verb that has no options of its own: its config's, and the standard ones."""

    def command(flags: Flags, out: Path | None, sets: list[str] | None, recipe: str | None, runs_dir: Path,
                force: bool) -> None:
        run_stage_verb(stage, recipe=recipe, overrides=sets, runs_dir=runs_dir, out=out, force=force, flags=flags)

    command.__doc__ = doc
    return stage_options(stage, table, out_help=out_help, model=model)(command)

