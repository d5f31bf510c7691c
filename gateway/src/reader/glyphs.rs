//! Character models: templates built at startup from the reader's own committed fonts, never from
//! the simulator's, so a benchmark measures how the reader copes with a typeface it has not seen.
//!
//! A glyph (template or query) becomes a feature the same way: its tight ink box is stretched to a
//! fixed 16x32 canvas (narrow glyphs such as `1` keep their narrowness), softened, and normalised
//! to zero mean and unit length, so a dot product is a normalised cross-correlation. Stretching to
//! the box removes most of what differs between typefaces (width, proportions); what remains is the
//! topology of the strokes, which is what tells an `8` from a `B`. Each template is drawn in three
//! stroke weights, since plate typefaces range from regular to heavy.

use ab_glyph::{Font, FontRef, PxScale};

static LATIN_FONTS: [&[u8]; 2] = [
    include_bytes!("../../fonts/DejaVuSans-Bold-plates.ttf"),
    include_bytes!("../../fonts/DejaVuSansCondensed-Bold-plates.ttf"),
];
static CJK_FONT: &[u8] = include_bytes!("../../fonts/WenQuanYiMicroHei-plates.ttf");

pub(crate) const FW: usize = 16;
pub(crate) const FH: usize = 32;

/// Ink coverage in 0..=1, row-major.
#[derive(Debug, Clone)]
pub(crate) struct InkMap {
    pub w: usize,
    pub h: usize,
    pub px: Vec<f32>,
}

impl InkMap {
    pub fn at(&self, x: usize, y: usize) -> f32 {
        self.px[y * self.w + x]
    }
}

/// Two views of one glyph: its softened pixels and a coarse histogram of stroke directions.
/// They fail differently (pixels on stroke weight, directions on blur), so the reader trusts a
/// glyph only where both views name the same character.
#[derive(Debug, Clone)]
pub(crate) struct Feature {
    pix: Vec<f32>,
    grad: Vec<f32>,
}

/// A glyph's classes, best first, by the pixel view's correlation (the more accurate view alone;
/// the direction view only vetoes).
#[derive(Debug, Clone)]
pub(crate) struct Ranking {
    pub ranked: Vec<(char, f32)>,
    /// Whether the pixel view and the direction view each put the same class first.
    pub agree: bool,
}

pub(crate) struct Templates {
    classes: Vec<char>,
    /// (class index, feature).
    feats: Vec<(usize, Feature)>,
}

impl Templates {
    pub fn build() -> Templates {
        let mut classes: Vec<char> = ('A'..='Z').chain('0'..='9').collect();
        let cjk: Vec<char> = parkpay_protocol::plate::CN_PROVINCES
            .chars()
            .chain(parkpay_protocol::plate::CN_SUFFIXES.chars())
            .collect();
        for c in cjk {
            if !classes.contains(&c) {
                classes.push(c);
            }
        }
        let mut feats = Vec::new();
        let latin: Vec<FontRef<'static>> = LATIN_FONTS
            .iter()
            .filter_map(|b| FontRef::try_from_slice(b).ok())
            .collect();
        let cjk_font = FontRef::try_from_slice(CJK_FONT).ok();
        for (ci, &c) in classes.iter().enumerate() {
            let fonts: Vec<&FontRef<'static>> = if c.is_ascii() {
                latin.iter().collect()
            } else {
                cjk_font.iter().collect()
            };
            for font in fonts {
                let Some(ink) = raster(font, c) else { continue };
                for t in [0.3, 0.5, 0.7] {
                    let weighted = reweight(&ink, t);
                    if let Some(f) = feature(&weighted, 0, 0, weighted.w, weighted.h) {
                        feats.push((ci, f));
                    }
                }
            }
        }
        Templates { classes, feats }
    }

    /// Best score per class (cross-correlation in -1..=1), for the classes `allowed` admits.
    pub fn scores(&self, feat: &Feature, allowed: impl Fn(char) -> bool) -> Ranking {
        let n = self.classes.len();
        let mut best = vec![f32::NEG_INFINITY; n];
        let mut best_pix = vec![f32::NEG_INFINITY; n];
        let mut best_grad = vec![f32::NEG_INFINITY; n];
        let dot = |a: &[f32], b: &[f32]| {
            // Eight independent sums let the compiler use vector lanes; a single running sum
            // must be added in order and stays scalar.
            let mut acc = [0.0f32; 8];
            for (x, y) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
                for k in 0..8 {
                    acc[k] += x[k] * y[k];
                }
            }
            acc.iter().sum::<f32>()
        };
        for (ci, t) in &self.feats {
            if !allowed(self.classes[*ci]) {
                continue;
            }
            let p = dot(&t.pix, &feat.pix);
            let g = dot(&t.grad, &feat.grad);
            best[*ci] = best[*ci].max(p);
            best_pix[*ci] = best_pix[*ci].max(p);
            best_grad[*ci] = best_grad[*ci].max(g);
        }
        let argmax = |v: &[f32]| {
            v.iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(i, _)| i)
        };
        let agree = argmax(&best_pix) == argmax(&best_grad);
        let mut ranked: Vec<(char, f32)> = self
            .classes
            .iter()
            .zip(best)
            .filter(|(_, s)| s.is_finite())
            .map(|(&c, s)| (c, s))
            .collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
        Ranking { ranked, agree }
    }
}

/// Draws one glyph 96 px tall into an ink map with a margin.
fn raster(font: &FontRef<'_>, c: char) -> Option<InkMap> {
    let g = font.outline_glyph(font.glyph_id(c).with_scale(PxScale::from(110.0)))?;
    let b = g.px_bounds();
    let pad = 6usize;
    let w = b.width().ceil() as usize + 2 * pad;
    let h = b.height().ceil() as usize + 2 * pad;
    let mut px = vec![0.0f32; w * h];
    g.draw(|x, y, cov| {
        let (x, y) = (x as usize + pad, y as usize + pad);
        if x < w && y < h {
            px[y * w + x] = cov.clamp(0.0, 1.0);
        }
    });
    Some(InkMap { w, h, px })
}

/// Thickens (low `t`) or thins (high `t`) strokes: soften, then re-threshold.
fn reweight(ink: &InkMap, t: f32) -> InkMap {
    let soft = box_blur(ink, 4);
    let px = soft
        .px
        .iter()
        .map(|&v| ((v - t) / 0.2 + 0.5).clamp(0.0, 1.0))
        .collect();
    InkMap {
        w: ink.w,
        h: ink.h,
        px,
    }
}

fn box_blur(ink: &InkMap, r: usize) -> InkMap {
    let (w, h) = (ink.w, ink.h);
    let mut tmp = vec![0.0f32; w * h];
    for y in 0..h {
        for x in 0..w {
            let (a, b) = (x.saturating_sub(r), (x + r).min(w - 1));
            let s: f32 = (a..=b).map(|xx| ink.px[y * w + xx]).sum();
            tmp[y * w + x] = s / (b - a + 1) as f32;
        }
    }
    let mut px = vec![0.0f32; w * h];
    for y in 0..h {
        let (a, b) = (y.saturating_sub(r), (y + r).min(h - 1));
        for x in 0..w {
            let s: f32 = (a..=b).map(|yy| tmp[yy * w + x]).sum();
            px[y * w + x] = s / (b - a + 1) as f32;
        }
    }
    InkMap { w, h, px }
}

/// The feature of the glyph inside `[x0, x1) x [y0, y1)` of `ink`; `None` when there is no ink.
pub(crate) fn feature(ink: &InkMap, x0: usize, y0: usize, x1: usize, y1: usize) -> Option<Feature> {
    let (x1, y1) = (x1.min(ink.w), y1.min(ink.h));
    if x1 <= x0 + 1 || y1 <= y0 + 1 {
        return None;
    }
    // Tight box: rows and columns holding a meaningful amount of ink.
    let col_min = ((y1 - y0) as f32 * 0.06).max(0.9);
    let row_min = ((x1 - x0) as f32 * 0.06).max(0.9);
    let col = |x: usize| {
        (y0..y1)
            .map(|y| (ink.at(x, y) > 0.5) as u8 as f32)
            .sum::<f32>()
    };
    let row = |y: usize| {
        (x0..x1)
            .map(|x| (ink.at(x, y) > 0.5) as u8 as f32)
            .sum::<f32>()
    };
    let bx0 = (x0..x1).find(|&x| col(x) >= col_min)?;
    let bx1 = (x0..x1).rev().find(|&x| col(x) >= col_min)? + 1;
    let by0 = (y0..y1).find(|&y| row(y) >= row_min)?;
    let by1 = (y0..y1).rev().find(|&y| row(y) >= row_min)? + 1;
    let (bw, bh) = ((bx1 - bx0) as f32, (by1 - by0) as f32);
    if bw < 1.0 || bh < 3.0 {
        return None;
    }
    let aspect = bw / bh;
    let tw = if aspect < 0.3 {
        (FW as f32 * aspect / 0.3).max(2.0)
    } else {
        FW as f32
    };
    let left = (FW as f32 - tw) / 2.0;
    let mut f = vec![0.0f32; FW * FH];
    // Area sampling: 3x3 points per feature cell keep thin strokes from vanishing when shrinking.
    for fy in 0..FH {
        for fx in 0..FW {
            let cx = fx as f32 + 0.5;
            if cx < left || cx > left + tw {
                continue;
            }
            let mut acc = 0.0;
            for sy in 0..3 {
                for sx in 0..3 {
                    let u = (fx as f32 + (sx as f32 + 0.5) / 3.0 - left) / tw;
                    let v = (fy as f32 + (sy as f32 + 0.5) / 3.0) / FH as f32;
                    let x = bx0 as f32 + u * bw - 0.5;
                    let y = by0 as f32 + v * bh - 0.5;
                    acc += sample(ink, x, y);
                }
            }
            f[fy * FW + fx] = acc / 9.0;
        }
    }
    let grad = directions(&f);
    Some(Feature {
        pix: standardise(soften(&f))?,
        grad: standardise(grad)?,
    })
}

/// Zero mean, unit length: a dot product of two such vectors is their correlation.
fn standardise(mut f: Vec<f32>) -> Option<Vec<f32>> {
    let mean = f.iter().sum::<f32>() / f.len() as f32;
    f.iter_mut().for_each(|v| *v -= mean);
    let norm = f.iter().map(|v| v * v).sum::<f32>().sqrt();
    if norm < 1e-3 {
        return None;
    }
    f.iter_mut().for_each(|v| *v /= norm);
    Some(f)
}

/// Stroke directions: gradient magnitude binned into four unsigned orientations per 4x4 cell.
fn directions(f: &[f32]) -> Vec<f32> {
    const C: usize = 4;
    let (cw, ch) = (FW / C, FH / C);
    let mut out = vec![0.0f32; cw * ch * 4];
    let at = |x: usize, y: usize| f[y * FW + x];
    for y in 1..FH - 1 {
        for x in 1..FW - 1 {
            let gx = at(x + 1, y) - at(x - 1, y);
            let gy = at(x, y + 1) - at(x, y - 1);
            let mag = (gx * gx + gy * gy).sqrt();
            if mag < 1e-3 {
                continue;
            }
            let angle = gy.atan2(gx).rem_euclid(std::f32::consts::PI);
            let pos = angle / (std::f32::consts::PI / 4.0);
            let b0 = pos.floor() as usize % 4;
            let b1 = (b0 + 1) % 4;
            let t = pos.fract();
            let cell = ((y / C) * cw + x / C) * 4;
            out[cell + b0] += mag * (1.0 - t);
            out[cell + b1] += mag * t;
        }
    }
    out
}

fn sample(ink: &InkMap, x: f32, y: f32) -> f32 {
    let x = x.clamp(0.0, (ink.w - 1) as f32);
    let y = y.clamp(0.0, (ink.h - 1) as f32);
    let (xi, yi) = (x.floor() as usize, y.floor() as usize);
    let (xj, yj) = ((xi + 1).min(ink.w - 1), (yi + 1).min(ink.h - 1));
    let (fx, fy) = (x - xi as f32, y - yi as f32);
    let top = ink.at(xi, yi) * (1.0 - fx) + ink.at(xj, yi) * fx;
    let bottom = ink.at(xi, yj) * (1.0 - fx) + ink.at(xj, yj) * fx;
    top * (1.0 - fy) + bottom * fy
}

/// A 3x3 binomial blur of a feature canvas: tolerance to a stroke landing one cell off.
fn soften(f: &[f32]) -> Vec<f32> {
    let k = [1.0, 2.0, 1.0];
    let mut out = vec![0.0f32; f.len()];
    for y in 0..FH {
        for x in 0..FW {
            let mut acc = 0.0;
            let mut wsum = 0.0;
            for (dy, ky) in k.iter().enumerate() {
                for (dx, kx) in k.iter().enumerate() {
                    let (xx, yy) = (x as i32 + dx as i32 - 1, y as i32 + dy as i32 - 1);
                    if xx < 0 || yy < 0 || xx >= FW as i32 || yy >= FH as i32 {
                        continue;
                    }
                    acc += f[yy as usize * FW + xx as usize] * kx * ky;
                    wsum += kx * ky;
                }
            }
            out[y * FW + x] = acc / wsum;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_class_has_templates_and_matches_itself_best() {
        let t = Templates::build();
        for (ci, &c) in t.classes.iter().enumerate() {
            let own = t.feats.iter().find(|(k, _)| *k == ci);
            let (_, f) = own.unwrap_or_else(|| panic!("no template for {c}"));
            assert_eq!(t.scores(f, |_| true).ranked[0].0, c);
        }
    }
}
