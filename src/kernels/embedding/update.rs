//! The passes that write tables from the compact gradient: the sparse optimizer step
//! and the scatter into a table-shaped gradient, both chunk by chunk.

use super::{Embedding, EmbeddingShape, EmbeddingTable, SparseOptimizer};
use crate::Result;
use crate::gpu::BindingKind::{Read, ReadWrite};
use crate::kernels::dispatch::Extra;
use crate::kernels::{BufferView, Dispatch, Operand, Recorder, bind_operands};

/// Slot of the per-step uniform.
const STEP_SLOT: u32 = 1;

/// Operands of a sparse optimizer step on the rows of the batch's unique IDs.
#[derive(Clone, Copy, Debug)]
pub struct EmbeddingUpdate<'a> {
    /// Shape (its field's table, and `bounds.unique`).
    pub shape: EmbeddingShape,
    /// The update rule.
    pub optimizer: SparseOptimizer,
    /// `unique_ids: [bounds.unique]` u32, distinct: padding IDs (≥ vocab) are skipped.
    pub unique_ids: BufferView<'a>,
    /// `grad: [bounds.unique, dim]`, the backward pass's compact gradient.
    pub grad: BufferView<'a>,
    /// The table, updated in place.
    pub table: EmbeddingTable<'a>,
    /// Lazy Adam's first moment or Adagrad's accumulator, split as the table is.
    pub m: EmbeddingTable<'a>,
    /// Lazy Adam's second moment, split as the table is; not used by Adagrad.
    pub v: Option<EmbeddingTable<'a>>,
    /// The non-finite-loss status of the dense optimizer's guarded step
    /// ([`OptimizerUpdate::status`](crate::kernels::optimizer::OptimizerUpdate::status),
    /// at least one u32): when given, the step changes nothing once `status[0] != 0`.
    /// Record the update after that optimizer step, which sets it when this step's
    /// loss is non-finite, so that the tables stop with the rest of the model.
    pub status: Option<BufferView<'a>>,
}

/// Operands of the scatter of the compact gradient into a table-shaped gradient.
#[derive(Clone, Copy, Debug)]
pub struct EmbeddingScatter<'a> {
    /// Shape.
    pub shape: EmbeddingShape,
    /// `unique_ids: [bounds.unique]` u32.
    pub unique_ids: BufferView<'a>,
    /// `grad: [bounds.unique, dim]`.
    pub grad: BufferView<'a>,
    /// Output: a gradient of the table's shape, its touched rows overwritten; zero it
    /// before (the rows the batch does not touch are not written).
    pub dense: EmbeddingTable<'a>,
}

crate::kernels::binding::host_struct! {
    /// Mirrors `SparseStepParams` in the shader.
    struct SparseStepParams {
        step: u32,
        step_size: f32,
        _pad: [u32; 2],
    }
}

/// A bound sparse optimizer step: a dispatch per table chunk and the uniform holding
/// the per-step values, which it owns. Record it once per training step and call
/// [`set_step`](Self::set_step) before each submit.
#[derive(Clone, Debug)]
pub struct EmbeddingStep {
    dispatches: Vec<Dispatch>,
    uniform: wgpu::Buffer,
    optimizer: SparseOptimizer,
}

impl EmbeddingStep {
    /// Writes the step number `step` (1-based: the steps taken on this table so far,
    /// this one included) and the learning rate into the step's uniform, with the
    /// step size [`SparseOptimizer::step_size`] computed in f64. The write lands
    /// before the next submit on `queue`. `step == 0` (the value before the first
    /// call) makes the dispatches no-ops.
    pub fn set_step(&self, queue: &wgpu::Queue, step: u32, learning_rate: f32) {
        let params = SparseStepParams {
            step,
            step_size: self.optimizer.step_size(step, learning_rate as f64) as f32,
            _pad: [0; 2],
        };
        queue.write_buffer(&self.uniform, 0, bytemuck::bytes_of(&params));
    }

    /// The dispatches to record, one per table chunk.
    pub fn dispatches(&self) -> &[Dispatch] {
        &self.dispatches
    }

    /// The update rule it was bound with.
    pub fn optimizer(&self) -> SparseOptimizer {
        self.optimizer
    }

    /// Records the step into `target`: a [`wgpu::CommandEncoder`] or an open
    /// [`wgpu::ComputePass`].
    pub fn encode(&self, target: &mut impl Recorder) {
        for dispatch in &self.dispatches {
            target.record_dispatch(dispatch);
        }
    }
}

impl Embedding {
    /// Checks and binds a sparse optimizer step: a dispatch per table chunk over the
    /// unique IDs, each updating the IDs in its chunk. The returned step does nothing
    /// until [`EmbeddingStep::set_step`] gives it a step number.
    pub fn update(&self, args: &EmbeddingUpdate<'_>) -> Result<EmbeddingStep> {
        const CTX: &str = "embedding update";
        let s = &args.shape;
        s.validate(CTX)?;
        args.optimizer.validate()?;
        let vocab = s.field.vocab;
        args.table.check(CTX, "table", vocab)?;
        args.table.check_same_split(CTX, "m", &args.m)?;
        let adam = args.optimizer.needs_second_state();
        let v = match (adam, args.v) {
            (true, Some(v)) => {
                args.table.check_same_split(CTX, "v", &v)?;
                Some(v)
            }
            (true, None) => {
                let want = "a second-moment table (lazy Adam keeps one)";
                return Err(crate::Error::shape(CTX, "v", want, "none"));
            }
            (false, _) => None,
        };
        let uniform = self.gpu.scoped("creating the embedding step uniform", || {
            self.gpu.device().create_buffer(&wgpu::BufferDescriptor {
                label: Some("embedding step"),
                size: size_of::<SparseStepParams>() as u64,
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        })?;
        let entry = if adam { "adam" } else { "adagrad" };
        let unique_ids = Operand::new("unique_ids", 8, args.unique_ids, s.unique_len(), Read);
        let grad = Operand::new("grad", 11, args.grad, s.grad_len(), Read);
        let status = match args.status {
            Some(view) => Operand::new("status", 14, view, 1, Read),
            None => unique_ids.stand_in(14),
        };
        let guarded = args.status.is_some() as u32;
        let mut dispatches = Vec::with_capacity(args.table.chunks.len());
        for (i, chunk) in args.table.chunks.iter().enumerate() {
            let rows = args.table.rows(i, vocab);
            let len = rows.len() * s.field.dim;
            let mut operands = vec![
                unique_ids,
                grad,
                status,
                Operand::new("table", 6, *chunk, len, ReadWrite),
                Operand::new("m", 12, args.m.chunks[i], len, ReadWrite),
            ];
            if let Some(v) = &v {
                operands.push(Operand::new("v", 13, v.chunks[i], len, ReadWrite));
            }
            let ctx = format!("{CTX}, table chunk {i}");
            let bound = bind_operands(&self.gpu, &ctx, &operands)?;
            let p = self.params(s, s.bounds.unique).bases(&bound).chunk(rows);
            let p = p.optimizer(args.optimizer);
            let entry = self.entry(entry, &[("GUARDED", guarded)]);
            let step = [(STEP_SLOT, Extra::Buffer(&uniform))];
            dispatches.push(self.dispatch("embedding update", entry, p, &bound, &step)?);
        }
        Ok(EmbeddingStep {
            dispatches,
            uniform,
            optimizer: args.optimizer,
        })
    }

    /// Checks, binds and records a sparse optimizer step into `target`: a
    /// [`wgpu::CommandEncoder`] or an open [`wgpu::ComputePass`]. Nothing is recorded
    /// when a check fails. The returned step still needs [`EmbeddingStep::set_step`]
    /// before the submit.
    pub fn encode_update(
        &self,
        target: &mut impl Recorder,
        args: &EmbeddingUpdate<'_>,
    ) -> Result<EmbeddingStep> {
        let step = self.update(args)?;
        step.encode(target);
        Ok(step)
    }

    /// Checks and binds the scatter: a dispatch per chunk of `dense`, each writing
    /// the gradient rows of the unique IDs in its chunk.
    pub fn scatter(&self, args: &EmbeddingScatter<'_>) -> Result<Vec<Dispatch>> {
        const CTX: &str = "embedding scatter";
        let s = &args.shape;
        s.validate(CTX)?;
        let vocab = s.field.vocab;
        args.dense.check(CTX, "dense", vocab)?;
        let unique_ids = Operand::new("unique_ids", 8, args.unique_ids, s.unique_len(), Read);
        let grad = Operand::new("grad", 11, args.grad, s.grad_len(), Read);
        let mut dispatches = Vec::with_capacity(args.dense.chunks.len());
        for (i, chunk) in args.dense.chunks.iter().enumerate() {
            let rows = args.dense.rows(i, vocab);
            let dense = Operand::new("dense", 6, *chunk, rows.len() * s.field.dim, ReadWrite);
            let ctx = format!("{CTX}, dense chunk {i}");
            let bound = bind_operands(&self.gpu, &ctx, &[unique_ids, grad, dense])?;
            let p = self.params(s, s.bounds.unique).bases(&bound).chunk(rows);
            let entry = self.entry("scatter", &[]);
            dispatches.push(self.dispatch("embedding scatter", entry, p, &bound, &[])?);
        }
        Ok(dispatches)
    }
}
