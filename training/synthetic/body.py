"""Soft tissue around the spine: body outline, fat, muscle wall, lungs, diaphragm, organs, bowel.

Every slice's outline is placed relative to the spine at that height, so the body follows the
spine's curve. Profiles (half-width, depth behind and in front of the vertebral body) are given
at named vertebra levels and interpolated in z.
"""


import numpy as np

from . import tissues as T
from .anatomy import Spine
from .canvas import Canvas, sd_ellipsoid, smooth_noise

# level: (skin half-width, back depth, front depth, cavity: 0 none / 1 thorax / 2 abdomen / 3 pelvis)
_PROFILE = {
    "C1": (60, 60, 70, 0), "C4": (55, 55, 50, 0), "C7": (70, 65, 55, 0),
    "T1": (120, 70, 80, 1), "T3": (140, 68, 130, 1), "T6": (148, 66, 165, 1), "T9": (150, 70, 175, 1),
    "T12": (150, 78, 165, 2), "L2": (150, 88, 140, 2), "L4": (155, 92, 135, 2), "S1": (168, 85, 140, 3),
    "S3": (175, 65, 150, 3), "S5": (178, 55, 150, 3),
}
_CAVITY_BACK = {0: -20.0, 1: 28.0, 2: 8.0, 3: -8.0}  # cavity's posterior reach behind the body centre


def _profile_arrays(spine: Spine, zs: np.ndarray, size_w: float, size_ap: float, fat: float):
    """Per-slice spine centre and outline parameters (arrays of len(zs))."""
    names = [n for n in _PROFILE if spine.has(n)]
    zc = np.array([spine.by_name(n).frame.origin[2] for n in names])
    order = np.argsort(zc)
    zc = zc[order]
    vals = np.array([_PROFILE[n] for n in names], float)[order]
    out = {}
    out["Rx"] = np.interp(zs, zc, vals[:, 0]) * size_w
    out["Bk"] = np.interp(zs, zc, vals[:, 1]) * (0.85 + 0.15 * size_ap)
    out["Fr"] = np.interp(zs, zc, vals[:, 2]) * size_ap
    # cavity kind: nearest profile level (thorax/abdomen boundary is refined by the diaphragm)
    kind = vals[:, 3]
    idx = np.clip(np.searchsorted(zc, zs), 0, len(zc) - 1)
    idx_lo = np.clip(idx - 1, 0, len(zc) - 1)
    near = np.where(np.abs(zs - zc[idx]) < np.abs(zs - zc[idx_lo]), idx, idx_lo)
    out["cav"] = kind[near].astype(int)
    # spine centre, body width/depth per slice
    lv_z = np.array([lv.frame.origin[2] for lv in spine.levels])
    o = np.argsort(lv_z)
    lz = lv_z[o]
    out["xs"] = np.interp(zs, lz, np.array([lv.frame.origin[0] for lv in spine.levels])[o])
    out["ys"] = np.interp(zs, lz, np.array([lv.frame.origin[1] for lv in spine.levels])[o])
    out["W"] = np.interp(zs, lz, np.array([max(lv.W, 30) for lv in spine.levels])[o])
    out["D"] = np.interp(zs, lz, np.array([max(lv.D, 20) for lv in spine.levels])[o])
    # fat: thicker on the belly and flanks than on the back
    out["fat"] = np.full_like(zs, fat) * np.where(out["cav"] == 0, 0.4, 1.0)
    return out


def paint_body(cv: Canvas, spine: Spine, rng: np.random.Generator, roll_deg: float) -> dict:
    """Paint skin outline, subcutaneous fat, muscle wall, thoracic and abdominal content."""
    size_w = rng.uniform(0.82, 1.18)
    size_ap = size_w * rng.uniform(0.85, 1.2)
    fat = float(rng.gamma(2.0, 9.0)) + 3.0  # mm, long tail for obese patients
    wall = rng.uniform(8, 16)
    P = _profile_arrays(spine, cv.zs, size_w, size_ap, fat)
    r = np.deg2rad(roll_deg)
    c, s = np.float32(np.cos(r)), np.float32(np.sin(r))
    X = cv.xs[None, None, :]
    Y = cv.ys[None, :, None]
    def col(v):
        return v.astype(np.float32)[:, None, None]
    dx = X - col(P["xs"])
    dy = Y - col(P["ys"])
    Lc = dx * c + dy * s  # lateral (left +) relative to the spine
    Ac = dx * s - dy * c  # anterior relative to the vertebral body centre
    del dx, dy

    def inside(rx, back, front, power=2.4):
        # squircle-like x^2 + y^2 - c x^2 y^2: boxier than an ellipse, cheaper than a superellipse
        ac = (front - back) / 2
        ra = np.maximum((front + back) / 2, 1e-3)
        x2 = (Lc / col(rx)) ** 2
        y2 = (Ac - col(ac)) / col(ra)
        y2 *= y2
        boxy = np.float32(0.45 * (power - 2.0))
        return (x2 + y2 - boxy * x2 * y2 <= 1.0) & (x2 <= 1.0) & (y2 <= 1.0)

    power = 2.4
    fatv = P["fat"]
    # fat grows outwards: the skeleton-sized muscle outline stays, the skin moves out
    skin = inside(P["Rx"] + fatv * 0.9, P["Bk"] + fatv * 0.5, P["Fr"] + fatv, power)
    tissue = cv.tissue
    tissue[skin] = T.FAT
    e1 = inside(P["Rx"], P["Bk"], P["Fr"], power)
    tissue[e1] = T.MUSCLE
    del skin
    cav = P["cav"]
    has_cav = cav > 0
    cav_back = np.array([_CAVITY_BACK[k] for k in cav], float)
    e2 = inside(P["Rx"] - wall * np.where(cav == 1, 1.6, 1.3),
                np.where(has_cav, cav_back, -1e3), P["Fr"] - wall, 2.2)
    e2 &= has_cav[:, None, None]
    # the spine column and the muscles right beside it are never cavity
    spine_box = (np.abs(Lc) < col(P["W"] / 2 + 6)) & (Ac < col(P["D"] / 2 - 2))
    e2 &= ~spine_box
    del e1

    # diaphragm surface: lungs above, abdomen below
    lv10 = spine.by_name("T10").frame.origin[2] if spine.has("T10") else None
    meta: dict = dict(size_w=float(size_w), size_ap=float(size_ap), fat_mm=float(fat))
    if lv10 is not None:
        dome_r = lv10 + rng.uniform(20, 45)
        dome_l = dome_r - rng.uniform(5, 25)
        rx2 = col(P["Rx"] * 0.8)
        ry2 = col((P["Fr"] + 30) / 2)
        rho2 = (Lc / rx2) ** 2 + ((Ac - col((P["Fr"] - 30) / 2)) / ry2) ** 2
        dome = np.where(Lc < 0, np.float32(dome_r), np.float32(dome_l))
        z = col(cv.zs)
        zdia = dome - np.float32(rng.uniform(70, 100)) * np.minimum(rho2, 1.3)
        thorax = z > zdia
        del rho2
    else:
        z = col(cv.zs)
        thorax = np.broadcast_to((cav == 1)[:, None, None], e2.shape)
    lung = e2 & thorax & ((cav >= 1) & (cav <= 2))[:, None, None]
    # mediastinum: between spine and sternum, wide where the heart sits (left of midline)
    Fr2 = P["Fr"] - wall
    zrel = cv.zs
    heart_w = np.zeros_like(zrel)
    if spine.has("T5") and spine.has("T11"):
        z5 = spine.by_name("T5").frame.origin[2]
        z11 = spine.by_name("T11").frame.origin[2]
        t = np.clip((z5 - zrel) / max(z5 - z11, 1), 0, 1)
        heart_w = np.sin(np.pi * t) * rng.uniform(55, 75) * size_w
    mw = 28 + heart_w
    mc = (P["D"] / 2 - 8 + Fr2) / 2
    mr = (Fr2 - P["D"] / 2 + 8) / 2 + 5
    medi = ((Lc - col(heart_w * 0.45)) / col(mw)) ** 2 + ((Ac - col(mc)) / col(mr)) ** 2 <= 1
    lung &= ~medi
    tissue[e2 & ~lung & thorax] = T.FAT  # mediastinal fat, filled below
    tissue[e2 & ~thorax] = T.FAT  # visceral fat
    tissue[lung] = T.LUNG
    meta["lung_voxels"] = int(lung.sum())
    abdomen = e2 & ~thorax
    del lung, medi, e2, thorax, spine_box
    Lc = Ac = None  # noqa: F841  (frees two volume-sized arrays before the organs)

    _paint_organs(cv, spine, rng, size_w, meta)
    _fill_bowel(cv, abdomen, rng, meta)
    del abdomen
    _paint_neck(cv, spine, rng)
    _paint_muscles(cv, spine, rng)
    _paint_table(cv, P, rng, meta)
    return meta


def _paint_organs(cv: Canvas, spine: Spine, rng: np.random.Generator, size: float, meta: dict) -> None:
    """Liver, spleen, kidneys, great vessels, heart, stomach, bowel loops, bladder."""
    has = spine.has

    def ell(fr_name, centre, radii, tissue, only_on=(T.FAT,)):
        fr = spine.by_name(fr_name).frame
        rr = np.asarray(radii, float)
        cv.paint_tissue(fr, np.asarray(centre) - rr - 2, np.asarray(centre) + rr + 2,
                        lambda L, A, U: sd_ellipsoid(L, A, U, centre, rr), tissue, only_on=only_on)

    cav = (T.FAT,)
    if has("T11"):
        # liver: right upper abdomen, big; spleen: left posterior; stomach: left anterior
        ell("T12", (-60 * size, 40, 25), (85 * size, 95, 80), T.LIVER, cav)
        ell("T11", (70 * size, -10, 0), (30, 45, 50), T.SOFT, cav)
        gas = rng.uniform(0.2, 0.6)
        ell("T11", (45 * size, 80, 0), (45, 40, 45), T.BOWEL, cav)
        ell("T11", (45 * size, 80, 25), (40, 35, 45 * gas), T.GAS, (T.BOWEL,))
    if has("L1"):
        for side, dz in ((-1, -15), (1, 0)):
            lv = spine.by_name("L1")
            cen = (side * (lv.W / 2 + 38), -12, dz + rng.normal(0, 8))
            ell("L1", cen, (26, 22, 55), T.KIDNEY, cav + (T.LIVER, T.SOFT))
            ell("L1", (cen[0] - side * 6, cen[1] + 4, cen[2]), (8, 7, 25), T.FAT, (T.KIDNEY,))
        ell("L1", (-10, 45, 0), (25, 15, 40), T.SOFT, cav)  # pancreas / duodenum
    # great vessels along the spine, anterior to the bodies
    for name in [lv.name for lv in spine.levels if lv.kind in ("thoracic", "lumbar")]:
        lv = spine.by_name(name)
        hh = lv.H / 2 + lv.disc + 1
        ao = (lv.W * 0.25 + 8, lv.D / 2 + 14, 0)
        fr = lv.frame
        cv.paint_tissue(fr, (ao[0] - 16, ao[1] - 16, -hh - 2), (ao[0] + 16, ao[1] + 16, hh + 2),
                        lambda L, A, U, ao=ao, hh=hh: np.maximum(
                            np.hypot(L - ao[0], A - ao[1]) - 12.0, np.abs(U) - hh), T.BLOOD,
                        only_on=(T.FAT, T.MUSCLE, T.LUNG))
        if lv.kind == "lumbar":
            vc = (-(lv.W * 0.3 + 10), lv.D / 2 + 14, 0)
            cv.paint_tissue(fr, (vc[0] - 16, vc[1] - 16, -hh - 2), (vc[0] + 16, vc[1] + 16, hh + 2),
                            lambda L, A, U, vc=vc, hh=hh: np.maximum(
                                np.hypot((L - vc[0]) / 1.3, A - vc[1]) - 10.0, np.abs(U) - hh),
                            T.BLOOD, only_on=(T.FAT,))
    if has("T8"):
        ell("T8", (25 * size, 90, -10), (60 * size, 50, 55), T.BLOOD, (T.FAT,))
    if has("S4"):
        lv = spine.by_name("S4")
        ell("S4", (0, 85, -10), (rng.uniform(25, 55), rng.uniform(20, 40), rng.uniform(20, 40)),
            T.FLUID, (T.FAT, T.SOFT, T.BOWEL, T.GAS))
        ell("S3", (0, 22, 0), (14, 12, 30), T.BOWEL, (T.FAT,))


def _fill_bowel(cv: Canvas, abdomen: np.ndarray, rng: np.random.Generator, meta: dict) -> None:
    """Fill the still-fatty abdominal cavity with bowel loops from thresholded smooth noise.

    One field splits loops from mesenteric fat (loop walls where it crosses the threshold), a
    second one picks the content: gas (more of it anteriorly, where it rises in a supine patient),
    fluid, mottled faeces or collapsed loops.
    """
    idx = np.nonzero(abdomen.any(axis=(1, 2)))[0]
    if len(idx) == 0:
        return
    ys = np.nonzero(abdomen.any(axis=(0, 2)))[0]
    xs = np.nonzero(abdomen.any(axis=(0, 1)))[0]
    sl = (slice(idx[0], idx[-1] + 1), slice(ys[0], ys[-1] + 1), slice(xs[0], xs[-1] + 1))
    m = abdomen[sl] & (cv.tissue[sl] == T.FAT)
    fat_frac = float(rng.uniform(0.1, 0.55))
    cell = float(rng.uniform(14, 26))
    a = smooth_noise(cv, sl, cell, rng)
    thr = np.float32(np.quantile(a[m], fat_frac)) if m.any() else np.float32(0)
    loops = m & (a > thr)
    wall = loops & (a < thr + np.float32(rng.uniform(0.08, 0.18)))
    b = smooth_noise(cv, sl, cell * rng.uniform(0.6, 1.2), rng)
    ny = sl[1].stop - sl[1].start
    ant = np.linspace(1.0, -1.0, ny, dtype=np.float32)[None, :, None]  # +1 anterior (low y)
    b += ant * np.float32(rng.uniform(0.0, 0.8))
    sub = cv.tissue[sl]
    content = np.full(b.shape, T.BOWEL, np.uint8)
    g_thr, f_thr, s_thr = rng.uniform(0.6, 1.4), rng.uniform(-1.4, -0.7), rng.uniform(-0.5, 0.3)
    content[b < s_thr] = T.SOFT
    content[b < f_thr] = T.FLUID
    content[b > g_thr] = T.GAS
    sub[loops] = content[loops]
    sub[wall] = T.SOFT
    meta["visceral_fat"] = fat_frac


def _paint_neck(cv: Canvas, spine: Spine, rng: np.random.Generator) -> None:
    """Trachea, oesophagus and neck vessels in front of the cervical spine."""
    pts, _vpts = [], []
    for n in ("C4", "C5", "C6", "C7", "T1", "T2", "T3", "T4"):
        lv = spine.by_name(n)
        pts.append(lv.frame.to_world((0, lv.D / 2 + 20, 0)))
    pts = np.array(pts)
    cv.stamp_tube(pts, 9.0, tissue=T.SOFT)
    cv.stamp_tube(pts, 7.0, tissue=T.GAS)
    for side in (-1, 1):
        vp = np.array([spine.by_name(n).frame.to_world((side * 28, 12, 0)) for n in ("C2", "C4", "C6", "T1")])
        cv.stamp_tube(vp, 5.0, tissue=T.BLOOD)


def _paint_muscles(cv: Canvas, spine: Spine, rng: np.random.Generator) -> None:
    """Psoas muscles beside the lumbar bodies, growing towards the pelvis."""
    for n, r in (("T12", 6), ("L1", 10), ("L2", 14), ("L3", 18), ("L4", 21), ("L5", 23), ("S1", 24)):
        if not spine.has(n):
            continue
        lv = spine.by_name(n)
        hh = lv.H / 2 + lv.disc + 1
        r = r * rng.uniform(0.85, 1.15)
        for side in (-1, 1):
            c = (side * (lv.W / 2 + r * 0.7), -lv.D * 0.05 + (10 if n == "S1" else 0), 0)
            cv.paint_tissue(lv.frame, (c[0] - r - 2, c[1] - r - 2, -hh - 2), (c[0] + r + 2, c[1] + r + 2, hh + 2),
                            lambda L, A, U, c=c, r=r, hh=hh: np.maximum(
                                np.hypot((L - c[0]) / r, (A - c[1]) / (r * 0.85)) * r - r, np.abs(U) - hh),
                            T.MUSCLE, only_on=(T.FAT, T.SOFT, T.BOWEL, T.GAS, T.KIDNEY, T.FLUID))


def _paint_table(cv: Canvas, P: dict, rng: np.random.Generator, meta: dict) -> None:
    """Curved patient table under the back (posterior), present in most scans."""
    if rng.random() > 0.7:
        return
    yb = float(np.max(P["ys"] + P["Bk"] + P["fat"] * 0.5)) + rng.uniform(1, 15)
    xc = float(np.mean(P["xs"]))
    X = cv.xs[None, :]
    Y = cv.ys[:, None]
    ysurf = yb - 0.0012 * (X - xc) ** 2
    plate = (Y >= ysurf) & (Y <= ysurf + rng.uniform(3, 8))
    t = cv.tissue
    t[(t == T.AIR) & plate[None]] = T.TABLE
    meta["table_y"] = yb
