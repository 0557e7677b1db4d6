"""The pixels of the synthetic CT cohort (`components.demo.cohort`): one patient's axial slices in HU.

The anatomy, lesions and look-alikes are described in `components.demo.cohort`'s docstring. Every
random draw comes from the patient's generator, in a fixed order, so the same generator state gives
the same slices.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from components.config import CohortConfig


class Scanner(Protocol):
    """What a site's scanner does to a slice."""

    @property
    def noise_hu(self) -> float:
        """Standard deviation of quantum noise after reconstruction."""

    @property
    def blur_px(self) -> float:
        """Sigma of the reconstruction kernel's smoothing, in pixels at 64 px."""

    @property
    def offset_hu(self) -> float:
        """Calibration offset."""


@dataclass(frozen=True, eq=False)
class _Body:
    """One patient's anatomy and contrast phase, shared by all their slices (centre, half-axes in px)."""
    cx: float
    cy: float
    a0: float  # half-width of the body
    b0: float  # half-height
    fat: float
    fat_hu: float
    visceral_fat: float  # share of the anterior abdomen that is mesenteric fat
    fat_field: np.ndarray
    contrast: bool  # contrast-enhanced (portal venous) phase
    liver_hu: float
    kidney_hu: float
    aorta_hu: float
    tissue_hu: float
    liver_size: float
    spine_size: float
    kidney_size: float
    stomach: tuple[float, float, float, float] | None  # half-axes, content HU, gas share


@dataclass(frozen=True)
class _Lesion:
    """One patient's lesion type, size and density; each slice cuts through one to three of them."""
    subtle: bool
    radius: float
    hu: float
    rim_hu: float


@dataclass(frozen=True)
class _LookAlikes:
    """Benign look-alikes, independent of the label."""
    calcs: list[tuple[float, float, float]]
    tubes: list[tuple[float, float, float, float]]
    loops: list[tuple[float, float]]


def patient_images(rng: np.random.Generator, cfg: CohortConfig, scanner: Scanner,
                   lesion: bool) -> list[np.ndarray]:
    """Slices of one patient in HU (float64), sharing anatomy and, when present, lesion type."""
    n = cfg.image_size
    s = n / 64.0  # geometry below is written for 64 px and scaled
    body = _draw_body(rng, n, s)
    found = _draw_lesion(rng, s) if lesion else None
    look = _LookAlikes(
        calcs=[(rng.uniform(-0.6, 0.6), rng.uniform(-0.6, 0.5), rng.uniform(250, 600))
               for _ in range(int(rng.integers(0, 2)))],
        tubes=[(rng.uniform(-0.5, 0.5), rng.uniform(-0.5, 0.3), rng.uniform(0, np.pi), rng.uniform(60, 130))
               for _ in range(int(rng.integers(0, 3)))],
        loops=[(rng.uniform(-0.1, 0.5), rng.uniform(-0.6, -0.1)) for _ in range(int(rng.integers(0, 2)))],
    )
    count = cfg.images_per_patient
    images = []
    for k in range(count):
        zf = 1.0 + 0.03 * (k - (count - 1) / 2) / max(count, 1)
        canvas = _Canvas(n, body.cx, body.cy, body.a0 * zf, body.b0 * zf)
        outline, inner = _paint_body(rng, canvas, body, s)
        _paint_organs(rng, canvas, body, inner, grow=k / max(count - 1, 1))
        _paint_look_alikes(canvas, body, look, inner, s)
        if found is not None:
            _paint_lesions(rng, canvas, found, inner, s)
        images.append(_scan(rng, canvas.img, outline, scanner, s))
    return images


def _draw_body(rng: np.random.Generator, n: int, s: float) -> _Body:
    # Keyword arguments are evaluated in order: this is the order of the draws.
    return _Body(
        cx=n / 2 + rng.uniform(-2, 2) * s,
        cy=n / 2 + rng.uniform(-1.5, 1.5) * s,
        a0=n * rng.uniform(0.38, 0.45),
        b0=n * rng.uniform(0.27, 0.33),
        fat=rng.uniform(0.08, 0.22),
        fat_hu=rng.uniform(-120, -80),
        visceral_fat=rng.uniform(0.0, 0.25),
        fat_field=_blur(rng.standard_normal((n, n)), 3.0 * s),
        contrast=(contrast := rng.random() < 0.85),
        liver_hu=rng.uniform(52, 66) + (35 if contrast else 0),
        kidney_hu=rng.uniform(140, 190) if contrast else rng.uniform(28, 36),
        aorta_hu=rng.uniform(150, 220) if contrast else rng.uniform(38, 48),
        tissue_hu=rng.uniform(30, 45),
        liver_size=rng.uniform(0.85, 1.15),
        spine_size=rng.uniform(0.85, 1.2),
        kidney_size=rng.uniform(0.6, 1.2),
        stomach=(rng.uniform(0.12, 0.25), rng.uniform(0.12, 0.22), rng.uniform(30, 60), rng.uniform(0.3, 0.6))
        if rng.random() < 0.7 else None,
    )


def _draw_lesion(rng: np.random.Generator, s: float) -> _Lesion:
    subtle = rng.random() < 0.12
    radius = s * (rng.uniform(3.0, 4.0) if subtle else rng.uniform(4.0, 7.0))
    kind = str(rng.choice(["rim", "hypo", "hyper"], p=[0.2, 0.55, 0.25]))
    if kind == "hyper":  # calcified or haemorrhagic: bone-like density
        hu = rng.uniform(160, 190) if subtle else rng.uniform(200, 320)
    else:  # fat-containing or necrotic: between fat and water
        hu = rng.uniform(-20, 0) if subtle else rng.uniform(-90, -40)
    rim_hu = rng.uniform(60, 110) if kind == "rim" and not subtle else 0.0
    return _Lesion(subtle, radius, hu, rim_hu)


class _Canvas:
    """One slice being painted in HU (air to start), with the body's centre and half-axes."""

    def __init__(self, n: int, cx: float, cy: float, a: float, b: float) -> None:
        self.yy, self.xx = np.mgrid[0:n, 0:n].astype(np.float64) + 0.5
        self.cx, self.cy, self.a, self.b = cx, cy, a, b
        self.img = np.full((n, n), -1000.0)

    def ell(self, u: float, v: float, ra: float, rb: float, edge: float = 0.7) -> np.ndarray:
        """A soft ellipse centred at (u, v) with half-axes (ra, rb), all in body half-axes."""
        a, b = self.a, self.b
        d = np.sqrt(((self.xx - (self.cx + u * a)) / (ra * a)) ** 2
                    + ((self.yy - (self.cy + v * b)) / (rb * b)) ** 2)
        return _soft(1.0 - d, edge / (min(ra * a, rb * b)))

    def put(self, mask: np.ndarray, value: float) -> None:
        """Replace the image by `value` where `mask` is 1, blending where it is between."""
        self.img[:] = self.img * (1 - mask) + value * mask


def _paint_body(rng: np.random.Generator, c: _Canvas, body: _Body, s: float) -> tuple[np.ndarray, np.ndarray]:
    """Subcutaneous fat and textured soft tissue; returns the masks of the body and inside its fat."""
    n = c.img.shape[0]
    r = np.sqrt(((c.xx - c.cx) / c.a) ** 2 + ((c.yy - c.cy) / c.b) ** 2)
    outline = _soft(1.0 - r, 0.6 / c.a)
    inner = _soft((1.0 - body.fat) - r, 0.6 / c.a)
    c.img += outline * (body.fat_hu + 1000.0)  # air -> subcutaneous fat
    texture = _blur(rng.standard_normal((n, n)), 3.0 * s) * 40.0
    c.img += inner * (body.tissue_hu - body.fat_hu + texture)  # fat -> soft tissue with texture
    if body.visceral_fat > 0:  # irregular mesenteric fat, anterior, drifting a little between slices
        field = body.fat_field + 0.3 * _blur(rng.standard_normal((n, n)), 3.0 * s)
        anterior = (c.yy < c.cy + 0.2 * c.b).astype(np.float64)
        cut = np.quantile(field[inner * anterior > 0.5], 1.0 - body.visceral_fat)
        c.img[:] = c.img + _soft(field - cut, 0.02) * inner * anterior * (body.fat_hu - body.tissue_hu)
    return outline, inner


def _paint_organs(rng: np.random.Generator, c: _Canvas, body: _Body, inner: np.ndarray, grow: float) -> None:
    """Liver, spleen, stomach, kidneys, spine, great vessels and bowel gas; `grow` 0 top, 1 bottom."""
    put, ell = c.put, c.ell
    put(ell(-0.38, -0.12, body.liver_size * (0.44 - 0.06 * grow), body.liver_size * 0.55) * inner,
        body.liver_hu)
    put(ell(0.55, 0.05, 0.16, 0.28) * inner, body.liver_hu - 10)  # spleen
    if body.stomach is not None:  # enhancing wall, fluid, and a gas cap with a flat air-fluid level
        sa, sb, shu, gas = body.stomach
        put(ell(0.32, -0.3, sa, sb) * inner, body.liver_hu + 20)
        put(ell(0.32, -0.3, sa * 0.8, sb * 0.8) * inner, shu)
        cap = (c.yy < c.cy + (-0.3 - gas * 0.8 * sb) * c.b).astype(np.float64)
        put(ell(0.32, -0.3, sa * 0.8, sb * 0.8) * inner * cap, -900.0)
    for side in (-1, 1):  # kidneys grow towards the lower slices
        ks = body.kidney_size * (0.6 + 0.4 * grow)
        put(ell(side * 0.3, 0.45, 0.11 * ks, 0.2 * ks), body.kidney_hu)
    put(ell(0.0, 0.62, 0.13 * body.spine_size, 0.17 * body.spine_size), 650.0)  # vertebral body cortex
    put(ell(0.0, 0.62, 0.095 * body.spine_size, 0.125 * body.spine_size), 230.0)  # cancellous bone
    put(ell(0.0, 0.9, 0.03, 0.09), 500.0)  # spinous process
    put(ell(-0.06, 0.33, 0.055, 0.075), body.aorta_hu)
    put(ell(0.1, 0.3, 0.05, 0.06), body.aorta_hu * 0.8)  # inferior vena cava
    for _ in range(int(rng.integers(0, 2))):  # bowel gas moves between slices
        u, v = rng.uniform(-0.1, 0.5), rng.uniform(-0.75, -0.4)
        put(ell(u, v, rng.uniform(0.03, 0.07), rng.uniform(0.03, 0.06), 0.5) * inner, -900.0)


def _paint_look_alikes(c: _Canvas, body: _Body, look: _LookAlikes, inner: np.ndarray, s: float) -> None:
    for u, v in look.loops:  # fluid-filled bowel with enhancing wall
        c.put(c.ell(u, v, 0.1, 0.08) * inner, 90.0 if body.contrast else 45.0)
        c.put(c.ell(u, v, 0.075, 0.055) * inner, 40.0)
    for u, v, theta, dhu in look.tubes:  # vessel running in-plane: elongated, sharp
        du, dv = (c.xx - (c.cx + u * c.a)), (c.yy - (c.cy + v * c.b))
        along = du * np.cos(theta) + dv * np.sin(theta)
        across = -du * np.sin(theta) + dv * np.cos(theta)
        d = np.sqrt((along / (3.5 * s)) ** 2 + (across / (0.9 * s)) ** 2)
        c.img += _soft(1.0 - d, 0.3) * inner * (dhu if body.contrast else dhu * 0.3)
    for u, v, chu in look.calcs:  # punctate calcification: tiny and very dense
        c.put(c.ell(u, v, 0.6 * s / c.a, 0.6 * s / c.b, 0.4) * inner, chu)


def _paint_lesions(rng: np.random.Generator, c: _Canvas, lesion: _Lesion, inner: np.ndarray,
                   s: float) -> None:
    for _ in range(1 if lesion.subtle else int(rng.choice([1, 2, 3], p=[0.6, 0.3, 0.1]))):
        rk = lesion.radius * rng.uniform(0.75, 1.2)
        lu, lv = _lesion_site(rng, rk / (0.8 * (c.a + c.b)), in_liver=rng.random() < 0.9)
        d = np.sqrt((c.xx - (c.cx + lu * c.a)) ** 2 + (c.yy - (c.cy + lv * c.b)) ** 2)
        c.put(_soft(rk - d, 0.8) * inner, lesion.hu + rng.normal(0, 5))
        if lesion.rim_hu:  # enhancing wall of a necrotic metastasis or abscess
            c.img += np.exp(-0.5 * ((d - rk) / (0.6 * s)) ** 2) * inner * lesion.rim_hu


def _scan(rng: np.random.Generator, img: np.ndarray, outline: np.ndarray, scanner: Scanner,
          s: float) -> np.ndarray:
    """The scanner's reconstruction blur, calibration offset, noise, and the stored HU range."""
    img = _blur(img, scanner.blur_px * s) + scanner.offset_hu * outline
    noise = _blur(rng.standard_normal((img.shape[0], img.shape[1])), scanner.blur_px * s)
    noise *= scanner.noise_hu / max(float(noise.std()), 1e-6)
    img += noise * (0.4 + 0.6 * outline)  # little noise in air, as after air masking in recon
    return np.clip(img, -1024.0, 3071.0)


# Centres (u, v) in body half-axes and radii of structures a lesion should not sit on.
_AVOID = ((0.0, 0.62, 0.22), (0.3, 0.45, 0.22), (-0.3, 0.45, 0.22), (-0.06, 0.33, 0.12), (0.1, 0.3, 0.1),
          (0.32, -0.3, 0.27))


def _lesion_site(rng: np.random.Generator, rel_radius: float, in_liver: bool) -> tuple[float, float]:
    """A lesion centre inside the liver or the other soft tissue, off spine, kidneys and vessels."""
    for _ in range(100):
        if in_liver:
            u, v = rng.uniform(-0.6, -0.2), rng.uniform(-0.45, 0.15)
        else:
            u, v = rng.uniform(-0.2, 0.6), rng.uniform(-0.55, 0.2)
        if u * u + v * v > (0.72 - rel_radius) ** 2:
            continue
        if all((u - au) ** 2 + (v - av) ** 2 > (ar + rel_radius) ** 2 for au, av, ar in _AVOID):
            return float(u), float(v)
    return -0.4, -0.1  # centre of the liver


def _soft(x: np.ndarray, width: float) -> np.ndarray:
    """A smooth step from 0 (x < 0) to 1 (x > 0); `width` in the units of x."""
    return 1.0 / (1.0 + np.exp(-np.clip(x / max(width, 1e-6), -40, 40)))


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur with reflected edges (numpy only, exact and deterministic)."""
    if sigma <= 0:
        return img
    r = max(1, int(np.ceil(3 * sigma)))
    t = np.arange(-r, r + 1, dtype=np.float64)
    w = np.exp(-0.5 * (t / sigma) ** 2)
    w /= w.sum()
    out = img
    for axis in (0, 1):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (r, r)
        p = np.pad(out, pad, mode="reflect")
        acc = np.zeros_like(out)
        for i, wi in enumerate(w):
            acc += wi * (p[i:i + out.shape[0], :] if axis == 0 else p[:, i:i + out.shape[1]])
        out = acc
    return out
