"""QuPath GeoJSON: read what QuPath writes, write what QuPath imports.

QuPath's rules (qupath-core GsonTools / QuPathTypeAdapters): ``objectType`` sits inside
``properties``; a classification object needs both ``name`` and ``color`` or the whole import
fails; a feature ``id`` is kept only when it is a UUID; holes are interior rings. Coordinates are
level-0 pixels.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import geojson as geojson_pkg
import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon, mapping, shape
from shapely.geometry.base import BaseGeometry

from wsi_lpd.errors import AnnotationError

log = logging.getLogger(__name__)

OBJECT_TYPES = ("annotation", "detection", "tile")


@dataclass
class Annotation:
    """One polygonal object: geometry in level-0 px, its class name (None if unclassified)."""

    geometry: BaseGeometry
    class_name: str | None
    properties: dict[str, Any] = field(default_factory=dict)


def _open_text(path: Path, mode: str) -> IO[str]:
    if path.suffix == ".gz":
        return gzip.open(path, mode + "t", encoding="utf-8")  # type: ignore[return-value]
    return open(path, mode, encoding="utf-8")


def _class_name(properties: Mapping[str, Any]) -> str | None:
    cls = properties.get("classification")
    if cls is None:
        return None
    if isinstance(cls, str):
        return cls
    if isinstance(cls, Mapping):
        if "name" in cls:
            return str(cls["name"])
        if cls.get("names"):
            return ": ".join(str(n) for n in cls["names"])
    return None


GEOMETRY_TYPES = (
    "Point",
    "MultiPoint",
    "LineString",
    "MultiLineString",
    "Polygon",
    "MultiPolygon",
    "GeometryCollection",
)


def _features(data: Any, path: Path) -> Iterable[Mapping[str, Any]]:
    """Features of a FeatureCollection, a Feature, a bare geometry or a JSON array of them.

    Anything else (valid JSON that is not GeoJSON) raises ``AnnotationError`` naming ``path``.
    """
    if isinstance(data, list):
        for item in data:
            yield from _features(item, path)
        return
    kind = data.get("type") if isinstance(data, Mapping) else None
    if kind == "FeatureCollection" and isinstance(data.get("features", []), list):
        yield from _features(data.get("features", []), path)
    elif kind == "Feature":
        yield data
    elif kind in GEOMETRY_TYPES:
        yield {"type": "Feature", "geometry": data, "properties": {}}
    else:
        shown = f"type {kind!r}" if kind is not None else f"a JSON {type(data).__name__}"
        raise AnnotationError(
            f"{path}: not GeoJSON (found {shown}; "
            "expected a FeatureCollection, Feature or geometry)"
        )


def qupath_offset_px(slide: Any) -> tuple[int, int]:
    """Level-0 (dx, dy) to add to QuPath coordinates of ``slide`` to get slide level-0 px.

    QuPath shows a cropped slide (OpenSlide ``bounds-x``/``bounds-y``, e.g. MRXS) from its bounds,
    so its coordinates are relative to them: the rule of ``export --subtract-bounds``, reversed.
    ``slide`` is anything with ``bounds`` = (x, y, w, h) level-0 px
    (:class:`wsi_lpd.slide.reader.Slide`);
    (0, 0) for an uncropped slide.
    """
    x, y = slide.bounds[:2]
    return int(x), int(y)


def read_annotations(
    path: str | os.PathLike, offset_px: tuple[float, float] = (0.0, 0.0)
) -> list[Annotation]:
    """Read polygon annotations from a QuPath GeoJSON export (``.geojson``, ``.json``, ``.gz``).

    ``offset_px`` (level-0 px, from :func:`qupath_offset_px`) is added to every coordinate.
    Non-polygonal geometries are skipped with a warning; invalid polygons are repaired with
    ``make_valid`` (keeping their polygonal part). Valid JSON that is not GeoJSON raises
    ``AnnotationError`` naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(f"{path}: annotation file not found")
    try:
        with _open_text(path, "r") as fh:
            data = json.load(fh)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, EOFError) as exc:
        raise AnnotationError(f"{path}: not readable as GeoJSON ({exc})") from exc
    dx, dy = float(offset_px[0]), float(offset_px[1])
    out: list[Annotation] = []
    skipped = 0
    for i, feat in enumerate(_features(data, path)):
        if not isinstance(feat, Mapping):
            raise AnnotationError(f"{path}: feature {i} is not a JSON object")
        geom_data = feat.get("geometry")
        if geom_data is None:
            skipped += 1
            continue
        try:
            geom = shape(geom_data)
        except (ValueError, TypeError, AttributeError, KeyError) as exc:
            raise AnnotationError(f"{path}: feature {i} has a malformed geometry ({exc})") from exc
        geom = _polygonal(shapely.make_valid(geom) if not geom.is_valid else geom)
        if geom is None or geom.is_empty:
            skipped += 1
            continue
        if dx or dy:
            geom = shapely.transform(geom, lambda xy: xy + np.array([dx, dy]))
        raw_props = feat.get("properties")
        props = dict(raw_props) if isinstance(raw_props, Mapping) else {}
        out.append(Annotation(geom, _class_name(props), props))
    if skipped:
        log.warning("%s: skipped %d feature(s) without a polygonal geometry", path, skipped)
    return out


def _polygonal(geom: BaseGeometry) -> BaseGeometry | None:
    if isinstance(geom, Polygon | MultiPolygon):
        return geom
    parts = [g for g in getattr(geom, "geoms", []) if isinstance(g, Polygon | MultiPolygon)]
    return shapely.union_all(parts) if parts else None


def feature(
    geometry: BaseGeometry,
    class_name: str,
    color: Iterable[int],
    object_type: str = "annotation",
    measurements: Mapping[str, float] | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """A QuPath feature: UUID4 id, objectType inside properties, classification with colour.

    Built and validated with the ``geojson`` package (closed rings of ≥ 4 positions, valid
    geometry type) after a shapely validity check; an invalid geometry raises ``AnnotationError``
    before anything is written.
    """
    if object_type not in OBJECT_TYPES:
        raise ValueError(f"object_type must be one of {OBJECT_TYPES}, got {object_type!r}")
    if isinstance(geometry, MultiPolygon) and len(geometry.geoms) == 1:
        geometry = geometry.geoms[0]
    if not geometry.is_valid:
        raise AnnotationError(
            f"{class_name}: invalid {geometry.geom_type} ({shapely.is_valid_reason(geometry)})"
        )
    properties: dict[str, Any] = {
        "objectType": object_type,
        "classification": {"name": class_name, "color": [int(c) for c in color]},
    }
    if name is not None:
        properties["name"] = name
    if measurements:
        properties["measurements"] = {k: float(v) for k, v in measurements.items()}
    geom = geojson_pkg.GeoJSON.to_instance(mapping(geometry), strict=True)
    feat = geojson_pkg.Feature(id=str(uuid.uuid4()), geometry=geom, properties=properties)
    if not feat.is_valid:
        raise AnnotationError(f"{class_name}: not a valid GeoJSON feature ({feat.errors()})")
    return feat


def write_feature_collection_into(
    path: str | os.PathLike,
    features: Iterable[Mapping[str, Any]],
    properties: Mapping[str, Any] | None = None,
) -> int:
    """Stream features into a FeatureCollection file (gzip when ``path`` ends in ``.gz``).

    ``properties`` (e.g. provenance) become the collection's ``properties`` member, which QuPath
    ignores. Returns the number of features written. Not atomic (``_into``): the caller passes a
    temporary path (``wsi_lpd.io.atomic_file``).
    """
    path = Path(path)
    n = 0
    with _open_text(path, "w") as fh:
        fh.write('{"type": "FeatureCollection", ')
        if properties:
            fh.write(f'"properties": {json.dumps(dict(properties), default=str)}, ')
        fh.write('"features": [')
        for feat in features:
            fh.write(",\n" if n else "\n")
            fh.write(json.dumps(feat, separators=(",", ":")))  # C encoder; dump() is pure Python
            n += 1
        fh.write("\n]}\n")
    return n
