//! Prints a WD tagger's probabilities for images as JSON (`{"image path": [p, ...], ...}`), the
//! way `lorakit caption wd14` computes them (kohya's preprocessing, batches of 4), so
//! `tools/bench/caption/run.py --check` can compare them with onnxruntime's.
//!
//! `cargo run --release -p lorakit-caption --example wd14_probs -- MODEL_DIR IMAGE...`

use std::path::PathBuf;

use candle_core::Device;
use lorakit_caption::wd14::{Resize, Tagger};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args_os().skip(1);
    let model = PathBuf::from(args.next().ok_or("usage: wd14_probs MODEL_DIR IMAGE...")?);
    let images: Vec<PathBuf> = args.map(PathBuf::from).collect();
    let tagger = Tagger::load(&model, &Device::Cpu)?;
    let mut out = serde_json::Map::new();
    let mut failed = None;
    tagger.tag_files(&images, Resize::Kohya, 4, |path, probs| match probs {
        Ok(p) => {
            out.insert(path.display().to_string(), serde_json::json!(p));
        }
        Err(e) => failed = Some(e),
    })?;
    if let Some(e) = failed {
        return Err(e.into());
    }
    println!("{}", serde_json::Value::Object(out));
    Ok(())
}
