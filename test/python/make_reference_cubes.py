#!/usr/bin/env python3
"""Generate golden cube-extraction fixtures with the real cellfinder package.

This script is test tooling for the TypeScript reimplementation of
cellfinder's cube extraction. It does not implement cube extraction itself:
every cube is produced by cellfinder's own ``CuboidArrayDataset`` (and its
``CuboidBatchSampler``), configured and driven exactly the way the napari
curation widget's ``extract_cubes`` does it, and written by cellfinder's own
``save_cube`` function.

``cellfinder.napari.curation`` cannot be imported without napari (and Qt), so
``save_cube`` is loaded from the *installed* ``cellfinder/napari/curation.py``
source by compiling only that one function definition (see
``load_cellfinder_save_cube``). Nothing of cellfinder is copied into this file.

Outputs (under ``--out``, default ``test/fixtures/cellfinder-rescaled``):

* ``z{vz}_y{vy}_x{vx}/pCellz{z}y{y}x{x}Ch{c}.tif`` -- one float32 TIFF of
  20 x 50 x 50 (z, y, x) per channel (Ch0 = signal, Ch1 = background).
* ``z{vz}_y{vy}_x{vx}/points.json`` -- every input point, whether cellfinder
  extracted it or dropped it, and the data-space cuboid ranges.
* ``trilinear_check.json`` -- independent numpy trilinear interpolation
  (align_corners=False; float64, float32, and float32 with a fused
  multiply-add per blend) versus every rescaled cube cellfinder made.

Run with the reference venv, from the repository root::

    /work/venvs/cfref/bin/python test/python/make_reference_cubes.py
"""

from __future__ import annotations

import argparse
import ast
import json
import platform
import sys
from importlib.metadata import version
from pathlib import Path

import numpy as np
import tifffile
import torch
from brainglobe_utils.IO.cells import get_cells
from natsort import natsorted

import cellfinder
from cellfinder.core.classify.cube_generator import (
    CuboidArrayDataset,
    CuboidBatchSampler,
    get_data_cuboid_range,
)

# napari curation's defaults (network trained at 5 x 1 x 1 um, cube of
# 20 x 50 x 50 voxels), both in z, y, x order.
NETWORK_VOXEL_SIZES = (5, 1, 1)
NETWORK_CUBOID_VOXELS = (20, 50, 50)

# Data voxel sizes (z, y, x, in um) to generate rescaled cubes for.
# (7.25, 2, 2): upsampling in every axis, non-integer z factor.
# (10, 1.5, 1.5): upsampling, non-integer y/x factor.
# (4, 0.8, 0.8): downsampling in every axis.
RESCALED_VOXEL_SIZES = [(7.25, 2, 2), (10, 1.5, 1.5), (4, 0.8, 0.8)]

# Point sets (relative to the data dir). Each is its own dataset, the way
# napari curation uses one dataset per points layer.
CUBE_EXTRACT_XML = "cube_extract/cells.xml"
CANDIDATES_XML = "candidates/candidates.xml"

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA = Path("/work/shared/data/cellfinder")
DEFAULT_OUT = REPO_ROOT / "test" / "fixtures" / "cellfinder-rescaled"


def load_cellfinder_save_cube():
    """Return cellfinder's own ``save_cube`` without importing napari.

    Parses the installed ``cellfinder/napari/curation.py``, picks out the
    module-level ``def save_cube`` node, and executes only that definition
    in a namespace holding the names it uses (``np``, ``tifffile``, ``Path``).
    """
    try:  # prefer the real import if napari happens to be installed
        from cellfinder.napari.curation import save_cube

        return save_cube, "import cellfinder.napari.curation.save_cube"
    except ImportError:
        pass

    src_path = Path(cellfinder.__file__).parent / "napari" / "curation.py"
    tree = ast.parse(src_path.read_text(), filename=str(src_path))
    nodes = [
        n
        for n in tree.body
        if isinstance(n, ast.FunctionDef) and n.name == "save_cube"
    ]
    if len(nodes) != 1:
        raise RuntimeError(f"save_cube not found in {src_path}")
    module = ast.Module(body=nodes, type_ignores=[])
    namespace = {"np": np, "tifffile": tifffile, "Path": Path}
    exec(compile(module, str(src_path), "exec"), namespace)
    how = (
        f"def save_cube compiled from installed {src_path} "
        f"(lines {nodes[0].lineno}-{nodes[0].end_lineno}); napari not "
        "installed"
    )
    return namespace["save_cube"], how


def load_stack(folder: Path) -> np.ndarray:
    """Read a folder of 2D TIFF planes into a (z, y, x) array.

    Planes are ordered by natural sort of the file names (numeric suffix).
    """
    files = natsorted(p for p in folder.iterdir() if p.suffix == ".tif")
    planes = [tifffile.imread(p) for p in files]
    return np.stack(planes, axis=0)


def voxel_dir_name(voxel_sizes) -> str:
    """(7.25, 2, 2) -> 'z7.25_y2_x2' (no trailing '.0')."""

    def fmt(v):
        return f"{v:g}"

    vz, vy, vx = voxel_sizes
    return f"z{fmt(vz)}_y{fmt(vy)}_x{fmt(vx)}"


def curation_dataset(signal, background, cells, voxel_sizes):
    """cellfinder's CuboidArrayDataset configured as napari curation does."""
    return CuboidArrayDataset(
        signal_array=signal,
        background_array=background,
        points=cells,
        data_voxel_sizes=voxel_sizes,
        network_voxel_sizes=NETWORK_VOXEL_SIZES,
        network_cuboid_voxels=NETWORK_CUBOID_VOXELS,
        axis_order=("z", "y", "x"),
        output_axis_order=("z", "y", "x", "c"),
        max_axis_0_cuboids_buffered=1,
        target_output="index",
    )


def extract_like_napari(
    signal, background, cells, voxel_sizes, out_dir: Path, save_cube
):
    """Extract and save cubes exactly as napari curation's extract_cubes.

    Returns ``{input_index: [file names]}`` for the points cellfinder
    extracted (points near the edges are silently dropped by cellfinder).
    """
    dataset = curation_dataset(signal, background, cells, voxel_sizes)
    written = {}
    if len(dataset) == 0:
        # Every point was dropped. CuboidBatchSampler raises
        # "ValueError: need at least one array to concatenate" on an empty
        # dataset (so napari curation would fail here too); just skip.
        return dataset, written
    sampler = CuboidBatchSampler(
        dataset=dataset, batch_size=1, sort_by_axis="z"
    )
    for batch in sampler:
        images, points_index = dataset[batch]
        for image, point_index in zip(images, points_index):
            image = image.numpy()
            idx = int(point_index.item())
            cell = cells[idx]
            names = []
            for channel in range(image.shape[-1]):
                save_cube(image, cell.to_dict(), channel, out_dir)
                d = cell.to_dict()
                name = f"pCellz{d['z']}y{d['y']}x{d['x']}Ch{channel}.tif"
                if not (out_dir / name).is_file():
                    raise RuntimeError(f"save_cube did not write {name}")
                names.append(name)
            if idx in written:
                raise RuntimeError(f"point {idx} extracted twice")
            written[idx] = names
    return dataset, written


def point_records(cells, source, dataset, written):
    """One JSON record per input point, in input order."""
    records = []
    for i, cell in enumerate(cells):
        rec = {
            "index": i,
            "x": cell.x,
            "y": cell.y,
            "z": cell.z,
            "type": cell.type,
            "source": source,
            "extracted": i in written,
        }
        # data-space cuboid ranges [start, end) as cellfinder computes them
        ranges = {}
        outside = []  # axes whose range leaves the volume (informational)
        for ax, n, size in zip(
            dataset.axis_order, dataset.data_cuboid_voxels, dataset.stack_shape
        ):
            start, end = get_data_cuboid_range(getattr(cell, ax), n, ax)
            ranges[ax] = [start, end]
            if start < 0 or end > size:
                outside.append(ax)
        rec["data_cuboid_range"] = ranges
        # cellfinder's own decision (the point survived its edge filter)
        # must agree with the ranges it reports
        if (i in written) == bool(outside):
            raise RuntimeError(f"edge test disagrees for point {i}")
        if i in written:
            rec["files"] = written[i]
        else:
            rec["dropped_reason"] = "edge"
            rec["dropped_axes"] = outside
        records.append(rec)
    return records


def make_folder(
    data_dir, signal, background, voxel_sizes, sources, out_root, save_cube
):
    """Extract all point sets at one voxel size into its own folder."""
    out_dir = out_root / voxel_dir_name(voxel_sizes)
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("pCell*.tif"):
        old.unlink()

    all_records = []
    seen_files = set()
    data_cuboid_voxels = None
    for source in sources:
        cells = get_cells(str(data_dir / source))
        dataset, written = extract_like_napari(
            signal, background, cells, voxel_sizes, out_dir, save_cube
        )
        data_cuboid_voxels = list(dataset.data_cuboid_voxels)
        for names in written.values():
            clash = seen_files.intersection(names)
            if clash:
                raise RuntimeError(f"file name clash: {clash}")
            seen_files.update(names)
        all_records.extend(point_records(cells, source, dataset, written))

    doc = {
        "data_voxel_sizes_zyx_um": list(voxel_sizes),
        "network_voxel_sizes_zyx_um": list(NETWORK_VOXEL_SIZES),
        "network_cuboid_voxels_zyx": list(NETWORK_CUBOID_VOXELS),
        "data_cuboid_voxels_zyx": data_cuboid_voxels,
        "volume_shape_zyx": list(signal.shape),
        "channels": {"0": "signal", "1": "background"},
        "cube_dtype": "float32",
        "cube_axis_order": ["z", "y", "x"],
        "n_points": len(all_records),
        "n_extracted": sum(r["extracted"] for r in all_records),
        "points": all_records,
    }
    return out_dir, doc


def compare_with_golden(out_dir: Path, golden_dir: Path) -> dict:
    """Compare our unscaled cubes with the cubes shipped in the test data."""
    result = {"golden_dir": str(golden_dir), "files": {}}
    all_equal = True
    for golden in sorted(golden_dir.glob("*.tif")):
        ours_path = out_dir / golden.name
        g = tifffile.imread(golden)
        o = tifffile.imread(ours_path)
        equal = g.shape == o.shape and np.array_equal(
            g.astype(np.float64), o.astype(np.float64)
        )
        all_equal &= bool(equal)
        result["files"][golden.name] = {
            "golden_dtype": str(g.dtype),
            "ours_dtype": str(o.dtype),
            "shape": list(o.shape),
            "values_equal": bool(equal),
            "max_abs_diff": float(
                np.max(np.abs(g.astype(np.float64) - o.astype(np.float64)))
            ),
        }
    result["all_values_equal"] = all_equal
    return result


# --- independent numpy trilinear reference, for the precision self-check ---
#
# These are written from the align_corners=False definition, not from torch:
#   scale = in / out;  src = max((dst + 0.5) * scale - 0.5, 0)
#   i0 = min(floor(src), in - 1);  i1 = min(i0 + 1, in - 1)
#   l1 = src - i0;  l0 = 1 - l1;  value = v[i0] * l0 + v[i1] * l1
# applied one axis at a time (x, then y, then z). An axis whose size does not
# change is copied unchanged.


def _axis_coords(n_in, n_out, dtype):
    """Source indices and weights for one axis, computed in ``dtype``."""
    if n_in == n_out:
        i0 = np.arange(n_out)
        return i0, i0, np.ones(n_out, dtype), np.zeros(n_out, dtype)
    scale = dtype(n_in) / dtype(n_out)
    dst = np.arange(n_out, dtype=dtype)
    src = np.maximum((dst + dtype(0.5)) * scale - dtype(0.5), dtype(0))
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    l1 = (src - i0.astype(dtype)).astype(dtype)
    l0 = (dtype(1) - l1).astype(dtype)
    return i0, i1, l0, l1


def _fma_f32(a, b, c):
    """float32 fused multiply-add a * b + c, rounded once to float32.

    a * b of two float32 values is exact in float64; the sum is then rounded
    to float64 and to float32 (like Math.fround(a * b + c) in JavaScript).
    """
    a, b, c = (np.asarray(v, np.float64) for v in (a, b, c))
    return (a * b + c).astype(np.float32)


def numpy_trilinear(cube, out_shape, dtype, fused=False):
    """Separable trilinear resize of a (z, y, x) cube.

    ``fused=False``: every operation rounded to ``dtype``.
    ``fused=True`` (float32 only): each 2-tap blend is computed as
    ``fma(lo, l0, round32(hi * l1))`` -- one rounding for the lo term.
    """
    a = cube.astype(dtype)
    for axis in (2, 1, 0):  # x, y, z
        i0, i1, l0, l1 = _axis_coords(a.shape[axis], out_shape[axis], dtype)
        shape = [1, 1, 1]
        shape[axis] = -1
        l0, l1 = l0.reshape(shape), l1.reshape(shape)
        lo = np.take(a, i0, axis=axis)
        hi = np.take(a, i1, axis=axis)
        if fused:
            a = _fma_f32(lo, l0, (hi * l1).astype(np.float32))
        else:
            a = (lo * l0 + hi * l1).astype(dtype)
    return a


TRILINEAR_VARIANTS = {
    "float64": dict(dtype=np.float64),
    "float32": dict(dtype=np.float32),
    "float32_fma_x_then_y_then_z": dict(dtype=np.float32, fused=True),
}


def _compare(ref, raw):
    out = {}
    for name, kw in TRILINEAR_VARIANTS.items():
        got = numpy_trilinear(raw, NETWORK_CUBOID_VOXELS, **kw)
        diff = np.abs(got.astype(np.float64) - ref.astype(np.float64))
        out[name] = {
            "max_abs_diff": float(diff.max()),
            "n_voxels_differing": int((diff > 0).sum()),
            "n_voxels": int(diff.size),
        }
    return out


def trilinear_check(signal, background, cells, voxel_sizes, source):
    """Compare cellfinder's rescaled cubes with the numpy variants.

    Returns per-point, per-channel results for every extractable point.
    """
    dataset = curation_dataset(signal, background, cells, voxel_sizes)
    results = []
    for k in range(len(dataset)):
        images, idx = dataset[[k]]
        cell = cells[int(idx[0].item())]
        ranges = [
            get_data_cuboid_range(getattr(cell, ax), n, ax)
            for ax, n in zip("zyx", dataset.data_cuboid_voxels)
        ]
        sl = tuple(slice(s, e) for s, e in ranges)
        rec = {
            "point_xyz": [cell.x, cell.y, cell.z],
            "source": source,
            "data_cuboid_range_zyx": [list(r) for r in ranges],
            "channels": {},
        }
        for ch, vol in enumerate([signal, background]):
            rec["channels"][str(ch)] = _compare(
                images[0, ..., ch].numpy(), vol[sl]
            )
        results.append(rec)
    return results


def summarize_checks(records):
    """Worst case per variant over a list of trilinear_check records."""
    out = {}
    for name in TRILINEAR_VARIANTS:
        items = [
            ch[name] for r in records for ch in r["channels"].values()
        ]
        out[name] = {
            "max_abs_diff": max(i["max_abs_diff"] for i in items),
            "n_voxels_differing": sum(i["n_voxels_differing"] for i in items),
            "n_voxels": sum(i["n_voxels"] for i in items),
        }
    return out


def versions() -> dict:
    names = ["cellfinder", "brainglobe-utils", "torch", "numpy", "tifffile"]
    out = {n: version(n) for n in names}
    out["python"] = platform.python_version()
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)

    save_cube, save_cube_how = load_cellfinder_save_cube()
    print(f"save_cube: {save_cube_how}")
    print(f"versions: {versions()}")

    signal = load_stack(args.data / "signal")
    background = load_stack(args.data / "background")
    print(f"signal {signal.shape} {signal.dtype}, background "
          f"{background.shape} {background.dtype}")

    summary = {"versions": versions(), "save_cube": save_cube_how}

    # rescaled cubes, all points
    for vs in RESCALED_VOXEL_SIZES:
        out_dir, doc = make_folder(
            args.data, signal, background, vs,
            [CUBE_EXTRACT_XML, CANDIDATES_XML], args.out, save_cube,
        )
        (out_dir / "points.json").write_text(json.dumps(doc, indent=2) + "\n")
        dropped = [
            (r["source"], r["index"], r["x"], r["y"], r["z"])
            for r in doc["points"] if not r["extracted"]
        ]
        print(f"{out_dir.name}: data cuboid {doc['data_cuboid_voxels_zyx']}, "
              f"extracted {doc['n_extracted']}/{doc['n_points']}, "
              f"dropped {len(dropped)}")
        summary[out_dir.name] = {
            "extracted": doc["n_extracted"], "points": doc["n_points"],
        }

    # no rescaling, the 2 cube_extract points, compared with the golden cubes
    out_dir, doc = make_folder(
        args.data, signal, background, NETWORK_VOXEL_SIZES,
        [CUBE_EXTRACT_XML], args.out, save_cube,
    )
    cmp = compare_with_golden(out_dir, args.data / "cube_extract" / "cubes")
    doc["golden_comparison"] = cmp
    (out_dir / "points.json").write_text(json.dumps(doc, indent=2) + "\n")
    print(f"{out_dir.name}: golden comparison all equal = "
          f"{cmp['all_values_equal']}")
    summary[out_dir.name] = {
        "extracted": doc["n_extracted"], "points": doc["n_points"],
        "golden_all_values_equal": cmp["all_values_equal"],
    }

    # precision self-check: cellfinder's cubes vs numpy trilinear variants.
    # The first cube_extract point at (7.25, 2, 2) is the headline case; all
    # extractable points at all rescaled voxel sizes are checked too.
    check = {
        "torch_num_threads": torch.get_num_threads(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "variants": {
            "float64": "separable x,y,z; all arithmetic in float64",
            "float32": "separable x,y,z; every op rounded to float32",
            "float32_fma_x_then_y_then_z": (
                "separable x,y,z in float32; each blend is "
                "fma(lo, l0, float32(hi * l1))"
            ),
        },
        "by_voxel_size": {},
    }
    for vs in RESCALED_VOXEL_SIZES:
        recs = []
        for source in [CUBE_EXTRACT_XML, CANDIDATES_XML]:
            cells = get_cells(str(args.data / source))
            recs += trilinear_check(signal, background, cells, vs, source)
        check["by_voxel_size"][voxel_dir_name(vs)] = {
            "n_cubes": len(recs),
            "summary": summarize_checks(recs),
            "points": recs,
        }
    head = check["by_voxel_size"]["z7.25_y2_x2"]["points"][0]
    check["headline_point_7.25_2_2"] = head
    (args.out / "trilinear_check.json").write_text(
        json.dumps(check, indent=2) + "\n"
    )
    print("trilinear check, point", head["point_xyz"], "at (7.25, 2, 2):")
    print(json.dumps(head["channels"], indent=2))
    for name, v in check["by_voxel_size"].items():
        print(name, v["n_cubes"], "cubes:", json.dumps(v["summary"]))
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
