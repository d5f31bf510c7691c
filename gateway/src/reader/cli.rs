//! The reader's subcommand: `read-plate`, for the camera snapshots a person points it at. (The
//! benchmark on rendered scenes, `parkpay-sim bench-plates`, lives with the simulator, which
//! draws them.)

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use serde_json::json;

use super::{LearnedReader, PlateReader, ACCEPT_THRESHOLD};

#[derive(Debug, clap::Args)]
pub struct ReadPlateArgs {
    /// Image files (PNG or JPEG).
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn read_plate(args: &ReadPlateArgs) -> anyhow::Result<()> {
    let reader = LearnedReader::new()?;
    let mut out = std::io::stdout().lock();
    for path in &args.images {
        // One unreadable file (truncated, not an image) must not cost the reads of the others.
        let img = match image::open(path) {
            Ok(img) => img,
            Err(e) => {
                if args.json {
                    let line = json!({
                        "file": path.display().to_string(),
                        "plate": null,
                        "best_guess": null,
                        "colour": null,
                        "confidence": 0.0,
                        "ms": 0.0,
                        "error": e.to_string(),
                    });
                    writeln!(out, "{line}")?;
                } else {
                    writeln!(out, "{}\t-\t-\t0.00\terror: {e}", path.display())?;
                }
                continue;
            }
        };
        let t = Instant::now();
        let cands = reader.read(&img, None);
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        let top = cands.first();
        if args.json {
            // `plate` is only ever a reading the reader vouches for; anything less is a guess.
            let vouched = top.filter(|c| c.confidence >= ACCEPT_THRESHOLD);
            let guess = top.filter(|c| c.confidence < ACCEPT_THRESHOLD);
            let line = json!({
                "file": path.display().to_string(),
                "plate": vouched.map(|c| c.plate.clone()),
                "best_guess": guess.map(|c| c.plate.clone()),
                "colour": top.map(|c| c.colour.as_str()),
                "confidence": top.map_or(0.0, |c| c.confidence),
                "ms": (ms * 100.0).round() / 100.0,
            });
            writeln!(out, "{line}")?;
        } else {
            match top {
                Some(c) => writeln!(
                    out,
                    "{}\t{}\t{}\t{:.2}\t{:.1} ms",
                    path.display(),
                    c.plate,
                    c.colour.as_str(),
                    c.confidence,
                    ms
                )?,
                None => writeln!(out, "{}\t-\t-\t0.00\t{:.1} ms", path.display(), ms)?,
            }
        }
    }
    Ok(())
}
