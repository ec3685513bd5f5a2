//! A map that remembers the order records were written in, for queues and for the quotas'
//! "oldest first" (SQLite gets the same from `seq` and `rowid` columns).

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

/// Records by key, in write order.
pub(super) struct Ordered<K, V> {
    by_seq: BTreeMap<u64, (K, V)>,
    seq_of: HashMap<K, u64>,
    next: u64,
}

impl<K, V> Default for Ordered<K, V> {
    fn default() -> Self {
        Self {
            by_seq: BTreeMap::new(),
            seq_of: HashMap::new(),
            next: 0,
        }
    }
}

impl<K: Clone + Eq + Hash, V> Ordered<K, V> {
    /// Insert, or replace keeping the record's place (SQLite's upsert).
    pub(super) fn upsert(&mut self, key: K, value: V) {
        let seq = match self.seq_of.get(&key) {
            Some(seq) => *seq,
            None => self.fresh_seq(&key),
        };
        self.by_seq.insert(seq, (key, value));
    }

    /// Insert, or replace as the newest record (SQLite's `INSERT OR REPLACE`).
    pub(super) fn replace(&mut self, key: K, value: V) {
        self.remove(&key);
        let seq = self.fresh_seq(&key);
        self.by_seq.insert(seq, (key, value));
    }

    /// Insert unless the key is present (SQLite's `INSERT OR IGNORE`).
    pub(super) fn insert_new(&mut self, key: K, value: V) {
        if !self.seq_of.contains_key(&key) {
            self.upsert(key, value);
        }
    }

    fn fresh_seq(&mut self, key: &K) -> u64 {
        self.next += 1;
        self.seq_of.insert(key.clone(), self.next);
        self.next
    }

    pub(super) fn remove(&mut self, key: &K) -> Option<V> {
        let seq = self.seq_of.remove(key)?;
        self.by_seq.remove(&seq).map(|(_, v)| v)
    }

    pub(super) fn get(&self, key: &K) -> Option<&V> {
        self.by_seq.get(self.seq_of.get(key)?).map(|(_, v)| v)
    }

    /// Records, oldest first.
    pub(super) fn values(&self) -> impl Iterator<Item = &V> {
        self.by_seq.values().map(|(_, v)| v)
    }

    /// Keys and records, oldest first.
    pub(super) fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.by_seq.values().map(|(k, v)| (k, v))
    }

    /// Forget the oldest record.
    pub(super) fn pop_oldest(&mut self) {
        if let Some((_, (key, _))) = self.by_seq.pop_first() {
            self.seq_of.remove(&key);
        }
    }

    pub(super) fn len(&self) -> usize {
        self.by_seq.len()
    }

    /// Keep at most `max` records, forgetting the oldest records of the biggest group (by
    /// `group_of`) first, down to the size of the next biggest (same as SQLite's).
    pub(super) fn keep_fair<G: Ord + Clone + std::hash::Hash>(
        &mut self,
        max: u64,
        group_of: impl Fn(&V) -> G,
    ) {
        let max = usize::try_from(max).unwrap_or(usize::MAX);
        while self.len() > max {
            let excess = self.len() - max;
            let mut sizes: HashMap<G, usize> = HashMap::new();
            for v in self.values() {
                *sizes.entry(group_of(v)).or_default() += 1;
            }
            let mut ranked: Vec<(G, usize)> = sizes.into_iter().collect();
            ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            let Some((name, n)) = ranked.first().cloned() else {
                return;
            };
            let next = ranked.get(1).map_or(0, |(_, m)| *m);
            let k = excess.min((n - next).max(1));
            let oldest: Vec<K> = self
                .iter()
                .filter(|(_, v)| group_of(v) == name)
                .take(k)
                .map(|(key, _)| key.clone())
                .collect();
            for key in oldest {
                self.remove(&key);
            }
        }
    }

    /// Keep the newest `max` of the records `matches` selects; forget the older ones.
    pub(super) fn keep_newest(&mut self, max: u64, matches: impl Fn(&K, &V) -> bool) {
        let selected: Vec<K> = self
            .iter()
            .filter(|(k, v)| matches(k, v))
            .map(|(k, _)| k.clone())
            .collect();
        let excess = (selected.len() as u64).saturating_sub(max);
        for key in selected
            .into_iter()
            .take(usize::try_from(excess).unwrap_or(0))
        {
            self.remove(&key);
        }
    }
}
