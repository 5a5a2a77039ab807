//! One extraction level of a multi-level model (PLE) and the checks of a model's
//! levels.

use super::gate::{Gate, GateKind};
use crate::shape::Selection;
use crate::{Error, Result};

/// One extraction level of a multi-level model ([`Architecture::Ple`](super::Architecture::Ple)).
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

/// Checks the levels of a multi-level model: each has experts, layers of nonzero
/// width, and a gate its gates can make.
pub(super) fn validate_levels(levels: &[Level]) -> Result<()> {
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
