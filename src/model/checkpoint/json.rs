//! A small JSON reader and writer for checkpoint metadata, so the library needs no
//! serde. Reading is strict (RFC 8259, no duplicate keys) and never panics: every
//! defect is an error saying where it is.

use std::fmt::Write as _;

/// Nesting deeper than this is refused, so hostile input cannot exhaust the stack.
const MAX_DEPTH: usize = 32;

/// A parsed JSON value. Numbers keep their text so integers and `f32` values each
/// parse exactly from it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Value {
    Null,
    Bool(bool),
    Number(String),
    String(String),
    Array(Vec<Value>),
    /// Members in file order (keys are unique).
    Object(Vec<(String, Value)>),
}

/// Parses one JSON document; the error says what is wrong and at which byte.
pub(crate) fn parse(text: &str) -> Result<Value, String> {
    let mut parser = Parser {
        bytes: text.as_bytes(),
        at: 0,
    };
    let value = parser.value(0)?;
    parser.skip_space();
    if parser.at != parser.bytes.len() {
        return Err(parser.error("trailing characters after the JSON value"));
    }
    Ok(value)
}

struct Parser<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    fn error(&self, what: &str) -> String {
        format!("{what} at byte {}", self.at)
    }

    fn skip_space(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.bytes.get(self.at) {
            self.at += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn expect(&mut self, byte: u8) -> Result<(), String> {
        if self.peek() == Some(byte) {
            self.at += 1;
            Ok(())
        } else {
            Err(self.error(&format!("expected `{}`", byte as char)))
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, String> {
        if depth > MAX_DEPTH {
            return Err(self.error(&format!("nesting deeper than {MAX_DEPTH}")));
        }
        self.skip_space();
        match self.peek() {
            Some(b'{') => self.object(depth),
            Some(b'[') => self.array(depth),
            Some(b'"') => self.string().map(Value::String),
            Some(b't') => self.literal("true", Value::Bool(true)),
            Some(b'f') => self.literal("false", Value::Bool(false)),
            Some(b'n') => self.literal("null", Value::Null),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(_) => Err(self.error("expected a JSON value")),
            None => Err(self.error("unexpected end of text")),
        }
    }

    fn literal(&mut self, word: &str, value: Value) -> Result<Value, String> {
        if self.bytes[self.at..].starts_with(word.as_bytes()) {
            self.at += word.len();
            Ok(value)
        } else {
            Err(self.error("expected `true`, `false` or `null`"))
        }
    }

    fn object(&mut self, depth: usize) -> Result<Value, String> {
        self.expect(b'{')?;
        let mut members: Vec<(String, Value)> = Vec::new();
        self.skip_space();
        if self.peek() == Some(b'}') {
            self.at += 1;
            return Ok(Value::Object(members));
        }
        loop {
            self.skip_space();
            let key = self.string()?;
            if members.iter().any(|(k, _)| *k == key) {
                return Err(self.error(&format!("duplicate key `{key}`")));
            }
            self.skip_space();
            self.expect(b':')?;
            let value = self.value(depth + 1)?;
            members.push((key, value));
            self.skip_space();
            match self.peek() {
                Some(b',') => self.at += 1,
                Some(b'}') => {
                    self.at += 1;
                    return Ok(Value::Object(members));
                }
                _ => return Err(self.error("expected `,` or `}` in an object")),
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<Value, String> {
        self.expect(b'[')?;
        let mut items = Vec::new();
        self.skip_space();
        if self.peek() == Some(b']') {
            self.at += 1;
            return Ok(Value::Array(items));
        }
        loop {
            items.push(self.value(depth + 1)?);
            self.skip_space();
            match self.peek() {
                Some(b',') => self.at += 1,
                Some(b']') => {
                    self.at += 1;
                    return Ok(Value::Array(items));
                }
                _ => return Err(self.error("expected `,` or `]` in an array")),
            }
        }
    }

    fn number(&mut self) -> Result<Value, String> {
        let start = self.at;
        let digits = |p: &mut Self| {
            let from = p.at;
            while let Some(b'0'..=b'9') = p.peek() {
                p.at += 1;
            }
            p.at - from
        };
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        match self.peek() {
            Some(b'0') => self.at += 1,
            Some(b'1'..=b'9') => {
                digits(self);
            }
            _ => return Err(self.error("expected a digit")),
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            if digits(self) == 0 {
                return Err(self.error("expected a digit after `.`"));
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.at += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.at += 1;
            }
            if digits(self) == 0 {
                return Err(self.error("expected a digit in the exponent"));
            }
        }
        // Only ASCII was consumed, so this slice is on character boundaries.
        let text = String::from_utf8_lossy(&self.bytes[start..self.at]).into_owned();
        Ok(Value::Number(text))
    }

    fn string(&mut self) -> Result<String, String> {
        self.expect(b'"')?;
        let mut out = Vec::new();
        loop {
            let Some(byte) = self.peek() else {
                return Err(self.error("unterminated string"));
            };
            self.at += 1;
            match byte {
                b'"' => break,
                b'\\' => {
                    let escape = self
                        .peek()
                        .ok_or_else(|| self.error("unterminated escape"))?;
                    self.at += 1;
                    let c = match escape {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => self.unicode_escape()?,
                        _ => return Err(self.error("invalid escape")),
                    };
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
                0..0x20 => return Err(self.error("control character in a string")),
                _ => out.push(byte),
            }
        }
        String::from_utf8(out).map_err(|_| self.error("string is not valid UTF-8"))
    }

    fn hex4(&mut self) -> Result<u32, String> {
        let digits = self
            .bytes
            .get(self.at..self.at + 4)
            .ok_or_else(|| self.error("truncated \\u escape"))?;
        let text = std::str::from_utf8(digits).map_err(|_| self.error("bad \\u escape"))?;
        if !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(self.error("bad \\u escape"));
        }
        let code = u32::from_str_radix(text, 16).map_err(|_| self.error("bad \\u escape"))?;
        self.at += 4;
        Ok(code)
    }

    /// The character of a `\uXXXX` escape (the `\u` already read), joining a
    /// surrogate pair.
    fn unicode_escape(&mut self) -> Result<char, String> {
        let high = self.hex4()?;
        let code = if (0xD800..0xDC00).contains(&high) {
            if !self.bytes[self.at..].starts_with(b"\\u") {
                return Err(self.error("lone high surrogate in \\u escape"));
            }
            self.at += 2;
            let low = self.hex4()?;
            if !(0xDC00..0xE000).contains(&low) {
                return Err(self.error("high surrogate not followed by a low one"));
            }
            0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00)
        } else {
            high
        };
        char::from_u32(code).ok_or_else(|| self.error("\\u escape is not a character"))
    }
}

/// `text` as a JSON string literal.
pub(crate) fn string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A finite `f32` as the shortest JSON number that parses back to the same bits.
pub(crate) fn number_f32(value: f32) -> Result<String, String> {
    if value.is_finite() {
        // `{:?}` is the shortest round-trip form and is valid JSON for finite values
        // (`1.0`, `1e-8`, `-0.0`).
        Ok(format!("{value:?}"))
    } else {
        Err(format!("{value} has no JSON form"))
    }
}

impl Value {
    /// The members of an object; `what` names it in the error.
    pub(crate) fn members(&self, what: &str) -> Result<&[(String, Value)], String> {
        match self {
            Value::Object(members) => Ok(members),
            _ => Err(format!("`{what}` must be an object")),
        }
    }

    pub(crate) fn items(&self, what: &str) -> Result<&[Value], String> {
        match self {
            Value::Array(items) => Ok(items),
            _ => Err(format!("`{what}` must be an array")),
        }
    }

    pub(crate) fn text(&self, what: &str) -> Result<&str, String> {
        match self {
            Value::String(s) => Ok(s),
            _ => Err(format!("`{what}` must be a string")),
        }
    }

    pub(crate) fn boolean(&self, what: &str) -> Result<bool, String> {
        match self {
            Value::Bool(b) => Ok(*b),
            _ => Err(format!("`{what}` must be true or false")),
        }
    }

    /// A non-negative integer without fraction or exponent.
    pub(crate) fn integer(&self, what: &str) -> Result<u64, String> {
        match self {
            Value::Number(n) => n
                .parse::<u64>()
                .map_err(|_| format!("`{what}` must be a whole number in 0..=2^64-1, got {n}")),
            _ => Err(format!("`{what}` must be a number")),
        }
    }

    /// An integer that fits `usize`.
    pub(crate) fn size(&self, what: &str) -> Result<usize, String> {
        let n = self.integer(what)?;
        usize::try_from(n).map_err(|_| format!("`{what}` is {n}, too large for this machine"))
    }

    /// A finite `f32`, parsed from the number's text with correct rounding.
    pub(crate) fn float(&self, what: &str) -> Result<f32, String> {
        match self {
            Value::Number(n) => match n.parse::<f32>() {
                Ok(v) if v.is_finite() => Ok(v),
                _ => Err(format!("`{what}` is {n}, not a finite 32-bit float")),
            },
            _ => Err(format!("`{what}` must be a number")),
        }
    }
}

/// Reads the members of one JSON object by name, refusing missing, unknown and (by
/// the parser) duplicate keys, so a misspelt field is never silently ignored.
pub(crate) struct Fields<'a> {
    what: String,
    members: &'a [(String, Value)],
    used: Vec<bool>,
}

impl<'a> Fields<'a> {
    pub(crate) fn new(value: &'a Value, what: &str) -> Result<Self, String> {
        let members = value.members(what)?;
        Ok(Fields {
            what: what.to_string(),
            members,
            used: vec![false; members.len()],
        })
    }

    /// The dotted path of field `key`, for error messages.
    pub(crate) fn path(&self, key: &str) -> String {
        format!("{}.{key}", self.what)
    }

    pub(crate) fn get(&mut self, key: &str) -> Result<&'a Value, String> {
        let members = self.members;
        match members.iter().position(|(k, _)| k == key) {
            Some(i) => {
                self.used[i] = true;
                Ok(&members[i].1)
            }
            None => Err(format!("`{}` is missing", self.path(key))),
        }
    }

    /// The member `key`, if there is one.
    pub(crate) fn optional(&mut self, key: &str) -> Option<&'a Value> {
        self.get(key).ok()
    }

    /// Errs naming the first member no `get` asked for.
    pub(crate) fn finish(self) -> Result<(), String> {
        match self.used.iter().position(|used| !used) {
            Some(i) => Err(format!("unknown field `{}`", self.path(&self.members[i].0))),
            None => Ok(()),
        }
    }
}
