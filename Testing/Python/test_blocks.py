"""Block placement: the exhaustive tiling covers everything; the spine-following one covers the spine."""

import numpy as np

from VertebraeLabeling.VertebraeLabelingLib.blocks import Block, extract_block, find_spine_track, plan_blocks
from VertebraeLabeling.VertebraeLabelingLib.image_io import read_image
from VertebraeLabeling.VertebraeLabelingLib.preprocessing import to_canonical


def _coverage(shape, blocks):
    cover = np.zeros(shape, dtype=np.int32)
    for b in blocks:
        sl = tuple(slice(max(s, 0), max(s + n, 0)) for s, n in zip(b.start, b.shape))
        cover[sl] += 1
    return cover


def test_exhaustive_tiling_covers_every_voxel():
    for shape in [(50, 40, 30), (104, 80, 80), (250, 190, 170), (105, 81, 161)]:
        cover = _coverage(shape, plan_blocks(shape, None, stride=52, exhaustive=True))
        assert cover.min() >= 1, shape


def test_extract_block_pads_outside_the_volume():
    vol = np.arange(5 * 6 * 7, dtype=np.float32).reshape(5, 6, 7)
    out = extract_block(vol, Block((-2, 1, 3), (4, 4, 6)), fill=-9.0)
    assert out.shape == (4, 4, 6)
    assert (out[:2] == -9).all()
    assert np.array_equal(out[2:, :, :4], vol[0:2, 1:5, 3:7])
    assert (out[2:, :, 4:] == -9).all()


def test_spine_blocks_on_the_sample_ct_contain_every_annotated_vertebra(sample_ct_path, sample_annotation_lps):
    vol = to_canonical(read_image(sample_ct_path))
    track = find_spine_track(vol.hu)
    blocks = plan_blocks(vol.shape, track)
    assert 1 <= len(blocks) <= 5  # far fewer than the exhaustive tiling's
    assert len(blocks) < len(plan_blocks(vol.shape, None, exhaustive=True))
    for name, lps in sample_annotation_lps.items():
        idx = vol.lps_to_index(lps)
        assert any(b.contains(idx, margin=8) for b in blocks), name


def test_no_spine_no_blocks():
    hu = np.full((60, 80, 80), -1000.0, dtype=np.float32)
    hu[:, 20:60, 20:60] = 30.0  # soft tissue only
    assert find_spine_track(hu) is None
    assert plan_blocks(hu.shape, None) == []


def test_blocks_reach_the_top_slice_when_the_track_starts_just_below_it():
    """C1's thin ring often fails the bone test of the first slab; the blocks still start at the top."""
    track = np.full((200, 3), np.nan)
    track[8:194] = (8.0 + np.arange(186))[:, None] * [1, 0, 0] + [0, 60, 60]
    starts = [b.start[0] for b in plan_blocks((200, 120, 120), track)]
    assert min(starts) == 0 and max(starts) + 104 == 200
    # A track that ends far from the volume's ends is not stretched to them.
    track[:50] = np.nan
    assert min(b.start[0] for b in plan_blocks((200, 120, 120), track)) == 42


def test_a_dim_spine_behind_a_dense_sternum_keeps_the_track():
    """Low-dose or osteoporotic bone can score below a dense sternum; the spine is the one at the back."""
    rng = np.random.default_rng(0)
    hu = np.full((64, 100, 100), -1000.0, dtype=np.float32)
    hu[:, 5:95, 10:90] = 40.0  # the body, front at j = 5, back at j = 94
    spine = rng.random((64, 14, 14)) < 0.35  # dim: a third of the body's voxels above the bone threshold
    hu[:, 63:77, 43:57][spine] = 300.0
    hu[:, 12:18, 40:60] = 900.0  # the sternum: thin and dense, at the front
    track = find_spine_track(hu)
    assert np.all(np.abs(track[:, 1] - 70) <= 3), np.unique(track[:, 1])
    assert np.all(np.abs(track[:, 2] - 50) <= 3)
