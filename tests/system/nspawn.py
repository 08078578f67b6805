"""Boot root filesystems with systemd as PID 1 (systemd-nspawn), and talk to them.

A `Container` is one `systemd-nspawn -b` of a root filesystem. Commands run inside it
through `nsenter` (its mount, UTS, IPC, network and PID namespaces), so `systemctl` and
`journalctl` talk to the container's own systemd and journald; Ansible reaches it the
same way, through the chroot connection with `ansible_chroot_exe` pointing at a small
nsenter wrapper (`Container.chroot_exe`).

Cgroups. nspawn runs with `--register=no --keep-unit` (no machined, and no systemd
running on a CI host to ask for a scope), so it treats the cgroup it was started in as
its own: it creates `payload/` (the container) and `supervisor/` (itself) *below* that
cgroup and leaves them behind, empty, when it exits. Two containers started from the
same cgroup therefore share `payload/` and disturb each other. So each container gets a
fresh cgroup of its own, `<hierarchy>/pi-daemon-nspawn-<pid>-<name>`, created in every
hierarchy nspawn uses (the cgroup2 hierarchy, plus the v1 `name=systemd` one on a hybrid
host such as this one), and the launching shell moves itself there before it execs
nspawn. Our cgroup holds no process of its own once nspawn has moved itself to
`supervisor/`, so cgroup v2's no-internal-processes rule is kept and the container's
systemd can be delegated the subtree. At teardown the container is powered off (SIGTERM
to nspawn), anything left in the tree is killed, and the whole tree is removed bottom-up.
`sweep_stale_cgroups()` removes empty trees that a killed test session left behind.

Swap is never turned on: `swapon` inside nspawn fails with EPERM anyway, and
`disable_swap_units()` keeps dphys-swapfile from even writing its 2 GB file at boot.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shlex
import signal
import subprocess
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CGROUP_PREFIX = "pi-daemon-nspawn"
# Inside the container, commands run with a clean environment (not the test runner's:
# PIP_*, VIRTUAL_ENV and the like must not leak into the target).
CONTAINER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CONTAINER_ENV = ("PATH=" + CONTAINER_PATH, "HOME=/root", "LANG=C.UTF-8", "TERM=dumb")
NSENTER_NAMESPACES = ("--mount", "--uts", "--ipc", "--net", "--pid")


def require_tools() -> list[str]:
    """The tools this module needs that are missing (CI installs systemd-container)."""
    from shutil import which

    return [tool for tool in ("systemd-nspawn", "nsenter") if which(tool) is None]


# --- cgroups ------------------------------------------------------------------------------


def cgroup_hierarchies(mounts: str | None = None) -> list[Path]:
    """The cgroup hierarchies nspawn creates its payload/supervisor cgroups in.

    Unified host (/sys/fs/cgroup is cgroup2): just that. Hybrid host: the cgroup2 mount
    (/sys/fs/cgroup/unified) and the v1 name=systemd one. Legacy host: name=systemd.
    """
    if mounts is None:
        with open("/proc/self/mounts", encoding="utf-8") as handle:
            mounts = handle.read()
    found: list[Path] = []
    for line in mounts.splitlines():
        parts = line.split()
        if len(parts) < 4:
            continue
        point, fstype, options = parts[1], parts[2], parts[3].split(",")
        if fstype == "cgroup2" or (fstype == "cgroup" and "name=systemd" in options):
            path = Path(point.replace("\\040", " "))
            if path not in found:
                found.append(path)
    return found


def _tree_dirs(top: Path) -> list[Path]:
    """Every directory of a cgroup tree, deepest first (the order rmdir needs)."""
    if not top.is_dir():
        return []
    dirs = [Path(current) for current, _, _ in os.walk(top)]
    return sorted(dirs, key=lambda p: len(p.parts), reverse=True)


def _procs_in(top: Path) -> set[int]:
    pids: set[int] = set()
    for directory in _tree_dirs(top):
        with contextlib.suppress(OSError):
            text = (directory / "cgroup.procs").read_text()
            pids.update(int(word) for word in text.split())
    return pids


@dataclass
class CgroupSlot:
    """A fresh cgroup, in every hierarchy nspawn uses, for one container."""

    name: str
    hierarchies: list[Path] = field(default_factory=cgroup_hierarchies)

    @property
    def dirs(self) -> list[Path]:
        return [hierarchy / self.name for hierarchy in self.hierarchies]

    def create(self) -> None:
        for directory in self.dirs:
            directory.mkdir()  # fails if it exists: a name is never reused

    def enter_script(self) -> str:
        """Shell that moves itself into this cgroup, then execs its arguments."""
        moves = "; ".join(f"echo $$ > {shlex.quote(str(d / 'cgroup.procs'))}" for d in self.dirs)
        return f'{moves}; exec "$@"'

    def procs(self) -> set[int]:
        pids: set[int] = set()
        for directory in self.dirs:
            pids |= _procs_in(directory)
        return pids

    def existing(self) -> list[Path]:
        return [path for directory in self.dirs for path in _tree_dirs(directory)]

    def kill_all(self) -> None:
        for directory in self.dirs:
            kill_file = directory / "cgroup.kill"  # cgroup2, Linux >= 5.14
            if kill_file.exists():
                with contextlib.suppress(OSError):
                    kill_file.write_text("1")
        for pid in self.procs():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def remove(self, timeout: float = 15.0) -> None:
        """rmdir the whole tree, deepest first; kill stragglers; raise if it stays."""
        deadline = time.monotonic() + timeout
        while True:
            left = self.existing()
            for directory in left:
                with contextlib.suppress(FileNotFoundError):
                    try:
                        directory.rmdir()
                    except OSError as error:
                        if error.errno != errno.EBUSY:
                            raise
            left = self.existing()
            if not left:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"cgroups still busy after {timeout:.0f} s: {left} (pids {self.procs()})"
                )
            self.kill_all()
            time.sleep(0.2)


def sweep_stale_cgroups() -> list[Path]:
    """Remove our cgroup trees whose creating test session is gone and that are empty."""
    removed = []
    pattern = re.compile(rf"^{CGROUP_PREFIX}-(\d+)-")
    for hierarchy in cgroup_hierarchies():
        for top in sorted(hierarchy.glob(f"{CGROUP_PREFIX}-*")):
            match = pattern.match(top.name)
            if not match or Path(f"/proc/{match.group(1)}").exists() or _procs_in(top):
                continue
            for directory in _tree_dirs(top):
                with contextlib.suppress(OSError):
                    directory.rmdir()
            removed.append(top)
    return removed


def root_cgroup_names() -> dict[Path, set[str]]:
    """The cgroups directly under each hierarchy's root (to spot new leftovers)."""
    return {
        hierarchy: {p.name for p in hierarchy.iterdir() if p.is_dir()}
        for hierarchy in cgroup_hierarchies()
    }


def prepare_host_for_containers() -> dict[Path, set[str]]:
    """Fail (not skip) without the tools, sweep cgroups left by dead sessions, and
    return the root cgroup names as they are now, for the hygiene check at the end."""
    import pytest

    missing = require_tools()
    if missing:
        pytest.fail(f"missing {missing}: apt-get install systemd-container util-linux")
    sweep_stale_cgroups()
    return root_cgroup_names()


# --- processes ----------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            kids += [int(word) for word in (task / "children").read_text().split()]
    return kids


def _ns_pids(pid: int) -> list[int]:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("NSpid:"):
                return [int(word) for word in line.split()[1:]]
    return []


def find_container_init(nspawn_pid: int) -> int | None:
    """The host PID of the container's PID 1 (a descendant of nspawn whose NSpid ends in 1)."""
    queue = _children(nspawn_pid)
    while queue:
        pid = queue.pop(0)
        ns = _ns_pids(pid)
        if len(ns) > 1 and ns[-1] == 1:
            return pid
        queue += _children(pid)
    return None


def nspawn_processes(roots: Iterable[Path] | None = None) -> list[tuple[int, str]]:
    """Running systemd-nspawn processes (optionally only those booting one of `roots`)."""
    wanted = [str(root) for root in roots] if roots is not None else None
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        words = [word.decode(errors="replace") for word in argv if word]
        if not words or os.path.basename(words[0]) != "systemd-nspawn":
            continue
        if wanted is None or any(root in words for root in wanted):
            found.append((int(proc.name), " ".join(words)))
    return found


def host_swaps() -> list[str]:
    """Active swap areas on this machine (`swapon --show` without its header)."""
    result = subprocess.run(
        ["swapon", "--show", "--noheadings"], capture_output=True, text=True, check=True
    )
    return [line for line in result.stdout.splitlines() if line.strip()]


def leftovers(
    containers: Iterable[Container], cgroups_before: Mapping[Path, set[str]]
) -> list[str]:
    """What closed containers left behind: nspawn processes, cgroups (theirs, or new
    payload/supervisor ones at a hierarchy's root), mounts, swap. Empty when clean."""
    from tests.system.rootfs import mounts_under

    containers = list(containers)
    problems = [
        f"systemd-nspawn still running: {pid} {cmd}"
        for pid, cmd in nspawn_processes([c.root for c in containers])
    ]
    for c in containers:
        if c.process is not None and c.process.returncode is None:
            problems.append(f"{c.name}: systemd-nspawn {c.process.pid} not reaped")
        problems += [f"{c.name}: cgroup left: {d}" for d in c.cgroup.existing()]
        problems += [f"{c.name}: still mounted: {m}" for m in mounts_under(c.root)]
    # Only this session's cgroups: another test session on the same machine may have its
    # own containers running (their names carry its pid).
    ours = f"{CGROUP_PREFIX}-{os.getpid()}-"
    for hierarchy, names in root_cgroup_names().items():
        new = names - cgroups_before.get(hierarchy, set())
        problems += [
            f"new cgroup at the root: {hierarchy / n}"
            for n in sorted(new)
            if n in ("payload", "supervisor") or n.startswith(ours)
        ]
    problems += [f"swap on this machine: {line}" for line in host_swaps()]
    return problems


# --- preparing a root filesystem before it boots ---------------------------------------------

SWAP_DROPIN = "etc/systemd/system/dphys-swapfile.service.d/50-no-swap-in-containers.conf"


def disable_swap_units(root: Path) -> None:
    """Keep dphys-swapfile from writing its swap file in a container (it cannot swapon
    there anyway: EPERM). A drop-in, not a mask: the swap role still enables the unit."""
    path = root / SWAP_DROPIN
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "# Written by tests/system/nspawn.py: never set up swap inside a test container.\n"
        "[Unit]\nConditionVirtualization=!container\n",
        encoding="utf-8",
    )


# --- the container --------------------------------------------------------------------------


def _decode(value: Any) -> Any:
    """journalctl -o json gives binary fields as lists of byte values."""
    if isinstance(value, list) and all(isinstance(v, int) for v in value):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


@dataclass
class Container:
    """One booted root filesystem. Use `boot()`; always `close()` (boot's caller does)."""

    name: str
    root: Path
    workdir: Path
    cgroup: CgroupSlot
    process: subprocess.Popen[bytes] | None = None
    leader: int = 0
    boot_seconds: float = 0.0
    closed: bool = False

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.console.log"

    @property
    def chroot_exe(self) -> Path:
        return self.workdir / f"{self.name}-nsenter"

    # -- running things inside ---------------------------------------------------------

    def nsenter_argv(self) -> list[str]:
        return [
            "nsenter",
            f"--target={self.leader}",
            *NSENTER_NAMESPACES,
            "--",
            "/usr/bin/env",
            "-i",
            *CONTAINER_ENV,
        ]

    def run(
        self, *argv: str, input: str | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the container (no check: callers assert on the result)."""
        if self.closed or not self.leader:
            raise RuntimeError(f"container {self.name} is not running")
        return subprocess.run(
            [*self.nsenter_argv(), *argv],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def check(self, *argv: str, timeout: float = 120) -> str:
        result = self.run(*argv, timeout=timeout)
        if result.returncode != 0:
            raise AssertionError(
                f"[{self.name}] {' '.join(argv)} exited {result.returncode}: "
                f"{result.stderr.strip() or result.stdout.strip()}"
            )
        return result.stdout

    def systemctl(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return self.run("systemctl", "--no-pager", *args, timeout=timeout)

    def show(self, unit: str, *props: str) -> dict[str, str]:
        argv = ["show", unit] + [f"--property={p}" for p in props]
        out = self.systemctl(*argv).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def cursor(self) -> str:
        """The journal's current end: entries after it are new."""
        out = self.check("journalctl", "--no-pager", "-n", "1", "-o", "json", "--show-cursor")
        match = re.search(r"^-- cursor: (.+)$", out, re.M)
        if match:
            return match.group(1).strip()
        for line in out.splitlines():
            if line.startswith("{"):
                return json.loads(line)["__CURSOR"]
        return ""

    def journal(
        self, unit: str | None = None, after: str | None = None, *matches: str
    ) -> list[dict[str, Any]]:
        """Journal entries as dicts (binary fields decoded), oldest first."""
        argv = ["journalctl", "--no-pager", "-o", "json"]
        if unit:
            argv.append(f"--unit={unit}")
        if after:
            argv.append(f"--after-cursor={after}")
        out = self.check(*argv, *matches)
        return [
            {key: _decode(value) for key, value in json.loads(line).items()}
            for line in out.splitlines()
            if line.startswith("{")
        ]

    def write(self, path: str, text: str, mode: int = 0o644) -> None:
        """Write a file into the container's root filesystem (from the host side)."""
        target = self.root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        partial.write_text(text, encoding="utf-8")
        partial.chmod(mode)
        partial.replace(target)  # readers never see half a file

    def read(self, path: str) -> str:
        return (self.root / path.lstrip("/")).read_text(encoding="utf-8")

    def wait_booted(self, timeout: float = 90) -> str:
        """Wait until systemd finished booting; return `is-system-running`'s answer."""
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(
                    f"systemd-nspawn for {self.name} exited {self.process.returncode}:\n"
                    + self.console_tail()
                )
            left = max(1.0, deadline - time.monotonic())
            with contextlib.suppress(subprocess.TimeoutExpired):
                result = self.run("systemctl", "is-system-running", "--wait", timeout=left)
                state = result.stdout.strip()
                if state in ("running", "degraded"):
                    return state
            time.sleep(0.2)
        raise TimeoutError(f"{self.name} did not finish booting in {timeout:.0f} s ({state!r})")

    def console_tail(self, chars: int = 4000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-chars:]
        return ""

    # -- teardown ------------------------------------------------------------------------

    def close(self, timeout: float = 30) -> None:
        """Power the container off, kill what is left, remove its cgroups. Idempotent."""
        if self.closed:
            return
        self.closed = True
        process = self.process
        try:
            if process is not None and process.poll() is None:
                # nspawn forwards SIGTERM as a clean poweroff to the container's systemd.
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.cgroup.kill_all()
                    process.kill()
                    process.wait(10)
        finally:
            self.leader = 0
            self.cgroup.kill_all()
            self.cgroup.remove()


def write_chroot_exe(container: Container) -> Path:
    """An `ansible_chroot_exe` that enters the live container instead of chrooting.

    The chroot connection runs `<exe> <ansible_host> /bin/sh -c <command>` (and pipes
    files through `dd` the same way); this enters the namespaces of the container's PID 1.
    """
    env = " ".join(shlex.quote(word) for word in CONTAINER_ENV)
    namespaces = " ".join(NSENTER_NAMESPACES)
    script = f"""#!/bin/sh
# ansible_chroot_exe for the systemd-nspawn container {container.name} (tests/system/nspawn.py)
if [ "$1" != {shlex.quote(str(container.root))} ]; then
    echo "$0: expected root {container.root}, got $1" >&2
    exit 125
fi
shift
exec nsenter --target={container.leader} {namespaces} -- /usr/bin/env -i {env} "$@"
"""
    path = container.chroot_exe
    path.write_text(script, encoding="utf-8")
    path.chmod(0o755)
    return path


def start(
    root: Path,
    name: str,
    workdir: Path,
    *,
    private_network: bool = True,
    network_namespace: Path | None = None,
) -> Container:
    """Start `systemd-nspawn -b` on `root` in a cgroup of its own; don't wait for boot.

    Networking: by default a private network with only loopback (`--private-network`);
    with `network_namespace` (a /run/netns file, tests/system/fleetnet.py) the container
    runs in that namespace instead, on the network the test built there.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    slot = CgroupSlot(f"{CGROUP_PREFIX}-{os.getpid()}-{name}")
    container = Container(name, root, workdir, slot)
    slot.create()
    argv = [
        "systemd-nspawn",
        f"--directory={root}",
        "--boot",
        "--register=no",
        "--keep-unit",
        f"--machine={name}",
        "--console=read-only",
        "--link-journal=no",
        "--quiet",
    ]
    if network_namespace is not None:
        # nspawn refuses it together with --private-network (systemd-nspawn(1)).
        argv.append(f"--network-namespace-path={network_namespace}")
    elif private_network:
        argv.append("--private-network")
    try:
        with container.log_path.open("wb") as log:
            container.process = subprocess.Popen(
                ["sh", "-c", slot.enter_script(), "sh", *argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C on the test run is not its poweroff
            )
        deadline = time.monotonic() + 30
        while not container.leader:
            if container.process.poll() is not None:
                raise RuntimeError(
                    f"systemd-nspawn exited {container.process.returncode}:\n"
                    + container.console_tail()
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"no PID 1 appeared in {name} within 30 s")
            container.leader = find_container_init(container.process.pid) or 0
            time.sleep(0.05)
        write_chroot_exe(container)
    except BaseException:
        container.close()
        raise
    return container


def boot_all(
    roots: Mapping[str, Path],
    workdir: Path,
    timeout: float = 120,
    network_namespaces: Mapping[str, Path] | None = None,
) -> tuple[dict[str, Container], float]:
    """Start several containers at once and wait until each has booted.

    `network_namespaces` maps a container's name to the network namespace it runs in
    (see `start`); the others get a private network of their own.

    Returns the containers (already closed again if booting any of them failed) and the
    seconds from the first start to the last finished boot.
    """
    started = time.monotonic()
    containers: dict[str, Container] = {}
    namespaces = network_namespaces or {}
    try:
        for name, root in roots.items():
            containers[name] = start(root, name, workdir, network_namespace=namespaces.get(name))
        for container in containers.values():
            container.wait_booted(timeout)
            container.boot_seconds = time.monotonic() - started
    except BaseException:
        for container in containers.values():
            with contextlib.suppress(Exception):
                container.close()
        raise
    return containers, time.monotonic() - started


@contextlib.contextmanager
def booted(root: Path, name: str, workdir: Path, timeout: float = 120) -> Iterator[Container]:
    containers, _ = boot_all({name: root}, workdir, timeout)
    try:
        yield containers[name]
    finally:
        containers[name].close()


def wait_for(what: str, probe: Any, timeout: float, interval: float = 0.2) -> Any:
    """Call `probe()` until it returns something truthy; return that, or raise."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})"
            )
        time.sleep(interval)


# --- pi-daemon in a container ----------------------------------------------------------------

UNIT = "pi-daemon.service"
# Files the tests control instead of the Pi's sensors (the unit's ProtectSystem=strict
# leaves /srv readable to the service).
SENSOR_DIR = "/srv/pi-daemon-test"
THERMAL = f"{SENSOR_DIR}/thermal"
EVENTS_FILE = "/var/lib/pi-daemon/events.jsonl"
TEST_DROPIN = "/etc/systemd/system/pi-daemon.service.d/50-system-test.conf"
MEMINFO = """MemTotal:        3884000 kB
MemFree:         2000000 kB
MemAvailable:    3000000 kB
SwapTotal:        102396 kB
SwapFree:         102396 kB
"""


def sensor_toml(poll_interval_s: float = 0.2) -> str:
    """[sensors] and [throttle] for a test: readings from SENSOR_DIR, quick state changes
    (no label smoothing, 1 s dwell) and otherwise the production thresholds."""
    return f"""[sensors]
thermal_path = "{THERMAL}"
meminfo_path = "{SENSOR_DIR}/meminfo"
vmstat_path = "{SENSOR_DIR}/vmstat"
pressure_path = "{SENSOR_DIR}/pressure"
hwmon_root = "{SENSOR_DIR}/hwmon"
vcgencmd_enabled = false
poll_interval_s = {poll_interval_s}

[throttle]
min_dwell_s = 1.0
label_smoothing_s = 0.0
"""


def seed_sensors(root: Path, celsius: float = 50.0) -> None:
    """Sensor files with a cool SoC, plenty of memory, no swapping, no memory pressure."""
    folder = root / SENSOR_DIR.lstrip("/")
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "thermal": f"{round(celsius * 1000)}\n",
        "meminfo": MEMINFO,
        "vmstat": "pswpin 0\npswpout 0\n",
        "pressure": "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
        "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
    }
    for name, text in files.items():
        (folder / name).write_text(text, encoding="ascii")
        (folder / name).chmod(0o644)
    folder.chmod(0o755)


def set_temperature(container: Container, celsius: float) -> None:
    container.write(THERMAL, f"{round(celsius * 1000)}\n")


def installed_model(root: Path) -> dict[str, str]:
    """The [model] path, labels and sha256 of the config the playbook rendered."""
    import tomllib

    config = tomllib.loads((root / "etc/pi-daemon/config.toml").read_text(encoding="utf-8"))
    model = config["model"]
    return {"path": model["path"], "labels": model["labels"], "sha256": model["sha256"]}


def daemon_config(
    model: Mapping[str, str],
    *,
    fps: float = 10.0,
    summary_interval_s: float = 1.0,
    testing: str = "",
) -> str:
    """A complete config for the booted tests: the files source (bundled photos) at a
    steady pace, the installed model on one thread, 1 s summaries, every result in the
    journal, test sensors."""
    return f"""# Written by tests/system (nspawn.py): the daemon on the files source under systemd.
source = "files"

[model]
path = {json.dumps(model["path"])}
labels = {json.dumps(model["labels"])}
sha256 = {json.dumps(model.get("sha256", ""))}
num_threads = 1

[files]
paths = []
loop = true
fps = {fps}

[output]
events_file = "{EVENTS_FILE}"
summary_interval_s = {summary_interval_s}
log_level = "info"

# These tests read every classified frame's result line in the journal; by default the
# journal gets label events only (README, "Event rules").
[rules]
journal_results = "changes"

{sensor_toml()}
{testing}"""


def group_id(root: Path, group: str) -> int:
    for line in (root / "etc/group").read_text(encoding="utf-8").splitlines():
        fields = line.split(":")
        if fields[0] == group:
            return int(fields[2])
    raise LookupError(f"no group {group} in {root}/etc/group")


def write_config(root: Path, text: str) -> None:
    """/etc/pi-daemon/config.toml as the role installs it: root:pi-daemon 0640 (written
    from the host side, so it works before the container boots too)."""
    target = root / "etc/pi-daemon/config.toml"
    partial = target.with_name("config.toml.partial")
    partial.write_text(text, encoding="utf-8")
    os.chown(partial, 0, group_id(root, "pi-daemon"))
    partial.chmod(0o640)
    partial.replace(target)


def events(
    container: Container, kind: str | None = None, after: str | None = None
) -> list[dict[str, Any]]:
    """pi-daemon's event entries (optionally of one PI_DAEMON_EVENT kind) after a cursor.

    Filtered here, not with a `PI_DAEMON_EVENT=kind` match: systemd 252's journalctl
    returns nothing for `--after-cursor=C FIELD=value` when C is not itself an entry
    that matches (seen here with a reload event right after the cursor).
    """
    return [
        entry
        for entry in container.journal(UNIT, after)
        if "PI_DAEMON_EVENT" in entry and (kind is None or entry["PI_DAEMON_EVENT"] == kind)
    ]


def playbook_host_vars(container: Container, **overrides: object) -> dict[str, object]:
    """Inventory vars that run site.yml against the live container: the chroot connection
    through the nsenter wrapper, health check on, swap never applied, the daemon on the
    files source with the test sensors."""
    from tests.system import rootfs as rf

    host_vars = rf.chroot_host_vars(
        container.root,
        ansible_chroot_exe=str(container.chroot_exe),
        pi_daemon_health_check=True,
        pi_daemon_health_check_timeout=90,
        pi_daemon_health_check_delay=1,
        pi_daemon_source="files",
        pi_daemon_files_fps=5.0,
        pi_daemon_model_num_threads=1,
        pi_daemon_config_extra=sensor_toml(),
    )
    host_vars.update(overrides)
    assert host_vars["swap_apply"] is False
    return host_vars
