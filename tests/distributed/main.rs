//! Data-parallel training over MPI (feature `mpi`), run as `mpirun -np 2` of the
//! `distributed` example on the test machine's adapter (lavapipe in CI: two
//! processes, each with its own device), against single-process training on the
//! same global batches. Needs `mpirun` (OpenMPI or MPICH) on the PATH.

#[path = "../common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use mmoe_wgpu::model::Checkpoint;

/// Relative tolerance per parameter tensor: `max |a − b| ≤ TOLERANCE · max |b|`.
const TOLERANCE: f32 = 1e-5;

fn example() -> PathBuf {
    common::example_binary("distributed")
}

/// `mpirun -np {ranks}` of the example with `args`, allowed to run as root and on
/// more processes than cores (CI is a root container with 2 cores).
fn mpirun(ranks: usize, args: &[&str]) -> Output {
    let mut command = Command::new("mpirun");
    command
        .args(["-np", &ranks.to_string(), "--oversubscribe"])
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
        .arg(example())
        .args(args);
    command
        .output()
        .unwrap_or_else(|e| panic!("`mpirun` could not start ({e}): install OpenMPI or MPICH"))
}

fn single(args: &[&str]) -> Output {
    Command::new(example())
        .arg("--single")
        .args(args)
        .output()
        .expect("the example runs")
}

fn succeeded(what: &str, output: &Output) {
    assert!(
        output.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The worst relative difference over the parameter tensors of two checkpoints
/// (`max |a − b| / max |b|` per tensor), with the step counts checked equal.
fn difference(a: &Path, b: &Path) -> (f32, String) {
    let (a, b) = (Checkpoint::load(a).unwrap(), Checkpoint::load(b).unwrap());
    assert_eq!(a.steps(), b.steps(), "step counts");
    let mut worst = (0.0f32, String::new());
    for tb in b.tensors() {
        let ta = a
            .tensor(&tb.name)
            .unwrap_or_else(|| panic!("{} missing", tb.name));
        let scale = tb.values.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let diff = ta
            .values
            .iter()
            .zip(&tb.values)
            .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
        let rel = if scale > 0.0 { diff / scale } else { diff };
        if rel > worst.0 || worst.1.is_empty() {
            worst = (rel, tb.name.clone());
        }
    }
    worst
}

/// 20 Adam steps on 2 ranks against one process, on the same global batches.
fn matches_single(name: &str, model: &[&str]) {
    let dir = common::scratch_dir(&format!("distributed_{name}"));
    let (one, two) = (dir.join("single.safetensors"), dir.join("two.safetensors"));
    let mut args = vec!["--steps", "20"];
    args.extend(model);
    let one_arg = ["--save", one.to_str().unwrap()];
    let two_arg = ["--save", two.to_str().unwrap()];
    succeeded("single process", &single(&[&args[..], &one_arg].concat()));
    succeeded("mpirun -np 2", &mpirun(2, &[&args[..], &two_arg].concat()));
    let (rel, tensor) = difference(&two, &one);
    eprintln!(
        "{name}: 2 ranks vs 1 process after 20 steps: worst relative difference {rel:e} ({tensor})"
    );
    assert!(
        rel <= TOLERANCE,
        "{name}: {tensor} differs by {rel:e} relative"
    );
}

#[test]
fn two_ranks_match_one_process_softmax_gate() {
    matches_single("softmax", &[]);
}

#[test]
fn two_ranks_match_one_process_top2_gate() {
    matches_single("top2", &["--gate", "top2"]);
}

#[test]
fn two_ranks_match_one_process_shared_layer() {
    matches_single("shared_layer", &["--shared-layer", "16"]);
}

/// A checkpoint written at step 10 by 2 ranks, resumed on 1, matches 2 ranks
/// trained straight to step 20.
#[test]
fn checkpoint_of_two_ranks_resumes_on_one() {
    let dir = common::scratch_dir("distributed_resume");
    let at10 = dir.join("at10.safetensors");
    let straight = dir.join("straight.safetensors");
    let resumed = dir.join("resumed.safetensors");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    succeeded(
        "2 ranks to step 20, checkpoint at 10",
        &mpirun(
            2,
            &[
                "--steps",
                "20",
                "--checkpoint-at",
                "10",
                "--checkpoint",
                &s(&at10),
                "--save",
                &s(&straight),
            ],
        ),
    );
    assert_eq!(Checkpoint::load(&at10).unwrap().steps(), 10);
    succeeded(
        "1 rank from step 10",
        &mpirun(
            1,
            &[
                "--steps",
                "20",
                "--resume",
                &s(&at10),
                "--save",
                &s(&resumed),
            ],
        ),
    );
    let (rel, tensor) = difference(&resumed, &straight);
    eprintln!("resume on 1 rank vs 2 ranks straight: worst relative difference {rel:e} ({tensor})");
    assert!(rel <= TOLERANCE, "{tensor} differs by {rel:e} relative");
}

fn stops_within(what: &str, args: &[&str], bound: Duration, names: &[&str]) {
    let started = Instant::now();
    let output = mpirun(2, args);
    let took = started.elapsed();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!("{what}: the job ended in {took:.1?} with {}", output.status);
    assert!(
        !output.status.success(),
        "{what}: the job succeeded:\n{all}"
    );
    assert!(took < bound, "{what}: the job took {took:?}:\n{all}");
    let lower = all.to_lowercase();
    for name in names {
        assert!(
            lower.contains(&name.to_lowercase()),
            "{what}: the output does not say `{name}`:\n{all}"
        );
    }
}

/// A rank killed mid-training (SIGKILL): the launcher ends the other and names the
/// rank and the signal (OpenMPI: "process rank 1 ... exited on signal 9 (Killed)").
#[test]
fn a_killed_rank_stops_the_other() {
    stops_within(
        "rank 1 killed before step 6",
        &["--steps", "20", "--die-at", "6"],
        Duration::from_secs(60),
        &["process rank 1", "signal"],
    );
}

/// A rank that hangs: the other's watchdog ends it after the timeout, saying what it
/// waited for.
#[test]
fn a_hung_rank_stops_the_other() {
    stops_within(
        "rank 1 hangs before step 6",
        &["--steps", "20", "--stall-at", "6", "--timeout", "5"],
        Duration::from_secs(60),
        &["rank 0 of 2: waited", "gradient all-reduce", "step 6"],
    );
}

/// Ranks that build different models, or read different data, stop at the start
/// with an error naming the rank and what differs.
#[test]
fn mismatched_ranks_are_an_error_at_the_start() {
    for (mismatch, says) in [
        (
            "model",
            "the parameters and optimizer state of rank(s) [1] differ",
        ),
        ("data", "the data of rank(s) [1] differ"),
    ] {
        stops_within(
            &format!("rank 1 with another {mismatch}"),
            &["--steps", "2", "--mismatch", mismatch],
            Duration::from_secs(120),
            &[says, "at the start"],
        );
    }
}
