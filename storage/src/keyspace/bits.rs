//! Bitmaps on strings: SETBIT GETBIT BITCOUNT BITPOS BITOP BITFIELD
//! BITFIELD_RO. Bit 0 is the most significant bit of the first byte, as
//! in Redis.

use super::*;

const BIT_OFFSET: &str = "ERR bit offset is not an integer or out of range";

/// A bit offset as Redis 7.0 reads one: 0 up to what a string of
/// proto-max-bulk-len bytes holds.
fn bit_offset(b: &[u8]) -> Result<usize, Out> {
    match string2ll(b) {
        Some(o) if o >= 0 && ((o >> 3) as usize) < STRING_BYTES_MAX => Ok(o as usize),
        _ => Err(Out::err(BIT_OFFSET)),
    }
}

fn bit_at(s: &[u8], i: usize) -> bool {
    s.get(i >> 3).is_some_and(|byte| byte & (0x80 >> (i & 7)) != 0)
}

/// The bits of byte `i` (of the span `first..=last`, in bits) that lie in
/// the span: the first and last bytes keep only their part.
fn span_mask(i: usize, first: usize, last: usize) -> u8 {
    let mut mask = 0xff;
    if i == first >> 3 {
        mask &= 0xff >> (first & 7);
    }
    if i == last >> 3 {
        mask &= 0xff << (7 - (last & 7));
    }
    mask
}

/// Set bits among positions `first..=last` of `s` (inside it), a byte at a
/// time.
fn count_bits(s: &[u8], first: usize, last: usize) -> usize {
    (first >> 3..=last >> 3).map(|i| (s[i] & span_mask(i, first, last)).count_ones() as usize).sum()
}

/// The first position in `first..=last` of `s` (inside it) whose bit is
/// `bit`, a byte at a time.
fn find_bit(s: &[u8], first: usize, last: usize, bit: bool) -> Option<usize> {
    (first >> 3..=last >> 3).find_map(|i| {
        let b = if bit { s[i] } else { !s[i] } & span_mask(i, first, last);
        (b != 0).then(|| i * 8 + b.leading_zeros() as usize)
    })
}

/// BITCOUNT / BITPOS's optional range: `[start end]` in bytes, or in bits
/// with `BIT`, negative from the end, clamped as Redis clamps it; `None`
/// when it is empty. (first, last) in bits, inclusive.
fn bit_range(len: usize, start: i64, end: i64, isbit: bool) -> Option<(usize, usize)> {
    let total = if isbit { len as i64 * 8 } else { len as i64 };
    let norm = |i: i64| if i < 0 { (total + i).max(0) } else { i };
    let (start, end) = (norm(start), norm(end).min(total - 1));
    if start > end {
        return None;
    }
    let (start, end) = (start as usize, end as usize);
    Some(if isbit { (start, end) } else { (start * 8, end * 8 + 7) })
}

/// `BYTE` / `BIT` at `argv[i]`, if given.
fn unit(argv: &[&[u8]], i: usize) -> Result<bool, Out> {
    match argv.get(i).map(|u| upper(u)) {
        None => Ok(false),
        Some(u) if u == "BIT" => Ok(true),
        Some(u) if u == "BYTE" => Ok(false),
        Some(_) => Err(Out::err(SYNTAX)),
    }
}

impl Keyspace {
    pub(super) fn bits_read(&self, name: &str, db: u32, now_ms: u64, argv: &[&[u8]]) -> Option<Out> {
        Some(match name {
            "bitfield_ro" => self.bitfield_ro(db, now_ms, argv),
            "getbit" => {
                let offset = match bit_offset(argv[2]) {
                    Ok(o) => o,
                    Err(e) => return Some(e),
                };
                match self.string(db, argv[1], now_ms) {
                    Ok(s) => Out::Int(i64::from(s.is_some_and(|s| bit_at(s, offset)))),
                    Err(e) => e,
                }
            }
            "bitcount" => {
                let s = match self.string(db, argv[1], now_ms) {
                    Ok(Some(s)) => s,
                    Ok(None) => return Some(Out::Int(0)),
                    Err(e) => return Some(e),
                };
                let range = match argv.len() {
                    2 => bit_range(s.len(), 0, -1, false),
                    4 | 5 => {
                        let (Some(start), Some(end)) = (string2ll(argv[2]), string2ll(argv[3])) else {
                            return Some(Out::err(NOT_INTEGER));
                        };
                        // Redis 7.0 answers this before it reads the unit.
                        if start < 0 && end < 0 && start > end {
                            return Some(Out::Int(0));
                        }
                        match unit(argv, 4) {
                            Ok(isbit) => bit_range(s.len(), start, end, isbit),
                            Err(e) => return Some(e),
                        }
                    }
                    _ => return Some(Out::err(SYNTAX)),
                };
                Out::Int(range.map_or(0, |(a, b)| count_bits(s, a, b) as i64))
            }
            "bitpos" => bitpos(self.string(db, argv[1], now_ms), argv),
            _ => return None,
        })
    }

    pub(super) fn bits_write(&mut self, name: &str, db: u32, now_ms: u64, argv: &[&[u8]]) -> Option<Out> {
        match name {
            "bitop" => return Some(self.bitop(db, now_ms, argv)),
            "bitfield" => return Some(self.bitfield(db, now_ms, argv)),
            "setbit" => {}
            _ => return None,
        }
        let offset = match bit_offset(argv[2]) {
            Ok(o) => o,
            Err(e) => return Some(e),
        };
        let on = match argv[3] {
            b"1" => true,
            b"0" => false,
            _ => return Some(Out::err("ERR bit is not an integer or out of range")),
        };
        let (mut s, existed) = match self.string(db, argv[1], now_ms) {
            Ok(s) => (s.cloned().unwrap_or_default(), s.is_some()),
            Err(e) => return Some(e),
        };
        let was = bit_at(&s, offset);
        // Unchanged (the bit as it was, the string long enough): nothing
        // is written, as Redis leaves its dirty count and events alone.
        if existed && was == on && s.len() > offset >> 3 {
            return Some(Out::Int(i64::from(was)));
        }
        if s.len() <= offset >> 3 {
            s.resize((offset >> 3) + 1, 0);
        }
        let mask = 0x80 >> (offset & 7);
        if on {
            s[offset >> 3] |= mask;
        } else {
            s[offset >> 3] &= !mask;
        }
        let at = self.get(db, argv[1], now_ms).and_then(|e| e.expire_at_ms);
        self.set_str(db, argv[1], s, at);
        Some(Out::Int(i64::from(was)))
    }
}

/// BITPOS key bit [start [end [BYTE|BIT]]], as Redis 7.0 answers it: a
/// missing key is all zeros; looking for a 0 with no end given, the string
/// counts as padded with zeros on the right.
fn bitpos(s: Result<Option<&Vec<u8>>, Out>, argv: &[&[u8]]) -> Out {
    let bit = match string2ll(argv[2]) {
        Some(b @ (0 | 1)) => b == 1,
        Some(_) => return Out::err("ERR The bit argument must be 1 or 0."),
        None => return Out::err(NOT_INTEGER),
    };
    let s = match s {
        Ok(Some(s)) => s,
        Ok(None) => return Out::Int(if bit { -1 } else { 0 }),
        Err(e) => return e,
    };
    let (range, end_given) = match argv.len() {
        3 => (bit_range(s.len(), 0, -1, false), false),
        4..=6 => {
            let Some(start) = string2ll(argv[3]) else { return Out::err(NOT_INTEGER) };
            let isbit = match unit(argv, 5) {
                Ok(b) => b,
                Err(e) => return e,
            };
            let end = match argv.get(4) {
                Some(e) => match string2ll(e) {
                    Some(e) => e,
                    None => return Out::err(NOT_INTEGER),
                },
                None => -1,
            };
            (bit_range(s.len(), start, end, isbit), argv.len() > 4)
        }
        _ => return Out::err(SYNTAX),
    };
    let Some((first, last)) = range else { return Out::Int(-1) };
    match find_bit(s, first, last, bit) {
        Some(i) => Out::Int(i as i64),
        // Past the last byte of the range.
        None if !bit && !end_given => Out::Int(((last >> 3) as i64 + 1) * 8),
        None => Out::Int(-1),
    }
}

/// One BITFIELD operation.
#[derive(Clone, Copy)]
enum Field {
    Get,
    Set(i64),
    Incr(i64),
}

#[derive(Clone, Copy, PartialEq)]
enum Overflow {
    Wrap,
    Sat,
    Fail,
}

/// A BITFIELD type: signed, and its width in bits.
#[derive(Clone, Copy)]
struct FieldType {
    signed: bool,
    bits: u32,
}

const BAD_TYPE: &str =
    "ERR Invalid bitfield type. Use something like i16 u8. Note that u64 is not supported but i64 is.";

fn field_type(b: &[u8]) -> Result<FieldType, Out> {
    let bad = || Out::err(BAD_TYPE);
    let (signed, rest) = match b.split_first() {
        Some((b'i', rest)) => (true, rest),
        Some((b'u', rest)) => (false, rest),
        _ => return Err(bad()),
    };
    let bits = string2ll(rest).ok_or_else(bad)?;
    let max = if signed { 64 } else { 63 };
    if !(1..=max).contains(&bits) {
        return Err(bad());
    }
    Ok(FieldType { signed, bits: bits as u32 })
}

/// A BITFIELD offset: bits, or `#n` for n fields of the type's width.
fn field_offset(b: &[u8], t: FieldType) -> Result<usize, Out> {
    let (by_field, digits) = match b.split_first() {
        Some((b'#', rest)) => (true, rest),
        _ => (false, b),
    };
    let n = string2ll(digits).filter(|n| *n >= 0).ok_or_else(|| Out::err(BIT_OFFSET))?;
    let bit = if by_field { n.checked_mul(i64::from(t.bits)).ok_or_else(|| Out::err(BIT_OFFSET))? } else { n };
    if ((bit >> 3) as usize) >= STRING_BYTES_MAX {
        return Err(Out::err(BIT_OFFSET));
    }
    Ok(bit as usize)
}

/// The field of type `t` at bit `offset` (bits past the end read 0).
fn field_get(s: &[u8], offset: usize, t: FieldType) -> i64 {
    let mut v: u64 = 0;
    for j in 0..t.bits as usize {
        v = (v << 1) | u64::from(bit_at(s, offset + j));
    }
    if t.signed && t.bits < 64 && v & (1 << (t.bits - 1)) != 0 {
        v |= u64::MAX << t.bits;
    }
    v as i64
}

fn field_set(s: &mut [u8], offset: usize, t: FieldType, v: i64) {
    for j in 0..t.bits as usize {
        let on = (v as u64 >> (t.bits as usize - 1 - j)) & 1 == 1;
        let (byte, mask) = ((offset + j) >> 3, 0x80u8 >> ((offset + j) & 7));
        if on {
            s[byte] |= mask;
        } else {
            s[byte] &= !mask;
        }
    }
}

/// `value` brought into type `t` by the overflow rule; `None` for FAIL
/// on a value out of range.
fn fit(value: i128, t: FieldType, rule: Overflow) -> Option<i64> {
    let (min, max) =
        if t.signed { (-(1i128 << (t.bits - 1)), (1i128 << (t.bits - 1)) - 1) } else { (0, (1i128 << t.bits) - 1) };
    if (min..=max).contains(&value) {
        return Some(value as i64);
    }
    match rule {
        Overflow::Fail => None,
        Overflow::Sat => Some(if value < min { min } else { max } as i64),
        Overflow::Wrap => Some(((value - min).rem_euclid(1i128 << t.bits) + min) as i64),
    }
}

impl Keyspace {
    /// BITOP AND|OR|XOR|NOT destkey srckey...: the result is as long as the
    /// longest source (missing ones are empty); an empty result deletes
    /// destkey. Replies with the result's length.
    fn bitop(&mut self, db: u32, now_ms: u64, argv: &[&[u8]]) -> Out {
        let op = upper(argv[1]);
        if !matches!(op.as_str(), "AND" | "OR" | "XOR" | "NOT") {
            return Out::err(SYNTAX);
        }
        if op == "NOT" && argv.len() != 4 {
            return Out::err("ERR BITOP NOT must be called with a single source key.");
        }
        let mut sources = Vec::with_capacity(argv.len() - 3);
        for key in &argv[3..] {
            match self.string(db, key, now_ms) {
                Ok(s) => sources.push(s.map(Vec::as_slice).unwrap_or_default()),
                Err(e) => return e,
            }
        }
        let len = sources.iter().map(|s| s.len()).max().unwrap_or(0);
        let byte = |s: &[u8], i: usize| s.get(i).copied().unwrap_or(0);
        let out: Vec<u8> = (0..len)
            .map(|i| {
                let mut bytes = sources.iter().map(|s| byte(s, i));
                let first = bytes.next().unwrap_or(0);
                match op.as_str() {
                    "AND" => bytes.fold(first, |a, b| a & b),
                    "OR" => bytes.fold(first, |a, b| a | b),
                    "XOR" => bytes.fold(first, |a, b| a ^ b),
                    _ => !first,
                }
            })
            .collect();
        if out.is_empty() {
            self.remove(db, argv[2], now_ms);
        } else {
            self.set_str(db, argv[2], out, None);
        }
        Out::Int(len as i64)
    }

    /// BITFIELD_RO key GET type offset ...
    fn bitfield_ro(&self, db: u32, now_ms: u64, argv: &[&[u8]]) -> Out {
        let ops = match parse_bitfield(argv) {
            Ok(ops) => ops,
            Err(e) => return e,
        };
        if ops.iter().any(|(f, ..)| !matches!(f, Field::Get)) {
            return Out::err("ERR BITFIELD_RO only supports the GET subcommand");
        }
        let s = match self.string(db, argv[1], now_ms) {
            Ok(s) => s.map(Vec::as_slice).unwrap_or_default(),
            Err(e) => return e,
        };
        Out::Array(ops.iter().map(|(_, t, offset, _)| Out::Int(field_get(s, *offset, *t))).collect())
    }

    /// BITFIELD key [GET type offset] [SET type offset value] [INCRBY type
    /// offset increment] [OVERFLOW WRAP|SAT|FAIL] ...: every operation is
    /// checked before any runs; a SET or INCRBY grows the string to hold
    /// its field (even one that then fails), as Redis does.
    fn bitfield(&mut self, db: u32, now_ms: u64, argv: &[&[u8]]) -> Out {
        let ops = match parse_bitfield(argv) {
            Ok(ops) => ops,
            Err(e) => return e,
        };
        let mut s = match self.string(db, argv[1], now_ms) {
            Ok(s) => s.cloned(),
            Err(e) => return e,
        };
        let before = s.clone();
        let mut replies = Vec::with_capacity(ops.len());
        for (field, t, offset, rule) in ops {
            // The value to store (an increment still to add to the old
            // one), and whether the reply is the old value.
            let (given, is_set) = match field {
                Field::Get => {
                    replies.push(Out::Int(field_get(s.as_deref().unwrap_or_default(), offset, t)));
                    continue;
                }
                // An unsigned SET takes the value's bits, as Redis does.
                Field::Set(v) if !t.signed => (i128::from(v as u64), true),
                Field::Set(v) => (i128::from(v), true),
                Field::Incr(by) => (i128::from(by), false),
            };
            let bytes = s.get_or_insert_with(Vec::new);
            let need = (offset + t.bits as usize).div_ceil(8);
            if bytes.len() < need {
                bytes.resize(need, 0);
            }
            let old = field_get(bytes, offset, t);
            let target = if is_set { given } else { i128::from(old) + given };
            match fit(target, t, rule) {
                Some(v) => {
                    field_set(bytes, offset, t, v);
                    replies.push(Out::Int(if is_set { old } else { v }));
                }
                None => replies.push(Out::Nil),
            }
        }
        // Only a change is written (a new key, a longer string, other bits).
        if s != before {
            let at = self.get(db, argv[1], now_ms).and_then(|e| e.expire_at_ms);
            self.set_str(db, argv[1], s.unwrap_or_default(), at);
        }
        Out::Array(replies)
    }
}

/// BITFIELD's operations, each with its type, bit offset and the overflow
/// rule in force; the first error found, as Redis reports it.
fn parse_bitfield(argv: &[&[u8]]) -> Result<Vec<(Field, FieldType, usize, Overflow)>, Out> {
    let mut ops = Vec::new();
    let mut rule = Overflow::Wrap;
    let mut i = 2;
    while i < argv.len() {
        let word = upper(argv[i]);
        let left = argv.len() - i - 1;
        match word.as_str() {
            "OVERFLOW" if left >= 1 => {
                rule = match upper(argv[i + 1]).as_str() {
                    "WRAP" => Overflow::Wrap,
                    "SAT" => Overflow::Sat,
                    "FAIL" => Overflow::Fail,
                    _ => return Err(Out::err("ERR Invalid OVERFLOW type specified")),
                };
                i += 2;
            }
            "GET" if left >= 2 => {
                let t = field_type(argv[i + 1])?;
                ops.push((Field::Get, t, field_offset(argv[i + 2], t)?, rule));
                i += 3;
            }
            "SET" | "INCRBY" if left >= 3 => {
                let t = field_type(argv[i + 1])?;
                let offset = field_offset(argv[i + 2], t)?;
                let v = int_arg(argv[i + 3])?;
                ops.push((if word == "SET" { Field::Set(v) } else { Field::Incr(v) }, t, offset, rule));
                i += 4;
            }
            _ => return Err(Out::err(SYNTAX)),
        }
    }
    Ok(ops)
}
