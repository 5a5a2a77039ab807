//! Models with categorical fields and batches for them: a single-valued field, a
//! weighted multi-valued field pooled by the mean, and a multi-valued field that
//! shares its table; random IDs with repeats within and across rows, empty bags.

use mmoe_wgpu::model::{
    Architecture, Batch, FieldConfig, ModelConfig, Pooling, TableOptimizer, TaskKind,
};
use mmoe_wgpu::rng::Rng;
use mmoe_wgpu::shape::EmbeddingBatch;

use super::models::two_tasks;
use super::random;

pub const DENSE: usize = 5;

/// The fields: `country` (13 × 3, one ID), `tags` (29 × 4, weighted bags of up to
/// 5, mean), `recent` (bags of up to 3 in `tags`' table, sum).
pub fn fields() -> Vec<FieldConfig> {
    vec![
        FieldConfig::single("country", 13, 3),
        FieldConfig::multi("tags", 29, 4, Pooling::Mean, 5).weighted(),
        FieldConfig::multi("recent", 29, 4, Pooling::Sum, 3).sharing("tags"),
    ]
}

/// MMoE with the fields, trained by `tables`.
pub fn mmoe_with_fields(tables: TableOptimizer) -> ModelConfig {
    ModelConfig {
        fields: fields(),
        table_optimizer: tables,
        tower_layers: vec![3],
        learning_rate: 0.02,
        seed: 7,
        ..ModelConfig::mmoe(DENSE, 3, 5, 3, two_tasks("value", "clicked"))
    }
}

/// Shared-bottom with the fields, trained by `tables`.
pub fn shared_bottom_with_fields(tables: TableOptimizer) -> ModelConfig {
    ModelConfig {
        architecture: Architecture::SharedBottom {
            bottom_layers: vec![6],
        },
        ..mmoe_with_fields(tables)
    }
}

/// One field's arrays, owned: name, IDs, offsets (multi-valued), weights (weighted).
pub type OwnedField = (String, Vec<u32>, Option<Vec<u32>>, Option<Vec<f32>>);

/// A batch's arrays, owned; [`OwnedBatch::batch`] borrows them as a [`Batch`].
#[derive(Clone, Debug)]
pub struct OwnedBatch {
    pub rows: usize,
    pub dense: Vec<f32>,
    /// Per field of the config, in order: name, IDs, offsets, weights.
    pub fields: Vec<OwnedField>,
    pub targets: Vec<f32>,
}

impl OwnedBatch {
    /// Random rows for `config` from `seed`: IDs drawn half the time from three hot
    /// ones, every fifth bag empty, targets by task kind.
    pub fn random(config: &ModelConfig, rows: usize, seed: u64) -> OwnedBatch {
        let mut rng = Rng::new(seed);
        let dense = random(&mut rng, rows * config.inputs, 1.0);
        let mut fields = Vec::new();
        for f in &config.fields {
            let vocab = f.vocab as u64;
            let hot: Vec<u32> = (0..3).map(|_| rng.below(vocab) as u32).collect();
            let id = |rng: &mut Rng| {
                if rng.unit() < 0.5 {
                    hot[rng.below(3) as usize]
                } else {
                    rng.below(vocab) as u32
                }
            };
            let (mut ids, mut offsets) = (Vec::new(), vec![0u32]);
            for r in 0..rows {
                let n = match (f.embedding_field().multi_valued, r % 5) {
                    (false, _) => 1,
                    (true, 4) => 0,
                    (true, _) => 1 + rng.below(f.max_bag() as u64) as usize,
                };
                ids.extend((0..n).map(|_| id(&mut rng)));
                offsets.push(ids.len() as u32);
            }
            let weights = f.weighted.then(|| random(&mut rng, ids.len(), 1.5));
            let offsets = f.embedding_field().multi_valued.then_some(offsets);
            fields.push((f.name.clone(), ids, offsets, weights));
        }
        let targets = config
            .tasks
            .iter()
            .flat_map(|t| {
                (0..rows)
                    .map(|_| match t.kind {
                        TaskKind::Regression => rng.uniform(-1.0, 1.0) as f32,
                        TaskKind::BinaryClassification => (rng.unit() < 0.5) as u8 as f32,
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        OwnedBatch {
            rows,
            dense,
            fields,
            targets,
        }
    }

    /// The batch, with its targets.
    pub fn batch(&self) -> Batch<'_> {
        let mut batch = Batch::new(self.rows, &self.dense).targets(&self.targets);
        for (name, ids, offsets, weights) in &self.fields {
            batch = batch.field(mmoe_wgpu::model::FieldIds {
                name,
                ids,
                offsets: offsets.as_deref(),
                weights: weights.as_deref(),
            });
        }
        batch
    }

    /// What the graph is fed: the input rows `[rows, input_width]` (dense values,
    /// zeros in the fields' columns) in f64, and each field's prepared IDs.
    pub fn graph_inputs(&self, config: &ModelConfig) -> (Vec<f64>, Vec<EmbeddingBatch>) {
        let width = config.input_width();
        let mut x = vec![0.0; self.rows * width];
        for r in 0..self.rows {
            for c in 0..config.inputs {
                x[r * width + c] = self.dense[r * config.inputs + c] as f64;
            }
        }
        let lookups = config
            .fields
            .iter()
            .zip(&self.fields)
            .map(|(f, (name, ids, offsets, weights))| {
                EmbeddingBatch::new(
                    &f.embedding_field(),
                    name,
                    self.rows,
                    ids,
                    offsets.as_deref(),
                    weights.as_deref(),
                )
                .unwrap()
            })
            .collect();
        (x, lookups)
    }
}
