"""Corrupt variants of the tiny test models that break the TFLite runtime in known ways.

Each is the tiny model with a byte or two changed, found by mutating the models with
ai-edge-litert 2.3.0. `runtime_outcome()` runs the bare runtime (no pi_daemon code) on a
model in a child process, so a test can first prove that its model really does what the
test says (crash the runtime, fail in invoke), and fails loudly if a new runtime no longer
does, instead of quietly testing nothing.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from tests.conftest import TEST_MODELS

# name -> (source model, [(offset, new byte)], what the bare runtime does with it)
MUTATIONS: dict[str, tuple[str, list[tuple[int, int]], str]] = {
    # allocate_tensors() segfaults.
    "crashes-runtime": ("tiny_uint8", [(1538, 17)], "crash"),
    # Loads and allocates; invoke() raises "Input tensor 1 lacks data".
    "invoke-fails": ("tiny_float32", [(1408, 10)], "invoke-error"),
    # Loads and allocates; invoke() raises "Unsupported datatype for sign output".
    "invoke-fails-op": ("tiny_uint8", [(2944, 158)], "invoke-error"),
    # A tensor grows to tens of GB in allocate_tensors() (the runtime tries to get them).
    "huge-tensor": ("tiny_int8", [(871, 84), (2406, 98)], "memory"),
}

# The bare runtime, bounded in memory so "huge-tensor" fails instead of exhausting the host.
_BARE = textwrap.dedent("""
    import resource, sys
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter
    limit = 2 << 30
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    interpreter = Interpreter(model_path=sys.argv[1], num_threads=1)
    try:
        interpreter.allocate_tensors()
    except Exception as error:
        print("load-error", error)
        sys.exit(0)
    for detail in interpreter.get_input_details():
        interpreter.set_tensor(detail["index"], np.zeros(detail["shape"], detail["dtype"]))
    try:
        interpreter.invoke()
    except Exception as error:
        print("invoke-error", error)
        sys.exit(0)
    print("ok")
""")


def write_mutation(folder: Path, name: str) -> Path:
    source, changes, _ = MUTATIONS[name]
    data = bytearray((TEST_MODELS / f"{source}.tflite").read_bytes())
    for offset, value in changes:
        data[offset] = value
    path = folder / f"{name}.tflite"
    path.write_bytes(bytes(data))
    return path


def runtime_outcome(model: Path) -> str:
    """'crash', 'load-error ...', 'invoke-error ...' or 'ok': the bare runtime on `model`."""
    done = subprocess.run(
        [sys.executable, "-c", _BARE, str(model)], capture_output=True, text=True, timeout=120
    )
    if done.returncode < 0:
        return "crash"
    return done.stdout.strip() or f"exit {done.returncode}: {done.stderr.strip()[-200:]}"


def assert_runtime_does(model: Path, expected: str) -> None:
    """The bare runtime really crashes / fails in invoke on `model` (see MUTATIONS)."""
    outcome = runtime_outcome(model)
    if expected == "memory":  # allocation fails under the limit, or the runtime dies of it
        assert outcome == "crash" or outcome.startswith("load-error"), outcome
    else:
        assert outcome.startswith(expected), (
            f"{model.name}: the runtime now says {outcome!r}, not {expected!r}: this "
            "mutation no longer exercises the fault; pick another with tests/test_model_fuzz.py"
        )
