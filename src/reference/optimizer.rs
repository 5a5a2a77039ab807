//! Reference optimizer step (SGD with momentum, Adam, AdamW) in `f64`.

use crate::shape::OptimizerConfig;
use crate::{Error, Result};

/// One step `step` (1-based) with learning rate `lr`, updating `params`, `m` and,
/// for Adam and AdamW, `v` in place. Hyperparameters are taken from `optimizer`
/// (converted to `f64`); the bias corrections are `1 − β^step`.
pub fn step(
    optimizer: OptimizerConfig,
    step: u32,
    lr: f64,
    params: &mut [f64],
    grads: &[f64],
    m: &mut [f64],
    v: Option<&mut [f64]>,
) -> Result<()> {
    const CTX: &str = "reference optimizer";
    optimizer.validate()?;
    if step == 0 {
        return Err(Error::invalid("optimizer step", "steps count from 1"));
    }
    let n = params.len();
    let check = |name: &str, len: usize| {
        if len == n {
            Ok(())
        } else {
            Err(Error::shape(
                CTX,
                name,
                format!("{n} values (as many as params)"),
                format!("{len} values"),
            ))
        }
    };
    check("grads", grads.len())?;
    check("m", m.len())?;
    match optimizer {
        OptimizerConfig::Sgd { momentum } => {
            let mu = momentum as f64;
            for i in 0..n {
                m[i] = mu * m[i] + grads[i];
                params[i] -= lr * m[i];
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
            let v = v.ok_or_else(|| {
                Error::shape(
                    CTX,
                    "v",
                    format!("a second moment (needed by {optimizer:?})"),
                    "none",
                )
            })?;
            check("v", v.len())?;
            let decoupled = matches!(optimizer, OptimizerConfig::AdamW { .. });
            let (b1, b2, eps, wd) = (beta1 as f64, beta2 as f64, eps as f64, weight_decay as f64);
            let (bc1, bc2) = optimizer.bias_corrections(step);
            for i in 0..n {
                let mut g = grads[i];
                if !decoupled {
                    g += wd * params[i];
                }
                m[i] = b1 * m[i] + (1.0 - b1) * g;
                v[i] = b2 * v[i] + (1.0 - b2) * g * g;
                if decoupled {
                    params[i] -= lr * wd * params[i];
                }
                params[i] -= lr * (m[i] / bc1) / ((v[i] / bc2).sqrt() + eps);
            }
        }
    }
    Ok(())
}
