"""What the workflow's figures share: one width, legible fonts, labels that fit and never overlap.

Every figure is :data:`WIDTH_IN` inches wide, so shown at README width (about
900 pixels) its smallest text (:data:`SMALL` points) stays legible; figures grow
downwards, one block per model, never sideways. A figure is drawn with
constrained layout once and then frozen (:func:`freeze_layout`), so that labels
can be measured and placed in pixels: :func:`fit_xlim` widens a bar panel until
each bar's value label fits inside it, :func:`place_labels` puts point labels
where they overlap nothing (with a leader line when a label had to move away
from its point), :func:`mark_failed` draws a failed format's marker and label
at the axis edge instead of a bar or point. Matplotlib is imported lazily, by
the functions that draw.
"""

from __future__ import annotations

import logging
import math
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .files import atomic_output

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.text import Text
    from matplotlib.transforms import Bbox

#: Width of every figure (inches) and the resolution it is saved at.
WIDTH_IN = 9.0
DPI = 150
#: Font sizes (points): value labels and notes, tick labels and legends, titles.
SMALL = 7.5
NORMAL = 8.5
TITLE = 10.0
FAILED_COLOR = "#d62728"
NOTE_COLOR = "#555555"
#: The marker of a failed format (matplotlib's filled X).
FAILED_MARKER = "X"


def new_figure(height_in: float) -> Figure:
    """A figure of the common width and ``height_in`` inches, laid out by constrained layout."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.figure(figsize=(WIDTH_IN, height_in), dpi=DPI, layout="constrained")


def freeze_layout(fig: Figure) -> None:
    """Lay ``fig`` out once and keep the axes where they are from now on (labels are placed in pixels)."""
    fig.canvas.draw()
    fig.set_layout_engine("none")


def save_png(fig: Figure, out_png: Path) -> Path:
    """Write ``fig`` to ``out_png`` (atomically) and close it.

    The layout keeps every text inside the figure, so the figure is saved as it is (its width stays
    :data:`WIDTH_IN`)."""
    import matplotlib.pyplot as plt

    with atomic_output(Path(out_png)) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    plt.close(fig)
    return Path(out_png)


def wrap(text: str, width_in: float, fontsize: float = SMALL) -> str:
    """``text`` wrapped to lines that fit ``width_in`` inches at ``fontsize`` (a conservative glyph width)."""
    chars = max(20, int(width_in * 72 / (fontsize * 0.62)))
    return "\n".join(textwrap.fill(part, chars) for part in text.split("\n"))


def _renderer(fig: Figure):
    return fig.canvas.get_renderer()


def extent(artist, fig: Figure) -> Bbox:
    """The artist's bounding box in display pixels."""
    return artist.get_window_extent(_renderer(fig))


def fit_xlim(ax: Axes, ends: list[float], labels: list[Text], *, pad_px: float = 6.0) -> None:
    """Widen ``ax``'s x range until every label (drawn from the end of its bar, ``ends``) fits inside the axes.

    Works on a linear or a log x axis whose left limit is already set. A label about as wide as the
    panel is left as it is (and the log says so).
    """
    fig = ax.figure
    width = ax.get_window_extent(_renderer(fig)).width
    log = ax.get_xscale() == "log"
    lo, hi = ax.get_xlim()
    scale = (lambda v: math.log10(v)) if log else (lambda v: v)
    need = scale(hi)
    for end, label in zip(ends, labels, strict=True):
        if not (label.get_text() and math.isfinite(end)):
            continue
        free = width - extent(label, fig).width - pad_px
        if free <= width * 0.05:
            log.warning("the label %r is about as wide as its panel: it may leave it", label.get_text())
            continue
        need = max(need, scale(lo) + (scale(max(end, lo)) - scale(lo)) * width / free)
    ax.set_xlim(lo, 10**need if log else need)


#: Line height of a note, in units of its font size.
NOTE_LINE = 1.45


def notes_height(notes: list[tuple[str, str]], fontsize: float = SMALL) -> float:
    """Inches the ``notes`` (text, colour) take, one below the other, with a margin (0 for no notes)."""
    lines = sum(text.count("\n") + 1 for text, _ in notes)
    return lines * fontsize * NOTE_LINE / 72 * 1.1 + 0.05 if lines else 0.0


def add_notes(ax: Axes, notes: list[tuple[str, str]], fontsize: float = SMALL) -> None:
    """Write ``notes`` (text, colour) one below the other in the space ``ax`` keeps for them (an axes of its
    (sub)figure's whole width, no frame), starting at the (sub)figure's left edge; each note starts right
    under the one before (:func:`notes_height` gives the room they take)."""
    from matplotlib.text import Annotation
    from matplotlib.transforms import blended_transform_factory

    ax.axis("off")
    holder = ax.figure
    where = blended_transform_factory(holder.transSubfigure, ax.transAxes)
    above = None
    for text, color in notes:
        style = {"va": "top", "ha": "left", "fontsize": fontsize, "color": color, "linespacing": NOTE_LINE / 1.2}
        if above is None:
            above = holder.text(0.01, 1.0, text, transform=where, **style)
        else:
            gap = fontsize * (NOTE_LINE - 1.2)
            above = holder.add_artist(
                Annotation(text, (0, 0), xycoords=above, xytext=(0, -gap), textcoords="offset points", **style)
            )


def mark_failed(ax: Axes, y: float, text: str, *, fontsize: float = SMALL) -> Text | None:
    """A failed format's mark at the left edge of a bar panel: a red X and ``text`` (if any), where its bar
    would be."""
    edge = ax.get_yaxis_transform()  # x in axes fractions, y in data
    ax.scatter([0.015], [y], marker=FAILED_MARKER, s=28, color=FAILED_COLOR, transform=edge, clip_on=False, zorder=4)
    if text:
        return ax.text(0.035, y, text, transform=edge, color=FAILED_COLOR, fontsize=fontsize, va="center", ha="left")
    return None


@dataclass(frozen=True)
class Point:
    """A point to label: data coordinates, label text and colour."""

    x: float
    y: float
    text: str
    color: str = "black"


Rect = tuple[float, float, float, float]


def _overlaps(a: Rect, b: Rect) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _inside(rect: Rect, box: Rect) -> bool:
    return box[0] <= rect[0] and rect[2] <= box[2] and box[1] <= rect[1] and rect[3] <= box[3]


def _clusters(rects: list[Rect], markers: list[Rect]) -> list[list[int]]:
    """Groups of labels whose places beside their points collide with each other's label or marker."""
    parent = list(range(len(rects)))

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for i in range(len(rects)):
        for j in range(i + 1, len(rects)):
            if _overlaps(rects[i], rects[j]) or _overlaps(rects[i], markers[j]) or _overlaps(rects[j], markers[i]):
                parent[root(i)] = root(j)
    groups: dict[int, list[int]] = {}
    for i in range(len(rects)):
        groups.setdefault(root(i), []).append(i)
    return sorted(groups.values(), key=len, reverse=True)


def _beside(x: float, y: float, dx: float, dy: float, w: float, h: float) -> Rect:
    """The rectangle of a label anchored ``dx``, ``dy`` pixels from its point (left-aligned right of it)."""
    x0 = x + dx if dx > 0 else x + dx - w
    return (x0, y + dy - h / 2, x0 + w, y + dy + h / 2)


def _single_place(x: float, y: float, w: float, h: float, gap: float, box: Rect, taken: list[Rect], rings: int):
    """The nearest free offset of one label: beside its point, else up or down a column beside it."""
    offsets = [(gap, 0.0), (-gap, 0.0)]
    for k in range(1, rings + 1):
        for side in (gap + 12.0, -(gap + 12.0)):
            offsets += [(side, k * (h + 2.0)), (side, -k * (h + 2.0))]
    offsets.sort(key=lambda o: math.hypot(o[0], o[1]) + (0.5 if o[0] < 0 else 0.0))
    for dx, dy in offsets:
        rect = _beside(x, y, dx, dy, w, h)
        if _inside(rect, box) and not any(_overlaps(rect, t) for t in taken):
            return dx, dy, rect
    return None


def _column_place(members, anchors, sizes, gap: float, box: Rect, taken: list[Rect]):
    """Offsets of a crowded group's labels stacked in one column beside the group, in the order of their points
    (top to bottom), so that no two leader lines cross; the column slides up or down to a free place."""
    order = sorted(members, key=lambda i: -anchors[i][1])
    pitch = max(sizes[i][1] for i in order) + 2.0
    centre = sum(anchors[i][1] for i in order) / len(order)
    for side in (1, -1):
        edge = max(anchors[i][0] for i in order) if side > 0 else min(anchors[i][0] for i in order)
        for k in range(int((box[3] - box[1]) // pitch) * 2 + 1):
            shift = (k + 1) // 2 * pitch * (1 if k % 2 else -1)
            top = centre + (len(order) - 1) * pitch / 2 + shift
            placed = {}
            for n, i in enumerate(order):
                (x, y), (w, h) = anchors[i], sizes[i]
                dx = (edge - x) + side * (gap + 14.0)
                dy = top - n * pitch - y
                placed[i] = (dx, dy, _beside(x, y, dx, dy, w, h))
            rects = [r for _, _, r in placed.values()]
            if all(_inside(r, box) for r in rects) and not any(_overlaps(r, t) for r in rects for t in taken):
                return placed
    return None


def place_labels(
    ax: Axes,
    points: list[Point],
    *,
    fontsize: float = SMALL,
    marker_px: float = 10.0,
    obstacles: list[Bbox] | None = None,
) -> list[Text]:
    """Label every point where its label overlaps no other label, no marker and no obstacle.

    A label goes beside its point (right first). Points at (nearly) one x whose
    labels would collide there form a group: the group's labels are stacked in
    one column beside it, in the order of their points, each joined to its point
    by a leader line. Any other label that finds no place beside its point moves
    up or down a column beside it, with a leader line. Places are searched in pixels of
    the frozen layout and kept in points relative to the point, so the saved
    figure keeps them. A label that finds no free place inside the axes stays beside its point (and the
    log says so).
    """
    fig = ax.figure
    renderer = _renderer(fig)
    frame = ax.get_window_extent(renderer)
    box = (frame.x0 + 2, frame.y0 + 2, frame.x1 - 2, frame.y1 - 2)
    anchors = [tuple(ax.transData.transform((p.x, p.y))) for p in points]
    half = marker_px / 2
    markers = [(x - half, y - half, x + half, y + half) for x, y in anchors]
    taken = [*markers, *((b.x0, b.y0, b.x1, b.y1) for b in obstacles or [])]
    sizes = []
    for p in points:
        probe = ax.text(0, 0, p.text, fontsize=fontsize)
        bb = probe.get_window_extent(renderer)
        probe.remove()
        sizes.append((bb.width + 2, bb.height + 1))
    gap = half + 3
    natural = [_beside(x, y, gap, 0.0, w, h) for (x, y), (w, h) in zip(anchors, sizes, strict=True)]
    offsets: dict[int, tuple[float, float]] = {}
    for group in _clusters(natural, markers):
        xs = [anchors[i][0] for i in group]
        stacked = len(group) > 1 and max(xs) - min(xs) <= 3 * marker_px  # one column fits points at one x
        placed = _column_place(group, anchors, sizes, gap, box, taken) if stacked else None
        if placed is None:
            placed = {}
            for i in sorted(group, key=lambda i: -anchors[i][1]):
                found = _single_place(*anchors[i], *sizes[i], gap, box, taken, rings=int(frame.height // sizes[i][1]))
                if found is None:  # a figure with an overlap beats no figure: say so in the log
                    log.warning("no free place for the label %r: it may overlap another", points[i].text)
                    found = (gap, 0.0, natural[i])
                placed[i] = found
                taken.append(found[2])
        else:
            taken += [r for _, _, r in placed.values()]
        offsets |= {i: (dx, dy) for i, (dx, dy, _) in placed.items()}
    labels = []
    for i, p in enumerate(points):
        dx, dy = offsets[i]
        moved = abs(dy) > 0.5 or abs(dx) > gap + 0.5
        leader = {"arrowstyle": "-", "lw": 0.5, "color": "0.45", "shrinkA": 1, "shrinkB": half}
        leader["relpos"] = (0.0, 0.5) if dx > 0 else (1.0, 0.5)
        labels.append(
            ax.annotate(
                p.text,
                (p.x, p.y),
                xytext=(dx * 72 / fig.dpi, dy * 72 / fig.dpi),
                textcoords="offset points",
                ha="left" if dx > 0 else "right",
                va="center",
                fontsize=fontsize,
                color=p.color,
                arrowprops=leader if moved else None,
                zorder=5,
            )
        )
    return labels


def stacked_blocks(blocks: list, heights: list[float], draw, legend: list, *, extra_in: float = 0.5, ncol: int = 3):
    """One figure of ``blocks`` (``(key, block)`` pairs) stacked top to bottom, ``heights`` inches each:
    ``draw(subfig, key, block)`` draws one and returns the ``(axes, [(extent, text)])`` to fit; the legend
    goes below, and each axis's x limits are fitted to its labels once the layout is frozen."""
    fig = new_figure(sum(heights) + extra_in)
    subfigs = fig.subfigures(len(blocks), 1, squeeze=False, height_ratios=heights)[:, 0]
    to_fit = []
    for subfig, (key, block) in zip(subfigs, blocks, strict=True):
        to_fit += draw(subfig, key, block)
    fig.legend(handles=legend, loc="outside lower center", ncol=ncol, fontsize=SMALL)
    freeze_layout(fig)
    for ax, fitted in to_fit:
        if fitted:
            fit_xlim(ax, [e for e, _ in fitted], [t for _, t in fitted])
    return fig
