//! The command line of the census example: flags, defaults, help.

use std::path::PathBuf;

use mmoe_wgpu::data::census::TaskGroup;

/// Defaults, chosen so that MMoE reaches the paper's AUCs on both task groups in
/// well under 15 minutes on lavapipe with 2 CPU cores (measurements in main.rs).
pub mod defaults {
    pub const GROUP: u8 = 1;
    pub const EPOCHS: usize = 4;
    pub const EXPERTS: usize = 8;
    pub const UNITS: usize = 16;
    pub const TOWER: usize = 8;
    pub const LR: f32 = 2e-3;
    pub const SEED: u64 = 1;
    pub const BATCH: usize = 256;
    pub const WEIGHT_DECAY: f32 = 0.0;
}

pub const USAGE: &str = "\
usage: census --data DIR [--group 1|2] [--model mmoe|omoe|shared-bottom] [--epochs N]
              [--experts N] [--units N] [--tower N] [--lr X] [--weight-decay X]
              [--schedule constant|cosine] [--seed N] [--batch N] [--max-steps N] [--json]";

pub fn help() -> String {
    use defaults::*;
    format!(
        "Trains MMoE (or a baseline) on UCI Census-Income (KDD) on the GPU and reports
validation and test AUC of both tasks, at the epoch with the best validation AUC
on the main task.

{USAGE}

  --data DIR        directory with census-income.data and census-income.test (required)
  --group 1|2       1: income > 50K (main) + never married;
                    2: college education (main) + never married       [{GROUP}]
  --model NAME      mmoe, omoe or shared-bottom                        [mmoe]
  --epochs N        passes over the 199,523 training rows              [{EPOCHS}]
  --experts N       experts (mmoe, omoe)                               [{EXPERTS}]
  --units N         width of each expert's ReLU layer; shared-bottom's
                    bottom layer is experts × units wide              [{UNITS}]
  --tower N         width of each task tower's ReLU layer              [{TOWER}]
  --lr X            Adam learning rate (peak, with --schedule cosine)  [{LR}]
  --weight-decay X  AdamW decoupled weight decay                       [{WEIGHT_DECAY}]
  --schedule S      learning rate over the run: constant, or cosine
                    decay to zero at the last step                     [cosine]
  --seed N          weights, batch order and the validation/test split [{SEED}]
  --batch N         rows per training step                             [{BATCH}]
  --max-steps N     stop each epoch after N steps (for quick checks)   [whole epoch]
  --json            print one JSON object with the results
  -h, --help        this help"
    )
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelKind {
    Mmoe,
    Omoe,
    SharedBottom,
}

impl ModelKind {
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::Mmoe => "mmoe",
            ModelKind::Omoe => "omoe",
            ModelKind::SharedBottom => "shared-bottom",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Schedule {
    Constant,
    Cosine,
}

#[derive(Clone, Debug)]
pub struct Options {
    pub data: PathBuf,
    pub group: TaskGroup,
    pub model: ModelKind,
    pub epochs: usize,
    pub experts: usize,
    pub units: usize,
    pub tower: usize,
    pub lr: f32,
    pub weight_decay: f32,
    pub schedule: Schedule,
    pub seed: u64,
    pub batch: usize,
    pub max_steps: Option<usize>,
    pub json: bool,
}

/// What the command line asked for: a run, or the help text.
pub enum Command {
    Run(Options),
    Help,
}

pub fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Command, String> {
    let mut data = None;
    let mut o = Options {
        data: PathBuf::new(),
        group: TaskGroup::IncomeMarital,
        model: ModelKind::Mmoe,
        epochs: defaults::EPOCHS,
        experts: defaults::EXPERTS,
        units: defaults::UNITS,
        tower: defaults::TOWER,
        lr: defaults::LR,
        weight_decay: defaults::WEIGHT_DECAY,
        schedule: Schedule::Cosine,
        seed: defaults::SEED,
        batch: defaults::BATCH,
        max_steps: None,
        json: false,
    };
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        // Both `--flag value` and `--flag=value`.
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "--json" => {
                if inline.is_some() {
                    return Err("--json takes no value".into());
                }
                o.json = true;
                continue;
            }
            _ => {}
        }
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--data" => data = Some(PathBuf::from(value()?)),
            "--group" => {
                o.group = match value()?.as_str() {
                    "1" => TaskGroup::IncomeMarital,
                    "2" => TaskGroup::EducationMarital,
                    other => return Err(format!("--group must be 1 or 2, not `{other}`")),
                }
            }
            "--model" => {
                o.model = match value()?.as_str() {
                    "mmoe" => ModelKind::Mmoe,
                    "omoe" => ModelKind::Omoe,
                    "shared-bottom" => ModelKind::SharedBottom,
                    other => {
                        return Err(format!(
                            "--model must be mmoe, omoe or shared-bottom, not `{other}`"
                        ));
                    }
                }
            }
            "--schedule" => {
                o.schedule = match value()?.as_str() {
                    "constant" => Schedule::Constant,
                    "cosine" => Schedule::Cosine,
                    other => {
                        return Err(format!(
                            "--schedule must be constant or cosine, not `{other}`"
                        ));
                    }
                }
            }
            "--epochs" => o.epochs = positive(&flag, &value()?)?,
            "--experts" => o.experts = positive(&flag, &value()?)?,
            "--units" => o.units = positive(&flag, &value()?)?,
            "--tower" => o.tower = positive(&flag, &value()?)?,
            "--batch" => o.batch = positive(&flag, &value()?)?,
            "--max-steps" => o.max_steps = Some(positive(&flag, &value()?)?),
            "--seed" => {
                let v = value()?;
                o.seed = v
                    .parse()
                    .map_err(|_| format!("--seed needs a non-negative integer, not `{v}`"))?;
            }
            "--lr" => o.lr = non_negative(&flag, &value()?, false)?,
            "--weight-decay" => o.weight_decay = non_negative(&flag, &value()?, true)?,
            _ => return Err(format!("unknown argument `{arg}`")),
        }
    }
    o.data = data.ok_or("--data DIR is required")?;
    Ok(Command::Run(o))
}

fn positive(flag: &str, v: &str) -> Result<usize, String> {
    match v.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{flag} needs a positive integer, not `{v}`")),
    }
}

fn non_negative(flag: &str, v: &str, zero_ok: bool) -> Result<f32, String> {
    match v.parse::<f32>() {
        Ok(x) if x.is_finite() && (x > 0.0 || (zero_ok && x == 0.0)) => Ok(x),
        _ => Err(format!(
            "{flag} needs a {} number, not `{v}`",
            if zero_ok { "non-negative" } else { "positive" }
        )),
    }
}
