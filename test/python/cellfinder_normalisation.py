#!/usr/bin/env python3
"""cellfinder's own channel normalisation, for checking ours.

Statistics: cellfinder's ``dataset_mean_std`` (``core/tools/image_processing.py``
at cellfinder 5aa244a, the 1.11 line; see test/fixtures/cellfinder-main),
compiled from that file's source and run on the whole volume as a numpy
array, with cellfinder's default of 50 sampling planes, exactly as
``cellfinder.core.classify.classify.main(normalize_channels=True)`` calls it.
Its ``get_data_converter`` is compiled from the installed cellfinder's
``core/tools/tools.py`` (that module imports torch, which this venv lacks).

Cubes: ``CuboidArrayDataset.get_points_data``'s in-place
``data[..., c] -= mean; data[..., c] /= std`` on float32 data (numpy 2 keeps
a Python float scalar's operation in float32, as torch does).

  stats VOLUME...     one JSON line: [{"volume", "mean", "std", "planes"}, ...]

A volume is a folder of 2D TIFF planes (natural order) or a .txt file listing
plane files, as brainglobe-utils reads them. Exit status 0 ok, 2 usage error.
"""

from __future__ import annotations

import ast
import json
import sys
import types
from functools import partial
from pathlib import Path
from typing import Callable, Type

import numpy as np
import tifffile
import tqdm
from natsort import natsorted

import cellfinder

REPO_ROOT = Path(__file__).resolve().parents[2]
MAIN_IMAGE_PROCESSING = REPO_ROOT / "test" / "fixtures" / "cellfinder-main" / "image_processing.py"
# cellfinder's default normalization_n_sampling_planes (classify.main, napari).
SAMPLING_PLANES = 50
CONVERTER_FUNCTIONS = (
    "get_max_possible_int_value",
    "get_min_possible_int_value",
    "_unchanged",
    "_float_to_float_scale_down",
    "_int_to_float_scale_down",
    "_to_float_unscaled",
    "get_data_converter",
)


def _compile_functions(source: Path, names: tuple[str, ...], namespace: dict) -> dict:
    """Executes only the module-level `def`s named, from cellfinder's source, in `namespace`."""
    tree = ast.parse(source.read_text(), filename=str(source))
    nodes = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in names]
    missing = set(names) - {n.name for n in nodes}
    if missing:
        raise RuntimeError(f"{source}: no def {', '.join(sorted(missing))}")
    exec(compile(ast.Module(body=nodes, type_ignores=[]), str(source), "exec"), namespace)
    return namespace


def cellfinder_dataset_mean_std() -> Callable:
    tools = _compile_functions(
        Path(cellfinder.__file__).parent / "core" / "tools" / "tools.py",
        CONVERTER_FUNCTIONS,
        {"np": np, "partial": partial, "Type": Type, "Callable": Callable},
    )
    # `types.array` is only its parameter's annotation (numpy or dask array).
    namespace = {"np": np, "tqdm": tqdm, "types": types.SimpleNamespace(array=np.ndarray), "get_data_converter": tools["get_data_converter"]}
    return _compile_functions(MAIN_IMAGE_PROCESSING, ("dataset_mean_std",), namespace)["dataset_mean_std"]


def plane_files(volume: Path) -> list[Path]:
    if volume.is_dir():
        return natsorted(p for p in volume.iterdir() if p.suffix == ".tif")
    if volume.suffix == ".txt":
        # brainglobe-utils' read_with_dask sorts a list's files too (get_sorted_file_paths).
        return natsorted(Path(line.rstrip()) for line in volume.read_text().splitlines() if line.strip())
    raise SystemExit(f"{volume}: give a folder of .tif planes or a .txt list of them")


def read_volume(volume: Path) -> np.ndarray:
    return np.stack([tifffile.imread(p) for p in plane_files(volume)], axis=0)


def channel_statistics(volume: Path) -> dict:
    data = read_volume(volume)
    mean, std = cellfinder_dataset_mean_std()(data, SAMPLING_PLANES, show_progress=False)
    return {"volume": str(volume), "mean": mean, "std": std, "planes": int(data.shape[0])}


def normalise_cubes(batch: np.ndarray, statistics: list[tuple[float, float]]) -> np.ndarray:
    """(batch, ..., channels) float32, each channel c: (x - mean) / std, in place, as cellfinder's dataset does."""
    for channel, (mean, std) in enumerate(statistics):
        batch[..., channel] -= mean
        batch[..., channel] /= std
    return batch


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] != "stats":
        print(__doc__, file=sys.stderr)
        return 2
    print(json.dumps([channel_statistics(Path(v)) for v in argv[1:]]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
