//! Training steps and gradients, from dense rows or from batches with categorical
//! fields: every input is checked before anything is written to the device, then
//! written with the step's gate noise, and the step runs in one submission.

use super::{FINITE_CHECK_EVERY, Trainer, check_finite};
use crate::graph::PhaseTimes;
use crate::model::batch::{self, Batch, Prepared};
use crate::{Error, Result};

/// The gradient of one embedding table on a batch: only the rows the batch touched.
#[derive(Clone, Debug, PartialEq)]
pub struct TableGradient {
    /// The table's name, `embeddings.{field}.weight`.
    pub table: String,
    /// The IDs (table rows) the batch touched, ascending.
    pub ids: Vec<u32>,
    /// Their gradient rows, `[ids, dim]`, summed over every field that looks the
    /// table up.
    pub values: Vec<f32>,
}

/// The gradient of the loss on a batch: of the flat parameters, and of each table's
/// touched rows.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchGradients {
    /// The flat parameters' gradient (layout: [`crate::graph::Plan::param_offsets`]).
    pub dense: Vec<f32>,
    /// Each table's, in [`crate::graph::Graph::tables`] order.
    pub tables: Vec<TableGradient>,
}

impl Trainer {
    pub(super) fn tasks(&self) -> usize {
        self.config.tasks.len()
    }

    /// An error for a dense-only call on a model with categorical fields.
    fn dense_only(&self, ctx: &str) -> Result<()> {
        if self.config.fields.is_empty() {
            return Ok(());
        }
        let names: Vec<&str> = self.config.fields.iter().map(|f| f.name.as_str()).collect();
        Err(Error::invalid(
            ctx,
            format!(
                "this model has categorical fields ({names:?}): give its rows as a `Batch` \
                 with every field's IDs (the `_batch` form of this call)"
            ),
        ))
    }

    /// Rows in `x`, checked against the input width, the capacity (when `capped`)
    /// and finiteness.
    pub(super) fn rows_of(&self, context: &str, x: &[f32], capped: bool) -> Result<usize> {
        self.dense_only(context)?;
        let inputs = self.config.inputs;
        if x.is_empty() || !x.len().is_multiple_of(inputs) {
            return Err(Error::shape(
                context,
                "x",
                format!("a non-empty multiple of {inputs} values (rows × inputs)"),
                format!("{} values", x.len()),
            ));
        }
        let rows = x.len() / inputs;
        if capped && rows > self.batch_capacity() {
            return Err(Error::invalid(
                context,
                format!(
                    "batch of {rows} rows; this trainer was built for at most {}",
                    self.batch_capacity()
                ),
            ));
        }
        check_finite("x", x)?;
        Ok(rows)
    }

    pub(super) fn check_targets(&self, context: &str, rows: usize, targets: &[f32]) -> Result<()> {
        batch::check_targets(&self.config, context, rows, targets)
    }

    /// `batch` checked for a training call: within the capacity, with targets, and
    /// prepared.
    fn training_batch(&self, ctx: &str, batch: &Batch<'_>) -> Result<Prepared> {
        batch::check(&self.config, ctx, batch, true)?;
        let capacity = self.batch_capacity();
        if batch.rows > capacity {
            return Err(Error::Limit {
                context: ctx.into(),
                what: "rows in one batch (the trainer's batch capacity)".into(),
                value: batch.rows as u64,
                limit: capacity as u64,
            });
        }
        batch::prepare(&self.config, ctx, batch, 0..batch.rows, capacity)
    }

    /// Writes a training batch (checked), with the gate noise of the next step.
    fn write_training(&mut self, rows: usize, x: &[f32], input: Input<'_>) -> Result<()> {
        let (lookups, targets) = match input {
            Input::Dense(targets) => (&[][..], targets),
            Input::Batch(prepared, targets) => (&prepared.lookups[..], targets),
        };
        // The IDs first: they are checked against the capacities before any write.
        self.executor.write_lookups(rows, lookups)?;
        self.executor.write_batch(rows, &[x], &[targets])?;
        if let Some(eps) = self.gate_noise(self.steps + 1, rows) {
            self.executor.write_noise(rows, &[&eps])?;
        }
        Ok(())
    }

    /// Runs the step on the batch written.
    fn train_written(&mut self, rows: usize) -> Result<()> {
        self.executor
            .train_step(rows, self.steps + 1, self.learning_rate)?;
        self.steps += 1;
        if self.steps.is_multiple_of(FINITE_CHECK_EVERY) {
            self.executor.check_finite()?;
        }
        Ok(())
    }

    /// One training step on a batch: `x` is `[rows, inputs]`, `targets` is
    /// `[tasks, rows]` (task-major). Nothing is read back. A non-finite loss stops
    /// the updates on the device and is reported as an error naming its step by
    /// this call (at most 64 steps later) or by the next read. Noisy gates add the
    /// step's [`gate_noise`](Self::gate_noise). A model with categorical fields
    /// takes [`step_batch`](Self::step_batch) instead (this is an error there).
    pub fn step(&mut self, x: &[f32], targets: &[f32]) -> Result<()> {
        let rows = self.rows_of("Trainer::step", x, true)?;
        self.check_targets("Trainer::step", rows, targets)?;
        self.write_training(rows, x, Input::Dense(targets))?;
        self.train_written(rows)
    }

    /// One training step on `batch` (dense values, every field's IDs and targets, at
    /// most the batch capacity in rows), as [`step`](Self::step) does: the IDs are
    /// written with the dense values, and the lookups, the backward pass down to the
    /// tables' touched rows and every update run in the one submission.
    ///
    /// Bad input is an error naming the field and the row (an ID outside the
    /// vocabulary, offsets that decrease or run past the IDs, a weight or dense value
    /// that is not finite, a field missing or unknown) or the bound a batch exceeds
    /// ([`Error::Limit`]: rows over the batch capacity, a bag over its field's
    /// `max_bag`); nothing is written to the device then, and the trainer is as
    /// before.
    pub fn step_batch(&mut self, batch: &Batch<'_>) -> Result<()> {
        let prepared = self.training_batch("Trainer::step_batch", batch)?;
        let targets = batch.targets.unwrap_or_default();
        self.write_training(prepared.rows, &prepared.x, Input::Batch(&prepared, targets))?;
        self.train_written(prepared.rows)
    }

    /// Like [`step`](Self::step), dispatch by dispatch, returning each kernel's
    /// label and time.
    pub fn profile_step(
        &mut self,
        x: &[f32],
        targets: &[f32],
    ) -> Result<Vec<(&'static str, std::time::Duration)>> {
        let rows = self.rows_of("Trainer::profile_step", x, true)?;
        self.check_targets("Trainer::profile_step", rows, targets)?;
        self.write_training(rows, x, Input::Dense(targets))?;
        let times = self
            .executor
            .profile_step(rows, self.steps + 1, self.learning_rate)?;
        self.steps += 1;
        Ok(times)
    }

    /// Like [`step_batch`](Self::step_batch), dispatch by dispatch, returning each
    /// kernel's label and time grouped by the phase of the step it belongs to.
    pub fn profile_step_batch(&mut self, batch: &Batch<'_>) -> Result<PhaseTimes> {
        let prepared = self.training_batch("Trainer::profile_step_batch", batch)?;
        let targets = batch.targets.unwrap_or_default();
        self.write_training(prepared.rows, &prepared.x, Input::Batch(&prepared, targets))?;
        let times =
            self.executor
                .profile_step_phases(prepared.rows, self.steps + 1, self.learning_rate)?;
        self.steps += 1;
        Ok(times)
    }

    /// The flat gradient of the loss on a batch, without updating the parameters:
    /// the gradient the next [`step`](Self::step) would take, its gate noise
    /// included.
    pub fn gradients(&mut self, x: &[f32], targets: &[f32]) -> Result<Vec<f32>> {
        let rows = self.rows_of("Trainer::gradients", x, true)?;
        self.check_targets("Trainer::gradients", rows, targets)?;
        self.write_training(rows, x, Input::Dense(targets))?;
        self.executor.gradients(rows)?;
        self.executor.gradients_flat()
    }

    /// The gradient of the loss on `batch` without updating anything: the flat
    /// parameters' and each table's touched rows', as the next
    /// [`step_batch`](Self::step_batch) would take them.
    pub fn gradients_batch(&mut self, batch: &Batch<'_>) -> Result<BatchGradients> {
        let prepared = self.training_batch("Trainer::gradients_batch", batch)?;
        let targets = batch.targets.unwrap_or_default();
        let rows = prepared.rows;
        self.write_training(rows, &prepared.x, Input::Batch(&prepared, targets))?;
        self.executor.gradients(rows)?;
        let tables = self
            .model
            .graph
            .tables()
            .iter()
            .enumerate()
            .map(|(t, table)| {
                let (ids, values) = self.executor.table_gradient(t)?;
                Ok(TableGradient {
                    table: table.name.clone(),
                    ids,
                    values,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(BatchGradients {
            dense: self.executor.gradients_flat()?,
            tables,
        })
    }
}

/// What a training step is given besides the input rows.
enum Input<'a> {
    /// Targets of a model without fields.
    Dense(&'a [f32]),
    /// A prepared batch and its targets.
    Batch(&'a Prepared, &'a [f32]),
}
