#!/usr/bin/env bash
# `make mutation`: mutmut 3 over the modules listed in pyproject.toml [tool.mutmut], then
# a score per module (scripts/mutation_report.py). Takes tens of minutes on two cores.
# Usage: mutation.sh [JOBS]   (MUTATION_MIN=90 sets the pass mark, in percent killed)
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=${1:-2}
.venv/bin/python -m pip install -q -e ".[test,metrics,journald,mutation]"
rm -rf mutants  # a fresh copy of the sources and tests every time
.venv/bin/mutmut run --max-children "$jobs" >mutants.log 2>&1 || {
    tail -n 40 mutants.log >&2
    exit 1
}
.venv/bin/mutmut results --all true >mutants/results.txt
exec .venv/bin/python scripts/mutation_report.py mutants/results.txt --min "${MUTATION_MIN:-90}"
