//! Wire bodies of the NATS client protocol: INFO, CONNECT, error lines and
//! MSG/HMSG framing. Pure code.

use serde::{Deserialize, Serialize};

/// Error texts, byte for byte as nats-server 2.9 sends them.
pub mod err {
    pub const UNKNOWN_OP: &[u8] = b"-ERR 'Unknown Protocol Operation'\r\n";
    pub const MAX_PAYLOAD: &[u8] = b"-ERR 'Maximum Payload Violation'\r\n";
    pub const MAX_CONTROL_LINE: &[u8] = b"-ERR 'maximum control line exceeded'\r\n";
    pub const INVALID_SUBJECT: &[u8] = b"-ERR 'Invalid Subject'\r\n";
    pub const INVALID_PUBLISH_SUBJECT: &[u8] = b"-ERR 'Invalid Publish Subject'\r\n";
    pub const AUTHORIZATION_VIOLATION: &[u8] = b"-ERR 'Authorization Violation'\r\n";
    pub const AUTHENTICATION_TIMEOUT: &[u8] = b"-ERR 'Authentication Timeout'\r\n";
    pub const STALE_CONNECTION: &[u8] = b"-ERR 'Stale Connection'\r\n";
    pub const MAX_SUBSCRIPTIONS: &[u8] = b"-ERR 'maximum subscriptions exceeded'\r\n";
    pub const MAX_CONNECTIONS: &[u8] = b"-ERR 'maximum connections exceeded'\r\n";
    pub const BAD_CLIENT_PROTOCOL: &[u8] = b"-ERR 'invalid client protocol'\r\n";
    pub const NO_RESPONDERS_NEEDS_HEADERS: &[u8] = b"-ERR 'no responders requires headers support'\r\n";
}

pub const OK: &[u8] = b"+OK\r\n";
pub const PING: &[u8] = b"PING\r\n";
pub const PONG: &[u8] = b"PONG\r\n";

/// The server INFO body. Per-connection fields are filled in per client.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Info {
    pub server_id: String,
    pub server_name: String,
    pub version: String,
    pub proto: u8,
    pub host: String,
    pub port: u16,
    pub headers: bool,
    pub max_payload: usize,
    #[serde(skip_serializing_if = "is_zero")]
    pub client_id: u64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub client_ip: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub auth_required: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub connect_urls: Vec<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub ldm: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl Info {
    /// `INFO {...}\r\n`.
    pub fn to_line(&self) -> Vec<u8> {
        let mut line = b"INFO ".to_vec();
        // Serializing plain strings and numbers cannot fail.
        line.extend(serde_json::to_vec(self).unwrap_or_default());
        line.extend_from_slice(b"\r\n");
        line
    }
}

/// CONNECT options. Defaults are nats-server's for a client that has not
/// sent CONNECT yet: verbose and pedantic on, echo on.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ConnectOpts {
    pub verbose: bool,
    pub pedantic: bool,
    pub echo: bool,
    pub headers: bool,
    pub no_responders: bool,
    pub protocol: i64,
    pub name: String,
    pub lang: String,
    pub version: String,
    pub user: Option<String>,
    pub pass: Option<String>,
    pub auth_token: Option<String>,
    pub tls_required: bool,
}

impl Default for ConnectOpts {
    fn default() -> Self {
        Self {
            verbose: true,
            pedantic: true,
            echo: true,
            headers: false,
            no_responders: false,
            protocol: 0,
            name: String::new(),
            lang: String::new(),
            version: String::new(),
            user: None,
            pass: None,
            auth_token: None,
            tls_required: false,
        }
    }
}

impl ConnectOpts {
    /// Applies a CONNECT body over the current options. Keys the client
    /// leaves out keep their current value, as in nats-server (which decodes
    /// the JSON over the existing options): a CONNECT without `verbose`
    /// leaves verbose on.
    pub fn apply(&mut self, body: &[u8]) -> Result<(), serde_json::Error> {
        #[derive(Deserialize)]
        struct Wire {
            verbose: Option<bool>,
            pedantic: Option<bool>,
            echo: Option<bool>,
            headers: Option<bool>,
            no_responders: Option<bool>,
            protocol: Option<i64>,
            name: Option<String>,
            lang: Option<String>,
            version: Option<String>,
            user: Option<String>,
            pass: Option<String>,
            auth_token: Option<String>,
            tls_required: Option<bool>,
        }
        let w: Wire = serde_json::from_slice(body)?;
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = w.$f { self.$f = v; } )* };
        }
        set!(verbose, pedantic, echo, headers, no_responders, protocol, name, lang, version, tls_required);
        if w.user.is_some() {
            self.user = w.user;
        }
        if w.pass.is_some() {
            self.pass = w.pass;
        }
        if w.auth_token.is_some() {
            self.auth_token = w.auth_token;
        }
        Ok(())
    }
}

/// Appends `MSG <subject> <sid> [reply] <size>\r\n<payload>\r\n`, or the HMSG
/// form when `headers` is given.
pub fn write_msg(
    out: &mut Vec<u8>,
    subject: &[u8],
    sid: &[u8],
    reply: Option<&[u8]>,
    headers: Option<&[u8]>,
    payload: &[u8],
) {
    let mut num = itoa::Buffer::new();
    let hdr_len = headers.map_or(0, <[u8]>::len);
    out.reserve(subject.len() + sid.len() + reply.map_or(0, <[u8]>::len) + hdr_len + payload.len() + 40);
    out.extend_from_slice(if headers.is_some() { b"HMSG " } else { b"MSG " });
    out.extend_from_slice(subject);
    out.push(b' ');
    out.extend_from_slice(sid);
    out.push(b' ');
    if let Some(reply) = reply {
        out.extend_from_slice(reply);
        out.push(b' ');
    }
    if let Some(h) = headers {
        out.extend_from_slice(num.format(h.len()).as_bytes());
        out.push(b' ');
        out.extend_from_slice(num.format(h.len() + payload.len()).as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(h);
    } else {
        out.extend_from_slice(num.format(payload.len()).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\n");
}

/// The no-responders status message nats-server sends to a requester.
pub const NO_RESPONDERS_HEADERS: &[u8] = b"NATS/1.0 503\r\n\r\n";

/// A random server id in nats-server's shape: 'N' and 55 base32 characters.
pub fn new_server_id() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut id = String::with_capacity(56);
    id.push('N');
    for _ in 0..55 {
        id.push(ALPHABET[rand::random_range(0..ALPHABET.len())] as char);
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msg_framing() {
        let mut out = Vec::new();
        write_msg(&mut out, b"foo", b"1", None, None, b"hi");
        write_msg(&mut out, b"foo", b"1", Some(b"r"), None, b"");
        write_msg(&mut out, b"_INBOX.x", b"7", None, Some(NO_RESPONDERS_HEADERS), b"");
        assert_eq!(out, b"MSG foo 1 2\r\nhi\r\nMSG foo 1 r 0\r\n\r\nHMSG _INBOX.x 7 16 16\r\nNATS/1.0 503\r\n\r\n\r\n");
    }

    #[test]
    fn connect_defaults() {
        let pre = ConnectOpts::default();
        assert!(pre.verbose && pre.pedantic, "before CONNECT nats-server is verbose and pedantic");
        let mut c = ConnectOpts::default();
        c.apply(b"{}").unwrap();
        assert!(c.verbose && c.pedantic && c.echo && !c.headers, "omitted keys keep their value");
        c.apply(br#"{"verbose":false,"pedantic":false,"echo":false,"headers":true,"protocol":1}"#).unwrap();
        assert!(!c.verbose && !c.pedantic && !c.echo && c.headers && c.protocol == 1);
        assert!(c.apply(b"notjson").is_err());
        assert!(c.apply(b"").is_err());
    }

    #[test]
    fn server_id_shape() {
        let id = new_server_id();
        assert_eq!(id.len(), 56);
        assert!(id.starts_with('N'));
        assert!(id.bytes().all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b)));
    }

    #[test]
    fn info_omits_empty_fields() {
        let info =
            Info { server_id: "N1".into(), version: "2.9.10".into(), proto: 1, headers: true, ..Default::default() };
        let line = String::from_utf8(info.to_line()).unwrap();
        assert!(line.starts_with("INFO {") && line.ends_with("}\r\n"));
        assert!(!line.contains("ldm") && !line.contains("connect_urls") && !line.contains("auth_required"));
    }
}
