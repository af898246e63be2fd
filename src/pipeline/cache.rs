//! The in-memory inversion cache: inversions by id, bounded in bytes, least recently
//! used evicted first. An id is a digest of what makes an inversion: the model (its
//! hash and the weight precision), the inversion steps and the preprocessed image, so a
//! style many requests share is inverted once, and the same image always gets the same id.

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

#[derive(Default)]
struct Lru {
    /// id -> (inversion, its bytes, its last use).
    map: HashMap<String, (Arc<Inversion>, usize, u64)>,
    /// last use -> id, oldest first.
    order: BTreeMap<u64, String>,
    clock: u64,
    bytes: usize,
}

impl Lru {
    fn touch(&mut self, id: &str) -> Option<Arc<Inversion>> {
        self.clock += 1;
        let now = self.clock;
        let (inv, _, used) = self.map.get_mut(id)?;
        self.order.remove(used);
        *used = now;
        self.order.insert(now, id.to_string());
        Some(inv.clone())
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

    /// The inversion stored under `id`, now the most recently used; counts a hit or a miss.
    pub fn get(&self, id: &str) -> Option<Arc<Inversion>> {
        let got = self.lock().touch(id);
        let counter = if got.is_some() { &self.hits } else { &self.misses };
        counter.fetch_add(1, Relaxed);
        got
    }

    /// Stores `inv` under `id`, evicting the least recently used entries to make room.
    /// Returns false (and stores nothing) when it is larger than the whole cache.
    pub fn insert(&self, id: &str, inv: Arc<Inversion>) -> bool {
        let size = inversion_bytes(&inv);
        if size > self.capacity {
            return false;
        }
        let mut l = self.lock();
        if l.touch(id).is_some() {
            return true;
        }
        while l.bytes + size > self.capacity {
            let Some((_, old)) = l.order.pop_first() else { break };
            if let Some((_, b, _)) = l.map.remove(&old) {
                l.bytes -= b;
                self.evictions.fetch_add(1, Relaxed);
            }
        }
        l.clock += 1;
        let now = l.clock;
        l.order.insert(now, id.to_string());
        l.map.insert(id.to_string(), (inv, size, now));
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
    fn least_recently_used_goes_first_and_bytes_stay_bounded() {
        let c = InversionCache::new(100);
        assert!(c.insert("a", inv(1.0)) && c.insert("b", inv(2.0)));
        assert_eq!(c.get("a").unwrap().x0[0], 1.0); // a is now newer than b
        assert!(c.insert("c", inv(3.0))); // 120 > 100: b goes
        assert!(c.get("b").is_none());
        assert_eq!(c.get("c").unwrap().x0[0], 3.0);
        assert_eq!(c.get("a").unwrap().x0[0], 1.0);
        let s = c.stats();
        assert_eq!((s.hits, s.misses, s.evictions, s.entries, s.bytes), (3, 1, 1, 2, 80));
        assert!(!InversionCache::new(39).insert("x", inv(0.0)), "larger than the cache");
        assert!(!InversionCache::new(0).insert("x", inv(0.0)));
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
