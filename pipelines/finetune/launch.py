"""finetune across several processes: the entry point `accelerate launch` (or torchrun) runs in every process.

    accelerate launch --multi_gpu --num_processes 2 -m slmkit.pipelines.finetune.launch --config ft.json --out DIR

(`--multi_gpu` also serves CPU-only machines: it is the torchrun launcher, and without CUDA the processes
talk over gloo. `--cpu` with several processes starts one process only.)

Every process trains its shard of each batch (DDP; gradients all-reduced, gloo on the CPU, NCCL on GPUs);
rank 0 alone writes checkpoints, metrics and the adapter into DIR, and `outcome.json` once it is done.
The finetune stage uses this itself when `processes > 1`: it launches the workers and waits, so the run
directory still sees one stage attempt with one DONE marker.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from slmkit.pipelines.core.errors import SlmkitError

OUTCOME = "outcome.json"


def launch_command(config_dump: dict, machine_rank: int, spec: Path, out: Path, state: Path, seed: int) -> list[str]:
    """The argv that starts this finetune's workers on machine `machine_rank` (pure: prints or runs as is)."""
    machines = int(config_dump.get("machines", 1))
    # `--multi_gpu` is accelerate's torchrun launcher; without CUDA it runs CPU processes over gloo.
    # (`--cpu` with several processes would silently start one process only.) num_processes is the total.
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
           "--num_processes", str(int(config_dump["processes"]) * machines), "--num_machines", str(machines)]
    if machines > 1:
        cmd += ["--machine_rank", str(machine_rank), "--main_process_ip", str(config_dump["main_address"]),
                "--main_process_port", str(config_dump["main_port"])]
    cmd += ["--mixed_precision", "no", "--dynamo_backend", "no"]
    return cmd + ["-m", "slmkit.pipelines.finetune.launch", "--config", str(spec), "--out", str(out),
                  "--state", str(state), "--seed", str(seed)]


def write_spec(config_dump: dict, state: Path) -> Path:
    """The workers' config: one process's view, the same file on every machine (so a shared state folder
    holds one), written atomically because several machines may write it at once."""
    spec = state / "launch-config.json"
    worker = {**config_dump, "processes": 1, "machines": 1, "machine_rank": 0}
    tmp = spec.with_name(f".{spec.name}.{os.getpid()}")
    tmp.write_text(json.dumps(worker, indent=2, default=str))
    os.replace(tmp, spec)
    return spec


def launch(config_dump: dict, out: Path, state: Path, processes: int, seed: int, console) -> dict:
    """Run this machine's workers with accelerate; return rank 0's outcome (outputs and metrics) on machine 0,
    and nothing elsewhere: other machines write no outputs."""
    import torch

    rank = int(config_dump.get("machine_rank") or 0)
    spec = write_spec(config_dump, state)
    if rank == 0:
        (out / OUTCOME).unlink(missing_ok=True)
    cmd = launch_command(config_dump, rank, spec, out, state, seed)
    where = f"machine {rank} of {config_dump.get('machines', 1)}: " if int(config_dump.get("machines", 1)) > 1 else ""
    console.print(f"finetune: {where}launching {processes} processes "
                  f"({'GPU' if torch.cuda.is_available() else 'CPU, gloo'})")
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    res = subprocess.run(cmd, env=env)
    if res.returncode != 0 or (rank == 0 and not (out / OUTCOME).exists()):
        raise SlmkitError(f"finetune: the {processes} training processes failed (exit {res.returncode}); "
                          "see the output above")
    if rank != 0:
        return {"outputs": {}, "metrics": {}}
    return json.loads((out / OUTCOME).read_text())


def main(argv: list[str] | None = None) -> None:
    from rich.console import Console

    from slmkit.pipelines.core.rundir import write_json
    from slmkit.pipelines.core.stage import StageContext
    from slmkit.pipelines.finetune import FinetuneConfig, train

    ap = argparse.ArgumentParser(description="one finetune worker (run under accelerate launch or torchrun)")
    ap.add_argument("--config", type=Path, required=True, help="finetune config as JSON (a recipe's section)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--state", type=Path, default=None, help="checkpoint folder (default: OUT/.state)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    config = FinetuneConfig.model_validate(json.loads(args.config.read_text()),
                                           context={"base_dir": args.config.parent})
    out = args.out.resolve()
    state = (args.state or out / ".state").resolve()
    state.mkdir(parents=True, exist_ok=True)
    rank = int(os.environ.get("RANK", "0"))
    ctx = StageContext(stage="finetune", out=out, state=state, cache=state / "cache", upstream={},
                       fingerprint="launch", seed=args.seed, console=Console(quiet=rank != 0))
    outcome = train(config, ctx)
    if rank == 0:
        write_json(out / OUTCOME, {"outputs": outcome.outputs, "metrics": outcome.metrics})


if __name__ == "__main__":
    main(sys.argv[1:])
