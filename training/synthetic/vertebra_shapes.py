"""Procedural vertebra shapes painted as signed distance functions in each vertebra's frame.

Local axes: L = patient left, A = anterior, U = superior, origin = vertebral body centre
(for C1, which has no body, the centre of its ring in front of the dens).
"""


import numpy as np

from . import tissues as T
from .anatomy import Level, Spine
from .canvas import (
    BONE_SACRUM_LOW,
    Canvas,
    Frame,
    sd_box,
    sd_capsule,
    sd_ellcyl,
    sd_ellipse2,
    sd_ellipsoid,
    smooth_union,
)


def _arch_centre(lv: Level) -> float:
    """Anterior coordinate of the spinal canal centre."""
    return -(lv.D / 2 + lv.canal_d / 2 + 1.0)


def body_sdf(lv: Level, waist: float = 0.05):
    """SDF of the vertebral body: a waisted super-elliptic cylinder, wedge-shaped when compressed."""
    rw, rd = lv.W / 2, lv.D / 2
    comp_a, comp_p = lv.compression, lv.compression_post

    def f(L, A, U):
        hh = lv.H / 2 * (comp_p + (comp_a - comp_p) * np.clip((A + rd) / (2 * rd), 0, 1))
        w = 1.0 - waist * np.clip(1.0 - (U / np.maximum(hh, 1.0)) ** 2, 0, 1)
        # the posterior wall is flatter than the anterior one
        rdy = np.where(A < 0, rd * 0.9, rd)
        k = ((np.abs(L) / (rw * w)) ** 2.4 + (np.abs(A) / (rdy * w)) ** 2.4) ** (1 / 2.4)
        d2 = (k - 1.0) * min(rw, rd)
        return np.maximum(d2, np.abs(U) - hh)

    return f


def _arch_parts(lv: Level):
    """Posterior elements of a typical vertebra as ``[(lo, hi, sdf), ...]`` in local coordinates."""
    ac = _arch_centre(lv)
    cw, cd = lv.canal_w / 2, lv.canal_d / 2
    pw = lv.ped_w
    lam = max(3.5, 0.18 * lv.H)
    hu = 0.15 * lv.H  # the arch sits on the upper half of the body
    hh = 0.36 * lv.H
    cerv = lv.kind in ("cervical", "C2")
    lumb = lv.kind == "lumbar"
    parts = []

    # pedicle + lamina ring around the canal, open towards the body
    def ring(L, A, U):
        outer = sd_ellipse2(L, A, (0, ac), (cw + pw, cd + lam), 2.0)
        inner = sd_ellipse2(L, A, (0, ac), (cw, cd), 2.0)
        return np.maximum(np.maximum(outer, -inner),
                          np.maximum(np.abs(U - hu) - hh, A - (-lv.D / 2 + 4)))
    parts.append(((-cw - pw - 2, ac - cd - lam - 2, hu - hh - 2), (cw + pw + 2, -lv.D / 2 + 6, hu + hh + 2), ring))

    back = ac - cd - lam * 0.6
    sa = np.deg2rad(lv.sp_angle)
    tip = (0.0, back - lv.sp_len * np.cos(sa), hu - lv.sp_len * np.sin(sa))
    if lumb:
        # lumbar spinous processes are tall, horizontal plates
        c = (0.0, back - lv.sp_len / 2, hu - 2.0)
        half = (3.0, lv.sp_len / 2 + 1, 0.3 * lv.H)
        parts.append(((-6, c[1] - half[1] - 3, c[2] - half[2] - 3), (6, back + 4, c[2] + half[2] + 3),
                      lambda L, A, U: sd_box(L, A, U, c, half, 2.5)))
    else:
        r0 = 3.5 if not cerv else 2.8

        def spin(L, A, U):
            d = sd_capsule(L, A, U, (0, back + 2, hu), tip, r0, r0 * 0.75)
            return np.minimum(d, sd_ellipsoid(L, A, U, tip, (r0 * 1.3, r0 * 1.2, r0 * 1.5)))
        parts.append(((-8, tip[1] - 8, tip[2] - 8), (8, back + 8, hu + 8), spin))

    tl = lv.tp_len
    tb = np.deg2rad(lv.tp_angle)
    for s in (-1, 1):
        if cerv:
            # anterior and posterior roots meeting at a tubercle leave the transverse foramen open
            tipc = (s * (lv.W / 2 + tl * 0.8), -lv.D * 0.15, hu * 0.3)
            a0 = (s * lv.W * 0.4, lv.D * 0.1, 0)
            p0 = (s * (cw + pw * 0.5), ac + 1, hu * 0.3)
            pil = (s * (cw + pw * 0.3), ac - 1, 0)

            def tp(L, A, U, tipc=tipc, a0=a0, p0=p0, pil=pil):
                d = np.minimum(sd_capsule(L, A, U, a0, tipc, 2.6, 2.2), sd_capsule(L, A, U, p0, tipc, 2.6, 2.2))
                return np.minimum(d, sd_ellipsoid(L, A, U, pil, (5.5, 6.5, lv.H / 2 + 3)))
            pts = np.array([tipc, a0, p0, pil])
            parts.append((pts.min(0) - (8, 8, lv.H / 2 + 5), pts.max(0) + (8, 8, lv.H / 2 + 5), tp))
        elif tl > 0:
            base = (s * (cw + pw * 0.5), ac, hu)
            tipc = (s * (cw + pw * 0.5 + tl * np.cos(tb)), ac - tl * np.sin(tb) - 2, hu + (2.0 if lumb else 0.0))
            r0 = 4.5 if not lumb else 3.8
            rt = r0 * (0.7 if lumb else 0.85)
            pts = np.array([base, tipc])
            parts.append((pts.min(0) - r0 - 2, pts.max(0) + r0 + 2,
                          lambda L, A, U, b=base, t=tipc, r0=r0, rt=rt: sd_capsule(L, A, U, b, t, r0, rt)))
        if lv.kind != "C2":
            # articular processes: superior ones reach up, inferior ones down, so neighbours interlock
            sup_c = (s * (cw + pw * 0.55), ac + 1.0, lv.H * 0.45 + 2)
            inf_c = (s * (cw + pw * 0.25), ac - cd * 0.6, -lv.H * 0.35)
            rr = (pw * 0.45 + 1.5, 5.5, 6.5)
            for c in (sup_c, inf_c):
                parts.append((np.array(c) - rr - 2, np.array(c) + rr + 2,
                              lambda L, A, U, c=c, rr=rr: sd_ellipsoid(L, A, U, c, rr)))
    return parts


def paint_soft_parts(cv: Canvas, spine: Spine) -> None:
    """Discs between bodies and the spinal canal: soft tissue under the bone."""
    levels = spine.levels
    for a, b in zip(levels[:-1], levels[1:]):
        if a.kind == "C1" or a.disc <= 0:
            continue
        top = b.frame.to_world((0, 0, b.H / 2 * b.compression_post))
        bot = a.frame.to_world((0, 0, -a.H / 2 * a.compression_post))
        mid = 0.5 * (top + bot)
        up = a.frame.up + b.frame.up
        up /= np.linalg.norm(up)
        ant = a.frame.ant + b.frame.ant
        ant -= (ant @ up) * up
        ant /= np.linalg.norm(ant)
        fr = Frame(mid, np.cross(up, ant), ant, up)
        rw, rd = (a.W + b.W) / 4 * 1.03, (a.D + b.D) / 4 * 1.03
        hh = max(np.linalg.norm(top - bot) / 2, 0.5) + 2.0
        cv.paint_tissue(fr, (-rw - 2, -rd - 2, -hh - 2), (rw + 2, rd + 2, hh + 2),
                        lambda L, A, U, rw=rw, rd=rd, hh=hh: sd_ellcyl(L, A, U, (0, 0, 0), (rw, rd), hh, 2.4),
                        T.DISC)
    for lv in levels:
        if lv.kind == "C1":
            continue
        ac = _arch_centre(lv)
        hh = lv.H / 2 + lv.disc + 2
        r = (lv.canal_w / 2 * 0.95, lv.canal_d / 2 * 0.95)
        cv.paint_tissue(lv.frame, (-r[0] - 2, ac - r[1] - 2, -hh - 2), (r[0] + 2, ac + r[1] + 2, hh + 2),
                        lambda L, A, U, r=r, ac=ac, hh=hh: sd_ellcyl(L, A, U, (0, ac, 0), r, hh), T.CANAL)


def paint_vertebra(cv: Canvas, lv: Level, density_id: int, cortical_mm: float, arch_dense: float = 0.3) -> None:
    """Paint one vertebra's bone (body + posterior elements) and its label; ``arch_dense`` is the cortical
    fraction inside the posterior elements."""
    fr = lv.frame
    label = lv.label
    if lv.kind == "C1":
        _paint_c1(cv, lv, density_id, cortical_mm)
        return
    bone_id = density_id
    # body, its own bounding box: it dominates the cost
    rw, rd = lv.W / 2, lv.D / 2
    cv.paint_bone(fr, (-rw - 3, -rd - 3, -lv.H / 2 - 3), (rw + 3, rd + 3, lv.H / 2 + 3),
                  body_sdf(lv), cortical_mm, bone_id, label,
                  dense=0.35 if lv.compression < 1 else 0.0)
    if lv.kind == "C2":
        # the dens rises from the body into the C1 ring
        cv.paint_bone(fr, (-8, -9, lv.H / 2 - 6), (8, 7, lv.H / 2 + 24),
                      lambda L, A, U: sd_capsule(L, A, U, (0, -1, lv.H / 2 - 4), (0, -1.5, lv.H / 2 + 16),
                                                 5.2, 4.5), cortical_mm, bone_id, label)
    if lv.kind in ("sacral", "sacral_low"):
        _paint_sacral_segment(cv, lv, bone_id, cortical_mm)
        return
    cv.paint_bone_parts(fr, _arch_parts(lv), cortical_mm, bone_id, label, dense=arch_dense)


def _paint_c1(cv: Canvas, lv: Level, bone_id: int, cortical_mm: float) -> None:
    """Atlas: anterior arch, two lateral masses, posterior arch and transverse processes, no body."""
    ac = -12.0 * lv.W / lv.W if lv.W else -12.0

    def f(L, A, U):
        outer = sd_ellipse2(L, A, (0, ac), (24.0, 21.0))
        inner = sd_ellipse2(L, A, (0, ac), (18.5, 16.5))
        ring = np.maximum(np.maximum(outer, -inner), np.abs(U) - 4.5)
        masses = np.minimum(sd_ellipsoid(L, A, U, (-17, -3, 0), (7.5, 10, 9)),
                            sd_ellipsoid(L, A, U, (17, -3, 0), (7.5, 10, 9)))
        tps = np.minimum(sd_capsule(L, A, U, (-18, -4, 0), (-36, -6, 1), 4.5, 3.5),
                         sd_capsule(L, A, U, (18, -4, 0), (36, -6, 1), 4.5, 3.5))
        return smooth_union(smooth_union(ring, masses, 2.0), tps, 2.0)
    cv.paint_bone(lv.frame, (-42, -38, -12), (42, 12, 12), f, cortical_mm, bone_id, lv.label, dense=0.4)


def _paint_sacral_segment(cv: Canvas, lv: Level, bone_id: int, cortical_mm: float) -> None:
    """Sacral alae (lateral masses reaching the sacroiliac joints) and the low sacral arch."""
    big = lv.name == "S1"
    ala_r = (lv.W * 0.5, lv.D * 0.45, lv.H * 0.7 + 2.0)  # wide, tall: S1-S2 alae form one plate
    ala_c = lv.W / 2 + ala_r[0] * 0.55
    ac = _arch_centre(lv)

    parts = []
    for sd in (-1, 1):
        c = np.array((sd * ala_c, -lv.D * 0.12, 0))
        parts.append((c - ala_r - 2, c + ala_r + 2, lambda L, A, U, c=c: sd_ellipsoid(L, A, U, c, ala_r)))
    ro = (lv.canal_w / 2 + 7, lv.canal_d / 2 + 6)

    def roof(L, A, U):
        return np.maximum(np.maximum(sd_ellipse2(L, A, (0, ac), ro),
                                     -sd_ellipse2(L, A, (0, ac), (lv.canal_w / 2, lv.canal_d / 2))),
                          np.maximum(np.abs(U) - lv.H / 2 - 1, A - (-lv.D / 2 + 4)))
    parts.append(((-ro[0] - 2, ac - ro[1] - 2, -lv.H / 2 - 3), (ro[0] + 2, -lv.D / 2 + 6, lv.H / 2 + 3), roof))
    c0 = np.array((0, ac - lv.canal_d / 2 - 4, lv.H * 0.2))
    c1 = np.array((0, ac - lv.canal_d / 2 - 4 - lv.sp_len, -lv.H * 0.2))
    parts.append((np.minimum(c0, c1) - 6, np.maximum(c0, c1) + 6,
                  lambda L, A, U: sd_capsule(L, A, U, c0, c1, 3.0, 2.5)))
    if big:  # superior articular processes facing L5
        for sd in (-1, 1):
            c = np.array((sd * (lv.canal_w / 2 + 4), ac + 1, lv.H / 2 + 4))
            parts.append((c - 10, c + 10, lambda L, A, U, c=c: sd_ellipsoid(L, A, U, c, (6, 6, 8))))
    label = lv.label if lv.kind == "sacral" else 0
    bid = bone_id if lv.kind == "sacral" else BONE_SACRUM_LOW
    cv.paint_bone_parts(lv.frame, parts, cortical_mm, bid, label, dense=0.2, blend=3.0)
