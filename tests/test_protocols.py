"""Evaluation protocols (pointtune.protocols): the registry by name and each task's default, the linear SVM
(L2-normalised features, C by cross-validation, convergence reported), few-shot episodes, the objective check
against the selected protocol, ``protocol.data``, each protocol's own settings (the ``protocol`` section as a
union tagged by ``protocol.name``, open to protocols registered later), evaluation sharded over 2 gloo workers
and merged exactly, and fine-tuning that starts from a saved encoder."""

import math

import numpy as np
import pytest
import torch
import yaml
from pydantic import Field, ValidationError

from helpers import on_gloo_workers, warm_started
from pointtune.config import ConfigError, ExperimentConfig, build_config, config_from_file, config_keys
from pointtune.method import Method, MethodConfig, Task
from pointtune.protocols import (
    EvalSplits,
    FewShotConfig,
    LinearSVMConfig,
    Protocol,
    ProtocolConfig,
    SceneSegConfig,
    build_eval_splits,
    cv_splits,
    default_objective,
    default_protocol_name,
    draw_episodes,
    evaluate,
    extract_features,
    fit_linear_svm,
    get_protocol,
    plan_settings,
    protocol_metrics,
    protocol_name,
    protocol_names,
    resolve_protocol,
    shard_indices,
)
from pointtune.search.space import check_objective, objective_metrics
from pointtune.train.checkpoint import save_state

CPU = torch.device("cpu")


class _Probe(Method):
    """A 'method' whose embedding is the cloud's centroid and whose logits are minus the distance of the
    centroid to each class centre: separable when classes sit at distinct centres."""

    task = Task.PRETRAIN
    Config = MethodConfig

    def __init__(self, centres=None, task=Task.PRETRAIN):
        super().__init__(MethodConfig(name="probe"), 0, 1)
        self.task = task
        self.scale = torch.nn.Parameter(torch.ones(1))
        self.register_buffer("centres", torch.as_tensor(np.eye(3) if centres is None else centres, dtype=torch.float32))
        self.seen = 0  # clouds embedded / predicted by this process

    def embed(self, batch):
        self.seen += batch["points"].shape[0]
        return batch["points"].mean(1) * self.scale

    def predict(self, batch):
        self.seen += batch["points"].shape[0]
        return -torch.cdist(batch["points"].mean(1), self.centres)


def _items(centres: np.ndarray, labels: np.ndarray, seed: int, noise: float = 0.05) -> list[dict]:
    """Labelled item dicts: 16 points around the centre of each label."""
    rng = np.random.default_rng(seed)
    points = centres[labels][:, None, :] + noise * rng.standard_normal((len(labels), 16, 3))
    return [{"points": torch.tensor(p, dtype=torch.float32), "label": torch.tensor(int(y))}
            for p, y in zip(points, labels)]


def _blobs(num_classes: int, per_class: int, seed: int, noise: float) -> tuple[np.ndarray, list[dict]]:
    centres = np.random.default_rng(100).standard_normal((num_classes, 3))
    return centres, _items(centres, np.repeat(np.arange(num_classes), per_class), seed, noise)


# ---- registry, defaults, names -----------------------------------------------------------------------------

def test_registry_defaults_and_task_checks():
    assert {"classification", "linear_svm", "few_shot"} <= set(protocol_names())
    assert default_protocol_name(Task.CLASSIFICATION) == "classification"
    assert default_protocol_name(Task.PRETRAIN) == "linear_svm"
    assert resolve_protocol(Task.CLASSIFICATION, "few_shot").name == "few_shot"  # any encoder: features
    with pytest.raises(ConfigError, match=r"protocol.name: the classification protocol judges classification "
                                          r"methods, not pretrain ones; use few_shot or linear_svm"):
        resolve_protocol(Task.PRETRAIN, "classification")
    with pytest.raises(ConfigError, match=r"protocol.data: the classification protocol"):
        resolve_protocol(Task.CLASSIFICATION, None, own_data=True)
    assert default_protocol_name(Task.SEGMENTATION) == "scene_seg"   # tests/test_scene_seg.py
    assert protocol_metrics(Task.PRETRAIN) == ("svm_acc", "svm_mAcc", "svm_F1", "svm_C", "svm_converged",
                                               "feature_rank")


def test_protocol_name_and_objective_of_an_experiment():
    conclu = build_config("conclu")
    assert protocol_name(conclu) == "linear_svm" and default_objective(conclu) == ("val/svm_acc", "max")
    cedr = build_config("cedr")
    assert protocol_name(cedr) == "classification" and default_objective(cedr) == ("val/OA", "max")
    few = build_config("conclu", overrides={"protocol.name": "few_shot", "protocol.ways": [3], "protocol.shots": [5]})
    assert protocol_name(few) == "few_shot" and default_objective(few) == ("val/fewshot/3way5shot", "max")
    assert build_config("cedr", overrides={"protocol.name": "linear_svm"}).protocol.name == "linear_svm"


@pytest.mark.parametrize("name,key,value,fragment", [
    (None, "protocol.name", "svm", "protocol.name: Value error, unknown protocol 'svm'; known protocols: "
                                   "classification"),
    (None, "protocol.c", [], "protocol.c: Value error, give one C or a non-empty list"),
    (None, "protocol.c", [1, -1], "protocol.c: Value error, every C must be > 0"),
    (None, "protocol.c", 0, "protocol.c: Value error, every C must be > 0"),
    (None, "protocol.folds", 1, "protocol.folds: Input should be greater than or equal to 2"),
    ("few_shot", "protocol.ways", [1, 5], "protocol.ways: Value error, every entry must be an integer >= 2"),
    ("few_shot", "protocol.shots", [], "protocol.shots: List should have at least 1 item"),
    ("few_shot", "protocol.folds", 0, "protocol.folds: Input should be greater than or equal to 1"),
    ("few_shot", "protocol.c", [1.0], "protocol.c: Input should be a valid number"),
    (None, "protocol.data.nmae", "x", "protocol.data.nmae: unknown key; closest valid keys: protocol.data.name"),
])
def test_protocol_config_errors_are_one_line(name, key, value, fragment):
    with pytest.raises(ConfigError) as info:
        build_config("conclu", overrides={"protocol.name": name, key: value})
    assert "\n" not in str(info.value) and fragment in str(info.value), str(info.value)


def test_svm_c_accepts_one_value_or_a_list():
    assert LinearSVMConfig().c == [0.01, 0.1, 1.0, 10.0]
    assert LinearSVMConfig(c=2).c == 2.0
    assert build_config("conclu", overrides={"protocol.c": [0.5, 5]}).protocol.c == [0.5, 5.0]


# ---- each protocol's settings: the protocol section is a union tagged by protocol.name ------------------------

OWN_KEYS = {name: [k for k in get_protocol(name).Config.model_fields if k not in ProtocolConfig.model_fields]
            for name in ("classification", "linear_svm", "few_shot", "part_seg", "scene_seg")}


def test_null_name_takes_the_settings_of_the_tasks_default_protocol():
    assert type(build_config("conclu").protocol) is LinearSVMConfig
    assert type(build_config("cedr").protocol) is ProtocolConfig           # classification has no settings
    assert type(build_config("seg").protocol) is SceneSegConfig
    assert build_config("conclu").protocol.name is None                     # null stays null
    assert OWN_KEYS["classification"] == [] and OWN_KEYS["linear_svm"] == ["c", "folds", "max_iter", "seed"]


def test_each_protocols_keys_are_accepted_only_with_its_name():
    for name, keys in OWN_KEYS.items():
        settings = get_protocol(name).Config
        for key in keys:
            value = settings.model_fields[key].get_default(call_default_factory=True)
            exp = build_config("conclu", overrides={"protocol.name": name, f"protocol.{key}": value})
            assert type(exp.protocol) is settings and getattr(exp.protocol, key) == value
            for other, other_keys in OWN_KEYS.items():
                if key not in other_keys:
                    with pytest.raises(ConfigError, match=rf"protocol.{key}: not a key of protocol {other} \(.*{name}"):
                        build_config("conclu", overrides={"protocol.name": other, f"protocol.{key}": value})


def test_another_protocols_key_is_one_line_naming_the_protocols_that_have_it():
    with pytest.raises(ConfigError) as info:
        config_from_file("conclu", None, ["protocol.ways=[3]"])
    assert str(info.value) == ("--set: protocol.ways: not a key of protocol linear_svm (few_shot has it; set "
                               "protocol.name=few_shot)")
    with pytest.raises(ConfigError) as info:
        build_config("conclu", {"protocol": {"name": "part_seg", "folds": 3}}, source="exp.yaml")
    assert str(info.value) == ("exp.yaml: protocol.folds: not a key of protocol part_seg (few_shot, linear_svm have "
                               "it; set protocol.name=few_shot or linear_svm)")
    with pytest.raises(ConfigError, match=r"^--set: protocol.c: not a key of protocol classification \(few_shot, "):
        build_config("cedr", overrides={"protocol.c": 1.0}, source="--set")
    # keys no protocol has keep the closest-key suggestions among the named protocol's keys
    with pytest.raises(ConfigError, match=r"protocol.svm_c: unknown key; closest valid keys: protocol.c$"):
        build_config("conclu", overrides={"protocol.svm_c": 1.0})
    with pytest.raises(ConfigError, match=r"protocol.wayz: unknown key; closest valid keys: protocol.ways$"):
        build_config("conclu", overrides={"protocol.name": "few_shot", "protocol.wayz": [3]})


def test_each_protocols_settings_round_trip_through_the_dumped_config():
    for name in (None, *OWN_KEYS):
        exp = build_config("conclu", overrides={"protocol.name": name})
        again = build_config("conclu", yaml.safe_load(yaml.safe_dump(exp.to_dict())))
        assert again == exp and type(again.protocol) is type(exp.protocol), name
        assert set(exp.to_dict()["protocol"]) == {"name", "data", *OWN_KEYS[name or "linear_svm"]}


def test_settings_instances_are_kept_or_revalidated():
    conclu = build_config("conclu").method
    few = FewShotConfig(name="few_shot", ways=[3])
    assert ExperimentConfig(method=conclu, protocol=few).protocol is few
    with pytest.raises(ValidationError, match=r"protocol.ways\n  Extra inputs are not permitted"):
        ExperimentConfig(method=conclu, protocol=FewShotConfig())               # null: linear_svm's settings
    with pytest.raises(TypeError, match="the linear_svm protocol reads a LinearSVMConfig, got a FewShotConfig"):
        evaluate(_Probe(), {"fit": _items(np.eye(3), np.arange(3), 0), "eval": _items(np.eye(3), np.arange(3), 1)},
                 CPU, ["a", "b", "c"], FewShotConfig())


class _EchoConfig(ProtocolConfig):
    """Settings of the test-only protocol :class:`_Echo`."""

    repeats: int = Field(2, ge=1, description="test-only: metrics reported")


class _Echo(Protocol):
    """Test-only protocol registered after the config machinery was imported: reports ``echo<i>`` = i."""

    Config = _EchoConfig
    tasks = frozenset({Task.PRETRAIN})
    per_class = False

    def metrics(self, cfg):
        return tuple(f"echo{i}" for i in range(cfg.repeats))

    def run(self, method, splits, device, class_names, cfg, batch_size=64, num_workers=0):
        return {f"echo{i}": float(i) for i in range(cfg.repeats)}, None, {}


@pytest.fixture
def echo(monkeypatch):
    """Register :class:`_Echo` as ``_echo_test`` for one test (the registry is global)."""
    from pointtune.protocols.base import _PROTOCOLS

    monkeypatch.setattr(_Echo, "name", "_echo_test")
    monkeypatch.setitem(_PROTOCOLS._items, "_echo_test", _Echo())
    return "_echo_test"


def test_a_protocol_registered_later_brings_its_own_settings(echo):
    exp = build_config("conclu", overrides={"protocol.name": echo, "protocol.repeats": 3})
    assert type(exp.protocol) is _EchoConfig and exp.protocol.repeats == 3
    assert exp.to_dict()["protocol"] == {"name": echo, "data": None, "repeats": 3}
    assert build_config("conclu", exp.to_dict()) == exp
    assert default_objective(exp) == ("val/echo0", "max")
    scores, _ = evaluate(_Probe(), {"eval": _items(np.eye(3), np.arange(3), 1)}, CPU, list("abc"), exp.protocol)
    assert scores == {"echo0": 0.0, "echo1": 1.0, "echo2": 2.0}
    assert "protocol.repeats" in config_keys("conclu", echo) and "protocol.repeats" not in config_keys("conclu")
    with pytest.raises(ConfigError, match=rf"^--set: protocol.repeats: not a key of protocol linear_svm \({echo} has "
                                          rf"it; set protocol.name={echo}\)$"):
        build_config("conclu", overrides={"protocol.repeats": 3}, source="--set")
    with pytest.raises(ConfigError, match=r"protocol.repeat: unknown key; closest valid keys: protocol.repeats"):
        build_config("conclu", overrides={"protocol.name": echo, "protocol.repeat": 3})


def test_objective_checked_against_the_selected_protocol():
    check_objective("val/svm_C", Task.PRETRAIN, "x")
    few = FewShotConfig(name="few_shot", ways=[3], shots=[10])
    check_objective("val/fewshot/3way10shot_std", Task.PRETRAIN, "x", protocol_cfg=few)
    assert "val/acc/<class>" not in objective_metrics(Task.PRETRAIN, protocol_cfg=few)  # no confusion matrix
    with pytest.raises(ConfigError, match=r"'val/fewshot/5way10shot' is not reported by runs of the few_shot "
                                          r"protocol .*valid: val/fewshot/3way10shot, val/fewshot/3way10shot_std"):
        check_objective("val/fewshot/5way10shot", Task.PRETRAIN, "x", protocol_cfg=few)
    with pytest.raises(ConfigError, match=r"'val/fewshot/5way10shot' is not reported by runs of the linear_svm "
                                          r"protocol \(task pretrain\); reported by the few_shot protocol"):
        check_objective("val/fewshot/5way10shot", Task.PRETRAIN, "x")
    with pytest.raises(ConfigError, match=r"'val/svm_acc' is not reported by runs of the classification protocol.*"
                                          r"reported by the linear_svm protocol"):
        check_objective("val/svm_acc", Task.CLASSIFICATION, "x")
    check_objective("val/svm_acc", Task.CLASSIFICATION, "x", protocol="linear_svm")


# ---- linear SVM --------------------------------------------------------------------------------------------

def test_linear_svm_separable_and_random():
    labels = np.repeat(np.arange(3), 20)
    centroids = np.eye(3)
    splits = {"fit": _items(centroids, labels, 0), "eval": _items(centroids, labels, 1)}
    scores, cm = evaluate(_Probe(), splits, CPU, ["a", "b", "c"], LinearSVMConfig(c=1.0))
    assert scores["svm_acc"] == pytest.approx(1.0) and cm.trace() == 60
    assert scores["acc/a"] == scores["acc/b"] == scores["acc/c"] == pytest.approx(1.0)
    assert scores["svm_C"] == 1.0 and scores["svm_converged"] == 1.0  # a single C: no cross-validation
    same = np.zeros((3, 3))  # every class at the origin: nothing to separate
    splits = {"fit": _items(same, labels, 0), "eval": _items(same, labels, 1)}
    scores, cm = evaluate(_Probe(), splits, CPU, ["a", "b", "c"])
    assert scores["acc/b"] == pytest.approx(cm[1, 1] / 20)
    assert scores["svm_acc"] < 0.6 and scores["svm_C"] in (0.01, 0.1, 1.0, 10.0)
    assert set(scores) == set(protocol_metrics(Task.PRETRAIN)) | {"acc/a", "acc/b", "acc/c"}


def test_linear_svm_cross_validates_c_and_reports_convergence():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 30)
    x = rng.standard_normal((90, 8)) + 0.6 * np.eye(3, 8)[y]
    fit = fit_linear_svm(x, y, [10.0, 0.01, 1.0], folds=5, seed=0)
    assert sorted(fit.cv_scores) == [0.01, 1.0, 10.0]
    best = max(fit.cv_scores.values())
    assert fit.C == min(c for c, s in fit.cv_scores.items() if s == best)  # the best mean; ties: the smallest C
    again = fit_linear_svm(x, y, [10.0, 0.01, 1.0], folds=5, seed=0)
    assert again.cv_scores == fit.cv_scores and np.array_equal(again.model.coef_, fit.model.coef_)
    assert fit_linear_svm(x, y, 3.0).cv_scores == {} and fit_linear_svm(x, y, 3.0).C == 3.0
    noisy = rng.standard_normal((300, 40))
    stuck = fit_linear_svm(noisy, rng.integers(0, 2, 300), 1000.0, max_iter=2)
    assert stuck.converged is False  # sklearn's ConvergenceWarning, caught rather than silenced
    assert fit_linear_svm(x, y, 1.0).converged is True


def test_cv_splits_adapt_to_small_classes():
    y = np.array([0] * 7 + [1] * 3 + [2])
    splits = cv_splits(y, 5, seed=0)
    assert len(splits) == 5
    assert sorted(np.concatenate([te for _, te in splits]).tolist()) == list(range(len(y)))
    assert len(cv_splits(np.array([0, 0, 1, 1]), 5, 0)) == 2  # folds limited by the largest class
    assert cv_splits(np.array([0, 1, 2]), 5, 0) == []  # one cloud per class: nothing to cross-validate
    fit = fit_linear_svm(np.eye(3), np.array([0, 1, 2]), [0.01, 0.5, 10.0])
    assert fit.C == 0.5 and fit.cv_scores == {}  # no CV possible: the candidate closest to 1


def test_extract_features_restores_training_mode_and_accepts_loaders():
    from torch.utils.data import DataLoader

    probe = _Probe().train()
    items = _items(np.eye(3), np.arange(3), 0)
    feats, labels = extract_features(probe, DataLoader(items, batch_size=2), CPU)
    assert feats.shape == (3, 3) and labels.tolist() == [0, 1, 2] and probe.training


# ---- few-shot ----------------------------------------------------------------------------------------------

def test_few_shot_plan_and_episodes():
    cfg = FewShotConfig(name="few_shot", ways=[3, 5], shots=[2, 4], folds=3, queries=3, seed=7)
    fit_labels = np.repeat(np.arange(4), [6, 6, 3, 1])
    eval_labels = np.repeat(np.arange(4), [5, 5, 5, 5])
    runnable, skipped = plan_settings(cfg, fit_labels, eval_labels)
    assert [(w, s) for w, s, _ in runnable] == [(3, 2)]
    assert skipped == ["3way4shot (2 classes have >= 4 training and >= 3 scored clouds)",
                       "5way2shot (3 classes have >= 2 training and >= 3 scored clouds)",
                       "5way4shot (2 classes have >= 4 training and >= 3 scored clouds)"]
    episodes = draw_episodes(cfg, fit_labels, eval_labels)
    assert len(episodes) == 3 and [e.fold for e in episodes] == [0, 1, 2]
    for ep in episodes:
        assert ep.classes.tolist() == [0, 1, 2]  # the only classes with 2 training clouds
        assert len(set(ep.support.tolist())) == 6 and len(set(ep.query.tolist())) == 9  # no replacement
        assert (fit_labels[ep.support] == ep.classes[ep.support_labels]).all()
        assert (eval_labels[ep.query] == ep.classes[ep.query_labels]).all()
    again = draw_episodes(cfg, fit_labels, eval_labels)
    assert all(np.array_equal(a.support, b.support) and np.array_equal(a.query, b.query)
               for a, b in zip(episodes, again))
    other = draw_episodes(cfg.model_copy(update={"seed": 8}), fit_labels, eval_labels)
    assert any(not np.array_equal(a.support, b.support) for a, b in zip(episodes, other))


def test_few_shot_protocol_reports_mean_and_std_and_skips_with_one_line(capsys):
    _, fit = _blobs(4, 25, 0, 0.4)
    _, ev = _blobs(4, 25, 1, 0.4)
    cfg = FewShotConfig(name="few_shot", ways=[3, 5], shots=[5, 10], folds=6, queries=20, seed=1)
    scores, cm = evaluate(_Probe(), {"fit": fit, "eval": ev}, CPU, list("abcd"), cfg)
    assert cm is None and set(scores) == {"fewshot/3way5shot", "fewshot/3way5shot_std",
                                          "fewshot/3way10shot", "fewshot/3way10shot_std", "feature_rank"}
    assert 0.5 < scores["fewshot/3way10shot"] <= 1 and 0 <= scores["fewshot/3way10shot_std"] < 0.5
    out = capsys.readouterr().out.strip().splitlines()
    assert out == ["[pointtune] few_shot: skipped 5way5shot (4 classes have >= 5 training and >= 20 scored clouds), "
                   "5way10shot (4 classes have >= 10 training and >= 20 scored clouds)"]
    again, _ = evaluate(_Probe(), {"fit": fit, "eval": ev}, CPU, list("abcd"), cfg)
    assert again == scores and capsys.readouterr().out == ""  # deterministic; the skip line is printed once


# ---- the loop and preflight with protocol.data --------------------------------------------------------------

TINY_CONCLU = {
    "method.backbone.name": "pointnet", "method.backbone.emb_dims": 32, "method.projector_hidden": 32,
    "method.projection_dim": 16, "method.predictor_hidden": 16, "method.num_prototypes": 4,
    "method.view_points": 64, "data.num_points": 128, "train.batch_size": 16, "train.eval_batch_size": 64,
    "data.synthetic_per_class": 16,
}


def test_protocol_data_judges_on_its_own_dataset():
    from test_loop import Recorder

    from pointtune.preflight import preflight
    from pointtune.train.loop import LoopConfig, run_loop

    own = {"name": "synthetic", "synthetic_num_classes": 3, "synthetic_per_class": 20, "num_points": 128,
           "val_fraction": 0.5}
    exp = build_config("conclu", overrides={**TINY_CONCLU, "train.epochs": 1, "data.synthetic_num_classes": 5,
                                            "protocol.data": own, "protocol.c": 1.0})
    judged = build_eval_splits(exp)
    assert isinstance(judged, EvalSplits) and judged.source == "protocol.data" and judged.num_classes == 3
    assert len(judged.val) == 30 and len(judged.fit) == 30 and len(judged.test) == 60
    preflight(exp, objective="val/acc/cube")
    session = Recorder()
    run_loop(LoopConfig(exp, "val/svm_acc", "max"), session)
    (metrics, _), = session.reports
    assert sorted(k for k in metrics if k.startswith("val/acc/")) == [f"val/acc/{c}" for c in
                                                                      sorted(judged.class_names)]
    assert metrics["val/svm_C"] == 1.0 and "test/svm_acc" in metrics
    with pytest.raises(ConfigError, match=r"objective.metric: 'val/acc/torus' is not reported"):
        preflight(exp, objective="val/acc/torus")  # a class of the training data, not of protocol.data
    bad = build_config("conclu", overrides={**TINY_CONCLU, "protocol.data": {**own, "classes": ["nope"]}})
    with pytest.raises(Exception, match=r"^protocol.data.classes: "):
        preflight(bad)


def test_preflight_refuses_a_protocol_that_reports_nothing_or_skips_the_objective():
    from pointtune.preflight import preflight

    base = {**TINY_CONCLU, "data.synthetic_num_classes": 3, "data.val_fraction": 0.5, "protocol.name": "few_shot",
            "protocol.queries": 4, "protocol.shots": [2]}
    with pytest.raises(ConfigError, match=r"protocol: the few_shot protocol reports nothing on the validation split "
                                          r"of data \(synthetic\): skipped 5way2shot \(3 classes"):
        preflight(build_config("conclu", overrides={**base, "protocol.ways": [5]}))
    exp = build_config("conclu", overrides={**base, "protocol.ways": [3, 4]})
    preflight(exp, objective="val/fewshot/3way2shot")
    with pytest.raises(ConfigError, match=r"objective.metric: 'val/fewshot/4way2shot' is never reported on this "
                                          r"data; the few_shot protocol skips 4way2shot"):
        preflight(exp, objective="val/fewshot/4way2shot")
    with pytest.raises(ConfigError, match=r"protocol.name: the classification protocol judges classification"):
        preflight(build_config("conclu", overrides={**TINY_CONCLU, "protocol.name": "classification"}))


# ---- sharded evaluation on 2 gloo workers ------------------------------------------------------------------

WORLD = 2


def _sharded_cases():
    """(name, method factory, splits, class names, protocol config): odd numbers of clouds, so the shards
    differ in size; 'tiny' scores a single cloud, so rank 1's eval shard is empty."""
    centres, fit = _blobs(4, 13, 0, 0.6)
    _, ev = _blobs(4, 11, 1, 0.6)
    names = list("abcd")
    few = FewShotConfig(name="few_shot", ways=[2, 4], shots=[3, 5], folds=5, queries=4, seed=3)
    return [
        ("classification", lambda: _Probe(centres, Task.CLASSIFICATION), {"eval": ev}, names,
         ProtocolConfig()),
        ("linear_svm", lambda: _Probe(), {"fit": fit, "eval": ev}, names, LinearSVMConfig()),
        ("few_shot", lambda: _Probe(), {"fit": fit, "eval": ev}, names, few),
        ("tiny", lambda: _Probe(), {"fit": fit, "eval": ev[11:12]}, names,
         LinearSVMConfig(c=0.5)),
    ]


def _sharded_worker(rank: int) -> dict:
    """What one of the 2 gloo workers scores (:func:`helpers.on_gloo_workers`)."""
    out = {}
    for name, make, splits, names, cfg in _sharded_cases():
        method = make()
        scores, cm = evaluate(method, splits, CPU, names, cfg, batch_size=4)
        out[name] = (scores, cm, method.seen)
    return out


@pytest.mark.slow  # spawns a 2-process gloo group
def test_sharded_evaluation_equals_single_process(tmp_path):
    parts = on_gloo_workers(_sharded_worker, tmp_path, WORLD)
    for name, make, splits, names, cfg in _sharded_cases():
        method = make()
        single, cm = evaluate(method, splits, CPU, names, cfg, batch_size=4)
        assert single, name
        for rank, part in enumerate(parts):
            scores, cm_r, seen = part[name]
            assert scores.keys() == single.keys(), (name, rank)
            for key, value in single.items():  # exactly, not approximately
                assert scores[key] == value or (math.isnan(value) and math.isnan(scores[key])), (name, key)
            assert (cm is None and cm_r is None) or np.array_equal(cm, cm_r), name
            # each worker ran the method on its shard only (rank::2, no padding)
            # (an empty shard embeds one probe cloud for the feature width)
            expected = sum(len(shard_indices(len(s), rank, WORLD)) or 1 for s in splits.values())
            assert seen == expected, (name, rank, seen, expected)
        if name != "tiny":
            assert sum(p[name][2] for p in parts) == method.seen  # every cloud exactly once over the workers


def test_shard_indices_cover_every_cloud_once():
    for n in (0, 1, 5, 8):
        for world in (1, 2, 3, 8):
            got = sorted(i for r in range(world) for i in shard_indices(n, r, world))
            assert got == list(range(n))


# ---- fine-tuning from a saved encoder ----------------------------------------------------------------------

def test_finetune_starts_from_the_saved_encoder(tmp_path):
    source = build_config("cedr", overrides={"method.backbone.name": "pointnet", "method.backbone.emb_dims": 32})
    model = source.method_cls(source.method, 4, 1)
    save_state(tmp_path / "ckpt", {"model": model.state_dict(), "experiment": source.to_dict(),
                                   "class_names": ["a", "b", "c", "d"]})
    exp = build_config("finetune", overrides={"method.pretrained": str(tmp_path / "ckpt")})
    tuned = warm_started(exp, 3)
    for name, value in model.encoder().state_dict().items():
        assert torch.equal(tuned.encoder().state_dict()[name], value), name
    assert tuned.predict({"points": torch.randn(2, 64, 3)}).shape == (2, 3)
    scratch = build_config("finetune", overrides={"method.backbone.name": "pointnet", "method.backbone.emb_dims": 32})
    fresh = scratch.method_cls(scratch.method, 3, 1)
    assert not all(torch.equal(fresh.encoder().state_dict()[k], v) for k, v in model.encoder().state_dict().items())


def test_finetune_frozen_encoder_gets_no_gradient(tmp_path):
    exp = build_config("finetune", overrides={"method.backbone.name": "pointnet", "method.backbone.emb_dims": 32,
                                              "method.freeze_encoder": True})
    model = exp.method_cls(exp.method, 3, 1)
    out = model({"points": torch.randn(4, 64, 3), "label": torch.tensor([0, 1, 2, 0])}, 0, 0.0)
    out["loss"].backward()
    assert all(p.grad is None for p in model.encoder().parameters())
    assert all(p.grad is not None for p in model.cls_head.parameters())


def test_finetune_missing_checkpoint_names_it(tmp_path):
    from pointtune.train.sources import resolve_sources

    exp = build_config("finetune", overrides={"method.pretrained": str(tmp_path / "nope")})
    with pytest.raises(FileNotFoundError, match="^method.pretrained: .*nope"):
        resolve_sources(exp)
    with pytest.raises(ConfigError, match="^method.encoder_source: the architecture of method.pretrained is not set"):
        exp.method_cls(exp.method, 3, 1)   # a config no run has resolved: no architecture, nothing read
