//! A plain camera's eye: renders the car in front of it with `parkpay-scenes` and hands the
//! gateway JPEG frames, as a real 640x480 barrier camera would.

use parkpay_protocol::PlateColour;
use parkpay_scenes::{encode_jpeg, format_of, Condition, FontChoice, Scene};

use super::FrameSource;

/// Renders bursts of frames of one plate under one condition.
#[derive(Debug, Clone)]
pub struct SceneCamera {
    pub condition: Condition,
    pub font: FontChoice,
    /// Frames per burst; the gateway votes across them.
    pub frames: u32,
    pub jpeg_quality: u8,
}

impl Default for SceneCamera {
    fn default() -> Self {
        SceneCamera {
            condition: Condition::Clean,
            font: FontChoice::Primary,
            frames: 3,
            jpeg_quality: 85,
        }
    }
}

impl FrameSource for SceneCamera {
    fn frames(&self, plate: &str, colour: PlateColour, seed: u64) -> Vec<Vec<u8>> {
        let Some(format) = format_of(plate, colour) else {
            return Vec::new();
        };
        (0..u64::from(self.frames))
            .filter_map(|i| {
                // Each frame of the burst is a slightly different view: the car moves, light flickers.
                let scene = Scene::of_plate(
                    format,
                    plate,
                    colour,
                    self.condition,
                    seed.wrapping_add(i),
                    self.font,
                );
                encode_jpeg(&scene.image, self.jpeg_quality).ok()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_a_burst_of_jpeg_frames_of_the_plate() {
        let cam = SceneCamera::default();
        let frames = cam.frames("京A12345", PlateColour::Blue, 7);
        assert_eq!(frames.len(), 3);
        assert!(
            frames.iter().all(|f| f.starts_with(&[0xFF, 0xD8])),
            "JPEG files"
        );
        assert_ne!(frames[0], frames[1], "frames of a burst differ");
        assert_eq!(
            frames,
            cam.frames("京A12345", PlateColour::Blue, 7),
            "deterministic"
        );
        assert!(
            cam.frames("XYZ", PlateColour::Other, 1).is_empty(),
            "no layout, no picture"
        );
    }
}
