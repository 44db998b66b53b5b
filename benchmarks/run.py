"""scripts/bench: runs the benchmarks, prints the table and writes it as JSON under bench/results/.

python -m benchmarks.run                  # everything
python -m benchmarks.run --only P1 --repeats 3
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from benchmarks import engine_cost, program_cost
from tests.integration.docker_engine import Engine

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def show(value: Any, seconds: bool) -> str:
    if value is None:
        return ""
    return f"{value:.3f} s" if seconds else f"{int(value):,} B"


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| benchmark | case | project | baseline | ratio | goal | met | peak memory (project / baseline) | notes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        seconds = "program_bytes" not in row
        project = show(row.get("program_s", row.get("program_bytes")), seconds)
        baseline = show(row.get("baseline_s", row.get("baseline_bytes")), seconds)
        ratio = f"{row['ratio']:.2f}x" if "ratio" in row else ""
        met = {True: "yes", False: "**no**", None: ""}[row.get("met")]
        goal = row.get("goal", "")
        memory = ""
        if "program_peak_mib" in row:
            peaks = f"{row['program_peak_mib']:.0f} / {row['baseline_peak_mib']:.0f} MiB"
            memory = f"{peaks} ({row['memory_ratio']:.2f}x)"
        cells = [row["benchmark"], row["case"], project, baseline, ratio, goal, met, memory, row.get("note", "")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench")
    parser.add_argument("--only", default="P1,P2,P3,P4,P5", help="comma-separated: P1,P2,P3,P4,P5")
    parser.add_argument("--repeats", type=int, default=5, help="runs per side; the median is reported")
    parser.add_argument("--sizes", default="1,10,100,1000", help="P1 stack sizes (runners)")
    parser.add_argument(
        "--table", nargs="+", metavar="JSON", help="print the latest figure of each row of earlier results, and stop"
    )
    options = parser.parse_args(argv)
    if options.table:
        # The latest figure of each row, from reports read oldest first.
        reports = sorted((json.loads(Path(name).read_text()) for name in options.table), key=lambda r: r["date"])
        latest: dict[tuple[str, str], dict[str, Any]] = {}
        for report in reports:
            when = f"{report['date']}: {report['cores']} cores, commit {report['commit']}"
            print(f"{when}, {report['repeats']} runs per side")
            latest.update({(row["benchmark"], row["case"]): row for row in report["rows"]})
        print(table(sorted(latest.values(), key=lambda row: str(row["benchmark"])[:2])))
        return 0
    wanted = set(options.only.split(","))
    engines: list[Engine] = []

    def engine() -> Engine:
        """The benchmarks' own Docker engine, started on first use and stopped at the end."""
        if not engines:
            engines.append(cleanup.enter_context(engine_cost.bench_engine(Path(cleanup_dir))))
        return engines[0]

    steps: list[tuple[str, Callable[[Path], list[dict[str, Any]]]]] = [
        ("P1", lambda work: program_cost.run([int(n) for n in options.sizes.split(",")], options.repeats)),
        ("P2", lambda work: engine_cost.time_to_first_poll(engine(), max(3, options.repeats // 2), work)),
        ("P3", lambda work: engine_cost.no_change_docker(engine(), options.repeats, work)),
        ("P3,P5", lambda work: engine_cost.kubernetes_costs(options.repeats, work)),
        ("P4", lambda work: engine_cost.image_size(engine())),
        ("P5", lambda work: engine_cost.fleet_deploy(engine(), work)),
    ]
    rows: list[dict[str, Any]] = []
    # The engine stops (ExitStack) before its folder goes.
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as cleanup_dir, contextlib.ExitStack() as cleanup:
        for names, step in steps:
            if not wanted & set(names.split(",")):
                continue
            # One benchmark that fails is reported as such; the others still run.
            with tempfile.TemporaryDirectory() as folder:
                try:
                    rows += step(Path(folder))
                # pytest's skip and fail (the engine helpers come from the tests) are BaseExceptions.
                except (Exception, pytest.skip.Exception, pytest.fail.Exception) as error:  # in the table
                    print(f"{names} failed: {error}"[-4000:], file=sys.stderr)
                    first = next(
                        (line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__
                    )
                    rows.append({"benchmark": names, "case": f"failed: {first[:200]}", "met": False})
    now = datetime.datetime.now(datetime.UTC)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    report = {
        "date": now.isoformat(timespec="seconds"),
        "cores": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "commit": commit.strip(),
        "repeats": options.repeats,
        "rows": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{now.strftime('%Y-%m-%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"{now:%Y-%m-%d}, {os.cpu_count()} cores, commit {commit.strip()}; medians of {options.repeats} runs per side"
    )
    print(table(rows))
    print(f"written to {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
