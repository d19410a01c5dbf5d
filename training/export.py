"""Export trained weights as the bundled default model (state dict + manifest with SHA-256).

    python -m training.export runs/default/best.pt            # → Resources/Models/vertebrae_net.pt
    python -m training.export runs/default/last.pt            # the run's moving average of the weights
    python -m training.export runs/default/last.pt --to my_model.pt --description "VerSe20 fine-tune"
    python -m training.export snaps/step_5000.pt snaps/step_5250.pt snaps/step_5500.pt   # their mean
    python -m training.export base.pt fine_tuned.pt --weights 0.25 0.75   # a weighted mean of two models

Given several sources, the exported weights are their element-wise mean (stochastic weight averaging,
Izmailov et al. 2018): with batch 2 the weights at any one step wander around a good region, and their
mean sits nearer its centre. The network has GroupNorm, not BatchNorm, so no statistics need recomputing.
``--weights`` gives a weighted mean instead: between a model and its own fine-tune, a point on the line
joining them (Wortsman et al. 2022, "robust fine-tuning"), which can keep some of each one's strengths.
"""

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Optional

import torch

from VertebraeLabeling.VertebraeLabelingLib.checksums import sha256_of
from VertebraeLabeling.VertebraeLabelingLib.model_io import (
    DEFAULT_MODEL_DIRS,
    DEFAULT_MODEL_NAME,
    save_weights,
)
from VertebraeLabeling.VertebraeLabelingLib.network import VertebraeNet

from .weights import read_weights


def read_source(path: str, prefer_ema: bool = True) -> tuple[VertebraeNet, dict[str, object]]:
    """(model, training info) of exported weights (checksum verified) or a training checkpoint (its
    moving average of the weights where it keeps one, unless ``prefer_ema`` is false)."""
    state, (widths, heatmap_stride), info = read_weights(path, prefer_ema)
    model = VertebraeNet(widths=widths, heatmap_stride=heatmap_stride)
    model.load_state_dict(state)
    return model, info


def average_models(models: Sequence[VertebraeNet],
                   weights: Optional[Sequence[float]] = None) -> VertebraeNet:
    """The element-wise (weighted) mean of models of one architecture (a new model; the inputs are untouched).

    ``weights`` default to equal; they are normalised to sum to one.
    """
    first = models[0]
    if weights is None:
        weights = [1.0] * len(models)
    if len(weights) != len(models) or any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"need one non-negative weight per model ({len(models)}), not {list(weights)}")
    w = torch.tensor([float(x) / float(sum(weights)) for x in weights])
    for m in models[1:]:
        if (m.widths, m.heatmap_stride) != (first.widths, first.heatmap_stride):
            raise ValueError("cannot average models of different architectures: "
                             f"{(first.widths, first.heatmap_stride)} vs {(m.widths, m.heatmap_stride)}")
    states = [m.state_dict() for m in models]
    mean = {k: ((torch.stack([s[k].float() for s in states]) * w.view(-1, *[1] * v.dim())).sum(0).to(v.dtype)
                if v.is_floating_point() else v)
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
    p.add_argument("--weights", type=float, nargs="+", default=None,
                   help="with several sources: their weights in the mean (default: equal)")
    p.add_argument("--description", default="")
    p.add_argument("--raw", action="store_true",
                   help="from a training checkpoint, take the weights of its last step, not their moving average")
    args = p.parse_args(argv)
    if args.weights is not None and len(args.weights) != len(args.source):
        p.error(f"--weights needs one weight per source ({len(args.source)}), got {len(args.weights)}")
    read = [read_source(path, prefer_ema=not args.raw) for path in args.source]
    if len(read) == 1:
        model, training_info = read[0]
        default_description = (f"trained on {training_info.get('data', '?')}, "
                               f"step {training_info.get('step', '?')}")
    else:
        model = average_models([m for m, _ in read], args.weights)
        steps = [info.get("step") for _, info in read]
        known = [s for s in steps if s is not None]
        training_info = {"step": max(known) if known else None, "data": read[-1][1].get("data"),
                         "averaged_steps": steps}
        default_description = f"mean of the weights at steps {', '.join(str(s) for s in steps)}"
        if args.weights is not None:
            training_info["averaged_sources"] = [
                {"path": os.path.basename(path), "weight": weight, "sha256": sha256_of(path)}
                for path, weight in zip(args.source, args.weights)]
            default_description = "weighted mean of " + ", ".join(
                f"{os.path.basename(path)} × {weight:g}" for path, weight in zip(args.source, args.weights))
    manifest = save_weights(model, args.to, trained=True, description=args.description or default_description,
                            training=training_info)
    print(f"wrote {args.to} (sha256 {manifest['sha256'][:16]}…) and its manifest")
    return 0


if __name__ == "__main__":
    sys.exit(main())
