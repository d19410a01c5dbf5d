"""Small DICOM trees for the cohort and DICOM SR tests, written with SimpleITK (pydicom only for non-images)."""

import os
from typing import Optional

import numpy as np
import SimpleITK as sitk

_UID_ROOT = "1.2.826.0.1.3680043.8.498."  # pydicom's example root, fine for test data
_counter = [0]


def new_uid() -> str:
    _counter[0] += 1
    return f"{_UID_ROOT}{os.getpid()}.{_counter[0]}.{np.random.default_rng().integers(1 << 40)}"


def write_series(folder: str, image: sitk.Image, *, patient_id: str = "P001", patient_name: str = "Doe^Jane",
                 study_uid: Optional[str] = None, series_uid: Optional[str] = None, series_number: int = 2,
                 description: str = "Abdomen 2mm", modality: str = "CT",
                 image_type: str = "ORIGINAL\\PRIMARY\\AXIAL", sop_class: str = "1.2.840.10008.5.1.4.1.1.2",
                 study_date: str = "20250301", charset: str = "ISO_IR 192", skip: tuple = (),
                 frame_uid: Optional[str] = None, prefix: str = "IM") -> dict:
    """Write ``image`` slice by slice as a DICOM series in ``folder``; returns its UIDs.

    ``skip`` leaves those slice indices out (a series with missing slices).
    """
    os.makedirs(folder, exist_ok=True)
    uids = {"study": study_uid or new_uid(), "series": series_uid or new_uid(), "frame": frame_uid or new_uid(),
            "sops": []}
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    pixels = sitk.Cast(image, sitk.sitkInt16)
    for k in range(image.GetSize()[2]):
        if k in skip:
            continue
        slice_ = pixels[:, :, k]
        position = image.TransformIndexToPhysicalPoint((0, 0, k))
        sop = new_uid()
        uids["sops"].append(sop)
        tags = {
            "0008|0005": charset, "0010|0010": patient_name, "0010|0020": patient_id, "0008|0020": study_date,
            "0020|000d": uids["study"], "0020|000e": uids["series"], "0020|0052": uids["frame"],
            "0008|0060": modality, "0008|0008": image_type, "0008|0016": sop_class, "0008|0018": sop,
            "0020|0011": str(series_number), "0008|103e": description, "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{v:.4f}" for v in position),
            "0020|0037": "\\".join(f"{v:.6f}" for v in (*direction[:, 0], *direction[:, 1])),
            "0018|0050": f"{image.GetSpacing()[2]:.3f}", "0028|0030": f"{image.GetSpacing()[1]}\\{image.GetSpacing()[0]}",
            "0028|1052": "0", "0028|1053": "1", "0008|0070": "Test", "0020|0010": "1", "0008|0050": "A1",
        }
        for tag, value in tags.items():
            slice_.SetMetaData(tag, value)
        path = os.path.join(folder, f"{prefix}{series_number:03d}_{k:04d}.dcm")
        writer.SetFileName(path)
        writer.Execute(slice_)
        if charset != "ISO_IR 192" and not patient_name.isascii():
            # SimpleITK writes text as UTF-8; pydicom encodes it in the file's own character set.
            import pydicom

            ds = pydicom.dcmread(path)
            ds.PatientName = patient_name
            ds.save_as(path)
    return uids


def write_dose_report(path: str, study_uid: str, patient_id: str = "P001") -> None:
    """A radiation dose structured report (no pixel data), as scanners add to every CT study."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.67"  # X-Ray Radiation Dose SR
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = new_uid()
    ds.Modality, ds.PatientID, ds.StudyInstanceUID = "SR", patient_id, study_uid
    ds.SeriesInstanceUID, ds.SeriesDescription = new_uid(), "Dose Report"
    os.makedirs(os.path.dirname(path), exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
