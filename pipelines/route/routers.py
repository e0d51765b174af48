"""Router kinds: one class each, registered by `kind`, chosen in the recipe.

Every router gives each request an escalation score (higher: more reason to ask the remote model) and may
force some requests remote whatever the threshold. The decision is `remote = forced or score > threshold`;
route's calibration picks the threshold (see route/calibrate.py), rules have none to pick.

  rules       YAML rules over the request (a regex, its length, a metadata field): local or remote, first match
  cascade     the local model answers first; an answer that fails validation always escalates, the rest by
              the calibrated probability that the remote would do better, from the answer's log-prob quantiles
  classifier  before any generation, from the request alone: all-MiniLM-L6-v2 embeddings and a logistic
              regression predicting that the remote would do better; an escalated request skips the local try

Both learned routers are logistic regressions from scikit-learn (standardised inputs, L2). Their fitted
weights are stored as plain numbers in router.json, not a pickle: the file is readable, diffable and safe to
load, and scoring is one dot product.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from slmkit.pipelines.core.types import StrictModel
from slmkit.pipelines.route import signals

Path_ = Literal["local", "remote"]


# ---------------------------------------------------------------- configs (the recipe's `route.routers` list)

class Condition(StrictModel):
    regex: str | None = Field(None, description="the request's text matches this (re.search)")
    min_chars: int | None = Field(None, ge=0, description="the request's text is at least this long")
    max_chars: int | None = Field(None, ge=0, description="the request's text is at most this long")
    field: str | None = Field(None, description="a key of the request's `metadata`")
    equals: Any = Field(None, description="with `field`: its value is this")
    any_of: list[Any] | None = Field(None, alias="in", description="with `field`: its value is one of these")

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a regular expression: {exc}") from None
        return value

    @model_validator(mode="after")
    def _something(self):
        if (self.equals is not None or self.any_of is not None) and not self.field:
            raise ValueError("`equals` and `in` need a `field`")
        if not any(v is not None for v in (self.regex, self.min_chars, self.max_chars, self.field)):
            raise ValueError("a rule needs at least one of regex, min_chars, max_chars, field")
        return self

    def holds(self, text: str, metadata: dict[str, Any]) -> bool:
        checks = (
            self.regex is None or re.search(self.regex, text) is not None,
            self.min_chars is None or len(text) >= self.min_chars,
            self.max_chars is None or len(text) <= self.max_chars,
            self.field is None or (self.field in metadata and
                                   (self.equals is None or metadata[self.field] == self.equals) and
                                   (self.any_of is None or metadata[self.field] in self.any_of)),
        )
        return all(checks)


class Rule(StrictModel):
    when: Condition
    route: Path_


class RouterConfig(StrictModel):
    kind: Literal["rules", "cascade", "classifier"]
    name: str | None = Field(None, description="label in reports (default: the kind)")
    rules: list[Rule] = Field(default_factory=list, description="rules: the first whose `when` holds decides")
    default: Path_ = Field("local", description="rules: where a request no rule matches goes")
    c: float = Field(1.0, gt=0, description="cascade, classifier: inverse L2 strength of the logistic regression")
    embedding_model: str = Field("all-MiniLM-L6-v2", description="classifier: a sentence-transformers model")

    @model_validator(mode="after")
    def _rules_for_rules(self):
        if self.kind == "rules" and not self.rules:
            raise ValueError("a rules router needs `rules`")
        if self.kind != "rules" and self.rules:
            raise ValueError(f"`rules` are for a rules router, not {self.kind}")
        return self

    def label(self) -> str:
        return self.name or self.kind


# ---------------------------------------------------------------- the logistic model both learned routers use

def _fit_logistic(x: np.ndarray, y: np.ndarray, c: float) -> dict[str, Any]:
    """Weights of a standardised L2 logistic regression, or a constant when the labels are all one class."""
    if len(set(y.tolist())) < 2:
        return {"constant": float(y[0]) if len(y) else 0.0}
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x)
    model = LogisticRegression(C=c, max_iter=2000).fit(scaler.transform(x), y)
    return {"mean": scaler.mean_.tolist(), "scale": scaler.scale_.tolist(), "coef": model.coef_[0].tolist(),
            "intercept": float(model.intercept_[0])}


def _predict_logistic(state: dict[str, Any], x: np.ndarray) -> np.ndarray:
    if "constant" in state:
        return np.full(len(x), state["constant"], dtype=float)
    z = (x - np.array(state["mean"])) / np.array(state["scale"])
    return 1.0 / (1.0 + np.exp(-(z @ np.array(state["coef"]) + state["intercept"])))


def labels(rows: list[dict]) -> np.ndarray:
    """What the learned routers predict: the remote's answer would score higher than the local one."""
    return np.array([float(r["remote"]["score"] > r["local"]["score"]) for r in rows])


# ---------------------------------------------------------------- router kinds

ROUTERS: dict[str, type[Router]] = {}


def register(kind: str):
    def add(cls):
        ROUTERS[kind] = cls
        cls.kind = kind
        return cls
    return add


class Router:
    """A router of one kind. A row is a dict with the request's `text` and `metadata`; the cascade also reads
    the local answer's `signals`. The embedder (classifier) is passed in, so one model serves every fold."""

    kind: ClassVar[str]
    after_local: ClassVar[bool] = False  # decides only once the local model has answered
    learned: ClassVar[bool] = True  # has a threshold to calibrate

    def __init__(self, cfg: RouterConfig, state: dict[str, Any] | None = None):
        self.cfg = cfg
        self.state = state or {}

    def fit(self, rows: list[dict], embedder=None) -> Router:
        return self

    def scores(self, rows: list[dict], embedder=None) -> np.ndarray:
        raise NotImplementedError

    def forced(self, rows: list[dict]) -> np.ndarray:
        return np.zeros(len(rows), dtype=bool)


@register("rules")
class RulesRouter(Router):
    learned = False

    def route(self, text: str, metadata: dict[str, Any]) -> tuple[Path_, str]:
        """Where a request goes and why (the rule's index, or the default)."""
        for i, rule in enumerate(self.cfg.rules):
            if rule.when.holds(text, metadata):
                return rule.route, f"rule {i}"
        return self.cfg.default, "default"

    def scores(self, rows: list[dict], embedder=None) -> np.ndarray:
        return np.array([float(self.route(r["text"], r.get("metadata") or {})[0] == "remote") for r in rows])


@register("cascade")
class CascadeRouter(Router):
    after_local = True

    def fit(self, rows: list[dict], embedder=None) -> Router:
        valid = [r for r in rows if r["signals"]["valid"]]  # invalid answers escalate anyway: fit on the rest
        x = np.array([signals.vector(r["signals"]) for r in valid]).reshape(len(valid), len(signals.NAMES))
        self.state = _fit_logistic(x, labels(valid), self.cfg.c)
        return self

    def scores(self, rows: list[dict], embedder=None) -> np.ndarray:
        x = np.array([signals.vector(r["signals"]) for r in rows]).reshape(len(rows), len(signals.NAMES))
        return _predict_logistic(self.state, x)

    def forced(self, rows: list[dict]) -> np.ndarray:
        return np.array([not r["signals"]["valid"] for r in rows], dtype=bool)


def shared_prefix(texts: list[str]) -> str:
    """The start every text shares (a task's fixed instruction), cut back to a line or word boundary."""
    if len(texts) < 2:
        return ""
    import os

    prefix = os.path.commonprefix(texts)
    cut = max(prefix.rfind("\n"), prefix.rfind(" "))
    return prefix[:cut + 1] if cut >= 0 else ""


@register("classifier")
class ClassifierRouter(Router):
    """Embeds what varies between requests: the instruction every fitting request starts with carries no
    signal, and leaving it out more than halves the embedding's time (the demo's: 25 → 16 ms p50 on 2 cores)."""

    def _texts(self, rows: list[dict]) -> list[str]:
        prefix = self.state.get("strip_prefix", "")
        return [r["text"][len(prefix):] if prefix and r["text"].startswith(prefix) else r["text"] for r in rows]

    def fit(self, rows: list[dict], embedder=None) -> Router:
        self.state = {"strip_prefix": shared_prefix([r["text"] for r in rows])}
        self.state |= _fit_logistic(embedder.embed(self._texts(rows)), labels(rows), self.cfg.c)
        return self

    def scores(self, rows: list[dict], embedder=None) -> np.ndarray:
        return _predict_logistic(self.state, embedder.embed(self._texts(rows)))


def make_router(cfg: RouterConfig, state: dict[str, Any] | None = None) -> Router:
    return ROUTERS[cfg.kind](cfg, state)


def decide(router: Router, rows: list[dict], threshold: float, embedder=None) -> np.ndarray:
    """True where the request goes remote."""
    return router.forced(rows) | (router.scores(rows, embedder) > threshold)


def ranking(router: Router, rows: list[dict], embedder=None) -> np.ndarray:
    """The order a curve takes requests remote in: the forced ones first, then by score."""
    s = router.scores(rows, embedder)
    return np.where(router.forced(rows), 2.0 + s, s)
