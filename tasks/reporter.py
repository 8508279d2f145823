"""doit's console output, plus one table across appliances when a run builds several.

With ``continue`` on (dodo.py), `doit appliance` builds every appliance it can; this
reporter remembers each failure's one-line reason (what ``ksbake: error:`` said) and ends
the run with: appliance, built / unchanged / failed, and why. doit's exit status stays
non-zero when anything failed.
"""

from __future__ import annotations

import json
from typing import Any

from doit.reporter import ConsoleReporter

from ksbake.report import run_id
from tasks.common import PATHS, SHOWN


class Reporter(ConsoleReporter):
    desc = "ksbake: console output and a summary across appliances"

    def __init__(self, outstream: Any, options: dict[str, Any]) -> None:
        super().__init__(outstream, options)
        self.appliances: list[str] = []
        self.reasons: dict[str, str] = {}

    def initialize(self, tasks: dict[str, Any], selected_tasks: list[str]) -> None:
        names = set()
        for selected in selected_tasks or ["appliance"]:
            if selected == "appliance":  # the group: every appliance
                names |= {t.split(":", 1)[1] for t in tasks if t.startswith("appliance:")}
            elif selected.startswith("appliance:"):
                names.add(selected.split(":", 1)[1])
        self.appliances = sorted(names)

    def add_failure(self, task: Any, fail: Any) -> None:
        name = task.name.partition(":")[2]
        message = fail.get_msg().strip()
        if message.startswith(SHOWN):  # said above as "ksbake: error: ...": the reason
            reason = message[len(SHOWN) :].strip()
            self.reasons.setdefault(name, reason)
            self.write(
                f"{fail.get_name()} - taskid:{task.name} (the error is shown above; "
                "KSBAKE_DEBUG=1 for a traceback)\n"
            )
            self.failures.append({"task": task, "exception": fail})
            return
        if fail.get_name() != "UnmetDependency":
            first = message.splitlines()[-1] if message else fail.get_name()
            self.reasons.setdefault(name, f"{task.name}: {first}")
        super().add_failure(task, fail)

    def complete_run(self) -> None:
        super().complete_run()
        if len(self.appliances) > 1:
            self.write(summary_table(self.appliances, self.reasons) + "\n")


def summary_table(appliances: list[str], reasons: dict[str, str]) -> str:
    """One row per appliance: failed (and why), built (a layer was built this run), or
    unchanged."""
    built: set[str] = set()
    if PATHS.events.exists():
        run = run_id()
        for line in PATHS.events.read_text().splitlines():
            event = json.loads(line)
            if event.get("run") == run and event.get("built"):
                built.add(event["appliance"])
    width = max(len("appliance"), *(len(a) for a in appliances))
    rows = [f"{'appliance':<{width}}  result     reason"]
    for name in appliances:
        if name in reasons:
            rows.append(f"{name:<{width}}  failed     {reasons[name]}")
        else:
            rows.append(f"{name:<{width}}  {'built' if name in built else 'unchanged'}")
    failed = sum(1 for name in appliances if name in reasons)
    rows.append(f"{len(appliances)} appliances: {failed} failed")
    return "\n".join(rows)
