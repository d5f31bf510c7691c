//! The plate drawn flat: real proportions in millimetres, scaled to pixels, glyphs stretched into
//! their boxes the way plate typefaces are (tall and narrow), decorations per region.

use ab_glyph::{Font, FontRef, PxScale};
use image::{Rgb, RgbImage};
use parkpay_protocol::PlateColour;

use crate::{FontChoice, PlateFormat};

static LATIN_PRIMARY: &[u8] = include_bytes!("../fonts/LiberationSans-Bold-plates.ttf");
static CJK_PRIMARY: &[u8] = include_bytes!("../fonts/NotoSansCJKsc-Bold-plates.otf");
static LATIN_ALTERNATE: &[u8] = include_bytes!("../fonts/NotoSans-Bold-plates.ttf");
static CJK_ALTERNATE: &[u8] = include_bytes!("../fonts/NotoSerifCJKsc-Bold-plates.otf");

/// A plate's outer size and where its glyphs stand, all in millimetres.
#[derive(Debug, Clone)]
pub struct PlateGeometry {
    pub width_mm: f32,
    pub height_mm: f32,
    /// One box per glyph: x, y, width, height.
    pub boxes: Vec<(char, [f32; 4])>,
}

impl PlateGeometry {
    /// Lays `text` (canonical) out on a plate of `format`.
    pub fn new(format: PlateFormat, text: &str) -> PlateGeometry {
        let chars: Vec<char> = text.chars().collect();
        match format {
            PlateFormat::CnBlue | PlateFormat::CnYellow => {
                let boxes = chars
                    .iter()
                    .enumerate()
                    .map(|(i, &c)| {
                        let x = if i < 2 {
                            15.5 + i as f32 * 57.0
                        } else {
                            151.5 + (i - 2) as f32 * 57.0
                        };
                        (c, [x, 25.0, 45.0, 90.0])
                    })
                    .collect();
                PlateGeometry {
                    width_mm: 440.0,
                    height_mm: 140.0,
                    boxes,
                }
            }
            PlateFormat::CnGreen => {
                let boxes = chars
                    .iter()
                    .enumerate()
                    .map(|(i, &c)| {
                        let x = if i < 2 {
                            15.5 + i as f32 * 52.0
                        } else {
                            15.5 + 95.0 + 51.0 + (i - 2) as f32 * 52.0
                        };
                        (c, [x, 25.0, 43.0, 90.0])
                    })
                    .collect();
                PlateGeometry {
                    width_mm: 480.0,
                    height_mm: 140.0,
                    boxes,
                }
            }
            PlateFormat::De => {
                let groups: Vec<&str> = text.split(' ').collect();
                let n: usize = groups.iter().map(|g| g.chars().count()).sum();
                let seal_gap = 40.0;
                let group_gap = 12.0;
                let total = n as f32 * 45.0 + seal_gap + group_gap - 3.0;
                let mut x = 47.0 + (465.0 - total) / 2.0;
                let mut boxes = Vec::new();
                for (gi, g) in groups.iter().enumerate() {
                    if gi == 1 {
                        x += seal_gap - 3.0;
                    } else if gi == 2 {
                        x += group_gap - 3.0;
                    }
                    for c in g.chars() {
                        boxes.push((c, [x, 17.5, 42.0, 75.0]));
                        x += 45.0;
                    }
                }
                PlateGeometry {
                    width_mm: 520.0,
                    height_mm: 110.0,
                    boxes,
                }
            }
            PlateFormat::Uk => {
                let boxes = chars
                    .iter()
                    .enumerate()
                    .map(|(i, &c)| {
                        let x = 41.0 + i as f32 * 61.0 + if i >= 4 { 22.0 } else { 0.0 };
                        (c, [x, 16.0, 50.0, 79.0])
                    })
                    .collect();
                PlateGeometry {
                    width_mm: 520.0,
                    height_mm: 111.0,
                    boxes,
                }
            }
        }
    }
}

struct Fonts {
    latin: FontRef<'static>,
    cjk: FontRef<'static>,
}

fn fonts(choice: FontChoice) -> Fonts {
    let (latin, cjk) = match choice {
        FontChoice::Primary => (LATIN_PRIMARY, CJK_PRIMARY),
        FontChoice::Alternate => (LATIN_ALTERNATE, CJK_ALTERNATE),
    };
    Fonts {
        // The committed subsets are valid fonts; the crate's tests render every one of them.
        latin: FontRef::try_from_slice(latin).expect("committed Latin font parses"),
        cjk: FontRef::try_from_slice(cjk).expect("committed CJK font parses"),
    }
}

fn fill_rect(img: &mut RgbImage, x0: f32, y0: f32, x1: f32, y1: f32, c: Rgb<u8>) {
    let (w, h) = img.dimensions();
    let xa = x0.max(0.0).round() as u32;
    let ya = y0.max(0.0).round() as u32;
    let xb = (x1.round().max(0.0) as u32).min(w);
    let yb = (y1.round().max(0.0) as u32).min(h);
    for y in ya..yb {
        for x in xa..xb {
            img.put_pixel(x, y, c);
        }
    }
}

fn fill_disc(img: &mut RgbImage, cx: f32, cy: f32, r: f32, c: Rgb<u8>) {
    fill_ellipse(img, cx, cy, r, r, c);
}

pub(crate) fn fill_ellipse(img: &mut RgbImage, cx: f32, cy: f32, rx: f32, ry: f32, c: Rgb<u8>) {
    let (w, h) = img.dimensions();
    let x0 = (cx - rx).floor().max(0.0) as u32;
    let y0 = (cy - ry).floor().max(0.0) as u32;
    let x1 = ((cx + rx).ceil().max(0.0) as u32).min(w);
    let y1 = ((cy + ry).ceil().max(0.0) as u32).min(h);
    for y in y0..y1 {
        for x in x0..x1 {
            let dx = (x as f32 + 0.5 - cx) / rx.max(0.01);
            let dy = (y as f32 + 0.5 - cy) / ry.max(0.01);
            if dx * dx + dy * dy <= 1.0 {
                img.put_pixel(x, y, c);
            }
        }
    }
}

/// Draws a rectangular frame `t` thick whose outer edge is `inset` in from the plate's edge.
fn frame(img: &mut RgbImage, inset: f32, t: f32, c: Rgb<u8>) {
    let (w, h) = (img.width() as f32, img.height() as f32);
    fill_rect(img, inset, inset, w - inset, inset + t, c);
    fill_rect(img, inset, h - inset - t, w - inset, h - inset, c);
    fill_rect(img, inset, inset, inset + t, h - inset, c);
    fill_rect(img, w - inset - t, inset, w - inset, h - inset, c);
}

/// Stretches one glyph into its box: full height, width filled unless that would make a narrow
/// glyph (a `1`) grotesquely fat.
fn draw_glyph(img: &mut RgbImage, font: &FontRef<'_>, c: char, b: [f32; 4], colour: Rgb<u8>) {
    let id = font.glyph_id(c);
    let Some(probe) = font.outline_glyph(id.with_scale(100.0)) else {
        return;
    };
    let pb = probe.px_bounds();
    let (bw, bh) = (pb.width().max(1.0), pb.height().max(1.0));
    let sy = 100.0 * b[3] / bh;
    let sx = (100.0 * b[2] / bw).min(sy * 1.15);
    let Some(g) = font.outline_glyph(id.with_scale(PxScale { x: sx, y: sy })) else {
        return;
    };
    let gb = g.px_bounds();
    let ox = b[0] + (b[2] - gb.width()) / 2.0;
    let oy = b[1] + (b[3] - gb.height()) / 2.0;
    let (w, h) = img.dimensions();
    g.draw(|x, y, cov| {
        let px = (ox + x as f32).round();
        let py = (oy + y as f32).round();
        if px < 0.0 || py < 0.0 || px >= w as f32 || py >= h as f32 {
            return;
        }
        let p = img.get_pixel_mut(px as u32, py as u32);
        let a = cov.clamp(0.0, 1.0);
        for k in 0..3 {
            p.0[k] = (p.0[k] as f32 * (1.0 - a) + colour.0[k] as f32 * a).round() as u8;
        }
    });
}

/// Draws `text` on a flat plate of `format` at `ppm` pixels per millimetre.
pub fn render_flat(
    format: PlateFormat,
    text: &str,
    colour: PlateColour,
    font: FontChoice,
    ppm: f32,
) -> RgbImage {
    let geo = PlateGeometry::new(format, text);
    let fonts = fonts(font);
    let w = (geo.width_mm * ppm).round().max(1.0) as u32;
    let h = (geo.height_mm * ppm).round().max(1.0) as u32;
    let white = Rgb([242, 242, 238]);
    let black = Rgb([18, 18, 20]);
    let (bg, fg) = match colour {
        PlateColour::Blue => (Rgb([16, 62, 178]), white),
        PlateColour::Yellow => (Rgb([238, 190, 28]), black),
        PlateColour::Green => (Rgb([120, 200, 110]), black),
        PlateColour::Black => (Rgb([20, 20, 22]), white),
        PlateColour::White | PlateColour::Other => (white, black),
    };
    let mut img = RgbImage::from_pixel(w, h, bg);
    match format {
        PlateFormat::CnBlue | PlateFormat::CnYellow => {
            frame(&mut img, 3.0 * ppm, 1.5 * ppm, fg);
            // The separating dot between the issuing office and the serial.
            fill_disc(&mut img, 134.5 * ppm, 70.0 * ppm, 5.0 * ppm, fg);
        }
        PlateFormat::CnGreen => {
            // New-energy plates fade from near white at the top to green at the bottom.
            for y in 0..h {
                let t = y as f32 / h as f32;
                let c = Rgb([
                    (235.0 - 150.0 * t) as u8,
                    (245.0 - 45.0 * t) as u8,
                    (235.0 - 140.0 * t) as u8,
                ]);
                for x in 0..w {
                    img.put_pixel(x, y, c);
                }
            }
            fill_disc(&mut img, 136.0 * ppm, 70.0 * ppm, 5.0 * ppm, fg);
        }
        PlateFormat::De => {
            frame(&mut img, 1.0 * ppm, 2.0 * ppm, black);
            let band = Rgb([0, 51, 153]);
            fill_rect(
                &mut img,
                3.0 * ppm,
                3.0 * ppm,
                40.0 * ppm,
                107.0 * ppm,
                band,
            );
            let yellow = Rgb([255, 204, 0]);
            for k in 0..12 {
                let a = k as f32 * std::f32::consts::TAU / 12.0;
                let (cx, cy) = (21.5 + 10.0 * a.cos(), 35.0 + 10.0 * a.sin());
                fill_disc(&mut img, cx * ppm, cy * ppm, 1.4 * ppm, yellow);
            }
            draw_glyph(
                &mut img,
                &fonts.latin,
                'D',
                [13.0, 68.0, 17.0, 24.0].map(|v| v * ppm),
                white,
            );
        }
        PlateFormat::Uk => {}
    }
    // The two registration seals between district and serial.
    if format == PlateFormat::De {
        if let Some(x) = de_seal_x(text, &geo) {
            let grey = Rgb([150, 150, 150]);
            fill_disc(
                &mut img,
                x * ppm,
                38.0 * ppm,
                11.0 * ppm,
                Rgb([60, 110, 60]),
            );
            fill_disc(&mut img, x * ppm, 72.0 * ppm, 11.0 * ppm, grey);
        }
    }
    for &(c, b) in &geo.boxes {
        let font = if c.is_ascii() {
            &fonts.latin
        } else {
            &fonts.cjk
        };
        draw_glyph(&mut img, font, c, b.map(|v| v * ppm), fg);
    }
    img
}

/// Centre of the seal gap on a German plate: after the district's last glyph.
fn de_seal_x(text: &str, geo: &PlateGeometry) -> Option<f32> {
    let district = text.split(' ').next()?.chars().count();
    let last = geo.boxes.get(district.checked_sub(1)?)?.1;
    Some(last[0] + last[2] + 20.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_committed_font_has_every_plate_glyph() {
        let cjk: String = parkpay_protocol::plate::CN_PROVINCES.to_string();
        for choice in [FontChoice::Primary, FontChoice::Alternate] {
            let f = fonts(choice);
            for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789".chars() {
                assert!(
                    f.latin
                        .outline_glyph(f.latin.glyph_id(c).with_scale(20.0))
                        .is_some(),
                    "{c}"
                );
            }
            for c in cjk.chars() {
                assert!(
                    f.cjk
                        .outline_glyph(f.cjk.glyph_id(c).with_scale(20.0))
                        .is_some(),
                    "{c}"
                );
            }
        }
    }
}
