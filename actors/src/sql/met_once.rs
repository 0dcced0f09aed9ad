//! Keys met once, for the caches that keep only what comes back (`plans`, `answers`): a
//! statement sent once costs its key's hash, not an entry that is never read.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};

/// Hashes of the keys met once, true for those never to keep. Emptied when it holds its
/// limit; a collision only keeps an entry early.
#[derive(Default)]
pub(super) struct MetOnce {
    hashes: HashMap<u64, bool>,
}

impl MetOnce {
    /// Whether `key` was met before and not refused; records it (as refused if `refuse`),
    /// first emptying what it holds if that is `limit` keys already.
    pub fn met_before(&mut self, key: &impl Hash, refuse: bool, limit: usize) -> bool {
        let mut h = DefaultHasher::new();
        key.hash(&mut h);
        let hash = h.finish();
        if let Some(refused) = self.hashes.get_mut(&hash) {
            *refused |= refuse;
            return !*refused;
        }
        if self.hashes.len() >= limit {
            self.hashes.clear();
        }
        self.hashes.insert(hash, refuse);
        false
    }

    /// Keys held (tests of the bound).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.hashes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn met_the_second_time_unless_refused_and_forgotten_at_the_limit() {
        let mut m = MetOnce::default();
        assert!(!m.met_before(&"a", false, 2));
        assert!(m.met_before(&"a", false, 2));
        assert!(!m.met_before(&"b", true, 2));
        assert!(!m.met_before(&"b", false, 2), "refused stays refused");
        // Full at two keys: the third empties it first.
        assert!(!m.met_before(&"c", false, 2));
        assert!(!m.met_before(&"a", false, 2), "forgotten");
    }
}
