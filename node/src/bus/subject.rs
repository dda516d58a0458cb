//! Subject syntax: `.`-separated tokens, `*` matches one token, `>` the rest.
//!
//! The rules are nats-server's: a token may not be empty, `>` may only be the
//! last token, and a token that merely *contains* `*` or `>` (like `foo*`) is a
//! literal. Whitespace never reaches here: the parser splits on it.

/// A subject a client may subscribe to: wildcards allowed.
pub fn is_valid_subject(subject: &[u8]) -> bool {
    if subject.is_empty() {
        return false;
    }
    let mut tokens = subject.split(|b| *b == b'.').peekable();
    while let Some(token) = tokens.next() {
        if token.is_empty() {
            return false;
        }
        if token == b">" && tokens.peek().is_some() {
            return false;
        }
        if token.iter().any(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n')) {
            return false;
        }
    }
    true
}

/// A subject a client may publish to: valid and without wildcard tokens.
pub fn is_valid_literal_subject(subject: &[u8]) -> bool {
    is_valid_subject(subject) && !has_wildcard_token(subject)
}

/// True when some token is exactly `*` or `>`.
pub fn has_wildcard_token(subject: &[u8]) -> bool {
    subject.split(|b| *b == b'.').any(|token| token == b"*" || token == b">")
}

/// Does `subject` (a literal) match `pattern` (which may hold wildcards)?
/// The tests' oracle for the trie in `sublist`.
#[cfg(test)]
pub fn matches(pattern: &[u8], subject: &[u8]) -> bool {
    let mut pat = pattern.split(|b| *b == b'.');
    let mut sub = subject.split(|b| *b == b'.');
    loop {
        match (pat.next(), sub.next()) {
            (Some(b">"), Some(_)) => return true,
            (Some(b"*"), Some(_)) => {}
            (Some(p), Some(s)) if p == s => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_subjects() {
        for s in ["foo", "foo.bar", "foo.*", "foo.>", "*", ">", "*.*.>", "foo*", "foo.b>r", "_INBOX.abc.1"] {
            assert!(is_valid_subject(s.as_bytes()), "{s} should be valid");
        }
    }

    #[test]
    fn invalid_subjects() {
        for s in ["", ".", "foo.", ".foo", "foo..bar", "foo.>.bar", ">.foo", "a b"] {
            assert!(!is_valid_subject(s.as_bytes()), "{s:?} should be invalid");
        }
    }

    #[test]
    fn literal_subjects_reject_wildcard_tokens() {
        assert!(is_valid_literal_subject(b"foo.bar"));
        assert!(is_valid_literal_subject(b"foo*.b>r"));
        assert!(!is_valid_literal_subject(b"foo.*"));
        assert!(!is_valid_literal_subject(b">"));
        assert!(!is_valid_literal_subject(b"foo..x"));
    }

    #[test]
    fn pattern_matching() {
        assert!(matches(b"foo.*", b"foo.bar"));
        assert!(!matches(b"foo.*", b"foo.bar.baz"));
        assert!(matches(b"foo.>", b"foo.bar.baz"));
        assert!(!matches(b"foo.>", b"foo"));
        assert!(matches(b">", b"foo"));
        assert!(matches(b"*.bar", b"foo.bar"));
        assert!(!matches(b"foo", b"foo.bar"));
        assert!(!matches(b"foo.bar", b"foo"));
    }
}
