"""Reading CT images (NIfTI, NRRD, MHA, DICOM series) and checking that they can be labeled.

Everything is read with SimpleITK, so the returned image carries its geometry in LPS
(origin, spacing, direction), whatever the file format stores on disk.
"""

import os
import zlib
from typing import Optional

import numpy as np
import SimpleITK as sitk

from .errors import InputImageError

#: Images with more voxels than this are refused before any work (a 1024×1024×2000 CT
#: still passes; anything larger is almost certainly not a single CT series).
MAX_VOXELS: int = 1024 * 1024 * 2100
#: A CT covers at most this much in any direction (mm); a larger extent means broken spacing.
MAX_EXTENT_MM: float = 2500.0
#: The 1st intensity percentile of a CT lies at or below this (HU): every body holds fat (-100 HU) or air.
NO_FAT_HU: float = -50.0


def read_image(path: str) -> sitk.Image:
    """Read a CT from a file (NIfTI, NRRD, MHA, ...) or a folder holding one DICOM series.

    Raises:
        InputImageError: the path is missing, unreadable, or holds no (or several) image series.
    """
    if not os.path.exists(path):
        raise InputImageError(f"No such file or folder: {path}")
    if os.path.isdir(path):
        return _read_dicom_folder(path)
    if path.lower().endswith(".gz"):
        _check_gzip_complete(path)
    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(path)
        reader.ReadImageInformation()
        n_voxels = int(np.prod(reader.GetSize()))
        if n_voxels > MAX_VOXELS:
            raise InputImageError(
                f"{os.path.basename(path)} has {n_voxels:,} voxels, more than the {MAX_VOXELS:,} "
                "this tool accepts; crop or downsample it first."
            )
        return reader.Execute()
    except InputImageError:
        raise
    except RuntimeError as exc:  # SimpleITK reports every read problem as RuntimeError
        raise InputImageError(
            f"Could not read {os.path.basename(path)} as an image (corrupt, truncated, or an unsupported "
            f"format): {_first_line(str(exc))}"
        ) from None


def _check_gzip_complete(path: str) -> None:
    """Raise if a .gz file is truncated or corrupt.

    ITK's NIfTI reader fills a truncated .nii.gz with zeros without complaint, which would label a
    half-empty CT; decompressing the stream once (discarding the output) catches that for about a
    second per 100 MB.
    """
    decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        with open(path, "rb") as handle:
            while True:
                chunk = handle.read(1 << 22)
                if not chunk:
                    break
                decompressor.decompress(chunk, 0)
                while decompressor.unconsumed_tail:
                    decompressor.decompress(decompressor.unconsumed_tail, 0)
                if decompressor.eof:
                    break
    except zlib.error as exc:
        raise InputImageError(f"Could not read {os.path.basename(path)}: the compressed data is corrupt ({exc}).") from None
    if not decompressor.eof:
        raise InputImageError(f"Could not read {os.path.basename(path)}: the file is truncated (incomplete download or copy?).")


def _read_dicom_folder(folder: str) -> sitk.Image:
    series_ids: list[str] = list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(folder) or [])
    if not series_ids:
        raise InputImageError(f"The folder {folder} holds no DICOM series.")
    if len(series_ids) > 1:
        # Picking one silently could label the wrong series (e.g. a scout); ask instead.
        raise InputImageError(
            f"The folder {folder} holds {len(series_ids)} DICOM series; put the CT series in a folder of its own."
        )
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder, series_ids[0])
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        return reader.Execute()
    except RuntimeError as exc:
        raise InputImageError(f"Could not read the DICOM series in {folder}: {_first_line(str(exc))}") from None


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else text


def validate_ct(image: sitk.Image, name: Optional[str] = None) -> None:
    """Check that ``image`` is a 3-D CT in Hounsfield units that the pipeline can label.

    Raises:
        InputImageError: with a message saying what is wrong and what to do about it.
    """
    what = name or "The image"
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputImageError(f"{what} has {image.GetNumberOfComponentsPerPixel()} values per voxel (colour or vector "
                              "image); a CT has one.")
    if image.GetDimension() != 3:
        raise InputImageError(f"{what} is {image.GetDimension()}-D; a 3-D CT volume is needed.")
    size = image.GetSize()
    if min(size) < 2 or sorted(size)[1] < 16:
        raise InputImageError(f"{what} is {size[0]}×{size[1]}×{size[2]} voxels: a single slice or a thin strip, "
                              "not a 3-D CT volume.")
    n_voxels = int(np.prod(size))
    if n_voxels > MAX_VOXELS:
        raise InputImageError(f"{what} has {n_voxels:,} voxels, more than the {MAX_VOXELS:,} this tool accepts.")
    spacing = np.asarray(image.GetSpacing(), dtype=float)
    if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise InputImageError(f"{what} has an invalid voxel spacing {tuple(spacing)}.")
    extent = spacing * np.asarray(size)
    if np.any(extent > MAX_EXTENT_MM):
        raise InputImageError(f"{what} spans {tuple(np.round(extent))} mm, larger than a body; its spacing is wrong.")
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    if not np.all(np.isfinite(direction)) or abs(abs(np.linalg.det(direction)) - 1.0) > 1e-3:
        raise InputImageError(f"{what} has an invalid orientation (direction matrix is not a rotation).")

    array = sitk.GetArrayViewFromImage(image)
    if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
        bad = int(np.count_nonzero(~np.isfinite(array)))
        raise InputImageError(f"{what} contains {bad:,} NaN or infinite voxels; a CT has none.")
    # Percentiles on a strided sample: exact enough to judge the intensity range, cheap on 1 GB volumes.
    sample = np.asarray(array[:: max(1, size[2] // 64), ::4, ::4], dtype=np.float32)
    lo, p50, hi = np.percentile(sample, [1, 50, 99.9])
    if float(array.max()) == float(array.min()):
        raise InputImageError(f"{what} is empty: every voxel has the value {float(array.min()):g}.")
    # No bright voxel at all is not refused: a CT without bone (soft tissue only) is still a CT; the
    # spine search then finds nothing and the run ends with "no spine found", no labels, exit 0.
    # Fat (-100 HU), not air: a spine CT reconstructed with a small field of view inside the body has no air,
    # but it always has paraspinal fat; an MRI, a PET, a mask or raw CT values never go below zero.
    if lo > NO_FAT_HU:
        raise InputImageError(
            f"{what} has no fat or air (1st percentile {lo:.0f}): it does not look like a CT in Hounsfield units "
            "(an MRI, a PET, or a CT without its rescale slope/intercept?)."
        )
    if hi > 40000 or lo < -5000:
        raise InputImageError(
            f"{what} has values from {lo:.0f} to {hi:.0f}, far outside the Hounsfield range of a CT."
        )


def is_oblique(image: sitk.Image, tolerance: float = 1e-3) -> bool:
    """True when the image axes are not aligned with the patient axes (a tilted gantry or a rotated volume)."""
    direction = np.abs(np.asarray(image.GetDirection(), dtype=float).reshape(3, 3))
    return bool(np.any((direction > tolerance) & (direction < 1 - tolerance)))
