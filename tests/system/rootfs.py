"""Real Debian root filesystems for the system tests: build, cache, unpack, chroot, provision.

Everything here runs real tools as root: debootstrap builds a root filesystem from the
host's own Debian mirror, `tar --zstd` caches it under the repository's gitignored
`.cache/` (so only the first run of a machine pays for debootstrap), and
`ansible-playbook` provisions it through the `community.general.chroot` connection.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ANSIBLE_DIR = REPO / "ansible"

# Packages a provisioned Pi would already have from Pi OS, plus the competing reference
# BLAS, so the blas role has a real choice to make.
BOOKWORM_INCLUDE = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "python3",
    "python3-venv",
    "dphys-swapfile",
    "libblas3",
    "liblapack3",
    "libopenblas0-pthread",
    "ca-certificates",
)
# Plain Debian trixie, as a Debian 13 host has it: no swap manager yet (Pi OS Trixie has
# rpi-swap, which Debian lacks; the swap role installs dphys-swapfile here).
TRIXIE_INCLUDE = tuple(name for name in BOOKWORM_INCLUDE if name != "dphys-swapfile")


@dataclass(frozen=True)
class Suite:
    """A Debian release as the system tests build it, and what its wheels must fit."""

    name: str
    version: int  # Debian major version (ansible_distribution_major_version)
    python: tuple[int, int]  # its python3
    glibc: tuple[int, int]
    include: tuple[str, ...]  # debootstrap --include for the amd64 root filesystem


SUITES = {
    "bookworm": Suite("bookworm", 12, (3, 11), (2, 36), BOOKWORM_INCLUDE),
    "trixie": Suite("trixie", 13, (3, 13), (2, 41), TRIXIE_INCLUDE),
}

# The architecture's Debian multiarch triplet, as the blas role derives it from facts.
MULTIARCH = {"x86_64": "x86_64-linux-gnu", "aarch64": "aarch64-linux-gnu"}

# Where the test puts a wheelhouse inside the root filesystem (pip installs offline).
TARGET_WHEELHOUSE = "/var/cache/pi-daemon-wheelhouse"


def cache_dir() -> Path:
    """The cache shared by runs on this machine: $PI_DAEMON_TEST_CACHE or .cache/system-tests."""
    configured = os.environ.get("PI_DAEMON_TEST_CACHE")
    path = Path(configured) if configured else REPO / ".cache" / "system-tests"
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock, so parallel test sessions build a cache entry once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --- The host's Debian mirror ---------------------------------------------------------


@dataclass(frozen=True)
class AptSource:
    uri: str
    suites: tuple[str, ...]
    components: tuple[str, ...]
    signed_by: str | None = None  # a keyring path (an inline key block is left out)


def parse_one_line_sources(text: str) -> list[AptSource]:
    """`deb [options] URI SUITE COMPONENT...` lines (sources.list format)."""
    sources = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line.startswith("deb "):
            continue
        options = " ".join(re.findall(r"\[([^\]]*)\]", line)).split()
        signed_by = next((o.split("=", 1)[1] for o in options if o.startswith("signed-by=")), None)
        line = re.sub(r"\[[^\]]*\]", " ", line[4:])  # drop [arch=... signed-by=...]
        words = line.split()
        if len(words) >= 2:
            sources.append(AptSource(words[0], (words[1],), tuple(words[2:]), signed_by))
    return sources


def parse_deb822_sources(text: str) -> list[AptSource]:
    """Stanzas of a `.sources` file (deb822 format); `Enabled: no` stanzas are skipped."""
    sources = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = None
        for raw in stanza.splitlines():
            if raw.startswith("#") or not raw.strip():
                continue
            if raw[0] in " \t" and key is not None:  # continuation line
                fields[key] += "\n" + raw.strip()
                continue
            key, _, value = raw.partition(":")
            key = key.strip().lower()
            fields[key] = value.strip()
        if "deb" not in fields.get("types", "").split():
            continue
        if fields.get("enabled", "yes").lower() in ("no", "false", "0"):
            continue
        suites = tuple(fields.get("suites", "").split())
        components = tuple(fields.get("components", "").split())
        signed_by = fields.get("signed-by", "").strip() or None
        if signed_by and ("\n" in signed_by or not signed_by.startswith("/")):
            signed_by = None  # an inline key block: only a path is useful to debootstrap
        sources.extend(
            AptSource(uri, suites, components, signed_by) for uri in fields.get("uris", "").split()
        )
    return sources


def host_apt_sources(etc_apt: Path = Path("/etc/apt")) -> list[AptSource]:
    sources: list[AptSource] = []
    main_list = etc_apt / "sources.list"
    if main_list.is_file():
        sources += parse_one_line_sources(main_list.read_text(encoding="utf-8"))
    parts = etc_apt / "sources.list.d"
    if parts.is_dir():
        for path in sorted(parts.iterdir()):
            if path.suffix == ".list":
                sources += parse_one_line_sources(path.read_text(encoding="utf-8"))
            elif path.suffix == ".sources":
                sources += parse_deb822_sources(path.read_text(encoding="utf-8"))
    return sources


def host_codename(os_release: Path = Path("/etc/os-release")) -> str:
    """This machine's Debian release name (VERSION_CODENAME), e.g. "bookworm"."""
    for line in os_release.read_text(encoding="utf-8").splitlines():
        key, _, value = line.partition("=")
        if key == "VERSION_CODENAME":
            return value.strip().strip('"')
    raise LookupError(f"no VERSION_CODENAME in {os_release}")


def find_mirror(
    suite: str,
    sources: Sequence[AptSource],
    *,
    fallback: str | None = None,
    http_only: bool = False,
) -> AptSource:
    """The host's source that carries `suite` main (the plain suite, not -security).

    A suite the host does not list (trixie on a bookworm machine) comes from the mirror
    that carries `fallback` (the host's own release): one Debian archive serves them all.
    """
    usable = [s for s in sources if not http_only or s.uri.startswith(("http://", "https://"))]
    for wanted in (suite, fallback):
        for source in usable:
            if wanted and wanted in source.suites and "main" in source.components:
                return source
    raise LookupError(
        f"no apt source for '{suite} main'"
        + (f" (nor '{fallback} main')" if fallback else "")
        + " among the host's sources: "
        + (", ".join(f"{s.uri} {' '.join(s.suites)}" for s in sources) or "(none)")
    )


def debian_mirror(suite: str, sources: Sequence[AptSource], *, fallback: str | None = None) -> str:
    """The URI of `find_mirror(suite, sources, fallback=...)`."""
    return find_mirror(suite, sources, fallback=fallback).uri


# --- Building, caching and unpacking root filesystems ---------------------------------


def run(argv: Sequence[str | os.PathLike[str]], **kwargs) -> subprocess.CompletedProcess[str]:
    """Run a command, raising with its output when it fails."""
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    result = subprocess.run([str(a) for a in argv], check=False, **kwargs)
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(map(str, argv))} exited {result.returncode}\n"
            f"--- stdout (tail)\n{(result.stdout or '')[-4000:]}\n"
            f"--- stderr (tail)\n{(result.stderr or '')[-4000:]}"
        )
    return result


def debootstrap_tarball(
    suite: str, include: Sequence[str], mirror: str, cache: Path
) -> tuple[Path, float | None]:
    """A cached `tar --zstd` of `debootstrap --variant=minbase`; build it if missing.

    Returns the tarball and the seconds debootstrap took (None when the cache was used).
    """
    arch = run(["dpkg", "--print-architecture"]).stdout.strip()
    key = hashlib.sha256(json.dumps([suite, arch, sorted(include), mirror]).encode()).hexdigest()
    tarball = cache / f"debian-{suite}-{arch}-minbase-{key[:12]}.tar.zst"
    with file_lock(cache / (tarball.name + ".lock")):
        if tarball.exists():
            return tarball, None
        work = cache / f"{tarball.name}.build"
        remove_tree(work)
        started = time.monotonic()
        run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(include)}",
                suite,
                work,
                mirror,
            ]
        )
        seconds = time.monotonic() - started
        partial = tarball.with_suffix(".partial")
        run(["tar", "--zstd", "--numeric-owner", "-C", work, "-cf", partial, "."])
        partial.rename(tarball)
        remove_tree(work)
        return tarball, seconds


def unpack(tarball: Path, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    run(["tar", "--zstd", "--numeric-owner", "-xpf", tarball, "-C", dest])
    return dest


def pack(root: Path, tarball: Path) -> Path:
    partial = tarball.with_suffix(".partial")
    run(["tar", "--zstd", "--numeric-owner", "-C", root, "-cf", partial, "."])
    partial.rename(tarball)
    return tarball


def mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve()).rstrip("/") + "/"
    with open("/proc/self/mounts", encoding="utf-8") as mounts:
        points = [line.split()[1].replace("\\040", " ") for line in mounts]
    return [point for point in points if point == prefix.rstrip("/") or point.startswith(prefix)]


def remove_tree(path: Path) -> None:
    """rm -rf, refusing when anything is still mounted inside (a bind mount of /dev...)."""
    if not path.exists():
        return
    busy = mounts_under(path)
    if busy:
        raise RuntimeError(f"refusing to remove {path}: still mounted inside: {busy}")
    shutil.rmtree(path)


def prepare_root(root: Path, wheelhouse: Path | None = None) -> None:
    """What a root filesystem needs to be provisioned from a chroot: DNS for apt, CA
    certificates, and (optionally) the wheels pip installs from, so pip runs offline."""
    resolv = root / "etc" / "resolv.conf"
    if resolv.is_symlink() or resolv.exists():
        resolv.unlink()
    shutil.copyfile("/etc/resolv.conf", resolv)
    bundle = Path("/etc/ssl/certs/ca-certificates.crt")
    target_bundle = root / bundle.relative_to("/")
    if bundle.is_file() and not target_bundle.exists():
        target_bundle.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(bundle, target_bundle)
    if wheelhouse is not None:
        dest = root / TARGET_WHEELHOUSE.lstrip("/")
        dest.mkdir(parents=True, exist_ok=True)
        for wheel in wheelhouse.glob("*.whl"):
            shutil.copyfile(wheel, dest / wheel.name)


def chroot(root: Path, *argv: str, user: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command inside the root filesystem (no check: callers assert on the result)."""
    prefix = ["chroot"] + ([f"--userspec={user}:{user}"] if user else []) + [str(root)]
    return subprocess.run(prefix + list(argv), capture_output=True, text=True, check=False)


def chroot_with_proc(root: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """`chroot()` with /proc mounted, in a private mount namespace that vanishes with the
    command (so nothing stays mounted on the host), for tools such as systemd-analyze."""
    script = f'mount -t proc proc {shlex.quote(str(root))}/proc && exec chroot "$@"'
    unshare = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script]
    return subprocess.run(
        [*unshare, "sh", str(root), *argv],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


# --- The project's wheel and its dependencies -----------------------------------------


def build_wheel(dest: Path) -> Path:
    """Build the project's wheel as site.yml does (from an empty build/, with a fixed
    SOURCE_DATE_EPOCH, so the same checkout gives the same bytes), return its path."""
    dest.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, SOURCE_DATE_EPOCH="315532800")
    # setuptools builds in the checkout's build/: two test sessions building at once (two
    # developers' runs, or a helper's beside CI) would trip over each other's files there.
    with file_lock(cache_dir() / "build-wheel.lock"):
        shutil.rmtree(REPO / "build", ignore_errors=True)
        run(
            [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", dest, REPO],
            env=env,
        )
    (wheel,) = dest.glob("pi_daemon-*.whl")
    return wheel


# Debian 12's python3 and glibc: what the wheels in a bookworm root filesystem must fit.
BOOKWORM_PYTHON = SUITES["bookworm"].python
BOOKWORM_GLIBC = SUITES["bookworm"].glibc


def pip_target_args(python: tuple[int, int], glibc: tuple[int, int], machine: str) -> list[str]:
    """`pip download` options selecting binary wheels for another interpreter: the root
    filesystem's, whatever Python runs the tests."""
    version = f"{python[0]}{python[1]}"
    args = [
        "--only-binary=:all:",
        "--implementation",
        "cp",
        "--python-version",
        f"{python[0]}.{python[1]}",
    ]
    for abi in (f"cp{version}", "abi3", "none"):
        args += ["--abi", abi]
    platforms = [f"manylinux_{glibc[0]}_{minor}_{machine}" for minor in range(glibc[1], 16, -1)]
    platforms += [f"manylinux2014_{machine}", f"manylinux2010_{machine}", f"manylinux1_{machine}"]
    for tag in platforms:
        args += ["--platform", tag]
    return args


def wheelhouse_for(wheel: Path, cache: Path, suite: Suite = SUITES["bookworm"]) -> Path:
    """Wheels of the wheel's runtime dependencies for a `suite` root filesystem, cached.

    They are chosen for the suite's Python and glibc (Debian 12: 3.11 and 2.36; Debian 13:
    3.13 and 2.41) on this machine's architecture, so pip inside the root filesystem
    installs them offline.
    """
    requires = sorted(_requires_dist(wheel))
    target = pip_target_args(suite.python, suite.glibc, platform.machine())
    key = hashlib.sha256(json.dumps([target, requires]).encode())
    house = cache / f"wheelhouse-{key.hexdigest()[:12]}"
    with file_lock(cache / (house.name + ".lock")):
        if (house / "complete").exists():
            return house
        remove_tree(house)
        house.mkdir()
        run([sys.executable, "-m", "pip", "download", "--quiet", *target, "-d", house, *requires])
        (house / "complete").write_text("\n".join(requires) + "\n", encoding="utf-8")
    return house


# The extras whose dependencies the wheelhouse also holds, so that pip in the root
# filesystem can install `pi-daemon[mqtt,metrics]` (a Pi in a fleet) offline.
WHEELHOUSE_EXTRAS = ("mqtt", "metrics")


def _requires_dist(wheel: Path) -> list[str]:
    import zipfile

    with zipfile.ZipFile(wheel) as archive:
        (metadata,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        text = archive.read(metadata).decode()
    requires = []
    for line in text.splitlines():
        if not line.startswith("Requires-Dist:"):
            continue
        requirement = line.split(":", 1)[1].strip()
        if "extra ==" not in requirement:
            requires.append(requirement)
        elif any(requirement.endswith(f'extra == "{extra}"') for extra in WHEELHOUSE_EXTRAS):
            # The role installs these extras when [mqtt] or [metrics] is on.
            requires.append(requirement.split(";", 1)[0].strip())
    return requires


# --- ansible-playbook -----------------------------------------------------------------

RECAP_LINE = re.compile(r"^(?P<host>\S+)\s+:\s+(?P<counts>(?:\w+=\d+\s*)+)$")


def parse_recap(output: str) -> dict[str, dict[str, int]]:
    """The PLAY RECAP's counters per host: {"testpi": {"ok": 60, "changed": 0, ...}}."""
    recap: dict[str, dict[str, int]] = {}
    _, found, tail = output.rpartition("PLAY RECAP")
    if not found:
        return recap
    for line in tail.splitlines():
        match = RECAP_LINE.match(line.strip())
        if match:
            counts = dict(pair.split("=") for pair in match.group("counts").split())
            recap[match.group("host")] = {name: int(value) for name, value in counts.items()}
    return recap


@dataclass
class PlaybookRun:
    argv: list[str]
    returncode: int
    output: str
    seconds: float
    recap: dict[str, dict[str, int]] = field(default_factory=dict)

    def tail(self, chars: int = 6000) -> str:
        return self.output[-chars:]

    def changed_tasks(self) -> list[str]:
        """Names of the tasks that reported `changed` (for assertion messages)."""
        return list(self.changed_results())

    def changed_results(self) -> dict[str, str]:
        """Each changed task's name and the result lines printed under it (with -v)."""
        results: dict[str, str] = {}
        current, capturing = "", False
        for line in self.output.splitlines():
            if line.startswith(("TASK [", "RUNNING HANDLER [")):
                current, capturing = line.split("[", 1)[1].rsplit("]", 1)[0], False
            elif line.startswith("changed:"):
                results[current] = results.get(current, "") + line + "\n"
                capturing = True
            elif capturing and line.startswith((" ", "\t")):
                results[current] += line + "\n"
            else:
                capturing = False
        return results


def ansible_tool(name: str) -> str:
    """An Ansible command from the same environment as the running Python (the venv)."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        raise FileNotFoundError(f"{name} not found: pip install -e '.[test]' installs it")
    return found


def write_inventory(path: Path, group: str, hosts: Mapping[str, Mapping[str, object]]) -> Path:
    """A YAML inventory (written as JSON, which YAML reads) with one group."""
    path.write_text(json.dumps({group: {"hosts": hosts}}, indent=2) + "\n", encoding="utf-8")
    return path


def chroot_host_vars(root: Path, **overrides: object) -> dict[str, object]:
    """Host vars that provision `root` through the chroot connection, safely for a test
    machine: swap is never applied and no health check is attempted (nothing runs there)."""
    host_vars: dict[str, object] = {
        "ansible_connection": "community.general.chroot",
        "ansible_host": str(root),
        "ansible_become": False,
        "ansible_python_interpreter": "/usr/bin/python3",
        "swap_apply": False,
        "pi_daemon_health_check": False,
        "pi_daemon_pip_extra_args": ["--no-index", "--find-links", TARGET_WHEELHOUSE],
    }
    host_vars.update(overrides)
    return host_vars


def run_playbook(
    inventory: Path,
    *args: str,
    extra_vars: Mapping[str, object] | None = None,
    playbook: Path = ANSIBLE_DIR / "site.yml",
    timeout: float = 1800,
) -> PlaybookRun:
    argv = [ansible_tool("ansible-playbook"), "-i", str(inventory), str(playbook), *args]
    if extra_vars:
        argv += ["--extra-vars", json.dumps(dict(extra_vars))]
    env = dict(
        os.environ,
        ANSIBLE_CONFIG=str(ANSIBLE_DIR / "ansible.cfg"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_FORCE_COLOR="0",
        ANSIBLE_RETRY_FILES_ENABLED="0",
        ANSIBLE_DEPRECATION_WARNINGS="0",
        PYTHONUNBUFFERED="1",
    )
    started = time.monotonic()
    result = subprocess.run(
        argv,
        cwd=ANSIBLE_DIR,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        check=False,
    )
    seconds = time.monotonic() - started
    return PlaybookRun(argv, result.returncode, result.stdout, seconds, parse_recap(result.stdout))
