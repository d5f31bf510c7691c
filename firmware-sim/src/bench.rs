//! `parkpay-sim bench-plates`: the gateway's plate reader measured on scenes drawn by
//! `parkpay-scenes`, the figures in `docs/plates.md`. With `--dump`, every scene is also written
//! as PNG with a `truth.tsv`, for a peer reader to run over the very same pixels; with `--dir`,
//! the scenes are read back from such a folder instead (the held-out-typeface set that
//! `train/plates/render.py scenes` writes has the same layout).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use image::DynamicImage;
use parkpay_gateway::reader::{LearnedReader, PlateReader, ACCEPT_THRESHOLD};
use parkpay_protocol::plate::edit_distance;
use parkpay_scenes::{encode_png, Condition, FontChoice, PlateFormat, Scene};
use serde_json::json;

#[derive(Debug, clap::Args)]
pub struct BenchPlatesArgs {
    /// Scenes per format and condition.
    #[arg(long, default_value_t = 20)]
    pub per_cell: u64,
    /// First scene seed; scene i of a cell uses seed + i.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Rendering typeface: primary or alternate.
    #[arg(long, default_value = "primary")]
    pub font: String,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Also write every scene as PNG plus `truth.tsv` into this folder.
    #[arg(long)]
    pub dump: Option<PathBuf>,
    /// Read the scenes from this folder's `truth.tsv` and PNGs instead of drawing them.
    #[arg(long, conflicts_with = "dump")]
    pub dir: Option<PathBuf>,
    /// Also print one row per format and condition.
    #[arg(long)]
    pub cells: bool,
    /// Also write each scene's top read to this file, one tab-separated line per scene
    /// (format, condition, true plate, read or empty, confidence), for fitting a threshold.
    #[arg(long)]
    pub reads: Option<PathBuf>,
}

/// Tallies of one cell (or of a whole row or the total).
#[derive(Debug, Default, Clone)]
struct Tally {
    n: u64,
    exact: u64,
    chars: f64,
    confident_right: u64,
    wrong: u64,
    no_read: u64,
    ms: Vec<f64>,
}

impl Tally {
    fn add(&mut self, other: &Tally) {
        self.n += other.n;
        self.exact += other.exact;
        self.chars += other.chars;
        self.confident_right += other.confident_right;
        self.wrong += other.wrong;
        self.no_read += other.no_read;
        self.ms.extend(&other.ms);
    }

    fn pct(&self, k: u64) -> f64 {
        100.0 * k as f64 / self.n.max(1) as f64
    }

    fn quantile(&self, q: f64) -> f64 {
        let mut v = self.ms.clone();
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            return 0.0;
        }
        v[((v.len() - 1) as f64 * q).round() as usize]
    }

    fn json(&self) -> serde_json::Value {
        let r = |x: f64| (x * 10.0).round() / 10.0;
        json!({
            "n": self.n,
            "exact": r(self.pct(self.exact)),
            "char_accuracy": r(100.0 * self.chars / self.n.max(1) as f64),
            "confident_correct": r(self.pct(self.confident_right)),
            "wrong": r(self.pct(self.wrong)),
            "no_read": r(self.pct(self.no_read)),
            "p50_ms": r(self.quantile(0.5)),
            "p95_ms": r(self.quantile(0.95)),
        })
    }

    fn row(&self, name: &str) -> String {
        format!(
            "{:<22} {:>5} {:>7.1} {:>7.1} {:>7.1} {:>7.2} {:>7.1} {:>7.1} {:>7.1}",
            name,
            self.n,
            self.pct(self.exact),
            100.0 * self.chars / self.n.max(1) as f64,
            self.pct(self.confident_right),
            self.pct(self.wrong),
            self.pct(self.no_read),
            self.quantile(0.5),
            self.quantile(0.95)
        )
    }
}

pub fn bench_plates(args: &BenchPlatesArgs) -> anyhow::Result<()> {
    let font = FontChoice::parse(&args.font)
        .with_context(|| format!("unknown font {:?}: primary or alternate", args.font))?;
    let reader = LearnedReader::new()?;
    if let Some(dir) = &args.dump {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut truth = String::from("file\tplate\tformat\tcondition\n");
    let mut cells: Vec<(PlateFormat, Condition, Tally)> = PlateFormat::ALL
        .iter()
        .flat_map(|&f| {
            Condition::ALL
                .iter()
                .map(move |&c| (f, c, Tally::default()))
        })
        .collect();
    let mut reads = String::from("format\tcondition\tplate\tread\tconfidence\n");
    let mut measure =
        |format: PlateFormat, condition: Condition, plate: &str, img: DynamicImage| {
            let start = Instant::now();
            let cands = reader.read(&img, None);
            let ms = start.elapsed().as_secs_f64() * 1000.0;
            let top = cands.first();
            reads.push_str(&format!(
                "{}\t{}\t{plate}\t{}\t{:.6}\n",
                format.as_str(),
                condition.as_str(),
                top.map_or("", |c| c.plate.as_str()),
                top.map_or(0.0, |c| c.confidence)
            ));
            if let Some(cell) = cells.iter_mut().find(|x| x.0 == format && x.1 == condition) {
                cell.2.ms.push(ms);
                score(
                    &mut cell.2,
                    plate,
                    cands.first().map(|c| (c.plate.as_str(), c.confidence)),
                );
            }
        };
    if let Some(dir) = &args.dir {
        let tsv = dir.join("truth.tsv");
        let text =
            std::fs::read_to_string(&tsv).with_context(|| format!("reading {}", tsv.display()))?;
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split('\t').collect();
            let [file, plate, format, condition] = f[..] else {
                anyhow::bail!("{}: expected four columns in {line:?}", tsv.display());
            };
            let format = PlateFormat::ALL
                .into_iter()
                .find(|x| x.as_str() == format)
                .with_context(|| format!("unknown format {format:?}"))?;
            let condition = Condition::ALL
                .into_iter()
                .find(|x| x.as_str() == condition)
                .with_context(|| format!("unknown condition {condition:?}"))?;
            let path = dir.join(file);
            let img = image::open(&path).with_context(|| format!("reading {}", path.display()))?;
            measure(format, condition, plate, img);
        }
    } else {
        for format in PlateFormat::ALL {
            for condition in Condition::ALL {
                for i in 0..args.per_cell {
                    let scene = Scene::generate(format, condition, args.seed + i, font);
                    if let Some(dir) = &args.dump {
                        let name = format!(
                            "{}-{}-{}.png",
                            format.as_str(),
                            condition.as_str(),
                            args.seed + i
                        );
                        std::fs::write(dir.join(&name), encode_png(&scene.image)?)?;
                        truth.push_str(&format!(
                            "{name}\t{}\t{}\t{}\n",
                            scene.plate,
                            format.as_str(),
                            condition.as_str()
                        ));
                    }
                    measure(
                        format,
                        condition,
                        &scene.plate,
                        DynamicImage::ImageRgb8(scene.image),
                    );
                }
            }
        }
    }
    if let Some(dir) = &args.dump {
        std::fs::write(dir.join("truth.tsv"), truth)?;
    }
    if let Some(path) = &args.reads {
        std::fs::write(path, reads).with_context(|| format!("writing {}", path.display()))?;
    }
    let mut overall = Tally::default();
    cells.iter().for_each(|(_, _, t)| overall.add(t));
    let by_condition: Vec<(Condition, Tally)> = Condition::ALL
        .iter()
        .map(|&c| {
            let mut t = Tally::default();
            cells.iter().filter(|x| x.1 == c).for_each(|x| t.add(&x.2));
            (c, t)
        })
        .collect();
    let by_format: Vec<(PlateFormat, Tally)> = PlateFormat::ALL
        .iter()
        .map(|&f| {
            let mut t = Tally::default();
            cells.iter().filter(|x| x.0 == f).for_each(|x| t.add(&x.2));
            (f, t)
        })
        .collect();
    if args.json {
        let out = json!({
            "font": font.as_str(),
            "per_cell": args.per_cell,
            "seed": args.seed,
            "threshold": ACCEPT_THRESHOLD,
            "cells": cells.iter().map(|(f, c, t)| {
                let mut v = t.json();
                v["format"] = json!(f.as_str());
                v["condition"] = json!(c.as_str());
                v
            }).collect::<Vec<_>>(),
            "by_condition": by_condition.iter().map(|(c, t)| (c.as_str().to_string(), t.json())).collect::<serde_json::Map<_, _>>(),
            "by_format": by_format.iter().map(|(f, t)| (f.as_str().to_string(), t.json())).collect::<serde_json::Map<_, _>>(),
            "overall": overall.json(),
        });
        println!("{out}");
        return Ok(());
    }
    match &args.dir {
        Some(dir) => println!(
            "scenes from {}, accept threshold {ACCEPT_THRESHOLD}",
            dir.display()
        ),
        None => println!(
            "font {}, {} scenes per cell, seeds {}.., accept threshold {ACCEPT_THRESHOLD}",
            font.as_str(),
            args.per_cell,
            args.seed
        ),
    }
    let header = format!(
        "{:<22} {:>5} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7}",
        "cell", "n", "exact%", "char%", "conf%", "wrong%", "noread%", "p50ms", "p95ms"
    );
    println!("{header}");
    for (c, t) in &by_condition {
        println!("{}", t.row(c.as_str()));
    }
    for (f, t) in &by_format {
        println!("{}", t.row(f.as_str()));
    }
    println!("{}", overall.row("overall"));
    if args.cells {
        for (f, c, t) in &cells {
            println!("{}", t.row(&format!("{} {}", f.as_str(), c.as_str())));
        }
    }
    Ok(())
}

/// Scores one read: `exact` is the top candidate at any confidence, `wrong` a confident read of
/// another plate, `no_read` no confident read at all.
fn score(t: &mut Tally, truth: &str, top: Option<(&str, f32)>) {
    t.n += 1;
    let Some((plate, conf)) = top else {
        t.no_read += 1;
        return;
    };
    let strip = |s: &str| s.chars().filter(|c| *c != ' ').collect::<String>();
    let (a, b) = (strip(truth), strip(plate));
    let len = a.chars().count().max(1);
    t.chars += 1.0 - (edit_distance(&a, &b).min(len) as f64 / len as f64);
    let right = plate == truth;
    t.exact += u64::from(right);
    if conf >= ACCEPT_THRESHOLD {
        if right {
            t.confident_right += 1;
        } else {
            t.wrong += 1;
        }
    } else {
        t.no_read += 1;
    }
}
