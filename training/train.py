"""Train the VertebraeLabeling network (Qin et al.'s recipe).

    python -m training.train --data synthetic --run-dir runs/default --steps 20000
    python -m training.train --data verse:/data/verse20 --val-data verse:/data/verse20_val --device cuda
    torchrun --nproc_per_node 4 -m training.train --data verse:/data/verse20 --device cuda   # DDP

Adam (lr 0.01, weight decay 1e-4), ReduceLROnPlateau(factor 0.4, min 1e-6) on the validation
loss, batch 2, GroupNorm(4) inside the network, AMP on GPU. Everything needed to resume is in
``RUN_DIR/last.pt``; the log is ``RUN_DIR/log.csv`` and ``RUN_DIR/loss.png``.
"""

import argparse
import csv
import math
import os
import sys
import time
from typing import Dict, Iterator, List, Optional

import numpy as np
import torch
import torch.distributed as dist
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from VertebraeLabeling.VertebraeLabelingLib.model_io import save_weights
from VertebraeLabeling.VertebraeLabelingLib.network import BLOCK_SHAPE, VertebraeNet

from .crops import make_crop
from .loss import vertebrae_loss
from .prepared import PreparedCase
from .sources import Specs, mix_label, mixed_cases, validation_cases
from .weights import checkpoint_architecture, read_weights


class CropStream(IterableDataset):
    """Endless random crops from a pool of cases that is slowly refreshed.

    Generating or loading a case costs far more than cropping it, so each case yields several
    crops (``pool_size`` cases in memory, one replaced every ``refresh_every`` crops).
    """

    def __init__(self, spec: Specs, seed: int, rank: int, world: int, crop_shape=BLOCK_SHAPE,
                 pool_size: int = 8, refresh_every: int = 4) -> None:
        self.spec, self.seed, self.rank, self.world = spec, seed, rank, world
        self.crop_shape = tuple(crop_shape)
        self.pool_size, self.refresh_every = pool_size, refresh_every

    def __iter__(self) -> Iterator:
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        stream_id = self.rank * nw + wid
        source = mixed_cases(self.spec, self.seed, stream_id, self.world * nw)
        rng = np.random.default_rng([self.seed, stream_id, 12345])
        pool: List[PreparedCase] = []
        n = 0
        while True:
            if len(pool) < self.pool_size:
                pool.append(next(source))
            elif n % self.refresh_every == 0:
                pool[int(rng.integers(len(pool)))] = next(source)
            case = pool[int(rng.integers(len(pool)))]
            crop, presence, coords, known = make_crop(case, rng, self.crop_shape, augment=True)
            n += 1
            yield torch.from_numpy(crop), torch.from_numpy(presence), torch.from_numpy(coords), torch.from_numpy(known)


def fixed_validation_set(spec: Specs, cases: int, crops_per_case: int, crop_shape, seed: int = 4242):
    """Deterministic validation crops (no augmentation), built once."""
    rng = np.random.default_rng(seed)
    items = []
    for case in validation_cases(spec, cases):
        for _ in range(crops_per_case):
            crop, presence, coords, known = make_crop(case, rng, crop_shape, augment=False)
            items.append(tuple(torch.from_numpy(a) for a in (crop, presence, coords, known)))
    return items


def evaluate_loss(model, items, device, balance: float, heatmap_weight: float = 0.0) -> Dict[str, float]:
    """Mean validation loss; ``total`` includes the heatmap term with the weight training uses."""
    model.eval()
    totals = {"total": 0.0, "cls": 0.0, "reg": 0.0, "heat": 0.0}
    with torch.no_grad():
        for crop, presence, coords, known in items:
            out = model(crop[None].to(device))
            loss = vertebrae_loss(out, presence[None].to(device), coords[None].to(device), balance,
                                  heatmap_weight=heatmap_weight, heatmap_stride=model.heatmap_stride,
                                  known=known[None].to(device))
            for k in totals:
                totals[k] += float(loss[k]) / len(items)
    model.train()
    return totals


def plot_log(log_path: str, png_path: str) -> None:
    """Loss curves from the CSV log (skipped quietly without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    rows = list(csv.DictReader(open(log_path)))
    if not rows:
        return
    step = [int(r["step"]) for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, style in (("loss", "-"), ("cls", ":"), ("reg", "--"), ("heat", "-.")):
        if key in rows[0]:
            ax.plot(step, [float(r[key]) for r in rows], style, label=f"train {key}", alpha=0.8)
    val = [(int(r["step"]), float(r["val_loss"])) for r in rows if r.get("val_loss")]
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path)
    plt.close(fig)


def init_from(model: VertebraeNet, path: str) -> List[str]:
    """Copy into ``model`` every tensor of ``path`` whose name and shape match; return the modules left as they were.

    ``path`` is exported weights (checksum verified against their manifest) or a training checkpoint
    (``RUN_DIR/last.pt``, its moving average where it keeps one). Partial loading is what lets a run start
    from a model whose architecture differs in one branch (the rest keeps what it learnt).
    """
    state, _, _ = read_weights(path)
    own = model.state_dict()
    matching = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(matching, strict=False)
    return sorted({k.rsplit(".", 1)[0] for k in own if k not in matching})


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", nargs="+", default=["synthetic"],
                   help="synthetic | verse:DIR | csi:DIR | labelmap:DIR | painted:DIR "
                        "(label maps painted with random intensities); several specs are mixed, "
                        "one case from each in turn (repeat a spec to give it a larger share)")
    p.add_argument("--val-data", nargs="+",
                   help="validation data spec(s) (default: those of --data, held-out seeds)")
    p.add_argument("--run-dir", dest="run", default="runs/default", help="output folder (checkpoints, log)")
    p.add_argument("--steps", type=int, default=20000)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--balance", type=float, default=3.0, help="B of the balanced BCE (paper: 2..4)")
    p.add_argument("--widths", default="8,16,32,64")
    p.add_argument("--heatmap-stride", type=int, default=2, choices=(1, 2),
                   help="heatmap voxel = this many input voxels (1: the paper's full resolution)")
    p.add_argument("--heatmap-weight", type=float, default=1.0,
                   help="weight of the Gaussian heatmap term added to the paper's loss (0: the paper's loss)")
    p.add_argument("--crop", default="104,80,80", help="crop shape D,H,W (multiples of 8)")
    p.add_argument("--workers", type=int, default=1, help="data-loading processes per rank")
    p.add_argument("--pool-size", type=int, default=8)
    p.add_argument("--refresh-every", type=int, default=4)
    p.add_argument("--val-every", type=int, default=200)
    p.add_argument("--val-cases", type=int, default=4)
    p.add_argument("--save-every", type=int, default=200)
    p.add_argument("--snapshot-every", type=int, default=0,
                   help="also keep the raw weights every this many steps as RUN_DIR/snapshots/step_N.pt "
                        "(for `training.export --raw` weight averaging; 0: none)")
    p.add_argument("--max-minutes", type=float, default=0.0,
                   help="stop cleanly (last.pt saved) after this much wall-clock time, e.g. a batch job's "
                        "limit; 0: no limit")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/last.pt if it exists")
    p.add_argument("--set-lr", type=float, help="with --resume: continue at this learning rate (a manual step "
                                                  "down when a run cannot wait for the plateau scheduler)")
    p.add_argument("--init", help="start from these weights (exported .pt with manifest, or a RUN_DIR/last.pt); "
                                  "tensors whose name and shape match are copied, the rest keep their random init")
    p.add_argument("--ema-decay", type=float, default=0.999,
                   help="keep an exponential moving average of the weights with this decay (0: none); "
                        "validation, best.pt and export use the average")
    p.add_argument("--patience", type=int, default=5, help="validations without improvement before LR × 0.4")
    return p.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if args.device == "auto":
        device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
        if device.type == "cuda" and device.index is None:  # plain "cuda": this rank's own GPU
            device = torch.device("cuda", local_rank)
    if world > 1:
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True  # one crop shape all run long: let cuDNN pick its fastest kernels
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed + rank)
    is_main = rank == 0
    crop_shape = tuple(int(v) for v in args.crop.split(","))
    widths = tuple(int(v) for v in args.widths.split(","))
    os.makedirs(args.run, exist_ok=True)

    ckpt_path = os.path.join(args.run, "last.pt")
    ckpt = None
    if args.resume and os.path.exists(ckpt_path):
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=True)
        # A resumed run keeps the architecture it was started with, whatever today's defaults are.
        widths, args.heatmap_stride = checkpoint_architecture(ckpt.get("config", {}), args.widths)
    model = VertebraeNet(widths=widths, heatmap_stride=args.heatmap_stride).to(device)
    if args.init and ckpt is None:
        reinitialised = init_from(model, args.init)
        if is_main:
            print(f"initialised from {args.init}; kept at random init: {', '.join(reinitialised) or 'nothing'}",
                  flush=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.4, patience=args.patience,
                                                           min_lr=1e-6)
    step, best_val = 0, math.inf
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        step, best_val = int(ckpt["step"]), float(ckpt["best_val"])
        if args.set_lr:
            for group in optimizer.param_groups:
                group["lr"] = args.set_lr
        if is_main:
            print(f"resumed from {ckpt_path} at step {step}", flush=True)
    # With batch 2 the weights at any one step wander around a good region; their moving average sits
    # nearer its centre (on cpu_v3 the mean of snapshots beat every single checkpoint by 1-3 points).
    # GroupNorm, not BatchNorm, so the average needs no statistics recomputed.
    ema = None
    if args.ema_decay > 0:
        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(args.ema_decay))  # a copy of the weights now
        if ckpt is not None and "ema" in ckpt:
            ema.module.load_state_dict(ckpt["ema"])
            ema.n_averaged.fill_(int(ckpt.get("ema_updates", 1)))
        elif ckpt is not None:
            # A run that had no average starts one from its resumed weights; their validation loss is not
            # the average's, so the best so far is forgotten.
            ema.n_averaged.fill_(1)
            best_val = math.inf
    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    use_amp = device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

    # Each resume gets fresh crops (seed offset by the step) instead of replaying the same ones.
    stream = CropStream(args.data, args.seed + step, rank, world, crop_shape, args.pool_size, args.refresh_every)
    loader = DataLoader(stream, batch_size=args.batch_size, num_workers=args.workers,
                        persistent_workers=args.workers > 0, pin_memory=device.type == "cuda")
    val_items = []
    if is_main:
        val_spec = args.val_data or args.data
        val_items = fixed_validation_set(val_spec, args.val_cases, 4, crop_shape)
    log_path = os.path.join(args.run, "log.csv")
    new_log = not os.path.exists(log_path) or step == 0
    log_file = open(log_path, "w" if new_log else "a", newline="") if is_main else None
    writer = csv.writer(log_file) if log_file else None
    if writer and new_log:
        writer.writerow(["step", "lr", "loss", "cls", "reg", "heat", "val_loss", "seconds"])
    config = {k: v for k, v in vars(args).items()}
    shipped = ema.module if ema is not None else model  # the weights that are validated and exported
    t_start = time.time()
    running = {"loss": 0.0, "cls": 0.0, "reg": 0.0, "heat": 0.0}
    n_running = 0
    net.train()
    for crop, presence, coords, known in loader:
        if step >= args.steps:
            break
        crop, presence, coords, known = crop.to(device), presence.to(device), coords.to(device), known.to(device)
        with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=use_amp):
            out = net(crop)
        loss = vertebrae_loss(out, presence, coords, args.balance, heatmap_weight=args.heatmap_weight,
                              heatmap_stride=model.heatmap_stride, known=known)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss["total"]).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        scaler.step(optimizer)
        scaler.update()
        if ema is not None:
            ema.update_parameters(model)
        step += 1
        running["loss"] += float(loss["total"].detach())
        running["cls"] += float(loss["cls"])
        running["reg"] += float(loss["reg"])
        running["heat"] += float(loss["heat"])
        n_running += 1
        if is_main and (step % 10 == 0 or step == args.steps):
            elapsed = time.time() - t_start
            print(f"step {step}/{args.steps}  loss {running['loss'] / n_running:.3f} "
                  f"(cls {running['cls'] / n_running:.3f}, reg {running['reg'] / n_running:.3f}, "
                  f"heat {running['heat'] / n_running:.3f})  "
                  f"lr {optimizer.param_groups[0]['lr']:.2e}  {elapsed:.0f}s", flush=True)
        val_loss = None
        if step % args.val_every == 0 or step == args.steps:
            if is_main and val_items:
                val = evaluate_loss(shipped, val_items, device, args.balance, args.heatmap_weight)
                val_loss = val["total"]
                print(f"validation at step {step}: " + ", ".join(f"{k} {v:.3f}" for k, v in val.items()), flush=True)
            if world > 1:
                t = torch.tensor([val_loss or 0.0], device=device)
                dist.broadcast(t, 0)
                val_loss = float(t)
            if val_loss is not None:
                scheduler.step(val_loss)
        if is_main and (step % 10 == 0 or val_loss is not None):
            writer.writerow([step, optimizer.param_groups[0]["lr"], running["loss"] / max(n_running, 1),
                             running["cls"] / max(n_running, 1), running["reg"] / max(n_running, 1),
                             running["heat"] / max(n_running, 1),
                             "" if val_loss is None else f"{val_loss:.5f}", f"{time.time() - t_start:.1f}"])
            log_file.flush()
            running = {"loss": 0.0, "cls": 0.0, "reg": 0.0, "heat": 0.0}
            n_running = 0
        if is_main and val_loss is not None and val_loss < best_val:
            best_val = val_loss
            save_weights(shipped, os.path.join(args.run, "best.pt"), trained=True,
                         description=f"best validation loss {val_loss:.4f} at step {step}",
                         training={"step": step, "val_loss": val_loss, "data": mix_label(args.data)})
        out_of_time = bool(args.max_minutes) and time.time() - t_start > 60.0 * args.max_minutes
        if world > 1 and args.max_minutes:
            # every rank must stop at the same step, or the others would wait forever in the next all-reduce
            flag = torch.tensor([float(out_of_time)], device=device)
            dist.broadcast(flag, 0)
            out_of_time = bool(flag)
        if is_main and args.snapshot_every and step % args.snapshot_every == 0:
            os.makedirs(os.path.join(args.run, "snapshots"), exist_ok=True)
            torch.save({"model": model.state_dict(), "step": step, "best_val": best_val, "config": config},
                       os.path.join(args.run, "snapshots", f"step_{step}.pt"))
        if is_main and (step % args.save_every == 0 or step == args.steps or out_of_time):
            tmp = ckpt_path + ".tmp"
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "step": step, "best_val": best_val, "config": config}
            if ema is not None:
                state.update(ema=ema.module.state_dict(), ema_updates=int(ema.n_averaged))
            torch.save(state, tmp)
            os.replace(tmp, ckpt_path)
            plot_log(log_path, os.path.join(args.run, "loss.png"))
        if out_of_time:
            if is_main:
                print(f"stopping at step {step}: --max-minutes {args.max_minutes:g} reached", flush=True)
            break
    if is_main:
        if log_file:
            log_file.close()
        plot_log(log_path, os.path.join(args.run, "loss.png"))
        print(f"done: {step} steps, best validation loss {best_val:.4f}; weights in {args.run}/best.pt", flush=True)
    if world > 1:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
