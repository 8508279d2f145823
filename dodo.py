"""ksbake's build: `doit appliance:NAME` turns configs/NAME.ks into an appliance.

Thin on purpose: configuration, then the task creators from tasks/.
"""

from ksbake.report import run_id
from tasks.appliance import task_appliance  # noqa: F401
from tasks.boottest import task_boottest  # noqa: F401
from tasks.cli import check_command_line
from tasks.common import PATHS, XxhashChecker, interrupt_in_one_line
from tasks.gc import task_gc  # noqa: F401
from tasks.layers import creators
from tasks.repo import task_distro, task_repo  # noqa: F401
from tasks.reporter import Reporter
from tasks.verify import task_verify  # noqa: F401

check_command_line(PATHS)  # a missing configs/ or a mistyped appliance: one line, exit 2
globals().update(creators())  # task_kickstart ... task_publish, one per layer of the chain
interrupt_in_one_line()
PATHS.cache.mkdir(parents=True, exist_ok=True)
run_id()  # one id for this doit run, inherited by its worker processes (summary: "cached")

DOIT_CONFIG = {
    "backend": "sqlite3",
    "dep_file": str(PATHS.doit_db),
    "check_file_uptodate": XxhashChecker,
    "default_tasks": ["appliance"],
    "verbosity": 2,
    "continue": True,  # one failing appliance does not stop the others
    "reporter": Reporter,  # ... and the run ends with a table across appliances
}
