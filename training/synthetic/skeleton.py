"""Bones around the spine: ribs, costal cartilage, sternum, scapulae, clavicles, pelvis, femora, skull.

They are not labelled (0 in the label map) but they must be there: ribs are how radiologists count
thoracic levels, and the pelvis is what surrounds the lumbosacral junction in the real CT.
"""

import numpy as np

from . import tissues as T
from .anatomy import Level, Spine
from .canvas import BONE_OTHER, BONE_PELVIS, BONE_RIB, BONE_SKULL, Canvas, Frame, sd_ellipsoid

# rib index (1..13): (half-span, AP semi-axis, end angle deg from the posterior pole, drop mm)
_RIB = {1: (55, 45, 165, 25), 2: (75, 62, 170, 45), 3: (90, 75, 170, 60), 4: (100, 85, 170, 70),
        5: (108, 90, 170, 78), 6: (113, 93, 168, 82), 7: (116, 95, 162, 85), 8: (118, 95, 150, 85),
        9: (118, 93, 140, 80), 10: (115, 90, 130, 72), 11: (108, 85, 105, 50), 12: (100, 80, 80, 30),
        13: (90, 75, 60, 20)}


def paint_ribcage(cv: Canvas, spine: Spine, rng: np.random.Generator, cortical_mm: float,
                  rib_dense: float = 0.45) -> None:
    """Twelve (or 11 / 13) rib pairs from the thoracic vertebrae, cartilage, sternum, scapulae."""
    size = float(rng.uniform(0.85, 1.15))
    sternum_pts = []
    rib_levels = [lv for lv in spine.levels if lv.ribs]
    for i, lv in enumerate(rib_levels, start=1):
        span, ap, end, drop = _RIB[min(i, 13)]
        if i == len(rib_levels) and i >= 11:
            end, drop = min(end, _RIB[12][2]), _RIB[12][3]  # the last rib floats
        span *= size * rng.uniform(0.95, 1.05)
        ap *= size * rng.uniform(0.95, 1.05)
        fr = lv.frame
        a_e = -32.0 + ap  # ellipse centre: its posterior pole lies behind the transverse processes
        phi0 = np.deg2rad(28)
        for side in (-1, 1):
            pts = rib_points(lv, side, span, ap, end, drop)
            r = np.linspace(4.8, 3.6, len(pts)) * (1.15 if i == 1 else 1.0)
            cv.stamp_tube(pts, r, cortical_mm, BONE_RIB, dense=rib_dense)
            if end >= 150:  # costal cartilage to the sternum
                cphi = np.deg2rad(np.linspace(end, 178, 6))
                cfrac = (cphi - phi0) / (np.pi - phi0)
                cl = np.stack([side * span * np.sin(cphi), a_e - ap * np.cos(cphi),
                               lv.H * 0.2 - drop * cfrac ** 1.3 + (cphi - cphi[0]) * 25 * (i > 7)], axis=1)
                cpts = fr.origin[None, :] + cl @ fr.rot.T
                cv.stamp_tube(cpts, 4.0, tissue=T.CARTILAGE)
                if side == 1 and i <= 7:
                    sternum_pts.append(cpts[-1])
    if len(sternum_pts) >= 2:
        sp = np.array(sternum_pts)
        up = spine.by_name("T1").frame.up
        sp = np.concatenate([[sp[0] + up * 25], sp, [sp[-1] - up * 25]])
        for dx in (-6.0, 6.0):
            cv.stamp_tube(sp + np.array([dx, 0, 0]), 6.5, cortical_mm, BONE_OTHER, dense=0.2)

    # scapulae behind the upper ribs, clavicles from the manubrium to the shoulders
    t3 = spine.by_name("T3").frame
    t1 = spine.by_name("T1").frame
    for side in (-1, 1):
        c = (side * 95 * size, -60.0, -25.0)
        cv.paint_bone(t3, np.array(c) - 52, np.array(c) + 52,
                      lambda L, A, U, c=c: sd_ellipsoid(L, A, U, c, (45 * size, 5.0, 65 * size)),
                      cortical_mm, BONE_OTHER, dense=0.6)
        cl = np.array([(side * 25, 95 * size, 25), (side * 70, 95 * size, 35), (side * 120, 70 * size, 40),
                       (side * 140 * size, 30, 40)], float)
        cv.stamp_tube(t1.origin[None, :] + cl @ t1.rot.T, 6.0, cortical_mm, BONE_OTHER, dense=0.4)


def rib_points(lv: Level, side: int, span: float, ap: float, end: float, drop: float) -> np.ndarray:
    """LPS points (N, 3) of one rib of vertebra ``lv``: head at the body, tubercle behind the transverse
    process, then an elliptic arc (half-span ``span``, AP semi-axis ``ap``) from 28 deg to ``end`` deg from its
    posterior pole, dropping ``drop`` mm over a half turn. ``side`` +1 = patient left, -1 = right."""
    fr = lv.frame
    ac = -(lv.D / 2 + lv.canal_d / 2 + 1.0)
    a_e = -32.0 + ap  # ellipse centre: its posterior pole lies behind the transverse processes
    phi0 = np.deg2rad(28)
    head = (side * (lv.W / 2 + 1.5), -lv.D * 0.3, lv.H * 0.3)
    tub = (side * (lv.canal_w / 2 + lv.ped_w + lv.tp_len * 0.8), ac - 6, lv.H * 0.2)
    phis = np.deg2rad(np.arange(28, end + 1, 6.0))
    frac = (phis - phi0) / (np.pi - phi0)
    arc = np.stack([side * span * np.sin(phis), a_e - ap * np.cos(phis),
                    lv.H * 0.2 - drop * frac ** 1.3], axis=1)
    local = np.concatenate([[head, tub], arc], axis=0)
    return fr.origin[None, :] + local @ fr.rot.T


def _pelvis_frame(spine: Spine) -> Frame:
    """Frame at the S1 body centre, lateral axis of S1, vertical axis of the patient."""
    s1 = spine.by_name("S1").frame
    up = np.array([0.0, 0.0, 1.0])
    lat = s1.lat - (s1.lat @ up) * up
    lat /= np.linalg.norm(lat)
    ant = np.cross(lat, up)
    return Frame(s1.origin.copy(), lat, ant, up)


def paint_pelvis(cv: Canvas, spine: Spine, rng: np.random.Generator, cortical_mm: float) -> None:
    """Iliac wings fused to the sacral alae, acetabula, femoral heads and shafts, pubis, ischium."""
    fr = _pelvis_frame(spine)
    k = float(rng.uniform(0.88, 1.15))
    _lo, _hi = fr.origin.min() - 400, fr.origin.max() + 400
    if fr.origin[2] - 330 > cv.extent_max[2] or fr.origin[2] + 90 < cv.extent_min[2]:
        return
    def w(pts):
        return fr.origin[None, :] + np.asarray(pts, float) @ fr.rot.T
    for s in (-1, 1):
        # iliacus muscle along the inner face of the wing
        c = (s * 72 * k, 25 * k, -10 * k)
        cv.paint_tissue(fr, np.array(c) - 50, np.array(c) + 50,
                        lambda L, A, U, c=c: sd_ellipsoid(L, A, U, c, (22 * k, 40 * k, 45 * k)),
                        T.MUSCLE, only_on=(T.FAT, T.BOWEL, T.GAS, T.SOFT, T.FLUID))
        # wing: stack of arcs from the sacroiliac joint (posterior) to the anterior spines
        acet = np.array([72.0, 12.0]) * k
        for v in np.linspace(0.0, 1.0, 26):
            z = (-75 + 120 * v) * k
            wv = np.clip(v / 0.35, 0, 1)
            wv = wv * wv * (3 - 2 * wv)
            p0 = np.array([46 + 14 * v, -22 - 22 * v]) * k
            p1 = np.array([55 + 72 * v, 18 + 48 * v]) * k
            p0 = acet + (p0 - acet) * (0.35 + 0.65 * wv)
            p1 = acet + (p1 - acet) * (0.35 + 0.65 * wv)
            t = np.linspace(0, 1, 9)
            seg = p1 - p0
            n = np.array([seg[1], -seg[0]]) / (np.linalg.norm(seg) + 1e-6)  # lateral-posterior normal
            xy = p0[None] + t[:, None] * seg[None] + (14 * k * np.sin(np.pi * t))[:, None] * n[None]
            pts = np.stack([s * xy[:, 0], xy[:, 1], np.full(len(t), z)], axis=1)
            r = 3.2 + 6.0 * (1 - wv) + (2.5 if v > 0.97 else 0.0)
            cv.stamp_tube(w(pts), r, cortical_mm, BONE_PELVIS, dense=0.35)
        # acetabular roof, femoral head, neck and shaft
        head = np.array([s * 88, 30, -98]) * k
        cv.paint_bone(fr, head - 32 * k, head + 32 * k,
                      lambda L, A, U, h=head: np.maximum(np.abs(np.sqrt((L - h[0]) ** 2 + (A - h[1]) ** 2 + (U - h[2]) ** 2)
                                                                 - 27 * k) - 3.5, -(U - h[2] + 5)),
                      cortical_mm, BONE_PELVIS, dense=0.3)
        cv.stamp_tube(w([head, head + np.array([s * 30, -5, -20]) * k]), [22 * k, 16 * k], cortical_mm,
                      BONE_OTHER)
        shaft = [head + np.array([s * 38, -8, -28]) * k, head + np.array([s * 45, -5, -90]) * k,
                 head + np.array([s * 40, 0, -260]) * k]
        cv.stamp_tube(w(shaft), [18 * k, 14 * k, 13 * k], cortical_mm * 2.5, BONE_OTHER)
        # pubic and ischial rami closing the pelvic ring
        ramus = np.array([head + np.array([-s * 20, 18, -5]) * k, [s * 45 * k, 80 * k, -108 * k],
                          [s * 10 * k, 98 * k, -112 * k]])
        cv.stamp_tube(w(ramus), 8.0 * k, cortical_mm, BONE_PELVIS, dense=0.3)
        isch = np.array([head + np.array([-s * 10, -25, -15]) * k, [s * 62 * k, -10 * k, -150 * k],
                         [s * 38 * k, 55 * k, -140 * k], [s * 12 * k, 92 * k, -120 * k]])
        cv.stamp_tube(w(isch), [11 * k, 11 * k, 7 * k, 7 * k], cortical_mm, BONE_PELVIS, dense=0.3)
    # sacroiliac joints: fill between the alae and the wings
    s1 = spine.by_name("S1")
    for s in (-1, 1):
        a = np.array([s * (s1.W / 2 + s1.W * 0.42), -12.0, -8.0])
        b = np.array([s * 52 * k, -28 * k, -20 * k])
        cv.stamp_tube(w([a, b, b + np.array([0, 0, -30])]), 9.0, cortical_mm, BONE_PELVIS, dense=0.3)


def paint_skull_and_shoulders(cv: Canvas, spine: Spine, rng: np.random.Generator, cortical_mm: float) -> None:
    """Skull base, cranium, brain and mandible above / in front of the upper cervical spine."""
    c1 = spine.by_name("C1").frame
    if c1.origin[2] - 40 > cv.extent_max[2] or c1.origin[2] + 200 < cv.extent_min[2]:
        return
    k = float(rng.uniform(0.9, 1.1))
    hc = np.array([0.0, 22.0, 78.0]) * k
    hr = np.array([74.0, 95.0, 85.0]) * k
    cv.paint_tissue(c1, hc - hr - 3, hc + hr + 3, lambda L, A, U: sd_ellipsoid(L, A, U, hc, hr), T.MUSCLE,
                    only_on=(T.AIR, T.FAT, T.TABLE))
    br = hr - 9
    cv.paint_tissue(c1, hc - br - 3, hc + br + 3, lambda L, A, U: sd_ellipsoid(L, A, U, hc, br), T.BRAIN)

    def skull(L, A, U):
        shell = np.maximum(sd_ellipsoid(L, A, U, hc, hr - 2.0), -sd_ellipsoid(L, A, U, hc, br))
        shell = np.maximum(shell, 14 - U)  # open below: the skull base is separate
        base = np.maximum(sd_ellipsoid(L, A, U, (0, 18, 20), (48 * k, 55 * k, 9)),
                          -(np.hypot(L, A + 6) - 17))  # foramen magnum over the canal
        condyles = np.minimum(sd_ellipsoid(L, A, U, (-14, 2, 11), (7, 10, 6)),
                              sd_ellipsoid(L, A, U, (14, 2, 11), (7, 10, 6)))
        return np.minimum(np.minimum(shell, base), condyles)
    cv.paint_bone(c1, hc - hr - 3, hc + hr + 3, skull, cortical_mm * 2, BONE_SKULL, dense=0.5)
    c2 = spine.by_name("C2").frame
    mand = np.array([(-48, 18, 32), (-47, 32, -6), (-28, 72, -14), (0, 84, -16), (28, 72, -14),
                     (47, 32, -6), (48, 18, 32)], float) * k
    cv.stamp_tube(c2.origin[None, :] + mand @ c2.rot.T, 6.0, cortical_mm * 1.5, BONE_SKULL, dense=0.4)
    # pharynx air in front of C2-C4
    ph = [spine.by_name(n).frame.to_world((0, spine.by_name(n).D / 2 + 11, 0)) for n in ("C1", "C2", "C3", "C4")]
    cv.stamp_tube(np.array(ph), 6.0, tissue=T.GAS)
