"""Progress that shows in a log as well as on a terminal.

Rich draws its bars only on a terminal; in a CI log or `slmkit run … > run.log` a bar is invisible, and the log
says nothing for the minutes distill or finetune work. `LoggedProgress` is Rich's Progress, and when its console
is not a terminal it also prints one plain line per task: at its first update, then at most every `every_s`
seconds, and when it finishes ("distill: 120/325 (37%), 2m10s elapsed, about 3m40s left").
"""

from __future__ import annotations

import time

from rich.progress import Progress, TaskID

LOG_EVERY_S = 30.0  # often enough to see a stage is alive, rare enough that a 30-minute stage logs ~60 lines


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class LoggedProgress(Progress):
    def __init__(self, *columns, every_s: float = LOG_EVERY_S, **kwargs) -> None:
        super().__init__(*columns, **kwargs)
        self._plain = not self.console.is_terminal
        self._every_s = every_s
        self._logged: dict[TaskID, float] = {}  # when each task last printed a line
        self._finished: set[TaskID] = set()

    def update(self, task_id: TaskID, **kwargs) -> None:
        super().update(task_id, **kwargs)
        self._log(task_id)

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._log(task_id)

    def line(self, task_id: TaskID) -> str:
        """The plain line for a task: description, count (and share of the total), time, named fields."""
        task = self._tasks[task_id]
        count = f"{task.completed:g}/{task.total:g} ({task.percentage:.0f}%)" if task.total else f"{task.completed:g}"
        parts = [f"{task.description}: {count}", f"{_duration(task.elapsed)} elapsed"]
        if task.total and not task.finished and task.time_remaining is not None:
            parts.append(f"about {_duration(task.time_remaining)} left")
        parts += [f"{k} {v}" for k, v in task.fields.items() if v not in (None, "", "-")]
        return ", ".join(parts)

    def _log(self, task_id: TaskID) -> None:
        if not self._plain or task_id in self._finished:
            return
        task, now = self._tasks[task_id], time.monotonic()
        last = self._logged.get(task_id)
        if task.finished:
            self._finished.add(task_id)
        elif last is not None and now - last < self._every_s:
            return
        self._logged[task_id] = now
        self.console.print(self.line(task_id), highlight=False, markup=False)
