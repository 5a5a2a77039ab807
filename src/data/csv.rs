//! Numeric CSV: rows of comma-separated numbers, optionally under a header line,
//! as model inputs for prediction. Every defect is an [`Error::Data`] naming the
//! file, the 1-based line and column; nothing is skipped or guessed silently.
//!
//! Fields are trimmed; a field may be double-quoted (`""` inside for a quote), as
//! spreadsheet programs write header names with commas. Line ends may be `\n` or
//! `\r\n`; blank lines are allowed at the end only.

use std::path::Path;

use crate::{Error, Result};

/// Whether the first line names the columns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Header {
    /// A header when none of the first line's fields is a number, data when all
    /// are; a line that mixes both is an error asking to say which.
    #[default]
    Auto,
    /// The first line is a header.
    Present,
    /// Every line is data.
    Absent,
}

/// A parsed numeric CSV.
#[derive(Clone, Debug, PartialEq)]
pub struct NumericCsv {
    /// Column names, when there was a header.
    pub header: Option<Vec<String>>,
    /// Values per row.
    pub columns: usize,
    /// Number of data rows.
    pub rows: usize,
    /// `[rows, columns]`, row-major: the layout [`crate::model::Trainer::predict`]
    /// takes.
    pub values: Vec<f32>,
}

/// Reads and parses the numeric CSV file at `path`.
pub fn read_numeric_csv(path: impl AsRef<Path>, header: Header) -> Result<NumericCsv> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_numeric_csv(path, &bytes, header)
}

/// Parses the bytes of a numeric CSV; `file` only names it in errors. The text
/// must be UTF-8, every data field a finite number, every row as wide as the first
/// line.
pub fn parse_numeric_csv(file: &Path, bytes: &[u8], header: Header) -> Result<NumericCsv> {
    let error = |line: usize, field: String, message: String| Error::Data {
        file: file.to_path_buf(),
        line,
        field,
        message,
    };
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let line = 1 + bytes[..e.valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count();
        error(line, "text".into(), "not valid UTF-8".into())
    })?;
    let mut csv = NumericCsv {
        header: None,
        columns: 0,
        rows: 0,
        values: Vec::new(),
    };
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
                "row".into(),
                format!("blank line before more data (line {line_no})"),
            ));
        }
        let fields = split_fields(line)
            .map_err(|(column, message)| error(line_no, format!("column {column}"), message))?;
        if index == 0 {
            csv.columns = fields.len();
            if is_header(&fields, header).map_err(|m| error(1, "row".into(), m))? {
                csv.header = Some(fields);
                continue;
            }
        }
        if fields.len() != csv.columns {
            return Err(error(
                line_no,
                "row".into(),
                format!(
                    "{} fields where the first line has {}",
                    fields.len(),
                    csv.columns
                ),
            ));
        }
        for (column, field) in fields.iter().enumerate() {
            let value =
                number(field).map_err(|m| error(line_no, format!("column {}", column + 1), m))?;
            csv.values.push(value);
        }
        csv.rows += 1;
    }
    Ok(csv)
}

/// Whether the first line's `fields` are a header, as `header` says.
fn is_header(fields: &[String], header: Header) -> Result<bool, String> {
    match header {
        Header::Present => Ok(true),
        Header::Absent => Ok(false),
        Header::Auto => {
            let numbers = fields.iter().filter(|f| number(f).is_ok()).count();
            if numbers == 0 {
                Ok(true)
            } else if numbers == fields.len() {
                Ok(false)
            } else {
                Err(format!(
                    "the first line mixes {numbers} numbers with {} other fields: \
                     say whether it is a header",
                    fields.len() - numbers
                ))
            }
        }
    }
}

/// A finite number, or why the field is not one.
fn number(field: &str) -> Result<f32, String> {
    if field.is_empty() {
        return Err("empty value".into());
    }
    match field.parse::<f32>() {
        Ok(v) if v.is_finite() => Ok(v),
        Ok(v) => Err(format!("`{field}` is {v}, not a finite number")),
        Err(_) => Err(format!("`{field}` is not a number")),
    }
}

/// The trimmed fields of one line, unquoting quoted ones; on error the 1-based
/// column and what is wrong.
fn split_fields(line: &str) -> Result<Vec<String>, (usize, String)> {
    let mut fields = Vec::new();
    let mut rest = line;
    loop {
        let column = fields.len() + 1;
        let trimmed = rest.trim_start();
        let (field, after) = if let Some(quoted) = trimmed.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let end = loop {
                match chars.next() {
                    Some((i, '"')) => {
                        if quoted[i + 1..].starts_with('"') {
                            value.push('"');
                            chars.next();
                        } else {
                            break i + 1;
                        }
                    }
                    Some((_, c)) => value.push(c),
                    None => return Err((column, "unterminated quoted field".into())),
                }
            };
            let after = quoted[end..].trim_start();
            if !(after.is_empty() || after.starts_with(',')) {
                return Err((column, "text after the closing quote".into()));
            }
            (value, after)
        } else {
            let end = trimmed.find(',').unwrap_or(trimmed.len());
            (trimmed[..end].trim_end().to_string(), &trimmed[end..])
        };
        fields.push(field);
        match after.strip_prefix(',') {
            Some(next) => rest = next,
            None => return Ok(fields),
        }
    }
}
