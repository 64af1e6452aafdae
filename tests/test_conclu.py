"""Tests of ConClu (methods/conclu.py): every loss term against a brute-force loop over the paper's equation,
Sinkhorn marginals, stop-gradients, the view augmentations and the module contract."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from pointtune.method import Task, get_method, method_names
from pointtune.methods.conclu import (
    ConClu,
    ConCluConfig,
    conclu_loss,
    contrasting_loss,
    half_space_crop,
    make_view,
    negative_cosine_distance,
    orthogonality_loss,
    resample_points,
    rotate_about_axis,
    sinkhorn_codes,
    column_marginal_error,
    soft_assignments,
    swapped_prediction_loss,
)

DT = torch.float64


def tiny_cfg(**kw) -> ConCluConfig:
    base = {"backbone": {"name": "pointnet", "emb_dims": 32}, "projector_hidden": 32, "projection_dim": 16,
            "predictor_hidden": 16, "num_prototypes": 4, "view_points": 32}
    return ConCluConfig.model_validate({**base, **kw})


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------------------------------
# Brute-force references, written from the equations one scalar at a time
# --------------------------------------------------------------------------------------------------


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    dot = sum(float(x) * float(y) for x, y in zip(a, b))
    return dot / (math.sqrt(sum(float(x) ** 2 for x in a)) * math.sqrt(sum(float(y) ** 2 for y in b)))


def _d_loop(p: torch.Tensor, z: torch.Tensor) -> float:
    """Eq. 2 as the squared distance of the normalised vectors."""
    pn, zn = math.sqrt(sum(float(x) ** 2 for x in p)), math.sqrt(sum(float(x) ** 2 for x in z))
    return sum((float(x) / pn - float(y) / zn) ** 2 for x, y in zip(p, z))


def _con_loop(qa, qb, za, zb) -> float:
    """Eq. 4 per sample, averaged over the batch."""
    B = qa.shape[0]
    return sum(_d_loop(qa[i], zb[i]) + _d_loop(qb[i], za[i]) for i in range(B)) / B


def _gamma_loop(q, C, tau) -> list[list[float]]:
    """Eq. 5."""
    out = []
    for i in range(q.shape[0]):
        e = [math.exp(_cos(C[j], q[i]) / tau) for j in range(C.shape[0])]
        out.append([x / sum(e) for x in e])
    return out


def _column_error_loop(S) -> float:
    """max_j |column sum of S (rows summing to 1/B) x J - 1|."""
    B, J = len(S), len(S[0])
    return max(abs(sum(S[i][j] for i in range(B)) * J - 1.0) for j in range(J))


def _sinkhorn_loop(z, C, eps, iters, tol=0.0) -> list[list[float]]:
    """Eqs. 6-7 by plain (not log-domain) Sinkhorn-Knopp: columns to 1/J, then rows to 1/B, stopping after
    ``iters`` iterations or once every column is within ``tol`` of 1/J; times B."""
    B, J = z.shape[0], C.shape[0]
    S = [[math.exp(-(2.0 - 2.0 * _cos(C[j], z[i])) / eps) for j in range(J)] for i in range(B)]
    for _ in range(iters):
        for j in range(J):
            col = sum(S[i][j] for i in range(B))
            for i in range(B):
                S[i][j] /= col * J
        for i in range(B):
            row = sum(S[i])
            S[i] = [x / (row * B) for x in S[i]]
        if tol > 0 and _column_error_loop(S) <= tol:
            break
    return [[x * B for x in row] for row in S]


def _swap_loop(lga, lgb, sa, sb, swap) -> float:
    """Eq. 9 with its minus sign (A5); cross-view (s^a with gamma^b) or same-view pairing."""
    B, J = len(lga), len(lga[0])
    tot = 0.0
    for i in range(B):
        for j in range(J):
            if swap:
                tot += sa[i][j] * lgb[i][j] + sb[i][j] * lga[i][j]
            else:
                tot += sa[i][j] * lga[i][j] + sb[i][j] * lgb[i][j]
    return -tot / B


def _orth_loop(C) -> float:
    """Eq. 8: entry-wise L1 of Gamma^T Gamma - I."""
    J = C.shape[0]
    return sum(abs(_cos(C[j], C[l]) - (1.0 if j == l else 0.0)) for j in range(J) for l in range(J))


def _rand(*shape, seed=0):
    return torch.randn(*shape, dtype=DT, generator=_gen(seed))


# --------------------------------------------------------------------------------------------------
# Registration and config
# --------------------------------------------------------------------------------------------------


def test_registered_and_contract_attributes():
    assert "conclu" in method_names()
    assert get_method("conclu") is ConClu
    assert ConClu.task is Task.PRETRAIN and ConClu.Config is ConCluConfig
    cfg = ConCluConfig()
    assert cfg.name == "conclu"
    assert cfg.backbone.name == "dgcnn" and cfg.backbone.kwargs() == {"k": 20, "emb_dims": 1024, "pooling": "max"}
    assert (cfg.num_prototypes, cfg.temperature, cfg.sinkhorn_epsilon) == (32, 0.01, 0.05)
    assert (cfg.sinkhorn_iterations, cfg.sinkhorn_tolerance) == (10, 0.01)  # A7: a cap and a stop, not SwAV's 3
    assert (cfg.lambda_con, cfg.lambda_clu, cfg.lambda_orth, cfg.orth_reduction) == (1.0, 1.0, 1.0, "sum")
    assert cfg.swap is True and cfg.code_feature == "z"
    assert (cfg.projector_hidden, cfg.projection_dim, cfg.predictor_hidden, cfg.leaky_slope) == (1024, 256, 512, 0.2)
    assert (cfg.crop_ratio, cfg.view_points, cfg.rotation_deg, cfg.up_axis) == (0.85, 1024, 5.0, 1)
    assert (cfg.jitter_sigma, cfg.jitter_clip, cfg.renormalize) == (0.01, 0.025, True)


def test_dgcnn_backbone_defaults_to_max_pooling():
    cfg = ConCluConfig.model_validate({"backbone": {"name": "dgcnn", "k": 10}})
    assert cfg.backbone.kwargs() == {"k": 10, "pooling": "max"}
    cfg = ConCluConfig.model_validate({"backbone": {"name": "dgcnn", "pooling": "maxavg"}})
    assert cfg.backbone.kwargs() == {"pooling": "maxavg"}                 # an explicit choice is kept
    cfg = ConCluConfig.model_validate({"backbone": {"name": "pointnet", "emb_dims": 1024}})
    assert cfg.backbone.kwargs() == {"emb_dims": 1024}


@pytest.mark.parametrize(
    "bad",
    [
        {"temperature": 0.0},
        {"temperature": -0.01},
        {"crop_ratio": 1.01},
        {"crop_ratio": 0.0},
        {"sinkhorn_epsilon": 0.0},
        {"sinkhorn_iterations": 0},
        {"sinkhorn_tolerance": -0.1},
        {"num_prototypes": 0},
        {"lambda_orth": -1.0},
        {"orth_reduction": "max"},
        {"code_feature": "h"},
        {"up_axis": 3},
        {"view_points": 0},
        {"jitter_sigma": -0.01},
        {"num_prototype": 32},                                   # unknown key (typo)
        {"name": "cedr"},
        {"backbone": {"name": "dgcnn", "k": 20}, "view_points": 16},   # k neighbours > points per view
    ],
)
def test_config_rejects_invalid(bad):
    with pytest.raises(ValidationError):
        ConCluConfig.model_validate(bad)


def test_build_config_applies_recipe():
    from pointtune.config import build_config

    exp = build_config("conclu", {}, {"method.num_prototypes": 16})
    assert exp.method.num_prototypes == 16
    lr = exp.optim.lr
    assert (exp.optim.name, lr.start, lr.shape, lr.step_epochs, lr.gamma, lr.unit) == \
        ("adamw", 1e-3, "step", 0.1, 0.7, "fraction")  # x0.7 every 20 epochs of the paper's 200
    assert [lr.at(e, 200) for e in (0, 19.9, 20, 45)] == pytest.approx([1e-3, 1e-3, 7e-4, 4.9e-4])
    assert [lr.at(e, 10) for e in (0, 0.99, 1, 2.25)] == pytest.approx([1e-3, 1e-3, 7e-4, 4.9e-4])
    assert exp.data.num_points == 2048
    aug = exp.data.augment
    assert (aug.scale_low, aug.scale_high, aug.translate, aug.jitter_sigma, aug.rotate_up) == (1, 1, 0, 0, False)


# --------------------------------------------------------------------------------------------------
# Contrasting: Eqs. 2-4
# --------------------------------------------------------------------------------------------------


def test_negative_cosine_distance_eq2():
    p, z = _rand(7, 5, seed=1), _rand(7, 5, seed=2)
    got = negative_cosine_distance(p, z)
    assert got.shape == (7,)
    for i in range(7):
        assert float(got[i]) == pytest.approx(_d_loop(p[i], z[i]), rel=1e-12)
        assert float(got[i]) == pytest.approx(2 - 2 * _cos(p[i], z[i]), rel=1e-12)
    assert torch.allclose(negative_cosine_distance(p, 3 * p), torch.zeros(7, dtype=DT), atol=1e-12)
    assert torch.allclose(negative_cosine_distance(p, -p), torch.full((7,), 4.0, dtype=DT))


def test_contrasting_loss_eq4():
    qa, qb, za, zb = (_rand(6, 5, seed=s) for s in range(4))
    got = contrasting_loss(qa, qb, za, zb)
    assert got.dim() == 0
    assert float(got) == pytest.approx(_con_loop(qa, qb, za, zb), rel=1e-12)
    # symmetric in the views, minimum 0 at q = z (any positive scale)
    assert float(contrasting_loss(qb, qa, zb, za)) == pytest.approx(float(got), rel=1e-12)
    assert float(contrasting_loss(2 * zb, 3 * za, za, zb)) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError):
        contrasting_loss(qa, qb, za, zb[:, :4])


def test_contrasting_loss_stop_gradient_eq3():
    qa, qb, za, zb = (_rand(6, 5, seed=s).requires_grad_() for s in range(4))
    contrasting_loss(qa, qb, za, zb).backward()
    assert qa.grad is not None and qb.grad is not None
    assert qa.grad.abs().sum() > 0 and qb.grad.abs().sum() > 0
    for z in (za, zb):
        assert z.grad is None or torch.count_nonzero(z.grad) == 0


def test_module_contrasting_term_sends_no_gradient_through_targets():
    """On the module's outputs, the contrasting term has no gradient w.r.t. the projections used as targets
    (the ``za``, ``zb`` slices reach it only through the stop-gradient); the projection branch still learns
    through the predictions ``q = q(z)``."""
    torch.manual_seed(3)
    model = ConClu(tiny_cfg(), 0, 1).double().train()
    va, vb = _rand(8, 32, 3, seed=5), _rand(8, 32, 3, seed=6)
    za, zb, qa, qb = model.forward_views(va, vb)
    loss = contrasting_loss(qa, qb, za, zb)
    grads = torch.autograd.grad(loss, [za, zb], retain_graph=True, allow_unused=True)
    for g in grads:
        assert g is None or torch.count_nonzero(g) == 0
    # the check has teeth: the same distance without the stop-gradient does reach the targets
    no_sg = (2 - 2 * F.cosine_similarity(qa, zb, dim=1)).mean()
    assert torch.autograd.grad(no_sg, zb, retain_graph=True)[0].abs().sum() > 0
    # and the projector is trained through the predictions
    g_proj = torch.autograd.grad(loss, list(model.projector.parameters()), allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in g_proj)


# --------------------------------------------------------------------------------------------------
# Clustering: Eqs. 5-9
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tau", [0.01, 0.5])
def test_soft_assignments_eq5(tau):
    q, C = _rand(6, 5, seed=7), _rand(4, 5, seed=8)
    log_gamma = soft_assignments(q, C, tau)
    assert log_gamma.shape == (6, 4)
    ref = _gamma_loop(q, C, tau)
    for i in range(6):
        for j in range(4):
            assert float(log_gamma[i, j].exp()) == pytest.approx(ref[i][j], rel=1e-9, abs=1e-300)
    torch.testing.assert_close(log_gamma.exp().sum(1), torch.ones(6, dtype=DT))
    with pytest.raises(ValueError):
        soft_assignments(q, C, 0.0)
    with pytest.raises(ValueError):
        soft_assignments(q, C[:, :3], tau)


def test_soft_assignments_gradients_reach_q_and_prototypes():
    q, C = _rand(6, 5, seed=7).requires_grad_(), _rand(4, 5, seed=8).requires_grad_()
    (-soft_assignments(q, C, 0.1)[:, 0].sum()).backward()
    assert q.grad.abs().sum() > 0 and C.grad.abs().sum() > 0


def test_sinkhorn_marginals_converge():
    z, C = _rand(8, 5, seed=9), _rand(4, 5, seed=10)
    codes = sinkhorn_codes(z, C, epsilon=0.5, iterations=50)
    assert codes.shape == (8, 4) and (codes >= 0).all()
    torch.testing.assert_close(codes.sum(1), torch.ones(8, dtype=DT), rtol=0, atol=1e-12)
    torch.testing.assert_close(codes.sum(0), torch.full((4,), 8 / 4, dtype=DT), rtol=0, atol=1e-8)


@pytest.mark.parametrize("iters", [1, 2, 3])
def test_sinkhorn_last_normalised_marginal_is_exact(iters):
    z, C = _rand(7, 5, seed=11), _rand(4, 5, seed=12)
    codes = sinkhorn_codes(z, C, epsilon=0.05, iterations=iters)
    torch.testing.assert_close(codes.sum(1), torch.ones(7, dtype=DT), rtol=0, atol=1e-12)


@pytest.mark.parametrize("eps,iters,tol", [(0.5, 3, 0.0), (0.2, 10, 0.0), (0.2, 50, 0.01), (0.05, 6, 0.05)])
def test_sinkhorn_matches_plain_domain_loop(eps, iters, tol):
    z, C = _rand(6, 5, seed=13), _rand(4, 5, seed=14)
    got = sinkhorn_codes(z, C, eps, iters, tol)
    want = torch.tensor(_sinkhorn_loop(z, C, eps, iters, tol), dtype=DT)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    assert float(column_marginal_error(got)) == pytest.approx(_column_error_loop((want / 6).tolist()), abs=1e-12)


def test_sinkhorn_stops_at_its_tolerance_and_beats_three_iterations():
    """Issue 20 §3: on projections at batch 64 and 32 prototypes with the paper's epsilon, SwAV's 3 iterations
    leave a column several per cent off B/J; the defaults (tolerance 1 %, at most 10) stop as soon as every
    column is within 1 %, or give the cap's result, and are closer in every case."""
    gen = torch.Generator().manual_seed(0)
    errors3, errors = [], []
    for _ in range(8):
        z, C = torch.randn(64, 16, generator=gen, dtype=DT), torch.randn(32, 16, generator=gen, dtype=DT)
        three = sinkhorn_codes(z, C, 0.05, 3)
        tol = sinkhorn_codes(z, C, 0.05, 10, 0.01)
        errors3.append(float(column_marginal_error(three)))
        errors.append(float(column_marginal_error(tol)))
        stopped = next((k for k in range(1, 11) if column_marginal_error(sinkhorn_codes(z, C, 0.05, k)) <= 0.01), 10)
        torch.testing.assert_close(tol, sinkhorn_codes(z, C, 0.05, stopped), rtol=0, atol=0)
    assert sorted(errors3)[4] > 0.02 and all(e <= e3 for e, e3 in zip(errors, errors3)), (errors3, errors)


def test_sinkhorn_no_gradient_and_prefers_nearest_prototype():
    C = _rand(4, 5, seed=15).requires_grad_()
    z = (C.detach().repeat(2, 1) + 1e-3 * _rand(8, 5, seed=16)).requires_grad_()   # two samples per prototype
    codes = sinkhorn_codes(z, C, epsilon=0.05, iterations=50)
    assert not codes.requires_grad and codes.grad_fn is None
    assert torch.equal(codes.argmax(1), torch.arange(4).repeat(2))
    with pytest.raises(ValueError):
        sinkhorn_codes(z, C, epsilon=0.0)
    with pytest.raises(ValueError):
        sinkhorn_codes(z, C, iterations=0)
    with pytest.raises(ValueError, match="tolerance must be >= 0"):
        sinkhorn_codes(z, C, tolerance=-1.0)


def test_sinkhorn_equipartition_breaks_collapse():
    """Identical features (a collapsed batch) still get codes spread evenly over the prototypes."""
    C = _rand(4, 5, seed=17)
    z = _rand(1, 5, seed=18).repeat(8, 1)
    codes = sinkhorn_codes(z, C, epsilon=0.05, iterations=3)
    torch.testing.assert_close(codes.sum(0), torch.full((4,), 2.0, dtype=DT), rtol=0, atol=1e-9)


@pytest.mark.parametrize("swap", [True, False])
def test_swapped_prediction_loss_eq9(swap):
    lga = F.log_softmax(_rand(6, 4, seed=19) * 3, dim=1)
    lgb = F.log_softmax(_rand(6, 4, seed=20) * 3, dim=1)
    sa = F.softmax(_rand(6, 4, seed=21), dim=1)
    sb = F.softmax(_rand(6, 4, seed=22), dim=1)
    got = swapped_prediction_loss(lga, lgb, sa, sb, swap)
    assert float(got) == pytest.approx(_swap_loop(lga.tolist(), lgb.tolist(), sa.tolist(), sb.tolist(), swap),
                                       rel=1e-12)
    assert float(got) > 0                                      # a cross-entropy: the minus sign is there (A5)
    with pytest.raises(ValueError):
        swapped_prediction_loss(lga, lgb, sa[:, :3], sb, swap)


def test_swapped_prediction_codes_are_constants():
    lga = F.log_softmax(_rand(6, 4, seed=23), dim=1).requires_grad_()
    sa = F.softmax(_rand(6, 4, seed=24), dim=1).requires_grad_()
    swapped_prediction_loss(lga, lga.detach(), sa, sa.detach()).backward()
    assert lga.grad.abs().sum() > 0 and sa.grad is None


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_orthogonality_loss_eq8(reduction):
    C = _rand(4, 5, seed=25)
    got = orthogonality_loss(C, reduction)
    want = _orth_loop(C) / (1 if reduction == "sum" else 16)
    assert float(got) == pytest.approx(want, rel=1e-12)
    # orthogonal prototypes (any scale) cost nothing
    assert float(orthogonality_loss(torch.eye(4, 5, dtype=DT) * 3.0, reduction)) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError):
        orthogonality_loss(C, "max")


# --------------------------------------------------------------------------------------------------
# Total: Eq. 10
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"lambda_con": 0.7, "lambda_clu": 1.3, "lambda_orth": 0.05, "temperature": 0.2, "sinkhorn_epsilon": 0.5},
        {"lambda_con": 2.0, "lambda_clu": 0.5, "lambda_orth": 3.0, "swap": False, "orth_reduction": "mean",
         "sinkhorn_epsilon": 0.3, "sinkhorn_iterations": 5},
        {"lambda_con": 0.3, "lambda_clu": 2.0, "lambda_orth": 0.1, "code_feature": "q", "sinkhorn_epsilon": 0.4},
    ],
)
def test_conclu_loss_eq10_matches_loops(extra):
    cfg = tiny_cfg(**extra)
    qa, qb, za, zb = (_rand(8, 5, seed=30 + s) for s in range(4))
    C = _rand(4, 5, seed=40)
    out = conclu_loss(qa, qb, za, zb, C, cfg)
    for key in ("loss", "con", "swap", "orth", "proto_usage", "code_entropy", "sinkhorn_marginal_err"):
        assert out[key].dim() == 0 and torch.isfinite(out[key]), key
    con = _con_loop(qa, qb, za, zb)
    lga = [[math.log(x) for x in row] for row in _gamma_loop(qa, C, cfg.temperature)]
    lgb = [[math.log(x) for x in row] for row in _gamma_loop(qb, C, cfg.temperature)]
    src_a, src_b = (za, zb) if cfg.code_feature == "z" else (qa, qb)
    solve = (cfg.sinkhorn_epsilon, cfg.sinkhorn_iterations, cfg.sinkhorn_tolerance)
    sa, sb = _sinkhorn_loop(src_a, C, *solve), _sinkhorn_loop(src_b, C, *solve)
    swap = _swap_loop(lga, lgb, sa, sb, cfg.swap)
    err = max(_column_error_loop([[x / 8 for x in row] for row in codes]) for codes in (sa, sb))
    assert float(out["sinkhorn_marginal_err"]) == pytest.approx(err, rel=1e-6, abs=1e-12)
    orth = _orth_loop(C) / (1 if cfg.orth_reduction == "sum" else 16)
    assert float(out["con"]) == pytest.approx(con, rel=1e-9)
    assert float(out["swap"]) == pytest.approx(swap, rel=1e-7)
    assert float(out["orth"]) == pytest.approx(orth, rel=1e-9)
    total = cfg.lambda_con * con + cfg.lambda_clu * swap + cfg.lambda_orth * orth
    assert float(out["loss"]) == pytest.approx(total, rel=1e-7)
    assert 0 < float(out["proto_usage"]) <= 1
    assert 0 <= float(out["code_entropy"]) <= math.log(4) + 1e-9


def test_conclu_loss_diagnostics():
    cfg = tiny_cfg(sinkhorn_epsilon=100.0)                          # huge epsilon: uniform codes
    C = torch.eye(4, 5, dtype=DT)
    q = C.repeat(2, 1)                                              # every prototype is some sample's argmax
    out = conclu_loss(q, q, q, q, C, cfg)
    assert float(out["proto_usage"]) == 1.0
    assert float(out["code_entropy"]) == pytest.approx(math.log(4), rel=1e-3)
    out = conclu_loss(q[:1].repeat(8, 1), q[:1].repeat(8, 1), q, q, C, cfg)   # all samples pick prototype 0
    assert float(out["proto_usage"]) == 0.25


# --------------------------------------------------------------------------------------------------
# Views (section 3.1)
# --------------------------------------------------------------------------------------------------


def test_half_space_crop_keeps_one_side_of_a_plane():
    pts = _rand(5, 64, 3, seed=50)
    s = _rand(5, 3, seed=51)
    kept = half_space_crop(pts, 0.85, direction=s)
    n_keep = round(0.85 * 64)
    assert kept.shape == (5, n_keep, 3)
    s = F.normalize(s, dim=1)
    for b in range(5):
        proj_all = pts[b] @ s[b]
        proj_kept = kept[b] @ s[b]
        dropped = torch.tensor([not any(torch.equal(p, k) for k in kept[b]) for p in pts[b]])
        assert int(dropped.sum()) == 64 - n_keep
        assert proj_kept.min() > proj_all[dropped].max()           # a plane separates kept from dropped


def test_half_space_crop_random_direction_and_edge_ratios():
    pts = _rand(4, 40, 3, seed=52)
    kept = half_space_crop(pts, 0.5, _gen(3))
    assert kept.shape == (4, 20, 3)
    # the random direction is the first draw of the generator: replaying it gives the same crop
    s = torch.randn(4, 3, generator=_gen(3), dtype=DT)
    torch.testing.assert_close(kept, half_space_crop(pts, 0.5, direction=s))
    torch.testing.assert_close(half_space_crop(pts, 1.0, _gen(0)), pts)    # ratio 1 keeps everything, in order
    assert half_space_crop(pts, 1e-3, _gen(0)).shape == (4, 1, 3)
    with pytest.raises(ValueError):
        half_space_crop(pts, 1.5)
    with pytest.raises(ValueError):
        half_space_crop(pts[0], 0.5)


def test_resample_points():
    pts = _rand(3, 20, 3, seed=53)
    for method in ("random", "fps"):
        out = resample_points(pts, 12, method, _gen(1))
        assert out.shape == (3, 12, 3)
        for b in range(3):                                          # distinct points of the input
            rows = {tuple(r) for r in out[b].tolist()}
            assert len(rows) == 12 and rows <= {tuple(r) for r in pts[b].tolist()}
    padded = resample_points(pts, 30, "random", _gen(2))            # more than N: every point + repeats
    assert padded.shape == (3, 30, 3)
    for b in range(3):
        assert {tuple(r) for r in padded[b].tolist()} == {tuple(r) for r in pts[b].tolist()}
    with pytest.raises(ValueError):
        resample_points(pts, 5, "grid")


def test_rotate_about_axis_matches_rotation_matrices():
    pts, ang = _rand(3, 10, 3, seed=54), _rand(3, seed=55)
    for axis in (0, 1, 2):
        out = rotate_about_axis(pts, ang, axis)
        for b in range(3):
            c, s = math.cos(float(ang[b])), math.sin(float(ang[b]))
            R = {0: [[1, 0, 0], [0, c, -s], [0, s, c]],
                 1: [[c, 0, s], [0, 1, 0], [-s, 0, c]],
                 2: [[c, -s, 0], [s, c, 0], [0, 0, 1]]}[axis]
            torch.testing.assert_close(out[b], pts[b] @ torch.tensor(R, dtype=DT).t())
        torch.testing.assert_close(out[..., axis], pts[..., axis])
        torch.testing.assert_close(out.norm(dim=-1), pts.norm(dim=-1))


def _sorted_rows(x: torch.Tensor) -> torch.Tensor:
    """Rows of every cloud in a canonical order (to compare clouds up to a permutation)."""
    out = []
    for cloud in x:
        out.append(torch.tensor(sorted(cloud.tolist())))
    return torch.stack(out)


def test_make_view_rotation_preserves_up_coordinate_and_norms():
    pts = _rand(4, 48, 3, seed=56)
    cfg = tiny_cfg(crop_ratio=1.0, view_points=48, jitter_sigma=0.0, renormalize=False, rotation_deg=5.0)
    view = make_view(pts, cfg, _gen(4))
    assert view.shape == (4, 48, 3) and view.dtype == DT
    torch.testing.assert_close(view[..., 1].sort(dim=1).values, pts[..., 1].sort(dim=1).values)
    torch.testing.assert_close(view.norm(dim=-1).sort(dim=1).values, pts.norm(dim=-1).sort(dim=1).values)
    assert not torch.allclose(_sorted_rows(view), _sorted_rows(pts))      # it did rotate
    # the rotation angle stays within +-5 degrees: compare the azimuth of matched points (same up, same norm)
    for b in range(4):
        for p in view[b]:
            match = pts[b][torch.argmin((pts[b][:, 1] - p[1]).abs() + (pts[b].norm(dim=1) - p.norm()).abs())]
            d = math.atan2(float(p[0]), float(p[2])) - math.atan2(float(match[0]), float(match[2]))
            d = (d + math.pi) % (2 * math.pi) - math.pi
            assert abs(d) <= math.radians(5.0) + 1e-9
    still = make_view(pts, cfg.model_copy(update={"rotation_deg": 0.0}), _gen(4))
    torch.testing.assert_close(_sorted_rows(still), _sorted_rows(pts))     # only a permutation


def test_make_view_jitter_is_clipped():
    point = torch.tensor([0.3, -0.2, 0.5], dtype=DT)
    pts = point.repeat(4, 64, 1)
    cfg = tiny_cfg(crop_ratio=1.0, view_points=64, rotation_deg=0.0, renormalize=False,
                   jitter_sigma=0.05, jitter_clip=0.025)
    noise = make_view(pts, cfg, _gen(5)) - point
    assert noise.abs().max() <= 0.025 + 1e-12
    assert noise.abs().max() == pytest.approx(0.025)                       # the clip is active at sigma 0.05
    assert noise.std() > 0.01


def test_make_view_renormalised_in_unit_sphere_and_reproducible():
    pts = 3.0 * _rand(6, 64, 3, seed=57) + 2.0
    cfg = tiny_cfg(view_points=40)
    view = make_view(pts, cfg, _gen(6))
    assert view.shape == (6, 40, 3)
    norms = view.norm(dim=-1)
    assert (norms <= 1 + 1e-12).all()
    torch.testing.assert_close(norms.amax(dim=1), torch.ones(6, dtype=DT))
    torch.testing.assert_close(view.mean(dim=1), torch.zeros(6, 3, dtype=DT))
    torch.testing.assert_close(make_view(pts, cfg, _gen(6)), view)          # same stream, same view
    assert not torch.allclose(make_view(pts, cfg, _gen(7)), view)
    # fewer kept points than view_points: padded by repeats; fps sampling
    assert make_view(pts, tiny_cfg(view_points=60), _gen(8)).shape == (6, 60, 3)
    assert make_view(pts, tiny_cfg(view_points=20, view_sampling="fps"), _gen(9)).shape == (6, 20, 3)
    with pytest.raises(ValueError):
        make_view(pts[..., :2], cfg, _gen(6))


# --------------------------------------------------------------------------------------------------
# The module
# --------------------------------------------------------------------------------------------------


def _batch(B: int = 8, N: int = 64) -> dict[str, torch.Tensor]:
    return {"points": torch.randn(B, N, 3, generator=_gen(12)), "label": torch.zeros(B, dtype=torch.long)}


@pytest.mark.parametrize("extra", [{}, {"swap": False, "code_feature": "q", "orth_reduction": "mean"}])
def test_module_forward_backward(extra):
    torch.manual_seed(13)
    model = ConClu(tiny_cfg(**extra), num_classes=0, total_epochs=2)
    model.train()
    batch = _batch()
    out = model(batch, epoch=0, progress=0.3)
    assert set(out) == {"loss", "con", "swap", "orth", "proto_usage", "code_entropy", "sinkhorn_marginal_err"}  # no logits
    for key, value in out.items():
        assert value.dim() == 0 and torch.isfinite(value), key
    out["loss"].backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    for part in (model.backbone, model.projector, model.predictor):
        assert sum(float(p.grad.abs().sum()) for p in part.parameters()) > 0
    assert model.prototypes.grad.abs().sum() > 0
    model.eval()
    feats = model.embed(batch)
    assert feats.shape == (8, 32) and not feats.requires_grad
    torch.testing.assert_close(feats, model.backbone(batch["points"]))
    assert model.encoder() is model.backbone


def test_module_shapes_and_single_encoder_forward():
    torch.manual_seed(14)
    model = ConClu(tiny_cfg(), 0, 1)
    assert model.prototypes.shape == (4, 16)
    calls = []
    model.backbone.register_forward_hook(lambda mod, inp, out: calls.append(inp[0].shape))
    model(_batch(), 0, 0.0)
    assert calls == [torch.Size([16, 32, 3])]                      # both views of 8 clouds, view_points 32
    za, zb, qa, qb = model.forward_views(torch.randn(8, 32, 3), torch.randn(8, 32, 3))
    assert za.shape == zb.shape == qa.shape == qb.shape == (8, 16)


def test_module_ignores_labels_and_is_reproducible():
    torch.manual_seed(15)
    model = ConClu(tiny_cfg(), 0, 1)
    batch = _batch()
    torch.manual_seed(99)
    a = model(batch, 0, 0.0)["loss"].detach()
    torch.manual_seed(99)
    b = model({"points": batch["points"]}, 0, 0.0)["loss"].detach()
    assert float(a) == float(b)
    c = model(batch, 0, 0.0)["loss"].detach()                         # new views
    assert float(c) != float(a)


def test_ddp_options_and_single_process_after_step():
    model = ConClu(tiny_cfg(), 0, 1)
    # every parameter is used at every step; BatchNorm statistics are averaged by after_step, not broadcast
    assert model.ddp_options() == {"find_unused_parameters": False, "forward_sync_buffers": False}
    model(_batch(), 0, 0.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.after_step(1, 10)                                        # single process: a no-op
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_loss_weights_switch_terms_off():
    torch.manual_seed(16)
    model = ConClu(tiny_cfg(lambda_con=0.0, lambda_clu=0.0, lambda_orth=1.0), 0, 1)
    out = model(_batch(), 0, 0.0)
    assert float(out["loss"].detach()) == pytest.approx(float(out["orth"]), rel=1e-6)
    out["loss"].backward()
    assert model.prototypes.grad.abs().sum() > 0
    for p in model.backbone.parameters():                          # only the prototypes feel L_orth
        assert p.grad is None or torch.count_nonzero(p.grad) == 0


# --------------------------------------------------------------------------------------------------
# DDP: Sinkhorn over the projections of every worker (A14)
# --------------------------------------------------------------------------------------------------


def _ddp_worker(rank: int, world: int, init_file: str, result_file: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        qa, qb, za, zb = (_rand(8, 5, seed=60 + s) for s in range(4))
        C = _rand(4, 5, seed=70)
        rows = slice(0, 3) if rank == 0 else slice(3, 8)                # unequal shares of the batch
        cfg = tiny_cfg(sinkhorn_epsilon=0.3, sinkhorn_iterations=5)
        out = conclu_loss(qa[rows], qb[rows], za[rows], zb[rows], C, cfg, gather=True)
        torch.save({"swap": out["swap"], "n": rows.stop - rows.start}, f"{result_file}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # spawns a 2-process gloo group
def test_sinkhorn_gathers_projections_across_workers(tmp_path):
    import torch.multiprocessing as mp

    init_file, result_file = str(tmp_path / "init"), str(tmp_path / "result")
    mp.spawn(_ddp_worker, args=(2, init_file, result_file), nprocs=2, join=True)
    parts = [torch.load(f"{result_file}.{r}") for r in range(2)]
    qa, qb, za, zb = (_rand(8, 5, seed=60 + s) for s in range(4))
    C = _rand(4, 5, seed=70)
    cfg = tiny_cfg(sinkhorn_epsilon=0.3, sinkhorn_iterations=5)
    # codes over the whole batch of 8; each worker's cross-entropy is the mean over its own rows
    lga, lgb = soft_assignments(qa, C, cfg.temperature), soft_assignments(qb, C, cfg.temperature)
    sa, sb = sinkhorn_codes(za, C, 0.3, 5), sinkhorn_codes(zb, C, 0.3, 5)
    for part, rows in zip(parts, (slice(0, 3), slice(3, 8))):
        want = swapped_prediction_loss(lga[rows], lgb[rows], sa[rows], sb[rows])
        assert float(part["swap"]) == pytest.approx(float(want), rel=1e-10)
    # without the gather, a worker's codes would differ (equipartition over its own rows only)
    alone = conclu_loss(qa[:3], qb[:3], za[:3], zb[:3], C, cfg)
    assert float(alone["swap"]) != pytest.approx(float(parts[0]["swap"]), rel=1e-6)

