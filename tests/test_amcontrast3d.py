"""Tests of AMContrast3D's losses (methods/amcontrast3d.py) against brute-force loops over the paper's equations.

The references below are written from the paper's formulas (Eqs. 1-4, 7, 9-11) and the spec's label mining
(section 2.1) with plain Python loops, ``math`` and scalar torch ops on small float64 tensors, independently of
the vectorised code: neighbours by sorting every other point by distance, the sets N+ / N- by comparing
labels, the sums of Eqs. 1, 2 and 10 term by term. Hand-made scenes (two classes on a line with a known
boundary) pin exact values; small random scenes cover the rest.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from pointtune.methods.amcontrast3d import (
    AMContrast3DConfig,
    am_contrast_loss,
    ambiguity,
    closeness_centralities,
    contrast_terms,
    margins,
    mine_labels,
    mining_k,
    neighbourhoods,
    segmentation_ce,
    stage_labels,
    stage_loss,
    total_loss,
)
from pointtune.ops import fps, gather_points

DT = torch.float64
IGN = -1


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _scene(b: int = 2, n: int = 40, c: int = 3, dim: int = 8, seed: int = 0, ignore_frac: float = 0.0):
    """Random positions in the unit cube, labels by spatial slabs (so there are boundaries), features."""
    g = _gen(seed)
    xyz = torch.rand(b, n, 3, generator=g, dtype=DT)
    labels = (xyz[..., 0] * c).long().clamp_max(c - 1)
    flip = torch.rand(b, n, generator=g) < 0.1
    labels = torch.where(flip, torch.randint(0, c, (b, n), generator=g), labels)
    if ignore_frac:
        labels = torch.where(torch.rand(b, n, generator=g) < ignore_frac, torch.full_like(labels, IGN), labels)
    feats = torch.randn(b, n, dim, generator=g, dtype=DT)
    return xyz, labels, feats


# --------------------------------------------------------------------------------------------------
# Brute-force references
# --------------------------------------------------------------------------------------------------


def _d2(xyz, b, i, j) -> float:
    return sum((float(xyz[b, i, t]) - float(xyz[b, j, t])) ** 2 for t in range(3))


def bf_neighbours(xyz, labels, k, ignore_mode="exclude"):
    """Per (b, i): the others among the K nearest (self dropped), or None for an excluded (ignored) anchor."""
    b_, n = labels.shape
    out = {}
    for b in range(b_):
        for i in range(n):
            if ignore_mode == "exclude" and int(labels[b, i]) == IGN:
                out[b, i] = None
                continue
            others = [j for j in range(n) if j != i and (ignore_mode == "extra_class" or int(labels[b, j]) != IGN)]
            others.sort(key=lambda j: _d2(xyz, b, i, j))
            out[b, i] = others[: min(k, n) - 1]
    return out


def bf_ambiguity(xyz, labels, k, beta, include_self=False, ignore_mode="exclude"):
    """Eqs. 1-4 term by term: {(b, i): (a, n_plus, n_minus, boundary)}."""
    nbrs = bf_neighbours(xyz, labels, k, ignore_mode)
    out = {}
    for (b, i), nb in nbrs.items():
        if nb is None:
            out[b, i] = (0.0, 0, 0, False)
            continue
        intra = [j for j in nb if int(labels[b, j]) == int(labels[b, i])]
        inter = [j for j in nb if int(labels[b, j]) != int(labels[b, i])]
        n_plus = len(intra) + (1 if include_self else 0)     # Eq. 4 counts the point itself in N+ (paper)
        n_minus = len(inter)
        if n_minus == 0:                                       # |N+| = K
            a = 0.0
        elif len(intra) == 0:                                  # |N+| = 1: only the point itself
            a = 1.0
        else:
            d_plus = sum(_d2(xyz, b, i, j) for j in intra)     # self adds (p_i - p_i)^2 = 0
            d_minus = sum(_d2(xyz, b, i, j) for j in inter)
            cc_plus = n_plus / d_plus                          # Eq. 1
            cc_minus = n_minus / d_minus                       # Eq. 2
            a = 1.0 / (1.0 + math.exp(beta * (cc_plus - cc_minus)))   # Eq. 3
        out[b, i] = (a, n_plus, n_minus, n_minus > 0)
    return out, nbrs


def bf_margin(a, mu, nu, kind):
    if kind == "adaptive":
        return mu * a + nu
    if kind == "constant":
        return nu
    return max(0.0, mu * a + nu)


def _cos(u, v):
    return (u * v).sum() / (u.norm() * v.norm())


def bf_loss(xyz, labels, feats, k, beta, mu, nu, tau, kind="adaptive", include_self=False, ignore_mode="exclude"):
    """Eqs. 7, 9, 10 with scalar torch ops (differentiable): mean over the points with a in (0, 1] (by labels)."""
    amb, nbrs = bf_ambiguity(xyz, labels, k, beta, include_self, ignore_mode)
    total, count = feats.sum() * 0.0, 0
    for (b, i), (a, _, n_minus, boundary) in amb.items():
        if not boundary:
            continue
        count += 1
        m = bf_margin(a, mu, nu, kind)
        nb = nbrs[b, i]
        pos = [j for j in nb if int(labels[b, j]) == int(labels[b, i])] + ([i] if include_self else [])
        neg = [j for j in nb if int(labels[b, j]) != int(labels[b, i])]
        emb_pos = [torch.exp((_cos(feats[b, i], feats[b, j]) - m) / tau) for j in pos]   # Eq. 9
        emb_neg = [torch.exp(_cos(feats[b, i], feats[b, j]) / tau) for j in neg]
        if not emb_pos:
            continue                                           # a = 1 without self: zero loss (A2)
        sp = sum(emb_pos)
        total = total - torch.log(sp / (sp + sum(emb_neg)))    # Eq. 10
    return total / max(count, 1)


def bf_mine(xyz, labels, stage_xyz, k_r, c):
    """CBL mining: average the one-hot labels (ignore as class C) of the k_r nearest points, argmax, lowest."""
    b_, m = stage_xyz.shape[:2]
    n = xyz.shape[1]
    out = torch.empty(b_, m, dtype=torch.long)
    for b in range(b_):
        for i in range(m):
            d = [sum((float(stage_xyz[b, i, t]) - float(xyz[b, j, t])) ** 2 for t in range(3)) for j in range(n)]
            near = sorted(range(n), key=lambda j: d[j])[: min(k_r, n)]
            soft = [0.0] * (c + 1)
            for j in near:
                y = int(labels[b, j])
                soft[c if y == IGN else y] += 1.0 / len(near)
            best = max(range(c + 1), key=lambda t: (soft[t], -t))
            out[b, i] = IGN if best == c else best
    return out


def _a_tensor(amb, shape):
    a = torch.zeros(shape, dtype=DT)
    for (b, i), v in amb.items():
        a[b, i] = v[0]
    return a


# --------------------------------------------------------------------------------------------------
# A hand-made scene: two classes on a line, boundary between x = 2.1 and x = 3.3
# --------------------------------------------------------------------------------------------------

LINE_X = [0.0, 1.0, 2.1, 3.3, 4.6, 6.0]
LINE_Y = [0, 0, 0, 1, 1, 1]


def _line(labels=LINE_Y):
    xyz = torch.zeros(1, len(LINE_X), 3, dtype=DT)
    xyz[0, :, 0] = torch.tensor(LINE_X, dtype=DT)
    return xyz, torch.tensor([labels])


def test_line_scene_ambiguity_by_hand():
    # K = 3: two others. x=2.1 has 1.0 (same, d 1.1) and 3.3 (other, d 1.2); x=3.3 has 2.1 (other, 1.2) and
    # 4.6 (same, 1.3); every other point sees only its own class.
    xyz, y = _line()
    beta = 0.5
    nbh = neighbourhoods(xyz, y, k=3)
    a = ambiguity(nbh, beta)
    a2 = 1 / (1 + math.exp(beta * (1 / 1.1 ** 2 - 1 / 1.2 ** 2)))
    a3 = 1 / (1 + math.exp(beta * (1 / 1.3 ** 2 - 1 / 1.2 ** 2)))
    torch.testing.assert_close(a, torch.tensor([[0, 0, a2, a3, 0, 0]], dtype=DT))
    assert a2 < 0.5 < a3                                      # x=3.3's intra neighbour is the farther one
    assert nbh.boundary.tolist() == [[False, False, True, True, False, False]]
    cc_pos, cc_neg = closeness_centralities(nbh)
    torch.testing.assert_close(cc_pos[0, 2], torch.tensor(1 / 1.1 ** 2, dtype=DT))
    torch.testing.assert_close(cc_neg[0, 3], torch.tensor(1 / 1.2 ** 2, dtype=DT))

    # include_self (paper literal): |N+| counts the point itself, so cc+ doubles at x=2.1 and x=3.3.
    a_self = ambiguity(neighbourhoods(xyz, y, k=3, include_self=True), beta)
    a2s = 1 / (1 + math.exp(beta * (2 / 1.1 ** 2 - 1 / 1.2 ** 2)))
    a3s = 1 / (1 + math.exp(beta * (2 / 1.3 ** 2 - 1 / 1.2 ** 2)))
    torch.testing.assert_close(a_self, torch.tensor([[0, 0, a2s, a3s, 0, 0]], dtype=DT))


def test_line_scene_extreme_point_is_one():
    # A lone class-1 point between class-0 points: only itself is intra (|N+| = 1) -> a = 1.
    xyz, y = _line([0, 0, 0, 1, 0, 0])
    for include_self in (False, True):
        nbh = neighbourhoods(xyz, y, k=3, include_self=include_self)
        a = ambiguity(nbh, 0.04)
        assert a[0, 3] == 1.0
        assert nbh.extreme.tolist() == [[False, False, False, True, False, False]]


def test_line_scene_loss_by_hand():
    xyz, y = _line()
    feats = torch.tensor([[[1.0, 0.0], [1.0, 0.2], [1.0, 0.5], [0.3, 1.0], [0.0, 1.0], [0.1, 1.0]]], dtype=DT)
    beta, mu, nu, tau = 0.5, -1.0, 0.5, 0.3
    nbh = neighbourhoods(xyz, y, k=3)
    a = ambiguity(nbh, beta)
    m = margins(a, mu, nu)
    loss = am_contrast_loss(feats, nbh, m, tau)
    f = F.normalize(feats[0], dim=-1)
    terms = []
    for i, j, kk in ((2, 1, 3), (3, 4, 2)):                   # anchor, its positive, its negative
        pos = math.exp((float(f[i] @ f[j]) - float(m[0, i])) / tau)
        neg = math.exp(float(f[i] @ f[kk]) / tau)
        terms.append(-math.log(pos / (pos + neg)))
    assert loss.item() == pytest.approx(sum(terms) / 2, rel=1e-12)


# --------------------------------------------------------------------------------------------------
# Ambiguity against the brute force (random scenes)
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("include_self", [False, True])
@pytest.mark.parametrize("k", [4, 8, 24])
def test_ambiguity_matches_brute_force(include_self, k):
    xyz, y, _ = _scene(seed=k)
    beta = 0.04
    nbh = neighbourhoods(xyz, y, k=k, include_self=include_self)
    a = ambiguity(nbh, beta)
    ref, nbrs = bf_ambiguity(xyz, y, k, beta, include_self)
    torch.testing.assert_close(a, _a_tensor(ref, y.shape))
    for (b, i), (_, n_plus, n_minus, boundary) in ref.items():
        assert int(nbh.n_intra[b, i]) == n_plus and int(nbh.n_inter[b, i]) == n_minus
        assert bool(nbh.boundary[b, i]) == boundary
        got = nbh.idx[b, i].tolist()
        assert sorted(got[1:] if include_self else got) == sorted(nbrs[b, i])
        if include_self:
            assert got[0] == i
        else:
            assert i not in got
    assert nbh.idx.shape[-1] == (k if include_self else k - 1)
    if k <= 8:
        assert 0 < nbh.boundary.sum() < y.numel()            # the scene has inner and boundary points
    assert not a.requires_grad


def test_ambiguity_graded_with_larger_beta_scale():
    # With a small beta, G lies strictly inside (0, 1) at boundary points that have both sets.
    xyz, y, _ = _scene(seed=3)
    nbh = neighbourhoods(xyz, y, k=8)
    a = ambiguity(nbh, 1e-3)
    mixed = nbh.boundary & ~nbh.extreme
    assert mixed.any()
    assert ((a[mixed] > 0) & (a[mixed] < 1)).all()
    assert (a[~nbh.boundary] == 0).all() and (a[nbh.extreme] == 1).all()


def test_no_gradient_through_ambiguity_and_margin():
    xyz, y, feats = _scene(seed=1)
    xyz.requires_grad_(True)
    nbh = neighbourhoods(xyz, y, k=8)
    a = ambiguity(nbh, 0.04)
    assert not a.requires_grad and not nbh.d2.requires_grad
    m_in = a.clone().requires_grad_(True)
    m = margins(m_in, -1.0, 0.5)
    assert not m.requires_grad
    feats.requires_grad_(True)
    loss = am_contrast_loss(feats, nbh, m_in, 0.3)           # a margin tensor with grad: detached inside
    loss.backward()
    assert m_in.grad is None and xyz.grad is None
    assert feats.grad is not None and feats.grad.abs().sum() > 0


def test_duplicate_points_self_dropped_and_finite():
    xyz, y, feats = _scene(b=1, n=20, seed=4)
    xyz[0, 5] = xyz[0, 6] = xyz[0, 7]                          # three coincident points
    y[0, 5], y[0, 6], y[0, 7] = 0, 1, 0
    nbh = neighbourhoods(xyz, y, k=6)
    own = torch.arange(20).view(1, 20, 1)
    assert not (nbh.idx == own).any()
    assert all(len(set(row)) == 5 for row in nbh.idx[0].tolist())
    a = ambiguity(nbh, 0.04)
    assert torch.isfinite(a).all()
    assert nbh.boundary[0, 5] and nbh.boundary[0, 6]
    feats.requires_grad_(True)
    loss = am_contrast_loss(feats, nbh, margins(a), 0.3)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(feats.grad).all()


# --------------------------------------------------------------------------------------------------
# Margins (Eq. 7, Table III)
# --------------------------------------------------------------------------------------------------


def test_margin_variants_reproduce_table_iii():
    a = torch.tensor([0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0], dtype=DT)
    rows = [  # (mu, nu, kind, Table III's m_i)
        (0.0, 0.0, "constant", lambda x: 0.0 * x),
        (0.0, 0.5, "constant", lambda x: 0.5 + 0.0 * x),
        (1.0, 0.0, "adaptive", lambda x: x),
        (-1.0, 1.0, "adaptive", lambda x: 1 - x),
        (-1.0, 0.5, "adaptive", lambda x: 0.5 - x),
        (-1.0, 0.5, "clipped", lambda x: torch.clamp(0.5 - x, min=0)),
    ]
    for mu, nu, kind, formula in rows:
        torch.testing.assert_close(margins(a, mu, nu, kind), formula(a))
    # The mu = 0 rows are also the adaptive generator with mu = 0.
    torch.testing.assert_close(margins(a, 0.0, 0.5, "adaptive"), margins(a, 0.0, 0.5, "constant"))
    # The paper's default: positive below a = nu, zero at nu, negative above (Fig. 1).
    m = margins(a, -1.0, 0.5)
    assert (m[a < 0.5] > 0).all() and m[a == 0.5].item() == 0 and (m[a > 0.5] < 0).all()
    # constant ignores mu
    torch.testing.assert_close(margins(a, 3.0, 0.2, "constant"), torch.full_like(a, 0.2))
    with pytest.raises(ValueError, match="margin"):
        margins(a, -1.0, 0.5, "learned")


# --------------------------------------------------------------------------------------------------
# The contrastive loss against the brute force
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["adaptive", "constant", "clipped"])
@pytest.mark.parametrize("include_self", [False, True])
def test_loss_and_gradient_match_brute_force(kind, include_self):
    xyz, y, feats = _scene(b=2, n=30, seed=7)
    k, beta, mu, nu, tau = 6, 0.04, -1.0, 0.5, 0.3
    f1 = feats.clone().requires_grad_(True)
    f2 = feats.clone().requires_grad_(True)
    nbh = neighbourhoods(xyz, y, k=k, include_self=include_self)
    loss = am_contrast_loss(f1, nbh, margins(ambiguity(nbh, beta), mu, nu, kind), tau)
    ref = bf_loss(xyz, y, f2, k, beta, mu, nu, tau, kind, include_self)
    torch.testing.assert_close(loss, ref)
    loss.backward()
    ref.backward()
    torch.testing.assert_close(f1.grad, f2.grad)
    assert f1.grad.abs().sum() > 0


def test_zero_margin_is_eq5_and_margin_makes_it_harder():
    xyz, y, feats = _scene(seed=2)
    nbh = neighbourhoods(xyz, y, k=8)
    zero = torch.zeros(y.shape, dtype=DT)
    plain = am_contrast_loss(feats, nbh, zero, 0.3)
    ref = bf_loss(xyz, y, feats, 8, 0.04, 0.0, 0.0, 0.3, "constant")
    torch.testing.assert_close(plain, ref)
    harder = am_contrast_loss(feats, nbh, zero + 0.5, 0.3)
    easier = am_contrast_loss(feats, nbh, zero - 0.5, 0.3)
    assert easier < plain < harder


def test_extreme_points_count_but_add_nothing():
    # A2: a lone-class point is in n^s but contributes zero loss and zero gradient (without self).
    xyz, y = _line([0, 0, 0, 1, 0, 0])
    feats = torch.randn(1, 6, 4, generator=_gen(0), dtype=DT, requires_grad=True)
    nbh = neighbourhoods(xyz, y, k=3)
    a = ambiguity(nbh, 0.04)
    assert nbh.boundary.tolist() == [[False, False, True, True, True, True]]   # 5 sees 4.6 and 3.3
    loss = am_contrast_loss(feats, nbh, margins(a), 0.3)
    torch.testing.assert_close(loss, bf_loss(xyz, y, feats, 3, 0.04, -1.0, 0.5, 0.3))
    # Only anchors 2, 4 and 5 (each with one positive) have terms; the sum is divided by n^s = 4.
    two = neighbourhoods(xyz, y, k=3)
    per = []
    for i in (2, 4, 5):
        mask = torch.zeros(1, 6, dtype=torch.bool)
        mask[0, i] = True
        only = type(two)(idx=two.idx, intra=two.intra & mask[..., None], inter=two.inter & mask[..., None],
                         d2=two.d2, anchor=two.anchor & mask, include_self=False, batch_shape=two.batch_shape)
        per.append(am_contrast_loss(feats, only, margins(a), 0.3))
    torch.testing.assert_close(loss, sum(per) / 4)


def test_class_present_once_is_finite():
    xyz, y, feats = _scene(b=1, n=30, seed=5)
    y[:] = 0
    y[0, 10:20] = 1
    y[0, 25] = 2                                              # class 2 appears once
    for include_self in (False, True):
        f = feats.clone().requires_grad_(True)
        nbh = neighbourhoods(xyz, y, k=8, include_self=include_self)
        a = ambiguity(nbh, 0.04)
        assert a[0, 25] == 1.0
        loss = am_contrast_loss(f, nbh, margins(a), 0.3)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(f.grad).all()
        if include_self:                                      # the self pair keeps it in training
            assert f.grad[0, 25].abs().sum() > 0


def test_all_points_one_class():
    xyz, _, feats = _scene(b=2, n=20, seed=6)
    y = torch.zeros(2, 20, dtype=torch.long)
    feats.requires_grad_(True)
    nbh = neighbourhoods(xyz, y, k=8)
    a = ambiguity(nbh, 0.04)
    assert (a == 0).all() and not nbh.boundary.any()
    loss = am_contrast_loss(feats, nbh, margins(a), 0.3)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert (feats.grad == 0).all()


@pytest.mark.parametrize("n", [1, 2, 5])
def test_k_at_least_the_stage_size(n):
    xyz, y, feats = _scene(b=2, n=n, seed=n)
    if n > 1:
        y[:, 0] = 0
        y[:, 1] = 1
    nbh = neighbourhoods(xyz, y, k=24)
    assert nbh.idx.shape == (2, n, n - 1)
    a = ambiguity(nbh, 0.04)
    torch.testing.assert_close(a, _a_tensor(bf_ambiguity(xyz, y, 24, 0.04)[0], y.shape))
    f = feats.clone().requires_grad_(True)
    loss = am_contrast_loss(f, nbh, margins(a), 0.3)
    torch.testing.assert_close(loss, bf_loss(xyz, y, feats, 24, 0.04, -1.0, 0.5, 0.3))
    loss.backward()
    assert torch.isfinite(f.grad).all()
    if n == 1:
        assert loss.item() == 0.0 and not nbh.boundary.any()
    # include_self with K >= N: every point, itself first.
    nbh_s = neighbourhoods(xyz, y, k=24, include_self=True)
    assert nbh_s.idx.shape == (2, n, n) and (nbh_s.idx[..., 0] == torch.arange(n)).all()


# --------------------------------------------------------------------------------------------------
# Ignored points contribute nothing (ignore_mode: exclude)
# --------------------------------------------------------------------------------------------------


def test_ignored_points_match_brute_force():
    xyz, y, feats = _scene(b=2, n=40, seed=8, ignore_frac=0.25)
    assert (y == IGN).any()
    nbh = neighbourhoods(xyz, y, k=8)
    a = ambiguity(nbh, 0.04)
    ref, _ = bf_ambiguity(xyz, y, 8, 0.04)
    torch.testing.assert_close(a, _a_tensor(ref, y.shape))
    assert not nbh.anchor[y == IGN].any() and not nbh.boundary[y == IGN].any()
    torch.testing.assert_close(am_contrast_loss(feats, nbh, margins(a), 0.3),
                               bf_loss(xyz, y, feats, 8, 0.04, -1.0, 0.5, 0.3))


def test_ignored_points_change_nothing():
    xyz, y, feats = _scene(b=1, n=40, seed=9, ignore_frac=0.3)
    ign = y == IGN

    def loss_of(p, f, lab):
        nbh = neighbourhoods(p, lab, k=8)
        return am_contrast_loss(f, nbh, margins(ambiguity(nbh, 0.04)), 0.3)

    base = loss_of(xyz, feats, y)
    # Moving ignored points anywhere and changing their features leaves the loss as it is.
    g = _gen(1)
    xyz2 = torch.where(ign[..., None], torch.rand(xyz.shape, generator=g, dtype=DT), xyz)
    feats2 = torch.where(ign[..., None], 10 * torch.randn(feats.shape, generator=g, dtype=DT), feats)
    torch.testing.assert_close(loss_of(xyz2, feats2, y), base)
    # The same as the scene without them.
    keep = ~ign[0]
    torch.testing.assert_close(loss_of(xyz[:, keep], feats[:, keep], y[:, keep]), base)
    # No gradient reaches them.
    f = feats.clone().requires_grad_(True)
    loss_of(xyz, f, y).backward()
    assert (f.grad[ign] == 0).all() and f.grad[~ign].abs().sum() > 0
    # Under extra_class (the official code) they are one more class and do change the loss.
    nbh = neighbourhoods(xyz, y, k=8, ignore_mode="extra_class")
    extra = am_contrast_loss(feats, nbh, margins(ambiguity(nbh, 0.04)), 0.3)
    torch.testing.assert_close(extra, bf_loss(xyz, y, feats, 8, 0.04, -1.0, 0.5, 0.3, ignore_mode="extra_class"))
    assert nbh.boundary[ign].any()
    assert not torch.allclose(extra, base)


def test_fewer_labelled_points_than_k():
    xyz, y, feats = _scene(b=1, n=12, seed=10)
    y[0, :] = IGN
    y[0, :3] = torch.tensor([0, 1, 0])
    nbh = neighbourhoods(xyz, y, k=8)
    a = ambiguity(nbh, 0.04)
    ref, nbrs = bf_ambiguity(xyz, y, 8, 0.04)
    torch.testing.assert_close(a, _a_tensor(ref, y.shape))
    assert nbh.n_intra[0, :3].tolist() == [1, 0, 1] and nbh.n_inter[0, :3].tolist() == [1, 2, 1]
    torch.testing.assert_close(am_contrast_loss(feats, nbh, margins(a), 0.3),
                               bf_loss(xyz, y, feats, 8, 0.04, -1.0, 0.5, 0.3))


def test_every_point_ignored():
    xyz, _, feats = _scene(b=1, n=10, seed=11)
    y = torch.full((1, 10), IGN)
    feats.requires_grad_(True)
    nbh = neighbourhoods(xyz, y, k=4)
    loss = am_contrast_loss(feats, nbh, margins(ambiguity(nbh, 0.04)), 0.3)
    assert loss.item() == 0.0 and loss.requires_grad


def test_cross_sample_knn_is_one_cloud():
    xyz, y, feats = _scene(b=2, n=20, seed=12)
    nbh = neighbourhoods(xyz, y, k=6, cross_sample=True)
    one = neighbourhoods(xyz.reshape(1, 40, 3), y.reshape(1, 40), k=6)
    torch.testing.assert_close(ambiguity(nbh, 0.04), ambiguity(one, 0.04).reshape(2, 20))
    torch.testing.assert_close(am_contrast_loss(feats, nbh, margins(ambiguity(nbh, 0.04)), 0.3),
                               am_contrast_loss(feats.reshape(1, 40, -1), one, margins(ambiguity(one, 0.04)), 0.3))
    per_sample = neighbourhoods(xyz, y, k=6)
    assert not torch.equal(per_sample.idx.reshape(-1), nbh.idx.reshape(-1))   # the searches differ


# --------------------------------------------------------------------------------------------------
# Label mining (spec 2.1)
# --------------------------------------------------------------------------------------------------


def test_mining_k_is_four_to_the_s():
    assert [mining_k(24000, n) for n in (24000, 6000, 1500, 375)] == [1, 4, 16, 64]
    assert mining_k(10, 100) == 1 and mining_k(10, 1) == 10
    with pytest.raises(ValueError):
        mining_k(10, 0)


def test_mining_on_a_line_by_hand():
    # 16 points at x = 0..15 (slightly stretched, no distance ties), classes 0 for x < 6, 1 from x = 6.
    xs = torch.tensor([i + 0.01 * i * i for i in range(16)], dtype=DT)
    xyz = torch.zeros(1, 16, 3, dtype=DT)
    xyz[0, :, 0] = xs
    y = torch.tensor([[0] * 6 + [1] * 10])
    stage = xyz[:, [0, 5, 6, 8, 15]]
    got = mine_labels(xyz, y, stage, 4, 2)
    # x=5: its 4 nearest are 5, 4, 6, 3 -> three 0s; x=6: 6, 5, 7, 4 (4 is nearer than 8 after stretching)
    # -> two and two, a tie, to the lower class 0; x=8: 8, 7, 9, 6 -> class 1.
    assert got.tolist() == [[0, 0, 0, 1, 1]]
    torch.testing.assert_close(got, bf_mine(xyz, y, stage, 4, 2))
    # Ignored majority -> ignored; a tie between a class and the ignore class -> the class.
    y2 = y.clone()
    y2[0, 3:6] = IGN                                          # x=5 sees 5, 4, 6, 3: three ignored
    got2 = mine_labels(xyz, y2, stage, 4, 2)
    assert got2[0, 1] == IGN and got2[0, 2] == 1              # x=6 sees 6, 5, 7, 4: two 1s, two ignored
    torch.testing.assert_close(got2, bf_mine(xyz, y2, stage, 4, 2))
    assert mine_labels(xyz, y, stage, 1, 2).tolist() == [[0, 0, 1, 1, 1]]   # k_r = 1: the point itself


@pytest.mark.parametrize("k_r", [1, 4, 16, 64])
def test_mining_matches_brute_force(k_r):
    xyz, y, _ = _scene(b=2, n=64, c=4, seed=k_r, ignore_frac=0.2)
    stage = gather_points(xyz, fps(xyz, 16))
    torch.testing.assert_close(mine_labels(xyz, y, stage, k_r, 4), bf_mine(xyz, y, stage, k_r, 4))


def test_stage_labels_keep_stage_zero_and_mine_the_others():
    xyz, y, _ = _scene(b=2, n=64, c=3, seed=13)
    s1 = gather_points(xyz, fps(xyz, 16))
    s2 = gather_points(s1, fps(s1, 4))
    ys = stage_labels(xyz, y, [xyz, s1, s2], 3)
    assert torch.equal(ys[0], y)
    torch.testing.assert_close(ys[1], bf_mine(xyz, y, s1, 4, 3))
    torch.testing.assert_close(ys[2], bf_mine(xyz, y, s2, 16, 3))


def test_mining_rejects_bad_labels():
    xyz, y, _ = _scene(b=1, n=10, c=3, seed=14)
    y[0, 2] = 7
    with pytest.raises(ValueError, match="outside"):
        mine_labels(xyz, y, xyz[:, :4], 2, 3)
    with pytest.raises(TypeError):
        mine_labels(xyz, y.double(), xyz[:, :4], 2, 3)


# --------------------------------------------------------------------------------------------------
# CE, the total (Eq. 11), the config and the per-stage driver
# --------------------------------------------------------------------------------------------------


def test_total_loss_eq11_and_contrast_off():
    ce = torch.tensor(2.0, dtype=DT)
    losses = [torch.tensor(1.0, dtype=DT), torch.tensor(0.5, dtype=DT), torch.tensor(0.25, dtype=DT)]
    torch.testing.assert_close(total_loss(ce, losses, 0.1), torch.tensor(0.1 * 2.0 + 0.9 * 1.75, dtype=DT))
    assert total_loss(ce, losses, 0.1, contrast=False) is ce
    assert total_loss(ce, [], 0.1, contrast=False) is ce
    with pytest.raises(ValueError, match="lambda_ce"):
        total_loss(ce, losses, 1.5)
    with pytest.raises(ValueError, match="no stage loss"):
        total_loss(ce, [], 0.1)


def test_segmentation_ce():
    g = _gen(0)
    logits = torch.randn(2, 10, 4, generator=g, dtype=DT, requires_grad=True)
    y = torch.randint(0, 4, (2, 10), generator=g)
    y[0, :3] = IGN
    keep = y != IGN
    torch.testing.assert_close(segmentation_ce(logits, y), F.cross_entropy(logits[keep], y[keep]))
    none = segmentation_ce(logits, torch.full_like(y, IGN))
    assert none.item() == 0.0 and none.requires_grad
    with pytest.raises(ValueError, match="outside"):
        segmentation_ce(logits, torch.full_like(y, 4))
    # Eq. 12 as printed (A5): - 1/(n C) sum_i sum_c y_ic log p_ic over the n labelled points, by a loop
    logp = torch.log_softmax(logits, dim=-1)
    pairs = [(b, i) for b in range(2) for i in range(10) if y[b, i] != IGN]
    by_loop = -sum(logp[b, i, y[b, i]] for b, i in pairs) / (len(pairs) * 4)
    torch.testing.assert_close(segmentation_ce(logits, y, normalization="paper"), by_loop)
    with pytest.raises(ValueError, match="normalization must be 'mean' or 'paper'"):
        segmentation_ce(logits, y, normalization="sum")


def test_config_defaults_and_validation():
    cfg = AMContrast3DConfig()
    assert (cfg.lambda_ce, cfg.temperature, cfg.beta, cfg.mu, cfg.nu, cfg.k) == (0.1, 0.3, 0.04, -1.0, 0.5, 24)
    assert cfg.stages == [0, 1, 2, 3] and cfg.margin == "adaptive" and cfg.ignore_index == -1
    assert cfg.contrast and not cfg.include_self and cfg.ignore_mode == "exclude" and not cfg.cross_sample_knn
    assert AMContrast3DConfig(stages=2).stages == [0, 1]
    assert AMContrast3DConfig(stages=[3, 1]).stages == [1, 3]
    for bad in ({"stages": []}, {"stages": [1, 1]}, {"stages": [-1]}, {"stages": 0}, {"stages": True},
                {"margin": "learned"}, {"temperature": 0}, {"lambda_ce": 1.2}, {"k": 1}, {"beta": -1},
                {"ignore_mode": "drop"}, {"unknown": 1}):
        with pytest.raises(ValidationError):
            AMContrast3DConfig(**bad)
    undocumented = [name for name, info in AMContrast3DConfig.model_fields.items() if not info.description]
    assert not undocumented


def test_contrast_terms_over_stages():
    xyz, y, _ = _scene(b=2, n=64, c=3, seed=15, ignore_frac=0.1)
    g = _gen(2)
    s1 = gather_points(xyz, fps(xyz, 16))
    s2 = gather_points(s1, fps(s1, 8))
    stages = [(xyz, torch.randn(2, 64, 8, generator=g, dtype=DT, requires_grad=True)),
              (s1, torch.randn(2, 16, 16, generator=g, dtype=DT, requires_grad=True)),
              (s2, torch.randn(2, 8, 32, generator=g, dtype=DT, requires_grad=True))]
    cfg = AMContrast3DConfig(stages=[0, 1, 2], k=6, beta=0.01)
    losses, logs = contrast_terms(xyz, y, stages, 3, cfg)
    assert len(losses) == 3
    y1 = bf_mine(xyz, y, s1, 4, 3)
    torch.testing.assert_close(losses[1], bf_loss(s1, y1, stages[1][1].detach(), 6, 0.01, -1.0, 0.5, 0.3))
    torch.testing.assert_close(losses[0], stage_loss(xyz, stages[0][1], y, cfg)[0])
    assert {"am_s0", "am_s2", "boundary_frac_s1", "ambiguity_s2", "margin_s0", "extreme_frac_s0",
            "neg_margin_frac_s1"} <= set(logs)
    ce = torch.tensor(1.0, dtype=DT)
    total_loss(ce, losses, cfg.lambda_ce).backward()
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for _, f in stages)
    only = contrast_terms(xyz, y, stages, 3, AMContrast3DConfig(stages=[2], k=6, beta=0.01))[0]
    torch.testing.assert_close(only[0], losses[2])
    with pytest.raises(ValueError, match="method.stages"):
        contrast_terms(xyz, y, stages, 3, AMContrast3DConfig(stages=4))


# --------------------------------------------------------------------------------------------------
# The registered method on a tiny PointNeXt
# --------------------------------------------------------------------------------------------------

TINY_NEXT = {"method.backbone.variant": "S", "method.backbone.width": 16, "method.backbone.nsample": 8,
             "method.backbone.radius": 0.2, "method.k": 8}


def _scene_batch(b: int = 2, n: int = 512, classes: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    g = _gen(seed)
    points = torch.rand(b, n, 3, generator=g) * 2.0                       # metres
    seg = (points[..., 0] * classes / 2.0).long().clamp(max=classes - 1)  # slabs along x: real boundaries
    seg[:, :32] = IGN                                                     # unannotated / padding points
    return {"points": points, "color": torch.rand(b, n, 3, generator=g), "height": points[..., 2:],
            "seg": seg}


def _method(classes: int = 4, **overrides):
    from pointtune.config import build_config

    exp = build_config("amcontrast3d", overrides={**TINY_NEXT, **overrides})
    torch.manual_seed(0)
    return exp.method_cls(exp.method, classes, 2)


def test_method_returns_eq11_and_trains_every_parameter():
    model = _method(**{"method.stages": 2})
    batch = _scene_batch()
    out = model(batch, 0, 0.0)
    assert {"loss", "ce", "acc", "am_s0", "am_s1", "ambiguity_s1", "margin_s0"} <= set(out)
    expected = 0.1 * out["ce"] + 0.9 * (out["am_s0"] + out["am_s1"])
    assert torch.allclose(out["loss"], expected, atol=1e-5)
    out["loss"].backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)
    model.eval()
    assert model.predict(batch).shape == (2, 512, 4)


def test_method_without_contrast_is_the_ce_baseline_and_ignores_unlabelled_points():
    model = _method(**{"method.contrast": False}).eval()   # eval: no dropout, fixed BN, same logits twice
    batch = _scene_batch()
    out = model(batch, 0, 0.0)
    assert set(out) == {"loss", "ce", "acc"} and torch.equal(out["loss"], out["ce"])
    logits = model.predict(batch)
    assert torch.allclose(out["ce"], segmentation_ce(logits, batch["seg"]), atol=1e-6)
    relabelled = {**batch, "seg": batch["seg"].clone()}
    relabelled["seg"][:, :32] = IGN                                        # already ignored: unchanged
    assert torch.equal(model(relabelled, 0, 0.0)["loss"], out["loss"])
    contrast = _method(**{"method.stages": 1}).eval()
    first = contrast(batch, 0, 0.0)["loss"]
    moved = {**batch, "seg": batch["seg"].clone()}
    moved["seg"][:, 32:40] = IGN                                           # more ignored points: a different loss
    assert not torch.allclose(contrast(moved, 0, 0.0)["loss"], first)


def test_ce_normalization_reaches_the_loss():
    batch = _scene_batch()
    mean = _method(**{"method.contrast": False}).eval()(batch, 0, 0.0)["ce"]
    paper = _method(**{"method.contrast": False, "method.ce_normalization": "paper"}).eval()(batch, 0, 0.0)["ce"]
    assert torch.allclose(paper, mean / 4, atol=1e-7)


def test_scannet_recipe_by_name():
    """A9: `method.recipe: scannet` gives the ScanNet setting in one key; the run's own keys still win."""
    from pointtune.config import ConfigError, build_config

    exp = build_config("amcontrast3d", overrides={"method.recipe": "scannet"})
    lr = exp.optim.lr
    assert (exp.method.temperature, exp.method.nu, exp.data.name, exp.method.recipe) == (0.5, 0.6, "scannet", "scannet")
    assert (exp.optim.name, exp.optim.weight_decay.start, exp.train.grad_clip) == ("adamw", 1e-4, 10.0)  # shared
    assert [lr.at(e, 100) for e in (0, 69, 70, 89, 90)] == pytest.approx([1e-3, 1e-3, 1e-4, 1e-4, 1e-5])
    assert build_config("amcontrast3d", {"method": {"recipe": "scannet"}}).method.nu == 0.6   # in a file
    assert build_config("amcontrast3d", overrides={"method.recipe": "scannet", "method.nu": 0.7}).method.nu == 0.7
    default = build_config("amcontrast3d")
    assert (default.method.temperature, default.data.name, default.optim.lr.shape) == (0.3, "s3dis", "cosine")
    with pytest.raises(ConfigError, match=r"method.recipe: 'scanet' is not a recipe of amcontrast3d \(known: scannet\)"):
        build_config("amcontrast3d", overrides={"method.recipe": "scanet"})
    with pytest.raises(ConfigError, match=r"method.recipe: 'scannet' is not a recipe of cedr \(known: none\)"):
        build_config("cedr", overrides={"method.recipe": "scannet"})


def test_method_config_errors_name_the_key():
    from pointtune.config import ConfigError, build_config

    with pytest.raises(ValueError, match="method.stages: \\[0, 1, 2, 3, 4\\] asks for stage 4"):
        _method(**{"method.stages": 5})
    with pytest.raises(ValueError, match="method.backbone.name: 'dgcnn' has no forward_seg"):
        _method(**{"method.backbone": {"name": "dgcnn"}})
    with pytest.raises(ConfigError, match="method.lambda_ce"):
        build_config("amcontrast3d", overrides={"method.lambda_ce": 1.5})
    exp = build_config("amcontrast3d", overrides={"method.backbone.width": 16})
    assert exp.method.backbone.name == "pointnext" and exp.method.backbone.inputs == ["color", "height"]
