//! Predictions of a saved model for the rows of a CSV file.
//!
//! ```text
//! cargo run --release --example predict -- --checkpoint model.safetensors --input rows.csv
//!     [--out predictions.csv] [--header auto|yes|no] [--batch N]
//! ```
//!
//! The input holds one row per example and one numeric column per model input,
//! optionally under a header line (by default a first line without numbers is a
//! header). The output is CSV with one column per task, headed by the task names
//! of the checkpoint's config: the value for regression tasks, the probability for
//! classification tasks, then one `{ctr}_and_{cvr}` column of pCTCVR per ESMM pair
//! (`ModelConfig::output_names`), each printed exactly (it parses back to the same
//! `f32`).
//! Rows are sent to the device in batches of at most `--batch` rows, fewer if the
//! device's buffer limits require.

use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use mmoe_wgpu::Gpu;
use mmoe_wgpu::data::csv::{Header, read_numeric_csv};
use mmoe_wgpu::model::{Checkpoint, Trainer};

/// Writes one prediction column per task for the rows of a CSV file.
#[derive(Parser, Debug)]
#[command(name = "predict")]
struct Args {
    /// The checkpoint (a safetensors file written by this crate).
    #[arg(long, value_name = "FILE")]
    checkpoint: PathBuf,
    /// The CSV of inputs: numeric columns, one per model input.
    #[arg(long, value_name = "FILE")]
    input: PathBuf,
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
    // One column per task, then one pCTCVR column per ESMM pair.
    let outputs = config.output_names();
    let predictions = if table.rows == 0 {
        Vec::new()
    } else {
        let gpu = Gpu::new().map_err(|e| e.to_string())?;
        let fits = Trainer::max_batch_capacity(&gpu, config).map_err(|e| e.to_string())?;
        let capacity = (args.batch as usize).min(table.rows).min(fits);
        let mut trainer =
            Trainer::from_checkpoint(&gpu, &checkpoint, capacity).map_err(|e| e.to_string())?;
        trainer.predict(&table.values).map_err(|e| e.to_string())?
    };

    let names: Vec<String> = outputs.iter().map(|name| csv_field(name)).collect();
    let mut text = names.join(",");
    text.push('\n');
    for row in 0..table.rows {
        let cells: Vec<String> = (0..outputs.len())
            .map(|t| predictions[t * table.rows + row].to_string())
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

/// `name` as a CSV field: quoted when it holds a comma, quote or line break.
fn csv_field(name: &str) -> String {
    if name.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", name.replace('"', "\"\""))
    } else {
        name.to_string()
    }
}
