#!/usr/bin/env bash
# Creates .venv with the real cellfinder readers used to check our files
# (tifffile, brainglobe-utils, cellfinder's cube lister) and Keras 3 on the JAX
# CPU backend (test/python/keras_peer.py: cellfinder's own network and Keras
# weight files). Reuses it when the requirement files have not changed. Needs
# python3 and PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
stamp=.venv/.requirements-stamp
want=$(cat test/python/requirements-peers.txt test/python/requirements-peers-nodeps.txt test/python/requirements-keras.txt | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then exit 0; fi
echo "Setting up .venv with cellfinder's readers (one time)..." >&2
python3 -m venv .venv
.venv/bin/pip install --quiet --disable-pip-version-check -r test/python/requirements-peers.txt
# Keras 3's requirements go in before the --no-deps packages, so pip's
# resolver does not warn about the dependencies those deliberately lack.
.venv/bin/pip install --quiet --disable-pip-version-check -r test/python/requirements-keras.txt
.venv/bin/pip install --quiet --disable-pip-version-check --no-deps -r test/python/requirements-peers-nodeps.txt
echo "$want" > "$stamp"
