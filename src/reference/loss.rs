//! Reference loss: per-task weighted mean of MSE, binary cross-entropy on logits or
//! ESMM's product-of-probabilities loss, and its gradient with respect to the
//! predictions.

use super::check_len;
use crate::shape::{LossKind, check_pairs};
use crate::{Error, Result};

/// `(loss, grad)` for tasks `(kind, λ_t)` over predictions and targets `[T, rows]`
/// (task-major): `loss[t] = λ_t · mean_b ℓ_t`, `grad = ∂ Σ_t loss[t] / ∂ predictions`.
/// For a task of its own that is `grad[t, b] = λ_t / rows · ℓ_t'`; an ESMM pair's
/// CTCVR loss (counted on its CVR task) also adds its derivative with respect to
/// the CTR logit into the CTR task's row (see [`LossKind::EsmmCtcvr`]).
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
    let kinds: Vec<LossKind> = tasks.iter().map(|t| t.0).collect();
    check_pairs(CTX, &kinds)?;
    let len = tasks.len() * rows;
    check_len(CTX, "predictions", predictions, len)?;
    check_len(CTX, "targets", targets, len)?;
    let at = |t: usize, b: usize| t * rows + b;
    let mut loss = vec![0.0; tasks.len()];
    let mut grad = vec![0.0; len];
    for (t, &(kind, weight)) in tasks.iter().enumerate() {
        let scale = weight / rows as f64;
        let mut sum = 0.0;
        for b in 0..rows {
            let (p, y) = (predictions[at(t, b)], targets[at(t, b)]);
            let (l, d) = match kind {
                LossKind::MeanSquaredError | LossKind::BinaryCrossEntropy => {
                    let (l, d) = loss_and_derivative(kind, p, y);
                    (l, scale * d)
                }
                LossKind::EsmmCtr { cvr } => {
                    let (l, d) = loss_and_derivative(LossKind::BinaryCrossEntropy, p, y);
                    let (b_logit, y_v) = (predictions[at(cvr, b)], targets[at(cvr, b)]);
                    let (_, da, _) = ctcvr_loss_and_derivatives(p, b_logit, y * y_v);
                    (l, scale * d + tasks[cvr].1 / rows as f64 * da)
                }
                LossKind::EsmmCtcvr { ctr } => {
                    let (a_logit, y_c) = (predictions[at(ctr, b)], targets[at(ctr, b)]);
                    let (l, _, db) = ctcvr_loss_and_derivatives(a_logit, p, y_c * y);
                    (l, scale * db)
                }
            };
            sum += l;
            grad[at(t, b)] = d;
        }
        loss[t] = weight * sum / rows as f64;
    }
    Ok((loss, grad))
}

/// `(ℓ, ℓ')` of prediction `p` against target `y`, for the kinds of a task of its
/// own (an ESMM kind is taken as binary cross-entropy on `p`).
///
/// The cross-entropy's `ℓ' = sigmoid(p) − y` is taken as `(1 − y) − sigmoid(−p)`
/// for `p ≥ 0`: `sigmoid(p) − 1` would cancel to nothing as `sigmoid(p)` rounds
/// towards 1 (at `p = 40` it gives 0, not `−4.2e-18`).
pub fn loss_and_derivative(kind: LossKind, p: f64, y: f64) -> (f64, f64) {
    match kind {
        LossKind::MeanSquaredError => ((p - y) * (p - y), 2.0 * (p - y)),
        _ => {
            let d = if p >= 0.0 {
                (1.0 - y) - sigmoid(-p)
            } else {
                sigmoid(p) - y
            };
            (p.max(0.0) - p * y + (-p.abs()).exp().ln_1p(), d)
        }
    }
}

/// ESMM's CTCVR loss `ℓ = −y·log p − (1 − y)·log(1 − p)` of `p = sigmoid(a) ·
/// sigmoid(b)` against `y`, and its derivatives with respect to the logits `a` and
/// `b`: `(ℓ, ∂ℓ/∂a, ∂ℓ/∂b)`. The product is never formed:
///
/// - `log p = −softplus(−a) − softplus(−b)`, a sum of two terms of one sign;
/// - `log(1 − p)`: where `p < 1/2`, `log1p(−exp(log p))`; otherwise (both logits
///   positive) `log(sigmoid(−a) + sigmoid(a)·sigmoid(−b))` as a log-sum-exp of
///   `−softplus(a)` and `−softplus(−a) − softplus(b)`, two positive terms, since
///   `1 − p` is then what `1 − exp(log p)` would lose to cancellation;
/// - `∂ℓ/∂a = −y·sigmoid(−a) + (1 − y)·exp(−softplus(a) + log p − log(1 − p))`, the
///   second term being `sigmoid(−a)·p/(1 − p)` with an exponent ≤ 0; the same with
///   `b` for `∂ℓ/∂b`.
pub fn ctcvr_loss_and_derivatives(a: f64, b: f64, y: f64) -> (f64, f64, f64) {
    let log_p = -softplus(-a) - softplus(-b);
    let log_q = if log_p < -std::f64::consts::LN_2 {
        (-log_p.exp()).ln_1p()
    } else {
        log_sum_exp(-softplus(a), -softplus(-a) - softplus(b))
    };
    let l = -y * log_p - (1.0 - y) * log_q;
    let odds = log_p - log_q;
    let da = -y * sigmoid(-a) + (1.0 - y) * (-softplus(a) + odds).exp();
    let db = -y * sigmoid(-b) + (1.0 - y) * (-softplus(b) + odds).exp();
    (l, da, db)
}

/// `log(1 + e^x)` without overflow, accurate for large negative `x`.
fn softplus(x: f64) -> f64 {
    x.max(0.0) + (-x.abs()).exp().ln_1p()
}

/// `1 / (1 + e^−x)`, accurate in both tails.
fn sigmoid(x: f64) -> f64 {
    let e = (-x.abs()).exp();
    if x >= 0.0 {
        1.0 / (1.0 + e)
    } else {
        e / (1.0 + e)
    }
}

/// `log(e^u + e^v)`.
fn log_sum_exp(u: f64, v: f64) -> f64 {
    let (hi, lo) = if u >= v { (u, v) } else { (v, u) };
    hi + (lo - hi).exp().ln_1p()
}
