"""Still images from hostile files: bounded decoding, one line per bad image, real files.

`classify` prints every image it can and one `pi-daemon:` line per one it cannot (exit
66); the same files in `[files] paths` stop `run` with one line and exit 78.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pi_daemon.errors import EX_CONFIG, EX_NOINPUT, InputError
from pi_daemon.images import MAX_IMAGE_PIXELS, decode_image
from tests.conftest import TEST_MODELS, assert_one_line_error

TINY = f"""
[model]
path = "{TEST_MODELS / "tiny_uint8.tflite"}"
labels = "{TEST_MODELS / "tiny_labels.txt"}"
num_threads = 1
"""


def png_claiming(width: int, height: int, rows: int = 4) -> bytes:
    """A well-formed PNG header for width x height, with pixel data for a few rows only:
    a few hundred bytes that claim gigabytes once decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    pixels = zlib.compress(b"\0" * (1 + 3 * width) * rows)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _corrupt_png(path: Path) -> Path:
    """A real PNG of noise whose compressed pixel data is damaged halfway through."""
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    _saved(path, Image.fromarray(noise))
    data = bytearray(path.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 64):
        data[i] ^= 0xFF
    return _write(path, bytes(data))


def _saved(path: Path, image: Image.Image, **options: object) -> Path:
    image.save(path, **options)
    return path


BAD_IMAGES: dict[str, tuple[Callable[[Path], Path], str]] = {
    "missing": (lambda tmp: tmp / "gone.jpg", "image file not found"),
    "directory": (lambda tmp: tmp, "cannot read image: not a regular file (a directory)"),
    "fifo": (
        lambda tmp: os.mkfifo(tmp / "pipe.png") or tmp / "pipe.png",
        "cannot read image: not a regular file (a FIFO)",
    ),
    "device": (lambda tmp: Path("/dev/zero"), "not a regular file (a character device)"),
    "empty": (lambda tmp: _write(tmp / "empty.png", b""), "the file is empty"),
    "not-an-image": (
        lambda tmp: _write(tmp / "notes.jpg", b"hello, world\n" * 10),
        "not a supported image format",
    ),
    "truncated-jpeg": (
        lambda tmp: _write(
            tmp / "cut.jpg",
            (Path(__file__).parent.parent / "pi_daemon/demo/coffee.jpg").read_bytes()[:4000],
        ),
        "cannot decode image (image file is truncated",
    ),
    "corrupt-png": (lambda tmp: _corrupt_png(tmp / "bad.png"), "cannot decode image ("),
    "header-40000x40000": (
        lambda tmp: _write(tmp / "huge.png", png_claiming(40000, 40000)),
        "image is 40000x40000 pixels (1600.0 MP), over the 16.8 MP this daemon decodes",
    ),
    "header-20000x20000": (
        lambda tmp: _write(tmp / "big.png", png_claiming(20000, 20000)),
        "image is 20000x20000 pixels (400.0 MP)",
    ),
    "just-over-the-cap": (
        lambda tmp: _write(tmp / "over.png", png_claiming(4097, 4096)),
        "image is 4097x4096 pixels (16.8 MP), over the 16.8 MP",
    ),
    "eps": (
        # Pillow would run Ghostscript for EPS: not a format this daemon decodes.
        lambda tmp: _write(tmp / "x.eps", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 1 1\n"),
        "not a supported image format",
    ),
}


@pytest.mark.parametrize("name", sorted(BAD_IMAGES))
def test_bad_image_is_one_line(tmp_path: Path, name: str) -> None:
    make, fragment = BAD_IMAGES[name]
    path = make(tmp_path)
    with pytest.raises(InputError) as caught:
        decode_image(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and fragment in message, message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("name", "image", "options"),
    [
        ("grey.png", Image.new("L", (40, 30), 128), {}),
        ("palette.gif", Image.new("P", (40, 30), 3), {}),
        ("alpha.png", Image.new("RGBA", (40, 30), (255, 0, 0, 128)), {}),
        ("cmyk.jpg", Image.new("CMYK", (40, 30), (0, 255, 255, 0)), {}),
        ("deep.png", Image.new("I;16", (40, 30), 30000), {}),
        ("tiny.bmp", Image.new("RGB", (1, 1), (1, 2, 3)), {}),
        ("page.tiff", Image.new("RGB", (40, 30), (1, 2, 3)), {"compression": "tiff_lzw"}),
        ("photo.webp", Image.new("RGB", (40, 30), (1, 2, 3)), {}),
    ],
)
def test_any_mode_decodes_to_rgb(
    tmp_path: Path, name: str, image: Image.Image, options: dict[str, object]
) -> None:
    pixels = decode_image(_saved(tmp_path / name, image, **options))
    assert pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3
    assert pixels.shape[:2] == (image.height, image.width)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    image = Image.new("RGB", (60, 20), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    path = _saved(tmp_path / "turned.jpg", image, exif=exif)
    assert decode_image(path).shape[:2] == (60, 20)


def test_a_large_jpeg_is_decoded_at_a_scale_under_the_cap(tmp_path: Path) -> None:
    """A 48 MP phone photo decodes at 1/2 scale (12 MP) instead of being refused."""
    path = _saved(tmp_path / "phone.jpg", Image.new("RGB", (8000, 6000), (200, 10, 10)))
    pixels = decode_image(path)
    assert pixels.shape == (3000, 4000, 3)
    assert pixels.shape[0] * pixels.shape[1] <= MAX_IMAGE_PIXELS


def test_decoding_does_not_import_opencv(tmp_path: Path) -> None:
    path = _saved(tmp_path / "a.png", Image.new("RGB", (8, 8)))
    code = (
        "import sys; from pathlib import Path; from pi_daemon.images import decode_image; "
        f"decode_image(Path({str(path)!r})); sys.exit('cv2' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


def test_a_huge_header_costs_no_memory(tmp_path: Path) -> None:
    """Refused from the header: the process stays small (it used to reach 2.4 GB)."""
    path = _write(tmp_path / "huge.png", png_claiming(20000, 20000, rows=200))
    # VmHWM, not ru_maxrss: that one keeps the forked parent's peak across exec.
    code = (
        "from pathlib import Path; from pi_daemon.images import decode_image\n"
        f"try: decode_image(Path({str(path)!r}))\nexcept Exception as e: print(e)\n"
        "status = Path('/proc/self/status').read_text()\n"
        "print(int(status.split('VmHWM:')[1].split()[0]) // 1024)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    message, peak_mib = done.stdout.splitlines()
    assert "20000x20000" in message
    assert int(peak_mib) < 100, peak_mib


def test_classify_prints_the_good_images_and_one_line_per_bad_one(
    tmp_path: Path, cli: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    red = _saved(tmp_path / "red.png", Image.new("RGB", (48, 40), (255, 0, 0)))
    blue = _saved(tmp_path / "blue.png", Image.new("RGB", (48, 40), (0, 0, 255)))
    bad = [BAD_IMAGES[name][0](tmp_path) for name in ("header-40000x40000", "directory", "fifo")]
    args = [str(red), *map(str, bad), str(blue)]
    model = ["--model", str(TEST_MODELS / "tiny_uint8.tflite")]
    result = cli("classify", *args, *model, "--labels", str(TEST_MODELS / "tiny_labels.txt"))
    assert result.returncode == EX_NOINPUT, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stdout.splitlines()
    assert [line.split(": ")[0] for line in lines] == [str(red), str(blue)]
    assert lines[0].split(": ")[1].startswith("class_0") and "class_2" in lines[1]
    errors = result.stderr.splitlines()
    assert len(errors) == 3 and all(e.startswith("pi-daemon: ") for e in errors), errors
    assert "40000x40000" in errors[0] and "a directory" in errors[1] and "a FIFO" in errors[2]


@pytest.mark.parametrize("name", ["header-40000x40000", "directory", "fifo", "truncated-jpeg"])
def test_the_same_images_in_files_paths_stop_run_with_78(
    tmp_path: Path,
    cli: Callable[..., subprocess.CompletedProcess[str]],
    write_config: Callable[[str], Path],
    name: str,
) -> None:
    make, fragment = BAD_IMAGES[name]
    path = make(tmp_path)
    config = write_config(f'source = "files"\n{TINY}\n[files]\npaths = ["{path}"]\n')
    result = cli("run", "--config", str(config), timeout=60)
    reason = fragment.split("cannot read image: ")[-1]
    assert_one_line_error(result, EX_CONFIG, "files.paths", str(path), reason)


def test_a_replay_keeps_a_bounded_number_of_pixels(tmp_path: Path, monkeypatch) -> None:
    import pi_daemon.sources.files as files_module
    from pi_daemon.errors import ConfigError

    monkeypatch.setattr(files_module, "MAX_REPLAY_PIXELS", 1000)
    paths = [_saved(tmp_path / f"{i}.png", Image.new("RGB", (20, 20))) for i in range(3)]
    source = files_module.FilesSource(paths[:2] * 5)  # listed ten times, decoded twice
    source.open()
    assert len(source._images) == 10 and source._images[0] is source._images[2]
    source.close()
    with pytest.raises(ConfigError, match=r"2\.png: the images up to this one decode to"):
        files_module.FilesSource(paths).open()
