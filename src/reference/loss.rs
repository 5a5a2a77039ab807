//! Reference loss: per-task weighted mean of MSE or binary cross-entropy on logits,
//! and its gradient with respect to the predictions.

use super::check_len;
use crate::shape::LossKind;
use crate::{Error, Result};

/// `(loss, grad)` for tasks `(kind, λ_t)` over predictions and targets `[T, rows]`
/// (task-major): `loss[t] = λ_t · mean_b ℓ`, `grad[t, b] = λ_t / rows · ℓ'`.
pub fn forward(
    tasks: &[(LossKind, f64)],
    rows: usize,
    predictions: &[f64],
    targets: &[f64],
) -> Result<(Vec<f64>, Vec<f64>)> {
    const CTX: &str = "reference loss";
    if tasks.is_empty() {
        return Err(Error::shape(CTX, "tasks", "at least 1 task", "0 tasks"));
    }
    if rows == 0 {
        return Err(Error::shape(CTX, "rows", "at least 1", "0"));
    }
    let len = tasks.len() * rows;
    check_len(CTX, "predictions", predictions, len)?;
    check_len(CTX, "targets", targets, len)?;
    let mut loss = vec![0.0; tasks.len()];
    let mut grad = vec![0.0; len];
    for (t, &(kind, weight)) in tasks.iter().enumerate() {
        let mut sum = 0.0;
        for b in 0..rows {
            let i = t * rows + b;
            let (l, d) = loss_and_derivative(kind, predictions[i], targets[i]);
            sum += l;
            grad[i] = weight / rows as f64 * d;
        }
        loss[t] = weight * sum / rows as f64;
    }
    Ok((loss, grad))
}

/// `(ℓ, ℓ')` of prediction `p` against target `y`.
pub fn loss_and_derivative(kind: LossKind, p: f64, y: f64) -> (f64, f64) {
    match kind {
        LossKind::MeanSquaredError => ((p - y) * (p - y), 2.0 * (p - y)),
        LossKind::BinaryCrossEntropy => {
            let e = (-p.abs()).exp();
            let sigmoid = if p >= 0.0 {
                1.0 / (1.0 + e)
            } else {
                e / (1.0 + e)
            };
            (p.max(0.0) - p * y + e.ln_1p(), sigmoid - y)
        }
    }
}
