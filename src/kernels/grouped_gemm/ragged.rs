//! Ragged mode of the grouped GEMM: each group runs on only the rows a row map routes
//! to it, in the dense kernels' dispatches (see the family's module docs).

use super::{
    BufferView, Dispatch, Error, GemmBackwardWeights, GemmForward, GroupedGemm, Operand, Pass,
    ROUTES_SLOT, Recorder, Result, Tiling, op,
};
use crate::gpu::{BindingKind, Gpu};
use crate::shape::GemmShape;

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
        groups * (rows + 1)
    }
}

/// The row map's operand, or, for a dense pass, `stand_in`'s buffer in its slot.
pub(super) fn routes_operand<'a>(
    ctx: &str,
    shape: &GemmShape,
    rows: Option<RowMap<'a>>,
    stand_in: &Operand<'a>,
) -> Result<Operand<'a>> {
    let Some(map) = rows else {
        return Ok(stand_in.stand_in(ROUTES_SLOT));
    };
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
    Ok(op(
        "routes",
        ROUTES_SLOT,
        map.routes,
        len,
        BindingKind::Read,
    ))
}

impl GroupedGemm {
    /// Checks and binds the ragged forward pass (see [ragged mode](super#ragged-mode)): for
    /// every group, `act(X · W_g + b_g)` on the rows `rows` routes to it and zeros on
    /// the others, in one dispatch, with the tiling tuned for the dense shape.
    pub fn forward_ragged(&self, args: &GemmForward<'_>, rows: RowMap<'_>) -> Result<Dispatch> {
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
        args: &GemmForward<'_>,
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
        args: &GemmBackwardWeights<'_>,
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
        args: &GemmBackwardWeights<'_>,
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

    /// Checks, binds and records the ragged forward pass into `target`: a
    /// [`wgpu::CommandEncoder`] or an open [`wgpu::ComputePass`]. Nothing is recorded
    /// when a check fails.
    pub fn encode_forward_ragged(
        &self,
        target: &mut impl Recorder,
        args: &GemmForward<'_>,
        rows: RowMap<'_>,
    ) -> Result<()> {
        target.record_dispatch(&self.forward_ragged(args, rows)?);
        Ok(())
    }

    /// Checks, binds and records the ragged weight gradients into `target`. Nothing
    /// is recorded when a check fails.
    pub fn encode_backward_weights_ragged(
        &self,
        target: &mut impl Recorder,
        args: &GemmBackwardWeights<'_>,
        rows: RowMap<'_>,
    ) -> Result<()> {
        target.record_dispatch(&self.backward_weights_ragged(args, rows)?);
        Ok(())
    }
}

/// Floating-point operations of a ragged forward pass on `shape` whose groups
/// computed `counts[g]` rows: `2 · Σ_g count_g · inputs · outputs` (the weight
/// gradients do as many). The counts are the first `groups` values of the row map,
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
    let rows: f64 = counts.iter().map(|&c| f64::from(c)).sum();
    Ok(2.0 * rows * shape.inputs as f64 * shape.outputs as f64)
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
