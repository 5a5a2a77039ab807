//! The census data for a model with categorical fields: every attribute the one-hot
//! encoding ([`CensusEncoder`]) spreads over slots becomes one single-valued field
//! looked up in an embedding table, and the numeric attributes stay dense,
//! standardised as there.
//!
//! - A field is named after its column ([`COLUMNS`]), and its IDs come from a
//!   [`Vocabulary`] built on the training file with a minimum count of
//!   [`MIN_COUNT`]: ID 0 is shared by the values seen fewer times and by values the
//!   training file never had (a test row's unseen value), so that the row of the
//!   table they read is trained too.
//! - A field's embedding has [`embedding_dim`] columns for its vocabulary size.
//! - The dense inputs are the [`NUMERIC_COLUMNS`] in column order, standardised with
//!   the training mean and population standard deviation ([`DenseInput`]).
//!
//! Everything an encoding needs (the dense inputs' names and statistics, the field
//! names and their encoders) is what a checkpoint carries, so [`CensusFields::new`]
//! rebuilds the encoding from a checkpoint and raw census rows encode at prediction
//! time exactly as they did in training.

use crate::data::categorical::{Encoders, FieldEncoder, Vocabulary, VocabularyBuilder};
use crate::data::census::{COLUMNS, CensusEncoder, CensusTable, NUMERIC_COLUMNS, is_one_hot};
use crate::data::dense::{DenseInput, check_dense_inputs};
use crate::{Error, Result};

/// Values seen fewer times than this in the training file share ID 0 with unseen
/// values.
pub const MIN_COUNT: u64 = 5;

/// Columns of the embedding of a field whose vocabulary has `size` IDs (the
/// out-of-vocabulary 0 included): `round(1.6 · size^0.56)`, at most `size` and at
/// most 16. The power law is fast.ai's rule of thumb for tabular embeddings (the
/// width grows a little slower than the square root of the vocabulary); the bound
/// `size` keeps it from exceeding what a one-hot encoding of the field could
/// express, and 16 keeps the widest census fields (50–53 IDs) narrow.
pub fn embedding_dim(size: usize) -> usize {
    let rule = (1.6 * (size as f64).powf(0.56)).round() as usize;
    rule.clamp(1, size.clamp(1, 16))
}

/// One census column as a categorical field.
#[derive(Clone, Debug, PartialEq)]
pub struct CensusField {
    /// Its column in the raw file.
    pub column: usize,
    /// The field's name: the column's ([`COLUMNS`]).
    pub name: &'static str,
    /// Rows of its table: the IDs its encoder gives.
    pub vocab: usize,
    /// Columns of its table.
    pub dim: usize,
}

/// Census rows encoded for a model with fields: dense values `[rows, dense]` and,
/// per field in [`CensusFields::fields`] order, one ID per row.
#[derive(Clone, Debug, PartialEq)]
pub struct FieldRows {
    /// Rows.
    pub rows: usize,
    /// Standardised numeric values, `[rows, dense inputs]` row-major.
    pub dense: Vec<f32>,
    /// Per field, `[rows]` IDs.
    pub ids: Vec<Vec<u32>>,
}

impl FieldRows {
    /// The listed rows, in that order. Errors on a row out of range.
    pub fn gather(&self, rows: &[usize]) -> Result<FieldRows> {
        if let Some(&bad) = rows.iter().find(|&&r| r >= self.rows) {
            return Err(Error::invalid(
                "census field rows",
                format!("index {bad} is out of range for {} rows", self.rows),
            ));
        }
        let width = self.dense.len() / self.rows.max(1);
        let mut dense = Vec::with_capacity(rows.len() * width);
        for &r in rows {
            dense.extend_from_slice(&self.dense[r * width..(r + 1) * width]);
        }
        let ids = self
            .ids
            .iter()
            .map(|field| rows.iter().map(|&r| field[r]).collect())
            .collect();
        Ok(FieldRows {
            rows: rows.len(),
            dense,
            ids,
        })
    }
}

/// The encoding of census rows as dense inputs and categorical fields.
#[derive(Clone, Debug, PartialEq)]
pub struct CensusFields {
    /// `(column, input)` per dense input.
    dense: Vec<(usize, DenseInput)>,
    fields: Vec<CensusField>,
    encoders: Encoders,
}

impl CensusFields {
    /// Fits the encoding on the training file: the numeric columns' statistics (the
    /// one-hot encoder's own) and each field's vocabulary. Errors if it has no rows.
    pub fn fit(train: &CensusTable) -> Result<CensusFields> {
        let numeric = CensusEncoder::fit(train)?;
        let dense = NUMERIC_COLUMNS
            .iter()
            .map(|&column| {
                let (mean, std) = numeric
                    .standardisation(column)
                    .expect("the one-hot encoder standardises every numeric column");
                let name = COLUMNS[column].to_string();
                (column, DenseInput { name, mean, std })
            })
            .collect();
        let mut fields = Vec::new();
        let mut encoders = Encoders::new();
        for column in (0..COLUMNS.len()).filter(|&c| is_one_hot(c)) {
            let values = train.distinct_values(column);
            let mut counts = vec![0u64; values.len()];
            for row in 0..train.rows() {
                counts[train.value_code(row, column)] += 1;
            }
            let mut builder = VocabularyBuilder::new();
            for (value, &count) in values.iter().zip(&counts) {
                builder.add_count(&**value, count);
            }
            let vocabulary = builder.build(MIN_COUNT);
            let size = vocabulary.size();
            fields.push(CensusField {
                column,
                name: COLUMNS[column],
                vocab: size,
                dim: embedding_dim(size),
            });
            encoders.insert(COLUMNS[column], FieldEncoder::Vocabulary(vocabulary));
        }
        Ok(CensusFields {
            dense,
            fields,
            encoders,
        })
    }

    /// The encoding a model was trained with, from what its checkpoint carries: the
    /// dense inputs (each named after a numeric column), and each field's name (a
    /// column's), table size and encoder. Errors on a name that is no census column
    /// or no numeric one, or a field without an encoder.
    pub fn new(
        dense: &[DenseInput],
        fields: &[(String, usize, usize)],
        encoders: &Encoders,
    ) -> Result<CensusFields> {
        let ctx = "census encoding";
        check_dense_inputs(ctx, dense, dense.len())?;
        let column_of = |name: &str| {
            COLUMNS
                .iter()
                .position(|c| *c == name)
                .ok_or_else(|| Error::invalid(ctx, format!("`{name}` is not a census column")))
        };
        let mut dense_columns = Vec::with_capacity(dense.len());
        for input in dense {
            let column = column_of(&input.name)?;
            if !NUMERIC_COLUMNS.contains(&column) {
                return Err(Error::invalid(
                    ctx,
                    format!(
                        "dense input `{}` is not a numeric census column",
                        input.name
                    ),
                ));
            }
            dense_columns.push((column, input.clone()));
        }
        let mut census_fields = Vec::with_capacity(fields.len());
        for (name, vocab, dim) in fields {
            let column = column_of(name)?;
            if encoders.get(name).is_none() {
                return Err(Error::invalid(
                    ctx,
                    format!("field `{name}` has no encoder to turn its raw values into IDs"),
                ));
            }
            census_fields.push(CensusField {
                column,
                name: COLUMNS[column],
                vocab: *vocab,
                dim: *dim,
            });
        }
        Ok(CensusFields {
            dense: dense_columns,
            fields: census_fields,
            encoders: encoders.clone(),
        })
    }

    /// The dense inputs, in input order.
    pub fn dense_inputs(&self) -> Vec<DenseInput> {
        self.dense.iter().map(|(_, input)| input.clone()).collect()
    }

    /// The fields, in input order.
    pub fn fields(&self) -> &[CensusField] {
        &self.fields
    }

    /// Each field's encoder, by field name.
    pub fn encoders(&self) -> &Encoders {
        &self.encoders
    }

    /// The vocabulary of field `name`, if it has one.
    pub fn vocabulary(&self, name: &str) -> Option<&Vocabulary> {
        match self.encoders.get(name)? {
            FieldEncoder::Vocabulary(v) => Some(v),
            FieldEncoder::Hash { .. } => None,
        }
    }

    /// Encodes the listed rows of `table`, in that order. Errors on a row out of
    /// range.
    pub fn encode(&self, table: &CensusTable, rows: &[usize]) -> Result<FieldRows> {
        if let Some(&bad) = rows.iter().find(|&&r| r >= table.rows()) {
            return Err(Error::invalid(
                "census row",
                format!(
                    "index {bad} is out of range for the {} rows of {}",
                    table.rows(),
                    table.path().display()
                ),
            ));
        }
        let mut dense = Vec::with_capacity(rows.len() * self.dense.len());
        for &r in rows {
            for (column, input) in &self.dense {
                let raw = table
                    .number(r, *column)
                    .expect("numeric columns are parsed");
                dense.push(input.apply(raw));
            }
        }
        let mut ids = Vec::with_capacity(self.fields.len());
        for field in &self.fields {
            let encoder = self.encoders.get(field.name).expect("checked when made");
            // Each distinct value is looked up once.
            let by_code: Vec<u32> = table
                .distinct_values(field.column)
                .iter()
                .map(|v| encoder.id(&**v))
                .collect();
            ids.push(
                rows.iter()
                    .map(|&r| by_code[table.value_code(r, field.column)])
                    .collect(),
            );
        }
        Ok(FieldRows {
            rows: rows.len(),
            dense,
            ids,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::census::parse_census;
    use std::path::Path;

    #[test]
    fn dims_follow_the_rule_within_their_bounds() {
        let dims: Vec<usize> = [1, 2, 3, 4, 10, 25, 44, 53, 1000]
            .iter()
            .map(|&n| embedding_dim(n))
            .collect();
        assert_eq!(dims, [1, 2, 3, 3, 6, 10, 13, 15, 16]);
    }

    fn row(age: &str, worker: &str, weeks: &str) -> String {
        let mut fields = vec!["x"; COLUMNS.len()];
        for &c in &NUMERIC_COLUMNS {
            fields[c] = "0";
        }
        fields[0] = age;
        fields[1] = worker;
        fields[24] = "1.5";
        fields[39] = weeks;
        fields[41] = "- 50000.";
        fields.join(", ")
    }

    #[test]
    fn fits_on_training_rows_and_encodes_unseen_values_as_0() {
        let mut lines: Vec<String> = (0..6).map(|_| row("30", "Private", "52")).collect();
        lines.push(row("40", "Self-employed", "0"));
        let train = parse_census(Path::new("train"), &lines.join("\n")).unwrap();
        let fields = CensusFields::fit(&train).unwrap();
        let worker = &fields.fields()[0];
        assert_eq!((worker.column, worker.name), (1, "class of worker"));
        // "Private" 6 times: ID 1; "Self-employed" once, under MIN_COUNT: ID 0.
        assert_eq!((worker.vocab, worker.dim), (2, 2));
        let test = [row("35", "Private", "52"), row("35", "Never seen", "52")];
        let test = parse_census(Path::new("test"), &test.join("\n")).unwrap();
        let rows = fields.encode(&test, &[1, 0]).unwrap();
        assert_eq!(rows.ids[0], [0, 1]);
        let age = &fields.dense_inputs()[0];
        assert_eq!(age.name, "age");
        assert_eq!(rows.dense[0], age.apply(35.0));
        assert_eq!(rows.dense.len(), 2 * NUMERIC_COLUMNS.len());

        // Rebuilt from what a checkpoint carries, it encodes the same.
        let parts: Vec<(String, usize, usize)> = fields
            .fields()
            .iter()
            .map(|f| (f.name.to_string(), f.vocab, f.dim))
            .collect();
        let again = CensusFields::new(&fields.dense_inputs(), &parts, fields.encoders()).unwrap();
        assert_eq!(again.encode(&test, &[1, 0]).unwrap(), rows);
        let gathered = rows.gather(&[1]).unwrap();
        assert_eq!((gathered.ids[0][0], gathered.dense[0]), (1, rows.dense[7]));
        assert!(rows.gather(&[2]).is_err());
        assert!(fields.encode(&test, &[2]).is_err());

        let bad = [("nope".to_string(), 2, 2)];
        let message = CensusFields::new(&[], &bad, fields.encoders()).unwrap_err();
        assert!(
            message
                .to_string()
                .contains("`nope` is not a census column")
        );
    }
}
