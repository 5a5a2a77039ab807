//! Sparse top-k gate + mix: for every gate `t` and row, the `k` largest logits of
//! `X · Wg_t + bg_t` (equal logits: the lower expert first), a softmax over those `k`
//! alone, `G_t` with zeros for the other experts, and `M_t = Σ_e G_t[:, e] ⊙ H_e`, in
//! one dispatch; and the backward pass, in which the gradient flows only through the
//! selected logits.
//!
//! The operands and shape are the dense [`gate_mix`](super::gate_mix)'s, plus `k`
//! (1 ≤ k ≤ experts, a run-time value: one pipeline serves every `k`); `k = experts`
//! is the dense softmax. The backward pass *is* the dense one, run on this kernel's
//! `G`: where `G` is zero, `dz = G ⊙ (dg − ⟨G, dg⟩)` is zero, and over the selection it
//! is the softmax gradient of the selected logits, so [`GateTopk::backward`] records
//! [`GateMix::backward`] (its errors name `gate_mix backward`).
//!
//! Shader: `shaders/gate_topk.wgsl`, with the storage part (`shaders/storage_*.wgsl`)
//! of the call's [`Precision`].
//!
//! # Example
//!
//! One gate choosing 2 of 4 experts per row, then the backward pass, recorded into
//! the caller's encoder:
//!
//! ```
//! use mmoe_wgpu::kernels::gate_mix::{GateMixBackward, GateMixShape};
//! use mmoe_wgpu::kernels::gate_topk::{GateTopk, GateTopkForward};
//! use mmoe_wgpu::kernels::{BufferView, Precision};
//! use mmoe_wgpu::Gpu;
//!
//! # fn main() -> mmoe_wgpu::Result<()> {
//! let gpu = Gpu::new()?;
//! let shape = GateMixShape { gates: 1, experts: 4, rows: 3, inputs: 5, width: 6 };
//! let filled = |name: &str, n: usize| -> mmoe_wgpu::Result<wgpu::Buffer> {
//!     gpu.upload(name, &(0..n).map(|i| (i % 7) as f32 / 7.0 - 0.4).collect::<Vec<_>>())
//! };
//! let (x, wg) = (filled("x", shape.x_len())?, filled("wg", shape.wg_len())?);
//! let (bg, h) = (filled("bg", shape.bg_len())?, filled("h", shape.h_len())?);
//! let dm = filled("dm", shape.m_len())?;
//! let out = |name: &str, n: usize| gpu.storage_buffer(name, 4 * n as u64);
//! let (g, m) = (out("g", shape.g_len())?, out("m", shape.m_len())?);
//! let (dh, dz) = (out("dh", shape.h_len())?, out("dz", shape.g_len())?);
//! let (dwg, dbg) = (out("dwg", shape.wg_len())?, out("dbg", shape.bg_len())?);
//!
//! let kernels = GateTopk::new(&gpu);
//! let mut encoder = gpu.device().create_command_encoder(&Default::default());
//! kernels.encode_forward(&mut encoder, &GateTopkForward {
//!     shape,
//!     k: 2,
//!     precision: Precision::F32,
//!     x: BufferView::new(&x),
//!     wg: BufferView::new(&wg),
//!     bg: BufferView::new(&bg),
//!     h: BufferView::new(&h),
//!     g: BufferView::new(&g),
//!     m: BufferView::new(&m),
//! })?;
//! kernels.encode_backward(&mut encoder, &GateMixBackward {
//!     shape,
//!     precision: Precision::F32,
//!     x: BufferView::new(&x),
//!     wg: BufferView::new(&wg),
//!     h: BufferView::new(&h),
//!     g: BufferView::new(&g),
//!     dm: BufferView::new(&dm),
//!     dh: BufferView::new(&dh),
//!     dz: BufferView::new(&dz),
//!     dwg: BufferView::new(&dwg),
//!     dbg: BufferView::new(&dbg),
//!     dx: None,
//!     accumulate_dx: false,
//! })?;
//! gpu.queue().submit([encoder.finish()]);
//!
//! // Two experts per row share the weight; the logits of the others get no gradient.
//! let g: Vec<f32> = gpu.read(&g, 0, shape.g_len())?;
//! let dz: Vec<f32> = gpu.read(&dz, 0, shape.g_len())?;
//! for (row, dz) in g.chunks(shape.experts).zip(dz.chunks(shape.experts)) {
//!     assert_eq!(row.iter().filter(|&&p| p > 0.0).count(), 2);
//!     assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
//!     assert!(row.iter().zip(dz).all(|(&p, &d)| p > 0.0 || d == 0.0));
//! }
//! # Ok(())
//! # }
//! ```

use bytemuck::{Pod, Zeroable};

use super::binding::{BoundOperand, STORAGE_F16, STORAGE_F32, program_for};
use super::gate_mix::{GateMix, GateMixBackward, GateMixShape, GateMixTiling};
use super::{BufferView, Dispatch, Operand, Precision, Recorder, bind_operands, div_ceil};
use crate::gpu::{BindingKind, Gpu, ShaderProgram};
use crate::{Error, Result};

const SOURCE: (&str, &str) = (
    "gate_topk.wgsl",
    include_str!("../../shaders/gate_topk.wgsl"),
);

/// The kernel in f32 and f16 storage.
const PROGRAM: [ShaderProgram; 2] = [
    ShaderProgram {
        name: "gate_topk",
        parts: &[SOURCE, STORAGE_F32],
        needs_subgroups: false,
        needs_f16: false,
    },
    ShaderProgram {
        name: "gate_topk_f16",
        parts: &[STORAGE_F16, SOURCE],
        needs_subgroups: false,
        needs_f16: true,
    },
];

/// The WGSL programs of this family.
pub const PROGRAMS: &[ShaderProgram] = &PROGRAM;

use BindingKind::{Read, ReadWrite, Uniform};
const FORWARD_BINDINGS: &[(u32, BindingKind)] = &[
    (0, Uniform),
    (1, Read),
    (2, Read),
    (3, Read),
    (4, Read),
    (5, ReadWrite),
    (6, ReadWrite),
];

/// Checks `1 ≤ k ≤ experts`, the selections a top-k gate can make.
pub(crate) fn check_k(context: &str, shape: &GateMixShape, k: usize) -> Result<()> {
    if (1..=shape.experts).contains(&k) {
        return Ok(());
    }
    Err(Error::invalid(
        format!("{context} k"),
        format!(
            "k = {k}, but a top-k gate over {} experts needs 1 ≤ k ≤ {}",
            shape.experts, shape.experts
        ),
    ))
}

/// Mirrors `GateTopkParams` in the shader.
#[repr(C)]
#[derive(Clone, Copy, Default, Pod, Zeroable)]
struct GateTopkParams {
    gates: u32,
    experts: u32,
    rows: u32,
    inputs: u32,
    width: u32,
    k: u32,
    x_base: u32,
    wg_base: u32,
    bg_base: u32,
    h_base: u32,
    g_base: u32,
    m_base: u32,
}

/// Operands of the forward pass: those of
/// [`GateMixForward`](super::gate_mix::GateMixForward), plus `k`.
#[derive(Clone, Copy, Debug)]
pub struct GateTopkForward<'a> {
    /// Shape.
    pub shape: GateMixShape,
    /// Experts each gate selects per row, 1 to `shape.experts`.
    pub k: usize,
    /// Storage type of every operand; logits, selection, softmax and mixing run in f32
    /// either way (with f16, the logits are rounded to f16 once, in `G`, before the
    /// selection, so near-equal logits may tie there).
    pub precision: Precision,
    /// `X: [rows, inputs]`, the gates' input.
    pub x: BufferView<'a>,
    /// `Wg: [gates, inputs, experts]`.
    pub wg: BufferView<'a>,
    /// `bg: [gates, experts]`.
    pub bg: BufferView<'a>,
    /// The experts' outputs `H: [experts, rows, width]`.
    pub h: BufferView<'a>,
    /// Output `G: [gates, rows, experts]`, the gate weights, zero outside each row's
    /// selection (kept for backward).
    pub g: BufferView<'a>,
    /// Output `M: [gates, rows, width]`, the mixtures.
    pub m: BufferView<'a>,
}

/// The top-k gate + mix kernels on one device. Cheap to clone; pipelines are compiled
/// on first use and cached per device.
#[derive(Clone, Debug)]
pub struct GateTopk {
    gpu: Gpu,
    dense: GateMix,
}

impl GateTopk {
    /// The kernels on `gpu`.
    pub fn new(gpu: &Gpu) -> Self {
        GateTopk {
            gpu: gpu.clone(),
            dense: GateMix::new(gpu),
        }
    }

    /// The forward tiling used when none is given: the dense gate's default, since
    /// both kernels do the same logits and mixture tiles.
    pub fn default_tiling(&self, shape: &GateMixShape) -> GateMixTiling {
        self.dense.default_tiling(shape)
    }

    /// Every tiling worth trying: the dense gate's.
    pub fn tilings(&self) -> Vec<GateMixTiling> {
        self.dense.tilings()
    }

    /// Checks and binds the forward pass: one dispatch.
    pub fn forward(&self, args: &GateTopkForward<'_>) -> Result<Dispatch> {
        self.forward_with(args, self.default_tiling(&args.shape))
    }

    /// [`forward`](Self::forward) with a given tiling; every tiling gives bitwise
    /// equal results.
    pub fn forward_with(
        &self,
        args: &GateTopkForward<'_>,
        tiling: GateMixTiling,
    ) -> Result<Dispatch> {
        const CTX: &str = "gate_topk forward";
        let s = &args.shape;
        s.validate(CTX)?;
        check_k(CTX, s, args.k)?;
        args.precision.check(&self.gpu, CTX)?;
        self.check_tiling(tiling)?;
        let operands = [
            Operand::new("x", 1, args.x, s.x_len(), Read),
            Operand::new("wg", 2, args.wg, s.wg_len(), Read),
            Operand::new("bg", 3, args.bg, s.bg_len(), Read),
            Operand::new("h", 4, args.h, s.h_len(), Read),
            Operand::new("g", 5, args.g, s.g_len(), ReadWrite),
            Operand::new("m", 6, args.m, s.m_len(), ReadWrite),
        ]
        .map(|o| o.of(args.precision));
        let bound = bind_operands(&self.gpu, CTX, &operands)?;
        // validate() bounds every tensor, so each dimension and k fit in u32.
        let params = GateTopkParams {
            gates: s.gates as u32,
            experts: s.experts as u32,
            rows: s.rows as u32,
            inputs: s.inputs as u32,
            width: s.width as u32,
            k: args.k as u32,
            x_base: bound[0].base,
            wg_base: bound[1].base,
            bg_base: bound[2].base,
            h_base: bound[3].base,
            g_base: bound[4].base,
            m_base: bound[5].base,
        };
        self.build(CTX, tiling, args.precision, &params, &bound)
    }

    /// Checks and binds the backward pass: the dense gate's ([`GateMix::backward`])
    /// on this kernel's `G`, which is the top-k gradient: `dH` and `dz` (zero outside
    /// each row's selection) in one dispatch, then `dWg` with `dbg`, then `dX` when
    /// asked for. Record them in order.
    pub fn backward(&self, args: &GateMixBackward<'_>) -> Result<Vec<Dispatch>> {
        self.dense.backward(args)
    }

    /// Checks, binds and records the forward pass into `target`: a
    /// [`wgpu::CommandEncoder`] or an open [`wgpu::ComputePass`]. Nothing is recorded
    /// when a check fails.
    pub fn encode_forward(
        &self,
        target: &mut impl Recorder,
        args: &GateTopkForward<'_>,
    ) -> Result<()> {
        target.record_dispatch(&self.forward(args)?);
        Ok(())
    }

    /// Checks, binds and records the backward pass's dispatches, in order, into
    /// `target`. Nothing is recorded when a check fails.
    pub fn encode_backward(
        &self,
        target: &mut impl Recorder,
        args: &GateMixBackward<'_>,
    ) -> Result<()> {
        self.dense.encode_backward(target, args)
    }

    /// The dense gate's limits on a tiling, which the shader shares.
    fn check_tiling(&self, tiling: GateMixTiling) -> Result<()> {
        let max = self.gpu.limits().max_compute_invocations_per_workgroup;
        if tiling.wg == 0
            || tiling.wg > max
            || !(1..=16).contains(&tiling.row_blocks)
            || !(1..=2).contains(&tiling.column_groups)
        {
            return Err(Error::invalid(
                "gate_topk tiling",
                format!(
                    "{tiling:?}: wg must be 1..={max}, row_blocks 1..=16 and column_groups 1..=2"
                ),
            ));
        }
        Ok(())
    }

    /// One workgroup per block of `8 · row_blocks` rows.
    fn build(
        &self,
        ctx: &'static str,
        tiling: GateMixTiling,
        precision: Precision,
        params: &GateTopkParams,
        bound: &[BoundOperand<'_>],
    ) -> Result<Dispatch> {
        let constants = [
            ("WG", tiling.wg),
            ("RB", tiling.row_blocks),
            ("CN", tiling.column_groups),
        ];
        let pipeline = self.gpu.pipeline(
            program_for(&PROGRAM, precision),
            "forward",
            FORWARD_BINDINGS,
            &constants,
        )?;
        let (layout, _) = self.gpu.layout(FORWARD_BINDINGS)?;
        let workgroups = [
            div_ceil(params.rows as usize, 8 * tiling.row_blocks as usize),
            1,
            1,
        ];
        Dispatch::build(
            &self.gpu,
            ctx,
            pipeline,
            &layout,
            bytemuck::bytes_of(params),
            bound,
            workgroups,
        )
    }
}
