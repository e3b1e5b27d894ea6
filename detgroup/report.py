"""The evaluation report: a static HTML page (no server, no framework) to browse the errors.

``detgroup eval ... --report DIR`` (and ``detgroup demo``) write into DIR:

* ``index.html``: the summary metrics, one line each on what they mean; what happened to the
  true groups over the whole set (kept whole, split, merged, category wrong); the category
  confusion matrix of the boxes; and one row per image, worst first by the chosen metric (a
  small inline script re-sorts by another; ``index.html#sort=KEY`` opens sorted by KEY), with
  the image's metrics, the fates of its true groups and, for the worst ``max_images``, a
  thumbnail of truth | prediction with matched groups (`detgroup.visualize.compare`);
* ``pages/img<ID>.html`` for those worst images: the comparison at full size, the fate of each
  true group, the heat map of same-group probabilities with box indices on both axes, and a
  table of the boxes;
* ``images/*.png`` (paths relative, so DIR can be copied) and ``report.json`` (the rows, as
  data; its presence marks DIR as a report that a rerun may replace).

The folder is written whole into a temporary folder and renamed onto DIR
(`detgroup.atomic.atomic_directory`): a rerun replaces it, never leaves half a report.

`write_comparisons` draws truth | prediction PNGs for the images of a predictions file
(``detgroup viz --truth``).
"""

from __future__ import annotations

import heapq
import html
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
from tqdm import tqdm

from detgroup.atomic import atomic_directory, atomic_write_json
from detgroup.data.coco_groups import load_coco_groups
from detgroup.data.images import read_image_rgb
from detgroup.errors import DetgroupError
from detgroup.metrics import category_confusion
from detgroup.visualize import (
    WRONG_CATEGORY,
    WRONG_GROUP,
    Comparison,
    compare,
    comparison_panels,
    draw_comparison,
    draw_heat_map,
    number_style,
    save_rgb_png,
    side_by_side,
)

if TYPE_CHECKING:
    from detgroup.model.postprocess import Prediction

__all__ = [
    "METRICS",
    "SORT_KEYS",
    "GroupFate",
    "ReportBuilder",
    "group_fates",
    "read_report",
    "write_comparisons",
]

log = logging.getLogger(__name__)

MARKER = "report.json"
SORT_KEYS = ("ari", "exact_group_f1", "cat_acc")  # metrics the image table can be sorted by
THUMB_WIDTH = 560  # px, the widest thumbnail

# Summary metrics in the order shown: (key, label, what it means in one line).
METRICS: tuple[tuple[str, str, str], ...] = (
    ("cat_acc", "category accuracy", "share of boxes given their true category"),
    ("cat_macro_f1", "category macro F1",
     "F1 of each category, averaged: a rare category counts as much as a common one"),
    ("ari", "ARI", "adjusted Rand index of the grouping per image, averaged: 1 = the true "
     "partition, 0 = no better than chance"),
    ("nmi", "NMI", "normalised mutual information of true and predicted groups per image, "
     "averaged (1 = identical)"),
    ("ami", "AMI", "mutual information adjusted for chance, per image, averaged"),
    ("hungarian_acc", "Hungarian accuracy",
     "share of boxes kept when each predicted group is matched to at most one true group"),
    ("pair_precision", "pair precision",
     "of the box pairs predicted in one group, the share that are in one true group"),
    ("pair_recall", "pair recall",
     "of the box pairs in one true group, the share predicted in one group"),
    ("pair_f1", "pair F1", "harmonic mean of pair precision and recall"),
    ("group_precision", "group precision",
     "share of predicted groups that match a true group of their category (member IoU > 0.5)"),
    ("group_recall", "group recall",
     "share of true groups matched by a predicted group (member IoU > 0.5, same category)"),
    ("group_f1", "group F1", "harmonic mean of group precision and recall"),
    ("exact_group_precision", "exact-group precision",
     "share of predicted groups with exactly the members and category of a true group"),
    ("exact_group_recall", "exact-group recall",
     "share of true groups predicted exactly (same members, same category)"),
    ("exact_group_f1", "exact-group F1", "harmonic mean of exact-group precision and recall"),
    ("group_pq", "group PQ", "panoptic quality: summed member IoU of matched groups over "
     "matched + half the unmatched groups"),
    ("num_groups_mae", "groups count error",
     "mean absolute difference between predicted and true number of groups per image"),
    ("model_seconds", "model seconds", "network time per image"),
    ("decode_seconds", "decode seconds", "partition decoder time per image"),
)
_LABELS = {key: label for key, label, _ in METRICS}


# ------------------------------------------------------------------------------------------
# What happened to each true group


@dataclass(frozen=True)
class GroupFate:
    """What the prediction did with one true group.

    ``number``: the group's number in the comparison (colour and label in the pictures);
    ``category``: its true category index; ``size``: its boxes; ``split_into``: how many
    predicted groups hold its boxes; ``merged_with``: numbers of the other true groups that
    share a predicted group with it; ``category_wrong``: its boxes with a wrong category;
    ``predicted_categories``: the category indices predicted for those boxes.
    """

    number: int
    category: int
    size: int
    split_into: int
    merged_with: tuple[int, ...]
    category_wrong: int
    predicted_categories: tuple[int, ...] = ()

    @property
    def kept_whole(self) -> bool:
        """Same members and category as one predicted group."""
        return self.split_into == 1 and not self.merged_with and not self.category_wrong

    def describe(self, category_names: list[str]) -> str:
        """One line, e.g. ``3 cat (4 boxes): split into 2; merged with 5``."""
        head = f"{self.number} {category_names[self.category]} ({self.size} " \
               f"box{'es' * (self.size != 1)})"
        if self.kept_whole:
            return f"{head}: kept whole"
        parts = []
        if self.split_into > 1:
            parts.append(f"split into {self.split_into}")
        if self.merged_with:
            parts.append("merged with " + ", ".join(str(n) for n in self.merged_with))
        if self.category_wrong:
            names = "/".join(category_names[c] for c in self.predicted_categories)
            parts.append(f"category wrong on {self.category_wrong} of {self.size} ({names})")
        return f"{head}: " + "; ".join(parts)


def group_fates(comparison: Comparison, gt_categories: np.ndarray,
                pred_categories: np.ndarray) -> list[GroupFate]:
    """The fate of every true group of one image (same boxes on both sides: ``comparison``
    from `detgroup.visualize.compare` without ``pred_boxes``), in number order.

    ``gt_categories``, ``pred_categories``: int [N].
    """
    match = comparison.match
    gt_categories = np.asarray(gt_categories, np.int64)
    pred_categories = np.asarray(pred_categories, np.int64)
    fates = []
    for t, key in enumerate(match.gt_keys):
        members = match.gt_index == t  # [N]
        preds = np.unique(match.pred_index[members])
        others = np.unique(match.gt_index[np.isin(match.pred_index, preds)])
        merged = sorted(comparison.gt_numbers[tuple(int(v) for v in match.gt_keys[o])]
                        for o in others if o != t)
        wrong = members & (pred_categories != gt_categories)
        fates.append(GroupFate(
            number=comparison.gt_numbers[(int(key[0]), int(key[1]))], category=int(key[0]),
            size=int(members.sum()), split_into=len(preds), merged_with=tuple(merged),
            category_wrong=int(wrong.sum()),
            predicted_categories=tuple(int(c) for c in np.unique(pred_categories[wrong]))))
    return sorted(fates, key=lambda f: f.number)


def _fate_counts(fates: list[GroupFate]) -> dict[str, int]:
    return {"groups": len(fates), "kept_whole": sum(f.kept_whole for f in fates),
            "split": sum(f.split_into > 1 for f in fates),
            "merged": sum(bool(f.merged_with) for f in fates),
            "category_wrong": sum(f.category_wrong > 0 for f in fates)}


# ------------------------------------------------------------------------------------------
# Collecting images


@dataclass
class _Detail:
    """What the pictures of one image need (kept for the worst images only)."""

    prediction: Prediction
    gt_categories: np.ndarray
    gt_groups: np.ndarray
    comparison: Comparison
    fates: list[GroupFate]


@dataclass
class ReportBuilder:
    """Collects the evaluated images (`add`, the ``on_image`` of
    `detgroup.engine.evaluate.evaluate`) and writes the report (`write`).

    Args:
        category_names: the model's categories (class index → name).
        image_files: image id → image file path (to draw the pictures).
        sort: the metric the table is sorted by, worst first (one of `SORT_KEYS`).
        max_images: thumbnails and per-image pages only for this many worst images (by
            ``sort``); the table lists every image.
        meta: (label, text) lines for the page's header (data file, checkpoint, decoder).
    """

    category_names: list[str]
    image_files: dict[int, Path]
    sort: str = "ari"
    max_images: int = 100
    meta: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.sort not in SORT_KEYS:
            raise DetgroupError(f"report: sort must be one of {list(SORT_KEYS)}, "
                                f"got {self.sort!r}")
        if self.max_images < 0:
            raise DetgroupError(f"report: max_images must be >= 0, got {self.max_images}")
        num = len(self.category_names)
        self.confusion = np.zeros((num, num), dtype=np.int64)  # [C, C] rows: true
        self.rows: list[dict[str, Any]] = []
        self._worst: list[tuple[float, int, int, _Detail]] = []  # heap of the worst, negated
        self._added = 0

    def add(self, prediction: Prediction, gt_categories: np.ndarray,
            gt_groups: np.ndarray, metrics: dict[str, Any]) -> None:
        """One image: its prediction, true labels (int [N], the prediction's boxes) and
        metrics (`detgroup.metrics.image_metrics`)."""
        image_id = int(prediction.image_id)
        if image_id not in self.image_files:
            raise DetgroupError(f"report: no image file for image id {image_id}")
        gt_categories = np.asarray(gt_categories, np.int64)
        gt_groups = np.asarray(gt_groups, np.int64)
        comparison = compare(prediction.boxes, gt_categories, gt_groups, prediction.categories,
                             prediction.groups)
        fates = group_fates(comparison, gt_categories, prediction.categories)
        self.confusion += category_confusion(gt_categories, prediction.categories,
                                             len(self.category_names))
        counts = _fate_counts(fates)
        self.rows.append({
            "image_id": image_id, "file_name": str(self.image_files[image_id].name),
            "num_boxes": int(metrics["num_boxes"]),
            "num_gt_groups": int(metrics["num_gt_groups"]),
            "num_pred_groups": int(metrics["num_pred_groups"]),
            **{k: float(metrics[k]) for k in ("ari", "exact_group_f1", "cat_acc", "pair_f1",
                                              "group_pq")},
            "fates": counts,
            "fate_lines": [f.describe(self.category_names) for f in fates
                           if not f.kept_whole],
        })
        if self.max_images == 0:
            return
        key = (-float(metrics[self.sort]), -image_id, self._added)
        detail = _Detail(prediction, gt_categories, gt_groups, comparison, fates)
        self._added += 1
        if len(self._worst) < self.max_images:
            heapq.heappush(self._worst, (*key, detail))
        else:
            heapq.heappushpop(self._worst, (*key, detail))

    def sorted_rows(self, key: str | None = None) -> list[dict[str, Any]]:
        """The rows, worst first by ``key`` (default: ``sort``), ties by image id."""
        key = key or self.sort
        return sorted(self.rows, key=lambda r: (r[key], r["image_id"]))

    def write(self, out_dir: str | Path, summary: dict[str, Any]) -> Path:
        """Write the report folder ``out_dir`` (atomically); returns its ``index.html``."""
        out_dir = Path(out_dir)
        details = {d.prediction.image_id: d for *_, d in self._worst}
        rows = self.sorted_rows()
        worst = [r["image_id"] for r in rows if r["image_id"] in details]
        with atomic_directory(out_dir, marker=MARKER) as tmp:
            (tmp / "images").mkdir()
            (tmp / "pages").mkdir()
            for k, image_id in enumerate(tqdm(worst, desc="report", leave=False)):
                self._write_image(tmp, details[image_id], rows, worst, k)
            (tmp / "index.html").write_text(self._index_html(rows, details, summary),
                                            encoding="utf-8")
            atomic_write_json(tmp / MARKER, {
                "detgroup_report": 1, "sort": self.sort, "summary": summary,
                "category_names": self.category_names,
                "confusion": self.confusion.tolist(), "images": rows,
            }, indent=1)
        return out_dir / "index.html"

    # --- pictures and pages ---------------------------------------------------------------

    def _write_image(self, root: Path, detail: _Detail, rows: list[dict[str, Any]],
                     worst: list[int], k: int) -> None:
        pred = detail.prediction
        path = self.image_files[pred.image_id]
        pixels = read_image_rgb(path)
        stem = f"img{pred.image_id}"
        args = (pred.boxes, detail.gt_categories, detail.gt_groups, pred.categories,
                pred.groups, self.category_names)
        truth, guess = comparison_panels(pixels, *args, min_side=256, legend=False,
                                         comparison=detail.comparison)
        thumb = side_by_side(truth, guess, labels=("truth", "prediction"))
        if thumb.shape[1] > THUMB_WIDTH:
            scale = THUMB_WIDTH / thumb.shape[1]
            thumb = cv2.resize(thumb, (THUMB_WIDTH, max(1, round(thumb.shape[0] * scale))),
                               interpolation=cv2.INTER_AREA)
        save_rgb_png(root / "images" / f"{stem}_thumb.png", thumb)
        save_rgb_png(root / "images" / f"{stem}.png", draw_comparison(
            pixels, *args, group_scores=pred.group_scores, title=path.name,
            comparison=detail.comparison))
        n = len(pred.boxes)
        if n:
            heat = draw_heat_map(pred.affinity, pred.boxes, detail.gt_categories,
                                 detail.gt_groups, self.category_names,
                                 height=int(np.clip(16 * n + 160, 512, 1600)),
                                 comparison=detail.comparison,
                                 pred_categories=pred.categories, pred_groups=pred.groups)
            save_rgb_png(root / "images" / f"{stem}_heat.png", heat)
        row = next(r for r in rows if r["image_id"] == pred.image_id)
        (root / "pages" / f"{stem}.html").write_text(
            self._page_html(row, detail, worst, k), encoding="utf-8")

    def _page_html(self, row: dict[str, Any], detail: _Detail, worst: list[int],
                   k: int) -> str:
        names = self.category_names
        pred, comparison = detail.prediction, detail.comparison
        stem = f"img{pred.image_id}"
        nav = ['<a href="../index.html">all images</a>']
        if k > 0:
            nav.append(f'<a href="img{worst[k - 1]}.html">&larr; worse</a>')
        if k + 1 < len(worst):
            nav.append(f'<a href="img{worst[k + 1]}.html">better &rarr;</a>')
        metrics = "".join(
            f"<tr><th>{_LABELS.get(key, key)}</th><td>{row[key]:.3f}</td></tr>"
            for key in ("ari", "exact_group_f1", "cat_acc", "pair_f1", "group_pq"))
        metrics += (f"<tr><th>boxes</th><td>{row['num_boxes']}</td></tr>"
                    f"<tr><th>groups true / predicted</th><td>{row['num_gt_groups']} / "
                    f"{row['num_pred_groups']}</td></tr>")
        fates = "".join(f"<li class=\"{'ok' if f.kept_whole else 'bad'}\">"
                        f"{_swatch(f.number)}{html.escape(f.describe(names))}</li>"
                        for f in detail.fates) or "<li>no boxes</li>"
        box_rows = []
        for i in range(len(pred.boxes)):
            gt_key = (int(detail.gt_categories[i]), int(detail.gt_groups[i]))
            pred_key = (int(pred.categories[i]), int(pred.groups[i]))
            gt_no, pred_no = comparison.gt_numbers[gt_key], comparison.pred_numbers[pred_key]
            bits = int(comparison.pred_wrong[i])
            status = ", ".join(s for s, b in (("wrong group", WRONG_GROUP),
                                              ("wrong category", WRONG_CATEGORY)) if bits & b)
            box = ", ".join(f"{v:.0f}" for v in pred.boxes[i])
            box_rows.append(
                f"<tr class=\"{'bad' if bits else 'ok'}\"><td>{i}</td><td>{box}</td>"
                f"<td>{_swatch(gt_no)}{gt_no} {html.escape(names[gt_key[0]])}</td>"
                f"<td>{_swatch(pred_no)}{pred_no} {html.escape(names[pred_key[0]])}</td>"
                f"<td>{float(pred.scores[i]):.2f}</td><td>{status or 'right'}</td></tr>")
        heat = (f'<h2>Same-group probabilities</h2><p>Rows and columns are boxes (their index '
                f'on the axes), ordered by true group: the outer strip and the outlined blocks '
                f'are the true groups, the inner strip the predicted group of each box, in the '
                f'colours of the pictures. A perfect model shows bright blocks on the '
                f'outlines and dark elsewhere.</p><img src="../images/{stem}_heat.png" '
                f'alt="heat map of {html.escape(row["file_name"])}">') if len(pred.boxes) else ""
        body = f"""<nav>{' &middot; '.join(nav)}</nav>
<h1>{html.escape(row['file_name'])} <small>(image id {pred.image_id})</small></h1>
<table class="kv">{metrics}</table>
<p>Groups are matched by member overlap: a true group and its predicted match have the same
colour and number in both pictures. Badges on predicted boxes: <b class="badge">G</b> wrong
group, <b class="badge">C</b> wrong category.</p>
<img src="../images/{stem}.png" alt="truth and prediction of {html.escape(row['file_name'])}">
<h2>True groups</h2><ul class="fates">{fates}</ul>
{heat}
<h2>Boxes</h2>
<table class="grid"><thead><tr><th>index</th><th>box x1, y1, x2, y2</th><th>true group</th>
<th>predicted group</th><th>score</th><th>status</th></tr></thead>
<tbody>{''.join(box_rows)}</tbody></table>"""
        return _html_page(f"{row['file_name']}: detgroup report", body)

    def _index_html(self, rows: list[dict[str, Any]], details: dict[int, _Detail],
                    summary: dict[str, Any]) -> str:
        names = self.category_names
        meta = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
                       for k, v in [*self.meta,
                                    ("evaluated", f"{summary.get('num_images', len(rows))} "
                                                  f"images, {summary.get('num_boxes', '?')} "
                                                  "boxes")])
        metric_rows = "".join(
            f"<tr><th>{label}</th><td>{float(summary[key]):.4f}</td><td class=\"meaning\">{meaning}"
            "</td></tr>"
            for key, label, meaning in METRICS if key in summary)
        totals = {k: sum(r["fates"][k] for r in rows)
                  for k in ("groups", "kept_whole", "split", "merged", "category_wrong")}
        total = max(totals["groups"], 1)
        fate_text = (f"{totals['groups']} true groups: <b>{totals['kept_whole']}</b> kept whole "
                     f"({totals['kept_whole'] / total:.0%}), {totals['split']} split, "
                     f"{totals['merged']} merged with another, {totals['category_wrong']} with "
                     f"a wrong category (a group can be split and merged at once).")
        conf_head = "".join(f"<th>{html.escape(n)}</th>" for n in names)
        conf_rows = []
        for i, name in enumerate(names):
            line = self.confusion[i]
            cells = []
            for j, v in enumerate(line):
                share = v / max(line.sum(), 1)
                colour = "0,158,115" if i == j else "213,94,0"
                cells.append(f'<td style="background:rgba({colour},{0.7 * share:.2f})">{v}</td>')
            recall = line[i] / line.sum() if line.sum() else float("nan")
            conf_rows.append(f"<tr><th>{html.escape(name)}</th>{''.join(cells)}"
                             f"<td>{'&ndash;' if np.isnan(recall) else f'{recall:.3f}'}</td>"
                             "</tr>")
        buttons = "".join(f'<button type="button" data-sort="{k}">{_LABELS[k]}</button>'
                          for k in SORT_KEYS)
        table_rows = []
        for rank, r in enumerate(rows, start=1):
            stem = f"img{r['image_id']}"
            name = html.escape(r["file_name"])
            has_page = r["image_id"] in details
            link = f'<a href="pages/{stem}.html">{name}</a>' if has_page else name
            thumb = (f'<a href="pages/{stem}.html"><img class="thumb" loading="lazy" '
                     f'src="images/{stem}_thumb.png" alt="{name}"></a>' if has_page
                     else '<span class="muted">(not among the worst shown)</span>')
            f = r["fates"]
            fates = (f"{f['kept_whole']}/{f['groups']} whole"
                     + (f", {f['split']} split" if f["split"] else "")
                     + (f", {f['merged']} merged" if f["merged"] else "")
                     + (f", {f['category_wrong']} wrong category" if f["category_wrong"] else ""))
            lines = "".join(f"<li>{html.escape(t)}</li>" for t in r["fate_lines"][:6])
            if len(r["fate_lines"]) > 6:
                lines += f"<li>&hellip; {len(r['fate_lines']) - 6} more</li>"
            data = " ".join(f'data-{k}="{r[k]:.6f}"' for k in SORT_KEYS)
            table_rows.append(
                f'<tr data-id="{r["image_id"]}" {data}><td class="rank">{rank}</td>'
                f"<td>{link}<br><span class=\"muted\">id {r['image_id']}</span></td>"
                f"<td>{r['num_boxes']}</td><td>{r['num_gt_groups']} / {r['num_pred_groups']}"
                f"</td><td>{r['ari']:.3f}</td><td>{r['exact_group_f1']:.3f}</td>"
                f"<td>{r['cat_acc']:.3f}</td><td>{r['pair_f1']:.3f}</td>"
                f"<td>{fates}<ul class=\"fates\">{lines}</ul></td><td>{thumb}</td></tr>")
        shown = len(details)
        body = f"""<h1>detgroup evaluation report</h1>
<table class="kv">{meta}</table>
<div class="cols"><div>
<h2>Summary</h2>
<table class="grid"><thead><tr><th>metric</th><th>value</th><th>what it means</th></tr></thead>
<tbody>{metric_rows}</tbody></table></div><div>
<h2>True groups</h2><p>{fate_text}</p>
<h2>Categories of the boxes</h2>
<table class="grid confusion"><thead><tr><th>true &darr; predicted &rarr;</th>{conf_head}
<th>recall</th></tr></thead><tbody>{''.join(conf_rows)}</tbody></table></div></div>
<h2>Images, worst first by <span id="sorted-by">{_LABELS[self.sort]}</span></h2>
<p>Sort by: {buttons} &middot; {len(rows)} images; pictures and pages for the {shown} worst
by {_LABELS[self.sort]}. Thumbnails: truth | prediction; a true group and its predicted match
share colour and number; badges mark predicted boxes with a wrong group (G) or category (C).
</p>
<table class="grid" id="images"><thead><tr><th>#</th><th>image</th><th>boxes</th>
<th>groups true / pred</th><th>ARI</th><th>exact-group F1</th><th>category acc</th>
<th>pair F1</th><th>true groups</th><th>truth | prediction</th></tr></thead>
<tbody>{''.join(table_rows)}</tbody></table>
<script>{_SORT_SCRIPT}</script>"""
        return _html_page("detgroup evaluation report", body, sorted_by=self.sort)


def _swatch(number: int) -> str:
    r, g, b = number_style(number).colour
    return f'<span class="sw" style="background:rgb({r},{g},{b})"></span>'


_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#181818;background:#fff}
h1 small{font-weight:normal;color:#666}
table{border-collapse:collapse;margin:.5em 0}
.grid th,.grid td{border:1px solid #ccc;padding:3px 6px;text-align:left;vertical-align:top}
.grid thead th{background:#f0f0f0}
.kv th{text-align:left;padding:1px 12px 1px 0;font-weight:600}
.confusion td{text-align:right;min-width:3em}
.thumb{max-width:560px;display:block}
img{max-width:100%}
.muted{color:#777;font-size:90%}
ul.fates{margin:.2em 0;padding-left:1.2em;font-size:90%}
li.ok{color:#2a6}
.bad td:last-child{color:#c03}
.sw{display:inline-block;width:.9em;height:.9em;margin-right:.35em;vertical-align:-1px;
border:1px solid #444}
.badge{background:#ff0066;color:#fff;padding:0 .3em}
button{margin:0 .2em;font:inherit}
button.on{font-weight:bold}
nav{margin-bottom:1em}
.cols{display:flex;flex-wrap:wrap;gap:0 2.5em;align-items:flex-start}
.cols>div:first-child{flex:0 1 62em}
.cols>div+div{flex:1 1 16em;max-width:36em}
.grid td.meaning{font-size:92%;color:#333}
"""

# Re-sorts the image table by a metric, worst first; reads and sets ``#sort=KEY``.
_SORT_SCRIPT = """
(function () {
  "use strict";
  var body = document.getElementById("images").tBodies[0];
  var buttons = Array.prototype.slice.call(document.querySelectorAll("button[data-sort]"));
  function sortBy(key) {
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var d = parseFloat(a.getAttribute("data-" + key)) - parseFloat(b.getAttribute("data-" + key));
      return d !== 0 ? d : parseInt(a.getAttribute("data-id"), 10) -
        parseInt(b.getAttribute("data-id"), 10);
    });
    rows.forEach(function (row, i) {
      row.cells[0].textContent = String(i + 1);
      body.appendChild(row);
    });
    buttons.forEach(function (b) {
      b.className = b.getAttribute("data-sort") === key ? "on" : "";
      if (b.className) { document.getElementById("sorted-by").textContent = b.textContent; }
    });
    document.body.setAttribute("data-sorted-by", key);
  }
  buttons.forEach(function (b) {
    b.addEventListener("click", function () {
      var key = b.getAttribute("data-sort");
      sortBy(key);
      history.replaceState(null, "", "#sort=" + key);
    });
  });
  var m = /^#sort=([a-z_]+)$/.exec(location.hash);
  var wanted = m && buttons.some(function (b) { return b.getAttribute("data-sort") === m[1]; });
  sortBy(wanted ? m[1] : document.body.getAttribute("data-sorted-by"));
}());
"""


def _html_page(title: str, body: str, *, sorted_by: str | None = None) -> str:
    attr = f' data-sorted-by="{sorted_by}"' if sorted_by else ""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>"
            f"<body{attr}>\n{body}\n</body></html>\n")


# ------------------------------------------------------------------------------------------
# Truth | prediction PNGs of two files (``detgroup viz --truth``)


def write_comparisons(predictions: str | Path, truth: str | Path, images_dir: str | Path,
                      out_dir: str | Path, *, limit: int = 0) -> int:
    """Draw truth | prediction with matched groups for each image of ``predictions`` (a
    COCO-with-groups file, e.g. ``infer``'s ``predictions.json``) found in ``truth`` (by
    ``file_name``, else by image id); boxes are matched at IoU >= 0.5, categories by name.
    Writes ``out_dir/<file_name without suffix>.png`` (subfolders kept); returns the count.

    Raises:
        DetgroupError: a file is unreadable or invalid, or an image of ``predictions`` is not
            in ``truth``.
    """
    from detgroup.engine.infer import output_names, per_category_groups

    pred_coco, true_coco = load_coco_groups(predictions), load_coco_groups(truth)
    images_dir, out_dir = Path(images_dir), Path(out_dir)
    names = list(true_coco.category_names)
    names += [n for n in pred_coco.category_names if n not in names]
    pred_to_names = np.array([names.index(n) for n in pred_coco.category_names], np.int64)
    true_by_name = {info["file_name"]: info for info in true_coco.images}
    true_by_id = {info["id"]: info for info in true_coco.images}
    items = pred_coco.images[:limit] if limit > 0 else pred_coco.images
    pairs = []
    for info in items:
        match = true_by_name.get(info["file_name"])
        if match is None:
            by_id = true_by_id.get(info["id"])
            if by_id is not None and Path(by_id["file_name"]).name == Path(info["file_name"]).name:
                match = by_id
        if match is None:
            raise DetgroupError(f"{predictions}: image {info['file_name']!r} (id {info['id']}) "
                                f"is not in {truth}")
        pairs.append((info, match))
    written = 0
    # names that cannot collide: subfolders kept, a suffix kept where x.png and x.jpg meet
    stems = output_names([true_info["file_name"] for _, true_info in pairs])
    for (info, true_info), stem in tqdm(list(zip(pairs, stems, strict=True)), desc="viz",
                                        leave=False):
        pixels = read_image_rgb(images_dir / true_info["file_name"])
        target, guess = true_coco.targets(true_info["id"]), pred_coco.targets(info["id"])
        pred_cat = pred_to_names[guess["categories"]] if len(guess["categories"]) else \
            guess["categories"]
        pred_grp = per_category_groups(pred_cat, guess["groups"])
        scores: dict[tuple[int, int], float] = {}
        for ann, c, g in zip(pred_coco.anns_by_image.get(info["id"], []), pred_cat, pred_grp,
                             strict=True):
            if "group_score" in ann:
                scores[(int(c), int(g))] = float(ann["group_score"])
        canvas = draw_comparison(pixels, target["boxes"], target["categories"],
                                 target["groups"], pred_cat, pred_grp, names,
                                 pred_boxes=guess["boxes"], group_scores=scores or None,
                                 title=true_info["file_name"])
        path = out_dir / f"{stem}.png"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise DetgroupError(f"{path.parent}: cannot create output folder "
                                f"({err.strerror})") from None
        save_rgb_png(path, canvas)
        written += 1
    log.info("wrote %d comparisons to %s", written, out_dir)
    return written


def read_report(out_dir: str | Path) -> dict[str, Any]:
    """The data of a written report (``report.json``)."""
    return json.loads((Path(out_dir) / MARKER).read_text())
