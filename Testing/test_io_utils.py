"""Atomic writes: a failed write leaves nothing under the final name, and a killed one's leftovers can be swept."""

from __future__ import annotations

from pathlib import Path

import pytest

from SAMVolSegmentLib.io_utils import atomic_path, remove_stale_temporaries


def test_a_failed_write_leaves_neither_the_output_nor_a_temporary(tmp_path):
    target = tmp_path / "mask.nii.gz"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        Path(tmp).write_text("half")
        raise RuntimeError("the writer died")
    assert list(tmp_path.iterdir()) == []


def test_stale_temporaries_of_one_output_are_removed_and_nothing_else(tmp_path):
    target = tmp_path / "case01.nii.gz"
    with atomic_path(target) as tmp:
        Path(tmp).write_text("mask")
    stale = tmp_path / Path(tmp).name  # what a kill -9 between write and rename leaves under this name
    stale.write_text("half")
    others = [tmp_path / ".case02.nii.gz.abc.tmp.nii.gz", tmp_path / "case01.nii.gz.notes.txt"]
    for path in others:
        path.write_text("other")
    assert remove_stale_temporaries(target) == 1
    assert sorted(tmp_path.iterdir()) == sorted([target, *others])
    assert remove_stale_temporaries(tmp_path / "missing" / "x.nii.gz") == 0
