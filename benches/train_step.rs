//! One full MMoE training step (forward, backward, Adam) at the standard shapes, and
//! the cold start: a fresh process on a fresh device, pipeline compilation and
//! autotuning included, to the end of the first step. Criterion's `elem/s` counts a
//! step as three times the model's forward FLOPs, so `Gelem/s` reads as GFLOP/s.
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
use mmoe_wgpu::model::Trainer;
use mmoe_wgpu::{Gpu, StandardShape};

mod common;
use common::{model_batch as batch, model_config as config, print_decisions};

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

fn train_step(c: &mut Criterion) {
    let gpu = Gpu::new().unwrap_or_else(|e| panic!("{e}"));
    println!("{}", gpu.report());
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
        let profile = trainer
            .profile_step(&x, &y)
            .unwrap_or_else(|e| panic!("{e}"));
        for (label, time) in &profile {
            println!("  {label:<40} {:>9.3} ms", time.as_secs_f64() * 1e3);
        }
        let mut group = c.benchmark_group("train_step");
        group
            .sampling_mode(SamplingMode::Flat)
            .sample_size(10)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(3))
            .throughput(Throughput::Elements(
                (3.0 * shape.model_forward_flops()) as u64,
            ));
        group.bench_function(shape.name, |bencher| {
            bencher.iter_custom(|iterations| {
                let start = Instant::now();
                for _ in 0..iterations {
                    trainer.step(&x, &y).unwrap_or_else(|e| panic!("{e}"));
                }
                trainer.loss().unwrap_or_else(|e| panic!("{e}"));
                start.elapsed()
            })
        });
        group.finish();
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
