#!/usr/bin/env bash
# Set up bayescal in ./.venv (Python >= 3.12) with its test extras. Idempotent: re-running only
# reinstalls when pyproject.toml changed. Usage: bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."

find_python() {
    local candidates=()
    [ -n "${PYTHON:-}" ] && candidates+=("$PYTHON")
    candidates+=(python3.12 python3.13 python3 python)
    for py in "${candidates[@]}"; do
        if command -v "$py" >/dev/null 2>&1 && "$py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' 2>/dev/null; then
            command -v "$py"
            return 0
        fi
    done
    return 1
}

venv_ok() {
    [ -x .venv/bin/python ] && .venv/bin/python -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' 2>/dev/null
}

if ! venv_ok; then
    if ! PY=$(find_python); then
        echo "bayescal setup: error: bayescal needs Python >= 3.12 and none was found" >&2
        echo "  (tried \$PYTHON, python3.12, python3.13, python3, python; with pyenv, the repository's" >&2
        echo "  .python-version selects 3.12: run 'pyenv install 3.12', or set PYTHON=/path/to/python3.12)" >&2
        exit 1
    fi
    echo "bayescal setup: creating .venv with $("$PY" --version) ($PY)"
    rm -rf .venv
    "$PY" -m venv .venv
fi

stamp=.venv/.bayescal-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "bayescal setup: installing bayescal and its test dependencies into .venv (a few minutes the first time)"
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -e ".[test]"
    echo "$want" > "$stamp"
fi
# headless Chromium renders the HTML reports in tests/test_report.py (Debian's package; only when missing)
if ! command -v chromium >/dev/null 2>&1 && [ ! -x /usr/bin/chromium ]; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "bayescal setup: installing chromium (apt-get) for the report tests"
        apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
        echo "bayescal setup: warning: chromium is missing and this is not root with apt-get; the report tests" \
             "will fail until it is installed (apt-get update && apt-get install -y chromium)" >&2
    fi
fi
echo "bayescal setup: ready ($(.venv/bin/python --version), bayescal $(.venv/bin/python -c 'import bayescal; print(bayescal.__version__)'))"
