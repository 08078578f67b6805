"""The arm64 install path, under qemu-user emulation: the closest CI comes to a Pi 4B.

An arm64 Debian bookworm root filesystem (debootstrap, cached as a tarball under
`.cache/arm64/`) gets the project's wheel in two venvs:

- `litert`: the wheel with its default dependencies (ai-edge-litert, numpy 2);
- `tflite-runtime`: the wheel with `--no-deps`, its other dependencies, numpy<2 and
  tflite-runtime 2.14.0 (the old runtime fails with numpy 2), and no ai-edge-litert.

An arm64 Debian trixie root filesystem (Raspberry Pi OS Trixie's base, Python 3.13) gets
one venv, `litert` (the cp313 aarch64 ai-edge-litert wheel): tflite-runtime has no wheel
for Python 3.13, and there `--backend tflite-runtime` must fail in one line with exit 78.
The `guest` fixture is parametrized by suite; one guest exists at a time.

Each venv runs `pi-daemon classify` on the bundled demo photos, with its backend chosen
explicitly. Needs root (debootstrap, chroot, binfmt_misc); CI runs as root, so there it
never skips. binfmt_misc and the qemu-aarch64 entry are left as they were found, and all
chroot mounts live in a private mount namespace (see arm64.py).

Timings go to the terminal at the end of the module, e.g. with `pytest -m system`.
"""

from __future__ import annotations

import os
import re
import shutil
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.system import arm64

pytestmark = [pytest.mark.system, pytest.mark.slow]

BUNDLED_MODEL = "pi_daemon/models/efficientnet-lite0-int8.tflite"
GUEST_WHEELS = "/opt/wheels"
INSTALL_TIMEOUT = 1800  # pip under emulation; a cold run takes a few minutes
CLASSIFY_TIMEOUT = 600


@dataclass(frozen=True)
class Venv:
    backend: str  # the --backend value
    path: str  # inside the guest

    @property
    def python(self) -> str:
        return f"{self.path}/bin/python"


VENVS = {
    "litert": Venv("litert", "/opt/venv-litert"),
    "tflite-runtime": Venv("tflite-runtime", "/opt/venv-tflite-runtime"),
}
# The venvs each suite's guest gets, and the python3 it has.
SUITE_VENVS = {"bookworm": ("litert", "tflite-runtime"), "trixie": ("litert",)}
SUITE_PYTHON = {"bookworm": "3.11", "trixie": "3.13"}


@dataclass
class Arm64Guest:
    suite: str
    root: Path
    chroot: arm64.Chroot
    timings: arm64.Timings
    wheelhouse_reused: dict[str, bool] = field(default_factory=dict)
    report: list[str] = field(default_factory=list)  # classify output, for the summary

    def site_packages(self, venv: Venv) -> Path:
        found = sorted((self.root / venv.path.lstrip("/")).glob("lib/python3*/site-packages"))
        assert len(found) == 1, found
        return found[0]

    def guest_path(self, host_path: Path) -> str:
        return "/" + str(host_path.relative_to(self.root))


def _require_root_and_tools() -> None:
    if os.geteuid() != 0:
        reason = (
            "arm64 install-path test NOT RUN: it needs root (debootstrap, chroot, "
            f"mounting binfmt_misc); running as uid {os.geteuid()}. CI runs it as root."
        )
        warnings.warn(reason, stacklevel=1)
        pytest.skip(reason)
    missing = arm64.missing_tools()
    if missing:
        pytest.fail(
            "arm64 test: missing host tools: "
            + ", ".join(missing)
            + " (scripts/test.sh installs .ci/apt-packages.txt)",
            pytrace=False,
        )
    with open("/proc/filesystems") as filesystems:
        if "binfmt_misc" not in filesystems.read():
            pytest.fail("arm64 test: this kernel has no binfmt_misc", pytrace=False)


def _install_venvs(guest: Arm64Guest, wheel: str, requirements: list[str], salt: str) -> None:
    run = guest.chroot.run
    label = "" if guest.suite == "bookworm" else f" {guest.suite}"

    # litert: the wheel with its default dependencies (the aarch64 marker pulls in
    # ai-edge-litert; numpy resolves to 2.x).
    litert = VENVS["litert"]
    with guest.timings.phase(f"venv litert{label}: pip install (emulated)"):
        run(["python3", "-m", "venv", litert.path], timeout=300)
        reused = arm64.install_from_wheelhouse(
            guest.chroot,
            litert.python,
            requirements,
            targets=[wheel],
            salt=salt,
            timeout=INSTALL_TIMEOUT,
        )
    guest.wheelhouse_reused["litert"] = reused
    if "tflite-runtime" not in SUITE_VENVS[guest.suite]:
        return

    # tflite-runtime: the wheel without its default deps (they pull ai-edge-litert),
    # then those deps minus ai-edge-litert and numpy, plus numpy<2 and the old runtime.
    old = VENVS["tflite-runtime"]
    deps = [r for r in requirements if arm64.requirement_name(r) not in ("ai-edge-litert", "numpy")]
    with guest.timings.phase("venv tflite-runtime: pip install (emulated)"):
        run(["python3", "-m", "venv", old.path], timeout=300)
        run(
            [
                old.python,
                "-m",
                "pip",
                "install",
                "-q",
                "--no-compile",
                "--no-index",
                "--no-deps",
                wheel,
            ],
            timeout=INSTALL_TIMEOUT,
        )
        reused = arm64.install_from_wheelhouse(
            guest.chroot,
            old.python,
            [*deps, "numpy<2", "tflite-runtime==2.14.0"],
            salt=salt,
            timeout=INSTALL_TIMEOUT,
        )
    guest.wheelhouse_reused["tflite-runtime"] = reused


class _TimingsReport:
    """A plugin registered at teardown: prints the timings in the terminal summary
    (fixture teardown output itself is captured)."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        terminalreporter.section("arm64 install path timings")
        for line in self.lines:
            terminalreporter.write_line(line)


@pytest.fixture(scope="module", params=list(SUITE_VENVS))
def guest(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Arm64Guest]:
    _require_root_and_tools()
    suite = request.param
    timings = arm64.Timings()
    work = tmp_path_factory.mktemp(f"arm64-{suite}")
    root = work / "rootfs"
    before = arm64.BinfmtState.now()
    tarball: Path | None = None
    guest: Arm64Guest | None = None
    try:
        with arm64.exclusive_lock(arm64.CACHE / "lock"), arm64.qemu_aarch64():
            wheel = arm64.build_wheel(work / "wheel", timings)
            assert BUNDLED_MODEL in arm64.wheel_members(wheel), (
                f"{wheel.name} lacks the default model {BUNDLED_MODEL}"
            )
            tarball = arm64.cached_rootfs(root, timings, suite)
            (root / GUEST_WHEELS.lstrip("/")).mkdir(parents=True, exist_ok=True)
            shutil.copy2(wheel, root / GUEST_WHEELS.lstrip("/"))
            chroot = arm64.Chroot(root, arm64.CACHE / "guest-pip")
            guest = Arm64Guest(suite, root, chroot, timings)
            _install_venvs(
                guest,
                f"{GUEST_WHEELS}/{wheel.name}",
                arm64.wheel_requirements(wheel),
                tarball.name,
            )
            yield guest
    finally:
        try:
            arm64.remove_tree(root)
        finally:
            lines = [
                f"[{suite}] binfmt as found: {before}",
                f"rootfs cache: {tarball.name if tarball else '-'}",
                *timings.lines(),
            ]
            if guest is not None:
                lines.append(f"wheelhouse reused: {guest.wheelhouse_reused}")
                lines.extend(guest.report)
            report = _TimingsReport(lines)
            request.config.pluginmanager.register(report, f"arm64-timings-{suite}")
    # Hygiene, checked after the context managers have restored everything.
    assert not arm64.mounts_under(work), arm64.mounts_under(work)
    assert arm64.BinfmtState.now() == before, "binfmt_misc not restored"


def test_guest_interpreter_is_aarch64(guest: Arm64Guest) -> None:
    out = guest.chroot.run(
        ["python3", "-c", "import platform; print(platform.machine())"], timeout=120
    ).stdout
    assert out.strip().splitlines()[-1] == "aarch64", out
    version = guest.chroot.run(["python3", "--version"], timeout=120).stdout
    assert version.startswith(f"Python {SUITE_PYTHON[guest.suite]}."), version
    # The emulated CPU is a Pi 4B's Cortex-A72 (arm64.QEMU_CPU): ARMv8.0, so no pointer
    # authentication (HWCAP_PACA, bit 30) and no dot product (HWCAP_ASIMDDP, bit 20).
    hwcap = guest.chroot.run(
        [
            "python3",
            "-c",
            "import ctypes; f = ctypes.CDLL(None).getauxval; f.restype = ctypes.c_ulong;"
            " print(f(16))",  # AT_HWCAP
        ],
        timeout=120,
    ).stdout
    bits = int(hwcap.strip().splitlines()[-1])
    assert bits & (1 << 1), hwcap  # HWCAP_ASIMD: it did answer
    assert not bits & ((1 << 30) | (1 << 20)), f"not a Cortex-A72: HWCAP {bits:#x}"
    # The real guest binary, not the host's, answered: it is an aarch64 ELF.
    elf = (guest.root / "usr/bin").glob("python3.*")
    header = next(p for p in elf if p.name[len("python3.") :].isdigit()).read_bytes()[:20]
    assert header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == 183  # EM_AARCH64


def test_classify_under_emulation_with_litert(guest: Arm64Guest) -> None:
    _classify_under_emulation(guest, "litert")


@pytest.mark.parametrize("guest", ["bookworm"], indirect=True)
def test_classify_under_emulation_with_tflite_runtime(guest: Arm64Guest) -> None:
    _classify_under_emulation(guest, "tflite-runtime")


@pytest.mark.parametrize("guest", ["trixie"], indirect=True)
def test_tflite_runtime_is_refused_in_one_line_on_python_313(guest: Arm64Guest) -> None:
    venv = VENVS["litert"]
    photo = guest.guest_path(guest.site_packages(venv) / "pi_daemon" / "demo" / "coffee.jpg")
    result = guest.chroot.run(
        [f"{venv.path}/bin/pi-daemon", "classify", "--backend", "tflite-runtime", photo],
        timeout=CLASSIFY_TIMEOUT,
        check=False,
    )
    # arm64.run merges stderr into stdout: the one line is the whole output.
    assert result.returncode == 78, result.stdout
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, result.stdout
    assert lines[0].startswith("pi-daemon: model.backend = 'tflite-runtime': "), lines
    assert "tflite-runtime has no wheel for Python 3.13" in lines[0], lines
    guest.report.append(f"[trixie tflite-runtime] exit {result.returncode}: {lines[0]}")


def _classify_under_emulation(guest: Arm64Guest, backend: str) -> None:
    venv = VENVS[backend]
    site = guest.site_packages(venv)

    # The venv holds what this backend is about: aarch64 wheels, the right numpy.
    probe = (
        guest.chroot.run(
            [
                venv.python,
                "-c",
                "import platform, sysconfig, numpy, importlib.metadata as md, importlib.util as u;"
                "print(platform.machine(), sysconfig.get_platform(), numpy.__version__,"
                " md.version('ai-edge-litert') if u.find_spec('ai_edge_litert') else '-',"
                " md.version('tflite-runtime') if u.find_spec('tflite_runtime') else '-')",
            ],
            timeout=300,
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    machine, platform_tag, numpy_version, litert_version, tflite_version = probe.split()
    assert (machine, platform_tag) == ("aarch64", "linux-aarch64"), probe
    if backend == "litert":
        assert int(numpy_version.split(".")[0]) >= 2, probe
        assert litert_version != "-", probe
        # The wheel pip chose is the one for this guest's Python (cp311, cp313) on aarch64.
        (wheel_meta,) = site.glob("ai_edge_litert-*.dist-info/WHEEL")
        tags = re.findall(r"^Tag: (\S+)$", wheel_meta.read_text(), re.M)
        cp = "cp" + SUITE_PYTHON[guest.suite].replace(".", "")
        assert any(t.startswith(f"{cp}-{cp}-") and t.endswith("_aarch64") for t in tags), tags
        guest.report.append(f"[{guest.suite}] ai-edge-litert wheel tags: {', '.join(tags)}")
    else:
        assert int(numpy_version.split(".")[0]) < 2, probe
        assert (tflite_version, litert_version) == ("2.14.0", "-"), probe

    photos = [site / "pi_daemon" / "demo" / name for name in ("coffee.jpg", "rocket.jpg")]
    for photo in photos:
        assert photo.is_file(), f"{photo} is not in the installed wheel"
    with guest.timings.phase(f"classify {guest.suite} {backend} (emulated)"):
        result = guest.chroot.run(
            [
                f"{venv.path}/bin/pi-daemon",
                "classify",
                "--backend",
                backend,
                "--top",
                "3",
                *(guest.guest_path(p) for p in photos),
            ],
            timeout=CLASSIFY_TIMEOUT,
        )
    lines = [line for line in result.stdout.splitlines() if line.startswith("/opt/")]
    guest.report.append(f"[{guest.suite} {backend}] {probe}")
    guest.report.extend(f"  {line}" for line in lines)
    ranked = dict(arm64.parse_classify_line(line) for line in lines)
    coffee = ranked[guest.guest_path(photos[0])]
    rocket = ranked[guest.guest_path(photos[1])]
    assert coffee[0][0] == "espresso", result.stdout
    assert coffee[0][1] > 0.5, result.stdout
    assert {"missile", "projectile"} & {label for label, _ in rocket}, result.stdout
