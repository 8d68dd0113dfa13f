//! A small MessagePack codec: the value model Packer's net/rpc layer uses.
//!
//! Packer encodes RPC headers and bodies with `ugorji/go/codec`'s
//! `MsgpackHandle{WriteExt: true}`: new-spec msgpack, Go strings as `str`,
//! `[]byte` as `bin`, structs as maps keyed by Go field names. This module
//! decodes every msgpack format (so whatever Go sends parses) and encodes the
//! minimal form of each value.
//!
//! Decoding reads from any [`Read`] one value at a time (net/rpc sends two values
//! per message with no length prefix) and enforces [`Limits`] so a hostile or
//! corrupt peer cannot make us allocate without bound or recurse deeply.

use std::io::{self, Read, Write};

/// A decoded msgpack value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Nil,
    Bool(bool),
    /// Any negative integer, or a value sent in a signed format.
    Int(i64),
    /// A value sent in an unsigned format (including positive fixint).
    Uint(u64),
    Float(f64),
    /// `str`; invalid UTF-8 is replaced (Go strings are arbitrary bytes).
    Str(String),
    Bin(Vec<u8>),
    Array(Vec<Value>),
    /// Key/value pairs in wire order.
    Map(Vec<(Value, Value)>),
    Ext(i8, Vec<u8>),
}

impl Value {
    /// Build a map keyed by strings (how Go structs travel).
    pub fn map<K: Into<String>>(pairs: impl IntoIterator<Item = (K, Value)>) -> Value {
        Value::Map(
            pairs
                .into_iter()
                .map(|(k, v)| (Value::Str(k.into()), v))
                .collect(),
        )
    }

    pub fn str(s: impl Into<String>) -> Value {
        Value::Str(s.into())
    }

    /// Look a string key up in a map value.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Map(pairs) => pairs
                .iter()
                .find(|(k, _)| matches!(k, Value::Str(s) if s == key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// Integers of either signedness that fit in u64.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::Uint(u) => Some(u),
            Value::Int(i) => u64::try_from(i).ok(),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::Int(i) => Some(i),
            Value::Uint(u) => i64::try_from(u).ok(),
            _ => None,
        }
    }

    pub fn is_nil(&self) -> bool {
        matches!(self, Value::Nil)
    }

    /// Convert to JSON (for config decoding). Bin becomes a string if it is UTF-8.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            Value::Nil => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            Value::Uint(u) => J::from(*u),
            Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
            Value::Str(s) => J::String(s.clone()),
            Value::Bin(b) => J::String(String::from_utf8_lossy(b).into_owned()),
            Value::Array(items) => J::Array(items.iter().map(Value::to_json).collect()),
            Value::Map(pairs) => J::Object(
                pairs
                    .iter()
                    .map(|(k, v)| {
                        let key = match k {
                            Value::Str(s) => s.clone(),
                            other => other.to_json().to_string(),
                        };
                        (key, v.to_json())
                    })
                    .collect(),
            ),
            Value::Ext(_, _) => J::Null,
        }
    }
}

/// Bounds enforced while decoding.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest `str`/`bin`/`ext` payload accepted.
    pub max_bytes: usize,
    /// Most elements in one array or map.
    pub max_items: usize,
    /// Deepest nesting of arrays/maps.
    pub max_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 64 << 20,
            max_items: 1 << 20,
            max_depth: 64,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("msgpack: i/o error: {0}")]
    Io(#[from] io::Error),
    #[error("msgpack: reserved marker byte 0xc1")]
    Reserved,
    #[error("msgpack: {what} length {len} exceeds the limit {limit}")]
    TooLong {
        what: &'static str,
        len: usize,
        limit: usize,
    },
    #[error("msgpack: nesting deeper than {0}")]
    TooDeep(usize),
}

impl DecodeError {
    /// True when the stream ended cleanly before the first byte of a value.
    pub fn is_clean_eof(&self) -> bool {
        matches!(self, DecodeError::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof)
    }
}

/// Decode exactly one value from `r` with default limits.
pub fn read_value<R: Read>(r: &mut R) -> Result<Value, DecodeError> {
    read_value_with(r, Limits::default())
}

/// Decode exactly one value from `r`.
pub fn read_value_with<R: Read>(r: &mut R, limits: Limits) -> Result<Value, DecodeError> {
    read_depth(r, &limits, 0)
}

/// Decode one value from the front of `buf`, returning it and the rest.
pub fn decode_slice(buf: &[u8]) -> Result<(Value, &[u8]), DecodeError> {
    let mut rest = buf;
    let v = read_value(&mut rest)?;
    Ok((v, rest))
}

fn read_n<const N: usize, R: Read>(r: &mut R) -> io::Result<[u8; N]> {
    let mut b = [0u8; N];
    r.read_exact(&mut b)?;
    Ok(b)
}

fn read_bytes<R: Read>(
    r: &mut R,
    len: usize,
    what: &'static str,
    limits: &Limits,
) -> Result<Vec<u8>, DecodeError> {
    if len > limits.max_bytes {
        return Err(DecodeError::TooLong {
            what,
            len,
            limit: limits.max_bytes,
        });
    }
    // Never trust the length for the allocation: read through `take`.
    let mut out = Vec::with_capacity(len.min(4096));
    r.take(len as u64).read_to_end(&mut out)?;
    if out.len() != len {
        return Err(
            io::Error::new(io::ErrorKind::UnexpectedEof, "truncated msgpack payload").into(),
        );
    }
    Ok(out)
}

fn count(len: usize, what: &'static str, limits: &Limits) -> Result<usize, DecodeError> {
    if len > limits.max_items {
        return Err(DecodeError::TooLong {
            what,
            len,
            limit: limits.max_items,
        });
    }
    Ok(len)
}

fn read_depth<R: Read>(r: &mut R, limits: &Limits, depth: usize) -> Result<Value, DecodeError> {
    if depth > limits.max_depth {
        return Err(DecodeError::TooDeep(limits.max_depth));
    }
    let [m] = read_n::<1, _>(r)?;
    let v = match m {
        0x00..=0x7f => Value::Uint(u64::from(m)),
        0x80..=0x8f => read_map(r, usize::from(m & 0x0f), limits, depth)?,
        0x90..=0x9f => read_array(r, usize::from(m & 0x0f), limits, depth)?,
        0xa0..=0xbf => read_str(r, usize::from(m & 0x1f), limits)?,
        0xc0 => Value::Nil,
        0xc1 => return Err(DecodeError::Reserved),
        0xc2 => Value::Bool(false),
        0xc3 => Value::Bool(true),
        0xc4 => {
            let len = usize::from(read_n::<1, _>(r)?[0]);
            Value::Bin(read_bytes(r, len, "bin", limits)?)
        }
        0xc5 => {
            let len = usize::from(u16::from_be_bytes(read_n(r)?));
            Value::Bin(read_bytes(r, len, "bin", limits)?)
        }
        0xc6 => {
            let len = u32::from_be_bytes(read_n(r)?) as usize;
            Value::Bin(read_bytes(r, len, "bin", limits)?)
        }
        0xc7 => {
            let len = usize::from(read_n::<1, _>(r)?[0]);
            read_ext(r, len, limits)?
        }
        0xc8 => {
            let len = usize::from(u16::from_be_bytes(read_n(r)?));
            read_ext(r, len, limits)?
        }
        0xc9 => {
            let len = u32::from_be_bytes(read_n(r)?) as usize;
            read_ext(r, len, limits)?
        }
        0xca => Value::Float(f64::from(f32::from_be_bytes(read_n(r)?))),
        0xcb => Value::Float(f64::from_be_bytes(read_n(r)?)),
        0xcc => Value::Uint(u64::from(read_n::<1, _>(r)?[0])),
        0xcd => Value::Uint(u64::from(u16::from_be_bytes(read_n(r)?))),
        0xce => Value::Uint(u64::from(u32::from_be_bytes(read_n(r)?))),
        0xcf => Value::Uint(u64::from_be_bytes(read_n(r)?)),
        0xd0 => Value::Int(i64::from(i8::from_be_bytes(read_n(r)?))),
        0xd1 => Value::Int(i64::from(i16::from_be_bytes(read_n(r)?))),
        0xd2 => Value::Int(i64::from(i32::from_be_bytes(read_n(r)?))),
        0xd3 => Value::Int(i64::from_be_bytes(read_n(r)?)),
        0xd4 => read_ext(r, 1, limits)?,
        0xd5 => read_ext(r, 2, limits)?,
        0xd6 => read_ext(r, 4, limits)?,
        0xd7 => read_ext(r, 8, limits)?,
        0xd8 => read_ext(r, 16, limits)?,
        0xd9 => {
            let len = usize::from(read_n::<1, _>(r)?[0]);
            read_str(r, len, limits)?
        }
        0xda => {
            let len = usize::from(u16::from_be_bytes(read_n(r)?));
            read_str(r, len, limits)?
        }
        0xdb => {
            let len = u32::from_be_bytes(read_n(r)?) as usize;
            read_str(r, len, limits)?
        }
        0xdc => {
            let len = usize::from(u16::from_be_bytes(read_n(r)?));
            read_array(r, len, limits, depth)?
        }
        0xdd => {
            let len = u32::from_be_bytes(read_n(r)?) as usize;
            read_array(r, len, limits, depth)?
        }
        0xde => {
            let len = usize::from(u16::from_be_bytes(read_n(r)?));
            read_map(r, len, limits, depth)?
        }
        0xdf => {
            let len = u32::from_be_bytes(read_n(r)?) as usize;
            read_map(r, len, limits, depth)?
        }
        0xe0..=0xff => Value::Int(i64::from(m as i8)),
    };
    Ok(v)
}

fn read_str<R: Read>(r: &mut R, len: usize, limits: &Limits) -> Result<Value, DecodeError> {
    let bytes = read_bytes(r, len, "str", limits)?;
    Ok(Value::Str(match String::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    }))
}

fn read_ext<R: Read>(r: &mut R, len: usize, limits: &Limits) -> Result<Value, DecodeError> {
    let [t] = read_n::<1, _>(r)?;
    let data = read_bytes(r, len, "ext", limits)?;
    Ok(Value::Ext(t as i8, data))
}

fn read_array<R: Read>(
    r: &mut R,
    len: usize,
    limits: &Limits,
    depth: usize,
) -> Result<Value, DecodeError> {
    let len = count(len, "array", limits)?;
    let mut items = Vec::with_capacity(len.min(1024));
    for _ in 0..len {
        items.push(read_depth(r, limits, depth + 1)?);
    }
    Ok(Value::Array(items))
}

fn read_map<R: Read>(
    r: &mut R,
    len: usize,
    limits: &Limits,
    depth: usize,
) -> Result<Value, DecodeError> {
    let len = count(len, "map", limits)?;
    let mut pairs = Vec::with_capacity(len.min(1024));
    for _ in 0..len {
        let k = read_depth(r, limits, depth + 1)?;
        let v = read_depth(r, limits, depth + 1)?;
        pairs.push((k, v));
    }
    Ok(Value::Map(pairs))
}

/// Encode `v` (minimal formats) and append it to `out`.
pub fn encode(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Nil => out.push(0xc0),
        Value::Bool(false) => out.push(0xc2),
        Value::Bool(true) => out.push(0xc3),
        Value::Uint(u) => encode_uint(*u, out),
        Value::Int(i) => {
            if *i >= 0 {
                encode_uint(i.unsigned_abs(), out);
            } else if *i >= -32 {
                out.push(*i as i8 as u8);
            } else if *i >= i64::from(i8::MIN) {
                out.push(0xd0);
                out.push(*i as i8 as u8);
            } else if *i >= i64::from(i16::MIN) {
                out.push(0xd1);
                out.extend_from_slice(&(*i as i16).to_be_bytes());
            } else if *i >= i64::from(i32::MIN) {
                out.push(0xd2);
                out.extend_from_slice(&(*i as i32).to_be_bytes());
            } else {
                out.push(0xd3);
                out.extend_from_slice(&i.to_be_bytes());
            }
        }
        Value::Float(f) => {
            out.push(0xcb);
            out.extend_from_slice(&f.to_be_bytes());
        }
        Value::Str(s) => {
            let len = s.len();
            if len < 32 {
                out.push(0xa0 | len as u8);
            } else {
                len_prefix(len, [0xd9, 0xda, 0xdb], out);
            }
            out.extend_from_slice(s.as_bytes());
        }
        Value::Bin(b) => {
            len_prefix(b.len(), [0xc4, 0xc5, 0xc6], out);
            out.extend_from_slice(b);
        }
        Value::Array(items) => {
            if items.len() < 16 {
                out.push(0x90 | items.len() as u8);
            } else {
                len_prefix16(items.len(), [0xdc, 0xdd], out);
            }
            for item in items {
                encode(item, out);
            }
        }
        Value::Map(pairs) => {
            if pairs.len() < 16 {
                out.push(0x80 | pairs.len() as u8);
            } else {
                len_prefix16(pairs.len(), [0xde, 0xdf], out);
            }
            for (k, v) in pairs {
                encode(k, out);
                encode(v, out);
            }
        }
        Value::Ext(t, data) => {
            match data.len() {
                1 => out.push(0xd4),
                2 => out.push(0xd5),
                4 => out.push(0xd6),
                8 => out.push(0xd7),
                16 => out.push(0xd8),
                n => len_prefix(n, [0xc7, 0xc8, 0xc9], out),
            }
            out.push(*t as u8);
            out.extend_from_slice(data);
        }
    }
}

/// Encode `v` into a fresh buffer.
pub fn to_vec(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    encode(v, &mut out);
    out
}

/// Encode and write `v`.
pub fn write_value<W: Write>(w: &mut W, v: &Value) -> io::Result<()> {
    w.write_all(&to_vec(v))
}

fn encode_uint(u: u64, out: &mut Vec<u8>) {
    if u < 0x80 {
        out.push(u as u8);
    } else if u <= u64::from(u8::MAX) {
        out.push(0xcc);
        out.push(u as u8);
    } else if u <= u64::from(u16::MAX) {
        out.push(0xcd);
        out.extend_from_slice(&(u as u16).to_be_bytes());
    } else if u <= u64::from(u32::MAX) {
        out.push(0xce);
        out.extend_from_slice(&(u as u32).to_be_bytes());
    } else {
        out.push(0xcf);
        out.extend_from_slice(&u.to_be_bytes());
    }
}

fn len_prefix(len: usize, markers: [u8; 3], out: &mut Vec<u8>) {
    if len <= usize::from(u8::MAX) {
        out.push(markers[0]);
        out.push(len as u8);
    } else if len <= usize::from(u16::MAX) {
        out.push(markers[1]);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(markers[2]);
        out.extend_from_slice(&(len as u32).to_be_bytes());
    }
}

fn len_prefix16(len: usize, markers: [u8; 2], out: &mut Vec<u8>) {
    if len <= usize::from(u16::MAX) {
        out.push(markers[0]);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(markers[1]);
        out.extend_from_slice(&(len as u32).to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn encodes_minimal_forms() {
        assert_eq!(to_vec(&Value::Uint(5)), [0x05]);
        assert_eq!(to_vec(&Value::Uint(200)), [0xcc, 200]);
        assert_eq!(to_vec(&Value::Int(-1)), [0xff]);
        assert_eq!(to_vec(&Value::Int(-33)), [0xd0, 0xdf]);
        assert_eq!(to_vec(&Value::Int(300)), [0xcd, 0x01, 0x2c]);
        assert_eq!(to_vec(&Value::str("Seq")), hex("a3536571"));
        assert_eq!(to_vec(&Value::Bin(vec![1, 2])), hex("c4020102"));
        assert_eq!(to_vec(&Value::Map(vec![])), [0x80]);
        let long = "x".repeat(40);
        assert_eq!(&to_vec(&Value::str(long.clone()))[..2], [0xd9, 40]);
    }

    #[test]
    fn decodes_every_integer_width() {
        for (bytes, want) in [
            ("7f", Value::Uint(127)),
            ("cc80", Value::Uint(128)),
            ("cd0100", Value::Uint(256)),
            ("ce00010000", Value::Uint(65536)),
            ("cf0000000100000000", Value::Uint(1 << 32)),
            ("e0", Value::Int(-32)),
            ("d0df", Value::Int(-33)),
            ("d1ff00", Value::Int(-256)),
            ("d2ffff0000", Value::Int(-65536)),
            ("d3ffffffffffffffff", Value::Int(-1)),
            ("ca3f800000", Value::Float(1.0)),
        ] {
            let buf = hex(bytes);
            let (v, rest) = decode_slice(&buf).unwrap();
            assert_eq!(v, want, "{bytes}");
            assert!(rest.is_empty());
        }
    }

    #[test]
    fn round_trips_nested_values() {
        let v = Value::map([
            ("ServiceMethod", Value::str("Provisioner.Prepare")),
            ("Seq", Value::Uint(7)),
            (
                "Configs",
                Value::Array(vec![
                    Value::Nil,
                    Value::Bool(true),
                    Value::Float(1.5),
                    Value::Bin(vec![0; 300]),
                    Value::Ext(3, vec![1, 2, 3]),
                    Value::Ext(-1, vec![1; 8]),
                ]),
            ),
        ]);
        let bytes = to_vec(&v);
        let (back, rest) = decode_slice(&bytes).unwrap();
        assert_eq!(back, v);
        assert!(rest.is_empty());
    }

    #[test]
    fn rejects_lengths_over_the_limit_without_allocating() {
        // bin32 claiming 4 GiB, followed by nothing.
        let err = decode_slice(&hex("c6ffffffff")).unwrap_err();
        assert!(
            matches!(err, DecodeError::TooLong { what: "bin", .. }),
            "{err}"
        );
        // array32 with 4 billion items.
        let err = decode_slice(&hex("ddffffffff")).unwrap_err();
        assert!(
            matches!(err, DecodeError::TooLong { what: "array", .. }),
            "{err}"
        );
        // str8 claiming 5 bytes but carrying 2.
        let err = decode_slice(&hex("a5ab")).unwrap_err();
        assert!(matches!(err, DecodeError::Io(_)), "{err}");
    }

    #[test]
    fn rejects_deep_nesting() {
        let bytes = vec![0x91; 1000];
        let err = decode_slice(&bytes).unwrap_err();
        assert!(matches!(err, DecodeError::TooDeep(64)), "{err}");
    }

    #[test]
    fn invalid_utf8_in_str_is_replaced() {
        let (v, _) = decode_slice(&hex("a2c328")).unwrap();
        assert_eq!(v, Value::Str("\u{fffd}(".into()));
    }
}
