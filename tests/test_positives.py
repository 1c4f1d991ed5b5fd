"""Anatomy-aware contrastive positives: the pairs, the sampler's patient safety, the loss, a tiny run."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from cardioclr.data.store import SliceStore
from cardioclr.errors import CardioclrError
from cardioclr.models.checkpoint import read_encoder_file
from cardioclr.ssl.data import MAIN, load_arrays
from cardioclr.ssl.loss import multi_positive_nt_xent, nt_xent
from cardioclr.ssl.positives import (
    ED_FRAME,
    ES_FRAME,
    FIRST_CINE,
    PartnerTable,
    PositivePairs,
    PositiveSpec,
    SliceMeta,
    frame_meta,
    related,
)
from cardioclr.ssl.pretrain import PretrainConfig, build_sample_lists, default_out, pretrain, run_key

SIZE = 32


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _meta(slices: dict[int, int], cine_frames: int = 0) -> SliceMeta:
    """Patients {code: n_slices}, each with ED, ES and ``cine_frames`` cine frames."""
    parts = []
    for code, n in slices.items():
        frames = [ED_FRAME, ES_FRAME] + [FIRST_CINE + t for t in range(cine_frames)]
        parts += [frame_meta(code, f, n) for f in frames]
    return SliceMeta.concat(parts)


def _pairs(meta: SliceMeta, spec: PositiveSpec) -> set[tuple[int, int]]:
    table = PartnerTable(meta, spec)
    return {(i, int(j)) for i in range(len(meta))
            for j in table.partners[table.offsets[i]:table.offsets[i + 1]]}


# --------------------------------------------------------------------------------------------
# Which pairs
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["augment", "phase", "neighbour", "cine", "anatomy"])
def test_partners_never_cross_patients_and_include_self(name: str) -> None:
    meta = _meta({0: 6, 1: 10, 7: 18}, cine_frames=2)
    spec = PositiveSpec(name, 0.25)
    pairs = _pairs(meta, spec)
    assert all(meta.patient[i] == meta.patient[j] for i, j in pairs)
    # The relation the loss uses (not only the per-patient table) never crosses patients.
    rows = meta.as_tensor()
    rel = related(rows, rows, spec)
    assert not (rel & (rows[:, None, 0] != rows[None, :, 0])).any()
    assert {(int(i), int(j)) for i, j in rel.nonzero()} == pairs
    assert all((i, i) in pairs for i in range(len(meta)))
    if name == "augment":
        assert pairs == {(i, i) for i in range(len(meta))}
    else:
        assert len(pairs) > len(meta)  # some real partners, so the first check could fail


def test_phase_pairs_are_the_same_slice_at_ed_and_es() -> None:
    meta = _meta({0: 8, 1: 9}, cine_frames=3)
    pairs = {(i, j) for i, j in _pairs(meta, PositiveSpec("phase")) if i != j}
    assert pairs
    for i, j in pairs:
        assert meta.z[i] == meta.z[j]
        assert {meta.frame[i], meta.frame[j]} == {ED_FRAME, ES_FRAME}
    # Every ED slice has exactly its ES slice.
    ed = np.nonzero(meta.frame == ED_FRAME)[0]
    assert sum(1 for i, _ in pairs if i in set(ed)) == len(ed)


@pytest.mark.parametrize("bound", [0.0, 0.2, 0.25, 0.5])
def test_neighbour_pairs_lie_within_the_bound(bound: float) -> None:
    meta = _meta({0: 6, 1: 10, 2: 18})
    pairs = _pairs(meta, PositiveSpec("neighbour", bound))
    for i, j in pairs:
        assert meta.frame[i] == meta.frame[j]
        assert abs(float(meta.position[i]) - float(meta.position[j])) <= bound + 1e-6
    # ... and every pair within the bound is one (nothing in the window is missed).
    for i in range(len(meta)):
        for j in range(len(meta)):
            if (meta.patient[i] == meta.patient[j] and meta.frame[i] == meta.frame[j]
                    and abs(float(meta.position[i]) - float(meta.position[j])) <= bound):
                assert (i, j) in pairs
    # 10 slices, bound 0.25: two neighbours each side in the middle of the stack.
    if bound == 0.25:
        mid = int(np.nonzero((meta.patient == 1) & (meta.frame == ED_FRAME) & (meta.z == 5))[0][0])
        assert sorted(int(meta.z[j]) for i, j in pairs if i == mid) == [3, 4, 5, 6, 7]


def test_cine_and_anatomy_pairs() -> None:
    meta = _meta({0: 6, 1: 6}, cine_frames=4)
    cine = {(i, j) for i, j in _pairs(meta, PositiveSpec("cine")) if i != j}
    assert all(meta.z[i] == meta.z[j] for i, j in cine)
    assert any(meta.frame[i] >= FIRST_CINE and meta.frame[j] == ED_FRAME for i, j in cine)
    anatomy = _pairs(meta, PositiveSpec("anatomy", 0.2))
    assert cine <= anatomy and _pairs(meta, PositiveSpec("phase")) <= anatomy
    assert all(abs(float(meta.position[i]) - float(meta.position[j])) <= 0.2 + 1e-6 for i, j in anatomy)
    assert any(meta.z[i] != meta.z[j] and meta.frame[i] != meta.frame[j] for i, j in anatomy)


def test_draw_returns_listed_partners_reproducibly() -> None:
    meta = _meta({0: 10, 1: 8})
    spec = PositiveSpec("anatomy")
    table = PartnerTable(meta, spec)
    allowed = _pairs(meta, spec)
    index = torch.arange(len(meta)).repeat(20)
    drawn = table.draw(index, torch.Generator().manual_seed(0))
    assert {(int(i), int(j)) for i, j in zip(index, drawn, strict=True)} <= allowed
    assert len(set(drawn.tolist())) > len(meta) // 2  # not always the anchor itself
    assert torch.equal(drawn, table.draw(index, torch.Generator().manual_seed(0)))


def test_bad_spec_is_refused() -> None:
    with pytest.raises(CardioclrError, match="unknown positives"):
        PositiveSpec("neighbours")
    with pytest.raises(CardioclrError, match="bound"):
        PositiveSpec("neighbour", 1.5)


# --------------------------------------------------------------------------------------------
# Never test patients, never two patients: through the real loading path
# --------------------------------------------------------------------------------------------


def _cfg(work: Path, out: Path, **kw: object) -> PretrainConfig:
    base = {"encoder": "smallcnn", "input_mode": "segmented", "masks": "expert", "image_size": SIZE,
            "batch_size": 16, "max_epochs": 2, "patience": 5, "accelerator": "cpu",
            "limit_train_batches": 2, "progress_bar": False, "positives": "anatomy"}
    base.update(kw)
    return PretrainConfig(work=str(work), out=str(out), **base)  # type: ignore[arg-type]


def test_sampler_on_loaded_slices_stays_within_allowed_patients(tiny_work: Path, tmp_path: Path) -> None:
    store = SliceStore(tiny_work)
    cfg = _cfg(tiny_work, tmp_path / "o")
    sources, train, val = build_sample_lists(cfg, tmp_path / "o")
    test = set(store.splits.test)
    for refs in (train, val):
        arrays = load_arrays(sources, refs, "full", SIZE)
        pairs = PositivePairs(arrays.images, arrays.hearts, arrays.meta, PositiveSpec("anatomy"))
        index = torch.arange(len(arrays)).repeat(5)
        rows = pairs.table.draw(index, torch.Generator().manual_seed(1))
        anchor_patients = arrays.meta.patient[index.numpy()]
        partner_patients = arrays.meta.patient[rows.numpy()]
        assert np.array_equal(anchor_patients, partner_patients)
        assert (rows != index).any()
        used = {arrays.patients[int(c)] for c in np.unique(partner_patients)}
        assert all(r.source == MAIN and r.patient_id not in test for r in used)
        assert {r.patient_id for r in used} == {r.patient_id for r in refs}
    assert not {r.patient_id for r in train} & {r.patient_id for r in val}


# --------------------------------------------------------------------------------------------
# The loss
# --------------------------------------------------------------------------------------------


def test_multi_positive_loss_equals_nt_xent_for_two_views() -> None:
    gen = torch.Generator().manual_seed(0)
    z0 = torch.randn(6, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    z1 = torch.randn(6, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    other_view = torch.eye(6, dtype=torch.bool).roll(6, dims=1)
    positive = torch.zeros(12, 12, dtype=torch.bool)
    positive[:6, 6:] = torch.eye(6, dtype=torch.bool)
    positive[6:, :6] = torch.eye(6, dtype=torch.bool)
    assert other_view.shape == (6, 6)
    multi = multi_positive_nt_xent(torch.cat([z0, z1]), positive, temperature=0.2, gather=False)
    plain = nt_xent(z0, z1, temperature=0.2, gather=False)
    assert torch.allclose(multi, plain, atol=1e-12)
    g_multi = torch.autograd.grad(multi, (z0, z1))
    g_plain = torch.autograd.grad(plain, (z0, z1))
    assert all(torch.allclose(a, b, atol=1e-12) for a, b in zip(g_multi, g_plain, strict=True))


def test_multi_positive_loss_matches_its_definition() -> None:
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(8, 5, generator=gen, dtype=torch.float64)
    positive = torch.rand(8, 8, generator=gen) < 0.3
    positive |= torch.eye(8, dtype=torch.bool).roll(1, dims=1)  # at least one each
    excluded = (torch.rand(8, 8, generator=gen) < 0.3) & ~positive
    t = 0.5
    h = torch.nn.functional.normalize(z, dim=1)
    s = h @ h.T / t
    want = []
    for i in range(8):
        allowed = [a for a in range(8) if a != i and not excluded[i, a]]
        lse = torch.logsumexp(s[i, allowed], dim=0)
        pos = [p for p in range(8) if p != i and positive[i, p]]
        want.append(-sum(s[i, p] - lse for p in pos) / len(pos))
    got = multi_positive_nt_xent(z, positive, excluded, temperature=t, gather=False)
    assert torch.allclose(got, torch.stack(want).mean(), atol=1e-10)
    # Excluding a negative changes the value (so the mask is used).
    assert not torch.allclose(got, multi_positive_nt_xent(z, positive, None, temperature=t,
                                                          gather=False))
    with pytest.raises(ValueError, match="positive"):
        multi_positive_nt_xent(z, torch.eye(8, dtype=torch.bool), gather=False)


def test_related_marks_same_slice_views_positive_for_augment() -> None:
    meta = _meta({0: 3, 1: 3}).as_tensor()
    rel = related(meta, meta, PositiveSpec("augment"))
    assert torch.equal(rel, torch.eye(len(meta), dtype=torch.bool))


# --------------------------------------------------------------------------------------------
# Pretraining with anatomy-aware positives
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["segmented", "full"])
def test_tiny_anatomy_pretraining_writes_an_encoder(tiny_work: Path, tmp_path: Path, mode: str) -> None:
    out = tmp_path / "anatomy"
    metrics = pretrain(_cfg(tiny_work, out, input_mode=mode))
    assert (out / "encoder.pt").is_file()
    assert read_encoder_file(out / "encoder.pt")["encoder"] == "smallcnn"
    assert metrics["config"]["positives"] == "anatomy" and metrics["best_val_loss"] > 0
    # Same command again: skipped as finished.
    assert pretrain(_cfg(tiny_work, out, input_mode=mode)).get("skipped") is True


def test_default_positives_keep_the_papers_run_key_and_folder(tmp_path: Path) -> None:
    plain = _cfg(tmp_path, tmp_path / "o", positives="augment")
    assert "positives" not in run_key(plain) and "neighbour_bound" not in run_key(plain)
    assert "neighbour_bound" not in run_key(_cfg(tmp_path, tmp_path / "o", positives="phase"))
    assert run_key(_cfg(tmp_path, tmp_path / "o"))["neighbour_bound"] == 0.25
    assert default_out("W", "smallcnn", "full") == Path("W/pretrain/smallcnn-full")
    assert default_out("W", "smallcnn", "full", "anatomy") == Path("W/pretrain/smallcnn-full-anatomy")


def test_resumed_anatomy_pretraining_matches_an_uninterrupted_one(tiny_work: Path, tmp_path: Path) -> None:
    # Partners are drawn with the module's checkpointed generator: a run resumed in place from
    # epoch 2 to 3 ends with the same encoder as 3 epochs straight.
    import dataclasses

    from cardioclr.models.checkpoint import load_encoder_weights

    cfg = _cfg(tiny_work, tmp_path / "resumed", input_mode="full")
    pretrain(cfg)
    pretrain(dataclasses.replace(cfg, max_epochs=3))
    pretrain(dataclasses.replace(cfg, out=str(tmp_path / "straight"), max_epochs=3))
    a = load_encoder_weights(tmp_path / "resumed" / "encoder.pt", "smallcnn")
    b = load_encoder_weights(tmp_path / "straight" / "encoder.pt", "smallcnn")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# Two processes (gloo, CPU), as the module computes it: masks from the gathered metadata.
_WORLD = 2


def _rank_worker(rank: int, init_file: str, z: torch.Tensor, meta: torch.Tensor, out: str) -> None:
    import torch.distributed as dist

    from cardioclr.ssl.loss import gather_rows
    from cardioclr.ssl.positives import same_patient

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=_WORLD)
    try:
        m = z.shape[0] // _WORLD
        local = z[rank * m:(rank + 1) * m].clone().requires_grad_()
        rows = meta[rank * m:(rank + 1) * m]
        columns = gather_rows(rows)
        spec = PositiveSpec("anatomy")
        loss = multi_positive_nt_xent(local, related(rows, columns, spec), same_patient(rows, columns),
                                      temperature=0.2)
        loss.backward()
        torch.save({"loss": loss.detach(), "grad": local.grad}, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_process_multi_positive_loss_equals_single_process(tmp_path: Path) -> None:
    import torch.distributed as dist
    import torch.multiprocessing as mp

    from cardioclr.ssl.positives import same_patient

    if not dist.is_available():
        pytest.skip("torch.distributed unavailable")
    meta_np = _meta({0: 4, 1: 4, 2: 4})  # 24 slices: 12 views per rank
    meta = meta_np.as_tensor()
    z = torch.randn(len(meta_np), 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    mp.spawn(_rank_worker, args=(str(tmp_path / "init"), z, meta, str(tmp_path)), nprocs=_WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(_WORLD)]
    full_z = z.clone().requires_grad_()
    spec = PositiveSpec("anatomy")
    full = multi_positive_nt_xent(full_z, related(meta, meta, spec), same_patient(meta, meta),
                                  temperature=0.2, gather=False)
    full.backward()
    assert torch.stack([r["loss"] for r in ranks]).mean().item() == pytest.approx(full.item(), abs=1e-9)
    assert abs(ranks[0]["loss"].item() - ranks[1]["loss"].item()) > 1e-6  # gathering did something
    grad = torch.cat([r["grad"] for r in ranks]) / _WORLD  # DDP averages over the W ranks
    torch.testing.assert_close(grad, full_z.grad, atol=1e-9, rtol=0)


def test_cli_passes_positives_to_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse

    from cardioclr.ssl import cli
    from cardioclr.ssl import pretrain as pretrain_module

    seen: list[PretrainConfig] = []
    monkeypatch.setattr(pretrain_module, "pretrain", lambda cfg: seen.append(cfg) or {})
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command"))
    base = ["pretrain", "W", "--encoder", "smallcnn", "--input", "full"]
    args = parser.parse_args([*base, "--positives", "neighbour", "--neighbour-bound", "0.3"])
    assert args.func(args) == 0
    assert seen[-1].positives == "neighbour" and seen[-1].neighbour_bound == 0.3
    args = parser.parse_args(base)
    args.func(args)
    assert seen[-1].positives == "augment"  # the paper's SimCLR by default
    with pytest.raises(SystemExit):
        parser.parse_args([*base, "--positives", "slices"])
