"""A provisioned host booted with systemd as PID 1: pi-daemon as an operator runs it.

A clone of the root filesystem that site.yml provisioned (`converged_rootfs`) boots under
`systemd-nspawn -b` (tests/system/nspawn.py), with the daemon on the `files` source and a
config whose sensor paths point at files this test writes. One container serves every
test here, in order; each test starts from the same baseline (`baseline()`): the test
config, no test drop-in, the service freshly active. Everything is asserted from what
an operator sees: `systemctl show`, `journalctl -u pi-daemon -o json` inside the
container, and the files on it.

Each test runs on bookworm (systemd 252) and on trixie (systemd 257, Python 3.13): the
`host` fixture is parametrized by suite, one container at a time. The heat test and the
playbook against the live container run on bookworm only (`BOOKWORM_ONLY`): the first is
the daemon's own logic, the second the fleet path that test_fleet.py covers.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pi_daemon.events import MESSAGE_IDS, Event
from tests.system import nspawn
from tests.system import rootfs as rf
from tests.system.conftest import TIMINGS, for_suite
from tests.system.nspawn import UNIT, Container, events, wait_for

pytestmark = [pytest.mark.system, pytest.mark.slow]

# What the bundled demo photos are classified as by the bundled Lite0 int8 model.
DEMO_LABELS = {"tiger cat", "espresso", "missile"}
SHOW = ("ActiveState", "SubState", "Result", "NRestarts", "ExecMainStatus", "StatusText")
SUITES = ("bookworm", "trixie")
BOOKWORM_ONLY = pytest.mark.parametrize("host", ["bookworm"], indirect=True)
TRIXIE_ONLY = pytest.mark.parametrize("host", ["trixie"], indirect=True)


@dataclass
class Host:
    container: Container
    model: dict[str, str]
    baseline_config: str
    cgroups_before: dict[Path, set[str]]
    started: float
    suite: str

    @property
    def root(self) -> Path:
        return self.container.root

    @property
    def label(self) -> str:
        """Appended to timing names: bookworm's stay as they always were."""
        return "" if self.suite == "bookworm" else f" ({self.suite})"


@pytest.fixture(scope="module", params=SUITES)
def host(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Host]:
    suite = request.param
    converged_rootfs, rootfs_factory = for_suite(request, suite)
    # Timing names: bookworm's as they always were, trixie's marked.
    label = "" if suite == "bookworm" else f" ({suite})"
    cgroups_before = nspawn.prepare_host_for_containers()
    started = time.monotonic()
    root = rootfs_factory.clone(converged_rootfs.root, "nspawn-single")
    nspawn.disable_swap_units(root)
    nspawn.seed_sensors(root)
    model = nspawn.installed_model(root)
    baseline = nspawn.daemon_config(model)
    nspawn.write_config(root, baseline)
    containers, seconds = nspawn.boot_all({"pi-single": root}, tmp_path_factory.mktemp("nspawn"))
    TIMINGS[f"nspawn: clone + boot one container{label}"] = time.monotonic() - started
    TIMINGS[f"nspawn: boot alone{label}"] = seconds
    container = containers["pi-single"]
    try:
        yield Host(container, model, baseline, cgroups_before, started, suite)
    finally:
        container.close()
        TIMINGS[f"nspawn: single-host tests, boot to teardown{label}"] = time.monotonic() - started


# --- helpers ------------------------------------------------------------------------------


def state(c: Container, *extra: str) -> dict[str, str]:
    return c.show(UNIT, *SHOW, *extra)


def wait_active(c: Container, timeout: float = 60) -> dict[str, str]:
    def probe() -> dict[str, str] | None:
        now = state(c, "InvocationID", "MainPID")
        return now if (now["ActiveState"], now["SubState"]) == ("active", "running") else None

    return wait_for(f"{UNIT} active (running)", probe, timeout)


def wait_events(
    c: Container, kind: str, after: str | None, count: int = 1, timeout: float = 30
) -> list[dict]:
    def probe() -> list[dict] | None:
        found = events(c, kind, after)
        return found if len(found) >= count else None

    return wait_for(f"{count} {kind} event(s)", probe, timeout, interval=0.3)


def baseline(h: Host) -> dict[str, str]:
    """The baseline every test starts from: test config, no drop-in, active, 50 °C."""
    c = h.container
    nspawn.set_temperature(c, 50.0)
    restart = False
    if c.read("/etc/pi-daemon/config.toml") != h.baseline_config:
        nspawn.write_config(h.root, h.baseline_config)
        restart = True
    dropin = h.root / nspawn.TEST_DROPIN.lstrip("/")
    if dropin.exists():
        dropin.unlink()
        c.check("systemctl", "daemon-reload")
        restart = True
    now = state(c)
    if restart or (now["ActiveState"], now["SubState"]) != ("active", "running"):
        c.systemctl("reset-failed", UNIT)
        result = c.systemctl("restart", UNIT)
        assert result.returncode == 0, (
            f"baseline restart failed: {result.stderr}\n{journal_tail(c)}"
        )
    return wait_active(c)


def journal_tail(c: Container, lines: int = 40) -> str:
    return c.run("journalctl", "--no-pager", "-u", UNIT, "-n", str(lines)).stdout


def write_dropin(h: Host, text: str) -> None:
    h.container.write(nspawn.TEST_DROPIN, "# tests/system/test_nspawn.py\n[Service]\n" + text)
    h.container.check("systemctl", "daemon-reload")


def messages(entries: list[dict]) -> str:
    return "\n".join(str(e.get("MESSAGE", "")) for e in entries)


# --- 1. Start -----------------------------------------------------------------------------


def test_start_reaches_running_through_notify_with_journal_fields(host: Host) -> None:
    c = host.container
    assert c.check("cat", "/proc/1/comm").strip() == "systemd"
    now = wait_active(c)
    props = c.show(UNIT, "Type", "NotifyAccess", "WatchdogUSec", "InvocationID")
    assert props["Type"] == "notify" and props["NotifyAccess"] == "main", props
    assert props["WatchdogUSec"] == "30s", props
    invocation = props["InvocationID"]

    # Wait for two full summaries, so results, a ready and summaries are all there.
    wait_events(c, "summary", None, count=2)
    entries = [
        e
        for e in events(c)
        if e.get("_SYSTEMD_INVOCATION_ID") == invocation and "PI_DAEMON_EVENT" in e
    ]
    by_kind: dict[str, list[dict]] = {}
    for entry in entries:
        by_kind.setdefault(entry["PI_DAEMON_EVENT"], []).append(entry)
        assert entry["MESSAGE_ID"] == MESSAGE_IDS[Event(entry["PI_DAEMON_EVENT"])]
        assert entry["SYSLOG_IDENTIFIER"] == "pi-daemon"
        assert entry["_SYSTEMD_UNIT"] == UNIT
    assert {"start", "ready", "result", "summary"} <= by_kind.keys(), by_kind.keys()

    (start,) = by_kind["start"]
    assert start["MODEL_SHA256"] == host.model["sha256"]
    assert start["MODEL"] == "efficientnet-lite0-int8"
    assert start["NUM_THREADS"] == "1"
    assert start["BACKEND"] in ("litert", "tflite-runtime")
    (ready,) = by_kind["ready"]
    assert ready["FRAME_ID"] == "1" and ready["LABEL"] in DEMO_LABELS
    assert ready["MODEL_SHA256"] == host.model["sha256"]

    results = by_kind["result"]
    for result in results:
        assert {"FRAME_ID", "LABEL", "LABEL_INDEX", "SCORE", "LATENCY_MS"} <= result.keys()
        assert result["LABEL"] in DEMO_LABELS, result["MESSAGE"]
    espresso = [r for r in results if r["LABEL"] == "espresso"]
    assert espresso and float(espresso[0]["SCORE"]) > 0.9
    assert int(espresso[0]["LABEL_INDEX"]) == 967  # ImageNet's espresso

    for summary in by_kind["summary"]:
        fields = ("FPS", "FRAMES", "LATENCY_P50_MS", "LATENCY_P95_MS", "DROPPED_FRAMES")
        assert set(fields) <= summary.keys(), summary
        assert summary["THROTTLE_STATE"] == "normal"
        assert float(summary["CPU_TEMP_C"]) == 50.0
    assert float(by_kind["summary"][-1]["FPS"]) > 5  # fps = 10 in the config

    status = state(c)["StatusText"]
    assert re.fullmatch(r"\d+\.\d fps, \d+\.\d ms, 50\.0°C, normal, last: .+", status), status
    assert now["NRestarts"] == "0", now


# --- 4. Reload (SIGHUP) with a broken model --------------------------------------------------


def test_reload_with_a_broken_model_keeps_the_old_one_classifying(host: Host) -> None:
    c = host.container
    before = baseline(host)
    # A partial copy of the real model: it still starts with a TFLite header.
    real = (host.root / host.model["path"].lstrip("/")).read_bytes()
    broken = f"{nspawn.SENSOR_DIR}/broken.tflite"
    (host.root / broken.lstrip("/")).write_bytes(real[: len(real) // 3])
    (host.root / broken.lstrip("/")).chmod(0o644)
    broken_model = {"path": broken, "labels": host.model["labels"], "sha256": ""}
    nspawn.write_config(host.root, nspawn.daemon_config(broken_model))

    mark = c.cursor()
    result = c.systemctl("reload", UNIT)
    assert result.returncode == 0, f"{result.stderr}\n{journal_tail(c)}"
    (reload,) = wait_events(c, "reload", mark)
    assert reload["RESULT"] == "failed", reload
    assert reload["PRIORITY"] == "3"
    assert reload["MODEL_SHA256"] == host.model["sha256"]
    assert "reload failed, still running model efficientnet-lite0-int8" in reload["MESSAGE"]
    assert broken in reload["MESSAGE"] and "Flatbuffer" in reload["MESSAGE"], reload["MESSAGE"]

    # Still the same process, still classifying with the old model.
    after = wait_active(c)
    assert (after["MainPID"], after["InvocationID"]) == (before["MainPID"], before["InvocationID"])
    assert after["NRestarts"] == before["NRestarts"]
    summaries = wait_events(c, "summary", reload["__CURSOR"], count=2)
    assert all(int(s["FRAMES"]) > 0 for s in summaries), summaries
    results = events(c, "result", reload["__CURSOR"])
    assert results and {r["LABEL"] for r in results} <= DEMO_LABELS
    assert not events(c, "start", mark), "the service restarted"

    # Put the good config back: the next reload succeeds and says so.
    nspawn.write_config(host.root, host.baseline_config)
    mark = c.cursor()
    assert c.systemctl("reload", UNIT).returncode == 0
    (reload,) = wait_events(c, "reload", mark)
    assert reload["RESULT"] == "ok" and reload["MODEL_SHA256"] == host.model["sha256"], reload
    assert wait_active(c)["MainPID"] == before["MainPID"]


# --- 5. Heat --------------------------------------------------------------------------------


@BOOKWORM_ONLY
def test_rising_temperature_throttles_and_recovers(host: Host) -> None:
    c = host.container
    baseline(host)
    start = c.cursor()
    # Two full summaries at 50 °C give the unthrottled pace.
    cool = wait_events(c, "summary", start, count=2)[-1]
    fps = {"start": float(cool["FPS"])}
    assert fps["start"] > 5, cool

    mark = start
    plan = [(72.0, "warm"), (78.5, "hot"), (80.0, "critical"), (45.0, "normal")]
    statuses = {}
    try:
        for celsius, wanted in plan:
            nspawn.set_temperature(c, celsius)
            change = wait_for(
                f"throttle -> {wanted}",
                lambda mark=mark, wanted=wanted: [
                    e for e in events(c, "throttle", mark) if e["THROTTLE_STATE"] == wanted
                ],
                timeout=15,
            )[0]
            mark = change["__CURSOR"]
            # The second summary after the change covers a whole interval in that state.
            summary = wait_events(c, "summary", mark, count=2)[1]
            assert summary["THROTTLE_STATE"] == wanted, summary
            assert float(summary["CPU_TEMP_C"]) == celsius
            fps[wanted] = float(summary["FPS"])
            statuses[wanted] = state(c)["StatusText"]
    finally:
        nspawn.set_temperature(c, 50.0)

    changes = [
        (e["THROTTLE_PREVIOUS"], e["THROTTLE_STATE"], e["PRIORITY"])
        for e in events(c, "throttle", start)
    ]
    assert changes == [
        ("normal", "warm", "6"),
        ("warm", "hot", "4"),  # escalating into hot or critical is a WARNING
        ("hot", "critical", "4"),
        ("critical", "normal", "6"),
    ], changes
    assert fps["hot"] < 0.8 * fps["start"], fps  # the controller stretches the interval
    assert fps["critical"] == 0.0, fps  # critical pauses inference
    assert fps["normal"] > 0.8 * fps["start"], fps  # and it recovers
    assert "80.0°C, critical" in statuses["critical"], statuses
    TIMINGS["nspawn: heat fps (start/warm/hot/critical/normal)"] = " / ".join(
        f"{fps[k]:.1f}" for k in ("start", "warm", "hot", "critical", "normal")
    )


# --- 2. Watchdog ------------------------------------------------------------------------------


def test_watchdog_kills_a_hung_inference_and_systemd_restarts_it(host: Host) -> None:
    c = host.container
    baseline(host)
    faulty = nspawn.daemon_config(
        host.model, testing='[testing]\nfault = "hang-invoke"\nfault_after_frames = 10\n'
    )
    # The fault switch is refused without this variable: only a drop-in can arm it.
    write_dropin(host, "WatchdogSec=3s\nRestartSec=2s\nEnvironment=PI_DAEMON_ALLOW_FAULTS=1\n")
    try:
        nspawn.write_config(host.root, faulty)
        mark = c.cursor()
        assert c.systemctl("restart", UNIT).returncode == 0, journal_tail(c)
        # (Inference hangs from the 11th frame, about 1 s after READY=1; 3 s later the
        # watchdog fires.)
        before = state(c, "InvocationID", "WatchdogUSec")
        assert before["WatchdogUSec"] == "3s", before
        wait_for(
            "the injected hang",
            lambda: "inference hangs now" in messages(c.journal(UNIT, mark)),
            timeout=15,
        )
        # The next start must be healthy: take the fault out while this one hangs.
        nspawn.write_config(host.root, host.baseline_config)

        def watchdog_result() -> dict[str, str] | None:
            # Result turns "watchdog" at the timeout; the process is gone once
            # ExecMainCode is set, and systemd then waits RestartSec in auto-restart.
            now = state(c, "ExecMainCode")
            return now if now["Result"] == "watchdog" and now["ExecMainCode"] != "0" else None

        killed = wait_for("Result=watchdog", watchdog_result, timeout=15, interval=0.05)
        assert killed["ExecMainStatus"] == "6", killed  # SIGABRT
        assert killed["ExecMainCode"] in ("2", "3"), killed  # killed / dumped
        assert killed["SubState"] == "auto-restart", killed

        after = wait_active(c)
        assert after["InvocationID"] != before["InvocationID"]
        assert int(after["NRestarts"]) == int(before["NRestarts"]) + 1, (before, after)
        text = messages(c.journal(UNIT, mark))
        assert "Watchdog timeout (limit 3s)!" in text, text
        assert "with signal SIGABRT" in text, text
        assert "Failed with result 'watchdog'" in text, text
        # faulthandler dumped every thread's stack into the journal before dying.
        assert "Fatal Python error: Aborted" in text and "in classify" in text, text
        ready = wait_events(c, "ready", mark)
        assert ready[-1]["_SYSTEMD_INVOCATION_ID"] == after["InvocationID"]
        # Healthy again: summaries keep coming for longer than the watchdog timeout.
        later = c.cursor()
        summaries = wait_events(c, "summary", later, count=5, timeout=20)
        assert all(int(s["FRAMES"]) > 0 for s in summaries)
        assert state(c)["NRestarts"] == after["NRestarts"]
    finally:
        (host.root / nspawn.TEST_DROPIN.lstrip("/")).unlink(missing_ok=True)
        nspawn.write_config(host.root, host.baseline_config)
        c.systemctl("daemon-reload")
        c.systemctl("restart", UNIT)


# --- 3. Stop ------------------------------------------------------------------------------------


def test_stop_exits_zero_within_timeout_and_events_file_is_whole(host: Host) -> None:
    c = host.container
    baseline(host)
    wait_events(c, "summary", c.cursor(), count=2)
    limit_s = int(c.show(UNIT, "TimeoutStopUSec")["TimeoutStopUSec"].rstrip("s"))
    mark = c.cursor()
    started = time.monotonic()
    result = c.systemctl("stop", UNIT)
    took = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert took < limit_s, f"stop took {took:.1f} s (TimeoutStopSec={limit_s}s)"
    TIMINGS[f"nspawn: systemctl stop{host.label}"] = took
    after = state(c, "ExecMainCode")
    assert (after["ActiveState"], after["Result"]) == ("inactive", "success"), after
    assert (after["ExecMainCode"], after["ExecMainStatus"]) == ("1", "0"), after  # exited 0
    (stop,) = events(c, "stop", mark)
    assert stop["EXIT_CODE"] == "0"

    text = (host.root / nspawn.EVENTS_FILE.lstrip("/")).read_text(encoding="utf-8")
    assert text.endswith("\n")
    # Every line is whole, including those of the run the watchdog killed with SIGABRT.
    records = [json.loads(line) for line in text.splitlines()]
    # Every run's events begin with its start event (the file holds every event now).
    last_start = max(i for i, r in enumerate(records) if r["type"] == "start")
    last_run = records[last_start:]
    frames = [r["frame_id"] for r in last_run if r["type"] == "result"]
    assert frames == list(range(1, len(frames) + 1))
    assert len(frames) == int(stop["FRAMES"]), (len(frames), stop["MESSAGE"])
    # The final summary, then the stop event, were flushed before exit.
    assert [r["type"] for r in last_run[-2:]] == ["summary", "stop"], last_run[-3:]
    seqs = [r["seq"] for r in last_run]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "seq must rise by 1 per event"


# --- 6. Bad config --------------------------------------------------------------------------


def test_bad_config_fails_with_78_and_is_not_restarted(host: Host) -> None:
    c = host.container
    baseline(host)
    # A short RestartSec, so that a restart loop would show within the wait below.
    write_dropin(host, "RestartSec=1s\n")
    try:
        nspawn.write_config(host.root, host.baseline_config + '\n[camera]\ncolour = "red"\n')
        mark = c.cursor()
        result = c.systemctl("restart", UNIT)
        assert result.returncode != 0
        time.sleep(4)
        after = state(c, "ExecMainCode")
        assert (after["ActiveState"], after["SubState"]) == ("failed", "failed"), after
        assert (after["Result"], after["ExecMainStatus"]) == ("exit-code", "78"), after
        assert after["NRestarts"] == "0", after
        text = messages(c.journal(UNIT, mark))
        assert "camera: unknown key" in text, text
        assert "Scheduled restart job" not in text, text
        assert text.count("Starting pi-daemon.service") == 1, text
    finally:
        (host.root / nspawn.TEST_DROPIN.lstrip("/")).unlink(missing_ok=True)
        nspawn.write_config(host.root, host.baseline_config)
        c.systemctl("daemon-reload")
        c.systemctl("reset-failed", UNIT)
    baseline(host)


@TRIXIE_ONLY
def test_tflite_runtime_backend_on_python_313_fails_with_78_and_is_not_restarted(
    host: Host,
) -> None:
    c = host.container
    baseline(host)
    write_dropin(host, "RestartSec=1s\n")
    try:
        config = host.baseline_config.replace(
            "[model]\n", '[model]\nbackend = "tflite-runtime"\n', 1
        )
        assert config != host.baseline_config
        nspawn.write_config(host.root, config)
        mark = c.cursor()
        assert c.systemctl("restart", UNIT).returncode != 0
        time.sleep(4)
        after = state(c, "ExecMainCode")
        assert (after["ActiveState"], after["Result"]) == ("failed", "exit-code"), after
        assert (after["ExecMainStatus"], after["NRestarts"]) == ("78", "0"), after
        text = messages(c.journal(UNIT, mark))
        assert "tflite-runtime has no wheel for Python 3.13" in text, text
        assert "Traceback" not in text and "Scheduled restart job" not in text, text
    finally:
        (host.root / nspawn.TEST_DROPIN.lstrip("/")).unlink(missing_ok=True)
        nspawn.write_config(host.root, host.baseline_config)
        c.systemctl("daemon-reload")
        c.systemctl("reset-failed", UNIT)
    baseline(host)


# --- 7. The playbook against the live container ---------------------------------------------


@BOOKWORM_ONLY
def test_playbook_restarts_and_health_checks_against_live_systemd(
    host: Host, pi_daemon_wheel: Path, tmp_path: Path
) -> None:
    c = host.container
    before = baseline(host)
    inventory = rf.write_inventory(
        tmp_path / "live.yml", "pis", {"live-pi": nspawn.playbook_host_vars(c)}
    )
    extra = {"pi_daemon_wheel": str(pi_daemon_wheel)}
    run = rf.run_playbook(inventory, extra_vars=extra)
    TIMINGS["nspawn: site.yml against the live container"] = run.seconds
    assert run.returncode == 0, run.tail()
    counts = run.recap["live-pi"]
    assert counts["failed"] == 0 and counts["changed"] > 0, counts
    # The new config (rendered from the role's variables) made the handler restart it,
    # and the health check ran against real systemd and journald.
    assert "pi_daemon : Render the config." in run.changed_tasks(), run.changed_tasks()
    assert "pi_daemon : Restart pi-daemon" in run.changed_tasks(), run.changed_tasks()
    for task in (
        "Wait for pi-daemon to be active",
        "Wait for the first result in the journal since the restart.",
        "Check that the instance that reported its first result is the one running now.",
    ):
        assert re.search(
            rf"TASK \[pi_daemon : {re.escape(task)}.*\]\s*\*+\nok: \[live-pi\]", run.output
        ), task
    after = wait_active(c)
    assert after["InvocationID"] != before["InvocationID"]
    assert c.read("/etc/pi-daemon/config.toml").startswith("#\n# Managed by Ansible")
    ready = events(c, "ready")[-1]
    assert ready["_SYSTEMD_INVOCATION_ID"] == after["InvocationID"]

    # Against live systemd too, a second run (of the role that restarts) changes nothing
    # and restarts nothing.
    again = rf.run_playbook(inventory, "--tags", "pi_daemon", extra_vars=extra)
    TIMINGS["nspawn: site.yml again (idempotent, live)"] = again.seconds
    assert again.returncode == 0, again.tail()
    assert again.recap["live-pi"]["changed"] == 0, again.changed_tasks()
    assert wait_active(c)["InvocationID"] == after["InvocationID"]


# --- Hygiene ------------------------------------------------------------------------------


def test_teardown_leaves_no_container_cgroup_mount_or_swap(host: Host) -> None:
    host.container.close()
    assert nspawn.leftovers([host.container], host.cgroups_before) == []
    if not os.environ.get("PI_DAEMON_KEEP_ROOTFS"):
        rf.remove_tree(host.root)
        assert not host.root.exists()
