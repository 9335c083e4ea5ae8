//! The embedded, in-process store.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::{check_key, Error, SessionStore, DEFAULT_KEY_PREFIX, MAX_TTL};

/// The most shards a store is split into (fewer when `max_entries` is smaller).
const MAX_SHARDS: usize = 16;

/// How many expired entries a write removes, at most, from its shard on the side:
/// the amortized sweep that keeps expired entries from lingering in busy shards.
const SWEEP_PER_WRITE: usize = 4;

/// An in-process session store with TTLs and a bound on its number of entries.
///
/// * **Expiry**: an expired entry is never returned; it is removed when read
///   (lazily), by a small sweep that every write does on its shard (amortized), by
///   [`purge_expired`](Self::purge_expired), and first of all when room is needed.
/// * **Bound**: the store never holds more than `max_entries` entries. When a new key
///   needs room, the entry that expires soonest is evicted: an expired one if there
///   is any, else the one closest to its end (for sessions whose TTL slides on each
///   use, that is the least recently used one), like Redis's `volatile-ttl` policy.
/// * **Concurrency**: entries are split over up to 16 shards, each behind its own
///   mutex, which is held only for the few map operations of one call and never
///   across an `await`.
///
/// Time comes from [`tokio::time::Instant`], so tests can drive TTLs with Tokio's
/// paused clock; outside a Tokio runtime it is the system's monotonic clock.
pub struct MemoryStore {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    prefix: String,
    max_entries: usize,
}

impl MemoryStore {
    /// The default bound on the number of entries.
    pub const DEFAULT_MAX_ENTRIES: usize = 100_000;

    /// A store holding at most `max_entries` entries (at least 1), reporting
    /// `key_prefix` as its prefix.
    ///
    /// The prefix only matters to a store shared between processes; the memory store
    /// keeps it for [`SessionStore::key_prefix`] and stores logical keys as they are.
    pub fn new(max_entries: usize, key_prefix: impl Into<String>) -> Self {
        let max_entries = max_entries.max(1);
        let shard_count = max_entries.min(MAX_SHARDS);
        let base = max_entries / shard_count;
        let extra = max_entries % shard_count;
        let shards = (0..shard_count)
            .map(|i| Mutex::new(Shard::new(base + usize::from(i < extra))))
            .collect();
        MemoryStore {
            shards,
            hasher: RandomState::new(),
            prefix: key_prefix.into(),
            max_entries,
        }
    }

    /// The bound on the number of entries.
    pub fn max_entries(&self) -> usize {
        self.max_entries
    }

    /// The number of entries held, including expired ones not yet removed.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().map.len()).sum()
    }

    /// Whether the store holds no entry at all (not even an expired one).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes every expired entry now and returns how many were removed.
    ///
    /// Not needed for correctness or for the bound; a gateway may call it from a
    /// periodic task to give memory back sooner after a burst.
    pub fn purge_expired(&self) -> usize {
        let now = Instant::now();
        self.shards
            .iter()
            .map(|s| s.lock().sweep(now, usize::MAX))
            .sum()
    }

    fn shard(&self, key: &str) -> &Mutex<Shard> {
        // The shard count is at most 16, so the cast cannot lose meaningful bits.
        let index = (self.hasher.hash_one(key) % self.shards.len() as u64) as usize;
        &self.shards[index]
    }
}

impl Default for MemoryStore {
    /// A store bounded to [`DEFAULT_MAX_ENTRIES`](Self::DEFAULT_MAX_ENTRIES) entries
    /// with the default key prefix.
    fn default() -> Self {
        MemoryStore::new(Self::DEFAULT_MAX_ENTRIES, DEFAULT_KEY_PREFIX)
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("max_entries", &self.max_entries)
            .field("shards", &self.shards.len())
            .field("key_prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// When an entry stops being valid, given its TTL from `now`.
fn deadline(now: Instant, ttl: Duration) -> Instant {
    let ttl = ttl.min(MAX_TTL);
    now.checked_add(ttl)
        .or_else(|| now.checked_add(Duration::from_secs(365 * 24 * 3600)))
        .unwrap_or(now)
}

#[async_trait]
impl SessionStore for MemoryStore {
    async fn get_raw(&self, key: &str) -> Result<Option<String>, Error> {
        check_key(key)?;
        let now = Instant::now();
        let mut shard = self.shard(key).lock();
        Ok(shard.get_live(key, now).map(|e| e.value.clone()))
    }

    async fn set_raw(&self, key: &str, value: &str, ttl: Duration) -> Result<(), Error> {
        check_key(key)?;
        let now = Instant::now();
        let mut shard = self.shard(key).lock();
        shard.sweep(now, SWEEP_PER_WRITE);
        if ttl.is_zero() {
            shard.remove(key);
        } else {
            shard.insert(key, value.to_owned(), deadline(now, ttl));
        }
        Ok(())
    }

    async fn touch(&self, key: &str, ttl: Duration) -> Result<bool, Error> {
        check_key(key)?;
        let now = Instant::now();
        let mut shard = self.shard(key).lock();
        shard.sweep(now, SWEEP_PER_WRITE);
        if shard.get_live(key, now).is_none() {
            return Ok(false);
        }
        if ttl.is_zero() {
            shard.remove(key);
        } else {
            shard.retime(key, deadline(now, ttl));
        }
        Ok(true)
    }

    async fn delete(&self, key: &str) -> Result<bool, Error> {
        check_key(key)?;
        let now = Instant::now();
        let mut shard = self.shard(key).lock();
        Ok(shard
            .remove(key)
            .is_some_and(|entry| entry.expires_at > now))
    }

    fn kind(&self) -> &'static str {
        "memory"
    }

    fn key_prefix(&self) -> &str {
        &self.prefix
    }
}

struct Entry {
    value: String,
    expires_at: Instant,
    /// Disambiguates entries with the same deadline in the expiry index.
    seq: u64,
}

/// One shard: the entries, and an index of them ordered by deadline.
struct Shard {
    map: HashMap<Arc<str>, Entry>,
    by_deadline: BTreeMap<(Instant, u64), Arc<str>>,
    capacity: usize,
    next_seq: u64,
}

impl Shard {
    fn new(capacity: usize) -> Self {
        Shard {
            map: HashMap::new(),
            by_deadline: BTreeMap::new(),
            capacity: capacity.max(1),
            next_seq: 0,
        }
    }

    fn seq(&mut self) -> u64 {
        self.next_seq = self.next_seq.wrapping_add(1);
        self.next_seq
    }

    /// The live entry at `key`; an expired one is removed and not returned.
    fn get_live(&mut self, key: &str, now: Instant) -> Option<&Entry> {
        let expired = self.map.get(key)?.expires_at <= now;
        if expired {
            self.remove(key);
            return None;
        }
        self.map.get(key)
    }

    fn remove(&mut self, key: &str) -> Option<Entry> {
        let entry = self.map.remove(key)?;
        self.by_deadline.remove(&(entry.expires_at, entry.seq));
        Some(entry)
    }

    /// Inserts or replaces `key`, evicting the soonest-expiring entry if the shard
    /// is full and `key` is new.
    fn insert(&mut self, key: &str, value: String, expires_at: Instant) {
        let seq = self.seq();
        if let Some(entry) = self.map.get_mut(key) {
            let old = (entry.expires_at, entry.seq);
            entry.value = value;
            entry.expires_at = expires_at;
            entry.seq = seq;
            if let Some(k) = self.by_deadline.remove(&old) {
                self.by_deadline.insert((expires_at, seq), k);
            }
            return;
        }
        while self.map.len() >= self.capacity {
            let Some((_, victim)) = self.by_deadline.pop_first() else {
                break;
            };
            self.map.remove(&victim);
        }
        let key: Arc<str> = Arc::from(key);
        self.by_deadline.insert((expires_at, seq), Arc::clone(&key));
        self.map.insert(
            key,
            Entry {
                value,
                expires_at,
                seq,
            },
        );
    }

    /// Gives the existing `key` a new deadline.
    fn retime(&mut self, key: &str, expires_at: Instant) {
        let seq = self.seq();
        if let Some(entry) = self.map.get_mut(key) {
            let old = (entry.expires_at, entry.seq);
            entry.expires_at = expires_at;
            entry.seq = seq;
            if let Some(k) = self.by_deadline.remove(&old) {
                self.by_deadline.insert((expires_at, seq), k);
            }
        }
    }

    /// Removes up to `limit` expired entries, soonest deadline first.
    fn sweep(&mut self, now: Instant, limit: usize) -> usize {
        let mut removed = 0;
        while removed < limit {
            match self.by_deadline.first_key_value() {
                Some(((deadline, _), _)) if *deadline <= now => {}
                _ => break,
            }
            if let Some((_, key)) = self.by_deadline.pop_first() {
                self.map.remove(&key);
                removed += 1;
            }
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tokio::time::advance;

    const MIN: Duration = Duration::from_secs(60);

    #[tokio::test(start_paused = true)]
    async fn set_get_delete() {
        let store = MemoryStore::default();
        assert_eq!(store.get("session:a").await.unwrap(), None);
        store
            .set("session:a", &json!({"user": "ada", "n": 1}), MIN)
            .await
            .unwrap();
        assert_eq!(
            store.get("session:a").await.unwrap(),
            Some(json!({"user": "ada", "n": 1}))
        );
        // Replacing keeps one entry.
        store.set("session:a", &json!(2), MIN).await.unwrap();
        assert_eq!(store.get("session:a").await.unwrap(), Some(json!(2)));
        assert_eq!(store.len(), 1);
        assert!(store.delete("session:a").await.unwrap());
        assert!(!store.delete("session:a").await.unwrap());
        assert_eq!(store.get("session:a").await.unwrap(), None);
        assert!(store.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn raw_values_and_json_errors() {
        let store = MemoryStore::default();
        store
            .set_raw("affinity:api:s1", "backend-3", MIN)
            .await
            .unwrap();
        assert_eq!(
            store.get_raw("affinity:api:s1").await.unwrap().as_deref(),
            Some("backend-3")
        );
        // Not JSON: `get` reports it instead of panicking.
        assert!(matches!(
            store.get("affinity:api:s1").await,
            Err(Error::Serde(_))
        ));
        // JSON values are stored as their text.
        store.set("k", &json!({"a": [1, 2]}), MIN).await.unwrap();
        assert_eq!(
            store.get_raw("k").await.unwrap().as_deref(),
            Some(r#"{"a":[1,2]}"#)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn ttl_expiry_is_lazy_on_read() {
        let store = MemoryStore::default();
        store
            .set_raw("k", "v", Duration::from_secs(10))
            .await
            .unwrap();
        advance(Duration::from_millis(9_999)).await;
        assert_eq!(store.get_raw("k").await.unwrap().as_deref(), Some("v"));
        advance(Duration::from_millis(1)).await;
        assert_eq!(store.get_raw("k").await.unwrap(), None);
        // Reading removed it.
        assert!(store.is_empty());
        assert!(!store.touch("k", MIN).await.unwrap());
        assert!(!store.delete("k").await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn touch_slides_the_ttl() {
        let store = MemoryStore::default();
        store
            .set_raw("k", "v", Duration::from_secs(10))
            .await
            .unwrap();
        for _ in 0..5 {
            advance(Duration::from_secs(8)).await;
            assert!(store.touch("k", Duration::from_secs(10)).await.unwrap());
        }
        // 40 s after the set, still alive thanks to the touches.
        assert_eq!(store.get_raw("k").await.unwrap().as_deref(), Some("v"));
        advance(Duration::from_secs(10)).await;
        assert_eq!(store.get_raw("k").await.unwrap(), None);
        assert!(!store.touch("k", Duration::from_secs(10)).await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn zero_ttl_deletes() {
        let store = MemoryStore::default();
        store.set_raw("k", "v", MIN).await.unwrap();
        store.set_raw("k", "v", Duration::ZERO).await.unwrap();
        assert_eq!(store.get_raw("k").await.unwrap(), None);
        store.set_raw("k", "v", MIN).await.unwrap();
        assert!(store.touch("k", Duration::ZERO).await.unwrap());
        assert_eq!(store.get_raw("k").await.unwrap(), None);
        assert!(store.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn huge_ttl_does_not_overflow() {
        let store = MemoryStore::default();
        store.set_raw("k", "v", Duration::MAX).await.unwrap();
        assert!(store.touch("k", Duration::MAX).await.unwrap());
        advance(Duration::from_secs(365 * 24 * 3600)).await;
        assert_eq!(store.get_raw("k").await.unwrap().as_deref(), Some("v"));
    }

    #[tokio::test(start_paused = true)]
    async fn invalid_keys_are_rejected() {
        let store = MemoryStore::default();
        let long = "k".repeat(crate::MAX_KEY_BYTES + 1);
        assert!(matches!(
            store.set_raw(&long, "v", MIN).await,
            Err(Error::InvalidKey(_))
        ));
        assert!(matches!(store.get_raw("").await, Err(Error::InvalidKey(_))));
        assert!(store.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn purge_and_amortized_sweep_remove_expired_entries() {
        let store = MemoryStore::new(10_000, "p:");
        for i in 0..1000 {
            store
                .set_raw(&format!("short:{i}"), "v", Duration::from_secs(1))
                .await
                .unwrap();
        }
        advance(Duration::from_secs(2)).await;
        assert_eq!(store.len(), 1000);
        // Writes sweep a few expired entries of their shard each.
        for i in 0..100 {
            store.set_raw(&format!("long:{i}"), "v", MIN).await.unwrap();
        }
        let after_writes = store.len();
        assert!(after_writes < 1000, "{after_writes}");
        let purged = store.purge_expired();
        assert_eq!(store.len(), 100);
        assert_eq!(after_writes - purged, 100);
    }

    #[tokio::test(start_paused = true)]
    async fn flood_of_new_sessions_stays_bounded() {
        let max = 1_000;
        let store = MemoryStore::new(max, "p:");
        for i in 0..50_000 {
            let key = crate::session_key(&format!("flood-{i}"));
            store.set_raw(&key, "{}", MIN).await.unwrap();
            assert!(store.len() <= max);
            // Clock moves on, so later sessions expire later.
            if i % 100 == 0 {
                advance(Duration::from_millis(1)).await;
            }
        }
        assert!(store.len() <= max);
        assert!(store.len() > max / 2, "{}", store.len());
        // The newest session is there; the oldest were evicted.
        let newest = crate::session_key("flood-49999");
        assert!(store.get_raw(&newest).await.unwrap().is_some());
        let oldest = crate::session_key("flood-0");
        assert!(store.get_raw(&oldest).await.unwrap().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn eviction_takes_expired_entries_first_then_soonest_to_expire() {
        // One shard, so the order is exact.
        let store = MemoryStore::new(4, "p:");
        assert_eq!(store.shards.len(), 4);
        let store = MemoryStore {
            shards: vec![Mutex::new(Shard::new(4))].into_boxed_slice(),
            ..store
        };
        store.set_raw("long1", "v", 10 * MIN).await.unwrap();
        store
            .set_raw("short", "v", Duration::from_secs(1))
            .await
            .unwrap();
        store.set_raw("long2", "v", 10 * MIN).await.unwrap();
        store.set_raw("mid", "v", 5 * MIN).await.unwrap();
        advance(Duration::from_secs(2)).await;
        // "short" has expired: it makes room first.
        store.set_raw("new1", "v", 10 * MIN).await.unwrap();
        assert_eq!(store.len(), 4);
        assert!(store.get_raw("short").await.unwrap().is_none());
        // Then the entry that expires soonest ("mid"), even though it is the newest
        // of the older ones.
        store.set_raw("new2", "v", 10 * MIN).await.unwrap();
        assert_eq!(store.len(), 4);
        assert!(store.get_raw("mid").await.unwrap().is_none());
        // Touching "long1" saves it; "long2" goes next.
        advance(Duration::from_secs(1)).await;
        assert!(store.touch("long1", 10 * MIN).await.unwrap());
        store.set_raw("new3", "v", 10 * MIN).await.unwrap();
        assert!(store.get_raw("long2").await.unwrap().is_none());
        for k in ["long1", "new1", "new2", "new3"] {
            assert!(store.get_raw(k).await.unwrap().is_some(), "{k}");
        }
    }

    #[test]
    fn shards_split_the_bound_exactly() {
        for max in [1, 2, 15, 16, 17, 1000, 100_001] {
            let store = MemoryStore::new(max, "p:");
            let total: usize = store.shards.iter().map(|s| s.lock().capacity).sum();
            assert_eq!(total, max);
        }
        assert_eq!(MemoryStore::new(0, "p:").max_entries(), 1);
    }

    #[test]
    fn usable_from_a_plain_current_thread_runtime() {
        // No paused clock, no time driver: the store needs neither.
        let store = Arc::new(MemoryStore::default());
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            store.set_raw("k", "v", MIN).await.unwrap();
            assert_eq!(store.get_raw("k").await.unwrap().as_deref(), Some("v"));
        });
        assert_eq!(store.len(), 1);
        assert_eq!(store.kind(), "memory");
        assert_eq!(store.key_prefix(), DEFAULT_KEY_PREFIX);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_use() {
        let store = Arc::new(MemoryStore::new(500, "p:"));
        let mut tasks = Vec::new();
        for t in 0..8 {
            let store = Arc::clone(&store);
            tasks.push(tokio::spawn(async move {
                for i in 0..2_000 {
                    let key = format!("t{t}:{i}");
                    store.set_raw(&key, "v", MIN).await.unwrap();
                    let _ = store.get_raw(&key).await.unwrap();
                    let _ = store.touch(&key, MIN).await.unwrap();
                    if i % 3 == 0 {
                        let _ = store.delete(&key).await.unwrap();
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert!(store.len() <= 500);
    }
}
