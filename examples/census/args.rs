//! The command line of the census example: flags, defaults and help, by clap.

use std::path::PathBuf;

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::error::{ContextKind, ContextValue};
use clap::{CommandFactory, Parser, ValueEnum};
use mmoe_wgpu::data::census::TaskGroup;

/// Trains MMoE (or a baseline) on UCI Census-Income (KDD) on the GPU and reports
/// validation and test AUC of both tasks, at the epoch with the best validation AUC
/// on the main task.
///
/// The defaults were chosen so that MMoE reaches the paper's AUCs on both task
/// groups in well under 15 minutes on lavapipe with 2 CPU cores.
#[derive(Parser, Debug)]
#[command(name = "census")]
pub struct Options {
    /// Directory with census-income.data and census-income.test (decompressed).
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,
    /// Task group: 1 is income > 50K (main) + never married, 2 is college
    /// education (main) + never married.
    #[arg(long, value_name = "1|2", default_value = "1", value_parser = group())]
    pub group: TaskGroup,
    /// How the categorical attributes reach the model: one-hot columns (517 inputs
    /// in all), or categorical fields looked up in embedding tables beside the 7
    /// standardised numbers.
    #[arg(long, value_enum, default_value_t = Features::Onehot)]
    pub features: Features,
    /// Model to train.
    #[arg(long, value_enum, default_value_t = ModelKind::Mmoe)]
    pub model: ModelKind,
    /// Passes over the 199,523 training rows.
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = positive_int,
          allow_negative_numbers = true)]
    pub epochs: usize,
    /// Experts (mmoe, omoe).
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = positive_int,
          allow_negative_numbers = true)]
    pub experts: usize,
    /// Extraction levels (ple).
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = positive_int,
          allow_negative_numbers = true)]
    pub levels: usize,
    /// Shared experts in each level (cgc, ple).
    #[arg(
        long,
        value_name = "N",
        default_value_t = 4,
        allow_negative_numbers = true
    )]
    pub shared_experts: usize,
    /// Experts of each task's own in each level (cgc, ple).
    #[arg(
        long,
        value_name = "N",
        default_value_t = 2,
        allow_negative_numbers = true
    )]
    pub task_experts: usize,
    /// Width of each expert's ReLU layer; shared-bottom's bottom layer is experts ×
    /// units wide.
    #[arg(long, value_name = "N", default_value_t = 16, value_parser = positive_int,
          allow_negative_numbers = true)]
    pub units: usize,
    /// Width of each task tower's ReLU layer.
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = positive_int,
          allow_negative_numbers = true)]
    pub tower: usize,
    /// Adam learning rate (the peak, with --schedule cosine).
    #[arg(long, value_name = "X", default_value_t = 2e-3, value_parser = positive,
          allow_negative_numbers = true)]
    pub lr: f32,
    /// With --features embedding: a constant learning rate of the tables' lazy Adam
    /// of their own [default: the model's, --lr under --schedule].
    #[arg(long, value_name = "X", value_parser = positive,
          allow_negative_numbers = true)]
    pub table_lr: Option<f32>,
    /// With --features embedding: the standard deviation the tables start with
    /// (the crate draws them standard normal, PyTorch's nn.Embedding default, and
    /// the example scales them by this: at 1, the random embeddings of 31 fields
    /// swamp the first layers' inputs and cost 0.004 of test AUC on income).
    #[arg(long, value_name = "X", default_value_t = 0.1, value_parser = positive,
          allow_negative_numbers = true)]
    pub table_init_std: f32,
    /// AdamW decoupled weight decay (0: plain Adam).
    #[arg(long, value_name = "X", default_value_t = 0.0, value_parser = non_negative,
          allow_negative_numbers = true)]
    pub weight_decay: f32,
    /// Learning rate over the run.
    #[arg(long, value_enum, default_value_t = Schedule::Cosine)]
    pub schedule: Schedule,
    /// Seed of the weights, the batch order and the validation/test split.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub seed: u64,
    /// Rows per training step.
    #[arg(long, value_name = "N", default_value_t = 256, value_parser = positive_int,
          allow_negative_numbers = true)]
    pub batch: usize,
    /// Stop each epoch after N steps (for quick checks) [default: whole epoch].
    #[arg(long, value_name = "N", value_parser = positive_int,
          allow_negative_numbers = true)]
    pub max_steps: Option<usize>,
    /// Print one JSON object with the results (epoch lines go to stderr).
    #[arg(long)]
    pub json: bool,
    /// Write the checkpoint of the best epoch (highest validation AUC of the main
    /// task: the epoch whose test AUC is reported) to FILE for examples/predict;
    /// written atomically whenever an epoch improves on the best so far.
    #[arg(long, value_name = "FILE")]
    pub save: Option<PathBuf>,
    /// Write the test rows, encoded as the model's inputs, to FILE as CSV (a header
    /// of input names, then one line per row) before training: the input
    /// examples/predict takes. The saved model's predictions on it give the
    /// reported test AUC.
    /// One-hot features only: with --features embedding, use --export-rows.
    #[arg(long, value_name = "FILE")]
    pub export_csv: Option<PathBuf>,
    /// Write the test rows, as they are in census-income.test (the raw census
    /// format), to FILE before training: the input examples/predict takes with a
    /// checkpoint trained with --features embedding.
    #[arg(long, value_name = "FILE")]
    pub export_rows: Option<PathBuf>,
}

impl Options {
    /// The command line, or exit: code 2 and a message with the usage line for a
    /// usage error, 0 after `--help`.
    pub fn parse_or_exit() -> Options {
        Options::try_parse().unwrap_or_else(|mut e| {
            // clap leaves the usage line out of bad-value errors; a reader of any
            // usage error should see what the command line looks like.
            if e.use_stderr() && e.get(ContextKind::Usage).is_none() {
                let usage = Options::command().render_usage();
                e.insert(ContextKind::Usage, ContextValue::StyledStr(usage));
            }
            e.exit()
        })
    }
}

/// The `--model` choices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ModelKind {
    /// Multi-gate mixture of experts: a gate per task.
    Mmoe,
    /// One-gate mixture of experts, shared by the tasks.
    Omoe,
    /// One shared ReLU layer of experts × units under the towers.
    SharedBottom,
    /// One extraction level (Tang et al. 2020): --shared-experts shared experts and
    /// --task-experts of each task's own.
    Cgc,
    /// Progressive layered extraction: --levels CGC levels stacked.
    Ple,
}

impl ModelKind {
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::Mmoe => "mmoe",
            ModelKind::Omoe => "omoe",
            ModelKind::SharedBottom => "shared-bottom",
            ModelKind::Cgc => "cgc",
            ModelKind::Ple => "ple",
        }
    }
}

/// The `--features` choices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Features {
    /// Every categorical attribute one-hot encoded: 517 dense inputs.
    Onehot,
    /// Every categorical attribute a field with an embedding table; the 7 numeric
    /// attributes dense.
    Embedding,
}

impl Features {
    pub fn name(self) -> &'static str {
        match self {
            Features::Onehot => "onehot",
            Features::Embedding => "embedding",
        }
    }
}

/// The `--schedule` choices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Schedule {
    /// The same learning rate at every step.
    Constant,
    /// Cosine decay from --lr to zero at the last step.
    Cosine,
}

fn group() -> impl TypedValueParser<Value = TaskGroup> {
    PossibleValuesParser::new(["1", "2"]).map(|g| match g.as_str() {
        "1" => TaskGroup::IncomeMarital,
        _ => TaskGroup::EducationMarital,
    })
}

fn positive_int(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err("needs a whole number > 0".into()),
    }
}

fn positive(s: &str) -> Result<f32, String> {
    match s.parse::<f32>() {
        Ok(x) if x.is_finite() && x > 0.0 => Ok(x),
        _ => Err("needs a finite number > 0".into()),
    }
}

fn non_negative(s: &str) -> Result<f32, String> {
    match s.parse::<f32>() {
        Ok(x) if x.is_finite() && x >= 0.0 => Ok(x),
        _ => Err("needs a finite number ≥ 0".into()),
    }
}
