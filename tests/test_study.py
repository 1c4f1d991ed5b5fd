"""Study config, grid expansion, progress/ETA and the resumable runner (stages faked)."""

from __future__ import annotations

import io
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from cardioclr.errors import CardioclrError
from cardioclr.study.config import (
    config_differences,
    load_config,
    read_saved_config,
    resolve_imagenet_weights,
    save_config,
)
from cardioclr.study.grid import Cell, expand_grid, runnable
from cardioclr.study.kinds import CELL_KINDS, CellKind, kind_weights
from cardioclr.study.progress import estimate_remaining, format_seconds
from cardioclr.study.runner import MARKER, StudyContext, run_study
from cardioclr.study.stages import apply_options

# ------------------------------------------------------------------------------ config


def test_presets_and_yaml_override(tmp_path: Path) -> None:
    demo = load_config("demo")
    assert demo.encoders == ("smallcnn",) and demo.data is None
    paper = load_config("paper")
    assert paper.encoders == ("vgg16", "densenet121") and paper.prepare.image_size == 224
    y = tmp_path / "s.yaml"
    y.write_text(yaml.safe_dump({"preset": "demo", "prepare": {"image_size": 96},
                                 "finetune": {"options": {"max_epochs": 3}}}))
    cfg = load_config(None, y)
    assert cfg.prepare.image_size == 96 and cfg.prepare.spacing_mm == demo.prepare.spacing_mm
    # options merge key by key: the preset's other finetune options survive.
    assert cfg.finetune.options["max_epochs"] == 3
    assert cfg.finetune.options["grid_lr"] == demo.finetune.options["grid_lr"]
    # Saved form round-trips and compares equal.
    save_config(cfg, tmp_path / "study.yaml")
    assert config_differences(read_saved_config(tmp_path / "study.yaml"), cfg) == []
    assert any("image_size" in d for d in config_differences(demo, cfg))


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    y = tmp_path / "bad.yaml"
    y.write_text(yaml.safe_dump({"prepare": {"imagesize": 96}}))
    with pytest.raises(CardioclrError, match="imagesize"):
        load_config("demo", y)
    with pytest.raises(CardioclrError, match="unknown encoder"):
        load_config("demo", overrides={"encoders": ["resnet999"]})
    with pytest.raises(CardioclrError, match="preset"):
        load_config("nope")


def test_runtime_fields_may_change() -> None:
    a = load_config("demo")
    b = load_config("demo", overrides={"devices": 2, "accelerator": "gpu"})
    assert config_differences(a, b) == []


def test_configs_files_match_presets() -> None:
    root = Path(__file__).resolve().parents[1] / "configs"
    for name in ("demo", "paper"):
        cfg = load_config(None, root / f"study_{name}.yaml")
        assert config_differences(load_config(name), cfg) == [], name


def test_imagenet_weights_resolution(tmp_path: Path) -> None:
    f = tmp_path / "vgg16-397923af.pth"
    f.write_bytes(b"x")
    assert resolve_imagenet_weights([str(f)], ("vgg16", "densenet121")) == {"vgg16": str(f)}
    assert resolve_imagenet_weights([f"densenet121={f}"], ("vgg16", "densenet121")) == {
        "densenet121": str(f)}
    g = tmp_path / "weights.pth"
    with pytest.raises(CardioclrError, match="which encoder"):
        resolve_imagenet_weights([str(g)], ("vgg16", "densenet121"))


def test_apply_options_nested_and_unknown() -> None:
    from dataclasses import dataclass, field

    @dataclass(frozen=True)
    class Inner:
        lr: float = 1.0

    @dataclass(frozen=True)
    class Outer:
        inner: Inner = field(default_factory=Inner)
        sizes: tuple[int, ...] = (1,)

    o = apply_options(Outer(), {"inner": {"lr": 0.5}, "sizes": [2, 3]}, "x")
    assert o.inner.lr == 0.5 and o.sizes == (2, 3)
    with pytest.raises(CardioclrError, match="nope"):
        apply_options(Outer(), {"nope": 1}, "x")


# ------------------------------------------------------------------------------ grid


def test_demo_grid_cells() -> None:
    cells = expand_grid(load_config("demo"))
    kinds = Counter(c.kind for c in cells)
    assert kinds == {"synthetic": 1, "prepare": 1, "segment-train": 1, "segment-predict": 1,
                     "segment-evaluate": 1, "pretrain": 2, "finetune": 8, "baseline": 1, "hybrid": 1}
    ids = [c.id for c in cells]
    assert len(set(ids)) == len(ids) and len({c.path for c in cells}) == len(cells)
    for i, c in enumerate(cells):  # dependencies come first
        assert all(d in ids[:i] for d in c.deps), c.id
    ft = {c.id: c for c in cells if c.kind == "finetune"}
    assert set(ft) == {f"finetune/smallcnn__{p}__{i}" for p in
                       ("none", "imagenet", "simclr-full", "simclr-segmented")
                       for i in ("full", "segmented")}
    for i in ("full", "segmented"):
        im = ft[f"finetune/smallcnn__imagenet__{i}"]
        assert im.not_run_reason and "ImageNet" in im.not_run_reason
    assert "pretrain/smallcnn-segmented" in ft["finetune/smallcnn__simclr-segmented__full"].deps
    assert len(runnable(cells)) == 15 and len(cells) == 17
    # The hybrid's deep features come from the SimCLR pretraining (label-free), not from a
    # fine-tuned model (trained on the train labels).
    hybrid = next(c for c in cells if c.kind == "hybrid")
    assert hybrid.not_run_reason is None
    assert hybrid.deps == ("segment-predict", "pretrain/smallcnn-segmented")
    assert hybrid.params["deep_features"] == "work/pretrain/smallcnn-segmented"
    assert not any(d.startswith("finetune/") for d in hybrid.deps)


def test_hybrid_from_names_a_simclr_pretraining() -> None:
    cfg = load_config("demo", overrides={"baseline": {"hybrid_from": "full"}})
    hybrid = next(c for c in expand_grid(cfg) if c.kind == "hybrid")
    assert hybrid.params["source_cell"] == "pretrain/smallcnn-full"
    assert hybrid.params["deep_features"] == "work/pretrain/smallcnn-full"
    # An input that is not pretrained in this grid: listed, not run, with the reason.
    cfg = load_config("demo", overrides={"baseline": {"hybrid_from": "roi"}})
    hybrid = next(c for c in expand_grid(cfg) if c.kind == "hybrid")
    assert hybrid.not_run_reason and "no SimCLR pretraining of smallcnn on roi" in hybrid.not_run_reason
    cfg = load_config("demo", overrides={"finetune": {"inits": ["none"]}})
    hybrid = next(c for c in expand_grid(cfg) if c.kind == "hybrid")
    assert hybrid.not_run_reason and "simclr" in hybrid.not_run_reason
    # The former PRETRAINING/INPUT form (a fine-tuning cell's features) is refused.
    with pytest.raises(CardioclrError, match="hybrid_from.*full, segmented, roi"):
        load_config("demo", overrides={"baseline": {"hybrid_from": "simclr-segmented/segmented"}})


def test_paper_grid_imagenet_reason_and_weights(tmp_path: Path) -> None:
    cells = expand_grid(load_config("paper"))
    im = [c for c in cells if c.kind == "finetune" and c.params["init"] == "imagenet"]
    assert len(im) == 4 and all("--imagenet-weights" in (c.not_run_reason or "") for c in im)
    w = tmp_path / "vgg16.pth"
    w.write_bytes(b"x")
    cells = expand_grid(load_config("paper", overrides={"imagenet_weights": {"vgg16": str(w)}}))
    im = {c.params["encoder"]: c for c in cells if c.kind == "finetune" and c.params["init"] == "imagenet"
          and c.params["input"] == "full"}
    assert im["vgg16"].not_run_reason is None and im["vgg16"].params["weights"] == str(w)
    assert im["densenet121"].not_run_reason
    assert sum(c.kind == "finetune" for c in cells) == 16


def test_hybrid_stage_uses_the_pretraining_features(tiny_work: Path, tmp_path: Path) -> None:
    """The real hybrid stage on the tiny store: features of the pretraining cell's encoder.pt,
    computed there when the pretraining did not write them (e.g. a run from before they were)."""
    import pandas as pd

    from cardioclr.models.checkpoint import save_encoder
    from cardioclr.models.encoders import build_encoder
    from cardioclr.study.stages import run_baseline

    out = tmp_path / "study"
    (out / "work").mkdir(parents=True)
    for item in tiny_work.iterdir():  # the read-only store, without writing into it
        (out / "work" / item.name).symlink_to(item)
    cfg = load_config("demo", overrides={
        "accelerator": "cpu", "mask_source": "expert", "report": {"n_boot": 50},
        "baseline": {"options": {"model": "vote", "cv_repeats": 1}}})  # the default, not the demo's
    cell = next(c for c in expand_grid(cfg) if c.kind == "hybrid")
    pre = out / cell.params["deep_features"]
    encoder, dim = build_encoder("smallcnn")
    save_encoder(pre / "encoder.pt", encoder, "smallcnn", dim, "segmented", 32, mask_source="expert")
    summary = run_baseline(StudyContext(cfg, out), cell)
    assert summary["model"] == "hybrid-vote"  # the default: each member with its own PCA
    feats = pd.read_csv(pre / "deep_features.csv", dtype={"patient_id": str})
    assert len(feats) == len(pd.read_csv(tiny_work / "manifest.csv")) and feats.shape[1] == 1 + 2 * dim
    m = json.loads((out / cell.path / "metrics.json").read_text())
    assert m["deep_features"]["file"] == str(pre / "deep_features.csv")
    assert m["deep_features"]["pca_components"] >= 1


# ------------------------------------------------------------------------------ progress


def test_eta_weighted_by_kind() -> None:
    a = Cell("a", "pretrain", "a")
    b = Cell("b", "finetune", "b")
    c = Cell("c", "finetune", "c")
    d = Cell("d", "baseline", "d")
    assert estimate_remaining([b], {}, [], []) is None
    # pretrain measured at 30 s (weight 3) -> 10 s per unit; finetune (weight 2) -> 20 s each.
    assert estimate_remaining([b, c], {"pretrain": [30.0]}, [a], [30.0]) == pytest.approx(40.0)
    # a measured finetune overrides the prior.
    assert estimate_remaining([c, d], {"pretrain": [30.0], "finetune": [50.0]}, [a, b],
                              [30.0, 50.0]) == pytest.approx(50.0 + 0.3 * 80.0 / 5.0)
    assert format_seconds(75) == "1m15s" and format_seconds(3725) == "1h02m"


def test_eta_divides_the_cells_run_side_by_side_by_the_processes() -> None:
    """With ``finetune.concurrent: 2`` the fine-tuning and baseline cells run two at a time:
    their remaining seconds count half; a cell of another kind counts in full."""
    a = Cell("a", "pretrain", "a")
    left = [Cell("b", "finetune", "b"), Cell("c", "finetune", "c"), Cell("d", "baseline", "d"),
            Cell("e", "pretrain", "e")]
    durations = {"pretrain": [30.0], "finetune": [50.0], "baseline": [20.0]}
    one_at_a_time = estimate_remaining(left, durations, [a], [30.0])
    assert one_at_a_time == pytest.approx(50.0 + 50.0 + 20.0 + 30.0)
    assert estimate_remaining(left, durations, [a], [30.0], slots=2) == pytest.approx(120.0 / 2 + 30.0)


def test_eta_takes_a_budgeted_cell_at_its_budget_not_as_the_machine_speed() -> None:
    """The cpu segmentation preset trains for a fixed 28 minutes: the ETA counts the budget for
    it, and its 28 minutes do not make every other kind look 28 minutes / weight slow."""
    assert CELL_KINDS["segment-train"].budget_seconds is not None
    assert CELL_KINDS["segment-train"].budget_seconds(load_config("real-cpu")) == pytest.approx(28 * 60)
    assert CELL_KINDS["segment-train"].budget_seconds(load_config("demo")) is None  # an epoch cap
    prep, seg, ft = Cell("p", "prepare", "p"), Cell("s", "segment-train", "s"), Cell("f", "finetune", "f")
    budgets = {"s": 1680.0}
    assert estimate_remaining([seg], {}, [], [], budgets=budgets) == pytest.approx(1680.0)
    assert estimate_remaining([seg, ft], {}, [], [], budgets=budgets) is None
    # prepare: 6 s for weight 0.3 -> 20 s per unit; a fine-tuning cell (weight 2) 40 s.
    assert estimate_remaining([seg, ft], {"prepare": [6.0]}, [prep], [6.0],
                              budgets=budgets) == pytest.approx(1720.0)
    after = estimate_remaining([ft], {"prepare": [6.0], "segment-train": [1673.0]}, [prep, seg],
                               [6.0, 1673.0], budgets=budgets)
    assert after == pytest.approx(40.0)  # without the budget: (6 + 1673) / 3.3 * 2 = 1018 s


def test_eta_uses_the_real_cpu_presets_measured_weights() -> None:
    """Replay of the real-cpu study of the 100 ACDC patients (2026-12-03): after both SimCLR
    pretrainings the 9 cells left (6 fine-tuning, roi, clinical, hybrid; two at a time) took
    710 s. The demo's weights (SimCLR 3, a baseline 0.3) gave 262 s; the preset's own 640-780 s."""
    done = {"prepare": 5.5, "segment-train": 1673.0, "segment-predict": 82.0, "segment-evaluate": 10.0,
            "pretrain": 77.0}
    finished = [Cell(k, k, k) for k in done] + [Cell("pretrain2", "pretrain", "pretrain2")]
    seconds = [*done.values(), 77.0]
    durations = {c.kind: [t] for c, t in zip(finished, seconds, strict=True)}
    durations["pretrain"] = [77.0, 77.0]
    left = ([Cell(f"f{i}", "finetune", f"f{i}") for i in range(6)]
            + [Cell("roi", "beyond", "roi"), Cell("c", "baseline", "c"), Cell("h", "hybrid", "h")])
    budgets = {"segment-train": 1680.0}

    def eta(preset: str) -> float | None:
        return estimate_remaining(left, durations, finished, seconds, kind_weights(preset=preset), slots=2,
                                  budgets=budgets)

    assert eta("demo") == pytest.approx(262.0, abs=5.0)
    assert 640.0 < (eta("real-cpu") or 0.0) < 780.0
    assert kind_weights(preset="no-such-preset") == kind_weights()


# ------------------------------------------------------------------------------ runner


class FakeStages:
    """Cheap stand-ins for every stage: write metrics.json where the real one would."""

    def __init__(self, fail_on: str | None = None, die_after: int | None = None) -> None:
        self.calls: Counter[str] = Counter()
        self.fail_on = fail_on
        self.die_after = die_after

    def __call__(self, ctx: StudyContext, cell: Cell) -> dict[str, Any]:
        self.calls[cell.id] += 1
        if self.die_after is not None and sum(self.calls.values()) > self.die_after:
            raise KeyboardInterrupt  # the study is killed while this cell runs
        if cell.id == self.fail_on:
            raise RuntimeError("simulated failure")
        d = ctx.cell_dir(cell)
        d.mkdir(parents=True, exist_ok=True)
        name = "dataset.json" if cell.kind == "prepare" else "metrics.json"
        (d / name).write_text(json.dumps({"cell": cell.id}))
        return {"ok": True}

    def kinds(self) -> dict[str, CellKind]:
        """The registry with this fake as every kind's stage: same costs and outputs, no
        option check, never a separate process."""
        return {name: CellKind(self, kind.weight, kind.outputs) for name, kind in CELL_KINDS.items()}


def test_resume_after_kill_runs_each_cell_once(tmp_path: Path) -> None:
    cfg = load_config("demo")
    out = tmp_path / "study"
    killed = FakeStages(die_after=5)
    with pytest.raises(KeyboardInterrupt):
        run_study(cfg, out, kinds=killed.kinds(), stream=io.StringIO(), build_report=False)
    state = json.loads((out / "study_state.json").read_text())
    assert [k for k, r in state["cells"].items() if r["status"] == "done"] == \
        ["synthetic", "prepare", "segment-train", "segment-predict", "segment-evaluate"]
    assert state["cells"]["pretrain/smallcnn-full"]["status"] == "pending"

    again = FakeStages()
    stream = io.StringIO()
    result = run_study(cfg, out, kinds=again.kinds(), stream=stream, build_report=False)
    assert result.ok and len(result.done) == 15 and len(result.not_run) == 2
    # Finished cells were not re-run; the interrupted one and the rest ran exactly once.
    assert set(again.calls) == {c.id for c in runnable(expand_grid(cfg))} - set(killed.calls) | {
        "pretrain/smallcnn-full"}
    assert all(n == 1 for n in again.calls.values())
    assert "already done: prepare" in stream.getvalue() and "ETA" in stream.getvalue()
    for c in runnable(expand_grid(cfg)):
        assert (out / c.path / MARKER).is_file()

    third = FakeStages()
    assert run_study(cfg, out, kinds=third.kinds(), stream=io.StringIO(), build_report=False).ok
    assert not third.calls  # everything finished: nothing runs


def test_failed_cell_recorded_dependents_not_run(tmp_path: Path) -> None:
    cfg = load_config("demo")
    out = tmp_path / "study"
    stages = FakeStages(fail_on="pretrain/smallcnn-full")
    stream = io.StringIO()
    result = run_study(cfg, out, kinds=stages.kinds(), stream=stream, build_report=False)
    # The two cells that depend on the failed one leave the total: the last line adds up.
    assert stream.getvalue().strip().splitlines()[-1].startswith("[study 13/13 done")
    assert not result.ok and list(result.failed) == ["pretrain/smallcnn-full"]
    assert "simulated failure" in result.failed["pretrain/smallcnn-full"]
    state = json.loads((out / "study_state.json").read_text())["cells"]
    assert state["pretrain/smallcnn-full"]["status"] == "failed"
    for inp in ("full", "segmented"):
        rec = state[f"finetune/smallcnn__simclr-full__{inp}"]
        assert rec["status"] == "not-run" and "pretrain/smallcnn-full" in rec["reason"]
    # Cells that do not depend on it ran.
    assert state["finetune/smallcnn__simclr-segmented__segmented"]["status"] == "done"
    assert state["finetune/smallcnn__none__full"]["status"] == "done"
    assert "Traceback" in (out / "logs" / "pretrain__smallcnn-full.log").read_text()
    # A re-run retries the failed cell (and its dependents) only.
    retry = FakeStages()
    assert run_study(cfg, out, kinds=retry.kinds(), stream=io.StringIO(), build_report=False).ok
    assert set(retry.calls) == {"pretrain/smallcnn-full", "finetune/smallcnn__simclr-full__full",
                                "finetune/smallcnn__simclr-full__segmented"}


def test_different_config_in_same_out_refused(tmp_path: Path) -> None:
    out = tmp_path / "study"
    stages = FakeStages()
    run_study(load_config("demo"), out, kinds=stages.kinds(), stream=io.StringIO(), build_report=False)
    other = load_config("demo", overrides={"prepare": {"image_size": 96}})
    with pytest.raises(CardioclrError, match="image_size"):
        run_study(other, out, kinds=stages.kinds(), stream=io.StringIO(), build_report=False)


def test_predict_refuses_to_replace_a_foreign_work_dir(tmp_path: Path) -> None:
    from cardioclr.study.predict import PREDICT_MARKER, _check_replaceable

    study_work = tmp_path / "study" / "work"
    study_work.mkdir(parents=True)
    (study_work / "dataset.json").write_text("{}")
    # `predict ... --out OUT` of the study itself must not wipe the training store.
    with pytest.raises(CardioclrError, match="own work directory"):
        _check_replaceable(study_work, study_work)
    other = tmp_path / "pred" / "work"
    other.mkdir(parents=True)
    (other / "notes.txt").write_text("mine")
    with pytest.raises(CardioclrError, match="not written by cardioclr predict"):
        _check_replaceable(other, study_work)
    (other / PREDICT_MARKER).write_text("")
    _check_replaceable(other, study_work)  # an earlier predict's store may be replaced
    _check_replaceable(tmp_path / "absent" / "work", study_work)


def test_lightning_style_exit_is_an_interruption(tmp_path: Path) -> None:
    """Lightning's fit() turns Ctrl-C into sys.exit(1) (SIGTERM: a SystemExit subclass)."""
    cfg = load_config("demo")
    out = tmp_path / "study"
    stages = FakeStages()

    def exits(ctx: StudyContext, cell: Cell) -> dict[str, Any]:
        raise SystemExit(1)

    kinds = {**stages.kinds(), "segment-train": CellKind(exits, 3.0)}
    with pytest.raises(KeyboardInterrupt):
        run_study(cfg, out, kinds=kinds, stream=io.StringIO(), build_report=False)
    state = json.loads((out / "study_state.json").read_text())["cells"]
    assert state["segment-train"]["status"] == "pending"
    assert "resume" in state["segment-train"]["error"]


def _imagenet_ids(cfg: Any) -> set[str]:
    return {c.id for c in expand_grid(cfg) if c.kind == "finetune" and c.params["init"] == "imagenet"}


def test_imagenet_weights_added_later_run_the_missing_cells(tmp_path: Path) -> None:
    """A study run without --imagenet-weights accepts the file later: only its ImageNet cells
    run, study.yaml names the file, and the report shows those cells as done."""
    import dataclasses

    from cardioclr.study.report import collect

    out = tmp_path / "study"
    cfg = load_config("demo", overrides={"encoders": ["vgg16"]})
    first = run_study(cfg, out, kinds=FakeStages().kinds(), stream=io.StringIO(),
                      build_report=False)
    imagenet = _imagenet_ids(cfg)
    assert len(imagenet) == 2 and set(first.not_run) == imagenet
    weights = tmp_path / "vgg16-397923af.pth"
    weights.write_bytes(b"x")
    with_weights = dataclasses.replace(cfg, imagenet_weights={"vgg16": str(weights)})
    again = FakeStages()
    stream = io.StringIO()
    result = run_study(with_weights, out, kinds=again.kinds(), stream=stream, build_report=False)
    assert result.ok and not result.not_run
    assert set(again.calls) == imagenet and set(result.ran) == imagenet  # nothing else re-ran
    assert "imagenet_weights.vgg16" in stream.getvalue()
    assert read_saved_config(out / "study.yaml").imagenet_weights == {"vgg16": str(weights)}
    state = json.loads((out / "study_state.json").read_text())["cells"]
    assert all(state[cid]["status"] == "done" and state[cid]["reason"] is None for cid in imagenet)
    report = {c.cell: c for c in collect(out).cells}
    for cid in imagenet:
        assert report[cid.removeprefix("finetune/")].status == "done"
    # The same file again is the same study: nothing runs.
    third = FakeStages()
    assert run_study(with_weights, out, kinds=third.kinds(), stream=io.StringIO(),
                     build_report=False).ok
    assert not third.calls


def test_imagenet_weights_cannot_be_changed_or_removed(tmp_path: Path) -> None:
    import dataclasses

    out = tmp_path / "study"
    a, b = tmp_path / "a.pth", tmp_path / "b.pth"
    a.write_bytes(b"a")
    b.write_bytes(b"b")
    cfg = load_config("demo", overrides={"encoders": ["vgg16", "resnet18"],
                                         "imagenet_weights": {"vgg16": str(a)}})
    run_study(cfg, out, kinds=FakeStages().kinds(), stream=io.StringIO(), build_report=False)
    changed = dataclasses.replace(cfg, imagenet_weights={"vgg16": str(b)})
    removed = dataclasses.replace(cfg, imagenet_weights={})
    # Adding another encoder's file while changing this one is still refused.
    mixed = dataclasses.replace(cfg, imagenet_weights={"vgg16": str(b), "resnet18": str(a)})
    for other in (changed, removed, mixed):
        stages = FakeStages()
        with pytest.raises(CardioclrError, match="imagenet_weights.vgg16.*added to a study but not"):
            run_study(other, out, kinds=stages.kinds(), stream=io.StringIO(), build_report=False)
        assert not stages.calls
        assert read_saved_config(out / "study.yaml").imagenet_weights == {"vgg16": str(a)}
    assert config_differences(cfg, dataclasses.replace(
        cfg, imagenet_weights={"vgg16": str(a), "resnet18": str(b)})) == []


def test_cli_adds_imagenet_weights_to_a_saved_study(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """``cardioclr study --out OUT --imagenet-weights vgg16=FILE`` on a study first run without
    it (config read from OUT/study.yaml) runs only the ImageNet cells."""
    from cardioclr.cli import main
    from cardioclr.study import kinds as kinds_module

    fake = FakeStages()
    for name, kind in fake.kinds().items():
        monkeypatch.setitem(kinds_module.CELL_KINDS, name, kind)
    out = tmp_path / "study"
    cfg = tmp_path / "vgg.yaml"
    # One fine-tuning cell at a time, in this process: cell processes would not see the fakes.
    cfg.write_text(yaml.safe_dump({"preset": "demo", "encoders": ["vgg16"],
                                   "finetune": {"concurrent": 1}}))
    assert main(["study", "--out", str(out), "--config", str(cfg)]) == 0
    first = set(fake.calls)
    imagenet = _imagenet_ids(load_config(None, cfg))
    assert first and not first & imagenet
    weights = tmp_path / "vgg16-397923af.pth"
    weights.write_bytes(b"x")
    fake.calls.clear()
    assert main(["study", "--out", str(out), "--imagenet-weights", f"vgg16={weights}"]) == 0
    assert set(fake.calls) == imagenet
    assert read_saved_config(out / "study.yaml").imagenet_weights == {"vgg16": str(weights.resolve())}
    other = tmp_path / "other.pth"
    other.write_bytes(b"y")
    fake.calls.clear()
    assert main(["study", "--out", str(out), "--imagenet-weights", f"vgg16={other}"]) != 0
    assert "not changed or removed" in capsys.readouterr().err and not fake.calls


def test_predict_saliency_folder_holds_only_this_runs_patients(tmp_path: Path) -> None:
    """A second predict into the same DIR replaces DIR/saliency whole: no PNG of an earlier
    run's patient stays beside the new predictions.csv (nor after a failed or skipped render)."""
    from cardioclr.study.predict import write_saliency

    folder = tmp_path / "pred" / "saliency"

    def overlays(*pids: str) -> Any:
        def render(d: Path) -> None:
            assert d != folder  # built under a temporary name, swapped in at the end
            for pid in pids:
                (d / f"{pid}.png").write_bytes(b"png")
        return render

    assert write_saliency(folder, overlays("p1", "p2")) == "written"
    assert sorted(p.name for p in folder.iterdir()) == ["p1.png", "p2.png"]
    assert write_saliency(folder, overlays("p3")) == "written"
    assert sorted(p.name for p in folder.iterdir()) == ["p3.png"]
    assert sorted(p.name for p in folder.parent.iterdir()) == ["saliency"]  # no leftovers

    def broken(d: Path) -> None:
        (d / "p4.png").write_bytes(b"half")
        raise RuntimeError("no gradients")

    assert write_saliency(folder, broken).startswith("failed: RuntimeError")
    assert not folder.exists() and not any(folder.parent.iterdir())
    write_saliency(folder, overlays("p5"))
    assert write_saliency(folder, None) == "none" and not folder.exists()  # --no-saliency


def test_study_refuses_to_run_as_several_processes(tmp_path: Path) -> None:
    # Under torchrun every process would run the whole study into the same folder.
    from cardioclr.cli import main
    from cardioclr.study.cli import launched_as_several_processes

    assert launched_as_several_processes({"WORLD_SIZE": "4"}) is not None
    assert launched_as_several_processes({"WORLD_SIZE": "1"}) is None
    assert launched_as_several_processes({"SLURM_NTASKS": "4", "SLURM_PROCID": "0"}) is None
    import os
    from unittest import mock

    with mock.patch.dict(os.environ, {"WORLD_SIZE": "2"}):
        assert main(["study", "--out", str(tmp_path / "s")]) == 1
    assert not (tmp_path / "s").exists()


def test_unknown_stage_option_fails_before_any_cell_runs(tmp_path: Path) -> None:
    """Each kind's option check (CellKind.check_options) runs before the first cell."""
    import dataclasses

    bad = load_config("demo", overrides={"finetune": {"options": {"learning_rat": 0.1}}})
    fake = FakeStages()
    kinds = {name: dataclasses.replace(kind, run=fake) for name, kind in CELL_KINDS.items()}
    with pytest.raises(CardioclrError, match=r"finetune\.options: unknown option\(s\) \['learning_rat'\]"):
        run_study(bad, tmp_path / "study", kinds=kinds, stream=io.StringIO(), build_report=False)
    assert not fake.calls
