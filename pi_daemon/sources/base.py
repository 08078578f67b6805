"""The frame-source interface every camera, stream or file reader implements."""

from __future__ import annotations

import abc
import itertools
import time

import numpy as np

from pi_daemon.preprocess import Frame, PixelFormat


class SourceEnded(Exception):
    """A finite source (a file, a non-looping replay) has no more frames."""


class SourceError(Exception):
    """A read failed (timeout, device error, bad frame); the source may recover."""


class FrameSource(abc.ABC):
    """Opens a device, hands out frames, releases the device.

    `close()` must be safe to call more than once and after a failed `open()`.
    Implementations raise `SourceUnavailable` from `open()` when the device is
    absent, `SourceError` from `read()` for recoverable faults and `SourceEnded`
    when a finite input is exhausted.
    """

    name: str = "source"
    #: True for cameras and streams that produce frames whether or not we read
    #: them (the newest wins, older ones are dropped); False for replayed files,
    #: which wait for the consumer so no frame is skipped.
    live: bool = True

    def __init__(self) -> None:
        self._ids = itertools.count(1)

    @abc.abstractmethod
    def open(self) -> None: ...

    @abc.abstractmethod
    def read(self, timeout: float) -> Frame: ...

    @abc.abstractmethod
    def close(self) -> None: ...

    def describe(self) -> str:
        return self.name

    def _frame(self, pixels: np.ndarray, fmt: PixelFormat) -> Frame:
        return Frame(pixels, fmt, next(self._ids), time.time(), time.monotonic())

    def __enter__(self) -> FrameSource:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
