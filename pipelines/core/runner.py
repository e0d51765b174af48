"""Runs a recipe's stages in order over its run directory, skipping what is done and fresh.

A stage is fresh when its DONE.json holds the fingerprint computed now from its config, the recipe's
globals, its upstream results and the digests of its inputs. A changed stage reruns, and so does everything
downstream of it, because their fingerprints include its attempt.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from slmkit.pipelines.core import fingerprint as fp
from slmkit.pipelines.core.errors import SlmkitError
from slmkit.pipelines.core.isolated import release_memory
from slmkit.pipelines.core.models import model_digest
from slmkit.pipelines.core.recipe import dump, stages_in
from slmkit.pipelines.core.rundir import (
    attempt_state,
    execute_stage,
    lock_out,
    lock_run,
    partial_of,
    read_json,
    result_of,
    upstream_token,
    write_manifest,
)
from slmkit.pipelines.core.stage import StageResult
from slmkit.pipelines.core.stages import ORDER, STAGES, folder_name
from slmkit.pipelines.core.types import input_values


def input_digests(section: Any, base_model: str | None) -> dict[str, str]:
    values = input_values(section)
    if base_model:
        values.append(base_model)
    out = {}
    for v in values:
        out[str(v)] = fp.digest_path(v) if isinstance(v, Path) else model_digest(str(v))
    return out


def stage_fingerprint(recipe: Any, name: str, upstream: dict[str, StageResult]) -> str:
    section = getattr(recipe, name)
    config = {"section": section.model_dump(mode="json"), "model": recipe.model, "seed": recipe.seed}
    tokens = {u: upstream_token(r) for u, r in upstream.items()}
    return fp.fingerprint(name, config, tokens, input_digests(section, recipe.model))


@dataclass
class Run:
    """A recipe bound to its run directory."""

    recipe: Any
    root: Path

    @classmethod
    def open(cls, recipe: Any, runs_dir: Path | str = "runs") -> Run:
        return cls(recipe, Path(runs_dir).resolve() / recipe.name)

    @property
    def stages(self) -> list[str]:
        return stages_in(self.recipe)

    def stage_dir(self, name: str) -> Path:
        return self.root / folder_name(name)

    def upstream_of(self, name: str) -> list[str]:
        return [u for u in STAGES[name].needs if u in self.stages]

    # ------------------------------------------------------------ status

    def status(self) -> list[dict]:
        """One row per stage in the recipe: state (done/stale/pending/failed/running), times, metrics."""
        rows: list[dict] = []
        states: dict[str, str] = {}
        for name in self.stages:
            sdir = self.stage_dir(name)
            done = read_json(sdir / "DONE.json")
            attempt, detail = attempt_state(sdir)
            ups = self.upstream_of(name)
            results = {u: result_of(u, self.stage_dir(u)) for u in ups}
            upstream_ok = all(states.get(u) == "done" and results[u] for u in ups)
            if attempt in ("running", "failed"):
                state = attempt
            elif done and upstream_ok and done.get("fingerprint") == stage_fingerprint(self.recipe, name, results):
                state = "done"
            elif done:
                state = "stale"
            else:
                state = "pending"
            states[name] = state
            info = detail if attempt in ("running", "failed") else done or {}
            rows.append({"stage": name, "state": state, "folder": str(sdir),
                         "started": info.get("started"), "finished": info.get("finished") or info.get("failed"),
                         "seconds": info.get("seconds"), "error": info.get("error"),
                         "metrics": (done or {}).get("metrics", {}) if state in ("done", "stale") else {}})
        return rows

    # ------------------------------------------------------------ execution

    def select(self, only: list[str] | None, start: str | None, force: list[str] | None,
               until: str | None = None) -> tuple[list[str], set[str]]:
        """(stages to consider, stages to rerun even if fresh), from --only/--from/--until/--force."""
        for flag, names in (("--only", only or []), ("--force", force or []), ("--from", [start] if start else []),
                            ("--until", [until] if until else [])):
            for n in names:
                if n not in STAGES:
                    raise SlmkitError(f"{flag} {n}: no such stage (stages: {', '.join(ORDER)})")
                if n not in self.stages:
                    raise SlmkitError(f"{flag} {n}: the recipe has no '{n}' section")
        chosen = list(self.stages)
        forced = set(force or [])
        if start:
            chosen = chosen[chosen.index(start):]
            forced |= set(chosen)
        if until:
            chosen = [s for s in chosen if ORDER.index(s) <= ORDER.index(until)]
        if only:
            chosen = [s for s in chosen if s in only]
        return chosen, forced

    def execute(self, only=None, start=None, force=None, recipe_file=None, overrides=None,
                console: Console | None = None, until=None) -> dict[str, StageResult]:
        console = console or Console()
        chosen, forced = self.select(only, start, force, until)
        # One process at a time per run directory: a second one would share the stages' .partial folders.
        with lock_run(self.root):
            return self._execute(chosen, forced, recipe_file, overrides, console)

    def _execute(self, chosen: list[str], forced: set[str], recipe_file, overrides, console: Console
                 ) -> dict[str, StageResult]:
        write_manifest(self.root, dump(self.recipe), recipe_file, overrides or [])
        results: dict[str, StageResult] = {}
        for name in self.stages:
            sdir = self.stage_dir(name)
            ups = self.upstream_of(name)
            missing = [u for u in ups if u not in results]
            if missing:
                if name not in chosen:
                    continue
                raise SlmkitError(f"stage '{name}' needs {', '.join(missing)}, which is not done or is stale: "
                                  "run it first (drop --only/--from)")
            upstream = {u: results[u] for u in ups}
            fingerprint = stage_fingerprint(self.recipe, name, upstream)
            done = result_of(name, sdir)
            fresh = done is not None and done.fingerprint == fingerprint
            if name not in chosen:
                # Not selected: usable downstream only if fresh; a selected stage that needs it says so below.
                if fresh:
                    results[name] = done
                continue
            if fresh and name not in forced:
                console.print(f"[green]✓[/] {name}: done, fingerprint matches — skipped")
                results[name] = done
                continue
            resumed = partial_of(sdir).exists()
            console.rule(f"[bold]{name}[/] {'(resuming)' if resumed else ''}")
            section = getattr(self.recipe, name)
            record = {"config": section.model_dump(mode="json"),
                      "upstream": {u: upstream_token(r) for u, r in upstream.items()},
                      "inputs": input_digests(section, self.recipe.model)}
            results[name] = execute_stage(STAGES[name], section, sdir, fingerprint, upstream,
                                          self.root / "cache", record, seed=self.recipe.seed,
                                          base_model=self.recipe.model, console=console)
            console.print(f"[green]✓[/] {name}: finished in {read_json(sdir / 'DONE.json')['seconds']}s")
            release_memory()  # the next stage's peak should not sit on this one's freed pages
        return results


def run_standalone(name: str, config: Any, out: Path, *, seed: int = 0, base_model: str | None = None,
                   force: bool = False, console: Console | None = None) -> StageResult:
    """A stage verb on its own: `out` plays the stage folder, with the same partial/DONE protocol."""
    console = console or Console()
    out = Path(out).resolve()
    stage = STAGES[name]
    inputs = input_digests(config, base_model)
    cfg = {"section": config.model_dump(mode="json"), "model": base_model, "seed": seed}
    fingerprint = fp.fingerprint(name, cfg, {}, inputs)
    with lock_out(out):
        done = result_of(name, out)
        if done and done.fingerprint == fingerprint and not force:
            console.print(f"[green]✓[/] {name}: {out} is already complete for this config — skipped (--force reruns)")
            return done
        from slmkit.pipelines.core.models import cache_root

        return execute_stage(stage, config, out, fingerprint, {}, cache_root() / "cache",
                             {"config": cfg["section"], "inputs": inputs}, seed=seed, base_model=base_model,
                             console=console)
