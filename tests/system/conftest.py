"""Shared fixtures for the system tests: real root filesystems, provisioned by the playbook.

The expensive things are built once per session and shared:

* `bookworm_tarball`: a debootstrapped Debian 12 minbase (systemd, python3, dphys-swapfile,
  the BLAS packages), cached as `tar --zstd` under `.cache/system-tests/` across runs;
* `pi_daemon_wheel` and `target_wheelhouse`: the project's wheel, built like site.yml
  builds it, and its dependencies' wheels, so pip inside a root filesystem runs offline;
* `converged_rootfs`: a root filesystem that `ansible/site.yml` has provisioned. Tests
  must not change it (clone it with `rootfs_factory.clone()` first, e.g. to boot it);
* `rootfs_factory`: fresh or cloned root filesystems, removed at the end of the session
  (set PI_DAEMON_KEEP_ROOTFS=1 to keep them for a post-mortem);
* `converged_fleet`: a collector and a Pi (a clone of `converged_rootfs`) that one site.yml
  run provisioned together, with the fleet CA and the generated passwords beside its
  inventory. Clone them to boot them (test_fleet_collector.py).

The same for Debian 13 trixie (Python 3.13, systemd 257; no dphys-swapfile in the
minbase, as on a plain Debian host): `trixie_tarball`, `trixie_wheelhouse`,
`trixie_rootfs_factory`, `converged_trixie`. Every one is built by the same code with a
suite (`rootfs.SUITES`) and cached per suite and architecture; `for_suite(request, suite)`
gives a parametrized test the converged root filesystem and factory of its suite.

Everything here needs root; without it every test that asks for these fixtures is
skipped with the reason in the summary.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.system import rootfs as rf

# Timings reported at the end of the run (CI time this suite adds).
TIMINGS: dict[str, float | str] = {}


def pytest_terminal_summary(terminalreporter) -> None:
    if TIMINGS:
        terminalreporter.section("system test timings")
        for name, value in TIMINGS.items():
            shown = f"{value:.1f} s" if isinstance(value, float) else value
            terminalreporter.write_line(f"{name}: {shown}")


@pytest.fixture(scope="session")
def require_root() -> None:
    """Skip, loudly, when not root: debootstrap, chroot and tar --numeric-owner need it."""
    if os.geteuid() != 0:
        reason = (
            "SYSTEM TESTS NOT RUN: they need root (debootstrap, chroot); "
            "run `sudo make test` as CI does"
        )
        warnings.warn(reason, stacklevel=1)
        pytest.skip(reason)
    missing = [tool for tool in ("debootstrap", "zstd", "chroot", "tar") if not shutil.which(tool)]
    if missing:
        pytest.fail(
            f"missing tools {missing}: scripts/test.sh installs .ci/apt-packages.txt",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def system_cache(require_root) -> Path:
    return rf.cache_dir()


@pytest.fixture(scope="session")
def debian_mirror(require_root) -> str:
    """The host's own Debian mirror (never hard-coded: CI may sit behind a local one)."""
    return rf.debian_mirror("bookworm", rf.host_apt_sources())


def debootstrapped(suite: rf.Suite, mirror: str, cache: Path) -> Path:
    tarball, seconds = rf.debootstrap_tarball(suite.name, suite.include, mirror, cache)
    TIMINGS[f"debootstrap {suite.name}"] = seconds if seconds is not None else "cached"
    return tarball


@pytest.fixture(scope="session")
def bookworm_tarball(system_cache: Path, debian_mirror: str) -> Path:
    return debootstrapped(rf.SUITES["bookworm"], debian_mirror, system_cache)


@pytest.fixture(scope="session")
def trixie_tarball(system_cache: Path) -> Path:
    # The host (Debian 12 in CI) lists only bookworm: its mirror serves trixie too.
    mirror = rf.debian_mirror("trixie", rf.host_apt_sources(), fallback=rf.host_codename())
    return debootstrapped(rf.SUITES["trixie"], mirror, system_cache)


@pytest.fixture(scope="session")
def pi_daemon_wheel(require_root, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return rf.build_wheel(tmp_path_factory.mktemp("wheel"))


@pytest.fixture(scope="session")
def target_wheelhouse(pi_daemon_wheel: Path, system_cache: Path) -> Path:
    return rf.wheelhouse_for(pi_daemon_wheel, system_cache)


@pytest.fixture(scope="session")
def trixie_wheelhouse(pi_daemon_wheel: Path, system_cache: Path) -> Path:
    return rf.wheelhouse_for(pi_daemon_wheel, system_cache, rf.SUITES["trixie"])


@dataclass
class RootfsFactory:
    """Makes root filesystems under one session directory and removes them at the end."""

    base: Path
    tarball: Path
    wheelhouse: Path
    made: list[Path] = field(default_factory=list)

    def fresh(self, name: str) -> Path:
        """The cached bookworm minbase, unpacked and ready to be provisioned."""
        root = self._claim(name)
        rf.unpack(self.tarball, root)
        rf.prepare_root(root, self.wheelhouse)
        return root

    def clone(self, source: Path, name: str) -> Path:
        """A copy of another root filesystem (e.g. the converged one, to boot it)."""
        root = self._claim(name)
        root.rmdir()
        rf.run(["cp", "-a", "--reflink=auto", source, root])
        return root

    def _claim(self, name: str) -> Path:
        root = self.base / name
        if root.exists():
            raise FileExistsError(f"root filesystem {name} was already made this session")
        root.mkdir(parents=True)
        self.made.append(root)
        return root

    def cleanup(self) -> None:
        for root in reversed(self.made):
            rf.remove_tree(root)


def _factory(base: Path, tarball: Path, wheelhouse: Path) -> Iterator[RootfsFactory]:
    factory = RootfsFactory(base, tarball, wheelhouse)
    yield factory
    if os.environ.get("PI_DAEMON_KEEP_ROOTFS") != "1":
        factory.cleanup()


@pytest.fixture(scope="session")
def rootfs_factory(
    bookworm_tarball: Path,
    target_wheelhouse: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RootfsFactory]:
    yield from _factory(tmp_path_factory.mktemp("rootfs"), bookworm_tarball, target_wheelhouse)


@pytest.fixture(scope="session")
def trixie_rootfs_factory(
    trixie_tarball: Path,
    trixie_wheelhouse: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RootfsFactory]:
    base = tmp_path_factory.mktemp("rootfs-trixie")
    yield from _factory(base, trixie_tarball, trixie_wheelhouse)


@dataclass
class ConvergedRootfs:
    """A root filesystem provisioned by site.yml, and how to run the playbook on it again."""

    root: Path
    inventory: Path
    host: str
    extra_vars: dict[str, object]
    first_run: rf.PlaybookRun
    _runs: dict[str, rf.PlaybookRun] = field(default_factory=dict)

    def run_playbook(self, *args: str, **extra_vars: object) -> rf.PlaybookRun:
        return rf.run_playbook(self.inventory, *args, extra_vars={**self.extra_vars, **extra_vars})

    def once(self, key: str, *args: str) -> rf.PlaybookRun:
        """A run made once per session and shared (the idempotence and --check runs)."""
        if key not in self._runs:
            self._runs[key] = self.run_playbook(*args)
        return self._runs[key]

    def chroot(self, *argv: str, user: str | None = None) -> subprocess.CompletedProcess[str]:
        return rf.chroot(self.root, *argv, user=user)


def select_reference_blas(root: Path) -> None:
    """Point BLAS and LAPACK at Debian's reference libraries, so the blas role must act."""
    triplet = rf.MULTIARCH[os.uname().machine]
    for name, path in (
        (f"libblas.so.3-{triplet}", f"/usr/lib/{triplet}/blas/libblas.so.3"),
        (f"liblapack.so.3-{triplet}", f"/usr/lib/{triplet}/lapack/liblapack.so.3"),
    ):
        result = rf.chroot(root, "update-alternatives", "--set", name, path)
        assert result.returncode == 0, result.stderr


def converge(
    factory: RootfsFactory, wheel: Path, timing: str = "ansible full converge"
) -> ConvergedRootfs:
    """A fresh root filesystem of the factory's suite, provisioned by site.yml."""
    root = factory.fresh("converged")
    select_reference_blas(root)
    host = "testpi"
    inventory = rf.write_inventory(
        factory.base / "converged-inventory.yml", "pis", {host: rf.chroot_host_vars(root)}
    )
    extra_vars: dict[str, object] = {"pi_daemon_wheel": str(wheel)}
    first = rf.run_playbook(inventory, extra_vars=extra_vars)
    TIMINGS[timing] = first.seconds
    if first.returncode != 0:
        pytest.fail(
            f"site.yml failed on a fresh root filesystem (exit {first.returncode}):\n"
            f"{first.tail()}",
            pytrace=False,
        )
    return ConvergedRootfs(root, inventory, host, extra_vars, first)


@pytest.fixture(scope="session")
def converged_rootfs(rootfs_factory: RootfsFactory, pi_daemon_wheel: Path) -> ConvergedRootfs:
    return converge(rootfs_factory, pi_daemon_wheel)


@pytest.fixture(scope="session")
def converged_trixie(
    trixie_rootfs_factory: RootfsFactory, pi_daemon_wheel: Path
) -> ConvergedRootfs:
    return converge(trixie_rootfs_factory, pi_daemon_wheel, "ansible full converge (trixie)")


# The session fixtures of each suite, for tests parametrized by suite.
SUITE_FIXTURES = {
    "bookworm": ("converged_rootfs", "rootfs_factory"),
    "trixie": ("converged_trixie", "trixie_rootfs_factory"),
}


def for_suite(request: pytest.FixtureRequest, suite: str) -> tuple[ConvergedRootfs, RootfsFactory]:
    """The converged root filesystem and the factory of `suite` (built once per session)."""
    converged, factory = SUITE_FIXTURES[suite]
    return request.getfixturevalue(converged), request.getfixturevalue(factory)


# --- A fleet: a collector and a Pi, converged together ---------------------------------------

FLEET_COLLECTOR, FLEET_PI = "collector", "pi-a"
# The fleet addresses their configs and certificates name in the chroot phase. Nothing
# listens there in a chroot; a test that runs the collector's engines does so in a network
# namespace of its own, where 127.0.0.1 is that namespace's loopback.
FLEET_ADDRESSES = {FLEET_COLLECTOR: "127.0.0.1", FLEET_PI: "127.0.0.2"}
POLICY_RC_D = Path("usr/sbin/policy-rc.d")


def forbid_service_starts(root: Path) -> None:
    """A policy-rc.d, as image builders use: package scripts start nothing in the chroot
    (mosquitto and prometheus ship init scripts that would otherwise start them, on this
    machine's network)."""
    policy = root / POLICY_RC_D
    policy.write_text(
        "#!/bin/sh\n# tests/system: packages start no services in this root filesystem\nexit 101\n",
        encoding="utf-8",
    )
    policy.chmod(0o755)


def allow_service_starts(root: Path) -> None:
    """Remove the policy-rc.d again (a clone that boots is a finished image)."""
    (root / POLICY_RC_D).unlink(missing_ok=True)


@dataclass
class ConvergedFleet:
    """A collector and a Pi provisioned together by one site.yml run over chroot.

    Tests must not change them: read them, or clone them (`rootfs_factory.clone()`). The
    CA and the generated passwords are on the "controller", beside the inventory.
    """

    collector: Path
    pi: Path
    inventory: Path
    extra_vars: dict[str, object]
    first: rf.PlaybookRun

    @property
    def ca_dir(self) -> Path:
        return self.inventory.parent / "fleet-ca"

    @property
    def credentials_dir(self) -> Path:
        return self.inventory.parent / "fleet-credentials"

    def run_playbook(self, *args: str) -> rf.PlaybookRun:
        return rf.run_playbook(self.inventory, *args, extra_vars=self.extra_vars)


@pytest.fixture(scope="session")
def converged_fleet(
    rootfs_factory: RootfsFactory, converged_rootfs: ConvergedRootfs, pi_daemon_wheel: Path
) -> ConvergedFleet:
    """A fresh collector and a clone of `converged_rootfs` joining the fleet (as a Pi that
    was provisioned before the fleet had a collector), in one site.yml run."""
    collector = rootfs_factory.fresh("converged-collector")
    pi = rootfs_factory.clone(converged_rootfs.root, "converged-fleet-pi")
    for root in (collector, pi):
        forbid_service_starts(root)
    folder = rootfs_factory.base / "converged-fleet"
    folder.mkdir()
    inventory = folder / "hosts.yml"
    hosts = {
        "collectors": {
            "hosts": {
                FLEET_COLLECTOR: rf.chroot_host_vars(
                    collector, fleet_address=FLEET_ADDRESSES[FLEET_COLLECTOR]
                )
            }
        },
        "pis": {
            "hosts": {FLEET_PI: rf.chroot_host_vars(pi, fleet_address=FLEET_ADDRESSES[FLEET_PI])}
        },
    }
    inventory.write_text(json.dumps(hosts, indent=2) + "\n", encoding="utf-8")
    extra_vars: dict[str, object] = {"pi_daemon_wheel": str(pi_daemon_wheel)}
    first = rf.run_playbook(inventory, extra_vars=extra_vars)
    TIMINGS["ansible fleet converge (collector + pi, one chroot run)"] = first.seconds
    if first.returncode != 0:
        pytest.fail(
            f"site.yml with a collector failed (exit {first.returncode}):\n{first.tail()}",
            pytrace=False,
        )
    return ConvergedFleet(collector, pi, inventory, extra_vars, first)
