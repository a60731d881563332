"""The soak (make soak, scripts/soak.sh) reuses the end-to-end machinery:
tests/e2e is put on the import path and its conftest's names (the integration
fixtures and the end-of-run report) are taken over."""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "e2e"))

from e2e_support import ic  # noqa: E402

globals().update({k: v for k, v in vars(ic).items() if not k.startswith("__")})


def pytest_terminal_summary(terminalreporter):
    from report import REPORT

    lines = REPORT.lines()
    if lines:
        terminalreporter.section("soak report")
        for line in lines:
            terminalreporter.write_line(line)
