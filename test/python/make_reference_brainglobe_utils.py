#!/usr/bin/env python3
"""Generate golden writer outputs with the real brainglobe-utils package.

Test tooling for the TypeScript reimplementation: the files written here are
what brainglobe-utils itself writes, so our XML / YAML writers can be compared
with them byte for byte.

* ``cells_mixed_types.xml`` -- ``brainglobe_utils.IO.cells.save_cells`` on a
  list of ``Cell`` objects with mixed types (CELL, NO_CELL/UNKNOWN, ARTIFACT)
  and awkward coordinates (0, negative, float), default arguments.
* ``cells_mixed_types_artifact_keep_false.xml`` -- same cells,
  ``artifact_keep=False``.
* ``training.yaml`` -- ``brainglobe_utils.IO.yaml.save_yaml`` on a dict of the
  shape napari curation's ``_save_yaml_file`` builds (cellfinder main, with
  signal/background mean and std).
* ``training_single_channel.yaml`` -- same, no background layer
  (``bg_channel: -1``, no ``bg_mean``/``bg_std``).
* ``training_cellfinder_1.10.1.yaml`` -- the shape the released cellfinder
  1.10.1 writes (no mean/std keys).
* ``training_float_edge_cases.yaml`` -- float formatting corner cases.
* ``capture.json`` -- for every call: the exact call, stdout/log output
  (warnings) and what ``get_cells`` / ``read_yaml_section`` read back.

Run with the reference venv, from the repository root::

    /work/venvs/cfref/bin/python test/python/make_reference_brainglobe_utils.py
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import sys
import warnings
from importlib.metadata import version
from pathlib import Path

from brainglobe_utils.cells.cells import Cell
from brainglobe_utils.IO.cells import get_cells, save_cells
from brainglobe_utils.IO.yaml import read_yaml_section, save_yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO_ROOT / "test" / "fixtures" / "brainglobe-utils"


def make_cells():
    """The input cells, with a description of each (fresh objects per call,
    because save_cells changes ARTIFACT cells to UNKNOWN in place)."""
    specs = [
        # (constructor pos, constructor type, description)
        ([10, 20, 30], Cell.CELL, "plain CELL"),
        ([12.7, 0, 5], Cell.NO_CELL, "float x 12.7, y 0"),
        ([300, 400.99, 2], Cell.UNKNOWN, "float y 400.99"),
        ([-3.7, 45, 1], Cell.CELL, "negative float x -3.7"),
        ([100, 200, 3], Cell.ARTIFACT, "ARTIFACT"),
        ([7, 8, 0], Cell.ARTIFACT, "ARTIFACT with z 0"),
        ([55, 66, 77], "cell", "type given as string 'cell'"),
        ([1, 1, 1], Cell.NO_CELL, "all coordinates 1 (smallest kept)"),
    ]
    cells = []
    for pos, cell_type, _ in specs:
        cells.append(Cell(pos, cell_type))
    # A float coordinate set after construction (the constructor truncates,
    # so this is the only way a float reaches the XML writer), e.g. cells
    # that went through Cell.transform() without integer=True.
    late = Cell([0, 0, 0], Cell.CELL)
    late.x, late.y, late.z = 12.7, 0.9, 3.5
    cells.append(late)
    descriptions = [d for _, _, d in specs] + [
        "CELL with x=12.7, y=0.9, z=3.5 assigned after construction"
    ]
    inputs = [
        {"pos": p, "cell_type": t if isinstance(t, str) else int(t)}
        for p, t, _ in specs
    ] + [{"pos": [0, 0, 0], "cell_type": 2,
          "then_assigned": {"x": 12.7, "y": 0.9, "z": 3.5}}]
    return cells, descriptions, inputs


def cell_state(cell):
    return {"x": cell.x, "y": cell.y, "z": cell.z, "type": cell.type}


@contextlib.contextmanager
def capture_output():
    """Capture stdout, stderr, logging records and Python warnings."""
    out, err = io.StringIO(), io.StringIO()
    records = []

    class ListHandler(logging.Handler):
        def emit(self, record):
            records.append(f"{record.levelname}: {record.getMessage()}")

    handler = ListHandler(level=logging.DEBUG)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    result = {}
    with warnings.catch_warnings(record=True) as warns:
        warnings.simplefilter("always")
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            yield result
    root.removeHandler(handler)
    root.setLevel(old_level)
    result.update(
        stdout=out.getvalue(),
        stderr=err.getvalue(),
        logging=records,
        warnings=[str(w.message) for w in warns],
    )


def write_xml(out_dir: Path, name: str, **kwargs):
    cells, descriptions, inputs = make_cells()
    before = [cell_state(c) for c in cells]
    path = out_dir / name
    with capture_output() as cap:
        save_cells(cells, str(path), **kwargs)
    after = [cell_state(c) for c in cells]
    read_back = [cell_state(c) for c in get_cells(str(path))]
    call = f'save_cells(cells, "{name}"' + "".join(
        f", {k}={v!r}" for k, v in kwargs.items()
    ) + ")"
    return {
        "file": name,
        "call": call,
        "inputs": [
            dict(inp, description=d, cell_before_save_cells=b)
            for inp, d, b in zip(inputs, descriptions, before)
        ],
        "cells_after_save_cells": after,
        "captured": cap,
        "get_cells_read_back": read_back,
    }


def curation_yaml_contents(cell_dir, no_cell_dir, signal_stat, bg_stat):
    """A dict of the shape napari curation's _save_yaml_file builds
    (cellfinder main): one section per cube folder."""
    bg_channel = 1 if bg_stat is not None else -1

    def section(cube_dir, cube_type):
        s = {
            "cube_dir": str(cube_dir),
            "cell_def": "",
            "type": cube_type,
            "signal_channel": 0,
            "bg_channel": bg_channel,
            "signal_mean": signal_stat[0],
            "signal_std": signal_stat[1],
        }
        if bg_stat is not None:
            s["bg_mean"] = bg_stat[0]
            s["bg_std"] = bg_stat[1]
        return s

    return {
        "data": [section(cell_dir, "cell"), section(no_cell_dir, "no_cell")]
    }


def released_yaml_contents(cell_dir, no_cell_dir):
    """The shape cellfinder 1.10.1 (released) writes: no mean/std."""
    return {
        "data": [
            {"cube_dir": str(cell_dir), "cell_def": "", "type": "cell",
             "signal_channel": 0, "bg_channel": 1},
            {"cube_dir": str(no_cell_dir), "cell_def": "", "type": "no_cell",
             "signal_channel": 0, "bg_channel": 1},
        ]
    }


def write_yaml(out_dir: Path, name: str, contents: dict):
    path = out_dir / name
    with capture_output() as cap:
        save_yaml(contents, str(path))
    read_back = read_yaml_section(str(path), "data")
    return {
        "file": name,
        "call": f'save_yaml(contents, "{name}")',
        "contents": contents,
        "captured": cap,
        "read_yaml_section_data": read_back,
        "round_trip_equal": read_back == contents["data"],
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)

    cell_dir = "/home/user/training/cells"
    no_cell_dir = "/home/user/training/non_cells"
    results = {
        "versions": {
            n: version(n) for n in ["brainglobe-utils", "PyYAML", "cellfinder"]
        },
        "xml": [
            write_xml(out, "cells_mixed_types.xml"),
            write_xml(
                out, "cells_mixed_types_artifact_keep_false.xml",
                artifact_keep=False,
            ),
        ],
        "yaml": [
            write_yaml(out, "training.yaml", curation_yaml_contents(
                cell_dir, no_cell_dir, (123.456789, 0.1),
                (411.63903132910454, 52.25))),
            write_yaml(out, "training_single_channel.yaml",
                       curation_yaml_contents(
                           cell_dir, no_cell_dir, (123.456789, 0.1), None)),
            write_yaml(out, "training_cellfinder_1.10.1.yaml",
                       released_yaml_contents(cell_dir, no_cell_dir)),
            write_yaml(out, "training_float_edge_cases.yaml", {
                "data": [{
                    "cube_dir": "C:\\data\\cells with space",
                    "cell_def": "",
                    "type": "cell",
                    "signal_channel": 0,
                    "bg_channel": 1,
                    "signal_mean": 1e-05,
                    "signal_std": 12345678901234.5,
                    "bg_mean": 1e16,
                    "bg_std": 100.0,
                }]
            }),
        ],
    }
    (out / "capture.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
