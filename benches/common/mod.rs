//! What the benches share: a device with fresh tuning, and the table that compares
//! the autotuner's choice with every tiling measured on the full shape.

#![allow(dead_code)]

use mmoe_wgpu::gpu::{TuneMode, TuneRecord};
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
    flops: f64,
    measured: &[(String, f64)],
    decisions: &[TuneRecord],
) {
    println!("{title}: {}", decisions[0].key);
    let rate = |s: f64| flops / s / 1e9;
    let mode_name = |i: usize| if i == 0 { "fast" } else { "full" };
    for (name, seconds) in measured {
        let marks: Vec<String> = decisions
            .iter()
            .enumerate()
            .filter(|(_, d)| &d.chosen == name)
            .map(|(i, _)| format!("<- {} mode", mode_name(i)))
            .collect();
        println!(
            "  {name:<24} {:>8.2} GFLOP/s  {}",
            rate(*seconds),
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
                "  {} mode ({:?}, {} candidate(s), {:.2} s): {} at {:.2} GFLOP/s = {:.1}% of its fastest candidate, {:.1}% of the fastest tiling",
                mode_name(i),
                d.source,
                tried.len(),
                d.spent.as_secs_f64(),
                d.chosen,
                rate(chosen),
                100.0 * fastest_tried / chosen,
                100.0 * fastest / chosen,
            );
        }
    }
}
