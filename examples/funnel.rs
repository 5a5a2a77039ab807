//! ESMM (Ma et al., SIGIR 2018) against a naive CVR model on a synthetic click →
//! conversion funnel whose truth is known ([`mmoe_wgpu::data::funnel`]).
//!
//! ```text
//! cargo run --release --example funnel -- [--seeds N] [--train-rows N]
//!     [--test-rows N] [--steps N] [--correlation X] [--json]
//! ```
//!
//! For each seed, one funnel is drawn and two models of the same MMoE (experts,
//! towers, heads) are trained for the same number of Adam steps:
//!
//! - ESMM: tasks click (pCTR) and purchase (pCVR), an ESMM pair, on every training
//!   impression: BCE of pCTR against the click plus BCE of pCTR · pCVR against
//!   click · conversion;
//! - naive: one task, purchase, trained with BCE on the clicked impressions only
//!   (the selected sample a CVR model usually sees), cycling over them.
//!
//! Both are then measured on the pCVR they give EVERY test impression, clicked or
//! not, against the generator's truth: the AUC against the true pCVR (each
//! impression a positive of weight pCVR and a negative of weight 1 − pCVR,
//! [`mmoe_wgpu::metrics::probability_auc`]: how well the model ranks the true
//! conversion probabilities), the AUC against a conversion-if-clicked drawn for
//! every impression from its true pCVR, and calibration: mean predicted against
//! mean true pCVR, and the expected calibration error over 10 bins of equal count
//! by predicted pCVR (`Σ_bins |mean predicted − mean true| · share of impressions`).
//! The same on the clicked test impressions, where the naive model was trained,
//! and ESMM's own pair: AUC of pCTR against the click and of pCTCVR against
//! click · conversion. The row `truth` scores the true pCVR itself: the ceiling.

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use mmoe_wgpu::Gpu;
use mmoe_wgpu::data::funnel::{FunnelConfig, FunnelSplit, generate};
use mmoe_wgpu::metrics::{auc, probability_auc};
use mmoe_wgpu::model::{ModelConfig, TaskConfig, TaskKind, Trainer};
use mmoe_wgpu::rng::Rng;

/// Trains ESMM and a naive CVR model (clicked rows only) on a synthetic funnel and
/// compares their pCVR over all test impressions, over several seeds.
#[derive(Parser, Debug)]
#[command(name = "funnel")]
struct Options {
    /// Seeds (funnels and initial weights): 1..=N.
    #[arg(long, value_name = "N", default_value_t = 3,
          value_parser = clap::value_parser!(u64).range(1..))]
    seeds: u64,
    /// Training impressions per funnel.
    #[arg(long, value_name = "N", default_value_t = 20_000, value_parser = positive)]
    train_rows: usize,
    /// Test impressions per funnel.
    #[arg(long, value_name = "N", default_value_t = 10_000, value_parser = positive)]
    test_rows: usize,
    /// Adam steps of each model (ESMM: 256 impressions a step; naive: 256 clicked
    /// impressions a step).
    #[arg(long, value_name = "N", default_value_t = 400, value_parser = positive)]
    steps: usize,
    /// Rows per step.
    #[arg(long, value_name = "N", default_value_t = 256, value_parser = positive)]
    batch: usize,
    /// Adam learning rate.
    #[arg(long, value_name = "X", default_value_t = 3e-3)]
    lr: f32,
    /// Experts of the MMoE (one ReLU layer of --units each).
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = positive)]
    experts: usize,
    /// Width of each expert.
    #[arg(long, value_name = "N", default_value_t = 16, value_parser = positive)]
    units: usize,
    /// Width of each tower's ReLU layer.
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = positive)]
    tower: usize,
    /// How much the features that drive clicks drive conversions (the cosine of
    /// the two weight vectors, in [-1, 1]).
    #[arg(long, value_name = "X", default_value_t = -0.6, allow_negative_numbers = true)]
    correlation: f64,
    /// Bias of the click logit: lower gives fewer clicks (sparser CVR data).
    #[arg(long, value_name = "X", default_value_t = FunnelConfig::default().click_bias,
          allow_negative_numbers = true)]
    click_bias: f64,
    /// Print one JSON object with every seed's results.
    #[arg(long)]
    json: bool,
}

/// One model's pCVR measured against the truth.
#[derive(Debug, Clone, serde::Serialize)]
struct Measured {
    /// AUC against the true pCVR, all test impressions.
    auc_true_cvr: f64,
    /// AUC against conversion-if-clicked drawn for every test impression.
    auc_drawn: f64,
    /// Mean predicted pCVR, all test impressions.
    mean_predicted: f64,
    /// Mean true pCVR, all test impressions.
    mean_true: f64,
    /// Expected calibration error (10 equal-count bins), all test impressions.
    calibration_error: f64,
    /// AUC against the true pCVR on the clicked test impressions only.
    auc_true_cvr_clicked: f64,
    /// Mean predicted and true pCVR on the clicked test impressions.
    mean_predicted_clicked: f64,
    mean_true_clicked: f64,
}

#[derive(Debug, serde::Serialize)]
struct SeedResult {
    seed: u64,
    train_clicks: usize,
    train_conversions: usize,
    esmm: Measured,
    naive: Measured,
    /// The true pCVR as the prediction: the ceiling of every column.
    oracle: Measured,
    /// ESMM's pCTR AUC against the click, and pCTCVR AUC against click · conversion.
    esmm_ctr_auc: f64,
    esmm_ctcvr_auc: f64,
    seconds: f64,
}

/// A count of at least 1.
fn positive(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("`{text}` is not a whole number of at least 1")),
    }
}

fn main() -> ExitCode {
    let options = Options::parse();
    match run(&options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(options: &Options) -> Result<(), String> {
    let gpu = Gpu::new().map_err(|e| e.to_string())?;
    let mut results = Vec::new();
    for seed in 1..=options.seeds {
        let start = Instant::now();
        let funnel = generate(&FunnelConfig {
            correlation: options.correlation,
            click_bias: options.click_bias,
            train_rows: options.train_rows,
            test_rows: options.test_rows,
            seed,
            ..FunnelConfig::default()
        })
        .map_err(|e| e.to_string())?;
        let result = compare(&gpu, options, seed, &funnel.train, &funnel.test)?;
        let result = SeedResult {
            seconds: start.elapsed().as_secs_f64(),
            ..result
        };
        if !options.json {
            eprintln!("seed {seed}: {:.1} s", result.seconds);
        }
        results.push(result);
    }
    if options.json {
        let text = serde_json::to_string_pretty(&results).map_err(|e| e.to_string())?;
        println!("{text}");
    } else {
        print_table(&results);
    }
    Ok(())
}

fn model(options: &Options, seed: u64, tasks: Vec<TaskConfig>) -> ModelConfig {
    ModelConfig {
        learning_rate: options.lr,
        seed,
        ..ModelConfig::mmoe(
            FunnelConfig::default().inputs,
            options.experts,
            options.units,
            options.tower,
            tasks,
        )
    }
}

/// Trains both models on `train` and measures them on `test`.
fn compare(
    gpu: &Gpu,
    options: &Options,
    seed: u64,
    train: &FunnelSplit,
    test: &FunnelSplit,
) -> Result<SeedResult, String> {
    let err = |e: mmoe_wgpu::Error| e.to_string();
    let all: Vec<usize> = (0..train.data.rows).collect();
    let clicked = train.clicked();
    if clicked.is_empty() {
        return Err("no training impression was clicked; use more --train-rows".into());
    }
    let tasks = vec![
        TaskConfig::new("click", TaskKind::BinaryClassification),
        TaskConfig::esmm_cvr("purchase", "click"),
    ];
    let mut esmm = Trainer::new(gpu, model(options, seed, tasks), options.batch).map_err(err)?;
    train_steps(&mut esmm, options, seed, train, &all, None)?;
    let naive_tasks = vec![TaskConfig::new("purchase", TaskKind::BinaryClassification)];
    let mut naive =
        Trainer::new(gpu, model(options, seed, naive_tasks), options.batch).map_err(err)?;
    // The naive model's one target is the conversion (task 1 of the data).
    train_steps(&mut naive, options, seed, train, &clicked, Some(1))?;

    let data = &test.data;
    let rows = data.rows;
    // ESMM's outputs: pCTR, pCVR, pCTCVR.
    let p = esmm.predict(&data.x).map_err(err)?;
    let (esmm_ctr, esmm_cvr, esmm_ctcvr) = (&p[..rows], &p[rows..2 * rows], &p[2 * rows..]);
    let naive_cvr = naive.predict(&data.x).map_err(err)?;
    let click = &data.y[..rows];
    let converted = &data.y[rows..];
    Ok(SeedResult {
        seed,
        train_clicks: clicked.len(),
        train_conversions: train.data.y[train.data.rows..]
            .iter()
            .filter(|&&y| y == 1.0)
            .count(),
        esmm: measure(esmm_cvr, test)?,
        naive: measure(&naive_cvr, test)?,
        oracle: measure(&test.true_cvr, test)?,
        esmm_ctr_auc: auc(esmm_ctr, click).map_err(err)?,
        esmm_ctcvr_auc: auc(esmm_ctcvr, converted).map_err(err)?,
        seconds: 0.0,
    })
}

/// `options.steps` Adam steps on batches of `rows` of `train` (reshuffled at every
/// pass), on every task, or on the data's task `only` alone.
fn train_steps(
    trainer: &mut Trainer,
    options: &Options,
    seed: u64,
    train: &FunnelSplit,
    rows: &[usize],
    only: Option<usize>,
) -> Result<(), String> {
    let mut rng = Rng::new(seed).fork(0x006f_7264_6572); // "order"
    let mut order = Vec::new();
    for _ in 0..options.steps {
        if order.len() < options.batch.min(rows.len()) {
            let mut pass = rows.to_vec();
            rng.shuffle(&mut pass);
            order.extend(pass);
        }
        let take: Vec<usize> = order.drain(..options.batch.min(order.len())).collect();
        let (x, y) = train.data.gather(&take).map_err(|e| e.to_string())?;
        let y = match only {
            Some(task) => y[task * take.len()..(task + 1) * take.len()].to_vec(),
            None => y,
        };
        trainer.step(&x, &y).map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn mean(v: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = v.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    sum / n.max(1) as f64
}

/// `cvr` (one pCVR per test impression) against the truth of `test`.
fn measure(cvr: &[f32], test: &FunnelSplit) -> Result<Measured, String> {
    let err = |e: mmoe_wgpu::Error| e.to_string();
    let clicked = test.clicked();
    let pick = |v: &[f32]| clicked.iter().map(|&r| v[r]).collect::<Vec<_>>();
    Ok(Measured {
        auc_true_cvr: probability_auc(cvr, &test.true_cvr).map_err(err)?,
        auc_drawn: auc(cvr, &test.converts_if_clicked).map_err(err)?,
        mean_predicted: mean(cvr.iter().map(|&v| v as f64)),
        mean_true: mean(test.true_cvr.iter().map(|&v| v as f64)),
        calibration_error: calibration_error(cvr, &test.true_cvr),
        auc_true_cvr_clicked: probability_auc(&pick(cvr), &pick(&test.true_cvr)).map_err(err)?,
        mean_predicted_clicked: mean(clicked.iter().map(|&r| cvr[r] as f64)),
        mean_true_clicked: mean(clicked.iter().map(|&r| test.true_cvr[r] as f64)),
    })
}

/// Expected calibration error over 10 bins of equal count by predicted value:
/// `Σ_bins share · |mean predicted − mean true|`.
fn calibration_error(predicted: &[f32], truth: &[f32]) -> f64 {
    let mut order: Vec<usize> = (0..predicted.len()).collect();
    order.sort_by(|&a, &b| predicted[a].total_cmp(&predicted[b]));
    let bins = 10.min(order.len());
    (0..bins)
        .map(|b| {
            let bin = &order[b * order.len() / bins..(b + 1) * order.len() / bins];
            let gap = mean(bin.iter().map(|&i| predicted[i] as f64))
                - mean(bin.iter().map(|&i| truth[i] as f64));
            gap.abs() * bin.len() as f64 / order.len() as f64
        })
        .sum()
}

fn print_table(results: &[SeedResult]) {
    println!(
        "pCVR over ALL test impressions (AUC vs true pCVR | AUC vs drawn conversion | \
         mean predicted / true | calibration error), and on the clicked ones \
         (AUC vs true pCVR | mean predicted / true)"
    );
    println!(
        "{:>4} {:>6} {:>7}  {:<6} {:>8} {:>8} {:>15} {:>7}  {:>8} {:>15}",
        "seed",
        "clicks",
        "convs",
        "model",
        "AUC",
        "AUC drw",
        "mean pred/true",
        "ECE",
        "AUC clk",
        "clk pred/true"
    );
    let line = |r: &SeedResult, name: &str, m: &Measured| {
        println!(
            "{:>4} {:>6} {:>7}  {:<6} {:>8.4} {:>8.4} {:>7.4}/{:<7.4} {:>7.4}  {:>8.4} {:>7.4}/{:<7.4}",
            r.seed,
            r.train_clicks,
            r.train_conversions,
            name,
            m.auc_true_cvr,
            m.auc_drawn,
            m.mean_predicted,
            m.mean_true,
            m.calibration_error,
            m.auc_true_cvr_clicked,
            m.mean_predicted_clicked,
            m.mean_true_clicked
        );
    };
    for r in results {
        line(r, "esmm", &r.esmm);
        line(r, "naive", &r.naive);
        line(r, "truth", &r.oracle);
    }
    let avg = |f: &dyn Fn(&SeedResult) -> f64| mean(results.iter().map(f));
    println!(
        "mean over {} seeds: AUC vs true pCVR esmm {:.4} naive {:.4}; ECE esmm {:.4} \
         naive {:.4}; esmm pCTR AUC {:.4}, pCTCVR AUC {:.4}",
        results.len(),
        avg(&|r| r.esmm.auc_true_cvr),
        avg(&|r| r.naive.auc_true_cvr),
        avg(&|r| r.esmm.calibration_error),
        avg(&|r| r.naive.calibration_error),
        avg(&|r| r.esmm_ctr_auc),
        avg(&|r| r.esmm_ctcvr_auc),
    );
}
