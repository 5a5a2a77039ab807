//! Reference embedding lookups, table gradients and sparse optimizer steps in `f64`.
//! The gradient is summed from the bags themselves, not from the batch's occurrence
//! lists the GPU backward pass reads, so that the two check each other. Semantics in
//! [`Pooling`](crate::shape::Pooling) and [`SparseOptimizer`].

use std::collections::BTreeMap;

use super::check_len;
use crate::shape::{EmbeddingBatch, EmbeddingShape, SparseOptimizer};
use crate::{Error, Result};

const CTX: &str = "reference embedding";

/// Checks `batch` belongs to `shape`'s field and has at most `shape.rows` rows.
fn check_batch(shape: &EmbeddingShape, batch: &EmbeddingBatch) -> Result<()> {
    shape.validate(CTX)?;
    if batch.field() != &shape.field || batch.rows() > shape.rows {
        return Err(Error::invalid(
            CTX,
            format!(
                "the batch ({} rows of {:?}) does not fit the shape ({} rows of {:?})",
                batch.rows(),
                batch.field(),
                shape.rows,
                shape.field
            ),
        ));
    }
    Ok(())
}

/// The coefficient of each ID of row `r`'s bag: its weight (or 1), divided by the
/// bag's size when the field pools by the mean; with the bag's positions.
fn bag(batch: &EmbeddingBatch, r: usize) -> impl Iterator<Item = (usize, f64)> + '_ {
    let o = batch.offsets();
    let (start, end) = (o[r] as usize, o[r + 1] as usize);
    let n = if batch.field().is_mean() {
        (end - start) as f64
    } else {
        1.0
    };
    (start..end).map(move |k| {
        let w = batch.weights().map_or(1.0, |w| w[k] as f64);
        (k, w / n)
    })
}

/// Writes each row's pooled embedding into the field's columns of `x: [rows, width]`
/// (rows past the batch's get zeros); the other columns are left as they are.
/// `table: [vocab, dim]`.
pub fn forward(
    shape: &EmbeddingShape,
    batch: &EmbeddingBatch,
    table: &[f64],
    x: &mut [f64],
) -> Result<()> {
    check_batch(shape, batch)?;
    check_len(CTX, "table", table, shape.table_len())?;
    check_len(CTX, "x", x, shape.x_len())?;
    let dim = shape.field.dim;
    for r in 0..shape.rows {
        let out = &mut x[r * shape.width + shape.column..][..dim];
        out.fill(0.0);
        if r >= batch.rows() {
            continue;
        }
        for (k, coefficient) in bag(batch, r) {
            let row = &table[batch.ids()[k] as usize * dim..][..dim];
            for (o, t) in out.iter_mut().zip(row) {
                *o += coefficient * t;
            }
        }
    }
    Ok(())
}

/// The gradient of the table from `dx: [rows, width]`, the gradient of the input
/// rows: the IDs the batch touches, ascending, and the gradient of each one's table
/// row, `[ids, dim]`.
pub fn backward(
    shape: &EmbeddingShape,
    batch: &EmbeddingBatch,
    dx: &[f64],
) -> Result<(Vec<u32>, Vec<f64>)> {
    check_batch(shape, batch)?;
    check_len(CTX, "dx", dx, shape.x_len())?;
    let dim = shape.field.dim;
    let mut rows: BTreeMap<u32, Vec<f64>> = BTreeMap::new();
    for r in 0..batch.rows() {
        let upstream = &dx[r * shape.width + shape.column..][..dim];
        for (k, coefficient) in bag(batch, r) {
            let grad = rows.entry(batch.ids()[k]).or_insert_with(|| vec![0.0; dim]);
            for (g, d) in grad.iter_mut().zip(upstream) {
                *g += coefficient * d;
            }
        }
    }
    let ids = rows.keys().copied().collect();
    Ok((ids, rows.into_values().flatten().collect()))
}

/// One step `step` (1-based) of `optimizer` with learning rate `lr` on the rows `ids`
/// (distinct, inside the table) of `table: [vocab, dim]`, from their gradient
/// `grad: [ids, dim]`, updating `table`, `m` (lazy Adam's first moment, Adagrad's
/// accumulator) and, for lazy Adam, `v`, all of the table's shape, in place.
#[allow(clippy::too_many_arguments)]
pub fn update(
    optimizer: SparseOptimizer,
    step: u32,
    lr: f64,
    dim: usize,
    ids: &[u32],
    grad: &[f64],
    table: &mut [f64],
    m: &mut [f64],
    v: Option<&mut [f64]>,
) -> Result<()> {
    optimizer.validate()?;
    if step == 0 {
        return Err(Error::invalid(
            "sparse optimizer step",
            "steps count from 1",
        ));
    }
    if dim == 0 || !table.len().is_multiple_of(dim) {
        return Err(Error::shape(
            CTX,
            "table",
            format!("whole rows of {dim} values"),
            format!("{} values", table.len()),
        ));
    }
    let vocab = table.len() / dim;
    check_len(CTX, "grad", grad, ids.len() * dim)?;
    check_len(CTX, "m", m, table.len())?;
    let mut seen = vec![false; vocab];
    for &id in ids {
        match seen.get_mut(id as usize) {
            Some(s) if !*s => *s = true,
            _ => {
                return Err(Error::invalid(
                    CTX,
                    format!("ID {id} is outside the table of {vocab} rows, or listed twice"),
                ));
            }
        }
    }
    let step_size = optimizer.step_size(step, lr);
    match optimizer {
        SparseOptimizer::LazyAdam { beta1, beta2, eps } => {
            let v =
                v.ok_or_else(|| Error::shape(CTX, "v", "a second moment (lazy Adam)", "none"))?;
            check_len(CTX, "v", v, table.len())?;
            let (b1, b2, eps) = (beta1 as f64, beta2 as f64, eps as f64);
            for (u, &id) in ids.iter().enumerate() {
                for c in 0..dim {
                    let (e, g) = (id as usize * dim + c, grad[u * dim + c]);
                    m[e] = b1 * m[e] + (1.0 - b1) * g;
                    v[e] = b2 * v[e] + (1.0 - b2) * g * g;
                    table[e] -= step_size * m[e] / (v[e].sqrt() + eps);
                }
            }
        }
        SparseOptimizer::Adagrad { eps } => {
            for (u, &id) in ids.iter().enumerate() {
                for c in 0..dim {
                    let (e, g) = (id as usize * dim + c, grad[u * dim + c]);
                    m[e] += g * g;
                    table[e] -= step_size * g / (m[e].sqrt() + eps as f64);
                }
            }
        }
    }
    Ok(())
}
