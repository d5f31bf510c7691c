//! Finding plates: blobs of a plate's background colour, of plate proportions.
//!
//! Every pixel is classed by hue and saturation (robust to exposure) into the four plate
//! backgrounds; white is judged against its neighbourhood, since "white" in a dim frame is grey.
//! Each class's connected components are kept when their size, aspect and fill look like a plate,
//! and a blob's corners are its extreme points along the two diagonals, which stay the true
//! corners under the roll and perspective a barrier camera sees.

use image::{GrayImage, ImageBuffer, Luma, RgbImage};
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
    /// Top-left, top-right, bottom-right, bottom-left: edges fitted along the blob's main axis.
    pub quad: [(f32, f32); 4],
    /// The blob's extreme points along the diagonals: a second opinion when the fit is fooled.
    pub extreme_quad: [(f32, f32); 4],
    pub score: f32,
    pub found_by: FoundBy,
}

/// How a blob was found, which decides what its outline can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FoundBy {
    /// The plate's colour: the outline is the plate's own, unless something cut it.
    Colour,
    /// A German plate's EU band: the outline is a whole plate's, placed by the band.
    EuBand,
    /// A line of characters: the outline is grown from the text.
    Text,
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

/// One mask per entry. The colours appear twice: a loose class that survives dim light, and a
/// strict one that tells a vivid plate from a dull car body of the same hue, with which the loose
/// class merges it.
const HUES: [Hue; 7] = [
    Hue::Blue,
    Hue::Yellow,
    Hue::Green,
    Hue::White,
    Hue::Blue,
    Hue::Green,
    Hue::Yellow,
];

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

/// Candidate plates, most plate-like first, in `full`'s coordinates.
///
/// Blobs are found at half resolution when the frame is large enough: a plate's background is a
/// big flat area, and the corner fit averages over whole edges, so little precision is lost for a
/// quarter of the work.
pub(crate) fn locate(full: &RgbImage) -> Vec<Blob> {
    let Some(small) = halve(full) else {
        return locate_at(full, 1.0);
    };
    let mut blobs = locate_at(&small, 0.5);
    for b in &mut blobs {
        b.quad = b.quad.map(|(x, y)| (x * 2.0, y * 2.0));
        b.extreme_quad = b.extreme_quad.map(|(x, y)| (x * 2.0, y * 2.0));
    }
    blobs
}

/// `full` at half its size (each pixel the mean of four), when it is large enough to spare it.
fn halve(full: &RgbImage) -> Option<RgbImage> {
    if full.width() < 400 || full.height() < 200 {
        return None;
    }
    let (w, h) = (full.width() / 2, full.height() / 2);
    let raw = full.as_raw();
    let stride = full.width() as usize * 3;
    let mut out = Vec::with_capacity((w * h * 3) as usize);
    for y in 0..h as usize {
        let (r0, r1) = (&raw[2 * y * stride..], &raw[(2 * y + 1) * stride..]);
        for x in 0..w as usize {
            for k in 0..3 {
                let i = 6 * x + k;
                let sum = r0[i] as u32 + r0[i + 3] as u32 + r1[i] as u32 + r1[i + 3] as u32;
                out.push((sum / 4) as u8);
            }
        }
    }
    RgbImage::from_raw(w, h, out)
}

/// Candidate plates found by their characters rather than their colour, for when light has
/// taken the colour away (a plate in deep shadow, a white plate on a white car): bands of dense
/// vertical strokes, of a line of text's proportions, grown from the text to the plate around
/// it. Each band's colour is its pixels' median hue, or white when most are unsaturated.
pub(crate) fn text_bands(full: &RgbImage) -> Vec<Blob> {
    let small = halve(full);
    let (rgb, scale) = match &small {
        Some(s) => (s, 0.5),
        None => (full, 1.0),
    };
    let (w, h) = (rgb.width() as usize, rgb.height() as usize);
    if w < 8 || h < 8 {
        return Vec::new();
    }
    let grey: Vec<f32> = rgb
        .pixels()
        .map(|p| 0.299 * p[0] as f32 + 0.587 * p[1] as f32 + 0.114 * p[2] as f32)
        .collect();
    let mut gx = vec![0.0f32; w * h];
    for y in 0..h {
        for x in 1..w - 1 {
            gx[y * w + x] = (grey[y * w + x + 1] - grey[y * w + x - 1]).abs();
        }
    }
    let mean = gx.iter().sum::<f32>() / gx.len() as f32;
    let edge = (2.5 * mean).max(14.0);
    // A pixel is text when enough strokes cross its row nearby.
    let r = (10.0 * scale) as usize;
    let mut mask = vec![0u8; w * h];
    for y in 0..h {
        let row = &gx[y * w..(y + 1) * w];
        let mut count = vec![0u32; w + 1];
        for x in 0..w {
            count[x + 1] = count[x] + u32::from(row[x] > edge);
        }
        for x in 0..w {
            let (x0, x1) = (x.saturating_sub(r), (x + r + 1).min(w));
            if count[x1] - count[x0] >= 4 {
                mask[y * w + x] = 255;
            }
        }
    }
    let Some(mask) = GrayImage::from_raw(w as u32, h as u32, mask) else {
        return Vec::new();
    };
    let labels = connected_components(&mask, Connectivity::Eight, Luma([0u8]));
    /// A component's bounding box and pixel count.
    #[derive(Clone, Copy)]
    struct Extent {
        x0: u32,
        y0: u32,
        x1: u32,
        y1: u32,
        n: u32,
    }
    let mut boxes: Vec<Option<Extent>> = Vec::new();
    for (x, y, l) in labels.enumerate_pixels() {
        let l = l.0[0] as usize;
        if l == 0 {
            continue;
        }
        if boxes.len() <= l {
            boxes.resize(l + 1, None);
        }
        let e = boxes[l].get_or_insert(Extent {
            x0: x,
            y0: y,
            x1: x,
            y1: y,
            n: 0,
        });
        e.x0 = e.x0.min(x);
        e.y0 = e.y0.min(y);
        e.x1 = e.x1.max(x);
        e.y1 = e.y1.max(y);
        e.n += 1;
    }
    let mut bands: Vec<Blob> = boxes
        .into_iter()
        .flatten()
        .filter_map(|Extent { x0, y0, x1, y1, n }| {
            let (bw, bh) = ((x1 - x0 + 1) as f32, (y1 - y0 + 1) as f32);
            let fill = n as f32 / (bw * bh);
            let plausible = bw >= 40.0 * scale
                && bw <= w as f32 * 0.8
                && bh >= 10.0 * scale
                && bh <= 120.0 * scale
                && (2.2..9.0).contains(&(bw / bh))
                && fill >= 0.45;
            if !plausible {
                return None;
            }
            // Text fills about two thirds of a plate's height and nine tenths of its width.
            let (cx, cy) = ((x0 + x1 + 1) as f32 / 2.0, (y0 + y1 + 1) as f32 / 2.0);
            let (hw, hh) = (bw * 1.1 / 2.0, bh * 1.5 / 2.0);
            let quad = [
                (cx - hw, cy - hh),
                (cx + hw, cy - hh),
                (cx + hw, cy + hh),
                (cx - hw, cy + hh),
            ];
            // A second, tighter estimate: two readings that disagree are not vouched for.
            let (tw, th) = (bw * 1.04 / 2.0, bh * 1.3 / 2.0);
            let extreme_quad = [
                (cx - tw, cy - th),
                (cx + tw, cy - th),
                (cx + tw, cy + th),
                (cx - tw, cy + th),
            ];
            let hue = band_hue(rgb, quad);
            let up = 1.0 / scale;
            Some(Blob {
                hue,
                quad: quad.map(|(x, y)| (x * up, y * up)),
                extreme_quad: extreme_quad.map(|(x, y)| (x * up, y * up)),
                score: n as f32 * fill,
                found_by: FoundBy::Text,
            })
        })
        .collect();
    bands.sort_by(|a, b| b.score.total_cmp(&a.score));
    bands
}

/// A German plate's width over its height.
pub(crate) const DE_ASPECT: f32 = 520.0 / 110.0;

/// Candidate German plates found by their blue EU band, for when the plate's white does not
/// stand out from the car (a white plate on a pale or white car): an upright blue rectangle of a
/// band's proportions, with the plate taken as running to its right for [`DE_ASPECT`] times the
/// band's height. White, as a German plate is; the band is its left edge.
pub(crate) fn eu_bands(full: &RgbImage) -> Vec<Blob> {
    let small = halve(full);
    let (rgb, scale) = match &small {
        Some(s) => (s, 0.5),
        None => (full, 1.0),
    };
    let (w, h) = rgb.dimensions();
    let hsvs: Vec<(f32, f32, f32)> = rgb.pixels().map(|p| hsv(p.0)).collect();
    // Loose for dim light; vivid for a band on a dull blue car, with which the loose mask
    // merges it.
    let loose = |(hh, s, v): (f32, f32, f32)| (195.0..255.0).contains(&hh) && s > 0.4 && v > 25.0;
    let vivid = |(hh, s, v): (f32, f32, f32)| loose((hh, s, v)) && s > 0.75 && v > 110.0;
    let up = 1.0 / scale;
    let mut bands = Vec::new();
    for class in [&loose as &dyn Fn((f32, f32, f32)) -> bool, &vivid] {
        let mask: Vec<u8> = hsvs
            .iter()
            .map(|&p| if class(p) { 255 } else { 0 })
            .collect();
        let Some(mask) = GrayImage::from_raw(w, h, mask) else {
            return Vec::new();
        };
        let labels = connected_components(&mask, Connectivity::Four, Luma([0u8]));
        for (label, st) in component_stats(&labels).into_iter().enumerate() {
            let Some(st) = st else { continue };
            let bw = (st.x1 - st.x0 + 1) as f32;
            let bh = (st.y1 - st.y0 + 1) as f32;
            let fill = st.n as f32 / (bw * bh);
            // The band is about 40 mm of the plate's 110 mm height; its stars and its letter
            // leave holes, and roll tilts its box.
            let plausible = bh >= 9.0 * scale
                && bh <= h as f32 * 0.5
                && (0.2..0.8).contains(&(bw / bh))
                && fill >= 0.5;
            if !plausible {
                continue;
            }
            let Some((tl, bl)) = left_edge(&labels, label as u32, &st) else {
                continue;
            };
            let band = ((bl.0 - tl.0).powi(2) + (bl.1 - tl.1).powi(2)).sqrt();
            // Down the band's edge, and along the plate, square to it.
            let (vx, vy) = ((bl.0 - tl.0) / band, (bl.1 - tl.1) / band);
            let (ux, uy) = (vy, -vx);
            // The band stands 3 mm inside the plate's edges, on its 110 mm height.
            let inset = band * 3.0 / 104.0;
            let tl = (tl.0 - (ux + vx) * inset, tl.1 - (uy + vy) * inset);
            let bl = (
                bl.0 - ux * inset + vx * inset,
                bl.1 - uy * inset + vy * inset,
            );
            let height = band + 2.0 * inset;
            let plate = |aspect: f32| {
                let len = height * aspect;
                [
                    tl,
                    (tl.0 + ux * len, tl.1 + uy * len),
                    (bl.0 + ux * len, bl.1 + uy * len),
                    bl,
                ]
            };
            // A plate beyond the band, and no more blue on either side of it: the band is no
            // gap or counter among a blue plate's glyphs, and a plate's roll is moderate. (On
            // a blue car, where this finds nothing, the white blob stands out anyway.)
            let body = plate(DE_ASPECT);
            let blue = |u, v| blue_share(&hsvs, w, body, u, v);
            let middle = (0.2, 0.8);
            if uy.abs() > 0.35
                || blue((-0.25, -0.02), middle) > 0.3
                || blue((0.0, 0.08), (-0.5, -0.1)) > 0.3
                || blue((0.0, 0.08), (1.1, 1.5)) > 0.3
                || blue((0.1, 0.2), middle) > 0.2
                || blue((0.2, 1.0), middle) > 0.3
            {
                continue;
            }
            // The German layout widens a quad leftwards by a tenth for the band a white blob
            // misses; this one starts at the band, so it starts that much to the right.
            let start =
                |q: [(f32, f32); 4]| extend_left(q, -0.1 / 1.1).map(|(x, y)| (x * up, y * up));
            bands.push(Blob {
                hue: Hue::White,
                quad: start(plate(DE_ASPECT)),
                extreme_quad: start(plate(DE_ASPECT * 1.04)),
                score: st.n as f32 * fill,
                found_by: FoundBy::EuBand,
            });
        }
    }
    bands.sort_by(|a, b| b.score.total_cmp(&a.score));
    bands
}

/// The top and bottom ends of component `label`'s left edge: a line fitted through each row's
/// leftmost pixel (the rows near the corners left out), which stays true under roll where the
/// component's extreme points, a pixel off on a band a dozen pixels high, do not.
fn left_edge(
    labels: &ImageBuffer<Luma<u32>, Vec<u32>>,
    label: u32,
    st: &Stats,
) -> Option<((f32, f32), (f32, f32))> {
    let rows: Vec<(f32, f32)> = (st.y0..=st.y1)
        .filter_map(|y| {
            (st.x0..=st.x1)
                .find(|&x| labels.get_pixel(x, y).0[0] == label)
                .map(|x| (y as f32 + 0.5, x as f32))
        })
        .collect();
    let n = rows.len();
    if n < 6 {
        return None;
    }
    let (a, b) = least_squares(&rows[n / 6..n - n / 6])?;
    let x_at = |y: f32| a + b * y;
    let (top, bottom) = (st.y0 as f32, st.y1 as f32 + 1.0);
    Some(((x_at(top), top), (x_at(bottom), bottom)))
}

/// The share of blue among points of `quad` (TL, TR, BR, BL) from `u.0` to `u.1` of its length
/// and from `v.0` to `v.1` of its height (either may reach outside it), sampled on a grid of
/// `hsvs`, an image `w` wide; 1 when no point lies in the image.
fn blue_share(
    hsvs: &[(f32, f32, f32)],
    w: u32,
    quad: [(f32, f32); 4],
    u: (f32, f32),
    v: (f32, f32),
) -> f32 {
    let [tl, tr, br, bl] = quad;
    let lerp =
        |a: (f32, f32), b: (f32, f32), t: f32| (a.0 + (b.0 - a.0) * t, a.1 + (b.1 - a.1) * t);
    let (mut blue, mut total) = (0u32, 0u32);
    for i in 0..5 {
        let t = v.0 + (v.1 - v.0) * (i as f32 + 0.5) / 5.0;
        let (l, r) = (lerp(tl, bl, t), lerp(tr, br, t));
        for j in 0..16 {
            let (x, y) = lerp(l, r, u.0 + (u.1 - u.0) * (j as f32 + 0.5) / 16.0);
            if x < 0.0 || y < 0.0 || x >= w as f32 {
                continue;
            }
            let Some(&(hh, s, v)) = hsvs.get(y as usize * w as usize + x as usize) else {
                continue;
            };
            total += 1;
            if (195.0..255.0).contains(&hh) && s > 0.4 && v > 25.0 {
                blue += 1;
            }
        }
    }
    if total == 0 {
        1.0
    } else {
        blue as f32 / total as f32
    }
}

/// The plate colour of the pixels inside `quad` (an axis-aligned box): white when most are
/// unsaturated, else the class of their median hue.
fn band_hue(rgb: &RgbImage, quad: [(f32, f32); 4]) -> Hue {
    let (x0, y0) = (quad[0].0.max(0.0) as u32, quad[0].1.max(0.0) as u32);
    let x1 = (quad[2].0.max(0.0) as u32).min(rgb.width());
    let y1 = (quad[2].1.max(0.0) as u32).min(rgb.height());
    let mut hues = Vec::new();
    let mut total = 0usize;
    for y in y0..y1 {
        for x in x0..x1 {
            let (hh, s, v) = hsv(rgb.get_pixel(x, y).0);
            total += 1;
            if s > 0.2 && v > 25.0 {
                hues.push(hh);
            }
        }
    }
    if hues.len() * 2 < total {
        return Hue::White;
    }
    hues.sort_by(f32::total_cmp);
    match hues[hues.len() / 2] {
        h if (170.0..270.0).contains(&h) => Hue::Blue,
        h if (20.0..75.0).contains(&h) => Hue::Yellow,
        h if (75.0..170.0).contains(&h) => Hue::Green,
        _ => Hue::White,
    }
}

/// Moves one long edge of a blob that is too flat for its layout outwards until the quad has
/// `aspect`: the top edge (`up`) when only a new-energy plate's green lower part was found, since
/// its near-white upper part does not pass as green; the bottom edge when only that pale upper
/// part was found, as white.
pub(crate) fn grow_to_aspect(quad: [(f32, f32); 4], aspect: f32, up: bool) -> [(f32, f32); 4] {
    let [tl, tr, br, bl] = quad;
    let d = |a: (f32, f32), b: (f32, f32)| ((a.0 - b.0).powi(2) + (a.1 - b.1).powi(2)).sqrt();
    let width = (d(tl, tr) + d(bl, br)) / 2.0;
    let height = (d(tl, bl) + d(tr, br)) / 2.0;
    let want = width / aspect;
    if height <= 0.0 || height > want * 0.85 {
        return quad;
    }
    let k = want / height;
    // `from` stays; the corner opposite it moves along the edge joining them.
    let away = |to: (f32, f32), from: (f32, f32)| {
        (from.0 + (to.0 - from.0) * k, from.1 + (to.1 - from.1) * k)
    };
    if up {
        [away(tl, bl), away(tr, br), br, bl]
    } else {
        [tl, tr, away(br, tr), away(bl, tl)]
    }
}

/// Moves the quad's left edge outwards by `k` of its width.
pub(crate) fn extend_left(quad: [(f32, f32); 4], k: f32) -> [(f32, f32); 4] {
    let [tl, tr, br, bl] = quad;
    let out = |l: (f32, f32), r: (f32, f32)| (l.0 - (r.0 - l.0) * k, l.1 - (r.1 - l.1) * k);
    [out(tl, tr), tr, br, out(bl, br)]
}

/// Moves the quad's left and right edges outwards by `k` of its width each.
pub(crate) fn widen(quad: [(f32, f32); 4], k: f32) -> [(f32, f32); 4] {
    let [tl, tr, br, bl] = quad;
    let out = |p: (f32, f32), q: (f32, f32)| (p.0 - (q.0 - p.0) * k, p.1 - (q.1 - p.1) * k);
    [out(tl, tr), out(tr, tl), out(br, bl), out(bl, br)]
}

/// Blobs in `rgb`, which is `scale` times the original frame's size.
fn locate_at(rgb: &RgbImage, scale: f32) -> Vec<Blob> {
    let (w, h) = rgb.dimensions();
    let hsvs: Vec<(f32, f32, f32)> = rgb.pixels().map(|p| hsv(p.0)).collect();
    let radius = (30.0 * scale).round() as usize;
    let local = local_mean(
        &hsvs.iter().map(|p| p.2).collect::<Vec<_>>(),
        w as usize,
        h as usize,
        radius,
    );
    // Wider: the window must reach past a plate's height into what surrounds it.
    let local_s = local_mean(
        &hsvs.iter().map(|p| p.1).collect::<Vec<_>>(),
        w as usize,
        h as usize,
        radius * 2,
    );
    let mut masks: Vec<Vec<u8>> = HUES.iter().map(|_| vec![0u8; hsvs.len()]).collect();
    for (i, &(hh, s, v)) in hsvs.iter().enumerate() {
        // White and pale green overlap on purpose: a new-energy plate's pale top is both. A
        // white plate is brighter than its surroundings, or, on a car as light as itself, much
        // less coloured than they are.
        let brighter = v > local[i] * 1.12;
        let paler = s < 0.15 && v > 120.0 && local_s[i] > s + 0.15;
        if s < 0.28 && v > 40.0 && (brighter || paler) {
            masks[3][i] = 255;
        }
        let colour = if (195.0..255.0).contains(&hh) && s > 0.4 && v > 25.0 {
            Some(0)
        } else if (30.0..70.0).contains(&hh) && s > 0.45 && v > 35.0 {
            Some(1)
        } else if (85.0..160.0).contains(&hh) && s > 0.22 && v > 35.0 {
            Some(2)
        } else {
            None
        };
        if let Some(c) = colour {
            masks[c][i] = 255;
            let vivid = match c {
                0 => s > 0.75 && v > 110.0,
                _ => v > 130.0,
            };
            if c != 1 && vivid {
                masks[if c == 0 { 4 } else { 5 }][i] = 255;
            }
        }
        // A yellow plate is brighter than the yellowish car it is on, and warm light turns it
        // orange.
        if (22.0..70.0).contains(&hh) && s > 0.55 && (v > 150.0 || v > local[i] * 1.25) {
            masks[6][i] = 255;
        }
    }
    let mut blobs = Vec::new();
    for (hue, mask) in HUES.into_iter().zip(masks) {
        // The mask holds exactly w * h bytes by construction.
        let mask = GrayImage::from_raw(w, h, mask).expect("mask sized to the image");
        blobs.extend(components(&mask, hue, scale));
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
            let s = integral[y1 * (w + 1) + x1]
                - integral[y0 * (w + 1) + x1]
                - integral[y1 * (w + 1) + x0]
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

/// Each labelled component's [`Stats`], indexed by its label (0, the background, is `None`).
fn component_stats(labels: &ImageBuffer<Luma<u32>, Vec<u32>>) -> Vec<Option<Stats>> {
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
}

fn components(mask: &GrayImage, hue: Hue, scale: f32) -> Vec<Blob> {
    let (w, h) = mask.dimensions();
    let labels = connected_components(mask, Connectivity::Four, Luma([0u8]));
    let stats = component_stats(&labels);
    let keep: Vec<Option<Stats>> = stats
        .into_iter()
        .map(|st| st.filter(plausible(w, h, scale)))
        .collect();
    let mut points: Vec<Vec<(f32, f32)>> = vec![Vec::new(); keep.len()];
    for (x, y, l) in labels.enumerate_pixels() {
        let l = l.0[0] as usize;
        if l != 0 && keep.get(l).is_some_and(Option::is_some) {
            points[l].push((x as f32 + 0.5, y as f32 + 0.5));
        }
    }
    keep.into_iter()
        .zip(points)
        .filter_map(|(st, pts)| Some((st?, pts)))
        .filter_map(|(st, pts)| {
            let bw = (st.x1 - st.x0 + 1) as f32;
            let bh = (st.y1 - st.y0 + 1) as f32;
            let fill = st.n as f32 / (bw * bh);
            // Pixel centres lie half a pixel inside the blob's outline.
            let grow = |p: (f32, f32), dx: f32, dy: f32| (p.0 + dx * 0.5, p.1 + dy * 0.5);
            let extreme_quad = [
                grow(st.min_sum.1, -1.0, -1.0),
                grow(st.max_diff.1, 1.0, -1.0),
                grow(st.max_sum.1, 1.0, 1.0),
                grow(st.min_diff.1, -1.0, 1.0),
            ];
            let quad = fit_quad(&pts).unwrap_or(extreme_quad);
            let blob = Blob {
                hue,
                quad,
                extreme_quad,
                score: 0.0,
                found_by: FoundBy::Colour,
            };
            let a = blob.aspect();
            if !(1.8..7.0).contains(&a) {
                return None;
            }
            let score = (st.n as f32).sqrt() / scale * fill.min(0.7);
            Some(Blob { score, ..blob })
        })
        .collect()
}

fn plausible(w: u32, h: u32, scale: f32) -> impl Fn(&Stats) -> bool {
    move |st: &Stats| {
        let bw = (st.x1 - st.x0 + 1) as f32;
        let bh = (st.y1 - st.y0 + 1) as f32;
        let fill = st.n as f32 / (bw * bh);
        let aspect = bw / bh;
        st.n as f32 >= 250.0 * scale * scale
            && bw >= 50.0 * scale
            && bh >= 14.0 * scale
            && bw <= w as f32 * 0.95
            && bh <= h as f32 * 0.8
            && (1.6..8.0).contains(&aspect)
            && fill >= 0.25
    }
}

/// Fits a quad to a blob: main axis from its second moments, then a line each through the top
/// and bottom extents of slices along that axis (so yaw's trapezoid survives), refitted without
/// the slices a shadow or a glyph touching the edge pulled astray.
fn fit_quad(pts: &[(f32, f32)]) -> Option<[(f32, f32); 4]> {
    let n = pts.len() as f32;
    if n < 50.0 {
        return None;
    }
    let (mx, my) = pts
        .iter()
        .fold((0.0, 0.0), |a, p| (a.0 + p.0 / n, a.1 + p.1 / n));
    let (mut sxx, mut syy, mut sxy) = (0.0f32, 0.0f32, 0.0f32);
    for p in pts {
        let (dx, dy) = (p.0 - mx, p.1 - my);
        sxx += dx * dx;
        syy += dy * dy;
        sxy += dx * dy;
    }
    let theta = 0.5 * (2.0 * sxy).atan2(sxx - syy);
    let (e1x, e1y) = (theta.cos(), theta.sin());
    let (e2x, e2y) = (-e1y, e1x);
    let uv: Vec<(f32, f32)> = pts
        .iter()
        .map(|p| {
            let (dx, dy) = (p.0 - mx, p.1 - my);
            (dx * e1x + dy * e1y, dx * e2x + dy * e2y)
        })
        .collect();
    let umin = uv.iter().map(|p| p.0).fold(f32::MAX, f32::min) - 0.5;
    let umax = uv.iter().map(|p| p.0).fold(f32::MIN, f32::max) + 0.5;
    const BINS: usize = 16;
    let span = (umax - umin).max(1.0);
    let mut lo = [f32::MAX; BINS];
    let mut hi = [f32::MIN; BINS];
    for &(u, v) in &uv {
        let b = (((u - umin) / span) * BINS as f32).clamp(0.0, BINS as f32 - 1.0) as usize;
        lo[b] = lo[b].min(v - 0.5);
        hi[b] = hi[b].max(v + 0.5);
    }
    let centres: Vec<f32> = (0..BINS)
        .map(|b| umin + span * (b as f32 + 0.5) / BINS as f32)
        .collect();
    // Skip the end slices: their extents are cut short by the plate's rounded or rolled corners.
    let inner = 1..BINS - 1;
    let top: Vec<(f32, f32)> = inner
        .clone()
        .filter(|&b| lo[b] < f32::MAX)
        .map(|b| (centres[b], lo[b]))
        .collect();
    let bottom: Vec<(f32, f32)> = inner
        .filter(|&b| hi[b] > f32::MIN)
        .map(|b| (centres[b], hi[b]))
        .collect();
    let (ta, tb) = robust_line(&top, true)?;
    let (ba, bb) = robust_line(&bottom, false)?;
    let back = |u: f32, v: f32| (mx + u * e1x + v * e2x, my + u * e1y + v * e2y);
    Some([
        back(umin, ta + tb * umin),
        back(umax, ta + tb * umax),
        back(umax, ba + bb * umax),
        back(umin, ba + bb * umin),
    ])
}

/// The least-squares line v = a + b u through `(u, v)` points: `(a, b)`, flat when the points
/// share one u; `None` for fewer than two.
fn least_squares(p: &[(f32, f32)]) -> Option<(f32, f32)> {
    let n = p.len() as f32;
    if n < 2.0 {
        return None;
    }
    let (mu, mv) = p
        .iter()
        .fold((0.0, 0.0), |a, q| (a.0 + q.0 / n, a.1 + q.1 / n));
    let suu: f32 = p.iter().map(|q| (q.0 - mu).powi(2)).sum();
    let suv: f32 = p.iter().map(|q| (q.0 - mu) * (q.1 - mv)).sum();
    let b = if suu > 1e-3 { suv / suu } else { 0.0 };
    Some((mv - b * mu, b))
}

/// Least-squares line v = a + b u, refitted after dropping the slices lying inside the plate
/// (`upper`: a top edge, where outliers lie below the line).
fn robust_line(pts: &[(f32, f32)], upper: bool) -> Option<(f32, f32)> {
    let (a, b) = least_squares(pts)?;
    let mut res: Vec<(f32, (f32, f32))> = pts
        .iter()
        .map(|&q| {
            let r = q.1 - (a + b * q.0);
            (if upper { r } else { -r }, q)
        })
        .collect();
    res.sort_by(|x, y| x.0.total_cmp(&y.0));
    let keep: Vec<(f32, f32)> = res
        .iter()
        .take((pts.len() * 2).div_ceil(3))
        .map(|r| r.1)
        .collect();
    least_squares(&keep)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: [(f32, f32); 4], b: [(f32, f32); 4]) -> bool {
        a.iter()
            .zip(b)
            .all(|(p, q)| (p.0 - q.0).abs() < 1e-3 && (p.1 - q.1).abs() < 1e-3)
    }

    #[test]
    fn a_flat_quad_grows_up_or_down_to_the_plate_and_a_full_one_stays() {
        // 300 wide, 50 high: a plate of aspect 3 would be 100 high.
        let flat = [(0.0, 100.0), (300.0, 100.0), (300.0, 150.0), (0.0, 150.0)];
        let up = grow_to_aspect(flat, 3.0, true);
        assert!(close(
            up,
            [(0.0, 50.0), (300.0, 50.0), (300.0, 150.0), (0.0, 150.0)]
        ));
        let down = grow_to_aspect(flat, 3.0, false);
        assert!(close(
            down,
            [(0.0, 100.0), (300.0, 100.0), (300.0, 200.0), (0.0, 200.0)]
        ));
        let full = [(0.0, 0.0), (300.0, 0.0), (300.0, 95.0), (0.0, 95.0)];
        assert!(close(grow_to_aspect(full, 3.0, false), full));
    }
}
