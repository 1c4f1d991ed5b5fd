"""``cardioclr finetune``: train and evaluate the dual-phase classifier (see :mod:`.finetune`)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, cast

from cardioclr.choices import (
    CLASSIFIER_MODELS,
    INITS,
    INPUT_MODES,
    MASK_SOURCES,
    MIL_POOLINGS,
    PRECISIONS,
    RECIPE_NAMES,
    SCHEDULES,
)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``finetune`` subcommand."""
    p = sub.add_parser(
        "finetune",
        help="train the dual-phase (ED+ES) disease classifier, CV on train, evaluate once on test",
        description="Cross-validate learning rate x batch size on the train patients (early "
        "stopping per fold), train final model(s) on all train patients for the CV epoch count, "
        "evaluate once on the test patients (per patient: mean of slice probabilities). A "
        "finished OUT with the same configuration is skipped; interrupted runs resume.",
    )
    p.add_argument("work", metavar="WORK", help="prepared work directory (cardioclr prepare)")
    p.add_argument("--encoder", required=True, help="encoder name (vgg16, densenet121, resnet18, "
                   "resnet50, smallcnn, segunet)")
    p.add_argument("--init", choices=INITS, default="none", help="encoder initialisation; "
                   "segmentation: the trained segmentation U-Net's encoder (needs --encoder segunet)")
    p.add_argument("--weights", default=None, help="imagenet: torchvision state-dict file; "
                   "simclr: encoder.pt from `cardioclr pretrain`; segmentation: the segmentation "
                   "model.pt (default WORK/segmentation/model/model.pt)")
    p.add_argument("--input", dest="input_mode", choices=INPUT_MODES, required=True,
                   help="downstream input: full image, heart-masked (segmented), heart crop (roi), "
                   "or anatomy: the heart crop plus the LV, MYO and RV masks of --masks as 3 extra "
                   "input channels")
    p.add_argument("--masks", dest="mask_source", choices=MASK_SOURCES, default="predicted",
                   help="heart masks: predicted (segmentation stage, default) or expert (upper bound)")
    p.add_argument("--out", default=None, help="output directory (default WORK/finetune/"
                   "<encoder>-<init>-<input>)")
    p.add_argument("--shared-encoder", action="store_true", help="one encoder for ED and ES "
                   "(default: separate weights, as in the paper)")
    p.add_argument("--linear-probe", action="store_true", help="freeze the encoders; train only "
                   "the output layer")
    p.add_argument("--image-size", type=int, default=96, help="network input side in pixels")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="final-model seeds (CV uses "
                   "the first); test probabilities are averaged over seeds")
    p.add_argument("--grid-lr", type=float, nargs="+", default=[1e-4, 3e-4], help="learning rates")
    p.add_argument("--grid-batch", type=int, nargs="+", default=[16, 32],
                   help="batch sizes (ED+ES slice pairs) PER DEVICE: with --devices N (DDP) each "
                   "process takes this many per step, so a step sees N times as many (x "
                   "--num-nodes). Unlike `cardioclr pretrain --batch-size`, which is global")
    p.add_argument("--max-epochs", type=int, default=30, help="epoch cap of each CV run")
    p.add_argument("--patience", type=int, default=5, help="early-stopping patience (epochs)")
    p.add_argument("--max-folds", type=int, default=None, help="use only the first K CV folds "
                   "(default: all folds of splits.json)")
    p.add_argument("--no-augment", dest="augment", action="store_false",
                   help="no fine-tuning augmentation")
    p.add_argument("--mask-margin", dest="mask_margin_mm", type=float, default=0.0,
                   help="dilate the heart mask of segmented inputs by this many mm")
    p.add_argument("--roi-margin", dest="roi_margin_mm", type=float, default=10.0,
                   help="margin around the heart box in roi mode (mm)")
    p.add_argument("--saliency-margin", dest="saliency_margin_mm", type=float, default=5.0,
                   help="heart dilation (mm) for the saliency in-heart share")
    p.add_argument("--no-saliency", dest="saliency", action="store_false", help="skip Grad-CAM")
    p.add_argument("--aux-seg-weight", type=float, default=0.0,
                   help="multi-task fine-tuning: weight of an auxiliary LV/MYO/RV segmentation loss "
                   "(targets: the --masks masks of the training patients only) on a light decoder "
                   "over the same encoder; 0 = off (default, the paper's single task)")
    p.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples for CIs")
    p.add_argument("--devices", type=int, default=1, help="devices (GPUs) per run; >1 uses DDP")
    p.add_argument("--accelerator", default="auto", help="auto | cpu | gpu")
    p.add_argument("--num-nodes", type=int, default=1, help="nodes (torchrun/SLURM); --devices is "
                   "per node")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="auto: bf16-mixed on a bf16-capable GPU (16-mixed on older GPUs), 32-true "
                   "on CPU")
    # Issue 11 item 2: the patient-level model.
    p.add_argument("--model", choices=CLASSIFIER_MODELS, default="slice",
                   help="slice: the paper's ED/ES slice-pair classifier, patient probability = mean "
                   "of slice probabilities (default); patient: all ED+ES slices of a patient in one "
                   "forward pass (one shared encoder, relative slice position base->apex, attention "
                   "pooling over slices); --grid-batch then counts PATIENTS per step (try 4 8)")
    p.add_argument("--pooling", choices=MIL_POOLINGS, default="gated",
                   help="--model patient: pooling over slices: gated attention (Ilse et al. 2018, "
                   "default), attention, or mean")
    p.add_argument("--instance-loss-weight", type=float, default=0.0,
                   help="--model patient: weight of an auxiliary loss that classifies every slice "
                   "with the patient's label (deep supervision of the shared encoder; 0 = off)")
    _add_recipe_options(p)
    p.set_defaults(func=_run)


def _add_recipe_options(p: argparse.ArgumentParser) -> None:
    """Small-data training details (:mod:`cardioclr.classify.recipe`); each option left out
    takes the value of --recipe (``none``: the paper's training, every detail off)."""
    g = p.add_argument_group("training recipe", "small-data training details; an option given "
                             "here overrides the --recipe preset's value")
    g.add_argument("--recipe", choices=RECIPE_NAMES, default="none",
                   help="preset: none (the paper's training) or small-data (balanced sampling, "
                   "label smoothing 0.1, mixup 0.2, cosine schedule with 2 warm-up epochs, EMA "
                   "0.99, 5 TTA views; its CV check on train: benchmarks/README.md, recipe_cv.py)")
    g.add_argument("--balanced-sampling", dest="balanced_sampling", action="store_true",
                   default=None, help="draw slice pairs class- and patient-balanced")
    g.add_argument("--no-balanced-sampling", dest="balanced_sampling", action="store_false",
                   help="uniform shuffling of slice pairs")
    g.add_argument("--label-smoothing", type=float, default=None, help="label smoothing epsilon")
    g.add_argument("--mixup", dest="mixup_alpha", type=float, default=None,
                   help="mixup Beta alpha (0 = off); ED and ES of a pair mix with one partner")
    g.add_argument("--cutmix", dest="cutmix_alpha", type=float, default=None,
                   help="cutmix Beta alpha (0 = off); one box for ED and ES of a pair")
    g.add_argument("--schedule", choices=SCHEDULES, default=None,
                   help="learning-rate schedule; cosine decays to 0 at --max-epochs")
    g.add_argument("--warmup-epochs", type=int, default=None, help="linear warm-up epochs")
    g.add_argument("--ema", dest="ema_decay", type=float, default=None,
                   help="EMA decay of the weights per step (0 = off); the EMA weights are "
                   "validated, saved and tested")
    g.add_argument("--tta", type=int, default=None, help="test-time views averaged at CV "
                   "validation, test and predict (1 = off): identity + small rotations")


def _recipe(args: argparse.Namespace) -> dict[str, Any]:
    """The recipe as a mapping (preset name + the options given), converted by FinetuneConfig."""
    keys = ("balanced_sampling", "label_smoothing", "mixup_alpha", "cutmix_alpha", "schedule",
            "warmup_epochs", "ema_decay", "tta")
    given = {k: getattr(args, k) for k in keys if getattr(args, k) is not None}
    return {"name": args.recipe, **given}


def _run(args: argparse.Namespace) -> int:
    # Imported here: building the parser must not load torch and Lightning.
    from cardioclr.classify.finetune import FinetuneConfig, finetune

    cfg = FinetuneConfig(
        work=args.work, encoder=args.encoder, init=args.init, weights=args.weights,
        input_mode=args.input_mode, mask_source=args.mask_source, out=args.out,
        shared_encoder=args.shared_encoder, linear_probe=args.linear_probe,
        image_size=args.image_size, seeds=tuple(args.seeds), grid_lr=tuple(args.grid_lr),
        grid_batch=tuple(args.grid_batch), max_epochs=args.max_epochs, patience=args.patience,
        max_folds=args.max_folds, augment=args.augment, mask_margin_mm=args.mask_margin_mm,
        roi_margin_mm=args.roi_margin_mm, saliency_margin_mm=args.saliency_margin_mm,
        saliency=args.saliency, n_boot=args.n_boot, devices=args.devices,
        accelerator=args.accelerator, num_nodes=args.num_nodes, precision=args.precision,
        progress_bar=sys.stderr.isatty(),
        model=args.model, pooling=args.pooling, instance_loss_weight=args.instance_loss_weight,
        aux_seg_weight=args.aux_seg_weight, recipe=cast(Any, _recipe(args)),
    )
    m = finetune(cfg)
    if m:
        t = m["test"]["macro_auc"]
        print(json.dumps({"out": str(cfg.out_dir()), "pretraining": m["pretraining"],
                          "test_macro_auc": t["value"], "ci_low": t["ci_low"], "ci_high": t["ci_high"],
                          "selected": m["selected"]}))
    return 0
