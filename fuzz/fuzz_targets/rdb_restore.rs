//! Fuzzes RESTORE's payload reader: arbitrary bytes never panic (the
//! CRC refuses most, so the bytes are also tried as an object with a
//! valid footer), and a value read from a payload DUMPs to a payload that
//! reads back to the same DUMP.
#![no_main]

use catga_storage::keyspace::rdb::{crc64, dump, restore, RDB_VERSION};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut footed = data.to_vec();
    footed.extend_from_slice(&RDB_VERSION.to_le_bytes());
    let crc = crc64(&footed);
    footed.extend_from_slice(&crc.to_le_bytes());
    for payload in [data, footed.as_slice()] {
        if let Ok(value) = restore(payload) {
            let ours = dump(&value);
            let back = restore(&ours).expect("a DUMP reads back");
            assert_eq!(dump(&back), ours);
        }
    }
});
