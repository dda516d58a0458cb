//! The Redis port: connection commands with the stock `redis` crate over
//! RESP2 and RESP3, and raw bytes compared with what redis-server 7.0.15
//! answers (recorded against the Debian package).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::TestNode;
use futures_util::future::join_all;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends `input` on a fresh connection and reads until the server closes
/// or has been quiet for a moment; `<closed>` marks a close.
async fn exchange(addr: std::net::SocketAddr, input: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(input).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_millis(300), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                out.extend_from_slice(b"<closed>");
                break;
            }
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn redis_addr(n: &TestNode) -> std::net::SocketAddr {
    n.node.redis.local_addr()
}

/// (request bytes, reply of redis-server 7.0.15), no password set. `ID`
/// stands for the connection id, which differs.
const NO_AUTH_TABLE: &[(&str, &str)] = &[
    ("PING\r\n", "+PONG\r\n"),
    ("PING hi\r\n", "$2\r\nhi\r\n"),
    ("PING a b\r\n", "-ERR wrong number of arguments for 'ping' command\r\n"),
    ("*1\r\n$4\r\nping\r\n", "+PONG\r\n"),
    ("*2\r\n$4\r\nECHO\r\n$0\r\n\r\n", "$0\r\n\r\n"),
    ("ECHO\r\n", "-ERR wrong number of arguments for 'echo' command\r\n"),
    ("foo\r\n", "-ERR unknown command 'foo', with args beginning with: \r\n"),
    ("foo bar\r\n", "-ERR unknown command 'foo', with args beginning with: 'bar' \r\n"),
    ("*0\r\n*1\r\n$4\r\nPING\r\n", "+PONG\r\n"),
    ("\r\nPING\r\n", "+PONG\r\n"),
    ("SELECT 16\r\n", "-ERR DB index is out of range\r\n"),
    ("SELECT -1\r\n", "-ERR DB index is out of range\r\n"),
    ("SELECT x\r\n", "-ERR value is not an integer or out of range\r\n"),
    ("SELECT 1\r\n", "+OK\r\n"),
    // A sole voter has no replica to fail over to; SHUTDOWN's refusals
    // (recorded from redis-server 7.0.15).
    ("FAILOVER\r\n", "-ERR FAILOVER requires connected replicas.\r\n"),
    ("FAILOVER FORCE\r\n", "-ERR FAILOVER requires connected replicas.\r\n"),
    ("FAILOVER TO h x\r\n", "-ERR value is not an integer or out of range\r\n"),
    ("FAILOVER ABORT\r\n", "-ERR No failover in progress.\r\n"),
    ("FAILOVER TIMEOUT 0\r\n", "-ERR FAILOVER timeout must be greater than 0\r\n"),
    ("FAILOVER FOO\r\n", "-ERR syntax error\r\n"),
    ("FAILOVER TIMEOUT 5 TIMEOUT 6\r\n", "-ERR syntax error\r\n"),
    ("CLIENT PAUSE x\r\n", "-ERR timeout is not an integer or out of range\r\n"),
    ("CLIENT PAUSE -1\r\n", "-ERR timeout is negative\r\n"),
    ("CLIENT PAUSE 10 FOO\r\n", "-ERR CLIENT PAUSE mode must be WRITE or ALL\r\n"),
    ("CLIENT PAUSE\r\n", "-ERR wrong number of arguments for 'client|pause' command\r\n"),
    (
        "CLIENT PAUSE 1 2 3\r\n",
        "-ERR unknown subcommand or wrong number of arguments for 'PAUSE'. Try CLIENT HELP.\r\n",
    ),
    ("CLIENT UNPAUSE x\r\n", "-ERR wrong number of arguments for 'client|unpause' command\r\n"),
    ("CLIENT PAUSE 0\r\nCLIENT PAUSE 0 write\r\n", "+OK\r\n+OK\r\n"),
    // ACL for the users of the config (none here: default, no password).
    ("ACL WHOAMI\r\n", "$7\r\ndefault\r\n"),
    ("ACL USERS\r\n", "*1\r\n$7\r\ndefault\r\n"),
    ("ACL LIST\r\n", "*1\r\n$34\r\nuser default on nopass ~* &* +@all\r\n"),
    (
        "ACL GETUSER default\r\n",
        "*12\r\n$5\r\nflags\r\n*2\r\n$2\r\non\r\n$6\r\nnopass\r\n$9\r\npasswords\r\n*0\r\n$8\r\ncommands\r\n$5\r\n+@all\r\n$4\r\nkeys\r\n$2\r\n~*\r\n$8\r\nchannels\r\n$2\r\n&*\r\n$9\r\nselectors\r\n*0\r\n",
    ),
    ("ACL GETUSER nope\r\n", "$-1\r\n"),
    ("ACL DRYRUN default get k\r\n", "+OK\r\n"),
    ("ACL DRYRUN nope get k\r\n", "-ERR User 'nope' not found\r\n"),
    ("ACL DRYRUN default foo\r\n", "-ERR Command 'foo' not found\r\n"),
    ("ACL DRYRUN default\r\n", "-ERR wrong number of arguments for 'acl|dryrun' command\r\n"),
    (
        "ACL GENPASS 0\r\n",
        "-ERR ACL GENPASS argument must be the number of bits for the output password, a positive number up to 4096\r\n",
    ),
    ("ACL GENPASS x\r\n", "-ERR value is not an integer or out of range\r\n"),
    (
        "ACL GENPASS 1 2\r\n",
        "-ERR unknown subcommand or wrong number of arguments for 'GENPASS'. Try ACL HELP.\r\n",
    ),
    ("ACL FOO\r\n", "-ERR unknown subcommand 'FOO'. Try ACL HELP.\r\n"),
    ("ACL\r\n", "-ERR wrong number of arguments for 'acl' command\r\n"),
    ("ACL WHOAMI x\r\n", "-ERR wrong number of arguments for 'acl|whoami' command\r\n"),
    ("ACL GETUSER\r\n", "-ERR wrong number of arguments for 'acl|getuser' command\r\n"),
    ("SHUTDOWN ABORT\r\n", "-ERR No shutdown in progress.\r\n"),
    ("SHUTDOWN FOO\r\n", "-ERR syntax error\r\n"),
    ("SHUTDOWN SAVE NOSAVE\r\n", "-ERR syntax error\r\n"),
    ("SHUTDOWN ABORT NOW\r\n", "-ERR syntax error\r\n"),
    (
        "MULTI\r\nSHUTDOWN\r\nFAILOVER ABORT\r\nEXEC\r\n",
        "+OK\r\n-ERR Command not allowed inside a transaction\r\n+QUEUED\r\n-EXECABORT Transaction discarded because of previous errors.\r\n",
    ),
    // GET's own path: a hit, a miss, a key of another type, arity.
    (
        "SET gs v\r\nGET gs\r\nGET nokey\r\nRPUSH gl a\r\nGET gl\r\nGET\r\nGET a b\r\n",
        "+OK\r\n$1\r\nv\r\n$-1\r\n:1\r\n-WRONGTYPE Operation against a key holding the wrong kind of value\r\n-ERR wrong number of arguments for 'get' command\r\n-ERR wrong number of arguments for 'get' command\r\n",
    ),
    (
        "AUTH pw\r\n",
        "-ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?\r\n",
    ),
    ("HELLO 4\r\n", "-NOPROTO unsupported protocol version\r\n"),
    ("HELLO x\r\n", "-ERR Protocol version is not an integer or out of range\r\n"),
    ("HELLO 3 FOO\r\n", "-ERR Syntax error in HELLO option 'FOO'\r\n"),
    ("CLIENT SETNAME \"a b\"\r\n", "-ERR Client names cannot contain spaces, newlines or special characters.\r\n"),
    ("CLIENT GETNAME\r\n", "$-1\r\n"),
    ("CLIENT SETNAME x\r\nCLIENT GETNAME\r\n", "+OK\r\n$1\r\nx\r\n"),
    ("CLIENT FOO\r\n", "-ERR unknown subcommand 'FOO'. Try CLIENT HELP.\r\n"),
    ("CLIENT\r\n", "-ERR wrong number of arguments for 'client' command\r\n"),
    ("CLIENT SETNAME\r\n", "-ERR wrong number of arguments for 'client|setname' command\r\n"),
    // CLIENT TRACKING / CACHING / GETREDIR / TRACKINGINFO: options, their
    // errors in Redis's order, and the info map.
    ("CLIENT TRACKING\r\n", "-ERR wrong number of arguments for 'client|tracking' command\r\n"),
    ("CLIENT TRACKING maybe\r\n", "-ERR syntax error\r\n"),
    ("CLIENT TRACKING on FOO\r\n", "-ERR syntax error\r\n"),
    ("CLIENT TRACKING on REDIRECT\r\n", "-ERR syntax error\r\n"),
    ("CLIENT TRACKING on REDIRECT x\r\n", "-ERR value is not an integer or out of range\r\n"),
    ("CLIENT TRACKING on REDIRECT 999999\r\n", "-ERR The client ID you want redirect to does not exist\r\n"),
    ("CLIENT TRACKING on PREFIX a\r\n", "-ERR PREFIX option requires BCAST mode to be enabled\r\n"),
    ("CLIENT TRACKING on BCAST OPTIN\r\n", "-ERR OPTIN and OPTOUT are not compatible with BCAST\r\n"),
    ("CLIENT TRACKING on OPTIN OPTOUT\r\n", "-ERR You can't specify both OPTIN mode and OPTOUT mode\r\n"),
    ("CLIENT TRACKING on BCAST PREFIX ab PREFIX a\r\n", "-ERR Prefix 'ab' overlaps with another provided prefix 'a'. Prefixes for a single client must not overlap.\r\n"),
    ("CLIENT TRACKING on BCAST PREFIX a\r\nCLIENT TRACKING on BCAST PREFIX abc\r\n", "+OK\r\n-ERR Prefix 'abc' overlaps with an existing prefix 'a'. Prefixes for a single client must not overlap.\r\n"),
    ("CLIENT TRACKING on\r\nCLIENT TRACKING on BCAST\r\n", "+OK\r\n-ERR You can't switch BCAST mode on/off before disabling tracking for this client, and then re-enabling it with a different mode.\r\n"),
    ("CLIENT TRACKING on OPTIN\r\nCLIENT TRACKING on OPTOUT\r\n", "+OK\r\n-ERR You can't switch OPTIN/OPTOUT mode before disabling tracking for this client, and then re-enabling it with a different mode.\r\n"),
    ("CLIENT CACHING yes\r\n", "-ERR CLIENT CACHING can be called only when the client is in tracking mode with OPTIN or OPTOUT mode enabled\r\n"),
    ("CLIENT TRACKING on\r\nCLIENT CACHING yes\r\n", "+OK\r\n-ERR CLIENT CACHING YES is only valid when tracking is enabled in OPTIN mode.\r\n"),
    ("CLIENT TRACKING on OPTIN\r\nCLIENT CACHING no\r\nCLIENT CACHING maybe\r\nCLIENT CACHING yes\r\n", "+OK\r\n-ERR CLIENT CACHING NO is only valid when tracking is enabled in OPTOUT mode.\r\n-ERR syntax error\r\n+OK\r\n"),
    ("CLIENT TRACKING on OPTOUT\r\nCLIENT CACHING yes\r\nCLIENT CACHING no\r\n", "+OK\r\n-ERR CLIENT CACHING YES is only valid when tracking is enabled in OPTIN mode.\r\n+OK\r\n"),
    ("CLIENT CACHING\r\n", "-ERR wrong number of arguments for 'client|caching' command\r\n"),
    ("CLIENT GETREDIR\r\n", ":-1\r\n"),
    ("CLIENT TRACKING on\r\nCLIENT GETREDIR\r\nCLIENT TRACKING off\r\nCLIENT GETREDIR\r\n", "+OK\r\n:0\r\n+OK\r\n:-1\r\n"),
    ("CLIENT TRACKINGINFO\r\n", "*6\r\n$5\r\nflags\r\n*1\r\n$3\r\noff\r\n$8\r\nredirect\r\n:-1\r\n$8\r\nprefixes\r\n*0\r\n"),
    ("CLIENT TRACKING on BCAST PREFIX b PREFIX a NOLOOP\r\nCLIENT TRACKINGINFO\r\n", "+OK\r\n*6\r\n$5\r\nflags\r\n*3\r\n$2\r\non\r\n$5\r\nbcast\r\n$6\r\nnoloop\r\n$8\r\nredirect\r\n:0\r\n$8\r\nprefixes\r\n*2\r\n$1\r\na\r\n$1\r\nb\r\n"),
    ("CLIENT TRACKING on OPTIN\r\nCLIENT CACHING yes\r\nCLIENT TRACKINGINFO\r\n", "+OK\r\n+OK\r\n*6\r\n$5\r\nflags\r\n*3\r\n$2\r\non\r\n$5\r\noptin\r\n$11\r\ncaching-yes\r\n$8\r\nredirect\r\n:0\r\n$8\r\nprefixes\r\n*0\r\n"),
    ("CLIENT TRACKING on BCAST\r\nCLIENT TRACKINGINFO\r\n", "+OK\r\n*6\r\n$5\r\nflags\r\n*2\r\n$2\r\non\r\n$5\r\nbcast\r\n$8\r\nredirect\r\n:0\r\n$8\r\nprefixes\r\n*1\r\n$0\r\n\r\n"),
    ("CLIENT GETREDIR x\r\n", "-ERR wrong number of arguments for 'client|getredir' command\r\n"),
    ("QUIT\r\n", "+OK\r\n<closed>"),
    ("RESET\r\n", "+RESET\r\n"),
    ("*x\r\n", "-ERR Protocol error: invalid multibulk length\r\n<closed>"),
    ("*2\r\nx\r\n", "-ERR Protocol error: expected '$', got 'x'\r\n<closed>"),
    ("\"unbalanced\r\n", "-ERR Protocol error: unbalanced quotes in request\r\n<closed>"),
    (
        "SLOWLOG HELP\r\n",
        "*12\r\n+SLOWLOG <subcommand> [<arg> [value] [opt] ...]. Subcommands are:\r\n+GET [<count>]\r\n\
+    Return top <count> entries from the slowlog (default: 10, -1 mean all).\r\n+    Entries are made of:\r\n\
+    id, timestamp, time in microseconds, arguments array, client IP and port,\r\n+    client name\r\n+LEN\r\n\
+    Return the length of the slowlog.\r\n+RESET\r\n+    Reset the slowlog.\r\n+HELP\r\n+    Prints this help.\r\n",
    ),
    ("SLOWLOG\r\n", "-ERR wrong number of arguments for 'slowlog' command\r\n"),
    ("SLOWLOG FOO\r\n", "-ERR unknown subcommand 'FOO'. Try SLOWLOG HELP.\r\n"),
    ("SLOWLOG GET -2\r\n", "-ERR count should be greater than or equal to -1\r\n"),
    ("SLOWLOG GET x\r\n", "-ERR count should be greater than or equal to -1\r\n"),
    ("SLOWLOG GET 1 2\r\n", "-ERR unknown subcommand or wrong number of arguments for 'GET'. Try SLOWLOG HELP.\r\n"),
    ("SLOWLOG LEN x\r\n", "-ERR wrong number of arguments for 'slowlog|len' command\r\n"),
    ("SLOWLOG RESET x\r\n", "-ERR wrong number of arguments for 'slowlog|reset' command\r\n"),
    ("SLOWLOG HELP x\r\n", "-ERR wrong number of arguments for 'slowlog|help' command\r\n"),
    ("SLOWLOG GET 0\r\n", "*0\r\n"),
    (
        "CONFIG SET slowlog-log-slower-than x\r\n",
        "-ERR CONFIG SET failed (possibly related to argument 'slowlog-log-slower-than') - argument couldn't be parsed into an integer\r\n",
    ),
    // LATENCY as redis-server 7.0.15 answered (its latency monitor off, as by default).
    (
        "LATENCY HELP\r\n",
        "*17\r\n+LATENCY <subcommand> [<arg> [value] [opt] ...]. Subcommands are:\r\n+DOCTOR\r\n\
+    Return a human readable latency analysis report.\r\n+GRAPH <event>\r\n\
+    Return an ASCII latency graph for the <event> class.\r\n+HISTORY <event>\r\n\
+    Return time-latency samples for the <event> class.\r\n+LATEST\r\n\
+    Return the latest latency samples for all events.\r\n+RESET [<event> ...]\r\n\
+    Reset latency data of one or more <event> classes.\r\n\
+    (default: reset all data for all event classes)\r\n+HISTOGRAM [COMMAND ...]\r\n\
+    Return a cumulative distribution of latencies in the format of a histogram for the specified command names.\r\n\
+    If no commands are specified then all histograms are replied.\r\n+HELP\r\n+    Prints this help.\r\n",
    ),
    ("LATENCY\r\n", "-ERR wrong number of arguments for 'latency' command\r\n"),
    ("LATENCY FOO\r\n", "-ERR unknown subcommand 'FOO'. Try LATENCY HELP.\r\n"),
    ("LATENCY LATEST\r\nLATENCY HISTORY x\r\nLATENCY RESET\r\nLATENCY RESET a b\r\n", "*0\r\n*0\r\n:0\r\n:0\r\n"),
    ("LATENCY GRAPH foo\r\n", "-ERR No samples available for event 'foo'\r\n"),
    ("LATENCY HISTOGRAM nosuchcommand\r\n", "*0\r\n"),
    (
        "LATENCY DOCTOR\r\n",
        "$288\r\nI'm sorry, Dave, I can't do that. Latency monitoring is disabled in this Redis instance. \
You may use \"CONFIG SET latency-monitor-threshold <milliseconds>.\" in order to enable it. \
If we weren't in a deep space mission I'd suggest to take a look at https://redis.io/topics/latency-monitor.\n\r\n",
    ),
    (
        "LATENCY DOCTOR x\r\nLATENCY GRAPH\r\nLATENCY HISTORY a b\r\nLATENCY LATEST x\r\nLATENCY HELP x\r\n",
        "-ERR wrong number of arguments for 'latency|doctor' command\r\n\
-ERR wrong number of arguments for 'latency|graph' command\r\n\
-ERR wrong number of arguments for 'latency|history' command\r\n\
-ERR wrong number of arguments for 'latency|latest' command\r\n\
-ERR wrong number of arguments for 'latency|help' command\r\n",
    ),
    // In RESP3, text for people is a verbatim string, as Redis 7.0 sends it.
    (
        "HELLO 3\r\nLATENCY DOCTOR\r\n",
        "%7\r\n$6\r\nserver\r\n$5\r\nredis\r\n$7\r\nversion\r\n$6\r\n7.0.15\r\n$5\r\nproto\r\n:3\r\n$2\r\nid\r\n:ID\r\n\
$4\r\nmode\r\n$10\r\nstandalone\r\n$4\r\nrole\r\n$6\r\nmaster\r\n$7\r\nmodules\r\n*0\r\n\
=292\r\ntxt:I'm sorry, Dave, I can't do that. Latency monitoring is disabled in this Redis instance. \
You may use \"CONFIG SET latency-monitor-threshold <milliseconds>.\" in order to enable it. \
If we weren't in a deep space mission I'd suggest to take a look at https://redis.io/topics/latency-monitor.\n\r\n",
    ),
    // An empty node, as redis-server 7.0.15 answers an empty instance;
    // this server's allocator keeps no statistics.
    (
        "MEMORY DOCTOR\r\n",
        "$268\r\nHi Sam, this instance is empty or is using very little memory, my issues detector can't be used \
in these conditions. Please, leave for your mission on Earth and fill it with some data. The new Sam and I will be \
back to our programming as soon as I finished rebooting.\n\r\n",
    ),
    (
        "HELLO 3\r\nMEMORY DOCTOR\r\n",
        "%7\r\n$6\r\nserver\r\n$5\r\nredis\r\n$7\r\nversion\r\n$6\r\n7.0.15\r\n$5\r\nproto\r\n:3\r\n$2\r\nid\r\n:ID\r\n\
$4\r\nmode\r\n$10\r\nstandalone\r\n$4\r\nrole\r\n$6\r\nmaster\r\n$7\r\nmodules\r\n*0\r\n\
=272\r\ntxt:Hi Sam, this instance is empty or is using very little memory, my issues detector can't be used \
in these conditions. Please, leave for your mission on Earth and fill it with some data. The new Sam and I will be \
back to our programming as soon as I finished rebooting.\n\r\n",
    ),
    ("MEMORY MALLOC-STATS\r\n", "$45\r\nStats not supported for the current allocator\r\n"),
    (
        "MEMORY DOCTOR x\r\nMEMORY STATS x\r\nMEMORY MALLOC-STATS x\r\nMEMORY FOO\r\nMEMORY\r\n",
        "-ERR wrong number of arguments for 'memory|doctor' command\r\n\
-ERR wrong number of arguments for 'memory|stats' command\r\n\
-ERR wrong number of arguments for 'memory|malloc-stats' command\r\n\
-ERR unknown subcommand 'FOO'. Try MEMORY HELP.\r\n\
-ERR wrong number of arguments for 'memory' command\r\n",
    ),
    (
        "HELLO 2\r\n",
        "*14\r\n$6\r\nserver\r\n$5\r\nredis\r\n$7\r\nversion\r\n$6\r\n7.0.15\r\n$5\r\nproto\r\n:2\r\n$2\r\nid\r\n:ID\r\n\
$4\r\nmode\r\n$10\r\nstandalone\r\n$4\r\nrole\r\n$6\r\nmaster\r\n$7\r\nmodules\r\n*0\r\n",
    ),
    (
        "HELLO 3 SETNAME n\r\nCLIENT GETNAME\r\n",
        "%7\r\n$6\r\nserver\r\n$5\r\nredis\r\n$7\r\nversion\r\n$6\r\n7.0.15\r\n$5\r\nproto\r\n:3\r\n$2\r\nid\r\n:ID\r\n\
$4\r\nmode\r\n$10\r\nstandalone\r\n$4\r\nrole\r\n$6\r\nmaster\r\n$7\r\nmodules\r\n*0\r\n$1\r\nn\r\n",
    ),
    // CLIENT REPLY: OFF until ON, SKIP for the next command (writes too).
    (
        "CLIENT REPLY OFF\r\nSET cr 1\r\nGET cr\r\nCLIENT REPLY ON\r\nGET cr\r\n",
        "+OK\r\n$1\r\n1\r\n",
    ),
    ("CLIENT REPLY SKIP\r\nPING\r\nPING\r\n", "+PONG\r\n"),
    ("CLIENT REPLY SKIP\r\nSET cr2 1\r\nINCR cr2\r\n", ":2\r\n"),
    ("CLIENT REPLY FOO\r\n", "-ERR syntax error\r\n"),
    // Subscription confirmations are pushes: not silenced.
    (
        "CLIENT REPLY OFF\r\nSUBSCRIBE ch\r\nPING\r\nUNSUBSCRIBE ch\r\nCLIENT REPLY ON\r\nPING\r\n",
        "*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n*3\r\n$11\r\nunsubscribe\r\n$2\r\nch\r\n:0\r\n+OK\r\n+PONG\r\n",
    ),
    ("CLIENT REPLY\r\n", "-ERR wrong number of arguments for 'client|reply' command\r\n"),
    ("CLIENT REPLY OFF\r\nCLIENT REPLY SKIP\r\nPING\r\nCLIENT REPLY ON\r\nPING\r\n", "+OK\r\n+PONG\r\n"),
    // COMMAND GETKEYS, as redis-server 7.0.15 answered.
    ("COMMAND GETKEYS sort abc store invalid store stillbad store def\r\n", "*2\r\n$3\r\nabc\r\n$3\r\ndef\r\n"),
    ("COMMAND GETKEYS ping x\r\n", "-ERR The command has no key arguments\r\n"),
    ("COMMAND GETKEYS foo x\r\n", "-ERR Invalid command specified\r\n"),
    ("COMMAND GETKEYS set a\r\n", "-ERR Invalid number of arguments specified for command\r\n"),
    ("COMMAND GETKEYS mset a 1 b 2\r\n", "*2\r\n$1\r\na\r\n$1\r\nb\r\n"),
    ("COMMAND GETKEYS zunionstore d 2 a b\r\n", "*3\r\n$1\r\nd\r\n$1\r\na\r\n$1\r\nb\r\n"),
    ("COMMAND GETKEYS xread count 1 streams a b 0 0\r\n", "*2\r\n$1\r\na\r\n$1\r\nb\r\n"),
    ("COMMAND GETKEYS eval x 2 a b c\r\n", "*2\r\n$1\r\na\r\n$1\r\nb\r\n"),
    ("COMMAND GETKEYS georadius g 1 1 1 km store d\r\n", "*2\r\n$1\r\ng\r\n$1\r\nd\r\n"),
    ("COMMAND GETKEYS geosearchstore d s frommember m byradius 1 km\r\n", "*2\r\n$1\r\nd\r\n$1\r\ns\r\n"),
    ("COMMAND GETKEYS blpop a b 0\r\n", "*2\r\n$1\r\na\r\n$1\r\nb\r\n"),
    ("COMMAND GETKEYS sort_ro abc\r\n", "*1\r\n$3\r\nabc\r\n"),
    ("COMMAND GETKEYS\r\n", "-ERR wrong number of arguments for 'command|getkeys' command\r\n"),
    ("COMMAND GETKEYS lmove a b left right\r\n", "*2\r\n$1\r\na\r\n$1\r\nb\r\n"),
    ("COMMAND GETKEYS lmpop 2 a b left\r\n", "*2\r\n$1\r\na\r\n$1\r\nb\r\n"),
    ("COMMAND GETKEYS object encoding k\r\n", "*1\r\n$1\r\nk\r\n"),
    // CLIENT UNBLOCK of a connection that is not blocked, and the errors.
    ("CLIENT UNBLOCK x\r\n", "-ERR value is not an integer or out of range\r\n"),
    ("CLIENT UNBLOCK 99999\r\n", ":0\r\n"),
    ("CLIENT UNBLOCK 99999 ERROR\r\n", ":0\r\n"),
    ("CLIENT UNBLOCK 99999 foo\r\n", "-ERR CLIENT UNBLOCK reason should be TIMEOUT or ERROR\r\n"),
    (
        "CLIENT UNBLOCK 99999 timeout extra\r\n",
        "-ERR unknown subcommand or wrong number of arguments for 'UNBLOCK'. Try CLIENT HELP.\r\n",
    ),
    ("CLIENT UNBLOCK\r\n", "-ERR wrong number of arguments for 'client|unblock' command\r\n"),
    // SWAPDB's range is the server's check (databases 16).
    ("SWAPDB 0 16\r\n", "-ERR DB index is out of range\r\n"),
    ("SWAPDB 16 x\r\n", "-ERR invalid second DB index\r\n"),
    // Redis's tuning parameters: taken, checked as Redis checks them,
    // shown back (no effect here).
    (
        "CONFIG SET hash-max-ziplist-entries 256\r\nCONFIG GET hash-max-ziplist-entries\r\nCONFIG SET hash-max-ziplist-entries 512\r\n",
        "+OK\r\n*2\r\n$24\r\nhash-max-ziplist-entries\r\n$3\r\n256\r\n+OK\r\n",
    ),
    (
        "CONFIG SET zset-max-ziplist-entries abc\r\n",
        "-ERR CONFIG SET failed (possibly related to argument 'zset-max-ziplist-entries') - argument couldn't be parsed into an integer\r\n",
    ),
    (
        "CONFIG SET list-max-ziplist-size -99999999999\r\n",
        "-ERR CONFIG SET failed (possibly related to argument 'list-max-ziplist-size') - argument must be between -2147483648 and 2147483647 inclusive\r\n",
    ),
    (
        "CONFIG SET save \"900 1 300 10\"\r\nCONFIG GET save\r\nCONFIG SET save \"\"\r\n",
        "+OK\r\n*2\r\n$4\r\nsave\r\n$12\r\n900 1 300 10\r\n+OK\r\n",
    ),
    (
        "CONFIG SET save \"900\"\r\n",
        "-ERR CONFIG SET failed (possibly related to argument 'save') - Invalid save parameters\r\n",
    ),
    (
        "CONFIG SET activerehashing maybe\r\n",
        "-ERR CONFIG SET failed (possibly related to argument 'activerehashing') - argument must be 'yes' or 'no'\r\n",
    ),
    (
        "CONFIG SET stream-node-max-entries -1\r\n",
        "-ERR CONFIG SET failed (possibly related to argument 'stream-node-max-entries') - argument must be between 0 and 9223372036854775807 inclusive\r\n",
    ),
];

/// Replaces the id after `:` in `id\r\n:N\r\n` with `ID`.
fn mask_id(s: &str) -> String {
    match s.find("$2\r\nid\r\n:") {
        Some(i) => {
            let start = i + "$2\r\nid\r\n:".len();
            let end = start + s[start..].find("\r\n").unwrap();
            format!("{}ID{}", &s[..start], &s[end..])
        }
        None => s.to_string(),
    }
}

#[tokio::test]
async fn connection_commands_answer_byte_for_byte_as_redis() {
    let n = TestNode::start().await;
    // Each case on its own connection, all at once (each waits out a
    // quiet period to be sure nothing more comes).
    let got = join_all(NO_AUTH_TABLE.iter().map(|(input, _)| exchange(redis_addr(&n), input.as_bytes()))).await;
    for ((input, want), got) in NO_AUTH_TABLE.iter().zip(got) {
        assert_eq!(mask_id(&got), *want, "request {input:?}");
    }
}

const AUTH_TABLE: &[(&str, &str)] = &[
    ("PING\r\n", "-NOAUTH Authentication required.\r\n"),
    ("CLIENT ID\r\n", "-NOAUTH Authentication required.\r\n"),
    ("FOO\r\n", "-ERR unknown command 'FOO', with args beginning with: \r\n"),
    ("ECHO\r\n", "-ERR wrong number of arguments for 'echo' command\r\n"),
    ("AUTH x\r\n", "-WRONGPASS invalid username-password pair or user is disabled.\r\n"),
    ("AUTH u pw\r\n", "-WRONGPASS invalid username-password pair or user is disabled.\r\n"),
    ("AUTH pw\r\nPING\r\n", "+OK\r\n+PONG\r\n"),
    ("AUTH default pw\r\n", "+OK\r\n"),
    ("AUTH app apppw\r\nPING\r\n", "+OK\r\n+PONG\r\n"),
    // Recorded from redis-server 7.0.15 with the same users (requirepass pw,
    // ACL SETUSER app on >apppw ~* &* +@all).
    (
        "AUTH app apppw\r\nACL WHOAMI\r\nACL LIST\r\nACL USERS\r\nACL GETUSER app\r\n",
        "+OK\r\n$3\r\napp\r\n*2\r\n$89\r\nuser app on #71d3d4e36cf4bc4309fd7390ba79fc6a1d03d8d7b45ef26f04bcdff3ff116868 ~* &* +@all\r\n$93\r\nuser default on #30c952fab122c3f9759f02a6d95c3758b246b4fee239957b2d4fee46e26170c4 ~* &* +@all\r\n*2\r\n$3\r\napp\r\n$7\r\ndefault\r\n*12\r\n$5\r\nflags\r\n*1\r\n$2\r\non\r\n$9\r\npasswords\r\n*1\r\n$64\r\n71d3d4e36cf4bc4309fd7390ba79fc6a1d03d8d7b45ef26f04bcdff3ff116868\r\n$8\r\ncommands\r\n$5\r\n+@all\r\n$4\r\nkeys\r\n$2\r\n~*\r\n$8\r\nchannels\r\n$2\r\n&*\r\n$9\r\nselectors\r\n*0\r\n",
    ),
    ("AUTH app apppw\r\nRESET\r\nAUTH pw\r\nACL WHOAMI\r\n", "+OK\r\n+RESET\r\n+OK\r\n$7\r\ndefault\r\n"),
    (
        "HELLO 3\r\n",
        "-NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time\r\n",
    ),
    ("*11\r\n", "-ERR Protocol error: unauthenticated multibulk length\r\n<closed>"),
    ("QUIT\r\n", "+OK\r\n<closed>"),
];

#[tokio::test]
async fn requirepass_and_users_as_redis() {
    let n = TestNode::start_with(|c| {
        c.redis.requirepass = Some("pw".into());
        c.redis.users = vec![catga_node::redis::RedisUser { user: "app".into(), password: "apppw".into() }];
    })
    .await;
    let got = join_all(AUTH_TABLE.iter().map(|(input, _)| exchange(redis_addr(&n), input.as_bytes()))).await;
    for ((input, want), got) in AUTH_TABLE.iter().zip(got) {
        assert_eq!(got, *want, "request {input:?}");
    }
    // HELLO with AUTH authenticates and switches protocol in one step.
    let got = exchange(redis_addr(&n), b"HELLO 3 AUTH default pw\r\nPING\r\n").await;
    assert!(got.starts_with("%7\r\n") && got.ends_with("+PONG\r\n"), "{got:?}");

    // The stock client authenticates from its URL.
    let url = format!("redis://:pw@{}/", redis_addr(&n));
    let mut c = redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap();
    let pong: String = redis::cmd("PING").query_async(&mut c).await.unwrap();
    assert_eq!(pong, "PONG");
    // Over RESP3 it signs in with HELLO AUTH; ACL WHOAMI names the user.
    let url = format!("redis://app:apppw@{}/?protocol=resp3", redis_addr(&n));
    let mut c = redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap();
    let me: String = redis::cmd("ACL").arg("WHOAMI").query_async(&mut c).await.unwrap();
    assert_eq!(me, "app");
}

#[tokio::test]
async fn stock_client_handshakes_over_resp2_and_resp3() {
    let n = TestNode::start().await;
    for proto in ["", "?protocol=resp3"] {
        let url = format!("redis://{}/2{proto}", redis_addr(&n));
        let mut c = redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap();
        let pong: String = redis::cmd("PING").query_async(&mut c).await.unwrap();
        assert_eq!(pong, "PONG");
        let echo: Vec<u8> = redis::cmd("ECHO").arg(&b"bin\0\r\nary"[..]).query_async(&mut c).await.unwrap();
        assert_eq!(echo, b"bin\0\r\nary");
        let id: i64 = redis::cmd("CLIENT").arg("ID").query_async(&mut c).await.unwrap();
        assert!(id > 0);
        let _: () = redis::cmd("CLIENT").arg("SETNAME").arg("svc-1").query_async(&mut c).await.unwrap();
        let name: Option<String> = redis::cmd("CLIENT").arg("GETNAME").query_async(&mut c).await.unwrap();
        assert_eq!(name.as_deref(), Some("svc-1"));
        let list: String = redis::cmd("CLIENT").arg("LIST").query_async(&mut c).await.unwrap();
        assert!(list.contains("name=svc-1") && list.contains("db=2"), "{list}");
        let err = redis::cmd("NOSUCH").query_async::<()>(&mut c).await.unwrap_err();
        assert!(err.to_string().contains("unknown command 'NOSUCH'"), "{err}");
    }
    // A pipelined handshake in one write, as clients send it.
    let got = exchange(
        redis_addr(&n),
        b"*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n*2\r\n$6\r\nSELECT\r\n$1\r\n2\r\n*4\r\n$6\r\nCLIENT\r\n$7\r\nSETINFO\r\n$8\r\nlib-name\r\n$8\r\nredis-rs\r\n",
    )
    .await;
    assert!(got.starts_with("%7\r\n") && got.ends_with("+OK\r\n+OK\r\n"), "{got:?}");
}

/// Strings through Raft on three nodes: a write through one node is read
/// through another (linearizable), pipelined writes keep their order, and
/// TTLs hold across nodes.
#[tokio::test]
async fn writes_through_one_node_are_read_through_another() {
    let c = common::TestCluster::start(3).await;
    c.wait_voters().await;
    let conn = |i: usize| {
        let url = format!("redis://{}/", redis_addr(&c.nodes[i]));
        async move { redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap() }
    };
    let (mut a, mut b) = (conn(0).await, conn(2).await);
    let _: () = redis::cmd("SET").arg("greeting").arg("hello").query_async(&mut a).await.unwrap();
    let _: () = redis::cmd("SET").arg("user:1").arg("x").query_async(&mut a).await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS").arg("user:*").query_async(&mut b).await.unwrap();
    assert_eq!(keys, vec!["user:1".to_string()]);
    let (secs, micros): (u64, u32) = redis::cmd("TIME").query_async(&mut b).await.unwrap();
    assert!(secs > 1_700_000_000 && micros < 1_000_000);
    let got: Option<String> = redis::cmd("GET").arg("greeting").query_async(&mut b).await.unwrap();
    assert_eq!(got.as_deref(), Some("hello"), "a read right after an acknowledged write sees it");

    // A pipeline of writes and reads in one round trip, in order.
    let (n1, n2, v): (i64, i64, String) = redis::pipe()
        .cmd("INCR")
        .arg("counter")
        .cmd("INCRBY")
        .arg("counter")
        .arg(41)
        .cmd("SET")
        .arg("k")
        .arg("v")
        .ignore()
        .cmd("GET")
        .arg("k")
        .query_async(&mut b)
        .await
        .unwrap();
    assert_eq!((n1, n2, v.as_str()), (1, 42, "v"));
    let n: i64 = redis::cmd("GET").arg("counter").query_async(&mut a).await.unwrap();
    assert_eq!(n, 42);

    // TTLs are the leader's, visible everywhere.
    let _: () = redis::cmd("SET").arg("t").arg("x").arg("EX").arg(100).query_async(&mut a).await.unwrap();
    let ttl: i64 = redis::cmd("TTL").arg("t").query_async(&mut b).await.unwrap();
    assert!((99..=100).contains(&ttl), "ttl {ttl}");
    let err = redis::cmd("INCR").arg("k").query_async::<i64>(&mut b).await.unwrap_err();
    assert!(err.to_string().contains("value is not an integer or out of range"), "{err}");

    // Databases are separate on every node.
    let url = format!("redis://{}/3", redis_addr(&c.nodes[1]));
    let mut db3 = redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap();
    let none: Option<String> = redis::cmd("GET").arg("greeting").query_async(&mut db3).await.unwrap();
    assert_eq!(none, None);
}

/// Many clients writing at once share Raft entries (group commit); every
/// acknowledged increment counts exactly once.
#[tokio::test]
async fn concurrent_writers_each_count_once() {
    writers_count_once(1).await;
}

/// The same with several entries committing at once
/// (`redis.writes_in_flight_max`).
#[tokio::test]
async fn concurrent_writers_each_count_once_with_entries_in_flight() {
    writers_count_once(4).await;
}

async fn writers_count_once(in_flight: usize) {
    let n = TestNode::start_with(|c| c.redis.writes_in_flight_max = in_flight).await;
    let url = format!("redis://{}/", redis_addr(&n));
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap();
            for _ in 0..50 {
                let _: i64 = redis::cmd("INCR").arg("hits").query_async(&mut c).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut c = redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap();
    let hits: i64 = redis::cmd("GET").arg("hits").query_async(&mut c).await.unwrap();
    assert_eq!(hits, 1000);
    // Fewer entries than writes: they were grouped.
    let applied = n.node.raft.status().applied_index.unwrap_or(0);
    assert!(applied < 1000, "1000 writes took {applied} entries");
}

/// Hashes, lists, sets and sorted sets through a node, with the stock
/// client's typed API over RESP2 and RESP3, and the RESP3 shapes on the
/// wire (map, set, double, pairs) as redis-server 7.0.15 sends them.
#[tokio::test]
async fn data_types_with_the_stock_client_over_resp2_and_resp3() {
    use std::collections::{BTreeSet, HashMap};
    let n = TestNode::start().await;
    for (db, proto) in [(0, ""), (1, "?protocol=resp3")] {
        let url = format!("redis://{}/{db}{proto}", redis_addr(&n));
        let mut c = redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap();
        let added: i64 = redis::cmd("HSET").arg(&["h", "a", "1", "b", "2"]).query_async(&mut c).await.unwrap();
        assert_eq!(added, 2);
        let all: HashMap<String, String> = redis::cmd("HGETALL").arg("h").query_async(&mut c).await.unwrap();
        assert_eq!(all, HashMap::from([("a".into(), "1".into()), ("b".into(), "2".into())]));
        let n2: i64 = redis::cmd("HINCRBY").arg(&["h", "a", "41"]).query_async(&mut c).await.unwrap();
        assert_eq!(n2, 42);

        let len: i64 = redis::cmd("RPUSH").arg(&["l", "x", "y", "z"]).query_async(&mut c).await.unwrap();
        assert_eq!(len, 3);
        let _: i64 = redis::cmd("LPUSH").arg(&["l", "w"]).query_async(&mut c).await.unwrap();
        let items: Vec<String> = redis::cmd("LRANGE").arg(&["l", "0", "-1"]).query_async(&mut c).await.unwrap();
        assert_eq!(items, ["w", "x", "y", "z"]);
        let popped: Vec<String> = redis::cmd("RPOP").arg(&["l", "2"]).query_async(&mut c).await.unwrap();
        assert_eq!(popped, ["z", "y"]);

        let _: i64 = redis::cmd("SADD").arg(&["s", "m1", "m2", "m3"]).query_async(&mut c).await.unwrap();
        let members: BTreeSet<String> = redis::cmd("SMEMBERS").arg("s").query_async(&mut c).await.unwrap();
        assert_eq!(members, BTreeSet::from(["m1".into(), "m2".into(), "m3".into()]));

        let _: i64 = redis::cmd("ZADD").arg(&["z", "1.5", "a", "0.5", "b"]).query_async(&mut c).await.unwrap();
        let ranked: Vec<(String, f64)> =
            redis::cmd("ZRANGE").arg(&["z", "0", "-1", "WITHSCORES"]).query_async(&mut c).await.unwrap();
        assert_eq!(ranked, [("b".to_string(), 0.5), ("a".to_string(), 1.5)]);
        let score: f64 = redis::cmd("ZINCRBY").arg(&["z", "1", "b"]).query_async(&mut c).await.unwrap();
        assert_eq!(score, 1.5);
        let _: i64 = redis::cmd("ZADD").arg(&["z2", "2", "a", "7", "c"]).query_async(&mut c).await.unwrap();
        let inter: Vec<(String, f64)> =
            redis::cmd("ZINTER").arg(&["2", "z", "z2", "WITHSCORES"]).query_async(&mut c).await.unwrap();
        assert_eq!(inter, [("a".to_string(), 3.5)]);
        let n: i64 = redis::cmd("ZUNIONSTORE")
            .arg(&["zu", "2", "z", "z2", "WEIGHTS", "1", "2"])
            .query_async(&mut c)
            .await
            .unwrap();
        assert_eq!(n, 3);
        let union: Vec<(String, f64)> =
            redis::cmd("ZRANGE").arg(&["zu", "0", "-1", "WITHSCORES"]).query_async(&mut c).await.unwrap();
        assert_eq!(union, [("b".to_string(), 1.5), ("a".to_string(), 5.5), ("c".to_string(), 14.0)]);

        let _: i64 = redis::cmd("SETBIT").arg(&["bits", "9", "1"]).query_async(&mut c).await.unwrap();
        let was: i64 = redis::cmd("SETBIT").arg(&["bits", "9", "1"]).query_async(&mut c).await.unwrap();
        let (count, pos): (i64, i64) = redis::pipe()
            .cmd("BITCOUNT")
            .arg("bits")
            .cmd("BITPOS")
            .arg(&["bits", "1"])
            .query_async(&mut c)
            .await
            .unwrap();
        assert_eq!((was, count, pos), (1, 1, 9));

        let visitors: Vec<String> = (0..5000).map(|i| format!("user:{i}")).collect();
        let _: i64 = redis::cmd("PFADD").arg("day1").arg(&visitors[..3000]).query_async(&mut c).await.unwrap();
        let _: i64 = redis::cmd("PFADD").arg("day2").arg(&visitors[2000..]).query_async(&mut c).await.unwrap();
        let one: i64 = redis::cmd("PFCOUNT").arg("day1").query_async(&mut c).await.unwrap();
        let both: i64 = redis::cmd("PFCOUNT").arg(&["day1", "day2"]).query_async(&mut c).await.unwrap();
        // HyperLogLog's standard error is 0.81%: within 3% of the truth.
        assert!((2910..=3090).contains(&one), "{one}");
        assert!((4850..=5150).contains(&both), "{both}");

        let _: i64 = redis::cmd("RPUSH").arg(&["ids", "1", "2", "3"]).query_async(&mut c).await.unwrap();
        let _: () = redis::cmd("MSET").arg(&["w_1", "30", "w_2", "10", "w_3", "20"]).query_async(&mut c).await.unwrap();
        let by_weight: Vec<String> =
            redis::cmd("SORT").arg(&["ids", "BY", "w_*", "DESC"]).query_async(&mut c).await.unwrap();
        assert_eq!(by_weight, ["1", "3", "2"]);
        let fields: Vec<Option<i64>> = redis::cmd("BITFIELD")
            .arg(&["bf", "SET", "u8", "0", "200", "OVERFLOW", "FAIL", "INCRBY", "u8", "0", "100", "GET", "u8", "0"])
            .query_async(&mut c)
            .await
            .unwrap();
        assert_eq!(fields, [Some(0), None, Some(200)]);

        let err = redis::cmd("LPUSH").arg(&["h", "v"]).query_async::<()>(&mut c).await.unwrap_err();
        assert!(err.to_string().contains("WRONGTYPE"), "{err}");
    }
    // The RESP3 wire shapes.
    let got = exchange(
        redis_addr(&n),
        b"HELLO 3\r\nSELECT 1\r\nDEL h z s\r\nHSET h f v\r\nHGETALL h\r\nSADD s m\r\nSMEMBERS s\r\nZADD z 1.1 m\r\nZSCORE z m\r\nZRANGE z 0 -1 WITHSCORES\r\nZPOPMIN z 1\r\n",
    )
    .await;
    let tail = got.split_once("+OK\r\n").map(|(_, t)| t).unwrap_or_default();
    assert_eq!(
        tail,
        ":3\r\n:1\r\n%1\r\n$1\r\nf\r\n$1\r\nv\r\n:1\r\n~1\r\n$1\r\nm\r\n:1\r\n,1.1000000000000001\r\n*1\r\n*2\r\n$1\r\nm\r\n,1.1000000000000001\r\n*1\r\n*2\r\n$1\r\nm\r\n,1.1000000000000001\r\n",
        "{got:?}"
    );
}

/// MULTI/EXEC/DISCARD/WATCH on one connection, byte for byte as
/// redis-server 7.0.15 answered the same bytes: nesting, queued errors
/// and EXECABORT, a runtime error inside EXEC that does not stop the
/// rest, SELECT inside the block, and a WATCH broken by the block's own
/// connection before MULTI.
#[tokio::test]
async fn transactions_answer_byte_for_byte_as_redis() {
    let n = TestNode::start().await;
    let got = exchange(
        redis_addr(&n),
        b"FLUSHALL\r\nEXEC\r\nDISCARD\r\nMULTI\r\nMULTI\r\nSET a 1\r\nINCR a\r\nLPUSH a x\r\nPING\r\nSELECT 1\r\nSET a other\r\nWATCH a\r\nGET a\r\nEXEC\r\nGET a\r\nMULTI\r\nSET b 1\r\nNOSUCH\r\nGET\r\nEXEC\r\nGET b\r\nMULTI\r\nDISCARD\r\nMULTI\r\nEXEC\r\nWATCH\r\nUNWATCH\r\n",
    )
    .await;
    assert_eq!(
        got,
        "+OK\r\n-ERR EXEC without MULTI\r\n-ERR DISCARD without MULTI\r\n+OK\r\n-ERR MULTI calls can not be nested\r\n+QUEUED\r\n+QUEUED\r\n+QUEUED\r\n+QUEUED\r\n+QUEUED\r\n+QUEUED\r\n-ERR WATCH inside MULTI is not allowed\r\n+QUEUED\r\n*7\r\n+OK\r\n:2\r\n-WRONGTYPE Operation against a key holding the wrong kind of value\r\n+PONG\r\n+OK\r\n+OK\r\n$5\r\nother\r\n$5\r\nother\r\n+OK\r\n+QUEUED\r\n-ERR unknown command 'NOSUCH', with args beginning with: \r\n-ERR wrong number of arguments for 'get' command\r\n-EXECABORT Transaction discarded because of previous errors.\r\n$-1\r\n+OK\r\n+OK\r\n+OK\r\n*0\r\n-ERR wrong number of arguments for 'watch' command\r\n+OK\r\n"
    );
}

/// COPY and MOVE into another database, the DB index checked against the
/// node's `databases` (16) at once and, queued, at EXEC: bytes as
/// redis-server 7.0.15 gave them.
#[tokio::test]
async fn copy_across_databases_answers_byte_for_byte_as_redis() {
    let n = TestNode::start().await;
    let got = exchange(
        redis_addr(&n),
        b"FLUSHALL\r\nSET s v\r\nCOPY s s DB 1\r\nSELECT 1\r\nGET s\r\nSELECT 0\r\nCOPY s x DB 16\r\nMULTI\r\nCOPY s y DB 99\r\nCOPY s y DB 2\r\nEXEC\r\nSELECT 2\r\nGET y\r\nSET t 1 EX 100\r\nMOVE t 16\r\nMOVE t 3\r\nSELECT 3\r\nTTL t\r\n",
    )
    .await;
    assert_eq!(
        got,
        "+OK\r\n+OK\r\n:1\r\n+OK\r\n$1\r\nv\r\n+OK\r\n-ERR DB index is out of range\r\n+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n-ERR DB index is out of range\r\n:1\r\n+OK\r\n$1\r\nv\r\n+OK\r\n-ERR DB index is out of range\r\n:1\r\n+OK\r\n:100\r\n"
    );
}

/// GET over RESP3: a miss is `_`, a hit a bulk string (as redis-server).
#[tokio::test]
async fn get_answers_in_resp3() {
    let n = TestNode::start().await;
    let got = exchange(redis_addr(&n), b"HELLO 3\r\nGET r3\r\nSET r3 v\r\nGET r3\r\n").await;
    assert!(got.starts_with("%7\r\n"), "{got}");
    assert!(got.ends_with("_\r\n+OK\r\n$1\r\nv\r\n"), "{got}");
}

/// Writes pipelined ahead of a HELLO 3 are answered in RESP2 (a null
/// as `$-1`), as redis-server answers them: the protocol, like the
/// database, is the one they were sent in, though they are committed
/// after the HELLO has run.
#[tokio::test]
async fn pipelined_writes_answer_in_the_protocol_they_were_sent_in() {
    let n = TestNode::start().await;
    let got = exchange(redis_addr(&n), b"FLUSHALL\r\nSET a 1 GET\r\nHELLO 3\r\nSET a 2 GET\r\nSET b 1 GET\r\n").await;
    assert!(got.starts_with("+OK\r\n$-1\r\n%7\r\n"), "{got}");
    assert!(got.ends_with("$1\r\n1\r\n_\r\n"), "{got}");
}

/// WATCH across nodes: a write through another node after WATCH makes
/// EXEC return nil and run nothing; without one, EXEC runs. Then clients
/// on all three nodes increment one counter with the optimistic
/// WATCH/GET/MULTI/SET/EXEC loop: every successful EXEC counts exactly
/// once, so the counter ends at the number of successes.
#[tokio::test]
async fn watch_guards_transactions_across_nodes() {
    let c = common::TestCluster::start(3).await;
    c.wait_voters().await;
    let url = |i: usize| format!("redis://{}/", redis_addr(&c.nodes[i]));
    let mut a = redis::Client::open(url(0)).unwrap().get_multiplexed_async_connection().await.unwrap();
    let mut b = redis::Client::open(url(2)).unwrap().get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("SET").arg("k").arg("1").query_async(&mut a).await.unwrap();

    // Broken by another node's write: nil, nothing ran.
    let _: () = redis::cmd("WATCH").arg("k").query_async(&mut a).await.unwrap();
    let _: () = redis::cmd("SET").arg("k").arg("2").query_async(&mut b).await.unwrap();
    let r: Option<(String,)> =
        redis::pipe().atomic().cmd("SET").arg("k").arg("from-a").query_async(&mut a).await.unwrap();
    assert_eq!(r, None, "EXEC after a watched key changed returns nil");
    let v: String = redis::cmd("GET").arg("k").query_async(&mut b).await.unwrap();
    assert_eq!(v, "2");

    // Not broken: runs, and the watch is gone after EXEC.
    let _: () = redis::cmd("WATCH").arg("k").query_async(&mut a).await.unwrap();
    let r: Option<(String, i64)> =
        redis::pipe().atomic().cmd("SET").arg("k").arg("3").cmd("INCR").arg("k").query_async(&mut a).await.unwrap();
    assert_eq!(r, Some(("OK".to_string(), 4)));

    // Expired after WATCH counts as changed, as in Redis 7.0.
    let _: () = redis::cmd("SET").arg("t").arg("x").arg("PX").arg(150).query_async(&mut a).await.unwrap();
    let _: () = redis::cmd("WATCH").arg("t").query_async(&mut a).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let e: i64 = redis::cmd("EXISTS").arg("t").query_async(&mut b).await.unwrap();
        if e == 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "t never expired");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r: Option<(String,)> = redis::pipe().atomic().cmd("SET").arg("t").arg("y").query_async(&mut a).await.unwrap();
    assert_eq!(r, None);

    // Optimistic increments from every node.
    let mut tasks = Vec::new();
    for i in 0..6 {
        let url = url(i % 3);
        tasks.push(tokio::spawn(async move {
            // One connection per client: WATCH state is per connection.
            // The crate's default 500 ms response timeout is too short for
            // a loaded test machine; the test is about outcomes, not speed.
            let cfg = redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(10)));
            let mut c =
                redis::Client::open(url).unwrap().get_multiplexed_async_connection_with_config(&cfg).await.unwrap();
            let mut wins = 0;
            for _ in 0..15 {
                loop {
                    let _: () = redis::cmd("WATCH").arg("n").query_async(&mut c).await.unwrap();
                    let cur: Option<i64> = redis::cmd("GET").arg("n").query_async(&mut c).await.unwrap();
                    let next = cur.unwrap_or(0) + 1;
                    let r: Option<(String,)> =
                        redis::pipe().atomic().cmd("SET").arg("n").arg(next).query_async(&mut c).await.unwrap();
                    if r.is_some() {
                        wins += 1;
                        break;
                    }
                }
            }
            wins
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    assert_eq!(total, 90);
    let n: i64 = redis::cmd("GET").arg("n").query_async(&mut b).await.unwrap();
    assert_eq!(n, 90, "every successful EXEC counted once, no lost update");
}

/// Active expiry: keys with a TTL that nobody reads again are removed
/// from every node's store by the leader's sweep, and INFO counts them.
#[tokio::test]
async fn expired_keys_are_swept_from_every_node() {
    let c = common::TestCluster::start(3).await;
    c.wait_voters().await;
    let url = format!("redis://{}/", redis_addr(&c.nodes[1]));
    let mut r = redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap();
    for i in 0..200 {
        let _: () =
            redis::cmd("SET").arg(format!("t{i}")).arg("v").arg("PX").arg(50).query_async(&mut r).await.unwrap();
    }
    let _: () = redis::cmd("SET").arg("stays").arg("v").query_async(&mut r).await.unwrap();
    let stored = |n: &common::TestNode| n.node.raft.view().read().keyspace.entries().count();
    common::eventually(Duration::from_secs(10), "every node swept the expired keys", || {
        c.nodes.iter().all(|n| stored(n) == 1)
    })
    .await;
    let leader = c.nodes.iter().find(|n| n.node.raft.leader() == Some(n.node.id)).unwrap();
    let url = format!("redis://{}/", redis_addr(leader));
    let mut l = redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap();
    let info: String = redis::cmd("INFO").arg("stats").query_async(&mut l).await.unwrap();
    assert!(info.contains("expired_keys:200\r\n"), "{info}");
}

/// CLIENT KILL with Redis 7.0.15's replies, closing the killed connection.
#[tokio::test]
async fn client_kill_closes_the_connection() {
    let n = TestNode::start().await;
    let mut victim = TcpStream::connect(redis_addr(&n)).await.unwrap();
    victim.write_all(b"CLIENT ID\r\n").await.unwrap();
    let mut buf = [0u8; 64];
    let len = victim.read(&mut buf).await.unwrap();
    let id = String::from_utf8_lossy(&buf[1..len - 2]).into_owned();
    let got = exchange(
        redis_addr(&n),
        format!("CLIENT KILL 1.2.3.4:5\r\nCLIENT KILL ID 999999\r\nCLIENT KILL FOO bar\r\nCLIENT KILL ID x\r\nCLIENT KILL ID {id} SKIPME yes\r\n").as_bytes(),
    )
    .await;
    assert_eq!(
        got,
        "-ERR No such client\r\n:0\r\n-ERR syntax error\r\n-ERR client-id should be greater than 0\r\n:1\r\n"
    );
    let closed = tokio::time::timeout(Duration::from_secs(5), victim.read(&mut buf)).await.unwrap();
    assert!(matches!(closed, Ok(0) | Err(_)), "the killed connection is closed");
}

/// READONLY opts a connection into local reads: on a node cut off from
/// the majority, a default (linearizable) read fails with CLUSTERDOWN
/// while a READONLY connection still reads the node's last applied state.
#[tokio::test]
async fn readonly_connections_read_locally_when_cut_off() {
    let c = common::TestCluster::start(3).await;
    c.wait_voters().await;
    let url = |i: usize| format!("redis://{}/", redis_addr(&c.nodes[i]));
    let mut w = redis::Client::open(url(0)).unwrap().get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("SET").arg("k").arg("v1").query_async(&mut w).await.unwrap();
    // Pick a follower, and let it apply the write before cutting it off.
    let fi = c.nodes.iter().position(|n| n.node.raft.leader() != Some(n.node.id)).unwrap();
    let leader_applied = c.nodes.iter().map(|n| n.node.raft.status().applied_index).max().flatten();
    common::eventually(Duration::from_secs(5), "follower applied the write", || {
        c.nodes[fi].node.raft.status().applied_index >= leader_applied
    })
    .await;
    // The server may take up to the forward timeout (5 s) to give up on
    // an unreachable leader; the client waits longer than that.
    let patient = redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(15)));
    let mut lin =
        redis::Client::open(url(fi)).unwrap().get_multiplexed_async_connection_with_config(&patient).await.unwrap();
    let mut local = redis::Client::open(url(fi)).unwrap().get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("READONLY").query_async(&mut local).await.unwrap();
    c.partition(fi);
    // Wait until the cut-off node no longer has a leader it can reach.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let r = redis::cmd("GET").arg("k").query_async::<Option<String>>(&mut lin).await;
        match r {
            Err(e) => {
                assert!(e.to_string().contains("No Raft leader reachable"), "{e}");
                break;
            }
            Ok(_) => assert!(std::time::Instant::now() < deadline, "linearizable reads kept succeeding cut off"),
        }
    }
    let v: Option<String> = redis::cmd("GET").arg("k").query_async(&mut local).await.unwrap();
    assert_eq!(v.as_deref(), Some("v1"));
    let _: () = redis::cmd("READWRITE").query_async(&mut local).await.unwrap();
    c.heal(fi);
}

/// SAVE writes a consistent backup file; `catga restore` (the CLI,
/// through a node's HTTP API) puts the whole keyspace back on every node.
#[tokio::test]
async fn save_then_restore_brings_the_keyspace_back_on_every_node() {
    let c = common::TestCluster::start(3).await;
    c.wait_voters().await;
    let url = |i: usize| format!("redis://{}/", redis_addr(&c.nodes[i]));
    let mut r = redis::Client::open(url(0)).unwrap().get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::pipe()
        .cmd("SET")
        .arg("s")
        .arg("v")
        .ignore()
        .cmd("RPUSH")
        .arg("l")
        .arg("a")
        .arg("b")
        .ignore()
        .cmd("HSET")
        .arg("h")
        .arg("f")
        .arg("v")
        .ignore()
        .cmd("ZADD")
        .arg("z")
        .arg(1.5)
        .arg("m")
        .ignore()
        .cmd("SADD")
        .arg("st")
        .arg("x")
        .ignore()
        .cmd("SET")
        .arg("ttl")
        .arg("v")
        .arg("EX")
        .arg(1000)
        .ignore()
        .query_async(&mut r)
        .await
        .unwrap();
    let _: () = redis::cmd("SELECT").arg(3).query_async(&mut r).await.unwrap();
    let _: () = redis::cmd("SET").arg("in3").arg("x").query_async(&mut r).await.unwrap();
    let before = c.nodes[0].node.raft.view().read().keyspace.clone();

    // SAVE on another node: it reads after a read-index, so it has them.
    let mut s = redis::Client::open(url(1)).unwrap().get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("SAVE").query_async(&mut s).await.unwrap();
    let last: i64 = redis::cmd("LASTSAVE").query_async(&mut s).await.unwrap();
    assert!(last > 1_700_000_000, "{last}");
    let file = c.nodes[1].node.config.data_dir.join("redis").join("dump.catga");
    assert!(file.exists());
    let started: String = redis::cmd("BGSAVE").query_async(&mut s).await.unwrap();
    assert_eq!(started, "Background saving started");

    // Everything changes, then the restore.
    let _: () = redis::cmd("FLUSHALL").query_async(&mut r).await.unwrap();
    let _: () = redis::cmd("SET").arg("after").arg("x").query_async(&mut r).await.unwrap();
    let http = c.nodes[2].node.http.local_addr().to_string();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_catga"))
        .args(["restore", "--file", file.to_str().unwrap(), "--http", &http])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("restored 7 keys"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    for i in 0..3 {
        let mut q = redis::Client::open(url(i)).unwrap().get_multiplexed_async_connection().await.unwrap();
        let after: Option<String> = redis::cmd("GET").arg("after").query_async(&mut q).await.unwrap();
        assert_eq!(after, None, "node {i}");
        // The read above waited for this node to apply the restore.
        assert!(c.nodes[i].node.raft.view().read().keyspace == before, "node {i} keyspace differs after restore");
    }
    // A file that is not a backup is refused.
    let junk = c.nodes[1].node.config.data_dir.join("junk");
    std::fs::write(&junk, b"not a dump").unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_catga"))
        .args(["restore", "--file", junk.to_str().unwrap(), "--http", &http])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a Catga backup file"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Lease reads never return a stale value: after the leader is cut off
/// and the majority has committed a new value, a read through the old
/// leader either fails or sees the new value, never the old one.
#[tokio::test]
async fn a_cut_off_leader_never_serves_a_stale_read() {
    // Reads that cannot reach a leader give up after 1 s here.
    let c = common::TestCluster::start_with(3, |_, cfg| cfg.raft.forward_timeout_ms = 1000).await;
    c.wait_voters().await;
    let url = |i: usize| format!("redis://{}/", redis_addr(&c.nodes[i]));
    let li = c.nodes.iter().position(|n| n.node.raft.leader() == Some(n.node.id)).unwrap();
    let patient = redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(15)));
    let mut old =
        redis::Client::open(url(li)).unwrap().get_multiplexed_async_connection_with_config(&patient).await.unwrap();
    let _: () = redis::cmd("SET").arg("k").arg("old").query_async(&mut old).await.unwrap();
    // Reads through the leader succeed while it holds a lease.
    let v: String = redis::cmd("GET").arg("k").query_async(&mut old).await.unwrap();
    assert_eq!(v, "old");
    c.partition(li);
    let other = (li + 1) % 3;
    let mut new =
        redis::Client::open(url(other)).unwrap().get_multiplexed_async_connection_with_config(&patient).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        match redis::cmd("SET").arg("k").arg("new").query_async::<()>(&mut new).await {
            Ok(()) => break,
            Err(e) => assert!(std::time::Instant::now() < deadline, "the majority never took a write: {e}"),
        }
    }
    for _ in 0..3 {
        match redis::cmd("GET").arg("k").query_async::<Option<String>>(&mut old).await {
            Ok(v) => assert_eq!(v.as_deref(), Some("new"), "a stale read through the cut-off leader"),
            Err(e) => assert!(e.to_string().contains("No Raft leader reachable"), "{e}"),
        }
    }
    c.heal(li);
}

/// WAIT: every acknowledged write is on a majority already, so WAIT 1
/// answers 1 or more at once through the leader and through a follower;
/// asking for more replicas than there are answers what there is; with a
/// follower cut off, the leader counts the one left after the timeout.
/// Argument errors as redis-server 7.0.15 gives them.
#[tokio::test]
async fn wait_counts_the_replicas_holding_every_acknowledged_write() {
    let c = common::TestCluster::start(3).await;
    c.wait_voters().await;
    let li = c.nodes.iter().position(|n| n.node.raft.leader() == Some(n.node.id)).unwrap();
    let fi = (li + 1) % 3;
    let mut leader = common::redis_client(redis_addr(&c.nodes[li])).await;
    let mut follower = common::redis_client(redis_addr(&c.nodes[fi])).await;
    for conn in [&mut leader, &mut follower] {
        let _: () = redis::cmd("SET").arg("k").arg("v").query_async(conn).await.unwrap();
        let n: i64 = redis::cmd("WAIT").arg(1).arg(0).query_async(conn).await.unwrap();
        assert!(n >= 1, "WAIT 1 0 gave {n}");
        let n: i64 = redis::cmd("WAIT").arg(5).arg(0).query_async(conn).await.unwrap();
        assert!((1..=2).contains(&n), "WAIT 5 0 gave {n}");
    }
    // The leader's own count comes from replication: both followers.
    let n: i64 = redis::cmd("WAIT").arg(2).arg(2000).query_async(&mut leader).await.unwrap();
    assert_eq!(n, 2);
    // One follower cut off: a write still commits, and WAIT 2 counts 1
    // once its timeout ends.
    let cut = (li + 2) % 3;
    c.partition(cut);
    let _: () = redis::cmd("SET").arg("k").arg("w").query_async(&mut leader).await.unwrap();
    let started = std::time::Instant::now();
    let n: i64 = redis::cmd("WAIT").arg(2).arg(300).query_async(&mut leader).await.unwrap();
    assert_eq!(n, 1);
    assert!(started.elapsed() >= Duration::from_millis(300), "answered before its timeout");
    c.heal(cut);
    let got = exchange(redis_addr(&c.nodes[li]), b"WAIT x 0\r\nWAIT 1 -1\r\nWAIT 1\r\n").await;
    assert_eq!(
        got,
        "-ERR value is not an integer or out of range\r\n-ERR timeout is negative\r\n-ERR wrong number of arguments for 'wait' command\r\n"
    );
}

/// CLIENT INFO is this connection's CLIENT LIST line; CLIENT NO-EVICT is
/// accepted (nothing is evicted); errors as redis-server 7.0.15 gives them.
#[tokio::test]
async fn client_info_and_no_evict_as_redis() {
    let n = TestNode::start().await;
    let got = exchange(
        redis_addr(&n),
        b"CLIENT SETNAME me\r\nCLIENT ID\r\nCLIENT INFO\r\nCLIENT NO-EVICT on\r\nCLIENT NO-EVICT bogus\r\nCLIENT NO-EVICT\r\nCLIENT INFO x\r\n",
    )
    .await;
    let lines: Vec<&str> = got.split("\r\n").collect();
    assert_eq!(lines[0], "+OK");
    let id = lines[1].strip_prefix(':').unwrap();
    assert!(lines[2].starts_with('$'), "{got}");
    assert!(lines[3].starts_with(&format!("id={id} addr=")) && lines[3].contains(" name=me "), "{got}");
    assert_eq!(
        lines[4..].join("\r\n"),
        "+OK\r\n-ERR syntax error\r\n-ERR wrong number of arguments for 'client|no-evict' command\r\n-ERR wrong number of arguments for 'client|info' command\r\n"
    );
}

/// INFO commandstats counts every call of each command (exactly) and its
/// time (from the timed sample); it is left out of plain INFO and given
/// by INFO all and INFO commandstats, as in Redis.
#[tokio::test]
async fn info_commandstats_counts_each_command() {
    let n = TestNode::start().await;
    let mut c = common::redis_client(redis_addr(&n)).await;
    for i in 0..40 {
        let _: () = redis::cmd("SET").arg("k").arg(i).query_async(&mut c).await.unwrap();
        let _: String = redis::cmd("GET").arg("k").query_async(&mut c).await.unwrap();
    }
    let info = |section: Option<&'static str>| {
        let mut cmd = redis::cmd("INFO");
        if let Some(s) = section {
            cmd.arg(s);
        }
        cmd
    };
    let stats: String = info(Some("commandstats")).query_async(&mut c).await.unwrap();
    let line = |name: &str| stats.lines().find(|l| l.starts_with(&format!("cmdstat_{name}:"))).map(str::to_string);
    let get = line("get").expect("a get line");
    assert!(get.starts_with("cmdstat_get:calls=40,usec="), "{get}");
    assert!(line("set").unwrap().starts_with("cmdstat_set:calls=40,usec="), "{stats}");
    assert!(line("lpush").is_none(), "commands never called are left out: {stats}");
    let plain: String = info(None).query_async(&mut c).await.unwrap();
    assert!(!plain.contains("# Commandstats"));
    let everything: String = info(Some("all")).query_async(&mut c).await.unwrap();
    assert!(everything.contains("# Commandstats\r\ncmdstat_"), "{everything}");
}

/// INFO commandstats' `rejected_calls` (refused before running: arity,
/// inside MULTI) and `failed_calls` (ran, answered an error: a write
/// through the log, a read, inside EXEC, a blocked XREADGROUP ended by
/// NOGROUP), as
/// Redis 7.0 counts them; CONFIG RESETSTAT zeroes them with the calls.
#[tokio::test]
async fn info_commandstats_counts_rejected_and_failed_calls() {
    let n = TestNode::start().await;
    let addr = redis_addr(&n);
    let mut c = common::redis_client(addr).await;
    let stat = |stats: &str, name: &str| {
        let prefix = format!("cmdstat_{name}:");
        stats.lines().find_map(|l| l.strip_prefix(prefix.as_str()).map(str::to_string))
    };
    let stats = || {
        let mut cmd = redis::cmd("INFO");
        cmd.arg("commandstats");
        cmd
    };
    let _: () = redis::cmd("SET").arg("k").arg("v").query_async(&mut c).await.unwrap();
    let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query_async(&mut c).await.unwrap();
    let s: String = stats().query_async(&mut c).await.unwrap();
    assert_eq!(stat(&s, "set"), None, "RESETSTAT zeroed SET: {s}");
    assert!(redis::cmd("GET").query_async::<()>(&mut c).await.is_err());
    assert!(redis::cmd("LPUSH").arg("k").arg("x").query_async::<()>(&mut c).await.is_err());
    assert!(redis::cmd("INCR").arg("k").query_async::<()>(&mut c).await.is_err());
    assert!(redis::cmd("LLEN").arg("k").query_async::<()>(&mut c).await.is_err());
    let _: i64 = redis::cmd("LLEN").arg("nosuch").query_async(&mut c).await.unwrap();
    let mut raw = TcpStream::connect(addr).await.unwrap();
    // In MULTI: HGET refused at once; INCR fails inside EXEC.
    raw.write_all(b"MULTI\r\nHGET k\r\nDISCARD\r\nMULTI\r\nINCR k\r\nEXEC\r\n").await.unwrap();
    let mut got = Vec::new();
    read_lines(&mut raw, &mut got, 7).await;
    assert!(
        got.ends_with(b"*1\r\n-ERR value is not an integer or out of range\r\n"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    // A blocked XREADGROUP whose group goes answers NOGROUP: a failed call.
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg("s")
        .arg("g")
        .arg("$")
        .arg("MKSTREAM")
        .query_async(&mut c)
        .await
        .unwrap();
    let mut b = common::redis_client(addr).await;
    let blocked = tokio::spawn(async move {
        redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg("g")
            .arg("alice")
            .arg("BLOCK")
            .arg(0)
            .arg("STREAMS")
            .arg("s")
            .arg(">")
            .query_async::<redis::Value>(&mut b)
            .await
    });
    common::until_redis_blocked(addr, 1).await;
    let _: i64 = redis::cmd("XGROUP").arg("DESTROY").arg("s").arg("g").query_async(&mut c).await.unwrap();
    let err = blocked.await.unwrap().unwrap_err();
    assert_eq!(err.code(), Some("NOGROUP"), "{err}");
    let s: String = stats().query_async(&mut c).await.unwrap();
    let calls = |name: &str| stat(&s, name).unwrap_or_else(|| panic!("{name} in {s}"));
    assert!(calls("get").starts_with("calls=0,"), "{s}");
    assert!(calls("get").ends_with(",rejected_calls=1,failed_calls=0"), "{s}");
    assert!(calls("hget").ends_with(",rejected_calls=1,failed_calls=0"), "{s}");
    assert!(
        calls("lpush").starts_with("calls=1,") && calls("lpush").ends_with("rejected_calls=0,failed_calls=1"),
        "{s}"
    );
    assert!(calls("incr").ends_with("rejected_calls=0,failed_calls=2"), "{s}");
    assert!(calls("llen").starts_with("calls=2,") && calls("llen").ends_with("rejected_calls=0,failed_calls=1"), "{s}");
    assert!(calls("xreadgroup").starts_with("calls=1,") && calls("xreadgroup").ends_with("failed_calls=1"), "{s}");
}

/// Reads from `m` into `got` until it holds `lines` newlines (10 s).
async fn read_lines(m: &mut TcpStream, got: &mut Vec<u8>, lines: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while got.iter().filter(|&&b| b == b'\n').count() < lines {
        let mut buf = [0u8; 4096];
        let k = tokio::time::timeout_at(deadline, m.read(&mut buf)).await.expect("monitor lines in time").unwrap();
        assert!(k > 0, "monitor closed: {}", String::from_utf8_lossy(got));
        got.extend_from_slice(&buf[..k]);
    }
}

/// MONITOR shows every command the node runs, quoted and escaped as
/// redis-server 7.0.15 does, with the database after the command and
/// passwords redacted; the monitor may PING (and sees it), other commands
/// are refused, QUIT ends it.
#[tokio::test]
async fn monitor_shows_each_command_as_redis() {
    let n = TestNode::start().await;
    let a = redis_addr(&n);
    let mut m = TcpStream::connect(a).await.unwrap();
    m.write_all(b"MONITOR\r\n").await.unwrap();
    common::expect_bytes(&mut m, b"+OK\r\n", Duration::from_secs(10)).await;
    let mut got = Vec::new();
    let mut c = TcpStream::connect(a).await.unwrap();
    c.write_all(
        b"*3\r\n$3\r\nSET\r\n$5\r\na b\"c\r\n$6\r\nx\n\xff\ty\\\r\nSELECT 2\r\nGET k\r\nAUTH x\r\nHELLO 3 AUTH u p\r\n",
    )
    .await
    .unwrap();
    read_lines(&mut m, &mut got, 5).await;
    let port = c.local_addr().unwrap().port();
    let masked = String::from_utf8_lossy(&got)
        .lines()
        .map(|l| {
            let (ts, rest) = l.split_once(' ').unwrap();
            let secs_micros = ts.trim_start_matches('+');
            assert!(secs_micros.len() > 7 && secs_micros.as_bytes()[secs_micros.len() - 7] == b'.', "{l}");
            format!("+TS {}", rest.replace(&format!("127.0.0.1:{port}"), "127.0.0.1:P"))
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(
        masked,
        "+TS [0 127.0.0.1:P] \"SET\" \"a b\\\"c\" \"x\\n\\xff\\ty\\\\\"\n\
         +TS [2 127.0.0.1:P] \"SELECT\" \"2\"\n\
         +TS [2 127.0.0.1:P] \"GET\" \"k\"\n\
         +TS [2 127.0.0.1:P] \"AUTH\" \"(redacted)\"\n\
         +TS [2 127.0.0.1:P] \"HELLO\" \"3\" \"AUTH\" \"(redacted)\" \"(redacted)\""
    );
    got.clear();
    m.write_all(b"PING\r\nGET a\r\nQUIT\r\n").await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), m.read_to_end(&mut rest)).await.unwrap().unwrap();
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.starts_with("+PONG\r\n"), "{rest}");
    assert!(rest.contains("-ERR Replica can't interact with the keyspace\r\n"), "{rest}");
    assert!(rest.ends_with("+OK\r\n"), "{rest}");
    let queued = exchange(a, b"MULTI\r\nMONITOR\r\nEXEC\r\n").await;
    assert_eq!(queued, "+OK\r\n+QUEUED\r\n*1\r\n-ERR MONITOR isn't allowed for DENY BLOCKING client\r\n");
}

/// One SLOWLOG entry: id, unix seconds, microseconds, arguments, client
/// address, client name.
type SlowEntry = (i64, i64, i64, Vec<Vec<u8>>, String, String);

/// SLOWLOG as Redis 7.0 keeps it: commands that ran (not refused ones,
/// not EXEC itself), newest first with consecutive ids, the client's name,
/// long commands and arguments cut, passwords redacted; CONFIG SET
/// changes the threshold and length at run time.
#[tokio::test]
async fn slowlog_keeps_the_commands_that_ran_as_redis() {
    let n = TestNode::start().await;
    let url = format!("redis://{}/", redis_addr(&n));
    let mut c = redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap();
    let q = |args: &[&[u8]]| {
        let mut cmd = redis::cmd(std::str::from_utf8(args[0]).unwrap());
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd
    };
    let slower: Vec<String> =
        redis::cmd("CONFIG").arg("GET").arg("slowlog-log-slower-than").query_async(&mut c).await.unwrap();
    assert_eq!(slower, ["slowlog-log-slower-than", "10000"]);
    let _: () = q(&[b"CONFIG", b"SET", b"slowlog-log-slower-than", b"0"]).query_async(&mut c).await.unwrap();
    let _: () = q(&[b"SLOWLOG", b"RESET"]).query_async(&mut c).await.unwrap();
    let _: () = q(&[b"CLIENT", b"SETNAME", b"me"]).query_async(&mut c).await.unwrap();
    let _: () = q(&[b"SET", b"k", b"v"]).query_async(&mut c).await.unwrap();
    let many: Vec<String> = (3..=33).map(|i| i.to_string()).collect();
    let mut sadd = redis::cmd("SADD");
    sadd.arg("s").arg(&many);
    let _: i64 = sadd.query_async(&mut c).await.unwrap();
    let long = "A".repeat(129);
    let _: i64 = q(&[b"SADD", b"s", b"foo", long.as_bytes()]).query_async(&mut c).await.unwrap();
    assert!(q(&[b"AUTH", b"secret"]).query_async::<()>(&mut c).await.is_err());
    assert!(q(&[b"NOSUCH", b"x"]).query_async::<()>(&mut c).await.is_err(), "refused: not logged");
    assert!(q(&[b"GET"]).query_async::<()>(&mut c).await.is_err(), "wrong arity: not logged");
    let got: (String, String) =
        redis::pipe().atomic().cmd("SET").arg("a").arg("1").cmd("GET").arg("a").query_async(&mut c).await.unwrap();
    assert_eq!(got, ("OK".to_string(), "1".to_string()));

    let log: Vec<SlowEntry> = q(&[b"SLOWLOG", b"GET", b"-1"]).query_async(&mut c).await.unwrap();
    let args: Vec<Vec<String>> =
        log.iter().map(|e| e.3.iter().map(|a| String::from_utf8_lossy(a).into_owned()).collect()).collect();
    let mut cut = vec!["SADD".to_string(), "s".to_string()];
    cut.extend((3..=31).map(|i| i.to_string()));
    cut.push("... (2 more arguments)".into());
    let want: Vec<Vec<String>> = vec![
        vec!["GET".into(), "a".into()],
        vec!["SET".into(), "a".into(), "1".into()],
        vec!["MULTI".into()],
        vec!["AUTH".into(), "(redacted)".into()],
        vec!["SADD".into(), "s".into(), "foo".into(), format!("{}... (1 more bytes)", "A".repeat(128))],
        cut,
        vec!["SET".into(), "k".into(), "v".into()],
        vec!["CLIENT".into(), "SETNAME".into(), "me".into()],
        vec!["SLOWLOG".into(), "RESET".into()],
    ];
    assert_eq!(args, want);
    for (i, e) in log.iter().enumerate() {
        assert_eq!(e.0, log[0].0 - i as i64, "ids count down from the newest");
        assert!(e.1 > 1_700_000_000 && e.2 >= 0, "{e:?}");
        assert!(e.4.starts_with("127.0.0.1:"), "{e:?}");
        assert_eq!(e.5, if i + 1 < log.len() { "me" } else { "" }, "the name when it was logged");
    }
    let len: i64 = q(&[b"SLOWLOG", b"LEN"]).query_async(&mut c).await.unwrap();
    assert_eq!(len, log.len() as i64 + 1, "SLOWLOG GET logged itself");

    // Shorter: only the newest are kept; off: nothing more is logged.
    let _: () = q(&[b"CONFIG", b"SET", b"slowlog-max-len", b"2"]).query_async(&mut c).await.unwrap();
    let len: i64 = q(&[b"SLOWLOG", b"LEN"]).query_async(&mut c).await.unwrap();
    assert_eq!(len, 2);
    let err = q(&[b"CONFIG", b"SET", b"slowlog-max-len", b"-1"]).query_async::<()>(&mut c).await.unwrap_err();
    assert!(err.to_string().contains("argument must be between 0 and 1000000 inclusive"), "{err}");
    // With a parameter that cannot change, nothing changes, and the error
    // names that one.
    let err = q(&[b"CONFIG", b"SET", b"slowlog-max-len", b"5", b"maxclients", b"10"])
        .query_async::<()>(&mut c)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("'maxclients'"), "{err}");
    let max: Vec<String> = q(&[b"CONFIG", b"GET", b"slowlog-max-len"]).query_async(&mut c).await.unwrap();
    assert_eq!(max, ["slowlog-max-len", "2"]);
    let _: () = q(&[b"CONFIG", b"SET", b"slowlog-log-slower-than", b"-1"]).query_async(&mut c).await.unwrap();
    let _: () = q(&[b"SLOWLOG", b"RESET"]).query_async(&mut c).await.unwrap();
    let _: () = q(&[b"SET", b"k", b"w"]).query_async(&mut c).await.unwrap();
    let len: i64 = q(&[b"SLOWLOG", b"LEN"]).query_async(&mut c).await.unwrap();
    assert_eq!(len, 0);
}

#[tokio::test]
async fn latency_histogram_counts_calls_in_redis_buckets_over_resp2_and_resp3() {
    let n = TestNode::start().await;
    let url = format!("redis://{}/", redis_addr(&n));
    let mut c = redis::Client::open(url.clone()).unwrap().get_multiplexed_async_connection().await.unwrap();
    // One call in 16 a connection is timed: 160 GETs time 10 of them.
    for _ in 0..160 {
        let _: Option<String> = redis::cmd("GET").arg("k").query_async(&mut c).await.unwrap();
    }
    // RESP2: a flat array, command → [calls, n, histogram_usec, [bucket, cumulative…]].
    let v: redis::Value =
        redis::cmd("LATENCY").arg("HISTOGRAM").arg("GET").arg("nosuch").query_async(&mut c).await.unwrap();
    let redis::Value::Array(top) = v else { panic!("not an array: {v:?}") };
    assert_eq!(top.len(), 2, "only get: {top:?}");
    assert_eq!(top[0], redis::Value::BulkString(b"get".to_vec()));
    let redis::Value::Array(body) = &top[1] else { panic!("{top:?}") };
    assert_eq!(body[0], redis::Value::BulkString(b"calls".to_vec()));
    let calls = match body[1] {
        redis::Value::Int(n) => n,
        ref other => panic!("{other:?}"),
    };
    assert!(calls >= 160, "every GET counted: {calls}");
    assert_eq!(body[2], redis::Value::BulkString(b"histogram_usec".to_vec()));
    let redis::Value::Array(h) = &body[3] else { panic!("{body:?}") };
    let ints: Vec<i64> = h
        .iter()
        .map(|x| match x {
            redis::Value::Int(n) => *n,
            other => panic!("{other:?}"),
        })
        .collect();
    let labels = [1, 2, 4, 8, 16, 33, 66, 132, 264, 528, 1056, 2113, 4227, 8454, 16908, 33816];
    let mut last = 0;
    for pair in ints.chunks(2) {
        assert!(labels.contains(&pair[0]) || pair[0] > 33816, "a Redis bucket label: {pair:?}");
        assert!(pair[1] > last, "cumulative counts grow: {ints:?}");
        last = pair[1];
    }
    assert_eq!(last, calls, "the last bucket holds every call");
    // RESP3: maps, and INFO and CLIENT INFO as verbatim text.
    let url3 = format!("{url}?protocol=resp3");
    let mut c3 = redis::Client::open(url3).unwrap().get_multiplexed_async_connection().await.unwrap();
    let v: redis::Value = redis::cmd("LATENCY").arg("HISTOGRAM").arg("get").query_async(&mut c3).await.unwrap();
    let redis::Value::Map(top) = v else { panic!("not a map: {v:?}") };
    let redis::Value::Map(body) = &top[0].1 else { panic!("{top:?}") };
    assert_eq!(body[0].0, redis::Value::BulkString(b"calls".to_vec()));
    assert!(matches!(body[1].1, redis::Value::Map(_)), "{body:?}");
    for cmd in [&["INFO", "server"][..], &["CLIENT", "INFO"]] {
        let v: redis::Value = redis::cmd(cmd[0]).arg(cmd[1]).query_async(&mut c3).await.unwrap();
        assert!(
            matches!(&v, redis::Value::VerbatimString { format: redis::VerbatimFormat::Text, .. }),
            "{cmd:?}: {v:?}"
        );
    }
}

/// MEMORY STATS: Redis 7.0's fields in its order, over RESP2 (a flat
/// array) and RESP3 (a map), with a per-database entry for each database
/// holding keys, and figures that agree with each other.
#[tokio::test]
async fn memory_stats_reports_redis_fields_in_order() {
    let n = TestNode::start().await;
    let url = format!("redis://{}/", redis_addr(&n));
    let mut c = redis::Client::open(url.clone()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let names = |v: &redis::Value| -> Vec<String> {
        let redis::Value::Array(flat) = v else { panic!("RESP2 MEMORY STATS is a flat array: {v:?}") };
        flat.iter()
            .step_by(2)
            .map(|k| match k {
                redis::Value::BulkString(b) => String::from_utf8(b.clone()).unwrap(),
                other => panic!("{other:?}"),
            })
            .collect()
    };
    let head = [
        "peak.allocated",
        "total.allocated",
        "startup.allocated",
        "replication.backlog",
        "clients.slaves",
        "clients.normal",
        "cluster.links",
        "aof.buffer",
        "lua.caches",
        "functions.caches",
    ];
    let tail = [
        "overhead.total",
        "keys.count",
        "keys.bytes-per-key",
        "dataset.bytes",
        "dataset.percentage",
        "peak.percentage",
        "allocator.allocated",
        "allocator.active",
        "allocator.resident",
        "allocator-fragmentation.ratio",
        "allocator-fragmentation.bytes",
        "allocator-rss.ratio",
        "allocator-rss.bytes",
        "rss-overhead.ratio",
        "rss-overhead.bytes",
        "fragmentation",
        "fragmentation.bytes",
    ];
    let empty: redis::Value = redis::cmd("MEMORY").arg("STATS").query_async(&mut c).await.unwrap();
    assert_eq!(names(&empty), [&head[..], &tail[..]].concat());
    let _: () = redis::cmd("SET").arg("k").arg("v").query_async(&mut c).await.unwrap();
    let _: () = redis::cmd("SELECT").arg(3).query_async(&mut c).await.unwrap();
    let _: () = redis::cmd("SET").arg("k").arg("v").query_async(&mut c).await.unwrap();
    let two = redis::cmd("MEMORY").arg("STATS").query_async(&mut c).await.unwrap();
    assert_eq!(names(&two), [&head[..], &["db.0", "db.3"], &tail[..]].concat());

    let mut c3 =
        redis::Client::open(format!("{url}?protocol=resp3")).unwrap().get_multiplexed_async_connection().await.unwrap();
    let v: redis::Value = redis::cmd("MEMORY").arg("STATS").query_async(&mut c3).await.unwrap();
    let redis::Value::Map(pairs) = v else { panic!("RESP3 MEMORY STATS is a map: {v:?}") };
    let get = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| *k == redis::Value::BulkString(name.as_bytes().to_vec()))
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("{name} missing"))
    };
    let int = |name: &str| match get(name) {
        redis::Value::Int(n) => n,
        other => panic!("{name}: {other:?}"),
    };
    assert_eq!(int("keys.count"), 2);
    assert!(int("total.allocated") > 0);
    assert!(int("peak.allocated") >= int("total.allocated"));
    assert!(int("startup.allocated") <= int("total.allocated"));
    // What is left of the total; none when the resident size fell below
    // the startup size plus the overheads (it moves under parallel tests).
    assert_eq!(int("dataset.bytes"), (int("total.allocated") - int("overhead.total")).max(0));
    assert!(matches!(get("peak.percentage"), redis::Value::Double(p) if p > 0.0 && p <= 100.0));
    let redis::Value::Map(db0) = get("db.0") else { panic!("db.0 is a map") };
    assert_eq!(db0[0].0, redis::Value::BulkString(b"overhead.hashtable.main".to_vec()));
    assert!(matches!(db0[0].1, redis::Value::Int(n) if n > 0), "{db0:?}");
}

/// INFO errorstats counts error replies by their first word, and
/// `total_error_replies` all of them, as Redis 7.0; CONFIG RESETSTAT
/// clears them.
#[tokio::test]
async fn errorstats_count_errors_by_kind() {
    let n = TestNode::start().await;
    let mut c = common::redis_client(redis_addr(&n)).await;
    let _: () = redis::cmd("SET").arg("s").arg("x").query_async(&mut c).await.unwrap();
    let _: redis::RedisResult<i64> = redis::cmd("LPUSH").arg("s").arg("a").query_async(&mut c).await;
    let _: redis::RedisResult<i64> = redis::cmd("LPUSH").arg("s").arg("a").query_async(&mut c).await;
    let _: redis::RedisResult<()> = redis::cmd("FOO").query_async(&mut c).await;
    let info: String = redis::cmd("INFO").arg("errorstats").query_async(&mut c).await.unwrap();
    assert_eq!(info, "# Errorstats\r\nerrorstat_ERR:count=1\r\nerrorstat_WRONGTYPE:count=2\r\n");
    let stats: String = redis::cmd("INFO").arg("stats").query_async(&mut c).await.unwrap();
    assert!(stats.contains("total_error_replies:3\r\n"), "{stats}");
    let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query_async(&mut c).await.unwrap();
    let info: String = redis::cmd("INFO").arg("errorstats").query_async(&mut c).await.unwrap();
    assert_eq!(info, "# Errorstats\r\n");
}

/// INFO persistence: `rdb_changes_since_last_save` counts the writes that
/// changed something (not a SETBIT that leaves the bit as it was), and
/// SAVE starts it again, as Redis's dirty counter.
#[tokio::test]
async fn changes_since_last_save_count_writes_that_changed_something() {
    let n = TestNode::start().await;
    let mut c = common::redis_client(redis_addr(&n)).await;
    let changes = |info: String| -> u64 {
        info.lines().find_map(|l| l.strip_prefix("rdb_changes_since_last_save:")).unwrap().trim().parse().unwrap()
    };
    let before = changes(redis::cmd("INFO").arg("persistence").query_async(&mut c).await.unwrap());
    let _: i64 = redis::cmd("SETBIT").arg("foo").arg(0).arg(0).query_async(&mut c).await.unwrap();
    let _: Vec<i64> = redis::cmd("BITFIELD").arg(&["foo2", "SET", "i5", "0", "0"]).query_async(&mut c).await.unwrap();
    let _: i64 = redis::cmd("SETBIT").arg("foo").arg(0).arg(0).query_async(&mut c).await.unwrap();
    let _: Vec<i64> = redis::cmd("BITFIELD").arg(&["foo2", "SET", "i5", "0", "0"]).query_async(&mut c).await.unwrap();
    let after = changes(redis::cmd("INFO").arg("persistence").query_async(&mut c).await.unwrap());
    assert_eq!(after, before + 2);
    for (bit, field) in [("1", "1"), ("1", "1"), ("0", "0"), ("0", "0")] {
        let _: i64 = redis::cmd("SETBIT").arg("foo").arg(0).arg(bit).query_async(&mut c).await.unwrap();
        let _: Vec<i64> =
            redis::cmd("BITFIELD").arg(&["foo2", "SET", "i5", "0", field]).query_async(&mut c).await.unwrap();
    }
    let changed = changes(redis::cmd("INFO").arg("persistence").query_async(&mut c).await.unwrap());
    assert_eq!(changed, after + 4);
    let _: () = redis::cmd("SAVE").query_async(&mut c).await.unwrap();
    let saved = changes(redis::cmd("INFO").arg("persistence").query_async(&mut c).await.unwrap());
    assert_eq!(saved, 0);
}

/// CLIENT PAUSE WRITE holds writes (an EXEC of writes too) while reads go
/// on, until CLIENT UNPAUSE; CLIENT PAUSE ALL holds every command, the
/// pausing client's own too, until it ends; a refused command is answered
/// at once, as Redis refuses it before it pauses.
#[tokio::test]
async fn client_pause_holds_writes_or_every_command_until_it_ends() {
    let n = TestNode::start().await;
    let addr = redis_addr(&n);
    let (mut admin, mut reader) = (common::redis_client(addr).await, common::redis_client(addr).await);
    let _: () = redis::cmd("SET").arg("k").arg("1").query_async(&mut reader).await.unwrap();
    let _: () = redis::cmd("CLIENT").arg("PAUSE").arg(60_000).arg("WRITE").query_async(&mut admin).await.unwrap();
    let mut writer = common::redis_client(addr).await;
    let mut write = tokio::spawn(async move {
        let _: () = redis::cmd("SET").arg("k").arg("2").query_async(&mut writer).await.unwrap();
        let mut tx = redis::pipe();
        tx.atomic().cmd("INCR").arg("n");
        let (n,): (i64,) = tx.query_async(&mut writer).await.unwrap();
        n
    });
    let mut transaction = common::redis_client(addr).await;
    let mut exec = tokio::spawn(async move {
        let mut tx = redis::pipe();
        tx.atomic().cmd("SET").arg("t").arg("x");
        let _: () = tx.query_async(&mut transaction).await.unwrap();
    });
    assert!(tokio::time::timeout(Duration::from_millis(300), &mut write).await.is_err(), "SET ran during the pause");
    assert!(tokio::time::timeout(Duration::from_millis(10), &mut exec).await.is_err(), "EXEC ran during the pause");
    let got: String = redis::cmd("GET").arg("k").query_async(&mut reader).await.unwrap();
    assert_eq!(got, "1", "reads go on, and see no held write");
    let e = redis::cmd("GET").query_async::<()>(&mut reader).await.unwrap_err().to_string();
    assert!(e.contains("wrong number of arguments"), "{e}");
    let _: () = redis::cmd("CLIENT").arg("UNPAUSE").query_async(&mut admin).await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(10), write).await.unwrap().unwrap();
    assert_eq!(n, 1);
    tokio::time::timeout(Duration::from_secs(10), exec).await.unwrap().unwrap();
    let got: String = redis::cmd("GET").arg("k").query_async(&mut reader).await.unwrap();
    assert_eq!(got, "2");

    // ALL: even reads and the pausing client wait, until the end.
    let started = std::time::Instant::now();
    let _: () = redis::cmd("CLIENT").arg("PAUSE").arg(400).query_async(&mut admin).await.unwrap();
    let pong: String = redis::cmd("PING").query_async(&mut reader).await.unwrap();
    assert_eq!(pong, "PONG");
    let _: String = redis::cmd("GET").arg("k").query_async(&mut admin).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(400), "answered {:?} after the pause began", started.elapsed());
}
