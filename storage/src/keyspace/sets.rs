//! Sets: SADD SMEMBERS and the rest of the family.

use std::collections::BTreeSet;

use super::keys::{read_rng, scan_opts, scan_page, scan_reply};
use super::zsets::random_picks;
use super::*;

type Set = BTreeSet<Vec<u8>>;

#[derive(Clone, Copy)]
enum Algebra {
    Inter,
    Union,
    Diff,
}

impl Keyspace {
    /// SINTER / SUNION / SDIFF over `keys`; every key is type-checked
    /// first, as Redis does.
    fn algebra(&self, db: u32, now_ms: u64, keys: &[&[u8]], op: Algebra) -> Result<Set, Out> {
        let sets: Vec<Option<&Set>> = keys.iter().map(|k| self.coll::<Set>(db, k, now_ms)).collect::<Result<_, _>>()?;
        let empty = Set::new();
        let mut it = sets.iter().map(|s| s.unwrap_or(&empty));
        let first = it.next().cloned().unwrap_or_default();
        Ok(match op {
            Algebra::Inter => {
                if sets.iter().any(Option::is_none) {
                    return Ok(Set::new());
                }
                it.fold(first, |acc, s| acc.intersection(s).cloned().collect())
            }
            Algebra::Union => it.fold(first, |mut acc, s| {
                acc.extend(s.iter().cloned());
                acc
            }),
            Algebra::Diff => it.fold(first, |acc, s| acc.difference(s).cloned().collect()),
        })
    }

    pub(super) fn set_read(&self, name: &str, db: u32, now_ms: u64, argv: &[&[u8]]) -> Option<Out> {
        let op = match name {
            "sinter" => Some(Algebra::Inter),
            "sunion" => Some(Algebra::Union),
            "sdiff" => Some(Algebra::Diff),
            _ => None,
        };
        if let Some(op) = op {
            return Some(match self.algebra(db, now_ms, &argv[1..], op) {
                Ok(s) => Out::Set(s.into_iter().map(Out::Bulk).collect()),
                Err(e) => e,
            });
        }
        if name == "sintercard" {
            return Some(self.sintercard(db, now_ms, argv));
        }
        if !matches!(name, "smembers" | "scard" | "sismember" | "smismember" | "srandmember" | "sscan") {
            return None;
        }
        let s = match self.coll::<Set>(db, argv[1], now_ms) {
            Ok(s) => s,
            Err(e) => return Some(e),
        };
        Some(match name {
            "smembers" => Out::Set(s.into_iter().flatten().map(|m| Out::Bulk(m.clone())).collect()),
            "scard" => Out::Int(s.map_or(0, |s| s.len() as i64)),
            "sismember" => Out::Int(i64::from(s.is_some_and(|s| s.contains(argv[2])))),
            "smismember" => {
                Out::Array(argv[2..].iter().map(|m| Out::Int(i64::from(s.is_some_and(|s| s.contains(*m))))).collect())
            }
            "srandmember" => {
                let Some(count) = argv.get(2) else {
                    return Some(match s {
                        None => Out::Nil,
                        Some(s) => {
                            let i = read_rng(now_ms, argv).below(s.len());
                            s.iter().nth(i).map_or(Out::Nil, |m| Out::Bulk(m.clone()))
                        }
                    });
                };
                if argv.len() > 3 {
                    return Some(Out::err(SYNTAX));
                }
                let Some(count) = string2ll(count) else { return Some(Out::err(NOT_INTEGER)) };
                let all: Vec<&Vec<u8>> = s.map(|s| s.iter().collect()).unwrap_or_default();
                match random_picks(all.len(), count, &mut read_rng(now_ms, argv)) {
                    Ok(picks) => Out::Array(picks.into_iter().map(|i| Out::Bulk(all[i].clone())).collect()),
                    Err(e) => e,
                }
            }
            "sscan" => {
                let opts = match scan_opts(argv, 2, false) {
                    Ok(o) => o,
                    Err(e) => return Some(e),
                };
                let (next, page) = scan_page(s.into_iter().flatten().map(|m| (m.as_slice(), ())), &opts);
                scan_reply(next, page.into_iter().map(|(m, _)| Out::Bulk(m.to_vec())).collect())
            }
            _ => return None,
        })
    }

    fn sintercard(&self, db: u32, now_ms: u64, argv: &[&[u8]]) -> Out {
        let numkeys = match string2ll(argv[1]) {
            Some(n) if n > 0 => n as usize,
            Some(_) => return Out::err("ERR numkeys should be greater than 0"),
            None => return Out::err("ERR numkeys should be greater than 0"),
        };
        if numkeys > argv.len() - 2 {
            return Out::err("ERR Number of keys can't be greater than number of args");
        }
        let limit = match card_limit(argv, 2 + numkeys) {
            Ok(l) => l,
            Err(e) => return e,
        };
        match self.algebra(db, now_ms, &argv[2..2 + numkeys], Algebra::Inter) {
            Ok(s) => Out::Int(if limit == 0 { s.len() } else { s.len().min(limit) } as i64),
            Err(e) => e,
        }
    }

    pub(super) fn set_write(&mut self, name: &str, db: u32, now_ms: u64, argv: &[&[u8]]) -> Option<Out> {
        let key = argv[1];
        let out = match name {
            "sadd" => match self.coll_mut::<Set>(db, key, now_ms, true) {
                Err(e) => e,
                Ok(s) => {
                    let s = s.expect("created");
                    let added: Vec<Vec<u8>> =
                        argv[2..].iter().filter(|m| s.insert(m.to_vec())).map(|m| m.to_vec()).collect();
                    let n = added.len();
                    for m in added {
                        self.note_elem(db, key, m);
                    }
                    Out::Int(n as i64)
                }
            },
            "srem" => match self.coll_mut::<Set>(db, key, now_ms, false) {
                Err(e) => e,
                Ok(None) => Out::Int(0),
                Ok(Some(s)) => {
                    let gone: Vec<Vec<u8>> = argv[2..].iter().filter(|m| s.remove(**m)).map(|m| m.to_vec()).collect();
                    let n = gone.len();
                    for m in gone {
                        self.note_elem(db, key, m);
                    }
                    Out::Int(n as i64)
                }
            },
            "spop" => {
                let count = match argv.get(2).map(|c| string2ll(c)) {
                    None => None,
                    Some(Some(n)) if n >= 0 => Some(n as usize),
                    Some(_) => return Some(Out::err(NOT_POSITIVE)),
                };
                if argv.len() > 3 {
                    return Some(Out::err(SYNTAX));
                }
                match self.coll_mut::<Set>(db, key, now_ms, false) {
                    Err(e) => e,
                    Ok(None) => {
                        if count.is_some() {
                            Out::Set(vec![])
                        } else {
                            Out::Nil
                        }
                    }
                    Ok(Some(s)) => {
                        let all: Vec<Vec<u8>> = s.iter().cloned().collect();
                        let mut rng = Rng::for_command(now_ms, argv, all.len() as u64);
                        let picks = random_picks(all.len(), count.unwrap_or(1) as i64, &mut rng).unwrap_or_default();
                        let popped: Vec<Vec<u8>> = picks.into_iter().map(|i| all[i].clone()).collect();
                        for m in &popped {
                            s.remove(m);
                        }
                        for m in &popped {
                            self.note_elem(db, key, m.clone());
                        }
                        match count {
                            None => popped.into_iter().next().map_or(Out::Nil, Out::Bulk),
                            Some(_) => Out::Set(popped.into_iter().map(Out::Bulk).collect()),
                        }
                    }
                }
            }
            "smove" => {
                let (src, dst, m) = (argv[1], argv[2], argv[3]);
                if let Err(e) = self.coll::<Set>(db, src, now_ms).and_then(|_| self.coll::<Set>(db, dst, now_ms)) {
                    return Some(e);
                }
                let moved = match self.coll_mut::<Set>(db, src, now_ms, false) {
                    Ok(Some(s)) => s.remove(m),
                    _ => false,
                };
                if moved {
                    self.note_elem(db, src, m.to_vec());
                    self.settle(db, src);
                    if let Ok(Some(d)) = self.coll_mut::<Set>(db, dst, now_ms, true) {
                        d.insert(m.to_vec());
                        self.note_elem(db, dst, m.to_vec());
                    }
                }
                return Some(Out::Int(i64::from(moved)));
            }
            "sinterstore" | "sunionstore" | "sdiffstore" => {
                let op = match name {
                    "sinterstore" => Algebra::Inter,
                    "sunionstore" => Algebra::Union,
                    _ => Algebra::Diff,
                };
                match self.algebra(db, now_ms, &argv[2..], op) {
                    Err(e) => e,
                    Ok(s) => {
                        let n = s.len();
                        self.remove(db, key, now_ms);
                        if n > 0 {
                            self.put(db, key, Entry { value: Value::Set(s), expire_at_ms: None });
                        }
                        Out::Int(n as i64)
                    }
                }
            }
            _ => return None,
        };
        self.settle(db, key);
        Some(out)
    }
}
