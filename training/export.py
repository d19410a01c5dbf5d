"""Export trained weights as the bundled default model (state dict + manifest with SHA-256).

    python -m training.export runs/default/best.pt            # → Resources/Models/vertebrae_net.pt
    python -m training.export runs/default/last.pt --to my_model.pt --description "VerSe20 fine-tune"
"""

import argparse
import os
import sys
from typing import List, Optional

import torch

from VertebraeLabeling.VertebraeLabelingLib.model_io import DEFAULT_MODEL_DIRS, DEFAULT_MODEL_NAME, load_model, save_weights
from VertebraeLabeling.VertebraeLabelingLib.network import VertebraeNet

from .train import checkpoint_architecture


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.export", description=__doc__.split("\n\n")[0])
    p.add_argument("source", help="a training checkpoint (RUN_DIR/last.pt) or exported weights (RUN_DIR/best.pt)")
    p.add_argument("--to", default=os.path.join(DEFAULT_MODEL_DIRS[0], DEFAULT_MODEL_NAME))
    p.add_argument("--description", default="")
    args = p.parse_args(argv)
    manifest_file = os.path.splitext(args.source)[0] + ".json"
    training_info = {}
    if os.path.exists(manifest_file):
        model, manifest = load_model(args.source)  # verifies the checksum
        training_info = manifest.get("training", {})
    else:
        ckpt = torch.load(args.source, map_location="cpu", weights_only=True)
        widths, heatmap_stride = checkpoint_architecture(ckpt["config"])
        model = VertebraeNet(widths=widths, heatmap_stride=heatmap_stride)
        model.load_state_dict(ckpt["model"])
        training_info = {"step": int(ckpt["step"]), "data": ckpt["config"].get("data"),
                         "best_val": float(ckpt["best_val"])}
    manifest = save_weights(model, args.to, trained=True, description=args.description or
                            f"trained on {training_info.get('data', '?')}, step {training_info.get('step', '?')}",
                            training=training_info)
    print(f"wrote {args.to} (sha256 {manifest['sha256'][:16]}…) and its manifest")
    return 0


if __name__ == "__main__":
    sys.exit(main())
