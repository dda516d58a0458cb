//! Fuzzes the transport frame decoder and the link reader's reassembler:
//! arbitrary bytes never panic, never buffer past the frame limit, split
//! input decodes like whole input, and both agree.
#![no_main]

use bytes::BytesMut;
use catga_transport::frame::{Decoder, Reassembler};
use libfuzzer_sys::fuzz_target;

fn run(chunks: &[&[u8]]) -> (Vec<Vec<u8>>, Option<String>) {
    let decoder = Decoder::new(256);
    let mut buf = BytesMut::new();
    let mut bodies = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            match decoder.next_body(&mut buf) {
                Ok(Some(body)) => {
                    assert!(body.len() < 256);
                    bodies.push(body.to_vec());
                }
                Ok(None) => break,
                Err(e) => return (bodies, Some(e.to_string())),
            }
        }
    }
    (bodies, None)
}

fn reassemble(chunks: &[&[u8]]) -> (Vec<Vec<u8>>, Option<String>) {
    let mut r = Reassembler::new(256);
    let mut bodies = Vec::new();
    for chunk in chunks {
        if let Err(e) = r.feed(chunk, |body| bodies.push(body.to_vec())) {
            return (bodies, Some(e.to_string()));
        }
    }
    (bodies, None)
}

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    let input = &data[1..];
    let at = (data[0] as usize).min(input.len());
    let (a, b) = input.split_at(at);
    let whole = run(&[input]);
    assert_eq!(run(&[a, b]), whole);
    assert_eq!(reassemble(&[a, b]), whole);
});
