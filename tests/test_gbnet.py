"""GBNet (pointtune.backbones.gbnet): the authors' parameter count, shapes, gradients, the geometric point
descriptor, (non-)invariance to the order of the points, extra input channels, argument errors and the config.
Its two-worker data-parallel CEDR run is test_checkpoints' ``two_worker_run`` (checkpoints rebuilt and fine-tuned
from it).

The authors' code is github.com/ShiQiu0419/GBNet at a71232ea584c313589ae3d81b67ea3a7f970b364; ``model.py:L`` and
``main.py:L`` below are lines of its files."""

import pytest
import torch

from helpers import one_line_error
from pointtune.backbones import ClassificationHead, GBNet, build_backbone
from pointtune.backbones.gbnet import ChannelAffinityAttention, geometric_point_descriptor
from test_backbones import cloud

N = 32
SMALL = {"k": 4, "emb_dims": 16, "num_points": N}


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def caas(model: torch.nn.Module) -> list[ChannelAffinityAttention]:
    """The CAA modules of ``model`` (itself included)."""
    return [m for m in model.modules() if isinstance(m, ChannelAffinityAttention)]


def warmed_up(in_features: int = 0, alpha: float = 0.0) -> GBNet:
    """A small GBNet in eval mode with BN running statistics moved off their initial values and every CAA's
    residual weight set to ``alpha`` (0: its initialisation)."""
    torch.manual_seed(0)
    model = build_backbone("gbnet", **SMALL, in_features=in_features)
    with torch.no_grad():
        for caa in caas(model):
            caa.alpha.fill_(alpha)
        model.train()
        model(cloud(4, N, seed=5), torch.randn(4, N, in_features) if in_features else None)
    return model.eval()


# --- the authors' configuration ----------------------------------------------------------------------------


def official_encoder_params(k: int = 20, emb_dims: int = 1024, num_points: int = 1024) -> int:
    """Parameters of the authors' GBNet without its classifier, from ``model.py`` (every conv is bias-free and
    followed by a BatchNorm, whose weight and bias are 2 parameters per channel)."""

    def caa(c: int) -> int:  # model.py:95-114: query and key Conv1d(1024 -> 1024 // 8) + BN, value Conv1d(C, C)
        compact = num_points // 8  # + BN, alpha (the authors write 1024 for N)
        return 2 * (num_points * compact + 2 * compact) + (c * c + 2 * c) + 1

    def abem(c_in: int, c_out: int) -> int:  # model.py:143-169
        return ((2 * c_in * c_out + 2 * c_out)            # conv1: Conv2d(2 C_in, C_out, 1)
                + (c_out * c_in * k + 2 * c_in)           # conv2: Conv2d(C_out, C_in, [1, k]), the back-projection
                + (2 * c_in * c_out + 2 * c_out)          # conv3: Conv2d(2 C_in, C_out, 1), the error's edges
                + (2 * c_in * c_out * k + 2 * c_out)      # conv4: Conv2d(2 C_in, C_out, [1, k]), fine-grained
                + 2 * caa(c_out))                         # caa1, caa2

    abems = abem(14, 64) + abem(64, 64) + abem(64, 128) + abem(128, 256)  # model.py:306-309
    return abems + (1024 * emb_dims + 2 * emb_dims) + caa(emb_dims)       # model.py:311-316: conv + BN, caa


def official_head_params(num_classes: int, emb_dims: int = 1024) -> int:
    """The authors' classifier, ``model.py:318-324``: Linear(2 emb_dims, 512, bias=False) + BN, Linear(512, 256)
    *with* bias + BN, Linear(256, num_classes)."""
    return (2 * emb_dims * 512 + 2 * 512) + (512 * 256 + 256 + 2 * 256) + (256 * num_classes + num_classes)


def test_parameter_count_is_the_authors():
    # main.py:254-261: num_points 1024, emb_dims 1024, k 20; main.py:72 / 74: 40 classes (ModelNet40), 15
    # (ScanObjectNN). The totals, 8,783,693 and 8,777,268, are also what the authors' model.py instantiates to
    # (GBNet(args, output_channels) summed over .parameters(), counted on the CPU).
    model = build_backbone("gbnet")
    assert (model.k, model.emb_dims, model.num_points, model.out_dim) == (20, 1024, 1024, 2048)
    assert n_params(model) == official_encoder_params() == 7_591_973
    for classes, total in ((40, 8_783_693), (15, 8_777_268)):
        head = ClassificationHead(model.out_dim, classes)  # the authors' head but for the bias of its 2nd Linear
        assert n_params(head) + 256 == official_head_params(classes)
        assert n_params(model) + official_head_params(classes) == total
    small = build_backbone("gbnet", k=5, emb_dims=48, num_points=64)
    assert n_params(small) == official_encoder_params(k=5, emb_dims=48, num_points=64)


# --- shapes, gradients, the descriptor ---------------------------------------------------------------------


def test_shapes_and_global_feature_is_max_concat_avg():
    model = warmed_up()
    assert (model.out_dim, model.point_dim, model.in_features) == (32, 16, 0)
    xyz = cloud(3, N, seed=2)
    with torch.no_grad():
        out = model.forward_features(xyz)
        assert torch.equal(model(xyz), out.global_feature)
    assert out.global_feature.shape == (3, 32) and out.point_features.shape == (3, N, 16)
    assert out.point_xyz is xyz and out.levels == ()
    torch.testing.assert_close(out.global_feature[:, :16], out.point_features.amax(dim=1), rtol=0, atol=0)
    torch.testing.assert_close(out.global_feature[:, 16:], out.point_features.mean(dim=1))


def test_gradients_reach_the_first_layer_and_every_parameter():
    torch.manual_seed(0)
    model = build_backbone("gbnet", **SMALL, in_features=3)
    xyz, normals = cloud(3, N).requires_grad_(), torch.randn(3, N, 3, requires_grad=True)
    model.forward_features(xyz, normals).point_features.square().mean().backward()
    first = model.abems[0].edge[0].weight
    assert first.grad is not None and torch.isfinite(first.grad).all() and first.grad.abs().sum() > 0
    assert xyz.grad.abs().sum() > 0 and normals.grad.abs().sum() > 0
    # alpha = 0 at initialisation: the attention branch of every CAA gets no gradient yet, alpha does
    for caa in caas(model):
        assert caa.alpha.grad.abs() > 0
        assert all(p.grad is None or not p.grad.any() for p in caa.query.parameters())
    with torch.no_grad():
        for caa in caas(model):
            caa.alpha.fill_(0.5)
    model.zero_grad()
    model(cloud(3, N), torch.randn(3, N, 3)).square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_geometric_point_descriptor():
    # point 0's two nearest points are 1 and 2: the triangle (0,0,0), (1,0,0), (0,2,0), normal (0,0,2)
    xyz = torch.tensor([[[0.0, 0, 0], [1, 0, 0], [0, 2, 0], [5, 5, 5], [6, 5, 5]]])
    d = geometric_point_descriptor(xyz)
    assert d.shape == (1, 5, 14)
    expected = [0, 0, 0, 0, 0, 2, 1, 2, 1, 0, 0, 0, 2, 0]  # point, normal, |e1|, |e2|, e1, e2
    torch.testing.assert_close(d[0, 0], torch.tensor(expected, dtype=torch.float32))
    # point 3's nearest points are 4 (distance 1) and 2 (sqrt(59) = 7.68; point 1 is at sqrt(66), 0 at sqrt(75))
    expected = [5, 5, 5, 0, 5, -3, 1, 59 ** 0.5, 1, 0, 0, -5, -3, -5]
    torch.testing.assert_close(d[0, 3], torch.tensor(expected, dtype=torch.float32))


# --- order of the points -------------------------------------------------------------------------------------


@pytest.mark.parametrize("in_features", [0, 3])
def test_order_invariant_while_every_caa_alpha_is_zero(in_features):
    model = warmed_up(in_features)
    xyz, perm = cloud(2, N, seed=1), torch.randperm(N)
    feats = torch.randn(2, N, in_features) if in_features else None
    with torch.no_grad():
        out = model.forward_features(xyz, feats)
        out_p = model.forward_features(xyz[:, perm], None if feats is None else feats[:, perm])
    torch.testing.assert_close(out_p.point_features, out.point_features[:, perm], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out_p.global_feature, out.global_feature, rtol=1e-5, atol=1e-5)


def permute_comparators(model: torch.nn.Module, perm: torch.Tensor) -> None:
    """Reorder the point axis of the query and key maps (``Conv1d(N, N // 8)``, weight ``(N // 8, N, 1)``) of
    every CAA in ``model`` by ``perm``."""
    with torch.no_grad():
        for caa in caas(model):
            for conv in (caa.query[0], caa.key[0]):
                conv.weight.copy_(conv.weight[:, perm])


def test_caa_depends_on_the_order_of_the_points_through_its_comparator():
    torch.manual_seed(0)
    caa = ChannelAffinityAttention(8, N).eval()
    x, perm = torch.randn(2, 8, N), torch.randperm(N)
    with torch.no_grad():
        torch.testing.assert_close(caa(x[..., perm]), caa(x)[..., perm], rtol=0, atol=0)  # alpha = 0: identity
        caa.alpha.fill_(1.0)
        out = caa(x)
        assert not torch.allclose(caa(x[..., perm]), out[..., perm], rtol=1e-3, atol=1e-3)
        permute_comparators(caa, perm)
        torch.testing.assert_close(caa(x[..., perm]), out[..., perm], rtol=1e-5, atol=1e-5)


def test_the_network_depends_on_the_order_of_the_points_only_through_the_comparators():
    model = warmed_up(alpha=5.0)
    xyz, perm = cloud(2, N, seed=1), torch.randperm(N)
    with torch.no_grad():
        out = model.forward_features(xyz)
        moved = model.forward_features(xyz[:, perm]).point_features - out.point_features[:, perm]
        assert moved.abs().max() > 1e-4
        permute_comparators(model, perm)
        out_p = model.forward_features(xyz[:, perm])
    torch.testing.assert_close(out_p.point_features, out.point_features[:, perm], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out_p.global_feature, out.global_feature, rtol=1e-5, atol=1e-5)


# --- extra input channels, errors, config ------------------------------------------------------------------


def test_in_features():
    model = warmed_up(in_features=3)
    assert model.in_features == 3
    assert model.abems[0].edge[0].weight.shape[1] == 2 * (14 + 3)  # edge features of descriptor + normals
    xyz = cloud(2, N, seed=3)
    normals = torch.nn.functional.normalize(torch.randn(2, N, 3), dim=-1)
    with torch.no_grad():
        out, other = model.forward_features(xyz, normals), model.forward_features(xyz, -normals)
    assert out.global_feature.shape == (2, 32) and out.point_features.shape == (2, N, 16)
    assert not torch.allclose(out.global_feature, other.global_feature)
    with pytest.raises(ValueError, match="without features"):
        model(xyz)
    with pytest.raises(ValueError, match=r"\(B, N, in_features\)"):
        model(xyz, normals[..., :2])
    with pytest.raises(ValueError, match="in_features=0"):
        build_backbone("gbnet", **SMALL)(xyz, normals)


@pytest.mark.parametrize("kwargs,fragments", [
    ({"k": 0}, ["gbnet: k must be a positive int", "0"]),
    ({"emb_dims": 1.5}, ["gbnet: emb_dims must be a positive int", "1.5"]),
    ({"num_points": 4}, ["gbnet: num_points must be >= 8", "got 4"]),
    ({"k": 40}, ["gbnet: k=40 exceeds num_points=32"]),
    ({"in_features": -1}, ["gbnet: in_features must be a non-negative int", "-1"]),
])
def test_bad_arguments(kwargs, fragments):
    with pytest.raises(ValueError) as err:
        build_backbone("gbnet", **{**SMALL, **kwargs})
    one_line_error(err, *fragments)


def test_bad_inputs():
    model = build_backbone("gbnet", **SMALL)
    with pytest.raises(ValueError) as err:
        model(cloud(2, 40))
    one_line_error(err, "gbnet: clouds have N=40 points", "num_points=32")
    with pytest.raises(ValueError) as err:
        model(torch.randn(2, 3, N))
    one_line_error(err, "gbnet:", "(B, N, 3)")
    with pytest.raises(TypeError) as err:
        build_backbone("gbnet", pooling="max")  # DGCNN's option: GBNet pools max || avg only
    one_line_error(err, "'gbnet'", "'pooling'", "num_points")


def test_built_from_the_config():
    from pointtune.config import build_config
    from pointtune.config_doc import config_rows

    sets = {f"method.backbone.{key}": value for key, value in SMALL.items()}
    exp = build_config("cedr", overrides={"method.backbone.name": "gbnet", "method.backbone.inputs": ["normals"],
                                          **sets})
    model = build_backbone(exp.method.backbone.name, **exp.method.backbone.kwargs())
    assert isinstance(model, GBNet) and (model.k, model.num_points, model.in_features) == (4, N, 3)
    rows = {r.key: r for r in config_rows(build_config("cedr", overrides={"method.backbone.name": "gbnet"}))}
    assert {key: rows[f"method.backbone.{key}"].default for key in ("k", "emb_dims", "num_points")} == {
        "k": "20", "emb_dims": "1024", "num_points": "1024"}
