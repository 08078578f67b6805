"""Shared fixtures for the system tests: real root filesystems, provisioned by the playbook.

The expensive things are built once per session and shared:

* `bookworm_tarball`: a debootstrapped Debian 12 minbase (systemd, python3, dphys-swapfile,
  the BLAS packages), cached as `tar --zstd` under `.cache/system-tests/` across runs;
* `pi_daemon_wheel` and `target_wheelhouse`: the project's wheel, built like site.yml
  builds it, and its dependencies' wheels, so pip inside a root filesystem runs offline;
* `converged_rootfs`: a root filesystem that `ansible/site.yml` has provisioned. Tests
  must not change it (clone it with `rootfs_factory.clone()` first, e.g. to boot it);
* `rootfs_factory`: fresh or cloned root filesystems, removed at the end of the session
  (set PI_DAEMON_KEEP_ROOTFS=1 to keep them for a post-mortem).

Everything here needs root; without it every test that asks for these fixtures is
skipped with the reason in the summary.
"""

from __future__ import annotations

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


@pytest.fixture(scope="session")
def bookworm_tarball(system_cache: Path, debian_mirror: str) -> Path:
    tarball, seconds = rf.debootstrap_tarball(
        "bookworm", rf.BOOKWORM_INCLUDE, debian_mirror, system_cache
    )
    TIMINGS["debootstrap bookworm"] = seconds if seconds is not None else "cached"
    return tarball


@pytest.fixture(scope="session")
def pi_daemon_wheel(require_root, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return rf.build_wheel(tmp_path_factory.mktemp("wheel"))


@pytest.fixture(scope="session")
def target_wheelhouse(pi_daemon_wheel: Path, system_cache: Path) -> Path:
    return rf.wheelhouse_for(pi_daemon_wheel, system_cache)


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


@pytest.fixture(scope="session")
def rootfs_factory(
    bookworm_tarball: Path,
    target_wheelhouse: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RootfsFactory]:
    factory = RootfsFactory(tmp_path_factory.mktemp("rootfs"), bookworm_tarball, target_wheelhouse)
    yield factory
    if os.environ.get("PI_DAEMON_KEEP_ROOTFS") != "1":
        factory.cleanup()


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


@pytest.fixture(scope="session")
def converged_rootfs(rootfs_factory: RootfsFactory, pi_daemon_wheel: Path) -> ConvergedRootfs:
    root = rootfs_factory.fresh("converged")
    select_reference_blas(root)
    host = "testpi"
    inventory = rf.write_inventory(
        rootfs_factory.base / "converged-inventory.yml", "pis", {host: rf.chroot_host_vars(root)}
    )
    extra_vars: dict[str, object] = {"pi_daemon_wheel": str(pi_daemon_wheel)}
    first = rf.run_playbook(inventory, extra_vars=extra_vars)
    TIMINGS["ansible full converge"] = first.seconds
    if first.returncode != 0:
        pytest.fail(
            f"site.yml failed on a fresh root filesystem (exit {first.returncode}):\n"
            f"{first.tail()}",
            pytrace=False,
        )
    return ConvergedRootfs(root, inventory, host, extra_vars, first)
