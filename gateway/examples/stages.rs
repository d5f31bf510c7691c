//! Which stage loses a read: the full reader against its recogniser alone on the scene's true plate
//! corners. `stages PER_CELL SEED FONT` prints, per condition and overall, the share of scenes read
//! exactly (and confidently) by each.
use image::DynamicImage;
use parkpay_gateway::reader::{PlateReader, PureReader, ACCEPT_THRESHOLD};
use parkpay_scenes::{Condition, FontChoice, PlateFormat, Scene};

#[derive(Default)]
struct Count {
    n: u32,
    full_exact: u32,
    full_conf: u32,
    true_exact: u32,
    true_conf: u32,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(20);
    let seed: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1);
    let font = args
        .get(3)
        .and_then(|f| FontChoice::parse(f))
        .unwrap_or_default();
    let reader = PureReader::new();
    let mut rows: Vec<(String, Count)> = Vec::new();
    let mut total = Count::default();
    let mut by_format: Vec<(String, Count)> = PlateFormat::ALL
        .iter()
        .map(|f| (f.as_str().to_string(), Count::default()))
        .collect();
    for condition in Condition::ALL {
        let mut c = Count::default();
        for (fi, format) in PlateFormat::ALL.into_iter().enumerate() {
            for i in 0..n {
                let s = Scene::generate(format, condition, seed + i, font);
                let img = DynamicImage::ImageRgb8(s.image.clone());
                let full = reader.read(&img, None).into_iter().next();
                let (fe, fc) = full.map_or((false, false), |c| {
                    (
                        c.plate == s.plate,
                        c.plate == s.plate && c.confidence >= ACCEPT_THRESHOLD,
                    )
                });
                let at = reader.read_at(&img, s.plate_quad, s.colour);
                let (te, tc) = at.map_or((false, false), |(p, conf)| {
                    (p == s.plate, p == s.plate && conf >= ACCEPT_THRESHOLD)
                });
                for k in [&mut c, &mut total, &mut by_format[fi].1] {
                    k.n += 1;
                    k.full_exact += u32::from(fe);
                    k.full_conf += u32::from(fc);
                    k.true_exact += u32::from(te);
                    k.true_conf += u32::from(tc);
                }
            }
        }
        rows.push((condition.as_str().to_string(), c));
    }
    rows.extend(by_format);
    rows.push(("overall".into(), total));
    println!(
        "font {}, {n} scenes per cell, seeds {seed}..",
        font.as_str()
    );
    println!(
        "{:<10} {:>5} {:>12} {:>11} {:>12} {:>11}",
        "cell", "n", "full exact%", "full conf%", "truth exact%", "truth conf%"
    );
    for (name, c) in rows {
        let p = |k: u32| 100.0 * k as f64 / c.n.max(1) as f64;
        println!(
            "{:<10} {:>5} {:>12.1} {:>11.1} {:>12.1} {:>11.1}",
            name,
            c.n,
            p(c.full_exact),
            p(c.full_conf),
            p(c.true_exact),
            p(c.true_conf)
        );
    }
}
