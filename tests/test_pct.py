"""PCT backbone (pointtune.backbones.pct): the official configuration's parameter count, offset attention
(Eqs. 7-9), centre counts that follow N, permutation invariance, argument errors, and PCT inside DCGLR (a
training step on views of different sizes; its 2-worker run is test_dcglr_runs' sweep trial)."""

import pytest
import torch

from pointtune.backbones import PCT, ClassificationHead, build_backbone
from pointtune.backbones.pct import OffsetAttention, SampleAndGroup, offset_attention_map
from pointtune.ops import fps

TINY = {"channels": 16, "emb_dims": 24, "nsample": 8}


def cloud(b: int, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, n, 3, generator=g)
    return x / x.norm(dim=-1).amax(dim=1, keepdim=True)[..., None]  # inside the unit sphere


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def warmed_up(**kwargs) -> PCT:
    """A PCT in eval mode whose BatchNorm running statistics moved away from their initial values."""
    torch.manual_seed(0)
    model = PCT(**kwargs).train()
    with torch.no_grad():
        model(cloud(4, 64, seed=5))
    return model.eval()


def test_official_classification_parameter_count():
    # The official ModelNet40 network, layer by layer (Strawberry-Eat-Mango/PCT_Pytorch model.py at 0199a3b:
    # Pct lines 25-49, Local_op 6-12, Point_Transformer_Last 77-90, SA_Layer 111-121; the same layers as
    # MenghaoGuo/PCT networks/cls/pct.py at 0e3429a, Point_Transformer2 lines 34-56). BN: 2 per channel.
    #   input embedding  conv1 3x64, bn1, conv2 64x64, bn2                            =     4,544
    #   gather_local_0   conv 128x128, bn, conv 128x128, bn                           =    33,280
    #   gather_local_1   conv 256x256, bn, conv 256x256, bn                           =   132,096
    #   pt_last          conv1 256x256, bn1, conv2 256x256, bn2                       =   132,096
    #   4 x SA_Layer     q = k 256x64 (tied), v 256x256 + 256, trans 256x256 + 256, bn = 4 x 148,480
    #   conv_fuse        1280x1024, bn                                                 = 1,312,768
    #   encoder                                                                        = 2,208,704
    #   classifier       linear1 1024x512, bn6, linear2 512x256 + 256, bn7, linear3 256x40 + 40 = 667,432
    #   total 2,876,136: the paper's "2.88M" parameters for PCT (its table of computational requirements).
    model = PCT(npoints=(512, 256))
    parts = {"input_embed": 4_544, "sg1": 33_280, "sg2": 132_096, "pre_attention": 132_096,
             "attention": 4 * 148_480, "fuse": 1_312_768}
    assert {name: n_params(getattr(model, name)) for name in parts} == parts
    assert n_params(model) == 2_208_704 == sum(parts.values())
    # pointtune's head has no bias in its hidden layers; the official linear2 has one (256 parameters)
    head = ClassificationHead(model.out_dim, 40)
    assert n_params(model) + n_params(head) + 256 == 2_876_136


def test_official_sizes_at_1024_points():
    model = PCT(npoints=(512, 256))
    assert model.centres(1024) == (512, 256) and model.out_dim == model.point_dim == 1024
    torch.manual_seed(0)
    out = build_backbone("pct", npoints=[512, 256], **TINY).forward_features(cloud(2, 1024))
    assert [tuple(x.shape) for x, _ in out.levels] == [(2, 1024, 3), (2, 512, 3), (2, 256, 3)]
    assert out.point_features.shape == (2, 256, 24) and out.global_feature.shape == (2, 24)


@pytest.mark.parametrize("n,centres", [(2048, (512, 256)), (1024, (256, 128)), (409, (102, 51)), (20, (5, 2)),
                                       (4, (1, 1))])
def test_default_centres_follow_n(n, centres):
    """N/4 and N/8 (spec dcglr.md 2.9): the official 512 / 256 at DCGLR's 2048 points, and a local crop of 409
    points or a tiny view goes through too (a stage with fewer than nsample points groups all of them)."""
    model = warmed_up(**TINY)
    assert model.centres(n) == centres
    with torch.no_grad():
        out = model.forward_features(cloud(2, n))
    assert out.point_xyz.shape == (2, centres[1], 3) and out.point_features.shape == (2, centres[1], 24)
    assert torch.isfinite(out.global_feature).all()
    # the centres are input points (FPS of FPS)
    assert (out.point_xyz[:, :, None, :] == out.levels[0][0][:, None, :, :]).all(-1).any(-1).all()


def test_absolute_centres_larger_than_n_name_npoints():
    model = PCT(npoints=(512, 256), **TINY)
    with pytest.raises(ValueError, match=r"npoints\[0\]=512 .* N=409") as err:
        model(cloud(2, 409))
    assert "\n" not in str(err.value)
    mixed = PCT(npoints=(64, 0.5), **TINY)  # kinds mixed: checked per N
    assert mixed.centres(100) == (64, 50)
    with pytest.raises(ValueError, match=r"npoints=\[64, 0.5\] gives 128 centres in stage 2 but only 64"):
        mixed(cloud(2, 256))


def test_global_feature_is_max_pool_or_max_avg():
    xyz = cloud(2, 64, seed=3)
    for pooling, width in (("max", 24), ("maxavg", 48)):
        model = warmed_up(**TINY, pooling=pooling)
        with torch.no_grad():
            out = model.forward_features(xyz)
        emb = out.point_features
        assert model.out_dim == width and out.global_feature.shape == (2, width)
        expected = emb.amax(1) if pooling == "max" else torch.cat([emb.amax(1), emb.mean(1)], dim=1)
        torch.testing.assert_close(out.global_feature, expected, rtol=0, atol=0)


def test_attention_map_is_eq9_in_the_official_orientation():
    g = torch.Generator().manual_seed(1)
    q = torch.randn(2, 4, 7, generator=g, dtype=torch.float64)
    energy = q.transpose(1, 2) @ q  # tied query / key weights: symmetric
    a = offset_attention_map(energy)
    # Eq. 9: softmax over the first index, l1 over the second, so every point's weights sum to 1
    torch.testing.assert_close(a.sum(-1), torch.ones(2, 7, dtype=torch.float64))
    literal = torch.empty_like(energy)
    for i in range(7):
        for j in range(7):
            literal[:, i, j] = energy[:, i, j].exp() / energy[:, :, j].exp().sum(-1)
    torch.testing.assert_close(a, literal / literal.sum(-1, keepdim=True))
    # the authors' code: softmax over the last axis, l1 over axis 1, then x_v @ attention (so transposed)
    official = energy.softmax(-1)
    official = official / (1e-9 + official.sum(1, keepdim=True))
    torch.testing.assert_close(a.transpose(1, 2), official)
    assert not torch.allclose(a, official)  # the orientation matters


def test_offset_attention_is_permutation_equivariant_and_residual():
    torch.manual_seed(0)
    layer = OffsetAttention(16)
    with torch.no_grad():
        layer(torch.randn(4, 30, 16))  # training mode: BN running statistics move from their initial values
    layer.eval()
    x = torch.randn(2, 30, 16)
    perm = torch.randperm(30)
    with torch.no_grad():
        out = layer(x)
        torch.testing.assert_close(layer(x[:, perm]), out[:, perm], rtol=1e-5, atol=1e-5)
        # Eq. 7: F_out - F_in = LBR(F_in - F_sa) >= 0 after the ReLU
        assert (out - x >= -1e-6).all() and not torch.allclose(out, x)
    assert layer.qk.out_features == 4 and layer.qk.bias is None  # d_a = d_e / 4, one weight for Q and K


def test_sample_and_group_is_eq10_centre_by_centre():
    """Eq. 10 one centre at a time: the ``nsample`` nearest points of an FPS centre p (p included), features
    ``[F(q) - F(p), F(p)]`` through the two LBRs (eval mode: row by row), max over the neighbours."""
    torch.manual_seed(0)
    sg = SampleAndGroup(5, 8, nsample=4).eval()
    xyz, feats = cloud(2, 20, seed=4), torch.randn(2, 20, 5)
    with torch.no_grad():
        centres, out = sg(xyz, feats, 6)
        for b in range(2):
            for i, p in enumerate(fps(xyz, 6)[b].tolist()):
                near = (xyz[b] - xyz[b, p]).square().sum(-1).argsort()[:4]
                assert near[0] == p and torch.equal(centres[b, i], xyz[b, p])
                pairs = torch.cat([feats[b, near] - feats[b, p], feats[b, p].expand(4, 5)], dim=-1)
                torch.testing.assert_close(out[b, i], sg.mlp(pairs).amax(0))


@pytest.mark.parametrize("pooling", ["max", "maxavg"])
def test_invariant_to_permutations_that_keep_the_fps_start(pooling):
    # FPS starts at point 0: permutations keeping point 0 first pick the same centres in the same order, and
    # the kNN groups are the same sets, so per-centre and global features are unchanged.
    model = warmed_up(**TINY, pooling=pooling)
    xyz = cloud(2, 64, seed=1)
    perm = torch.cat([torch.zeros(1, dtype=torch.long), 1 + torch.randperm(63)])
    with torch.no_grad():
        out, out_p = model.forward_features(xyz), model.forward_features(xyz[:, perm])
    torch.testing.assert_close(out_p.point_xyz, out.point_xyz, rtol=0, atol=0)
    torch.testing.assert_close(out_p.point_features, out.point_features, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out_p.global_feature, out.global_feature, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("in_features", [0, 3])
def test_gradients_reach_every_layer(in_features):
    torch.manual_seed(0)
    model = PCT(**TINY, in_features=in_features)
    xyz = cloud(3, 48).requires_grad_()
    feats = torch.randn(3, 48, in_features, requires_grad=True) if in_features else None
    model(xyz, feats).square().mean().backward()
    assert model.input_embed[0].linear.weight.shape[1] == 3 + in_features
    # V's bias and the LBR convolution's bias add the same vector to every point before a training-mode
    # BatchNorm, which removes it: their gradient is zero up to rounding (kept for the official count).
    cancelled = {f"attention.{i}.{name}" for i in range(4) for name in ("v.bias", "lbr.linear.bias")}
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        if name not in cancelled:
            assert p.grad.abs().sum() > 0, f"zero gradient for {name}"
    assert xyz.grad.abs().sum() > 0
    if feats is not None:
        assert feats.grad.abs().sum() > 0


@pytest.mark.parametrize("kwargs,pattern", [
    ({"npoints": (512,)}, r"npoints must have 2 entries"),
    ({"npoints": 0.25}, r"npoints must have 2 entries"),
    ({"npoints": (0.25, 1.5)}, r"npoints\[1\] as a fraction of N must lie in \(0, 1\]"),
    ({"npoints": (0, 256)}, r"npoints\[0\] must be a positive int"),
    ({"npoints": ("512", 256)}, r"npoints\[0\] must be a positive int"),
    ({"npoints": (256, 512)}, r"npoints must not increase"),
    ({"npoints": (0.125, 0.25)}, r"npoints must not increase"),
    ({"nsample": 0}, r"nsample must be a positive int"),
    ({"channels": 30}, r"channels must be a multiple of 4"),
    ({"channels": 0}, r"channels must be a positive int"),
    ({"emb_dims": 0}, r"emb_dims must be a positive int"),
    ({"pooling": "mean"}, r"pooling must be 'max' or 'maxavg'"),
    ({"in_features": -1}, r"in_features must be a non-negative int"),
])
def test_bad_arguments_raise_one_line_errors(kwargs, pattern):
    with pytest.raises(ValueError, match=r"^pct: " + pattern) as err:
        build_backbone("pct", **kwargs)
    assert "\n" not in str(err.value)


def test_bad_inputs_raise():
    model = PCT(**TINY)
    with pytest.raises(ValueError, match=r"pct: expected floating point coordinates of shape \(B, N, 3\)"):
        model(torch.randn(2, 3, 40))
    with pytest.raises(ValueError, match="in_features=0"):
        model(cloud(2, 40), torch.randn(2, 40, 3))
    with pytest.raises(TypeError, match=r"'pct'.*'k'"):
        build_backbone("pct", k=20)


# --- PCT in DCGLR ------------------------------------------------------------------------------------------

TINY_DCGLR = {"backbone": {"name": "pct", **TINY}, "out_dim": 16, "proj_hidden": 32, "proj_bottleneck": 8,
              "n_local_crops": 2, "n_multires": 1}


def test_dcglr_trains_pct_on_views_of_every_size():
    from pointtune.config import build_config
    from pointtune.method import get_method

    exp = build_config("dcglr", overrides={f"method.{k}": v for k, v in TINY_DCGLR.items()})
    assert exp.method.backbone.name == "pct"
    torch.manual_seed(3)
    model = get_method("dcglr")(exp.method, 0, 1).train()
    assert isinstance(model.student.backbone, PCT) and isinstance(model.teacher.backbone, PCT)
    opt = torch.optim.SGD(model.student.parameters(), lr=0.1)
    batch = {"points": cloud(4, 96, seed=7), "label": torch.zeros(4, dtype=torch.long)}
    sizes = []
    hook = model.student.backbone.register_forward_hook(lambda m, args, out: sizes.append(args[0].shape[1]))
    out = model(batch, 0, 0.0)
    hook.remove()
    assert min(sizes) < 96 * 0.5 < max(sizes)  # local crops (19-48 points) and global crops went through
    before = [p.detach().clone() for p in model.student.backbone.parameters()]
    opt.zero_grad()
    out["loss"].backward()
    opt.step()
    model.after_step(1, 1)
    assert torch.isfinite(out["loss"])
    assert any(not torch.equal(a, p) for a, p in zip(before, model.student.backbone.parameters()))
    model.eval()
    with torch.no_grad():
        assert model.embed(batch).shape == (4, 24)
        assert model.embed_points(batch).shape == (4, 96, 24)
