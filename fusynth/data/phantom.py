"""Procedural B-mode ultrasound phantom: the package's offline default data.

One cohesive thing over 600 lines: a single image-formation model whose steps share their
geometry and constants, so it stays one file.

Each frame is simulated the way a scanner forms an image, so that models trained or
evaluated on it meet the usual ultrasound nuisances rather than clean cartoons:

1. An *echogenicity* map (backscatter level in dB) and an *attenuation* map are painted
   in Cartesian pixels: maternal abdominal wall, uterus, amniotic fluid, placenta,
   floating cord/limb sections and one fetal structure per view.
2. Both maps are resampled onto the polar (depth x beam angle) grid of a curvilinear
   probe whose virtual apex sits just above the image.
3. Speckle is formed physically: complex Gaussian scatterers weighted by the echo
   amplitude are blurred by an anisotropic point-spread function (short axially, wider
   laterally and widening with depth); the envelope is Rayleigh distributed.
4. Attenuation is accumulated along every beam, so bones cast acoustic shadows and fluid
   gives posterior enhancement; an automatic time-gain compensation (TGC) removes most,
   not all, of the average depth loss.
5. The envelope is log-compressed to 8 bits and scan-converted back to the square frame;
   everything outside the fan is exactly 0.

Conventions follow :mod:`fusynth.data.geometry`: images are ``[H, W]`` indexed
``[y, x]``; ellipses are ``(cx, cy, a, b, angle)`` in pixels with the angle measured from
+x towards +y (down).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage, special

from fusynth.data.geometry import Ellipse, ellipse_mask, ramanujan_perimeter

PHANTOM_VIEWS: tuple[str, ...] = ("head", "brain", "abdomen", "femur", "thorax")
DEFAULT_PHANTOM_VIEWS: tuple[str, ...] = ("head", "abdomen", "femur", "thorax")

_FOV_MM = 160.0
_MIN_SIZE = 32
_HC_RANGE_MM = (120.0, 320.0)
_HEAD_AXIS_RATIO = (0.72, 0.9)

# Echo levels in dB relative to an arbitrary reference. The display maps roughly
# [-46, +4] dB onto 0..255, so these put fluid near black, brain dark grey, soft tissue
# mid grey and bone near white, as on a clinical preset.
_DB_FLUID = -54.0
_DB_BLOOD = -50.0
_DB_BRAIN = -32.0
_DB_LIVER = -27.0
_DB_LUNG = -22.0
_DB_SOFT = -24.0
_DB_FAT = -28.0
_DB_MUSCLE = -21.0
_DB_PLACENTA = -24.0
_DB_FASCIA = -10.0
_DB_SKULL = -1.0
_DB_BONE = 2.0

# Intensity attenuation in nepers per field-of-view (divided by the size in pixels when
# used). Soft tissue loses ~11 dB over the field, fluid almost nothing (which is why the
# region behind fluid looks brighter), bone is given as a total across its thickness.
_ATT_SOFT = 2.6
_ATT_FLUID = 0.25
_ATT_SKULL = 1.1
_ATT_BONE = 3.5


@dataclass(frozen=True)
class PhantomFrame:
    """One simulated ultrasound frame.

    Attributes:
        image: ``[H, W]`` uint8 grayscale B-mode frame, 0 outside the fan.
        mask: ``[H, W]`` uint8 filled label map (0 background, 1 head) rasterised from
            ``ellipse`` with :func:`~fusynth.data.geometry.ellipse_mask`, i.e. the outer
            skull outline as in HC18 annotations; only for the ``"head"`` and
            ``"brain"`` views, else ``None``.
        view: the view name, one of :data:`PHANTOM_VIEWS`.
        pixel_spacing_mm: isotropic pixel size in millimetres.
        head_circumference_mm: Ramanujan perimeter of ``ellipse`` times the spacing
            (head/brain only, else ``None``).
        ellipse: the outer skull ellipse in pixels (head/brain only, else ``None``).
    """

    image: np.ndarray
    mask: np.ndarray | None
    view: str
    pixel_spacing_mm: float
    head_circumference_mm: float | None
    ellipse: Ellipse | None


def default_pixel_spacing(size: int) -> float:
    """Pixel spacing for a 160 mm field of view across ``size`` pixels.

    Args:
        size: frame side in pixels.

    Returns:
        ``160.0 / size`` millimetres per pixel.
    """
    return _FOV_MM / size


def draw_frame(
    view: str,
    size: int,
    rng: np.random.Generator,
    pixel_spacing_mm: float | None = None,
) -> PhantomFrame:
    """Draw one square ultrasound-like frame of a fetal standard plane.

    The result is fully determined by the state of ``rng`` (same seed, same bytes).

    Args:
        view: one of :data:`PHANTOM_VIEWS`.
        size: side of the square frame in pixels, at least 32.
        rng: source of all randomness; it is advanced.
        pixel_spacing_mm: millimetres per pixel; defaults to
            :func:`default_pixel_spacing`. It sets the pixel size of the sampled head
            circumference (other structures are sized relative to the frame).

    Returns:
        The frame; ``image`` is ``[size, size]`` uint8, ``mask`` ``[size, size]`` uint8
        or ``None``.

    Raises:
        ValueError: unknown ``view``, ``size < 32`` or a non-positive spacing.
    """
    _check_view(view)
    size = _check_size(size)
    if pixel_spacing_mm is None:
        pixel_spacing_mm = default_pixel_spacing(size)
    pixel_spacing_mm = float(pixel_spacing_mm)
    if not math.isfinite(pixel_spacing_mm) or pixel_spacing_mm <= 0:
        raise ValueError(f"pixel_spacing_mm must be positive, got {pixel_spacing_mm}")
    scene = _build_scene(view, size, rng, pixel_spacing_mm)
    image = _render(scene, rng)
    if scene.ellipse is None:
        return PhantomFrame(image, None, view, pixel_spacing_mm, None, None)
    mask = ellipse_mask((size, size), scene.ellipse).astype(np.uint8)
    hc = ramanujan_perimeter(scene.ellipse.a, scene.ellipse.b) * pixel_spacing_mm
    return PhantomFrame(image, mask, view, pixel_spacing_mm, float(hc), scene.ellipse)


# --------------------------------------------------------------------------- validation


def _check_size(size: int) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
        raise ValueError(f"size must be an integer >= {_MIN_SIZE}, got {size!r}")
    if size < _MIN_SIZE:
        raise ValueError(f"size must be >= {_MIN_SIZE} pixels, got {size}")
    return int(size)


def _check_view(view: str) -> None:
    if view not in PHANTOM_VIEWS:
        raise ValueError(f"unknown phantom view {view!r}; valid views: {', '.join(PHANTOM_VIEWS)}")


# --------------------------------------------------------------------------- scene model


@dataclass(frozen=True)
class _Fan:
    """Sector field of view of a curvilinear probe; apex ``(ax, ay)`` above the image."""

    ax: float
    ay: float
    r0: float
    r1: float
    half_angle: float

    def polar(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Range from the apex and beam angle (0 straight down, + towards +x)."""
        dx, dy = x - self.ax, y - self.ay
        return np.hypot(dx, dy), np.arctan2(dx, dy)

    def contains(self, x: np.ndarray, y: np.ndarray, margin: float = 0.0) -> np.ndarray:
        """Whether points lie inside the fan, at least ``margin`` px from its edges."""
        r, th = self.polar(x, y)
        # Distance to the straight lateral edges is r * sin(half_angle - |theta|).
        lateral = r * np.sin(self.half_angle - np.abs(th))
        return (r >= self.r0 + margin) & (r <= self.r1 - margin) & (lateral >= margin)


@dataclass
class _Scene:
    """Everything the renderer needs; ``regions`` are named bool masks for tests."""

    size: int
    fan: _Fan
    r: np.ndarray  # [H, W] float32 range from the apex
    theta: np.ndarray  # [H, W] float32 beam angle
    echo: np.ndarray  # [H, W] float32 echo level in dB
    bone: np.ndarray  # [H, W] float32 extra attenuation (nepers per pixel) of bone
    tex_low: np.ndarray  # [H, W] float32 unit-variance texture, blobs ~1/6 of the frame
    tex_mid: np.ndarray  # [H, W] float32 unit-variance texture, blobs ~1/24 of the frame
    ellipse: Ellipse | None = None
    regions: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def soft(self) -> float:
        """Edge softness in px: sub-pixel anti-aliasing, a bit wider on big frames."""
        return max(0.7, self.size / 400.0)


@dataclass(frozen=True)
class _Win:
    """A rectangular window of the frame with broadcastable pixel-centre coordinates."""

    sl: tuple[slice, slice]
    x: np.ndarray  # [1, w] float32
    y: np.ndarray  # [h, 1] float32


def _window(size: int, cx: float, cy: float, radius: float) -> _Win | None:
    # Painting only inside a bounding box keeps 1024 px frames fast.
    x0, x1 = max(0, int(math.floor(cx - radius))), min(size, int(math.ceil(cx + radius)) + 1)
    y0, y1 = max(0, int(math.floor(cy - radius))), min(size, int(math.ceil(cy + radius)) + 1)
    if x1 <= x0 or y1 <= y0:
        return None
    xs = np.arange(x0, x1, dtype=np.float32)[None, :]
    ys = np.arange(y0, y1, dtype=np.float32)[:, None]
    return _Win((slice(y0, y1), slice(x0, x1)), xs, ys)


def _local(win: _Win, cx: float, cy: float, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Window coordinates in a frame rotated by ``angle`` about ``(cx, cy)``."""
    c, s = math.cos(angle), math.sin(angle)
    dx, dy = win.x - np.float32(cx), win.y - np.float32(cy)
    return dx * c + dy * s, -dx * s + dy * c


def _ellipse_sd(u: np.ndarray, v: np.ndarray, a: float, b: float) -> np.ndarray:
    """Approximate signed distance (px, negative inside) to an axis-aligned ellipse.

    First-order estimate ``(rho - 1) / |grad rho|``: exact on the outline, which is
    where anti-aliasing and thin bands need it.
    """
    a, b = max(a, 1e-3), max(b, 1e-3)
    rho = np.sqrt((u / a) ** 2 + (v / b) ** 2)
    g = np.sqrt((u / (a * a)) ** 2 + (v / (b * b)) ** 2)
    # |grad rho| >= 1/a everywhere; the floor also handles the centre where g = rho = 0.
    grad = np.maximum(g / np.maximum(rho, 1e-6), 1.0 / a)
    return (rho - 1.0) / grad


def _fill(sd: np.ndarray, soft: float) -> np.ndarray:
    """Anti-aliased coverage of ``sd <= 0``."""
    return np.clip(0.5 - sd / soft, 0.0, 1.0)


def _band(sd: np.ndarray, lo: float, hi: float, soft: float) -> np.ndarray:
    """Anti-aliased coverage of ``lo <= sd <= hi``."""
    return np.minimum(np.clip(0.5 + (sd - lo) / soft, 0, 1), np.clip(0.5 + (hi - sd) / soft, 0, 1))


def _paint(
    scene: _Scene,
    win: _Win,
    alpha: np.ndarray,
    db: np.ndarray | float,
    bone: np.ndarray | float | None = None,
) -> None:
    """Alpha-blend an echo level (and optionally bone attenuation) into a window."""
    e = scene.echo[win.sl]
    scene.echo[win.sl] = e + alpha * (db - e)
    if bone is not None:
        scene.bone[win.sl] = np.maximum(scene.bone[win.sl], alpha * bone)


def _paint_ellipse(
    scene: _Scene,
    e: Ellipse,
    db: float,
    *,
    bone: float | None = None,
    texture: float = 0.0,
    rim_db: float | None = None,
    rim: float = 0.0,
) -> None:
    """Filled ellipse, optionally with a textured interior and a rim of another level."""
    win = _window(scene.size, e.cx, e.cy, e.a + 2 * scene.soft + rim + 1)
    if win is None:
        return
    u, v = _local(win, e.cx, e.cy, e.angle)
    sd = _ellipse_sd(u, v, e.a, e.b)
    level = db + texture * scene.tex_mid[win.sl] if texture else db
    _paint(scene, win, _fill(sd, scene.soft), level, bone)
    if rim_db is not None and rim > 0:
        _paint(scene, win, _band(sd, -rim, 0.0, scene.soft), rim_db)


def _paint_capsule(
    scene: _Scene,
    p0: tuple[float, float],
    p1: tuple[float, float],
    radius: float,
    db: float,
    bone: float | None = None,
) -> np.ndarray | None:
    """Thick line segment with round caps; returns its coverage in the window."""
    (x0, y0), (x1, y1) = p0, p1
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    half = math.hypot(x1 - x0, y1 - y0) / 2
    win = _window(scene.size, cx, cy, half + radius + 2 * scene.soft + 1)
    if win is None:
        return None
    u, v = _local(win, cx, cy, math.atan2(y1 - y0, x1 - x0))
    sd = np.hypot(np.maximum(np.abs(u) - half, 0), v) - radius
    alpha = _fill(sd, scene.soft)
    _paint(scene, win, alpha, db, bone)
    return alpha


def _to_global(e: Ellipse, u: float, v: float) -> tuple[float, float]:
    """Point given in the ellipse's own (major, minor) frame, in image pixels."""
    c, s = math.cos(e.angle), math.sin(e.angle)
    return e.cx + u * c - v * s, e.cy + u * s + v * c


def _child(e: Ellipse, u: float, v: float, a: float, b: float, rot: float) -> Ellipse:
    """Ellipse placed in the local frame of ``e`` (rotation relative to it)."""
    cx, cy = _to_global(e, u, v)
    return Ellipse(cx, cy, a, b, e.angle + rot)


# --------------------------------------------------------------------------- randomness


def _smooth_noise(rng: np.random.Generator, size: int, cell: float) -> np.ndarray:
    """Unit-variance smooth random field, ``[size, size]`` float32, blobs ~``cell`` px.

    White noise on a coarse lattice is upsampled with a cubic B-spline written as two
    small matrix products, so the cost does not grow with the blob size as a wide
    Gaussian filter's (or ``ndimage.zoom``'s) would.
    """
    cell = max(cell, 1.0)
    n = int(math.ceil(size / cell)) + 4
    coarse = rng.standard_normal((n, n)).astype(np.float32)
    t = np.abs(np.arange(size)[:, None] / cell + 1.5 - np.arange(n)[None, :])
    basis = np.where(t < 1, 2 / 3 - t**2 + t**3 / 2, np.where(t < 2, (2 - t) ** 3 / 6, 0.0))
    basis = basis.astype(np.float32)  # [size, n]
    fine = basis @ coarse @ basis.T
    fine -= fine.mean()
    return (fine / max(float(fine.std()), 1e-6)).astype(np.float32)


def _smooth_curve(rng: np.random.Generator, n: int, knots: int, amp: float) -> np.ndarray:
    """Random smooth 1-D profile of length ``n`` within about ``+-amp``."""
    vals = rng.uniform(-amp, amp, knots)
    return np.interp(np.linspace(0, knots - 1, n), np.arange(knots), vals).astype(np.float32)


# --------------------------------------------------------------------------- scene build


def _build_scene(view: str, size: int, rng: np.random.Generator, pixel_spacing_mm: float) -> _Scene:
    """Paint the echo and attenuation maps of one frame (no speckle yet)."""
    _check_view(view)
    fan = _sample_fan(rng, size)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    r, theta = fan.polar(xx, yy)
    scene = _Scene(
        size=size,
        fan=fan,
        r=r.astype(np.float32),
        theta=theta.astype(np.float32),
        echo=np.full((size, size), _DB_FLUID, np.float32),
        bone=np.zeros((size, size), np.float32),
        tex_low=_smooth_noise(rng, size, size / 6),
        tex_mid=_smooth_noise(rng, size, size / 24),
    )
    fluid_top = _paint_background(scene, rng)
    _paint_floaters(scene, rng, fluid_top)
    if view in ("head", "brain"):
        _paint_head(scene, rng, pixel_spacing_mm, brain=view == "brain")
    elif view == "abdomen":
        _paint_abdomen(scene, rng)
    elif view == "femur":
        _paint_femur(scene, rng)
    else:
        _paint_thorax(scene, rng)
    return scene


def _sample_fan(rng: np.random.Generator, size: int) -> _Fan:
    # A virtual apex a little above the frame gives the curved top edge of a convex
    # probe; the bottom arc stays above the bottom corners so they are always black.
    h = rng.uniform(0.05, 0.14) * size
    return _Fan(
        ax=(size - 1) / 2,
        ay=-h,
        r0=h + rng.uniform(0.01, 0.03) * size,
        r1=h + rng.uniform(0.90, 0.97) * size,
        half_angle=math.radians(rng.uniform(30.0, 37.5)),
    )


def _paint_background(scene: _Scene, rng: np.random.Generator) -> float:
    """Maternal wall, uterus, amniotic fluid and placenta; returns the fluid's top range."""
    s, fan = scene.size, scene.fan
    depth = (scene.r - fan.r0) / s  # 0 at the probe face, ~0.9 at the bottom arc
    tn = scene.theta / fan.half_angle  # -1..1 across the fan

    def boundary(mean: float, wobble: float) -> np.ndarray:
        # Tissue planes are not perfectly concentric with the probe: tilt + waviness.
        tilt, freq, phase = rng.uniform(-1, 1), rng.uniform(1.5, 4.0), rng.uniform(0, 2 * np.pi)
        return mean + wobble * (0.6 * tilt * tn + 0.4 * np.sin(freq * tn + phase))

    d_fat = rng.uniform(0.025, 0.06)
    d_muscle = d_fat + rng.uniform(0.04, 0.09)
    d_uterus = d_muscle + rng.uniform(0.03, 0.07)
    b_fat, b_muscle, b_uterus = (boundary(d, 0.02) for d in (d_fat, d_muscle, d_uterus))
    edge = 1.0 / s

    def above(b: np.ndarray) -> np.ndarray:
        return np.clip(0.5 + (b - depth) / edge, 0, 1)

    echo = scene.echo
    echo += 1.5 * scene.tex_low
    tissue_tex = 3.0 * scene.tex_mid
    # Inside the uterus the fan is a mix of amniotic fluid pockets and fetal/uterine
    # soft tissue (trunk, limbs, cord), outlined by a smooth random field.
    field = _smooth_noise(rng, s, s / 3.5)
    tissue_frac = rng.uniform(0.35, 0.7)
    thr = float(special.ndtri(1.0 - tissue_frac))
    tissue = np.clip((field - thr) / 0.08, 0, 1)
    # Fetal soft tissue is heterogeneous: organs and limbs differ by several dB, and
    # its skin gives a brighter specular line where it meets the fluid.
    hetero = _smooth_noise(rng, s, s / 10)
    tissue_db = rng.uniform(-30.0, -25.0) + tissue_tex + 3.5 * hetero
    tissue_db = tissue_db + 7.0 * np.exp(-(((field - thr) / 0.1) ** 2))
    echo += tissue * (tissue_db - echo)
    echo += above(b_uterus) * (_DB_SOFT + tissue_tex - echo)
    echo += above(b_muscle) * (_DB_MUSCLE + tissue_tex - echo)
    # Muscle looks striated along the planes; fat is darker with bright septa.
    echo += above(b_muscle) * (1 - above(b_fat)) * 3.0 * np.sin(depth * s / max(1.5, s / 90))
    echo += above(b_fat) * (_DB_FAT + 4.0 * scene.tex_mid - echo)
    line_w = max(0.6, s / 220) / s
    for b, level in ((b_fat, _DB_FASCIA), (b_muscle, _DB_FASCIA - 3), (b_uterus, -16.0)):
        echo += np.exp(-(((depth - b) / line_w) ** 2)) * (level - echo)

    placenta = rng.uniform()
    if placenta < 0.6:
        # Placenta: homogeneous, finely granular, mid-grey, with a bright chorionic plate.
        lo, hi = sorted(rng.uniform(-1.4, 1.4, 2))
        span = np.clip(np.minimum(tn - lo, hi - tn) * 4, 0, 1)  # tapers at its ends
        thick = rng.uniform(0.08, 0.16) * span
        anterior = placenta < 0.35
        if anterior:
            inner = b_uterus + thick
            inside = (depth >= b_uterus - edge) & (depth <= inner)
        else:
            bottom = (fan.r1 - fan.r0) / s
            inner = bottom - thick
            inside = depth >= inner
        level = _DB_PLACENTA + 2.0 * scene.tex_mid + 1.5 * scene.tex_low
        echo[:] = np.where(inside & (span > 0), level, echo)
        plate = np.exp(-(((depth - inner) / line_w) ** 2)) * (span > 0.05)
        echo += plate * (-15.0 - echo)
    if placenta >= 0.35 and rng.uniform() < 0.5:
        # Posterior uterine wall at the bottom of the sector.
        bottom = (fan.r1 - fan.r0) / s
        wall = boundary(bottom - rng.uniform(0.08, 0.2), 0.08)
        echo += (1 - above(wall)) * (_DB_SOFT + tissue_tex - echo)
        echo += np.exp(-(((depth - wall) / line_w) ** 2)) * (-17.0 - echo)
    return float(fan.r0 + s * (d_uterus + 0.03))


def _paint_floaters(scene: _Scene, rng: np.random.Generator, fluid_top: float) -> None:
    """Cord loops and limb sections floating in the fluid (painted under the fetus)."""
    s = scene.size
    for _ in range(int(rng.integers(0, 3))):
        kind = rng.uniform()
        rad = rng.uniform(0.03, 0.05) * s if kind < 0.6 else rng.uniform(0.05, 0.1) * s
        for _try in range(20):
            cx, cy = rng.uniform(0, s), rng.uniform(0, s)
            r = math.hypot(cx - scene.fan.ax, cy - scene.fan.ay)
            if r > fluid_top + rad and scene.fan.contains(np.array(cx), np.array(cy)):
                break
        else:
            continue
        angle = rng.uniform(0, np.pi)
        base = Ellipse(cx, cy, rad, rad * rng.uniform(0.7, 1.0), angle)
        if kind < 0.6:
            # Umbilical cord: Wharton's jelly around one vein and two arteries.
            _paint_ellipse(scene, base, -28.0, rim_db=-18.0, rim=max(0.8, s / 300))
            for k, frac in enumerate((0.42, 0.28, 0.28)):
                phi = angle + k * 2.1
                vx, vy = cx + 0.45 * rad * math.cos(phi), cy + 0.45 * rad * math.sin(phi)
                vr = frac * rad
                _paint_ellipse(scene, Ellipse(vx, vy, vr, vr, 0.0), _DB_BLOOD)
        else:
            # A limb cross-section: soft tissue around a small bright bone.
            _paint_ellipse(scene, base, _DB_SOFT, texture=3.0, rim_db=-14.0, rim=1.0)
            br = max(1.0, 0.22 * base.b)
            _paint_ellipse(
                scene, Ellipse(cx, cy, br, br * 0.8, angle), _DB_BONE, bone=_ATT_BONE / (2 * br)
            )


def _fits(scene: _Scene, e: Ellipse, margin: float) -> bool:
    """Whether an ellipse, grown by ``margin`` px, lies inside the image and the fan."""
    t = np.linspace(0, 2 * np.pi, 96, endpoint=False)
    a, b = e.a + margin, e.b + margin
    c, s = math.cos(e.angle), math.sin(e.angle)
    x = e.cx + a * np.cos(t) * c - b * np.sin(t) * s
    y = e.cy + a * np.cos(t) * s + b * np.sin(t) * c
    # The ellipse is convex and the apex disc lies outside the image, so checking the
    # outline suffices for the whole interior.
    inside_image = (x >= 0).all() and (y >= 0).all() and (x <= scene.size - 1).all()
    inside_image = inside_image and (y <= scene.size - 1).all()
    return bool(inside_image and scene.fan.contains(x, y).all())


def _place_ellipse(
    scene: _Scene, rng: np.random.Generator, a: float, b: float, angle: float, margin: float
) -> Ellipse:
    """Reject-sample a centre so the ellipse fits; shrink it by 6 % steps if none does."""
    s = scene.size
    while True:
        c, sn = math.cos(angle), math.sin(angle)
        ex = math.sqrt((a * c) ** 2 + (b * sn) ** 2) + margin
        ey = math.sqrt((a * sn) ** 2 + (b * c) ** 2) + margin
        if 2 * ex < s - 1 and 2 * ey < s - 1:
            for _ in range(40):
                e = Ellipse(
                    float(rng.uniform(ex, s - 1 - ex)),
                    float(rng.uniform(ey, s - 1 - ey)),
                    a,
                    b,
                    angle,
                )
                if _fits(scene, e, margin):
                    return e
        if a < 1.0:  # cannot happen for sane inputs; keeps the loop finite regardless
            return Ellipse((s - 1) / 2, (s - 1) / 2 + 0.25 * s, a, b, angle)
        a, b = a * 0.94, b * 0.94


def _beam_dot(scene: _Scene, win: _Win, nx: np.ndarray, ny: np.ndarray) -> np.ndarray:
    """Cosine between a unit surface normal and the beam direction at each pixel."""
    r = np.maximum(scene.r[win.sl], 1e-3)
    bx = (win.x - scene.fan.ax) / r
    by = (win.y - scene.fan.ay) / r
    return nx * bx + ny * by


def _ellipse_normal(u: np.ndarray, v: np.ndarray, e: Ellipse) -> tuple[np.ndarray, np.ndarray]:
    """Outward unit normal of the ellipse level set through each pixel, image frame."""
    nu, nv = u / (e.a * e.a), v / (e.b * e.b)
    norm = np.maximum(np.hypot(nu, nv), 1e-9)
    nu, nv = nu / norm, nv / norm
    c, s = math.cos(e.angle), math.sin(e.angle)
    return nu * c - nv * s, nu * s + nv * c


def _paint_wall(
    scene: _Scene, e: Ellipse, thickness: float, db: float, specular: float, bone: float = 0.0
) -> np.ndarray | None:
    """Bright band just inside an ellipse's outline (skull, body wall).

    Specular reflectors echo most where the beam hits them square on, so the band is
    dimmed by up to ``specular`` dB where it runs parallel to the beam (lateral walls).
    Returns the ``[H, W]`` bool band (coverage > 0.5), or ``None`` when off-frame.
    """
    win = _window(scene.size, e.cx, e.cy, e.a + thickness + 3 * scene.soft + 1)
    if win is None:
        return None
    u, v = _local(win, e.cx, e.cy, e.angle)
    sd = _ellipse_sd(u, v, e.a, e.b)
    nx, ny = _ellipse_normal(u, v, e)
    facing = _beam_dot(scene, win, nx, ny)
    level = db - specular * (1 - np.abs(facing) ** 1.5)
    # The wall facing the probe (normal pointing back up the beam) echoes a bit more.
    level = level + 2.0 * np.clip(-facing, 0, 1) + 1.5 * scene.tex_mid[win.sl]
    # Brightest at the outer surface, fading towards the inner table.
    depth_in = np.clip(-sd / max(thickness, 1e-3), 0, 1)
    level = level - 6.0 * np.clip(depth_in - 0.5, 0, 0.5)
    alpha = _band(sd, -thickness, 0.0, min(scene.soft, 0.6))
    # Grazing beams run along the bone for a long way; damp their attenuation so the
    # edge shadows stay thin streaks instead of swallowing whole sectors.
    per_px = bone / max(thickness, 1e-3) * (0.3 + 0.7 * np.abs(facing)) if bone else None
    _paint(scene, win, alpha, level, per_px)
    full = np.zeros((scene.size, scene.size), bool)
    full[win.sl] = alpha > 0.5
    return full


def _paint_halo(scene: _Scene, e: Ellipse, rng: np.random.Generator) -> None:
    """Amniotic fluid around a fetal part, broken where it rests against tissue.

    Sonographers pick planes where the part is outlined by fluid; the random gaps keep
    the outline from being a perfect cartoon ring.
    """
    width = rng.uniform(0.03, 0.08) * scene.size
    win = _window(scene.size, e.cx, e.cy, e.a + width + 2 * scene.soft + 1)
    if win is None:
        return
    u, v = _local(win, e.cx, e.cy, e.angle)
    sd = _ellipse_sd(u, v, e.a, e.b)
    # Fade out with distance so the fluid pocket has no hard outer contour.
    fade = np.clip(1.0 - sd / width, 0, 1) ** 0.7 * (sd >= -scene.soft)
    gaps = np.clip(1.2 + 0.9 * scene.tex_low[win.sl] + rng.uniform(-0.4, 0.4), 0, 1)
    _paint(scene, win, fade * gaps, _DB_FLUID)


def _paint_head(scene: _Scene, rng: np.random.Generator, spacing: float, *, brain: bool) -> None:
    s, soft = scene.size, scene.soft
    hc_mm = rng.uniform(*_HC_RANGE_MM)
    ratio = rng.uniform(*_HEAD_AXIS_RATIO)
    angle = rng.uniform(0, np.pi)
    a = hc_mm / spacing / ramanujan_perimeter(1.0, ratio)
    e = _place_ellipse(scene, rng, a, ratio * a, angle, margin=max(2.0, 0.02 * s))
    scene.ellipse = e
    t = float(np.clip(rng.uniform(0.017, 0.026) * s, 1.5, 0.3 * e.b))
    ai, bi = e.a - t, e.b - t  # inner table: the brain lives inside it
    front = 1.0 if rng.uniform() < 0.5 else -1.0  # which end of the major axis is frontal

    _paint_halo(scene, e, rng)
    win = _window(s, e.cx, e.cy, e.a + 2 * t + 4)
    assert win is not None  # the ellipse lies inside the frame by construction
    u, v = _local(win, e.cx, e.cy, e.angle)
    sd = _ellipse_sd(u, v, e.a, e.b)
    # Scalp: soft tissue just outside the bone (the HC ellipse excludes it, as in HC18).
    _paint(scene, win, _band(sd, 0.0, t * rng.uniform(0.5, 1.0), soft), _DB_SOFT + 2)
    # Brain parenchyma: dark, faintly mottled; a little hazier in the near field where
    # reverberations from the skull fill it in.
    haze = 4.0 * np.clip(1 - (scene.r[win.sl] - (e.cy - e.b)) / (2 * e.b + 1), 0, 1)
    _paint(scene, win, _fill(sd + t, soft), _DB_BRAIN + 2.0 * scene.tex_mid[win.sl] + haze)

    # Midline echo (falx) along the major axis; in the brain view it is interrupted by
    # the cavum septi pellucidi.
    line = max(0.5, 0.004 * s)
    along = np.clip(0.5 + (0.93 * ai - np.abs(u)) / soft, 0, 1)
    falx = np.clip(0.5 + (line - np.abs(v)) / soft, 0, 1) * along
    if brain:
        falx = falx * np.clip(np.abs(u - front * 0.33 * ai) / (0.12 * ai) - 0.5, 0, 1)
    _paint(scene, win, falx * _fill(sd + t, soft), -17.0 + 2.0 * scene.tex_mid[win.sl])

    if brain:
        _paint_brain_landmarks(scene, rng, e, ai, bi, front)
    else:
        # Trans-thalamic hint: faint hypoechoic thalami either side of the midline.
        for side in (-1, 1):
            _paint_ellipse(
                scene,
                _child(e, -front * 0.05 * ai, side * 0.13 * bi, 0.16 * ai, 0.1 * bi, 0.0),
                _DB_BRAIN - 3.0,
            )

    ring = _paint_wall(scene, e, t, _DB_SKULL, specular=14.0, bone=_ATT_SKULL)
    if ring is not None:
        scene.regions["skull"] = ring
    scene.regions["head"] = ellipse_mask((s, s), e)


def _paint_brain_landmarks(
    scene: _Scene, rng: np.random.Generator, e: Ellipse, ai: float, bi: float, front: float
) -> None:
    """Trans-ventricular plane: CSP box, thalami, ventricles with choroid plexus."""
    s = scene.size
    jit = rng.uniform(0.9, 1.1, 8)
    # Cavum septi pellucidi: a dark box on the midline with bright septal leaves.
    csp = _child(e, front * 0.33 * ai, 0.0, 0.1 * ai * jit[0], 0.06 * bi * jit[1], 0.0)
    _paint_ellipse(scene, csp, _DB_FLUID + 4, rim_db=-15.0, rim=max(0.7, s / 250))
    for side in (-1, 1):
        # Thalami: hypoechoic ovals behind the CSP.
        th = _child(e, -front * 0.04 * ai, side * 0.15 * bi, 0.17 * ai * jit[2], 0.11 * bi, 0.0)
        _paint_ellipse(scene, th, _DB_BRAIN - 4.0)
        # Frontal horns of the lateral ventricles: dark commas beside the CSP.
        fh = _child(
            e,
            front * 0.5 * ai,
            side * 0.17 * bi,
            0.13 * ai * jit[3],
            0.045 * bi,
            -front * side * 0.35,
        )
        _paint_ellipse(scene, fh, _DB_FLUID + 4)
        # Atria with the bright choroid plexus filling most of them.
        at = _child(
            e,
            -front * 0.55 * ai,
            side * 0.36 * bi,
            0.22 * ai * jit[4],
            0.1 * bi * jit[5],
            front * side * 0.3,
        )
        _paint_ellipse(scene, at, _DB_FLUID + 4)
        cp = Ellipse(at.cx, at.cy, at.a * 0.7, at.b * 0.62, at.angle)
        _paint_ellipse(scene, cp, -13.0, texture=2.0)
        # Sylvian fissure: a short bright arc near the lateral brain surface.
        sy = _child(e, front * 0.05 * ai, side * 0.68 * bi, 0.2 * ai * jit[6], 0.05 * bi, 0.0)
        _paint_ellipse(scene, sy, -20.0)


def _paint_spine(scene: _Scene, e: Ellipse, psi: float, dist: float = 0.74) -> tuple[float, float]:
    """Three bright ossification centres in a triangle near the body wall at ``psi``.

    Returns the vertebral body's centre, which anchors the aorta.
    """
    s = scene.size
    dot = max(1.0, 0.016 * s)
    bx, by = _to_global(e, dist * e.a * math.cos(psi), dist * e.b * math.sin(psi))
    for k, (rr, dpsi) in enumerate(((0.0, 0.0), (0.14, 0.28), (0.14, -0.28))):
        frac = dist + rr
        x, y = _to_global(e, frac * e.a * math.cos(psi + dpsi), frac * e.b * math.sin(psi + dpsi))
        size = dot * (1.25 if k == 0 else 0.9)
        _paint_ellipse(
            scene, Ellipse(x, y, size, size * 0.85, psi), _DB_BONE, bone=0.35 * _ATT_BONE / size
        )
    return bx, by


def _body_ellipse(scene: _Scene, rng: np.random.Generator) -> Ellipse:
    """Random abdomen/chest cross-section that fits the fan."""
    s = scene.size
    a = rng.uniform(0.17, 0.27) * s
    return _place_ellipse(
        scene, rng, a, a * rng.uniform(0.86, 0.98), rng.uniform(0, np.pi), max(2.0, 0.02 * s)
    )


def _paint_abdomen(scene: _Scene, rng: np.random.Generator) -> None:
    s = scene.size
    e = _body_ellipse(scene, rng)
    side = 1.0 if rng.uniform() < 0.5 else -1.0  # the fetus' left, where the stomach is
    psi = rng.uniform(0, 2 * np.pi)  # direction of the spine from the centre
    _paint_halo(scene, e, rng)
    _paint_ellipse(scene, e, _DB_LIVER, texture=2.5)
    # Umbilical vein: a dark curved tube from the anterior wall into the liver.
    pts = []
    for k in range(7):
        f = k / 6
        ang = psi + np.pi + side * 0.55 * f**1.5
        rad = 0.85 - 0.55 * f
        pts.append(_to_global(e, rad * e.a * math.cos(ang), rad * e.b * math.sin(ang)))
    width = max(0.8, 0.035 * e.b)
    for p0, p1 in zip(pts[:-1], pts[1:], strict=True):
        _paint_capsule(scene, p0, p1, width, _DB_BLOOD + 1)
    # Stomach bubble on the left, anechoic with a thin bright wall.
    st_ang = psi + side * rng.uniform(1.5, 2.0)
    sx, sy = 0.42 * e.a * math.cos(st_ang), 0.42 * e.b * math.sin(st_ang)
    stomach = _child(
        e, sx, sy, rng.uniform(0.18, 0.26) * e.a, rng.uniform(0.1, 0.15) * e.a, st_ang + np.pi / 2
    )
    _paint_ellipse(scene, stomach, _DB_FLUID + 2, rim_db=-20.0, rim=max(0.7, s / 300))
    bx, by = _paint_spine(scene, e, psi)
    # Aorta just anterior to the vertebral body.
    cx, cy = e.cx, e.cy
    ar = max(1.0, 0.05 * e.b)
    ax, ay = bx + (cx - bx) * 0.16, by + (cy - by) * 0.16
    _paint_ellipse(scene, Ellipse(ax, ay, ar, ar, 0.0), _DB_BLOOD)
    # Short rib segments on both flanks.
    for flank in (-1, 1):
        rib_ang = psi + flank * rng.uniform(1.1, 1.5)
        _paint_rib(scene, e, rib_ang)
    _paint_wall(scene, e, max(1.0, 0.011 * s), -13.0, specular=8.0)
    scene.regions["body"] = ellipse_mask((s, s), e)


def _paint_rib(scene: _Scene, e: Ellipse, ang: float, length: float = 0.22) -> None:
    """A rib section hugging the inside of the body wall, shadowing what lies beyond."""
    s = scene.size
    pts = []
    for f in (-0.5, 0.0, 0.5):
        a_ = ang + f * length
        pts.append(_to_global(e, 0.9 * e.a * math.cos(a_), 0.9 * e.b * math.sin(a_)))
    radius = max(0.7, 0.009 * s)
    for p0, p1 in zip(pts[:-1], pts[1:], strict=True):
        _paint_capsule(scene, p0, p1, radius, _DB_BONE - 2, bone=_ATT_BONE / (2 * radius))


def _paint_thorax(scene: _Scene, rng: np.random.Generator) -> None:
    s = scene.size
    e = _body_ellipse(scene, rng)
    side = 1.0 if rng.uniform() < 0.5 else -1.0
    psi = rng.uniform(0, 2 * np.pi)
    _paint_halo(scene, e, rng)
    _paint_ellipse(scene, e, _DB_LUNG, texture=2.0)
    # Heart: apex pointing anterior-left, about 45 degrees off the antero-posterior axis.
    axis = psi + np.pi - side * rng.uniform(0.6, 0.9)
    hx, hy = 0.22 * e.a * math.cos(axis), 0.22 * e.b * math.sin(axis)
    ha = rng.uniform(0.4, 0.48) * e.a
    heart = _child(e, hx, hy, ha, ha * rng.uniform(0.78, 0.9), axis)
    _paint_ellipse(scene, heart, -25.0, texture=2.0, rim_db=-19.0, rim=max(0.8, s / 250))
    sep = rng.uniform(0.9, 1.1)
    for q in (-1, 1):
        # Ventricles toward the apex, atria toward the base, separated by the septal cross.
        ven = _child(
            heart, 0.25 * heart.a, q * 0.3 * heart.b * sep, 0.55 * heart.a, 0.25 * heart.b, 0.0
        )
        atr = _child(
            heart, -0.52 * heart.a, q * 0.3 * heart.b * sep, 0.33 * heart.a, 0.26 * heart.b, 0.0
        )
        _paint_ellipse(scene, ven, _DB_BLOOD + 1)
        _paint_ellipse(scene, atr, _DB_BLOOD)
    # Atrioventricular valves: a bright line across the heart between atria and ventricles.
    v0 = _to_global(heart, -0.2 * heart.a, -0.5 * heart.b)
    v1 = _to_global(heart, -0.2 * heart.a, 0.5 * heart.b)
    _paint_capsule(scene, v0, v1, max(0.5, 0.004 * s), -18.0)
    bx, by = _paint_spine(scene, e, psi, dist=0.76)
    # Descending aorta: anterior-left of the spine.
    ar = max(1.0, 0.055 * e.b)
    ax = bx + (e.cx - bx) * 0.18 + side * 0.06 * e.b * math.cos(psi + np.pi / 2)
    ay = by + (e.cy - by) * 0.18 + side * 0.06 * e.b * math.sin(psi + np.pi / 2)
    _paint_ellipse(scene, Ellipse(ax, ay, ar, ar, 0.0), _DB_BLOOD)
    # Rib sections around the chest wall, skipping the spine.
    n_ribs = int(rng.integers(3, 7))
    for ang in rng.uniform(0.5, 2 * np.pi - 0.5, n_ribs):
        _paint_rib(scene, e, psi + ang, length=rng.uniform(0.15, 0.3))
    _paint_wall(scene, e, max(1.0, 0.011 * s), -13.0, specular=8.0)
    scene.regions["body"] = ellipse_mask((s, s), e)


def _paint_femur(scene: _Scene, rng: np.random.Generator) -> None:
    s, soft = scene.size, scene.soft
    length = rng.uniform(0.2, 0.4) * s
    width = max(1.5, rng.uniform(0.018, 0.028) * s)
    angle = math.radians(rng.uniform(-40.0, 40.0))  # measured near perpendicular to the beam
    bow = rng.uniform(-0.04, 0.04) * length
    margin = max(2.0, 0.03 * s) + width
    c, sn = math.cos(angle), math.sin(angle)
    half = length / 2
    for _ in range(200):
        cx, cy = rng.uniform(margin, s - 1 - margin), rng.uniform(margin, s - 1 - margin)
        xs = np.array([cx - half * c, cx, cx + half * c])
        ys = np.array([cy - half * sn, cy, cy + half * sn])
        if (
            scene.fan.contains(xs, ys, margin).all()
            and (xs >= margin).all()
            and (xs <= s - 1 - margin).all()
        ):
            break
    else:  # fall back to the centre of the fan, which always fits at these lengths
        cx, cy = (s - 1) / 2, 0.5 * s
    # Thigh soft tissue around the bone.
    thigh = Ellipse(
        cx + rng.uniform(-0.05, 0.05) * length,
        cy + rng.uniform(0, 0.08) * length,
        half * rng.uniform(1.2, 1.4),
        length * rng.uniform(0.22, 0.32),
        angle,
    )
    _paint_halo(scene, thigh, rng)
    _paint_ellipse(scene, thigh, _DB_SOFT, texture=3.0, rim_db=-19.0, rim=1.0)
    # The diaphysis: a slightly bowed bar whose ends flare, with round caps.
    win = _window(s, cx, cy, half + width + 3 * soft + abs(bow) + 1)
    assert win is not None
    u, v = _local(win, cx, cy, angle)
    centre = bow * (1 - (u / half) ** 2)
    flare = 1 + 0.35 * np.clip(np.abs(u) / half, 0, 1) ** 4
    radius = 0.5 * width * flare
    sd = np.hypot(np.maximum(np.abs(u) - half, 0), v - centre) - radius
    alpha = _fill(sd, soft)
    level = _DB_BONE + 1.5 * scene.tex_mid[win.sl]
    _paint(scene, win, alpha, level, _ATT_BONE / width)
    # Hypoechoic cartilage (unossified epiphyses) beyond both ends.
    for sign in (-1, 1):
        ex, ey = cx + sign * (half + 0.9 * width) * c, cy + sign * (half + 0.9 * width) * sn
        _paint_ellipse(scene, Ellipse(ex, ey, 0.9 * width, 0.75 * width, angle), -35.0)
    full = np.zeros((s, s), bool)
    full[win.sl] = alpha > 0.5
    scene.regions["femur"] = full


# --------------------------------------------------------------------------- rendering


def _kernel(sigma: float, n: int) -> np.ndarray:
    """Impulse response (length ``2n+1``) of ``gaussian_filter1d`` at ``sigma``."""
    imp = np.zeros(2 * n + 1)
    imp[n] = 1.0
    return ndimage.gaussian_filter1d(imp, sigma, mode="constant")


def _render(scene: _Scene, rng: np.random.Generator) -> np.ndarray:
    """Speckle, attenuation, TGC, log compression and scan conversion.

    Returns:
        ``[H, W]`` uint8 frame, 0 outside the fan.
    """
    s, fan = scene.size, scene.fan
    n_r = s
    n_t = int(math.ceil(2 * fan.half_angle * fan.r1)) + 1  # ~1 px lateral pitch at depth
    rs = np.linspace(fan.r0, fan.r1, n_r, dtype=np.float32)
    ths = np.linspace(-fan.half_angle, fan.half_angle, n_t, dtype=np.float32)
    dr, dth = float(rs[1] - rs[0]), float(ths[1] - ths[0])
    coords = np.stack(
        [fan.ay + rs[:, None] * np.cos(ths)[None, :], fan.ax + rs[:, None] * np.sin(ths)[None, :]]
    )

    # Attenuation: soft tissue unless the echo level says fluid, plus painted bone.
    softness = np.clip((scene.echo + 40.0) / 8.0, 0.0, 1.0)
    atten = (_ATT_FLUID + (_ATT_SOFT - _ATT_FLUID) * softness) / s + scene.bone
    echo_p = ndimage.map_coordinates(scene.echo, coords, order=1, mode="nearest")
    atten_p = ndimage.map_coordinates(atten, coords, order=1, mode="nearest")

    # Speckle: complex scatterers with amplitude sqrt(echo) blurred by the PSF.
    # Reverberation clutter fills the near field with a faint haze (visible in fluid).
    depth = ((rs - fan.r0) / s)[:, None]
    clutter = np.power(np.float32(10.0), (-49.0 - 14.0 * depth) / 10.0)
    amp = np.sqrt(np.power(np.float32(10.0), echo_p / np.float32(10.0)) + clutter)
    noise = rng.standard_normal((2, n_r, n_t), dtype=np.float32) * amp
    sig_ax = max(0.5, 0.0035 * s)
    noise = ndimage.gaussian_filter1d(noise, sig_ax, axis=1, mode="reflect")
    # Lateral PSF in px widens with depth past the focus; in beam-index units it is
    # wider still near the apex, where beams are packed densely.
    sig_lat_px = max(0.6, 0.0045 * s) * (1.0 + 0.5 * (rs - fan.r0) / (fan.r1 - fan.r0))
    sig_idx = np.clip(sig_lat_px / (rs * dth), 0.3, None)
    levels = np.geomspace(sig_idx.min(), sig_idx.max() * 1.0001, 4)
    pos = np.interp(np.log(sig_idx), np.log(levels), np.arange(4.0))
    weights = np.clip(1.0 - np.abs(pos[:, None] - np.arange(4.0)[None, :]), 0, 1)
    lateral = np.zeros_like(noise)
    half_n = int(math.ceil(4 * levels[-1])) + 1
    kernels = np.stack([_kernel(float(sg), half_n) for sg in levels])
    for k, sg in enumerate(levels):
        w = weights[:, k].astype(np.float32)
        if not w.any():
            continue
        lateral += w[None, :, None] * ndimage.gaussian_filter1d(noise, float(sg), axis=2)
    # Normalise so the mean intensity equals the echo level whatever the PSF width.
    k_ax = float((_kernel(sig_ax, int(math.ceil(4 * sig_ax)) + 1) ** 2).sum())
    gram = kernels @ kernels.T
    k_lat = np.einsum("rk,kl,rl->r", weights, gram, weights)
    intensity = (lateral[0] ** 2 + lateral[1] ** 2) / (k_ax * k_lat[:, None]).astype(np.float32)

    # Round-trip attenuation along each beam; automatic TGC undoes most of the average.
    cum = np.cumsum(atten_p, axis=0) * dr
    db = 10.0 * np.log10(intensity + 1e-12) - 4.343 * cum
    tgc = 4.343 * rng.uniform(0.75, 0.92) * np.median(cum, axis=1) + _smooth_curve(rng, n_r, 5, 1.5)
    # Beams at the edge of the aperture are weaker.
    edge = -3.0 * np.clip((np.abs(ths) / fan.half_angle - 0.85) / 0.15, 0, 1)
    db += tgc[:, None] + edge[None, :]
    dyn_range = rng.uniform(46.0, 56.0)
    top = rng.uniform(1.0, 5.0)
    display = np.clip((db - (top - dyn_range)) / dyn_range, 0.0, 1.0)

    # Scan conversion: sample the polar image at every pixel inside the fan.
    inside = (scene.r >= fan.r0) & (scene.r <= fan.r1) & (np.abs(scene.theta) <= fan.half_angle)
    ir = (scene.r[inside] - fan.r0) / dr
    it = (scene.theta[inside] + fan.half_angle) / dth
    out = np.zeros((s, s), np.float32)
    out[inside] = ndimage.map_coordinates(display, np.stack([ir, it]), order=1, mode="nearest")
    return (out * 255.0 + 0.5).astype(np.uint8)
