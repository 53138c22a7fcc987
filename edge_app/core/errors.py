"""One root error for camtrap; subclasses carry data and stay builtin-compatible.

Adapters translate vendor exceptions at the seam (``raise ... from e``) so callers only
ever catch ours.
"""

from __future__ import annotations


class EdgeAppError(Exception):
    """Root of every error camtrap raises on purpose."""


class ConfigError(EdgeAppError, ValueError):
    """A configuration value is unknown, of the wrong type or impossible.

    Attributes:
        key: the dotted key, e.g. ``camera.burst_frames``.
        reason: what is wrong with it, for a technician to read.
    """

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


class ModelError(EdgeAppError):
    """A model file is missing, corrupt or not what its card says.

    Attributes:
        path: the file concerned.
    """

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class ImageError(EdgeAppError, ValueError):
    """An image cannot be decoded at all (a truncated one that still decodes is not an error)."""


class HardwareUnavailable(EdgeAppError, OSError):
    """A hardware backend or its vendor library is not present on this machine."""


class StorageError(EdgeAppError, OSError):
    """The media store or the database cannot be written (disk full, read-only card)."""


class CameraTimeout(HardwareUnavailable):
    """A camera call did not return within its bound (a frontend timeout, a hung driver).

    The call itself may still be stuck in the driver; whoever raises this has stopped waiting
    for it, nothing more.
    """


class CameraFailed(HardwareUnavailable):
    """The camera stayed broken after every reopening allowed (``camera.max_reopens``).

    Raised by the capture guard so that the capture stage fails visibly instead of waiting on
    a dead camera; by then the guard has asked for a power cycle (its ``on_give_up``).

    Attributes:
        reopens: reopenings tried in a row before giving up.
    """

    def __init__(self, message: str, reopens: int = 0) -> None:
        super().__init__(message)
        self.reopens = reopens
