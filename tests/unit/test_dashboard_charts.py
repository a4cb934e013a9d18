"""The dashboard's chart geometry and trace timeline (pure), and the kickoff form's inputs."""

from __future__ import annotations

import pytest
from starlette.datastructures import FormData

from crewship.api import charts
from crewship.api.dashboard_actions import form_inputs, whole_number
from crewship.api.timeline import LABEL_W, WIDTH, order, timeline
from crewship.errors import InvalidInputError


def span(sid: str, parent: str | None, kind: str, start: float, end: float | None,
         status: str = "ok", **more: object) -> dict[str, object]:
    return {"id": sid, "parent": parent, "kind": kind, "name": f"{kind} {sid}", "start": start,
            "end": end, "status": status, "error": None, "tokens": None, "input": None,
            "output": None, **more}


def test_nice_tops_round_up_to_one_two_or_five() -> None:
    assert [charts.nice_top(v) for v in (0, 0.3, 1, 3, 7, 10, 11, 420, 10_000)] == [
        1.0, 0.5, 1.0, 5.0, 10.0, 10.0, 20.0, 500.0, 10_000.0]


def test_bars_scale_to_the_tallest_and_skip_empty_slots() -> None:
    chart = charts.bar_chart([0, 5, 10], [0, 1, 10], ["a", "b", "c"], ["t0", "t1", "t2"])
    first, second = chart["bars"]
    assert [b["title"] for b in chart["bars"]] == ["t1", "t2"]
    assert second["h"] == pytest.approx(2 * first["h"], abs=0.2)
    assert second["fh"] == second["h"]             # all of it failed
    assert first["fh"] == pytest.approx(first["h"] / 5, abs=0.2)
    assert chart["grid"][-1]["label"] == "10"
    assert first["y"] + first["h"] == pytest.approx(chart["base"], abs=0.2)
    assert [x["text"] for x in chart["xlabels"]] == ["a", "b", "c"]


def test_lines_break_where_a_value_is_missing() -> None:
    chart = charts.line_chart({"p50": [1.0, 2.0, None, 4.0], "p95": [None] * 4},
                              ["a", "b", "c", "d"], lambda v: f"{v:g}s")
    p50, p95 = chart["lines"]
    assert len(p50["paths"]) == 1                  # a-b joined; d stands alone
    assert len(p50["paths"][0].split()) == 2
    assert len(p50["dots"]) == 1
    assert p95 == {"name": "p95", "paths": [], "dots": []}
    assert chart["grid"][-1]["label"] == "5s"
    assert charts.hour_labels(3) == ["3 h ago", "2 h ago", "now"]


def test_the_timeline_nests_spans_depth_first_by_start() -> None:
    spans = [span("llm2", "task", "llm", 14.0, 15.0), span("crew", None, "crew", 10.0, 20.0),
             span("task", "crew", "task", 11.0, 19.0), span("llm1", "task", "llm", 12.0, 13.0),
             span("tool", "llm1", "tool", 12.5, 12.6, tokens={"prompt": 1, "completion": 2,
                                                                  "total": 3})]
    chart = timeline(spans)
    assert [(r["id"], r["depth"]) for r in chart["rows"]] == [
        ("crew", 0), ("task", 1), ("llm1", 2), ("tool", 3), ("llm2", 2)]
    crew, task = chart["rows"][0], chart["rows"][1]
    assert crew["x"] == LABEL_W
    assert crew["x"] + crew["w"] == pytest.approx(WIDTH - 10, abs=0.2)   # the whole trace
    assert task["x"] == pytest.approx(LABEL_W + (WIDTH - LABEL_W - 10) * 0.1, abs=0.2)
    assert task["duration"] == 8.0
    assert chart["rows"][3]["tokens"]["total"] == 3
    assert chart["length"] == 10.0
    assert [t["text"] for t in chart["ticks"]] == ["0s", "2.5s", "5s", "7.5s", "10s"]


def test_the_timeline_copes_with_running_orphaned_cyclic_and_odd_spans() -> None:
    spans = [span("a", None, "task", 0.0, None, "running"),      # still running
             span("b", "gone", "llm", 1.0, 3.0, "error", error="boom"),   # parent missing
             span("c", "d", "tool", 2.0, 2.0), span("d", "c", "agent", 2.0, 2.5),  # a cycle
             span("e", None, "mystery", 2.0, 1.0)]                # ends before it starts
    rows = {r["id"]: r for r in timeline(spans)["rows"]}
    assert set(rows) == {"a", "b", "c", "d", "e"}                 # nothing hidden
    assert rows["a"]["status"] == "running"
    assert rows["a"]["duration"] is None
    assert rows["a"]["x"] + rows["a"]["w"] == pytest.approx(WIDTH - 10, abs=0.2)  # to the end
    assert rows["b"]["depth"] == 0
    assert rows["b"]["status"] == "error"
    assert rows["c"]["w"] >= 2                                    # zero length stays visible
    assert rows["e"]["kind"] == "other"
    assert rows["e"]["duration"] == 0
    assert timeline([])["rows"] == []
    assert len(order(spans)) == 5


def test_long_names_are_cut_in_the_column_but_kept_whole() -> None:
    name = "x" * 80
    row = timeline([{**span("a", None, "task", 0.0, 1.0), "name": name}])["rows"][0]
    assert row["name"] == name
    assert len(row["label"]) <= 34


def test_the_kickoff_form_gives_filled_fields_or_a_json_object() -> None:
    form = FormData([("csrf", "t"), ("input:topic", "otters"), ("input:audience", ""),
                     ("other", "x")])
    assert form_inputs(form) == {"topic": "otters"}   # an empty optional keeps its default
    assert form_inputs(FormData([("inputs_json", '{"a": 1}')])) == {"a": 1}
    assert form_inputs(FormData([("inputs_json", " ")])) == {}
    for bad in ("[1]", "{nope", '"text"'):
        with pytest.raises(InvalidInputError):
            form_inputs(FormData([("inputs_json", bad)]))
    assert whole_number(FormData([("scale", "3")]), "scale", "the scale") == 3
    for bad_form in (FormData([("scale", "two")]), FormData([])):
        with pytest.raises(InvalidInputError, match="whole number"):
            whole_number(bad_form, "scale", "the scale")
