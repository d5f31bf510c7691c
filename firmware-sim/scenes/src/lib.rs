//! parkpay-scenes: the simulated camera. It draws 640x480 frames of a car front carrying one
//! licence plate, deterministically from a seed, so a benchmark or a test can ask for "scene 17 of
//! blurred German plates" and get the same pixels on every machine.
//!
//! Why a crate of its own: the gateway's plate benchmark must draw scenes, and the gateway cannot
//! depend on the simulator crate (`parkpay-sim` depends on the gateway). Both depend on this one.
//!
//! How a scene is made ([`Scene::generate`]):
//! 1. [`random_plate`] picks a plate text valid for the format (canonical, as `Plate::parse` gives it).
//! 2. [`plate`] draws the plate flat, in millimetres scaled to pixels, at its real proportions
//!    (CN 440x140 mm with 45x90 mm glyphs and the dot, CN green 480x140, DE 520x110 with the EU band,
//!    UK 520x111), with glyphs from one of two committed font pairs ([`FontChoice`]).
//! 3. [`scene`] draws a car front and warps the flat plate into it through a projective transform
//!    (roll, yaw, perspective), then applies the [`Condition`]: noise, blur, light, JPEG.
//!
//! Fonts are subsets committed under `fonts/` with their licences and compiled in with
//! `include_bytes!`, so nothing is read from the host at run time.

mod plate;
mod scene;

use image::RgbImage;
use parkpay_protocol::{Plate, PlateColour};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub use plate::{render_flat, PlateGeometry};

/// The kinds of plate the camera can show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PlateFormat {
    /// Mainland China, blue background, white glyphs (private cars).
    CnBlue,
    /// Mainland China, yellow background, black glyphs (large vehicles).
    CnYellow,
    /// Mainland China, green gradient, 8 characters (new-energy vehicles).
    CnGreen,
    /// Germany, white with the blue EU band.
    De,
    /// United Kingdom, white front or yellow rear, chosen by the seed.
    Uk,
}

impl PlateFormat {
    pub const ALL: [PlateFormat; 5] = [
        PlateFormat::CnBlue,
        PlateFormat::CnYellow,
        PlateFormat::CnGreen,
        PlateFormat::De,
        PlateFormat::Uk,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PlateFormat::CnBlue => "cn-blue",
            PlateFormat::CnYellow => "cn-yellow",
            PlateFormat::CnGreen => "cn-green",
            PlateFormat::De => "de",
            PlateFormat::Uk => "uk",
        }
    }
}

/// What the camera and the weather do to the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Condition {
    Clean,
    /// Gaussian sensor noise plus a few dead pixels.
    Noise,
    /// Gaussian defocus or motion blur.
    Blur,
    /// Roll, yaw and perspective.
    Skew,
    /// Gamma, exposure and a shadow gradient across the plate.
    Light,
    /// Mild skew, noise, blur and light together, then JPEG compression.
    Combined,
    /// A far-away plate, 95 to 130 px wide.
    Small,
}

impl Condition {
    pub const ALL: [Condition; 7] = [
        Condition::Clean,
        Condition::Noise,
        Condition::Blur,
        Condition::Skew,
        Condition::Light,
        Condition::Combined,
        Condition::Small,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Condition::Clean => "clean",
            Condition::Noise => "noise",
            Condition::Blur => "blur",
            Condition::Skew => "skew",
            Condition::Light => "light",
            Condition::Combined => "combined",
            Condition::Small => "small",
        }
    }
}

/// Which committed typefaces draw the glyphs. Two, so a reader's figure is not one font's luck.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum FontChoice {
    /// Liberation Sans Bold with Noto Sans CJK SC Bold.
    #[default]
    Primary,
    /// Noto Sans Bold with Noto Serif CJK SC Bold.
    Alternate,
}

impl FontChoice {
    pub fn as_str(self) -> &'static str {
        match self {
            FontChoice::Primary => "primary",
            FontChoice::Alternate => "alternate",
        }
    }

    pub fn parse(s: &str) -> Option<FontChoice> {
        match s {
            "primary" => Some(FontChoice::Primary),
            "alternate" => Some(FontChoice::Alternate),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SceneError {
    #[error("image encoding failed: {0}")]
    Encode(#[from] image::ImageError),
}

/// One rendered frame and its ground truth.
#[derive(Debug, Clone)]
pub struct Scene {
    pub image: RgbImage,
    /// Canonical plate text, as `Plate::parse` gives it.
    pub plate: String,
    pub colour: PlateColour,
    pub format: PlateFormat,
    /// The plate's corners in the frame: top-left, top-right, bottom-right, bottom-left.
    pub plate_quad: [(f32, f32); 4],
}

impl Scene {
    /// Draws the scene for `(format, condition, seed)`; the same inputs give the same pixels.
    pub fn generate(
        format: PlateFormat,
        condition: Condition,
        seed: u64,
        font: FontChoice,
    ) -> Scene {
        let mut rng = scene_rng(format, condition, seed);
        let (plate, colour) = random_plate(format, &mut rng);
        let (image, plate_quad) = scene::compose(format, condition, &plate, colour, font, &mut rng);
        Scene {
            image,
            plate,
            colour,
            format,
            plate_quad,
        }
    }
}

impl Scene {
    /// Draws a scene of one given plate (canonical text, as `Plate::parse` gives it): what the
    /// simulator's camera sees when a particular car drives up. Deterministic in its inputs.
    pub fn of_plate(
        format: PlateFormat,
        plate: &str,
        colour: PlateColour,
        condition: Condition,
        seed: u64,
        font: FontChoice,
    ) -> Scene {
        let mut rng = scene_rng(format, condition, seed);
        let (image, plate_quad) = scene::compose(format, condition, plate, colour, font, &mut rng);
        Scene {
            image,
            plate: plate.to_string(),
            colour,
            format,
            plate_quad,
        }
    }
}

/// The plate format a plate is printed in, from its text and colour; `None` for a plate of no
/// supported layout.
pub fn format_of(plate: &str, colour: PlateColour) -> Option<PlateFormat> {
    use parkpay_protocol::Region;
    let p = parkpay_protocol::Plate::parse(plate).ok()?;
    Some(match p.region() {
        Region::Cn if p.as_str().chars().count() == 8 || colour == PlateColour::Green => {
            PlateFormat::CnGreen
        }
        Region::Cn if colour == PlateColour::Yellow => PlateFormat::CnYellow,
        Region::Cn => PlateFormat::CnBlue,
        Region::De => PlateFormat::De,
        Region::Uk => PlateFormat::Uk,
        Region::Generic => return None,
    })
}

/// Separate streams per format and condition, so adding a condition never reshuffles the others.
fn scene_rng(format: PlateFormat, condition: Condition, seed: u64) -> ChaCha8Rng {
    let f = PlateFormat::ALL
        .iter()
        .position(|&x| x == format)
        .unwrap_or(0) as u64;
    let c = Condition::ALL
        .iter()
        .position(|&x| x == condition)
        .unwrap_or(0) as u64;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(f * 16 + c);
    rng
}

const CN_LETTERS: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ";
const DIGITS: &[u8] = b"0123456789";
const UK_LETTERS: &[u8] = b"ABCDEFGHJKLMNOPRSTUVWXY";
const DE_LETTERS: &[u8] = b"ABCDEFGHIJKLMNOPRSTUVWXYZ";

fn pick(rng: &mut impl Rng, set: &[u8]) -> char {
    char::from(set[rng.gen_range(0..set.len())])
}

/// A plate text valid for `format` and the colour it is printed on, canonical for its region.
pub fn random_plate(format: PlateFormat, rng: &mut impl Rng) -> (String, PlateColour) {
    let provinces: Vec<char> = parkpay_protocol::plate::CN_PROVINCES
        .chars()
        .filter(|c| !matches!(c, '使' | '领'))
        .collect();
    let province = provinces[rng.gen_range(0..provinces.len())];
    let (raw, colour) = match format {
        PlateFormat::CnBlue | PlateFormat::CnYellow => {
            let mut s = String::new();
            s.push(province);
            s.push(pick(rng, CN_LETTERS));
            for _ in 0..5 {
                // Real series are mostly digits with a letter or two.
                s.push(if rng.gen_bool(0.3) {
                    pick(rng, CN_LETTERS)
                } else {
                    pick(rng, DIGITS)
                });
            }
            let colour = if format == PlateFormat::CnBlue {
                PlateColour::Blue
            } else {
                PlateColour::Yellow
            };
            (s, colour)
        }
        PlateFormat::CnGreen => {
            let mut s = String::new();
            s.push(province);
            s.push(pick(rng, CN_LETTERS));
            let df = if rng.gen_bool(0.5) { 'D' } else { 'F' };
            if rng.gen_bool(0.7) {
                s.push(df);
                s.push(if rng.gen_bool(0.3) {
                    pick(rng, CN_LETTERS)
                } else {
                    pick(rng, DIGITS)
                });
                (0..4).for_each(|_| s.push(pick(rng, DIGITS)));
            } else {
                (0..5).for_each(|_| s.push(pick(rng, DIGITS)));
                s.push(df);
            }
            (s, PlateColour::Green)
        }
        PlateFormat::De => {
            // At most eight characters in all, as the German rules have it.
            let dn = rng.gen_range(1..=3);
            let ln = rng.gen_range(1..=2);
            let digits = rng.gen_range(1..=(8 - dn - ln).min(4));
            let d: String = (0..dn).map(|_| pick(rng, DE_LETTERS)).collect();
            let l: String = (0..ln).map(|_| pick(rng, DE_LETTERS)).collect();
            let n = rng.gen_range(10u32.pow(digits as u32 - 1)..10u32.pow(digits as u32));
            (format!("{d} {l} {n}"), PlateColour::White)
        }
        PlateFormat::Uk => {
            let mut s = String::new();
            (0..2).for_each(|_| s.push(pick(rng, UK_LETTERS)));
            (0..2).for_each(|_| s.push(pick(rng, DIGITS)));
            (0..3).for_each(|_| s.push(pick(rng, UK_LETTERS)));
            let colour = if rng.gen_bool(0.5) {
                PlateColour::White
            } else {
                PlateColour::Yellow
            };
            (s, colour)
        }
    };
    // Every text built above fits its layout; parsing gives the canonical spelling.
    let text = Plate::parse(&raw)
        .map(|p| p.as_str().to_string())
        .unwrap_or(raw);
    (text, colour)
}

/// JPEG bytes of a frame, as a camera would send it.
pub fn encode_jpeg(image: &RgbImage, quality: u8) -> Result<Vec<u8>, SceneError> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality).encode_image(image)?;
    Ok(out)
}

/// Lossless PNG bytes of a frame.
pub fn encode_png(image: &RgbImage) -> Result<Vec<u8>, SceneError> {
    let mut out = std::io::Cursor::new(Vec::new());
    image.write_to(&mut out, image::ImageFormat::Png)?;
    Ok(out.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenes_are_deterministic_and_plates_canonical() {
        for format in PlateFormat::ALL {
            let a = Scene::generate(format, Condition::Clean, 7, FontChoice::Primary);
            let b = Scene::generate(format, Condition::Clean, 7, FontChoice::Primary);
            assert_eq!(a.plate, b.plate);
            assert!(a.image == b.image, "{format:?} is not deterministic");
            assert_eq!(Plate::parse(&a.plate).unwrap().as_str(), a.plate);
            assert_eq!(a.image.dimensions(), (640, 480));
        }
    }

    #[test]
    fn small_plates_are_small() {
        let s = Scene::generate(
            PlateFormat::CnBlue,
            Condition::Small,
            3,
            FontChoice::Alternate,
        );
        let w = s.plate_quad[1].0 - s.plate_quad[0].0;
        assert!((90.0..=135.0).contains(&w), "width {w}");
    }

    #[test]
    fn green_plates_have_eight_characters() {
        let s = Scene::generate(
            PlateFormat::CnGreen,
            Condition::Clean,
            1,
            FontChoice::Primary,
        );
        assert_eq!(s.plate.chars().count(), 8);
        assert_eq!(s.colour, PlateColour::Green);
    }
}
