"""Cells beyond the paper's grid (``beyond_paper:``): config, grid, the runner, results.csv and
the report's Table 4 and answers, on a tiny study whose training stages are faked."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from cardioclr.artifacts import FinetuneMetrics
from cardioclr.errors import CardioclrError
from cardioclr.evaluate.compare import compare_accuracy
from cardioclr.evaluate.metrics import classification_metrics, prob_columns, to_jsonable
from cardioclr.study.config import load_config
from cardioclr.study.grid import Cell, expand_grid
from cardioclr.study.kinds import CELL_KINDS, CellKind
from cardioclr.study.runner import StudyContext, run_study
from cardioclr.study.stages import check_beyond
from test_report_fakes import CLASSES, fake_predictions

BEYOND = [
    {"name": "strong", "input": "roi"},
    {"name": "weak", "init": "simclr", "pretrain_input": "segmented"},
    {"name": "own-ssl", "init": "simclr", "pretrain_input": "full",
     "pretrain_options": {"temperature": 0.2}},
    {"name": "own-ssl-short", "init": "simclr", "pretrain_input": "full",
     "pretrain_options": {"temperature": 0.2}, "finetune_options": {"max_epochs": 3}},
]


def beyond_config(beyond: list[dict[str, Any]] | None = None) -> Any:
    return load_config("demo", overrides={"beyond_paper": BEYOND if beyond is None else beyond})


def test_grid_has_beyond_cells_and_shares_pretrainings() -> None:
    cells = {c.id: c for c in expand_grid(beyond_config())}
    assert [c for c in cells if c.startswith("beyond/")] == [
        "beyond/strong", "beyond/weak", "beyond/own-ssl", "beyond/own-ssl-short"]
    assert cells["beyond/strong"].kind == "beyond" and cells["beyond/strong"].path == "beyond/strong"
    # No own options: the paper grid's SimCLR pretraining of that input is reused.
    assert "pretrain/smallcnn-segmented" in cells["beyond/weak"].deps
    assert cells["beyond/weak"].params["weights"] == "work/pretrain/smallcnn-segmented/encoder.pt"
    # Own options: one new pretraining, shared by both cells that ask for it.
    own = [c for c in cells.values() if c.kind == "pretrain" and c.params.get("options")]
    assert len(own) == 1 and own[0].params["options"] == {"temperature": 0.2}
    assert own[0].id in cells["beyond/own-ssl"].deps and own[0].id in cells["beyond/own-ssl-short"].deps
    assert cells["beyond/own-ssl-short"].params["options"] == {"max_epochs": 3}
    # The paper's grid is unchanged (Tables 1-3 keep their cells).
    paper = [c.id for c in expand_grid(load_config("demo"))]
    assert [c for c in cells if c in set(paper)] == paper


@pytest.mark.parametrize("entry, message", [
    ({"name": "Bad Name"}, "name"),
    ({"name": "x", "input": "nope"}, "input"),
    ({"name": "x", "init": "simclr"}, "pretrain_input"),
    ({"name": "x", "pretrain_options": {"lr": 1.0}}, "need init simclr"),
    ({"name": "x", "unknown_key": 1}, "unknown key"),
    ({"name": "x", "encoder": "nonet"}, "encoder 'nonet': unknown"),
])
def test_bad_beyond_entries_name_the_problem(entry: dict[str, Any], message: str) -> None:
    with pytest.raises(CardioclrError, match=message):
        beyond_config([entry])


def test_beyond_cell_may_use_an_encoder_outside_the_grid() -> None:
    cfg = beyond_config([{"name": "seg-init-simclr", "init": "simclr", "pretrain_input": "segmented",
                          "encoder": "segunet", "pretrain_options": {"init": "segmentation"}}])
    cells = {c.id: c for c in expand_grid(cfg)}
    assert cells["beyond/seg-init-simclr"].params["encoder"] == "segunet"
    pre = [c for c in cells.values() if c.kind == "pretrain" and c.params["encoder"] == "segunet"]
    assert len(pre) == 1 and pre[0].id in cells["beyond/seg-init-simclr"].deps
    assert not any(c.params.get("encoder") == "segunet" for c in cells.values() if c.kind == "finetune")


def test_unknown_beyond_option_fails_before_any_cell_runs() -> None:
    check_beyond(beyond_config())  # the options used above exist
    with pytest.raises(CardioclrError, match="beyond_paper.finetune_options"):
        check_beyond(beyond_config([{"name": "x", "finetune_options": {"no_such_option": 1}}]))
    with pytest.raises(CardioclrError, match="beyond_paper.pretrain_options"):
        check_beyond(beyond_config([{"name": "x", "init": "simclr", "pretrain_input": "full",
                                     "pretrain_options": {"no_such_option": 1}}]))


def test_compare_accuracy_mcnemar() -> None:
    y = np.arange(30) % len(CLASSES)
    right, wrong = np.eye(len(CLASSES))[y], np.eye(len(CLASSES))[(y + 1) % len(CLASSES)]
    a, b = right.copy(), right.copy()
    b[:8] = wrong[:8]          # A right, B wrong on 8 patients
    a[8:9] = wrong[8:9]        # B right, A wrong on 1
    frame = {"patient_id": [f"p{i}" for i in range(30)], "label_index": y}
    pa, pb = pd.DataFrame(frame), pd.DataFrame(frame)
    pa[prob_columns(CLASSES)], pb[prob_columns(CLASSES)] = a, b
    out = compare_accuracy(pa, pb, CLASSES, n_boot=500)
    assert out["discordant"] == {"a_only": 8, "b_only": 1}
    assert out["accuracy_diff"]["value"] == pytest.approx(7 / 30)
    assert out["mcnemar_p_value"] == pytest.approx(0.0390625)  # exact binomial, 2 * P(X <= 1 | 9)
    assert 0 < out["accuracy_diff"]["ci_low"] < out["accuracy_diff"]["ci_high"]
    same = compare_accuracy(pa, pa, CLASSES, n_boot=100)
    assert same["mcnemar_p_value"] == 1.0 and same["accuracy_diff"]["value"] == 0.0


# --------------------------------------------------------------------- a tiny faked study

TEST_IDS = [f"patient{i:03d}" for i in range(1, 41)]
Y = np.arange(len(TEST_IDS)) % len(CLASSES)
#: Signal strength of each faked cell (higher: better AUC) and its faked CV AUC on train.
STRENGTH = {"smallcnn__none__full": (0.5, 0.70), "smallcnn__simclr-full__full": (0.6, 0.71),
            "smallcnn__simclr-segmented__full": (0.4, 0.69), "smallcnn__none__segmented": (1.0, 0.74),
            "smallcnn__simclr-full__segmented": (1.2, 0.80), "smallcnn__simclr-segmented__segmented":
            (1.3, 0.78), "strong": (4.0, 0.95), "weak": (0.2, 0.6), "own-ssl": (1.1, 0.75)}


class FakeTraining:
    """Every stage faked; fine-tuning cells write the metrics.json and predictions.csv the real
    stage writes (with a CV AUC), so the real report runs on them. ``own-ssl-short`` fails."""

    def __call__(self, ctx: StudyContext, cell: Cell) -> dict[str, Any]:
        d = ctx.cell_dir(cell)
        d.mkdir(parents=True, exist_ok=True)
        if cell.kind == "prepare":
            (d / "dataset.json").write_text(json.dumps({"classes": CLASSES, "test": len(TEST_IDS)}))
            return {}
        name = d.name
        if name == "own-ssl-short":
            raise RuntimeError("simulated failure")
        if cell.kind not in ("finetune", "beyond") or name not in STRENGTH:
            (d / "metrics.json").write_text("{}")
            return {}
        strength, cv_auc = STRENGTH[name]
        proba = fake_predictions(Y, strength, seed=int(strength * 10))
        pred = pd.DataFrame({"patient_id": TEST_IDS, "label_index": Y})
        pred[prob_columns(CLASSES)] = proba
        pred.to_csv(d / "predictions.csv", index=False)
        p = cell.params
        m = FinetuneMetrics(encoder=p["encoder"], pretraining=p["pretraining"],
                            downstream_input=p["input"], mask_source="predicted", classes=CLASSES,
                            test=classification_metrics(Y, proba, CLASSES, n_boot=200),
                            selected={"cv_val_auc_mean": cv_auc}, train_seconds=1.0)
        (d / "metrics.json").write_text(json.dumps(to_jsonable(m)))
        return {}

    def kinds(self) -> dict[str, CellKind]:
        return {k: CellKind(self, v.weight, v.outputs) for k, v in CELL_KINDS.items()}


@pytest.fixture(scope="module")
def faked_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("beyond") / "study"
    cfg = beyond_config()
    result = run_study(cfg, out, kinds=FakeTraining().kinds(), stream=io.StringIO())
    assert set(result.failed) == {"beyond/own-ssl-short"}
    return out


def test_beyond_cells_in_results_csv(faked_study: Path) -> None:
    df = pd.read_csv(faked_study / "results.csv").set_index("cell")
    beyond = df[df["kind"] == "beyond"]
    assert list(beyond.index) == ["beyond/strong", "beyond/weak", "beyond/own-ssl",
                                  "beyond/own-ssl-short"]
    assert beyond.loc["beyond/own-ssl-short", "status"] == "failed"
    # The reference is the paper cell with the best CV AUC on train (simclr-full -> segmented,
    # 0.80), not the one with the best test AUC (simclr-segmented -> segmented).
    assert (beyond.loc[["beyond/strong", "beyond/weak"], "reference"]
            == "smallcnn__simclr-full__segmented").all()
    strong, weak = beyond.loc["beyond/strong"], beyond.loc["beyond/weak"]
    assert strong["auc_diff_vs_reference"] > 0 and strong["p_vs_reference"] < 0.05
    assert weak["auc_diff_vs_reference"] < 0 and weak["p_vs_reference"] < 0.05
    assert 0 <= strong["accuracy_p_vs_reference"] <= 1
    assert strong["auc_diff_vs_reference"] == pytest.approx(
        strong["auc"] - df.loc["smallcnn__simclr-full__segmented", "auc"], abs=1e-3)
    # Tables 1-3's cells are untouched by the beyond cells.
    assert len(df[df["kind"] == "finetune"]) == 8 and df[df["kind"] == "finetune"]["reference"].isna().all()


def test_report_has_table_4_and_the_answers(faked_study: Path) -> None:
    md = (faked_study / "report.md").read_text()
    for n in (1, 2, 3, 4):
        assert f"**Table {n}." in md
    start = md.index("**Table 4.")
    t4 = md[start:md.index("\n\n", md.index("|---", start))]
    rows = [line for line in t4.splitlines() if line.startswith("| ")][1:]
    assert [r.split("|")[1].strip() for r in rows[:4]] == ["strong", "weak", "own-ssl", "own-ssl-short"]
    assert "reference" in rows[-1] and "simclr-full" not in rows[0]
    assert "p < 0.001" in rows[0] or "p = 0.0" in rows[0]
    assert "failed" in rows[3]
    assert "Does SimCLR pretraining help?" in md and "Does heart masking" in md
    simclr = next(line for line in md.splitlines() if line.startswith("Does SimCLR"))
    assert simclr.count("Δ macro AUC") == 4 and "McNemar" in simclr
    masking = next(line for line in md.splitlines() if line.startswith("Does heart masking"))
    assert masking.count("Δ macro AUC") == 4
    assert "cross-validated" in md


def test_beyond_cells_may_be_appended_not_changed(tmp_path: Path) -> None:
    from test_study import FakeStages

    out = tmp_path / "study"
    first = beyond_config(BEYOND[:1])
    assert run_study(first, out, kinds=FakeStages().kinds(), stream=io.StringIO(), build_report=False).ok
    again = FakeStages()
    stream = io.StringIO()
    assert run_study(beyond_config(BEYOND[:2]), out, kinds=again.kinds(), stream=stream,
                     build_report=False).ok
    assert set(again.calls) == {"beyond/weak"}  # its pretraining is the paper grid's, done
    assert "beyond_paper.weak" in stream.getvalue()
    changed = [dict(BEYOND[0], input="full"), BEYOND[1]]
    with pytest.raises(CardioclrError, match="beyond_paper: entries \\['strong'\\] changed"):
        run_study(beyond_config(changed), out, kinds=FakeStages().kinds(), stream=io.StringIO(),
                  build_report=False)
    with pytest.raises(CardioclrError, match="changed or removed"):
        run_study(beyond_config(BEYOND[1:2]), out, kinds=FakeStages().kinds(), stream=io.StringIO(),
                  build_report=False)


def test_concurrent_group_takes_every_ready_cell_heaviest_first() -> None:
    """From the first fine-tuning cell on, the cells run side by side (``finetune.concurrent``)
    are every fine-tuning, beyond-paper and baseline cell whose dependencies are done; a
    beyond cell waiting for its own SimCLR pretraining (listed after the fine-tuning cells) and
    a cell already finished stay out; the cheap baselines come last."""
    from cardioclr.study.kinds import kind_weights
    from cardioclr.study.runner import concurrent_group

    cells = expand_grid(beyond_config())
    first = next(i for i, c in enumerate(cells) if c.kind == "finetune")
    done = {c.id for c in cells[:first] if c.not_run_reason is None}
    finished = {"finetune/smallcnn__none__full"}
    group = concurrent_group(cells, done, set(), kind_weights(), lambda c: c.id in finished)
    ids = [c.id for c in group]
    assert ids == [
        "finetune/smallcnn__none__segmented",
        "finetune/smallcnn__simclr-full__full", "finetune/smallcnn__simclr-full__segmented",
        "finetune/smallcnn__simclr-segmented__full", "finetune/smallcnn__simclr-segmented__segmented",
        "beyond/strong", "beyond/weak", "baseline/clinical", "baseline/hybrid"]
    # Cells already handled by an earlier group are not taken again.
    assert concurrent_group(cells, done, set(ids), kind_weights(), lambda c: False) == [
        c for c in cells if c.id == "finetune/smallcnn__none__full"]
