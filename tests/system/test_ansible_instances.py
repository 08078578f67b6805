"""Several cameras on one Pi: `pi_daemon_instances` and systemd/pi-daemon@.service.

Without root: the instances_checked and pi_daemon_units filters
(ansible/filter_plugins/pi_daemon_instances.py) with tables of cases.

With root (system): a clone of the converged bookworm root filesystem (conftest.py's
`converged_rootfs`, which runs the plain unit) is given two instances by
`site.yml --tags pi_daemon` through the chroot connection, as an operator would add a
second camera to a Pi that has one:

* /etc/pi-daemon/cam1.toml and cam2.toml are rendered from the role's one template, each
  with its own overrides, events file and device_id, and pass the release's own
  `pi-daemon check-config` as the service user;
* pi-daemon@.service is the repository's, pi-daemon@cam1/cam2 are enabled and the plain
  pi-daemon.service is not (still installed, for going back);
* a second run changes nothing, and neither does --check;
* bad entries stop the run in the preflight, before anything changes, each named;
* the clone then boots under systemd-nspawn: both instances become active, each classifying
  with its own device_id and state directory, and the plain unit stays inactive; site.yml
  against the live container restarts and health-checks both, and records them as the state
  that passed; a second live run restarts nothing;
* back to no instances: the plain unit runs again, the instances are stopped and disabled,
  and their configs are gone.
"""

from __future__ import annotations

import json
import os
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.system import nspawn
from tests.system import rootfs as rf
from tests.system.ansible_checks import (
    HostState,
    assert_failed,
    assert_nothing_changed,
    assert_ok,
    assert_says,
)
from tests.system.conftest import TIMINGS, ConvergedRootfs, RootfsFactory
from tests.system.test_ansible import load_fleet_checks, role_yaml, rules_of

REPO = rf.REPO
HOST = "multicam-pi"
SYSTEMD = Path("etc/systemd/system")
WANTS = SYSTEMD / "multi-user.target.wants"
TEMPLATE_UNIT = "/etc/systemd/system/pi-daemon@.service"


def load_instance_filters():
    import importlib.util

    path = rf.ANSIBLE_DIR / "filter_plugins" / "pi_daemon_instances.py"
    spec = importlib.util.spec_from_file_location("pi_daemon_instances", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


FILTERS = load_instance_filters()
CHECKS = load_fleet_checks()
RULES = role_yaml("pi_daemon", "vars")["pi_daemon_variable_rules"]
OVERRIDABLE = role_yaml("pi_daemon", "vars")["pi_daemon_instance_variables"]


# What a host's own value is when the role's default is a template (Ansible fills it in).
TEMPLATED = {
    "pi_daemon_output_events_file": "/var/lib/pi-daemon/events.jsonl",
    "pi_daemon_metrics_enabled": None,
    "pi_daemon_mqtt_device_id": "",
}


def host_values(**overrides: object) -> dict[str, object]:
    """The host's values of what an instance may set: the role's defaults, as preflight
    types them."""
    defaults = role_yaml("pi_daemon", "defaults")
    names = [*OVERRIDABLE, "pi_daemon_output_events_file"]
    values = {}
    for name in names:
        value = defaults[name]
        if isinstance(value, str) and "{{" in value:
            assert name in TEMPLATED, f"{name}: a templated default; give its value in TEMPLATED"
            value = TEMPLATED[name]
        values[name] = value
    values.update(overrides)
    rules = [rule for rule in RULES if rule["name"] in values]
    result = CHECKS.checked_vars(rules, values)
    assert result["problems"] == [], result["problems"]
    return result["values"]


def checked(instances: object, **host: object) -> dict:
    return FILTERS.instances_checked(
        instances,
        RULES,
        host_values(**host),
        OVERRIDABLE,
        "pi-daemon.service",
        "/etc/pi-daemon",
        "/var/lib/pi-daemon",
    )


# --- Without root: the filters -------------------------------------------------------------


def test_every_variable_an_instance_may_set_has_a_rule_and_renders_the_config() -> None:
    rules = rules_of("pi_daemon")
    for name in OVERRIDABLE:
        assert name in rules, name
    template = (rf.ANSIBLE_DIR / "roles/pi_daemon/templates/config.toml.j2").read_text()
    for name in OVERRIDABLE:
        assert f"v.{name}" in template, f"{name} is not rendered by config.toml.j2"
    # One host, one release: the extras, the broker's credentials and the service are not
    # an instance's to choose.
    for shared in ("pi_daemon_mqtt_enabled", "pi_daemon_mqtt_password", "pi_daemon_wheel"):
        assert shared not in OVERRIDABLE


def test_instances_get_their_own_config_events_file_and_unit() -> None:
    result = checked(
        [
            {"name": "cam1", "vars": {"pi_daemon_source": "picamera2"}},
            {
                "name": "usb-2",
                "vars": {
                    "pi_daemon_source": "opencv",
                    "pi_daemon_opencv_device": "/dev/video2",
                    "pi_daemon_picamera2_camera_num": "1",  # -e spelling, typed like the host's
                    "pi_daemon_mqtt_device_id": "Porch",
                },
            },
        ]
    )
    assert result["problems"] == []
    cam1, usb = result["instances"]
    assert (cam1["name"], cam1["unit"], cam1["config"]) == (
        "cam1",
        "pi-daemon@cam1.service",
        "/etc/pi-daemon/cam1.toml",
    )
    assert usb["unit"] == "pi-daemon@usb-2.service"
    assert cam1["settings"]["pi_daemon_source"] == "picamera2"
    assert usb["settings"]["pi_daemon_picamera2_camera_num"] == 1
    assert usb["settings"]["pi_daemon_mqtt_device_id"] == "Porch"
    # What the instance does not set is the host's.
    assert usb["settings"]["pi_daemon_model_num_threads"] == 2
    assert (
        cam1["settings"]["pi_daemon_output_events_file"] == "/var/lib/pi-daemon/cam1/events.jsonl"
    )
    assert "pi_daemon_instances" not in cam1["settings"]


def test_an_instance_keeps_the_events_file_it_sets_and_the_host_can_turn_them_off() -> None:
    own = checked(
        [
            {
                "name": "cam1",
                "vars": {"pi_daemon_output_events_file": "/var/log/pi-daemon/cam1/e.jsonl"},
            }
        ]
    )
    assert own["instances"][0]["settings"]["pi_daemon_output_events_file"] == (
        "/var/log/pi-daemon/cam1/e.jsonl"
    )
    off = checked([{"name": "cam1"}], pi_daemon_output_events_file="")
    assert off["problems"] == []
    assert off["instances"][0]["settings"]["pi_daemon_output_events_file"] == ""


@pytest.mark.parametrize(
    ("instances", "problem"),
    [
        ("cam1", 'pi_daemon_instances="cam1": must be a list'),
        (["cam1"], 'pi_daemon_instances[0]="cam1": must be a mapping'),
        ([{"name": "Cam1"}], 'pi_daemon_instances[0].name="Cam1": must be 1-32 lower-case'),
        ([{"name": "a/b"}], 'pi_daemon_instances[0].name="a/b": must be'),
        ([{"name": "cam+1"}], 'pi_daemon_instances[0].name="cam+1": must be'),
        ([{"name": "-cam"}], 'pi_daemon_instances[0].name="-cam": must be'),
        ([{"name": "x" * 33}], "pi_daemon_instances[0].name="),
        ([{}], "pi_daemon_instances[0].name=null: must be"),
        ([{"name": "config"}], 'pi_daemon_instances[config]: the name "config" is reserved'),
        ([{"name": "snapshots"}], 'pi_daemon_instances[snapshots]: the name "snapshots" is'),
        ([{"name": "cam1"}, {"name": "cam1"}], "pi_daemon_instances[cam1]: listed more than once"),
        ([{"name": "cam1", "camera": 0}], "pi_daemon_instances[cam1].camera: unknown key"),
        ([{"name": "cam1", "vars": ["x"]}], 'pi_daemon_instances[cam1].vars=["x"]: must be a'),
        (
            [{"name": "cam1", "vars": {"pi_daemon_mqtt_enabled": True}}],
            "pi_daemon_instances[cam1].vars.pi_daemon_mqtt_enabled: not a variable an instance",
        ),
        (
            [{"name": "cam1", "vars": {"pi_daemon_picamera2_camera_num": "one"}}],
            'pi_daemon_instances[cam1].vars.pi_daemon_picamera2_camera_num="one": must be a whole',
        ),
        (
            [{"name": "cam1", "vars": {"pi_daemon_mqtt_device_id": "a/b"}}],
            'pi_daemon_instances[cam1].vars.pi_daemon_mqtt_device_id="a/b": must be empty or one',
        ),
        (
            [
                {"name": "a", "vars": {"pi_daemon_source": "picamera2"}},
                {"name": "b", "vars": {"pi_daemon_source": "picamera2"}},
            ],
            "pi_daemon_instances a, b: the same camera",
        ),
        (
            [
                {"name": "a", "vars": {"pi_daemon_source": "opencv"}},
                {"name": "b", "vars": {"pi_daemon_source": "opencv"}},
            ],
            'pi_daemon_instances a, b: the same camera (["opencv.device", "/dev/video0"])',
        ),
        (
            # "x-y" + "-z" and "x" + "-y-z": one device_id for two cameras.
            [
                {
                    "name": "z",
                    "vars": {"pi_daemon_mqtt_device_id": "x-y", "pi_daemon_source": "files"},
                },
                {
                    "name": "y-z",
                    "vars": {"pi_daemon_mqtt_device_id": "x", "pi_daemon_source": "files"},
                },
            ],
            'pi_daemon_instances z, y-z: the same device_id ("x-y-z")',
        ),
        (
            [
                {
                    "name": "a",
                    "vars": {"pi_daemon_source": "files", "pi_daemon_metrics_enabled": True},
                },
                {
                    "name": "b",
                    "vars": {"pi_daemon_source": "files", "pi_daemon_metrics_enabled": True},
                },
            ],
            "pi_daemon_instances a, b: the same metrics port (9110)",
        ),
        (
            [
                {
                    "name": "a",
                    "vars": {"pi_daemon_source": "files", "pi_daemon_output_events_file": "/e"},
                },
                {
                    "name": "b",
                    "vars": {"pi_daemon_source": "files", "pi_daemon_output_events_file": "/e"},
                },
            ],
            'pi_daemon_instances a, b: the same output.events_file ("/e")',
        ),
    ],
)
def test_bad_instances_are_each_named(instances: object, problem: str) -> None:
    result = checked(instances)
    assert any(p.startswith(problem) for p in result["problems"]), result["problems"]


def test_instances_that_may_share_do_and_every_problem_is_reported_at_once() -> None:
    # The files source reads the same photos twice; metrics on port 0 pick any free port;
    # metrics on distinct ports; the auto source on distinct cameras.
    fine = checked(
        [
            {
                "name": "a",
                "vars": {
                    "pi_daemon_source": "files",
                    "pi_daemon_metrics_enabled": True,
                    "pi_daemon_metrics_port": 9111,
                },
            },
            {"name": "b", "vars": {"pi_daemon_source": "files", "pi_daemon_metrics_enabled": True}},
            {
                "name": "c",
                "vars": {
                    "pi_daemon_picamera2_camera_num": 1,
                    "pi_daemon_opencv_device": "/dev/video1",
                },
            },
            {"name": "d"},
        ]
    )
    assert fine["problems"] == []
    assert checked([])["problems"] == [] and checked(None)["instances"] == []
    many = checked(
        [
            {"name": "Bad"},
            {"name": "config"},
            {"name": "ok", "vars": {"x": 1, "pi_daemon_source": "files"}},
        ]
    )
    assert len(many["problems"]) == 3, many["problems"]


def test_pi_daemon_units_names_each_units_config_and_unit_file() -> None:
    units = FILTERS.pi_daemon_units(
        ["pi-daemon.service", "pi-daemon@cam1.service"],
        "pi-daemon.service",
        "/etc/pi-daemon/config.toml",
        "/etc/pi-daemon",
    )
    assert units == [
        {
            "name": "pi-daemon.service",
            "config": "/etc/pi-daemon/config.toml",
            "unit_file": "/etc/systemd/system/pi-daemon.service",
        },
        {
            "name": "pi-daemon@cam1.service",
            "config": "/etc/pi-daemon/cam1.toml",
            "unit_file": TEMPLATE_UNIT,
        },
    ]
    with pytest.raises(ValueError, match=r"neither pi-daemon\.service nor an instance"):
        FILTERS.pi_daemon_units(["sshd.service"], "pi-daemon.service", "/c", "/etc/pi-daemon")


def test_checked_vars_takes_a_list_of_mappings_and_only_that() -> None:
    rule = {"name": "i", "type": "dict_list"}
    assert CHECKS.checked_vars([rule], {"i": [{"name": "a"}]})["problems"] == []
    assert CHECKS.checked_vars([rule], {"i": []})["values"] == {"i": []}
    bad = CHECKS.checked_vars([rule], {"i": ["a"]})["problems"]
    assert bad == ['i=["a"]: must be a list of mappings']
    assert CHECKS.checked_vars([rule], {"i": "a"})["problems"] == ['i="a": must be a list']


# --- With root: a Pi given two cameras ----------------------------------------------------

# The files source (no camera here), slowly, on one thread, with the test sensors: the
# same configs boot below. Set per instance, so the host's own config.toml stays as it was.
BOOTABLE = {
    "pi_daemon_source": "files",
    "pi_daemon_files_fps": 5.0,
    "pi_daemon_model_num_threads": 1,
    "pi_daemon_config_extra": nspawn.sensor_toml(),
}
INSTANCES = [
    {"name": "cam1", "vars": BOOTABLE},
    {
        "name": "cam2",
        "vars": {
            **BOOTABLE,
            "pi_daemon_mqtt_device_id": "porch",
            "pi_daemon_files_fps": 3.0,
            "pi_daemon_output_log_level": "debug",
        },
    },
]


@dataclass
class Multicam:
    root: Path
    inventory: Path
    extra_vars: dict[str, object]
    first: rf.PlaybookRun
    before: HostState

    def run(self, *args: str, **extra: object) -> rf.PlaybookRun:
        return rf.run_playbook(
            self.inventory, "--tags", "pi_daemon", *args, extra_vars={**self.extra_vars, **extra}
        )

    def chroot(self, *argv: str, user: str | None = None):
        return rf.chroot(self.root, *argv, user=user)

    def config(self, name: str) -> dict:
        return tomllib.loads((self.root / f"etc/pi-daemon/{name}.toml").read_text("utf-8"))


@pytest.fixture(scope="module")
def multicam(
    converged_rootfs: ConvergedRootfs,
    rootfs_factory: RootfsFactory,
    pi_daemon_wheel: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Multicam:
    started = time.monotonic()
    root = rootfs_factory.clone(converged_rootfs.root, "multicam")
    TIMINGS["instances: clone"] = time.monotonic() - started
    before = HostState.of(root)
    inventory = rf.write_inventory(
        tmp_path_factory.mktemp("multicam") / "inventory.yml",
        "pis",
        {HOST: rf.chroot_host_vars(root)},
    )
    extra_vars: dict[str, object] = {
        "pi_daemon_wheel": str(pi_daemon_wheel),
        "pi_daemon_instances": INSTANCES,
    }
    first = rf.run_playbook(inventory, "--tags", "pi_daemon", extra_vars=extra_vars)
    TIMINGS["instances: converge with two instances (chroot)"] = first.seconds
    assert_ok(first, "site.yml --tags pi_daemon with two instances")
    return Multicam(root, inventory, extra_vars, first, before)


@pytest.mark.system
def test_each_instance_gets_its_config_from_the_one_template(multicam: Multicam) -> None:
    plain = tomllib.loads((multicam.root / "etc/pi-daemon/config.toml").read_text("utf-8"))
    cam1, cam2 = multicam.config("cam1"), multicam.config("cam2")
    for name, config in (("cam1", cam1), ("cam2", cam2)):
        assert config["source"] == "files"
        # The same model and release as the host's plain config.
        for key in ("path", "labels", "sha256", "backend", "top_k"):
            assert config["model"][key] == plain["model"][key], (name, key)
        assert config["output"]["events_file"] == f"/var/lib/pi-daemon/{name}/events.jsonl"
        assert config["sensors"]["thermal_path"] == nspawn.THERMAL
        assert config["model"]["num_threads"] == 1
        text = (multicam.root / f"etc/pi-daemon/{name}.toml").read_text("utf-8")
        assert text.startswith("#\n# Managed by Ansible"), text[:100]
        assert f"# Instance {name}: read by pi-daemon@{name}.service" in text
        stat = (multicam.root / f"etc/pi-daemon/{name}.toml").stat()
        assert (stat.st_mode & 0o777, stat.st_uid) == (0o640, 0)
        assert stat.st_gid == nspawn.group_id(multicam.root, "pi-daemon")
    # cam2's own overrides, and nothing of them in cam1's.
    assert (cam2["files"]["fps"], cam2["output"]["log_level"]) == (3.0, "debug")
    assert (cam1["files"]["fps"], cam1["output"]["log_level"]) == (5.0, "info")
    # MQTT is off, but the device_id names cam2's events (journal, events file).
    assert cam2["mqtt"] == {"device_id": "porch"}
    assert "mqtt" not in cam1 and "mqtt" not in plain
    # The plain config is the host's, untouched by the instances' overrides.
    assert plain["source"] == "auto" and "sensors" not in plain


@pytest.mark.system
def test_each_instance_config_passes_check_config_as_the_service_user(
    multicam: Multicam,
) -> None:
    for name in ("cam1", "cam2"):
        check = multicam.chroot(
            "/opt/pi-daemon/venv/bin/pi-daemon",
            "check-config",
            f"/etc/pi-daemon/{name}.toml",
            user="pi-daemon",
        )
        assert check.returncode == 0, (name, check.stdout + check.stderr)


@pytest.mark.system
def test_the_instances_are_enabled_and_the_plain_unit_is_not(multicam: Multicam) -> None:
    root = multicam.root
    template = root / SYSTEMD / "pi-daemon@.service"
    assert template.read_bytes() == (REPO / "systemd" / "pi-daemon@.service").read_bytes()
    for name in ("cam1", "cam2"):
        wants = root / WANTS / f"pi-daemon@{name}.service"
        assert wants.is_symlink(), wants
        assert os.readlink(wants) == TEMPLATE_UNIT
    assert not (root / WANTS / "pi-daemon.service").exists()
    assert not (root / WANTS / "pi-daemon.service").is_symlink()
    # Still installed, unchanged, for a host that goes back to one camera.
    assert (root / SYSTEMD / "pi-daemon.service").read_bytes() == (
        REPO / "systemd" / "pi-daemon.service"
    ).read_bytes()
    # Nothing else of the host moved: the release, the model, the plain config.
    after = HostState.of(root)
    assert (after.links, after.config_sha256, after.unit_sha256, after.releases) == (
        multicam.before.links,
        multicam.before.config_sha256,
        multicam.before.unit_sha256,
        multicam.before.releases,
    )
    assert set(after.etc_pi_daemon) == {*multicam.before.etc_pi_daemon, "cam1.toml", "cam2.toml"}


@pytest.mark.system
def test_the_instance_unit_verifies_and_is_exposed_like_the_plain_one(multicam: Multicam) -> None:
    """systemd-analyze on the installed units, by their names (the template as instance)."""
    from tests.test_unit_file import MAX_EXPOSURE

    exposures = {}
    for unit in ("pi-daemon.service", "pi-daemon@cam1.service"):
        verify = rf.chroot_with_proc(multicam.root, "systemd-analyze", "verify", unit)
        assert (verify.returncode, verify.stderr) == (0, ""), (unit, verify.stderr)
        security = rf.chroot_with_proc(
            multicam.root, "systemd-analyze", "security", "--offline=true", "--no-pager", unit
        )
        line = [x for x in security.stdout.splitlines() if "Overall exposure level" in x]
        assert line, security.stdout + security.stderr
        exposures[unit] = float(line[0].split(":")[1].split()[0])
    assert exposures["pi-daemon@cam1.service"] == exposures["pi-daemon.service"] <= MAX_EXPOSURE


@pytest.mark.system
def test_a_second_run_and_a_check_run_change_nothing(multicam: Multicam) -> None:
    again = multicam.run()
    TIMINGS["instances: second run (chroot)"] = again.seconds
    assert_nothing_changed(again, HOST, "a second run with two instances")
    check = multicam.run("--check", "--diff")
    TIMINGS["instances: --check --diff (chroot)"] = check.seconds
    assert_nothing_changed(check, HOST, "--check with two instances")


@pytest.mark.system
def test_bad_instances_stop_in_the_preflight_and_change_nothing(multicam: Multicam) -> None:
    before = HostState.of(multicam.root)
    configs = {n: multicam.config(n) for n in ("cam1", "cam2")}
    bad = [
        {"name": "config"},
        {"name": "cam1", "vars": {"pi_daemon_mqtt_enabled": True}},
        {"name": "Cam3"},
        {"name": "cam4", "vars": {"pi_daemon_picamera2_camera_num": "one"}},
    ]
    run = multicam.run(pi_daemon_instances=bad)
    assert_failed(run, HOST, "bad instances")
    assert run.recap[HOST]["changed"] == 0, run.changed_tasks()
    assert_says(
        run,
        'pi_daemon_instances[config]: the name "config" is reserved',
        "pi_daemon_instances[cam1].vars.pi_daemon_mqtt_enabled: not a variable an instance",
        'pi_daemon_instances[2].name="Cam3": must be 1-32 lower-case',
        'pi_daemon_instances[cam4].vars.pi_daemon_picamera2_camera_num="one": must be a whole',
    )
    assert "TASK [pi_daemon : Install the apt packages pi-daemon needs.]" not in run.output
    assert HostState.of(multicam.root) == before
    assert {n: multicam.config(n) for n in ("cam1", "cam2")} == configs


# --- Booted: both instances run, then the playbook checks them live ----------------------


@dataclass
class Booted:
    container: nspawn.Container
    inventory: Path
    cgroups_before: dict[Path, set[str]]


@pytest.fixture(scope="module")
def booted(multicam: Multicam, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Booted]:
    cgroups_before = nspawn.prepare_host_for_containers()
    workdir = tmp_path_factory.mktemp("multicam-boot")
    nspawn.disable_swap_units(multicam.root)
    nspawn.seed_sensors(multicam.root)
    started = time.monotonic()
    containers, _ = nspawn.boot_all({HOST: multicam.root}, workdir)
    TIMINGS["instances: boot"] = time.monotonic() - started
    container = containers[HOST]
    try:
        host_vars = nspawn.playbook_host_vars(container)
        inventory = rf.write_inventory(workdir / "live.yml", "pis", {HOST: host_vars})
        yield Booted(container, inventory, cgroups_before)
    finally:
        container.close()
        TIMINGS["instances: boot to teardown"] = time.monotonic() - started


def ready_events(container: nspawn.Container, unit: str) -> list[dict]:
    return [e for e in container.journal(unit) if e.get("PI_DAEMON_EVENT") == "ready"]


def running(container: nspawn.Container, unit: str) -> dict:
    """The ready event of the unit's running invocation, once it is active."""

    def probe() -> dict | None:
        show = container.show(unit, "ActiveState", "InvocationID")
        if show.get("ActiveState") != "active":
            return None
        mine = [
            e
            for e in ready_events(container, unit)
            if e["_SYSTEMD_INVOCATION_ID"] == show["InvocationID"]
        ]
        return mine[-1] if mine else None

    return nspawn.wait_for(f"{unit} active with its ready event", probe, timeout=90)


@pytest.mark.system
def test_both_instances_run_at_boot_each_with_its_own_device_id_and_state(
    multicam: Multicam, booted: Booted
) -> None:
    c = booted.container
    started = time.monotonic()
    ready = {name: running(c, f"pi-daemon@{name}.service") for name in ("cam1", "cam2")}
    TIMINGS["instances: both active after boot"] = time.monotonic() - started
    hostname = c.check("hostname").strip().lower()
    assert ready["cam1"]["DEVICE_ID"] == f"{hostname}-cam1"
    assert ready["cam2"]["DEVICE_ID"] == "porch-cam2"
    assert c.show("pi-daemon.service", "ActiveState")["ActiveState"] == "inactive"

    def lines(name: str) -> list[dict]:
        path = multicam.root / f"var/lib/pi-daemon/{name}/events.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text("utf-8").splitlines() if line]

    results = nspawn.wait_for(
        "results in both events files",
        lambda: (lambda got: got if all(got.values()) else None)(
            {n: [e for e in lines(n) if e.get("type") == "result"] for n in ("cam1", "cam2")}
        ),
        timeout=30,
    )
    for name, device_id in (("cam1", f"{hostname}-cam1"), ("cam2", "porch-cam2")):
        assert {e["device_id"] for e in results[name]} == {device_id}
        # Each instance's sequence numbers and state are in its own StateDirectory=.
        state = multicam.root / f"var/lib/pi-daemon/{name}"
        assert (state / "seq").is_file(), sorted(p.name for p in state.iterdir())
        seqs = [e["seq"] for e in lines(name)]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), seqs
    # Nothing written where the plain unit keeps its own (it never ran in this clone).
    for plain_file in ("events.jsonl", "seq"):
        assert not (multicam.root / "var/lib/pi-daemon" / plain_file).exists(), plain_file


@pytest.mark.system
def test_the_playbook_health_checks_both_instances_live_and_then_restarts_nothing(
    multicam: Multicam, booted: Booted
) -> None:
    c = booted.container
    extra = multicam.extra_vars
    run = rf.run_playbook(booted.inventory, "--tags", "pi_daemon", extra_vars=extra)
    TIMINGS["instances: site.yml live (restart and health-check both)"] = run.seconds
    assert_ok(run, "site.yml against the booted Pi with two instances")
    assert_says(run, "Restarting pi-daemon: nothing passed a health check here yet")
    for name in ("cam1", "cam2"):
        assert f"changed: [{HOST}] => (item=pi-daemon@{name}.service)" in run.output, name
    state = json.loads((multicam.root / "opt/pi-daemon/known-good/state.json").read_text())
    assert state["units"] == ["pi-daemon@cam1.service", "pi-daemon@cam2.service"]
    assert len(state["config_sha1"].split(",")) == 2
    for name in ("cam1.toml", "cam2.toml", "pi-daemon@.service"):
        assert (multicam.root / "opt/pi-daemon/known-good" / name).is_file(), name
    shown = {
        u: c.show(u, "InvocationID") for u in ("pi-daemon@cam1.service", "pi-daemon@cam2.service")
    }
    for unit in shown:
        running(c, unit)

    again = rf.run_playbook(booted.inventory, "--tags", "pi_daemon", extra_vars=extra)
    TIMINGS["instances: site.yml live again (idempotent)"] = again.seconds
    assert_nothing_changed(again, HOST, "a second live run with two instances")
    assert "Restarting pi-daemon" not in again.output
    assert {u: c.show(u, "InvocationID") for u in shown} == shown


@pytest.mark.system
def test_back_to_one_camera_the_plain_unit_runs_and_the_instances_are_gone(
    multicam: Multicam, booted: Booted
) -> None:
    c = booted.container
    extra = multicam.extra_vars
    run = rf.run_playbook(
        booted.inventory, "--tags", "pi_daemon", extra_vars={**extra, "pi_daemon_instances": []}
    )
    TIMINGS["instances: site.yml live, back to the plain unit"] = run.seconds
    assert_ok(run, "site.yml with no instances again")
    running(c, "pi-daemon.service")
    root = multicam.root
    for name in ("cam1", "cam2"):
        unit = f"pi-daemon@{name}.service"
        assert c.show(unit, "ActiveState")["ActiveState"] == "inactive", unit
        assert not (root / WANTS / unit).is_symlink(), unit
        assert not (root / f"etc/pi-daemon/{name}.toml").exists(), name
        # Its state stays: events and sequence numbers are the operator's data.
        assert (root / f"var/lib/pi-daemon/{name}/seq").is_file()
    assert (root / WANTS / "pi-daemon.service").is_symlink()
    state = json.loads((root / "opt/pi-daemon/known-good/state.json").read_text())
    assert "units" not in state, "a plain host's state is as it always was"
    assert sorted(state) == ["config_sha1", "model", "release", "unit_sha1"]


@pytest.mark.system
def test_teardown_leaves_no_container_cgroup_mount_or_swap(booted: Booted) -> None:
    booted.container.close()
    from tests.system.test_ansible_live import ours

    problems = nspawn.leftovers([booted.container], booted.cgroups_before)
    assert [problem for problem in problems if ours(problem)] == []
