//! Admission: the two budgets a connection passes through. Until its peer is authenticated (the
//! handshake, and on a server the RFC 9289 probe before it) a connection holds a slot of the
//! handshake budget (`--max-handshakes`); once authenticated it trades that slot for a tunnel permit
//! (`--max-connections`). Unauthenticated peers therefore can never take the place of tunnels, and
//! tunnels are limited by `--max-connections` alone.
//!
//! When the handshake budget is full, a newcomer is not turned away: the oldest handshake of the
//! source address holding the most slots is dropped to make room (an address is an IPv4 address or
//! an IPv6 /64). So one address flooding the port evicts its own connections, and a peer from
//! another address always finds room. A connection is only evicted by its own address's newcomers
//! once it has had a fair chance to finish: a few times as long as the slowest recent handshakes
//! took (at least [`MIN_CHANCE`]). A flood never completes a handshake, so under a flood the chance
//! stays short; under a burst of real clients that slows every handshake down, it grows with them. Until then the accept loop waits, leaving newcomers in the kernel's
//! listen queue: a burst of real clients from one address is slowed down, never cut.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::refuse::RefuseReason;

/// The least time a handshake is given before a newcomer from its own address may evict it.
const MIN_CHANCE: Duration = Duration::from_millis(250);
/// A handshake's chance, in multiples of how long the slowest recent handshakes took.
const CHANCE_FACTOR: u32 = 4;

/// The handshake budget and the tunnel permits of one running proxy.
#[derive(Debug)]
pub(crate) struct Budget {
    max_handshakes: usize,
    /// Whether a full budget evicts (server mode). A client's peers are the local NFS client: a
    /// full budget only makes them wait in the listen queue.
    evicting: bool,
    tunnels: Arc<Semaphore>,
    /// The most a handshake's chance grows to (three quarters of the handshake deadline).
    max_chance: Duration,
    state: Mutex<State>,
    /// A slot was given back.
    freed: Notify,
}

#[derive(Debug, Default)]
struct State {
    next_id: u64,
    /// Handshakes in progress by source, each source's oldest first (ids grow with time).
    by_source: HashMap<Source, BTreeMap<u64, Slot>>,
    count: usize,
    /// How long the slowest recent handshakes took: a peak that decays by 1/16 per completion.
    typical: Option<Duration>,
}

#[derive(Debug)]
struct Slot {
    since: Instant,
    evict: CancellationToken,
}

/// Whose connections count together for fairness: an IPv4 address, or an IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Source(IpAddr);

impl Source {
    fn of(peer: SocketAddr) -> Self {
        match peer.ip().to_canonical() {
            IpAddr::V6(v6) => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                Source(IpAddr::V6(bits.into()))
            }
            v4 => Source(v4),
        }
    }
}

/// What [`Budget::enter`] did to make room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Entered {
    /// There was room.
    Free,
    /// The oldest handshake of this address was dropped.
    Evicted(SocketAddr),
}

impl Budget {
    pub(crate) fn new(
        max_handshakes: u32,
        max_connections: u32,
        handshake_timeout: Duration,
        evicting: bool,
    ) -> Self {
        Self {
            max_handshakes: max_handshakes.max(1) as usize,
            evicting,
            tunnels: Arc::new(Semaphore::new(max_connections as usize)),
            max_chance: (handshake_timeout * 3 / 4).max(MIN_CHANCE),
            state: Mutex::default(),
            freed: Notify::new(),
        }
    }

    /// Handshakes in progress now.
    pub(crate) fn handshaking(&self) -> usize {
        self.lock().count
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a handshake slot for a connection from `peer`, evicting the oldest handshake of the
    /// busiest address when the budget is full. Waits (the caller stops accepting meanwhile) while
    /// every candidate is still within its chance to finish. The evicted connection's address is
    /// returned with the slot (its refusal is logged by its own task).
    pub(crate) async fn enter(self: &Arc<Self>, peer: SocketAddr) -> (Admission, Entered) {
        let source = Source::of(peer);
        loop {
            let freed = self.freed.notified();
            let wait = {
                let mut state = self.lock();
                match self.make_room(&mut state, source) {
                    Ok(entered) => {
                        let id = state.next_id;
                        state.next_id += 1;
                        let evict = CancellationToken::new();
                        let slot = Slot { since: Instant::now(), evict: evict.clone() };
                        state.by_source.entry(source).or_default().insert(id, slot);
                        state.count += 1;
                        let admission = Admission {
                            budget: self.clone(),
                            slot: Mutex::new(Some((source, id))),
                            evicted: evict,
                            permit: OnceLock::new(),
                        };
                        return (admission, entered);
                    }
                    Err(wait) => wait,
                }
            };
            tokio::select! {
                _ = freed => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Room for one more from `source`: Ok if there is (after evicting someone if needed), or how
    /// long to wait before the next candidate may be evicted.
    fn make_room(&self, state: &mut State, source: Source) -> Result<Entered, Duration> {
        if state.count < self.max_handshakes {
            return Ok(Entered::Free);
        }
        if !self.evicting {
            // Woken by a slot given back; the timeout only bounds a missed notification.
            return Err(Duration::from_millis(100));
        }
        let held = |s: &Source, slots: &BTreeMap<u64, Slot>| slots.len() + usize::from(*s == source);
        // The busiest address (the newcomer counted in its own); among equals, the oldest slot.
        let (&victim_source, slots) = state
            .by_source
            .iter()
            .filter(|(_, slots)| !slots.is_empty())
            .max_by(|(a, sa), (b, sb)| {
                held(a, sa).cmp(&held(b, sb)).then_with(|| {
                    let oldest = |s: &BTreeMap<u64, Slot>| s.keys().next().copied().unwrap_or(u64::MAX);
                    oldest(sb).cmp(&oldest(sa))
                })
            })
            .ok_or(MIN_CHANCE)?;
        let (&victim_id, victim) = slots.iter().next().ok_or(MIN_CHANCE)?;
        let sources = state.by_source.len() + usize::from(!state.by_source.contains_key(&source));
        let fair_share = self.max_handshakes.div_ceil(sources.max(1));
        let newcomer_holds = state.by_source.get(&source).map_or(0, BTreeMap::len);
        // Another address over its fair share gives way at once to one under it; otherwise the
        // oldest is dropped only once it has had its chance.
        let unfair = victim_source != source && slots.len() > fair_share && newcomer_holds < fair_share;
        let chance = self.chance(state);
        let age = victim.since.elapsed();
        if !unfair && age < chance {
            return Err(chance - age);
        }
        let slots = state.by_source.get_mut(&victim_source).ok_or(MIN_CHANCE)?;
        if let Some(slot) = slots.remove(&victim_id) {
            slot.evict.cancel();
        }
        if slots.is_empty() {
            state.by_source.remove(&victim_source);
        }
        state.count -= 1;
        Ok(Entered::Evicted(SocketAddr::new(victim_source.0, 0)))
    }

    /// How long a handshake is given before its own address's newcomers may evict it.
    fn chance(&self, state: &State) -> Duration {
        let typical = state.typical.unwrap_or(Duration::ZERO);
        (typical * CHANCE_FACTOR).clamp(MIN_CHANCE, self.max_chance)
    }

    /// Gives a slot back; `completed`: the handshake finished, after `took`.
    fn leave(&self, source: Source, id: u64, completed: Option<Duration>) {
        let mut state = self.lock();
        let state = &mut *state;
        if let Some(slots) = state.by_source.get_mut(&source) {
            if slots.remove(&id).is_some() {
                state.count -= 1;
            }
            if slots.is_empty() {
                state.by_source.remove(&source);
            }
        }
        if let Some(took) = completed {
            state.typical = Some(match state.typical {
                None => took,
                Some(t) => (t - t / 16).max(took),
            });
        }
        self.freed.notify_one();
    }
}

/// One connection's way through the budgets: a handshake slot until [`Admission::admit`], then a
/// tunnel permit until dropped.
#[derive(Debug)]
pub struct Admission {
    budget: Arc<Budget>,
    /// The handshake slot, until admitted.
    slot: Mutex<Option<(Source, u64)>>,
    evicted: CancellationToken,
    permit: OnceLock<OwnedSemaphorePermit>,
}

impl Admission {
    /// Cancelled when a newcomer evicted this handshake.
    pub(crate) fn evicted(&self) -> &CancellationToken {
        &self.evicted
    }

    /// The peer is authenticated: trade the handshake slot for a tunnel permit. Called by the mode
    /// before it dials anything; again (a no-op) by `run_one` for a mode that does not.
    pub(crate) fn admit(&self) -> Result<(), RefuseReason> {
        if self.permit.get().is_some() {
            return Ok(());
        }
        if self.evicted.is_cancelled() {
            return Err(RefuseReason::Evicted);
        }
        let permit =
            self.budget.tunnels.clone().try_acquire_owned().map_err(|_| RefuseReason::TooManyConnections)?;
        let _ = self.permit.set(permit);
        if let Some((source, id, since)) = self.take_slot() {
            self.budget.leave(source, id, Some(since));
        }
        Ok(())
    }

    fn take_slot(&self) -> Option<(Source, u64, Duration)> {
        let (source, id) = self.slot.lock().unwrap_or_else(|p| p.into_inner()).take()?;
        let since = {
            let state = self.budget.lock();
            state.by_source.get(&source).and_then(|s| s.get(&id)).map(|s| s.since.elapsed())
        };
        Some((source, id, since.unwrap_or_default()))
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        if let Some((source, id)) = self.slot.get_mut().unwrap_or_else(|p| p.into_inner()).take() {
            self.budget.leave(source, id, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(last: u8, port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, last], port))
    }

    impl Budget {
        /// Makes every handshake in progress `by` older.
        fn age(&self, by: Duration) {
            for slot in self.lock().by_source.values_mut().flat_map(|s| s.values_mut()) {
                slot.since = slot.since.checked_sub(by).unwrap_or(slot.since);
            }
        }
    }

    #[tokio::test]
    async fn a_full_budget_evicts_the_oldest_of_the_busiest_address_not_the_newcomer() {
        let budget = Arc::new(Budget::new(4, 10, Duration::from_secs(10), true));
        let mut flood = Vec::new();
        for port in 0..4 {
            let (a, entered) = budget.enter(peer(1, port)).await;
            assert_eq!(entered, Entered::Free);
            flood.push(a);
        }
        // Another address gets in at once, and the flood's oldest goes.
        let (legit, entered) = budget.enter(peer(2, 1)).await;
        assert_eq!(entered, Entered::Evicted(SocketAddr::new([10, 0, 0, 1].into(), 0)));
        assert!(flood[0].evicted().is_cancelled());
        assert!(flood[1..].iter().all(|a| !a.evicted().is_cancelled()));
        assert_eq!(budget.handshaking(), 4);
        // The flood's own newcomers evict the flood's oldest once they had their chance, never the
        // one from the other address.
        for port in 10..20 {
            budget.age(MIN_CHANCE);
            let (a, entered) = budget.enter(peer(1, port)).await;
            assert_eq!(entered, Entered::Evicted(SocketAddr::new([10, 0, 0, 1].into(), 0)));
            flood.push(a);
        }
        assert!(!legit.evicted().is_cancelled());
        assert_eq!(flood[0].admit(), Err(RefuseReason::Evicted));
        assert_eq!(legit.admit(), Ok(()));
        assert_eq!(budget.handshaking(), 3);
    }

    #[tokio::test]
    async fn a_burst_from_one_address_waits_instead_of_evicting_young_handshakes() {
        let budget = Arc::new(Budget::new(2, 10, Duration::from_secs(10), true));
        let (a, _) = budget.enter(peer(1, 1)).await;
        let (_b, _) = budget.enter(peer(1, 2)).await;
        let third = tokio::spawn({
            let budget = budget.clone();
            async move { budget.enter(peer(1, 3)).await.1 }
        });
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!third.is_finished());
        // A finished handshake makes room without evicting anyone.
        assert_eq!(a.admit(), Ok(()));
        assert_eq!(
            tokio::time::timeout(Duration::from_secs(5), third).await.ok().and_then(Result::ok),
            Some(Entered::Free)
        );
    }

    #[tokio::test]
    async fn tunnels_are_limited_by_max_connections_alone() {
        let budget = Arc::new(Budget::new(1, 1, Duration::from_secs(10), true));
        let (first, _) = budget.enter(peer(1, 1)).await;
        assert_eq!(first.admit(), Ok(()));
        // The handshake slot is free again; the tunnel permit is not.
        let (second, entered) = budget.enter(peer(1, 2)).await;
        assert_eq!(entered, Entered::Free);
        assert_eq!(second.admit(), Err(RefuseReason::TooManyConnections));
        drop(first);
        drop(second);
        let (third, _) = budget.enter(peer(1, 3)).await;
        assert_eq!(third.admit(), Ok(()));
    }
}
