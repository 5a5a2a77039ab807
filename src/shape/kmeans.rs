//! The k-means family's vocabulary: its shape, the lengths of its operands and the
//! fixed chunk of rows its update sums in.

use super::{check_elements, check_nonzero};
use crate::{Error, Result};

/// Rows per chunk of the k-means update's first-level sums. It fixes the order in
/// which each centroid's values are added, and so the bits of the result: it is a
/// constant, not a tuning choice.
pub const KMEANS_CHUNK_ROWS: usize = 1024;

/// Shape of one k-means step: `rows` points of `cols` values, `clusters` centroids.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KMeansShape {
    /// Points `n`.
    pub rows: usize,
    /// Values per point `d`.
    pub cols: usize,
    /// Clusters `k`: at least 1 and at most `rows`.
    pub clusters: usize,
}

impl KMeansShape {
    /// Checks every dimension is non-zero, that there are no more clusters than
    /// rows, and that every tensor fits the 32-bit indexing the shader uses.
    pub fn validate(&self, context: &str) -> Result<()> {
        let (n, d, k) = (self.rows, self.cols, self.clusters);
        check_nonzero(context, &[("rows", n), ("cols", d), ("clusters", k)])?;
        if k > n {
            return Err(Error::invalid(
                context,
                format!("{k} clusters for {n} rows: there cannot be more clusters than rows"),
            ));
        }
        check_elements(
            context,
            &[
                ("x", &[n, d]),
                ("the partial sums", &[self.chunks(), k, d + 1]),
            ],
        )
    }

    /// Elements of `x`.
    pub fn x_len(&self) -> usize {
        self.rows * self.cols
    }

    /// Elements of the centroids, `[clusters, cols]`.
    pub fn centroids_len(&self) -> usize {
        self.clusters * self.cols
    }

    /// Chunks of [`KMEANS_CHUNK_ROWS`] rows the update sums separately.
    pub fn chunks(&self) -> usize {
        self.rows.div_ceil(KMEANS_CHUNK_ROWS)
    }

    /// Elements of the update's scratch of partial sums,
    /// `[chunks, clusters, cols + 1]`.
    pub fn partial_len(&self) -> usize {
        self.chunks() * self.clusters * (self.cols + 1)
    }
}
