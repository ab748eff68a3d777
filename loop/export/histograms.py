"""The dataset card's score histograms as one PNG (matplotlib, imported here only)."""

import io

from loop.export.stats import BIN_WIDTH, SCORES, ExportStats


def histogram_png(stats: ExportStats) -> bytes:
    """Rows per score bin, one colour per score (overall and the three judge scores), side by
    side in each bin; the same counts give the same bytes."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 3), dpi=72)
    axis = figure.add_subplot()
    width = BIN_WIDTH / (len(SCORES) + 1)
    for index, name in enumerate(SCORES):
        counts = stats.histograms[name]
        edges = sorted(counts)
        offsets = [edge + (index + 0.5) * width for edge in edges]
        axis.bar(offsets, [counts[e] for e in edges], width=width, align="edge", label=name)
    axis.set_xlim(0.75, 5.25)
    axis.set_xticks([1, 2, 3, 4, 5])
    axis.set_xlabel(f"judge score (bins of {BIN_WIDTH:g})")
    axis.set_ylabel("rows")
    axis.legend(loc="upper left", fontsize="small")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()
