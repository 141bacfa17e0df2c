#!/usr/bin/env bash
# Create build/venv (override with VENV) holding the host test tools pinned in pyproject.toml's
# `test` extra. Does nothing, and touches no network, while build/venv/.stamp holds the sha256 of
# pyproject.toml. PYTHON picks the interpreter (default: python3).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
root=$(cd "$here/.." && pwd -P)
venv=${VENV:-$root/build/venv}
python=${PYTHON:-python3}
pyproject=$root/pyproject.toml

rel() { case $1 in "$root"/*) printf '%s\n' "${1#"$root"/}" ;; *) printf '%s\n' "$1" ;; esac; }

want=$(sha256sum <"$pyproject")
want=${want%% *}
if [[ -f $venv/.stamp && $(<"$venv/.stamp") == "$want" ]] && "$venv/bin/python" -c '' 2>/dev/null; then
	exit 0
fi

if ! "$venv/bin/python" -c '' 2>/dev/null; then
	rm -rf -- "$venv"
	"$python" -m venv "$venv" || {
		echo "venv: $python -m venv could not create $(rel "$venv"); run deps/sysdeps.sh" >&2
		exit 1
	}
fi
rm -f -- "$venv/.stamp"

"$python" -c 'import sys
try:
    import tomllib
except ImportError:  # Python < 3.11
    import tomli as tomllib
with open(sys.argv[1], "rb") as f:
    print("\n".join(tomllib.load(f)["project"]["optional-dependencies"]["test"]))' \
	"$pyproject" >"$venv/requirements.txt"

log=$venv/pip.log
echo "venv: installing the test tools from pyproject.toml into $(rel "$venv") ..."
if ! "$venv/bin/python" -m pip install -r "$venv/requirements.txt" >"$log" 2>&1; then
	echo "venv: pip could not install the test tools from pyproject.toml; see $(rel "$log")" >&2
	exit 1
fi
printf '%s\n' "$want" >"$venv/.stamp"
echo "venv: ok ($(rel "$venv"))"
