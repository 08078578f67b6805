"""Which interpreter backends exist on which Python: tflite-runtime stops at 3.11.

The real Python 3.13 case runs in tests/system (the Debian trixie root filesystems, amd64
and arm64); here the interpreter version is the backends module's only input, so these
tests hand it the versions Raspberry Pi OS ships (3.11 on Bookworm, 3.13 on Trixie).
"""

from __future__ import annotations

import types

import pytest

from pi_daemon import backends
from pi_daemon.errors import EX_CONFIG, ModelError
from tests.conftest import TEST_MODELS

TINY = TEST_MODELS / "tiny_uint8.tflite"


@pytest.mark.parametrize(
    ("python", "order"),
    [
        ((3, 11), ("litert", "tflite-runtime")),  # Bookworm: both, litert first
        ((3, 12), ("litert",)),  # tflite-runtime 2.14.0 has no cp312 wheel either
        ((3, 13), ("litert",)),  # Trixie
        ((4, 0), ("litert",)),
    ],
)
def test_auto_tries_tflite_runtime_only_where_it_has_a_wheel(python, order) -> None:
    assert backends.auto_order(python) == order
    assert bool(backends.no_wheel_reason("tflite-runtime", python)) == (len(order) == 1)
    assert backends.no_wheel_reason("litert", python) == ""


def _pretend_python(monkeypatch: pytest.MonkeyPatch, minor: int) -> None:
    """The backends module reads only sys.version_info; give it Trixie's (or another)."""
    fake = types.SimpleNamespace(version_info=(3, minor, 5, "final", 0))
    monkeypatch.setattr(backends, "sys", fake)


def _record_tried_backends(monkeypatch) -> list[str]:
    """The backends load_interpreter really tries to import, in order (the real import
    still happens)."""
    tried: list[str] = []
    real = backends._interpreter_class

    def spy(name: str) -> type:
        tried.append(name)
        return real(name)

    monkeypatch.setattr(backends, "_interpreter_class", spy)
    return tried


def test_naming_tflite_runtime_on_python_313_is_one_clear_config_error(monkeypatch) -> None:
    _pretend_python(monkeypatch, 13)
    with pytest.raises(ModelError) as raised:
        backends.load_interpreter(TINY, "tflite-runtime", 1)
    message = str(raised.value)
    assert raised.value.exit_code == EX_CONFIG
    assert "\n" not in message
    assert message.startswith("model.backend = 'tflite-runtime': tflite-runtime has no wheel")
    assert "Python 3.13" in message and 'use backend = "litert"' in message


def test_auto_on_python_313_loads_litert_without_trying_tflite_runtime(monkeypatch) -> None:
    _pretend_python(monkeypatch, 13)
    tried = _record_tried_backends(monkeypatch)
    loaded = backends.load_interpreter(TINY, "auto", 1)
    assert loaded.backend == "litert"
    assert tried == ["litert"]
    assert backends.available_backends() == ["litert"]
    assert tried == ["litert", "litert"]


def test_on_python_311_tflite_runtime_is_still_tried(monkeypatch) -> None:
    _pretend_python(monkeypatch, 11)
    tried = _record_tried_backends(monkeypatch)
    try:
        backends.load_interpreter(TINY, "tflite-runtime", 1)
    except ModelError as error:  # not installed here, or needs numpy<2: a real attempt
        assert "no wheel" not in str(error), error
    assert tried == ["tflite-runtime"]
