"""Data parallelism of every method, on 2 gloo workers without Ray.

One ``torch.multiprocessing`` spawn of 2 processes (a FileStore rendezvous) runs everything in sequence in
each process, because a spawn costs seconds and a Ray start about 20 s:

* the collective helpers of ``pointtune.distributed`` (``all_reduce_sum``, ``all_gather_rows``,
  ``all_gather_with_grad``), the last one checked against the single-process gradient of the same loss on the
  concatenated batch, through a real ``DistributedDataParallel`` module;
* CEDR's gathered SCC (``gather=True``) against the one-process loss and gradient on the concatenated batch;
* a few optimizer steps of every method under each of its loss switches, the way the training loop runs them:
  ``DistributedDataParallel(method, **method.ddp_options())``, a ``DistributedSampler`` loader, the optimizer
  from ``method.param_groups`` and ``method.after_step`` after each step.

The pytest tests then read what each worker wrote. tests/test_train.py keeps the end-to-end 2-worker Ray
Train run.
"""

from __future__ import annotations

import datetime
import math
import traceback

import pytest
import torch
import torch.nn.functional as F

pytestmark = pytest.mark.slow  # trains every method on 2 spawned processes (half a minute or more)

WORLD = 2
BATCH = 8
STEPS_PER_EPOCH, EPOCHS = 2, 2           # 32 clouds: 16 per worker, 2 batches of 8, over 2 epochs = 4 steps
NUM_CLASSES, PER_CLASS, NUM_POINTS = 4, 8, 64

_CEDR = {"backbone": {"name": "pointnet", "emb_dims": 32}}
_CONCLU = {"backbone": {"name": "pointnet", "emb_dims": 32}, "projector_hidden": 32, "projection_dim": 16,
           "predictor_hidden": 16, "num_prototypes": 4, "view_points": 32}
_FINETUNE = {"backbone": {"name": "pointnet", "emb_dims": 48}}
_DCGLR = {"backbone": {"name": "vit3d", "dim": 16, "depth": 1, "heads": 2, "k": 8}, "out_dim": 16, "proj_hidden": 16,
          "proj_bottleneck": 8, "n_local_crops": 2, "n_multires": 1}

# (case id, method, method config). Together the CEDR cases cover use_scc on/off, use_cpcm on/off with
# cpcm_method 1/2 and centers batch/ema, use_eaa on/off, gather on/off, the start epochs and both loss forms.
CASES = [
    ("cedr-ce-only", "cedr", {"use_scc": False}),
    ("cedr-ce-only-ema-flag", "cedr", {"use_scc": False, "centers": "ema"}),
    ("cedr-scc-plain", "cedr", {"use_cpcm": False, "use_eaa": False}),
    ("cedr-scc-plain-gather", "cedr", {"use_cpcm": False, "use_eaa": False, "gather": True}),
    ("cedr-cpcm1-batch-eaa", "cedr", {}),
    ("cedr-cpcm1-batch-eaa-gather", "cedr", {"gather": True}),
    ("cedr-cpcm2-batch-eaa-gather", "cedr", {"cpcm_method": 2, "gather": True}),
    ("cedr-cpcm1-ema", "cedr", {"centers": "ema", "use_eaa": False}),
    ("cedr-cpcm2-ema-eaa", "cedr", {"cpcm_method": 2, "centers": "ema"}),
    ("cedr-cpcm1-ema-eaa-gather", "cedr", {"centers": "ema", "gather": True}),
    ("cedr-eaa-only-fixed-mlp2-gather", "cedr", {"use_cpcm": False, "eaa_mode": "fixed", "projection": "mlp2",
                                                 "gather": True}),
    ("cedr-late-starts-ema-aggregate", "cedr", {"centers": "ema", "cpcm_start_epoch": 1, "eaa_start_epoch": 1,
                                                "form": "aggregate", "lambda_con": {"shape": "linear"}}),
    ("conclu-default", "conclu", {}),
    ("conclu-same-view-q-codes", "conclu", {"swap": False, "code_feature": "q"}),
    ("conclu-local-sinkhorn", "conclu", {"sinkhorn_global": False, "orth_reduction": "mean"}),
    ("conclu-zero-weights", "conclu", {"lambda_con": 0.0, "lambda_clu": 0.0}),
    ("finetune-scratch", "finetune", _FINETUNE),
    ("finetune-scratch-frozen", "finetune", {**_FINETUNE, "freeze_encoder": True, "label_smoothing": 0.2}),
    # DCGLR: kNN crops of shared size with the teacher's own BatchNorm statistics; box crops resampled to fixed
    # sizes, mlp2 head (BatchNorm) with the teacher's statistics an EMA of the student's, DINO averaging
    ("dcglr-knn-shared", "dcglr", {}),
    ("dcglr-box-fixed-mlp2-ema-bn", "dcglr", {"crop_mode": "box", "view_points_mode": "fixed", "global_points": 48,
                                              "local_points": 16, "head": "mlp2", "teacher_bn": "ema",
                                              "loss_avg": "dino"}),
]
CONTROL = "control-unused-module"        # a module with an unused parameter: the harness must report it


# --------------------------------------------------------------------------------------------------
# Shared inputs (built identically in the workers and in the checking process)
# --------------------------------------------------------------------------------------------------


def _rows(rank: int) -> slice:
    """Unequal shares of an 8-row batch: worker 0 holds rows 0-2, worker 1 rows 3-7."""
    return slice(0, 3) if rank == 0 else slice(3, 8)


def _helper_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    """Features ``(8, 5)`` and the weight ``(4, 5)`` of a linear layer, float64."""
    g = torch.Generator().manual_seed(5)
    return torch.randn(8, 5, generator=g, dtype=torch.float64), torch.randn(4, 5, generator=g, dtype=torch.float64)


def _helper_loss(y: torch.Tensor) -> torch.Tensor:
    """A loss coupling every row with every other (a logsumexp of similarities) and depending on row order."""
    order = torch.arange(y.shape[0], dtype=y.dtype)
    return torch.logsumexp(y @ y.t() / 3.0, dim=1).mean() + 0.1 * (y[:, 0] * order).sum()


def _scc_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Projections ``(8, 6)``, logits ``(8, 4)`` (float64) and labels for the gathered CEDR loss."""
    g = torch.Generator().manual_seed(7)
    z = torch.randn(8, 6, generator=g, dtype=torch.float64)
    logits = 2.0 * torch.randn(8, 4, generator=g, dtype=torch.float64)
    return z, logits, torch.tensor([0, 1, 0, 2, 1, 0, 2, 3])


def _scc_cfg():
    from pointtune.methods.cedr import CEDRConfig

    return CEDRConfig.model_validate({**_CEDR, "temperature": 0.5, "ent_low": 1.5, "ent_high": 1.8})


# --------------------------------------------------------------------------------------------------
# What each worker runs
# --------------------------------------------------------------------------------------------------


def _check_helpers(rank: int) -> dict:
    """``all_reduce_sum``, ``all_gather_rows`` and ``all_gather_with_grad`` (the latter inside DDP)."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    from pointtune import distributed as D

    out: dict = {"world": D.world_size(), "rank": D.rank()}
    x = torch.tensor([rank + 1.0, 10.0 * (rank + 1)])
    out["reduced"], out["x_after"] = D.all_reduce_sum(x), x.clone()
    feats, weight = _helper_inputs()
    rows = _rows(rank)
    out["gathered"], out["offset"] = D.all_gather_rows(feats[rows])
    out["gathered_labels"] = D.all_gather_rows(torch.arange(8)[rows])[0]

    layer = torch.nn.Linear(5, 4, bias=False, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.copy_(weight)
    model = DDP(layer)
    y = model(feats[rows])                                        # (M_r, 4) this worker's rows
    y.retain_grad()
    g = D.all_gather_with_grad(y)                                 # (8, 4)
    loss = _helper_loss(g)
    loss.backward()
    out.update(rows_with_grad=g.detach(), loss=loss.detach(), y_grad=y.grad, weight_grad=layer.weight.grad)
    return out


def _check_gathered_scc(rank: int) -> dict:
    """CEDR's SCC with ``gather=True`` on each worker's share of the batch."""
    from pointtune.methods.cedr import cedr_loss

    z, logits, labels = _scc_inputs()
    rows = _rows(rank)
    zr = z[rows].clone().requires_grad_()
    out = cedr_loss(zr, logits[rows], labels[rows], _scc_cfg(), gather=True)
    out["scc"].backward()
    local = cedr_loss(z[rows], logits[rows], labels[rows], _scc_cfg())
    return {**{k: v.detach() for k, v in out.items()}, "z_grad": zr.grad, "local_scc": local["scc"].detach()}


class _Clouds(torch.utils.data.Dataset):
    """The first ``NUM_CLASSES`` synthetic shapes, ``PER_CLASS`` clouds of ``NUM_POINTS`` points each."""

    def __init__(self):
        from pointtune.data.synthetic import make_synthetic

        data = make_synthetic(num_classes=NUM_CLASSES, per_class=PER_CLASS, num_points=NUM_POINTS, seed=3)
        self.points, self.labels = torch.from_numpy(data.points), torch.from_numpy(data.labels)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"points": self.points[i], "label": self.labels[i]}


def _flat_gather(tensors: list[torch.Tensor]) -> tuple[bool, float]:
    """Whether a flat concatenation of ``tensors`` is bitwise equal on every worker, and the largest
    difference to rank 0's copy."""
    from pointtune.distributed import all_gather_rows

    flat = torch.cat([t.detach().reshape(-1).double() for t in tensors])
    both = all_gather_rows(flat[None])[0]
    return bool((both == both[0]).all()), float((both - both[0]).abs().max())


def _train_case(method_name: str, overrides: dict, dataset, rank: int, control: bool = False) -> dict:
    """A few DDP steps of one method configuration, as the training loop runs them; what to assert."""
    from torch.nn.parallel import DistributedDataParallel as DDP
    from torch.utils.data import DataLoader, DistributedSampler

    from pointtune.distributed import all_gather_rows
    from pointtune.method import get_method
    from pointtune.methods.cedr import batch_class_centers, ema_update_centers

    torch.manual_seed(0)
    cls = get_method(method_name)
    method = cls(cls.Config.model_validate(overrides), NUM_CLASSES, EPOCHS)
    if control:
        method.unused = torch.nn.Linear(3, 3)                     # never called by forward
    options = method.ddp_options()
    model = DDP(method, **options)
    sampler = DistributedSampler(dataset, num_replicas=WORLD, rank=rank, shuffle=True, seed=1, drop_last=True)
    loader = DataLoader(dataset, batch_size=BATCH, sampler=sampler, drop_last=True)
    optimizer = torch.optim.SGD(method.param_groups(1e-4), lr=0.05, momentum=0.9)

    captured = []                                                 # CEDR: normalised projections of each step
    teacher_out: list[list[torch.Tensor]] = []                    # DCGLR: teacher outputs of each step
    is_dcglr = method_name == "dcglr"
    if is_dcglr:
        method.teacher.register_forward_hook(lambda m, i, o: teacher_out[-1].append(o.detach().double()))
        teacher_start = [p.detach().clone() for p in method.teacher.parameters()]
    if getattr(method, "proj_head", None) is not None:
        method.proj_head.register_forward_hook(lambda m, i, o: captured.append(F.normalize(o.detach().float(), dim=1)))
    res: dict = {"options": options, "losses": [], "terms": [], "scc": [], "missing_grads": set(), "labels": []}
    step, total = 0, EPOCHS * len(loader)
    model.train()
    for epoch in range(EPOCHS):
        sampler.set_epoch(epoch)
        for i, batch in enumerate(loader):
            teacher_out.append([])
            out = model(batch, epoch, (epoch + i / len(loader)) / EPOCHS)
            loss = out["loss"]
            res["losses"].append(float(loss.detach()))
            res["terms"] = sorted(out)
            if "scc" in out:
                res["scc"].append(float(out["scc"]))
            res["labels"].append(batch["label"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            res["missing_grads"] |= {n for n, p in method.named_parameters() if p.requires_grad and p.grad is None}
            optimizer.step()
            step += 1
            method.after_step(step, total)
    res["steps"] = step
    res["params_equal"], res["params_diff"] = _flat_gather(list(method.parameters()))
    res["buffers_equal"], res["buffers_diff"] = _flat_gather(list(method.buffers()))
    scc = torch.tensor(res["scc"] or [0.0], dtype=torch.float64)
    res["scc_equal"] = _flat_gather([scc])[0]
    if getattr(method, "uses_center_memory", False):
        # replay the EMA over the union of both workers' batches (and over this worker's alone)
        K, m = NUM_CLASSES, method.cfg.center_momentum
        union = (torch.zeros_like(method.center_memory), torch.zeros_like(method.center_seen))
        alone = union
        for z, labels in zip(captured, res["labels"]):
            zs, ys = all_gather_rows(z)[0], all_gather_rows(labels)[0]
            union = ema_update_centers(*union, *batch_class_centers(zs, ys, K), m)
            alone = ema_update_centers(*alone, *batch_class_centers(z, labels, K), m)
        res["centers"] = (method.center_memory.clone(), method.center_seen.clone())
        res["union_centers"], res["alone_centers"] = union, alone
        res["centers_equal"] = _flat_gather([method.center_memory, method.center_seen])[0]
    if is_dcglr:
        # replay Eq. 9 over the union of both workers' teacher outputs (and over this worker's alone)
        q = method.cfg.center_momentum
        union = alone = torch.zeros_like(method.center, dtype=torch.float64)
        for outs in teacher_out:
            rows = torch.cat(outs)
            union = q * union + (1 - q) * all_gather_rows(rows)[0].mean(dim=0)
            alone = q * alone + (1 - q) * rows.mean(dim=0)
        teacher = list(method.teacher.parameters()) + list(method.teacher.buffers())
        res["dcglr"] = {"center": method.center.clone(), "union": union, "alone": alone,
                        "teacher_equal": _flat_gather(teacher)[0] and _flat_gather([method.center])[0],
                        "teacher_moved": any(not torch.equal(p, s) for p, s in zip(method.teacher.parameters(),
                                                                                     teacher_start))}
    del res["labels"]
    return res


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    """One of the 2 processes: every check in sequence; results (or tracebacks) to ``out_dir/rank<r>.pt``."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    results: dict = {}

    def attempt(name, fn, *args, **kwargs):
        try:
            results[name] = fn(*args, **kwargs)
        except Exception:                                         # recorded, reported by the test of that case
            results[name] = {"error": traceback.format_exc()}

    try:
        attempt("helpers", _check_helpers, rank)
        attempt("gathered_scc", _check_gathered_scc, rank)
        dataset = _Clouds()
        for name, method_name, overrides in CASES:
            attempt(name, _train_case, method_name, {**(_CEDR if method_name == "cedr" else
                                                        _CONCLU if method_name == "conclu" else
                                                        _DCGLR if method_name == "dcglr" else {}),
                                                     **overrides}, dataset, rank)
        attempt(CONTROL, _train_case, "cedr", {**_CEDR, "use_scc": False}, dataset, rank, control=True)
    finally:
        torch.save(results, f"{out_dir}/rank{rank}.pt")
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def workers(tmp_path_factory) -> list[dict]:
    """Run the 2 workers once for the whole module; each one's results."""
    import torch.multiprocessing as mp

    root = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(WORLD, str(root / "init"), str(root)), nprocs=WORLD, join=True)
    return [torch.load(root / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def _ok(workers: list[dict], name: str) -> list[dict]:
    parts = [w[name] for w in workers]
    for rank, part in enumerate(parts):
        assert "error" not in part, f"{name} failed on rank {rank}:\n{part['error']}"
    return parts


# --------------------------------------------------------------------------------------------------
# Collective helpers
# --------------------------------------------------------------------------------------------------


def test_all_reduce_sum_and_all_gather_rows(workers):
    parts = _ok(workers, "helpers")
    feats, _ = _helper_inputs()
    for rank, part in enumerate(parts):
        assert (part["world"], part["rank"]) == (WORLD, rank)
        assert part["reduced"].tolist() == [3.0, 30.0]                       # sum over the 2 workers
        assert part["x_after"].tolist() == [rank + 1.0, 10.0 * (rank + 1)]   # the input is left as it is
        assert torch.equal(part["gathered"], feats)                          # rank order, unequal shares
        assert part["offset"] == _rows(rank).start
        assert part["gathered_labels"].tolist() == list(range(8))


def test_all_gather_with_grad_matches_one_process_on_the_concatenated_batch(workers):
    parts = _ok(workers, "helpers")
    feats, weight = _helper_inputs()
    w = weight.clone().requires_grad_()
    y = feats @ w.t()
    y.retain_grad()
    loss = _helper_loss(y)
    loss.backward()
    for rank, part in enumerate(parts):
        torch.testing.assert_close(part["rows_with_grad"], y.detach())
        torch.testing.assert_close(part["loss"], loss.detach())
        # each worker's own rows receive the gradient of the sum of the (identical) losses of both workers ...
        torch.testing.assert_close(part["y_grad"], WORLD * y.grad[_rows(rank)])
        # ... which DDP's averaging turns into exactly the one-process gradient of the parameters
        torch.testing.assert_close(part["weight_grad"], w.grad)


def test_cedr_gathered_scc_is_the_loss_of_the_global_batch(workers):
    from pointtune.methods.cedr import cedr_loss

    parts = _ok(workers, "gathered_scc")
    z, logits, labels = _scc_inputs()
    z = z.clone().requires_grad_()
    whole = cedr_loss(z, logits, labels, _scc_cfg())
    whole["scc"].backward()
    whole = {k: v.detach() for k, v in whole.items()}
    assert float(whole["outlier_frac"]) > 0 or float(whole["unstable_frac"]) > 0    # EAA weights act
    for rank, part in enumerate(parts):
        rows = _rows(rank)
        for key in ("scc", "outlier_frac", "unstable_frac"):                    # the global batch's
            assert float(part[key]) == pytest.approx(float(whole[key]), rel=1e-10), key
        torch.testing.assert_close(part["z_grad"], WORLD * z.grad[rows])        # own rows, see above
        ce = F.cross_entropy(logits[rows], labels[rows], label_smoothing=0.2)   # CE stays per worker
        assert float(part["ce"]) == pytest.approx(float(ce), rel=1e-10)
        assert float(part["local_scc"]) != pytest.approx(float(whole["scc"]), rel=1e-6)


# --------------------------------------------------------------------------------------------------
# Every method and loss switch, a few DDP steps
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [c[0] for c in CASES])
def test_method_trains_under_ddp(workers, name):
    method_name, overrides = next((m, o) for n, m, o in CASES if n == name)
    parts = _ok(workers, name)
    for rank, part in enumerate(parts):
        assert part["steps"] == STEPS_PER_EPOCH * EPOCHS
        assert all(math.isfinite(v) for v in part["losses"]), part["losses"]
        if not part["options"]["find_unused_parameters"]:
            assert not part["missing_grads"], f"rank {rank}: parameters without gradient {part['missing_grads']}"
        assert part["params_equal"], f"parameters differ across workers by {part['params_diff']}"
        if method_name in ("cedr", "finetune"):
            assert "acc" in part["terms"] and "logits" not in part["terms"]
    # every worker evaluates the same model: BatchNorm statistics averaged by after_step, CEDR's EMA centres
    # all-reduced (DDP does not broadcast buffers)
    assert parts[0]["options"] == {"find_unused_parameters": False, "forward_sync_buffers": False}
    assert parts[0]["buffers_equal"], f"buffers differ across workers by {parts[0]['buffers_diff']}"
    if method_name == "cedr" and overrides.get("gather"):
        assert parts[0]["scc_equal"], "the gathered SCC differs across workers"
    if "centers" in parts[0]:
        assert parts[0]["centers_equal"], "the EMA centres differ across workers"
        for part in parts:
            memory, seen = part["centers"]
            union_memory, union_seen = part["union_centers"]
            assert torch.equal(seen, union_seen) and seen.any()
            torch.testing.assert_close(memory, union_memory, atol=1e-6, rtol=1e-5)
        # a worker's own batches alone would give other centres (the check can fail)
        assert any(not torch.allclose(p["alone_centers"][0], p["union_centers"][0], atol=1e-4) for p in parts)
    if "dcglr" in parts[0]:
        # DCGLR: the teacher (parameters, BatchNorm statistics) and the centre are the same on both workers, the
        # teacher moved (EMA), and the centre is Eq. 9 over the teacher outputs of both workers' batches
        assert parts[0]["dcglr"]["teacher_equal"], "the teacher or the centre differs across workers"
        for part in parts:
            assert part["dcglr"]["teacher_moved"]
            torch.testing.assert_close(part["dcglr"]["center"].double(), part["dcglr"]["union"], atol=1e-6, rtol=1e-5)
        assert any(not torch.allclose(p["dcglr"]["alone"], p["dcglr"]["union"], atol=1e-4) for p in parts)


def test_harness_reports_an_unused_parameter(workers):
    """The negative control: a parameter that gets no gradient is caught (by DDP or by the gradient check)."""
    parts = [w[CONTROL] for w in workers]
    for part in parts:
        caught = "error" in part or any(n.startswith("unused.") for n in part["missing_grads"])
        assert caught, part
