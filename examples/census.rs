//! The MMoE paper's real-data benchmark (Ma et al., KDD 2018, section 6.2): UCI
//! Census-Income (KDD), two binary tasks per task group, trained on the GPU.
//!
//! ```text
//! cargo run --release --example census -- --data DIR [--group 1|2]
//!     [--model mmoe|omoe|shared-bottom] [--epochs N] [--experts N] [--units N]
//!     [--features onehot|embedding] [--lr X] [--seed N] [--batch N] [--json]
//!     [--save FILE] [--export-csv FILE] [--export-rows FILE]
//! ```
//!
//! `DIR` holds UCI's `census-income.data` and `census-income.test` (decompressed).
//! Training rows are the whole `.data` file; the `.test` rows are split 1:1 at random
//! (by `--seed`) into validation and test. After every epoch the validation AUC of
//! both tasks is measured, and the parameters of the epoch with the best validation
//! AUC on the main task (income for group 1, education for group 2) are the ones
//! reported on validation and test. `--json` prints one JSON object instead of the
//! human-readable report (epoch lines then go to stderr). `--save FILE` writes the
//! best epoch's checkpoint and `--export-csv FILE` the test rows as model inputs:
//! `examples/predict` runs the one on the other.
//!
//! `--features embedding` gives the model the categorical attributes as categorical
//! fields, each looked up in an embedding table (`mmoe_wgpu::data::census_fields`:
//! vocabularies built on the training file, the width of each table from its
//! vocabulary's size), beside the 7 standardised numbers; the checkpoint then
//! carries the vocabularies and the numbers' standardisation, and `examples/predict`
//! runs it on raw census rows (`--export-rows FILE` writes the test rows so). A few more flags
//! (`--tower`, `--weight-decay`, `--schedule`, `--max-steps`) exist for
//! experiments; run with `--help` for every flag and its default.
//!
//! The defaults (8 experts of 16 ReLU units, towers of 8, Adam at 2e-3 with cosine
//! decay to zero, batch 256, 4 epochs = 3,120 steps) were measured on lavapipe with
//! 2 CPU cores shared with other jobs: MMoE test AUC income ≈ 0.947 and marital
//! status ≈ 0.994 on group 1, education ≈ 0.890 and marital status ≈ 0.994 on
//! group 2 (seeds 1–3), each run in 4–11 minutes of wall time depending on the load.

#[path = "census/args.rs"]
mod args;
#[path = "census/data.rs"]
mod data;
#[path = "census/export.rs"]
mod export;
#[path = "census/report.rs"]
mod report;

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use mmoe_wgpu::Gpu;
use mmoe_wgpu::data::census::TaskGroup;
use mmoe_wgpu::kernels::optimizer::OptimizerConfig;
use mmoe_wgpu::model::{
    Architecture, Checkpoint, FieldConfig, Gate, Level, ModelConfig, TableOptimizer, TaskConfig,
    TaskKind, Trainer,
};
use mmoe_wgpu::rng::Rng;

use args::{Features, ModelKind, Options, Schedule};
use data::{Data, Split};
use report::Outcome;

/// Rows per forward pass when evaluating.
const EVAL_CHUNK: usize = 8192;

fn main() -> ExitCode {
    let options = Options::parse_or_exit();
    match run(&options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The data files, checked before the slow parts start.
fn check_data_dir(dir: &Path) -> Result<(), String> {
    if !dir.is_dir() {
        return Err(format!(
            "census data directory `{}` does not exist or is not a directory \
             (it must hold census-income.data and census-income.test)",
            dir.display()
        ));
    }
    for name in ["census-income.data", "census-income.test"] {
        let file = dir.join(name);
        if !file.is_file() {
            let hint = if dir.join(format!("{name}.xz")).is_file() {
                format!(" (decompress it first: xz -dk {}.xz)", file.display())
            } else {
                String::new()
            };
            return Err(format!("`{}` not found{hint}", file.display()));
        }
    }
    Ok(())
}

/// Where `--save` writes, checked before training so that a typo costs seconds,
/// not a run.
fn check_save_path(path: &Path) -> Result<(), String> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(format!(
            "cannot save to `{}`: directory `{}` does not exist",
            path.display(),
            dir.display()
        ));
    }
    if path.is_dir() {
        return Err(format!(
            "cannot save to `{}`: it is a directory",
            path.display()
        ));
    }
    Ok(())
}

fn model_config(o: &Options, inputs: usize, fields: Vec<FieldConfig>) -> ModelConfig {
    let architecture = match o.model {
        ModelKind::Mmoe => Architecture::Mmoe {
            experts: o.experts,
            expert_layers: vec![o.units],
            gate: Gate::SOFTMAX,
            task_experts: 0,
        },
        ModelKind::Omoe => Architecture::Omoe {
            experts: o.experts,
            expert_layers: vec![o.units],
            gate: Gate::SOFTMAX,
        },
        ModelKind::SharedBottom => Architecture::SharedBottom {
            bottom_layers: vec![o.experts * o.units],
        },
        ModelKind::Cgc | ModelKind::Ple => {
            let levels = if o.model == ModelKind::Cgc {
                1
            } else {
                o.levels
            };
            let level = Level::new(o.shared_experts, o.task_experts, o.units);
            Architecture::Ple {
                levels: vec![level; levels],
            }
        }
    };
    let tasks = task_keys(o.group)
        .iter()
        .map(|name| TaskConfig::new(*name, TaskKind::BinaryClassification))
        .collect();
    ModelConfig {
        inputs,
        fields,
        shared_layers: Vec::new(),
        architecture,
        expert_inputs: Vec::new(),
        tower_layers: vec![o.tower],
        tasks,
        optimizer: if o.weight_decay > 0.0 {
            OptimizerConfig::AdamW {
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: o.weight_decay,
            }
        } else {
            ModelConfig::ADAM
        },
        table_optimizer: match o.table_lr {
            None => TableOptimizer::LAZY_ADAM,
            Some(rate) => match TableOptimizer::LAZY_ADAM {
                TableOptimizer::LazyAdam {
                    beta1, beta2, eps, ..
                } => TableOptimizer::LazyAdam {
                    beta1,
                    beta2,
                    eps,
                    learning_rate: Some(rate),
                },
                other => other,
            },
        },
        learning_rate: o.lr,
        seed: o.seed,
    }
}

/// Scales every embedding table's initial values by `factor`.
fn scale_tables(trainer: &Trainer, factor: f32) -> Result<(), String> {
    let executor = trainer.executor();
    let tables = trainer
        .config()
        .fields
        .iter()
        .filter(|f| f.shares.is_none())
        .count();
    for t in 0..tables {
        let mut values = executor.table(t).map_err(|e| e.to_string())?;
        values.iter_mut().for_each(|v| *v *= factor);
        executor.set_table(t, &values).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Short task names, main task first: also the JSON keys.
fn task_keys(group: TaskGroup) -> [&'static str; 2] {
    match group {
        TaskGroup::IncomeMarital => ["income", "marital"],
        TaskGroup::EducationMarital => ["education", "marital"],
    }
}

fn group_number(group: TaskGroup) -> u8 {
    match group {
        TaskGroup::IncomeMarital => 1,
        TaskGroup::EducationMarital => 2,
    }
}

/// Learning rate at `step` (0-based) of `total`.
fn learning_rate(o: &Options, step: usize, total: usize) -> f32 {
    match o.schedule {
        Schedule::Constant => o.lr,
        Schedule::Cosine => {
            let progress = step as f64 / total.max(1) as f64;
            (o.lr as f64 * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())) as f32
        }
    }
}

fn run(o: &Options) -> Result<(), String> {
    let start = Instant::now();
    check_data_dir(&o.data)?;
    if let Some(path) = &o.save {
        check_save_path(path)?;
    }
    if o.export_csv.is_some() && o.features == Features::Embedding {
        return Err(
            "--export-csv writes one-hot inputs; with --features embedding, \
                    --export-rows writes the test rows for examples/predict"
                .into(),
        );
    }
    let keys = task_keys(o.group);
    let gpu = Gpu::new().map_err(|e| e.to_string())?;
    let data = Data::load(&o.data, o.features, o.group, o.seed)?;
    let say = |line: String| {
        if o.json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    };
    if let (Some(path), Some(test)) = (&o.export_csv, data.one_hot_test()) {
        let names = export::input_names(&o.data, test.inputs)?;
        export::write_csv(path, &names, test)?;
        say(format!(
            "wrote the {} test rows to {}",
            test.rows,
            path.display()
        ));
    }
    if let Some(path) = &o.export_rows {
        let rows = export::write_raw_rows(path, &o.data, o.seed)?;
        say(format!(
            "wrote the {rows} raw test rows to {}",
            path.display()
        ));
    }
    let load_seconds = start.elapsed().as_secs_f64();
    let fields = data.fields();
    let width = data.inputs() + fields.iter().map(|f| f.dim).sum::<usize>();
    let config = model_config(o, data.inputs(), fields);
    // Training steps take `o.batch` rows; evaluation runs in chunks of the capacity,
    // and fewer, larger chunks mean fewer round trips to the device.
    let capacity = o.batch.max(EVAL_CHUNK);
    let mut trainer = Trainer::new(&gpu, config, capacity).map_err(|e| e.to_string())?;
    if let Data::Fields(s) = &data {
        trainer
            .set_encoders(s.encoding.encoders().clone())
            .map_err(|e| e.to_string())?;
        if o.table_init_std != 1.0 {
            scale_tables(&trainer, o.table_init_std)?;
        }
    }
    if !o.json {
        println!("adapter: {}", gpu.adapter());
        println!(
            "group {}: {} (main) and {}; {} inputs ({}); {} train, {} validation, {} test \
             rows (device and data ready in {load_seconds:.1} s)",
            group_number(o.group),
            o.group.task_names()[0],
            o.group.task_names()[1],
            width,
            match &data {
                Data::OneHot(_) => "one-hot".to_string(),
                Data::Fields(_) => format!(
                    "{} dense, {} fields of embedding tables",
                    data.inputs(),
                    trainer.config().fields.len()
                ),
            },
            data.rows(Split::Train),
            data.rows(Split::Validation),
            data.rows(Split::Test),
        );
        let shape = match o.model {
            ModelKind::SharedBottom => format!("bottom {}", o.experts * o.units),
            ModelKind::Cgc => format!(
                "{} shared + {} per task experts × {}",
                o.shared_experts, o.task_experts, o.units
            ),
            ModelKind::Ple => format!(
                "{} levels of {} shared + {} per task experts × {}",
                o.levels, o.shared_experts, o.task_experts, o.units
            ),
            _ => format!("{} experts × {}", o.experts, o.units),
        };
        println!(
            "model {} ({shape}, towers {}); Adam lr {} ({:?}), weight decay {}, \
             batch {}, {} epochs, seed {}",
            o.model.name(),
            o.tower,
            o.lr,
            o.schedule,
            o.weight_decay,
            o.batch,
            o.epochs,
            o.seed,
        );
    }

    let per_epoch = data.rows(Split::Train).div_ceil(o.batch);
    let per_epoch = o.max_steps.map_or(per_epoch, |m| m.min(per_epoch));
    let total = per_epoch * o.epochs;
    let bar = ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{wide_bar}] {pos}/{len} steps {per_sec} eta {eta} {msg}",
        )
        .map_err(|e| e.to_string())?
        .progress_chars("=> "),
    );
    let mut rng = Rng::new(o.seed).fork(0x5eed);
    let mut best: Option<(usize, [f64; 2], Checkpoint)> = None;
    let train_start = Instant::now();
    let mut step = 0;
    let mut eval_seconds = 0.0;
    for epoch in 1..=o.epochs {
        let order = data.shuffled_order(&mut rng);
        for rows in order.chunks(o.batch).take(per_epoch) {
            trainer
                .set_learning_rate(learning_rate(o, step, total))
                .map_err(|e| e.to_string())?;
            data.step(&mut trainer, rows)?;
            step += 1;
            bar.inc(1);
        }
        let loss = trainer.loss().map_err(|e| e.to_string())?;
        let eval_start = Instant::now();
        let validation = data.evaluate(&mut trainer, Split::Validation)?;
        let improved = best.as_ref().is_none_or(|(_, b, _)| validation[0] > b[0]);
        if improved {
            let mut checkpoint = trainer.checkpoint().map_err(|e| e.to_string())?;
            // With fields, the numbers' standardisation travels with the
            // vocabularies, so that examples/predict can read raw census rows.
            if let Data::Fields(s) = &data {
                checkpoint = checkpoint
                    .with_dense_inputs(s.encoding.dense_inputs())
                    .map_err(|e| e.to_string())?;
            }
            // Written at every improvement, not once at the end: a run stopped part
            // way still leaves its best epoch so far, and the atomic write never
            // leaves half a file.
            if let Some(path) = &o.save {
                checkpoint.save(path).map_err(|e| e.to_string())?;
            }
            best = Some((epoch, validation, checkpoint));
        }
        // Validation and keeping the best epoch are not training steps.
        eval_seconds += eval_start.elapsed().as_secs_f64();
        let line = format!(
            "epoch {epoch:>3}: last batch loss {:.4} {:.4}; validation AUC {} {:.4}, {} {:.4}{} \
             ({:.0} s)",
            loss[0],
            loss[1],
            keys[0],
            validation[0],
            keys[1],
            validation[1],
            if improved { " *" } else { "" },
            train_start.elapsed().as_secs_f64(),
        );
        bar.set_message(format!("val {} {:.4}", keys[0], validation[0]));
        // Epoch lines go to stdout, or to stderr under --json; `suspend` clears the
        // bar while printing (a hidden bar's `println` would drop the line).
        bar.suspend(|| {
            if o.json {
                eprintln!("{line}");
            } else {
                println!("{line}");
            }
        });
    }
    bar.finish_and_clear();
    // Optimizer steps only; evaluation is everything after loading that is not a step.
    let train_seconds = train_start.elapsed().as_secs_f64() - eval_seconds;
    let (best_epoch, validation, checkpoint) = best.ok_or("no epoch was trained")?;
    trainer.restore(&checkpoint).map_err(|e| e.to_string())?;
    let test = data.evaluate(&mut trainer, Split::Test)?;
    let seconds = start.elapsed().as_secs_f64();
    let outcome = Outcome {
        best_epoch,
        steps: step,
        validation,
        test,
        load_seconds,
        train_seconds,
        eval_seconds: seconds - load_seconds - train_seconds,
        seconds,
    };
    if o.json {
        println!("{}", report::json(o, &outcome));
    } else {
        report::print(o, &outcome);
    }
    Ok(())
}
