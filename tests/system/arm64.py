"""Helpers for the arm64 install-path test (tests/system/test_arm64.py).

Apart from reading the host's apt sources (rootfs.py's parser), nothing here depends on
the amd64 system-test helpers.

- `apt_mirror(suite)` reads the Debian mirror from the host's apt sources (never
  hard-coded).
- `qemu_aarch64()` turns on binfmt_misc + qemu-aarch64 and puts both back as it found them.
- `cached_rootfs(dest, timings, suite)` debootstraps an arm64 root filesystem of a suite
  (bookworm, trixie) once and keeps it as a `tar --zstd` tarball under the repo's
  gitignored `.cache/`, one per suite.
- `Chroot.run()` runs a command in the rootfs inside a private mount namespace
  (`unshare --mount`), so /proc, /dev and the pip-cache bind mounts vanish with the
  process: nothing can be left mounted on the host, even if pytest is killed.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from email.parser import Parser
from pathlib import Path
from zipfile import ZipFile

from tests.system.rootfs import AptSource, find_mirror, host_apt_sources, host_codename

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("PI_DAEMON_ARM64_CACHE", REPO / ".cache" / "arm64"))
ARCH = "arm64"
INCLUDE = ("python3", "python3-venv", "ca-certificates")
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# The CPU qemu-user emulates (it reads QEMU_CPU from the environment of every aarch64
# process): the Raspberry Pi 4B's Cortex-A72, ARMv8.0-A. qemu's default, "max", has
# pointer authentication, whose emulation is slow: trixie's binaries are built with branch
# protection, and `python3 -m venv` took about 250 s there instead of 45 s. The A72 also
# keeps a wheel that needs a newer core (dotprod, SVE) from passing here and not on a Pi.
QEMU_CPU = "cortex-a72"
BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")
BINFMT_NAME = "qemu-aarch64"
# Tools the test needs on the host, and the Debian package that provides each
# (all listed in .ci/apt-packages.txt).
HOST_TOOLS = {
    "debootstrap": "debootstrap",
    "update-binfmts": "binfmt-support",
    "qemu-aarch64-static": "qemu-user-static",
    "zstd": "zstd",
    "unshare": "util-linux",
    "chroot": "coreutils",
}


def missing_tools() -> list[str]:
    return [f"{tool} (apt: {pkg})" for tool, pkg in HOST_TOOLS.items() if not shutil.which(tool)]


# ---------------------------------------------------------------------------- commands


def run(
    cmd: Sequence[str | os.PathLike[str]],
    *,
    timeout: float,
    env: dict[str, str] | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run `cmd` in its own session; on timeout kill the whole process group.

    Output is captured (stdout and stderr merged) and shown in the failure message.
    """
    argv = [str(part) for part in cmd]
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except BaseException:  # timeout, KeyboardInterrupt: leave no process behind
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise RuntimeError(
            f"timed out or interrupted after {timeout:.0f} s: {shlex.join(argv)}\n{out[-4000:]}"
        ) from None
    if check and proc.returncode != 0:
        raise RuntimeError(f"exit {proc.returncode}: {shlex.join(argv)}\n{out[-6000:]}")
    return subprocess.CompletedProcess(argv, proc.returncode, out, "")


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """One arm64 run at a time per cache: binfmt state and the tarball are shared."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@dataclass
class Timings:
    """Wall-clock seconds per phase, in the order they ran."""

    phases: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.monotonic()
        try:
            yield
        finally:
            self.phases[name] = self.phases.get(name, 0.0) + time.monotonic() - start

    def lines(self) -> list[str]:
        return [f"{name:<40} {secs:7.1f} s" for name, secs in self.phases.items()]


# ---------------------------------------------------------------------------- apt mirror


def apt_mirror(suite: str, etc_apt: Path = Path("/etc/apt")) -> AptSource:
    """The host's http(s) source for `suite` main; for a suite the host does not list
    (trixie on a bookworm machine), the one for the host's own release (rootfs.py)."""
    sources = host_apt_sources(etc_apt)
    try:
        return find_mirror(suite, sources, fallback=host_codename(), http_only=True)
    except LookupError as error:
        raise RuntimeError(
            f"{error} (read from {etc_apt}/sources.list and sources.list.d/*.sources|*.list)"
        ) from None


# ---------------------------------------------------------------------------- binfmt


def _binfmt_mounted() -> bool:
    with open("/proc/self/mounts") as mounts:
        return any(line.split()[1] == str(BINFMT_DIR) for line in mounts)


def _binfmt_entry_state() -> str:
    """'absent', 'enabled' or 'disabled' for the qemu-aarch64 binfmt_misc entry."""
    entry = BINFMT_DIR / BINFMT_NAME
    if not entry.exists():
        return "absent"
    first = entry.read_text().splitlines()[:1]
    return "enabled" if first == ["enabled"] else "disabled"


@dataclass
class BinfmtState:
    mounted: bool
    entry: str  # absent | enabled | disabled (only meaningful when mounted)

    @classmethod
    def now(cls) -> BinfmtState:
        mounted = _binfmt_mounted()
        return cls(mounted, _binfmt_entry_state() if mounted else "absent")


@contextlib.contextmanager
def qemu_aarch64() -> Iterator[BinfmtState]:
    """Make aarch64 ELF binaries run through qemu-user-static; restore on exit.

    Only what this context changed is undone: binfmt_misc is unmounted only if it
    mounts it, and the qemu-aarch64 entry is removed (or re-disabled) only if it was
    absent (or disabled) before. Yields the state as it was found.
    """
    before = BinfmtState.now()
    mounted_here = False
    entry_before = before.entry
    try:
        if not before.mounted:
            run(["mount", "-t", "binfmt_misc", "binfmt_misc", BINFMT_DIR], timeout=30)
            mounted_here = True
            # Entries outlive an unmount; what the mount reveals is the real "before".
            entry_before = _binfmt_entry_state()
        if entry_before == "absent":
            run(["update-binfmts", "--enable", BINFMT_NAME], timeout=60)
        elif entry_before == "disabled":
            (BINFMT_DIR / BINFMT_NAME).write_text("1")
        if _binfmt_entry_state() != "enabled":
            raise RuntimeError(f"could not enable {BINFMT_DIR / BINFMT_NAME}")
        yield before
    finally:
        after = _binfmt_entry_state() if _binfmt_mounted() else "absent"
        if after != "absent" and entry_before == "absent":
            run(["update-binfmts", "--disable", BINFMT_NAME], timeout=60, check=False)
            if (BINFMT_DIR / BINFMT_NAME).exists():  # update-binfmts refused: remove it
                (BINFMT_DIR / BINFMT_NAME).write_text("-1")
        elif after == "enabled" and entry_before == "disabled":
            (BINFMT_DIR / BINFMT_NAME).write_text("0")
        if mounted_here:
            run(["umount", BINFMT_DIR], timeout=30, check=False)


# ---------------------------------------------------------------------------- mounts


def mounts_under(root: Path) -> list[str]:
    """Mount points at or below `root` in this (the host's) mount namespace."""
    prefix = str(root.resolve())
    with open("/proc/self/mounts") as mounts:
        points = [line.split()[1].replace("\\040", " ") for line in mounts]
    return [p for p in points if p == prefix or p.startswith(prefix + "/")]


def unmount_all_under(root: Path) -> None:
    for point in sorted(mounts_under(root), key=len, reverse=True):
        run(["umount", "--lazy", point], timeout=30, check=False)


def remove_tree(root: Path) -> None:
    """rm -r a root filesystem, refusing if anything is still mounted inside it."""
    if not root.exists():
        return
    unmount_all_under(root)
    left = mounts_under(root)
    if left:
        raise RuntimeError(f"refusing to delete {root}: still mounted: {left}")
    shutil.rmtree(root)


# ---------------------------------------------------------------------------- rootfs


def rootfs_key(suite: str) -> str:
    """Cache key: what the tarball contains (suite, arch, packages, debootstrap)."""
    version = run(["dpkg-query", "-W", "-f=${Version}", "debootstrap"], timeout=30).stdout
    material = f"{suite} {ARCH} minbase {' '.join(INCLUDE)} {version} no-apt-lists"
    return hashlib.sha256(material.encode()).hexdigest()[:12]


def cached_rootfs(dest: Path, timings: Timings, suite: str) -> Path:
    """Unpack the cached arm64 `suite` rootfs into `dest`, debootstrapping it if needed.

    The caller must be inside `qemu_aarch64()`: debootstrap's second stage runs
    aarch64 binaries. Returns the tarball path.
    """
    mirror = apt_mirror(suite)
    tarball = CACHE / f"{suite}-{ARCH}-minbase-{rootfs_key(suite)}.tar.zst"
    if not tarball.exists():
        build = CACHE / f"build-rootfs-{suite}"
        remove_tree(build)
        keyring = ["--keyring", mirror.signed_by] if mirror.signed_by else []
        debs = CACHE / "debootstrap-debs"
        debs.mkdir(parents=True, exist_ok=True)
        try:
            with timings.phase(f"debootstrap arm64 {suite} (cold)"):
                run(
                    [
                        "debootstrap",
                        f"--arch={ARCH}",
                        "--variant=minbase",
                        f"--include={','.join(INCLUDE)}",
                        f"--cache-dir={debs}",
                        *keyring,
                        suite,
                        build,
                        mirror.uri,
                    ],
                    timeout=1800,
                    env=dict(os.environ, QEMU_CPU=QEMU_CPU),  # its second stage runs aarch64
                )
            # debootstrap's own /proc, /sys mounts must be gone before tar and rm.
            unmount_all_under(build)
            # The tests never run apt in the guest: drop the package lists and .debs
            # (about half the tarball).
            for junk in ("var/lib/apt/lists", "var/cache/apt/archives"):
                for path in (build / junk).glob("*"):
                    if path.is_file() and path.name != "lock":
                        path.unlink()
            with timings.phase("rootfs tarball: create"):
                partial = tarball.with_suffix(".partial")
                run(
                    ["tar", "--zstd", "--numeric-owner", "-C", build, "-cf", partial, "."],
                    timeout=600,
                )
                partial.rename(tarball)
        finally:
            remove_tree(build)
    with timings.phase("rootfs tarball: unpack"):
        dest.mkdir(parents=True, exist_ok=True)
        run(["tar", "--zstd", "--numeric-owner", "-C", dest, "-xpf", tarball], timeout=600)
    # pip inside needs DNS and the host's CA bundle (it may carry a proxy's CA).
    for name, source in (
        ("etc/resolv.conf", Path("/etc/resolv.conf")),
        ("etc/ssl/certs/ca-certificates.crt", HOST_CA_BUNDLE),
    ):
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_symlink() or target.exists():
            target.unlink()
        shutil.copyfile(source, target)
    return tarball


# ---------------------------------------------------------------------------- chroot


_PASS_ENV = ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")
GUEST_PIP_CACHE = "/var/cache/pi-daemon-pip"


@dataclass
class Chroot:
    """Run commands in `root` with /proc, /dev and a pip cache mounted privately."""

    root: Path
    pip_cache: Path

    def env(self) -> dict[str, str]:
        env = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": "/root",
            "LANG": "C.UTF-8",
            "PIP_CACHE_DIR": GUEST_PIP_CACHE,
            "PIP_CERT": "/etc/ssl/certs/ca-certificates.crt",
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
            "PIP_DEFAULT_TIMEOUT": "180",
            "PIP_NO_INPUT": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
            "QEMU_CPU": QEMU_CPU,
        }
        env.update({k: os.environ[k] for k in _PASS_ENV if k in os.environ})
        return env

    def run(
        self, argv: Sequence[str], *, timeout: float, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        self.pip_cache.mkdir(parents=True, exist_ok=True)
        (self.root / GUEST_PIP_CACHE.lstrip("/")).mkdir(parents=True, exist_ok=True)
        root = shlex.quote(str(self.root))
        script = "\n".join(
            [
                "set -e",
                f"mount -t proc proc {root}/proc",
                f"mount --bind /dev {root}/dev",
                f"mount --bind {shlex.quote(str(self.pip_cache))} {root}{GUEST_PIP_CACHE}",
                f'exec chroot {root} "$@"',
            ]
        )
        # unshare(1) makes the new mount namespace private: mounts never reach the host,
        # and they disappear when the last process in it exits.
        return run(
            [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "--",
                "sh",
                "-c",
                script,
                "chroot-run",
                *argv,
            ],
            timeout=timeout,
            env=self.env(),
            check=check,
        )


def install_from_wheelhouse(
    chroot: Chroot,
    python: str,
    requirements: Sequence[str],
    *,
    targets: Sequence[str] = (),
    salt: str,
    timeout: float,
) -> bool:
    """pip install `targets` and `requirements` into a guest venv, offline, from a wheelhouse.

    The wheelhouse (`.cache/arm64/guest-pip/wheelhouse/<hash>`) is filled the first time
    by `pip download --only-binary=:all:` run in the guest, so pip resolves against PyPI
    with the guest's own tags, as on a Pi. Later runs install without the network: PyPI
    answers here carry no cache headers, so PIP_CACHE_DIR alone does not make re-runs
    fast. The key is the requirement list and `salt` (the rootfs tarball); versions stay
    pinned until `.cache/arm64` is removed. Returns True when the wheelhouse was reused.
    """
    material = "\n".join([salt, *sorted(requirements)])
    key = hashlib.sha256(material.encode()).hexdigest()[:12]
    host_dir = chroot.pip_cache / "wheelhouse" / key
    guest_dir = f"{GUEST_PIP_CACHE}/wheelhouse/{key}"
    pip = [python, "-m", "pip"]
    reused = (host_dir / ".complete").is_file()
    if not reused:
        shutil.rmtree(host_dir, ignore_errors=True)
        chroot.run(
            [
                *pip,
                "download",
                "-q",
                "--progress-bar",
                "off",
                "--only-binary=:all:",
                "-d",
                guest_dir,
                *requirements,
            ],
            timeout=timeout,
        )
        (host_dir / ".complete").write_text(material + "\n")
    chroot.run(
        [
            *pip,
            "install",
            "-q",
            "--no-compile",
            "--no-index",
            "--find-links",
            guest_dir,
            *targets,
            *requirements,
        ],
        timeout=timeout,
    )
    return reused


# ---------------------------------------------------------------------------- wheel


def build_wheel(outdir: Path, timings: Timings) -> Path:
    """`pip wheel --no-deps` the project on the host (the wheel is pure Python)."""
    import sys

    outdir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PIP_CACHE_DIR=str(CACHE / "host-pip"))
    # From a copy of the checkout: setuptools builds in the source tree (build/, *.egg-info),
    # and scripts/test.sh runs these tests beside the amd64 ones, whose site.yml runs build
    # the wheel in the checkout and empty its build/ first.
    source = outdir / "source"
    shutil.rmtree(source, ignore_errors=True)
    shutil.copytree(
        REPO,
        source,
        ignore=shutil.ignore_patterns(".git", ".venv", ".cache", "build", "*.egg-info", "mutants"),
        symlinks=True,
    )
    with timings.phase("host: pip wheel"):
        run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", outdir, source],
            timeout=600,
            env=env,
        )
    shutil.rmtree(source)
    wheels = sorted(outdir.glob("pi_daemon-*.whl"))
    if len(wheels) != 1:
        raise RuntimeError(f"expected one pi_daemon wheel in {outdir}, found {wheels}")
    return wheels[0]


def wheel_members(wheel: Path) -> list[str]:
    with ZipFile(wheel) as archive:
        return archive.namelist()


def wheel_requirements(wheel: Path) -> list[str]:
    """The wheel's unconditional Requires-Dist entries (extras left out)."""
    with ZipFile(wheel) as archive:
        meta_name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        meta = Parser().parsestr(archive.read(meta_name).decode())
    requirements = meta.get_all("Requires-Dist") or []
    return [r for r in requirements if not re.search(r"\bextra\s*==", r)]


def requirement_name(requirement: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if not match:
        raise ValueError(requirement)
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


_RANKED = re.compile(r"(.+?) (\d+\.\d+)(?:, |$)")


def parse_classify_line(line: str) -> tuple[str, list[tuple[str, float]]]:
    """'PATH: label 0.941, label 0.016' -> (PATH, [(label, score), ...])."""
    path, _, ranked = line.rpartition(": ")
    return path, [(label, float(score)) for label, score in _RANKED.findall(ranked)]
