//! Writes one CSV line per glyph of the best read of simulated scenes, for fitting the reader's
//! confidence curve: `calib PER_CELL SEED FONT > glyphs.csv`.
use image::DynamicImage;
use parkpay_gateway::reader::PureReader;
use parkpay_scenes::{Condition, FontChoice, PlateFormat, Scene};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(10);
    let seed: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1000);
    let font = args
        .get(3)
        .and_then(|f| FontChoice::parse(f))
        .unwrap_or_default();
    let reader = PureReader::new();
    println!("format,condition,seed,pos,province,score,margin,correct,plate_ok");
    for format in PlateFormat::ALL {
        for condition in Condition::ALL {
            for i in 0..n {
                let s = Scene::generate(format, condition, seed + i, font);
                let truth: Vec<char> = s.plate.chars().filter(|c| *c != ' ').collect();
                let Some((plate, slots)) = reader.read_slots(&DynamicImage::ImageRgb8(s.image))
                else {
                    continue;
                };
                let ok = plate == s.plate;
                for (p, (c, score, margin)) in slots.iter().enumerate() {
                    let correct = slots.len() == truth.len() && truth[p] == *c;
                    println!(
                        "{},{},{},{p},{},{score:.4},{margin:.4},{},{}",
                        format.as_str(),
                        condition.as_str(),
                        seed + i,
                        u8::from(!c.is_ascii()),
                        u8::from(correct),
                        u8::from(ok)
                    );
                }
            }
        }
    }
}
