//! Plate reading: camera image in, ranked plate candidates out.
//!
//! The gateway depends only on [`PlateReader`]. [`LearnedReader`] implements it:
//!
//! - `locate`: where the plate is (colour blobs and two corner estimates for each);
//! - `learned`: each blob flattened to a small grey crop and read by a committed CRNN through
//!   tract, with a calibrated confidence and the region's grammar as a check (`docs/plates.md`).
//! - [`cli`]: the `read-plate` subcommand. The benchmark on rendered scenes is the simulator's
//!   (`parkpay-sim bench-plates`): the gateway does not depend on the scenes it draws.

pub mod cli;
mod learned;
mod locate;

pub use learned::{LearnedReader, ModelError};

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
/// Candidates are ranked by their mean confidence over all frames (a frame that did not see a
/// plate contributes zero), so one lucky frame cannot outvote a consistent majority. The burst is
/// `Confident` when its top plate was read at or above [`ACCEPT_THRESHOLD`] in at least one frame,
/// no frame read a *different* plate that confidently, and no other plate was read in more frames.
/// A reader's confidence is calibrated per frame so that a confident read is practically never
/// wrong; requiring every frame to agree would only turn glare on one frame into a held car.
pub fn vote(frames: &[Vec<PlateCandidate>]) -> (Vec<PlateCandidate>, ReadQuality) {
    struct Tally {
        candidate: PlateCandidate,
        sum: f32,
        best: f32,
        frames: usize,
    }
    let mut tally: Vec<Tally> = Vec::new();
    for cands in frames {
        for c in cands {
            match tally.iter_mut().find(|t| t.candidate.plate == c.plate) {
                Some(t) => {
                    t.sum += c.confidence;
                    t.best = t.best.max(c.confidence);
                    t.frames += 1;
                }
                None => tally.push(Tally {
                    candidate: c.clone(),
                    sum: c.confidence,
                    best: c.confidence,
                    frames: 1,
                }),
            }
        }
    }
    let n = frames.len().max(1) as f32;
    tally.sort_by(|a, b| b.sum.total_cmp(&a.sum));
    let quality = match tally.split_first() {
        None => ReadQuality::NoRead,
        Some((top, rest)) => {
            let contested = rest
                .iter()
                .any(|t| t.best >= ACCEPT_THRESHOLD || t.frames > top.frames);
            if top.best >= ACCEPT_THRESHOLD && !contested {
                ReadQuality::Confident
            } else {
                ReadQuality::LowConfidence
            }
        }
    };
    let mut ranked: Vec<PlateCandidate> = tally
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            let mut c = t.candidate;
            // The accepted plate carries the confidence that carried it; the rest their mean.
            c.confidence = if i == 0 && quality == ReadQuality::Confident {
                t.best
            } else {
                (t.sum / n).clamp(0.0, 1.0)
            };
            c
        })
        .collect();
    ranked.truncate(5);
    (ranked, quality)
}

/// What every reader must do with frames that hold no plate: nothing for blank, black and
/// degenerate frames, and no vouched plate for noise with blocks of plate colour in it.
#[cfg(test)]
pub(crate) fn assert_no_plate_in_empty_frames(reader: &dyn PlateReader) {
    use image::RgbImage;
    let blank =
        DynamicImage::ImageRgb8(RgbImage::from_pixel(640, 480, image::Rgb([255, 255, 255])));
    assert!(reader.read(&blank, None).is_empty());
    let black = DynamicImage::ImageRgb8(RgbImage::new(320, 240));
    assert!(reader.read(&black, None).is_empty());
    // Deterministic pseudo-random garbage, with blocks of plate colours among it.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let garbage = RgbImage::from_fn(640, 480, |x, y| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        if (x / 80 + y / 40) % 3 == 0 {
            image::Rgb([16, 62, 178])
        } else {
            image::Rgb([
                (state & 0xff) as u8,
                (state >> 8 & 0xff) as u8,
                (state >> 16 & 0xff) as u8,
            ])
        }
    });
    let cands = reader.read(&DynamicImage::ImageRgb8(garbage), None);
    assert!(
        cands.iter().all(|c| c.confidence < ACCEPT_THRESHOLD),
        "{cands:?}"
    );
    for (w, h) in [(1, 1), (0, 0), (3, 700), (700, 3)] {
        let tiny = DynamicImage::ImageRgb8(RgbImage::new(w, h));
        assert!(reader.read(&tiny, None).is_empty());
    }
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
    fn a_confident_read_carries_the_burst_unless_contested() {
        // Two frames say A confidently, one says B confidently: contested, never a guess.
        let frames = vec![
            vec![c("京A12345", 0.9)],
            vec![c("京A12345", 0.85)],
            vec![c("京A12346", 0.99)],
        ];
        let (ranked, q) = vote(&frames);
        assert_eq!(
            ranked[0].plate, "京A12345",
            "the consistent majority ranks first"
        );
        assert_eq!(q, ReadQuality::LowConfidence);
        // One confident frame, the others unsure of the same plate or blank: accepted.
        let frames = vec![vec![c("京A12345", 0.92)], vec![c("京A12345", 0.4)], vec![]];
        let (ranked, q) = vote(&frames);
        assert_eq!(
            (ranked[0].plate.as_str(), q),
            ("京A12345", ReadQuality::Confident)
        );
        assert!((ranked[0].confidence - 0.92).abs() < 1e-6);
        // A plate read (unsurely) in more frames than the confident one contests it.
        let frames = vec![
            vec![c("京A12345", 0.95)],
            vec![c("京A12845", 0.5)],
            vec![c("京A12845", 0.6)],
        ];
        assert_eq!(vote(&frames).1, ReadQuality::LowConfidence);
        // Nothing confident anywhere: low confidence.
        assert_eq!(
            vote(&[vec![c("京A12345", 0.7)], vec![c("京A12345", 0.75)]]).1,
            ReadQuality::LowConfidence
        );
        assert_eq!(vote(&[vec![], vec![]]).1, ReadQuality::NoRead);
    }
}
