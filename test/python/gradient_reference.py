#!/usr/bin/env python3
"""Reference gradients of one training step of cellfinder's own network.

Builds cellfinder's ``build_model`` on Keras 3 (JAX backend, CPU) twice,
in float64 and in float32, loads the same weights file into both (the
``model.weights.h5`` our trainer writes) and differentiates Keras'
categorical cross-entropy of one batch in training mode (batch
normalisation with the batch's statistics) with respect to every trainable
variable. Also recovers each batch normalisation's batch mean and biased
variance from the moving averages Keras updates in that step.

Both take the ReLU and max-pool decisions of our own float32 forward pass
of the step (our ReLU layers' outputs, --relu-outputs): see OurDecisions.

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
      --batch batch.f32 --labels labels.f32
      --relu-outputs relu.f32 --relu-index relu.json --out-dir D

``batch.f32`` is (batch, y, x, z, channels) float32 little-endian,
``labels.f32`` (batch, 2) one-hot, ``relu.f32`` our ReLU layers' outputs,
float32 little-endian, where ``relu.json`` says (per layer: layer, shape,
offset in values). Writes to D, for each precision P in
float64, float32: ``P.bin``, every value as float64 little-endian, in the
order ``index.json`` lists (per key: shape, offset in values); keys are
``gradient:layer/variable``, ``mean:layer``, ``variance:layer`` and
``magnitude:layer/gamma|beta`` and ``disagreements:layer`` (see
OurDecisions).
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


class OurDecisions:
    """Our float32 forward's ReLU and max-pool decisions, imposed on a Keras model.

    A ReLU's derivative and a max pool's routing are discontinuous: an
    activation within float32 noise of zero (or of its window's maximum) can
    fall on the other side in float64 than in our float32 forward, and the
    gradient of every layer before it then differs by far more than any
    rounding error (one flip in ResNet-18's unit 2 moved its gradients by
    1e-3). Both references take our forward's side of every such decision, so
    that what the test measures is the accuracy of the sums, not where a
    discontinuity fell: each ReLU passes exactly where our ReLU's output is
    positive, the max pool takes the element of each window that ours took
    (the first maximum in (y, x, z) order of our pool's input). Away from the
    decisions this is the same function; at a flipped element the value
    differs by less than float32 noise.

    Counts, per ReLU and max pool, the elements where this computation on
    its own would have decided otherwise than ours. Also measures, per batch
    normalisation, the magnitudes its gamma and beta
    gradients are sums of (sum |dy * xhat| and sum |dy| per z, dy the
    gradient at its output): the error any float32 computation can be held
    to on such a sum scales with them, not with the sum, which may cancel.
    """

    def __init__(self, model, relu_outputs: dict[str, np.ndarray]):
        keras = keras_peer.import_keras()
        self.arrays: dict[str, np.ndarray] = {}
        self.traced: dict[str, dict] = {}
        self.batch_norms: list[str] = []
        for layer in model.layers:
            if isinstance(layer, keras.layers.Activation):
                self.arrays[layer.name] = relu_outputs[layer.name] > 0
                layer.call = self._masked_relu(layer.name)
            elif isinstance(layer, keras.layers.MaxPooling3D):
                windows = self._windows(relu_outputs[layer.input._keras_history.operation.name], layer.pool_size, layer.strides)
                self.arrays[layer.name] = np.argmax(windows, axis=-1).astype(np.int32)
                layer.call = self._chosen_maximum(layer.name, layer.pool_size, layer.strides)
            elif isinstance(layer, keras.layers.BatchNormalization):
                self.batch_norms.append(layer.name)
                layer.call = self._probed_batch_norm(layer.name, layer.call, layer.epsilon)

    @staticmethod
    def _windows(x, pool_size, strides):
        """Every window's elements along a new last axis, in (y, x, z) order."""
        stack = jax.numpy.stack if isinstance(x, jax.Array) else np.stack
        sizes = [(x.shape[1 + axis] - pool_size[axis]) // strides[axis] + 1 for axis in range(3)]
        return stack(
            [
                x[:, i : i + (sizes[0] - 1) * strides[0] + 1 : strides[0], j : j + (sizes[1] - 1) * strides[1] + 1 : strides[1], k : k + (sizes[2] - 1) * strides[2] + 1 : strides[2], :]
                for i, j, k in itertools.product(*(range(p) for p in pool_size))
            ],
            axis=-1,
        )

    def _masked_relu(self, name):
        def call(inputs):
            ours = self.traced["decisions"][name]
            self.traced["disagreements"][name] = jax.numpy.sum((inputs > 0) != ours)
            return jax.numpy.where(ours, inputs, jax.numpy.zeros_like(inputs))

        return call

    def _chosen_maximum(self, name, pool_size, strides):
        def call(inputs):
            windows = self._windows(inputs, pool_size, strides)
            ours = self.traced["decisions"][name]
            self.traced["disagreements"][name] = jax.numpy.sum(jax.numpy.argmax(windows, axis=-1) != ours)
            return jax.numpy.take_along_axis(windows, ours[..., None], axis=-1)[..., 0]

        return call

    def _probed_batch_norm(self, name, call, epsilon):
        # A zero added to the output: its gradient is dy.
        def probed(inputs, training=None, mask=None):
            axes = (0, 1, 2, 4)
            centred = inputs - jax.numpy.mean(inputs, axis=axes, keepdims=True)
            self.traced["normalised"][name] = centred / jax.numpy.sqrt(jax.numpy.mean(centred * centred, axis=axes, keepdims=True) + epsilon)
            return call(inputs, training=training, mask=mask) + self.traced["probes"][name]

        return probed

    def trace(self, decisions, probes) -> tuple[dict, dict]:
        """Points the patched layers at this trace's arguments; returns where
        they put each batch norm's xhat and, per decision layer, how many of
        this computation's own decisions differ from ours."""
        self.traced = {"decisions": decisions, "probes": probes, "normalised": {}, "disagreements": {}}
        return self.traced["normalised"], self.traced["disagreements"]


def training_step(depth: int, channels: int, weights: Path, batch: np.ndarray, labels: np.ndarray, relu_outputs: dict[str, np.ndarray], dtype: str) -> dict[str, np.ndarray]:
    """Gradients and batch statistics of one step in `dtype` with our ReLU and max-pool decisions, keyed layer/variable, and the magnitudes of each batch normalisation's gamma and beta gradient sums."""
    keras = keras_peer.import_keras()
    import keras.src.backend.jax.nn as keras_jax_nn

    keras_jax_nn.conv = conv_as_matrix_product
    keras.config.set_floatx(dtype)
    try:
        model = keras_peer.build(depth, channels)
        model.load_weights(weights)
    finally:
        keras.config.set_floatx("float32")
    ours = OurDecisions(model, relu_outputs)
    trainable = [v.value for v in model.trainable_variables]
    # The moving statistics do not enter a training-mode step; from zero,
    # Keras' update (moving * momentum + batch * (1 - momentum)) leaves
    # the batch's statistics times (1 - momentum), divided out below.
    non_trainable = [jax.numpy.zeros_like(v.value) for v in model.non_trainable_variables]
    probes = {layer.name: jax.numpy.zeros((batch.shape[0], *layer.output.shape[1:]), dtype=dtype) for layer in model.layers if layer.name in ours.batch_norms}

    def loss(trainable_values, probe_values, non_trainable_values, decisions, x, y):
        normalised, disagreements = ours.trace(decisions, probe_values)
        probabilities, updated = model.stateless_call(trainable_values, non_trainable_values, x, training=True)
        return jax.numpy.mean(keras.losses.categorical_crossentropy(y, probabilities)), (updated, dict(normalised), dict(disagreements))

    # The batch and decisions as arguments, not constants: the compiled step
    # is then the same for every batch and comes from JAX's persistent cache.
    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
    (_, (updated, normalised, disagreements)), (gradients, dy) = step(trainable, probes, non_trainable, ours.arrays, jax.numpy.asarray(batch, dtype=dtype), jax.numpy.asarray(labels, dtype=dtype))
    out = {f"gradient:{v.path}": np.asarray(g, dtype=np.float64) for v, g in zip(model.trainable_variables, gradients)}
    momentum = {layer.name: layer.momentum for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)}
    for v, after in zip(model.non_trainable_variables, updated):
        layer, name = v.path.split("/")
        statistic = {"moving_mean": "mean", "moving_variance": "variance"}[name]
        # 1 - momentum as Keras computes it: in Python, then in the variables' precision.
        factor = float(np.asarray(1.0 - momentum[layer], dtype))
        out[f"{statistic}:{layer}"] = np.asarray(after, dtype=np.float64) / factor
    for layer in ours.batch_norms:
        dy_layer = np.asarray(dy[layer], dtype=np.float64)
        out[f"magnitude:{layer}/gamma"] = np.abs(dy_layer * np.asarray(normalised[layer], dtype=np.float64)).sum(axis=(0, 1, 2, 4))
        out[f"magnitude:{layer}/beta"] = np.abs(dy_layer).sum(axis=(0, 1, 2, 4))
    for layer, count in disagreements.items():
        out[f"disagreements:{layer}"] = np.asarray([count], dtype=np.float64)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depth", type=int, required=True, choices=keras_peer.DEPTHS)
    parser.add_argument("--channels", type=int, required=True, choices=(1, 2))
    parser.add_argument("--weights", type=Path, required=True)
    parser.add_argument("--batch", type=Path, required=True)
    parser.add_argument("--labels", type=Path, required=True)
    parser.add_argument("--relu-outputs", type=Path, required=True)
    parser.add_argument("--relu-index", type=Path, required=True)
    parser.add_argument("--out-dir", type=Path, required=True)
    args = parser.parse_args()
    labels = np.fromfile(args.labels, dtype="<f4").reshape(-1, 2)
    batch = np.fromfile(args.batch, dtype="<f4").reshape(labels.shape[0], *keras_peer.NETWORK_INPUT_YXZ, args.channels)
    relu_values = np.fromfile(args.relu_outputs, dtype="<f4")
    relu_outputs = {entry["layer"]: relu_values[entry["offset"] : entry["offset"] + int(np.prod(entry["shape"]))].reshape(entry["shape"]) for entry in json.loads(args.relu_index.read_text())}
    index = None
    for dtype in ("float64", "float32"):
        values = training_step(args.depth, args.channels, args.weights, batch, labels, relu_outputs, dtype)
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
