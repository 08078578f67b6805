"""Command line: `pi-daemon run | classify | check-config | bench | --version`.

Every anticipated failure is a PiDaemonError: printed as one line on stderr and
turned into its sysexits code. Only a genuine bug produces a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn, TextIO

from pi_daemon import __version__
from pi_daemon.config import DEFAULT_CONFIG_PATH, load_config
from pi_daemon.errors import EX_OK, PiDaemonError, UsageError
from pi_daemon.logsetup import setup_logging, shutdown_logging

PROG = "pi-daemon"

# Bounds shared with the config where a flag overrides a key there (model.num_threads,
# model.top_k), and sane limits elsewhere: a bench of more than an hour per run, or a replay
# frame larger than the 16.8 MP an image may decode to, is a typo.
MAX_THREADS = 64
MAX_TOP_K = 100
MAX_BENCH_SECONDS = 3600.0
MAX_BENCH_FRAMES = 1_000_000
MIN_BENCH_FRAMES = 20
REPLAY_SIDE = (8, 4096)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one `pi-daemon: ...` line and exit 64 (EX_USAGE),
    like every other error, instead of the usage text and exit 2."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")


def _int_in(low: int, high: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if not re.fullmatch(r"[+-]?[0-9]{1,19}", text.strip()):
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}")
        value = int(text)
        if high is None and value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        if high is not None and not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be {low} to {high}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not math.isfinite(value) or not 0 < value <= MAX_BENCH_SECONDS:
        raise argparse.ArgumentTypeError(
            f"must be a finite number of seconds, above 0 and at most "
            f"{MAX_BENCH_SECONDS:.0f}, got {text!r}"
        )
    return value


def _replay_size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"([0-9]{1,12})[xX]([0-9]{1,12})", text.strip())
    low, high = REPLAY_SIDE
    if match is None:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 640x480, got {text!r}")
    width, height = int(match.group(1)), int(match.group(2))
    if not (low <= width <= high and low <= height <= high):
        raise argparse.ArgumentTypeError(
            f"width and height must be {low} to {high} pixels, got {text!r}"
        )
    return width, height


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Camera classification daemon for Raspberry Pi fleets.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run the service loop")
    run.add_argument(
        "--config",
        type=Path,
        default=None,
        help=f"config file (default {DEFAULT_CONFIG_PATH}; built-in defaults "
        "if that does not exist)",
    )
    run.add_argument(
        "--max-frames",
        type=_int_in(1),
        default=None,
        metavar="N",
        help="stop after N frames, N >= 1 (for trials and tests)",
    )

    classify = commands.add_parser("classify", help="print the top-k labels for images")
    classify.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    classify.add_argument(
        "--top", type=_int_in(1, MAX_TOP_K), default=3, metavar="K", help="labels per image"
    )
    classify.add_argument("--model", default="", help="model file (default: bundled)")
    classify.add_argument("--labels", default="", help="labels file (default: beside model)")
    classify.add_argument("--backend", default="auto", choices=["auto", "litert", "tflite-runtime"])
    classify.add_argument("--threads", type=_int_in(1, MAX_THREADS), default=2, metavar="N")
    classify.add_argument("--crop", default="center", choices=["center", "letterbox", "stretch"])

    check = commands.add_parser("check-config", help="validate a config file")
    check.add_argument("path", nargs="?", type=Path, default=DEFAULT_CONFIG_PATH)

    bench = commands.add_parser(
        "bench", help="measure bare interpreter vs full pipeline throughput, stages, RSS"
    )
    bench.add_argument("--config", type=Path, default=None, help="config file (as for run)")
    bench.add_argument("--model", default="", help="model file (default: the config's)")
    bench.add_argument(
        "--threads",
        type=_int_in(1, MAX_THREADS),
        nargs="+",
        default=None,
        metavar="N",
        help="interpreter thread counts (default: 1 and the config's num_threads)",
    )
    amount = bench.add_mutually_exclusive_group()
    amount.add_argument(
        "--frames",
        type=_int_in(MIN_BENCH_FRAMES, MAX_BENCH_FRAMES),
        default=500,
        metavar="N",
        help=f"frames per run (at least {MIN_BENCH_FRAMES})",
    )
    amount.add_argument("--seconds", type=_seconds, default=None, metavar="S", help="time per run")
    bench.add_argument("--json", action="store_true", help="print the report as JSON")
    bench.add_argument(
        "--float-model", default="", metavar="PATH", help="float32 twin (default: from a checkout)"
    )
    bench.add_argument(
        "--compare-python",
        default="",
        metavar="PATH",
        help="a python with tflite-runtime (and numpy<2) for the backend comparison",
    )
    bench.add_argument(
        "--replay-size",
        type=_replay_size,
        default=None,
        metavar="WxH",
        help="replay video frame size (default: the model input, like the Pi's lores stream)",
    )
    bench.add_argument(
        "--replay",
        default="images",
        choices=["images", "video"],
        help="replay decoded photos from memory (like camera buffers) or decode a video",
    )
    return parser


def write_line(stream: TextIO, text: str) -> None:
    """Print one line whatever the stream's encoding allows: a file name keeps the bytes
    the OS gave it (surrogateescape), anything else unencodable is escaped, never a crash."""
    buffer = getattr(stream, "buffer", None)
    if buffer is None:  # a StringIO in tests: holds any str
        stream.write(text + "\n")
        return
    encoding = getattr(stream, "encoding", None) or "utf-8"
    try:
        data = (text + "\n").encode(encoding, "surrogateescape")
    except UnicodeEncodeError:
        data = (text + "\n").encode(encoding, "backslashreplace")
    stream.flush()
    buffer.write(data)
    buffer.flush()


def _config_path(given: Path | None) -> Path | None:
    """The --config path, else the default file if it exists, else None (built-in defaults)."""
    if given is None and DEFAULT_CONFIG_PATH.exists():
        return DEFAULT_CONFIG_PATH
    return given


def _cmd_run(args: argparse.Namespace) -> int:
    from pi_daemon.app import run_service

    path = _config_path(args.config)
    config = load_config(path)
    setup_logging(config.output.log_level)
    # main() prints a failure as one line on stderr; the service has already recorded it
    # as an `error` event (journal fields, JSONL, MQTT) when it got that far.
    try:
        return run_service(config, path, args.max_frames)
    finally:
        # Drain the log queue before the process ends (the journal gets the last lines).
        shutdown_logging()


def _cmd_classify(args: argparse.Namespace) -> int:
    from pi_daemon.classifier import Classifier
    from pi_daemon.errors import EX_NOINPUT, InputError
    from pi_daemon.images import still_frame
    from pi_daemon.model import load_model

    model = load_model(
        args.model, labels=args.labels, backend=args.backend, num_threads=args.threads
    )
    classifier = Classifier(model, top_k=args.top, crop=args.crop)
    code = EX_OK
    for number, path in enumerate(args.images, 1):
        # One image's problem is one line; the other images are still classified.
        try:
            # Scaled once with Pillow, as a replay does: classify never loads OpenCV.
            frame = still_frame(path, number, classifier.preprocess.prescale)
        except InputError as error:
            write_line(sys.stderr, f"{PROG}: {error}")
            code = EX_NOINPUT
            continue
        top = classifier.classify(frame).top
        ranked = ", ".join(f"{p.label} {p.score:.3f}" for p in top)
        write_line(sys.stdout, f"{path}: {ranked}")
    return code


def _cmd_check_config(args: argparse.Namespace) -> int:
    load_config(args.path)
    print(f"{args.path}: OK")
    return EX_OK


def _cmd_bench(args: argparse.Namespace) -> int:
    from pi_daemon import bench

    path = _config_path(args.config)
    config = load_config(path)
    # Warnings only: the table is the output, and per-label log lines would bury it.
    setup_logging("warning", target="stderr")
    options = bench.BenchOptions(
        threads=args.threads or [],
        frames=args.frames,
        seconds=args.seconds,
        model=args.model,
        float_model=args.float_model,
        compare_python=args.compare_python,
        replay_size=args.replay_size,
        replay=args.replay,
    )
    try:
        return bench.main(config, path, options, args.json)
    finally:
        shutdown_logging()


def main(argv: Sequence[str] | None = None) -> int:
    handler = {
        "run": _cmd_run,
        "classify": _cmd_classify,
        "check-config": _cmd_check_config,
        "bench": _cmd_bench,
    }
    try:
        args = _parser().parse_args(argv)
        return handler[args.command](args)
    except PiDaemonError as error:
        logging.getLogger("pi_daemon").debug("exiting on %r", error)
        for line in str(error).splitlines() or [type(error).__name__]:
            write_line(sys.stderr, f"{PROG}: {line}")
        return error.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `pi-daemon classify ... | head`: the reader is gone. Say nothing more.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
