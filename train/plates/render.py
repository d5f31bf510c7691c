"""The training renderer: plates drawn from many typefaces, photographed badly.

This is deliberately not the simulator's camera (`firmware-sim/scenes`): other typefaces, other
drawing code, other degradations, so that a model trained here and measured there is measured on
pixels it has never seen the like of.

Two products:
- `sample(rng, fonts)`: one recogniser input, a plate cut out of a cluttered, degraded frame by a
  slightly wrong quadrilateral (the locator is never exact) and flattened to `H x W` grey, with its
  text. What the gateway feeds the model is made the same way (`gateway/src/reader/learned.rs`).
- `scene(fmt, condition, seed, fonts)`: a whole 640x480 frame of a car front, for evaluating the
  full reader on held-out typefaces (`python3 render.py scenes DIR`).
"""

import io
import math
import os
import random
import sys

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from fonts import CJK_HELDOUT, CJK_PROVINCE_EXTRA, CJK_TRAIN, LATIN_HELDOUT, LATIN_TRAIN

H, W = 32, 128

PROVINCES = "京津沪渝冀豫云辽黑湘皖鲁新苏浙赣鄂桂甘晋蒙陕吉闽贵粤青藏川宁琼使领"
SUFFIXES = "学警挂港澳"
DIGITS = "0123456789"
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
# Index 0 is the CTC blank. The space separates a German plate's district, letters and number.
ALPHABET = DIGITS + LETTERS + " " + PROVINCES + SUFFIXES
CLASSES = 1 + len(ALPHABET)

CN_LETTERS = "ABCDEFGHJKLMNPQRSTUVWXYZ"
UK_LETTERS = "ABCDEFGHJKLMNOPRSTUVWXY"
FORMATS = ["cn-blue", "cn-yellow", "cn-green", "de", "uk"]
CONDITIONS = ["clean", "noise", "blur", "skew", "light", "combined", "small"]


def random_plate(fmt, rng):
    """A canonical plate text for the format and the colour it is printed on."""
    prov = rng.choice(PROVINCES[:-2])
    if fmt in ("cn-blue", "cn-yellow"):
        body = "".join(rng.choice(CN_LETTERS) if rng.random() < 0.3 else rng.choice(DIGITS) for _ in range(5))
        if rng.random() < 0.04:
            body = body[:4] + rng.choice(SUFFIXES)
        return prov + rng.choice(CN_LETTERS) + body, ("blue" if fmt == "cn-blue" else "yellow")
    if fmt == "cn-green":
        df = rng.choice("DF")
        if rng.random() < 0.7:
            s = df + (rng.choice(CN_LETTERS) if rng.random() < 0.3 else rng.choice(DIGITS))
            s += "".join(rng.choice(DIGITS) for _ in range(4))
        else:
            s = "".join(rng.choice(DIGITS) for _ in range(5)) + df
        return prov + rng.choice(CN_LETTERS) + s, "green"
    if fmt == "de":
        dn = rng.randint(1, 3)
        ln = rng.randint(1, 2)
        nd = rng.randint(1, min(4, 8 - dn - ln))
        d = "".join(rng.choice(LETTERS) for _ in range(dn))
        l = "".join(rng.choice(LETTERS) for _ in range(ln))
        n = str(rng.randint(10 ** (nd - 1), 10**nd - 1))
        return f"{d} {l} {n}", "white"
    s = "".join(rng.choice(UK_LETTERS) for _ in range(2))
    s += "".join(rng.choice(DIGITS) for _ in range(2))
    s += "".join(rng.choice(UK_LETTERS) for _ in range(3))
    return s, rng.choice(["white", "yellow"])


class Face:
    """One typeface with its glyph masks cached at a large size, tight-cropped."""

    def __init__(self, entry):
        self.name, self.path, index, self.package, self.licence = entry
        self.font = ImageFont.truetype(self.path, 96, index=index)
        self.cache = {}
        self.missing = self._mask_raw("\uffff")

    def _mask_raw(self, c):
        bbox = self.font.getbbox(c)
        w, h = max(1, bbox[2] - bbox[0]), max(1, bbox[3] - bbox[1])
        img = Image.new("L", (w + 4, h + 4), 0)
        ImageDraw.Draw(img).text((2 - bbox[0], 2 - bbox[1]), c, font=self.font, fill=255)
        a = np.asarray(img, dtype=np.float32) / 255.0
        ys, xs = np.nonzero(a > 0.1)
        if len(xs) == 0:
            return None
        return a[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]

    def has(self, c):
        m = self.mask(c)
        if m is None:
            return False
        return self.missing is None or m.shape != self.missing.shape or not np.allclose(m, self.missing)

    def mask(self, c):
        if c not in self.cache:
            self.cache[c] = self._mask_raw(c)
        return self.cache[c]


def load_faces(heldout=False, extra=False):
    """The Latin and CJK faces of one side of the split. `extra` adds the CJK faces only the
    province classifier trains on (`fonts.CJK_PROVINCE_EXTRA`), some of which lack a few
    provinces: `cjk_pick` draws each character from a face that has it."""
    latin = [Face(e) for e in (LATIN_HELDOUT if heldout else LATIN_TRAIN) if os.path.exists(e[1])]
    cjk = [Face(e) for e in (CJK_HELDOUT if heldout else CJK_TRAIN) if os.path.exists(e[1])]
    cjk = [f for f in cjk if all(f.has(c) for c in PROVINCES[:-2])]
    if extra and not heldout:
        cjk += [Face(e) for e in CJK_PROVINCE_EXTRA if os.path.exists(e[1])]
    return latin, cjk


# ---- the flat plate ---------------------------------------------------------------------------

COLOURS = {
    "blue": ((20, 65, 180), (240, 240, 236)),
    "yellow": ((236, 186, 30), (20, 20, 22)),
    "green": ((110, 196, 104), (20, 20, 22)),
    "white": ((238, 238, 232), (20, 20, 22)),
}


def jitter_colour(c, rng, k=25):
    return tuple(int(np.clip(v + rng.uniform(-k, k), 0, 255)) for v in c)


def layout(fmt, text, rng):
    """Plate size (mm) and one (char, x, y, w, h) box per glyph, with jitter in spacing and size."""
    chars = [c for c in text]
    g = rng.uniform(0.9, 1.05)  # glyph box scale
    if fmt in ("cn-blue", "cn-yellow", "cn-green"):
        pw, ph = (480.0, 140.0) if fmt == "cn-green" else (440.0, 140.0)
        n = len(chars)
        gw = (43.0 if n == 8 else 45.0) * rng.uniform(0.92, 1.05)
        pitch = gw + rng.uniform(8.0, 13.0)
        gap = rng.uniform(28.0, 40.0)
        total = n * gw + (n - 1) * (pitch - gw) + gap - (pitch - gw)
        x = (pw - total) / 2 + rng.uniform(-6, 6)
        gh = 90.0 * g
        y = (ph - gh) / 2 + rng.uniform(-4, 6)
        boxes = []
        for i, c in enumerate(chars):
            if i == 2:
                x += gap - (pitch - gw)
            boxes.append((c, x, y, gw, gh))
            x += pitch
        return pw, ph, boxes
    if fmt == "de":
        pw, ph = 520.0, 110.0
        groups = text.split(" ")
        gw = 42.0 * rng.uniform(0.85, 1.05)
        pitch = gw + rng.uniform(2.0, 5.0)
        seal = rng.uniform(34.0, 46.0)
        sep = rng.uniform(8.0, 16.0)
        n = sum(len(s) for s in groups)
        total = n * pitch + seal + sep
        x = 47.0 + (470.0 - total) / 2 + rng.uniform(-8, 8)
        gh = 75.0 * g
        y = (ph - gh) / 2 + rng.uniform(-3, 3)
        boxes = []
        for gi, grp in enumerate(groups):
            if gi == 1:
                boxes.append(("seal", x, 0, seal, 0))
                x += seal
            elif gi == 2:
                x += sep
            for c in grp:
                boxes.append((c, x, y, gw, gh))
                x += pitch
        return pw, ph, boxes
    pw, ph = 520.0, 111.0
    gw = 50.0 * rng.uniform(0.85, 1.04)
    pitch = gw + rng.uniform(8.0, 13.0)
    gap = rng.uniform(18.0, 34.0)
    total = 7 * pitch + gap
    x = (pw - total) / 2 + rng.uniform(-6, 6)
    gh = 79.0 * g
    y = (ph - gh) / 2 + rng.uniform(-3, 3)
    boxes = []
    for i, c in enumerate(chars):
        if i == 4:
            x += gap
        boxes.append((c, x, y, gw, gh))
        x += pitch
    return pw, ph, boxes


def paint_glyph(canvas, mask, x, y, w, h, colour, rng, fill_w):
    """Stretches a glyph mask into its box (plate faces are tall and narrow) and paints it."""
    mh, mw = mask.shape
    th = max(2, int(round(h)))
    tw = max(1, int(round(min(w * fill_w, th * mw / mh * rng.uniform(1.0, 1.6)))))
    if mw / mh < 0.35:  # a 1 or an I stays narrow
        tw = max(1, int(round(th * mw / mh * rng.uniform(1.0, 1.4))))
    m = np.asarray(Image.fromarray((mask * 255).astype(np.uint8)).resize((tw, th), Image.BILINEAR), np.float32) / 255
    x0 = int(round(x + (w - tw) / 2))
    y0 = int(round(y))
    ch, cw = canvas.shape[:2]
    xa, ya = max(0, x0), max(0, y0)
    xb, yb = min(cw, x0 + tw), min(ch, y0 + th)
    if xb <= xa or yb <= ya:
        return
    a = m[ya - y0 : yb - y0, xa - x0 : xb - x0, None]
    canvas[ya:yb, xa:xb] = canvas[ya:yb, xa:xb] * (1 - a) + np.array(colour, np.float32) * a


def draw_plate(fmt, text, colour, latin, cjk, ppm, rng):
    """The flat plate, RGB float, at `ppm` pixels per millimetre."""
    pw, ph, boxes = layout(fmt, text, rng)
    w, h = int(round(pw * ppm)), int(round(ph * ppm))
    bg, fg = COLOURS[colour]
    bg, fg = jitter_colour(bg, rng), jitter_colour(fg, rng, 15)
    img = np.zeros((h, w, 3), np.float32) + np.array(bg, np.float32)
    if fmt == "cn-green":
        t = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
        top = np.array(jitter_colour((235, 245, 235), rng, 10), np.float32)
        img = top * (1 - t) + np.array(bg, np.float32) * t
        img = np.broadcast_to(img, (h, w, 3)).copy()
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(pil)
    s = ppm
    if fmt in ("cn-blue", "cn-yellow") or (fmt == "de" and rng.random() < 0.9) or rng.random() < 0.3:
        inset, t = rng.uniform(1, 4) * s, max(1, rng.uniform(1, 2.5) * s)
        d.rectangle([inset, inset, w - inset, h - inset], outline=fg if fmt != "de" else (20, 20, 22), width=int(round(t)))
    if fmt in ("cn-blue", "cn-yellow", "cn-green"):
        dot = [b for b in boxes[1:3]]
        cx = (dot[0][1] + dot[0][3] + dot[1][1]) / 2 * s
        r = rng.uniform(3, 6) * s
        d.ellipse([cx - r, 70 * s - r, cx + r, 70 * s + r], fill=fg)
        # Rivets.
        if rng.random() < 0.5:
            for rx in (rng.uniform(80, 110), pw - rng.uniform(80, 110)):
                d.ellipse([(rx - 4) * s, (12 - 4) * s, (rx + 4) * s, (12 + 4) * s], fill=jitter_colour((190, 190, 190), rng))
    if fmt == "de":
        band = jitter_colour((0, 51, 153), rng, 20)
        bw = rng.uniform(34, 42)
        d.rectangle([3 * s, 3 * s, bw * s, h - 3 * s], fill=band)
        for k in range(12):
            a = k * math.tau / 12
            cx, cy = bw / 2 + 1 + 9 * math.cos(a), 32 + 9 * math.sin(a)
            d.ellipse([(cx - 1.3) * s, (cy - 1.3) * s, (cx + 1.3) * s, (cy + 1.3) * s], fill=(255, 204, 0))
    if fmt == "uk" and rng.random() < 0.3:
        # A dealer's line under the registration.
        f = rng.choice(latin)
        small = ImageFont.truetype(f.path, max(6, int(7 * s)))
        d.text((pw * s * rng.uniform(0.3, 0.5), h - 10 * s), "".join(rng.choice(LETTERS) for _ in range(8)), font=small, fill=(60, 60, 60))
    img = np.asarray(pil, np.float32).copy()
    if fmt == "de":
        m = latin[0].mask("D") if rng.random() < 0.5 else rng.choice(latin).mask("D")
        paint_glyph(img, m, (bw / 2 - 6) * s, 68 * s, 14 * s, 22 * s, (255, 255, 255), rng, 1.0)
    fill_w = rng.uniform(0.7, 1.0)
    # One typeface per plate, as on the road.
    plate_latin = rng.choice(latin)
    stroke = rng.random() < 0.3
    for c, x, y, gw, gh in boxes:
        if c == "seal":
            pil2 = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
            d2 = ImageDraw.Draw(pil2)
            cx = (x + gw / 2) * s
            for cy, col in ((38, (70, 120, 70)), (72, (150, 150, 150))):
                r = rng.uniform(9, 12) * s
                d2.ellipse([cx - r, cy * s - r, cx + r, cy * s + r], fill=jitter_colour(col, rng))
            img = np.asarray(pil2, np.float32).copy()
            continue
        face = plate_latin if c.isascii() else cjk_pick(cjk, c, rng)
        m = face.mask(c)
        if m is None:
            continue
        if stroke:
            m = np.asarray(Image.fromarray((m * 255).astype(np.uint8)).filter(ImageFilter.MaxFilter(3)), np.float32) / 255
        paint_glyph(img, m, x * s, y * s, gw * s, gh * s, fg, rng, fill_w)
    return img


def cjk_pick(cjk, c, rng):
    for _ in range(10):
        f = rng.choice(cjk)
        if f.has(c):
            return f
    return cjk[0]


# ---- the camera ---------------------------------------------------------------------------------


def homography(src, dst):
    """Coefficients for PIL's PERSPECTIVE transform mapping output points `dst` to input `src`."""
    a = []
    b = []
    for (x, y), (u, v) in zip(dst, src):
        a.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        a.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        b += [u, v]
    return np.linalg.solve(np.array(a, np.float64), np.array(b, np.float64)).tolist()


def clutter(w, h, rng, latin):
    """A car front, more or less: a body colour, grille bars, lamps, stray text."""
    body = np.array([rng.uniform(10, 240) for _ in range(3)], np.float32)
    if rng.random() < 0.5:
        body[:] = rng.uniform(10, 240)
    img = Image.new("RGB", (w, h), tuple(int(v) for v in body))
    d = ImageDraw.Draw(img)
    for _ in range(rng.randint(2, 10)):
        x0, y0 = rng.uniform(-w * 0.2, w), rng.uniform(-h * 0.2, h)
        c = tuple(int(np.clip(v + rng.uniform(-80, 80), 0, 255)) for v in body)
        if rng.random() < 0.5:
            d.rectangle([x0, y0, x0 + rng.uniform(5, w / 2), y0 + rng.uniform(2, h / 4)], fill=c)
        else:
            d.line([x0, y0, x0 + rng.uniform(-w, w), y0 + rng.uniform(-h / 3, h / 3)], fill=c, width=rng.randint(1, 6))
    for _ in range(rng.randint(0, 3)):
        f = rng.choice(latin)
        font = ImageFont.truetype(f.path, rng.randint(8, 28))
        txt = "".join(rng.choice(LETTERS + DIGITS + "  ") for _ in range(rng.randint(2, 10)))
        d.text((rng.uniform(0, w), rng.uniform(0, h)), txt, font=font, fill=tuple(rng.randint(0, 255) for _ in range(3)))
    return np.asarray(img, np.float32).copy()


def place(plate, cw, ch, width_px, roll, yaw, persp, cx, cy):
    """Where the plate's corners land in the frame (TL, TR, BR, BL)."""
    ph, pw = plate.shape[:2]
    hw, hh = width_px / 2, width_px * ph / pw / 2
    pts = []
    for sx, sy in ((-1, -1), (1, -1), (1, 1), (-1, 1)):
        x, y = sx * hw * math.cos(yaw), sy * hh
        # Perspective: the side nearer the camera is taller.
        y *= 1 + persp * sx
        r = math.radians(roll)
        pts.append((cx + x * math.cos(r) - y * math.sin(r), cy + x * math.sin(r) + y * math.cos(r)))
    return pts


def warp_into(frame, plate, quad):
    fh, fw = frame.shape[:2]
    ph, pw = plate.shape[:2]
    coeffs = homography([(0, 0), (pw, 0), (pw, ph), (0, ph)], quad)
    pil = Image.fromarray(np.clip(plate, 0, 255).astype(np.uint8))
    warped = np.asarray(pil.transform((fw, fh), Image.PERSPECTIVE, coeffs, Image.BILINEAR), np.float32)
    mask = np.asarray(
        Image.new("L", (pw, ph), 255).transform((fw, fh), Image.PERSPECTIVE, coeffs, Image.BILINEAR), np.float32
    )[..., None] / 255
    return frame * (1 - mask) + warped * mask


def degrade(frame, quad, rng, cond):
    """Light, glare, dirt, blur, noise, JPEG: what a barrier camera does to a plate."""
    h, w = frame.shape[:2]
    f = frame
    xs = [p[0] for p in quad]
    ys = [p[1] for p in quad]
    pw = max(xs) - min(xs)
    light = cond in ("light", "combined") or (cond == "any" and rng.random() < 0.5)
    if light:
        f = 255 * (np.clip(f, 0, 255) / 255) ** rng.uniform(0.5, 2.0) * rng.uniform(0.45, 1.2)
        if rng.random() < 0.6:  # a shadow edge across the plate
            a = rng.uniform(0, math.pi)
            yy, xx = np.mgrid[0:h, 0:w]
            off = (xx - rng.uniform(min(xs), max(xs))) * math.cos(a) + (yy - np.mean(ys)) * math.sin(a)
            soft = max(1.0, rng.uniform(0.5, 8))
            f = f * (1 - (1 - rng.uniform(0.3, 0.7)) / (1 + np.exp(-off / soft)))[..., None]
    if cond == "any" and rng.random() < 0.15:  # glare
        yy, xx = np.mgrid[0:h, 0:w]
        gx, gy = rng.uniform(min(xs), max(xs)), rng.uniform(min(ys), max(ys))
        r = pw * rng.uniform(0.05, 0.3)
        f = f + rng.uniform(80, 220) * np.exp(-((xx - gx) ** 2 + (yy - gy) ** 2) / (2 * r * r))[..., None]
    if cond == "any" and rng.random() < 0.2:  # dirt
        pil = Image.fromarray(np.clip(f, 0, 255).astype(np.uint8))
        d = ImageDraw.Draw(pil)
        for _ in range(rng.randint(1, 12)):
            x, y = rng.uniform(min(xs), max(xs)), rng.uniform(min(ys), max(ys))
            r = rng.uniform(0.5, pw * 0.02 + 1)
            g = rng.randint(40, 120)
            d.ellipse([x - r, y - r, x + r, y + r], fill=(g, g - 10, g - 20))
        f = np.asarray(pil, np.float32)
    if cond == "any" and rng.random() < 0.15:  # the bottom or top edge hidden by a plate holder
        pil = Image.fromarray(np.clip(f, 0, 255).astype(np.uint8))
        d = ImageDraw.Draw(pil)
        top = rng.random() < 0.5
        ph = (max(ys) - min(ys)) * rng.uniform(0.05, 0.14)
        y0 = min(ys) - 2 if top else max(ys) - ph
        c = rng.randint(0, 60)
        d.rectangle([min(xs) - 5, y0, max(xs) + 5, y0 + ph + 2], fill=(c, c, c))
        f = np.asarray(pil, np.float32)
    blur = cond in ("blur", "combined") or (cond == "any" and rng.random() < 0.45)
    if blur:
        pil = Image.fromarray(np.clip(f, 0, 255).astype(np.uint8))
        # Blur scales with the plate: a far plate is sharp at the sizes the sim's camera uses.
        k = min(1.0, pw / 180.0)
        if rng.random() < 0.5:
            s = rng.uniform(0.6, 2.3) * k if cond != "combined" else rng.uniform(0.5, 1.5) * k
            pil = pil.filter(ImageFilter.GaussianBlur(s))
        else:
            n = max(2, int(rng.randint(3, 9) * k)) if cond != "combined" else rng.randint(2, 5)
            a = rng.uniform(-0.3, 0.3)
            k = np.zeros((n | 1, n | 1), np.float32)
            c = (n | 1) // 2
            for t in np.linspace(-c, c, 4 * n):
                k[int(round(c + t * math.sin(a))), int(round(c + t * math.cos(a)))] = 1
            k /= k.sum()
            arr = np.asarray(pil, np.float32)
            out = np.zeros_like(arr)
            for dy in range(k.shape[0]):
                for dx in range(k.shape[1]):
                    if k[dy, dx] > 0:
                        out += k[dy, dx] * np.roll(np.roll(arr, dy - c, 0), dx - c, 1)
            pil = Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))
        f = np.asarray(pil, np.float32)
    noise = cond in ("noise", "combined") or (cond == "any" and rng.random() < 0.5)
    if noise:
        sigma = rng.uniform(3, 24) if cond != "combined" else rng.uniform(4, 10)
        f = f + np.random.default_rng(rng.getrandbits(32)).normal(0, sigma, f.shape)
    if cond == "any" and rng.random() < 0.15:  # infrared-like grey
        g = f.mean(axis=2, keepdims=True)
        f = np.repeat(g, 3, axis=2)
    f = np.clip(f, 0, 255).astype(np.uint8)
    jpeg = cond == "combined" or (cond == "any" and rng.random() < 0.6)
    if jpeg:
        buf = io.BytesIO()
        Image.fromarray(f).save(buf, "JPEG", quality=rng.randint(20, 90) if cond == "any" else rng.randint(30, 60))
        f = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    return f


def flatten(frame, quad):
    """The crop the recogniser sees: `quad` flattened to W x H, grey, as the gateway does it."""
    fh, fw = frame.shape[:2]
    coeffs = homography(quad, [(0, 0), (W, 0), (W, H), (0, H)])
    pil = Image.fromarray(frame).transform((W, H), Image.PERSPECTIVE, coeffs, Image.BILINEAR)
    rgb = np.asarray(pil, np.float32)
    return (0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]).astype(np.uint8)


def jitter_quad(quad, rng):
    """A locator's quad: edges a little off, more along the width (the band, the frame)."""
    (tl, tr, br, bl) = quad
    wv = ((tr[0] - tl[0]), (tr[1] - tl[1]))
    hv = ((bl[0] - tl[0]), (bl[1] - tl[1]))
    left = rng.uniform(-0.02, 0.08)
    right = rng.uniform(-0.02, 0.06)
    top = rng.uniform(-0.06, 0.12)
    bottom = rng.uniform(-0.06, 0.12)

    def mv(p, a, b):
        return (p[0] + wv[0] * a + hv[0] * b + rng.gauss(0, 0.6), p[1] + wv[1] * a + hv[1] * b + rng.gauss(0, 0.6))

    return [mv(tl, -left, -top), mv(tr, right, -top), mv(br, right, bottom), mv(bl, -left, bottom)]


def sample(rng, latin, cjk, formats=FORMATS):
    """One training pair: (H x W uint8 crop, plate text), of one of `formats`."""
    fmt = rng.choice(formats)
    text, colour = random_plate(fmt, rng)
    width_px = rng.uniform(60, 120) if rng.random() < 0.5 else rng.uniform(120, 240)
    mm_w = 480.0 if fmt == "cn-green" else (440.0 if fmt.startswith("cn") else 520.0)
    ppm = width_px * 1.6 / mm_w
    plate = draw_plate(fmt, text, colour, latin, cjk, ppm, rng)
    cw, ch = int(width_px * 1.6) + 20, int(width_px * 0.9) + 20
    frame = clutter(cw, ch, rng, latin)
    skew = rng.random() < 0.4
    quad = place(
        plate,
        cw,
        ch,
        width_px,
        rng.uniform(-12, 12) if skew else rng.uniform(-3, 3),
        math.radians(rng.uniform(-35, 35) if skew else rng.uniform(-6, 6)),
        rng.uniform(-0.12, 0.12) if skew else rng.uniform(-0.02, 0.02),
        cw / 2 + rng.uniform(-5, 5),
        ch / 2 + rng.uniform(-5, 5),
    )
    frame = warp_into(frame, plate, quad)
    frame = degrade(frame, quad, rng, "any")
    return flatten(frame, jitter_quad(quad, rng)), text


# ---- whole scenes, for evaluation ---------------------------------------------------------------


def scene(fmt, cond, seed, latin, cjk):
    """A 640x480 frame of a car front with one plate, under one of the simulator's conditions."""
    rng = random.Random(f"{fmt}/{cond}/{seed}")
    text, colour = random_plate(fmt, rng)
    width_px = rng.uniform(95, 130) if cond == "small" else rng.uniform(150, 240)
    mm_w = 480.0 if fmt == "cn-green" else (440.0 if fmt.startswith("cn") else 520.0)
    plate = draw_plate(fmt, text, colour, latin, cjk, width_px * 1.6 / mm_w, rng)
    frame = np.zeros((480, 640, 3), np.float32) + rng.uniform(60, 200)
    car = clutter(rng.randint(440, 600), rng.randint(240, 330), rng, latin)
    y0, x0 = rng.randint(110, 480 - car.shape[0]), (640 - car.shape[1]) // 2
    frame[y0 : y0 + car.shape[0], x0 : x0 + car.shape[1]] = car
    skew = cond == "skew"
    mild = cond == "combined"
    roll = rng.uniform(-12, 12) if skew else rng.uniform(-5, 5) if mild else rng.uniform(-2, 2)
    yaw = rng.uniform(-35, 35) if skew else rng.uniform(-15, 15) if mild else rng.uniform(-5, 5)
    persp = rng.uniform(-0.12, 0.12) if skew else rng.uniform(-0.04, 0.04) if mild else 0.0
    cx = 320 + rng.uniform(-60, 60)
    cy = min(440.0, y0 + car.shape[0] * rng.uniform(0.55, 0.75))
    quad = place(plate, 640, 480, width_px, roll, math.radians(yaw), persp, cx, cy)
    frame = warp_into(frame, plate, quad)
    c = {"clean": "clean", "skew": "clean", "small": "clean"}.get(cond, cond)
    out = degrade(frame, quad, rng, c)
    if c == "clean":
        out = np.clip(out + np.random.default_rng(seed).normal(0, 2.5, out.shape), 0, 255).astype(np.uint8)
    return out, text, quad


def write_scenes(out_dir, per_cell, seed, heldout=True):
    """Scenes as PNG plus `truth.tsv`, the layout `bench-plates --dump` writes: in the held-out
    typefaces for evaluation, or in the training ones for fitting the reader's confidence."""
    latin, cjk = load_faces(heldout=heldout)
    os.makedirs(out_dir, exist_ok=True)
    lines = ["file\tplate\tformat\tcondition"]
    for fmt in FORMATS:
        for cond in CONDITIONS:
            for i in range(per_cell):
                img, text, _ = scene(fmt, cond, seed + i, latin, cjk)
                name = f"{fmt}-{cond}-{seed + i}.png"
                Image.fromarray(img).save(os.path.join(out_dir, name))
                lines.append(f"{name}\t{text}\t{fmt}\t{cond}")
    with open(os.path.join(out_dir, "truth.tsv"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    if cmd == "scenes":
        # render.py scenes DIR [PER_CELL] [SEED] [heldout|training]
        faces = sys.argv[5] if len(sys.argv) > 5 else "heldout"
        if faces not in ("heldout", "training"):
            sys.exit(f"typefaces must be heldout or training, not {faces!r}")
        write_scenes(
            sys.argv[2],
            int(sys.argv[3]) if len(sys.argv) > 3 else 20,
            int(sys.argv[4]) if len(sys.argv) > 4 else 1,
            heldout=faces == "heldout",
        )
    elif cmd == "samples":
        # render.py samples DIR [N]: a contact sheet of training inputs, for looking at.
        latin, cjk = load_faces()
        rng = random.Random(1)
        os.makedirs(sys.argv[2], exist_ok=True)
        n = int(sys.argv[3]) if len(sys.argv) > 3 else 48
        tiles = [sample(rng, latin, cjk) for _ in range(n)]
        sheet = np.concatenate([t for t, _ in tiles], axis=0)
        Image.fromarray(sheet).save(os.path.join(sys.argv[2], "samples.png"))
        print("\n".join(t for _, t in tiles))
    else:
        print("usage: render.py scenes DIR [PER_CELL] [SEED] [heldout|training] | samples DIR [N]")
