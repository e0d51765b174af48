"""Keys go only where an endpoint's own config sends them, and never into a file or a message.

A loopback endpoint in the test notes the Authorization header of every request, so a test sees exactly what
was sent: a bench target or a distill teacher without `api_key_env` sends none (even with OPENAI_API_KEY set),
one with it sends that variable's value. A key pasted into `api_key_env` or a URL with user:password@ is a
recipe error that names the recipe key and never quotes the value; a named variable that is unset stops the
stage before any request (a warning only when the endpoint is on loopback).
"""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ScriptEndpoint
from pydantic import ValidationError
from rich.console import Console

from slmkit.pipelines import bench
from slmkit.pipelines.bench.targets import BenchClient, TargetConfig
from slmkit.pipelines.core import secrets
from slmkit.pipelines.core.errors import RecipeError, SlmkitError
from slmkit.pipelines.core.recipe import load_recipe
from slmkit.pipelines.core.stage import StageContext
from slmkit.pipelines.distill.teachers import TeacherConfig, make_teacher, parse_spec

DEFAULT_KEY = "sk-default-OPENAI-must-not-travel-111"  # in OPENAI_API_KEY for every test here
NAMED_KEY = "named-key-value-222"
PASTED = "sk-abc123PastedKeyValue9876543210"  # what a user pastes into api_key_env by mistake
URL_SECRET = "hunter2PW"


def _answer(body: dict) -> tuple:
    """"ok", streamed for `stream: true` (bench), as one JSON body otherwise (distill)."""
    if body.get("stream"):
        return ("sse", [{"choices": [{"index": 0, "delta": {"content": "ok"}, "finish_reason": "stop"}]},
                        {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1}}, "[DONE]"])
    return (200, {}, {"choices": [{"message": {"role": "assistant", "content": "ok"}}],
                      "usage": {"prompt_tokens": 3, "completion_tokens": 1}})


class Endpoint(ScriptEndpoint):
    """An OpenAI-compatible endpoint on 127.0.0.1 that answers "ok"; `auth` holds the Authorization header of each
    request (None when there was none), `headers` all of them."""

    def __init__(self):
        super().__init__(_answer)

    @property
    def auth(self) -> list[str | None]:
        return [r["headers"].get("authorization") for r in self.seen]

    @property
    def headers(self) -> list[dict[str, str]]:
        return [r["headers"] for r in self.seen]


@pytest.fixture
def endpoint(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", DEFAULT_KEY)
    monkeypatch.setenv("SLMKIT_TEST_NAMED_KEY", NAMED_KEY)
    monkeypatch.delenv("SLMKIT_TEST_UNSET_KEY", raising=False)
    with Endpoint() as ep:
        yield ep


def _bench_requests(spec: TargetConfig, n: int = 2) -> None:
    with bench.ready(spec, None) as (target, _facts):
        backend = BenchClient(target)
        try:
            for _ in range(n):
                assert backend.request("hello", 4, []).text == "ok"
        finally:
            backend.close()


def _ask_teacher(cfg: TeacherConfig, n: int = 2) -> None:
    teacher = make_teacher(cfg)
    try:
        for _ in range(n):
            assert teacher.ask([{"role": "user", "content": "hello"}], {"max_tokens": 4}).text == "ok"
    finally:
        teacher.close()


# ---------------------------------------------------------------- no key unless the config names one


def test_bench_target_without_api_key_env_sends_no_authorization(endpoint):
    _bench_requests(TargetConfig.model_validate({"kind": "openai", "model": "m", "base_url": endpoint.url}))
    _bench_requests(TargetConfig.model_validate(f"openai:m@{endpoint.url}"))  # the shorthand sends none either
    assert endpoint.auth == [None] * 4
    # The control: a target that names its variable sends exactly that variable's value.
    _bench_requests(TargetConfig.model_validate({"kind": "openai", "model": "m", "base_url": endpoint.url,
                                                 "api_key_env": "SLMKIT_TEST_NAMED_KEY"}), n=1)
    assert endpoint.auth[4:] == [f"Bearer {NAMED_KEY}"]
    assert not any(DEFAULT_KEY in (a or "") for a in endpoint.auth)


def test_the_sdks_own_credential_variables_reach_no_endpoint(endpoint, monkeypatch):
    """The openai SDK reads OPENAI_API_KEY, OPENAI_ORG_ID and OPENAI_PROJECT_ID when it is given none: a recipe's
    endpoint must get none of them, with a key of its own or without, from a teacher or a bench target."""
    canaries = {"OPENAI_ORG_ID": "org-canary7", "OPENAI_PROJECT_ID": "proj-canary7",
                "OPENAI_ADMIN_KEY": "admin-canary7", "OPENAI_BASE_URL": "http://canary7.invalid/v1"}
    for name, value in canaries.items():
        monkeypatch.setenv(name, value)
    _bench_requests(TargetConfig.model_validate(f"openai:m@{endpoint.url}"), n=1)
    _ask_teacher(parse_spec(f"openai:m@{endpoint.url}"), n=1)
    _ask_teacher(TeacherConfig.model_validate({"kind": "openai", "model": "m", "base_url": endpoint.url,
                                               "api_key_env": "SLMKIT_TEST_NAMED_KEY"}), n=1)
    assert len(endpoint.headers) == 3  # every request reached this endpoint, none went to OPENAI_BASE_URL
    sent = json.dumps(endpoint.headers)
    assert not any(v in sent for v in [*canaries.values(), DEFAULT_KEY]), endpoint.headers
    assert endpoint.auth == [None, None, f"Bearer {NAMED_KEY}"]


def test_distill_shorthand_sends_no_key(endpoint):
    cfg = parse_spec(f"openai:m@{endpoint.url}")
    assert cfg.api_key_env is None
    _ask_teacher(cfg)
    assert endpoint.auth == [None, None]
    named = TeacherConfig(kind="openai", model="m", base_url=endpoint.url, api_key_env="SLMKIT_TEST_NAMED_KEY",
                          retries=0)
    _ask_teacher(named, n=1)
    assert endpoint.auth[2:] == [f"Bearer {NAMED_KEY}"]


# ---------------------------------------------------------------- a key in the recipe is an error, never echoed


def _recipe(tmp_path: Path, text: str) -> Path:
    (tmp_path / "eval.jsonl").write_text('{"id": "a", "prompt": "hi", "answer": "ok"}\n')
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


LEAKY = f"""name: leaky
distill:
  teacher: {{kind: openai, model: m, base_url: "https://api.example.com/v1", api_key_env: {PASTED}}}
bench:
  task: {{data: eval.jsonl}}
  targets:
    - {{kind: openai, model: a, base_url: "http://127.0.0.1:9/v1", api_key_env: OPENAI_API_KEY}}
    - "openai:b@https://user:{URL_SECRET}@api.example.com/v1"
    - {{kind: openai, model: c, base_url: "http://127.0.0.1:9/v1", api_key_env: {PASTED}}}
    - {{kind: openai, model: d, base_url: "https://api.example.com/v1?api_key={URL_SECRET}"}}
"""


def test_key_in_recipe_is_an_error_naming_the_key_not_the_value(tmp_path):
    with pytest.raises(RecipeError) as err:
        load_recipe(_recipe(tmp_path, LEAKY))
    text = str(err.value)
    assert "distill.teacher.api_key_env" in text and "bench.targets.2.api_key_env" in text
    assert "bench.targets.1.base_url" in text and "bench.targets.3.base_url" in text
    assert "bench.targets.0" not in text  # a variable *name* is fine
    assert "looks like a key" in text and "credentials" in text
    assert "sk-abc" not in text and PASTED not in text and URL_SECRET not in text


def _slmkit(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "slmkit", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=300)


def test_validate_and_run_never_write_or_print_the_key(tmp_path):
    recipe = _recipe(tmp_path, LEAKY)
    runs = tmp_path / "runs"
    for args in (["validate", str(recipe)], ["run", str(recipe), "--runs-dir", str(runs)]):
        res = _slmkit(*args, cwd=tmp_path)
        said = res.stdout + res.stderr
        assert res.returncode == 2, said
        assert "api_key_env" in said and "sk-abc" not in said and URL_SECRET not in said
    # Refused at validation: no manifest.json, no DONE.json, no report exists to hold anything.
    assert not runs.exists() or not any(p.is_file() for p in runs.rglob("*"))


@pytest.mark.parametrize("spec", [
    {"kind": "openai", "model": "m", "base_url": "http://127.0.0.1:1/v1", "api_key_env": PASTED},
    {"kind": "openai", "model": "m", "base_url": "http://127.0.0.1:1/v1", "api_key_env": "my key"},
    {"kind": "openai", "model": "m", "base_url": f"https://user:{URL_SECRET}@api.example.com/v1"},
    {"kind": "openai", "model": "m", "base_url": f"https://{URL_SECRET}@api.example.com/v1"},
    f"openai:m@https://user:{URL_SECRET}@api.example.com/v1",
])
def test_raw_validation_errors_hide_the_value(spec):
    """Even pydantic's own error text (a traceback, a log) leaves the value out."""
    for model in (TargetConfig, TeacherConfig):
        if isinstance(spec, str) and model is TeacherConfig:
            with pytest.raises(SlmkitError) as err:
                parse_spec(spec)
        else:
            with pytest.raises(ValidationError) as err:
                model.model_validate(spec)
        assert URL_SECRET not in str(err.value) and "sk-abc" not in str(err.value)


def test_distill_shorthand_with_credentials_is_a_recipe_error(tmp_path):
    recipe = _recipe(tmp_path, f'name: x\ndistill:\n  teacher: "openai:m@https://u:{URL_SECRET}@h.example/v1"\n')
    with pytest.raises(RecipeError) as err:
        load_recipe(recipe)
    assert "distill.teacher" in str(err.value) and URL_SECRET not in str(err.value)


def test_env_name_rules():
    for ok in ("OPENAI_API_KEY", "HF_TOKEN", "_K", "my_key_2", "GROQ_API_KEY"):
        assert secrets.valid_env_name(ok), ok
    for bad in ("sk-abc123", "sk_live_abc", "hf_AbCdEfGhIjKlMnOp", "ghp_abcdefghij", "1KEY", "MY KEY", "A-B",
                "", "AbCdEf0123456789GhIjKlMn"):
        assert not secrets.valid_env_name(bad), bad
    assert secrets.url_has_credentials("https://u:p@h/v1") and secrets.url_has_credentials("https://h/v1?key=x")
    assert not secrets.url_has_credentials("https://api.openai.com/v1")
    text = secrets.scrub(f"see https://u:{URL_SECRET}@h/v1 and {PASTED}")
    assert URL_SECRET not in text and "sk-abc" not in text and "https://***@h/v1" in text
    assert URL_SECRET not in secrets.redact_url(f"https://h/v1?api_key={URL_SECRET}&x=1")


# ---------------------------------------------------------------- a named variable that is unset


def test_unset_variable_stops_bench_before_any_request(endpoint, tmp_path):
    # 0.0.0.0 reaches this machine's listener too, but is not a loopback address: unset key, remote rules.
    remote = f"http://0.0.0.0:{endpoint.port}/v1"
    (tmp_path / "eval.jsonl").write_text('{"id": "a", "prompt": "hi", "answer": "ok"}\n')
    config = bench.BenchConfig.model_validate({
        "targets": [{"kind": "openai", "model": "m", "base_url": remote, "api_key_env": "SLMKIT_TEST_UNSET_KEY"}],
        "task": {"data": str(tmp_path / "eval.jsonl"), "metric": "exact_match", "max_tokens": 4}, "warmup": 0})
    out = tmp_path / "out"
    (out / ".state").mkdir(parents=True)
    ctx = StageContext(stage="bench", out=out, state=out / ".state", cache=tmp_path / "cache", upstream={},
                       fingerprint="x", console=Console(file=io.StringIO()))
    with pytest.raises(SlmkitError, match=r"bench\.targets\.0\.api_key_env: .*SLMKIT_TEST_UNSET_KEY.*not set"):
        bench.run(config, ctx)
    assert endpoint.auth == []  # nothing was sent


def test_unset_variable_stops_distill_teacher(endpoint):
    cfg = TeacherConfig(kind="openai", model="m", base_url=f"http://0.0.0.0:{endpoint.port}/v1",
                        api_key_env="SLMKIT_TEST_UNSET_KEY")
    with pytest.raises(SlmkitError, match=r"distill\.teacher\.api_key_env: .*SLMKIT_TEST_UNSET_KEY.*not set"):
        make_teacher(cfg)
    assert endpoint.auth == []


def test_unset_variable_on_loopback_is_a_warning(endpoint, caplog):
    cfg = TeacherConfig(kind="openai", model="m", base_url=endpoint.url, api_key_env="SLMKIT_TEST_UNSET_KEY")
    with caplog.at_level(logging.WARNING, logger="slmkit"):
        _ask_teacher(cfg, n=1)
        _bench_requests(TargetConfig.model_validate({"kind": "openai", "model": "m", "base_url": endpoint.url,
                                                     "api_key_env": "SLMKIT_TEST_UNSET_KEY"}), n=1)
    assert endpoint.auth == [None, None]
    assert "SLMKIT_TEST_UNSET_KEY" in caplog.text and "not set" in caplog.text
    assert secrets.is_loopback("http://localhost:8080/v1") and secrets.is_loopback("http://[::1]:1/v1")
    assert secrets.is_loopback("http://127.3.4.5/v1") and not secrets.is_loopback("https://api.openai.com/v1")
