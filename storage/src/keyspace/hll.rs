//! HyperLogLog on strings: PFADD PFCOUNT PFMERGE, with Redis's layout
//! and estimates, so counts match redis-server's and a value copied from
//! one to the other (GET / SET) keeps working.
//!
//! The layout: a 16-byte header (`HYLL`, the encoding, three unused
//! bytes, a cached count of 8 bytes little-endian whose top bit marks it
//! stale), then 16384 six-bit registers, either dense (12288 bytes) or
//! sparse (runs of zeros and of equal small values). An element hashes
//! with MurmurHash64A (seed 0xadc83b19): the low 14 bits pick the
//! register, the run of zeros above them (plus one) is the value it may
//! raise the register to. The count is Ertl's improved raw estimator, as
//! Redis 5 and later compute it.
//!
//! Sparse values are written as Redis writes them while every register
//! is at most 32 and the value fits in [`SPARSE_BYTES_MAX`]; dense after.
//! PFCOUNT is a read here: it does not store the count it computes in the
//! header (Redis does, in place, without replicating it).

use super::*;

const REGISTERS: usize = 1 << 14;
const P: u32 = 14;
/// Bits of the hash left after the register index.
const Q: u32 = 64 - P;
const HEADER: usize = 16;
const DENSE_BYTES: usize = HEADER + REGISTERS * 6 / 8;
const DENSE: u8 = 0;
const SPARSE: u8 = 1;
/// Largest register value a sparse VAL opcode holds.
const SPARSE_VALUE_MAX: u8 = 32;
/// Redis's `hll-sparse-max-bytes` default: past it a value goes dense.
const SPARSE_BYTES_MAX: usize = 3000;
const NOT_HLL: &str = "WRONGTYPE Key is not a valid HyperLogLog string value.";
/// A header that checks out over a sparse body that does not decode.
const CORRUPT: &str = "INVALIDOBJ Corrupted HLL object detected";
const ALPHA_INF: f64 = 0.721_347_520_444_481_7;

/// MurmurHash64A, as Redis hashes HyperLogLog elements.
fn murmur64a(data: &[u8], seed: u64) -> u64 {
    const M: u64 = 0xc6a4_a793_5bd1_e995;
    const R: u32 = 47;
    let mut h = seed ^ (data.len() as u64).wrapping_mul(M);
    let mut blocks = data.chunks_exact(8);
    for b in &mut blocks {
        let mut k = u64::from_le_bytes(b.try_into().unwrap_or_default());
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h ^= k;
        h = h.wrapping_mul(M);
    }
    let tail = blocks.remainder();
    if !tail.is_empty() {
        for (i, b) in tail.iter().enumerate() {
            h ^= u64::from(*b) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> R;
    h = h.wrapping_mul(M);
    h ^= h >> R;
    h
}

/// The register an element falls in and the value it brings.
fn register_of(element: &[u8]) -> (usize, u8) {
    let hash = murmur64a(element, 0xadc8_3b19);
    let index = (hash & (REGISTERS as u64 - 1)) as usize;
    let rest = (hash >> P) | (1u64 << Q);
    (index, rest.trailing_zeros() as u8 + 1)
}

/// An HLL's registers, decoded, and whether the value is (to be) dense:
/// Redis never turns a dense value sparse again, and a merge with a dense
/// input is dense.
struct Registers(Vec<u8>, bool);

impl Registers {
    fn empty() -> Self {
        Registers(vec![0; REGISTERS], false)
    }

    /// Decodes a stored value; `None` when it is not a valid HLL.
    /// The registers `s` holds. Redis's two checks: the header (magic,
    /// encoding, a dense body's length) is checked before anything runs
    /// (`NOT_HLL`); a sparse body that does not decode to exactly the
    /// registers is found while reading it (`CORRUPT`).
    fn decode(s: &[u8]) -> Result<Self, &'static str> {
        if s.len() < HEADER || &s[..4] != b"HYLL" {
            return Err(NOT_HLL);
        }
        let body = &s[HEADER..];
        match s[4] {
            DENSE if s.len() == DENSE_BYTES => {
                Ok(Registers((0..REGISTERS).map(|i| dense_get(body, i)).collect(), true))
            }
            SPARSE => {
                let mut regs = Vec::with_capacity(REGISTERS);
                let mut i = 0;
                while i < body.len() {
                    let op = body[i];
                    if op & 0xc0 == 0 {
                        // ZERO: 00xxxxxx, a run of xxxxxx+1 zeros.
                        regs.resize(regs.len() + usize::from(op & 0x3f) + 1, 0);
                        i += 1;
                    } else if op & 0xc0 == 0x40 {
                        // XZERO: 01xxxxxx yyyyyyyy, a run of 14 bits + 1 zeros.
                        let len = (usize::from(op & 0x3f) << 8 | usize::from(*body.get(i + 1).ok_or(CORRUPT)?)) + 1;
                        regs.resize(regs.len() + len, 0);
                        i += 2;
                    } else {
                        // VAL: 1vvvvvxx, xx+1 registers of value vvvvv+1.
                        let v = ((op >> 2) & 0x1f) + 1;
                        regs.resize(regs.len() + usize::from(op & 3) + 1, v);
                        i += 1;
                    }
                    if regs.len() > REGISTERS {
                        return Err(CORRUPT);
                    }
                }
                if regs.len() == REGISTERS {
                    Ok(Registers(regs, false))
                } else {
                    Err(CORRUPT)
                }
            }
            _ => Err(NOT_HLL),
        }
    }

    /// Raises registers to what `elements` bring; true if any moved.
    fn add<'a>(&mut self, elements: impl IntoIterator<Item = &'a [u8]>) -> bool {
        let mut changed = false;
        for e in elements {
            let (i, v) = register_of(e);
            if v > self.0[i] {
                self.0[i] = v;
                changed = true;
            }
        }
        changed
    }

    fn merge(&mut self, other: &Registers) {
        self.1 |= other.1;
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            *a = (*a).max(*b);
        }
    }

    /// The estimate, as Redis computes it (`hllCount`).
    fn count(&self) -> u64 {
        let m = REGISTERS as f64;
        let mut histo = [0u32; 64];
        for r in &self.0 {
            histo[usize::from(*r)] += 1;
        }
        let q = Q as usize;
        let mut z = m * tau((m - f64::from(histo[q + 1])) / m);
        for j in (1..=q).rev() {
            z += f64::from(histo[j]);
            z *= 0.5;
        }
        z += m * sigma(f64::from(histo[0]) / m);
        (ALPHA_INF * m * m / z).round() as u64
    }

    /// The stored form: sparse while it can be, the cached count marked
    /// stale (Redis marks it so on every write; only its PFCOUNT fills it).
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + 16);
        out.extend_from_slice(b"HYLL");
        out.extend_from_slice(&[SPARSE, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x80]);
        if let Some(body) = self.sparse().filter(|_| !self.1) {
            out.extend_from_slice(&body);
            return out;
        }
        out[4] = DENSE;
        out.resize(DENSE_BYTES, 0);
        for (i, v) in self.0.iter().enumerate() {
            dense_set(&mut out[HEADER..], i, *v);
        }
        out
    }

    /// The sparse opcodes, or `None` when a register is over 32 or the
    /// value would pass [`SPARSE_BYTES_MAX`].
    fn sparse(&self) -> Option<Vec<u8>> {
        let mut body = Vec::new();
        let mut i = 0;
        while i < REGISTERS {
            let v = self.0[i];
            let run = self.0[i..].iter().take_while(|r| **r == v).count();
            if v == 0 {
                let mut left = run;
                while left > 0 {
                    if left > 64 {
                        let n = left.min(REGISTERS);
                        body.push(0x40 | ((n - 1) >> 8) as u8);
                        body.push(((n - 1) & 0xff) as u8);
                        left -= n;
                    } else {
                        body.push((left - 1) as u8);
                        left = 0;
                    }
                }
            } else {
                if v > SPARSE_VALUE_MAX {
                    return None;
                }
                let mut left = run;
                while left > 0 {
                    let n = left.min(4);
                    body.push(0x80 | ((v - 1) << 2) | (n - 1) as u8);
                    left -= n;
                }
            }
            i += run;
            if HEADER + body.len() > SPARSE_BYTES_MAX {
                return None;
            }
        }
        Some(body)
    }
}

fn dense_get(body: &[u8], i: usize) -> u8 {
    let bit = i * 6;
    let (b, fb) = (bit / 8, bit % 8);
    let lo = u16::from(body[b]) >> fb;
    let hi = u16::from(body.get(b + 1).copied().unwrap_or(0)) << (8 - fb);
    ((lo | hi) & 63) as u8
}

fn dense_set(body: &mut [u8], i: usize, v: u8) {
    let bit = i * 6;
    let (b, fb) = (bit / 8, bit % 8);
    body[b] &= !(63u16 << fb) as u8;
    body[b] |= (u16::from(v) << fb) as u8;
    if fb > 2 {
        body[b + 1] &= !(63u16 >> (8 - fb)) as u8;
        body[b + 1] |= v >> (8 - fb);
    }
}

fn sigma(mut x: f64) -> f64 {
    if x == 1.0 {
        return f64::INFINITY;
    }
    let (mut y, mut z) = (1.0, x);
    loop {
        x *= x;
        let before = z;
        z += x * y;
        y += y;
        if z == before {
            return z;
        }
    }
}

fn tau(mut x: f64) -> f64 {
    if x == 0.0 || x == 1.0 {
        return 0.0;
    }
    let (mut y, mut z) = (1.0, 1.0 - x);
    loop {
        x = x.sqrt();
        let before = z;
        y *= 0.5;
        z -= (1.0 - x).powi(2) * y;
        if z == before {
            return z / 3.0;
        }
    }
}

impl Keyspace {
    /// The registers of the HLL at (db, key): `Ok(None)` when absent.
    fn hll(&self, db: u32, key: &[u8], now_ms: u64) -> Result<Option<Registers>, Out> {
        match self.string(db, key, now_ms)? {
            None => Ok(None),
            Some(s) => Registers::decode(s).map(Some).map_err(Out::err),
        }
    }

    pub(super) fn hll_read(&self, name: &str, db: u32, now_ms: u64, argv: &[&[u8]]) -> Option<Out> {
        if name != "pfcount" {
            return None;
        }
        let mut all = Registers::empty();
        for key in &argv[1..] {
            match self.hll(db, key, now_ms) {
                Ok(Some(r)) if argv.len() == 2 => return Some(Out::Int(r.count() as i64)),
                Ok(Some(r)) => all.merge(&r),
                Ok(None) => {}
                Err(e) => return Some(e),
            }
        }
        Some(Out::Int(all.count() as i64))
    }

    pub(super) fn hll_write(&mut self, name: &str, db: u32, now_ms: u64, argv: &[&[u8]]) -> Option<Out> {
        match name {
            "pfadd" => {
                let key = argv[1];
                // A dense value is updated in place, a register at a time,
                // as Redis does: no decoding of the 16384 registers per call.
                // The registers the elements would raise, each hashed once.
                let raised: Option<Vec<(usize, u8)>> = match self.string(db, key, now_ms) {
                    Ok(Some(s)) if s.len() == DENSE_BYTES && s.starts_with(b"HYLL") && s[4] == DENSE => Some(
                        argv[2..]
                            .iter()
                            .map(|e| register_of(e))
                            .filter(|&(i, v)| v > dense_get(&s[HEADER..], i))
                            .collect(),
                    ),
                    Ok(_) => None,
                    Err(e) => return Some(e),
                };
                if let Some(raised) = raised {
                    if raised.is_empty() {
                        return Some(Out::Int(0));
                    }
                    if let Some(Entry { value: Value::Str(s), .. }) = self.live_mut(db, key, now_ms) {
                        for (i, v) in raised {
                            if v > dense_get(&s[HEADER..], i) {
                                dense_set(&mut s[HEADER..], i, v);
                            }
                        }
                        s[15] |= 0x80;
                    }
                    return Some(Out::Int(1));
                }
                let (mut regs, created) = match self.hll(db, key, now_ms) {
                    Ok(Some(r)) => (r, false),
                    Ok(None) => (Registers::empty(), true),
                    Err(e) => return Some(e),
                };
                let changed = regs.add(argv[2..].iter().copied());
                if !changed && !created {
                    return Some(Out::Int(0));
                }
                let at = self.get(db, key, now_ms).and_then(|e| e.expire_at_ms);
                self.set_str(db, key, regs.encode(), at);
                Some(Out::Int(1))
            }
            "pfmerge" => {
                let mut all = Registers::empty();
                for key in &argv[1..] {
                    match self.hll(db, key, now_ms) {
                        Ok(Some(r)) => all.merge(&r),
                        Ok(None) => {}
                        Err(e) => return Some(e),
                    }
                }
                let at = self.get(db, argv[1], now_ms).and_then(|e| e.expire_at_ms);
                self.set_str(db, argv[1], all.encode(), at);
                Some(Out::ok())
            }
            _ => None,
        }
    }
}
