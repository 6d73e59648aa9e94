#!/usr/bin/env python3
"""cellfinder's channel normalisation, written out in numpy, for checking ours.

cellfinder's classification with ``normalize_channels=True`` (its main
branch, the 1.11 line; cellfinder 1.10.1, the newest on PyPI and the one in
this venv, has no such option) normalises each channel by
``dataset_mean_std(volume, 50)`` (``core/tools/image_processing.py``):

* planes: every plane when there are at most 50, else every
  ``int(n / 50)``-th plane from plane 0;
* values converted to float64 unscaled (``get_data_converter``: an integer
  type that float64 holds is cast, not scaled);
* the mean and the sample standard deviation (n - 1) of all their voxels,
  which its plane-by-plane Welford merge computes exactly.

This module computes the same numbers directly in float64 numpy, written
here from that description (not cellfinder's code). Cubes: cellfinder's
dataset does ``data[..., c] -= mean; data[..., c] /= std`` on float32 data
in place (numpy 2 keeps a Python float scalar's operation in float32, as
torch does).

  stats VOLUME...     one JSON line: [{"volume", "mean", "std", "planes"}, ...]

A volume is a folder of 2D TIFF planes (natural order) or a .txt file listing
plane files, as brainglobe-utils reads them. Exit status 0 ok, 2 usage error.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import tifffile
from natsort import natsorted

# cellfinder's default normalization_n_sampling_planes (classify.main, napari).
SAMPLING_PLANES = 50


def sampled_planes(planes: int) -> range:
    step = 1 if planes <= SAMPLING_PLANES else int(planes / SAMPLING_PLANES)
    return range(0, planes, step)


def plane_files(volume: Path) -> list[Path]:
    if volume.is_dir():
        return natsorted(p for p in volume.iterdir() if p.suffix == ".tif")
    if volume.suffix == ".txt":
        # brainglobe-utils' read_with_dask sorts a list's files too (get_sorted_file_paths).
        return natsorted(Path(line.rstrip()) for line in volume.read_text().splitlines() if line.strip())
    raise SystemExit(f"{volume}: give a folder of .tif planes or a .txt list of them")


def channel_statistics(volume: Path) -> dict:
    files = plane_files(volume)
    values = np.concatenate([tifffile.imread(files[i]).astype(np.float64).ravel() for i in sampled_planes(len(files))])
    return {"volume": str(volume), "mean": float(values.mean()), "std": float(values.std(ddof=1)), "planes": len(files)}


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
