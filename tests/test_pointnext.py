"""PointNeXt (Qian et al., NeurIPS 2022) segmentation backbone: per-stage shapes of every variant, FPS
indices between stages, decoder coverage, gradients, argument errors, the registry and the ``Backbone``
contract, the building blocks against their formulas, and parameter counts against the paper."""

import json
import time

import pytest
import torch

from pointtune.backbones import BackboneOutput, PointNeXt, PointNeXtOutput, backbone_names, build_backbone
from pointtune.backbones.pointnext import (
    POINTNEXT_VARIANTS,
    InvResMLP,
    LocalAggregation,
    PointNeXtSA,
)
from pointtune.ops import ball_query, gather_points

# A tiny scene-like config: 256 points in a unit cube (metres), radius scaled to that density.
TINY = {"width": 16, "radius": 0.15, "nsample": 8, "in_features": 4, "num_classes": 5}


@pytest.fixture(autouse=True)
def one_thread():
    """These networks are tiny: one intra-op thread is as fast alone and much faster on a CPU shared with
    other jobs, where two OpenMP threads contend (measured: 0.09 s vs 0.7-4.9 s per tiny forward+backward)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def scene(b: int, n: int, seed: int = 0, in_features: int = 4) -> tuple[torch.Tensor, torch.Tensor | None]:
    g = torch.Generator().manual_seed(seed)
    xyz = torch.rand(b, n, 3, generator=g)
    feats = torch.rand(b, n, in_features, generator=g) if in_features else None
    return xyz, feats


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --- shapes -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["S", "B", "L", "XL"])
def test_stage_shapes_of_every_variant(variant):
    torch.manual_seed(0)
    width = POINTNEXT_VARIANTS[variant]["width"]
    model = build_backbone("pointnext", variant=variant, radius=0.15, nsample=8, in_features=4).eval()
    assert model.width == width and model.num_stages == 4
    assert model.stage_dims == [width, 2 * width, 4 * width, 8 * width]
    xyz, feats = scene(2, 256)
    with torch.no_grad():
        out = model.forward_seg(xyz, feats)
    assert isinstance(out, PointNeXtOutput)
    assert out.logits.shape == (2, 256, 13)
    sizes = [256, 64, 16, 4]  # N, N/4, N/16, N/64
    assert [tuple(p.shape) for p, _ in out.stages] == [(2, n, 3) for n in sizes]
    assert [tuple(f.shape) for _, f in out.stages] == [(2, n, c) for n, c in zip(sizes, model.stage_dims)]
    # one sample_idx and encoder level more than stages: the coarsest level N/256 (not decoded)
    assert [tuple(i.shape) for i in out.sample_idx] == [(2, n) for n in sizes + [1]]
    assert [tuple(f.shape) for _, f in out.encoder] == [(2, n, width * 2**s) for s, n in enumerate(sizes + [1])]
    assert all(torch.isfinite(f).all() for _, f in out.stages) and torch.isfinite(out.logits).all()


def test_xl_decoder_widths_are_the_spec_table():
    """spec §2.0: F^s of PointNeXt-XL have 64, 128, 256, 512 channels; the coarsest encoder output 1024."""
    model = build_backbone("pointnext", variant="XL")
    assert model.stage_dims == [64, 128, 256, 512]
    assert model.out_dim == 1024 and model.point_dim == 64
    assert model.blocks_per_stage == (3, 6, 3, 3) and model.strides == (4, 4, 4, 4)


def test_custom_strides_and_depth():
    torch.manual_seed(0)
    model = build_backbone("pointnext", **TINY, blocks=(1, 1, 0), strides=(2, 1, 3))
    xyz, feats = scene(2, 60)
    out = model.forward_seg(xyz, feats)
    assert [p.shape[1] for p, _ in out.encoder] == [60, 30, 30, 10]
    assert len(out.stages) == 3 and [f.shape[-1] for _, f in out.stages] == [16, 32, 64]
    assert torch.equal(out.sample_idx[2], torch.arange(30).expand(2, 30))  # stride 1: the same points


# --- FPS indices, decoder coverage --------------------------------------------------------------------------------


def test_sample_idx_points_into_the_previous_stage():
    torch.manual_seed(0)
    model = build_backbone("pointnext", variant="B", **TINY)
    xyz, feats = scene(3, 512, seed=4)
    out = model.forward_seg(xyz, feats)
    levels = [p for p, _ in out.encoder]
    assert torch.equal(out.sample_idx[0], torch.arange(512).expand(3, 512))
    for s in range(1, len(levels)):
        idx = out.sample_idx[s]
        assert idx.dtype == torch.int64
        assert torch.equal(gather_points(levels[s - 1], idx), levels[s])  # exact coordinates
        assert (idx >= 0).all() and (idx < levels[s - 1].shape[1]).all()
        assert all(len(set(row.tolist())) == idx.shape[1] for row in idx)  # FPS picks distinct points
        # the composed index reads the stage's points straight from the input
        assert torch.equal(gather_points(xyz, out.input_index(s)), levels[s])
    for s in range(len(out.stages)):
        assert out.stages[s][0] is levels[s]
    with pytest.raises(IndexError):
        out.input_index(len(levels))


def test_decoder_features_at_every_input_point():
    torch.manual_seed(0)
    model = build_backbone("pointnext", variant="S", **TINY).eval()
    xyz, feats = scene(2, 256, seed=1)
    with torch.no_grad():
        out = model.forward_seg(xyz, feats)
        p0, f0 = out.stages[0]
        assert torch.equal(p0, xyz)
        assert f0.shape == (2, 256, model.point_dim)
        assert torch.isfinite(f0).all() and (f0.abs().sum(-1) > 0).all()  # ReLU output, not dead everywhere
        # the head is applied point-wise to F^0
        torch.testing.assert_close(out.logits, model.head(f0))
        # changing one input point's colour changes F^0 at that point
        feats2 = feats.clone()
        feats2[0, 7] += 1.0
        f0b = model.forward_seg(xyz, feats2).stages[0][1]
    assert not torch.allclose(f0b[0, 7], f0[0, 7])


# --- gradients and speed ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["S", "B"])
def test_gradient_reaches_every_parameter(variant):
    torch.manual_seed(0)
    model = build_backbone("pointnext", variant=variant, **TINY)
    xyz, feats = scene(2, 256, seed=2)
    xyz.requires_grad_()
    out = model.forward_seg(xyz, feats)
    labels = torch.randint(0, 5, (2, 256))
    loss = torch.nn.functional.cross_entropy(out.logits.reshape(-1, 5), labels.reshape(-1))
    loss = loss + sum(f.square().mean() for _, f in out.stages)  # the contrastive loss reads every F^s
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"no gradient for {name}"
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"zero gradient for {name}"
    assert torch.isfinite(xyz.grad).all() and xyz.grad.abs().sum() > 0  # through the stem and dp


def test_tiny_config_is_fast():
    torch.manual_seed(0)
    model = build_backbone("pointnext", variant="B", **TINY)
    xyz, feats = scene(2, 256)
    best = float("inf")
    for _ in range(3):  # one thread (the fixture above)
        start = time.perf_counter()
        model.forward_seg(xyz, feats).logits.square().mean().backward()
        best = min(best, time.perf_counter() - start)
    assert best < 1.0, f"tiny PointNeXt-B forward+backward took {best:.2f}s"  # ~0.1 s on one busy core


# --- arguments ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"variant": "M"}, "variant"),
        ({"width": 0}, "width"),
        ({"width": 2.5}, "width"),
        ({"blocks": ()}, "blocks"),
        ({"blocks": (1, -1, 0, 0)}, r"blocks\[1\]"),
        ({"strides": (4, 4)}, "strides"),
        ({"strides": (4, 0, 4, 4)}, r"strides\[1\]"),
        ({"radius": 0.0}, "radius must"),
        ({"radius_scaling": -2.0}, "radius_scaling"),
        ({"nsample": 0}, "nsample"),
        ({"expansion": 0}, "expansion"),
        ({"sa_layers": 0}, "sa_layers"),
        ({"sa_residual": "yes"}, "sa_residual"),
        ({"in_features": -1}, "in_features"),
        ({"stem_xyz": False}, "stem_xyz"),
        ({"num_classes": 0}, "num_classes"),
        ({"dropout": 1.0}, "dropout"),
        ({"pooling": "sum"}, "pooling"),
    ],
)
def test_invalid_arguments_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PointNeXt(**kwargs)


def test_invalid_inputs():
    model = build_backbone("pointnext", variant="S", **TINY)
    xyz, feats = scene(2, 256)
    with pytest.raises(ValueError, match="N=200"):
        model.forward_seg(xyz[:, :200], feats[:, :200])
    with pytest.raises(ValueError, match="without features"):
        model.forward_seg(xyz)
    with pytest.raises(ValueError, match=r"\(B, N, in_features\)"):
        model.forward_seg(xyz, feats[..., :3])
    with pytest.raises(ValueError, match=r"\(B, N, 3\)"):
        model.forward_seg(xyz.transpose(1, 2), feats)


# --- registry and the Backbone contract ---------------------------------------------------------------------------


def test_registry_builds_it_by_name():
    assert "pointnext" in backbone_names()
    model = build_backbone("pointnext", variant="L", width=8)
    assert isinstance(model, PointNeXt) and model.variant == "L" and model.blocks_per_stage == (2, 4, 2, 2)
    with pytest.raises(TypeError, match=r"'pointnext'.*'depth'"):
        build_backbone("pointnext", depth=3)


def test_built_from_a_config():
    """``method.backbone.*`` keys (JSON lists for the sequences) reach the constructor."""
    from pointtune.config import build_config, parse_override

    items = {"name": "pointnext", "variant": "B", "width": 16, "blocks": [1, 1, 0, 0], "radius": 0.15}
    overrides = dict(parse_override(f"method.backbone.{k}={json.dumps(v)}") for k, v in items.items())
    overrides.update([parse_override('method.backbone.inputs=["color", "height"]')])
    backbone = build_config("cedr", overrides=overrides).method.backbone
    model = build_backbone(backbone.name, **backbone.kwargs())
    assert model.in_features == 4 and model.blocks_per_stage == (1, 1, 0, 0) and model.width == 16


@pytest.mark.parametrize("pooling,factor", [("max", 1), ("mean", 1), ("maxavg", 2)])
def test_forward_features_contract(pooling, factor):
    torch.manual_seed(0)
    model = build_backbone("pointnext", variant="B", **TINY, pooling=pooling)
    model.train()
    with torch.no_grad():
        model.forward_seg(*scene(2, 256, seed=5))  # move BN statistics off their initial values
    model.eval()
    xyz, feats = scene(2, 256, seed=3)
    with torch.no_grad():
        out = model.forward_features(xyz, feats)
        seg = model.forward_seg(xyz, feats)
        glob = model(xyz, feats)
    assert isinstance(out, BackboneOutput)
    assert model.out_dim == factor * 16 * 2**4 and model.point_dim == 16 and model.in_features == 4
    assert out.global_feature.shape == (2, model.out_dim)
    assert out.point_features.shape == (2, 256, model.point_dim) and torch.equal(out.point_xyz, xyz)
    assert out.levels == ()
    torch.testing.assert_close(out.point_features, seg.stages[0][1], rtol=0, atol=0)
    last = seg.encoder[-1][1]
    expected = {"max": last.amax(1), "mean": last.mean(1), "maxavg": torch.cat([last.amax(1), last.mean(1)], -1)}
    torch.testing.assert_close(out.global_feature, expected[pooling])
    torch.testing.assert_close(glob, out.global_feature, rtol=0, atol=0)


# --- building blocks against their formulas ----------------------------------------------------------------------


def test_local_aggregation_is_mlp_on_normalised_dp_and_neighbour_features():
    """The split-weight evaluation equals ``max_j ReLU(BN(W [(p_j - p_i) / r, f_j]))`` computed naively."""
    torch.manual_seed(0)
    la = LocalAggregation(6, 10, radius=0.3)
    xyz, feats = scene(2, 40, in_features=6)
    centres = xyz[:, :12]
    nbr = ball_query(xyz, centres, 0.3, 5)
    out = la(xyz, centres, nbr, feats)
    dp = (gather_points(xyz, nbr) - centres.unsqueeze(2)) / 0.3
    grouped = torch.cat([dp, gather_points(feats, nbr)], dim=-1)  # (B, M, k, 9)
    h = grouped @ la.linear.weight.t()
    mean, var = h.reshape(-1, 10).mean(0), h.reshape(-1, 10).var(0, unbiased=False)
    h = (h - mean) / torch.sqrt(var + la.bn.eps) * la.bn.weight + la.bn.bias
    torch.testing.assert_close(out, h.relu().amax(2), rtol=1e-5, atol=1e-5)


def test_invresmlp_is_residual_with_expansion():
    torch.manual_seed(0)
    blk = InvResMLP(8, expansion=4, radius=0.3).eval()
    assert blk.pw1[0].weight.shape == (32, 8) and blk.pw2[0].weight.shape == (8, 32)
    xyz, feats = scene(1, 30, in_features=8)
    nbr = ball_query(xyz, xyz, 0.3, 6)
    with torch.no_grad():
        expected = torch.relu(feats + blk.pw2(blk.pw1(blk.la(xyz, xyz, nbr, feats))))
        torch.testing.assert_close(blk(xyz, feats, nbr), expected)


def test_radius_doubles_per_stage():
    model = build_backbone("pointnext", variant="B")
    assert [sa.radius for sa in model.sa] == pytest.approx([0.1, 0.2, 0.4, 0.8])  # SA of stage s: r * 2**(s-1)
    assert model.block_radii == pytest.approx([0.2, 0.4, 0.8, 1.6])  # InvResMLP of stage s: r * 2**s
    assert [blk.la.radius for blk in model.blocks[1]] == pytest.approx([0.4, 0.4])
    assert all(sa.nsample == 32 for sa in model.sa)


def test_set_abstraction_centres_are_fps_points():
    torch.manual_seed(0)
    sa = PointNeXtSA(4, 8, stride=4, radius=0.3, nsample=8)
    xyz, feats = scene(2, 64)
    new_xyz, new_f, idx = sa(xyz, feats)
    assert new_xyz.shape == (2, 16, 3) and new_f.shape == (2, 16, 8) and idx.shape == (2, 16)
    assert torch.equal(gather_points(xyz, idx), new_xyz) and (idx[:, 0] == 0).all()  # FPS starts at point 0


# --- parameter counts ---------------------------------------------------------------------------------------------

# Parameters with the official S3DIS setting (4 input channels: RGB + height, fed to the stem without xyz;
# 13 classes). PAPER: the PointNeXt paper's S3DIS table, rounded to 0.1 M. CONFIG: the "Params.(M)" header of
# the official cfgs/s3dis/pointnext-{s,b,l,xl}.yaml (github.com/guochengqian/PointNeXt), rounded to 0.001 M.
PAPER_M = {"S": 0.8, "B": 3.8, "L": 7.1, "XL": 41.6}
CONFIG_M = {"S": 0.792, "B": 3.828, "L": 7.125, "XL": 41.576}


@pytest.mark.parametrize("variant", ["S", "B", "L", "XL"])
def test_parameter_counts_match_the_paper(variant):
    model = build_backbone("pointnext", variant=variant, in_features=4, stem_xyz=False, num_classes=13)
    millions = n_params(model) / 1e6
    # The paper's figures are rounded to 0.1 M: within half a unit of the last digit (plus float slack).
    assert abs(millions - PAPER_M[variant]) <= 0.05 + 1e-9, millions
    # The 3-decimal figures: B, L and XL agree within their rounding (0.0005 M); S is 1.2k parameters
    # (0.16 %) above, a detail of its residual two-layer SA; 0.5 % bounds every variant.
    assert abs(millions - CONFIG_M[variant]) / CONFIG_M[variant] < 0.005, millions
    # Feeding xyz to the stem as well (the default) adds exactly 3 * width weights.
    with_xyz = build_backbone("pointnext", variant=variant, in_features=4, num_classes=13)
    assert n_params(with_xyz) - n_params(model) == 3 * model.width
