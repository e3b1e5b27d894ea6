"""Box files: one format rule for CSV, JSON and COCO; unparseable rows are errors with a line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from detgroup.data.box_files import parse_box_list, read_box_file
from detgroup.data.coco_groups import validate_coco_groups
from detgroup.errors import DetgroupError
from detgroup.ops.boxes import check_boxes

XYXY = [[10.0, 20.0, 40.0, 60.0], [5.0, 5.0, 15.0, 25.5]]


@pytest.mark.parametrize(
    "text",
    [
        "10,20,40,60\n5,5,15,25.5\n",  # no header: x1,y1,x2,y2
        "x1,y1,x2,y2\n10,20,40,60\n5,5,15,25.5\n",
        "xmin;ymin;xmax;ymax\n10;20;40;60\n5;5;15;25.5\n",  # semicolons
        "left\ttop\tright\tbottom\n10\t20\t40\t60\n5\t5\t15\t25.5\n",  # tabs
        "x,y,w,h\n10,20,30,40\n5,5,10,20.5\n",  # corner + size
        "X,Y,Width,Height\n10,20,30,40\n5,5,10,20.5\n",  # any case
        "label,score,h,w,y,x\na,0.9,40,30,20,10\nb,0.8,20.5,10,5,5\n",  # any order, extra cols
        "10;20;40;60\n\n5;5;15;25.5\n",  # blank lines skipped
        "\ufeffx1,y1,x2,y2\n10,20,40,60\n5,5,15,25.5\n",  # a byte-order mark
    ],
)
def test_csv_spellings_read_the_same_boxes(tmp_path: Path, text: str) -> None:
    path = tmp_path / "b.csv"
    path.write_text(text, encoding="utf-8")
    np.testing.assert_allclose(read_box_file(path), XYXY)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a,b,c,d\n1,2,3,4\n", r"line 1: header \['a', 'b', 'c', 'd'\] names no box format"),
        ("x1,y1,x2,y2\n1,2,3,4\n1,2,three,4\n", "line 3 is not numbers"),
        ("x1,y1,x2,y2\n1,2,3,4\n1,2,3\n", "line 3 has 3 values, expected 4"),
        ("1,2,3,4\n1,2,3,4,5\n", "line 2 has 5 values"),
        ("1,2,3,4,0.9\n", "line 1 has 5 values"),  # no header: exactly x1,y1,x2,y2
        ("1,5;2,5;3,5;4,5\n", "line 1 mixes separators"),  # decimal commas
        ("1 2 3 4\n", "line 1 is not comma, semicolon or tab separated"),
        ("x1;y1;x2;y2\n1;2;3;4\n1,2,3,4\n", "line 3 has 1 values"),
    ],
)
def test_unparseable_csv_is_an_error_with_its_line(tmp_path: Path, text: str,
                                                    message: str) -> None:
    path = tmp_path / "b.csv"
    path.write_text(text)
    with pytest.raises(DetgroupError, match=message) as err:
        read_box_file(path)
    assert "b.csv" in str(err.value)


def test_json_box_lists_and_formats(tmp_path: Path) -> None:
    np.testing.assert_allclose(parse_box_list(XYXY, source="s"), XYXY)
    xywh = {"boxes": [[10, 20, 30, 40], [5, 5, 10, 20.5]], "format": "xywh"}
    np.testing.assert_allclose(parse_box_list(xywh, source="s"), XYXY)
    path = tmp_path / "b.json"
    path.write_text(json.dumps(xywh))
    np.testing.assert_allclose(read_box_file(path), XYXY)
    assert parse_box_list([], source="s").shape == (0, 4)
    with pytest.raises(DetgroupError, match="unknown box format 'cxcywh'"):
        parse_box_list({"boxes": XYXY, "format": "cxcywh"}, source="s")
    with pytest.raises(DetgroupError, match="s: box 1 is not a list of 4 numbers"):
        parse_box_list([[1, 2, 3, 4], [1, 2, "3", 4]], source="s")
    with pytest.raises(DetgroupError, match="box 0 is not a list of 4 numbers"):
        parse_box_list([[1, 2, 3]], source="s")


# The same box, given by each source: a CSV, a JSON list, and a COCO annotation.
@pytest.mark.parametrize(
    ("box", "outside"),
    [([10, 10, 60, 40], False), ([-0.5, 10, 64.5, 40], False),  # within the 1 px tolerance
     ([-8, 10, 40, 40], True), ([10, 10, 90, 40], True)],
)
def test_out_of_image_boxes_are_treated_the_same_by_every_source(
    tmp_path: Path, box: list[float], outside: bool
) -> None:
    width, height = 64, 48
    csv_path = tmp_path / "b.csv"
    csv_path.write_text("x1,y1,x2,y2\n" + ",".join(map(str, box)) + "\n")
    sources = [read_box_file(csv_path), parse_box_list([box], source="json")]
    doc = {"images": [{"id": 1, "file_name": "a.png", "width": width, "height": height}],
           "categories": [{"id": 1, "name": "cat"}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 1,
                            "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]]}]}
    coco_problems = validate_coco_groups(json.loads(json.dumps(doc)))
    assert bool(coco_problems) == outside
    for raw in sources:
        if outside:
            with pytest.raises(DetgroupError, match="extends outside the 64x48 image"):
                check_boxes(raw, height, width, source="s")
        else:
            np.testing.assert_allclose(check_boxes(raw, height, width), [box])
    # --clip: every source clips to the same box
    clipped = [check_boxes(raw, height, width, clip=True) for raw in sources]
    assert not validate_coco_groups(doc, clip=True)
    x, y, w, h = doc["annotations"][0]["bbox"]
    for c in clipped:
        np.testing.assert_allclose(c, [[x, y, x + w, y + h]], atol=1e-5)


def test_a_box_thinner_than_the_written_precision_is_still_written(tmp_path: Path) -> None:
    # per_image rounds coordinates to 2 decimals: a valid 0.002 px wide box must not become a
    # zero-width annotation that the validating writer refuses at the end of a run.
    from detgroup.engine.infer import _write_collections

    record = {"image_id": 1, "file_name": "a.png", "width": 20, "height": 20,
              "boxes": [{"box": [1.0, 2.0, 1.0, 9.5], "category": "cat", "score": 0.9}],
              "groups": [{"category": "cat", "score": 0.8, "members": [0]}]}
    _write_collections(tmp_path, [record], ["cat"])
    data = json.loads((tmp_path / "predictions.json").read_text())
    validate_coco_groups(data, path="predictions.json")
    assert data["annotations"][0]["bbox"] == [1.0, 2.0, 0.01, 7.5]
