"""Issue 11 items 1 and 4: the ``anatomy`` input mode and the segmentation-encoder initialisation."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from cardioclr.classify.data import FINETUNE_AUGMENT, SliceBank
from cardioclr.classify.model import DualPhaseClassifier, initialise_encoders
from cardioclr.data.augment import AugmentConfig, augment_batch, two_views
from cardioclr.data.pairs import InputSpec, heart_outline, load_patient_inputs, network_inputs
from cardioclr.data.store import SliceStore
from cardioclr.data.views import ANATOMY_STRUCTURES, input_channels
from cardioclr.errors import CardioclrError
from cardioclr.models.encoders import ENCODERS, build_encoder, widen_input_channels
from cardioclr.models.segunet import SEGUNET_NETWORK, build_segmentation_unet
from cardioclr.segment.model import NetworkConfig, build_network, network_config_dict
from cardioclr.segment.train import PRESETS

# ----------------------------------------------------------------------------- anatomy inputs


def test_input_channels_per_mode() -> None:
    assert [input_channels(m) for m in ("full", "segmented", "roi", "anatomy")] == [1, 1, 1, 4]
    assert [name for name, _ in ANATOMY_STRUCTURES] == ["LV", "MYO", "RV"]


def test_anatomy_inputs_are_the_roi_crop_plus_the_structure_masks(tiny_work: Path) -> None:
    store = SliceStore(tiny_work)
    pid = store.splits.train[0]
    roi = load_patient_inputs(store, pid, InputSpec("roi", "expert", 32))
    ana = load_patient_inputs(store, pid, InputSpec("anatomy", "expert", 32))
    n = ana.n_slices
    assert ana.images.shape == (n, 2, 32, 32) and ana.hearts.shape == (n, 6, 32, 32)
    # The image is exactly the roi crop (same box, same slices); the masks are 0/1 and disjoint.
    np.testing.assert_array_equal(ana.images, roi.images)
    assert ana.hearts.dtype == bool
    per_phase = ana.hearts.reshape(n, 2, 3, 32, 32).sum(axis=2)
    assert per_phase.max() == 1
    # Their union is the roi heart (up to the resize of each mask separately at the boundary).
    union = heart_outline(ana.hearts, "anatomy")
    assert union.shape == roi.hearts.shape
    assert (union == roi.hearts).mean() > 0.97
    # Every structure appears somewhere (phantoms have LV, MYO and RV).
    assert all(ana.hearts[:, c].any() for c in range(6))


def test_network_inputs_of_anatomy_mode_stack_image_and_masks() -> None:
    images = torch.rand(3, 2, 16, 16)
    hearts = torch.zeros(3, 6, 16, 16)
    hearts[:, 1] = 1.0  # ED MYO
    hearts[:, 5] = 1.0  # ES RV
    ed, es = network_inputs(images, hearts, "anatomy")
    assert ed.shape == es.shape == (3, 4, 16, 16)
    torch.testing.assert_close(ed[:, 0], images[:, 0])
    torch.testing.assert_close(es[:, 0], images[:, 1])
    assert ed[:, 2].eq(1).all() and ed[:, [1, 3]].eq(0).all()
    assert es[:, 3].eq(1).all() and es[:, 1:3].eq(0).all()
    with pytest.raises(ValueError, match="structure masks"):
        network_inputs(images, hearts[:, :2], "anatomy")


def test_augmentation_moves_masks_with_the_image_but_leaves_them_binary() -> None:
    torch.manual_seed(0)
    images = torch.zeros(4, 2, 32, 32)
    hearts = torch.zeros(4, 6, 32, 32)
    images[:, :, 8:20, 10:22] = 0.8
    hearts[:, :, 8:20, 10:22] = 1.0  # masks cover exactly the bright square
    x, warped = augment_batch(images, hearts, "anatomy", FINETUNE_AUGMENT)
    assert warped is not None and warped.shape == (4, 6, 32, 32)
    assert set(torch.unique(warped).tolist()) <= {0.0, 1.0}  # no intensity change on masks
    # Spatial: the mask still sits on the (warped) bright square.
    bright = x[:, 0] > 0.4
    inside = (bright & (warped[:, 0] > 0)).sum() / bright.sum()
    assert inside > 0.9
    # SimCLR views carry the masks as channels 1-3.
    v0, v1 = two_views(images[:, 0], hearts[:, :3], "anatomy", AugmentConfig())
    assert v0.shape == v1.shape == (4, 4, 32, 32)
    assert set(torch.unique(v0[:, 1:]).tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("name", list(ENCODERS))
def test_every_encoder_takes_anatomy_channels(name: str) -> None:
    model, dim = build_encoder(name, in_channels=input_channels("anatomy"))
    with torch.no_grad():
        assert model.eval()(torch.rand(1, 4, 64, 64)).shape == (1, dim)


def test_widened_weights_keep_the_image_kernel_and_zero_the_mask_channels() -> None:
    torch.manual_seed(0)
    one, _ = build_encoder("resnet18", in_channels=1)
    four, _ = build_encoder("resnet18", in_channels=4)
    widened = widen_input_channels(one.state_dict(), four.state_dict())
    four.load_state_dict(widened)
    w = four.state_dict()["conv1.weight"]
    torch.testing.assert_close(w[:, :1], one.state_dict()["conv1.weight"])
    assert w[:, 1:].abs().sum() == 0
    # Hence the widened encoder sees the image exactly as the 1-channel one, whatever the masks.
    x = torch.rand(2, 1, 64, 64)
    masks = (torch.rand(2, 3, 64, 64) > 0.5).float()
    with torch.no_grad():
        torch.testing.assert_close(four.eval()(torch.cat([x, masks], 1)), one.eval()(x))


def test_imagenet_init_loads_into_an_anatomy_classifier(tmp_path: Path) -> None:
    from test_encoders import fake_torchvision_resnet18  # the torchvision-layout fake file

    path = tmp_path / "resnet18.pth"
    torch.save(fake_torchvision_resnet18(), path)
    model = DualPhaseClassifier("resnet18", 3, in_channels=4)
    initialise_encoders(model, "imagenet", path)
    grey, _ = build_encoder("resnet18", in_channels=1, imagenet_weights=path)
    w = model.encoder_ed.state_dict()["conv1.weight"]
    torch.testing.assert_close(w[:, :1], grey.state_dict()["conv1.weight"])
    assert w[:, 1:].abs().sum() == 0


def test_anatomy_bank_batches_reach_the_classifier(tiny_work: Path) -> None:
    store = SliceStore(tiny_work)
    spec = InputSpec("anatomy", "expert", 32)
    bank = SliceBank.load(store, store.splits.train[:3], spec)
    images, hearts, labels, _ = next(iter(torch.utils.data.DataLoader(bank.dataset(store.splits.train[:3]),
                                                                        batch_size=5)))
    model = DualPhaseClassifier("smallcnn", len(store.classes), in_channels=input_channels("anatomy"))
    logits = model(*network_inputs(images, hearts, "anatomy"))
    assert logits.shape == (5, len(store.classes))


def test_anatomy_pretraining_slices_carry_three_masks(tiny_work: Path) -> None:
    from cardioclr.ssl.data import SliceDataset, load_patient

    store = SliceStore(tiny_work)
    images, hearts = load_patient(store, store.splits.train[0], "anatomy", 32, "expert")
    assert hearts is not None
    assert images.shape[1:] == (32, 32) and hearts.shape == (images.shape[0], 3, 32, 32)
    assert set(np.unique(hearts).tolist()) <= {0, 1} and hearts.any()
    batch = SliceDataset(images, hearts).__getitems__([0, 1])
    assert batch["heart"].shape == (2, 3, 32, 32)


# ----------------------------------------------------------------------------- segmentation init


def test_segunet_equals_the_cpu_preset_segmentation_network() -> None:
    preset = network_config_dict(PRESETS["cpu"]["network"])
    # the input (context_slices) may differ: the encoder sums a 2.5D model's input convolutions
    assert {key: preset[key] for key in SEGUNET_NETWORK} == SEGUNET_NETWORK
    ours = build_segmentation_unet().state_dict()
    theirs = build_network(PRESETS["cpu"]["network"]).state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}


def _save_seg_model(path: Path, net: torch.nn.Module, cfg: NetworkConfig) -> Path:
    from cardioclr.segment.train import MODEL_FORMAT

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": MODEL_FORMAT, "state_dict": net.state_dict(), "network": network_config_dict(cfg),
                "image_size": 64, "spacing_mm": 3.0, "best_val_dice": 0.9}, path)
    return path


@pytest.mark.parametrize("mode", ["segmented", "anatomy"])
def test_segmentation_init_loads_the_seg_encoder_and_a_changed_weight_changes_the_output(
        tmp_path: Path, mode: str) -> None:
    cfg = PRESETS["cpu"]["network"]
    torch.manual_seed(0)
    net = build_network(cfg)
    path = _save_seg_model(tmp_path / "a" / "model.pt", net, cfg)
    c = input_channels(mode)
    x = torch.rand(2, c, 32, 32)

    def output(p: Path) -> torch.Tensor:
        torch.manual_seed(1)  # the same head for both files
        model = DualPhaseClassifier("segunet", 3, in_channels=c)
        info = initialise_encoders(model, "segmentation", p)
        assert info.pretraining == "segmentation"
        with torch.no_grad():
            return model.eval()(x, x)

    first = output(path)
    # The encoder's first level is the segmentation network's first level, weight for weight.
    model = DualPhaseClassifier("segunet", 3, in_channels=c)
    initialise_encoders(model, "segmentation", path)
    got = model.encoder_ed.state_dict()["down.0.conv.unit0.conv.weight"]
    torch.testing.assert_close(got[:, :1], net.state_dict()["model.0.conv.unit0.conv.weight"])
    # Change one deep weight of the checkpoint: the classifier's output changes.
    state = net.state_dict()
    key = "model.1.submodule.1.submodule.0.conv.unit1.conv.weight"
    state[key] = state[key] + 0.5
    net.load_state_dict(state)
    changed = _save_seg_model(tmp_path / "b" / "model.pt", net, cfg)
    assert not torch.allclose(first, output(changed))
    assert torch.equal(first, output(path))


def test_segmentation_init_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(CardioclrError, match="no trained segmentation model"):
        initialise_encoders(DualPhaseClassifier("segunet", 3), "segmentation", tmp_path / "model.pt")
    other = NetworkConfig(channels=(8, 16, 32, 64, 128), num_res_units=1, norm="batch")
    path = _save_seg_model(tmp_path / "o" / "model.pt", build_network(other), other)
    with pytest.raises(CardioclrError, match=r"does not match the segunet encoder.*channels"):
        initialise_encoders(DualPhaseClassifier("segunet", 3), "segmentation", path)
    cfg = PRESETS["cpu"]["network"]
    good = _save_seg_model(tmp_path / "g" / "model.pt", build_network(cfg), cfg)
    with pytest.raises(CardioclrError, match="needs --encoder segunet"):
        initialise_encoders(DualPhaseClassifier("smallcnn", 3), "segmentation", good)


def test_input_spec_round_trips_anatomy() -> None:
    spec = InputSpec("anatomy", "predicted", 64)
    assert InputSpec(**asdict(spec)) == spec


def test_simclr_on_anatomy_inputs_from_the_segmentation_encoder(tiny_work: Path, tmp_path: Path) -> None:
    from cardioclr.models.checkpoint import read_encoder_file
    from cardioclr.ssl.pretrain import PretrainConfig, pretrain, run_key

    cfg_net = PRESETS["cpu"]["network"]
    torch.manual_seed(0)
    seg = _save_seg_model(tmp_path / "seg" / "model.pt", build_network(cfg_net), cfg_net)
    cfg = PretrainConfig(work=str(tiny_work), encoder="segunet", input_mode="anatomy", masks="expert",
                         out=str(tmp_path / "pre"), batch_size=16, max_epochs=1, patience=5,
                         image_size=32, accelerator="cpu", limit_train_batches=1, progress_bar=False,
                         init="segmentation", segmentation_model=str(seg))
    pretrain(cfg)
    payload = read_encoder_file(tmp_path / "pre" / "encoder.pt")
    assert payload["input_mode"] == "anatomy" and payload["init"] == "segmentation"
    assert payload["state_dict"]["down.0.conv.unit0.conv.weight"].shape[1] == 4
    # Fine-tuning from it records both steps; without --init the run identity is unchanged.
    model = DualPhaseClassifier("segunet", 3, in_channels=4)
    info = initialise_encoders(model, "simclr", tmp_path / "pre" / "encoder.pt")
    assert info.pretraining == "segmentation-simclr-anatomy"
    plain = PretrainConfig(work=str(tiny_work), encoder="smallcnn")
    assert "init" not in run_key(plain) and "segmentation_model" not in run_key(plain)
    with pytest.raises(CardioclrError, match="needs --encoder segunet"):
        pretrain(PretrainConfig(work=str(tiny_work), encoder="smallcnn", init="segmentation"))


def test_saved_anatomy_classifier_predicts_new_patients(tiny_work: Path, tmp_path: Path) -> None:
    from cardioclr.classify.predict import load_classifier, save_classifier

    store = SliceStore(tiny_work)
    spec = InputSpec("anatomy", "expert", 32)
    torch.manual_seed(0)
    model = DualPhaseClassifier("smallcnn", len(store.classes), in_channels=4).eval()
    save_classifier(tmp_path / "model.pt", [model], spec, store.classes, "none", [0])
    clf = load_classifier(tmp_path)
    assert clf.spec == spec and clf.models[0].in_channels == 4
    inputs = load_patient_inputs(store, store.splits.test[0], spec)
    p = clf.predict_inputs(inputs)
    assert p.shape == (len(store.classes),) and abs(p.sum() - 1) < 1e-6
    ed, es = network_inputs(torch.from_numpy(inputs.images), torch.from_numpy(inputs.hearts).float(),
                            "anatomy")
    with torch.no_grad():
        direct = torch.softmax(model(ed, es), 1).mean(0).double().numpy()
    np.testing.assert_allclose(p, direct, atol=1e-5)
