"""Robustness suite: the CTs a hospital really has, each with a correct result or a clear error.

Complements ``test_bad_input.py`` (2-D, empty, constant, NaN, MRI-like, truncated, wrong model...) with:
oblique direction matrices, the same CT stored LPS / RAS / PIR, a 1000-slice volume (bounded memory),
a CT without a spine, a cancelled run (API and command line), metal implants, a DICOM series, and the
command line's exit codes. Every case checks that nothing of the user's is lost or half-written.

The geometry checks do not depend on what the network has learned:

* the LPS / RAS / PIR copies hold the same voxels at the same physical points, so the canonical 2 mm
  volume, the blocks and therefore the network's outputs must be identical with *any* fixed weights;
* the oblique copy is resampled, so a network's output is not bit-identical; there a stand-in model
  that "sees" a vertebra exactly where a metal-bright marker is checks the whole chain
  (oblique resampling → blocks → block offsets → index → LPS) against the marker's physical position.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import DICOM_CENTROIDS, REPO, ras_centroids

from VertebraeLabeling.VertebraeLabelingLib import blocks, cli, preprocessing
from VertebraeLabeling.VertebraeLabelingLib.errors import CancelledError
from VertebraeLabeling.VertebraeLabelingLib.image_io import read_image, validate_ct
from VertebraeLabeling.VertebraeLabelingLib.inference import label_ct
from VertebraeLabeling.VertebraeLabelingLib.model_io import load_model
from VertebraeLabeling.VertebraeLabelingLib.outputs import verse_list, write_result
from VertebraeLabeling.VertebraeLabelingLib.vertebrae import NAME_TO_INDEX, NUM_VERTEBRAE

PREVIOUS = "user's previous result\n"


# ----------------------------------------------------------------------------------------------------------------
# fixtures and helpers
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model():
    return load_model()[0]


@pytest.fixture(scope="module")
def sample(sample_ct_path):
    return read_image(sample_ct_path)


def _label(image, net, **kwargs):
    kwargs.setdefault("device", "cpu")
    return label_ct(image, model=net, **kwargs)


def reoriented(image, perm, flips):
    """The same physical content with the array axes permuted and flipped.

    New index axis ``a`` is old index axis ``perm[a]``, reversed when ``flips[a]``; direction, spacing
    and origin are adjusted so every voxel keeps its physical position.
    """
    arr = sitk.GetArrayFromImage(image)  # numpy axis n is index axis 2 - n
    new = np.transpose(arr, [2 - perm[2], 2 - perm[1], 2 - perm[0]])
    for axis, flip in enumerate(flips):
        if flip:
            new = np.flip(new, axis=2 - axis)
    out = sitk.GetImageFromArray(np.ascontiguousarray(new))
    old_dir = np.asarray(image.GetDirection()).reshape(3, 3)
    new_dir = np.zeros((3, 3))
    corner = [0, 0, 0]
    for axis, (p, flip) in enumerate(zip(perm, flips)):
        new_dir[:, axis] = old_dir[:, p] * (-1.0 if flip else 1.0)
        if flip:
            corner[p] = image.GetSize()[p] - 1
    out.SetSpacing([image.GetSpacing()[p] for p in perm])
    out.SetDirection(tuple(new_dir.ravel()))
    out.SetOrigin(image.TransformIndexToPhysicalPoint(corner))
    return out


def _rotation(degrees_x, degrees_y, degrees_z):
    ax, ay, az = np.deg2rad([degrees_x, degrees_y, degrees_z])
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def rotated_copy(image, rotation):
    """``image`` resampled (linear) onto an oblique grid, direction ``rotation @ direction``, covering all of it."""
    direction = rotation @ np.asarray(image.GetDirection()).reshape(3, 3)
    spacing = np.asarray(image.GetSpacing())
    size = np.asarray(image.GetSize())
    corners = np.array([image.TransformIndexToPhysicalPoint([int(c) for c in (i, j, k)])
                        for i in (0, size[0] - 1) for j in (0, size[1] - 1) for k in (0, size[2] - 1)])
    local = corners @ direction  # coordinates along the new axes
    lo, hi = local.min(axis=0), local.max(axis=0)
    new_size = [int(v) for v in np.ceil((hi - lo) / spacing) + 1]
    return sitk.Resample(image, new_size, sitk.Transform(), sitk.sitkLinear, tuple(direction @ lo),
                         tuple(spacing), tuple(direction.ravel()), -1024.0, image.GetPixelID())


def paint_ball(image, centre_lps, radius_mm, value):
    """Set the voxels within ``radius_mm`` of a physical point to ``value`` (a copy is returned)."""
    arr = sitk.GetArrayFromImage(image)
    _paint_ball_array(arr, image, centre_lps, radius_mm, value)
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(image)
    return out


def _paint_ball_array(arr, image, centre_lps, radius_mm, value):
    """Like :func:`paint_ball`, in place on ``arr`` (the array of ``image``)."""
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    spacing = np.asarray(image.GetSpacing())
    origin = np.asarray(image.GetOrigin())
    centre = np.asarray(image.TransformPhysicalPointToContinuousIndex(tuple(float(v) for v in centre_lps)))
    reach = np.ceil(radius_mm / spacing).astype(int) + 1
    lo = np.maximum(np.floor(centre).astype(int) - reach, 0)
    hi = np.minimum(np.ceil(centre).astype(int) + reach, np.asarray(image.GetSize()) - 1)
    ii, jj, kk = np.meshgrid(*[np.arange(a, b + 1) for a, b in zip(lo, hi)], indexing="ij")
    idx = np.stack([ii, jj, kk], axis=-1).reshape(-1, 3)
    phys = origin + (idx * spacing) @ direction.T
    inside = np.linalg.norm(phys - np.asarray(centre_lps), axis=1) <= radius_mm
    sel = idx[inside]
    arr[sel[:, 2], sel[:, 1], sel[:, 0]] = value


def _spine_point_lps(image, fraction=0.5):
    """An LPS point on the spine track of ``image``, ``fraction`` of the way down its tracked slices."""
    volume = preprocessing.to_canonical(image)
    track = blocks.find_spine_track(volume.hu, volume.spacing)
    rows = np.nonzero(np.isfinite(track[:, 1]))[0]
    row = rows[int(fraction * (len(rows) - 1))]
    return volume.index_to_lps(track[row]), volume, track


def _track_lps(image):
    """The spine track of ``image`` as LPS points (N, 3), one per tracked canonical slice."""
    volume = preprocessing.to_canonical(image)
    track = blocks.find_spine_track(volume.hu, volume.spacing)
    assert track is not None
    rows = np.isfinite(track[:, 1])
    return volume.index_to_lps(track[rows])


def _in_plane_distance_to_track(track_lps, point_lps):
    """Distance (mm) in the axial plane from ``point_lps`` to the track point at the nearest height."""
    nearest = track_lps[int(np.argmin(np.abs(track_lps[:, 2] - point_lps[2])))]
    return float(np.linalg.norm((nearest - point_lps)[:2]))


class MarkerModel(torch.nn.Module):
    """A stand-in for the network: it reports vertebra ``label`` at a metal-bright marker, nothing elsewhere.

    Its "centroid" is the intensity-weighted centre of the block's brightest voxels (above half the
    block maximum), its presence logit is +10 when the block holds a value above ``present_z``
    (normalised units), else -10: a model whose answer is known in physical space.
    """

    def __init__(self, label: int, present_z: float = 10.0) -> None:
        super().__init__()
        self.label = label
        self.present_z = present_z
        self.trained = True

    def forward(self, x):
        b = x.shape[0]
        data = x.float().contiguous()
        peak = data.amax(dim=(1, 2, 3, 4))
        w = torch.relu(data - 0.5 * peak[:, None, None, None, None])[:, 0]
        grids = torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in w.shape[1:]], indexing="ij")
        total = w.sum(dim=(1, 2, 3)).clamp_min(1e-6)
        centre = torch.stack([(w * g).sum(dim=(1, 2, 3)) / total for g in grids], dim=-1)
        logits = torch.full((b, NUM_VERTEBRAE), -10.0)
        logits[:, self.label] = torch.where(peak > self.present_z, 10.0, -10.0)
        return {"logits": logits, "coords": centre[:, None, :].expand(b, NUM_VERTEBRAE, 3)}


def _previous_output(folder, name="result.mrk.json"):
    path = folder / name
    path.write_text(PREVIOUS)
    return path


def _assert_untouched(folder, path):
    assert path.read_text() == PREVIOUS
    assert not [f for f in os.listdir(folder) if f.startswith(".tmp")]


# ----------------------------------------------------------------------------------------------------------------
# the same CT stored LPS, RAS and PIR
# ----------------------------------------------------------------------------------------------------------------


def test_reoriented_copies_hold_the_same_voxels_at_the_same_physical_points(sample):
    pir = reoriented(sample, (1, 2, 0), (True, True, False))
    rng = np.random.default_rng(1)
    size = np.asarray(pir.GetSize())
    for _ in range(50):
        idx = [int(v) for v in rng.integers(0, size)]
        point = pir.TransformIndexToPhysicalPoint(idx)
        old = sample.TransformPhysicalPointToIndex(point)
        np.testing.assert_allclose(sample.TransformIndexToPhysicalPoint(old), point, atol=1e-4)
        assert pir[idx] == sample[old]


def test_lps_ras_pir_copies_give_the_same_physical_centroids(tmp_path, sample, model):
    """The same real CT as RAS (.nii.gz), LPS (.nrrd) and PIR (.mha): same vertebrae, same places (≤ 1 mm)."""
    copies = {
        "RAS": sample,  # the sample CT is stored RAS: i → right, j → anterior, k → superior
        "LPS": reoriented(sample, (0, 1, 2), (True, True, False)),
        "PIR": reoriented(sample, (1, 2, 0), (True, True, False)),
    }
    expected_dirs = {"RAS": np.diag([-1.0, -1.0, 1.0]), "LPS": np.eye(3),
                     "PIR": np.array([[0, 0, -1.0], [1.0, 0, 0], [0, -1.0, 0]])}
    extension = {"RAS": ".nii.gz", "LPS": ".nrrd", "PIR": ".mha"}
    results = {}
    for name, image in copies.items():
        path = str(tmp_path / f"ct_{name}{extension[name]}")
        sitk.WriteImage(image, path)
        loaded = read_image(path)
        np.testing.assert_allclose(np.reshape(loaded.GetDirection(), (3, 3)), expected_dirs[name], atol=1e-6)
        # min_probability 0: every block's vote counts, so even untrained weights give many labels to compare.
        results[name] = (_label(loaded, model, min_probability=0.0), loaded)
    reference, ref_image = results["RAS"]
    assert len(reference.vertebrae) >= 2
    for name, (result, image) in results.items():
        assert result.num_blocks == reference.num_blocks
        assert [v.name for v in result.vertebrae] == [v.name for v in reference.vertebrae], name
        for got, want in zip(result.vertebrae, reference.vertebrae):
            assert np.linalg.norm(got.position_lps - want.position_lps) <= 1.0, (name, got.name)
            assert got.confidence == pytest.approx(want.confidence, abs=1e-3)
        # VerSe coordinates are voxel units of the image turned to PIR: the same numbers for every copy.
        ours, theirs = verse_list(result, image)[1:], verse_list(reference, ref_image)[1:]
        for a, b in zip(ours, theirs):
            assert a["label"] == b["label"]
            assert np.allclose([a["X"], a["Y"], a["Z"]], [b["X"], b["Y"], b["Z"]], atol=0.35), (name, a, b)


# ----------------------------------------------------------------------------------------------------------------
# oblique direction matrices
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("angles", [(18.0, 0.0, 0.0), (12.0, -9.0, 25.0)], ids=["gantry-tilt", "double-oblique"])
def test_oblique_copy_puts_the_label_at_the_same_physical_place(sample, angles):
    """The original and an oblique resampling of it, each with a metal marker at the same physical point P.

    The stand-in model names "L3" wherever the marker is: both runs must put L3 on P (≤ 1 mm), which
    checks the oblique resampling, the spine-following blocks and the block → LPS mapping together.
    """
    marker, _, _ = _spine_point_lps(sample, 0.6)
    original = paint_ball(sample, marker, 6.0, 8000)
    oblique = paint_ball(rotated_copy(sample, _rotation(*angles)), marker, 6.0, 8000)
    label = NAME_TO_INDEX["L3"]
    found = {}
    for name, image in (("original", original), ("oblique", oblique)):
        validate_ct(image)  # 8000 HU metal is still a CT
        result = label_ct(image, model=MarkerModel(label), device="cpu")
        assert [v.name for v in result.vertebrae] == ["L3"], name
        found[name] = result.vertebrae[0].position_lps
        assert np.linalg.norm(found[name] - marker) <= 1.0, (name, found[name], marker)
    assert np.linalg.norm(found["oblique"] - found["original"]) <= 1.0
    assert any("oblique" in m for m in label_ct(oblique, model=MarkerModel(label), device="cpu").messages)


def test_oblique_copy_follows_the_same_spine_and_runs_the_real_model(sample, model):
    """Weights-independent: the spine track of the oblique copy lies on the original's (in physical space);
    the bundled model runs on it and puts every label inside the body. With trained weights the labels must
    also match the original's within 3 mm."""
    oblique = rotated_copy(sample, _rotation(15.0, -8.0, 20.0))
    original_track = _track_lps(sample)
    oblique_track = _track_lps(oblique)
    # Compare where the track is on the column: below the sacrum this CT has no spine and the track
    # wanders onto the right hip in both copies (see the benchmark notes), which is not what this test is about.
    on_spine = np.abs(original_track[:, 0] - np.median(original_track[:, 0])) < 30.0
    lo, hi = original_track[on_spine, 2].min() + 20, original_track[on_spine, 2].max() - 20  # away from the ends
    inner = oblique_track[(oblique_track[:, 2] > lo) & (oblique_track[:, 2] < hi)]
    assert len(inner) > 40
    distances = [_in_plane_distance_to_track(original_track, p) for p in inner]
    # Same vertebra everywhere (the track may sit on the body's front or on the arch: up to ~30 mm apart).
    assert np.median(distances) <= 6.0 and max(distances) <= 30.0, (np.median(distances), max(distances))

    result = _label(oblique, model, min_probability=0.0)
    assert result.vertebrae and any("oblique" in m for m in result.messages)
    body = sitk.GetArrayViewFromImage(sample)
    for v in result.vertebrae:
        idx = sample.TransformPhysicalPointToIndex(tuple(float(c) for c in v.position_lps))
        assert all(0 <= i < n for i, n in zip(idx, sample.GetSize())), v.name
        assert body[idx[2], idx[1], idx[0]] > -500, f"{v.name} is outside the body"
    if model.trained:
        straight = {v.name: v.position_lps for v in _label(sample, model).vertebrae}
        tilted = {v.name: v.position_lps for v in _label(oblique, model).vertebrae}
        # The whole vertebrae of this CT must get the same names; T12 (cut by the top) and S2 sit at the edge of
        # the field of view, which the rotation changes, so whether they are labeled may differ.
        whole = ("L1", "L2", "L3", "L4", "L5", "S1")
        assert set(whole) <= set(tilted) and set(whole) <= set(straight), (sorted(tilted), sorted(straight))
        shifts = {n: float(np.linalg.norm(tilted[n] - straight[n])) for n in whole}
        # Within the paper's identification radius; today's model: 0.8-3.4 mm (strict xfail below).
        assert max(shifts.values()) <= 20.0, shifts


@pytest.mark.xfail(strict=True, reason="the bundled model moves the points of the oblique copy by 0.8-3.4 mm "
                                       "(L1 3.4 mm; a better model should agree within 3 mm)")
def test_oblique_copy_gets_the_same_points_within_3_mm(sample, model):
    if not model.trained:
        pytest.skip("needs trained weights")
    oblique = rotated_copy(sample, _rotation(15.0, -8.0, 20.0))
    straight = {v.name: v.position_lps for v in _label(sample, model).vertebrae}
    tilted = {v.name: v.position_lps for v in _label(oblique, model).vertebrae}
    whole = ("L1", "L2", "L3", "L4", "L5", "S1")
    shifts = {n: round(float(np.linalg.norm(tilted[n] - straight[n])), 1) for n in whole}
    assert max(shifts.values()) <= 3.0, str(shifts)


# ----------------------------------------------------------------------------------------------------------------
# a 1000-slice volume: memory stays bounded
# ----------------------------------------------------------------------------------------------------------------

_MEMORY_SCRIPT = textwrap.dedent("""
    import json, resource, sys
    import numpy as np, SimpleITK as sitk
    sys.path.insert(0, {repo!r})
    from VertebraeLabeling.VertebraeLabelingLib.inference import label_ct
    from VertebraeLabeling.VertebraeLabelingLib.model_io import load_model

    def rss_mb(field):
        for line in open("/proc/self/status"):
            if line.startswith(field):
                return int(line.split()[1]) / 1024.0

    model, _ = load_model()
    src = sitk.ReadImage({sample!r})
    size = (256, 256, 1000)
    spacing = [e / n for e, n in zip(np.multiply(src.GetSize(), src.GetSpacing()), size)]
    image = sitk.Resample(src, size, sitk.Transform(), sitk.sitkLinear, src.GetOrigin(), spacing,
                          src.GetDirection(), -1024, sitk.sitkInt16)
    del src
    before = rss_mb("VmRSS:")
    try:  # reset the high-water mark so that it measures the labeling only (Linux >= 4.0)
        open("/proc/self/clear_refs", "w").write("5")
        reset = True
    except OSError:
        reset = False
    result = label_ct(image, model=model, device="cpu")
    peak = rss_mb("VmHWM:") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps({{"before_mb": before, "peak_mb": peak, "reset": reset, "blocks": result.num_blocks,
                       "input_mb": image.GetNumberOfPixels() * 2 / 2**20, "timings": result.timings}}))
""")


def test_1000_slice_volume_keeps_memory_bounded(sample_ct_path):
    """256×256×1000 int16 (the real sample CT resampled to 0.34 mm slices): labels in bounded memory.

    Peak RSS is measured in a fresh process; ``benchmarks/benchmark_speed.py`` does the full 512×512×1000.
    """
    code = _MEMORY_SCRIPT.format(repo=REPO, sample=sample_ct_path)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    stats = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"1000-slice volume: {stats}")
    assert stats["blocks"] >= 1
    assert stats["peak_mb"] < 2500, stats
    # Beyond the input itself (128 MB) the labeling needs a few canonical volumes and the network.
    assert stats["peak_mb"] - stats["before_mb"] < 1200, stats


# ----------------------------------------------------------------------------------------------------------------
# no spine in the image
# ----------------------------------------------------------------------------------------------------------------


def _soft_tissue_only(shape=(60, 120, 120), spacing=(2.0, 2.0, 3.0)):
    """A body of fat, muscle and organs (no voxel above 120 HU): a CT, but without a spine."""
    rng = np.random.default_rng(3)
    z, y, x = np.mgrid[: shape[0], : shape[1], : shape[2]].astype(np.float32)
    cy, cx = shape[1] / 2, shape[2] / 2
    arr = np.full(shape, -1000.0, np.float32)
    r = np.hypot((y - cy) / 0.8, x - cx)
    arr[r < 50] = -90  # fat
    arr[r < 42] = 45  # muscle / organs
    arr[(np.hypot(y - cy - 5, x - cx + 12) < 9)] = 60  # liver-ish
    arr[(np.hypot(y - cy + 10, x - cx - 10) < 6)] = -600  # some bowel gas
    arr += rng.normal(0, 12, shape).astype(np.float32)
    img = sitk.GetImageFromArray(arr.astype(np.int16))
    img.SetSpacing(spacing)
    return img


def test_volume_without_spine_gives_no_labels_and_a_message(tmp_path, capsys, model):
    img = _soft_tissue_only()
    validate_ct(img)  # a CT without bone is still a CT
    result = _label(img, model)
    assert result.vertebrae == [] and result.num_blocks == 0
    assert any("No spine" in m for m in result.messages)

    path = tmp_path / "abdomen_wall.nii.gz"
    sitk.WriteImage(img, str(path))
    out = tmp_path / "labels.csv"
    assert cli.main([str(path), "-o", str(out), "--format", "csv"]) == cli.EXIT_OK
    printed = capsys.readouterr().out
    assert "no vertebra labeled" in printed and "No spine" in printed
    assert out.read_text().splitlines() == [out.read_text().splitlines()[0]]  # header only


# ----------------------------------------------------------------------------------------------------------------
# a cancelled run: nothing written, previous output intact
# ----------------------------------------------------------------------------------------------------------------


def test_cancel_during_the_network_stage_keeps_the_previous_output(tmp_path, sample, model):
    out = _previous_output(tmp_path)
    seen = []

    def progress(fraction, message):
        seen.append(message)

    def cancel():
        return any(m.startswith("block") for m in seen)  # cancel as soon as the first block is done

    with pytest.raises(CancelledError):
        result = label_ct(sample, model=model, device="cpu", progress=progress, cancel=cancel)
        write_result(result, str(out), "mrk")
    assert any(m.startswith("block 1/") for m in seen) and not any(m.startswith("block 2") for m in seen)
    _assert_untouched(tmp_path, out)


def test_cancel_before_anything_runs(tmp_path, sample, model):
    out = _previous_output(tmp_path)
    with pytest.raises(CancelledError):
        label_ct(sample, model=model, device="cpu", cancel=lambda: True)
    _assert_untouched(tmp_path, out)


def test_cli_interrupted_by_ctrl_c_exits_130_and_keeps_the_previous_output(tmp_path, sample_ct_path):
    out = _previous_output(tmp_path)
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(
        [sys.executable, "-m", "VertebraeLabeling.VertebraeLabelingLib.cli", sample_ct_path, "-o", str(out),
         "--device", "cpu", "--stride", "8", "--overwrite"],  # small stride: many blocks, so the run goes on
        stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=str(tmp_path),
        # A shell's background job starts with SIGINT ignored, and Python then never raises KeyboardInterrupt:
        # give the child the default disposition a terminal user's CLI has, whoever runs the tests.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines = []
    deadline = time.monotonic() + 300
    for line in proc.stderr:  # non-terminal stderr: one "PROGRESS f message" line per step
        lines.append(line)
        if "block 2/" in line:
            proc.send_signal(signal.SIGINT)
            break
        assert time.monotonic() < deadline, lines
    rest_out, rest_err = proc.communicate(timeout=120)
    assert proc.returncode == cli.EXIT_CANCELLED, (lines, rest_err)
    assert "cancelled" in rest_err and "Traceback" not in rest_err
    _assert_untouched(tmp_path, out)


# ----------------------------------------------------------------------------------------------------------------
# metal implants
# ----------------------------------------------------------------------------------------------------------------


def _with_implants(image, peak_hu, dtype):
    """Pedicle screws and rods in the lower spine plus a hip prosthesis, with streak artefacts."""
    arr = sitk.GetArrayFromImage(image).astype(np.float32)
    point, volume, track = _spine_point_lps(image, 0.75)
    for dz in (-30.0, 0.0, 30.0):  # three levels of screws, 8 mm thick, through both pedicles
        for side in (-1.0, 1.0):
            for depth in np.arange(0.0, 40.0, 3.0):
                tip = point + np.array([side * (18.0 - 0.3 * depth), 25.0 - depth, dz])
                _paint_ball_array(arr, image, tip, 4.0, peak_hu)
    for side in (-1.0, 1.0):  # two rods joining the screw heads
        for dz in np.arange(-35.0, 36.0, 3.0):
            _paint_ball_array(arr, image, point + np.array([side * 18.0, 27.0, dz]), 3.0, peak_hu)
    _paint_ball_array(arr, image, point + np.array([-95.0, -10.0, -40.0]), 22.0, peak_hu)  # femoral head prosthesis
    # streaks: alternating bright/dark rays in the axial slices of the screws
    k_centre = int(round(image.TransformPhysicalPointToContinuousIndex(tuple(float(v) for v in point))[2]))
    ys, xs = np.mgrid[: arr.shape[1], : arr.shape[2]]
    angle = np.arctan2(ys - arr.shape[1] / 2, xs - arr.shape[2] / 2)
    streak = (300.0 * np.sin(12 * angle)).astype(np.float32)
    for k in range(max(0, k_centre - 12), min(arr.shape[0], k_centre + 12)):
        body = arr[k] > -500
        arr[k][body] += streak[body]
    arr = np.clip(arr, -1024, peak_hu).astype(dtype)
    result = sitk.GetImageFromArray(arr)
    result.CopyInformation(image)
    return result, point


@pytest.mark.parametrize("peak_hu, dtype", [(3071, np.int16), (30710, np.float32)], ids=["12-bit", "extended-HU"])
def test_metal_implant_is_labeled_not_refused(tmp_path, sample, model, peak_hu, dtype):
    image, screws = _with_implants(sample, peak_hu, dtype)
    assert float(sitk.GetArrayViewFromImage(image).max()) >= peak_hu - 1
    validate_ct(image)
    path = tmp_path / "implant.nii.gz"
    sitk.WriteImage(image, str(path))
    out = tmp_path / "implant.mrk.json"
    assert cli.main([str(path), "-o", str(out), "-q", "--min-probability", "0"]) == cli.EXIT_OK
    doc = json.loads(out.read_text())
    assert doc["markups"][0]["controlPoints"], "no label at all"
    # The metal must not pull the blocks off the spine: the track still passes through the screws' level.
    track = _track_lps(read_image(str(path)))
    assert _in_plane_distance_to_track(track, screws) <= 25.0
    assert _in_plane_distance_to_track(track, screws) <= _in_plane_distance_to_track(_track_lps(sample), screws) + 10


# ----------------------------------------------------------------------------------------------------------------
# a DICOM series
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dicom_dir(dicom_case_dir):
    """The 20 slices of TotalSegmentator's example DICOM series, as published."""
    return os.path.join(dicom_case_dir, "dicom")


def test_dicom_series_labels_map_to_its_physical_space(tmp_path, dicom_dir, model):
    image = read_image(dicom_dir)
    assert image.GetSize() == (512, 512, 20)
    # The blocks are planned where the annotation (TotalSegmentator, RAS) says the vertebrae are.
    volume = preprocessing.to_canonical(image)
    plan = blocks.plan_blocks(volume.shape, blocks.find_spine_track(volume.hu, volume.spacing))
    assert plan
    for name, (x, y, z) in ras_centroids(DICOM_CENTROIDS)[0].items():
        kji = volume.lps_to_index(np.array([-x, -y, z]))
        assert any(b.contains(kji[None], margin=5.0)[0] for b in plan), name

    result = _label(image, model, min_probability=0.0)
    assert result.vertebrae
    size = np.asarray(image.GetSize())
    for v in result.vertebrae:  # every label lies within the series' in-plane field of view
        idx = np.asarray(image.TransformPhysicalPointToContinuousIndex(tuple(float(c) for c in v.position_lps)))
        assert np.all(idx[:2] >= -0.5) and np.all(idx[:2] <= size[:2] - 0.5), v.name

    # The command line on the folder: the markups hold the same LPS points.
    out = tmp_path / "series.mrk.json"
    assert cli.main([dicom_dir, "-o", str(out), "-q", "--min-probability", "0"]) == cli.EXIT_OK
    points = json.loads(out.read_text())["markups"][0]["controlPoints"]
    assert [p["label"] for p in points] == [v.name for v in result.vertebrae]
    for p, v in zip(points, result.vertebrae):
        assert np.allclose(p["position"], v.position_lps, atol=0.01)


# ----------------------------------------------------------------------------------------------------------------
# command-line exit codes
# ----------------------------------------------------------------------------------------------------------------


def test_cli_usage_errors_exit_2(tmp_path, capsys, sample_ct_path):
    for argv in ([], [sample_ct_path, "--format", "dicom"], [sample_ct_path, "--no-such-option"]):
        with pytest.raises(SystemExit) as exc:
            cli.main(argv)
        assert exc.value.code == cli.EXIT_USAGE, argv
    assert cli.main([sample_ct_path, "--stride", "0", "-o", str(tmp_path / "x.mrk.json")]) == cli.EXIT_USAGE
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    assert not os.path.exists(tmp_path / "x.mrk.json")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message when no GPU exists")
def test_cli_cuda_without_gpu_is_a_clear_error(tmp_path, capsys, sample_ct_path):
    out = _previous_output(tmp_path)
    assert cli.main([sample_ct_path, "-o", str(out), "-q", "--device", "cuda", "--overwrite"]) == cli.EXIT_ERROR
    assert "CUDA was requested" in capsys.readouterr().err
    _assert_untouched(tmp_path, out)


def test_cli_unwritable_output_is_a_clear_error_before_any_work(tmp_path, capsys, sample_ct_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    started = time.perf_counter()
    code = cli.main([sample_ct_path, "-o", str(blocker / "out.mrk.json"), "-q"])
    err = capsys.readouterr().err
    assert code == cli.EXIT_ERROR and "error:" in err and "Traceback" not in err, err
    assert time.perf_counter() - started < 5.0  # refused before labeling, not after
    folder = tmp_path / "a_folder.mrk.json"
    folder.mkdir()
    assert cli.main([sample_ct_path, "-o", str(folder), "-q"]) == cli.EXIT_ERROR
    assert "folder" in capsys.readouterr().err
    assert blocker.read_text() == "not a folder" and os.listdir(folder) == []


def test_cli_exit_codes_of_a_real_process(tmp_path):
    """The exit status the shell sees: 0 for a run (here a CT without spine: no network), 1 for an error."""
    ct = tmp_path / "no_spine.nii.gz"
    sitk.WriteImage(_soft_tissue_only(), str(ct))
    out = _previous_output(tmp_path, "no_spine.csv")
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    command = [sys.executable, "-m", "VertebraeLabeling.VertebraeLabelingLib.cli", str(ct), "-o", str(out),
               "--format", "csv"]
    refused = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert refused.returncode == cli.EXIT_ERROR and "already exists" in refused.stderr  # never replaced silently
    assert out.read_text() == PREVIOUS
    proc = subprocess.run(command + ["--overwrite"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == cli.EXIT_OK, proc.stderr
    assert out.read_text().startswith("name,region,x_lps_mm")
    assert f"wrote {out}" in proc.stdout and "No spine" in proc.stdout


# ----------------------------------------------------------------------------------------------------------------
# the CPU inference fast path (oneDNN convolutions, channels-first heatmaps) changes nothing but the speed
# ----------------------------------------------------------------------------------------------------------------


def test_cpu_inference_fast_path_gives_the_stock_networks_answer(monkeypatch):
    from VertebraeLabeling.VertebraeLabelingLib.network import VertebraeNet

    calls = []
    stock = torch.mkldnn_convolution
    monkeypatch.setattr(torch, "mkldnn_convolution", lambda *a: calls.append(1) or stock(*a))
    torch.manual_seed(0)
    net = VertebraeNet().eval()
    for shape in ((1, 1, 104, 80, 80), (2, 1, 32, 24, 16)):
        x = torch.randn(*shape) * 2
        with torch.enable_grad():  # autograd on: the stock PyTorch path
            ref = net(x)
        assert not calls
        fast_net = net.to(memory_format=torch.channels_last_3d)
        with torch.inference_mode():
            out = fast_net(x.contiguous(memory_format=torch.channels_last_3d))
        assert calls, "the oneDNN path was not taken"
        calls.clear()
        np.testing.assert_allclose(out["logits"], ref["logits"].detach(), atol=1e-4)
        np.testing.assert_allclose(out["coords"], ref["coords"].detach(), atol=1e-2)  # voxels
        np.testing.assert_allclose(out["heatmaps"], ref["heatmaps"].detach(), atol=1e-3)
        net = net.to(memory_format=torch.contiguous_format)
    # torch.compile cannot trace torch.mkldnn_convolution: while it traces, the stock path is used.
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    with torch.inference_mode():
        net(torch.randn(1, 1, 32, 24, 16))
    assert not calls


@pytest.mark.parametrize("orientation", ["RAS", "PIR"])
def test_axis_by_axis_resampling_equals_resampling_in_one_go(monkeypatch, sample, orientation):
    """Fine CTs are smoothed and brought to 2 mm one axis at a time (faster): the same numbers as in one go.

    The one-go path runs as one slab: in slabs its Gaussians stop a few sigma past each slab's edge, which
    alone moves a voxel by up to 0.01 HU."""
    size = [int(n * s / f) for n, s, f in zip(sample.GetSize(), sample.GetSpacing(), (0.7, 0.9, 0.6))]
    size[2] = 150  # 90 mm of slices keeps the test quick
    fine = sitk.Resample(sample, size, sitk.Transform(), sitk.sitkLinear,
                         sample.TransformIndexToPhysicalPoint((0, 0, 60)), (0.7, 0.9, 0.6), sample.GetDirection(),
                         -1024, sitk.sitkInt16)
    if orientation == "PIR":
        fine = reoriented(fine, (1, 2, 0), (True, True, False))
    staged = preprocessing.to_canonical(fine)
    monkeypatch.setattr(preprocessing, "_patient_axes", lambda image: None)  # the one-go path (oblique images)
    one_go = preprocessing.to_canonical(fine, slab_slices=10_000)
    np.testing.assert_allclose(staged.origin_lps, one_go.origin_lps)
    assert staged.shape == one_go.shape
    assert float(np.abs(staged.hu - one_go.hu).max()) < 0.002  # HU


@pytest.mark.parametrize("side", ["left", "right"])
def test_a_field_of_view_that_ends_beside_the_spine_still_finds_the_vertebrae(sample, model, side):
    """A reconstruction whose field of view ends 25 mm beside the spine (the ribs and half the body of one
    side cut off): the body's middle is no longer the spine's, yet the vertebrae must be found where they
    are in the whole CT."""
    whole = _label(sample, model)
    spine_x = float(np.median([v.position_lps[0] for v in whole.vertebrae]))
    x = np.array([sample.TransformIndexToPhysicalPoint((i, 0, 0))[0] for i in range(sample.GetSize()[0])])
    keep = np.flatnonzero(x <= spine_x + 25.0) if side == "left" else np.flatnonzero(x >= spine_x - 25.0)
    cut = sample[int(keep.min()):int(keep.max()) + 1, :, :]  # LPS x grows towards the patient's left
    result = _label(cut, model)
    found = {v.name: np.asarray(v.position_lps) for v in result.vertebrae}
    # Wherever it is, a found vertebra lies on one of the whole CT's (names may shift by one: half the body
    # is missing, and with it what the network reads levels from).
    nearest = [min(np.linalg.norm(p - np.asarray(w.position_lps)) for w in whole.vertebrae) for p in found.values()]
    assert len(found) >= len(whole.vertebrae) - 2, (sorted(found), [v.name for v in whole.vertebrae])
    # Lumbar centres lie 30-35 mm apart: within 15 mm is still the same body (one point may be an end
    # vertebra the whole CT did not name).
    assert sorted(nearest)[-2] <= 15.0, nearest
