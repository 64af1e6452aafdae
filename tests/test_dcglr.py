"""Tests of DCGLR (methods/dcglr.py) and the multi-crop views (platform/views.py): every loss term against a
brute-force loop over the paper's equations, the centre (Eq. 9) and teacher EMA (Eq. 13) updates, the stop
gradient, the view sizes and shapes, the schedules, the module contract and a one-epoch run of the CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch
from pydantic import ValidationError

from pointtune.method import Task, get_method, method_names
from pointtune.methods.dcglr import (
    DCGLR,
    DCGLRConfig,
    DINOHead,
    MLP2Head,
    cross_entropy,
    dcglr_loss,
    ema_update,
    teacher_probs,
    update_center,
)
from pointtune.views import (
    MultiCropSpec,
    box_crop_indices,
    crop_count,
    fps_view_indices,
    knn_crop_indices,
    multi_crop,
    renormalize,
    resample_members,
    view_groups,
)

DT = torch.float64
TINY_VIT = {"name": "vit3d", "dim": 32, "depth": 1, "heads": 2, "k": 8}


def tiny_cfg(**kw) -> DCGLRConfig:
    base = {"backbone": TINY_VIT, "out_dim": 16, "proj_hidden": 32, "proj_bottleneck": 8,
            "n_local_crops": 3, "n_multires": 1}
    return DCGLRConfig.model_validate({**base, **kw})


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _cloud(B: int = 4, N: int = 96, seed: int = 0) -> torch.Tensor:
    return torch.randn(B, N, 3, generator=_gen(seed))


def _batch(B: int = 6, N: int = 96, seed: int = 12) -> dict[str, torch.Tensor]:
    return {"points": _cloud(B, N, seed), "label": torch.zeros(B, dtype=torch.long)}


def _train_step(model: DCGLR, opt, batch, step: int, total: int, epoch: int = 0) -> dict:
    out = model(batch, epoch, (step - 1) / total)
    opt.zero_grad(set_to_none=True)
    out["loss"].backward()
    opt.step()
    model.after_step(step, total)
    return out


# --------------------------------------------------------------------------------------------------
# Brute-force references, one scalar at a time
# --------------------------------------------------------------------------------------------------


def _softmax(row: list[float], tau: float) -> list[float]:
    top = max(row)
    e = [math.exp((x - top) / tau) for x in row]
    return [v / sum(e) for v in e]


def _H(a: list[float], b: list[float]) -> float:
    return -sum(x * math.log(y) for x, y in zip(a, b))


def _loss_loop(T, SG, SL, c, tau_t, tau_s, wg, wl, avg) -> dict[str, float]:
    """Eqs. 8, 10-12 with loops: p_t from the centred teacher output, H averaged over the batch."""
    I, L, B, K = len(T), len(SL), T[0].shape[0], T[0].shape[1]
    pt = [[_softmax([float(T[i][b, k]) - float(c[k]) for k in range(K)], tau_t) for b in range(B)] for i in range(I)]

    def h(i, S):
        return sum(_H(pt[i][b], _softmax([float(x) for x in S[b]], tau_s)) for b in range(B)) / B

    gg = [h(i, SG[j]) for i in range(I) for j in range(I) if j != i]
    lg = [h(i, SL[j]) for i in range(I) for j in range(L)]
    loss_g = sum(gg) / (I * (I - 1))
    loss_l = sum(lg) / (I * L) if L else 0.0
    loss = wg * loss_g + wl * loss_l if avg == "paper" else (wg * sum(gg) + wl * sum(lg)) / (len(gg) + len(lg))
    ent = sum(-sum(p * math.log(p) for p in pt[i][b] if p > 0) for i in range(I) for b in range(B)) / (I * B)
    ents = [sum(-sum(p * math.log(p) for p in pt[i][b] if p > 0) for b in range(B)) / B for i in range(I)]
    kls = [h(i, SG[j]) - ents[i] for i in range(I) for j in range(I) if j != i]
    kls += [h(i, SL[j]) - ents[i] for i in range(I) for j in range(L)]
    return {"loss": loss, "loss_g": loss_g, "loss_l": loss_l, "teacher_entropy": ent, "kl": sum(kls) / len(kls)}


def _rand(*shape, seed: int, scale: float = 1.0) -> torch.Tensor:
    return scale * torch.randn(*shape, generator=_gen(seed), dtype=DT)


# --------------------------------------------------------------------------------------------------
# Registration, config, recipe
# --------------------------------------------------------------------------------------------------


def test_registered_and_defaults():
    assert "dcglr" in method_names() and get_method("dcglr") is DCGLR
    assert DCGLR.task is Task.PRETRAIN and DCGLR.Config is DCGLRConfig
    cfg = DCGLRConfig()
    assert cfg.name == "dcglr" and cfg.backbone.name == "vit3d"
    assert (cfg.n_global_crops, cfg.global_ratio_low, cfg.global_ratio_high) == (2, 0.7, 1.0)
    assert (cfg.n_local_crops, cfg.local_ratio_low, cfg.local_ratio_high) == (8, 0.2, 0.5)
    assert (cfg.n_multires, cfg.multires_fraction) == (2, 0.5)
    assert (cfg.crop_mode, cfg.view_points_mode) == ("knn", "shared_ratio")
    assert cfg.renormalize_crops is False and cfg.out_dim == 512 and cfg.head == "dino"
    assert (cfg.proj_bottleneck, cfg.proj_layers, cfg.student_temperature, cfg.center_momentum) == (256, 3, 0.1, 0.9)
    tau, lam = cfg.teacher_temperature, cfg.teacher_momentum
    assert (tau.start, tau.shape, tau.warmup_epochs) == (0.04, "constant", 0)
    assert (lam.start, lam.end, lam.shape) == (0.996, 1.0, "cosine")
    assert (cfg.w_global, cfg.w_local, cfg.loss_avg) == (1, 1, "paper")
    assert (cfg.teacher_init, cfg.teacher_bn, cfg.features, cfg.freeze_last_layer) == ("copy", "own", "teacher", 0)
    for name, info in DCGLRConfig.model_fields.items():
        assert info.description, f"{name} has no description"


@pytest.mark.parametrize(
    "bad, fragment",
    [
        ({"global_ratio_low": 0.9, "global_ratio_high": 0.8}, "global_ratio_low (0.9) must be <= global_ratio_high"),
        ({"local_ratio_low": 0.6}, "local_ratio_low (0.6) must be <= local_ratio_high"),
        ({"n_global_crops": 1}, "greater than or equal to 2"),
        ({"teacher_temperature": 0.0}, "start must be > 0"),
        ({"teacher_temperature": {"start": 0.07, "warmup_epochs": 5, "warmup_start": 0.0}}, "warmup_start must be > 0"),
        ({"teacher_momentum": {"start": 1.01}}, "start must be <= 1"),
        ({"center_momentum": 1.0}, "less than 1"),
        ({"student_temperature": 0.0}, "greater than 0"),
        ({"out_dim": 0}, "greater than or equal to 1"),
        ({"local_ratio_low": 0.0}, "greater than 0"),
        ({"global_ratio_high": 1.2}, "less than or equal to 1"),
        ({"crop_mode": "ball"}, "'knn' or 'box'"),
        ({"loss_avg": "mean"}, "'paper' or 'dino'"),
        ({"n_local_crop": 8}, "Extra inputs"),
        ({"backbone": {"name": "dgcnn", "k": 20}, "view_points_mode": "fixed", "local_points": 16},
         "must be >= the DGCNN neighbourhood size backbone.k (20)"),
    ],
)
def test_config_rejects_invalid(bad, fragment):
    with pytest.raises(ValidationError) as info:
        DCGLRConfig.model_validate(bad)
    assert fragment in str(info.value)


def test_cross_field_errors_are_one_line_config_errors():
    from pointtune.config import ConfigError, build_config

    # a backbone argument given alone keeps this method's backbone (vit3d), not BackboneConfig's default
    exp = build_config("dcglr", overrides={"method.backbone.dim": 64})
    assert exp.method.backbone.name == "vit3d" and exp.method.backbone.kwargs() == {"dim": 64}
    with pytest.raises(ConfigError) as info:
        build_config("dcglr", overrides={"method.local_ratio_low": 0.6})
    msg = str(info.value)
    assert "\n" not in msg and "local_ratio_low (0.6) must be <= local_ratio_high (0.5)" in msg


def test_build_config_applies_recipe():
    from pointtune.config import build_config

    exp = build_config("dcglr", {}, {"method.n_local_crops": 4, "optim.lr": 1.25e-4})
    assert exp.method.n_local_crops == 4
    lr, wd = exp.optim.lr, exp.optim.weight_decay
    assert exp.optim.name == "adamw"
    assert (lr.start, lr.end, lr.shape, lr.warmup_epochs, lr.warmup_start, lr.unit) == \
        (1.25e-4, 1e-6, "cosine", 0.05, 0, "fraction")  # 10 warm-up epochs of a 200-epoch run
    assert lr.at(5, 200) == pytest.approx(0.625e-4) and lr.at(200, 200) == pytest.approx(1e-6)
    assert lr.at(0.25, 10) == pytest.approx(0.625e-4)  # the same proportions in a 10-epoch run
    assert (wd.start, wd.end, wd.shape) == (0.04, 0.4, "cosine") and wd.at(50, 100) == pytest.approx(0.22)
    assert exp.train.grad_clip == 3.0 and exp.data.num_points == 2048
    aug = exp.data.augment
    assert (aug.scale_low, aug.scale_high, aug.translate, aug.jitter_sigma, aug.rotate_up) == (1, 1, 0, 0, False)


# --------------------------------------------------------------------------------------------------
# Loss: Eqs. 8, 10-12
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("avg", ["paper", "dino"])
@pytest.mark.parametrize("I, L", [(2, 3), (3, 2), (2, 0)])
def test_dcglr_loss_matches_loops(avg, I, L):
    B, K = 4, 6
    T = [_rand(B, K, seed=10 + i, scale=0.3) for i in range(I)]
    SG = [_rand(B, K, seed=20 + i) for i in range(I)]
    SL = [_rand(B, K, seed=30 + j) for j in range(L)]
    c = _rand(K, seed=40, scale=0.1)
    out = dcglr_loss(T, SG, SL, c, 0.07, 0.2, w_global=0.7, w_local=1.6, loss_avg=avg)
    ref = _loss_loop(T, SG, SL, c, 0.07, 0.2, 0.7, 1.6, avg)
    for key, value in ref.items():
        assert float(out[key]) == pytest.approx(value, rel=1e-9, abs=1e-12), key
    assert set(out) == {"loss", "loss_g", "loss_l", "teacher_entropy", "kl"}
    assert all(v.dim() == 0 for v in out.values())


def test_loss_paper_weighs_global_pairs_more_than_dino():
    # I = 2, L = 10: paper = mean_gg + mean_lg; dino = (sum_gg + sum_lg) / 22
    T = [_rand(3, 5, seed=50 + i) for i in range(2)]
    SG = [_rand(3, 5, seed=60 + i) for i in range(2)]
    SL = [_rand(3, 5, seed=70 + j) for j in range(10)]
    c = torch.zeros(5, dtype=DT)
    paper = dcglr_loss(T, SG, SL, c, 0.04, 0.1)
    dino = dcglr_loss(T, SG, SL, c, 0.04, 0.1, loss_avg="dino")
    assert float(paper["loss"]) == pytest.approx(float(paper["loss_g"] + paper["loss_l"]), rel=1e-12)
    expected = (2 * paper["loss_g"] + 20 * paper["loss_l"]) / 22
    assert float(dino["loss"]) == pytest.approx(float(expected), rel=1e-12)


def test_teacher_probs_and_cross_entropy_stop_gradient():
    t = _rand(4, 5, seed=1).requires_grad_()
    s = _rand(4, 5, seed=2).requires_grad_()
    c = _rand(5, seed=3)
    p = teacher_probs(t, c, 0.04)
    assert not p.requires_grad
    torch.testing.assert_close(p.sum(dim=1), torch.ones(4, dtype=DT))
    torch.testing.assert_close(p, torch.softmax((t.detach() - c) / 0.04, dim=1))
    loss = cross_entropy(p, s, 0.1)
    loss.backward()
    assert t.grad is None and s.grad is not None and s.grad.abs().sum() > 0
    # the gradient of H w.r.t. o_s is (softmax(o_s / tau_s) - p_t) / (tau_s B)
    torch.testing.assert_close(s.grad, (torch.softmax(s.detach() / 0.1, dim=1) - p) / (0.1 * 4))


def test_loss_rejects_bad_inputs():
    t = [torch.zeros(2, 3)]
    with pytest.raises(ValueError, match="I >= 2"):
        dcglr_loss(t, t, [], torch.zeros(3), 0.04, 0.1)
    two = [torch.zeros(2, 3)] * 2
    with pytest.raises(ValueError, match="loss_avg"):
        dcglr_loss(two, two, [], torch.zeros(3), 0.04, 0.1, loss_avg="sum")
    with pytest.raises(ValueError, match="student_local"):
        dcglr_loss(two, two, [torch.zeros(2, 4)], torch.zeros(3), 0.04, 0.1)
    with pytest.raises(ValueError, match="temperature"):
        teacher_probs(two[0], torch.zeros(3), 0.0)


# --------------------------------------------------------------------------------------------------
# Centre (Eq. 9) and teacher EMA (Eq. 13)
# --------------------------------------------------------------------------------------------------


def test_update_center_eq9():
    c = _rand(5, seed=4)
    out = _rand(6, 5, seed=5)
    new = update_center(c, out, 0.9)
    for k in range(5):
        mean = sum(float(out[b, k]) for b in range(6)) / 6
        assert float(new[k]) == pytest.approx(0.9 * float(c[k]) + 0.1 * mean, rel=1e-12)
    assert not torch.equal(new, c)                                   # the input is left as it is
    with pytest.raises(ValueError, match="momentum"):
        update_center(c, out, 1.0)


def test_module_center_update_uses_all_teacher_global_outputs():
    torch.manual_seed(3)
    model = DCGLR(tiny_cfg(center_momentum=0.8), 0, 2).train()
    seen = []
    model.teacher.register_forward_hook(lambda m, i, o: seen.append(o.detach()))
    model.center.fill_(0.25)
    out = model(_batch(), 0, 0.0)
    stacked = torch.cat(seen)
    assert stacked.shape == (2 * 6, 16)                              # I = 2 crops of 6 clouds
    torch.testing.assert_close(model.center, 0.8 * 0.25 + 0.2 * stacked.mean(dim=0))
    assert float(out["center_norm"]) == pytest.approx(0.25 * 4)       # the centre the loss used
    model.eval()
    before = model.center.clone()
    model(_batch(), 0, 0.0)                                           # eval mode: no update
    assert torch.equal(model.center, before)


def test_teacher_gets_no_gradient_and_student_does():
    torch.manual_seed(4)
    model = DCGLR(tiny_cfg(), 0, 2).train()
    model(_batch(), 0, 0.1)["loss"].backward()
    for name, p in model.teacher.named_parameters():
        assert not p.requires_grad and p.grad is None, name
    for name, p in model.student.named_parameters():
        if name.endswith("parametrizations.weight.original0"):           # the weight-norm gain, fixed to 1
            assert not p.requires_grad and p.grad is None and torch.equal(p, torch.ones_like(p))
        else:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
    groups = model.param_groups(0.04)
    ids = {id(p) for g in groups for p in g["params"]}
    assert not ids & {id(p) for p in model.teacher.parameters()}
    assert ids == {id(p) for p in model.student.parameters() if p.requires_grad}


def test_teacher_starts_as_copy_or_independent():
    torch.manual_seed(5)
    model = DCGLR(tiny_cfg(), 0, 1)
    for (n, t), s in zip(model.teacher.named_parameters(), model.student.parameters()):
        assert torch.equal(t, s), n
    torch.manual_seed(5)
    other = DCGLR(tiny_cfg(teacher_init="independent"), 0, 1)
    assert any(not torch.equal(t, s) for t, s in zip(other.teacher.parameters(), other.student.parameters()))


@pytest.mark.parametrize("step, total", [(1, 10), (4, 10), (10, 10)])
def test_after_step_is_the_scheduled_ema(step, total):
    torch.manual_seed(6)
    model = DCGLR(tiny_cfg(), 0, total_epochs=2).train()
    opt = torch.optim.SGD(model.param_groups(0.0), lr=0.5)
    out = model(_batch(), 0, 0.0)
    out["loss"].backward()
    opt.step()                                                         # student and teacher now differ
    old = {n: p.detach().clone() for n, p in model.teacher.named_parameters()}
    student = {n: p.detach().clone() for n, p in model.student.named_parameters()}
    old_bufs = {n: b.clone() for n, b in model.teacher.named_buffers()}
    model.after_step(step, total)
    lam = 1 - (1 - 0.996) * (math.cos(math.pi * step / total) + 1) / 2  # DINO's cosine per iteration
    assert model.momentum_at(step, total) == pytest.approx(lam, rel=1e-12, abs=1e-15)
    moved = 0
    for n, p in model.teacher.named_parameters():
        expected = lam * old[n] + (1 - lam) * student[n]
        torch.testing.assert_close(p, expected, rtol=1e-6, atol=1e-7)
        moved += int(not torch.equal(p, old[n]))
    assert moved > 0 if lam < 1 else moved >= 0
    if step == total:                                                  # lambda = 1 at the end: frozen teacher
        assert all(torch.equal(p, old[n]) for n, p in model.teacher.named_parameters())
    for n, b in model.teacher.named_buffers():                         # single process, teacher_bn='own'
        assert torch.equal(b, old_bufs[n]), n


def test_ema_update_function_copies_untrained_params_and_optionally_buffers():
    s = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    t = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    s[1].weight.requires_grad_(False)
    with torch.no_grad():
        s[1].running_mean.fill_(2.0)
        s[1].num_batches_tracked.fill_(7)
    old_w = t[0].weight.detach().clone()
    ema_update(t, s, 0.75)
    torch.testing.assert_close(t[0].weight, 0.75 * old_w + 0.25 * s[0].weight.detach())
    assert torch.equal(t[1].weight, s[1].weight)                       # not trained by the student: copied
    assert torch.equal(t[1].running_mean, torch.zeros(4))              # buffers untouched by default
    ema_update(t, s, 0.5, buffers=True)
    torch.testing.assert_close(t[1].running_mean, torch.full((4,), 1.0))
    assert int(t[1].num_batches_tracked) == 7
    with pytest.raises(ValueError, match="same parameters"):
        ema_update(torch.nn.Linear(3, 5), torch.nn.Linear(3, 4), 0.5)
    with pytest.raises(ValueError, match="momentum"):
        ema_update(t, s, 1.5)


def test_teacher_batchnorm_own_or_ema_of_student():
    batch = _batch()
    torch.manual_seed(7)
    own = DCGLR(tiny_cfg(head="mlp2"), 0, 1).train()
    before = {n: b.clone() for n, b in own.teacher.named_buffers()}
    own(batch, 0, 0.0)
    assert any(not torch.equal(b, before[n]) for n, b in own.teacher.named_buffers() if "running" in n)

    torch.manual_seed(7)
    ema = DCGLR(tiny_cfg(head="mlp2", teacher_bn="ema"), 0, 1).train()
    before = {n: b.clone() for n, b in ema.teacher.named_buffers()}
    ema(batch, 0, 0.0)
    for n, b in ema.teacher.named_buffers():                         # the teacher forward leaves them alone
        assert torch.equal(b, before[n]), n
    bns = [m for m in ema.teacher.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert bns and all(m.track_running_stats and m.training for m in bns)   # restored after the forward
    student = dict(ema.student.named_buffers())
    ema.after_step(1, 4)
    lam = ema.momentum_at(1, 4)
    for n, b in ema.teacher.named_buffers():
        if b.is_floating_point():
            torch.testing.assert_close(b, lam * before[n] + (1 - lam) * student[n])
        else:
            assert torch.equal(b, student[n])


def test_teacher_forward_has_no_stochastic_depth():
    torch.manual_seed(8)
    model = DCGLR(tiny_cfg(backbone={**TINY_VIT, "depth": 2, "drop_path": 0.5}), 0, 1).train()
    pts = _cloud(8, 64, seed=9)
    with torch.no_grad():
        with model._teacher_mode():
            a, b = model.teacher(pts), model.teacher(pts)
        assert torch.equal(a, b)
        assert not torch.equal(model.student(pts), model.student(pts))  # the student keeps its drop-path
    from pointtune.backbones.vit import DropPath

    assert all(m.training for m in model.teacher.modules() if isinstance(m, DropPath))


# --------------------------------------------------------------------------------------------------
# Schedules
# --------------------------------------------------------------------------------------------------


def test_teacher_temperature_warmup_follows_its_schedule():
    tau = {"start": 0.07, "warmup_start": 0.04, "warmup_epochs": 2}
    torch.manual_seed(10)
    model = DCGLR(tiny_cfg(teacher_temperature=tau), 0, total_epochs=4).train()
    for progress, expected in [(0.0, 0.04), (0.25, 0.055), (0.5, 0.07), (0.9, 0.07)]:
        out = model(_batch(B=4, N=64), int(progress * 4), progress)
        assert float(out["teacher_temperature"]) == pytest.approx(expected, rel=1e-6)
        assert float(out["teacher_momentum"]) == pytest.approx(
            1 - 0.004 * (math.cos(math.pi * progress) + 1) / 2, rel=1e-6)


def test_teacher_temperature_sharpens_the_loss_targets():
    torch.manual_seed(11)
    model = DCGLR(tiny_cfg(), 0, 1).train()
    batch = _batch()
    torch.manual_seed(1)
    sharp = model(batch, 0, 0.0)
    model.cfg.teacher_temperature.start = 1.0
    model.center.zero_()
    torch.manual_seed(1)
    soft = model(batch, 0, 0.0)
    assert float(sharp["teacher_entropy"]) < float(soft["teacher_entropy"])


# --------------------------------------------------------------------------------------------------
# Views (platform/views.py)
# --------------------------------------------------------------------------------------------------


def test_crop_count_rounds_half_up_and_clamps():
    assert [crop_count(r, 10) for r in (0.01, 0.15, 0.25, 0.5, 1.0)] == [1, 2, 3, 5, 10]
    assert crop_count(torch.tensor([0.25, 0.05, 1.0]), 10).tolist() == [3, 1, 10]


def test_resample_members_rule():
    members = torch.tensor([[True, False, True, True, False, True],
                            [False, True, False, False, False, False]])
    pos = resample_members(members, 3, _gen(0))
    assert pos.shape == (2, 3)
    assert len(set(pos[0].tolist())) == 3 and set(pos[0].tolist()) <= {0, 2, 3, 5}   # a subset, no repeat
    assert pos[1].tolist() == [1, 1, 1]
    pos = resample_members(members, 6, _gen(1))
    row = pos[0].tolist()
    assert sorted(row[:4]) == [0, 2, 3, 5] and row[4:] == row[:2]                      # all, then repeats
    with pytest.raises(ValueError, match="at least one member"):
        resample_members(torch.zeros(1, 3, dtype=torch.bool), 2)


def _knn_ball(cloud: torch.Tensor, seed: int, m: int) -> set[int]:
    d = ((cloud - cloud[seed]) ** 2).sum(-1)
    return set(d.argsort()[:m].tolist())


def test_knn_crop_is_the_knn_ball_of_a_point():
    cloud = _cloud(3, 80, seed=13).double()
    idx = knn_crop_indices(cloud, 25, generator=_gen(2))
    assert idx.shape == (3, 25)
    for b in range(3):
        members = set(idx[b].tolist())
        assert len(members) == 25
        # spatially contiguous: exactly the 25 nearest points of one of its own points (the seed)
        assert any(_knn_ball(cloud[b], s, 25) == members for s in members)
    seeds = torch.tensor([0, 5, 7])
    idx = knn_crop_indices(cloud, 10, generator=_gen(3), seeds=seeds)
    for b in range(3):
        assert set(idx[b].tolist()) == _knn_ball(cloud[b], int(seeds[b]), 10)
    # per-cloud counts resampled to a common size: members of each ball, repeats where the ball is smaller
    idx = knn_crop_indices(cloud, torch.tensor([5, 30, 12]), 12, _gen(4), seeds)
    for b, m in enumerate((5, 30, 12)):
        ball = _knn_ball(cloud[b], int(seeds[b]), m)
        assert set(idx[b].tolist()) <= ball and len(set(idx[b].tolist())) == min(m, 12)


def test_box_crop_points_lie_inside_a_box():
    cloud = torch.rand(4, 200, 3, generator=_gen(14)) * torch.tensor([2.0, 1.0, 0.5])
    ratios = torch.tensor([0.3, 0.5, 0.8, 1.0])
    for n in (10, 150):                                         # fewer / more than the box holds
        idx = box_crop_indices(cloud, ratios, n, _gen(5))
        view = torch.gather(cloud, 1, idx[..., None].expand(-1, -1, 3))
        extent = cloud.amax(1) - cloud.amin(1)
        span = view.amax(1) - view.amin(1)
        assert (span <= ratios[:, None] * extent + 1e-6).all()
    centres = torch.tensor([0, 1, 2, 3])
    idx = box_crop_indices(cloud, 0.5, 40, _gen(6), centres)
    for b in range(4):
        half = 0.5 * (cloud[b].amax(0) - cloud[b].amin(0)) / 2
        inside = {i for i in range(200) if ((cloud[b, i] - cloud[b, b]).abs() <= half).all()}
        got = set(idx[b].tolist())
        assert got <= inside and len(got) == min(40, len(inside))


def test_fps_views_start_at_random_points():
    cloud = _cloud(2, 64, seed=15)
    a, b = fps_view_indices(cloud, 32, _gen(7)), fps_view_indices(cloud, 32, _gen(8))
    assert a.shape == (2, 32) and all(len(set(r.tolist())) == 32 for r in a)
    assert not torch.equal(a[:, 0], b[:, 0])
    # each is a farthest point sampling from its first point
    from pointtune.ops import fps

    for r in range(2):
        start = int(a[r, 0])
        order = torch.cat([torch.tensor([start]), torch.tensor([i for i in range(64) if i != start])])
        ref = order[fps(cloud[r:r + 1, order], 32)[0]]
        assert torch.equal(ref, a[r])


def test_multi_crop_shared_ratio_sizes():
    N = 100
    spec = MultiCropSpec(n_local=4, n_multires=2, multires_fraction=0.3)
    cloud = _cloud(5, N, seed=16)
    sizes_g, sizes_l = set(), set()
    for seed in range(6):
        v = multi_crop(cloud, spec, _gen(seed))
        assert len(v.global_points) == 2 and len(v.local_points) == 6
        for pts, r in zip(v.global_points + v.local_points[:4], v.global_ratios + v.local_ratios[:4]):
            assert torch.equal(r, r[:1].expand_as(r))                   # one ratio per view index
            assert pts.shape == (5, crop_count(float(r[0]), N), 3)
        for pts in v.global_points:
            assert 70 <= pts.shape[1] <= 100
            sizes_g.add(pts.shape[1])
        for pts in v.local_points[:4]:
            assert 20 <= pts.shape[1] <= 50
            sizes_l.add(pts.shape[1])
        assert all(p.shape == (5, 30, 3) for p in v.local_points[4:])   # N * fraction
        for pts, idx in zip(v.global_points + v.local_points, v.global_index + v.local_index):
            torch.testing.assert_close(pts, torch.gather(cloud, 1, idx[..., None].expand(-1, -1, 3)))
            assert all(len(set(row.tolist())) == pts.shape[1] for row in idx)   # distinct points
    assert len(sizes_g) > 1 and len(sizes_l) > 1                        # the ratio is random


@pytest.mark.parametrize("mode", ["knn", "box"])
def test_multi_crop_fixed_counts_and_features(mode):
    spec = MultiCropSpec(n_local=3, n_multires=1, crop_mode=mode, view_points_mode="fixed", global_points=64,
                         local_points=24)
    cloud = _cloud(4, 80, seed=17)
    feats = cloud * 10.0
    v = multi_crop(cloud, spec, _gen(9), features=feats)
    assert [p.shape for p in v.global_points] == [(4, 64, 3)] * 2
    assert [p.shape for p in v.local_points] == [(4, 24, 3)] * 3 + [(4, 40, 3)]
    for pts, f in zip(v.global_points + v.local_points, v.global_features + v.local_features):
        torch.testing.assert_close(f, pts * 10.0)                      # features follow the points
    for r in v.global_ratios + v.local_ratios[:3]:
        assert len(set(r.tolist())) == 4                               # one ratio per cloud
    for r in v.global_ratios:
        assert ((r >= 0.7) & (r <= 1.0)).all()
    for r in v.local_ratios[:3]:
        assert ((r >= 0.2) & (r <= 0.5)).all()


def test_multi_crop_reproducible_and_renormalised():
    cloud = _cloud(3, 60, seed=18) * 3 + 5
    spec = MultiCropSpec(n_local=2, n_multires=1, renormalize=True)
    a, b = multi_crop(cloud, spec, _gen(3)), multi_crop(cloud, spec, _gen(3))
    for x, y in zip(a.global_points + a.local_points, b.global_points + b.local_points):
        assert torch.equal(x, y)
        torch.testing.assert_close(x.mean(dim=1), torch.zeros(3, 3), atol=1e-5, rtol=0)
        torch.testing.assert_close(x.norm(dim=-1).amax(dim=1), torch.ones(3))
    torch.testing.assert_close(renormalize(torch.ones(1, 1, 3)), torch.zeros(1, 1, 3))


def test_view_groups_depend_on_the_config_alone():
    assert view_groups(MultiCropSpec(n_local=3, n_multires=2)) == ([[0], [1]], [[0], [1], [2], [3, 4]])
    fixed = MultiCropSpec(n_local=3, n_multires=2, view_points_mode="fixed")
    assert view_groups(fixed) == ([[0, 1]], [[0, 1, 2], [3, 4]])
    assert view_groups(MultiCropSpec(n_local=0, n_multires=0, view_points_mode="fixed")) == ([[0, 1]], [])


def test_multi_crop_spec_validation():
    with pytest.raises(ValueError, match="local_ratio"):
        MultiCropSpec(local_ratio=(0.5, 0.2))
    with pytest.raises(ValueError, match="crop_mode"):
        MultiCropSpec(crop_mode="ball")
    with pytest.raises(ValueError, match=r"\(B, N, 3\)"):
        multi_crop(torch.zeros(2, 3), MultiCropSpec())


# --------------------------------------------------------------------------------------------------
# The module
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra",
    [{}, {"crop_mode": "box", "view_points_mode": "fixed", "global_points": 48, "local_points": 24},
     {"head": "mlp2", "loss_avg": "dino", "renormalize_crops": True, "n_multires": 0, "teacher_bn": "ema"},
     {"backbone": {"name": "pointnet", "emb_dims": 32}, "proj_layers": 1}],
)
def test_module_forward_backward_and_views_per_encoder_call(extra):
    torch.manual_seed(13)
    model = DCGLR(tiny_cfg(**extra), 0, 2).train()
    calls = []
    model.teacher.register_forward_hook(lambda m, i, o: calls.append(("t", tuple(i[0].shape))))
    model.student.register_forward_hook(lambda m, i, o: calls.append(("s", tuple(i[0].shape))))
    out = model(_batch(), 0, 0.3)
    assert set(out) == {"loss", "loss_g", "loss_l", "teacher_entropy", "kl", "center_norm", "teacher_momentum",
                        "teacher_temperature"}
    for key, value in out.items():
        assert value.dim() == 0 and torch.isfinite(value), key
    cfg = model.cfg
    n_local = cfg.n_local_crops + cfg.n_multires
    teacher_rows = sum(s[0] for k, s in calls if k == "t")
    student_rows = sum(s[0] for k, s in calls if k == "s")
    assert teacher_rows == 6 * cfg.n_global_crops and student_rows == 6 * (cfg.n_global_crops + n_local)
    if cfg.view_points_mode == "fixed":                        # equal-size views share one encoder call
        assert [s for k, s in calls if k == "t"] == [(12, 48, 3)]
        assert (12, 48, 3) in [s for k, s in calls if k == "s"] and (18, 24, 3) in [s for k, s in calls]
    out["loss"].backward()


def test_embed_uses_the_teacher_backbone():
    torch.manual_seed(14)
    model = DCGLR(tiny_cfg(), 0, 2).train()
    opt = torch.optim.AdamW(model.param_groups(0.0), lr=1e-2)
    for step in (1, 2):
        _train_step(model, opt, _batch(seed=step), step, 10)
    model.eval()
    probe = {"points": _cloud(3, 64, seed=19)}
    feats = model.embed(probe)
    assert feats.shape == (3, 32) and not feats.requires_grad
    torch.testing.assert_close(feats, model.teacher.backbone(probe["points"]))
    assert not torch.allclose(feats, model.student.backbone(probe["points"]), atol=1e-4)
    enc = model.encoder()
    assert enc is not model.teacher.backbone and all(p.requires_grad for p in enc.parameters())
    torch.testing.assert_close(enc.eval()(probe["points"]), feats)
    assert not any(p.requires_grad for p in model.teacher.parameters())
    model.cfg.features = "student"
    torch.testing.assert_close(model.embed(probe), model.student.backbone(probe["points"]))


def test_module_ignores_labels_and_is_reproducible():
    torch.manual_seed(15)
    model = DCGLR(tiny_cfg(), 0, 1).train()
    batch = _batch()
    center = model.center.clone()
    torch.manual_seed(99)
    a = model(batch, 0, 0.0)["loss"].detach()
    model.center.copy_(center)
    torch.manual_seed(99)
    b = model({"points": batch["points"]}, 0, 0.0)["loss"].detach()
    assert float(a) == float(b)
    c = model(batch, 0, 0.0)["loss"].detach()                          # new views
    assert float(c) != float(a)


def test_ddp_options_and_freeze_last_layer():
    model = DCGLR(tiny_cfg(), 0, 2)
    assert model.ddp_options() == {"find_unused_parameters": False, "forward_sync_buffers": False}
    torch.manual_seed(16)
    model = DCGLR(tiny_cfg(freeze_last_layer=1), 0, 2).train()
    assert model.ddp_options()["find_unused_parameters"] is True
    last = model.student.head.last_layer.parametrizations.weight.original1
    model(_batch(), 0, 0.0)["loss"].backward()                         # epoch 0: frozen
    assert last.grad is None and model.student.head.mlp[0].weight.grad is not None
    model.zero_grad(set_to_none=True)
    model(_batch(), 1, 0.5)["loss"].backward()                         # epoch 1: trained
    assert last.grad is not None and last.grad.abs().sum() > 0


def test_heads():
    head = DINOHead(10, 7, hidden=16, bottleneck=5, layers=3)
    rows = head.last_layer.weight
    torch.testing.assert_close(rows.norm(dim=1), torch.ones(7))        # gain fixed to 1: unit rows
    x = torch.randn(4, 10)
    out = head(x)
    assert out.shape == (4, 7) and (out.abs() <= 1 + 1e-6).all()       # cosines
    assert len([m for m in head.mlp if isinstance(m, torch.nn.Linear)]) == 3
    assert [m.out_features for m in DINOHead(10, 7, 16, 5, layers=1).mlp] == [5]
    mlp2 = MLP2Head(10, 7, hidden=12)
    assert mlp2(x).shape == (4, 7) and isinstance(mlp2.mlp[1], torch.nn.BatchNorm1d)
    with pytest.raises(ValueError, match="layers"):
        DINOHead(10, 7, layers=0)


def test_dgcnn_view_smaller_than_k_is_named():
    torch.manual_seed(17)
    model = DCGLR(tiny_cfg(backbone={"name": "dgcnn", "k": 20, "emb_dims": 32}), 0, 1).train()
    with pytest.raises(ValueError, match="method.backbone.k: a view of 1"):
        model(_batch(N=64), 0, 0.0)


TINY_RUN = {"method.backbone.dim": 32, "method.backbone.depth": 1, "method.backbone.heads": 2,
            "method.backbone.k": 8, "method.out_dim": 32, "method.proj_hidden": 32, "method.proj_bottleneck": 16,
            "method.n_local_crops": 2, "method.n_multires": 1, "data.num_points": 128,
            "data.synthetic_per_class": 8, "data.synthetic_num_classes": 3, "train.batch_size": 8,
            "train.eval_batch_size": 64, "optim.lr.warmup_epochs": 0, "protocol.c": 1.0}


def test_one_epoch_in_the_training_loop():
    from test_loop import Recorder

    from pointtune.config import build_config
    from pointtune.preflight import preflight
    from pointtune.train.loop import LoopConfig, run_loop

    exp = build_config("dcglr", overrides={**TINY_RUN, "train.epochs": 1})
    preflight(exp)
    session = Recorder()
    run_loop(LoopConfig(exp, "val/svm_acc", "max"), session)
    (metrics, _), = session.reports
    assert 0 <= metrics["val/svm_acc"] <= 1 and metrics["train/loss"] > 0
    assert {"train/loss_g", "train/loss_l", "train/teacher_entropy", "train/kl", "train/center_norm",
            "sched/method.teacher_momentum", "sched/method.teacher_temperature"} <= set(metrics)
    assert metrics["sched/method.teacher_momentum"] == pytest.approx(0.996)


@pytest.mark.slow
def test_one_epoch_run_through_the_cli(tmp_path):
    from helpers import pointtune

    out = tmp_path / "run"
    flags = [x for k, v in TINY_RUN.items() for x in ("--set", f"{k}={v}")]
    proc = pointtune("train", "dcglr", "--epochs", "1", "--no-progress", "--output", str(out), *flags)
    assert proc.returncode == 0, proc.stderr[-4000:]
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert 0 <= record["val/svm_acc"] <= 1 and record["train/loss"] > 0
    assert {"train/loss_g", "train/loss_l", "train/teacher_entropy", "sched/method.teacher_momentum"} <= set(record)


# --------------------------------------------------------------------------------------------------
# Search spaces
# --------------------------------------------------------------------------------------------------


def _sampled(space, seed: int, n: int) -> list[dict]:
    import optuna

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed), direction="maximize")
    configs = []
    for _ in range(n):
        trial = study.ask()
        fixed = space.define_by_run(trial)
        configs.append({**fixed, **trial.params})
        study.tell(trial, 0.0)
    return configs


def test_search_space_conditions_backbone_arguments_on_the_backbone():
    from conftest import REPO

    from pointtune.config import build_config
    from pointtune.search.space import load_search_space

    space = load_search_space(REPO / "search_spaces" / "dcglr.yaml")
    vit_args = {"method.backbone.dim", "method.backbone.depth", "method.backbone.heads", "method.backbone.k",
                "method.backbone.drop_path"}
    names = set()
    for overrides in _sampled(space, seed=0, n=30):
        name = overrides["method.backbone.name"]
        names.add(name)
        if name == "vit3d":
            assert vit_args <= set(overrides) and "method.backbone.emb_dims" not in overrides
        else:
            assert not vit_args & set(overrides) and "method.backbone.emb_dims" in overrides
        exp = build_config("dcglr", overrides=overrides)
        assert 0.99 <= exp.method.teacher_momentum.start <= 0.9995
        assert 0.02 <= exp.method.teacher_temperature.start <= 0.07
        assert exp.method.teacher_temperature.warmup_start == 0.04
    assert names == {"vit3d", "dgcnn", "pct"}


def test_quick_search_space_trial_trains_a_step():
    from conftest import REPO

    from pointtune.config import build_config
    from pointtune.search.space import load_search_space

    space = load_search_space(REPO / "search_spaces" / "dcglr_quick.yaml")
    (overrides,) = _sampled(space, seed=1, n=1)
    exp = build_config("dcglr", overrides=overrides)
    assert exp.method.backbone.name == "vit3d" and exp.data.num_points == 256
    torch.manual_seed(0)
    model = DCGLR(exp.method, 0, 2).train()
    out = model({"points": _cloud(4, 256, seed=20)}, 0, 0.0)
    out["loss"].backward()
    assert torch.isfinite(out["loss"])
