//! Sparse top-k gate + mix: for every gate `t` and row, the `k` largest logits of
//! `X · Wg_t + bg_t` (equal logits: the lower expert first), a softmax over those `k`
//! alone, `G_t` with zeros for the other experts, and `M_t = Σ_e G_t[:, e] ⊙ H_e`, in
//! one dispatch; and the backward pass, in which the gradient flows only through the
//! selected logits.
//!
//! The operands and shape are the dense [`gate_mix`](super::gate_mix)'s, plus `k`
//! (1 ≤ k ≤ experts, a run-time value: one pipeline serves every `k`); `k = experts`
//! is the dense softmax. With [`Selection::Shared`] the gates of a row keep the same `k`
//! experts, those with the largest summed logits, so that sparse experts compute `k`
//! per row however many gates (tasks) there are, at the price of the gates'
//! independence in choosing. An optional logit offset is added before the selection: a
//! noisy gate's noise (see [`noise`](super::noise)); the backward pass is the same. The backward pass *is* the dense one, run on this kernel's
//! `G`: where `G` is zero, `dz = G ⊙ (dg − ⟨G, dg⟩)` is zero, and over the selection it
//! is the softmax gradient of the selected logits, so [`GateTopk::backward`] records
//! [`GateMix::backward`] (its errors name `gate_mix backward`).
//!
//! Shader: the gate + mix family's (`shaders/gate_mix.wgsl`), whose softmax keeps the
//! top `k` when `k` < experts: the logits and mixture tiles are the dense gate's, so the
//! two kernels share pipelines, tilings and tuning.
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
//!     access: Default::default(),
//!     selection: Default::default(),
//!     stages: Default::default(),
//!     precision: Precision::F32,
//!     x: BufferView::new(&x),
//!     wg: BufferView::new(&wg),
//!     bg: BufferView::new(&bg),
//!     h: BufferView::new(&h),
//!     g: BufferView::new(&g),
//!     m: BufferView::new(&m),
//!     logit_offset: None,
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

use super::gate_mix::{
    ExpertAccess, ForwardStages, GateMix, GateMixBackward, GateMixForward, GateMixShape,
    GateMixTiling,
};
use super::{BufferView, Dispatch, Precision};
use crate::Result;
use crate::gpu::Gpu;
pub use crate::shape::{MAX_SHARED_SELECTION_EXPERTS, Selection};

/// Operands of the forward pass: those of
/// [`GateMixForward`], plus `k`, which experts each gate sees, and the phases to run.
#[derive(Clone, Copy, Debug)]
pub struct GateTopkForward<'a> {
    /// Shape.
    pub shape: GateMixShape,
    /// Experts each gate selects per row, 1 to the number it sees.
    pub k: usize,
    /// Which experts each gate sees (all, or shared plus its own).
    pub access: ExpertAccess,
    /// Whether each gate selects its own `k` experts or all share one selection.
    pub selection: Selection,
    /// Both phases, or the gate values alone, or the mixtures alone (to run sparse
    /// experts in between on the rows the gate values route to them).
    pub stages: ForwardStages,
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
    /// Added to the logits before the selection and softmax when given,
    /// `[gates, rows, experts]`: a noisy gate's `ε ⊙ softplus(n)` (see
    /// [`noise`](super::noise)). Read by the gate phase only. `None` leaves every
    /// result bitwise as without the field.
    pub logit_offset: Option<BufferView<'a>>,
}

/// The top-k gate + mix kernels on one device. Cheap to clone; pipelines are compiled
/// on first use and cached per device.
#[derive(Clone, Debug)]
pub struct GateTopk {
    dense: GateMix,
}

impl GateTopk {
    /// The kernels on `gpu`.
    pub fn new(gpu: &Gpu) -> Self {
        GateTopk {
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

    /// Checks and binds the forward pass: one dispatch, with the tiling the tuner
    /// picks for the dense gate of this shape.
    pub fn forward(&self, args: &GateTopkForward<'_>) -> Result<Dispatch> {
        let tiling = self
            .dense
            .forward_tiling("gate_topk forward", &args.shape, args.precision)?;
        self.forward_with(args, tiling)
    }

    /// [`forward`](Self::forward) with a given tiling; every tiling gives bitwise
    /// equal results.
    pub fn forward_with(
        &self,
        args: &GateTopkForward<'_>,
        tiling: GateMixTiling,
    ) -> Result<Dispatch> {
        self.forward_inner(args, None, tiling)
    }

    fn forward_inner(
        &self,
        args: &GateTopkForward<'_>,
        p: Option<BufferView<'_>>,
        tiling: GateMixTiling,
    ) -> Result<Dispatch> {
        const CTX: &str = "gate_topk forward";
        let dense = GateMixForward {
            shape: args.shape,
            precision: args.precision,
            x: args.x,
            wg: args.wg,
            bg: args.bg,
            h: args.h,
            g: args.g,
            m: args.m,
        };
        self.dense.forward_top_k(
            ("gate_topk", CTX),
            &dense,
            (args.k, args.access, args.selection, args.stages),
            (args.logit_offset, p),
            tiling,
        )
    }

    /// [`forward`](Self::forward) that also writes `p: [gates, rows, experts]`, the
    /// full softmax of each row's logits (with the logit offset, if any) over the
    /// experts its gate sees, before the top-k cut, 0 for the experts it does not see:
    /// what the load-balancing loss's load kind averages (see
    /// [`Balance::forward_load`](super::balance::Balance::forward_load)). Written by
    /// the gate phase (a [`ForwardStages::MixOnly`] dispatch leaves it alone); `p` must
    /// not overlap any other operand. Every other result is bitwise as without it.
    pub fn forward_keeping_softmax(
        &self,
        args: &GateTopkForward<'_>,
        p: BufferView<'_>,
    ) -> Result<Dispatch> {
        let tiling = self
            .dense
            .forward_tiling("gate_topk forward", &args.shape, args.precision)?;
        self.forward_keeping_softmax_with(args, p, tiling)
    }

    /// [`forward_keeping_softmax`](Self::forward_keeping_softmax) with a given
    /// tiling; every tiling gives bitwise equal results.
    pub fn forward_keeping_softmax_with(
        &self,
        args: &GateTopkForward<'_>,
        p: BufferView<'_>,
        tiling: GateMixTiling,
    ) -> Result<Dispatch> {
        self.forward_inner(args, Some(p), tiling)
    }

    /// Checks and binds the backward pass: the dense gate's ([`GateMix::backward`])
    /// on this kernel's `G`, which is the top-k gradient: `dH` and `dz` (zero outside
    /// each row's selection) in one dispatch, then `dWg` with `dbg`, then `dX` when
    /// asked for. Record them in order.
    pub fn backward(&self, args: &GateMixBackward<'_>) -> Result<Vec<Dispatch>> {
        self.dense.backward(args)
    }

    crate::kernels::encoders! {
        encode_forward => forward(args: &GateTopkForward<'_>);
        encode_backward => backward(args: &GateMixBackward<'_>);
    }
}
