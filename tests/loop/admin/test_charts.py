"""The SVG charts and the pure shaping of the read model (no database)."""

import xml.etree.ElementTree as ET

import pytest

from loop.admin.charts import Series, line_chart, metric_series, nice_ticks
from loop.admin.queries.checkpoints import parse_loss_log
from loop.admin.queries.common import BadValue
from loop.admin.queries.runs import type_figures
from loop.admin.queries.samples import SampleFilter

SVG = "{http://www.w3.org/2000/svg}"


def test_line_chart_draws_a_point_per_value_and_breaks_at_gaps() -> None:
    svg = line_chart(
        "Verdict <rates>",
        [0, 1, 2, 3],
        [Series("Success", [0.5, None, 0.7, 0.9]), Series("Failed", [0.1, 0.2, 0.3, 0.4])],
        y_min=0,
        y_max=1,
    )
    root = ET.fromstring(svg)  # well-formed, the title escaped
    assert root.get("data-points") == "7"
    points = root.findall(f"{SVG}circle")
    assert len(points) == 7 and all(p.get("class") == "point" for p in points)
    # Success has a gap at x=1: two pieces, the first a single point (no line)
    assert len(root.findall(f"{SVG}polyline")) == 2
    assert root.find(f"{SVG}text").text == "Verdict <rates>"
    # y grows upwards: 0.9 is drawn above 0.5
    success = [float(p.get("cy")) for p in points[:3]]
    assert success[2] < success[0]


def test_an_empty_chart_says_so() -> None:
    svg = line_chart("Nothing", [], [Series("a", [])])
    assert "no data yet" in svg and ET.fromstring(svg).get("data-points") == "0"


@pytest.mark.parametrize(
    ("low", "high", "expected"),
    [(0, 1, [0, 0.25, 0.5, 0.75, 1]), (1, 5, [1, 2, 3, 4, 5]), (0, 76.2, [0, 20, 40, 60, 80])],
)
def test_ticks_are_round_numbers_covering_the_range(
    low: float, high: float, expected: list[float]
) -> None:
    assert nice_ticks(low, high) == pytest.approx(expected)


def test_metric_series_skip_keys_no_round_has() -> None:
    rounds = [{"a": 1.0}, {"a": 2.0, "b": 3.0}]
    series = metric_series(rounds, [("A", "a"), ("B", "b"), ("C", "c")])
    assert [(s.name, list(s.values)) for s in series] == [("A", [1.0, 2.0]), ("B", [None, 3.0])]


def test_type_figures_read_the_by_type_keys() -> None:
    metrics = {
        "by_type/remove/count": 4.0,
        "by_type/remove/Success/rate": 0.75,
        "by_type/remove/scores/overall/mean": 4.5,
        "by_type/alter/count": 2.0,
    }
    rows = type_figures(metrics)
    assert [r.edit_type for r in rows] == ["alter", "remove"]
    assert (rows[1].judged, rows[1].success_rate, rows[1].overall) == (4, 0.75, 4.5)
    assert rows[0].overall == 0.0


def test_loss_log_lines_that_are_not_records_are_skipped() -> None:
    text = (
        '{"step": 1, "train/loss": 0.5}\nnot json\n{"step": 2}\n{"step": 3, "train/loss": 0.25}\n'
    )
    assert [(p.step, p.loss) for p in parse_loss_log(text)] == [(1, 0.5), (3, 0.25)]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"verdict": "success"}, "verdict"),
        ({"edit_type": "paint"}, "edit_type"),
        ({"min_score": 0.5}, "min_score"),
        ({"min_score": 4, "max_score": 3}, "min_score"),
        ({"depth": -1}, "depth"),
        ({"round_number": 1}, "round"),
    ],
)
def test_sample_filters_name_the_bad_field(kwargs: dict, field: str) -> None:
    with pytest.raises(BadValue) as raised:
        SampleFilter(**kwargs)
    assert raised.value.field == field


def test_sample_filter_takes_edit_type_aliases_and_ignores_blank_text() -> None:
    sample_filter = SampleFilter(edit_type="Compose", text="  ")
    assert sample_filter.edit_type == "hybrid" and sample_filter.text is None
