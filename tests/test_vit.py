"""3D-ViT backbone of DCGLR (``vit3d``, Sec. 3.3, Eqs. 14-16; spec 2.8, A14, A15): patching for any cloud
size, output contract, which permutations it is invariant to, gradients, extra input channels, stochastic
depth, argument validation."""

import pytest
import torch

from pointtune.backbones import BackboneOutput, PointViT, backbone_names, build_backbone
from pointtune.backbones.vit import DropPath, patchify
from pointtune.ops import fps, gather_points, group

SMALL = {"k": 8, "dim": 32, "depth": 2, "heads": 4}


def cloud(b: int, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, n, 3, generator=g)
    return x / x.norm(dim=-1).amax(dim=1, keepdim=True)[..., None]  # inside the unit sphere


def warmed_up(in_features: int = 0, **kwargs) -> PointViT:
    """A small model in eval mode whose BatchNorm running statistics have moved off their initial values."""
    torch.manual_seed(0)
    model = build_backbone("vit3d", **{**SMALL, **kwargs}, in_features=in_features)
    model.train()
    feats = torch.randn(4, 64, in_features) if in_features else None
    with torch.no_grad():
        model(cloud(4, 64, seed=5), feats)
    return model.eval()


def test_registered_with_spec_defaults():
    assert "vit3d" in backbone_names()
    model = build_backbone("vit3d")
    assert isinstance(model, PointViT)
    assert (model.k, model.dim, model.depth, model.heads) == (32, 384, 12, 8)
    assert model.out_dim == model.point_dim == 384 and model.in_features == 0
    assert model.patch_coords == "absolute"
    # the per-point patch MLP is 3 -> 128 -> 256, then Linear 256 -> D
    assert model.patch_embed.mlp[0].weight.shape == (128, 3)
    assert model.patch_embed.proj.weight.shape == (384, 256)
    rates = [block.drop_path.p for block in model.blocks]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.1)
    assert rates == pytest.approx(torch.linspace(0, 0.1, 12).tolist())  # linear, as timm


@pytest.mark.parametrize("patch_coords", ["absolute", "relative"])
@pytest.mark.parametrize("n,s", [(64, 8), (50, 6), (20, 2), (8, 1), (5, 1), (1, 1)])
def test_output_shapes(n, s, patch_coords):
    """S = N // k patches; a cloud with fewer than k points is one patch of all its points (A15)."""
    torch.manual_seed(0)
    model = build_backbone("vit3d", **SMALL, patch_coords=patch_coords)
    xyz = cloud(2, n)
    out = model.forward_features(xyz)  # training mode: BN on the B * S * k points
    assert isinstance(out, BackboneOutput)
    assert out.global_feature.shape == (2, 32)
    assert out.point_features.shape == (2, s, 32)
    assert out.point_xyz.shape == (2, s, 3)
    assert out.levels == ()
    assert torch.isfinite(out.global_feature).all() and torch.isfinite(out.point_features).all()
    # the centres are input points picked by FPS
    torch.testing.assert_close(out.point_xyz, gather_points(xyz, fps(xyz, s)), rtol=0, atol=0)


def test_views_of_different_sizes_share_one_model():
    """The DCGLR views: 2048-point global crops, 409-point local crops, smaller ones, with k = 32."""
    torch.manual_seed(0)
    model = build_backbone("vit3d", dim=32, depth=2, heads=4).eval()
    with torch.no_grad():
        for n, s in [(2048, 64), (409, 12), (100, 3), (20, 1)]:
            out = model.forward_features(cloud(2, n, seed=n))
            assert out.global_feature.shape == (2, 32)
            assert out.point_features.shape == (2, s, 32)


def test_patchify_groups_nearest_points_around_fps_centres():
    xyz = cloud(2, 40, seed=3)
    centres, idx, k = patchify(xyz, 8)
    assert k == 8 and centres.shape == (2, 5, 3) and idx.shape == (2, 5, 8)
    torch.testing.assert_close(centres, gather_points(xyz, fps(xyz, 5)), rtol=0, atol=0)
    d = torch.cdist(centres, xyz)  # (B, S, N)
    chosen = torch.zeros_like(d, dtype=torch.bool).scatter_(-1, idx, True)
    # every patch holds its centre (distance 0) and its points are nearer than every point left out
    assert (d.gather(-1, idx[..., :1]) == 0).all()
    assert (d.masked_fill(~chosen, -1).amax(-1) <= d.masked_fill(chosen, float("inf")).amin(-1)).all()
    # fewer points than k: one patch of all of them
    centres, idx, k = patchify(xyz[:, :5], 8)
    assert k == 5 and centres.shape == (2, 1, 3)
    assert (idx.sort(-1).values == torch.arange(5)).all()


def test_permutation_invariance():
    """What is and is not invariant to the order of the input points.

    ``pointtune.ops.fps`` starts at point 0 of every cloud and picks the farthest point after that, so a
    permutation that keeps point 0 first yields the same centres in the same order (random clouds have no
    distance ties) and kNN the same patches; the patch MLP max-pools over each patch, so the output is the
    same up to float rounding. A permutation that moves point 0 starts FPS elsewhere: other centres, other
    patches, another output (not tested for inequality of features, only of centres). Separately, the
    Transformer has no sequence-order embedding, so the [CLS] output is invariant to the order of the patch
    tokens and the patch outputs follow that order.
    """
    model = warmed_up()
    xyz = cloud(2, 64, seed=1)
    keep_first = torch.cat([torch.zeros(1, dtype=torch.long), 1 + torch.randperm(63)])
    with torch.no_grad():
        out = model.forward_features(xyz)
        out_p = model.forward_features(xyz[:, keep_first])
    torch.testing.assert_close(out_p.point_xyz, out.point_xyz, rtol=0, atol=0)
    torch.testing.assert_close(out_p.point_features, out.point_features, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out_p.global_feature, out.global_feature, rtol=1e-5, atol=1e-5)

    moved = torch.roll(torch.arange(64), 1)  # point 63 first: FPS starts elsewhere
    with torch.no_grad():
        out_m = model.forward_features(xyz[:, moved])
    assert not torch.equal(out_m.point_xyz, out.point_xyz)

    with torch.no_grad():
        tokens, _ = model.tokens(xyz)
        order = torch.randperm(tokens.shape[1])
        enc, enc_p = model.encode(tokens), model.encode(tokens[:, order])
    torch.testing.assert_close(enc_p[:, 0], enc[:, 0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(enc_p[:, 1:], enc[:, 1:][:, order], rtol=1e-5, atol=1e-5)


def test_patch_coords_relative_centres_the_patches():
    """``"relative"``: the patch MLP sees coordinates relative to the centre, so the patch embedding (the
    token before the centre's positional embedding is added) does not move with the cloud; ``"absolute"``
    feeds raw xyz (Eq. 14), so it does."""
    shift = torch.tensor([0.3, -0.2, 0.5])
    xyz = cloud(2, 64, seed=4)
    for coords, invariant in [("relative", True), ("absolute", False)]:
        model = warmed_up(patch_coords=coords)
        with torch.no_grad():
            tok, centres = model.tokens(xyz)
            tok_s, centres_s = model.tokens(xyz + shift)
            patch, patch_s = tok - model.pos_embed(centres), tok_s - model.pos_embed(centres_s)
        torch.testing.assert_close(centres_s, centres + shift)
        assert torch.allclose(patch_s, patch, atol=1e-5) is invariant, coords
        assert not torch.allclose(tok_s, tok, atol=1e-5)  # the centre embedding always moves with the cloud


@pytest.mark.parametrize("patch_coords", ["absolute", "relative"])
def test_gradient_reaches_every_parameter(patch_coords):
    torch.manual_seed(0)
    model = build_backbone("vit3d", **SMALL, patch_coords=patch_coords)
    xyz = cloud(3, 40).requires_grad_()
    out = model.forward_features(xyz)
    (out.global_feature.square().mean() + out.point_features.square().mean()).backward()
    names = [name for name, _ in model.named_parameters()]
    for prefix in ("patch_embed.mlp.", "patch_embed.proj.", "pos_embed.", "cls_token", "cls_pos", "blocks.0.",
                   "blocks.1.", "norm."):
        assert any(name.startswith(prefix) for name in names), prefix
    for name, p in model.named_parameters():
        assert p.grad is not None, f"no gradient for {name}"
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"zero gradient for {name}"
    assert xyz.grad is not None and xyz.grad.abs().sum() > 0


def test_in_features():
    model = warmed_up(in_features=3)
    assert model.in_features == 3
    assert model.patch_embed.mlp[0].weight.shape == (128, 6)  # 3 coordinates + 3 extra channels
    xyz = cloud(2, 40, seed=3)
    normals = torch.nn.functional.normalize(torch.randn(2, 40, 3), dim=-1)
    with torch.no_grad():
        out, other = model.forward_features(xyz, normals), model.forward_features(xyz, -normals)
    assert out.global_feature.shape == (2, 32) and out.point_features.shape == (2, 5, 32)
    assert not torch.allclose(out.global_feature, other.global_feature)
    assert not torch.allclose(out.point_features, other.point_features)
    torch.testing.assert_close(out.point_xyz, other.point_xyz, rtol=0, atol=0)  # patching uses xyz only
    with pytest.raises(ValueError, match="without features"):
        model(xyz)
    with pytest.raises(ValueError, match=r"\(B, N, in_features\)"):
        model(xyz, normals[..., :2])
    with pytest.raises(ValueError, match="in_features=0"):
        build_backbone("vit3d", **SMALL)(xyz, normals)

    model.train()
    feats = normals.clone().requires_grad_()
    model(xyz, feats).square().mean().backward()
    assert feats.grad is not None and feats.grad.abs().sum() > 0


def test_drop_path_only_in_training():
    torch.manual_seed(0)
    model = build_backbone("vit3d", **SMALL, drop_path=0.5)
    xyz = cloud(8, 40, seed=2)
    model.train()
    model(xyz)  # BN statistics
    torch.manual_seed(1)
    a = model(xyz)
    b = model(xyz)
    assert not torch.allclose(a, b)  # different blocks dropped for some clouds
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(xyz), model(xyz), rtol=0, atol=0)


def test_drop_path_module():
    x = torch.randn(64, 5, 4)
    layer = DropPath(0.5)
    torch.testing.assert_close(layer.eval()(x), x, rtol=0, atol=0)
    torch.manual_seed(0)
    y = layer.train()(x)
    kept = (y == 2 * x).all(dim=(1, 2))
    dropped = (y == 0).all(dim=(1, 2))
    assert (kept | dropped).all() and kept.any() and dropped.any()  # whole samples, rescaled by 1 / (1 - p)
    torch.testing.assert_close(DropPath(0.0).train()(x), x, rtol=0, atol=0)
    with pytest.raises(ValueError, match="p"):
        DropPath(1.0)


def test_no_grad_batch_of_one():
    """Eval mode: a single cloud under ``torch.no_grad`` gives what it gives inside a batch (BN uses running
    statistics and attention never mixes clouds)."""
    model = warmed_up()
    xyz = cloud(3, 48, seed=6)
    with torch.no_grad():
        one = model(xyz[:1])
        batch = model(xyz)
    assert one.shape == (1, 32) and not one.requires_grad
    torch.testing.assert_close(one, batch[:1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model(xyz), model.forward_features(xyz).global_feature, rtol=0, atol=0)


def test_global_feature_is_normed_cls_token():
    model = warmed_up()
    xyz = cloud(2, 40, seed=7)
    with torch.no_grad():
        out = model.forward_features(xyz)
        tokens, _ = model.tokens(xyz)
        x = torch.cat([(model.cls_token + model.cls_pos).expand(2, -1, -1), tokens], dim=1)
        for block in model.blocks:
            x = block(x)
        x = model.norm(x)
    torch.testing.assert_close(out.global_feature, x[:, 0], rtol=0, atol=0)
    torch.testing.assert_close(out.point_features, x[:, 1:], rtol=0, atol=0)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"k": 0}, "k must"),
        ({"k": 2.5}, "k must"),
        ({"dim": 0}, "dim must"),
        ({"depth": 0}, "depth must"),
        ({"heads": -1}, "heads must"),
        ({"dim": 30, "heads": 4}, "heads=4"),
        ({"mlp_ratio": 0.0}, "mlp_ratio"),
        ({"mlp_ratio": True}, "mlp_ratio"),
        ({"mlp_ratio": 0.01}, "mlp_ratio"),  # FFN of width int(32 * 0.01) = 0
        ({"drop_path": 1.0}, "drop_path"),
        ({"drop_path": -0.1}, "drop_path"),
        ({"patch_coords": "centred"}, "patch_coords"),
        ({"in_features": -1}, "in_features"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match) as info:
        build_backbone("vit3d", **{**SMALL, **kwargs})
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("vit3d:"), msg


def test_bad_inputs():
    model = build_backbone("vit3d", **SMALL)
    with pytest.raises(TypeError, match=r"'vit3d'.*'patch_size'"):
        build_backbone("vit3d", patch_size=32)
    with pytest.raises(ValueError, match=r"\(B, N, 3\)"):
        model(torch.randn(2, 3, 10))
    with pytest.raises(ValueError, match="N=0"):
        model(torch.randn(2, 0, 3))


def test_built_from_config():
    """``--set method.backbone.name=vit3d`` plus its arguments reach the constructor through the config."""
    import json

    from pointtune.config import build_config, parse_override

    values = {**SMALL, "patch_coords": "relative", "in_features": 3}
    items = [f"method.backbone.{key}={json.dumps(value)}" for key, value in values.items()]
    overrides = dict(parse_override(item) for item in [*items, "method.backbone.name=vit3d"])
    backbone = build_config("cedr", overrides=overrides).method.backbone
    model = build_backbone(backbone.name, **backbone.kwargs())
    assert isinstance(model, PointViT) and model.patch_coords == "relative" and model.in_features == 3
    assert model(cloud(2, 32), torch.randn(2, 32, 3)).shape == (2, 32)


def test_group_is_the_patch_input():
    """The patch MLP input is :func:`pointtune.ops.group` of the kNN patches: raw xyz (``"absolute"``) or xyz
    minus the centre (``"relative"``), with the extra channels after the coordinates."""
    xyz, feats = cloud(1, 24, seed=8), torch.randn(1, 24, 2)
    centres, idx, _ = patchify(xyz, 8)
    absolute = group(xyz, centres, idx, feats, relative=False)
    relative = group(xyz, centres, idx, feats, relative=True)
    assert absolute.shape == (1, 3, 8, 5)
    torch.testing.assert_close(absolute[..., :3] - centres.unsqueeze(2), relative[..., :3])
    for coords, patches in [("absolute", absolute), ("relative", relative)]:
        model = warmed_up(in_features=2, patch_coords=coords)
        with torch.no_grad():
            tokens, _ = model.tokens(xyz, feats)
            expected = model.patch_embed(patches) + model.pos_embed(centres)
        torch.testing.assert_close(tokens, expected, rtol=0, atol=0)
