//! The census data as the model takes it: one-hot rows (`--features onehot`), or
//! dense numbers beside categorical fields (`--features embedding`). Both split the
//! held-out file the same way and shuffle the training rows the same way, so the
//! two encodings train on the same batches.

use std::path::Path;

use mmoe_wgpu::data::census::{TaskGroup, held_out_split, load_census, read_census};
use mmoe_wgpu::data::census_fields::{CensusFields, FieldRows};
use mmoe_wgpu::data::{Dataset, Splits};
use mmoe_wgpu::metrics::auc;
use mmoe_wgpu::model::{Batch, FieldConfig, Trainer};
use mmoe_wgpu::rng::Rng;

use crate::args::Features;

/// Which split to read.
#[derive(Clone, Copy, Debug)]
pub enum Split {
    Train,
    Validation,
    Test,
}

/// Rows of one split with categorical fields, and their targets `[2, rows]`.
pub struct FieldPart {
    pub rows: FieldRows,
    pub y: Vec<f32>,
}

/// The three splits with categorical fields, and the encoding fitted on training.
pub struct FieldSplits {
    pub encoding: CensusFields,
    pub train: FieldPart,
    pub validation: FieldPart,
    pub test: FieldPart,
}

pub enum Data {
    OneHot(Splits),
    Fields(FieldSplits),
}

impl Data {
    pub fn load(
        dir: &Path,
        features: Features,
        group: TaskGroup,
        seed: u64,
    ) -> Result<Data, String> {
        match features {
            Features::Onehot => load_census(dir, group, seed)
                .map(Data::OneHot)
                .map_err(|e| e.to_string()),
            Features::Embedding => load_fields(dir, group, seed).map(Data::Fields),
        }
    }

    /// Dense inputs per row.
    pub fn inputs(&self) -> usize {
        match self {
            Data::OneHot(s) => s.train.inputs,
            Data::Fields(s) => s.encoding.dense_inputs().len(),
        }
    }

    /// The model's categorical fields (none for one-hot rows).
    pub fn fields(&self) -> Vec<FieldConfig> {
        match self {
            Data::OneHot(_) => Vec::new(),
            Data::Fields(s) => s
                .encoding
                .fields()
                .iter()
                .map(|f| FieldConfig::single(f.name, f.vocab, f.dim))
                .collect(),
        }
    }

    pub fn rows(&self, split: Split) -> usize {
        match self {
            Data::OneHot(s) => dataset(s, split).rows,
            Data::Fields(s) => part(s, split).rows.rows,
        }
    }

    /// The one-hot test rows, for `--export-csv`.
    pub fn one_hot_test(&self) -> Option<&Dataset> {
        match self {
            Data::OneHot(s) => Some(&s.test),
            Data::Fields(_) => None,
        }
    }

    /// The training rows in a random order drawn from `rng`.
    pub fn shuffled_order(&self, rng: &mut Rng) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.rows(Split::Train)).collect();
        rng.shuffle(&mut order);
        order
    }

    /// One training step on the listed training rows.
    pub fn step(&self, trainer: &mut Trainer, rows: &[usize]) -> Result<(), String> {
        match self {
            Data::OneHot(s) => {
                let (x, y) = s.train.gather(rows).map_err(|e| e.to_string())?;
                trainer.step(&x, &y).map_err(|e| e.to_string())
            }
            Data::Fields(s) => {
                let batch = s.train.rows.gather(rows).map_err(|e| e.to_string())?;
                let train_rows = s.train.rows.rows;
                let mut y = Vec::with_capacity(2 * rows.len());
                for task in 0..2 {
                    y.extend(rows.iter().map(|&r| s.train.y[task * train_rows + r]));
                }
                let batch = field_batch(&s.encoding, &batch).targets(&y);
                trainer.step_batch(&batch).map_err(|e| e.to_string())
            }
        }
    }

    /// AUC of both tasks on `split` for the model as it is now.
    pub fn evaluate(&self, trainer: &mut Trainer, split: Split) -> Result<[f64; 2], String> {
        let (p, y, rows) = match self {
            Data::OneHot(s) => {
                let data = dataset(s, split);
                let p = trainer.predict(&data.x).map_err(|e| e.to_string())?;
                (p, &data.y, data.rows)
            }
            Data::Fields(s) => {
                let data = part(s, split);
                let batch = field_batch(&s.encoding, &data.rows);
                let p = trainer.predict_batch(&batch).map_err(|e| e.to_string())?;
                (p, &data.y, data.rows.rows)
            }
        };
        let mut out = [0.0; 2];
        for (t, slot) in out.iter_mut().enumerate() {
            let (p, y) = (&p[t * rows..(t + 1) * rows], &y[t * rows..(t + 1) * rows]);
            *slot = auc(p, y).map_err(|e| e.to_string())?;
        }
        Ok(out)
    }
}

/// A batch of encoded rows, without targets.
pub fn field_batch<'a>(encoding: &CensusFields, rows: &'a FieldRows) -> Batch<'a> {
    let mut batch = Batch::new(rows.rows, &rows.dense);
    for (field, ids) in encoding.fields().iter().zip(&rows.ids) {
        batch = batch.ids(field.name, ids);
    }
    batch
}

fn dataset(s: &Splits, split: Split) -> &Dataset {
    match split {
        Split::Train => &s.train,
        Split::Validation => &s.validation,
        Split::Test => &s.test,
    }
}

fn part(s: &FieldSplits, split: Split) -> &FieldPart {
    match split {
        Split::Train => &s.train,
        Split::Validation => &s.validation,
        Split::Test => &s.test,
    }
}

/// The splits of `load_census`, encoded with fields: the encoding fitted on
/// `census-income.data`, the held-out file split by `held_out_split`.
fn load_fields(dir: &Path, group: TaskGroup, seed: u64) -> Result<FieldSplits, String> {
    let train = read_census(dir.join("census-income.data")).map_err(|e| e.to_string())?;
    let encoding = CensusFields::fit(&train).map_err(|e| e.to_string())?;
    let all: Vec<usize> = (0..train.rows()).collect();
    let train_part = FieldPart {
        rows: encoding.encode(&train, &all).map_err(|e| e.to_string())?,
        y: train.targets(group),
    };
    drop(train);
    let held_out = read_census(dir.join("census-income.test")).map_err(|e| e.to_string())?;
    let (validation, test) = held_out_split(held_out.rows(), seed);
    let targets = held_out.targets(group);
    let encode = |rows: &[usize]| -> Result<FieldPart, String> {
        let mut y = Vec::with_capacity(2 * rows.len());
        for task in 0..2 {
            y.extend(rows.iter().map(|&r| targets[task * held_out.rows() + r]));
        }
        let rows = encoding
            .encode(&held_out, rows)
            .map_err(|e| e.to_string())?;
        Ok(FieldPart { rows, y })
    };
    Ok(FieldSplits {
        validation: encode(&validation)?,
        test: encode(&test)?,
        train: train_part,
        encoding,
    })
}
