"""Whole-slide inference: blending, exact reconstruction, geometry, memory, failure, checks."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import shapely
import tifffile
import torch
from shapely.geometry import Polygon, box
from torch import nn

from wsi_lpd.classes import BCSS_CLASSES, ClassList
from wsi_lpd.errors import CheckpointError, ConfigError
from wsi_lpd.formats.mosaic import open_mosaic
from wsi_lpd.infer.blending import BandAccumulator, window_weights
from wsi_lpd.infer.inference import (
    WindowBatchDataset,
    plan_windows,
    predict_slide,
    rasterize_band,
    window_starts,
)
from wsi_lpd.infer.options import InferSection
from wsi_lpd.settings import parse_section
from wsi_lpd.slide.geometry import rasterize
from wsi_lpd.slide.reader import open_slide

IDENTITY_NORM = {"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}
# uint8 values chosen away from .5 so rounding is unambiguous
# 255·CONST = 30.2, 51.0, 84.3, 12.9, 76.6: every value ≥ 0.1 from a uint8 rounding boundary, so
# the blended mosaic (weighted means of equal values, float32 error ~1e-5 of a level) quantises to
# the same bytes on any CPU, thread count or window order: the exact comparisons below hold.
CONST = torch.tensor([30.2, 51.0, 84.3, 12.9, 76.6]) / 255.0
CONST = CONST / CONST.sum()


def write_tiff(path: Path, rgb: np.ndarray, mpp: float) -> Path:
    """A tiled, lossless single-level TIFF with resolution tags."""
    res = 1e4 / mpp
    tifffile.imwrite(
        path,
        rgb,
        tile=(256, 256),
        compression="zlib",
        photometric="rgb",
        resolution=(res, res),
        resolutionunit="CENTIMETER",
    )
    return path


def contract(mpp: float, patch_px: int, classes: ClassList = BCSS_CLASSES) -> dict:
    return {
        "classes": classes.to_dict(),
        "mpp": mpp,
        "patch_px": patch_px,
        "normalisation": IDENTITY_NORM,
    }


class ConstantModel(nn.Module):
    """Predicts the same probabilities everywhere, at 1/``pool`` of the input size."""

    def __init__(self, probs: torch.Tensor, pool: int = 1) -> None:
        super().__init__()
        self.register_buffer("probs", probs.float())
        self.pool = pool

    def predict(
        self, images: torch.Tensor, image_labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        b, _, h, w = images.shape
        return self.probs.view(1, -1, 1, 1).expand(b, -1, h // self.pool, w // self.pool).clone()


class RedModel(nn.Module):
    """Class-0 probability = red channel (images in [0, 1]); the rest goes to background."""

    def predict(
        self, images: torch.Tensor, image_labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        red = images[:, :1]
        zeros = torch.zeros_like(red).expand(-1, 3, -1, -1)
        return torch.cat([red, zeros, 1 - red], dim=1)


class ColourModel(nn.Module):
    """Red pixels → class 0, blue → class 1, other → background; output average-pooled by 2."""

    def predict(
        self, images: torch.Tensor, image_labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        r, g, b = images[:, 0], images[:, 1], images[:, 2]
        red = ((r > 0.6) & (g < 0.3) & (b < 0.3)).float()
        blue = ((b > 0.6) & (r < 0.3) & (g < 0.3)).float()
        zero = torch.zeros_like(red)
        probs = torch.stack([red, blue, zero, zero, 1 - red - blue], dim=1)
        return nn.functional.avg_pool2d(probs, 2)


class FailingModel(ConstantModel):
    def __init__(self, fail_at_call: int) -> None:
        super().__init__(CONST)
        self.calls = 0
        self.fail_at_call = fail_at_call

    def predict(
        self, images: torch.Tensor, image_labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.fail_at_call:
            raise RuntimeError("injected failure")
        return super().predict(images)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """The CI box has 2 shared cores: several intra-op threads only thrash on tiny tensors."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def plain_slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1000 × 1201 px at 0.5 µm/px, random texture (content irrelevant to constant models)."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (1201, 1000, 3), dtype=np.uint8)
    return write_tiff(tmp_path_factory.mktemp("s") / "plain.tiff", rgb, 0.5)


@pytest.fixture(scope="module")
def position_slide(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """Red channel encodes the level-0 position: R = (7x + 3y) mod 251."""
    y, x = np.mgrid[0:700, 0:900]
    red = ((7 * x + 3 * y) % 251).astype(np.uint8)
    rgb = np.stack([red, (x % 256).astype(np.uint8), (y % 256).astype(np.uint8)], axis=-1)
    return write_tiff(tmp_path_factory.mktemp("s") / "position.tiff", rgb, 0.5), red


def expected_const() -> np.ndarray:
    return np.round(CONST.double().numpy() * 255).astype(np.uint8)


@pytest.mark.parametrize("model_mpp", [1.0, 0.75])
def test_strip_reads_equal_window_reads(plain_slide: Path, model_mpp: float) -> None:
    """Windows cut from shared row strips hold the pixels of one read per window (rows, gaps,
    a batch split mid-row, and a non-integer scale where strips must not be shared)."""
    slide = open_slide(plain_slide)
    s = model_mpp / slide.mpp
    xs = np.round(np.array([0, 24, 48, 72, 200, 224, 0, 24, 48]) * s).astype(np.int64)
    ys = np.round(np.array([0, 0, 0, 0, 0, 0, 40, 40, 40]) * s).astype(np.int64)
    locations = np.stack([xs, ys], 1)
    ds = WindowBatchDataset(slide, locations, 32, model_mpp, batch_size=4)
    got = [(img, int(i)) for b in range(len(ds)) for img, i in zip(*ds[b], strict=True)]
    assert [i for _, i in got] == list(range(len(locations)))
    for img, i in got:
        ref = slide.read_region(tuple(int(v) for v in locations[i]), (32, 32), model_mpp)
        np.testing.assert_array_equal(img.numpy(), ref.transpose(2, 0, 1))


def test_window_starts_cover_and_end_at_edge() -> None:
    s = window_starts(1000, 64, 48.0)
    assert s[0] == 0 and s[-1] == 1000 - 64
    assert np.all(np.diff(s) <= 48) and np.all(np.diff(s) > 0)
    assert list(window_starts(50, 64, 48.0)) == [0]
    assert list(window_starts(64, 64, 48.0)) == [0]


def test_window_weights_floor_and_peak() -> None:
    for blend in ("gaussian", "cosine"):
        w = window_weights(64, blend)
        assert w.shape == (64, 64) and w.min() >= 1e-3 and w.max() == pytest.approx(1.0, abs=1e-3)
        assert np.allclose(w, w.T) and np.allclose(w, w[::-1, ::-1])
    with pytest.raises(ConfigError, match=r"infer\.blend: "):  # the typed options refuse it
        parse_section(InferSection, {"blend": "box"}, None, "infer")


def test_band_accumulator_divides_by_weight_sum() -> None:
    acc = BandAccumulator(2, 600, 40, 512)
    p = torch.tensor([0.25, 0.75]).view(2, 1, 1).expand(2, 100, 40)
    acc.add(p, torch.rand(100, 40) + 0.01, 450, 0)
    acc.add(p, torch.rand(100, 40) + 0.01, 480, 0)
    probs, labels = acc.finalise(0)
    assert (probs[:, 450:, :] == np.array([64, 191]).reshape(2, 1, 1)).all()
    assert (probs[1, :450] == 255).all() and (labels[:450] == 1).all()
    probs1, _ = acc.finalise(1)
    assert probs1.shape == (2, 88, 40)
    assert (probs1[0, :68] == 64).all() and (probs1[1, 68:] == 255).all()  # window ends at 580


@pytest.mark.parametrize("blend", ["gaussian", "cosine"])
def test_constant_model_gives_constant_mosaic(
    plain_slide: Path, tmp_path: Path, blend: str
) -> None:
    slide = open_slide(plain_slide)
    res = predict_slide(
        slide,
        ConstantModel(CONST),
        contract(0.5, 64),
        tmp_path / "p.ome.zarr",
        InferSection(blend=blend, batch_size=5),
        progress=False,
    )
    m = open_mosaic(res.mosaic_path)
    assert m.probs.shape == (5, 1201, 1000) and res.bands == 3
    probs = m.probs[:]
    assert (probs == expected_const().reshape(5, 1, 1)).all()
    assert (m.labels[:] == int(CONST.argmax())).all()


def test_tissue_masks_outside_to_background(plain_slide: Path, tmp_path: Path) -> None:
    slide = open_slide(plain_slide)
    tissue = Polygon([(100, 100), (800, 150), (700, 1100), (150, 900)]).difference(
        box(300, 400, 500, 600)
    )
    res = predict_slide(
        slide,
        ConstantModel(CONST, pool=4),
        contract(1.0, 64),
        tmp_path / "t.ome.zarr",
        InferSection(output_mpp=2.0),
        tissue=tissue,
        progress=False,
    )
    m = open_mosaic(res.mosaic_path)
    assert m.probs.shape == (5, 301, 250) and m.level0_per_px == 4.0
    assert res.windows < res.windows_total
    inside = rasterize(tissue, (301, 250), 4.0)
    probs, labels = m.probs[:], m.labels[:]
    assert (probs[:, inside] == expected_const()[:, None]).all()
    assert (probs[4, ~inside] == 255).all() and (probs[:4, ~inside] == 0).all()
    assert (labels[~inside] == 4).all() and (labels[inside] == int(CONST.argmax())).all()
    assert not inside[125, 100] and inside[50, 100]  # the hole and the body


def test_position_model_is_reconstructed_exactly(
    position_slide: tuple[Path, np.ndarray], tmp_path: Path
) -> None:
    path, red = position_slide
    res = predict_slide(
        open_slide(path),
        RedModel(),
        contract(0.5, 48),
        tmp_path / "r.ome.zarr",
        InferSection(overlap=0.5, batch_size=7, workers=2),
        progress=False,
    )
    m = open_mosaic(res.mosaic_path)
    assert res.output_mpp == 0.5 and res.window_px == 48
    # exact by construction: every window covering a pixel predicts the same k/255, their
    # weighted mean is k/255 within float32 rounding (~1e-5 of a level), which rounds back to k
    # whatever the workers' order
    assert np.array_equal(m.probs[0], red)
    assert np.array_equal(m.probs[4], 255 - red)


def test_labelled_region_lands_at_level0_location(tmp_path: Path) -> None:
    rgb = np.full((1200, 1600, 3), 240, np.uint8)
    rgb[300:560, 400:720] = (220, 20, 30)  # class 0, level-0 x 400-720, y 300-560
    rgb[700:1000, 1000:1304] = (20, 30, 220)  # class 1
    slide = open_slide(write_tiff(tmp_path / "rect.tiff", rgb, 0.25))
    res = predict_slide(
        slide,
        ColourModel(),
        contract(1.0, 48),
        tmp_path / "g.ome.zarr",
        InferSection(batch_size=8),
        progress=False,
    )
    m = open_mosaic(res.mosaic_path)
    s = m.level0_per_px
    assert res.output_mpp == 2.0 and s == 8.0 and m.labels.shape == (150, 200)
    labels = m.labels[:]
    for cls, (x0, x1, y0, y1) in {0: (400, 720, 300, 560), 1: (1000, 1304, 700, 1000)}.items():
        ys, xs = np.nonzero(labels == cls)
        # pixel j covers level-0 [j·s, (j+1)·s): extent matches within one mosaic pixel
        assert abs(xs.min() * s - x0) <= s and abs((xs.max() + 1) * s - x1) <= s
        assert abs(ys.min() * s - y0) <= s and abs((ys.max() + 1) * s - y1) <= s
        cy, cx = ys.mean() + 0.5, xs.mean() + 0.5
        assert abs(cx * s - (x0 + x1) / 2) < s / 2 and abs(cy * s - (y0 + y1) / 2) < s / 2
    assert (labels[:30] == 4).all()


class PaletteModel(nn.Module):
    """One-hot of the nearest palette colour (``palette`` (C+1, 3) in [0, 1])."""

    def __init__(self, palette: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("palette", palette.float())

    def predict(
        self, images: torch.Tensor, image_labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        d = ((images[:, None] - self.palette[None, :, :, None, None]) ** 2).sum(2)
        return nn.functional.one_hot(d.argmin(1), len(self.palette)).permute(0, 3, 1, 2).float()


def test_synthetic_slide_classes_land_on_ground_truth(tmp_path: Path) -> None:
    """Flat-colour synthetic slide: the mosaic at the mask's mpp matches the true label mask."""
    from wsi_lpd.formats.labelmask import read_label_mask
    from wsi_lpd.synthetic.slides import write_synthetic_slide

    synth = write_synthetic_slide(
        tmp_path / "syn.tiff", width_px=1536, height_px=1536, mpp=0.5, seed=3, texture=False
    )
    truth = read_label_mask(synth.mask_path)
    slide = open_slide(synth.slide_path)
    thumb = slide.thumbnail(truth.mpp).reshape(-1, 3)
    labels_true = truth.mask[: thumb.shape[0] // truth.mask.shape[1]].reshape(-1)
    palette = torch.stack(
        [
            torch.from_numpy(np.median(thumb[labels_true == c], axis=0) / 255.0)
            if (labels_true == c).any()
            else torch.full((3,), 2.0)
            for c in range(5)
        ]
    )
    res = predict_slide(
        slide,
        PaletteModel(palette),
        contract(2.0, 48),
        tmp_path / "syn.ome.zarr",
        InferSection(output_mpp=truth.mpp),
        progress=False,
    )
    m = open_mosaic(res.mosaic_path)
    assert m.labels.shape == truth.mask.shape and m.level0_per_px == truth.mpp / 0.5
    agree = (m.labels[:] == truth.mask).mean()
    assert agree > 0.98, agree
    assert len(np.unique(truth.mask)) >= 3


def test_failure_leaves_nothing_and_rerun_completes(plain_slide: Path, tmp_path: Path) -> None:
    out = tmp_path / "mosaics" / "f.ome.zarr"
    slide = open_slide(plain_slide)
    with pytest.raises(RuntimeError, match="injected"):
        predict_slide(
            slide,
            FailingModel(fail_at_call=40),
            contract(0.5, 64),
            out,
            InferSection(batch_size=8),
            progress=False,
        )
    assert list(out.parent.iterdir()) == []
    res = predict_slide(slide, ConstantModel(CONST), contract(0.5, 64), out, progress=False)
    assert res.mosaic_path == out and (open_mosaic(out).probs[:, ::97, ::97] > 0).all()
    assert [p.name for p in out.parent.iterdir()] == ["f.ome.zarr"]


def test_contract_checks(plain_slide: Path, tmp_path: Path) -> None:
    slide = open_slide(plain_slide)
    out = tmp_path / "x.ome.zarr"
    other = ClassList.from_names(["A", "B"])
    with pytest.raises(CheckpointError, match="differ"):
        predict_slide(
            slide,
            ConstantModel(CONST),
            contract(0.5, 64),
            out,
            expected_classes=other,
            progress=False,
        )
    with pytest.raises(CheckpointError, match="finer than the slide"):
        predict_slide(slide, ConstantModel(CONST), contract(0.25, 64), out, progress=False)
    with pytest.raises(CheckpointError, match="predict returned"):
        predict_slide(slide, ConstantModel(CONST[:3]), contract(0.5, 64), out, progress=False)
    with pytest.raises(ConfigError, match=r"infer\.overlap"):  # the options model refuses it
        parse_section(InferSection, {"overlap": 1.0}, section="infer")
    assert not out.exists()


def test_rasterize_band_matches_whole_raster() -> None:
    roi = Polygon([(10, 5), (900, 40), (700, 1990), (30, 1500)]).difference(box(200, 600, 400, 700))
    whole = rasterize(roi, (520, 240), 4.0)
    bands = [rasterize_band(roi, y0, h, 240, 4.0) for y0, h in [(0, 128), (128, 128), (256, 264)]]
    stitched = np.concatenate(bands)
    assert stitched.sum() > 10_000
    # PIL may round a pixel whose centre sits on an edge either way: allow only those
    ys, xs = np.nonzero(stitched != whole)
    assert len(ys) < 40
    centres = shapely.points((xs + 0.5) * 4.0, (ys + 0.5) * 4.0)
    assert (shapely.distance(roi.boundary, centres) < 4.0).all()
    assert not rasterize_band(roi, 600, 10, 240, 4.0).any()


def test_plan_windows_keeps_tissue_windows_only() -> None:
    origins, total = plan_windows(box(0, 0, 10, 10), (400, 400), 64, 0.25, 2.0)
    assert total == 8 * 8 and origins.tolist() == [[0, 0]]
    origins, _ = plan_windows(Polygon(), (400, 400), 64, 0.25, 2.0)
    assert len(origins) == 0


RSS_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import psutil, torch
    from wsi_lpd.classes import ClassList
    from wsi_lpd.infer.inference import predict_slide
    from wsi_lpd.slide.reader import open_slide

    class Constant(torch.nn.Module):
        def predict(self, images, image_labels=None):
            b, _, h, w = images.shape
            return torch.full((b, 16, h, w), 1 / 16)

    torch.set_num_threads(1)
    classes = ClassList.from_names([f"C{i}" for i in range(15)])
    contract = {"classes": classes.to_dict(), "mpp": 0.5, "patch_px": 64}
    runs = [{"peak": psutil.Process().memory_info().rss / 2**20, "windows": 0}]
    for slide, out in zip(sys.argv[1::2], sys.argv[2::2]):
        res = predict_slide(open_slide(slide), Constant(), contract, out, progress=False)
        runs.append({"peak": res.peak_rss_mib, "windows": res.windows})
    print(json.dumps(runs))
    """
)


def test_peak_rss_bounded_by_bands(tmp_path: Path) -> None:
    """A slide 4× the area (4× taller), run after the small one in the same process, must not
    raise the peak RSS by 30 %. Nor may the memory inference adds on top of the imports grow
    much: measured +145 vs +172 MiB (zarr thread arenas plateau); a whole-slide float
    accumulator would add ≥ 210 MiB more at 8192 rows."""
    args = []
    for height in (2048, 8192):
        rgb = np.full((height, 512, 3), 200, np.uint8)
        args += [
            str(write_tiff(tmp_path / f"s{height}.tiff", rgb, 0.5)),
            str(tmp_path / f"m{height}.ome.zarr"),
        ]
    proc = subprocess.run(
        [sys.executable, "-c", RSS_SCRIPT, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    imports, small, large = json.loads(proc.stdout.strip().splitlines()[-1])
    # ratios of peak RSS in one process, not absolute MiB: allocator and thread-pool overheads
    # that differ between machines are in both runs (the child runs one torch thread)
    assert large["windows"] > 3.5 * small["windows"]
    assert large["peak"] < 1.3 * small["peak"], (imports, small, large)
    added_small, added_large = small["peak"] - imports["peak"], large["peak"] - imports["peak"]
    assert added_large < 1.4 * added_small, (imports, small, large)


def test_jpeg_tiles_decoded_on_the_device_match_the_slide_reader(tmp_path: Path) -> None:
    """``decode="gpu"`` on the CPU device: JPEG tile bytes through torchvision's decoder give the
    same mosaic as the slide reader, within JPEG/resampling tolerance; workers read the bytes."""
    from wsi_lpd.synthetic.slides import write_synthetic_slide

    synth = write_synthetic_slide(
        tmp_path / "j.svs", width_px=768, height_px=512, seed=1, tile_px=256, texture=False
    )
    slide = open_slide(synth.slide_path)
    common = dict(output_mpp=2.0, batch_size=8)
    cpu = predict_slide(
        slide,
        RedModel(),
        contract(1.0, 64),
        tmp_path / "c.ome.zarr",
        InferSection(decode="cpu", **common),
        progress=False,
    )
    gpu = predict_slide(
        slide,
        RedModel(),
        contract(1.0, 64),
        tmp_path / "g.ome.zarr",
        InferSection(decode="gpu", workers=1, **common),
        progress=False,
    )
    assert cpu.decode == "cpu" and gpu.decode == "gpu" and gpu.windows == cpu.windows
    # two JPEG decoders (IDCT and chroma upsampling rounding differ by a few levels per pixel,
    # more on sharp edges): a loose bound that any conforming decoder pair meets, while reading
    # the wrong tile or offset would be off by tens of levels on average
    a = open_mosaic(cpu.mosaic_path).probs[0].astype(int)
    b = open_mosaic(gpu.mosaic_path).probs[0].astype(int)
    assert np.abs(a - b).mean() < 2.0 and np.abs(a - b).max() <= 16


def test_decode_auto_on_cpu_and_plain_tiff_use_the_reader(
    plain_slide: Path, tmp_path: Path
) -> None:
    slide = open_slide(plain_slide)
    res = predict_slide(
        slide,
        ConstantModel(CONST),
        contract(1.0, 64),
        tmp_path / "a.ome.zarr",
        InferSection(decode="gpu", output_mpp=4.0),
        progress=False,
    )
    assert res.decode == "cpu"  # zlib/uncompressed TIFF: no JPEG tiles
    assert open_mosaic(res.mosaic_path).attrs["slide_path"] == str(plain_slide.resolve())
    with pytest.raises(ConfigError, match=r"infer\.decode"):  # the options model refuses it
        parse_section(InferSection, {"decode": "nvjpeg"}, section="infer")
