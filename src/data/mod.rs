//! Data sets for training and evaluation: an in-memory [`Dataset`] with batching,
//! the paper's synthetic task-correlation generator ([`synthetic`]), the UCI
//! Census-Income loader ([`census`], and [`census_fields`] for models with
//! categorical fields), numeric CSV input for prediction ([`csv`]), raw categorical
//! values to embedding IDs ([`categorical`]), named, standardised dense inputs
//! ([`dense`]) and a synthetic click → conversion funnel with its ground truth
//! ([`funnel`]).
//!
//! Targets are stored task-major (`[tasks, rows]`) because the loss kernel reads one
//! contiguous run of targets per task; inputs are row-major (`[rows, inputs]`) as the
//! expert GEMMs read them.

pub mod categorical;
pub mod census;
pub mod census_fields;
pub mod csv;
pub mod dense;
pub mod funnel;
pub mod synthetic;

use crate::rng::Rng;
use crate::{Error, Result};

/// A table of examples: `rows` input vectors of width `inputs`, each with one target
/// per task.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// Input features per row.
    pub inputs: usize,
    /// Targets per row (one per task).
    pub tasks: usize,
    /// Number of examples.
    pub rows: usize,
    /// Inputs, `[rows, inputs]` row-major.
    pub x: Vec<f32>,
    /// Targets, `[tasks, rows]` task-major: task `t`'s targets are
    /// `y[t * rows..(t + 1) * rows]`.
    pub y: Vec<f32>,
}

/// The three parts of a data set: fit on `train`, choose hyper-parameters and stop
/// early on `validation`, report on `test`.
#[derive(Clone, Debug, PartialEq)]
pub struct Splits {
    /// Training examples.
    pub train: Dataset,
    /// Validation examples.
    pub validation: Dataset,
    /// Held-out test examples.
    pub test: Dataset,
}

impl Dataset {
    /// A data set from row-major inputs `x` (`[rows, inputs]`) and task-major
    /// targets `y` (`[tasks, rows]`).
    ///
    /// Errors if `inputs` or `tasks` is 0, if a length does not match, or if a value
    /// is NaN or infinite (which would only surface later as a diverged loss).
    /// Zero rows are allowed.
    pub fn new(
        inputs: usize,
        tasks: usize,
        rows: usize,
        x: Vec<f32>,
        y: Vec<f32>,
    ) -> Result<Dataset> {
        if inputs == 0 || tasks == 0 {
            return Err(Error::invalid(
                "dataset",
                format!(
                    "needs at least one input and one task, got {inputs} inputs and {tasks} tasks"
                ),
            ));
        }
        for (name, data, width) in [("x", &x, inputs), ("y", &y, tasks)] {
            let expected = rows.checked_mul(width).ok_or_else(|| {
                Error::invalid("dataset", format!("{rows} rows × {width} overflows usize"))
            })?;
            if data.len() != expected {
                return Err(Error::shape(
                    "dataset",
                    name,
                    format!("{expected} values ({rows} rows × {width})"),
                    format!("{} values", data.len()),
                ));
            }
            if let Some(index) = data.iter().position(|v| !v.is_finite()) {
                return Err(Error::NonFinite {
                    what: format!("dataset {name}"),
                    index,
                    value: data[index],
                });
            }
        }
        Ok(Dataset {
            inputs,
            tasks,
            rows,
            x,
            y,
        })
    }

    /// Inputs and targets of rows `start..start + len`, clipped to the data set so the
    /// last batch of an epoch may be short (and a start past the end gives an empty
    /// batch). Returns `x` as `[n, inputs]` and targets task-major as `[tasks, n]`,
    /// where `n = x.len() / inputs` is the number of rows actually returned.
    pub fn batch(&self, start: usize, len: usize) -> (Vec<f32>, Vec<f32>) {
        let start = start.min(self.rows);
        let end = start.saturating_add(len).min(self.rows);
        let x = self.x[start * self.inputs..end * self.inputs].to_vec();
        let mut y = Vec::with_capacity(self.tasks * (end - start));
        for t in 0..self.tasks {
            y.extend_from_slice(&self.y[t * self.rows + start..t * self.rows + end]);
        }
        (x, y)
    }

    /// Inputs and targets of the listed rows, in that order, in the layout of
    /// [`batch`](Self::batch): how a training loop takes a batch from a shuffled
    /// order without copying the whole data set. Errors on a row index out of range.
    pub fn gather(&self, rows: &[usize]) -> Result<(Vec<f32>, Vec<f32>)> {
        if let Some(&bad) = rows.iter().find(|&&r| r >= self.rows) {
            return Err(Error::invalid(
                "dataset row",
                format!("index {bad} is out of range for {} rows", self.rows),
            ));
        }
        let mut x = Vec::with_capacity(rows.len() * self.inputs);
        for &r in rows {
            x.extend_from_slice(&self.x[r * self.inputs..(r + 1) * self.inputs]);
        }
        let mut y = Vec::with_capacity(rows.len() * self.tasks);
        for t in 0..self.tasks {
            y.extend(rows.iter().map(|&r| self.y[t * self.rows + r]));
        }
        Ok((x, y))
    }

    /// A new data set of the listed rows, in that order (repeats allowed). Errors on
    /// a row index out of range.
    pub fn select(&self, rows: &[usize]) -> Result<Dataset> {
        let (x, y) = self.gather(rows)?;
        Ok(Dataset {
            inputs: self.inputs,
            tasks: self.tasks,
            rows: rows.len(),
            x,
            y,
        })
    }

    /// A random permutation of `0..rows` drawn from `rng`: the same generator state
    /// gives the same order on every platform.
    pub fn shuffled_order(&self, rng: &mut Rng) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.rows).collect();
        rng.shuffle(&mut order);
        order
    }

    /// Targets of task `task` (`rows` values), or `None` if there is no such task.
    pub fn targets(&self, task: usize) -> Option<&[f32]> {
        (task < self.tasks).then(|| &self.y[task * self.rows..(task + 1) * self.rows])
    }
}
