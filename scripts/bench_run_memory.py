"""Peak memory of a whole `slmkit run`: the run's process and every process it starts (the loopback teacher,
bench's per-target workers, lm-eval), summed, sampled while it runs, and broken down by stage.

    python scripts/bench_run_memory.py --out bench-results/demo_memory.json -- slmkit run demo --runs-dir /tmp/r

The figure is the sum of PSS (proportional set size) over the process tree at each sample: what the run takes
from the machine at that moment, with pages two processes share (the model files they both map) counted once.
A single process's peak RSS (`/usr/bin/time -v`) misses the servers and workers beside it and counts shared
pages in full. Samples every 0.5 s (--interval); the stage of a sample is the last stage header the run printed.
The run's output goes to this script's stdout as it comes.

A run already going (a CI job, a demo started by hand) can be measured from where it stands instead:

    python scripts/bench_run_memory.py --out demo_memory.json --attach PID --log run.log

samples PID's process tree until PID exits, taking stage headers from the lines appended to run.log after
attaching (its exit code is then unknown: `exit_code` is null).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

from slmkit.pipelines.core.proc_memory import tree_memory

MB = 1e6  # decimal megabytes, as finetune's memory budget and its DONE metrics count them
# `slmkit run` opens each stage with a rule, "──── finetune ────" (or "finetune (resuming)").
STAGE_RULE = re.compile(r"^─+\s+(\w+)\b.*─+$")


class Sampler:
    def __init__(self, root: psutil.Process, interval: float):
        self.root, self.interval = root, interval
        self.stage = "start"
        self.stages: dict[str, dict] = {}
        self.timeline: list[tuple[float, str, float]] = []
        self.peak: dict = {"total_pss_mb": 0.0}
        self.stop = threading.Event()
        self.started = time.monotonic()

    def sample(self) -> None:
        rows = tree_memory(self.root)
        if not rows:
            return
        total = sum(r.pss for r in rows)
        t = time.monotonic() - self.started
        stage = self.stage
        self.timeline.append((round(t, 1), stage, round(total / MB, 1)))
        st = self.stages.setdefault(stage, {"peak_total_pss_mb": 0.0, "processes_at_peak": [], "first_s": t})
        st["last_s"] = t
        if total / MB > st["peak_total_pss_mb"]:
            st["peak_total_pss_mb"] = round(total / MB, 1)
            st["processes_at_peak"] = [{"pid": r.pid, "cmd": r.cmd, "pss_mb": round(r.pss / MB, 1),
                                        "rss_mb": round(r.rss / MB, 1)} for r in rows]
        if total / MB > self.peak["total_pss_mb"]:
            self.peak = {"total_pss_mb": round(total / MB, 1), "stage": stage, "at_s": round(t, 1),
                         "processes": len(rows)}

    def loop(self) -> None:
        while not self.stop.wait(self.interval):
            self.sample()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="JSON file to write")
    ap.add_argument("--interval", type=float, default=0.5, help="seconds between samples")
    ap.add_argument("--goal-mb", type=float, default=2500, help="the peak the run should stay under (reported)")
    ap.add_argument("--attach", type=int, metavar="PID", help="measure this running process's tree instead")
    ap.add_argument("--log", type=Path, help="with --attach: the file the run writes its output to")
    ap.add_argument("command", nargs=argparse.REMAINDER, help="the run to measure, after --")
    args = ap.parse_args()
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    if bool(cmd) == bool(args.attach):
        ap.error("give either the command to measure after --, or --attach PID")
    if args.attach and not args.log:
        ap.error("--attach needs --log, the file the run writes to (its stage headers name the stages)")

    if args.attach:
        root = psutil.Process(args.attach)
        cmd = root.cmdline()
        lines, done = _follow(args.log, root), None
    else:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        root, lines, done = psutil.Process(proc.pid), proc.stdout, proc.wait
    sampler = Sampler(root, args.interval)
    thread = threading.Thread(target=sampler.loop, daemon=True)
    thread.start()
    try:
        for line in lines:
            sys.stdout.write(line)
            sys.stdout.flush()
            m = STAGE_RULE.match(line.strip())
            if m:
                sampler.stage = m.group(1)
    except KeyboardInterrupt:  # Ctrl-C reaches the run too (same process group); wait for it to stop cleanly
        pass
    rc = done() if done else None
    sampler.stop.set()
    thread.join()
    for st in sampler.stages.values():
        st["seconds"] = round(st.pop("last_s") - st.pop("first_s"), 1)
    doc = {"command": cmd, "exit_code": rc, "interval_s": args.interval,
           "seconds": round(time.monotonic() - sampler.started, 1), "goal_mb": args.goal_mb,
           "peak": sampler.peak, "under_goal": sampler.peak["total_pss_mb"] < args.goal_mb,
           "stages": sampler.stages, "timeline": sampler.timeline,
           "machine": {"cpus": psutil.cpu_count(), "memory_total_mb": round(psutil.virtual_memory().total / MB)}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"\npeak {sampler.peak['total_pss_mb']:.0f} MB (sum of PSS over the run's processes) in stage "
          f"{sampler.peak.get('stage')}; per stage: " + ", ".join(
              f"{k} {v['peak_total_pss_mb']:.0f}" for k, v in sampler.stages.items()) + f"  → {args.out}")
    sys.exit(rc)


def _follow(log: Path, proc: psutil.Process):
    """The lines appended to `log` from now on, until `proc` has exited and the file has no more."""
    pending = ""  # a line the run has not finished writing yet
    with log.open(encoding="utf-8", errors="replace") as f:
        f.seek(0, 2)
        while True:
            pending += f.readline()
            if pending.endswith("\n"):
                yield pending
                pending = ""
            elif _alive(proc):
                time.sleep(0.5)
            else:
                if pending:
                    yield pending
                return


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


if __name__ == "__main__":
    main()
