//! `parkpay-sim bench-quote`: what pricing a stay costs the server, against the reference reading
//! of the tariff rules (`reference_tariff::fee`, which walks every billing unit) measured in the
//! same run. The engine adds up alike-priced units in one step, so its cost grows with the days
//! and band changes of a stay, not with its billing units; every total is checked against the
//! reference while it is timed.

use std::time::Instant;

use chrono::{DateTime, TimeDelta, Utc};
use parkpay_server::tariff::{quote, Tariff};
use serde_json::json;

use crate::reference_tariff;

#[derive(Debug, clap::Args)]
pub struct BenchQuoteArgs {
    /// Timed runs per case; the median is reported.
    #[arg(long, default_value_t = 21)]
    pub reps: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

fn median_us(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn time_us(reps: usize, mut f: impl FnMut() -> i64) -> (f64, i64) {
    let mut out = 0;
    let samples = (0..reps.max(1))
        .map(|_| {
            let t = Instant::now();
            out = std::hint::black_box(f());
            t.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    (median_us(samples), out)
}

pub fn bench_quote(args: &BenchQuoteArgs) -> anyhow::Result<()> {
    let entry: DateTime<Utc> = "2026-11-25T01:07:13Z".parse()?;
    let mut rows = Vec::new();
    for unit_minutes in [1u32, 15, 30] {
        let mut tariff = Tariff::example_cn();
        tariff.unit_minutes = unit_minutes;
        for days in [1i64, 30, 400] {
            let exit = entry + TimeDelta::days(days) + TimeDelta::minutes(17);
            let (engine, total) = time_us(args.reps, || {
                quote(&tariff, entry, exit).map_or(-1, |q| q.total.minor)
            });
            let (reference, expected) =
                time_us(args.reps, || reference_tariff::fee(&tariff, entry, exit));
            anyhow::ensure!(
                total == expected,
                "{days} days at {unit_minutes}-minute units: engine {total}, reference {expected}"
            );
            rows.push(json!({
                "unit_minutes": unit_minutes, "days": days, "total_minor": total,
                "engine_us": engine, "reference_us": reference, "ratio": engine / reference,
            }));
        }
    }
    if args.json {
        println!("{}", json!({ "reps": args.reps, "cases": rows }));
        return Ok(());
    }
    println!(
        "median of {} runs; reference = reference_tariff::fee, per unit",
        args.reps
    );
    println!("unit   days   engine µs   reference µs   engine/reference   total");
    for r in &rows {
        println!(
            "{:>3} m {:>6} {:>11.1} {:>14.1} {:>18.4} {:>9}",
            r["unit_minutes"].as_u64().unwrap_or(0),
            r["days"].as_i64().unwrap_or(0),
            r["engine_us"].as_f64().unwrap_or(0.0),
            r["reference_us"].as_f64().unwrap_or(0.0),
            r["ratio"].as_f64().unwrap_or(0.0),
            r["total_minor"].as_i64().unwrap_or(0)
        );
    }
    Ok(())
}
