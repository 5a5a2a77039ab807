//! The optimizer's hyper-parameters: the update rule and its fixed coefficients (the
//! learning rate is given per step).

use crate::{Error, Result};

/// An update rule and its fixed hyperparameters (the learning rate is given per step).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum OptimizerConfig {
    /// `m = μ·m + g; p −= lr·m`. `μ = 0` is plain SGD.
    Sgd {
        /// Momentum `μ`, in `[0, 1)`.
        momentum: f32,
    },
    /// Adam with L2 regularisation: `g' = g + wd·p`,
    /// `m = β1·m + (1−β1)·g'`, `v = β2·v + (1−β2)·g'²`,
    /// `p −= lr · (m/(1−β1^t)) / (sqrt(v/(1−β2^t)) + eps)`.
    Adam {
        /// `β1`, in `[0, 1)`.
        beta1: f32,
        /// `β2`, in `[0, 1)`.
        beta2: f32,
        /// `eps`, positive.
        eps: f32,
        /// L2 coefficient added to the gradient, `≥ 0`.
        weight_decay: f32,
    },
    /// Adam with decoupled weight decay: `p −= lr·wd·p`, then the Adam update on the
    /// unmodified gradient.
    AdamW {
        /// `β1`, in `[0, 1)`.
        beta1: f32,
        /// `β2`, in `[0, 1)`.
        beta2: f32,
        /// `eps`, positive.
        eps: f32,
        /// Decoupled weight decay, `≥ 0`.
        weight_decay: f32,
    },
}

impl OptimizerConfig {
    /// Checks the hyperparameters are in range.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::invalid("optimizer", format!("{self:?}: {m}")));
        let unit = |x: f32| (0.0..1.0).contains(&x);
        match *self {
            OptimizerConfig::Sgd { momentum } => {
                if !unit(momentum) {
                    return bad("momentum must be in [0, 1)");
                }
            }
            OptimizerConfig::Adam {
                beta1,
                beta2,
                eps,
                weight_decay,
            }
            | OptimizerConfig::AdamW {
                beta1,
                beta2,
                eps,
                weight_decay,
            } => {
                if !unit(beta1) {
                    return bad("beta1 must be in [0, 1)");
                }
                if !unit(beta2) {
                    return bad("beta2 must be in [0, 1)");
                }
                if !(eps > 0.0 && eps.is_finite()) {
                    return bad("eps must be positive and finite");
                }
                if !(weight_decay >= 0.0 && weight_decay.is_finite()) {
                    return bad("weight_decay must be finite and not negative");
                }
            }
        }
        Ok(())
    }

    /// Whether the rule keeps a second moment `v`.
    pub fn needs_second_moment(&self) -> bool {
        !matches!(self, OptimizerConfig::Sgd { .. })
    }

    /// `(1 − β1^t, 1 − β2^t)` in `f64`, or `(1, 1)` for SGD.
    pub fn bias_corrections(&self, step: u32) -> (f64, f64) {
        match *self {
            OptimizerConfig::Sgd { .. } => (1.0, 1.0),
            OptimizerConfig::Adam { beta1, beta2, .. }
            | OptimizerConfig::AdamW { beta1, beta2, .. } => {
                let t = step as f64;
                (1.0 - (beta1 as f64).powf(t), 1.0 - (beta2 as f64).powf(t))
            }
        }
    }
}
