"""Weights load without executing code and only when their checksum matches."""

import json
import os
import pickle

import pytest
import torch

from VertebraeLabeling.VertebraeLabelingLib.errors import ModelFileError
from VertebraeLabeling.VertebraeLabelingLib.model_io import default_model_path, load_model, read_manifest, save_weights
from VertebraeLabeling.VertebraeLabelingLib.network import VertebraeNet


def test_bundled_model_loads_and_says_whether_it_is_trained():
    model, manifest = load_model()
    assert isinstance(model, VertebraeNet) and not model.training
    assert isinstance(manifest["trained"], bool)
    assert model.trained == manifest["trained"]  # label_ct warns from this
    assert len(manifest["sha256"]) == 64


def test_save_and_load_round_trip(tmp_path):
    net = VertebraeNet(widths=(4, 8, 8, 16))
    path = str(tmp_path / "m.pt")
    save_weights(net, path, trained=True, description="test")
    loaded, manifest = load_model(path)
    assert manifest["widths"] == [4, 8, 8, 16]
    for (k, a), (_, b) in zip(net.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k


@pytest.mark.parametrize("stride", [1, 2])
def test_heatmap_resolution_travels_with_the_weights(tmp_path, stride):
    path = str(tmp_path / "m.pt")
    save_weights(VertebraeNet(widths=(4, 8, 8, 16), heatmap_stride=stride), path, trained=True)
    assert load_model(path)[0].heatmap_stride == stride


def test_weights_from_before_the_heatmap_stride_field_load_at_full_resolution(tmp_path):
    path = str(tmp_path / "m.pt")
    save_weights(VertebraeNet(widths=(4, 8, 8, 16), heatmap_stride=1), path, trained=True)
    manifest = read_manifest(path)
    del manifest["heatmap_stride"]
    with open(os.path.splitext(path)[0] + ".json", "w") as fh:
        json.dump(manifest, fh)
    assert load_model(path)[0].heatmap_stride == 1


def test_tampered_weights_are_refused(tmp_path):
    path = str(tmp_path / "m.pt")
    save_weights(VertebraeNet(widths=(4, 8, 8, 16)), path, trained=True)
    with open(path, "r+b") as fh:
        fh.seek(200)
        byte = fh.read(1)
        fh.seek(200)
        fh.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ModelFileError, match="Checksum mismatch"):
        load_model(path)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/vertebrae_pwned",))


def test_a_pickle_with_code_is_never_executed_even_with_a_matching_checksum(tmp_path):
    path = str(tmp_path / "evil.pt")
    with open(path, "wb") as fh:
        pickle.dump({"x": _Evil()}, fh)
    from VertebraeLabeling.VertebraeLabelingLib.model_io import sha256_of

    json.dump({"format": "vertebrae-labeling-weights", "format_version": 1, "sha256": sha256_of(path),
               "widths": [8, 16, 32, 64], "trained": True}, open(str(tmp_path / "evil.json"), "w"))
    if os.path.exists("/tmp/vertebrae_pwned"):
        os.remove("/tmp/vertebrae_pwned")
    with pytest.raises(ModelFileError):
        load_model(path)
    assert not os.path.exists("/tmp/vertebrae_pwned")


def test_files_that_are_not_our_model(tmp_path):
    with pytest.raises(ModelFileError, match="not found"):
        load_model(str(tmp_path / "missing.pt"))
    other = tmp_path / "resnet.pt"
    torch.save({"conv.weight": torch.zeros(3)}, str(other))
    with pytest.raises(ModelFileError, match="manifest"):
        load_model(str(other))
    # right manifest, wrong network
    net = VertebraeNet(widths=(4, 8, 8, 16))
    path = str(tmp_path / "wrong.pt")
    save_weights(net, path, trained=True)
    manifest = read_manifest(path)
    manifest["widths"] = [8, 16, 32, 64]
    json.dump(manifest, open(str(tmp_path / "wrong.json"), "w"))
    with pytest.raises(ModelFileError, match="does not fit"):
        load_model(path)


def test_default_model_path_points_into_resources():
    assert default_model_path().endswith(os.path.join("Resources", "Models", "vertebrae_net.pt"))
