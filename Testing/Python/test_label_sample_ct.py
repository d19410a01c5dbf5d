"""The user's story: load the bundled CT, label it, check the result against the annotation in mm."""

import json
import os

import numpy as np
import pytest

from VertebraeLabeling.VertebraeLabelingLib import cli
from VertebraeLabeling.VertebraeLabelingLib.errors import CancelledError
from VertebraeLabeling.VertebraeLabelingLib.image_io import read_image
from VertebraeLabeling.VertebraeLabelingLib.inference import label_ct
from VertebraeLabeling.VertebraeLabelingLib.model_io import load_model


@pytest.fixture(scope="module")
def bundled():
    return load_model()


@pytest.fixture(scope="module")
def sample_result(sample_ct_path, bundled):
    model, _ = bundled
    return label_ct(read_image(sample_ct_path), model=model, device="cpu")


def test_cli_writes_markups_and_overview_and_prints_a_table(tmp_path, capsys, sample_ct_path):
    out = tmp_path / "sample.mrk.json"
    png = tmp_path / "sample.png"
    code = cli.main([sample_ct_path, "-o", str(out), "--overview", str(png), "--device", "cpu"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "vertebra" in printed and "confidence" in printed and f"wrote {out}" in printed
    doc = json.loads(out.read_text())
    assert doc["markups"][0]["type"] == "Fiducial"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("fmt, suffix", [("csv", ".csv"), ("verse", "_ctd.json")])
def test_cli_other_formats_default_next_to_the_ct(tmp_path, sample_ct_path, fmt, suffix):
    ct = tmp_path / "patient.nii.gz"
    ct.write_bytes(open(sample_ct_path, "rb").read())
    assert cli.main([str(ct), "--format", fmt, "-q"]) == 0
    assert (tmp_path / ("patient" + suffix)).exists()


def test_cli_never_replaces_an_existing_result_without_overwrite(tmp_path, capsys, sample_ct_path):
    out = tmp_path / "edited.mrk.json"
    out.write_text("points the radiologist corrected")
    assert cli.main([sample_ct_path, "-o", str(out), "-q"]) == cli.EXIT_ERROR
    assert "--overwrite" in capsys.readouterr().err
    assert out.read_text() == "points the radiologist corrected"
    assert cli.main([sample_ct_path, "-o", str(out), "-q", "--overwrite", "--device", "cpu"]) == 0
    assert out.read_text().startswith("{")


def test_labels_are_in_order_and_unique(sample_result):
    names = [v.name for v in sample_result.vertebrae]
    assert len(names) == len(set(names))
    from VertebraeLabeling.VertebraeLabelingLib.vertebrae import NAME_TO_INDEX

    assert [NAME_TO_INDEX[n] for n in names] == sorted(NAME_TO_INDEX[n] for n in names)
    z = [v.position_lps[2] for v in sample_result.vertebrae]
    assert z == sorted(z, reverse=True)  # cranio-caudal: superior (larger LPS z) first


def test_only_spine_blocks_are_computed(sample_result):
    assert 1 <= sample_result.num_blocks <= 5


def _errors_to_body_centres(sample_result, sample_body_centres_lps, bundled):
    _, manifest = bundled
    if not manifest["trained"]:
        pytest.skip("the bundled model is the untrained placeholder")
    found = sample_result.as_dict()
    errors = {}
    for name, truth in sample_body_centres_lps.items():
        assert name in found, f"{name} was not labeled; got {sorted(found)}"
        errors[name] = float(np.linalg.norm(found[name] - truth))
    return errors


def test_bundled_model_names_every_whole_vertebra_of_the_real_ct(sample_result, sample_body_centres_lps, bundled):
    """The paper's identification criterion on the real case: each whole vertebra (L1-L5, S1) is labeled,
    and its labeled point is the one closest to the truth and within 20 mm."""
    errors = _errors_to_body_centres(sample_result, sample_body_centres_lps, bundled)
    found = sample_result.as_dict()
    for name, truth in sample_body_centres_lps.items():
        closest = min(found, key=lambda n: np.linalg.norm(found[n] - truth))
        assert closest == name and errors[name] <= 20.0, (name, closest, errors)


def test_bundled_model_meets_the_5_mm_target_on_the_real_ct(sample_result, sample_body_centres_lps, bundled):
    """The real-case target: every whole vertebra within 5 mm of its body centre. S1 is the tight one (4.8 mm
    with the bundled model); its truth is found across its own 45-degree canal (``body_centres``), within
    about 1.4 mm (median) of the truth on synthetic S1 masks."""
    errors = _errors_to_body_centres(sample_result, sample_body_centres_lps, bundled)
    assert max(errors.values()) <= 5.0, errors


def test_cancel_stops_the_run_and_writes_nothing(tmp_path, sample_ct_path, bundled):
    model, _ = bundled
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(CancelledError):
        label_ct(read_image(sample_ct_path), model=model, device="cpu", cancel=cancel)
    assert os.listdir(tmp_path) == []


def test_progress_is_reported_up_to_done(sample_ct_path, bundled):
    model, _ = bundled
    seen = []
    label_ct(read_image(sample_ct_path), model=model, device="cpu", progress=lambda f, m: seen.append((f, m)))
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and len(seen) >= 4


def test_the_mirrored_look_at_a_block_lands_on_the_same_vertebrae(sample_ct_path, bundled):
    """The mirrored second look is mapped back into the volume: on a block shifted 15 voxels sideways,
    so the spine is far from the block's middle, both looks put each vertebra they are sure of within a
    few mm of each other (a look left in mirrored coordinates would be about 30 voxels = 60 mm off)."""
    import torch

    from VertebraeLabeling.VertebraeLabelingLib import blocks, preprocessing
    from VertebraeLabeling.VertebraeLabelingLib.inference import predict_blocks

    model, _ = bundled
    volume = preprocessing.to_canonical(read_image(sample_ct_path))
    normalized = preprocessing.zscore(volume.hu)
    track = blocks.find_spine_track(volume.hu, volume.spacing)
    first = blocks.plan_blocks(volume.shape, track)[1]
    shifted = blocks.Block((first.start[0], first.start[1], first.start[2] + 15), first.shape)
    plain, mirrored = predict_blocks(model, normalized, [shifted], torch.device("cpu"),
                                       float(normalized.min()), mirror=True)
    sure = (plain.probabilities > 0.9) & (mirrored.probabilities > 0.9)
    assert sure.sum() >= 2
    gaps_mm = np.linalg.norm(plain.positions[sure] - mirrored.positions[sure], axis=1) * volume.spacing
    assert gaps_mm.max() < 6.0, gaps_mm


def test_the_partly_seen_t12_is_found_under_the_last_rib_pair_and_the_names_say_how(sample_result):
    """The sample CT (abdomen) ends at the top inside T12, under the network's L1-S2. The ribs beside it
    are the last pair: the count adds T12 above L1, and every name says what it agrees with."""
    by_name = {v.name: v for v in sample_result.vertebrae}
    assert any(a.startswith("last rib pair: T12") for a in sample_result.anchors), sample_result.anchors
    assert any(a.startswith("the sacrum: S1") for a in sample_result.anchors), sample_result.anchors
    assert by_name["T12"].basis == "last rib pair"
    assert by_name["T12"].position_lps[2] > by_name["L1"].position_lps[2] + 15.0  # above L1, by about a level
    assert by_name["L3"].basis == "network; agrees with the last rib pair and the sacrum"
