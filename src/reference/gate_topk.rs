//! Reference top-k gate + mix: per gate `t` and row, the softmax of the `k` largest
//! logits of `X · Wg_t + bg_t` (zero weight for the other experts),
//! `M_t = Σ_e G_t[:, e] ⊙ H_e`, and the backward pass, in which only the selected
//! logits get a gradient. [`logits`] and [`forward_logits`] split the forward so a
//! noisy gate can add its noise to the logits in between.

use super::check_len;
use crate::Result;
use crate::shape::{ExpertAccess, GateMixShape, Selection, check_k, check_selection};

/// The indices of the `k` largest `values` (all of them if there are fewer), largest
/// first; equal values (0 and −0 among them) in order of index, so the selection is
/// deterministic. NaN ranks above every number, so it is never silently dropped.
pub fn top_k(values: &[f64], k: usize) -> Vec<usize> {
    // total_cmp is a total order (sorting with partial_cmp may panic on NaN) that
    // would put −0 below 0; the kernel treats them as equal.
    let key = |v: f64| if v == 0.0 { 0.0 } else { v };
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| key(values[b]).total_cmp(&key(values[a])).then(a.cmp(&b)));
    order.truncate(k);
    order
}

/// `(G: [gates, rows, experts], M: [gates, rows, width])` of the top-`k` gate.
pub fn forward(
    shape: &GateMixShape,
    k: usize,
    x: &[f64],
    wg: &[f64],
    bg: &[f64],
    h: &[f64],
) -> Result<(Vec<f64>, Vec<f64>)> {
    forward_with_access(shape, k, ExpertAccess::All, x, wg, bg, h)
}

/// [`forward`] where each gate weighs only the experts `access` lets it see.
pub fn forward_with_access(
    shape: &GateMixShape,
    k: usize,
    access: ExpertAccess,
    x: &[f64],
    wg: &[f64],
    bg: &[f64],
    h: &[f64],
) -> Result<(Vec<f64>, Vec<f64>)> {
    const CTX: &str = "reference gate_topk forward";
    shape.validate(CTX)?;
    access.validate(CTX, shape)?;
    check_k(CTX, shape, k, access)?;
    check_len(CTX, "x", x, shape.x_len())?;
    check_len(CTX, "wg", wg, shape.wg_len())?;
    check_len(CTX, "bg", bg, shape.bg_len())?;
    check_len(CTX, "h", h, shape.h_len())?;
    let z = logits(shape, x, wg, bg)?;
    forward_logits(shape, k, access, &z, h)
}

/// The logits `X · Wg_t + bg_t` of every gate, `[gates, rows, experts]`.
pub fn logits(shape: &GateMixShape, x: &[f64], wg: &[f64], bg: &[f64]) -> Result<Vec<f64>> {
    const CTX: &str = "reference gate_topk logits";
    shape.validate(CTX)?;
    check_len(CTX, "x", x, shape.x_len())?;
    check_len(CTX, "wg", wg, shape.wg_len())?;
    check_len(CTX, "bg", bg, shape.bg_len())?;
    let &GateMixShape {
        gates,
        experts: n,
        rows,
        inputs: d,
        ..
    } = shape;
    let mut z = vec![0.0; shape.g_len()];
    for t in 0..gates {
        for b in 0..rows {
            for e in 0..n {
                let mut acc = bg[t * n + e];
                for i in 0..d {
                    acc += x[shape.x_offset(t) + b * d + i] * wg[(t * d + i) * n + e];
                }
                z[(t * rows + b) * n + e] = acc;
            }
        }
    }
    Ok(z)
}

/// `(G, M)` of the top-`k` gate given its logits `z: [gates, rows, experts]` (a
/// noisy gate's logits with their noise added).
pub fn forward_logits(
    shape: &GateMixShape,
    k: usize,
    access: ExpertAccess,
    z: &[f64],
    h: &[f64],
) -> Result<(Vec<f64>, Vec<f64>)> {
    forward_logits_selecting(shape, k, access, Selection::PerGate, z, h)
}

/// [`forward_logits`] with the gates selecting their experts as `selection` says.
pub fn forward_logits_selecting(
    shape: &GateMixShape,
    k: usize,
    access: ExpertAccess,
    selection: Selection,
    z: &[f64],
    h: &[f64],
) -> Result<(Vec<f64>, Vec<f64>)> {
    const CTX: &str = "reference gate_topk forward";
    shape.validate(CTX)?;
    access.validate(CTX, shape)?;
    check_k(CTX, shape, k, access)?;
    check_selection(CTX, shape, access, selection)?;
    check_len(CTX, "z", z, shape.g_len())?;
    check_len(CTX, "h", h, shape.h_len())?;
    let &GateMixShape {
        gates,
        experts: n,
        rows,
        width: w,
        ..
    } = shape;
    let mut g = vec![0.0; shape.g_len()];
    let mut m = vec![0.0; shape.m_len()];
    for b in 0..rows {
        let logit = |t: usize, e: usize| z[(t * rows + b) * n + e];
        // A shared selection ranks the logits summed over the gates, once per row.
        let shared = (selection == Selection::Shared).then(|| {
            let sums: Vec<f64> = (0..n)
                .map(|e| (0..gates).map(|t| logit(t, e)).sum())
                .collect();
            top_k(&sums, k)
        });
        for t in 0..gates {
            let row = (t * rows + b) * n;
            let own: Vec<usize>;
            let selected = match &shared {
                Some(shared) => shared,
                None => {
                    let seen: Vec<usize> = (0..n).filter(|&e| access.sees(t, e)).collect();
                    let seen_z: Vec<f64> = seen.iter().map(|&e| logit(t, e)).collect();
                    let k = access.gate_k(shape, t, k);
                    own = top_k(&seen_z, k).into_iter().map(|i| seen[i]).collect();
                    &own
                }
            };
            let z = &z[row..row + n];
            // The largest selected logit: the first pick of a gate's own selection,
            // not necessarily of a shared one.
            let top = selected
                .iter()
                .map(|&e| z[e])
                .fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = selected.iter().map(|&e| (z[e] - top).exp()).sum();
            for &e in selected {
                let p = (z[e] - top).exp() / sum;
                g[row + e] = p;
                for j in 0..w {
                    m[(t * rows + b) * w + j] += p * h[(e * rows + b) * w + j];
                }
            }
        }
    }
    Ok((g, m))
}

/// The full softmax `p: [gates, rows, experts]` of the logits `z` over the experts
/// each gate sees (0 for the others), before any top-k cut: what the load-balancing
/// loss's load kind averages (see [`crate::kernels::balance`]).
pub fn full_softmax(shape: &GateMixShape, access: ExpertAccess, z: &[f64]) -> Result<Vec<f64>> {
    const CTX: &str = "reference gate_topk full softmax";
    shape.validate(CTX)?;
    access.validate(CTX, shape)?;
    check_len(CTX, "z", z, shape.g_len())?;
    let n = shape.experts;
    let mut p = vec![0.0; shape.g_len()];
    for (r, (z, p)) in z.chunks(n).zip(p.chunks_mut(n)).enumerate() {
        let t = r / shape.rows;
        let seen = |e: &usize| access.sees(t, *e);
        let top = (0..n)
            .filter(seen)
            .map(|e| z[e])
            .fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = (0..n).filter(seen).map(|e| (z[e] - top).exp()).sum();
        for e in (0..n).filter(seen) {
            p[e] = (z[e] - top).exp() / sum;
        }
    }
    Ok(p)
}

/// Gradients of a top-k gate + mix.
#[derive(Clone, Debug, PartialEq)]
pub struct GateTopkGrads {
    /// `dH: [experts, rows, width]`, zero for the rows that did not select an expert.
    pub dh: Vec<f64>,
    /// `dz: [gates, rows, experts]`, the gradient of the logits, zero outside each
    /// row's selection.
    pub dz: Vec<f64>,
    /// `dWg: [gates, inputs, experts]`.
    pub dwg: Vec<f64>,
    /// `dbg: [gates, experts]`.
    pub dbg: Vec<f64>,
    /// `dX`, shaped like `X` (summed over the gates when they share it).
    pub dx: Vec<f64>,
}

/// Gradients given the forward's `g` and the output gradient `dm`. The selection is
/// where `g` is nonzero: a selected expert whose weight underflowed to zero would get
/// a zero gradient anyway (`dz_e = g_e · (…)`).
pub fn backward(
    shape: &GateMixShape,
    x: &[f64],
    wg: &[f64],
    h: &[f64],
    g: &[f64],
    dm: &[f64],
) -> Result<GateTopkGrads> {
    const CTX: &str = "reference gate_topk backward";
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
    let mut grads = GateTopkGrads {
        dh: vec![0.0; shape.h_len()],
        dz: vec![0.0; shape.g_len()],
        dwg: vec![0.0; shape.wg_len()],
        dbg: vec![0.0; shape.bg_len()],
        dx: vec![0.0; shape.x_len()],
    };
    let mut dg = vec![0.0; n];
    for t in 0..gates {
        for b in 0..rows {
            let row = (t * rows + b) * n;
            let dmi = (t * rows + b) * w;
            let selected: Vec<usize> = (0..n).filter(|&e| g[row + e] != 0.0).collect();
            for &e in &selected {
                let hi = (e * rows + b) * w;
                dg[e] = (0..w).map(|j| dm[dmi + j] * h[hi + j]).sum();
                for j in 0..w {
                    grads.dh[hi + j] += g[row + e] * dm[dmi + j];
                }
            }
            // The softmax over the selection alone: its Jacobian never reaches the
            // other logits.
            let s: f64 = selected.iter().map(|&e| g[row + e] * dg[e]).sum();
            for &e in &selected {
                let dz = g[row + e] * (dg[e] - s);
                grads.dz[row + e] = dz;
                grads.dbg[t * n + e] += dz;
                for i in 0..d {
                    let xi = shape.x_offset(t) + b * d + i;
                    grads.dwg[(t * d + i) * n + e] += x[xi] * dz;
                    grads.dx[xi] += dz * wg[(t * d + i) * n + e];
                }
            }
        }
    }
    Ok(grads)
}
