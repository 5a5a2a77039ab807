//! Checkpoints: bitwise round trips, refusal of damaged files and of files of
//! another model, atomic writes under a failing writer, resuming bitwise, recovery
//! after a diverged step or a lost device, and batches larger than any one device
//! buffer.

use std::io::{self, Write};
use std::path::Path;

use crate::common::models::{every_kind, optimizers, two_task_batch, two_tasks};
use crate::common::{bits, gpu, scratch_dir};
use mmoe_wgpu::kernels::optimizer::OptimizerConfig;
use mmoe_wgpu::model::{Architecture, Checkpoint, Gate, ModelConfig, Trainer};
use mmoe_wgpu::{Error, Gpu};

const INPUTS: usize = 7;
const ROWS: usize = 16;

fn mmoe(optimizer: OptimizerConfig) -> ModelConfig {
    // The quotes and the comma reach the file's JSON description.
    let tasks = two_tasks("price", "clicked, \"quoted\"");
    ModelConfig {
        optimizer,
        learning_rate: 0.02,
        seed: 5,
        ..ModelConfig::mmoe(INPUTS, 3, 6, 4, tasks)
    }
}

/// MMoE with noisy top-2 gates.
fn noisy() -> ModelConfig {
    ModelConfig {
        architecture: Architecture::Mmoe {
            experts: 3,
            expert_layers: vec![5],
            gate: Gate::top_k(2).noisy(),
            task_experts: 0,
        },
        ..mmoe(ModelConfig::ADAM)
    }
}

/// Batch number `index` of a fixed stream.
fn batch(rows: usize, index: u64) -> (Vec<f32>, Vec<f32>) {
    two_task_batch(1000 + index, rows, INPUTS)
}

/// The learning rate schedule of the caller: decays with the step.
fn schedule(config: &ModelConfig, step: u32) -> f32 {
    config.learning_rate / (1.0 + 0.1 * step as f32)
}

/// Steps `from..to` of the fixed batch stream, with the schedule.
fn train(trainer: &mut Trainer, from: u32, to: u32) {
    for step in from..to {
        let lr = schedule(trainer.config(), step);
        trainer.set_learning_rate(lr).unwrap();
        let (x, y) = batch(ROWS, step as u64);
        trainer.step(&x, &y).unwrap();
    }
}

#[track_caller]
fn assert_bitwise_equal(what: &str, a: &Checkpoint, b: &Checkpoint) {
    assert_eq!(a.config(), b.config(), "{what}: configs differ");
    assert_eq!(a.steps(), b.steps(), "{what}: step counts differ");
    assert_eq!(
        a.learning_rate().to_bits(),
        b.learning_rate().to_bits(),
        "{what}: learning rates differ"
    );
    assert_eq!(
        a.tensors().len(),
        b.tensors().len(),
        "{what}: tensor counts"
    );
    for (x, y) in a.tensors().iter().zip(b.tensors()) {
        assert_eq!(x.name, y.name, "{what}: tensor order");
        assert_eq!(x.shape, y.shape, "{what}: shape of `{}`", x.name);
        assert!(
            bits(&x.values) == bits(&y.values),
            "{what}: `{}` differs",
            x.name
        );
    }
}

fn checkpoint_error(result: mmoe_wgpu::Result<Checkpoint>) -> (String, String) {
    match result {
        Err(Error::Checkpoint { what, message, .. }) => (what, message),
        Err(other) => panic!("expected a checkpoint error, got {other}"),
        Ok(_) => panic!("the damaged checkpoint was accepted"),
    }
}

#[test]
fn save_and_load_round_trip_bitwise_for_every_architecture_and_optimizer() {
    let dir = scratch_dir("round-trip");
    for (i, (_, config)) in every_kind(&mmoe(ModelConfig::ADAM)).into_iter().enumerate() {
        let mut trainer = Trainer::new(gpu(), config, ROWS).unwrap();
        train(&mut trainer, 0, 3);
        let saved = trainer.checkpoint().unwrap();
        assert_eq!(saved.steps(), 3);
        let path = dir.join(format!("model-{i}.safetensors"));
        saved.save(&path).unwrap();
        let loaded = Checkpoint::load(&path).unwrap();
        assert_bitwise_equal("loaded", &saved, &loaded);
        // Same state, same bytes: the file is a function of the state alone.
        assert_eq!(std::fs::read(&path).unwrap(), loaded.to_bytes().unwrap());

        let restored = Trainer::from_checkpoint(gpu(), &loaded, 5).unwrap();
        assert_bitwise_equal("restored", &saved, &restored.checkpoint().unwrap());
        assert_eq!(
            bits(&trainer.parameter("heads.weight").unwrap()),
            bits(&restored.parameter("heads.weight").unwrap())
        );
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn resuming_from_a_file_continues_bitwise_like_uninterrupted_training() {
    let dir = scratch_dir("resume");
    for (name, optimizer) in optimizers() {
        let config = mmoe(optimizer);
        let mut straight = Trainer::new(gpu(), config.clone(), ROWS).unwrap();
        train(&mut straight, 0, 12);

        let path = dir.join(format!("{name}.safetensors"));
        {
            let mut first = Trainer::new(gpu(), config.clone(), ROWS).unwrap();
            train(&mut first, 0, 5);
            first.checkpoint().unwrap().save(&path).unwrap();
        }
        let mut resumed =
            Trainer::from_checkpoint(gpu(), &Checkpoint::load(&path).unwrap(), ROWS).unwrap();
        assert_eq!(resumed.steps(), 5);
        train(&mut resumed, 5, 12);

        assert_bitwise_equal(
            &format!("{name}: resumed against uninterrupted"),
            &straight.checkpoint().unwrap(),
            &resumed.checkpoint().unwrap(),
        );
        assert_eq!(
            bits(&straight.loss().unwrap()),
            bits(&resumed.loss().unwrap())
        );
        // The check can fail: the same parameters under a fresh optimizer state
        // train to something else.
        let saved = Checkpoint::load(&path).unwrap();
        let params = Trainer::from_checkpoint(gpu(), &saved, ROWS)
            .unwrap()
            .parameters()
            .unwrap();
        let mut fresh_state = Trainer::new(gpu(), config, ROWS).unwrap();
        fresh_state.set_parameters(&params).unwrap();
        train(&mut fresh_state, 5, 12);
        assert_ne!(
            bits(&straight.parameters().unwrap()),
            bits(&fresh_state.parameters().unwrap()),
            "{name}: the test cannot tell the optimizer state apart"
        );
    }
    std::fs::remove_dir_all(dir).unwrap();
}

/// A writer that takes `left` bytes and then fails, like a process killed or a
/// disk filled mid-write.
struct FailAfter<'a> {
    file: &'a mut std::fs::File,
    left: usize,
}

impl Write for FailAfter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Err(io::Error::other("injected failure: the process was killed"));
        }
        let n = buf.len().min(self.left).min(1000);
        self.left -= n;
        self.file.write(&buf[..n])
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn a_write_that_fails_part_way_leaves_the_previous_checkpoint_intact() {
    let dir = scratch_dir("failed-write");
    let path = dir.join("latest.safetensors");
    let mut trainer = Trainer::new(gpu(), mmoe(ModelConfig::ADAM), ROWS).unwrap();
    train(&mut trainer, 0, 2);
    let old = trainer.checkpoint().unwrap();
    old.save(&path).unwrap();
    let old_bytes = std::fs::read(&path).unwrap();
    train(&mut trainer, 2, 4);
    let new = trainer.checkpoint().unwrap();
    let len = new.to_bytes().unwrap().len();

    for cut in [0, 1, 8, 100, len / 2, len - 1] {
        let result = new.save_with(&path, |file, bytes| {
            FailAfter { file, left: cut }.write_all(bytes)
        });
        match result {
            Err(Error::Io { path: p, source }) => {
                assert_eq!(p, path);
                assert!(source.to_string().contains("injected failure"), "{source}");
            }
            other => panic!("cut at {cut} bytes: expected an I/O error, got {other:?}"),
        }
        assert_eq!(std::fs::read(&path).unwrap(), old_bytes, "cut at {cut}");
        assert_bitwise_equal(
            "after a failed write",
            &old,
            &Checkpoint::load(&path).unwrap(),
        );
        assert_eq!(
            files_in(&dir),
            ["latest.safetensors"],
            "a temporary file was left"
        );
    }

    // A process killed outright cleans nothing up: its half-written temporary file
    // stays beside the target, which is still the old checkpoint, and the next save
    // goes through.
    let stale = dir.join(".latest.safetensors.99999-0.tmp");
    std::fs::write(&stale, &new.to_bytes().unwrap()[..len / 3]).unwrap();
    assert_bitwise_equal(
        "beside a stale file",
        &old,
        &Checkpoint::load(&path).unwrap(),
    );
    new.save(&path).unwrap();
    assert_bitwise_equal("saved again", &new, &Checkpoint::load(&path).unwrap());
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn truncated_or_damaged_files_are_refused_with_a_clear_error() {
    let mut trainer = Trainer::new(gpu(), mmoe(ModelConfig::ADAM), ROWS).unwrap();
    train(&mut trainer, 0, 2);
    let good = trainer.checkpoint().unwrap().to_bytes().unwrap();
    let header = 8 + u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;

    for len in [0, 5, 8, 9, header / 2, header, header + 1, good.len() - 1] {
        let (what, message) = checkpoint_error(Checkpoint::from_bytes(&good[..len]));
        assert_eq!(what, "file", "truncated to {len}: {message}");
        assert!(
            message.contains("not a valid safetensors file"),
            "{message}"
        );
    }
    // Every byte of the data, and a spread of header bytes, flipped in turn.
    let positions = (header..good.len()).chain((0..header).step_by(7));
    let mut refused = 0;
    for at in positions {
        let mut bad = good.clone();
        bad[at] ^= 0x20;
        let (what, message) = checkpoint_error(Checkpoint::from_bytes(&bad));
        assert!(!what.is_empty() && !message.is_empty());
        if at >= header {
            assert_eq!(what, "file", "byte {at}: {message}");
            assert!(message.contains("damaged"), "byte {at}: {message}");
        }
        refused += 1;
    }
    eprintln!("{refused} single-byte corruptions refused");

    let dir = scratch_dir("damaged");
    let path = dir.join("cut.safetensors");
    std::fs::write(&path, &good[..good.len() / 2]).unwrap();
    let error = Checkpoint::load(&path).unwrap_err().to_string();
    assert!(
        error.contains(&path.display().to_string()) && error.contains("not a valid safetensors"),
        "{error}"
    );
    assert!(matches!(
        Checkpoint::load(dir.join("missing.safetensors")),
        Err(Error::Io { .. })
    ));
    std::fs::remove_dir_all(dir).unwrap();
}

/// The file's tensors and description, rewritten by `edit` and serialised again
/// without the checksum, as a program other than this crate (PyTorch) would.
fn rewrite(
    good: &[u8],
    edit: impl FnOnce(&mut Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)>, &mut String),
) -> Vec<u8> {
    let file = safetensors::SafeTensors::deserialize(good).unwrap();
    let (_, metadata) = safetensors::SafeTensors::read_metadata(good).unwrap();
    let mut description = metadata.metadata().as_ref().unwrap()["mmoe_wgpu"].clone();
    let at = description.rfind(r#","crc32":"#).unwrap();
    description.replace_range(at.., "}");
    let mut tensors: Vec<_> = file
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    edit(&mut tensors, &mut description);
    let views: Vec<_> = tensors
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    let metadata = std::collections::HashMap::from([("mmoe_wgpu".to_string(), description)]);
    safetensors::serialize(views, Some(metadata)).unwrap()
}

#[test]
fn a_file_of_another_model_is_refused_naming_the_tensor() {
    let config = mmoe(ModelConfig::ADAM);
    let mut trainer = Trainer::new(gpu(), config.clone(), ROWS).unwrap();
    train(&mut trainer, 0, 2);
    let saved = trainer.checkpoint().unwrap();
    let good = saved.to_bytes().unwrap();

    // Without the checksum (as PyTorch would write it) the file still loads.
    let foreign = rewrite(&good, |_, _| {});
    assert_bitwise_equal(
        "no checksum",
        &saved,
        &Checkpoint::from_bytes(&foreign).unwrap(),
    );

    let find = |t: &[(String, safetensors::Dtype, Vec<usize>, Vec<u8>)], name: &str| {
        t.iter().position(|(n, ..)| n == name).unwrap()
    };
    let cases: Vec<(&str, Vec<u8>, &str, &str)> = vec![
        (
            "transposed",
            rewrite(&good, |t, _| {
                let i = find(t, "experts.0.weight");
                t[i].2 = vec![3, 6, INPUTS];
            }),
            "tensor `experts.0.weight`",
            "has shape [3, 6, 7], [3, 7, 6] expected",
        ),
        (
            "f16",
            rewrite(&good, |t, _| {
                let i = find(t, "gate.bias");
                t[i].1 = safetensors::Dtype::F16;
                t[i].2 = vec![2, 3, 2];
            }),
            "tensor `gate.bias`",
            "dtype F16",
        ),
        (
            "missing",
            rewrite(&good, |t, _| {
                let i = find(t, "optimizer.exp_avg_sq.heads.bias");
                t.remove(i);
            }),
            "tensor `optimizer.exp_avg_sq.heads.bias`",
            "missing",
        ),
        (
            "extra",
            rewrite(&good, |t, _| {
                t.push((
                    "experts.1.weight".into(),
                    safetensors::Dtype::F32,
                    vec![1],
                    vec![0; 4],
                ));
            }),
            "tensor `experts.1.weight`",
            "unexpected tensor",
        ),
        (
            "nan",
            rewrite(&good, |t, _| {
                let i = find(t, "towers.0.bias");
                t[i].3[4..8].copy_from_slice(&f32::NAN.to_le_bytes());
            }),
            "tensor `towers.0.bias`",
            "index 1 is not finite",
        ),
        (
            "negative second moment",
            rewrite(&good, |t, _| {
                let i = find(t, "optimizer.exp_avg_sq.gate.weight");
                t[i].3[..4].copy_from_slice(&(-1.0f32).to_le_bytes());
            }),
            "tensor `optimizer.exp_avg_sq.gate.weight`",
            "negative",
        ),
        (
            "more experts in the config",
            rewrite(&good, |_, d| {
                *d = d.replace(r#""experts":3"#, r#""experts":4"#)
            }),
            "tensor `experts.0.weight`",
            "[4, 7, 6] expected",
        ),
        (
            "unknown optimizer",
            rewrite(&good, |_, d| {
                *d = d.replace(r#""kind":"adam""#, r#""kind":"lion""#)
            }),
            "metadata `mmoe_wgpu`",
            "`config.optimizer.kind`: unknown variant `lion`",
        ),
        (
            "misspelt field",
            rewrite(&good, |_, d| *d = d.replace(r#""seed""#, r#""sead""#)),
            "metadata `mmoe_wgpu`",
            "`config.sead`: unknown field `sead`",
        ),
        (
            "invalid config",
            rewrite(&good, |_, d| {
                *d = d.replace(r#""inputs":7"#, r#""inputs":0"#)
            }),
            "config",
            "inputs must be at least 1",
        ),
        (
            "no description",
            rewrite(&good, |_, d| *d = "{}".into()),
            "metadata `mmoe_wgpu`",
            "missing field `format`",
        ),
    ];
    for (case, bytes, want_what, want_message) in cases {
        let (what, message) = checkpoint_error(Checkpoint::from_bytes(&bytes));
        assert_eq!(what, want_what, "{case}: {message}");
        assert!(message.contains(want_message), "{case}: `{message}`");
    }

    // Restoring into a trainer of another config names the field that differs.
    let mut other = Trainer::new(
        gpu(),
        ModelConfig {
            tower_layers: vec![5],
            ..config
        },
        ROWS,
    )
    .unwrap();
    match other.restore(&saved) {
        Err(Error::Checkpoint { what, message, .. }) => {
            assert_eq!(what, "config");
            assert!(
                message.contains("tower_layers: expected [5], found [4]"),
                "{message}"
            );
        }
        other => panic!("expected a config mismatch, got {other:?}"),
    }
    assert_eq!(other.steps(), 0);
}

/// The gate noise comes from the seed and the step count, both in the checkpoint: a
/// noisy model resumes bitwise. Files written before gates could be noisy (no
/// `noisy` field) load as plain gates.
#[test]
fn noisy_gates_resume_bitwise_and_old_files_load_as_plain_gates() {
    let dir = scratch_dir("noisy");
    let mut straight = Trainer::new(gpu(), noisy(), ROWS).unwrap();
    train(&mut straight, 0, 8);
    let path = dir.join("noisy.safetensors");
    {
        let mut first = Trainer::new(gpu(), noisy(), ROWS).unwrap();
        train(&mut first, 0, 4);
        first.checkpoint().unwrap().save(&path).unwrap();
    }
    let loaded = Checkpoint::load(&path).unwrap();
    assert!(
        loaded
            .tensors()
            .iter()
            .any(|t| t.name == "gate.noise.weight")
    );
    let mut resumed = Trainer::from_checkpoint(gpu(), &loaded, ROWS).unwrap();
    train(&mut resumed, 4, 8);
    assert_bitwise_equal(
        "noisy: resumed against uninterrupted",
        &straight.checkpoint().unwrap(),
        &resumed.checkpoint().unwrap(),
    );
    std::fs::remove_dir_all(dir).unwrap();

    let plain = ModelConfig {
        architecture: Architecture::Mmoe {
            experts: 3,
            expert_layers: vec![5],
            gate: Gate::top_k(2),
            task_experts: 0,
        },
        ..noisy()
    };
    let mut trainer = Trainer::new(gpu(), plain.clone(), ROWS).unwrap();
    train(&mut trainer, 0, 2);
    let saved = trainer.checkpoint().unwrap();
    let good = saved.to_bytes().unwrap();
    let edit = |from: &'static str, to: &'static str| {
        rewrite(&good, move |_, d| {
            assert!(d.contains(from), "{d}");
            *d = d.replace(from, to);
        })
    };
    let old = Checkpoint::from_bytes(&edit(r#","noisy":false"#, "")).unwrap();
    assert_eq!(old.config(), &plain);
    assert_bitwise_equal("without the field", &saved, &old);

    let (what, message) = checkpoint_error(Checkpoint::from_bytes(&edit(
        r#""noisy":false"#,
        r#""noisy":true"#,
    )));
    assert!(what.contains("gate.noise"), "{what}: {message}");
    assert!(message.contains("missing"), "{what}: {message}");
    let (_, message) = checkpoint_error(Checkpoint::from_bytes(&edit(
        r#""noisy":false"#,
        r#""noisy":1"#,
    )));
    assert!(
        message.contains(
            "`config.architecture.gate.noisy`: invalid type: integer `1`, expected a boolean"
        ),
        "{message}"
    );
    let (what, message) = checkpoint_error(Checkpoint::from_bytes(&edit(
        r#""kind":"top_k","k":2,"balance_weight":0.0,"noisy":false"#,
        r#""kind":"softmax","balance_weight":0.0,"noisy":true"#,
    )));
    assert_eq!(what, "config", "{message}");
    assert!(
        message.contains("gate noise (`Gate::noisy`) needs a top-k gate"),
        "{message}"
    );
}

#[test]
fn a_diverged_step_leaves_the_last_checkpoint_usable() {
    let config = mmoe(OptimizerConfig::Sgd { momentum: 0.5 });
    let mut trainer = Trainer::new(gpu(), config.clone(), ROWS).unwrap();
    train(&mut trainer, 0, 3);
    let good = trainer.checkpoint().unwrap();
    let good_bytes = good.to_bytes().unwrap();

    trainer.set_learning_rate(1e30).unwrap();
    let mut failed = None;
    for step in 3..30 {
        let (x, y) = batch(ROWS, step);
        trainer.step(&x, &y).unwrap();
        if let Err(e) = trainer.loss() {
            failed = Some(e);
            break;
        }
    }
    assert!(
        matches!(failed, Some(Error::NonFiniteLoss { .. })),
        "{failed:?}"
    );
    assert!(matches!(
        trainer.checkpoint(),
        Err(Error::NonFiniteLoss { .. })
    ));
    assert_eq!(
        good.to_bytes().unwrap(),
        good_bytes,
        "the held checkpoint changed"
    );

    // Restoring the good state undoes the failure; training then goes on exactly as
    // from a trainer that never diverged.
    trainer.restore(&good).unwrap();
    assert_bitwise_equal("restored", &good, &trainer.checkpoint().unwrap());
    train(&mut trainer, 3, 6);
    let mut clean = Trainer::from_checkpoint(gpu(), &good, ROWS).unwrap();
    train(&mut clean, 3, 6);
    assert_bitwise_equal(
        "after recovery",
        &clean.checkpoint().unwrap(),
        &trainer.checkpoint().unwrap(),
    );
}

#[test]
fn a_lost_device_is_an_error_and_training_resumes_on_another() {
    let config = mmoe(ModelConfig::ADAM);
    let mut straight = Trainer::new(gpu(), config.clone(), ROWS).unwrap();
    train(&mut straight, 0, 8);
    let straight = straight.checkpoint().unwrap();

    // A device of the crate's own, and one an application made and handed over
    // (which has no uncaptured-error handler, so an error outside a scope panics).
    for (name, doomed) in [
        ("Gpu::new", Gpu::new().unwrap()),
        ("Gpu::from_device", device_with_limits(|_| {})),
    ] {
        let mut trainer = Trainer::new(&doomed, config.clone(), ROWS).unwrap();
        train(&mut trainer, 0, 4);
        let held = trainer.checkpoint().unwrap();
        let held_bytes = held.to_bytes().unwrap();
        doomed.device().destroy();
        // Work queued after the loss may be accepted; the first read reports it.
        let (x, y) = batch(ROWS, 4);
        let _ = trainer.step(&x, &y);
        for (what, result) in [
            ("loss", trainer.loss().map(|_| ())),
            ("checkpoint", trainer.checkpoint().map(|_| ())),
            ("predict", trainer.predict(&x).map(|_| ())),
            ("step", trainer.step(&x, &y)),
            ("restore", trainer.restore(&held)),
            (
                "a new trainer",
                Trainer::new(&doomed, config.clone(), ROWS).map(|_| ()),
            ),
        ] {
            match result {
                Err(Error::DeviceLost(message)) => {
                    eprintln!("{name}: {what} after the loss: {message}")
                }
                other => panic!("{name}: {what} after the device was lost gave {other:?}"),
            }
        }
        assert_eq!(held.to_bytes().unwrap(), held_bytes);

        let mut resumed = Trainer::from_checkpoint(gpu(), &held, ROWS).unwrap();
        train(&mut resumed, 4, 8);
        assert_bitwise_equal(
            &format!("{name}: resumed on another device"),
            &straight,
            &resumed.checkpoint().unwrap(),
        );
    }
}

/// A device an application made on the same adapter, with the crate's test device's
/// features and the adapter's limits as `limits` changes them.
pub(crate) fn device_with_limits(limits: impl FnOnce(&mut wgpu::Limits)) -> Gpu {
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
        apply_limit_buckets: false,
        ..Default::default()
    }))
    .expect("the tests need a GPU adapter");
    let mut required_limits = adapter.limits();
    limits(&mut required_limits);
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("application device"),
        required_features: adapter.features() & gpu().device().features(),
        required_limits,
        ..Default::default()
    }))
    .unwrap();
    Gpu::from_device(device, queue)
}

/// A device on the same adapter whose storage bindings may span at most `bytes`
/// bytes (its buffers may be larger, as on most GPUs).
fn small_device(bytes: u64) -> Gpu {
    device_with_limits(|limits| limits.max_storage_buffer_binding_size = bytes)
}

#[test]
fn a_capacity_over_the_device_limits_is_an_error_stating_the_limit() {
    let config = mmoe(ModelConfig::ADAM);
    let small = small_device(1 << 14);
    let max = Trainer::max_batch_capacity(&small, &config).unwrap();
    Trainer::new(&small, config.clone(), max).unwrap();
    match Trainer::new(&small, config.clone(), max + 1) {
        Err(Error::Limit { limit, value, .. }) => {
            assert_eq!(limit, 1 << 14);
            assert!(value > limit);
        }
        other => panic!(
            "capacity {} over the limit gave {:?}",
            max + 1,
            other.map(|_| ())
        ),
    }
    let message = Trainer::new(&small, config.clone(), 10 * max)
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("max_storage_buffer_binding_size") && message.contains("16384"),
        "{message}"
    );

    // On the real device, a capacity far beyond its limits is refused before any
    // allocation, stating the limit.
    let limit = gpu().limits().max_storage_buffer_binding_size;
    let huge = Trainer::max_batch_capacity(gpu(), &config).unwrap() + 1;
    match Trainer::new(gpu(), config, huge) {
        Err(e @ Error::Limit { .. }) => assert!(e.to_string().contains(&limit.to_string()), "{e}"),
        other => panic!("capacity {huge} gave {:?}", other.map(|_| ())),
    }
}

#[test]
fn prediction_over_more_rows_than_a_buffer_holds_matches_small_batches() {
    let limit = 1u64 << 14;
    let small = small_device(limit);
    let config = mmoe(ModelConfig::ADAM);
    let mut trained = Trainer::new(gpu(), config.clone(), ROWS).unwrap();
    train(&mut trained, 0, 5);
    let checkpoint = trained.checkpoint().unwrap();

    let capacity = Trainer::max_batch_capacity(&small, &config).unwrap();
    let mut chunked = Trainer::from_checkpoint(&small, &checkpoint, capacity).unwrap();
    let rows = 10 * capacity + 13;
    let x_bytes = (rows * INPUTS * 4) as u64;
    assert!(
        x_bytes > 2 * limit,
        "the inputs ({x_bytes} bytes) must be over the device's buffer limit ({limit})"
    );
    let (x, y) = batch(rows, 77);
    let all = chunked.predict(&x).unwrap();
    let evaluation = chunked.evaluate(&x, &y).unwrap();
    let gates = chunked.gate_report(&x).unwrap();

    let mut small_batches = Trainer::from_checkpoint(&small, &checkpoint, 37).unwrap();
    let mut pieces = vec![Vec::new(); 2];
    for start in (0..rows).step_by(37) {
        let end = (start + 37).min(rows);
        let p = small_batches
            .predict(&x[start * INPUTS..end * INPUTS])
            .unwrap();
        for (t, piece) in pieces.iter_mut().enumerate() {
            piece.extend_from_slice(&p[t * (end - start)..(t + 1) * (end - start)]);
        }
    }
    assert_eq!(bits(&all), bits(&pieces.concat()));
    let same = small_batches.evaluate(&x, &y).unwrap();
    assert_eq!(evaluation, same);
    assert_eq!(gates, small_batches.gate_report(&x).unwrap());
    eprintln!(
        "{rows} rows ({x_bytes} bytes of inputs) in chunks of {capacity} on a device with \
         {limit}-byte buffers: evaluation {:?}",
        evaluation.per_task
    );
}

/// MMoE with 4 experts and `gate`.
fn gated_mmoe(gate: Gate) -> ModelConfig {
    ModelConfig {
        architecture: Architecture::Mmoe {
            experts: 4,
            expert_layers: vec![5],
            gate,
            task_experts: 0,
        },
        ..noisy()
    }
}

/// A model with the load balancing loss resumes bitwise and keeps its loss kind;
/// files written before the load loss (no `balance_loss` field) load with the
/// importance loss; an unknown kind is an error naming the field.
#[test]
fn load_balanced_gates_resume_bitwise_and_old_files_load_with_the_importance_loss() {
    let load = gated_mmoe(Gate::top_k(2).balanced_load(0.2));
    let dir = scratch_dir("load_balance");
    let mut straight = Trainer::new(gpu(), load.clone(), ROWS).unwrap();
    train(&mut straight, 0, 6);
    let path = dir.join("load.safetensors");
    {
        let mut first = Trainer::new(gpu(), load.clone(), ROWS).unwrap();
        train(&mut first, 0, 3);
        first.checkpoint().unwrap().save(&path).unwrap();
    }
    let loaded = Checkpoint::load(&path).unwrap();
    assert_eq!(loaded.config(), &load);
    let mut resumed = Trainer::from_checkpoint(gpu(), &loaded, ROWS).unwrap();
    train(&mut resumed, 3, 6);
    assert_bitwise_equal(
        "load balance: resumed against uninterrupted",
        &straight.checkpoint().unwrap(),
        &resumed.checkpoint().unwrap(),
    );
    std::fs::remove_dir_all(dir).unwrap();

    let importance = gated_mmoe(Gate::top_k(2).balanced(0.2));
    assert_ne!(importance, load);
    check_optional_gate_field(
        ("balance_loss", "importance", "load", "switch"),
        (&importance, &load),
        "expected `importance` or `load`",
    );
}

/// A shared selection is kept in the file; files written before it (no `selection`
/// field) load with each gate selecting its own; an unknown value is an error naming
/// the field.
#[test]
fn the_selection_is_kept_and_old_files_load_with_per_gate_selections() {
    let own = gated_mmoe(Gate::top_k(2));
    let shared = gated_mmoe(Gate::top_k(2).shared_selection());
    check_optional_gate_field(
        ("selection", "per_gate", "shared", "joint"),
        (&own, &shared),
        "expected `per_gate` or `shared`",
    );
}

/// A gate field that later versions added: a checkpoint of `configs.0` (whose gate has
/// the field at `default`) loads without the field as that config, with the field at
/// `other` as `configs.1`, and with `unknown` as an error naming the field and saying
/// `expected`.
fn check_optional_gate_field(
    (field, default, other, unknown): (&str, &str, &str, &str),
    configs: (&ModelConfig, &ModelConfig),
    expected: &str,
) {
    let mut trainer = Trainer::new(gpu(), configs.0.clone(), ROWS).unwrap();
    train(&mut trainer, 0, 2);
    let saved = trainer.checkpoint().unwrap();
    let good = saved.to_bytes().unwrap();
    let written = format!(r#""{field}":"{default}""#);
    let edit = |from: &str, to: &str| {
        rewrite(&good, |_, d| {
            assert!(d.contains(from), "{d}");
            *d = d.replace(from, to);
        })
    };
    // Never the gate's first field: it goes with the comma before it.
    let old = Checkpoint::from_bytes(&edit(&format!(",{written}"), "")).unwrap();
    assert_eq!(old.config(), configs.0);
    assert_bitwise_equal("without the field", &saved, &old);
    let switched =
        Checkpoint::from_bytes(&edit(&written, &format!(r#""{field}":"{other}""#))).unwrap();
    assert_eq!(switched.config(), configs.1);
    let (_, message) = checkpoint_error(Checkpoint::from_bytes(&edit(
        &written,
        &format!(r#""{field}":"{unknown}""#),
    )));
    let want =
        format!("`config.architecture.gate.{field}`: unknown variant `{unknown}`, {expected}");
    assert!(message.contains(&want), "{message}");
}
