//! Raw categorical values (strings or unsigned integers) to the IDs a model's
//! embedding tables are indexed by, one [`FieldEncoder`] per field, in one of two
//! ways:
//!
//! - a [`Vocabulary`] built on training data: ID 0 is the out-of-vocabulary bucket
//!   (values never seen, or seen fewer than the minimum count), the kept values get
//!   IDs 1, 2, … by **descending count**, ties broken by value: integers before
//!   strings, integers ascending, strings by their UTF-8 bytes ascending. The IDs do
//!   not depend on the order of the training rows. The table needs
//!   [`Vocabulary::size`] = kept values + 1 rows;
//! - a stable hash into a fixed number of buckets ([`FieldEncoder::Hash`]): the ID of a
//!   value is `fnv1a64(bytes) mod buckets`, with
//!   - `fnv1a64`: FNV-1a, 64 bits: `h = 0xcbf29ce484222325`, then for each byte `b`,
//!     `h = (h XOR b) · 0x100000001b3 mod 2^64`;
//!   - `bytes`: a string's UTF-8 bytes, or an integer's 8 little-endian bytes (so
//!     the integer 0x6867666564636261 hashes as the string `"abcdefgh"`).
//!
//!   Nothing is learnt and nothing is out of vocabulary; different values may share
//!   a bucket.
//!
//! [`Encoders`] holds the encoders of a model's fields by name; a checkpoint saves
//! them (see `docs/checkpoint.md`), so that raw rows at prediction time get the IDs
//! training used.
//!
//! ```
//! use mmoe_wgpu::data::categorical::{Encoders, FieldEncoder, VocabularyBuilder};
//!
//! # fn main() -> mmoe_wgpu::Result<()> {
//! let mut countries = VocabularyBuilder::new();
//! countries.add_all(["fr", "us", "fr", "de", "fr", "us"]);
//! let vocabulary = countries.build(2); // "de" is seen once: out of vocabulary
//! assert_eq!(vocabulary.size(), 3);
//!
//! let mut encoders = Encoders::new();
//! encoders.insert("country", FieldEncoder::Vocabulary(vocabulary));
//! encoders.insert("user", FieldEncoder::Hash { buckets: 1000 });
//! assert_eq!(encoders.ids("country", ["fr", "us", "de", "jp"])?, [1, 2, 0, 0]);
//! // FNV-1a 64 of the bytes 2a 00 00 00 00 00 00 00 is 0xff3add6b3789daef: 255 mod 1000.
//! assert_eq!(encoders.ids("user", [42u64])?, [255]);
//! # Ok(())
//! # }
//! ```

use std::collections::{BTreeMap, HashMap};

use crate::{Error, Result};

/// A raw categorical value, borrowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RawValue<'a> {
    /// A string, e.g. a country code or a URL.
    Str(&'a str),
    /// An unsigned integer, e.g. a user number.
    Int(u64),
}

impl<'a> From<&'a str> for RawValue<'a> {
    fn from(value: &'a str) -> Self {
        RawValue::Str(value)
    }
}

impl<'a> From<&'a String> for RawValue<'a> {
    fn from(value: &'a String) -> Self {
        RawValue::Str(value)
    }
}

impl From<u64> for RawValue<'_> {
    fn from(value: u64) -> Self {
        RawValue::Int(value)
    }
}

impl From<u32> for RawValue<'_> {
    fn from(value: u32) -> Self {
        RawValue::Int(value as u64)
    }
}

impl<'a> From<&'a Category> for RawValue<'a> {
    fn from(value: &'a Category) -> Self {
        match value {
            Category::Str(s) => RawValue::Str(s),
            Category::Int(n) => RawValue::Int(*n),
        }
    }
}

/// A raw categorical value, owned: an entry of a [`Vocabulary`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Category {
    /// An integer (ordered before every string).
    Int(u64),
    /// A string.
    Str(String),
}

impl std::fmt::Display for Category {
    /// As JSON writes it: `17`, `"fr"`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Category::Int(n) => write!(f, "{n}"),
            Category::Str(s) => write!(f, "{s:?}"),
        }
    }
}

impl From<RawValue<'_>> for Category {
    fn from(value: RawValue<'_>) -> Self {
        match value {
            RawValue::Str(s) => Category::Str(s.to_string()),
            RawValue::Int(n) => Category::Int(n),
        }
    }
}

/// FNV-1a, 64 bits, of `bytes` (see the [module docs](self)).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The bucket of `value` among `buckets` (at least 1): `fnv1a64(bytes) mod buckets`.
pub fn hash_bucket<'a>(value: impl Into<RawValue<'a>>, buckets: u32) -> u32 {
    let hash = match value.into() {
        RawValue::Str(s) => fnv1a64(s.as_bytes()),
        RawValue::Int(n) => fnv1a64(&n.to_le_bytes()),
    };
    (hash % buckets.max(1) as u64) as u32
}

/// Counts the values of one field in training data, for [`build`](Self::build).
#[derive(Clone, Debug, Default)]
pub struct VocabularyBuilder {
    counts: HashMap<Category, u64>,
}

impl VocabularyBuilder {
    /// No values counted yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts one occurrence of `value`.
    pub fn add<'a>(&mut self, value: impl Into<RawValue<'a>>) {
        let value = value.into();
        // Only a value seen for the first time is copied.
        let key = match value {
            RawValue::Int(n) => Category::Int(n),
            RawValue::Str(s) => Category::Str(s.to_string()),
        };
        *self.counts.entry(key).or_insert(0) += 1;
    }

    /// Counts `count` occurrences of `value` at once: the same as `count` calls of
    /// [`add`](Self::add), for data already counted (e.g. per distinct value).
    pub fn add_count<'a>(&mut self, value: impl Into<RawValue<'a>>, count: u64) {
        if count > 0 {
            *self.counts.entry(Category::from(value.into())).or_insert(0) += count;
        }
    }

    /// Counts every value of `values`.
    pub fn add_all<'a, V: Into<RawValue<'a>>>(&mut self, values: impl IntoIterator<Item = V>) {
        for value in values {
            self.add(value);
        }
    }

    /// Occurrences of `value` counted so far.
    pub fn count<'a>(&self, value: impl Into<RawValue<'a>>) -> u64 {
        let key = Category::from(value.into());
        self.counts.get(&key).copied().unwrap_or(0)
    }

    /// The vocabulary of the values counted at least `min_count` times (at least
    /// once when 0), ordered as the [module docs](self) say.
    pub fn build(&self, min_count: u64) -> Vocabulary {
        let mut kept: Vec<(&Category, u64)> = self
            .counts
            .iter()
            .filter(|&(_, &n)| n >= min_count.max(1))
            .map(|(value, &n)| (value, n))
            .collect();
        kept.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        let values = kept.into_iter().map(|(value, _)| value.clone()).collect();
        Vocabulary::from_values(values).expect("counted values are distinct")
    }
}

/// Values to IDs: `values()[i]` has ID `i + 1`, and every other value ID 0.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Vocabulary {
    values: Vec<Category>,
    strings: HashMap<String, u32>,
    ints: HashMap<u64, u32>,
}

impl Vocabulary {
    /// The vocabulary giving `values[i]` the ID `i + 1`. Errs on a value listed twice,
    /// or on more values than 32-bit IDs (below `u32::MAX`) can number.
    pub fn from_values(values: Vec<Category>) -> Result<Vocabulary> {
        if values.len() >= u32::MAX as usize - 1 {
            return Err(Error::invalid(
                "vocabulary",
                format!("{} values do not fit 32-bit IDs", values.len()),
            ));
        }
        let mut vocabulary = Vocabulary {
            values: Vec::new(),
            strings: HashMap::with_capacity(values.len()),
            ints: HashMap::new(),
        };
        for (i, value) in values.iter().enumerate() {
            let id = i as u32 + 1;
            let fresh = match value {
                Category::Str(s) => vocabulary.strings.insert(s.clone(), id).is_none(),
                Category::Int(n) => vocabulary.ints.insert(*n, id).is_none(),
            };
            if !fresh {
                return Err(Error::invalid(
                    "vocabulary",
                    format!("{value} is listed twice (ID {id} repeats an earlier one)"),
                ));
            }
        }
        vocabulary.values = values;
        Ok(vocabulary)
    }

    /// The ID of `value`: its place in the vocabulary from 1, or 0 if it has none.
    pub fn id<'a>(&self, value: impl Into<RawValue<'a>>) -> u32 {
        match value.into() {
            RawValue::Str(s) => self.strings.get(s),
            RawValue::Int(n) => self.ints.get(&n),
        }
        .copied()
        .unwrap_or(0)
    }

    /// The values with an ID of their own, in ID order (ID 1 first).
    pub fn values(&self) -> &[Category] {
        &self.values
    }

    /// IDs it gives, the out-of-vocabulary 0 included: the rows a table needs.
    pub fn size(&self) -> usize {
        self.values.len() + 1
    }
}

/// How one field's raw values become IDs.
#[derive(Clone, Debug, PartialEq)]
pub enum FieldEncoder {
    /// A vocabulary learnt from data, 0 out of vocabulary.
    Vocabulary(Vocabulary),
    /// [`hash_bucket`] into `buckets` buckets (at least 1).
    Hash {
        /// Number of buckets: the IDs are `0 .. buckets`.
        buckets: u32,
    },
}

impl FieldEncoder {
    /// The ID of `value`.
    pub fn id<'a>(&self, value: impl Into<RawValue<'a>>) -> u32 {
        match self {
            FieldEncoder::Vocabulary(v) => v.id(value),
            FieldEncoder::Hash { buckets } => hash_bucket(value, *buckets),
        }
    }

    /// IDs it gives: they run over `0 .. size()`.
    pub fn size(&self) -> usize {
        match self {
            FieldEncoder::Vocabulary(v) => v.size(),
            FieldEncoder::Hash { buckets } => *buckets as usize,
        }
    }
}

/// The encoders of a model's fields, by field name (in name order).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Encoders {
    fields: BTreeMap<String, FieldEncoder>,
}

impl Encoders {
    /// No encoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the encoder of field `field`, replacing any it had.
    pub fn insert(&mut self, field: impl Into<String>, encoder: FieldEncoder) {
        self.fields.insert(field.into(), encoder);
    }

    /// The encoder of field `field`, if it has one.
    pub fn get(&self, field: &str) -> Option<&FieldEncoder> {
        self.fields.get(field)
    }

    /// Every field's encoder, in field-name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &FieldEncoder)> {
        self.fields.iter().map(|(name, e)| (name.as_str(), e))
    }

    /// Whether no field has an encoder.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// The IDs of `values` in field `field`; an error if the field has no encoder.
    pub fn ids<'a, V: Into<RawValue<'a>>>(
        &self,
        field: &str,
        values: impl IntoIterator<Item = V>,
    ) -> Result<Vec<u32>> {
        let encoder = self.get(field).ok_or_else(|| {
            let known: Vec<&str> = self.fields.keys().map(String::as_str).collect();
            Error::invalid(
                "categorical encoders",
                format!("no encoder for field `{field}` (encoders: {known:?})"),
            )
        })?;
        Ok(values.into_iter().map(|v| encoder.id(v)).collect())
    }
}
