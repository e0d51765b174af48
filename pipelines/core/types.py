"""Field types shared by the stage configs: paths resolved against the recipe, and model specs.

A recipe's relative paths are resolved against the folder that holds the recipe (so a recipe and its data
travel together); on the command line they are resolved against the working directory. The base folder
arrives through pydantic's validation context as `base_dir`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationInfo


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are errors, and defaults are validated too."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


class IsInput:
    """Marks a path field as an input whose content digest enters the stage's fingerprint."""


def _base_dir(info: ValidationInfo) -> Path:
    ctx = info.context or {}
    return Path(ctx.get("base_dir") or Path.cwd())


def _resolve(value: Path, info: ValidationInfo) -> Path:
    return (_base_dir(info) / Path(value).expanduser()).resolve()


def _existing(value: Path, info: ValidationInfo) -> Path:
    path = _resolve(value, info)
    if not path.exists():
        raise ValueError(f"path does not exist: {path}")
    return path


# A file or folder the stage reads; it must exist when the recipe is validated.
InputPath = Annotated[Path, AfterValidator(_existing), IsInput()]
# Several inputs (e.g. `curate.input`); the whole list enters the fingerprint.
InputPaths = Annotated[list[Annotated[Path, AfterValidator(_existing)]], IsInput()]
# A path the stage writes, or one that an earlier step creates; only resolved.
OutputPath = Annotated[Path, AfterValidator(_resolve)]


def _model_spec(value: str, info: ValidationInfo) -> str:
    # Imported here: the model registry pulls in nothing heavy, but keeping types.py import-light
    # lets every stage module import it cheaply.
    from slmkit.pipelines.core.models import check_model_spec

    return check_model_spec(value, _base_dir(info))


# A base model: a known name (`slmkit models`), a local HF folder, or a Hugging Face id (org/name).
ModelSpec = Annotated[str, AfterValidator(_model_spec), IsInput()]


def input_values(model: BaseModel) -> list[Any]:
    """Every value of a field marked IsInput, walking nested sections and lists, in field order."""
    found: list[Any] = []

    def walk(obj: Any) -> None:
        if isinstance(obj, BaseModel):
            for name, field in type(obj).model_fields.items():
                value = getattr(obj, name)
                if any(isinstance(m, IsInput) for m in field.metadata) and value is not None:
                    found.extend(value if isinstance(value, list) else [value])
                else:
                    walk(value)
        elif isinstance(obj, (list, tuple)):
            for item in obj:
                walk(item)
        elif isinstance(obj, dict):
            for item in obj.values():
                walk(item)

    walk(model)
    # Files a section reads through another file (an agent workflow's tasks and tool modules): the section says
    # which, so editing them makes the stage stale like editing the file that names them.
    extra = getattr(model, "extra_inputs", None)
    if callable(extra):
        found.extend(extra())
    return found
