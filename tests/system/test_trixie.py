"""Debian 13 trixie, the base of Raspberry Pi OS Trixie: Python 3.13, systemd 257, the roles.

`converged_trixie` (conftest.py) is a plain Debian trixie minbase provisioned by site.yml
through the chroot connection, exactly as `converged_rootfs` is for bookworm. Every check
test_ansible.py makes of the bookworm result is made again here, against this one (the
same functions, not copies); then what differs on trixie:

- the release venv runs Python 3.13, and `backend = "tflite-runtime"` (no wheel for 3.13)
  is refused in one line with exit 78 while `auto` classifies with LiteRT;
- the unit is verified, and its exposure measured, by trixie's own systemd 257;
- the swap role's three answers on Debian 13: dphys-swapfile on plain Debian (rpi-swap does
  not exist there), rpi-swap where apt offers it (Pi OS Trixie; here a stand-in package from
  a local repository, tests/system/standin_apt.py), and a clear failure when rpi-swap is
  asked for where there is none.

Swap is never applied (`swap_apply: false`, and the role refuses in a chroot anyway).
test_nspawn.py boots this same converged root filesystem under systemd 257.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.system import rootfs as rf
from tests.system import standin_apt
from tests.system import test_ansible as bookworm
from tests.system.conftest import TIMINGS, ConvergedRootfs, RootfsFactory
from tests.test_unit_file import MAX_EXPOSURE

pytestmark = [pytest.mark.system, pytest.mark.slow]

UNIT_PATH = "/etc/systemd/system/pi-daemon.service"
VENV = "/opt/pi-daemon/venv"
DROPIN = "/etc/rpi/swap.conf.d/80-ansible-swap.conf"


def check(root: ConvergedRootfs, *argv: str, user: str | None = None) -> str:
    result = root.chroot(*argv, user=user)
    assert result.returncode == 0, f"{argv}: exit {result.returncode}: {result.stderr}"
    return result.stdout


# --- The release itself ----------------------------------------------------------------


def test_the_root_filesystem_is_debian_13_with_python_313_and_systemd_257(
    converged_trixie: ConvergedRootfs,
) -> None:
    assert check(converged_trixie, "cat", "/etc/debian_version").startswith("13.")
    assert check(converged_trixie, "python3", "--version").startswith("Python 3.13.")
    systemd = check(converged_trixie, "systemctl", "--version").splitlines()[0]
    assert re.match(r"systemd 257\b", systemd), systemd
    TIMINGS["trixie: versions"] = (
        f"Debian {check(converged_trixie, 'cat', '/etc/debian_version').strip()}, {systemd}"
    )


# What test_ansible.py asserts of the bookworm result, asserted of this one. (Left out: the
# classify test, which names python3.11's site-packages, and the timed re-runs, below.)
SAME_AS_BOOKWORM: list[Callable[[ConvergedRootfs], None]] = [
    bookworm.test_first_run_provisions_the_root_filesystem,
    bookworm.test_dphys_swapfile_has_the_configured_size,  # plain Debian: no rpi-swap
    bookworm.test_no_swap_was_turned_on_for_this_machine,
    bookworm.test_blas_and_lapack_alternatives_point_at_openblas,
    bookworm.test_service_user_exists_with_its_groups,
    bookworm.test_release_venv_runs_pi_daemon_inside_the_root_filesystem,
    bookworm.test_model_is_installed_with_its_sha256,
    bookworm.test_rendered_config_passes_check_config_as_the_service_user,
    bookworm.test_unit_is_installed_from_the_repository_and_enabled,
]


@pytest.mark.parametrize("bookworm_check", SAME_AS_BOOKWORM, ids=lambda f: f.__name__[5:])
def test_trixie_converges_to_what_bookworm_does(
    converged_trixie: ConvergedRootfs, bookworm_check: Callable[[ConvergedRootfs], None]
) -> None:
    bookworm_check(converged_trixie)


def test_openblas_is_trixies_own(converged_trixie: ConvergedRootfs) -> None:
    triplet = rf.MULTIARCH[os.uname().machine]
    target = f"/usr/lib/{triplet}/openblas-pthread/libblas.so.3"
    owner = check(converged_trixie, "dpkg-query", "-S", target).strip()
    assert owner.startswith("libopenblas0-pthread:"), owner
    version = check(converged_trixie, "dpkg-query", "-W", "-f=${Version}", "libopenblas0-pthread")
    # Bookworm has 0.3.21; trixie 0.3.29 or later.
    assert tuple(int(n) for n in version.split("+")[0].split("-")[0].split(".")[:3]) > (0, 3, 21)
    TIMINGS["trixie: libopenblas0-pthread"] = version


def test_release_venv_is_python_313(converged_trixie: ConvergedRootfs) -> None:
    out = check(
        converged_trixie,
        f"{VENV}/bin/python",
        "-c",
        "import sys, numpy, importlib.metadata as md, importlib.util as u;"
        "print(*sys.version_info[:2], numpy.__version__, md.version('ai-edge-litert'),"
        " u.find_spec('tflite_runtime') is None)",
    )
    major, minor, numpy_version, litert, no_tflite = out.split()
    assert (major, minor) == ("3", "13"), out
    assert int(numpy_version.split(".")[0]) >= 2, out
    assert litert and no_tflite == "True", out


def _demo_photo(root: ConvergedRootfs, name: str) -> str:
    (site,) = (root.root / VENV.lstrip("/")).resolve().glob("lib/python3.*/site-packages")
    assert site.parent.name == "python3.13", site
    return "/" + str((site / "pi_daemon" / "demo" / name).relative_to(root.root))


def _model_args(root: ConvergedRootfs) -> list[str]:
    config = tomllib.loads((root.root / "etc/pi-daemon/config.toml").read_text(encoding="utf-8"))
    return ["--model", config["model"]["path"], "--labels", config["model"]["labels"]]


def test_auto_backend_classifies_a_photo_with_litert(converged_trixie: ConvergedRootfs) -> None:
    photo = _demo_photo(converged_trixie, "coffee.jpg")
    for backend in ("auto", "litert"):
        result = converged_trixie.chroot(
            f"{VENV}/bin/pi-daemon",
            "classify",
            *_model_args(converged_trixie),
            "--backend",
            backend,
            photo,
            user="pi-daemon",
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(f"{photo}: espresso "), result.stdout


def test_tflite_runtime_backend_is_refused_in_one_line_with_78(
    converged_trixie: ConvergedRootfs,
) -> None:
    result = converged_trixie.chroot(
        f"{VENV}/bin/pi-daemon",
        "classify",
        *_model_args(converged_trixie),
        "--backend",
        "tflite-runtime",
        _demo_photo(converged_trixie, "coffee.jpg"),
        user="pi-daemon",
    )
    assert result.returncode == 78, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("pi-daemon: model.backend = 'tflite-runtime': "), lines
    assert "no wheel for Python 3.13" in lines[0], lines
    assert result.stdout == ""


# --- The unit, by trixie's systemd 257 ---------------------------------------------------


# The plain unit as the role installed it, and the template unit as the instance
# pi-daemon@cam1.service: the repository's file copied for the check under that name into
# the root filesystem's /tmp (removed again), since a host without instances has none.
UNITS = {"plain": UNIT_PATH, "template": "/tmp/unit-check/pi-daemon@cam1.service"}


@pytest.fixture(params=list(UNITS))
def installed_unit(request: pytest.FixtureRequest, converged_trixie: ConvergedRootfs):
    path = UNITS[request.param]
    if request.param == "plain":
        yield path, rf.REPO / "systemd" / "pi-daemon.service"
        return
    source = rf.REPO / "systemd" / "pi-daemon@.service"
    copy = converged_trixie.root / path.lstrip("/")
    copy.parent.mkdir(mode=0o755)
    try:
        copy.write_bytes(source.read_bytes())
        yield path, source
    finally:
        copy.unlink(missing_ok=True)
        copy.parent.rmdir()


def test_systemd_257_verify_is_silent_on_the_installed_unit(
    converged_trixie: ConvergedRootfs, installed_unit: tuple[str, Path]
) -> None:
    # The real installed paths: ExecStart's venv exists in this root filesystem.
    path, _ = installed_unit
    result = rf.chroot_with_proc(converged_trixie.root, "systemd-analyze", "verify", path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr


def test_systemd_257_security_exposure_stays_low(
    converged_trixie: ConvergedRootfs, installed_unit: tuple[str, Path]
) -> None:
    path, source = installed_unit
    result = rf.chroot_with_proc(
        converged_trixie.root,
        "systemd-analyze",
        "security",
        "--offline=true",
        "--no-pager",
        path,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    exposure = float(match.group(1))
    TIMINGS[f"trixie: {source.name} exposure (systemd 257)"] = str(exposure)
    assert exposure <= MAX_EXPOSURE, result.stdout
    header = " ".join(source.read_text().splitlines()[:6])
    assert re.search(rf"exposure {re.escape(str(exposure))} [^;]*\b257\b", header), (
        f"put systemd 257's exposure figure ({exposure}) in {source.name}'s header comment"
    )


# --- Idempotence ------------------------------------------------------------------------


def test_second_run_changes_nothing(converged_trixie: ConvergedRootfs) -> None:
    run = converged_trixie.once("second", "-v")
    TIMINGS["ansible idempotent re-run (trixie)"] = run.seconds
    bookworm.assert_nothing_changed(run, converged_trixie.host, "second run on trixie")


def test_check_mode_changes_nothing(converged_trixie: ConvergedRootfs) -> None:
    run = converged_trixie.once("check", "--check", "--diff", "-v")
    TIMINGS["ansible --check --diff (trixie)"] = run.seconds
    bookworm.assert_nothing_changed(run, converged_trixie.host, "--check --diff on trixie")


# --- Swap on Debian 13: dphys-swapfile, rpi-swap, or a clear no ---------------------------


@dataclass
class PiOsLike:
    """A clone of the converged trixie root filesystem whose apt offers rpi-swap."""

    root: Path
    inventory: Path
    host: str
    forced_without_rpi_swap: rf.PlaybookRun  # swap_manager=rpi-swap before apt had it
    first: rf.PlaybookRun  # --tags swap once apt offers rpi-swap

    def swap(self, *args: str, **extra_vars: object) -> rf.PlaybookRun:
        return rf.run_playbook(self.inventory, "--tags", "swap", *args, extra_vars=extra_vars)

    def chroot(self, *argv: str) -> str:
        result = rf.chroot(self.root, *argv)
        assert result.returncode == 0, f"{argv}: {result.stderr}"
        return result.stdout

    def installed(self, package: str) -> bool:
        status = rf.chroot(self.root, "dpkg-query", "-W", "-f=${Status}", package).stdout
        return status == "install ok installed"


@pytest.fixture(scope="module")
def pios(
    converged_trixie: ConvergedRootfs,
    trixie_rootfs_factory: RootfsFactory,
    tmp_path_factory: pytest.TempPathFactory,
) -> PiOsLike:
    root = trixie_rootfs_factory.clone(converged_trixie.root, "pios-like")
    work = tmp_path_factory.mktemp("pios")
    inventory = rf.write_inventory(
        work / "inventory.yml", "pis", {"pios": rf.chroot_host_vars(root)}
    )
    forced = rf.run_playbook(inventory, "--tags", "swap", extra_vars={"swap_manager": "rpi-swap"})
    standin_apt.install_repository(root, work)
    update = rf.chroot(root, "apt-get", "update", "-q")
    assert update.returncode == 0, update.stdout + update.stderr
    first = rf.run_playbook(inventory, "--tags", "swap", "-v")
    TIMINGS["trixie: swap role, dphys-swapfile -> rpi-swap"] = first.seconds
    return PiOsLike(root, inventory, "pios", forced, first)


def test_rpi_swap_asked_for_where_apt_has_none_fails_clearly(pios: PiOsLike) -> None:
    run = pios.forced_without_rpi_swap
    assert run.returncode != 0, run.tail()
    assert run.recap["pios"]["failed"] == 1 and run.recap["pios"]["changed"] == 0, run.recap
    assert "rpi-swap is a Raspberry Pi OS package" in run.output, run.tail()
    assert "swap_manager: auto (dphys-swapfile on plain Debian)" in run.output, run.tail()


def test_where_apt_offers_rpi_swap_it_replaces_dphys_swapfile(pios: PiOsLike) -> None:
    bookworm.assert_ok(pios.first, "--tags swap with rpi-swap on offer")
    assert pios.first.recap["pios"]["failed"] == 0
    assert pios.installed("rpi-swap")
    assert pios.chroot("dpkg-query", "-W", "-f=${Version}", "rpi-swap") == (
        standin_apt.STANDIN_VERSION
    )
    # Never both: dphys-swapfile is purged, its config with it.
    assert not pios.installed("dphys-swapfile")
    assert not (pios.root / "etc/dphys-swapfile").exists()
    assert not (
        pios.root / "etc/systemd/system/multi-user.target.wants/dphys-swapfile.service"
    ).is_symlink()
    # The vendor file is the package's, untouched; the size is in the role's drop-in.
    vendor = (pios.root / "etc/rpi/swap.conf").read_text(encoding="utf-8")
    assert vendor == standin_apt.VENDOR_SWAP_CONF
    text = (pios.root / DROPIN.lstrip("/")).read_text(encoding="utf-8")
    assert text.startswith("#\n# Managed by Ansible"), text
    assert bookworm.ini_sections(text) == {
        "Main": {"Mechanism": "swapfile"},
        "File": {"Path": "/var/swap", "FixedSizeMiB": "2048", "MaxSizeMiB": "2048"},
    }
    # rpi-swap reads it at the next boot; the role says so and does not reboot a chroot.
    said = " ".join(pios.first.output.split())  # the YAML callback wraps long messages
    assert "rpi-swap applies it at the next boot" in said, pios.first.tail()
    assert "Reboot to apply the rpi-swap configuration" not in pios.first.changed_tasks()


def test_the_dropin_is_where_systemds_config_loader_reads_it(pios: PiOsLike) -> None:
    # rpi-swap reads swap.conf through libsystemd-shared's drop-in loader (its helper,
    # rpi-systemd-config): the main file, then swap.conf.d/*.conf. systemd-analyze uses
    # the same search path, so it shows what rpi-swap would merge, in order.
    result = rf.chroot_with_proc(pios.root, "systemd-analyze", "cat-config", "rpi/swap.conf")
    assert result.returncode == 0, result.stderr
    files = re.findall(r"^# (/\S+)$", result.stdout, re.M)
    assert files == ["/etc/rpi/swap.conf", DROPIN], result.stdout


def test_rpi_swap_branch_is_idempotent_and_check_mode_clean(pios: PiOsLike) -> None:
    again = pios.swap("-v")
    bookworm.assert_nothing_changed(again, "pios", "--tags swap again (rpi-swap)")
    dry = pios.swap("--check", "--diff", "-v")
    bookworm.assert_nothing_changed(dry, "pios", "--tags swap --check (rpi-swap)")


def test_dphys_swapfile_asked_for_on_pi_os_replaces_rpi_swap(pios: PiOsLike) -> None:
    # Last: it changes the clone back.
    run = pios.swap(swap_manager="dphys-swapfile")
    bookworm.assert_ok(run, "--tags swap -e swap_manager=dphys-swapfile")
    assert pios.installed("dphys-swapfile") and not pios.installed("rpi-swap")
    conf = bookworm.read_conf(pios.root / "etc/dphys-swapfile")
    assert (conf["CONF_SWAPSIZE"], conf["CONF_MAXSWAP"]) == ("2048", "2048")


# --- Where the trixie root filesystems come from (no root needed) ------------------------


def test_a_suite_the_host_does_not_list_comes_from_the_hosts_own_mirror() -> None:
    deb822 = (
        "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
        "Types: deb\nURIs: http://mirror.example/debian-security\n"
        "Suites: bookworm-security\nComponents: main\n"
    )
    one_line = "deb [signed-by=/k.gpg arch=amd64] file:/srv/local trixie main\n"
    sources = rf.parse_deb822_sources(deb822) + rf.parse_one_line_sources(one_line)
    # Listed: used as it is (file: too, for the amd64 debootstrap; arm64 wants http(s)).
    assert rf.find_mirror("trixie", sources).uri == "file:/srv/local"
    assert rf.find_mirror("trixie", sources).signed_by == "/k.gpg"
    fallback = rf.find_mirror("trixie", sources, fallback="bookworm", http_only=True)
    assert fallback.uri == "http://mirror.example/debian"
    assert fallback.signed_by == "/usr/share/keyrings/debian-archive-keyring.gpg"
    # Not listed and no fallback: an error naming what was looked for.
    with pytest.raises(LookupError, match="'forky main'"):
        rf.find_mirror("forky", sources)
    with pytest.raises(LookupError, match="nor 'bullseye main'"):
        rf.find_mirror("forky", sources, fallback="bullseye")
