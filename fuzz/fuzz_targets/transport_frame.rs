//! Fuzzes the transport frame decoder: arbitrary bytes never panic, never
//! buffer past the frame limit, and split input decodes like whole input.
#![no_main]

use bytes::BytesMut;
use catga_transport::frame::Decoder;
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

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    let input = &data[1..];
    let at = (data[0] as usize).min(input.len());
    let (a, b) = input.split_at(at);
    assert_eq!(run(&[a, b]), run(&[input]));
});
