//! GFLOP/s of the expert grouped GEMM, forward and both backward passes, at the
//! standard shapes. Criterion's `elem/s` column counts floating-point operations,
//! so `Gelem/s` reads as GFLOP/s. The bench first measures the device's ceiling
//! (the FMA-only and streaming-copy probes) and gives every GFLOP/s it prints, and
//! each pass's fastest criterion sample, as a fraction of the FMA probe.
//!
//! ```text
//! cargo bench --bench grouped_gemm [-- census]
//! ```
//!
//! Before the timed runs, every tiling is measured on the full shape and printed next
//! to the autotuner's choice (tuned afresh in this process). Then, on the same adapter
//! opened without `SUBGROUP`, the tuned kernels against the naive ones at `census` and
//! `large`, pass by pass, and a whole census training step with the tuned GEMMs
//! against one with every GEMM pinned to the naive kernel. Every tuning decision is
//! printed at the end.

use std::time::Duration;

use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use mmoe_wgpu::kernels::grouped_gemm::{
    GroupedGemm, GroupedGemmBackwardInput, GroupedGemmBackwardWeights, GroupedGemmForward, Tiling,
};
use mmoe_wgpu::kernels::{Dispatch, Precision};
use mmoe_wgpu::rng::Rng;
use mmoe_wgpu::{Activation, Gpu, StandardShape};

mod common;
use common::{
    Fastest, best_seconds, best_seconds_interleaved, ceiling, decision, fresh_gpu,
    fresh_gpu_without_subgroups, full_tuning_gpu, gflops, print_candidates, print_decisions,
    step_seconds,
};
use mmoe_wgpu::kernels::ceiling_probe::Ceiling;

const PASS_NAMES: [&str; 3] = ["Forward", "BackwardInput", "BackwardWeights"];
const NAIVE: Tiling = Tiling::Naive { wg: 8, wg_rows: 8 };

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
fn compare_tilings(gpu: &Gpu, full: &Gpu, ceiling: &Ceiling, standard: StandardShape) -> Passes {
    let shape = standard.expert_gemm();
    let gemm = GroupedGemm::new(gpu);
    let before = [gpu.tune_records().len(), full.tune_records().len()];
    let tuned = passes(gpu, &gemm, standard, None).unwrap_or_else(|e| panic!("{e}"));
    drop(passes(full, &GroupedGemm::new(full), standard, None).unwrap_or_else(|e| panic!("{e}")));
    // The naive kernels take minutes per dispatch at `large`, small register tiles
    // tens of seconds: there, only tiles of 8 x 4 x 8 or more.
    let tilings: Vec<Tiling> = gemm
        .tilings()
        .into_iter()
        .filter(|t| standard.name != "large" || t.compile_weight() >= 8)
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
    for (i, pass) in PASS_NAMES.iter().enumerate() {
        let key = format!("grouped_gemm {pass} ");
        print_candidates(
            &format!("grouped_gemm/{} {pass}", standard.name),
            ceiling,
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

/// Seconds of one run of `dispatch`, timed once: the naive kernels at `large`, where
/// one run takes about a minute (the pipeline must be compiled already).
fn once(gpu: &Gpu, dispatch: &Dispatch) -> f64 {
    gpu.time_pass(1, |p| dispatch.record(p))
        .unwrap_or_else(|e| panic!("{e}"))
        .total
        .as_secs_f64()
}

/// On a device without subgroups: the tuned tiling (the fast mode's choice) against
/// the naive kernels, pass by pass, at `census` and `large`; then a census training
/// step with the tuned GEMMs against one with every GEMM pinned to the naive kernel.
fn without_subgroups(ceiling: &Ceiling, only: Option<&str>) {
    println!("--- the same adapter without SUBGROUP ---");
    let gpu = fresh_gpu_without_subgroups();
    let gemm = GroupedGemm::new(&gpu);
    let wanted = |s: &StandardShape| only.is_none_or(|o| s.name.contains(o));
    // Compiles the naive pipelines on a small shape, so that no timing below includes it.
    let warm = passes(&gpu, &gemm, StandardShape::PAPER, Some(NAIVE));
    for dispatch in warm.unwrap_or_else(|e| panic!("{e}")).all() {
        once(&gpu, dispatch);
    }
    for standard in [StandardShape::CENSUS, StandardShape::LARGE] {
        if !wanted(&standard) {
            continue;
        }
        let before = gpu.tune_records().len();
        let tuned = passes(&gpu, &gemm, standard, None).unwrap_or_else(|e| panic!("{e}"));
        let naive = passes(&gpu, &gemm, standard, Some(NAIVE)).unwrap_or_else(|e| panic!("{e}"));
        let flops = standard.expert_gemm().forward_flops();
        for (i, pass) in PASS_NAMES.iter().enumerate() {
            let (t_tuned, t_naive) = if standard.name == "large" {
                let t = best_seconds(&gpu, 2, |p| tuned.all()[i].record(p));
                (t, once(&gpu, naive.all()[i]))
            } else {
                let both = [tuned.all()[i], naive.all()[i]];
                let t = best_seconds_interleaved(&gpu, 3, &both, |d, p| d.record(p));
                (t[0], t[1])
            };
            let chosen = decision(&gpu, before, &format!("grouped_gemm {pass} ")).chosen;
            println!(
                "without subgroups, {} {pass}: tuned {chosen} {}, {NAIVE} {}: {:.1}x",
                standard.name,
                gflops(ceiling, flops, t_tuned),
                gflops(ceiling, flops, t_naive),
                t_naive / t_tuned,
            );
        }
    }
    if wanted(&StandardShape::CENSUS) {
        let shape = StandardShape::CENSUS;
        let tuned = step_seconds(&gpu, &shape, 4, 2);
        print_decisions("without subgroups, tuned", &gpu, 0);
        // A second device pinned to the naive kernel for every GEMM tuned so far: the
        // step's (the expert layer's were tuned by the passes above).
        let pinned = fresh_gpu_without_subgroups();
        for r in gpu.tune_records() {
            if r.key.starts_with("grouped_gemm ") {
                pinned.pin_tuning(&r.key, &NAIVE.to_string());
            }
        }
        let naive = step_seconds(&pinned, &shape, 1, 1);
        print_decisions(
            "without subgroups, GEMMs pinned to the naive kernel",
            &pinned,
            0,
        );
        println!(
            "without subgroups, census training step: tuned {:.1} ms, naive GEMMs {:.1} ms: {:.1}x",
            tuned * 1e3,
            naive * 1e3,
            naive / tuned
        );
    }
}

fn grouped_gemm(c: &mut Criterion) {
    let gpu = fresh_gpu();
    // The probe needs no subgroups: the same ceiling holds for the device without
    // them below, on the same adapter.
    let ceiling = ceiling(&gpu);
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
        let passes = compare_tilings(&gpu, &full, &ceiling, standard);
        let mut group = c.benchmark_group(format!("grouped_gemm/{}", standard.name));
        // Each iteration is a whole GPU pass (up to seconds on lavapipe at `large`):
        // flat sampling with few samples keeps the run in minutes.
        group
            .sampling_mode(SamplingMode::Flat)
            .sample_size(10)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(3))
            .throughput(Throughput::Elements(shape.forward_flops() as u64));
        let mut fastest = Vec::new();
        for (name, dispatch) in [
            ("forward", &passes.forward),
            ("backward_input", &passes.backward_input),
            ("backward_weights", &passes.backward_weights),
        ] {
            let best = Fastest::default();
            group.bench_function(name, |bencher| {
                bencher.iter_custom(|iterations| {
                    let reps = u32::try_from(iterations).unwrap_or(u32::MAX);
                    let total = gpu
                        .time_pass(reps, |pass| dispatch.record(pass))
                        .unwrap_or_else(|e| panic!("{e}"))
                        .total;
                    best.note(total, iterations)
                })
            });
            fastest.push((name, best));
        }
        group.finish();
        for (name, best) in fastest {
            println!(
                "grouped_gemm/{}/{name}: fastest sample {}",
                standard.name,
                gflops(&ceiling, shape.forward_flops(), best.seconds())
            );
        }
    }
    print_decisions("fast mode", &gpu, 0);
    print_decisions("full mode", &full, 0);
    without_subgroups(&ceiling, only.as_deref());
}

criterion_group!(benches, grouped_gemm);
criterion_main!(benches);
