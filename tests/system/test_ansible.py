"""ansible/site.yml against a real Debian bookworm root filesystem, through a chroot.

The session fixture `converged_rootfs` (conftest.py) debootstraps bookworm (cached),
provisions it with site.yml and keeps it for every test here: they check what a Pi
would have, then that a second run and a --check run change nothing. Swap is never
applied (it would turn swap on for this whole machine) and no health check runs
(nothing runs in a chroot); tests/system/test_nspawn.py and test_fleet.py boot the result for that.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.system import rootfs as rf
from tests.system.conftest import TIMINGS, ConvergedRootfs

REPO = rf.REPO
BUNDLED_MODEL = REPO / "pi_daemon" / "models" / "efficientnet-lite0-int8.tflite"
TRIPLET = rf.MULTIARCH[os.uname().machine]


def project_version() -> str:
    text = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    return tomllib.loads(text)["project"]["version"]


def read_conf(path: Path) -> dict[str, str]:
    """The uncommented KEY=value lines of a shell-style config file."""
    values = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^\s*([A-Z_]+)=(.*)$", line)
        if match:
            values[match.group(1)] = match.group(2).strip()
    return values


def assert_ok(run: rf.PlaybookRun, what: str) -> None:
    assert run.returncode == 0, f"{what}: ansible-playbook exited {run.returncode}\n{run.tail()}"


def assert_nothing_changed(run: rf.PlaybookRun, host: str, what: str) -> None:
    assert_ok(run, what)
    counts = run.recap.get(host)
    assert counts is not None, f"{what}: no PLAY RECAP line for {host}\n{run.tail()}"
    changed = "\n".join(
        f"--- {name}\n{body[:3000]}" for name, body in run.changed_results().items()
    )
    assert counts["changed"] == 0, (
        f"{what}: changed={counts['changed']}:\n{changed}\n--- output (tail)\n{run.tail(3000)}"
    )
    assert counts["failed"] == 0 and counts["unreachable"] == 0, counts


# --- What a Pi would have after one run ----------------------------------------------


@pytest.mark.system
def test_first_run_provisions_the_root_filesystem(converged_rootfs: ConvergedRootfs) -> None:
    counts = converged_rootfs.first_run.recap[converged_rootfs.host]
    assert counts["failed"] == 0
    assert counts["changed"] > 0, "a fresh root filesystem must have needed changes"


@pytest.mark.system
def test_dphys_swapfile_has_the_configured_size(converged_rootfs: ConvergedRootfs) -> None:
    conf = read_conf(converged_rootfs.root / "etc" / "dphys-swapfile")
    assert conf["CONF_SWAPSIZE"] == "2048"
    # The size does not exceed dphys-swapfile's default cap, which stays as it was.
    assert conf["CONF_MAXSWAP"] == "2048"
    assert (
        converged_rootfs.root / "etc/systemd/system/multi-user.target.wants/dphys-swapfile.service"
    ).is_symlink()
    # Never both swap managers.
    assert not (converged_rootfs.root / "etc" / "rpi" / "swap.conf").exists()
    status = converged_rootfs.chroot("dpkg-query", "-W", "-f=${Status}", "rpi-swap")
    assert "install ok installed" not in status.stdout


@pytest.mark.system
def test_no_swap_was_turned_on_for_this_machine(converged_rootfs: ConvergedRootfs) -> None:
    swaps = Path("/proc/swaps").read_text(encoding="utf-8").splitlines()[1:]
    root = str(converged_rootfs.root)
    assert not [line for line in swaps if root in line or "/var/swap" in line], swaps


@pytest.mark.system
def test_blas_and_lapack_alternatives_point_at_openblas(converged_rootfs: ConvergedRootfs) -> None:
    for name, library in (("libblas.so.3", "libblas.so.3"), ("liblapack.so.3", "liblapack.so.3")):
        query = converged_rootfs.chroot("update-alternatives", "--query", f"{name}-{TRIPLET}")
        assert query.returncode == 0, query.stderr
        fields = dict(line.split(": ", 1) for line in query.stdout.splitlines() if ": " in line)
        # The fixture selected Debian's reference BLAS first, so the role had to switch.
        assert fields["Value"] == f"/usr/lib/{TRIPLET}/openblas-pthread/{library}", fields
        assert fields["Status"] == "manual", fields
        resolved = os.path.realpath(
            converged_rootfs.root / "etc" / "alternatives" / f"{name}-{TRIPLET}"
        )
        assert resolved.endswith(f"/openblas-pthread/{library}")


@pytest.mark.system
def test_service_user_exists_with_its_groups(converged_rootfs: ConvergedRootfs) -> None:
    ident = converged_rootfs.chroot("id", "pi-daemon")
    assert ident.returncode == 0, ident.stderr
    groups = set(re.findall(r"\d+\(([^)]+)\)", ident.stdout.split("groups=", 1)[1]))
    assert {"pi-daemon", "video"} <= groups, ident.stdout
    passwd = converged_rootfs.chroot("getent", "passwd", "pi-daemon").stdout.strip().split(":")
    assert passwd[5] == "/var/lib/pi-daemon"
    assert passwd[6] == "/usr/sbin/nologin"
    assert int(passwd[2]) < 1000, "a system user"


@pytest.mark.system
def test_release_venv_runs_pi_daemon_inside_the_root_filesystem(
    converged_rootfs: ConvergedRootfs,
) -> None:
    version = converged_rootfs.chroot("/opt/pi-daemon/venv/bin/pi-daemon", "--version")
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"pi-daemon {project_version()}"
    # The venv sees apt's python3-systemd (--system-site-packages): journald fields work.
    journal = converged_rootfs.chroot(
        "/opt/pi-daemon/venv/bin/python", "-c", "import systemd.journal"
    )
    assert journal.returncode == 0, journal.stderr
    # Release layout: venv -> current/venv, current -> releases/<version>-<wheel sha>.
    prefix = converged_rootfs.root / "opt" / "pi-daemon"
    assert os.readlink(prefix / "venv") == "current/venv"
    current = os.readlink(prefix / "current")
    assert re.fullmatch(rf"releases/{re.escape(project_version())}-[0-9a-f]{{12}}", current)
    assert (prefix / current / "installed").is_file()


@pytest.mark.system
def test_model_is_installed_with_its_sha256(converged_rootfs: ConvergedRootfs) -> None:
    expected = hashlib.sha256(BUNDLED_MODEL.read_bytes()).hexdigest()
    models = converged_rootfs.root / "opt" / "pi-daemon" / "models"
    assert os.readlink(models / "current") == expected
    installed = models / expected / BUNDLED_MODEL.name
    assert hashlib.sha256(installed.read_bytes()).hexdigest() == expected
    manifest = json.loads((models / expected / "efficientnet-lite0-int8.json").read_text())
    assert manifest["sha256"] == expected
    assert (models / expected / manifest["labels_file"]).is_file()


@pytest.mark.system
def test_rendered_config_passes_check_config_as_the_service_user(
    converged_rootfs: ConvergedRootfs,
) -> None:
    config_path = converged_rootfs.root / "etc" / "pi-daemon" / "config.toml"
    text = config_path.read_text(encoding="utf-8")
    assert text.startswith("#\n# Managed by Ansible"), text[:200]
    config = tomllib.loads(text)
    expected = hashlib.sha256(BUNDLED_MODEL.read_bytes()).hexdigest()
    assert config["model"]["sha256"] == expected
    assert config["model"]["path"] == f"/opt/pi-daemon/models/{expected}/{BUNDLED_MODEL.name}"
    assert config["output"]["events_file"] == "/var/lib/pi-daemon/events.jsonl"
    stat = config_path.stat()
    assert oct(stat.st_mode & 0o777) == "0o640"
    # The service user reads it through its group, as the unit's User= will.
    check = converged_rootfs.chroot(
        "/opt/pi-daemon/venv/bin/pi-daemon",
        "check-config",
        "/etc/pi-daemon/config.toml",
        user="pi-daemon",
    )
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.system
def test_installed_model_classifies_a_photo(converged_rootfs: ConvergedRootfs) -> None:
    demo = "/opt/pi-daemon/current/venv/lib/python3.11/site-packages/pi_daemon/demo/chelsea.jpg"
    config = tomllib.loads(
        (converged_rootfs.root / "etc/pi-daemon/config.toml").read_text(encoding="utf-8")
    )
    result = converged_rootfs.chroot(
        "/opt/pi-daemon/venv/bin/pi-daemon",
        "classify",
        "--model",
        config["model"]["path"],
        "--labels",
        config["model"]["labels"],
        demo,
        user="pi-daemon",
    )
    assert result.returncode == 0, result.stderr
    assert re.search(r"(tiger cat|tabby|Egyptian cat)", result.stdout), result.stdout


@pytest.mark.system
def test_unit_is_installed_from_the_repository_and_enabled(
    converged_rootfs: ConvergedRootfs,
) -> None:
    unit = converged_rootfs.root / "etc" / "systemd" / "system" / "pi-daemon.service"
    assert unit.read_bytes() == (REPO / "systemd" / "pi-daemon.service").read_bytes()
    wants = unit.parent / "multi-user.target.wants" / "pi-daemon.service"
    assert wants.is_symlink()
    assert os.readlink(wants) == "/etc/systemd/system/pi-daemon.service"
    # No backup files left beside it for systemd to trip over.
    assert sorted(p.name for p in unit.parent.glob("pi-daemon.service*")) == ["pi-daemon.service"]


# --- Idempotence -----------------------------------------------------------------------


@pytest.mark.system
def test_second_run_changes_nothing(converged_rootfs: ConvergedRootfs) -> None:
    run = converged_rootfs.once("second", "-v")
    TIMINGS["ansible idempotent re-run"] = run.seconds
    assert_nothing_changed(run, converged_rootfs.host, "second run")


@pytest.mark.system
def test_check_mode_on_the_converged_root_filesystem_changes_nothing(
    converged_rootfs: ConvergedRootfs,
) -> None:
    # Without pi_daemon_wheel, as an operator runs it: site.yml builds the wheel itself,
    # reproducibly, so it is the release that is already installed.
    run = rf.run_playbook(converged_rootfs.inventory, "--check", "--diff", "-v")
    TIMINGS["ansible --check --diff (with wheel build)"] = run.seconds
    assert_nothing_changed(run, converged_rootfs.host, "--check --diff")


@pytest.mark.system
def test_swap_above_the_default_cap_raises_conf_maxswap(converged_rootfs: ConvergedRootfs) -> None:
    conf_path = converged_rootfs.root / "etc" / "dphys-swapfile"
    try:
        run = converged_rootfs.run_playbook("--tags", "swap", swap_size_mb=4096)
        assert_ok(run, "--tags swap with 4096 MB")
        conf = read_conf(conf_path)
        assert conf["CONF_SWAPSIZE"] == "4096"
        assert conf["CONF_MAXSWAP"] == "4096", "a size above the cap must raise the cap"
        assert run.recap[converged_rootfs.host]["changed"] == 2, run.changed_tasks()
        # The apply handler was notified but must not have run anything here.
        assert "dphys-swapfile swapon" not in run.output
    finally:
        restore = converged_rootfs.run_playbook("--tags", "swap")
        assert_ok(restore, "restoring the swap size")
    conf = read_conf(conf_path)
    assert (conf["CONF_SWAPSIZE"], conf["CONF_MAXSWAP"]) == ("2048", "2048")


# --- Without root -------------------------------------------------------------------------


def render_template(tmp_path: Path, template: Path, variables: dict[str, object]) -> str:
    """Render one of the roles' templates with ansible itself, on localhost."""
    out = tmp_path / "rendered"
    playbook = tmp_path / "render.yml"
    playbook.write_text(
        json.dumps(
            [
                {
                    "name": "Render a template",
                    "hosts": "localhost",
                    "connection": "local",
                    "gather_facts": False,
                    "vars": variables,
                    "tasks": [
                        {
                            "name": "Render it.",
                            "ansible.builtin.template": {
                                "src": str(template),
                                "dest": str(out),
                                "mode": "0644",
                            },
                        }
                    ],
                }
            ]
        ),
        encoding="utf-8",
    )
    inventory = tmp_path / "inventory.ini"
    inventory.write_text(
        f"localhost ansible_connection=local ansible_python_interpreter={sys.executable}\n",
        encoding="utf-8",
    )
    run = rf.run_playbook(inventory, playbook=playbook)
    assert_ok(run, "rendering " + template.name)
    return out.read_text(encoding="utf-8")


def ini_sections(text: str) -> dict[str, dict[str, str]]:
    sections: dict[str, dict[str, str]] = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
        else:
            key, _, value = line.partition("=")
            assert current is not None, line
            current[key.strip()] = value.strip()
    return sections


@pytest.mark.parametrize(
    ("size", "max_size"),
    [(2048, "2048"), (1024, "2048"), (4096, "4096")],
)
def test_rpi_swap_dropin_sets_a_fixed_size_and_never_a_lower_cap(
    tmp_path: Path, size: int, max_size: str
) -> None:
    # Keys from rpi-swap's swap.conf(5): [Main] Mechanism, [File] Path / FixedSizeMiB /
    # MaxSizeMiB. FixedSizeMiB bypasses the computed-size caps in rpi-desired-swap-size.
    template = REPO / "ansible/roles/swap/templates/rpi-swap.conf.j2"
    text = render_template(
        tmp_path,
        template,
        {
            "swap_size_mb": size,
            "swap_rpi_swap_mechanism": "swapfile",
            "swap_rpi_swap_file": "/var/swap",
            "swap_rpi_swap_max_size_mib": 2048,
        },
    )
    sections = ini_sections(text)
    assert sections == {
        "Main": {"Mechanism": "swapfile"},
        "File": {"Path": "/var/swap", "FixedSizeMiB": str(size), "MaxSizeMiB": max_size},
    }


def test_ansible_lint_production_profile_passes() -> None:
    try:
        lint = rf.ansible_tool("ansible-lint")
    except FileNotFoundError as error:
        pytest.fail(str(error), pytrace=False)
    result = subprocess.run(
        [lint, "--profile", "production", "--offline", "--nocolor"],
        cwd=rf.ANSIBLE_DIR,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]


def test_host_mirror_is_read_from_both_apt_source_formats() -> None:
    deb822 = (
        "Types: deb\n# a comment\nURIs: http://mirror.example/debian\n"
        "Suites: bookworm bookworm-updates\nComponents: main\n\n"
        "Types: deb\nURIs: http://mirror.example/debian-security\n"
        "Suites: bookworm-security\nComponents: main\n\n"
        "Types: deb\nEnabled: no\nURIs: http://off.example/debian\nSuites: bookworm\n"
        "Components: main\n"
    )
    one_line = (
        "# deb http://old.example/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/k.gpg] http://other.example/debian trixie main contrib\n"
    )
    sources = rf.parse_deb822_sources(deb822) + rf.parse_one_line_sources(one_line)
    assert rf.debian_mirror("bookworm", sources) == "http://mirror.example/debian"
    assert rf.debian_mirror("trixie", sources) == "http://other.example/debian"
    with pytest.raises(LookupError):
        rf.debian_mirror("bullseye", sources)


def test_play_recap_is_parsed_per_host() -> None:
    output = (
        "PLAY RECAP *****\n"
        "localhost                  : ok=0    changed=0    unreachable=0    failed=0    "
        "skipped=5    rescued=0    ignored=0   \n"
        "testpi                     : ok=61   changed=22   unreachable=0    failed=0    "
        "skipped=15   rescued=0    ignored=0   \n"
    )
    recap = rf.parse_recap(output)
    assert recap["testpi"]["changed"] == 22
    assert recap["localhost"]["skipped"] == 5
