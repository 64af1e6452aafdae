"""Tests of the CEDR method against brute-force loops over the paper's equations.

Every reference below is written directly from the paper's formulas with Python loops and ``math`` on
small float64 tensors, independently of the vectorised code in ``pointtune.methods.cedr``.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from pointtune.method import Task, get_method, method_names
from pointtune.methods.cedr import (
    CEDR,
    CEDRConfig,
    batch_class_centers,
    cedr_loss,
    combine_weights,
    cpcm_class_weights,
    eaa_sample_flags,
    eaa_sample_weights,
    ema_update_centers,
    entropy_bits,
    global_class_centers,
    select_pair_weights,
    weighted_scc_loss,
)

DT = torch.float64
# Labels with several samples in some classes, a singleton class (3: no positives) and B = 10.
LABELS = [0, 1, 0, 2, 1, 0, 2, 3, 1, 0]


# --------------------------------------------------------------------------------------------------
# Brute-force references (plain Python loops over the paper's equations)
# --------------------------------------------------------------------------------------------------


def _rows(t: torch.Tensor) -> list:
    return t.detach().tolist()


def _normalise(z: list[list[float]]) -> list[list[float]]:
    return [[v / math.sqrt(sum(x * x for x in row)) for v in row] for row in z]


def _dot(u: list[float], v: list[float]) -> float:
    return sum(a * b for a, b in zip(u, v))


def ref_eq2(z: torch.Tensor, labels: list[int], tau: float = 1.0) -> float:
    """Eq. 2 per anchor, averaged over anchors with >= 1 positive and >= 1 negative (Eq. 3, batch mean)."""
    Z = _normalise(_rows(z))
    B = len(Z)
    total, anchors = 0.0, 0
    for i in range(B):
        P = [j for j in range(B) if j != i and labels[j] == labels[i]]
        N = [j for j in range(B) if labels[j] != labels[i]]
        if not P or not N:
            continue
        acc = 0.0
        for p in P:
            num = math.exp(_dot(Z[i], Z[p]) / tau)
            den = num + sum(math.exp(_dot(Z[i], Z[n]) / tau) for n in N)
            acc += -math.log(num / den)
        total += acc / len(P)
        anchors += 1
    return total / anchors


def ref_weighted_paper(z, labels, wn, wp, tau=1.0) -> float:
    """Spec 2.8: weights normalised by their means over all negative / positive pairs of the batch."""
    Z = _normalise(_rows(z))
    wn, wp = _rows(wn), _rows(wp)
    B = len(Z)
    neg_pairs = [(k, l) for k in range(B) for l in range(B) if labels[k] != labels[l]]
    pos_pairs = [(k, l) for k in range(B) for l in range(B) if k != l and labels[k] == labels[l]]
    mean_n = sum(wn[k][l] for k, l in neg_pairs) / len(neg_pairs)
    mean_p = sum(wp[k][l] for k, l in pos_pairs) / len(pos_pairs)
    total, anchors = 0.0, 0
    for i in range(B):
        P = [j for j in range(B) if j != i and labels[j] == labels[i]]
        N = [j for j in range(B) if labels[j] != labels[i]]
        if not P or not N:
            continue
        acc = 0.0
        for p in P:
            e_pos = math.exp(_dot(Z[i], Z[p]) / tau)
            den = e_pos + sum(wn[i][n] / mean_n * math.exp(_dot(Z[i], Z[n]) / tau) for n in N)
            acc += wp[i][p] / mean_p * (-math.log(e_pos / den))
        total += acc / len(P)
        anchors += 1
    return total / anchors


def ref_weighted_aggregate(z, labels, wn, wp, tau=1.0) -> float:
    """Literal Eqs. 9/10 per anchor: -log(Pos / (Pos + Neg)) with weighted means Pos and Neg."""
    Z = _normalise(_rows(z))
    wn, wp = _rows(wn), _rows(wp)
    B = len(Z)
    total, anchors = 0.0, 0
    for i in range(B):
        P = [j for j in range(B) if j != i and labels[j] == labels[i]]
        N = [j for j in range(B) if labels[j] != labels[i]]
        if not P or not N:
            continue
        pos = sum(wp[i][p] * math.exp(_dot(Z[i], Z[p]) / tau) for p in P) / sum(wp[i][p] for p in P)
        neg = sum(wn[i][n] * math.exp(_dot(Z[i], Z[n]) / tau) for n in N) / sum(wn[i][n] for n in N)
        total += -math.log(pos / (pos + neg))
        anchors += 1
    return total / anchors


def ref_entropy(logit_row: list[float]) -> float:
    """Eq. 6 with p = softmax(logits), log base 2."""
    m = max(logit_row)
    ex = [math.exp(v - m) for v in logit_row]
    s = sum(ex)
    return -sum((e / s) * math.log2(e / s) for e in ex if e > 0)


def ref_eaa_a(logits, labels, mode="varying", low=1.0, high=2.5, off=1.2, f_out=0.8, f_uns=1.2):
    """Eq. 7 (varying) / Eq. 11 (fixed); normal samples get 1. Also returns the category names."""
    a, kinds = [], []
    for row, y in zip(_rows(logits), labels):
        E = ref_entropy(row)
        pred = max(range(len(row)), key=lambda c: row[c])
        if pred != y and E < low:
            kinds.append("outlier")
            a.append(E if mode == "varying" else f_out)
        elif pred == y and E > high:
            kinds.append("unstable")
            a.append(E - off if mode == "varying" else f_uns)
        else:
            kinds.append("normal")
            a.append(1.0)
    return a, kinds


def ref_select(a: list[float]) -> list[list[float]]:
    """Eq. 8, the four cases written out."""
    B = len(a)
    W = [[0.0] * B for _ in range(B)]
    for i in range(B):
        for j in range(B):
            ai, aj = a[i], a[j]
            if ai >= 1 and aj >= 1:
                W[i][j] = max(ai, aj)
            elif ai >= 1 and aj <= 1:
                W[i][j] = min(ai, aj)
            elif ai <= 1 and aj >= 1:
                W[i][j] = min(ai, aj)
            else:  # ai <= 1 and aj <= 1
                W[i][j] = min(ai, aj)
    return W


def ref_eq4(centers: torch.Tensor, valid: list[bool] | None = None) -> list[list[float]]:
    """Eq. 4 on Euclidean centre distances; 1 on the diagonal and for classes without a centre."""
    C = _rows(centers)
    K = len(C)
    valid = valid or [True] * K
    W = [[1.0] * K for _ in range(K)]
    for i in range(K):
        for j in range(K):
            if i != j and valid[i] and valid[j]:
                d = math.sqrt(sum((a - b) ** 2 for a, b in zip(C[i], C[j])))
                W[i][j] = (math.exp(d) + math.exp(-d)) / math.exp(d)
    return W


def ref_method2(centers: torch.Tensor, margin: float = 0.8) -> list[list[float]]:
    """CPCM method 2: each class's nearest class pair, if d_min <= margin * d_second, gets Eq. 4."""
    C = _rows(centers)
    K = len(C)
    full = ref_eq4(centers)
    W = [[1.0] * K for _ in range(K)]
    for i in range(K):
        ds = sorted((math.sqrt(sum((a - b) ** 2 for a, b in zip(C[i], C[j]))), j) for j in range(K) if j != i)
        (d1, j1), (d2, _) = ds[0], ds[1]
        if d1 <= margin * d2:
            W[i][j1] = full[i][j1]
            W[j1][i] = full[j1][i]
    return W


def ref_centers(z: torch.Tensor, labels: list[int], K: int):
    Z = _rows(z)
    out, present = [], []
    for c in range(K):
        members = [Z[i] for i in range(len(Z)) if labels[i] == c]
        present.append(bool(members))
        out.append([sum(col) / len(members) for col in zip(*members)] if members else [0.0] * len(Z[0]))
    return out, present


def hand_logits(K: int = 8) -> tuple[torch.Tensor, list[int], list[str]]:
    """Hand-built logits (K = 8, max entropy 3 bits) hitting every EAA case, with their expected kinds."""
    rows, labels, kinds = [], [], []

    def add(row, y, kind):
        rows.append(row)
        labels.append(y)
        kinds.append(kind)

    confident_wrong = [0.0] * K
    confident_wrong[3] = 9.0
    add(confident_wrong, 0, "outlier")                     # wrong, E ~ 0.0 bits
    mild_wrong = [0.0] * K
    mild_wrong[2] = 4.0
    add(mild_wrong, 1, "outlier")                          # wrong, E ~ 0.9 bits
    flat_right = [0.0] * K
    flat_right[1] = 0.2
    add(flat_right, 1, "unstable")                         # right, E ~ 3.0 bits
    flat_right2 = [0.1 * c for c in range(K)]
    add(flat_right2, K - 1, "unstable")                    # right, E ~ 2.9 bits
    flat_wrong = [0.0] * K
    flat_wrong[4] = 0.2
    add(flat_wrong, 0, "normal")                           # wrong but uncertain: normal
    confident_right = [0.0] * K
    confident_right[2] = 9.0
    add(confident_right, 2, "normal")                      # right and certain: normal
    medium_right = [0.0] * K
    medium_right[0], medium_right[5] = 3.0, 2.5
    add(medium_right, 0, "normal")                         # right, E between 1 and 2.5
    medium_wrong = [0.0] * K
    medium_wrong[6], medium_wrong[0] = 3.0, 2.8
    add(medium_wrong, 0, "normal")                         # wrong, E >= 1
    confident_right0 = [0.0] * K
    confident_right0[0] = 8.0
    add(confident_right0, 0, "normal")
    add(list(mild_wrong), 2, "normal")                     # right (class 2), E ~ 0.9
    return torch.tensor(rows, dtype=DT), labels, kinds


def tiny_cfg(**kw) -> CEDRConfig:
    return CEDRConfig.model_validate({"backbone": {"name": "pointnet", "emb_dims": 32}, **kw})


# --------------------------------------------------------------------------------------------------
# Registration and config
# --------------------------------------------------------------------------------------------------


def test_registered_and_contract_attributes():
    assert "cedr" in method_names()
    assert get_method("cedr") is CEDR
    assert CEDR.task is Task.CLASSIFICATION and CEDR.Config is CEDRConfig
    cfg = CEDRConfig()
    assert cfg.name == "cedr" and cfg.backbone.name == "dgcnn"
    assert (cfg.lambda_con.start, cfg.temperature, cfg.ent_low, cfg.ent_high) == (0.1, 1.0, 1.0, 2.5)
    assert cfg.unstable_offset == 1.2 and cfg.lambda_con.shape == "constant"
    assert (cfg.combine, cfg.form, cfg.cpcm_method) == ("l2", "paper", 1)
    assert (cfg.eaa_mode, cfg.centers) == ("varying", "batch")
    assert cfg.label_smoothing == 0.2 and cfg.projection == "linear"
    assert cfg.gather is False and "global batch" in CEDRConfig.model_fields["gather"].description


@pytest.mark.parametrize(
    "bad",
    [
        {"ent_low": 3.0, "ent_high": 2.5},
        {"temperature": 0.0},
        {"temperature": -0.1},
        {"label_smoothing": 1.0},
        {"label_smoothing": -0.1},
        {"lambda_con": -0.1},
        {"center_momentum": 1.0},
        {"center_momentum": 0.0},
        {"lamda_con": 0.1},           # unknown key (typo)
        {"cpcm_method": 3},
        {"combine": "max"},
        {"name": "other"},
    ],
)
def test_config_rejects_invalid(bad):
    with pytest.raises(ValidationError):
        CEDRConfig.model_validate(bad)


def test_config_threshold_error_names_both_keys():
    with pytest.raises(ValidationError) as err:
        CEDRConfig(ent_low=3.0, ent_high=2.0)
    assert "ent_low" in str(err.value) and "ent_high" in str(err.value)


# --------------------------------------------------------------------------------------------------
# EAA: Eqs. 6, 7, 8, 11
# --------------------------------------------------------------------------------------------------


def test_entropy_bits_eq6():
    torch.manual_seed(0)
    logits = torch.randn(9, 4, dtype=DT) * 3
    logits[0] = torch.tensor([100.0, 0.0, 0.0, 0.0], dtype=DT)   # p ~ one-hot: E ~ 0
    logits[1] = 0.0                                              # uniform: E = log2 K
    got = entropy_bits(logits)
    assert got.shape == (9,) and not got.requires_grad
    want = [ref_entropy(r) for r in _rows(logits)]
    torch.testing.assert_close(got, torch.tensor(want, dtype=DT), rtol=0, atol=1e-12)
    assert abs(float(got[1]) - 2.0) < 1e-12
    with pytest.raises(ValueError):
        entropy_bits(torch.zeros(4))


def test_eaa_flags_and_varying_weights_eq7():
    logits, labels, kinds = hand_logits()
    y = torch.tensor(labels)
    a_ref, kinds_ref = ref_eaa_a(logits, labels, "varying")
    assert kinds_ref == kinds                      # the hand-built cases hit what they claim
    outlier, unstable, ent = eaa_sample_flags(logits, y)
    assert outlier.tolist() == [k == "outlier" for k in kinds]
    assert unstable.tolist() == [k == "unstable" for k in kinds]
    a = eaa_sample_weights(logits, y, mode="varying")
    torch.testing.assert_close(a, torch.tensor(a_ref, dtype=DT), rtol=0, atol=1e-12)
    assert all(float(a[i]) < 1 for i, k in enumerate(kinds) if k == "outlier")
    assert all(float(a[i]) > 1.3 for i, k in enumerate(kinds) if k == "unstable")
    assert all(float(a[i]) == 1.0 for i, k in enumerate(kinds) if k == "normal")


def test_eaa_fixed_weights_eq11_and_custom_thresholds():
    logits, labels, _ = hand_logits()
    y = torch.tensor(labels)
    a = eaa_sample_weights(logits, y, mode="fixed", fixed_outlier=0.8, fixed_unstable=1.2)
    a_ref, _ = ref_eaa_a(logits, labels, "fixed")
    assert a.tolist() == pytest.approx(a_ref, abs=1e-12)
    assert sorted(set(a.tolist())) == [0.8, 1.0, 1.2]
    # other thresholds and offset
    a2 = eaa_sample_weights(logits, y, ent_low=0.5, ent_high=2.0, mode="varying", unstable_offset=1.0)
    a2_ref, _ = ref_eaa_a(logits, labels, "varying", low=0.5, high=2.0, off=1.0)
    assert a2.tolist() == pytest.approx(a2_ref, abs=1e-12)
    with pytest.raises(ValueError):
        eaa_sample_weights(logits, y, mode="other")
    with pytest.raises(ValueError):
        eaa_sample_weights(logits, y[:-1])


def test_select_pair_weights_eq8():
    a = [0.3, 0.95, 1.0, 1.0, 1.5, 2.2, 0.0, 1.31]
    got = select_pair_weights(torch.tensor(a, dtype=DT))
    assert got.shape == (8, 8)
    assert got.tolist() == ref_select(a)
    # a pair with an outlier takes the smaller weight; otherwise the larger
    assert float(got[0, 5]) == 0.3 and float(got[4, 5]) == 2.2 and float(got[2, 4]) == 1.5
    with pytest.raises(ValueError):
        select_pair_weights(torch.ones(2, 2))


# --------------------------------------------------------------------------------------------------
# CPCM: Eq. 4, method 2, class centres, EMA
# --------------------------------------------------------------------------------------------------


def test_cpcm_class_weights_eq4():
    torch.manual_seed(1)
    centers = torch.randn(4, 5, dtype=DT) * 0.5
    got = cpcm_class_weights(centers)
    assert got.shape == (4, 4)
    torch.testing.assert_close(got, torch.tensor(ref_eq4(centers), dtype=DT), rtol=0, atol=1e-12)
    assert torch.equal(got, got.t())
    off = got[~torch.eye(4, dtype=torch.bool)]
    assert bool((off > 1).all() and (off <= 2).all())
    # Fig. 10 scale: d = 0.37 -> W ~ 1.48
    pair = torch.tensor([[0.0, 0.0], [0.37, 0.0]], dtype=DT)
    assert float(cpcm_class_weights(pair)[0, 1]) == pytest.approx(1 + math.exp(-0.74), abs=1e-12)
    # a class without a centre gets weight 1 in every pair
    valid = torch.tensor([True, False, True, True])
    got_v = cpcm_class_weights(centers, valid)
    torch.testing.assert_close(got_v, torch.tensor(ref_eq4(centers, valid.tolist()), dtype=DT), rtol=0, atol=1e-12)
    with pytest.raises(ValueError):
        cpcm_class_weights(centers, method=3)
    with pytest.raises(ValueError):
        cpcm_class_weights(centers[0])


def test_cpcm_method2_mining():
    # Classes 0 and 1 are close (0.3) and far from the others: mined. Classes 2, 3, 4 form a near-equilateral
    # triangle (sides 1.0, 1.03, 1.03): no nearest class beats 0.8 x the second nearest, so none is mined.
    centers = torch.tensor([[0.0, 0.0], [0.3, 0.0], [5.0, 0.0], [6.0, 0.0], [5.5, 0.9]], dtype=DT)
    got = cpcm_class_weights(centers, method=2, margin=0.8)
    want = ref_method2(centers, 0.8)
    torch.testing.assert_close(got, torch.tensor(want, dtype=DT), rtol=0, atol=1e-12)
    assert float(got[0, 1]) > 1 and float(got[1, 0]) > 1
    assert float(got[2, 3]) == float(got[2, 4]) == float(got[3, 4]) == 1.0
    assert float(got[0, 2]) == 1.0                       # not the nearest pair of either class
    torch.manual_seed(2)
    for _ in range(5):
        c = torch.randn(4, 3, dtype=DT)
        torch.testing.assert_close(cpcm_class_weights(c, method=2), torch.tensor(ref_method2(c), dtype=DT),
                                   rtol=0, atol=1e-12)


def test_batch_class_centers():
    torch.manual_seed(3)
    z = torch.randn(10, 5, dtype=DT, requires_grad=True)
    centers, present = batch_class_centers(z, torch.tensor(LABELS), 5)
    want, want_present = ref_centers(z, LABELS, 5)
    assert present.tolist() == want_present == [True, True, True, True, False]
    torch.testing.assert_close(centers, torch.tensor(want, dtype=DT), rtol=0, atol=1e-12)
    assert not centers.requires_grad
    with pytest.raises(ValueError):
        batch_class_centers(z, torch.tensor(LABELS), 3)


def test_ema_center_update_semantics():
    K, D, m = 4, 3, 0.9
    memory = torch.zeros(K, D, dtype=DT)
    seen = torch.zeros(K, dtype=torch.bool)
    c1 = torch.arange(K * D, dtype=DT).reshape(K, D)
    p1 = torch.tensor([True, True, False, False])
    memory, seen = ema_update_centers(memory, seen, c1, p1, m)
    # first batch containing a class initialises it; absent classes stay unset
    torch.testing.assert_close(memory[:2], c1[:2])
    assert memory[2:].abs().sum() == 0 and seen.tolist() == [True, True, False, False]
    c2 = -torch.ones(K, D, dtype=DT)
    p2 = torch.tensor([True, False, True, False])
    old = memory.clone()
    memory, seen = ema_update_centers(memory, seen, c2, p2, m)
    torch.testing.assert_close(memory[0], m * old[0] + (1 - m) * c2[0])      # seen + present: blend
    torch.testing.assert_close(memory[1], old[1])                             # seen + absent: keep
    torch.testing.assert_close(memory[2], c2[2])                              # first time: initialise
    torch.testing.assert_close(memory[3], old[3])                             # never seen
    assert seen.tolist() == [True, True, True, False]
    with pytest.raises(ValueError):
        ema_update_centers(memory, seen, c2, p2, 1.0)


# --------------------------------------------------------------------------------------------------
# Combination (S3) and the contrastive loss (Eq. 2, spec 2.8, aggregate)
# --------------------------------------------------------------------------------------------------


def test_combine_weights_s3():
    torch.manual_seed(4)
    wc = 1 + torch.rand(6, 6, dtype=DT)
    we = torch.rand(6, 6, dtype=DT) * 2
    got = combine_weights(wc, we, "l2")
    for i in range(6):
        for j in range(6):
            want = math.sqrt(float(wc[i, j]) ** 2 + float(we[i, j]) ** 2)
            assert float(got[i, j]) == pytest.approx(want, abs=1e-12)
    torch.testing.assert_close(combine_weights(wc, we, "product"), wc * we)
    torch.testing.assert_close(combine_weights(wc, we, "sum"), wc + we)
    assert combine_weights(None, we) is not None and torch.equal(combine_weights(None, we), we)
    assert torch.equal(combine_weights(wc, None), wc) and combine_weights(None, None) is None
    with pytest.raises(ValueError):
        combine_weights(wc, we, "max")


@pytest.mark.parametrize("tau", [1.0, 0.5])
def test_scc_uniform_is_eq2(tau):
    torch.manual_seed(5)
    z = torch.randn(10, 5, dtype=DT)
    y = torch.tensor(LABELS)
    want = ref_eq2(z, LABELS, tau)
    got = weighted_scc_loss(z, y, temperature=tau)
    assert float(got) == pytest.approx(want, rel=1e-12, abs=1e-12)
    # explicit uniform weights, of any constant scale, give exactly Eq. 2 too
    w = torch.full((10, 10), 3.7, dtype=DT)
    assert float(weighted_scc_loss(z, y, w, w, tau)) == pytest.approx(want, rel=1e-12)


def test_scc_weighted_paper_form_spec28():
    torch.manual_seed(6)
    z = torch.randn(10, 5, dtype=DT)
    y = torch.tensor(LABELS)
    wn = 0.2 + 2 * torch.rand(10, 10, dtype=DT)
    wp = 0.1 + 2 * torch.rand(10, 10, dtype=DT)
    got = weighted_scc_loss(z, y, wn, wp, temperature=0.7, form="paper")
    assert float(got) == pytest.approx(ref_weighted_paper(z, LABELS, wn, wp, 0.7), rel=1e-12)
    # only negatives weighted
    ones = torch.ones(10, 10, dtype=DT)
    got_n = weighted_scc_loss(z, y, wn, None, temperature=1.0)
    assert float(got_n) == pytest.approx(ref_weighted_paper(z, LABELS, wn, ones, 1.0), rel=1e-12)


def test_scc_aggregate_form():
    torch.manual_seed(7)
    z = torch.randn(10, 5, dtype=DT)
    y = torch.tensor(LABELS)
    wn = 0.2 + 2 * torch.rand(10, 10, dtype=DT)
    wp = 0.1 + 2 * torch.rand(10, 10, dtype=DT)
    got = weighted_scc_loss(z, y, wn, wp, temperature=0.5, form="aggregate")
    assert float(got) == pytest.approx(ref_weighted_aggregate(z, LABELS, wn, wp, 0.5), rel=1e-12)
    ones = torch.ones(10, 10, dtype=DT)
    got_u = weighted_scc_loss(z, y, None, None, form="aggregate")
    assert float(got_u) == pytest.approx(ref_weighted_aggregate(z, LABELS, ones, ones), rel=1e-12)
    # the aggregate form averages the negatives, so it is not Eq. 2
    assert abs(float(got_u) - ref_eq2(z, LABELS)) > 1e-3


def test_scc_zero_weight_outlier_and_no_valid_anchor():
    torch.manual_seed(8)
    y = torch.tensor(LABELS)
    z = torch.randn(10, 5, dtype=DT, requires_grad=True)
    # an outlier with a = 0 removes its pairs without NaNs
    a = torch.ones(10, dtype=DT)
    a[2] = 0.0
    w = select_pair_weights(a)
    loss = weighted_scc_loss(z, y, w, w)
    assert float(loss.detach()) == pytest.approx(ref_weighted_paper(z, LABELS, w, w), rel=1e-12)
    loss.backward()
    assert torch.isfinite(z.grad).all()
    # no anchor has both a positive and a negative: a zero that keeps the graph
    for labels in ([0, 1, 2, 3], [2, 2, 2, 2]):
        zz = torch.randn(4, 5, dtype=DT, requires_grad=True)
        out = weighted_scc_loss(zz, torch.tensor(labels))
        assert float(out.detach()) == 0.0 and out.requires_grad
        out.backward()
        assert torch.equal(zz.grad, torch.zeros_like(zz))


def test_scc_rejects_bad_inputs():
    z = torch.randn(4, 3)
    y = torch.tensor([0, 0, 1, 1])
    with pytest.raises(ValueError):
        weighted_scc_loss(z, y[:3])
    with pytest.raises(ValueError):
        weighted_scc_loss(z, y, torch.ones(3, 3))
    with pytest.raises(ValueError):
        weighted_scc_loss(z, y, temperature=0.0)
    with pytest.raises(ValueError):
        weighted_scc_loss(z, y, form="supcon")


def test_weights_carry_no_gradient():
    torch.manual_seed(9)
    y = torch.tensor(LABELS)
    z = torch.randn(10, 5, dtype=DT, requires_grad=True)
    wn = (1 + torch.rand(10, 10, dtype=DT)).requires_grad_()
    wp = (1 + torch.rand(10, 10, dtype=DT)).requires_grad_()
    weighted_scc_loss(z, y, wn, wp).backward()
    assert wn.grad is None and wp.grad is None and z.grad is not None

    # in the composed loss the SCC term has no gradient path to the logits (entropies are detached) and
    # its gradient w.r.t. z equals that of the same loss with the weights precomputed as constants
    logits, labels, _ = hand_logits()
    yb = torch.tensor(labels)
    logits = logits.clone().requires_grad_()
    zb = torch.randn(10, 5, dtype=DT, requires_grad=True)
    cfg = tiny_cfg(use_cpcm=True, use_eaa=True)
    scc = cedr_loss(zb, logits, yb, cfg)["scc"]
    assert torch.autograd.grad(scc, logits, retain_graph=True, allow_unused=True)[0] is None
    g_z = torch.autograd.grad(scc, zb)[0]

    zn = F.normalize(zb.detach(), dim=1)
    centers, present = batch_class_centers(zn, yb, 8)
    w_c = cpcm_class_weights(centers, present)[yb][:, yb]
    w_e = select_pair_weights(eaa_sample_weights(logits.detach(), yb))
    z2 = zb.detach().clone().requires_grad_()
    scc2 = weighted_scc_loss(z2, yb, combine_weights(w_c, w_e, "l2"), w_e)
    g_z2 = torch.autograd.grad(scc2, z2)[0]
    torch.testing.assert_close(g_z, g_z2, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------------------------------
# The total loss (Eq. 3) and the schedule
# --------------------------------------------------------------------------------------------------


def test_cedr_loss_full_composition_matches_loops():
    """CE + lambda * weighted SCC with CPCM (Eq. 4 on batch centres), EAA (Eqs. 6-8) and S3, all by loops."""
    torch.manual_seed(10)
    logits, labels, kinds = hand_logits()
    y = torch.tensor(labels)
    z = torch.randn(10, 5, dtype=DT)
    cfg = tiny_cfg(temperature=0.8, lambda_con=0.3)
    out = cedr_loss(z, logits, y, cfg)

    Z = _normalise(_rows(z))
    C, present = ref_centers(torch.tensor(Z, dtype=DT), labels, 8)
    Wc = ref_eq4(torch.tensor(C, dtype=DT), present)
    a, _ = ref_eaa_a(logits, labels)
    We = ref_select(a)
    B = 10
    wn = [[math.sqrt(Wc[labels[i]][labels[j]] ** 2 + We[i][j] ** 2) for j in range(B)] for i in range(B)]
    scc_ref = ref_weighted_paper(z, labels, torch.tensor(wn, dtype=DT), torch.tensor(We, dtype=DT), 0.8)
    ce_ref = float(F.cross_entropy(logits, y, label_smoothing=0.2))
    assert float(out["scc"]) == pytest.approx(scc_ref, rel=1e-12)
    assert float(out["ce"]) == pytest.approx(ce_ref, rel=1e-12)
    assert float(out["loss"]) == pytest.approx(ce_ref + 0.3 * scc_ref, rel=1e-12)
    assert float(out["outlier_frac"]) == pytest.approx(kinds.count("outlier") / B)
    assert float(out["unstable_frac"]) == pytest.approx(kinds.count("unstable") / B)


def test_cedr_loss_switches_and_start_epochs():
    torch.manual_seed(11)
    logits, labels, _ = hand_logits()
    y = torch.tensor(labels)
    z = torch.randn(10, 5, dtype=DT)
    ce = F.cross_entropy(logits, y, label_smoothing=0.2)
    off = cedr_loss(z, logits, y, tiny_cfg(use_scc=False))
    assert float(off["loss"]) == float(ce) and float(off["scc"]) == 0.0
    plain = cedr_loss(z, logits, y, tiny_cfg(use_cpcm=False, use_eaa=False))
    assert float(plain["scc"]) == pytest.approx(ref_eq2(z, labels), rel=1e-12)
    assert float(plain["outlier_frac"]) == 0.0
    # before the start epochs a module is off
    late = tiny_cfg(cpcm_start_epoch=5, eaa_start_epoch=3)
    assert float(cedr_loss(z, logits, y, late, epoch=2)["scc"]) == pytest.approx(float(plain["scc"]), rel=1e-12)
    only_eaa = cedr_loss(z, logits, y, tiny_cfg(use_cpcm=False), epoch=0)
    assert float(cedr_loss(z, logits, y, late, epoch=4)["scc"]) == pytest.approx(float(only_eaa["scc"]), rel=1e-12)
    full = cedr_loss(z, logits, y, tiny_cfg())
    assert float(cedr_loss(z, logits, y, late, epoch=5)["scc"]) == pytest.approx(float(full["scc"]), rel=1e-12)
    assert float(full["scc"]) != pytest.approx(float(plain["scc"]), rel=1e-6)


def test_lambda_linear_ramp():
    """A16: lambda ramps linearly per iteration from lambda_con.start to .end (a Schedule); the loss uses it."""
    ramp = tiny_cfg(lambda_con={"start": 0.1, "end": 0.2, "shape": "linear"}).lambda_con
    assert [ramp.at(p * 4, 4) for p in (0.0, 0.25, 0.5, 1.0, 1.5)] == pytest.approx([0.1, 0.125, 0.15, 0.2, 0.2])
    assert all(tiny_cfg().lambda_con.at(p, 4) == 0.1 for p in (0.0, 2.0, 4.0))   # the paper: constant
    logits, labels, _ = hand_logits()
    z = torch.randn(10, 5, dtype=DT)
    out = cedr_loss(z, logits, torch.tensor(labels), tiny_cfg(), lambda_con=0.15)
    assert float(out["lambda_con"]) == pytest.approx(0.15)
    assert float(out["loss"]) == pytest.approx(float(out["ce"] + 0.15 * out["scc"]), rel=1e-12)
    assert float(cedr_loss(z, logits, torch.tensor(labels), tiny_cfg())["lambda_con"]) == pytest.approx(0.1)


def test_module_follows_the_lambda_schedule():
    """CEDR.forward evaluates lambda_con at the run's progress: half-way through 4 epochs of a linear ramp."""
    torch.manual_seed(0)
    cfg = tiny_cfg(lambda_con={"start": 0.1, "end": 0.3, "shape": "linear"})
    model = CEDR(cfg, num_classes=3, total_epochs=4)
    batch = {"points": torch.randn(6, 32, 3), "label": torch.tensor([0, 1, 2, 0, 1, 2])}
    assert float(model(batch, epoch=2, progress=0.5)["lambda_con"]) == pytest.approx(0.2)
    assert float(model(batch, epoch=0, progress=0.0)["lambda_con"]) == pytest.approx(0.1)


# --------------------------------------------------------------------------------------------------
# The module
# --------------------------------------------------------------------------------------------------


def _batch(B: int = 8, N: int = 64) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(12)
    return {"points": torch.randn(B, N, 3, generator=g), "label": torch.tensor([0, 1, 0, 2, 1, 0, 2, 3][:B])}


@pytest.mark.parametrize(
    "extra", [{}, {"projection": "mlp2", "centers": "ema", "cpcm_method": 2, "form": "aggregate"}]
)
def test_module_forward_backward(extra):
    torch.manual_seed(13)
    model = CEDR(tiny_cfg(**extra), num_classes=4, total_epochs=2)
    model.train()
    batch = _batch()
    out = model(batch, epoch=0, progress=0.3)
    assert set(out) == {"loss", "ce", "scc", "lambda_con", "outlier_frac", "unstable_frac", "acc"}   # no logits
    for key in out:
        assert out[key].dim() == 0 and torch.isfinite(out[key]), key
    assert not out["acc"].requires_grad and 0.0 <= float(out["acc"]) <= 1.0
    out["loss"].backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    model.eval()
    logits = model.predict(batch)
    assert logits.shape == (8, 4)
    torch.testing.assert_close(logits, model.cls_head(model.backbone(batch["points"])))
    feats = model.embed(batch)
    assert feats.shape == (8, model.backbone.out_dim) == (8, 32) and not feats.requires_grad   # I, D = emb_dims
    torch.testing.assert_close(feats, model.backbone(batch["points"]))
    assert model.encoder() is model.backbone


def test_module_acc_is_the_batch_accuracy_of_the_training_logits():
    torch.manual_seed(16)
    model = CEDR(tiny_cfg(head_dropout=0.0), num_classes=4, total_epochs=1)
    captured = []
    model.cls_head.register_forward_hook(lambda mod, inp, out: captured.append(out.detach()))
    batch = _batch()
    out = model(batch, 0, 0.0)
    want = (captured[-1].argmax(1) == batch["label"]).double().mean()
    assert float(out["acc"]) == pytest.approx(float(want))
    # an easy case: a head that always predicts class 0 is right on 3 of the 8 samples of _batch()
    with torch.no_grad():
        model.cls_head.net[-1].weight.zero_()
        model.cls_head.net[-1].bias.copy_(torch.tensor([5.0, 0.0, 0.0, 0.0]))
    assert float(model(batch, 0, 0.0)["acc"]) == pytest.approx(3 / 8)


@pytest.mark.parametrize("switches", [{"use_scc": False, "use_cpcm": False, "use_eaa": False}, {"use_scc": False}])
def test_module_all_off_is_plain_cross_entropy(switches):
    torch.manual_seed(14)
    model = CEDR(tiny_cfg(**switches), num_classes=4, total_epochs=1)
    assert model.proj_head is None                                 # never built without SCC: no unused parameter
    assert not any(name.startswith("proj_head") for name, _ in model.named_parameters())
    captured = []
    model.cls_head.register_forward_hook(lambda mod, inp, out: captured.append(out.detach()))
    batch = _batch()
    out = model(batch, epoch=0, progress=0.0)
    want = F.cross_entropy(captured[-1], batch["label"], label_smoothing=0.2)
    assert float(out["loss"].detach()) == pytest.approx(float(want), rel=1e-6)
    assert float(out["scc"]) == 0.0 and float(out["outlier_frac"]) == 0.0 and float(out["unstable_frac"]) == 0.0
    out["loss"].backward()
    assert all(p.grad is not None for p in model.parameters())     # every parameter is used at every step


def test_module_without_scc_loads_a_checkpoint_that_has_a_projection_head():
    torch.manual_seed(17)
    with_head = CEDR(tiny_cfg(), num_classes=4, total_epochs=1)
    without = CEDR(tiny_cfg(use_scc=False), num_classes=4, total_epochs=1)
    without.load_state_dict(with_head.state_dict())                # strict: only proj_head.* is dropped
    torch.testing.assert_close(without.cls_head.net[-1].weight, with_head.cls_head.net[-1].weight)
    state = with_head.state_dict()
    state["cls_head.extra"] = torch.zeros(1)
    with pytest.raises(RuntimeError, match="cls_head.extra"):      # any other unexpected key still fails
        without.load_state_dict(state)


def test_cedr_loss_without_projections():
    logits, labels, _ = hand_logits()
    y = torch.tensor(labels)
    out = cedr_loss(None, logits, y, tiny_cfg(use_scc=False))
    want = F.cross_entropy(logits, y, label_smoothing=0.2)
    assert float(out["loss"]) == pytest.approx(float(want), rel=1e-12) and float(out["scc"]) == 0.0
    with pytest.raises(ValueError, match="use_scc"):
        cedr_loss(None, logits, y, tiny_cfg())


def test_ddp_options_and_single_process_collectives():
    model = CEDR(tiny_cfg(centers="ema"), num_classes=4, total_epochs=1)
    # EMA centres are all-reduced by the method itself: DDP must not overwrite them with rank 0's copy
    assert model.ddp_options() == {"find_unused_parameters": False, "forward_sync_buffers": False}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.after_step(1, 10)                                        # single process: BatchNorm averaging is a no-op
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # one process: the global centres are the batch centres, and gather changes nothing
    z = torch.randn(10, 5, dtype=DT)
    y = torch.tensor(LABELS)
    for got, want in zip(global_class_centers(z, y, 5), batch_class_centers(z, y, 5)):
        torch.testing.assert_close(got, want)
    with pytest.raises(ValueError):
        global_class_centers(z, y[:-1], 5)
    logits = torch.randn(10, 4, dtype=DT, generator=torch.Generator().manual_seed(3)) * 2
    for key, value in cedr_loss(z, logits, y, tiny_cfg(), gather=True).items():
        assert float(value) == pytest.approx(float(cedr_loss(z, logits, y, tiny_cfg())[key]), rel=1e-12), key


def test_module_ema_buffers():
    torch.manual_seed(15)
    model = CEDR(tiny_cfg(centers="ema", center_momentum=0.9), num_classes=5, total_epochs=1)
    assert "center_memory" in model.state_dict() and "center_seen" in model.state_dict()
    captured = []
    model.proj_head.register_forward_hook(lambda mod, inp, out: captured.append(F.normalize(out.detach(), dim=1)))
    b1 = _batch()                                                  # classes 0..3 present, 4 absent
    model(b1, 0, 0.0)
    c1, p1 = batch_class_centers(captured[-1], b1["label"], 5)
    assert model.center_seen.tolist() == [True, True, True, True, False]
    torch.testing.assert_close(model.center_memory[p1], c1[p1])
    b2 = {"points": torch.randn(4, 64, 3), "label": torch.tensor([0, 0, 4, 4])}
    model(b2, 0, 0.0)
    c2, _ = batch_class_centers(captured[-1], b2["label"], 5)
    torch.testing.assert_close(model.center_memory[0], 0.9 * c1[0] + 0.1 * c2[0])
    torch.testing.assert_close(model.center_memory[1], c1[1])
    torch.testing.assert_close(model.center_memory[4], c2[4])
    assert model.center_seen.all()
    # evaluation-mode forwards do not touch the memory
    before = model.center_memory.clone()
    model.eval()
    model(b2, 0, 0.0)
    assert torch.equal(model.center_memory, before)
