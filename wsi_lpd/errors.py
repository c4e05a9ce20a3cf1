"""Typed errors. Each also subclasses the builtin a caller would naturally catch."""

from __future__ import annotations


class WsiLpdError(Exception):
    """Base class of every error this package raises on purpose."""


class SlideNotFoundError(WsiLpdError, FileNotFoundError):
    """The slide path does not exist."""


class SlideReadError(WsiLpdError, OSError):
    """The slide exists but cannot be read (truncated, corrupt, I/O error)."""


class UnsupportedFormatError(WsiLpdError, ValueError):
    """No backend can open this file as a slide."""


class MissingMppError(WsiLpdError, ValueError):
    """The slide carries no pixel size and no override was given."""


class SlideTooSmallError(WsiLpdError, ValueError):
    """The slide is smaller than one patch at the requested resolution."""


class AnnotationError(WsiLpdError, ValueError):
    """A GeoJSON or label file is malformed or inconsistent with the class list."""


class ConfigError(WsiLpdError, ValueError):
    """A configuration value is missing or invalid; the message names the key."""


class CheckpointError(WsiLpdError, ValueError):
    """A checkpoint cannot be loaded or does not fit the data it is used on."""


class DatasetError(WsiLpdError, ValueError):
    """A patch store or dataset folder is missing, empty or malformed."""


class NoTissueWarning(UserWarning):
    """No tissue was detected on a slide; its tile grid is empty."""


class TrainingError(WsiLpdError, RuntimeError):
    """Training could not go on (e.g. a worker process of a distributed run failed)."""


class TrainingDivergedError(TrainingError, FloatingPointError):
    """The training loss became NaN or infinite; the message names the iteration."""


class DeviceBusyError(WsiLpdError, RuntimeError):
    """Every GPU a process could take is held by another process (``--device cuda:auto``)."""


class MosaicIntegrityError(WsiLpdError, OSError):
    """A finished mosaic store lacks a chunk its writer recorded, or a chunk was altered."""
