//! An exact model of what a kv store must hold, kept by a client from the replies it saw.
//!
//! The fault-injection oracle and tests use it: every reply is checked against the model when
//! it arrives (a reply that contradicts it is a *wrong reply*), and at the end the state read
//! back through the service is compared with it key by key. A call that failed in a way that
//! leaves its effect unknown (`CallError::did_not_run` is false) makes its key *uncertain*:
//! either outcome is accepted for it from then on.

use std::collections::{BTreeMap, BTreeSet};

/// The model.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KvModel {
    expected: BTreeMap<Vec<u8>, Vec<u8>>,
    uncertain: BTreeSet<Vec<u8>>,
}

/// How the state read back differs from the model.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Divergence {
    /// Keys the model has and the store does not.
    pub missing: Vec<Vec<u8>>,
    /// Keys the store has and the model does not.
    pub extra: Vec<Vec<u8>>,
    /// Keys whose values differ.
    pub wrong: Vec<Vec<u8>>,
}

impl Divergence {
    /// No difference.
    pub fn is_empty(&self) -> bool {
        self.missing.is_empty() && self.extra.is_empty() && self.wrong.is_empty()
    }
    /// Keys that differ in any way.
    pub fn len(&self) -> usize {
        self.missing.len() + self.extra.len() + self.wrong.len()
    }
    /// One line naming the first differences.
    pub fn summary(&self) -> String {
        let show = |v: &[Vec<u8>]| {
            v.iter()
                .take(3)
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        };
        format!(
            "{} missing [{}], {} extra [{}], {} wrong [{}]",
            self.missing.len(),
            show(&self.missing),
            self.extra.len(),
            show(&self.extra),
            self.wrong.len(),
            show(&self.wrong)
        )
    }
}

impl KvModel {
    /// An empty model.
    pub fn new() -> KvModel {
        KvModel::default()
    }

    /// What `key` must hold: `Some(None)` absent, `Some(Some(v))` the value, `None` unknown.
    pub fn expect(&self, key: &[u8]) -> Option<Option<&[u8]>> {
        if self.uncertain.contains(key) {
            return None;
        }
        Some(self.expected.get(key).map(Vec::as_slice))
    }

    /// Whether a reply carrying `got` as the current value of `key` agrees with the model.
    pub fn agrees(&self, key: &[u8], got: Option<&[u8]>) -> bool {
        self.expect(key).is_none_or(|e| e == got)
    }

    /// Records that `key` now holds `value` (`None`: absent), and is known again.
    pub fn set(&mut self, key: &[u8], value: Option<&[u8]>) {
        self.uncertain.remove(key);
        match value {
            Some(v) => {
                self.expected.insert(key.to_vec(), v.to_vec());
            }
            None => {
                self.expected.remove(key);
            }
        }
    }

    /// The counter under `key` as the model knows it (absent: 0); `None` if unknown or not a
    /// counter.
    pub fn counter(&self, key: &[u8]) -> Option<i64> {
        match self.expect(key)? {
            None => Some(0),
            Some(v) => crate::counter_value(v),
        }
    }

    /// Forgets what `key` holds: a call on it failed with an unknown effect.
    pub fn make_uncertain(&mut self, key: &[u8]) {
        self.uncertain.insert(key.to_vec());
    }

    /// Keys whose value is unknown.
    pub fn uncertain(&self) -> impl Iterator<Item = &[u8]> {
        self.uncertain.iter().map(Vec::as_slice)
    }

    /// The known entries.
    pub fn entries(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.expected
            .iter()
            .filter(|(k, _)| !self.uncertain.contains(*k))
            .map(|(k, v)| (k.as_slice(), v.as_slice()))
    }

    /// Compares the state `state` read back with the model, over the keys `in_scope` accepts
    /// (the model is taken to cover exactly those keys).
    pub fn diff(
        &self,
        state: &BTreeMap<Vec<u8>, Vec<u8>>,
        in_scope: impl Fn(&[u8]) -> bool,
    ) -> Divergence {
        let mut d = Divergence::default();
        for (k, v) in self.entries().filter(|(k, _)| in_scope(k)) {
            match state.get(k) {
                None => d.missing.push(k.to_vec()),
                Some(got) if got.as_slice() == v => {}
                Some(_) => d.wrong.push(k.to_vec()),
            }
        }
        for k in state.keys().filter(|k| in_scope(k)) {
            if !self.expected.contains_key(k) && !self.uncertain.contains(k) {
                d.extra.push(k.clone());
            }
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_and_uncertain() {
        let mut m = KvModel::new();
        m.set(b"a", Some(b"1"));
        m.set(b"c", Some(&5i64.to_le_bytes()));
        assert!(m.agrees(b"a", Some(b"1")));
        assert!(!m.agrees(b"a", None));
        assert_eq!(m.counter(b"c"), Some(5));
        assert_eq!(m.counter(b"z"), Some(0));
        let mut state = BTreeMap::new();
        state.insert(b"a".to_vec(), b"1".to_vec());
        state.insert(b"c".to_vec(), 5i64.to_le_bytes().to_vec());
        assert!(m.diff(&state, |_| true).is_empty());
        state.insert(b"x".to_vec(), b"?".to_vec());
        state.insert(b"a".to_vec(), b"2".to_vec());
        state.remove(b"c".as_slice());
        let d = m.diff(&state, |_| true);
        assert_eq!((d.missing.len(), d.extra.len(), d.wrong.len()), (1, 1, 1));
        assert!(m.diff(&state, |k| k.starts_with(b"q")).is_empty());
        m.make_uncertain(b"a");
        m.make_uncertain(b"x");
        m.make_uncertain(b"c");
        assert!(m.diff(&state, |_| true).is_empty());
        assert!(m.agrees(b"a", Some(b"anything")));
    }
}
