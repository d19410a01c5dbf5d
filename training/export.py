"""Export trained weights as the bundled default model (state dict + manifest with SHA-256).

    python -m training.export runs/default/best.pt            # → Resources/Models/vertebrae_net.pt
    python -m training.export runs/default/last.pt --to my_model.pt --description "VerSe20 fine-tune"
    python -m training.export snaps/step_5000.pt snaps/step_5250.pt snaps/step_5500.pt   # their mean

Given several sources, the exported weights are their element-wise mean (stochastic weight averaging,
Izmailov et al. 2018): with batch 2 the weights at any one step wander around a good region, and their
mean sits nearer its centre. The network has GroupNorm, not BatchNorm, so no statistics need recomputing.
"""

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Optional

import torch

from VertebraeLabeling.VertebraeLabelingLib.model_io import (
    DEFAULT_MODEL_DIRS,
    DEFAULT_MODEL_NAME,
    load_model,
    save_weights,
)
from VertebraeLabeling.VertebraeLabelingLib.network import VertebraeNet

from .train import checkpoint_architecture


def read_source(path: str) -> tuple[VertebraeNet, dict[str, object]]:
    """(model, training info) of exported weights (checksum verified) or a training checkpoint."""
    manifest_file = os.path.splitext(path)[0] + ".json"
    if os.path.exists(manifest_file):
        model, manifest = load_model(path)
        return model, dict(manifest.get("training", {}))
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    widths, heatmap_stride = checkpoint_architecture(ckpt["config"])
    model = VertebraeNet(widths=widths, heatmap_stride=heatmap_stride)
    model.load_state_dict(ckpt["model"])
    return model, {"step": int(ckpt["step"]), "data": ckpt["config"].get("data"),
                   "best_val": float(ckpt["best_val"])}


def average_models(models: Sequence[VertebraeNet]) -> VertebraeNet:
    """The element-wise mean of models of one architecture (a new model; the inputs are untouched)."""
    first = models[0]
    for m in models[1:]:
        if (m.widths, m.heatmap_stride) != (first.widths, first.heatmap_stride):
            raise ValueError("cannot average models of different architectures: "
                             f"{(first.widths, first.heatmap_stride)} vs {(m.widths, m.heatmap_stride)}")
    states = [m.state_dict() for m in models]
    mean = {k: (torch.stack([s[k].float() for s in states]).mean(0).to(v.dtype) if v.is_floating_point() else v)
            for k, v in states[0].items()}
    out = VertebraeNet(widths=first.widths, heatmap_stride=first.heatmap_stride)
    out.load_state_dict(mean)
    return out


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.export", description=__doc__.split("\n\n")[0])
    p.add_argument("source", nargs="+",
                   help="a training checkpoint (RUN_DIR/last.pt) or exported weights (RUN_DIR/best.pt); "
                        "several: export their mean")
    p.add_argument("--to", default=os.path.join(DEFAULT_MODEL_DIRS[0], DEFAULT_MODEL_NAME))
    p.add_argument("--description", default="")
    args = p.parse_args(argv)
    read = [read_source(path) for path in args.source]
    if len(read) == 1:
        model, training_info = read[0]
        default_description = (f"trained on {training_info.get('data', '?')}, "
                               f"step {training_info.get('step', '?')}")
    else:
        model = average_models([m for m, _ in read])
        steps = [info.get("step") for _, info in read]
        known = [s for s in steps if s is not None]
        training_info = {"step": max(known) if known else None, "data": read[-1][1].get("data"),
                         "averaged_steps": steps}
        default_description = f"mean of the weights at steps {', '.join(str(s) for s in steps)}"
    manifest = save_weights(model, args.to, trained=True, description=args.description or default_description,
                            training=training_info)
    print(f"wrote {args.to} (sha256 {manifest['sha256'][:16]}…) and its manifest")
    return 0


if __name__ == "__main__":
    sys.exit(main())
