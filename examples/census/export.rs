//! `--export-csv`: encoded census rows as the numeric CSV `examples/predict` reads,
//! so a saved model can be run on the rows it was tested on; `--export-rows`: the
//! same rows in the raw census format, for a model with categorical fields.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use mmoe_wgpu::data::Dataset;
use mmoe_wgpu::data::census::{COLUMNS, CensusEncoder, held_out_split, read_census};

/// The name of every model input, in input order. The loader does not hand out its
/// encoder, so it is fitted again on the training file: the same file and the same
/// fit give the same columns.
pub fn input_names(data_dir: &Path, inputs: usize) -> Result<Vec<String>, String> {
    let train = read_census(data_dir.join("census-income.data")).map_err(|e| e.to_string())?;
    let names = CensusEncoder::fit(&train)
        .map_err(|e| e.to_string())?
        .feature_names();
    if names.len() != inputs {
        return Err(format!(
            "the encoder names {} inputs but the data has {inputs}",
            names.len()
        ));
    }
    Ok(names)
}

/// Writes the inputs of `data` under a header of `names`. Values are printed as
/// the shortest text that parses back to the same `f32`, so predictions from the
/// file equal predictions from memory.
pub fn write_csv(path: &Path, names: &[String], data: &Dataset) -> Result<(), String> {
    let fail = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
    let mut out = BufWriter::new(File::create(path).map_err(fail)?);
    let header: Vec<String> = names.iter().map(|n| csv_field(n)).collect();
    writeln!(out, "{}", header.join(",")).map_err(fail)?;
    for row in data.x.chunks_exact(data.inputs) {
        for (i, v) in row.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            write!(out, "{sep}{v}").map_err(fail)?;
        }
        writeln!(out).map_err(fail)?;
    }
    out.flush().map_err(fail)
}

/// `name` as a CSV field: quoted when it holds a comma, quote or line break.
fn csv_field(name: &str) -> String {
    if name.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", name.replace('"', "\"\""))
    } else {
        name.to_string()
    }
}

/// Writes the test rows of `seed`'s split of `census-income.test` in `data_dir` to
/// `path` as the file has them (fields joined by `", "`), in test order; returns
/// how many.
pub fn write_raw_rows(path: &Path, data_dir: &Path, seed: u64) -> Result<usize, String> {
    let held_out = read_census(data_dir.join("census-income.test")).map_err(|e| e.to_string())?;
    let (_, test) = held_out_split(held_out.rows(), seed);
    let fail = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
    let mut out = BufWriter::new(File::create(path).map_err(fail)?);
    for &row in &test {
        for column in 0..COLUMNS.len() {
            let sep = if column == 0 { "" } else { ", " };
            let value = held_out.field(row, column).ok_or("row out of range")?;
            write!(out, "{sep}{value}").map_err(fail)?;
        }
        writeln!(out).map_err(fail)?;
    }
    out.flush().map_err(fail)?;
    Ok(test.len())
}
