//! Lua scripts: EVAL, EVALSHA, EVAL_RO, EVALSHA_RO and SCRIPT, with
//! Redis 7.0's Lua 5.1 API (`redis.call`, `redis.pcall`, `KEYS`, `ARGV`,
//! the reply conversions both ways, the error texts).
//!
//! A script runs inside the state machine's apply, on every replica, so
//! it must do the same everywhere:
//! - scripts run on a Lua state the thread keeps (starting one costs
//!   ~80 µs, a call on a kept one ~6 µs), but nothing one call could
//!   change reaches the next: each gets its own environment and read-only
//!   views of the libraries (see [`Engine`]), and a test checks that a
//!   used state answers exactly as a new one, as on a replica that just
//!   restarted;
//! - `math.random` draws from a generator seeded by the entry (its time,
//!   the command), not from libc;
//! - the `TIME` a script sees is the entry's time;
//! - a script is stopped after [`SCRIPT_INSTRUCTIONS_MAX`] Lua
//!   instructions and [`SCRIPT_MEMORY_BYTES_MAX`] bytes of Lua memory:
//!   both counted by the interpreter, so every replica stops it at the
//!   same point. (Redis instead lets a script run and offers SCRIPT KILL;
//!   a replicated apply cannot wait for a human.) They are compiled in,
//!   not configured per node, because replicas that disagreed on them
//!   would disagree on the data.
//!
//! The script cache (EVALSHA) is part of the replicated state: SCRIPT
//! LOAD and EVAL add to it through the log, so every node knows the same
//! scripts at the same log position, and it is persisted and in
//! snapshots, so a restart keeps it.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::rc::Rc;

use mlua::{Function, HookTriggers, Lua, LuaOptions, MultiValue, StdLib, Table, Value, VmState};
use serde::{Deserialize, Serialize};

use super::{format_score, Change, Keyspace, Out, Rng};

/// Lua instructions one script may run before it is stopped (roughly a
/// second of pure Lua on one core).
pub const SCRIPT_INSTRUCTIONS_MAX: u64 = 200_000_000;

/// Bytes of Lua memory one script may hold.
pub const SCRIPT_MEMORY_BYTES_MAX: usize = 256 << 20;

/// Scripts the cache keeps from EVAL (SCRIPT LOAD's are kept until
/// SCRIPT FLUSH); past it the oldest goes, as Redis 7.4 does.
pub const SCRIPTS_FROM_EVAL_MAX: usize = 500;

/// Nesting of tables a script reply may have.
const REPLY_DEPTH_MAX: usize = 1000;

/// Instructions between two budget checks.
const HOOK_EVERY: u32 = 10_000;

/// The version scripts see in `redis.REDIS_VERSION`.
const VERSION: &str = "7.0.15";

const KILLED: &str = "ERR Script stopped: it ran more Lua instructions than the limit (SCRIPT_INSTRUCTIONS_MAX)";

/// Commands a script may not call (Redis's "noscript" ones, and what a
/// replicated apply cannot do: publish, change the connection); the
/// blocking ones ([`super::BLOCKING`]) neither.
const NOT_IN_SCRIPTS: &[&str] = &[
    "eval",
    "evalsha",
    "eval_ro",
    "evalsha_ro",
    "script",
    "multi",
    "exec",
    "discard",
    "watch",
    "unwatch",
    "subscribe",
    "psubscribe",
    "unsubscribe",
    "punsubscribe",
    "publish",
    "auth",
    "hello",
    "select",
    "client",
    "save",
    "bgsave",
    "info",
    "config",
    "quit",
    "reset",
];

/// A cached script.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Script {
    pub body: Vec<u8>,
    /// Set for a script that came in by EVAL: its order of arrival, for
    /// eviction past [`SCRIPTS_FROM_EVAL_MAX`].
    pub from_eval: Option<u64>,
}

/// The script cache: lower-case hex SHA1 → script.
pub type Scripts = BTreeMap<String, Script>;

/// Lower-case hex SHA1 of a script body (what EVALSHA names it by).
pub fn sha1_hex(body: &[u8]) -> String {
    sha1_smol::Sha1::from(body).digest().to_string()
}

/// One script call.
#[derive(Clone, Copy)]
pub(crate) struct Call<'a> {
    pub body: &'a [u8],
    pub sha: &'a str,
    pub keys: &'a [&'a [u8]],
    pub args: &'a [&'a [u8]],
    pub now_ms: u64,
    pub seed: u64,
    /// EVAL_RO / EVALSHA_RO: write commands are refused.
    pub read_only: bool,
}

/// Arguments: a script's keys or its other arguments.
type Args<'a> = &'a [&'a [u8]];

/// EVAL's numkeys and the split of the rest into keys and args.
pub(crate) fn split_keys<'a>(argv: Args<'a>) -> Result<(Args<'a>, Args<'a>), Out> {
    let n = super::int_arg(argv[2])?;
    if n < 0 {
        return Err(Out::err("ERR Number of keys can't be negative"));
    }
    let rest = &argv[3..];
    if n as u64 > rest.len() as u64 {
        return Err(Out::err("ERR Number of keys can't be greater than number of args"));
    }
    Ok(rest.split_at(n as usize))
}

/// Compiles `body` as Redis names it (`user_script`), or Redis's error.
fn compile(lua: &Lua, body: &[u8]) -> Result<Function, Out> {
    lua.load(body).set_name("@user_script").into_function().map_err(|e| {
        let text = match &e {
            mlua::Error::SyntaxError { message, .. } => message.clone(),
            other => other.to_string(),
        };
        Out::Err(one_line(&format!("ERR Error compiling script (new function): {text}")))
    })
}

/// Checks that `body` compiles (SCRIPT LOAD).
pub(crate) fn check(body: &[u8]) -> Result<(), Out> {
    let (_, code) = shebang(body)?;
    with_engine(|e| e.compiled(code, &sha1_hex(body)).map(drop))
}

/// Flags a Redis 7 script may declare in its shebang; only `no-writes`
/// changes anything here (the others concern memory, stale replicas and
/// Redis Cluster).
const SHEBANG_FLAGS: &[&str] = &["no-writes", "allow-oom", "allow-stale", "no-cluster", "allow-cross-slot-keys"];

/// A Redis 7 shebang (`#!lua flags=no-writes,...` as the first line):
/// `Some(no_writes)` when there is one, and the code to compile, the
/// shebang line blanked so line numbers stay.
fn shebang(body: &[u8]) -> Result<(Option<bool>, &[u8]), Out> {
    if !body.starts_with(b"#!") {
        return Ok((None, body));
    }
    let Some(nl) = body.iter().position(|&b| b == b'\n') else {
        return Err(Out::err("ERR Invalid script shebang"));
    };
    let line = String::from_utf8_lossy(&body[..nl]);
    let mut parts = line.split_whitespace();
    let engine = parts.next().unwrap_or_default();
    if engine != "#!lua" {
        return Err(Out::Err(format!("ERR Unexpected engine in script shebang: {engine}")));
    }
    let mut no_writes = false;
    for part in parts {
        let Some(flags) = part.strip_prefix("flags=") else {
            return Err(Out::Err(format!("ERR Unknown lua shebang option: {part}")));
        };
        for flag in flags.split(',').filter(|f| !f.is_empty()) {
            if !SHEBANG_FLAGS.contains(&flag) {
                return Err(Out::Err(format!("ERR Unexpected flag in script shebang: {flag}")));
            }
            no_writes |= flag == "no-writes";
        }
    }
    Ok((Some(no_writes), &body[nl..]))
}

/// Error replies are one line.
fn one_line(s: &str) -> String {
    s.replace(['\r', '\n'], " ")
}

/// Runs a script; `exec` runs one command from `redis.call` (already
/// checked to be a keyspace command the script may call). `Err` when the
/// script does not compile.
pub(crate) fn run(call: &Call<'_>, exec: &mut dyn FnMut(&[&[u8]]) -> Out) -> Result<Out, Out> {
    let (declared, code) = shebang(call.body)?;
    if call.read_only && declared == Some(false) {
        return Err(Out::err("ERR Can not execute a script with write flag using *_ro command."));
    }
    let read_only = call.read_only || declared == Some(true);
    with_engine(|e| {
        let f = e.compiled(code, call.sha)?;
        let call = Call { read_only, ..*call };
        Ok(e.run(f, &call, exec).unwrap_or_else(|err| Out::Err(one_line(&format!("ERR Error running script: {err}")))))
    })
}

thread_local! {
    /// This thread's Lua engine, made at its first script.
    static ENGINE: std::cell::RefCell<Option<Engine>> = const { std::cell::RefCell::new(None) };
}

/// Runs `f` with this thread's engine (made on first use; a fresh one if
/// the thread's is in use, which a script cannot cause: it cannot call
/// EVAL).
fn with_engine<R>(f: impl FnOnce(&mut Engine) -> Result<R, Out>) -> Result<R, Out> {
    let start = |e: mlua::Error| Out::Err(one_line(&format!("ERR cannot start Lua: {e}")));
    ENGINE.with(|cell| match cell.try_borrow_mut() {
        Ok(mut slot) => {
            if slot.is_none() {
                *slot = Some(Engine::new().map_err(start)?);
            }
            match slot.as_mut() {
                Some(engine) => f(engine),
                None => Err(Out::err("ERR cannot start Lua")),
            }
        }
        Err(_) => f(&mut Engine::new().map_err(start)?),
    })
}

const NOSCRIPT: &str = "NOSCRIPT No matching script. Please use EVAL.";

/// An EVAL-family call, ready to run.
struct Prepared<'a> {
    body: Vec<u8>,
    sha: String,
    keys: Args<'a>,
    args: Args<'a>,
    seed: u64,
}

impl Prepared<'_> {
    fn call(&self, now_ms: u64, read_only: bool) -> Call<'_> {
        Call { body: &self.body, sha: &self.sha, keys: self.keys, args: self.args, now_ms, seed: self.seed, read_only }
    }
}

impl Keyspace {
    /// The script cache.
    pub fn scripts(&self) -> &Scripts {
        &self.scripts
    }

    /// Puts a cached script in place without recording a change (loading
    /// from disk or a snapshot).
    pub fn insert_script(&mut self, sha: String, script: Script) {
        if let Some(n) = script.from_eval {
            self.script_seq = self.script_seq.max(n);
        }
        self.scripts.insert(sha, script);
    }

    /// Adds a script to the cache: one from SCRIPT LOAD stays, one from
    /// EVAL may be evicted later (oldest first).
    fn cache_script(&mut self, sha: &str, body: &[u8], from_eval: bool) {
        if let Some(s) = self.scripts.get_mut(sha) {
            if !from_eval && s.from_eval.is_some() {
                s.from_eval = None;
                self.note(Change::Script(sha.to_string()));
            }
            return;
        }
        let from_eval = from_eval.then(|| {
            self.script_seq += 1;
            self.script_seq
        });
        self.scripts.insert(sha.to_string(), Script { body: body.to_vec(), from_eval });
        self.note(Change::Script(sha.to_string()));
        if from_eval.is_none() {
            return;
        }
        let mut evictable: Vec<(u64, &String)> =
            self.scripts.iter().filter_map(|(sha, s)| Some((s.from_eval?, sha))).collect();
        if evictable.len() <= SCRIPTS_FROM_EVAL_MAX {
            return;
        }
        evictable.sort_unstable();
        let gone: Vec<String> =
            evictable[..evictable.len() - SCRIPTS_FROM_EVAL_MAX].iter().map(|(_, sha)| (*sha).clone()).collect();
        for sha in gone {
            self.scripts.remove(&sha);
            self.note(Change::Script(sha));
        }
    }

    /// The body EVAL or EVALSHA runs, with its SHA1.
    fn script_body(&self, name: &str, arg: &[u8]) -> Result<(Vec<u8>, String), Out> {
        if name.starts_with("evalsha") {
            let sha = String::from_utf8_lossy(arg).to_ascii_lowercase();
            let s = self.scripts.get(&sha).ok_or_else(|| Out::err(NOSCRIPT))?;
            Ok((s.body.clone(), sha))
        } else {
            Ok((arg.to_vec(), sha1_hex(arg)))
        }
    }

    /// What an EVAL-family call runs: the script (from the command, or
    /// by SHA from the cache), its keys and args, and its random seed.
    fn prepare<'a>(&self, name: &str, now_ms: u64, argv: Args<'a>) -> Result<Prepared<'a>, Out> {
        let (keys, args) = split_keys(argv)?;
        let (body, sha) = self.script_body(name, argv[1])?;
        let seed = Rng::for_command(now_ms, argv, 0).next();
        Ok(Prepared { body, sha, keys, args, seed })
    }

    /// EVAL_RO, EVALSHA_RO: run on this node's state, writes refused.
    pub(super) fn script_read(&self, name: &str, db: u32, now_ms: u64, argv: &[&[u8]]) -> Option<Out> {
        if !matches!(name, "eval_ro" | "evalsha_ro") {
            return None;
        }
        let p = match self.prepare(name, now_ms, argv) {
            Ok(p) => p,
            Err(e) => return Some(e),
        };
        let mut exec = |a: &[&[u8]]| {
            let name = String::from_utf8_lossy(a[0]).to_ascii_lowercase();
            self.read_named(&name, db, now_ms, a)
                .unwrap_or_else(|| Out::err("ERR Write commands are not allowed from read-only scripts."))
        };
        Some(run(&p.call(now_ms, true), &mut exec).unwrap_or_else(|e| e))
    }

    /// EVAL, EVALSHA (as the log applies them) and SCRIPT.
    pub(super) fn script_write(&mut self, name: &str, db: u32, now_ms: u64, argv: &[&[u8]]) -> Option<Out> {
        match name {
            "eval" | "evalsha" => {}
            "script" => return Some(self.script_command(argv)),
            _ => return None,
        }
        let p = match self.prepare(name, now_ms, argv) {
            Ok(p) => p,
            Err(e) => return Some(e),
        };
        // Random reads it makes (RANDOMKEY…) pick alike on every replica.
        let out =
            super::keys::with_script_draws(|| run(&p.call(now_ms, false), &mut |a: &[&[u8]]| self.exec(db, now_ms, a)));
        if out.is_ok() && name == "eval" {
            self.cache_script(&p.sha, &p.body, true);
        }
        Some(out.unwrap_or_else(|e| e))
    }

    /// SCRIPT LOAD | EXISTS | FLUSH | KILL | HELP.
    fn script_command(&mut self, argv: &[&[u8]]) -> Out {
        let sub = String::from_utf8_lossy(argv[1]).to_ascii_lowercase();
        let arity_ok = match sub.as_str() {
            "load" => argv.len() == 3,
            "exists" => argv.len() >= 3,
            "flush" => argv.len() <= 3,
            "kill" | "help" => argv.len() == 2,
            _ => true,
        };
        if !arity_ok {
            return Out::Err(format!("ERR wrong number of arguments for 'script|{sub}' command"));
        }
        match sub.as_str() {
            "load" => match check(argv[2]) {
                Ok(()) => {
                    let sha = sha1_hex(argv[2]);
                    self.cache_script(&sha, argv[2], false);
                    Out::Bulk(sha.into_bytes())
                }
                Err(e) => e,
            },
            "exists" => Out::Array(
                argv[2..]
                    .iter()
                    .map(|s| {
                        let sha = String::from_utf8_lossy(s).to_ascii_lowercase();
                        Out::Int(i64::from(self.scripts.contains_key(&sha)))
                    })
                    .collect(),
            ),
            "flush" => {
                if let Some(opt) = argv.get(2) {
                    if !matches!(super::upper(opt).as_str(), "SYNC" | "ASYNC") {
                        return Out::err("ERR SCRIPT FLUSH only support SYNC|ASYNC option");
                    }
                }
                self.scripts.clear();
                self.note(Change::Scripts);
                Out::ok()
            }
            "kill" => Out::err("NOTBUSY No scripts in execution right now."),
            "help" => Out::Array(
                [
                    "SCRIPT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
                    "EXISTS <sha1> [<sha1> ...]",
                    "    Return information about the existence of the scripts in the script cache.",
                    "FLUSH [ASYNC|SYNC]",
                    "    Flush the Lua scripts cache.",
                    "KILL",
                    "    Kill the currently executing Lua script (Catga: scripts are bounded, never busy).",
                    "LOAD <script>",
                    "    Load a script into the scripts cache without executing it.",
                    "HELP",
                    "    Print this help.",
                ]
                .iter()
                .map(|l| Out::Simple((*l).into()))
                .collect(),
            ),
            _ => Out::Err(format!("ERR unknown subcommand '{}'. Try SCRIPT HELP.", String::from_utf8_lossy(argv[1]))),
        }
    }
}

/// Compiled scripts an engine keeps, by SHA1; past this it starts over.
const COMPILED_MAX: usize = 1000;

/// Builds each call's environment; runs once per engine with the real
/// globals and returns the per-call setup function.
const PRELUDE: &str = r#"
local spent, errtext = ...
local G = _G
local rawget, error, type, tostring, setmetatable, getmetatable, setfenv, pairs, ipairs =
      rawget, error, type, tostring, setmetatable, getmetatable, setfenv, pairs, ipairs
local pcall, xpcall, loadstring = pcall, xpcall, loadstring
local libs = { redis = G.redis, string = G.string, math = G.math, table = G.table, cjson = G.cjson, bit = G.bit }
getmetatable("").__metatable = false
local function readonly() error("Attempt to modify a readonly table", 2) end
local function protect(t)
  return setmetatable({}, { __index = t, __newindex = readonly, __metatable = false })
end
-- The base functions scripts get; nothing else of the real globals.
local base = {}
for k, v in pairs(G) do
  if type(v) == "function" then base[k] = v end
end
for _, name in ipairs({ "dofile", "loadfile", "load", "print", "setfenv", "getfenv", "module", "require",
                        "newproxy", "collectgarbage", "gcinfo" }) do
  base[name] = nil
end
base._VERSION = G._VERSION
-- A spent instruction budget is not caught: it goes on up. A caught
-- error is its text, as Redis 7.0's pcall gives it.
local function pass(ok, ...)
  if spent() then error((...), 0) end
  if ok then return ok, ... end
  return ok, errtext((...))
end
base.pcall = function(...) return pass(pcall(...)) end
base.xpcall = function(f, h) return pass(xpcall(f, h)) end
-- Addresses differ between replicas: a table or function prints as its type.
base.tostring = function(v)
  local t = type(v)
  if t == "table" then
    local mt = getmetatable(v)
    if type(mt) == "table" and rawget(mt, "__tostring") then return tostring(v) end
  end
  if t == "table" or t == "function" or t == "userdata" or t == "thread" then return t end
  return tostring(v)
end
local env
base.loadstring = function(s, name)
  local f, e = loadstring(s, name)
  if f then setfenv(f, env) end
  return f, e
end
return function(f, call, pcall_, keys, argv)
  local own = { KEYS = keys, ARGV = argv }
  own.redis = setmetatable({ call = call, pcall = pcall_ },
                           { __index = libs.redis, __newindex = readonly, __metatable = false })
  for name, t in pairs(libs) do
    if name ~= "redis" then own[name] = protect(t) end
  end
  env = setmetatable({}, {
    __index = function(_, k)
      local v = own[k]
      if v == nil then v = base[k] end
      if v == nil then
        error("Script attempted to access nonexistent global variable '" .. tostring(k) .. "'", 2)
      end
      return v
    end,
    __newindex = readonly,
    __metatable = false,
  })
  own._G = env
  setfenv(f, env)
end
"#;

/// A Lua state kept between scripts (one per thread), set up once: the
/// libraries, the functions scripts get, and a prelude that builds each
/// call's environment afresh. What one call could leave for the next is
/// out of its reach: globals, `redis` and the library tables are
/// per-call read-only proxies, `_G` is the call's own environment,
/// `loadstring` compiles into it, the string metatable is hidden, and
/// what reads the heap or addresses (`collectgarbage`, `gcinfo`,
/// `tostring` of a table) is not there or prints the type only. The
/// random seed, the instruction count and the memory limit start over
/// at each call.
struct Engine {
    lua: Lua,
    /// (script, redis.call, redis.pcall, KEYS, ARGV): sets the script's
    /// environment for one call.
    setup: Function,
    xpcall: Function,
    handler: Function,
    compiled: std::collections::HashMap<String, Function>,
    seed: Rc<Cell<u64>>,
    spent: Rc<Cell<bool>>,
}

fn strings(lua: &Lua, items: &[&[u8]]) -> mlua::Result<Table> {
    let t = lua.create_table_with_capacity(items.len(), 0)?;
    for (i, s) in items.iter().enumerate() {
        t.raw_set(i + 1, lua.create_string(s)?)?;
    }
    Ok(t)
}

impl Engine {
    fn new() -> mlua::Result<Engine> {
        let lua = Lua::new_with(StdLib::TABLE | StdLib::STRING | StdLib::MATH, LuaOptions::default())?;
        let g = lua.globals();
        let seed = Rc::new(Cell::new(0u64));
        let spent = Rc::new(Cell::new(false));

        let math: Table = g.raw_get("math")?;
        {
            let state = seed.clone();
            math.raw_set(
                "random",
                lua.create_function(move |_, args: MultiValue| {
                    let r = next_random(&state);
                    let num = |v: &Value| match v {
                        Value::Integer(i) => Ok(*i as f64),
                        Value::Number(n) => Ok(*n),
                        _ => Err(mlua::Error::RuntimeError("bad argument to 'random' (number expected)".into())),
                    };
                    let unit = (r >> 11) as f64 / (1u64 << 53) as f64;
                    let (lo, hi) = match args.len() {
                        0 => return Ok(unit),
                        1 => (1.0, num(&args[0])?.floor()),
                        2 => (num(&args[0])?.floor(), num(&args[1])?.floor()),
                        _ => return Err(mlua::Error::RuntimeError("wrong number of arguments".into())),
                    };
                    if lo > hi {
                        return Err(mlua::Error::RuntimeError("bad argument to 'random' (interval is empty)".into()));
                    }
                    Ok((unit * (hi - lo + 1.0)).floor() + lo)
                })?,
            )?;
        }
        {
            let state = seed.clone();
            math.raw_set(
                "randomseed",
                lua.create_function(move |_, s: f64| {
                    state.set(s.to_bits());
                    Ok(())
                })?,
            )?;
        }
        g.raw_set("redis", redis_library(&lua)?)?;
        install_cjson(&lua, &g)?;
        install_bit(&lua, &g)?;

        let spent_fn = {
            let spent = spent.clone();
            lua.create_function(move |_, ()| Ok(spent.get()))?
        };
        let errtext_fn = lua.create_function(|lua, err: Value| {
            Ok(match err {
                Value::Table(t) => match t.raw_get::<Value>("err")? {
                    Value::String(s) => Value::String(s),
                    _ => Value::Table(t),
                },
                Value::Error(e) => Value::String(lua.create_string(error_text(&e))?),
                other => other,
            })
        })?;
        let xpcall: Function = g.raw_get("xpcall")?;
        let setup: Function = lua.load(PRELUDE).set_name("=prelude").call((spent_fn, errtext_fn))?;
        let handler = lua.create_function(error_handler)?;
        Ok(Engine { lua, setup, xpcall, handler, compiled: Default::default(), seed, spent })
    }

    /// The compiled script for `sha`, compiled now if it is not kept.
    fn compiled(&mut self, body: &[u8], sha: &str) -> Result<Function, Out> {
        if let Some(f) = self.compiled.get(sha) {
            return Ok(f.clone());
        }
        let f = compile(&self.lua, body)?;
        if self.compiled.len() >= COMPILED_MAX {
            self.compiled.clear();
        }
        self.compiled.insert(sha.to_string(), f.clone());
        Ok(f)
    }

    fn run(&mut self, f: Function, call: &Call<'_>, exec: &mut dyn FnMut(&[&[u8]]) -> Out) -> mlua::Result<Out> {
        let lua = &self.lua;
        self.seed.set(call.seed);
        self.spent.set(false);
        // Set afresh each call, so the count starts at zero (Lua keeps a
        // hook's countdown across calls otherwise).
        {
            let spent = self.spent.clone();
            let ticks = Cell::new(0u64);
            lua.set_hook(HookTriggers::new().every_nth_instruction(HOOK_EVERY), move |_, _| {
                ticks.set(ticks.get() + 1);
                if ticks.get() * u64::from(HOOK_EVERY) > SCRIPT_INSTRUCTIONS_MAX {
                    spent.set(true);
                    return Err(mlua::Error::RuntimeError(KILLED.into()));
                }
                Ok(VmState::Continue)
            })?;
        }
        lua.set_memory_limit(lua.used_memory() + SCRIPT_MEMORY_BYTES_MAX)?;
        let keys = strings(lua, call.keys)?;
        let argv = strings(lua, call.args)?;
        let (now_ms, read_only) = (call.now_ms, call.read_only);
        let exec = std::cell::RefCell::new(exec);
        lua.scope(|scope| {
            // redis.call raises a command's error (a Rust function, as in
            // Redis, so `return redis.call(...)` is no tail call and the
            // error keeps the script's line); redis.pcall returns it.
            let call_fn = scope.create_function_mut(|lua, args: MultiValue| {
                match redis_call(lua, &args, now_ms, read_only, &mut **exec.borrow_mut())? {
                    Out::Err(e) => Err(mlua::Error::RuntimeError(format!("{REPLY_ERROR}{e}"))),
                    out => to_lua(lua, out),
                }
            })?;
            let pcall_fn = scope.create_function_mut(|lua, args: MultiValue| {
                let out = redis_call(lua, &args, now_ms, read_only, &mut **exec.borrow_mut())?;
                to_lua(lua, out)
            })?;
            self.setup.call::<()>((f.clone(), call_fn, pcall_fn, keys, argv))?;
            let mut results = self.xpcall.call::<MultiValue>((f, self.handler.clone()))?.into_iter();
            let ok = matches!(results.next(), Some(Value::Boolean(true)));
            let first = results.next().unwrap_or(Value::Nil);
            if ok {
                return Ok(from_lua(&first, 0));
            }
            // The handler's table; Lua 5.1 skips the handler for an
            // allocation failure and gives its message.
            let (text, line) = match first {
                Value::Table(t) => (t.raw_get::<String>("err")?, t.raw_get::<i64>("line")?),
                Value::String(s) if s.as_bytes().as_ref() == b"not enough memory" => (
                    format!(
                        "ERR Lua out of memory: the script held more than {SCRIPT_MEMORY_BYTES_MAX} bytes (SCRIPT_MEMORY_BYTES_MAX)"
                    ),
                    0,
                ),
                Value::String(s) => (format!("ERR {}", s.to_string_lossy()), 0),
                Value::Error(e) => (format!("ERR {}", error_text(&e)), 0),
                _ => ("ERR unknown error".to_string(), 0),
            };
            let text = if self.spent.get() { KILLED.to_string() } else { text };
            Ok(Out::Err(one_line(&format!("{text} script: {}, on @user_script:{line}.", call.sha))))
        })
    }
}

/// The xpcall handler: the error as a reply text and the line of the
/// user's script that was running (the first frame, from the error up,
/// that belongs to it).
fn error_handler(lua: &Lua, err: Value) -> mlua::Result<Table> {
    let mut line = None;
    for level in 0..64 {
        match lua
            .inspect_stack(level, |d| (d.source().source.as_deref() == Some("@user_script")).then(|| d.current_line()))
        {
            None => break,
            Some(Some(l)) => {
                line = l;
                break;
            }
            Some(None) => {}
        }
    }
    let text = match &err {
        Value::Table(t) => match t.raw_get::<Value>("err")? {
            Value::String(s) => s.to_string_lossy(),
            _ => "ERR unknown error".to_string(),
        },
        Value::String(s) => format!("ERR {}", s.to_string_lossy()),
        Value::Error(e) => match root_message(e) {
            m if m.starts_with(REPLY_ERROR) => m[REPLY_ERROR.len()..].to_string(),
            m if m.starts_with("ERR ") => m,
            m => format!("ERR {m}"),
        },
        other => format!("ERR {}", other.to_string().unwrap_or_default()),
    };
    let t = lua.create_table()?;
    t.raw_set("err", text)?;
    t.raw_set("line", line.map_or(0, |l| l as i64))?;
    Ok(t)
}

/// The `redis` table, without `call` and `pcall` (per call).
fn redis_library(lua: &Lua) -> mlua::Result<Table> {
    let redis = lua.create_table()?;
    redis
        .raw_set("error_reply", lua.create_function(|lua, msg: mlua::LuaString| error_table(lua, &msg.as_bytes()))?)?;
    redis.raw_set(
        "status_reply",
        lua.create_function(|lua, msg: mlua::LuaString| {
            let t = lua.create_table()?;
            t.raw_set("ok", msg)?;
            Ok(t)
        })?,
    )?;
    redis.raw_set("sha1hex", lua.create_function(|_, s: mlua::LuaString| Ok(sha1_hex(&s.as_bytes())))?)?;
    redis.raw_set(
        "log",
        lua.create_function(|_, (level, msg): (i64, MultiValue)| {
            let text: Vec<String> = msg.iter().map(|v| v.to_string().unwrap_or_default()).collect();
            let text = text.join(" ");
            match level {
                0 => tracing::debug!(target: "catga::script", "{text}"),
                1 | 2 => tracing::info!(target: "catga::script", "{text}"),
                _ => tracing::warn!(target: "catga::script", "{text}"),
            }
            Ok(())
        })?,
    )?;
    redis.raw_set(
        "setresp",
        lua.create_function(|_, v: i64| match v {
            2 => Ok(()),
            3 => Err(mlua::Error::RuntimeError("RESP3 replies inside scripts are not supported".into())),
            _ => Err(mlua::Error::RuntimeError("RESP version must be 2 or 3.".into())),
        })?,
    )?;
    redis.raw_set("set_repl", lua.create_function(|_, _: MultiValue| Ok(()))?)?;
    redis.raw_set("replicate_commands", lua.create_function(|_, _: MultiValue| Ok(true))?)?;
    for (name, v) in [
        ("LOG_DEBUG", 0),
        ("LOG_VERBOSE", 1),
        ("LOG_NOTICE", 2),
        ("LOG_WARNING", 3),
        ("REPL_NONE", 0),
        ("REPL_AOF", 1),
        ("REPL_SLAVE", 2),
        ("REPL_REPLICA", 2),
        ("REPL_ALL", 3),
        ("REDIS_VERSION_NUM", 0x07_00_0f),
    ] {
        redis.raw_set(name, v)?;
    }
    redis.raw_set("REDIS_VERSION", VERSION)?;
    Ok(redis)
}

/// Marks an error raised by `redis.call` for a command's error reply:
/// the text after it is the reply, used as it is.
const REPLY_ERROR: &str = "\u{1}reply:";

/// The text a script sees for an error raised from Rust.
fn error_text(e: &mlua::Error) -> String {
    let m = root_message(e);
    match m.strip_prefix(REPLY_ERROR) {
        Some(reply) => reply.to_string(),
        None => m,
    }
}

/// The message an error from Rust carries, without mlua's wrapping.
fn root_message(e: &mlua::Error) -> String {
    match e {
        mlua::Error::CallbackError { cause, .. } => root_message(cause),
        mlua::Error::RuntimeError(m) => m.clone(),
        mlua::Error::MemoryError(m) => format!("ERR Lua out of memory (SCRIPT_MEMORY_BYTES_MAX): {m}"),
        other => other.to_string(),
    }
}

/// `redis.error_reply`'s table: "-CODE msg" keeps its code, anything
/// else is given `ERR`, as Redis 7.0 does.
fn error_table(lua: &Lua, msg: &[u8]) -> mlua::Result<Table> {
    let msg = String::from_utf8_lossy(msg);
    let msg = msg.strip_prefix('-').unwrap_or(&msg);
    let text = match msg.split_once(' ') {
        Some((code, m)) => format!("{code} {}", m.trim_matches(['\r', '\n'])),
        None => format!("ERR {}", msg.trim_matches(['\r', '\n'])),
    };
    let t = lua.create_table()?;
    t.raw_set("err", text)?;
    Ok(t)
}

/// One `redis.call` / `redis.pcall`: the command's reply, an error
/// reply for a call the script may not make.
fn redis_call(
    lua: &Lua,
    args: &MultiValue,
    now_ms: u64,
    read_only: bool,
    exec: &mut dyn FnMut(&[&[u8]]) -> Out,
) -> mlua::Result<Out> {
    if args.is_empty() {
        return Ok(Out::err("ERR Please specify at least one argument for this redis lib call"));
    }
    let mut owned: Vec<Vec<u8>> = Vec::with_capacity(args.len());
    for a in args.iter() {
        match a {
            Value::String(s) => owned.push(s.as_bytes().to_vec()),
            Value::Integer(_) | Value::Number(_) => match lua.coerce_string(a.clone())? {
                Some(s) => owned.push(s.as_bytes().to_vec()),
                None => return Ok(Out::err("ERR Lua redis lib command arguments must be strings or integers")),
            },
            _ => return Ok(Out::err("ERR Lua redis lib command arguments must be strings or integers")),
        }
    }
    let argv: Vec<&[u8]> = owned.iter().map(Vec::as_slice).collect();
    let name = String::from_utf8_lossy(argv[0]).to_ascii_lowercase();
    if NOT_IN_SCRIPTS.contains(&name.as_str()) || super::BLOCKING.contains(&name.as_str()) {
        return Ok(Out::err("ERR This Redis command is not allowed from script"));
    }
    match name.as_str() {
        "ping" => {
            return Ok(match argv.len() {
                1 => Out::Simple("PONG".into()),
                2 => Out::Bulk(argv[1].to_vec()),
                _ => Out::err("ERR Wrong number of args calling Redis command from script"),
            })
        }
        "echo" if argv.len() == 2 => return Ok(Out::Bulk(argv[1].to_vec())),
        "time" if argv.len() == 1 => {
            return Ok(Out::Array(vec![
                Out::Bulk((now_ms / 1000).to_string().into_bytes()),
                Out::Bulk(((now_ms % 1000) * 1000).to_string().into_bytes()),
            ]))
        }
        "echo" | "time" => return Ok(Out::err("ERR Wrong number of args calling Redis command from script")),
        _ => {}
    }
    let Some(spec) = super::spec(&name) else {
        return Ok(Out::err("ERR Unknown Redis command called from script"));
    };
    if !super::arity_ok(spec.arity, argv.len()) {
        return Ok(Out::err("ERR Wrong number of args calling Redis command from script"));
    }
    if read_only && spec.write {
        return Ok(Out::err("ERR Write commands are not allowed from read-only scripts."));
    }
    Ok(exec(&argv))
}

/// A command's reply as a script sees it (RESP2 conversions).
fn to_lua(lua: &Lua, out: Out) -> mlua::Result<Value> {
    Ok(match out {
        Out::Simple(s) => {
            let t = lua.create_table()?;
            t.raw_set("ok", s)?;
            Value::Table(t)
        }
        Out::Err(e) => {
            let t = lua.create_table()?;
            t.raw_set("err", e)?;
            Value::Table(t)
        }
        Out::Int(i) => Value::Number(i as f64),
        Out::Bulk(b) => Value::String(lua.create_string(&b)?),
        Out::Verbatim(t) => Value::String(lua.create_string(t)?),
        Out::Nil | Out::NilArray => Value::Boolean(false),
        Out::Double(d) => Value::String(lua.create_string(format_score(d))?),
        Out::Array(items) | Out::Set(items) => seq(lua, items)?,
        Out::Map(pairs) | Out::Pairs(pairs) => seq(lua, pairs.into_iter().flat_map(|(a, b)| [a, b]).collect())?,
        // RESP2's shape: an array of [key, value] arrays.
        Out::PairMap(pairs) => seq(lua, pairs.into_iter().map(|(a, b)| Out::Array(vec![a, b])).collect())?,
    })
}

fn seq(lua: &Lua, items: Vec<Out>) -> mlua::Result<Value> {
    let t = lua.create_table_with_capacity(items.len(), 0)?;
    for (i, item) in items.into_iter().enumerate() {
        t.raw_set(i + 1, to_lua(lua, item)?)?;
    }
    Ok(Value::Table(t))
}

/// A script's return value as a reply (Redis's Lua → RESP2 rules).
fn from_lua(v: &Value, depth: usize) -> Out {
    if depth > REPLY_DEPTH_MAX {
        return Out::err("ERR reached lua stack limit");
    }
    match v {
        Value::Boolean(true) => Out::Int(1),
        Value::Integer(i) => Out::Int(*i),
        Value::Number(n) => Out::Int(*n as i64),
        Value::String(s) => Out::Bulk(s.as_bytes().to_vec()),
        Value::Table(t) => {
            if let Ok(Value::String(e)) = t.raw_get::<Value>("err") {
                return Out::Err(one_line(&e.to_string_lossy()));
            }
            if let Ok(Value::String(s)) = t.raw_get::<Value>("ok") {
                return Out::Simple(one_line(&s.to_string_lossy()));
            }
            let mut items = Vec::new();
            for i in 1.. {
                match t.raw_get::<Value>(i) {
                    Ok(Value::Nil) | Err(_) => break,
                    Ok(item) => items.push(from_lua(&item, depth + 1)),
                }
            }
            Out::Array(items)
        }
        _ => Out::Nil,
    }
}

fn next_random(state: &Cell<u64>) -> u64 {
    let mut r = super::Rng(state.get());
    let v = r.next();
    state.set(r.0);
    v
}

/// `cjson.encode` / `cjson.decode` over serde_json, with lua-cjson's
/// rules: a table whose keys are exactly 1..n is an array, an empty one
/// an object; JSON null decodes to `cjson.null`.
fn install_cjson(lua: &Lua, g: &Table) -> mlua::Result<()> {
    let cjson = lua.create_table()?;
    let null = Value::LightUserData(mlua::LightUserData(std::ptr::null_mut()));
    cjson.raw_set("null", null)?;
    cjson.raw_set(
        "encode",
        lua.create_function(|_, v: Value| {
            let json = to_json(&v, 0).map_err(mlua::Error::RuntimeError)?;
            serde_json::to_string(&json).map_err(|e| mlua::Error::RuntimeError(e.to_string()))
        })?,
    )?;
    cjson.raw_set(
        "decode",
        lua.create_function(|lua, s: mlua::LuaString| {
            let json: serde_json::Value = serde_json::from_slice(&s.as_bytes())
                .map_err(|e| mlua::Error::RuntimeError(format!("Expected value but found invalid token: {e}")))?;
            from_json(lua, &json)
        })?,
    )?;
    g.raw_set("cjson", cjson)
}

fn to_json(v: &Value, depth: usize) -> Result<serde_json::Value, String> {
    use serde_json::Value as J;
    if depth > REPLY_DEPTH_MAX {
        return Err("Cannot serialise, excessive nesting".into());
    }
    Ok(match v {
        Value::Nil => J::Null,
        Value::LightUserData(p) if p.0.is_null() => J::Null,
        Value::Boolean(b) => J::Bool(*b),
        Value::Integer(i) => J::from(*i),
        Value::Number(n) if n.fract() == 0.0 && n.abs() < 1e15 => J::from(*n as i64),
        Value::Number(n) => {
            serde_json::Number::from_f64(*n).map(J::Number).ok_or("Cannot serialise number: must not be NaN or Inf")?
        }
        Value::String(s) => J::String(s.to_string_lossy()),
        Value::Table(t) => {
            let mut len = 0usize;
            let mut pairs = Vec::new();
            for pair in t.pairs::<Value, Value>() {
                let (k, val) = pair.map_err(|e| e.to_string())?;
                pairs.push((k, val));
            }
            let is_array = !pairs.is_empty()
                && pairs.iter().all(|(k, _)| match k {
                    Value::Integer(i) => *i >= 1 && (*i as usize) <= pairs.len(),
                    Value::Number(n) => n.fract() == 0.0 && *n >= 1.0 && (*n as usize) <= pairs.len(),
                    _ => false,
                });
            if is_array {
                let mut items = vec![J::Null; pairs.len()];
                for (k, val) in &pairs {
                    let i = match k {
                        Value::Integer(i) => *i as usize,
                        Value::Number(n) => *n as usize,
                        _ => continue,
                    };
                    items[i - 1] = to_json(val, depth + 1)?;
                    len = len.max(i);
                }
                items.truncate(len);
                J::Array(items)
            } else {
                let mut map = serde_json::Map::new();
                for (k, val) in &pairs {
                    let key = match k {
                        Value::String(s) => s.to_string_lossy(),
                        Value::Integer(i) => i.to_string(),
                        Value::Number(n) => n.to_string(),
                        _ => return Err("Cannot serialise table: table key must be a number or string".into()),
                    };
                    map.insert(key, to_json(val, depth + 1)?);
                }
                J::Object(map)
            }
        }
        _ => return Err(format!("Cannot serialise {}: type not supported", v.type_name())),
    })
}

fn from_json(lua: &Lua, j: &serde_json::Value) -> mlua::Result<Value> {
    use serde_json::Value as J;
    Ok(match j {
        J::Null => Value::LightUserData(mlua::LightUserData(std::ptr::null_mut())),
        J::Bool(b) => Value::Boolean(*b),
        J::Number(n) => Value::Number(n.as_f64().unwrap_or(0.0)),
        J::String(s) => Value::String(lua.create_string(s)?),
        J::Array(items) => {
            let t = lua.create_table_with_capacity(items.len(), 0)?;
            for (i, item) in items.iter().enumerate() {
                t.raw_set(i + 1, from_json(lua, item)?)?;
            }
            Value::Table(t)
        }
        J::Object(map) => {
            let t = lua.create_table_with_capacity(0, map.len())?;
            for (k, v) in map {
                t.raw_set(k.as_str(), from_json(lua, v)?)?;
            }
            Value::Table(t)
        }
    })
}

/// The `bit` library (LuaBitOp's functions on 32-bit integers).
fn install_bit(lua: &Lua, g: &Table) -> mlua::Result<()> {
    fn tobit(n: f64) -> i32 {
        // LuaBitOp: the number modulo 2^32, as a signed 32-bit integer.
        (n.rem_euclid(4_294_967_296.0) as u64 as u32) as i32
    }
    let bit = lua.create_table()?;
    bit.raw_set("tobit", lua.create_function(|_, n: f64| Ok(tobit(n)))?)?;
    bit.raw_set("bnot", lua.create_function(|_, n: f64| Ok(!tobit(n)))?)?;
    bit.raw_set(
        "band",
        lua.create_function(|_, ns: mlua::Variadic<f64>| Ok(ns.iter().fold(-1i32, |a, n| a & tobit(*n))))?,
    )?;
    bit.raw_set(
        "bor",
        lua.create_function(|_, ns: mlua::Variadic<f64>| Ok(ns.iter().fold(0i32, |a, n| a | tobit(*n))))?,
    )?;
    bit.raw_set(
        "bxor",
        lua.create_function(|_, ns: mlua::Variadic<f64>| Ok(ns.iter().fold(0i32, |a, n| a ^ tobit(*n))))?,
    )?;
    bit.raw_set(
        "lshift",
        lua.create_function(|_, (n, s): (f64, f64)| Ok(((tobit(n) as u32) << (tobit(s) & 31)) as i32))?,
    )?;
    bit.raw_set(
        "rshift",
        lua.create_function(|_, (n, s): (f64, f64)| Ok(((tobit(n) as u32) >> (tobit(s) & 31)) as i32))?,
    )?;
    bit.raw_set("arshift", lua.create_function(|_, (n, s): (f64, f64)| Ok(tobit(n) >> (tobit(s) & 31)))?)?;
    bit.raw_set(
        "rol",
        lua.create_function(|_, (n, s): (f64, f64)| Ok((tobit(n) as u32).rotate_left((tobit(s) & 31) as u32) as i32))?,
    )?;
    bit.raw_set(
        "ror",
        lua.create_function(|_, (n, s): (f64, f64)| Ok((tobit(n) as u32).rotate_right((tobit(s) & 31) as u32) as i32))?,
    )?;
    bit.raw_set("bswap", lua.create_function(|_, n: f64| Ok((tobit(n) as u32).swap_bytes() as i32))?)?;
    bit.raw_set(
        "tohex",
        lua.create_function(|_, (n, digits): (f64, Option<i64>)| {
            let d = digits.unwrap_or(8);
            let (upper, width) = (d < 0, d.unsigned_abs().clamp(1, 8) as usize);
            let v = tobit(n) as u32 as u64 & ((1u64 << (4 * width)) - 1);
            Ok(if upper { format!("{v:0width$X}") } else { format!("{v:0width$x}") })
        })?,
    )?;
    g.raw_set("bit", bit)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000_000;

    fn eval(ks: &mut Keyspace, args: &[&str]) -> Out {
        let argv: Vec<&[u8]> = std::iter::once("EVAL").chain(args.iter().copied()).map(str::as_bytes).collect();
        ks.exec(0, NOW, &argv)
    }

    #[test]
    fn an_endless_script_is_stopped_and_pcall_cannot_catch_the_stop() {
        let mut ks = Keyspace::default();
        for body in ["while true do end", "while true do pcall(function() while true do end end) end"] {
            match eval(&mut ks, &[body, "0"]) {
                Out::Err(e) => assert!(e.starts_with(KILLED), "{body}: {e}"),
                other => panic!("{body}: {other:?}"),
            }
        }
        // Writes made before the stop stay, as after any script error.
        let out = eval(&mut ks, &["redis.call('set','before','1') while true do end", "0"]);
        assert!(matches!(out, Out::Err(_)));
        assert_eq!(ks.exec(0, NOW, &[b"GET", b"before"]), Out::Bulk(b"1".to_vec()));
    }

    #[test]
    fn a_script_over_the_memory_limit_fails_with_an_error() {
        let mut ks = Keyspace::default();
        let out = eval(
            &mut ks,
            &["local t = {} for i = 1, 100 do t[i] = string.rep('x', 8 * 1024 * 1024) .. i end return #t", "0"],
        );
        match out {
            Out::Err(e) => assert!(e.contains("memory"), "{e}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn random_numbers_are_the_same_on_every_replica_and_differ_between_calls() {
        let body = "return {math.random(1000000), math.random(1000000), tostring(math.random())}";
        let (mut a, mut b) = (Keyspace::default(), Keyspace::default());
        // Each writes something first, as replicas with other keys would.
        let first = eval(&mut a, &[body, "0"]);
        assert_eq!(first, eval(&mut b, &[body, "0"]));
        let Out::Array(items) = &first else { panic!("{first:?}") };
        assert_ne!(items[0], items[1]);
        // Another entry (another time) draws other numbers.
        let later = b.exec(0, NOW + 1, &[b"EVAL", body.as_bytes(), b"0"]);
        assert_ne!(first, later);
    }

    /// A script that writes what a random read picked (RANDOMKEY,
    /// SRANDMEMBER, HRANDFIELD, ZRANDMEMBER) writes the same on every
    /// replica, whatever other reads each node served meanwhile; two picks
    /// in one script still differ.
    #[test]
    fn random_reads_in_a_write_script_pick_alike_on_every_replica() {
        let setup: Vec<String> = (0..50)
            .flat_map(|i| {
                [format!("SET k{i} v"), format!("SADD s m{i}"), format!("HSET h f{i} v"), format!("ZADD z {i} m{i}")]
            })
            .collect();
        let body = "local a = redis.call('RANDOMKEY') local b = redis.call('RANDOMKEY') \
                    local s = redis.call('SRANDMEMBER', 's') local h = redis.call('HRANDFIELD', 'h') \
                    local z = redis.call('ZRANDMEMBER', 'z') \
                    redis.call('SET', 'picked', a .. ' ' .. b .. ' ' .. s .. ' ' .. h .. ' ' .. z) return 1";
        let picked = |ks: &mut Keyspace| {
            for line in &setup {
                let argv: Vec<&[u8]> = line.split(' ').map(str::as_bytes).collect();
                ks.exec(0, NOW, &argv);
            }
            eval(ks, &[body, "0"]);
            ks.exec(0, NOW, &[b"GET", b"picked"])
        };
        let mut a = Keyspace::default();
        let first = picked(&mut a);
        // Client reads on this node in between move the process's own draws.
        for _ in 0..7 {
            a.read(0, NOW, &[b"RANDOMKEY"]);
        }
        let mut b = Keyspace::default();
        assert_eq!(first, picked(&mut b));
        let Out::Bulk(text) = first else { panic!("{first:?}") };
        let text = String::from_utf8(text).unwrap();
        let keys: Vec<&str> = text.split(' ').take(2).collect();
        assert_ne!(keys[0], keys[1], "two picks in one script differ: {text}");
    }

    #[test]
    fn time_in_a_script_is_the_entry_time() {
        let mut ks = Keyspace::default();
        let out = eval(&mut ks, &["return redis.call('time')", "0"]);
        let want = Out::Array(vec![Out::Bulk(b"1700000000".to_vec()), Out::Bulk(b"0".to_vec())]);
        assert_eq!(out, want);
    }

    #[test]
    fn nothing_a_script_leaves_reaches_the_next_one() {
        let mut ks = Keyspace::default();
        for leave in [
            "rawset(_G, 'leak', 1)",
            "rawset(string, 'leak', 1)",
            "rawset(redis, 'leak', 1)",
            "pcall(function() getmetatable('').__index.leak = 1 end)",
            "pcall(loadstring('leak = 1'))",
            "math.randomseed(42)",
        ] {
            assert_eq!(eval(&mut ks, &[&format!("{leave} return 1"), "0"]), Out::Int(1), "{leave}");
        }
        match eval(&mut ks, &["return leak", "0"]) {
            Out::Err(e) => assert!(e.contains("nonexistent global variable 'leak'"), "{e}"),
            other => panic!("{other:?}"),
        }
        let seen = eval(&mut ks, &["return {tostring(string.leak), tostring(redis.leak), tostring(('x').leak)}", "0"]);
        let nil = || Out::Bulk(b"nil".to_vec());
        assert_eq!(seen, Out::Array(vec![nil(), nil(), nil()]));
    }

    /// Scripts run on a Lua state the thread keeps. A state that has run
    /// other scripts (stopped ones, failed ones, ones that reseeded the
    /// generator) must answer exactly as a new one does, as a replica
    /// that just restarted would: same replies, same data, the same
    /// instruction at which an endless script is stopped.
    #[test]
    fn a_used_lua_state_answers_as_a_new_one() {
        let scripts: &[&str] = &[
            "math.randomseed(7) return math.random(1000000)",
            "local n = 0 while true do n = n + 1 if n % 100 == 0 then redis.call('set', 'n', n) end end",
            "local t = {} for i = 1, 100 do t[i] = string.rep('x', 8 * 1024 * 1024) .. i end",
            "error('boom')",
            "return {math.random(1000000), tostring({}), type(rawget(_G, 'collectgarbage')), redis.call('get', 'n')}",
        ];
        let run_all = |ks: &mut Keyspace| scripts.iter().map(|s| eval(ks, &[s, "0"])).collect::<Vec<_>>();
        // This thread's state runs them twice; a new thread's state once.
        let mut used = Keyspace::default();
        run_all(&mut used);
        let mut used_again = Keyspace::default();
        let second = run_all(&mut used_again);
        let fresh = std::thread::spawn(move || {
            let mut ks = Keyspace::default();
            let out = run_all(&mut ks);
            (out, ks)
        })
        .join()
        .expect("thread");
        assert_eq!(second, fresh.0);
        assert!(used_again == fresh.1, "same data after the same scripts");
        let Out::Array(last) = &second[4] else { panic!("{:?}", second[4]) };
        let Out::Bulk(n) = &last[3] else { panic!("{last:?}") };
        assert!(n.len() > 3, "the endless script ran a while before it was stopped: {n:?}");
    }

    #[test]
    fn the_cache_keeps_the_newest_scripts_from_eval_and_every_loaded_one() {
        let mut ks = Keyspace::default();
        let loaded = ks.exec(0, NOW, &[b"SCRIPT", b"LOAD", b"return 'kept'"]);
        for i in 0..SCRIPTS_FROM_EVAL_MAX + 10 {
            let body = format!("return {i}");
            assert_eq!(eval(&mut ks, &[&body, "0"]), Out::Int(i as i64));
        }
        assert_eq!(ks.scripts().len(), SCRIPTS_FROM_EVAL_MAX + 1);
        let exists = |ks: &mut Keyspace, body: &str| {
            ks.exec(0, NOW, &[b"SCRIPT", b"EXISTS", sha1_hex(body.as_bytes()).as_bytes()])
        };
        assert_eq!(exists(&mut ks, "return 0"), Out::Array(vec![Out::Int(0)]));
        assert_eq!(exists(&mut ks, "return 509"), Out::Array(vec![Out::Int(1)]));
        let Out::Bulk(sha) = loaded else { panic!("{loaded:?}") };
        assert_eq!(ks.exec(0, NOW, &[b"EVALSHA", &sha, b"0"]), Out::Bulk(b"kept".to_vec()));
    }
}
