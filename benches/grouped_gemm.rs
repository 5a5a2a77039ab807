//! GFLOP/s of the expert grouped GEMM, forward and both backward passes, at the
//! standard shapes. Criterion's `elem/s` column counts floating-point operations,
//! so `Gelem/s` reads as GFLOP/s.
//!
//! ```text
//! cargo bench --bench grouped_gemm [-- census]
//! ```
//!
//! Before the timed runs, every tiling is measured on the full shape and printed next
//! to the autotuner's choice (tuned afresh in this process).

use std::time::Duration;

use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use mmoe_wgpu::kernels::grouped_gemm::{
    GroupedGemm, GroupedGemmBackwardInput, GroupedGemmBackwardWeights, GroupedGemmForward, Tiling,
};
use mmoe_wgpu::kernels::{Dispatch, Precision};
use mmoe_wgpu::rng::Rng;
use mmoe_wgpu::{Activation, Gpu, StandardShape};

mod common;
use common::{best_seconds_interleaved, decision, fresh_gpu, full_tuning_gpu, print_candidates};

/// The three passes of one shape, recorded once and replayed by every iteration.
struct Passes {
    forward: Dispatch,
    backward_input: Dispatch,
    backward_weights: Dispatch,
    /// Kept alive for the dispatches' bind groups.
    _buffers: Vec<wgpu::Buffer>,
}

impl Passes {
    fn all(&self) -> [&Dispatch; 3] {
        [&self.forward, &self.backward_input, &self.backward_weights]
    }
}

fn random(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.uniform(-1.0, 1.0) as f32).collect()
}

/// The three passes, with `tiling` or (None) the tuned one.
fn passes(
    gpu: &Gpu,
    gemm: &GroupedGemm,
    standard: StandardShape,
    tiling: Option<Tiling>,
) -> mmoe_wgpu::Result<Passes> {
    let shape = standard.expert_gemm();
    let mut rng = Rng::new(7);
    let x = gpu.upload("x", &random(&mut rng, shape.x_len()))?;
    let w = gpu.upload("w", &random(&mut rng, shape.w_len()))?;
    let b = gpu.upload("b", &random(&mut rng, shape.b_len()))?;
    let dy = gpu.upload("dy", &random(&mut rng, shape.y_len()))?;
    let y = gpu.storage_buffer("y", 4 * shape.y_len() as u64)?;
    let dx = gpu.storage_buffer("dx", 4 * shape.x_len() as u64)?;
    let dw = gpu.storage_buffer("dw", 4 * shape.w_len() as u64)?;
    let db = gpu.storage_buffer("db", 4 * shape.b_len() as u64)?;
    let activation = Activation::Relu;
    let forward = GroupedGemmForward {
        shape,
        precision: Precision::F32,
        activation,
        x: (&x).into(),
        w: (&w).into(),
        bias: Some((&b).into()),
        y: (&y).into(),
    };
    let backward_input = GroupedGemmBackwardInput {
        shape,
        precision: Precision::F32,
        activation,
        dy: (&dy).into(),
        y: Some((&y).into()),
        w: (&w).into(),
        dx: (&dx).into(),
        accumulate: false,
    };
    let backward_weights = GroupedGemmBackwardWeights {
        shape,
        precision: Precision::F32,
        activation,
        x: (&x).into(),
        dy: (&dy).into(),
        y: Some((&y).into()),
        dw: (&dw).into(),
        db: Some((&db).into()),
    };
    let (forward, backward_input, backward_weights) = match tiling {
        None => (
            gemm.forward(&forward)?,
            gemm.backward_input(&backward_input)?,
            gemm.backward_weights(&backward_weights)?,
        ),
        Some(t) => (
            gemm.forward_with(&forward, t)?,
            gemm.backward_input_with(&backward_input, t)?,
            gemm.backward_weights_with(&backward_weights, t)?,
        ),
    };
    Ok(Passes {
        forward,
        backward_input,
        backward_weights,
        _buffers: vec![x, w, b, dy, y, dx, dw, db],
    })
}

/// Every tiling on the full shape next to the choices of both tuning modes, pass by
/// pass; returns the fast-mode (default) passes.
fn compare_tilings(gpu: &Gpu, full: &Gpu, standard: StandardShape) -> Passes {
    let shape = standard.expert_gemm();
    let gemm = GroupedGemm::new(gpu);
    let before = [gpu.tune_records().len(), full.tune_records().len()];
    let tuned = passes(gpu, &gemm, standard, None).unwrap_or_else(|e| panic!("{e}"));
    drop(passes(full, &GroupedGemm::new(full), standard, None).unwrap_or_else(|e| panic!("{e}")));
    // The naive kernels take minutes per dispatch at `large`.
    let tilings: Vec<Tiling> = gemm
        .tilings()
        .into_iter()
        .filter(|t| standard.name != "large" || matches!(t, Tiling::Subgroup { .. }))
        .collect();
    let candidates: Vec<Passes> = tilings
        .iter()
        .map(|&t| passes(gpu, &gemm, standard, Some(t)).unwrap_or_else(|e| panic!("{e}")))
        .collect();
    let measured: [Vec<(String, f64)>; 3] = [0, 1, 2].map(|i| {
        let seconds =
            best_seconds_interleaved(gpu, 3, &candidates, |p, pass| p.all()[i].record(pass));
        tilings.iter().map(|t| t.to_string()).zip(seconds).collect()
    });
    for (i, pass) in ["Forward", "BackwardInput", "BackwardWeights"]
        .iter()
        .enumerate()
    {
        let key = format!("grouped_gemm {pass} ");
        print_candidates(
            &format!("grouped_gemm/{} {pass}", standard.name),
            shape.forward_flops(),
            &measured[i],
            &[
                decision(gpu, before[0], &key),
                decision(full, before[1], &key),
            ],
        );
    }
    tuned
}

fn grouped_gemm(c: &mut Criterion) {
    let gpu = fresh_gpu();
    let full = full_tuning_gpu();
    let only: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    for standard in StandardShape::ALL {
        if only
            .as_ref()
            .is_some_and(|o| !standard.name.contains(o.as_str()))
        {
            continue;
        }
        let shape = standard.expert_gemm();
        let passes = compare_tilings(&gpu, &full, standard);
        let mut group = c.benchmark_group(format!("grouped_gemm/{}", standard.name));
        // Each iteration is a whole GPU pass (up to seconds on lavapipe at `large`):
        // flat sampling with few samples keeps the run in minutes.
        group
            .sampling_mode(SamplingMode::Flat)
            .sample_size(10)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(3))
            .throughput(Throughput::Elements(shape.forward_flops() as u64));
        for (name, dispatch) in [
            ("forward", &passes.forward),
            ("backward_input", &passes.backward_input),
            ("backward_weights", &passes.backward_weights),
        ] {
            group.bench_function(name, |bencher| {
                bencher.iter_custom(|iterations| {
                    let reps = u32::try_from(iterations).unwrap_or(u32::MAX);
                    gpu.time_pass(reps, |pass| dispatch.record(pass))
                        .unwrap_or_else(|e| panic!("{e}"))
                        .total
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, grouped_gemm);
criterion_main!(benches);
