"""``cardioclr pretrain WORK --encoder NAME --input full|segmented|roi|anatomy``: SimCLR pretraining."""

from __future__ import annotations

import argparse
import json

from cardioclr.choices import ENCODER_NAMES, INPUT_MODES, MASK_SOURCES, POSITIVES, PRECISIONS

_EPILOG = """\
what it learns from:
  every slice of the ED and ES frames (and every cine frame when present) of WORK's train
  split and unlabelled patients, plus the --extra datasets; never WORK's test patients. 10%%
  of the train patients are held out: their contrastive loss selects the best epoch and stops
  training early. Labels are never read.

positives (--positives; default augment = the paper's SimCLR, two views of one slice):
  phase      + the same slice at the other phase (ED <-> ES)
  neighbour  + slices of the same frame within --neighbour-bound of relative position
             along the stack (0 = first slice, 1 = last; 0.25: about a quarter of the heart)
  cine       + the same slice in every stored cine frame (when prepare found a 4D cine)
  anatomy    all three together
  Partners always come from the same patient; negatives are other patients only (other
  slices of the same patient are neither). Output: WORK/pretrain/<encoder>-<input>-<positives>.

one CPU, one GPU, several GPUs:
  --batch-size is the GLOBAL batch (images per step, each seen in two views): with N
  processes each gets batch/N images, and the loss uses the projections of all processes as
  negatives, so results mean the same on any hardware. bf16 mixed precision on GPUs.
    laptop:     cardioclr pretrain WORK --encoder smallcnn --input segmented --accelerator cpu
    1 GPU:      cardioclr pretrain WORK --encoder vgg16 --input segmented
    4 GPUs:     cardioclr pretrain WORK --encoder vgg16 --input segmented --devices 4
    torchrun:   torchrun --nproc-per-node 4 -m cardioclr.cli pretrain WORK ... --devices 4
    SLURM:      #SBATCH --nodes 2 --ntasks-per-node 4 --gres gpu:4
                srun cardioclr pretrain WORK ... --devices 4 --num-nodes 2
  (Lightning detects torchrun and SLURM; --devices must equal the processes per node.)

outputs (OUT, default WORK/pretrain/<encoder>-<input>/):
  encoder.pt (load with cardioclr.models.checkpoint.load_encoder_weights), deep_features.csv
  (the encoder's mean [ED, ES] features per stored patient, label-free: pass OUT to
  `cardioclr baseline --deep-features` for the hybrid), metrics.json, config.yaml,
  versions.json, checkpoints/last.ckpt (re-run the same command to resume; a finished run
  with the same configuration is skipped), logs/csv, logs/tensorboard.
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``pretrain`` subcommand."""
    p = sub.add_parser(
        "pretrain", help="SimCLR pretraining of an encoder on full, heart-masked or heart-ROI images",
        description="Self-supervised SimCLR pretraining (NT-Xent, Adam) of one encoder on the "
        "train-split images of a prepared work directory, full or masked by the heart "
        "segmentation (Nakashima et al.).",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("work", help="prepared work directory (cardioclr prepare)")
    p.add_argument("--encoder", required=True, choices=ENCODER_NAMES)
    p.add_argument("--input", dest="input_mode", required=True, choices=INPUT_MODES,
                   help="full image, heart-masked (segmented, the paper) or heart box (roi)")
    p.add_argument("--masks", choices=MASK_SOURCES, default="predicted",
                   help="heart masks for segmented/roi: predicted (cardioclr segment predict; "
                   "default) or expert labels (an upper bound)")
    p.add_argument("--extra", nargs="+", default=[], metavar="DATA",
                   help="further unlabelled data: prepared work dirs or raw dataset folders "
                   "(prepared into OUT/extra/<name>); segmented/roi need their masks")
    p.add_argument("--out", default=None, help="output folder (default WORK/pretrain/<encoder>-<input>, "
                   "plus -<positives> unless augment)")
    p.add_argument("--batch-size", type=int, default=64,
                   help="GLOBAL batch: images per step over all devices (paper: 64-256; default 64)")
    p.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate (paper: 1e-4)")
    p.add_argument("--cosine", action="store_true", help="cosine decay with 5%% linear warmup")
    p.add_argument("--temperature", type=float, default=0.1, help="NT-Xent temperature (0.1)")
    p.add_argument("--max-epochs", type=int, default=100)
    p.add_argument("--patience", type=int, default=10,
                   help="early stopping: epochs without a better held-out loss (10)")
    p.add_argument("--image-size", type=int, default=96, help="network input side in pixels (96)")
    p.add_argument("--devices", type=int, default=1, help="GPUs (or CPU processes) per node (1)")
    p.add_argument("--accelerator", choices=("auto", "cpu", "gpu"), default="auto")
    p.add_argument("--num-nodes", type=int, default=1)
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="auto: bf16-mixed on a bf16-capable GPU (16-mixed on older GPUs), 32-true "
                   "on CPU")
    p.add_argument("--imagenet-weights", default=None, metavar="FILE",
                   help="start from a local torchvision ImageNet state-dict file (never downloaded)")
    p.add_argument("--init", choices=("none", "segmentation"), default="none",
                   help="segmentation: start from the trained segmentation U-Net's encoder "
                   "(\"segmentation followed by SimCLR\"; needs --encoder segunet; default OUT "
                   "WORK/pretrain/segunet-<input>-from-segmentation)")
    p.add_argument("--segmentation-model", default=None, metavar="MODEL.pt",
                   help="--init segmentation: the segmentation model (default "
                   "WORK/segmentation/model/model.pt)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=0,
                   help="DataLoader workers (default 0: slices are in memory, indexing is cheap)")
    p.add_argument("--no-cine", dest="use_cine", action="store_false",
                   help="use only the ED and ES frames even when cine frames are stored")
    p.add_argument("--mask-margin-mm", type=float, default=0.0,
                   help="segmented mode: dilate the heart mask by this margin (0: the paper)")
    p.add_argument("--roi-margin-mm", type=float, default=10.0,
                   help="roi mode: margin around the heart box (10 mm)")
    p.add_argument("--positives", choices=POSITIVES, default="augment",
                   help="contrastive positives: augment (the paper's SimCLR; default) or "
                   "anatomy-aware pairs of one patient (see below)")
    p.add_argument("--neighbour-bound", type=float, default=0.25, metavar="R",
                   help="neighbour/anatomy positives: largest relative base-to-apex distance "
                   "(0-1) between two slices of a pair (0.25)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    # Lazy: building the parser (`cardioclr --help`) must not load torch, Lightning or MONAI.
    from cardioclr.ssl.pretrain import PretrainConfig, pretrain

    cfg = PretrainConfig(
        work=args.work, encoder=args.encoder, input_mode=args.input_mode, masks=args.masks,
        extra=tuple(args.extra), out=args.out, batch_size=args.batch_size, lr=args.lr,
        cosine=args.cosine, temperature=args.temperature, max_epochs=args.max_epochs,
        patience=args.patience, image_size=args.image_size, devices=args.devices,
        accelerator=args.accelerator, num_nodes=args.num_nodes, precision=args.precision,
        imagenet_weights=args.imagenet_weights, seed=args.seed, workers=args.workers,
        use_cine=args.use_cine, mask_margin_mm=args.mask_margin_mm,
        roi_margin_mm=args.roi_margin_mm, init=args.init,
        segmentation_model=args.segmentation_model, positives=args.positives,
        neighbour_bound=args.neighbour_bound)
    metrics = pretrain(cfg)
    if metrics:  # empty on DDP ranks > 0
        summary = {k: metrics.get(k) for k in ("best_val_loss", "best_epoch", "epochs", "images_seen",
                                               "images_per_second", "n_train_images", "skipped")}
        print(json.dumps(summary))
    return 0
