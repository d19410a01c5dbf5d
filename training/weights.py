"""Read network weights from either kind of file training deals with.

* exported weights (``best.pt``, ``Resources/Models/vertebrae_net.pt``): a state dict with a manifest next
  to it, read through the core's checksum-verified ``model_io.load_state_dict``;
* a training checkpoint (``RUN_DIR/last.pt``): model, EMA model, optimizer and scheduler states and the
  run's config, read with ``weights_only=True`` (plain tensors and numbers, no code).

One reader, so that exporting and ``--init`` cannot disagree on which tensors a file holds (evaluation
loads exported weights through the core's ``model_io.load_model``, which shares ``manifest_architecture``).
"""

import os
from typing import Any

import torch

from VertebraeLabeling.VertebraeLabelingLib.model_io import load_state_dict, manifest_architecture, manifest_path

from .sources import mix_label

Architecture = tuple[tuple[int, ...], int]


def checkpoint_architecture(config: dict, default_widths: str = "8,16,32,64") -> Architecture:
    """(widths, heatmap_stride) a checkpoint was trained with; checkpoints from before the stride option
    decode to full resolution (stride 1)."""
    widths = tuple(int(v) for v in str(config.get("widths", default_widths)).split(","))
    return widths, int(config.get("heatmap_stride", 1))


def read_weights(path: str, prefer_ema: bool = True) -> tuple[dict[str, Any], Architecture, dict[str, Any]]:
    """``(state dict, (widths, heatmap_stride), training info)`` of exported weights or a training checkpoint.

    From a checkpoint that keeps an exponential moving average of the weights, the average is returned
    unless ``prefer_ema`` is false: it is what validation scores and what gets shipped. ``info["weights"]``
    says which one was read (``"ema"`` or ``"raw"``).
    """
    if os.path.exists(manifest_path(path)):
        state, manifest = load_state_dict(path)
        return state, manifest_architecture(manifest), dict(manifest.get("training", {}))
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    config = ckpt.get("config", {})
    use_ema = prefer_ema and "ema" in ckpt
    info: dict[str, Any] = {"weights": "ema" if use_ema else "raw"}
    if "step" in ckpt:
        data = config.get("data")  # a list of specs since runs can mix sources; one string before
        data = mix_label(data) if data else data
        info.update(step=int(ckpt["step"]), data=data, best_val=float(ckpt.get("best_val", "nan")))
    return (ckpt["ema"] if use_ema else ckpt["model"]), checkpoint_architecture(config), info
