"""Build the sample sheet from folders: slides, QuPath annotation exports, ground truth.

Slide ids follow :func:`wsi_lpd.slide.reader.slide_id_from_name`, the rule of both QuPath scripts,
so ``qupath/export_annotations.groovy``'s ``{slide_id}.geojson`` files pair with their slides by
name. Two files giving the same id are refused, naming both.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from wsi_lpd.errors import ConfigError
from wsi_lpd.io import write_text
from wsi_lpd.slide.reader import fix_slide_id, slide_id_from_name

SLIDE_SUFFIXES = (
    ".svs",
    ".ndpi",
    ".mrxs",
    ".scn",
    ".vms",
    ".vmu",
    ".bif",
    ".svslide",
    ".czi",
    ".tif",
    ".tiff",
)
"""File endings taken as slides (what OpenSlide and tifffile read; OME-TIFF included)."""
ANNOTATION_SUFFIXES = (".geojson.gz", ".geojson", ".json")
TRUTH_SUFFIXES = (".geojson.gz", ".geojson", ".json", ".ome.tiff", ".ome.tif", ".tiff", ".tif")
TRUTH_TAGS = (".mask", ".truth", ".labels")
"""A truth file ``{slide_id}{tag}{suffix}`` (e.g. ``a.mask.tiff``) pairs with slide ``a``."""
SHEET_COLUMNS = ("slide_id", "path", "annotations", "truth", "split")


@dataclass
class BuiltSheet:
    """What :func:`build_sample_sheet` found: rows ``{column: value}`` and what did not pair."""

    rows: list[dict[str, str]]
    without_annotations: list[str] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)

    def csv_text(self) -> str:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, SHEET_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        return buffer.getvalue()


def _strip(name: str, suffixes: Iterable[str]) -> str | None:
    lower = name.lower()
    for suffix in suffixes:
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return None


def _is_mask(name: str) -> bool:
    """wsi-lpd's label masks (``{slide_id}.mask.tiff``, beside `wsi-lpd synth`'s slides)."""
    stem = _strip(name, (".tiff", ".tif"))
    return stem is not None and stem.lower().endswith(".mask")


def list_slides(folder: str | os.PathLike) -> list[Path]:
    """Slide files directly in ``folder`` (sorted by name; hidden files and ``*.mask.tiff`` label
    masks left out)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"{folder}: slide folder not found")
    return sorted(
        p
        for p in folder.iterdir()
        if not p.name.startswith(".")
        and (p.is_file() or p.is_symlink())
        and p.name.lower().endswith(SLIDE_SUFFIXES)
        and not _is_mask(p.name)
    )


def _ids_of(
    files: Iterable[Path], id_of: Callable[[str], str | None], what: str
) -> dict[str, Path]:
    """``{slide id: file}``; two files with one id are refused naming both."""
    out: dict[str, Path] = {}
    for path in files:
        sid = id_of(path.name)
        if sid is None:
            continue
        if sid in out:
            raise ConfigError(
                f"{what} {out[sid]} and {path} both give slide id {sid!r} "
                "(wsi_lpd.slide.reader.slide_id_from_name, the QuPath scripts' rule); rename one"
            )
        out[sid] = path
    return out


def _annotation_id(name: str) -> str | None:
    stem = _strip(name, ANNOTATION_SUFFIXES)
    return None if stem is None else fix_slide_id(stem)


def _truth_id(name: str) -> str | None:
    stem = _strip(name, TRUTH_SUFFIXES)
    if stem is None:
        return None
    tagged = _strip(stem, TRUTH_TAGS)
    return fix_slide_id(tagged if tagged is not None else stem)


def _files(folder: str | os.PathLike | None, what: str) -> list[Path]:
    if folder is None:
        return []
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"{folder}: {what} folder not found")
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def build_sample_sheet(
    slide_dir: str | os.PathLike,
    annotation_dir: str | os.PathLike | None = None,
    truth_dir: str | os.PathLike | None = None,
) -> BuiltSheet:
    """The sheet of every slide in ``slide_dir`` with its annotations and truth, by slide id.

    Paths are absolute (symlinks kept as given). Annotation files are ``{slide_id}.geojson``
    (``.geojson.gz``, ``.json``), truth files ``{slide_id}[.mask|.truth|.labels].{tiff,geojson}``;
    their names go through the same id rule, so a file named after the slide also pairs.
    """
    slides = _ids_of(list_slides(slide_dir), slide_id_from_name, "slides")
    if not slides:
        raise ConfigError(f"{slide_dir}: no slide files (endings {', '.join(SLIDE_SUFFIXES)})")
    annotations = _ids_of(_files(annotation_dir, "annotation"), _annotation_id, "annotations")
    truths = _ids_of(_files(truth_dir, "truth"), _truth_id, "truth files")
    rows = []
    for sid, path in slides.items():
        ann, truth = annotations.get(sid), truths.get(sid)
        rows.append(
            {
                "slide_id": sid,
                "path": os.path.abspath(path),
                "annotations": os.path.abspath(ann) if ann else "",
                "truth": os.path.abspath(truth) if truth else "",
                "split": "",
            }
        )
    unmatched = [str(p) for d in (annotations, truths) for s, p in d.items() if s not in slides]
    return BuiltSheet(
        rows=rows,
        without_annotations=[r["slide_id"] for r in rows if not r["annotations"]],
        unmatched=unmatched,
    )


def write_sample_sheet(built: BuiltSheet, out: str | os.PathLike) -> Path:
    """Write the sheet as CSV (atomic)."""
    return write_text(out, built.csv_text())
