//! Reference load-balancing loss: per gate `t`, importance `I[t, e] = Σ_b G[t, b, e]`,
//! load `L[t, e] = #{b : G[t, b, e] ≠ 0}`, `aux[t] = w · CV²(I[t, :])` with the
//! population variance, the coefficients `a = w · ∂CV²/∂I`, and the loss's share of the
//! logit gradient `dz`; and the Switch / GShard load loss ([`forward_load`]), whose
//! backward is [`backward`] with the full softmax `p` in place of `G`.

use super::check_len;
use crate::Result;
use crate::shape::{BalanceShape, BalanceStats, check_weight};

/// Importance, load, coefficients and loss of every gate for the gate values
/// `g: [gates, rows, experts]` and the weight `w` (finite, ≥ 0). A zero mean
/// importance, or `w = 0`, gives a zero loss and zero coefficients.
pub fn forward(shape: &BalanceShape, weight: f64, g: &[f64]) -> Result<BalanceStats<f64>> {
    const CTX: &str = "reference balance forward";
    shape.validate(CTX)?;
    check_len(CTX, "g", g, shape.g_len())?;
    check_weight(CTX, weight)?;
    let (gates, n) = (shape.gates, shape.experts);
    let mut stats = sums(shape, g, g);
    for t in 0..gates {
        let importance = &stats.importance[t * n..(t + 1) * n];
        let mean = importance.iter().sum::<f64>() / n as f64;
        if weight == 0.0 || mean * mean == 0.0 {
            continue;
        }
        let var = importance.iter().map(|i| (i - mean).powi(2)).sum::<f64>() / n as f64;
        let cv2 = var / (mean * mean);
        stats.aux[t] = weight * cv2;
        // Σ_e (I_e − μ) = 0, so ∂var/∂I_e = (2/E)(I_e − μ); with ∂μ/∂I_e = 1/E,
        // ∂(var/μ²)/∂I_e = 2/(E·μ) · ((I_e − μ)/μ − var/μ²).
        let scale = 2.0 * weight / (n as f64 * mean);
        let coefficients = &mut stats.coefficients[t * n..(t + 1) * n];
        for (a, i) in coefficients.iter_mut().zip(importance) {
            *a = scale * ((i - mean) / mean - cv2);
        }
    }
    Ok(stats)
}

/// The load loss of every gate (see [`crate::kernels::balance`]'s module docs):
/// the importance section holds `Σ_b p[t, b, e]`, the load `L[t, e] = #{b : G ≠ 0}`,
/// the coefficients `a[t, e] = w · seen · L[t, e] / (k · rows²)` and the loss
/// `aux[t] = Σ_e a[t, e] · Σ_b p[t, b, e] = w · seen · Σ_e f · P`. `g` are the top-k gate
/// values, `p` the full softmax over the `seen` experts each gate sees.
pub fn forward_load(
    shape: &BalanceShape,
    weight: f64,
    k: usize,
    seen: usize,
    g: &[f64],
    p: &[f64],
) -> Result<BalanceStats<f64>> {
    const CTX: &str = "reference balance load forward";
    shape.validate(CTX)?;
    check_len(CTX, "g", g, shape.g_len())?;
    check_len(CTX, "p", p, shape.g_len())?;
    check_weight(CTX, weight)?;
    crate::shape::check_load_k(CTX, shape, k, seen)?;
    let &BalanceShape {
        gates,
        rows,
        experts: n,
    } = shape;
    let mut stats = sums(shape, g, p);
    for t in 0..gates {
        if weight == 0.0 {
            continue;
        }
        let b = rows as f64;
        for e in 0..n {
            let f = stats.load[t * n + e] / (k as f64 * b);
            let a = weight * seen as f64 * f / b;
            stats.coefficients[t * n + e] = a;
            stats.aux[t] += a * stats.importance[t * n + e];
        }
    }
    Ok(stats)
}

/// Stats with the importance section `Σ_b summed[t, b, e]` and the load section
/// `#{b : g[t, b, e] ≠ 0}` filled in, rows in order; coefficients and losses zero.
fn sums(shape: &BalanceShape, g: &[f64], summed: &[f64]) -> BalanceStats<f64> {
    let &BalanceShape {
        gates,
        rows,
        experts: n,
    } = shape;
    let mut stats = BalanceStats {
        importance: vec![0.0; gates * n],
        load: vec![0.0; gates * n],
        coefficients: vec![0.0; gates * n],
        aux: vec![0.0; gates],
    };
    for t in 0..gates {
        for b in 0..rows {
            for e in 0..n {
                let i = (t * rows + b) * n + e;
                stats.importance[t * n + e] += summed[i];
                if g[i] != 0.0 {
                    stats.load[t * n + e] += 1.0;
                }
            }
        }
    }
    stats
}

/// Adds the loss's gradient to the logit gradient `dz: [gates, rows, experts]` in
/// place: `dz[t, b, e] += G[t, b, e] · (a[t, e] − Σ_e' G[t, b, e'] · a[t, e'])`, given
/// the forward's `coefficients` `a: [gates, experts]`.
pub fn backward(
    shape: &BalanceShape,
    g: &[f64],
    coefficients: &[f64],
    dz: &mut [f64],
) -> Result<()> {
    const CTX: &str = "reference balance backward";
    shape.validate(CTX)?;
    check_len(CTX, "g", g, shape.g_len())?;
    check_len(
        CTX,
        "coefficients",
        coefficients,
        shape.gates * shape.experts,
    )?;
    check_len(CTX, "dz", dz, shape.g_len())?;
    let n = shape.experts;
    for (r, (g, dz)) in g.chunks(n).zip(dz.chunks_mut(n)).enumerate() {
        let t = r / shape.rows;
        let a = &coefficients[t * n..(t + 1) * n];
        let s: f64 = g.iter().zip(a).map(|(g, a)| g * a).sum();
        for ((dz, g), a) in dz.iter_mut().zip(g).zip(a) {
            *dz += g * (a - s);
        }
    }
    Ok(())
}
