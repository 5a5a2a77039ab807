//! Grouped GEMM: `Y_g = act(X_g · W_g + b_g)` for all groups in one dispatch, and its
//! backward pass (`dX`, and `dW` with `db` in one dispatch).
//!
//! Every pass also runs *ragged*: each group on only the rows a row map (from the
//! [`routing`](super::routing) kernel) routes to it, with the same tilings and tuning
//! (see [Ragged mode](#ragged-mode)).
//!
//! Shaders: `shaders/grouped_gemm.wgsl` (layouts, naive kernels),
//! `shaders/grouped_gemm_tiles.wgsl` (the register tiles), extended by
//! `shaders/grouped_gemm_subgroup.wgsl` (rows shared by subgroup broadcast) or
//! `shaders/grouped_gemm_workgroup.wgsl` (rows shared through workgroup memory, on any
//! adapter), and `shaders/grouped_gemm_reduce.wgsl` (the ragged input gradient's sum
//! over groups), with the storage part (`shaders/storage_*.wgsl`) of the call's
//! [`Precision`]. Every [`Tiling`] gives the same bits.
//!
//! # Example
//!
//! The expert layer `H_e = relu(X · W_e + b_e)` of 2 experts on a shared input, recorded
//! into the caller's encoder:
//!
//! ```
//! use mmoe_wgpu::kernels::grouped_gemm::{GroupedGemm, GroupedGemmForward};
//! use mmoe_wgpu::kernels::{BufferView, Precision};
//! use mmoe_wgpu::{Activation, GemmShape, Gpu, InputLayout};
//!
//! # fn main() -> mmoe_wgpu::Result<()> {
//! let gpu = Gpu::new()?;
//! let shape = GemmShape { groups: 2, rows: 3, inputs: 2, outputs: 2, input: InputLayout::Shared };
//! let x = gpu.upload("x", &[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0])?; // [rows, inputs]
//! let w = gpu.upload("w", &[1.0f32, 0.0, 0.0, 1.0, -1.0, 0.0, 0.0, -1.0])?; // I, then −I
//! let b = gpu.upload("b", &[0.5f32, 0.5, 0.5, 0.5])?;
//! let y = gpu.storage_buffer("y", 4 * shape.y_len() as u64)?;
//!
//! let mut encoder = gpu.device().create_command_encoder(&Default::default());
//! GroupedGemm::new(&gpu).encode_forward(
//!     &mut encoder,
//!     &GroupedGemmForward {
//!         shape,
//!         activation: Activation::Relu,
//!         precision: Precision::F32,
//!         x: BufferView::new(&x),
//!         w: BufferView::new(&w),
//!         bias: Some(BufferView::new(&b)),
//!         y: BufferView::new(&y),
//!     },
//! )?;
//! gpu.queue().submit([encoder.finish()]);
//!
//! let h: Vec<f32> = gpu.read(&y, 0, shape.y_len())?; // [groups, rows, outputs]
//! assert_eq!(h, [1.5, 2.5, 3.5, 4.5, 5.5, 6.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
//! # Ok(())
//! # }
//! ```
//!
//! # Ragged mode
//!
//! With sparse (top-k) gates each expert only needs the rows some gate routed to it.
//! [`GroupedGemm::forward_ragged`], [`GroupedGemm::backward_weights_ragged`] and
//! [`GroupedGemm::backward_input_ragged`] take the dense passes' arguments plus a
//! [`RowMap`] (the [`routing`](super::routing) kernel's output) and run the same
//! kernels, tilings and tuning over it:
//!
//! - forward: `Y_g[r] = act(X_g[r] · W_g + b_g)` for the rows `r` routed to group
//!   `g`, and `Y_g[r] = 0` exactly for the others (not `act(b_g)`: an expert no gate
//!   chose for a row contributes nothing to it);
//! - weight gradients: `dW_g = Σ_{routed r} X_g[r]ᵀ · dZ_g[r]` and
//!   `db_g = Σ_{routed r} dZ_g[r]`, `dZ = dY ⊙ act'(Y)`, summed in the map's order
//!   (ascending rows);
//! - input gradient, per-group `X` (one dispatch): `dX_g[r] = dZ_g[r] · W_gᵀ` for the
//!   routed rows, exact zeros for the others (with `accumulate` they stay as they
//!   were: the gradient adds nothing there);
//! - input gradient, shared `X` (two dispatches, as in MegaBlocks): each group's routed
//!   rows of `dZ_g · W_gᵀ` into a caller's [`SlotScratch`], compact (group `g`'s from
//!   row `Σ_{g' < g} count_g'` on, in f32 whatever the precision), then a reduce
//!   `dX[r] = Σ_g` of those rows over the groups `r` is routed to, in ascending `g`
//!   (each found by binary search in `g`'s list). The scratch holds `rows ·
//!   max_routes_per_row` rows ([`SlotScratch::elements`]; for `T` top-k gates the
//!   bound is `k · T`, capped at the groups).
//!
//! The dense [`GroupedGemm::backward_input`] also gives the ragged input gradient
//! whenever `dZ` is zero on unrouted rows (with ReLU that holds by itself; with the
//! identity `dY` must be zero there, as the gate's backward pass makes it), but it
//! multiplies every row of every group.
//!
//! A routed row's outputs are bitwise those of the dense pass, and with every row
//! routed the weight gradients and a per-group input gradient are too; a shared input
//! gradient then agrees within rounding (the dense pass sums all groups in one chain,
//! the ragged one each group's, then the groups). Every tiling gives the same bits.
//! The grid is the dense one (the counts live on the device and are never read back):
//! a workgroup whose rows all lie past its group's count only writes zeros (or
//! nothing), so the work follows `Σ_g count_g`, rounded up to the tiling's row block
//! per group. [`ragged_flops`] turns counts read back with [`read_counts`] into FLOPs
//! for reports.

use super::{BufferView, Dispatch, Operand, Precision, bind_operands};
use crate::gpu::{BindingKind, Gpu};
use crate::shape::{Activation, GemmShape, InputLayout, MAX_COLUMN_WINDOWS};
use crate::{Error, Result};

mod ragged;
mod tiling;
mod tune;

use ragged::RaggedInput;
#[cfg(test)]
pub(crate) use ragged::ReduceParams;
pub use ragged::{RowMap, SlotScratch, ragged_flops, read_counts};
pub use tiling::{PROGRAMS, Tiling};
use tiling::{Pass, REDUCE};

use BindingKind::{Read, ReadWrite};

const FLAG_BIAS: u32 = 1;
const FLAG_ACCUMULATE: u32 = 2;
const FLAG_PACK_GROUPS: u32 = 4;
const FLAG_COMPACT_DX: u32 = 16;
const FLAG_DB_APART: u32 = 32;
/// Binding slot of the row map (ragged mode), or of a stand-in that is never read.
const ROUTES_SLOT: u32 = 10;
/// Binding slot of the ragged input gradient's compact rows (shared X), or of a
/// stand-in that is never touched.
const SLOTS_SLOT: u32 = 11;

crate::kernels::binding::host_struct! {
    /// Mirrors `GemmParams` in the shader.
    struct GemmParams {
        groups: u32,
        rows: u32,
        inputs: u32,
        outputs: u32,
        x_group_stride: u32,
        activation: u32,
        flags: u32,
        x_base: u32,
        w_base: u32,
        b_base: u32,
        y_base: u32,
        dy_base: u32,
        dx_base: u32,
        dw_base: u32,
        db_base: u32,
        routes_base: u32,
        slots_base: u32,
        slots: u32,
        x_tasks: u32,
        x_shared: u32,
        x_own: u32,
        x_columns: u32,
        windows: u32,
        _pad0: u32,
        window: [[u32; 4]; MAX_COLUMN_WINDOWS],
    }
}

impl GemmParams {
    fn new(shape: &GemmShape, activation: Activation, flags: u32) -> Self {
        let (tasks, shared, own) = shape.level_form();
        let mut p = GemmParams {
            groups: shape.groups as u32,
            rows: shape.rows as u32,
            inputs: shape.inputs as u32,
            outputs: shape.outputs as u32,
            x_group_stride: match shape.input {
                InputLayout::Shared | InputLayout::Columns(_) => 0,
                InputLayout::PerGroup | InputLayout::Level { .. } => {
                    (shape.rows * shape.inputs) as u32
                }
            },
            x_tasks: tasks as u32,
            x_shared: shared as u32,
            x_own: own as u32,
            x_columns: shape.x_columns() as u32,
            activation: activation.code(),
            flags,
            ..Default::default()
        };
        if let InputLayout::Columns(windows) = &shape.input {
            let mut first = 0;
            for (at, run) in p.window.iter_mut().zip(windows.runs()) {
                *at = [first as u32, run.offset as u32, run.width as u32, 0];
                first += run.groups;
            }
            p.windows = windows.runs().len() as u32;
        }
        p
    }
}

/// Operands of the forward pass.
#[derive(Clone, Copy, Debug)]
pub struct GroupedGemmForward<'a> {
    /// Shape of the product.
    pub shape: GemmShape,
    /// Activation applied in the epilogue.
    pub activation: Activation,
    /// Storage type of every operand; accumulation is f32 either way.
    pub precision: Precision,
    /// `X`: `[rows, inputs]` or `[groups, rows, inputs]`.
    pub x: BufferView<'a>,
    /// `W: [groups, inputs, outputs]`.
    pub w: BufferView<'a>,
    /// `b: [groups, outputs]`, or no bias.
    pub bias: Option<BufferView<'a>>,
    /// Output `Y: [groups, rows, outputs]`; a buffer distinct from the inputs'.
    pub y: BufferView<'a>,
}

/// Operands of the input gradient `dX = Σ_g dZ_g · W_gᵀ` (summed over groups when `X`
/// is shared), with `dZ = dY ⊙ act'(Y)`.
#[derive(Clone, Copy, Debug)]
pub struct GroupedGemmBackwardInput<'a> {
    /// Shape of the forward product.
    pub shape: GemmShape,
    /// The forward pass's activation.
    pub activation: Activation,
    /// Storage type of every operand; accumulation is f32 either way.
    pub precision: Precision,
    /// `dY: [groups, rows, outputs]`.
    pub dy: BufferView<'a>,
    /// The forward output `Y`; required unless the activation is the identity.
    pub y: Option<BufferView<'a>>,
    /// `W: [groups, inputs, outputs]`.
    pub w: BufferView<'a>,
    /// Output `dX`, shaped like `X`.
    pub dx: BufferView<'a>,
    /// Add into `dX` instead of overwriting it (another op also feeds `X`).
    pub accumulate: bool,
}

/// Operands of the weight gradients `dW_g = X_gᵀ · dZ_g` and `db_g = Σ_rows dZ_g`, in
/// one dispatch.
#[derive(Clone, Copy, Debug)]
pub struct GroupedGemmBackwardWeights<'a> {
    /// Shape of the forward product.
    pub shape: GemmShape,
    /// The forward pass's activation.
    pub activation: Activation,
    /// Storage type of every operand; accumulation is f32 either way.
    pub precision: Precision,
    /// The forward input `X`.
    pub x: BufferView<'a>,
    /// `dY: [groups, rows, outputs]`.
    pub dy: BufferView<'a>,
    /// The forward output `Y`; required unless the activation is the identity.
    pub y: Option<BufferView<'a>>,
    /// Output `dW: [groups, inputs, outputs]`.
    pub dw: BufferView<'a>,
    /// Output `db: [groups, outputs]`, or none when the forward had no bias.
    pub db: Option<BufferView<'a>>,
}

/// The grouped GEMM kernels on one device. Cheap to clone; pipelines are compiled on
/// first use and cached per device.
#[derive(Clone, Debug)]
pub struct GroupedGemm {
    gpu: Gpu,
}

impl GroupedGemm {
    /// The kernels on `gpu`.
    pub fn new(gpu: &Gpu) -> Self {
        GroupedGemm { gpu: gpu.clone() }
    }

    /// Checks and binds the forward pass, with the tiling tuned for its shape.
    pub fn forward(&self, args: &GroupedGemmForward<'_>) -> Result<Dispatch> {
        args.shape.validate("grouped_gemm forward")?;
        args.precision.check(&self.gpu, "grouped_gemm forward")?;
        let t = self.tuned(
            Pass::Forward,
            &args.shape,
            args.activation,
            args.bias.is_some(),
            args.precision,
        )?;
        self.forward_with(args, t)
    }

    /// [`forward`](Self::forward) with a given tiling.
    pub fn forward_with(&self, args: &GroupedGemmForward<'_>, tiling: Tiling) -> Result<Dispatch> {
        self.forward_rows("grouped_gemm forward", args, None, tiling)
    }

    /// The forward pass over every row, or ragged over the rows of `rows`.
    fn forward_rows(
        &self,
        ctx: &'static str,
        args: &GroupedGemmForward<'_>,
        rows: Option<RowMap<'_>>,
        tiling: Tiling,
    ) -> Result<Dispatch> {
        let s = &args.shape;
        s.validate(ctx)?;
        args.precision.check(&self.gpu, ctx)?;
        tiling.validate(&self.gpu)?;
        Pass::Forward.check_loop_budget(&self.gpu, ctx, s, (rows.is_some(), &tiling))?;
        let flags = if args.bias.is_some() { FLAG_BIAS } else { 0 };
        let w = Operand::new("w", 2, args.w, s.w_len(), Read).of(args.precision);
        let operands = [
            Operand::new("x", 1, args.x, s.x_len(), Read).of(args.precision),
            w,
            match args.bias {
                Some(b) => Operand::new("bias", 3, b, s.b_len(), Read).of(args.precision),
                None => w.stand_in(3),
            },
            Operand::new("y", 4, args.y, s.y_len(), ReadWrite).of(args.precision),
            ragged::routes_operand(ctx, s, rows, &w)?,
        ];
        let bound = bind_operands(&self.gpu, ctx, &operands)?;
        let mut p = GemmParams::new(s, args.activation, flags);
        p.x_base = bound[0].base;
        p.w_base = bound[1].base;
        p.b_base = bound[2].base;
        p.y_base = bound[3].base;
        p.routes_base = bound[4].base;
        let (workgroups, pack) = tiling.output_workgroups(s, s.rows, rows.is_some());
        p.flags |= pack;
        self.build(
            ctx,
            Pass::Forward,
            tiling,
            args.precision,
            &p,
            &bound,
            (workgroups, rows.is_some()),
        )
    }

    /// Checks and binds the input gradient, with the tiling tuned for its shape.
    pub fn backward_input(&self, args: &GroupedGemmBackwardInput<'_>) -> Result<Dispatch> {
        args.shape.validate("grouped_gemm backward_input")?;
        args.precision
            .check(&self.gpu, "grouped_gemm backward_input")?;
        let t = self.tuned(
            Pass::BackwardInput,
            &args.shape,
            args.activation,
            false,
            args.precision,
        )?;
        self.backward_input_with(args, t)
    }

    /// [`backward_input`](Self::backward_input) with a given tiling.
    pub fn backward_input_with(
        &self,
        args: &GroupedGemmBackwardInput<'_>,
        tiling: Tiling,
    ) -> Result<Dispatch> {
        self.backward_input_rows("grouped_gemm backward_input", args, None, tiling)
    }

    /// The input gradient over every row, or ragged over the slots of a row map
    /// (each group's dX rows, or with a shared X its compact rows in a scratch).
    fn backward_input_rows(
        &self,
        ctx: &'static str,
        args: &GroupedGemmBackwardInput<'_>,
        ragged: Option<RaggedInput<'_>>,
        tiling: Tiling,
    ) -> Result<Dispatch> {
        let s = &args.shape;
        s.validate(ctx)?;
        args.precision.check(&self.gpu, ctx)?;
        tiling.validate(&self.gpu)?;
        Pass::BackwardInput.check_loop_budget(&self.gpu, ctx, s, (ragged.is_some(), &tiling))?;
        let w = Operand::new("w", 2, args.w, s.w_len(), Read).of(args.precision);
        let dy = Operand::new("dy", 5, args.dy, s.y_len(), Read).of(args.precision);
        let compact = ragged.and_then(|r| r.compact);
        let (dx, slots) = match compact {
            None => {
                let dx = Operand::new("dx", 7, args.dx, s.x_len(), ReadWrite).of(args.precision);
                (dx, dx.stand_in(SLOTS_SLOT))
            }
            // The scratch in f32 whatever the precision: the reduce rounds once.
            Some(c) => {
                let scratch =
                    Operand::new("scratch", SLOTS_SLOT, c.view, c.slots * s.inputs, ReadWrite);
                (scratch.stand_in(7), scratch)
            }
        };
        let operands = [
            w,
            dy,
            saved_output(ctx, args.activation, args.y, &dy, s.y_len())?.of(args.precision),
            dx,
            ragged::routes_operand(ctx, s, ragged.map(|r| r.map), &w)?,
            slots,
        ];
        let bound = bind_operands(&self.gpu, ctx, &operands)?;
        let mut flags = if args.accumulate { FLAG_ACCUMULATE } else { 0 };
        if compact.is_some() {
            flags |= FLAG_COMPACT_DX;
        }
        let mut p = GemmParams::new(s, args.activation, flags);
        p.w_base = bound[0].base;
        p.dy_base = bound[1].base;
        p.y_base = bound[2].base;
        p.dx_base = bound[3].base;
        p.routes_base = bound[4].base;
        p.slots_base = bound[5].base;
        p.slots = compact.map_or(0, |c| c.slots as u32);
        // Ragged, a workgroup holds one group's slots whatever the layout.
        let groups = if ragged.is_some() {
            s.groups
        } else {
            s.x_groups()
        };
        let workgroups = tiling.workgroups(s.rows, s.x_columns(), groups);
        self.build(
            ctx,
            Pass::BackwardInput,
            tiling,
            args.precision,
            &p,
            &bound,
            (workgroups, ragged.is_some()),
        )
    }

    /// Checks and binds the weight (and bias) gradients, with the tiling tuned for
    /// its shape.
    pub fn backward_weights(&self, args: &GroupedGemmBackwardWeights<'_>) -> Result<Dispatch> {
        args.shape.validate("grouped_gemm backward_weights")?;
        args.precision
            .check(&self.gpu, "grouped_gemm backward_weights")?;
        let t = self.tuned(
            Pass::BackwardWeights,
            &args.shape,
            args.activation,
            args.db.is_some(),
            args.precision,
        )?;
        self.backward_weights_with(args, t)
    }

    /// [`backward_weights`](Self::backward_weights) with a given tiling.
    pub fn backward_weights_with(
        &self,
        args: &GroupedGemmBackwardWeights<'_>,
        tiling: Tiling,
    ) -> Result<Dispatch> {
        self.backward_weights_rows("grouped_gemm backward_weights", args, None, tiling)
    }

    /// The weight gradients summed over every row, or over the rows of `rows`.
    fn backward_weights_rows(
        &self,
        ctx: &'static str,
        args: &GroupedGemmBackwardWeights<'_>,
        rows: Option<RowMap<'_>>,
        tiling: Tiling,
    ) -> Result<Dispatch> {
        let s = &args.shape;
        s.validate(ctx)?;
        args.precision.check(&self.gpu, ctx)?;
        tiling.validate(&self.gpu)?;
        Pass::BackwardWeights.check_loop_budget(&self.gpu, ctx, s, (rows.is_some(), &tiling))?;
        let flags = if args.db.is_some() { FLAG_BIAS } else { 0 };
        let x = Operand::new("x", 1, args.x, s.x_len(), Read).of(args.precision);
        let dy = Operand::new("dy", 5, args.dy, s.y_len(), Read).of(args.precision);
        let dw = Operand::new("dw", 8, args.dw, s.w_len(), ReadWrite).of(args.precision);
        let operands = [
            x,
            dy,
            saved_output(ctx, args.activation, args.y, &dy, s.y_len())?.of(args.precision),
            dw,
            match args.db {
                Some(db) => Operand::new("db", 9, db, s.b_len(), ReadWrite).of(args.precision),
                None => dw.stand_in(9),
            },
            ragged::routes_operand(ctx, s, rows, &x)?,
        ];
        let bound = bind_operands(&self.gpu, ctx, &operands)?;
        let mut p = GemmParams::new(s, args.activation, flags);
        p.x_base = bound[0].base;
        p.dy_base = bound[1].base;
        p.y_base = bound[2].base;
        p.dw_base = bound[3].base;
        p.db_base = bound[4].base;
        p.routes_base = bound[5].base;
        // Output rows are the inputs, plus the bias row in the naive kernel (the tiled
        // ones sum db apart, in the first row block: see store_db_apart).
        let naive = matches!(tiling, Tiling::Naive { .. });
        let out_rows = s.inputs + usize::from(args.db.is_some() && naive);
        let (workgroups, pack) = tiling.output_workgroups(s, out_rows, rows.is_some());
        p.flags |= pack;
        if !naive {
            p.flags |= FLAG_DB_APART;
        }
        self.build(
            ctx,
            Pass::BackwardWeights,
            tiling,
            args.precision,
            &p,
            &bound,
            (workgroups, rows.is_some()),
        )
    }

    crate::kernels::encoders! {
        encode_forward => forward(args: &GroupedGemmForward<'_>);
        encode_backward_input => backward_input(args: &GroupedGemmBackwardInput<'_>);
        encode_backward_weights => backward_weights(args: &GroupedGemmBackwardWeights<'_>);
    }

    #[allow(clippy::too_many_arguments)]
    fn build(
        &self,
        ctx: &'static str,
        pass: Pass,
        tiling: Tiling,
        precision: Precision,
        params: &GemmParams,
        bound: &[super::binding::BoundOperand<'_>],
        (workgroups, ragged): ([u32; 3], bool),
    ) -> Result<Dispatch> {
        // Ragged mode is a pipeline constant: dense pipelines compile none of its map
        // lookups and masked stores (lavapipe's compile time, and the register tiles'
        // speed, follow the code a kernel holds).
        let mut constants = tiling.constants();
        if ragged {
            constants.push(("RAGGED", 1));
        }
        let program = (tiling.source(precision), tiling.entry(pass), &constants[..]);
        Dispatch::launch(&self.gpu, ctx, program, params, (bound, &[]), workgroups)
    }
}

/// The forward output the backward pass reads for the activation's derivative; with
/// the identity it is never read and `dY` holds its slot.
fn saved_output<'a>(
    ctx: &str,
    activation: Activation,
    y: Option<BufferView<'a>>,
    dy: &Operand<'a>,
    len: usize,
) -> Result<Operand<'a>> {
    match (activation, y) {
        (_, Some(y)) => Ok(Operand::new("y", 6, y, len, Read)),
        (Activation::Identity, None) => Ok(dy.stand_in(6)),
        (a, None) => Err(Error::shape(
            ctx,
            "y",
            format!("the forward output (needed for the derivative of {a:?})"),
            "none",
        )),
    }
}
