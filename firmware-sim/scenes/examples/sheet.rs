//! Writes one PNG per format and condition into a folder, to look at what the camera draws.
use parkpay_scenes::{encode_png, Condition, FontChoice, PlateFormat, Scene};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "scenes-sheet".into());
    let font = std::env::args()
        .nth(2)
        .and_then(|f| FontChoice::parse(&f))
        .unwrap_or_default();
    std::fs::create_dir_all(&dir)?;
    for format in PlateFormat::ALL {
        for condition in Condition::ALL {
            let s = Scene::generate(format, condition, 1, font);
            let path = format!("{dir}/{}-{}.png", format.as_str(), condition.as_str());
            std::fs::write(&path, encode_png(&s.image)?)?;
            println!("{path} {}", s.plate);
        }
    }
    Ok(())
}
