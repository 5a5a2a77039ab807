//! One run of the experiment: a model trained on one synthetic data set from one seed.

use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use mmoe_wgpu::Gpu;
use mmoe_wgpu::data::Dataset;
use mmoe_wgpu::data::synthetic::{SyntheticConfig, generate, generate_on_halves};
use mmoe_wgpu::graph::Role;
use mmoe_wgpu::model::{
    Architecture, ExpertInput, ExpertStart, Gate, Level, ModelConfig, PartitionOn, TaskConfig,
    TaskKind, Trainer, build,
};
use mmoe_wgpu::rng::Rng;

/// A correlation as shown to people: `1.0`, `0.5`, `-0.25`.
pub fn show(correlation: f64) -> String {
    if correlation.fract() == 0.0 {
        format!("{correlation:.1}")
    } else {
        format!("{correlation}")
    }
}

/// The three models of the paper's synthetic experiment (§3.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum)]
pub enum Model {
    /// Multi-gate mixture of experts: one gate per task.
    Mmoe,
    /// One-gate mixture of experts: one gate shared by both tasks.
    Omoe,
    /// One bottom layer shared by both towers.
    SharedBottom,
    /// One extraction level (Tang et al. 2020): shared experts and each task's own.
    Cgc,
    /// Progressive layered extraction: `--levels` CGC levels stacked.
    Ple,
    /// MMoE whose experts read halves of the input (feature subsets): 4 experts on
    /// the first half, 4 on the second, one ReLU layer each of the width that brings
    /// the parameter count closest to MMoE's.
    MmoeHalves,
}

/// The experts of the CGC and PLE models: levels (CGC: one), shared experts and
/// experts per task in each level.
#[derive(Clone, Copy, Debug)]
pub struct LevelShape {
    pub levels: usize,
    pub shared: usize,
    pub task: usize,
}

impl Model {
    /// The name in JSON output and on the command line.
    pub fn key(self) -> &'static str {
        match self {
            Model::Mmoe => "mmoe",
            Model::Omoe => "omoe",
            Model::SharedBottom => "shared-bottom",
            Model::Cgc => "cgc",
            Model::Ple => "ple",
            Model::MmoeHalves => "mmoe-halves",
        }
    }

    /// The name in tables and plots.
    pub fn label(self) -> &'static str {
        match self {
            Model::Mmoe => "MMoE",
            Model::Omoe => "OMoE",
            Model::SharedBottom => "Shared-Bottom",
            Model::Cgc => "CGC",
            Model::Ple => "PLE",
            Model::MmoeHalves => "MMoE-halves",
        }
    }

    /// Whether the model has gates to report.
    pub fn has_gates(self) -> bool {
        self != Model::SharedBottom
    }

    /// The paper's models, matched in size: 8 experts of one ReLU layer of 16 (or a
    /// bottom of one ReLU layer of 113), towers of one ReLU layer of 8, Adam, MSE.
    /// CGC and PLE have `levels` of experts of one ReLU layer whose width makes
    /// their parameter count the closest to MMoE's.
    pub fn config(
        self,
        inputs: usize,
        learning_rate: f32,
        seed: u64,
        gate: Gate,
        levels: LevelShape,
    ) -> ModelConfig {
        let tasks = vec![
            TaskConfig::new("task1", TaskKind::Regression),
            TaskConfig::new("task2", TaskKind::Regression),
        ];
        let mut config = ModelConfig::mmoe(inputs, 8, 16, 8, tasks);
        config.architecture = match self {
            Model::Mmoe => Architecture::Mmoe {
                experts: 8,
                expert_layers: vec![16],
                gate,
                task_experts: 0,
            },
            Model::Omoe => Architecture::Omoe {
                experts: 8,
                expert_layers: vec![16],
                gate,
            },
            Model::SharedBottom => Architecture::SharedBottom {
                bottom_layers: vec![113],
            },
            Model::Cgc | Model::Ple => {
                let count = if self == Model::Cgc { 1 } else { levels.levels };
                let at = |width| {
                    let level = Level {
                        gate,
                        ..Level::new(levels.shared, levels.task, width)
                    };
                    Architecture::Ple {
                        levels: vec![level; count],
                    }
                };
                at(closest_width(parameters(&config), &config, at))
            }
            Model::MmoeHalves => {
                let at = |width| Architecture::Mmoe {
                    experts: 8,
                    expert_layers: vec![width],
                    gate,
                    task_experts: 0,
                };
                let half = inputs / 2;
                let halves = ModelConfig {
                    expert_inputs: vec![
                        ExpertInput::columns(4, 0..half),
                        ExpertInput::columns(4, half..inputs),
                    ],
                    ..config.clone()
                };
                let width = closest_width(parameters(&config), &halves, at);
                config = halves;
                at(width)
            }
        };
        config.learning_rate = learning_rate;
        config.seed = seed;
        config
    }
}

/// The expert width in 1..=64 whose architecture `at(width)`, in place of `base`'s,
/// brings the parameter count closest to `target` (MMoE's).
fn closest_width(target: usize, base: &ModelConfig, at: impl Fn(usize) -> Architecture) -> usize {
    (1..=64)
        .min_by_key(|&w| {
            let c = ModelConfig {
                architecture: at(w),
                ..base.clone()
            };
            parameters(&c).abs_diff(target)
        })
        .expect("a width")
}

/// Trainable parameters of `config` (0 for a config that does not build).
pub fn parameters(config: &ModelConfig) -> usize {
    let Ok(model) = build(config, 1) else {
        return 0;
    };
    let graph = &model.graph;
    graph
        .with_role(Role::Parameter)
        .into_iter()
        .map(|id| graph.tensor(id).len())
        .sum()
}

/// The learning rate over a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Schedule {
    /// The same rate at every step.
    Constant,
    /// Half a cosine from the rate down to 1% of it at the last step.
    Cosine,
}

impl Schedule {
    /// The rate of step `step` (1-based) of `steps`, from a base rate `base`.
    pub fn rate(self, base: f32, step: usize, steps: usize) -> f32 {
        match self {
            Schedule::Constant => base,
            Schedule::Cosine => {
                let done = (step - 1) as f64 / (steps.max(2) - 1) as f64;
                let floor = 0.01;
                let f = floor + (1.0 - floor) * 0.5 * (1.0 + (std::f64::consts::PI * done).cos());
                (base as f64 * f) as f32
            }
        }
    }
}

/// How the experts of the gated models start (`--expert-init`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ExpertInit {
    /// Random weights only (the default start).
    Random,
    /// Each expert pre-trained on its k-means cluster of the inputs, the gates
    /// routing each cluster to its expert.
    Input,
    /// The same, clustering the inputs joined with the standardised targets.
    InputOutput,
}

impl ExpertInit {
    /// The library's start, with `pretrain_steps` per expert and gates at `gate_scale`;
    /// `None` for the random start.
    pub fn start(self, pretrain_steps: usize, gate_scale: f32) -> Option<ExpertStart> {
        let on = match self {
            ExpertInit::Random => return None,
            ExpertInit::Input => PartitionOn::Input,
            ExpertInit::InputOutput => PartitionOn::InputOutput {
                target_weight: None,
            },
        };
        Some(ExpertStart {
            pretrain_steps,
            gate_scale,
            ..ExpertStart::new(on)
        })
    }
}

/// What one run trains on and how.
#[derive(Clone, Debug)]
pub struct RunSpec {
    pub model: Model,
    pub correlation: f64,
    pub seed: u64,
    pub steps: usize,
    pub batch_size: usize,
    pub learning_rate: f32,
    /// How the learning rate moves over the run.
    pub schedule: Schedule,
    /// The data: correlation and seed are overwritten by the fields above.
    pub data: SyntheticConfig,
    /// Training loss is read back (a device sync) every this many steps.
    pub log_every: usize,
    /// The gate of the gated models.
    pub gate: Gate,
    /// How the gated models' experts start (`None`: random).
    pub expert_start: Option<ExpertStart>,
    /// The levels of CGC and PLE.
    pub levels: LevelShape,
    /// Each task on its own half of the inputs (`--data halves`) instead of the
    /// paper's correlated directions.
    pub on_halves: bool,
}

/// What one run produced.
#[derive(Clone, Debug)]
pub struct RunResult {
    pub model: Model,
    pub correlation: f64,
    pub seed: u64,
    /// Test MSE of each task, on the labels' own scale.
    pub test_mse_per_task: Vec<f64>,
    pub steps: usize,
    /// Wall time of the experts' start, training and evaluation (not data
    /// generation).
    pub seconds: f64,
    /// `(step, mean over tasks of the batch MSE averaged since the last point)`.
    pub curve: Vec<(usize, f64)>,
    /// Mean gate weight of each task on each expert over the test set, for models
    /// with gates.
    pub gates: Option<Vec<Vec<f64>>>,
    /// Trainable parameters.
    pub parameters: usize,
    /// Experts some task's gate weighs, per test row on average: what a sparse
    /// (top-k) expert layer computes, out of all experts.
    pub experts_per_row: Option<f64>,
}

impl RunResult {
    /// Test MSE averaged over the two tasks.
    pub fn test_mse(&self) -> f64 {
        self.test_mse_per_task.iter().sum::<f64>() / self.test_mse_per_task.len() as f64
    }
}

/// The data sets of one correlation and seed (train, test).
pub fn data_for(spec: &RunSpec) -> mmoe_wgpu::Result<(Dataset, Dataset)> {
    let config = SyntheticConfig {
        correlation: spec.correlation,
        seed: spec.seed,
        ..spec.data.clone()
    };
    let splits = if spec.on_halves {
        generate_on_halves(&config)?
    } else {
        generate(&config)?
    };
    Ok((splits.train, splits.test))
}

/// A progress bar of `steps` steps on stderr (hidden when stderr is not a terminal).
pub fn progress_bar(steps: usize, prefix: String) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(steps as u64), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix:<24} [{bar:30}] {pos:>6}/{len} {elapsed:>4} eta {eta:>3}  {msg}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_prefix(prefix);
    bar
}

/// Trains `spec.model` on `train` with shuffled mini-batches (reshuffled every epoch)
/// and evaluates it on `test`.
pub fn run(
    gpu: &Gpu,
    spec: &RunSpec,
    train: &Dataset,
    test: &Dataset,
    bar: &ProgressBar,
) -> mmoe_wgpu::Result<RunResult> {
    let start = Instant::now();
    let config = spec.model.config(
        train.inputs,
        spec.learning_rate,
        spec.seed,
        spec.gate,
        spec.levels,
    );
    let batch = spec.batch_size.min(train.rows);
    let mut trainer = Trainer::new(gpu, config, batch)?;
    if let Some(start) = spec
        .expert_start
        .as_ref()
        .filter(|_| spec.model.has_gates())
    {
        trainer.start_experts(&train.x, &train.y, start)?;
    }
    let parameters = parameters(trainer.config());

    let mut rng = Rng::new(spec.seed).fork(0x5157);
    let mut order = train.shuffled_order(&mut rng);
    let mut at = 0;
    let mut curve = Vec::new();
    let (mut sum, mut count) = (0.0f64, 0usize);
    for step in 1..=spec.steps {
        if at + batch > order.len() {
            order = train.shuffled_order(&mut rng);
            at = 0;
        }
        let (x, y) = train.gather(&order[at..at + batch])?;
        at += batch;
        trainer.set_learning_rate(spec.schedule.rate(spec.learning_rate, step, spec.steps))?;
        trainer.step(&x, &y)?;
        if step % spec.log_every == 0 || step == spec.steps {
            let losses = trainer.loss()?;
            sum += losses.iter().map(|&l| l as f64).sum::<f64>() / losses.len() as f64;
            count += 1;
            // One point per ~1% of training, each the mean of the losses read since.
            if count * spec.log_every >= spec.steps.div_ceil(100) || step == spec.steps {
                curve.push((step, sum / count as f64));
                bar.set_message(format!("loss {:.4}", sum / count as f64));
                (sum, count) = (0.0, 0);
            }
        }
        bar.inc(1);
    }
    let evaluation = trainer.evaluate(&test.x, &test.y)?;
    let report = if spec.model.has_gates() {
        Some(trainer.gate_report(&test.x)?)
    } else {
        None
    };
    let experts_per_row = report.as_ref().map(|r| r.routed.iter().sum());
    let gates = report.map(|r| r.weights);
    let result = RunResult {
        model: spec.model,
        correlation: spec.correlation,
        seed: spec.seed,
        test_mse_per_task: evaluation.per_task,
        steps: spec.steps,
        seconds: start.elapsed().as_secs_f64(),
        curve,
        gates,
        parameters,
        experts_per_row,
    };
    bar.finish_with_message(format!("test MSE {:.4}", result.test_mse()));
    Ok(result)
}
