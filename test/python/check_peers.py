#!/usr/bin/env python3
"""Reads files our TypeScript core wrote with cellfinder's own readers.

Given a manifest (JSON, written by test/peers.test.ts) listing our cube
TIFFs, Cell Counter XML files and training.yaml files together with what each
should contain, this checks them with:

* tifffile (what cellfinder reads cubes with),
* brainglobe-utils' ``get_cells`` (what cellfinder and napari read XML with),
* brainglobe-utils' ``read_yaml_section`` and cellfinder's ``TiffDir`` /
  ``TiffFile`` (what ``cellfinder_train``'s ``get_tiff_files`` uses), run
  from the working directory cellfinder would be run from.

Prints one line per check and exits 1 if any failed.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import tifffile
from brainglobe_utils.IO.cells import get_cells
from brainglobe_utils.IO.yaml import read_yaml_section
from cellfinder.core.tools.tiff import TiffDir

failures: list[str] = []


def check(ok: bool, what: str) -> None:
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        failures.append(what)


def check_cube(item: dict) -> None:
    data = tifffile.imread(item["file"])
    expected = np.fromfile(item["expected_float32_le"], dtype="<f4").reshape(20, 50, 50)
    check(data.shape == (20, 50, 50), f"{item['file']}: tifffile shape {data.shape}")
    check(data.dtype == np.float32, f"{item['file']}: dtype {data.dtype}")
    check(np.array_equal(data, expected), f"{item['file']}: values equal what we meant to write")
    with tifffile.TiffFile(item["file"]) as tif:
        check(len(tif.series) == 1 and tif.series[0].shape == (20, 50, 50), f"{item['file']}: one (20, 50, 50) series")


def check_xml(item: dict) -> None:
    cells = get_cells(item["file"])
    got = [[c.x, c.y, c.z, c.type] for c in cells]
    check(got == item["expected_points"], f"{item['file']}: brainglobe-utils reads {len(got)} points with the same positions and types")


def check_yaml(item: dict) -> None:
    # cellfinder_train resolves relative cube_dir against its working directory.
    os.chdir(item["run_from"])
    entries = read_yaml_section(item["file"], "data")
    check(len(entries) == len(item["expected_entries"]), f"{item['file']}: {len(entries)} data entries")
    for entry, expected in zip(entries, item["expected_entries"]):
        channels = [entry["signal_channel"]] if entry["bg_channel"] < 0 else [entry["signal_channel"], entry["bg_channel"]]
        # As get_tiff_files in cellfinder 1.10.1 (main adds a channel-metadata argument).
        tiffs = TiffDir(entry["cube_dir"], channels, entry["type"]).make_tifffile_list()
        positions = sorted([c.x, c.y, c.z] for c in (t.as_cell() for t in tiffs))
        check(entry["type"] == expected["type"], f"{item['file']}: type {entry['type']}")
        check(all(t.files_exist() for t in tiffs), f"{item['file']}: every channel file of {entry['cube_dir']} exists")
        check(positions == sorted(expected["positions"]), f"{item['file']}: cellfinder lists {len(positions)} cubes in {entry['cube_dir']} as expected")
        for key in ("signal_mean", "signal_std", "bg_mean", "bg_std"):
            if key in expected:
                check(entry.get(key) == expected[key], f"{item['file']}: {key} = {entry.get(key)}")


def main() -> int:
    manifest = json.loads(Path(sys.argv[1]).read_text())
    for item in manifest.get("cubes", []):
        check_cube(item)
    for item in manifest.get("xml", []):
        check_xml(item)
    for item in manifest.get("yaml", []):
        check_yaml(item)
    print(f"{len(failures)} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
