//! The operands of the gate + mix passes: what a caller hands [`GateMix`](super::GateMix).

use super::{ExpertAccess, ForwardStages, GateMixShape, Selection};
use crate::kernels::{BufferView, Precision};

/// Operands of the forward pass.
#[derive(Clone, Copy, Debug)]
pub struct GateMixForward<'a> {
    /// Shape.
    pub shape: GateMixShape,
    /// Storage type of every operand; logits, softmax and mixing run in f32 either
    /// way (with f16, the logits are rounded to f16 once, in `G`, before the softmax).
    pub precision: Precision,
    /// `X`, the gates' input: `[rows, inputs]`, or one block per gate (see
    /// [`GateMixShape::input`]).
    pub x: BufferView<'a>,
    /// `Wg: [gates, inputs, experts]`.
    pub wg: BufferView<'a>,
    /// `bg: [gates, experts]`.
    pub bg: BufferView<'a>,
    /// The experts' outputs `H: [experts, rows, width]`.
    pub h: BufferView<'a>,
    /// Output `G: [gates, rows, experts]`, the gate probabilities (kept for backward).
    pub g: BufferView<'a>,
    /// Output `M: [gates, rows, width]`, the mixtures.
    pub m: BufferView<'a>,
}

/// What the top-k mode of the forward pass ([`GateMix::forward_top_k`](super::GateMix::forward_top_k)) adds to its
/// [`GateMixForward`] operands.
#[derive(Clone, Copy, Debug)]
pub struct GateMixTopK<'a> {
    /// Experts kept per gate and row, `1 ≤ k ≤` the experts the gate sees; a run-time
    /// value, so one pipeline serves every `k`.
    pub k: usize,
    /// Which experts each gate sees (task-specific experts beside shared ones).
    pub access: ExpertAccess,
    /// Whether each gate keeps its own `k` experts or all gates of a row the same.
    pub selection: Selection,
    /// The phases to run: both, or the gate values and the mixtures apart.
    pub stages: ForwardStages,
    /// Added to the logits before the selection and softmax when given,
    /// `[gates, rows, experts]`: a noisy gate's `ε ⊙ softplus(n)` (see
    /// [`noise`](crate::kernels::noise)). Read by the gate phase only; `None` leaves every
    /// result bitwise as without it.
    pub logit_offset: Option<BufferView<'a>>,
    /// Output, when given: `p: [gates, rows, experts]`, the full softmax of each row's
    /// logits (offset included) over the experts its gate sees, before the top-k cut,
    /// 0 for the experts it does not see; what the load-balancing loss's load kind
    /// averages ([`Balance::forward_load`](crate::kernels::balance::Balance::forward_load)).
    /// Written by the gate phase, in a buffer of its own; every other result is
    /// bitwise as without it.
    pub full_softmax: Option<BufferView<'a>>,
}

impl GateMixTopK<'_> {
    /// The top `k` of every expert, a selection per gate, both phases in one
    /// dispatch, no offset and no full softmax.
    pub fn new(k: usize) -> Self {
        GateMixTopK {
            k,
            access: ExpertAccess::All,
            selection: Selection::PerGate,
            stages: ForwardStages::Both,
            logit_offset: None,
            full_softmax: None,
        }
    }
}

/// Operands of the backward pass. Outputs are overwritten, except `dx` with
/// `accumulate_dx`. All outputs must be in buffers distinct from all inputs.
#[derive(Clone, Copy, Debug)]
pub struct GateMixBackward<'a> {
    /// Shape.
    pub shape: GateMixShape,
    /// Storage type of every operand, `dz` included; accumulation is f32 either way.
    pub precision: Precision,
    /// The forward input `X`.
    pub x: BufferView<'a>,
    /// `Wg` (read only for `dx`).
    pub wg: BufferView<'a>,
    /// The forward's `H`.
    pub h: BufferView<'a>,
    /// The forward's output `G`.
    pub g: BufferView<'a>,
    /// `dM: [gates, rows, width]`.
    pub dm: BufferView<'a>,
    /// Output `dH: [experts, rows, width]`.
    pub dh: BufferView<'a>,
    /// Output scratch `dz: [gates, rows, experts]`, the gradient of the logits.
    pub dz: BufferView<'a>,
    /// Output `dWg: [gates, inputs, experts]`.
    pub dwg: BufferView<'a>,
    /// Output `dbg: [gates, experts]`.
    pub dbg: BufferView<'a>,
    /// Output `dX: [rows, inputs]`, or none when `X` needs no gradient.
    pub dx: Option<BufferView<'a>>,
    /// Add into `dX` instead of overwriting it (the experts also feed from `X`).
    pub accumulate_dx: bool,
    /// Store `dH ⊙ [H > 0]` instead of `dH`: the gradient at the input of the ReLU
    /// that made `H`, so that the expert layer's grouped GEMM backward runs with the
    /// identity and loads no `H` (the same bits its ReLU derivative would give).
    /// Only for an `H` that is a ReLU's output and that nothing else differentiates.
    pub relu_dh: bool,
}
