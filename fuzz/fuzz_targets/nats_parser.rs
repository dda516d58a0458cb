//! Fuzzes the NATS parser: arbitrary bytes never panic, never produce an op
//! that spans more bytes than given, and give the same ops and error whether
//! fed whole or split in two at any position.
#![no_main]

use catga_node::nats::parser::{Parser, ParserLimits};
use libfuzzer_sys::fuzz_target;

fn run(chunks: &[&[u8]], limits: ParserLimits) -> (Vec<String>, Option<String>) {
    let mut parser = Parser::new(limits);
    let mut buf = Vec::new();
    let mut ops = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        let mut start = 0;
        loop {
            match parser.parse(&buf[start..]) {
                Ok(Some((op, n))) => {
                    assert!(n > 0 && start + n <= buf.len());
                    ops.push(format!("{op:?}"));
                    start += n;
                }
                Ok(None) => break,
                Err(e) => return (ops, Some(format!("{e:?}"))),
            }
        }
        buf.drain(..start);
        // Bounded buffering: a partial frame never exceeds one control line
        // plus one payload plus its CRLFs and the op name.
        assert!(buf.len() <= limits.control_line_max + limits.payload_max + 16 + chunk.len());
    }
    (ops, None)
}

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    let limits = ParserLimits { control_line_max: 64, payload_max: 256 };
    let split = data[0] as usize % data.len();
    let input = &data[1..];
    let whole = run(&[input], limits);
    let at = split.min(input.len());
    let (a, b) = input.split_at(at);
    assert_eq!(run(&[a, b], limits), whole);
});
