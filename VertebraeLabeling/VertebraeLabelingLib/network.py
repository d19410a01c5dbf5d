"""The residual hourglass network of Qin et al. with integral regression and a Bi-LSTM classifier.

Input: a normalised block ``(B, 1, D, H, W)`` on the canonical grid (D = cranio-caudal, 104 in
the paper; H = antero-posterior, W = right-left, 80 each). Output: for each of the 26
vertebrae a presence logit and a centroid in block voxel coordinates (k, j, i).

Channel widths (why these): the paper does not give them. The full-resolution stage dominates
the cost on a CPU (104×80×80 = 0.67 M voxels), so it is kept at 8 channels and the width doubles
at each pooling (8, 16, 32, 64). That keeps a block under ~2.5 GMAC, i.e. a fraction of a second
on a 2-core laptop, while the 13×10×10 bottleneck with 64 channels still sees the whole block
(208×160×160 mm) for identification. ``widths`` is a constructor argument and is saved with the
weights, so a wider model for a GPU is one flag away.

Heatmap resolution (why 4 mm by default): the paper's decoder goes back to the full 2 mm grid. On a
CPU the last decoder stage, its upsampling and the 3×3×3 head convolution at 104×80×80 were two thirds
of a training step and of a block's inference time. ``heatmap_stride=2`` stops the decoder one level
earlier (52×40×40 heatmaps of 4 mm voxels). Integral regression is a continuous expectation, not an
argmax, so it still resolves positions far finer than a heatmap voxel; measured: a training step
4.3 s → 1.4 s and inference 0.52 s → 0.17 s per block (2 cores). ``heatmap_stride=1`` is the paper's
layout and is what weights without the field in their manifest use.
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .vertebrae import NUM_VERTEBRAE

BLOCK_SHAPE: tuple[int, int, int] = (104, 80, 80)
GROUPS: int = 4


def _gn(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(GROUPS, channels), channels)


_ONEDNN_OK = [True]  # switched off for the process if this PyTorch build cannot run oneDNN convolutions


def _compiling() -> bool:
    """True while ``torch.compile`` traces the model (it cannot trace ``torch.mkldnn_convolution``)."""
    is_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", None)
    return bool(is_compiling is not None and is_compiling())


def _cpu_inference(x: torch.Tensor) -> bool:
    return (not torch.is_grad_enabled() and x.device.type == "cpu" and x.dtype == torch.float32
            and _ONEDNN_OK[0] and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
            and not _compiling())


class Conv3d(nn.Conv3d):
    """``nn.Conv3d`` that, for CPU inference, always runs the oneDNN (mkldnn) kernel.

    PyTorch chooses the CPU convolution backend with a heuristic made for 2-D images: a batch of one
    block whose N·C·D·H is small (the 1-channel stem, the 52×40×40 and coarser levels) goes to the
    generic im2col path (``slow_conv3d``), which took a third of a block's time. Training, autograd
    and GPUs keep the stock path; parameters and state dict are those of ``nn.Conv3d``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding_mode == "zeros" and not isinstance(self.padding, str) and _cpu_inference(x):
            try:
                return torch.mkldnn_convolution(x, self.weight, self.bias, self.padding, self.stride,
                                                self.dilation, self.groups)
            except RuntimeError:  # a build without oneDNN support for this case: use the stock path from now on
                _ONEDNN_OK[0] = False
        return super().forward(x)


def _pointwise_channels_first(conv: nn.Conv3d, y: torch.Tensor) -> torch.Tensor:
    """A 1×1×1 convolution of a channels-last ``y`` as one matrix product per item, giving a channels-first result.

    The spatial softmax of the heatmaps needs them channels-first; a channels-last convolution output
    would have to be copied whole (26 × 104×80×80 floats) first, which cost more than the convolution.
    """
    b, c, d, h, w = y.shape
    flat = y.permute(0, 2, 3, 4, 1).reshape(b, d * h * w, c)  # a view: y is channels-last
    weight = conv.weight.reshape(conv.out_channels, c)
    bias = conv.bias if conv.bias is not None else weight.new_zeros(conv.out_channels)
    out = torch.stack([torch.addmm(bias[:, None], weight, flat[n].t()) for n in range(b)])
    return out.reshape(b, conv.out_channels, d, h, w)


class ConvGNReLU(nn.Sequential):
    """Convolution followed by GroupNorm(4) and ReLU, the paper's unit after every convolution."""

    def __init__(self, cin: int, cout: int, kernel: Sequence[int] = (3, 3, 3)) -> None:
        padding = tuple(k // 2 for k in kernel)
        super().__init__(Conv3d(cin, cout, tuple(kernel), padding=padding, bias=False), _gn(cout), nn.ReLU(inplace=True))


class ResidualModule(nn.Module):
    """1×1×1 → 3×3×3 → 1×1×1 convolutions, each with GroupNorm + ReLU, plus a skip (Fig. 4).

    The bottleneck halves the channels (the paper's reason for the 1×1×1 convolutions: fewer
    parameters). When the channel count changes, the skip is a 1×1×1 projection.
    """

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        mid = max(cout // 2, GROUPS)
        self.body = nn.Sequential(
            ConvGNReLU(cin, mid, (1, 1, 1)),
            ConvGNReLU(mid, mid, (3, 3, 3)),
            ConvGNReLU(mid, cout, (1, 1, 1)),
        )
        self.skip = nn.Identity() if cin == cout else Conv3d(cin, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.skip(x)


def integral_regression(heatmaps: torch.Tensor) -> torch.Tensor:
    """Soft-argmax: spatial softmax of each heatmap, then the expected voxel position.

    Args:
        heatmaps: ``(B, N, D, H, W)`` unnormalised scores.
    Returns:
        ``(B, N, 3)`` expected positions in voxel units, in (d, h, w) order. Differentiable.
    """
    b, n, d, h, w = heatmaps.shape
    prob = torch.softmax(heatmaps.reshape(b, n, -1).float(), dim=-1).reshape(b, n, d, h, w)
    # Marginals first: three small dot products instead of a D×H×W×3 coordinate tensor.
    dev = heatmaps.device
    pd = prob.sum(dim=(3, 4))
    ph = prob.sum(dim=(2, 4))
    pw = prob.sum(dim=(2, 3))
    zd = (pd * torch.arange(d, device=dev, dtype=prob.dtype)).sum(-1)
    zh = (ph * torch.arange(h, device=dev, dtype=prob.dtype)).sum(-1)
    zw = (pw * torch.arange(w, device=dev, dtype=prob.dtype)).sum(-1)
    return torch.stack([zd, zh, zw], dim=-1)


class ClassificationBranch(nn.Module):
    """Two convolutions (32 kernels, 5×3×3 then 1×1×1), max-pool, 3 Bi-LSTM(128), FC → 26 logits.

    The max-pool collapses the in-plane axes, so the Bi-LSTM runs along the cranio-caudal axis:
    each step is one bottleneck slice, which is where "long context along the spine" lives.

    Two additions to the paper, because its branch collapsed in training (measured: after 1000 steps
    the LSTM's output varied by 0.0006 between different blocks, i.e. a constant prediction of the
    label frequencies, while localisation was already learning): a LayerNorm on the LSTM's input,
    and a skip that gives the FC the max over slices of that input next to the LSTM's output, so the
    classifier always has a gradient path that does not run through saturated LSTM gates.
    """

    def __init__(self, cin: int, hidden: int = 128, num_outputs: int = NUM_VERTEBRAE) -> None:
        super().__init__()
        self.convs = nn.Sequential(ConvGNReLU(cin, 32, (5, 3, 3)), ConvGNReLU(32, 32, (1, 1, 1)))
        self.norm = nn.LayerNorm(32 * 4)
        self.lstm = nn.LSTM(32 * 4, hidden, num_layers=3, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(2 * hidden + 32 * 4, num_outputs)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.convs(features)
        # Keep a coarse 2×2 in-plane layout (left/right, front/back) rather than one global max.
        x = F.adaptive_max_pool3d(x, (x.shape[2], 2, 2))
        seq = self.norm(x.permute(0, 2, 1, 3, 4).flatten(2).float())  # (B, D, 32*4)
        out, _ = self.lstm(seq)
        return self.fc(torch.cat([out.max(dim=1).values, seq.max(dim=1).values], dim=1))


class VertebraeNet(nn.Module):
    """Residual hourglass with integral-regression localisation and multi-label classification.

    Encoder: 6 residual modules and 3 max-pools, skip branches. Localisation decoder: residual
    modules and upsamplings back to 1/``heatmap_stride`` of the input resolution (3 of each for the
    paper's full resolution, 2 for the default half resolution), 2 convolutions to 26 heatmaps,
    integral regression. Classification: :class:`ClassificationBranch` on the bottleneck.
    """

    def __init__(self, widths: Sequence[int] = (8, 16, 32, 64), num_outputs: int = NUM_VERTEBRAE,
                 heatmap_stride: int = 2) -> None:
        super().__init__()
        if heatmap_stride not in (1, 2):
            raise ValueError(f"heatmap_stride must be 1 (2 mm heatmaps) or 2 (4 mm), not {heatmap_stride}")
        w0, w1, w2, w3 = widths
        self.widths = tuple(int(w) for w in widths)
        self.heatmap_stride = int(heatmap_stride)
        self.stem = ConvGNReLU(1, w0)
        self.enc0 = ResidualModule(w0, w0)
        self.enc1 = ResidualModule(w0, w1)
        self.enc2 = ResidualModule(w1, w2)
        self.enc3 = nn.Sequential(ResidualModule(w2, w3), ResidualModule(w3, w3), ResidualModule(w3, w3))
        self.skip1 = ConvGNReLU(w1, w1, (1, 1, 1))
        self.skip2 = ConvGNReLU(w2, w2, (1, 1, 1))
        self.skip3 = ConvGNReLU(w3, w3, (1, 1, 1))
        self.dec2 = ResidualModule(w3, w2)
        self.dec1 = ResidualModule(w2, w1)
        if heatmap_stride == 1:
            self.skip0 = ConvGNReLU(w0, w0, (1, 1, 1))
            self.dec0 = ResidualModule(w1, w0)
            self.head = nn.Sequential(ConvGNReLU(w0, w0), Conv3d(w0, num_outputs, 1))
        else:
            self.head = nn.Sequential(ConvGNReLU(w1, w1), Conv3d(w1, num_outputs, 1))
        self.classifier = ClassificationBranch(w3, num_outputs=num_outputs)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return ``logits`` (B, 26), ``coords`` (B, 26, 3) in block voxels (d, h, w), ``heatmaps``.

        ``heatmaps`` are on the grid of the decoder's last level (``heatmap_stride`` block voxels each);
        ``coords`` are always in block voxels.
        """
        f0 = self.enc0(self.stem(x))
        f1 = self.enc1(F.max_pool3d(f0, 2))
        f2 = self.enc2(F.max_pool3d(f1, 2))
        f3 = self.enc3(F.max_pool3d(f2, 2))
        y = self.dec2(f3 + self.skip3(f3))
        y = F.interpolate(y, size=f2.shape[2:], mode="trilinear", align_corners=False) + self.skip2(f2)
        y = self.dec1(y)
        y = F.interpolate(y, size=f1.shape[2:], mode="trilinear", align_corners=False) + self.skip1(f1)
        if self.heatmap_stride == 1:
            y = self.dec0(y)
            y = F.interpolate(y, size=f0.shape[2:], mode="trilinear", align_corners=False) + self.skip0(f0)
        y = self.head[0](y)
        if _cpu_inference(y) and not y.is_contiguous() and y.is_contiguous(memory_format=torch.channels_last_3d):
            heatmaps = _pointwise_channels_first(self.head[1], y)
        else:
            heatmaps = self.head[1](y)
        coords = integral_regression(heatmaps)
        if self.heatmap_stride != 1:
            # Heatmap voxel v pools block voxels s·v … s·v + s - 1, so its centre is s·v + (s - 1) / 2.
            coords = coords * self.heatmap_stride + (self.heatmap_stride - 1) / 2.0
        return {"logits": self.classifier(f3), "coords": coords, "heatmaps": heatmaps}
