"""Labeling a cohort: many CTs in one run, one result per case, a summary table, resumable.

Inputs may be image files, folders (searched recursively for image files and DICOM), whole DICOM trees and
CSV lists (a ``path`` column, or the first column; an optional ``case`` column names the result). In DICOM,
every study gives one case, the series chosen by the rule of :mod:`dicom_series`; every series and file
left out is listed with its reason.

Each case's result goes to ``OUT_DIR/<case><extension>`` (``patient/study/series`` for DICOM), written
atomically, so a case whose result exists is done: a rerun after a crash or Ctrl-C skips it and labels
the rest. ``summary.csv`` / ``summary.json`` (case, status, levels found, review notes, seconds) and
``series.csv`` (every DICOM series and file found, labeled or skipped and why) are rewritten as the run
goes. A case that fails is reported and never stops the others.

The model is loaded once per process: once for a serial run, once per worker with ``jobs`` processes
(:func:`run_cohort`) or Dask workers (:mod:`cohort_dask`).
"""

import csv
import io
import json
import os
import signal
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Optional

from . import dicom_series
from .defaults import DEFAULT_ANCHORS, DEFAULT_MIN_PROBABILITY, DEFAULT_MIRROR, DEFAULT_STRIDE
from .errors import VertebraeLabelingError

IMAGE_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
EXTENSIONS = {"mrk": ".mrk.json", "verse": "_ctd.json", "csv": ".csv", "dicom-sr": ".sr.dcm"}
SUMMARY_FIELDS = ["case", "status", "levels", "num_levels", "review_notes", "seconds", "input", "output", "error"]
SERIES_FIELDS = ["case", "decision", "reason", "patient", "study_uid", "series_uid", "series_number",
                 "description", "modality", "slices", "slice_spacing_mm", "coverage_mm", "path"]
#: Statuses of a case in the summary.
LABELED, DONE_EARLIER, FAILED, NO_CT, NOT_RUN = "labeled", "done earlier", "failed", "no CT to label", "not run"

ProgressCallback = Callable[[float, str], None]


@dataclass
class Case:
    """One CT to label: its name (the result's path under the output folder, '/'-separated) and its source."""

    name: str
    source: str
    dicom_files: Optional[list[str]] = None
    problem: Optional[str] = None  #: known before labeling: the case fails with this message
    study_uid: str = ""
    series_uid: str = ""


@dataclass
class LabelOptions:
    """How every case is labeled and written (the command line's options)."""

    fmt: str = "mrk"
    model: Optional[str] = None
    device: str = "cpu"
    stride: int = DEFAULT_STRIDE
    min_probability: float = DEFAULT_MIN_PROBABILITY
    mirror: bool = DEFAULT_MIRROR
    anchors: bool = DEFAULT_ANCHORS
    exhaustive: bool = False
    threads: Optional[int] = None
    overviews: bool = False


@dataclass
class CaseRecord:
    """One row of the summary."""

    case: str
    status: str
    levels: str = ""
    num_levels: int = 0
    review_notes: str = ""
    seconds: float = 0.0
    input: str = ""
    output: str = ""
    error: str = ""
    process: int = 0  #: id of the process that labeled it
    model_loads: int = 0  #: models that process had loaded when it finished this case

    def row(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in SUMMARY_FIELDS}


@dataclass
class CohortPlan:
    """The cases found in the inputs, and what was left out on the way."""

    cases: list[Case] = field(default_factory=list)
    series_rows: list[dict[str, Any]] = field(default_factory=list)
    not_labeled: list[CaseRecord] = field(default_factory=list)  #: studies with no CT (MR only, ...)


# ---------------------------------------------------------------------------------------------- inputs


def _is_image_file(path: str) -> bool:
    return path.lower().endswith(IMAGE_EXTENSIONS) and not path.lower().endswith(".raw")


def _image_case_name(path: str) -> str:
    base = os.path.basename(os.path.normpath(path))
    for ext in IMAGE_EXTENSIONS:
        if base.lower().endswith(ext):
            base = base[: -len(ext)]
            break
    return dicom_series.safe_name(base, "case")


def read_case_list(path: str) -> list[tuple[str, Optional[str]]]:
    """``(path, case name or None)`` per row of a CSV list; relative paths are relative to the CSV's folder."""
    folder = os.path.dirname(os.path.abspath(path))
    with open(path, newline="", encoding="utf-8-sig") as handle:
        rows = [row for row in csv.reader(handle) if row and any(cell.strip() for cell in row)]
    if not rows:
        raise VertebraeLabelingError(f"The list {path} is empty.")
    header = [cell.strip().lower() for cell in rows[0]]
    path_col = header.index("path") if "path" in header else 0
    case_col = header.index("case") if "case" in header else None
    if "path" in header or "case" in header:
        rows = rows[1:]
    out = []
    for row in rows:
        entry = row[path_col].strip()
        name = row[case_col].strip() if case_col is not None and case_col < len(row) else ""
        # A name becomes a path under the output folder: each part made safe, so none can climb out of it.
        parts = [dicom_series.safe_name(part, "") for part in name.replace("\\", "/").split("/")]
        name = "/".join(part for part in parts if part)
        out.append((entry if os.path.isabs(entry) else os.path.join(folder, entry), name or None))
    return out


def _series_row(series: dicom_series.DicomSeries, decision: str, reason: str, case: str = "") -> dict[str, Any]:
    return {
        "case": case, "decision": decision, "reason": reason,
        "patient": series.tags.get("patient_id", "") or series.tags.get("patient_name", ""),
        "study_uid": series.study_uid, "series_uid": series.series_uid,
        "series_number": series.tags.get("series_number", ""), "description": series.tags.get("series_description", ""),
        "modality": series.modality, "slices": series.num_slices, "slice_spacing_mm": round(series.spacing, 3),
        "coverage_mm": round(series.coverage_mm, 1), "path": os.path.dirname(series.files[0]),
    }


def collect_cases(inputs: Iterable[str], progress: Optional[ProgressCallback] = None) -> CohortPlan:
    """Find the cases in ``inputs`` (files, folders, DICOM trees, CSV lists), one per image file and per
    DICOM study, named uniquely.

    Raises:
        VertebraeLabelingError: an input does not exist or a list cannot be read.
    """
    plan = CohortPlan()
    entries: list[tuple[str, Optional[str]]] = []
    for item in inputs:
        if not os.path.exists(item):
            raise VertebraeLabelingError(f"No such file or folder: {item}")
        if os.path.isfile(item) and item.lower().endswith(".csv"):
            entries.extend(read_case_list(item))
        else:
            entries.append((item, None))
    dicom_files: list[str] = []
    for path, name in entries:
        if not os.path.exists(path):
            plan.cases.append(Case(name or _image_case_name(path), path, problem=f"No such file or folder: {path}"))
        elif os.path.isfile(path) and _is_image_file(path):
            plan.cases.append(Case(name or _image_case_name(path), path))
        elif os.path.isfile(path):
            dicom_files.append(path)
        else:
            for folder, subfolders, names in os.walk(path):
                subfolders.sort()
                for base in sorted(names):
                    full = os.path.join(folder, base)
                    if _is_image_file(full):
                        plan.cases.append(Case(_image_case_name(full) if name is None else name, full))
                    else:
                        dicom_files.append(full)
    if dicom_files:
        _add_dicom_cases(plan, sorted(set(dicom_files)), progress)
    _make_names_unique(plan.cases)
    return plan


def _add_dicom_cases(plan: CohortPlan, files: list[str], progress: Optional[ProgressCallback]) -> None:
    def report(n: int, path: str) -> None:
        if progress is not None:
            progress(n / max(1, len(files)), f"reading DICOM headers {n}/{len(files)}")

    series, skipped_files = dicom_series.scan_files(files, report)
    for skipped in skipped_files:
        plan.series_rows.append({"decision": "skipped", "reason": skipped.reason, "path": skipped.path})
    for study in dicom_series.choose_per_study(series):
        if study.chosen is not None:
            name = dicom_series.case_path(study.chosen)
            plan.cases.append(Case(name, os.path.dirname(study.chosen.files[0]), dicom_files=study.chosen.files,
                                   study_uid=study.study_uid, series_uid=study.chosen.series_uid))
            plan.series_rows.append(_series_row(study.chosen, "labeled", "chosen by the series rule", name))
        else:
            first = study.skipped[0][0]
            name = dicom_series.case_path(first).rsplit("/", 1)[0]
            if study.problem:
                plan.cases.append(Case(name, os.path.dirname(first.files[0]), problem=study.problem,
                                       study_uid=study.study_uid))
            else:
                kinds = sorted({s.modality or "?" for s, _ in study.skipped})
                plan.not_labeled.append(CaseRecord(name, NO_CT, input=os.path.dirname(first.files[0]),
                                                   error=f"the study holds no CT volume ({', '.join(kinds)})"))
        study_name = plan.cases[-1].name if study.chosen is not None or study.problem else name
        for skipped_series, reason in study.skipped:
            plan.series_rows.append(_series_row(skipped_series, "skipped", reason, study_name))


def _make_names_unique(cases: list[Case]) -> None:
    """Two cases with one name (``ct.nii.gz`` in two folders) get ``_2``, ``_3``... in input order."""
    seen: dict[str, int] = {}
    for case in cases:
        key = case.name.lower()
        if key in seen:
            seen[key] += 1
            case.name = f"{case.name}_{seen[key]}"
        else:
            seen[key] = 1


def select_shard(cases: list[Case], shard: tuple[int, int]) -> list[Case]:
    """The cases of shard ``k`` of ``n`` (1-based): every n-th case by name, so shards never overlap."""
    k, n = shard
    return [case for i, case in enumerate(sorted(cases, key=lambda c: c.name)) if i % n == k - 1]


def parse_shard(text: str) -> tuple[int, int]:
    """``"2/8"`` -> ``(2, 8)``; raises ValueError unless 1 <= K <= N."""
    try:
        k, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard takes K/N, e.g. 2/8, not {text!r}") from None
    if not 1 <= k <= n:
        raise ValueError(f"--shard {text}: K must be between 1 and N")
    return k, n


def output_path(out_dir: str, case: Case, fmt: str) -> str:
    return os.path.join(out_dir, *case.name.split("/")) + EXTENSIONS[fmt]


# -------------------------------------------------------------------------------------------- labeling

_MODELS: dict[Any, Any] = {}
_LOADS = [0]


def cached_model(model_path: Optional[str]) -> tuple[Any, dict]:
    """The network, loaded on this process's first case and kept for the next ones."""
    if model_path not in _MODELS:
        from .model_io import load_model

        _MODELS[model_path] = load_model(model_path, device="cpu")
        _LOADS[0] += 1
    return _MODELS[model_path]


def _levels(names: list[str]) -> str:
    """``"T12-L5, S1"`` style: runs of consecutive levels."""
    from .vertebrae import NAME_TO_INDEX, VERTEBRA_NAMES

    indices = sorted(NAME_TO_INDEX[n] for n in names)
    parts: list[str] = []
    start = prev = None
    for k in indices + [None]:
        if start is not None and (k is None or k != prev + 1):
            parts.append(VERTEBRA_NAMES[start] if start == prev else f"{VERTEBRA_NAMES[start]}-{VERTEBRA_NAMES[prev]}")
            start = None
        if k is not None and start is None:
            start = k
        prev = k
    return ", ".join(parts)


def label_case(case: Case, output: str, options: LabelOptions) -> CaseRecord:
    """Label one case and write its result; never raises for a bad case (the record says what went wrong).

    KeyboardInterrupt is not caught: Ctrl-C stops the run, and the result being written is not published.
    """
    t0 = time.perf_counter()
    record = CaseRecord(case.name, FAILED, input=case.source, output=output, process=os.getpid())
    try:
        if case.problem:
            raise VertebraeLabelingError(case.problem)
        import torch

        from .image_io import read_image
        from .inference import label_ct
        from .outputs import write_result

        if options.threads and torch.get_num_threads() != options.threads:
            torch.set_num_threads(options.threads)
        if options.fmt == "dicom-sr" and not case.dicom_files:
            raise VertebraeLabelingError("--format dicom-sr needs a DICOM input (the report refers to the CT's "
                                         "series); this case is an image file.")
        image = dicom_series.read_series_files(case.dicom_files) if case.dicom_files else read_image(case.source)
        model, manifest = cached_model(options.model)
        result = label_ct(image, model=model, device=options.device, stride=options.stride,
                          min_probability=options.min_probability, exhaustive=options.exhaustive,
                          mirror=options.mirror, anchors=options.anchors)
        write_result(result, output, options.fmt, reference_image=image, source_dicom_files=case.dicom_files,
                     model_description=str(manifest.get("description", "")))
        if options.overviews:
            from .overview import render_overview

            render_overview(image, result, output[: -len(EXTENSIONS[options.fmt])] + ".png", title=case.name)
        names = [v.name for v in result.vertebrae]
        record.status, record.levels, record.num_levels = LABELED, _levels(names), len(names)
        record.review_notes = " | ".join(result.messages)
    except (VertebraeLabelingError, ValueError, RuntimeError, OSError, MemoryError) as exc:
        record.error = str(exc) or type(exc).__name__
    except Exception as exc:  # noqa: BLE001 - an unforeseen failure on one CT must not end the cohort
        record.error = f"unexpected {type(exc).__name__}: {exc} (please report it with this case)"
    record.seconds = round(time.perf_counter() - t0, 2)
    record.model_loads = _LOADS[0]
    return record


def _worker_init(threads: Optional[int]) -> None:
    # The parent process decides what Ctrl-C does (stop the pool, write the summary); workers ignore it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if threads:
        import torch

        torch.set_num_threads(threads)


# ----------------------------------------------------------------------------------------------- runs


def _run_serial(todo: list[tuple[Case, str]], options: LabelOptions) -> Iterator[CaseRecord]:
    for case, output in todo:
        yield label_case(case, output, options)


def _run_pool(todo: list[tuple[Case, str]], options: LabelOptions, jobs: int) -> Iterator[CaseRecord]:
    """``jobs`` worker processes, each loading the model once. A worker that dies (out of memory) takes
    its pool down: the cases that were in flight are tried once more in a new pool, then reported failed."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")  # no fork of a process that already runs torch threads
    attempts: dict[str, int] = {}
    pending = list(todo)
    while pending:
        executor = ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_worker_init,
                                       initargs=(options.threads,))
        futures = {executor.submit(label_case, case, output, options): (case, output) for case, output in pending}
        pending = []
        try:
            remaining = set(futures)
            while remaining:
                finished, remaining = wait(remaining, return_when=FIRST_COMPLETED)
                for future in finished:
                    case, output = futures[future]
                    try:
                        yield future.result()
                    except BrokenProcessPool:
                        attempts[case.name] = attempts.get(case.name, 0) + 1
                        if attempts[case.name] >= 2:
                            yield CaseRecord(case.name, FAILED, input=case.source, output=output,
                                             error="the worker process died while labeling it (out of memory?)")
                        else:
                            pending.append((case, output))
        except BaseException:
            workers = list((getattr(executor, "_processes", None) or {}).values())
            for process in workers:
                process.terminate()  # a case in flight is dropped whole: its result was never published
            for process in workers:
                process.join(timeout=10)  # stopped before the caller looks at what was published
            executor.shutdown(wait=False, cancel_futures=True)
            raise
        executor.shutdown(wait=True)


@dataclass
class CohortReport:
    """What a cohort run did."""

    records: list[CaseRecord]
    summary_csv: str
    summary_json: str
    series_csv: str
    interrupted: bool = False

    @property
    def failed(self) -> list[CaseRecord]:
        return [r for r in self.records if r.status == FAILED]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for record in self.records:
            out[record.status] = out.get(record.status, 0) + 1
        return out


def _previous_records(path: str) -> dict[str, dict[str, Any]]:
    """The rows of an earlier run's summary.json, by case (for the levels of cases done earlier)."""
    try:
        with open(path, encoding="utf-8") as handle:
            return {row["case"]: row for row in json.load(handle).get("cases", [])}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def _write_tables(report: CohortReport, plan: CohortPlan, meta: dict[str, Any]) -> None:
    from .outputs import write_text_atomic

    rows = sorted(report.records, key=lambda r: r.case)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=SUMMARY_FIELDS, lineterminator="\n")
    writer.writeheader()
    for record in rows:
        writer.writerow(record.row())
    write_text_atomic(report.summary_csv, buf.getvalue())
    document = dict(meta, interrupted=report.interrupted, counts=report.counts(),
                    cases=[asdict(r) for r in rows], dicom=plan.series_rows)
    write_text_atomic(report.summary_json, json.dumps(document, indent=1, ensure_ascii=False) + "\n")
    if plan.series_rows:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=SERIES_FIELDS, lineterminator="\n", restval="")
        writer.writeheader()
        for row in plan.series_rows:
            writer.writerow(row)
        write_text_atomic(report.series_csv, buf.getvalue())


def run_cohort(plan: CohortPlan, out_dir: str, options: LabelOptions, jobs: int = 1,
               scheduler: Optional[str] = None, shard: Optional[tuple[int, int]] = None, overwrite: bool = False,
               progress: Optional[ProgressCallback] = None, summary_every_s: float = 5.0,
               runner: Optional[Callable[[list[tuple[Case, str]]], Iterator[CaseRecord]]] = None) -> CohortReport:
    """Label every case of ``plan`` not yet done into ``out_dir``; write the summary tables.

    Args:
        jobs: worker processes on this machine (1: in this process).
        scheduler: ``"local"`` for a Dask LocalCluster of ``jobs`` workers, or a Dask scheduler's address
            (``tcp://host:8786``); None runs without Dask.
        shard: ``(k, n)``: label only shard k of n (plain job arrays); the tables are named after the shard.
        overwrite: label cases whose result exists again (by default they are done and skipped).
        runner: replaces the executor (tests).
    Raises:
        KeyboardInterrupt after writing the tables (``report.interrupted``) when the user pressed Ctrl-C.
    """
    cases = select_shard(plan.cases, shard) if shard else list(plan.cases)
    stem = f"summary-shard-{shard[0]}-of-{shard[1]}" if shard else "summary"
    report = CohortReport([], os.path.join(out_dir, stem + ".csv"), os.path.join(out_dir, stem + ".json"),
                          os.path.join(out_dir, "series.csv" if not shard else f"series-shard-{shard[0]}-of-{shard[1]}.csv"))
    previous = _previous_records(report.summary_json)
    meta = {"started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "out_dir": os.path.abspath(out_dir),
            "format": options.fmt, "jobs": jobs, "scheduler": scheduler, "shard": list(shard) if shard else None}
    todo: list[tuple[Case, str]] = []
    for case in cases:
        output = output_path(out_dir, case, options.fmt)
        if os.path.exists(output) and not overwrite:
            earlier = previous.get(case.name, {})
            report.records.append(CaseRecord(
                case.name, DONE_EARLIER, levels=earlier.get("levels", ""), num_levels=earlier.get("num_levels", 0),
                review_notes=earlier.get("review_notes", ""), seconds=earlier.get("seconds", 0.0),
                input=case.source, output=output))
        else:
            todo.append((case, output))
    report.records.extend(plan.not_labeled if not shard else [])
    total, done = len(todo), 0
    if runner is None:
        if scheduler:
            from .cohort_dask import run_dask

            def runner(items):
                return run_dask(items, options, scheduler, jobs)
        elif jobs > 1:
            def runner(items):
                return _run_pool(items, options, jobs)
        else:
            def runner(items):
                return _run_serial(items, options)
    if progress is not None:
        progress(0.0, f"0/{total} cases")
    last_write = time.monotonic()
    _write_tables(report, plan, meta)
    results = runner(todo)
    try:
        for record in results:
            report.records.append(record)
            done += 1
            if progress is not None:
                failed = len(report.failed)
                progress(done / max(1, total), f"{done}/{total} cases" + (f", {failed} failed" if failed else ""))
            if time.monotonic() - last_write >= summary_every_s:
                _write_tables(report, plan, meta)
                last_write = time.monotonic()
    except KeyboardInterrupt:
        report.interrupted = True
        close = getattr(results, "close", None)
        if close is not None:
            close()  # stop the workers before reading what they published
        finished = {r.case for r in report.records}
        for case, output in todo:
            if case.name in finished:
                continue
            if os.path.exists(output):
                # Published by a worker in the moment Ctrl-C came, before its record reached this process:
                # the result is whole (outputs are written atomically), only its summary row is short.
                report.records.append(CaseRecord(
                    case.name, LABELED, input=case.source, output=output,
                    review_notes="written as the run was interrupted: its levels are in the result file"))
            else:
                report.records.append(CaseRecord(case.name, NOT_RUN, input=case.source, output=output))
        _write_tables(report, plan, meta)
        raise
    _write_tables(report, plan, meta)
    return report
