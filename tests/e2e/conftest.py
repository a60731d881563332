"""The end-to-end tests use the integration fixtures (infra, service). pytest
imports both directories' conftest.py as module "conftest", the later one
replacing the earlier in sys.modules, and the integration tests do `from
conftest import ...`: so this module re-exports every name of the integration
conftest (the very same objects, see e2e_support.py); its own addition is the
end-to-end report printed at the end of the run (report.py)."""

from e2e_support import ic

globals().update({k: v for k, v in vars(ic).items() if not k.startswith("__")})


def pytest_terminal_summary(terminalreporter):
    from report import REPORT

    lines = REPORT.lines()
    if lines:
        terminalreporter.section("end-to-end report")
        for line in lines:
            terminalreporter.write_line(line)
