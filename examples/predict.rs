//! Predictions of a saved model for the rows of a CSV file, or for raw census rows.
//!
//! ```text
//! cargo run --release --example predict -- --checkpoint model.safetensors --input rows.csv
//!     [--out predictions.csv] [--header auto|yes|no] [--batch N] [--format auto|csv|census]
//! ```
//!
//! A CSV input holds one row per example and one numeric column per model input,
//! optionally under a header line (by default a first line without numbers is a
//! header). A census input (`--format census`, the default for a checkpoint with
//! categorical fields) holds rows as UCI's `census-income.test` has them, for a
//! checkpoint of `examples/census --features embedding`: each field's raw values
//! become IDs through the vocabularies the checkpoint carries, and the numbers are
//! standardised as in training by the statistics it carries. The output is CSV with
//! one column per task, headed by the task names of the checkpoint's config: the
//! value for regression tasks, the probability for classification tasks, then one
//! `{ctr}_and_{cvr}` column of pCTCVR per ESMM pair (`ModelConfig::output_names`),
//! each printed exactly (it parses back to the same `f32`).
//! Rows are sent to the device in batches of at most `--batch` rows, fewer if the
//! device's buffer limits require.

use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use mmoe_wgpu::Gpu;
use mmoe_wgpu::data::census::read_census;
use mmoe_wgpu::data::census_fields::CensusFields;
use mmoe_wgpu::data::csv::{Header, read_numeric_csv};
use mmoe_wgpu::model::{Batch, Checkpoint, Trainer};

/// Writes one prediction column per task for the rows of a CSV file.
#[derive(Parser, Debug)]
#[command(name = "predict")]
struct Args {
    /// The checkpoint (a safetensors file written by this crate).
    #[arg(long, value_name = "FILE")]
    checkpoint: PathBuf,
    /// The rows: a CSV of numeric columns, one per model input, or raw census rows.
    #[arg(long, value_name = "FILE")]
    input: PathBuf,
    /// What the input holds: numeric CSV, or raw census rows; `auto` is census for a
    /// checkpoint with categorical fields, CSV otherwise.
    #[arg(long, value_enum, default_value_t = Format::Auto)]
    format: Format,
    /// Write the predictions here instead of to standard output.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Whether the input's first line is a header.
    #[arg(long, value_enum, default_value_t = HeaderFlag::Auto)]
    header: HeaderFlag,
    /// Largest number of rows sent to the device at once.
    #[arg(long, value_name = "N", default_value_t = 4096,
          value_parser = clap::value_parser!(u32).range(1..))]
    batch: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Format {
    /// Census for a checkpoint with categorical fields, CSV otherwise.
    Auto,
    /// Numeric CSV, one column per model input.
    Csv,
    /// Raw census rows (42 fields separated by `, `), as in census-income.test.
    Census,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum HeaderFlag {
    /// A header if the first line holds no number.
    Auto,
    /// The first line is a header.
    Yes,
    /// Every line is data.
    No,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), String> {
    let checkpoint = Checkpoint::load(&args.checkpoint).map_err(|e| e.to_string())?;
    let config = checkpoint.config();
    let census = match args.format {
        Format::Auto => !config.fields.is_empty(),
        Format::Csv => false,
        Format::Census => true,
    };
    let (rows, predictions) = if census {
        predict_census(args, &checkpoint)?
    } else {
        predict_csv(args, &checkpoint)?
    };
    // One column per task, then one pCTCVR column per ESMM pair.
    let outputs = config.output_names();
    let names: Vec<String> = outputs.iter().map(|name| csv_field(name)).collect();
    let mut text = names.join(",");
    text.push('\n');
    for row in 0..rows {
        let cells: Vec<String> = (0..outputs.len())
            .map(|t| predictions[t * rows + row].to_string())
            .collect();
        text.push_str(&cells.join(","));
        text.push('\n');
    }
    match &args.out {
        Some(path) => {
            std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
        }
        None => {
            let mut out = BufWriter::new(std::io::stdout().lock());
            out.write_all(text.as_bytes())
                .and_then(|()| out.flush())
                .map_err(|e| format!("cannot write the predictions: {e}"))
        }
    }
}

/// A trainer of the checkpoint for `rows` rows, in batches of at most `--batch`
/// rows, fewer if the device's buffer limits require.
fn trainer(args: &Args, checkpoint: &Checkpoint, rows: usize) -> Result<Trainer, String> {
    let gpu = Gpu::new().map_err(|e| e.to_string())?;
    let fits = Trainer::max_batch_capacity(&gpu, checkpoint.config()).map_err(|e| e.to_string())?;
    let capacity = (args.batch as usize).min(rows).min(fits);
    Trainer::from_checkpoint(&gpu, checkpoint, capacity).map_err(|e| e.to_string())
}

/// Rows and predictions `[outputs, rows]` of a numeric CSV input.
fn predict_csv(args: &Args, checkpoint: &Checkpoint) -> Result<(usize, Vec<f32>), String> {
    let config = checkpoint.config();
    if !config.fields.is_empty() {
        return Err(format!(
            "the model in {} has categorical fields, which a numeric CSV cannot give \
             (pass raw census rows with --format census)",
            args.checkpoint.display()
        ));
    }
    let header = match args.header {
        HeaderFlag::Auto => Header::Auto,
        HeaderFlag::Yes => Header::Present,
        HeaderFlag::No => Header::Absent,
    };
    let table = read_numeric_csv(&args.input, header).map_err(|e| match e {
        mmoe_wgpu::Error::Data { ref message, .. } if message.contains("say whether") => {
            format!("{e} (pass --header yes or --header no)")
        }
        e => e.to_string(),
    })?;
    if table.rows > 0 && table.columns != config.inputs {
        return Err(format!(
            "{} has {} columns but the model in {} takes {} inputs",
            args.input.display(),
            table.columns,
            args.checkpoint.display(),
            config.inputs
        ));
    }
    if table.rows == 0 {
        return Ok((0, Vec::new()));
    }
    let mut trainer = trainer(args, checkpoint, table.rows)?;
    let predictions = trainer.predict(&table.values).map_err(|e| e.to_string())?;
    Ok((table.rows, predictions))
}

/// Rows and predictions `[outputs, rows]` of raw census rows, encoded by what the
/// checkpoint carries.
fn predict_census(args: &Args, checkpoint: &Checkpoint) -> Result<(usize, Vec<f32>), String> {
    let config = checkpoint.config();
    let origin = args.checkpoint.display();
    if config.fields.is_empty() || checkpoint.dense_inputs().len() != config.inputs {
        return Err(format!(
            "the model in {origin} cannot read raw census rows: it needs categorical \
             fields and the dense inputs' standardisation (a checkpoint of \
             examples/census --features embedding --save)"
        ));
    }
    let parts: Vec<(String, usize, usize)> = config
        .fields
        .iter()
        .map(|f| (f.name.clone(), f.vocab, f.dim))
        .collect();
    let encoding = CensusFields::new(checkpoint.dense_inputs(), &parts, checkpoint.encoders())
        .map_err(|e| format!("{origin}: {e}"))?;
    let table = read_census(&args.input).map_err(|e| e.to_string())?;
    if table.rows() == 0 {
        return Ok((0, Vec::new()));
    }
    let all: Vec<usize> = (0..table.rows()).collect();
    let rows = encoding.encode(&table, &all).map_err(|e| e.to_string())?;
    let mut batch = Batch::new(rows.rows, &rows.dense);
    for (field, ids) in encoding.fields().iter().zip(&rows.ids) {
        batch = batch.ids(field.name, ids);
    }
    let mut trainer = trainer(args, checkpoint, rows.rows)?;
    let predictions = trainer.predict_batch(&batch).map_err(|e| e.to_string())?;
    Ok((rows.rows, predictions))
}

/// `name` as a CSV field: quoted when it holds a comma, quote or line break.
fn csv_field(name: &str) -> String {
    if name.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", name.replace('"', "\"\""))
    } else {
        name.to_string()
    }
}
