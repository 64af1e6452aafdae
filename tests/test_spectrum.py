"""The feature-collapse diagnostic (pointtune.protocols.spectrum, after DCGLR Fig. 5b): the normalised
covariance spectrum against brute force, the effective rank on known spectra, ``feature_rank`` through the
real feature protocols, ``spectrum.npy`` in the loop's checkpoints and ``feature_spectrum.png`` among a trial's
MLflow artifacts."""

import numpy as np
import pytest
import torch

from pointtune.config import build_config
from pointtune.method import Method, MethodConfig, Task
from pointtune.protocols import FewShotConfig, LinearSVMConfig, evaluate
from pointtune.protocols.spectrum import (
    SPECTRUM_FLOOR,
    effective_rank,
    feature_spectrum,
    log_spectrum,
    plot_spectrum,
)
from test_protocols import CPU, TINY_CONCLU, _items


def _brute(x: np.ndarray) -> np.ndarray:
    """np.cov + np.linalg.eigvalsh, descending, divided by the largest, clipped at the floor."""
    eigs = np.sort(np.linalg.eigvalsh(np.atleast_2d(np.cov(x, rowvar=False))))[::-1]
    return np.clip(eigs / eigs[0], SPECTRUM_FLOOR, None)


def _entropy_rank(lam) -> float:
    p = np.asarray(lam, dtype=np.float64) / np.sum(lam)
    return float(np.exp(-np.sum(p * np.log(p))))


# ---- feature_spectrum ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("m,d", [(40, 6), (7, 7), (5, 12), (2, 3), (30, 1)])
def test_feature_spectrum_matches_brute_force(m, d):
    rng = np.random.default_rng(m * 100 + d)
    x = rng.standard_normal((m, d)) * rng.uniform(0.1, 3.0, d) + rng.standard_normal(d)  # anisotropic, off-centre
    spec = feature_spectrum(x.astype(np.float32))
    assert spec.shape == (d,) and spec.dtype == np.float64 and spec[0] == 1.0
    assert np.all(np.diff(spec) <= 0) and spec.min() >= SPECTRUM_FLOOR
    np.testing.assert_allclose(spec, _brute(x.astype(np.float32).astype(np.float64)), rtol=1e-7, atol=1e-9)
    if m <= d:  # rank <= M - 1 after centring: the rest is the floor
        assert np.all(spec[m - 1:] == SPECTRUM_FLOOR)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    np.testing.assert_allclose(feature_spectrum(x, l2_normalize=True), _brute(unit), rtol=1e-7, atol=1e-9)


def test_feature_spectrum_is_scale_and_shift_invariant_and_handles_no_variance():
    x = np.random.default_rng(0).standard_normal((25, 5))
    np.testing.assert_allclose(feature_spectrum(1e3 * x + 7.0), feature_spectrum(x), rtol=1e-9, atol=1e-12)
    flat = feature_spectrum(np.ones((10, 4)))  # all rows identical: no variance, nothing to normalise by
    assert np.array_equal(flat, np.zeros(4)) and effective_rank(flat) == 0.0


@pytest.mark.parametrize("bad,fragment", [
    (np.zeros(5), "must be a 2-D (M, D) array, got shape (5,)"),
    (np.zeros((2, 3, 4)), "must be a 2-D (M, D) array, got shape (2, 3, 4)"),
    (np.zeros((1, 4)), "needs at least 2 rows and 1 column, got shape (1, 4)"),
    (np.zeros((3, 0)), "needs at least 2 rows and 1 column, got shape (3, 0)"),
    (np.array([[0.0, 1.0], [np.nan, 2.0]]), "hold NaN or inf values"),
])
def test_feature_spectrum_rejects_bad_shapes_in_one_line(bad, fragment):
    with pytest.raises(ValueError) as info:
        feature_spectrum(bad)
    assert "\n" not in str(info.value) and fragment in str(info.value), str(info.value)


# ---- effective_rank ------------------------------------------------------------------------------------------

def test_effective_rank_of_isotropic_collapsed_and_known_spectra():
    rng = np.random.default_rng(1)
    iso = rng.standard_normal((4000, 8))
    assert effective_rank(feature_spectrum(iso)) == pytest.approx(8, rel=0.01)
    u = rng.standard_normal((500, 1))
    collapsed = u @ rng.standard_normal((1, 16)) + 1e-4 * rng.standard_normal((500, 16))  # rank 1 + noise
    assert 1.0 <= effective_rank(feature_spectrum(collapsed)) < 1.01
    known = np.array([4.0, 2.0, 1.0, 1.0])
    expected = np.exp(-sum(p * np.log(p) for p in known / known.sum()))
    assert effective_rank(known) == pytest.approx(expected, rel=1e-12)
    assert effective_rank(known / 4.0) == pytest.approx(expected, rel=1e-12)  # normalised by the largest
    diagonal = rng.standard_normal((20000, 4)) * np.sqrt(known)  # covariance diag(known)
    assert effective_rank(feature_spectrum(diagonal)) == pytest.approx(expected, rel=0.02)
    assert effective_rank(np.full(6, 0.3)) == pytest.approx(6.0)
    assert effective_rank([1.0, 0.0, -1e-17]) == pytest.approx(1.0)  # zeros and round-off negatives count as 0
    assert effective_rank([0.0, 0.0]) == 0.0


@pytest.mark.parametrize("bad,fragment", [
    (np.zeros((2, 2)), "non-empty 1-D array, got shape (2, 2)"),
    (np.zeros(0), "non-empty 1-D array, got shape (0,)"),
    (np.array([1.0, np.inf]), "hold NaN or inf values"),
])
def test_effective_rank_rejects_bad_input_in_one_line(bad, fragment):
    with pytest.raises(ValueError) as info:
        effective_rank(bad)
    assert "\n" not in str(info.value) and fragment in str(info.value), str(info.value)


def test_log_spectrum_and_plot(tmp_path):
    logs = log_spectrum(np.array([1.0, 0.1, 1e-3, 0.0]))
    np.testing.assert_allclose(logs, [0.0, -1.0, -3.0, -12.0])
    plot_spectrum(logs, str(tmp_path / "s.png"), "title")
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match=r"^plot_spectrum: log_eigs must be a non-empty 1-D array of finite"):
        plot_spectrum(np.array([0.0, -np.inf]), str(tmp_path / "t.png"))
    assert not (tmp_path / "t.png").exists()


# ---- through the protocols -----------------------------------------------------------------------------------

class _Encoder(Method):
    """A stand-in pretrain encoder with 16-dim features: ``collapsed`` puts all of their variance on one
    direction (plus 1e-5 noise), otherwise a random projection of the 48 centred point coordinates spreads it
    over all 16."""

    task = Task.PRETRAIN
    Config = MethodConfig

    def __init__(self, collapsed: bool):
        super().__init__(MethodConfig(name="probe"), 0, 1)
        gen = torch.Generator().manual_seed(0)
        self.collapsed = collapsed
        self.register_buffer("proj", torch.randn(48, 16, generator=gen))
        self.register_buffer("direction", torch.randn(16, generator=gen))

    def embed(self, batch):
        points = batch["points"]
        spread = (points - points.mean(1, keepdim=True)).flatten(1) @ self.proj  # (B, 48) @ (48, 16)
        if not self.collapsed:
            return spread
        return points.mean((1, 2))[:, None] * self.direction + 1e-5 * spread


@pytest.mark.parametrize("name", ["linear_svm", "few_shot"])
def test_feature_rank_flags_a_collapsed_encoder(name):
    labels = np.repeat(np.arange(3), 12)
    centres = np.random.default_rng(3).standard_normal((3, 3))
    splits = {"fit": _items(centres, labels, 0, noise=0.5), "eval": _items(centres, labels, 1, noise=0.5)}
    cfg = LinearSVMConfig(name=name, c=1.0) if name == "linear_svm" else \
        FewShotConfig(name=name, ways=[3], shots=[2], folds=2, queries=4)
    got = {}
    for collapsed in (True, False):
        scores, _, arrays = evaluate(_Encoder(collapsed), splits, CPU, list("abc"), cfg, return_arrays=True)
        spectrum = arrays["spectrum"]
        assert spectrum.shape == (16,) and spectrum[0] == 1.0
        assert scores["feature_rank"] == pytest.approx(effective_rank(spectrum), rel=1e-12)
        got[collapsed] = scores["feature_rank"]
    assert got[True] < 1.01 and got[False] > 5, got
    two = evaluate(_Encoder(True), splits, CPU, list("abc"), cfg)  # the default return shape is unchanged
    assert len(two) == 2 and two[0]["feature_rank"] == got[True]


def test_loop_saves_the_spectrum_beside_the_confusion_matrix(tmp_path):
    from test_loop import Recorder

    from pointtune.train.loop import LoopConfig, run_loop

    exp = build_config("conclu", overrides={**TINY_CONCLU, "train.epochs": 1, "data.synthetic_num_classes": 3,
                                            "protocol.c": 1.0})
    session = Recorder()
    run_loop(LoopConfig(exp, "val/svm_acc", "max", local_dir=str(tmp_path / "ckpt")), session)
    (metrics, saved), = session.reports
    best = tmp_path / "ckpt" / "best"
    assert saved and (best / "confusion.npy").is_file() and (best / "spectrum.npy").is_file()
    spectrum = np.load(best / "spectrum.npy")
    assert spectrum.shape == (32,) and spectrum[0] == 1.0  # method.backbone.emb_dims = 32
    assert metrics["val/feature_rank"] == pytest.approx(effective_rank(spectrum), rel=1e-12)
    assert 1 <= metrics["val/feature_rank"] <= 32 and "test/feature_rank" in metrics


def test_trial_artifacts_include_the_spectrum_plot(tmp_path, monkeypatch):
    from pointtune import tracking
    from pointtune.train.artifacts import log_checkpoint_artifacts
    from pointtune.train.checkpoint import save_state

    logged = {}
    monkeypatch.setattr(tracking, "log_artifact",
                        lambda uri, run_id, path, artifact_path=None: logged.update(
                            {artifact_path or path.name: path.read_bytes() if path.is_file() else None}))
    ckpt = save_state(tmp_path / "ckpt", {"experiment": {"method": {"name": "conclu"}}, "epoch": 2,
                                          "class_names": ["a", "b"], "metrics": {}})
    np.save(ckpt / "confusion.npy", np.array([[3, 1], [0, 4]]))
    np.save(ckpt / "spectrum.npy", feature_spectrum(np.random.default_rng(0).standard_normal((10, 6))))
    log_checkpoint_artifacts("sqlite:///unused", "run", str(ckpt), "trial t")
    assert set(logged) == {"config.yaml", "confusion_matrix.png", "feature_spectrum.png", "best_checkpoint"}
    assert logged["feature_spectrum.png"][:4] == b"\x89PNG"
    (ckpt / "spectrum.npy").unlink()  # a checkpoint of the classification protocol: no spectrum, no plot
    logged.clear()
    log_checkpoint_artifacts("sqlite:///unused", "run", str(ckpt), "trial t")
    assert "feature_spectrum.png" not in logged and "confusion_matrix.png" in logged


def test_a_best_checkpoint_removed_while_copied_does_not_fail_the_trial(tmp_path, monkeypatch):
    """Ray Train may delete a stopped data-parallel trial's superseded checkpoint while the recorder copies it:
    the recorder looks again (and at worst tags the run), never turning a trained trial into a failed one."""
    from types import SimpleNamespace

    from pointtune import tracking
    from pointtune.search import records
    from pointtune.train.checkpoint import save_state

    ckpt = save_state(tmp_path / "ckpt", {"experiment": {"method": {"name": "conclu"}}, "epoch": 0,
                                          "class_names": ["a", "b"], "metrics": {}})
    gone = tmp_path / "gone"
    listings = iter([gone, ckpt])                                   # first the removed one, then the kept one
    monkeypatch.setattr("pointtune.train.checkpoint.checkpoints_of", lambda *a: [])
    monkeypatch.setattr("pointtune.train.checkpoint.best_checkpoint",
                        lambda *a: SimpleNamespace(path=str(next(listings)), metrics={"epoch": 1}))
    logged, tags = [], {}
    monkeypatch.setattr(tracking, "log_artifact", lambda uri, run_id, path, artifact_path=None: logged.append(
        artifact_path or path.name))
    monkeypatch.setattr(tracking, "log_metrics", lambda target, metrics, step: logged.append(f"metric {step}"))
    monkeypatch.setattr(tracking, "set_tags", lambda uri, run_id, values: tags.update(values))
    from pointtune.search.spec import SweepRuntime, SweepSpec

    recorder = records.MlflowRecorder(SweepSpec("conclu", "x", str(tmp_path), epochs=2),
                                      SweepRuntime({}, "sqlite:///unused", "0", "parent"), "val/svm_acc", "max")
    trial = SimpleNamespace(trial_id="t1", path=str(tmp_path), last_result={"epoch": 1})
    recorder._log_best(trial, "run")
    assert "best_checkpoint" in logged and not tags
    listings = iter([gone] * 3)
    logged.clear()
    recorder._log_best(trial, "run")
    assert logged == [] and "removed by Ray Train" in tags["pointtune.artifacts"]
