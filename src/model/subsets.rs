//! Experts on feature subsets: which columns of the input row each run of experts
//! reads (user features to some experts, item features to others).

use super::fields::FieldConfig;
use crate::shape::{ColumnWindow, ColumnWindows, MAX_COLUMN_WINDOWS};
use crate::{Error, Result};

/// Part of the input row: a range of its columns (dense features first, then each
/// field's embedding, as [`ModelConfig`](super::ModelConfig) lays them out), or
/// fields by name, which must be adjacent in `ModelConfig::fields` (their columns
/// one range).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InputSubset {
    /// Columns `start..end` of the input row.
    Columns {
        /// First column.
        start: usize,
        /// One past the last column.
        end: usize,
    },
    /// The columns of these fields, in the order of `ModelConfig::fields`.
    Fields(Vec<String>),
}

/// A run of consecutive experts reading the same subset of the input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpertInput {
    /// Experts in the run.
    pub experts: usize,
    /// What they read.
    pub subset: InputSubset,
}

impl ExpertInput {
    /// `experts` experts reading columns `columns` of the input row.
    pub fn columns(experts: usize, columns: std::ops::Range<usize>) -> Self {
        ExpertInput {
            experts,
            subset: InputSubset::Columns {
                start: columns.start,
                end: columns.end,
            },
        }
    }

    /// `experts` experts reading the embeddings of `fields` (adjacent fields).
    pub fn fields<S: Into<String>>(experts: usize, fields: impl IntoIterator<Item = S>) -> Self {
        ExpertInput {
            experts,
            subset: InputSubset::Fields(fields.into_iter().map(Into::into).collect()),
        }
    }
}

/// The column windows of `runs` over an input row of `inputs` dense features then
/// `fields`, for `experts` experts. Errors name the run and say what is wrong: expert
/// counts that do not add up, an empty subset, columns past the input, unknown or
/// non-adjacent fields, too many runs.
pub(crate) fn column_windows(
    runs: &[ExpertInput],
    experts: usize,
    inputs: usize,
    fields: &[FieldConfig],
) -> Result<ColumnWindows> {
    let bad = |what: String| Err(Error::invalid("model config expert_inputs", what));
    if runs.len() > MAX_COLUMN_WINDOWS {
        return bad(format!(
            "{} runs of experts; at most {MAX_COLUMN_WINDOWS}",
            runs.len()
        ));
    }
    let listed: usize = runs.iter().map(|r| r.experts).sum();
    if listed != experts {
        return bad(format!(
            "the runs list {listed} experts but the model has {experts}"
        ));
    }
    // The first column of each field, and the row's width.
    let mut starts = Vec::with_capacity(fields.len());
    let width = fields.iter().fold(inputs, |at, f| {
        starts.push(at);
        at.saturating_add(f.dim)
    });
    let mut windows = Vec::with_capacity(runs.len());
    for (i, run) in runs.iter().enumerate() {
        if run.experts == 0 {
            return bad(format!("run {i} has no experts"));
        }
        let (start, end) = match &run.subset {
            InputSubset::Columns { start, end } => (*start, *end),
            InputSubset::Fields(names) => field_columns(i, names, fields, &starts)?,
        };
        if start >= end {
            return bad(format!(
                "run {i} reads an empty subset (columns {start}..{end})"
            ));
        }
        if end > width {
            return bad(format!(
                "run {i} reads columns {start}..{end}, past the input's {width} columns"
            ));
        }
        windows.push(ColumnWindow {
            groups: run.experts,
            offset: start,
            width: end - start,
        });
    }
    ColumnWindows::new(width, &windows)
}

/// The columns `start..end` of the fields `names` (which must exist and be
/// adjacent, in order), field `i` starting at column `starts[i]`.
fn field_columns(
    run: usize,
    names: &[String],
    fields: &[FieldConfig],
    starts: &[usize],
) -> Result<(usize, usize)> {
    let bad = |what: String| Err(Error::invalid("model config expert_inputs", what));
    let mut at = Vec::with_capacity(names.len());
    for name in names {
        match fields.iter().position(|f| &f.name == name) {
            Some(i) => at.push(i),
            None => {
                return bad(format!(
                    "run {run} names field `{name}`, which the model lacks"
                ));
            }
        }
    }
    let (Some(&first), Some(&last)) = (at.first(), at.last()) else {
        return bad(format!("run {run} lists no fields"));
    };
    if at.iter().enumerate().any(|(k, &i)| i != first + k) {
        return bad(format!(
            "run {run}'s fields {names:?} are not adjacent in the model's fields, in order; \
             their columns must be one range"
        ));
    }
    Ok((starts[first], starts[last].saturating_add(fields[last].dim)))
}
