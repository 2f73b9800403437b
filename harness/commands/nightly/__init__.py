"""`harness nightly`: run job specs, keep a metric history, flag moves against a baseline by rules.

`harness nightly jobs/nightly.yaml` runs every job of the suite, appends each metric row to one history
parquet, compares each metric with the baseline (a pinned run, or the rolling median of the last runs),
and writes `nightly_report.md` / `nightly_report.html`. Exit 1 when anything regressed.

How a metric is judged (first matching rule wins; the suite's own rules come before the defaults):

- `absolute`: it moved when `|new - base| > tolerance`;
- `relative`: it moved when `|new - base| > tolerance * |base|`;
- `ci`: it moved when `new` falls outside the baseline's bootstrap interval `[ci_low - tolerance,
  ci_high + tolerance]` (metrics without an interval fall back to `absolute`).

A move is a regression or an improvement by the rule's direction (`higher_is_better`: a drop is a
regression; `lower_is_better`: a rise is; `both`: any move is). A metric the baseline has and the new
run lacks (or reports as NaN) is a regression; a metric without a baseline is `new` and never flagged.
"""

from harness.commands.nightly.history import (
    DEFAULT_HISTORY,
    HISTORY_COLUMNS,
    KEYS,
    append_history,
    baseline_frame,
    read_history,
    run_order,
)
from harness.commands.nightly.judge import STATUS_ORDER, compare, find_rule, is_flagged, judge
from harness.commands.nightly.report import trend_figures, write_nightly_report
from harness.commands.nightly.run import SuiteResult, job_rows, new_run_id, run_suite
from harness.commands.nightly.spec import (
    BaselineSpec,
    Rule,
    SuiteJob,
    SuiteSpec,
    default_rules,
    load_suite,
    resolve_jobs,
    validate_suite,
)

__all__ = [
    "DEFAULT_HISTORY", "HISTORY_COLUMNS", "KEYS", "STATUS_ORDER", "BaselineSpec", "Rule", "SuiteJob", "SuiteResult",
    "SuiteSpec", "append_history", "baseline_frame", "compare", "default_rules", "find_rule", "is_flagged", "job_rows",
    "judge", "load_suite", "new_run_id", "read_history", "resolve_jobs", "run_order", "run_suite", "trend_figures",
    "validate_suite", "write_nightly_report",
]
