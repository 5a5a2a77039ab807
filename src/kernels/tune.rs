//! Autotuning: the first time a kernel runs a shape class on a device, time its
//! candidate tilings on a problem of that class and keep the fastest (in memory, and
//! in the cache file, see [`crate::gpu::TuneMode`]).
//!
//! Every tiling of a kernel gives bitwise identical results (fixed reduction order),
//! so tuning changes speed only, never numbers.
//!
//! On drivers that compile to CPU code (lavapipe), compiling a pipeline costs far more
//! than timing it (a register-tiled GEMM takes 0.2–2 s), so there, in
//! [`TuneMode::Fast`], a kernel only considers tilings whose compile time its work can
//! repay: [`compile_allowance`]. Elsewhere fast and full tuning try the same tilings.

use std::fmt::Display;
use std::str::FromStr;
use std::time::{Duration, Instant};

use crate::Result;
use crate::gpu::{Gpu, TuneMode, TuneRecord, TuneSource};
use crate::kernels::Precision;

/// Timed runs per candidate after the warm-up run (which includes compilation). The
/// best is kept: on a shared machine, noise only ever adds time.
const TIMED_RUNS: usize = 3;

/// Shortest timed batch of dispatches.
const MIN_TIMED: Duration = Duration::from_millis(10);

/// Floating-point work per dispatch for which one unit of a tiling's compile weight
/// (its register tile's size, see the kernels' `compile_weight`) is worth compiling.
/// Measured on lavapipe: a weight-4 GEMM tiling compiles in about 0.4 s and a weight-16
/// one in about 1.5 s; a census-shape expert GEMM (0.54 GFLOP) runs in about 50 ms.
const FLOPS_PER_WEIGHT: f64 = 1e8;

/// The largest compile weight a candidate may have in [`TuneMode::Fast`] for a kernel
/// doing `flops` per dispatch. Large shapes try everything; the census shape only what
/// compiles in about a second, which keeps its cold start within seconds.
pub fn compile_allowance(flops: f64) -> u32 {
    (flops / FLOPS_PER_WEIGHT).min(u32::MAX as f64) as u32
}

/// Whether compile time limits what [`TuneMode::Fast`] tries on this device: on a CPU
/// adapter a pipeline compiles to machine code in seconds, on a GPU in milliseconds.
pub fn compile_bound(gpu: &Gpu) -> bool {
    gpu.adapter().device_type == wgpu::DeviceType::Cpu
}

/// Rows of the problem candidates are timed on: the real row count up to a budget of
/// work, so tuning a large shape takes a few dispatches of ~0.1 s, not seconds each.
/// `flops_per_row` is the work one row adds; at least `min_rows` rows are kept so
/// every candidate's workgroups fill the device.
pub fn proxy_rows(rows: usize, flops_per_row: f64, min_rows: usize) -> usize {
    const PROXY_FLOPS: f64 = 5e8;
    let budget = (PROXY_FLOPS / flops_per_row.max(1.0)) as usize;
    rows.min(budget.max(min_rows))
}

/// A buffer of `n` small values in `precision` for timing candidates on: the work
/// does not depend on the values, but NaN or denormal inputs could slow some drivers.
pub(crate) fn proxy_buffer(
    gpu: &Gpu,
    name: &str,
    n: usize,
    precision: Precision,
) -> Result<wgpu::Buffer> {
    let value = |i: usize| ((i * 37 % 101) as f32 - 50.0) / 256.0;
    match precision {
        Precision::F32 => gpu.upload(name, &(0..n).map(value).collect::<Vec<f32>>()),
        Precision::F16 => gpu.upload(
            name,
            &(0..n)
                .map(|i| half::f16::from_f32(value(i)))
                .collect::<Vec<_>>(),
        ),
    }
}

/// Picks a tiling for `key`: the fixed `default` when tuning is off, the stored choice
/// when there is one (any of `valid`: a choice made in [`TuneMode::Full`] serves later
/// processes in any mode), otherwise the fastest of `candidates` by `time_runs`, which
/// runs the given tiling's dispatch that many times in one pass and returns the total
/// time. `default` should be among `candidates`.
pub fn choose<T>(
    gpu: &Gpu,
    key: String,
    default: T,
    candidates: &[T],
    valid: &[T],
    mut time_runs: impl FnMut(T, u32) -> Result<Duration>,
) -> Result<T>
where
    T: Copy + PartialEq + Display + FromStr,
{
    if gpu.tune_mode() == TuneMode::Off {
        return Ok(default);
    }
    if let Some(stored) = gpu.tuned_choice(&key).and_then(|s| s.parse::<T>().ok())
        && (stored == default || valid.contains(&stored))
    {
        if !gpu.tune_records().iter().any(|r| r.key == key) {
            gpu.record_tuning(TuneRecord {
                key,
                chosen: stored.to_string(),
                source: TuneSource::Cached,
                measured: Vec::new(),
                spent: Duration::ZERO,
            });
        }
        return Ok(stored);
    }
    if candidates.len() <= 1 {
        let only = candidates.first().copied().unwrap_or(default);
        gpu.record_tuning(TuneRecord {
            key,
            chosen: only.to_string(),
            source: TuneSource::Only,
            measured: Vec::new(),
            spent: Duration::ZERO,
        });
        return Ok(only);
    }
    let start = Instant::now();
    // Warm up (compile) and size each candidate's batch first; tiny dispatches are
    // timed in batches, since a single one of a fraction of a millisecond is mostly
    // the driver's wake-up jitter.
    let mut fastest = Vec::with_capacity(candidates.len());
    let mut reps = Vec::with_capacity(candidates.len());
    for &candidate in candidates {
        time_runs(candidate, 1)?;
        let single = time_runs(candidate, 1)?;
        fastest.push(single);
        reps.push(
            (MIN_TIMED.as_secs_f64() / single.as_secs_f64().max(1e-6))
                .ceil()
                .clamp(1.0, 64.0) as u32,
        );
    }
    // Rounds over all candidates rather than all runs of one candidate at a time,
    // so that a burst of other work on the machine slows every candidate alike.
    for _ in 0..TIMED_RUNS {
        for (i, &candidate) in candidates.iter().enumerate() {
            fastest[i] = fastest[i].min(time_runs(candidate, reps[i])? / reps[i]);
        }
    }
    let measured: Vec<(String, Duration)> = candidates
        .iter()
        .zip(&fastest)
        .map(|(c, t)| (c.to_string(), *t))
        .collect();
    let best = candidates
        .iter()
        .zip(&fastest)
        .min_by_key(|(_, t)| **t)
        .map(|(c, t)| (*c, *t));
    let chosen = best.map_or(default, |(t, _)| t);
    gpu.record_tuning(TuneRecord {
        key,
        chosen: chosen.to_string(),
        source: TuneSource::Measured,
        measured,
        spent: start.elapsed(),
    });
    Ok(chosen)
}
