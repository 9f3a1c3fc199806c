"""The worker process (what :func:`engine.worker.start_worker` runs): :func:`engine.runner.main`
with :func:`engine.present.report.report_keeper` among its listeners, so that the session's
report.md, where there is one, states the run's status as it changes (running when the run
starts, done / failed / interrupted when it ends). The runner cannot import the report (it
sits below it); this module, above both, joins them.

    python -m engine.present.worker_main [--device D] SESSION
"""

from __future__ import annotations

import sys

from ..runner import main as run_main
from .report import report_keeper


def main(argv: list[str] | None = None) -> int:
    return run_main(argv, listeners_for=lambda path: [report_keeper(path)])


if __name__ == "__main__":
    sys.exit(main())
