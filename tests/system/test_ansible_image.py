"""site.yml against a loop-mounted SD-card image: what building or updating an image does.

The provisioned root filesystem (`converged_rootfs`) is copied onto an ext4 image,
loop-mounted, and provisioned through the chroot connection, as an image build would.
There, Ansible's `is_chroot` fact says "not a chroot" (no /proc, and / is inode 2), so
these tests also stand for every root that looks booted and is not. In the image the
swap tools (swapon, swapoff, dphys-swapfile) are diverted with dpkg-divert to stubs that
only log their arguments, so nothing here can ever turn swap on for this machine; each
test that could reach them checks `swapon --show` here before and after.

In order, on the same image:

1. swap_apply: true is not obeyed on an image: the guard wants evidence of a booted host;
2. a size that is configured but not in use is applied by the next run, whatever that run
   changed (the guard is forced open once, onto the stubs only);
3. a corrupt model with no manifest fails the smoke test and nothing is switched;
4. a release whose venv or pip install fails on a full disk leaves nothing half-made, and
   the next run with space builds it and switches to it;
5. a run whose config fails the new release's check-config switches nothing; the fixed
   re-run switches, `previous` names the release before, and a third run changes nothing.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.system import nspawn
from tests.system import rootfs as rf
from tests.system.ansible_checks import (
    HostState,
    assert_failed,
    assert_nothing_changed,
    assert_ok,
    assert_says,
    release_id,
)
from tests.system.conftest import TIMINGS, ConvergedRootfs
from tests.system.wheels import BUNDLED_MODEL, derive_wheel

pytestmark = [pytest.mark.system, pytest.mark.slow]

HOST = "sd-image"
IMAGE_MIB = 3072  # sparse: only what is written takes space here
# Small enough to fit the image (the role checks the size against the disk); not 2048,
# the size the converged root filesystem was configured with, so the swap role has a
# change to make.
SWAP_MB = 256
SWAP_TOOLS = ("/sbin/swapon", "/sbin/swapoff", "/sbin/dphys-swapfile")
STUB_LOG = "var/log/diverted-swap-tools.log"
STUB = f"""#!/bin/sh
# tests/system/test_ansible_image.py: a diverted swap tool. It never swaps.
echo "${{0##*/}} $*" >> /{STUB_LOG}
"""


@dataclass
class Image:
    root: Path  # where the image is mounted
    inventory: Path
    work: Path

    def run(self, *args: str, **extra_vars: object) -> rf.PlaybookRun:
        return rf.run_playbook(self.inventory, *args, extra_vars=extra_vars)

    def chroot(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return rf.chroot(self.root, *argv)

    @property
    def stub_calls(self) -> list[str]:
        log = self.root / STUB_LOG
        return log.read_text(encoding="utf-8").splitlines() if log.exists() else []


def divert_swap_tools(root: Path) -> None:
    """dpkg-divert every swap tool inside the image and put a logging stub in its place."""
    for tool in SWAP_TOOLS:
        rf.run(["chroot", root, "dpkg-divert", "--local", "--rename", "--add", tool])
        stub = root / tool.lstrip("/")
        stub.write_text(STUB, encoding="utf-8")
        stub.chmod(0o755)
    assert_swap_tools_diverted(root)


def assert_swap_tools_diverted(root: Path) -> None:
    diversions = rf.run(["chroot", root, "dpkg-divert", "--list"]).stdout
    for tool in SWAP_TOOLS:
        assert f"local diversion of {tool} to {tool}.distrib" in diversions, diversions
        assert (root / tool.lstrip("/")).read_text(encoding="utf-8") == STUB, tool


def free_mib(path: Path) -> int:
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize // (1024 * 1024)


@pytest.fixture(scope="module")
def image(
    converged_rootfs: ConvergedRootfs, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Image]:
    started = time.monotonic()
    work = tmp_path_factory.mktemp("sd-image")
    disk = work / "sd.img"
    with disk.open("wb") as handle:
        handle.truncate(IMAGE_MIB * 1024 * 1024)
    # -m 0: no blocks reserved for root, so "free" means the same to root and to statvfs.
    rf.run(["mkfs.ext4", "-q", "-F", "-m", "0", "-L", "pi-root", disk])
    root = work / "root"
    root.mkdir()
    rf.run(["mount", "-o", "loop", disk, root])
    try:
        rf.run(["cp", "-a", f"{converged_rootfs.root}/.", root])
        divert_swap_tools(root)
        inventory = rf.write_inventory(
            work / "image.yml",
            "pis",
            # The dangerous setting, on purpose: the role must refuse to apply swap here.
            {HOST: rf.chroot_host_vars(root, swap_apply=True, swap_size_mb=SWAP_MB)},
        )
        TIMINGS["image: make, mount and copy the root filesystem"] = time.monotonic() - started
        yield Image(root, inventory, work)
    finally:
        subprocess.run(["umount", root / "proc"], capture_output=True, check=False)
        rf.run(["umount", root])
        disk.unlink()


@pytest.fixture(scope="module")
def next_wheel(pi_daemon_wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return derive_wheel(pi_daemon_wheel, tmp_path_factory.mktemp("next-wheel"), "0.1.1")


def is_chroot_fact(image: Image) -> str:
    result = subprocess.run(
        [
            rf.ansible_tool("ansible"),
            "-i",
            str(image.inventory),
            HOST,
            "-m",
            "ansible.builtin.setup",
            "-a",
            "filter=ansible_is_chroot",
        ],
        cwd=rf.ANSIBLE_DIR,
        env=dict(os.environ, ANSIBLE_CONFIG=str(rf.ANSIBLE_DIR / "ansible.cfg")),
        capture_output=True,
        text=True,
        check=False,
    )
    match = re.search(r'"?ansible_is_chroot"?: (\w+)', result.stdout)
    assert match, result.stdout + result.stderr
    return match.group(1)


# --- 1. The swap guard ------------------------------------------------------------------


def test_swap_apply_is_refused_on_a_mounted_image(image: Image) -> None:
    # What the old guard relied on: here Ansible says this is not a chroot.
    assert is_chroot_fact(image) == "false"
    swaps_before = nspawn.host_swaps()
    run = image.run("--tags", "swap")
    TIMINGS["image: swap role with swap_apply true"] = run.seconds
    assert_ok(run, "the swap role on a mounted image")
    conf = (image.root / "etc/dphys-swapfile").read_text(encoding="utf-8")
    assert f"\nCONF_SWAPSIZE={SWAP_MB}\n" in conf, conf
    assert "swap : Set the swap size in the dphys-swapfile config." in run.changed_tasks()
    assert_says(run, r"^TASK \[swap : Apply the dphys-swapfile size now\.\]\s*\*+\nskipping:")
    assert image.stub_calls == []
    assert nspawn.host_swaps() == swaps_before


# --- 2. The swap size in use, from state ---------------------------------------------------


def test_a_configured_swap_size_not_in_use_is_applied_by_the_next_run(image: Image) -> None:
    # The size was written by the previous test's run and never applied (as by a run that
    # failed after writing it). This run changes nothing in the config; with a changed
    # flag it would apply nothing. The guard is forced open, which is safe only because
    # the tools it reaches are the stubs (checked first); /proc is mounted so that the
    # role reads this machine's /proc/swaps, where the image's swap file is not active.
    assert_swap_tools_diverted(image.root)
    swaps_before = nspawn.host_swaps()
    rf.run(["mount", "-t", "proc", "proc", image.root / "proc"])
    try:
        run = image.run("--tags", "swap", swap_apply_effective=True)
    finally:
        rf.run(["umount", image.root / "proc"])
    assert_ok(run, "the swap role, guard forced open onto the stubs")
    assert list(run.changed_results()) == ["swap : Apply the dphys-swapfile size now."], (
        run.changed_tasks()
    )
    assert image.stub_calls == [f"dphys-swapfile {step}" for step in ("swapoff", "setup", "swapon")]
    assert nspawn.host_swaps() == swaps_before


# --- 3. A corrupt model with no manifest --------------------------------------------------


def test_a_corrupt_model_without_a_manifest_fails_the_smoke_test_and_switches_nothing(
    image: Image, pi_daemon_wheel: Path, tmp_path: Path
) -> None:
    bundled = rf.REPO / BUNDLED_MODEL
    model = tmp_path / "cut-short.tflite"
    model.write_bytes(bundled.read_bytes()[: bundled.stat().st_size // 3])
    labels = tmp_path / "labels.txt"
    shutil.copyfile(bundled.with_name("imagenet_labels.txt"), labels)
    before = HostState.of(image.root)
    run = image.run(
        "--tags",
        "pi_daemon",
        pi_daemon_wheel=str(pi_daemon_wheel),
        pi_daemon_model_file=str(model),
        pi_daemon_model_labels_file=str(labels),
    )
    TIMINGS["image: corrupt model, stopped by the smoke test"] = run.seconds
    assert_failed(run, HOST, "a corrupt model")
    assert_says(run, "Release 0.1.0-", "with model cut-short.tflite", "failed the smoke test")
    assert_says(run, "Nothing was switched: this host still runs release")
    assert HostState.of(image.root) == before


# --- 4. A full disk ----------------------------------------------------------------------


def fill_to(root: Path, leave_mib: int) -> Path:
    filler = root / "var/tmp/filler"
    filler.unlink(missing_ok=True)
    size = free_mib(root) - leave_mib
    assert size > 0, free_mib(root)
    rf.run(["fallocate", "-l", f"{size}MiB", filler])
    return filler


@pytest.mark.parametrize(
    ("leave_mib", "failed_task", "why"),
    [
        # venv's ensurepip runs out of space (venv keeps ensurepip's own output).
        (8, "Create the release's venv", "ensurepip"),
        (100, "Install the wheel and its dependencies into the venv.", "No space left on device"),
    ],
    ids=["venv", "pip"],
)
def test_a_release_that_fails_to_build_on_a_full_disk_leaves_nothing_behind(
    image: Image, next_wheel: Path, leave_mib: int, failed_task: str, why: str
) -> None:
    release = release_id(next_wheel)
    before = HostState.of(image.root)
    filler = fill_to(image.root, leave_mib)
    try:
        run = image.run("--tags", "pi_daemon", pi_daemon_wheel=str(next_wheel))
    finally:
        filler.unlink()
    assert_failed(run, HOST, f"building on a full disk ({leave_mib} MiB free)")
    assert_says(
        run,
        rf'^Building release {re.escape(release)} failed at\s+"{re.escape(failed_task)}',
        why,
        "The unfinished build was removed and nothing was switched",
    )
    releases = image.root / "opt/pi-daemon/releases"
    assert sorted(p.name for p in releases.iterdir()) == list(before.releases)
    assert HostState.of(image.root) == before


def test_the_next_run_with_space_builds_the_release_and_switches_to_it(
    image: Image, next_wheel: Path
) -> None:
    before = HostState.of(image.root)
    run = image.run("--tags", "pi_daemon", pi_daemon_wheel=str(next_wheel))
    TIMINGS["image: build and switch to a new release"] = run.seconds
    assert_ok(run, "the run after the full disk")
    release = release_id(next_wheel)
    after = HostState.of(image.root)
    assert after.link("current") == f"releases/{release}"
    assert after.link("previous") == before.link("current")
    assert set(after.releases) == {release, before.link("current").removeprefix("releases/")}
    version = image.chroot("/opt/pi-daemon/venv/bin/pi-daemon", "--version")
    assert version.stdout.strip() == "pi-daemon 0.1.1", version.stdout + version.stderr
    # Built through its final name: nothing in the venv names the build directory.
    venv = image.root / "opt/pi-daemon/releases" / release / "venv"
    scripts = [p for p in (venv / "bin").iterdir() if p.is_file() and not p.is_symlink()]
    texts = [venv / "pyvenv.cfg", *scripts]
    assert not [p for p in texts if b".partial" in p.read_bytes()]
    # The corrupt model of test 3 is gone with the switch; only the current one is left.
    models = image.root / "opt/pi-daemon/models"
    assert sorted(p.name for p in models.iterdir() if not p.is_symlink()) == [
        os.readlink(models / "current")
    ]


# --- 5. A config that fails validation -------------------------------------------------


def test_a_config_that_fails_check_config_switches_nothing_and_the_fixed_rerun_does(
    image: Image, pi_daemon_wheel: Path
) -> None:
    before = HostState.of(image.root)
    # Going back to the first release (the README's "re-run the playbook with the old
    # wheel"), with a section the daemon does not know in the free-form TOML.
    old = {"pi_daemon_wheel": str(pi_daemon_wheel)}
    bad = image.run(
        "--tags", "pi_daemon", **old, pi_daemon_config_extra='[camera]\ncolour = "red"\n'
    )
    assert_failed(bad, HOST, "a config the release rejects")
    assert_says(bad, "failed its `pi-daemon check-config`", "camera: unknown key")
    assert_says(bad, "was not replaced and nothing was switched")
    assert HostState.of(image.root) == before  # no link moved; no config.toml.<pid>~ left

    fixed = image.run("--tags", "pi_daemon", **old)
    assert_ok(fixed, "the fixed re-run")
    after = HostState.of(image.root)
    assert after.link("current") == f"releases/{release_id(pi_daemon_wheel)}"
    assert after.link("previous") == before.link("current") != after.link("current")
    assert after.etc_pi_daemon == ("config.toml",)

    again = image.run("--tags", "pi_daemon", **old)
    assert_nothing_changed(again, HOST, "a third run")
    assert HostState.of(image.root) == after
