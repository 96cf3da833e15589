"""``epic-bridge check``: the checker, its report and the fixes it suggests."""

from bridge.check.checker import Checker, run_check
from bridge.check.report import FAILING, CheckReport, CheckRow, Status, render

__all__ = ["FAILING", "CheckReport", "CheckRow", "Checker", "Status", "render", "run_check"]
