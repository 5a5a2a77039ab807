//! Fused gate + mix: for every gate `t`, `G_t = softmax(X · Wg_t + bg_t)` and
//! `M_t = Σ_e G_t[:, e] ⊙ H_e` in one dispatch, and the backward pass: one dispatch for
//! `dH` and the logit gradient `dz`, then `dWg`, `dbg` (and optionally `dX`) as grouped
//! GEMMs on `dz`.
//!
//! Shader: `shaders/gate_mix.wgsl`, with the storage part (`shaders/storage_*.wgsl`)
//! of the call's [`Precision`].
//!
//! # Top-k mode
//!
//! [`GateMix::forward_top_k`] keeps, for every gate and row, only the `k` largest
//! logits of the experts the gate sees (equal logits: the lower expert first), takes
//! the softmax over those `k` alone and writes zeros for the other experts, in the same
//! dispatch and tiles as the dense gate (`k` is a run-time value; `k = experts` is the
//! dense softmax). [`GateMixTopK`] also says which experts each gate sees (task-specific
//! experts, [`ExpertAccess`]), whether the gates of a row share one selection
//! ([`Selection::Shared`]: the `k` experts of largest summed logits, so sparse experts
//! compute `k` per row however many gates there are), whether to run the gate and mix
//! phases together or apart (sparse experts run in between, [`ForwardStages`]), a
//! logit offset added before the selection (a noisy gate's noise, see
//! [`noise`](super::noise)) and an output for the full softmax before the cut (what the
//! balancing loss's load kind averages, see [`balance`](super::balance)).
//!
//! The backward pass is the dense one on the top-k `G`: where `G` is zero,
//! `dz = G ⊙ (dg − ⟨G, dg⟩)` is zero, and over the selection it is the softmax gradient
//! of the selected logits, so the gradient flows only through the selected logits.
//!
//! # Example
//!
//! Two gates over three experts, each gate's softmax mixing the experts' outputs `H`,
//! then the backward pass, recorded into one compute pass of the caller's:
//!
//! ```
//! use mmoe_wgpu::kernels::gate_mix::{
//!     GateMix, GateMixBackward, GateMixForward, GateMixShape, GateMixTopK,
//! };
//! use mmoe_wgpu::kernels::{BufferView, Precision};
//! use mmoe_wgpu::Gpu;
//!
//! # fn main() -> mmoe_wgpu::Result<()> {
//! let gpu = Gpu::new()?;
//! let shape = GateMixShape { gates: 2, experts: 3, rows: 4, inputs: 5, width: 6, input: mmoe_wgpu::InputLayout::Shared };
//! let filled = |name: &str, n: usize| -> mmoe_wgpu::Result<wgpu::Buffer> {
//!     gpu.upload(name, &(0..n).map(|i| (i % 7) as f32 / 7.0).collect::<Vec<_>>())
//! };
//! let (x, wg, bg, h) = (
//!     filled("x", shape.x_len())?,
//!     filled("wg", shape.wg_len())?,
//!     filled("bg", shape.bg_len())?,
//!     filled("h", shape.h_len())?,
//! );
//! let dm = filled("dm", shape.m_len())?;
//! let out = |name: &str, n: usize| gpu.storage_buffer(name, 4 * n as u64);
//! let (g, m) = (out("g", shape.g_len())?, out("m", shape.m_len())?);
//! let (dh, dz) = (out("dh", shape.h_len())?, out("dz", shape.g_len())?);
//! let (dwg, dbg) = (out("dwg", shape.wg_len())?, out("dbg", shape.bg_len())?);
//!
//! let kernels = GateMix::new(&gpu);
//! let mut encoder = gpu.device().create_command_encoder(&Default::default());
//! {
//!     let mut pass = encoder.begin_compute_pass(&Default::default());
//!     kernels.encode_forward(&mut pass, &GateMixForward {
//!         shape,
//!         precision: Precision::F32,
//!         x: BufferView::new(&x),
//!         wg: BufferView::new(&wg),
//!         bg: BufferView::new(&bg),
//!         h: BufferView::new(&h),
//!         g: BufferView::new(&g),
//!         m: BufferView::new(&m),
//!     })?;
//!     kernels.encode_backward(&mut pass, &GateMixBackward {
//!         shape,
//!         precision: Precision::F32,
//!         x: BufferView::new(&x),
//!         wg: BufferView::new(&wg),
//!         h: BufferView::new(&h),
//!         g: BufferView::new(&g),
//!         dm: BufferView::new(&dm),
//!         dh: BufferView::new(&dh),
//!         dz: BufferView::new(&dz),
//!         dwg: BufferView::new(&dwg),
//!         dbg: BufferView::new(&dbg),
//!         dx: None,
//!         accumulate_dx: false,
//!         relu_dh: false,
//!     })?;
//! }
//! gpu.queue().submit([encoder.finish()]);
//!
//! // Each gate's probabilities sum to one on every row.
//! let probabilities: Vec<f32> = gpu.read(&g, 0, shape.g_len())?;
//! for row in probabilities.chunks(shape.experts) {
//!     assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
//! }
//!
//! // The top-2 mode: two experts per row share the weight.
//! let mut encoder = gpu.device().create_command_encoder(&Default::default());
//! let forward = GateMixForward {
//!     shape,
//!     precision: Precision::F32,
//!     x: BufferView::new(&x),
//!     wg: BufferView::new(&wg),
//!     bg: BufferView::new(&bg),
//!     h: BufferView::new(&h),
//!     g: BufferView::new(&g),
//!     m: BufferView::new(&m),
//! };
//! kernels.encode_forward_top_k(&mut encoder, &forward, &GateMixTopK::new(2))?;
//! gpu.queue().submit([encoder.finish()]);
//! let top_2: Vec<f32> = gpu.read(&g, 0, shape.g_len())?;
//! for row in top_2.chunks(shape.experts) {
//!     assert_eq!(row.iter().filter(|&&p| p > 0.0).count(), 2);
//! }
//! # Ok(())
//! # }
//! ```

use super::binding::{program_for, storage_programs};
use super::grouped_gemm::{GroupedGemmBackwardInput, GroupedGemmBackwardWeights};
use super::{Dispatch, GroupedGemm, Operand, Precision, bind_operands};
use crate::Result;
use crate::gpu::{BindingKind, Gpu, ShaderProgram};
use crate::shape::Activation;
pub use crate::shape::{ExpertAccess, GateMixShape, MAX_SHARED_SELECTION_EXPERTS, Selection};

mod operands;
mod tiling;
mod tune;

pub use operands::{GateMixBackward, GateMixForward, GateMixTopK};

pub use tiling::GateMixTiling;

const SOURCE: (&str, &str) = ("gate_mix.wgsl", include_str!("../../shaders/gate_mix.wgsl"));

/// The kernels in f32 and f16 storage.
const PROGRAM: [ShaderProgram; 2] = storage_programs!("gate_mix", SOURCE);

/// The WGSL programs of this family.
pub const PROGRAMS: &[ShaderProgram] = &PROGRAM;

use BindingKind::{Read, ReadWrite};

crate::kernels::binding::host_struct! {
    /// Mirrors `GateMixParams` in the shader.
    struct GateMixParams {
        gates: u32,
        experts: u32,
        rows: u32,
        inputs: u32,
        width: u32,
        x_base: u32,
        wg_base: u32,
        bg_base: u32,
        h_base: u32,
        g_base: u32,
        m_base: u32,
        dm_base: u32,
        dh_base: u32,
        dz_base: u32,
        /// Experts kept per row: `experts` (dense) unless the top-k gate asks for fewer.
        k: u32,
        /// [`ExpertAccess::SharedAndOwn`]: the shared experts and each gate's own count
        /// (`own_experts` = 0: every gate sees every expert).
        shared_experts: u32,
        own_experts: u32,
        /// Forward phases: [`STAGE_GATE`] and/or [`STAGE_MIX`].
        stages: u32,
        /// Where the logit offset starts in its binding, and whether there is one (1) or
        /// not (0: the offset binding is a stand-in, never read).
        offset_base: u32,
        use_offset: u32,
        /// Where the full softmax output starts in its binding, and whether there is one
        /// (1) or not (0: the binding is a stand-in, never touched).
        p_base: u32,
        use_p: u32,
        /// 1: every gate keeps the same `k` experts per row ([`Selection::Shared`]).
        shared_selection: u32,
        /// Elements between the gates' blocks of `X`; 0 when every gate reads one `X`.
        x_gate_stride: u32,
        /// [`ExpertAccess::SharedGate`]: the gate that sees every expert (`u32::MAX`:
        /// none), and the experts it keeps per row.
        all_gate: u32,
        k_all: u32,
        /// 1: the backward stores `dH ⊙ [H > 0]` (see [`GateMixBackward::relu_dh`]).
        relu_dh: u32,
    }
}

/// Forward phase: logits and softmax into `G`.
const STAGE_GATE: u32 = 1;
/// Forward phase: `M` from `G` and `H`.
const STAGE_MIX: u32 = 2;

/// Which phases of the gate + mix forward pass a dispatch runs. Sparse experts run
/// between the two, on the rows the gate values route to them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ForwardStages {
    /// Gate values and mixtures in one dispatch.
    #[default]
    Both,
    /// The gate values `G` alone (`H` and `M` are not touched).
    GateOnly,
    /// The mixtures `M` from the `G` a [`GateOnly`](Self::GateOnly) dispatch wrote.
    MixOnly,
}

impl ForwardStages {
    fn bits(self) -> u32 {
        match self {
            ForwardStages::Both => STAGE_GATE | STAGE_MIX,
            ForwardStages::GateOnly => STAGE_GATE,
            ForwardStages::MixOnly => STAGE_MIX,
        }
    }
}

impl GateMixParams {
    fn new(s: &GateMixShape) -> Self {
        GateMixParams {
            gates: s.gates as u32,
            experts: s.experts as u32,
            rows: s.rows as u32,
            inputs: s.inputs as u32,
            width: s.width as u32,
            k: s.experts as u32,
            stages: ForwardStages::Both.bits(),
            x_gate_stride: (s.x_offset(1) - s.x_offset(0)) as u32,
            all_gate: u32::MAX,
            k_all: s.experts as u32,
            ..Default::default()
        }
    }
}

/// The gate + mix kernels on one device. Cheap to clone; pipelines are compiled on
/// first use and cached per device.
#[derive(Clone, Debug)]
pub struct GateMix {
    gpu: Gpu,
    gemm: GroupedGemm,
}

impl GateMix {
    /// The kernels on `gpu`.
    pub fn new(gpu: &Gpu) -> Self {
        GateMix {
            gpu: gpu.clone(),
            gemm: GroupedGemm::new(gpu),
        }
    }

    /// Checks and binds the forward pass: one dispatch.
    pub fn forward(&self, args: &GateMixForward<'_>) -> Result<Dispatch> {
        let t = self.forward_tiling("gate_mix forward", &args.shape, args.precision)?;
        self.forward_with(args, t)
    }

    /// [`forward`](Self::forward) with a given tiling.
    pub fn forward_with(
        &self,
        args: &GateMixForward<'_>,
        tiling: GateMixTiling,
    ) -> Result<Dispatch> {
        let dense = GateMixTopK::new(args.shape.experts);
        self.forward_top_k_at("gate_mix forward", args, &dense, tiling)
    }

    /// Checks and binds the forward pass in top-k mode (see the [module
    /// docs](self#top-k-mode)): one dispatch, with the dense gate's tuned tiling (both
    /// run the same tiles).
    pub fn forward_top_k(
        &self,
        args: &GateMixForward<'_>,
        top_k: &GateMixTopK<'_>,
    ) -> Result<Dispatch> {
        const CTX: &str = "gate_mix forward_top_k";
        let t = self.forward_tiling(CTX, &args.shape, args.precision)?;
        self.forward_top_k_at(CTX, args, top_k, t)
    }

    /// [`forward_top_k`](Self::forward_top_k) with a given tiling; every tiling gives
    /// bitwise equal results.
    pub fn forward_top_k_with(
        &self,
        args: &GateMixForward<'_>,
        top_k: &GateMixTopK<'_>,
        tiling: GateMixTiling,
    ) -> Result<Dispatch> {
        self.forward_top_k_at("gate_mix forward_top_k", args, top_k, tiling)
    }

    /// The forward tiling for `shape`, tuned on first use of its shape class.
    fn forward_tiling(
        &self,
        ctx: &str,
        shape: &GateMixShape,
        precision: Precision,
    ) -> Result<GateMixTiling> {
        shape.validate(ctx)?;
        precision.check(&self.gpu, ctx)?;
        self.tuned(tune::GatePass::Forward, shape, precision)
    }

    /// Either forward mode, `ctx` naming it in errors.
    fn forward_top_k_at(
        &self,
        ctx: &'static str,
        args: &GateMixForward<'_>,
        top_k: &GateMixTopK<'_>,
        tiling: GateMixTiling,
    ) -> Result<Dispatch> {
        let GateMixTopK {
            k,
            access,
            selection,
            stages,
            logit_offset,
            full_softmax: p_out,
        } = *top_k;
        let s = &args.shape;
        s.validate(ctx)?;
        access.validate(ctx, s)?;
        crate::shape::check_k(ctx, s, k, access)?;
        crate::shape::check_selection(ctx, s, access, selection)?;
        args.precision.check(&self.gpu, ctx)?;
        tiling.validate(&self.gpu, "gate_mix")?;
        let operands = [
            Operand::new("x", 1, args.x, s.x_len(), Read),
            Operand::new("wg", 2, args.wg, s.wg_len(), Read),
            Operand::new("bg", 3, args.bg, s.bg_len(), Read),
            Operand::new("h", 4, args.h, s.h_len(), Read),
            Operand::new("g", 5, args.g, s.g_len(), ReadWrite),
            Operand::new("m", 6, args.m, s.m_len(), ReadWrite),
        ]
        .map(|o| o.of(args.precision));
        // Without an offset, bg stands in at its slot: the layout wants a buffer there.
        let offset = match logit_offset {
            Some(view) => {
                Operand::new("logit_offset", 11, view, s.g_len(), Read).of(args.precision)
            }
            None => operands[2].stand_in(11),
        };
        // Without a softmax output, m stands in at its slot, never touched.
        let full = match p_out {
            Some(view) => Operand::new("p", 12, view, s.g_len(), ReadWrite).of(args.precision),
            None => operands[5].stand_in(12),
        };
        let mut all = operands.to_vec();
        all.extend([offset, full]);
        let bound = bind_operands(&self.gpu, ctx, &all)?;
        let mut p = GateMixParams::new(s);
        p.offset_base = bound[6].base;
        p.use_offset = logit_offset.is_some() as u32;
        p.p_base = bound[7].base;
        p.use_p = p_out.is_some() as u32;
        p.k = k as u32;
        p.shared_selection = (selection == Selection::Shared) as u32;
        p.stages = stages.bits();
        p.k_all = k as u32;
        match access {
            ExpertAccess::All => {}
            ExpertAccess::SharedAndOwn { shared, own } => {
                p.shared_experts = shared as u32;
                p.own_experts = own as u32;
            }
            ExpertAccess::SharedGate { shared, own, tasks } => {
                p.shared_experts = shared as u32;
                p.own_experts = own as u32;
                p.all_gate = tasks as u32;
                p.k_all = access.gate_k(s, tasks, k) as u32;
            }
        }
        p.x_base = bound[0].base;
        p.wg_base = bound[1].base;
        p.bg_base = bound[2].base;
        p.h_base = bound[3].base;
        p.g_base = bound[4].base;
        p.m_base = bound[5].base;
        self.build(ctx, "forward", tiling, args.precision, &p, &bound)
    }

    /// Checks and binds the backward pass: `dH` and `dz` in one dispatch, then `dWg`
    /// with `dbg`, then `dX` when asked for. Record them in order.
    pub fn backward(&self, args: &GateMixBackward<'_>) -> Result<Vec<Dispatch>> {
        args.shape.validate("gate_mix backward")?;
        args.precision.check(&self.gpu, "gate_mix backward")?;
        let t = self.tuned(tune::GatePass::Backward, &args.shape, args.precision)?;
        self.backward_with(args, t)
    }

    /// [`backward`](Self::backward) with a given tiling for its first dispatch.
    pub fn backward_with(
        &self,
        args: &GateMixBackward<'_>,
        tiling: GateMixTiling,
    ) -> Result<Vec<Dispatch>> {
        const CTX: &str = "gate_mix backward";
        let s = &args.shape;
        s.validate(CTX)?;
        let precision = args.precision;
        precision.check(&self.gpu, CTX)?;
        tiling.validate(&self.gpu, "gate_mix")?;
        let own = [
            Operand::new("h", 4, args.h, s.h_len(), Read),
            Operand::new("g", 7, args.g, s.g_len(), Read),
            Operand::new("dm", 8, args.dm, s.m_len(), Read),
            Operand::new("dh", 9, args.dh, s.h_len(), ReadWrite),
            Operand::new("dz", 10, args.dz, s.g_len(), ReadWrite),
        ]
        .map(|o| o.of(precision));
        // The three dispatches run in sequence, so no output of one may clobber an
        // operand of another, and dz, written first, is then read next to the GEMMs'
        // outputs. Checked here, under this kernel's operand names.
        let dwg = Operand::new("dwg", 11, args.dwg, s.wg_len(), ReadWrite).of(precision);
        let dbg = Operand::new("dbg", 12, args.dbg, s.bg_len(), ReadWrite).of(precision);
        let dx = args
            .dx
            .map(|v| Operand::new("dx", 13, v, s.x_len(), ReadWrite).of(precision));
        let mut all = own.to_vec();
        all.extend([
            Operand::new("x", 1, args.x, s.x_len(), Read).of(precision),
            Operand::new("wg", 2, args.wg, s.wg_len(), Read).of(precision),
            dwg,
            dbg,
        ]);
        all.extend(dx);
        bind_operands(&self.gpu, CTX, &all)?;
        let dz_read = Operand {
            kind: Read,
            ..own[4]
        };
        bind_operands(&self.gpu, CTX, &[dz_read, dwg, dbg])?;
        if let Some(dx) = dx {
            bind_operands(&self.gpu, CTX, &[dz_read, dx])?;
        }

        let bound = bind_operands(&self.gpu, CTX, &own)?;
        let mut p = GateMixParams::new(s);
        p.h_base = bound[0].base;
        p.g_base = bound[1].base;
        p.dm_base = bound[2].base;
        p.dh_base = bound[3].base;
        p.dz_base = bound[4].base;
        p.relu_dh = u32::from(args.relu_dh);
        let mut dispatches = vec![self.build(CTX, "backward", tiling, precision, &p, &bound)?];

        let gemm = s.logits_gemm();
        dispatches.push(self.gemm.backward_weights(&GroupedGemmBackwardWeights {
            shape: gemm,
            activation: Activation::Identity,
            precision,
            x: args.x,
            dy: args.dz,
            y: None,
            dw: args.dwg,
            db: Some(args.dbg),
        })?);
        if let Some(dx) = args.dx {
            dispatches.push(self.gemm.backward_input(&GroupedGemmBackwardInput {
                shape: gemm,
                activation: Activation::Identity,
                precision,
                dy: args.dz,
                y: None,
                w: args.wg,
                dx,
                accumulate: args.accumulate_dx,
            })?);
        }
        Ok(dispatches)
    }

    crate::kernels::encoders! {
        encode_forward => forward(args: &GateMixForward<'_>);
        encode_forward_top_k => forward_top_k(args: &GateMixForward<'_>, top_k: &GateMixTopK<'_>);
        encode_backward => backward(args: &GateMixBackward<'_>);
    }

    /// Both kernels run one workgroup per block of rows.
    #[allow(clippy::too_many_arguments)]
    fn build(
        &self,
        ctx: &'static str,
        entry: &'static str,
        tiling: GateMixTiling,
        precision: Precision,
        params: &GateMixParams,
        bound: &[super::binding::BoundOperand<'_>],
    ) -> Result<Dispatch> {
        let workgroups = [tiling.row_workgroups(params.rows as usize), 1, 1];
        let program = (
            program_for(&PROGRAM, precision),
            entry,
            &tiling.constants()[..],
        );
        Dispatch::launch(&self.gpu, ctx, program, params, (bound, &[]), workgroups)
    }
}
