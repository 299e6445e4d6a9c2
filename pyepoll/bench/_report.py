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
                text = fmt(s.median)
                if len(s.samples) > 1:
                    text += f" [{fmt(s.low)}-{fmt(s.high)}]"
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
        better = "lower" if self.lower_is_better else "higher"
        out = [f"### {self.title}", "",
               f"{self.unit} ({better} is better): median [min-max] of repeats{ref}", "",
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
                text = fmt(s.median)
                if len(s.samples) > 1:
                    text += f" [{fmt(s.low)}-{fmt(s.high)}]"
                if r is not None and row != self.reference:
                    text += f" **{r:.2f}x**"
                vals.append(text)
            out.append(f"| {row} | " + " | ".join(vals) + " |")
        out += [""] + [f"- {n}" for n in self.notes]
        return "\n".join(out) + "\n"

    def plot_column(self, path: str, point: object, label: str = "") -> None:
        plot_column(self, path, point, label)

    def plot(self, path: str, logx: bool = False, logy: bool = False,
             xlabel: str = "") -> None:
        """Lines over numeric points (N, message size), grouped bars over
        named ones (workloads); pyepoll's rows drawn heavier.  Min-max
        ranges are drawn as error bars."""
        import matplotlib  # optional: pip install pyepoll-io[bench]
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(9, 5.5))
        numeric = all(isinstance(p, (int, float)) for p in self.points)
        colors = plt.get_cmap("tab20").colors
        rows = [r for r, by in self.rows.items()
                if any(by.get(p) and by[p].samples for p in self.points)]
        width = 0.8 / max(len(rows), 1)
        for i, row in enumerate(rows):
            by_point = self.rows[row]
            ours = row.startswith(("pyepoll", "ref server", "eventloop"))
            pts = [(j, p, by_point[p]) for j, p in enumerate(self.points)
                   if p in by_point and by_point[p].samples]
            meds = [s.median for _, _, s in pts]
            err = [[s.median - s.low for _, _, s in pts],
                   [s.high - s.median for _, _, s in pts]]
            color = colors[(2 * i) % 20 if i < 10 else (2 * i + 1) % 20]
            if numeric:
                ax.errorbar([p for _, p, _ in pts], meds, yerr=err, label=row,
                            color=color, marker="o" if ours else ".",
                            linewidth=2.4 if ours else 1.2,
                            linestyle="-" if ours else "--", capsize=2)
            else:
                ax.bar([j - 0.4 + width * (i + 0.5) for j, _, _ in pts], meds,
                       width, yerr=err, label=row, color=color, capsize=2,
                       edgecolor="black" if ours else color, linewidth=0.8)
        if not numeric:
            ax.set_xticks(range(len(self.points)), [str(p) for p in self.points])
        if logx and numeric:
            if min(self.points) <= 0:      # K = 0 idle connections: symlog
                ax.set_xscale("symlog", linthresh=1)
            else:
                ax.set_xscale("log")
        if logy:
            ax.set_yscale("log")
        ax.set_title(self.title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(self.unit)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)


def plot_column(table: "Table", path: str, point: object, label: str = "") -> None:
    """One column of a table as horizontal bars, best first, with min-max
    whiskers and each bar's ratio to the reference: the chart to show
    first."""
    import matplotlib  # optional: pip install pyepoll-io[bench]
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = [(row, by[point]) for row, by in table.rows.items()
             if point in by and by[point].samples]
    cells.sort(key=lambda rc: rc[1].median, reverse=not table.lower_is_better)
    fig, ax = plt.subplots(figsize=(9, 0.42 * len(cells) + 1.4))
    ys = list(range(len(cells)))[::-1]
    for y, (row, s) in zip(ys, cells):
        ours = row.startswith(("pyepoll", "ref server", "eventloop"))
        color = "#d62728" if row == table.reference else ("#1f77b4" if ours else "#999999")
        ax.barh(y, s.median, color=color, xerr=[[s.median - s.low], [s.high - s.median]],
                capsize=2)
        r = table.ratio(row, point)
        text = fmt(s.median) + (f"  ({r:.2f}x)" if r is not None and row != table.reference
                                else "  (reference)" if row == table.reference else "")
        ax.text(s.high, y, "  " + text, va="center", fontsize=8)
    ax.set_yticks(ys, [row for row, _ in cells], fontsize=8)
    ax.set_xlabel(table.unit + (" (lower is better)" if table.lower_is_better
                                else " (higher is better)"))
    ax.set_title(f"{table.title}: {label or point}", fontsize=10)
    ax.set_xlim(0, max(s.high for _, s in cells) * 1.35)
    ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
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


@dataclass
class Chart:
    """A table drawn as a chart; `slug` names its PNG."""

    table: Table
    slug: str
    logx: bool = False
    logy: bool = False
    xlabel: str = ""
    point: object = None        # set: one column as sorted horizontal bars


@dataclass
class Section:
    """What one scenario found: its tables, the claims it checks (one line
    each), what it skipped and why, and the charts worth drawing."""

    name: str
    intro: List[str] = field(default_factory=list)
    tables: List[Table] = field(default_factory=list)
    summary: List[str] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)
    charts: List[Chart] = field(default_factory=list)
    raw: str = ""               # preformatted output of an older script

    def render(self) -> str:
        out = [f"== {self.name}"] + self.intro
        if self.raw:
            out += ["", self.raw.rstrip()]
        for t in self.tables:
            out += ["", t.render()]
        if self.summary:
            out += ["", "summary:"] + [f"  {s}" for s in self.summary]
        if self.skipped:
            out += [""] + [f"skipped: {s}" for s in self.skipped]
        return "\n".join(out)

    def markdown(self, images: Optional[Dict[str, str]] = None) -> str:
        out = [f"## {self.name}", ""] + [f"{line}  " for line in self.intro] + [""]
        for chart_slug, path in (images or {}).items():
            out += [f"![{chart_slug}]({path})", ""]
        for t in self.tables:
            out.append(t.markdown())
        if self.summary:
            out += ["**Summary**", ""] + [f"- {s}" for s in self.summary] + [""]
        if self.raw:
            out += ["```", self.raw.strip(), "```", ""]
        if self.skipped:
            out += ["**Skipped**", ""] + [f"- {s}" for s in self.skipped] + [""]
        return "\n".join(out) + "\n"

    def plot(self, path: str) -> List[str]:
        """Draw the charts: the first to `path`, the others beside it with
        their slug appended.  Returns the files written; without matplotlib
        raises ImportError."""
        import matplotlib  # noqa: F401  (pip install pyepoll-io[bench])
        written = []
        stem, ext = os.path.splitext(path)
        for i, chart in enumerate(self.charts):
            out = path if i == 0 else f"{stem}-{chart.slug}{ext or '.png'}"
            if chart.point is not None:
                chart.table.plot_column(out, chart.point, chart.xlabel)
            else:
                chart.table.plot(out, logx=chart.logx, logy=chart.logy, xlabel=chart.xlabel)
            written.append(out)
        return written


def have_matplotlib() -> bool:
    from ._proc import disabled
    if disabled("matplotlib"):
        return False
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def median_by(runs: Sequence, key) -> Optional[float]:
    """The median of key over runs (the upper middle one of an even
    count), or None for no runs: the summaries' medians."""
    vals = sorted(key(r) for r in runs)
    return vals[len(vals) // 2] if vals else None


def ratio_line(what: str, value: Optional[float]) -> str:
    """A ratio the summary reports beside the issue's claims, with no target."""
    return f"{what}: " + ("not measured" if value is None or value != value
                          else f"{value:.2f}x")


def check_line(what: str, value: Optional[float], target: float, op: str,
               unit: str = "x") -> str:
    """One claim of an issue, with the measured value and met/MISSED."""
    if value is None or value != value:
        return f"{what}: not measured"
    ok = value <= target if op == "<=" else value >= target
    return f"{what}: {value:.2f}{unit} (target {op} {target:g}{unit}) {'met' if ok else 'MISSED'}"
