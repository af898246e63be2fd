//! The in-memory inversion cache: inversions by id, bounded in bytes. An id is a digest
//! of what makes an inversion: the model (its hash and the weight precision), the
//! inversion steps and the preprocessed image, so a style many requests share is
//! inverted once, and the same image always gets the same id.
//!
//! Eviction is a segmented LRU: a new entry is on probation; one used again (or kept on
//! purpose, as `/v1/invert` does) is protected, up to 80% of the bytes. The least
//! recently used entry on probation goes first, so a stream of one-off inversions (every
//! request's own content) cannot push out the styles that many requests share.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};

use sha2::{Digest, Sha256};

use crate::diffusion::method::Inversion;

/// Hex characters of an id (128 bits of SHA-256).
pub const ID_LEN: usize = 32;

/// SHA-256 of an image in model space (the f32 values' bytes, little-endian).
pub fn image_digest(x0: &[f32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"diffstyle-image-v1");
    for v in x0 {
        h.update(v.to_le_bytes());
    }
    h.finalize().into()
}

/// The id of the inversion of the image with `digest` by `inv_steps` steps under the
/// model identified by `model_key` (hash and precision).
pub fn inversion_id(model_key: &str, inv_steps: usize, digest: &[u8; 32]) -> String {
    let mut h = Sha256::new();
    h.update(b"diffstyle-inversion-v1");
    h.update((model_key.len() as u64).to_le_bytes());
    h.update(model_key.as_bytes());
    h.update((inv_steps as u64).to_le_bytes());
    h.update(digest);
    let d: [u8; 32] = h.finalize().into();
    d.iter().take(ID_LEN / 2).map(|b| format!("{b:02x}")).collect()
}

/// Whether `id` has the form of an inversion id (it may still be unknown).
pub fn is_id(id: &str) -> bool {
    id.len() == ID_LEN && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// What an inversion occupies in the cache.
pub fn inversion_bytes(inv: &Inversion) -> usize {
    4 * (inv.x0.len() + inv.x_t.len() + inv.h.len()) + 8 * inv.keys.len()
}

/// Counters and occupancy, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
    pub entries: usize,
    pub bytes: usize,
    pub capacity: usize,
}

/// The protected segment's share of the capacity, percent.
const PROTECTED_PERCENT: usize = 80;

struct Entry {
    inv: Arc<Inversion>,
    bytes: usize,
    /// When it was last placed in its segment (the key in that segment's order).
    tick: u64,
    protected: bool,
}

#[derive(Default)]
struct Lru {
    map: HashMap<String, Entry>,
    /// tick -> id per segment, oldest first.
    probation: BTreeMap<u64, String>,
    protected: BTreeMap<u64, String>,
    clock: u64,
    bytes: usize,
    protected_bytes: usize,
}

impl Lru {
    /// Moves `id` to the most recent end of the protected (or probation) segment.
    fn place(&mut self, id: &str, protect: bool) -> Option<Arc<Inversion>> {
        self.clock += 1;
        let now = self.clock;
        let e = self.map.get_mut(id)?;
        let (old, was) = (e.tick, e.protected);
        (e.tick, e.protected) = (now, protect);
        let (inv, bytes) = (e.inv.clone(), e.bytes);
        if was { &mut self.protected } else { &mut self.probation }.remove(&old);
        if protect { &mut self.protected } else { &mut self.probation }.insert(now, id.to_string());
        match (was, protect) {
            (false, true) => self.protected_bytes += bytes,
            (true, false) => self.protected_bytes -= bytes,
            _ => {}
        }
        Some(inv)
    }

    /// Demotes the oldest protected entries while the segment is over its share.
    fn balance(&mut self, capacity: usize) {
        while self.protected_bytes > capacity / 100 * PROTECTED_PERCENT {
            let Some((_, id)) = self.protected.first_key_value().map(|(t, id)| (*t, id.clone())) else { break };
            self.place(&id, false);
        }
    }

    /// Removes the entry to evict next; false when empty.
    fn evict_one(&mut self) -> bool {
        let Some((_, id)) = self.probation.pop_first().or_else(|| self.protected.pop_first()) else { return false };
        if let Some(e) = self.map.remove(&id) {
            self.bytes -= e.bytes;
            if e.protected {
                self.protected_bytes -= e.bytes;
            }
        }
        true
    }
}

/// Thread-safe; lookups and inserts take a short lock.
pub struct InversionCache {
    capacity: usize,
    lru: Mutex<Lru>,
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
}

impl InversionCache {
    /// A cache of at most `capacity` bytes (0 keeps nothing).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            lru: Mutex::default(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Lru> {
        // The map stays consistent between statements, so a panic elsewhere while the
        // lock was held leaves nothing half-done.
        self.lru.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The inversion stored under `id` (now protected: it was used again); counts a
    /// hit or a miss.
    pub fn get(&self, id: &str) -> Option<Arc<Inversion>> {
        let mut l = self.lock();
        let got = l.place(id, true);
        l.balance(self.capacity);
        let counter = if got.is_some() { &self.hits } else { &self.misses };
        counter.fetch_add(1, Relaxed);
        got
    }

    /// Protects `id` as if it had been used again, without counting a lookup; false
    /// when it is not held.
    pub fn keep(&self, id: &str) -> bool {
        let mut l = self.lock();
        let held = l.place(id, true).is_some();
        l.balance(self.capacity);
        held
    }

    /// Stores `inv` under `id` on probation, evicting to make room. Returns false (and
    /// stores nothing) when it is larger than the whole cache.
    pub fn insert(&self, id: &str, inv: Arc<Inversion>) -> bool {
        let size = inversion_bytes(&inv);
        if size > self.capacity {
            return false;
        }
        let mut l = self.lock();
        if l.map.contains_key(id) {
            return true;
        }
        while l.bytes + size > self.capacity && l.evict_one() {
            self.evictions.fetch_add(1, Relaxed);
        }
        l.clock += 1;
        let now = l.clock;
        l.probation.insert(now, id.to_string());
        l.map.insert(id.to_string(), Entry { inv, bytes: size, tick: now, protected: false });
        l.bytes += size;
        true
    }

    pub fn stats(&self) -> CacheStats {
        let l = self.lock();
        CacheStats {
            hits: self.hits.load(Relaxed),
            misses: self.misses.load(Relaxed),
            evictions: self.evictions.load(Relaxed),
            entries: l.map.len(),
            bytes: l.bytes,
            capacity: self.capacity,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inv(v: f32) -> Arc<Inversion> {
        // 4 * (2 + 2 + 4) + 8 * 1 = 40 bytes.
        Arc::new(Inversion { x0: vec![v; 2], x_t: vec![v; 2], keys: vec![0], h: vec![v; 4] })
    }

    #[test]
    fn one_off_entries_go_first_and_bytes_stay_bounded() {
        // Room for 5 entries of 40 bytes; 4 of them (160 bytes) may be protected.
        let c = InversionCache::new(200);
        for id in ["a", "b", "c"] {
            assert!(c.insert(id, inv(1.0)));
        }
        assert!(c.get("a").is_some()); // a: used again, protected
        for id in ["d", "e", "f"] {
            assert!(c.insert(id, inv(2.0)));
        }
        // f pushed out b, the oldest on probation, not a (older, but protected).
        assert!(c.get("b").is_none());
        assert!(c.get("a").is_some());
        // A stream of one-off entries never reaches the protected one.
        for k in 0..20 {
            assert!(c.insert(&format!("x{k}"), inv(3.0)));
        }
        assert!(c.get("a").is_some());
        assert!(c.get("c").is_none());
        let s = c.stats();
        assert_eq!((s.hits, s.misses, s.entries, s.bytes), (3, 2, 5, 200));
        assert_eq!(s.evictions, 26 - 5); // 26 inserted, 5 held
        assert!(!InversionCache::new(39).insert("x", inv(0.0)), "larger than the cache");
        assert!(!InversionCache::new(0).insert("x", inv(0.0)));
    }

    #[test]
    fn the_protected_segment_keeps_to_its_share_and_lru_order() {
        let c = InversionCache::new(200);
        for id in ["a", "b", "c", "d", "e"] {
            assert!(c.insert(id, inv(1.0)));
            assert!(c.keep(id));
        }
        assert!(!c.keep("zz"));
        // Only 4 fit in the protected 160 bytes: a, the oldest, was demoted to
        // probation, so a new entry evicts it first.
        assert!(c.insert("f", inv(2.0)));
        assert!(c.get("a").is_none());
        for id in ["b", "c", "d", "e", "f"] {
            assert!(c.get(id).is_some(), "{id}");
        }
        assert_eq!(c.stats().bytes, 200);
    }

    #[test]
    fn ids_depend_on_model_steps_and_pixels() {
        let d = image_digest(&[0.5, -1.0]);
        let id = inversion_id("m-f32", 50, &d);
        assert!(is_id(&id), "{id}");
        assert_eq!(id, inversion_id("m-f32", 50, &image_digest(&[0.5, -1.0])));
        assert_ne!(id, inversion_id("m-bf16", 50, &d));
        assert_ne!(id, inversion_id("m-f32", 20, &d));
        assert_ne!(id, inversion_id("m-f32", 50, &image_digest(&[0.5, -0.999])));
        assert!(!is_id("ABC") && !is_id(&id.to_uppercase()) && !is_id(&format!("{id}0")));
    }
}
