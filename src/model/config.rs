//! What a model is: input (dense features and categorical fields), architecture,
//! layer widths, tasks, optimizers, seed.

use super::fields::{self, FieldConfig};
use crate::shape::{
    BalanceLoss, LossKind, MAX_SHARED_SELECTION_EXPERTS, OptimizerConfig, Selection, TableOptimizer,
};
use crate::{Error, Result};

/// How a gate turns its logits into expert weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GateKind {
    /// Softmax over every expert the gate sees (the paper's gate).
    Softmax,
    /// Softmax over the `k` largest logits only (1 ≤ k ≤ the experts a gate sees);
    /// the other experts get a weight of exactly 0 and no gradient.
    TopK {
        /// Experts kept per example.
        k: usize,
    },
    /// Input-independent: a learned softmax over per-gate logits (the gate's bias),
    /// the same weights for every example.
    Static,
}

/// The gates of a mixture of experts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Gate {
    /// Dense softmax, sparse top-k or static.
    pub kind: GateKind,
    /// Weight of the load-balancing loss, `weight · CV²` of each gate's importance
    /// (its weights summed over the batch); 0 turns it off.
    pub balance_weight: f32,
    /// Which load-balancing loss `balance_weight` weighs: the importance loss
    /// (`weight · CV²`, the default) or the Switch Transformer load loss
    /// `weight · E · Σ_e f_e · P_e` on the full softmax, whose gradient also reaches
    /// the experts a top-k gate did not select (see [`BalanceLoss`]).
    pub balance_loss: BalanceLoss,
    /// Noisy top-k gating (Shazeer et al. 2017; top-k gates only): training steps
    /// add `ε ⊙ softplus(X · Wn + bn)` to the logits before the selection, with
    /// fresh `ε ~ N(0, 1)` each step and a trained noise layer `gate.noise` that
    /// starts at zero (noise of standard deviation ln 2); predictions and
    /// evaluations use the logits alone.
    pub noisy: bool,
    /// Top-k gates only: whether each task's gate keeps its own `k` experts per
    /// example ([`Selection::PerGate`], the default) or all gates the same `k`, those
    /// with the largest sum of the gates' logits ([`Selection::Shared`]), so that the
    /// sparse experts compute `k` per example whatever the number of tasks.
    pub selection: Selection,
}

impl Gate {
    /// The paper's dense softmax gate, no balancing loss.
    pub const SOFTMAX: Gate = Gate {
        kind: GateKind::Softmax,
        balance_weight: 0.0,
        balance_loss: BalanceLoss::Importance,
        noisy: false,
        selection: Selection::PerGate,
    };

    /// A static (input-independent) gate.
    pub const STATIC: Gate = Gate {
        kind: GateKind::Static,
        balance_weight: 0.0,
        balance_loss: BalanceLoss::Importance,
        noisy: false,
        selection: Selection::PerGate,
    };

    /// A sparse gate keeping the `k` largest logits, no balancing loss.
    pub const fn top_k(k: usize) -> Gate {
        Gate {
            kind: GateKind::TopK { k },
            balance_weight: 0.0,
            balance_loss: BalanceLoss::Importance,
            noisy: false,
            selection: Selection::PerGate,
        }
    }

    /// This gate with a load-balancing loss of weight `weight`: the importance loss,
    /// `weight · CV²` of each gate's importance.
    pub const fn balanced(self, weight: f32) -> Gate {
        Gate {
            balance_weight: weight,
            balance_loss: BalanceLoss::Importance,
            ..self
        }
    }

    /// This gate with the Switch Transformer / GShard load loss of weight `weight`:
    /// per gate, `weight · E · Σ_e f_e · P_e`, where `f_e` is the fraction of the
    /// batch's routed slots that went to expert `e` and `P_e` the mean over the batch
    /// of the full softmax (before the top-k cut) over the `E` experts the gate sees.
    /// Its gradient reaches every logit, so a top-k gate stuck on a few experts is
    /// pushed towards the others; on a dense gate it is constant (`weight`).
    pub const fn balanced_load(self, weight: f32) -> Gate {
        Gate {
            balance_weight: weight,
            balance_loss: BalanceLoss::Load,
            ..self
        }
    }

    /// This gate with trainable noise on its logits in training (see
    /// [`noisy`](Self::noisy); valid for top-k gates only).
    pub const fn noisy(self) -> Gate {
        Gate {
            noisy: true,
            ..self
        }
    }

    /// This gate with one selection of `k` experts per example shared by every
    /// task's gate (see [`selection`](Self::selection); valid for top-k gates over
    /// shared experts only).
    pub const fn shared_selection(self) -> Gate {
        Gate {
            selection: Selection::Shared,
            ..self
        }
    }
}

/// One extraction level of a multi-level model ([`Architecture::Ple`]).
///
/// Its experts are the shared ones, numbered first, then each task's own in task
/// order. Task `t`'s gate weighs the shared experts and task `t`'s own; every level
/// but the last has one more gate, the shared gate, over all of the level's
/// experts. At the first level every expert and gate reads the model's input; at
/// level `l > 0` task `t`'s experts and gate read task `t`'s output of level
/// `l − 1`, the shared experts and the shared gate its shared output.
#[derive(Clone, Debug, PartialEq)]
pub struct Level {
    /// Experts every gate of the level sees.
    pub shared_experts: usize,
    /// Experts of each task's own (0: none; a level of shared experts only is a
    /// level of stacked MMoE).
    pub task_experts: usize,
    /// Widths of each expert's ReLU layers, input side first (at least one); the
    /// level's output has the last width.
    pub expert_layers: Vec<usize>,
    /// The level's gates: dense softmax, top-k (`k` at most the experts a task gate
    /// sees; `k` equal to that number is the dense gate, and the shared gate then
    /// weighs every expert) or static. Noise, balancing losses and shared selections
    /// are not available on levels.
    pub gate: Gate,
}

impl Level {
    /// A level of `shared` shared experts and `task` experts per task, each of one
    /// ReLU layer of `width`, with the paper's softmax gates.
    pub fn new(shared: usize, task: usize, width: usize) -> Level {
        Level {
            shared_experts: shared,
            task_experts: task,
            expert_layers: vec![width],
            gate: Gate::SOFTMAX,
        }
    }

    /// All experts of the level in a model of `tasks` tasks.
    pub fn total_experts(&self, tasks: usize) -> usize {
        self.shared_experts
            .saturating_add(tasks.saturating_mul(self.task_experts))
    }

    /// Experts a task's gate sees.
    pub fn experts_per_task_gate(&self) -> usize {
        self.shared_experts.saturating_add(self.task_experts)
    }
}

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

/// One task: its head and its weight in the total loss.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskConfig {
    /// Name, used in parameter names and reports.
    pub name: String,
    /// Regression or binary classification.
    pub kind: TaskKind,
    /// Weight of this task's mean loss in the total.
    pub weight: f32,
}

impl TaskConfig {
    /// A task with weight 1.
    pub fn new(name: impl Into<String>, kind: TaskKind) -> Self {
        TaskConfig {
            name: name.into(),
            kind,
            weight: 1.0,
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
        Ok(())
    }
}

/// Checks the levels of a multi-level model: each has experts, layers of nonzero
/// width, and a gate its gates can make.
fn validate_levels(levels: &[Level]) -> Result<()> {
    let bad = |what: String| Err(Error::invalid("model config", what));
    if levels.is_empty() {
        return bad("a PLE model needs at least one level".into());
    }
    for (l, level) in levels.iter().enumerate() {
        let seen = level.experts_per_task_gate();
        if level.shared_experts == 0 && level.task_experts == 0 {
            return bad(format!(
                "level {l} has no experts (0 shared and 0 per task)"
            ));
        }
        if level.expert_layers.is_empty() {
            return bad(format!("level {l}: expert_layers needs at least one layer"));
        }
        if let Some(i) = level.expert_layers.iter().position(|&w| w == 0) {
            return bad(format!("level {l}: expert_layers[{i}] has width 0"));
        }
        let gate = level.gate;
        if let GateKind::TopK { k } = gate.kind
            && !(1..=seen).contains(&k)
        {
            return bad(format!(
                "level {l}: top-k gate with k = {k}, but each task's gate sees {seen} experts \
                 ({} shared + {} of its own), so 1 ≤ k ≤ {seen}",
                level.shared_experts, level.task_experts
            ));
        }
        if gate.noisy || gate.balance_weight != 0.0 || gate.selection == Selection::Shared {
            return bad(format!(
                "level {l}: gate noise, balancing losses and shared selections are not \
                 available on PLE levels"
            ));
        }
    }
    Ok(())
}
