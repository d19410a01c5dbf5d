"""The voxel canvas the synthetic anatomy is painted on.

The canvas is an LPS-aligned grid (array order z, y, x; identity direction). It holds

* ``tissue``  -- uint8 soft-tissue class per voxel (see :mod:`tissues`), the SynthSeg-style label map;
* ``bone``    -- float32 bone occupancy in [0, 1] (anti-aliased, so thin cortex survives coarse grids);
* ``cortex``  -- float32 cortical occupancy in [0, bone];
* ``labels``  -- uint8 vertebra label (index + 1), 0 elsewhere;
* ``bone_id`` -- uint8 id of the bony structure (vertebra label, or one of the ``BONE_*`` ids below),
  so every bone gets its own cancellous density.

Shapes are painted as signed distance functions (SDF, mm, negative inside) evaluated only inside
each shape's bounding box, which keeps painting cost proportional to the shape's size.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

#: bone ids above the vertebra labels (1..28) for bones that are not vertebrae
BONE_RIB = 40
BONE_PELVIS = 41
BONE_SACRUM_LOW = 42
BONE_OTHER = 43
BONE_SKULL = 44

SdfFn = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


@dataclass
class Frame:
    """A local orthonormal frame: ``origin`` plus axes ``lat`` (left), ``ant`` (anterior), ``up`` (superior)."""

    origin: np.ndarray
    lat: np.ndarray
    ant: np.ndarray
    up: np.ndarray

    @property
    def rot(self) -> np.ndarray:
        """3x3 matrix whose columns are the local axes in LPS."""
        return np.stack([self.lat, self.ant, self.up], axis=1)

    def to_world(self, p: Sequence[float]) -> np.ndarray:
        """Local (lat, ant, up) mm -> LPS mm."""
        return self.origin + self.rot @ np.asarray(p, dtype=float)

    @staticmethod
    def identity(origin: Sequence[float]) -> "Frame":
        return Frame(np.asarray(origin, float), np.array([1.0, 0, 0]), np.array([0, -1.0, 0]),
                     np.array([0, 0, 1.0]))


@dataclass
class Canvas:
    """LPS grid with per-voxel tissue class, bone occupancy, cortical occupancy and vertebra labels."""

    origin: np.ndarray  # LPS mm of voxel (0, 0, 0), x y z order
    spacing: np.ndarray  # mm, x y z order
    shape: tuple[int, int, int]  # array shape (nz, ny, nx)
    tissue: np.ndarray = field(init=False)
    bone: np.ndarray = field(init=False)
    cortex: np.ndarray = field(init=False)
    labels: np.ndarray = field(init=False)
    bone_id: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.origin = np.asarray(self.origin, float)
        self.spacing = np.asarray(self.spacing, float)
        self.tissue = np.zeros(self.shape, np.uint8)
        self.bone = np.zeros(self.shape, np.float32)
        self.cortex = np.zeros(self.shape, np.float32)
        self.labels = np.zeros(self.shape, np.uint8)
        self.bone_id = np.zeros(self.shape, np.uint8)
        nz, ny, nx = self.shape
        self.xs = (self.origin[0] + np.arange(nx) * self.spacing[0]).astype(np.float32)
        self.ys = (self.origin[1] + np.arange(ny) * self.spacing[1]).astype(np.float32)
        self.zs = (self.origin[2] + np.arange(nz) * self.spacing[2]).astype(np.float32)
        # the "size" of a voxel along an arbitrary direction, for anti-aliasing
        self.aa_mm = float(np.mean(self.spacing))

    # ------------------------------------------------------------------ geometry helpers
    @property
    def extent_min(self) -> np.ndarray:
        return self.origin.copy()

    @property
    def extent_max(self) -> np.ndarray:
        nz, ny, nx = self.shape
        return self.origin + self.spacing * (np.array([nx, ny, nz]) - 1)

    def contains(self, p: np.ndarray, margin: float = 0.0) -> bool:
        """True when LPS point ``p`` lies inside the grid's physical box (shrunk by ``margin`` mm)."""
        return bool(np.all(p >= self.extent_min + margin) and np.all(p <= self.extent_max - margin))

    def box_slices(self, lo: np.ndarray, hi: np.ndarray) -> Optional[tuple[slice, slice, slice]]:
        """Array slices (z, y, x) covering the LPS axis-aligned box [lo, hi]; None when empty."""
        i0 = np.floor((lo - self.origin) / self.spacing).astype(int)
        i1 = np.ceil((hi - self.origin) / self.spacing).astype(int) + 1
        nz, ny, nx = self.shape
        n = np.array([nx, ny, nz])
        i0 = np.clip(i0, 0, n)
        i1 = np.clip(i1, 0, n)
        if np.any(i1 <= i0):
            return None
        return (slice(i0[2], i1[2]), slice(i0[1], i1[1]), slice(i0[0], i1[0]))

    def local_coords(self, frame: Frame, sl: tuple[slice, slice, slice]
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Local (lat, ant, up) coordinates of the voxels in ``sl`` (broadcast 3-D arrays)."""
        x = (self.xs[sl[2]] - frame.origin[0])[None, None, :]
        y = (self.ys[sl[1]] - frame.origin[1])[None, :, None]
        z = (self.zs[sl[0]] - frame.origin[2])[:, None, None]
        out = []
        for axis in (frame.lat, frame.ant, frame.up):
            ax = axis.astype(np.float32)
            out.append(ax[0] * x + ax[1] * y + ax[2] * z)
        return out[0], out[1], out[2]

    def world_box_of_local_box(self, frame: Frame, lo: Sequence[float], hi: Sequence[float]
                               ) -> tuple[np.ndarray, np.ndarray]:
        """LPS axis-aligned bounds of a local box."""
        corners = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1])
                            for c in (lo[2], hi[2])], float)
        w = frame.origin[None, :] + corners @ frame.rot.T
        return w.min(0), w.max(0)

    # ------------------------------------------------------------------ painting
    def sdf_in_box(self, frame: Frame, lo: Sequence[float], hi: Sequence[float], sdf: SdfFn):
        """Evaluate ``sdf(lat, ant, up)`` in the local box [lo, hi]; returns (slices, distances) or None."""
        wlo, whi = self.world_box_of_local_box(frame, lo, hi)
        sl = self.box_slices(wlo, whi)
        if sl is None:
            return None
        L, A, U = self.local_coords(frame, sl)
        d = sdf(L, A, U)
        return sl, np.broadcast_to(d, (sl[0].stop - sl[0].start, sl[1].stop - sl[1].start,
                                       sl[2].stop - sl[2].start))

    def paint_tissue(self, frame: Frame, lo, hi, sdf: SdfFn, tissue: int,
                     only_on: Optional[Sequence[int]] = None, not_on: Optional[Sequence[int]] = None) -> None:
        """Set ``tissue`` where the SDF is negative, optionally only over/never over given classes."""
        r = self.sdf_in_box(frame, lo, hi, sdf)
        if r is None:
            return
        sl, d = r
        m = d <= 0
        sub = self.tissue[sl]
        if only_on is not None:
            m &= np.isin(sub, only_on)
        if not_on is not None:
            m &= ~np.isin(sub, not_on)
        sub[m] = tissue

    def paint_bone_sdf(self, sl, d: np.ndarray, cortical_mm: float, bone_id: int,
                       label: int = 0, dense: float = 0.0) -> None:
        """Merge a bone given by its SDF ``d`` over slices ``sl`` (max-union of occupancies).

        ``cortical_mm`` is the shell thickness; ``dense`` in [0, 1] makes the cancellous part
        partly cortical (sclerotic or thin bones).
        """
        h = self.aa_mm
        occ = np.clip(0.5 - d / h, 0.0, 1.0)
        inner = np.clip(0.5 - (d + cortical_mm) / h, 0.0, 1.0)
        cort = occ - inner * (1.0 - dense)
        bsub = self.bone[sl]
        new = occ > bsub
        if not new.any():
            return
        bsub[new] = occ[new]
        csub = self.cortex[sl]
        csub[new] = cort[new]
        self.bone_id[sl][new & (occ > 0.2)] = bone_id
        if label:
            self.labels[sl][d <= 0] = label

    def paint_bone(self, frame: Frame, lo, hi, sdf: SdfFn, cortical_mm: float, bone_id: int,
                   label: int = 0, dense: float = 0.0) -> None:
        """Paint a bone from an SDF in a local box (see :meth:`paint_bone_sdf`)."""
        r = self.sdf_in_box(frame, lo, hi, sdf)
        if r is None:
            return
        sl, d = r
        self.paint_bone_sdf(sl, d, cortical_mm, bone_id, label, dense)

    def paint_bone_parts(self, frame: Frame, parts, cortical_mm: float, bone_id: int, label: int = 0,
                         dense: float = 0.0, blend: float = 1.5) -> None:
        """Paint a bone made of several SDF parts ``[(lo, hi, sdf), ...]`` (local boxes).

        Each part is evaluated only inside its own box, then merged (smooth union) into one SDF over
        the union box, so the cortical shell follows the outer surface of the whole bone.
        """
        boxes = []
        for lo, hi, fn in parts:
            wlo, whi = self.world_box_of_local_box(frame, lo, hi)
            sl = self.box_slices(wlo, whi)
            if sl is not None:
                boxes.append((sl, fn))
        if not boxes:
            return
        z0 = min(b[0][0].start for b in boxes)
        z1 = max(b[0][0].stop for b in boxes)
        y0 = min(b[0][1].start for b in boxes)
        y1 = max(b[0][1].stop for b in boxes)
        x0 = min(b[0][2].start for b in boxes)
        x1 = max(b[0][2].stop for b in boxes)
        full = (slice(z0, z1), slice(y0, y1), slice(x0, x1))
        d = np.full((z1 - z0, y1 - y0, x1 - x0), 1e3, np.float32)
        for sl, fn in boxes:
            L, A, U = self.local_coords(frame, sl)
            part = fn(L, A, U)
            rel = (slice(sl[0].start - z0, sl[0].stop - z0), slice(sl[1].start - y0, sl[1].stop - y0),
                   slice(sl[2].start - x0, sl[2].stop - x0))
            sub = d[rel]
            near = part < sub + blend  # only blend where the parts meet
            sub[...] = np.where(near, smooth_union(sub, np.broadcast_to(part, sub.shape), blend), sub)
        self.paint_bone_sdf(full, d, cortical_mm, bone_id, label, dense)

    def stamp_tube(self, points: np.ndarray, radii, cortical_mm: float = 1.0, bone_id: int = 0,
                   label: int = 0, tissue: Optional[int] = None, dense: float = 0.0,
                   chunk: int = 3) -> None:
        """Paint a tube of tapered capsules along LPS ``points`` (N, 3) with per-point ``radii``.

        Bone by default; with ``tissue`` set it paints that soft-tissue class instead. Segments are
        processed a few at a time so each bounding box stays tight around the curve.
        """
        points = np.asarray(points, float)
        if len(points) < 2:
            return
        radii = np.broadcast_to(np.asarray(radii, float), (len(points),))
        for s in range(0, len(points) - 1, chunk):
            p = points[s:s + chunk + 1]
            r = radii[s:s + chunk + 1]
            lo = p.min(0) - r.max() - self.aa_mm
            hi = p.max(0) + r.max() + self.aa_mm
            sl = self.box_slices(lo, hi)
            if sl is None:
                continue
            x = self.xs[sl[2]][None, None, :]
            y = self.ys[sl[1]][None, :, None]
            z = self.zs[sl[0]][:, None, None]
            d = None
            for i in range(len(p) - 1):
                di = sd_capsule(x, y, z, p[i], p[i + 1], r[i], r[i + 1])
                d = di if d is None else np.minimum(d, di)
            d = np.broadcast_to(d, (sl[0].stop - sl[0].start, sl[1].stop - sl[1].start,
                                    sl[2].stop - sl[2].start))
            if tissue is not None:
                self.tissue[sl][d <= 0] = tissue
            else:
                self.paint_bone_sdf(sl, d, cortical_mm, bone_id, label, dense)


def smooth_noise(cv: "Canvas", sl: tuple[slice, slice, slice], cell_mm: float,
                 rng: np.random.Generator) -> np.ndarray:
    """Smooth random field (unit-variance nodes, trilinear in between) on the voxels of ``sl``.

    Thresholding it gives blob-like regions (bowel loops, fat lobules) at the scale ``cell_mm``.
    """
    import SimpleITK as sitk

    n = [s.stop - s.start for s in sl]  # z, y, x
    ext = np.array([n[2], n[1], n[0]]) * cv.spacing
    nc = np.maximum(np.ceil(ext / cell_mm).astype(int) + 2, 2)
    coarse = rng.standard_normal((nc[2], nc[1], nc[0])).astype(np.float32)
    src = sitk.GetImageFromArray(coarse)
    src.SetSpacing(tuple(float(cell_mm) for _ in range(3)))
    org = cv.origin + cv.spacing * np.array([sl[2].start, sl[1].start, sl[0].start])
    src.SetOrigin(tuple(float(o - cell_mm) for o in org))
    ref = sitk.Image(int(n[2]), int(n[1]), int(n[0]), sitk.sitkUInt8)
    ref.SetSpacing(tuple(float(v) for v in cv.spacing))
    ref.SetOrigin(tuple(float(o) for o in org))
    out = sitk.Resample(src, ref, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out)


# ---------------------------------------------------------------------- SDF primitives
def sd_ellipsoid(L, A, U, c, r):
    """Approximate SDF of an axis-aligned (local) ellipsoid, centre ``c``, radii ``r``."""
    x = (L - c[0]) / r[0]
    y = (A - c[1]) / r[1]
    z = (U - c[2]) / r[2]
    k0 = np.sqrt(x * x + y * y + z * z)
    k1 = np.sqrt((x / r[0]) ** 2 + (y / r[1]) ** 2 + (z / r[2]) ** 2)
    return k0 * (k0 - 1.0) / np.maximum(k1, 1e-6)


def sd_ellipse2(P, Q, c, r, power: float = 2.0):
    """Approximate 2-D SDF of a (super)ellipse in the plane (P, Q)."""
    x = np.abs(P - c[0]) / r[0]
    y = np.abs(Q - c[1]) / r[1]
    if power == 2.0:
        k = np.sqrt(x * x + y * y)
    else:
        k = (x ** power + y ** power) ** (1.0 / power)
    return (k - 1.0) * min(r)


def sd_ellcyl(L, A, U, c, r, half_h, power: float = 2.0):
    """Elliptic cylinder along the local up axis."""
    return np.maximum(sd_ellipse2(L, A, c[:2], r, power), np.abs(U - c[2]) - half_h)


def sd_capsule(L, A, U, p0, p1, r0, r1=None):
    """Tapered capsule from ``p0`` (radius r0) to ``p1`` (radius r1)."""
    r1 = r0 if r1 is None else r1
    p0 = np.asarray(p0, float)
    ba = np.asarray(p1, float) - p0
    bb = float(ba @ ba)
    px, py, pz = L - p0[0], A - p0[1], U - p0[2]
    t = np.clip((px * ba[0] + py * ba[1] + pz * ba[2]) / bb, 0.0, 1.0)
    dx, dy, dz = px - t * ba[0], py - t * ba[1], pz - t * ba[2]
    return np.sqrt(dx * dx + dy * dy + dz * dz) - (r0 + (r1 - r0) * t)


def sd_box(L, A, U, c, half, rounding: float = 0.0):
    """Rounded axis-aligned box."""
    qx = np.abs(L - c[0]) - (half[0] - rounding)
    qy = np.abs(A - c[1]) - (half[1] - rounding)
    qz = np.abs(U - c[2]) - (half[2] - rounding)
    outside = np.sqrt(np.maximum(qx, 0) ** 2 + np.maximum(qy, 0) ** 2 + np.maximum(qz, 0) ** 2)
    inside = np.minimum(np.maximum(qx, np.maximum(qy, qz)), 0)
    return outside + inside - rounding


def union(*ds):
    """Union of SDFs (pointwise minimum)."""
    out = ds[0]
    for d in ds[1:]:
        out = np.minimum(out, d)
    return out


def smooth_union(a, b, k: float = 2.0):
    """Polynomial smooth minimum: fills the fillets between bony parts."""
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b * (1 - h) + a * h - k * h * (1 - h)


def polyline_resample(points: np.ndarray, step: float) -> np.ndarray:
    """Resample a polyline at roughly constant ``step`` mm."""
    seg = np.linalg.norm(np.diff(points, axis=0), axis=1)
    s = np.concatenate([[0], np.cumsum(seg)])
    n = max(int(s[-1] / step) + 1, 2)
    t = np.linspace(0, s[-1], n)
    return np.stack([np.interp(t, s, points[:, i]) for i in range(3)], axis=1)


def tube_points(points: list[np.ndarray], step: float) -> np.ndarray:
    """Convenience: polyline from a list of points, resampled."""
    return polyline_resample(np.asarray(points, float), step)
