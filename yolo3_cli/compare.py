"""Evaluation reports (``yolo3 evaluate --json``) side by side, against the first.

    yolo3 compare A.json B.json [...]
"""

from __future__ import annotations

from pathlib import Path

HELP = "compare evaluation reports (evaluate --json) side by side"


def configure(parser) -> None:
    parser.add_argument("reports", nargs="+", help="JSON reports; the first is the baseline")


def run(args) -> int:
    from yolo3.reporting import comparison_table, read_evaluation_report

    reports = []
    for path in args.reports:
        r = read_evaluation_report(path)
        reports.append((Path(str(r.get("model", path))).name, r))
    print(comparison_table(reports))
    return 0
