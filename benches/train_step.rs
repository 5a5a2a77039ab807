//! One full MMoE training step (forward, backward, Adam) at the standard shapes, and
//! the cold start: a fresh process on a fresh device, pipeline compilation and
//! autotuning included, to the end of the first step. Criterion's `elem/s` counts a
//! step as three times the model's forward FLOPs, so `Gelem/s` reads as GFLOP/s.
//!
//! The bench first measures the device's ceiling (the FMA-only and streaming-copy
//! probes, `mmoe_wgpu::kernels::ceiling_probe`) and gives each shape's step rate (its
//! fastest criterion sample) as a fraction of the FMA probe; then, since a shared
//! machine's load changes from one second to the next, the step and the probe again
//! in alternating rounds, the best of each, and that fraction. Before the timed steps
//! it profiles a step dispatch by dispatch (GPU timestamps; each dispatch's best of
//! [`PROFILE_ROUNDS`] profiled steps) and sums the times by kernel, with each
//! kernel's share of the step.
//!
//! ```text
//! cargo bench --bench train_step [-- census]
//! ```
//!
//! The cold start runs in child processes of this bench: the first as on a fresh
//! machine, with an empty driver shader cache (Mesa's, in a new directory named by
//! `MESA_SHADER_CACHE_DIR`) and no tuning cache file, so every pipeline is compiled
//! and every tuned kernel tuned; the second with the caches the first wrote, as any
//! later run of a program finds them.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode, Throughput};
use mmoe_wgpu::kernels::ceiling_probe::{Ceiling, CeilingProbe};
use mmoe_wgpu::model::Trainer;
use mmoe_wgpu::{Gpu, StandardShape};

mod common;
use common::{
    Fastest, ceiling, gflops, model_batch as batch, model_config as config, print_decisions,
};

/// Profiled steps whose per-dispatch best times make the profile: a single run of a
/// sub-millisecond dispatch on a shared machine is mostly noise.
const PROFILE_ROUNDS: usize = 3;

/// Set in the child processes that measure a cold start: the shape's name.
const COLD_CHILD: &str = "MMOE_BENCH_COLD_START";

/// A new device and trainer, then one step and a wait: what a fresh process pays.
fn cold_first_step(shape: &StandardShape) -> (Duration, Duration) {
    let (x, y) = batch(shape);
    let start = Instant::now();
    let gpu = Gpu::new().unwrap_or_else(|e| panic!("{e}"));
    let mut trainer =
        Trainer::new(&gpu, config(shape), shape.batch).unwrap_or_else(|e| panic!("{e}"));
    trainer.step(&x, &y).unwrap_or_else(|e| panic!("{e}"));
    trainer.loss().unwrap_or_else(|e| panic!("{e}"));
    let first = start.elapsed();
    print_decisions("this child process", &gpu, 0);
    let steady = Instant::now();
    for _ in 0..3 {
        trainer.step(&x, &y).unwrap_or_else(|e| panic!("{e}"));
    }
    trainer.loss().unwrap_or_else(|e| panic!("{e}"));
    (first, steady.elapsed() / 3)
}

/// Runs [`cold_first_step`] in a child process with the given driver (Mesa) shader
/// cache directory and tuning cache file; returns its report: its tuning decisions,
/// then the times.
fn cold_start_in_child(shape: &StandardShape, driver_cache: &Path, tune_cache: &Path) -> String {
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("{e}"));
    let out = Command::new(exe)
        .env(COLD_CHILD, shape.name)
        .env_remove("MESA_SHADER_CACHE_DISABLE")
        .env("MESA_SHADER_CACHE_DIR", driver_cache)
        .env(mmoe_wgpu::gpu::TUNE_CACHE_ENV, tune_cache)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "cold-start child failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout.trim_end().to_owned()
}

/// A first process as on a fresh machine (empty driver shader cache, no tuning
/// cache), then a second one that finds both caches the first wrote.
fn cold_starts(shape: &StandardShape) {
    let scratch = std::env::temp_dir().join(format!(
        "mmoe-wgpu-bench-cold-{}-{}",
        shape.name,
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).unwrap_or_else(|e| panic!("{e}"));
    let driver_cache = scratch.join("driver-shader-cache");
    let tune_cache = scratch.join("tuning.tsv");
    let first = cold_start_in_child(shape, &driver_cache, &tune_cache);
    let second = cold_start_in_child(shape, &driver_cache, &tune_cache);
    let _ = std::fs::remove_dir_all(&scratch);
    // Each child's report ends in its times; its tuning decisions come before them.
    for (what, report) in [
        ("cold start, empty caches:      ", first),
        ("second process, caches written:", second),
    ] {
        let (decisions, times) = report.rsplit_once('\n').unwrap_or(("", &report));
        println!("train_step/{}: {what} {times}", shape.name);
        for line in decisions.lines() {
            println!("    {line}");
        }
    }
}

/// A step's dispatches in order with each one's best time over [`PROFILE_ROUNDS`]
/// profiled steps, then the same summed by kernel (dispatch label), largest first,
/// with each kernel's share of the profiled step.
fn print_profile(trainer: &mut Trainer, (x, y): (&[f32], &[f32])) {
    let mut best: Vec<(&'static str, Duration)> = Vec::new();
    for round in 0..PROFILE_ROUNDS {
        let profile = trainer.profile_step(x, y).unwrap_or_else(|e| panic!("{e}"));
        if round == 0 {
            best = profile;
        } else {
            for (kept, (label, time)) in best.iter_mut().zip(profile) {
                assert_eq!(
                    kept.0, label,
                    "the profiled dispatches changed between steps"
                );
                kept.1 = kept.1.min(time);
            }
        }
    }
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let total: Duration = best.iter().map(|(_, t)| *t).sum();
    println!(
        "  profile, dispatch by dispatch (best of {PROFILE_ROUNDS} steps), sum {:.2} ms:",
        ms(total)
    );
    for (label, time) in &best {
        println!("    {label:<38} {:>9.3} ms", ms(*time));
    }
    let mut by_kernel: Vec<(&'static str, Duration, usize)> = Vec::new();
    for &(label, time) in &best {
        match by_kernel.iter_mut().find(|(l, _, _)| *l == label) {
            Some(entry) => {
                entry.1 += time;
                entry.2 += 1;
            }
            None => by_kernel.push((label, time, 1)),
        }
    }
    by_kernel.sort_by_key(|entry| std::cmp::Reverse(entry.1));
    println!("  profile by kernel:");
    for (label, time, count) in &by_kernel {
        println!(
            "    {label:<38} {:>9.3} ms {:>5.1}% ({count} dispatch{})",
            ms(*time),
            100.0 * time.as_secs_f64() / total.as_secs_f64(),
            if *count == 1 { "" } else { "es" }
        );
    }
}

/// Rounds of the step against the FMA probe: each round measures the probe, then
/// times a few steps; the best of each over the rounds. A shared machine's other
/// work slows the probe and the steps alike only when they run in the same minutes.
const PROBE_ROUNDS: usize = 4;

/// The step's GFLOP/s as a fraction of the FMA probe, the two measured in
/// alternation ([`PROBE_ROUNDS`] rounds, the best of each), so that a burst of other
/// work on a shared machine does not land on one of them alone.
fn step_against_probe(
    gpu: &Gpu,
    trainer: &mut Trainer,
    shape: &StandardShape,
    (x, y): (&[f32], &[f32]),
) {
    let probe = CeilingProbe::new(gpu);
    // A few steps per round, of about a second in all (one at `large`).
    let steps = if shape.name == "large" { 1 } else { 8 };
    let mut best_probe: Option<Ceiling> = None;
    let mut best_step = f64::INFINITY;
    for _ in 0..PROBE_ROUNDS {
        let c = probe.measure().unwrap_or_else(|e| panic!("{e}"));
        if best_probe.is_none_or(|b| c.fma_gflops > b.fma_gflops) {
            best_probe = Some(c);
        }
        let start = Instant::now();
        for _ in 0..steps {
            trainer.step(x, y).unwrap_or_else(|e| panic!("{e}"));
        }
        trainer.loss().unwrap_or_else(|e| panic!("{e}"));
        best_step = best_step.min(start.elapsed().as_secs_f64() / f64::from(steps));
    }
    let ceiling = best_probe.unwrap_or_else(|| panic!("no probe round"));
    println!(
        "train_step/{}: step and probe in {PROBE_ROUNDS} alternating rounds: FMA probe {:.2} GFLOP/s, \
         step {:.2} ms, {} (3x the forward FLOPs)",
        shape.name,
        ceiling.fma_gflops,
        best_step * 1e3,
        gflops(&ceiling, 3.0 * shape.model_forward_flops(), best_step)
    );
}

fn train_step(c: &mut Criterion) {
    let gpu = Gpu::new().unwrap_or_else(|e| panic!("{e}"));
    println!("{}", gpu.report());
    let ceiling = ceiling(&gpu);
    println!("time: wall clock per step, one device sync after all of a sample's steps");
    let only: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    for shape in StandardShape::ALL {
        if only
            .as_ref()
            .is_some_and(|o| !shape.name.contains(o.as_str()))
        {
            continue;
        }
        cold_starts(&shape);
        let (x, y) = batch(&shape);
        let mut trainer =
            Trainer::new(&gpu, config(&shape), shape.batch).unwrap_or_else(|e| panic!("{e}"));
        trainer.step(&x, &y).unwrap_or_else(|e| panic!("{e}"));
        print_profile(&mut trainer, (&x, &y));
        let flops = 3.0 * shape.model_forward_flops();
        let best = Fastest::default();
        let mut group = c.benchmark_group("train_step");
        group
            .sampling_mode(SamplingMode::Flat)
            .sample_size(10)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(3))
            .throughput(Throughput::Elements(flops as u64));
        group.bench_function(shape.name, |bencher| {
            bencher.iter_custom(|iterations| {
                let start = Instant::now();
                for _ in 0..iterations {
                    trainer.step(&x, &y).unwrap_or_else(|e| panic!("{e}"));
                }
                trainer.loss().unwrap_or_else(|e| panic!("{e}"));
                best.note(start.elapsed(), iterations)
            })
        });
        group.finish();
        println!(
            "train_step/{}: criterion's fastest sample {:.2} ms per step, {} (3x the forward FLOPs)",
            shape.name,
            best.seconds() * 1e3,
            gflops(&ceiling, flops, best.seconds())
        );
        step_against_probe(&gpu, &mut trainer, &shape, (&x, &y));
    }
    print_decisions("this process", &gpu, 0);
}

fn main() {
    if let Ok(name) = std::env::var(COLD_CHILD) {
        let shape = StandardShape::named(&name).unwrap_or_else(|| panic!("no shape {name}"));
        let (first, steady) = cold_first_step(&shape);
        println!(
            "first step {:.2} s (device, pipelines, tuning, first step), then {:.1} ms per step",
            first.as_secs_f64(),
            steady.as_secs_f64() * 1e3
        );
        return;
    }
    let mut criterion = Criterion::default().configure_from_args();
    train_step(&mut criterion);
    criterion.final_summary();
}
