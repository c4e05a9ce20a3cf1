"""Tissue classes: names and display colours, from the config, never hard-coded in logic."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from wsi_lpd.errors import AnnotationError, ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TissueClass:
    """One class: its name and its RGB display colour (0-255)."""

    name: str
    color: tuple[int, int, int]


@dataclass(frozen=True)
class ClassList:
    """Foreground classes (image-level labels) followed by one background class.

    Label rasters use the index into ``all``: 0..C-1 foreground, C background.
    """

    foreground: tuple[TissueClass, ...]
    background: TissueClass

    @property
    def all(self) -> tuple[TissueClass, ...]:
        return (*self.foreground, self.background)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.all]

    @property
    def foreground_names(self) -> list[str]:
        return [c.name for c in self.foreground]

    @property
    def num_foreground(self) -> int:
        return len(self.foreground)

    @property
    def background_index(self) -> int:
        return len(self.foreground)

    def index(self, name: str) -> int:
        """Index of a class by name (case-sensitive)."""
        for i, c in enumerate(self.all):
            if c.name == name:
                return i
        raise ConfigError(f"unknown class {name!r}; known classes: {', '.join(self.names)}")

    def to_dict(self) -> dict:
        """JSON-serialisable form (stored in checkpoints, mosaics, patch stores)."""
        return {
            "foreground": [{"name": c.name, "color": list(c.color)} for c in self.foreground],
            "background": {"name": self.background.name, "color": list(self.background.color)},
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> ClassList:
        """Parse ``{"foreground": [{name, color}], "background": {name, color}}``."""
        try:
            fg = tuple(_parse_class(c) for c in data["foreground"])
            bg = _parse_class(data["background"])
        except (KeyError, TypeError) as exc:
            raise ConfigError(
                f"classes: expected foreground list and background entry ({exc})"
            ) from exc
        names = [c.name for c in (*fg, bg)]
        if len(set(names)) != len(names):
            raise ConfigError(f"classes: duplicate class names in {names}")
        if not fg:
            raise ConfigError("classes.foreground: at least one foreground class is needed")
        return cls(fg, bg)

    @classmethod
    def from_names(cls, names: Iterable[str], background: str = "BACK") -> ClassList:
        """Build from names with default colours (the background name is appended last)."""
        fg = tuple(
            TissueClass(n, DEFAULT_COLORS.get(n, _fallback_color(i))) for i, n in enumerate(names)
        )
        return cls(fg, TissueClass(background, DEFAULT_COLORS.get(background, (255, 255, 255))))


def _parse_class(entry: Mapping) -> TissueClass:
    color = tuple(int(v) for v in entry["color"])
    if len(color) != 3 or not all(0 <= v <= 255 for v in color):
        raise ConfigError(f"classes: colour of {entry['name']!r} must be three integers 0-255")
    return TissueClass(str(entry["name"]), color)  # type: ignore[arg-type]


def _fallback_color(i: int) -> tuple[int, int, int]:
    palette = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189)]
    return palette[i % len(palette)]


DEFAULT_COLORS: dict[str, tuple[int, int, int]] = {
    "TUM": (200, 0, 0),
    "STR": (255, 165, 0),
    "LYM": (0, 0, 200),
    "NEC": (128, 0, 128),
    "BACK": (255, 255, 255),
}

BCSS_CLASSES = ClassList.from_names(["TUM", "STR", "LYM", "NEC"])


QUPATH_CLASS_NAMES: dict[str, str] = {
    "Tumor": "TUM",
    "Stroma": "STR",
    "Immune cells": "LYM",
    "Necrosis": "NEC",
}
"""QuPath's built-in classification names → the default model class names."""

QUPATH_IGNORE = "Ignore*"
"""QuPath's class for "leave this area out": patches under it get no label (they are dropped)."""
QUPATH_REGION = "Region*"
"""QuPath's class for a region of interest: not a tissue class, ignored without a warning."""

UnknownClassPolicy = Literal["ignore", "refuse"]


@dataclass(frozen=True)
class ClassMapping:
    """Annotation class names (QuPath's) → model class names of ``classes``.

    A name resolves, in order, through ``class_map`` (exact, then case-insensitive; a ``None``
    value drops that annotation class on purpose), the model's own names (exact, then
    case-insensitive) and :data:`QUPATH_CLASS_NAMES` when its target is a model class. Any other
    name follows ``unknown_classes``: ``ignore`` (a warning per class name and file, with its
    count) or ``refuse`` (``AnnotationError`` naming the class and the file). QuPath's
    :data:`QUPATH_IGNORE` and :data:`QUPATH_REGION` are never unknown (see :meth:`kind`).
    """

    classes: ClassList
    class_map: Mapping[str, str | None] = field(default_factory=dict)
    unknown_classes: UnknownClassPolicy = "ignore"

    def __post_init__(self) -> None:
        if self.unknown_classes not in ("ignore", "refuse"):
            raise ConfigError(
                "patches.unknown_classes: must be 'ignore' or 'refuse', "
                f"got {self.unknown_classes!r}"
            )
        for source, target in self.class_map.items():
            if target is not None and target not in self.classes.names:
                raise ConfigError(
                    f"patches.class_map.{source}: {target!r} is not a class "
                    f"({', '.join(self.classes.names)})"
                )

    def resolve(self, name: str) -> str | None:
        """The model class name of annotation class ``name``; None when it maps to nothing."""
        lowered = name.casefold()
        for table in (self.class_map, {n: n for n in self.classes.names}, self._qupath()):
            if name in table:
                return table[name]
            for source, target in table.items():
                if source.casefold() == lowered:
                    return target
        return None

    def _qupath(self) -> dict[str, str]:
        return {k: v for k, v in QUPATH_CLASS_NAMES.items() if v in self.classes.names}

    def kind(self, name: str | None) -> str:
        """What happens to annotations of class ``name``: ``mapped`` (to a model class),
        ``ignore-area`` (QuPath's Ignore*: the area gets no labels), ``ignored`` (Region*,
        unclassified, or mapped to null in ``class_map``) or ``unknown``."""
        if name is None:
            return "ignored"
        if self.resolve(name) is not None:
            return "mapped"
        if self.is_mapped(name):
            return "ignored"
        if name.casefold() == QUPATH_IGNORE.casefold():
            return "ignore-area"
        if name.casefold() == QUPATH_REGION.casefold():
            return "ignored"
        return "unknown"

    def is_mapped(self, name: str) -> bool:
        """Whether ``name`` has an explicit entry (``class_map`` may map a name to None)."""
        return any(source.casefold() == name.casefold() for source in self.class_map)

    def indices(self, names: Iterable[str | None], source: object) -> list[int | None]:
        """Index into ``classes.all`` per annotation class name (None: dropped or unclassified).

        Unknown names are refused (``AnnotationError`` naming ``source``) or ignored with one
        warning per name and file, giving its count.
        """
        out: list[int | None] = []
        ignored: Counter[str] = Counter()
        for name in names:
            target = None if name is None else self.resolve(name)
            mapped = name is not None and self.is_mapped(name)
            kind = self.kind(name)
            if kind == "unknown" and self.unknown_classes == "refuse":
                raise AnnotationError(
                    f"{source}: annotation class {name!r} is not a model class "
                    f"({', '.join(self.classes.names)}); map it in patches.class_map or "
                    "set patches.unknown_classes: ignore"
                )
            if name is not None and (kind == "unknown" or (kind == "ignored" and not mapped)):
                ignored[name] += 1  # unknown, or QuPath's Region*
            out.append(None if target is None else self.classes.index(target))
        for name, count in sorted(ignored.items()):
            log.warning("%s: ignored %d annotation(s) of class %r", source, count, name)
        return out
