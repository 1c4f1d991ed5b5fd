"""Tests of the encoder registry, ImageNet weight loading, and the heads."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from cardioclr.errors import CardioclrError
from cardioclr.models.encoders import ENCODERS, build_encoder, encoder_names
from cardioclr.models.heads import DualPhaseHead, ProjectionHead
from cardioclr.models.imagenet import (
    ImageNetWeightsError,
    adapt_first_conv,
    densenet_key_from_torchvision,
    first_conv_offset,
)

# torchvision's ImageNet input normalisation, written out here rather than imported so that a
# wrong constant in the package makes the tests fail.
RGB_MEAN = (0.485, 0.456, 0.406)
RGB_STD = (0.229, 0.224, 0.225)


def _rgb(values: tuple[float, float, float]) -> Tensor:
    return torch.tensor(values).view(1, 3, 1, 1)


def _expected_grey_kernel(rgb_kernel: Tensor) -> Tensor:
    """sum_c w_c / s_c, (O, 1, kH, kW), written from the formula."""
    terms = [rgb_kernel[:, c : c + 1] / RGB_STD[c] for c in range(3)]
    return torch.stack(terms).sum(dim=0)


def _expected_offset(rgb_kernel: Tensor) -> Tensor:
    """-sum_c (m_c / s_c) * sum over the kernel window of w_c, per output channel."""
    terms = [RGB_MEAN[c] / RGB_STD[c] * rgb_kernel[:, c].sum(dim=(1, 2)) for c in range(3)]
    return -torch.stack(terms).sum(dim=0)

# --------------------------------------------------------------------------------------------
# Fake torchvision state dicts, written from torchvision's architecture definitions (names and
# shapes), not derived from our modules, so a naming mistake on our side makes the tests fail.
# --------------------------------------------------------------------------------------------


def _bn(prefix: str, c: int, gen: torch.Generator, counters: bool = True) -> dict[str, Tensor]:
    out = {
        f"{prefix}.weight": torch.rand(c, generator=gen) + 0.5,
        f"{prefix}.bias": torch.randn(c, generator=gen),
        f"{prefix}.running_mean": torch.randn(c, generator=gen),
        f"{prefix}.running_var": torch.rand(c, generator=gen) + 0.5,
    }
    if counters:
        out[f"{prefix}.num_batches_tracked"] = torch.tensor(1000)
    return out


def fake_torchvision_vgg16() -> dict[str, Tensor]:
    """torchvision vgg16: conv (out, in) at features.{idx}; classifier.{0,3,6}."""
    gen = torch.Generator().manual_seed(0)
    convs = {
        0: (64, 3), 2: (64, 64), 5: (128, 64), 7: (128, 128), 10: (256, 128), 12: (256, 256),
        14: (256, 256), 17: (512, 256), 19: (512, 512), 21: (512, 512), 24: (512, 512),
        26: (512, 512), 28: (512, 512),
    }  # fmt: skip
    sd: dict[str, Tensor] = {}
    for idx, (cout, cin) in convs.items():
        sd[f"features.{idx}.weight"] = torch.randn(cout, cin, 3, 3, generator=gen) * 0.01
        sd[f"features.{idx}.bias"] = torch.randn(cout, generator=gen)
    # The real classifier is (4096, 25088), (4096, 4096), (1000, 4096): 480 MB. It is ignored
    # by the loader whatever its shapes, so small stand-ins keep the test fast.
    for idx in (0, 3, 6):
        sd[f"classifier.{idx}.weight"] = torch.randn(4, 8, generator=gen)
        sd[f"classifier.{idx}.bias"] = torch.randn(4, generator=gen)
    return sd


def fake_torchvision_resnet18(counters: bool = True) -> dict[str, Tensor]:
    """torchvision resnet18 (BasicBlock x [2, 2, 2, 2])."""
    gen = torch.Generator().manual_seed(1)
    sd: dict[str, Tensor] = {"conv1.weight": torch.randn(64, 3, 7, 7, generator=gen)}
    sd.update(_bn("bn1", 64, gen, counters))
    inplanes = 64
    for stage, planes in enumerate((64, 128, 256, 512), start=1):
        for block in range(2):
            p = f"layer{stage}.{block}"
            cin = inplanes if block == 0 else planes
            sd[f"{p}.conv1.weight"] = torch.randn(planes, cin, 3, 3, generator=gen)
            sd.update(_bn(f"{p}.bn1", planes, gen, counters))
            sd[f"{p}.conv2.weight"] = torch.randn(planes, planes, 3, 3, generator=gen)
            sd.update(_bn(f"{p}.bn2", planes, gen, counters))
            if block == 0 and stage > 1:
                sd[f"{p}.downsample.0.weight"] = torch.randn(planes, cin, 1, 1, generator=gen)
                sd.update(_bn(f"{p}.downsample.1", planes, gen, counters))
        inplanes = planes
    sd["fc.weight"] = torch.randn(1000, 512, generator=gen)
    sd["fc.bias"] = torch.randn(1000, generator=gen)
    return sd


def fake_torchvision_densenet121(legacy: bool) -> dict[str, Tensor]:
    """torchvision densenet121 (growth 32, bn_size 4, blocks 6/12/24/16, 64 initial features).

    ``legacy``: the names in the published .pth file (``norm.1``) instead of ``norm1``.
    """
    gen = torch.Generator().manual_seed(2)
    sd: dict[str, Tensor] = {"features.conv0.weight": torch.randn(64, 3, 7, 7, generator=gen)}
    sd.update(_bn("features.norm0", 64, gen, counters=not legacy))
    channels = 64
    for b, n_layers in enumerate((6, 12, 24, 16), start=1):
        for i in range(1, n_layers + 1):
            p = f"features.denseblock{b}.denselayer{i}"
            cin = channels + (i - 1) * 32
            sep = "." if legacy else ""
            sd.update(_bn(f"{p}.norm{sep}1", cin, gen, counters=not legacy))
            sd[f"{p}.conv{sep}1.weight"] = torch.randn(128, cin, 1, 1, generator=gen)
            sd.update(_bn(f"{p}.norm{sep}2", 128, gen, counters=not legacy))
            sd[f"{p}.conv{sep}2.weight"] = torch.randn(32, 128, 3, 3, generator=gen)
        channels += n_layers * 32
        if b < 4:
            sd.update(_bn(f"features.transition{b}.norm", channels, gen, counters=not legacy))
            sd[f"features.transition{b}.conv.weight"] = torch.randn(
                channels // 2, channels, 1, 1, generator=gen
            )
            channels //= 2
    sd.update(_bn("features.norm5", channels, gen, counters=not legacy))
    sd["classifier.weight"] = torch.randn(1000, channels, generator=gen)
    sd["classifier.bias"] = torch.randn(1000, generator=gen)
    return sd


# --------------------------------------------------------------------------------------------
# Registry and shapes
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(ENCODERS))
def test_output_shape_matches_reported_dim(name: str) -> None:
    model, dim = build_encoder(name)
    assert dim == ENCODERS[name].feature_dim
    model.eval()
    sizes = [64, 96] if name == "vgg16" else [64]
    with torch.no_grad():
        for size in sizes:
            out = model(torch.randn(2, 1, size, size))
            assert out.shape == (2, dim)
            assert out.dtype == torch.float32
            assert torch.isfinite(out).all()


def test_expected_registry_and_dims() -> None:
    dims = {name: spec.feature_dim for name, spec in ENCODERS.items()}
    assert dims == {
        "vgg16": 512,
        "densenet121": 1024,
        "resnet18": 512,
        "resnet50": 2048,
        "smallcnn": 256,
        "segunet": 256,
    }
    assert {n for n, s in ENCODERS.items() if s.in_paper} == {"vgg16", "densenet121"}


def test_multichannel_input() -> None:
    model, dim = build_encoder("smallcnn", in_channels=3)
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, dim)


def test_smallcnn_trains_one_step() -> None:
    model, _ = build_encoder("smallcnn")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(4, 1, 48, 48)
    before = [p.detach().clone() for p in model.parameters()]
    model(x).square().mean().backward()
    opt.step()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))


def test_unknown_name_lists_choices() -> None:
    with pytest.raises(ValueError) as err:
        build_encoder("alexnet")
    message = str(err.value)
    assert "alexnet" in message
    for name in encoder_names():
        assert name in message


def test_bad_in_channels() -> None:
    with pytest.raises(ValueError, match="in_channels"):
        build_encoder("smallcnn", in_channels=0)


# --------------------------------------------------------------------------------------------
# ImageNet weights
# --------------------------------------------------------------------------------------------


def test_vgg16_imagenet_loading_folds_normalisation(tmp_path: Path) -> None:
    sd = fake_torchvision_vgg16()
    path = tmp_path / "vgg16.pth"
    torch.save(sd, path)
    model, _ = build_encoder("vgg16", imagenet_weights=path)
    got = model.state_dict()
    w = sd["features.0.weight"]
    assert got["features.0.weight"].shape == (64, 1, 3, 3)
    torch.testing.assert_close(got["features.0.weight"], _expected_grey_kernel(w))
    torch.testing.assert_close(got["features.0.bias"], sd["features.0.bias"] + _expected_offset(w))
    for key, value in sd.items():
        if key.startswith("classifier.") or key in ("features.0.weight", "features.0.bias"):
            continue
        assert torch.equal(got[key], value), key
    assert not any(k.startswith("classifier") for k in got)


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "model_module_prefix", "no_counters"])
def test_resnet18_imagenet_loading(tmp_path: Path, wrap: str) -> None:
    sd = fake_torchvision_resnet18(counters=wrap != "no_counters")
    if wrap == "state_dict":
        payload: object = {"state_dict": sd, "epoch": 90}
    elif wrap == "model_module_prefix":
        payload = {"model": {f"module.{k}": v for k, v in sd.items()}}
    else:
        payload = sd
    path = tmp_path / "resnet18.pth"
    torch.save(payload, path)
    model, _ = build_encoder("resnet18", imagenet_weights=path)
    got = model.state_dict()
    w = sd["conv1.weight"]
    torch.testing.assert_close(got["conv1.weight"], _expected_grey_kernel(w))
    torch.testing.assert_close(
        got["bn1.running_mean"], sd["bn1.running_mean"] - _expected_offset(w)
    )
    for key, value in sd.items():
        if key.startswith("fc.") or key in ("conv1.weight", "bn1.running_mean"):
            continue
        assert torch.equal(got[key], value), key
    # Old torchvision files have no num_batches_tracked: the model's own counters stay.
    assert {k for k in got if not k.endswith("num_batches_tracked")} == {
        k for k in sd if not k.startswith("fc.") and not k.endswith("num_batches_tracked")
    }


@pytest.mark.parametrize("legacy", [False, True])
def test_densenet121_imagenet_loading_maps_names(tmp_path: Path, legacy: bool) -> None:
    sd = fake_torchvision_densenet121(legacy)
    path = tmp_path / "densenet121.pth"
    torch.save(sd, path)
    model, _ = build_encoder("densenet121", imagenet_weights=path)
    got = model.state_dict()
    sep = "." if legacy else ""
    src = f"features.denseblock3.denselayer7.norm{sep}2.running_var"
    assert torch.equal(got["features.denseblock3.denselayer7.layers.norm2.running_var"], sd[src])
    assert torch.equal(got["features.transition2.conv.weight"], sd["features.transition2.conv.weight"])
    w = sd["features.conv0.weight"]
    torch.testing.assert_close(got["features.conv0.weight"], _expected_grey_kernel(w))
    torch.testing.assert_close(
        got["features.norm0.running_mean"], sd["features.norm0.running_mean"] - _expected_offset(w)
    )
    adapted = ("features.conv0.weight", "features.norm0.running_mean")
    n_loaded = sum(
        1
        for k, v in sd.items()
        if not k.startswith("classifier.") and k not in adapted
        if torch.equal(got[densenet_key_from_torchvision(k)], v)
    )
    assert n_loaded == len(sd) - 4  # all but classifier.weight/bias, conv0 and norm0's mean


def test_densenet_key_map_examples() -> None:
    f = densenet_key_from_torchvision
    want = "features.denseblock1.denselayer2.layers.conv1.weight"
    assert f("features.denseblock1.denselayer2.conv1.weight") == want
    assert f("features.denseblock1.denselayer2.conv.1.weight") == want
    assert f("features.transition1.norm.bias") == "features.transition1.norm.bias"
    assert f("features.norm5.running_mean") == "features.norm5.running_mean"


@pytest.mark.parametrize("channels", [1, 2, 3])
def test_adapted_first_conv_responds_like_rgb_on_grey(channels: int) -> None:
    gen = torch.Generator().manual_seed(3)
    rgb = torch.randn(8, 3, 3, 3, generator=gen)
    grey = torch.rand(2, 1, 10, 10, generator=gen)
    adapted = adapt_first_conv(rgb, channels)
    assert adapted.shape == (8, channels, 3, 3)
    # The RGB network sees the grey image replicated and ImageNet-normalised per channel.
    normalised = (grey.expand(-1, 3, -1, -1) - _rgb(RGB_MEAN)) / _rgb(RGB_STD)
    ref = nn.functional.conv2d(normalised, rgb)
    got = nn.functional.conv2d(grey.expand(-1, channels, -1, -1), adapted, first_conv_offset(rgb))
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    # Plain RGB summation (right only for un-normalised RGB input) is far from it.
    naive = nn.functional.conv2d(grey, rgb.sum(dim=1, keepdim=True))
    assert (naive - ref).abs().max() > 1.0


def test_adapt_first_conv_three_channels_acts_per_channel() -> None:
    gen = torch.Generator().manual_seed(4)
    rgb = torch.randn(4, 3, 3, 3, generator=gen)
    image = torch.rand(2, 3, 9, 9, generator=gen)  # distinct R, G, B content
    ref = nn.functional.conv2d((image - _rgb(RGB_MEAN)) / _rgb(RGB_STD), rgb)
    got = nn.functional.conv2d(image, adapt_first_conv(rgb, 3), first_conv_offset(rgb))
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


# (encoder, torchvision file, first conv key, its bias or None, following BN prefix or None,
#  torchvision's stride and padding of that conv)
_FIRST_BLOCKS = {
    "vgg16": (fake_torchvision_vgg16, "features.0.weight", "features.0.bias", None, 1, 1),
    "resnet18": (fake_torchvision_resnet18, "conv1.weight", None, "bn1", 2, 3),
    "densenet121": (
        lambda: fake_torchvision_densenet121(legacy=False),
        "features.conv0.weight", None, "features.norm0", 2, 3,
    ),
}  # fmt: skip


def _first_block(model: nn.Module, name: str, x: Tensor) -> Tensor:
    """The encoder's first block: conv + bias + ReLU (VGG16), conv + BN (ResNet, DenseNet)."""
    if name == "vgg16":
        return model.features[1](model.features[0](x))
    if name == "resnet18":
        return model.bn1(model.conv1(x))
    return model.features.norm0(model.features.conv0(x))


@pytest.mark.parametrize("name", list(_FIRST_BLOCKS))
def test_imagenet_first_block_on_grey_equals_rgb_on_normalised_input(
    tmp_path: Path, name: str
) -> None:
    make_sd, conv_key, bias_key, bn, stride, padding = _FIRST_BLOCKS[name]
    sd = make_sd()
    path = tmp_path / f"{name}.pth"
    torch.save(sd, path)
    model, _ = build_encoder(name, imagenet_weights=path)
    model.eval()

    gen = torch.Generator().manual_seed(5)
    x = torch.rand(2, 1, 40, 40, generator=gen)  # a percentile-normalised grey MR image
    with torch.no_grad():
        got = _first_block(model, name, x)

    # Reference: torchvision's RGB network on the replicated, ImageNet-normalised image, with
    # the original weights from the file, in float64.
    def reference(rgb_input: Tensor) -> Tensor:
        w = sd[conv_key].double()
        b = sd[bias_key].double() if bias_key else None
        y = nn.functional.conv2d(rgb_input.double(), w, b, stride=stride, padding=padding)
        if bn is None:
            return torch.relu(y)
        return nn.functional.batch_norm(
            y,
            sd[f"{bn}.running_mean"].double(),
            sd[f"{bn}.running_var"].double(),
            sd[f"{bn}.weight"].double(),
            sd[f"{bn}.bias"].double(),
            training=False,
            eps=1e-5,
        )

    rgb = x.expand(-1, 3, -1, -1)
    ref = reference((rgb - _rgb(RGB_MEAN)) / _rgb(RGB_STD))
    assert got.shape == ref.shape
    # Zero padding differs (raw 0 vs normalised 0): compare only outputs whose kernel window
    # lies inside the image, i.e. a margin of ceil(kernel radius / stride) output pixels.
    m = -(-padding // stride)
    inner = (slice(None), slice(None), slice(m, -m), slice(m, -m))
    torch.testing.assert_close(got[inner].double(), ref[inner], rtol=1e-4, atol=1e-4)
    # The fold really matters: the RGB network on un-normalised input is far from it.
    assert (reference(rgb)[inner] - ref[inner]).abs().max() > 0.1


def test_missing_weight_file_is_clear(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "vgg16-397923af.pth"
    with pytest.raises(ImageNetWeightsError) as err:
        build_encoder("vgg16", imagenet_weights=path)
    assert str(path) in str(err.value)
    assert "never downloaded" in str(err.value)
    assert isinstance(err.value, CardioclrError)


def test_mismatched_file_names_file_and_keys(tmp_path: Path) -> None:
    path = tmp_path / "resnet18.pth"
    torch.save(fake_torchvision_resnet18(), path)
    with pytest.raises(ImageNetWeightsError) as err:
        build_encoder("resnet50", imagenet_weights=path)
    message = str(err.value)
    assert str(path) in message
    assert "resnet50" in message
    assert "missing keys" in message and "layer1.0.conv3.weight" in message
    assert "shape mismatches" in message and "layer1.0.conv1.weight" in message

    with pytest.raises(ImageNetWeightsError, match=r"missing keys .*features\.conv0\.weight"):
        build_encoder("densenet121", imagenet_weights=path)


def test_not_a_state_dict_is_clear(tmp_path: Path) -> None:
    text = tmp_path / "weights.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(ImageNetWeightsError, match="cannot be read"):
        build_encoder("vgg16", imagenet_weights=text)
    listed = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], listed)
    with pytest.raises(ImageNetWeightsError, match="does not contain a state dict"):
        build_encoder("vgg16", imagenet_weights=listed)


def test_smallcnn_has_no_imagenet_weights(tmp_path: Path) -> None:
    path = tmp_path / "vgg16.pth"
    torch.save(fake_torchvision_vgg16(), path)
    with pytest.raises(ImageNetWeightsError, match="no ImageNet weights"):
        build_encoder("smallcnn", imagenet_weights=path)


# --------------------------------------------------------------------------------------------
# Memory-efficient DenseNet gives the same results
# --------------------------------------------------------------------------------------------


def test_memory_efficient_densenet_matches_plain() -> None:
    torch.manual_seed(0)
    plain, _ = build_encoder("densenet121")
    efficient, _ = build_encoder("densenet121", memory_efficient=True)
    efficient.load_state_dict(plain.state_dict())
    x = torch.randn(3, 1, 32, 32)
    out_plain = plain(x)
    out_eff = efficient(x)
    torch.testing.assert_close(out_eff, out_plain, rtol=1e-4, atol=1e-5)
    out_plain.square().sum().backward()
    out_eff.square().sum().backward()
    for (name, p), q in zip(plain.named_parameters(), efficient.parameters(), strict=True):
        assert q.grad is not None, name
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-3, atol=1e-4, msg=name)
    # Batch-norm running statistics are updated once, as without checkpointing.
    for (name, a), b in zip(plain.state_dict().items(), efficient.state_dict().values(), strict=True):
        if "running" in name or "num_batches" in name:
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)


def test_memory_efficient_flag_keeps_state_dict_keys() -> None:
    a, _ = build_encoder("densenet121")
    b, _ = build_encoder("densenet121", memory_efficient=True)
    assert list(a.state_dict()) == list(b.state_dict())


# --------------------------------------------------------------------------------------------
# Heads
# --------------------------------------------------------------------------------------------


def test_projection_head_shapes_and_structure() -> None:
    head = ProjectionHead(256)
    assert head(torch.randn(4, 256)).shape == (4, 128)
    kinds = [type(m) for m in head.net]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert ProjectionHead(64, hidden_dim=32, out_dim=16)(torch.randn(3, 64)).shape == (3, 16)


def test_dual_phase_head_uses_both_phases_in_order() -> None:
    head = DualPhaseHead(feature_dim=8, n_classes=5)
    ed, es = torch.randn(2, 4, 8)
    logits = head(ed, es)
    assert logits.shape == (4, 5)
    # Swapping ED and ES must change the logits: the phase order carries information.
    assert not torch.allclose(head(es, ed), logits)
    # Only ES changes -> logits change (ES is not ignored).
    assert not torch.allclose(head(ed, es + 1.0), logits)
    with pytest.raises(ValueError, match="differ in shape"):
        head(ed, es[:, :4])


def test_dual_phase_head_dropout_only_in_training() -> None:
    head = DualPhaseHead(feature_dim=16, n_classes=3, dropout=0.5)
    ed, es = torch.randn(2, 64, 16)
    head.eval()
    assert torch.equal(head(ed, es), head(ed, es))
    head.train()
    torch.manual_seed(0)
    assert not torch.equal(head(ed, es), head(ed, es))
    with pytest.raises(ValueError, match="dropout"):
        DualPhaseHead(4, 2, dropout=1.0)


def test_heads_copyable() -> None:
    # Lightning / EMA code deep-copies modules; make sure nothing in the heads prevents it.
    assert isinstance(copy.deepcopy(ProjectionHead(8)), ProjectionHead)


def test_cli_encoder_choices_match_the_registry() -> None:
    from cardioclr.choices import ENCODER_NAMES
    from cardioclr.models.encoders import encoder_names

    assert list(ENCODER_NAMES) == encoder_names()


def test_building_the_cli_parser_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = ("import sys; from cardioclr.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('torch', 'lightning', 'monai') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]"
