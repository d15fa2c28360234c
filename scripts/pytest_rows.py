"""pytest plugin of the GPU kit (scripts/gpu_check.sh): ``--rows PATH`` appends one JSON line per
test to PATH the moment the test finishes, so a run ended by its time limit still reports every
test it finished (pytest's own summary comes only at the end).

    python -m pytest -p pytest_rows --rows rows.jsonl tests/test_gpu.py   # scripts/ on PYTHONPATH

Each line: ``test`` (node id), ``outcome`` (passed | failed | skipped), ``phase`` (call, or setup
where a test was skipped or failed before running), ``seconds``, ``message`` (the skip reason or the
end of the failure report, else empty).
"""

from __future__ import annotations

import json
from typing import IO

_sink: IO[str] | None = None


def pytest_addoption(parser) -> None:
    parser.addoption("--rows", default=None, metavar="PATH", help="append one JSON line per finished test to PATH")


def pytest_configure(config) -> None:
    global _sink
    path = config.getoption("--rows")
    if path:
        _sink = open(path, "a")


def pytest_unconfigure(config) -> None:
    if _sink is not None:
        _sink.close()


def pytest_runtest_logreport(report) -> None:
    # A test's verdict is its call phase, or the setup phase when it never got to run; a failing
    # teardown is worth its own row.
    if _sink is None or not (report.when == "call" or (report.when == "setup" and not report.passed) or report.failed):
        return
    if report.skipped and isinstance(report.longrepr, tuple):
        message = report.longrepr[2].removeprefix("Skipped: ")  # (file, line, "Skipped: reason")
    else:
        message = report.longreprtext[-2000:] if report.failed else ""
    row = dict(test=report.nodeid, outcome=report.outcome, phase=report.when, seconds=round(report.duration, 3), message=message)
    _sink.write(json.dumps(row) + "\n")
    _sink.flush()
