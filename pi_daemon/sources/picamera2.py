"""The Raspberry Pi camera through picamera2, reading the small YUV420 "lores" stream.

Facts about picamera2 this adapter relies on (read from raspberrypi/picamera2,
`picamera2/picamera2.py` at commit ec9ab36, the 0.3.x line shipped as
python3-picamera2 on Bookworm, unless said otherwise):

- `Picamera2(camera_num)` looks the number up in `global_camera_info()` first, so
  with no camera it raises IndexError before anything else (seen by users too:
  mainsail-crew/spyglass#135). Older releases raised RuntimeError instead.
- Opening a camera that is already held raises
  `RuntimeError("Camera __init__ sequence did not complete.")`, raised inside
  the `except` around `camera.acquire()`, so the real cause,
  `RuntimeError("Failed to acquire camera: Device or resource busy")`, is only in
  `__context__` (traceback in mainsail-crew/spyglass#74). We dig it out.
- `check_camera_config()` raises RuntimeError "lores stream must be YUV" on VC4
  (Pi 4) and "lores stream dimensions may not exceed main stream"; sizes must be
  even ("width and height should be even").
- Buffers come from /dev/dma_heap (CMA) in `configure()`; when CMA runs out the
  ioctl raises `OSError: [Errno 12] Cannot allocate memory`
  (raspberrypi/picamera2#972, where buffer_count <= 5 fixed it on a Pi 4).
- `capture_array(name, wait=s)` waits on a `concurrent.futures.Future`, whose
  TimeoutError is the builtin TimeoutError from Python 3.11 on. `wait=None`
  blocks forever and a falsy `wait` (0) returns a Job instead of an array
  (`dispatch_functions`), so we always pass a positive wait. A timed-out job
  stays queued; `cancel_all_and_flush()` exists to tidy up after exactly that.
- A YUV420 array is `(h*3/2, stride)`: the row stride is kept as padding
  (`Helpers.make_array` in picamera2/request.py @ 0e0c8e4; e.g. lores 704 wide
  came back 768 wide in raspberrypi/picamera2#1182). The U and V planes have
  stride/2, so the padding cannot be removed by slicing columns: `_unpad_i420`
  repacks the planes.
- Each capture call queues a Job; the camera's event loop serves jobs first come first
  served, one completed request (frame) each (`dispatch_functions`, `capture_array_`).
  So a main-stream still taken beside the capture thread's lores reads costs that
  thread one frame, and shows the frame after the one being classified.
- `cancel_all_and_flush()` cancels *every* queued job, whichever thread waits on it:
  those waiters get `concurrent.futures.CancelledError` (`Job.cancel` in job.py).
  `snapshot()` therefore never flushes, and treats a cancellation as a failed still.
- `close()` returns early when not open, so calling it twice is safe.
- "FrameRate" is a virtual control mapped to FrameDurationLimits
  (picamera2/controls.py @ 9c44552).
"""

from __future__ import annotations

import errno
import logging
import time
from concurrent.futures import CancelledError
from typing import Any

import numpy as np

from pi_daemon.errors import SourceUnavailable
from pi_daemon.frame import Frame
from pi_daemon.sources.base import FrameSource, SourceError

log = logging.getLogger(__name__)

#: Few buffers keep CMA use low; picamera2's video default of 6 exhausted CMA for
#: users (raspberrypi/picamera2#972). With queue=True one buffer is held back.
BUFFER_COUNT = 4
#: The main stream is read only for event snapshots; YUV420 is the cheapest format
#: (12 bits/pixel against 32 for picamera2's default XBGR8888), which saves CMA, and
#: the JPEG encoder takes YCbCr as it is.
MAIN_FORMAT = "YUV420"
#: On a Pi 4 (VC4) the lores stream must be YUV.
LORES_FORMAT = "YUV420"
#: capture_array treats wait=0 as "don't wait, return a Job": never pass it.
MIN_WAIT_S = 0.01
_MAX_CAUSE_CHARS = 200


def _even_floor(value: int) -> int:
    return max(2, int(value) - int(value) % 2)


def clamp_lores_size(
    main_size: tuple[int, int], lores_size: tuple[int, int]
) -> tuple[tuple[int, int], tuple[int, int]]:
    """Even sizes, with lores no larger than main, as picamera2 requires: (main, lores)."""
    main_w, main_h = _even_floor(main_size[0]), _even_floor(main_size[1])
    lores_w = min(_even_floor(lores_size[0]), main_w)
    lores_h = min(_even_floor(lores_size[1]), main_h)
    return (main_w, main_h), (lores_w, lores_h)


def _unpad_i420(pixels: np.ndarray, width: int, height: int) -> np.ndarray:
    """Planar I420 of exactly (height*3/2, width) from a stride-padded picamera2 array.

    The Y plane has `stride` bytes a row and the U and V planes `stride/2`, so each
    plane is cropped on its own and the three are packed back together.
    """
    rows, stride = pixels.shape
    if rows != height * 3 // 2 or stride < width:
        raise SourceError(
            f"YUV420 array has shape {pixels.shape}, expected ({height * 3 // 2}, >= {width})"
        )
    if stride == width:
        return pixels
    flat = np.ascontiguousarray(pixels).reshape(-1)
    chroma_w, chroma_h, chroma_stride = width // 2, height // 2, stride // 2
    luma_end = height * stride
    chroma_len = chroma_h * chroma_stride
    y = flat[:luma_end].reshape(height, stride)[:, :width]
    u = flat[luma_end : luma_end + chroma_len].reshape(chroma_h, chroma_stride)[:, :chroma_w]
    v_start = luma_end + chroma_len
    v = flat[v_start : v_start + chroma_len].reshape(chroma_h, chroma_stride)[:, :chroma_w]
    out = np.empty(width * height * 3 // 2, np.uint8)
    luma_size, chroma_size = width * height, chroma_w * chroma_h
    out[:luma_size].reshape(height, width)[:] = y
    out[luma_size : luma_size + chroma_size].reshape(chroma_h, chroma_w)[:] = u
    out[luma_size + chroma_size :].reshape(chroma_h, chroma_w)[:] = v
    return out.reshape(height * 3 // 2, width)


def _root_cause(exc: BaseException) -> BaseException:
    """The innermost exception: picamera2 hides the useful one in `__context__`."""
    seen: set[int] = set()
    current: BaseException | None = exc
    last = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        last = current
        current = current.__cause__ or current.__context__
    return last


def _describe(exc: BaseException) -> str:
    """One line naming the root cause, with a hint for the failures users really hit."""
    root = _root_cause(exc)
    text = " ".join(str(root).split()) or type(root).__name__
    if len(text) > _MAX_CAUSE_CHARS:
        text = text[: _MAX_CAUSE_CHARS - 3] + "..."
    lowered = text.lower()
    if "busy" in lowered:
        text += " (another process, or an unclosed Picamera2 in this one, holds the camera)"
    elif getattr(root, "errno", None) == errno.ENOMEM or "cannot allocate memory" in lowered:
        text += " (CMA memory exhausted; restarting the process or a reboot frees it)"
    return text


def _import_picamera2(camera_num: int) -> type:
    """picamera2 comes from apt (python3-picamera2) and needs libcamera's bindings."""
    try:
        from picamera2 import Picamera2
    except Exception as exc:  # ImportError, or libcamera failing to load
        raise SourceUnavailable(
            f"picamera2 camera {camera_num}: cannot import picamera2 ({_describe(exc)}); "
            "install python3-picamera2 and create the venv with --system-site-packages"
        ) from None
    return Picamera2


def _list_cameras(picamera2_class: Any) -> list[dict[str, Any]]:
    return list(picamera2_class.global_camera_info())


def camera_present(picamera2_class: type | None = None) -> tuple[bool, str]:
    """(True, "") when picamera2 imports and libcamera lists a camera, else (False, why).

    Used by `source = "auto"`; it never opens the camera, so it cannot make it busy.
    """
    try:
        cls = picamera2_class if picamera2_class is not None else _import_picamera2(0)
    except SourceUnavailable as exc:
        return False, str(exc)
    try:
        cameras = _list_cameras(cls)
    except Exception as exc:
        return False, f"cannot list cameras: {_describe(exc)}"
    if not cameras:
        return False, "libcamera lists no camera"
    return True, ""


class Picamera2Source(FrameSource):
    """Frames from a Pi camera's lores stream, as planar YUV420 at the model's size.

    The ISP scales the picture down for free, so the CPU only converts a small
    YUV420 frame to RGB. The main stream exists because picamera2 requires one;
    it is kept small and cheap.
    """

    name = "picamera2"
    live = True

    def __init__(
        self,
        camera_num: int,
        main_size: tuple[int, int],
        lores_size: tuple[int, int],
        frame_rate: float,
        capture_timeout_s: float,
        picamera2_class: type | None = None,
    ) -> None:
        super().__init__()
        if frame_rate <= 0 or capture_timeout_s <= 0:
            raise ValueError("frame_rate and capture_timeout_s must be positive")
        self.camera_num = camera_num
        self.requested_lores_size = (int(lores_size[0]), int(lores_size[1]))
        self.main_size, self.lores_size = clamp_lores_size(main_size, lores_size)
        self.frame_rate = frame_rate
        self.capture_timeout_s = capture_timeout_s
        # A capture waits for the next frame: at a slow frame rate that is longer than
        # capture_timeout_s, and must not count as a failure.
        self.frame_interval_s = 1.0 / frame_rate
        self.read_timeout_s = max(capture_timeout_s, 2 * self.frame_interval_s)
        self._picamera2_class = picamera2_class
        self._camera: Any = None
        self._where = f"picamera2 camera {camera_num}"

    def describe(self) -> str:
        w, h = self.lores_size
        return f"picamera2: camera {self.camera_num}, lores {w}x{h} {LORES_FORMAT}"

    def open(self) -> None:
        """Acquire, configure and start the camera, or raise SourceUnavailable in one line."""
        if self._camera is not None:
            return
        cls = self._picamera2_class
        if cls is None:
            cls = _import_picamera2(self.camera_num)
        try:
            cameras = _list_cameras(cls)
        except Exception as exc:
            raise SourceUnavailable(
                f"{self._where}: cannot list cameras: {_describe(exc)}"
            ) from None
        if not cameras:
            raise SourceUnavailable(
                f"{self._where}: libcamera lists no camera (check the ribbon cable, "
                "camera_auto_detect=1 in config.txt, and access to /dev/media* and /dev/dma_heap)"
            )
        if self.camera_num >= len(cameras):
            raise SourceUnavailable(
                f"{self._where}: only {len(cameras)} camera(s) detected, numbered from 0"
            )
        if self.lores_size != self.requested_lores_size:
            log.warning(
                "lores %dx%d clamped to %dx%d (even, and no larger than main %dx%d)",
                *self.requested_lores_size,
                *self.lores_size,
                *self.main_size,
            )
        self._warn_if_aspect_differs()
        try:
            camera = cls(camera_num=self.camera_num)
        except Exception as exc:
            raise SourceUnavailable(f"{self._where}: cannot open: {_describe(exc)}") from None
        try:
            self._configure_and_start(camera)
        except Exception as exc:
            self._release(camera)
            raise SourceUnavailable(
                f"{self._where}: cannot configure/start: {_describe(exc)}"
            ) from None
        self._camera = camera
        log.info(
            "opened %s (%s): main %dx%d %s, lores %dx%d %s, %.3g fps, %d buffers",
            self._where,
            cameras[self.camera_num].get("Model", "unknown model"),
            *self.main_size,
            MAIN_FORMAT,
            *self.lores_size,
            LORES_FORMAT,
            self.frame_rate,
            BUFFER_COUNT,
        )

    def _configure_and_start(self, camera: Any) -> None:
        config = camera.create_video_configuration(
            main={"size": self.main_size, "format": MAIN_FORMAT},
            lores={"size": self.lores_size, "format": LORES_FORMAT},
            controls={"FrameRate": self.frame_rate},
            buffer_count=BUFFER_COUNT,
            # queue=True keeps the newest frame ready, so a read rarely waits a whole frame.
            queue=True,
            display=None,
            encode=None,
        )
        camera.configure(config)
        # libcamera may adjust sizes; picamera2 writes the final ones back into the config.
        actual = camera.stream_configuration("lores").get("size")
        if actual is not None and tuple(actual) != self.lores_size:
            log.warning("libcamera adjusted lores %dx%d to %dx%d", *self.lores_size, *actual)
            self.lores_size = (int(actual[0]), int(actual[1]))
        actual = camera.stream_configuration("main").get("size")
        if actual is not None and tuple(actual) != self.main_size:
            log.info("libcamera adjusted main %dx%d to %dx%d", *self.main_size, *actual)
            self.main_size = (int(actual[0]), int(actual[1]))
        camera.start()

    def _warn_if_aspect_differs(self) -> None:
        main_w, main_h = self.main_size
        lores_w, lores_h = self.lores_size
        if abs(main_w * lores_h - lores_w * main_h) > 0.02 * main_w * lores_h:
            # On VC4 there is one ScalerCrop for both ISP outputs; picamera2 only sets a
            # per-stream crop when libcamera advertises "ScalerCrops" (picamera2 PR #1087).
            log.warning(
                "lores %dx%d and main %dx%d differ in aspect ratio; on a Pi 4 the lores "
                "picture is likely stretched. A lores size with main's aspect ratio lets "
                "preprocessing crop instead.",
                lores_w,
                lores_h,
                main_w,
                main_h,
            )

    def read(self, timeout: float) -> Frame:
        """The next lores frame as (h*3/2, w) planar YUV420; SourceError on timeout or fault."""
        camera = self._camera
        if camera is None:
            raise SourceError(f"{self._where}: source is closed")
        wait = max(MIN_WAIT_S, min(timeout, self.read_timeout_s))
        try:
            pixels = camera.capture_array("lores", wait=wait)
        except TimeoutError as exc:
            self._flush(camera)
            raise SourceError(f"{self._where}: no frame within {wait:.2f} s") from exc
        except (RuntimeError, OSError) as exc:
            raise SourceError(f"{self._where}: capture failed: {_describe(exc)}") from exc
        if not isinstance(pixels, np.ndarray) or pixels.ndim != 2 or pixels.dtype != np.uint8:
            raise SourceError(f"{self._where}: capture_array returned {type(pixels).__name__}")
        width, height = self.lores_size
        return self._frame(_unpad_i420(pixels, width, height), "YUV420")

    def snapshot(self, frame_id: int | None = None, timeout: float = 2.0) -> Frame:
        """A still from the main stream (main_size, planar YUV420), not the small lores.

        It is the next frame the camera delivers, taken while the capture thread goes on
        reading lores (which then skips that one frame); `frame_id` is ignored and the
        Frame carries the id of the newest lores frame read before it. Raises SourceError
        when the camera is closed, stalls past `timeout` (the job is left queued: a flush
        would cancel the capture thread's read too) or fails.
        """
        camera = self._camera
        if camera is None:
            raise SourceError(f"{self._where}: source is closed")
        wait = max(MIN_WAIT_S, min(timeout, self.capture_timeout_s))
        try:
            pixels = camera.capture_array("main", wait=wait)
        except TimeoutError as exc:
            raise SourceError(f"{self._where}: no main-stream still within {wait:.2f} s") from exc
        except CancelledError as exc:
            raise SourceError(f"{self._where}: main-stream still cancelled by a flush") from exc
        except (RuntimeError, OSError) as exc:
            raise SourceError(f"{self._where}: still capture failed: {_describe(exc)}") from exc
        if not isinstance(pixels, np.ndarray) or pixels.ndim != 2 or pixels.dtype != np.uint8:
            raise SourceError(f"{self._where}: capture_array returned {type(pixels).__name__}")
        width, height = self.main_size
        return Frame(
            _unpad_i420(pixels, width, height),
            "YUV420",
            self.last_frame_id,
            time.time(),
            time.monotonic(),
        )

    @staticmethod
    def _flush(camera: Any) -> None:
        """Drop the timed-out capture job so it doesn't swallow a frame later."""
        try:
            camera.cancel_all_and_flush()
        except Exception:
            log.debug("cancel_all_and_flush failed", exc_info=True)

    def close(self) -> None:
        """Stop and release the camera; safe twice and after a failed open."""
        camera, self._camera = self._camera, None
        if camera is not None:
            self._release(camera)

    def _release(self, camera: Any) -> None:
        # Errors here can't be acted on, and must not hide the error that led here.
        for label in ("stop", "close"):
            try:
                getattr(camera, label)()
            except Exception as exc:
                log.warning("%s: %s() failed: %s", self._where, label, _describe(exc))
