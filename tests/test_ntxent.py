"""Tests of the NT-Xent (SimCLR) loss: reference values, numerics, and the 2-process gather."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from cardioclr.ssl.loss import nt_xent


def loop_nt_xent(z0: torch.Tensor, z1: torch.Tensor, temperature: float) -> float:
    """SimCLR eq. (1) written out with Python loops in float64, straight from the paper."""
    n = z0.shape[0]
    z = [v / v.norm() for v in torch.cat([z0, z1]).double()]
    total = 0.0
    for k in range(2 * n):
        pos = (k + n) % (2 * n)
        numerator = math.exp(float(z[k] @ z[pos]) / temperature)
        denominator = sum(
            math.exp(float(z[k] @ z[j]) / temperature) for j in range(2 * n) if j != k
        )
        total += -math.log(numerator / denominator)
    return total / (2 * n)


@pytest.mark.parametrize("temperature", [0.05, 0.1, 0.5, 1.0])
def test_equals_python_loop_reference(temperature: float) -> None:
    gen = torch.Generator().manual_seed(int(temperature * 100))
    z0 = torch.randn(7, 5, generator=gen)
    z1 = torch.randn(7, 5, generator=gen)
    got = nt_xent(z0, z1, temperature=temperature)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(loop_nt_xent(z0, z1, temperature), abs=1e-5)


def test_equals_monai_contrastive_loss() -> None:
    from monai.losses import ContrastiveLoss

    gen = torch.Generator().manual_seed(3)
    z0, z1 = torch.randn(2, 16, 8, generator=gen)
    monai = ContrastiveLoss(temperature=0.3)(z0, z1)
    assert nt_xent(z0, z1, temperature=0.3).item() == pytest.approx(monai.item(), abs=1e-5)


@pytest.mark.parametrize("temperature", [0.1, 0.5, 2.0])
def test_analytic_value_two_orthogonal_pairs(temperature: float) -> None:
    # Images a, b with views e1 (both views of a) and e2 (both views of b): every anchor has
    # its positive at cosine 1 and two negatives at cosine 0, so
    # l = -log(e^{1/t} / (e^{1/t} + 2)) = log(1 + 2 e^{-1/t}) for all four anchors.
    z0 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z1 = torch.tensor([[2.0, 0.0], [0.0, 0.5]])  # other lengths: only directions count
    expected = math.log(1.0 + 2.0 * math.exp(-1.0 / temperature))
    # float32 logits of size 1/t leave ~1e-6 absolute error in the log-sum-exp
    assert nt_xent(z0, z1, temperature=temperature).item() == pytest.approx(expected, abs=1e-6)


def test_single_image_has_zero_loss() -> None:
    # With B = 1 the positive is the only candidate: log-softmax over one class is 0.
    z0, z1 = torch.randn(2, 1, 4)
    assert nt_xent(z0, z1).item() == pytest.approx(0.0, abs=1e-6)


def test_invariant_to_scaling() -> None:
    gen = torch.Generator().manual_seed(1)
    z0, z1 = torch.randn(2, 12, 8, generator=gen)
    base = nt_xent(z0, z1, temperature=0.2)
    scaled = nt_xent(37.0 * z0, 0.01 * z1, temperature=0.2)
    assert scaled.item() == pytest.approx(base.item(), abs=1e-6)


def test_gradcheck_float64() -> None:
    # Checks the analytic backward (through the in-place diagonal mask) against finite
    # differences.
    gen = torch.Generator().manual_seed(2)
    z0 = torch.randn(5, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    z1 = torch.randn(5, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: nt_xent(a, b, temperature=0.3), (z0, z1))


def test_low_precision_inputs_are_finite_and_close() -> None:
    gen = torch.Generator().manual_seed(4)
    z0, z1 = torch.randn(2, 32, 16, generator=gen)
    ref = nt_xent(z0, z1, temperature=0.1).item()
    for dtype in (torch.bfloat16, torch.float16):
        a = (z0 * 3e3).to(dtype).requires_grad_()  # large fp16 values would overflow a
        b = (z1 * 3e3).to(dtype).requires_grad_()  # half-precision dot product
        loss = nt_xent(a, b, temperature=0.1)
        assert loss.dtype == torch.float32
        assert torch.isfinite(loss)
        # only the input rounding (~3 significant digits) differs from float32
        assert loss.item() == pytest.approx(ref, rel=2e-2)
        loss.backward()
        assert a.grad is not None and a.grad.dtype == dtype
        assert torch.isfinite(a.grad.float()).all()


def test_autocast_does_not_lower_precision() -> None:
    gen = torch.Generator().manual_seed(5)
    z0, z1 = torch.randn(2, 16, 8, generator=gen)
    ref = nt_xent(z0, z1, temperature=0.05)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        got = nt_xent(z0, z1, temperature=0.05)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(ref.item(), abs=1e-6)


def test_tiny_temperature_identical_vectors_is_finite() -> None:
    z = torch.ones(4, 3, requires_grad=True)  # every similarity is 1: the worst case for exp
    loss = nt_xent(z, z, temperature=1e-3)
    loss.backward()
    # all 2B-1 candidates tie, so the loss is log(2B - 1) exactly
    assert loss.item() == pytest.approx(math.log(7), rel=1e-5)
    assert torch.isfinite(z.grad).all()


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="must both be"):
        nt_xent(torch.randn(4, 3), torch.randn(5, 3))
    with pytest.raises(ValueError, match="must both be"):
        nt_xent(torch.randn(4, 3, 2), torch.randn(4, 3, 2))
    with pytest.raises(ValueError, match="temperature"):
        nt_xent(torch.randn(4, 3), torch.randn(4, 3), temperature=0.0)


# --------------------------------------------------------------------------------------------
# Two processes (gloo, CPU) must reproduce one process on the global batch.
# --------------------------------------------------------------------------------------------

_WORLD = 2
_TEMPERATURE = 0.2


def _rank_worker(rank: int, init_file: str, z0: torch.Tensor, z1: torch.Tensor, out: str) -> None:
    """One rank: loss and input gradients on its half of the global batch."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=_WORLD)
    try:
        b = z0.shape[0] // _WORLD
        a = z0[rank * b : (rank + 1) * b].clone().requires_grad_()
        c = z1[rank * b : (rank + 1) * b].clone().requires_grad_()
        loss = nt_xent(a, c, temperature=_TEMPERATURE)
        loss.backward()
        local_only = nt_xent(a.detach(), c.detach(), temperature=_TEMPERATURE, gather=False)
        torch.save(
            {"loss": loss.detach(), "g0": a.grad, "g1": c.grad, "local": local_only},
            Path(out) / f"rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")
def test_two_process_gather_equals_single_process(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(6)
    n, d = 10, 6
    z0, z1 = torch.randn(2, n, d, generator=gen)

    mp.spawn(
        _rank_worker,
        args=(str(tmp_path / "init"), z0, z1, str(tmp_path)),
        nprocs=_WORLD,
        join=True,
    )
    ranks = [
        torch.load(tmp_path / f"rank{r}.pt", map_location="cpu", weights_only=True)
        for r in range(_WORLD)
    ]

    a = z0.clone().requires_grad_()
    c = z1.clone().requires_grad_()
    full = nt_xent(a, c, temperature=_TEMPERATURE)
    full.backward()

    mean_loss = torch.stack([r["loss"] for r in ranks]).mean()
    assert mean_loss.item() == pytest.approx(full.item(), abs=1e-5)
    # Each rank's loss alone is not the global one (different anchors): guards against a
    # test that passes because gathering silently did nothing.
    assert abs(ranks[0]["loss"].item() - ranks[1]["loss"].item()) > 1e-4
    # Convention (see nt_xent): rank s gets d(sum_r L_r)/dz_s = W * dL_global/dz_s; DDP's
    # averaging over W ranks turns that into the single-process gradient.
    g0 = torch.cat([r["g0"] for r in ranks]) / _WORLD
    g1 = torch.cat([r["g1"] for r in ranks]) / _WORLD
    torch.testing.assert_close(g0, a.grad, atol=1e-5, rtol=0)
    torch.testing.assert_close(g1, c.grad, atol=1e-5, rtol=0)
    # gather=False ignores the other rank: the loss of the local half alone.
    b = n // _WORLD
    for r, res in enumerate(ranks):
        local = nt_xent(z0[r * b : (r + 1) * b], z1[r * b : (r + 1) * b], _TEMPERATURE)
        assert res["local"].item() == pytest.approx(local.item(), abs=1e-6)
