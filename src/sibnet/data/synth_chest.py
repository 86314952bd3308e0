"""Rendering of one synthetic frontal (PA) chest radiograph with chosen findings.

Conventions
-----------
* Patient coordinates ``(u, v)``: ``u`` left to right on the image (the patient's right lung is
  on the image left, ``u < 0``), ``v`` top to bottom, thorax roughly within ``[-0.8, 0.8]``.
  ``s = -1`` is the image-left hemithorax, ``s = +1`` the image-right one (heart side), and
  ``w = s * u`` is the distance from the midline on side ``s``.
* The image is built in an attenuation domain ``A`` (bright = dense): soft tissue, air in the
  lungs, heart and mediastinum, bones; each finding adds its own non-negative attenuation field.
  A per-case pointwise display map (window, gamma, noise, 8-bit quantisation) turns ``A`` into
  the image in ``[0, 1]``. Since every step after the sum is pointwise, a finding changes the
  image only where its field is non-zero.
* A finding's mask is where its density (its opacity relative to its full strength, in [0, 1])
  exceeds ``MASK_FRACTION`` (its "material" extent); the Cardiomegaly mask is the whole (enlarged)
  heart silhouette (heart membership above ``MASK_FRACTION``), which contains the normal heart of
  the same patient.
* A present finding is always visible: one that an enlarged heart would hide entirely is drawn
  in the other lung instead.
* Each case is a pure function of an integer key: separate random streams draw the anatomy,
  the acquisition and each finding's parameters, so removing one finding leaves the rest of the
  image (anatomy, other findings, noise) unchanged.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from .synth_fields import (
    Frame,
    bump,
    ellipse_radius,
    fourier_field,
    inside,
    key_rng,
    segment_distance,
    smoothstep,
    triangle_distance,
)

CLASS_NAMES = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
MASK_FRACTION = 0.1
UNCERTAIN_STRENGTH = 0.6  # uncertain positives are drawn fainter (borderline findings)
_ANATOMY, _ACQUISITION, _NOISE, _FINDING = 1, 2, 3, 10


def _lerp(a, b, t):
    return a + (b - a) * t


def sample_anatomy(rng: np.random.Generator, difficulty: float) -> dict:
    """Anatomy of one patient, including a normal and an enlarged cardiothoracic ratio."""
    gap = _lerp(0.10, 0.04, difficulty)
    p = dict(
        apex=rng.uniform(-0.76, -0.66), lat_r=rng.uniform(0.74, 0.82), lat_l=rng.uniform(0.74, 0.82),
        dome_r=rng.uniform(0.30, 0.40), dome_l=rng.uniform(0.36, 0.46), dome_k=rng.uniform(0.9, 1.3),
        ctr_normal=rng.uniform(0.5 - gap - 0.08, 0.5 - gap), ctr_large=rng.uniform(0.5 + gap, 0.5 + gap + 0.1),
        heart_angle=rng.uniform(0.35, 0.6), heart_b=rng.uniform(0.15, 0.19),
        rib0=rng.uniform(-0.80, -0.72), rib_sp=rng.uniform(0.125, 0.145), rib_curv=rng.uniform(0.36, 0.48),
        clav=rng.uniform(-0.74, -0.66), body=rng.uniform(0.9, 0.99), knob=rng.uniform(0.04, 0.08),
        hilum=rng.uniform(0.18, 0.24),
    )
    p["texture_seed"] = int(rng.integers(2**31))
    return p


def sample_acquisition(rng: np.random.Generator) -> dict:
    """Scanner and positioning: pose, window, gamma, noise level, exposure gradient."""
    return dict(
        angle=rng.uniform(-0.07, 0.07), scale=rng.uniform(0.92, 1.06), tx=rng.uniform(-0.04, 0.04),
        ty=rng.uniform(-0.03, 0.05), contrast=rng.uniform(0.85, 1.2), brightness=rng.uniform(-0.07, 0.06),
        gamma=rng.uniform(0.75, 1.3), noise=rng.uniform(0.006, 0.025), ramp=rng.uniform(-0.06, 0.06),
    )


def sample_finding(name: str, rng: np.random.Generator, anatomy: dict, difficulty: float) -> dict:
    """Appearance parameters of one finding (drawn whether or not it is present)."""
    strength = _lerp(1.0, 0.3, difficulty) * rng.uniform(0.85, 1.15)
    side = float(rng.choice([-1.0, 1.0]))
    p = dict(strength=strength, side=side, field_seed=int(rng.integers(2**31)))
    if name == "Pleural Effusion":
        p.update(both=bool(rng.random() < 0.35), height=rng.uniform(0.10, 0.40),
                 height2=rng.uniform(0.08, 0.30), meniscus=rng.uniform(0.08, 0.22))
    elif name == "Atelectasis":
        p.update(wedge=bool(rng.random() < 0.4), cw=rng.uniform(0.28, 0.55), cv=rng.uniform(0.0, 0.28),
                 tilt=rng.uniform(-0.35, 0.35), half=rng.uniform(0.12, 0.22), thick=rng.uniform(0.02, 0.035),
                 span=rng.uniform(0.10, 0.22))
    elif name == "Consolidation":
        p.update(lobe=int(rng.integers(3)), cw=rng.uniform(0.35, 0.55), ra=rng.uniform(0.16, 0.28),
                 rb=rng.uniform(0.13, 0.24), angle=rng.uniform(-0.6, 0.6))
    elif name == "Edema":
        p.update(ra=rng.uniform(0.42, 0.55), rb=rng.uniform(0.38, 0.5), cv=rng.uniform(-0.08, 0.06))
    return p


def sample_case(key, findings: dict | None = None, difficulty: float = 0.5) -> dict:
    """All parameters of the case with integer key ``key`` (an int or tuple of ints).
    ``findings`` maps class names to 1 (present), -1 (present, uncertain) or 0/absent."""
    key = (key,) if np.isscalar(key) else tuple(key)
    findings = dict(findings or {})
    anatomy = sample_anatomy(key_rng(*key, _ANATOMY), difficulty)
    return dict(
        key=key, anatomy=anatomy, acquisition=sample_acquisition(key_rng(*key, _ACQUISITION)),
        state={n: int(findings.get(n, 0)) for n in CLASS_NAMES},
        params={n: sample_finding(n, key_rng(*key, _FINDING + i), anatomy, difficulty)
                for i, n in enumerate(CLASS_NAMES)},
    )


def _frame(acq: dict, size: int) -> Frame:
    """Patient coordinates of the pixel grid: inverse of the pose (rotation, scale, shift)."""
    c, s, k = np.cos(acq["angle"]), np.sin(acq["angle"]), 1.0 / acq["scale"]
    tx, ty = acq["tx"], acq["ty"]
    return Frame(size, (c * k, s * k, -(c * tx + s * ty) * k), (-s * k, c * k, (s * tx - c * ty) * k))


def _heart(a: dict, large: bool, dome, u, v, e):
    """Heart ellipse whose width is ``ctr_normal`` times the thoracic width; an enlarged heart is
    the normal one scaled by ``ctr_large / ctr_normal`` about a point low in the heart, so it
    contains the normal silhouette (enlargement only adds opacity)."""
    half = 0.5 * a["ctr_normal"] * (a["lat_r"] + a["lat_l"])
    phi, b = a["heart_angle"], a["heart_b"]
    ax = np.sqrt(max(half**2 - (b * np.sin(phi)) ** 2, 1e-4)) / np.cos(phi)
    hu = half / 3.0
    dy = (ax * ax - b * b) * np.sin(phi) * np.cos(phi) / half  # row offset of the right extreme
    ev = np.sqrt((ax * np.sin(phi)) ** 2 + (b * np.cos(phi)) ** 2)
    floor = a["dome_l"] + a["dome_k"] * (hu + half - 0.42) ** 2
    hv = min(floor - dy - 0.03, a["dome_l"] + 0.12 - 0.75 * ev)
    if large:
        k = a["ctr_large"] / a["ctr_normal"]
        pu, pv = hu, hv + 0.6 * ev
        hu, hv, ax, b = pu + k * (hu - pu), pv + k * (hv - pv), k * ax, k * b
    r = ellipse_radius(u, v, hu, hv, ax, b, phi)
    return inside((1.0 - r) * min(ax, b), e) * inside(dome - v, e)


def anatomy_fields(case: dict, size: int) -> dict:
    """Attenuation and region fields of the case's anatomy at ``size`` pixels."""
    a, acq = case["anatomy"], case["acquisition"]
    frame = _frame(acq, size)
    u, v, e = frame.u, frame.v, 2.5 / size / acq["scale"]
    side = np.where(u < 0, -1.0, 1.0)
    w = np.abs(u)
    lat = np.where(u < 0, a["lat_r"], a["lat_l"])
    dome_peak = np.where(u < 0, a["dome_r"], a["dome_l"])
    dome = dome_peak + a["dome_k"] * (w - 0.42) ** 2 + 1.5 * np.clip(w - 0.62, 0, None) ** 2
    top = a["apex"] + 2.2 * (w - 0.34) ** 2
    taper = 0.34 * np.clip((0.3 - v) / (0.3 - a["apex"]), 0, 1) ** 2.2
    lateral = lat - taper
    med = 0.085 + 0.04 * smoothstep(-0.5, 0.1, v) + np.where(u > 0, a["knob"], 0.0) * bump((v + 0.38) / 0.1)
    thorax = inside(lateral - w, e) * inside(v - top, e) * inside(dome - v, e)
    lungs = thorax * inside(w - med, e)
    card = case["state"]["Cardiomegaly"] != 0
    heart = _heart(a, card, dome, u, v, e)
    air = lungs * (1.0 - heart)

    body_w = a["body"] * smoothstep(-1.05, -0.62, v) + 0.3 * smoothstep(-0.62, -1.05, v)
    body = inside(body_w - w, 0.08)
    abdomen = body * smoothstep(dome - 0.01, dome + 0.05, v)

    tex = key_rng(a["texture_seed"])
    ridges = (1.0 - np.minimum(np.abs(fourier_field(tex, frame, 20, (8.0, 22.0))), 1.0)) ** 4
    hilar = np.exp(-(((w - a["hilum"]) / 0.22) ** 2 + ((v + 0.02) / 0.25) ** 2))
    markings = 0.075 * ridges * (0.3 + 0.7 * hilar) + 0.07 * hilar * (1 - smoothstep(0.05, 0.2, np.abs(w - a["hilum"])))

    # posterior ribs (all at once via a phase), fainter anterior ribs, clavicles, spine
    curve = -0.06 * w + a["rib_curv"] * w * w
    phase = (v - curve - a["rib0"]) / a["rib_sp"]
    k = np.round(phase)
    t = 0.026 + 0.0025 * np.clip(k, 0, 9)
    d = (phase - k) * a["rib_sp"] / t
    rib_zone = (k >= 0) & (k <= 9)
    rib_extent = inside(lateral + 0.05 - w, 0.04) * inside(w - 0.05, 0.03) * inside(dome + 0.12 - v, 0.05)
    ribs = np.where(rib_zone, 0.55 * bump(d) + 0.45 * bump((np.abs(d) - 0.85) / 0.3), 0.0) * rib_extent
    pa = (v - (a["rib0"] + 0.22 - 0.30 * w)) / (a["rib_sp"] * 1.3)
    ka = np.round(pa)
    ribs_a = np.where((ka >= 0) & (ka <= 5), bump((pa - ka) * 1.3 * a["rib_sp"] / 0.03), 0.0)
    ribs_a = ribs_a * inside(lateral - w, 0.05) * inside(w - 0.12, 0.05) * inside(dome - v, 0.05)
    clav_c = a["clav"] - 0.28 * w + 0.22 * w * w
    clavicle = bump((v - clav_c) / 0.032) * inside(0.66 - w, 0.05) * inside(w - 0.04, 0.02)
    spine = inside(0.055 - w, 0.02) * (0.8 + 0.2 * np.cos(2 * np.pi * v / 0.12)) * smoothstep(-1.0, -0.9, v)
    trachea = inside(0.032 - w, 0.012) * smoothstep(-0.28, -0.4, v)

    bubble = inside(1.0 - ellipse_radius(u, v, 0.36, a["dome_l"] + 0.14, 0.11, 0.06), 0.3)
    depth = 0.36 * (1.0 - 0.22 * smoothstep(-0.3, 0.5, v)) * (1.0 - 0.25 * smoothstep(0.5, 1.0, w / lateral.clip(0.3)))
    A = (0.50 * body + 0.10 * abdomen - depth * air - 0.10 * bubble * abdomen + 0.04 * heart + markings * air
         + 0.11 * ribs + 0.03 * ribs_a + 0.13 * clavicle + 0.10 * spine - 0.10 * trachea)
    return dict(frame=frame, u=u, v=v, e=e, w=w, side=side, A=A, air=air, heart=heart, thorax=thorax,
                dome=dome, lateral=lateral, lungs=lungs)


AMPLITUDE = {"Pleural Effusion": 0.36, "Atelectasis": 0.28, "Consolidation": 0.34, "Edema": 0.24}


def finding_density(name: str, p: dict, f: dict, case: dict) -> np.ndarray:
    """Where and how much of finding ``name`` there is, in [0, 1] (1 = full opacity); the image
    gains ``AMPLITUDE[name] * strength * density`` attenuation."""
    u, v, w, side, air = f["u"], f["v"], f["w"], f["side"], f["air"]
    rng = key_rng(p["field_seed"])
    if name == "Pleural Effusion":
        out = np.zeros_like(u)
        sides = [(p["side"], p["height"])] + ([(-p["side"], p["height2"])] if p["both"] else [])
        for s, height in sides:
            peak = case["anatomy"]["dome_l" if s > 0 else "dome_r"]
            level = peak - height
            surface = level - p["meniscus"] * np.clip((w - 0.15) / 0.6, 0, None) ** 2
            grade = smoothstep(surface, surface + 0.06, v) * (0.75 + 0.25 * smoothstep(surface, surface + 0.25, v))
            out += grade * (side == s)
        return out * air
    if name == "Atelectasis":
        s, cw, cv = p["side"], p["cw"], p["cv"]
        if p["wedge"]:
            tip = (s * max(cw - 0.25, 0.12), cv - 0.05)
            base = s * (cw + 0.2)
            dist = triangle_distance(u, v, [tip, (base, cv + 0.02), (base, cv + 0.02 + p["span"])])
            field = inside(dist, 0.025)
        else:
            du, dv = np.cos(p["tilt"]) * p["half"], np.sin(p["tilt"]) * p["half"]
            dist = segment_distance(u, v, (s * cw - du, cv - dv), (s * cw + du, cv + dv))
            field = bump(dist / p["thick"])
        return field * air * (side == s)
    if name == "Consolidation":
        s, lobe = p["side"], p["lobe"]
        fissure = -0.06 + 0.08 * (w - 0.2)
        if lobe == 0:  # upper lobe
            zone, cv = inside(fissure - v, 0.03), -0.35
        elif lobe == 1:  # lower lobe
            zone, cv = inside(v - fissure - 0.12, 0.03), 0.2
        else:  # middle lobe (right) / lingula (left)
            zone, cv = inside(v - fissure, 0.03) * inside(fissure + 0.28 - v, 0.03), 0.06
        r = ellipse_radius(u, v, s * p["cw"], cv, p["ra"], p["rb"], p["angle"])
        g = (1.0 - r * r) + 0.5 * fourier_field(rng, f["frame"], 14, (9.0, 20.0))
        patch = 0.55 + 0.45 * smoothstep(-0.8, 0.8, fourier_field(rng, f["frame"], 14, (14.0, 30.0)))
        return smoothstep(0.0, 0.5, g) * patch * zone * air * (side == s) * (r < 1.6)
    if name == "Edema":
        r = ellipse_radius(w, v, case["anatomy"]["hilum"] + 0.05, p["cv"], p["ra"], p["rb"])
        fluff = 0.7 + 0.3 * smoothstep(-1.0, 1.0, fourier_field(rng, f["frame"], 12, (8.0, 18.0)))
        return bump(r) * fluff * air
    raise KeyError(name)


def render(case: dict, size: int):
    """Render a case: ``(image (size, size) uint8, masks (5, size, size) bool, parts)`` where ``parts``
    holds the boolean ``heart`` and ``thorax`` regions."""
    f = anatomy_fields(case, size)
    A = f["A"].copy()
    masks = np.zeros((len(CLASS_NAMES), size, size), dtype=bool)
    for i, name in enumerate(CLASS_NAMES):
        state = case["state"][name]
        if state == 0:
            continue
        if name == "Cardiomegaly":
            masks[i] = f["heart"] > MASK_FRACTION
            continue
        p = case["params"][name]
        density = finding_density(name, p, f, case)
        if density.max() <= MASK_FRACTION:  # hidden behind an enlarged heart: use the other lung
            p = {**p, "side": -p["side"]}
            density = finding_density(name, p, f, case)
        A += AMPLITUDE[name] * p["strength"] * (UNCERTAIN_STRENGTH if state < 0 else 1.0) * density
        masks[i] = density > MASK_FRACTION
    acq = case["acquisition"]
    ramp = acq["ramp"] * f["u"]
    img = np.clip(acq["brightness"] + acq["contrast"] * (A + ramp), 0.0, 1.0) ** acq["gamma"]
    img = img + acq["noise"] * key_rng(*case["key"], _NOISE).standard_normal((size, size), dtype=np.float32)
    img = np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)
    return img, masks, {"heart": f["heart"] > 0.5, "thorax": f["thorax"] > 0.5}


def to_float(image_u8: np.ndarray) -> np.ndarray:
    """8-bit image to float32 in [0, 1] (the one conversion used everywhere)."""
    return image_u8.astype(np.float32) / np.float32(255.0)


def render_case(seed, size: int = 128, findings: dict | None = None, *, difficulty: float = 0.5,
                return_parts: bool = False):
    """Draw one case with chosen findings: ``findings`` maps class names to 1, -1 (uncertain)
    or 0. Returns ``(image (1, H, W) float32, masks (5, H, W) float32)`` and, with
    ``return_parts``, a dict of boolean anatomy regions (``heart``, ``thorax``). The same seed
    with different findings gives the same patient, acquisition and noise."""
    unknown = set(findings or {}) - set(CLASS_NAMES)
    if unknown:
        raise ConfigError(f"render_case: unknown finding(s) {sorted(unknown)}; choose from {list(CLASS_NAMES)}")
    img, masks, parts = render(sample_case(seed, findings, difficulty), int(size))
    out = (to_float(img)[None], masks.astype(np.float32))
    return (*out, parts) if return_parts else out


def cardiothoracic_ratio(heart: np.ndarray, thorax: np.ndarray) -> float:
    """Heart width (leftmost to rightmost heart pixel, any rows) over the widest row of the
    thorax, as read on a PA radiograph."""
    cols = np.flatnonzero(heart.any(axis=0))
    spans = [np.flatnonzero(r) for r in thorax if r.any()]
    widest = max(s[-1] - s[0] + 1 for s in spans)
    return float((cols[-1] - cols[0] + 1) / widest)
