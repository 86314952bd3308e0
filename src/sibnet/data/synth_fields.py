"""Vectorised drawing primitives shared by the synthetic datasets.

Every shape is a function of continuous coordinates, so a case looks the same at any pixel
size. Conventions: images are addressed by normalised coordinates ``x`` (left to right) and
``y`` (top to bottom), both in ``[-1, 1]`` at the pixel centres; one pixel is ``2 / size``
units wide. Soft shapes return membership in ``[0, 1]`` with compact support (they are exactly
zero a short, bounded distance outside the shape), which lets a mask ``> 0`` contain every pixel
the shape changed.
"""

from __future__ import annotations

import numpy as np


def key_rng(*key: int) -> np.random.Generator:
    """A generator that depends on the integer key alone (numpy's ``SeedSequence`` hashing)."""
    return np.random.default_rng(np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in key]))


def axis(size: int) -> np.ndarray:
    """Normalised pixel-centre coordinates along one axis, ``(size,)`` float32."""
    return ((np.arange(size, dtype=np.float64) + 0.5) * (2.0 / size) - 1.0).astype(np.float32)


class Frame:
    """An affine coordinate frame on a ``size`` x ``size`` image: ``u = ux . (x, y, 1)``,
    ``v = vx . (x, y, 1)``; ``.u`` and ``.v`` are the float32 coordinate grids."""

    def __init__(self, size: int, ux=(1.0, 0.0, 0.0), vx=(0.0, 1.0, 0.0)):
        self.size, self.ux, self.vx = int(size), tuple(map(float, ux)), tuple(map(float, vx))
        t = axis(size)
        x, y = t[None, :], t[:, None]
        self.u = (np.float32(self.ux[0]) * x + np.float32(self.ux[1]) * y + np.float32(self.ux[2]))
        self.v = (np.float32(self.vx[0]) * x + np.float32(self.vx[1]) * y + np.float32(self.vx[2]))


def smoothstep(edge0, edge1, x):
    """0 below ``edge0``, 1 above ``edge1`` (either order), cubic Hermite ramp between."""
    t = np.minimum(np.maximum((x - edge0) * (1.0 / (edge1 - edge0)), 0.0), 1.0)
    return t * t * (3.0 - 2.0 * t)


def inside(distance, width):
    """Soft membership from a signed distance (positive inside): 0 at ``distance <= 0``,
    1 at ``distance >= width``."""
    return smoothstep(0.0, width, distance)


def bump(r):
    """Compact radial bump ``(1 - r^2)^2`` for ``|r| < 1``, zero outside."""
    q = np.maximum(1.0 - r * r, 0.0)
    return q * q


def ellipse_radius(u, v, cu, cv, a, b, angle=0.0):
    """Elliptic radius (1 on the boundary) of an ellipse centred at ``(cu, cv)`` with semi-axes
    ``a`` (along the rotated first axis) and ``b``, rotated by ``angle`` radians."""
    c, s = np.cos(angle), np.sin(angle)
    du, dv = u - cu, v - cv
    p = (c * du + s * dv) / a
    q = (-s * du + c * dv) / b
    return np.sqrt(p * p + q * q)


def segment_distance(u, v, p0, p1):
    """Euclidean distance from every point to the segment ``p0``-``p1``."""
    du, dv = p1[0] - p0[0], p1[1] - p0[1]
    length2 = du * du + dv * dv
    t = np.clip(((u - p0[0]) * du + (v - p0[1]) * dv) / max(length2, 1e-12), 0.0, 1.0)
    eu, ev = u - (p0[0] + t * du), v - (p0[1] + t * dv)
    return np.sqrt(eu * eu + ev * ev)


def triangle_distance(u, v, pts):
    """Signed distance-like value to a triangle (positive inside, the minimum over its edges of
    the distance to each edge's line); ``pts`` in any winding order."""
    pts = np.asarray(pts, dtype=np.float64)
    area2 = (pts[1, 0] - pts[0, 0]) * (pts[2, 1] - pts[0, 1]) - (pts[2, 0] - pts[0, 0]) * (pts[1, 1] - pts[0, 1])
    sign = 1.0 if area2 > 0 else -1.0
    out = None
    for i in range(3):
        a, b = pts[i], pts[(i + 1) % 3]
        eu, ev = b[0] - a[0], b[1] - a[1]
        n = np.hypot(eu, ev)
        d = sign * (eu * (v - a[1]) - ev * (u - a[0])) / n
        out = d if out is None else np.minimum(out, d)
    return out


def fourier_field(rng: np.random.Generator, frame: Frame, n_modes: int = 16, freq=(4.0, 12.0)):
    """A smooth random field of about unit standard deviation on ``frame``: a sum of
    ``n_modes`` plane waves ``cos(ku u + kv v + phase)`` with random directions, phases and
    angular frequencies in ``freq`` (radians per normalised unit). Draws a fixed number of
    values from ``rng``. Since ``(u, v)`` is affine in the pixel grid, each wave factors into a
    row and a column term and the sum is one small complex matrix product."""
    theta = rng.uniform(0.0, np.pi, n_modes)
    omega = rng.uniform(freq[0], freq[1], n_modes)
    phase = rng.uniform(0.0, 2.0 * np.pi, n_modes)
    ku, kv = omega * np.cos(theta), omega * np.sin(theta)
    alpha = ku * frame.ux[0] + kv * frame.vx[0]  # per-mode frequency along x
    beta = ku * frame.ux[1] + kv * frame.vx[1]  # along y
    gamma = ku * frame.ux[2] + kv * frame.vx[2] + phase
    t = axis(frame.size).astype(np.float64)
    ax, by = np.outer(alpha, t), np.outer(t, beta) + gamma  # (M, W), (H, M)
    rows = np.concatenate([np.cos(by), -np.sin(by)], axis=1)
    cols = np.concatenate([np.cos(ax), np.sin(ax)], axis=0)
    # einsum without BLAS: tiny products, and no thread pool to oversubscribe on a busy machine
    out = np.einsum("hm,mw->hw", rows.astype(np.float32), cols.astype(np.float32))
    return out * np.float32(np.sqrt(2.0 / n_modes))
