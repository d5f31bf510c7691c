//! The pure-Rust reader: find the plate, flatten it, cut it into glyphs, classify them, and let the
//! region's layout and a calibrated confidence decide what may be said.
//!
//! 1. [`locate`](crate::reader::locate) finds plate-coloured blobs (blue, yellow, green, white) of
//!    plate proportions and takes each blob's four extreme points as its corners.
//! 2. Each candidate is warped to a canonical size per layout and turned into an ink map whose
//!    contrast is normalised locally, so a shadow edge across the plate does not split it.
//! 3. Fixed layouts (CN, UK) fit their glyph grid to the ink's column profile; the variable German
//!    layout cuts the profile into runs and finds the seal gap.
//! 4. Each glyph is classified against templates from the reader's own fonts
//!    ([`glyphs`](crate::reader::glyphs)), only among the characters its position admits.
//! 5. The confidence of a plate is that of its least sure glyph, mapped through a curve fitted on
//!    the benchmark so that 0.80 is almost never wrong (see `docs/plates.md`).

use image::{DynamicImage, GrayImage, RgbImage};
use imageproc::geometric_transformations::Projection;
use parkpay_protocol::plate::{CN_PROVINCES, CN_SUFFIXES};
use parkpay_protocol::{Plate, PlateCandidate, PlateColour, Region};

use super::glyphs::{feature, InkMap, Templates};
use super::locate::{extend_left, grow_to_aspect, locate, Blob, Hue};
use super::{PlateReader, Roi};

/// One glyph of a read, for tuning: character, score, and lead over the runner-up (negative when
/// the two feature views disagree).
#[doc(hidden)]
pub type GlyphRead = (char, f32, f32);

/// The layouts the reader knows, with their physical size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    Cn,
    CnGreen,
    De,
    Uk,
}

impl Layout {
    fn size_mm(self) -> (f32, f32) {
        match self {
            Layout::Cn => (440.0, 140.0),
            Layout::CnGreen => (480.0, 140.0),
            Layout::De => (520.0, 110.0),
            Layout::Uk => (520.0, 111.0),
        }
    }

    /// Glyph boxes (x, width) in millimetres for the fixed layouts.
    fn grid(self) -> Vec<(f32, f32)> {
        match self {
            Layout::Cn => [15.5, 72.5, 151.5, 208.5, 265.5, 322.5, 379.5]
                .iter()
                .map(|&x| (x, 45.0))
                .collect(),
            Layout::CnGreen => (0..8)
                .map(|i| {
                    let x = if i < 2 {
                        15.5 + i as f32 * 52.0
                    } else {
                        161.5 + (i - 2) as f32 * 52.0
                    };
                    (x, 43.0)
                })
                .collect(),
            Layout::Uk => (0..7)
                .map(|i| {
                    (
                        41.0 + i as f32 * 61.0 + if i >= 4 { 22.0 } else { 0.0 },
                        50.0,
                    )
                })
                .collect(),
            Layout::De => Vec::new(),
        }
    }

    fn region(self) -> Region {
        match self {
            Layout::Cn | Layout::CnGreen => Region::Cn,
            Layout::De => Region::De,
            Layout::Uk => Region::Uk,
        }
    }
}

/// Canonical resolution of a flattened plate.
const PX_PER_MM: f32 = 0.5;

/// The reader. Building it renders the glyph templates (a few milliseconds); reuse one instance.
pub struct PureReader {
    templates: Templates,
}

impl Default for PureReader {
    fn default() -> Self {
        Self::new()
    }
}

/// One glyph slot: the best few classes and their scores.
#[derive(Debug, Clone)]
struct Slot {
    ranked: Vec<(char, f32)>,
    agree: bool,
}

impl Slot {
    fn best(&self) -> (char, f32) {
        self.ranked.first().copied().unwrap_or(('?', -1.0))
    }
    fn margin(&self) -> f32 {
        match (self.ranked.first(), self.ranked.get(1)) {
            (Some(a), Some(b)) => a.1 - b.1,
            (Some(a), None) => a.1,
            _ => 0.0,
        }
    }
}

/// A complete read of one candidate.
#[derive(Debug, Clone)]
struct Read {
    plate: Plate,
    colour: PlateColour,
    slots: Vec<Slot>,
    /// Mean best score: how plate-like the candidate looked, for choosing between candidates.
    quality: f32,
    /// Whether a second, independently cropped read spelt the same plate.
    corroborated: bool,
    /// Share of the text's ink that is half-tone: near 0.3 for sharp glyphs, higher when blurred.
    softness: f32,
}

impl PureReader {
    pub fn new() -> PureReader {
        PureReader {
            templates: Templates::build(),
        }
    }

    fn read_rgb(&self, rgb: &RgbImage) -> Vec<PlateCandidate> {
        self.best_read(rgb)
            .map(|r| candidates(&r))
            .unwrap_or_default()
    }

    fn best_read(&self, rgb: &RgbImage) -> Option<Read> {
        let blobs = locate(rgb);
        let mut reads: Vec<Read> = Vec::new();
        for blob in blobs.iter().take(8) {
            // A clean, confident read of the most plate-like blob ends the search.
            if reads.iter().any(|r| r.quality > 0.85) {
                break;
            }
            let layouts: &[Layout] = match blob.hue {
                Hue::Blue => &[Layout::Cn],
                Hue::Green => &[Layout::CnGreen],
                Hue::Yellow if blob.aspect() < 3.4 => &[Layout::Cn],
                Hue::Yellow if blob.aspect() > 4.2 => &[Layout::Uk],
                Hue::Yellow => &[Layout::Cn, Layout::Uk],
                Hue::White => &[Layout::De, Layout::Uk],
            };
            for &layout in layouts {
                // Two crops of the same blob (fitted edges, extreme points) are read apart; a plate
                // is only corroborated when both spell it the same.
                let a = self.read_blob(rgb, blob, blob.quad, layout);
                let b = self.read_blob(rgb, blob, blob.extreme_quad, layout);
                let agreed = matches!((&a, &b), (Some(x), Some(y)) if x.plate == y.plate);
                let best = match (a, b) {
                    (Some(x), Some(y)) => Some(if y.quality > x.quality { y } else { x }),
                    (x, y) => x.or(y),
                };
                reads.extend(best.map(|r| Read {
                    corroborated: agreed,
                    ..r
                }));
            }
        }
        reads.sort_by(|a, b| b.quality.total_cmp(&a.quality));
        reads.into_iter().next()
    }

    fn read_blob(
        &self,
        rgb: &RgbImage,
        blob: &Blob,
        quad: [(f32, f32); 4],
        layout: Layout,
    ) -> Option<Read> {
        let (wmm, hmm) = layout.size_mm();
        let (w, h) = (
            (wmm * PX_PER_MM).round() as u32,
            (hmm * PX_PER_MM).round() as u32,
        );
        let quad = match layout {
            Layout::CnGreen => grow_to_aspect(quad, wmm / hmm),
            // The white blob of a German plate usually stops at the EU band: look left of it.
            Layout::De => extend_left(quad, 0.1),
            Layout::Cn | Layout::Uk => quad,
        };
        let (gray, blue_cols) = rectify(rgb, quad, w, h)?;
        let light_text = blob.hue == Hue::Blue;
        let ink = ink_map(&gray, light_text, (h as f32 * 0.45) as usize);
        let (top, bottom) = text_band(&ink)?;
        let band_h = bottom - top;
        if (band_h as f32) < h as f32 * 0.4 {
            return None;
        }
        let boxes: Vec<(usize, usize)> = match layout {
            Layout::De => de_boxes(&ink, top, bottom, &blue_cols)?,
            _ => fit_grid(&ink, top, bottom, &layout.grid()),
        };
        let pad_y = (band_h as f32 * 0.08) as usize;
        let y0 = top.saturating_sub(pad_y);
        let y1 = (bottom + pad_y).min(ink.h);
        let mut slots = Vec::with_capacity(boxes.len());
        let n = boxes.len();
        let de_split = if layout == Layout::De {
            Some(Self::de_split(&boxes)?)
        } else {
            None
        };
        for (i, &(x0, x1)) in boxes.iter().enumerate() {
            let f = feature(&ink, x0, y0, x1, y1)?;
            let allowed = |c: char| allowed(layout, i, n, de_split, c);
            let r = self.templates.scores(&f, allowed);
            slots.push(Slot {
                ranked: r.ranked.into_iter().take(3).collect(),
                agree: r.agree,
            });
        }
        let mut raw: String = slots.iter().map(|s| s.best().0).collect();
        if let Some(d) = de_split {
            raw.insert(d, ' ');
        }
        let plate = Plate::parse_in(&raw, layout.region()).ok()?;
        let quality = slots.iter().map(|s| s.best().1).sum::<f32>() / slots.len().max(1) as f32;
        let softness = softness(&ink, y0, y1);
        let colour = match (blob.hue, layout) {
            (Hue::Blue, _) => PlateColour::Blue,
            (Hue::Yellow, _) => PlateColour::Yellow,
            (Hue::Green, _) => PlateColour::Green,
            (Hue::White, Layout::Uk) => PlateColour::White,
            (Hue::White, _) => PlateColour::Other,
        };
        Some(Read {
            plate,
            colour,
            slots,
            quality,
            corroborated: false,
            softness,
        })
    }

    /// Where the district ends on a German plate: before the widest gap (the seals' place).
    fn de_split(boxes: &[(usize, usize)]) -> Option<usize> {
        if boxes.len() < 3 {
            return None;
        }
        let gaps: Vec<usize> = boxes
            .windows(2)
            .map(|w| w[1].0.saturating_sub(w[0].1))
            .collect();
        let (i, &g) = gaps.iter().enumerate().take(3).max_by_key(|(_, g)| **g)?;
        let typical = {
            let mut s = gaps.clone();
            s.sort_unstable();
            s[0]
        };
        (g > typical * 2 + 2 && boxes.len() - (i + 1) >= 2).then_some(i + 1)
    }
}

impl PureReader {
    /// What the reader saw, step by step, for a person tuning it: candidates, layouts, reads.
    #[doc(hidden)]
    pub fn explain(&self, image: &DynamicImage) -> String {
        let rgb = image.to_rgb8();
        let mut out = String::new();
        for blob in locate(&rgb).iter().take(8) {
            out.push_str(&format!(
                "blob {:?} aspect {:.2} score {:.1} quad {:?}\n",
                blob.hue,
                blob.aspect(),
                blob.score,
                blob.quad.map(|(x, y)| (x as i32, y as i32))
            ));
            for layout in [Layout::Cn, Layout::CnGreen, Layout::De, Layout::Uk] {
                if let Some(r) = self.read_blob(&rgb, blob, blob.quad, layout) {
                    let slots: Vec<String> = r
                        .slots
                        .iter()
                        .map(|s| format!("{}{:.2}/{:.2}", s.best().0, s.best().1, s.margin()))
                        .collect();
                    out.push_str(&format!(
                        "  {layout:?}: {} q {:.2} [{}]\n",
                        r.plate,
                        r.quality,
                        slots.join(" ")
                    ));
                }
            }
        }
        out
    }
}

impl PureReader {
    /// The best read with each glyph's (character, score, margin), for fitting the confidence.
    #[doc(hidden)]
    pub fn read_slots(&self, image: &DynamicImage) -> Option<(String, Vec<GlyphRead>)> {
        let best = self.best_read(&image.to_rgb8())?;
        let slots = best
            .slots
            .iter()
            .map(|s| {
                (
                    s.best().0,
                    s.best().1,
                    if s.agree { s.margin() } else { -s.margin() },
                )
            })
            .collect();
        Some((best.plate.as_str().to_string(), slots))
    }
}

impl PureReader {
    /// The recogniser alone on a plate whose corners are known (TL, TR, BR, BL) and whose colour
    /// is given: the plate text and its confidence, for telling the locator's losses from the
    /// recogniser's.
    #[doc(hidden)]
    pub fn read_at(
        &self,
        image: &DynamicImage,
        quad: [(f32, f32); 4],
        colour: PlateColour,
    ) -> Option<(String, f32)> {
        let rgb = image.to_rgb8();
        let (hue, layouts): (Hue, &[Layout]) = match colour {
            PlateColour::Blue => (Hue::Blue, &[Layout::Cn]),
            PlateColour::Green => (Hue::Green, &[Layout::CnGreen]),
            PlateColour::Yellow => (Hue::Yellow, &[Layout::Cn, Layout::Uk]),
            PlateColour::White | PlateColour::Black | PlateColour::Other => {
                (Hue::White, &[Layout::De, Layout::Uk])
            }
        };
        let blob = Blob {
            hue,
            quad,
            extreme_quad: quad,
            score: 1.0,
        };
        let best = layouts
            .iter()
            .filter_map(|&l| self.read_blob(&rgb, &blob, quad, l))
            .max_by(|a, b| a.quality.total_cmp(&b.quality))?;
        let read = Read {
            corroborated: true,
            ..best
        };
        let top = candidates(&read).into_iter().next()?;
        Some((top.plate, top.confidence))
    }
}

impl PlateReader for PureReader {
    fn read(&self, image: &DynamicImage, roi: Option<Roi>) -> Vec<PlateCandidate> {
        let rgb = match roi {
            Some(r) => {
                let (w, h) = (image.width(), image.height());
                let x = r.x.min(w);
                let y = r.y.min(h);
                let cw = r.width.min(w - x);
                let ch = r.height.min(h - y);
                image.crop_imm(x, y, cw, ch).to_rgb8()
            }
            None => image.to_rgb8(),
        };
        if rgb.width() < 24 || rgb.height() < 12 {
            return Vec::new();
        }
        // Defence in depth: a bug in the geometry must cost one read, never the gateway.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.read_rgb(&rgb)))
            .unwrap_or_default()
    }
}

/// Which characters position `i` of `n` admits in `layout`.
fn allowed(layout: Layout, i: usize, n: usize, de_split: Option<usize>, c: char) -> bool {
    let cn_letter = |c: char| c.is_ascii_uppercase() && c != 'I' && c != 'O';
    let cn_alnum = |c: char| c.is_ascii_digit() || cn_letter(c);
    match layout {
        Layout::Cn => match i {
            0 => CN_PROVINCES.contains(c),
            1 => cn_letter(c),
            6 => cn_alnum(c) || CN_SUFFIXES.contains(c),
            _ => cn_alnum(c),
        },
        Layout::CnGreen => match i {
            0 => CN_PROVINCES.contains(c),
            1 => cn_letter(c),
            2 => c.is_ascii_digit() || c == 'D' || c == 'F',
            3 => cn_alnum(c),
            7 => c.is_ascii_digit() || c == 'D' || c == 'F',
            _ => c.is_ascii_digit(),
        },
        Layout::Uk => {
            if (2..4).contains(&i) {
                c.is_ascii_digit()
            } else {
                c.is_ascii_uppercase()
            }
        }
        Layout::De => {
            let d = de_split.unwrap_or(1);
            if i < d {
                c.is_ascii_uppercase()
            } else if i < d + 2 && i + 1 < n {
                // One or two letters, then digits; the layout parser settles the split.
                c.is_ascii_alphanumeric()
            } else {
                c.is_ascii_digit()
            }
        }
    }
}

/// The best read, then its runner-up readings (the least sure glyph swapped for its second choice).
fn candidates(read: &Read) -> Vec<PlateCandidate> {
    let confs: Vec<f32> = read.slots.iter().map(slot_confidence).collect();
    let corroboration = if read.corroborated { 1.0 } else { 0.6 };
    // Blurred glyphs lose exactly the strokes that tell 8 from B and P from D, and then both
    // feature views can agree on the wrong one: a soft plate is never trusted on its own.
    let sharpness = ((0.7 - read.softness) / 0.1).clamp(0.0, 1.0);
    let top = confs.iter().product::<f32>() * corroboration * sharpness;
    let mut out = vec![PlateCandidate {
        plate: read.plate.as_str().to_string(),
        confidence: top,
        colour: read.colour,
    }];
    let mut order: Vec<usize> = (0..confs.len()).collect();
    order.sort_by(|&a, &b| confs[a].total_cmp(&confs[b]));
    for &i in order.iter().take(2) {
        let Some(&(alt, _)) = read.slots[i].ranked.get(1) else {
            continue;
        };
        let mut chars: Vec<char> = read.plate.as_str().chars().filter(|c| *c != ' ').collect();
        if i >= chars.len() {
            continue;
        }
        chars[i] = alt;
        let raw: String = chars.into_iter().collect();
        let raw = if read.plate.region() == Region::De {
            // Re-insert the separators of the best read.
            let mut s = String::new();
            let mut it = raw.chars();
            for c in read.plate.as_str().chars() {
                if c == ' ' {
                    s.push(' ');
                } else if let Some(r) = it.next() {
                    s.push(r);
                }
            }
            s
        } else {
            raw
        };
        if let Ok(p) = Plate::parse_in(&raw, read.plate.region()) {
            if out.iter().all(|c| c.plate != p.as_str()) {
                out.push(PlateCandidate {
                    plate: p.as_str().to_string(),
                    confidence: ((1.0 - confs[i]) * 0.5).min(top),
                    colour: read.colour,
                });
            }
        }
    }
    out
}

/// Confidence of one glyph from its lead over the runner-up and its score.
///
/// The curve was fitted on scenes (seeds 1000.., both rendering fonts; `examples/calib.rs`) to
/// maximise confident right reads with at most a few in a thousand confident wrong ones. Both
/// feature views must agree; province characters, with 34 classes and the widest gap between
/// typefaces, must lead by more.
fn slot_confidence(s: &Slot) -> f32 {
    if !s.agree {
        return 0.0;
    }
    let (c, score) = s.best();
    let need = if c.is_ascii() { 0.02 } else { 0.07 };
    let sig = |z: f32| 1.0 / (1.0 + (-z).exp());
    sig(150.0 * (s.margin() - need)) * sig(40.0 * (score - 0.4))
}

/// Flattens the quad to `w x h` grey pixels, with the share of blue pixels in each column (the EU
/// band); `None` for a degenerate quad.
fn rectify(rgb: &RgbImage, quad: [(f32, f32); 4], w: u32, h: u32) -> Option<(GrayImage, Vec<f32>)> {
    let (wf, hf) = (w as f32, h as f32);
    let proj = Projection::from_control_points([(0.0, 0.0), (wf, 0.0), (wf, hf), (0.0, hf)], quad)?;
    let (iw, ih) = (rgb.width() as i64, rgb.height() as i64);
    let mut out = GrayImage::new(w, h);
    let mut blue = vec![0.0f32; w as usize];
    for y in 0..h {
        for x in 0..w {
            let (u, v) = proj * (x as f32 + 0.5, y as f32 + 0.5);
            if !u.is_finite() || !v.is_finite() {
                return None;
            }
            let near = rgb
                .get_pixel(
                    u.clamp(0.0, (iw - 1) as f32) as u32,
                    v.clamp(0.0, (ih - 1) as f32) as u32,
                )
                .0;
            let (r, g, b) = (near[0] as f32, near[1] as f32, near[2] as f32);
            if b > 40.0 && b - r.max(g) > 0.25 * b {
                blue[x as usize] += 1.0 / h as f32;
            }
            let (u, v) = (u - 0.5, v - 0.5);
            let (xi, yi) = (u.floor() as i64, v.floor() as i64);
            let (fx, fy) = (u - xi as f32, v - yi as f32);
            let at = |xx: i64, yy: i64| {
                let p = rgb
                    .get_pixel(xx.clamp(0, iw - 1) as u32, yy.clamp(0, ih - 1) as u32)
                    .0;
                0.299 * p[0] as f32 + 0.587 * p[1] as f32 + 0.114 * p[2] as f32
            };
            let top = at(xi, yi) * (1.0 - fx) + at(xi + 1, yi) * fx;
            let bot = at(xi, yi + 1) * (1.0 - fx) + at(xi + 1, yi + 1) * fx;
            out.put_pixel(
                x,
                y,
                image::Luma([(top * (1.0 - fy) + bot * fy).round() as u8]),
            );
        }
    }
    Some((out, blue))
}

/// Share of half-tone pixels among the inked ones in the text rows.
fn softness(ink: &InkMap, y0: usize, y1: usize) -> f32 {
    let rows = &ink.px[y0 * ink.w..y1.min(ink.h) * ink.w];
    let inked = rows.iter().filter(|&&v| v > 0.25).count();
    let half = rows.iter().filter(|&&v| v > 0.25 && v < 0.75).count();
    half as f32 / inked.max(1) as f32
}

/// Separable running max or min over a window of radius `r`.
fn running(px: &[f32], w: usize, h: usize, r: usize, max: bool) -> Vec<f32> {
    let pick = |a: f32, b: f32| if max { a.max(b) } else { a.min(b) };
    let init = if max { f32::MIN } else { f32::MAX };
    let mut tmp = vec![0.0; w * h];
    for y in 0..h {
        for x in 0..w {
            let (a, b) = (x.saturating_sub(r), (x + r).min(w - 1));
            tmp[y * w + x] = (a..=b).fold(init, |m, xx| pick(m, px[y * w + xx]));
        }
    }
    let mut out = vec![0.0; w * h];
    for y in 0..h {
        let (a, b) = (y.saturating_sub(r), (y + r).min(h - 1));
        for x in 0..w {
            out[y * w + x] = (a..=b).fold(init, |m, yy| pick(m, tmp[yy * w + x]));
        }
    }
    out
}

/// [`running`] on a grid of 4x4 blocks, bilinearly interpolated back: the paper level varies
/// slowly, and this is some twenty times cheaper than the exact window.
fn block_running(px: &[f32], w: usize, h: usize, r: usize, max: bool) -> Vec<f32> {
    const B: usize = 4;
    let (bw, bh) = (w.div_ceil(B), h.div_ceil(B));
    let pick = |a: f32, b: f32| if max { a.max(b) } else { a.min(b) };
    let init = if max { f32::MIN } else { f32::MAX };
    let mut blocks = vec![init; bw * bh];
    for y in 0..h {
        for x in 0..w {
            let i = (y / B) * bw + x / B;
            blocks[i] = pick(blocks[i], px[y * w + x]);
        }
    }
    let coarse = running(&blocks, bw, bh, (r / B).max(1), max);
    let mut out = vec![0.0; w * h];
    for y in 0..h {
        let fy = ((y as f32 + 0.5) / B as f32 - 0.5).clamp(0.0, (bh - 1) as f32);
        let (y0, ty) = (fy.floor() as usize, fy.fract());
        let y1 = (y0 + 1).min(bh - 1);
        for x in 0..w {
            let fx = ((x as f32 + 0.5) / B as f32 - 0.5).clamp(0.0, (bw - 1) as f32);
            let (x0, tx) = (fx.floor() as usize, fx.fract());
            let x1 = (x0 + 1).min(bw - 1);
            let top = coarse[y0 * bw + x0] * (1.0 - tx) + coarse[y0 * bw + x1] * tx;
            let bot = coarse[y1 * bw + x0] * (1.0 - tx) + coarse[y1 * bw + x1] * tx;
            out[y * w + x] = top * (1.0 - ty) + bot * ty;
        }
    }
    out
}

/// Ink in 0..=1 with contrast normalised in a window of radius `r`: local paper to local ink.
fn ink_map(gray: &GrayImage, light_text: bool, r: usize) -> InkMap {
    let (w, h) = (gray.width() as usize, gray.height() as usize);
    let px: Vec<f32> = gray
        .pixels()
        .map(|p| {
            let v = p.0[0] as f32;
            if light_text {
                255.0 - v
            } else {
                v
            }
        })
        .collect();
    let paper = block_running(&px, w, h, r, true);
    let dark = block_running(&px, w, h, r, false);
    let global = {
        let mut s = px.clone();
        s.sort_by(f32::total_cmp);
        s[s.len() * 95 / 100] - s[s.len() * 5 / 100]
    };
    let floor = (global * 0.4).max(20.0);
    let ink = px
        .iter()
        .zip(paper.iter().zip(&dark))
        .map(|(&v, (&p, &d))| ((p - v) / (p - d).max(floor)).clamp(0.0, 1.0))
        .collect();
    InkMap { w, h, px: ink }
}

/// Rows of the text: the longest run of rows with ink across the plate's middle.
fn text_band(ink: &InkMap) -> Option<(usize, usize)> {
    let (x0, x1) = (ink.w / 8, ink.w * 7 / 8);
    let rows: Vec<f32> = (0..ink.h)
        .map(|y| (x0..x1).filter(|&x| ink.at(x, y) > 0.5).count() as f32 / (x1 - x0) as f32)
        .collect();
    let mut best = None;
    let mut start = None;
    for (y, &r) in rows.iter().chain(std::iter::once(&0.0)).enumerate() {
        let on = r > 0.08 && r < 0.85;
        match (on, start) {
            (true, None) => start = Some(y),
            (false, Some(s)) => {
                if best.is_none_or(|(a, b): (usize, usize)| y - s > b - a) {
                    best = Some((s, y));
                }
                start = None;
            }
            _ => {}
        }
    }
    best
}

fn column_profile(ink: &InkMap, top: usize, bottom: usize) -> Vec<f32> {
    (0..ink.w)
        .map(|x| {
            (top..bottom).filter(|&y| ink.at(x, y) > 0.5).count() as f32
                / (bottom - top).max(1) as f32
        })
        .collect()
}

/// Fits the layout's glyph grid to the column profile, allowing for a loose crop (shift, scale).
fn fit_grid(ink: &InkMap, top: usize, bottom: usize, grid: &[(f32, f32)]) -> Vec<(usize, usize)> {
    let prof = column_profile(ink, top, bottom);
    let w = ink.w as f32;
    let mut prefix = vec![0.0f32; prof.len() + 1];
    for (i, p) in prof.iter().enumerate() {
        prefix[i + 1] = prefix[i] + p;
    }
    let sum = |a: f32, b: f32| {
        let a = a.round().clamp(0.0, w) as usize;
        let b = b.round().clamp(0.0, w) as usize;
        if b > a {
            prefix[b] - prefix[a]
        } else {
            0.0
        }
    };
    let place = |s: f32, dx: f32| -> Vec<(f32, f32)> {
        grid.iter()
            .map(|&(x, gw)| {
                let a = w / 2.0 + (x * PX_PER_MM - w / 2.0) * s + dx;
                (a, a + gw * PX_PER_MM * s)
            })
            .collect()
    };
    let mut best = (f32::MIN, 1.0, 0.0);
    let max_dx = (w * 0.07) as i32;
    for si in 0..=24 {
        let s = 0.88 + si as f32 * 0.01;
        for dx in -max_dx..=max_dx {
            let boxes = place(s, dx as f32);
            let inside: f32 = boxes.iter().map(|&(a, b)| sum(a, b)).sum();
            let gaps: f32 = boxes.windows(2).map(|p| sum(p[0].1, p[1].0)).sum();
            let score = inside - 2.0 * gaps;
            if score > best.0 {
                best = (score, s, dx as f32);
            }
        }
    }
    place(best.1, best.2)
        .into_iter()
        .map(|(a, b)| {
            let pad = (b - a) * 0.1;
            ((a - pad).max(0.0) as usize, ((b + pad).min(w)) as usize)
        })
        .collect()
}

/// Glyph boxes on a German plate: runs of inked columns right of the EU band, with runs that are
/// too short to be glyphs (seals, the frame) dropped and merged glyphs split.
fn de_boxes(
    ink: &InkMap,
    top: usize,
    bottom: usize,
    blue_cols: &[f32],
) -> Option<Vec<(usize, usize)>> {
    let band_h = (bottom - top) as f32;
    let prof = column_profile(ink, top, bottom);
    // The EU band reads as solid ink: start right of it, wherever the crop put it.
    let band_end = (ink.w as f32 * 0.3) as usize;
    // No band, no German plate: the white top of a new-energy plate must not pass for one.
    let x_start = (0..band_end.min(blue_cols.len()))
        .rev()
        .find(|&x| blue_cols[x] > 0.4)?
        + 2;
    // Blur can bleed the band into the first glyph; then where that glyph starts is unknown.
    if prof.get(x_start).is_some_and(|&p| p > 0.06) {
        return None;
    }
    let x_end = (ink.w as f32 * 0.985) as usize;
    let mut runs = Vec::new();
    let mut start = None;
    for x in x_start..=x_end {
        let on = x < x_end && prof.get(x).is_some_and(|&p| p > 0.06);
        match (on, start) {
            (true, None) => start = Some(x),
            (false, Some(s)) => {
                runs.push((s, x));
                start = None;
            }
            _ => {}
        }
    }
    let mut boxes = Vec::new();
    let glyph_w = band_h * 0.6;
    for (a, b) in runs {
        let width = (b - a) as f32;
        if width < band_h * 0.08 {
            continue;
        }
        // Seals and stray marks do not span the text's height.
        let rows = (top..bottom).filter(|&y| (a..b).any(|x| ink.at(x, y) > 0.5));
        let (mut lo, mut hi) = (usize::MAX, 0);
        for y in rows {
            lo = lo.min(y);
            hi = hi.max(y);
        }
        if hi < lo || ((hi - lo) as f32) < band_h * 0.8 {
            continue;
        }
        let pieces = (width / glyph_w).round().max(1.0) as usize;
        let step = width / pieces as f32;
        for k in 0..pieces {
            let x0 = a as f32 + k as f32 * step;
            boxes.push((x0 as usize, (x0 + step).round() as usize));
        }
    }
    if !(3..=8).contains(&boxes.len()) {
        return None;
    }
    // German serials are centred: a right margin much narrower than the left one means the crop
    // (a shadow, the frame's edge) cut glyphs off, and a short plate must not be read as a whole.
    let left = boxes.first().map_or(0, |b| b.0.saturating_sub(x_start)) as f32;
    let right = boxes.last().map_or(0, |b| x_end.saturating_sub(b.1)) as f32;
    if right < left * 0.4 || right < band_h * 0.12 {
        return None;
    }
    Some(boxes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reader::ACCEPT_THRESHOLD;
    use parkpay_scenes::{Condition, FontChoice, PlateFormat, Scene};

    /// One reader for all tests: building the templates is the slow part in a debug build.
    fn shared() -> &'static PureReader {
        static READER: std::sync::OnceLock<PureReader> = std::sync::OnceLock::new();
        READER.get_or_init(PureReader::new)
    }

    fn read(
        format: PlateFormat,
        condition: Condition,
        seed: u64,
        font: FontChoice,
    ) -> (String, Vec<PlateCandidate>) {
        let reader = shared();
        let scene = Scene::generate(format, condition, seed, font);
        let cands = reader.read(&DynamicImage::ImageRgb8(scene.image), None);
        (scene.plate, cands)
    }

    fn assert_confident_read(
        format: PlateFormat,
        condition: Condition,
        seed: u64,
        font: FontChoice,
    ) {
        let (truth, cands) = read(format, condition, seed, font);
        let top = cands
            .first()
            .unwrap_or_else(|| panic!("no read of {truth}"));
        assert_eq!(top.plate, truth, "{format:?} {condition:?} seed {seed}");
        assert!(
            top.confidence >= ACCEPT_THRESHOLD,
            "{truth} read at {}",
            top.confidence
        );
    }

    #[test]
    fn reads_each_format_on_fixed_seeds() {
        assert_confident_read(
            PlateFormat::CnBlue,
            Condition::Clean,
            1,
            FontChoice::Primary,
        );
        assert_confident_read(
            PlateFormat::CnYellow,
            Condition::Noise,
            1,
            FontChoice::Primary,
        );
        assert_confident_read(
            PlateFormat::CnGreen,
            Condition::Clean,
            1,
            FontChoice::Primary,
        );
        assert_confident_read(PlateFormat::De, Condition::Clean, 1, FontChoice::Primary);
        assert_confident_read(PlateFormat::Uk, Condition::Noise, 2, FontChoice::Primary);
    }

    #[test]
    fn reads_a_typeface_it_has_never_seen() {
        // The alternate rendering font shares no outlines with the reader's template fonts.
        assert_confident_read(PlateFormat::De, Condition::Clean, 1, FontChoice::Alternate);
    }

    #[test]
    fn colour_is_reported() {
        let (_, cands) = read(
            PlateFormat::CnYellow,
            Condition::Noise,
            1,
            FontChoice::Primary,
        );
        assert_eq!(cands.first().map(|c| c.colour), Some(PlateColour::Yellow));
    }

    #[test]
    fn blank_and_garbage_images_give_no_plate() {
        crate::reader::assert_no_plate_in_empty_frames(shared());
    }

    #[test]
    fn roi_restricts_the_search_and_survives_bad_rectangles() {
        let reader = shared();
        let scene = Scene::generate(
            PlateFormat::CnBlue,
            Condition::Clean,
            2,
            FontChoice::Primary,
        );
        let img = DynamicImage::ImageRgb8(scene.image.clone());
        let xs = scene.plate_quad.map(|p| p.0);
        let ys = scene.plate_quad.map(|p| p.1);
        let x0 = xs.iter().copied().fold(f32::MAX, f32::min) as u32;
        let y0 = ys.iter().copied().fold(f32::MAX, f32::min) as u32;
        let roi = Roi {
            x: x0.saturating_sub(40),
            y: y0.saturating_sub(30),
            width: 320,
            height: 140,
        };
        let cands = reader.read(&img, Some(roi));
        assert_eq!(
            cands.first().map(|c| c.plate.as_str()),
            Some(scene.plate.as_str())
        );
        let away = Roi {
            x: 0,
            y: 0,
            width: 120,
            height: 80,
        };
        assert!(reader
            .read(&img, Some(away))
            .iter()
            .all(|c| c.plate != scene.plate));
        let outside = Roi {
            x: 5000,
            y: 5000,
            width: 100,
            height: 100,
        };
        assert!(reader.read(&img, Some(outside)).is_empty());
    }
}
