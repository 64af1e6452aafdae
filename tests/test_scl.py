"""Tests of SCL (methods/scl.py): Eqs. 4, 5 and 7 against brute-force loops over the paper's formulas, the
patches and their dilated positives on hand-made clouds, the hard-negative interval at its edges (absolute and
quantile), the empty-set fallback, the annealing staircase at chosen epochs, the frozen stage-1 network in
stage 2, the config's one-line errors, the search spaces and the stage-1 plan (through the CLI: test_scl_runs)."""

from __future__ import annotations

import math

import pytest
import torch

from pointtune.config import ConfigError, build_config
from pointtune.method import Task, get_method, method_names
from pointtune.methods.scl import (
    SCL,
    SCLConfig,
    SCLEncoder,
    ProjectionHead,
    dissimilar_indices,
    extra_positive_mask,
    hard_negative_mask,
    info_nce,
    negative_thresholds,
    patch_indices,
    random_rotation,
    rotate_clouds,
    sample_centres,
    select_negatives,
    self_similarity,
    similarity_loss,
    standalone_patches,
)
from pointtune.ops import fps
from pointtune.train.checkpoint import CheckpointNotFoundError, save_state
from pointtune.train.sources import load_sources

DT = torch.float64
# Small enough for a forward in a few tens of milliseconds on one CPU core.
TINY = {"stage": 1, "num_patches": 8, "patch_k": 6, "edgeconv_k": 8, "e1_widths": [16, 16], "sim_dim": 8,
        "e2_widths": [16, 16, 16], "point_dim": 24}


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _batch(b: int = 4, n: int = 96, seed: int = 0) -> dict[str, torch.Tensor]:
    return {"points": torch.randn(b, n, 3, generator=_gen(seed)), "label": torch.zeros(b, dtype=torch.long)}


def _one_line(err: BaseException, *fragments: str) -> str:
    msg = str(err)
    assert "\n" not in msg, msg
    for fragment in fragments:
        assert fragment in msg, msg
    return msg


def _stage1_checkpoint(directory, epochs: int = 1, **method) -> tuple[SCL, str]:
    """A stage-1 SCL (random weights) saved as a pointtune checkpoint in ``directory``."""
    overrides = {f"method.{k}": v for k, v in {**TINY, **method}.items()}
    exp = build_config("scl", overrides={**overrides, "train.epochs": epochs})
    torch.manual_seed(0)
    model = SCL(exp.method, 0, epochs)
    model.train()
    model(_batch(), 0, 0.0)                         # non-trivial BatchNorm statistics
    save_state(directory, {"model": model.state_dict(), "experiment": exp.to_dict(), "class_names": ["a", "b"],
                           "metrics": {"epoch": 1}})
    return model.eval(), str(directory)


def _stage2(stage1_from: str, total_epochs: int = 10, **kw) -> SCL:
    """A stage-2 SCL warm-started from the stage-1 checkpoint ``stage1_from``, as a fresh run starts it."""
    cfg = SCLConfig.model_validate({**TINY, "stage": 2, "stage1_from": stage1_from, **kw})
    model = SCL(cfg, 0, total_epochs)
    model.warm_start(load_sources(model))
    return model


# --------------------------------------------------------------------------------------------------
# Registration and contract
# --------------------------------------------------------------------------------------------------


def test_registered_as_a_pretraining_method():
    assert "scl" in method_names() and get_method("scl") is SCL and SCL.task is Task.PRETRAIN
    exp = build_config("scl")
    assert exp.method.stage == 2 and exp.optim.name == "adamw" and exp.optim.weight_decay.start == 0
    lr = exp.optim.lr
    assert (lr.start, lr.shape, lr.step_epochs * 512, lr.gamma, lr.unit) == (2e-3, "step", 50, 0.5, "fraction")
    assert [lr.at(e, 512) for e in (49, 50, 100)] == pytest.approx([2e-3, 1e-3, 5e-4])
    assert exp.data.num_points == 2048 and exp.data.augment.translate == 0


def test_stage1_forward_embed_and_encoder():
    torch.manual_seed(0)
    model = SCL(SCLConfig.model_validate(TINY), 0, 4)
    batch = _batch()
    out = model(batch, 0, 0.0)
    assert set(out) == {"loss", "bce_similar", "bce_dissimilar", "sim_acc", "s_mean"}
    assert all(v.dim() == 0 for v in out.values()) and 0 <= out["s_mean"] <= 1
    assert torch.allclose(out["loss"], (out["bce_similar"] + out["bce_dissimilar"]) / 2)   # A = B
    out["loss"].backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    assert model.embed(batch).shape == (4, 8) and model.embed_points(batch).shape == (4, 96, 8)
    assert isinstance(model.encoder(), SCLEncoder) and model.encoder() is model.e1
    assert model.ddp_options() == {"find_unused_parameters": False, "forward_sync_buffers": False}


@pytest.mark.parametrize("stage", [1, 2])
def test_a_float64_model_trains_in_float64(stage):
    """Issue 20 §2: stage 1 cast its patch features to float32 before the float64 discriminator and failed;
    stage 2 scored its loss in float32."""
    torch.manual_seed(0)
    model = SCL(SCLConfig.model_validate({**TINY, "stage": stage, "hard_negatives": False}), 0, 4).double()
    batch = {**_batch(), "points": _batch()["points"].double()}
    out = model(batch, 0, 0.0)
    assert out["loss"].dtype == torch.float64 and torch.isfinite(out["loss"])
    out["loss"].backward()


def test_encoder_pools_point_features_by_their_mean():
    enc = SCLEncoder([8, 8, 8], 12, k=5, concat=True).eval()
    xyz = torch.randn(2, 40, 3, generator=_gen(1))
    out = enc.forward_features(xyz)
    assert out.point_features.shape == (2, 40, 12) and enc.fc[0].in_channels == 24   # concatenated
    assert torch.allclose(out.global_feature, out.point_features.mean(dim=1))
    assert torch.equal(enc(xyz), out.global_feature)
    assert SCLEncoder([8, 16], 4, k=5).fc[0].in_channels == 16                    # E1: last layer only
    with pytest.raises(ValueError, match="method.edgeconv_k"):
        enc(torch.randn(1, 4, 3))


# --------------------------------------------------------------------------------------------------
# Eqs. 4, 5, 7 against the formulas
# --------------------------------------------------------------------------------------------------


def test_eq4_similarity_loss_brute_force():
    pos = torch.randn(3, 5, generator=_gen(2), dtype=DT) * 3
    neg = torch.randn(7, generator=_gen(3), dtype=DT) * 3                           # A = 15 != B = 7
    total = 0.0
    for x in pos.flatten().tolist():
        total += math.log(1 / (1 + math.exp(-x)))                                   # log D(similar)
    for x in neg.flatten().tolist():
        total += math.log(1 - 1 / (1 + math.exp(-x)))                               # log(1 - D(dissimilar))
    expected = -total / (15 + 7)
    assert similarity_loss(pos, neg).item() == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError):
        similarity_loss(pos[:0], neg[:0])


def test_eq5_self_similarity_brute_force():
    z = torch.randn(2, 5, 4, generator=_gen(4), dtype=DT)
    s = self_similarity(z)
    for b in range(2):
        for i in range(5):
            for j in range(5):
                zi, zj = z[b, i].tolist(), z[b, j].tolist()
                dot = sum(x * y for x, y in zip(zi, zj))
                norm = math.sqrt(sum(x * x for x in zi)) * math.sqrt(sum(y * y for y in zj))
                assert s[b, i, j].item() == pytest.approx(abs(dot) / norm, rel=1e-12)
    assert (s >= 0).all() and (s <= 1).all() and torch.allclose(s.diagonal(dim1=1, dim2=2), torch.ones(2, 5, dtype=DT))


@pytest.mark.parametrize("normalize", [True, False])
def test_eq7_info_nce_brute_force(normalize):
    b, m, c, tau = 2, 6, 5, 0.3
    a = torch.randn(b, m, c, generator=_gen(5), dtype=DT)
    p = torch.randn(b, m, c, generator=_gen(6), dtype=DT)
    mask = torch.rand(b, m, m, generator=_gen(7)) < 0.5
    mask &= ~torch.eye(m, dtype=torch.bool)
    mask[0, 2] = False                                                              # an anchor without negatives
    loss, valid = info_nce(a, p, mask, tau, normalize)
    an = torch.nn.functional.normalize(a, dim=-1) if normalize else a
    pn = torch.nn.functional.normalize(p, dim=-1) if normalize else p
    for bb in range(b):
        for i in range(m):
            f_pos = math.exp(float(an[bb, i] @ pn[bb, i]) / tau)                   # f(H_i, H_i+)
            f_neg = sum(math.exp(float(an[bb, i] @ an[bb, j]) / tau) for j in range(m) if mask[bb, i, j])
            assert loss[bb, i].item() == pytest.approx(-math.log(f_pos / (f_pos + f_neg)), rel=1e-9, abs=1e-12)
            assert bool(valid[bb, i]) == bool(mask[bb, i].any())
    assert loss[0, 2].item() == 0.0 and not valid[0, 2]


def _f(u: torch.Tensor, v: torch.Tensor, tau: float) -> float:
    return math.exp(float(u @ v) / tau)


@pytest.mark.parametrize("cross_cloud", [False, True])
def test_eq7_with_extra_positives_and_cross_cloud_negatives_brute_force(cross_cloud):
    """A4 (multi-positive InfoNCE: SupCon's L_out over P_i = {i+} + extra) and A17 (every patch of the other
    clouds a negative), by a loop over the formula of info_nce's docstring."""
    b, m, c, tau = 3, 5, 4, 0.2
    a = torch.randn(b, m, c, generator=_gen(40), dtype=DT)
    p = torch.randn(b, m, c, generator=_gen(41), dtype=DT)
    r = torch.rand(b, m, m, generator=_gen(42))
    eye = torch.eye(m, dtype=torch.bool)
    neg, extra = (r < 0.4) & ~eye, (r > 0.7) & ~eye
    neg[0, 1], extra[0, 1] = False, False                              # anchor (0, 1): positives only
    loss, valid = info_nce(a, p, neg, tau, True, extra, cross_cloud)
    an, pn = torch.nn.functional.normalize(a, dim=-1), torch.nn.functional.normalize(p, dim=-1)
    for bb in range(b):
        for i in range(m):
            positives = [_f(an[bb, i], pn[bb, i], tau)] + [_f(an[bb, i], an[bb, j], tau) for j in range(m)
                                                          if extra[bb, i, j]]
            negatives = [_f(an[bb, i], an[bb, j], tau) for j in range(m) if neg[bb, i, j]]
            if cross_cloud:
                negatives += [_f(an[bb, i], an[o, j], tau) for o in range(b) if o != bb for j in range(m)]
            denom = sum(positives) + sum(negatives)
            expected = -sum(math.log(f / denom) for f in positives) / len(positives)
            assert loss[bb, i].item() == pytest.approx(expected, rel=1e-9, abs=1e-12)
            assert bool(valid[bb, i]) == (bool(negatives))
    assert (loss[0, 1].item() == 0.0) != cross_cloud                   # alone, its own positive: -log 1
    plain, _ = info_nce(a, p, neg, tau)
    same, _ = info_nce(a, p, neg, tau, True, torch.zeros_like(neg), False)
    assert torch.equal(plain, same)                                     # no extra positive: Eq. 7 itself
    with pytest.raises(ValueError, match="both a negative and a positive"):
        info_nce(a, p, neg, tau, True, neg, cross_cloud)


def test_extra_positives_lie_above_the_interval_and_never_among_the_negatives():
    s = torch.rand(2, 7, 7, generator=_gen(43))
    s = (s + s.transpose(1, 2)) / 2
    for mode, b_l, b_u in (("absolute", 0.3, 0.6), ("quantile", 0.2, 0.7)):
        extra = extra_positive_mask(s, b_l, b_u, mode)
        _, upper = negative_thresholds(s, b_l, b_u, mode)
        for bb in range(2):
            for i in range(7):
                for j in range(7):
                    assert bool(extra[bb, i, j]) == (j != i and s[bb, i, j].item() > upper[bb, i, 0].item())
        for fallback_frac in (0.0, 1.0):                                # with and without the fallback
            mask, _, _ = select_negatives(s, b_l, b_u, mode, fallback_frac, 3)
            assert not (mask & extra).any()
    assert extra_positive_mask(s, 0.3, 0.6).equal((s > 0.6) & ~torch.eye(7, dtype=torch.bool))


def test_eq7_gradient_flows_through_negatives_but_not_masked_ones():
    a = torch.randn(1, 4, 3, generator=_gen(8), dtype=DT, requires_grad=True)
    p = torch.randn(1, 4, 3, generator=_gen(9), dtype=DT, requires_grad=True)
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[0, 0, 1] = True                                                            # anchor 0: negative 1 only
    loss, _ = info_nce(a, p, mask, 0.1)
    loss[0, 0].backward()
    assert a.grad[0, 1].abs().sum() > 0 and a.grad[0, 2:].abs().sum() == 0 and torch.isfinite(a.grad).all()


# --------------------------------------------------------------------------------------------------
# Patches (Eq. 2) and the dilated positive
# --------------------------------------------------------------------------------------------------


def _line(n: int, c: int | None = None) -> torch.Tensor:
    """Points on the x axis at 0, 1, ..., n-1; right of ``c`` shifted by 0.01 so that the left neighbour of
    ``c`` always comes first (no tie)."""
    x = torch.arange(n, dtype=DT)
    if c is not None:
        x = x + 0.01 * (x > c)
    return torch.stack([x, torch.zeros_like(x), torch.zeros_like(x)], dim=-1).unsqueeze(0)


def test_anchor_and_dilated_patch_at_the_end_of_a_line():
    anchor, dilated = patch_indices(_line(20), torch.tensor([[0]]), patch_k=3, dilation=2)
    # neighbours of 0 by distance: 1, 2, 3, 4, 5, 6; anchor: k = 3 of them; dilated: ranks 1, 3, 5 of k d = 6
    assert anchor.tolist() == [[[0, 1, 2, 3]]] and dilated.tolist() == [[[0, 1, 3, 5]]]
    _, dilated3 = patch_indices(_line(20), torch.tensor([[0]]), patch_k=3, dilation=3)
    assert dilated3.tolist() == [[[0, 1, 4, 7]]]                                   # ranks 1, 4, 7 of 9


def test_anchor_and_dilated_patch_inside_a_line():
    c = 10
    anchor, dilated = patch_indices(_line(20, c), torch.tensor([[c]]), patch_k=2, dilation=2)
    # by distance: 9 (1), 11 (1.01), 8 (2), 12 (2.01); dilated keeps ranks 1 and 3
    assert anchor.tolist() == [[[10, 9, 11]]] and dilated.tolist() == [[[10, 9, 8]]]
    anchor, dilated = patch_indices(_line(20, c), torch.tensor([[c, 0]]), patch_k=4, dilation=2)
    assert anchor[0, 0].tolist() == [10, 9, 11, 8, 12] and dilated[0, 0].tolist() == [10, 9, 8, 7, 6]
    assert anchor[0, 1].tolist() == [0, 1, 2, 3, 4] and dilated[0, 1].tolist() == [0, 1, 3, 5, 7]


def test_dilated_patch_of_the_last_of_every_d_ranks():
    _, dilated = patch_indices(_line(20), torch.tensor([[0]]), patch_k=3, dilation=2, ranks="last")
    assert dilated.tolist() == [[[0, 2, 4, 6]]]                                    # ranks 2, 4, 6 of 6
    _, dilated3 = patch_indices(_line(20), torch.tensor([[0]]), patch_k=3, dilation=3, ranks="last")
    assert dilated3.tolist() == [[[0, 3, 6, 9]]]                                   # ranks 3, 6, 9 of 9
    c = 10
    _, dilated = patch_indices(_line(20, c), torch.tensor([[c]]), patch_k=2, dilation=2, ranks="last")
    assert dilated.tolist() == [[[10, 11, 12]]]                  # by distance 9, 11, 8, 12: ranks 2 and 4
    with pytest.raises(ValueError, match="ranks first or last"):
        patch_indices(_line(20), torch.tensor([[0]]), 3, 2, ranks="middle")


def test_patch_has_its_centre_once_and_a_duplicate_of_it_as_a_neighbour():
    xyz = _line(12)
    xyz[0, 5] = xyz[0, 0]                                                           # point 5 duplicates point 0
    for centre in (0, 5):
        anchor, dilated = patch_indices(xyz, torch.tensor([[centre]]), patch_k=3, dilation=2)
        twin = 5 if centre == 0 else 0
        assert anchor[0, 0, 0] == centre and (anchor == centre).sum() == 1 and anchor[0, 0, 1] == twin
        assert sorted(anchor[0, 0, 2:].tolist()) == [1, 2] and dilated.shape == (1, 1, 4)


def test_patch_search_larger_than_the_cloud_names_the_keys():
    with pytest.raises(ValueError, match="method.patch_k x method.dilation"):
        patch_indices(_line(10), torch.tensor([[0]]), patch_k=5, dilation=2)       # 11 points needed


def test_centres_are_fps_from_a_random_start():
    xyz = torch.randn(3, 64, 3, generator=_gen(10))
    assert torch.equal(sample_centres(xyz, 8, random_start=False), fps(xyz, 8))
    c = sample_centres(xyz, 8, _gen(11))
    assert c.shape == (3, 8) and all(len(set(row.tolist())) == 8 for row in c)
    starts = {tuple(sample_centres(xyz, 8, _gen(s))[:, 0].tolist()) for s in range(5)}
    assert len(starts) > 1
    # each later centre is the point farthest from the earlier ones (FPS), whatever the start
    for b in range(3):
        chosen = [int(c[b, 0])]
        for t in range(1, 8):
            d = torch.cdist(xyz[b], xyz[b, chosen]).min(dim=1).values
            assert int(c[b, t]) == int(d.argmax())
            chosen.append(int(c[b, t]))
    with pytest.raises(ValueError, match="method.num_patches"):
        sample_centres(xyz, 65)


def test_random_rotations():
    for mode in ("axis", "up", "so3"):
        rot = random_rotation(64, mode, 90.0, up_axis=1, generator=_gen(12), dtype=DT)
        assert torch.allclose(rot @ rot.transpose(1, 2), torch.eye(3, dtype=DT).expand(64, 3, 3), atol=1e-12)
        assert torch.allclose(torch.linalg.det(rot), torch.ones(64, dtype=DT))
        angle = torch.arccos(((rot.diagonal(dim1=1, dim2=2).sum(-1) - 1) / 2).clamp(-1, 1))
        assert (angle <= math.pi / 2 + 1e-9).all()
    up = random_rotation(16, "up", 180.0, up_axis=1, generator=_gen(13), dtype=DT)
    assert torch.allclose(up[:, 1], torch.tensor([0.0, 1.0, 0.0], dtype=DT).expand(16, 3))   # y is kept
    axes = random_rotation(200, "axis", 180.0, generator=_gen(14), dtype=DT)
    fixed = (axes.diagonal(dim1=1, dim2=2) - 1).abs() < 1e-12                      # the rotation axis keeps 1
    assert fixed.any(dim=1).all() and fixed.any(dim=0).all()                        # x, y and z all drawn


def test_dissimilar_patch_is_any_other_patch():
    j = dissimilar_indices(500, 5, _gen(15))
    i = torch.arange(5).expand(500, 5)
    assert (j != i).all() and (j >= 0).all() and (j < 5).all()
    for anchor in range(5):
        assert set(j[:, anchor].tolist()) == set(range(5)) - {anchor}
    with pytest.raises(ValueError):
        dissimilar_indices(2, 1)


# --------------------------------------------------------------------------------------------------
# Hard negatives: the interval, the quantile mode, the empty-set rule (A7, A8)
# --------------------------------------------------------------------------------------------------


def test_absolute_interval_is_closed_at_both_edges():
    s = torch.tensor([[[1.0, 0.5, 0.75, 0.4999, 0.7501, 0.6],
                       [0.5, 1.0, 0.6, 0.6, 0.6, 0.6],
                       [0.75, 0.6, 0.75, 0.6, 0.6, 0.6],          # its own score (diagonal) in the interval
                       [0.4999, 0.6, 0.6, 1.0, 0.6, 0.6],
                       [0.7501, 0.6, 0.6, 0.6, 1.0, 0.6],
                       [0.6, 0.6, 0.6, 0.6, 0.6, 1.0]]], dtype=DT)
    mask = hard_negative_mask(s, 0.5, 0.75, "absolute")
    assert mask[0, 0].tolist() == [False, True, True, False, False, True]   # 0.5 and 0.75 in, 0.4999, 0.7501 out
    assert not mask[0].diagonal().any() and mask[0, 2].tolist() == [True, True, False, True, True, True]
    assert hard_negative_mask(s, 0.0, 1.0).sum() == 6 * 5                   # the whole negatives


def test_quantile_interval_uses_the_anchors_own_scores():
    row = [0.9, 0.1, 0.3, 0.2, 0.5, 0.4]                                     # anchor 0; others: 0.1 .. 0.5
    s = torch.tensor([row] + [[0.5] * 6] * 5, dtype=DT).unsqueeze(0)
    lower, upper = negative_thresholds(s, 0.5, 0.75, "quantile")
    # n = 5 others sorted 0.1 0.2 0.3 0.4 0.5: lower v[floor(0.5 * 4)] = 0.3, upper v[ceil(0.75 * 4)] = 0.4
    assert lower[0, 0, 0].item() == 0.3 and upper[0, 0, 0].item() == 0.4
    assert hard_negative_mask(s, 0.5, 0.75, "quantile")[0, 0].tolist() == [False, False, True, False, False, True]
    assert hard_negative_mask(s, 0.0, 1.0, "quantile")[0, 0].sum() == 5
    s = torch.rand(3, 7, 7, generator=_gen(16), dtype=DT)
    for b_l, b_u in [(0.5, 0.55), (0.61, 0.62), (0.95, 1.0), (0.0, 0.01)]:   # narrow: never empty
        assert hard_negative_mask(s, b_l, b_u, "quantile").any(dim=-1).all()


def test_empty_anchors_fall_back_to_the_most_similar_below_b_u():
    m = 6
    s = torch.full((1, m, m), 0.9, dtype=DT)
    s[0, :, 1] = torch.tensor([0.2, 1.0, 0.3, 0.1, 0.85, 0.2], dtype=DT)
    s[0, :, 2] = torch.tensor([0.4, 0.5, 1.0, 0.05, 0.8, 0.3], dtype=DT)
    s[0, 1, 3] = 0.6                                                         # anchor 1: one score in [0.55, 0.7]
    # every anchor but 1 has nothing in [0.55, 0.7]: 5/6 > 0.5, so the empty ones fall back
    mask, empty, used = select_negatives(s, 0.55, 0.7, "absolute", fallback_frac=0.5, fallback_k=1)
    assert used and empty[0].tolist() == [True, False, True, True, True, True]
    rows = [mask[0, i].nonzero().flatten().tolist() for i in range(m)]
    # 1 keeps its own; the others take their highest score <= 0.7; 4 has none (0.9, 0.85, 0.8) and stays empty
    assert rows == [[2], [3], [1], [1], [], [2]]
    mask2, _, _ = select_negatives(s, 0.55, 0.7, "absolute", fallback_frac=0.5, fallback_k=2)
    assert [mask2[0, i].nonzero().flatten().tolist() for i in range(m)] == [[1, 2], [3], [1], [1, 2], [], [1, 2]]
    # at most fallback_frac empty, or fallback_k = 0: the empty anchors stay empty
    for frac, k in [(5 / 6, 4), (0.5, 0)]:
        kept, again, used = select_negatives(s, 0.55, 0.7, "absolute", fallback_frac=frac, fallback_k=k)
        assert not used and torch.equal(kept, hard_negative_mask(s, 0.55, 0.7)) and torch.equal(again, empty)


# --------------------------------------------------------------------------------------------------
# Annealing (sections 3.5, 4.1.1)
# --------------------------------------------------------------------------------------------------


PAPER = [(0, (0.0, 1.0)), (299.99, (0.0, 1.0)), (300, (0.0, 1.0)), (319.999, (0.0, 1.0)), (320, (0.05, 0.975)),
         (339, (0.05, 0.975)), (340, (0.1, 0.95)), (480, (0.45, 0.775)), (500, (0.5, 0.75)), (511.99, (0.5, 0.75))]


@pytest.mark.parametrize("epoch,bounds", PAPER)
def test_annealing_at_the_papers_epochs(epoch, bounds):
    fraction = SCLConfig().bounds_at(epoch, 512)                             # defaults: 300/512, 20/512
    cfg = build_config("scl", overrides={f"method.{b}.{part}": value for b in ("b_l", "b_u") for part, value in
                                         {"unit": "epochs", "warmup_epochs": 300, "step_epochs": 20}.items()})
    assert fraction == pytest.approx(bounds, abs=1e-12)
    assert cfg.method.bounds_at(epoch, 512) == pytest.approx(bounds, abs=1e-12)


def test_annealing_in_a_short_run_and_at_step_boundaries():
    # 10 epochs, warm-up 0.5 (5 epochs), period 0.1 (1 epoch): steps at epochs 6, 7, 8, 9
    tied = {"warmup_epochs": 0.5, "step_epochs": 0.1}
    cfg = SCLConfig.model_validate({"b_l": tied, "b_u": tied})
    steps = [round(cfg.bounds_at(t, 10)[0] / 0.05) for t in (0, 4.9, 5, 5.99, 6, 6.5, 7, 9, 9.99)]
    assert steps == [0, 0, 0, 0, 1, 1, 2, 4, 4]
    assert cfg.bounds_at(6 - 1e-13, 10)[0] == pytest.approx(0.05)          # the loop's progress a hair below 6
    three = SCLConfig.model_validate({"b_l": {"warmup_epochs": 0.3, "step_epochs": 0.1}})
    assert three.bounds_at(3.0, 10)[0] == 0 and three.bounds_at(4.0, 10)[0] == pytest.approx(0.05)
    assert cfg.bounds_at(5, 0) == (0.0, 1.0)                                # a run of 0 epochs


def test_annealing_stops_at_the_ends_and_the_interval_keeps_its_width():
    cfg = SCLConfig.model_validate({"b_l": {"warmup_epochs": 0, "step_epochs": 0.01},
                                    "b_u": {"warmup_epochs": 0, "step_epochs": 0.01}})
    assert cfg.bounds_at(10, 100) == pytest.approx((0.5, 0.75))            # 10 steps: both at their ends
    assert all(cfg.bounds_at(t, 100) == pytest.approx((0.5, 0.75)) for t in (13, 50, 99))
    with pytest.raises(ConfigError) as err:
        build_config("scl", overrides={"method.b_l.end": 0.72})
    _one_line(err.value, "b_l, b_u: the interval can narrow to b_u - b_l = 0.75 - 0.72 < min_width 0.05")
    build_config("scl", overrides={"method.b_l.end": 0.72, "method.min_width": 0.0})


# --------------------------------------------------------------------------------------------------
# Stage 2
# --------------------------------------------------------------------------------------------------


def test_stage2_trains_e2_and_leaves_the_stage1_network_alone(tmp_path):
    stage1, path = _stage1_checkpoint(tmp_path / "s1")
    model = _stage2(path, total_epochs=1, b_u=0.9)                  # scores needed from step 0
    for name in ("e1", "g1"):
        saved = getattr(stage1, name).state_dict()
        assert all(torch.equal(v, saved[k]) for k, v in getattr(model, name).state_dict().items())
    assert not hasattr(model, "disc")
    frozen = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(("e1.", "g1."))}
    e2_before = {k: v.clone() for k, v in model.e2.state_dict().items()}
    model.train()
    assert model.e2.training and not model.e1.training and not model.g1.training   # frozen: eval mode
    trainable = {id(p) for g in model.param_groups(0.0) for p in g["params"]}
    assert trainable == {id(p) for p in [*model.e2.parameters(), *model.g2.parameters()]}
    opt = torch.optim.Adam(model.param_groups(0.0), lr=1e-2)
    out = model(_batch(b=3), 0, 0.0)
    opt.zero_grad()
    out["loss"].backward()
    opt.step()
    assert all(p.grad is None for p in [*model.e1.parameters(), *model.g1.parameters()])
    assert all(torch.equal(v, frozen[k]) for k, v in model.state_dict().items() if k in frozen)   # BN stats too
    assert any(not torch.equal(v, e2_before[k]) for k, v in model.e2.state_dict().items())
    assert {"loss", "b_l", "b_u", "neg_per_anchor", "no_negative_frac", "dropped_frac", "fallback",
            "pos_cos"} == set(out)
    model.eval()
    batch = _batch(b=2)
    assert model.embed(batch).shape == (2, 24) and model.embed_points(batch).shape == (2, 96, 24)
    assert model.encoder() is model.e2
    assert torch.allclose(model.embed(batch), model.embed_points(batch).mean(dim=1))


def test_stage2_counts_anchors_without_negatives(tmp_path, monkeypatch):
    import pointtune.methods.scl as scl

    _, path = _stage1_checkpoint(tmp_path / "s1")
    model = _stage2(path, total_epochs=1, b_l={"start": 0.2, "shape": "constant", "warmup_epochs": 0},
                    b_u={"start": 0.5, "shape": "constant", "warmup_epochs": 0})
    m = TINY["num_patches"]
    s = torch.full((4, m, m), 0.9)
    s[:, :m // 2, m - 1] = 0.3                       # the first half of the anchors have one negative in [0.2, 0.5]
    s[:, m - 1, : m // 2] = 0.3
    monkeypatch.setattr(scl, "self_similarity", lambda z: s.clone())
    torch.manual_seed(3)
    out = model(_batch(), 0, 0.0)
    assert out["no_negative_frac"].item() == pytest.approx((m // 2 - 1) / m)   # anchor m-1 has m/2 of them
    assert out["dropped_frac"] == out["no_negative_frac"] and out["fallback"] == 0   # not more than half empty
    assert out["neg_per_anchor"].item() == pytest.approx((m // 2 + m // 2) / m)
    assert (out["b_l"].item(), out["b_u"].item()) == pytest.approx((0.2, 0.5))
    # every anchor empty, none below b_u: the fallback runs, finds nothing, the loss is an attached zero
    s.fill_(0.9)
    model.zero_grad()
    out = model(_batch(), 0, 0.0)
    assert out["no_negative_frac"] == 1 and out["dropped_frac"] == 1 and out["fallback"] == 1
    assert out["loss"].item() == 0 and out["neg_per_anchor"] == 0
    out["loss"].backward()
    assert all(p.grad is not None and (p.grad == 0).all() for p in [*model.e2.parameters(), *model.g2.parameters()])


def test_stage2_loss_is_the_mean_over_anchors_with_negatives(tmp_path, monkeypatch):
    import pointtune.methods.scl as scl

    _, path = _stage1_checkpoint(tmp_path / "s1")
    model = _stage2(path, total_epochs=1, b_l={"start": 0.2, "shape": "constant", "warmup_epochs": 0},
                    b_u={"start": 0.5, "shape": "constant", "warmup_epochs": 0}, fallback_k=0)
    m = TINY["num_patches"]
    s = torch.rand(2, m, m, generator=_gen(17))
    monkeypatch.setattr(scl, "self_similarity", lambda z: s.clone())
    captured = {}
    real = scl.info_nce

    def spy(a, p, mask, tau, normalize, pos_mask, cross_cloud):
        captured.update(a=a, p=p, mask=mask)
        assert pos_mask is None and cross_cloud is False                      # the paper's Eq. 7 by default
        return real(a, p, mask, tau, normalize)

    monkeypatch.setattr(scl, "info_nce", spy)
    out = model(_batch(b=2), 0, 0.0)
    assert torch.equal(captured["mask"], hard_negative_mask(s, 0.2, 0.5))
    per, valid = real(captured["a"].detach(), captured["p"].detach(), captured["mask"], 0.07, True)
    assert out["loss"].item() == pytest.approx(per[valid].mean().item(), rel=1e-6)
    assert out["no_negative_frac"].item() == pytest.approx((~valid).float().mean().item())


def test_warm_up_uses_every_negative_without_the_similarity_network(tmp_path, monkeypatch):
    _, path = _stage1_checkpoint(tmp_path / "s1")
    model = _stage2(path, total_epochs=10)                                    # warm-up: 5.86 epochs
    calls = []
    original = model.e1.forward_features
    monkeypatch.setattr(model.e1, "forward_features", lambda *a: calls.append(1) or original(*a))
    out = model(_batch(), 0, 0.0)
    m = TINY["num_patches"]
    assert not calls and out["neg_per_anchor"] == m - 1 and out["no_negative_frac"] == 0
    out = model(_batch(), 9, 0.95)                       # (9.5 - 5.86) / 0.39: 9 steps: [0.45, 0.775]
    assert calls and (out["b_l"].item(), out["b_u"].item()) == pytest.approx((0.45, 0.775))


def test_stage2_without_hard_negatives_needs_no_stage1_run():
    model = SCL(SCLConfig.model_validate({**TINY, "stage": 2, "hard_negatives": False}), 0, 10)
    assert model.e1 is None and model.g1 is None
    out = model(_batch(), 9, 0.95)
    assert out["neg_per_anchor"] == TINY["num_patches"] - 1 and out["no_negative_frac"] == 0


# --------------------------------------------------------------------------------------------------
# Config and stage-1 loading errors
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides,fragment", [
    ({"method.b_l": 0.97}, "method.b_l: Value error, stairs: delta 0.05 moves away from end 0.5"),
    ({"method.b_l.warmup_epochs": 1.5}, "warmup_epochs (1.5) must be <= 1 with unit=fraction"),
    ({"method.b_u": 1.2}, "method.b_u: Value error, start must be <= 1"),
    ({"method.stage1.lr_step": 2}, "method.stage1.lr_step"),
    ({"method.backbone.emb_dims": 512}, "only backbone.inputs may be set, got 'emb_dims'"),
    ({"method.backbone.name": "pointnet"}, "SCL builds its own DGCNN encoders"),
    ({"method.stage": 1, "method.stage1_from": "runs/x"}, "stage1_from is read by stage 2 only"),
    ({"method.dilation": 1}, "method.dilation"),
    ({"method.num_patches": 1}, "method.num_patches"),
    ({"method.stage": 3}, "method.stage"),
    ({"method.rotation_deg": 0}, "method.rotation_deg"),
    ({"method.extra_positives_from_sim": True, "method.hard_negatives": False},
     "extra_positives_from_sim: the extra positives are scored by the stage-1 network"),
    ({"method.rot_mode": "per_patch", "method.patch_k": 8},
     "rot_mode: per_patch encodes a patch of patch_k + 1 = 9 points on its own, fewer than edgeconv_k = 20"),
    ({"method.dilated_ranks": "middle"}, "method.dilated_ranks"),
])
def test_config_errors_are_one_line(overrides, fragment):
    with pytest.raises(ConfigError) as err:
        build_config("scl", overrides=overrides)
    _one_line(err.value, fragment)


def test_stage1_from_paths_become_absolute():
    cfg = build_config("scl", overrides={"method.stage": 2, "method.stage1_from": "runs/stage1"}).method
    assert cfg.stage1_from.startswith("/") and cfg.stage1_from.endswith("runs/stage1")
    cfg = build_config("scl", overrides={"method.stage": 2, "method.stage1_from": "s3://b/run"}).method
    assert cfg.stage1_from == "s3://b/run"


def test_stage2_without_a_usable_stage1_run_is_a_one_line_error(tmp_path):
    exp = build_config("scl", overrides={"method.stage": 2})           # valid config: checked when warm-started
    model = SCL(exp.method, 0, 1)
    assert model.weight_sources() == {}
    with pytest.raises(ConfigError) as err:
        model.warm_start({})
    _one_line(err.value, "method.stage1_from:", "method.stage=1")
    with pytest.raises(CheckpointNotFoundError) as err:
        _stage2(str(tmp_path / "nowhere"))
    _one_line(err.value, "method.stage1_from:", "nowhere")
    assert isinstance(err.value, FileNotFoundError)
    stage1, path = _stage1_checkpoint(tmp_path / "s1")
    stage2 = _stage2(path, total_epochs=1)
    cfg2 = build_config("scl", overrides={**{f"method.{k}": v for k, v in TINY.items()}, "method.stage": 2,
                                          "method.stage1_from": path})
    save_state(tmp_path / "s2", {"model": stage2.state_dict(), "experiment": cfg2.to_dict(), "class_names": ["a", "b"]})
    with pytest.raises(ConfigError) as err:
        _stage2(str(tmp_path / "s2"))
    _one_line(err.value, "method.stage1_from:", "an SCL stage-2 run, not an SCL stage-1 run")
    with pytest.raises(ConfigError) as err:
        _stage2(path, backbone={"name": "dgcnn", "inputs": ["normals"]})
    _one_line(err.value, "method.stage1_from:", "backbone.inputs")
    with pytest.raises(ConfigError) as err:                             # E1/G1 are built from stage 2's keys
        _stage2(path, sim_dim=16, edgeconv_k=6)
    _one_line(err.value, "method.stage1_from: the stage-1 run has method.sim_dim=8, method.edgeconv_k=8, this run "
                         "16, 6", "must match")


def test_a_stage2_checkpoint_rebuilds_with_its_frozen_network_without_the_stage1_run(tmp_path):
    import shutil

    from pointtune.train.load import load_method

    stage1, path = _stage1_checkpoint(tmp_path / "s1")
    stage2 = _stage2(path, total_epochs=1)
    exp = build_config("scl", overrides={**{f"method.{k}": v for k, v in TINY.items()}, "method.stage": 2,
                                         "method.stage1_from": path, "train.epochs": 1})
    save_state(tmp_path / "s2", {"model": stage2.state_dict(), "experiment": exp.to_dict(), "class_names": ["a", "b"]})
    shutil.rmtree(path)
    loaded = load_method(tmp_path / "s2")
    assert isinstance(loaded.method, SCL) and loaded.method.cfg.stage == 2
    assert all(torch.equal(v, stage1.e1.state_dict()[k]) for k, v in loaded.method.e1.state_dict().items())
    batch = _batch(b=2)
    assert torch.allclose(loaded.method.embed(batch), stage2.eval().embed(batch))


def test_normals_are_fed_and_rotated_with_the_cloud():
    cfg = SCLConfig.model_validate({**TINY, "backbone": {"name": "dgcnn", "inputs": ["normals"]}})
    model = SCL(cfg, 0, 1)
    batch = _batch()
    seen = []
    original = model.e1.forward_features
    model.e1.forward_features = lambda xyz, f: seen.append((xyz, f)) or original(xyz, f)
    batch["normals"] = torch.nn.functional.normalize(torch.randn(4, 96, 3, generator=_gen(18)), dim=-1)
    model(batch, 0, 0.0)
    xyz, normals = seen[0]
    assert normals.shape == (8, 96, 3) and torch.equal(normals[:4], batch["normals"])
    # the rotated copy's normals are the normals rotated like its points: same R solves both
    rot = torch.linalg.lstsq(xyz[:4].double(), xyz[4:].double()).solution            # (B, 3, 3) = R^T
    assert torch.allclose(normals[:4].double() @ rot, normals[4:].double(), atol=1e-4)
    with pytest.raises(KeyError, match="method.backbone.inputs"):
        model({"points": batch["points"]}, 0, 0.0)


# --------------------------------------------------------------------------------------------------
# Switches beyond the paper's reading: A4 extra positives, A5 per-patch rotation, A6 projection head,
# A17 cross-cloud negatives, the dilated positive's other ranks
# --------------------------------------------------------------------------------------------------

PER_PATCH = {"rot_mode": "per_patch", "edgeconv_k": 4}      # patches of patch_k + 1 = 7 points, EdgeConv k <= 7


def test_standalone_patches_are_the_patches_centred_on_their_centroids():
    batch = _batch(b=2, n=40)
    batch["normals"] = torch.randn(2, 40, 3, generator=_gen(50))
    idx = torch.randint(0, 40, (2, 3, 5), generator=_gen(51))
    out = standalone_patches(batch, idx, ["normals"])
    assert out["points"].shape == (6, 5, 3) and out["normals"].shape == (6, 5, 3)
    for b in range(2):
        for i in range(3):
            pts = batch["points"][b, idx[b, i]]
            assert torch.allclose(out["points"][b * 3 + i], pts - pts.mean(dim=0))
            assert torch.equal(out["normals"][b * 3 + i], batch["normals"][b, idx[b, i]])
    assert set(standalone_patches(batch, idx)) == {"points"}
    with pytest.raises(KeyError, match="method.backbone.inputs"):
        standalone_patches({"points": batch["points"]}, idx, ["normals"])


def test_rotate_clouds_turns_points_and_normals_only():
    rot = random_rotation(2, "so3", 180.0, generator=_gen(52))
    clouds = {"points": torch.randn(2, 9, 3, generator=_gen(53)), "normals": torch.randn(2, 9, 3, generator=_gen(54)),
              "colors": torch.rand(2, 9, 3, generator=_gen(55))}
    out = rotate_clouds(clouds, rot)
    for b in range(2):
        assert torch.allclose(out["points"][b], clouds["points"][b] @ rot[b].T, atol=1e-6)
        assert torch.allclose(out["normals"][b], clouds["normals"][b] @ rot[b].T, atol=1e-6)
    assert out["colors"] is clouds["colors"] and out["points"].dtype == torch.float32


def test_per_patch_stage1_rotates_and_encodes_every_patch_on_its_own():
    torch.manual_seed(0)
    model = SCL(SCLConfig.model_validate({**TINY, **PER_PATCH}), 0, 4)
    seen = []
    original = model.e1.forward_features
    model.e1.forward_features = lambda xyz, f: seen.append(xyz.detach()) or original(xyz, f)
    out = model(_batch(b=4), 0, 0.0)
    m, k1 = TINY["num_patches"], TINY["patch_k"] + 1
    (xyz,) = seen                                                      # one E1 pass: patches and rotated copies
    assert xyz.shape == (2 * 4 * m, k1, 3)
    plain, rotated = xyz[:4 * m].double(), xyz[4 * m:].double()
    assert torch.allclose(plain.mean(dim=1), torch.zeros(4 * m, 3, dtype=DT), atol=1e-6)   # centred
    rot = torch.linalg.lstsq(plain, rotated).solution                  # (B M, 3, 3) = R^T of each patch
    assert torch.allclose(plain @ rot, rotated, atol=1e-4)
    assert torch.allclose(rot @ rot.transpose(1, 2), torch.eye(3, dtype=DT).expand_as(rot), atol=1e-4)
    assert not torch.allclose(rot[0], rot[1], atol=1e-3)               # a rotation of its own per patch
    out["loss"].backward()
    assert all(p.grad is not None for p in model.parameters())


def test_per_patch_stage2_scores_patches_encoded_on_their_own(tmp_path, monkeypatch):
    import pointtune.methods.scl as scl

    _, path = _stage1_checkpoint(tmp_path / "s1", **PER_PATCH)
    model = _stage2(path, total_epochs=1, b_u=0.9, **PER_PATCH)
    patches, scored = [], []
    real_patches, real_sim = scl.patch_indices, scl.self_similarity
    monkeypatch.setattr(scl, "patch_indices", lambda *a: patches.append(real_patches(*a)) or patches[-1])
    monkeypatch.setattr(scl, "self_similarity", lambda z: scored.append(z) or real_sim(z))
    batch = _batch(b=3)
    model.train()
    model(batch, 0, 0.0)
    idx = patches[0][0]
    with torch.no_grad():
        alone = standalone_patches(batch, idx)["points"]
        expected = model.g1(model.e1.forward_features(alone).point_features).view(3, TINY["num_patches"], -1)
    assert torch.allclose(scored[0], expected, atol=1e-6)
    with pytest.raises(ConfigError) as err:                             # stage 2 must encode as stage 1 did
        _stage2(path, edgeconv_k=4)
    _one_line(err.value, "method.stage1_from: the stage-1 run has method.rot_mode=per_patch, this run whole_cloud")


def test_projection_head_sits_between_g2_and_the_loss_and_off_the_encoder(monkeypatch):
    import pointtune.methods.scl as scl

    plain = SCL(SCLConfig.model_validate({**TINY, "stage": 2, "hard_negatives": False}), 0, 4)
    assert isinstance(plain.head, torch.nn.Identity) and not any(k.startswith("head.") for k in plain.state_dict())
    torch.manual_seed(1)
    model = SCL(SCLConfig.model_validate({**TINY, "stage": 2, "hard_negatives": False, "projection_head": True}),
                0, 4)
    assert isinstance(model.head, ProjectionHead) and {"head.0.weight", "head.2.bias"} <= set(model.state_dict())
    head_out, captured = [], {}
    model.head.register_forward_hook(lambda mod, inp, out: head_out.append(out))
    real = scl.info_nce
    monkeypatch.setattr(scl, "info_nce", lambda a, p, *rest: captured.update(a=a, p=p) or real(a, p, *rest))
    out = model(_batch(), 0, 0.0)
    assert torch.equal(captured["a"], head_out[0]) and torch.equal(captured["p"], head_out[1])
    out["loss"].backward()
    assert all(p.grad is not None for p in model.head.parameters())
    trainable = {id(p) for g in model.param_groups(0.0) for p in g["params"]}
    assert {id(p) for p in model.head.parameters()} <= trainable
    model.eval()
    batch = _batch(b=2)
    assert torch.equal(model.embed(batch), model.e2(batch["points"], None))   # downstream: before the head


def test_stage2_extra_positives_come_from_the_similarity_network(tmp_path, monkeypatch):
    import pointtune.methods.scl as scl

    _, path = _stage1_checkpoint(tmp_path / "s1")
    bounds = {"b_l": {"start": 0.2, "shape": "constant", "warmup_epochs": 0},
              "b_u": {"start": 0.5, "shape": "constant", "warmup_epochs": 0}}
    model = _stage2(path, total_epochs=1, extra_positives_from_sim=True, **bounds)
    m = TINY["num_patches"]
    s = torch.rand(4, m, m, generator=_gen(56))
    monkeypatch.setattr(scl, "self_similarity", lambda z: s.clone())
    captured = {}
    real = scl.info_nce

    def spy(a, p, mask, tau, normalize, pos_mask, cross_cloud):
        captured.update(a=a, p=p, mask=mask, pos_mask=pos_mask)
        return real(a, p, mask, tau, normalize, pos_mask, cross_cloud)

    monkeypatch.setattr(scl, "info_nce", spy)
    out = model(_batch(), 0, 0.0)
    expected = extra_positive_mask(s, 0.2, 0.5)
    assert torch.equal(captured["pos_mask"], expected) and expected.any()
    assert out["extra_pos_per_anchor"].item() == pytest.approx(expected.float().sum(-1).mean().item())
    per, valid = real(captured["a"].detach(), captured["p"].detach(), captured["mask"], 0.07, True, expected)
    assert out["loss"].item() == pytest.approx(per[valid].mean().item(), rel=1e-6)
    warm = _stage2(path, total_epochs=10, extra_positives_from_sim=True)      # warm-up: the interval is [0, 1]
    out = warm(_batch(), 0, 0.0)
    assert captured["pos_mask"] is None and out["extra_pos_per_anchor"] == 0


def test_stage2_cross_cloud_negatives_and_the_last_ranks(monkeypatch):
    import pointtune.methods.scl as scl

    model = SCL(SCLConfig.model_validate({**TINY, "stage": 2, "hard_negatives": False, "cross_cloud_negatives": True,
                                          "dilated_ranks": "last"}), 0, 4)
    calls, captured = [], {}
    real_patches, real_nce = scl.patch_indices, scl.info_nce
    monkeypatch.setattr(scl, "patch_indices", lambda *a: calls.append(a) or real_patches(*a))

    def spy(a, p, mask, tau, normalize, pos_mask, cross_cloud):
        captured.update(a=a, p=p, mask=mask, cross_cloud=cross_cloud)
        return real_nce(a, p, mask, tau, normalize, pos_mask, cross_cloud)

    monkeypatch.setattr(scl, "info_nce", spy)
    b, m = 3, TINY["num_patches"]
    out = model(_batch(b=b), 0, 0.0)
    assert calls[0][3:] == (TINY.get("dilation", 2), "last") and captured["cross_cloud"] is True
    assert out["neg_per_anchor"].item() == (m - 1) + (b - 1) * m
    per, _ = real_nce(captured["a"].detach(), captured["p"].detach(), captured["mask"], 0.07, True, None, True)
    assert out["loss"].item() == pytest.approx(per.mean().item(), rel=1e-6)


# --------------------------------------------------------------------------------------------------
# Search spaces and the CLI
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("space", ["scl.yaml", "scl_quick.yaml"])
def test_search_spaces_validate_for_stage2(space):
    from conftest import REPO
    from pointtune.search.space import load_search_space

    loaded = load_search_space(REPO / "search_spaces" / space)
    params = {p.key: p for p in loaded.params}
    assert loaded.method == "scl" and loaded.metric == "val/svm_acc" and loaded.mode == "max"
    assert params["method.stage"].value == 2 and "method.stage1_from" not in params
    assert {"method.temperature", "method.b_l.warmup_epochs", "method.b_l.step_epochs", "method.b_l.delta",
            "method.b_u.delta", "method.threshold_mode", "method.dilated_ranks", "method.extra_positives_from_sim",
            "method.projection_head", "method.cross_cloud_negatives"} <= set(loaded.searched())
    assert params["method.b_u.step_epochs"].same_as == "method.b_l.step_epochs"


def test_stage2_without_stage1_from_plans_its_stage1_run():
    from pointtune.config import plan_prerequisite

    exp = build_config("scl", overrides={"method.stage1.epochs": 4, "method.num_patches": 16, "train.epochs": 9})
    pre = plan_prerequisite(exp)
    s1 = pre.config
    assert pre.name == "stage1" and pre.key == "method.stage1_from"
    assert s1.method.stage == 1 and s1.train.epochs == 4 and s1.method.num_patches == 16
    assert (s1.optim.lr.start, s1.optim.lr.shape, s1.optim.lr.gamma) == (2e-3, "step", 0.8)
    assert s1.optim.lr.step_epochs == pytest.approx(20 / 128) and s1.optim.lr.unit == "fraction"
    assert not pre.stand_in.method.hard_negatives and pre.stand_in.train.epochs == 9
    then = pre.then("runs/s1")
    assert then.method.stage1_from.endswith("/runs/s1") and then.method.stage1_from.startswith("/")
    assert plan_prerequisite(then) is None
    for given in ({"method.stage": 1}, {"method.hard_negatives": False}, {"method.stage1_from": "/x"}):
        assert plan_prerequisite(build_config("scl", overrides=given)) is None
    # extra positives need the scores: the stand-in (no stage-1 network) drops them, the real run keeps them
    pre = plan_prerequisite(build_config("scl", overrides={"method.extra_positives_from_sim": True}))
    assert not pre.stand_in.method.extra_positives_from_sim and pre.then("runs/s1").method.extra_positives_from_sim


def test_a_sweep_hands_its_trials_absolute_stage1_paths(tmp_path, monkeypatch):
    from pathlib import Path

    from conftest import REPO
    from pointtune.search.space import load_search_space
    from pointtune.search.spec import SweepSpec, trial_config
    from pointtune.search.sweep import _absolute_paths

    monkeypatch.chdir(tmp_path)
    spec = SweepSpec(method="scl", space_file=str(REPO / "search_spaces" / "scl_quick.yaml"), sweep_dir="unused",
                     overrides={"method.stage1_from": "runs/s1", "method.temperature": 0.1})
    space = load_search_space(spec.space_file, "scl")
    overrides = _absolute_paths(spec.overrides, trial_config(spec, space.first_corner(), space))
    assert overrides == {"method.stage1_from": str(tmp_path / "runs" / "s1"), "method.temperature": 0.1}
    assert Path(overrides["method.stage1_from"]).is_absolute()
