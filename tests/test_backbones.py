"""Backbones: built by name, output shapes, gradients, permutation invariance, registry errors."""

import pytest
import torch

from pointtune.backbones import ClassificationHead, backbone_names, build_backbone, register_backbone

SMALL = {
    "pointnet": {"emb_dims": 32},
    "dgcnn": {"k": 4, "emb_dims": 16},
    "pointnet2_ssg": {"npoints": (16, 8), "nsamples": (8, 8), "radii": (0.3, 0.6), "width": 0.125, "emb_dims": 24},
}


def cloud(b: int, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, n, 3, generator=g)
    return x / x.norm(dim=-1).amax(dim=1, keepdim=True)[..., None]  # inside the unit sphere


def test_registry_names():
    assert {"pointnet", "dgcnn", "pointnet2_ssg"} <= set(backbone_names())


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
    assert build_backbone("pointnet2_ssg", width=0.125).out_dim == 1024


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
