"""The mutation score per module, from `mutmut results --all true` output.

Modules are the files `[tool.mutmut] only_mutate` lists in pyproject.toml (the one place
the list lives). Mutants judged equivalent (no test can tell them apart from the original:
see scripts/mutation-equivalent.txt, one `name  # why` a line) are left out of the score
and listed. Exits 1 when the overall score is under --min percent.

Usage: python scripts/mutation_report.py RESULTS [--min 90]
"""

from __future__ import annotations

import argparse
import fnmatch
import sys
import tomllib
from collections import Counter, defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EQUIVALENT_FILE = REPO / "scripts" / "mutation-equivalent.txt"
# mutmut 3 statuses: detected ones count as killed; the rest are not.
KILLED = {"killed", "timeout", "segfault", "caught by type check"}
NOT_KILLED = {"survived", "no tests", "suspicious"}


def module_globs() -> list[str]:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["mutmut"]
    return list(config["only_mutate"])


def module_of(mutant: str) -> str:
    """`pi_daemon.sinks.base.xǁSinkDispatcherǁsubmit__mutmut_3` -> `pi_daemon.sinks.base`."""
    return mutant.split(".x", 1)[0] if ".x" in mutant else mutant.rsplit(".", 1)[0]


def read_equivalents() -> dict[str, str]:
    found: dict[str, str] = {}
    if EQUIVALENT_FILE.exists():
        for line in EQUIVALENT_FILE.read_text().splitlines():
            name, _, why = line.partition("#")
            if name.strip():
                found[name.strip()] = why.strip()
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--min", type=float, default=90.0, help="pass mark, percent killed")
    args = parser.parse_args(argv)

    statuses: dict[str, str] = {}
    for line in args.results.read_text().splitlines():
        name, sep, status = line.strip().rpartition(": ")
        if sep:
            statuses[name] = status.strip()
    globs = module_globs()
    equivalents = read_equivalents()
    by_module: dict[str, Counter[str]] = defaultdict(Counter)
    unchecked = []
    misjudged: list[str] = []
    for name, status in statuses.items():
        module = module_of(name)
        path = module.replace(".", "/") + ".py"
        if not any(fnmatch.fnmatch(path, pattern) for pattern in globs):
            continue
        if status in KILLED:
            by_module[module]["killed"] += 1
            if name in equivalents:
                misjudged.append(name)  # a test tells it apart after all
        elif name in equivalents:
            by_module[module]["equivalent"] += 1
        elif status in NOT_KILLED:
            by_module[module]["survived"] += 1
        else:
            unchecked.append(f"{name}: {status}")

    print(f"{'module':32} {'mutants':>8} {'killed':>7} {'survived':>9} {'equiv.':>7} {'score':>7}")
    totals: Counter[str] = Counter()
    for module in sorted(by_module):
        counts = by_module[module]
        totals.update(counts)
        print(_row(module, counts))
    print(_row("all", totals))
    raw = totals["killed"] + totals["survived"] + totals["equivalent"]
    print(f"{'all, equivalents as survivors':32} {raw:>8} {totals['killed']:>7}", end="")
    print(f" {'':>9} {'':>7} {100.0 * totals['killed'] / raw if raw else 100.0:>6.1f}%")
    if misjudged:
        print(f"\n{len(misjudged)} listed as equivalent but killed (drop them from the list):")
        print("\n".join(f"  {name}" for name in misjudged))
    stale = sorted(set(equivalents) - set(statuses))
    if stale:
        print(f"\n{len(stale)} names in {EQUIVALENT_FILE.name} match no mutant now (stale):")
        print("\n".join(f"  {name}" for name in stale))
    if unchecked:
        print(f"\n{len(unchecked)} mutants not checked (interrupted?):", file=sys.stderr)
        print("\n".join(f"  {line}" for line in unchecked[:20]), file=sys.stderr)
        return 1
    score = _score(totals)
    if score < args.min:
        print(f"\nmutation score {score:.1f}% is under {args.min:g}%", file=sys.stderr)
        return 1
    return 0


def _score(counts: Counter[str]) -> float:
    judged = counts["killed"] + counts["survived"]
    return 100.0 * counts["killed"] / judged if judged else 100.0


def _row(module: str, counts: Counter[str]) -> str:
    total = counts["killed"] + counts["survived"] + counts["equivalent"]
    return (
        f"{module:32} {total:>8} {counts['killed']:>7} {counts['survived']:>9} "
        f"{counts['equivalent']:>7} {_score(counts):>6.1f}%"
    )


if __name__ == "__main__":
    sys.exit(main())
