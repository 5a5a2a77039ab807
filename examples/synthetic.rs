//! The MMoE paper's synthetic task-correlation experiment (Ma et al., KDD 2018,
//! §3.2): shared-bottom, OMoE and MMoE of matched size trained on two regression
//! tasks of set correlation, on the GPU.
//!
//! ```text
//! cargo run --release --example synthetic
//! cargo run --release --example synthetic -- --correlations 0.5,1 --seeds 5 --json
//! cargo run --release --example synthetic -- --models mmoe --gate topk --k 2
//! cargo run --release --example synthetic -- --models mmoe --gate topk --k 2 --noise
//! cargo run --release --example synthetic -- --models mmoe --gate topk --k 2 --selection shared
//! cargo run --release --example synthetic -- --models mmoe,omoe --expert-init input-output
//! cargo run --release --example synthetic -- --data halves --correlations 0 --models mmoe,mmoe-halves
//! cargo run --release --example synthetic -- --help
//! ```
//!
//! Models (as in the paper, matched in size): MMoE and OMoE with 8 experts of one
//! ReLU layer of 16 units, shared-bottom with one ReLU bottom layer of 113 units;
//! towers of one ReLU layer of 8 units; Adam on the sum of the two tasks' MSE.
//! `--gate topk --k N` gives MMoE and OMoE sparse gates keeping N experts per
//! example, `--gate static` input-independent ones; `--balance W` adds the
//! load-balancing loss (`--balance-loss importance`, the default: W · CV² of the
//! importance; `--balance-loss load`: the Switch Transformer load loss, whose gradient
//! also reaches the experts a top-k gate did not pick); `--noise` (with `--gate topk`) makes the top-k gates noisy:
//! trainable Gaussian noise on their logits in training (Shazeer et al. 2017);
//! `--selection shared` (with `--gate topk`) gives both tasks' gates one selection of
//! N experts per example. `--models cgc,ple` adds Tang et al.'s (2020) models: CGC,
//! one level of `--shared-experts` shared experts and `--task-experts` per task, and
//! PLE, `--levels` such levels stacked; their experts' width is the one that brings
//! their parameter count closest to MMoE's.
//! `--models mmoe-halves` is MMoE with experts on feature subsets: 4 experts on each
//! half of the input, their width matching MMoE's parameter count; `--data halves`
//! puts each task on its own half of the input, where such experts should win.
//! `--expert-init input|input-output` starts each expert of MMoE and OMoE on its own
//! k-means cluster of the training rows (`Trainer::start_experts`): pre-trained on it
//! for `--pretrain-steps` steps, the gates routing each cluster to its expert.
//! Seed `s` draws the data (the same directions and sinusoids at every correlation)
//! and the initial weights; the three models of one seed see the same data.
//!
//! Prints a table of test MSE per model × correlation: the mean of the two tasks'
//! MSE on the labels' own scale (no standardisation), as mean ± sample standard
//! deviation over the seeds. Writes two PNG files (default under
//! `target/synthetic/`): the training-loss curves, one panel per correlation, and
//! heat maps of each task's mean gate weight per expert on the test set, one panel
//! per gated model × correlation. With `--json`, stdout carries one JSON object per
//! model × correlation × seed and the table goes to stderr. Bad flags are usage
//! errors (exit code 2).

#[path = "synthetic/experiment.rs"]
mod experiment;
#[path = "synthetic/plots.rs"]
mod plots;
#[path = "synthetic/report.rs"]
mod report;
#[path = "synthetic/trainability.rs"]
mod trainability;

use std::error::Error;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::error::ErrorKind;
use clap::{CommandFactory, Parser};
use mmoe_wgpu::Gpu;
use mmoe_wgpu::data::synthetic::SyntheticConfig;
use mmoe_wgpu::model::Gate;

use experiment::{ExpertInit, Model, RunSpec, Schedule, show};

/// The MMoE paper's synthetic task-correlation experiment (Ma et al., KDD 2018, §3.2)
/// on the GPU: trains each model at each correlation and seed, prints the test MSE
/// and draws the training-loss curves and the gate heat maps.
#[derive(Parser, Debug)]
#[command(name = "synthetic")]
struct Args {
    /// Task correlations to train at, each in [-1, 1].
    #[arg(long, value_delimiter = ',', default_values_t = [0.5, 0.9, 1.0],
          value_parser = correlation, allow_negative_numbers = true)]
    correlations: Vec<f64>,
    /// Models to train.
    #[arg(long, value_enum, value_delimiter = ',',
          default_values_t = [Model::SharedBottom, Model::Omoe, Model::Mmoe])]
    models: Vec<Model>,
    /// Optimizer steps per run.
    #[arg(long, default_value_t = 2000, allow_negative_numbers = true,
          value_parser = clap::value_parser!(u32).range(1..))]
    steps: u32,
    /// Rows per mini-batch.
    #[arg(long, default_value_t = 128, allow_negative_numbers = true,
          value_parser = clap::value_parser!(u32).range(1..))]
    batch_size: u32,
    /// Adam learning rate (the peak of the cosine schedule).
    #[arg(long, default_value_t = 1e-2, allow_negative_numbers = true,
          value_parser = positive)]
    learning_rate: f32,
    /// Learning-rate schedule over each run: cosine decays it to 1% by the last step.
    #[arg(long, value_enum, default_value_t = Schedule::Cosine)]
    schedule: Schedule,
    /// Number of seeds (data set and initial weights) per model × correlation.
    #[arg(long, default_value_t = 3, allow_negative_numbers = true,
          value_parser = clap::value_parser!(u64).range(1..))]
    seeds: u64,
    /// The first seed; runs use seeds first-seed .. first-seed + seeds.
    #[arg(long, default_value_t = 0)]
    first_seed: u64,
    /// Training rows per data set (mini-batches are drawn without replacement and
    /// reshuffled every epoch).
    #[arg(long, default_value_t = 100_000, allow_negative_numbers = true,
          value_parser = clap::value_parser!(u32).range(1..))]
    train_rows: u32,
    /// Test rows per data set.
    #[arg(long, default_value_t = 2_000, allow_negative_numbers = true,
          value_parser = clap::value_parser!(u32).range(1..))]
    test_rows: u32,
    /// Input dimension d.
    #[arg(long, default_value_t = 100, allow_negative_numbers = true,
          value_parser = clap::value_parser!(u32).range(2..))]
    inputs: u32,
    /// Number m of sinusoids in each label.
    #[arg(long, default_value_t = 10)]
    sinusoids: u32,
    /// Scale c of the task weight vectors.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true,
          value_parser = finite)]
    scale: f64,
    /// Gate of the MMoE and OMoE models: the paper's dense softmax, a sparse top-k
    /// gate (see --k) or a static (input-independent) one.
    #[arg(long, value_enum, default_value_t = GateChoice::Softmax)]
    gate: GateChoice,
    /// Experts each top-k gate keeps per example (with --gate topk), 1 to 8.
    #[arg(long, default_value_t = 2, allow_negative_numbers = true,
          value_parser = clap::value_parser!(u32).range(1..=8))]
    k: u32,
    /// Noisy top-k gating (Shazeer et al. 2017): trainable Gaussian noise on the
    /// gate logits in training, none in evaluation. Only with --gate topk.
    #[arg(long)]
    noise: bool,
    /// Which experts the tasks' top-k gates keep per example (with --gate topk): each
    /// its own k, or one selection of k shared by both (the experts with the largest
    /// summed logits), so that the experts compute k per example, not up to 2k.
    #[arg(long, value_enum, default_value_t = SelectionChoice::Own)]
    selection: SelectionChoice,
    /// Weight of the load-balancing loss on the gates (0: none).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true,
          value_parser = non_negative)]
    balance: f32,
    /// Which load-balancing loss --balance weighs: the importance loss (CV² of each
    /// gate's summed weights) or the Switch Transformer load loss (routed fraction ×
    /// mean full softmax, summed over the experts).
    #[arg(long, value_enum, default_value_t = BalanceChoice::Importance)]
    balance_loss: BalanceChoice,
    /// Print one JSON object per run on stdout (the table goes to stderr).
    #[arg(long)]
    json: bool,
    /// Where to write the training-loss curves (PNG).
    #[arg(long, default_value = "target/synthetic/loss.png")]
    loss_plot: PathBuf,
    /// Where to write the gate heat maps (PNG).
    #[arg(long, default_value = "target/synthetic/gates.png")]
    gate_plot: PathBuf,
    /// The paper's trainability experiment: N seeds (random starts and data sets)
    /// per model and correlation, instead of --seeds; prints the spread of the final
    /// test MSE and draws its histogram (see --trainability-plot).
    #[arg(long, value_name = "N", allow_negative_numbers = true,
          value_parser = clap::value_parser!(u64).range(1..))]
    trainability: Option<u64>,
    /// A run has failed when either task's test MSE is above this (the label noise's
    /// variance, 0.01, is the error of a perfect model).
    #[arg(long, default_value_t = 0.05, allow_negative_numbers = true,
          value_parser = positive_f64)]
    fail_mse: f64,
    /// How the experts of MMoE and OMoE start: random weights, or each pre-trained on
    /// its k-means cluster of the training rows (clustered on the input, or on the
    /// input joined with the standardised targets) with the gates routing each
    /// cluster to its expert. Shared-bottom has no experts and starts at random.
    #[arg(long, value_enum, default_value_t = ExpertInit::Random)]
    expert_init: ExpertInit,
    /// Pre-training steps per expert on its cluster (with --expert-init input or
    /// input-output; 0: none).
    #[arg(long, default_value_t = 100)]
    pretrain_steps: u32,
    /// Scale of the gates' start from the centroids (with --expert-init input or
    /// input-output; 0: the gates keep their random start).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true,
          value_parser = non_negative)]
    gate_scale: f32,
    /// The data: the paper's tasks of set correlation, or each task on its own half
    /// of the inputs (task 1 on the first, task 2 on the second; their correlation
    /// is 0 and --correlations only labels the runs), the setting of
    /// --models mmoe-halves.
    #[arg(long, value_enum, default_value_t = DataChoice::Paper)]
    data: DataChoice,
    /// Where to write the trainability histogram (PNG), with --trainability.
    #[arg(long, default_value = "target/synthetic/trainability.png")]
    trainability_plot: PathBuf,
    /// Extraction levels of the PLE model (CGC is one).
    #[arg(long, default_value_t = 2, allow_negative_numbers = true,
          value_parser = clap::value_parser!(u32).range(1..))]
    levels: u32,
    /// Shared experts in each level of CGC and PLE.
    #[arg(long, default_value_t = 4, allow_negative_numbers = true,
          value_parser = clap::value_parser!(u32).range(0..))]
    shared_experts: u32,
    /// Experts of each task's own in each level of CGC and PLE.
    #[arg(long, default_value_t = 2, allow_negative_numbers = true,
          value_parser = clap::value_parser!(u32).range(0..))]
    task_experts: u32,
}

/// The `--data` choices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum DataChoice {
    /// The paper's two tasks of set correlation on all inputs.
    Paper,
    /// Each task on its own half of the inputs.
    Halves,
}

/// The `--gate` choices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum GateChoice {
    /// Softmax over all experts (the paper's gate).
    Softmax,
    /// Softmax over the k largest logits.
    Topk,
    /// Learned per-task weights, the same for every example.
    Static,
}

/// The `--selection` choices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum SelectionChoice {
    /// Each task's gate keeps its own k experts.
    Own,
    /// One selection of k experts per example for every task's gate.
    Shared,
}

/// The `--balance-loss` choices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum BalanceChoice {
    /// w · CV² of each gate's importance.
    Importance,
    /// w · E · Σ_e f_e · P_e (Switch Transformer).
    Load,
}

impl Args {
    /// The gate the flags ask for.
    fn gate(&self) -> Gate {
        let mut gate = match self.gate {
            GateChoice::Softmax => Gate::SOFTMAX,
            GateChoice::Topk if self.noise => Gate::top_k(self.k as usize).noisy(),
            GateChoice::Topk => Gate::top_k(self.k as usize),
            GateChoice::Static => Gate::STATIC,
        };
        if self.selection == SelectionChoice::Shared {
            gate = gate.shared_selection();
        }
        match self.balance_loss {
            BalanceChoice::Importance => gate.balanced(self.balance),
            BalanceChoice::Load => gate.balanced_load(self.balance),
        }
    }
}

fn non_negative(s: &str) -> Result<f32, String> {
    let v: f32 = s.parse().map_err(|e| format!("`{s}`: {e}"))?;
    if v.is_finite() && v >= 0.0 {
        Ok(v)
    } else {
        Err(format!("{v} is not a finite number ≥ 0"))
    }
}

fn correlation(s: &str) -> Result<f64, String> {
    let p: f64 = s.parse().map_err(|e| format!("`{s}`: {e}"))?;
    if (-1.0..=1.0).contains(&p) {
        Ok(p)
    } else {
        Err(format!("{p} is not in [-1, 1]"))
    }
}

fn positive(s: &str) -> Result<f32, String> {
    let v: f32 = s.parse().map_err(|e| format!("`{s}`: {e}"))?;
    if v.is_finite() && v > 0.0 {
        Ok(v)
    } else {
        Err(format!("{v} is not a finite number > 0"))
    }
}

fn positive_f64(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("`{s}`: {e}"))?;
    if v.is_finite() && v > 0.0 {
        Ok(v)
    } else {
        Err(format!("{v} is not a finite number > 0"))
    }
}

fn finite(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("`{s}`: {e}"))?;
    if v.is_finite() {
        Ok(v)
    } else {
        Err(format!("{v} is not finite"))
    }
}

fn main() -> ExitCode {
    // Usage errors exit with code 2 (clap's convention); --help and --version with 0.
    let mut args = Args::parse();
    if let Some(seeds) = args.trainability {
        args.seeds = seeds;
    }
    if args.first_seed.checked_add(args.seeds).is_none() {
        Args::command()
            .error(
                ErrorKind::ValueValidation,
                "--first-seed + --seeds overflows a 64-bit seed",
            )
            .exit();
    }
    if args.noise && args.gate != GateChoice::Topk {
        Args::command()
            .error(
                ErrorKind::ArgumentConflict,
                "--noise makes top-k gates noisy: it needs --gate topk",
            )
            .exit();
    }
    if args.data == DataChoice::Halves && args.correlations.len() > 1 {
        Args::command()
            .error(
                ErrorKind::ArgumentConflict,
                "--data halves sets the tasks' correlation to 0: give at most one --correlations value",
            )
            .exit();
    }
    if args.selection == SelectionChoice::Shared && args.gate != GateChoice::Topk {
        Args::command()
            .error(
                ErrorKind::ArgumentConflict,
                "--selection shared shares the top-k gates' selection: it needs --gate topk",
            )
            .exit();
    }
    args.models.sort();
    args.models.dedup();
    let mut seen = Vec::new();
    args.correlations.retain(|c| {
        let new = !seen.contains(c);
        seen.push(*c);
        new
    });
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), Box<dyn Error>> {
    let started = Instant::now();
    let gpu = Gpu::new()?;
    eprintln!("adapter: {}", gpu.adapter());
    eprintln!(
        "{} model(s) × {} correlation(s) × {} seed(s): {} steps of {} rows, Adam, \
         learning rate {} ({:?}), {} training rows, experts start {:?}",
        args.models.len(),
        args.correlations.len(),
        args.seeds,
        args.steps,
        args.batch_size,
        args.learning_rate,
        args.schedule,
        args.train_rows,
        args.expert_init,
    );
    let data = SyntheticConfig {
        inputs: args.inputs as usize,
        scale: args.scale,
        sinusoids: args.sinusoids as usize,
        train_rows: args.train_rows as usize,
        validation_rows: 0,
        test_rows: args.test_rows as usize,
        ..SyntheticConfig::default()
    };
    let steps = args.steps as usize;
    let mut results = Vec::new();
    for &correlation in &args.correlations {
        for seed in args.first_seed..args.first_seed + args.seeds {
            let mut spec = RunSpec {
                model: Model::Mmoe,
                correlation,
                seed,
                steps,
                batch_size: args.batch_size as usize,
                learning_rate: args.learning_rate,
                schedule: args.schedule,
                data: data.clone(),
                log_every: (steps / 200).max(1),
                gate: args.gate(),
                expert_start: args
                    .expert_init
                    .start(args.pretrain_steps as usize, args.gate_scale),
                levels: experiment::LevelShape {
                    levels: args.levels as usize,
                    shared: args.shared_experts as usize,
                    task: args.task_experts as usize,
                },
                on_halves: args.data == DataChoice::Halves,
            };
            // The three models see the same data set.
            let (train, test) = experiment::data_for(&spec)?;
            for &model in &args.models {
                spec.model = model;
                let bar = experiment::progress_bar(
                    steps,
                    format!("{} ρ={} seed {seed}", model.label(), show(correlation)),
                );
                let result = experiment::run(&gpu, &spec, &train, &test, &bar)?;
                if args.json {
                    println!("{}", report::json_line(&result, args));
                }
                results.push(result);
            }
        }
    }

    // Under --json, stdout is only JSON lines.
    let mut out: Box<dyn Write> = if args.json {
        Box::new(std::io::stderr())
    } else {
        Box::new(std::io::stdout())
    };
    report::table(&mut out, &results, args)?;
    writeln!(out)?;
    create_parent(&args.loss_plot)?;
    plots::loss_curves(&args.loss_plot, &results, &args.models, &args.correlations)?;
    writeln!(out, "wrote {}", args.loss_plot.display())?;
    if args.models.iter().any(|m| m.has_gates()) {
        create_parent(&args.gate_plot)?;
        plots::gate_heatmaps(&args.gate_plot, &results, &args.models, &args.correlations)?;
        writeln!(out, "wrote {}", args.gate_plot.display())?;
    } else {
        writeln!(out, "no gate heat maps: no model with gates was trained")?;
    }
    if args.trainability.is_some() {
        let grid = (&args.models[..], &args.correlations[..]);
        trainability::table(&mut out, &results, grid, args.fail_mse)?;
        create_parent(&args.trainability_plot)?;
        trainability::histogram(&args.trainability_plot, &results, grid, args.fail_mse)?;
        writeln!(out, "wrote {}", args.trainability_plot.display())?;
    }
    writeln!(
        out,
        "total wall time {:.1} s",
        started.elapsed().as_secs_f64()
    )?;
    Ok(())
}

fn create_parent(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => std::fs::create_dir_all(dir),
        _ => Ok(()),
    }
}
