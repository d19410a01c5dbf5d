"""On a CPU the network looks at two blocks (or a block and its mirror) at a time, each on half the threads."""

import numpy as np
import pytest
import torch

from VertebraeLabeling.VertebraeLabelingLib import blocks, preprocessing
from VertebraeLabeling.VertebraeLabelingLib.errors import CancelledError
from VertebraeLabeling.VertebraeLabelingLib.image_io import read_image
from VertebraeLabeling.VertebraeLabelingLib.inference import predict_blocks
from VertebraeLabeling.VertebraeLabelingLib.model_io import load_model


@pytest.fixture(scope="module")
def sample_blocks(sample_ct_path):
    model, _ = load_model()
    volume = preprocessing.to_canonical(read_image(sample_ct_path))
    normalized = preprocessing.zscore(volume.hu)
    plan = blocks.plan_blocks(volume.shape, blocks.find_spine_track(volume.hu, volume.spacing))
    return model, normalized, plan


def _predict(sample_blocks, threads, **kwargs):
    model, normalized, plan = sample_blocks
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return predict_blocks(model, normalized, plan, torch.device("cpu"), float(normalized.min()), **kwargs)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("mirror", [True, False])
def test_two_looks_at_a_time_are_the_looks_of_a_one_thread_run_in_the_same_order(sample_blocks, mirror):
    together = _predict(sample_blocks, 2, mirror=mirror)
    one_by_one = _predict(sample_blocks, 1, mirror=mirror)  # one thread: no second worker either
    plan = sample_blocks[2]
    assert len(together) == len(one_by_one) == len(plan) * (2 if mirror else 1)
    for a, b in zip(together, one_by_one):
        assert a.block == b.block
        np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-6)
        np.testing.assert_allclose(a.positions, b.positions, atol=1e-4)
    if mirror:  # plain look first, its mirror right after
        assert [p.block for p in together[::2]] == plan and [p.block for p in together[1::2]] == plan


def test_the_thread_count_comes_back_after_the_network_even_when_cancelled(sample_blocks):
    torch_threads = torch.get_num_threads()
    if torch_threads < 2:
        pytest.skip("needs 2 PyTorch threads")
    asked = []

    def cancel_on_second_call():
        asked.append(torch.get_num_threads())
        return len(asked) > 1

    model, normalized, plan = sample_blocks
    with pytest.raises(CancelledError):
        predict_blocks(model, normalized, plan, torch.device("cpu"), float(normalized.min()), mirror=True,
                       cancel=cancel_on_second_call)
    assert asked[0] == max(1, torch_threads // 2)  # while the two workers run
    assert torch.get_num_threads() == torch_threads
