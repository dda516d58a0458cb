//! GEO commands: points kept in a sorted set, each member's score its
//! 52-bit geohash, as Redis 7.0 keeps them (so GEOADD is ZADD, and every
//! sorted-set command works on a geo key).
//!
//! The search visits the same cells in the same order as Redis (the cell
//! of the centre at a step sized to the radius, then its eight
//! neighbours, some dropped when they cannot hold a match, each scanned
//! by score range), so unsorted results and `ANY` come back in Redis's
//! order; coordinates decode to the centre of the member's cell and
//! print with 17 decimals trimmed, distances with 4.
use super::zsets::ZSet;
use super::*;

/// Latitudes a geohash can hold (Web Mercator's limits).
const LAT_MIN: f64 = -85.05112878;
const LAT_MAX: f64 = 85.05112878;
const LON_MIN: f64 = -180.0;
const LON_MAX: f64 = 180.0;
/// Bits per coordinate in a stored score (52 bits in all).
const STEP_MAX: u8 = 26;
/// The mean Earth radius Redis measures with (metres).
const EARTH_RADIUS: f64 = 6372797.560856;
/// Half the Web Mercator world's width (metres): the widest cell.
const MERCATOR_MAX: f64 = 20037726.37;

const UNIT_ERR: &str = "ERR unsupported unit provided. please use M, KM, FT, MI";
const NO_MEMBER: &str = "ERR could not decode requested zset member";

/// A geohash of `step` bits per coordinate: latitude in the even bits,
/// longitude in the odd ones.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Hash {
    bits: u64,
    step: u8,
}

/// A cell: its longitude and latitude ranges.
struct Cell {
    lon: (f64, f64),
    lat: (f64, f64),
}

fn rad(deg: f64) -> f64 {
    deg * (std::f64::consts::PI / 180.0)
}

fn deg(rad: f64) -> f64 {
    rad / (std::f64::consts::PI / 180.0)
}

/// `v`'s 32 bits moved to the even bit positions of a u64.
fn spread(v: u32) -> u64 {
    let mut x = u64::from(v);
    for (shift, mask) in [
        (16, 0x0000_FFFF_0000_FFFF),
        (8, 0x00FF_00FF_00FF_00FF),
        (4, 0x0F0F_0F0F_0F0F_0F0F),
        (2, 0x3333_3333_3333_3333),
        (1, 0x5555_5555_5555_5555),
    ] {
        x = (x | (x << shift)) & mask;
    }
    x
}

/// The even bits of `x`, packed into 32.
fn squash(x: u64) -> u32 {
    let mut x = x & 0x5555_5555_5555_5555;
    for (shift, mask) in [
        (1, 0x3333_3333_3333_3333),
        (2, 0x0F0F_0F0F_0F0F_0F0F),
        (4, 0x00FF_00FF_00FF_00FF),
        (8, 0x0000_FFFF_0000_FFFF),
        (16, 0x0000_0000_FFFF_FFFF),
    ] {
        x = (x | (x >> shift)) & mask;
    }
    x as u32
}

/// The hash of (lon, lat) in the given ranges; `None` outside them.
fn encode(lon_range: (f64, f64), lat_range: (f64, f64), lon: f64, lat: f64, step: u8) -> Option<Hash> {
    let inside = |v: f64, (lo, hi): (f64, f64)| v >= lo && v <= hi;
    if !(inside(lon, (LON_MIN, LON_MAX)) && inside(lat, (LAT_MIN, LAT_MAX))) {
        return None;
    }
    if !(inside(lon, lon_range) && inside(lat, lat_range)) {
        return None;
    }
    let cells = (1u64 << step) as f64;
    let lat_off = (lat - lat_range.0) / (lat_range.1 - lat_range.0) * cells;
    let lon_off = (lon - lon_range.0) / (lon_range.1 - lon_range.0) * cells;
    Some(Hash { bits: spread(lat_off as u32) | (spread(lon_off as u32) << 1), step })
}

fn encode_wgs84(lon: f64, lat: f64, step: u8) -> Option<Hash> {
    encode((LON_MIN, LON_MAX), (LAT_MIN, LAT_MAX), lon, lat, step)
}

/// The cell `h` names in the ranges Redis stores hashes in.
fn cell(h: Hash) -> Cell {
    let (lat_i, lon_i) = (squash(h.bits), squash(h.bits >> 1));
    let cells = (1u64 << h.step) as f64;
    let at = |i: u32, (lo, hi): (f64, f64)| {
        (lo + (f64::from(i) / cells) * (hi - lo), lo + ((f64::from(i) + 1.0) / cells) * (hi - lo))
    };
    Cell { lon: at(lon_i, (LON_MIN, LON_MAX)), lat: at(lat_i, (LAT_MIN, LAT_MAX)) }
}

/// The point a stored score stands for: its cell's centre.
fn point(score: f64) -> (f64, f64) {
    let c = cell(Hash { bits: score as u64, step: STEP_MAX });
    let lon = ((c.lon.0 + c.lon.1) / 2.0).clamp(LON_MIN, LON_MAX);
    let lat = ((c.lat.0 + c.lat.1) / 2.0).clamp(LAT_MIN, LAT_MAX);
    (lon, lat)
}

/// `h` moved one cell east (`d` > 0) or west along longitude (odd bits),
/// or north or south along latitude (even bits), wrapping.
fn moved(h: Hash, odd: bool, d: i8) -> Hash {
    let (mine, other) = if odd {
        (0xAAAA_AAAA_AAAA_AAAAu64, 0x5555_5555_5555_5555u64)
    } else {
        (0x5555_5555_5555_5555, 0xAAAA_AAAA_AAAA_AAAA)
    };
    let used = 64 - u32::from(h.step) * 2;
    let (mut v, rest) = (h.bits & mine, h.bits & other);
    let gaps = other >> used;
    if d > 0 {
        v = v.wrapping_add(gaps + 1);
    } else {
        v = (v | gaps).wrapping_sub(gaps + 1);
    }
    Hash { bits: (v & (mine >> used)) | rest, step: h.step }
}

/// Great-circle distance in metres (haversine, Redis's radius).
fn distance(lon1: f64, lat1: f64, lon2: f64, lat2: f64) -> f64 {
    let v = ((rad(lon2) - rad(lon1)) / 2.0).sin();
    if v == 0.0 {
        return lat_distance(lat1, lat2);
    }
    let (lat1r, lat2r) = (rad(lat1), rad(lat2));
    let u = ((lat2r - lat1r) / 2.0).sin();
    let a = u * u + lat1r.cos() * lat2r.cos() * v * v;
    2.0 * EARTH_RADIUS * a.sqrt().asin()
}

fn lat_distance(lat1: f64, lat2: f64) -> f64 {
    EARTH_RADIUS * (rad(lat2) - rad(lat1)).abs()
}

/// What a search covers, around (lon, lat), in the request's unit.
#[derive(Clone, Copy)]
enum Shape {
    Radius(f64),
    Box { width: f64, height: f64 },
}

struct Search {
    lon: f64,
    lat: f64,
    shape: Shape,
    /// Metres per unit of the request.
    unit: f64,
}

impl Search {
    /// The distance to (lon, lat) in metres, when it lies inside the
    /// shape. (Every product and quotient below is the one Redis
    /// computes, in its order, so borderline points fall the same way.)
    fn within(&self, lon: f64, lat: f64) -> Option<f64> {
        match self.shape {
            Shape::Radius(r) => Some(distance(self.lon, self.lat, lon, lat)).filter(|d| *d <= r * self.unit),
            Shape::Box { width, height } => {
                let (w, h) = (width * self.unit, height * self.unit);
                if lat_distance(lat, self.lat) > h / 2.0 || distance(lon, lat, self.lon, lat) > w / 2.0 {
                    return None;
                }
                Some(distance(self.lon, self.lat, lon, lat))
            }
        }
    }

    /// The cells to scan, in Redis's order: the centre's cell, then north,
    /// south, east, west, north-east, north-west, south-east, south-west
    /// (`None`: not needed).
    fn cells(&self) -> [Option<Hash>; 9] {
        let (half_w, half_h) = match self.shape {
            Shape::Radius(r) => (self.unit * r, self.unit * r),
            Shape::Box { width, height } => (self.unit * (width / 2.0), self.unit * (height / 2.0)),
        };
        let lat_delta = deg(half_h / EARTH_RADIUS);
        let lon_top = deg(half_w / EARTH_RADIUS / rad(self.lat + lat_delta).cos());
        let lon_bottom = deg(half_w / EARTH_RADIUS / rad(self.lat - lat_delta).cos());
        let lon_delta = if self.lat < 0.0 { lon_bottom } else { lon_top };
        let (min_lon, max_lon) = (self.lon - lon_delta, self.lon + lon_delta);
        let (min_lat, max_lat) = (self.lat - lat_delta, self.lat + lat_delta);
        let reach = match self.shape {
            Shape::Radius(r) => r,
            Shape::Box { width, height } => ((width / 2.0) * (width / 2.0) + (height / 2.0) * (height / 2.0)).sqrt(),
        } * self.unit;
        let mut step = steps_for(reach, self.lat);
        let around = |step: u8| {
            let h = encode_wgs84(self.lon, self.lat, step).unwrap_or(Hash { bits: 0, step });
            let n = [
                moved(h, false, 1),
                moved(h, false, -1),
                moved(h, true, 1),
                moved(h, true, -1),
                moved(moved(h, true, 1), false, 1),
                moved(moved(h, true, -1), false, 1),
                moved(moved(h, true, 1), false, -1),
                moved(moved(h, true, -1), false, -1),
            ];
            (h, n)
        };
        let (mut h, mut n) = around(step);
        // A neighbour too close to the edge of the area to cover it: one
        // step bigger.
        let short = cell(n[0]).lat.1 < max_lat
            || cell(n[1]).lat.0 > min_lat
            || cell(n[2]).lon.1 < max_lon
            || cell(n[3]).lon.0 > min_lon;
        if step > 1 && short {
            step -= 1;
            (h, n) = around(step);
        }
        let mut out =
            [Some(h), Some(n[0]), Some(n[1]), Some(n[2]), Some(n[3]), Some(n[4]), Some(n[5]), Some(n[6]), Some(n[7])];
        if step >= 2 {
            let area = cell(h);
            // Indices into `out`: N 1, S 2, E 3, W 4, NE 5, NW 6, SE 7, SW 8.
            let mut drop = |which: [usize; 3]| which.iter().for_each(|i| out[*i] = None);
            if area.lat.0 < min_lat {
                drop([2, 8, 7]);
            }
            if area.lat.1 > max_lat {
                drop([1, 5, 6]);
            }
            if area.lon.0 < min_lon {
                drop([4, 8, 6]);
            }
            if area.lon.1 > max_lon {
                drop([3, 7, 5]);
            }
        }
        out
    }
}

/// Bits per coordinate for a search reaching `metres` around latitude `lat`.
fn steps_for(metres: f64, lat: f64) -> u8 {
    if metres == 0.0 {
        return 26;
    }
    let mut step: i32 = 1;
    let mut m = metres;
    while m < MERCATOR_MAX {
        m *= 2.0;
        step += 1;
    }
    step -= 2;
    if !(-66.0..=66.0).contains(&lat) {
        step -= 1;
        if !(-80.0..=80.0).contains(&lat) {
            step -= 1;
        }
    }
    step.clamp(1, 26) as u8
}

/// The score range [min, max) of the members inside cell `h`.
fn score_range(h: Hash) -> (f64, f64) {
    let align = |bits: u64| (bits << (52 - u32::from(h.step) * 2)) as f64;
    (align(h.bits), align(h.bits + 1))
}

/// A member found by a search.
struct Found {
    member: Vec<u8>,
    score: f64,
    lon: f64,
    lat: f64,
    dist: f64,
}

/// The members of `z` inside the search, in Redis's scan order; with a
/// `limit` (ANY), stops once it has that many.
fn scan(z: &ZSet, s: &Search, limit: usize) -> Vec<Found> {
    let full = |found: &Vec<Found>| limit > 0 && found.len() >= limit;
    let mut found = Vec::new();
    let cells = s.cells();
    let mut last = 0;
    for (i, c) in cells.iter().enumerate() {
        let Some(c) = c else { continue };
        if last != 0 && cells[last] == Some(*c) {
            continue;
        }
        if full(&found) {
            break;
        }
        let (min, max) = score_range(*c);
        for (m, score) in z.score_range(min, max) {
            let (lon, lat) = point(score);
            if let Some(dist) = s.within(lon, lat) {
                found.push(Found { member: m.to_vec(), score, lon, lat, dist });
            }
            if full(&found) {
                break;
            }
        }
        last = i;
    }
    found
}

/// A coordinate as Redis prints one: 17 decimals, trailing zeros cut.
fn human(v: f64) -> Vec<u8> {
    let mut s = format!("{v:.17}");
    if s.contains('.') {
        let kept = s.trim_end_matches('0').trim_end_matches('.').len();
        s.truncate(kept);
    }
    if s == "-0" {
        s = "0".into();
    }
    s.into_bytes()
}

/// A distance as Redis prints one: 4 decimals, rounded half to even.
fn dist_text(d: f64) -> Vec<u8> {
    let scaled = (d * 10_000.0).round_ties_even() as i64;
    let (sign, v) = if scaled < 0 { ("-", scaled.unsigned_abs()) } else { ("", scaled as u64) };
    format!("{sign}{}.{:04}", v / 10_000, v % 10_000).into_bytes()
}

/// Metres per unit.
fn unit(u: &[u8]) -> Result<f64, Out> {
    match u.to_ascii_lowercase().as_slice() {
        b"m" => Ok(1.0),
        b"km" => Ok(1000.0),
        b"ft" => Ok(0.3048),
        b"mi" => Ok(1609.34),
        _ => Err(Out::err(UNIT_ERR)),
    }
}

/// (lon, lat) from two arguments, in the range a geohash holds.
fn lon_lat(lon: &[u8], lat: &[u8]) -> Result<(f64, f64), Out> {
    let (Some(x), Some(y)) = (float(lon), float(lat)) else { return Err(Out::err(NOT_FLOAT)) };
    if !(LON_MIN..=LON_MAX).contains(&x) || !(LAT_MIN..=LAT_MAX).contains(&y) {
        return Err(Out::Err(format!("ERR invalid longitude,latitude pair {x:.6},{y:.6}")));
    }
    Ok((x, y))
}

/// A radius and its unit: the shape, and metres per unit.
fn radius(n: &[u8], u: &[u8]) -> Result<(Shape, f64), Out> {
    let Some(r) = float(n) else { return Err(Out::err("ERR need numeric radius")) };
    if r < 0.0 {
        return Err(Out::err("ERR radius cannot be negative"));
    }
    Ok((Shape::Radius(r), unit(u)?))
}

/// Which of the search commands runs.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// GEORADIUS(_RO): around coordinates.
    Coords { store_ok: bool },
    /// GEORADIUSBYMEMBER(_RO): around a member.
    Member { store_ok: bool },
    /// GEOSEARCH, GEOSEARCHSTORE (with its destination first).
    Search { store: bool },
}

/// A parsed search request.
struct Request<'a> {
    store: Option<&'a [u8]>,
    store_dist: bool,
    with_dist: bool,
    with_hash: bool,
    with_coord: bool,
    count: usize,
    any: bool,
    /// Nearest first (`Some(true)`), farthest first, or scan order.
    asc: Option<bool>,
}

impl Keyspace {
    pub(super) fn geo_read(&self, name: &str, db: u32, now_ms: u64, argv: &[&[u8]]) -> Option<Out> {
        Some(match name {
            "geopos" | "geohash" => {
                let z = match self.coll::<ZSet>(db, argv[1], now_ms) {
                    Err(e) => return Some(e),
                    Ok(z) => z,
                };
                let items = argv[2..].iter().map(|m| match z.and_then(|z| z.score(m)) {
                    None if name == "geopos" => Out::NilArray,
                    None => Out::Nil,
                    Some(score) => {
                        let (lon, lat) = point(score);
                        if name == "geopos" {
                            Out::Array(vec![Out::Bulk(human(lon)), Out::Bulk(human(lat))])
                        } else {
                            Out::Bulk(geohash_text(lon, lat))
                        }
                    }
                });
                Out::Array(items.collect())
            }
            "geodist" => {
                let per = match argv.len() {
                    4 => 1.0,
                    5 => match unit(argv[4]) {
                        Ok(u) => u,
                        Err(e) => return Some(e),
                    },
                    _ => return Some(Out::err(SYNTAX)),
                };
                let z = match self.coll::<ZSet>(db, argv[1], now_ms) {
                    Err(e) => return Some(e),
                    Ok(None) => return Some(Out::Nil),
                    Ok(Some(z)) => z,
                };
                match (z.score(argv[2]), z.score(argv[3])) {
                    (Some(a), Some(b)) => {
                        let ((x1, y1), (x2, y2)) = (point(a), point(b));
                        Out::Bulk(dist_text(distance(x1, y1, x2, y2) / per))
                    }
                    _ => Out::Nil,
                }
            }
            "georadius_ro" => self.geo_search(db, now_ms, argv, Kind::Coords { store_ok: false }),
            "georadiusbymember_ro" => self.geo_search(db, now_ms, argv, Kind::Member { store_ok: false }),
            "geosearch" => self.geo_search(db, now_ms, argv, Kind::Search { store: false }),
            _ => return None,
        })
    }

    pub(super) fn geo_write(&mut self, name: &str, db: u32, now_ms: u64, argv: &[&[u8]]) -> Option<Out> {
        Some(match name {
            "geoadd" => {
                let mut first = 2;
                let (mut nx, mut xx) = (false, false);
                while let Some(opt) = argv.get(first) {
                    match opt.to_ascii_lowercase().as_slice() {
                        b"nx" => nx = true,
                        b"xx" => xx = true,
                        b"ch" => {}
                        _ => break,
                    }
                    first += 1;
                }
                if !(argv.len() - first).is_multiple_of(3) || (nx && xx) {
                    return Some(Out::err(SYNTAX));
                }
                // As ZADD, with each point's hash as its score.
                let mut zadd: Vec<Vec<u8>> = argv[..first].iter().map(|a| a.to_vec()).collect();
                zadd[0] = b"zadd".to_vec();
                for p in argv[first..].chunks(3) {
                    let (lon, lat) = match lon_lat(p[0], p[1]) {
                        Ok(v) => v,
                        Err(e) => return Some(e),
                    };
                    let Some(h) = encode_wgs84(lon, lat, STEP_MAX) else { return Some(Out::err(SYNTAX)) };
                    zadd.push(h.bits.to_string().into_bytes());
                    zadd.push(p[2].to_vec());
                }
                let args: Vec<&[u8]> = zadd.iter().map(Vec::as_slice).collect();
                return self.zset_write("zadd", db, now_ms, &args);
            }
            "georadius" => self.geo_search_store(db, now_ms, argv, Kind::Coords { store_ok: true }),
            "georadiusbymember" => self.geo_search_store(db, now_ms, argv, Kind::Member { store_ok: true }),
            "geosearchstore" => self.geo_search_store(db, now_ms, argv, Kind::Search { store: true }),
            _ => return None,
        })
    }

    /// A search that may store (GEORADIUS … STORE, GEOSEARCHSTORE).
    fn geo_search_store(&mut self, db: u32, now_ms: u64, argv: &[&[u8]], kind: Kind) -> Out {
        let (req, found) = match self.geo_find(db, now_ms, argv, kind) {
            Ok(v) => v,
            Err(e) => return e,
        };
        let Some(dest) = req.store else { return geo_reply(&req, found) };
        let mut z = ZSet::default();
        for f in &found {
            z.insert(&f.member, if req.store_dist { f.dist } else { f.score });
        }
        let n = z.len();
        self.remove(db, dest, now_ms);
        if n > 0 {
            self.put(db, dest, Entry { value: Value::ZSet(Box::new(z)), expire_at_ms: None });
        }
        Out::Int(n as i64)
    }

    fn geo_search(&self, db: u32, now_ms: u64, argv: &[&[u8]], kind: Kind) -> Out {
        match self.geo_find(db, now_ms, argv, kind) {
            Ok((req, found)) => geo_reply(&req, found),
            Err(e) => e,
        }
    }

    /// Parses a search as Redis does (its checks in its order) and runs
    /// it: what was asked, and the members found, sorted and cut to COUNT
    /// (distances in the request's unit).
    fn geo_find<'a>(
        &self,
        db: u32,
        now_ms: u64,
        argv: &[&'a [u8]],
        kind: Kind,
    ) -> Result<(Request<'a>, Vec<Found>), Out> {
        let src = if kind == (Kind::Search { store: true }) { argv[2] } else { argv[1] };
        let z = self.coll::<ZSet>(db, src, now_ms)?;
        let from_member = |m: &[u8]| z.and_then(|z| z.score(m)).map(point).ok_or_else(|| Out::err(NO_MEMBER));
        let mut req = Request {
            store: None,
            store_dist: false,
            with_dist: false,
            with_hash: false,
            with_coord: false,
            count: 0,
            any: false,
            asc: None,
        };
        let mut centre = None;
        let mut shape = None;
        let base = match kind {
            Kind::Coords { .. } => {
                centre = Some(lon_lat(argv[2], argv[3])?);
                shape = Some(radius(argv[4], argv[5])?);
                6
            }
            Kind::Member { .. } if z.is_none() => 5,
            Kind::Member { .. } => {
                centre = Some(from_member(argv[2])?);
                shape = Some(radius(argv[3], argv[4])?);
                5
            }
            Kind::Search { store } => {
                if store {
                    req.store = Some(argv[1]);
                    3
                } else {
                    2
                }
            }
        };
        let search = matches!(kind, Kind::Search { .. });
        let store_ok = matches!(kind, Kind::Coords { store_ok: true } | Kind::Member { store_ok: true });
        let (mut from_member_seen, mut by_radius, mut by_box) = (false, false, false);
        let rest = &argv[base..];
        let mut i = 0;
        while i < rest.len() {
            let left = rest.len() - i - 1;
            match rest[i].to_ascii_lowercase().as_slice() {
                b"withdist" => req.with_dist = true,
                b"withhash" => req.with_hash = true,
                b"withcoord" => req.with_coord = true,
                b"any" => req.any = true,
                b"asc" => req.asc = Some(true),
                b"desc" => req.asc = Some(false),
                b"count" if left >= 1 => {
                    let n = string2ll(rest[i + 1]).ok_or_else(|| Out::err(NOT_INTEGER))?;
                    if n <= 0 {
                        return Err(Out::err("ERR COUNT must be > 0"));
                    }
                    req.count = n as usize;
                    i += 1;
                }
                w @ (b"store" | b"storedist") if left >= 1 && store_ok => {
                    req.store = Some(rest[i + 1]);
                    req.store_dist = w == b"storedist";
                    i += 1;
                }
                b"storedist" if kind == (Kind::Search { store: true }) => req.store_dist = true,
                b"frommember" if left >= 1 && search && centre.is_none() => {
                    if z.is_some() {
                        centre = Some(from_member(rest[i + 1])?);
                    }
                    from_member_seen = true;
                    i += 1;
                }
                b"fromlonlat" if left >= 2 && search && !from_member_seen => {
                    centre = Some(lon_lat(rest[i + 1], rest[i + 2])?);
                    i += 2;
                }
                b"byradius" if left >= 2 && search && !by_box => {
                    shape = Some(radius(rest[i + 1], rest[i + 2])?);
                    by_radius = true;
                    i += 2;
                }
                b"bybox" if left >= 3 && search && !by_radius => {
                    let Some(w) = float(rest[i + 1]) else { return Err(Out::err("ERR need numeric width")) };
                    let Some(h) = float(rest[i + 2]) else { return Err(Out::err("ERR need numeric height")) };
                    if w < 0.0 || h < 0.0 {
                        return Err(Out::err("ERR height or width cannot be negative"));
                    }
                    let u = unit(rest[i + 3])?;
                    shape = Some((Shape::Box { width: w, height: h }, u));
                    by_box = true;
                    i += 3;
                }
                _ => return Err(Out::err(SYNTAX)),
            }
            i += 1;
        }
        if req.store.is_some() && (req.with_dist || req.with_hash || req.with_coord) {
            let what = if search { "GEOSEARCHSTORE" } else { "STORE option in GEORADIUS" };
            return Err(Out::Err(format!(
                "ERR {what} is not compatible with WITHDIST, WITHHASH and WITHCOORD options"
            )));
        }
        let typed = String::from_utf8_lossy(argv[0]);
        if search && !(from_member_seen || centre.is_some()) {
            return Err(Out::Err(format!("ERR exactly one of FROMMEMBER or FROMLONLAT can be specified for {typed}")));
        }
        if search && !(by_radius || by_box) {
            return Err(Out::Err(format!("ERR exactly one of BYRADIUS and BYBOX can be specified for {typed}")));
        }
        if req.any && req.count == 0 {
            return Err(Out::err("ERR the ANY argument requires COUNT argument"));
        }
        let (Some(z), Some((lon, lat)), Some((shape, unit))) = (z, centre, shape) else {
            return Ok((req, Vec::new()));
        };
        if req.count != 0 && req.asc.is_none() && !req.any {
            req.asc = Some(true);
        }
        let s = Search { lon, lat, shape, unit };
        let mut found = scan(z, &s, if req.any { req.count } else { 0 });
        if let Some(asc) = req.asc {
            found.sort_by(|a, b| if asc { a.dist.total_cmp(&b.dist) } else { b.dist.total_cmp(&a.dist) });
        }
        if req.count > 0 {
            found.truncate(req.count);
        }
        for f in &mut found {
            f.dist /= s.unit;
        }
        Ok((req, found))
    }
}

/// A search's reply: the members, or with WITHDIST / WITHHASH /
/// WITHCOORD an array per member.
fn geo_reply(req: &Request<'_>, found: Vec<Found>) -> Out {
    let plain = !(req.with_dist || req.with_hash || req.with_coord);
    Out::Array(
        found
            .into_iter()
            .map(|f| {
                if plain {
                    return Out::Bulk(f.member);
                }
                let mut item = vec![Out::Bulk(f.member)];
                if req.with_dist {
                    item.push(Out::Bulk(dist_text(f.dist)));
                }
                if req.with_hash {
                    item.push(Out::Int(f.score as i64));
                }
                if req.with_coord {
                    item.push(Out::Array(vec![Out::Bulk(human(f.lon)), Out::Bulk(human(f.lat))]));
                }
                Out::Array(item)
            })
            .collect(),
    )
}

/// The standard 11-character geohash of a point (latitude from -90 to
/// 90, unlike the stored scores).
fn geohash_text(lon: f64, lat: f64) -> Vec<u8> {
    const ALPHABET: &[u8] = b"0123456789bcdefghjkmnpqrstuvwxyz";
    let bits = encode((-180.0, 180.0), (-90.0, 90.0), lon, lat, STEP_MAX).map_or(0, |h| h.bits);
    (0..11)
        .map(|i| if i == 10 { ALPHABET[0] } else { ALPHABET[((bits >> (52 - (i + 1) * 5)) & 0x1f) as usize] })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interleaving_round_trips() {
        for v in [0u32, 1, 0x8000_0000, 0xFFFF_FFFF, 0x1234_5678] {
            assert_eq!(squash(spread(v)), v);
            assert_eq!(squash(spread(v) << 1 >> 1), v);
        }
        assert_eq!(spread(0b11), 0b101);
    }

    #[test]
    fn printing_as_redis() {
        assert_eq!(human(13.361389338970184), b"13.36138933897018433");
        assert_eq!(human(-0.0), b"0");
        assert_eq!(human(2.0), b"2");
        assert_eq!(dist_text(166274.15156960033), b"166274.1516");
        assert_eq!(dist_text(0.0), b"0.0000");
    }
}
