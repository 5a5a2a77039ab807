//! Checkpoints of models with categorical fields: the tables and their optimizer
//! state under PyTorch's names, the fields in the description, bitwise round trips
//! and resumes for every table optimizer, the encoders carried through a file so that
//! raw rows get the IDs training used, and damaged files refused.

use crate::common::fields::{OwnedBatch, mmoe_with_fields};
use crate::common::{bits, gpu, scratch_dir};
use mmoe_wgpu::Error;
use mmoe_wgpu::data::categorical::{Encoders, FieldEncoder, VocabularyBuilder};
use mmoe_wgpu::model::{Batch, Checkpoint, ModelConfig, TableOptimizer, Trainer};

const ROWS: usize = 9;

/// A tensor of a file: name, shape, values.
type Tensor = (String, Vec<usize>, Vec<f32>);

fn optimizers() -> [(&'static str, TableOptimizer); 3] {
    [
        ("lazy-adam", TableOptimizer::LAZY_ADAM),
        (
            "adagrad",
            TableOptimizer::Adagrad {
                eps: 1e-10,
                initial_accumulator: 0.1,
                learning_rate: Some(0.03),
            },
        ),
        ("dense-sgd", TableOptimizer::Dense),
    ]
}

fn config(tables: TableOptimizer) -> ModelConfig {
    let config = mmoe_with_fields(tables);
    match tables {
        // The dense optimizer over the tables with momentum: its own state names.
        TableOptimizer::Dense => ModelConfig {
            optimizer: crate::common::models::SGD,
            ..config
        },
        _ => config,
    }
}

fn train(trainer: &mut Trainer, from: u64, to: u64) {
    for step in from..to {
        let lr = 0.02 / (1.0 + 0.1 * step as f32);
        trainer.set_learning_rate(lr).unwrap();
        let b = OwnedBatch::random(trainer.config(), ROWS, 300 + step);
        trainer.step_batch(&b.batch()).unwrap();
    }
}

#[track_caller]
fn assert_bitwise_equal(what: &str, a: &Checkpoint, b: &Checkpoint) {
    assert_eq!(a.config(), b.config(), "{what}: configs");
    assert_eq!(a.steps(), b.steps(), "{what}: steps");
    assert_eq!(a.encoders(), b.encoders(), "{what}: encoders");
    assert_eq!(a.tensors().len(), b.tensors().len(), "{what}: tensor count");
    for (x, y) in a.tensors().iter().zip(b.tensors()) {
        assert_eq!(
            (&x.name, &x.shape),
            (&y.name, &y.shape),
            "{what}: tensor order"
        );
        assert!(
            bits(&x.values) == bits(&y.values),
            "{what}: `{}` differs",
            x.name
        );
    }
}

#[test]
fn tables_and_their_state_round_trip_and_resume_bitwise() {
    let dir = scratch_dir("fields");
    for (name, tables) in optimizers() {
        let config = config(tables);
        let mut trainer = Trainer::new(gpu(), config.clone(), ROWS).unwrap();
        train(&mut trainer, 0, 3);
        let saved = trainer.checkpoint().unwrap();
        let shapes: Vec<(&str, Vec<usize>)> = saved
            .tensors()
            .iter()
            .filter(|t| t.name.contains("embeddings."))
            .map(|t| (t.name.as_str(), t.shape.clone()))
            .collect();
        let state: &[&str] = match name {
            "lazy-adam" => &["exp_avg", "exp_avg_sq"],
            "adagrad" => &["sum"],
            _ => &["momentum_buffer"],
        };
        let mut want = vec![
            ("embeddings.country.weight".to_string(), vec![13, 3]),
            ("embeddings.tags.weight".to_string(), vec![29, 4]),
        ];
        for s in state {
            want.push((
                format!("optimizer.{s}.embeddings.country.weight"),
                vec![13, 3],
            ));
            want.push((format!("optimizer.{s}.embeddings.tags.weight"), vec![29, 4]));
        }
        let got: Vec<(String, Vec<usize>)> = shapes
            .iter()
            .map(|(n, s)| (n.to_string(), s.clone()))
            .collect();
        assert_eq!(got, want, "{name}: table tensors");
        if name == "adagrad" {
            // Rows no batch touched keep the initial accumulator.
            let sum = saved
                .tensor("optimizer.sum.embeddings.tags.weight")
                .unwrap();
            assert!(sum.values.contains(&0.1) && sum.values.iter().any(|&v| v > 0.1));
        }

        let path = dir.join(format!("{name}.safetensors"));
        saved.save(&path).unwrap();
        let loaded = Checkpoint::load(&path).unwrap();
        assert_bitwise_equal(name, &saved, &loaded);
        assert_eq!(std::fs::read(&path).unwrap(), loaded.to_bytes().unwrap());

        // Resumed for 2 more steps: as if training had never stopped.
        train(&mut trainer, 3, 5);
        let mut resumed = Trainer::from_checkpoint(gpu(), &loaded, ROWS).unwrap();
        train(&mut resumed, 3, 5);
        assert_bitwise_equal(
            name,
            &trainer.checkpoint().unwrap(),
            &resumed.checkpoint().unwrap(),
        );
        // And restore rolls a trainer back, tables included.
        resumed.restore(&loaded).unwrap();
        assert_bitwise_equal(name, &loaded, &resumed.checkpoint().unwrap());
    }
    std::fs::remove_dir_all(dir).unwrap();
}

/// The description names the fields, the tables' optimizer (unless the default) and
/// the vocabulary; raw rows encoded with the vocabulary read back from a file get
/// the IDs training used, so their predictions are bitwise the same.
#[test]
fn the_encoders_travel_with_the_checkpoint() {
    let config = config(optimizers()[1].1);
    let mut trainer = Trainer::new(gpu(), config.clone(), ROWS).unwrap();
    train(&mut trainer, 0, 2);
    let countries = ["fr", "de", "us", "fr", "jp", "fr", "us", "br", "xx"];
    let mut vocabulary = VocabularyBuilder::new();
    vocabulary.add_all(countries);
    let mut encoders = Encoders::new();
    encoders.insert("country", FieldEncoder::Vocabulary(vocabulary.build(1)));
    encoders.insert("tags", FieldEncoder::Hash { buckets: 29 });
    trainer.set_encoders(encoders.clone()).unwrap();

    let dir = scratch_dir("encoders");
    let path = dir.join("model.safetensors");
    trainer.checkpoint().unwrap().save(&path).unwrap();
    let loaded = Checkpoint::load(&path).unwrap();
    assert_eq!(loaded.encoders(), &encoders);
    let bytes = std::fs::read(&path).unwrap();
    let (_, metadata) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let text = metadata.metadata().as_ref().unwrap()["mmoe_wgpu"].clone();
    for needle in [
        r#""fields":[{"name":"country","vocab":13,"dim":3,"values":{"kind":"single"},"weighted":false}"#,
        r#"{"name":"recent","vocab":29,"dim":4,"values":{"kind":"multi","pooling":"sum","max_bag":3},"weighted":false,"shares":"tags"}"#,
        r#""table_optimizer":{"kind":"adagrad","eps":1e-10,"initial_accumulator":0.1,"learning_rate":0.03}"#,
        r#""vocabulary":{"country":{"kind":"vocabulary","values":["fr","us","br","de","jp","xx"]},"tags":{"kind":"hash","buckets":29}}"#,
    ] {
        assert!(text.contains(needle), "the description lacks {needle}");
    }

    let mut restored = Trainer::from_checkpoint(gpu(), &loaded, ROWS).unwrap();
    assert_eq!(restored.encoders(), &encoders);
    let raw_tags = ["a", "b", "c", "a", "d", "e", "f", "a", "b", "g", "h", "c"];
    let encode = |e: &Encoders| -> (Vec<u32>, Vec<u32>) {
        (
            e.ids("country", countries).unwrap(),
            e.ids("tags", raw_tags).unwrap(),
        )
    };
    let (country, tags) = encode(&encoders);
    let (country_again, tags_again) = encode(restored.encoders());
    assert_eq!((&country, &tags), (&country_again, &tags_again));
    assert_eq!(country[..3], [1, 4, 2], "fr (3 times), de, us (twice)");
    let dense = vec![0.25f32; ROWS * 5];
    let tag_offsets: Vec<u32> = (0..=ROWS as u32)
        .map(|r| (r * 12 / ROWS as u32).min(12))
        .collect();
    let weights = vec![1.0f32; 12];
    let recent_offsets = vec![0u32; ROWS + 1];
    let batch = Batch::new(ROWS, &dense)
        .ids("country", &country)
        .weighted_bags("tags", &tag_offsets, &tags, &weights)
        .bags("recent", &recent_offsets, &[]);
    assert_eq!(
        bits(&trainer.predict_batch(&batch).unwrap()),
        bits(&restored.predict_batch(&batch).unwrap())
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn damaged_files_of_models_with_fields_are_refused() {
    let config = config(optimizers()[1].1);
    let mut trainer = Trainer::new(gpu(), config, ROWS).unwrap();
    train(&mut trainer, 0, 1);
    let mut encoders = Encoders::new();
    encoders.insert("tags", FieldEncoder::Hash { buckets: 29 });
    trainer.set_encoders(encoders).unwrap();
    let good = trainer.checkpoint().unwrap().to_bytes().unwrap();
    let (_, metadata) = safetensors::SafeTensors::read_metadata(&good).unwrap();
    let text = metadata.metadata().as_ref().unwrap()["mmoe_wgpu"].clone();
    let without_crc = |text: &str| {
        let cut = text.rfind(r#","crc32":"#).unwrap();
        format!("{}}}", &text[..cut])
    };
    let rewrite = |edit: &dyn Fn(&mut String), tensors: &dyn Fn(&mut Vec<Tensor>)| {
        let file = safetensors::SafeTensors::deserialize(&good).unwrap();
        let mut all: Vec<Tensor> = file
            .tensors()
            .into_iter()
            .map(|(name, view)| {
                let values = view
                    .data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
                (name, view.shape().to_vec(), values)
            })
            .collect();
        tensors(&mut all);
        let mut description = without_crc(&text);
        edit(&mut description);
        let bytes: Vec<Vec<u8>> = all
            .iter()
            .map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
            .collect();
        let views: Vec<(String, safetensors::tensor::TensorView)> = all
            .iter()
            .zip(&bytes)
            .map(|((name, shape, _), b)| {
                let view =
                    safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), b)
                        .unwrap();
                (name.clone(), view)
            })
            .collect();
        let metadata = std::collections::HashMap::from([("mmoe_wgpu".to_string(), description)]);
        safetensors::serialize(views, Some(metadata)).unwrap()
    };
    let same = |_: &mut Vec<Tensor>| {};
    let unchanged = |_: &mut String| {};
    // Without its checksum, the file loads.
    Checkpoint::from_bytes(&rewrite(&unchanged, &same)).unwrap();
    let cases: Vec<(Vec<u8>, &str, &str)> = vec![
        (
            rewrite(&unchanged, &|all| {
                let sum = all
                    .iter_mut()
                    .find(|t| t.0 == "optimizer.sum.embeddings.tags.weight")
                    .unwrap();
                sum.2[5] = -1e-3;
            }),
            "tensor `optimizer.sum.embeddings.tags.weight`",
            "accumulator -0.001 at index 5 is negative",
        ),
        (
            rewrite(&unchanged, &|all| {
                all.retain(|t| t.0 != "embeddings.tags.weight")
            }),
            "tensor `embeddings.tags.weight`",
            "missing",
        ),
        (
            rewrite(
                &|d| {
                    *d = d.replace(
                        r#""tags":{"kind":"hash","buckets":29}"#,
                        r#""city":{"kind":"hash","buckets":29}"#,
                    )
                },
                &same,
            ),
            "vocabulary",
            "`city` is not a field",
        ),
        (
            rewrite(
                &|d| *d = d.replace(r#""buckets":29"#, r#""buckets":30"#),
                &same,
            ),
            "vocabulary",
            "gives IDs 0 .. 30, its table has 29 rows",
        ),
        (
            rewrite(
                &|d| {
                    *d = d.replace(
                        r#""kind":"hash","buckets":29"#,
                        r#""kind":"vocabulary","values":["a",1,"a"]"#,
                    )
                },
                &same,
            ),
            "metadata `mmoe_wgpu`",
            "listed twice",
        ),
        (
            rewrite(
                &|d| *d = d.replace(r#""max_bag":3"#, r#""max_bag":3,"bag":1"#),
                &same,
            ),
            "metadata `mmoe_wgpu`",
            "unknown field `bag`",
        ),
        (
            rewrite(
                &|d| *d = d.replace(r#""shares":"tags""#, r#""shares":"recent""#),
                &same,
            ),
            "config",
            "which does not have one of its own",
        ),
    ];
    for (bytes, want_what, want_message) in cases {
        match Checkpoint::from_bytes(&bytes) {
            Err(Error::Checkpoint { what, message, .. }) => {
                eprintln!("{what}: {message}");
                assert_eq!(what, want_what, "{message}");
                assert!(message.contains(want_message), "{want_what}: `{message}`");
            }
            other => panic!("{want_what}: {want_message}: got {:?}", other.map(|_| ())),
        }
    }
}
