"""A stand-in for `picamera2.Picamera2` with the real signatures and failure modes.

Mimicked from raspberrypi/picamera2 `picamera2/picamera2.py` at commit ec9ab36
(0.3.x, Bookworm), `request.py` at 0e0c8e4, `controls.py` at 9c44552 and `job.py`:

- `Picamera2(camera_num=0, verbose_console=None, tuning=None, allocator=None)`
  maps the number through `global_camera_info()[camera_num]["Num"]`, so with no
  camera it raises IndexError (also seen in mainsail-crew/spyglass#135).
- Acquiring a camera that is held raises RuntimeError("Camera __init__ sequence
  did not complete.") from inside the except block, so `__context__` is
  RuntimeError("Failed to acquire camera: Device or resource busy") — the real
  traceback is in mainsail-crew/spyglass#74. Held cameras are a class-level
  registry, so a second open in one process fails, as in the real one.
- `create_video_configuration` has the real keyword arguments and defaults
  (`transform` is None here because libcamera.Transform is unavailable; buffer
  count 6; display/encode "main"; queue True), rejects unknown stream keys with
  ValueError and rounds sizes down to even (`align_stream(optimal=False)`).
- `configure()` applies `check_camera_config`: RuntimeError "lores stream must be
  YUV" on VC4 (Pi 4), "lores stream dimensions may not exceed main stream",
  "width and height should be even", "Camera must be stopped before
  configuring"; unknown controls raise "Control X is not advertised by libcamera".
  Set `fail_configure` to an exception (e.g. the OSError ENOMEM that the dma-heap
  ioctl raises, raspberrypi/picamera2#972) or `fail_start` for start().
- `capture_array(name="main", wait=None, signal_function=None)`: a `wait` in
  seconds raises TimeoutError (concurrent.futures' TimeoutError is the builtin
  one since Python 3.11); `wait=None` blocks forever in the real library, so the
  fake gives up after `max_block_s` with an AssertionError (a test bug, not a
  behaviour); a falsy `wait` (0/False) returns a Job, as `dispatch_functions`
  does. Before start() no frames ever arrive, so it times out like the real one.
- Capture calls queue a Job that the event loop serves first come first served, one
  frame each, from whichever stream was named (`capture_array_` pops one completed
  request). A timed-out job stays queued (`pending_jobs`) and, once frames flow
  again, eats the next frame before any later job is served. `cancel_all_and_flush()`
  cancels every queued job, including those another thread is still waiting on: that
  waiter gets `concurrent.futures.CancelledError` (`Job.cancel`, job.py). Served
  stream names are recorded in `captures`.
- YUV420 arrays are (h*3/2, stride) with the stride padding left in, Y rows
  `stride` wide and U/V rows stride/2 (`Helpers.make_array`); the stride is
  rounded up to 64 pixels, the optimal YUV420 alignment in the picamera2 manual
  (real strides come from the kernel driver and may be larger,
  raspberrypi/picamera2#1182). Padding bytes are junk (0x00/0xFF) so a wrong
  crop shows up as wrong colours.
- libcamera's `validate()` may adjust a stream's size ("Adjusted"); `configure()` then
  writes the final size, stride and framesize back into the configuration dict
  (`_update_stream_config`). Set `libcamera_adjusts = {"lores": (w, h)}` to model it.
- `stop()` and `close()` return early when there is nothing to do, so both are
  idempotent; `__exit__` calls `close()`.

Frames are made from a real picture: `picture` (RGB, HxWx3 uint8) resized to the
stream size and converted with OpenCV's COLOR_RGB2YUV_I420 (BT.601 limited range,
the same matrix COLOR_YUV2RGB_I420 inverts).
"""

from __future__ import annotations

import threading
from concurrent.futures import CancelledError
from typing import Any, ClassVar

import cv2
import numpy as np

YUV_FORMATS = ("YUV420", "YVU420", "NV12", "NV21", "YUYV", "YVYU", "UYVY", "VYUY")
RGB_FORMATS = ("XBGR8888", "XRGB8888", "RGB888", "BGR888", "RGB161616", "BGR161616")
#: A small subset of what libcamera advertises for a Pi camera, plus FrameRate,
#: picamera2's virtual control for FrameDurationLimits.
ADVERTISED_CONTROLS = frozenset(
    {
        "FrameRate",
        "FrameDurationLimits",
        "NoiseReductionMode",
        "ExposureTime",
        "AnalogueGain",
        "AeEnable",
        "AwbEnable",
        "ScalerCrop",
        "Brightness",
        "Contrast",
    }
)
YUV420_STRIDE_ALIGN = 64


def default_picture(width: int = 320, height: int = 240) -> np.ndarray:
    """A smooth colour gradient, for tests that don't care what the camera sees."""
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    r = np.broadcast_to(x, (height, width))
    g = np.broadcast_to(y, (height, width))
    b = 255 - (r + g) / 2
    return np.stack([r, g, b], axis=2).astype(np.uint8)


def i420_from_rgb(picture: np.ndarray, width: int, height: int) -> np.ndarray:
    """Unpadded planar I420 (height*3/2, width) of `picture` scaled to width x height."""
    interpolation = cv2.INTER_AREA if picture.shape[1] >= width else cv2.INTER_LINEAR
    scaled = cv2.resize(picture, (width, height), interpolation=interpolation)
    return cv2.cvtColor(scaled, cv2.COLOR_RGB2YUV_I420)


def pad_i420(i420: np.ndarray, width: int, height: int, stride: int) -> np.ndarray:
    """Lay an I420 picture out as picamera2 returns it: (height*3/2, stride), padded rows."""
    chroma_w, chroma_h, chroma_stride = width // 2, height // 2, stride // 2
    flat = i420.reshape(-1)
    luma = flat[: width * height].reshape(height, width)
    u = flat[width * height : width * height + chroma_w * chroma_h].reshape(chroma_h, chroma_w)
    v = flat[width * height + chroma_w * chroma_h :].reshape(chroma_h, chroma_w)
    y_plane = np.full((height, stride), 0x00, np.uint8)
    y_plane[:, :width] = luma
    u_plane = np.full((chroma_h, chroma_stride), 0xFF, np.uint8)
    u_plane[:, :chroma_w] = u
    v_plane = np.full((chroma_h, chroma_stride), 0x00, np.uint8)
    v_plane[:, :chroma_w] = v
    buffer = np.concatenate([y_plane.reshape(-1), u_plane.reshape(-1), v_plane.reshape(-1)])
    return buffer.reshape(height * 3 // 2, stride)


class _QueuedJob:
    """A capture waiting in the fake's event-loop queue."""

    def __init__(self, stream: str) -> None:
        self.stream = stream
        self.cancelled = False
        self.abandoned = False  # its caller timed out; it still takes a frame when served


class FakeJob:
    """What the real capture methods return for a falsy `wait` (picamera2/job.py)."""

    def __init__(self, result: Any) -> None:
        self._result = result

    def get_result(self, timeout: float | None = None) -> Any:
        return self._result


class FakePicamera2:
    """`picamera2.Picamera2` for tests. Configure the class, not instances:

    the code under test constructs the camera itself. `reset()` between tests.
    """

    #: One dict per camera, as global_camera_info() returns them (ec9ab36 adds "Num").
    cameras: ClassVar[list[dict[str, Any]]] = [
        {
            "Model": "imx708",
            "Location": 2,
            "Rotation": 180,
            "Id": "/base/soc/i2c0mux/i2c@1/imx708@1a",
            "Num": 0,
        }
    ]
    _DEFAULT_CAMERA: ClassVar[dict[str, Any]] = dict(cameras[0])
    #: "VC4" is a Pi 4 (lores must be YUV); "PISP" is a Pi 5.
    platform: ClassVar[str] = "VC4"
    #: What the camera sees: RGB uint8 HxWx3. None means `default_picture()`.
    picture: ClassVar[np.ndarray | None] = None
    #: Exceptions to raise from configure()/start(), to simulate ENOMEM and friends.
    fail_configure: ClassVar[BaseException | None] = None
    fail_start: ClassVar[BaseException | None] = None
    #: Sizes libcamera's validate() substitutes for a stream, by name ("Adjusted").
    libcamera_adjusts: ClassVar[dict[str, tuple[int, int]]] = {}
    #: Cap on a wait=None block; the real one would hang forever.
    max_block_s: ClassVar[float] = 5.0
    #: Camera numbers currently acquired in this process (libcamera's exclusive lock).
    _acquired: ClassVar[set[int]] = set()
    #: Every instance constructed, so tests can reach the one the code under test made.
    instances: ClassVar[list[FakePicamera2]] = []

    @classmethod
    def reset(cls) -> None:
        """Restore the class defaults and forget held cameras, as in a fresh process."""
        FakePicamera2._acquired.clear()
        FakePicamera2.instances.clear()
        FakePicamera2.cameras = [dict(FakePicamera2._DEFAULT_CAMERA)]
        FakePicamera2.platform = "VC4"
        FakePicamera2.picture = None
        FakePicamera2.fail_configure = None
        FakePicamera2.fail_start = None
        FakePicamera2.libcamera_adjusts = {}
        FakePicamera2.max_block_s = 5.0

    @staticmethod
    def global_camera_info() -> list[dict[str, Any]]:
        """Attached cameras, one dict each; empty when libcamera finds none."""
        return [dict(camera) for camera in FakePicamera2.cameras]

    def __init__(self, camera_num=0, verbose_console=None, tuning=None, allocator=None):
        self._preview = None
        self.is_open = False
        # Real: `camera_num = self.global_camera_info()[camera_num]['Num']` -> IndexError.
        camera_num = self.global_camera_info()[camera_num]["Num"]
        self.camera_idx = camera_num
        self.camera_config: dict[str, Any] | None = None
        self.started = False
        self.frames = 0
        self._hang = False
        #: An exception capture_array raises instead of returning a frame.
        self.fail_capture: BaseException | None = None
        self.close_calls = 0
        #: The stream each served capture read from, in order ("lores", "main", ...).
        self.captures: list[str] = []
        # _flow's lock protects _flowing and _jobs: the queue of capture jobs, oldest first.
        self._flow = threading.Condition()
        self._flowing = False  # frames arrive (started and not hung)
        self._jobs: list[_QueuedJob] = []
        #: Every `wait` capture_array was given, in order.
        self.waits: list[Any] = []
        FakePicamera2.instances.append(self)
        try:
            self._open_camera()
        except Exception:
            # Real picamera2 raises this inside the except block: the cause is __context__.
            raise RuntimeError("Camera __init__ sequence did not complete.")  # noqa: B904

    def _open_camera(self) -> None:
        if self.camera_idx in FakePicamera2._acquired:
            raise RuntimeError("Failed to acquire camera: Device or resource busy")
        FakePicamera2._acquired.add(self.camera_idx)
        self.is_open = True

    def __enter__(self) -> FakePicamera2:
        return self

    def __exit__(self, exc_type, exc_val, exc_traceback) -> None:
        self.close()

    @staticmethod
    def _make_initial_stream_config(stream_config: dict, updates: dict | None) -> dict | None:
        if updates is None:
            return None
        valid = ("format", "size", "stride", "preserve_ar")
        for key, value in updates.items():
            if key not in valid:
                raise ValueError(f"Bad key {key!r}: valid stream configuration keys are {valid}")
            stream_config[key] = value
        return stream_config

    @staticmethod
    def align_stream(stream_config: dict, optimal=True) -> None:
        # Only the optimal=False case, which create_*_configuration uses.
        width, height = stream_config["size"]
        stream_config["size"] = (width - width % 2, height - height % 2)

    def create_video_configuration(
        self,
        main={},  # noqa: B006 - the real signature
        lores=None,
        raw={},  # noqa: B006
        transform=None,
        colour_space=None,
        buffer_count=6,
        controls={},  # noqa: B006
        display="main",
        encode="main",
        queue=True,
        sensor={},  # noqa: B006
        use_case="video",
    ) -> dict:
        """Make a configuration suitable for video recording."""
        if not self.is_open:
            raise RuntimeError("Camera not opened")
        main = self._make_initial_stream_config(
            {"format": "XBGR8888", "size": (1280, 720), "preserve_ar": True}, main
        )
        self.align_stream(main, optimal=False)
        lores = self._make_initial_stream_config(
            {"format": "YUV420", "size": main["size"], "preserve_ar": False}, lores
        )
        if lores is not None:
            self.align_stream(lores, optimal=False)
        raw = self._make_initial_stream_config(
            {"format": "SBGGR10_CSI2P", "size": main["size"]}, raw
        )
        if colour_space is None:
            small = main["size"][0] < 1280 or main["size"][1] < 720
            colour_space = "Smpte170m" if small else "Rec709"
        controls = {"NoiseReductionMode": 1, "FrameDurationLimits": (33333, 33333)} | controls
        streams = {"main": main, "lores": lores, "raw": raw}
        for name, stream in (("display", display), ("encode", encode)):
            if stream is not None and streams.get(stream) is None:
                raise RuntimeError(f"{name.capitalize()} stream {stream} was not defined")
        return {
            "use_case": use_case,
            "transform": transform,
            "colour_space": colour_space,
            "buffer_count": buffer_count,
            "queue": queue,
            "main": main,
            "lores": lores,
            "raw": raw,
            "controls": controls,
            "sensor": sensor,
            "display": display,
            "encode": encode,
        }

    @staticmethod
    def check_stream_config(stream_config, name) -> None:
        if type(stream_config) is not dict:
            raise RuntimeError(name + " stream should be a dictionary")
        if "format" not in stream_config:
            raise RuntimeError("format not found in " + name + " stream")
        if "size" not in stream_config:
            raise RuntimeError("size not found in " + name + " stream")
        fmt = stream_config["format"]
        if type(fmt) is not str:
            raise RuntimeError("format in " + name + " stream should be a string")
        if name != "raw" and fmt not in YUV_FORMATS + RGB_FORMATS + ("MJPEG",):
            raise RuntimeError("Bad format " + fmt + " in stream " + name)
        size = stream_config["size"]
        if type(size) is not tuple or len(size) != 2:
            raise RuntimeError("size in " + name + " stream should be (width, height)")
        if size[0] % 2 or size[1] % 2:
            raise RuntimeError("width and height should be even")

    def check_camera_config(self, camera_config: dict) -> None:
        for name in ("colour_space", "transform", "main", "lores", "raw"):
            if name not in camera_config:
                raise RuntimeError(f"{name!r} key expected in camera configuration")
        self.check_stream_config(camera_config["main"], "main")
        if camera_config["lores"] is not None:
            self.check_stream_config(camera_config["lores"], "lores")
            main_w, main_h = camera_config["main"]["size"]
            lores_w, lores_h = camera_config["lores"]["size"]
            if lores_w > main_w or lores_h > main_h:
                raise RuntimeError("lores stream dimensions may not exceed main stream")
            if self.platform == "VC4" and camera_config["lores"]["format"] not in YUV_FORMATS:
                raise RuntimeError("lores stream must be YUV")
        if camera_config["raw"] is not None:
            self.check_stream_config(camera_config["raw"], "raw")

    @staticmethod
    def _stride(fmt: str, width: int) -> int:
        if fmt in ("YUV420", "YVU420"):
            return -(-width // YUV420_STRIDE_ALIGN) * YUV420_STRIDE_ALIGN
        bytes_per_pixel = {"RGB888": 3, "BGR888": 3, "XBGR8888": 4, "XRGB8888": 4}.get(fmt, 2)
        return width * bytes_per_pixel

    def configure(self, camera_config=None) -> None:
        """Configure the camera system with the given configuration."""
        if self.started:
            raise RuntimeError("Camera must be stopped before configuring")
        if not isinstance(camera_config, dict):
            raise NotImplementedError("fake: only configuration dicts are modelled")
        camera_config = {
            key: dict(value) if isinstance(value, dict) else value
            for key, value in camera_config.items()
        }
        self.camera_config = None
        self.check_camera_config(camera_config)
        for name in camera_config.get("controls", {}):
            if name not in ADVERTISED_CONTROLS:
                raise RuntimeError(f"Control {name} is not advertised by libcamera")
        if self.fail_configure is not None:
            raise self.fail_configure
        for name in ("main", "lores", "raw"):
            stream = camera_config[name]
            if stream is not None and name != "raw":
                stream["size"] = tuple(self.libcamera_adjusts.get(name, stream["size"]))
                width, height = stream["size"]
                stream["stride"] = self._stride(stream["format"], width)
                rows = height * 3 // 2 if stream["format"] in ("YUV420", "YVU420") else height
                stream["framesize"] = stream["stride"] * rows
        self.camera_config = camera_config

    def camera_configuration(self) -> dict | None:
        return self.camera_config

    def stream_configuration(self, name="main") -> dict:
        return self.camera_config[name]

    def start(self, config=None, show_preview=False) -> None:
        """Start the camera system running."""
        if config is not None:
            self.configure(config)
        if self.camera_config is None:
            raise RuntimeError("Camera has not been configured")
        if self.started:
            return
        if self.fail_start is not None:
            raise self.fail_start
        self.started = True
        self._update_flow()

    def stop(self) -> None:
        """Stop the camera."""
        if not self.started:
            return
        self.started = False
        self._update_flow()

    def close(self) -> None:
        """Close camera; returns early when already closed."""
        self.close_calls += 1
        if not self.is_open:
            return
        self.stop()
        FakePicamera2._acquired.discard(self.camera_idx)
        self.is_open = False
        self.camera_config = None

    @property
    def hang(self) -> bool:
        """True simulates a stalled pipeline (cable, power): captures time out."""
        return self._hang

    @hang.setter
    def hang(self, value: bool) -> None:
        self._hang = value
        self._update_flow()

    def _update_flow(self) -> None:
        with self._flow:
            self._flowing = self.started and not self._hang
            self._flow.notify_all()

    @property
    def pending_jobs(self) -> int:
        """Jobs still queued whose caller gave up waiting (timed out)."""
        with self._flow:
            return sum(job.abandoned for job in self._jobs)

    def cancel_all_and_flush(self) -> None:
        """Cancel every queued job, as after a capture timed out; their waiters raise."""
        with self._flow:
            for job in self._jobs:
                job.cancelled = True
            self._jobs = []
            self._flow.notify_all()

    def capture_array(self, name="main", wait=None, signal_function=None) -> Any:
        """Make a 2d image from the next frame in the named stream."""
        self.waits.append(wait)
        if wait is None:
            wait = signal_function is None
        if not wait:
            # dispatch_functions returns the job itself; this fake only models the
            # case where a frame is ready.
            return FakeJob(self._next_array(name))
        timeout = None if wait is True else float(wait)
        limit = self.max_block_s if timeout is None else timeout
        job = _QueuedJob(name)
        with self._flow:
            self._jobs.append(job)
            # Frames only arrive while started and not hung; the event loop then serves
            # the queue in order, one frame per job, so this job waits for those ahead.
            served = self._flow.wait_for(lambda: job.cancelled or self._serve_until(job), limit)
            if job.cancelled:
                raise CancelledError()
            if not served:
                job.abandoned = True
                if timeout is None:
                    raise AssertionError("fake: capture_array(wait=None) would block forever")
                raise TimeoutError()
        return self._next_array(name)

    def _serve_until(self, job: _QueuedJob) -> bool:
        """With _flow held: serve queued jobs up to `job` while frames flow; True once it is."""
        while self._flowing and self._jobs:
            head = self._jobs.pop(0)
            if head is job:
                return True
            if head.abandoned:
                self.frames += 1  # a stale job still takes a frame; nobody sees it
            else:
                self._jobs.insert(0, head)  # another live waiter is first: let it go
                self._flow.notify_all()
                return False
        return False

    def _next_array(self, name: str) -> np.ndarray:
        if self.fail_capture is not None:
            raise self.fail_capture
        stream = (self.camera_config or {}).get(name)
        if stream is None:
            raise RuntimeError(f"Stream {name!r} is not defined")
        self.frames += 1
        self.captures.append(name)
        width, height = stream["size"]
        fmt = stream["format"]
        picture = self.picture if self.picture is not None else default_picture()
        if fmt == "YUV420":
            return pad_i420(i420_from_rgb(picture, width, height), width, height, stream["stride"])
        scaled = cv2.resize(picture, (width, height), interpolation=cv2.INTER_AREA)
        if fmt == "BGR888":  # picamera2's BGR888 is [R, G, B] in memory
            return scaled
        if fmt == "RGB888":
            return np.ascontiguousarray(scaled[:, :, ::-1])
        if fmt == "XBGR8888":
            return np.dstack([scaled, np.full((height, width), 255, np.uint8)])
        if fmt == "XRGB8888":
            return np.dstack([scaled[:, :, ::-1], np.full((height, width), 255, np.uint8)])
        raise RuntimeError("Format " + fmt + " not supported")
