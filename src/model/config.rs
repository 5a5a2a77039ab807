//! What a model is: input (dense features and categorical fields), architecture,
//! layer widths, tasks, optimizers, seed.

use super::fields::{self, FieldConfig};
pub use super::gate::{Gate, GateKind};
pub use super::level::Level;
use super::level::validate_levels;
use super::subsets::{self, ExpertInput};
use crate::shape::{
    ColumnWindows, LossKind, MAX_SHARED_SELECTION_EXPERTS, OptimizerConfig, Selection,
    TableOptimizer,
};
use crate::{Error, Result};

/// How the tasks share the layers below their towers.
#[derive(Clone, Debug, PartialEq)]
pub enum Architecture {
    /// Multi-gate mixture of experts: one gate per task.
    Mmoe {
        /// Number of experts shared by all tasks.
        experts: usize,
        /// Widths of each expert's ReLU layers, input side first (at least one).
        expert_layers: Vec<usize>,
        /// The gates.
        gate: Gate,
        /// Experts of each task's own beside the shared ones (0: none). Each task's
        /// gate sees the shared experts and its own; the experts are numbered shared
        /// first, then each task's in task order.
        task_experts: usize,
    },
    /// One-gate mixture of experts: one gate shared by all tasks.
    Omoe {
        /// Number of experts.
        experts: usize,
        /// Widths of each expert's ReLU layers (at least one).
        expert_layers: Vec<usize>,
        /// The gate.
        gate: Gate,
    },
    /// One bottom network shared by all towers.
    SharedBottom {
        /// Widths of the bottom's ReLU layers (at least one).
        bottom_layers: Vec<usize>,
    },
    /// Progressive Layered Extraction (Tang et al., RecSys 2020): extraction levels
    /// of shared and task experts, stacked ([`Level`]); the towers read the last
    /// level's task outputs. One level is a CGC (the same model as
    /// [`Mmoe`](Self::Mmoe) with `task_experts`); levels without task experts are
    /// MMoE stacked in levels.
    Ple {
        /// The levels, input side first (at least one).
        levels: Vec<Level>,
    },
}

impl Architecture {
    /// The gate of a mixture of experts (`None` for shared-bottom).
    pub fn gate(&self) -> Option<Gate> {
        match self {
            Architecture::Mmoe { gate, .. } | Architecture::Omoe { gate, .. } => Some(*gate),
            Architecture::SharedBottom { .. } => None,
            Architecture::Ple { levels } => levels.last().map(|l| l.gate),
        }
    }

    /// All experts, task-specific ones included, of a model with `tasks` tasks (1
    /// for shared-bottom: its bottom).
    pub fn total_experts(&self, tasks: usize) -> usize {
        match self {
            Architecture::Mmoe {
                experts,
                task_experts,
                ..
            } => experts.saturating_add(tasks.saturating_mul(*task_experts)),
            Architecture::Omoe { experts, .. } => *experts,
            Architecture::SharedBottom { .. } => 1,
            Architecture::Ple { levels } => levels
                .iter()
                .fold(0, |n, l| n.saturating_add(l.total_experts(tasks))),
        }
    }

    /// Experts each gate sees.
    pub fn experts_per_gate(&self, tasks: usize) -> usize {
        match self {
            Architecture::Mmoe {
                experts,
                task_experts,
                ..
            } => experts.saturating_add(*task_experts),
            Architecture::Ple { levels } => levels.last().map_or(0, Level::experts_per_task_gate),
            _ => self.total_experts(tasks),
        }
    }
}

/// What a task predicts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskKind {
    /// A real value, trained with mean squared error.
    Regression,
    /// A probability, trained with binary cross-entropy on the logit.
    BinaryClassification,
}

impl TaskKind {
    /// The loss this kind trains with.
    pub fn loss(self) -> LossKind {
        match self {
            TaskKind::Regression => LossKind::MeanSquaredError,
            TaskKind::BinaryClassification => LossKind::BinaryCrossEntropy,
        }
    }
}

/// How a task's head output is trained and read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum HeadKind {
    /// The task's own loss on its own head (the default).
    #[default]
    Own,
    /// The CVR task of an ESMM pair (Ma et al., SIGIR 2018) whose CTR task is the
    /// task named `ctr`; both are binary classification tasks, and a task is in at
    /// most one pair. With `a` the CTR head's logit and `b` this head's, `pCTR =
    /// sigmoid(a)`, `pCVR = sigmoid(b)` and `pCTCVR = pCTR · pCVR`. This task's
    /// target is the conversion label; its loss is the cross-entropy of pCTCVR
    /// against click · conversion over every row (so an unclicked row's conversion
    /// label is not read, and the CVR head is never trained on the clicked rows
    /// alone), computed stably from both logits; the CTR task keeps its own
    /// cross-entropy against the click. Predictions add a pCTCVR output per pair
    /// ([`ModelConfig::output_names`]).
    EsmmCvr {
        /// Name of the pair's CTR task.
        ctr: String,
    },
}

/// One task: its head and its weight in the total loss.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskConfig {
    /// Name, used in parameter names and reports.
    pub name: String,
    /// Regression or binary classification.
    pub kind: TaskKind,
    /// Weight of this task's mean loss in the total.
    pub weight: f32,
    /// Its own head, or the CVR head of an ESMM pair.
    pub head: HeadKind,
}

impl TaskConfig {
    /// A task with weight 1 and a head of its own.
    pub fn new(name: impl Into<String>, kind: TaskKind) -> Self {
        TaskConfig {
            name: name.into(),
            kind,
            weight: 1.0,
            head: HeadKind::Own,
        }
    }

    /// The CVR task `name` (binary, weight 1) of an ESMM pair whose CTR task is the
    /// binary task called `ctr` ([`HeadKind::EsmmCvr`]).
    pub fn esmm_cvr(name: impl Into<String>, ctr: impl Into<String>) -> Self {
        TaskConfig {
            head: HeadKind::EsmmCvr { ctr: ctr.into() },
            ..TaskConfig::new(name, TaskKind::BinaryClassification)
        }
    }
}

/// A whole model and how to train it.
///
/// The first layers (shared, experts, gates or bottom) read one input row of
/// [`input_width`](Self::input_width) columns: the `inputs` dense features first, then
/// each field's pooled embedding, `dim` columns each, in the order of `fields`.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    /// Dense input features per example (0 for a model of categorical fields only).
    pub inputs: usize,
    /// Categorical fields, each looked up in an embedding table; empty for a model of
    /// dense features only.
    pub fields: Vec<FieldConfig>,
    /// ReLU layers shared by everything above, below the experts or bottom (empty
    /// for the plain models; one layer gives MMoE on a shared hidden layer).
    pub shared_layers: Vec<usize>,
    /// MMoE, OMoE or shared-bottom.
    pub architecture: Architecture,
    /// Which part of the input row each run of MMoE or OMoE experts reads, in expert
    /// order (empty: every expert reads all of it). The gates read the whole row.
    pub expert_inputs: Vec<ExpertInput>,
    /// Widths of each tower's ReLU layers (may be empty: the head then reads the
    /// mixture directly).
    pub tower_layers: Vec<usize>,
    /// The tasks, one tower and head each.
    pub tasks: Vec<TaskConfig>,
    /// The optimizer of every parameter but the embedding tables.
    pub optimizer: OptimizerConfig,
    /// How the embedding tables train: a sparse optimizer on the rows each batch
    /// touches (lazy Adam by default), or `optimizer` over whole tables.
    pub table_optimizer: TableOptimizer,
    /// Learning rate (can be changed between steps).
    pub learning_rate: f32,
    /// Seed of the initial weights.
    pub seed: u64,
}

impl ModelConfig {
    /// Adam with the usual moments (0.9, 0.999, 1e-8), no weight decay.
    pub const ADAM: OptimizerConfig = OptimizerConfig::Adam {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
    };

    /// The MMoE of the paper's synthetic experiment: `experts` experts of one ReLU
    /// layer of `expert_width`, towers of one ReLU layer of `tower_width`, Adam.
    pub fn mmoe(
        inputs: usize,
        experts: usize,
        expert_width: usize,
        tower_width: usize,
        tasks: Vec<TaskConfig>,
    ) -> Self {
        ModelConfig {
            inputs,
            fields: Vec::new(),
            shared_layers: Vec::new(),
            architecture: Architecture::Mmoe {
                experts,
                expert_layers: vec![expert_width],
                gate: Gate::SOFTMAX,
                task_experts: 0,
            },
            expert_inputs: Vec::new(),
            tower_layers: vec![tower_width],
            tasks,
            optimizer: Self::ADAM,
            table_optimizer: TableOptimizer::default(),
            learning_rate: 1e-3,
            seed: 0,
        }
    }

    /// Columns of the first layers' input: `inputs` plus every field's `dim`.
    pub fn input_width(&self) -> usize {
        self.fields
            .iter()
            .fold(self.inputs, |w, f| w.saturating_add(f.dim))
    }

    /// The first of field `field`'s columns in the input row.
    pub fn field_column(&self, field: usize) -> usize {
        self.fields[..field]
            .iter()
            .fold(self.inputs, |w, f| w.saturating_add(f.dim))
    }

    /// The column windows of the first expert layer, `None` when every expert reads
    /// the whole input row. Errors name the run of `expert_inputs` that is wrong, or
    /// say why the model's experts cannot take subsets.
    pub(crate) fn expert_windows(&self) -> Result<Option<ColumnWindows>> {
        if self.expert_inputs.is_empty() {
            return Ok(None);
        }
        let bad = |what: &str| Err(Error::invalid("model config expert_inputs", what));
        if !matches!(
            self.architecture,
            Architecture::Mmoe { .. } | Architecture::Omoe { .. }
        ) {
            return bad("feature subsets are for the experts of MMoE and OMoE");
        }
        if !self.shared_layers.is_empty() {
            return bad(
                "the experts read the shared layers' output, not the input, so they cannot \
                 take subsets of the input",
            );
        }
        let experts = self.architecture.total_experts(self.tasks.len());
        subsets::column_windows(&self.expert_inputs, experts, self.inputs, &self.fields).map(Some)
    }

    /// Checks every count and width is positive and every value finite, and the
    /// fields (names, sizes, bags, shared tables) and the table optimizer.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(Error::invalid("model config", what));
        fields::validate(self.inputs, &self.fields)?;
        self.table_optimizer.validate()?;
        if self.tasks.is_empty() {
            return bad("at least one task is needed".into());
        }
        if let Architecture::Ple { levels } = &self.architecture {
            validate_levels(levels)?;
        }
        self.expert_windows()?;
        let (experts, layers, what) = match &self.architecture {
            Architecture::Mmoe { expert_layers, .. } | Architecture::Omoe { expert_layers, .. } => {
                (
                    self.architecture.total_experts(self.tasks.len()),
                    expert_layers,
                    "expert_layers",
                )
            }
            Architecture::SharedBottom { bottom_layers } => (1, bottom_layers, "bottom_layers"),
            // Checked level by level above; the towers' widths below.
            Architecture::Ple { levels } => (1, &levels[0].expert_layers, "expert_layers"),
        };
        if experts == 0 {
            return bad("experts must be at least 1".into());
        }
        if let Some(gate) = self
            .architecture
            .gate()
            .filter(|_| !matches!(self.architecture, Architecture::Ple { .. }))
        {
            let seen = self.architecture.experts_per_gate(self.tasks.len());
            if let GateKind::TopK { k } = gate.kind
                && !(1..=seen).contains(&k)
            {
                return bad(format!(
                    "top-k gate with k = {k}; each gate sees {seen} experts, so 1 ≤ k ≤ {seen}"
                ));
            }
            if gate.noisy && !matches!(gate.kind, GateKind::TopK { .. }) {
                return bad(format!(
                    "gate noise (`Gate::noisy`) needs a top-k gate; this gate is {:?}",
                    gate.kind
                ));
            }
            if gate.selection == Selection::Shared {
                if !matches!(gate.kind, GateKind::TopK { .. }) {
                    return bad(format!(
                        "a shared selection (`Gate::shared_selection`) needs a top-k gate; \
                         this gate is {:?}",
                        gate.kind
                    ));
                }
                if let Architecture::Mmoe { task_experts, .. } = self.architecture
                    && task_experts > 0
                {
                    return bad(format!(
                        "a shared selection needs every gate to see every expert, but the \
                         tasks have experts of their own ({task_experts} each)"
                    ));
                }
                if experts > MAX_SHARED_SELECTION_EXPERTS {
                    return bad(format!(
                        "a shared selection is limited to {MAX_SHARED_SELECTION_EXPERTS} \
                         experts; this model has {experts}"
                    ));
                }
            }
            if !gate.balance_weight.is_finite() || gate.balance_weight < 0.0 {
                return bad(format!("balance weight {}", gate.balance_weight));
            }
        }
        if layers.is_empty() {
            return bad(format!("{what} needs at least one layer"));
        }
        for (name, widths) in [
            ("shared_layers", &self.shared_layers),
            (what, layers),
            ("tower_layers", &self.tower_layers),
        ] {
            if let Some(i) = widths.iter().position(|&w| w == 0) {
                return bad(format!("{name}[{i}] has width 0"));
            }
        }
        for task in &self.tasks {
            if !task.weight.is_finite() || task.weight < 0.0 {
                return bad(format!(
                    "task `{}` has loss weight {}",
                    task.name, task.weight
                ));
            }
        }
        if !self.learning_rate.is_finite() || self.learning_rate < 0.0 {
            return bad(format!("learning rate {}", self.learning_rate));
        }
        super::esmm::validate(&self.tasks)
    }
}
