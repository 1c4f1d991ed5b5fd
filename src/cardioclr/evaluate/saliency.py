"""Grad-CAM saliency of the dual-phase classifier and how anatomical it is.

For each test patient, Grad-CAM (``monai.visualize.GradCAM``, Selvaraju et al. 2017) is computed
on every slice pair for the class the model predicts *for the patient*, separately on the ED
encoder and on the ES encoder (:func:`gradcam_pairs`). Outputs:

* ``saliency/PID.png`` ED and ES side by side at the mid-ventricular slice (the middle of the
  patient's heart-bearing slices): input image, Grad-CAM heatmap, heart contour (solid) and
  the dilated heart region used for the share (dashed);
* ``saliency/saliency.csv`` one row per patient: ``patient_id, label_index, pred_index,
  in_heart_share, in_heart_share_ed, in_heart_share_es, n_slices, mid_slice``;
* a summary ``{in_heart_share_mean, in_heart_share_sd, n, margin_mm, ...}`` for metrics.json.

``in_heart_share`` (:func:`in_heart_share`): the fraction of the *positive* saliency mass (all
slices, both phases) that falls inside the heart mask dilated by ``margin_mm`` (default 5 mm),
built from the same mask source as the classifier's inputs. 1.0 = everything the model used
lies on or next to the heart; the share of the image area inside that mask is reported beside
it (``mask_area_share_mean``) as the chance level of a spatially uniform map.

Caveat (``segmented`` inputs): outside the heart the input is zero, so saliency there cannot
come from image content there, only from the receptive fields of the coarse last feature map
(16-32x down-sampled) and its bilinear upsampling. A high share is therefore expected and says
little about what the model learned; a share near ``mask_area_share`` means the map is too
coarse or flat to localise anything. It is reported anyway (and is computable for every mode);
compare shares between models with the same input mode and encoder, where it is informative.

Target layer (:func:`target_layer`): Grad-CAM needs the last spatial feature map of each
encoder. "The last ``nn.Conv2d``" is wrong for DenseNet (its last conv outputs only the 32
growth channels) and for VGG (pooled after); instead the encoder is traced once and the module
that *last* produces a 4-D map with the encoder's ``D`` output channels, is not a pooling layer,
and runs exactly once per forward is taken (VGG: the last ReLU, DenseNet: ``features`` = norm5,
ResNet: ``layer4``, SmallCNN: ``features``). A module called twice (ResNet's shared ReLU) would
pair the last forward activation with the first backward gradient, hence "exactly once".
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
import torch
from monai.visualize import GradCAM
from torch import Tensor, nn

from cardioclr.atomic import atomic_path, write_text
from cardioclr.data.pairs import heart_outline, network_inputs
from cardioclr.models.patient import PatientClassifier, position_encoding

log = logging.getLogger(__name__)

DEFAULT_MARGIN_MM = 5.0

_POOLS = (nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd,
          nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd)


# ----------------------------------------------------------------------------- the number


def in_heart_share(saliency: np.ndarray, mask: np.ndarray) -> float:
    """Share of positive saliency inside ``mask``: sum(max(s,0) in mask) / sum(max(s,0)).

    ``saliency``: float array of any shape; ``mask``: bool array of the same shape.
    Returns a float in [0, 1], NaN when there is no positive saliency at all.
    """
    s = np.clip(np.asarray(saliency, dtype=np.float64), 0.0, None)
    m = np.asarray(mask, dtype=bool)
    if s.shape != m.shape:
        raise ValueError(f"saliency {s.shape} and mask {m.shape} differ in shape")
    total = s.sum()
    if not total > 0:
        return math.nan
    return float(s[m].sum() / total)


# ----------------------------------------------------------------------------- target layer


def target_layer(encoder: nn.Module, feature_dim: int, image_size: int = 64, in_channels: int = 1) -> str:
    """Name (within ``encoder``) of the module whose output Grad-CAM should use.

    Traces one forward pass of a (1, C, S, S) zero image (eval mode, no grad) and returns the
    last-finishing module that outputs (1, feature_dim, h, w), is not a pooling layer (nor a
    container whose output *is* a pooling output) and is called exactly once. Falls back to
    the last ``nn.Conv2d`` when nothing qualifies.
    """
    calls: dict[str, int] = {}
    finished: list[tuple[str, Tensor]] = []
    pooled: set[int] = set()
    hooks = []
    for name, mod in encoder.named_modules():
        if not name:
            continue

        def hook(m: nn.Module, _inp: Any, out: Any, name: str = name) -> None:
            calls[name] = calls.get(name, 0) + 1
            if isinstance(out, Tensor):
                if isinstance(m, _POOLS):
                    pooled.add(id(out))
                finished.append((name, out))

        hooks.append(mod.register_forward_hook(hook))
    was_training = encoder.training
    try:
        encoder.eval()
        with torch.no_grad():
            param = next(encoder.parameters())
            encoder(torch.zeros(1, in_channels, image_size, image_size, device=param.device,
                                dtype=param.dtype))
    finally:
        for h in hooks:
            h.remove()
        encoder.train(was_training)
    modules = dict(encoder.named_modules())
    for name, out in reversed(finished):
        if (out.ndim == 4 and out.shape[1] == feature_dim and calls[name] == 1
                and not isinstance(modules[name], _POOLS) and id(out) not in pooled):
            return name
    convs = [n for n, m in encoder.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError("encoder has no spatial feature map for Grad-CAM")
    last_conv: str = convs[-1]
    return last_conv


class _PairNet(nn.Module):
    """(B, 2, H, W) masked pair -> logits, with one encoder module per phase.

    A shared encoder is deep-copied so that each phase has its own module to hook; the copy has
    the same weights, so the logits are unchanged.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        # model is a classify.model.DualPhaseClassifier (a layer above: known by its attributes).
        ed = cast(nn.Module, model.encoder_ed)
        es = cast(nn.Module, model.encoder_es) if model.encoder_es is not None else ed
        self.encoder_ed = copy.deepcopy(ed)
        self.encoder_es = copy.deepcopy(es)
        self.head = copy.deepcopy(cast(nn.Module, model.head))
        self.requires_grad_(True)  # frozen (linear-probe) encoders still need gradients here

    def forward(self, x: Tensor) -> Tensor:
        """(B, 2C, H, W) [ED input channels, ES input channels] -> (B, K)."""
        c = x.shape[1] // 2
        logits: Tensor = self.head(self.encoder_ed(x[:, :c]), self.encoder_es(x[:, c:]))
        return logits


class _PatientNet(nn.Module):
    """All n slices of ONE patient, (n, 2C, H, W) [ED channels, ES channels] -> the patient's
    logits, repeated n times and divided by n.

    MONAI's Grad-CAM treats the n slices as a batch and back-propagates the *sum* of the class
    scores over it, i.e. exactly the patient's score: each slice's map is then the Grad-CAM of
    the patient-level decision on that slice (slices with little attention get weak maps).
    The shared encoder is deep-copied per phase so that each phase has its own module to hook.
    """

    def __init__(self, model: PatientClassifier, positions: Tensor) -> None:
        super().__init__()
        self.encoder_ed = copy.deepcopy(model.encoder)
        self.encoder_es = copy.deepcopy(model.encoder)
        self.patient = copy.deepcopy(model)
        self.register_buffer("positions", positions.float())
        self.requires_grad_(True)

    def forward(self, x: Tensor) -> Tensor:
        """(n, 2C, H, W) -> (n, K)."""
        c = x.shape[1] // 2
        n = x.shape[0]
        p = position_encoding(cast(Tensor, self.positions), self.patient.n_frequencies)
        h = self.patient.instance(torch.cat([self.encoder_ed(x[:, :c]), self.encoder_es(x[:, c:]),
                                             p.to(x.dtype)], dim=1))
        z, _ = self.patient.pool(h[None], torch.ones(1, n, dtype=torch.bool, device=x.device))
        logits: Tensor = self.patient.fc(z)
        return logits.expand(n, -1) / n


def gradcam_pairs(model: nn.Module, inputs: Tensor, class_idx: int, image_size: int | None = None,
                  positions: np.ndarray | None = None) -> np.ndarray:
    """Raw Grad-CAM maps of ``model`` (a DualPhaseClassifier, or a
    :class:`~cardioclr.models.patient.PatientClassifier` with the slices' ``positions``) for
    masked slice pairs.

    ``inputs``: (n, 2C, H, W) float network inputs, ED's C channels then ES's (already masked
    per input mode, :func:`~cardioclr.data.pairs.network_inputs`); ``class_idx``:
    the class whose score is explained. Returns float32 (n, 2, H, W): [ED map, ES map], ReLU'd
    and bilinearly upsampled to H x W but *not* normalised (so shares and ED/ES magnitudes are
    comparable). For the patient model, every map explains the patient-level score.
    """
    net: nn.Module
    if isinstance(model, PatientClassifier):
        if positions is None:
            raise ValueError("the patient-level model's saliency needs the slice positions")
        net = _PatientNet(model, torch.from_numpy(np.asarray(positions))).to(inputs.device)
    else:
        net = _PairNet(model).to(inputs.device)
    size = image_size or int(inputs.shape[-1])
    d = int(cast(int, model.feature_dim))
    c = int(inputs.shape[1]) // 2
    enc_ed, enc_es = net.get_submodule("encoder_ed"), net.get_submodule("encoder_es")
    layers = [f"encoder_ed.{target_layer(enc_ed, d, size, c)}",
              f"encoder_es.{target_layer(enc_es, d, size, c)}"]
    # MONAI's annotation says str; it takes a list of layers too (one per phase here).
    cam = GradCAM(nn_module=net, target_layers=layers, postprocessing=lambda x: x)  # type: ignore[arg-type]
    # An input that requires grad makes the full backward hooks fire the documented way.
    x = inputs.detach().float().requires_grad_(True)
    maps = []
    try:
        for layer_idx in (0, 1):
            with torch.enable_grad():
                m = cam(x, class_idx=int(class_idx), layer_idx=layer_idx)
            maps.append(m.detach()[:, 0].float().cpu().numpy())
    finally:
        _release_gradcam(cam, net)
    return np.stack(maps, axis=1)


def _release_gradcam(cam: Any, net: nn.Module) -> None:
    """Break the reference cycle MONAI's GradCAM leaves behind.

    Its ``ModelWithHooks`` keeps the class score (whose autograd graph holds the backward hooks,
    which hold the ``ModelWithHooks``) and never removes its hooks. The cycle runs through C++
    autograd nodes, which Python's garbage collector cannot see, so every call leaked a copy
    of the model and its activations (measured: ~230 MB per fine-tuning cell with 24 test
    patients; 15.8 GB resident after 22 cells of a paper-preset study on CPU).
    """
    hooked = getattr(cam, "nn_module", None)
    for attr in ("score", "class_idx"):
        if hasattr(hooked, attr):
            setattr(hooked, attr, None)
    for attr in ("activations", "gradients"):
        store = getattr(hooked, attr, None)
        if isinstance(store, dict):
            store.clear()
    for module in net.modules():
        module._forward_hooks.clear()
        module._backward_hooks.clear()


# ----------------------------------------------------------------------------- per patient


def mid_slice(n: int) -> int:
    """Index of the mid-ventricular slice among ``n`` heart-bearing slices (base first)."""
    return max(0, (n - 1) // 2)


def patient_saliency(model: nn.Module, images: np.ndarray, hearts: np.ndarray,
                     share_mask: np.ndarray, input_mode: str, class_idx: int,
                     device: str | torch.device = "cpu", positions: np.ndarray | None = None
                     ) -> dict[str, Any]:
    """Grad-CAM and in-heart shares of one patient.

    ``images`` float32 (n, 2, H, W), ``hearts`` bool (n, 2, H, W) input masks ((n, 6, H, W)
    structure masks in ``anatomy`` mode), ``share_mask`` bool (n, 2, H, W) dilated heart for the
    share, ``positions`` (n,) base -> apex (the patient-level model's input; ignored by the slice
    model). Returns ``{maps (n,2,H,W), inputs (n,2,H,W) (the image channel), in_heart_share,
    in_heart_share_ed, in_heart_share_es, mask_area_share}``.
    """
    ed, es = network_inputs(torch.from_numpy(images).float(), torch.from_numpy(hearts).float(),
                            input_mode)
    maps = gradcam_pairs(model, torch.cat([ed, es], dim=1).to(device), class_idx, positions=positions)
    return {
        "maps": maps,
        "inputs": torch.cat([ed[:, :1], es[:, :1]], dim=1).numpy(),
        "in_heart_share": in_heart_share(maps, share_mask),
        "in_heart_share_ed": in_heart_share(maps[:, 0], share_mask[:, 0]),
        "in_heart_share_es": in_heart_share(maps[:, 1], share_mask[:, 1]),
        "mask_area_share": float(np.mean(share_mask)),
    }


def save_overlay(path: str | Path, inputs: np.ndarray, maps: np.ndarray, hearts: np.ndarray,
                 share_mask: np.ndarray, title: str) -> None:
    """PNG with ED and ES side by side: image (grey), Grad-CAM (jet, alpha), contours.

    ``inputs``, ``maps``: (2, H, W) float; ``hearts``, ``share_mask``: (2, H, W) bool. Both
    heatmaps share one colour scale (the max over ED and ES) so their strengths compare.
    """
    # Lazy: matplotlib loads (and picks its file-only backend) only when a figure is drawn, not
    # for every fine-tuning run that imports this module with saliency switched off.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    vmax = float(maps.max()) if maps.max() > 0 else 1.0
    fig, axes = plt.subplots(1, 2, figsize=(6.4, 3.5), dpi=100)
    for ax, phase, k in zip(axes, ("ED", "ES"), (0, 1), strict=True):
        ax.imshow(inputs[k], cmap="gray", interpolation="nearest")
        ax.imshow(maps[k], cmap="jet", alpha=0.45, vmin=0.0, vmax=vmax, interpolation="bilinear")
        if hearts[k].any():
            ax.contour(hearts[k].astype(float), levels=[0.5], colors="white", linewidths=0.9)
        if share_mask[k].any():
            ax.contour(share_mask[k].astype(float), levels=[0.5], colors="yellow", linewidths=0.7,
                       linestyles="dashed")
        ax.set_title(phase, fontsize=9)
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def run_saliency(model: nn.Module, patients: Sequence[Any], pred_index: dict[str, int],
                 classes: Sequence[str], input_mode: str, out_dir: str | Path,
                 margin_mm: float = DEFAULT_MARGIN_MM, mask_source: str = "",
                 device: str | torch.device = "cpu", figures: int | None = None) -> dict[str, Any]:
    """Saliency for every patient in ``patients`` (:class:`~cardioclr.data.pairs.PatientInputs`
    loaded with ``saliency_margin_mm=margin_mm``); writes PNGs and ``saliency.csv`` into
    ``out_dir`` and returns the summary for metrics.json.

    ``figures``: overlay PNGs only for the first ``figures`` patients in ID order (the ones the
    study report shows: it takes the first IDs common to every model); None = every patient.
    The in-heart shares are computed for every patient either way. Drawing a figure costs
    several times its Grad-CAM on a CPU (matplotlib: 28 of the 42 s of saliency in a demo
    fine-tuning cell for 24 test patients).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    drawn = {p.patient_id for p in sorted(patients, key=lambda p: p.patient_id)[:figures]}
    rows = []
    for p in patients:
        if p.saliency_hearts is None:
            raise ValueError(f"patient {p.patient_id}: loaded without saliency masks")
        cls = int(pred_index[p.patient_id])
        r = patient_saliency(model, p.images, p.hearts, p.saliency_hearts, input_mode, cls, device,
                             positions=p.positions)
        k = mid_slice(p.n_slices)
        label = classes[p.label_index] if 0 <= p.label_index < len(classes) else "?"
        share = r["in_heart_share"]
        if p.patient_id in drawn:
            save_overlay(out / f"{p.patient_id}.png", r["inputs"][k], r["maps"][k],
                         heart_outline(p.hearts[k], input_mode), p.saliency_hearts[k],
                         f"{p.patient_id}  true {label}  pred {classes[cls]}  slice "
                         f"{int(p.slice_index[k])}  in-heart {share:.2f}")
        rows.append({"patient_id": p.patient_id, "label_index": p.label_index, "pred_index": cls,
                     "in_heart_share": share, "in_heart_share_ed": r["in_heart_share_ed"],
                     "in_heart_share_es": r["in_heart_share_es"],
                     "mask_area_share": r["mask_area_share"], "n_slices": p.n_slices,
                     "mid_slice": int(p.slice_index[k])})
    df = pd.DataFrame(rows, columns=["patient_id", "label_index", "pred_index", "in_heart_share",
                                     "in_heart_share_ed", "in_heart_share_es", "mask_area_share",
                                     "n_slices", "mid_slice"])
    write_text(out / "saliency.csv", df.to_csv(index=False))
    return summarise(df, margin_mm, input_mode, mask_source)


def summarise(df: pd.DataFrame, margin_mm: float, input_mode: str, mask_source: str) -> dict[str, Any]:
    """Model-level summary of ``saliency.csv`` rows (NaN shares, i.e. empty maps, left out)."""
    s = df["in_heart_share"].astype(float)
    s = s[np.isfinite(s)]
    area = df["mask_area_share"].astype(float) if len(df) else pd.Series(dtype=float)

    def num(x: float) -> float | None:
        return float(x) if math.isfinite(x) else None

    note = ("segmented input is zero outside the heart: saliency there comes only from receptive "
            "fields and upsampling, so a high share is expected; compare with models of the same "
            "input mode" if input_mode == "segmented" else "")
    return {
        "in_heart_share_mean": num(float(s.mean())) if len(s) else None,
        "in_heart_share_sd": num(float(s.std(ddof=1))) if len(s) > 1 else None,
        "n": int(len(s)),
        "n_empty_maps": int(len(df) - len(s)),
        "margin_mm": float(margin_mm),
        "mask_source": mask_source,
        "mask_area_share_mean": num(float(area.mean())) if len(area) else None,
        "method": "Grad-CAM (monai) per phase encoder, class = patient's predicted class, all "
                  "heart-bearing slices; share of positive saliency inside the dilated heart mask",
        "caveat": note,
    }
