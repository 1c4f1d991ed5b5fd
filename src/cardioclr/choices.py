"""The named choices of the pipeline (one home), importable without torch or Lightning.

Each choice is a ``Literal`` type (for annotations and mypy) and the tuple of its values, in
the order the command line lists them (for ``argparse`` ``choices=`` and error messages). Building
the ``cardioclr`` parser must stay fast (``cardioclr synth --help`` should not load a deep-learning
stack), so nothing here imports more than ``typing``. ``ENCODER_NAMES`` must match
:data:`cardioclr.models.encoders.ENCODERS` (a test checks).
"""

from __future__ import annotations

from typing import Literal, get_args

#: Downstream / pretraining input modes (:mod:`cardioclr.data.views`); ``anatomy`` = the heart
#: ROI plus the LV, MYO and RV masks as extra channels (issue 11, beyond the paper).
InputMode = Literal["full", "segmented", "roi", "anatomy"]
INPUT_MODES: tuple[InputMode, ...] = get_args(InputMode)
#: ``cardioclr pretrain --positives``: which slice pairs are contrastive positives
#: (:mod:`cardioclr.ssl.positives`); ``augment`` = the paper's two-view SimCLR.
Positives = Literal["augment", "anatomy", "phase", "neighbour", "cine"]
POSITIVES: tuple[Positives, ...] = get_args(Positives)
#: Where heart masks come from (:mod:`cardioclr.data.masks`).
MaskSource = Literal["predicted", "expert"]
MASK_SOURCES: tuple[MaskSource, ...] = get_args(MaskSource)
#: Encoder initialisations of the classifier (:mod:`cardioclr.classify.model`); in a study,
#: ``simclr`` expands to one cell per pretraining input; ``segmentation``: the trained
#: segmentation network's encoder (``segunet`` encoder only; issue 11, beyond the paper).
Init = Literal["none", "imagenet", "simclr", "segmentation"]
INITS: tuple[Init, ...] = get_args(Init)
#: The paper's initialisations: a study's default grid (Tables 1-3 keep the paper's layout).
PAPER_INITS: tuple[Init, ...] = ("none", "imagenet", "simclr")
#: Pretraining labels as written in fine-tune ``metrics.json`` (``pretraining`` key): the init,
#: with the SimCLR encoder's pretraining input.
Pretraining = Literal["none", "imagenet", "simclr-full", "simclr-segmented"]
PRETRAININGS: tuple[Pretraining, ...] = get_args(Pretraining)
#: ``--precision`` choices of the training commands (Lightning names; ``auto``: see
#: :func:`cardioclr.training.resolve_precision`).
Precision = Literal["auto", "32-true", "bf16-mixed", "16-mixed"]
PRECISIONS: tuple[Precision, ...] = get_args(Precision)
#: ``segment predict --precision``: ``auto`` is bf16 autocast on a GPU and on a CPU with bf16
#: instructions (:func:`cardioclr.segment.predict.inference_dtype`), ``32-true`` float32 always.
InferencePrecision = Literal["auto", "32-true"]
INFERENCE_PRECISIONS: tuple[InferencePrecision, ...] = get_args(InferencePrecision)
#: ``finetune --model``: the paper's slice-pair classifier (patient = mean of slice
#: probabilities) or the patient-level model (all slices, attention pooling;
#: :mod:`cardioclr.models.patient`).
ClassifierModel = Literal["slice", "patient"]
CLASSIFIER_MODELS: tuple[ClassifierModel, ...] = get_args(ClassifierModel)
#: ``finetune --pooling`` of the patient-level model (must match
#: :data:`cardioclr.models.patient.POOLING_CHOICES`).
MilPooling = Literal["gated", "attention", "mean"]
MIL_POOLINGS: tuple[MilPooling, ...] = get_args(MilPooling)
#: Encoder registry names, in the registry's order.
EncoderName = Literal["vgg16", "densenet121", "resnet18", "resnet50", "smallcnn", "segunet"]
ENCODER_NAMES: tuple[EncoderName, ...] = get_args(EncoderName)
#: Diagnosis classifiers of :mod:`cardioclr.clinical.classifier` (fixed hyperparameters).
DiagnosisClassifier = Literal["rf", "gb", "logistic", "svm", "ensemble", "ensemble-no-gb",
                              "ensemble-calibrated"]
DIAGNOSIS_CLASSIFIERS: tuple[DiagnosisClassifier, ...] = get_args(DiagnosisClassifier)
#: ``cardioclr baseline --model``: ``vote`` (default) = the fixed vote over classifiers and feature
#: sets; ``auto`` = chosen by CV among candidates; ``rf``/``logistic`` given alone = the
#: paper-style grid search (:mod:`cardioclr.evaluate.baseline`).
BASELINE_MODELS: tuple[str, ...] = ("vote", "auto", *DIAGNOSIS_CLASSIFIERS)
#: ``cardioclr baseline --features``: indices + regional summaries, or the 35 indices (plus
#: ``auto``: the better of the two by CV on train).
BaselineFeatureSet = Literal["regional", "indices"]
BASELINE_FEATURE_SETS: tuple[BaselineFeatureSet, ...] = get_args(BaselineFeatureSet)
#: ``cardioclr finetune --recipe``: named small-data training recipes
#: (:data:`cardioclr.classify.recipe.RECIPES`; ``none`` = the paper's training).
RecipeName = Literal["none", "small-data"]
RECIPE_NAMES: tuple[RecipeName, ...] = get_args(RecipeName)
#: ``cardioclr finetune --schedule``: learning-rate schedules (:mod:`cardioclr.classify.recipe`).
Schedule = Literal["constant", "cosine"]
SCHEDULES: tuple[Schedule, ...] = get_args(Schedule)
