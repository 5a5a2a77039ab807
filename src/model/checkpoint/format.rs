//! The checkpoint's JSON description as the file spells it. The public config types
//! carry no serde attributes: the `*Def` types here mirror them for serde's remote
//! derive, so every name on disk is spelt out in this file, and a change to a public
//! type fails to compile here until the format says what becomes of it. Members are
//! written in declaration order.
//!
//! Objects whose members depend on their `kind` (architecture, gate, optimizer) are
//! written through serde's tagged enums but read as one flat struct of every kind's
//! members, checked against the kind after: a tagged enum buffers members before it
//! knows the kind, which loses the number text that an exact `f32` is parsed from
//! and the path of the member that an error is about.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::json::{exact, some, some_exact};
use crate::model::{
    Architecture, ExpertInput, FieldConfig, Gate, GateKind, HeadKind, Level, ModelConfig,
    TaskConfig, TaskKind,
};
use crate::shape::{BalanceLoss, OptimizerConfig, Selection, TableOptimizer};

mod dense;
mod fields;
mod head;
mod levels;
mod subsets;

pub(super) use dense::DenseInputs;
pub(super) use fields::Vocabulary;
use fields::{FieldList, TableOptimizerDef};
use head::HeadKindDef;
use subsets::ExpertInputList;

/// The whole description.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Description {
    pub(super) format: String,
    pub(super) version: u64,
    pub(super) steps: u32,
    #[serde(deserialize_with = "exact")]
    pub(super) learning_rate: f32,
    pub(super) config: Config,
    /// The fields' encoders; absent when there are none.
    #[serde(default, skip_serializing_if = "Vocabulary::is_empty")]
    pub(super) vocabulary: Vocabulary,
    /// The dense inputs' names and standardisation; absent when there are none.
    #[serde(default, skip_serializing_if = "DenseInputs::is_empty")]
    pub(super) dense_inputs: DenseInputs,
    /// Last, so that the text before it is what it covers; files written by other
    /// programs may leave it out.
    #[serde(
        default,
        deserialize_with = "some",
        skip_serializing_if = "Option::is_none"
    )]
    pub(super) crc32: Option<u32>,
}

/// The members read before the rest, so that a file of another format or version
/// says so rather than failing on a member it spells differently. A missing
/// `version` is left to the full read to report.
#[derive(Deserialize)]
pub(super) struct Head {
    pub(super) format: String,
    #[serde(default)]
    pub(super) version: Option<u64>,
}

/// [`ModelConfig`] as the file has it.
#[derive(Serialize, Deserialize)]
pub(super) struct Config(#[serde(with = "ConfigDef")] pub(super) ModelConfig);

#[derive(Serialize, Deserialize)]
#[serde(remote = "ModelConfig", deny_unknown_fields)]
struct ConfigDef {
    inputs: usize,
    /// Absent without fields, as in files written before fields existed.
    #[serde(default, skip_serializing_if = "Vec::is_empty", with = "FieldList")]
    fields: Vec<FieldConfig>,
    shared_layers: Vec<usize>,
    #[serde(with = "ArchitectureDef")]
    architecture: Architecture,
    /// Absent when every expert reads the whole input, as in earlier files.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        with = "ExpertInputList"
    )]
    expert_inputs: Vec<ExpertInput>,
    tower_layers: Vec<usize>,
    #[serde(with = "TaskList")]
    tasks: Vec<TaskConfig>,
    #[serde(with = "OptimizerDef")]
    optimizer: OptimizerConfig,
    /// Absent when it is the default (lazy Adam at the model's learning rate).
    #[serde(
        default,
        skip_serializing_if = "fields::is_default",
        with = "TableOptimizerDef"
    )]
    table_optimizer: TableOptimizer,
    #[serde(deserialize_with = "exact")]
    learning_rate: f32,
    seed: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(remote = "TaskConfig", deny_unknown_fields)]
struct TaskDef {
    name: String,
    #[serde(with = "TaskKindDef")]
    kind: TaskKind,
    #[serde(deserialize_with = "exact")]
    weight: f32,
    /// Absent for a head of its own, as in files written before ESMM heads.
    #[serde(default, skip_serializing_if = "head::is_own", with = "HeadKindDef")]
    head: HeadKind,
}

/// One task, for a serde sequence.
#[derive(Serialize, Deserialize)]
struct Task(#[serde(with = "TaskDef")] TaskConfig);

/// The tasks, through [`Task`].
struct TaskList;

impl TaskList {
    fn serialize<S: Serializer>(tasks: &[TaskConfig], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(tasks.iter().cloned().map(Task))
    }

    fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<TaskConfig>, D::Error> {
        Ok(Vec::<Task>::deserialize(d)?
            .into_iter()
            .map(|t| t.0)
            .collect())
    }
}

#[derive(Serialize, Deserialize)]
#[serde(remote = "TaskKind", rename_all = "snake_case")]
enum TaskKindDef {
    Regression,
    BinaryClassification,
}

#[derive(Serialize, Deserialize)]
#[serde(remote = "BalanceLoss", rename_all = "snake_case")]
enum BalanceLossDef {
    Importance,
    Load,
}

#[derive(Serialize, Deserialize)]
#[serde(remote = "Selection", rename_all = "snake_case")]
enum SelectionDef {
    PerGate,
    Shared,
}

/// The value of a member that the object's kind must have.
fn need<T>(name: &str, value: Option<T>) -> Result<T, String> {
    value.ok_or_else(|| format!("missing field `{name}`"))
}

/// Errs naming the first of `members` that is present: the object's kind has none
/// of them.
fn refuse(members: &[(&str, bool)]) -> Result<(), String> {
    match members.iter().find(|(_, present)| *present) {
        Some((name, _)) => Err(format!("unknown field `{name}` for this `kind`")),
        None => Ok(()),
    }
}

#[derive(Serialize)]
#[serde(remote = "Architecture", tag = "kind", rename_all = "snake_case")]
enum ArchitectureDef {
    Mmoe {
        experts: usize,
        expert_layers: Vec<usize>,
        #[serde(with = "GateDef")]
        gate: Gate,
        task_experts: usize,
    },
    Omoe {
        experts: usize,
        expert_layers: Vec<usize>,
        #[serde(with = "GateDef")]
        gate: Gate,
    },
    SharedBottom {
        bottom_layers: Vec<usize>,
    },
    Ple {
        #[serde(serialize_with = "levels::serialize")]
        levels: Vec<Level>,
    },
}

#[derive(Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
enum ArchitectureKind {
    Mmoe,
    Omoe,
    SharedBottom,
    Ple,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ArchitectureFields {
    kind: ArchitectureKind,
    #[serde(default, deserialize_with = "some")]
    experts: Option<usize>,
    #[serde(default, deserialize_with = "some")]
    expert_layers: Option<Vec<usize>>,
    #[serde(default, deserialize_with = "GateDef::deserialize_some")]
    gate: Option<Gate>,
    #[serde(default, deserialize_with = "some")]
    task_experts: Option<usize>,
    #[serde(default, deserialize_with = "some")]
    bottom_layers: Option<Vec<usize>>,
    #[serde(default, deserialize_with = "some")]
    levels: Option<Vec<levels::LevelFields>>,
}

impl ArchitectureDef {
    fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Architecture, D::Error> {
        ArchitectureFields::deserialize(d)?
            .build()
            .map_err(D::Error::custom)
    }
}

impl ArchitectureFields {
    fn build(self) -> Result<Architecture, String> {
        let kind = self.kind;
        if kind == ArchitectureKind::Ple {
            refuse(&[
                ("experts", self.experts.is_some()),
                ("expert_layers", self.expert_layers.is_some()),
                ("gate", self.gate.is_some()),
                ("bottom_layers", self.bottom_layers.is_some()),
            ])?;
        } else {
            refuse(&[("levels", self.levels.is_some())])?;
        }
        if kind == ArchitectureKind::SharedBottom {
            refuse(&[
                ("experts", self.experts.is_some()),
                ("expert_layers", self.expert_layers.is_some()),
                ("gate", self.gate.is_some()),
            ])?;
        } else if kind != ArchitectureKind::Ple {
            refuse(&[("bottom_layers", self.bottom_layers.is_some())])?;
        }
        if kind != ArchitectureKind::Mmoe {
            refuse(&[("task_experts", self.task_experts.is_some())])?;
        }
        // Files written before gates had kinds and before task-specific experts
        // have neither member.
        let gate = self.gate.unwrap_or(Gate::SOFTMAX);
        let experts = || need("experts", self.experts);
        Ok(match kind {
            ArchitectureKind::Mmoe => Architecture::Mmoe {
                experts: experts()?,
                expert_layers: need("expert_layers", self.expert_layers)?,
                gate,
                task_experts: self.task_experts.unwrap_or(0),
            },
            ArchitectureKind::Omoe => Architecture::Omoe {
                experts: experts()?,
                expert_layers: need("expert_layers", self.expert_layers)?,
                gate,
            },
            ArchitectureKind::SharedBottom => Architecture::SharedBottom {
                bottom_layers: need("bottom_layers", self.bottom_layers)?,
            },
            ArchitectureKind::Ple => Architecture::Ple {
                levels: need("levels", self.levels)?
                    .into_iter()
                    .map(levels::LevelFields::build)
                    .collect::<Result<_, _>>()?,
            },
        })
    }
}

#[derive(Serialize)]
#[serde(remote = "GateKind", tag = "kind", rename_all = "snake_case")]
enum GateKindDef {
    Softmax,
    TopK { k: usize },
    Static,
}

#[derive(Serialize)]
#[serde(remote = "Gate")]
struct GateDef {
    #[serde(flatten, with = "GateKindDef")]
    kind: GateKind,
    balance_weight: f32,
    noisy: bool,
    #[serde(with = "BalanceLossDef")]
    balance_loss: BalanceLoss,
    #[serde(with = "SelectionDef")]
    selection: Selection,
}

#[derive(Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
enum GateKindName {
    Softmax,
    TopK,
    Static,
}

/// `noisy`, `balance_loss` and `selection` are absent from files written before
/// gates could be noisy, use the load loss or share a selection.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GateFields {
    kind: GateKindName,
    #[serde(default, deserialize_with = "some")]
    k: Option<usize>,
    #[serde(deserialize_with = "exact")]
    balance_weight: f32,
    #[serde(default)]
    noisy: bool,
    #[serde(default = "importance", with = "BalanceLossDef")]
    balance_loss: BalanceLoss,
    #[serde(default = "per_gate", with = "SelectionDef")]
    selection: Selection,
}

fn importance() -> BalanceLoss {
    BalanceLoss::Importance
}

fn per_gate() -> Selection {
    Selection::PerGate
}

impl GateDef {
    /// For the architecture's optional `gate`.
    fn deserialize_some<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Gate>, D::Error> {
        let gate = GateFields::deserialize(d)?.build();
        gate.map(Some).map_err(D::Error::custom)
    }
}

impl GateFields {
    fn build(self) -> Result<Gate, String> {
        if self.kind != GateKindName::TopK {
            refuse(&[("k", self.k.is_some())])?;
        }
        let kind = match self.kind {
            GateKindName::Softmax => GateKind::Softmax,
            GateKindName::TopK => GateKind::TopK {
                k: need("k", self.k)?,
            },
            GateKindName::Static => GateKind::Static,
        };
        Ok(Gate {
            kind,
            balance_weight: self.balance_weight,
            balance_loss: self.balance_loss,
            noisy: self.noisy,
            selection: self.selection,
        })
    }
}

#[derive(Serialize)]
#[serde(remote = "OptimizerConfig", tag = "kind", rename_all = "snake_case")]
enum OptimizerDef {
    Sgd {
        momentum: f32,
    },
    Adam {
        beta1: f32,
        beta2: f32,
        eps: f32,
        weight_decay: f32,
    },
    #[serde(rename = "adamw")]
    AdamW {
        beta1: f32,
        beta2: f32,
        eps: f32,
        weight_decay: f32,
    },
}

#[derive(Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
enum OptimizerKind {
    Sgd,
    Adam,
    Adamw,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OptimizerFields {
    kind: OptimizerKind,
    #[serde(default, deserialize_with = "some_exact")]
    momentum: Option<f32>,
    #[serde(default, deserialize_with = "some_exact")]
    beta1: Option<f32>,
    #[serde(default, deserialize_with = "some_exact")]
    beta2: Option<f32>,
    #[serde(default, deserialize_with = "some_exact")]
    eps: Option<f32>,
    #[serde(default, deserialize_with = "some_exact")]
    weight_decay: Option<f32>,
}

impl OptimizerDef {
    fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<OptimizerConfig, D::Error> {
        OptimizerFields::deserialize(d)?
            .build()
            .map_err(D::Error::custom)
    }
}

impl OptimizerFields {
    fn build(self) -> Result<OptimizerConfig, String> {
        if self.kind == OptimizerKind::Sgd {
            refuse(&[
                ("beta1", self.beta1.is_some()),
                ("beta2", self.beta2.is_some()),
                ("eps", self.eps.is_some()),
                ("weight_decay", self.weight_decay.is_some()),
            ])?;
            let momentum = need("momentum", self.momentum)?;
            return Ok(OptimizerConfig::Sgd { momentum });
        }
        refuse(&[("momentum", self.momentum.is_some())])?;
        let (beta1, beta2) = (need("beta1", self.beta1)?, need("beta2", self.beta2)?);
        let (eps, weight_decay) = (
            need("eps", self.eps)?,
            need("weight_decay", self.weight_decay)?,
        );
        Ok(match self.kind {
            OptimizerKind::Adam => OptimizerConfig::Adam {
                beta1,
                beta2,
                eps,
                weight_decay,
            },
            _ => OptimizerConfig::AdamW {
                beta1,
                beta2,
                eps,
                weight_decay,
            },
        })
    }
}
