//! Autotuning: tiling names round-trip, the choice logic (fastest wins, stored choices
//! are reused, `off` means the default), the cache file across devices, and a real
//! tuning run whose choice gives the same bits as the default.

use crate::common;

use std::path::PathBuf;
use std::time::Duration;

use mmoe_wgpu::gpu::{TuneMode, TuneSource};
use mmoe_wgpu::kernels::gate_mix::{GateMix, GateMixForward, GateMixShape, GateMixTiling};
use mmoe_wgpu::kernels::grouped_gemm::{GroupedGemm, Tiling};
use mmoe_wgpu::kernels::tune::choose;
use mmoe_wgpu::kernels::{BufferView, Precision};
use mmoe_wgpu::rng::Rng;
use mmoe_wgpu::{Gpu, GpuOptions};

fn gpu_with(tune: TuneMode, cache: Option<PathBuf>) -> Gpu {
    let options = GpuOptions {
        tune,
        tune_cache: cache,
        ..GpuOptions::from_env()
    };
    Gpu::with_options(&options).unwrap_or_else(|e| panic!("the tests need a GPU adapter: {e}"))
}

/// A cache path, not yet a file, in a directory of its own.
fn temp_cache(name: &str) -> PathBuf {
    common::scratch_dir(name).join("tune.tsv")
}

#[test]
fn tiling_names_round_trip() {
    let gpu = common::gpu();
    for t in GroupedGemm::new(gpu).tilings() {
        assert_eq!(t.to_string().parse::<Tiling>().unwrap(), t);
    }
    for t in GateMix::new(gpu).tilings() {
        assert_eq!(t.to_string().parse::<GateMixTiling>().unwrap(), t);
    }
    for bad in [
        "",
        "subgroup-wg8",
        "naive-8",
        "subgroup-wgX-rb1-cn1",
        "wg8-rb1",
        "workgroup-wg8-rb1-cn1",
        "workgroup-wg8-rb1-cn1-ktX",
    ] {
        assert!(bad.parse::<Tiling>().is_err(), "{bad:?} parsed");
    }
}

/// Fake timings: candidate `t` takes `t` ms, except the warm-up run, which takes long.
#[test]
fn the_fastest_candidate_wins_and_is_remembered() {
    let cache = temp_cache("choose");
    let gpu = gpu_with(TuneMode::Fast, Some(cache.clone()));
    let mut runs = 0;
    let chosen = choose(
        &gpu,
        "k1".into(),
        5u32,
        &[5, 3, 9],
        &[5, 3, 9],
        |t, reps| {
            runs += reps;
            Ok(Duration::from_millis(u64::from(t)) * reps)
        },
    )
    .unwrap();
    assert_eq!(chosen, 3);
    // Per candidate: a warm-up, a single run, then three batches lasting >= 10 ms.
    assert_eq!(
        runs,
        2 * 3 + 3 * (2 + 4 + 2),
        "runs of 5, 3 and 9 ms, batches of 10 ms"
    );
    let record = gpu.tune_records().pop().unwrap();
    assert_eq!(record.source, TuneSource::Measured);
    assert_eq!(record.measured.len(), 3);

    // Same device: stored in memory, nothing measured again.
    let again = choose(&gpu, "k1".into(), 5u32, &[5, 3, 9], &[5, 3, 9], |_, _| {
        panic!("measured twice")
    });
    assert_eq!(again.unwrap(), 3);

    // A new device on the same adapter reads the file.
    let text = std::fs::read_to_string(&cache).unwrap();
    assert!(text.contains("\tk1\t3"), "cache file: {text}");
    let other = gpu_with(TuneMode::Fast, Some(cache.clone()));
    let cached = choose(&other, "k1".into(), 5u32, &[5, 9], &[5, 3, 9], |_, _| {
        panic!("the cache file was not used")
    });
    assert_eq!(
        cached.unwrap(),
        3,
        "a stored choice outside this mode's candidates"
    );
    assert_eq!(other.tune_records()[0].source, TuneSource::Cached);

    // Off: the default, no records.
    let off = gpu_with(TuneMode::Off, Some(cache.clone()));
    let chosen = choose(&off, "k1".into(), 5u32, &[5, 3, 9], &[5, 3, 9], |_, _| {
        panic!("measured with tuning off")
    });
    assert_eq!(chosen.unwrap(), 5);
    assert!(off.tune_records().is_empty());
    let _ = std::fs::remove_dir_all(cache.parent().unwrap());
}

#[test]
fn a_broken_cache_file_is_ignored_and_repaired() {
    let cache = temp_cache("broken");
    std::fs::write(&cache, "garbage\n\t\t\nmore\tgarbage\n\u{0}\u{1}\n").unwrap();
    let gpu = gpu_with(TuneMode::Fast, Some(cache.clone()));
    let chosen = choose(&gpu, "k2".into(), 2u32, &[2, 1], &[2, 1], |t, n| {
        Ok(Duration::from_millis(u64::from(t)) * n)
    });
    assert_eq!(chosen.unwrap(), 1);
    // A stored value that no longer names a valid choice is re-tuned.
    let stale = gpu_with(TuneMode::Fast, Some(cache.clone()));
    let chosen = choose(&stale, "k2".into(), 2u32, &[2, 7], &[2, 7], |t, n| {
        Ok(Duration::from_millis(10 - u64::from(t)) * n)
    });
    assert_eq!(chosen.unwrap(), 7);
    // An unwritable cache location costs nothing but persistence.
    let nowhere = gpu_with(
        TuneMode::Fast,
        Some(PathBuf::from("/proc/no/such/dir/t.tsv")),
    );
    let chosen = choose(&nowhere, "k3".into(), 2u32, &[2, 1], &[2, 1], |t, n| {
        Ok(Duration::from_millis(u64::from(t)) * n)
    });
    assert_eq!(chosen.unwrap(), 1);
    let _ = std::fs::remove_dir_all(cache.parent().unwrap());
}

/// A real tuning run over every gate + mix tiling: the chosen one was measured, and its
/// output is bitwise the default's.
#[test]
fn tuned_gate_mix_gives_the_default_bits() {
    let gpu = gpu_with(TuneMode::Full, None);
    let kernel = GateMix::new(&gpu);
    let shape = GateMixShape {
        gates: 3,
        experts: 5,
        rows: 37,
        inputs: 19,
        width: 6,
        input: mmoe_wgpu::InputLayout::Shared,
    };
    let mut rng = Rng::new(11);
    let upload = |n: usize, rng: &mut Rng| gpu.upload("t", &common::random(rng, n, 1.0)).unwrap();
    let x = upload(shape.x_len(), &mut rng);
    let wg = upload(shape.wg_len(), &mut rng);
    let bg = upload(shape.bg_len(), &mut rng);
    let h = upload(shape.h_len(), &mut rng);
    let g = gpu.storage_buffer("g", 4 * shape.g_len() as u64).unwrap();
    let m = gpu.storage_buffer("m", 4 * shape.m_len() as u64).unwrap();
    let args = GateMixForward {
        shape,
        precision: Precision::F32,
        x: BufferView::new(&x),
        wg: BufferView::new(&wg),
        bg: BufferView::new(&bg),
        h: BufferView::new(&h),
        g: BufferView::new(&g),
        m: BufferView::new(&m),
    };
    let output = |dispatch: mmoe_wgpu::kernels::Dispatch| {
        common::run(&gpu, |e| dispatch.encode(e));
        let mut bits: Vec<u32> = gpu
            .read::<f32>(&m, 0, shape.m_len())
            .unwrap()
            .iter()
            .map(|v| v.to_bits())
            .collect();
        bits.extend(
            gpu.read::<f32>(&g, 0, shape.g_len())
                .unwrap()
                .iter()
                .map(|v| v.to_bits()),
        );
        bits
    };
    let tuned = output(kernel.forward(&args).unwrap());
    let record = gpu.tune_records().pop().unwrap();
    assert_eq!(record.source, TuneSource::Measured);
    assert_eq!(record.measured.len(), kernel.tilings().len());
    assert!(record.measured.iter().any(|(n, _)| *n == record.chosen));
    let default = output(
        kernel
            .forward_with(&args, kernel.default_tiling(&shape))
            .unwrap(),
    );
    assert_eq!(tuned, default);
}

/// A pinned choice is used as a stored one, without measuring; one that is not a valid
/// choice is tuned as usual.
#[test]
fn a_pinned_choice_is_used_without_measuring() {
    let gpu = gpu_with(TuneMode::Fast, None);
    gpu.pin_tuning("k4", "9");
    let chosen = choose(&gpu, "k4".into(), 5u32, &[5, 3], &[5, 3, 9], |_, _| {
        panic!("a pinned choice was measured")
    });
    assert_eq!(chosen.unwrap(), 9);
    assert_eq!(gpu.tune_records()[0].source, TuneSource::Cached);
    gpu.pin_tuning("k5", "not a choice");
    let chosen = choose(&gpu, "k5".into(), 5u32, &[5, 3], &[5, 3], |t, n| {
        Ok(Duration::from_millis(u64::from(t)) * n)
    });
    assert_eq!(chosen.unwrap(), 3);
}
