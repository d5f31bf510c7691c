//! Prints what the reader saw in one simulated scene: `explain FORMAT CONDITION SEED [FONT]`.
use parkpay_gateway::reader::PureReader;
use parkpay_scenes::{Condition, FontChoice, PlateFormat, Scene};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let format = PlateFormat::ALL
        .into_iter()
        .find(|f| Some(f.as_str()) == args.get(1).map(String::as_str))
        .unwrap_or(PlateFormat::CnBlue);
    let condition = Condition::ALL
        .into_iter()
        .find(|c| Some(c.as_str()) == args.get(2).map(String::as_str))
        .unwrap_or(Condition::Clean);
    let seed = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(1);
    let font = args
        .get(4)
        .and_then(|f| FontChoice::parse(f))
        .unwrap_or_default();
    let scene = Scene::generate(format, condition, seed, font);
    println!(
        "truth {} quad {:?}",
        scene.plate,
        scene.plate_quad.map(|(x, y)| (x as i32, y as i32))
    );
    let path = std::env::temp_dir().join("explain.png");
    if scene.image.save(&path).is_ok() {
        println!("frame written to {}", path.display());
    }
    print!(
        "{}",
        PureReader::new().explain(&image::DynamicImage::ImageRgb8(scene.image))
    );
}
