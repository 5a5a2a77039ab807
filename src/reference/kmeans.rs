//! Reference k-means steps in f64, as [`kernels::kmeans`](crate::kernels::kmeans)
//! computes them: the assignment scores each cluster by `‖c‖² − 2·x·c` (the squared
//! distance less `‖x‖²`) and keeps the first strictly smallest; the update is each
//! cluster's mean, an empty cluster keeping its old centroid.

use super::check_len;
use crate::shape::KMeansShape;
use crate::{Error, Result};

/// Each row's nearest centroid (ties to the lowest index) and its squared distance
/// `max(‖x‖² − 2·x·c + ‖c‖², 0)`, for `x: [rows, cols]` and `centroids:
/// [clusters, cols]`.
pub fn assign(shape: &KMeansShape, x: &[f64], centroids: &[f64]) -> Result<(Vec<u32>, Vec<f64>)> {
    const CTX: &str = "reference kmeans assign";
    shape.validate(CTX)?;
    check_len(CTX, "x", x, shape.x_len())?;
    check_len(CTX, "centroids", centroids, shape.centroids_len())?;
    let d = shape.cols;
    let norms: Vec<f64> = centroids
        .chunks(d)
        .map(|c| c.iter().map(|v| v * v).sum())
        .collect();
    let mut assignment = Vec::with_capacity(shape.rows);
    let mut distance = Vec::with_capacity(shape.rows);
    for row in x.chunks(d) {
        let mut best = (f64::INFINITY, 0u32);
        for (k, c) in centroids.chunks(d).enumerate() {
            let dot: f64 = row.iter().zip(c).map(|(a, b)| a * b).sum();
            let score = norms[k] - 2.0 * dot;
            if score < best.0 {
                best = (score, k as u32);
            }
        }
        let norm: f64 = row.iter().map(|v| v * v).sum();
        assignment.push(best.1);
        distance.push((norm + best.0).max(0.0));
    }
    Ok((assignment, distance))
}

/// Each cluster's mean of the rows `assignment` gives it, or its old centroid when
/// it has none, and the rows per cluster.
pub fn update(
    shape: &KMeansShape,
    x: &[f64],
    assignment: &[u32],
    centroids: &[f64],
) -> Result<(Vec<f64>, Vec<u32>)> {
    const CTX: &str = "reference kmeans update";
    shape.validate(CTX)?;
    check_len(CTX, "x", x, shape.x_len())?;
    check_len(CTX, "centroids", centroids, shape.centroids_len())?;
    if assignment.len() != shape.rows {
        return Err(Error::shape(
            CTX,
            "assignment",
            format!("{} values", shape.rows),
            format!("{} values", assignment.len()),
        ));
    }
    let d = shape.cols;
    let mut sums = vec![0.0; shape.centroids_len()];
    let mut counts = vec![0u32; shape.clusters];
    for (row, &k) in x.chunks(d).zip(assignment) {
        let k = k as usize;
        if k < shape.clusters {
            counts[k] += 1;
            for (s, v) in sums[k * d..(k + 1) * d].iter_mut().zip(row) {
                *s += v;
            }
        }
    }
    for (k, &n) in counts.iter().enumerate() {
        let range = k * d..(k + 1) * d;
        if n == 0 {
            sums[range.clone()].copy_from_slice(&centroids[range]);
        } else {
            sums[range].iter_mut().for_each(|s| *s /= n as f64);
        }
    }
    Ok((sums, counts))
}
