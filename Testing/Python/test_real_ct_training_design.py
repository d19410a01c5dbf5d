"""The real-CT training study's designs: a real CT that scores a run is never one it trained on."""

from benchmarks import real_ct_training as study


def test_each_real_ct_is_held_out_by_exactly_one_fold_and_no_fold_scores_what_it_trained_on():
    folds = study.runs("folds")
    trainable = list(study.TRAIN_CASES) + list(study.MORE_CASES)
    for case in trainable:
        if case == study.PAINTED_PATIENT:
            continue  # the painted map is this patient: every run trains on it
        holding_out = [name for name, spec in folds.items() if case in spec["held_out"]]
        assert holding_out == [study.held_out_run(case, "folds")], case
    for name, spec in folds.items():
        assert not set(spec["real"]) & set(spec["held_out"]), name
    assert set(folds["all_eleven"]["real"]) == set(trainable)
    assert set(folds["all_eleven"]["held_out"]) == set(study.SCORE_ONLY)


def test_leave_one_patient_out_leaves_the_painted_map_out_with_its_patient():
    lopo = study.runs("lopo")
    assert not lopo[f"without_{study.PAINTED_PATIENT}"]["painted"]
    for case in study.TRAIN_CASES:
        assert case in lopo[f"without_{case}"]["held_out"] and case not in lopo[f"without_{case}"]["real"]
    assert all(case in lopo["control"]["held_out"] for case in study.TRAIN_CASES)
