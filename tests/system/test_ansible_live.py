"""site.yml against a booted host: restarts and rollbacks decided from what the host runs.

A clone of the provisioned root filesystem boots under systemd-nspawn (tests/system/
nspawn.py) with pi-daemon on the files source, and site.yml reaches it through the
nsenter wrapper with `--tags pi_daemon`, as an operator rolls out a release. In order:

1. a release whose config its own check-config rejects: the run fails before anything is
   switched, and the running service is not touched;
2. the fixed release, with pi_daemon_service_start: false: it switches without restarting,
   as a run does that dies between its switch and its restart;
3. the next run has nothing to switch and still restarts and health-checks the service,
   because what it runs has not passed a health check, and records it as known-good.

test_nspawn.py's second live run checks that a run after that restarts nothing, and
test_fleet.py's broken release that a failed health check rolls back to the known-good
state.

Everything is asserted from the host's files, systemd and journal.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from tests.system import nspawn
from tests.system import rootfs as rf
from tests.system.ansible_checks import (
    HostState,
    assert_failed,
    assert_ok,
    assert_says,
    release_id,
)
from tests.system.conftest import TIMINGS, ConvergedRootfs, RootfsFactory
from tests.system.nspawn import UNIT, Container, events, wait_for
from tests.system.wheels import derive_wheel

pytestmark = [pytest.mark.system, pytest.mark.slow]

HOST = "live-pi"
KNOWN_GOOD = "opt/pi-daemon/known-good/state.json"


@dataclass
class Live:
    container: Container
    inventory: Path
    workdir: Path
    cgroups_before: dict[Path, set[str]]

    @property
    def root(self) -> Path:
        return self.container.root

    def run(self, wheel: Path, *args: str, **extra: object) -> rf.PlaybookRun:
        return rf.run_playbook(
            self.inventory,
            "--tags",
            "pi_daemon",
            *args,
            extra_vars={"pi_daemon_wheel": str(wheel), **extra},
        )

    def show(self) -> dict[str, str]:
        return self.container.show(UNIT, "ActiveState", "SubState", "InvocationID")

    def known_good(self) -> dict[str, str]:
        return json.loads((self.root / KNOWN_GOOD).read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def live(
    converged_rootfs: ConvergedRootfs,
    rootfs_factory: RootfsFactory,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Live]:
    cgroups_before = nspawn.prepare_host_for_containers()
    workdir = tmp_path_factory.mktemp("live")
    started = time.monotonic()
    root = rootfs_factory.clone(converged_rootfs.root, "live-rollouts")
    nspawn.disable_swap_units(root)
    nspawn.seed_sensors(root)
    nspawn.write_config(root, nspawn.daemon_config(nspawn.installed_model(root), fps=5.0))
    containers, _ = nspawn.boot_all({HOST: root}, workdir)
    TIMINGS["live: clone + boot"] = time.monotonic() - started
    container = containers[HOST]
    try:
        inventory = rf.write_inventory(
            workdir / "live.yml", "pis", {HOST: nspawn.playbook_host_vars(container)}
        )
        yield Live(container, inventory, workdir, cgroups_before)
    finally:
        container.close()
        TIMINGS["live: clone to teardown"] = time.monotonic() - started


@pytest.fixture(scope="module")
def next_wheel(pi_daemon_wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return derive_wheel(pi_daemon_wheel, tmp_path_factory.mktemp("live-wheels"), "0.1.1")


def running(live: Live) -> dict:
    """The start event of the instance running now, once it is active and has its ready."""
    c = live.container

    def probe() -> dict | None:
        show = live.show()
        if (show["ActiveState"], show["SubState"]) != ("active", "running"):
            return None
        mine = [e for e in events(c) if e["_SYSTEMD_INVOCATION_ID"] == show["InvocationID"]]
        kinds = {e["PI_DAEMON_EVENT"]: e for e in mine}
        return kinds["start"] if "start" in kinds and "ready" in kinds else None

    return wait_for(f"{UNIT} active with its ready event", probe, timeout=60)


# --- 1. A config that fails validation --------------------------------------------------


def test_a_config_the_new_release_rejects_stops_the_run_and_the_service_runs_on(
    live: Live, next_wheel: Path
) -> None:
    first = running(live)
    before = HostState.of(live.root)
    shown = live.show()
    mark = live.container.cursor()
    run = live.run(
        next_wheel, pi_daemon_config_extra=nspawn.sensor_toml() + '\n[camera]\ncolour = "red"\n'
    )
    TIMINGS["live: release with a bad config, stopped before the switch"] = run.seconds
    assert_failed(run, HOST, "a config the new release rejects")
    assert_says(run, "failed its `pi-daemon check-config`", "nothing was switched")
    after = HostState.of(live.root)
    # The new release was built (and stays, complete, for the next run); nothing else moved.
    assert replace(after, releases=()) == replace(before, releases=())
    assert set(after.releases) == {*before.releases, release_id(next_wheel)}
    assert live.show() == shown, "the service was restarted"
    assert not events(live.container, "start", mark)
    assert "pi-daemon 0.1.0:" in first["MESSAGE"]


# --- 2. and 3. A switch without its restart, and the run after it --------------------------


def test_a_run_that_switches_without_restarting_leaves_the_old_instance_running(
    live: Live, next_wheel: Path
) -> None:
    shown = live.show()
    run = live.run(next_wheel, pi_daemon_service_start=False)
    assert_ok(run, "switching without a restart")
    after = HostState.of(live.root)
    assert after.link("current") == f"releases/{release_id(next_wheel)}"
    assert live.show() == shown
    assert "pi-daemon 0.1.0:" in running(live)["MESSAGE"]  # still the old code


def test_the_next_run_restarts_what_has_not_passed_a_health_check(
    live: Live, next_wheel: Path
) -> None:
    shown = live.show()
    run = live.run(next_wheel)
    TIMINGS["live: restart from state, nothing to switch"] = run.seconds
    assert_ok(run, "the run after the switch")
    changed = run.changed_tasks()
    # Nothing left to switch; with a changed flag this run would restart nothing.
    assert "pi_daemon : Make this release the current one." not in changed, changed
    assert "pi_daemon : Restart pi-daemon" in changed, changed
    assert_says(run, "Restarting pi-daemon: nothing passed a health check here yet")
    start = running(live)
    assert start["_SYSTEMD_INVOCATION_ID"] != shown["InvocationID"]
    assert "pi-daemon 0.1.1:" in start["MESSAGE"], start["MESSAGE"]
    assert live.known_good()["release"] == release_id(next_wheel)
    # A run after this one restarts nothing (test_nspawn.py's second live run checks it);
    # a release that then fails its health check is rolled back to this state
    # (test_fleet.py's broken release).


def test_a_new_mqtt_password_alone_restarts_the_service(live: Live, next_wheel: Path) -> None:
    """The daemon reads its broker credentials at start: a run that changes only the
    password must restart it (the state it is compared with counts the files). No broker
    is needed: an unreachable one is not fatal, and the health check waits for ready."""
    mqtt: dict[str, object] = {
        "pi_daemon_mqtt_enabled": True,
        "pi_daemon_mqtt_host": "127.0.0.1",
        "pi_daemon_mqtt_port": 1,
        "pi_daemon_mqtt_username": HOST,
        "pi_daemon_mqtt_password": "first password",
    }
    on = live.run(next_wheel, **mqtt)
    assert_ok(on, "MQTT on")
    first = running(live)
    password = live.root / "etc/pi-daemon/mqtt/password"
    assert password.read_text(encoding="utf-8") == "first password\n"

    rotated = live.run(next_wheel, **{**mqtt, "pi_daemon_mqtt_password": "second password"})
    assert_ok(rotated, "a new MQTT password")
    assert_says(rotated, "Restarting pi-daemon: its mqtt_files differ")
    second = running(live)
    assert second["_SYSTEMD_INVOCATION_ID"] != first["_SYSTEMD_INVOCATION_ID"]
    assert password.read_text(encoding="utf-8") == "second password\n"

    same = live.run(next_wheel, **{**mqtt, "pi_daemon_mqtt_password": "second password"})
    assert_ok(same, "the same password again")
    assert "Restarting pi-daemon" not in same.output
    assert running(live)["_SYSTEMD_INVOCATION_ID"] == second["_SYSTEMD_INVOCATION_ID"]

    off = live.run(next_wheel)
    assert_ok(off, "MQTT off again")
    assert_says(off, "Restarting pi-daemon:")
    running(live)
    assert not (live.root / "etc/pi-daemon/mqtt").exists()


def ours(problem: str) -> bool:
    """Whether a leftover can be this session's: another live test session on the same
    machine (a developer's, say) has its own containers' cgroups at the root meanwhile."""
    match = re.search(rf"/{nspawn.CGROUP_PREFIX}-(\d+)-", problem)
    return (
        not match
        or int(match.group(1)) == os.getpid()
        or not Path(f"/proc/{match.group(1)}").exists()
    )


def test_teardown_leaves_no_container_cgroup_mount_or_swap(live: Live) -> None:
    live.container.close()
    problems = nspawn.leftovers([live.container], live.cgroups_before)
    assert [problem for problem in problems if ours(problem)] == []
    if not os.environ.get("PI_DAEMON_KEEP_ROOTFS"):
        rf.remove_tree(live.root)
