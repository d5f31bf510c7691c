//! The learned recogniser: the locator's plate quadrilaterals, flattened to a small grey crop, read
//! by a convolutional network with a CTC head (`gateway/models/plate-crnn.onnx`, trained by
//! `train/plates/train.sh` on typefaces the evaluation never sees), run in pure Rust by tract.
//!
//! 1. [`locate`](crate::reader::locate) finds plate-coloured blobs; each blob is tried in every
//!    layout its colour allows, from its two corner estimates.
//! 2. Each quadrilateral is flattened to [`CROP_W`] x [`CROP_H`] grey, exactly as the training
//!    renderer flattens its samples.
//! 3. The network gives per-step class probabilities; greedy CTC decoding spells the plate, and
//!    the product of each spelled character's peak probability, calibrated on scenes in the
//!    training typefaces, is how sure it is of that spelling.
//! 4. A Chinese spelling's province is read again by a second network, the province classifier
//!    (`gateway/models/plate-province.onnx`), over the crop's left quarter; the two networks'
//!    probabilities are combined as independent judgements ([`fuse`]), so the province is sure
//!    only when both agree, and never when the classifier sees no province there.
//! 5. The region's layout (`Plate::parse_in`) must accept the spelling as it stands: a read the
//!    grammar had to correct is never trusted. Two corner estimates that spell different plates
//!    are a contradiction, and a contradiction is never resolved by guessing.
//! 6. A German registration cut short is still a valid one, so a German read is not trusted from
//!    a blob too short for a German plate, nor when the blob widened spells more (`cut_short`).
//!    A German plate as pale as the car it is on is placed by its blue EU band (`eu_bands` in
//!    [`locate`](crate::reader::locate)) when the colour blobs gave nothing to vouch for.

use image::{DynamicImage, RgbImage};
use imageproc::geometric_transformations::Projection;
use parkpay_protocol::{Plate, PlateCandidate, PlateColour, Region};
use tract_onnx::prelude::*;

use super::locate::{
    eu_bands, extend_left, grow_to_aspect, locate, text_bands, widen, Blob, FoundBy, Hue,
};
use super::{PlateReader, Roi, ACCEPT_THRESHOLD};

/// The committed model; its licence and provenance are in `gateway/models/README.md`.
static MODEL: &[u8] = include_bytes!("../../models/plate-crnn.onnx");

/// The province classifier (`train/plates/province.py`): the left [`REGION_W`] columns of a
/// crop in, probabilities over [`PROVINCES`] and then "no province here" out.
static PROVINCE_MODEL: &[u8] = include_bytes!("../../models/plate-province.onnx");

/// The provinces the classifier tells apart, in its output's order.
const PROVINCES: &str = "京津沪渝冀豫云辽黑湘皖鲁新苏浙赣鄂桂甘晋蒙陕吉闽贵粤青藏川宁琼";

/// How many of a crop's columns, from the left, the province classifier reads.
const REGION_W: usize = 32;

pub const CROP_W: usize = 128;
pub const CROP_H: usize = 32;

/// The network's output classes after the CTC blank, in order (`train/plates/render.py`).
const ALPHABET: &str =
    "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ 京津沪渝冀豫云辽黑湘皖鲁新苏浙赣鄂桂甘晋蒙陕吉闽贵粤青藏川宁琼使领学警挂港澳";

/// The most a guess may claim: a corrected spelling, or one of two that disagree.
const GUESS_CAP: f32 = ACCEPT_THRESHOLD * 0.9;

/// The product of per-character peaks at which a spelling is vouched for. Fitted on scenes drawn
/// by the training renderer in the *training* typefaces (`render.py scenes DIR 20 1001
/// training`, 700 scenes), where it keeps 339 reads, 2 of them wrong (0.6 %; one a German plate
/// at 0.994 that no useful threshold drops). The evaluation sets (held-out typefaces, the
/// simulator's fonts) never took part.
const VOUCH_AT: f32 = 0.951;

/// Maps the product of peaks onto the readers' common scale, monotonically: [`VOUCH_AT`] lands
/// on [`ACCEPT_THRESHOLD`], 0 on 0 and 1 on 1.
fn calibrate(sure: f32) -> f32 {
    let sure = if sure.is_nan() {
        0.0
    } else {
        sure.clamp(0.0, 1.0)
    };
    if sure >= VOUCH_AT {
        ACCEPT_THRESHOLD + (1.0 - ACCEPT_THRESHOLD) * (sure - VOUCH_AT) / (1.0 - VOUCH_AT)
    } else {
        ACCEPT_THRESHOLD * sure / VOUCH_AT
    }
}

/// A read so sure that the blob's other layouts and the blobs after it are not read: two corner
/// estimates that disagree are capped at [`GUESS_CAP`], below this.
const SURE: f32 = 0.97;

/// How far, as a share of its width, a German blob is widened on each side to see whether the
/// plate goes on beyond it.
const WIDEN: f32 = 0.15;

/// The aspect below which a white blob is too short for a German plate, whose white part is
/// about 4.35 times as wide as high: one seen at a yaw of 40° still measures 3.3.
const DE_SHORTEST: f32 = 3.3;

/// How many of the locator's blobs are read at most: the plate is nearly always among the first.
const MAX_BLOBS: usize = 5;

/// How many bands of characters are read at most when no blob of colour gave a vouched read.
const MAX_BANDS: usize = 3;

type Runnable = std::sync::Arc<TypedRunnableModel>;

/// The reader. Building it parses and optimises the network (tens of milliseconds); reuse one.
pub struct LearnedReader {
    model: Runnable,
    province: Runnable,
    alphabet: Vec<char>,
    provinces: Vec<char>,
    /// The recogniser's output class of each of [`PROVINCES`], in order.
    province_classes: Vec<usize>,
}

/// What the recogniser spelled from one crop: the text, each character's peak probability, and
/// the class probabilities at the first character's peak.
struct Spelling {
    text: String,
    peaks: Vec<f32>,
    first: Vec<f32>,
}

#[derive(Debug, thiserror::Error)]
#[error("the plate model does not load: {0}")]
pub struct ModelError(String);

/// The layouts a blob can be read in, which decide the crop and the grammar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    Cn,
    CnGreen,
    De,
    Uk,
}

/// One spelling of one crop.
#[derive(Debug, Clone)]
struct Read {
    plate: String,
    colour: PlateColour,
    confidence: f32,
    /// The centre of the blob it was read from, and half the blob's height.
    at: (f32, f32),
    reach: f32,
    /// Read from a plate placed by its EU band: a further look at a place the colour blobs may
    /// already have read.
    from_band: bool,
}

impl Read {
    /// Whether two reads were taken from the same place in the frame: the same plate, however
    /// it was found.
    fn same_place(&self, other: &Read) -> bool {
        let d = ((self.at.0 - other.at.0).powi(2) + (self.at.1 - other.at.1).powi(2)).sqrt();
        d < self.reach.max(other.reach) * 2.0
    }
}

impl LearnedReader {
    pub fn new() -> Result<LearnedReader, ModelError> {
        let err = |e: TractError| ModelError(e.to_string());
        let load = |bytes: &[u8], width: usize| -> Result<Runnable, ModelError> {
            tract_onnx::onnx()
                .model_for_read(&mut std::io::Cursor::new(bytes))
                .map_err(err)?
                .with_input_fact(0, f32::fact([1, 1, CROP_H, width]).into())
                .map_err(err)?
                .into_optimized()
                .map_err(err)?
                .into_runnable()
                .map_err(err)
        };
        let alphabet: Vec<char> = ALPHABET.chars().collect();
        let provinces: Vec<char> = PROVINCES.chars().collect();
        // Class 0 is the CTC blank; the alphabet follows it.
        let province_classes = provinces
            .iter()
            .map(|c| {
                let k = alphabet.iter().position(|a| a == c);
                k.map(|k| k + 1)
                    .ok_or_else(|| ModelError(format!("province {c} is not in the alphabet")))
            })
            .collect::<Result<_, _>>()?;
        Ok(LearnedReader {
            model: load(MODEL, CROP_W)?,
            province: load(PROVINCE_MODEL, REGION_W)?,
            alphabet,
            provinces,
            province_classes,
        })
    }

    /// Greedy CTC spelling of one crop, with each spelled character's peak probability.
    fn spell(&self, crop: &[f32]) -> Option<Spelling> {
        let input =
            tract_ndarray::Array4::from_shape_vec((1, 1, CROP_H, CROP_W), crop.to_vec()).ok()?;
        let out = self.model.run(tvec!(Tensor::from(input).into())).ok()?;
        let probs = out.first()?.to_plain_array_view::<f32>().ok()?;
        let shape = probs.shape();
        if shape.len() != 3 {
            return None;
        }
        let (steps, classes) = (shape[1], shape[2]);
        let mut text = String::new();
        let mut peaks = Vec::new();
        let mut first_at = None;
        // The class of the run of steps being read, its highest probability so far and where.
        let mut run = (0usize, 0.0f32, 0usize);
        for t in 0..steps {
            let (best, p) = (0..classes)
                .map(|k| (k, probs[[0, t, k]]))
                .max_by(|a, b| a.1.total_cmp(&b.1))?;
            if best != run.0 {
                if run.0 != 0 {
                    peaks.push(run.1);
                    first_at.get_or_insert(run.2);
                }
                if best != 0 {
                    text.push(*self.alphabet.get(best - 1)?);
                }
                run = (best, p, t);
            } else if p > run.1 {
                run = (best, p, t);
            }
        }
        if run.0 != 0 {
            peaks.push(run.1);
            first_at.get_or_insert(run.2);
        }
        let first = first_at.map_or_else(Vec::new, |t| {
            (0..classes).map(|k| probs[[0, t, k]]).collect()
        });
        Some(Spelling { text, peaks, first })
    }

    /// The province classifier's probabilities for a crop's left columns.
    fn provinces_of(&self, crop: &[f32]) -> Option<Vec<f32>> {
        let region: Vec<f32> = crop
            .chunks(CROP_W)
            .flat_map(|row| row[..REGION_W].iter().copied())
            .collect();
        let input = tract_ndarray::Array4::from_shape_vec((1, 1, CROP_H, REGION_W), region).ok()?;
        let out = self.province.run(tvec!(Tensor::from(input).into())).ok()?;
        let probs = out.first()?.to_plain_array_view::<f32>().ok()?;
        let v: Vec<f32> = probs.iter().copied().collect();
        (v.len() == self.provinces.len() + 1).then_some(v)
    }

    /// A Chinese spelling's province read again by the province classifier, the two judgements
    /// combined: each province's probability is the product of the two networks', normalised
    /// over the provinces and "no province" (for the recogniser, whatever else it saw there), so
    /// that they must agree to be sure.
    fn with_province(&self, crop: &[f32], mut s: Spelling) -> Spelling {
        let spelt_province = s
            .text
            .chars()
            .next()
            .is_some_and(|c| self.provinces.contains(&c));
        if !spelt_province {
            return s;
        }
        let Some(theirs) = self.provinces_of(crop) else {
            return s;
        };
        let mut ours: Vec<f32> = self
            .province_classes
            .iter()
            .map(|&k| s.first.get(k).copied().unwrap_or(0.0))
            .collect();
        ours.push((1.0 - ours.iter().sum::<f32>()).max(0.0));
        let Some((k, p)) = fuse(&ours, &theirs, self.provinces.len()) else {
            return s;
        };
        // A spelled character has its peak, so the province's is the first.
        if let Some(peak) = s.peaks.first_mut() {
            *peak = p;
            s.text = std::iter::once(self.provinces[k])
                .chain(s.text.chars().skip(1))
                .collect();
        }
        s
    }

    /// Reads one quadrilateral of a `hue` blob in one layout: a canonical plate and its
    /// confidence.
    fn read_quad(
        &self,
        rgb: &RgbImage,
        quad: [(f32, f32); 4],
        hue: Hue,
        layout: Layout,
    ) -> Option<(String, f32)> {
        let quad = match layout {
            // A green blob is the plate's green lower part, a white one its washed-out upper part.
            Layout::CnGreen => grow_to_aspect(quad, 480.0 / 140.0, hue != Hue::White),
            // The white blob of a German plate stops at the EU band: take the band in.
            Layout::De => extend_left(quad, 0.1),
            Layout::Cn | Layout::Uk => quad,
        };
        let crop = flatten(rgb, quad)?;
        let region = match layout {
            Layout::Cn | Layout::CnGreen => Region::Cn,
            Layout::De => Region::De,
            Layout::Uk => Region::Uk,
        };
        let mut spelling = self.spell(&crop)?;
        if region == Region::Cn {
            spelling = self.with_province(&crop, spelling);
        }
        let p = calibrate(spelling.peaks.iter().product());
        let raw = spelling.text;
        let plate = Plate::parse_in(&raw, region).ok()?;
        let green = plate.as_str().chars().count() == 8;
        if (layout == Layout::CnGreen) != green && region == Region::Cn {
            return None;
        }
        // The grammar may correct a read (O for 0); a corrected read is a guess, never vouched.
        let confidence = if as_read(&raw, plate.as_str(), region) {
            p
        } else {
            p.min(GUESS_CAP)
        };
        Some((plate.as_str().to_string(), confidence))
    }

    /// Reads `blob` in each of `layouts` until one is [`SURE`], adding what it spells to `reads`.
    fn read_blob(&self, rgb: &RgbImage, blob: &Blob, layouts: &[Layout], reads: &mut Vec<Read>) {
        for &layout in layouts {
            let a = self.read_quad(rgb, blob.quad, blob.hue, layout);
            let b = self.read_quad(rgb, blob.extreme_quad, blob.hue, layout);
            let read = match (a, b) {
                (Some(x), Some(y)) if x.0 == y.0 => Some((x.0, x.1.max(y.1))),
                // Two corner estimates, two spellings: the surer one, capped below trust.
                (Some(x), Some(y)) => {
                    let best = if x.1 >= y.1 { x } else { y };
                    Some((best.0, best.1.min(GUESS_CAP)))
                }
                (x, y) => x.or(y),
            };
            let Some((plate, mut confidence)) = read else {
                continue;
            };
            if layout == Layout::De && confidence > GUESS_CAP && self.cut_short(rgb, blob, &plate) {
                confidence = GUESS_CAP;
            }
            let colour = match (blob.hue, layout) {
                (Hue::Blue, _) => PlateColour::Blue,
                (Hue::Green, Layout::CnGreen) | (Hue::White, Layout::CnGreen) => PlateColour::Green,
                (Hue::Yellow, _) | (Hue::Green, _) => PlateColour::Yellow,
                (Hue::White, Layout::Uk) => PlateColour::White,
                (Hue::White, _) => PlateColour::Other,
            };
            let [tl, tr, br, bl] = blob.quad;
            reads.push(Read {
                plate,
                colour,
                confidence,
                at: (
                    (tl.0 + tr.0 + br.0 + bl.0) / 4.0,
                    (tl.1 + tr.1 + br.1 + bl.1) / 4.0,
                ),
                reach: ((bl.1 - tl.1) + (br.1 - tr.1)).abs() / 4.0,
                from_band: blob.found_by == FoundBy::EuBand,
            });
            // The network is sure, and no corner estimate spelled otherwise: the other
            // layout would only cost time (the same rule as for the blobs after this one).
            if confidence >= SURE {
                break;
            }
        }
    }

    /// Whether the plate around a German read may spell more than it: a shadow or a dirty edge
    /// can end a blob inside the plate, and a German registration cut short is still a valid
    /// one (`NZ NP 299` for `YNZ NP 299`), unlike the fixed-length Chinese and British layouts.
    /// A blob of the plate's colour much shorter than a German plate was cut (a plate seen at
    /// a yaw of 40° is still longer); otherwise the blob widened on both sides is read again,
    /// and a longer spelling that contains the first is a contradiction.
    fn cut_short(&self, rgb: &RgbImage, blob: &Blob, plate: &str) -> bool {
        if blob.found_by == FoundBy::Colour && blob.aspect() < DE_SHORTEST {
            return true;
        }
        let bare = |t: &str| t.chars().filter(|c| *c != ' ').collect::<String>();
        let wide = widen(blob.quad, WIDEN);
        let Some((wider, _)) = self.read_quad(rgb, wide, blob.hue, Layout::De) else {
            return false;
        };
        let (narrow, wider) = (bare(plate), bare(&wider));
        wider.len() > narrow.len() && wider.contains(&narrow)
    }

    fn best_read(&self, rgb: &RgbImage) -> Option<Read> {
        let blobs = locate(rgb);
        let blobs = &blobs[..blobs.len().min(MAX_BLOBS)];
        let mut reads: Vec<Read> = Vec::new();
        let sure = |reads: &[Read]| reads.iter().any(|r| r.confidence >= SURE);
        for blob in blobs {
            self.read_blob(rgb, blob, first_layouts(blob), &mut reads);
            if sure(&reads) {
                break;
            }
        }
        // Nothing vouched for in the layouts the colours suggest: light bends colours, so try
        // the layouts it may have disguised.
        let vouched = |reads: &[Read]| reads.iter().any(|r| r.confidence >= ACCEPT_THRESHOLD);
        if !vouched(&reads) {
            for blob in blobs {
                self.read_blob(rgb, blob, second_layouts(blob), &mut reads);
                if sure(&reads) {
                    break;
                }
            }
        }
        // A German plate as pale as the car it is on: its blue EU band still stands out.
        if !vouched(&reads) {
            for band in eu_bands(rgb).iter().take(MAX_BANDS) {
                self.read_blob(rgb, band, first_layouts(band), &mut reads);
                if sure(&reads) {
                    break;
                }
            }
        }
        // Still nothing: the light may have taken the colours away altogether (deep shadow, a
        // white plate on a white car), so look for the characters instead.
        if !vouched(&reads) {
            for band in text_bands(rgb).iter().take(MAX_BANDS) {
                if band.hue == Hue::White {
                    self.read_blob(rgb, band, colourless_layouts(band), &mut reads);
                } else {
                    self.read_blob(rgb, band, first_layouts(band), &mut reads);
                    if !sure(&reads) {
                        self.read_blob(rgb, band, second_layouts(band), &mut reads);
                    }
                }
                if sure(&reads) {
                    break;
                }
            }
        }
        reads.sort_by(|a, b| b.confidence.total_cmp(&a.confidence));
        let best = reads.first()?.clone();
        // Another plate read almost as surely elsewhere in the frame: not one we may vouch for.
        // (Reads capped as guesses sit at the cap and are no rivals, except to a band's read of
        // the same place.)
        let rival = reads.iter().skip(1).any(|r| {
            r.plate != best.plate
                && (r.confidence > GUESS_CAP
                        // A band's read where a blob's was contradicted: the plate was spelled
                        // two ways there, and a third reading siding with one resolves nothing.
                        || (best.from_band && r.confidence >= GUESS_CAP && r.same_place(&best)))
        });
        Some(if rival {
            Read {
                confidence: best.confidence.min(GUESS_CAP),
                ..best
            }
        } else {
            best
        })
    }
}

/// Two networks' probabilities over the same classes combined as independent judgements: each
/// class's product, normalised over all of them. The likeliest of the first `candidates`
/// classes (the rest, such as "no province", can only take probability away) and its combined
/// probability; `None` when the two leave no class possible. Agreement makes the pair surer
/// than either; a contradiction leaves neither sure.
fn fuse(ours: &[f32], theirs: &[f32], candidates: usize) -> Option<(usize, f32)> {
    let joint: Vec<f32> = ours.iter().zip(theirs).map(|(a, b)| a * b).collect();
    let sum: f32 = joint.iter().sum();
    if !sum.is_finite() || sum <= 0.0 {
        return None;
    }
    joint
        .iter()
        .take(candidates)
        .map(|x| x / sum)
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(&b.1))
}

/// Whether the grammar took a spelling as it was read. A German plate's space between its letters
/// and its digits is narrow and often missed; restoring it is no guess, since the characters tell
/// letters from digits themselves (the district's separator decides the rest, and it was read).
/// Any other change is a correction.
fn as_read(raw: &str, canonical: &str, region: Region) -> bool {
    let bare = |t: &str| t.chars().filter(|c| *c != ' ').collect::<String>();
    raw == canonical || (region == Region::De && bare(raw) == bare(canonical))
}

/// The layouts a blob's colour suggests, the likelier first: a Chinese plate is about 3.1 times as
/// wide as high, a British or German one 4.7.
fn first_layouts(blob: &Blob) -> &'static [Layout] {
    match blob.hue {
        Hue::Blue => &[Layout::Cn],
        Hue::Green => &[Layout::CnGreen],
        Hue::Yellow if blob.aspect() < 3.9 => &[Layout::Cn, Layout::Uk],
        Hue::Yellow => &[Layout::Uk, Layout::Cn],
        Hue::White => &[Layout::De, Layout::Uk],
    }
}

/// The layouts a band of characters without a colour (a grey frame, a plate in deep shadow) is
/// read in: every layout, the likelier for its proportions first. A coloured band is read like a
/// blob of its colour.
fn colourless_layouts(band: &Blob) -> &'static [Layout] {
    if band.aspect() < 3.9 {
        &[Layout::Cn, Layout::CnGreen, Layout::De, Layout::Uk]
    } else {
        &[Layout::De, Layout::Uk, Layout::Cn, Layout::CnGreen]
    }
}

/// The layouts light can disguise as a blob's colour: a yellow plate in dim or warm light passes
/// as green, and a new-energy plate washed out by bright light as white.
fn second_layouts(blob: &Blob) -> &'static [Layout] {
    match blob.hue {
        Hue::Green if blob.aspect() < 3.9 => &[Layout::Cn],
        Hue::Green => &[Layout::Uk],
        Hue::White => &[Layout::CnGreen],
        Hue::Blue | Hue::Yellow => &[],
    }
}

impl PlateReader for LearnedReader {
    fn read(&self, image: &DynamicImage, roi: Option<Roi>) -> Vec<PlateCandidate> {
        let rgb = match roi {
            Some(r) => {
                let (w, h) = (image.width(), image.height());
                let x = r.x.min(w);
                let y = r.y.min(h);
                let cw = r.width.min(w - x);
                let ch = r.height.min(h - y);
                image.crop_imm(x, y, cw, ch).to_rgb8()
            }
            None => image.to_rgb8(),
        };
        if rgb.width() < 24 || rgb.height() < 12 {
            return Vec::new();
        }
        // Defence in depth: a bug in the geometry must cost one read, never the gateway.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.best_read(&rgb)))
            .ok()
            .flatten()
            .map(|r| PlateCandidate {
                plate: r.plate,
                confidence: r.confidence.clamp(0.0, 1.0),
                colour: r.colour,
            })
            .into_iter()
            .collect()
    }
}

/// `quad` (TL, TR, BR, BL) flattened to the model's grey input in 0..=1, sampled bilinearly at
/// pixel centres; `None` for a degenerate quad.
pub fn flatten(rgb: &RgbImage, quad: [(f32, f32); 4]) -> Option<Vec<f32>> {
    // A non-finite corner would send the projection's solver into an endless iteration.
    if !quad.iter().all(|(x, y)| x.is_finite() && y.is_finite()) {
        return None;
    }
    let (w, h) = (CROP_W as f32, CROP_H as f32);
    let proj = Projection::from_control_points([(0.0, 0.0), (w, 0.0), (w, h), (0.0, h)], quad)?;
    let (iw, ih) = (rgb.width() as i64, rgb.height() as i64);
    let grey = |x: i64, y: i64| {
        let p = rgb
            .get_pixel(x.clamp(0, iw - 1) as u32, y.clamp(0, ih - 1) as u32)
            .0;
        0.299 * p[0] as f32 + 0.587 * p[1] as f32 + 0.114 * p[2] as f32
    };
    let mut out = Vec::with_capacity(CROP_W * CROP_H);
    for y in 0..CROP_H {
        for x in 0..CROP_W {
            let (u, v) = proj * (x as f32 + 0.5, y as f32 + 0.5);
            if !u.is_finite() || !v.is_finite() {
                return None;
            }
            let (u, v) = (u - 0.5, v - 0.5);
            let (xi, yi) = (u.floor() as i64, v.floor() as i64);
            let (fx, fy) = (u - xi as f32, v - yi as f32);
            let top = grey(xi, yi) * (1.0 - fx) + grey(xi + 1, yi) * fx;
            let bottom = grey(xi, yi + 1) * (1.0 - fx) + grey(xi + 1, yi + 1) * fx;
            out.push((top * (1.0 - fy) + bottom * fy) / 255.0);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use parkpay_scenes::{Condition, FontChoice, PlateFormat, Scene};

    /// One reader for all tests: optimising the network is the slow part.
    fn shared() -> &'static LearnedReader {
        static READER: std::sync::OnceLock<LearnedReader> = std::sync::OnceLock::new();
        READER.get_or_init(|| LearnedReader::new().expect("the committed model loads"))
    }

    #[test]
    fn vouched_reads_are_right_and_every_format_is_read() {
        let reader = shared();
        let mut vouched = 0;
        for format in PlateFormat::ALL {
            let mut right = 0;
            for seed in 1..=4 {
                let scene = Scene::generate(format, Condition::Clean, seed, FontChoice::Primary);
                let cands = reader.read(&DynamicImage::ImageRgb8(scene.image), None);
                let Some(top) = cands.first() else {
                    continue;
                };
                if top.confidence >= ACCEPT_THRESHOLD {
                    assert_eq!(top.plate, scene.plate, "vouched for a wrong plate");
                    vouched += 1;
                }
                right += usize::from(top.plate == scene.plate);
            }
            assert!(right >= 3, "{format:?}: {right} of 4 clean plates read");
        }
        assert!(
            vouched >= 5,
            "only {vouched} of 20 clean plates vouched for"
        );
    }

    /// Over-exposure washes a new-energy plate out until it passes as white, not green: the
    /// reader must still try it as a green plate.
    #[test]
    fn a_new_energy_plate_washed_out_to_white_is_still_read() {
        let reader = shared();
        let mut right = 0;
        for seed in 1..=12 {
            let scene = Scene::generate(
                PlateFormat::CnGreen,
                Condition::Clean,
                seed,
                FontChoice::Primary,
            );
            let mut image = scene.image;
            for p in image.pixels_mut() {
                p.0 = p.0.map(|v| (255.0 * (v as f32 / 255.0).powf(0.45)) as u8);
            }
            let cands = reader.read(&DynamicImage::ImageRgb8(image), None);
            let Some(top) = cands.first() else {
                continue;
            };
            if top.confidence >= ACCEPT_THRESHOLD {
                assert_eq!(top.plate, scene.plate, "vouched for a wrong plate");
                assert_eq!(top.colour, PlateColour::Green);
                right += 1;
            }
        }
        assert!(right >= 3, "only {right} of 6 washed-out plates read");
    }

    /// An infrared camera, or a night without colour: no plate colour is left to find, so the
    /// plates are found by their characters.
    #[test]
    fn plates_in_grey_frames_are_found_by_their_characters() {
        let reader = shared();
        let mut right = 0;
        for format in PlateFormat::ALL {
            for seed in 1..=3 {
                let scene = Scene::generate(format, Condition::Clean, seed, FontChoice::Primary);
                let grey = DynamicImage::ImageRgb8(scene.image).grayscale();
                let cands = reader.read(&grey, None);
                let Some(top) = cands.first() else {
                    continue;
                };
                if top.confidence >= ACCEPT_THRESHOLD {
                    assert_eq!(top.plate, scene.plate, "vouched for a wrong plate");
                    right += 1;
                }
            }
        }
        assert!(right >= 11, "only {right} of 15 grey plates read");
    }

    #[test]
    fn colour_is_reported() {
        let scene = Scene::generate(
            PlateFormat::CnYellow,
            Condition::Clean,
            1,
            FontChoice::Primary,
        );
        let cands = shared().read(&DynamicImage::ImageRgb8(scene.image), None);
        assert_eq!(cands.first().map(|c| c.colour), Some(PlateColour::Yellow));
    }

    #[test]
    fn empty_and_garbage_frames_give_no_vouched_plate() {
        crate::reader::assert_no_plate_in_empty_frames(shared());
    }

    #[test]
    fn truncated_frames_never_panic_nor_vouch_for_another_plate() {
        let reader = shared();
        let scene = Scene::generate(PlateFormat::De, Condition::Clean, 2, FontChoice::Primary);
        let jpeg = parkpay_scenes::encode_jpeg(&scene.image, 85).expect("a frame encodes");
        for cut in [10, jpeg.len() / 4, jpeg.len() / 2, jpeg.len() * 9 / 10] {
            if let Ok(img) = image::load_from_memory(&jpeg[..cut]) {
                for c in reader.read(&img, None) {
                    assert!(
                        c.confidence < ACCEPT_THRESHOLD || c.plate == scene.plate,
                        "cut at {cut}: {c:?}"
                    );
                }
            }
        }
    }

    /// `scene` with everything left (or right) of `at` of the plate's width in deep shadow.
    fn shadowed(scene: &Scene, at: f32, left: bool) -> RgbImage {
        let [tl, tr, _, _] = scene.plate_quad;
        let edge = tl.0 + (tr.0 - tl.0) * at;
        let mut image = scene.image.clone();
        for (x, _, p) in image.enumerate_pixels_mut() {
            if ((x as f32) < edge) == left {
                p.0 = p.0.map(|v| (v as f32 * 0.3) as u8);
            }
        }
        image
    }

    #[test]
    fn a_german_plate_cut_short_by_a_shadow_is_never_vouched_short() {
        let reader = shared();
        let (mut caught, mut vouched_right) = (0, 0);
        for seed in 1..=12 {
            let scene =
                Scene::generate(PlateFormat::De, Condition::Clean, seed, FontChoice::Primary);
            for (at, left) in [(0.25, true), (0.35, true), (0.7, false), (0.8, false)] {
                let rgb = shadowed(&scene, at, left);
                // What the lit part alone spells, and whether the widened blob gave it away.
                for blob in locate(&rgb).iter().filter(|b| b.hue == Hue::White) {
                    let Some((plate, p)) = reader.read_quad(&rgb, blob.quad, blob.hue, Layout::De)
                    else {
                        continue;
                    };
                    if p > GUESS_CAP && plate != scene.plate && reader.cut_short(&rgb, blob, &plate)
                    {
                        caught += 1;
                    }
                }
                let cands = reader.read(&DynamicImage::ImageRgb8(rgb), None);
                if let Some(top) = cands.first().filter(|c| c.confidence >= ACCEPT_THRESHOLD) {
                    assert_eq!(top.plate, scene.plate, "seed {seed}, shadow at {at}");
                    vouched_right += 1;
                }
            }
        }
        assert!(caught >= 2, "the shadows cut some plates short: {caught}");
        assert!(
            vouched_right >= 4,
            "whole plates are still read: {vouched_right}"
        );
    }

    #[test]
    fn a_german_plates_eu_band_gives_the_plates_corners() {
        let mut tried = 0;
        for seed in 1..=10 {
            let scene =
                Scene::generate(PlateFormat::De, Condition::Clean, seed, FontChoice::Primary);
            let truth = scene.plate_quad;
            let [tl, _, _, bl] = truth;
            let height = ((bl.0 - tl.0).powi(2) + (bl.1 - tl.1).powi(2)).sqrt();
            // On a blue car the band is not told from the car, by design (module docs).
            let beside = scene
                .image
                .get_pixel((tl.0 - 10.0) as u32, ((tl.1 + bl.1) / 2.0) as u32);
            let [r, g, b] = beside.0.map(i32::from);
            if b > r + 20 && b > g + 20 {
                continue;
            }
            tried += 1;
            let found = eu_bands(&scene.image).into_iter().any(|band| {
                // The German layout's crop: the quad widened leftwards by a tenth.
                let quad = extend_left(band.quad, 0.1);
                quad.iter().zip(truth).all(|(p, q)| {
                    ((p.0 - q.0).powi(2) + (p.1 - q.1).powi(2)).sqrt() < 0.35 * height
                })
            });
            assert!(found, "seed {seed}: no band gave the corners {truth:?}");
        }
        assert!(tried >= 6, "only {tried} scenes on a car of another colour");
        // Nor is a blue Chinese plate, nor the blue inside its glyphs' counters, a band.
        for seed in 1..=8 {
            let cn = Scene::generate(
                PlateFormat::CnBlue,
                Condition::Clean,
                seed,
                FontChoice::Primary,
            );
            let [ctl, ctr, _, _] = cn.plate_quad;
            let over_plate = |b: &Blob| b.quad[1].0 > ctl.0 && b.quad[0].0 < ctr.0;
            assert!(!eu_bands(&cn.image).iter().any(over_plate), "seed {seed}");
        }
    }

    #[test]
    fn calibration_is_monotone_and_vouches_exactly_from_the_fitted_product() {
        assert_eq!(calibrate(0.0), 0.0);
        assert!((calibrate(1.0) - 1.0).abs() < 1e-6);
        assert!((calibrate(VOUCH_AT) - ACCEPT_THRESHOLD).abs() < 1e-6);
        assert!(calibrate(VOUCH_AT - 0.001) < ACCEPT_THRESHOLD);
        let steps: Vec<f32> = (0..=1000).map(|i| calibrate(i as f32 / 1000.0)).collect();
        assert!(steps.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(calibrate(f32::NAN), 0.0);
    }

    #[test]
    fn only_a_german_plates_missed_space_is_restored_without_a_cap() {
        let de = |raw: &str| {
            let plate = Plate::parse_in(raw, Region::De).expect("a German plate");
            as_read(raw, plate.as_str(), Region::De)
        };
        assert!(de("X U 7188"));
        assert!(de("X U7188"), "the space before the digits restored");
        assert!(de("X UT188"), "two letters, then the digits");
        assert!(
            !de("X U718B"),
            "a letter where a digit stands is a correction"
        );
        assert!(!de("B 8A12"), "so is a digit where a letter stands");
        let cn = Plate::parse_in("京A0C123", Region::Cn).expect("a Chinese plate");
        assert!(!as_read("京AOC123", cn.as_str(), Region::Cn));
    }

    #[test]
    fn two_networks_that_agree_are_surer_than_either_and_a_contradiction_is_never_sure() {
        // Two provinces and, last, "no province".
        let agree = fuse(&[0.6, 0.3, 0.1], &[0.9, 0.05, 0.05], 2).unwrap();
        assert_eq!(agree.0, 0);
        assert!(agree.1 > 0.9, "{agree:?}");
        let contradict = fuse(&[0.9, 0.05, 0.05], &[0.05, 0.9, 0.05], 2).unwrap();
        assert!(contradict.1 < 0.6, "{contradict:?}");
        // The recogniser unsure between two, the classifier sure of one of them.
        let settle = fuse(&[0.45, 0.45, 0.1], &[0.98, 0.01, 0.01], 2).unwrap();
        assert_eq!(settle.0, 0);
        assert!(settle.1 > 0.97, "{settle:?}");
        // The recogniser fairly sure of a province, the classifier sure there is none.
        let none = fuse(&[0.8, 0.05, 0.15], &[0.1, 0.0, 0.9], 2).unwrap();
        assert_eq!(none.0, 0);
        assert!(none.1 < 0.5, "{none:?}");
        assert_eq!(fuse(&[1.0, 0.0], &[0.0, 1.0], 2), None);
        assert_eq!(fuse(&[f32::NAN, 0.0], &[1.0, 0.0], 2), None);
    }

    #[test]
    fn the_province_classifier_reads_provinces_in_a_typeface_it_never_saw() {
        let reader = shared();
        for format in [PlateFormat::CnBlue, PlateFormat::CnGreen] {
            let mut right = 0;
            for seed in 1..=10 {
                let scene = Scene::generate(format, Condition::Clean, seed, FontChoice::Alternate);
                let crop = flatten(&scene.image, scene.plate_quad).unwrap();
                let probs = reader.provinces_of(&crop).unwrap();
                let best = probs[..reader.provinces.len()]
                    .iter()
                    .enumerate()
                    .max_by(|a, b| a.1.total_cmp(b.1))
                    .unwrap()
                    .0;
                right += usize::from(scene.plate.starts_with(reader.provinces[best]));
            }
            assert!(right >= 9, "{format:?}: {right} of 10 provinces");
        }
        // A German plate's EU band is no province, nor is a British plate's first letter.
        for format in [PlateFormat::De, PlateFormat::Uk] {
            let mut none = 0;
            for seed in 1..=10 {
                let scene = Scene::generate(format, Condition::Clean, seed, FontChoice::Alternate);
                let crop = flatten(&scene.image, scene.plate_quad).unwrap();
                let probs = reader.provinces_of(&crop).unwrap();
                none += usize::from(probs[reader.provinces.len()] > 0.5);
            }
            assert!(
                none >= 9,
                "{format:?}: {none} of 10 said to hold no province"
            );
        }
    }

    #[test]
    fn degenerate_quads_are_refused() {
        let rgb = RgbImage::new(64, 64);
        assert!(flatten(&rgb, [(1.0, 1.0); 4]).is_none());
        assert!(flatten(&rgb, [(f32::NAN, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0)]).is_none());
    }
}
