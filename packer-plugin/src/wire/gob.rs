//! The two corners of Go's `encoding/gob` that Packer still uses on the wire.
//!
//! - [`encode_object_spec`]: the HCL2 `ConfigSpec` reply, a gob stream of
//!   `hcldec.ObjectSpec` (`map[string]hcldec.Spec`) whose values are
//!   `*hcldec.AttrSpec{Name, Type cty.Type, Required}`. `cty.Type` is a
//!   GobEncoder whose bytes are a *nested* gob stream of
//!   `gobType{Version int; Impl typeImpl}`. We write all type definitions first,
//!   then one value message, at both levels (accepted by Packer 1.6.6).
//! - [`decode`]: a generic decoder for streams of type definitions plus values
//!   of struct/slice/map/basic types, enough for `CommandFinished{ExitStatus
//!   int}` and bounded so it is safe on hostile input (it is fuzzed).
//!
//! Wire basics: a uint below 128 is one byte, otherwise a byte holding the
//! negated byte count followed by the big-endian bytes; an int is zig-zagged
//! into a uint; a string is a uint length plus bytes; a message is a uint length
//! plus an int type id (negative: a type definition) plus the payload; struct
//! fields are sent as (field-number delta, value) and end with a 0 delta, and
//! zero-valued fields are omitted.

use std::collections::HashMap;

/// First type id available to user types.
const FIRST_USER_ID: i64 = 65;
const T_BOOL: i64 = 1;
const T_INT: i64 = 2;
const T_UINT: i64 = 3;
const T_FLOAT: i64 = 4;
const T_BYTES: i64 = 5;
const T_STRING: i64 = 6;
const T_COMPLEX: i64 = 7;
const T_INTERFACE: i64 = 8;

const CTY_PKG: &str = "github.com/zclconf/go-cty/cty";

// ---------------------------------------------------------------- encoding --

/// Append a gob uint.
pub fn put_uint(out: &mut Vec<u8>, u: u64) {
    if u < 128 {
        out.push(u as u8);
        return;
    }
    let bytes = u.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    let n = bytes.len() - skip;
    out.push((256 - n) as u8);
    out.extend_from_slice(&bytes[skip..]);
}

/// Append a gob int (zig-zag).
pub fn put_int(out: &mut Vec<u8>, i: i64) {
    let u = if i < 0 {
        ((!i as u64) << 1) | 1
    } else {
        (i as u64) << 1
    };
    put_uint(out, u);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_uint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

fn put_message(out: &mut Vec<u8>, body: &[u8]) {
    put_uint(out, body.len() as u64);
    out.extend_from_slice(body);
}

/// Writes struct fields as (delta, value) pairs.
struct StructWriter<'a> {
    out: &'a mut Vec<u8>,
    last: i64,
}

impl<'a> StructWriter<'a> {
    fn new(out: &'a mut Vec<u8>) -> Self {
        StructWriter { out, last: -1 }
    }
    fn field(&mut self, index: i64) -> &mut Vec<u8> {
        put_uint(self.out, (index - self.last) as u64);
        self.last = index;
        self.out
    }
    fn end(self) {
        self.out.push(0);
    }
}

/// `CommonType{Name, Id}` as a field of a wire type.
fn common_type(out: &mut Vec<u8>, name: &str, id: i64) {
    let mut s = StructWriter::new(out);
    put_str(s.field(0), name);
    put_int(s.field(1), id);
    s.end();
}

/// A type-definition message for a struct with `(name, type id)` fields.
fn def_struct(out: &mut Vec<u8>, id: i64, name: &str, fields: &[(&str, i64)]) {
    let mut msg = Vec::new();
    put_int(&mut msg, -id);
    let mut wire = StructWriter::new(&mut msg);
    {
        let st = wire.field(2); // wireType.StructT
        let mut s = StructWriter::new(st);
        common_type(s.field(0), name, id);
        let f = s.field(1);
        put_uint(f, fields.len() as u64);
        for (fname, fid) in fields {
            let mut fs = StructWriter::new(f);
            put_str(fs.field(0), fname);
            put_int(fs.field(1), *fid);
            fs.end();
        }
        s.end();
    }
    wire.end();
    put_message(out, &msg);
}

/// A type-definition message for a GobEncoder type.
fn def_gob_encoder(out: &mut Vec<u8>, id: i64, name: &str) {
    let mut msg = Vec::new();
    put_int(&mut msg, -id);
    let mut wire = StructWriter::new(&mut msg);
    {
        let g = wire.field(4); // wireType.GobEncoderT
        let mut s = StructWriter::new(g);
        common_type(s.field(0), name, id);
        s.end();
    }
    wire.end();
    put_message(out, &msg);
}

/// A type-definition message for a map type.
fn def_map(out: &mut Vec<u8>, id: i64, name: &str, key: i64, elem: i64) {
    let mut msg = Vec::new();
    put_int(&mut msg, -id);
    let mut wire = StructWriter::new(&mut msg);
    {
        let m = wire.field(3); // wireType.MapT
        let mut s = StructWriter::new(m);
        common_type(s.field(0), name, id);
        put_int(s.field(1), key);
        put_int(s.field(2), elem);
        s.end();
    }
    wire.end();
    put_message(out, &msg);
}

/// The cty types an attribute can have (top-level primitives and collections).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CtyType {
    String,
    Number,
    Bool,
    List(Box<CtyType>),
    Map(Box<CtyType>),
}

impl CtyType {
    /// The go-cty JSON type expression (`"string"`, `["list","string"]`).
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            CtyType::String => "string".into(),
            CtyType::Number => "number".into(),
            CtyType::Bool => "bool".into(),
            CtyType::List(e) => serde_json::json!(["list", e.to_json()]),
            CtyType::Map(e) => serde_json::json!(["map", e.to_json()]),
        }
    }
}

/// One `hcldec.AttrSpec`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttrSpec {
    pub name: String,
    pub ty: CtyType,
    pub required: bool,
}

/// Allocates type ids across nested streams (Go's ids are process-global; we
/// mimic that so the output matches what Go would produce byte for byte).
struct Ids(i64);
impl Ids {
    fn take(&mut self) -> i64 {
        let id = self.0;
        self.0 += 1;
        id
    }
}

/// Encode a cty.Type's GobEncode bytes: a fresh gob stream of `gobType`.
fn encode_cty_type(ty: &CtyType, ids: &mut Ids) -> Vec<u8> {
    let mut out = Vec::new();
    let gob_type = ids.take();
    let impl_id = ids.take();
    def_struct(
        &mut out,
        gob_type,
        "gobType",
        &[("Version", T_INT), ("Impl", T_INTERFACE)],
    );
    // The Impl's concrete struct and its value.
    let (impl_name, impl_value) = match ty {
        CtyType::String | CtyType::Number | CtyType::Bool => {
            def_struct(&mut out, impl_id, "primitiveType", &[("Kind", T_UINT)]);
            let kind = match ty {
                CtyType::String => b'S',
                CtyType::Number => b'N',
                _ => b'B',
            };
            let mut v = Vec::new();
            let mut s = StructWriter::new(&mut v);
            put_uint(s.field(0), u64::from(kind));
            s.end();
            ("primitiveType", v)
        }
        CtyType::List(elem) | CtyType::Map(elem) => {
            let type_id = ids.take();
            let name = if matches!(ty, CtyType::List(_)) {
                "typeList"
            } else {
                "typeMap"
            };
            def_struct(&mut out, impl_id, name, &[("ElementTypeT", type_id)]);
            def_gob_encoder(&mut out, type_id, "Type");
            let inner = encode_cty_type(elem, ids);
            let mut v = Vec::new();
            let mut s = StructWriter::new(&mut v);
            let f = s.field(0);
            put_uint(f, inner.len() as u64);
            f.extend_from_slice(&inner);
            s.end();
            (name, v)
        }
    };
    // Value message: gobType{Version: 0 (omitted), Impl: <interface>}.
    let mut msg = Vec::new();
    put_int(&mut msg, gob_type);
    let mut s = StructWriter::new(&mut msg);
    let f = s.field(1);
    put_str(f, &format!("{CTY_PKG}.{impl_name}"));
    put_int(f, impl_id);
    put_uint(f, impl_value.len() as u64);
    f.extend_from_slice(&impl_value);
    s.end();
    put_message(&mut out, &msg);
    out
}

/// Encode an `hcldec.ObjectSpec` of top-level `AttrSpec`s (sorted by name).
pub fn encode_object_spec(attrs: &[AttrSpec]) -> Vec<u8> {
    let mut ids = Ids(FIRST_USER_ID);
    let object_spec = ids.take();
    let attr_spec = ids.take();
    let cty_type = ids.take();
    let mut out = Vec::new();
    def_map(&mut out, object_spec, "ObjectSpec", T_STRING, T_INTERFACE);
    def_struct(
        &mut out,
        attr_spec,
        "AttrSpec",
        &[("Name", T_STRING), ("Type", cty_type), ("Required", T_BOOL)],
    );
    def_gob_encoder(&mut out, cty_type, "Type");

    let mut sorted: Vec<&AttrSpec> = attrs.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut msg = Vec::new();
    put_int(&mut msg, object_spec);
    put_uint(&mut msg, 0); // singleton (non-struct) value
    put_uint(&mut msg, sorted.len() as u64);
    for a in sorted {
        put_str(&mut msg, &a.name);
        put_str(&mut msg, "*hcldec.AttrSpec");
        put_int(&mut msg, attr_spec);
        let mut v = Vec::new();
        let mut s = StructWriter::new(&mut v);
        if !a.name.is_empty() {
            put_str(s.field(0), &a.name);
        }
        let ty = encode_cty_type(&a.ty, &mut ids);
        let f = s.field(1);
        put_uint(f, ty.len() as u64);
        f.extend_from_slice(&ty);
        if a.required {
            put_uint(s.field(2), 1);
        }
        s.end();
        put_uint(&mut msg, v.len() as u64);
        msg.extend_from_slice(&v);
    }
    put_message(&mut out, &msg);
    out
}

// ---------------------------------------------------------------- decoding --

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GobError {
    #[error("gob: unexpected end of input")]
    Eof,
    #[error("gob: uint encoded with {0} bytes")]
    UintWidth(usize),
    #[error("gob: length {0} exceeds the remaining input")]
    Length(u64),
    #[error("gob: unknown type id {0}")]
    UnknownType(i64),
    #[error("gob: type id {0} defined twice or reserved")]
    Redefined(i64),
    #[error("gob: field number {0} out of range for {1}")]
    Field(i64, String),
    #[error("gob: malformed {0}")]
    Malformed(&'static str),
    #[error("gob: {0} values are not supported by this decoder")]
    Unsupported(&'static str),
    #[error("gob: nesting deeper than {0}")]
    TooDeep(usize),
}

const MAX_DEPTH: usize = 32;

/// A decoded gob value.
#[derive(Debug, Clone, PartialEq)]
pub enum GobValue {
    Bool(bool),
    Int(i64),
    Uint(u64),
    Float(f64),
    Complex(f64, f64),
    Bytes(Vec<u8>),
    String(String),
    /// Fields present on the wire (zero-valued fields are omitted by Go).
    Struct {
        name: String,
        fields: Vec<(String, GobValue)>,
    },
    Slice(Vec<GobValue>),
    Map(Vec<(GobValue, GobValue)>),
    /// The bytes of a GobEncoder/BinaryMarshaler/TextMarshaler value.
    Opaque {
        name: String,
        bytes: Vec<u8>,
    },
}

impl GobValue {
    /// A struct field by name.
    pub fn field(&self, name: &str) -> Option<&GobValue> {
        match self {
            GobValue::Struct { fields, .. } => {
                fields.iter().find(|(n, _)| n == name).map(|(_, v)| v)
            }
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum WireType {
    Struct {
        name: String,
        fields: Vec<(String, i64)>,
    },
    Slice(i64),
    Array(i64, i64),
    Map(i64, i64),
    Opaque(String),
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, GobError> {
        let (&b, rest) = self.buf.split_first().ok_or(GobError::Eof)?;
        self.buf = rest;
        Ok(b)
    }
    fn uint(&mut self) -> Result<u64, GobError> {
        let b = self.byte()?;
        if b < 128 {
            return Ok(u64::from(b));
        }
        let n = 256 - usize::from(b);
        if n > 8 {
            return Err(GobError::UintWidth(n));
        }
        let bytes = self.take(n as u64)?;
        Ok(bytes.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
    }
    fn int(&mut self) -> Result<i64, GobError> {
        let u = self.uint()?;
        Ok(if u & 1 == 1 {
            !((u >> 1) as i64)
        } else {
            (u >> 1) as i64
        })
    }
    fn take(&mut self, n: u64) -> Result<&'a [u8], GobError> {
        if n > self.buf.len() as u64 {
            return Err(GobError::Length(n));
        }
        let (head, rest) = self.buf.split_at(n as usize);
        self.buf = rest;
        Ok(head)
    }
    fn string(&mut self) -> Result<String, GobError> {
        let n = self.uint()?;
        Ok(String::from_utf8_lossy(self.take(n)?).into_owned())
    }
    /// A count of following elements; each element takes at least one byte.
    fn count(&mut self) -> Result<usize, GobError> {
        let n = self.uint()?;
        if n > self.buf.len() as u64 {
            return Err(GobError::Length(n));
        }
        Ok(n as usize)
    }
    /// Walk a struct's (delta, value) fields, calling `f(index, reader)`.
    fn fields(
        &mut self,
        mut f: impl FnMut(i64, &mut Reader<'a>) -> Result<(), GobError>,
    ) -> Result<(), GobError> {
        let mut field: i64 = -1;
        loop {
            let delta = self.uint()?;
            if delta == 0 {
                return Ok(());
            }
            field = field
                .checked_add(i64::try_from(delta).map_err(|_| GobError::Malformed("field delta"))?)
                .ok_or(GobError::Malformed("field delta"))?;
            f(field, self)?;
        }
    }
}

fn read_common(r: &mut Reader<'_>) -> Result<(String, i64), GobError> {
    let mut name = String::new();
    let mut id = 0;
    r.fields(|i, r| {
        match i {
            0 => name = r.string()?,
            1 => id = r.int()?,
            _ => return Err(GobError::Field(i, "CommonType".into())),
        }
        Ok(())
    })?;
    Ok((name, id))
}

fn read_wire_type(r: &mut Reader<'_>) -> Result<WireType, GobError> {
    let mut out = None;
    r.fields(|i, r| {
        out = Some(match i {
            0 => {
                let (mut elem, mut len) = (0, 0);
                r.fields(|j, r| {
                    match j {
                        0 => drop(read_common(r)?),
                        1 => elem = r.int()?,
                        2 => len = r.int()?,
                        _ => return Err(GobError::Field(j, "arrayType".into())),
                    }
                    Ok(())
                })?;
                WireType::Array(elem, len)
            }
            1 => {
                let mut elem = 0;
                r.fields(|j, r| {
                    match j {
                        0 => drop(read_common(r)?),
                        1 => elem = r.int()?,
                        _ => return Err(GobError::Field(j, "sliceType".into())),
                    }
                    Ok(())
                })?;
                WireType::Slice(elem)
            }
            2 => {
                let mut name = String::new();
                let mut fields = Vec::new();
                r.fields(|j, r| {
                    match j {
                        0 => name = read_common(r)?.0,
                        1 => {
                            let n = r.count()?;
                            for _ in 0..n {
                                let (mut fname, mut fid) = (String::new(), 0);
                                r.fields(|k, r| {
                                    match k {
                                        0 => fname = r.string()?,
                                        1 => fid = r.int()?,
                                        _ => return Err(GobError::Field(k, "fieldType".into())),
                                    }
                                    Ok(())
                                })?;
                                fields.push((fname, fid));
                            }
                        }
                        _ => return Err(GobError::Field(j, "structType".into())),
                    }
                    Ok(())
                })?;
                WireType::Struct { name, fields }
            }
            3 => {
                let (mut key, mut elem) = (0, 0);
                r.fields(|j, r| {
                    match j {
                        0 => drop(read_common(r)?),
                        1 => key = r.int()?,
                        2 => elem = r.int()?,
                        _ => return Err(GobError::Field(j, "mapType".into())),
                    }
                    Ok(())
                })?;
                WireType::Map(key, elem)
            }
            4..=6 => {
                let mut name = String::new();
                r.fields(|j, r| {
                    match j {
                        0 => name = read_common(r)?.0,
                        _ => return Err(GobError::Field(j, "gobEncoderType".into())),
                    }
                    Ok(())
                })?;
                WireType::Opaque(name)
            }
            _ => return Err(GobError::Field(i, "wireType".into())),
        });
        Ok(())
    })?;
    out.ok_or(GobError::Malformed("empty wireType"))
}

/// Decodes one gob stream; type definitions persist across messages.
#[derive(Default)]
pub struct Decoder {
    types: HashMap<i64, WireType>,
}

impl Decoder {
    pub fn new() -> Decoder {
        Decoder::default()
    }

    /// Decode every message in `buf`, returning the values in order.
    pub fn decode_all(&mut self, buf: &[u8]) -> Result<Vec<GobValue>, GobError> {
        let mut r = Reader { buf };
        let mut values = Vec::new();
        while !r.buf.is_empty() {
            let len = r.uint()?;
            let mut msg = Reader { buf: r.take(len)? };
            let id = msg.int()?;
            if id < 0 {
                let id = id.checked_neg().ok_or(GobError::Malformed("type id"))?;
                if id < FIRST_USER_ID || self.types.contains_key(&id) {
                    return Err(GobError::Redefined(id));
                }
                let wt = read_wire_type(&mut msg)?;
                self.types.insert(id, wt);
            } else {
                let is_struct = matches!(self.types.get(&id), Some(WireType::Struct { .. }));
                if !is_struct {
                    // Non-struct top-level values carry a 0 "field delta".
                    if msg.uint()? != 0 {
                        return Err(GobError::Malformed("singleton delta"));
                    }
                }
                values.push(self.value(id, &mut msg, 0)?);
            }
            if !msg.buf.is_empty() {
                return Err(GobError::Malformed("trailing bytes in message"));
            }
        }
        Ok(values)
    }

    fn value(&self, id: i64, r: &mut Reader<'_>, depth: usize) -> Result<GobValue, GobError> {
        if depth > MAX_DEPTH {
            return Err(GobError::TooDeep(MAX_DEPTH));
        }
        Ok(match id {
            T_BOOL => GobValue::Bool(r.uint()? != 0),
            T_INT => GobValue::Int(r.int()?),
            T_UINT => GobValue::Uint(r.uint()?),
            T_FLOAT => GobValue::Float(float(r.uint()?)),
            T_COMPLEX => GobValue::Complex(float(r.uint()?), float(r.uint()?)),
            T_BYTES => {
                let n = r.uint()?;
                GobValue::Bytes(r.take(n)?.to_vec())
            }
            T_STRING => GobValue::String(r.string()?),
            T_INTERFACE => return Err(GobError::Unsupported("interface")),
            _ => match self.types.get(&id).ok_or(GobError::UnknownType(id))? {
                WireType::Struct { name, fields } => {
                    let mut out = Vec::new();
                    r.fields(|i, r| {
                        let (fname, fid) = usize::try_from(i)
                            .ok()
                            .and_then(|i| fields.get(i))
                            .ok_or_else(|| GobError::Field(i, name.clone()))?;
                        out.push((fname.clone(), self.value(*fid, r, depth + 1)?));
                        Ok(())
                    })?;
                    GobValue::Struct {
                        name: name.clone(),
                        fields: out,
                    }
                }
                WireType::Slice(elem) => {
                    let n = r.count()?;
                    let mut items = Vec::with_capacity(n.min(1024));
                    for _ in 0..n {
                        items.push(self.value(*elem, r, depth + 1)?);
                    }
                    GobValue::Slice(items)
                }
                WireType::Array(elem, len) => {
                    let n = r.count()?;
                    if i64::try_from(n).ok() != Some(*len) {
                        return Err(GobError::Malformed("array length"));
                    }
                    let mut items = Vec::with_capacity(n.min(1024));
                    for _ in 0..n {
                        items.push(self.value(*elem, r, depth + 1)?);
                    }
                    GobValue::Slice(items)
                }
                WireType::Map(key, elem) => {
                    let n = r.count()?;
                    let mut pairs = Vec::with_capacity(n.min(1024));
                    for _ in 0..n {
                        let k = self.value(*key, r, depth + 1)?;
                        let v = self.value(*elem, r, depth + 1)?;
                        pairs.push((k, v));
                    }
                    GobValue::Map(pairs)
                }
                WireType::Opaque(name) => {
                    let n = r.uint()?;
                    GobValue::Opaque {
                        name: name.clone(),
                        bytes: r.take(n)?.to_vec(),
                    }
                }
            },
        })
    }
}

fn float(u: u64) -> f64 {
    f64::from_bits(u.swap_bytes())
}

/// Decode a whole gob stream.
pub fn decode(buf: &[u8]) -> Result<Vec<GobValue>, GobError> {
    Decoder::new().decode_all(buf)
}

/// Read `ExitStatus` from a `CommandFinished` gob stream (as Packer sends it on
/// the response stream of `Communicator.Start`). A missing field means 0.
pub fn decode_command_finished(buf: &[u8]) -> Result<i64, GobError> {
    let values = decode(buf)?;
    let v = values
        .last()
        .ok_or(GobError::Malformed("no CommandFinished value"))?;
    match v {
        GobValue::Struct { .. } => match v.field("ExitStatus") {
            None => Ok(0),
            Some(GobValue::Int(i)) => Ok(*i),
            Some(_) => Err(GobError::Malformed("ExitStatus is not an int")),
        },
        _ => Err(GobError::Malformed("CommandFinished is not a struct")),
    }
}

/// Encode `CommandFinished{ExitStatus}` exactly as Go does (tests play Packer).
pub fn encode_command_finished(exit: i64) -> Vec<u8> {
    let id = FIRST_USER_ID;
    let mut out = Vec::new();
    def_struct(&mut out, id, "CommandFinished", &[("ExitStatus", T_INT)]);
    let mut msg = Vec::new();
    put_int(&mut msg, id);
    let mut s = StructWriter::new(&mut msg);
    if exit != 0 {
        put_int(s.field(0), exit);
    }
    s.end();
    put_message(&mut out, &msg);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// Received from Packer 1.6.6 for a command that exited with 3.
    const FINISHED_EXIT_3: &str = "2cff810301010f436f6d6d616e6446696e697368656401ff82000101010a45786974537461747573010400000005ff82010600";

    /// `{message: optional string}`, accepted by Packer 1.6.6.
    const SPEC_MESSAGE: &str = "1aff810401010a4f626a6563745370656301ff8200010c0110000036ff8303010108417474725370656301ff8400010301044e616d65010c0001045479706501ff860001085265717569726564010200000010ff85050101045479706501ff86000000ffb5ff820001076d657373616765102a68636c6465632e4174747253706563ff84ff9401076d65737361676501ff872aff8703010107676f625479706501ff88000102010756657273696f6e0104000104496d706c011000000024ff890301010d7072696d69746976655479706501ff8a00010101044b696e64010600000036ff88022b6769746875622e636f6d2f7a636c636f6e662f676f2d6374792f6374792e7072696d697469766554797065ff8a030153000000";

    #[test]
    fn uint_and_int_encodings() {
        let enc = |u| {
            let mut v = Vec::new();
            put_uint(&mut v, u);
            v
        };
        assert_eq!(enc(0), [0]);
        assert_eq!(enc(127), [127]);
        assert_eq!(enc(128), [0xff, 0x80]);
        assert_eq!(enc(256), [0xfe, 0x01, 0x00]);
        let mut v = Vec::new();
        put_int(&mut v, -65);
        assert_eq!(v, [0xff, 0x81]);
        let mut r = Reader { buf: &[0xff, 0x81] };
        assert_eq!(r.int().unwrap(), -65);
        for i in [0i64, 1, -1, 63, -64, 1 << 40, i64::MIN, i64::MAX] {
            let mut b = Vec::new();
            put_int(&mut b, i);
            assert_eq!(Reader { buf: &b }.int().unwrap(), i);
        }
    }

    #[test]
    fn config_spec_matches_golden_bytes() {
        let spec = encode_object_spec(&[AttrSpec {
            name: "message".into(),
            ty: CtyType::String,
            required: false,
        }]);
        assert_eq!(spec.len(), 282);
        assert_eq!(spec, unhex(SPEC_MESSAGE));
    }

    #[test]
    fn config_spec_outer_stream_decodes_up_to_the_interface() {
        // Our decoder does not do interfaces, but it must parse all three type
        // definitions and stop at the map's interface value with a clear error.
        let spec = encode_object_spec(&[AttrSpec {
            name: "n".into(),
            ty: CtyType::List(Box::new(CtyType::Number)),
            required: true,
        }]);
        assert_eq!(decode(&spec), Err(GobError::Unsupported("interface")));
    }

    #[test]
    fn nested_list_type_stream_is_well_formed() {
        let mut ids = Ids(100);
        let bytes = encode_cty_type(&CtyType::Map(Box::new(CtyType::Bool)), &mut ids);
        // gobType, typeMap, Type definitions then one value; our decoder stops
        // at the Impl interface but must parse every definition first.
        assert_eq!(decode(&bytes), Err(GobError::Unsupported("interface")));
        let mut d = Decoder::new();
        let _ = d.decode_all(&bytes);
        assert_eq!(
            d.types.get(&101),
            Some(&WireType::Struct {
                name: "typeMap".into(),
                fields: vec![("ElementTypeT".into(), 102)],
            })
        );
        assert_eq!(d.types.get(&102), Some(&WireType::Opaque("Type".into())));
    }

    #[test]
    fn command_finished_golden() {
        let bytes = unhex(FINISHED_EXIT_3);
        assert_eq!(decode_command_finished(&bytes), Ok(3));
        assert_eq!(encode_command_finished(3), bytes);
        // Exit 0: the field is omitted, the value message is `03 ff82 00`.
        let zero = encode_command_finished(0);
        assert!(zero.ends_with(&[0x03, 0xff, 0x82, 0x00]));
        assert_eq!(decode_command_finished(&zero), Ok(0));
        assert_eq!(
            decode_command_finished(&encode_command_finished(-1)),
            Ok(-1)
        );
    }

    #[test]
    fn decoder_handles_slices_maps_and_floats() {
        // type 65 = struct{A []int; B map[string]float64}; 66 = []int; 67 = map.
        let mut out = Vec::new();
        def_struct(&mut out, 65, "S", &[("A", 66), ("B", 67)]);
        let mut m = Vec::new();
        put_int(&mut m, -66);
        m.extend_from_slice(&[2, 1, 0, 1, 4, 0, 0]); // SliceT{Common{}, Elem: int}
        put_message(&mut out, &m);
        def_map(&mut out, 67, "", T_STRING, T_FLOAT);
        let mut v = Vec::new();
        put_int(&mut v, 65);
        v.extend_from_slice(&[1, 2, 2, 3]); // A = [1, -2]
        v.push(1);
        v.push(1);
        put_str(&mut v, "x");
        put_uint(&mut v, 2.0f64.to_bits().swap_bytes()); // 2.0
        v.push(0);
        put_message(&mut out, &v);
        let vals = decode(&out).unwrap();
        assert_eq!(
            vals[0].field("A"),
            Some(&GobValue::Slice(vec![GobValue::Int(1), GobValue::Int(-2)]))
        );
        assert_eq!(
            vals[0].field("B"),
            Some(&GobValue::Map(vec![(
                GobValue::String("x".into()),
                GobValue::Float(2.0)
            )]))
        );
    }

    #[test]
    fn decoder_rejects_garbage_without_panicking() {
        for bad in [
            &b""[..],
            &[0x05][..],
            &[0x02, 0xff, 0x81][..],
            &[0x03, 0x82, 0x01, 0x01][..],
            &[0xf0, 0xff][..],
            &[0x04, 0x02, 0x00, 0xfa, 0xff][..],
        ] {
            let _ = decode(bad);
        }
        assert_eq!(
            decode(&[0x04, 0xff, 0x80, 0x00, 0x01]),
            Err(GobError::UnknownType(64))
        );
        assert_eq!(decode(&[0xf7]), Err(GobError::UintWidth(9)));
        assert!(decode_command_finished(&[]).is_err());
    }
}
