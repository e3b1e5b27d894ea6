"""Tests for detgroup.visualize: canvas shapes, group colours on the boxes, panels, PNG I/O."""

from __future__ import annotations

from collections import Counter

import cv2
import numpy as np
import pytest

from detgroup.errors import DetgroupError
from detgroup.visualize import (
    OKABE_ITO,
    WRONG_CATEGORY,
    WRONG_GROUP,
    _collect_groups,
    _place_labels,
    _rect_points,
    _zoom,
    compare,
    comparison_panels,
    draw_comparison,
    draw_groups,
    draw_heat_map,
    group_palette,
    group_styles,
    save_rgb_png,
    side_by_side,
)

NAMES = ["cat", "dog"]
GREY = 128  # no palette colour is (128, 128, 128), so a pixel in a group colour was drawn


def _scene() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A 256 x 192 grey image with 4 groups (one lone) of well-separated boxes."""
    image = np.full((192, 256, 3), GREY, np.uint8)
    boxes = np.array([
        [20, 40, 50, 70], [60, 40, 90, 75],  # cat/0
        [150, 30, 180, 60], [190, 40, 230, 70], [160, 70, 200, 95],  # cat/1
        [30, 130, 60, 165], [70, 135, 100, 170],  # dog/0
        [170, 140, 220, 175],  # dog/1, lone
    ], float)
    categories = np.array([0, 0, 0, 0, 0, 1, 1, 1])
    groups = np.array([0, 0, 1, 1, 1, 0, 0, 1])
    return image, boxes, categories, groups


def _colour_pixels(region: np.ndarray, colour: tuple[int, int, int]) -> int:
    return int((region == np.array(colour, np.uint8)).all(axis=2).sum())


def test_canvas_shape_dtype_and_upscale():
    image, boxes, categories, groups = _scene()
    before = image.copy()
    out = draw_groups(image, boxes, categories, groups, NAMES)
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
    # 256 px long side -> upscaled x2 to 512, then the legend panel to the right.
    assert out.shape[0] == 384 and out.shape[1] > 512
    np.testing.assert_array_equal(image, before)  # the input is not drawn on


def test_each_box_border_is_drawn_in_its_group_colour():
    image, boxes, categories, groups = _scene()
    out = draw_groups(image, boxes, categories, groups, NAMES)
    styles = group_styles(categories, groups)
    zoom = 2  # 256 -> 512
    for box, c, g in zip(boxes * zoom, categories, groups, strict=True):
        colour = styles[(int(c), int(g))].colour
        x0, y0, x1, y1 = box.astype(int)
        inside = out[y0 + 6:y1 - 6, x0 + 6:x1 - 6]
        assert _colour_pixels(inside, colour) == 0  # the stroke lies outside: content visible
        band = 6
        left = out[y0:y1, x0 - band:x0 + 1]
        right = out[y0:y1, x1 - 1:x1 + band]
        bottom = out[y1 - 1:y1 + band, x0:x1]
        for side, length in ((left, y1 - y0), (right, y1 - y0), (bottom, x1 - x0)):
            assert _colour_pixels(side, colour) >= length // 2


def test_colours_follow_group_order_not_box_order():
    image, boxes, categories, groups = _scene()
    first = draw_groups(image, boxes, categories, groups, NAMES)
    perm = np.random.default_rng(0).permutation(len(boxes))
    shuffled = draw_groups(image, boxes[perm], categories[perm], groups[perm], NAMES)
    np.testing.assert_array_equal(first, shuffled)
    assert group_styles(categories, groups) == group_styles(categories[perm], groups[perm])


@pytest.mark.parametrize("n_groups", [2, 8, 20, 72])
def test_groups_of_one_image_get_distinct_styles(n_groups):
    categories = np.arange(n_groups) % 2
    groups = np.arange(n_groups) // 2
    styles = list(group_styles(categories, groups).values())
    assert len(set(styles)) == n_groups
    if n_groups <= len(OKABE_ITO):
        assert len({s.colour for s in styles}) == n_groups
        assert all(s.dash == "solid" for s in styles)


def test_palette_starts_with_okabe_ito_and_is_deterministic():
    palette = group_palette(30)
    assert [s.colour for s in palette[:8]] == list(OKABE_ITO)
    assert palette == group_palette(30)
    assert group_palette(80)[72] == palette[0]  # 72 distinct styles, then they repeat


def test_many_groups_with_dashed_styles_draw():
    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 900, (60, 2))
    boxes = np.hstack([xy, xy + rng.uniform(5, 60, (60, 2))])
    categories = rng.integers(0, 2, 60)
    groups = rng.integers(0, 15, 60)
    out = draw_groups(np.full((1000, 1000, 3), 255, np.uint8), boxes, categories, groups, NAMES)
    assert out.shape[0] == 1000 and out.shape[1] > 1000


def test_no_boxes_shows_the_image_and_a_legend():
    image = np.random.default_rng(0).integers(0, 256, (512, 400, 3), dtype=np.uint8)
    out = draw_groups(image, np.zeros((0, 4)), np.zeros(0, int), np.zeros(0, int), NAMES,
                      affinity=np.zeros((0, 0)))
    assert out.shape[0] == 512 and out.shape[1] > 400
    np.testing.assert_array_equal(out[:, :400], image)  # no upscale at 512 px, nothing drawn
    lists = draw_groups(image, [], [], [], NAMES)
    np.testing.assert_array_equal(out, lists)


def test_one_box():
    image = np.full((100, 80, 3), GREY, np.uint8)
    out = draw_groups(image, [[10, 20, 40, 60]], [1], [0], NAMES, group_scores={(1, 0): 0.93})
    colour = group_palette(1)[0].colour
    zoom = 512 / 100
    x0, y0, x1, y1 = (np.array([10, 20, 40, 60]) * zoom).astype(int)
    assert _colour_pixels(out[y1 - 1:y1 + 5, x0:x1], colour) >= (x1 - x0) // 2


def test_heat_map_panel_widens_the_canvas():
    image, boxes, categories, groups = _scene()
    same = (categories[:, None] == categories) & (groups[:, None] == groups)
    affinity = np.where(same, 0.9, 0.1)
    plain = draw_groups(image, boxes, categories, groups, NAMES)
    with_map = draw_groups(image, boxes, categories, groups, NAMES, affinity=affinity)
    assert with_map.shape[0] == plain.shape[0]
    assert with_map.shape[1] > plain.shape[1] + 300
    np.testing.assert_array_equal(with_map[:, :plain.shape[1]], plain)


def test_title_adds_a_header():
    image, boxes, categories, groups = _scene()
    plain = draw_groups(image, boxes, categories, groups, NAMES)
    titled = draw_groups(image, boxes, categories, groups, NAMES, title="scene 0")
    assert titled.shape[1] == plain.shape[1] and titled.shape[0] > plain.shape[0]
    np.testing.assert_array_equal(titled[-plain.shape[0]:], plain)


def test_grayscale_input():
    image, boxes, categories, groups = _scene()
    gray = np.random.default_rng(0).integers(0, 256, image.shape[:2], dtype=np.uint8)
    as_rgb = draw_groups(np.repeat(gray[:, :, None], 3, axis=2), boxes, categories, groups, NAMES)
    as_2d = draw_groups(gray, boxes, categories, groups, NAMES)
    np.testing.assert_array_equal(as_rgb, as_2d)


def test_side_by_side_pads_and_adds_a_header():
    left = np.zeros((100, 60, 3), np.uint8)
    right = np.full((150, 80, 3), 255, np.uint8)
    out = side_by_side(left, right)
    header = out.shape[0] - 150
    assert header > 0 and out.dtype == np.uint8
    assert out.shape[1] > 140
    np.testing.assert_array_equal(out[header:header + 100, :60], left)
    np.testing.assert_array_equal(out[header:, -80:], right)


def test_save_rgb_png_round_trip(tmp_path):
    image = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    path = tmp_path / "overlay.png"
    save_rgb_png(path, image)
    np.testing.assert_array_equal(cv2.imread(str(path)), image[:, :, ::-1])
    assert [p.name for p in tmp_path.iterdir()] == ["overlay.png"]  # no temporary file left


def _bad(name: str):
    image, boxes, categories, groups = _scene()
    kwargs = {}
    if name == "boxes_n3":
        boxes = boxes[:, :3]
    elif name == "boxes_nan":
        boxes[2, 1] = np.nan
    elif name == "boxes_flipped":
        boxes[1] = boxes[1, [2, 3, 0, 1]]
    elif name == "categories_short":
        categories = categories[:-1]
    elif name == "groups_float":
        groups = groups + 0.5
    elif name == "category_out_of_range":
        categories = categories + 1
    elif name == "affinity_shape":
        kwargs["affinity"] = np.zeros((3, 3))
    elif name == "affinity_logits":
        kwargs["affinity"] = np.full((len(boxes), len(boxes)), 2.0)
    elif name == "image_float":
        image = image.astype(np.float32)
    elif name == "image_rgba":
        image = np.dstack([image, image[:, :, :1]])
    draw_groups(image, boxes, categories, groups, NAMES, **kwargs)


@pytest.mark.parametrize("name", [
    "boxes_n3", "boxes_nan", "boxes_flipped", "categories_short", "groups_float",
    "category_out_of_range", "affinity_shape", "affinity_logits", "image_float", "image_rgba",
])
def test_bad_inputs_raise_detgroup_error(name):
    with pytest.raises(DetgroupError):
        _bad(name)


def test_bad_images_for_side_by_side_and_png_raise(tmp_path):
    with pytest.raises(DetgroupError):
        side_by_side(np.zeros((4, 4, 4), np.uint8), np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(DetgroupError):
        save_rgb_png(tmp_path / "x.png", np.zeros((4, 4, 3), np.float64))


# ---- truth | prediction with matched groups


def _two_groups() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A 256 px grey image with two true cat groups A = {0, 1} (left), B = {2, 3} (right)."""
    image = np.full((256, 256, 3), GREY, np.uint8)
    boxes = np.array([[20, 40, 60, 80], [20, 120, 60, 160], [170, 40, 210, 80],
                      [170, 120, 210, 160]], float)
    return image, boxes, np.zeros(4, np.int64), np.array([0, 0, 1, 1])


def _stroke_colour(canvas: np.ndarray, box: np.ndarray) -> tuple[int, int, int]:
    """The most common palette colour in the band just below ``box`` (xyxy px of canvas)."""
    x0, _, x1, y1 = box.astype(int)
    band = canvas[y1:y1 + 3, x0 + 2:x1 - 2].reshape(-1, 3)
    palette = {s.colour for s in group_palette(16)} - {(0, 0, 0), (255, 255, 255)}  # not halos
    found = Counter(tuple(int(v) for v in px) for px in band
                    if tuple(int(v) for v in px) in palette)
    assert found, f"no group colour under box {box}"
    return found.most_common(1)[0][0]


def test_matched_groups_share_colours_on_both_sides():
    image, boxes, cats, groups = _two_groups()
    pred_groups = np.array([1, 1, 0, 0])  # the same partition with the ids swapped
    # Drawn alone, the prediction's colours follow its own ids: A and B swap colours.
    alone = draw_groups(image, boxes, cats, pred_groups, NAMES, legend=False, min_side=256)
    truth_alone = draw_groups(image, boxes, cats, groups, NAMES, legend=False, min_side=256)
    assert _stroke_colour(alone, boxes[0]) != _stroke_colour(truth_alone, boxes[0])
    truth, pred = comparison_panels(image, boxes, cats, groups, cats, pred_groups, NAMES,
                                    legend=False, min_side=256)
    colours = [(_stroke_colour(truth, b), _stroke_colour(pred, b)) for b in boxes]
    assert all(t == p for t, p in colours)
    assert colours[0][0] == colours[1][0] != colours[2][0] == colours[3][0]
    result = compare(boxes, cats, groups, cats, pred_groups)
    assert result.gt_numbers == {(0, 0): 1, (0, 1): 2}
    assert result.pred_numbers == {(0, 1): 1, (0, 0): 2}
    assert not result.pred_wrong.any()


def test_a_split_off_part_gets_a_new_colour_not_its_groups():
    image = np.full((256, 256, 3), GREY, np.uint8)
    boxes = np.array([[10, 40, 60, 80], [90, 40, 140, 80], [170, 40, 220, 80],
                      [10, 140, 60, 180], [90, 140, 140, 180]], float)
    cats = np.zeros(5, np.int64)
    groups, pred_groups = np.array([0, 0, 0, 1, 1]), np.array([4, 2, 2, 0, 0])
    result = compare(boxes, cats, groups, cats, pred_groups)
    # {1, 2} is A's match although {0} comes first in reading order
    assert result.pred_numbers == {(0, 2): 1, (0, 0): 2, (0, 4): 3}
    assert result.pred_wrong.tolist() == [WRONG_GROUP, 0, 0, 0, 0]
    truth, pred = comparison_panels(image, boxes, cats, groups, cats, pred_groups, NAMES,
                                    legend=False, min_side=256)
    left = [_stroke_colour(truth, b) for b in boxes]
    right = [_stroke_colour(pred, b) for b in boxes]
    assert right[1:] == left[1:] and right[0] == group_palette(3)[2].colour


def _badge_pixels(canvas: np.ndarray, box: np.ndarray) -> int:
    x0, y0, x1, _ = box.astype(int)
    return _colour_pixels(canvas[max(y0 - 15, 0):y0 + 15, x1 - 15:x1 + 15], (255, 0, 102))


def test_split_and_wrong_category_are_marked():
    image, boxes, cats, groups = _two_groups()
    pred_cats = np.array([0, 0, 1, 0])  # box 2 called a dog: its own group
    pred_groups = np.array([0, 0, 0, 1])
    result = compare(boxes, cats, groups, pred_cats, pred_groups)
    assert result.pred_wrong.tolist() == [0, 0, WRONG_GROUP | WRONG_CATEGORY, 0]
    # B = {2, 3} is matched to {3}; box 2's new group takes the next number (3)
    assert result.pred_numbers[(0, 1)] == 2 and result.pred_numbers[(1, 0)] == 3
    truth, pred = comparison_panels(image, boxes, cats, groups, pred_cats, pred_groups, NAMES,
                                    legend=False, min_side=256)
    assert _badge_pixels(pred, boxes[2]) > 20
    for i in (0, 1, 3):
        assert _badge_pixels(pred, boxes[i]) == 0
    assert _badge_pixels(truth, boxes[2]) == 0  # the truth is not marked
    assert _stroke_colour(pred, boxes[2]) == group_palette(3)[2].colour


def test_detector_boxes_are_matched_to_true_boxes_by_iou():
    _, boxes, cats, groups = _two_groups()
    perm = np.array([3, 1, 0, 2])
    shifted = boxes[perm] + 2.0  # IoU about 0.8 with its true box
    extra = np.array([[100, 200, 130, 230]], float)  # no true box
    pred_boxes = np.vstack([shifted, extra])
    pred_cats = np.zeros(5, np.int64)
    pred_groups = np.array([5, 0, 0, 5, 9])  # A = {1, 2} -> 0, B = {3, 0} -> 5
    result = compare(boxes, cats, groups, pred_cats, pred_groups, pred_boxes=pred_boxes)
    ti, pj = result.box_pairs
    assert dict(zip(ti.tolist(), pj.tolist(), strict=True)) == {3: 0, 1: 1, 0: 2, 2: 3}
    assert result.pred_numbers == {(0, 0): 1, (0, 5): 2, (0, 9): 3}
    assert result.pred_wrong.tolist() == [0, 0, 0, 0, WRONG_GROUP]
    assert not result.gt_missed.any()
    out = draw_comparison(np.full((256, 256, 3), GREY, np.uint8), boxes, cats, groups,
                          pred_cats, pred_groups, NAMES, pred_boxes=pred_boxes)
    assert out.dtype == np.uint8 and out.shape[1] > 1000


def test_every_group_gets_a_label_inside_the_image():
    # lone boxes crowded into the corners and along the edges, some groups too
    rng = np.random.default_rng(0)
    corners = np.array([[0, 0, 12, 12], [500, 500, 512, 512], [0, 500, 12, 512],
                        [500, 0, 512, 12]], float)
    xy = rng.uniform(0, 480, (30, 2))
    boxes = np.vstack([corners, np.hstack([xy, xy + rng.uniform(8, 30, (30, 2))])])
    cats = rng.integers(0, 2, len(boxes))
    groups = np.where(np.arange(len(boxes)) < 20, np.arange(len(boxes)), 100 + np.arange(
        len(boxes)) % 4)
    image = np.full((512, 512, 3), GREY, np.uint8)
    canvas, scaled, sizes = _zoom(image, boxes, 512)
    grouped = _collect_groups(scaled, cats, groups, NAMES, None)
    hulls = {g.key: _rect_points(scaled[g.members[0]]) for g in grouped if len(g.members) > 1}
    placed = _place_labels(scaled, grouped, hulls, sizes, 512, 512)
    assert {g.key for g, _, _ in placed} == {g.key for g in grouped}
    for _, _, (x0, y0, x1, y1) in placed:
        assert 0 <= x0 < x1 <= 512 and 0 <= y0 < y1 <= 512
    # and the drawn overlay shows each lone box's label colour next to it
    out = draw_groups(image, boxes[:1], [0], [0], NAMES, legend=False)
    assert _colour_pixels(out[:40, :80], group_palette(1)[0].colour) > 100


def test_heat_map_labels_each_row_with_its_box_index():
    _, boxes, cats, groups = _two_groups()
    boxes = np.vstack([boxes, [[100, 200, 130, 230]]])
    cats, groups = np.append(cats, 1), np.append(groups, 0)
    affinity = np.full((5, 5), 0.9)
    heat = draw_heat_map(affinity, boxes, cats, groups, NAMES, height=400)
    colour = cv2.applyColorMap(np.array([[round(0.9 * 255)]], np.uint8),
                               cv2.COLORMAP_VIRIDIS)[0, 0, ::-1]
    inside = (heat == colour).all(axis=2)
    rows = np.flatnonzero(inside.sum(axis=1) > 50)  # the matrix, not the colour bar
    cols = np.flatnonzero(inside.sum(axis=0) > 50)
    top, left = rows[0], cols[0]

    def runs(mask: np.ndarray) -> int:
        """Runs of True, gaps of up to 7 px closed (a glyph's thin strokes)."""
        hits = np.flatnonzero(mask)
        return int(len(hits) > 0) + int((np.diff(hits) > 8).sum())

    # one index label per row in the left margin, one per column above (drawn sideways)
    margin = heat[top:rows[-1] + 1, :left - 12]
    assert runs((margin < 200).all(axis=2).any(axis=1)) == 5
    above = heat[top - 22:top - 9, left:cols[-1] + 1]  # under the title, over the strips
    assert runs((above < 200).all(axis=2).any(axis=0)) == 5
