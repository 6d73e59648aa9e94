#!/usr/bin/env python3
"""Training and inference speed of cellfinder's own network under Keras 3,
for `npm run bench` to print next to ours on the same machine in the same run.

Usage: bench_keras.py <depth> <train batch> <infer batch> <steps>
Prints one JSON line. The Keras backend is whatever KERAS_BACKEND says
(cellfinder users run "torch"); set it before calling. Needs a Python with
keras, the backend's package and cellfinder (--no-deps is enough).
"""

import json
import os
import sys
import time

import numpy as np

backend = os.environ.get("KERAS_BACKEND", "torch")
os.environ["KERAS_BACKEND"] = backend
import keras  # noqa: E402  (before cellfinder, which would force torch)

from cellfinder.core.classify.resnet import build_model  # noqa: E402


def median_seconds(run, steps: int) -> float:
    """Median time of `steps` calls after one untimed warm-up call, as our side times them."""
    run()
    seconds = []
    for _ in range(steps):
        start = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - start)
    return sorted(seconds)[len(seconds) // 2]


def main() -> None:
    depth, train_batch, infer_batch, steps = (int(v) for v in sys.argv[1:5])
    model = build_model(shape=(50, 50, 20, 2), network_depth=f"{depth}-layer", learning_rate=0.0001)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((train_batch, 50, 50, 20, 2), dtype=np.float32)
    y = keras.utils.to_categorical(np.arange(train_batch) % 2, 2)
    train = train_batch / median_seconds(lambda: model.train_on_batch(x, y), steps)
    xi = rng.standard_normal((infer_batch, 50, 50, 20, 2), dtype=np.float32)
    infer = infer_batch / median_seconds(lambda: model.predict_on_batch(xi), steps)
    print(json.dumps({"backend": f"cellfinder build_model, Keras {keras.__version__} + {backend}", "depth": depth, "trainBatch": train_batch, "trainCubesPerSecond": train, "inferBatch": infer_batch, "inferCubesPerSecond": infer}))


if __name__ == "__main__":
    main()
