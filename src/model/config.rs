//! What a model is: architecture, layer widths, tasks, optimizer, seed.

use crate::kernels::loss::LossKind;
use crate::kernels::optimizer::Optimizer;
use crate::{Error, Result};

/// How the tasks share the layers below their towers.
#[derive(Clone, Debug, PartialEq)]
pub enum Architecture {
    /// Multi-gate mixture of experts: one softmax gate per task.
    Mmoe {
        /// Number of experts.
        experts: usize,
        /// Widths of each expert's ReLU layers, input side first (at least one).
        expert_layers: Vec<usize>,
    },
    /// One-gate mixture of experts: one gate shared by all tasks.
    Omoe {
        /// Number of experts.
        experts: usize,
        /// Widths of each expert's ReLU layers (at least one).
        expert_layers: Vec<usize>,
    },
    /// One bottom network shared by all towers.
    SharedBottom {
        /// Widths of the bottom's ReLU layers (at least one).
        bottom_layers: Vec<usize>,
    },
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
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    /// Input features per example.
    pub inputs: usize,
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
    /// The optimizer.
    pub optimizer: Optimizer,
    /// Learning rate (can be changed between steps).
    pub learning_rate: f32,
    /// Seed of the initial weights.
    pub seed: u64,
}

impl ModelConfig {
    /// Adam with the usual moments (0.9, 0.999, 1e-8), no weight decay.
    pub const ADAM: Optimizer = Optimizer::Adam {
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
            shared_layers: Vec::new(),
            architecture: Architecture::Mmoe {
                experts,
                expert_layers: vec![expert_width],
            },
            tower_layers: vec![tower_width],
            tasks,
            optimizer: Self::ADAM,
            learning_rate: 1e-3,
            seed: 0,
        }
    }

    /// Checks every count and width is positive and every value finite.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(Error::invalid("model config", what));
        if self.inputs == 0 {
            return bad("inputs must be at least 1".into());
        }
        if self.tasks.is_empty() {
            return bad("at least one task is needed".into());
        }
        let (experts, layers, what) = match &self.architecture {
            Architecture::Mmoe {
                experts,
                expert_layers,
            }
            | Architecture::Omoe {
                experts,
                expert_layers,
            } => (*experts, expert_layers, "expert_layers"),
            Architecture::SharedBottom { bottom_layers } => (1, bottom_layers, "bottom_layers"),
        };
        if experts == 0 {
            return bad("experts must be at least 1".into());
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
