"""``python -m bench``: run every benchmark module, print a table, save JSON.

    python -m bench                    # all benchmarks, default sizes
    python -m bench --only push --small-runs 9 --large-runs 5 --large-mb 50

Results go to ``bench/results/latest.json`` (gitignored), with a markdown table the
README can quote.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import pkgutil
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import bench

RESULTS = Path(__file__).resolve().parent / "results" / "latest.json"


def modules() -> dict[str, Any]:
    found = {}
    for info in pkgutil.iter_modules(bench.__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"bench.{info.name}")
        if hasattr(module, "NAME") and callable(getattr(module, "run", None)):
            found[module.NAME] = module
    return found


def versions() -> dict[str, str]:
    def first_line(*argv: str) -> str:
        out = subprocess.run(argv, capture_output=True, text=True, check=False)
        return (out.stdout or out.stderr).strip().splitlines()[0]

    import asyncssh

    return {"python": sys.version.split()[0], "asyncssh": asyncssh.__version__,
            "git": first_line("git", "--version"), "openssh": first_line("ssh", "-V"),
            "machine": f"{platform.machine()}, {__import__('os').cpu_count()} CPUs"}


def table(rows: list[dict[str, Any]]) -> str:
    headers = ["benchmark", "case", "runs", "crewship", "baseline", "ratio", "goal", "met"]
    cells = [[r["benchmark"], r["case"], str(r["runs"]), _value(r, "crewship_s"),
              _value(r, "baseline_s"), f"{r['ratio']:.2f}x", _goal(r),
              "yes" if r["met"] else "NO"] for r in rows]
    widths = [max(len(row[i]) for row in [headers, *cells]) for i in range(len(headers))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip()
                     for row in [headers, *cells])


def _value(r: dict[str, Any], key: str) -> str:
    """A measured value with its unit: seconds unless the row says otherwise (``unit``)."""
    unit = r.get("unit", "s")
    return f"{r[key]:.3f} s" if unit == "s" else f"{r[key]:.0f} {unit}"


def _goal(r: dict[str, Any]) -> str:
    """A ratio goal, or the row's own (an absolute one: ``<= 1 s``)."""
    return str(r.get("goal_text") or f"<= {r['goal']:.2f}x")


def _md_value(r: dict[str, Any], key: str) -> str:
    unit = r.get("unit", "s")
    return f"{r[key] * 1000:.0f} ms" if unit == "s" else f"{r[key]:.0f} {unit}"


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| case | crewship | baseline | ratio | goal |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['case']} | {_md_value(r, 'crewship_s')} | {_md_value(r, 'baseline_s')} "
              f"({r.get('baseline', 'baseline')}) "
              f"| {r['ratio']:.2f}x | {_goal(r)} |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", help="run only this benchmark (repeatable)")
    parser.add_argument("--small-runs", type=int, default=5)
    parser.add_argument("--large-runs", type=int, default=3)
    parser.add_argument("--large-mb", type=int, default=50)
    parser.add_argument("--deploy-runs", type=int, default=3)
    args = parser.parse_args(argv)
    options = {k: v for k, v in vars(args).items() if k != "only"}

    rows: list[dict[str, Any]] = []
    for name, module in sorted(modules().items()):
        if args.only and name not in args.only:
            continue
        accepted = inspect.signature(module.run).parameters
        print(f"running {name} ...", file=sys.stderr, flush=True)
        rows += module.run(**{k: v for k, v in options.items() if k in accepted})

    print(table(rows))
    print()
    print(markdown(rows))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                   "versions": versions(), "options": options,
                                   "results": rows}, indent=2) + "\n")
    print(f"\nsaved {RESULTS}", file=sys.stderr)
    return 0 if all(r["met"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
