//! k-means kernels against the CPU reference on awkward shapes (rows not a multiple
//! of the tile or workgroup, one cluster, as many clusters as rows, more than one
//! chunk of rows, duplicate points, exact ties), every workgroup size bitwise equal,
//! runs bitwise reproducible, bad input rejected.
//!
//! Points of small integers make every f32 product and sum exact, so on them the
//! assignment (ties included) and the counts must equal the reference exactly; real
//! points are held to the reference within rounding.

use crate::common::*;
use mmoe_wgpu::kernels::BufferView;
use mmoe_wgpu::kernels::kmeans::{KMeans, KMeansAssign, KMeansShape, KMeansUpdate};
use mmoe_wgpu::reference::kmeans as reference;
use mmoe_wgpu::rng::Rng;
use mmoe_wgpu::{Error, Gpu};

/// What one assignment and update produced.
#[derive(Debug, PartialEq)]
struct Step {
    assignment: Vec<u32>,
    distance: Vec<u32>,
    updated: Vec<u32>,
    counts: Vec<u32>,
}

fn step_on_gpu(gpu: &Gpu, kmeans: &KMeans, shape: KMeansShape, x: &[f32], c: &[f32]) -> Step {
    // Operands at offsets that are not binding-aligned.
    let (packed, at) = pack(&[x, c], 7.0);
    let input = gpu.upload("x and centroids", &packed).unwrap();
    let out = |name, len: usize| gpu.storage_buffer(name, 4 * (len as u64 + 3)).unwrap();
    let assignment = out("assignment", shape.rows);
    let distance = out("distance", shape.rows);
    let partial = out("partial", shape.partial_len());
    let updated = out("updated", shape.centroids_len());
    let counts = out("counts", shape.clusters);
    let x_view = BufferView::at(&input, 4 * at[0] as u64);
    let c_view = BufferView::at(&input, 4 * at[1] as u64);
    let assign = kmeans
        .assign(&KMeansAssign {
            shape,
            x: x_view,
            centroids: c_view,
            assignment: BufferView::at(&assignment, 4),
            distance: BufferView::new(&distance),
        })
        .unwrap();
    let update = kmeans
        .update(&KMeansUpdate {
            shape,
            x: x_view,
            assignment: BufferView::at(&assignment, 4),
            centroids: c_view,
            partial: BufferView::at(&partial, 12),
            updated: BufferView::new(&updated),
            counts: BufferView::at(&counts, 8),
        })
        .unwrap();
    run(gpu, |e| {
        assign.encode(e);
        for d in &update {
            d.encode(e);
        }
    });
    Step {
        assignment: gpu.read(&assignment, 4, shape.rows).unwrap(),
        distance: bits(&read(gpu, &distance, shape.rows)),
        updated: bits(&read(gpu, &updated, shape.centroids_len())),
        counts: gpu.read(&counts, 8, shape.clusters).unwrap(),
    }
}

fn floats(bits: &[u32]) -> Vec<f32> {
    bits.iter().map(|&b| f32::from_bits(b)).collect()
}

/// Shapes: rows around the 4-row tile and the 64-invocation workgroup and past one
/// chunk of 1024 rows; clusters around the 4-cluster tile, one, and one per row.
fn shapes() -> Vec<KMeansShape> {
    let mut out = Vec::new();
    for (rows, cols) in [(1, 1), (3, 2), (17, 5), (100, 3), (257, 7), (1100, 4)] {
        for clusters in [1, 2, 3, 5, 8, rows] {
            if clusters <= rows {
                out.push(KMeansShape {
                    rows,
                    cols,
                    clusters,
                });
            }
        }
    }
    out.dedup();
    out
}

/// Integer points in [-3, 3] and centroids drawn from them (duplicates included):
/// exact in f32.
fn integer_case(rng: &mut Rng, shape: &KMeansShape) -> (Vec<f32>, Vec<f32>) {
    let x: Vec<f32> = (0..shape.x_len())
        .map(|_| rng.below(7) as f32 - 3.0)
        .collect();
    let mut c = Vec::with_capacity(shape.centroids_len());
    for _ in 0..shape.clusters {
        let r = rng.below(shape.rows as u64) as usize;
        c.extend_from_slice(&x[r * shape.cols..(r + 1) * shape.cols]);
    }
    (x, c)
}

#[test]
fn on_integer_points_assignment_ties_and_counts_equal_the_reference_exactly() {
    let gpu = gpu();
    let kmeans = KMeans::new(gpu);
    for (n, shape) in shapes().into_iter().enumerate() {
        let (x, c) = integer_case(&mut Rng::new(n as u64), &shape);
        let got = step_on_gpu(gpu, &kmeans, shape, &x, &c);
        let (assignment, distance) = reference::assign(&shape, &to_f64(&x), &to_f64(&c)).unwrap();
        assert_eq!(got.assignment, assignment, "{shape:?}");
        let want: Vec<f32> = distance.iter().map(|&d| d as f32).collect();
        assert_eq!(floats(&got.distance), want, "{shape:?}");
        let (means, counts) =
            reference::update(&shape, &to_f64(&x), &assignment, &to_f64(&c)).unwrap();
        assert_eq!(got.counts, counts, "{shape:?}");
        // Sums of integers are exact; only the division rounds.
        assert_close(&format!("{shape:?}"), &floats(&got.updated), &means, 1e-6);
    }
}

#[test]
fn on_real_points_the_step_matches_the_reference() {
    let gpu = gpu();
    let kmeans = KMeans::new(gpu);
    for (n, shape) in shapes().into_iter().enumerate() {
        let mut rng = Rng::new(100 + n as u64);
        let x = random(&mut rng, shape.x_len(), 2.0);
        let c = random(&mut rng, shape.centroids_len(), 2.0);
        let got = step_on_gpu(gpu, &kmeans, shape, &x, &c);
        let (x64, c64) = (to_f64(&x), to_f64(&c));
        let (assignment, distance) = reference::assign(&shape, &x64, &c64).unwrap();
        // A row may go elsewhere only if the reference's two best scores are within
        // rounding of each other.
        for (row, (&g, &w)) in got.assignment.iter().zip(&assignment).enumerate() {
            if g != w {
                let point = &x64[row * shape.cols..(row + 1) * shape.cols];
                let dist = |k: u32| {
                    let c = &c64[k as usize * shape.cols..(k as usize + 1) * shape.cols];
                    point
                        .iter()
                        .zip(c)
                        .map(|(a, b)| (a - b).powi(2))
                        .sum::<f64>()
                };
                assert!(
                    (dist(g) - dist(w)).abs() < 1e-4,
                    "{shape:?} row {row}: {g} vs {w}"
                );
            }
        }
        assert_close(
            &format!("{shape:?} distance"),
            &floats(&got.distance),
            &distance,
            1e-5,
        );
        // The update from the GPU's own assignment.
        let (means, counts) = reference::update(&shape, &x64, &got.assignment, &c64).unwrap();
        assert_eq!(got.counts, counts, "{shape:?}");
        assert_close(
            &format!("{shape:?} centroids"),
            &floats(&got.updated),
            &means,
            1e-5,
        );
    }
}

#[test]
fn ties_go_to_the_lowest_cluster_and_an_empty_cluster_keeps_its_centroid() {
    let gpu = gpu();
    let kmeans = KMeans::new(gpu);
    let shape = KMeansShape {
        rows: 6,
        cols: 2,
        clusters: 6,
    };
    // Row 0 is as far from centroids 1 and 2 as from 3 and 4; the duplicate
    // centroids 4 and 5 leave cluster 5 empty; cluster 0 is far from everything.
    let x = [
        0.0f32, 0.0, 0.0, 0.0, 2.0, 0.0, -2.0, 0.0, 0.0, 1.0, 0.0, -1.0,
    ];
    let c = [
        50.0f32, 50.0, 1.0, 0.0, -1.0, 0.0, 0.0, 1.0, 0.0, -1.0, 0.0, -1.0,
    ];
    let got = step_on_gpu(gpu, &kmeans, shape, &x, &c);
    assert_eq!(got.assignment, [1, 1, 1, 2, 3, 4]);
    assert_eq!(floats(&got.distance), [1.0, 1.0, 1.0, 1.0, 0.0, 0.0]);
    assert_eq!(got.counts, [0, 3, 1, 1, 1, 0]);
    #[rustfmt::skip]
    let want = [50.0f32, 50.0, 2.0 / 3.0, 0.0, -2.0, 0.0, 0.0, 1.0, 0.0, -1.0, 0.0, -1.0];
    assert_eq!(floats(&got.updated), want);
    let (assignment, _) = reference::assign(&shape, &to_f64(&x), &to_f64(&c)).unwrap();
    assert_eq!(got.assignment, assignment);
}

#[test]
fn every_workgroup_size_and_every_run_give_the_same_bits() {
    let gpu = gpu();
    let shape = KMeansShape {
        rows: 2100,
        cols: 13,
        clusters: 7,
    };
    let mut rng = Rng::new(9);
    let x = random(&mut rng, shape.x_len(), 3.0);
    let c = random(&mut rng, shape.centroids_len(), 3.0);
    let first = step_on_gpu(gpu, &KMeans::new(gpu), shape, &x, &c);
    assert_eq!(first, step_on_gpu(gpu, &KMeans::new(gpu), shape, &x, &c));
    for wg in [1, 8, 256] {
        let kmeans = KMeans::with_workgroup_size(gpu, wg).unwrap();
        assert_eq!(first, step_on_gpu(gpu, &kmeans, shape, &x, &c), "WG {wg}");
    }
}

#[test]
fn bad_shapes_and_buffers_are_errors_that_say_which() {
    let gpu = gpu();
    let kmeans = KMeans::new(gpu);
    let buffer = gpu.storage_buffer("b", 4096).unwrap();
    let view = BufferView::new(&buffer);
    let assign = |shape| KMeansAssign {
        shape,
        x: view,
        centroids: view,
        assignment: view,
        distance: view,
    };
    let message = |e: Error| e.to_string();
    let shape = |rows, cols, clusters| KMeansShape {
        rows,
        cols,
        clusters,
    };
    let e = message(kmeans.assign(&assign(shape(3, 2, 4))).unwrap_err());
    assert!(e.contains("4 clusters for 3 rows"), "{e}");
    let e = message(kmeans.assign(&assign(shape(3, 0, 1))).unwrap_err());
    assert!(e.contains("`cols`"), "{e}");
    let e = message(kmeans.assign(&assign(shape(3, 2, 0))).unwrap_err());
    assert!(e.contains("`clusters`"), "{e}");
    // The same buffer read and written.
    let e = message(kmeans.assign(&assign(shape(3, 2, 1))).unwrap_err());
    assert!(e.contains("must be distinct"), "{e}");
    let small = gpu.storage_buffer("small", 8).unwrap();
    let other = gpu.storage_buffer("other", 4096).unwrap();
    let e = message(
        kmeans
            .assign(&KMeansAssign {
                shape: shape(30, 2, 1),
                x: BufferView::new(&small),
                centroids: view,
                assignment: BufferView::new(&other),
                distance: BufferView::at(&other, 1024),
            })
            .unwrap_err(),
    );
    assert!(e.contains("`x`"), "{e}");
    let e = message(
        kmeans
            .update(&KMeansUpdate {
                shape: shape(30, 2, 2),
                x: view,
                assignment: BufferView::new(&small),
                centroids: view,
                partial: BufferView::new(&other),
                updated: BufferView::at(&other, 2048),
                counts: BufferView::at(&other, 3072),
            })
            .unwrap_err(),
    );
    assert!(e.contains("`assignment`"), "{e}");
    // Too many clusters × columns for one invocation's loop budget.
    let e = kmeans
        .assign(&assign(shape(40_000, 20_000, 40_000)))
        .unwrap_err();
    assert!(matches!(e, Error::Limit { .. }), "{e}");
}
