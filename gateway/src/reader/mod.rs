//! Plate reading: camera image in, ranked plate candidates out.
//!
//! The gateway depends only on [`PlateReader`]; the pure-Rust reader lives beside it and a learned
//! recogniser can sit behind a cargo feature.
//!
//! - [`PureReader`] (in `pure`): colour blobs -> rectified plate -> glyph grid -> template
//!   classification -> layout correction -> calibrated confidence. Start reading there.
//! - `locate`: where the plate is; `glyphs`: the character models and their features.
//! - [`cli`]: the `read-plate` and `bench-plates` subcommands, the benchmark drawing its scenes with
//!   `parkpay-scenes`.

pub mod cli;
mod glyphs;
mod locate;
mod pure;

pub use pure::PureReader;

use image::DynamicImage;
use parkpay_protocol::{PlateCandidate, ReadQuality};

/// A rectangle of the frame where plates appear, in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Roi {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

/// Reads plates from one frame.
pub trait PlateReader: Send + Sync {
    /// Candidates best first, each with a calibrated confidence in 0..=1. Empty for no plate.
    /// Must not panic on any image, however blank or garbled.
    fn read(&self, image: &DynamicImage, roi: Option<Roi>) -> Vec<PlateCandidate>;
}

/// Confidence at or above which a read is trusted enough to charge somebody for it.
pub const ACCEPT_THRESHOLD: f32 = 0.80;

/// Combines the reads of one passage's frames into ranked candidates and a quality verdict.
///
/// Each frame's candidates vote with their confidence; a plate's score is the mean over all
/// frames (a frame that did not see it contributes zero), so one lucky frame cannot outvote a
/// consistent majority.
pub fn vote(frames: &[Vec<PlateCandidate>]) -> (Vec<PlateCandidate>, ReadQuality) {
    let mut tally: Vec<(PlateCandidate, f32)> = Vec::new();
    for cands in frames {
        for c in cands {
            match tally.iter_mut().find(|(t, _)| t.plate == c.plate) {
                Some((_, score)) => *score += c.confidence,
                None => tally.push((c.clone(), c.confidence)),
            }
        }
    }
    let n = frames.len().max(1) as f32;
    let mut ranked: Vec<PlateCandidate> = tally
        .into_iter()
        .map(|(mut c, score)| {
            c.confidence = (score / n).clamp(0.0, 1.0);
            c
        })
        .collect();
    ranked.sort_by(|a, b| b.confidence.total_cmp(&a.confidence));
    ranked.truncate(5);
    let quality = match ranked.first() {
        None => ReadQuality::NoRead,
        Some(top) if top.confidence >= ACCEPT_THRESHOLD => ReadQuality::Confident,
        Some(_) => ReadQuality::LowConfidence,
    };
    (ranked, quality)
}

#[cfg(test)]
mod tests {
    use super::*;
    use parkpay_protocol::PlateColour;

    fn c(p: &str, conf: f32) -> PlateCandidate {
        PlateCandidate {
            plate: p.into(),
            confidence: conf,
            colour: PlateColour::Blue,
        }
    }

    #[test]
    fn a_consistent_majority_beats_one_confident_outlier() {
        let frames = vec![
            vec![c("京A12345", 0.9)],
            vec![c("京A12345", 0.85)],
            vec![c("京A12346", 0.99)],
        ];
        let (ranked, q) = vote(&frames);
        assert_eq!(ranked[0].plate, "京A12345");
        assert_eq!(
            q,
            ReadQuality::LowConfidence,
            "0.58 mean is below the threshold"
        );
        let (ranked, q) = vote(&[vec![c("京A12345", 0.9)], vec![c("京A12345", 0.95)]]);
        assert_eq!(
            (ranked[0].plate.as_str(), q),
            ("京A12345", ReadQuality::Confident)
        );
        assert_eq!(vote(&[vec![], vec![]]).1, ReadQuality::NoRead);
    }
}
