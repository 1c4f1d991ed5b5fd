"""``cardioclr report OUT``: the paper's tables and figures, rebuilt from a study's files alone.

Inputs (all optional; a section whose files are missing says so):

* ``OUT/finetune/*/metrics.json`` (+ ``predictions.csv``, ``curves.csv``, ``saliency/``) - the
  grid cells; ``OUT/study_state.json`` adds the cells that did not run, with the reason;
* ``OUT/baseline/{clinical,hybrid}/metrics.json`` (+ ``predictions.csv``); the hybrid joins
  the indices with the label-free features of one SimCLR pretraining
  (``OUT/work/pretrain/<encoder>-<input>/deep_features.csv``);
* ``OUT/work/segmentation/metrics.json``, ``qc_flags.csv``, ``qc/``;
* ``OUT/work/pretrain/*/metrics.json``; ``OUT/work/dataset.json``, ``manifest.csv``,
  ``splits.json``, ``skipped.csv``;
* ``OUT/study.yaml``, ``OUT/study_environment.json`` (provenance).

Outputs: ``OUT/results.csv`` (one row per cell), ``OUT/report.md`` (+ ``OUT/figures/*.png``)
and ``OUT/report.html`` (self-contained: images embedded, no external resource).

Tables 1-3 follow the paper's layout: macro one-vs-rest ROC AUC on the test split with its
95% stratified-bootstrap CI, the best AUC of each row in bold, and under every pretrained cell
the p-value of its paired comparison with no pretraining (same encoder, same downstream input;
:func:`cardioclr.evaluate.compare.compare_predictions`: DeLong for two classes, paired

Table 4 (only when the study lists ``beyond_paper:`` cells, ``OUT/beyond/<name>/``) compares
each of them with the paper's best cell, chosen by cross-validated AUC on train, on the same
test patients (:func:`cardioclr.evaluate.compare.compare_predictions` for the macro AUC,
:func:`cardioclr.evaluate.compare.compare_accuracy`: exact McNemar for accuracy); a paragraph
then answers whether SimCLR and heart masking help, with every paired comparison behind it.

The package follows the data flow (one module, one layer):

* :mod:`.collect` reads the study folder into :class:`StudyData` (numbers parsed once, through
  the typed artifacts of :mod:`cardioclr.artifacts`);
* :mod:`.results` computes on those numbers (paired comparisons, best of a row, the
  ``results.csv`` rows);
* :mod:`.format` renders numbers as text (the only place that does);
* :mod:`.sections` turns them into document blocks, one module per part of the report;
* :mod:`.build` assembles the blocks and writes the files.
"""

from __future__ import annotations

from cardioclr.artifacts import RESULT_COLUMNS, ResultRow
from cardioclr.study.report.build import PAPER_CITATION, build_blocks, build_report, summary_lines
from cardioclr.study.report.collect import CellResult, StudyData, collect
from cardioclr.study.report.results import add_comparisons, result_rows, results_frame

__all__ = ["PAPER_CITATION", "RESULT_COLUMNS", "CellResult", "ResultRow", "StudyData",
           "add_comparisons", "build_blocks", "build_report", "collect", "result_rows",
           "results_frame", "summary_lines"]
