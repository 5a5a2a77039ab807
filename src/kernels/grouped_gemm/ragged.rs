//! Ragged mode of the grouped GEMM: each group runs on only the rows a row map routes
//! to it, in the dense kernels' dispatches (see the family's module docs), and the
//! reduce that sums a shared input's gradient over the groups each row went to.

use super::{
    BufferView, Dispatch, Error, GroupedGemm, GroupedGemmBackwardInput, GroupedGemmBackwardWeights,
    GroupedGemmForward, Operand, Pass, REDUCE, ROUTES_SLOT, Result, Tiling, bind_operands,
};
use crate::gpu::{BindingKind, Gpu};
use crate::kernels::binding::program_for;
use crate::shape::{GemmShape, InputLayout};

/// The rows each group of a ragged pass computes: `u32`s in the layout the
/// [`routing`](crate::kernels::routing) kernel writes, for `groups` groups of `rows`
/// rows (the GEMM's shape):
///
/// - `[0, groups)`: `count_g`, the number of rows routed to group `g`;
/// - `groups + g · rows + s`, `s < rows`: slot `s` of group `g`'s list, the routed
///   rows in ascending order (`s < count_g`), then the unrouted rows in ascending
///   order. Each list is a permutation of `0..rows`.
///
/// The kernels read it on the device, where it cannot be checked: a map that breaks
/// these rules gives wrong numbers (counts and rows are clamped, so never an access
/// out of bounds).
#[derive(Clone, Copy, Debug)]
pub struct RowMap<'a> {
    /// Where the map starts; a buffer with `STORAGE` usage, distinct from the outputs.
    pub routes: BufferView<'a>,
}

impl<'a> RowMap<'a> {
    /// The map starts at the beginning of `buffer`.
    pub fn new(buffer: &'a wgpu::Buffer) -> Self {
        RowMap {
            routes: BufferView::new(buffer),
        }
    }

    /// The map starts `offset` bytes (a multiple of 4) into `buffer`.
    pub fn at(buffer: &'a wgpu::Buffer, offset: u64) -> Self {
        RowMap {
            routes: BufferView::at(buffer, offset),
        }
    }

    /// Elements (`u32`) of a map for `groups` groups of `rows` rows:
    /// `groups · (rows + 1)`.
    pub const fn elements(groups: usize, rows: usize) -> usize {
        crate::shape::row_map_len(groups, rows)
    }
}

/// Scratch of the ragged input gradient on a shared input ([`InputLayout::Shared`]):
/// each group's rows of `dZ_g · W_gᵀ`, compact (group `g`'s from row
/// `Σ_{g' < g} count_g'` on), before they are summed into `dX`. `f32` whatever the
/// call's precision, so each `dX` value is rounded to its storage type once.
///
/// It holds [`slots`](Self::slots) rows of `inputs` values: enough when no row is
/// routed to more than `max_routes_per_row` groups (for `T` top-k gates, `k · T`).
/// The map lives on the device and is not checked against the bound: a row routed to
/// more groups than that loses the products that find no room (wrong numbers, never
/// an access out of bounds).
#[derive(Clone, Copy, Debug)]
pub struct SlotScratch<'a> {
    /// Where the scratch starts: a buffer with `STORAGE` usage, distinct from the
    /// other operands, offset a multiple of 4 bytes.
    pub buffer: BufferView<'a>,
    /// The most groups the map routes any one row to; at least 1, capped at the
    /// shape's groups.
    pub max_routes_per_row: usize,
}

impl<'a> SlotScratch<'a> {
    /// The scratch at `buffer`, for maps routing each row to at most
    /// `max_routes_per_row` groups.
    pub fn new(buffer: BufferView<'a>, max_routes_per_row: usize) -> Self {
        SlotScratch {
            buffer,
            max_routes_per_row,
        }
    }

    /// Rows of the scratch for `shape`: `rows · min(max_routes_per_row, groups)`.
    pub fn slots(shape: &GemmShape, max_routes_per_row: usize) -> usize {
        shape.rows * max_routes_per_row.min(shape.groups)
    }

    /// Elements (`f32`) of the scratch for `shape`: [`slots`](Self::slots) ·
    /// `inputs`.
    pub fn elements(shape: &GemmShape, max_routes_per_row: usize) -> usize {
        Self::slots(shape, max_routes_per_row) * shape.inputs
    }
}

/// How a ragged input gradient runs: on the map's slots, and, for a shared input,
/// into a compact scratch of `slots` rows.
#[derive(Clone, Copy)]
pub(super) struct RaggedInput<'a> {
    pub map: RowMap<'a>,
    pub compact: Option<CompactRows<'a>>,
}

#[derive(Clone, Copy)]
pub(super) struct CompactRows<'a> {
    pub view: BufferView<'a>,
    pub slots: usize,
}

crate::kernels::binding::host_struct! {
    /// Mirrors `ReduceParams` in `grouped_gemm_reduce.wgsl`.
    struct ReduceParams {
        groups: u32,
        rows: u32,
        inputs: u32,
        slots: u32,
        flags: u32,
        routes_base: u32,
        slots_base: u32,
        dx_base: u32,
    }
}

use BindingKind::{Read, ReadWrite};
/// Invocations per reduce workgroup (fewer where the device allows fewer).
const REDUCE_WORKGROUP: u32 = 64;
/// The most 4-column blocks a reduce invocation sums.
const REDUCE_MAX_BLOCKS: u32 = 4;

/// Loop iterations of a reduce invocation, from above, as llvmpipe counts them (see
/// [`LOOP_BUDGET`](crate::kernels::LOOP_BUDGET)): per chunk of `workgroup` groups a
/// binary search (at most 33 halvings), the sum of the counts before its group and
/// the walk over the chunk's findings; then the stores.
fn reduce_loop_iterations(groups: usize, workgroup: u32) -> u64 {
    let (groups, workgroup) = (groups as u64, u64::from(workgroup));
    let chunks = groups.div_ceil(workgroup);
    let per_chunk = (33 + 2) + (groups + 2) + (workgroup + 2);
    chunks * per_chunk + 2 + u64::from(REDUCE_MAX_BLOCKS) * (4 + 2)
}

/// The row map's operand, or, for a dense pass, `stand_in`'s buffer in its slot.
pub(super) fn routes_operand<'a>(
    ctx: &str,
    shape: &GemmShape,
    rows: Option<RowMap<'a>>,
    stand_in: &Operand<'a>,
) -> Result<Operand<'a>> {
    match rows {
        // A ragged pass holds one group per workgroup and finds its X by the group:
        // the blocks of a level would need the reduce to sum each block's readers.
        Some(_) if matches!(shape.input, InputLayout::Level { .. }) => Err(Error::invalid(
            format!("{ctx} input"),
            "the ragged passes take a shared or per-group X, not the blocks of a level",
        )),
        Some(map) => map_operand(ctx, shape, map, ROUTES_SLOT),
        None => Ok(stand_in.stand_in(ROUTES_SLOT)),
    }
}

/// The row map `map` for `shape`, bound at `slot`.
fn map_operand<'a>(
    ctx: &str,
    shape: &GemmShape,
    map: RowMap<'a>,
    slot: u32,
) -> Result<Operand<'a>> {
    let len = RowMap::elements(shape.groups, shape.rows);
    // The shader indexes the map with 32-bit arithmetic.
    if len >= u32::MAX as usize / 2 {
        return Err(Error::Limit {
            context: ctx.into(),
            what: "element count of the row map".into(),
            value: len as u64,
            limit: u32::MAX as u64 / 2,
        });
    }
    Ok(Operand::new(
        "routes",
        slot,
        map.routes,
        len,
        BindingKind::Read,
    ))
}

impl GroupedGemm {
    /// Checks and binds the ragged forward pass (see [ragged mode](super#ragged-mode)): for
    /// every group, `act(X · W_g + b_g)` on the rows `rows` routes to it and zeros on
    /// the others, in one dispatch, with the tiling tuned for the dense shape.
    pub fn forward_ragged(
        &self,
        args: &GroupedGemmForward<'_>,
        rows: RowMap<'_>,
    ) -> Result<Dispatch> {
        const CTX: &str = "grouped_gemm forward_ragged";
        args.shape.validate(CTX)?;
        args.precision.check(&self.gpu, CTX)?;
        let t = self.tuned(
            Pass::Forward,
            &args.shape,
            args.activation,
            args.bias.is_some(),
            args.precision,
        )?;
        self.forward_ragged_with(args, rows, t)
    }

    /// [`forward_ragged`](Self::forward_ragged) with a given tiling. Every tiling
    /// gives bitwise equal results, and with every row routed they equal
    /// [`forward`](Self::forward)'s.
    pub fn forward_ragged_with(
        &self,
        args: &GroupedGemmForward<'_>,
        rows: RowMap<'_>,
        tiling: Tiling,
    ) -> Result<Dispatch> {
        self.forward_rows("grouped_gemm forward_ragged", args, Some(rows), tiling)
    }

    /// Checks and binds the ragged weight (and bias) gradients: sums over the rows
    /// `rows` routes to each group only, in one dispatch, with the tiling tuned for
    /// the dense shape. `rows` must be the map of the forward pass that wrote `y`.
    pub fn backward_weights_ragged(
        &self,
        args: &GroupedGemmBackwardWeights<'_>,
        rows: RowMap<'_>,
    ) -> Result<Dispatch> {
        const CTX: &str = "grouped_gemm backward_weights_ragged";
        args.shape.validate(CTX)?;
        args.precision.check(&self.gpu, CTX)?;
        let t = self.tuned(
            Pass::BackwardWeights,
            &args.shape,
            args.activation,
            args.db.is_some(),
            args.precision,
        )?;
        self.backward_weights_ragged_with(args, rows, t)
    }

    /// [`backward_weights_ragged`](Self::backward_weights_ragged) with a given tiling.
    pub fn backward_weights_ragged_with(
        &self,
        args: &GroupedGemmBackwardWeights<'_>,
        rows: RowMap<'_>,
        tiling: Tiling,
    ) -> Result<Dispatch> {
        self.backward_weights_rows(
            "grouped_gemm backward_weights_ragged",
            args,
            Some(rows),
            tiling,
        )
    }

    /// Checks and binds the ragged input gradient (see [ragged mode](super#ragged-mode)),
    /// with the tiling tuned for its per-group product; `rows` must be the map of the
    /// forward pass that wrote `y`. Per-group `X` (`scratch` must be `None`): one
    /// dispatch, `dX_g[r] = dZ_g[r] · W_gᵀ` on the rows `r` routed to group `g` and
    /// zeros on the others (with `accumulate`, which adds, those stay as they were).
    /// Shared `X` (`scratch` required): two dispatches, each group's routed rows into
    /// the scratch, then `dX[r] = Σ_g` of them over the groups `r` is routed to, in
    /// ascending `g` (a row routed nowhere gets 0, or stays as it was with
    /// `accumulate`). Every check of both runs before either is returned.
    ///
    /// ```
    /// use mmoe_wgpu::kernels::grouped_gemm::{GroupedGemmBackwardInput, GroupedGemm, RowMap, SlotScratch};
    /// use mmoe_wgpu::kernels::{BufferView, Precision};
    /// use mmoe_wgpu::{Activation, GemmShape, Gpu, InputLayout};
    ///
    /// # fn main() -> mmoe_wgpu::Result<()> {
    /// let gpu = Gpu::new()?;
    /// // 2 experts of width 1 on a shared input of 3 rows × 2.
    /// let shape = GemmShape { groups: 2, rows: 3, inputs: 2, outputs: 1, input: InputLayout::Shared };
    /// // Row 0 goes to expert 0, row 2 to both, row 1 to neither (as routing writes it).
    /// #[rustfmt::skip]
    /// let routes = gpu.upload("routes", &[
    ///     2u32, 1,   // counts
    ///     0, 2, 1,   // expert 0: rows 0, 2, then the unrouted row 1
    ///     2, 0, 1,   // expert 1: row 2, then rows 0, 1
    /// ])?;
    /// let w = gpu.upload("w", &[1.0f32, 2.0, 10.0, 20.0])?; // [experts, inputs, 1]
    /// let dy = gpu.upload("dy", &[1.0f32, 1.0, 1.0, 3.0, 3.0, 3.0])?; // [experts, rows, 1]
    /// let dx = gpu.storage_buffer("dx", 4 * shape.x_len() as u64)?;
    /// // Room for 2 routes per row.
    /// let scratch = gpu.storage_buffer("scratch", 4 * SlotScratch::elements(&shape, 2) as u64)?;
    ///
    /// let mut encoder = gpu.device().create_command_encoder(&Default::default());
    /// GroupedGemm::new(&gpu).encode_backward_input_ragged(
    ///     &mut encoder,
    ///     &GroupedGemmBackwardInput {
    ///         shape,
    ///         activation: Activation::Identity,
    ///         precision: Precision::F32,
    ///         dy: BufferView::new(&dy),
    ///         y: None,
    ///         w: BufferView::new(&w),
    ///         dx: BufferView::new(&dx),
    ///         accumulate: false,
    ///     },
    ///     RowMap::new(&routes),
    ///     Some(SlotScratch::new(BufferView::new(&scratch), 2)),
    /// )?;
    /// gpu.queue().submit([encoder.finish()]);
    ///
    /// let dx: Vec<f32> = gpu.read(&dx, 0, shape.x_len())?;
    /// // Row 2: 1 · [1, 2] + 3 · [10, 20]; row 1 routed nowhere.
    /// assert_eq!(dx, [1.0, 2.0, 0.0, 0.0, 31.0, 62.0]);
    /// # Ok(())
    /// # }
    /// ```
    pub fn backward_input_ragged(
        &self,
        args: &GroupedGemmBackwardInput<'_>,
        rows: RowMap<'_>,
        scratch: Option<SlotScratch<'_>>,
    ) -> Result<Vec<Dispatch>> {
        const CTX: &str = "grouped_gemm backward_input_ragged";
        args.shape.validate(CTX)?;
        args.precision.check(&self.gpu, CTX)?;
        // With a shared X each group's rows are a per-group product: the same kernel,
        // loops and stores as the dense pass on a per-group X.
        let per_group = GemmShape {
            input: InputLayout::PerGroup,
            ..args.shape
        };
        let t = self.tuned(
            Pass::BackwardInput,
            &per_group,
            args.activation,
            false,
            args.precision,
        )?;
        self.backward_input_ragged_with(args, rows, scratch, t)
    }

    /// [`backward_input_ragged`](Self::backward_input_ragged) with a given tiling.
    /// Every tiling gives bitwise equal results; a routed row of a per-group `dX` has
    /// [`backward_input`](Self::backward_input)'s bits.
    pub fn backward_input_ragged_with(
        &self,
        args: &GroupedGemmBackwardInput<'_>,
        rows: RowMap<'_>,
        scratch: Option<SlotScratch<'_>>,
        tiling: Tiling,
    ) -> Result<Vec<Dispatch>> {
        const CTX: &str = "grouped_gemm backward_input_ragged";
        let s = &args.shape;
        s.validate(CTX)?;
        match (s.input, scratch) {
            (InputLayout::PerGroup, None) => {
                let ragged = RaggedInput {
                    map: rows,
                    compact: None,
                };
                Ok(vec![self.backward_input_rows(
                    CTX,
                    args,
                    Some(ragged),
                    tiling,
                )?])
            }
            (InputLayout::PerGroup, Some(_)) => Err(Error::invalid(
                format!("{CTX} `scratch`"),
                "X is per group, so each group's rows go straight to dX: pass no scratch",
            )),
            (InputLayout::Shared, None) => Err(Error::shape(
                CTX,
                "scratch",
                format!(
                    "a SlotScratch (X is shared: {} f32 per route a row may have, see SlotScratch::elements)",
                    s.inputs
                ),
                "none",
            )),
            (InputLayout::Level { .. }, _) => Err(Error::invalid(
                format!("{CTX} input"),
                "the ragged passes take a shared or per-group X, not the blocks of a level",
            )),
            // dZ is zero on the unrouted rows after a ragged forward with ReLU, so the
            // dense pass gives this gradient; a compact scratch would need a scatter
            // of each window into its columns.
            (InputLayout::Columns(_), _) => Err(Error::invalid(
                format!("{CTX} input"),
                "X read through column windows: use the dense backward_input, which gives \
                 the ragged input gradient whenever dZ is zero on the unrouted rows",
            )),
            (InputLayout::Shared, Some(scratch)) => {
                let compact = check_scratch(CTX, s, &scratch)?;
                let ragged = RaggedInput {
                    map: rows,
                    compact: Some(compact),
                };
                // Both checked and bound before either is handed out.
                let products = self.backward_input_rows(CTX, args, Some(ragged), tiling)?;
                let reduce = self.reduce_slots(
                    "grouped_gemm backward_input_ragged reduce",
                    args,
                    rows,
                    compact,
                )?;
                Ok(vec![products, reduce])
            }
        }
    }

    crate::kernels::encoders! {
        encode_backward_input_ragged => backward_input_ragged(args: &GroupedGemmBackwardInput<'_>, rows: RowMap<'_>, scratch: Option<SlotScratch<'_>>);
        encode_forward_ragged => forward_ragged(args: &GroupedGemmForward<'_>, rows: RowMap<'_>);
        encode_backward_weights_ragged => backward_weights_ragged(args: &GroupedGemmBackwardWeights<'_>, rows: RowMap<'_>);
    }

    /// `dX[r] = Σ_g S[slot_base(g) + slot_g(r)]` over the groups `r` is routed to.
    fn reduce_slots(
        &self,
        ctx: &'static str,
        args: &GroupedGemmBackwardInput<'_>,
        rows: RowMap<'_>,
        compact: CompactRows<'_>,
    ) -> Result<Dispatch> {
        let s = &args.shape;
        let limits = self.gpu.limits();
        let workgroup = REDUCE_WORKGROUP
            .min(limits.max_compute_invocations_per_workgroup)
            .min(limits.max_compute_workgroup_size_x);
        if self.gpu.adapter().device_type == wgpu::DeviceType::Cpu {
            crate::kernels::check_loop_budget(
                ctx,
                reduce_loop_iterations(s.groups, workgroup),
                "fewer groups per call needs fewer",
            )?;
        }
        // Enough 4-column blocks per invocation that one workgroup covers a row of up
        // to 1024 columns: each of its row lookups then serves as many columns as it can.
        let blocks = (s.inputs.div_ceil(4 * workgroup as usize) as u32).clamp(1, REDUCE_MAX_BLOCKS);
        let operands = [
            map_operand(ctx, s, rows, 1)?,
            Operand::new("scratch", 2, compact.view, compact.slots * s.inputs, Read),
            Operand::new("dx", 3, args.dx, s.x_len(), ReadWrite).of(args.precision),
        ];
        let bound = bind_operands(&self.gpu, ctx, &operands)?;
        let params = ReduceParams {
            groups: s.groups as u32,
            rows: s.rows as u32,
            inputs: s.inputs as u32,
            slots: compact.slots as u32,
            flags: if args.accumulate {
                super::FLAG_ACCUMULATE
            } else {
                0
            },
            routes_base: bound[0].base,
            slots_base: bound[1].base,
            dx_base: bound[2].base,
        };
        // Rows along y, spilling into z past the device's limit per dimension.
        let per_dim = limits.max_compute_workgroups_per_dimension.max(1) as usize;
        let along_y = s.rows.min(per_dim);
        let workgroups = [
            s.inputs.div_ceil(4 * (workgroup * blocks) as usize) as u32,
            along_y as u32,
            s.rows.div_ceil(along_y) as u32,
        ];
        let program = (
            program_for(&REDUCE, args.precision),
            "reduce_slots",
            &[("WG", workgroup), ("CB", blocks)][..],
        );
        Dispatch::launch(&self.gpu, ctx, program, &params, (&bound, &[]), workgroups)
    }
}

/// Floating-point operations of a ragged forward pass on `shape` whose groups
/// computed `counts[g]` rows: `2 · Σ_g count_g · inputs · outputs` (the weight
/// gradients do as many, and so does the input gradient; on a shared input its
/// reduce adds `Σ_g count_g · inputs` more, one addition per stored value). The counts are the first `groups` values of the row map,
/// e.g. from [`read_counts`]; each must be at most `shape.rows`.
pub fn ragged_flops(shape: &GemmShape, counts: &[u32]) -> Result<f64> {
    const CTX: &str = "ragged_flops";
    shape.validate(CTX)?;
    if counts.len() != shape.groups {
        return Err(Error::shape(
            CTX,
            "counts",
            format!("{} counts (one per group)", shape.groups),
            format!("{} counts", counts.len()),
        ));
    }
    if let Some((g, &c)) = counts
        .iter()
        .enumerate()
        .find(|&(_, &c)| c as usize > shape.rows)
    {
        return Err(Error::invalid(
            format!("{CTX} counts[{g}]"),
            format!("{c} rows routed, but the shape has {} rows", shape.rows),
        ));
    }
    let products: f64 = counts
        .iter()
        .enumerate()
        .map(|(g, &c)| f64::from(c) * shape.x_window(g).1 as f64)
        .sum();
    Ok(2.0 * products * shape.outputs as f64)
}

/// Reads the `groups` counts at the start of `rows` back from the device (waiting for
/// the work submitted so far): the numbers [`ragged_flops`] needs.
pub fn read_counts(gpu: &Gpu, rows: RowMap<'_>, groups: usize) -> Result<Vec<u32>> {
    if !rows.routes.offset.is_multiple_of(4) {
        return Err(Error::Binding {
            context: "read_counts".into(),
            operand: "routes".into(),
            problem: format!(
                "offset {} is not a multiple of 4 bytes (the element size)",
                rows.routes.offset
            ),
        });
    }
    gpu.read(rows.routes.buffer, rows.routes.offset, groups)
}

/// The scratch's rows for `shape` after checking the bound and the buffer's room.
fn check_scratch<'a>(
    ctx: &str,
    shape: &GemmShape,
    scratch: &SlotScratch<'a>,
) -> Result<CompactRows<'a>> {
    if scratch.max_routes_per_row == 0 {
        return Err(Error::invalid(
            format!("{ctx} `scratch`"),
            "max_routes_per_row is 0; a row routed nowhere needs no scratch, but the bound must be at least 1",
        ));
    }
    let slots = SlotScratch::slots(shape, scratch.max_routes_per_row);
    let elements = slots as u128 * shape.inputs as u128;
    // The shaders index the scratch with 32-bit arithmetic.
    if elements >= u32::MAX as u128 / 2 {
        return Err(Error::Limit {
            context: ctx.into(),
            what: "element count of the scratch".into(),
            value: elements.min(u64::MAX as u128) as u64,
            limit: u32::MAX as u64 / 2,
        });
    }
    let view = scratch.buffer;
    let needed = view.offset as u128 + 4 * elements;
    if needed > view.buffer.size() as u128 {
        return Err(Error::shape(
            ctx,
            "scratch",
            format!(
                "a buffer of at least {needed} bytes ({slots} rows of {} f32: {} rows × {} routes per row, from byte offset {})",
                shape.inputs,
                shape.rows,
                scratch.max_routes_per_row.min(shape.groups),
                view.offset
            ),
            format!("a buffer of {} bytes", view.buffer.size()),
        ));
    }
    Ok(CompactRows { view, slots })
}
