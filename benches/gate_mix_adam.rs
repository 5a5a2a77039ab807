//! Throughput of the fused gate + mix kernels (forward, backward) and of one Adam
//! update over all parameters, at the standard shapes. Criterion's `elem/s` counts
//! floating-point operations (so `Gelem/s` reads as GFLOP/s) and `B/s` the bytes
//! each pass must move at least once. The bench first measures the device's ceiling
//! (the FMA-only and streaming-copy probes) and gives every GFLOP/s and GB/s it
//! prints, and each pass's fastest criterion sample, as a fraction of it.
//!
//! ```text
//! cargo bench --bench gate_mix_adam [-- census]
//! ```

use std::time::Duration;

use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use mmoe_wgpu::kernels::gate_mix::{GateMix, GateMixBackward, GateMixForward, GateMixShape};
use mmoe_wgpu::kernels::optimizer::{Optimizer, OptimizerUpdate};
use mmoe_wgpu::kernels::{BufferView, Dispatch, Precision};
use mmoe_wgpu::model::ModelConfig;
use mmoe_wgpu::rng::Rng;
use mmoe_wgpu::{Gpu, StandardShape};

mod common;
use common::{
    Fastest, best_seconds_interleaved, ceiling, decision, fresh_gpu, full_tuning_gpu, gbps, gflops,
    print_candidates, print_decisions,
};
use mmoe_wgpu::gpu::TuneRecord;
use mmoe_wgpu::kernels::ceiling_probe::Ceiling;

fn random(gpu: &Gpu, label: &str, rng: &mut Rng, n: usize) -> wgpu::Buffer {
    let values: Vec<f32> = (0..n).map(|_| rng.uniform(-1.0, 1.0) as f32).collect();
    gpu.upload(label, &values).unwrap_or_else(|e| panic!("{e}"))
}

fn zeros(gpu: &Gpu, label: &str, n: usize) -> wgpu::Buffer {
    gpu.storage_buffer(label, 4 * n as u64)
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Parameters of the one-layer MMoE at `shape`: experts, gates, towers, heads.
fn parameter_count(s: &StandardShape) -> usize {
    let (d, e, h, t, u) = (s.inputs, s.experts, s.expert_width, s.tasks, s.tower_width);
    e * (d * h + h) + t * (d * e + e) + t * (h * u + u) + t * (u + 1)
}

/// Criterion's measurement of `passes` recorded one after another, then its fastest
/// sample's rates as fractions of `ceiling`: `flops` and `bytes` per run.
fn bench_passes(
    c: &mut Criterion,
    (gpu, ceiling): (&Gpu, &Ceiling),
    (name, function): (&str, &str),
    (flops, bytes): (u64, u64),
    passes: &[Dispatch],
) {
    let best = Fastest::default();
    let mut group = c.benchmark_group(name);
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2))
        .throughput(Throughput::ElementsAndBytes {
            elements: flops,
            bytes,
        });
    group.bench_function(function, |bencher| {
        bencher.iter_custom(|iterations| {
            let reps = u32::try_from(iterations).unwrap_or(u32::MAX);
            let total = gpu
                .time_pass(reps, |pass| passes.iter().for_each(|d| d.record(pass)))
                .unwrap_or_else(|e| panic!("{e}"))
                .total;
            best.note(total, iterations)
        })
    });
    group.finish();
    println!(
        "{name}/{function}: fastest sample {}, {}",
        gflops(ceiling, flops as f64, best.seconds()),
        gbps(ceiling, bytes as f64, best.seconds())
    );
}

/// The full-mode tuning decisions for the gate + mix at `shape`, on their own device.
fn full_mode_decisions(full: &Gpu, shape: GateMixShape) -> Vec<TuneRecord> {
    let before = full.tune_records().len();
    let buffers = GateBuffers::new(full, &mut Rng::new(5), shape);
    let kernel = GateMix::new(full);
    kernel
        .forward(&buffers.forward())
        .unwrap_or_else(|e| panic!("{e}"));
    kernel
        .backward(&buffers.backward())
        .unwrap_or_else(|e| panic!("{e}"));
    full.tune_records().split_off(before)
}

/// The gate + mix operands at one shape: random inputs, zeroed outputs.
struct GateBuffers {
    shape: GateMixShape,
    x: wgpu::Buffer,
    wg: wgpu::Buffer,
    bg: wgpu::Buffer,
    h: wgpu::Buffer,
    dm: wgpu::Buffer,
    g: wgpu::Buffer,
    m: wgpu::Buffer,
    dh: wgpu::Buffer,
    dz: wgpu::Buffer,
    dwg: wgpu::Buffer,
    dbg: wgpu::Buffer,
}

impl GateBuffers {
    fn new(gpu: &Gpu, rng: &mut Rng, shape: GateMixShape) -> Self {
        GateBuffers {
            shape,
            x: random(gpu, "x", rng, shape.x_len()),
            wg: random(gpu, "wg", rng, shape.wg_len()),
            bg: random(gpu, "bg", rng, shape.bg_len()),
            h: random(gpu, "h", rng, shape.h_len()),
            dm: random(gpu, "dm", rng, shape.m_len()),
            g: zeros(gpu, "g", shape.g_len()),
            m: zeros(gpu, "m", shape.m_len()),
            dh: zeros(gpu, "dh", shape.h_len()),
            dz: zeros(gpu, "dz", shape.g_len()),
            dwg: zeros(gpu, "dwg", shape.wg_len()),
            dbg: zeros(gpu, "dbg", shape.bg_len()),
        }
    }

    fn forward(&self) -> GateMixForward<'_> {
        GateMixForward {
            shape: self.shape,
            precision: Precision::F32,
            x: (&self.x).into(),
            wg: (&self.wg).into(),
            bg: (&self.bg).into(),
            h: (&self.h).into(),
            g: (&self.g).into(),
            m: (&self.m).into(),
        }
    }

    fn backward(&self) -> GateMixBackward<'_> {
        GateMixBackward {
            shape: self.shape,
            precision: Precision::F32,
            x: (&self.x).into(),
            wg: (&self.wg).into(),
            h: (&self.h).into(),
            g: (&self.g).into(),
            dm: (&self.dm).into(),
            dh: (&self.dh).into(),
            dz: (&self.dz).into(),
            dwg: (&self.dwg).into(),
            dbg: (&self.dbg).into(),
            dx: None,
            accumulate_dx: false,
            relu_dh: false,
        }
    }
}

/// Every tiling of the gate + mix's own dispatch on the full shape next to the tuner's
/// choice. The forward pass is one dispatch; in the backward pass only the first (dH
/// and dz) depends on the tiling, so it is measured alone here.
fn compare_tilings(
    (gpu, ceiling): (&Gpu, &Ceiling),
    kernel: &GateMix,
    name: &str,
    before: usize,
    forward: &GateMixForward<'_>,
    backward: &GateMixBackward<'_>,
    full: &[TuneRecord],
) {
    let s = forward.shape;
    let mix = 2.0 * (s.gates * s.rows * s.experts * s.width) as f64;
    let logits = 2.0 * (s.rows * s.inputs * s.experts * s.gates) as f64;
    let tilings = kernel.tilings();
    let mut dispatches: [Vec<Dispatch>; 2] = Default::default();
    for &tiling in &tilings {
        dispatches[0].push(
            kernel
                .forward_with(forward, tiling)
                .unwrap_or_else(|e| panic!("{e}")),
        );
        let mut b = kernel
            .backward_with(backward, tiling)
            .unwrap_or_else(|e| panic!("{e}"));
        dispatches[1].push(b.swap_remove(0));
    }
    // Gate + mix tilings run within a few percent of each other: only interleaved
    // rounds tell them apart on a shared machine.
    let measured: [Vec<(String, f64)>; 2] = dispatches.map(|pass| {
        let seconds = best_seconds_interleaved(gpu, 15, &pass, |d, p| d.record(p));
        tilings.iter().map(|t| t.to_string()).zip(seconds).collect()
    });
    for (i, (pass, flops)) in [("Forward", logits + mix), ("Backward", 2.0 * mix)]
        .into_iter()
        .enumerate()
    {
        print_candidates(
            &format!("gate_mix/{name} {pass}"),
            ceiling,
            flops,
            &measured[i],
            &[
                decision(gpu, before, &format!("gate_mix {pass} ")),
                full.iter()
                    .find(|r| r.key.contains(&format!("gate_mix {pass} ")))
                    .cloned()
                    .unwrap_or_else(|| panic!("no full-mode decision")),
            ],
        );
    }
}

fn gate_mix_and_adam(c: &mut Criterion) {
    let gpu = fresh_gpu();
    let ceiling = ceiling(&gpu);
    let full = full_tuning_gpu();
    let kernel = GateMix::new(&gpu);
    let optimizer = Optimizer::new(&gpu);
    let mut rng = Rng::new(5);
    for standard in StandardShape::ALL {
        let shape = GateMixShape {
            gates: standard.tasks,
            experts: standard.experts,
            rows: standard.batch,
            inputs: standard.inputs,
            width: standard.expert_width,
            input: mmoe_wgpu::InputLayout::Shared,
        };
        let buffers = GateBuffers::new(&gpu, &mut rng, shape);
        let (forward_args, backward_args) = (buffers.forward(), buffers.backward());
        let before = gpu.tune_records().len();
        let forward = kernel
            .forward(&forward_args)
            .unwrap_or_else(|e| panic!("{e}"));
        let backward = kernel
            .backward(&backward_args)
            .unwrap_or_else(|e| panic!("{e}"));
        compare_tilings(
            (&gpu, &ceiling),
            &kernel,
            standard.name,
            before,
            &forward_args,
            &backward_args,
            &full_mode_decisions(&full, shape),
        );
        let (b, d, e, t, w) = (
            shape.rows as u64,
            shape.inputs as u64,
            shape.experts as u64,
            shape.gates as u64,
            shape.width as u64,
        );
        let logits = 2 * b * d * e * t;
        let mix = 2 * t * b * e * w;
        let bytes = 4 * (b * d + t * d * e + e * b * w + t * b * e + t * b * w);
        bench_passes(
            c,
            (&gpu, &ceiling),
            (&format!("gate_mix/{}", standard.name), "forward"),
            (logits + mix, bytes),
            std::slice::from_ref(&forward),
        );
        bench_passes(
            c,
            (&gpu, &ceiling),
            (&format!("gate_mix/{}", standard.name), "backward"),
            (logits + 2 * mix, bytes + 4 * e * b * w),
            &backward,
        );

        let n = parameter_count(&standard);
        let params = random(&gpu, "params", &mut rng, n);
        let grads = random(&gpu, "grads", &mut rng, n);
        let (m1, m2) = (zeros(&gpu, "m", n), zeros(&gpu, "v", n));
        let adam = optimizer
            .update(&OptimizerUpdate {
                config: ModelConfig::ADAM,
                len: n,
                precision: Precision::F32,
                params: (&params).into(),
                grads: (&grads).into(),
                m: (&m1).into(),
                v: Some(BufferView::new(&m2)),
                loss: None,
                status: None,
                tasks: 0,
                params_copy: None,
            })
            .unwrap_or_else(|e| panic!("{e}"));
        adam.set_step(gpu.queue(), 1, 1e-6);
        // Reads p, g, m, v and writes p, m, v: 7 floats per parameter; ~12 flops.
        bench_passes(
            c,
            (&gpu, &ceiling),
            ("adam", standard.name),
            (12 * n as u64, 28 * n as u64),
            std::slice::from_ref(adam.dispatch()),
        );
    }
    print_decisions("fast mode", &gpu, 0);
    print_decisions("full mode", &full, 0);
}

criterion_group!(benches, gate_mix_and_adam);
criterion_main!(benches);
