"""The labels as a DICOM Structured Report a PACS can store: Comprehensive 3D SR, TID 1500 measurement report.

One measurement group (TID 1410) per vertebra: its tracking identifier is the level's name ("T12"), the
finding type is SNOMED CT "Vertebra" and the finding site the level's SNOMED CT code (the codes pydicom's
``codes.SCT`` and highdicom use; DICOM has no codes for single sacral segments, so S1 and S2 are both coded
as "Sacrum" and told apart by their tracking identifiers). The vertebra's centre is one SCOORD3D POINT in
the CT's frame of reference (patient coordinates, LPS mm). The report names the labeling software and model
as its observer device and lists the labeled CT series as evidence, keeping the CT's patient, study and
frame of reference UIDs, so a PACS files it with the CT it describes.

Needs the optional ``highdicom`` package (``pip install vertebrae-labeling[dicom]``).
"""

import os
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from .errors import VertebraeLabelingError
from .vertebrae import VERTEBRA_NAMES

#: SNOMED CT codes of the levels (value, meaning), as in DICOM CID 7304 / pydicom's codes.SCT.
VERTEBRA_SCT: dict[str, tuple[str, str]] = {
    "C1": ("14806007", "C1 vertebra"), "C2": ("39976000", "C2 vertebra"), "C3": ("113205007", "C3 vertebra"),
    "C4": ("5329002", "C4 vertebra"), "C5": ("36978003", "C5 vertebra"), "C6": ("36054005", "C6 vertebra"),
    "C7": ("87391001", "C7 vertebra"), "T1": ("64864005", "T1 vertebra"), "T2": ("53733008", "T2 vertebra"),
    "T3": ("1626008", "T3 vertebra"), "T4": ("73071006", "T4 vertebra"), "T5": ("56401006", "T5 vertebra"),
    "T6": ("45296009", "T6 vertebra"), "T7": ("62487009", "T7 vertebra"), "T8": ("11068009", "T8 vertebra"),
    "T9": ("82687006", "T9 vertebra"), "T10": ("7610001", "T10 vertebra"), "T11": ("12989004", "T11 vertebra"),
    "T12": ("23215003", "T12 vertebra"), "L1": ("66794005", "L1 vertebra"), "L2": ("14293000", "L2 vertebra"),
    "L3": ("36470004", "L3 vertebra"), "L4": ("11994002", "L4 vertebra"), "L5": ("49668003", "L5 vertebra"),
    "S1": ("54735007", "Sacrum"), "S2": ("54735007", "Sacrum"),
}
VERTEBRA_FINDING = ("51282000", "Vertebra")
SERIES_DESCRIPTION = "Vertebra labels"


class DicomSRError(VertebraeLabelingError):
    """The report cannot be written: highdicom missing, or the input is not a DICOM series."""


@dataclass
class ReportedPoint:
    """One vertebra read back from a report."""

    name: str
    code: str
    position_lps: np.ndarray
    frame_of_reference_uid: str


def _require_highdicom():
    try:
        import highdicom
        import pydicom
    except ImportError:
        raise DicomSRError("--format dicom-sr needs the optional highdicom package: "
                           "pip install 'vertebrae-labeling[dicom]'") from None
    return highdicom, pydicom


def build_report(result: Any, source_files: list[str], model_description: str = "",
                 series_number: int = 9901) -> Any:
    """The ``highdicom.sr.Comprehensive3DSR`` for ``result`` on the CT series made of ``source_files``.

    Raises:
        DicomSRError: no highdicom, no source files, or the source images lack a frame of reference.
    """
    hd, pydicom = _require_highdicom()
    from pydicom.sr.codedict import codes

    from . import __version__

    if not source_files:
        raise DicomSRError("A DICOM SR refers to the CT it labels: --format dicom-sr needs a DICOM input "
                           "(a folder with the CT series), not an image file.")
    if not result.vertebrae:
        # TID 1500 needs at least one measurement group; a report saying nothing is not sent to a PACS.
        raise DicomSRError("No vertebra was labeled in this CT: there is nothing to report, no DICOM SR written.")
    evidence = [pydicom.dcmread(path, stop_before_pixels=True) for path in source_files]
    frame_uid = str(getattr(evidence[0], "FrameOfReferenceUID", "") or "")
    if not frame_uid:
        raise DicomSRError("The CT series has no Frame of Reference UID, which a 3D point must refer to.")
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=hd.UID(), name="vertebrae-labeling", manufacturer_name="vertebrae-labeling",
        model_name=(model_description or "bundled model")[:64])
    observation_context = hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(observer_type=codes.DCM.Device,
                                                      observer_identifying_attributes=device))
    algorithm = hd.sr.AlgorithmIdentification(name="vertebrae-labeling", version=__version__)
    groups = []
    for vertebra in result.vertebrae:
        value, meaning = VERTEBRA_SCT[vertebra.name]
        point = np.asarray(vertebra.position_lps, dtype=float).reshape(1, 3)
        groups.append(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=vertebra.name),
            referenced_region=hd.sr.ImageRegion3D(graphic_type=hd.sr.GraphicTypeValues3D.POINT,
                                                  graphic_data=point, frame_of_reference_uid=frame_uid),
            finding_type=hd.sr.CodedConcept(VERTEBRA_FINDING[0], "SCT", VERTEBRA_FINDING[1]),
            finding_sites=[hd.sr.FindingSite(anatomic_location=hd.sr.CodedConcept(value, "SCT", meaning))],
            algorithm_id=algorithm,
        ))
    report = hd.sr.MeasurementReport(observation_context=observation_context,
                                     procedure_reported=codes.LN.CTUnspecifiedBodyRegion,
                                     imaging_measurements=groups,
                                     title=codes.DCM.ImagingMeasurementReport)
    return hd.sr.Comprehensive3DSR(
        evidence=evidence, content=report, series_instance_uid=hd.UID(), series_number=series_number,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="vertebrae-labeling",
        is_complete=True, is_final=False, is_verified=False, series_description=SERIES_DESCRIPTION)


def write_dicom_sr(result: Any, path: str, source_files: list[str], model_description: str = "") -> None:
    """Write ``result`` as a DICOM SR file at ``path`` (atomically), referring to the CT in ``source_files``."""
    from .outputs import atomic_output

    report = build_report(result, source_files, model_description)
    with atomic_output(path) as tmp:
        report.save_as(tmp, enforce_file_format=True)


def read_dicom_sr(path: str) -> list[ReportedPoint]:
    """The vertebrae of a report written by :func:`write_dicom_sr` (or any TID 1500 report with 3D points)."""
    hd, _ = _require_highdicom()
    report = hd.sr.srread(path)
    points = []
    for group in report.content.get_planar_roi_measurement_groups():
        region = group.roi
        if region is None or not hasattr(region, "frame_of_reference_uid"):
            continue
        sites = group.finding_sites
        points.append(ReportedPoint(
            name=str(group.tracking_identifier),
            code=str(sites[0].value.value) if sites else "",
            position_lps=np.asarray(region.value, dtype=float).reshape(-1, 3)[0],
            frame_of_reference_uid=str(region.frame_of_reference_uid)))
    return points


def source_files_of(path: str) -> Optional[list[str]]:
    """The DICOM files of the CT series at ``path`` (a folder with one series), or None for an image file."""
    if not os.path.isdir(path):
        return None
    from .dicom_series import series_of_folder

    return series_of_folder(path).files


assert set(VERTEBRA_SCT) == set(VERTEBRA_NAMES)
