//! Property tests of the data parsers: the census reader (and the encoder that
//! turns what it accepts into inputs) and the numeric CSV reader, over arbitrary
//! bytes and over damaged valid files. No input may panic; whatever is accepted
//! must be consistent.

use std::path::Path;

use crate::common::fuzz::{apply_byte_edits, byte_edits, run_cases};
use mmoe_wgpu::data::census::{CensusEncoder, TaskGroup, parse_census_bytes};
use mmoe_wgpu::data::csv::{Header, parse_numeric_csv};
use proptest::prelude::*;
use proptest::sample::Index;

const SAMPLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/census-sample.data"
);

/// Parses `bytes` as a census file and, if accepted, encodes every row for both
/// task groups; the result must be consistent.
fn census(bytes: &[u8]) {
    let Ok(table) = parse_census_bytes(Path::new("fuzz.data"), bytes) else {
        return;
    };
    let Ok(encoder) = CensusEncoder::fit(&table) else {
        assert_eq!(table.rows(), 0);
        return;
    };
    let rows: Vec<usize> = (0..table.rows()).collect();
    for group in [TaskGroup::IncomeMarital, TaskGroup::EducationMarital] {
        // Huge numbers may overflow the standardisation: an error, not a panic.
        if let Ok(data) = encoder.dataset(&table, group, &rows) {
            assert_eq!(data.x.len(), table.rows() * encoder.width());
            assert_eq!(data.y.len(), 2 * table.rows());
        }
        assert!(encoder.dataset(&table, group, &[table.rows()]).is_err());
    }
    assert_eq!(table.field(table.rows(), 0), None);
}

/// Tokens that census fields must cope with.
const CENSUS_TOKENS: [&str; 14] = [
    "",
    "?",
    "NaN",
    "inf",
    "-inf",
    "1e999",
    "-0",
    "1e-320",
    "50000+.",
    "- 50000.",
    ", ",
    " ,",
    "Never married",
    "\u{feff}",
];

#[test]
fn the_census_parser_never_panics() {
    let sample = std::fs::read(SAMPLE).unwrap();
    let lines: Vec<&[u8]> = sample.split(|&b| b == b'\n').collect();
    let mut total = 0;

    let arbitrary = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..2048),
        "[0-9a-zA-Z ,.?+\\-\n\r]{0,600}".prop_map(String::into_bytes),
    ];
    total += run_cases("census parser, arbitrary bytes", 5000, arbitrary, |bytes| {
        census(&bytes);
    });

    total += run_cases(
        "census parser, damaged sample file",
        5000,
        byte_edits(),
        |edits| census(&apply_byte_edits(sample.clone(), &edits)),
    );

    // Field-level damage: one field of some line replaced by a hostile token, or a
    // line dropped or repeated.
    let edit = (
        any::<Index>(),
        0usize..42,
        prop::sample::select(&CENSUS_TOKENS[..]),
        0u8..4,
    );
    total += run_cases(
        "census parser, edited fields and lines",
        5000,
        prop::collection::vec(edit, 1..4),
        |edits| {
            let mut text: Vec<Vec<u8>> = lines.iter().map(|l| l.to_vec()).collect();
            for (line, field, token, kind) in edits {
                let at = line.index(text.len());
                match kind {
                    0 | 1 => {
                        let line = String::from_utf8_lossy(&text[at]).into_owned();
                        let mut fields: Vec<&str> = line.split(", ").collect();
                        if let Some(f) = fields.get_mut(field) {
                            *f = token;
                        }
                        text[at] = fields.join(", ").into_bytes();
                    }
                    2 => {
                        text.remove(at);
                    }
                    _ => text.insert(at, text[at].clone()),
                }
                if text.is_empty() {
                    break;
                }
            }
            census(&text.join(&b'\n'));
        },
    );
    eprintln!("census parser: {total} cases in all, none panicked");
    assert_eq!(total, 15_000);
}

/// Parses `bytes` as numeric CSV under every header mode; what is accepted must be
/// a consistent table of finite numbers.
fn csv(bytes: &[u8]) {
    for header in [Header::Auto, Header::Present, Header::Absent] {
        match parse_numeric_csv(Path::new("fuzz.csv"), bytes, header) {
            Ok(t) => {
                assert_eq!(t.values.len(), t.rows * t.columns);
                assert!(t.values.iter().all(|v| v.is_finite()));
                if let Some(names) = &t.header {
                    assert_eq!(names.len(), t.columns);
                }
                if header == Header::Absent {
                    assert!(t.header.is_none());
                }
            }
            Err(e) => assert!(!e.to_string().is_empty()),
        }
    }
}

/// A valid CSV of `rows` rows of the given numbers, with a header when asked.
fn valid_csv(values: &[f32], columns: usize, header: bool) -> Vec<u8> {
    let mut text = String::new();
    if header {
        let names: Vec<String> = (0..columns).map(|c| format!("\"feature, {c}\"")).collect();
        text.push_str(&names.join(","));
        text.push_str("\r\n");
    }
    for row in values.chunks(columns) {
        let cells: Vec<String> = row.iter().map(|v| v.to_string()).collect();
        text.push_str(&cells.join(", "));
        text.push('\n');
    }
    text.into_bytes()
}

#[test]
fn the_csv_parser_never_panics() {
    let mut total = 0;
    let arbitrary = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..1024),
        "[0-9eE.,+\\- \"a-z\r\n\t]{0,300}".prop_map(String::into_bytes),
    ];
    total += run_cases("csv parser, arbitrary bytes", 5000, arbitrary, |bytes| {
        csv(&bytes)
    });

    let table = (1usize..6, 0usize..20, any::<bool>()).prop_flat_map(|(columns, rows, header)| {
        (
            prop::collection::vec(-1e6f32..1e6, columns * rows),
            Just(columns),
            Just(header),
        )
    });
    total += run_cases(
        "csv parser, valid files",
        1000,
        table.clone(),
        |(values, columns, header)| {
            let mode = if header {
                Header::Present
            } else {
                Header::Absent
            };
            let t = parse_numeric_csv(
                Path::new("ok.csv"),
                &valid_csv(&values, columns, header),
                mode,
            )
            .unwrap();
            assert_eq!(t.values, values);
            assert_eq!(t.header.is_some(), header);
        },
    );
    total += run_cases(
        "csv parser, damaged valid files",
        5000,
        (table, byte_edits()),
        |((values, columns, header), edits)| {
            csv(&apply_byte_edits(
                valid_csv(&values, columns, header),
                &edits,
            ));
        },
    );
    eprintln!("csv parser: {total} cases in all, none panicked");
    assert_eq!(total, 11_000);
}
