"""Finding the CT series in a DICOM tree and choosing, per study, the one to label.

A PACS export holds much besides the CT that should be labeled: localizers (scouts), dose reports,
secondary captures, MR and PET series, reformats, thin and thick reconstructions of the same scan. This
module reads the header of every file once (with SimpleITK, no pixel data), groups the images into series
and applies one stated rule per study:

1. Only CT image series are candidates. Skipped, each with its reason: other modalities (MR, PT, ...),
   localizers / scouts (ImageType LOCALIZER or SCOUT), secondary captures and screen shots (their SOP
   class), non-image objects (dose reports and other structured reports, presentation states: files
   SimpleITK cannot read as an image), series with fewer than :data:`MIN_SLICES` slices, series with
   missing or duplicate slices (a gap in the slice positions larger than 1.5 times the usual step).
   Files of one series UID that differ in slice size or orientation are separate stacks, each judged alone.
2. Axial series (slice normal within :data:`AXIAL_TOLERANCE_DEG` of the head-foot axis) come first;
   a sagittal or coronal series is taken only when the study has no axial one.
3. Most coverage along the slice normal: series covering at least :data:`COVERAGE_SHARE` of the
   largest coverage count as equal (naming counts levels from the ribs and the sacrum, so a longer
   stretch of spine gives surer names).
4. Thinnest slice spacing, then ORIGINAL before DERIVED images, then more slices, then the lower series
   number (so the choice never depends on the order files were found in).
"""

import hashlib
import logging
import os
import re
import unicodedata
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import SimpleITK as sitk

from .errors import InputImageError

#: A CT series with fewer slices is not a volume to label (a localizer, a single key image, a partial export).
MIN_SLICES: int = 16
#: A slice normal within this angle (degrees) of the head-foot axis makes an axial series.
AXIAL_TOLERANCE_DEG: float = 10.0
#: Series covering at least this share of the study's largest coverage count as covering it.
COVERAGE_SHARE: float = 0.9
#: A step between neighbouring slices larger than this many times the usual step means slices are missing.
GAP_FACTOR: float = 1.5

CT_IMAGE_STORAGE = ("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2.1", "1.2.840.10008.5.1.4.1.1.2.2")
#: Reasons that mean a CT volume is there but broken: a study with only such series is a failed case.
BROKEN_SERIES = ("missing slices", "duplicate", "slices at the same position")
_SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"
#: Files that are not DICOM objects, ignored without a report entry of their own.
_NOT_DICOM_NAMES = ("DICOMDIR",)

_TAGS = {
    "patient_id": "0010|0020", "patient_name": "0010|0010", "study_uid": "0020|000d", "study_date": "0008|0020",
    "study_description": "0008|1030", "series_uid": "0020|000e", "series_number": "0020|0011",
    "series_description": "0008|103e", "modality": "0008|0060", "image_type": "0008|0008",
    "sop_class_uid": "0008|0016", "sop_instance_uid": "0008|0018", "frame_of_reference_uid": "0020|0052",
    "slice_thickness": "0018|0050", "charset": "0008|0005",
}
# DICOM defined terms of Specific Character Set -> Python codecs (the single-byte and UTF-8 ones PACS use).
_CHARSETS = {
    "": "latin-1", "ISO_IR 6": "ascii", "ISO_IR 100": "latin-1", "ISO_IR 101": "iso8859_2",
    "ISO_IR 109": "iso8859_3", "ISO_IR 110": "iso8859_4", "ISO_IR 144": "iso8859_5", "ISO_IR 127": "iso8859_6",
    "ISO_IR 126": "iso8859_7", "ISO_IR 138": "iso8859_8", "ISO_IR 148": "iso8859_9", "ISO_IR 203": "iso8859_15",
    "ISO_IR 13": "shift_jis", "ISO_IR 166": "tis_620", "ISO_IR 192": "utf-8", "GB18030": "gb18030", "GBK": "gbk",
}


@dataclass
class DicomFile:
    """The header of one DICOM image file: the tags the choice needs and its geometry."""

    path: str
    tags: dict[str, str]
    size: tuple[int, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]


@dataclass
class DicomSeries:
    """One image series (files sharing series UID, slice size and orientation), sorted along its normal."""

    files: list[str]
    tags: dict[str, str]
    positions: list[float]
    direction: tuple[float, ...]
    size: tuple[int, ...]
    part: int = 0  #: >0 when one series UID holds several stacks (different slice size or orientation)

    @property
    def study_uid(self) -> str:
        return self.tags.get("study_uid", "")

    @property
    def series_uid(self) -> str:
        return self.tags.get("series_uid", "")

    @property
    def frame_of_reference_uid(self) -> str:
        return self.tags.get("frame_of_reference_uid", "")

    @property
    def modality(self) -> str:
        return self.tags.get("modality", "").upper()

    @property
    def num_slices(self) -> int:
        return len(self.files) if len(self.files) > 1 else int(self.size[2]) if len(self.size) > 2 else 1

    @property
    def spacing(self) -> float:
        """Median step between slice positions (mm); the slice thickness tag for a single file."""
        if len(self.positions) > 1:
            return float(np.median(np.diff(self.positions)))
        return _float(self.tags.get("slice_thickness"), 0.0)

    @property
    def coverage_mm(self) -> float:
        if len(self.positions) > 1:
            return float(self.positions[-1] - self.positions[0])
        return self.spacing * max(0, self.num_slices - 1)

    @property
    def is_axial(self) -> bool:
        normal = np.asarray(self.direction, dtype=float).reshape(3, 3)[:, 2]
        return bool(abs(normal[2]) >= np.cos(np.radians(AXIAL_TOLERANCE_DEG)))

    @property
    def is_original(self) -> bool:
        return self.tags.get("image_type", "").upper().startswith("ORIGINAL")

    @property
    def label(self) -> str:
        """``series 3 "Abdomen 2mm" (CT, 120 slices)`` for messages."""
        number = self.tags.get("series_number", "") or "?"
        description = self.tags.get("series_description", "")
        text = f"series {number}" + (f' "{description}"' if description else "")
        return f"{text} ({self.modality or 'no modality'}, {self.num_slices} slices)"

    def problem(self) -> Optional[str]:
        """Why this series is not a CT to label, or None when it is one."""
        image_type = self.tags.get("image_type", "").upper().split("\\")
        sop_class = self.tags.get("sop_class_uid", "")
        if sop_class.startswith(_SECONDARY_CAPTURE_PREFIX):
            return "secondary capture (a screen shot or a scanned page, not a CT volume)"
        if self.modality != "CT":
            return f"not a CT (modality {self.modality or 'missing'})"
        if "LOCALIZER" in image_type or "SCOUT" in image_type:
            return "localizer (scout)"
        if sop_class and sop_class not in CT_IMAGE_STORAGE:
            return f"not a CT image storage object (SOP class {sop_class})"
        if self.num_slices < MIN_SLICES:
            return f"only {self.num_slices} slice(s), fewer than the {MIN_SLICES} of a CT volume"
        return self._gap_problem()

    def _gap_problem(self) -> Optional[str]:
        if len(self.positions) < 2:
            return None
        steps = np.diff(self.positions)
        usual = float(np.median(steps))
        if usual <= 1e-3:
            return "slices at the same position (duplicates or several acquisitions in one series)"
        duplicates = int(np.count_nonzero(steps < 0.1 * usual))
        if duplicates:
            return f"duplicate slice positions: {duplicates} slice(s) repeat a position (several acquisitions in one series?)"
        gaps = steps > GAP_FACTOR * usual
        if np.any(gaps):
            missing = int(round(float(np.sum(steps[gaps] / usual - 1))))
            first = int(np.argmax(gaps))
            return (f"missing slices: about {missing} missing, the first gap {steps[first]:.1f} mm after "
                    f"slice {first + 1} where the usual step is {usual:.2f} mm")
        return None


@dataclass
class SkippedFile:
    """A file that holds no image series: why it was left out."""

    path: str
    reason: str


@dataclass
class StudyChoice:
    """What was chosen in one study, and every other series with the reason it was not."""

    study_uid: str
    tags: dict[str, str]
    chosen: Optional[DicomSeries] = None
    skipped: list[tuple[DicomSeries, str]] = field(default_factory=list)

    @property
    def problem(self) -> Optional[str]:
        """Why nothing was chosen although the study has CT series (None when a series was chosen or the
        study holds no CT at all)."""
        if self.chosen is not None:
            return None
        ct_reasons = [reason for _, reason in self.skipped if reason.startswith(BROKEN_SERIES)]
        if ct_reasons:
            return "no CT series to label: " + "; ".join(ct_reasons)
        return None


def _float(text: Optional[str], default: float) -> float:
    try:
        return float(str(text).split("\\")[0])
    except (TypeError, ValueError):
        return default


def decode_text(value: str, charset: str) -> str:
    """A tag value as the text it stands for.

    SimpleITK hands non-UTF-8 bytes over as surrogate escapes; they are decoded here with the file's
    Specific Character Set (Latin-1 names from older PACS come out right instead of as escapes).
    """
    raw = value.encode("utf-8", "surrogateescape")
    codec = _CHARSETS.get(charset.split("\\")[-1].strip().upper(), "latin-1")
    try:
        return raw.decode(codec).strip()
    except (UnicodeDecodeError, LookupError):
        return raw.decode("latin-1").strip()


def read_header(path: str) -> DicomFile:
    """Read the header of one DICOM image file (no pixel data).

    Raises:
        RuntimeError: SimpleITK cannot read the file as an image.
    """
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    reader.SetImageIO("GDCMImageIO")
    reader.ReadImageInformation()
    keys = set(reader.GetMetaDataKeys())
    charset = reader.GetMetaData(_TAGS["charset"]).strip() if _TAGS["charset"] in keys else ""
    tags = {name: decode_text(reader.GetMetaData(tag), charset) for name, tag in _TAGS.items() if tag in keys}
    return DicomFile(path, tags, tuple(reader.GetSize()), tuple(reader.GetOrigin()), tuple(reader.GetDirection()))


def _why_not_an_image(path: str) -> Optional[str]:
    """The reason a file SimpleITK cannot read is left out; None for a file that is not DICOM at all."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    if head[128:132] != b"DICM":
        return None
    try:
        import pydicom  # optional: only to say what a non-image object is
    except ImportError:
        return "a DICOM object without an image SimpleITK can read (a report, a dose summary, or a broken file)"
    logger = logging.getLogger("pydicom")
    level = logger.level
    try:
        # A truncated file is reported in the table, not warned about on the console.
        logger.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as exc:  # noqa: BLE001 - any parse error means the file is broken
        return f"broken DICOM file ({str(exc).splitlines()[0][:120]})"
    finally:
        logger.setLevel(level)
    modality = str(getattr(ds, "Modality", "") or "")
    description = str(getattr(ds, "SeriesDescription", "") or "")
    if modality == "SR" or str(getattr(ds, "SOPClassUID", "")).startswith("1.2.840.10008.5.1.4.1.1.88"):
        sop_name = str(getattr(getattr(ds, "SOPClassUID", None), "name", ""))
        kind = "dose report" if "dose" in (description + sop_name).lower() else "structured report"
        return f"{kind} (modality {modality or 'SR'}), not an image"
    if not modality and "SOPClassUID" not in ds:
        return "broken DICOM file (no SOP class, no modality)"
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        return f"DICOM object without pixel data (modality {modality or 'missing'})"
    return f"broken or unsupported DICOM image (modality {modality or 'missing'})"


def scan_tree(root: str, progress: Optional[Callable[[int, str], None]] = None
              ) -> tuple[list[DicomSeries], list[SkippedFile]]:
    """Read every file's header under ``root`` (a folder, searched recursively, or one file); see :func:`scan_files`."""
    paths = [root] if os.path.isfile(root) else sorted(
        os.path.join(folder, name) for folder, _, names in os.walk(root) for name in names)
    return scan_files(paths, progress)


def scan_files(paths: list[str], progress: Optional[Callable[[int, str], None]] = None
               ) -> tuple[list[DicomSeries], list[SkippedFile]]:
    """Read the header of each file and group the images into series.

    Args:
        progress: called as ``progress(files_read, path)`` now and then.
    Returns:
        The series found (sorted by study, series number) and the DICOM files that hold no image, with
        why; files that are not DICOM at all (a README, a DICOMDIR) are left out silently.
    """
    headers: list[DicomFile] = []
    skipped: list[SkippedFile] = []
    for n, path in enumerate(paths):
        if os.path.basename(path).upper() in _NOT_DICOM_NAMES or os.path.basename(path).startswith("."):
            continue
        try:
            headers.append(read_header(path))
        except RuntimeError:
            reason = _why_not_an_image(path)
            if reason is not None:
                skipped.append(SkippedFile(path, reason))
        if progress is not None and n % 200 == 0:
            progress(n, path)
    return group_series(headers), skipped


def group_series(headers: list[DicomFile]) -> list[DicomSeries]:
    """Group file headers into series and sort each along its slice normal."""
    groups: dict[tuple, list[DicomFile]] = defaultdict(list)
    for header in headers:
        key = (header.tags.get("series_uid", "") or os.path.dirname(header.path), header.size[:2],
               tuple(np.round(header.direction, 3)), len(header.size) > 2 and header.size[2] > 1)
        groups[key].append(header)
    parts: dict[str, int] = defaultdict(int)
    out = []
    for key in sorted(groups, key=lambda k: (k[0], -len(groups[k]))):
        members = groups[key]
        normal = np.asarray(members[0].direction, dtype=float).reshape(3, 3)[:, 2]
        members.sort(key=lambda h: (float(np.dot(h.origin, normal)), h.path))
        series = DicomSeries(
            files=[h.path for h in members], tags=dict(members[0].tags),
            positions=[float(np.dot(h.origin, normal)) for h in members] if len(members) > 1 else [],
            direction=members[0].direction, size=members[0].size, part=parts[key[0]])
        parts[key[0]] += 1
        out.append(series)
    out.sort(key=lambda s: (s.study_uid, _float(s.tags.get("series_number"), 1e9), s.series_uid, s.part))
    return out


def _rank(series: DicomSeries, best_coverage: float) -> tuple:
    covers = series.coverage_mm >= COVERAGE_SHARE * best_coverage
    return (not covers, series.spacing, not series.is_original, -series.num_slices,
            _float(series.tags.get("series_number"), 1e9), series.series_uid)


def choose_per_study(series_list: list[DicomSeries]) -> list[StudyChoice]:
    """Apply the module's rule: per study, the series to label and every other one with its reason."""
    studies: dict[str, StudyChoice] = {}
    for series in series_list:
        study = studies.setdefault(series.study_uid, StudyChoice(series.study_uid, dict(series.tags)))
        reason = series.problem()
        if reason is not None:
            study.skipped.append((series, reason))
    for study in studies.values():
        rejected = {id(s) for s, _ in study.skipped}
        candidates = [s for s in series_list if s.study_uid == study.study_uid and id(s) not in rejected]
        axial = [s for s in candidates if s.is_axial]
        pool = axial or candidates
        for series in candidates:
            if not any(series is s for s in pool):
                study.skipped.append((series, "not axial (the study has an axial CT series)"))
        if not pool:
            continue
        best_coverage = max(s.coverage_mm for s in pool)
        pool.sort(key=lambda s: _rank(s, best_coverage))
        study.chosen = pool[0]
        for series in pool[1:]:
            if series.coverage_mm < COVERAGE_SHARE * best_coverage:
                why = f"covers {series.coverage_mm:.0f} mm, less than the {best_coverage:.0f} mm of {pool[0].label}"
            elif series.spacing > pool[0].spacing + 1e-3:
                why = f"thicker slices ({series.spacing:.2f} mm) than {pool[0].label} ({pool[0].spacing:.2f} mm)"
            else:
                why = f"same coverage and slices as {pool[0].label}, which comes first by image type or number"
            study.skipped.append((series, why))
    return list(studies.values())


def read_series_files(files: list[str]) -> sitk.Image:
    """Read the pixel data of one series (its files in slice order) into one image.

    Raises:
        InputImageError: a file is unreadable or the slices do not make one volume.
    """
    try:
        if len(files) == 1:
            return sitk.ReadImage(files[0])
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(files)
        return reader.Execute()
    except RuntimeError as exc:
        lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
        raise InputImageError(f"Could not read the DICOM series in {os.path.dirname(files[0])}: "
                              f"{lines[-1] if lines else exc}") from None


def safe_name(text: str, fallback: str, limit: int = 64) -> str:
    """``text`` as one file-name component: letters (any script), digits, ``-`` ``_`` ``.``; others become ``_``."""
    text = unicodedata.normalize("NFC", text or "")
    text = "".join(c if (c.isalnum() or c in "-_.") else "_" for c in text)
    text = re.sub(r"_+", "_", text).strip("_.")
    return text[:limit].rstrip("_.") or fallback


def case_path(series: DicomSeries) -> str:
    """``patient/study/series``: the name of a DICOM case and of its result files (relative, with '/')."""
    tags = series.tags
    patient = safe_name(tags.get("patient_id", "") or tags.get("patient_name", "").replace("^", " "),
                        "unknown-patient")
    short = hashlib.sha1(series.study_uid.encode()).hexdigest()[:6]
    study = safe_name("_".join(t for t in (tags.get("study_date", ""), tags.get("study_description", ""), short)
                               if t), short)
    number = tags.get("series_number", "").strip()
    series_name = safe_name(f"S{number}_{tags.get('series_description', '')}" if number
                            else tags.get("series_description", ""), "series")
    if series.part:
        series_name += f"_part{series.part + 1}"
    return f"{patient}/{study}/{series_name}"


def series_of_folder(folder: str) -> DicomSeries:
    """The one image series in ``folder`` (for the single-CT path, which labels a folder of one series)."""
    found, _ = scan_tree(folder)
    if len(found) != 1:
        raise InputImageError(f"The folder {folder} holds {len(found)} image series; one was expected.")
    return found[0]
