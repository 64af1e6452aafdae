"""The sweep summary's order (pointtune.search.report.summarize): best first by the objective, and among equal
objectives the earlier trial (the lower Optuna number, else the earlier first report), never Tune's random ids;
and the study's plots (plot_study)."""

import warnings
from types import SimpleNamespace

import pandas as pd
import pytest

from helpers import write_space
from pointtune.search.report import plot_study, summarize
from pointtune.search.space import load_search_space
from pointtune.search.spec import STUDY_NAME, SweepSpec, study_storage


def _result(trial_id, best, first_report, optuna=None, tmp=None):
    df = pd.DataFrame({"epoch": [1, 2], "val/OA": [best - 0.1, best], "timestamp": [first_report, first_report + 5]})
    metrics = {"trial_id": trial_id, "epoch": 2, "val/OA": best, "best/val/OA": best, "best/epoch": 2}
    config = {"optim.lr": 0.1, **({"optuna_trial": optuna} if optuna is not None else {})}
    return SimpleNamespace(metrics_dataframe=df, metrics=metrics, error=None, config=config,
                           path=str(tmp / f"trial_{trial_id}"))


def _order(tmp_path, results):
    space = load_search_space(write_space(tmp_path / "space.yaml", {
        "optim.lr": {"type": "float", "low": 0.01, "high": 0.2}}), "cedr")
    spec = SweepSpec(method="cedr", space_file=str(space.source), sweep_dir=str(tmp_path / "sweep"), epochs=2)
    return [r.trial_id for r in summarize(results, space, spec)]


def test_ties_go_to_the_lower_optuna_number_not_the_lower_tune_id(tmp_path):
    results = [_result("aaaa0001", 0.9, 300, optuna=2, tmp=tmp_path), _result("ffff0002", 0.9, 100, optuna=0, tmp=tmp_path),
               _result("bbbb0003", 0.95, 200, optuna=1, tmp=tmp_path), _result("cccc0004", 0.9, 50, optuna=3, tmp=tmp_path)]
    assert _order(tmp_path, results) == ["bbbb0003", "ffff0002", "aaaa0001", "cccc0004"]
    assert _order(tmp_path, results[::-1]) == ["bbbb0003", "ffff0002", "aaaa0001", "cccc0004"]


def test_without_optuna_ties_go_to_the_earlier_first_report(tmp_path):
    results = [_result("aaaa0001", 0.9, 300, tmp=tmp_path), _result("ffff0002", 0.9, 100, tmp=tmp_path)]
    assert _order(tmp_path, results) == ["ffff0002", "aaaa0001"]
    assert _order(tmp_path, results[::-1]) == ["ffff0002", "aaaa0001"]


@pytest.mark.parametrize("values, plotted", [([0.5, 0.5, 0.5], False), ([0.1, 0.5, 0.9], True)],
                         ids=["equal-scores", "differing-scores"])
def test_importances_optuna_cannot_tell_apart_are_skipped_in_one_line(tmp_path, capsys, values, plotted):
    """Three complete trials of different learning rates: scored alike, Optuna's PED-ANOVA warns that every
    importance is equal and would draw equal bars; pointtune says so in one line instead and writes no plot.
    Scored differently, the plot is written."""
    import optuna

    space = load_search_space(write_space(tmp_path / "space.yaml", {
        "optim.lr": {"type": "float", "low": 0.01, "high": 0.2}}), "cedr")
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    study = optuna.create_study(study_name=STUDY_NAME, storage=study_storage(sweep), direction="maximize")
    for lr, value in zip([0.01, 0.05, 0.2], values):
        study.add_trial(optuna.trial.create_trial(params={"optim.lr": lr}, value=value, distributions={
            "optim.lr": optuna.distributions.FloatDistribution(0.01, 0.2)}))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        written = plot_study(sweep, space)
    assert [p.name for p in written] == ["optimization_history.png"] + ["param_importances.png"] * plotted
    assert (sweep / "param_importances.png").exists() == plotted
    printed = capsys.readouterr().out
    assert ("[pointtune] parameter importances skipped: Optuna's PED-ANOVA tells no parameter apart" in printed) \
        != plotted, printed
    assert not [w for w in caught if "importances" in str(w.message)]
