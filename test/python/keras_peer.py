#!/usr/bin/env python3
"""The real Keras 3 peer for our TypeScript network and Keras weight files.

Builds cellfinder's own classification network with cellfinder's own
``build_model`` on Keras 3 (JAX backend, CPU) and reads/writes the three
weight-file formats cellfinder users meet:

* ``model.weights.h5``  Keras 3 ``model.save_weights`` (what
  ``cellfinder_train --save-weights`` writes),
* ``model.keras``       Keras 3 ``model.save`` (zip: config.json,
  metadata.json, model.weights.h5; what ``cellfinder_train`` writes),
* ``*.h5``              Keras 2 / tf.keras ``model.save_weights('x.h5')``
  layout, as cellfinder's pre-trained ``resnet50_tv.h5``.

Subcommands (each prints one JSON document on stdout; logs go to stderr):

  describe --depth N --channels C
  save     --depth N --channels C --seed S --out-dir D [--cubes CH0.tif ...]
  predict  --depth N --channels C --weights FILE --cubes CH0.tif ... [--weights-summary]
           [--normalise-by SIGNAL_VOLUME [BACKGROUND_VOLUME]]  (cellfinder's
           --normalize-channels: see cellfinder_normalisation.py)
  inspect  --file F
  train    --depth N --channels C --cubes CH0.tif ... --labels 0|1 ... --epochs E
           [--start FILE | --seed S] [--learning-rate LR] [--save-dir D]

Run with the venv made by scripts/python-env.sh, e.g.
  .venv/bin/python test/python/keras_peer.py describe --depth 18 --channels 2

Exit status: 0 ok; 1 a check failed (the JSON says which, "ok": false) or
a file is missing/unreadable (message on stderr); 2 usage error.
"""

from __future__ import annotations

import os
import sys
import tempfile

# Keras picks its backend when it is first imported. cellfinder/__init__.py
# sets KERAS_BACKEND=torch on import (and torch is deliberately not installed),
# so the backend is fixed here, and keras is imported before cellfinder.
os.environ["KERAS_BACKEND"] = "jax"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# JAX compiles every initializer and every predict for these shapes; a
# persistent compilation cache turns a cold 15-20 s model build into ~2 s on
# later runs (tests call this script many times). Safe to delete any time.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "cellfinder-retrain-jax-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# Keep Keras from creating ~/.keras/keras.json in the user's home.
os.environ.setdefault("KERAS_HOME", os.path.join(tempfile.gettempdir(), "cellfinder-retrain-keras-home"))

import warnings  # noqa: E402

# numpy 2 + Keras variables: "__array__ implementation doesn't accept a copy
# keyword" on every variable read; harmless, and it would drown stderr.
warnings.filterwarnings("ignore", message=".*__array__ implementation doesn't accept a copy keyword.*")

import argparse  # noqa: E402
import hashlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402
import time  # noqa: E402
import zipfile  # noqa: E402
from pathlib import Path  # noqa: E402

import h5py  # noqa: E402
import numpy as np  # noqa: E402

DEPTHS = (18, 34, 50, 101, 152)
CUBE_SHAPE_ZYX = (20, 50, 50)
NETWORK_INPUT_YXZ = (50, 50, 20)

# What a Keras 2 (tf.keras, TensorFlow 2.0/2.1) `save_weights('x.h5')` put in
# the root attributes. cellfinder's pre-trained resnet50_tv.h5 cannot be
# downloaded here to read its exact version string; Keras 3 only decodes it.
LEGACY_KERAS_VERSION = "2.2.4-tf"
LEGACY_BACKEND = "tensorflow"
# tf.keras named the first Input layer of a session "input_1" (Keras 3:
# "input_layer"). Weightless layers are skipped when loading by order.
LEGACY_INPUT_LAYER_NAME = "input_1"
# Dense kernel std (times 1/sqrt(fan_in)) of the seeded test weights, chosen
# once (seed 1, the fixture cubes) so the cell/non-cell logits differ by
# about 1-4 at every depth: see deterministic_weights().
DENSE_KERNEL_STD = {18: 0.005, 34: 5e-4, 50: 5e-4, 101: 1e-4, 152: 5e-6}
# Keras' own limit for one HDF5 attribute (legacy_h5_format.py).
HDF5_OBJECT_HEADER_LIMIT = 64512

CONFIG_KEYS = (
    "filters",
    "kernel_size",
    "strides",
    "padding",
    "data_format",
    "dilation_rate",
    "groups",
    "use_bias",
    "axis",
    "epsilon",
    "momentum",
    "center",
    "scale",
    "activation",
    "pool_size",
    "keepdims",
    "units",
    "dtype",
)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def emit(obj, one_line_items: str | None = None) -> None:
    """JSON on stdout; with one_line_items, each element of that top-level
    list goes on one line (keeps the describe fixtures small and diffable)."""
    if one_line_items is None:
        text = json.dumps(obj, indent=1, default=_json_default)
    else:
        head = {k: v for k, v in obj.items() if k != one_line_items}
        text = json.dumps(head, indent=1, default=_json_default)[:-2]
        items = ",\n  ".join(json.dumps(item, separators=(",", ":"), default=_json_default) for item in obj[one_line_items])
        text += f',\n "{one_line_items}": [\n  {items}\n ]\n}}'
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, bytes):
        return o.decode("utf-8", "backslashreplace")
    if isinstance(o, tuple):
        return list(o)
    if isinstance(o, Path):
        return str(o)
    # keras DTypePolicy etc.
    if hasattr(o, "name"):
        return str(o.name)
    return str(o)


def _plain(value):
    """Tuples -> lists, numpy scalars -> Python, recursively (for JSON)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    return value


# --------------------------------------------------------------------------
# Keras / cellfinder


def import_keras():
    import keras  # noqa: F401  (must come before cellfinder, see top of file)

    if keras.backend.backend() != "jax":
        raise RuntimeError(f"expected the jax backend, got {keras.backend.backend()}")
    return keras


def build(depth: int, channels: int, learning_rate: float | None = None):
    """cellfinder's own network, exactly as cellfinder_train builds it.

    cellfinder.core.classify.resnet.build_model(
        shape=(50, 50, 20, channels), network_depth=f"{depth}-layer")
    with every other argument at cellfinder's default (axis=3,
    starting_features=64, number_classes=2, classification_activation=
    "softmax", Adam(learning_rate=0.0005), categorical_crossentropy,
    ["accuracy"]); build_model compiles the model.
    """
    keras = import_keras()
    from cellfinder.core.classify.resnet import build_model

    if depth not in DEPTHS:
        raise SystemExit(f"--depth must be one of {DEPTHS}")
    if channels not in (1, 2):
        raise SystemExit("--channels must be 1 or 2")
    # Fresh name scope, so a second model in this process gets the same
    # automatic names ("input_layer", not "input_layer_1") as a first one.
    keras.backend.clear_session()
    t0 = time.perf_counter()
    rate = {} if learning_rate is None else {"learning_rate": learning_rate}
    model = build_model(shape=(*NETWORK_INPUT_YXZ, channels), network_depth=f"{depth}-layer", **rate)
    log(f"built resnet{depth} ({channels} channel(s)) in {time.perf_counter() - t0:.1f} s")
    return model


def weights_h5_paths(model) -> dict[int, str]:
    """Group path of each layer's variables in a Keras 3 .weights.h5 file.

    Mirrors keras.src.saving.saving_lib._save_container_state: the model's
    layers are addressed by their class name in snake case, numbered in
    model.layers order per class (conv3d, conv3d_1, ...), never by the
    layer's own name. Keyed by id(layer). Checked against a real file by
    `save`.
    """
    from keras.src.utils import naming

    used: dict[str, int] = {}
    paths = {}
    for layer in model.layers:
        base = naming.to_snake_case(layer.__class__.__name__)
        if base in used:
            used[base] += 1
            name = f"{base}_{used[base]}"
        else:
            used[base] = 0
            name = base
        paths[id(layer)] = f"layers/{name}/vars"
    return paths


def inbound_layer_names(layer_config: dict) -> list[str]:
    names: list[str] = []

    def walk(x):
        if isinstance(x, dict):
            if x.get("class_name") == "__keras_tensor__":
                names.append(x["config"]["keras_history"][0])
            else:
                for v in x.values():
                    walk(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v)

    walk(layer_config.get("inbound_nodes", []))
    return names


def describe_model(model, depth: int, channels: int) -> dict:
    keras = import_keras()
    h5paths = weights_h5_paths(model)
    config_layers = {c["name"]: c for c in model.get_config()["layers"]}
    layers = []
    legacy_index = 0
    for index, layer in enumerate(model.layers):
        cfg = layer.get_config()
        key_config = {k: _plain(cfg[k]) for k in CONFIG_KEYS if k in cfg}
        if isinstance(key_config.get("dtype"), dict):  # a serialized DTypePolicy
            key_config["dtype"] = key_config["dtype"].get("config", {}).get("name", key_config["dtype"])
        entry = {
            "index": index,
            "name": layer.name,
            "class_name": layer.__class__.__name__,
            "config": key_config,
            "inbound": inbound_layer_names(config_layers[layer.name]),
            "output_shape": _plain(tuple(layer.output.shape)),
            # Keras 3 writes this group (with attr name = layer name) for
            # every layer, weightless ones too; the datasets only for these.
            "weights_h5_group": h5paths[id(layer)],
            "legacy_h5_index": None,
            "weights": [],
        }
        if layer.weights:
            entry["legacy_h5_index"] = legacy_index
            legacy_index += 1
        # Keras 3 (.weights.h5 vars/<i>) and Keras 2 (.h5 weight_names) both
        # store a layer's variables trainable first, then non-trainable.
        legacy_order = [w.path for w in layer.trainable_weights + layer.non_trainable_weights]
        for v in layer.weights:
            entry["weights"].append(
                {
                    "path": v.path,
                    "name": v.name,
                    "shape": list(v.shape),
                    "dtype": str(v.dtype),
                    "trainable": bool(v.trainable),
                    "weights_h5_dataset": f"{h5paths[id(layer)]}/{legacy_order.index(v.path)}",
                    "legacy_h5_weight_name": f"{layer.name}/{v.name}:0",
                    "legacy_h5_position": legacy_order.index(v.path),
                }
            )
        layers.append(entry)
    return {
        "network": f"resnet{depth}",
        "depth": depth,
        "channels": channels,
        "built_with": "cellfinder.core.classify.resnet.build_model("
        f"shape=(50, 50, 20, {channels}), network_depth='{depth}-layer')",
        "cellfinder_version": _version("cellfinder"),
        "keras_version": keras.__version__,
        "backend": keras.backend.backend(),
        "input_shape": _plain(tuple(model.inputs[0].shape)),
        "output_shape": _plain(tuple(model.outputs[0].shape)),
        "layer_count": len(model.layers),
        "layers_with_weights": sum(1 for layer in model.layers if layer.weights),
        "variable_count": len(model.weights),
        "total_params": int(model.count_params()),
        "trainable_params": int(sum(int(np.prod(v.shape)) for v in model.trainable_weights)),
        "non_trainable_params": int(sum(int(np.prod(v.shape)) for v in model.non_trainable_weights)),
        "weights_h5_non_layer_entries": non_layer_entries(model),
        "layers": layers,
    }


def non_layer_entries(model) -> list[dict]:
    """What a Keras 3 .weights.h5 of this (compiled, never trained) model
    holds besides layers/*: the model's own (empty) vars group and the Adam
    optimizer's two variables that exist before its first step."""
    out = [{"group": "vars", "name_attr": model.name, "datasets": []}]
    opt = getattr(model, "optimizer", None)
    if opt is not None:
        out.append(
            {
                "group": "optimizer/vars",
                "name_attr": opt.name,
                "datasets": [
                    {"dataset": f"optimizer/vars/{i}", "path": v.path, "shape": list(v.shape), "dtype": str(v.dtype), "value": _plain(np.asarray(v.numpy()).tolist())}
                    for i, v in enumerate(opt.variables)
                ],
            }
        )
    return out


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


def deterministic_weights(model, seed: int, depth: int) -> list[np.ndarray]:
    """Seeded values for every variable, in model.weights order.

    One numpy Generator (PCG64, np.random.default_rng(seed)) draws, variable
    by variable in model.weights order:
      Conv3D kernel   normal * sqrt(2 / fan_in)   (He scale, fan_in = prod(shape[:-1]))
      Dense kernel    normal * DENSE_KERNEL_STD[depth] / sqrt(fan_in)
      Dense bias      normal * 0.05
      BN gamma        1 + 0.1 * normal
      BN beta         0.1 * normal
      BN moving_mean  0.1 * normal
      BN moving_variance  1 + uniform(0, 0.5)
    He scale keeps the activations of deep networks finite for raw cube
    intensities (hundreds), but they still grow with depth through the
    residual additions; the per-depth Dense kernel scale brings the logit
    differences of the real cubes to about 1-4 for every depth, so the
    softmax outputs stay away from 0/1 and are worth comparing. Values are
    float32.
    """
    rng = np.random.default_rng(seed)
    values = []
    for layer in model.layers:
        for v in layer.weights:
            shape = tuple(v.shape)
            kind = v.name
            if kind == "kernel":
                fan_in = int(np.prod(shape[:-1]))
                if layer.__class__.__name__ == "Dense":
                    val = rng.standard_normal(shape) * (DENSE_KERNEL_STD[depth] / math.sqrt(fan_in))
                else:
                    val = rng.standard_normal(shape) * math.sqrt(2.0 / fan_in)
            elif kind == "bias":
                val = rng.standard_normal(shape) * 0.05
            elif kind == "gamma":
                val = 1.0 + 0.1 * rng.standard_normal(shape)
            elif kind in ("beta", "moving_mean"):
                val = 0.1 * rng.standard_normal(shape)
            elif kind == "moving_variance":
                val = 1.0 + rng.uniform(0.0, 0.5, shape)
            else:
                raise RuntimeError(f"unexpected variable {v.path}")
            values.append(val.astype(np.float32))
    return values


def set_weights_in_order(model, values: list[np.ndarray]) -> None:
    i = 0
    for layer in model.layers:
        for v in layer.weights:
            v.assign(values[i])
            i += 1
    assert i == len(values)


def current_values(model) -> dict[str, np.ndarray]:
    return {v.path: np.asarray(v.numpy()) for v in model.weights}


def compare_values(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict:
    mismatched = []
    if list(a) != list(b):
        return {"identical": False, "reason": "variable paths differ", "a_only": sorted(set(a) - set(b)), "b_only": sorted(set(b) - set(a))}
    for k in a:
        if a[k].shape != b[k].shape or a[k].dtype != b[k].dtype or not np.array_equal(a[k], b[k]):
            mismatched.append(k)
    return {"identical": not mismatched, "variables": len(a), "mismatched": mismatched}


def weights_summary(model) -> list[dict]:
    out = []
    for v in model.weights:
        arr = np.ascontiguousarray(np.asarray(v.numpy()), dtype="<f4")
        out.append(
            {
                "path": v.path,
                "shape": list(arr.shape),
                "sum": float(arr.astype(np.float64).sum()),
                "sha256_f32le": hashlib.sha256(arr.tobytes()).hexdigest(),
            }
        )
    return out


# --------------------------------------------------------------------------
# Legacy Keras 2 HDF5 weights


def _save_attribute(group, name: str, data: list[bytes]) -> None:
    """Like Keras' save_attributes_to_hdf5_group: a numpy array of bytes
    (fixed-length strings), split into name0, name1, ... over 64512 bytes."""
    arr = np.asarray(data)
    chunks = 1
    parts = np.array_split(arr, chunks)
    while any(p.nbytes > HDF5_OBJECT_HEADER_LIMIT for p in parts):
        chunks += 1
        parts = np.array_split(arr, chunks)
    if chunks > 1:
        for i, part in enumerate(parts):
            group.attrs[f"{name}{i}"] = part
    else:
        group.attrs[name] = arr


def write_legacy_keras2_h5(model, path: Path) -> None:
    """Writes what tf.keras 2.x `model.save_weights('x.h5')` wrote
    (tensorflow/python/keras/saving/hdf5_format.py save_weights_to_hdf5_group),
    with the h5py defaults Keras used (libver earliest, contiguous datasets,
    no compression):

      /                 attrs layer_names (all layers, model order), backend,
                        keras_version
      /<layer name>     one group per layer (created in name order), attr
                        weight_names = ['<layer>/<var>:0', ...] in legacy
                        order (trainable, then non-trainable); weightless
                        layers get an empty weight_names
      /<layer>/<layer>/<var>:0   float32 datasets (the '/' in the weight
                        name makes the inner group)
    """
    names = {id(layer): layer.name for layer in model.layers}
    for layer in model.layers:
        if layer.__class__.__name__ == "InputLayer":
            names[id(layer)] = LEGACY_INPUT_LAYER_NAME
    with h5py.File(path, "w") as f:
        _save_attribute(f, "layer_names", [names[id(layer)].encode("utf8") for layer in model.layers])
        f.attrs["backend"] = LEGACY_BACKEND.encode("utf8")
        f.attrs["keras_version"] = LEGACY_KERAS_VERSION.encode("utf8")
        for layer in sorted(model.layers, key=lambda x: names[id(x)]):
            name = names[id(layer)]
            g = f.create_group(name)
            weights = layer.trainable_weights + layer.non_trainable_weights
            weight_names = [f"{name}/{w.name}:0".encode("utf8") for w in weights]
            _save_attribute(g, "weight_names", weight_names)
            for wname, w in zip(weight_names, weights):
                val = np.asarray(w.numpy())
                dset = g.create_dataset(wname, val.shape, dtype=val.dtype)
                dset[...] = val


# --------------------------------------------------------------------------
# Cubes and prediction


def channel_sibling(ch0: Path, channel: int) -> Path:
    """cellfinder finds the other channel by replacing the last digit
    before '.tif' (single-digit channel numbers)."""
    m = re.match(r"^(.*)(\d)(\.tiff?)$", ch0.name, re.IGNORECASE)
    if not m:
        raise SystemExit(f"{ch0}: cube file name must end in a channel digit and .tif")
    return ch0.with_name(f"{m.group(1)}{channel}{m.group(3)}")


def read_cubes(ch0_paths: list[str], channels: int) -> tuple[np.ndarray, list[dict]]:
    import tifffile

    batch = []
    files = []
    for p in ch0_paths:
        ch0 = Path(p)
        paths = [ch0] + [channel_sibling(ch0, c) for c in range(1, channels)]
        per_channel = []
        for cp in paths:
            if not cp.is_file():
                raise SystemExit(f"{cp}: cube file not found (channel {paths.index(cp)} of {ch0})")
            data = tifffile.imread(cp)
            if data.shape != CUBE_SHAPE_ZYX:
                raise SystemExit(f"{cp}: cube shape {data.shape}, expected (z, y, x) = {CUBE_SHAPE_ZYX}")
            # (z, y, x) -> network order (y, x, z); cellfinder converts
            # integer cubes whose range fits float32 with a plain cast.
            per_channel.append(np.transpose(data.astype(np.float32), (1, 2, 0)))
        batch.append(np.stack(per_channel, axis=-1))
        files.append({"ch0": str(ch0), "channels": [str(cp) for cp in paths]})
    return np.stack(batch, axis=0), files


def run_predict(model, cubes: list[str], channels: int, normalise_by: list[str] | None = None) -> dict:
    """Softmax outputs of `model.predict` plus the logits (the
    fully_connected layer before its softmax, from final_average_pool's
    output, in float64), which stay comparable when softmax saturates.
    With `normalise_by` (a volume per channel), the cubes are normalised
    first with those volumes' statistics, as cellfinder's classification
    does with normalize_channels=True."""
    keras = import_keras()
    x, files = read_cubes(cubes, channels)
    statistics = None
    if normalise_by:
        from cellfinder_normalisation import channel_statistics, normalise_cubes

        if len(normalise_by) != channels:
            raise SystemExit(f"--normalise-by takes one volume per channel ({channels})")
        statistics = [channel_statistics(Path(v)) for v in normalise_by]
        normalise_cubes(x, [(s["mean"], s["std"]) for s in statistics])
    t0 = time.perf_counter()
    probs = np.asarray(model.predict(x, batch_size=len(x), verbose=0))
    seconds = time.perf_counter() - t0
    pool = keras.Model(model.inputs, model.get_layer("final_average_pool").output)
    features = np.asarray(pool.predict(x, batch_size=len(x), verbose=0)).astype(np.float64)
    fc = model.get_layer("fully_connected")
    kernel, bias = (np.asarray(w.numpy()).astype(np.float64) for w in fc.weights)
    logits = features @ kernel + bias
    out = []
    for i, f in enumerate(files):
        out.append(
            {
                **f,
                "probabilities": [float(v) for v in probs[i]],
                "logits": [float(v) for v in logits[i]],
                "predicted_type": int(np.argmax(probs[i])) + 1,
            }
        )
    return {
        "input_shape": list(x.shape),
        "output": "probabilities = softmax; index 0 = non-cell (type 1), index 1 = cell (type 2)",
        "predict_seconds": round(seconds, 3),
        "channel_statistics": statistics,
        "cubes": out,
    }


# --------------------------------------------------------------------------
# HDF5 / .keras inspection


def _h5type(t) -> dict:
    cls = t.get_class()
    if cls == h5py.h5t.STRING:
        variable = bool(t.is_variable_str())
        return {
            "class": "string",
            "variable_length": variable,
            "size": None if variable else int(t.get_size()),
            "cset": {h5py.h5t.CSET_ASCII: "ascii", h5py.h5t.CSET_UTF8: "utf8"}.get(t.get_cset(), t.get_cset()),
            "strpad": {h5py.h5t.STR_NULLTERM: "nullterm", h5py.h5t.STR_NULLPAD: "nullpad", h5py.h5t.STR_SPACEPAD: "spacepad"}.get(t.get_strpad(), t.get_strpad()),
        }
    if cls == h5py.h5t.FLOAT:
        return {"class": "float", "size": int(t.get_size()), "order": "le" if t.get_order() == h5py.h5t.ORDER_LE else "be"}
    if cls == h5py.h5t.INTEGER:
        return {
            "class": "integer",
            "size": int(t.get_size()),
            "signed": t.get_sign() == h5py.h5t.SGN_2,
            "order": "le" if t.get_order() == h5py.h5t.ORDER_LE else "be",
        }
    return {"class": str(cls), "size": int(t.get_size())}


def _space(space) -> dict:
    kind = space.get_simple_extent_type()
    name = {h5py.h5s.SCALAR: "scalar", h5py.h5s.SIMPLE: "simple", h5py.h5s.NULL: "null"}.get(kind, str(kind))
    out = {"dataspace": name}
    if kind == h5py.h5s.SIMPLE:
        out["shape"] = list(space.shape)
    return out


def _attr_value(value):
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "SO":
            return [v.decode("utf-8", "backslashreplace") if isinstance(v, bytes) else v for v in value.ravel().tolist()]
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, h5py.Empty):
        return None
    return value


def _attrs(obj) -> dict:
    out = {}
    for name in obj.attrs:
        aid = h5py.h5a.open(obj.id, name.encode("utf8"))
        try:
            value = obj.attrs[name]
        except Exception as e:  # pragma: no cover
            value = f"<unreadable: {e}>"
        out[name] = {"type": _h5type(aid.get_type()), **_space(aid.get_space()), "numpy_dtype": str(getattr(value, "dtype", type(value).__name__)), "value": _attr_value(value)}
    return out


def _dataset(ds) -> dict:
    dcpl = ds.id.get_create_plist()
    layout = {h5py.h5d.CONTIGUOUS: "contiguous", h5py.h5d.CHUNKED: "chunked", h5py.h5d.COMPACT: "compact"}.get(dcpl.get_layout(), str(dcpl.get_layout()))
    entry = {
        "kind": "dataset",
        "type": _h5type(ds.id.get_type()),
        **_space(ds.id.get_space()),
        "numpy_dtype": str(ds.dtype),
        "layout": layout,
        "chunks": list(ds.chunks) if ds.chunks else None,
        "compression": ds.compression,
        "maxshape": list(ds.maxshape) if ds.maxshape is not None else None,
        "attrs": _attrs(ds),
    }
    data = ds[()]
    if isinstance(data, np.ndarray) and data.dtype.kind in "fiu":
        le = np.ascontiguousarray(data, dtype=data.dtype.newbyteorder("<"))
        entry["sum"] = float(data.astype(np.float64).sum())
        entry["first"] = [float(v) for v in data.ravel()[:3]]
        entry["sha256_le"] = hashlib.sha256(le.tobytes()).hexdigest()
    elif np.isscalar(data) or isinstance(data, np.generic):
        entry["value"] = _attr_value(data)
    return entry


def h5_tree(f: h5py.File) -> dict:
    """Every object, by path, in h5py's iteration order (by name)."""
    objects = {"/": {"kind": "group", "attrs": _attrs(f), "members": list(f.keys())}}

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset):
            objects["/" + name] = _dataset(obj)
        elif isinstance(obj, h5py.Group):
            objects["/" + name] = {"kind": "group", "attrs": _attrs(obj), "members": list(obj.keys())}

    f.visititems(visit)
    return {"userblock_size": f.userblock_size, "objects": objects}


def _superblock_version(raw: bytes) -> int | None:
    # The HDF5 signature may sit at 0, 512, 1024, ... (after a user block).
    sig = b"\x89HDF\r\n\x1a\n"
    offset = 0
    while offset < len(raw):
        if raw[offset : offset + 8] == sig:
            return raw[offset + 8]
        offset = 512 if offset == 0 else offset * 2
    return None


def inspect_file(path: Path) -> dict:
    raw_head = path.open("rb").read(4096)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            members = [
                {"name": i.filename, "compress_type": {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflated"}.get(i.compress_type, i.compress_type), "file_size": i.file_size}
                for i in zf.infolist()
            ]
            out = {"file": path.name, "format": "keras-zip", "members": members}
            for name in ("config.json", "metadata.json"):
                if name in zf.namelist():
                    out[name] = json.loads(zf.read(name))
            if "model.weights.h5" in zf.namelist():
                raw = zf.read("model.weights.h5")
                with h5py.File(io.BytesIO(raw), "r") as f:
                    tree = h5_tree(f)
                tree["superblock_version"] = _superblock_version(raw[:4096])
                out["model.weights.h5"] = tree
            return out
    with h5py.File(path, "r") as f:
        tree = h5_tree(f)
    tree["superblock_version"] = _superblock_version(raw_head)
    fmt = "legacy-h5" if "layer_names" in tree["objects"]["/"]["attrs"] else "weights-h5"
    return {"file": path.name, "format": fmt, **tree}


# --------------------------------------------------------------------------
# Loading


def load_into(depth: int, channels: int, weights: Path):
    keras = import_keras()
    checks = {}
    name = weights.name
    if name.endswith(".keras"):
        keras.backend.clear_session()
        t0 = time.perf_counter()
        model = keras.saving.load_model(weights)
        log(f"loaded {weights} in {time.perf_counter() - t0:.1f} s")
        reference = build(depth, channels)
        ref_layers = [(layer.name, layer.__class__.__name__) for layer in reference.layers]
        got_layers = [(layer.name, layer.__class__.__name__) for layer in model.layers]
        checks["layer_names_and_classes_match_cellfinder"] = ref_layers == got_layers
        checks["input_shape"] = _plain(tuple(model.inputs[0].shape))
        checks["variable_shapes_match_cellfinder"] = [(v.path, tuple(v.shape)) for v in model.weights] == [(v.path, tuple(v.shape)) for v in reference.weights]
        checks["compiled"] = bool(getattr(model, "compiled", False))
        if not (checks["layer_names_and_classes_match_cellfinder"] and checks["variable_shapes_match_cellfinder"]):
            missing = [n for n in ref_layers if n not in got_layers]
            checks["missing_layers"] = missing[:20]
    elif name.endswith(".h5") or name.endswith(".hdf5"):
        model = build(depth, channels)
        t0 = time.perf_counter()
        # .weights.h5: saving_lib (by object path); other .h5: legacy
        # legacy_h5_format.load_weights_from_hdf5_group (by layer order).
        model.load_weights(weights)
        log(f"loaded {weights} in {time.perf_counter() - t0:.1f} s")
    else:
        raise SystemExit(f"{weights}: expected .weights.h5, .h5 or .keras")
    return model, checks


# --------------------------------------------------------------------------
# Commands


def cmd_describe(args) -> int:
    model = build(args.depth, args.channels)
    emit(describe_model(model, args.depth, args.channels), one_line_items="layers")
    return 0


def cmd_save(args) -> int:
    keras = import_keras()
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    timings = {}
    t_all = time.perf_counter()
    t0 = time.perf_counter()
    model = build(args.depth, args.channels)
    timings["build"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    values = deterministic_weights(model, args.seed, args.depth)
    set_weights_in_order(model, values)
    timings["set_weights"] = time.perf_counter() - t0
    written = current_values(model)

    files = {
        "weights_h5": out_dir / "model.weights.h5",
        "keras": out_dir / "model.keras",
        "legacy_h5": out_dir / "legacy_keras2.h5",
    }
    t0 = time.perf_counter()
    model.save_weights(files["weights_h5"])
    timings["save_weights_h5"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    model.save(files["keras"])
    timings["save_keras"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    write_legacy_keras2_h5(model, files["legacy_h5"])
    timings["save_legacy_h5"] = time.perf_counter() - t0

    checks = {}
    # Our description of where each variable lives in .weights.h5 is right.
    desc = describe_model(model, args.depth, args.channels)
    with h5py.File(files["weights_h5"], "r") as f:
        datasets = []
        f.visititems(lambda n, o: datasets.append(n) if isinstance(o, h5py.Dataset) else None)
        predicted = [w["weights_h5_dataset"] for layer in desc["layers"] for w in layer["weights"]]
        predicted += [d["dataset"] for e in desc["weights_h5_non_layer_entries"] for d in e["datasets"]]
        ok = sorted(datasets) == sorted(predicted) and all(
            np.array_equal(f[w["weights_h5_dataset"]][()], written[w["path"]]) for layer in desc["layers"] for w in layer["weights"]
        )
        checks["weights_h5_paths_as_described"] = ok
        if not ok:
            checks["weights_h5_datasets_not_described"] = sorted(set(datasets) - set(predicted))[:20]
        # Every layer, weightless or not, has its vars group with attr name.
        groups = {f"layers/{k}/vars": f["layers"][k]["vars"].attrs.get("name") for k in f["layers"]}
        described = {layer["weights_h5_group"]: layer["name"] for layer in desc["layers"]}
        checks["weights_h5_groups_and_name_attrs_as_described"] = groups == described

    # Each file loads into a fresh cellfinder model with identical values.
    for kind, path in files.items():
        t0 = time.perf_counter()
        loaded, load_checks = load_into(args.depth, args.channels, path)
        timings[f"load_{kind}"] = time.perf_counter() - t0
        checks[f"{kind}_loads_identical"] = compare_values(written, current_values(loaded))
        if load_checks:
            checks[f"{kind}_load_checks"] = load_checks
    del loaded
    keras.backend.clear_session()

    result = {
        "network": f"resnet{args.depth}",
        "depth": args.depth,
        "channels": args.channels,
        "seed": args.seed,
        "weights": "seeded, see deterministic_weights() in keras_peer.py: He-normal conv kernels, "
        f"Dense kernel normal*{DENSE_KERNEL_STD[args.depth]}/sqrt(fan_in), Dense bias normal*0.05, "
        "BN gamma 1+0.1*normal, beta 0.1*normal, moving_mean 0.1*normal, moving_variance 1+uniform(0,0.5)",
        "files": {k: str(v) for k, v in files.items()},
        "file_sizes": {k: v.stat().st_size for k, v in files.items()},
        "weights_summary": weights_summary(model),
        "checks": checks,
    }
    if args.cubes:
        t0 = time.perf_counter()
        result["predictions"] = run_predict(model, args.cubes, args.channels)
        timings["predict_with_features"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_all
    result["timings_seconds"] = {k: round(v, 3) for k, v in timings.items()}
    ok = checks["weights_h5_paths_as_described"] and checks["weights_h5_groups_and_name_attrs_as_described"] and all(checks[f"{k}_loads_identical"]["identical"] for k in files)
    if "keras_load_checks" in checks:
        ok = ok and checks["keras_load_checks"]["layer_names_and_classes_match_cellfinder"] and checks["keras_load_checks"]["variable_shapes_match_cellfinder"]
    result["ok"] = bool(ok)
    emit(result)
    return 0 if ok else 1


def cmd_predict(args) -> int:
    t_all = time.perf_counter()
    if not Path(args.weights).is_file():
        raise SystemExit(f"{args.weights}: no such file")
    try:
        model, checks = load_into(args.depth, args.channels, Path(args.weights))
    except SystemExit:
        raise
    except Exception as e:  # Keras refused the file: say why, as JSON
        emit({"network": f"resnet{args.depth}", "weights": str(args.weights), "ok": False, "load_error": f"{type(e).__name__}: {e}"})
        return 1
    result = {
        "network": f"resnet{args.depth}",
        "depth": args.depth,
        "channels": args.channels,
        "weights": str(args.weights),
        "checks": checks,
    }
    ok = all(v for k, v in checks.items() if k.endswith("_match_cellfinder"))
    if not ok:
        result["ok"] = False
        emit(result)
        return 1
    result.update(run_predict(model, args.cubes, args.channels, args.normalise_by))
    if args.weights_summary:
        result["weights_summary"] = weights_summary(model)
    result["total_seconds"] = round(time.perf_counter() - t_all, 3)
    result["ok"] = True
    emit(result)
    return 0 if ok else 1


def cmd_train(args) -> int:
    """Keras' training loop on cellfinder's network, started the way
    cellfinder_train starts it (cellfinder main, core/classify/tools.py):

    * no --start: a new model (build_model with --learning-rate), weights
      seeded by deterministic_weights();
    * --start X.keras (--trained-model): keras.models.load_model, which
      restores the compiled Adam with its iterations, moments and learning rate;
    * --start X.weights.h5 (--continue-training --model-weights):
      build_model, then model.optimizer.build(trainable variables), then
      load_weights, which restores the optimiser state the file carries.

    Then model.fit on the cubes as one full batch per epoch, unshuffled and
    not augmented (cellfinder's loader with --no-augment; with one batch the
    order inside it does not matter), and the per-epoch loss and accuracy
    Keras logs. Saves model.keras and model.weights.h5 into --save-dir.
    """
    keras = import_keras()
    if len(args.labels) != len(args.cubes):
        raise SystemExit("--labels needs one 0/1 label per cube")
    x, _ = read_cubes(args.cubes, args.channels)
    y = keras.utils.to_categorical(np.array(args.labels), 2)
    start = Path(args.start) if args.start else None
    if start is None:
        model = build(args.depth, args.channels, args.learning_rate)
        set_weights_in_order(model, deterministic_weights(model, args.seed, args.depth))
    elif start.name.endswith(".keras"):
        keras.backend.clear_session()
        model = keras.models.load_model(start)
    else:
        model = build(args.depth, args.channels, args.learning_rate)
        model.optimizer.build(model.trainable_variables)
        model.load_weights(start)
    optimizer = model.optimizer
    before = {"iterations": int(optimizer.iterations), "learning_rate": float(optimizer.learning_rate)}
    t0 = time.perf_counter()
    history = model.fit(x, y, batch_size=len(x), epochs=args.epochs, shuffle=False, verbose=0).history
    result = {
        "start": str(start) if start else None,
        "optimizer_before": before,
        "optimizer_after": {"iterations": int(optimizer.iterations), "learning_rate": float(optimizer.learning_rate), "variables": len(optimizer.variables)},
        "loss": [float(v) for v in history["loss"]],
        "accuracy": [float(v) for v in history["accuracy"]],
        "fit_seconds": round(time.perf_counter() - t0, 3),
    }
    if args.save_dir:
        out = Path(args.save_dir)
        out.mkdir(parents=True, exist_ok=True)
        model.save(out / "model.keras")
        model.save_weights(out / "model.weights.h5")
        result["saved"] = {"keras": str(out / "model.keras"), "weights_h5": str(out / "model.weights.h5")}
    result["ok"] = True
    emit(result)
    return 0


def cmd_inspect(args) -> int:
    path = Path(args.file)
    if not path.exists():
        raise SystemExit(f"{path}: no such file")
    emit(inspect_file(path))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def net(p):
        p.add_argument("--depth", type=int, required=True, choices=DEPTHS)
        p.add_argument("--channels", type=int, required=True, choices=(1, 2))

    p = sub.add_parser("describe", help="layers, key config, output shapes and weights of cellfinder's network")
    net(p)
    p.set_defaults(func=cmd_describe)

    p = sub.add_parser("save", help="seeded weights -> model.weights.h5, model.keras, legacy_keras2.h5 (and predictions)")
    net(p)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out-dir", required=True)
    p.add_argument("--cubes", nargs="*", default=[], help="Ch0 cube TIFFs to predict (Ch1 found beside each)")
    p.set_defaults(func=cmd_save)

    p = sub.add_parser("predict", help="load a weights file and predict cubes")
    net(p)
    p.add_argument("--weights", required=True, help=".weights.h5, legacy .h5 or .keras")
    p.add_argument("--cubes", nargs="+", required=True, help="Ch0 cube TIFFs (Ch1 found beside each)")
    p.add_argument("--weights-summary", action="store_true", help="also print sum and sha256 of every loaded variable")
    p.add_argument("--normalise-by", nargs="+", help="normalise the cubes with these volumes' statistics (signal, then background), as cellfinder's --normalize-channels")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("train", help="Keras' fit on cellfinder's network, started as cellfinder_train starts it")
    net(p)
    p.add_argument("--cubes", nargs="+", required=True, help="Ch0 cube TIFFs (Ch1 found beside each)")
    p.add_argument("--labels", nargs="+", type=int, choices=(0, 1), required=True, help="1 = cell, 0 = non-cell, per cube")
    p.add_argument("--epochs", type=int, required=True)
    p.add_argument("--start", help="a .keras (as --trained-model) or .weights.h5 (as --continue-training --model-weights)")
    p.add_argument("--seed", type=int, default=1, help="seed of the new model's weights (without --start)")
    p.add_argument("--learning-rate", type=float, default=0.0001, help="cellfinder_train's --learning-rate")
    p.add_argument("--save-dir")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("inspect", help="HDF5 tree of a .weights.h5 / legacy .h5, or the members of a .keras zip")
    p.add_argument("--file", required=True)
    p.set_defaults(func=cmd_inspect)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
