//! Strategies shared by the property tests of the parsers and the checkpoint
//! loader: byte-level damage to a valid file, and edits of a JSON document.

use std::cell::Cell;

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Map, Value};

/// Runs `check` on `cases` inputs drawn from `strategy`; returns how many ran. A
/// panic inside `check` fails the test with the (shrunk) input that caused it.
pub fn run_cases<S: Strategy>(
    name: &str,
    cases: u32,
    strategy: S,
    check: impl Fn(S::Value),
) -> usize
where
    S::Value: std::fmt::Debug,
{
    let ran = Cell::new(0usize);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&strategy, |input| {
        ran.set(ran.get() + 1);
        check(input);
        Ok(())
    });
    if let Err(e) = result {
        panic!("{name}: {e}");
    }
    eprintln!("{name}: {} cases, no panic", ran.get());
    ran.get()
}

/// One change to a byte string; positions are taken modulo its length.
#[derive(Clone, Debug)]
pub enum ByteEdit {
    /// XOR one byte with a non-zero mask.
    Flip(Index, u8),
    /// Overwrite one byte.
    Set(Index, u8),
    /// Cut the bytes off at a position.
    Truncate(Index),
    /// Remove up to 16 bytes at a position.
    Delete(Index, u8),
    /// Insert bytes at a position.
    Insert(Index, Vec<u8>),
    /// Copy a run of the bytes to another position (duplicated structure).
    Duplicate(Index, Index, u8),
}

pub fn byte_edits() -> impl Strategy<Value = Vec<ByteEdit>> {
    let edit = prop_oneof![
        4 => (any::<Index>(), 1u8..=255).prop_map(|(i, m)| ByteEdit::Flip(i, m)),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| ByteEdit::Set(i, b)),
        1 => any::<Index>().prop_map(ByteEdit::Truncate),
        1 => (any::<Index>(), 1u8..16).prop_map(|(i, n)| ByteEdit::Delete(i, n)),
        1 => (any::<Index>(), prop::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(i, b)| ByteEdit::Insert(i, b)),
        1 => (any::<Index>(), any::<Index>(), 1u8..64)
            .prop_map(|(a, b, n)| ByteEdit::Duplicate(a, b, n)),
    ];
    prop::collection::vec(edit, 1..6)
}

pub fn apply_byte_edits(mut bytes: Vec<u8>, edits: &[ByteEdit]) -> Vec<u8> {
    for edit in edits {
        if bytes.is_empty() {
            break;
        }
        let len = bytes.len();
        match edit {
            ByteEdit::Flip(i, m) => bytes[i.index(len)] ^= m,
            ByteEdit::Set(i, b) => bytes[i.index(len)] = *b,
            ByteEdit::Truncate(i) => bytes.truncate(i.index(len)),
            ByteEdit::Delete(i, n) => {
                let at = i.index(len);
                bytes.drain(at..(at + *n as usize).min(len));
            }
            ByteEdit::Insert(i, b) => {
                let at = i.index(len + 1);
                bytes.splice(at..at, b.iter().copied());
            }
            ByteEdit::Duplicate(from, to, n) => {
                let start = from.index(len);
                let run = bytes[start..(start + *n as usize).min(len)].to_vec();
                let at = to.index(len + 1);
                bytes.splice(at..at, run);
            }
        }
    }
    bytes
}

/// JSON values that look like what the documents hold (small counts, kind names)
/// as well as what they must refuse (huge and negative numbers, fractions, wrong
/// types, nesting).
pub fn json_value() -> impl Strategy<Value = Value> {
    const WORDS: [&str; 12] = [
        "mmoe",
        "omoe",
        "shared_bottom",
        "adam",
        "adamw",
        "sgd",
        "regression",
        "binary_classification",
        "F32",
        "F16",
        "I64",
        "mmoe-wgpu checkpoint",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (0u64..10).prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        prop_oneof![any::<f64>(), -2.0f64..2.0]
            .prop_filter_map("finite", |f| serde_json::Number::from_f64(f)
                .map(Value::Number)),
        "[a-z_.0-9]{0,10}".prop_map(Value::String),
        prop::sample::select(&WORDS[..]).prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec(("[a-z_]{1,8}", inner), 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// One change to a JSON document, at a node chosen among all of its nodes.
#[derive(Clone, Debug)]
pub enum JsonEdit {
    /// Replace the node with a value.
    Replace(Index, Value),
    /// Remove the node from its object or array.
    Remove(Index),
    /// Add a member to an object node (or an item to an array node).
    Add(Index, String, Value),
}

pub fn json_edits() -> impl Strategy<Value = Vec<JsonEdit>> {
    let edit = prop_oneof![
        4 => (any::<Index>(), json_value()).prop_map(|(i, v)| JsonEdit::Replace(i, v)),
        1 => any::<Index>().prop_map(JsonEdit::Remove),
        1 => (any::<Index>(), "[a-z_]{1,8}", json_value())
            .prop_map(|(i, k, v)| JsonEdit::Add(i, k, v)),
    ];
    prop::collection::vec(edit, 1..4)
}

/// The path (child indices from the root) of every node of `value`, pre-order.
fn paths(value: &Value, prefix: &mut Vec<usize>, out: &mut Vec<Vec<usize>>) {
    out.push(prefix.clone());
    let children: Vec<&Value> = match value {
        Value::Array(items) => items.iter().collect(),
        Value::Object(members) => members.values().collect(),
        _ => Vec::new(),
    };
    for (i, child) in children.into_iter().enumerate() {
        prefix.push(i);
        paths(child, prefix, out);
        prefix.pop();
    }
}

fn child_mut(node: &mut Value, i: usize) -> &mut Value {
    match node {
        Value::Array(items) => &mut items[i],
        Value::Object(members) => members.values_mut().nth(i).expect("child index in range"),
        _ => unreachable!("only arrays and objects have children"),
    }
}

fn node_mut<'a>(root: &'a mut Value, path: &[usize]) -> &'a mut Value {
    path.iter().fold(root, |node, &i| child_mut(node, i))
}

pub fn apply_json_edits(mut doc: Value, edits: &[JsonEdit]) -> Value {
    for edit in edits {
        let mut all = Vec::new();
        paths(&doc, &mut Vec::new(), &mut all);
        let (JsonEdit::Replace(i, _) | JsonEdit::Remove(i) | JsonEdit::Add(i, ..)) = edit;
        let path = &all[i.index(all.len())];
        match edit {
            JsonEdit::Replace(_, v) => *node_mut(&mut doc, path) = v.clone(),
            JsonEdit::Remove(_) => match path.split_last() {
                None => doc = Value::Null,
                Some((&last, parent)) => match node_mut(&mut doc, parent) {
                    Value::Array(items) => {
                        items.remove(last);
                    }
                    Value::Object(members) => {
                        let key = members.keys().nth(last).cloned().unwrap_or_default();
                        members.remove(&key);
                    }
                    _ => unreachable!("only arrays and objects have children"),
                },
            },
            JsonEdit::Add(_, k, v) => match node_mut(&mut doc, path) {
                Value::Object(members) => {
                    members.insert(k.clone(), v.clone());
                }
                Value::Array(items) => items.push(v.clone()),
                _ => {}
            },
        }
    }
    doc
}
