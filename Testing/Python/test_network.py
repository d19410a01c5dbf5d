"""The network: shapes, integral regression and its gradients."""

import pytest
import torch

from VertebraeLabeling.VertebraeLabelingLib.network import VertebraeNet, integral_regression


def test_integral_regression_finds_a_sharp_peak_with_subvoxel_precision():
    heat = torch.full((1, 2, 12, 10, 8), -50.0)
    heat[0, 0, 3, 4, 5] = 50.0
    # Two equal peaks side by side: the expected position is between them.
    heat[0, 1, 6, 2, 1] = 50.0
    heat[0, 1, 6, 2, 2] = 50.0
    coords = integral_regression(heat)
    assert torch.allclose(coords[0, 0], torch.tensor([3.0, 4.0, 5.0]), atol=1e-4)
    assert torch.allclose(coords[0, 1], torch.tensor([6.0, 2.0, 1.5]), atol=1e-4)


def test_integral_regression_gradient_moves_the_estimate_towards_the_target():
    heat = torch.zeros((1, 1, 8, 8, 8), requires_grad=True)
    target = torch.tensor([[[6.0, 1.0, 2.0]]])
    coords = integral_regression(heat)
    loss = torch.nn.functional.smooth_l1_loss(coords, target)
    loss.backward()
    assert heat.grad is not None and torch.isfinite(heat.grad).all() and heat.grad.abs().sum() > 0
    with torch.no_grad():
        moved = integral_regression(heat - 10.0 * heat.grad)
    assert torch.norm(moved - target) < torch.norm(coords.detach() - target)


@pytest.mark.parametrize("stride", [1, 2])
def test_network_outputs_and_end_to_end_gradients(stride):
    torch.manual_seed(0)
    net = VertebraeNet(widths=(4, 8, 8, 16), heatmap_stride=stride)
    x = torch.randn(2, 1, 32, 24, 16)
    out = net(x)
    assert out["logits"].shape == (2, 26)
    assert out["coords"].shape == (2, 26, 3)
    assert out["heatmaps"].shape == (2, 26, 32 // stride, 24 // stride, 16 // stride)
    c = out["coords"]
    assert (c >= 0).all() and (c[..., 0] <= 31).all() and (c[..., 1] <= 23).all() and (c[..., 2] <= 15).all()
    (out["coords"].sum() + out["logits"].sum()).backward()
    assert net.stem[0].weight.grad.abs().sum() > 0  # the first layer learns from both heads
    assert net.classifier.lstm.weight_ih_l0.grad.abs().sum() > 0


def test_residual_modules_and_groupnorm_as_in_the_paper():
    net = VertebraeNet()
    norms = [m for m in net.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert norms and all(m.num_groups == 4 for m in norms)
    lstm = net.classifier.lstm
    assert lstm.num_layers == 3 and lstm.bidirectional and lstm.hidden_size == 128


def test_half_resolution_heatmaps_give_block_voxel_coordinates():
    """A 4 mm heatmap peak at voxel v means block voxel 2v + 0.5, the centre of the 2×2×2 it pools."""
    net = VertebraeNet(widths=(4, 8, 8, 16), heatmap_stride=2).eval()
    peak = torch.full((1, 26, 16, 12, 8), -50.0)
    peak[0, :, 5, 3, 2] = 50.0
    with torch.no_grad():
        net.head[1].weight.zero_()
        net.head[1].bias.zero_()
        # Replace the head's output by the known peak to test only the coordinate mapping.
        hook = net.head[1].register_forward_hook(lambda module, args, output: peak)
        out = net(torch.randn(1, 1, 32, 24, 16))
        hook.remove()
    assert torch.allclose(out["coords"][0, 0], torch.tensor([10.5, 6.5, 4.5]), atol=1e-4)
