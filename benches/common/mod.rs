//! What the benches share: a device with fresh tuning, and the table that compares
//! the autotuner's choice with every tiling measured on the full shape.

#![allow(dead_code)]

use mmoe_wgpu::gpu::{TuneRecord, TuneSource};
use mmoe_wgpu::{Gpu, GpuOptions};

/// A device whose tuning starts empty (no cache file), so every choice the bench
/// reports was measured in this run.
pub fn fresh_gpu() -> Gpu {
    let options = GpuOptions {
        tune_cache: None,
        ..GpuOptions::from_env()
    };
    let gpu = Gpu::with_options(&options).unwrap_or_else(|e| panic!("{e}"));
    println!("adapter: {}", gpu.adapter());
    println!("time source: {}", gpu.time_source());
    println!("tuning: {:?}", gpu.tune_mode());
    gpu
}

/// Seconds of one run of `record`: one warm-up run (compilation included), then the
/// best of `runs` timed runs.
pub fn best_seconds(gpu: &Gpu, runs: usize, record: impl Fn(&mut wgpu::ComputePass<'_>)) -> f64 {
    gpu.time_pass(1, &record).unwrap_or_else(|e| panic!("{e}"));
    (0..runs)
        .map(|_| {
            gpu.time_pass(1, &record)
                .unwrap_or_else(|e| panic!("{e}"))
                .total
                .as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

/// The tuning decision made for `key_part` since `before` records.
pub fn decision(gpu: &Gpu, before: usize, key_part: &str) -> TuneRecord {
    gpu.tune_records()
        .into_iter()
        .skip(before)
        .find(|r| r.key.contains(key_part))
        .unwrap_or_else(|| panic!("no tuning decision for {key_part}"))
}

/// Prints every tiling's GFLOP/s on the full shape, which of them the tuner tried and
/// which it chose, and how the choice compares with the fastest.
pub fn print_candidates(
    title: &str,
    flops: f64,
    measured: &[(String, f64)],
    decision: &TuneRecord,
) {
    println!("{title}: {} ({:?})", decision.key, decision.source);
    let tried: Vec<&str> = if decision.measured.is_empty() {
        vec![decision.chosen.as_str()]
    } else {
        decision.measured.iter().map(|(n, _)| n.as_str()).collect()
    };
    let rate = |s: f64| flops / s / 1e9;
    for (name, seconds) in measured {
        let mark = match (name == &decision.chosen, tried.contains(&name.as_str())) {
            (true, _) => "  <- chosen",
            (false, true) => "  (tuner candidate)",
            _ => "",
        };
        println!("  {name:<24} {:>8.2} GFLOP/s{mark}", rate(*seconds));
    }
    let time_of = |n: &str| measured.iter().find(|(m, _)| m == n).map(|(_, s)| *s);
    let fastest_tried = tried
        .iter()
        .filter_map(|n| time_of(n))
        .fold(f64::INFINITY, f64::min);
    let fastest = measured
        .iter()
        .map(|(_, s)| *s)
        .fold(f64::INFINITY, f64::min);
    if let Some(chosen) = time_of(&decision.chosen) {
        println!(
            "  chosen {:.2} GFLOP/s = {:.1}% of the fastest tuner candidate, {:.1}% of the fastest tiling; tuning took {:.2} s",
            rate(chosen),
            100.0 * fastest_tried / chosen,
            100.0 * fastest / chosen,
            decision.spent.as_secs_f64(),
        );
    }
    if decision.source == TuneSource::Cached {
        println!("  (choice read from the cache file)");
    }
}
