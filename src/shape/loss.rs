//! The loss family's vocabulary: each task's per-example loss and its weight, and the
//! checks of ESMM pairs every implementation shares.

use crate::{Error, Result};

/// The per-example loss of a task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LossKind {
    /// `ℓ = (p − y)²`, `ℓ' = 2(p − y)` (regression).
    MeanSquaredError,
    /// Binary cross-entropy on the logit `p` against a target `y` in `[0, 1]`, in the
    /// stable form `ℓ = max(p, 0) − p·y + log(1 + exp(−|p|))`, `ℓ' = sigmoid(p) − y`
    /// (classification). Finite for any finite logit.
    BinaryCrossEntropy,
    /// The CTR task of an ESMM pair (Ma et al. 2018) whose CVR task is task `cvr`:
    /// its own loss is [`BinaryCrossEntropy`](Self::BinaryCrossEntropy) of its logit
    /// `a` against the click `y_c`, and its gradient also carries the CVR task's
    /// loss's derivative with respect to `a` (that loss reads `a`), so that the
    /// gradient row of each task is written by that task alone.
    EsmmCtr {
        /// Index of the pair's CVR task, whose kind is [`EsmmCtcvr`](Self::EsmmCtcvr).
        cvr: usize,
    },
    /// The CVR task of an ESMM pair whose CTR task is task `ctr`: with `a` the CTR
    /// task's logit, `b` its own, `pCTCVR = sigmoid(a) · sigmoid(b)` and the target
    /// `y = y_c · y_v` (click and conversion; the conversion label of an unclicked
    /// row is not read), `ℓ = −y·log pCTCVR − (1 − y)·log(1 − pCTCVR)`, computed
    /// from the logits without forming the product:
    /// `log pCTCVR = −softplus(−a) − softplus(−b)` and
    /// `log(1 − pCTCVR) = log(sigmoid(−a) + sigmoid(a)·sigmoid(−b))`, a log-sum-exp
    /// of two terms. Finite for any finite logits. Its loss is counted on this task;
    /// its derivative with respect to `b` goes to this task's gradient, that with
    /// respect to `a` to the CTR task's (see [`EsmmCtr`](Self::EsmmCtr)).
    EsmmCtcvr {
        /// Index of the pair's CTR task, whose kind is [`EsmmCtr`](Self::EsmmCtr).
        ctr: usize,
    },
}

impl LossKind {
    pub(crate) fn code(self) -> u32 {
        match self {
            LossKind::MeanSquaredError => 0,
            LossKind::BinaryCrossEntropy => 1,
            LossKind::EsmmCtr { .. } => 2,
            LossKind::EsmmCtcvr { .. } => 3,
        }
    }

    /// The other task of an ESMM pair (`None` for a task of its own).
    pub fn partner(self) -> Option<usize> {
        match self {
            LossKind::EsmmCtr { cvr } => Some(cvr),
            LossKind::EsmmCtcvr { ctr } => Some(ctr),
            LossKind::MeanSquaredError | LossKind::BinaryCrossEntropy => None,
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

/// Checks that every ESMM task's partner is another task of the list, of the
/// matching kind, naming it back: an [`Error::Invalid`] naming the task otherwise.
pub fn check_pairs(context: &str, kinds: &[LossKind]) -> Result<()> {
    for (t, kind) in kinds.iter().enumerate() {
        let Some(partner) = kind.partner() else {
            continue;
        };
        let back = match kinds.get(partner) {
            Some(LossKind::EsmmCtr { cvr }) => {
                matches!(kind, LossKind::EsmmCtcvr { .. }).then_some(*cvr)
            }
            Some(LossKind::EsmmCtcvr { ctr }) => {
                matches!(kind, LossKind::EsmmCtr { .. }).then_some(*ctr)
            }
            _ => None,
        };
        if partner == t || back != Some(t) {
            let found = match kinds.get(partner) {
                Some(k) => format!("{k:?}"),
                None => format!("no such task ({} tasks)", kinds.len()),
            };
            return Err(Error::invalid(
                context,
                format!(
                    "task {t} is {kind:?}, but task {partner} is {found}: an ESMM pair \
                     is two different tasks, an EsmmCtr and an EsmmCtcvr naming each other"
                ),
            ));
        }
    }
    Ok(())
}
