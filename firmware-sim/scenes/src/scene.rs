//! The frame around the plate: a car front, the plate warped onto it, and what the condition does
//! to the picture afterwards (blur, light, noise, compression), in that physical order.

use image::{Rgb, RgbImage};
use imageproc::geometric_transformations::Projection;
use parkpay_protocol::PlateColour;
use rand::Rng;

use crate::plate::{fill_ellipse, render_flat, PlateGeometry};
use crate::{Condition, FontChoice, PlateFormat};

pub(crate) const WIDTH: u32 = 640;
pub(crate) const HEIGHT: u32 = 480;

/// How the plate sits in the frame.
struct Pose {
    centre: (f32, f32),
    width: f32,
    roll_deg: f32,
    yaw_deg: f32,
    /// Positive: the top edge is narrower than the bottom (camera looking down).
    perspective: f32,
}

pub(crate) fn compose(
    format: PlateFormat,
    condition: Condition,
    text: &str,
    colour: PlateColour,
    font: FontChoice,
    rng: &mut impl Rng,
) -> (RgbImage, [(f32, f32); 4]) {
    let car_x = rng.gen_range(250.0..390.0);
    let mut img = draw_car(car_x, rng);
    let width = match condition {
        Condition::Small => rng.gen_range(95.0..130.0),
        _ => rng.gen_range(150.0..240.0),
    };
    let (roll, yaw, persp) = match condition {
        Condition::Skew => (12.0, 35.0, 0.12),
        Condition::Combined => (6.0, 15.0, 0.05),
        Condition::Small => (3.0, 0.0, 0.0),
        _ => (2.0, 5.0, 0.0),
    };
    let pose = Pose {
        centre: (
            car_x + rng.gen_range(-30.0..30.0),
            rng.gen_range(320.0..390.0),
        ),
        width,
        roll_deg: rng.gen_range(-roll..=roll),
        yaw_deg: rng.gen_range(-yaw..=yaw),
        perspective: rng.gen_range(-persp..=persp),
    };
    let geo = PlateGeometry::new(format, text);
    let quad = quad(&pose, geo.height_mm / geo.width_mm);
    // Drawn at about twice the final size, then softened, so the warp's down-sampling does not alias.
    let ppm = (2.0 * width / geo.width_mm).max(0.5);
    let flat = render_flat(format, text, colour, font, ppm);
    let flat = imageproc::filter::gaussian_blur_f32(&flat, 0.7);
    warp_onto(&mut img, &flat, quad);

    match condition {
        Condition::Clean | Condition::Skew | Condition::Small => add_noise(&mut img, 2.5, 0.0, rng),
        Condition::Noise => {
            let sigma = rng.gen_range(10.0..22.0);
            add_noise(&mut img, sigma, 0.003, rng);
        }
        Condition::Blur => {
            if rng.gen_bool(0.5) {
                img = imageproc::filter::gaussian_blur_f32(&img, rng.gen_range(1.0..2.2));
            } else {
                let len = rng.gen_range(4.0..9.0);
                let angle = rng.gen_range(-20.0f32..20.0).to_radians();
                img = motion_blur(&img, len, angle);
            }
            add_noise(&mut img, 2.5, 0.0, rng);
        }
        Condition::Light => {
            shadow(&mut img, &pose, rng.gen_range(0.35..0.6), rng);
            light(&mut img, rng.gen_range(0.5..2.0), rng.gen_range(0.6..1.2));
            add_noise(&mut img, 2.5, 0.0, rng);
        }
        Condition::Combined => {
            img = imageproc::filter::gaussian_blur_f32(&img, rng.gen_range(0.6..1.2));
            light(&mut img, rng.gen_range(0.7..1.5), rng.gen_range(0.75..1.1));
            let sigma = rng.gen_range(5.0..10.0);
            add_noise(&mut img, sigma, 0.0, rng);
            let q = rng.gen_range(30..60u8);
            img = jpeg_round_trip(&img, q);
        }
    }
    (img, quad)
}

fn quad(p: &Pose, aspect: f32) -> [(f32, f32); 4] {
    let yaw = p.yaw_deg.to_radians();
    let hw = p.width * yaw.cos() / 2.0;
    let hh = p.width * aspect / 2.0;
    // The nearer edge looks taller; the top edge shrinks when the camera looks down.
    let s = 0.25 * yaw.sin();
    let (hl, hr) = (hh * (1.0 + s), hh * (1.0 - s));
    let (tw, bw) = (hw * (1.0 - p.perspective), hw * (1.0 + p.perspective));
    let pts = [(-tw, -hl), (tw, -hr), (bw, hr), (-bw, hl)];
    let (sin, cos) = p.roll_deg.to_radians().sin_cos();
    pts.map(|(x, y)| {
        (
            p.centre.0 + x * cos - y * sin,
            p.centre.1 + x * sin + y * cos,
        )
    })
}

fn lerp(a: Rgb<u8>, b: Rgb<u8>, t: f32) -> Rgb<u8> {
    Rgb(std::array::from_fn(|k| {
        (a.0[k] as f32 * (1.0 - t) + b.0[k] as f32 * t).round() as u8
    }))
}

fn rect(img: &mut RgbImage, x0: f32, y0: f32, x1: f32, y1: f32, c: Rgb<u8>) {
    let xa = x0.clamp(0.0, WIDTH as f32) as u32;
    let xb = x1.clamp(0.0, WIDTH as f32) as u32;
    let ya = y0.clamp(0.0, HEIGHT as f32) as u32;
    let yb = y1.clamp(0.0, HEIGHT as f32) as u32;
    for y in ya..yb {
        for x in xa..xb {
            img.put_pixel(x, y, c);
        }
    }
}

/// A car front: backdrop, body, windscreen, headlights and a barred grille above the bumper, the
/// last two giving a plate finder the edge clutter real grilles give it.
fn draw_car(cx: f32, rng: &mut impl Rng) -> RgbImage {
    let wall = Rgb([
        rng.gen_range(90..190),
        rng.gen_range(90..190),
        rng.gen_range(90..190),
    ]);
    let road = Rgb([rng.gen_range(60..110); 3]);
    let mut img = RgbImage::new(WIDTH, HEIGHT);
    for y in 0..HEIGHT {
        let c = if y < 200 {
            lerp(wall, Rgb([230, 230, 235]), y as f32 / 400.0)
        } else {
            road
        };
        for x in 0..WIDTH {
            img.put_pixel(x, y, c);
        }
    }
    const BODIES: [[u8; 3]; 8] = [
        [200, 200, 205],
        [30, 30, 34],
        [150, 20, 25],
        [235, 235, 230],
        [40, 60, 110],
        [90, 95, 100],
        [170, 150, 110],
        [20, 80, 50],
    ];
    let body = Rgb(BODIES[rng.gen_range(0..BODIES.len())]);
    let dark = lerp(body, Rgb([0, 0, 0]), 0.6);
    let half = rng.gen_range(220.0..270.0);
    let top = rng.gen_range(90.0..140.0);
    rect(&mut img, cx - half, top + 60.0, cx + half, 470.0, body);
    // Windscreen: a darker trapezoid approximated by shrinking rows.
    for y in (top as u32)..((top + 60.0) as u32) {
        let t = (y as f32 - top) / 60.0;
        let hw = half * (0.7 + 0.25 * t);
        rect(
            &mut img,
            cx - hw,
            y as f32,
            cx + hw,
            y as f32 + 1.0,
            Rgb([40, 48, 60]),
        );
    }
    let lamp = Rgb([235, 235, 220]);
    fill_ellipse(&mut img, cx - half + 60.0, top + 110.0, 45.0, 18.0, lamp);
    fill_ellipse(&mut img, cx + half - 60.0, top + 110.0, 45.0, 18.0, lamp);
    let grille_top = top + 95.0;
    rect(
        &mut img,
        cx - 110.0,
        grille_top,
        cx + 110.0,
        grille_top + 60.0,
        dark,
    );
    for k in 0..5 {
        let y = grille_top + 6.0 + k as f32 * 11.0;
        rect(
            &mut img,
            cx - 105.0,
            y,
            cx + 105.0,
            y + 4.0,
            lerp(body, dark, 0.3),
        );
    }
    rect(&mut img, cx - half, 440.0, cx + half, 452.0, dark);
    img
}

/// Maps the flat plate into `quad`, four samples per pixel so the plate's edges are smooth.
fn warp_onto(img: &mut RgbImage, flat: &RgbImage, quad: [(f32, f32); 4]) {
    let (fw, fh) = (flat.width() as f32, flat.height() as f32);
    let corners = [(0.0, 0.0), (fw, 0.0), (fw, fh), (0.0, fh)];
    let Some(to_frame) = Projection::from_control_points(corners, quad) else {
        return;
    };
    let back = to_frame.invert();
    let xs = quad.iter().map(|p| p.0);
    let ys = quad.iter().map(|p| p.1);
    let x0 = xs.clone().fold(f32::MAX, f32::min).floor().max(0.0) as u32;
    let x1 = (xs.fold(f32::MIN, f32::max).ceil().max(0.0) as u32).min(WIDTH);
    let y0 = ys.clone().fold(f32::MAX, f32::min).floor().max(0.0) as u32;
    let y1 = (ys.fold(f32::MIN, f32::max).ceil().max(0.0) as u32).min(HEIGHT);
    for y in y0..y1 {
        for x in x0..x1 {
            let mut acc = [0.0f32; 3];
            let mut hits = 0.0;
            for (dx, dy) in [(0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75)] {
                let (u, v) = back * (x as f32 + dx, y as f32 + dy);
                if u < 0.0 || v < 0.0 || u >= fw || v >= fh {
                    continue;
                }
                let s = bilinear(flat, u - 0.5, v - 0.5);
                acc.iter_mut().zip(s).for_each(|(a, v)| *a += v);
                hits += 1.0;
            }
            if hits > 0.0 {
                let p = img.get_pixel_mut(x, y);
                let a = hits / 4.0;
                for (c, v) in p.0.iter_mut().zip(acc) {
                    *c = (*c as f32 * (1.0 - a) + v / 4.0).round() as u8;
                }
            }
        }
    }
}

fn bilinear(img: &RgbImage, x: f32, y: f32) -> [f32; 3] {
    let (w, h) = (img.width() as i64, img.height() as i64);
    let x = x.max(0.0);
    let y = y.max(0.0);
    let (xi, yi) = (x.floor() as i64, y.floor() as i64);
    let (fx, fy) = (x - xi as f32, y - yi as f32);
    let at = |xx: i64, yy: i64| {
        img.get_pixel(xx.clamp(0, w - 1) as u32, yy.clamp(0, h - 1) as u32)
            .0
    };
    let (a, b, c, d) = (
        at(xi, yi),
        at(xi + 1, yi),
        at(xi, yi + 1),
        at(xi + 1, yi + 1),
    );
    std::array::from_fn(|k| {
        let top = a[k] as f32 * (1.0 - fx) + b[k] as f32 * fx;
        let bottom = c[k] as f32 * (1.0 - fx) + d[k] as f32 * fx;
        top * (1.0 - fy) + bottom * fy
    })
}

fn gaussian(rng: &mut impl Rng) -> f32 {
    // Box-Muller; the lower bound keeps ln away from zero.
    let u1: f32 = rng.gen_range(1e-7..1.0);
    let u2: f32 = rng.gen_range(0.0..1.0);
    (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
}

fn add_noise(img: &mut RgbImage, sigma: f32, dead: f64, rng: &mut impl Rng) {
    for p in img.pixels_mut() {
        if dead > 0.0 && rng.gen_bool(dead) {
            *p = if rng.gen_bool(0.5) {
                Rgb([0, 0, 0])
            } else {
                Rgb([255, 255, 255])
            };
            continue;
        }
        for k in 0..3 {
            p.0[k] = (p.0[k] as f32 + sigma * gaussian(rng)).clamp(0.0, 255.0) as u8;
        }
    }
}

fn motion_blur(img: &RgbImage, len: f32, angle: f32) -> RgbImage {
    let n = len.round().max(2.0) as i32;
    let (dx, dy) = (angle.cos(), angle.sin());
    let mut out = img.clone();
    for y in 0..HEIGHT {
        for x in 0..WIDTH {
            let mut acc = [0.0f32; 3];
            for i in 0..n {
                let t = i as f32 - (n - 1) as f32 / 2.0;
                let s = bilinear(img, x as f32 + t * dx, y as f32 + t * dy);
                for k in 0..3 {
                    acc[k] += s[k];
                }
            }
            out.put_pixel(x, y, Rgb(acc.map(|v| (v / n as f32).round() as u8)));
        }
    }
    out
}

fn light(img: &mut RgbImage, gamma: f32, exposure: f32) {
    let lut: Vec<u8> = (0..256)
        .map(|v| (255.0 * (v as f32 / 255.0).powf(gamma) * exposure).clamp(0.0, 255.0) as u8)
        .collect();
    for p in img.pixels_mut() {
        p.0 = p.0.map(|v| lut[v as usize]);
    }
}

/// A soft shadow edge crossing the plate: one side keeps its light, the other drops to `depth`.
fn shadow(img: &mut RgbImage, pose: &Pose, depth: f32, rng: &mut impl Rng) {
    let theta: f32 = rng.gen_range(0.0..std::f32::consts::TAU);
    let (dx, dy) = (theta.cos(), theta.sin());
    let offset = rng.gen_range(-0.3..0.3) * pose.width;
    let soft = rng.gen_range(8.0..40.0);
    for (x, y, p) in img.enumerate_pixels_mut() {
        let d = (x as f32 - pose.centre.0) * dx + (y as f32 - pose.centre.1) * dy - offset;
        let t = 1.0 / (1.0 + (-d / soft).exp());
        let m = 1.0 - (1.0 - depth) * t;
        p.0 = p.0.map(|v| (v as f32 * m) as u8);
    }
}

fn jpeg_round_trip(img: &RgbImage, quality: u8) -> RgbImage {
    match crate::encode_jpeg(img, quality).ok().and_then(|bytes| {
        image::load_from_memory_with_format(&bytes, image::ImageFormat::Jpeg).ok()
    }) {
        Some(decoded) => decoded.to_rgb8(),
        None => img.clone(),
    }
}
