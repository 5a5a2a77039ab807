//! serde_json as the checkpoint format needs it: `f32` written in its shortest
//! form that reads back to the same bits and read with a single correct rounding,
//! the text byte for byte as earlier versions wrote it, and errors that say which
//! member is wrong.

use std::io;

use serde::de::{Deserializer, Error as _};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::ser::{CharEscape, CompactFormatter, Formatter};
use serde_json::value::RawValue;

/// For `deserialize_with` on an `f32` member: parses the number's own text, where
/// serde_json would round it to an `f64` first and then again to `f32`, which is
/// wrong for decimals near the midpoint of two `f32`s.
pub(super) fn exact<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f32, D::Error> {
    let text = <&RawValue>::deserialize(deserializer)?.get();
    // A JSON value that `f32::from_str` accepts is a JSON number: the other
    // spellings it takes (`inf`, `NaN`) are not JSON.
    match text.parse::<f32>() {
        Ok(value) if value.is_finite() => Ok(value),
        _ => {
            let shown: String = text.chars().take(40).collect();
            let more = if shown.len() < text.len() { "…" } else { "" };
            Err(D::Error::custom(format_args!(
                "invalid value: `{shown}{more}`, expected a finite 32-bit float"
            )))
        }
    }
}

/// [`exact`] for an `Option` member, as [`some`] is for others.
pub(super) fn some_exact<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f32>, D::Error> {
    exact(d).map(Some)
}

/// For `deserialize_with` on an `Option` member with `#[serde(default)]`: absent is
/// `None`, while `null` is refused like any other wrong value.
pub(super) fn some<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

/// Compact JSON as earlier versions wrote it by hand: `f32` by `{:?}` (the
/// shortest round-trip form; serde_json's own writer differs for magnitudes below
/// 1e-4) and control characters other than `\n`, `\r`, `\t` as `\u00XX`.
struct Compact;

impl Formatter for Compact {
    /// The description has no `null`s: serde_json writes one only for a non-finite
    /// float, which has no JSON form.
    fn write_null<W: ?Sized + io::Write>(&mut self, _: &mut W) -> io::Result<()> {
        Err(io::Error::other("a non-finite number has no JSON form"))
    }

    fn write_f32<W: ?Sized + io::Write>(&mut self, writer: &mut W, value: f32) -> io::Result<()> {
        write!(writer, "{value:?}")
    }

    fn write_char_escape<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        escape: CharEscape,
    ) -> io::Result<()> {
        let escape = match escape {
            CharEscape::Backspace => CharEscape::AsciiControl(0x08),
            CharEscape::FormFeed => CharEscape::AsciiControl(0x0c),
            other => other,
        };
        CompactFormatter.write_char_escape(writer, escape)
    }
}

/// `value` as one line of JSON; an error names the member that has no JSON form.
pub(super) fn to_string(value: &impl Serialize) -> Result<String, String> {
    let mut out = Vec::new();
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, Compact);
    serde_path_to_error::serialize(value, &mut serializer)
        .map_err(|e| at(&e.path().to_string(), e.inner()))?;
    String::from_utf8(out).map_err(|e| e.to_string())
}

/// `text` as a `T`, all of it; an error names the member at fault by its path
/// (`config.optimizer.kind`).
pub(super) fn from_str<'de, T: Deserialize<'de>>(text: &'de str) -> Result<T, String> {
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let value = serde_path_to_error::deserialize(&mut deserializer)
        .map_err(|e| at(&e.path().to_string(), e.inner()))?;
    deserializer.end().map_err(|e| e.to_string())?;
    Ok(value)
}

/// `message` prefixed by `path` unless that is the whole document (`.`).
fn at(path: &str, message: &impl std::fmt::Display) -> String {
    match path {
        "." => message.to_string(),
        _ => format!("`{path}`: {message}"),
    }
}

/// The first member in which `found` differs from `expected`, as
/// `path: expected …, found …`. Objects of the same members are compared member by
/// member; anything else, arrays included, as a whole.
pub(super) fn difference(path: &str, expected: &Value, found: &Value) -> Option<String> {
    match (expected, found) {
        (Value::Object(a), Value::Object(b)) if a.keys().eq(b.keys()) => {
            a.iter().zip(b.values()).find_map(|((key, x), y)| {
                let path = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                difference(&path, x, y)
            })
        }
        _ => (expected != found).then(|| format!("{path}: expected {expected}, found {found}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An `f32` read as the checkpoint reads one.
    #[derive(Deserialize)]
    struct Exact(#[serde(deserialize_with = "exact")] f32);

    #[test]
    fn every_finite_f32_is_written_as_before_and_reads_back_to_its_bits() {
        let edges = [
            0.0f32,
            -0.0,
            1e-8,
            1e-5,
            1e-4,
            1e16,
            3e10,
            f32::MAX,
            f32::MIN_POSITIVE,
        ];
        // A fixed SplitMix64 stream: the same million bit patterns on every run.
        let mut state = 7u64;
        let patterns = std::iter::repeat_with(move || {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let z = (state ^ (state >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            let z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            f32::from_bits((z ^ (z >> 31)) as u32)
        });
        let values = edges.into_iter().chain(patterns.take(1_000_000));
        for value in values.chain([f32::from_bits(1)]).filter(|v| v.is_finite()) {
            let text = to_string(&value).unwrap();
            assert_eq!(text, format!("{value:?}"), "the old writer's rule");
            let back: Exact = from_str(&text).unwrap();
            assert_eq!(back.0.to_bits(), value.to_bits(), "{text}");
        }
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            assert!(to_string(&bad).unwrap_err().contains("no JSON form"));
        }
    }

    #[test]
    fn f32_is_parsed_with_one_rounding() {
        // Just above the midpoint of 1 and the next f32 up: the nearest f64 is the
        // midpoint itself, which rounds to even (1) as an f32.
        let text = "1.00000005960464477539062500000000001";
        let twice = text.parse::<f64>().unwrap() as f32;
        assert_eq!(
            twice.to_bits(),
            1.0f32.to_bits(),
            "the case shows double rounding"
        );
        let once: Exact = from_str(text).unwrap();
        assert_eq!(once.0.to_bits(), 1.0f32.to_bits() + 1);
        for bad in ["1e39", "-1e39", "\"1.0\"", "null", "true", "[1]", "{}"] {
            let message = from_str::<Exact>(bad).err().unwrap();
            assert!(message.contains("finite 32-bit float"), "{bad}: {message}");
        }
    }

    #[test]
    fn control_characters_are_escaped_as_before() {
        let text = to_string(&"a\u{8}\u{c}\n\r\t\u{1}\"\\/\u{7f}é").unwrap();
        assert_eq!(text, "\"a\\u0008\\u000c\\n\\r\\t\\u0001\\\"\\\\/\u{7f}é\"");
    }

    #[test]
    fn the_difference_names_the_member_path() {
        let value = |text| serde_json::from_str::<Value>(text).unwrap();
        let a = value(r#"{"x":{"k":1,"l":[5]},"y":2}"#);
        let b = value(r#"{"x":{"k":1,"l":[4]},"y":3}"#);
        assert_eq!(
            difference("", &a, &b).unwrap(),
            "x.l: expected [5], found [4]"
        );
        assert_eq!(difference("", &a, &a), None);
        let c = value(r#"{"x":{"k":1},"y":2}"#);
        let want = r#"x: expected {"k":1,"l":[5]}, found {"k":1}"#;
        assert_eq!(difference("", &a, &c).unwrap(), want);
    }
}
