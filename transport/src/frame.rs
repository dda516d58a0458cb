//! Length-delimited, versioned frames with postcard bodies. Pure code.
//!
//! ```text
//! ┌────────────┬─────────┬──────────────────────┐
//! │ len: u32 BE│ ver: u8 │ postcard body (len-1)│
//! └────────────┴─────────┴──────────────────────┘
//! ```
//! `len` counts the version byte and the body. A frame longer than the
//! decoder's `frame_bytes_max` is refused before its body is buffered; a
//! frame of another version is refused, so peers of different protocol
//! versions fail loudly instead of misreading each other.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Version of the frame envelope and of every body encoded in it.
/// 2: Raft entries carry Redis commands packed (`catga_storage::Cmds`).
/// 3: Raft entries may be `Request::Once`, and snapshots carry its record.
/// 4: Raft entries may hold EVAL/SCRIPT (Lua run by every replica's
/// apply), and snapshots carry the script cache.
/// 5: openraft 0.10's RPCs (pre-vote; votes say whether they come from a
/// leader transfer; snapshots travel as pieces of one full snapshot).
pub const FRAME_VERSION: u8 = 5;
/// Bytes before the body: length and version.
pub const HEADER_BYTES: usize = 5;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLong { len: usize, max: usize },
    #[error("empty frame")]
    Empty,
    #[error("frame version {got}, expected {FRAME_VERSION}")]
    Version { got: u8 },
    #[error("malformed frame body: {0}")]
    Body(String),
}

/// Encodes `value` as one frame.
pub fn encode<T: Serialize>(value: &T) -> Result<Bytes, FrameError> {
    let mut out = BytesMut::with_capacity(64);
    encode_into(value, &mut out)?;
    Ok(out.freeze())
}

/// Wraps an already-encoded body in a frame.
pub fn frame_body(body: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(HEADER_BYTES + body.len());
    out.put_u32((body.len() + 1) as u32);
    out.put_u8(FRAME_VERSION);
    out.put_slice(body);
    out.freeze()
}

/// Appends one frame holding `value` to `out`. The body is serialized in
/// place and the length patched in afterwards, so nothing is copied
/// twice. On error `out` is left as it was.
pub fn encode_into<T: Serialize>(value: &T, out: &mut BytesMut) -> Result<(), FrameError> {
    let start = out.len();
    out.put_bytes(0, 4);
    out.put_u8(FRAME_VERSION);
    match postcard::serialize_with_flavor(value, Append(out)) {
        Ok(()) => {
            let len = (out.len() - start - 4) as u32;
            out[start..start + 4].copy_from_slice(&len.to_be_bytes());
            Ok(())
        }
        Err(e) => {
            out.truncate(start);
            Err(FrameError::Body(e.to_string()))
        }
    }
}

/// postcard output that appends to a `BytesMut` (slices are copied whole,
/// not byte by byte).
struct Append<'a>(&'a mut BytesMut);

impl postcard::ser_flavors::Flavor for Append<'_> {
    type Output = ();

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.put_u8(data);
        Ok(())
    }

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// Splits frames off a read buffer.
#[derive(Debug, Clone, Copy)]
pub struct Decoder {
    pub frame_bytes_max: usize,
}

impl Decoder {
    pub fn new(frame_bytes_max: usize) -> Self {
        Self { frame_bytes_max }
    }

    /// The next whole frame at the front of `data`: its body and the
    /// number of bytes the frame spans. `Ok(None)` means `data` holds only
    /// part of a frame; its declared length is checked as soon as the
    /// four length bytes are there, before any body is buffered.
    pub fn split<'a>(&self, data: &'a [u8]) -> Result<Option<(&'a [u8], usize)>, FrameError> {
        let Some(len) = self.declared_len(data)? else { return Ok(None) };
        if data.len() < 4 + len {
            return Ok(None);
        }
        let version = data[4];
        if version != FRAME_VERSION {
            return Err(FrameError::Version { got: version });
        }
        Ok(Some((&data[5..4 + len], 4 + len)))
    }

    /// The whole size (header included) of the frame `data` starts, once
    /// its length bytes are there.
    pub fn frame_len(&self, data: &[u8]) -> Result<Option<usize>, FrameError> {
        Ok(self.declared_len(data)?.map(|len| 4 + len))
    }

    fn declared_len(&self, data: &[u8]) -> Result<Option<usize>, FrameError> {
        if data.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([data[0], data[1], data[2], data[3]]) as usize;
        if len == 0 {
            return Err(FrameError::Empty);
        }
        if len > self.frame_bytes_max {
            return Err(FrameError::TooLong { len, max: self.frame_bytes_max });
        }
        Ok(Some(len))
    }

    /// Takes the next whole frame's body off the front of `buf`; `Ok(None)`
    /// means "read more".
    pub fn next_body(&self, buf: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        match self.split(buf)? {
            Some((_, total)) => {
                let mut frame = buf.split_to(total).freeze();
                frame.advance(HEADER_BYTES);
                Ok(Some(frame))
            }
            None => {
                if let Some(total) = self.frame_len(buf)? {
                    buf.reserve(total - buf.len());
                }
                Ok(None)
            }
        }
    }

    /// Takes and decodes the next frame.
    pub fn next<T: DeserializeOwned>(&self, buf: &mut BytesMut) -> Result<Option<T>, FrameError> {
        match self.next_body(buf)? {
            Some(body) => decode_body(&body).map(Some),
            None => Ok(None),
        }
    }
}

/// Turns a byte stream that arrives in chunks (a QUIC stream) into frame
/// bodies. Whole frames are handed over straight from the chunk; only a
/// frame cut by a chunk boundary is copied, into `partial`, and only its
/// own bytes.
#[derive(Debug)]
pub struct Reassembler {
    decoder: Decoder,
    partial: BytesMut,
}

impl Reassembler {
    pub fn new(frame_bytes_max: usize) -> Self {
        Self { decoder: Decoder::new(frame_bytes_max), partial: BytesMut::new() }
    }

    /// Calls `on_body` for every frame `chunk` completes, in order, and
    /// returns how many there were. After an error the stream is unusable.
    pub fn feed(&mut self, mut chunk: &[u8], mut on_body: impl FnMut(&[u8])) -> Result<usize, FrameError> {
        let mut n = 0;
        // Finish the cut frame first (its length prefix may be cut too).
        while !self.partial.is_empty() && !chunk.is_empty() {
            let want = match self.decoder.frame_len(&self.partial)? {
                Some(total) => total - self.partial.len(),
                None => 4 - self.partial.len(),
            };
            let take = want.min(chunk.len());
            self.partial.extend_from_slice(&chunk[..take]);
            chunk = &chunk[take..];
            if let Some((body, _)) = self.decoder.split(&self.partial)? {
                on_body(body);
                n += 1;
                self.partial.clear();
            }
        }
        if !self.partial.is_empty() {
            return Ok(n);
        }
        while let Some((body, used)) = self.decoder.split(chunk)? {
            on_body(body);
            n += 1;
            chunk = &chunk[used..];
        }
        if let Some(total) = self.decoder.frame_len(chunk)? {
            self.partial.reserve(total);
        }
        self.partial.extend_from_slice(chunk);
        Ok(n)
    }
}

/// Decodes a body returned by [`Decoder::next_body`].
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    postcard::from_bytes(body).map_err(|e| FrameError::Body(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    enum Sample {
        A { x: u64, s: String },
        B(Vec<u8>),
        C,
    }

    fn samples() -> Vec<Sample> {
        vec![
            Sample::A { x: 7, s: "hello".into() },
            Sample::B(vec![0; 300]),
            Sample::C,
            Sample::A { x: u64::MAX, s: String::new() },
        ]
    }

    fn stream() -> Vec<u8> {
        let mut out = BytesMut::new();
        for s in samples() {
            encode_into(&s, &mut out).unwrap();
        }
        out.to_vec()
    }

    fn decode_chunks(chunks: &[&[u8]]) -> Result<Vec<Sample>, FrameError> {
        let d = Decoder::new(1 << 20);
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for c in chunks {
            buf.extend_from_slice(c);
            while let Some(v) = d.next::<Sample>(&mut buf)? {
                got.push(v);
            }
        }
        Ok(got)
    }

    #[test]
    fn round_trip_whole_and_byte_by_byte() {
        let bytes = stream();
        assert_eq!(decode_chunks(&[&bytes]).unwrap(), samples());
        let chunks: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(decode_chunks(&chunks).unwrap(), samples());
    }

    #[test]
    fn split_at_every_position() {
        let bytes = stream();
        for at in 0..=bytes.len() {
            let (a, b) = bytes.split_at(at);
            assert_eq!(decode_chunks(&[a, b]).unwrap(), samples(), "split at {at}");
        }
    }

    #[test]
    fn encoded_and_wrapped_frames_decode_like_the_others() {
        let d = Decoder::new(1 << 20);
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&encode(&samples()[0]).unwrap());
        buf.extend_from_slice(&frame_body(&postcard::to_stdvec(&samples()[1]).unwrap()));
        assert_eq!(d.next::<Sample>(&mut buf).unwrap(), Some(samples()[0].clone()));
        assert_eq!(d.next::<Sample>(&mut buf).unwrap(), Some(samples()[1].clone()));
    }

    #[test]
    fn split_walks_a_buffer_without_copying() {
        let d = Decoder::new(1 << 20);
        let bytes = stream();
        let mut at = 0;
        let mut got = Vec::new();
        while let Some((body, used)) = d.split(&bytes[at..]).unwrap() {
            got.push(decode_body::<Sample>(body).unwrap());
            at += used;
        }
        assert_eq!(at, bytes.len());
        assert_eq!(got, samples());
        // A cut frame is "not yet", and its full size is known from the header.
        let first = d.frame_len(&bytes).unwrap().unwrap();
        assert_eq!(d.split(&bytes[..first - 1]).unwrap(), None);
        assert_eq!(d.split(&bytes[..3]).unwrap(), None);
    }

    fn reassemble(chunks: &[&[u8]]) -> Result<Vec<Sample>, FrameError> {
        let mut r = Reassembler::new(1 << 20);
        let mut got = Vec::new();
        for c in chunks {
            r.feed(c, |body| got.push(decode_body::<Sample>(body).unwrap()))?;
        }
        Ok(got)
    }

    #[test]
    fn reassembler_matches_the_decoder_however_the_stream_is_cut() {
        let bytes = stream();
        assert_eq!(reassemble(&[&bytes]).unwrap(), samples());
        let chunks: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(reassemble(&chunks).unwrap(), samples());
        for at in 0..=bytes.len() {
            for at2 in at..=bytes.len() {
                let parts = [&bytes[..at], &bytes[at..at2], &bytes[at2..]];
                assert_eq!(reassemble(&parts).unwrap(), samples(), "cut at {at} and {at2}");
            }
        }
    }

    #[test]
    fn reassembler_refuses_a_long_frame_in_a_cut_prefix() {
        let mut r = Reassembler::new(16);
        assert_eq!(r.feed(&[0, 0], |_| {}), Ok(0));
        assert_eq!(r.feed(&[1, 0, 5], |_| {}), Err(FrameError::TooLong { len: 256, max: 16 }));
    }

    #[test]
    fn encode_into_leaves_the_buffer_alone_on_error() {
        struct Fails;
        impl Serialize for Fails {
            fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
                Err(serde::ser::Error::custom("no"))
            }
        }
        let mut out = BytesMut::from(&b"kept"[..]);
        assert!(matches!(encode_into(&Fails, &mut out), Err(FrameError::Body(_))));
        assert_eq!(&out[..], b"kept");
    }

    #[test]
    fn refuses_long_frames_before_buffering_them() {
        let d = Decoder::new(16);
        let mut buf = BytesMut::from(&[0u8, 0, 1, 0][..]); // declares 256 bytes
        assert_eq!(d.next_body(&mut buf), Err(FrameError::TooLong { len: 256, max: 16 }));
    }

    #[test]
    fn refuses_other_versions_and_empty_frames() {
        let d = Decoder::new(1024);
        let mut buf = BytesMut::from(&[0u8, 0, 0, 2, 9, 0][..]);
        assert_eq!(d.next_body(&mut buf), Err(FrameError::Version { got: 9 }));
        let mut buf = BytesMut::from(&[0u8, 0, 0, 0][..]);
        assert_eq!(d.next_body(&mut buf), Err(FrameError::Empty));
    }

    #[test]
    fn malformed_body_is_an_error_not_a_panic() {
        let d = Decoder::new(1024);
        let mut buf = BytesMut::from(&[0u8, 0, 0, 3, FRAME_VERSION, 0xff, 0xff][..]);
        assert!(matches!(d.next::<Sample>(&mut buf), Err(FrameError::Body(_))));
    }
}
