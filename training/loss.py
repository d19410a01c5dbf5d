"""The paper's loss (balanced BCE on presence + λ·SmoothL1 on the coordinates of present vertebrae),
plus an optional heatmap term.

Why the heatmap term: integral regression trained only through its expected coordinate learns slowly
from scratch, because a flat softmax has the right mean for a centred target and gets almost no
gradient towards being peaked. A cross-entropy between each present vertebra's softmax heatmap and a
small Gaussian at its true centroid (``heatmap_weight``; 0 gives exactly the paper's loss) shapes the
heatmaps directly. It is reported as a KL divergence, so it tends to 0.
"""

from typing import Dict, Optional

import torch
import torch.nn.functional as F


def _gaussian_1d(centre: torch.Tensor, length: int, sigma: float) -> torch.Tensor:
    """(B, N, length) discretised Gaussians at ``centre`` (B, N), each normalised to sum 1."""
    x = torch.arange(length, device=centre.device, dtype=torch.float32)
    g = torch.exp(-0.5 * ((x - centre[..., None]) / sigma) ** 2)
    return g / g.sum(-1, keepdim=True).clamp_min(1e-12)


def heatmap_kl(heatmaps: torch.Tensor, coords: torch.Tensor, presence: torch.Tensor,
               stride: int, sigma_voxels: float = 2.0) -> torch.Tensor:
    """Sum over present vertebrae of KL(Gaussian target ‖ softmax heatmap), per sample.

    Args:
        heatmaps: (B, N, d, h, w) unnormalised scores on a grid of ``stride`` block voxels.
        coords: (B, N, 3) target positions in block voxels.
        presence: (B, N) 1 for vertebrae whose centroid is in the block.
        stride: block voxels per heatmap voxel.
        sigma_voxels: the target's standard deviation in block voxels.
    """
    b, n, d, h, w = heatmaps.shape
    heat = heatmaps.float()
    centre = (coords - (stride - 1) / 2.0) / stride  # heatmap voxel coordinates
    sigma = sigma_voxels / stride
    gd, gh, gw = (_gaussian_1d(centre[..., a], size, sigma) for a, size in enumerate((d, h, w)))
    # The target is separable, so E_target[score] is three contractions, never a d×h×w target tensor.
    expected = torch.einsum("bndhw,bnd,bnh,bnw->bn", heat, gd, gh, gw)
    lse = torch.logsumexp(heat.reshape(b, n, -1), dim=-1)
    entropy = sum(-(g * torch.log(g.clamp_min(1e-12))).sum(-1) for g in (gd, gh, gw))
    kl = lse - expected - entropy
    return (kl * presence).sum() / b


def vertebrae_loss(
    outputs: Dict[str, torch.Tensor],
    presence: torch.Tensor,
    coords: torch.Tensor,
    balance: float = 3.0,
    lam: float = 0.4,
    heatmap_weight: float = 0.0,
    heatmap_stride: int = 1,
    known: Optional[torch.Tensor] = None,
) -> Dict[str, torch.Tensor]:
    """Loss of Qin et al. (Eq. 1-4), plus ``heatmap_weight`` × :func:`heatmap_kl`.

    Args:
        outputs: the network's ``logits`` (B, 26), ``coords`` (B, 26, 3) and ``heatmaps``.
        presence: (B, 26) 1 where the vertebra's centroid is in the crop.
        coords: (B, 26, 3) target crop-voxel coordinates (ignored where absent).
        balance: B of Eq. 1 (2..4): weight of the rarer positive labels.
        lam: λ of Eq. 2.
        heatmap_weight: weight of the heatmap term (0: the paper's loss alone).
        heatmap_stride: block voxels per heatmap voxel (the network's ``heatmap_stride``).
        known: (B, 26) 0 where the reference does not say whether the vertebra is there (a partially
            annotated real CT): no presence loss for it. None: every presence label is known.
    Returns:
        ``total``, ``cls``, ``reg`` and ``heat`` (per-sample means, so the loss does not scale with batch size).
    """
    logits = outputs["logits"].float()
    weight = torch.where(presence > 0, torch.full_like(presence, balance), torch.ones_like(presence))
    if known is not None:
        weight = weight * known
    cls = F.binary_cross_entropy_with_logits(logits, presence, weight=weight, reduction="sum") / logits.shape[0]
    diff = F.smooth_l1_loss(outputs["coords"].float(), coords, reduction="none", beta=1.0).sum(-1)
    reg = lam * (diff * presence).sum() / logits.shape[0]
    total = cls + reg
    heat = torch.zeros((), device=logits.device)
    if heatmap_weight > 0 and "heatmaps" in outputs:
        heat = heatmap_kl(outputs["heatmaps"], coords, presence, heatmap_stride)
        total = total + heatmap_weight * heat
    return {"total": total, "cls": cls.detach(), "reg": reg.detach(), "heat": heat.detach()}
