#!/usr/bin/env python3
"""Reference gradients of one training step of cellfinder's own network.

Builds cellfinder's ``build_model`` on Keras 3 (JAX backend, CPU) twice,
in float64 and in float32, loads the same weights file into both (the
``model.weights.h5`` our trainer writes) and differentiates Keras'
categorical cross-entropy of one batch in training mode (batch
normalisation with the batch's statistics) with respect to every trainable
variable. Also recovers each batch normalisation's batch mean and biased
variance from the moving averages Keras updates in that step.

* float64 is the reference: its rounding errors are ~1e-16, so anything a
  float32 computation differs from it by is that computation's own error.
* float32 is a careful float32 computation of the same step: convolutions
  as matrix products, reductions that XLA's CPU compiler splits into a tree
  and a two-pass variance (jnp.var). It is the bar the tests hold our
  float32 engines to (see test/gradientAccuracy.test.ts).

XLA's CPU compiler has fast convolutions for float32 but not for float64
(those take minutes for one step of ResNet-18), while its float64 matrix
products are fast; so every convolution here, in both precisions, is one
matrix product of the input windows (conv_as_matrix_product).

Usage:
  gradient_reference.py --depth N --channels C --weights model.weights.h5
      --batch batch.f32 --labels labels.f32 --out-dir D

``batch.f32`` is (batch, y, x, z, channels) float32 little-endian,
``labels.f32`` (batch, 2) one-hot. Writes to D, for each precision P in
float64, float32: ``P.bin``, every value as float64 little-endian, in the
order ``index.json`` lists (per variable: path, shape, offset in values).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import keras_peer  # noqa: E402  (sets the Keras backend before keras is imported)

import itertools  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

jax.config.update("jax_enable_x64", True)


def conv_as_matrix_product(inputs, kernel, strides=1, padding="valid", data_format=None, dilation_rate=1):
    """keras.src.backend.jax.nn.conv for cellfinder's convolutions (channels
    last, 'valid' padding after explicit zero padding, no dilation): the
    windows of every kernel tap side by side, times the kernel as a matrix."""
    if padding != "valid" or data_format not in (None, "channels_last") or dilation_rate not in (1, (1, 1, 1)):
        raise NotImplementedError(f"convolution with padding={padding}, data_format={data_format}, dilation_rate={dilation_rate}")
    kernel = jax.numpy.asarray(kernel)
    inputs = jax.numpy.asarray(inputs, dtype=kernel.dtype)
    strides = (strides,) * 3 if isinstance(strides, int) else tuple(strides)
    taps = kernel.shape[:3]
    sizes = [(inputs.shape[1 + axis] - taps[axis]) // strides[axis] + 1 for axis in range(3)]
    windows = [
        inputs[:, i : i + (sizes[0] - 1) * strides[0] + 1 : strides[0], j : j + (sizes[1] - 1) * strides[1] + 1 : strides[1], k : k + (sizes[2] - 1) * strides[2] + 1 : strides[2], :]
        for i, j, k in itertools.product(*(range(t) for t in taps))
    ]
    patches = windows[0] if len(windows) == 1 else jax.numpy.concatenate(windows, axis=-1)
    return jax.numpy.tensordot(patches, kernel.reshape(-1, kernel.shape[-1]), axes=1)


def training_step(depth: int, channels: int, weights: Path, batch: np.ndarray, labels: np.ndarray, dtype: str) -> dict[str, np.ndarray]:
    """Gradients and batch statistics of one step in `dtype`, keyed layer/variable."""
    keras = keras_peer.import_keras()
    import keras.src.backend.jax.nn as keras_jax_nn

    keras_jax_nn.conv = conv_as_matrix_product
    keras.config.set_floatx(dtype)
    try:
        model = keras_peer.build(depth, channels)
        model.load_weights(weights)
    finally:
        keras.config.set_floatx("float32")
    trainable = [v.value for v in model.trainable_variables]
    # The moving statistics do not enter a training-mode step; from zero,
    # Keras' update (moving * momentum + batch * (1 - momentum)) leaves
    # the batch's statistics times (1 - momentum), divided out below.
    non_trainable = [jax.numpy.zeros_like(v.value) for v in model.non_trainable_variables]

    def loss(trainable_values, non_trainable_values, x, y):
        probabilities, updated = model.stateless_call(trainable_values, non_trainable_values, x, training=True)
        return jax.numpy.mean(keras.losses.categorical_crossentropy(y, probabilities)), updated

    # The batch as arguments, not constants: the compiled step is then the
    # same for every batch and comes from JAX's persistent cache.
    step = jax.jit(jax.value_and_grad(loss, has_aux=True))
    (_, updated), gradients = step(trainable, non_trainable, jax.numpy.asarray(batch, dtype=dtype), jax.numpy.asarray(labels, dtype=dtype))
    out = {f"gradient:{v.path}": np.asarray(g, dtype=np.float64) for v, g in zip(model.trainable_variables, gradients)}
    momentum = {layer.name: layer.momentum for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)}
    for v, after in zip(model.non_trainable_variables, updated):
        layer, name = v.path.split("/")
        statistic = {"moving_mean": "mean", "moving_variance": "variance"}[name]
        # 1 - momentum as Keras computes it: in Python, then in the variables' precision.
        factor = float(np.asarray(1.0 - momentum[layer], dtype))
        out[f"{statistic}:{layer}"] = np.asarray(after, dtype=np.float64) / factor
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depth", type=int, required=True, choices=keras_peer.DEPTHS)
    parser.add_argument("--channels", type=int, required=True, choices=(1, 2))
    parser.add_argument("--weights", type=Path, required=True)
    parser.add_argument("--batch", type=Path, required=True)
    parser.add_argument("--labels", type=Path, required=True)
    parser.add_argument("--out-dir", type=Path, required=True)
    args = parser.parse_args()
    labels = np.fromfile(args.labels, dtype="<f4").reshape(-1, 2)
    batch = np.fromfile(args.batch, dtype="<f4").reshape(labels.shape[0], *keras_peer.NETWORK_INPUT_YXZ, args.channels)
    index = None
    for dtype in ("float64", "float32"):
        values = training_step(args.depth, args.channels, args.weights, batch, labels, dtype)
        if index is None:
            offset = 0
            index = []
            for key, value in values.items():
                index.append({"key": key, "shape": list(value.shape), "offset": offset})
                offset += value.size
        np.concatenate([values[entry["key"]].ravel() for entry in index]).astype("<f8").tofile(args.out_dir / f"{dtype}.bin")
        keras_peer.log(f"{dtype}: {len(values)} arrays")
    (args.out_dir / "index.json").write_text(json.dumps(index))
    return 0


if __name__ == "__main__":
    sys.exit(main())
