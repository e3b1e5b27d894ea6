"""Tests for detgroup.visualize: canvas shapes, group colours on the boxes, panels, PNG I/O."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from detgroup.errors import DetgroupError
from detgroup.visualize import (
    OKABE_ITO,
    draw_groups,
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
