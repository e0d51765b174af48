"""finetune across processes and machines: the rendered launch commands, the config checks, and DDP runs that
match a single process (gloo on the CPU; each "machine" here is a launch on loopback)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from test_finetune import config, losses, make_ctx, write_data

from slmkit.pipelines.finetune import FinetuneConfig, launch, run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_rendered_command_for_machine_one_of_two(tmp_path):
    cfg = FinetuneConfig(processes=4, machines=2, machine_rank=1, main_address="10.0.0.5", main_port=29411)
    cmd = launch.launch_command(cfg.model_dump(mode="json"), 1, tmp_path / "c.json", tmp_path, tmp_path / "s", 7)
    opt = {cmd[i]: cmd[i + 1] for i in range(len(cmd) - 1) if cmd[i].startswith("--")}
    assert opt["--num_machines"] == "2" and opt["--machine_rank"] == "1"
    assert opt["--main_process_ip"] == "10.0.0.5" and opt["--main_process_port"] == "29411"
    assert opt["--num_processes"] == "8"  # accelerate counts every machine's processes
    assert cmd[cmd.index("-m", 3) + 1] == "slmkit.pipelines.finetune.launch"


def test_single_machine_command_has_no_rendezvous(tmp_path):
    cmd = launch.launch_command(FinetuneConfig(processes=2).model_dump(mode="json"), 0, tmp_path / "c", tmp_path,
                                tmp_path, 0)
    assert "--main_process_ip" not in cmd and cmd[cmd.index("--num_machines") + 1] == "1"


def test_machine_keys_are_checked_and_named(monkeypatch):
    for name in ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "GROUP_RANK", "SLURM_NODEID", "RANK"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match="finetune.main_address"):
        FinetuneConfig(machines=2)
    with pytest.raises(ValueError, match="finetune.machine_rank: 2 must be < finetune.machines"):
        FinetuneConfig(machines=2, machine_rank=2, main_address="h")
    monkeypatch.setenv("RANK", "3")  # a stray RANK does not touch a single-machine run
    assert FinetuneConfig().machine_rank == 0
    monkeypatch.setenv("SLURM_NODEID", "1")
    monkeypatch.setenv("MASTER_ADDR", "node0")
    monkeypatch.setenv("MASTER_PORT", "1234")
    cfg = FinetuneConfig(machines=2)
    assert (cfg.machine_rank, cfg.main_address, cfg.main_port) == (1, "node0", 1234)


def test_print_launch_prints_one_command_per_machine(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from slmkit.cli.app import app

    monkeypatch.chdir(tmp_path)
    data = write_data(tmp_path / "d.jsonl", 4)
    res = CliRunner().invoke(app, ["finetune", "--model", "smollm2-135m-instruct", "--data", str(data), "--out", "ft", "--machines", "2",
                                   "--main-address", "127.0.0.1", "--main-port", "29600", "--print-launch"])
    assert res.exit_code == 0, res.output
    lines = [line for line in res.output.splitlines() if "accelerate" in line]
    assert len(lines) == 2
    assert "--machine_rank 0" in lines[0] and "--machine_rank 1" in lines[1]
    assert json.loads((tmp_path / "ft" / ".state" / "launch-config.json").read_text())["machines"] == 1
    assert not (tmp_path / "ft" / "adapter").exists()


def ddp_config(model: Path, data: Path, **kw) -> FinetuneConfig:
    # Dropout off: each process draws its own masks, so only then can 2 processes equal 1 with grad_accum 2.
    base = {"max_steps": 4, "save_every": 2, "eval_fraction": 0.0, "max_length": 40,
            "lora": {"r": 4, "alpha": 8, "dropout": 0.0}}
    return config(model, data, **{**base, **kw})


@pytest.mark.slow  # two launches of 2 gloo workers plus one plain run (about a minute on 2 cores)
def test_two_processes_match_one_with_grad_accum(tiny_model_dir, tmp_path):
    data = write_data(tmp_path / "d.jsonl", 16)
    one = tmp_path / "one"
    run(ddp_config(tiny_model_dir, data, grad_accum=2), make_ctx(one))
    two = tmp_path / "two"
    run(ddp_config(tiny_model_dir, data, processes=2), make_ctx(two))
    a, b = losses(one / "metrics.jsonl"), losses(two / "metrics.jsonl")
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-4), (step, a, b)


def worker_launch(cfg: FinetuneConfig, out: Path, rank: int) -> subprocess.Popen:
    """This machine's launch, as --print-launch renders it, in its own process group (to kill it whole)."""
    state = out / ".state"
    state.mkdir(parents=True, exist_ok=True)
    dump = cfg.model_dump(mode="json")
    cmd = launch.launch_command(dump, rank, launch.write_spec(dump, state), out, state, 3)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


@pytest.mark.slow  # three 2-process launches
def test_sigkilled_two_process_run_resumes_exactly(tiny_model_dir, tmp_path):
    data = write_data(tmp_path / "d.jsonl", 16)
    cfg = ddp_config(tiny_model_dir, data, processes=2, max_steps=12, save_every=3,
                     lora={"r": 4, "alpha": 8, "dropout": 0.1})
    clean = tmp_path / "clean"
    run(cfg, make_ctx(clean))
    out = tmp_path / "killed"
    proc = worker_launch(cfg, out, 0)
    ckpts = out / ".state" / "checkpoints"
    deadline = time.time() + 180
    while proc.poll() is None and time.time() < deadline:
        if any((p / "trainer_state.json").exists() for p in ckpts.glob("checkpoint-*")):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / launch.OUTCOME).exists()
    outcome = run(cfg, make_ctx(out))
    assert outcome.metrics["resumed_from_step"] >= 3
    a, b = losses(clean / "metrics.jsonl"), losses(out / "metrics.jsonl")
    assert sorted(b) == list(range(1, 13))
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-5, abs=1e-6), step


@pytest.mark.slow  # two single-process "machines" rendezvous on loopback
def test_two_machines_on_loopback_match_two_processes(tiny_model_dir, tmp_path):
    data = write_data(tmp_path / "d.jsonl", 16)
    two = tmp_path / "two"
    run(ddp_config(tiny_model_dir, data, processes=2), make_ctx(two))
    cfg = ddp_config(tiny_model_dir, data, machines=2, machine_rank=0, main_address="127.0.0.1",
                     main_port=free_port())
    out = tmp_path / "machines"  # one folder: the state a real cluster shares
    procs = [worker_launch(cfg, out, rank) for rank in (0, 1)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    assert (out / "adapter" / "adapter_model.safetensors").exists()
    a, b = losses(two / "metrics.jsonl"), losses(out / "metrics.jsonl")
    assert sorted(a) == sorted(b)
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-5, abs=1e-6), step
