//! SORT and SORT_RO: the elements of a list, set or sorted set, ordered
//! by their own value or by other keys (`BY weight_*`, `BY obj_*->field`),
//! with LIMIT, GET patterns, ASC/DESC, ALPHA and STORE, as Redis 7.0 does
//! it: numbers compare as doubles (ties by the bytes), ALPHA compares bytes
//! (Redis's C locale), a BY pattern without `*` keeps the stored order.

use std::cmp::Ordering;

use super::*;

/// What SORT answers (`None` for a GET that found nothing) and its STORE
/// destination.
type Sorted<'a> = (Vec<Option<Vec<u8>>>, Option<&'a [u8]>);

/// SORT's options.
struct SortOpts<'a> {
    by: Option<&'a [u8]>,
    limit: Option<(i64, i64)>,
    get: Vec<&'a [u8]>,
    desc: bool,
    alpha: bool,
    store: Option<&'a [u8]>,
}

fn sort_opts<'a>(argv: &[&'a [u8]], read_only: bool) -> Result<SortOpts<'a>, Out> {
    let mut o = SortOpts { by: None, limit: None, get: Vec::new(), desc: false, alpha: false, store: None };
    let mut i = 2;
    while i < argv.len() {
        let left = argv.len() - i - 1;
        match upper(argv[i]).as_str() {
            "ASC" => o.desc = false,
            "DESC" => o.desc = true,
            "ALPHA" => o.alpha = true,
            "LIMIT" if left >= 2 => {
                o.limit = Some((int_arg(argv[i + 1])?, int_arg(argv[i + 2])?));
                i += 2;
            }
            "STORE" if left >= 1 && !read_only => {
                o.store = Some(argv[i + 1]);
                i += 1;
            }
            "BY" if left >= 1 => {
                o.by = Some(argv[i + 1]);
                i += 1;
            }
            "GET" if left >= 1 => {
                o.get.push(argv[i + 1]);
                i += 1;
            }
            _ => return Err(Out::err(SYNTAX)),
        }
        i += 1;
    }
    Ok(o)
}

impl Keyspace {
    /// The value a SORT pattern names for `element`: the first `*` replaced
    /// by it, then a string key, or a hash field after `->`; `#` is the
    /// element itself.
    fn sort_lookup(&self, db: u32, now_ms: u64, pattern: &[u8], element: &[u8]) -> Option<Vec<u8>> {
        if pattern == b"#" {
            return Some(element.to_vec());
        }
        let star = pattern.iter().position(|&b| b == b'*')?;
        let arrow = pattern[star + 1..]
            .windows(2)
            .position(|w| w == b"->")
            .map(|a| a + star + 1)
            .filter(|&a| a + 2 < pattern.len());
        let key_end = arrow.unwrap_or(pattern.len());
        let mut key = Vec::with_capacity(key_end + element.len());
        key.extend_from_slice(&pattern[..star]);
        key.extend_from_slice(element);
        key.extend_from_slice(&pattern[star + 1..key_end]);
        match (arrow, &self.get(db, &key, now_ms)?.value) {
            (None, Value::Str(s)) => Some(s.clone()),
            (Some(a), Value::Hash(h)) => h.get(&pattern[a + 2..]).cloned(),
            _ => None,
        }
    }

    /// SORT_RO, and SORT without STORE.
    pub(super) fn sort_read(&self, name: &str, db: u32, now_ms: u64, argv: &[&[u8]]) -> Option<Out> {
        if name != "sort_ro" {
            return None;
        }
        Some(match self.sorted(db, now_ms, argv, true) {
            Ok((values, _)) => Out::Array(values.into_iter().map(|v| v.map_or(Out::Nil, Out::Bulk)).collect()),
            Err(e) => e,
        })
    }

    /// SORT, with STORE or without.
    pub(super) fn sort_write(&mut self, name: &str, db: u32, now_ms: u64, argv: &[&[u8]]) -> Option<Out> {
        if name != "sort" {
            return None;
        }
        let (values, store) = match self.sorted(db, now_ms, argv, false) {
            Ok(r) => r,
            Err(e) => return Some(e),
        };
        let Some(dest) = store else {
            return Some(Out::Array(values.into_iter().map(|v| v.map_or(Out::Nil, Out::Bulk)).collect()));
        };
        let n = values.len() as i64;
        self.remove(db, dest, now_ms);
        if n > 0 {
            let items = values.into_iter().map(Option::unwrap_or_default).collect();
            self.put(db, dest, Entry { value: Value::List(Box::new(List { base: 0, items })), expire_at_ms: None });
        }
        Some(Out::Int(n))
    }

    /// What SORT answers (the values, in order; `None` for a GET that
    /// found nothing) and its STORE destination.
    fn sorted<'a>(&self, db: u32, now_ms: u64, argv: &[&'a [u8]], read_only: bool) -> Result<Sorted<'a>, Out> {
        let opts = sort_opts(argv, read_only)?;
        let elements: Vec<Vec<u8>> = match self.get(db, argv[1], now_ms).map(|e| &e.value) {
            None => Vec::new(),
            Some(Value::List(l)) => l.items.iter().cloned().collect(),
            Some(Value::Set(s)) => s.iter().cloned().collect(),
            Some(Value::ZSet(z)) => z.iter().map(|(m, _)| m.to_vec()).collect(),
            Some(_) => return Err(Out::err(WRONGTYPE)),
        };
        let no_sort = opts.by.is_some_and(|p| !p.contains(&b'*'));
        // Unsorted, elements keep the stored order (a set's is by bytes, as
        // Redis 7 orders one then; a sorted set's by score), and DESC
        // reverses it.
        let mut elements = elements;
        if no_sort && opts.desc {
            elements.reverse();
        }
        let mut keyed: Vec<(Vec<u8>, Option<Vec<u8>>)> = elements
            .into_iter()
            .map(|e| {
                let by = match opts.by {
                    Some(p) if !no_sort => self.sort_lookup(db, now_ms, p, &e),
                    _ => None,
                };
                (e, by)
            })
            .collect();
        if !no_sort {
            let uses_by = opts.by.is_some();
            if opts.alpha {
                keyed.sort_by(|(a, ka), (b, kb)| if uses_by { ka.cmp(kb) } else { a.cmp(b) });
            } else {
                let mut scored = Vec::with_capacity(keyed.len());
                for (e, by) in keyed {
                    let text = if uses_by { by.as_deref() } else { Some(e.as_slice()) };
                    let score = match text {
                        None => 0.0,
                        Some(t) => match sort_number(t) {
                            Some(v) => v,
                            None => return Err(Out::err("ERR One or more scores can't be converted into double")),
                        },
                    };
                    scored.push((e, score));
                }
                scored.sort_by(|(a, sa), (b, sb)| sa.partial_cmp(sb).unwrap_or(Ordering::Equal).then_with(|| a.cmp(b)));
                keyed = scored.into_iter().map(|(e, _)| (e, None)).collect();
            }
            if opts.desc {
                keyed.reverse();
            }
        }
        let (start, count) = match opts.limit {
            None => (0, keyed.len()),
            Some((offset, count)) => {
                let start = offset.max(0) as usize;
                let count = if count < 0 { keyed.len() } else { count as usize };
                (start.min(keyed.len()), count)
            }
        };
        let picked = keyed.into_iter().skip(start).take(count).map(|(e, _)| e);
        let mut out: Vec<Option<Vec<u8>>> = Vec::new();
        for e in picked {
            if opts.get.is_empty() {
                out.push(Some(e));
            } else {
                for p in &opts.get {
                    out.push(self.sort_lookup(db, now_ms, p, &e));
                }
            }
        }
        Ok((out, opts.store))
    }
}

/// A SORT score: a double as Redis's `strtod` reads it, whole string.
fn sort_number(b: &[u8]) -> Option<f64> {
    let s = std::str::from_utf8(b).ok()?;
    let v: f64 = match s.to_ascii_lowercase().as_str() {
        "inf" | "+inf" | "infinity" | "+infinity" => f64::INFINITY,
        "-inf" | "-infinity" => f64::NEG_INFINITY,
        t => t.parse().ok()?,
    };
    (!v.is_nan()).then_some(v)
}
