"""timm's RandAugment on uint8 batches on their own device.

timm's `rand_augment_transform` is PIL, one image at a time on one host thread: on a GPU that is a
device->host copy, ~0.5-1 ms per 224 px image and a copy back, in the step's path. This module runs
the same RandAugment on the batch where it lives:

- the ops, their probability, magnitude (with its noise and cap) and argument mappings are read from
  timm's own `RandAugment` object (built from the recipe's string by `rand_augment_transform`), and the
  level -> argument arithmetic is timm's `LEVEL_TO_ARG`, vectorised (tests/test_augment_device.py
  checks it against timm's functions, and each op's pixels against timm's PIL op);
- every random choice (which ops, whether each applies, magnitude, sign, bilinear or bicubic) is drawn
  per image on the host, from torch's global CPU generator, which fit() reseeds every epoch as it
  does the `random`/numpy state timm draws from: a resumed run replays them, and nothing waits for the
  device (no sync per step);
- the pixel work runs on the device in sub-batches grouped by drawn op (at most ops x layers groups a
  batch, whatever its size; the geometric ops, all affine maps, share one group per layer and filter),
  each op in Pillow's own arithmetic: on the same draws the output equals timm's PIL output bit for
  bit (tests/test_augment_device.py), so "timm's RandAugment" means the same images on either path.
  About 770 small kernels a batch (counted at batch 128), whatever the batch size.

It is used where the batch lives on CUDA (`data.BatchAugment`); the CPU path keeps timm's PIL ops, so
its numbers do not change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# PIL's resampling filter ids (PIL.Image.Resampling), without importing PIL here.
PIL_BILINEAR, PIL_BICUBIC = 2, 3

GEOMETRIC = ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY", "TranslateXRel", "TranslateYRel")
POINT = ("AutoContrast", "Equalize", "Invert", "Posterize", "PosterizeIncreasing", "PosterizeOriginal", "Solarize",
         "SolarizeIncreasing", "SolarizeAdd")
ENHANCE = ("Color", "ColorIncreasing", "Contrast", "ContrastIncreasing", "Brightness", "BrightnessIncreasing",
           "Sharpness", "SharpnessIncreasing")
SUPPORTED = GEOMETRIC + POINT + ENHANCE  # every op of timm's 'rand' sets (plain, 'inc1', 'tweights'); not the 3a ones

LEVEL_DENOM = 10.0  # timm's _LEVEL_DENOM: 'm9' is 9 of 10 (tests pin it to timm's)
SOLARIZE_ADD_THRESHOLD = 128  # timm's solarize_add default: add only to pixels below mid-grey
GRAY_WEIGHTS = (19595, 38470, 7471)  # PIL's RGB -> L in 16.16 fixed point (ITU-R 601-2 luma: 0.299, 0.587, 0.114)
# Sample positions and interpolation in double, as Pillow computes them: both truncate the result, and
# in float32 a value a hair under an integer (a 4.2 px shift) lands one level lower on ~8% of pixels.
# Memory-bound work (a gather per tap), so double costs about its extra bytes, on a sub-batch.
GEOMETRY_DTYPE = torch.float64
SMOOTH_EDGE, SMOOTH_CENTRE, SMOOTH_SCALE = 1, 5, 13  # PIL's ImageFilter.SMOOTH: 3x3 of 1s, 5 in the centre, / 13


@dataclass
class Draws:
    """One batch's random choices, [n images, layers] each, on the host."""

    op: torch.Tensor  # int64: index into the ops
    applied: torch.Tensor  # bool: the op's probability came up
    arg: torch.Tensor  # float64: the op's argument (degrees, shear, translate fraction or pixels, bits, threshold, factor)
    bicubic: torch.Tensor  # bool: the resampling filter of a geometric op (else bilinear)


def level_to_arg(name: str, level: torch.Tensor, negate: torch.Tensor, hparams: dict) -> torch.Tensor:
    """timm's LEVEL_TO_ARG[name] on a tensor of levels (float64), `negate` standing for its coin flips."""
    frac = level / LEVEL_DENOM
    sign = torch.where(negate, -1.0, 1.0).to(level.dtype)
    if name == "Rotate":
        return sign * frac * 30.0
    if name in ("ShearX", "ShearY"):
        return sign * frac * 0.3
    if name in ("TranslateXRel", "TranslateYRel"):
        return sign * frac * hparams.get("translate_pct", 0.45)
    if name in ("TranslateX", "TranslateY"):
        return sign * frac * float(hparams["translate_const"])
    posterize = torch.trunc(frac * 4)
    if name == "Posterize":
        return posterize
    if name == "PosterizeIncreasing":
        return 4 - posterize
    if name == "PosterizeOriginal":
        return posterize + 4
    solarize = torch.clamp(torch.trunc(frac * 256), max=256)
    if name == "Solarize":
        return solarize
    if name == "SolarizeIncreasing":
        return 256 - solarize
    if name == "SolarizeAdd":
        return torch.clamp(torch.trunc(frac * 110), max=128)
    if name in ("Color", "Contrast", "Brightness", "Sharpness"):
        return frac * 1.8 + 0.1
    if name in ("ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing"):
        return torch.clamp(1.0 + sign * frac * 0.9, min=0.1)
    return torch.zeros_like(level)  # AutoContrast, Equalize, Invert: no argument


# --- the ops on uint8 batches [g, 3, H, W], one argument per image --------------------------------

def _blend(degenerate: torch.Tensor, img: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL's Image.blend(degenerate, img, factor) for 8-bit images: float32 arithmetic, clipped, truncated."""
    f = factor.to(torch.float32).view(-1, 1, 1, 1)
    d = degenerate.to(torch.float32)
    return (d + f * (img.to(torch.float32) - d)).clamp_(0, 255).trunc_().to(torch.uint8)


def _gray(x: torch.Tensor) -> torch.Tensor:
    """PIL's convert('L'): [g, 1, H, W] uint8, in its integer arithmetic (rounded 16.16 fixed point)."""
    r, g, b = x.to(torch.int32).unbind(1)
    return ((r * GRAY_WEIGHTS[0] + g * GRAY_WEIGHTS[1] + b * GRAY_WEIGHTS[2] + 0x8000) >> 16).to(torch.uint8)[:, None]


def _smooth(x: torch.Tensor) -> torch.Tensor:
    """PIL's ImageFilter.SMOOTH (3x3 of 1s with 5 in the centre, / 13; border pixels kept) in integers:
    round(sum / 13) is never a tie (sum / 13 is at least 1/26 from any .5), so Pillow's float32 sum rounds
    the same way, and no TF32 convolution can move it on a GPU."""
    xi = x.to(torch.int32)
    h, w = x.shape[-2:]
    total = (SMOOTH_CENTRE - SMOOTH_EDGE) * xi[..., 1:-1, 1:-1]
    for dy in range(3):
        for dx in range(3):
            total = total + SMOOTH_EDGE * xi[..., dy:dy + h - 2, dx:dx + w - 2]
    out = x.clone()
    out[..., 1:-1, 1:-1] = torch.div(2 * total + SMOOTH_SCALE, 2 * SMOOTH_SCALE, rounding_mode="floor").to(torch.uint8)
    return out


def _autocontrast(x: torch.Tensor) -> torch.Tensor:
    """PIL's ImageOps.autocontrast (cutoff 0): per channel, lo..hi stretched to 0..255 with int() of
    ix * scale + offset in double precision, as its lookup table is built; a flat channel is kept."""
    lo = x.amin(dim=(-2, -1), keepdim=True).to(torch.float64)
    hi = x.amax(dim=(-2, -1), keepdim=True).to(torch.float64)
    flat = hi <= lo
    # tensor / tensor: `255.0 / t` is computed as 255 * (1 / t), which is not Python's 255 / t to the last bit.
    scale = torch.full_like(lo, 255.0) / torch.where(flat, 1.0, hi - lo)
    out = (x.to(torch.float64) * scale + (-lo * scale)).trunc_().clamp_(0, 255).to(torch.uint8)
    return torch.where(flat, x, out)


def _pil_cubic(v1: torch.Tensor, v2: torch.Tensor, v3: torch.Tensor, v4: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """Pillow's BICUBIC macro (the a = -1 cubic, in its Horner form; grid_sample's bicubic is a = -0.75,
    up to ~5 levels apart on sharp edges)."""
    p2 = -v1 + v3
    p3 = 2 * (v1 - v2) + v3 - v4
    p4 = -v1 + v2 - v3 + v4
    return v2 + d * (p2 + d * (p3 + d * p4))


def _pil_interpolate(x: torch.Tensor, xin: torch.Tensor, yin: torch.Tensor, bicubic: bool) -> torch.Tensor:
    """Pillow's bilinear_filter32RGB / bicubic_filter32RGB at edge coordinates (xin, yin) [g, H, W]:
    the 2 x 2 (4 x 4) pixels around (xin - .5, yin - .5), indices clamped to the image, interpolated
    along rows then down the column in Pillow's own arithmetic. [g, C, H, W] in xin's dtype, unclipped."""
    g, c, h, w = x.shape
    xc, yc = xin - 0.5, yin - 0.5
    x0, y0 = torch.floor(xc), torch.floor(yc)
    dx, dy = (xc - x0)[:, None], (yc - y0)[:, None]  # [g, 1, H, W]: the same for every channel
    k = 4 if bicubic else 2
    taps = torch.arange(-1 if bicubic else 0, 3 if bicubic else 2, device=x.device, dtype=xin.dtype).view(1, k, 1, 1)
    rows = (y0[:, None] + taps).clamp_(0, h - 1).to(torch.int64)  # [g, k, H, W]
    cols = (x0[:, None] + taps).clamp_(0, w - 1).to(torch.int64)
    idx = (rows[:, :, None] * w + cols[:, None, :]).view(g, 1, -1)  # every tap in one gather: few kernels
    v = x.to(xin.dtype).reshape(g, c, h * w).gather(2, idx.expand(g, c, -1)).view(g, c, k, k, *xin.shape[1:])
    if bicubic:
        r = [_pil_cubic(v[:, :, i, 0], v[:, :, i, 1], v[:, :, i, 2], v[:, :, i, 3], dx) for i in range(4)]
        return _pil_cubic(*r, dy)
    r0 = v[:, :, 0, 0] + (v[:, :, 0, 1] - v[:, :, 0, 0]) * dx  # Pillow's BILINEAR(v, a, b, d): a + (b - a) d
    r1 = v[:, :, 1, 0] + (v[:, :, 1, 1] - v[:, :, 1, 0]) * dx
    return r0 + (r1 - r0) * dy


def _affine(x: torch.Tensor, m: torch.Tensor, bicubic: bool, fill: torch.Tensor) -> torch.Tensor:
    """PIL's Image.transform(AFFINE, m) per image: output pixel (x, y) reads the input at
    (a (x+.5) + b (y+.5) + c, d (x+.5) + e (y+.5) + f) in edge coordinates; outside the image -> fill;
    inside, neighbours past the border are clamped. m: [g, 6] float64."""
    g, _, h, w = x.shape
    m = m.to(device=x.device, dtype=GEOMETRY_DTYPE)
    ys = (torch.arange(h, device=x.device, dtype=GEOMETRY_DTYPE) + 0.5).view(1, h, 1)
    xs = (torch.arange(w, device=x.device, dtype=GEOMETRY_DTYPE) + 0.5).view(1, 1, w)
    mm = m.view(g, 6, 1, 1)
    xin = mm[:, 0] * xs + mm[:, 1] * ys + mm[:, 2]
    yin = mm[:, 3] * xs + mm[:, 4] * ys + mm[:, 5]
    inside = (xin >= 0) & (xin < w) & (yin >= 0) & (yin < h)
    out = _pil_interpolate(x, xin, yin, bicubic)
    out = torch.where(inside[:, None], out, fill.to(out.device, out.dtype).view(1, -1, 1, 1))
    return out.clamp_(0, 255).trunc_().to(torch.uint8)  # Pillow clips and truncates ((UINT8) v)


def _matrix(name: str, arg: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """PIL's affine data (a, b, c, d, e, f) for timm's geometric op at `arg`, [g, 6] float64."""
    one, zero = torch.ones_like(arg), torch.zeros_like(arg)
    if name == "ShearX":
        return torch.stack((one, arg, zero, zero, one, zero), 1)
    if name == "ShearY":
        return torch.stack((one, zero, zero, arg, one, zero), 1)
    if name in ("TranslateX", "TranslateXRel"):
        px = arg * w if name.endswith("Rel") else arg
        return torch.stack((one, zero, px, zero, one, zero), 1)
    if name in ("TranslateY", "TranslateYRel"):
        px = arg * h if name.endswith("Rel") else arg
        return torch.stack((one, zero, zero, zero, one, px), 1)
    assert name == "Rotate"
    # Image.rotate(degrees) about the centre, expand=False: its inverse map, as Pillow builds it.
    a = -torch.deg2rad(torch.remainder(arg, 360.0))
    cos, sin = torch.cos(a), torch.sin(a)
    cx, cy = w / 2.0, h / 2.0
    c = cos * -cx + sin * -cy + cx
    f = -sin * -cx + cos * -cy + cy
    return torch.stack((cos, sin, c, -sin, cos, f), 1)


def apply_op(name: str, x: torch.Tensor, arg: torch.Tensor, *, bicubic: bool = False,
             fill: torch.Tensor | None = None) -> torch.Tensor:
    """timm's op `name` on a uint8 batch, `arg` (float64, one per image, on the host or x's device) as
    timm's level_fn gives it."""
    from torchvision.transforms.v2 import functional as TF

    dev = x.device
    if name in GEOMETRIC:
        assert fill is not None
        return _affine(x, _matrix(name, arg.to(torch.float64), x.shape[-2], x.shape[-1]), bicubic, fill)
    if name == "AutoContrast":
        return _autocontrast(x)
    if name == "Equalize":
        return TF.equalize(x)  # torchvision's is PIL's algorithm (its comments cite ImageOps.equalize)
    if name == "Invert":
        return TF.invert(x)
    if name.startswith("Posterize"):  # keep the top `bits`; 0 bits -> black (harness's Pillow >= 12 choice)
        bits = arg.to(dev).clamp(0, 8).to(torch.int64)
        mask = (torch.bitwise_left_shift(torch.full_like(bits, 0xFF), 8 - bits) & 0xFF).to(torch.uint8).view(-1, 1, 1, 1)
        return x & mask
    if name in ("Solarize", "SolarizeIncreasing"):  # invert pixels >= threshold (256: none)
        thr = arg.to(device=dev, dtype=torch.int16).view(-1, 1, 1, 1)
        return torch.where(x.to(torch.int16) >= thr, 255 - x, x)
    if name == "SolarizeAdd":
        add = arg.to(device=dev, dtype=torch.int16).view(-1, 1, 1, 1)
        xi = x.to(torch.int16)
        return torch.where(xi < SOLARIZE_ADD_THRESHOLD, (xi + add).clamp_(max=255), xi).to(torch.uint8)
    factor = arg.to(dev)
    if name.startswith("Color"):
        return _blend(_gray(x).expand_as(x), x, factor)
    if name.startswith("Contrast"):
        mean = _gray(x).to(torch.float64).mean(dim=(-3, -2, -1), keepdim=True)
        return _blend(torch.floor(mean + 0.5).expand_as(x), x, factor)
    if name.startswith("Brightness"):
        return _blend(torch.zeros_like(x), x, factor)
    if name.startswith("Sharpness"):
        return _blend(_smooth(x), x, factor)
    raise ValueError(f"RandAugment op {name!r} has no on-device form")


# --- RandAugment -----------------------------------------------------------------------------------

class DeviceRandAugment:
    """timm's `RandAugment` (from `rand_augment_transform`) applied to uint8 batches on their device."""

    def __init__(self, ra, device: torch.device | str | None = None) -> None:
        """`device`: where batches will be (the fill colour is copied there now: a first copy in the
        step would be a synchronous host->device copy, which CUDA's sync debug mode reports)."""
        if not self.supports(ra):
            raise ValueError(f"no on-device form for {ra}")
        self.names = [op.name for op in ra.ops]
        first = ra.ops[0]
        self.prob = first.prob
        self.magnitude = float(first.magnitude)
        self.magnitude_std = float(first.magnitude_std)
        self.upper = float(first.magnitude_max or LEVEL_DENOM)  # timm: magnitude_max or _LEVEL_DENOM
        self.hparams = dict(first.hparams)
        resample = first.kwargs["resample"]
        self.resample = tuple(resample) if isinstance(resample, (list, tuple)) else (resample,)
        self.fill = torch.tensor(first.kwargs["fillcolor"], dtype=torch.float32)
        self._fills: dict[torch.device, torch.Tensor] = {}  # the fill on each device, copied there once
        if device is not None:
            self._fill(torch.empty(0, device=device).device)  # the device as a batch reports it (cuda:0, not cuda)
        self.num_layers = ra.num_layers
        self.weights = None if ra.choice_weights is None else torch.as_tensor(ra.choice_weights, dtype=torch.float64)

    @staticmethod
    def supports(ra) -> bool:
        """Every op known here, one shared setting (as rand_augment_transform builds them), PIL's
        bilinear/bicubic resampling, an RGB fill."""
        ops = list(getattr(ra, "ops", []))
        if not ops or any(op.name not in SUPPORTED for op in ops):
            return False
        first = ops[0]
        same = all((op.prob, op.magnitude, op.magnitude_std, op.magnitude_max) ==
                   (first.prob, first.magnitude, first.magnitude_std, first.magnitude_max) for op in ops)
        resample = first.kwargs.get("resample")
        resample = tuple(resample) if isinstance(resample, (list, tuple)) else (resample,)
        fill = first.kwargs.get("fillcolor")
        return same and set(resample) <= {PIL_BILINEAR, PIL_BICUBIC} and isinstance(fill, (tuple, list)) and len(fill) == 3

    def draw(self, n: int, generator: torch.Generator | None = None) -> Draws:
        """Per image and layer, as timm's RandAugment.__call__ / AugmentOp.__call__ draw them: an op
        (uniform with replacement, or timm's weights without), whether it applies (prob), its magnitude
        (gauss(m, std), or uniform(0, m) for std = inf, clipped to [0, magnitude_max or 10]), the sign of
        its argument (timm's _randomly_negate) and the resampling filter (random.choice of timm's)."""
        shape = (n, self.num_layers)
        k = len(self.names)
        if self.weights is None:
            op = torch.randint(0, k, shape, generator=generator)
        else:
            op = torch.multinomial(self.weights.expand(n, k), self.num_layers, replacement=False, generator=generator)
        applied = (torch.rand(shape, generator=generator, dtype=torch.float64) <= self.prob if self.prob < 1.0
                   else torch.ones(shape, dtype=torch.bool))
        m = torch.full(shape, self.magnitude, dtype=torch.float64)
        if math.isinf(self.magnitude_std):
            m = torch.rand(shape, generator=generator, dtype=torch.float64) * self.magnitude
        elif self.magnitude_std > 0:
            m = m + self.magnitude_std * torch.randn(shape, generator=generator, dtype=torch.float64)
        m = m.clamp(0.0, self.upper)
        negate = torch.rand(shape, generator=generator, dtype=torch.float64) > 0.5
        pick = torch.randint(0, len(self.resample), shape, generator=generator)
        bicubic = torch.tensor([r == PIL_BICUBIC for r in self.resample])[pick]
        arg = torch.zeros(shape, dtype=torch.float64)
        for i, name in enumerate(self.names):
            arg = torch.where(op == i, level_to_arg(name, m, negate, self.hparams), arg)
        return Draws(op, applied, arg, bicubic)

    def apply(self, x: torch.Tensor, d: Draws) -> torch.Tensor:
        """The drawn ops on a uint8 batch [n, 3, H, W], layer after layer, each op on the sub-batch that
        drew it. The geometric ops are all affine maps, so each layer's are one sub-batch per filter,
        one matrix per image. Index, argument and matrix tensors are built on the host and copied once
        per batch (pinned, non-blocking): no device->host sync."""
        h, w = x.shape[-2:]
        plan: list[tuple[str, bool, int, int]] = []  # (op name or "affine", bicubic, start, stop)
        # Non-geometric groups index `rows`/`args`; affine groups index `geo_rows`/`mats`.
        rows: list[torch.Tensor] = []
        args: list[torch.Tensor] = []
        geo_rows: list[torch.Tensor] = []
        mats: list[torch.Tensor] = []
        n_op = n_geo = 0
        for layer in range(d.op.shape[1]):
            geo: dict[bool, list[tuple[torch.Tensor, torch.Tensor]]] = {False: [], True: []}
            for i, name in enumerate(self.names):
                chosen = d.applied[:, layer] & (d.op[:, layer] == i)
                if name in GEOMETRIC:
                    for cubic in (False, True):
                        idx = (chosen & (d.bicubic[:, layer] == cubic)).nonzero()[:, 0]
                        if len(idx):
                            geo[cubic].append((idx, _matrix(name, d.arg[idx, layer], h, w)))
                    continue
                idx = chosen.nonzero()[:, 0]
                if len(idx):
                    plan.append((name, False, n_op, n_op + len(idx)))
                    rows.append(idx)
                    args.append(d.arg[idx, layer])
                    n_op += len(idx)
            for cubic, parts in geo.items():
                if parts:
                    k = sum(len(idx) for idx, _ in parts)
                    plan.append(("affine", cubic, n_geo, n_geo + k))
                    geo_rows += [idx for idx, _ in parts]
                    mats += [m for _, m in parts]
                    n_geo += k
        if not plan:
            return x
        empty = torch.zeros(0, dtype=torch.int64)
        host = {"rows": torch.cat(rows) if rows else empty, "args": torch.cat(args) if args else empty.double(),
                "geo_rows": torch.cat(geo_rows) if geo_rows else empty,
                "mats": torch.cat(mats) if mats else torch.zeros(0, 6, dtype=torch.float64)}
        if x.is_cuda:  # from pinned host memory the copies are queued, not waited for
            host = {k: v.pin_memory().to(x.device, non_blocking=True) for k, v in host.items()}
        x = x.clone()
        for name, cubic, a, b in plan:
            if name == "affine":
                idx = host["geo_rows"][a:b]
                x.index_copy_(0, idx, _affine(x.index_select(0, idx), host["mats"][a:b], cubic, self._fill(x.device)))
            else:
                idx = host["rows"][a:b]
                x.index_copy_(0, idx, apply_op(name, x.index_select(0, idx), host["args"][a:b]))
        return x

    def _fill(self, device: torch.device) -> torch.Tensor:
        if device not in self._fills:
            self._fills[device] = self.fill.to(device)
        return self._fills[device]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.apply(x, self.draw(len(x)))
