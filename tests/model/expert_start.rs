//! The data-partitioned start: k-means through the GPU kernels finds separated
//! blobs, bitwise the same on every run; `Trainer::start_experts` pre-trains each
//! expert on its blob and starts the gates routing each blob to its expert, then
//! training goes on as usual; bad input is an error that says which.

use crate::common::*;
use mmoe_wgpu::Error;
use mmoe_wgpu::model::partition::{kmeans, kmeans_plus_plus, nearest_centroids};
use mmoe_wgpu::model::{
    Architecture, ExpertStart, Gate, ModelConfig, PartitionOn, TaskConfig, TaskKind, Trainer,
};
use mmoe_wgpu::rng::Rng;

const INPUTS: usize = 3;

/// `per_blob` rows around each of `blobs` centres far apart (centre `b` at
/// `8·b` on the first axis, `−8·b` on the second), in blob order, with two targets
/// that differ by blob.
fn blobs(blobs: usize, per_blob: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
    let mut rng = Rng::new(seed);
    let mut x = Vec::new();
    let (mut y1, mut y2) = (Vec::new(), Vec::new());
    for b in 0..blobs {
        for _ in 0..per_blob {
            let row = [
                8.0 * b as f64 + rng.normal() * 0.5,
                -8.0 * b as f64 + rng.normal() * 0.5,
                rng.normal() * 0.5,
            ];
            x.extend(row.iter().map(|&v| v as f32));
            y1.push((row[0] * (b as f64 - 1.0) + row[2]) as f32);
            y2.push((b as f64 + row[1] * 0.1) as f32);
        }
    }
    y1.extend(y2);
    (x, y1)
}

fn mmoe(experts: usize) -> ModelConfig {
    let tasks = vec![
        TaskConfig::new("a", TaskKind::Regression),
        TaskConfig::new("b", TaskKind::Regression),
    ];
    ModelConfig {
        seed: 5,
        learning_rate: 0.01,
        ..ModelConfig::mmoe(INPUTS, experts, 4, 2, tasks)
    }
}

/// Each blob's rows all in one cluster, a different one per blob.
fn assert_blobs_separated(assignment: &[u32], blobs: usize, per_blob: usize) {
    let mut seen = Vec::new();
    for b in 0..blobs {
        let rows = &assignment[b * per_blob..(b + 1) * per_blob];
        assert!(rows.iter().all(|&a| a == rows[0]), "blob {b}: {rows:?}");
        assert!(!seen.contains(&rows[0]), "blobs share cluster {}", rows[0]);
        seen.push(rows[0]);
    }
}

#[test]
fn kmeans_finds_separated_blobs_and_repeats_bit_for_bit() {
    let gpu = gpu();
    let (x, _) = blobs(4, 300, 1);
    let first = kmeans(gpu, &x, INPUTS, 4, 50, 7).unwrap();
    assert!(first.converged);
    assert_blobs_separated(&first.assignment, 4, 300);
    assert_eq!(first.counts, [300; 4]);
    // Every centroid is its blob's mean (the f64 mean, within rounding).
    for (k, c) in first.centroids.chunks(INPUTS).enumerate() {
        let b = (0..4)
            .find(|&b| first.assignment[b * 300] == k as u32)
            .unwrap();
        for (j, &v) in c.iter().enumerate() {
            let mean: f64 = (0..300)
                .map(|r| x[(b * 300 + r) * INPUTS + j] as f64)
                .sum::<f64>()
                / 300.0;
            assert!((v as f64 - mean).abs() < 1e-5, "cluster {k} column {j}");
        }
    }
    let again = kmeans(gpu, &x, INPUTS, 4, 50, 7).unwrap();
    assert_eq!(first, again);
    // Assigning the rows again against the centroids gives the same partition.
    let nearest = nearest_centroids(gpu, &x, INPUTS, &first.centroids).unwrap();
    assert_eq!(nearest, first.assignment);
    // One cluster, and as many clusters as rows.
    let one = kmeans(gpu, &x[..30], INPUTS, 1, 5, 0).unwrap();
    assert_eq!(one.counts, [10]);
    let each = kmeans(gpu, &x[..30], INPUTS, 10, 5, 0).unwrap();
    assert_eq!(each.counts, [1; 10]);
    assert_eq!(each.inertia, 0.0);
}

#[test]
fn kmeans_plus_plus_on_duplicate_rows_leaves_later_clusters_empty() {
    let gpu = gpu();
    // Two distinct rows, five in all, four clusters: k-means++ takes both distinct
    // rows, then duplicates; ties send every row to the lower cluster.
    let x = [1.0f32, 1.0, 5.0, 5.0, 1.0, 1.0, 5.0, 5.0, 1.0, 1.0];
    let c = kmeans_plus_plus(&x, 2, 4, 3).unwrap();
    let clustering = kmeans(gpu, &x, 2, 4, 10, 3).unwrap();
    assert_eq!(clustering.counts.iter().sum::<usize>(), 5);
    assert_eq!(clustering.counts.iter().filter(|&&n| n > 0).count(), 2);
    assert_eq!(clustering.inertia, 0.0);
    let distinct: Vec<&[f32]> = c.chunks(2).collect();
    assert!(distinct.contains(&&[1.0f32, 1.0][..]));
    assert!(distinct.contains(&&[5.0f32, 5.0][..]));
}

#[test]
fn kmeans_rejects_bad_input_naming_it() {
    let gpu = gpu();
    let x = [0.0f32, 1.0, 2.0, 3.0, 4.0, 5.0];
    let text = |e: Error| e.to_string();
    let e = text(kmeans(gpu, &x, 2, 4, 10, 0).unwrap_err());
    assert!(e.contains("4 clusters for 3 rows"), "{e}");
    let e = text(kmeans(gpu, &x, 0, 1, 10, 0).unwrap_err());
    assert!(e.contains("0 columns"), "{e}");
    let e = text(kmeans(gpu, &x, 4, 1, 10, 0).unwrap_err());
    assert!(e.contains("whole number of rows"), "{e}");
    let e = text(kmeans(gpu, &x, 2, 0, 10, 0).unwrap_err());
    assert!(e.contains("0 clusters"), "{e}");
    let e = text(kmeans(gpu, &x, 2, 1, 0, 0).unwrap_err());
    assert!(e.contains("0 iterations"), "{e}");
    let mut bad = x;
    bad[3] = f32::NAN;
    let e = kmeans(gpu, &bad, 2, 1, 10, 0).unwrap_err();
    assert!(matches!(e, Error::NonFinite { index: 3, .. }), "{e}");
    assert!(e.to_string().contains("row 1 column 1"), "{e}");
}

#[test]
fn a_start_pretrains_each_expert_on_its_blob_and_routes_the_gates_to_it() {
    let gpu = gpu();
    let (x, y) = blobs(3, 200, 2);
    let untouched = Trainer::new(gpu, mmoe(3), 64)
        .unwrap()
        .parameters()
        .unwrap();
    let mut trainer = Trainer::new(gpu, mmoe(3), 64).unwrap();
    let start = ExpertStart {
        pretrain_steps: 20,
        pretrain_batch: 32,
        ..ExpertStart::new(PartitionOn::Input)
    };
    let report = trainer.start_experts(&x, &y, &start).unwrap();
    assert_eq!(report.rows_per_expert, [200; 3]);
    assert!(report.pretrain_loss.iter().all(Option::is_some));
    assert_blobs_separated(&report.clustering.assignment, 3, 200);
    // The experts and gates moved; the towers and heads did not.
    for name in ["experts.0.weight", "gate.weight", "gate.bias"] {
        assert_ne!(
            trainer.parameter(name).unwrap(),
            untouched_part(&trainer, &untouched, name)
        );
    }
    for name in ["towers.0.weight", "heads.weight"] {
        assert_eq!(
            trainer.parameter(name).unwrap(),
            untouched_part(&trainer, &untouched, name)
        );
    }
    // Each blob's rows go, nearly all their weight, to their own expert.
    for b in 0..3 {
        let rows = &x[b * 200 * INPUTS..(b + 1) * 200 * INPUTS];
        let expert = report.clustering.assignment[b * 200] as usize;
        let gates = trainer.gate_report(rows).unwrap();
        for task in &gates.weights {
            assert!(task[expert] > 0.99, "blob {b}: {task:?}");
        }
    }
    // Training goes on as usual, and the same start repeats bit for bit.
    trainer
        .step(&x[..64 * INPUTS], &two_targets(&y, 0..64))
        .unwrap();
    let mut again = Trainer::new(gpu, mmoe(3), 64).unwrap();
    assert_eq!(again.start_experts(&x, &y, &start).unwrap(), report);
    again
        .step(&x[..64 * INPUTS], &two_targets(&y, 0..64))
        .unwrap();
    assert_eq!(
        bits(&again.parameters().unwrap()),
        bits(&trainer.parameters().unwrap())
    );
}

#[test]
fn input_output_partitions_follow_the_targets_and_omoe_starts_too() {
    let gpu = gpu();
    // One blob in x, two groups of targets: only the targets can split it.
    let mut rng = Rng::new(3);
    let rows = 400;
    let x = random(&mut rng, rows * INPUTS, 1.0);
    let mut y: Vec<f32> = (0..rows)
        .map(|r| if r < 200 { -5.0 } else { 5.0 })
        .collect();
    y.extend((0..rows).map(|r| if r < 200 { 1.0 } else { -1.0 }));
    let config = ModelConfig {
        architecture: Architecture::Omoe {
            experts: 2,
            expert_layers: vec![4],
            gate: Gate::SOFTMAX,
        },
        ..mmoe(2)
    };
    let mut trainer = Trainer::new(gpu, config, 64).unwrap();
    let start = ExpertStart {
        pretrain_steps: 5,
        ..ExpertStart::new(PartitionOn::InputOutput {
            target_weight: None,
        })
    };
    let report = trainer.start_experts(&x, &y, &start).unwrap();
    assert_eq!(report.clustering.cols, INPUTS + 2);
    let a = &report.clustering.assignment;
    assert!(a[..200].iter().all(|&k| k == a[0]) && a[200..].iter().all(|&k| k != a[0]));
}

#[test]
fn a_start_rejects_what_it_cannot_start_naming_why() {
    let gpu = gpu();
    let (x, y) = blobs(2, 4, 4);
    let start = ExpertStart::new(PartitionOn::Input);
    let text = |e: Error| e.to_string();
    // More experts than rows.
    let mut trainer = Trainer::new(gpu, mmoe(9), 8).unwrap();
    let e = text(trainer.start_experts(&x, &y, &start).unwrap_err());
    assert!(e.contains("9 clusters for 8 rows"), "{e}");
    // No experts.
    let bottom = ModelConfig {
        architecture: Architecture::SharedBottom {
            bottom_layers: vec![4],
        },
        ..mmoe(2)
    };
    let e = text(
        Trainer::new(gpu, bottom, 8)
            .unwrap()
            .start_experts(&x, &y, &start)
            .unwrap_err(),
    );
    assert!(e.contains("no experts"), "{e}");
    // Non-finite inputs and targets, wrong lengths.
    let mut trainer = Trainer::new(gpu, mmoe(2), 8).unwrap();
    let mut bad = x.clone();
    bad[4] = f32::INFINITY;
    let e = text(trainer.start_experts(&bad, &y, &start).unwrap_err());
    assert!(e.contains("row 1 column 1"), "{e}");
    let mut bad = y.clone();
    bad[9] = f32::NAN;
    let e = text(trainer.start_experts(&x, &bad, &start).unwrap_err());
    assert!(e.contains("targets of task 1 row 1"), "{e}");
    let e = text(trainer.start_experts(&x, &y[1..], &start).unwrap_err());
    assert!(e.contains("`targets`"), "{e}");
    let e = text(trainer.start_experts(&x[1..], &y, &start).unwrap_err());
    assert!(e.contains("whole number of rows"), "{e}");
    // Bad settings.
    let e = text(
        trainer
            .start_experts(
                &x,
                &y,
                &ExpertStart {
                    max_rows: 0,
                    ..start.clone()
                },
            )
            .unwrap_err(),
    );
    assert!(e.contains("max_rows"), "{e}");
    let e = text(
        trainer
            .start_experts(
                &x,
                &y,
                &ExpertStart {
                    gate_scale: -1.0,
                    ..start.clone()
                },
            )
            .unwrap_err(),
    );
    assert!(e.contains("gate scale"), "{e}");
    // After the first step.
    trainer.step(&x, &y).unwrap();
    let e = text(trainer.start_experts(&x, &y, &start).unwrap_err());
    assert!(e.contains("before the first"), "{e}");
}

/// The part of the flat parameters `params` that `name` holds, by the trainer's
/// layout.
fn untouched_part(trainer: &Trainer, params: &[f32], name: &str) -> Vec<f32> {
    let graph = &trainer.model().graph;
    let id = graph.find(name).unwrap();
    let at = trainer.executor().plan().param_offsets[id.0].unwrap();
    params[at..at + graph.tensor(id).len()].to_vec()
}

/// The targets of `rows` of a two-task, task-major `y`.
fn two_targets(y: &[f32], rows: std::ops::Range<usize>) -> Vec<f32> {
    let n = y.len() / 2;
    let mut out = y[rows.clone()].to_vec();
    out.extend_from_slice(&y[n + rows.start..n + rows.end]);
    out
}
