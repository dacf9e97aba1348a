#!/usr/bin/env bash
# Regenerate the screenshots of docs/screenshots/ (shown in the README): a small MoE-vs-dense sweep on the
# project's micro suites in a scratch folder, its report, a real `mlflow server` on a free loopback port, and
# a headless Chromium driven by playwright (shoot.py). The sweep's console output stays in the scratch folder
# (console.txt: the README's example of a run's end comes from it).
#
# Needs: the package with the docs extra (pip install -e ".[docs]" -c constraints.txt) and Chromium
# (apt-get install -y chromium, or CHROMIUM=/path/to/chrome). About 10 minutes on 2 CPU cores (the micro
# suites are built first if they are not cached yet).
#
# Usage: docs/screenshots/make.sh [scratch folder, default: a new temporary one]
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
work=${1:-$(mktemp -d -t gated_lpi_screens.XXXXXX)}
mkdir -p "$work"
cd "$work"
echo "working in $work"

python -m gated_lpi_exp -m model=micro_moe,micro_dense relations=factual >console.txt 2>console.log
python -m gated_lpi_exp.report --out report >>console.txt 2>>console.log

port=$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# One worker, no background job runner: the UI needs neither, and the machine may be shared.
MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false setsid mlflow server --host 127.0.0.1 --port "$port" \
    --backend-store-uri sqlite:///mlflow.db --workers 1 >server.log 2>&1 </dev/null &
server=$!
trap 'kill -- -"$server" 2>/dev/null || true' EXIT
for _ in $(seq 120); do
    curl -fs "http://127.0.0.1:$port/health" >/dev/null && break
    sleep 1
done

python "$here/shoot.py" --ui "http://127.0.0.1:$port" --store sqlite:///mlflow.db \
    --report report/report.html --out "$here"
echo "console output of the sweep: $work/console.txt"
