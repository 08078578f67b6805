"""A rolling rollout across a small fleet: three booted hosts, provisioned as `pis`.

Three clones of the provisioned root filesystem boot under systemd-nspawn, each in a
cgroup of its own (tests/system/nspawn.py), and site.yml reaches them through the chroot
connection with an nsenter wrapper as `ansible_chroot_exe`, so its restart and health
check tasks run against each host's real systemd and journald. In order:

1. one playbook run provisions all three (one batch);
2. a good release (the project's wheel, version bumped to 0.1.1) rolls out one host
   per batch (site.yml's serial: a canary, then 25 % at a time), with `--tags pi_daemon`
   as an operator rolls out a release;
3. a broken release (0.1.2, with a module the service loop needs left out of the wheel;
   it passes the role's smoke test and config check, which never import it) fails the
   health check on the canary: the play stops there (max_fail_percentage 0), the canary
   is rolled back to 0.1.1 and running again, and the other two hosts are never touched.

Everything is asserted from each host's journal and files, not from Ansible's output.
"""

from __future__ import annotations

import itertools
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.system import nspawn
from tests.system import rootfs as rf
from tests.system.conftest import TIMINGS, ConvergedRootfs, RootfsFactory
from tests.system.nspawn import UNIT, Container, events, wait_for
from tests.system.wheels import derive_wheel, drop_module

pytestmark = [pytest.mark.system, pytest.mark.slow]

HOSTS = ("pi-a", "pi-b", "pi-c")  # inventory order = rollout order
PREFIX = "/opt/pi-daemon"


# --- the fleet ---------------------------------------------------------------------------------


@dataclass
class Snapshot:
    """What "untouched" means for one host."""

    links: dict[str, str]
    config: bytes
    unit: bytes
    show: dict[str, str]
    cursor: str
    releases: list[str]


@dataclass
class Fleet:
    containers: dict[str, Container]
    inventory: Path
    extra_vars: dict[str, object]
    workdir: Path
    cgroups_before: dict[Path, set[str]]
    wheels: dict[str, Path] = field(default_factory=dict)
    releases: dict[str, str] = field(default_factory=dict)  # version -> release dir name

    def run(self, wheel: Path, *args: str, **extra: object) -> rf.PlaybookRun:
        return rf.run_playbook(
            self.inventory,
            *args,
            extra_vars={**self.extra_vars, "pi_daemon_wheel": str(wheel), **extra},
        )

    def link(self, name: str, path: str) -> str:
        return os.readlink(self.containers[name].root / path.lstrip("/"))

    def snapshot(self, name: str) -> Snapshot:
        c = self.containers[name]
        links = {
            path: self.link(name, f"{PREFIX}/{path}")
            for path in ("current", "previous", "venv", "models/current", "models/previous")
            if (c.root / PREFIX.lstrip("/") / path).is_symlink()
        }
        return Snapshot(
            links=links,
            config=(c.root / "etc/pi-daemon/config.toml").read_bytes(),
            unit=(c.root / "etc/systemd/system" / UNIT).read_bytes(),
            show=c.show(UNIT, "ActiveState", "SubState", "InvocationID", "MainPID", "NRestarts"),
            cursor=c.cursor(),
            releases=sorted(p.name for p in (c.root / PREFIX.lstrip("/") / "releases").iterdir()),
        )


@pytest.fixture(scope="module")
def fleet(
    converged_rootfs: ConvergedRootfs,
    rootfs_factory: RootfsFactory,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Fleet]:
    cgroups_before = nspawn.prepare_host_for_containers()
    workdir = tmp_path_factory.mktemp("fleet")
    started = time.monotonic()
    roots = {}
    for name in HOSTS:
        root = rootfs_factory.clone(converged_rootfs.root, f"fleet-{name}")
        nspawn.disable_swap_units(root)
        nspawn.seed_sensors(root)
        # Start healthy at boot (files source), rather than crash-looping without a camera.
        nspawn.write_config(root, nspawn.daemon_config(nspawn.installed_model(root), fps=5.0))
        roots[name] = root
    TIMINGS["fleet: clone 3 root filesystems"] = time.monotonic() - started
    containers, seconds = nspawn.boot_all(roots, workdir)
    TIMINGS["fleet: boot 3 containers at once"] = seconds
    try:
        inventory = rf.write_inventory(
            workdir / "fleet.yml",
            "pis",
            {name: nspawn.playbook_host_vars(c) for name, c in containers.items()},
        )
        yield Fleet(containers, inventory, {}, workdir, cgroups_before)
    finally:
        for container in containers.values():
            container.close()
        TIMINGS["fleet: clone to teardown"] = time.monotonic() - started


def release_of(fleet: Fleet, name: str) -> str:
    return fleet.link(name, f"{PREFIX}/current").removeprefix("releases/")


def daemon_runs(c: Container, after: str | None = None) -> list[dict[str, dict]]:
    """Per invocation since `after`: its start, ready and stop events (those it has)."""
    runs: dict[str, dict[str, dict]] = {}
    for entry in events(c, None, after):
        if entry["PI_DAEMON_EVENT"] in ("start", "ready", "stop"):
            runs.setdefault(entry["_SYSTEMD_INVOCATION_ID"], {})[entry["PI_DAEMON_EVENT"]] = entry
    return list(runs.values())


def ansible_entries(c: Container, after: str) -> list[str]:
    """What Ansible's modules logged on the host: every module run sends
    "ansible-<module> Invoked with ..." to the journal (python3-systemd is installed)."""
    return [
        str(e["MESSAGE"])[:160]
        for e in c.journal(None, after)
        if re.match(r"ansible-\S+ Invoked with", str(e.get("MESSAGE", "")))
    ]


def assert_running_release(fleet: Fleet, name: str, version: str, sha256: str) -> dict:
    """The host runs `version` (its journal's latest start says so) and is healthy."""
    c = fleet.containers[name]
    show = wait_for(
        f"{name} active",
        lambda: (
            (s := c.show(UNIT, "ActiveState", "SubState", "InvocationID"))["SubState"] == "running"
            and s
        ),
        timeout=60,
    )
    run = next(
        r
        for r in daemon_runs(c)
        if r.get("start", {}).get("_SYSTEMD_INVOCATION_ID") == show["InvocationID"]
    )
    assert f"pi-daemon {version}:" in run["start"]["MESSAGE"], (name, run["start"]["MESSAGE"])
    assert run["start"]["MODEL_SHA256"] == sha256, name
    assert "ready" in run, f"{name}: no ready event from the running instance"
    assert release_of(fleet, name).startswith(f"{version}-"), (name, release_of(fleet, name))
    return run


# --- 1. Provision ----------------------------------------------------------------------------


def test_fleet_is_provisioned_in_one_playbook_run(fleet: Fleet, pi_daemon_wheel: Path) -> None:
    marks = {name: c.cursor() for name, c in fleet.containers.items()}
    run = fleet.run(pi_daemon_wheel, rollout_serial=len(HOSTS))  # one batch
    TIMINGS["fleet: provision 3 hosts, one run (one batch)"] = run.seconds
    assert run.returncode == 0, run.tail()
    assert run.output.count("PLAY [Provision the Pi fleet]") == 1
    version = pi_daemon_wheel.name.split("-")[1]
    for name, c in fleet.containers.items():
        counts = run.recap[name]
        assert counts["failed"] == 0 and counts["changed"] > 0, (name, counts)
        assert c.read("/etc/pi-daemon/config.toml").startswith("#\n# Managed by Ansible")
        sha = nspawn.installed_model(c.root)["sha256"]
        assert_running_release(fleet, name, version, sha)
        # The health check's restart: a fresh ready in this host's journal.
        assert any("ready" in r for r in daemon_runs(c, marks[name])), name
        assert ansible_entries(c, marks[name]), f"{name}: no Ansible module logged there"
    fleet.releases[version] = release_of(fleet, HOSTS[0])


# --- 2. A good release, batch by batch ------------------------------------------------------


def test_good_release_rolls_out_one_batch_at_a_time(fleet: Fleet, pi_daemon_wheel: Path) -> None:
    assert fleet.releases, "the fleet was not provisioned"
    (old_version,) = fleet.releases
    wheel = derive_wheel(pi_daemon_wheel, fleet.workdir, "0.1.1")
    fleet.wheels["0.1.1"] = wheel
    marks = {name: c.cursor() for name, c in fleet.containers.items()}
    sha = nspawn.installed_model(fleet.containers[HOSTS[0]].root)["sha256"]

    # How an operator rolls out a release (ansible/README.md, Tags): only the pi_daemon
    # role, with site.yml's own serial, [1, '25%']: one host per batch for three hosts.
    run = fleet.run(wheel, "--tags", "pi_daemon")
    TIMINGS["fleet: good release, 3 batches"] = run.seconds
    assert run.returncode == 0, run.tail()
    assert run.output.count("PLAY [Provision the Pi fleet]") == len(HOSTS)  # one per batch

    handover = {}
    for name, c in fleet.containers.items():
        assert run.recap[name]["failed"] == 0, run.recap
        new = assert_running_release(fleet, name, "0.1.1", sha)
        assert fleet.link(name, f"{PREFIX}/previous") == f"releases/{fleet.releases[old_version]}"
        assert fleet.link(name, f"{PREFIX}/venv") == "current/venv"
        (old,) = [r for r in daemon_runs(c, marks[name]) if "stop" in r and "start" not in r]
        handover[name] = (
            int(old["stop"]["__REALTIME_TIMESTAMP"]),
            int(new["ready"]["__REALTIME_TIMESTAMP"]),
        )
    # Batch by batch, from the journals: a host's old instance stopped only after the
    # previous batch's new instance had classified its first frame.
    for earlier, later in itertools.pairwise(HOSTS):
        assert handover[earlier][1] < handover[later][0], (earlier, later, handover)
    fleet.releases["0.1.1"] = release_of(fleet, HOSTS[0])


# --- 3. A broken release stops on the canary and is rolled back ------------------------------


def test_broken_release_fails_the_canary_which_is_rolled_back_and_the_rest_untouched(
    fleet: Fleet, pi_daemon_wheel: Path
) -> None:
    assert "0.1.1" in fleet.releases, "the good release did not roll out"
    canary, *others = HOSTS
    broken = derive_wheel(pi_daemon_wheel, fleet.workdir, "0.1.2", drop_module("governor"))
    before = {name: fleet.snapshot(name) for name in HOSTS}
    good_sha = nspawn.installed_model(fleet.containers[canary].root)["sha256"]

    run = fleet.run(broken, "--tags", "pi_daemon")
    TIMINGS["fleet: broken release, stopped after the canary"] = run.seconds
    assert run.returncode != 0, run.tail()
    assert "NO MORE HOSTS LEFT" in run.output, run.tail()
    assert run.recap[canary]["failed"] == 1 and run.recap[canary]["rescued"] >= 1, run.recap
    assert run.output.count("PLAY [Provision the Pi fleet]") == 1  # only the first batch
    assert re.search(r"rolled-back service is\s+healthy", run.output), run.tail()
    # It names what it rolled back to: the release and model that last passed here.
    rolled_back = (
        rf"Rolled back to release\s+{fleet.releases['0.1.1']}\s+and model\s+{good_sha[:12]}"
    )
    assert re.search(rolled_back, run.output), run.tail()

    # The canary: the broken release was installed, failed, and was rolled back.
    c = fleet.containers[canary]
    after = fleet.snapshot(canary)
    assert after.links["current"] == f"releases/{fleet.releases['0.1.1']}", after.links
    assert after.links["models/current"] == good_sha, after.links
    # previous still names the release before 0.1.1, never the one now current again.
    assert after.links["previous"] == before[canary].links["previous"] != after.links["current"]
    assert after.config == before[canary].config  # the config was put back too
    assert any(r.startswith("0.1.2-") for r in after.releases), after.releases
    text = "\n".join(str(e.get("MESSAGE", "")) for e in c.journal(UNIT, before[canary].cursor))
    assert "No module named 'pi_daemon.governor'" in text, text
    assert "status=1/FAILURE" in text, text
    run_now = assert_running_release(fleet, canary, "0.1.1", good_sha)
    assert run_now["start"]["_SYSTEMD_INVOCATION_ID"] != before[canary].show["InvocationID"]
    failed_at = max(
        int(e["__REALTIME_TIMESTAMP"])
        for e in c.journal(UNIT, before[canary].cursor)
        if "status=1/FAILURE" in str(e.get("MESSAGE", ""))
    )
    assert int(run_now["ready"]["__REALTIME_TIMESTAMP"]) > failed_at  # a fresh ready after

    # The other hosts: nothing changed, nothing restarted, Ansible never ran there.
    for name in others:
        now = fleet.snapshot(name)
        then = before[name]
        assert now.links == then.links, name
        assert (now.config, now.unit, now.releases) == (then.config, then.unit, then.releases)
        assert now.show == then.show, (name, then.show, now.show)
        other = fleet.containers[name]
        assert not [r for r in daemon_runs(other, then.cursor) if r], name
        assert not ansible_entries(other, then.cursor), (name, ansible_entries(other, then.cursor))
        assert name not in run.recap or run.recap[name]["ok"] == 0, run.recap


# --- Hygiene -------------------------------------------------------------------------------------


def test_fleet_teardown_leaves_no_container_cgroup_mount_or_swap(fleet: Fleet) -> None:
    for c in fleet.containers.values():
        c.close()
    assert nspawn.leftovers(fleet.containers.values(), fleet.cgroups_before) == []
    if not os.environ.get("PI_DAEMON_KEEP_ROOTFS"):
        for c in fleet.containers.values():
            rf.remove_tree(c.root)
            assert not c.root.exists()
