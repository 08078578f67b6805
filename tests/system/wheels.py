"""Releases for the rollout tests: the project's wheel under a new version, optionally
with a defect, as a build gone wrong would make it.

Each defect is one a release can really have, and each is caught at a different point:

* `truncate_bundled_model`: a model cut off in the build, its manifest made from the cut
  file (so every checksum agrees). The role's smoke test (`pi-daemon classify` with the
  new release and model) catches it before anything is switched.
* `drop_module("governor")`: a module the service loop needs left out of the wheel.
  `classify` and `check-config` never import it, so it passes every check before the
  switch and fails only when systemd starts `pi-daemon run`: the health check and the
  rollback handle it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path

BUNDLED_MODEL = "pi_daemon/models/efficientnet-lite0-int8.tflite"
BUNDLED_MANIFEST = "pi_daemon/models/efficientnet-lite0-int8.json"


def derive_wheel(
    base: Path, dest: Path, version: str, patch: Callable[[Path], None] | None = None
) -> Path:
    """A copy of `base` re-versioned to `version` (METADATA, dist-info, __version__),
    optionally patched, with a RECORD that matches its new contents."""
    tree = dest / f"tree-{version}"
    shutil.rmtree(tree, ignore_errors=True)
    with zipfile.ZipFile(base) as archive:
        archive.extractall(tree)
    (old_info,) = tree.glob("pi_daemon-*.dist-info")
    old_version = old_info.name.removeprefix("pi_daemon-").removesuffix(".dist-info")
    info = old_info.rename(tree / f"pi_daemon-{version}.dist-info")
    metadata = info / "METADATA"
    metadata.write_text(
        re.sub(r"(?m)^Version: .*$", f"Version: {version}", metadata.read_text("utf-8")),
        encoding="utf-8",
    )
    init = tree / "pi_daemon" / "__init__.py"
    text = init.read_text(encoding="utf-8")
    assert f'__version__ = "{old_version}"' in text, text
    init.write_text(text.replace(old_version, version), encoding="utf-8")
    if patch is not None:
        patch(tree)

    files = sorted(p for p in tree.rglob("*") if p.is_file() and p.name != "RECORD")
    record = info / "RECORD"
    lines = []
    for path in files:
        data = path.read_bytes()
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        lines.append(f"{path.relative_to(tree).as_posix()},sha256={digest},{len(data)}")
    lines.append(f"{record.relative_to(tree).as_posix()},,")
    record.write_text("\n".join(lines) + "\n", encoding="utf-8")

    wheel = dest / f"pi_daemon-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in [*files, record]:
            info_entry = zipfile.ZipInfo(path.relative_to(tree).as_posix(), (1980, 1, 1, 0, 0, 0))
            info_entry.external_attr = 0o644 << 16
            archive.writestr(info_entry, path.read_bytes(), zipfile.ZIP_DEFLATED)
    shutil.rmtree(tree)
    return wheel


def truncate_bundled_model(tree: Path) -> None:
    """The defect: a model cut off in the build, its manifest made from the cut file."""
    model = tree / BUNDLED_MODEL
    data = model.read_bytes()
    model.write_bytes(data[: len(data) // 3])
    manifest_path = tree / BUNDLED_MANIFEST
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    manifest["sha256"] = hashlib.sha256(model.read_bytes()).hexdigest()
    manifest["size_bytes"] = model.stat().st_size
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def drop_module(name: str) -> Callable[[Path], None]:
    """The defect: pi_daemon/<name>.py left out of the wheel."""

    def patch(tree: Path) -> None:
        (tree / "pi_daemon" / f"{name}.py").unlink()

    return patch
