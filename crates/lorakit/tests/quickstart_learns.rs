//! The quick start teaches the model something you can see: README's first command (trains
//! examples/quickstart.toml: the pretrained tiny examples/quickstart/shapes-sd15 and the star of
//! examples/shapes), then the probe prompts drawn with and without its LoRA through `lorakit
//! generate`, each image read by lorakit-world's measure, which knows nothing of any model.

use crate::common;

use std::path::PathBuf;
use std::process::Command;

use common::{output_within, repo, text};
use lorakit_world::probe::{base_probes, compare, concept_probes, Comparison, Generator};

fn report(name: &str, c: &Comparison) -> String {
    let r = c.rates();
    format!(
        "{name}: {} images; base: shape {:.2}, shape+colour {:.2}; LoRA: shape {:.2}, shape+colour {:.2}, same as base {:.2}",
        c.base.images, r.base_shape, r.base_shape_colour, r.lora_shape, r.lora_shape_colour, r.lora_same_as_base
    )
}

#[test]
fn the_quickstart_lora_draws_the_new_shape_and_leaves_the_rest_alone() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lorakit"));
    cmd.arg("train").arg(repo("examples/quickstart.toml"));
    cmd.arg("--set").arg(format!("folders.output_dir={}", out.display()));
    // The samples and the resumable state are the quick start's, not what is measured here.
    cmd.args(["--set", "samples.sample_every_n_epochs=0", "--set", "save.save_state=false"]);
    let o = output_within(cmd, 900);
    assert!(o.status.success(), "{}", text(&o));
    let lora = out.join("quickstart.safetensors");
    assert!(lora.is_file(), "{}", text(&o));

    let generator = Generator {
        lorakit: PathBuf::from(env!("CARGO_BIN_EXE_lorakit")),
        model: repo("examples/quickstart/shapes-sd15"),
        size: 64,
        steps: 20,
        cfg: 7.0,
        sampler: "euler".into(),
        out_dir: dir.path().join("probe"),
    };
    std::fs::create_dir_all(&generator.out_dir).unwrap();
    let seeds: Vec<u64> = (0..4).collect();
    let concept = compare(&generator, &lora, &concept_probes(), &seeds, "concept").unwrap();
    let plain = compare(&generator, &lora, &base_probes(), &seeds, "plain").unwrap();
    let numbers = format!("{}\n{}", report("trigger prompts", &concept), report("prompts without it", &plain));
    eprintln!("{numbers}");

    // The base model draws what the world taught it...
    assert!(plain.rates().base_shape_colour >= THRESHOLDS.base_prompted, "{numbers}");
    // ...has never seen the star...
    assert!(concept.rates().base_shape <= THRESHOLDS.base_star, "{numbers}");
    // ...and draws it with the LoRA, in colours and places the dataset never showed.
    assert!(concept.rates().lora_shape >= THRESHOLDS.lora_star, "{numbers}");
    assert!(concept.rates().lora_shape_colour >= THRESHOLDS.lora_star_colour, "{numbers}");
    // Without the trigger word the LoRA leaves the model's drawings as they were.
    assert!(plain.rates().lora_same_as_base >= THRESHOLDS.unchanged, "{numbers}");
}

struct Thresholds {
    base_prompted: f64,
    base_star: f64,
    lora_star: f64,
    lora_star_colour: f64,
    unchanged: f64,
}

/// Margins below the rates measured on this machine (2 cores, x86-64; 6 seeds per prompt:
/// base model 1.00 of plain prompts drawn as asked, 0.00 stars; LoRA 0.50 stars, 0.75 of plain
/// prompts unchanged), so that another CPU's rounding may flip an image or two without failing.
/// The LoRA draws the star in a new place on white and in a new colour (6/6 each), not yet on
/// black or gray (0/6): what is asserted is "far more often than the base model", not "always".
const THRESHOLDS: Thresholds =
    Thresholds { base_prompted: 0.85, base_star: 0.1, lora_star: 0.35, lora_star_colour: 0.3, unchanged: 0.55 };
