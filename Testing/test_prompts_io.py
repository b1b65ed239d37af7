"""Reading prompt files: Slicer markups (LPS/RAS, sign rules, ROI), simple JSON, CSV, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from SAMVolSegmentLib.engine.prompts_io import Prompts, check_prompts, read_prompts
from SAMVolSegmentLib.errors import InvalidPromptError


def write(tmp_path, name, content) -> str:
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(path)


def test_slicer_markups_lps_ras_signs_and_roi(tmp_path):
    markups = {
        "@schema": "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/Schema/markups-schema-v1.0.3.json#",
        "markups": [
            {"type": "Fiducial", "name": "F", "coordinateSystem": "LPS",
             "controlPoints": [
                 {"label": "F-1", "position": [10.0, 20.0, 30.0], "positionStatus": "defined"},
                 {"label": "F-2", "description": "negative", "position": [1.0, 2.0, 3.0]},
                 {"label": "neg-3", "position": [4.0, 5.0, 6.0]},
                 {"label": "F-4", "position": [9.0, 9.0, 9.0], "positionStatus": "preview"},
             ]},
            {"type": "Fiducial", "name": "Negative points", "coordinateSystem": "RAS",
             "controlPoints": [{"label": "x", "position": [5.0, 6.0, 7.0]}]},
            {"type": "ROI", "coordinateSystem": "LPS", "center": [1.0, 2.0, 3.0], "size": [10.0, 20.0, 30.0],
             "orientation": [-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0]},
        ],
    }
    prompts = read_prompts(write(tmp_path, "p.mrk.json", markups))
    np.testing.assert_allclose(prompts.points_ras, [[-10, -20, 30], [-1, -2, 3], [-4, -5, 6], [5, 6, 7]])
    assert prompts.positive.tolist() == [True, False, False, False]
    np.testing.assert_allclose(prompts.box_ras[0], [-6, -12, -12])
    np.testing.assert_allclose(prompts.box_ras[1], [4, 8, 18])


def test_markups_file_level_coordinate_system_and_rotated_roi(tmp_path):
    data = {"coordinateSystem": "RAS", "markups": [{"type": "Fiducial", "controlPoints": [{"position": [1, 2, 3]}]}]}
    np.testing.assert_allclose(read_prompts(write(tmp_path, "a.mrk.json", data)).points_ras, [[1, 2, 3]])
    data = {"markups": [{"type": "Fiducial", "controlPoints": [{"position": [1, 2, 3]}]}]}  # Slicer's default: LPS
    np.testing.assert_allclose(read_prompts(write(tmp_path, "b.mrk.json", data)).points_ras, [[-1, -2, 3]])
    c, s = np.cos(0.3), np.sin(0.3)
    data = {"markups": [{"type": "ROI", "center": [0, 0, 0], "size": [1, 1, 1],
                         "orientation": [c, -s, 0, s, c, 0, 0, 0, 1]}]}
    with pytest.raises(InvalidPromptError, match="Rotated"):
        read_prompts(write(tmp_path, "c.mrk.json", data))
    data = {"markups": [{"type": "Fiducial", "coordinateSystem": "XYZ", "controlPoints": [{"position": [1, 2, 3]}]}]}
    with pytest.raises(InvalidPromptError, match="LPS or RAS"):
        read_prompts(write(tmp_path, "d.mrk.json", data))


def test_simple_json_round_trip_and_box_corner_order(tmp_path):
    data = {"points": [{"ras": [1, 2, 3]}, {"ras": [4, 5, 6], "positive": False}, {"ras": [7, 8, 9], "positive": "-"}],
            "box_ras": [[10, -5, 3], [0, 5, -3]]}
    prompts = read_prompts(write(tmp_path, "p.json", data))
    assert prompts.positive.tolist() == [True, False, False]
    np.testing.assert_allclose(prompts.box_ras[0], [0, -5, -3])
    np.testing.assert_allclose(prompts.box_ras[1], [10, 5, 3])
    again = read_prompts(write(tmp_path, "q.json", prompts.to_json()))
    assert isinstance(again, Prompts) and len(again) == 3
    np.testing.assert_allclose(again.points_ras, prompts.points_ras)
    assert again.positive.tolist() == prompts.positive.tolist()


def test_csv_header_signs_and_comments(tmp_path):
    prompts = read_prompts(write(tmp_path, "p.csv", "r,a,s,positive\n# comment\n1,2,3,1\n4,5,6,0\n7,8,9\n1,1,1,neg\n"))
    np.testing.assert_allclose(prompts.points_ras[1], [4, 5, 6])
    assert prompts.positive.tolist() == [True, False, True, False]
    assert prompts.box_ras is None


@pytest.mark.parametrize(
    "name, content, match",
    [
        ("a.csv", "r,a,s,positive\n", "no points"),
        ("b.csv", "1,2,3\n1,x,3\n", "row 2"),
        ("c.csv", "1,2,3,maybe\n", "positive must be"),
        ("d.json", '{"points": [{"ras": [1, "x", 3]}]}', "Cannot read"),
        ("e.json", '{"points": [{"ras": [1, 2]}]}', "3 coordinates"),
        ("f.json", '{"points": [{"ras": [1, NaN, 3]}]}', "finite"),
        ("g.json", "[1, 2, 3]", "JSON object"),
        ("h.json", "{not json", r"not valid JSON \(.* line 1, column 2\)"),
        ("i.json", '{"points": []}', "no points"),
        ("j.json", "", "is empty"),
        ("k.mrk.json", " \n\n", "is empty"),
        ("l.csv", "", "is empty"),
        ("m.json", '{"points": [{"ras": [1, 2, 3], "positive": false}]}', r"only negative points \(1\)"),
        ("n.csv", "1,2,3,0\n4,5,6,neg\n", r"only negative points \(2\)"),
        ("o.mrk.json", {"markups": [{"type": "Fiducial", "name": "negative",
                                     "controlPoints": [{"position": [1, 2, 3]}]}]}, "add at least one positive"),
    ],
)
def test_bad_files_raise_clear_errors(tmp_path, name, content, match):
    with pytest.raises(InvalidPromptError, match=match):
        read_prompts(write(tmp_path, name, content))


def test_missing_file(tmp_path):
    with pytest.raises(InvalidPromptError, match="not found"):
        read_prompts(tmp_path / "nope.json")


def test_negative_points_with_a_box_are_a_valid_prompt(tmp_path):
    data = {"points": [{"ras": [1, 2, 3], "positive": False}], "box_ras": [[0, 0, 0], [5, 5, 5]]}
    prompts = read_prompts(write(tmp_path, "p.json", data))
    assert prompts.positive.tolist() == [False] and prompts.box_ras is not None


def test_a_caller_with_its_own_box_can_read_negative_only_files(tmp_path):
    path = write(tmp_path, "p.csv", "1,2,3,0\n")
    with pytest.raises(InvalidPromptError, match="only negative"):
        read_prompts(path)
    assert read_prompts(path, require_positive=False).positive.tolist() == [False]
    check_prompts([False], has_box=True)  # the CLI's --box makes it valid
    with pytest.raises(InvalidPromptError, match="only negative"):
        check_prompts([False, False], has_box=False)
