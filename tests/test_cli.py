"""Every command-line argument, bad: one `pi-daemon:` line naming it, exit 64 (EX_USAGE).

Arguments are validated by argparse types in cli.py, before anything is loaded: a bench
of `--seconds nan` used to run until killed, `--replay-size 99999999x99999999` died with a
traceback, `--top 0` exited 70 and `--threads 0` blamed the model file.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from pi_daemon.cli import main
from pi_daemon.errors import EX_USAGE
from tests.conftest import REPO, TEST_MODELS, assert_one_line_error

BAD_ARGUMENTS = [
    (["bench", "--seconds", "nan"], "argument --seconds: must be a finite number"),
    (["bench", "--seconds", "inf"], "argument --seconds: must be a finite number"),
    (["bench", "--seconds", "-1"], "argument --seconds"),
    (["bench", "--seconds", "0"], "argument --seconds: must be a finite number"),
    (["bench", "--seconds", "1e9"], "at most 3600"),
    (["bench", "--seconds", "soon"], "expected a number of seconds"),
    (["bench", "--replay-size", "99999999x99999999"], "must be 8 to 4096 pixels"),
    (["bench", "--replay-size", "0x0"], "must be 8 to 4096 pixels"),
    (["bench", "--replay-size", "640"], "expected WIDTHxHEIGHT"),
    (["bench", "--replay-size", "640x-480"], "expected WIDTHxHEIGHT"),
    (["bench", "--frames", "5"], "argument --frames: must be 20 to"),
    (["bench", "--frames", "1e3"], "expected a whole number"),
    (["bench", "--frames", "9" * 40], "expected a whole number"),
    (["bench", "--threads", "0"], "argument --threads: must be 1 to 64"),
    (["bench", "--threads", "2", "x"], "argument --threads: expected a whole number"),
    (["bench", "--frames", "30", "--seconds", "2"], "not allowed with argument"),
    (["bench", "--replay", "camera"], "argument --replay: invalid choice"),
    (["run", "--max-frames", "0"], "argument --max-frames: must be at least 1, got 0"),
    (["run", "--max-frames", "-3"], "argument --max-frames: must be at least 1"),
    (["run", "--max-frames", "many"], "argument --max-frames: expected a whole number"),
    (["classify", "x.jpg", "--top", "0"], "argument --top: must be 1 to 100, got 0"),
    (["classify", "x.jpg", "--top", "101"], "argument --top: must be 1 to 100"),
    (["classify", "x.jpg", "--threads", "0"], "argument --threads: must be 1 to 64, got 0"),
    (["classify", "x.jpg", "--threads", "²"], "argument --threads: expected a whole number"),
    (["classify", "x.jpg", "--crop", "zoom"], "argument --crop: invalid choice"),
    (["classify", "x.jpg", "--backend", "tpu"], "argument --backend: invalid choice"),
    (["classify"], "the following arguments are required: IMAGE"),
    (["run", "--colour"], "unrecognized arguments: --colour"),
    (["frobnicate"], "argument COMMAND: invalid choice"),
    ([], "the following arguments are required: COMMAND"),
]


@pytest.mark.parametrize(("argv", "fragment"), BAD_ARGUMENTS, ids=lambda a: " ".join(a))
def test_bad_argument_is_one_line_exit_64(
    argv: list[str], fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == EX_USAGE
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("pi-daemon: "), err
    assert fragment in lines[0], lines[0]


def test_bad_arguments_through_the_real_process(
    cli: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    result = cli("bench", "--seconds", "nan", timeout=30)
    assert_one_line_error(result, EX_USAGE, "--seconds", "'nan'")


def test_help_and_version_still_exit_0(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--version"], ["classify", "--help"]):
        with pytest.raises(SystemExit) as done:
            main(argv)
        assert done.value.code == 0
    assert "pi-daemon" in capsys.readouterr().out


def test_a_file_name_that_is_not_utf8_with_strict_utf8_stdout(tmp_path: Path) -> None:
    """The name is printed with its own bytes, the other images too, and nothing crashes."""
    red = tmp_path / "red.png"
    Image.new("RGB", (40, 40), (255, 0, 0)).save(red)
    odd = os.fsencode(tmp_path) + b"/caf\xe9-\xff.png"  # Latin-1 bytes: not UTF-8
    Path(os.fsdecode(odd)).write_bytes(red.read_bytes())
    blue = tmp_path / "blue.png"
    Image.new("RGB", (40, 40), (0, 0, 255)).save(blue)
    model = TEST_MODELS / "tiny_uint8.tflite"
    done = subprocess.run(
        [
            sys.executable.encode(),
            b"-m",
            b"pi_daemon",
            b"classify",
            os.fsencode(red),
            odd,
            os.fsencode(tmp_path) + b"/missing-\xe9.png",
            os.fsencode(blue),
            b"--model",
            os.fsencode(model),
            b"--labels",
            os.fsencode(TEST_MODELS / "tiny_labels.txt"),
        ],
        capture_output=True,
        env={**os.environ, "PYTHONIOENCODING": "utf-8:strict", "LC_ALL": "C.UTF-8"},
        cwd=REPO,
        timeout=60,
    )
    assert b"Traceback" not in done.stderr, done.stderr
    assert done.returncode == 66, done.stderr  # the missing one
    lines = done.stdout.splitlines()
    assert [line.split(b": ")[0] for line in lines] == [os.fsencode(red), odd, os.fsencode(blue)]
    assert lines[1].split(b": ")[1].startswith(b"class_0")
    assert done.stderr.count(b"pi-daemon: ") == 1 and b"image file not found" in done.stderr


def test_classify_into_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    red = tmp_path / "red.png"
    Image.new("RGB", (40, 40), (255, 0, 0)).save(red)
    model = ["--model", str(TEST_MODELS / "tiny_uint8.tflite")]
    labels = ["--labels", str(TEST_MODELS / "tiny_labels.txt")]
    command = [sys.executable, "-m", "pi_daemon", "classify", *[str(red)] * 200, *model, *labels]
    reader = subprocess.Popen(["head", "-n", "1"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    writer = subprocess.run(
        command, stdout=reader.stdin, stderr=subprocess.PIPE, cwd=REPO, timeout=120
    )
    assert reader.stdin is not None
    reader.stdin.close()
    assert reader.wait(30) == 0
    assert b"Traceback" not in writer.stderr, writer.stderr
    assert writer.returncode in (0, 141), writer.stderr
