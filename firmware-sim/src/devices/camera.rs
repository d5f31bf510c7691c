//! The lane camera. A smart camera reads the plate itself and publishes `PlateRead`; a frame
//! camera publishes a burst of images and leaves reading to the gateway.

use std::fmt;
use std::sync::Mutex;

use base64::Engine;
use chrono::{DateTime, Utc};
use parkpay_protocol::{DeviceId, Frame, Plate, PlateCandidate, PlateColour, PlateRead, Topic};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rumqttc::QoS;

use crate::error::SimError;
use crate::mqtt::{DeviceContext, Link};
use crate::plates;

/// Renders the images of one passage. Implemented by a plate renderer outside this crate; the
/// seed makes a burst reproducible.
pub trait FrameSource: Send + Sync {
    /// Encoded images (PNG or JPEG), in capture order.
    fn frames(&self, plate: &str, colour: PlateColour, seed: u64) -> Vec<Vec<u8>>;
}

pub enum CameraMode {
    /// The camera reads plates on board and publishes `PlateRead`.
    Smart,
    /// The camera publishes `Frame` bursts rendered by the source.
    Frames(Box<dyn FrameSource>),
}

impl fmt::Debug for CameraMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CameraMode::Smart => f.write_str("Smart"),
            CameraMode::Frames(_) => f.write_str("Frames(..)"),
        }
    }
}

#[derive(Debug)]
pub struct CameraConfig {
    pub mode: CameraMode,
    /// Smart mode: chance that a read swaps one character for a confusable one, confidently.
    pub misread_rate: f64,
    /// Smart mode: chance that a vehicle is seen and no plate is read.
    pub no_read_rate: f64,
    /// Smart mode: the confidence every read reports; random in 0.90..0.99 when unset.
    pub confidence: Option<f32>,
    pub seed: u64,
}

impl Default for CameraConfig {
    fn default() -> Self {
        CameraConfig {
            mode: CameraMode::Smart,
            misread_rate: 0.0,
            no_read_rate: 0.0,
            confidence: None,
            seed: 0,
        }
    }
}

/// What the camera saw and what it told the gateway.
#[derive(Debug, Clone, PartialEq)]
pub struct Capture {
    /// The physical instant of the capture, on the shared clock.
    pub captured_at: DateTime<Utc>,
    /// The top candidate published (smart mode); `None` for a no-read or a frame burst.
    pub read: Option<String>,
    pub misread: bool,
    /// Frames published (frame mode).
    pub frames: u32,
}

/// What a smart camera decides to publish for one plate, before any I/O.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SmartRead {
    pub candidates: Vec<PlateCandidate>,
    pub misread: bool,
}

pub(crate) fn smart_read(
    rng: &mut impl Rng,
    plate: &str,
    colour: PlateColour,
    misread_rate: f64,
    no_read_rate: f64,
) -> SmartRead {
    if rng.gen_bool(no_read_rate.clamp(0.0, 1.0)) {
        return SmartRead {
            candidates: Vec::new(),
            misread: false,
        };
    }
    // Real misreads come with the same high confidence as good reads: that is what makes them
    // dangerous.
    let confidence = rng.gen_range(0.90f32..0.99);
    let wrong = if rng.gen_bool(misread_rate.clamp(0.0, 1.0)) {
        plates::misread(rng, plate)
    } else {
        None
    };
    SmartRead {
        misread: wrong.is_some(),
        candidates: vec![PlateCandidate {
            plate: wrong.unwrap_or_else(|| plate.to_string()),
            confidence,
            colour,
        }],
    }
}

#[derive(Debug)]
pub struct Camera {
    link: Link,
    mode: CameraMode,
    misread_rate: f64,
    no_read_rate: f64,
    confidence: Mutex<Option<f32>>,
    rng: Mutex<ChaCha8Rng>,
}

impl Camera {
    /// Returns once connected; the camera subscribes to nothing.
    pub async fn start(
        ctx: &DeviceContext,
        id: DeviceId,
        cfg: CameraConfig,
    ) -> Result<Camera, SimError> {
        let (link, _inbox) = Link::start(ctx, id, Vec::new()).await?;
        Ok(Camera {
            link,
            mode: cfg.mode,
            misread_rate: cfg.misread_rate,
            no_read_rate: cfg.no_read_rate,
            confidence: Mutex::new(cfg.confidence),
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(cfg.seed)),
        })
    }

    pub fn id(&self) -> &DeviceId {
        self.link.device()
    }

    /// Smart mode: report this confidence on every read from now on (`None`: random, 0.90..0.99).
    pub fn set_confidence(&self, confidence: Option<f32>) {
        *self.confidence.lock().unwrap_or_else(|e| e.into_inner()) = confidence;
    }

    /// Captures a vehicle now and publishes what the camera makes of it.
    pub async fn capture(&self, plate: &Plate, colour: PlateColour) -> Result<Capture, SimError> {
        let p = self.link.publisher();
        let captured_at = p.now();
        let device = p.device().clone();
        match &self.mode {
            CameraMode::Smart => {
                let read = {
                    // A poisoned lock only means another capture panicked; the RNG is still fine.
                    let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
                    let mut read = smart_read(
                        &mut *rng,
                        plate.as_str(),
                        colour,
                        self.misread_rate,
                        self.no_read_rate,
                    );
                    let fixed = *self.confidence.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(c) = fixed {
                        read.candidates.iter_mut().for_each(|r| r.confidence = c);
                    }
                    read
                };
                let top = read.candidates.first().map(|c| c.plate.clone());
                let msg = PlateRead {
                    device: device.clone(),
                    captured_at,
                    candidates: read.candidates,
                };
                p.publish(&Topic::PlateRead(device), &msg, QoS::AtLeastOnce, false)
                    .await?;
                Ok(Capture {
                    captured_at,
                    read: top,
                    misread: read.misread,
                    frames: 0,
                })
            }
            CameraMode::Frames(source) => {
                let seed = self
                    .rng
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .gen::<u64>();
                let images = source.frames(plate.as_str(), colour, seed);
                let of = u32::try_from(images.len()).unwrap_or(u32::MAX);
                // One car at a time per lane, so the capture instant names the burst uniquely.
                let burst = u64::try_from(captured_at.timestamp_millis()).unwrap_or_default();
                for (seq, image) in images.iter().enumerate() {
                    let msg = Frame {
                        device: device.clone(),
                        captured_at,
                        burst,
                        seq: u32::try_from(seq).unwrap_or(u32::MAX),
                        of,
                        format: image_format(image).to_string(),
                        image: base64::engine::general_purpose::STANDARD.encode(image),
                    };
                    // QoS 0 by contract: a lost frame is replaced by the next one.
                    p.publish(&Topic::Frame(device.clone()), &msg, QoS::AtMostOnce, false)
                        .await?;
                }
                Ok(Capture {
                    captured_at,
                    read: None,
                    misread: false,
                    frames: of,
                })
            }
        }
    }

    pub async fn shutdown(self) {
        self.link.shutdown().await;
    }
}

fn image_format(bytes: &[u8]) -> &'static str {
    if bytes.starts_with(&[0xff, 0xd8]) {
        "jpeg"
    } else {
        "png"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smart_reads_follow_the_configured_rates() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let (mut misreads, mut no_reads) = (0, 0);
        for _ in 0..10_000 {
            let r = smart_read(&mut rng, "京A12345", PlateColour::Blue, 0.1, 0.05);
            match r.candidates.first() {
                None => no_reads += 1,
                Some(c) => {
                    assert!(c.confidence >= 0.9, "misreads stay confident");
                    if r.misread {
                        misreads += 1;
                        assert_ne!(c.plate, "京A12345");
                    } else {
                        assert_eq!(c.plate, "京A12345");
                    }
                }
            }
        }
        assert!((400..600).contains(&no_reads), "{no_reads} no-reads");
        assert!((800..1100).contains(&misreads), "{misreads} misreads");
    }
}
