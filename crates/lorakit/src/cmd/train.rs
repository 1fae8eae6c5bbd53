//! `lorakit train`: run a LoRA training from a TOML config; `lorakit config new`: write a
//! commented starting config.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use lorakit_train::{TrainConfig, TrainError, TrainEvent};

/// Arguments of `lorakit train`.
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    lorakit train examples/quickstart.toml\n  \
    lorakit train my.toml --set training.max_train_epochs=4 --set learning_rate=5e-5\n  \
    lorakit train my.toml --print-config\n  \
    lorakit train my.toml --dry-run\n  \
    lorakit train --from-kohya sd-scripts-args.toml --print-config > my.toml\n  \
    lorakit train my.toml --set save.resume=output/mychar-000004-state")]
pub struct TrainArgs {
    /// The training config (TOML). See `lorakit config new`.
    #[arg(value_name = "CONFIG", required_unless_present = "from_kohya")]
    config: Option<PathBuf>,
    /// Override a config value: `section.key=value` or a bare key (`learning_rate=1e-4`).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Print the resolved config (every key, defaults included) and exit.
    #[arg(long)]
    print_config: bool,
    /// Load the dataset and model, print the plan (steps, param groups, LR curve, memory
    /// estimate, warnings) and exit without training.
    #[arg(long)]
    dry_run: bool,
    /// Read an sd-scripts `--config_file` TOML or a kohya_ss GUI JSON instead of a lorakit config.
    #[arg(long, value_name = "FILE", conflicts_with = "config")]
    from_kohya: Option<PathBuf>,
    /// A folder looked at after every step: a file named `save-now` there saves the LoRA (and
    /// the state with save.save_state) at that step, `sample-now` renders the sample prompts;
    /// each is removed when taken. `lorakit gui` uses it for Save now / Sample now.
    #[arg(long, value_name = "DIR")]
    requests: Option<PathBuf>,
}

/// `lorakit config …`.
#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Write a commented starting config.
    New(NewArgs),
}

/// Arguments of `lorakit config new`.
#[derive(Args, Debug)]
pub struct NewArgs {
    /// sd15-character, sd15-style, sdxl-character, sdxl-style, pony or illustrious.
    #[arg(long, default_value = "sd15-character")]
    preset: String,
    /// Where to write it (default: `<preset>.toml`); `-` prints it.
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Replace an existing file.
    #[arg(long)]
    force: bool,
}

/// Runs `lorakit config …`.
pub fn run_config(cmd: ConfigCommand) -> Result<ExitCode> {
    match cmd {
        ConfigCommand::New(args) => {
            let text = lorakit_train::presets::preset(&args.preset).map_err(anyhow::Error::msg)?;
            let out = args.output.unwrap_or_else(|| PathBuf::from(format!("{}.toml", args.preset)));
            if out.as_os_str() == "-" {
                print!("{text}");
                return Ok(ExitCode::SUCCESS);
            }
            if out.exists() && !args.force {
                bail!("{} exists; use --force to replace it or -o to choose another name", out.display());
            }
            lorakit_dataset::fs_atomic::write_atomic(&out, text.as_bytes())
                .with_context(|| format!("cannot write {}", out.display()))?;
            println!(
                "wrote {} — edit the model path and dataset folder, then: lorakit train {}",
                out.display(),
                out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Runs `lorakit train`.
pub fn run(args: TrainArgs) -> Result<ExitCode> {
    let config = if let Some(kohya) = &args.from_kohya {
        let imported = lorakit_train::kohya_import::import_file(kohya)?;
        for line in imported.report(kohya) {
            eprintln!("{line}");
        }
        let mut table = imported.table;
        lorakit_train::config::apply_overrides(&mut table, &args.set).map_err(anyhow::Error::msg)?;
        let config: TrainConfig =
            toml::Value::Table(table).try_into().map_err(|e| anyhow::anyhow!("{}: {e}", kohya.display()))?;
        config.validate().map_err(|e| anyhow::anyhow!("{}: {e}", kohya.display()))?;
        if let Some((path, prompts)) = &imported.prompt_file {
            // The kohya_ss GUI keeps sample prompts as text and writes this file when it starts.
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
            }
            lorakit_dataset::fs_atomic::write_atomic(path, prompts.as_bytes())
                .with_context(|| format!("cannot write the sample prompts to {}", path.display()))?;
            eprintln!("note: {}: sample prompts written to {}", kohya.display(), path.display());
        }
        config
    } else {
        let path = args.config.as_ref().expect("clap requires CONFIG");
        TrainConfig::load(path, &args.set)?
    };
    if args.print_config {
        print!("{}", config.to_toml_string());
        return Ok(ExitCode::SUCCESS);
    }

    if args.dry_run {
        let mut notes = |event: TrainEvent| {
            if let TrainEvent::Note(n) = event {
                eprintln!("{}", note_line(&n));
            }
        };
        let plan = lorakit_train::dry_run(config, &mut notes)?;
        print!("{plan}");
        return Ok(ExitCode::SUCCESS);
    }

    if config.accelerate.cpu_threads > 0 {
        // Read by rayon when its pool starts (nothing has used it yet) and by candle per op.
        std::env::set_var("RAYON_NUM_THREADS", config.accelerate.cpu_threads.to_string());
    }

    let stop = Arc::new(AtomicBool::new(false));
    install_ctrl_c(stop.clone());

    let bar = ProgressBar::hidden();
    let mut caching: Option<ProgressBar> = None;
    let started = Instant::now();
    let mut events = |event: TrainEvent| match event {
        TrainEvent::Planned { total_steps, epochs, batches_per_epoch, parameters, start_step } => {
            eprintln!(
                "training {parameters} LoRA parameters: {total_steps} steps, {epochs} epoch(s) of {batches_per_epoch} batches"
            );
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            bar.set_length(total_steps);
            bar.set_position(start_step);
            bar.set_style(
                ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {msg}  {per_sec}  ETA {eta}")
                    .expect("valid template"),
            );
            bar.reset_eta();
        }
        TrainEvent::Caching { done, total } => {
            let b = caching.get_or_insert_with(|| {
                let b = ProgressBar::new(total as u64);
                b.set_style(
                    ProgressStyle::with_template("caching latents {bar:30} {pos}/{len}").expect("valid template"),
                );
                b
            });
            b.set_position(done as u64);
            if done == total {
                b.finish_and_clear();
            }
        }
        TrainEvent::Step { step, epoch, loss, average_loss, lr, .. } => {
            bar.set_position(step);
            bar.set_message(format!("epoch {epoch}  loss {loss:.4} (avg {average_loss:.4})  lr {lr:.2e}"));
        }
        TrainEvent::Saved(path) => say(&bar, format!("saved {}", path.display())),
        TrainEvent::Sampled(path) => say(&bar, format!("sample {}", path.display())),
        TrainEvent::Note(text) => say(&bar, note_line(&text)),
    };
    let result = lorakit_train::train_with_requests(config, &stop, args.requests.clone(), &mut events);
    bar.finish_and_clear();
    match result {
        Ok(summary) => {
            if let Some(state) = summary.interrupted_state {
                eprintln!(
                    "interrupted at step {}: state saved to {}\nresume with: --set save.resume={}",
                    summary.steps,
                    state.display(),
                    state.display()
                );
                return Ok(ExitCode::from(130));
            }
            let mins = started.elapsed().as_secs_f64() / 60.0;
            eprintln!(
                "done: {} steps in {mins:.1} min; LoRA: {}; logs: {}",
                summary.steps,
                summary.final_lora.map(|p| p.display().to_string()).unwrap_or_default(),
                summary.log_dir.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(TrainError::NonFinite(msg)) => {
            eprintln!("error: {msg}");
            Ok(ExitCode::from(3))
        }
        Err(e) => Err(e.into()),
    }
}

/// Prints a line above the progress bar, or plainly before the bar is shown (a hidden bar
/// drops `println`, and notes such as "resuming from …" come before training starts).
fn say(bar: &ProgressBar, line: String) {
    if bar.is_hidden() {
        eprintln!("{line}");
    } else {
        bar.println(line);
    }
}

/// First Ctrl-C (SIGINT), SIGTERM or SIGHUP — a closed terminal, `kill`, a job scheduler's
/// stop: finish the current step, save a state, exit. A second one: exit at once.
fn install_ctrl_c(stop: Arc<AtomicBool>) {
    let result = ctrlc::set_handler(move || {
        if stop.swap(true, Ordering::SeqCst) {
            eprintln!("\nsecond interrupt: exiting without saving");
            std::process::exit(130);
        }
        eprintln!(
            "\ninterrupted (Ctrl-C, SIGTERM or SIGHUP): finishing this step and saving a resumable state (interrupt again to quit at once)"
        );
    });
    if let Err(e) = result {
        tracing::warn!("cannot install the interrupt handler: {e}");
    }
}

/// A training note as printed: warnings keep their own `warning:` label, the rest get `note:`.
fn note_line(text: &str) -> String {
    if text.starts_with("warning: ") {
        text.to_string()
    } else {
        format!("note: {text}")
    }
}
