//! Reference gate + mix: `G_t = softmax(X · Wg_t + bg_t)`, `M_t = Σ_e G_t[:, e] ⊙ H_e`,
//! and its backward pass.

use super::check_len;
use crate::Result;
use crate::shape::GateMixShape;

/// `(G: [gates, rows, experts], M: [gates, rows, width])`.
pub fn forward(
    shape: &GateMixShape,
    x: &[f64],
    wg: &[f64],
    bg: &[f64],
    h: &[f64],
) -> Result<(Vec<f64>, Vec<f64>)> {
    const CTX: &str = "reference gate_mix forward";
    shape.validate(CTX)?;
    check_len(CTX, "x", x, shape.x_len())?;
    check_len(CTX, "wg", wg, shape.wg_len())?;
    check_len(CTX, "bg", bg, shape.bg_len())?;
    check_len(CTX, "h", h, shape.h_len())?;
    let &GateMixShape {
        gates,
        experts: n,
        rows,
        width: w,
        ..
    } = shape;
    // The logits as the top-k gate computes them; the softmax and mix are this
    // reference's own.
    let mut g = super::gate_topk::logits(shape, x, wg, bg)?;
    let mut m = vec![0.0; shape.m_len()];
    for t in 0..gates {
        for b in 0..rows {
            let row = &mut g[(t * rows + b) * n..(t * rows + b + 1) * n];
            let top = row.iter().fold(f64::NEG_INFINITY, |a, &z| a.max(z));
            let mut sum = 0.0;
            for z in row.iter_mut() {
                *z = (*z - top).exp();
                sum += *z;
            }
            for z in row.iter_mut() {
                *z /= sum;
            }
            for (e, &p) in row.iter().enumerate() {
                for j in 0..w {
                    m[(t * rows + b) * w + j] += p * h[(e * rows + b) * w + j];
                }
            }
        }
    }
    Ok((g, m))
}

/// Gradients of a gate + mix.
#[derive(Clone, Debug, PartialEq)]
pub struct GateMixGrads {
    /// `dH: [experts, rows, width]`.
    pub dh: Vec<f64>,
    /// `dWg: [gates, inputs, experts]`.
    pub dwg: Vec<f64>,
    /// `dbg: [gates, experts]`.
    pub dbg: Vec<f64>,
    /// `dX`, shaped like `X` (summed over the gates when they share it).
    pub dx: Vec<f64>,
}

/// Gradients given the forward's `g` and the output gradient `dm`.
pub fn backward(
    shape: &GateMixShape,
    x: &[f64],
    wg: &[f64],
    h: &[f64],
    g: &[f64],
    dm: &[f64],
) -> Result<GateMixGrads> {
    const CTX: &str = "reference gate_mix backward";
    shape.validate(CTX)?;
    check_len(CTX, "x", x, shape.x_len())?;
    check_len(CTX, "wg", wg, shape.wg_len())?;
    check_len(CTX, "h", h, shape.h_len())?;
    check_len(CTX, "g", g, shape.g_len())?;
    check_len(CTX, "dm", dm, shape.m_len())?;
    let &GateMixShape {
        gates,
        experts: n,
        rows,
        inputs: d,
        width: w,
        ..
    } = shape;
    let mut grads = GateMixGrads {
        dh: vec![0.0; shape.h_len()],
        dwg: vec![0.0; shape.wg_len()],
        dbg: vec![0.0; shape.bg_len()],
        dx: vec![0.0; shape.x_len()],
    };
    let mut dg = vec![0.0; n];
    for t in 0..gates {
        for b in 0..rows {
            let gi = (t * rows + b) * n;
            let dmi = (t * rows + b) * w;
            for e in 0..n {
                let hi = (e * rows + b) * w;
                dg[e] = 0.0;
                for j in 0..w {
                    dg[e] += dm[dmi + j] * h[hi + j];
                    grads.dh[hi + j] += g[gi + e] * dm[dmi + j];
                }
            }
            let s: f64 = (0..n).map(|e| g[gi + e] * dg[e]).sum();
            for e in 0..n {
                let dz = g[gi + e] * (dg[e] - s);
                grads.dbg[t * n + e] += dz;
                for k in 0..d {
                    let xk = shape.x_offset(t) + b * d + k;
                    grads.dwg[(t * d + k) * n + e] += x[xk] * dz;
                    grads.dx[xk] += dz * wg[(t * d + k) * n + e];
                }
            }
        }
    }
    Ok(grads)
}
