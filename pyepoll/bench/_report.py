"""Tables, medians, ratios and charts shared by every scenario."""
from __future__ import annotations

import os
import platform
import statistics
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence


@dataclass
class Series:
    """Repeated measurements of one implementation at one point."""

    samples: List[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.samples) if self.samples else float("nan")

    @property
    def low(self) -> float:
        return min(self.samples) if self.samples else float("nan")

    @property
    def high(self) -> float:
        return max(self.samples) if self.samples else float("nan")


class Table:
    """Rows = implementations, columns = points (N, message size, ...).

    Each cell holds a Series; printing shows median [min-max] and the ratio
    of each median to the reference row's median at the same point.
    """

    def __init__(self, title: str, unit: str, points: Sequence[object],
                 reference: Optional[str] = None,
                 lower_is_better: bool = True) -> None:
        self.title = title
        self.unit = unit
        self.points = list(points)
        self.reference = reference
        self.lower_is_better = lower_is_better
        self.rows: Dict[str, Dict[object, Series]] = {}
        self.notes: List[str] = []

    def add(self, row: str, point: object, value: float) -> None:
        self.rows.setdefault(row, {}).setdefault(point, Series()).samples.append(value)

    def cell(self, row: str, point: object) -> Optional[Series]:
        return self.rows.get(row, {}).get(point)

    def ratio(self, row: str, point: object) -> Optional[float]:
        if self.reference is None:
            return None
        ref = self.cell(self.reference, point)
        got = self.cell(row, point)
        if not ref or not got or not ref.samples or not got.samples or ref.median == 0:
            return None
        return got.median / ref.median

    def render(self) -> str:
        head = [f"{self.title}  ({self.unit}; median [min-max]"
                + (f"; x = ratio to {self.reference}" if self.reference else "")
                + (", lower is better)" if self.lower_is_better else ", higher is better)")]
        name_w = max([len(r) for r in self.rows] + [14])
        cols = [str(p) for p in self.points]
        cells: Dict[str, List[str]] = {}
        for row, by_point in self.rows.items():
            out = []
            for p in self.points:
                s = by_point.get(p)
                if s is None or not s.samples:
                    out.append("n/a")
                    continue
                text = f"{fmt(s.median)} [{fmt(s.low)}-{fmt(s.high)}]"
                r = self.ratio(row, p)
                if r is not None and row != self.reference:
                    text += f" {r:.2f}x"
                out.append(text)
            cells[row] = out
        widths = [max([len(c)] + [len(cells[r][i]) for r in cells])
                  for i, c in enumerate(cols)]
        line = " " * name_w + "  " + "  ".join(c.rjust(w) for c, w in zip(cols, widths))
        lines = head + [line, "-" * len(line)]
        for row in self.rows:
            lines.append(row.ljust(name_w) + "  " + "  ".join(
                c.rjust(w) for c, w in zip(cells[row], widths)))
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def markdown(self) -> str:
        cols = [str(p) for p in self.points]
        ref = f" (ratio to {self.reference})" if self.reference else ""
        out = [f"### {self.title}", "", f"{self.unit}, median of repeats{ref}", "",
               "| | " + " | ".join(cols) + " |",
               "|---|" + "---|" * len(cols)]
        for row, by_point in self.rows.items():
            vals = []
            for p in self.points:
                s = by_point.get(p)
                if s is None or not s.samples:
                    vals.append("n/a")
                    continue
                r = self.ratio(row, p)
                vals.append(fmt(s.median) + (f" ({r:.2f}x)" if r is not None and row != self.reference else ""))
            out.append(f"| {row} | " + " | ".join(vals) + " |")
        out += [""] + [f"- {n}" for n in self.notes]
        return "\n".join(out) + "\n"

    def plot(self, path: str, logx: bool = False, logy: bool = False,
             xlabel: str = "") -> None:
        import matplotlib  # optional: pip install pyepoll-io[bench]
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(8, 5))
        numeric = all(isinstance(p, (int, float)) for p in self.points)
        xs = self.points if numeric else list(range(len(self.points)))
        for row, by_point in self.rows.items():
            pts = [(x, by_point[p].median) for x, p in zip(xs, self.points)
                   if p in by_point and by_point[p].samples]
            if pts:
                ax.plot([a for a, _ in pts], [b for _, b in pts], marker="o", label=row)
        if not numeric:
            ax.set_xticks(xs, [str(p) for p in self.points])
        if logx:
            ax.set_xscale("log")
        if logy:
            ax.set_yscale("log")
        ax.set_title(self.title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(self.unit)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)


def fmt(value: float) -> str:
    """Three significant figures, without scientific notation for the
    magnitudes benchmarks produce."""
    if value != value:  # NaN
        return "n/a"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def machine() -> str:
    """One line naming the machine the figures were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (f"{platform.system()} {platform.release()}, {cpu}, "
            f"{os.cpu_count()} CPUs, Python {platform.python_version()}")
