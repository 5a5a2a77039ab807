//! Per-task weighted loss and its gradient in one dispatch:
//! `loss[t] = λ_t · mean_b ℓ_t(p[t, b], y[t, b])` and
//! `grad[t, b] = λ_t / B · ℓ_t'(p[t, b], y[t, b])`, with ℓ the mean squared error or
//! the binary cross-entropy on logits; or, for an ESMM pair of tasks (CTR, CVR), the
//! CTR task's cross-entropy and the CVR task's loss of the product of the two
//! probabilities, computed stably from both logits, whose gradient reaches both
//! rows ([`LossKind::EsmmCtcvr`]).
//!
//! One workgroup per task; each invocation sums a fixed strided set of rows, then a
//! fixed-order tree adds the partial sums. No float atomics, so for a given workgroup
//! size the results are bitwise reproducible.
//!
//! Shader: `shaders/loss.wgsl`, with the storage part (`shaders/storage_*.wgsl`) of
//! the call's [`Precision`], which sets the predictions', targets' and gradient's type
//! (the loss values are always f32).
//!
//! # Example
//!
//! ```
//! use mmoe_wgpu::kernels::loss::{Loss, LossForward, LossKind, TaskLoss};
//! use mmoe_wgpu::kernels::{BufferView, Precision};
//!
//! # fn main() -> mmoe_wgpu::Result<()> {
//! let gpu = mmoe_wgpu::Gpu::new()?;
//! // Two tasks of 2 rows: a regression and a classification (on logits).
//! let tasks = [
//!     TaskLoss { kind: LossKind::MeanSquaredError, weight: 1.0 },
//!     TaskLoss { kind: LossKind::BinaryCrossEntropy, weight: 0.5 },
//! ];
//! let predictions = gpu.upload("predictions", &[1.0f32, 2.0, 0.0, 0.0])?;
//! let targets = gpu.upload("targets", &[0.0f32, 2.0, 1.0, 0.0])?;
//! let loss = gpu.storage_buffer("loss", 4 * 2)?;
//! let grad = gpu.storage_buffer("grad", 4 * 4)?;
//!
//! let mut encoder = gpu.device().create_command_encoder(&Default::default());
//! Loss::new(&gpu).encode_forward(&mut encoder, &LossForward {
//!     rows: 2,
//!     tasks: &tasks,
//!     precision: Precision::F32,
//!     predictions: BufferView::new(&predictions),
//!     targets: BufferView::new(&targets),
//!     loss: BufferView::new(&loss),
//!     grad: BufferView::new(&grad),
//! })?;
//! gpu.queue().submit([encoder.finish()]);
//!
//! let values: Vec<f32> = gpu.read(&loss, 0, 2)?;
//! assert!((values[0] - 0.5).abs() < 1e-6); // ((1 − 0)² + 0) / 2
//! assert!((values[1] - 0.5 * std::f32::consts::LN_2).abs() < 1e-6);
//! # Ok(())
//! # }
//! ```

use super::binding::{program_for, storage_programs};
use super::{BufferView, Dispatch, Operand, Precision, bind_operands};
use crate::gpu::ShaderProgram;
use crate::kernels::dispatch::Extra;
pub use crate::shape::{LossKind, TaskLoss};
use crate::{Error, Result};

/// The WGSL programs of this family.
pub const PROGRAMS: &[ShaderProgram] = &PROGRAM;

const SOURCE: (&str, &str) = ("loss.wgsl", include_str!("../../shaders/loss.wgsl"));

/// The kernel in f32 and f16 storage.
const PROGRAM: [ShaderProgram; 2] = storage_programs!("loss", SOURCE);

const ENTRY: &str = "loss_forward_backward";

use crate::gpu::BindingKind::{Read, ReadWrite};
/// Slot of the per-task table (kind, weight) the kernel uploads.
const TABLE_SLOT: u32 = 1;

/// The workgroup size [`Loss::new`] uses.
pub const DEFAULT_WORKGROUP_SIZE: u32 = 64;

/// Operands of the loss kernel. `T = tasks.len()`, `B = rows`.
#[derive(Clone, Copy, Debug)]
pub struct LossForward<'a> {
    /// Rows per task, `B`.
    pub rows: usize,
    /// Kind and weight of each task; an ESMM pair's two tasks name each other.
    pub tasks: &'a [TaskLoss],
    /// Storage type of `predictions`, `targets` and `grad`; `loss` is always f32 and
    /// the arithmetic too.
    pub precision: Precision,
    /// Head outputs (logits for binary cross-entropy) `P: [T, B]`, task-major.
    pub predictions: BufferView<'a>,
    /// Targets `Y: [T, B]`.
    pub targets: BufferView<'a>,
    /// Output: `loss: [T]`, `λ_t · mean_b ℓ`.
    pub loss: BufferView<'a>,
    /// Output: `grad: [T, B]`, the gradient of `Σ_t loss[t]` with respect to the
    /// predictions: `λ_t / B · ℓ'` for a task of its own, and for an ESMM pair's CTR
    /// row also the CTCVR loss's derivative with respect to the CTR logit.
    pub grad: BufferView<'a>,
}

crate::kernels::binding::host_struct! {
    /// Mirrors `LossParams` in the shader.
    struct LossParams {
        tasks: u32,
        rows: u32,
        pred_base: u32,
        target_base: u32,
        loss_base: u32,
        grad_base: u32,
        _pad: [u32; 2],
    }
}

crate::kernels::binding::host_struct! {
    /// Mirrors `TaskEntry` in the shader.
    struct TaskEntry {
        kind: u32,
        weight: f32,
        partner: u32,
        _pad: u32,
    }
}

super::dispatch::sized_family! {
    /// The loss kernel on one device. Cheap to clone; the pipeline is compiled on first
    /// use and cached per device.
    pub struct Loss("loss", per "task", bytes 4);
    // The tree reduction keeps one f32 per invocation in workgroup memory.
    "The summation order, and so the last bits of the loss, depend on it."
}

impl Loss {
    /// Checks and binds the loss and gradient computation. The task table (kinds and
    /// weights) is uploaded into a small buffer the returned dispatch keeps alive.
    pub fn forward(&self, args: &LossForward<'_>) -> Result<Dispatch> {
        const CTX: &str = "loss";
        args.precision.check(&self.gpu, CTX)?;
        let tasks = args.tasks.len();
        if tasks == 0 {
            return Err(Error::shape(CTX, "tasks", "at least 1 task", "0 tasks"));
        }
        if args.rows == 0 {
            return Err(Error::shape(CTX, "rows", "at least 1", "0"));
        }
        if let Some((t, task)) = args
            .tasks
            .iter()
            .enumerate()
            .find(|(_, t)| !t.weight.is_finite())
        {
            return Err(Error::NonFinite {
                what: format!("{CTX}: the weights in `tasks`"),
                index: t,
                value: task.weight,
            });
        }
        let kinds: Vec<LossKind> = args.tasks.iter().map(|t| t.kind).collect();
        crate::shape::check_pairs(CTX, &kinds)?;
        let len = tasks
            .checked_mul(args.rows)
            .filter(|&n| n < u32::MAX as usize / 2)
            .ok_or_else(|| Error::Limit {
                context: CTX.into(),
                what: "element count of the predictions (tasks × rows)".into(),
                value: (tasks as u64).saturating_mul(args.rows as u64),
                limit: u32::MAX as u64 / 2,
            })?;
        let operands = [
            Operand::new("predictions", 2, args.predictions, len, Read).of(args.precision),
            Operand::new("targets", 3, args.targets, len, Read).of(args.precision),
            Operand::new("loss", 4, args.loss, tasks, ReadWrite),
            Operand::new("grad", 5, args.grad, len, ReadWrite).of(args.precision),
        ];
        let bound = bind_operands(&self.gpu, CTX, &operands)?;
        let params = LossParams {
            tasks: tasks as u32,
            rows: args.rows as u32,
            pred_base: bound[0].base,
            target_base: bound[1].base,
            loss_base: bound[2].base,
            grad_base: bound[3].base,
            _pad: [0; 2],
        };
        let table: Vec<TaskEntry> = args
            .tasks
            .iter()
            .map(|t| TaskEntry {
                kind: t.kind.code(),
                weight: t.weight,
                partner: t.kind.partner().unwrap_or(0) as u32,
                _pad: 0,
            })
            .collect();
        let table = [(TABLE_SLOT, Extra::Table(bytemuck::cast_slice(&table)))];
        let constants = [("WG", self.workgroup_size)];
        let kernel = (program_for(&PROGRAM, args.precision), ENTRY, &constants[..]);
        let groups = [tasks as u32, 1, 1];
        Dispatch::launch(&self.gpu, CTX, kernel, &params, (&bound, &table), groups)
    }

    crate::kernels::encoders! {
        encode_forward => forward(args: &LossForward<'_>);
    }
}
