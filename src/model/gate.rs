//! How a mixture of experts' gates weigh the experts: kind, balancing loss, noise,
//! selection.

use crate::shape::{BalanceLoss, Selection};

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
