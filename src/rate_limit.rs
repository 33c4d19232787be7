//! Rate limits: a per-client and a global limit on beacons (governor, GCRA).
//!
//! Owns the decision whether a beacon from a client address may go on, made
//! after client-IP resolution and before decoding:
//!
//! - exempt clients (`rate_limit.exempt`, CIDRs) are never limited;
//! - the per-client limit (`per_client_per_second`, `per_client_burst`) is
//!   keyed by the address, IPv6 addresses by their /64 (one subscriber);
//! - the global limit (`global_per_second`, burst of one second) is checked
//!   only for beacons the per-client limit let through, so a flooding client
//!   does not use up everyone's share.
//!
//! The keyed state is bounded: it lives in [`BoundedKeyStore`], which holds
//! at most `rate_limit.max_keys` clients. Idle clients (whose state is
//! indistinguishable from a fresh one) are evicted every second by a
//! housekeeping task, and at once when the store is full. While it is full, a
//! client it does not know shares one overflow state with every other such
//! client: bounded memory first, fairness second. The key count is the
//! `beacond_rate_limit_keys` gauge.
//!
//! Must never: grow without bound, block on anything but a short shard lock,
//! or take a metric label from request data.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::ShrinkableKeyedStateStore;
use governor::state::{InMemoryState, NotKeyed, StateStore};
use governor::{Quota, RateLimiter};
use ipnet::IpNet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use crate::config::RateLimitConfig;

/// How often idle clients are evicted from the keyed state.
pub const EVICTION_INTERVAL: Duration = Duration::from_secs(1);
/// Shards of the keyed state (a lock each).
const SHARDS: usize = 16;

/// What a client is limited by: its IPv4 address, or its IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientKey {
    V4(u32),
    V6(u64),
}

impl ClientKey {
    pub fn of(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(v4) => ClientKey::V4(v4.to_bits()),
            IpAddr::V6(v6) => ClientKey::V6((v6.to_bits() >> 64) as u64),
        }
    }
}

/// Which limit refused a beacon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Limit {
    PerClient,
    Global,
}

impl Limit {
    pub const ALL: [Limit; 2] = [Limit::PerClient, Limit::Global];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::PerClient => "client",
            Limit::Global => "global",
        }
    }
}

/// A beacon over a limit, and when the client may try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimited {
    pub limit: Limit,
    pub retry_after: Duration,
}

impl RateLimited {
    /// `Retry-After` in whole seconds, at least 1.
    pub fn retry_after_secs(self) -> u64 {
        let secs = self.retry_after.as_secs() + u64::from(self.retry_after.subsec_nanos() > 0);
        secs.max(1)
    }
}

type KeyedLimiter<C> =
    RateLimiter<ClientKey, BoundedKeyStore, C, NoOpMiddleware<<C as Clock>::Instant>>;
type DirectLimiter<C> =
    RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// The per-client and global limits of one process. The clock is governor's
/// default in the service; tests drive a `FakeRelativeClock`.
pub struct ClientRateLimiter<C: Clock = DefaultClock> {
    per_client: Option<Arc<KeyedLimiter<C>>>,
    global: Option<DirectLimiter<C>>,
    exempt: Vec<IpNet>,
    max_keys: usize,
    /// Milliseconds since `started` of the last eviction run on the request
    /// path (when the store was full).
    last_inline_eviction_ms: AtomicU64,
    clock: C,
    started: C::Instant,
}

impl<C: Clock> std::fmt::Debug for ClientRateLimiter<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientRateLimiter")
            .field("per_client", &self.per_client.is_some())
            .field("global", &self.global.is_some())
            .field("exempt", &self.exempt)
            .field("max_keys", &self.max_keys)
            .finish()
    }
}

impl ClientRateLimiter {
    /// Builds the limits; `keys` and `overflow` are the metrics the keyed
    /// state keeps up to date. Call [`Self::spawn_housekeeping`] on a runtime.
    pub fn new(config: &RateLimitConfig, keys: Gauge, overflow: Counter) -> Self {
        Self::with_clock(config, keys, overflow, DefaultClock::default())
    }
}

impl<C: Clock + Clone> ClientRateLimiter<C> {
    /// [`ClientRateLimiter::new`] on the given clock.
    pub fn with_clock(config: &RateLimitConfig, keys: Gauge, overflow: Counter, clock: C) -> Self {
        let per_client = NonZeroU32::new(config.per_client_per_second).map(|rate| {
            let burst = NonZeroU32::new(config.per_client_burst).unwrap_or(rate);
            let store = BoundedKeyStore::new(config.max_keys, keys, overflow);
            Arc::new(RateLimiter::new(
                Quota::per_second(rate).allow_burst(burst),
                store,
                clock.clone(),
            ))
        });
        let global = NonZeroU32::new(config.global_per_second)
            .map(|rate| RateLimiter::direct_with_clock(Quota::per_second(rate), clock.clone()));
        let started = clock.now();
        Self {
            per_client,
            global,
            exempt: config.exempt.clone(),
            max_keys: config.max_keys,
            last_inline_eviction_ms: AtomicU64::new(0),
            clock,
            started,
        }
    }

    /// True when neither limit is on.
    pub fn is_off(&self) -> bool {
        self.per_client.is_none() && self.global.is_none()
    }

    /// Starts the task that evicts idle clients every [`EVICTION_INTERVAL`],
    /// on the current tokio runtime (none: eviction happens only when the
    /// store is full). The task ends when the limiter is dropped.
    pub fn spawn_housekeeping(&self)
    where
        C: Send + Sync + 'static,
    {
        let Some(limiter) = &self.per_client else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let weak = Arc::downgrade(limiter);
        runtime.spawn(async move {
            let mut tick = tokio::time::interval(EVICTION_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(limiter) = weak.upgrade() else {
                    return;
                };
                evict(&limiter);
            }
        });
    }

    /// Evicts idle clients now (what the housekeeping task does).
    pub fn evict_idle(&self) {
        if let Some(limiter) = &self.per_client {
            evict(limiter);
        }
    }

    /// Clients in the keyed state.
    pub fn key_count(&self) -> usize {
        self.per_client.as_ref().map_or(0, |l| l.len())
    }

    /// Whether a beacon from `ip` may go on. Takes a cell from each limit
    /// that lets it through.
    pub fn check(&self, ip: IpAddr) -> Result<(), RateLimited> {
        if self.is_off() || self.exempt.iter().any(|net| net.contains(&ip)) {
            return Ok(());
        }
        if let Some(limiter) = &self.per_client {
            if limiter.len() >= self.max_keys {
                self.evict_when_full(limiter);
            }
            limiter
                .check_key(&ClientKey::of(ip))
                .map_err(|not_until| RateLimited {
                    limit: Limit::PerClient,
                    retry_after: not_until.wait_time_from(limiter.clock().now()),
                })?;
        }
        if let Some(limiter) = &self.global {
            limiter.check().map_err(|not_until| RateLimited {
                limit: Limit::Global,
                retry_after: not_until.wait_time_from(limiter.clock().now()),
            })?;
        }
        Ok(())
    }

    /// A full store is swept at once, at most once per eviction interval, so
    /// a burst of new clients between two housekeeping ticks does not wait.
    fn evict_when_full(&self, limiter: &KeyedLimiter<C>) {
        let now_ms = self.clock.now().duration_since(self.started).as_u64() / 1_000_000;
        let last = self.last_inline_eviction_ms.load(Ordering::Relaxed);
        if now_ms.saturating_sub(last) < EVICTION_INTERVAL.as_millis() as u64 {
            return;
        }
        if self
            .last_inline_eviction_ms
            .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            limiter.retain_recent();
        }
    }
}

fn evict<C: Clock>(limiter: &KeyedLimiter<C>) {
    limiter.retain_recent();
    limiter.shrink_to_fit();
}

/// governor's keyed state, bounded: a sharded hash map of at most `max_keys`
/// clients (SipHash with a per-process key, so collisions cannot be aimed),
/// plus one overflow state shared by the clients that did not fit.
pub struct BoundedKeyStore {
    shards: Box<[Mutex<HashMap<ClientKey, Nanos>>]>,
    hasher: RandomState,
    max_keys: usize,
    /// The number of keys held: exact, and the exported gauge.
    keys: Gauge,
    overflow: Mutex<Option<Nanos>>,
    overflowed: Counter,
}

impl BoundedKeyStore {
    pub fn new(max_keys: usize, keys: Gauge, overflowed: Counter) -> Self {
        keys.set(0);
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            max_keys: max_keys.max(1),
            keys,
            overflow: Mutex::new(None),
            overflowed,
        }
    }

    fn shard(&self, key: &ClientKey) -> MutexGuard<'_, HashMap<ClientKey, Nanos>> {
        let i = (self.hasher.hash_one(key) % SHARDS as u64) as usize;
        lock(&self.shards[i])
    }

    /// Memory held by the maps' tables (an estimate from their capacity).
    pub fn table_bytes(&self) -> usize {
        let per_entry = std::mem::size_of::<(ClientKey, Nanos)>() + 1;
        self.shards
            .iter()
            .map(|s| lock(s).capacity() * per_entry)
            .sum()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while holding these locks; a poisoned map is still sound.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl StateStore for BoundedKeyStore {
    type Key = ClientKey;

    fn measure_and_replace<T, F, E>(&self, key: &ClientKey, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let mut map = self.shard(key);
        if let Some(state) = map.get_mut(key) {
            let (outcome, next) = f(Some(*state))?;
            *state = next;
            return Ok(outcome);
        }
        // A new client: take a slot, or share the overflow state.
        if self.keys.inc() >= self.max_keys as i64 {
            self.keys.dec();
            drop(map);
            self.overflowed.inc();
            let mut shared = lock(&self.overflow);
            let (outcome, next) = f(*shared)?;
            *shared = Some(next);
            return Ok(outcome);
        }
        match f(None) {
            Ok((outcome, next)) => {
                map.insert(*key, next);
                Ok(outcome)
            }
            Err(e) => {
                self.keys.dec();
                Err(e)
            }
        }
    }
}

impl ShrinkableKeyedStateStore<ClientKey> for BoundedKeyStore {
    fn retain_recent(&self, drop_below: Nanos) {
        for shard in self.shards.iter() {
            let mut map = lock(shard);
            let before = map.len();
            map.retain(|_, tat| *tat > drop_below);
            let removed = before - map.len();
            if removed > 0 {
                self.keys.dec_by(removed as i64);
            }
        }
        let mut shared = lock(&self.overflow);
        if shared.is_some_and(|tat| tat <= drop_below) {
            *shared = None;
        }
    }

    fn shrink_to_fit(&self) {
        for shard in self.shards.iter() {
            let mut map = lock(shard);
            // Give memory back after a flood, without reallocating on every tick.
            if map.capacity() > 64 && map.capacity() > 4 * map.len() {
                map.shrink_to_fit();
            }
        }
    }

    fn len(&self) -> usize {
        self.keys.get().max(0) as usize
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn config(per_client: u32, burst: u32, global: u32, max_keys: usize) -> RateLimitConfig {
        RateLimitConfig {
            global_per_second: global,
            per_client_per_second: per_client,
            per_client_burst: burst,
            max_keys,
            ..RateLimitConfig::default()
        }
    }

    /// A limiter on a fake clock: time moves only when a test advances it.
    fn limiter(
        c: &RateLimitConfig,
    ) -> (
        ClientRateLimiter<FakeRelativeClock>,
        Gauge,
        Counter,
        FakeRelativeClock,
    ) {
        let (keys, overflow, clock) = (
            Gauge::default(),
            Counter::default(),
            FakeRelativeClock::default(),
        );
        (
            ClientRateLimiter::with_clock(c, keys.clone(), overflow.clone(), clock.clone()),
            keys,
            overflow,
            clock,
        )
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn off_by_default() {
        let (l, _, _, _) = limiter(&RateLimitConfig::default());
        assert!(l.is_off());
        for _ in 0..10_000 {
            assert!(l.check(ip("192.0.2.1")).is_ok());
        }
        assert_eq!(l.key_count(), 0);
    }

    #[test]
    fn per_client_burst_then_refused_with_retry_after() {
        let (l, _, _, _) = limiter(&config(2, 5, 0, 100));
        for _ in 0..5 {
            assert!(l.check(ip("192.0.2.1")).is_ok());
        }
        let refused = l.check(ip("192.0.2.1")).unwrap_err();
        assert_eq!(refused.limit, Limit::PerClient);
        assert!(refused.retry_after <= Duration::from_millis(500));
        assert_eq!(refused.retry_after_secs(), 1);
        // Another client is not affected.
        assert!(l.check(ip("192.0.2.2")).is_ok());
        assert_eq!(l.key_count(), 2);
    }

    #[test]
    fn ipv6_is_keyed_by_64() {
        let (l, _, _, _) = limiter(&config(1, 1, 0, 100));
        assert!(l.check(ip("2001:db8:1:2::1")).is_ok());
        // Same /64, another address: same client.
        assert!(l.check(ip("2001:db8:1:2:ffff::9")).is_err());
        // Next /64: another client.
        assert!(l.check(ip("2001:db8:1:3::1")).is_ok());
        assert_eq!(
            ClientKey::of(ip("::ffff:192.0.2.1")),
            ClientKey::of(ip("192.0.2.1"))
        );
    }

    #[test]
    fn exempt_clients_are_never_limited() {
        let mut c = config(1, 1, 1, 100);
        c.exempt = vec![
            "10.0.0.0/8".parse().unwrap(),
            "2001:db8::/32".parse().unwrap(),
        ];
        let (l, _, _, _) = limiter(&c);
        for _ in 0..100 {
            assert!(l.check(ip("10.1.2.3")).is_ok());
            assert!(l.check(ip("2001:db8::5")).is_ok());
        }
        assert_eq!(l.key_count(), 0);
        assert!(l.check(ip("192.0.2.1")).is_ok());
        assert!(l.check(ip("192.0.2.1")).is_err());
    }

    #[test]
    fn global_limit_applies_to_everyone() {
        let (l, _, _, _) = limiter(&config(0, 0, 3, 100));
        for i in 0..3u8 {
            assert!(l.check(IpAddr::V4(Ipv4Addr::new(192, 0, 2, i))).is_ok());
        }
        let refused = l.check(ip("198.51.100.1")).unwrap_err();
        assert_eq!(refused.limit, Limit::Global);
    }

    #[test]
    fn refused_by_client_does_not_use_the_global_limit() {
        let (l, _, _, _) = limiter(&config(1, 1, 2, 100));
        assert!(l.check(ip("192.0.2.1")).is_ok());
        for _ in 0..50 {
            assert_eq!(
                l.check(ip("192.0.2.1")).unwrap_err().limit,
                Limit::PerClient
            );
        }
        // One global cell left for someone else.
        assert!(l.check(ip("192.0.2.2")).is_ok());
        assert_eq!(l.check(ip("192.0.2.3")).unwrap_err().limit, Limit::Global);
    }

    #[test]
    fn key_count_is_capped_and_overflow_shares_one_state() {
        let (l, keys, overflow, _) = limiter(&config(1000, 1, 0, 1000));
        for i in 0..100_000u32 {
            let _ = l.check(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)));
        }
        assert!(l.key_count() <= 1000, "{}", l.key_count());
        assert_eq!(keys.get() as usize, l.key_count());
        assert!(overflow.get() > 0);
        // IPv6 flood from one /32: still capped.
        for i in 0..50_000u64 {
            let a = Ipv6Addr::from((0x2001_0db8_u128 << 96) | (u128::from(i) << 64));
            let _ = l.check(IpAddr::V6(a));
        }
        assert!(l.key_count() <= 1000);
    }

    #[test]
    fn idle_keys_are_evicted_and_memory_returned() {
        let (l, keys, _, clock) = limiter(&config(1000, 1, 0, 200_000));
        for i in 0..100_000u32 {
            assert!(l.check(IpAddr::V4(Ipv4Addr::from(i))).is_ok());
        }
        assert_eq!(l.key_count(), 100_000);
        // A state is idle once its theoretical arrival time (1 ms after the
        // check) lies an emission interval (1 ms) in the past: not before.
        clock.advance(Duration::from_millis(1));
        l.evict_idle();
        assert_eq!(l.key_count(), 100_000);
        clock.advance(Duration::from_millis(1));
        l.evict_idle();
        assert_eq!(l.key_count(), 0);
        assert_eq!(keys.get(), 0);
    }

    #[test]
    fn full_store_is_swept_inline() {
        let (l, _, overflow, clock) = limiter(&config(1000, 1, 0, 100));
        for i in 0..100u32 {
            assert!(l.check(IpAddr::V4(Ipv4Addr::from(i))).is_ok());
        }
        assert_eq!(l.key_count(), 100);
        // Full, and the states idle, but the last inline sweep (at start) is
        // less than an eviction interval ago: the newcomer shares the overflow.
        clock.advance(Duration::from_millis(10));
        assert!(l.check(ip("192.0.2.100")).is_ok());
        assert_eq!(l.key_count(), 100);
        assert_eq!(overflow.get(), 1);
        clock.advance(EVICTION_INTERVAL);
        // Full: this check sweeps first, so the new client gets its own slot.
        assert!(l.check(ip("192.0.2.200")).is_ok());
        assert_eq!(l.key_count(), 1);
        assert_eq!(overflow.get(), 1);
    }

    #[test]
    fn store_memory_shrinks_after_eviction() {
        let store = BoundedKeyStore::new(1_000_000, Gauge::default(), Counter::default());
        let f = |_: Option<Nanos>| Ok::<_, ()>(((), Nanos::new(1)));
        for i in 0..100_000u32 {
            store.measure_and_replace(&ClientKey::V4(i), f).unwrap();
        }
        let full = store.table_bytes();
        assert!(full >= 100_000 * 13, "{full}");
        store.retain_recent(Nanos::new(5));
        store.shrink_to_fit();
        assert_eq!(store.len(), 0);
        assert!(store.table_bytes() < full / 100, "{}", store.table_bytes());
    }
}
