"""The arithmetic of ``bench/search.py`` (what its headline table is made of), on hand-made results."""

import importlib.util
import json
import re
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("bench_search", Path(__file__).parent.parent / "bench" / "search.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def _write_trial(tune: Path, trial: str, rows: list[tuple[int, float, float]]) -> None:
    """A Tune ``result.json`` of (timestamp s, time_total_s, val/OA) per epoch."""
    d = tune / f"trial_{trial}"
    d.mkdir(parents=True)
    lines = [json.dumps({"trial_id": trial, "epoch": i + 1, "timestamp": ts, "time_total_s": total, "val/OA": v})
             for i, (ts, total, v) in enumerate(rows)]
    (d / "result.json").write_text("\n".join(lines + [json.dumps({"trial_id": trial, "done": True})]) + "\n")


def test_events_in_arrival_order_then_curve_reach_and_selection(tmp_path):
    tune = tmp_path / "tune"
    _write_trial(tune, "a", [(100, 5.2, 0.3), (103, 8.4, 0.5), (106, 11.7, 0.4)])
    _write_trial(tune, "b", [(101, 4.1, 0.2), (104, 7.3, 0.6)])
    events = bench.epoch_events(tmp_path, "val/OA")
    assert [(e[2], e[1]) for e in events] == [("a", 1), ("b", 1), ("a", 2), ("b", 2), ("a", 3)]
    curve = bench.best_so_far(events, budget=4)
    assert curve == [0.3, 0.3, 0.5, 0.6]  # cut at the budget: a's third epoch is not spent
    assert bench.epochs_to_reach(curve, 0.5) == 3 and bench.epochs_to_reach(curve, 0.61) is None
    assert bench.selected_trial(events, budget=4) == "b" and bench.selected_trial(events, budget=3) == "a"
    assert bench.best_so_far(events, budget=3, mode="min") == [0.3, 0.2, 0.2]


def test_within_a_second_the_lower_epoch_comes_first(tmp_path):
    tune = tmp_path / "tune"
    _write_trial(tune, "a", [(99, 1.0, 0.1), (100, 3.9, 0.1)])
    _write_trial(tune, "b", [(100, 2.2, 0.2)])
    assert [(e[2], e[1]) for e in bench.epoch_events(tmp_path, "val/OA")] == [("a", 1), ("b", 1), ("a", 2)]


@pytest.mark.parametrize("reaches,median", [([3, 5, 9], 5), ([3, None, 9], 9), ([3, None, None], None),
                                            ([4, 6], 5), ([4, None], None)])
def test_median_reach_counts_never_as_last(reaches, median):
    assert bench.median_reach(reaches) == median


def test_asha_trials_cover_the_budget():
    # 4-epoch trials, grace 1: 1 + 3/4 epochs per trial on average, 25 % more trials than that needs
    assert bench.asha_trials(48, 4, 1) == 35
    assert bench.asha_trials(48, 4, 4) == 15  # no early stopping possible: budget / epochs, 25 % more


def test_strategy_names():
    assert bench.parse_strategy("random") == ("none", "random", 10)
    assert bench.parse_strategy("tpe+asha") == ("asha", "tpe", 10)
    assert bench.parse_strategy("gp+asha:4") == ("asha", "gp", 4)
    for bad in ("cmaes", "tpe+hyperband", "tpe:x"):
        with pytest.raises(ValueError, match=re.escape(f"strategy {bad!r}")):
            bench.parse_strategy(bad)
