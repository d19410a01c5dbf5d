"""Resampling a CT onto the network's canonical 2 mm grid and normalising it (Qin et al., III.A).

The canonical grid is axis-aligned in LPS with direction ``diag(1, 1, -1)``: the numpy array
``array[k, j, i]`` has axis 0 running superior → inferior (cranio-caudal, the LSTM's sequence
axis), axis 1 anterior → posterior and axis 2 right → left. Any input orientation (RAS, LPS, PIR,
oblique) is resampled onto it, so the network always sees the spine the same way up.
"""

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from .errors import InputImageError

WORKING_SPACING_MM: float = 2.0
AIR_HU: float = -1000.0
#: Canonical direction: i → +x (left), j → +y (posterior), k → -z (inferior).
CANONICAL_DIRECTION: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
_AXIS_SIGN = np.array([1.0, 1.0, -1.0])  # canonical index axis (i, j, k) → LPS axis sign
#: The volume mean and standard deviation (HU) that :func:`zscore` divides by are clamped to these ranges:
#: the 1st..99th percentiles over 100 generated training CTs (mean -838..-111, std 331..545), which
#: cover the real CTs we have (abdomen -355/455, chest CTA -330/476, chest CT -703/436). The paper's
#: z-score makes a CT's appearance depend on its field of view: a spine CT reconstructed inside the body
#: (no air) has mean about +50 and std about 150, so bone would sit at 6-7 standard deviations instead of
#: the 3 the network learned, and a real lumbar crop of that kind got no label at all. Inside the ranges
#: nothing changes.
ZSCORE_MEAN_RANGE_HU: tuple[float, float] = (-850.0, -100.0)
ZSCORE_STD_RANGE_HU: tuple[float, float] = (300.0, 550.0)


@dataclass
class CanonicalVolume:
    """A CT on the canonical 2 mm grid.

    Attributes:
        hu: Hounsfield units, float32, shape (K, J, I), values below -1000 clamped.
        origin_lps: LPS position (mm) of voxel (k, j, i) = (0, 0, 0).
        spacing: grid spacing in mm (isotropic).
    """

    hu: np.ndarray
    origin_lps: np.ndarray
    spacing: float = WORKING_SPACING_MM

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.hu.shape)  # type: ignore[return-value]

    def index_to_lps(self, kji: np.ndarray) -> np.ndarray:
        """Map continuous array indices (..., 3) in (k, j, i) order to LPS millimetres (..., 3)."""
        kji = np.asarray(kji, dtype=float)
        ijk = kji[..., ::-1]
        return self.origin_lps + ijk * self.spacing * _AXIS_SIGN

    def lps_to_index(self, lps: np.ndarray) -> np.ndarray:
        """Map LPS millimetres (..., 3) to continuous array indices (..., 3) in (k, j, i) order."""
        ijk = (np.asarray(lps, dtype=float) - self.origin_lps) / (self.spacing * _AXIS_SIGN)
        return ijk[..., ::-1]

    def normalized(self) -> np.ndarray:
        """Zero-mean, unit-variance copy of :attr:`hu` (the paper's normalisation, see :func:`zscore`), float32."""
        return zscore(self.hu)


def zscore(hu: np.ndarray) -> np.ndarray:
    """Clamp below air and scale to zero mean and unit variance over the whole volume.

    The mean and standard deviation used are clamped to :data:`ZSCORE_MEAN_RANGE_HU` and
    :data:`ZSCORE_STD_RANGE_HU`, so a CT whose field of view holds little or no air is scaled like the CTs
    the network was trained on; for those the result is the plain z-score.
    """
    clamped = np.maximum(hu, AIR_HU).astype(np.float32, copy=False)
    mean, std = zscore_statistics(clamped)
    return ((clamped - mean) / std).astype(np.float32, copy=False)


def zscore_statistics(hu: np.ndarray) -> tuple[float, float]:
    """The (mean, std) in HU that :func:`zscore` uses for ``hu`` (already clamped below air)."""
    mean = float(hu.mean(dtype=np.float64))
    std = float(hu.std(dtype=np.float64))
    if not np.isfinite(std) or std < 1e-3:
        raise InputImageError("The image has (almost) the same value everywhere after resampling; nothing to label.")
    mean = min(max(mean, ZSCORE_MEAN_RANGE_HU[0]), ZSCORE_MEAN_RANGE_HU[1])
    std = min(max(std, ZSCORE_STD_RANGE_HU[0]), ZSCORE_STD_RANGE_HU[1])
    return mean, std


def canonical_grid(image: sitk.Image, spacing: float = WORKING_SPACING_MM) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Origin (LPS mm) and size (i, j, k) of the canonical grid covering ``image``'s physical extent."""
    size = np.asarray(image.GetSize())
    corners = []
    for cx in (0, size[0] - 1):
        for cy in (0, size[1] - 1):
            for cz in (0, size[2] - 1):
                corners.append(image.TransformContinuousIndexToPhysicalPoint((float(cx), float(cy), float(cz))))
    corners = np.asarray(corners) * _AXIS_SIGN  # into the canonical frame, where axes increase with the index
    lo, hi = corners.min(axis=0), corners.max(axis=0)
    n = np.floor((hi - lo) / spacing + 1e-6).astype(int) + 1
    origin = lo * _AXIS_SIGN
    return origin, (int(n[0]), int(n[1]), int(n[2]))


def to_canonical(
    image: sitk.Image, spacing: float = WORKING_SPACING_MM, slab_slices: int = 24
) -> CanonicalVolume:
    """Resample ``image`` (any orientation, spacing and pixel type) onto the canonical grid.

    Linear interpolation; voxels outside the input are air. Where the input is finer than half the
    grid spacing it is Gaussian-smoothed first (ITK's recursive Gaussian, sigma 0.4 × the grid
    spacing), so thin-slice noise does not alias into the 2 mm volume. The work is done in slabs of
    ``slab_slices`` output slices, each reading only the part of the input it needs, so that memory
    stays bounded for 1000-slice CTs: the input is never copied whole as float.

    An image whose axes are the patient axes (the usual case, whatever their order and sign) is
    resampled one axis at a time with matrix products (:func:`_to_canonical_separable`); an oblique one
    with SimpleITK's resampler. Both compute the same smoothing and interpolation.
    """
    origin, size = canonical_grid(image, spacing)
    axes = _patient_axes(image)
    if axes is not None:
        return _to_canonical_separable(image, axes, origin, size, spacing, slab_slices)
    return _to_canonical_resampled(image, origin, size, spacing, slab_slices)


def _gaussian_sigma(input_spacing: float, spacing: float) -> float:
    """Pre-filter sigma (mm) for an input axis of ``input_spacing``: only axes finer than half the grid."""
    return 0.4 * spacing if input_spacing < 0.5 * spacing else 0.0


def _to_canonical_resampled(image: sitk.Image, origin: np.ndarray, size: tuple[int, int, int], spacing: float,
                            slab_slices: int) -> CanonicalVolume:
    """:func:`to_canonical` for any image (oblique ones included): Gaussians and a resampler of SimpleITK."""
    in_spacing = np.asarray(image.GetSpacing(), dtype=float)
    sigmas = [_gaussian_sigma(s, spacing) for s in in_spacing]
    margin = [int(np.ceil(4.0 * sg / s)) + 2 for sg, s in zip(sigmas, in_spacing)]
    in_size = np.asarray(image.GetSize())
    hu = np.empty((size[2], size[1], size[0]), dtype=np.float32)
    for k0 in range(0, size[2], slab_slices):
        nk = min(slab_slices, size[2] - k0)
        slab_origin = np.asarray(origin, dtype=float) + np.array([0.0, 0.0, -k0 * spacing])
        slab_size = (size[0], size[1], nk)
        lo, hi = _input_box(image, slab_origin, slab_size, spacing)
        lo = np.maximum(lo - margin, 0)
        hi = np.minimum(hi + margin, in_size - 1)
        if np.any(hi < lo):
            hu[k0:k0 + nk] = AIR_HU
            continue
        roi = sitk.RegionOfInterest(image, [int(v) for v in hi - lo + 1], [int(v) for v in lo])
        roi = sitk.Cast(roi, sitk.sitkFloat32)
        for axis in range(3):
            if sigmas[axis] > 0 and roi.GetSize()[axis] > 3:
                gauss = sitk.RecursiveGaussianImageFilter()
                gauss.SetSigma(sigmas[axis])
                gauss.SetDirection(axis)
                roi = gauss.Execute(roi)
        resampler = sitk.ResampleImageFilter()
        resampler.SetOutputOrigin(tuple(float(v) for v in slab_origin))
        resampler.SetOutputSpacing((spacing, spacing, spacing))
        resampler.SetOutputDirection(CANONICAL_DIRECTION)
        resampler.SetSize(slab_size)
        resampler.SetInterpolator(sitk.sitkLinear)
        resampler.SetDefaultPixelValue(AIR_HU)
        resampler.SetOutputPixelType(sitk.sitkFloat32)
        hu[k0:k0 + nk] = sitk.GetArrayFromImage(resampler.Execute(roi))
    np.maximum(hu, AIR_HU, out=hu)
    return CanonicalVolume(hu=hu, origin_lps=np.asarray(origin, dtype=float), spacing=spacing)


def _patient_axes(image: sitk.Image):
    """For each image axis, the LPS axis it runs along, when the image is not oblique; else None."""
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    axes = np.argmax(np.abs(direction), axis=0)
    if sorted(axes) != [0, 1, 2] or not np.allclose(np.abs(direction[axes, [0, 1, 2]]), 1.0, atol=1e-6):
        return None
    return [int(a) for a in axes]


@dataclass
class _AxisOperator:
    """Smoothing + linear interpolation along one input axis as a banded matrix (output × input samples).

    Row ``m`` holds the weights of input samples ``start[m] .. start[m] + width - 1`` (zero beyond the
    input); ``inside[m]`` is False where output sample ``m`` lies outside the input (air).
    """

    start: np.ndarray
    weights: np.ndarray
    inside: np.ndarray
    n_in: int

    def block(self, r0: int, r1: int) -> tuple[int, int, np.ndarray]:
        """Rows ``r0:r1`` as a dense float32 block over the input samples ``lo:hi`` they use: (lo, hi, block)."""
        used = self.weights[r0:r1] != 0
        if not used.any():
            return 0, 0, np.zeros((r1 - r0, 0), np.float32)
        cols = self.start[r0:r1, None] + np.arange(self.weights.shape[1])
        lo, hi = int(cols[used].min()), int(cols[used].max()) + 1
        dense = np.zeros((r1 - r0, hi - lo))
        rows = np.broadcast_to(np.arange(r1 - r0)[:, None], cols.shape)
        np.add.at(dense, (rows[used], cols[used] - lo), self.weights[r0:r1][used])
        return lo, hi, dense.astype(np.float32)


def _axis_operator(image: sitk.Image, axis: int, lps_axis: int, origin: np.ndarray, n_out: int,
                   spacing: float) -> _AxisOperator:
    """The 1-D operator that takes image axis ``axis`` to the canonical positions along ``lps_axis``.

    The smoothing is ITK's recursive Gaussian itself (the filter :func:`_to_canonical_resampled` runs),
    read off as its response to unit impulses, so both paths give the same numbers, borders included
    (ITK continues a line with its edge value). The interpolation is ITK's linear one: an output position
    within half a voxel beyond the first or last sample takes that sample's value, further out is air.
    """
    n_in = int(image.GetSize()[axis])
    step = float(image.GetSpacing()[axis])
    sign = float(np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)[lps_axis, axis])
    positions = origin[lps_axis] + np.arange(n_out) * spacing * _AXIS_SIGN[lps_axis]
    index = (positions - float(image.GetOrigin()[lps_axis])) / (step * sign)  # continuous input index
    inside = (index >= -0.5) & (index < n_in - 0.5)
    index = np.clip(index, 0.0, n_in - 1.0)
    first = np.minimum(np.floor(index).astype(int), max(n_in - 2, 0))
    frac = index - first
    sigma = _gaussian_sigma(step, spacing)
    if n_in < 2:
        reach, response = 0, None
    elif sigma > 0 and n_in > 3:  # the resampled path skips the Gaussian on 3 samples or fewer too
        # Beyond 12 sigma the recursive Gaussian's impulse response is below 1e-8.
        reach = int(np.ceil(12.0 * sigma / step)) + 2
        period = 2 * reach + 2
        # A comb of impulses per line, one line per offset: impulses `period` apart do not overlap
        # within `reach`, so a handful of lines give the whole banded matrix, whatever n_in.
        combs = np.zeros((min(period, n_in), n_in), np.float32)
        for q in range(combs.shape[0]):
            combs[q, q::period] = 1.0
        lines = sitk.GetImageFromArray(combs)
        lines.SetSpacing((step, 1.0))
        gauss = sitk.RecursiveGaussianImageFilter()
        gauss.SetSigma(sigma)
        gauss.SetDirection(0)
        response = sitk.GetArrayFromImage(gauss.Execute(lines)).astype(float)  # [input % period, output]
    else:
        reach, response = 0, None
    start = first - reach
    cols = start[:, None] + np.arange(2 * reach + 2)
    valid = (cols >= 0) & (cols < n_in)
    if response is None:
        identity = (cols == first[:, None]).astype(float), (cols == first[:, None] + 1).astype(float)
        lower, upper = identity
    else:
        lines_of = np.where(valid, cols, 0) % response.shape[0]
        lower = response[lines_of, first[:, None]]
        upper = response[lines_of, np.minimum(first + 1, n_in - 1)[:, None]]
    weights = (1.0 - frac)[:, None] * lower + frac[:, None] * upper
    if n_in < 2:
        weights = np.where(cols == 0, 1.0, 0.0)
    weights = np.where(valid & inside[:, None], weights, 0.0)
    return _AxisOperator(start=start, weights=weights, inside=inside, n_in=n_in)


def _to_canonical_separable(image: sitk.Image, axes, origin: np.ndarray, size: tuple[int, int, int],
                            spacing: float, slab_slices: int) -> CanonicalVolume:
    """:func:`to_canonical` for an image whose axes are the patient axes: one axis at a time.

    Smoothing and linear interpolation are separable, so each input axis is taken to the canonical
    grid by a banded matrix (:func:`_axis_operator`), flips included, with PyTorch's matrix products
    (multi-threaded). Slabs run along the input's slowest axis (the slices of an axial CT, read where
    they lie in memory): a slab's slices are converted to float32 into one reused buffer, brought to
    the output's slab of ``slab_slices`` along that axis, then along the fastest axis in bands of
    output columns (each band reads only the input columns it uses), then along the middle axis. On
    a 512×512×1000 CT this is 10-15× faster than SimpleITK's Gaussians and resampler, same numbers.
    """
    import torch  # imported here: the rest of this module (and its importers' --help) does without it

    array = sitk.GetArrayViewFromImage(image)  # numpy axis n is image axis 2 - n; no copy
    # numpy axis n of the input → its operator and the canonical array axis it becomes
    ops = [_axis_operator(image, 2 - n, axes[2 - n], origin, size[axes[2 - n]], spacing) for n in range(3)]
    out_axis = [2 - axes[2 - n] for n in range(3)]
    hu = np.zeros((size[2], size[1], size[0]), dtype=np.float32)
    n_first, n_last = len(ops[0].inside), len(ops[2].inside)
    slabs = [(r0, min(r0 + slab_slices, n_first)) for r0 in range(0, n_first, slab_slices)]
    slab_blocks = [ops[0].block(r0, r1) for r0, r1 in slabs]
    # The last axis in bands of 64 output samples, each reading only the input samples it uses: a
    # third of the multiply-adds of one dense product.
    bands = []
    for b0 in range(0, n_last, 64):
        b1 = min(b0 + 64, n_last)
        lo, hi, block = ops[2].block(b0, b1)
        bands.append((b0, b1, lo, hi, torch.from_numpy(np.ascontiguousarray(block.T))))
    lo1, hi1, middle = ops[1].block(0, len(ops[1].inside))
    middle = torch.from_numpy(middle)
    rows, cols = array.shape[1], array.shape[2]
    buffer = np.empty((max((hi - lo for lo, hi, _ in slab_blocks), default=0), rows, cols), np.float32)
    to_output = np.argsort(out_axis).tolist()
    with torch.inference_mode():
        for (r0, r1), (lo, hi, block) in zip(slabs, slab_blocks):
            if hi <= lo:
                continue  # outside the input: air, set below
            x = buffer[:hi - lo]
            np.copyto(x, array[lo:hi], casting="unsafe")  # int16 → float32 a slab at a time
            # (rows, slab, cols): one small product per input row, which keeps each in cache.
            y = torch.matmul(torch.from_numpy(block), torch.from_numpy(x).transpose(0, 1))
            z = torch.zeros((rows * (r1 - r0), n_last))
            y = y.reshape(-1, cols)
            for b0, b1, c0, c1, band in bands:
                if c1 > c0:
                    z[:, b0:b1] = y[:, c0:c1] @ band
            z = z.reshape(rows, -1)[lo1:hi1]
            result = (middle @ z).reshape(-1, r1 - r0, n_last).transpose(0, 1)  # (slab, middle, last)
            index = [slice(None)] * 3
            index[out_axis[0]] = slice(r0, r1)
            hu[tuple(index)] = result.permute(*to_output).numpy()
    for n in range(3):
        index = [slice(None)] * 3
        index[out_axis[n]] = ~ops[n].inside
        hu[tuple(index)] = AIR_HU
    np.maximum(hu, AIR_HU, out=hu)
    return CanonicalVolume(hu=hu, origin_lps=np.asarray(origin, dtype=float), spacing=spacing)


def _input_box(image: sitk.Image, origin: np.ndarray, size: tuple[int, int, int], spacing: float):
    """Input index bounding box (lo, hi), inclusive, of a canonical-grid box."""
    pts = []
    for ci in (0, size[0] - 1):
        for cj in (0, size[1] - 1):
            for ck in (0, size[2] - 1):
                lps = origin + np.array([ci, cj, ck], dtype=float) * spacing * _AXIS_SIGN
                pts.append(image.TransformPhysicalPointToContinuousIndex(tuple(float(v) for v in lps)))
    pts = np.asarray(pts)
    return np.floor(pts.min(axis=0)).astype(int), np.ceil(pts.max(axis=0)).astype(int)


def canonical_to_image(volume: CanonicalVolume) -> sitk.Image:
    """The canonical volume as a SimpleITK image (for debugging and tests)."""
    img = sitk.GetImageFromArray(volume.hu)
    img.SetOrigin(tuple(float(v) for v in volume.origin_lps))
    img.SetSpacing((volume.spacing,) * 3)
    img.SetDirection(CANONICAL_DIRECTION)
    return img
