//! The kernel backend: each kernel family checks its operands, then records into the
//! caller's [`wgpu::CommandEncoder`] (or [`wgpu::ComputePass`]) over the caller's
//! buffers. Nothing here knows about MMoE; `graph` composes these.
//!
//! Every call comes in two steps: a kernel's `forward`/`backward_*` method checks
//! shapes, sizes, offset alignment, usage flags, aliasing and the [`Precision`] against
//! the device, and returns a [`Dispatch`] (pipeline and bind group), which is recorded
//! as often as needed with [`Dispatch::record`] or [`Dispatch::encode`]. The
//! `encode_*` shortcuts do both, into any [`Recorder`]: a command encoder or an open
//! compute pass. A failed check records nothing. Pipelines are compiled once per
//! device; bind groups are cached per device by binding set (buffers, offsets, sizes,
//! parameters), so building the same dispatch again is cheap.
//!
//! Each family's module docs hold a runnable example: [`grouped_gemm`], [`gate_mix`],
//! [`loss`], [`optimizer`], [`routing`], [`balance`], [`noise`].

pub mod balance;
mod binding;
mod dispatch;
pub mod gate_mix;
pub mod gate_topk;
pub mod grouped_gemm;
pub mod loss;
pub mod noise;
pub mod optimizer;
pub mod routing;
pub mod tune;

pub use binding::{BufferView, Precision};
pub(crate) use binding::{Operand, bind_operands};
pub(crate) use dispatch::check_loop_budget;
pub use dispatch::{Dispatch, LOOP_BUDGET, Recorder};
pub use gate_mix::{GateMix, GateMixShape};
pub use gate_topk::{GateTopk, GateTopkForward};
pub use grouped_gemm::GroupedGemm;
pub use loss::{Loss, LossArgs, LossKind, TaskLoss};
pub use noise::{Noise, NoiseBackward, NoiseForward, NoiseShape};
pub use optimizer::{Optimizer, OptimizerArgs, OptimizerKernel, OptimizerStep};
pub use routing::{Routing, RoutingArgs, RoutingShape};

/// Every WGSL program the crate builds, for validation and translation checks.
pub fn programs() -> Vec<crate::gpu::ShaderProgram> {
    let mut out = grouped_gemm::PROGRAMS.to_vec();
    out.extend_from_slice(balance::PROGRAMS);
    out.extend_from_slice(gate_mix::PROGRAMS);
    out.extend_from_slice(loss::PROGRAMS);
    out.extend_from_slice(noise::PROGRAMS);
    out.extend_from_slice(optimizer::PROGRAMS);
    out.extend_from_slice(routing::PROGRAMS);
    out
}

pub(crate) fn div_ceil(a: usize, b: usize) -> u32 {
    a.div_ceil(b) as u32
}
