//! `parkpay-sim bench-plot`: the curve of decision p99 against offered rate, one line per backend
//! and number of instances, with the floor measured in the same runs beside it, drawn from the
//! JSON lines `bench-load --append FILE` collected.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use plotters::prelude::*;

#[derive(Debug, Clone, clap::Args)]
pub struct BenchPlotArgs {
    /// JSON lines written by `bench-load --append`.
    pub results: PathBuf,
    /// The SVG to write.
    #[arg(long, default_value = "docs/performance.svg")]
    pub out: PathBuf,
}

#[derive(Debug, Clone, serde::Deserialize)]
struct Run {
    backend: String,
    #[serde(default = "one")]
    instances: u32,
    offered: u32,
    /// `null` when nothing was decided.
    p99_ms: Option<f64>,
    floor_p99_ms: Option<f64>,
}

fn one() -> u32 {
    1
}

/// One line of the plot: (offered, p99) points, sorted by offered rate; several runs at the same
/// rate are summarised by their median.
type Series = BTreeMap<String, Vec<(f64, f64)>>;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn series(runs: &[Run]) -> (Series, Series) {
    let mut load: BTreeMap<String, BTreeMap<u32, Vec<f64>>> = BTreeMap::new();
    let mut floor: BTreeMap<String, BTreeMap<u32, Vec<f64>>> = BTreeMap::new();
    for r in runs {
        let name = format!(
            "{}, {} instance{}",
            r.backend,
            r.instances,
            if r.instances == 1 { "" } else { "s" }
        );
        load.entry(name.clone())
            .or_default()
            .entry(r.offered)
            .or_default()
            .push(r.p99_ms.unwrap_or(f64::NAN));
        floor
            .entry(format!("floor: {}", r.backend))
            .or_default()
            .entry(r.offered)
            .or_default()
            .push(r.floor_p99_ms.unwrap_or(f64::NAN));
    }
    let flatten = |m: BTreeMap<String, BTreeMap<u32, Vec<f64>>>| -> Series {
        m.into_iter()
            .map(|(k, v)| {
                let pts = v
                    .into_iter()
                    .map(|(x, ys)| (f64::from(x), median(ys)))
                    .filter(|(_, y)| y.is_finite() && *y > 0.0)
                    .collect();
                (k, pts)
            })
            .collect()
    };
    (flatten(load), flatten(floor))
}

fn read(path: &Path) -> anyhow::Result<Vec<Run>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut runs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let run: Run = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not a bench-load result", path.display(), i + 1))?;
        runs.push(run);
    }
    if runs.is_empty() {
        bail!("{} holds no results", path.display());
    }
    Ok(runs)
}

pub fn bench_plot(args: &BenchPlotArgs) -> anyhow::Result<()> {
    let runs = read(&args.results)?;
    let (load, floor) = series(&runs);
    let all = load.values().chain(floor.values()).flatten();
    let (mut x_max, mut y_min, mut y_max) = (1.0f64, f64::MAX, 1.0f64);
    for (x, y) in all {
        x_max = x_max.max(*x);
        y_min = y_min.min(*y);
        y_max = y_max.max(*y);
    }
    let y_min = (y_min / 2.0).max(0.01);
    let root = SVGBackend::new(&args.out, (900, 560)).into_drawing_area();
    let draw = |e: DrawingAreaErrorKind<_>| anyhow::anyhow!("cannot draw the plot: {e:?}");
    root.fill(&WHITE).map_err(draw)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Decision p99 at the gateway vs offered events/s (floor dashed)",
            ("sans-serif", 20),
        )
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(0f64..x_max * 1.05, (y_min..y_max * 2.0).log_scale())
        .map_err(draw)?;
    chart
        .configure_mesh()
        .x_desc("offered events/s")
        .y_desc("p99 ms (log)")
        .draw()
        .map_err(draw)?;
    let palette = [
        RGBColor(31, 119, 180),
        RGBColor(214, 39, 40),
        RGBColor(44, 160, 44),
        RGBColor(148, 103, 189),
        RGBColor(255, 127, 14),
        RGBColor(23, 190, 207),
    ];
    for (i, (name, pts)) in load.iter().enumerate() {
        let colour = palette[i % palette.len()];
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), colour.stroke_width(2)))
            .map_err(draw)?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], colour));
        chart
            .draw_series(pts.iter().map(|p| Circle::new(*p, 3, colour.filled())))
            .map_err(draw)?;
    }
    let greys = [RGBColor(90, 90, 90), RGBColor(170, 170, 170)];
    for (i, (name, pts)) in floor.iter().enumerate() {
        let grey = greys[i % greys.len()];
        chart
            .draw_series(DashedLineSeries::new(
                pts.iter().copied(),
                4,
                4,
                grey.stroke_width(1),
            ))
            .map_err(draw)?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], grey));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(draw)?;
    root.present().map_err(draw)?;
    println!(
        "{} runs, {} lines -> {}",
        runs.len(),
        load.len() + floor.len(),
        args.out.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_at_one_rate_are_summarised_by_their_median_per_backend_and_instances() {
        let run = |backend: &str, instances, offered, p99_ms| Run {
            backend: backend.into(),
            instances,
            offered,
            p99_ms: Some(p99_ms),
            floor_p99_ms: Some(1.0),
        };
        let (load, floor) = series(&[
            run("a", 1, 100, 5.0),
            run("a", 1, 100, 9.0),
            run("a", 1, 100, 6.0),
            run("a", 2, 100, 7.0),
            run("a", 1, 50, f64::NAN),
        ]);
        assert_eq!(load["a, 1 instance"], vec![(100.0, 6.0)]);
        assert_eq!(load["a, 2 instances"], vec![(100.0, 7.0)]);
        assert_eq!(floor["floor: a"], vec![(50.0, 1.0), (100.0, 1.0)]);
    }
}
