"""The paper's loss: balanced BCE on presence + λ·SmoothL1 on the coordinates of present vertebrae."""

from typing import Dict

import torch
import torch.nn.functional as F


def vertebrae_loss(
    outputs: Dict[str, torch.Tensor],
    presence: torch.Tensor,
    coords: torch.Tensor,
    balance: float = 3.0,
    lam: float = 0.4,
) -> Dict[str, torch.Tensor]:
    """Loss of Qin et al. (Eq. 1-4).

    Args:
        outputs: the network's ``logits`` (B, 26) and ``coords`` (B, 26, 3).
        presence: (B, 26) 1 where the vertebra's centroid is in the crop.
        coords: (B, 26, 3) target crop-voxel coordinates (ignored where absent).
        balance: B of Eq. 1 (2..4): weight of the rarer positive labels.
        lam: λ of Eq. 2.
    Returns:
        ``total``, ``cls`` and ``reg`` (per-sample means, so the loss does not scale with batch size).
    """
    logits = outputs["logits"].float()
    weight = torch.where(presence > 0, torch.full_like(presence, balance), torch.ones_like(presence))
    cls = F.binary_cross_entropy_with_logits(logits, presence, weight=weight, reduction="sum") / logits.shape[0]
    diff = F.smooth_l1_loss(outputs["coords"].float(), coords, reduction="none", beta=1.0).sum(-1)
    reg = lam * (diff * presence).sum() / logits.shape[0]
    return {"total": cls + reg, "cls": cls.detach(), "reg": reg.detach()}
