"""Proving a model loadable where a crash cannot take the daemon with it.

A corrupt flatbuffer can crash the TFLite runtime itself: one changed byte in a valid model
is enough for `allocate_tensors()` or `invoke()` to segfault, and no `except` catches that.
So before the daemon (or `classify`) loads a model it has no reason to trust, a short-lived
child process loads it, allocates its tensors and runs it once on a zero input, exactly as
the daemon is about to (`run_once`). Only if the child reports success does the daemon load
the model itself. A crash, a hang or a runtime error in the child is a `ModelError`.

The child is forked, not spawned: it starts in milliseconds with the runtime already
imported, instead of paying the interpreter's import again (seconds on a Pi). It then
touches nothing another thread of the parent might hold a lock on (no logging, no stdio
buffers), does the trial and leaves with `os._exit`. It:

* writes its stdout and stderr into an in-memory file the parent reads (the runtime's
  lines go to the debug log; a crash report quotes the runtime's last one);
* cannot dump core (PR_SET_DUMPABLE 0: a corrupt model is not worth a coredump entry);
* is the OOM killer's first choice (oom_score_adj 1000), and where setrlimit is allowed
  (not under the unit's SystemCallFilter, where MemoryMax bounds it instead) its data may
  grow by at most TRIAL_MEMORY_BYTES, so a model claiming a huge tensor fails in the child
  instead of exhausting the machine;
* is killed after TRIAL_TIMEOUT_S, under the unit's 30 s watchdog (a reload runs on the
  loop's thread).
"""

from __future__ import annotations

import contextlib
import ctypes
import faulthandler
import json
import logging
import os
import resource
import select
import signal
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pi_daemon.errors import ModelError
from pi_daemon.native_stderr import RUNTIME_LINE, anonymous_file

log = logging.getLogger(__name__)

TRIAL_TIMEOUT_S = 20.0
# Working memory a trial may add: far more than any model a Pi 4B runs (Lite0 needs ~20 MiB).
TRIAL_MEMORY_BYTES = 1 << 30
_MAX_REPORT_BYTES = 1 << 16
_STAGES = {"load": "loading it", "run": "running it"}


def run_once(interpreter: Any, model_path: Path) -> None:
    """What the daemon does with an interpreter, once, on a zero input: read the tensor
    details and the op list, write every input, invoke, read every output.

    ModelError (one line) if any of it fails, e.g. "Input tensor 3 lacks data".
    """
    try:
        inputs = interpreter.get_input_details()
        outputs = interpreter.get_output_details()
        with contextlib.suppress(Exception):  # optional: the classifier copes without it
            interpreter._get_ops_details()
        for detail in inputs:
            interpreter.set_tensor(detail["index"], np.zeros(detail["shape"], detail["dtype"]))
            interpreter.tensor(detail["index"])()
        interpreter.invoke()
        for detail in outputs:
            interpreter.get_tensor(detail["index"])
            interpreter.tensor(detail["index"])()
    except Exception as error:
        message = " ".join(str(error).split()) or type(error).__name__
        raise ModelError(f"{model_path}: the interpreter cannot run it: {message}") from None


def prove_loadable(
    model_path: Path,
    backend: str = "auto",
    num_threads: int = 2,
    timeout_s: float = TRIAL_TIMEOUT_S,
) -> None:
    """Load and run the model once in a child process; ModelError unless that worked."""
    import importlib.metadata  # noqa: F401 - the child asks it the backend's version

    from pi_daemon.backends import import_backend

    # Everything the child needs is imported and looked up here, before the fork: the child
    # then takes no lock (an import's, the dynamic loader's) that another thread may hold.
    import_backend(backend)
    no_core_dumps = _prctl_no_core_dumps()
    started = time.monotonic()
    try:
        output = anonymous_file("pi-daemon-trial-output")
        report_r, report_w = os.pipe2(os.O_CLOEXEC)
    except OSError as error:
        raise ModelError(f"{model_path}: cannot set up a trial process: {error}") from None
    try:
        with warnings.catch_warnings():
            # Python 3.12+ warns about fork() with threads running. The child only runs
            # the trial (no lock another thread could hold) and then _exit()s.
            warnings.simplefilter("ignore", DeprecationWarning)
            try:
                pid = os.fork()
            except OSError as error:  # EAGAIN, ENOMEM: the trial cannot prove anything
                raise ModelError(
                    f"{model_path}: cannot start a trial process to prove it: {error}"
                ) from None
        if pid == 0:  # the child: never returns
            os.close(report_r)
            _child(report_w, output, model_path, backend, num_threads, no_core_dumps)
        os.close(report_w)
        report_w = -1
        report, status = _collect(pid, report_r, timeout_s)
        said = _runtime_lines(output)
    finally:
        os.close(report_r)
        if report_w >= 0:
            os.close(report_w)
        os.close(output)
    log.debug("trial of %s took %.2f s", model_path, time.monotonic() - started)
    _verdict(model_path, report, status, said, timeout_s)


def _collect(pid: int, report_fd: int, timeout_s: float) -> tuple[list[str], int | None]:
    """The child's report lines and its wait status (None: killed after the timeout)."""
    deadline = time.monotonic() + timeout_s
    chunks: list[bytes] = []
    size = 0
    reaped = False
    try:
        poller = select.poll()
        poller.register(report_fd, select.POLLIN)
        while (left := deadline - time.monotonic()) > 0:
            if not poller.poll(max(1, int(left * 1000))):
                continue
            chunk = os.read(report_fd, 4096)
            if not chunk:
                break  # the child exited (or closed the pipe)
            if size < _MAX_REPORT_BYTES:
                chunks.append(chunk)
                size += len(chunk)
        else:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            reaped = True
            return _lines(chunks), None
        _, status = os.waitpid(pid, 0)
        reaped = True
        return _lines(chunks), status
    finally:
        if not reaped:  # KeyboardInterrupt or another surprise: never leave it behind
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)


def _lines(chunks: list[bytes]) -> list[str]:
    return b"".join(chunks).decode("utf-8", "replace").splitlines()


def _runtime_lines(output_fd: int) -> list[str]:
    text = os.pread(output_fd, _MAX_REPORT_BYTES, 0).decode("utf-8", "replace")
    said = []
    for line in text.splitlines():
        log.debug("trial process said: %s", line)
        if RUNTIME_LINE.match(line):
            said.append(line)
    return said


def _verdict(
    model_path: Path, report: list[str], status: int | None, said: list[str], timeout_s: float
) -> None:
    stage = "load"
    for line in report:
        kind, _, rest = line.partition(" ")
        if kind == "stage":
            stage = rest
        elif kind == "ok":
            return
        elif kind == "error":
            raise ModelError(str(json.loads(rest)))
    doing = _STAGES.get(stage, stage)
    if status is None:
        raise ModelError(
            f"{model_path}: {doing} took longer than {timeout_s:.0f} s in a trial process "
            "(killed): the file is corrupt or far too large for this device"
        )
    last = f"; the runtime said: {said[-1]}" if said else ""
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        name = signal.Signals(number).name if number in signal.valid_signals() else number
        why = " (out of memory?)" if number == signal.SIGKILL else ""
        raise ModelError(
            f"{model_path}: the interpreter crashed ({name}{why}) {doing} in a trial "
            f"process{last}: the file is corrupt or not a model this runtime can run"
        )
    raise ModelError(
        f"{model_path}: the trial process {doing} exited with status "
        f"{os.waitstatus_to_exitcode(status)} without a verdict{last}"
    )


def _child(
    report_fd: int,
    output_fd: int,
    model_path: Path,
    backend: str,
    threads: int,
    no_core_dumps: Callable[[], None],
) -> None:
    """The trial itself, in the forked child. Ends the process; never returns."""
    try:
        os.dup2(output_fd, 1)
        os.dup2(output_fd, 2)
        # Python's stdio objects may be locked by a parent thread that was writing: fresh
        # ones on the same descriptors (dup2'd above) cannot be.
        sys.stdout = sys.stderr = open(1, "w", closefd=False)  # noqa: SIM115
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
            signal.signal(signum, signal.SIG_DFL)
        faulthandler.disable()  # a crash here is the verdict, not a traceback for the journal
        logging.disable(logging.CRITICAL)
        _contain(no_core_dumps)
        from pi_daemon.backends import load_interpreter

        _report(report_fd, "stage load")
        loaded = load_interpreter(model_path, backend, threads)
        _report(report_fd, "stage run")
        run_once(loaded.interpreter, model_path)
        _report(report_fd, "ok")
    except BaseException as error:
        text = str(error) if isinstance(error, ModelError) else f"{model_path}: {error!r}"
        with contextlib.suppress(BaseException):
            _report(report_fd, "error " + json.dumps(" ".join(text.split())[:2000]))
    finally:
        os._exit(0)


def _report(fd: int, line: str) -> None:
    os.write(fd, line.encode() + b"\n")


def _prctl_no_core_dumps() -> Callable[[], None]:
    """prctl(PR_SET_DUMPABLE, 0), looked up in the parent (dlopen takes the loader's lock)."""
    pr_set_dumpable = 4
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return lambda: None
    return lambda: prctl(pr_set_dumpable, 0, 0, 0, 0)


def _contain(no_core_dumps: Callable[[], None]) -> None:
    """No core dump, first in line for the OOM killer, bounded memory: each if allowed."""
    with contextlib.suppress(Exception):
        no_core_dumps()
    with contextlib.suppress(OSError), open("/proc/self/oom_score_adj", "w") as adj:
        adj.write("1000")
    with contextlib.suppress(OSError, ValueError):
        limit = _vm_data_bytes() + TRIAL_MEMORY_BYTES
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))


def _vm_data_bytes() -> int:
    with open("/proc/self/status", "rb") as status:
        for line in status:
            if line.startswith(b"VmData:"):
                return int(line.split()[1]) * 1024
    raise ValueError("no VmData in /proc/self/status")
