"""Issue 11 item 5: multi-task fine-tuning (diagnosis + auxiliary LV/MYO/RV segmentation)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cardioclr.classify.data import SliceBank
from cardioclr.classify.model import DualPhaseClassifier
from cardioclr.classify.multitask import MultiTaskClassifier, as_classifier
from cardioclr.cli import build_parser
from cardioclr.data.pairs import InputSpec, network_inputs
from cardioclr.data.store import SliceStore


@pytest.mark.parametrize(("name", "shared"), [("smallcnn", False), ("resnet18", True), ("segunet", False)])
def test_segmentation_head_output_shape(name: str, shared: bool) -> None:
    model = MultiTaskClassifier(name, 5, shared_encoder=shared, image_size=64)
    ed, es = torch.rand(3, 1, 64, 64), torch.rand(3, 1, 64, 64)
    assert model(ed, es).shape == (3, 5)
    seg_ed, seg_es = model.segmentation_logits((64, 64))
    assert seg_ed.shape == seg_es.shape == (3, 4, 64, 64)


def _square_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images with a bright LV disc, a MYO ring and an RV blob; their masks are the targets."""
    yy, xx = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    images, structures = torch.zeros(4, 2, 32, 32), torch.zeros(4, 6, 32, 32)
    for i in range(4):
        cy, cx = 12 + 2 * i, 14 + i
        r = ((yy - cy) ** 2 + (xx - cx) ** 2).float().sqrt()
        lv, myo, rv = r < 4, (r >= 4) & (r < 7), (xx > cx + 8) & ((yy - cy).abs() < 5)
        for phase in (0, 1):
            images[i, phase] = 0.9 * lv + 0.3 * myo + 0.6 * rv
            structures[i, 3 * phase:3 * phase + 3] = torch.stack([lv, myo, rv]).float()
    return images, structures, torch.tensor([0, 1, 2, 0])


def test_auxiliary_loss_decreases_on_a_tiny_batch() -> None:
    torch.manual_seed(0)
    model = MultiTaskClassifier("smallcnn", 3, image_size=32, aux_seg_weight=1.0)
    images, structures, _ = _square_batch()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        model(*network_inputs(images, structures[:, :2], "full"))
        loss = model.auxiliary_loss(structures)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.6 * losses[0]


def test_plain_classifier_keeps_the_weights_and_the_predictions() -> None:
    torch.manual_seed(0)
    model = MultiTaskClassifier("smallcnn", 3, image_size=32).eval()
    plain = as_classifier(model).eval()
    assert type(plain) is DualPhaseClassifier
    assert not any(k.startswith("seg_head") for k in plain.state_dict())
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(plain(x, x), model(x, x))


def test_targets_come_only_from_the_training_rows(tiny_work: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from cardioclr.classify import train as train_mod
    from cardioclr.training import TrainerSettings

    store = SliceStore(tiny_work)
    train_ids, test_ids = list(store.splits.train[:4]), list(store.splits.test[:2])
    bank = SliceBank.load(store, train_ids + test_ids, InputSpec("roi", "expert", 32), with_structures=True)
    assert bank.structures is not None and bank.structures.shape == (len(bank), 6, 32, 32)
    seen: list[torch.Tensor] = []
    original = train_mod.ClassifierModule._aux_targets

    def spy(self: train_mod.ClassifierModule, rows: torch.Tensor) -> torch.Tensor | None:
        seen.append(rows.clone())
        return original(self, rows)

    monkeypatch.setattr(train_mod.ClassifierModule, "_aux_targets", spy)
    model = MultiTaskClassifier("smallcnn", len(store.classes), image_size=32)
    train_mod.fit_run(tmp_path / "run", model, bank, train_ids, None, train_mod.RunHyper(1e-3, 8, 1),
                      "roi", len(store.classes), TrainerSettings(max_epochs=1, accelerator="cpu",
                                                                 progress_bar=False), seed=0)
    rows = torch.cat(seen)
    assert len(rows) > 0
    assert set(rows.tolist()) <= set(bank.rows_of(train_ids).tolist())
    assert not set(rows.tolist()) & set(bank.rows_of(test_ids).tolist())


def test_cli_documents_the_new_options() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command" or hasattr(a, "choices") and
               isinstance(a.choices, dict) and "finetune" in a.choices)
    assert isinstance(sub.choices, dict)
    finetune_help = sub.choices["finetune"].format_help()
    for text in ("--aux-seg-weight", "anatomy", "segmentation", "segunet"):
        assert text in finetune_help, text
    pretrain_help = sub.choices["pretrain"].format_help()
    for text in ("anatomy", "--init", "--segmentation-model", "segunet"):
        assert text in pretrain_help, text
