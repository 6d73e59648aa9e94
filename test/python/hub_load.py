#!/usr/bin/env python3
"""Loads a Hub export the way Keras 3 loads an ``hf://`` model, and predicts.

``keras.saving.load_model("hf://ORG/NAME")`` hands an hf:// path to
``saving_lib.load_model``, which calls ``huggingface_hub.snapshot_download``
and reads the downloaded folder with ``saving_lib._load_model_from_dir``.
``saving_lib.load_model`` is called directly: the public function's first
look at a remote path asks TensorFlow's gfile, and this venv has no
TensorFlow (JAX backend). Here the download is replaced by a
stand-in that returns FOLDER (nothing can be downloaded in the tests), so the
rest is Keras' own hf:// path, unchanged.

  hub_load.py FOLDER INPUT.npy

Prints one JSON document: the repository Keras asked for and the model's
outputs for INPUT (batch, y, x, z, channel).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import types

os.environ["KERAS_BACKEND"] = "jax"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("KERAS_HOME", os.path.join(tempfile.gettempdir(), "cellfinder-retrain-keras-home"))

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras.src.saving import saving_lib  # noqa: E402

REPO_ID = "cellfinder-retrain-test/hub-export"


def main() -> int:
    folder, inputs = sys.argv[1], sys.argv[2]
    requested: list[str] = []

    def snapshot_download(repo_id, **_kwargs):
        requested.append(repo_id)
        return folder

    saving_lib.huggingface_hub = types.SimpleNamespace(snapshot_download=snapshot_download)
    model = saving_lib.load_model(f"hf://{REPO_ID}")
    outputs = model.predict(np.load(inputs), verbose=0)
    json.dump({"requested": requested, "keras_version": keras.__version__, "outputs": outputs.tolist()}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
