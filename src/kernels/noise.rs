//! Gate noise of a noisy top-k gate (Shazeer et al. 2017): the logit offset
//! `offset = ε ⊙ softplus(n)` that a noisy gate adds to its logits before the top-k
//! selection, and its backward pass `dn = dz ⊙ ε ⊙ sigmoid(n)`, each one elementwise
//! dispatch over `[gates, rows, experts]`.
//!
//! `n = X · Wn + bn` are the noise logits (a grouped GEMM of the gate's shape, see
//! [`GateMixShape::logits_gemm`](super::gate_mix::GateMixShape::logits_gemm)), `ε` the
//! standard normal draws of one training step, `dz` the gradient of the noisy logits
//! that the gate + mix backward writes. The offset goes to
//! [`GateMixTopK::logit_offset`](super::gate_mix::GateMixTopK::logit_offset);
//! `dn` feeds the noise GEMM's backward. softplus is computed as
//! `max(n, 0) + log1p(exp(−|n|))`, which neither overflows nor loses the small values.
//!
//! Shader: `shaders/noise.wgsl`, with the storage part (`shaders/storage_*.wgsl`) of
//! the call's [`Precision`], which sets the type of every operand.
//!
//! # Example
//!
//! The offset of two gates over three experts on two rows, then its gradient:
//!
//! ```
//! use mmoe_wgpu::kernels::noise::{Noise, NoiseBackward, NoiseForward, NoiseShape};
//! use mmoe_wgpu::kernels::{BufferView, Precision};
//!
//! # fn main() -> mmoe_wgpu::Result<()> {
//! let gpu = mmoe_wgpu::Gpu::new()?;
//! let shape = NoiseShape { gates: 2, rows: 2, experts: 3 };
//! let n = gpu.upload("n", &[0.0f32; 12])?; // softplus(0) = ln 2
//! let mut draws = [1.0f32; 12];
//! draws[1] = -1.0;
//! draws[4] = 2.0;
//! let eps = gpu.upload("eps", &draws)?;
//! let dz = gpu.upload("dz", &[1.0f32; 12])?;
//! let offset = gpu.storage_buffer("offset", 4 * shape.len() as u64)?;
//! let dn = gpu.storage_buffer("dn", 4 * shape.len() as u64)?;
//!
//! let noise = Noise::new(&gpu);
//! let view = |b| BufferView::new(b);
//! let mut encoder = gpu.device().create_command_encoder(&Default::default());
//! noise.encode_forward(&mut encoder, &NoiseForward {
//!     shape, precision: Precision::F32, n: view(&n), eps: view(&eps), offset: view(&offset),
//! })?;
//! noise.encode_backward(&mut encoder, &NoiseBackward {
//!     shape, precision: Precision::F32,
//!     n: view(&n), eps: view(&eps), dz: view(&dz), dn: view(&dn),
//! })?;
//! gpu.queue().submit([encoder.finish()]);
//!
//! let offset: Vec<f32> = gpu.read(&offset, 0, shape.len())?;
//! assert!((offset[0] - std::f32::consts::LN_2).abs() < 1e-6);
//! assert!((offset[1] + std::f32::consts::LN_2).abs() < 1e-6);
//! let dn: Vec<f32> = gpu.read(&dn, 0, shape.len())?;
//! assert!((dn[4] - 1.0).abs() < 1e-6); // 1 · 2 · sigmoid(0)
//! # Ok(())
//! # }
//! ```

use super::binding::{program_for, storage_programs};
use super::{BufferView, Dispatch, Operand, Precision, bind_operands, div_ceil};
use crate::Result;
use crate::gpu::{BindingKind, Gpu, ShaderProgram};
pub use crate::shape::NoiseShape;

const SOURCE: (&str, &str) = ("noise.wgsl", include_str!("../../shaders/noise.wgsl"));

/// The kernels in f32 and f16 storage.
const PROGRAM: [ShaderProgram; 2] = storage_programs!("noise", SOURCE);

/// The WGSL programs of this family.
pub const PROGRAMS: &[ShaderProgram] = &PROGRAM;

use BindingKind::{Read, ReadWrite};

/// Invocations per workgroup, one per element.
const WORKGROUP_SIZE: u32 = 64;

/// Operands of the forward pass.
#[derive(Clone, Copy, Debug)]
pub struct NoiseForward<'a> {
    /// Shape.
    pub shape: NoiseShape,
    /// Storage type of every operand; the arithmetic is f32 either way.
    pub precision: Precision,
    /// The noise logits `n: [gates, rows, experts]`.
    pub n: BufferView<'a>,
    /// The standard normal draws `ε: [gates, rows, experts]`.
    pub eps: BufferView<'a>,
    /// Output `ε ⊙ softplus(n)`, in a buffer other than `n`'s and `eps`'s.
    pub offset: BufferView<'a>,
}

/// Operands of the backward pass.
#[derive(Clone, Copy, Debug)]
pub struct NoiseBackward<'a> {
    /// Shape.
    pub shape: NoiseShape,
    /// Storage type of every operand; the arithmetic is f32 either way.
    pub precision: Precision,
    /// The forward's noise logits `n`.
    pub n: BufferView<'a>,
    /// The forward's `ε`.
    pub eps: BufferView<'a>,
    /// The gradient of the noisy logits, `dz: [gates, rows, experts]`.
    pub dz: BufferView<'a>,
    /// Output `dn = dz ⊙ ε ⊙ sigmoid(n)`, overwritten; in a buffer other than the
    /// inputs'.
    pub dn: BufferView<'a>,
}

crate::kernels::binding::host_struct! {
    /// Mirrors `NoiseParams` in the shader.
    struct NoiseParams {
        len: u32,
        groups_x: u32,
        n_base: u32,
        eps_base: u32,
        offset_base: u32,
        dz_base: u32,
        dn_base: u32,
        _pad: u32,
    }
}

/// The gate noise kernels on one device. Cheap to clone; pipelines are compiled on
/// first use and cached per device.
#[derive(Clone, Debug)]
pub struct Noise {
    gpu: Gpu,
}

impl Noise {
    /// The kernels on `gpu`.
    pub fn new(gpu: &Gpu) -> Self {
        Noise { gpu: gpu.clone() }
    }

    /// Checks and binds the forward pass: one dispatch, one invocation per element.
    pub fn forward(&self, args: &NoiseForward<'_>) -> Result<Dispatch> {
        let operands = [
            ("n", 1, args.n, Read),
            ("eps", 2, args.eps, Read),
            ("offset", 3, args.offset, ReadWrite),
        ];
        let (shape, precision) = (&args.shape, args.precision);
        self.build(
            "noise forward",
            "noise_forward",
            shape,
            precision,
            &operands,
        )
    }

    /// Checks and binds the backward pass: one dispatch, one invocation per element.
    /// Record it after whatever writes `dz` last.
    pub fn backward(&self, args: &NoiseBackward<'_>) -> Result<Dispatch> {
        let operands = [
            ("n", 1, args.n, Read),
            ("eps", 2, args.eps, Read),
            ("dz", 4, args.dz, Read),
            ("dn", 5, args.dn, ReadWrite),
        ];
        let (shape, precision) = (&args.shape, args.precision);
        self.build(
            "noise backward",
            "noise_backward",
            shape,
            precision,
            &operands,
        )
    }

    crate::kernels::encoders! {
        encode_forward => forward(args: &NoiseForward<'_>);
        encode_backward => backward(args: &NoiseBackward<'_>);
    }

    /// Checks a pass whose operands (name, slot, view, kind) each hold one value per
    /// element, stored at `precision`, and binds it with one invocation per element:
    /// the workgroups fill x up to the device's limit, then rows of them along y.
    fn build(
        &self,
        ctx: &'static str,
        entry: &'static str,
        shape: &NoiseShape,
        precision: Precision,
        operands: &[(&'static str, u32, BufferView<'_>, BindingKind)],
    ) -> Result<Dispatch> {
        shape.validate(ctx)?;
        precision.check(&self.gpu, ctx)?;
        let operands: Vec<Operand<'_>> = operands
            .iter()
            .map(|&(name, slot, view, kind)| {
                Operand::new(name, slot, view, shape.len(), kind).of(precision)
            })
            .collect();
        let bound = bind_operands(&self.gpu, ctx, &operands)?;
        let groups = div_ceil(shape.len(), WORKGROUP_SIZE as usize);
        let max = self.gpu.limits().max_compute_workgroups_per_dimension;
        let groups_x = groups.min(max);
        let mut params = NoiseParams {
            len: shape.len() as u32,
            groups_x,
            ..Default::default()
        };
        for b in &bound {
            let base = match b.slot {
                1 => &mut params.n_base,
                2 => &mut params.eps_base,
                3 => &mut params.offset_base,
                4 => &mut params.dz_base,
                5 => &mut params.dn_base,
                _ => continue,
            };
            *base = b.base;
        }
        let kernel = (
            program_for(&PROGRAM, precision),
            entry,
            &[("WG", WORKGROUP_SIZE)][..],
        );
        let workgroups = [groups_x, groups.div_ceil(groups_x), 1];
        Dispatch::launch(&self.gpu, ctx, kernel, &params, (&bound, &[]), workgroups)
    }
}
