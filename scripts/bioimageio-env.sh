#!/usr/bin/env bash
# Creates .venv-bioimageio with the BioImage Model Zoo's checker (bioimageio.core,
# Keras 3 on JAX; see test/python/requirements-bioimageio.txt) for
# test/modelExport.test.ts, which runs this script itself: only that test
# needs it. Kept apart from .venv, whose Keras peer pins other versions
# (ml_dtypes). Reused while the requirement file is unchanged. Needs python3
# and PyPI; about 250 MB.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv-bioimageio
stamp=$venv/.requirements-stamp
want=$(sha256sum test/python/requirements-bioimageio.txt | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then exit 0; fi
echo "Setting up $venv with bioimageio.core (one time)..." >&2
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check -r test/python/requirements-bioimageio.txt
echo "$want" > "$stamp"
