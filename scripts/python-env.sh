#!/usr/bin/env bash
# Creates .venv with the real cellfinder readers used to check our files
# (tifffile, brainglobe-utils, cellfinder's cube lister). Reuses it when the
# requirement files have not changed. Needs python3 and PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
stamp=.venv/.requirements-stamp
want=$(cat test/python/requirements-peers.txt test/python/requirements-peers-nodeps.txt | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then exit 0; fi
echo "Setting up .venv with cellfinder's readers (one time)..." >&2
python3 -m venv .venv
.venv/bin/pip install --quiet --disable-pip-version-check -r test/python/requirements-peers.txt
.venv/bin/pip install --quiet --disable-pip-version-check --no-deps -r test/python/requirements-peers-nodeps.txt
echo "$want" > "$stamp"
