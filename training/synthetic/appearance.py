"""From painted tissue classes and bone occupancy to a CT-like image in HU.

Three appearance modes are drawn per case:

* ``ct``       -- realistic non-contrast CT numbers, jittered per case;
* ``contrast`` -- portal-venous contrast: bright vessels, kidneys, enhanced organs; or, for a share of
  these cases, the arterial phase of a CT angiogram: blood at 300-700 HU, brighter than the cancellous
  bone of the vertebral bodies (``blood_hu``);
* ``random``   -- SynthSeg-style: every tissue gets a random mean from a wide range (bone stays on
  average brighter than soft tissue but the contrast between them varies widely), plus a smooth
  multiplicative bias field. It teaches shape rather than one intensity table.

The image then goes through a Gaussian point-spread function (in-plane resolution, slice
profile) with the noise added before the blur so that it comes out spatially correlated, as
in reconstructed CT.
"""


from typing import Optional

import numpy as np
import SimpleITK as sitk

from . import tissues as T
from .canvas import Canvas


def tissue_table(rng: np.random.Generator, mode: str, blood_hu: Optional[float] = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-tissue mean HU and fine-texture std for this case; ``blood_hu`` overrides the blood's mean."""
    mean = np.zeros(T.NUM_TISSUES, np.float32)
    tex = np.zeros(T.NUM_TISSUES, np.float32)
    for t, (m, spread, tx) in T.CT_HU.items():
        mean[t] = m + rng.normal(0, spread)
        tex[t] = tx * rng.uniform(0.6, 1.5)
    if mode == "contrast":
        mean[T.BLOOD] = rng.uniform(130, 320)
        mean[T.KIDNEY] = rng.uniform(120, 220)
        mean[T.LIVER] = rng.uniform(90, 130)
        mean[T.SOFT] = rng.uniform(70, 110)
        mean[T.BOWEL] = rng.uniform(0, 80)
    elif mode == "random":
        for t in range(T.NUM_TISSUES):
            if t in (T.AIR, T.METAL):
                continue
            if t in (T.LUNG, T.GAS):
                mean[t] = rng.uniform(-1000, -300)
            else:
                mean[t] = rng.uniform(-200, 200)
        tex *= rng.uniform(0.5, 3.0)
    if blood_hu is not None:
        mean[T.BLOOD] = blood_hu
    return mean, tex


def render(cv: Canvas, rng: np.random.Generator, mode: str, bone_hu: dict[int, float],
           cortical_hu: float, noise_sd: float, psf_mm: tuple[float, float, float],
           blood_hu: Optional[float] = None, overlay=None) -> np.ndarray:
    """Render the canvas into a float32 HU volume (array order z, y, x).

    ``overlay`` (a :class:`variants.BoneOverlay`) adds bone that is not on the canvas; its texture comes
    from its own random stream, so ``rng`` draws exactly what it draws without it.
    """
    mean, tex = tissue_table(rng, mode, blood_hu)
    # cancellous HU per bone id (each vertebra slightly different, neighbours alike)
    canc = np.zeros(256, np.float32)
    for k, v in bone_hu.items():
        canc[k] = v
    t = cv.tissue
    hu = mean[t]
    # bone blending only where there is bone (a few percent of the voxels)
    idx = np.flatnonzero(cv.bone)
    b = cv.bone.ravel()[idx]
    k = cv.cortex.ravel()[idx]
    flat = hu.ravel()
    flat[idx] = (flat[idx] * (1.0 - b) + (b - k) * canc[cv.bone_id.ravel()[idx]]
                 + k * np.float32(cortical_hu))
    if overlay is not None:
        j, b2, k2 = overlay.idx, overlay.bone, overlay.cortex
        flat[j] = (mean[t.ravel()[j]] * (1.0 - b2) + (b2 - k2) * canc[overlay.bone_id]
                   + k2 * np.float32(cortical_hu))

    # white noise before the blur comes out as correlated CT noise after it
    sp = cv.spacing
    sig_vox = np.asarray(psf_mm) / sp
    # std of white noise after the blur = std * prod(||kernel||_2): undo it so noise_sd is post-blur
    gain = 1.0 / float(np.prod([np.sqrt(np.sum(_kernel(sg) ** 2)) for sg in sig_vox]))
    amp = tex + np.float32(noise_sd * gain)
    w = rng.standard_normal(hu.shape, dtype=np.float32)
    w *= amp[t]
    hu += w
    del w
    wb = rng.standard_normal(len(idx), dtype=np.float32)
    flat[idx] += wb * (b - k) * np.float32(40.0)  # trabecular texture
    if overlay is not None:  # texture of the overlay's new cancellous bone only
        j = overlay.idx
        extra = np.maximum((overlay.bone - overlay.cortex) - (cv.bone.ravel()[j] - cv.cortex.ravel()[j]), 0)
        flat[j] += overlay.rng.standard_normal(len(j), dtype=np.float32) * extra * np.float32(40.0)

    if mode == "random":
        hu = bias_field(hu, cv, rng)
    return gaussian_blur(hu, np.asarray(psf_mm) / sp)


def _kernel(sig: float) -> np.ndarray:
    """Normalised Gaussian kernel (sigma in voxels); a delta below 0.2 voxel."""
    if sig < 0.2:
        return np.ones(1, np.float32)
    r = max(1, int(np.ceil(2.0 * sig)))
    x = np.arange(-r, r + 1)
    k = np.exp(-0.5 * (x / sig) ** 2)
    return (k / k.sum()).astype(np.float32)


def gaussian_blur(a: np.ndarray, sigma_vox) -> np.ndarray:
    """Separable Gaussian blur (x, y, z sigmas in voxels) with short kernels, in float32.

    The point-spread functions here are about one voxel wide, where short explicit kernels are both
    faster and more accurate than a recursive filter.
    """
    out = a
    for axis, sig in zip((2, 1, 0), sigma_vox):
        if sig < 0.2:
            continue
        kern = _kernel(sig)
        r = len(kern) // 2
        n = out.shape[axis]
        res = out * kern[r]
        for j in range(1, r + 1):
            if j >= n:
                break
            lo = [slice(None)] * 3
            hi = [slice(None)] * 3
            lo[axis], hi[axis] = slice(0, n - j), slice(j, n)
            # edge voxels keep the weight of the missing neighbour on themselves
            res[tuple(lo)] += kern[r + j] * out[tuple(hi)]
            res[tuple(hi)] += kern[r - j] * out[tuple(lo)]
            e0 = [slice(None)] * 3
            e1 = [slice(None)] * 3
            e0[axis], e1[axis] = slice(0, j), slice(n - j, n)
            res[tuple(e0)] += kern[r - j] * out[tuple(e0)]
            res[tuple(e1)] += kern[r + j] * out[tuple(e1)]
        out = res
    return out


def bias_field(hu: np.ndarray, cv: Canvas, rng: np.random.Generator) -> np.ndarray:
    """``hu`` times a smooth random multiplicative bias field (applied to HU + 1000 so air stays air)."""
    coarse = rng.normal(0, rng.uniform(0.05, 0.2), (4, 4, 4)).astype(np.float32)
    src = sitk.GetImageFromArray(coarse)
    nz, ny, nx = hu.shape
    ext = cv.spacing * np.array([nx, ny, nz])
    src.SetSpacing(tuple(float(e / 3.0) for e in ext))
    src.SetOrigin(tuple(float(o) for o in cv.origin))
    ref = sitk.Image(int(nx), int(ny), int(nz), sitk.sitkFloat32)
    ref.SetSpacing(tuple(float(s) for s in cv.spacing))
    ref.SetOrigin(tuple(float(o) for o in cv.origin))
    field = sitk.GetArrayFromImage(sitk.Resample(src, ref, sitk.Transform(), sitk.sitkLinear, 0.0))
    return (hu + 1000.0) * np.exp(field) - 1000.0
