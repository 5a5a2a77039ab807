//! What moves between the host and the executor's buffers: batches, noise draws,
//! parameters, gradients, optimizer state, losses and the non-finite status.

use super::GpuExecutor;
use crate::error::check_len;
use crate::graph::TensorId;
use crate::graph::plan::ScratchKind;
use crate::{Error, Result};

impl GpuExecutor {
    /// Writes a batch of `rows` rows: one slice per input tensor and (optionally) per
    /// target tensor, in creation order.
    pub fn write_batch(&self, rows: usize, inputs: &[&[f32]], targets: &[&[f32]]) -> Result<()> {
        let ctx = "GpuExecutor::write_batch";
        self.write_fed(self.graph.fed_tensors(ctx, rows, inputs, targets)?)
    }

    /// Writes the draws `ε` of a training pass on `rows` rows: one slice per noise
    /// tensor (one per noisy gate node), in creation order. Training passes read the
    /// draws last written (zeros before the first write).
    pub fn write_noise(&self, rows: usize, noise: &[&[f32]]) -> Result<()> {
        self.write_fed(
            self.graph
                .fed_noise("GpuExecutor::write_noise", rows, noise)?,
        )
    }

    /// Writes each fed tensor's values into its buffer.
    fn write_fed<'a>(&self, fed: impl IntoIterator<Item = (TensorId, &'a [f32])>) -> Result<()> {
        for (id, values) in fed {
            let buffer = self.buffers[id.0]
                .as_ref()
                .expect("a fed tensor has a buffer");
            self.gpu.write(buffer, 0, values)?;
        }
        Ok(())
    }

    /// Replaces the flat gradients (layout: [`Plan::param_offsets`](crate::graph::Plan::param_offsets)) the next
    /// [`apply_update`](Self::apply_update) applies.
    pub fn write_gradients(&self, grads: &[f32]) -> Result<()> {
        let len = self.plan.param_len;
        check_len("GpuExecutor::write_gradients", "grads", grads, len)?;
        self.gpu.write(&self.grads, 0, grads)
    }

    /// Replaces the per-task loss the next [`apply_update`](Self::apply_update)'s
    /// non-finite guard reads and [`loss`](Self::loss) returns.
    pub fn write_loss(&self, loss: &[f32]) -> Result<()> {
        let Some(id) = self.loss_tensor else {
            return Err(Error::invalid(
                "GpuExecutor::write_loss",
                "the graph has no loss node",
            ));
        };
        let tasks = self.graph.tensor(id).len();
        check_len("GpuExecutor::write_loss", "loss", loss, tasks)?;
        let buffer = self.buffers[id.0].as_ref().expect("loss buffer");
        self.gpu.write(buffer, 0, loss)
    }

    /// Reads a tensor as computed by the last run at `rows` rows.
    pub fn read(&self, id: TensorId, rows: usize) -> Result<Vec<f32>> {
        let view = self.view(id);
        self.gpu
            .read(view.buffer, view.offset, self.graph.tensor(id).len_at(rows))
    }

    /// Reads the gradient of a tensor (parameter or activation). For an expert
    /// layer's output marked in [`Plan::relu_applied`](crate::graph::Plan::relu_applied)
    /// it is the gradient at the ReLU's input, `dH ⊙ [H > 0]`.
    pub fn read_grad(&self, id: TensorId, rows: usize) -> Result<Vec<f32>> {
        let view = self.grad_view(id);
        self.gpu
            .read(view.buffer, view.offset, self.graph.tensor(id).len_at(rows))
    }

    /// The flat parameters.
    pub fn parameters(&self) -> Result<Vec<f32>> {
        self.gpu.read(&self.params, 0, self.plan.param_len)
    }

    /// The flat gradients of the last backward pass.
    pub fn gradients_flat(&self) -> Result<Vec<f32>> {
        self.gpu.read(&self.grads, 0, self.plan.param_len)
    }

    /// Replaces the flat parameters.
    pub fn set_parameters(&self, params: &[f32]) -> Result<()> {
        let len = self.plan.param_len;
        check_len("GpuExecutor::set_parameters", "params", params, len)?;
        self.gpu.write(&self.params, 0, params)
    }

    /// The optimizer's state buffers (the first and, for Adam and AdamW, second
    /// moments), each laid out like the flat parameters.
    pub fn optimizer_state(&self) -> Result<Vec<Vec<f32>>> {
        self.moments
            .iter()
            .map(|m| self.gpu.read(m, 0, self.plan.param_len))
            .collect()
    }

    /// Replaces the optimizer's state buffers (see
    /// [`optimizer_state`](Self::optimizer_state)).
    pub fn set_optimizer_state(&self, state: &[Vec<f32>]) -> Result<()> {
        if state.len() != self.moments.len() {
            return Err(Error::shape(
                "GpuExecutor::set_optimizer_state",
                "state",
                format!("{} buffers", self.moments.len()),
                format!("{} buffers", state.len()),
            ));
        }
        for (i, (buffer, values)) in self.moments.iter().zip(state).enumerate() {
            let name = format!("state[{i}]");
            check_len(
                "GpuExecutor::set_optimizer_state",
                &name,
                values,
                self.plan.param_len,
            )?;
            self.gpu.write(buffer, 0, values)?;
        }
        Ok(())
    }

    /// Forgets a non-finite loss seen earlier, so the optimizer updates again: for
    /// after the parameters were replaced by good ones.
    pub fn clear_non_finite(&self) -> Result<()> {
        let words = (self.status.size() / 4) as usize;
        self.gpu.write(&self.status, 0, &vec![0u32; words])
    }

    /// The load-balancing statistics of gate node `node` at its last forward pass
    /// (laid out as [`crate::kernels::balance::BalanceShape::stats_len`] says), or
    /// `None` when the node has no balancing loss.
    pub fn balance_stats(&self, node: usize) -> Result<Option<Vec<f32>>> {
        let Some((_, buffer)) = self
            .scratch
            .get(node)
            .and_then(|own| own.iter().find(|(k, _)| *k == ScratchKind::BalanceStats))
        else {
            return Ok(None);
        };
        let len = (buffer.size() / 4) as usize;
        Ok(Some(self.gpu.read(buffer, 0, len)?))
    }

    /// The per-task loss of the last run with a loss.
    pub fn loss(&self) -> Result<Vec<f32>> {
        match self.loss_tensor {
            Some(id) => self.read(id, 1),
            None => Err(Error::invalid(
                "GpuExecutor::loss",
                "the graph has no loss node",
            )),
        }
    }

    /// Err naming the first step whose loss was non-finite, if any step's was: the
    /// optimizer skipped that update and every later one.
    pub fn check_finite(&self) -> Result<()> {
        let Some(id) = self.loss_tensor else {
            return Ok(());
        };
        let status: Vec<u32> = self
            .gpu
            .read(&self.status, 0, 1 + self.graph.tensor(id).len())?;
        if status[0] == 0 {
            return Ok(());
        }
        let losses: Vec<f32> = status[1..].iter().map(|&b| f32::from_bits(b)).collect();
        let task = losses.iter().position(|l| !l.is_finite()).unwrap_or(0);
        Err(Error::NonFiniteLoss {
            step: status[0] as u64,
            task,
            value: losses[task],
        })
    }
}
