//! A training step split at the gradients, for data-parallel training
//! ([`crate::distributed`]): each process runs the forward and backward pass on its
//! share of a batch, the gradients are summed across processes on the host, and
//! every process applies the same update from the sum.

use super::{FINITE_CHECK_EVERY, Trainer};
use crate::{Error, Result};

impl Trainer {
    /// Forward (with `noise`, the draws of this share's rows, for a noisy gate) and
    /// backward on `x: [rows, inputs]`, `targets: [tasks, rows]`: returns the flat
    /// gradient and the per-task loss of these rows (means over them). Nothing is
    /// updated.
    pub(crate) fn shard_gradients(
        &mut self,
        x: &[f32],
        targets: &[f32],
        noise: Option<&[f32]>,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        let ctx = "DistributedTrainer::step";
        let rows = self.rows_of(ctx, x, true)?;
        self.check_targets(ctx, rows, targets)?;
        match (noise, self.model.gate_noise) {
            (Some(eps), Some(_)) => self.executor.write_noise(rows, &[eps])?,
            (None, None) => {}
            _ => {
                return Err(Error::invalid(
                    ctx,
                    "gate noise given to a model without a noisy gate, or missing for one",
                ));
            }
        }
        self.executor.write_batch(rows, &[x], &[targets])?;
        self.executor.gradients(rows)?;
        Ok((self.executor.gradients_flat()?, self.executor.loss()?))
    }

    /// The optimizer step from `grads` (flat) with `loss` as the step's loss (what
    /// the non-finite guard reads and [`loss`](Self::loss) reports): the second half
    /// of a step begun by [`shard_gradients`](Self::shard_gradients).
    pub(crate) fn apply_gradients(&mut self, grads: &[f32], loss: &[f32]) -> Result<()> {
        self.executor.write_gradients(grads)?;
        self.executor.write_loss(loss)?;
        self.executor
            .apply_update(self.steps + 1, self.learning_rate)?;
        self.steps += 1;
        if self.steps.is_multiple_of(FINITE_CHECK_EVERY) {
            self.executor.check_finite()?;
        }
        Ok(())
    }
}
