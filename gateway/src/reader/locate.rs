//! Finding plates: blobs of a plate's background colour, of plate proportions.
//!
//! Every pixel is classed by hue and saturation (robust to exposure) into the four plate
//! backgrounds; white is judged against its neighbourhood, since "white" in a dim frame is grey.
//! Each class's connected components are kept when their size, aspect and fill look like a plate,
//! and a blob's corners are its extreme points along the two diagonals, which stay the true
//! corners under the roll and perspective a barrier camera sees.

use image::{GrayImage, Luma, RgbImage};
use imageproc::region_labelling::{connected_components, Connectivity};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hue {
    Blue,
    Yellow,
    Green,
    White,
}

#[derive(Debug, Clone)]
pub(crate) struct Blob {
    pub hue: Hue,
    /// Top-left, top-right, bottom-right, bottom-left.
    pub quad: [(f32, f32); 4],
    pub score: f32,
}

impl Blob {
    pub fn aspect(&self) -> f32 {
        let d = |a: (f32, f32), b: (f32, f32)| ((a.0 - b.0).powi(2) + (a.1 - b.1).powi(2)).sqrt();
        let [tl, tr, br, bl] = self.quad;
        let w = (d(tl, tr) + d(bl, br)) / 2.0;
        let h = (d(tl, bl) + d(tr, br)) / 2.0;
        w / h.max(1.0)
    }
}

const HUES: [Hue; 4] = [Hue::Blue, Hue::Yellow, Hue::Green, Hue::White];

fn hsv(p: [u8; 3]) -> (f32, f32, f32) {
    let [r, g, b] = p.map(|v| v as f32);
    let max = r.max(g).max(b);
    let min = r.min(g).min(b);
    let d = max - min;
    let s = if max > 0.0 { d / max } else { 0.0 };
    let h = if d < 1e-3 {
        0.0
    } else if max == r {
        60.0 * ((g - b) / d).rem_euclid(6.0)
    } else if max == g {
        60.0 * ((b - r) / d + 2.0)
    } else {
        60.0 * ((r - g) / d + 4.0)
    };
    (h, s, max)
}

/// Candidate plates, most plate-like first.
pub(crate) fn locate(rgb: &RgbImage) -> Vec<Blob> {
    let (w, h) = rgb.dimensions();
    let hsvs: Vec<(f32, f32, f32)> = rgb.pixels().map(|p| hsv(p.0)).collect();
    let local = local_mean(&hsvs.iter().map(|p| p.2).collect::<Vec<_>>(), w as usize, h as usize, 30);
    let mut blobs = Vec::new();
    for hue in HUES {
        let mut mask = GrayImage::new(w, h);
        for (i, &(hh, s, v)) in hsvs.iter().enumerate() {
            let on = match hue {
                Hue::Blue => (195.0..255.0).contains(&hh) && s > 0.45 && v > 45.0,
                Hue::Yellow => (30.0..70.0).contains(&hh) && s > 0.45 && v > 60.0,
                Hue::Green => (85.0..160.0).contains(&hh) && s > 0.2 && v > 80.0,
                Hue::White => s < 0.28 && v > 60.0 && v > local[i] * 1.12,
            };
            if on {
                mask.put_pixel(i as u32 % w, i as u32 / w, Luma([255]));
            }
        }
        blobs.extend(components(&mask, hue));
    }
    blobs.sort_by(|a, b| b.score.total_cmp(&a.score));
    blobs
}

fn local_mean(v: &[f32], w: usize, h: usize, r: usize) -> Vec<f32> {
    let mut integral = vec![0.0f64; (w + 1) * (h + 1)];
    for y in 0..h {
        let mut row = 0.0f64;
        for x in 0..w {
            row += v[y * w + x] as f64;
            integral[(y + 1) * (w + 1) + x + 1] = integral[y * (w + 1) + x + 1] + row;
        }
    }
    let mut out = vec![0.0f32; w * h];
    for y in 0..h {
        let (y0, y1) = (y.saturating_sub(r), (y + r + 1).min(h));
        for x in 0..w {
            let (x0, x1) = (x.saturating_sub(r), (x + r + 1).min(w));
            let s = integral[y1 * (w + 1) + x1] - integral[y0 * (w + 1) + x1] - integral[y1 * (w + 1) + x0]
                + integral[y0 * (w + 1) + x0];
            out[y * w + x] = (s / ((x1 - x0) * (y1 - y0)) as f64) as f32;
        }
    }
    out
}

#[derive(Clone, Copy)]
struct Stats {
    n: u32,
    x0: u32,
    y0: u32,
    x1: u32,
    y1: u32,
    /// Extremes of x+y and x-y, with the points that reach them.
    min_sum: (f32, (f32, f32)),
    max_sum: (f32, (f32, f32)),
    min_diff: (f32, (f32, f32)),
    max_diff: (f32, (f32, f32)),
}

fn components(mask: &GrayImage, hue: Hue) -> Vec<Blob> {
    let (w, h) = mask.dimensions();
    let labels = connected_components(mask, Connectivity::Four, Luma([0u8]));
    let mut stats: Vec<Option<Stats>> = Vec::new();
    for (x, y, l) in labels.enumerate_pixels() {
        let l = l.0[0] as usize;
        if l == 0 {
            continue;
        }
        if stats.len() <= l {
            stats.resize(l + 1, None);
        }
        let (fx, fy) = (x as f32 + 0.5, y as f32 + 0.5);
        let st = stats[l].get_or_insert(Stats {
            n: 0,
            x0: x,
            y0: y,
            x1: x,
            y1: y,
            min_sum: (f32::MAX, (fx, fy)),
            max_sum: (f32::MIN, (fx, fy)),
            min_diff: (f32::MAX, (fx, fy)),
            max_diff: (f32::MIN, (fx, fy)),
        });
        st.n += 1;
        st.x0 = st.x0.min(x);
        st.x1 = st.x1.max(x);
        st.y0 = st.y0.min(y);
        st.y1 = st.y1.max(y);
        let (s, d) = (fx + fy, fx - fy);
        if s < st.min_sum.0 {
            st.min_sum = (s, (fx, fy));
        }
        if s > st.max_sum.0 {
            st.max_sum = (s, (fx, fy));
        }
        if d < st.min_diff.0 {
            st.min_diff = (d, (fx, fy));
        }
        if d > st.max_diff.0 {
            st.max_diff = (d, (fx, fy));
        }
    }
    stats
        .into_iter()
        .flatten()
        .filter_map(|st| {
            let bw = (st.x1 - st.x0 + 1) as f32;
            let bh = (st.y1 - st.y0 + 1) as f32;
            let fill = st.n as f32 / (bw * bh);
            let aspect = bw / bh;
            let plausible = st.n >= 250
                && bw >= 50.0
                && bh >= 14.0
                && bw <= w as f32 * 0.7
                && bh <= h as f32 * 0.4
                && (1.6..8.0).contains(&aspect)
                && fill >= 0.25;
            if !plausible {
                return None;
            }
            // Pixel centres lie half a pixel inside the blob's outline.
            let grow = |p: (f32, f32), dx: f32, dy: f32| (p.0 + dx * 0.5, p.1 + dy * 0.5);
            let quad = [
                grow(st.min_sum.1, -1.0, -1.0),
                grow(st.max_diff.1, 1.0, -1.0),
                grow(st.max_sum.1, 1.0, 1.0),
                grow(st.min_diff.1, -1.0, 1.0),
            ];
            let blob = Blob { hue, quad, score: 0.0 };
            let a = blob.aspect();
            if !(1.8..7.0).contains(&a) {
                return None;
            }
            let score = (st.n as f32).sqrt() * fill.min(0.7);
            Some(Blob { score, ..blob })
        })
        .collect()
}
