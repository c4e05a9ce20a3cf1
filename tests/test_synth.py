"""Synthetic slides: label masks, pyramid, determinism, ground truth, textures, memory, CLI."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import openslide
import pytest
import tifffile
from scipy import ndimage
from skimage.draw import polygon as draw_polygon
from typer.testing import CliRunner

from wsi_lpd.classes import BCSS_CLASSES, ClassList
from wsi_lpd.cli.app import app
from wsi_lpd.errors import AnnotationError, ConfigError
from wsi_lpd.formats.geojson import read_annotations
from wsi_lpd.formats.labelmask import read_label_mask, write_label_mask_into
from wsi_lpd.synthetic.slides import SlideLayout, write_synthetic_slide

SIZE_PX = 2048
MPP = 0.5
MASK_MPP = 8.0
SCALE = int(MASK_MPP / MPP)  # level-0 px per mask px


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("synth") / "s.tiff"
    return write_synthetic_slide(out, width_px=SIZE_PX, height_px=SIZE_PX, mpp=MPP, seed=3)


@pytest.fixture(scope="module")
def level0(slide) -> np.ndarray:
    return tifffile.imread(slide.slide_path, key=0)


@pytest.fixture(scope="module")
def truth(slide) -> np.ndarray:
    return read_label_mask(slide.mask_path).mask


def test_label_mask_round_trip_and_errors(tmp_path: Path) -> None:
    classes = ClassList.from_names(["A", "B"])
    mask = np.array([[0, 1, 2], [2, 1, 0]], dtype=np.uint8)
    write_label_mask_into(tmp_path / "m.tiff", mask, 4.0, classes)
    back = read_label_mask(tmp_path / "m.tiff")
    assert np.array_equal(back.mask, mask) and back.mpp == 4.0 and back.classes == classes
    with tifffile.TiffFile(tmp_path / "m.tiff") as tif:
        page = tif.pages[0]
        assert page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
        assert page.tags["ResolutionUnit"].value == tifffile.RESUNIT.CENTIMETER
        assert page.tags["XResolution"].value[0] / page.tags["XResolution"].value[1] == 2500
    with pytest.raises(ValueError, match="3 classes"):
        write_label_mask_into(tmp_path / "bad.tiff", mask + 1, 4.0, classes)
    with pytest.raises(AnnotationError, match=r"missing\.tiff: label mask not found"):
        read_label_mask(tmp_path / "missing.tiff")
    tifffile.imwrite(tmp_path / "plain.tiff", mask, description="hello")
    with pytest.raises(AnnotationError, match=r"plain\.tiff: not a wsi-lpd label mask"):
        read_label_mask(tmp_path / "plain.tiff")
    (tmp_path / "junk.tiff").write_bytes(b"not a tiff")
    with pytest.raises(AnnotationError, match=r"junk\.tiff"):
        read_label_mask(tmp_path / "junk.tiff")


def test_openslide_sees_aperio_pyramid(slide) -> None:
    with openslide.OpenSlide(str(slide.slide_path)) as osr:
        assert osr.properties["openslide.vendor"] == "aperio"
        assert float(osr.properties["openslide.mpp-x"]) == pytest.approx(MPP)
        assert float(osr.properties["openslide.objective-power"]) == 20
        assert osr.level_dimensions == ((SIZE_PX, SIZE_PX), (SIZE_PX // 4, SIZE_PX // 4))
        corner = np.asarray(osr.read_region((0, 0), 1, (32, 32)).convert("RGB"))
        assert corner.min() > 225  # reduced level decodes and is white off tissue
    with tifffile.TiffFile(slide.slide_path) as tif:
        assert [p.is_tiled for p in tif.pages] == [True, True]
        assert tif.pages[1].subfiletype == 1
        assert tif.pages[0].compression == tifffile.COMPRESSION.JPEG


def test_plain_tiff_without_aperio_header(tmp_path: Path) -> None:
    s = write_synthetic_slide(
        tmp_path / "p.tiff", width_px=1200, height_px=700, mpp=0.25, aperio=False, texture=False
    )
    with openslide.OpenSlide(str(s.slide_path)) as osr:
        assert osr.properties["openslide.vendor"] == "generic-tiff"
        assert float(osr.properties["openslide.mpp-x"]) == pytest.approx(0.25)
        assert osr.level_dimensions == ((1200, 700), (300, 175))
    assert read_label_mask(s.mask_path).mask.shape == (-(-700 // 32), -(-1200 // 32))
    with pytest.raises(ConfigError, match=r"q\.tiff: tile_px must be a multiple of 16"):
        write_synthetic_slide(tmp_path / "q.tiff", width_px=64, height_px=64, tile_px=100)
    with pytest.raises(ConfigError, match="mask_mpp"):
        write_synthetic_slide(tmp_path / "q.tiff", width_px=64, height_px=64, mask_mpp=0.1)
    assert not (tmp_path / "q.tiff").exists()


def test_same_seed_same_pixels_other_seed_differs(tmp_path: Path) -> None:
    a = write_synthetic_slide(tmp_path / "a.tiff", width_px=768, height_px=640, seed=5)
    b = write_synthetic_slide(tmp_path / "b.tiff", width_px=768, height_px=640, seed=5)
    c = write_synthetic_slide(tmp_path / "c.tiff", width_px=768, height_px=640, seed=6)
    pa, pb, pc = (tifffile.imread(s.slide_path, key=0) for s in (a, b, c))
    # same seed, same code, same process: bit-identical by construction (not compared across runs)
    assert pa.shape == (640, 768, 3) and np.array_equal(pa, pb)
    assert np.array_equal(read_label_mask(a.mask_path).mask, read_label_mask(b.mask_path).mask)
    assert np.abs(pa.astype(int) - pc.astype(int)).mean() > 5
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("a.")) == [
        "a.annotations.geojson",
        "a.mask.tiff",
        "a.tiff",
    ]
    assert not [p for p in tmp_path.iterdir() if "partial" in p.name]


def test_tiles_join_without_seams(slide) -> None:
    from wsi_lpd.synthetic.slides import SlideRenderer

    renderer = SlideRenderer(SlideLayout(SIZE_PX, SIZE_PX, MPP, 3, 4), BCSS_CLASSES)
    whole = renderer.render(900, 900, 200, 160)
    left = renderer.render(900, 900, 90, 160)
    right_bottom = renderer.render(990, 1000, 110, 60)
    # exact by construction: a pixel is a function of its level-0 coordinates evaluated by the
    # same elementwise float32 operations in every render (B-spline rows outside a block's window
    # carry weight exactly 0), in one process: the bytes cannot depend on the block bounds
    assert np.array_equal(whole[:, :90], left)
    assert np.array_equal(whole[100:, 90:], right_bottom)


def test_background_white_and_tissue_stained(level0, truth) -> None:
    assert level0[:64, :64].min() > 225  # the border is always background
    bg = ndimage.binary_erosion(truth == 4, iterations=2)
    fg = ndimage.binary_erosion(truth < 4, iterations=2)
    up = np.ones((SCALE, SCALE), dtype=bool)
    bg_px = level0[np.kron(bg, up)[:SIZE_PX, :SIZE_PX]]
    fg_px = level0[np.kron(fg, up)[:SIZE_PX, :SIZE_PX]]
    assert bg_px.mean() > 240 and np.percentile(bg_px.mean(axis=1), 1) > 230
    assert fg_px.mean() < 180
    assert np.mean(fg_px.mean(axis=1) > 230) < 0.05


def test_label_mask_matches_region_map(slide, truth) -> None:
    lm = read_label_mask(slide.mask_path)
    assert lm.mpp == MASK_MPP and lm.classes == BCSS_CLASSES
    assert truth.shape == (SIZE_PX // SCALE, SIZE_PX // SCALE)
    layout = SlideLayout(SIZE_PX, SIZE_PX, MPP, 3, 4)
    rng = np.random.default_rng(0)
    i, j = rng.integers(0, truth.shape[0], 400), rng.integers(0, truth.shape[1], 400)
    for a, b in zip(i, j, strict=True):
        expect = layout.labels(np.array([(a + 0.5) * MASK_MPP]), np.array([(b + 0.5) * MASK_MPP]))
        assert truth[a, b] == expect[0, 0]
    fractions = np.bincount(truth.ravel(), minlength=5) / truth.size
    assert 0.4 < 1 - fractions[4] < 0.8  # tissue share of the slide
    assert (fractions[:4] > 0.03).all()  # every class present


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_class_present_on_4k_slides(seed: int) -> None:
    truth = SlideLayout(4096, 4096, MPP, seed, 4).label_mask(MASK_MPP)
    tissue = truth < 4
    fractions = np.bincount(truth[tissue], minlength=4) / tissue.sum()
    assert (fractions > 0.05).all()
    assert 0.45 < tissue.mean() < 0.75
    assert not tissue[0].any() and not tissue[-1].any()  # a white margin around the tissue
    assert not tissue[:, 0].any() and not tissue[:, -1].any()


def test_annotations_lie_inside_their_class(slide, truth) -> None:
    anns = read_annotations(slide.annotations_path)
    data = json.loads(slide.annotations_path.read_text())
    assert all(f["properties"]["classification"]["color"] for f in data["features"])
    names = BCSS_CLASSES.foreground_names
    assert {a.class_name for a in anns} == set(names)
    covered = dict.fromkeys(names, 0.0)
    for ann in anns:
        k = names.index(ann.class_name)
        polys = getattr(ann.geometry, "geoms", [ann.geometry])
        inside = np.zeros(truth.shape, dtype=bool)
        for poly in polys:
            x, y = np.asarray(poly.exterior.coords).T
            rr, cc = draw_polygon(y / SCALE - 0.5, x / SCALE - 0.5, truth.shape)
            inside[rr, cc] = True
        assert inside.sum() > 0
        assert np.mean(truth[inside] == k) >= 0.9, ann.class_name
        covered[ann.class_name] += ann.geometry.area / SCALE**2
    for k, name in enumerate(names):
        share = covered[name] / (truth == k).sum()
        assert 0.1 < share < 0.75, (name, share)


def _class_pixels(level0: np.ndarray, truth: np.ndarray, k: int) -> np.ndarray:
    core = ndimage.binary_erosion(truth == k, iterations=2)
    return np.kron(core, np.ones((SCALE, SCALE), dtype=bool))[: level0.shape[0], : level0.shape[1]]


def _nuclei_per_area(level0: np.ndarray, where: np.ndarray) -> float:
    """Haematoxylin-dark blobs (red channel < 150, > 3 µm²) per 100×100 µm of ``where``."""
    labelled, _ = ndimage.label((level0[..., 0] < 150) & where)
    areas_um2 = np.bincount(labelled.ravel())[1:] * MPP**2
    return float((areas_um2 > 3).sum() / (where.sum() * MPP**2 / 1e4))


def _coherence(gray: np.ndarray, where: np.ndarray, win: int = 32) -> float:
    """Mean structure-tensor coherence of win×win windows lying fully in ``where`` (0 isotropic)."""
    g = ndimage.gaussian_filter(gray, 1.5)
    gy, gx = np.gradient(g)
    vals = []
    for i in range(0, gray.shape[0] - win, win):
        for j in range(0, gray.shape[1] - win, win):
            if where[i : i + win, j : j + win].all():
                a = (gx[i : i + win, j : j + win] ** 2).sum()
                b = (gy[i : i + win, j : j + win] ** 2).sum()
                c = (gx[i : i + win, j : j + win] * gy[i : i + win, j : j + win]).sum()
                vals.append(np.sqrt((a - b) ** 2 + 4 * c * c) / (a + b + 1e-9))
    return float(np.mean(vals))


def test_class_textures_differ_beyond_mean_colour(level0, truth) -> None:
    gray = level0.astype(np.float32).mean(axis=2)
    sel = {n: _class_pixels(level0, truth, k) for k, n in enumerate(BCSS_CLASSES.foreground_names)}
    mean = {n: level0[m].reshape(-1, 3).mean(axis=0) for n, m in sel.items()}
    dark = {n: np.mean(gray[m] < 100) for n, m in sel.items()}
    # Nuclear-rich classes: similar mean colour, very different nuclear count density.
    assert np.linalg.norm(mean["TUM"] - mean["LYM"]) < 45
    assert _nuclei_per_area(level0, sel["LYM"]) > 2.5 * _nuclei_per_area(level0, sel["TUM"]) > 0
    # Pink classes: similar mean colour, but stroma is oriented (fibres), necrosis is not.
    assert np.linalg.norm(mean["STR"] - mean["NEC"]) < 45
    coherence = {n: _coherence(gray, sel[n]) for n in ("STR", "NEC")}
    assert coherence["STR"] > coherence["NEC"] + 0.1, coherence
    # Across all classes no mean colour stands far apart from every other class.
    for n in mean:
        assert min(np.linalg.norm(mean[n] - mean[o]) for o in mean if o != n) < 45
    assert dark["LYM"] > 3 * max(dark["STR"], dark["NEC"])


def test_memory_bounded_by_tiles_not_slide(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import resource
        from wsi_lpd.synthetic.slides import write_synthetic_slide
        write_synthetic_slide({str(tmp_path / "warm.tiff")!r}, width_px=1024, height_px=1024,
                              texture=False)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        write_synthetic_slide({str(tmp_path / "big.tiff")!r}, width_px=8192, height_px=8192,
                              texture=False)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print((after - before) / 1024)
        """
    )
    res = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    growth_mb = float(res.stdout.strip().splitlines()[-1])
    assert growth_mb < 120, growth_mb  # the RGB level alone is 200 MB
    with tifffile.TiffFile(tmp_path / "big.tiff") as tif:
        assert [p.shape[:2] for p in tif.pages] == [(8192, 8192), (2048, 2048), (512, 512)]


def test_cli_writes_slides_and_sample_sheet(tmp_path: Path) -> None:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("synth:\n  width_px: 640\n  height_px: 999\n  prefix: demo\n")
    out = tmp_path / "out"
    res = CliRunner().invoke(
        app,
        [
            "synth",
            "--out",
            str(out),
            "--n-slides",
            "2",
            "--height-px",
            "512",
            "--seed",
            "4",
            "--config",
            str(cfg),
        ],
    )
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader((out / "samples.csv").open()))
    assert [r["slide_id"] for r in rows] == ["demo_00", "demo_01"]
    assert [r["split"] for r in rows] == ["train", "test"]
    for r in rows:
        assert Path(r["path"]).is_file() and Path(r["truth"]).is_file()
        assert Path(r["annotations"]).is_file() and float(r["mpp"]) == 0.5
        with openslide.OpenSlide(r["path"]) as osr:
            assert osr.dimensions == (640, 512)
    run = json.loads((out / "run.json").read_text())
    assert run["stage"] == "synth" and run["parameters"]["seed"] == 4
    a = tifffile.imread(out / "demo_01.tiff", key=0)
    b = write_synthetic_slide(tmp_path / "x.tiff", width_px=640, height_px=512, seed=5)
    assert np.array_equal(a, tifffile.imread(b.slide_path, key=0))  # slide i uses seed + i

    bad = tmp_path / "bad.yaml"
    bad.write_text("synth:\n  width_px: 0\n")
    res = CliRunner().invoke(app, ["synth", "--out", str(out), "--config", str(bad)])
    assert res.exit_code == 1
    assert "synth.width_px" in res.output


# --- real-texture slides (histolytics' HGSC crops) -------------------------------------------

REAL_PX = 2048


@pytest.fixture(scope="module")
def banks():
    pytest.importorskip("histolytics")
    from wsi_lpd.synthetic.texture import RealTextureBank

    return {split: RealTextureBank(split) for split in ("train", "test")}


@pytest.fixture(scope="module")
def real_pair(tmp_path_factory: pytest.TempPathFactory, banks):
    out = tmp_path_factory.mktemp("real")
    common = dict(width_px=REAL_PX, height_px=REAL_PX, seed=501, texture="real")
    plain = write_synthetic_slide(out / "r.tiff", bank=banks["test"], **common)
    shifted = write_synthetic_slide(
        out / "r_shift.tiff", bank=banks["test"], stain_scale=(0.6, 1.4), **common
    )
    return plain, shifted


def test_real_test_tiles_share_no_pixels_with_training_tiles(banks) -> None:
    for name in ("TUM", "STR", "LYM"):
        train = {t.tobytes() for t in banks["train"].tiles[name]}
        test = banks["test"].tiles[name]
        assert test and train
        assert not any(t.tobytes() in train for t in test), name
        # No test tile even shares a row of pixels with a training tile.
        train_rows = {row.tobytes() for t in banks["train"].tiles[name] for row in t}
        assert not any(row.tobytes() in train_rows for t in test for row in t), name


def test_class_pure_masks_follow_the_dominant_nucleus_type() -> None:
    from wsi_lpd.synthetic.texture import class_pure_masks

    types = np.zeros((300, 300), np.int32)
    types[::6, :100] = 3  # neoplastic band
    types[::6, 100:200] = 2  # inflammatory band
    types[::12, 200:] = 1  # connective band
    pure = class_pure_masks(types, sigma_px=8)
    assert pure["TUM"][:, 20:80].all() and not pure["TUM"][:, 120:].any()
    assert pure["LYM"][:, 120:180].all() and not pure["LYM"][:, :80].any()
    assert pure["STR"][:, 220:].all() and not pure["STR"][:, :80].any()


def test_real_slide_has_three_classes_real_texture_and_partial_annotations(real_pair) -> None:
    plain, _ = real_pair
    truth = read_label_mask(plain.mask_path)
    assert truth.classes.names == BCSS_CLASSES.names
    present = set(np.unique(truth.mask).tolist())
    assert present <= {0, 1, 2, BCSS_CLASSES.background_index} and {0, 1, 2} <= present
    level0 = tifffile.imread(plain.slide_path, key=0)
    scale = int(MASK_MPP / MPP)
    up = np.kron(truth.mask, np.ones((scale, scale), np.uint8))[:REAL_PX, :REAL_PX]
    core = {k: ndimage.binary_erosion(up == k, iterations=24) for k in range(3)}
    mean = {k: level0[m].reshape(-1, 3).mean(0) for k, m in core.items() if m.any()}
    assert mean[1][0] > mean[2][0] + 20  # stroma pinker than the lymphocyte-dense region
    assert level0[up == BCSS_CLASSES.background_index].min(axis=-1).mean() > 235
    anns = read_annotations(plain.annotations_path)
    assert {a.class_name for a in anns} <= {"TUM", "STR", "LYM"}
    for a in anns:
        k = BCSS_CLASSES.names.index(a.class_name)
        assert a.geometry.area < (truth.mask == k).sum() * scale**2


def test_stain_shifted_copy_keeps_ground_truth_and_moves_colour(real_pair) -> None:
    plain, shifted = real_pair
    assert (read_label_mask(plain.mask_path).mask == read_label_mask(shifted.mask_path).mask).all()
    geoms = [
        [
            (f["geometry"], f["properties"])
            for f in json.loads(s.annotations_path.read_text())["features"]
        ]
        for s in (plain, shifted)
    ]
    assert geoms[0] == geoms[1]
    a = tifffile.imread(plain.slide_path, key=0).astype(int)
    b = tifffile.imread(shifted.slide_path, key=0).astype(int)
    tissue = a.min(axis=-1) < 200
    assert np.abs(a - b)[tissue].mean() > 8


def test_real_texture_blocks_join_without_seams(banks) -> None:
    from wsi_lpd.synthetic.slides import SlideLayout, SlideRenderer

    layout = SlideLayout(1024, 1024, MPP, 502, 3)
    renderer = SlideRenderer(layout, BCSS_CLASSES, texture="real", bank=banks["train"])
    whole = renderer.render(100, 200, 512, 256)
    parts = np.concatenate(
        [renderer.render(100, 200, 200, 256), renderer.render(300, 200, 312, 256)], axis=1
    )
    assert np.array_equal(whole, parts)  # exact: see test_tiles_join_without_seams


def test_unknown_texture_mode_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="texture"):
        write_synthetic_slide(tmp_path / "x.tiff", width_px=64, height_px=64, texture="oil")


def test_look_mixtures_cover_their_shares_of_each_class() -> None:
    """Heterogeneous layouts: inside each class, look j covers about its weight of the area
    (biases fitted on the layout grid to within 0.02; pixels sample that grid's fields, 0.06
    leaves room for the interpolation between nodes)."""
    from wsi_lpd.synthetic.slides import look_mixture

    for dominant in (0, 2, None):
        weights = look_mixture([3, 2, 2, 2], dominant)
        layout = SlideLayout(4096, 4096, 0.5, 701, 4, look_weights=weights)
        ys = (np.arange(0, 4096, 8) + 0.5) * 0.5
        classes = layout.labels(ys, ys)
        looks = layout.look_labels(ys, ys, classes)
        offset = 0
        for k, w in enumerate(weights):
            inside = looks[classes == k] - offset
            share = np.bincount(inside, minlength=len(w)) / inside.size
            assert np.abs(share - np.asarray(w) / sum(w)).max() < 0.06, (dominant, k, share)
            offset += len(w)
        assert (looks[classes == 4] == offset).all()  # background


def test_looks_change_the_texture_not_the_ground_truth(tmp_path: Path) -> None:
    from wsi_lpd.synthetic.slides import look_mixture, write_heterogeneous_cohort

    plain = write_synthetic_slide(tmp_path / "p.tiff", width_px=512, height_px=512, seed=3)
    mixed = write_synthetic_slide(
        tmp_path / "m.tiff", width_px=512, height_px=512, seed=3,
        looks=look_mixture([3, 2, 2, 2], 1, share=1.0),
    )  # fmt: skip
    truth = read_label_mask(plain.mask_path).mask
    assert np.array_equal(truth, read_label_mask(mixed.mask_path).mask)
    a, b = tifffile.imread(plain.slide_path, key=0), tifffile.imread(mixed.slide_path, key=0)
    tissue = truth < 4
    assert tissue.any() and np.abs(a.astype(int) - b).mean() > 5
    with pytest.raises(ConfigError, match="look_weights"):
        write_synthetic_slide(tmp_path / "x.tiff", width_px=256, height_px=256, looks=[(1.0,)])
    cohort = write_heterogeneous_cohort(tmp_path / "h", n_train=1, n_test=1, size_px=256)
    assert [c.split for c in cohort] == ["train", "test"]


def test_glass_fast_path_paints_what_the_full_path_paints() -> None:
    from wsi_lpd.synthetic.slides import PAD_UM, SlideRenderer
    from wsi_lpd.synthetic.texture import paint_block

    layout = SlideLayout(20000, 16000, 0.25, 3, 4, tissue_fraction=0.1)
    renderer = SlideRenderer(layout, BCSS_CLASSES)
    pad = int(np.ceil(PAD_UM / layout.mpp))
    x0, y0, w, h = 256, 256, 512, 256  # inside the white margin: no tissue
    assert layout.is_glass(x0 - pad, y0 - pad, w + 2 * pad, h + 2 * pad)
    ys = (y0 - pad + np.arange(h + 2 * pad) + 0.5) * layout.mpp
    xs = (x0 - pad + np.arange(w + 2 * pad) + 0.5) * layout.mpp
    full = paint_block(
        layout.block_maps(ys, xs, layout.mpp, pad),
        renderer.styles,
        layout.seed,
        layout.stains,
        layout.gains,
    )[pad : pad + h, pad : pad + w]
    assert np.array_equal(renderer.render(x0, y0, w, h), full)
    mask = layout.label_mask(8.0)
    r, c = np.argwhere(mask < 4)[0]  # a tissue pixel: its box is not glass
    assert not layout.is_glass(int(c * 32), int(r * 32), 32, 32)


def test_less_tissue_is_a_subset_of_more_tissue() -> None:
    def tissue(fraction: float) -> np.ndarray:
        return SlideLayout(20000, 16000, 0.25, 3, 4, tissue_fraction=fraction).label_mask(16.0) < 4

    more, less = tissue(0.16), tissue(0.08)
    assert not (less & ~more).any()
    # area at 16 µm/px of a 5 mm × 4 mm slide: the fraction is a quantile of the layout grid, so
    # it holds to the grid's resolution, well within 2 % of the slide
    assert abs(more.mean() - 0.16) < 0.02 and abs(less.mean() - 0.08) < 0.02


def test_streamed_full_size_style_slide_opens_with_the_rendered_pixels(tmp_path: Path) -> None:
    """8192×6144 px at 0.25 µm/px (a 40× scan's resolution), mostly glass, lossless tiles: the
    writer streams level 0 from the renderer and builds each reduced level from the one above."""
    import tracemalloc

    from wsi_lpd.synthetic.slides import SlideRenderer, _box4, write_pyramid

    def write(width: int, height: int, path: Path) -> tuple[SlideLayout, SlideRenderer, int]:
        layout = SlideLayout(width, height, mpp, 5, 4, tissue_fraction=0.05)
        renderer = SlideRenderer(layout, BCSS_CLASSES, texture="flat")  # fast; the glass fast
        tracemalloc.start()  # path of procedural texture has its own test above
        write_pyramid(path, renderer, tile_px=256, aperio=True, jpeg_quality=90, compression="zlib")
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return layout, renderer, peak

    mpp = 0.25
    *_, peak_small = write(2048, 1536, tmp_path / "small.svs")
    width, height = 8192, 6144
    path = tmp_path / "big.svs"
    layout, renderer, peak = write(width, height, path)
    # The peak is the working set of one rendered block, whatever the slide size: 16×
    # the pixels add only per-tile bookkeeping (a few kB), far below the 16 MB slack. The level-0
    # image alone would be 151 MB.
    assert peak < peak_small + 16e6, (peak / 1e6, peak_small / 1e6)
    assert peak < width * height * 3 / 2, peak / 1e6
    osr = openslide.OpenSlide(str(path))
    assert osr.properties["openslide.vendor"] == "aperio"
    assert float(osr.properties["openslide.mpp-x"]) == mpp
    assert float(osr.properties["openslide.objective-power"]) == 40
    assert osr.level_dimensions == ((8192, 6144), (2048, 1536), (512, 384))
    mask = layout.label_mask(8.0)
    r, c = np.argwhere(mask < 4)[len(np.argwhere(mask < 4)) // 2]
    boxes = [(0, 0), (int(c * 32) // 256 * 256, int(r * 32) // 256 * 256), (7680, 5632)]
    for x, y in boxes:  # glass corner, a tissue tile, the last tile
        got = np.asarray(osr.read_region((x, y), 0, (512, 512)))[..., :3]
        want = np.full((512, 512, 3), 255, np.uint8)  # OpenSlide: transparent past the edge
        rw, rh = min(512, width - x), min(512, height - y)
        want[:rh, :rw] = renderer.render(x, y, rw, rh)
        assert np.array_equal(got[:rh, :rw], want[:rh, :rw]), (x, y)
    x, y = boxes[1]  # level 1 is the exact 4× box mean of level 0 (zlib: lossless)
    level1 = np.asarray(osr.read_region((x, y), 1, (64, 64)))[..., :3]
    assert np.array_equal(level1, _box4(renderer.render(x, y, 256, 256)))
