//! What the benches share: a device with fresh tuning, and the table that compares
//! the autotuner's choice with every tiling measured on the full shape.

#![allow(dead_code)]

use std::cell::Cell;
use std::time::{Duration, Instant};

use mmoe_wgpu::gpu::{TuneMode, TuneRecord};
use mmoe_wgpu::kernels::ceiling_probe::{Ceiling, CeilingProbe};
use mmoe_wgpu::model::{ModelConfig, TaskConfig, TaskKind, Trainer};
use mmoe_wgpu::rng::Rng;
use mmoe_wgpu::{Gpu, GpuOptions, StandardShape};

/// A device whose tuning starts empty (no cache file), so every choice the bench
/// reports was measured in this run. Prints the device report: adapter, driver,
/// features, limits, subgroup sizes, timing and tuning.
pub fn fresh_gpu() -> Gpu {
    let options = GpuOptions {
        tune_cache: None,
        ..GpuOptions::from_env()
    };
    let gpu = Gpu::with_options(&options).unwrap_or_else(|e| panic!("{e}"));
    println!("{}", gpu.report());
    gpu
}

/// The device's ceilings measured now, printed: every GFLOP/s and GB/s the bench
/// reports is also given as a fraction of these, measured in the same run on the
/// same device, which carries across machines where absolute rates do not.
pub fn ceiling(gpu: &Gpu) -> Ceiling {
    let ceiling = CeilingProbe::new(gpu)
        .measure()
        .unwrap_or_else(|e| panic!("{e}"));
    println!("{ceiling}");
    ceiling
}

/// `flops` done in `seconds` as GFLOP/s and as a share of the FMA probe.
pub fn gflops(ceiling: &Ceiling, flops: f64, seconds: f64) -> String {
    let rate = flops / seconds;
    format!(
        "{:.2} GFLOP/s = {:.1}% of the FMA probe",
        rate / 1e9,
        100.0 * ceiling.of_flops(rate)
    )
}

/// `bytes` moved in `seconds` as GB/s and as a share of the copy probe.
pub fn gbps(ceiling: &Ceiling, bytes: f64, seconds: f64) -> String {
    let rate = bytes / seconds;
    format!(
        "{:.2} GB/s = {:.1}% of the copy probe",
        rate / 1e9,
        100.0 * ceiling.of_bandwidth(rate)
    )
}

/// The fastest time per iteration among a criterion benchmark's samples, noted by
/// its `iter_custom` closure, so that the bench can give that rate as a share of
/// the ceiling next to criterion's own lines.
#[derive(Default)]
pub struct Fastest(Cell<Option<f64>>);

impl Fastest {
    /// Notes a sample of `iterations` that took `total`, and returns `total`.
    pub fn note(&self, total: Duration, iterations: u64) -> Duration {
        let each = total.as_secs_f64() / iterations.max(1) as f64;
        self.0
            .set(Some(self.0.get().map_or(each, |best| best.min(each))));
        total
    }

    /// Seconds per iteration of the fastest sample.
    pub fn seconds(&self) -> f64 {
        self.0
            .get()
            .unwrap_or_else(|| panic!("no sample was noted"))
    }
}

/// [`fresh_gpu`] on the same adapter opened without `SUBGROUP`: the kernels as they
/// run on WebGPU in a browser, DX12 through FXC or older Vulkan drivers.
pub fn fresh_gpu_without_subgroups() -> Gpu {
    let options = GpuOptions {
        tune_cache: None,
        withheld_features: wgpu::Features::SUBGROUP,
        ..GpuOptions::from_env()
    };
    let gpu = Gpu::with_options(&options).unwrap_or_else(|e| panic!("{e}"));
    println!("{}", gpu.report());
    gpu
}

/// Prints every tuning decision made on `gpu` after its first `since`: the shape
/// class, how the choice was made, and each measured candidate's time.
pub fn print_decisions(title: &str, gpu: &Gpu, since: usize) {
    let records = gpu.tune_records();
    println!("tuning decisions, {title}:");
    for r in records.iter().skip(since) {
        println!(
            "  {} -> {} ({:?}, {:.2} s)",
            r.key,
            r.chosen,
            r.source,
            r.spent.as_secs_f64()
        );
        for (candidate, time) in &r.measured {
            println!(
                "      {candidate:<34} {:>10.3} ms",
                time.as_secs_f64() * 1e3
            );
        }
    }
}

/// The one-layer MMoE of a standard shape, binary tasks, default optimizer.
pub fn model_config(shape: &StandardShape) -> ModelConfig {
    let tasks = (0..shape.tasks)
        .map(|t| TaskConfig::new(format!("task{t}"), TaskKind::BinaryClassification))
        .collect();
    ModelConfig::mmoe(
        shape.inputs,
        shape.experts,
        shape.expert_width,
        shape.tower_width,
        tasks,
    )
}

/// A batch of normal inputs and 0/1 targets at a standard shape.
pub fn model_batch(shape: &StandardShape) -> (Vec<f32>, Vec<f32>) {
    let mut rng = Rng::new(3);
    let x = (0..shape.batch * shape.inputs)
        .map(|_| rng.normal() as f32)
        .collect();
    let y = (0..shape.batch * shape.tasks)
        .map(|_| (rng.unit() < 0.5) as u8 as f32)
        .collect();
    (x, y)
}

/// Seconds per training step of the one-layer MMoE at `shape` on `gpu`: a trainer
/// built and warmed up by one step (compiling and tuning), then `steps` steps with one
/// device sync at the end, the best of `rounds` such runs.
pub fn step_seconds(gpu: &Gpu, shape: &StandardShape, steps: u32, rounds: u32) -> f64 {
    let (x, y) = model_batch(shape);
    let mut trainer =
        Trainer::new(gpu, model_config(shape), shape.batch).unwrap_or_else(|e| panic!("{e}"));
    trainer.step(&x, &y).unwrap_or_else(|e| panic!("{e}"));
    trainer.loss().unwrap_or_else(|e| panic!("{e}"));
    (0..rounds)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..steps {
                trainer.step(&x, &y).unwrap_or_else(|e| panic!("{e}"));
            }
            trainer.loss().unwrap_or_else(|e| panic!("{e}"));
            start.elapsed().as_secs_f64() / f64::from(steps)
        })
        .fold(f64::INFINITY, f64::min)
}

/// Seconds of one run of `record`: one warm-up run (compilation included), then the
/// best of `runs` timed batches, each of enough runs to last about 20 ms (a single
/// sub-millisecond dispatch mostly measures the driver's wake-up jitter).
pub fn best_seconds(gpu: &Gpu, runs: usize, record: impl Fn(&mut wgpu::ComputePass<'_>)) -> f64 {
    let time = |reps: u32| {
        gpu.time_pass(reps, &record)
            .unwrap_or_else(|e| panic!("{e}"))
            .total
            .as_secs_f64()
            / f64::from(reps)
    };
    time(1);
    let single = time(1);
    let reps = (0.02 / single.max(1e-6)).ceil().clamp(1.0, 256.0) as u32;
    (0..runs).map(|_| time(reps)).fold(single, f64::min)
}

/// Seconds of one run of each of `items` (recorded by `record`), measured in `rounds`
/// rounds over all of them (each round times every item once, as in
/// [`best_seconds`]), keeping each one's best: a burst of other work on the machine
/// then slows every candidate alike instead of the few timed during it, so
/// candidates a few percent apart compare fairly.
pub fn best_seconds_interleaved<T>(
    gpu: &Gpu,
    rounds: usize,
    items: &[T],
    record: impl Fn(&T, &mut wgpu::ComputePass<'_>),
) -> Vec<f64> {
    let time = |item: &T, reps: u32| {
        gpu.time_pass(reps, |pass| record(item, pass))
            .unwrap_or_else(|e| panic!("{e}"))
            .total
            .as_secs_f64()
            / f64::from(reps)
    };
    let mut best = Vec::with_capacity(items.len());
    let mut reps = Vec::with_capacity(items.len());
    for item in items {
        time(item, 1);
        let single = time(item, 1);
        best.push(single);
        reps.push((0.02 / single.max(1e-6)).ceil().clamp(1.0, 256.0) as u32);
    }
    for _ in 0..rounds {
        for (i, item) in items.iter().enumerate() {
            best[i] = best[i].min(time(item, reps[i]));
        }
    }
    best
}

/// The tuning decision made for `key_part` since `before` records.
pub fn decision(gpu: &Gpu, before: usize, key_part: &str) -> TuneRecord {
    gpu.tune_records()
        .into_iter()
        .skip(before)
        .find(|r| r.key.contains(key_part))
        .unwrap_or_else(|| panic!("no tuning decision for {key_part}"))
}

/// A second device on the same adapter that tunes in [`TuneMode::Full`]: every tiling
/// is a candidate, whatever it costs to compile.
pub fn full_tuning_gpu() -> Gpu {
    let options = GpuOptions {
        tune: TuneMode::Full,
        tune_cache: None,
        ..GpuOptions::from_env()
    };
    Gpu::with_options(&options).unwrap_or_else(|e| panic!("{e}"))
}

/// Prints every tiling's GFLOP/s on the full shape, which of them each tuning mode
/// tried and chose, and how each choice compares with the fastest.
pub fn print_candidates(
    title: &str,
    ceiling: &Ceiling,
    flops: f64,
    measured: &[(String, f64)],
    decisions: &[TuneRecord],
) {
    println!("{title}: {}", decisions[0].key);
    let mode_name = |i: usize| if i == 0 { "fast" } else { "full" };
    for (name, seconds) in measured {
        let marks: Vec<String> = decisions
            .iter()
            .enumerate()
            .filter(|(_, d)| &d.chosen == name)
            .map(|(i, _)| format!("<- {} mode", mode_name(i)))
            .collect();
        println!(
            "  {name:<24} {}  {}",
            gflops(ceiling, flops, *seconds),
            marks.join(", ")
        );
    }
    let time_of = |n: &str| measured.iter().find(|(m, _)| m == n).map(|(_, s)| *s);
    let fastest = measured
        .iter()
        .map(|(_, s)| *s)
        .fold(f64::INFINITY, f64::min);
    for (i, d) in decisions.iter().enumerate() {
        let tried: Vec<&str> = if d.measured.is_empty() {
            vec![d.chosen.as_str()]
        } else {
            d.measured.iter().map(|(n, _)| n.as_str()).collect()
        };
        let fastest_tried = tried
            .iter()
            .filter_map(|n| time_of(n))
            .fold(f64::INFINITY, f64::min);
        if let Some(chosen) = time_of(&d.chosen) {
            println!(
                "  {} mode ({:?}, {} candidate(s), {:.2} s): {} at {} = {:.1}% of its fastest candidate, {:.1}% of the fastest tiling",
                mode_name(i),
                d.source,
                tried.len(),
                d.spent.as_secs_f64(),
                d.chosen,
                gflops(ceiling, flops, chosen),
                100.0 * fastest_tried / chosen,
                100.0 * fastest / chosen,
            );
        }
    }
}
