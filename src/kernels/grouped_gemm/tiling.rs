//! The grouped GEMM's tilings: the WGSL programs each runs, the workgroups it
//! launches for a shape, the untuned default per pass, and the candidates the tuner
//! measures. Every tiling computes each output with the same sequence of fused
//! multiply-adds, so all give bitwise equal results.

use super::{FLAG_PACK_GROUPS, GroupedGemm};
use crate::gpu::{Gpu, ShaderProgram};
use crate::kernels::binding::{STORAGE_F16, STORAGE_F32, program_for, storage_programs};
use crate::kernels::{Precision, div_ceil};
use crate::shape::{GemmShape, InputLayout};
use crate::{Error, Result};

const BASE_WGSL: (&str, &str) = (
    "grouped_gemm.wgsl",
    include_str!("../../../shaders/grouped_gemm.wgsl"),
);

const SUBGROUP_WGSL: (&str, &str) = (
    "grouped_gemm_subgroup.wgsl",
    include_str!("../../../shaders/grouped_gemm_subgroup.wgsl"),
);

const TILES_WGSL: (&str, &str) = (
    "grouped_gemm_tiles.wgsl",
    include_str!("../../../shaders/grouped_gemm_tiles.wgsl"),
);

const WORKGROUP_WGSL: (&str, &str) = (
    "grouped_gemm_workgroup.wgsl",
    include_str!("../../../shaders/grouped_gemm_workgroup.wgsl"),
);

const REDUCE_WGSL: (&str, &str) = (
    "grouped_gemm_reduce.wgsl",
    include_str!("../../../shaders/grouped_gemm_reduce.wgsl"),
);

/// The naive kernels, in f32 and f16 storage.
const BASE: [ShaderProgram; 2] = [
    ShaderProgram {
        name: "grouped_gemm",
        parts: &[BASE_WGSL, STORAGE_F32],
        needs_subgroups: false,
        needs_f16: false,
    },
    ShaderProgram {
        name: "grouped_gemm_f16",
        parts: &[STORAGE_F16, BASE_WGSL],
        needs_subgroups: false,
        needs_f16: true,
    },
];

/// The register-tiled kernels sharing the left operand by subgroup broadcast, in f32
/// and f16 storage.
const SUBGROUP: [ShaderProgram; 2] = [
    ShaderProgram {
        name: "grouped_gemm_subgroup",
        parts: &[BASE_WGSL, TILES_WGSL, SUBGROUP_WGSL, STORAGE_F32],
        needs_subgroups: true,
        needs_f16: false,
    },
    ShaderProgram {
        name: "grouped_gemm_subgroup_f16",
        parts: &[STORAGE_F16, BASE_WGSL, TILES_WGSL, SUBGROUP_WGSL],
        needs_subgroups: true,
        needs_f16: true,
    },
];

/// The register-tiled kernels sharing the left operand through workgroup memory, in
/// f32 and f16 storage: no subgroup operations.
const WORKGROUP: [ShaderProgram; 2] = [
    ShaderProgram {
        name: "grouped_gemm_workgroup",
        parts: &[BASE_WGSL, TILES_WGSL, WORKGROUP_WGSL, STORAGE_F32],
        needs_subgroups: false,
        needs_f16: false,
    },
    ShaderProgram {
        name: "grouped_gemm_workgroup_f16",
        parts: &[STORAGE_F16, BASE_WGSL, TILES_WGSL, WORKGROUP_WGSL],
        needs_subgroups: false,
        needs_f16: true,
    },
];

/// The reduce of the ragged input gradient on a shared input, in f32 and f16 storage.
pub(super) const REDUCE: [ShaderProgram; 2] = storage_programs!("grouped_gemm_reduce", REDUCE_WGSL);

/// The WGSL programs of this family.
pub const PROGRAMS: &[ShaderProgram] = &[
    BASE[0],
    BASE[1],
    SUBGROUP[0],
    SUBGROUP[1],
    WORKGROUP[0],
    WORKGROUP[1],
    REDUCE[0],
    REDUCE[1],
];

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
    /// The register tiles of [`Tiling::Subgroup`], the left operand staged in
    /// workgroup memory instead: `depth` reduction steps of its `row_blocks × 8` rows
    /// at a time, double-buffered, one barrier per `depth` steps. Needs no subgroup
    /// operations, so it runs on every adapter; it uses `32 · depth · row_blocks`
    /// bytes of workgroup memory.
    Workgroup {
        /// Invocations per workgroup, a multiple of 8.
        wg: u32,
        /// Blocks of 8 output rows per workgroup, 1 to 8.
        row_blocks: u32,
        /// Groups of 4 output columns per invocation, 1 or 2.
        col_groups: u32,
        /// Reduction steps staged per barrier: a power of two, 1 to 64.
        depth: u32,
    },
}

impl Tiling {
    pub(super) fn validate(&self, gpu: &Gpu) -> Result<()> {
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
                check_tile(self, gpu, wg, row_blocks, col_groups)?;
            }
            Tiling::Workgroup {
                wg,
                row_blocks,
                col_groups,
                depth,
            } => {
                check_tile(self, gpu, wg, row_blocks, col_groups)?;
                if !depth.is_power_of_two() || depth > 64 {
                    return bad(format!("{self:?}: depth must be a power of two up to 64"));
                }
                let bytes = self.workgroup_bytes();
                let limit = gpu.limits().max_compute_workgroup_storage_size;
                if bytes > limit {
                    return bad(format!(
                        "{self:?} stages {bytes} bytes in workgroup memory, over the device's {limit}"
                    ));
                }
            }
        }
        Ok(())
    }

    /// Bytes of workgroup memory the tiling's kernels use.
    pub fn workgroup_bytes(&self) -> u32 {
        match *self {
            Tiling::Naive { .. } | Tiling::Subgroup { .. } => 0,
            // Two halves of `depth` steps of `8 · row_blocks` f32 values.
            Tiling::Workgroup {
                row_blocks, depth, ..
            } => 2 * depth * 8 * row_blocks * 4,
        }
    }

    pub(super) fn source(&self, precision: Precision) -> &'static ShaderProgram {
        match self {
            Tiling::Naive { .. } => program_for(&BASE, precision),
            Tiling::Subgroup { .. } => program_for(&SUBGROUP, precision),
            Tiling::Workgroup { .. } => program_for(&WORKGROUP, precision),
        }
    }

    pub(super) fn constants(&self) -> Vec<(&'static str, u32)> {
        match *self {
            Tiling::Naive { wg, wg_rows } => vec![("WG", wg), ("WG_ROWS", wg_rows)],
            Tiling::Subgroup {
                wg,
                row_blocks,
                col_groups,
            } => {
                vec![("WG", wg), ("RB", row_blocks), ("CN", col_groups)]
            }
            Tiling::Workgroup {
                wg,
                row_blocks,
                col_groups,
                depth,
            } => {
                vec![
                    ("WG", wg),
                    ("RB", row_blocks),
                    ("CN", col_groups),
                    ("KT", depth),
                ]
            }
        }
    }

    /// Invocations per workgroup along the columns, blocks of 8 rows, groups of 4
    /// columns per invocation: the register tile's shape, for the tiled kinds.
    pub(super) fn tile(&self) -> Option<(u32, u32, u32)> {
        match *self {
            Tiling::Naive { .. } => None,
            Tiling::Subgroup {
                wg,
                row_blocks,
                col_groups,
            }
            | Tiling::Workgroup {
                wg,
                row_blocks,
                col_groups,
                ..
            } => Some((wg, row_blocks, col_groups)),
        }
    }

    /// Workgroups covering an output of `rows × cols` per group, for `groups` groups.
    pub(super) fn workgroups(&self, rows: usize, cols: usize, groups: usize) -> [u32; 3] {
        match *self {
            Tiling::Naive { wg, wg_rows } => [
                div_ceil(cols, wg as usize),
                div_ceil(rows, wg_rows as usize),
                groups as u32,
            ],
            Tiling::Subgroup { .. } | Tiling::Workgroup { .. } => {
                let (wg, row_blocks, col_groups) = self.tile().expect("a tiled kind");
                [
                    div_ceil(cols, (wg * col_groups * 4) as usize),
                    div_ceil(rows, (row_blocks * 8) as usize),
                    groups as u32,
                ]
            }
        }
    }

    /// Whether the tiled forward or weight-gradient kernel runs `shape` with its
    /// columns packed over all groups (FLAG_PACK_GROUPS): X shared, every
    /// invocation's 4·CN columns inside one group, and a group's width leaving
    /// workgroup columns idle otherwise (packing full-width groups measured slower).
    pub(super) fn packs_groups(&self, shape: &GemmShape) -> bool {
        match self.tile() {
            None => false,
            Some((wg, _, col_groups)) => {
                let invocation_cols = 4 * col_groups as usize;
                shape.input == InputLayout::Shared
                    && shape.groups > 1
                    && shape.outputs.is_multiple_of(invocation_cols)
                    && !shape.outputs.is_multiple_of(wg as usize * invocation_cols)
            }
        }
    }

    /// [`workgroups`](Self::workgroups) for the forward or weight-gradient pass, and
    /// the flag to pass when the columns are packed over the groups. Ragged passes
    /// never pack: each group gathers its own rows, so a workgroup must hold one group.
    pub(super) fn output_workgroups(
        &self,
        shape: &GemmShape,
        rows: usize,
        ragged: bool,
    ) -> ([u32; 3], u32) {
        if !ragged && self.packs_groups(shape) {
            let mut w = self.workgroups(rows, shape.groups * shape.outputs, 1);
            w[2] = 1;
            (w, FLAG_PACK_GROUPS)
        } else {
            (self.workgroups(rows, shape.outputs, shape.groups), 0)
        }
    }

    pub(super) fn entry(&self, pass: Pass) -> &'static str {
        match (self, pass) {
            (Tiling::Naive { .. }, Pass::Forward) => "forward_naive",
            (Tiling::Naive { .. }, Pass::BackwardInput) => "backward_input_naive",
            (Tiling::Naive { .. }, Pass::BackwardWeights) => "backward_weights_naive",
            (Tiling::Subgroup { .. }, Pass::Forward) => "forward_subgroup",
            (Tiling::Subgroup { .. }, Pass::BackwardInput) => "backward_input_subgroup",
            (Tiling::Subgroup { .. }, Pass::BackwardWeights) => "backward_weights_subgroup",
            (Tiling::Workgroup { .. }, Pass::Forward) => "forward_workgroup",
            (Tiling::Workgroup { .. }, Pass::BackwardInput) => "backward_input_workgroup",
            (Tiling::Workgroup { .. }, Pass::BackwardWeights) => "backward_weights_workgroup",
        }
    }
}

/// The register tile's bounds, shared by the tiled kinds.
fn check_tile(tiling: &Tiling, gpu: &Gpu, wg: u32, row_blocks: u32, col_groups: u32) -> Result<()> {
    let limits = gpu.limits();
    let max = limits
        .max_compute_invocations_per_workgroup
        .min(limits.max_compute_workgroup_size_x);
    if wg == 0 || !wg.is_multiple_of(8) || wg > max {
        return Err(Error::invalid(
            "grouped GEMM tiling",
            format!("{tiling:?}: wg must be a positive multiple of 8 within the device limit"),
        ));
    }
    if !(1..=8).contains(&row_blocks) || !(1..=2).contains(&col_groups) {
        return Err(Error::invalid(
            "grouped GEMM tiling",
            format!("{tiling:?}: row_blocks must be 1..=8 and col_groups 1..=2"),
        ));
    }
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Pass {
    Forward,
    BackwardInput,
    BackwardWeights,
}

impl Pass {
    /// Loop iterations of a pass's busiest invocation, from above, as llvmpipe counts
    /// them: the reduction loop (one step per iteration; a dense dX sums over every
    /// group when X is shared, a ragged one over its own group, after summing the
    /// counts before it), the tile stores, which run at most 16 tiles of 8 rows, and
    /// for workgroup-memory tiles the loop staging the first `depth` steps.
    pub(super) fn loop_iterations(self, s: &GemmShape, ragged: bool, tiling: &Tiling) -> u64 {
        const STORES: u64 = 16 * (8 * (4 + 2) + 10) + 64 * 10;
        let reduction = match self {
            Pass::Forward => s.inputs as u64,
            Pass::BackwardInput if ragged => s.outputs as u64 + 2 + s.groups as u64 + 2,
            Pass::BackwardInput => {
                // The most groups reading one block of X.
                let summed = (0..s.x_groups())
                    .map(|b| s.x_readers(b).len() as u64)
                    .max()
                    .unwrap_or(1)
                    .max(1);
                summed * (s.outputs as u64 + 2)
            }
            Pass::BackwardWeights => s.rows as u64,
        };
        let staging = match *tiling {
            Tiling::Workgroup { depth, .. } => u64::from(depth) + 2,
            Tiling::Naive { .. } | Tiling::Subgroup { .. } => 0,
        };
        reduction + 2 + staging + STORES
    }

    /// On a CPU adapter (lavapipe) a reduction past the loop budget would end early
    /// without a word, so it is an error there; GPUs have no such budget.
    pub(super) fn check_loop_budget(
        self,
        gpu: &Gpu,
        ctx: &str,
        s: &GemmShape,
        (ragged, tiling): (bool, &Tiling),
    ) -> Result<()> {
        if gpu.adapter().device_type != wgpu::DeviceType::Cpu {
            return Ok(());
        }
        let remedy = match self {
            Pass::BackwardWeights => "fewer rows per call needs fewer",
            Pass::BackwardInput => "fewer groups or outputs per call needs fewer",
            Pass::Forward => "fewer inputs per call needs fewer",
        };
        crate::kernels::check_loop_budget(ctx, self.loop_iterations(s, ragged, tiling), remedy)
    }
}

/// Reduction steps the default workgroup-memory tiles stage per barrier.
pub(super) const DEFAULT_DEPTH: u32 = 8;

impl GroupedGemm {
    /// The tiling of a forward pass on `shape` without tuning (and tuning's first
    /// candidate): register tiles, sharing rows by subgroup broadcast where the
    /// adapter has subgroups and through workgroup memory otherwise.
    pub fn default_tiling(&self, shape: &GemmShape) -> Tiling {
        self.default_for(Pass::Forward, shape, shape.rows, shape.outputs)
    }

    /// A register tile of 8 invocations, of the kind this adapter runs best: subgroup
    /// broadcast where it has subgroups, workgroup memory otherwise.
    fn register_tile(&self, row_blocks: u32, col_groups: u32) -> Tiling {
        if self.gpu.capabilities().subgroups {
            Tiling::Subgroup {
                wg: 8,
                row_blocks,
                col_groups,
            }
        } else {
            Tiling::Workgroup {
                wg: 8,
                row_blocks,
                col_groups,
                depth: DEFAULT_DEPTH,
            }
        }
    }

    /// The untuned tiling for `pass` with an output of `out_rows` × `out_cols` (per
    /// group): the largest register tile (8 row blocks × 2 column groups) wherever
    /// the output fills it, 64 rows by 64 columns (counting the columns of all groups
    /// where they are packed) and each output sums at least 64 products. On lavapipe
    /// it loads least per multiply-add and was the fastest tiling in every pass at
    /// every standard shape; it compiles in about 1.5 s there, so smaller outputs and
    /// short reductions (towers, gates, tests) keep 1-2 row blocks, which compile in
    /// about 0.2 s. A short reduction is the census tower's input gradient (32 products
    /// per output): its tile stores cost as much as its multiply-adds, so the large tile
    /// saves a fraction of a millisecond per step for 1.5 s of compiling. The same
    /// holds for both kinds of register tile (subgroup or workgroup memory).
    pub(super) fn default_for(
        &self,
        pass: Pass,
        shape: &GemmShape,
        out_rows: usize,
        out_cols: usize,
    ) -> Tiling {
        let largest = self.register_tile(8, 2);
        let columns = if pass != Pass::BackwardInput && largest.packs_groups(shape) {
            shape.groups * shape.outputs
        } else {
            out_cols
        };
        let reduction = match pass {
            Pass::Forward => shape.inputs,
            Pass::BackwardInput => {
                let readers = (0..shape.x_groups()).map(|b| shape.x_readers(b).len());
                readers.max().unwrap_or(1).max(1) * shape.outputs
            }
            Pass::BackwardWeights => shape.rows,
        };
        if out_rows >= 64 && columns >= 64 && reduction >= 64 {
            return largest;
        }
        self.register_tile(out_rows.div_ceil(8).clamp(1, 2) as u32, 1)
    }

    /// Every tiling valid on this device worth trying; autotuning picks among them.
    /// The workgroup-memory tiles are offered everywhere: with 8 invocations, the
    /// subgroup tiles' shapes; with 64, shapes that fill a GPU's wider subgroups
    /// and keep each invocation's tile small enough for its registers.
    pub fn tilings(&self) -> Vec<Tiling> {
        const SHAPES: [(u32, u32); 7] = [(1, 1), (2, 1), (2, 2), (4, 1), (4, 2), (8, 1), (8, 2)];
        let mut out = vec![
            Tiling::Naive { wg: 8, wg_rows: 8 },
            Tiling::Naive { wg: 64, wg_rows: 1 },
        ];
        if self.gpu.capabilities().subgroups {
            out.extend(SHAPES.map(|(row_blocks, col_groups)| Tiling::Subgroup {
                wg: 8,
                row_blocks,
                col_groups,
            }));
        }
        let workgroup = |wg, (row_blocks, col_groups)| Tiling::Workgroup {
            wg,
            row_blocks,
            col_groups,
            depth: DEFAULT_DEPTH,
        };
        out.extend(SHAPES.map(|shape| workgroup(8, shape)));
        out.extend([(1, 1), (1, 2), (2, 1)].map(|shape| workgroup(64, shape)));
        out.retain(|t| t.validate(&self.gpu).is_ok());
        out
    }
}
