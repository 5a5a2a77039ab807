//! Reference gate noise: the logit offset `ε ⊙ softplus(n)` of a noisy top-k gate and
//! its gradient `dn = dz ⊙ ε ⊙ sigmoid(n)`.

use super::check_len;
use crate::Result;
use crate::shape::NoiseShape;

/// `log(1 + exp(v))`, without overflow for large `v` and without rounding the small
/// values of very negative `v` to zero.
pub fn softplus(v: f64) -> f64 {
    v.max(0.0) + (-v.abs()).exp().ln_1p()
}

/// `1 / (1 + exp(−v))`, the derivative of [`softplus`].
pub fn sigmoid(v: f64) -> f64 {
    let e = (-v.abs()).exp();
    if v >= 0.0 {
        1.0 / (1.0 + e)
    } else {
        e / (1.0 + e)
    }
}

/// The offset `ε ⊙ softplus(n)`, `[gates, rows, experts]` like `n` and `eps`.
pub fn forward(shape: &NoiseShape, n: &[f64], eps: &[f64]) -> Result<Vec<f64>> {
    const CTX: &str = "reference noise forward";
    shape.validate(CTX)?;
    check_len(CTX, "n", n, shape.len())?;
    check_len(CTX, "eps", eps, shape.len())?;
    Ok(n.iter().zip(eps).map(|(&n, &e)| e * softplus(n)).collect())
}

/// The gradient of the noise logits, `dn = dz ⊙ ε ⊙ sigmoid(n)`, given the gradient
/// `dz` of the noisy logits.
pub fn backward(shape: &NoiseShape, n: &[f64], eps: &[f64], dz: &[f64]) -> Result<Vec<f64>> {
    const CTX: &str = "reference noise backward";
    shape.validate(CTX)?;
    check_len(CTX, "n", n, shape.len())?;
    check_len(CTX, "eps", eps, shape.len())?;
    check_len(CTX, "dz", dz, shape.len())?;
    Ok(n.iter()
        .zip(eps)
        .zip(dz)
        .map(|((&n, &e), &dz)| dz * e * sigmoid(n))
        .collect())
}
