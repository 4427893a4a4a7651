"""Training logs that need no extra package: an accelerate tracker writing JSON lines and CSV, and an SVG plot.

``logs/metrics.jsonl`` holds one object per logged step (``{"step": 12, "loss": …, "lr": …}``), ``logs/metrics.csv``
the same as a table (columns grow as new keys appear; the file is rewritten then), and ``logs/<key>.svg`` a line
plot per key at the end. TensorBoard is added when it is installed (accelerate's own tracker).
"""

from __future__ import annotations

import csv
import json
import math
import os
from typing import Any

from accelerate.tracking import GeneralTracker


class JsonlTracker(GeneralTracker):
    """accelerate tracker: JSON lines + CSV under ``logging_dir`` (main process only)."""

    name = "jsonl"
    requires_logging_directory = True
    main_process_only = True

    def __init__(self, run_name: str, logging_dir: str):
        super().__init__()
        self.run_name = run_name
        self.dir = os.fspath(logging_dir)
        os.makedirs(self.dir, exist_ok=True)
        self.jsonl = os.path.join(self.dir, "metrics.jsonl")
        self.csv = os.path.join(self.dir, "metrics.csv")
        self.columns: list[str] = ["step"]
        self.rows: list[dict[str, Any]] = read_jsonl(self.jsonl)  # resumed runs append
        for row in self.rows:
            self._grow(row)

    @property
    def tracker(self):
        return self

    def _grow(self, row: dict) -> bool:
        new = [k for k in row if k not in self.columns]
        self.columns += new
        return bool(new)

    def store_init_configuration(self, values: dict) -> None:
        with open(os.path.join(self.dir, "config.json"), "w", encoding="utf-8") as f:
            json.dump(values, f, indent=2, default=str)

    def log(self, values: dict, step: int | None = None, **kwargs) -> None:
        row = {"step": step, **{k: _plain(v) for k, v in values.items()}}
        self.rows.append(row)
        with open(self.jsonl, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        if self._grow(row) or not os.path.exists(self.csv):
            self._rewrite_csv()
        else:
            with open(self.csv, "a", encoding="utf-8", newline="") as f:
                csv.DictWriter(f, self.columns).writerow(row)

    def truncate(self, step: int) -> None:
        """Drop rows logged after ``step`` (a resumed run repeats the steps after its checkpoint)."""
        self.rows = [r for r in self.rows if r.get("step") is None or r["step"] <= step]
        with open(self.jsonl, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in self.rows)
        self._rewrite_csv()

    def _rewrite_csv(self) -> None:
        with open(self.csv, "w", encoding="utf-8", newline="") as f:
            w = csv.DictWriter(f, self.columns)
            w.writeheader()
            w.writerows(self.rows)

    def finish(self) -> None:
        for key in self.columns[1:]:
            points = [(r["step"], r[key]) for r in self.rows if isinstance(r.get(key), (int, float))]
            if len(points) >= 2:
                write_svg_plot(os.path.join(self.dir, f"{key.replace('/', '_')}.svg"), points, key)


def _plain(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    return v


def read_jsonl(path: str) -> list[dict[str, Any]]:
    """The rows of a JSON-lines log (empty if the file does not exist)."""
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_svg_plot(
    path: str, points: list[tuple[float, float]], title: str, width: int = 640, height: int = 360
) -> str:
    """A plain line plot (step vs value) as SVG, with min/max labels; no plotting library needed."""
    xs, ys = [p[0] for p in points], [p[1] for p in points if math.isfinite(p[1])]
    if not ys:
        return path
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = min(ys), max(ys) if max(ys) > min(ys) else min(ys) + 1
    m = 40

    def px(x: float, y: float) -> str:
        u = m + (x - x0) / (x1 - x0) * (width - 2 * m)
        v = height - m - (y - y0) / (y1 - y0) * (height - 2 * m)
        return f"{u:.1f},{v:.1f}"

    line = " ".join(px(x, y) for x, y in points if math.isfinite(y))
    svg = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
        f'font-size="12"><rect width="100%" height="100%" fill="white"/>'
        f'<text x="{m}" y="20">{title}</text>'
        f'<line x1="{m}" y1="{height - m}" x2="{width - m}" y2="{height - m}" stroke="#888"/>'
        f'<line x1="{m}" y1="{m}" x2="{m}" y2="{height - m}" stroke="#888"/>'
        f'<text x="2" y="{m + 4}">{y1:.4g}</text><text x="2" y="{height - m}">{y0:.4g}</text>'
        f'<text x="{m}" y="{height - m + 16}">{x0:g}</text>'
        f'<text x="{width - m - 30}" y="{height - m + 16}">step {x1:g}</text>'
        f'<polyline fill="none" stroke="#1f77b4" stroke-width="1.5" points="{line}"/></svg>'
    )
    with open(path, "w", encoding="utf-8") as f:
        f.write(svg)
    return path


def available_trackers(logging_dir: str, run_name: str) -> list:
    """Our JSON-lines tracker, plus TensorBoard when the package is installed."""
    trackers: list = [JsonlTracker(run_name, logging_dir)]
    try:
        import tensorboard  # noqa: F401

        trackers.append("tensorboard")
    except ImportError:
        pass
    return trackers
