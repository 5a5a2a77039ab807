//! Reference grouped GEMM: forward `Y_g = act(X_g · W_g + b_g)` and backward, dense
//! and ragged (each group on the rows a row map routes to it).

use super::check_len;
use super::routing::routed_rows;
use crate::Result;
use crate::shape::{Activation, GemmShape, InputLayout};

/// Where group `g`'s reads of `X` start (row 0 of its block, its first column), and
/// the row length of `X`; it reads `shape.x_window(g).1` columns of each row.
fn x_offset(shape: &GemmShape, g: usize) -> usize {
    let block = match shape.input {
        InputLayout::Shared | InputLayout::Columns(_) => 0,
        InputLayout::PerGroup | InputLayout::Level { .. } => shape.x_block(g),
    };
    block * shape.rows * shape.x_columns() + shape.x_window(g).0
}

/// `Y: [groups, rows, outputs]`.
pub fn forward(
    shape: &GemmShape,
    activation: Activation,
    x: &[f64],
    w: &[f64],
    bias: Option<&[f64]>,
) -> Result<Vec<f64>> {
    const CTX: &str = "reference grouped_gemm forward";
    shape.validate(CTX)?;
    check_len(CTX, "x", x, shape.x_len())?;
    check_len(CTX, "w", w, shape.w_len())?;
    if let Some(b) = bias {
        check_len(CTX, "bias", b, shape.b_len())?;
    }
    let &GemmShape {
        groups,
        rows,
        inputs: d,
        outputs: n,
        ..
    } = shape;
    let xc = shape.x_columns();
    let mut y = vec![0.0; shape.y_len()];
    for g in 0..groups {
        let xg = &x[x_offset(shape, g)..];
        let wg = &w[g * d * n..(g + 1) * d * n];
        let width = shape.x_window(g).1;
        for r in 0..rows {
            for c in 0..n {
                let mut acc = 0.0;
                for k in 0..width {
                    acc += xg[r * xc + k] * wg[k * n + c];
                }
                if let Some(b) = bias {
                    acc += b[g * n + c];
                }
                y[(g * rows + r) * n + c] = apply(activation, acc);
            }
        }
    }
    Ok(y)
}

/// Gradients of a grouped GEMM.
#[derive(Clone, Debug, PartialEq)]
pub struct GemmGrads {
    /// `dX`, shaped like `X` (summed over groups when `X` is shared).
    pub dx: Vec<f64>,
    /// `dW: [groups, inputs, outputs]`.
    pub dw: Vec<f64>,
    /// `db: [groups, outputs]`.
    pub db: Vec<f64>,
}

/// Gradients given the forward output `y` and the output gradient `dy`; the
/// activation's derivative is taken at `y` (`relu'(z) = 1` where `y > 0`).
pub fn backward(
    shape: &GemmShape,
    activation: Activation,
    x: &[f64],
    w: &[f64],
    y: &[f64],
    dy: &[f64],
) -> Result<GemmGrads> {
    const CTX: &str = "reference grouped_gemm backward";
    shape.validate(CTX)?;
    check_len(CTX, "x", x, shape.x_len())?;
    check_len(CTX, "w", w, shape.w_len())?;
    check_len(CTX, "y", y, shape.y_len())?;
    check_len(CTX, "dy", dy, shape.y_len())?;
    let &GemmShape {
        groups,
        rows,
        inputs: d,
        outputs: n,
        ..
    } = shape;
    let dz: Vec<f64> = dy
        .iter()
        .zip(y)
        .map(|(&g, &v)| g * derivative(activation, v))
        .collect();
    let mut grads = GemmGrads {
        dx: vec![0.0; shape.x_len()],
        dw: vec![0.0; shape.w_len()],
        db: vec![0.0; shape.b_len()],
    };
    let xc = shape.x_columns();
    for g in 0..groups {
        let xo = x_offset(shape, g);
        let wg = &w[g * d * n..(g + 1) * d * n];
        let dzg = &dz[g * rows * n..(g + 1) * rows * n];
        let width = shape.x_window(g).1;
        for r in 0..rows {
            for c in 0..n {
                let v = dzg[r * n + c];
                grads.db[g * n + c] += v;
                for k in 0..width {
                    grads.dw[(g * d + k) * n + c] += x[xo + r * xc + k] * v;
                    grads.dx[xo + r * xc + k] += v * wg[k * n + c];
                }
            }
        }
    }
    Ok(grads)
}

/// The ragged forward pass: `Y_g[r] = act(X_g[r] · W_g + b_g)` for the rows `r` the
/// row map `routes` (layout in [`RowMap`](crate::kernels::grouped_gemm::RowMap))
/// routes to group `g`, and `Y_g[r] = 0` for the others.
pub fn forward_ragged(
    shape: &GemmShape,
    activation: Activation,
    x: &[f64],
    w: &[f64],
    bias: Option<&[f64]>,
    routes: &[u32],
) -> Result<Vec<f64>> {
    let dense = forward(shape, activation, x, w, bias)?;
    let routed = routed_rows(routes, shape.groups, shape.rows)?;
    let n = shape.outputs;
    let mut y = vec![0.0; shape.y_len()];
    for (g, rows) in routed.iter().enumerate() {
        for &r in rows.iter() {
            let at = (g * shape.rows + r as usize) * n;
            y[at..at + n].copy_from_slice(&dense[at..at + n]);
        }
    }
    Ok(y)
}

/// Gradients of [`forward_ragged`] given its output `y` and the output gradient `dy`:
/// the dense gradients with `dY` taken as zero on every unrouted row (`Y` does not
/// depend on the inputs there). `dX` is what the dense input gradient gives on such
/// a `dY`; `dW` and `db` what the ragged weight gradients sum over the routed rows.
pub fn backward_ragged(
    shape: &GemmShape,
    activation: Activation,
    x: &[f64],
    w: &[f64],
    y: &[f64],
    dy: &[f64],
    routes: &[u32],
) -> Result<GemmGrads> {
    const CTX: &str = "reference grouped_gemm backward_ragged";
    check_len(CTX, "dy", dy, shape.y_len())?;
    let routed = routed_rows(routes, shape.groups, shape.rows)?;
    let n = shape.outputs;
    let mut masked = vec![0.0; shape.y_len()];
    for (g, rows) in routed.iter().enumerate() {
        for &r in rows.iter() {
            let at = (g * shape.rows + r as usize) * n;
            masked[at..at + n].copy_from_slice(&dy[at..at + n]);
        }
    }
    backward(shape, activation, x, w, y, &masked)
}

/// The input gradient of [`forward_ragged`] given its output `y` and the output
/// gradient `dy`, as [`GroupedGemm::backward_input_ragged`] computes it, over the routed
/// rows only, with `dZ = dY ⊙ act'(Y)`:
///
/// - per-group `X`: `dX_g[r] = dZ_g[r] · W_gᵀ` for the rows `r` routed to group `g`,
///   0 for the others;
/// - shared `X`: `dX[r] = Σ_g dZ_g[r] · W_gᵀ` over the groups `g` that `r` is routed
///   to, 0 for a row routed nowhere.
///
/// `dY` on the unrouted rows is never read (`Y` does not depend on `X` there). It is
/// [`backward_ragged`]'s `dX`, computed row by row instead of on a masked `dY`.
///
/// [`GroupedGemm::backward_input_ragged`]: crate::kernels::grouped_gemm::GroupedGemm::backward_input_ragged
pub fn backward_input_ragged(
    shape: &GemmShape,
    activation: Activation,
    w: &[f64],
    y: &[f64],
    dy: &[f64],
    routes: &[u32],
) -> Result<Vec<f64>> {
    const CTX: &str = "reference grouped_gemm backward_input_ragged";
    shape.validate(CTX)?;
    check_len(CTX, "w", w, shape.w_len())?;
    check_len(CTX, "y", y, shape.y_len())?;
    check_len(CTX, "dy", dy, shape.y_len())?;
    let routed = routed_rows(routes, shape.groups, shape.rows)?;
    let &GemmShape {
        rows,
        inputs: d,
        outputs: n,
        ..
    } = shape;
    let xc = shape.x_columns();
    let mut dx = vec![0.0; shape.x_len()];
    for (g, routed) in routed.iter().enumerate() {
        let wg = &w[g * d * n..(g + 1) * d * n];
        let width = shape.x_window(g).1;
        for &r in routed.iter() {
            let r = r as usize;
            let at = (g * rows + r) * n;
            let out = &mut dx[x_offset(shape, g) + r * xc..][..width];
            for c in 0..n {
                let dz = dy[at + c] * derivative(activation, y[at + c]);
                for (k, o) in out.iter_mut().enumerate() {
                    *o += dz * wg[k * n + c];
                }
            }
        }
    }
    Ok(dx)
}

/// The activation function.
pub fn apply(activation: Activation, z: f64) -> f64 {
    match activation {
        Activation::Identity => z,
        Activation::Relu => z.max(0.0),
    }
}

/// The activation's derivative, as a function of its output.
pub fn derivative(activation: Activation, y: f64) -> f64 {
    match activation {
        Activation::Identity => 1.0,
        Activation::Relu => {
            if y > 0.0 {
                1.0
            } else {
                0.0
            }
        }
    }
}
