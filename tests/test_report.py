"""The report, built from hand-written fake study trees (no training)."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from cardioclr.study.report import RESULT_COLUMNS, build_report
from test_report_fakes import STRENGTH, write_fake_study

REQUIRED = ["encoder", "pretraining", "downstream_input", "auc", "auc_ci_low", "auc_ci_high",
            "accuracy", "mask_source", "balanced_accuracy", "saliency_in_heart_share", "seconds",
            "status"]


@pytest.fixture(scope="module")
def fake_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = write_fake_study(tmp_path_factory.mktemp("study"))
    build_report(out)
    return out


def test_results_csv_rows_and_values(fake_report: Path) -> None:
    df = pd.read_csv(fake_report / "results.csv")
    assert list(df.columns) == RESULT_COLUMNS
    assert set(REQUIRED) <= set(df.columns)
    ft = df[df["kind"] == "finetune"]
    # 2 inputs x {none, imagenet, simclr-full, simclr-segmented}; ImageNet cells not run.
    assert len(ft) == 8
    notrun = ft[ft["status"] == "not-run"]
    assert set(notrun["pretraining"]) == {"imagenet"}
    assert notrun["reason"].str.contains("ImageNet").all()
    done = ft[ft["status"] == "done"]
    assert len(done) == 6
    assert done["auc"].between(0, 1).all()
    assert (done["auc_ci_low"] <= done["auc"]).all() and (done["auc"] <= done["auc_ci_high"]).all()
    # The strongest fake signal has the best AUC; its p-value vs none exists and is small.
    best = done.loc[done["auc"].idxmax()]
    assert (best["pretraining"], best["downstream_input"]) == max(STRENGTH, key=STRENGTH.get)
    assert 0 < best["p_vs_none"] < 0.05
    assert done[done["pretraining"] == "none"]["p_vs_none"].isna().all()
    assert (df[df["kind"] == "baseline"]["status"] == "done").all()
    assert done["saliency_in_heart_share"].notna().all()


def _table(md: str, number: int) -> str:
    start = md.index(f"**Table {number}.")
    end = md.index("\n\n", md.index("|---", start))
    return md[start:end]


def test_markdown_tables_bold_best_per_row(fake_report: Path) -> None:
    md = (fake_report / "report.md").read_text()
    df = pd.read_csv(fake_report / "results.csv")
    for number, inp, best_pre in ((1, "full", "simclr-full"), (2, "segmented", "simclr-segmented")):
        table = _table(md, number)
        row = [line for line in table.splitlines() if line.startswith("| smallcnn")]
        assert len(row) == 1
        cells = [c.strip() for c in row[0].strip("|").split("|")]
        bold = [c for c in cells if c.startswith("**")]
        assert len(bold) == 1, row
        auc = df[(df.pretraining == best_pre) & (df.downstream_input == inp)]["auc"].iloc[0]
        assert bold[0].startswith(f"**{auc:.3f}")
        assert "not run" in row[0]  # the ImageNet column
        assert "p = " in row[0] or "p < 0.001" in row[0]
    t3 = _table(md, 3)
    row = [line for line in t3.splitlines() if line.startswith("| smallcnn")][0]
    assert row.count("**") == 2  # exactly one bold cell
    assert "full → full" in t3 and "segmented → segmented" in t3


def test_html_self_contained(fake_report: Path) -> None:
    html = (fake_report / "report.html").read_text()
    assert "<table" in html and "Table 1." in html and "Table 3." in html
    srcs = re.findall(r'src="([^"]*)"', html)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert not re.search(r'(src|href)="(?!data:|#|https://doi.org|https://arxiv.org)', html)
    assert "<link" not in html and "<script" not in html
    # Figure 1, ROC, saliency galleries and QC images are all embedded.
    assert len(srcs) >= 2 + 6 * 3 + 1
    assert "Nakashima" in html
    # Synthetic data: no ACDC citation, and a warning that results carry no clinical meaning.
    assert "10.1109/TMI.2018.2837502" not in html and "synthetic" in html
    assert (fake_report / "figures" / "figure1_convergence.png").is_file()


def test_report_sections_present(fake_report: Path) -> None:
    md = (fake_report / "report.md").read_text()
    for needle in ("Figure 1", "ROC", "In-heart saliency", "Dice", "HD95",
                   "QC flags:** 1 of 90 segmented patients flagged, 2 flags", "lv_ef_pct",
                   "clinical-rf", "hybrid-rf", "Patients per class", "patient999", "abc123",
                   "Durations per stage"):
        assert needle in md, needle


def test_feature_importances_shown_with_their_kind(fake_report: Path) -> None:
    md = (fake_report / "report.md").read_text()
    assert "Most important clinical features (clinical-rf: permutation importance on train" in md
    assert md.index("lv_ef_pct") < md.index("rv_edv_ml")


def test_hybrid_described_as_self_supervised_features(fake_report: Path) -> None:
    md = (fake_report / "report.md").read_text()
    section = md.split("Baselines: clinical features and hybrid")[1]
    assert "PCA of self-supervised SimCLR features, which never saw the labels" in section
    row = [line for line in section.splitlines() if line.startswith("| hybrid-rf")]
    assert len(row) == 1 and "deep features: smallcnn-segmented/deep_features.csv" in row[0]


def test_acdc_citation_when_data_is_acdc(tmp_path: Path) -> None:
    import yaml

    out = write_fake_study(tmp_path / "s")
    cfg = yaml.safe_load((out / "study.yaml").read_text())
    cfg["data"] = "/data/ACDC/training"
    (out / "study.yaml").write_text(yaml.safe_dump(cfg))
    build_report(out)
    html = (out / "report.html").read_text()
    assert "10.1109/TMI.2018.2837502" in html and "Bernard" in html


def test_failed_cell_listed_and_report_still_built(tmp_path: Path) -> None:
    out = write_fake_study(tmp_path / "s", failed=("smallcnn__simclr-full__full",))
    build_report(out)
    df = pd.read_csv(out / "results.csv")
    row = df[df["cell"] == "smallcnn__simclr-full__full"].iloc[0]
    assert row["status"] == "failed" and "boom" in row["reason"]
    md = (out / "report.md").read_text()
    assert "failed" in _table(md, 1)


def test_report_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cardioclr.cli import main

    out = write_fake_study(tmp_path / "s")
    assert main(["report", str(out)]) == 0
    assert (out / "report.html").is_file()
    printed = capsys.readouterr().out
    assert "smallcnn__simclr-full__full" in printed
    # A cell that did not run says why on the terminal, not only in the report.
    imagenet = [ln for ln in printed.splitlines() if "smallcnn__imagenet__full" in ln]
    assert imagenet and "not-run" in imagenet[0] and "ImageNet" in imagenet[0].split("not-run", 1)[1]


def test_collapsed_classifier_and_mixed_revisions_are_reported(tmp_path: Path) -> None:
    import json

    out = write_fake_study(tmp_path / "s")
    cell = out / "finetune" / "smallcnn__none__full"
    pred = pd.read_csv(cell / "predictions.csv")
    cols = [c for c in pred.columns if c.startswith("prob_")]
    pred[cols] = 0.1
    pred["prob_RV"] = 0.6  # the same class for every patient
    pred.to_csv(cell / "predictions.csv", index=False)
    for name, rev in (("smallcnn__none__full", "aaa111"), ("smallcnn__simclr-full__full", "bbb222")):
        (out / "finetune" / name / "versions.json").write_text(json.dumps({"git_revision": rev}))
    build_report(out)
    md = (out / "report.md").read_text()
    notes = md.split("**Table 1.")[1].split("**Table 2.")[0]
    assert "No pretraining → full images: predicts RV for every test patient" in notes
    assert "Test split: 30 patients, 5 classes" in notes
    assert "different code revisions" in md and "aaa111" in md and "bbb222" in md


def test_html_layout_details(fake_report: Path) -> None:
    html = (fake_report / "report.html").read_text()
    # Numbers stay on one line; "total" rows are bold but not highlighted as a row's best.
    assert re.search(r'<td class="(best )?num">(<strong>)?0\.\d{3} \(', html)
    assert '<td class="best"><strong>total' not in html and "<strong>total</strong>" in html
    # TOC links are separated, so the bar wraps instead of widening the page.
    assert "</a> <a href=" in html
    assert "<code>abc123</code>" in html  # `backticks` rendered as code, not literally


def test_not_run_reason_without_state_file(tmp_path: Path) -> None:
    out = write_fake_study(tmp_path / "s")
    (out / "study_state.json").unlink()  # the report needs the cells' files and study.yaml only
    build_report(out)
    df = pd.read_csv(out / "results.csv")
    im = df[df["pretraining"] == "imagenet"]
    assert len(im) == 2 and (im["status"] == "not-run").all()
    assert im["reason"].str.contains("ImageNet").all()
    assert len(df[(df["kind"] == "finetune") & (df["status"] == "done")]) == 6


def test_best_of_a_row_is_decided_on_numbers_as_shown() -> None:
    """Bold goes to the best value as displayed (3 decimals; ties all bold), chosen on numbers."""
    from cardioclr.study.report.results import best_by_group, best_flags

    assert best_flags([0.8514, None, 0.8506, 0.7]) == [True, False, True, False]
    assert best_flags([None, None]) == [False, False]
    assert best_by_group([0.5, 0.9, 0.6], ["full", "segmented", "full"]) == [False, True, True]
