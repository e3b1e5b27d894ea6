"""The benchmark's Markdown section (``section.md`` and BENCHMARKS.md)."""

from __future__ import annotations

import math
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from benchlib.methods import DECODER, FAMILIES
from benchlib.scoring import ERROR_RATIO_TARGET, METRICS, Row, best_row, error_ratio, headline

if TYPE_CHECKING:
    from benchlib.datasets import DatasetSpec


def fmt(x: float | None, digits: int = 3) -> str:
    if x is None:
        return "–"
    return "∞" if math.isinf(x) else f"{x:.{digits}f}"


def fmt_seconds(x: float | None) -> str:
    return "–" if x is None else f"{x:.0f}"


def machine_text(device: torch.device, threads: int) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"CPU, {threads} torch threads"
    return (f"{cpu}, {os.cpu_count()} cores visible; {where}; Python {platform.python_version()},"
            f" torch {torch.__version__}, {platform.system()} {platform.release()}")


def render(spec: DatasetSpec, rows: list[Row], meta: dict[str, Any],
           extra: Sequence[dict[str, Any]] = ()) -> str:
    """The dataset's BENCHMARKS.md section (Markdown, heading included)."""
    lines = [f"## Learned grouping vs the status quo ({spec.title})", ""]
    if meta.get("partial"):
        lines += [f"**Partial results**: {meta['partial']}", ""]
    lines += [
        f"Measured {meta['date']} on {meta['machine']}. The machine is shared: load average "
        f"{meta['load_start']:.1f} at the start, {meta['load_end']:.1f} at the end, so times are "
        "indicative only.",
        "",
        f"Command: `{meta['command']}`" + (f"; {meta['reused']}." if meta["reused"] else ""),
        "",
        f"Data: {spec.description}; every method sees the same ground-truth boxes. Metrics on the "
        "whole val set (`detgroup.metrics`; ARI per image averaged, group/pair F1 pooled). "
        "Clustering baselines are tuned on train images (grid search for the best mean "
        f"{'ARI' if spec.tune_score == 'ari' else 'exact-group F1'}); trained models decode with "
        f"`{DECODER}` and are scored with their weights after the last epoch.",
        "",
    ]
    head = headline(rows, spec.headline_families)
    full = next((r for r in rows if r.key == "full"), None)
    if head is not None:
        lines += [
            f"**Headline**: detgroup ARI {head['ari']:.3f} vs {head['baseline_ari']:.3f} for the "
            "best realistic baseline by ARI among "
            f"{' and '.join(FAMILIES[f] for f in spec.headline_families)} "
            f"({head['baseline_name']}), "
            f"×{fmt(head['ari_ratio'], 2)}; "
            f"exact-group F1 {head['exact_group_f1']:.3f} vs "
            f"{head['baseline_exact_group_f1']:.3f}, ×{fmt(head['exact_group_f1_ratio'], 2)}; "
            f"grouping error (1 − ARI) ×{fmt(head['error_ratio'], 1)} lower.",
            "",
        ]
    others = [best_row(rows, family) for family in FAMILIES if family != "detgroup"]
    others.append(next((r for r in rows if r.key == "no_relation"), None))
    others = [r for r in others if r is not None]
    if full is not None and others:
        lines += ["| detgroup compared with (best realistic method of each family) | its ARI | "
                  "its (1 − ARI) / detgroup's |", "|---|---|---|"]
        lines += [f"| {r.name} | {r.metrics['ari']:.3f} | "
                  f"×{fmt(error_ratio(r.metrics['ari'], full.metrics['ari']), 2)} |"
                  for r in others]
        lines.append("")
    if full is not None and spec.targets:
        lines += [f"| target (detgroup, {spec.title} val) | value | met |", "|---|---|---|"]
        for key, threshold, label in spec.targets:
            value = full.metrics[key]
            lines.append(f"| {label} ≥ {threshold:.2f} | {value:.3f} | "
                         f"{'yes' if value >= threshold else '**missed**'} |")
        if head is not None and spec.key == "synth":
            ok = head["error_ratio"] >= ERROR_RATIO_TARGET
            lines.append(f"| (1 − ARI) ≥ {ERROR_RATIO_TARGET:g}× lower than the best status quo "
                         f"| ×{fmt(head['error_ratio'], 1)} | {'yes' if ok else '**missed**'} |")
        lines.append("")
    lines += [
        "| family | method | categories | cat acc | cat macro-F1 | ARI | NMI | Hungarian acc | "
        "exact-group F1 | group F1 | pair F1 | group PQ | train s | tune s | infer ms/img | "
        "CPU ms/img |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        m = r.metrics
        name = f"{r.name} †" if r.oracle else r.name
        lines.append(
            f"| {FAMILIES[r.family]} | {name} | {r.categories} | {m['cat_acc']:.3f} | "
            f"{m['cat_macro_f1']:.3f} | {m['ari']:.3f} | {m['nmi']:.3f} | "
            f"{m['hungarian_acc']:.3f} | {m['exact_group_f1']:.3f} | {m['group_f1']:.3f} | "
            f"{m['pair_f1']:.3f} | {m['group_pq']:.3f} | {fmt_seconds(r.train_seconds)} | "
            f"{fmt_seconds(r.tune_seconds)} | {r.infer_ms:.1f} | {r.infer_cpu_ms:.1f} |"
        )
    lines += [
        "",
        "† oracle: uses ground truth the user does not have (the true categories, or the true "
        "number of groups); shown for reference, never counted as a baseline to beat. "
        "Position-only rows within the classifier's categories are the realistic ones. "
        "*train s*: training the model the row needs (the per-box classifier for the clustering "
        "rows; sum of its epoch times); *tune s*: the grid search on train; "
        "*infer ms/img*: wall time of the model forward (batches of 8) plus grouping, per val "
        "image; *CPU ms/img*: CPU time of this process for the whole val pass (image loading "
        "included; less sensitive to the other jobs on the machine than wall time).",
        "",
        "Chosen settings:",
        "",
    ]
    lines += [f"* {r.key}: {r.setting}" for r in rows]
    if extra:
        lines += ["", "Other splits (same models and tuned settings; *categories ignored*: truth, "
                  "decoder and clustering see one category, only the grouping is scored):", "",
                  "| split | method | Hungarian acc | NMI | ARI | exact-group F1 | pair F1 | "
                  "\\|predicted − true\\| groups per image |", "|---|---|---|---|---|---|---|---|"]
        for e in extra:
            m = e["metrics"]
            lines.append(
                f"| {e['split']} | {e['method']} | {m['hungarian_acc']:.3f} | {m['nmi']:.3f} | "
                f"{m['ari']:.3f} | {m['exact_group_f1']:.3f} | {m['pair_f1']:.3f} | "
                f"{m['num_groups_mae']:.1f} |")
    lines += ["", "All metrics:", "",
              "| method | categories | " + " | ".join(METRICS) + " |",
              "|---|---|" + "---|" * len(METRICS)]
    for r in rows:
        lines.append(f"| {r.key} | {r.categories} | "
                     + " | ".join(fmt(r.metrics[k]) for k in METRICS) + " |")
    return "\n".join(lines) + "\n"
