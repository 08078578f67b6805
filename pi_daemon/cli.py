"""Command line: `pi-daemon run | classify | check-config | bench | --version`.

Every anticipated failure is a PiDaemonError: printed as one line on stderr and
turned into its sysexits code. Only a genuine bug produces a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from pi_daemon import __version__
from pi_daemon.config import DEFAULT_CONFIG_PATH, load_config
from pi_daemon.errors import EX_OK, PiDaemonError
from pi_daemon.logsetup import logging_target, setup_logging, shutdown_logging

PROG = "pi-daemon"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Camera classification daemon for Raspberry Pi fleets."
    )
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
        type=int,
        default=None,
        metavar="N",
        help="stop after N frames (for trials and tests)",
    )

    classify = commands.add_parser("classify", help="print the top-k labels for images")
    classify.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    classify.add_argument("--top", type=int, default=3, metavar="K", help="labels per image")
    classify.add_argument("--model", default="", help="model file (default: bundled)")
    classify.add_argument("--labels", default="", help="labels file (default: beside model)")
    classify.add_argument("--backend", default="auto", choices=["auto", "litert", "tflite-runtime"])
    classify.add_argument("--threads", type=int, default=2)
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
        type=int,
        nargs="+",
        default=None,
        metavar="N",
        help="interpreter thread counts (default: 1 and the config's num_threads)",
    )
    amount = bench.add_mutually_exclusive_group()
    amount.add_argument("--frames", type=int, default=500, metavar="N", help="frames per run")
    amount.add_argument("--seconds", type=float, default=None, metavar="S", help="time per run")
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
        default="",
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
    try:
        return run_service(config, path, args.max_frames)
    except PiDaemonError as error:
        if logging_target() == "journal":
            # main() prints the one-line error on stderr as always; this copy carries
            # fields, so `journalctl PI_DAEMON_EVENT=error` finds why the service died.
            from pi_daemon.events import Event, emit

            emit(
                logging.getLogger(__name__),
                logging.ERROR,
                Event.ERROR,
                "exiting with code %d: %s",
                error.exit_code,
                "; ".join(str(error).splitlines()),
                exit_code=error.exit_code,
            )
        raise
    finally:
        # Drain the log queue before the process ends (the journal gets the last lines).
        shutdown_logging()


def _cmd_classify(args: argparse.Namespace) -> int:
    import time

    from pi_daemon.classifier import Classifier
    from pi_daemon.errors import EX_NOINPUT
    from pi_daemon.model import load_model
    from pi_daemon.preprocess import Frame
    from pi_daemon.sources.files import read_image

    if args.top < 1:
        raise PiDaemonError("--top must be at least 1")
    model = load_model(
        args.model, labels=args.labels, backend=args.backend, num_threads=args.threads
    )
    classifier = Classifier(model, top_k=args.top, crop=args.crop)
    code = EX_OK
    for number, path in enumerate(args.images, 1):
        try:
            image = read_image(path)
        except PiDaemonError as error:
            print(f"{PROG}: {error}", file=sys.stderr)
            code = EX_NOINPUT
            continue
        frame = Frame(image, "BGR", number, time.time(), time.monotonic())
        top = classifier.classify(frame).top
        ranked = ", ".join(f"{p.label} {p.score:.3f}" for p in top)
        print(f"{path}: {ranked}", flush=True)
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
        replay_size=bench.parse_size(args.replay_size) if args.replay_size else None,
        replay=args.replay,
    )
    try:
        return bench.main(config, path, options, args.json)
    finally:
        shutdown_logging()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handler = {
        "run": _cmd_run,
        "classify": _cmd_classify,
        "check-config": _cmd_check_config,
        "bench": _cmd_bench,
    }
    try:
        return handler[args.command](args)
    except PiDaemonError as error:
        logging.getLogger("pi_daemon").debug("exiting on %r", error)
        for line in str(error).splitlines() or [type(error).__name__]:
            print(f"{PROG}: {line}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        return 130
