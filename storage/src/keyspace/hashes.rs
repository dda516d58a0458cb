//! Hashes: HSET HGET and the rest of the family.

use std::collections::BTreeMap;

use super::keys::{read_rng, scan_opts, scan_page, scan_reply};
use super::zsets::random_picks;
use super::*;

type Hash = BTreeMap<Vec<u8>, Vec<u8>>;

impl Keyspace {
    pub(super) fn hash_read(&self, name: &str, db: u32, now_ms: u64, argv: &[&[u8]]) -> Option<Out> {
        if !name.starts_with('h') {
            return None;
        }
        let h = match self.coll::<Hash>(db, argv[1], now_ms) {
            Ok(h) => h,
            Err(e) => return Some(e),
        };
        Some(match name {
            "hget" => h.and_then(|h| h.get(argv[2])).map_or(Out::Nil, |v| Out::Bulk(v.clone())),
            "hmget" => Out::Array(
                argv[2..]
                    .iter()
                    .map(|f| h.and_then(|h| h.get(*f)).map_or(Out::Nil, |v| Out::Bulk(v.clone())))
                    .collect(),
            ),
            "hgetall" => {
                Out::Map(h.into_iter().flatten().map(|(f, v)| (Out::Bulk(f.clone()), Out::Bulk(v.clone()))).collect())
            }
            "hexists" => Out::Int(i64::from(h.is_some_and(|h| h.contains_key(argv[2])))),
            "hlen" => Out::Int(h.map_or(0, |h| h.len() as i64)),
            "hkeys" => Out::bulks(h.into_iter().flat_map(|h| h.keys())),
            "hvals" => Out::bulks(h.into_iter().flat_map(|h| h.values())),
            "hstrlen" => Out::Int(h.and_then(|h| h.get(argv[2])).map_or(0, |v| v.len() as i64)),
            "hrandfield" => {
                let Some(count) = argv.get(2) else {
                    return Some(match h {
                        None => Out::Nil,
                        Some(h) => {
                            let i = read_rng(now_ms, argv).below(h.len());
                            h.keys().nth(i).map_or(Out::Nil, |f| Out::Bulk(f.clone()))
                        }
                    });
                };
                let withvalues = match argv.get(3) {
                    None => false,
                    Some(o) if argv.len() == 4 && upper(o) == "WITHVALUES" => true,
                    Some(_) => return Some(Out::err(SYNTAX)),
                };
                let Some(count) = string2ll(count) else { return Some(Out::err(NOT_INTEGER)) };
                let all: Vec<(&Vec<u8>, &Vec<u8>)> = h.map(|h| h.iter().collect()).unwrap_or_default();
                let picks = match random_picks(all.len(), count, &mut read_rng(now_ms, argv)) {
                    Ok(p) => p,
                    Err(e) => return Some(e),
                };
                let chosen = picks.into_iter().map(|i| (Out::Bulk(all[i].0.clone()), Out::Bulk(all[i].1.clone())));
                if withvalues {
                    Out::Pairs(chosen.collect())
                } else {
                    Out::Array(chosen.map(|(f, _)| f).collect())
                }
            }
            "hscan" => {
                let opts = match scan_opts(argv, 2, false) {
                    Ok(o) => o,
                    Err(e) => return Some(e),
                };
                let (next, page) = scan_page(h.into_iter().flatten().map(|(f, v)| (f.as_slice(), v)), &opts);
                scan_reply(
                    next,
                    page.into_iter().flat_map(|(f, v)| [Out::Bulk(f.to_vec()), Out::Bulk(v.clone())]).collect(),
                )
            }
            _ => return None,
        })
    }

    pub(super) fn hash_write(&mut self, name: &str, db: u32, now_ms: u64, argv: &[&[u8]]) -> Option<Out> {
        let key = argv[1];
        let out = match name {
            "hset" | "hmset" => {
                if !argv.len().is_multiple_of(2) {
                    return Some(Out::Err(format!("ERR wrong number of arguments for '{name}' command")));
                }
                let h = match self.coll_mut::<Hash>(db, key, now_ms, true) {
                    Ok(h) => h.expect("created"),
                    Err(e) => return Some(e),
                };
                let mut added = 0;
                for p in argv[2..].chunks(2) {
                    if h.insert(p[0].to_vec(), p[1].to_vec()).is_none() {
                        added += 1;
                    }
                }
                for p in argv[2..].chunks(2) {
                    self.note_elem(db, key, p[0].to_vec());
                }
                if name == "hset" {
                    Out::Int(added)
                } else {
                    Out::ok()
                }
            }
            "hsetnx" => match self.coll_mut::<Hash>(db, key, now_ms, true) {
                Err(e) => e,
                Ok(h) => {
                    let h = h.expect("created");
                    if h.contains_key(argv[2]) {
                        Out::Int(0)
                    } else {
                        h.insert(argv[2].to_vec(), argv[3].to_vec());
                        self.note_elem(db, key, argv[2].to_vec());
                        Out::Int(1)
                    }
                }
            },
            "hdel" => match self.coll_mut::<Hash>(db, key, now_ms, false) {
                Err(e) => e,
                Ok(None) => Out::Int(0),
                Ok(Some(h)) => {
                    let gone: Vec<Vec<u8>> =
                        argv[2..].iter().filter(|f| h.remove(**f).is_some()).map(|f| f.to_vec()).collect();
                    let n = gone.len();
                    for f in gone {
                        self.note_elem(db, key, f);
                    }
                    Out::Int(n as i64)
                }
            },
            "hincrby" => {
                let Some(by) = string2ll(argv[3]) else { return Some(Out::err(NOT_INTEGER)) };
                match self.coll::<Hash>(db, key, now_ms) {
                    Err(e) => e,
                    Ok(h) => {
                        let cur = match h.and_then(|h| h.get(argv[2])) {
                            None => 0,
                            Some(v) => match string2ll(v) {
                                Some(n) => n,
                                None => return Some(Out::err("ERR hash value is not an integer")),
                            },
                        };
                        match cur.checked_add(by) {
                            None => Out::err("ERR increment or decrement would overflow"),
                            Some(next) => {
                                self.hash_put(db, key, now_ms, argv[2], next.to_string().into_bytes());
                                Out::Int(next)
                            }
                        }
                    }
                }
            }
            "hincrbyfloat" => {
                let Some(by) = float(argv[3]) else { return Some(Out::err(NOT_FLOAT)) };
                if by.is_infinite() {
                    return Some(Out::err("ERR value is NaN or Infinity"));
                }
                match self.coll::<Hash>(db, key, now_ms) {
                    Err(e) => e,
                    Ok(h) => {
                        let cur = match h.and_then(|h| h.get(argv[2])) {
                            None => 0.0,
                            Some(v) => match float(v) {
                                Some(n) => n,
                                None => return Some(Out::err("ERR hash value is not a float")),
                            },
                        };
                        let next = cur + by;
                        if next.is_nan() || next.is_infinite() {
                            Out::err("ERR increment would produce NaN or Infinity")
                        } else {
                            let text = format_double(next).into_bytes();
                            self.hash_put(db, key, now_ms, argv[2], text.clone());
                            Out::Bulk(text)
                        }
                    }
                }
            }
            _ => return None,
        };
        self.settle(db, key);
        Some(out)
    }

    /// Sets one field (the key's type already checked).
    fn hash_put(&mut self, db: u32, key: &[u8], now_ms: u64, field: &[u8], value: Vec<u8>) {
        if let Ok(Some(h)) = self.coll_mut::<Hash>(db, key, now_ms, true) {
            h.insert(field.to_vec(), value);
            self.note_elem(db, key, field.to_vec());
        }
    }
}
