"""journald: where logs go, which fields reach the journal, and a real journald to prove it.

The system tests start systemd-journald by hand in a private mount namespace (a tmpfs on
/run and on /var/log, a temp dir bound on /var/log/journal), run the real daemon inside that
namespace, and read the entries back with `journalctl --directory ... -o json`.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pi_daemon.events import FIELDS, MESSAGE_IDS, Event, fields_for
from pi_daemon.logsetup import choose_target, journal_available, make_journal_handler
from tests.conftest import REPO
from tests.test_notify import (
    BLUE,
    RED,
    TINY_INT8_MODEL,
    TINY_MODEL,
    DaemonProcess,
    solid_image,
    start_daemon_fixture,  # noqa: F401 - the start_daemon fixture
    write_config,
)

JOURNALD = next(
    (
        p
        for p in ("/lib/systemd/systemd-journald", "/usr/lib/systemd/systemd-journald")
        if os.path.exists(p)
    ),
    "/lib/systemd/systemd-journald",
)

# -- choosing the target -------------------------------------------------------------------


@pytest.fixture
def journal_socket(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "journal.socket"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    yield path
    sock.close()


def test_choose_target(tmp_path: Path, journal_socket: Path) -> None:
    with open(tmp_path / "stderr.txt", "w") as stream, open(tmp_path / "other", "w") as other:
        st = os.fstat(stream.fileno())
        ours = f"{st.st_dev}:{st.st_ino}"
        ost = os.fstat(other.fileno())
        theirs = f"{ost.st_dev}:{ost.st_ino}"
        missing = tmp_path / "no-journal"

        def target(env: dict[str, str], sock: Path = journal_socket) -> str:
            return choose_target(env, stream, sock)

        assert target({}) == "stderr"  # a shell on a systemd host: the person wants to read it
        assert target({"JOURNAL_STREAM": ours}) == "journal"
        # Inherited from a service, but stderr was redirected elsewhere.
        assert target({"JOURNAL_STREAM": theirs}) == "stderr"
        assert target({"JOURNAL_STREAM": "garbage"}) == "stderr"
        assert target({"INVOCATION_ID": "a" * 32}) == "journal"  # StandardError=null
        assert target({"INVOCATION_ID": "a" * 32}, missing) == "stderr"
        assert target({"JOURNAL_STREAM": ours, "PI_DAEMON_LOG_TARGET": "stderr"}) == "stderr"
        assert target({"PI_DAEMON_LOG_TARGET": "journal"}, missing) == "journal"


# -- what the handler sends ------------------------------------------------------------------


def test_journal_handler_sends_only_documented_fields() -> None:
    pytest.importorskip("systemd.journal", reason="systemd-python (the journald extra)")
    sent: list[tuple[str, dict[str, Any]]] = []
    handler = make_journal_handler(sender=lambda message, **fields: sent.append((message, fields)))
    assert handler is not None
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("pi_daemon.test_journald")
    record = logger.makeRecord(
        logger.name,
        logging.WARNING,
        __file__,
        42,
        "frame %d: %s",
        (7, "tabby"),
        None,
        extra=fields_for(Event.RESULT, frame_id=7, label="tabby", score=0.9),
    )
    handler.handle(record)
    message, fields = sent[0]
    assert message == "frame 7: tabby"
    assert fields["PI_DAEMON_EVENT"] == "result"
    assert fields["MESSAGE_ID"] == MESSAGE_IDS[Event.RESULT]
    assert (fields["FRAME_ID"], fields["LABEL"], fields["SCORE"]) == (7, "tabby", 0.9)
    assert fields["PRIORITY"] == "4" and fields["SYSLOG_IDENTIFIER"] == "pi-daemon"
    standard = {
        "PRIORITY",
        "LOGGER",
        "THREAD_NAME",
        "CODE_FILE",
        "CODE_LINE",
        "CODE_FUNC",
        "SYSLOG_IDENTIFIER",
    }
    # Stock JournalHandler would also send msg, args, created, taskName, CODE_ARGS, ...
    assert set(fields) <= standard | set(FIELDS), set(fields) - standard - set(FIELDS)


def test_without_systemd_python_logs_go_to_stderr_with_one_warning(tmp_path: Path) -> None:
    config = write_config(tmp_path, fps=0)
    # sys.modules["systemd"] = None makes `import systemd` fail as if it were not installed.
    code = textwrap.dedent(f"""
        import sys
        sys.modules["systemd"] = None
        from pi_daemon.cli import main
        sys.exit(main(["run", "--config", {str(config)!r}, "--max-frames", "3"]))
    """)
    env = {**os.environ, "PI_DAEMON_LOG_TARGET": "journal"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("systemd-python is not installed") == 1, result.stderr
    assert "ready: first frame classified" in result.stderr


# -- no journald: libsystemd would drop every line and report success ----------------------


def test_journal_available_probes_the_socket(tmp_path: Path, journal_socket: Path) -> None:
    assert journal_available(journal_socket) == ""
    assert "No such file or directory" in journal_available(tmp_path / "none")
    (tmp_path / "file").write_text("")
    assert "Connection refused" in journal_available(tmp_path / "file")


def test_a_line_logged_after_journald_went_away_goes_to_stderr(
    tmp_path: Path, journal_socket: Path
) -> None:
    pytest.importorskip("systemd.journal", reason="systemd-python (the journald extra)")
    fallback = io.StringIO()
    handler = make_journal_handler(fallback=fallback, journal_socket=journal_socket)
    assert handler is not None
    handler.setFormatter(logging.Formatter("%(message)s"))
    journal_socket.unlink()  # journald stopped: its socket is gone
    logger = logging.getLogger("pi_daemon.test_gone")
    for number in range(3):
        handler.handle(
            logger.makeRecord(logger.name, logging.INFO, "", 0, "line %d", (number,), None)
        )
    lines = fallback.getvalue().splitlines()
    assert lines[0].startswith("pi-daemon: journal send failed: ")
    assert lines[1:] == ["INFO line 0", "INFO line 1", "INFO line 2"]


@pytest.mark.system
def test_journal_target_without_journald_falls_back_to_stderr_losing_nothing(
    tmp_path: Path,
) -> None:
    """PI_DAEMON_LOG_TARGET=journal where no journald runs (an empty /run in a private mount
    namespace): one warning, then every line on stderr."""
    if os.geteuid() != 0:
        pytest.skip("SKIPPED LOUDLY: needs root for a private mount namespace (CI is root)")
    config = write_config(tmp_path, fps=0)
    command = [sys.executable, "-m", "pi_daemon", "run", "--config", str(config)]
    script = 'mount -t tmpfs tmpfs /run && exec "$@"'
    done = subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            "sh",
            *command,
            "--max-frames",
            "5",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PI_DAEMON_LOG_TARGET": "journal"},
        cwd=REPO,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("journald is not running here") == 1, done.stderr
    for line in ("pi-daemon 0.1.0: model tiny_uint8", "ready: first frame", "stopped after 5"):
        assert line in done.stderr, (line, done.stderr)


# -- a real journald -----------------------------------------------------------------------


class PrivateJournal:
    """systemd-journald in its own mount namespace, storing into `directory`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        setup = textwrap.dedent(f"""
            set -e
            mount -t tmpfs tmpfs /run
            # A tmpfs on /var/log too: never create /var/log/journal on the host (that would
            # switch a real host journald to persistent storage).
            mount -t tmpfs tmpfs /var/log
            mkdir -p /var/log/journal /run/systemd/journal /run/systemd/journald.conf.d
            mount --bind {directory} /var/log/journal
            # Write straight to /var/log/journal (as after systemd-journal-flush.service),
            # keep the host's kernel log out, and never drop our burst of lines.
            touch /run/systemd/journal/flushed
            printf '[Journal]\\nStorage=persistent\\nReadKMsg=no\\nRateLimitBurst=0\\n' \\
                > /run/systemd/journald.conf.d/test.conf
            exec {JOURNALD}
        """)
        self.proc = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", setup],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 15
        while not self._socket_ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"journald did not start: {self.proc.stderr.read()!r}")
            time.sleep(0.05)

    def _socket_ready(self) -> bool:
        check = self.enter(["test", "-S", "/run/systemd/journal/socket"])
        return subprocess.run(check, capture_output=True).returncode == 0

    def enter(self, command: list[str]) -> list[str]:
        """`command` run inside the journal's mount namespace (nsenter execs: same pid)."""
        return ["nsenter", "--target", str(self.proc.pid), "--mount", "--", *command]

    def entries(self, *matches: str) -> list[dict[str, Any]]:
        out = subprocess.run(
            [
                "journalctl",
                "--directory",
                str(self.directory),
                "-o",
                "json",
                "--no-pager",
                "SYSLOG_IDENTIFIER=pi-daemon",
                *matches,
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]

    def wait_for(self, count: int, timeout: float, *matches: str) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            found = self.entries(*matches)
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture(scope="module")
def private_journal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateJournal]:
    if os.geteuid() != 0:
        pytest.skip(
            "SKIPPED LOUDLY: the journald tests need root (unshare --mount, mount, "
            "systemd-journald); CI runs them as root"
        )
    for tool in ("unshare", "nsenter", "journalctl"):
        assert shutil.which(tool), f"{tool} missing (apt: util-linux / systemd)"
    # systemd-python is required here, not optional: fail, don't skip, without it.
    import systemd.journal  # noqa: F401

    journal = PrivateJournal(tmp_path_factory.mktemp("journal"))
    yield journal
    journal.stop()


# Run inside the namespace: connect stdout/stderr to journald's stream socket and set
# JOURNAL_STREAM, exactly as systemd does for StandardOutput=journal, then exec the daemon.
STREAM_WRAPPER = textwrap.dedent("""
    import os, sys
    from systemd import journal
    stream = journal.stream("pi-daemon")
    os.dup2(stream.fileno(), 1)
    os.dup2(stream.fileno(), 2)
    st = os.fstat(2)
    os.write(2, b"written on stderr before exec\\n")
    os.environ["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
    os.environ.pop("PI_DAEMON_LOG_TARGET", None)
    os.execv(sys.argv[1], sys.argv[1:])
""")


def _by_event(entries: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = {}
    for entry in entries:
        if "PI_DAEMON_EVENT" in entry:
            grouped.setdefault(entry["PI_DAEMON_EVENT"], []).append(entry)
    return grouped


@pytest.mark.system
def test_event_fields_reach_journald_through_the_journal_stream(
    tmp_path: Path,
    private_journal: PrivateJournal,
    start_daemon: Callable[..., DaemonProcess],
) -> None:
    images = [solid_image(tmp_path, "red", RED), solid_image(tmp_path, "blue", BLUE)]
    # Every result in the journal (the default, journal_results = "events", sends label
    # events only: tests/test_rules.py and tests/test_service_motion.py check those).
    rules = '[rules]\njournal_results = "changes"\n'
    config = write_config(tmp_path, images=images, fps=10, extra=rules)
    good = config.read_text()
    sha = hashlib.sha256(TINY_MODEL.read_bytes()).hexdigest()
    new_sha = hashlib.sha256(TINY_INT8_MODEL.read_bytes()).hexdigest()
    env = {"PI_DAEMON_LOG_TARGET": ""}
    daemon = start_daemon(
        config, env, prefix=private_journal.enter([sys.executable, "-c", STREAM_WRAPPER])
    )
    ready = private_journal.wait_for(1, 30, "PI_DAEMON_EVENT=ready")
    assert ready, private_journal.entries()
    private_journal.wait_for(2, 10, "PI_DAEMON_EVENT=summary")
    # A broken reload (ERROR), then a good one (INFO).
    config.write_text(good.replace(str(TINY_MODEL), "/nonexistent/model.tflite"))
    daemon.send(signal.SIGHUP)
    private_journal.wait_for(1, 10, "PI_DAEMON_EVENT=reload")
    config.write_text(good.replace(str(TINY_MODEL), str(TINY_INT8_MODEL)))
    daemon.send(signal.SIGHUP)
    private_journal.wait_for(2, 10, "PI_DAEMON_EVENT=reload")
    code, _ = daemon.stop()
    assert code == 0
    private_journal.wait_for(1, 10, "PI_DAEMON_EVENT=stop")
    entries = private_journal.entries(f"_PID={daemon.proc.pid}")
    events = _by_event(entries)

    for name, group in events.items():
        for entry in group:
            assert entry["MESSAGE_ID"] == MESSAGE_IDS[Event(name)], entry
            assert entry["_TRANSPORT"] == "journal"  # native, not the text stream
            assert "CODE_ARGS" not in entry and "PROCESS_NAME" not in entry
    assert {"start", "ready", "result", "summary", "reload", "stop"} <= set(events), set(events)

    (start,) = events["start"]
    assert start["MODEL_SHA256"] == sha and start["MODEL"] == "tiny_uint8"
    assert start["BACKEND"] and start["NUM_THREADS"] == "2"
    results = events["result"]
    (first,) = events["ready"]
    # A paced (live) source may drop a frame the loop was not ready for: not always 1.
    assert first["FRAME_ID"] == results[0]["FRAME_ID"] and first["MODEL_SHA256"] == sha
    assert first["LABEL"] == results[0]["LABEL"] and first["PRIORITY"] == "6"
    assert {r["LABEL"] for r in results} == {"class_0", "class_2"}  # red, blue alternate
    # CODE_* point at the code that reported the event, not at the emit() helper.
    assert results[0]["CODE_FILE"].endswith("sinks/log.py"), results[0]["CODE_FILE"]
    for result in results:
        assert 0.9 < float(result["SCORE"]) <= 1.0, result
        assert int(result["FRAME_ID"]) >= 1 and float(result["LATENCY_MS"]) >= 0
        assert result["LABEL_INDEX"] in ("0", "2")

    summary = events["summary"][0]
    assert float(summary["FPS"]) > 0 and int(summary["FRAMES"]) > 0
    assert float(summary["LATENCY_P50_MS"]) >= 0 and "DROPPED_FRAMES" in summary

    failed, reloaded = events["reload"]
    assert failed["PRIORITY"] == "3" and failed["RESULT"] == "failed"
    assert failed["MODEL_SHA256"] == sha  # the model still running
    assert "model file not found" in failed["MESSAGE"]
    assert reloaded["PRIORITY"] == "6" and reloaded["RESULT"] == "ok"
    assert reloaded["MODEL_SHA256"] == new_sha and reloaded["MODEL"] == "tiny_int8"

    (stop,) = events["stop"]
    assert stop["EXIT_CODE"] == "0" and int(stop["FRAMES"]) >= 10

    # The README's queries work: a field match returns that event and nothing else.
    only_results = private_journal.entries("PI_DAEMON_EVENT=result")
    assert only_results and {e["PI_DAEMON_EVENT"] for e in only_results} == {"result"}
    by_id = private_journal.entries(f"MESSAGE_ID={MESSAGE_IDS[Event.SUMMARY]}")
    assert {e["PI_DAEMON_EVENT"] for e in by_id} == {"summary"}
    # Anything printed on stderr still arrives, through the stream ...
    streamed = [e["MESSAGE"] for e in entries if e["_TRANSPORT"] == "stdout"]
    assert "written on stderr before exec" in streamed, streamed
    # ... but not the runtime's XNNPACK announcement: that goes to the debug log.
    assert not [e for e in entries if "XNNPACK" in str(e.get("MESSAGE"))], streamed


@pytest.mark.system
def test_a_service_without_journal_stream_still_logs_natively(
    tmp_path: Path,
    private_journal: PrivateJournal,
    start_daemon: Callable[..., DaemonProcess],
) -> None:
    """StandardError=null (no JOURNAL_STREAM) but INVOCATION_ID and the socket: journal."""
    config = write_config(tmp_path, fps=0)
    env = {"INVOCATION_ID": os.urandom(16).hex(), "PI_DAEMON_LOG_TARGET": ""}
    daemon = start_daemon(config, env, prefix=private_journal.enter([]))
    ours = f"_PID={daemon.proc.pid}"  # nsenter execs the daemon: same pid
    entries = private_journal.wait_for(1, 30, "PI_DAEMON_EVENT=ready", ours)
    assert entries, private_journal.entries()
    assert entries[0]["_TRANSPORT"] == "journal"
    code, _ = daemon.stop()
    assert code == 0
    stop = private_journal.wait_for(1, 10, "PI_DAEMON_EVENT=stop", ours)
    assert stop and stop[0]["EXIT_CODE"] == "0"
    # Nothing of ours went to stderr (only the interpreter library's own line, if any).
    assert "ready: first frame" not in daemon.log()


@pytest.mark.system
def test_an_error_exit_is_a_journal_event_with_its_exit_code(
    tmp_path: Path,
    private_journal: PrivateJournal,
    start_daemon: Callable[..., DaemonProcess],
) -> None:
    # The camera stops delivering after two frames; two stalls in a row give up with 69.
    config = write_config(
        tmp_path,
        extra='[testing]\nfault = "hang-capture"\nfault_after_frames = 2\n'
        "[capture]\nstall_timeout_s = 0.3\nmax_consecutive_failures = 2\n",
    )
    env = {
        "INVOCATION_ID": os.urandom(16).hex(),
        "PI_DAEMON_LOG_TARGET": "",
        "PI_DAEMON_ALLOW_FAULTS": "1",
    }
    daemon = start_daemon(config, env, prefix=private_journal.enter([]))
    assert daemon.wait(30) == 69, daemon.log()
    ours = f"_PID={daemon.proc.pid}"
    (error,) = private_journal.wait_for(1, 10, "PI_DAEMON_EVENT=error", ours)
    assert error["EXIT_CODE"] == "69" and error["PRIORITY"] == "3"
    assert error["MESSAGE_ID"] == MESSAGE_IDS[Event.ERROR] and "stalled" in error["MESSAGE"]
    faults = private_journal.entries("PI_DAEMON_EVENT=source_fault", ours)
    assert [f["FAILURES"] for f in faults] == ["1", "2"] and faults[0]["SOURCE"] == "files"
    assert faults[0]["PRIORITY"] == "4"
    # stderr (the journal stream under systemd) still gets the CLI's one-line error.
    assert "pi-daemon: source files" in daemon.log()
