"""pytest plugin for the core tests in the emulated Pi OS root (scripts/pi_check.py loads it).

On an architecture where an extra cannot install without a compiler (pi_check.py has just shown it
cannot), a test, or a test file, that stops because that extra is missing (``ModuleNotFoundError``
for its library, or pictl's own ``MissingExtra`` for it) is reported as skipped, with the reason,
instead of failing or stopping the collection. Only those extras, named in ``PICTL_PI_ABSENT``
("autobahn=wamp,..."); every other error stays an error.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import Any

import pytest

ABSENT = dict(pair.split("=", 1) for pair in os.environ.get("PICTL_PI_ABSENT", "").split(",") if "=" in pair)
ARCH = os.environ.get("PICTL_PI_ARCH", "this architecture")


def _absent(exc: BaseException | None) -> str | None:
    """Why *exc* is expected here, or None: it, or an exception it was raised from, is the absent
    library's ModuleNotFoundError, or pictl's MissingExtra for its extra (a library the extra brings,
    such as autobahn's txaio, was missing)."""
    seen = 0
    while exc is not None and seen < 10:
        library = (getattr(exc, "name", None) or "").split(".")[0] if isinstance(exc, ModuleNotFoundError) else ""
        extra = ABSENT.get(library) or next((e for e in ABSENT.values() if type(exc).__name__ == "MissingExtra"
                                             and f"needs the {e} extra" in str(exc)), None)
        if extra is not None:
            return f"needs pictl[{extra}], which cannot install on {ARCH} without a compiler"
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


def _skipped(report: Any, where: tuple[str, int], reason: str) -> None:
    report.outcome = "skipped"
    report.longrepr = (where[0], where[1], f"Skipped: {reason}")


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Generator[None, Any, None]:
    """A test file whose imports stop on an absent library: skipped, not a collection error."""
    outcome: Any = yield
    report = outcome.get_result()
    if report.failed:
        text = str(report.longrepr)
        for library in ABSENT:
            if f"ModuleNotFoundError: No module named '{library}" in text:
                _skipped(report, (str(collector.path), 1), f"needs pictl[{ABSENT[library]}], which cannot install "
                                                           f"on {ARCH} without a compiler")
                report.result = []


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    """A test that imports an absent library as it runs: skipped, not failed."""
    outcome: Any = yield
    report = outcome.get_result()
    if report.failed and call.excinfo is not None and (reason := _absent(call.excinfo.value)):
        path, line, _ = item.location
        _skipped(report, (path, (line or 0) + 1), reason)
