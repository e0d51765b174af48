"""Progress shows in a log: plain lines when the console is not a terminal, none added on a terminal."""

from __future__ import annotations

import io

from rich.console import Console
from rich.progress import BarColumn, TextColumn

from slmkit.pipelines.core.progress import LoggedProgress


def _run(terminal: bool, every_s: float, steps: int = 4) -> str:
    out = io.StringIO()
    console = Console(file=out, force_terminal=terminal, width=120)
    with LoggedProgress(TextColumn("{task.description}"), BarColumn(), console=console, every_s=every_s,
                        transient=True) as bar:
        task = bar.add_task("distill answers", total=steps, loss="-")
        for i in range(steps):
            bar.update(task, loss=f"{1.0 / (i + 1):.2f}") if i else None
            bar.advance(task)
    return out.getvalue()


def test_a_log_gets_the_first_and_the_finishing_line_and_not_every_step():
    lines = [x for x in _run(terminal=False, every_s=3600).splitlines() if x]
    assert lines[0].startswith("distill answers: 1/4 (25%), ") and "elapsed" in lines[0]
    assert lines[-1].startswith("distill answers: 4/4 (100%), ") and "loss 0.25" in lines[-1]
    assert len([x for x in lines if x.startswith("distill answers")]) == 2  # steps 2 and 3 fall inside the hour


def test_a_log_gets_a_line_per_update_when_the_interval_has_passed():
    lines = [x for x in _run(terminal=False, every_s=0).splitlines() if x.startswith("distill answers")]
    # every update and advance prints: the loss set before each step's advance, then the advance
    assert [x.split(",")[0].split(": ")[1] for x in lines] == ["1/4 (25%)", "1/4 (25%)", "2/4 (50%)", "2/4 (50%)",
                                                               "3/4 (75%)", "3/4 (75%)", "4/4 (100%)"]
    assert "loss 0.50" in lines[1] and "about" in lines[2]


def test_a_terminal_gets_the_bar_only():
    assert "distill answers: " not in _run(terminal=True, every_s=0)
