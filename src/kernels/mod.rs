//! The kernel backend: each kernel family checks its operands, then records into the
//! caller's [`wgpu::CommandEncoder`] (or [`wgpu::ComputePass`]) over the caller's
//! buffers. Nothing here knows about MMoE; `graph` composes these.
//!
//! Every call comes in two steps: a kernel's `forward`/`backward_*` method checks
//! shapes, sizes, usage flags and aliasing and returns a [`Dispatch`] (pipeline and
//! bind group, built once), which is recorded as often as needed with
//! [`Dispatch::record`] or [`Dispatch::encode`]. The `encode_*` shortcuts do both.

mod binding;
mod dispatch;
pub mod gate_mix;
pub mod grouped_gemm;
pub mod loss;
pub mod optimizer;

pub use binding::BufferView;
pub(crate) use binding::{Operand, bind_operands};
pub use dispatch::Dispatch;
pub use gate_mix::{GateMix, GateMixShape};
pub use grouped_gemm::GroupedGemm;
pub use loss::{Loss, LossArgs, LossKind, TaskLoss};
pub use optimizer::{Optimizer, OptimizerArgs, OptimizerKernel, OptimizerStep};

/// Every WGSL program the crate builds, for validation and translation checks.
pub fn programs() -> Vec<crate::gpu::ShaderProgram> {
    let mut out = grouped_gemm::PROGRAMS.to_vec();
    out.extend_from_slice(gate_mix::PROGRAMS);
    out.extend_from_slice(loss::PROGRAMS);
    out.extend_from_slice(optimizer::PROGRAMS);
    out
}

pub(crate) fn div_ceil(a: usize, b: usize) -> u32 {
    a.div_ceil(b) as u32
}
