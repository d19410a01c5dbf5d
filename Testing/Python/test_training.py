"""A researcher's story: train a few steps on synthetic crops, resume, export, and label with the result.

Tiny crops and a tiny network keep this to seconds; long training never runs in CI.
"""

import csv
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from training import export as export_cli
from training import train as train_cli
from training.crops import crop_targets, make_crop
from training.loss import heatmap_kl, vertebrae_loss
from training.prepared import PreparedCase
from VertebraeLabeling.VertebraeLabelingLib.model_io import load_model
from VertebraeLabeling.VertebraeLabelingLib.network import VertebraeNet

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = ["--data", "synthetic", "--widths", "4,8,8,16", "--crop", "32,24,24", "--workers", "0",
        "--pool-size", "1", "--refresh-every", "1000", "--val-cases", "1", "--threads", "1"]


def _case() -> PreparedCase:
    cents = np.full((26, 3), np.nan, dtype=np.float32)
    cents[20] = (10.0, 12.0, 12.0)  # L2
    cents[21] = (40.0, 12.0, 12.0)  # L3, outside a 32-slice crop starting at 0
    return PreparedCase(volume=np.zeros((64, 24, 24), np.float16), centroids=cents)


def test_crop_targets_name_only_vertebrae_whose_centroid_is_inside():
    presence, coords = crop_targets(_case(), (0, 0, 0), (32, 24, 24))
    assert presence[20] == 1 and presence[21] == 0 and presence.sum() == 1
    np.testing.assert_allclose(coords[20], (10, 12, 12))
    assert not coords[21].any()


def test_mirror_augmentation_moves_the_target_with_the_image():
    case = _case()
    case.volume[10, 12, 3] = 5.0  # a bright voxel at the L2 level, left of centre
    case.centroids[20] = (10.0, 12.0, 3.0)
    seen_mirrored = False
    for seed in range(20):
        crop, presence, coords, _ = make_crop(case, np.random.default_rng(seed), (32, 24, 24), start=(0, 0, 0))
        k, j, i = np.unravel_index(np.argmax(crop[0]), crop[0].shape)
        assert abs(i - coords[20, 2]) < 1e-4  # the target follows the voxel, mirrored or not
        seen_mirrored |= i != 3
    assert seen_mirrored


def test_the_papers_loss_ignores_the_coordinates_of_absent_vertebrae():
    logits = torch.zeros(1, 26)
    presence = torch.zeros(1, 26)
    presence[0, 3] = 1
    target = torch.zeros(1, 26, 3)
    target[0, 3] = torch.tensor([5.0, 6.0, 7.0])
    good = torch.zeros(1, 26, 3)
    good[0, 3] = target[0, 3]
    good[0, 10] = 99.0  # wildly wrong, but vertebra 10 is absent
    loss = vertebrae_loss({"logits": logits, "coords": good}, presence, target)
    assert float(loss["reg"]) == 0.0
    bad = good.clone()
    bad[0, 3, 0] += 3.0
    assert float(vertebrae_loss({"logits": logits, "coords": bad}, presence, target)["reg"]) > 0


def test_a_partly_annotated_real_ct_teaches_nothing_about_the_levels_outside_its_span():
    """A chest CT annotated T2-T12: an unannotated C7 or L1 in view is unknown, not absent."""
    from training.prepared import annotated_span
    from VertebraeLabeling.VertebraeLabelingLib.vertebrae import NAME_TO_INDEX

    span = annotated_span(["T2", "T5", "T12"])
    assert span[NAME_TO_INDEX["T2"]:NAME_TO_INDEX["T12"] + 1].all()  # T3, T4 ... inside the span: decided
    assert span.sum() == 11 and not span[NAME_TO_INDEX["T1"]] and not span[NAME_TO_INDEX["L1"]]

    logits = torch.full((1, 26), 3.0)  # the network says every level is here
    presence = torch.zeros(1, 26)
    coords = torch.zeros(1, 26, 3)
    known = torch.from_numpy(span.astype(np.float32))[None]
    everything = vertebrae_loss({"logits": logits, "coords": coords}, presence, coords)["cls"]
    only_span = vertebrae_loss({"logits": logits, "coords": coords}, presence, coords, known=known)["cls"]
    assert 0 < float(only_span) < float(everything)
    np.testing.assert_allclose(float(only_span), float(everything) * 11 / 26, rtol=1e-5)

    case = _case()
    case.known = span
    *_, crop_known = make_crop(case, np.random.default_rng(0), (32, 24, 24), start=(0, 0, 0))
    np.testing.assert_array_equal(crop_known, span.astype(np.float32))
    *_, all_known = make_crop(_case(), np.random.default_rng(0), (32, 24, 24), start=(0, 0, 0))
    assert all_known.min() == 1.0


def test_heatmap_term_is_zero_at_the_target_and_positive_elsewhere():
    from training.loss import _gaussian_1d

    coords = torch.tensor([[[9.5, 6.0, 4.5]]])
    presence = torch.ones(1, 1)
    centre = (coords - 0.5) / 2
    g = [_gaussian_1d(centre[..., a], n, 1.0) for a, n in enumerate((16, 12, 8))]
    perfect = torch.log(torch.einsum("bnd,bnh,bnw->bndhw", *g).clamp_min(1e-30))
    assert abs(float(heatmap_kl(perfect, coords, presence, stride=2))) < 1e-4
    assert float(heatmap_kl(torch.zeros(1, 1, 16, 12, 8), coords, presence, stride=2)) > 1.0
    assert float(heatmap_kl(torch.zeros(1, 1, 16, 12, 8), coords, torch.zeros(1, 1), stride=2)) == 0.0


def test_train_resume_export_and_label(tmp_path, sample_ct_path):
    run = str(tmp_path / "run")
    assert train_cli.main(TINY + ["--run-dir", run, "--steps", "4", "--val-every", "2", "--save-every", "2"]) == 0
    for name in ("last.pt", "best.pt", "best.json", "log.csv"):
        assert os.path.exists(os.path.join(run, name)), name
    rows = list(csv.DictReader(open(os.path.join(run, "log.csv"))))
    assert [r["val_loss"] != "" for r in rows if int(r["step"]) in (2, 4)] == [True, True]
    assert all(np.isfinite(float(r["loss"])) for r in rows)
    before = torch.load(os.path.join(run, "last.pt"), weights_only=True)

    # Resume: the step counter continues and the weights move on from where they were.
    assert train_cli.main(TINY + ["--run-dir", run, "--steps", "6", "--val-every", "2", "--save-every", "2",
                                  "--resume"]) == 0
    after = torch.load(os.path.join(run, "last.pt"), weights_only=True)
    assert before["step"] == 4 and after["step"] == 6
    assert train_cli.main(TINY + ["--run-dir", run, "--steps", "7", "--val-every", "2", "--save-every", "1",
                                  "--resume", "--set-lr", "0.0005"]) == 0
    stepped = torch.load(os.path.join(run, "last.pt"), weights_only=True)
    assert stepped["optimizer"]["param_groups"][0]["lr"] == 0.0005
    assert any(not torch.equal(before["model"][k], after["model"][k]) for k in before["model"])

    # Export to a file the core loads (checksum verified), then label the real sample CT with it.
    out = str(tmp_path / "exported.pt")
    assert export_cli.main([os.path.join(run, "last.pt"), "--to", out]) == 0
    model, manifest = load_model(out)
    assert manifest["trained"] and manifest["widths"] == [4, 8, 8, 16] and model.heatmap_stride == 2
    from VertebraeLabeling.VertebraeLabelingLib.inference import label_file

    result = label_file(sample_ct_path, model=model)
    assert result is not None  # tiny and barely trained: only that the whole chain runs


def test_a_resumed_run_keeps_its_architecture(tmp_path):
    """Old runs (full-resolution heatmaps) still resume after the default changed."""
    run = str(tmp_path / "old")
    assert train_cli.main(TINY + ["--run-dir", run, "--steps", "1", "--val-every", "1", "--save-every", "1",
                                  "--heatmap-stride", "1"]) == 0
    ckpt = torch.load(os.path.join(run, "last.pt"), weights_only=True)
    del ckpt["config"]["heatmap_stride"]  # as written before the option existed
    torch.save(ckpt, os.path.join(run, "last.pt"))
    assert train_cli.main(TINY + ["--run-dir", run, "--steps", "2", "--val-every", "1", "--save-every", "1",
                                  "--resume"]) == 0
    assert torch.load(os.path.join(run, "last.pt"), weights_only=True)["step"] == 2


@pytest.mark.skipif(shutil.which("torchrun") is None and not os.path.exists(os.path.join(
    os.path.dirname(sys.executable), "torchrun")), reason="torchrun not installed")
def test_distributed_data_parallel_with_two_cpu_processes(tmp_path):
    """PyTorch's own DDP (gloo on CPU) via torchrun: both ranks step together and rank 0 writes."""
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    torchrun = torchrun if os.path.exists(torchrun) else shutil.which("torchrun")
    run = str(tmp_path / "ddp")
    cmd = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "training.train"] + TINY + [
        "--run-dir", run, "--steps", "2", "--val-every", "2", "--save-every", "2"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = torch.load(os.path.join(run, "last.pt"), weights_only=True)
    assert ckpt["step"] == 2
    net = VertebraeNet(widths=(4, 8, 8, 16))
    net.load_state_dict(ckpt["model"])  # saved unwrapped, without DDP's "module." prefix


def test_init_copies_matching_tensors_and_names_what_stays_random(tmp_path):
    source = VertebraeNet(widths=(4, 8, 8, 16))
    state = {k: v for k, v in source.state_dict().items() if not k.startswith("classifier.")}
    path = str(tmp_path / "trunk.pt")
    torch.save({"model": state}, path)
    target = VertebraeNet(widths=(4, 8, 8, 16))
    kept = train_cli.init_from(target, path)
    assert kept and all(name.startswith("classifier.") for name in kept)
    assert torch.equal(target.stem[0].weight, source.stem[0].weight)
    assert not torch.equal(target.classifier.fc.weight, source.classifier.fc.weight)


def test_a_run_keeps_a_moving_average_of_its_weights_and_exports_it(tmp_path):
    """Validation, best.pt and export see the average; a resumed run goes on averaging where it stopped."""
    run = str(tmp_path / "ema")
    args = TINY + ["--run-dir", run, "--val-every", "3", "--save-every", "3", "--ema-decay", "0.5"]
    assert train_cli.main(args + ["--steps", "3"]) == 0
    first = torch.load(os.path.join(run, "last.pt"), weights_only=True)
    assert first["ema_updates"] == 3
    floats = [k for k, v in first["model"].items() if v.is_floating_point()]
    assert any(not torch.equal(first["ema"][k], first["model"][k]) for k in floats)
    best, _ = load_model(os.path.join(run, "best.pt"))  # the only validation was at step 3
    assert all(torch.equal(best.state_dict()[k], first["ema"][k]) for k in floats)

    out = str(tmp_path / "exported.pt")
    assert export_cli.main([os.path.join(run, "last.pt"), "--to", out]) == 0
    exported = load_model(out)[0].state_dict()
    assert all(torch.equal(exported[k], first["ema"][k]) for k in floats)
    assert export_cli.main([os.path.join(run, "last.pt"), "--to", out, "--raw"]) == 0
    raw = load_model(out)[0].state_dict()
    assert all(torch.equal(raw[k], first["model"][k]) for k in floats)

    assert train_cli.main(args + ["--steps", "4", "--save-every", "1", "--resume"]) == 0
    second = torch.load(os.path.join(run, "last.pt"), weights_only=True)
    assert second["ema_updates"] == 4
    for k in floats:  # decay 0.5: the new average is halfway between the old one and the new weights
        assert torch.allclose(second["ema"][k], 0.5 * first["ema"][k] + 0.5 * second["model"][k], atol=1e-6), k


def test_exporting_several_checkpoints_writes_their_mean(tmp_path):
    """Weight averaging: the exported tensors are the element-wise mean, and the manifest says of which steps."""
    from VertebraeLabeling.VertebraeLabelingLib.model_io import save_weights

    paths = []
    for n in range(3):
        torch.manual_seed(n)
        path = str(tmp_path / f"snap{n}.pt")
        save_weights(VertebraeNet(widths=(4, 8, 8, 16)), path, trained=True, training={"step": 100 * (n + 1)})
        paths.append(path)
    out = str(tmp_path / "mean.pt")
    assert export_cli.main(paths + ["--to", out]) == 0
    mean, manifest = load_model(out)
    snaps = [load_model(p)[0].state_dict() for p in paths]
    for name, value in mean.state_dict().items():
        if value.is_floating_point():
            assert torch.allclose(value, sum(s[name] for s in snaps) / 3, atol=1e-6), name
    assert manifest["training"]["averaged_steps"] == [100, 200, 300]
    assert not torch.equal(mean.stem[0].weight, load_model(paths[0])[0].stem[0].weight)

    other = str(tmp_path / "other.pt")
    save_weights(VertebraeNet(widths=(4, 8, 8, 8)), other, trained=True)
    with pytest.raises(ValueError, match="different architectures"):
        export_cli.main([paths[0], other, "--to", str(tmp_path / "bad.pt")])


def test_a_base_model_and_its_fine_tune_export_as_a_weighted_mean_that_names_both(tmp_path):
    """A quarter of the base model and three quarters of its fine-tune: each tensor is that blend, and the
    manifest names both sources with their weights and checksums."""
    from VertebraeLabeling.VertebraeLabelingLib.model_io import save_weights, sha256_of

    paths = []
    for n, name in enumerate(("base.pt", "fine_tuned.pt")):
        torch.manual_seed(n)
        paths.append(str(tmp_path / name))
        save_weights(VertebraeNet(widths=(4, 8, 8, 16)), paths[-1], trained=True)
    out = str(tmp_path / "blend.pt")
    assert export_cli.main(paths + ["--weights", "0.25", "0.75", "--to", out]) == 0
    blend, manifest = load_model(out)
    base, tuned = (load_model(p)[0].state_dict() for p in paths)
    for name, value in blend.state_dict().items():
        if value.is_floating_point():
            assert torch.allclose(value, 0.25 * base[name] + 0.75 * tuned[name], atol=1e-6), name
    sources = manifest["training"]["averaged_sources"]
    assert [(s["path"], s["weight"]) for s in sources] == [("base.pt", 0.25), ("fine_tuned.pt", 0.75)]
    assert sources[1]["sha256"] == sha256_of(paths[1])
    with pytest.raises(SystemExit):
        export_cli.main(paths + ["--weights", "1", "--to", str(tmp_path / "bad.pt")])


def test_a_time_limited_run_stops_cleanly_and_its_snapshots_export_as_their_mean(tmp_path):
    """A batch job with a wall-clock limit: the run stops early with a resumable last.pt, and the raw-weight
    snapshots it kept on the way export as one averaged model."""
    run = str(tmp_path / "timed")
    args = TINY + ["--run-dir", run, "--steps", "1000", "--val-every", "1000", "--save-every", "1000",
                   "--snapshot-every", "1", "--max-minutes", "1e-9"]
    assert train_cli.main(args) == 0
    last = torch.load(os.path.join(run, "last.pt"), weights_only=True)
    assert last["step"] == 1  # the limit was already spent after the first step
    snaps = sorted(os.listdir(os.path.join(run, "snapshots")))
    assert snaps == ["step_1.pt"]
    assert train_cli.main(args + ["--resume"]) == 0
    assert torch.load(os.path.join(run, "last.pt"), weights_only=True)["step"] == 2
    paths = [os.path.join(run, "snapshots", f"step_{n}.pt") for n in (1, 2)]
    out = str(tmp_path / "mean.pt")
    assert export_cli.main(paths + ["--to", out, "--raw"]) == 0
    _, manifest = load_model(out)
    assert manifest["training"]["averaged_steps"] == [1, 2]
