"""The shared loop's contract with methods: per-iteration schedules, parameter groups, the after-step hook,
diagnostics from the method, and no stale validation values on epochs that do not evaluate."""

import shutil
from pathlib import Path

import pytest
import torch

from conftest import TINY
from pointtune.config import OptimConfig, build_config
from pointtune.method import Method
from pointtune.train.loop import LoopConfig, build_optimizer, run_loop
from pointtune.train.schedule import apply_schedules


def test_optimizer_schedules_per_iteration():
    """optim.lr / optim.weight_decay are Schedules, applied by the loop on every step from the step alone."""
    cfg = OptimConfig(lr={"start": 0.1, "end": 0.001, "shape": "cosine", "warmup_epochs": 1.5},
                      weight_decay={"start": 0.04, "end": 0.4, "shape": "cosine"})
    opt = torch.optim.SGD([{"params": [torch.nn.Parameter(torch.zeros(2))], "decay": True},
                           {"params": [torch.nn.Parameter(torch.zeros(1))], "decay": False, "weight_decay": 0.0}],
                          lr=1.0)

    def at(step):
        lr = apply_schedules(opt, cfg, step, 10, 5)
        assert opt.param_groups[0]["lr"] == opt.param_groups[1]["lr"] == lr
        assert opt.param_groups[1]["weight_decay"] == 0.0       # exempt groups keep no decay
        return lr, opt.param_groups[0]["weight_decay"]

    assert at(0)[0] == 0 and at(7)[0] == pytest.approx(0.1 * 7 / 15)     # warm-up over 15 of 50 steps
    assert at(15)[0] == pytest.approx(0.1) and at(50) == pytest.approx((0.001, 0.4))
    assert at(0)[1] == pytest.approx(0.04)
    lrs = [at(s)[0] for s in range(15, 51)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:])) and len(set(lrs)) == len(lrs)  # every step, not per epoch


def test_parameter_groups():
    class Toy(Method):
        def __init__(self):
            torch.nn.Module.__init__(self)
            self.linear = torch.nn.Linear(4, 3)
            self.norm = torch.nn.LayerNorm(3)
            self.cls_token = torch.nn.Parameter(torch.zeros(1, 3))

    toy = Toy()
    decay, plain = toy.param_groups(0.05)
    assert [p.shape for p in decay["params"]] == [torch.Size([3, 4])] and decay["weight_decay"] == 0.05
    assert len(plain["params"]) == 4 and plain["weight_decay"] == 0.0  # bias, norm weight and bias, token
    cfg = OptimConfig(weight_decay={"start": 0.04, "end": 0.4, "shape": "cosine"})
    optimizer = build_optimizer(toy, cfg)
    apply_schedules(optimizer, cfg, 100, 10, 10)
    assert optimizer.param_groups[0]["weight_decay"] == pytest.approx(0.4)
    assert optimizer.param_groups[1]["weight_decay"] == 0.0


class Recorder:
    """A session that keeps what the loop reports (rank 0 of one process, CPU)."""

    rank, world_size, device = 0, 1, torch.device("cpu")

    def __init__(self, keep: bool = False):
        self.reports, self.keep, self.checkpoints = [], keep, {}

    def checkpoint_dir(self):
        return None

    def report(self, metrics, checkpoint, owned=False):
        self.reports.append((dict(metrics), checkpoint is not None))
        if checkpoint is not None and self.keep:
            self.checkpoints[metrics["epoch"]] = checkpoint
        elif checkpoint is not None and owned:
            shutil.rmtree(checkpoint)

    def prepare_model(self, model, ddp_options):
        return model

    def prepare_loader(self, loader):
        return loader


def test_loop_calls_the_step_hook_and_reports_no_stale_values(monkeypatch):
    from pointtune.methods.cedr import CEDR

    steps = []
    monkeypatch.setattr(CEDR, "after_step", lambda self, step, total: steps.append((step, total)), raising=False)
    exp = build_config("cedr", overrides={**TINY, "train.epochs": 3, "train.eval_every": 2})
    session = Recorder()
    run_loop(LoopConfig(exp, "val/OA", "max"), session)
    per_epoch = len(steps) // 3
    assert steps == [(s, 3 * per_epoch) for s in range(1, 3 * per_epoch + 1)]
    (m1, c1), (m2, c2), (m3, c3) = session.reports
    assert not any(k.startswith("val/") for k in m1) and not c1  # epoch 1 did not evaluate
    assert "val/OA" in m2 and "val/OA" in m3 and c3  # epoch 2 evaluates; the last always does
    for metrics, _ in session.reports:
        assert 0 <= metrics["train/acc"] <= 1  # the method's own diagnostic, not the loop's guess
    assert m1["lr"] > m3["lr"]


def test_per_point_inputs_reach_the_backbone():
    from pointtune.data import build_datasets

    exp = build_config("cedr", overrides={**TINY, "data.use_normals": True, "method.backbone.inputs": ["normals"]})
    assert exp.method.backbone.kwargs()["in_features"] == 3
    method = exp.method_cls(exp.method, 8, 1).eval()
    data = build_datasets(exp.data)
    batch = {k: torch.stack([data.val[i][k] for i in range(4)]) for k in ("points", "normals", "label")}
    flipped = {**batch, "normals": -batch["normals"]}
    assert not torch.allclose(method.predict(batch), method.predict(flipped))
    with pytest.raises(KeyError, match="method.backbone.inputs"):
        method.predict({"points": batch["points"]})
    with pytest.raises(Exception, match="backbone.inputs"):
        build_config("conclu", overrides={"method.backbone.inputs": ["normals"]})


def test_test_split_is_scored_on_the_selected_epoch():
    from pointtune.data import build_datasets
    from pointtune.protocols import evaluate
    from pointtune.train.load import load_method

    exp = build_config("cedr", overrides={**TINY, "train.epochs": 4, "optim.lr": 0.05})
    session = Recorder(keep=True)
    run_loop(LoopConfig(exp, "val/OA", "max"), session)
    history = [m for m, _ in session.reports]
    values = [m["val/OA"] for m in history]
    selected = values.index(max(values)) + 1  # the first epoch reaching the best (later ties do not improve)
    final = history[-1]
    assert final["test/epoch"] == selected
    assert not any(k.startswith("test/") for m in history[:-1] for k in m)
    # The reported test accuracy is that of the selected epoch's weights, whichever epoch that is.
    chosen = load_method(session.checkpoints[selected]).method
    data = build_datasets(exp.data)
    scores, _ = evaluate(chosen, {"eval": data.test}, torch.device("cpu"), data.class_names)
    assert scores["OA"] == pytest.approx(final["test/OA"])
    for path in session.checkpoints.values():
        shutil.rmtree(path)


def test_resumed_at_its_last_epoch_the_run_reports_what_that_checkpoint_recorded():
    """Issue 12: a trial restored from the checkpoint of its last epoch (e.g. written by a worker after the
    driver was killed) is complete: it reports that checkpoint's metrics, with the checkpoint, and trains
    nothing; it is never left with an empty result."""
    exp = build_config("cedr", overrides={**TINY, "train.epochs": 2})
    first = Recorder(keep=True)
    run_loop(LoopConfig(exp, "val/OA", "max"), first)
    last = first.checkpoints[2]

    class Restored(Recorder):
        def checkpoint_dir(self):
            return str(last)

    again = Restored()
    run_loop(LoopConfig(exp, "val/OA", "max"), again)
    assert again.reports == [(first.reports[-1][0], True)]
    assert "test/OA" in again.reports[0][0] and again.reports[0][0]["epoch"] == 2


def test_a_restored_copy_is_private_and_the_loop_deletes_it(tmp_path):
    """Each process restores from its own copy of the checkpoint (two workers sharing Ray's default directory
    copied it under each other's feet: a 2-worker trial resumed at its last epoch failed in CI); the loop
    deletes that copy once loaded, or reports it as its own when the run is complete."""
    from ray.train import Checkpoint

    from pointtune.train.session import private_copy

    exp = build_config("cedr", overrides={**TINY, "train.epochs": 1})
    first = Recorder(keep=True)
    run_loop(LoopConfig(exp, "val/OA", "max"), first)
    checkpoint = Checkpoint.from_directory(str(first.checkpoints[1]))
    copies = [private_copy(checkpoint), private_copy(checkpoint)]
    assert private_copy(None) is None and copies[0] != copies[1]
    for copy in copies:
        assert (Path(copy) / "state.pt").read_bytes() == (first.checkpoints[1] / "state.pt").read_bytes()
    flags = []

    class Restored(Recorder):
        def checkpoint_dir(self):
            return copies.pop(0)

        def report(self, metrics, checkpoint, owned=False):
            flags.append(owned)
            super().report(metrics, checkpoint, owned)

    longer = build_config("cedr", overrides={**TINY, "train.epochs": 2})
    kept = copies[0]
    go_on = Restored()
    run_loop(LoopConfig(longer, "val/OA", "max"), go_on)
    assert [m["epoch"] for m, _ in go_on.reports] == [2] and not Path(kept).exists()  # loaded, then deleted
    kept, flags[:] = copies[0], []
    complete = Restored()
    run_loop(LoopConfig(exp, "val/OA", "max"), complete)
    assert complete.reports == [(first.reports[-1][0], True)] and flags == [True] and not Path(kept).exists()


def test_a_trial_that_resumes_another_trials_checkpoint_reports_the_exploit_once():
    """PBT's exploit, as the trial itself records it (it survives a killed driver): the checkpoint names the
    trial that wrote it; resumed from another trial's, the next epoch carries pbt/exploit = 1 and the donor;
    resumed from its own, nothing."""
    exp = build_config("cedr", overrides={**TINY, "train.epochs": 1})
    donor = Recorder(keep=True)
    run_loop(LoopConfig(exp, "val/OA", "max", trial_id="donor"), donor)
    written = donor.checkpoints[1]

    class Restored(Recorder):
        def checkpoint_dir(self):
            return str(shutil.copytree(written, written.with_name(written.name + f"-{len(self.reports)}-{id(self)}")))

    longer = build_config("cedr", overrides={**TINY, "train.epochs": 3})
    for trial_id, flagged in (("target", [1.0, None]), ("donor", [None, None])):
        session = Restored()
        run_loop(LoopConfig(longer, "val/OA", "max", trial_id=trial_id), session)
        assert [m["epoch"] for m, _ in session.reports] == [2, 3]
        assert [m.get("pbt/exploit") for m, _ in session.reports] == flagged
        assert [m.get("pbt/donor") for m, _ in session.reports] == [None if f is None else "donor" for f in flagged]


def test_limit_batches_cuts_every_epoch_and_every_judged_split(monkeypatch):
    """train.limit_batches: N optimizer steps per epoch (the schedules count N per epoch) and every split the
    protocol judges cut to N x batch_size items, spread over the classes."""
    from pointtune.methods.cedr import CEDR
    import pointtune.train.loop as loop

    steps, judged = [], []
    monkeypatch.setattr(CEDR, "after_step", lambda self, step, total: steps.append((step, total)), raising=False)
    real = loop.evaluate
    monkeypatch.setattr(loop, "evaluate", lambda method, splits, *a, **k: judged.append(
        {name: [int(ds[i]["label"]) for i in range(len(ds))] for name, ds in splits.items()}) or real(
        method, splits, *a, **k))
    exp = build_config("cedr", overrides={**TINY, "train.epochs": 2, "train.limit_batches": 3, "train.batch_size": 4})
    session = Recorder()
    run_loop(LoopConfig(exp, "val/OA", "max"), session)
    assert steps == [(s, 6) for s in range(1, 7)]                      # 3 steps an epoch of the 2, not 128 / 4
    assert len(judged) == 3                                            # val after each epoch, then test
    for splits in judged:
        labels = splits["eval"]
        assert len(labels) == 12 and len(set(labels)) == 8            # 3 x 4 items, every class, then again
    assert {"val/OA", "test/OA"} <= set(session.reports[-1][0])


def test_fast_dev_run_settings_include_the_protocols_quick_ones():
    """--fast-dev-run: one batch of 2, judged splits cut alike, and the protocol's own quick settings
    (scene_seg: the split's crops, no whole-scene votes; part_seg: 2 head epochs); other keys untouched."""
    from pointtune.train.debug import FAST_DEV_RUN, fast_dev_run

    exp = fast_dev_run(build_config("amcontrast3d", overrides={"optim.lr": 0.01}))
    assert (exp.train.epochs, exp.train.limit_batches, exp.train.batch_size) == (
        FAST_DEV_RUN["train.epochs"], FAST_DEV_RUN["train.limit_batches"], FAST_DEV_RUN["train.batch_size"])
    assert (exp.protocol.whole, exp.protocol.val, exp.protocol.render) == (False, "crops", 1)
    assert exp.optim.lr.start == 0.01
    seg = fast_dev_run(build_config("scl", overrides={"protocol.name": "part_seg", "protocol.head": "5fc"}))
    assert (seg.protocol.epochs, seg.protocol.head) == (2, "5fc")
    assert fast_dev_run(build_config("cedr")).protocol == build_config("cedr").protocol   # nothing to cut
