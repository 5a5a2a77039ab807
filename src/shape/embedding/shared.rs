//! Fields that share one table: the table's touched rows are the union of the
//! fields' IDs, and each field's gradient is laid out over that union, so that the
//! fields' backward passes add into one compact gradient that one update reads.

use super::{EmbeddingArrays, EmbeddingBatch, EmbeddingShape, NO_ID};
use crate::{Error, Result};

/// The distinct IDs of several batches of fields sharing one table, ascending.
pub fn union_ids(batches: &[&EmbeddingBatch]) -> Vec<u32> {
    let mut all: Vec<u32> = batches
        .iter()
        .flat_map(|b| b.unique_ids().iter().copied())
        .collect();
    all.sort_unstable();
    all.dedup();
    all
}

impl EmbeddingBatch {
    /// The batch's arrays padded to `shape`'s capacities ([`arrays`](Self::arrays)),
    /// with the unique IDs replaced by `unique` (ascending, distinct, holding every ID
    /// of this batch: the [`union_ids`] of the fields sharing the table) and the
    /// occurrence offsets laid out over them: an ID this batch does not hold gets no
    /// occurrences, so its gradient row is zero (or left as it is, accumulating).
    /// `shape.bounds.unique` must hold the union.
    pub fn arrays_over(&self, shape: &EmbeddingShape, unique: &[u32]) -> Result<EmbeddingArrays> {
        let mut arrays = self.arrays(shape)?;
        let ctx = format!("embedding field `{}`", self.name());
        if unique.len() > shape.bounds.unique {
            return Err(Error::shape(
                &ctx,
                "bounds.unique",
                format!("room for the table's {} distinct IDs", unique.len()),
                shape.bounds.unique.to_string(),
            ));
        }
        let own = self.unique_ids();
        let mut offsets = Vec::with_capacity(shape.unique_offsets_len());
        let mut next = 0;
        for (i, &id) in unique.iter().enumerate() {
            if i > 0 && unique[i - 1] >= id {
                return Err(Error::invalid(ctx, "the shared unique IDs must ascend"));
            }
            let start = self.unique_offsets().get(next).copied().unwrap_or(0);
            offsets.push(start);
            if own.get(next) == Some(&id) {
                next += 1;
            }
        }
        if next != own.len() {
            let missing = own[next];
            return Err(Error::invalid(
                ctx,
                format!("ID {missing} of the batch is not among the table's unique IDs"),
            ));
        }
        let end = self.ids().len() as u32;
        offsets.resize(shape.unique_offsets_len(), end);
        arrays.unique_offsets = offsets;
        arrays.unique_ids = unique.to_vec();
        arrays.unique_ids.resize(shape.bounds.unique, NO_ID);
        Ok(arrays)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shape::{EmbeddingField, Pooling};

    #[test]
    fn occurrences_are_laid_out_over_the_union() {
        let field = EmbeddingField {
            vocab: 10,
            dim: 2,
            multi_valued: true,
            weighted: false,
            pooling: Pooling::Sum,
        };
        let a = EmbeddingBatch::new(&field, "a", 2, &[7, 2, 7], Some(&[0, 2, 3]), None).unwrap();
        let b = EmbeddingBatch::new(&field, "b", 2, &[4, 9], Some(&[0, 1, 2]), None).unwrap();
        let union = union_ids(&[&a, &b]);
        assert_eq!(union, [2, 4, 7, 9]);
        let mut shape = a.shape(5, 1);
        shape.bounds.unique = 6;
        let arrays = a.arrays_over(&shape, &union).unwrap();
        assert_eq!(arrays.unique_ids, [2, 4, 7, 9, NO_ID, NO_ID]);
        // ID 2: occurrence 0; 4: none; 7: occurrences 1 and 2; 9: none.
        assert_eq!(arrays.unique_offsets, [0, 1, 1, 3, 3, 3, 3]);
        assert_eq!(arrays.occurrences[..6], a.occurrences()[..]);
        shape.bounds.unique = 3;
        assert!(a.arrays_over(&shape, &union).is_err());
        shape.bounds.unique = 6;
        assert!(a.arrays_over(&shape, &[2, 4, 9]).is_err(), "7 missing");
        assert!(a.arrays_over(&shape, &[7, 2]).is_err(), "not ascending");
    }
}
