"""Writing evaluation results: per-image CSV, the mean as CSV and JSON, and a Markdown table with the settings."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .metrics import METRICS, SHORT_NAMES, UNITS_NOTE


def mean_metrics(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Mean over images of each metric (Marigold's ``MetricTracker``: every image weighs the same)."""
    if not rows:
        raise ValueError("No image was evaluated; nothing to average.")
    return {m: float(np.mean([r[m] for r in rows])) for m in METRICS}


def write_report(out_dir: str, rows: Sequence[Mapping[str, Any]], settings: Mapping[str, Any]) -> dict[str, str]:
    """``per_image.csv``, ``metrics.csv``, ``metrics.json`` and ``metrics.md`` in ``out_dir``; returns the paths."""
    os.makedirs(out_dir, exist_ok=True)
    mean = mean_metrics(rows)
    paths = {
        k: os.path.join(out_dir, f)
        for k, f in (
            ("per_image", "per_image.csv"),
            ("csv", "metrics.csv"),
            ("json", "metrics.json"),
            ("md", "metrics.md"),
        )
    }
    extra = [k for k in rows[0] if k not in METRICS and k != "name"]
    with open(paths["per_image"], "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["name", *METRICS, *extra])
        for r in rows:
            w.writerow([r["name"], *(f"{r[m]:.9g}" for m in METRICS), *(r.get(k, "") for k in extra)])
    with open(paths["csv"], "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["images", *METRICS])
        w.writerow([len(rows), *(f"{mean[m]:.9g}" for m in METRICS)])
    with open(paths["json"], "w", encoding="utf-8") as f:
        json.dump({"images": len(rows), "metrics_x100": mean, "settings": dict(settings)}, f, indent=2, default=str)
    with open(paths["md"], "w", encoding="utf-8") as f:
        f.write(markdown_table(mean, len(rows), settings))
    return paths


def markdown_table(mean: Mapping[str, float], count: int, settings: Mapping[str, Any]) -> str:
    """A Markdown report: the units note, the settings, one table row of means (↓ lower / ↑ higher is better)."""
    head = [f"{SHORT_NAMES[m]} {'↑' if m.startswith('delta') else '↓'}" for m in METRICS]
    lines = [
        f"# Depth evaluation: {settings.get('dataset', '?')} ({count} images)",
        "",
        f"> {UNITS_NOTE}",
        "",
        "| setting | value |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in settings.items()),
        "",
        "| images | " + " | ".join(head) + " |",
        "|---|" + "---|" * len(METRICS),
        f"| {count} | " + " | ".join(f"{mean[m]:.2f}" for m in METRICS) + " |",
        "",
    ]
    return "\n".join(lines)
