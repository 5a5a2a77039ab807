//! The kernel backend: each kernel family checks its operands, then records into the
//! caller's [`wgpu::CommandEncoder`] (or [`wgpu::ComputePass`]) over the caller's
//! buffers. Nothing here knows about MMoE; `graph` composes these.
//!
//! # The contract every family keeps
//!
//! A family is one module, one WGSL file (`shaders/<family>.wgsl`, plus helper parts)
//! and one type named after it: [`GroupedGemm`], [`GateMix`] (with its top-k mode), [`KMeans`], [`Noise`], [`Routing`], [`Balance`], [`Loss`] and [`Optimizer`]
//! (and [`CeilingProbe`], which measures what the device can do at best). The
//! names that describe an operation rather than run it (shapes, enums, hyper-parameters
//! such as [`OptimizerConfig`](crate::shape::OptimizerConfig)) live in [`crate::shape`] and are re-exported by the
//! family that takes them.
//!
//! - `Family::new(gpu)` makes the kernels of a device (cheap to clone; pipelines compile
//!   on first use and are cached on the [`Gpu`](crate::Gpu)); families with a tunable
//!   size also have `with_workgroup_size` or take a tiling.
//! - A family runs one or more **passes**: `forward`, `backward` (or its parts
//!   `backward_input` and `backward_weights`), and the optimizer's `update`. Pass `p`
//!   takes one argument struct named after the family and the pass, `&FamilyP` (e.g.
//!   [`GroupedGemmBackwardInput`](grouped_gemm::GroupedGemmBackwardInput),
//!   [`LossForward`](loss::LossForward)): shape, operands as [`BufferView`]s, [`Precision`]. A mode of a
//!   pass, `p_mode` (`forward_ragged`, `forward_load`, `forward_top_k`), takes
//!   the pass's struct followed by what the mode adds; `p_with` takes a tiling last.
//! - `p(&args)` checks shapes, sizes, offset alignment, usage flags, aliasing and the
//!   precision against the device, and returns what it will record: a [`Dispatch`]
//!   (pipeline and bind group, recorded as often as needed with [`Dispatch::record`] or
//!   [`Dispatch::encode`]), a `Vec<Dispatch>` to record in order where the pass takes
//!   several, or, for the optimizer, an [`OptimizerStep`] that also owns the per-step
//!   uniform.
//! - `encode_p(target, &args)` does both into any [`Recorder`]: a command encoder or an
//!   open compute pass.
//! - A failed check is an [`Error`](crate::Error) naming the kernel, the pass and the
//!   operand, and records nothing. Bind groups are cached per device by binding set
//!   (buffers, offsets, sizes, parameters), so building the same dispatch again is cheap.
//!
//! Each family's module docs hold a runnable example: [`grouped_gemm`], [`gate_mix`],
//! [`loss`], [`optimizer`], [`routing`], [`balance`], [`noise`], [`embedding`],
//! [`kmeans`], [`ceiling_probe`].

pub mod balance;
mod binding;
pub mod ceiling_probe;
mod dispatch;
pub mod embedding;
pub mod gate_mix;
pub mod grouped_gemm;
pub mod kmeans;
#[cfg(test)]
mod layout;
pub mod loss;
pub mod noise;
pub mod optimizer;
pub mod routing;
pub mod tune;

pub use balance::Balance;
pub use binding::{BufferView, Precision};
pub(crate) use binding::{Operand, bind_operands};
pub use ceiling_probe::CeilingProbe;
pub use dispatch::{Dispatch, LOOP_BUDGET, Recorder};
pub(crate) use dispatch::{check_loop_budget, encoders};
pub use embedding::Embedding;
pub use gate_mix::GateMix;
pub use grouped_gemm::GroupedGemm;
pub use kmeans::KMeans;
pub use loss::Loss;
pub use noise::Noise;
pub use optimizer::{Optimizer, OptimizerStep};
pub use routing::Routing;

/// Every WGSL program the crate builds, for validation and translation checks.
pub fn programs() -> Vec<crate::gpu::ShaderProgram> {
    let mut out = grouped_gemm::PROGRAMS.to_vec();
    out.extend_from_slice(balance::PROGRAMS);
    out.extend_from_slice(ceiling_probe::PROGRAMS);
    out.extend_from_slice(embedding::PROGRAMS);
    out.extend_from_slice(gate_mix::PROGRAMS);
    out.extend_from_slice(kmeans::PROGRAMS);
    out.extend_from_slice(loss::PROGRAMS);
    out.extend_from_slice(noise::PROGRAMS);
    out.extend_from_slice(optimizer::PROGRAMS);
    out.extend_from_slice(routing::PROGRAMS);
    out
}

pub(crate) fn div_ceil(a: usize, b: usize) -> u32 {
    a.div_ceil(b) as u32
}
