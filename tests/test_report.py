"""Tests for detgroup.report: the HTML evaluation report and truth | prediction PNGs of files."""

from __future__ import annotations

import json
import re
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import cv2
import numpy as np
import pytest

from detgroup.cli import main
from detgroup.data.coco_groups import load_coco_groups
from detgroup.errors import DetgroupError
from detgroup.metrics import image_metrics
from detgroup.model.postprocess import Prediction
from detgroup.report import ReportBuilder, group_fates, read_report, write_comparisons
from detgroup.visualize import compare, group_palette

NAMES = ["cat", "dog"]
CHROMIUM = Path("/usr/bin/chromium")


def _prediction(image_id: int, boxes: np.ndarray, categories: np.ndarray,
                groups: np.ndarray) -> Prediction:
    n = len(boxes)
    same = (categories[:, None] == categories) & (groups[:, None] == groups)
    return Prediction(
        image_id=image_id, boxes=boxes.astype(np.float32),
        class_probs=np.eye(len(NAMES))[categories] if n else np.zeros((0, len(NAMES))),
        categories=categories, groups=groups, scores=np.ones(n),
        group_scores={(int(c), int(g)): 0.9 for c, g in zip(categories, groups, strict=True)},
        pair_probs=np.where(same, 0.9, 0.1))


def _perturb(k: int, categories: np.ndarray, groups: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray]:
    """Image k's prediction: 0 the truth with group ids renamed, 1 one group split, 2 all
    boxes of a category merged, 3 one group given the other category."""
    cats, grps = categories.copy(), groups.copy() + 10  # renamed: ids mean nothing
    first = groups == groups[0]
    if k == 1:
        grps[np.flatnonzero(first)[0]] = 99
    elif k == 2:
        grps[:] = 0
    elif k == 3:
        cats[first] = 1 - cats[first]
    return cats, grps


def _build(tiny_data: Path, **kwargs) -> tuple[ReportBuilder, dict[int, dict]]:
    coco = load_coco_groups(tiny_data / "val/annotations.json")
    images = tiny_data / "val/images"
    builder = ReportBuilder(category_names=NAMES,
                            image_files={i["id"]: images / i["file_name"] for i in coco.images},
                            meta=[("data", "tiny")], **kwargs)
    metrics = {}
    for k, info in enumerate(coco.images):
        target = coco.targets(info["id"])
        cats, grps = _perturb(k, target["categories"], target["groups"])
        m = image_metrics(target["categories"], target["groups"], cats, grps)
        builder.add(_prediction(info["id"], target["boxes"], cats, grps), target["categories"],
                    target["groups"], m)
        metrics[info["id"]] = m
    return builder, metrics


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.row_ids: list[int] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        for key in ("href", "src"):
            if values.get(key):
                self.links.append(values[key] or "")
        if tag == "tr" and values.get("data-id"):
            self.row_ids.append(int(values["data-id"] or 0))


def _parse(path: Path) -> _Links:
    parser = _Links()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def test_report_rows_order_pages_and_links(tiny_data: Path, tmp_path: Path) -> None:
    builder, metrics = _build(tiny_data, sort="ari", max_images=2)
    out = tmp_path / "report"
    index = builder.write(out, {"num_images": 4, "num_boxes": 10, "ari": 0.5, "cat_acc": 0.9})
    assert index == out / "index.html"
    parsed = _parse(index)
    # one row per image, worst ARI first (ties by image id)
    expected = sorted(metrics, key=lambda i: (metrics[i]["ari"], i))
    assert parsed.row_ids == expected
    assert metrics[expected[-1]]["ari"] == 1.0 and metrics[expected[0]]["ari"] < 1.0
    data = read_report(out)
    assert [r["image_id"] for r in data["images"]] == expected
    # pictures and pages only for the 2 worst; every link of every page resolves
    assert sorted(p.name for p in (out / "pages").iterdir()) == sorted(
        f"img{i}.html" for i in expected[:2])
    assert len(list((out / "images").glob("*_thumb.png"))) == 2
    for page in [index, *(out / "pages").iterdir()]:
        links = _parse(page).links
        assert links
        for link in links:
            assert not link.startswith(("/", "http:", "https:", "file:")), link
            assert (page.parent / link.split("#")[0]).is_file(), f"{page}: {link}"
    # the same sort by another metric
    by_cat = builder.sorted_rows("cat_acc")
    assert [r["cat_acc"] for r in by_cat] == sorted(m["cat_acc"] for m in metrics.values())


def test_report_fates_and_confusion(tiny_data: Path, tmp_path: Path) -> None:
    builder, metrics = _build(tiny_data)
    rows = {r["image_id"]: r for r in builder.rows}
    ids = sorted(rows)
    assert rows[ids[0]]["fates"]["kept_whole"] == rows[ids[0]]["fates"]["groups"]
    assert rows[ids[1]]["fates"]["split"] == 1 and "split into 2" in rows[ids[1]]["fate_lines"][0]
    assert rows[ids[2]]["fates"]["merged"] >= 2
    assert rows[ids[3]]["fates"]["category_wrong"] == 1
    assert "category wrong" in rows[ids[3]]["fate_lines"][0]
    coco = load_coco_groups(tiny_data / "val/annotations.json")
    total = sum(len(coco.anns_by_image[i]) for i in ids)
    assert builder.confusion.sum() == total
    wrong = builder.confusion.sum() - np.trace(builder.confusion)
    target = coco.targets(ids[3])
    assert wrong == int((target["groups"] == target["groups"][0]).sum())


def test_group_fates_by_hand() -> None:
    # true 1 = {0, 1, 2} cat, 2 = {3, 4} cat, 3 = {5} dog; predicted {0, 1}, {2, 3, 4}, {5} cat
    boxes = np.array([[10 * i, 0, 10 * i + 8, 8] for i in range(6)], float)
    gt_cat, gt_grp = np.array([0, 0, 0, 0, 0, 1]), np.array([0, 0, 0, 1, 1, 0])
    pred_cat, pred_grp = np.array([0, 0, 0, 0, 0, 0]), np.array([0, 0, 1, 1, 1, 2])
    fates = group_fates(compare(boxes, gt_cat, gt_grp, pred_cat, pred_grp), gt_cat, pred_cat)
    assert [(f.number, f.split_into, f.merged_with, f.category_wrong) for f in fates] == [
        (1, 2, (2,), 0), (2, 1, (1,), 0), (3, 1, (), 1)]
    assert fates[2].describe(NAMES) == "3 dog (1 box): category wrong on 1 of 1 (cat)"
    assert not any(f.kept_whole for f in fates)


def test_thumbnail_matched_groups_share_colours(tmp_path: Path) -> None:
    """A crafted image: true groups A = {0, 1, 2} (top row), B = {3, 4} (bottom row);
    predicted {0}, {1, 2}, {3, 4} with other ids. In the thumbnail, {1, 2} has A's colour and
    {3, 4} B's in both halves, and the split-off box 0 a third colour; numbering the
    prediction on its own (reading order) would give {0} A's colour instead."""
    image = np.full((128, 128, 3), 128, np.uint8)
    (tmp_path / "images").mkdir()
    cv2.imwrite(str(tmp_path / "images/a.png"), image)
    boxes = np.array([[5, 20, 30, 40], [45, 20, 70, 40], [85, 20, 110, 40], [5, 70, 30, 90],
                      [45, 70, 70, 90]], np.float32)
    cats = np.zeros(5, np.int64)
    gt_groups, pred_groups = np.array([0, 0, 0, 1, 1]), np.array([4, 2, 2, 0, 0])
    builder = ReportBuilder(category_names=NAMES, image_files={1: tmp_path / "images/a.png"})
    builder.add(_prediction(1, boxes, cats, pred_groups), cats, gt_groups,
                image_metrics(cats, gt_groups, cats, pred_groups))
    builder.write(tmp_path / "report", {"num_images": 1})
    thumb = cv2.imread(str(tmp_path / "report/images/img1_thumb.png"))[:, :, ::-1]
    panel = 256  # 128 px drawn at min_side 256, no legend
    top, gap = thumb.shape[0] - panel, thumb.shape[1] - 2 * panel
    palette = {s.colour for s in group_palette(8)} - {(0, 0, 0)}

    def colour(x_offset: int, box: np.ndarray) -> tuple[int, ...]:
        x0, _, x1, y1 = (box * 2).astype(int)
        band = thumb[top + y1:top + y1 + 3, x_offset + x0 + 3:x_offset + x1 - 3].reshape(-1, 3)
        found = [tuple(int(v) for v in px) for px in band if tuple(int(v) for v in px) in palette]
        assert found
        return max(set(found), key=found.count)

    left = [colour(0, b) for b in boxes]
    right = [colour(panel + gap, b) for b in boxes]
    assert left[0] == left[1] == left[2] != left[3] == left[4]
    assert right[1:] == left[1:]
    assert right[0] not in (left[0], left[3])


def test_report_is_replaced_whole_and_refuses_foreign_folders(tiny_data: Path,
                                                              tmp_path: Path) -> None:
    builder, _ = _build(tiny_data, max_images=1)
    out = tmp_path / "report"
    builder.write(out, {"num_images": 4})
    (out / "stale.txt").write_text("from an earlier run")
    builder.write(out, {"num_images": 4})
    assert not (out / "stale.txt").exists() and (out / "index.html").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]  # no temporary folders
    # a failure while writing leaves the earlier report as it was
    before = (out / "index.html").read_text()
    broken, _ = _build(tiny_data, max_images=4)
    broken.image_files = {k: tmp_path / "missing.png" for k in broken.image_files}
    with pytest.raises(DetgroupError):
        broken.write(out, {"num_images": 4})
    assert (out / "index.html").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]
    # a folder that is not a report is never replaced
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(DetgroupError, match="not an earlier output"):
        builder.write(foreign, {"num_images": 4})
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_eval_report_cli(tiny_checkpoint: Path, tiny_data: Path, tmp_path: Path,
                         capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report"
    code = main(["eval", "--checkpoint", str(tiny_checkpoint),
                 "--data", str(tiny_data / "val/annotations.json"),
                 "--images", str(tiny_data / "val/images"), "--report", str(out),
                 "--report-images", "2", "--report-sort", "exact_group_f1"])
    assert code == 0
    assert f"report -> {out / 'index.html'}" in capsys.readouterr().out
    data = read_report(out)
    assert len(data["images"]) == 4 and data["sort"] == "exact_group_f1"
    values = [r["exact_group_f1"] for r in data["images"]]
    assert values == sorted(values)
    assert len(list((out / "pages").glob("*.html"))) == 2
    assert len(_parse(out / "index.html").row_ids) == 4


def _predictions_file(tiny_data: Path, path: Path, *, rename: str | None = None) -> None:
    """The truth as a predictions file: other category ids, group ids swapped."""
    data = json.loads((tiny_data / "val/annotations.json").read_text())
    ids = {c["id"]: 40 + c["id"] for c in data["categories"]}
    data["categories"] = [{**c, "id": ids[c["id"]]} for c in data["categories"]]
    for ann in data["annotations"]:
        ann["category_id"] = ids[ann["category_id"]]
        ann["group_id"] = 1000 - ann.get("group_id", ann["id"])
        ann["group_score"] = 0.5
    if rename:
        data["images"][0]["file_name"] = rename
    path.write_text(json.dumps(data))


def test_viz_truth_draws_comparisons(tiny_data: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    preds = tmp_path / "predictions.json"
    _predictions_file(tiny_data, preds)
    out = tmp_path / "viz"
    assert main(["viz", "--data", str(preds), "--truth", str(tiny_data / "val/annotations.json"),
                 "--images", str(tiny_data / "val/images"), "--out", str(out)]) == 0
    assert "4 truth | prediction comparisons" in capsys.readouterr().out
    assert len(list(out.glob("*.png"))) == 4
    # the prediction is the truth: nothing is marked wrong (no badge colour anywhere)
    for png in out.glob("*.png"):
        pixels = cv2.imread(str(png))[:, :, ::-1]
        assert not (pixels == (255, 0, 102)).all(axis=2).any()
    assert write_comparisons(preds, tiny_data / "val/annotations.json", tiny_data / "val/images",
                             tmp_path / "viz2", limit=1) == 1
    # an image of the predictions that the truth does not have: a one-line error
    _predictions_file(tiny_data, preds, rename="elsewhere.png")
    capsys.readouterr()
    assert main(["viz", "--data", str(preds), "--truth", str(tiny_data / "val/annotations.json"),
                 "--images", str(tiny_data / "val/images"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("detgroup viz: error:") and "elsewhere.png" in err
    assert "\n" not in err


def test_viz_truth_names_cannot_collide(tiny_data: Path, tmp_path: Path) -> None:
    """a/x.png, b/x.png and a/x.jpg are three images and give three comparisons."""
    data = json.loads((tiny_data / "val/annotations.json").read_text())
    images = tmp_path / "images"
    names = ["a/x.png", "b/x.png", "a/x.jpg"]
    for info, name in zip(data["images"], names, strict=False):
        pixels = cv2.imread(str(tiny_data / "val/images" / info["file_name"]))
        (images / name).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(images / name), pixels)
        info["file_name"] = name
    keep = {info["id"] for info in data["images"][:3]}
    data["images"] = data["images"][:3]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in keep]
    truth = tmp_path / "truth.json"
    truth.write_text(json.dumps(data))
    out = tmp_path / "viz"
    assert write_comparisons(truth, truth, images, out) == 3
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*.png"))
    assert written == ["a/x.jpg.png", "a/x.png.png", "b/x.png"]


# ---- a real browser


def _chromium(*args: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         "--enable-logging=stderr", "--v=0", f"--user-data-dir={tmp / 'profile'}", *args],
        capture_output=True, text=True, timeout=120, check=False)


def _console(stderr: str) -> list[str]:
    """Messages the page wrote to its console (script errors among them)."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


@pytest.mark.skipif(not CHROMIUM.exists(),
                    reason="needs Debian's chromium at /usr/bin/chromium (apt-get install "
                           "chromium) to render the report in a real browser")
def test_report_renders_in_headless_chromium(tiny_data: Path, tmp_path: Path) -> None:
    # the check can fail: a page with a script error shows in the console
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><script>throw new Error('boom');</script></body></html>")
    assert any("boom" in m for m in _console(_chromium("--dump-dom", bad.as_uri(),
                                                       tmp=tmp_path).stderr))

    builder, metrics = _build(tiny_data)
    index = builder.write(tmp_path / "report", {"num_images": 4, "ari": 0.5})
    shot = tmp_path / "shot.png"
    run = _chromium(f"--screenshot={shot}", "--window-size=1200,1400", index.as_uri(),
                    tmp=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    assert _console(run.stderr) == []
    pixels = cv2.imread(str(shot))
    assert pixels is not None and pixels.shape[:2] == (1400, 1200)
    assert pixels.std() > 10  # something was drawn
    # the inline script re-sorts the table when the page is opened with #sort=cat_acc
    run = _chromium("--dump-dom", index.as_uri() + "#sort=cat_acc", tmp=tmp_path)
    assert _console(run.stderr) == []
    assert 'data-sorted-by="cat_acc"' in run.stdout
    order = [int(v) for v in re.findall(r'<tr data-id="(\d+)"', run.stdout)]
    assert order == sorted(metrics, key=lambda i: (metrics[i]["cat_acc"], i))
    page = next((tmp_path / "report/pages").iterdir())
    run = _chromium(f"--screenshot={tmp_path / 'page.png'}", page.as_uri(), tmp=tmp_path)
    assert run.returncode == 0 and _console(run.stderr) == []



def test_demo_writes_the_report_and_comparisons(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "synth.num_train=8", "synth.num_val=4",
                 "synth.image_size=128"]) == 0
    printed = capsys.readouterr().out
    assert str(out / "report" / "index.html") in printed
    data = read_report(out / "report")
    assert len(data["images"]) == 4
    assert len(list((out / "report" / "pages").glob("*.html"))) == 4
    assert len(list((out / "compare").glob("*.png"))) == 4
    assert not (out / "truth").exists()
