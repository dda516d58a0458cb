//! The subject router: a trie of subject tokens holding subscriptions.
//!
//! ```text
//!   root ─ "orders" ─ "created"  (psubs, qsubs by queue name)
//!        │          └ *          (psubs, qsubs)
//!        └ >                     (psubs, qsubs)
//! ```
//! Each level keeps literal children in a map plus one `*` and one `>` child.
//! `matches` walks the literal, `*` and `>` branches for every token of a
//! literal subject and returns plain subscribers and queue groups apart, so the
//! caller can deliver to every plain subscriber and to one member per group.
//!
//! The trie carries a generation number bumped on every change; callers keep
//! per-connection match caches keyed by subject and drop entries whose
//! generation is stale (see `MatchCache`). The trie does no I/O and knows
//! nothing of clients: it is generic over what a subscription is.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;

use super::subject::is_valid_subject;

/// One matching queue group: its name and its members.
pub type Group<T> = (Box<[u8]>, Vec<Arc<T>>);

/// What a match returns: every plain subscriber, and the members of each
/// matching queue group (one inner `Vec` per group name).
pub struct MatchResult<T> {
    pub plain: Vec<Arc<T>>,
    pub groups: Vec<Group<T>>,
}

impl<T> MatchResult<T> {
    pub fn is_empty(&self) -> bool {
        self.plain.is_empty() && self.groups.is_empty()
    }
}

impl<T> Default for MatchResult<T> {
    fn default() -> Self {
        Self { plain: Vec::new(), groups: Vec::new() }
    }
}

struct Level<T> {
    literal: HashMap<Box<[u8]>, Node<T>>,
    star: Option<Box<Node<T>>>,
    rest: Option<Box<Node<T>>>,
}

impl<T> Default for Level<T> {
    fn default() -> Self {
        Self { literal: HashMap::new(), star: None, rest: None }
    }
}

impl<T> Level<T> {
    fn is_empty(&self) -> bool {
        self.literal.is_empty() && self.star.is_none() && self.rest.is_none()
    }
}

struct Node<T> {
    next: Level<T>,
    plain: Vec<Arc<T>>,
    groups: HashMap<Box<[u8]>, Vec<Arc<T>>>,
}

impl<T> Default for Node<T> {
    fn default() -> Self {
        Self { next: Level::default(), plain: Vec::new(), groups: HashMap::new() }
    }
}

impl<T> Node<T> {
    fn is_empty(&self) -> bool {
        self.next.is_empty() && self.plain.is_empty() && self.groups.is_empty()
    }
}

/// Error for a subject the trie refuses.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid subject")]
pub struct InvalidSubject;

pub struct Sublist<T> {
    root: RwLock<Level<T>>,
    generation: AtomicU64,
    count: AtomicU64,
}

impl<T> Default for Sublist<T> {
    fn default() -> Self {
        Self { root: RwLock::new(Level::default()), generation: AtomicU64::new(1), count: AtomicU64::new(0) }
    }
}

impl<T> Sublist<T> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Current generation; changes whenever a subscription is added or removed.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Number of subscriptions held.
    pub fn len(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn insert(&self, subject: &[u8], queue: Option<&[u8]>, sub: Arc<T>) -> Result<(), InvalidSubject> {
        if !is_valid_subject(subject) {
            return Err(InvalidSubject);
        }
        let mut root = self.root.write();
        let mut level = &mut *root;
        let mut tokens = subject.split(|b| *b == b'.').peekable();
        let node = loop {
            let Some(token) = tokens.next() else { unreachable!("a valid subject has at least one token") };
            let node: &mut Node<T> = match token {
                b"*" => level.star.get_or_insert_with(Default::default),
                b">" => level.rest.get_or_insert_with(Default::default),
                lit => level.literal.entry(lit.into()).or_default(),
            };
            if tokens.peek().is_none() {
                break node;
            }
            level = &mut node.next;
        };
        match queue {
            None => node.plain.push(sub),
            Some(q) => node.groups.entry(q.into()).or_default().push(sub),
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// Removes `sub` (by identity). Returns whether it was there.
    pub fn remove(&self, subject: &[u8], queue: Option<&[u8]>, sub: &Arc<T>) -> bool {
        let mut root = self.root.write();
        let tokens: Vec<&[u8]> = subject.split(|b| *b == b'.').collect();
        let removed = remove_in(&mut root, &tokens, queue, sub);
        if removed {
            self.count.fetch_sub(1, Ordering::Relaxed);
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
        removed
    }

    /// All subscriptions whose subject matches the literal `subject`.
    pub fn matches(&self, subject: &[u8]) -> MatchResult<T> {
        let root = self.root.read();
        let tokens: smallvec::SmallVec<[&[u8]; 8]> = subject.split(|b| *b == b'.').collect();
        let mut result = MatchResult::default();
        let mut groups: HashMap<&[u8], Vec<Arc<T>>> = HashMap::new();
        collect(&root, &tokens, &mut result.plain, &mut groups);
        result.groups = groups.into_iter().map(|(k, v)| (Box::from(k), v)).collect();
        result
    }
}

fn remove_in<T>(level: &mut Level<T>, tokens: &[&[u8]], queue: Option<&[u8]>, sub: &Arc<T>) -> bool {
    let Some((first, rest)) = tokens.split_first() else {
        return false;
    };
    let (removed, now_empty) = {
        let node = match *first {
            b"*" => level.star.as_deref_mut(),
            b">" => level.rest.as_deref_mut(),
            lit => level.literal.get_mut(lit),
        };
        let Some(node) = node else { return false };
        let removed = if rest.is_empty() {
            match queue {
                None => remove_arc(&mut node.plain, sub),
                Some(q) => match node.groups.get_mut(q) {
                    Some(members) => {
                        let removed = remove_arc(members, sub);
                        if members.is_empty() {
                            node.groups.remove(q);
                        }
                        removed
                    }
                    None => false,
                },
            }
        } else {
            remove_in(&mut node.next, rest, queue, sub)
        };
        (removed, node.is_empty())
    };
    if now_empty {
        match *first {
            b"*" => level.star = None,
            b">" => level.rest = None,
            lit => {
                level.literal.remove(lit);
            }
        }
    }
    removed
}

fn remove_arc<T>(list: &mut Vec<Arc<T>>, sub: &Arc<T>) -> bool {
    match list.iter().position(|s| Arc::ptr_eq(s, sub)) {
        Some(i) => {
            list.swap_remove(i);
            true
        }
        None => false,
    }
}

fn collect<'a, T>(
    level: &'a Level<T>,
    tokens: &[&[u8]],
    plain: &mut Vec<Arc<T>>,
    groups: &mut HashMap<&'a [u8], Vec<Arc<T>>>,
) {
    let Some((first, rest)) = tokens.split_first() else {
        return;
    };
    if let Some(node) = &level.rest {
        add_node(node, plain, groups);
    }
    if let Some(node) = &level.star {
        visit(node, rest, plain, groups);
    }
    if let Some(node) = level.literal.get(*first) {
        visit(node, rest, plain, groups);
    }
}

fn visit<'a, T>(
    node: &'a Node<T>,
    rest: &[&[u8]],
    plain: &mut Vec<Arc<T>>,
    groups: &mut HashMap<&'a [u8], Vec<Arc<T>>>,
) {
    if rest.is_empty() {
        add_node(node, plain, groups);
    } else {
        collect(&node.next, rest, plain, groups);
    }
}

fn add_node<'a, T>(node: &'a Node<T>, plain: &mut Vec<Arc<T>>, groups: &mut HashMap<&'a [u8], Vec<Arc<T>>>) {
    plain.extend(node.plain.iter().cloned());
    for (name, members) in &node.groups {
        groups.entry(&name[..]).or_default().extend(members.iter().cloned());
    }
}

/// A per-connection cache of match results, dropped wholesale when the trie's
/// generation moves. Bounded by `entries_max`. The last subject looked up is
/// kept apart so a publisher repeating one subject skips hashing.
pub struct MatchCache<T> {
    generation: u64,
    entries: HashMap<Box<[u8]>, Arc<MatchResult<T>>>,
    entries_max: usize,
    /// The last subject looked up (buffer reused) and its result.
    last_subject: Vec<u8>,
    last: Option<Arc<MatchResult<T>>>,
}

impl<T> MatchCache<T> {
    pub fn new(entries_max: usize) -> Self {
        Self { generation: 0, entries: HashMap::new(), entries_max, last_subject: Vec::new(), last: None }
    }

    pub fn get(&mut self, list: &Sublist<T>, subject: &[u8]) -> &MatchResult<T> {
        let generation = list.generation();
        if generation != self.generation {
            self.entries.clear();
            self.last = None;
            self.generation = generation;
        }
        let last_hit = self.last.is_some() && self.last_subject == subject;
        if !last_hit {
            let result = match self.entries.get(subject) {
                Some(hit) => hit.clone(),
                None => {
                    let result = Arc::new(list.matches(subject));
                    if self.entries.len() >= self.entries_max {
                        self.entries.clear();
                    }
                    self.entries.insert(subject.into(), result.clone());
                    result
                }
            };
            self.last_subject.clear();
            self.last_subject.extend_from_slice(subject);
            self.last = Some(result);
        }
        match &self.last {
            Some(r) => r,
            None => unreachable!("set above"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::subject;

    fn names(result: &MatchResult<String>) -> Vec<String> {
        let mut v: Vec<String> = result.plain.iter().map(|s| s.to_string()).collect();
        v.sort();
        v
    }

    #[test]
    fn literal_and_wildcards() {
        let list = Sublist::new();
        for s in ["foo.bar", "foo.*", "foo.>", ">", "*.bar", "foo", "foo.bar.baz"] {
            list.insert(s.as_bytes(), None, Arc::new(s.to_string())).unwrap();
        }
        assert_eq!(names(&list.matches(b"foo.bar")), ["*.bar", ">", "foo.*", "foo.>", "foo.bar"]);
        assert_eq!(names(&list.matches(b"foo")), [">", "foo"]);
        assert_eq!(names(&list.matches(b"foo.bar.baz")), [">", "foo.>", "foo.bar.baz"]);
        assert_eq!(names(&list.matches(b"x.y")), [">"]);
    }

    #[test]
    fn queue_groups_are_apart() {
        let list = Sublist::new();
        list.insert(b"q.*", Some(b"g1"), Arc::new("a".to_string())).unwrap();
        list.insert(b"q.x", Some(b"g1"), Arc::new("b".to_string())).unwrap();
        list.insert(b"q.x", Some(b"g2"), Arc::new("c".to_string())).unwrap();
        let r = list.matches(b"q.x");
        assert!(r.plain.is_empty());
        let mut groups: Vec<(String, usize)> =
            r.groups.iter().map(|(n, m)| (String::from_utf8_lossy(n).into(), m.len())).collect();
        groups.sort();
        assert_eq!(groups, [("g1".to_string(), 2), ("g2".to_string(), 1)]);
    }

    #[test]
    fn remove_prunes_and_bumps_generation() {
        let list = Sublist::new();
        let a = Arc::new("a".to_string());
        let b = Arc::new("b".to_string());
        list.insert(b"foo.*", None, a.clone()).unwrap();
        list.insert(b"foo.*", None, b.clone()).unwrap();
        let g = list.generation();
        assert!(list.remove(b"foo.*", None, &a));
        assert!(!list.remove(b"foo.*", None, &a));
        assert!(list.generation() > g);
        assert_eq!(names(&list.matches(b"foo.x")), ["b"]);
        assert!(list.remove(b"foo.*", None, &b));
        assert!(list.root.read().is_empty());
        assert_eq!(list.len(), 0);
    }

    #[test]
    fn rejects_invalid() {
        let list: Sublist<String> = Sublist::new();
        assert_eq!(list.insert(b"foo..bar", None, Arc::new(String::new())), Err(InvalidSubject));
        assert_eq!(list.insert(b"foo.>.bar", None, Arc::new(String::new())), Err(InvalidSubject));
    }

    #[test]
    fn cache_sees_changes() {
        let list = Sublist::new();
        let mut cache = MatchCache::new(4);
        assert!(cache.get(&list, b"a.b").is_empty());
        list.insert(b"a.*", None, Arc::new("x".to_string())).unwrap();
        assert_eq!(cache.get(&list, b"a.b").plain.len(), 1);
        for i in 0..10 {
            cache.get(&list, format!("a.{i}").as_bytes());
        }
        assert!(cache.entries.len() <= 4);
    }

    /// The trie agrees with the one-pattern matcher on a grid of subjects.
    #[test]
    fn agrees_with_pattern_matcher() {
        let patterns = ["a", "a.b", "a.*", "*.b", "a.>", ">", "*.*", "a.b.c", "*.b.>", "a.*.c"];
        let subjects = ["a", "b", "a.b", "a.c", "x.b", "a.b.c", "a.x.c", "a.b.c.d", "z.z.z"];
        let list = Sublist::new();
        for p in patterns {
            list.insert(p.as_bytes(), None, Arc::new(p.to_string())).unwrap();
        }
        for s in subjects {
            let mut want: Vec<String> = patterns
                .iter()
                .filter(|p| subject::matches(p.as_bytes(), s.as_bytes()))
                .map(|p| p.to_string())
                .collect();
            want.sort();
            assert_eq!(names(&list.matches(s.as_bytes())), want, "subject {s}");
        }
    }
}
