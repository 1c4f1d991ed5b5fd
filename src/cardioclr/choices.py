"""Names that command-line parsers offer as choices, importable without torch or Lightning.

Building the ``cardioclr`` parser must stay fast (``cardioclr synth --help`` should not load
a deep-learning stack), so the choices live here and the modules that implement them re-export
them. ``ENCODER_NAMES`` must match :data:`cardioclr.models.encoders.ENCODERS` (a test checks).
"""

from __future__ import annotations

#: Downstream / pretraining input modes (:mod:`cardioclr.data.views`).
INPUT_MODES = ("full", "segmented", "roi")
#: Where heart masks come from (:mod:`cardioclr.segment.masks`).
MASK_SOURCES = ("predicted", "expert")
#: Encoder initialisations of the classifier (:mod:`cardioclr.classify.model`).
INITS = ("none", "imagenet", "simclr")
#: ``--precision`` choices of the training commands (Lightning names; ``auto``: see
#: :func:`cardioclr.training.resolve_precision`).
PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed")
#: Encoder registry names, in the registry's order.
ENCODER_NAMES = ("vgg16", "densenet121", "resnet18", "resnet50", "smallcnn")
#: Diagnosis classifiers of :mod:`cardioclr.clinical.classifier` (fixed hyperparameters).
DIAGNOSIS_CLASSIFIERS = ("rf", "gb", "logistic", "svm", "ensemble", "ensemble-calibrated")
#: ``cardioclr baseline --model``: ``auto`` = chosen by CV among candidates; ``rf``/``logistic``
#: given alone = the paper-style grid search (:mod:`cardioclr.evaluate.baseline`).
BASELINE_MODELS = ("auto", *DIAGNOSIS_CLASSIFIERS)
#: ``cardioclr baseline --features``: indices + regional summaries, or the 35 indices (plus
#: ``auto``: the better of the two by CV on train).
BASELINE_FEATURE_SETS = ("regional", "indices")
