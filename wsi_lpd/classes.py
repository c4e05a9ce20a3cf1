"""Tissue classes: names and display colours, from the config, never hard-coded in logic."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from wsi_lpd.errors import ConfigError


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
