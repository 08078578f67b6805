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
from tests.system.ansible_checks import (
    HostState,
    assert_failed,
    assert_nothing_changed,
    assert_ok,
    assert_says,
)
from tests.system.conftest import TIMINGS, ConvergedRootfs, select_reference_blas

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


# --- Preflight: a bad variable stops the run before anything changes -------------------

# Each value would once have been coerced into a valid-looking one by the template or by
# `| int` / `| bool` (9110x -> port 0, which means any free port; one -> camera 0; maybe
# -> false; fast -> 0.0; 2.9 -> 2). Strings are what `-e name=value` gives.
BAD_PI_DAEMON_VARS: dict[str, object] = {
    "pi_daemon_metrics_port": "9110x",
    "pi_daemon_picamera2_camera_num": "one",
    "pi_daemon_files_loop": "maybe",
    "pi_daemon_files_fps": "fast",
    "pi_daemon_model_num_threads": 2.9,
    "pi_daemon_model_top_k": True,
    "pi_daemon_source": "nonsense",
    "pi_daemon_picamera2_main_size": [640],
    "pi_daemon_picamera2_frame_rate": 0,
    "pi_daemon_metrics_enabled": "perhaps",
    "pi_daemon_health_check_timeout": "2m",
    "pi_daemon_prune": "sometimes",
    "pi_daemon_config_extra": "stall_timeout_s = 20.0",
}


# The first task of each role that changes anything on the host.
FIRST_CHANGES = (
    "blas : Install the pthread variant of OpenBLAS.",
    "swap : Remove rpi-swap, which must never be installed beside dphys-swapfile.",
    "pi_daemon : Install the apt packages pi-daemon needs.",
)


def assert_stopped_in_preflight(
    converged: ConvergedRootfs, run: rf.PlaybookRun, before: HostState, names: list[str]
) -> None:
    assert_failed(run, converged.host, "bad variables")
    counts = run.recap[converged.host]
    assert counts["changed"] == 0, run.changed_tasks()
    for name in names:
        assert_says(run, rf"^\b{name}=")
    # No role got past the checks: not even the first task that changes something ran.
    started = [task for task in FIRST_CHANGES if f"TASK [{task}]" in run.output]
    assert not started, started
    assert HostState.of(converged.root) == before


@pytest.mark.system
def test_preflight_names_every_bad_pi_daemon_variable_and_changes_nothing(
    converged_rootfs: ConvergedRootfs,
) -> None:
    before = HostState.of(converged_rootfs.root)
    run = converged_rootfs.run_playbook(**BAD_PI_DAEMON_VARS)
    TIMINGS["ansible: preflight stops bad variables"] = run.seconds
    assert_stopped_in_preflight(converged_rootfs, run, before, list(BAD_PI_DAEMON_VARS))
    # It names the Ansible variable and its value, not a TOML key, and says what it must be.
    assert_says(
        run,
        'pi_daemon_metrics_port="9110x": must be a whole number',
        "pi_daemon_model_num_threads=2.9: must be a whole number",
        "pi_daemon_model_top_k=true: must be a whole number",
        'pi_daemon_files_loop="maybe": must be true or false',
        'pi_daemon_source="nonsense": must be one of auto, picamera2, opencv',
        "pi_daemon_picamera2_frame_rate=0: must be more than 0 and at most 120",
    )


@pytest.mark.system
@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        ({"swap_size_mb": 1.5}, "swap_size_mb=1.5: must be a whole number"),
        ({"swap_size_mb": "2G"}, 'swap_size_mb="2G": must be a whole number'),
        ({"swap_manager": "zram"}, 'swap_manager="zram": must be one of auto,'),
        ({"swap_apply": "sometimes"}, 'swap_apply="sometimes": must be true or false'),
        # The disk bound: 999999 MB would also have lifted CONF_MAXSWAP to match.
        ({"swap_size_mb": 999999}, "swap_size_mb=999999 does not fit beside /var/swap"),
    ],
    ids=["fraction", "unit", "manager", "apply", "too-big-for-the-disk"],
)
def test_preflight_stops_a_bad_swap_variable_before_any_role_changes_anything(
    converged_rootfs: ConvergedRootfs, variables: dict[str, object], expected: str
) -> None:
    before = HostState.of(converged_rootfs.root)
    run = converged_rootfs.run_playbook(**variables)
    assert_stopped_in_preflight(converged_rootfs, run, before, list(variables))
    assert_says(run, expected)


# --- --check on a host that needs changes ---------------------------------------------


@pytest.mark.system
def test_check_mode_reports_a_blas_switch_and_passes(converged_rootfs: ConvergedRootfs) -> None:
    triplet = TRIPLET
    query = ("update-alternatives", "--query", f"libblas.so.3-{triplet}")
    select_reference_blas(converged_rootfs.root)
    try:
        run = converged_rootfs.run_playbook("--check", "--diff")
        TIMINGS["ansible --check --diff, BLAS to switch"] = run.seconds
        assert_ok(run, "--check --diff where BLAS must be switched")
        assert "blas : Select OpenBLAS for BLAS and LAPACK." in run.changed_tasks(), run.tail()
        assert run.recap[converged_rootfs.host]["changed"] == 1, run.changed_tasks()
        # --check changed nothing: the reference BLAS is still selected.
        value = converged_rootfs.chroot(*query).stdout
        assert f"Value: /usr/lib/{triplet}/blas/libblas.so.3" in value, value
    finally:
        for name in ("libblas.so.3", "liblapack.so.3"):
            path = f"/usr/lib/{triplet}/openblas-pthread/{name}"
            restored = converged_rootfs.chroot(
                "update-alternatives", "--set", f"{name}-{triplet}", path
            )
            assert restored.returncode == 0, restored.stderr


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


# --- The roles' checks, without root ------------------------------------------------------


def load_fleet_checks():
    """ansible/filter_plugins/fleet_checks.py, the filters the roles check variables with."""
    import importlib.util

    path = rf.ANSIBLE_DIR / "filter_plugins" / "fleet_checks.py"
    spec = importlib.util.spec_from_file_location("fleet_checks", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CHECKS = load_fleet_checks()


def role_yaml(role: str, part: str) -> dict:
    import yaml

    path = rf.ANSIBLE_DIR / "roles" / role / part / "main.yml"
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


def rules_of(role: str) -> dict[str, dict]:
    return {rule["name"]: rule for rule in role_yaml(role, "vars")[f"{role}_variable_rules"]}


PORT = {"name": "port", "type": "int", "min": 0, "max": 65535}
RATE = {"name": "rate", "type": "float", "gt": 0, "max": 120}


@pytest.mark.parametrize(
    ("rule", "value", "typed"),
    [
        (PORT, 9110, 9110),
        (PORT, "9110", 9110),  # -e pi_daemon_metrics_port=9110
        (PORT, " 0 ", 0),
        (PORT, 65535, 65535),
        (RATE, 10, 10.0),
        (RATE, "7.5", 7.5),
        (RATE, "1e2", 100.0),
        ({"name": "b", "type": "bool"}, "yes", True),
        ({"name": "b", "type": "bool"}, "False", False),
        ({"name": "b", "type": "bool"}, True, True),
        ({"name": "b", "type": "bool", "nullable": True}, None, None),
        ({"name": "a", "type": "auto_bool"}, "auto", "auto"),
        ({"name": "a", "type": "auto_bool"}, "true", True),
        ({"name": "s", "type": "int_list", "length": 2, "min": 64}, ["640", 480], [640, 480]),
        ({"name": "p", "type": "path"}, "/opt/pi-daemon", "/opt/pi-daemon"),
        ({"name": "e", "type": "str_dict"}, {"PIP_INDEX_URL": "x"}, {"PIP_INDEX_URL": "x"}),
    ],
)
def test_checked_vars_accepts_each_type_in_its_spellings(rule: dict, value, typed) -> None:
    result = CHECKS.checked_vars([rule], {rule["name"]: value})
    assert result == {"problems": [], "values": {rule["name"]: typed}}
    assert type(result["values"][rule["name"]]) is type(typed)


@pytest.mark.parametrize(
    ("rule", "value", "problem"),
    [
        (PORT, "9110x", 'port="9110x": must be a whole number'),
        (PORT, 2.9, "port=2.9: must be a whole number"),
        (PORT, 9110.0, "port=9110.0: must be a whole number"),
        (PORT, True, "port=true: must be a whole number"),
        (PORT, 65536, "port=65536: must be from 0 to 65535"),
        (PORT, -1, "port=-1: must be from 0 to 65535"),
        (PORT, None, "port=null: must be set"),
        (RATE, "fast", 'rate="fast": must be a number'),
        (RATE, 0, "rate=0: must be more than 0 and at most 120"),
        (RATE, "nan", 'rate="nan": must be a number'),
        (RATE, 1e400, "rate=Infinity: must be a finite number"),
        (RATE, False, "rate=false: must be a number"),
        ({"name": "b", "type": "bool"}, "maybe", 'b="maybe": must be true or false'),
        ({"name": "b", "type": "bool"}, 1, "b=1: must be true or false"),
        ({"name": "a", "type": "auto_bool"}, "sometimes", 'a="sometimes": must be auto, true'),
        ({"name": "c", "type": "str", "choices": ["x", "y"]}, "z", 'c="z": must be one of x, y'),
        ({"name": "c", "type": "str"}, 5, "c=5: must be a string"),
        ({"name": "s", "type": "int_list", "length": 2}, [640], "s=[640]: must be a list of 2"),
        ({"name": "s", "type": "int_list", "min": 64}, [640, 4], "s=[640, 4]: each item must"),
        ({"name": "s", "type": "str_list"}, "a,b", 's="a,b": must be a list'),
        ({"name": "p", "type": "path"}, "opt/x", 'p="opt/x": must be an absolute path'),
        ({"name": "e", "type": "str_dict"}, {"A": 1}, 'e={"A": 1}: must map strings to strings'),
    ],
)
def test_checked_vars_rejects_without_coercing_and_names_the_variable(
    rule: dict, value, problem: str
) -> None:
    result = CHECKS.checked_vars([rule], {rule["name"]: value})
    assert len(result["problems"]) == 1, result
    assert result["problems"][0].startswith(problem), result["problems"]
    assert result["values"] == {}


def test_checked_vars_reports_every_problem_at_once() -> None:
    rules = [PORT, RATE, {"name": "missing", "type": "int"}]
    result = CHECKS.checked_vars(rules, {"port": "x", "rate": "y"})
    named = [problem.split("=")[0].split(":")[0] for problem in result["problems"]]
    assert named == ["port", "rate", "missing"]


def test_every_role_variable_has_a_rule_and_every_rule_a_variable() -> None:
    for role in ("pi_daemon", "swap", "collector", "fleet_ca"):
        defaults = set(role_yaml(role, "defaults"))
        assert set(rules_of(role)) == defaults, role
    # blas: the map and the alternatives (a list of mappings) are checked in preflight.yml.
    assert set(rules_of("blas")) == set(role_yaml("blas", "defaults")) - {
        "blas_multiarch_map",
        "blas_alternatives",
    }
    for role in ("blas", "swap", "pi_daemon", "collector", "fleet_ca"):
        for rule in rules_of(role).values():
            assert rule["type"] in CHECKS.TYPES, rule


def test_every_role_variable_is_in_its_readme_with_its_default() -> None:
    for role in ("blas", "swap", "pi_daemon", "collector", "fleet_ca"):
        readme = (rf.ANSIBLE_DIR / "roles" / role / "README.md").read_text(encoding="utf-8")
        rows = {
            match.group(1): match.group(2)
            for match in re.finditer(r"^\| `(\w+)` \| (.*?) \|", readme, re.M)
        }
        for name, default in role_yaml(role, "defaults").items():
            assert name in rows, f"{role}/README.md does not list {name}"
            if isinstance(default, (bool, int, float)) and not isinstance(default, str):
                shown = json.dumps(default)
                assert shown in rows[name], (role, name, rows[name])


def config_data(key: str, value: object) -> dict[str, object]:
    section, _, field = key.rpartition(".")
    return {section: {field: value}} if section else {field: value}


def daemon_accepts(tmp_path: Path, key: str, value: object) -> bool:
    """Whether pi-daemon's own config loader accepts `key = value` (written as TOML)."""
    from pi_daemon.config import load_config
    from pi_daemon.errors import PiDaemonError

    section, _, field = key.rpartition(".")
    text = (f"[{section}]\n" if section else "") + f"{field} = {json.dumps(value)}\n"
    path = tmp_path / "probe.toml"
    path.write_text(text, encoding="utf-8")
    try:
        load_config(path)
    except PiDaemonError:
        return False
    return True


def boundary_cases(rule: dict) -> list[tuple[object, bool]]:
    """Values just inside and just outside a rule's range, and whether the rule allows them."""
    kind = rule["type"]
    cases: list[tuple[object, bool]] = []
    if "choices" in rule:
        return [(choice, True) for choice in rule["choices"]] + [("not-a-choice", False)]
    if kind == "bool":
        return [(True, True), (False, True)]
    step = 1 if kind in ("int", "int_list") else 1e-6
    wrap = (lambda n: [n, n]) if kind == "int_list" else (lambda n: n)
    if kind == "float":
        wrap = float  # type: ignore[assignment]
    if "min" in rule:
        cases += [(wrap(rule["min"]), True), (wrap(rule["min"] - step), False)]
    if "gt" in rule:
        cases += [(wrap(rule["gt"]), False), (wrap(rule["gt"] + step), True)]
    if "max" in rule:
        cases += [(wrap(rule["max"]), True), (wrap(rule["max"] + step), False)]
    return cases


def test_pi_daemon_rules_have_the_daemons_own_bounds(tmp_path: Path) -> None:
    """The preflight must reject what the daemon would, and nothing it accepts: each rule
    with a config key is tried at its bounds against pi_daemon.config.load_config."""
    checked = 0
    for rule in rules_of("pi_daemon").values():
        if "key" not in rule:
            continue
        for value, allowed in boundary_cases(rule):
            by_rule = not CHECKS.checked_vars([rule], {rule["name"]: value})["problems"]
            assert by_rule == allowed, (rule, value)
            assert daemon_accepts(tmp_path, rule["key"], value) == allowed, (rule, value)
            checked += 1
    assert checked > 30


def test_booted_target_needs_positive_evidence() -> None:
    root = {"exists": True, "dev": 2049, "inode": 2, "isdir": True}
    run_systemd = {"exists": True, "isdir": True}
    assert CHECKS.booted_target(root, dict(root), run_systemd)
    # A mounted image: no /proc, an empty /run.
    assert not CHECKS.booted_target(root, {"exists": False}, {"exists": False})
    # A chroot with /proc and /run bound from the host: PID 1's root is the host's.
    host_root = {"exists": True, "dev": 64768, "inode": 2, "isdir": True}
    assert not CHECKS.booted_target(root, host_root, run_systemd)
    # No permission to look at PID 1 (the stat task failed, so no result at all).
    assert not CHECKS.booted_target(root, {}, run_systemd)


def test_swap_areas_and_the_disk_bound() -> None:
    text = (
        "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n"
        "/var/swap                               file\t\t2097148\t\t0\t\t-2\n"
        "/dev/zram0                              partition\t1000000\t\t0\t\t100\n"
    )
    assert CHECKS.swap_areas(text) == ["/var/swap", "/dev/zram0"]
    assert CHECKS.swap_areas("Filename Type Size Used Priority\n") == []
    mib = 1024 * 1024
    blocks = 16 * 1024 * mib // 4096  # a 16 GiB SD card ...
    free = 6 * 1024 * mib // 4096  # ... with 6 GiB free
    problem = CHECKS.swap_disk_problem
    assert problem(2048, 4096, blocks, free, 0, 50, 1024) == ""
    assert "more than 50% of the 16384 MB" in problem(9000, 4096, blocks, free, 0, 50, 1024)
    assert "at most 5120 MB" in problem(5500, 4096, blocks, free, 0, 50, 1024)
    # The swap file that is there now is replaced, so its space counts as free.
    assert problem(5500, 4096, blocks, free, 2048 * mib, 50, 1024) == ""


def test_differences_names_what_does_not_match_the_record() -> None:
    wanted = {"release": "0.1.1-a", "model": "m", "config_sha1": "c", "unit_sha1": "u"}
    assert CHECKS.differences(wanted, dict(wanted)) == []
    assert CHECKS.differences(wanted, {**wanted, "release": "0.1.0-b"}) == ["release"]
    assert CHECKS.differences(wanted, {}) == list(wanted)


@pytest.mark.system
def test_check_mode_with_a_new_release_reports_the_build_and_passes(
    converged_rootfs: ConvergedRootfs, pi_daemon_wheel: Path, tmp_path: Path
) -> None:
    """--check cannot build a venv: it must say which release it would build, count it as a
    change and pass, instead of failing on the build's first link (it once did)."""
    from tests.system.ansible_checks import release_id
    from tests.system.wheels import derive_wheel

    wheel = derive_wheel(pi_daemon_wheel, tmp_path, "0.1.1")
    before = HostState.of(converged_rootfs.root)
    run = converged_rootfs.run_playbook("--check", "--diff", pi_daemon_wheel=str(wheel))
    assert_ok(run, "--check with a new release")
    assert_says(run, f"would build release {release_id(wheel)}")
    assert run.recap[converged_rootfs.host]["changed"] >= 1, run.changed_tasks()
    assert HostState.of(converged_rootfs.root) == before


# --- [mqtt]: credentials, certificates and the mqtt extra -------------------------------


@pytest.mark.system
def test_mqtt_renders_its_section_deploys_private_credentials_and_installs_the_extra(
    converged_rootfs: ConvergedRootfs, tmp_path: Path
) -> None:
    from tests.tls import TestCA

    ca = TestCA.create(tmp_path / "ca")
    client = ca.issue("testpi")
    mqtt_vars: dict[str, object] = {
        "pi_daemon_mqtt_enabled": True,
        "pi_daemon_mqtt_host": "collector.example",
        "pi_daemon_mqtt_port": 8883,
        "pi_daemon_mqtt_username": "testpi",
        "pi_daemon_mqtt_password": "s3cret with spaces",
        "pi_daemon_mqtt_tls": True,
        "pi_daemon_mqtt_ca_file": str(ca.cert),
        "pi_daemon_mqtt_cert_file": str(client.cert),
        "pi_daemon_mqtt_key_file": str(client.key),
        "pi_daemon_mqtt_device_id": "testpi-cam",
        "pi_daemon_mqtt_commands": True,
    }
    root = converged_rootfs.root
    before = HostState.of(root)
    try:
        run = converged_rootfs.run_playbook("--tags", "pi_daemon", **mqtt_vars)
        assert_ok(run, "pi_daemon with [mqtt]")
        assert "s3cret" not in run.output, "the password must never be logged"
        after = HostState.of(root)
        # Another release: the same wheel with the mqtt extra is another venv.
        mqtt_release = before.link("current") + "-mqtt"
        assert after.link("current") == mqtt_release, after.links
        venv = f"/opt/pi-daemon/{mqtt_release}/venv/bin/python"
        probe = converged_rootfs.chroot(venv, "-c", "import paho.mqtt as m; print(m.__version__)")
        assert probe.returncode == 0 and probe.stdout.startswith("2."), probe.stdout + probe.stderr

        config = tomllib.loads((root / "etc/pi-daemon/config.toml").read_text(encoding="utf-8"))
        mqtt = config["mqtt"]
        assert {key: mqtt[key] for key in ("enabled", "host", "port", "username", "tls")} == {
            "enabled": True,
            "host": "collector.example",
            "port": 8883,
            "username": "testpi",
            "tls": True,
        }
        assert (mqtt["device_id"], mqtt["commands"], mqtt["qos"]) == ("testpi-cam", True, 1)
        uid = int(converged_rootfs.chroot("id", "-u", "pi-daemon").stdout)
        expected = {
            "password_file": ("/etc/pi-daemon/mqtt/password", 0o600, uid, b"s3cret with spaces\n"),
            "ca_file": ("/etc/pi-daemon/mqtt/ca.pem", 0o644, 0, ca.cert.read_bytes()),
            "cert_file": ("/etc/pi-daemon/mqtt/client.pem", 0o644, 0, client.cert.read_bytes()),
            "key_file": ("/etc/pi-daemon/mqtt/client.key", 0o600, uid, client.key.read_bytes()),
        }
        for key, (path, mode, owner, content) in expected.items():
            assert mqtt[key] == path, (key, mqtt[key])
            stat = (root / path.lstrip("/")).stat()
            assert (stat.st_mode & 0o777, stat.st_uid) == (mode, owner), (path, oct(stat.st_mode))
            assert (root / path.lstrip("/")).read_bytes() == content, path
        # The daemon's own check, as the unit's user: it reads the password file and the
        # certificates and refuses a password file anyone else could read.
        check = converged_rootfs.chroot(
            "/opt/pi-daemon/venv/bin/pi-daemon",
            "check-config",
            "/etc/pi-daemon/config.toml",
            user="pi-daemon",
        )
        assert check.returncode == 0, check.stdout + check.stderr

        again = converged_rootfs.run_playbook("--tags", "pi_daemon", **mqtt_vars)
        assert_nothing_changed(again, converged_rootfs.host, "a second run with [mqtt]")

        # A password without a user name, or a key without TLS, stops in the preflight.
        bad = converged_rootfs.run_playbook(
            "--tags", "pi_daemon", **{**mqtt_vars, "pi_daemon_mqtt_username": ""}
        )
        assert_failed(bad, converged_rootfs.host, "a password without a user name")
        assert_says(bad, "a password needs pi_daemon_mqtt_username")
        assert HostState.of(root) == after
    finally:
        restore = converged_rootfs.run_playbook("--tags", "pi_daemon")
        assert_ok(restore, "pi_daemon without [mqtt] again")
    config = tomllib.loads((root / "etc/pi-daemon/config.toml").read_text(encoding="utf-8"))
    assert "mqtt" not in config
    # With MQTT off again, its secrets do not stay behind on the host.
    assert not (root / "etc/pi-daemon/mqtt").exists()
    assert HostState.of(root).link("current") == before.link("current")
    assert HostState.of(root).etc_pi_daemon == before.etc_pi_daemon
