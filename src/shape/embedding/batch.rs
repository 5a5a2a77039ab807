//! Host-side preparation of one field's batch, when the batch is built: the IDs are
//! checked, then sorted into the unique IDs and each one's occurrences, which is what
//! lets the backward pass cost grow with the batch and never with the vocabulary.

use super::{EmbeddingBounds, EmbeddingField, EmbeddingShape};
use crate::{Error, Result};

/// The ID that pads the ID lists to their capacity: outside every vocabulary, so the
/// kernels skip it (a padded row gets zeros, a padded unique ID no update).
pub const NO_ID: u32 = u32::MAX;

/// One field's IDs for one batch, checked, with what the backward pass and the sparse
/// update need: the batch's unique IDs in ascending order and, for each, its
/// occurrences as `(position in the ID list, row)` pairs in ascending position, the
/// fixed order the gradient sums them in.
///
/// ```
/// use mmoe_wgpu::shape::{EmbeddingBatch, EmbeddingField, Pooling};
///
/// # fn main() -> mmoe_wgpu::Result<()> {
/// let field = EmbeddingField {
///     vocab: 10, dim: 4, multi_valued: true, weighted: false, pooling: Pooling::Sum,
/// };
/// // Row 0: IDs 7, 2, 7; row 1: no ID; row 2: ID 2.
/// let batch = EmbeddingBatch::new(&field, "tags", 3, &[7, 2, 7, 2], Some(&[0, 3, 3, 4]), None)?;
/// assert_eq!(batch.unique_ids(), [2, 7]);
/// assert_eq!(batch.unique_offsets(), [0, 2, 4]);
/// // ID 2 at positions 1 (row 0) and 3 (row 2); ID 7 at positions 0 and 2 (row 0).
/// assert_eq!(batch.occurrences(), [1, 0, 3, 2, 0, 0, 2, 0]);
///
/// let bad = EmbeddingBatch::new(&field, "tags", 3, &[7, 2, 17, 2], Some(&[0, 3, 3, 4]), None);
/// let message = bad.unwrap_err().to_string();
/// assert!(message.contains("`tags`, row 0") && message.contains("ID 17"), "{message}");
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct EmbeddingBatch {
    name: String,
    field: EmbeddingField,
    rows: usize,
    ids: Vec<u32>,
    offsets: Vec<u32>,
    weights: Option<Vec<f32>>,
    unique_ids: Vec<u32>,
    unique_offsets: Vec<u32>,
    occurrences: Vec<u32>,
}

/// A batch's arrays at the lengths of an [`EmbeddingShape`]'s capacities, ready to
/// write into the buffers the kernels read ([`EmbeddingBatch::arrays`]). Past the
/// batch's own length, ID lists hold [`NO_ID`], offsets repeat their last value (empty
/// bags and occurrence lists) and weights are zero.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EmbeddingArrays {
    /// `ids: [bounds.ids]`.
    pub ids: Vec<u32>,
    /// `offsets: [rows + 1]`; empty for a single-valued field, which binds none.
    pub offsets: Vec<u32>,
    /// `weights: [bounds.ids]`; empty for an unweighted field, which binds none.
    pub weights: Vec<f32>,
    /// `unique_ids: [bounds.unique]`, ascending.
    pub unique_ids: Vec<u32>,
    /// `unique_offsets: [bounds.unique + 1]` into the occurrences.
    pub unique_offsets: Vec<u32>,
    /// `occurrences: [bounds.ids]` pairs `(position, row)`, flattened.
    pub occurrences: Vec<u32>,
}

impl EmbeddingBatch {
    /// Checks and prepares `rows` rows of the field `field` (named `name` in errors):
    /// - single-valued: `ids` holds one ID per row and `offsets` is `None`;
    /// - multi-valued: `offsets: [rows + 1]` CSR offsets into `ids`, starting at 0,
    ///   never decreasing and ending at `ids.len()` (row `r`'s bag is
    ///   `ids[offsets[r] .. offsets[r + 1]]`, possibly empty);
    /// - `weights: [ids.len()]`, finite, exactly when the field is weighted.
    ///
    /// A failure is an [`Error`] naming the field and, where one is at fault, the row:
    /// an ID outside the vocabulary, offsets that decrease, a bag past the ID count,
    /// a weight that is not finite; the lengths of `offsets` and `weights`.
    pub fn new(
        field: &EmbeddingField,
        name: &str,
        rows: usize,
        ids: &[u32],
        offsets: Option<&[u32]>,
        weights: Option<&[f32]>,
    ) -> Result<EmbeddingBatch> {
        let ctx = format!("embedding field `{name}`");
        let at_row = |r: usize, message: String| Error::invalid(format!("{ctx}, row {r}"), message);
        field.validate(&ctx)?;
        if rows == 0 {
            return Err(Error::shape(&ctx, "rows", "at least 1", "0"));
        }
        if ids.len() as u64 >= super::super::ELEMENT_LIMIT {
            return Err(Error::Limit {
                context: ctx,
                what: "IDs in one batch".into(),
                value: ids.len() as u64,
                limit: super::super::ELEMENT_LIMIT,
            });
        }
        let offsets: Vec<u32> = match (field.multi_valued, offsets) {
            (false, None) => {
                if ids.len() != rows {
                    return Err(Error::shape(
                        &ctx,
                        "ids",
                        format!("{rows} IDs (one per row of a single-valued field)"),
                        format!("{} IDs", ids.len()),
                    ));
                }
                (0..=rows as u32).collect()
            }
            (false, Some(_)) => {
                return Err(Error::invalid(
                    ctx,
                    "the field is single-valued (one ID per row), but offsets were given",
                ));
            }
            (true, None) => {
                return Err(Error::shape(
                    &ctx,
                    "offsets",
                    format!("{} CSR offsets (the field is multi-valued)", rows + 1),
                    "none",
                ));
            }
            (true, Some(o)) => {
                check_offsets(&ctx, rows, ids.len(), o)?;
                o.to_vec()
            }
        };
        let weights = match (field.weighted, weights) {
            (true, Some(w)) if w.len() == ids.len() => Some(w.to_vec()),
            (true, w) => {
                let given = w.map_or("none".to_string(), |w| format!("{} weights", w.len()));
                let want = format!("{} weights, one per ID", ids.len());
                return Err(Error::shape(&ctx, "weights", want, given));
            }
            (false, None) => None,
            (false, Some(_)) => {
                return Err(Error::invalid(
                    ctx,
                    "the field is unweighted, but weights were given",
                ));
            }
        };
        let mut row_of = vec![0u32; ids.len()];
        for r in 0..rows {
            for k in offsets[r] as usize..offsets[r + 1] as usize {
                row_of[k] = r as u32;
                if ids[k] as usize >= field.vocab {
                    let message = format!(
                        "ID {} (position {k}) is outside the vocabulary of {}",
                        ids[k], field.vocab
                    );
                    return Err(at_row(r, message));
                }
                if let Some(w) = weights.as_ref().map(|w| w[k]).filter(|w| !w.is_finite()) {
                    return Err(at_row(r, format!("the weight at position {k} is {w}")));
                }
            }
        }
        // A stable sort: positions stay ascending within each ID.
        let mut order: Vec<u32> = (0..ids.len() as u32).collect();
        order.sort_by_key(|&k| ids[k as usize]);
        let mut unique_ids = Vec::new();
        let mut unique_offsets = vec![0];
        let mut occurrences = Vec::with_capacity(2 * ids.len());
        for (n, &k) in order.iter().enumerate() {
            let id = ids[k as usize];
            if unique_ids.last() != Some(&id) {
                if n > 0 {
                    unique_offsets.push(n as u32);
                }
                unique_ids.push(id);
            }
            occurrences.extend([k, row_of[k as usize]]);
        }
        if !ids.is_empty() {
            unique_offsets.push(ids.len() as u32);
        }
        Ok(EmbeddingBatch {
            name: name.into(),
            field: *field,
            rows,
            ids: ids.to_vec(),
            offsets,
            weights,
            unique_ids,
            unique_offsets,
            occurrences,
        })
    }

    /// The field's name, as errors give it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The field.
    pub fn field(&self) -> &EmbeddingField {
        &self.field
    }

    /// Rows of the batch.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The flat ID list, bag after bag.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// The bags' CSR offsets `[rows + 1]` (`0, 1, …, rows` for a single-valued field).
    pub fn offsets(&self) -> &[u32] {
        &self.offsets
    }

    /// The per-ID weights of a weighted field.
    pub fn weights(&self) -> Option<&[f32]> {
        self.weights.as_deref()
    }

    /// The distinct IDs of the batch, ascending.
    pub fn unique_ids(&self) -> &[u32] {
        &self.unique_ids
    }

    /// `[unique + 1]` offsets into [`occurrences`](Self::occurrences), in pairs.
    pub fn unique_offsets(&self) -> &[u32] {
        &self.unique_offsets
    }

    /// `(position in the ID list, row)` of every ID, grouped by unique ID and in
    /// ascending position within each, flattened.
    pub fn occurrences(&self) -> &[u32] {
        &self.occurrences
    }

    /// The batch's own bounds (capacities of at least 1): the tightest an
    /// [`EmbeddingShape`] for it may have.
    pub fn bounds(&self) -> EmbeddingBounds {
        let longest = |o: &[u32]| o.windows(2).map(|w| (w[1] - w[0]) as usize).max();
        EmbeddingBounds {
            ids: self.ids.len().max(1),
            longest_bag: longest(&self.offsets).unwrap_or(0),
            unique: self.unique_ids.len().max(1),
            most_occurrences: longest(&self.unique_offsets).unwrap_or(0),
        }
    }

    /// The shape of this batch's lookup into columns `column ..` of an input of
    /// `width` columns, with the batch's own [`bounds`](Self::bounds).
    pub fn shape(&self, width: usize, column: usize) -> EmbeddingShape {
        EmbeddingShape {
            field: self.field,
            rows: self.rows,
            width,
            column,
            bounds: self.bounds(),
        }
    }

    /// The batch's arrays padded to `shape`'s capacities, after checking the batch
    /// fits: the same field, at most `shape.rows` rows (the rows past the batch's get
    /// empty bags, so zeros), and within every bound. A failure names the field and
    /// the bound, and the row or ID that exceeds it.
    pub fn arrays(&self, shape: &EmbeddingShape) -> Result<EmbeddingArrays> {
        let ctx = format!("embedding field `{}`", self.name);
        shape.validate(&ctx)?;
        if shape.field != self.field {
            return Err(Error::invalid(
                ctx,
                format!(
                    "the batch was prepared for {:?}, but the shape has {:?}",
                    self.field, shape.field
                ),
            ));
        }
        let b = &shape.bounds;
        let too_many = |bound: &str, what: String, n: usize| {
            Error::shape(
                &ctx,
                format!("bounds.{bound}"),
                format!("room for {what}"),
                n.to_string(),
            )
        };
        if self.rows > shape.rows {
            let want = format!("at least the batch's {} rows", self.rows);
            return Err(Error::shape(&ctx, "rows", want, shape.rows.to_string()));
        }
        if self.ids.len() > b.ids {
            return Err(too_many(
                "ids",
                format!("the batch's {} IDs", self.ids.len()),
                b.ids,
            ));
        }
        if self.unique_ids.len() > b.unique {
            let what = format!("the batch's {} distinct IDs", self.unique_ids.len());
            return Err(too_many("unique", what, b.unique));
        }
        let over =
            |o: &[u32], bound: usize| o.windows(2).position(|w| (w[1] - w[0]) as usize > bound);
        if let Some(r) = over(&self.offsets, shape.bag_loop()) {
            let n = self.offsets[r + 1] - self.offsets[r];
            let what = format!("row {r}'s bag of {n} IDs");
            return Err(too_many("longest_bag", what, b.longest_bag));
        }
        if let Some(u) = over(&self.unique_offsets, b.most_occurrences) {
            let n = self.unique_offsets[u + 1] - self.unique_offsets[u];
            let what = format!("the {n} occurrences of ID {}", self.unique_ids[u]);
            return Err(too_many("most_occurrences", what, b.most_occurrences));
        }
        let padded = |v: &[u32], len: usize, fill: u32| {
            let mut out = v.to_vec();
            out.resize(len, fill);
            out
        };
        let n = self.ids.len() as u32;
        let offsets = if self.field.multi_valued {
            padded(&self.offsets, shape.offsets_len(), n)
        } else {
            Vec::new()
        };
        let weights = self.weights.as_ref().map_or(Vec::new(), |w| {
            let mut out = w.clone();
            out.resize(b.ids, 0.0);
            out
        });
        let unique_start = if self.unique_ids.is_empty() {
            &[0][..]
        } else {
            &self.unique_offsets
        };
        Ok(EmbeddingArrays {
            ids: padded(&self.ids, b.ids, NO_ID),
            offsets,
            weights,
            unique_ids: padded(&self.unique_ids, b.unique, NO_ID),
            unique_offsets: padded(unique_start, shape.unique_offsets_len(), n),
            occurrences: padded(&self.occurrences, shape.occurrences_len(), NO_ID),
        })
    }
}

/// Checks CSR offsets over `ids` IDs: `rows + 1` of them, starting at 0, never
/// decreasing, ending at `ids`.
fn check_offsets(ctx: &str, rows: usize, ids: usize, o: &[u32]) -> Result<()> {
    let at_row = |r: usize, message: String| Error::invalid(format!("{ctx}, row {r}"), message);
    if o.len() != rows + 1 {
        return Err(Error::shape(
            ctx,
            "offsets",
            format!("{} CSR offsets ({rows} rows + 1)", rows + 1),
            format!("{} offsets", o.len()),
        ));
    }
    if o[0] != 0 {
        return Err(at_row(
            0,
            format!("the first bag starts at ID index {}, not 0", o[0]),
        ));
    }
    for r in 0..rows {
        let (start, end) = (o[r], o[r + 1]);
        if end < start {
            let message = format!("offsets decrease: the bag starts at {start} and ends at {end}");
            return Err(at_row(r, message));
        }
        if end as usize > ids {
            let message = format!("the bag ends at ID index {end}, past the {ids} IDs given");
            return Err(at_row(r, message));
        }
    }
    if o[rows] as usize != ids {
        let message = format!(
            "the last bag ends at ID index {}, but {ids} IDs were given",
            o[rows]
        );
        return Err(at_row(rows - 1, message));
    }
    Ok(())
}
