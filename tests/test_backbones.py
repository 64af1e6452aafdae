"""Backbones: built by name, output shapes, gradients, permutation invariance, registry errors; the
``forward_features`` contract (per-point + global features) and extra per-point input channels."""

import pytest
import torch

from pointtune.backbones import (
    BackboneOutput,
    ClassificationHead,
    backbone_names,
    build_backbone,
    register_backbone,
)

SMALL = {
    "pointnet": {"emb_dims": 32},
    "dgcnn": {"k": 4, "emb_dims": 16},
    "pointnet2_ssg": {"npoints": (16, 8), "nsamples": (8, 8), "radii": (0.3, 0.6), "width": 0.125, "emb_dims": 24},
    "pct": {"channels": 16, "emb_dims": 24, "nsample": 8},  # default npoints: N / 4 and N / 8 centres
}


def cloud(b: int, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, n, 3, generator=g)
    return x / x.norm(dim=-1).amax(dim=1, keepdim=True)[..., None]  # inside the unit sphere


def test_registry_names():
    assert {"pointnet", "dgcnn", "gbnet", "pointnet2_ssg", "pct"} <= set(backbone_names())


@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("pointnet", SMALL["pointnet"]),
        ("pointnet", {**SMALL["pointnet"], "input_transform": True}),
        ("dgcnn", SMALL["dgcnn"]),
        ("dgcnn", {**SMALL["dgcnn"], "pooling": "max"}),
        ("pointnet2_ssg", SMALL["pointnet2_ssg"]),
    ],
)
def test_shape_and_gradients(name, kwargs):
    torch.manual_seed(0)
    model = build_backbone(name, **kwargs)
    out = model(cloud(3, 32))
    assert isinstance(model.out_dim, int)
    assert out.shape == (3, model.out_dim)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{name}: no gradient for {pname}"
        assert torch.isfinite(p.grad).all(), pname
        # The T-Net's last layer starts at zero (identity transform), so the layers before it get exactly
        # zero gradient at initialisation; every other parameter must receive a signal.
        if not (pname.startswith("tnet.") and not pname.startswith("tnet.out")):
            assert p.grad.abs().sum() > 0, f"{name}: zero gradient for {pname}"


def test_out_dims():
    assert build_backbone("pointnet").out_dim == 1024
    assert build_backbone("dgcnn", emb_dims=16).out_dim == 32
    assert build_backbone("dgcnn", emb_dims=16, pooling="max").out_dim == 16
    assert build_backbone("gbnet", emb_dims=16, num_points=32).out_dim == 32  # max || avg
    assert build_backbone("pointnet2_ssg", width=0.125).out_dim == 1024
    assert build_backbone("pct", **SMALL["pct"]).out_dim == 24
    assert build_backbone("pct", **SMALL["pct"], pooling="maxavg").out_dim == 48


def test_edge_features_match_a_loop_over_points_and_neighbours():
    """EdgeConv's input ``[x_j - x_i, x_i]`` (DGCNN, Eq. 7's ``h(x_i, x_j - x_i)``) for the ``k`` nearest
    ``j`` of every ``i`` in the space of ``x`` (or of ``graph``), built point by point, and its gradient."""
    from pointtune.backbones.dgcnn import edge_features

    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 4, 9, generator=g, dtype=torch.float64, requires_grad=True)
    graph = torch.randn(2, 3, 9, generator=g, dtype=torch.float64)
    for space in (None, graph):
        out = edge_features(x, 3, space)
        assert out.shape == (2, 8, 9, 3)
        coords = (x if space is None else space).detach()
        for b in range(2):
            for i in range(9):
                d2 = ((coords[b] - coords[b][:, i : i + 1]) ** 2).sum(0)
                for slot, j in enumerate(d2.argsort(stable=True)[:3].tolist()):
                    want = torch.cat([x[b, :, j] - x[b, :, i], x[b, :, i]])
                    assert torch.equal(out[b, :, i, slot], want), (b, i, slot)
    assert torch.autograd.gradcheck(lambda t: edge_features(t, 3, graph), (x,))


def test_dgcnn_global_feature_is_max_concat_avg():
    dg = build_backbone("dgcnn", k=4, emb_dims=16).eval()
    xyz = cloud(2, 24)
    with torch.no_grad():
        out = dg(xyz)
        x, per_layer = xyz.transpose(1, 2), []
        for conv in dg.edge_convs:
            x = conv(x)
            per_layer.append(x)
        emb = dg.embed(torch.cat(per_layer, dim=1))  # (B, emb_dims, N)
    assert out.shape == (2, 2 * 16)
    torch.testing.assert_close(out[:, :16], emb.amax(-1))
    torch.testing.assert_close(out[:, 16:], emb.mean(-1))


@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("pointnet", SMALL["pointnet"]),
        ("pointnet", {**SMALL["pointnet"], "input_transform": True}),
        ("dgcnn", SMALL["dgcnn"]),
        ("dgcnn", {**SMALL["dgcnn"], "pooling": "max"}),
    ],
)
def test_permutation_invariance(name, kwargs):
    torch.manual_seed(0)
    model = build_backbone(name, **kwargs)
    model.train()
    model(cloud(4, 40, seed=5))  # move BN running statistics away from their initial values
    model.eval()
    xyz = cloud(2, 40, seed=1)
    perm = torch.randperm(40)
    with torch.no_grad():
        torch.testing.assert_close(model(xyz[:, perm]), model(xyz), rtol=1e-5, atol=1e-5)


def test_pointnet2_ssg_runs_with_256_points():
    torch.manual_seed(0)
    model = build_backbone("pointnet2_ssg", npoints=(64, 16), nsamples=(16, 16), width=0.25, emb_dims=64)
    out = model(cloud(2, 256))
    assert out.shape == (2, 64)
    with pytest.raises(ValueError, match="npoints"):
        model(cloud(2, 32))


def test_classification_head():
    head = ClassificationHead(32, 5, hidden=(16, 8), dropout=0.5)
    assert head(torch.randn(4, 32)).shape == (4, 5)
    linears = [m for m in head.modules() if isinstance(m, torch.nn.Linear)]
    assert [lin.bias is None for lin in linears] == [True, True, False]
    assert ClassificationHead(8, 3, hidden=()).eval()(torch.randn(2, 8)).shape == (2, 3)
    with pytest.raises(ValueError):
        ClassificationHead(8, 3, dropout=1.0)


def test_registry_errors():
    with pytest.raises(KeyError, match="pointnet2_ssg"):  # lists the known names
        build_backbone("pointnet3")
    with pytest.raises(TypeError, match=r"'dgcnn'.*'kk'"):
        build_backbone("dgcnn", kk=20)
    with pytest.raises(ValueError, match="pooling"):
        build_backbone("dgcnn", pooling="mean")
    with pytest.raises(ValueError):
        build_backbone("pointnet2_ssg", npoints=(512,))
    with pytest.raises(ValueError, match="register"):
        register_backbone("dgcnn")(torch.nn.Identity)
    with pytest.raises(ValueError, match=r"\(B, N, 3\)"):
        build_backbone("pointnet", emb_dims=8)(torch.randn(2, 3, 10))
    with pytest.raises(ValueError, match="k=4"):
        build_backbone("dgcnn", k=4, emb_dims=8)(torch.randn(2, 3, 3))


# --- forward_features: per-point and global features, extra input channels ---------------------------------

FIRST_LAYER = {  # the weight of each backbone's first layer, which sees the input channels
    "pointnet": lambda m: m.mlp[0].weight,
    "dgcnn": lambda m: m.edge_convs[0].h[0].weight,
    "pointnet2_ssg": lambda m: m.sa1.mlp[0].weight,
    "pct": lambda m: m.input_embed[0].linear.weight,
}


def first_level_points(name: str, kwargs: dict, n: int) -> int:
    """Centres of the first level of a hierarchical backbone (PCT's default: N / 4)."""
    return kwargs["npoints"][0] if name == "pointnet2_ssg" else n // 4


def expected_points(name: str, kwargs: dict, n: int) -> int:
    """M: per-point features at the N inputs, or at the last level's centres (PCT's default: N / 8)."""
    if name == "pointnet2_ssg":
        return kwargs["npoints"][1]
    return n // 8 if name == "pct" else n


def warmed_up(name: str, kwargs: dict, in_features: int = 0) -> torch.nn.Module:
    """The backbone in eval mode, with BN running statistics moved away from their initial values."""
    torch.manual_seed(0)
    model = build_backbone(name, **kwargs, in_features=in_features)
    model.train()
    feats = torch.randn(4, 40, in_features) if in_features else None
    with torch.no_grad():
        model(cloud(4, 40, seed=5), feats)
    return model.eval()


@pytest.mark.parametrize("name", sorted(SMALL))
@pytest.mark.parametrize("n", [32, 48])
def test_forward_features_shapes(name, n):
    torch.manual_seed(0)
    kwargs = SMALL[name]
    model = build_backbone(name, **kwargs)
    xyz = cloud(2, n)
    out = model.forward_features(xyz)
    m = expected_points(name, kwargs, n)
    assert isinstance(out, BackboneOutput)
    assert isinstance(model.point_dim, int) and model.in_features == 0
    assert out.global_feature.shape == (2, model.out_dim)
    assert out.point_features.shape == (2, m, model.point_dim)
    assert out.point_xyz.shape == (2, m, 3)
    assert torch.isfinite(out.point_features).all()
    if name in ("pointnet2_ssg", "pct"):
        m1 = first_level_points(name, kwargs, n)
        assert [tuple(x.shape) for x, _ in out.levels] == [(2, n, 3), (2, m1, 3), (2, m, 3)]
        assert out.levels[0][1] is None  # no extra input channels
        assert out.levels[-1][0] is out.point_xyz and out.levels[-1][1] is out.point_features
        assert out.levels[1][1].shape[:2] == (2, m1)
        # the centres are input points (FPS), so the features sit at real coordinates
        dist = (out.point_xyz.unsqueeze(2) - xyz.unsqueeze(1)).abs().sum(-1).amin(-1)  # (B, M)
        assert (dist == 0).all()
    else:
        assert out.levels == ()
        assert torch.equal(out.point_xyz, xyz)


def test_point_dims():
    assert build_backbone("pointnet", emb_dims=32).point_dim == 32
    assert build_backbone("dgcnn", emb_dims=16).point_dim == 16  # out_dim is 32 (max || avg)
    assert build_backbone("gbnet", emb_dims=16, num_points=32).point_dim == 16
    assert build_backbone("pointnet2_ssg", width=0.125, emb_dims=24).point_dim == 32  # 256 * 0.125
    assert build_backbone("pct", **SMALL["pct"], pooling="maxavg").point_dim == 24  # out_dim is 48


@pytest.mark.parametrize("name", sorted(SMALL))
def test_forward_is_global_feature(name):
    model = warmed_up(name, SMALL[name])
    xyz = cloud(2, 32, seed=2)
    with torch.no_grad():
        torch.testing.assert_close(model(xyz), model.forward_features(xyz).global_feature, rtol=0, atol=0)
        torch.testing.assert_close(model(xyz, None), model(xyz), rtol=0, atol=0)


@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("pointnet", SMALL["pointnet"]),
        ("pointnet", {**SMALL["pointnet"], "input_transform": True}),
        ("dgcnn", SMALL["dgcnn"]),
    ],
)
@pytest.mark.parametrize("in_features", [0, 3])
def test_point_features_permutation_equivariant(name, kwargs, in_features):
    model = warmed_up(name, kwargs, in_features)
    xyz = cloud(2, 40, seed=1)
    feats = torch.randn(2, 40, in_features) if in_features else None
    perm = torch.randperm(40)
    with torch.no_grad():
        out = model.forward_features(xyz, feats)
        out_p = model.forward_features(xyz[:, perm], None if feats is None else feats[:, perm])
    torch.testing.assert_close(out_p.point_features, out.point_features[:, perm], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out_p.point_xyz, out.point_xyz[:, perm], rtol=0, atol=0)
    torch.testing.assert_close(out_p.global_feature, out.global_feature, rtol=1e-5, atol=1e-5)


def test_pointnet2_ssg_permutation_invariance():
    # FPS starts at point 0 and ball query keeps the first `nsample` points of a ball in index order, so
    # PointNet++ is order-invariant only for permutations that keep point 0 in place and with groups large
    # enough to hold every point of a ball (nsample >= points searched); then the centres are the same
    # points in the same order and every group holds the same set.
    kwargs = {**SMALL["pointnet2_ssg"], "nsamples": (32, 16)}
    model = warmed_up("pointnet2_ssg", kwargs)
    xyz = cloud(2, 32, seed=1)
    perm = torch.cat([torch.zeros(1, dtype=torch.long), 1 + torch.randperm(31)])
    with torch.no_grad():
        out, out_p = model.forward_features(xyz), model.forward_features(xyz[:, perm])
    torch.testing.assert_close(out_p.point_xyz, out.point_xyz, rtol=0, atol=0)
    torch.testing.assert_close(out_p.point_features, out.point_features, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out_p.global_feature, out.global_feature, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_in_features(name):
    kwargs = SMALL[name]
    model = warmed_up(name, kwargs, in_features=3)
    assert model.in_features == 3
    # 3 coordinates + 3 extra channels; DGCNN's first layer sees the edge feature [x_j - x_i, x_i] of them
    assert FIRST_LAYER[name](model).shape[1] == (12 if name == "dgcnn" else 6)
    xyz = cloud(2, 32, seed=3)
    normals = torch.nn.functional.normalize(torch.randn(2, 32, 3), dim=-1)
    with torch.no_grad():
        out = model.forward_features(xyz, normals)
        other = model.forward_features(xyz, -normals)
    m = expected_points(name, kwargs, 32)
    assert out.global_feature.shape == (2, model.out_dim)
    assert out.point_features.shape == (2, m, model.point_dim)
    assert not torch.allclose(out.global_feature, other.global_feature)
    assert not torch.allclose(out.point_features, other.point_features)
    if name in ("pointnet2_ssg", "pct"):
        assert out.levels[0][1] is normals
    with pytest.raises(ValueError, match="without features"):
        model(xyz)
    with pytest.raises(ValueError, match=r"\(B, N, in_features\)"):
        model(xyz, normals[..., :2])
    with pytest.raises(ValueError, match="in_features=0"):
        build_backbone(name, **kwargs)(xyz, normals)
    with pytest.raises(ValueError, match="in_features"):
        build_backbone(name, **kwargs, in_features=-1)


@pytest.mark.parametrize("name", sorted(SMALL))
@pytest.mark.parametrize("in_features", [0, 3])
def test_point_features_gradient_reaches_first_layer(name, in_features):
    torch.manual_seed(0)
    model = build_backbone(name, **SMALL[name], in_features=in_features)
    xyz = cloud(3, 32).requires_grad_()
    feats = torch.randn(3, 32, in_features, requires_grad=True) if in_features else None
    model.forward_features(xyz, feats).point_features.square().mean().backward()
    grad = FIRST_LAYER[name](model).grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert xyz.grad is not None and xyz.grad.abs().sum() > 0
    if feats is not None:
        assert feats.grad is not None and feats.grad.abs().sum() > 0


@pytest.mark.parametrize("name", sorted(SMALL))
def test_in_features_from_config(name):
    """``--set method.backbone.in_features=3`` reaches the constructor through the config and the registry."""
    import json

    from pointtune.config import build_config, parse_override

    items = [f"method.backbone.{key}={json.dumps(value)}" for key, value in SMALL[name].items()]
    overrides = dict(parse_override(item) for item in items)
    overrides.update([parse_override(f"method.backbone.name={name}"), parse_override("method.backbone.in_features=3")])
    backbone = build_config("cedr", overrides=overrides).method.backbone
    model = build_backbone(backbone.name, **backbone.kwargs())
    assert model.in_features == 3
    assert model.forward_features(cloud(2, 32), torch.randn(2, 32, 3)).global_feature.shape == (2, model.out_dim)
