"""The workflow's figures, drawn from synthetic tables: legible at README width, no two labels overlapping,
failed formats marked (never drawn as a figure), formats that do not apply listed.

The crowded case is the README's race: seven lossless formats at identical logits share one x in
quality.png; the synthetic tables add a conversion killed for memory, a timing crash at one thread
count, a failed evaluation, and a second model whose every converted format failed.
"""

from __future__ import annotations

import struct
from pathlib import Path
from unittest.mock import patch

import matplotlib

matplotlib.use("Agg")

import pandas as pd
import pytest
from matplotlib.text import Text
from report_fixtures import TIER_LIMITS, TIERS, readme_like_generation, readme_like_summary

from lmship.figures import FAILED_COLOR, save_png
from lmship.generation_plot import generation_figure
from lmship.plot import plot_figure, quality_figure
from lmship.ship_plot import ship_figure

#: README width in pixels, and the smallest text height (pixels) legible at that width.
README_PX = 900
MIN_TEXT_PX = 10.0
#: Overlap tolerance (pixels): glyph boxes that touch are not an overlap.
TOUCH_PX = 1.0


@pytest.fixture(scope="module")
def tables(tmp_path_factory) -> dict[str, pd.DataFrame]:
    folder = tmp_path_factory.mktemp("tables")
    return {
        "summary": pd.read_csv(readme_like_summary(folder / "failures")),
        "clean": pd.read_csv(readme_like_summary(folder / "clean", failures=False)),
        "generation": pd.read_csv(readme_like_generation(folder / "generation")),
    }


FIGURES = {
    "plot": lambda t, key: plot_figure(t[key], TIERS),
    "quality": lambda t, key: quality_figure(t[key], TIER_LIMITS),
    "ship": lambda t, key: ship_figure(t[key], TIERS),
    "generation": lambda t, key: generation_figure(t["generation"], TIERS),
}


def drawn_texts(fig) -> list[tuple[Text, tuple[float, float, float, float]]]:
    """Every text matplotlib actually draws when rendering ``fig``, with its box in pixels."""
    drawn = []
    draw = Text.draw

    def recording(self, renderer):
        draw(self, renderer)
        if self.get_visible() and self.get_text().strip():
            bb = Text.get_window_extent(self, renderer)  # the text's own box (an annotation's also has its line)
            drawn.append((self, (bb.x0, bb.y0, bb.x1, bb.y1)))

    with patch.object(Text, "draw", recording):
        fig.canvas.draw()
    return drawn


def overlaps(drawn) -> list[tuple[str, str]]:
    """Pairs of drawn texts whose boxes overlap by more than a touch."""
    pairs = []
    for i, (a, ra) in enumerate(drawn):
        for b, rb in drawn[i + 1 :]:
            w = min(ra[2], rb[2]) - max(ra[0], rb[0])
            h = min(ra[3], rb[3]) - max(ra[1], rb[1])
            if w > TOUCH_PX and h > TOUCH_PX:
                pairs.append((a.get_text(), b.get_text()))
    return pairs


def _crosses(a: tuple[float, float], b: tuple[float, float], box: tuple[float, float, float, float]) -> bool:
    """Whether the segment a-b passes through ``box`` (shrunk by a touch), by Liang-Barsky clipping."""
    x0, y0, x1, y1 = box[0] + TOUCH_PX, box[1] + TOUCH_PX, box[2] - TOUCH_PX, box[3] - TOUCH_PX
    dx, dy = b[0] - a[0], b[1] - a[1]
    lo, hi = 0.0, 1.0
    for p, q in ((-dx, a[0] - x0), (dx, x1 - a[0]), (-dy, a[1] - y0), (dy, y1 - a[1])):
        if p == 0:
            if q < 0:
                return False
            continue
        t = q / p
        lo, hi = (max(lo, t), hi) if p < 0 else (lo, min(hi, t))
        if lo > hi:
            return False
    return True


def leader_crossings(drawn) -> list[tuple[str, str]]:
    """(label, other text) where the leader line of ``label`` runs through the other text."""
    from matplotlib.text import Annotation

    found = []
    for ann, box in drawn:
        if not isinstance(ann, Annotation) or ann.arrow_patch is None:
            continue
        relx = 0.0 if ann.get_horizontalalignment() == "left" else 1.0
        start = (box[0] + relx * (box[2] - box[0]), (box[1] + box[3]) / 2)
        end = tuple(ann.axes.transData.transform(ann.xy))
        found += [(ann.get_text(), t.get_text()) for t, r in drawn if t is not ann and _crosses(start, end, r)]
    return found


def _png_width(path: Path) -> int:
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">I", head[16:20])[0]


def test_the_overlap_check_sees_overlapping_labels():
    """The check itself: two labels drawn at one place are an overlap, two apart are not."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.set_xticks([])
    ax.set_yticks([])
    ax.text(0.5, 0.5, "ORT fp32")
    ax.text(0.51, 0.505, "TFLite fp32")
    ax.text(0.1, 0.1, "OpenVINO f32")
    found = overlaps(drawn_texts(fig))
    plt.close(fig)
    assert found == [("ORT fp32", "TFLite fp32")]


def test_the_leader_check_sees_a_line_through_a_label():
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.annotate("far label", (0.1, 0.5), xytext=(0.8, 0.5), arrowprops={"arrowstyle": "-"})
    ax.text(0.45, 0.5, "in the way", va="center")
    ax.text(0.45, 0.9, "clear", va="center")
    found = leader_crossings(drawn_texts(fig))
    plt.close(fig)
    assert found == [("far label", "in the way")]


@pytest.mark.parametrize("scenario", ["summary", "clean"])
@pytest.mark.parametrize("name", list(FIGURES))
def test_figure_labels_never_overlap_and_are_legible(tables, tmp_path, name, scenario):
    if name == "generation" and scenario == "clean":
        pytest.skip("one generation table")
    fig = FIGURES[name](tables, scenario)
    drawn = drawn_texts(fig)
    assert drawn, "nothing drawn"
    assert overlaps(drawn) == []
    assert leader_crossings(drawn) == []
    frame = fig.bbox
    outside = [t.get_text() for t, r in drawn if r[0] < -1 or r[1] < -1 or r[2] > frame.x1 + 1 or r[3] > frame.y1 + 1]
    assert outside == [], "texts outside the figure"
    # a panel's own labels (values, marks, notes) stay inside the panel
    for ax in fig.axes:
        box = ax.get_window_extent()
        for text in ax.texts:
            if not text.get_text().strip():
                continue
            r = text.get_window_extent()
            inside = box.x0 - 1 <= r.x0 and r.x1 <= box.x1 + 1 and box.y0 - 1 <= r.y0 and r.y1 <= box.y1 + 1
            assert inside, f"{text.get_text()!r} leaves its panel"
    png = save_png(fig, tmp_path / f"{name}.png")
    width = _png_width(png)
    shown = min(width, README_PX) / width  # the README shows the PNG at most README_PX wide
    smallest = min(t.get_fontsize() for t, _ in drawn) / 72 * fig.dpi * shown
    assert smallest >= MIN_TEXT_PX, f"smallest text {smallest:.1f} px at README width"


def _texts(fig) -> list[str]:
    return [t.get_text() for t, _ in drawn_texts(fig)]


def _red_texts(fig) -> list[str]:
    return [t.get_text() for t, _ in drawn_texts(fig) if matplotlib.colors.same_color(t.get_color(), FAILED_COLOR)]


def test_plot_marks_failed_formats_where_their_bars_would_be(tables):
    import matplotlib.pyplot as plt

    fig = plot_figure(tables["summary"], TIERS)
    red = _red_texts(fig)
    # TFLite int8 failed at tflite: in both latency panels and the three quality panels, for both models
    assert red.count("failed at tflite") == 5 + 5 * 15
    assert red.count("failed at timing") == 1  # ORT fp32 (onnxsim), 2 threads only
    assert red.count("failed at evaluate") == 5  # no speed figure without its quality
    texts = _texts(fig)
    assert not any("OpenVINO int4 g32 AWQ" in t and "ms" in t for t in texts)
    # measured KLDs are labelled with their value, not the axis floor they are drawn at
    assert "1.2e-11" in " ".join(texts) and "1.0e-09" not in " ".join(texts)
    assert any(t.startswith("Not applicable: ORT 4-bit exact grid needs weights") for t in texts)
    labels = {t.get_text() for ax in fig.axes for t in ax.get_yticklabels()}
    assert "ORT 4-bit exact grid" in labels  # applies to the first model, so it is a row there
    plt.close(fig)


def test_quality_plot_labels_every_point_once_and_lists_the_failed(tables):
    import matplotlib.pyplot as plt

    fig = quality_figure(tables["summary"], TIER_LIMITS)
    annotations = [t.get_text() for ax in fig.axes for t in ax.texts if isinstance(t, matplotlib.text.Annotation)]
    first = [t.get_text() for t in fig.axes[0].texts if isinstance(t, matplotlib.text.Annotation)]
    lossless = ["ORT fp32", "ORT fp32 (onnxsim)", "ORT 4-bit exact grid", "TFLite fp32", "OpenVINO f32"]
    assert all(first.count(label) == 1 for label in [*lossless, "OpenVINO 4-bit exact grid", "TFLite fp16"])
    assert "TFLite int8" not in annotations and "OpenVINO int4 g32 AWQ" not in annotations
    red = " ".join(" ".join(_red_texts(fig)).split())
    assert "TFLite int8 (failed at tflite)" in red and "OpenVINO int4 g32 AWQ (failed at evaluate)" in red
    assert "no converted format succeeded" in red  # the model whose every format failed
    plt.close(fig)


def test_ship_plot_names_the_recommendation_with_its_quality_and_marks_the_failed(tables):
    import matplotlib.pyplot as plt

    fig = ship_figure(tables["summary"], TIERS)
    texts = _texts(fig)
    assert "OpenVINO 4-bit exact grid  (openvino_q4_exact)" in texts  # lossless at 2 threads
    quality = [t for t in texts if t.startswith("lossless: mean KLD 3.0e-11, top-1 100.00 % · 117 MB")]
    assert len(quality) == 1
    assert "1.53x" in " ".join(texts)
    red = " ".join(" ".join(_red_texts(fig)).split())
    assert "TFLite int8: failed at tflite" in red and "ORT fp32 (onnxsim): failed at timing (2 thread(s))" in red
    assert not any(t.startswith("TFLite int8  (") for t in texts)  # never a recommendation
    assert sum(t.startswith("PyTorch fp32  (pytorch)") for t in texts) == 6  # every tier of the failed model
    plt.close(fig)


def test_generation_plot_marks_failed_formats_once_per_format(tables):
    import matplotlib.pyplot as plt

    fig = generation_figure(tables["generation"], TIERS)
    red = _red_texts(fig)
    assert red.count("failed at generation") == 1 and red.count("failed at tflite") == 1
    assert red.count("failed at export_onnx") == 12  # the other model: all but the reference and two not applicable
    labels = {t.get_text() for ax in fig.axes for t in ax.get_yticklabels()}
    assert "OpenVINO 4-bit exact grid" in labels
    texts = _texts(fig)
    assert any(t.startswith("Not applicable: ") and "OpenVINO 4-bit exact grid" in t for t in texts)
    plt.close(fig)


def test_place_labels_stacks_a_crowded_group_in_the_order_of_its_points():
    """Six formats at one x and nearly one y: one label each, none overlapping, top to bottom like the points."""
    import matplotlib.pyplot as plt

    from lmship.figures import Point, freeze_layout, new_figure, place_labels

    fig = new_figure(3.0)
    ax = fig.subplots()
    ax.set_xscale("log")
    ax.set_xlim(1e-10, 1.0)
    ax.set_ylim(0.9, 2.0)
    ys = [1.16, 1.26, 1.28, 1.30, 1.35, 1.36]
    names = [f"format {i}" for i in range(len(ys))]
    ax.scatter([1e-9] * len(ys), ys)
    freeze_layout(fig)
    labels = place_labels(ax, [Point(1e-9, y, n) for y, n in zip(ys, names, strict=True)])
    drawn = drawn_texts(fig)
    assert overlaps(drawn) == [] and leader_crossings(drawn) == []
    heights = {t.get_text(): box[1] for t, box in drawn if t in labels}
    assert sorted(heights, key=heights.get) == names  # lowest point, lowest label
    plt.close(fig)
