//! `lorakit-world`: the quick-start world's measure from the command line.
//!
//! - `read IMAGE...`: one JSON line per image saying which shape and colour it shows.
//! - `compare --lorakit BIN --model DIR --lora FILE --out DIR [--seeds N] [--steps N] [--cfg X]
//!   [--sampler NAME] [--size PX]`: draws the quick start's probe prompts with and without the
//!   LoRA and prints one JSON object of rates (the quick-start benchmark runs it on lorakit's and
//!   sd-scripts' LoRAs).

use std::path::PathBuf;
use std::process::ExitCode;

use lorakit_world::probe::{base_probes, compare, concept_probes, Comparison, Generator};

const USAGE: &str = "usage: lorakit-world read IMAGE...\n       lorakit-world compare --lorakit BIN --model DIR --lora FILE --out DIR [--seeds N] [--steps N] [--cfg X] [--sampler NAME] [--size PX]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.split_first() {
        Some((c, files)) if c == "read" && !files.is_empty() => read(files),
        Some((c, rest)) if c == "compare" => run_compare(rest),
        _ => Err(USAGE.to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn read(files: &[String]) -> Result<(), String> {
    for file in files {
        let r = lorakit_world::read_image(std::path::Path::new(file))?;
        println!(
            "{{\"file\":{file:?},\"shape\":{},\"best\":{},\"fit\":{:.3},\"spread\":{:.3},\"likeness\":{:.3},\"colour\":{},\"background\":{:?},\"area\":{:.3},\"centre\":[{:.3},{:.3}]}}",
            json_name(r.shape.map(|s| s.name())),
            json_name(r.best.map(|s| s.name())),
            r.fit,
            r.spread,
            r.likeness,
            json_name(r.colour),
            r.background,
            r.area,
            r.centre.0,
            r.centre.1
        );
    }
    Ok(())
}

fn run_compare(args: &[String]) -> Result<(), String> {
    let get = |name: &str| -> Option<String> {
        let i = args.iter().position(|a| a == name)?;
        args.get(i + 1).cloned()
    };
    let need = |v: Option<String>, name: &str| v.ok_or_else(|| format!("{name} is needed\n{USAGE}"));
    let lorakit = PathBuf::from(need(get("--lorakit"), "--lorakit")?);
    let model = PathBuf::from(need(get("--model"), "--model")?);
    let lora = PathBuf::from(need(get("--lora"), "--lora")?);
    let out_dir = PathBuf::from(need(get("--out"), "--out")?);
    let number = |v: Option<String>, default: f64, name: &str| -> Result<f64, String> {
        v.map_or(Ok(default), |s| s.parse::<f64>().map_err(|_| format!("{name} {s:?} is not a number")))
    };
    let seeds = number(get("--seeds"), 8.0, "--seeds")? as u64;
    let generator = Generator {
        lorakit,
        model,
        size: number(get("--size"), 64.0, "--size")? as usize,
        steps: number(get("--steps"), 20.0, "--steps")? as usize,
        cfg: number(get("--cfg"), 7.0, "--cfg")?,
        sampler: get("--sampler").unwrap_or_else(|| "euler".into()),
        out_dir: out_dir.clone(),
    };
    std::fs::create_dir_all(&out_dir).map_err(|e| format!("{}: {e}", out_dir.display()))?;
    let seeds: Vec<u64> = (0..seeds).collect();
    let concept = compare(&generator, &lora, &concept_probes(), &seeds, "concept")?;
    let plain = compare(&generator, &lora, &base_probes(), &seeds, "plain")?;
    println!(
        "{{\"lora\":{:?},\"concept\":{},\"plain\":{}}}",
        lora.display().to_string(),
        summary(&concept),
        summary(&plain)
    );
    Ok(())
}

fn summary(c: &Comparison) -> String {
    let r = c.rates();
    format!(
        "{{\"images\":{},\"base_shape\":{:.3},\"base_shape_colour\":{:.3},\"lora_shape\":{:.3},\"lora_shape_colour\":{:.3},\"lora_same_as_base\":{:.3}}}",
        c.base.images, r.base_shape, r.base_shape_colour, r.lora_shape, r.lora_shape_colour, r.lora_same_as_base
    )
}

fn json_name(name: Option<&str>) -> String {
    name.map_or("null".into(), |n| format!("{n:?}"))
}
