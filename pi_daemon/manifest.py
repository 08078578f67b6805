"""The model manifest, `<model>.json` beside the model: validated like the config.

`deploy/build_model.py` writes it: the model's sha256, where its labels are, its tensors and
how it was built. Every field is optional (a manifest may say only what it knows), but what
is there must be right: strict types, no coercion, unknown keys refused (a misspelt
`labels_file` must not silently fall back to `labels.txt`), and every problem reported on
its own line with its key path, as for the config.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from pi_daemon import fileio
from pi_daemon.config import Section, validate_section
from pi_daemon.errors import ModelError

# A manifest is a few KiB of JSON.
MAX_MANIFEST_BYTES = fileio.MIB

Dimension = Annotated[int, Meta(ge=1)]


class TensorManifest(Section, frozen=True):
    shape: list[Dimension] | None = None
    dtype: Literal["uint8", "int8", "float32"] | None = None
    scale: Annotated[float, Meta(ge=0)] = 0.0
    zero_point: int = 0


class InputManifest(TensorManifest, frozen=True):
    color: Literal["RGB"] = "RGB"
    # The real values the model expects for pixels 0..255 when its normalisation is not
    # inside the graph, e.g. [-1, 1].
    range: tuple[float, float] = (0.0, 255.0)

    def __post_init__(self) -> None:
        if not self.range[0] < self.range[1]:
            raise ValueError(f"range must be [low, high] with low < high, got {list(self.range)}")


class OutputManifest(TensorManifest, frozen=True):
    activation: Literal["softmax", "probabilities", "none", "logits", "linear"] | None = None


class Manifest(Section, frozen=True):
    format: Literal[1] = 1
    name: str = ""
    arch: str = ""
    file: str = ""
    sha256: Annotated[str, Meta(pattern=r"^([0-9a-f]{64})?$")] = ""
    size_bytes: Annotated[int, Meta(ge=0)] | None = None
    # Relative to the manifest's directory.
    labels_file: str = ""
    num_classes: Annotated[int, Meta(ge=1)] | None = None
    input: InputManifest = msgspec.field(default_factory=InputManifest)
    output: OutputManifest = msgspec.field(default_factory=OutputManifest)
    built_with: dict[str, str] = msgspec.field(default_factory=dict)
    calibration: dict[str, Any] = msgspec.field(default_factory=dict)
    agreement: dict[str, Any] = msgspec.field(default_factory=dict)


def manifest_path_for(model_path: Path) -> Path:
    return model_path.with_suffix(".json")


def read_manifest(model_path: Path) -> Manifest | None:
    """The manifest beside `model_path`, None when there is none; ModelError when it is
    unreadable or invalid (one line per problem, each with its key path)."""
    path = manifest_path_for(model_path)
    try:
        text = fileio.read_text(path, MAX_MANIFEST_BYTES)
    except fileio.FileProblem as error:
        if error.missing:
            return None
        raise ModelError(f"{path}: cannot read model manifest: {error.reason}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ModelError(f"{path}: unreadable model manifest: not JSON: {error}") from None
    except RecursionError:
        raise ModelError(f"{path}: unreadable model manifest: nested too deeply") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path}: model manifest is not a JSON object")
    return validate_section(Manifest, data, str(path), ModelError)
