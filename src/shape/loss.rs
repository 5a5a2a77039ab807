//! The loss family's vocabulary: each task's per-example loss and its weight.

/// The per-example loss of a task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LossKind {
    /// `ℓ = (p − y)²`, `ℓ' = 2(p − y)` (regression).
    MeanSquaredError,
    /// Binary cross-entropy on the logit `p` against a target `y` in `[0, 1]`, in the
    /// stable form `ℓ = max(p, 0) − p·y + log(1 + exp(−|p|))`, `ℓ' = sigmoid(p) − y`
    /// (classification). Finite for any finite logit.
    BinaryCrossEntropy,
}

impl LossKind {
    pub(crate) fn code(self) -> u32 {
        match self {
            LossKind::MeanSquaredError => 0,
            LossKind::BinaryCrossEntropy => 1,
        }
    }
}

/// The loss of one task and its weight `λ_t` in the total.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TaskLoss {
    /// Per-example loss.
    pub kind: LossKind,
    /// `λ_t`; finite.
    pub weight: f32,
}
