//! Grouped GEMM: `Y_g = act(X_g · W_g + b_g)` for all groups in one dispatch, and its
//! backward pass (`dX`, and `dW` with `db` in one dispatch).
//!
//! Shaders: `shaders/grouped_gemm.wgsl` (layouts, naive kernels) and
//! `shaders/grouped_gemm_subgroup.wgsl` (register-tiled kernels).

use bytemuck::{Pod, Zeroable};

use super::{BufferView, Dispatch, Operand, bind_operands, div_ceil};
use crate::gpu::{BindingKind, Gpu, ShaderProgram};
use crate::shape::{Activation, GemmShape, InputLayout};
use crate::{Error, Result};

const BASE_WGSL: (&str, &str) = (
    "grouped_gemm.wgsl",
    include_str!("../../shaders/grouped_gemm.wgsl"),
);

const BASE: ShaderProgram = ShaderProgram {
    name: "grouped_gemm",
    parts: &[BASE_WGSL],
    needs_subgroups: false,
};

const SUBGROUP: ShaderProgram = ShaderProgram {
    name: "grouped_gemm_subgroup",
    parts: &[
        BASE_WGSL,
        (
            "grouped_gemm_subgroup.wgsl",
            include_str!("../../shaders/grouped_gemm_subgroup.wgsl"),
        ),
    ],
    needs_subgroups: true,
};

/// The WGSL programs of this family.
pub const PROGRAMS: &[ShaderProgram] = &[BASE, SUBGROUP];

use BindingKind::{Read, ReadWrite, Uniform};
const FORWARD_BINDINGS: &[(u32, BindingKind)] = &[
    (0, Uniform),
    (1, Read),
    (2, Read),
    (3, Read),
    (4, ReadWrite),
];
const BACKWARD_INPUT_BINDINGS: &[(u32, BindingKind)] = &[
    (0, Uniform),
    (2, Read),
    (5, Read),
    (6, Read),
    (7, ReadWrite),
];
const BACKWARD_WEIGHTS_BINDINGS: &[(u32, BindingKind)] = &[
    (0, Uniform),
    (1, Read),
    (5, Read),
    (6, Read),
    (8, ReadWrite),
    (9, ReadWrite),
];

const FLAG_BIAS: u32 = 1;
const FLAG_ACCUMULATE: u32 = 2;
const FLAG_PACK_GROUPS: u32 = 4;

/// Mirrors `GemmParams` in the shader.
#[repr(C)]
#[derive(Clone, Copy, Default, Pod, Zeroable)]
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
    _pad: u32,
}

impl GemmParams {
    fn new(shape: &GemmShape, activation: Activation, flags: u32) -> Self {
        GemmParams {
            groups: shape.groups as u32,
            rows: shape.rows as u32,
            inputs: shape.inputs as u32,
            outputs: shape.outputs as u32,
            x_group_stride: match shape.input {
                InputLayout::Shared => 0,
                InputLayout::PerGroup => (shape.rows * shape.inputs) as u32,
            },
            activation: activation.code(),
            flags,
            ..Default::default()
        }
    }
}

/// How a grouped GEMM kernel maps outputs to invocations. Every tiling computes each
/// output with the same sequence of fused multiply-adds, so all give bitwise equal
/// results.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Tiling {
    /// One invocation per output, `wg × wg_rows` invocations per workgroup.
    Naive {
        /// Invocations along output columns.
        wg: u32,
        /// Invocations along output rows.
        wg_rows: u32,
    },
    /// Register tiles of `row_blocks × 8` rows by `col_groups × 4` columns per
    /// invocation, the left operand shared across the subgroup by broadcast. Needs
    /// [`Capabilities::subgroups`](crate::gpu::Capabilities::subgroups).
    Subgroup {
        /// Invocations per workgroup, a multiple of 8.
        wg: u32,
        /// Blocks of 8 output rows per workgroup, 1 to 8.
        row_blocks: u32,
        /// Groups of 4 output columns per invocation, 1 or 2.
        col_groups: u32,
    },
}

impl Tiling {
    fn validate(&self, gpu: &Gpu) -> Result<()> {
        let bad = |m: String| Err(Error::invalid("grouped GEMM tiling", m));
        match *self {
            Tiling::Naive { wg, wg_rows } => {
                let limits = gpu.limits();
                if wg == 0
                    || wg_rows == 0
                    || wg * wg_rows > limits.max_compute_invocations_per_workgroup
                {
                    return bad(format!(
                        "{self:?} has no invocations or too many for the device"
                    ));
                }
            }
            Tiling::Subgroup {
                wg,
                row_blocks,
                col_groups,
            } => {
                if !gpu.capabilities().subgroups {
                    return Err(Error::MissingFeature {
                        what: format!("tiling {self:?}"),
                        feature: "SUBGROUP (with subgroup size >= 8)".into(),
                        adapter: gpu.adapter().name.clone(),
                    });
                }
                if wg == 0 || wg % 8 != 0 || wg > gpu.limits().max_compute_invocations_per_workgroup
                {
                    return bad(format!(
                        "{self:?}: wg must be a positive multiple of 8 within the device limit"
                    ));
                }
                if !(1..=8).contains(&row_blocks) || !(1..=2).contains(&col_groups) {
                    return bad(format!(
                        "{self:?}: row_blocks must be 1..=8 and col_groups 1..=2"
                    ));
                }
            }
        }
        Ok(())
    }

    fn source(&self) -> &'static ShaderProgram {
        match self {
            Tiling::Naive { .. } => &BASE,
            Tiling::Subgroup { .. } => &SUBGROUP,
        }
    }

    fn constants(&self) -> Vec<(&'static str, u32)> {
        match *self {
            Tiling::Naive { wg, wg_rows } => vec![("WG", wg), ("WG_ROWS", wg_rows)],
            Tiling::Subgroup {
                wg,
                row_blocks,
                col_groups,
            } => {
                vec![("WG", wg), ("RB", row_blocks), ("CN", col_groups)]
            }
        }
    }

    /// Workgroups covering an output of `rows × cols` per group, for `groups` groups.
    fn workgroups(&self, rows: usize, cols: usize, groups: usize) -> [u32; 3] {
        match *self {
            Tiling::Naive { wg, wg_rows } => [
                div_ceil(cols, wg as usize),
                div_ceil(rows, wg_rows as usize),
                groups as u32,
            ],
            Tiling::Subgroup {
                wg,
                row_blocks,
                col_groups,
            } => [
                div_ceil(cols, (wg * col_groups * 4) as usize),
                div_ceil(rows, (row_blocks * 8) as usize),
                groups as u32,
            ],
        }
    }

    /// Whether the tiled forward or weight-gradient kernel runs `shape` with its
    /// columns packed over all groups (FLAG_PACK_GROUPS): X shared, every
    /// invocation's 4·CN columns inside one group, and a group's width leaving
    /// workgroup columns idle otherwise (packing full-width groups measured slower).
    fn packs_groups(&self, shape: &GemmShape) -> bool {
        match *self {
            Tiling::Naive { .. } => false,
            Tiling::Subgroup { wg, col_groups, .. } => {
                let invocation_cols = 4 * col_groups as usize;
                shape.input == InputLayout::Shared
                    && shape.groups > 1
                    && shape.outputs.is_multiple_of(invocation_cols)
                    && !shape.outputs.is_multiple_of(wg as usize * invocation_cols)
            }
        }
    }

    /// [`workgroups`](Self::workgroups) for the forward or weight-gradient pass, and
    /// the flag to pass when the columns are packed over the groups.
    fn output_workgroups(&self, shape: &GemmShape, rows: usize) -> ([u32; 3], u32) {
        if self.packs_groups(shape) {
            let mut w = self.workgroups(rows, shape.groups * shape.outputs, 1);
            w[2] = 1;
            (w, FLAG_PACK_GROUPS)
        } else {
            (self.workgroups(rows, shape.outputs, shape.groups), 0)
        }
    }

    fn entry(&self, pass: Pass) -> &'static str {
        match (self, pass) {
            (Tiling::Naive { .. }, Pass::Forward) => "forward_naive",
            (Tiling::Naive { .. }, Pass::BackwardInput) => "backward_input_naive",
            (Tiling::Naive { .. }, Pass::BackwardWeights) => "backward_weights_naive",
            (Tiling::Subgroup { .. }, Pass::Forward) => "forward_subgroup",
            (Tiling::Subgroup { .. }, Pass::BackwardInput) => "backward_input_subgroup",
            (Tiling::Subgroup { .. }, Pass::BackwardWeights) => "backward_weights_subgroup",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Pass {
    Forward,
    BackwardInput,
    BackwardWeights,
}

/// Operands of the forward pass.
#[derive(Clone, Copy, Debug)]
pub struct GemmForward<'a> {
    /// Shape of the product.
    pub shape: GemmShape,
    /// Activation applied in the epilogue.
    pub activation: Activation,
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
pub struct GemmBackwardInput<'a> {
    /// Shape of the forward product.
    pub shape: GemmShape,
    /// The forward pass's activation.
    pub activation: Activation,
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
pub struct GemmBackwardWeights<'a> {
    /// Shape of the forward product.
    pub shape: GemmShape,
    /// The forward pass's activation.
    pub activation: Activation,
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

    /// The tiling used when none is given: register tiles where the adapter has
    /// subgroups, one invocation per output otherwise.
    pub fn default_tiling(&self, shape: &GemmShape) -> Tiling {
        if !self.gpu.capabilities().subgroups {
            return Tiling::Naive { wg: 8, wg_rows: 8 };
        }
        let rows_blocks = shape.rows.div_ceil(8).clamp(1, 4) as u32;
        Tiling::Subgroup {
            wg: 8,
            row_blocks: rows_blocks,
            col_groups: 1,
        }
    }

    /// Every tiling valid on this device worth trying for `shape`.
    pub fn tilings(&self) -> Vec<Tiling> {
        let mut out = vec![
            Tiling::Naive { wg: 8, wg_rows: 8 },
            Tiling::Naive { wg: 64, wg_rows: 1 },
        ];
        if self.gpu.capabilities().subgroups {
            for (row_blocks, col_groups) in [(1, 1), (2, 1), (4, 1), (4, 2), (8, 1)] {
                out.push(Tiling::Subgroup {
                    wg: 8,
                    row_blocks,
                    col_groups,
                });
            }
        }
        out
    }

    /// Checks and binds the forward pass.
    pub fn forward(&self, args: &GemmForward<'_>) -> Result<Dispatch> {
        self.forward_with(args, self.default_tiling(&args.shape))
    }

    /// [`forward`](Self::forward) with a given tiling.
    pub fn forward_with(&self, args: &GemmForward<'_>, tiling: Tiling) -> Result<Dispatch> {
        const CTX: &str = "grouped_gemm forward";
        let s = &args.shape;
        s.validate(CTX)?;
        tiling.validate(&self.gpu)?;
        let flags = if args.bias.is_some() { FLAG_BIAS } else { 0 };
        let w = op("w", 2, args.w, s.w_len(), Read);
        let operands = [
            op("x", 1, args.x, s.x_len(), Read),
            w,
            match args.bias {
                Some(b) => op("bias", 3, b, s.b_len(), Read),
                None => w.stand_in(3),
            },
            op("y", 4, args.y, s.y_len(), ReadWrite),
        ];
        let bound = bind_operands(&self.gpu, CTX, &operands)?;
        let mut p = GemmParams::new(s, args.activation, flags);
        p.x_base = bound[0].base;
        p.w_base = bound[1].base;
        p.b_base = bound[2].base;
        p.y_base = bound[3].base;
        let (workgroups, pack) = tiling.output_workgroups(s, s.rows);
        p.flags |= pack;
        self.build(
            CTX,
            Pass::Forward,
            tiling,
            FORWARD_BINDINGS,
            &p,
            &bound,
            workgroups,
        )
    }

    /// Checks and binds the input gradient.
    pub fn backward_input(&self, args: &GemmBackwardInput<'_>) -> Result<Dispatch> {
        let t = self.default_tiling(&GemmShape {
            outputs: args.shape.inputs,
            ..args.shape
        });
        self.backward_input_with(args, t)
    }

    /// [`backward_input`](Self::backward_input) with a given tiling.
    pub fn backward_input_with(
        &self,
        args: &GemmBackwardInput<'_>,
        tiling: Tiling,
    ) -> Result<Dispatch> {
        const CTX: &str = "grouped_gemm backward_input";
        let s = &args.shape;
        s.validate(CTX)?;
        tiling.validate(&self.gpu)?;
        let dy = op("dy", 5, args.dy, s.y_len(), Read);
        let operands = [
            op("w", 2, args.w, s.w_len(), Read),
            dy,
            saved_output(CTX, args.activation, args.y, &dy, s.y_len())?,
            op("dx", 7, args.dx, s.x_len(), ReadWrite),
        ];
        let bound = bind_operands(&self.gpu, CTX, &operands)?;
        let flags = if args.accumulate { FLAG_ACCUMULATE } else { 0 };
        let mut p = GemmParams::new(s, args.activation, flags);
        p.w_base = bound[0].base;
        p.dy_base = bound[1].base;
        p.y_base = bound[2].base;
        p.dx_base = bound[3].base;
        let workgroups = tiling.workgroups(s.rows, s.inputs, s.x_groups());
        self.build(
            CTX,
            Pass::BackwardInput,
            tiling,
            BACKWARD_INPUT_BINDINGS,
            &p,
            &bound,
            workgroups,
        )
    }

    /// Checks and binds the weight (and bias) gradients.
    pub fn backward_weights(&self, args: &GemmBackwardWeights<'_>) -> Result<Dispatch> {
        let t = self.default_tiling(&GemmShape {
            rows: args.shape.inputs + 1,
            ..args.shape
        });
        self.backward_weights_with(args, t)
    }

    /// [`backward_weights`](Self::backward_weights) with a given tiling.
    pub fn backward_weights_with(
        &self,
        args: &GemmBackwardWeights<'_>,
        tiling: Tiling,
    ) -> Result<Dispatch> {
        const CTX: &str = "grouped_gemm backward_weights";
        let s = &args.shape;
        s.validate(CTX)?;
        tiling.validate(&self.gpu)?;
        let flags = if args.db.is_some() { FLAG_BIAS } else { 0 };
        let dy = op("dy", 5, args.dy, s.y_len(), Read);
        let dw = op("dw", 8, args.dw, s.w_len(), ReadWrite);
        let operands = [
            op("x", 1, args.x, s.x_len(), Read),
            dy,
            saved_output(CTX, args.activation, args.y, &dy, s.y_len())?,
            dw,
            match args.db {
                Some(db) => op("db", 9, db, s.b_len(), ReadWrite),
                None => dw.stand_in(9),
            },
        ];
        let bound = bind_operands(&self.gpu, CTX, &operands)?;
        let mut p = GemmParams::new(s, args.activation, flags);
        p.x_base = bound[0].base;
        p.dy_base = bound[1].base;
        p.y_base = bound[2].base;
        p.dw_base = bound[3].base;
        p.db_base = bound[4].base;
        // Output rows are the inputs, plus the bias row.
        let out_rows = s.inputs + usize::from(args.db.is_some());
        let (workgroups, pack) = tiling.output_workgroups(s, out_rows);
        p.flags |= pack;
        self.build(
            CTX,
            Pass::BackwardWeights,
            tiling,
            BACKWARD_WEIGHTS_BINDINGS,
            &p,
            &bound,
            workgroups,
        )
    }

    /// Checks, binds and records the forward pass into `encoder`.
    pub fn encode_forward(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        args: &GemmForward<'_>,
    ) -> Result<()> {
        self.forward(args)?.encode(encoder);
        Ok(())
    }

    /// Checks, binds and records the input gradient into `encoder`.
    pub fn encode_backward_input(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        args: &GemmBackwardInput<'_>,
    ) -> Result<()> {
        self.backward_input(args)?.encode(encoder);
        Ok(())
    }

    /// Checks, binds and records the weight gradients into `encoder`.
    pub fn encode_backward_weights(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        args: &GemmBackwardWeights<'_>,
    ) -> Result<()> {
        self.backward_weights(args)?.encode(encoder);
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn build(
        &self,
        ctx: &'static str,
        pass: Pass,
        tiling: Tiling,
        bindings: &[(u32, BindingKind)],
        params: &GemmParams,
        bound: &[super::binding::BoundOperand<'_>],
        workgroups: [u32; 3],
    ) -> Result<Dispatch> {
        let pipeline = self.gpu.pipeline(
            tiling.source(),
            tiling.entry(pass),
            bindings,
            &tiling.constants(),
        )?;
        let (layout, _) = self.gpu.layout(bindings)?;
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

fn op<'a>(
    name: &'static str,
    slot: u32,
    view: BufferView<'a>,
    len: usize,
    kind: BindingKind,
) -> Operand<'a> {
    Operand::new(name, slot, view, len, kind)
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
        (_, Some(y)) => Ok(op("y", 6, y, len, Read)),
        (Activation::Identity, None) => Ok(dy.stand_in(6)),
        (a, None) => Err(Error::shape(
            ctx,
            "y",
            format!("the forward output (needed for the derivative of {a:?})"),
            "none",
        )),
    }
}
