//! The UCI Census-Income (KDD) data set, as in the MMoE paper's real-data experiment:
//! two task groups of two binary tasks each, train on `census-income.data`, the
//! `census-income.test` rows split 1:1 at random into validation and test.
//!
//! Raw files: no header, 42 fields per line separated by `", "`, the instance weight
//! at column [`WEIGHT`] and the label (`- 50000.` or `50000+.`) last; `?` marks a
//! missing value and is kept as a category of its own. A malformed line is an
//! [`Error::Data`] naming the file, the 1-based line and the column; no row is
//! silently dropped.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::data::{Dataset, Splits};
use crate::rng::Rng;
use crate::{Error, Result};

/// Column names in file order (UCI's `census-income.names`).
pub const COLUMNS: [&str; 42] = [
    "age",
    "class of worker",
    "detailed industry recode",
    "detailed occupation recode",
    "education",
    "wage per hour",
    "enroll in edu inst last wk",
    "marital stat",
    "major industry code",
    "major occupation code",
    "race",
    "hispanic origin",
    "sex",
    "member of a labor union",
    "reason for unemployment",
    "full or part time employment stat",
    "capital gains",
    "capital losses",
    "dividends from stocks",
    "tax filer stat",
    "region of previous residence",
    "state of previous residence",
    "detailed household and family stat",
    "detailed household summary in household",
    "instance weight",
    "migration code-change in msa",
    "migration code-change in reg",
    "migration code-move within reg",
    "live in this house 1 year ago",
    "migration prev res in sunbelt",
    "num persons worked for employer",
    "family members under 18",
    "country of birth father",
    "country of birth mother",
    "country of birth self",
    "citizenship",
    "own business or self employed",
    "fill inc questionnaire for veteran's admin",
    "veterans benefits",
    "weeks worked in year",
    "year",
    "label",
];

/// The continuous attributes, standardised as inputs. Every other attribute is
/// categorical (some integer-coded) and one-hot encoded.
pub const NUMERIC_COLUMNS: [usize; 7] = [0, 5, 16, 17, 18, 30, 39];
/// Column of the education attribute (a target in group 2, so never an input).
pub const EDUCATION: usize = 4;
/// Column of the marital status attribute (a target in both groups, so never an input).
pub const MARITAL: usize = 7;
/// Column of the instance weight: a sampling weight, parsed but not an input.
pub const WEIGHT: usize = 24;
/// Column of the income label.
pub const LABEL: usize = 41;

/// Marital status value of the "never married" task.
pub const NEVER_MARRIED: &str = "Never married";
/// Label value of the "income over $50K" task; the other label is `- 50000.`.
pub const INCOME_OVER_50K: &str = "50000+.";
const INCOME_UNDER_50K: &str = "- 50000.";

/// Education values counted as "college education" in task group 2: bachelors,
/// masters, doctorate, professional school, both associates degrees, and some
/// college without a degree (verbatim as in the data files).
pub const COLLEGE_EDUCATION: [&str; 7] = [
    "Bachelors degree(BA AB BS)",
    "Masters degree(MA MS MEng MEd MSW MBA)",
    "Doctorate degree(PhD EdD)",
    "Prof school degree (MD DDS DVM LLB JD)",
    "Associates degree-occup /vocational",
    "Associates degree-academic program",
    "Some college but no degree",
];

/// The paper's two census task groups; each is two binary tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TaskGroup {
    /// Group 1: income over $50K (label `50000+.`), marital status "Never married".
    IncomeMarital,
    /// Group 2: college education (one of [`COLLEGE_EDUCATION`]), marital status
    /// "Never married".
    EducationMarital,
}

impl TaskGroup {
    /// Task names in target order.
    pub fn task_names(self) -> [&'static str; 2] {
        match self {
            TaskGroup::IncomeMarital => ["income > 50K", "never married"],
            TaskGroup::EducationMarital => ["college education", "never married"],
        }
    }
}

/// One raw census file held compactly: each column's distinct values once, and a
/// code per cell. Interning keeps the 8 million cells of the training file to a few
/// tens of megabytes and parses each distinct number only once.
#[derive(Clone, Debug)]
pub struct CensusTable {
    path: PathBuf,
    rows: usize,
    /// Per column, its distinct values in order of first appearance.
    values: Vec<Vec<Box<str>>>,
    /// Per column, the parsed value of each distinct value (numeric columns and the
    /// weight only; empty otherwise).
    numbers: Vec<Vec<f64>>,
    /// `[rows, 42]` indices into `values`.
    codes: Vec<u32>,
}

/// Reads and checks a raw census file (`census-income.data` or `.test`).
pub fn read_census(path: impl AsRef<Path>) -> Result<CensusTable> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_census_bytes(path, &bytes)
}

/// Parses the raw bytes of a census file, which must be UTF-8; `file` only names
/// it in errors.
pub fn parse_census_bytes(file: &Path, bytes: &[u8]) -> Result<CensusTable> {
    let text = std::str::from_utf8(bytes).map_err(|e| Error::Data {
        file: file.to_path_buf(),
        line: 1 + bytes[..e.valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count(),
        field: "text".into(),
        message: "not valid UTF-8".into(),
    })?;
    parse_census(file, text)
}

/// Parses the contents of a raw census file; `file` only names it in errors.
/// Blank lines are allowed at the end only.
pub fn parse_census(file: &Path, text: &str) -> Result<CensusTable> {
    let error = |line: usize, field: &str, message: String| Error::Data {
        file: file.to_path_buf(),
        line,
        field: field.to_string(),
        message,
    };
    let mut table = CensusTable {
        path: file.to_path_buf(),
        rows: 0,
        values: vec![Vec::new(); COLUMNS.len()],
        numbers: vec![Vec::new(); COLUMNS.len()],
        codes: Vec::new(),
    };
    // Keys borrow from `text`, so looking up a value already seen allocates nothing.
    let mut lookup: Vec<HashMap<&str, u32>> = vec![HashMap::new(); COLUMNS.len()];
    let mut first_blank = None;
    for (index, line) in text.lines().enumerate() {
        let line_no = index + 1;
        if line.trim().is_empty() {
            first_blank.get_or_insert(line_no);
            continue;
        }
        if let Some(blank) = first_blank {
            return Err(error(
                blank,
                "row",
                format!("blank line before more data (line {line_no})"),
            ));
        }
        let mut fields = [""; COLUMNS.len()];
        let mut count = 0;
        for field in line.split(", ") {
            if let Some(slot) = fields.get_mut(count) {
                *slot = field.trim();
            }
            count += 1;
        }
        if count < COLUMNS.len() {
            return Err(error(
                line_no,
                COLUMNS[count],
                format!("missing: the line has {count} of {} fields", COLUMNS.len()),
            ));
        }
        if count > COLUMNS.len() {
            return Err(error(
                line_no,
                &format!("field {}", COLUMNS.len() + 1),
                format!("the line has {count} fields, {} expected", COLUMNS.len()),
            ));
        }
        for (column, value) in fields.into_iter().enumerate() {
            // Only a value not seen before in this column needs checking and storing.
            let code = match lookup[column].get(value) {
                Some(&code) => code,
                None => {
                    let number = check_value(column, value)
                        .map_err(|message| error(line_no, COLUMNS[column], message))?;
                    let code = u32::try_from(table.values[column].len()).map_err(|_| {
                        error(line_no, COLUMNS[column], "over 2³² distinct values".into())
                    })?;
                    table.numbers[column].extend(number);
                    table.values[column].push(value.into());
                    lookup[column].insert(value, code);
                    code
                }
            };
            table.codes.push(code);
        }
        table.rows += 1;
    }
    Ok(table)
}

/// Checks a value the first time it appears in `column`; returns its number for the
/// numeric columns and the weight, or why it is invalid.
fn check_value(column: usize, value: &str) -> Result<Option<f64>, String> {
    if value.is_empty() {
        return Err("empty value".into());
    }
    if column == LABEL && value != INCOME_OVER_50K && value != INCOME_UNDER_50K {
        return Err(format!(
            "`{value}` is neither `{INCOME_UNDER_50K}` nor `{INCOME_OVER_50K}`"
        ));
    }
    if column != WEIGHT && !NUMERIC_COLUMNS.contains(&column) {
        return Ok(None);
    }
    match value.parse::<f64>() {
        Ok(number) if number.is_finite() => Ok(Some(number)),
        _ => Err(format!("`{value}` is not a finite number")),
    }
}

impl CensusTable {
    /// The file this table was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of data rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The value in `row` (0-based) and `column` as written in the file (trimmed),
    /// or `None` if either is out of range.
    pub fn field(&self, row: usize, column: usize) -> Option<&str> {
        let code = self.code(row, column)?;
        Some(&self.values[column][code])
    }

    /// The number in `row` and `column` for the numeric columns and the instance
    /// weight; `None` for other columns or out of range.
    pub fn number(&self, row: usize, column: usize) -> Option<f64> {
        let code = self.code(row, column)?;
        self.numbers[column].get(code).copied()
    }

    /// Binary targets of `group`, task-major `[2, rows]`, as 0.0 or 1.0.
    pub fn targets(&self, group: TaskGroup) -> Vec<f32> {
        let first: (usize, fn(&str) -> bool) = match group {
            TaskGroup::IncomeMarital => (LABEL, |v| v == INCOME_OVER_50K),
            TaskGroup::EducationMarital => (EDUCATION, |v| COLLEGE_EDUCATION.contains(&v)),
        };
        let second: (usize, fn(&str) -> bool) = (MARITAL, |v| v == NEVER_MARRIED);
        let mut y = Vec::with_capacity(2 * self.rows);
        for (column, is_positive) in [first, second] {
            // Decide once per distinct value, then look the answer up per row.
            let positive: Vec<f32> = self.values[column]
                .iter()
                .map(|v| if is_positive(v) { 1.0 } else { 0.0 })
                .collect();
            y.extend(
                (0..self.rows).map(|r| positive[self.codes[r * COLUMNS.len() + column] as usize]),
            );
        }
        y
    }

    /// The distinct values of `column` in order of first appearance: what
    /// [`value_code`](Self::value_code) indexes.
    pub(super) fn distinct_values(&self, column: usize) -> &[Box<str>] {
        &self.values[column]
    }

    /// The index into [`distinct_values`](Self::distinct_values) of the value in
    /// `row` and `column`, both in range.
    pub(super) fn value_code(&self, row: usize, column: usize) -> usize {
        self.codes[row * COLUMNS.len() + column] as usize
    }

    fn code(&self, row: usize, column: usize) -> Option<usize> {
        (row < self.rows && column < COLUMNS.len())
            .then(|| self.codes[row * COLUMNS.len() + column] as usize)
    }
}

/// Turns census rows into model inputs, with statistics and vocabularies taken from
/// the training file only (so validation and test rows cannot leak into them).
///
/// Input layout: the 7 [`NUMERIC_COLUMNS`] first, in column order, each standardised
/// to `(v − mean) / std` with the training mean and population standard deviation
/// (a constant column maps to 0); then, for every other attribute in column order
/// except education, marital status and the instance weight, one slot per training
/// value in sorted order plus a last "unknown" slot for values the training file
/// never had. Each row has exactly one 1 per categorical block.
#[derive(Clone, Debug, PartialEq)]
pub struct CensusEncoder {
    /// `(column, mean, std)` per numeric column.
    numeric: Vec<(usize, f64, f64)>,
    /// `(column, sorted training values)` per one-hot column.
    categorical: Vec<(usize, Vec<Box<str>>)>,
    width: usize,
}

impl CensusEncoder {
    /// Fits means, standard deviations and vocabularies on `train`; errors if it
    /// has no rows.
    pub fn fit(train: &CensusTable) -> Result<CensusEncoder> {
        if train.rows == 0 {
            return Err(Error::invalid(
                "census training file",
                format!("{} has no rows to fit the encoder on", train.path.display()),
            ));
        }
        let n = train.rows as f64;
        let numeric: Vec<(usize, f64, f64)> = NUMERIC_COLUMNS
            .iter()
            .map(|&column| {
                let values = (0..train.rows).filter_map(|r| train.number(r, column));
                let mean = values.clone().sum::<f64>() / n;
                let variance = values.map(|v| (v - mean).powi(2)).sum::<f64>() / n;
                let std = if variance > 0.0 { variance.sqrt() } else { 1.0 };
                (column, mean, std)
            })
            .collect();
        let categorical: Vec<(usize, Vec<Box<str>>)> = (0..COLUMNS.len())
            .filter(|c| is_one_hot(*c))
            .map(|column| {
                let mut vocabulary = train.values[column].clone();
                vocabulary.sort();
                (column, vocabulary)
            })
            .collect();
        let width = numeric.len() + categorical.iter().map(|(_, v)| v.len() + 1).sum::<usize>();
        Ok(CensusEncoder {
            numeric,
            categorical,
            width,
        })
    }

    /// Number of model inputs per row.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Training `(mean, std)` of a numeric column; `None` for other columns.
    pub fn standardisation(&self, column: usize) -> Option<(f64, f64)> {
        self.numeric
            .iter()
            .find(|(c, _, _)| *c == column)
            .map(|&(_, mean, std)| (mean, std))
    }

    /// A name per input, in input order: the column name for numeric inputs,
    /// `column=value` for one-hot slots and `column=<unknown>` for unknown slots.
    pub fn feature_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .numeric
            .iter()
            .map(|(c, _, _)| COLUMNS[*c].to_string())
            .collect();
        for (column, vocabulary) in &self.categorical {
            names.extend(
                vocabulary
                    .iter()
                    .map(|v| format!("{}={v}", COLUMNS[*column])),
            );
            names.push(format!("{}=<unknown>", COLUMNS[*column]));
        }
        names
    }

    /// Encodes the listed rows of `table` (in that order) with the targets of
    /// `group`. Errors on a row index out of range.
    pub fn dataset(
        &self,
        table: &CensusTable,
        group: TaskGroup,
        rows: &[usize],
    ) -> Result<Dataset> {
        if let Some(&bad) = rows.iter().find(|&&r| r >= table.rows) {
            return Err(Error::invalid(
                "census row",
                format!(
                    "index {bad} is out of range for the {} rows of {}",
                    table.rows,
                    table.path.display()
                ),
            ));
        }
        // Per one-hot column: input index of each of the table's distinct values.
        let mut slots: Vec<(usize, Vec<usize>)> = Vec::with_capacity(self.categorical.len());
        let mut offset = self.numeric.len();
        for (column, vocabulary) in &self.categorical {
            let unknown = offset + vocabulary.len();
            let map = table.values[*column]
                .iter()
                .map(|v| vocabulary.binary_search(v).map_or(unknown, |i| offset + i))
                .collect();
            slots.push((*column, map));
            offset = unknown + 1;
        }

        let mut x = vec![0.0f32; rows.len() * self.width];
        for (out, &r) in x.chunks_exact_mut(self.width).zip(rows) {
            let codes = &table.codes[r * COLUMNS.len()..(r + 1) * COLUMNS.len()];
            for (i, &(column, mean, std)) in self.numeric.iter().enumerate() {
                out[i] = ((table.numbers[column][codes[column] as usize] - mean) / std) as f32;
            }
            for (column, map) in &slots {
                out[map[codes[*column] as usize]] = 1.0;
            }
        }
        let all = table.targets(group);
        let mut y = Vec::with_capacity(2 * rows.len());
        for task in 0..2 {
            y.extend(rows.iter().map(|&r| all[task * table.rows + r]));
        }
        Dataset::new(self.width, 2, rows.len(), x, y)
    }
}

/// Whether `column` is one-hot encoded: every attribute that is neither numeric, a
/// target attribute, the instance weight nor the label.
pub(super) fn is_one_hot(column: usize) -> bool {
    !NUMERIC_COLUMNS.contains(&column) && ![EDUCATION, MARITAL, WEIGHT, LABEL].contains(&column)
}

/// Loads `census-income.data` and `census-income.test` from `dir` for `group`; see
/// [`load_census_files`].
pub fn load_census(dir: impl AsRef<Path>, group: TaskGroup, seed: u64) -> Result<Splits> {
    let dir = dir.as_ref();
    load_census_files(
        dir.join("census-income.data"),
        dir.join("census-income.test"),
        group,
        seed,
    )
}

/// Loads the census splits: the encoder is fitted on `train_file`, whose rows form
/// the training set in file order; the rows of `test_file` are shuffled with
/// `Rng::new(seed)` and the first half (rounded down) becomes the validation set,
/// the rest the test set.
pub fn load_census_files(
    train_file: impl AsRef<Path>,
    test_file: impl AsRef<Path>,
    group: TaskGroup,
    seed: u64,
) -> Result<Splits> {
    let train = read_census(train_file)?;
    let encoder = CensusEncoder::fit(&train)?;
    let train_set = encoder.dataset(&train, group, &(0..train.rows).collect::<Vec<_>>())?;
    drop(train);
    let held_out = read_census(test_file)?;
    let (validation, test) = held_out_split(held_out.rows, seed);
    Ok(Splits {
        train: train_set,
        validation: encoder.dataset(&held_out, group, &validation)?,
        test: encoder.dataset(&held_out, group, &test)?,
    })
}

/// The validation and test rows of a held-out file of `rows` rows: its row indices
/// shuffled with `Rng::new(seed)`, the first half (rounded down) for validation,
/// the rest for test. Every encoding of the census data splits this way.
pub fn held_out_split(rows: usize, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut order: Vec<usize> = (0..rows).collect();
    Rng::new(seed).shuffle(&mut order);
    let test = order.split_off(rows / 2);
    (order, test)
}
