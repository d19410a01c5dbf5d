"""A cohort on Dask distributed: a LocalCluster of two worker processes labels every case, each worker
loading the model once; a scheduler that cannot be reached is a clear error."""

import csv
import json
import os

import pytest
import SimpleITK as sitk
from conftest import make_ct

from VertebraeLabeling.VertebraeLabelingLib import cli

pytest.importorskip("distributed", reason="Dask runs need the [cluster] extra (dask[distributed])")


def test_a_local_cluster_of_two_workers_labels_the_cohort_loading_the_model_once_per_worker(tmp_path):
    inputs = []
    for n in range(6):
        path = tmp_path / f"ct{n}.nii.gz"
        sitk.WriteImage(make_ct(shape=(24, 32, 32), spacing=(1.0, 1.0, 3.0), seed=n), str(path))
        inputs.append(str(path))
    (tmp_path / "broken.nii.gz").write_bytes(b"not a CT")
    out = tmp_path / "results"
    code = cli.main([*inputs, str(tmp_path / "broken.nii.gz"), "--out-dir", str(out), "-q",
                     "--scheduler", "local", "--jobs", "2"])
    assert code == cli.EXIT_ERROR  # the broken file failed, on a worker, and the others went on
    document = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    records = {r["case"]: r for r in document["cases"]}
    assert records["broken"]["status"] == "failed" and "Could not read" in records["broken"]["error"]
    labeled = [records[f"ct{n}"] for n in range(6)]
    assert all(r["status"] == "labeled" and os.path.isfile(r["output"]) for r in labeled)
    workers = {r["process"] for r in records.values()}
    assert os.getpid() not in workers and 1 <= len(workers) <= 2
    assert all(r["model_loads"] == 1 for r in labeled)
    with open(out / "summary.csv", encoding="utf-8") as handle:
        assert len(list(csv.DictReader(handle))) == 7


def test_an_unreachable_scheduler_is_a_clear_error(tmp_path, capsys, monkeypatch):
    from VertebraeLabeling.VertebraeLabelingLib import cohort_dask

    monkeypatch.setattr(cohort_dask, "CONNECT_TIMEOUT_S", 2.0)
    ct = tmp_path / "ct.nii.gz"
    sitk.WriteImage(make_ct(), str(ct))
    code = cli.main([str(ct), "--out-dir", str(tmp_path / "out"), "-q", "--scheduler", "tcp://127.0.0.1:9"])
    assert code == cli.EXIT_ERROR
    assert "Dask scheduler" in capsys.readouterr().err
