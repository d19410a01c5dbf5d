"""``vertebrae-labeling``: label the vertebrae of a CT from the command line.

Examples::

    vertebrae-labeling ct.nii.gz                         # writes ct.mrk.json next to it
    vertebrae-labeling dicom_folder/ -o out.csv --format csv
    vertebrae-labeling ct.nrrd --format verse --overview ct.png
    vertebrae-labeling pacs_export/ cases.csv --out-dir results/ --jobs 2   # a cohort (see cohort.py)
"""

import argparse
import os
import sys
import time
from typing import Optional

from . import __version__
from .defaults import DEFAULT_ANCHORS, DEFAULT_MIN_PROBABILITY, DEFAULT_MIRROR, DEFAULT_STRIDE
from .errors import CancelledError, VertebraeLabelingError

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_CANCELLED = 0, 1, 2, 130
_EXTENSIONS = {"mrk": ".mrk.json", "verse": "_ctd.json", "csv": ".csv", "dicom-sr": ".sr.dcm"}


def _strip_image_ext(path: str) -> str:
    base = os.path.basename(os.path.normpath(path))
    for ext in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm"):
        if base.lower().endswith(ext):
            return base[: -len(ext)]
    return base


def default_output(ct_path: str, fmt: str) -> str:
    """``<ct folder>/<ct name><format extension>``."""
    folder = os.path.dirname(os.path.abspath(os.path.normpath(ct_path)))
    return os.path.join(folder, _strip_image_ext(ct_path) + _EXTENSIONS[fmt])


def output_problem(path: str) -> Optional[str]:
    """Why ``path`` cannot be written (a folder, under a file, read-only), or None when it can."""
    if os.path.isdir(path):
        return f"{path} is a folder; give a file name with -o"
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):  # the writer creates missing folders: check the first that exists
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        return f"cannot write {path}: {parent} is a file, not a folder"
    if not os.access(parent, os.W_OK):
        return f"cannot write {path}: the folder {parent} is not writable"
    return None


class ProgressBar:
    """A one-line progress bar on stderr (plain lines when stderr is not a terminal)."""

    def __init__(self, stream=None, width: int = 30) -> None:
        self.stream = stream or sys.stderr
        self.width = width
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = time.perf_counter()
        self._last = ""

    def __call__(self, fraction: float, message: str) -> None:
        filled = int(round(self.width * max(0.0, min(1.0, fraction))))
        line = f"[{'#' * filled}{'.' * (self.width - filled)}] {100 * fraction:5.1f}% {message:<16} " \
               f"{time.perf_counter() - self.start:6.1f}s"
        if self.tty:
            self.stream.write("\r" + line)
            if fraction >= 1.0:
                self.stream.write("\n")
        elif message != self._last:
            # Non-terminals (the Slicer module reads this) get one parsable line per step.
            self.stream.write(f"PROGRESS {fraction:.3f} {message}\n")
        self.stream.flush()
        self._last = message


def summary_table(result) -> str:
    """The result as an aligned text table."""
    rows = [f"{'vertebra':<9}{'region':<10}{'x (LPS mm)':>11}{'y (LPS mm)':>11}{'z (LPS mm)':>11}{'confidence':>12}"
            "  how named"]
    for v in result.vertebrae:
        x, y, z = (float(c) for c in v.position_lps)
        rows.append(f"{v.name:<9}{v.region:<10}{x:>11.1f}{y:>11.1f}{z:>11.1f}{v.confidence:>12.2f}"
                    f"  {getattr(v, 'basis', '')}".rstrip())
    if not result.vertebrae:
        rows.append("(no vertebra labeled)")
    return "\n".join(rows)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vertebrae-labeling",
        description="Find and name the vertebrae (C1-S2) of a CT; write their centroids.",
    )
    parser.add_argument("ct_path", nargs="+",
                        help="CT file (.nii/.nii.gz/.nrrd/.mha) or a folder with one DICOM series; with --out-dir, "
                             "any number of files, folders, DICOM trees and CSV lists (a cohort)")
    parser.add_argument("-o", "--output", help="output file (default: next to the CT, named after it)")
    parser.add_argument("--format", choices=sorted(_EXTENSIONS), default="mrk",
                        help="mrk = Slicer markups JSON (LPS), verse = VerSe _ctd.json, csv, dicom-sr = DICOM "
                             "Comprehensive 3D SR for a DICOM input (needs the [dicom] extra) (default: mrk)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    parser.add_argument("--model", help="weights file (.pt with its .json manifest); default: the bundled model")
    parser.add_argument("--overview", metavar="PNG", help="also save a sagittal/coronal picture with the labels")
    parser.add_argument("--stride", type=int, default=DEFAULT_STRIDE,
                        help=f"cranio-caudal block step in 2 mm voxels (default {DEFAULT_STRIDE})")
    parser.add_argument("--min-probability", type=float, default=DEFAULT_MIN_PROBABILITY,
                        help=f"a block's vote counts above this probability (default {DEFAULT_MIN_PROBABILITY})")
    parser.add_argument("--no-mirror", dest="mirror", action="store_false", default=DEFAULT_MIRROR,
                        help="skip the left-right mirrored second look at each block (half the network time, "
                             "a little less accurate)")
    parser.add_argument("--no-anchors", dest="anchors", action="store_false", default=DEFAULT_ANCHORS,
                        help="name the levels by the network alone instead of counting the vertebrae from the "
                             "ribs, the sacrum and C2 (for comparison)")
    parser.add_argument("--exhaustive", action="store_true",
                        help="tile the whole volume instead of following the spine (slower)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace OUT if it exists (by default an existing result, which may hold manual "
                             "corrections, is never replaced)")
    parser.add_argument("--threads", type=int, help="CPU threads for PyTorch (default: all cores)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar, no table")
    group = parser.add_argument_group("cohorts (many CTs in one run)")
    group.add_argument("--out-dir", help="label every case of the inputs into this folder: one result per case "
                                         "(patient/study/series for DICOM), summary.csv/json, series.csv; cases "
                                         "whose result exists are skipped (a stopped run resumes)")
    group.add_argument("--jobs", type=int, default=1, help="cases labeled at once, one process each (default 1)")
    group.add_argument("--scheduler", metavar="ADDRESS",
                       help="run on Dask: 'local' for a LocalCluster of --jobs workers, or a scheduler address "
                            "such as tcp://host:8786 (needs the [cluster] extra)")
    group.add_argument("--shard", metavar="K/N", help="label only the K-th of N shares of the cases (job arrays)")
    group.add_argument("--overviews", action="store_true", help="also save a PNG overview next to each result")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.out_dir or len(args.ct_path) > 1 or args.ct_path[0].lower().endswith(".csv"):
        return main_cohort(args)
    if args.shard or args.scheduler or args.jobs != 1 or args.overviews:
        print("error: --jobs, --scheduler, --shard and --overviews label a cohort: give --out-dir", file=sys.stderr)
        return EXIT_USAGE
    args.ct_path = args.ct_path[0]
    output = args.output or default_output(args.ct_path, args.format)
    problem = output_problem(output)
    if problem:  # say so now, not after minutes of work
        print(f"error: {problem}", file=sys.stderr)
        return EXIT_ERROR
    if os.path.exists(output) and not args.overwrite:
        # A result file may have been corrected by hand in Slicer: never replace it without being asked.
        print(f"error: {output} already exists (it may hold manual corrections); "
              "pass --overwrite to replace it or -o to write elsewhere", file=sys.stderr)
        return EXIT_ERROR
    if args.stride < 1:
        print("error: --stride must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    # Heavy imports after argument parsing, so --help is instant.
    import torch

    from .image_io import read_image
    from .inference import label_ct
    from .model_io import load_model
    from .outputs import write_result

    if args.threads:
        torch.set_num_threads(args.threads)
    progress = None if args.quiet else ProgressBar()
    try:
        source_dicom_files = None
        if args.format == "dicom-sr":
            from .dicom_sr import source_files_of

            source_dicom_files = source_files_of(args.ct_path)
            if not source_dicom_files:
                print("error: --format dicom-sr needs a DICOM input (a folder with the CT series): the report "
                      "refers to the CT's series and frame of reference", file=sys.stderr)
                return EXIT_ERROR
        image = read_image(args.ct_path)
        model, manifest = load_model(args.model, device="cpu")
        result = label_ct(image, model=model, device=args.device, progress=progress, stride=args.stride,
                          min_probability=args.min_probability, exhaustive=args.exhaustive, mirror=args.mirror,
                          anchors=args.anchors)
        write_result(result, output, args.format, reference_image=image, source_dicom_files=source_dicom_files,
                     model_description=str(manifest.get("description", "")))
        if args.overview:
            from .overview import render_overview

            render_overview(image, result, args.overview, title=os.path.basename(os.path.normpath(args.ct_path)))
    except CancelledError as exc:
        print(f"cancelled: {exc}", file=sys.stderr)
        return EXIT_CANCELLED
    except KeyboardInterrupt:
        print("\ncancelled: nothing was written", file=sys.stderr)
        return EXIT_CANCELLED
    except (VertebraeLabelingError, ValueError, RuntimeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if not args.quiet:
        print(summary_table(result))
        print(f"model: {manifest.get('description') or os.path.basename(args.model or 'bundled')}")
        if result.anchors:
            print("anchors: " + "; ".join(result.anchors))
        for message in result.messages:
            print(f"note: {message}")
        timing = ", ".join(f"{k} {v:.1f}s" for k, v in result.timings.items())
        print(f"{len(result.vertebrae)} vertebrae, {result.num_blocks} blocks ({timing})")
        print(f"wrote {output}" + (f" and {args.overview}" if args.overview else ""))
    return EXIT_OK


def _out_dir_problem(out_dir: str) -> Optional[str]:
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        return f"--out-dir {out_dir} is a file, not a folder"
    return output_problem(os.path.join(out_dir, "summary.csv"))


def main_cohort(args: argparse.Namespace) -> int:
    """Label many CTs: every case of the inputs into ``--out-dir`` (see :mod:`cohort`)."""
    from . import cohort

    if not args.out_dir:
        print("error: several inputs or a CSV list make a cohort: give --out-dir for its results", file=sys.stderr)
        return EXIT_USAGE
    if args.output or args.overview:
        print("error: -o and --overview name one file; a cohort writes one result per case under --out-dir "
              "(--overviews for pictures)", file=sys.stderr)
        return EXIT_USAGE
    if args.jobs < 1 or args.stride < 1:
        print("error: --jobs and --stride must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    try:
        shard = cohort.parse_shard(args.shard) if args.shard else None
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    problem = _out_dir_problem(args.out_dir)
    if problem:  # before reading thousands of headers
        print(f"error: {problem}", file=sys.stderr)
        return EXIT_ERROR
    threads = args.threads
    if threads is None and args.jobs > 1 and args.scheduler in (None, "local"):
        threads = max(1, (os.cpu_count() or 1) // args.jobs)  # the cores are shared between the workers
    options = cohort.LabelOptions(fmt=args.format, model=args.model, device=args.device, stride=args.stride,
                                  min_probability=args.min_probability, mirror=args.mirror, anchors=args.anchors,
                                  exhaustive=args.exhaustive, threads=threads, overviews=args.overviews)
    progress = None if args.quiet else ProgressBar()
    try:
        plan = cohort.collect_cases(args.ct_path, progress=progress)
        skipped = [row for row in plan.series_rows if row["decision"] == "skipped"]
        if not args.quiet:
            print(f"{len(plan.cases)} case(s) to label; {len(skipped)} DICOM series or file(s) left out "
                  f"(reasons in {os.path.join(args.out_dir, 'series.csv')})", file=sys.stderr)
            for row in skipped[:20]:
                where = row.get("description") or row.get("path", "")
                print(f"  skipped {where}: {row['reason']}", file=sys.stderr)
            if len(skipped) > 20:
                print(f"  ... and {len(skipped) - 20} more", file=sys.stderr)
        report = cohort.run_cohort(plan, args.out_dir, options, jobs=args.jobs, scheduler=args.scheduler,
                                   shard=shard, overwrite=args.overwrite, progress=progress)
    except KeyboardInterrupt:
        print(f"\ncancelled: finished cases are kept and listed in {args.out_dir}; run the same command again "
              "to label the rest", file=sys.stderr)
        return EXIT_CANCELLED
    except (VertebraeLabelingError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    counts = ", ".join(f"{n} {status}" for status, n in sorted(report.counts().items()))
    if not args.quiet:
        for record in report.failed:
            print(f"failed: {record.case}: {record.error}", file=sys.stderr)
        print(f"{len(report.records)} case(s): {counts}")
        print(f"wrote {report.summary_csv} and {report.summary_json}")
    return EXIT_ERROR if report.failed else EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
