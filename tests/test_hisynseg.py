"""HisynSeg: synthesis masks vs pixels, determinism, realism filter, losses, predict, trainer."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import yaml
from conftest import two_class_patch
from scipy import ndimage
from torch import nn
from typer.testing import CliRunner

from wsi_lpd.classes import ClassList
from wsi_lpd.cli.app import app
from wsi_lpd.data.datasets import LPD_NORMALISATION, PatchDataset
from wsi_lpd.errors import ConfigError, DatasetError
from wsi_lpd.networks.build import build_model
from wsi_lpd.networks.checkpoint import load_model
from wsi_lpd.networks.hisynseg import HisynSegModel
from wsi_lpd.train.engine import train
from wsi_lpd.train.hisynseg.losses import consistency_loss, dice_loss, real_losses, synthetic_losses
from wsi_lpd.train.hisynseg.realism import filter_realistic
from wsi_lpd.train.hisynseg.synthesis import (
    BezierParams,
    MosaicParams,
    SingleLabelPool,
    bezier_image,
    bezier_mask,
    mosaic_anchor,
    mosaic_image,
    synthesise,
)
from wsi_lpd.train.registry import training_config_from_mapping

CONFIGS = Path(__file__).parents[1] / "configs" / "model"
TINY = CONFIGS / "hisynseg_tiny_test.yaml"
CLASSES = ClassList.from_names(["A", "B"])
PATCH = 32
# two single-label patches per class, each its own colour; a multi-label patch in grey
COLOURS = {0: [(220, 40, 40), (160, 20, 60)], 1: [(40, 200, 60), (20, 120, 40)], 2: [(50, 60, 210)]}
MULTI = (128, 128, 128)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _palette_pool(size: int = PATCH) -> tuple[SingleLabelPool, dict[int, set]]:
    """Constant-colour patches: rows 0-4 single-label (3 classes), row 5 multi-label."""
    images, rows = [], []
    for c, colours in COLOURS.items():
        for col in colours:
            images.append(np.full((size, size, 3), col, np.uint8))
            rows.append(np.eye(3, dtype=np.uint8)[c])
    images.append(np.full((size, size, 3), MULTI, np.uint8))
    rows.append(np.array([1, 1, 0], np.uint8))
    pool = SingleLabelPool(np.stack(rows), lambda i: images[i], size)
    return pool, {c: set(cols) for c, cols in COLOURS.items()}


def _colour_matches(image: np.ndarray, mask: np.ndarray, allowed: dict[int, set]) -> np.ndarray:
    """Bool map: the pixel's colour is one of the colours of its mask class's patches."""
    ok = np.zeros(mask.shape, bool)
    for c, cols in allowed.items():
        for col in cols:
            ok |= (mask == c) & np.all(image == np.array(col, np.uint8), axis=-1)
    return ok


def _within_class_colours(
    image: np.ndarray, mask: np.ndarray, allowed: dict[int, set]
) -> np.ndarray:
    """Bool map: the colour is a blend of two colours of the pixel's class (bilinear resampling
    may mix neighbouring patches of the same class) — within 1 unit of that segment in RGB."""
    rgb = image.astype(np.float64)
    ok = np.zeros(mask.shape, bool)
    for c, cols in allowed.items():
        cols = [np.array(col, np.float64) for col in cols]
        for a in cols:
            for b in cols:
                d = b - a
                t = np.clip(((rgb - a) @ d) / max(float(d @ d), 1e-9), 0.0, 1.0)
                dist = np.linalg.norm(rgb - (a + t[..., None] * d), axis=-1)
                ok |= (mask == c) & (dist <= 1.0)
    return ok


def _boundary(mask: np.ndarray, radius: int) -> np.ndarray:
    size = 2 * radius + 1
    return ndimage.maximum_filter(mask, size) != ndimage.minimum_filter(mask, size)


# ---------------------------------------------------------------------------------- synthesis


def test_mosaic_without_transforms_is_exact() -> None:
    pool, allowed = _palette_pool()
    for seed in range(6):
        rng = np.random.default_rng(seed)
        image, mask = mosaic_image(pool, rng, PATCH, MosaicParams(transform_p=0.0))
        assert image.shape == (PATCH, PATCH, 3) and mask.dtype == np.uint8
        assert _colour_matches(image, mask, allowed).all()


@pytest.mark.parametrize("size", [32, 48])
def test_mosaic_with_flips_and_rotations_keeps_pixels_with_their_class(size: int) -> None:
    pool, allowed = _palette_pool(size)
    params = MosaicParams(transform_p=1.0)  # flip + shift-scale-rotate on every quadrant
    for seed in range(8):
        image, mask = mosaic_image(pool, np.random.default_rng(seed), size, params)
        ok = _within_class_colours(image, mask, allowed)
        # bilinear image vs nearest mask: only pixels within 2 px of a class edge may blend; the
        # edge may lie just outside a quadrant's crop, so the seams and the border count as edges
        h, w = mosaic_anchor(np.random.default_rng(seed), size, params)
        edges = _boundary(mask, 2)
        for line in (0, h, size):
            edges[max(line - 2, 0) : line + 2] = True
        for line in (0, w, size):
            edges[:, max(line - 2, 0) : line + 2] = True
        assert ok[~edges].all()
        assert ok.mean() > 0.8 and _colour_matches(image, mask, allowed).mean() > 0.6
        assert not np.all(image == np.array(MULTI, np.uint8), axis=-1).any()


def test_bezier_mix_is_exact_and_uses_two_classes() -> None:
    pool, allowed = _palette_pool()
    seen_two = 0
    for seed in range(10):
        image, mask = bezier_image(pool, np.random.default_rng(seed), PATCH, BezierParams())
        assert _colour_matches(image, mask, allowed).all()
        seen_two += len(np.unique(mask)) == 2
    assert seen_two >= 8


def test_bezier_blob_is_a_closed_filled_shape() -> None:
    for seed in range(5):
        m = bezier_mask(np.random.default_rng(seed), 64, BezierParams(points=5))
        assert 0.02 < m.mean() < 0.98
        labelled, n = ndimage.label(m)
        assert n >= 1 and np.bincount(labelled.ravel())[1:].max() > 0.8 * m.sum()


def test_synthesis_is_deterministic_by_seed_and_chunking() -> None:
    pool, _ = _palette_pool()
    for kind in ("mosaic", "bezier"):
        a = synthesise(kind, pool, range(4), seed=3)
        b = synthesise(kind, pool, range(2), seed=3)
        c = synthesise(kind, pool, range(2, 4), seed=3)
        other = synthesise(kind, pool, range(4), seed=4)
        assert np.array_equal(a.images, np.concatenate([b.images, c.images]))
        assert np.array_equal(a.masks, np.concatenate([b.masks, c.masks]))
        assert not np.array_equal(a.masks, other.masks)
        present = np.stack([np.isin(np.arange(3), np.unique(m)) for m in a.masks])
        assert np.array_equal(a.labels.astype(bool), present)


def test_bezier_needs_two_classes() -> None:
    img = np.full((PATCH, PATCH, 3), 200, np.uint8)
    pool = SingleLabelPool(np.array([[1, 0], [1, 0]], np.uint8), lambda i: img, PATCH)
    with pytest.raises(DatasetError, match="2 classes"):
        synthesise("bezier", pool, range(1), seed=0)


# ---------------------------------------------------------------------------------- filter


class StubClassifier(nn.Module):
    """P(real) = red channel of the (identity-normalised) image: logits (0, logit(p))."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = x[:, 0].mean(dim=(1, 2)).clamp(1e-6, 1 - 1e-6)
        return torch.stack([torch.zeros_like(p), torch.log(p / (1 - p))], dim=1)


def test_filter_keeps_and_drops_by_threshold() -> None:
    reds = np.array([10, 100, 127, 128, 200, 250])
    images = np.zeros((len(reds), 8, 8, 3), np.uint8)
    images[..., 0] = reds[:, None, None]
    identity = {"mean": [0.0] * 3, "std": [1.0] * 3}
    keep, p = filter_realistic(StubClassifier(), images, identity, threshold=0.5, batch_size=4)
    # float32 reds/255 (~1e-7 off); the threshold 0.5 is 0.002 from 127/255 and 128/255
    assert np.allclose(p, reds / 255.0, atol=1e-5)
    assert keep.tolist() == [False, False, False, True, True, True]
    keep, _ = filter_realistic(StubClassifier(), images, identity, threshold=0.9)
    assert keep.tolist() == [False] * 5 + [True]
    with pytest.raises(ConfigError, match="threshold"):
        filter_realistic(StubClassifier(), images, identity, threshold=1.0)


# ---------------------------------------------------------------------------------- model, losses


def _tiny_model(dropout: float = 0.5, classes: ClassList = CLASSES) -> HisynSegModel:
    cfg = yaml.safe_load(TINY.read_text())["model"]
    cfg.pop("method")
    cfg["head"]["dropout"] = dropout
    model = build_model("hisynseg", cfg, classes)
    model.predict_config["normalisation"] = dict(LPD_NORMALISATION)
    return model


def _normalise(images: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(LPD_NORMALISATION["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(LPD_NORMALISATION["std"]).view(1, 3, 1, 1)
    return (x - mean) / std


def test_dice_and_consistency_losses() -> None:
    mask = torch.tensor([[[0, 0, 1, 2]]])  # 2 = background, ignored
    perfect = torch.nn.functional.one_hot(mask.clamp(max=1), 2).permute(0, 3, 1, 2).float() * 50
    assert dice_loss(perfect, mask, ignore_index=2) < 1e-4
    assert dice_loss(-perfect, mask, ignore_index=2) > 0.9
    assert dice_loss(-perfect, torch.full_like(mask, 2), ignore_index=2) == 0  # all ignored
    cam = torch.randn(2, 3, 4, 4)
    seg = torch.nn.functional.interpolate(cam, size=(4, 4))
    assert consistency_loss(seg, cam) < 1e-6
    assert consistency_loss(torch.randn(2, 3, 16, 16), cam) > 0


def test_a_few_iterations_lower_both_losses() -> None:
    torch.manual_seed(0)
    pool, _ = _palette_pool()
    syn = synthesise("mosaic", pool, range(4), seed=0)
    x_syn, y_syn = _normalise(syn.images), torch.from_numpy(syn.labels).float()
    m_syn = torch.from_numpy(syn.masks).long()
    real = synthesise("bezier", pool, range(4), seed=1)  # stands in for real multi-label patches
    x_real, y_real = _normalise(real.images), torch.from_numpy(real.labels).float()
    model = _tiny_model(dropout=0.0, classes=ClassList.from_names(["A", "B", "C"]))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)

    def losses() -> tuple[torch.Tensor, torch.Tensor]:
        ls = synthetic_losses(model(x_syn), y_syn, m_syn, 1.0, 1.0, ignore_index=3)["loss"]
        lr = real_losses(model(x_real), y_real, 1.0, 1.0)["loss"]
        return ls, lr

    with torch.no_grad():
        before = [float(v) for v in losses()]
    for _ in range(12):
        ls, lr = losses()
        opt.zero_grad()
        (ls + lr).backward()
        opt.step()
    with torch.no_grad():
        after = [float(v) for v in losses()]
    assert after[0] < before[0] and after[1] < before[1], (before, after)


def test_predict_contract_and_white_is_background() -> None:
    model = _tiny_model()
    images = np.zeros((2, PATCH, PATCH, 3), np.uint8)
    images[:, :, :16] = 255  # left half white glass
    images[:, :, 16:] = (200, 80, 150)  # right half stained tissue
    x = _normalise(images)
    probs = model.predict(x)
    assert probs.shape == (2, 3, PATCH, PATCH)
    assert torch.allclose(probs.sum(1), torch.ones(2, PATCH, PATCH), atol=1e-5)
    labels = probs.argmax(1)
    assert (labels[:, :, :12] == 2).all() and (labels[:, :, 20:] < 2).all()
    given = model.predict(x, image_labels=torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    assert given[0, 1].max() == 0 and given[1, 0].max() == 0
    assert model.predict(x, tta=True).shape == probs.shape
    model.predict_config.pop("normalisation")
    with pytest.raises(ConfigError, match="normalisation"):
        model.predict(x)


def test_configs_parse_and_reject_unknown_keys() -> None:
    for name in ("hisynseg.yaml", "hisynseg_cpu_small.yaml", "hisynseg_tiny_test.yaml"):
        cfg = training_config_from_mapping(yaml.safe_load((CONFIGS / name).read_text()))
        assert cfg.method == "hisynseg"
    paper = training_config_from_mapping(yaml.safe_load((CONFIGS / "hisynseg.yaml").read_text()))
    assert paper.hisynseg is not None
    assert paper.train.lr == 1e-4 and paper.train.weight_decay == 0.05
    assert paper.train.batch_size == 32 and paper.train.epochs == 25
    assert paper.hisynseg.n_mosaic == paper.hisynseg.n_bezier == 7200
    raw = yaml.safe_load(TINY.read_text())
    raw["hisynseg"]["filter"]["epochz"] = 1
    with pytest.raises(ConfigError, match=r"hisynseg\.filter\.epochz"):
        training_config_from_mapping(raw)
    raw = yaml.safe_load(TINY.read_text())
    raw["model"]["decoder"]["width"] = 8
    with pytest.raises(ConfigError, match=r"model\.decoder\.width"):
        training_config_from_mapping(raw)
    raw["model"].pop("method")
    with pytest.raises(ConfigError, match=r"model\.decoder\.width"):
        build_model("hisynseg", raw["model"], CLASSES)


# ---------------------------------------------------------------------------------- trainer


STORE_BACKGROUND_RGB = (235, 170, 205)  # the shared ``store`` fixture (conftest.py)


def _tissue(rng: np.random.Generator, cls: int) -> np.ndarray:
    return two_class_patch(rng, cls, STORE_BACKGROUND_RGB)


@pytest.fixture(scope="module")
def trained(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("hisynseg") / "model"
    result = CliRunner().invoke(
        app,
        [
            "train",
            "--model-config",
            str(TINY),
            "--patches",
            str(store),
            "--out",
            str(out),
            "--method",
            "hisynseg",
            "--workers",
            "0",
        ],
    )
    assert result.exit_code == 0, result.output
    return out


def test_train_stage_writes_model_logs_and_synthetic_store(trained: Path) -> None:
    for name in ("model.pt", "last.pt", "train_log.csv", "curves.png", "run.json"):
        assert (trained / name).stat().st_size > 0
    with open(trained / "train_log.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["iteration"]) for r in rows] == [2, 4]
    assert all(float(r["synthetic"]) > 0 and float(r["real"]) > 0 for r in rows)
    assert rows[-1]["val_mIoU"] != ""
    synthetic = PatchDataset(trained / "synthetic.zarr", LPD_NORMALISATION)
    assert 0 < len(synthetic) <= 16 and synthetic.has_masks
    model, contract = load_model(trained / "model.pt")
    assert contract["method"] == "hisynseg" and contract["patch_px"] == PATCH
    assert contract["training"]["synthesis"]["filter"] is True
    item = synthetic[0]
    probs = model.predict(item["image"][None])
    assert probs.shape == (1, 3, PATCH, PATCH)
    assert torch.allclose(probs.sum(1), torch.ones(1, PATCH, PATCH), atol=1e-5)


def test_a_filter_that_rejects_everything_falls_back_to_unfiltered_images(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A weak discriminator on little data may call every candidate fake: training goes on with
    unfiltered synthetic images (said in the log and the checkpoint), never stops."""
    import wsi_lpd.train.hisynseg.stores as stores

    def reject_all(disc, images, *args, **kwargs):
        return np.zeros(len(images), bool), np.full(len(images), 0.1, np.float32)

    monkeypatch.setattr(stores, "filter_realistic", reject_all)
    out = tmp_path / "model"
    args = ["train", "--model-config", str(TINY), "--patches", str(store), "--out", str(out)]
    result = CliRunner().invoke(app, [*args, "--method", "hisynseg", "--workers", "0"])
    assert result.exit_code == 0, result.output
    synthesis = load_model(out / "model.pt")[1]["training"]["synthesis"]
    kinds = [k for k in ("mosaic", "bezier") if k in synthesis]
    assert kinds and all(synthesis[k]["unfiltered"] and synthesis[k]["kept"] > 0 for k in kinds)
    assert len(PatchDataset(out / "synthetic.zarr", LPD_NORMALISATION)) > 0


def test_checkpoint_runs_through_infer(trained: Path, tmp_path: Path) -> None:
    from wsi_lpd.formats.mosaic import open_mosaic
    from wsi_lpd.infer.inference import predict_slide
    from wsi_lpd.slide.reader import open_slide

    rng = np.random.default_rng(1)
    rgb = np.full((96, 128, 3), 255, np.uint8)  # white glass on the right
    for y in range(0, 96, PATCH):
        for x in range(0, 64, PATCH):
            rgb[y : y + PATCH, x : x + PATCH] = _tissue(rng, (x // PATCH) % 2)
    res = 1e4 / 1.0
    path = tmp_path / "tiny.tiff"
    tifffile.imwrite(
        path, rgb, photometric="rgb", resolution=(res, res), resolutionunit="CENTIMETER"
    )
    model, contract = load_model(trained / "model.pt")
    result = predict_slide(
        open_slide(path), model, contract, tmp_path / "tiny.ome.zarr", progress=False
    )
    mosaic = open_mosaic(result.mosaic_path)
    assert mosaic.probs.shape == (3, 96, 128)
    labels = mosaic.labels[:]
    assert (labels[:, 100:] == 2).all()
    assert (labels[:, :56] < 2).mean() > 0.9


def test_round2_and_resume(store: Path, tmp_path: Path) -> None:
    raw = yaml.safe_load(TINY.read_text())
    raw["hisynseg"].update(round2=True, n_mosaic=4, n_bezier=4)
    raw["hisynseg"]["filter"]["enabled"] = False
    raw["train"].update(max_iters=2)
    cfg = training_config_from_mapping(raw)
    data = PatchDataset(store, LPD_NORMALISATION)
    out = tmp_path / "m"
    kwargs = dict(mpp=1.0, patch_px=PATCH, normalisation=LPD_NORMALISATION, out_dir=out)
    result = train(cfg, data, None, CLASSES, **kwargs)
    assert result.iterations == 4
    assert [(r["round"], r["iteration"]) for r in result.history] == [(1, 2), (2, 4)]
    pseudo = PatchDataset(out / "round2.zarr", LPD_NORMALISATION)
    assert len(pseudo) == len(data)
    single = np.flatnonzero(data.labels.sum(1) == 1)[0]
    mask = pseudo[int(single)]["mask"].numpy()
    cls = int(data.labels[single].argmax())
    assert set(np.unique(mask)) <= {cls, 2}  # true labels mask the absent class
    assert math.isfinite(result.history[-1]["dice_real"])
    resumed = train(cfg, data, None, CLASSES, resume=True, **kwargs)
    assert resumed.iterations == 4 and len(resumed.history) == 2
