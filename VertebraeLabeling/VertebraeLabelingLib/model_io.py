"""Saving and loading network weights safely: plain state dict + JSON manifest with a SHA-256.

A weights file ``NAME.pt`` always travels with ``NAME.json``::

    {"format": "vertebrae-labeling-weights", "format_version": 1, "sha256": "...",
     "widths": [8, 16, 32, 64], "heatmap_stride": 2, "trained": true, "description": "...", "training": {...}}

Loading checks the checksum *before* unpickling anything and then uses
``torch.load(weights_only=True)``, so a tampered or foreign file is refused without running code.
"""

import json
import os
from typing import Any, Optional

import torch

from .checksums import sha256_of  # noqa: F401 - re-exported: the weights' checksum helper
from .errors import ModelFileError
from .network import VertebraeNet
from .outputs import atomic_output, write_text_atomic

FORMAT_NAME = "vertebrae-labeling-weights"
FORMAT_VERSION = 1
DEFAULT_MODEL_NAME = "vertebrae_net.pt"
_HERE = os.path.dirname(os.path.abspath(__file__))
#: Where the bundled model is looked for: the repository / source tree, then the Slicer module's
#: installed Resources folder (the extension's CMake installs the model there).
DEFAULT_MODEL_DIRS = (
    os.path.normpath(os.path.join(_HERE, "..", "..", "Resources", "Models")),
    os.path.normpath(os.path.join(_HERE, "..", "Resources", "Models")),
)


def default_model_path() -> str:
    """Path of the bundled model (``$VERTEBRAE_LABELING_MODEL`` overrides it)."""
    env = os.environ.get("VERTEBRAE_LABELING_MODEL")
    if env:
        return env
    for folder in DEFAULT_MODEL_DIRS:
        path = os.path.join(folder, DEFAULT_MODEL_NAME)
        if os.path.exists(path):
            return path
    return os.path.join(DEFAULT_MODEL_DIRS[0], DEFAULT_MODEL_NAME)


def manifest_path(weights_path: str) -> str:
    return os.path.splitext(weights_path)[0] + ".json"


def save_weights(model: VertebraeNet, path: str, trained: bool, description: str = "",
                 training: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """Write ``model``'s state dict to ``path`` and its manifest next to it (both atomically)."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_output(path) as tmp:
        torch.save(state, tmp)
        manifest = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "sha256": sha256_of(tmp),
            "widths": list(model.widths),
            "heatmap_stride": int(model.heatmap_stride),
            "trained": bool(trained),
            "description": description,
            "training": training or {},
        }
    write_text_atomic(manifest_path(path), json.dumps(manifest, indent=2) + "\n")
    return manifest


def read_manifest(path: str) -> dict[str, Any]:
    """Read and check the manifest of the weights file ``path``."""
    if not os.path.isfile(path):
        raise ModelFileError(f"Model file not found: {path}")
    mpath = manifest_path(path)
    if not os.path.isfile(mpath):
        raise ModelFileError(f"{os.path.basename(path)} has no manifest {os.path.basename(mpath)} next to it; "
                             "it is not a VertebraeLabeling model (export models with training.export).")
    try:
        with open(mpath) as handle:
            manifest = json.load(handle)
    except (OSError, ValueError) as exc:
        raise ModelFileError(f"The model manifest {mpath} is unreadable: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise ModelFileError(f"{mpath} is not a VertebraeLabeling model manifest.")
    if int(manifest.get("format_version", 0)) > FORMAT_VERSION:
        raise ModelFileError(f"{path} was written by a newer version of VertebraeLabeling; please update.")
    return manifest


def load_state_dict(path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read a weights file after verifying its checksum; return ``(state dict, manifest)``.

    Raises:
        ModelFileError: missing file or manifest, checksum mismatch, or a file that is not a state dict.
    """
    manifest = read_manifest(path)
    actual = sha256_of(path)
    if actual != manifest.get("sha256"):
        raise ModelFileError(f"Checksum mismatch for {path}: the file is corrupt or was modified "
                             f"(expected {str(manifest.get('sha256'))[:12]}…, got {actual[:12]}…).")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means the same thing to the user
        raise ModelFileError(f"{path} could not be read as weights: {exc}") from None
    if not isinstance(state, dict):
        raise ModelFileError(f"{path} does not hold a state dict.")
    return state, manifest


def manifest_architecture(manifest: dict[str, Any]) -> tuple[tuple[int, ...], int]:
    """``(widths, heatmap_stride)`` of the network a manifest describes.

    Weights from before the stride field existed decode to full resolution, the paper's layout.
    """
    return tuple(int(w) for w in manifest.get("widths", (8, 16, 32, 64))), int(manifest.get("heatmap_stride", 1))


def load_model(path: Optional[str] = None, device: str = "cpu") -> tuple[VertebraeNet, dict[str, Any]]:
    """Load weights after verifying their checksum; return ``(model in eval mode, manifest)``.

    Raises:
        ModelFileError: missing file or manifest, checksum mismatch, or weights that don't fit the network.
    """
    path = path or default_model_path()
    state, manifest = load_state_dict(path)
    try:
        widths, heatmap_stride = manifest_architecture(manifest)
        model = VertebraeNet(widths=widths, heatmap_stride=heatmap_stride)
        model.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ModelFileError(f"{path} does not fit the VertebraeLabeling network: {str(exc)[:300]}") from None
    model.eval()
    # label_ct reads this to warn that an untrained placeholder's labels mean nothing.
    model.trained = bool(manifest.get("trained", False))
    return model.to(device), manifest
