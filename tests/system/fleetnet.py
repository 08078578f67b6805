"""A private network for a fleet of test containers: network namespaces, one bridge, veths.

Every container gets a network namespace of its own (`ip netns add`), booted into with
`systemd-nspawn --network-namespace-path=/run/netns/<name>` (tests/system/nspawn.py,
`start(..., network_namespace=...)`). A hub namespace holds one bridge; each container's
namespace is joined to it by a veth pair created *inside* the hub (its peer moved straight
into the container's namespace), so no interface ever exists in the host's own network
namespace, and no namespace has a route to anything but the private subnet: the
containers reach each other and nothing else, and the host's network never sees them.

The test's own clients (a subscriber, a curl-like probe) run inside one of these
namespaces too (`FleetNet.run` / `FleetNet.popen`): `nsenter --net` into it, in a private
mount namespace where the fleet's hosts file is bound over /etc/hosts, so the clients
resolve the fleet's names as the containers do, and nothing is left behind on the host.

`FleetNet.close()` deletes every namespace (the bridge and the veths go with them) and is
safe to call twice; `leftovers()` lists what would still be there (namespaces, processes
inside them, new interfaces on the host).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

NETNS_DIR = Path("/run/netns")
PREFIX = "pi-daemon-fleet"
BRIDGE = "fleet-br"
# The interface name inside each container's namespace.
INTERFACE = "fleet0"


def ip(*args: str) -> str:
    """Run `ip`, raising with its stderr when it fails."""
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} exited {result.returncode}: {result.stderr}")
    return result.stdout


def host_interfaces() -> set[str]:
    """The interfaces of the host's own network namespace (to prove none was added)."""
    return set(os.listdir("/sys/class/net"))


def namespace_inode(path: Path) -> int:
    return os.stat(path).st_ino


def processes_in(inodes: Mapping[int, str]) -> list[tuple[int, str]]:
    """(pid, namespace name) of every process whose network namespace is one of ours."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            link = os.readlink(proc / "ns" / "net")  # "net:[4026532...]"
            inode = int(link.split("[", 1)[1].rstrip("]"))
            if inode in inodes:
                found.append((int(proc.name), inodes[inode]))
    return found


@dataclass
class FleetNet:
    """The namespaces of one test session's fleet; make it with `create()`."""

    session: str  # unique per test session: namespace names carry it
    subnet: ipaddress.IPv4Network
    addresses: dict[str, ipaddress.IPv4Address]  # host name -> its address
    hosts_file: Path  # /etc/hosts for the containers and the clients
    interfaces_before: set[str]
    inodes: dict[int, str] = field(default_factory=dict)  # namespace inode -> name
    made: list[str] = field(default_factory=list)  # namespace names, in creation order
    closed: bool = False

    @property
    def hub(self) -> str:
        return f"{self.session}-hub"

    def netns(self, host: str) -> str:
        """The namespace name of `host` (as `ip netns list` shows it)."""
        if host not in self.addresses:
            raise KeyError(f"{host} is not on this fleet network")
        return f"{self.session}-{host}"

    def path(self, host: str) -> Path:
        """The namespace file to give `systemd-nspawn --network-namespace-path=`."""
        return NETNS_DIR / self.netns(host)

    def address(self, host: str) -> str:
        return str(self.addresses[host])

    def hosts_text(self) -> str:
        lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
        lines += [f"{address}\t{host}" for host, address in self.addresses.items()]
        return "# The fleet test's private network (tests/system/fleetnet.py).\n" + (
            "\n".join(lines) + "\n"
        )

    def install_hosts(self, root: Path) -> None:
        """Write the fleet's /etc/hosts into a root filesystem before it boots."""
        target = root / "etc" / "hosts"
        if target.is_symlink():
            target.unlink()
        target.write_text(self.hosts_text(), encoding="utf-8")
        target.chmod(0o644)

    # -- building it ---------------------------------------------------------------------

    def _add_namespace(self, name: str) -> None:
        ip("netns", "add", name)
        self.made.append(name)
        self.inodes[namespace_inode(NETNS_DIR / name)] = name
        ip("-n", name, "link", "set", "lo", "up")

    def _build(self) -> None:
        self._add_namespace(self.hub)
        ip("-n", self.hub, "link", "add", BRIDGE, "type", "bridge")
        ip("-n", self.hub, "link", "set", BRIDGE, "up")
        prefix = self.subnet.prefixlen
        for index, host in enumerate(self.addresses):
            name = self.netns(host)
            self._add_namespace(name)
            port = f"port{index}"
            # Created inside the hub, its peer moved straight into the host's namespace:
            # neither end ever exists in the host's own network namespace.
            veth = ("type", "veth", "peer", "name", INTERFACE, "netns", name)
            ip("-n", self.hub, "link", "add", port, *veth)
            ip("-n", self.hub, "link", "set", port, "master", BRIDGE, "up")
            ip("-n", name, "addr", "add", f"{self.addresses[host]}/{prefix}", "dev", INTERFACE)
            ip("-n", name, "link", "set", INTERFACE, "up")
        self.hosts_file.write_text(self.hosts_text(), encoding="utf-8")

    # -- clients inside a namespace ------------------------------------------------------

    def argv(self, host: str, argv: Sequence[str]) -> list[str]:
        """`argv` run inside `host`'s network namespace, with the fleet's /etc/hosts."""
        if self.closed:
            raise RuntimeError("the fleet network is gone")
        script = 'mount --bind "$1" /etc/hosts && n="$2" && shift 2 && exec nsenter --net="$n" "$@"'
        unshare = ["unshare", "--mount", "--propagation", "private", "--"]
        files = [str(self.hosts_file), str(self.path(host))]
        return [*unshare, "sh", "-c", script, "sh", *files, "--", *argv]

    def run(
        self, host: str, argv: Sequence[str], *, timeout: float = 60, **kwargs: object
    ) -> subprocess.CompletedProcess[str]:
        """Run a client inside `host`'s namespace (no check: callers assert)."""
        return subprocess.run(
            self.argv(host, argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            **kwargs,  # type: ignore[arg-type]
        )

    def popen(self, host: str, argv: Sequence[str], **kwargs: object) -> subprocess.Popen[bytes]:
        """Start a long-running client inside `host`'s namespace; the caller stops it."""
        return subprocess.Popen(self.argv(host, argv), start_new_session=True, **kwargs)  # type: ignore[call-overload]

    # -- teardown ------------------------------------------------------------------------

    def kill_stragglers(self) -> None:
        for pid, _ in processes_in(self.inodes):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def close(self, timeout: float = 10) -> None:
        """Delete every namespace (bridge and veths go with them). Idempotent.

        Called after the containers are closed; a process still inside one (a client
        that outlived its test) is killed first, or its namespace would outlive the file.
        """
        if self.closed:
            return
        self.closed = True
        deadline = time.monotonic() + timeout
        while processes_in(self.inodes) and time.monotonic() < deadline:
            self.kill_stragglers()
            time.sleep(0.1)
        errors = []
        for name in reversed(self.made):
            if (NETNS_DIR / name).exists():
                result = subprocess.run(
                    ["ip", "netns", "delete", name], capture_output=True, text=True, check=False
                )
                if result.returncode != 0:
                    errors.append(f"{name}: {result.stderr.strip()}")
        with contextlib.suppress(OSError):
            self.hosts_file.unlink()
        if errors:
            raise RuntimeError("could not delete network namespaces: " + "; ".join(errors))

    def leftovers(self) -> list[str]:
        """What this network left behind: namespaces, processes in them, host interfaces."""
        problems = [
            f"network namespace still there: {name}"
            for name in self.made
            if (NETNS_DIR / name).exists()
        ]
        listed = ip("netns", "list")
        problems += [
            f"ip netns list still shows {line.split()[0]}"
            for line in listed.splitlines()
            if line.startswith(self.session + "-")
        ]
        problems += [
            f"process {pid} still in namespace {name}" for pid, name in processes_in(self.inodes)
        ]
        new = host_interfaces() - self.interfaces_before
        problems += [f"new interface on the host: {name}" for name in sorted(new)]
        return problems


def create(
    hosts: Sequence[str], workdir: Path, subnet: str = "10.77.0.0/24", first: int = 10
) -> FleetNet:
    """Namespaces, bridge and veths for `hosts`, addressed from `first` up in `subnet`."""
    network = ipaddress.IPv4Network(subnet)
    addresses = {host: network.network_address + first + i for i, host in enumerate(hosts)}
    if any(address not in network for address in addresses.values()):
        raise ValueError(f"{len(hosts)} hosts from .{first} do not fit in {subnet}")
    workdir.mkdir(parents=True, exist_ok=True)
    net = FleetNet(
        session=f"{PREFIX}-{os.getpid()}",
        subnet=network,
        addresses=addresses,
        hosts_file=workdir / "fleet-hosts",
        interfaces_before=host_interfaces(),
    )
    try:
        net._build()
    except BaseException:
        net.close()
        raise
    return net


@contextlib.contextmanager
def fleet_network(hosts: Sequence[str], workdir: Path, **kwargs: object) -> Iterator[FleetNet]:
    net = create(hosts, workdir, **kwargs)  # type: ignore[arg-type]
    try:
        yield net
    finally:
        net.close()


def stale_namespaces() -> list[str]:
    """Our namespaces whose creating test session is gone (a killed run's)."""
    result = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    stale = []
    for line in result.stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        if not name.startswith(PREFIX + "-"):
            continue
        pid = name.removeprefix(PREFIX + "-").split("-", 1)[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            stale.append(name)
    return stale


def sweep_stale_namespaces() -> list[str]:
    """Delete namespaces that a killed test session left behind."""
    removed = []
    for name in stale_namespaces():
        result = subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)
        if result.returncode == 0:
            removed.append(name)
    return removed
