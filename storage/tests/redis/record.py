#!/usr/bin/env python3
"""Records the reply tables in this folder from a real redis-server.

Each table line is `COMMAND ARG... => REPLY`; arguments are split on
single spaces. The script runs every command of a table, in order, on a
fresh redis-server database (RESP2) and rewrites the part after `=>` with
what the server answered, in the short form the keyspace tests compare:
`+simple`, `-error`, `:int`, `$bulk` (`$hex:...` when not UTF-8), `nil`,
`[a,b]`. A table whose name starts with `notify` records instead the
keyspace events each command fires (notify-keyspace-events `KEA`, read
from the `__keyevent@*__` channels) as `[event:key,...]`, with `@db`
after the event outside database 0. Inside an argument,
`\s` stands for a space and `\n` for a newline (Lua scripts). For
DUMP/RESTORE (`dumps.txt`): `@dump` is the payload the last DUMP
answered, `@dump:flip` the same with its last byte changed, and
`@body:HEX` / `@body11:HEX` a payload made of those bytes and an RDB
version 10 / 11 footer with its CRC-64.

    redis-server --port 7777 --save '' --appendonly no &
    storage/tests/redis/record.py 7777 storage/tests/redis/*.txt

The tables in the repository were recorded from redis-server 7.0.15
(Debian 12) this way; `git diff` after a run shows any disagreement.
"""
import socket
import sys


def crc64(data):
    """Redis's CRC-64 (Jones polynomial, reflected)."""
    crc = 0
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0x95AC9329AC4BC9B5 if crc & 1 else crc >> 1
    return crc


def payload(arg, last_dump):
    """An argument's bytes: the `@` forms above, or the text itself."""
    if arg == "@dump":
        return last_dump
    if arg == "@dump:flip":
        return last_dump[:-1] + bytes([last_dump[-1] ^ 1])
    for prefix, version in (("@body:", 10), ("@body11:", 11)):
        if arg.startswith(prefix):
            body = bytes.fromhex(arg[len(prefix):]) + version.to_bytes(2, "little")
            return body + crc64(body).to_bytes(8, "little")
    return arg.encode()


def encode(args):
    out = b"*%d\r\n" % len(args)
    for a in args:
        if isinstance(a, str):
            a = a.encode()
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    return out


class Conn:
    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port))
        self.buf = b""

    def line(self):
        while b"\r\n" not in self.buf:
            self.buf += self.s.recv(65536)
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def exact(self, n):
        while len(self.buf) < n + 2:
            self.buf += self.s.recv(65536)
        data, self.buf = self.buf[:n], self.buf[n + 2:]
        return data

    def reply(self):
        line = self.line()
        kind, rest = line[:1], line[1:].decode()
        if kind == b"+":
            return "+" + rest
        if kind == b"-":
            return "-" + rest
        if kind == b":":
            return ":" + rest
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return "nil"
            data = self.exact(n)
            self.last_bulk = data
            try:
                return "$" + data.decode()
            except UnicodeDecodeError:
                return "$hex:" + data.hex()
        if kind == b"*":
            n = int(rest)
            if n < 0:
                return "nil"
            return "[" + ",".join(self.reply() for _ in range(n)) + "]"
        raise ValueError(line)

    def run(self, args):
        self.s.sendall(encode(args))
        return self.reply()


def events(c, sub, args, fence):
    """Runs `args` on `c`; returns the keyevents `sub` saw for it (a
    PUBLISH on a fence channel marks where they end)."""
    c.run(args)
    c.run(["PUBLISH", "fence", str(fence)])
    seen = []
    while True:
        msg = sub.reply()  # [pmessage,pattern,channel,payload] or [message,fence,n]
        parts = msg[1:-1].split(",")
        if parts[0] == "$message":
            return "[" + ",".join(seen) + "]"
        channel, key = parts[2][1:], parts[3][1:]
        db, event = channel[len("__keyevent@"):].split("__:", 1)
        seen.append(event + ("" if db == "0" else "@" + db) + ":" + key)


def main():
    port = int(sys.argv[1])
    for path in sys.argv[2:]:
        c = Conn(port)
        c.run(["FLUSHALL"])
        notify = path.rsplit("/", 1)[-1].startswith("notify")
        if notify:
            c.run(["CONFIG", "SET", "notify-keyspace-events", "KEA"])
            sub = Conn(port)
            sub.run(["PSUBSCRIBE", "__keyevent@*__:*"])
            sub.run(["SUBSCRIBE", "fence"])
        out = []
        last_dump = b""
        for raw in open(path):
            line = raw.rstrip("\n")
            if not line.strip() or line.startswith("#"):
                out.append(line)
                continue
            cmd = line.split(" => ")[0]
            args = [payload(a.replace("\\s", " ").replace("\\n", "\n"), last_dump) for a in cmd.split(" ")]
            if notify:
                out.append(cmd + " => " + events(c, sub, args, len(out)))
            else:
                out.append(cmd + " => " + c.run(args))
            if args[0].upper() == b"DUMP":
                last_dump = c.last_bulk
        open(path, "w").write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
