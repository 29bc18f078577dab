//! Unit tests of the correlate step: every source, the bounds, and the guard's lifetime, on an
//! injected clock.

use std::collections::VecDeque;
use std::sync::Mutex;

use super::*;

/// A clock that moves only when told to.
#[derive(Debug)]
struct ManualClock {
    base: Instant,
    offset: Mutex<Duration>,
}

impl ManualClock {
    fn new() -> Arc<ManualClock> {
        Arc::new(ManualClock {
            base: Instant::now(),
            offset: Mutex::new(Duration::ZERO),
        })
    }

    fn advance(&self, by: Duration) {
        *self.offset.lock().unwrap() += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.base + *self.offset.lock().unwrap()
    }
}

fn settings(mode: ContextInference) -> CorrelateSettings {
    CorrelateSettings {
        mode,
        ..CorrelateSettings::default()
    }
}

fn correlator(settings: CorrelateSettings) -> (Arc<Correlator>, Arc<ManualClock>) {
    let clock = ManualClock::new();
    (Correlator::new(settings, clock.clone()), clock)
}

fn context(n: u32) -> ParentContext {
    let mut trace_id = [0xab; 16];
    trace_id[12..].copy_from_slice(&n.to_be_bytes());
    let mut span_id = [0xcd; 8];
    span_id[4..].copy_from_slice(&n.to_be_bytes());
    ParentContext {
        trace_id,
        span_id,
        flags: 1,
        trace_id_64: false,
        trace_state: None,
    }
}

fn plain(n: u32, id: Option<&str>) -> Registration<'_> {
    Registration {
        request_id: id.map(str::as_bytes),
        context: context(n),
        candidate: true,
    }
}

fn upgrade(n: u32) -> Registration<'static> {
    Registration {
        request_id: None,
        context: context(n),
        candidate: false,
    }
}

const SEC: Duration = Duration::from_secs(1);

#[test]
fn nothing_in_flight_is_background() {
    let (c, _) = correlator(CorrelateSettings::default());
    assert_eq!(c.infer(None), Inferred::Background);
    assert_eq!(c.infer(Some(b"unknown")), Inferred::Background);
}

#[test]
fn the_sole_request_in_flight_is_the_parent_until_it_ends() {
    let (c, _) = correlator(CorrelateSettings::default());
    let guard = c.register(plain(1, None));
    assert!(guard.is_tracked());
    assert_eq!(c.infer(None), Inferred::SoleInFlight(context(1)));
    // An unknown request id does not prevent the guess.
    assert_eq!(c.infer(Some(b"other")), Inferred::SoleInFlight(context(1)));
    drop(guard);
    assert_eq!(c.infer(None), Inferred::Background);
    assert_eq!(c.stats().in_flight, 0);
}

#[test]
fn two_in_flight_are_ambiguous_with_links_newest_first() {
    let (c, _) = correlator(CorrelateSettings::default());
    let _a = c.register(plain(1, None));
    let _b = c.register(plain(2, None));
    assert_eq!(
        c.infer(None),
        Inferred::Ambiguous {
            links: vec![context(2), context(1)],
            candidates: 2,
        }
    );
}

#[test]
fn links_are_capped_at_max_links_and_count_every_candidate() {
    let (c, _) = correlator(CorrelateSettings {
        max_links: 3,
        ..CorrelateSettings::default()
    });
    let guards: Vec<_> = (0..10).map(|n| c.register(plain(n, None))).collect();
    let Inferred::Ambiguous { links, candidates } = c.infer(None) else {
        panic!("not ambiguous");
    };
    assert_eq!(candidates, 10);
    assert_eq!(links, vec![context(9), context(8), context(7)]);
    drop(guards);
}

#[test]
fn zero_max_links_still_tells_ambiguous_from_sole() {
    let (c, _) = correlator(CorrelateSettings {
        max_links: 0,
        ..CorrelateSettings::default()
    });
    let a = c.register(plain(1, None));
    assert_eq!(c.infer(None), Inferred::SoleInFlight(context(1)));
    let _b = c.register(plain(2, None));
    assert_eq!(
        c.infer(None),
        Inferred::Ambiguous {
            links: vec![],
            candidates: 2
        }
    );
    drop(a);
}

#[test]
fn a_request_id_is_exact_even_among_many_in_flight() {
    let (c, _) = correlator(CorrelateSettings::default());
    let _a = c.register(plain(1, Some("id-a")));
    let _b = c.register(plain(2, Some("id-b")));
    let _c = c.register(plain(3, None));
    assert_eq!(c.infer(Some(b"id-a")), Inferred::RequestId(context(1)));
    assert_eq!(c.infer(Some(b"id-b")), Inferred::RequestId(context(2)));
    assert_eq!(c.infer(None).source(), Source::Ambiguous);
}

#[test]
fn a_request_id_is_remembered_for_the_window_after_the_response() {
    let (c, clock) = correlator(CorrelateSettings::default());
    drop(c.register(plain(1, Some("late"))));
    assert_eq!(c.infer(None), Inferred::Background, "no longer in flight");
    clock.advance(9 * SEC);
    assert_eq!(c.infer(Some(b"late")), Inferred::RequestId(context(1)));
    clock.advance(SEC);
    assert_eq!(c.infer(Some(b"late")), Inferred::Background, "window over");
    // Expired ids are dropped once the shard is touched again.
    drop(c.register(plain(2, None)));
    assert_eq!(c.stats().request_ids, 0);
}

#[test]
fn a_zero_window_forgets_ids_with_the_response() {
    let (c, _) = correlator(CorrelateSettings {
        request_id_window: Duration::ZERO,
        ..CorrelateSettings::default()
    });
    let guard = c.register(plain(1, Some("x")));
    assert_eq!(c.infer(Some(b"x")), Inferred::RequestId(context(1)));
    drop(guard);
    assert_eq!(c.infer(Some(b"x")), Inferred::Background);
    assert_eq!(c.stats().request_ids, 0);
}

#[test]
fn a_request_id_does_not_age_out_while_in_flight() {
    let (c, clock) = correlator(CorrelateSettings::default());
    let _guard = c.register(plain(1, Some("slow")));
    clock.advance(300 * SEC);
    assert_eq!(c.infer(Some(b"slow")), Inferred::RequestId(context(1)));
    assert_eq!(c.infer(None), Inferred::Background, "too old to be a guess");
}

#[test]
fn the_newest_request_with_an_id_owns_it() {
    let (c, clock) = correlator(CorrelateSettings::default());
    let first = c.register(plain(1, Some("same")));
    let second = c.register(plain(2, Some("same")));
    assert_eq!(c.infer(Some(b"same")), Inferred::RequestId(context(2)));
    // The older one finishing does not take the id from the newer one.
    drop(first);
    assert_eq!(c.infer(Some(b"same")), Inferred::RequestId(context(2)));
    drop(second);
    clock.advance(SEC);
    assert_eq!(c.infer(Some(b"same")), Inferred::RequestId(context(2)));
}

#[test]
fn long_and_empty_ids() {
    let (c, _) = correlator(CorrelateSettings::default());
    let long = "x".repeat(INLINE_ID * 3);
    let _a = c.register(plain(1, Some(&long)));
    let _b = c.register(plain(2, Some("")));
    assert_eq!(
        c.infer(Some(long.as_bytes())),
        Inferred::RequestId(context(1))
    );
    let prefix = &long.as_bytes()[..INLINE_ID];
    assert_ne!(c.infer(Some(prefix)).source(), Source::RequestId);
    // An empty id is no id.
    assert_eq!(c.infer(Some(b"")).source(), Source::Ambiguous);
    assert_eq!(c.stats().request_ids, 1);
}

#[test]
fn upgrades_are_never_candidates() {
    let (c, _) = correlator(CorrelateSettings::default());
    let _ws = c.register(upgrade(1));
    assert_eq!(c.infer(None), Inferred::Background);
    let _plain = c.register(plain(2, None));
    assert_eq!(c.infer(None), Inferred::SoleInFlight(context(2)));
    assert_eq!(c.stats().in_flight, 2);
}

#[test]
fn an_upgrade_with_a_request_id_is_still_exact() {
    let (c, _) = correlator(CorrelateSettings::default());
    let _ws = c.register(Registration {
        request_id: Some(b"ws"),
        ..upgrade(1)
    });
    assert_eq!(c.infer(Some(b"ws")), Inferred::RequestId(context(1)));
}

#[test]
fn requests_older_than_max_age_are_not_candidates() {
    let (c, clock) = correlator(CorrelateSettings::default());
    let old = c.register(plain(1, None));
    clock.advance(60 * SEC);
    assert_eq!(
        c.infer(None),
        Inferred::SoleInFlight(context(1)),
        "at the bound"
    );
    clock.advance(Duration::from_millis(1));
    assert_eq!(c.infer(None), Inferred::Background);
    let _new = c.register(plain(2, None));
    assert_eq!(c.infer(None), Inferred::SoleInFlight(context(2)));
    // The aged one finishing is accounted for (it is no longer a candidate).
    drop(old);
    assert_eq!(c.infer(None), Inferred::SoleInFlight(context(2)));
    assert_eq!(c.candidates.load(Ordering::Relaxed), 1);
}

#[test]
fn off_tracks_nothing() {
    let (c, _) = correlator(settings(ContextInference::Off));
    let guard = c.register(plain(1, Some("id")));
    assert!(!guard.is_tracked());
    assert_eq!(c.infer(Some(b"id")), Inferred::Background);
    assert_eq!(c.infer(None), Inferred::Background);
    assert_eq!(c.stats(), CorrelateStats::default());
}

#[test]
fn request_id_mode_only_ties_ids() {
    let (c, _) = correlator(settings(ContextInference::RequestId));
    let without = c.register(plain(1, None));
    assert!(!without.is_tracked(), "nothing to tie without an id");
    let _with = c.register(plain(2, Some("id")));
    assert_eq!(c.infer(Some(b"id")), Inferred::RequestId(context(2)));
    assert_eq!(c.infer(None), Inferred::Background, "no guessing");
}

#[test]
fn the_oldest_in_flight_is_evicted_and_counted() {
    let (c, _) = correlator(CorrelateSettings {
        max_in_flight: 3,
        ..CorrelateSettings::default()
    });
    let first = c.register(plain(1, Some("one")));
    let _rest: Vec<_> = (2..=4).map(|n| c.register(plain(n, None))).collect();
    let stats = c.stats();
    assert_eq!((stats.in_flight, stats.evicted_in_flight), (3, 1));
    let Inferred::Ambiguous { links, candidates } = c.infer(None) else {
        panic!("not ambiguous");
    };
    assert_eq!(candidates, 3);
    assert!(!links.contains(&context(1)));
    // The evicted request's id stays for the window, like a finished one.
    assert_eq!(c.infer(Some(b"one")), Inferred::RequestId(context(1)));
    // Its guard ending later does not touch the entry that reused its slot.
    drop(first);
    assert_eq!(c.stats().in_flight, 3);
    assert_eq!(c.candidates.load(Ordering::Relaxed), 3);
}

#[test]
fn long_lived_requests_are_evicted_before_candidates() {
    let (c, _) = correlator(CorrelateSettings {
        max_in_flight: 2,
        ..CorrelateSettings::default()
    });
    let _plain = c.register(plain(1, None));
    let _ws = c.register(upgrade(2));
    let _next = c.register(plain(3, None));
    assert_eq!(c.stats().evicted_in_flight, 1);
    assert_eq!(c.infer(None).source(), Source::Ambiguous, "both plain kept");
}

#[test]
fn remembered_ids_are_bounded() {
    let (c, _) = correlator(CorrelateSettings {
        max_recent: 2,
        ..CorrelateSettings::default()
    });
    for id in ["a", "b", "c"] {
        drop(c.register(plain(1, Some(id))));
    }
    let stats = c.stats();
    assert_eq!((stats.request_ids, stats.evicted_recent), (2, 1));
    assert_eq!(c.infer(Some(b"a")), Inferred::Background);
    assert_eq!(c.infer(Some(b"c")).source(), Source::RequestId);
}

#[test]
fn bounds_hold_with_ten_thousand_in_flight() {
    let (c, clock) = correlator(CorrelateSettings::default());
    let mut guards: Vec<_> = (0..10_500u32)
        .map(|n| {
            let id = format!("req-{n}");
            c.register(plain(n, Some(&id)))
        })
        .collect();
    let stats = c.stats();
    assert_eq!(stats.in_flight, 10_000);
    assert_eq!(stats.evicted_in_flight, 500);
    let Inferred::Ambiguous { links, candidates } = c.infer(None) else {
        panic!("not ambiguous");
    };
    assert_eq!(candidates, 10_000);
    assert_eq!(links.len(), 8);
    assert_eq!(links[0], context(10_499));
    assert_eq!(links[7], context(10_492));
    assert_eq!(
        c.infer(Some(b"req-10000")),
        Inferred::RequestId(context(10_000))
    );
    // Queues stay proportional to what is tracked while most requests come and go.
    guards.drain(..10_000).for_each(drop);
    let shard = c.lock(0);
    assert_eq!(shard.live, 500);
    assert!(
        shard.candidates.len() <= 2 * 500 + 32,
        "{}",
        shard.candidates.len()
    );
    assert!(shard.ids.len() <= 10_500);
    assert!(shard.recent.len() <= 10_000);
    drop(shard);
    drop(guards);
    clock.advance(11 * SEC);
    drop(c.register(plain(0, None)));
    let stats = c.stats();
    assert_eq!((stats.in_flight, stats.request_ids), (0, 0));
    assert!(c.lock(0).slots.len() <= 10_000, "slots are reused");
}

#[test]
fn stale_references_are_compacted_behind_a_long_request() {
    let (c, _) = correlator(CorrelateSettings::default());
    let _long = c.register(plain(0, None));
    for n in 1..5_000 {
        drop(c.register(plain(n, None)));
    }
    let shard = c.lock(0);
    assert!(
        shard.candidates.len() <= 2 + 32,
        "{}",
        shard.candidates.len()
    );
    assert!(shard.slots.len() <= 2);
}

#[test]
fn short_requests_behind_many_long_ones_leave_no_stale_references() {
    let (c, _) = correlator(CorrelateSettings::default());
    let _long: Vec<_> = (0..1_000).map(|n| c.register(plain(n, None))).collect();
    for n in 1_000..3_000 {
        drop(c.register(plain(n, None)));
    }
    let shard = c.lock(0);
    assert_eq!(shard.candidates.len(), 1_000, "stale references kept");
}

#[test]
fn shards_of_other_threads_are_seen() {
    let (c, _) = correlator(CorrelateSettings {
        shards: 4,
        ..CorrelateSettings::default()
    });
    let spawn = |n: u32, id: &'static str| {
        let c = c.clone();
        std::thread::spawn(move || c.register(plain(n, Some(id))))
            .join()
            .unwrap()
    };
    let a = spawn(1, "a");
    assert_eq!(c.infer(None), Inferred::SoleInFlight(context(1)));
    let b = spawn(2, "b");
    assert_eq!(
        c.infer(None),
        Inferred::Ambiguous {
            links: vec![context(2), context(1)],
            candidates: 2
        }
    );
    assert_eq!(c.infer(Some(b"a")), Inferred::RequestId(context(1)));
    // Guards may end on any thread.
    std::thread::spawn(move || drop(a)).join().unwrap();
    assert_eq!(c.infer(None), Inferred::SoleInFlight(context(2)));
    drop(b);
    assert_eq!(c.infer(None), Inferred::Background);
    assert_eq!(c.stats().in_flight, 0);
}

#[test]
fn sources_name_themselves() {
    let names: Vec<_> = Source::ALL.iter().map(|s| s.as_str()).collect();
    assert_eq!(
        names,
        [
            "propagated",
            "request_id",
            "sole_in_flight",
            "ambiguous",
            "background"
        ]
    );
    assert!(Source::RequestId.is_inferred() && Source::SoleInFlight.is_inferred());
    assert!(!Source::Ambiguous.is_inferred() && !Source::Propagated.is_inferred());
    assert_eq!(Inferred::Background.parent(), None);
    assert_eq!(
        Inferred::SoleInFlight(context(1)).parent(),
        Some(&context(1))
    );
}

#[test]
fn a_sweep_forgets_ids_whose_window_ended_without_further_traffic() {
    let (c, clock) = correlator(CorrelateSettings::default());
    drop(c.register(plain(1, Some("done"))));
    let _open = c.register(plain(2, Some("open")));
    clock.advance(9 * SEC);
    c.sweep();
    assert_eq!(c.stats().request_ids, 2, "window not over");
    clock.advance(SEC);
    c.sweep();
    assert_eq!(c.stats().request_ids, 1, "only the one in flight stays");
    assert_eq!(c.infer(Some(b"open")), Inferred::RequestId(context(2)));
    assert_eq!(c.lock(0).recent.len(), 0);
}

/// The registry's own storage, shard 0, and that it holds nothing.
fn storage_after_sweep(c: &Correlator) -> usize {
    c.sweep();
    let shard = c.lock(0);
    assert_eq!((shard.live, shard.ids.len(), shard.recent.len()), (0, 0, 0));
    shard.heap_bytes()
}

#[test]
fn memory_goes_back_after_a_burst() {
    let (c, clock) = correlator(CorrelateSettings::default());
    let guards: Vec<_> = (0..5_000u32)
        .map(|n| c.register(plain(n, Some(&format!("burst-{n}")))))
        .collect();
    let _ws = c.register(upgrade(0));
    let peak = c.heap_bytes();
    assert!(peak > 5_000 * std::mem::size_of::<Record>(), "{peak}");
    drop(guards);
    drop(_ws);
    // Ids remembered for the window: the memory stays while they are.
    c.sweep();
    assert_eq!(c.stats().request_ids, 5_000);
    clock.advance(10 * SEC);
    let after = storage_after_sweep(&c);
    assert!(after <= 1024, "{after} bytes kept after a burst of {peak}");
    let shard = c.lock(0);
    assert!(shard.slots.capacity() <= KEEP, "{}", shard.slots.capacity());
    assert!(shard.free.capacity() <= KEEP);
    assert!(shard.ids.capacity() <= KEEP);
    assert!(shard.candidates.capacity() <= KEEP);
    drop(shard);
    // And it works as before.
    let _next = c.register(plain(7, Some("next")));
    assert_eq!(c.infer(Some(b"next")), Inferred::RequestId(context(7)));
    assert_eq!(c.infer(None), Inferred::SoleInFlight(context(7)));
}

#[test]
fn steady_traffic_does_not_make_a_sweep_reallocate() {
    let (c, clock) = correlator(CorrelateSettings::default());
    let mut guards: VecDeque<_> = (0..500u32).map(|n| c.register(plain(n, None))).collect();
    for n in 500..5_000u32 {
        guards.pop_front();
        guards.push_back(c.register(plain(n, Some(&format!("steady-{n}")))));
        if n % 500 == 0 {
            clock.advance(SEC);
            let before = c.lock(0).heap_bytes();
            c.sweep();
            assert_eq!(c.lock(0).heap_bytes(), before, "at {n}");
        }
    }
}

#[test]
fn a_long_request_pins_slots_only_until_it_ends() {
    let (c, clock) = correlator(CorrelateSettings::default());
    let mut burst: Vec<_> = (0..1_000u32).map(|n| c.register(plain(n, None))).collect();
    let long = burst.pop();
    drop(burst);
    c.sweep();
    assert_eq!(c.lock(0).slots.len(), 1_000, "pinned by the last slot");
    // New requests take the lowest slots meanwhile, so the end can be cut once it is free.
    let short: Vec<_> = (0..10u32).map(|n| c.register(plain(n, None))).collect();
    drop(long);
    clock.advance(SEC);
    c.sweep();
    let shard = c.lock(0);
    assert_eq!(shard.live, 10);
    assert!(shard.slots.len() <= 10, "{}", shard.slots.len());
    assert!(shard.slots.capacity() <= 20, "{}", shard.slots.capacity());
    drop(shard);
    drop(short);
    assert_eq!(c.infer(None), Inferred::Background);
}

#[test]
fn a_stale_guard_does_not_end_a_request_in_a_slot_made_anew() {
    let (c, _) = correlator(CorrelateSettings {
        max_in_flight: 100,
        ..CorrelateSettings::default()
    });
    let evicted = c.register(plain(0, None));
    let rest: Vec<_> = (1..=100u32).map(|n| c.register(plain(n, None))).collect();
    assert_eq!(c.stats().evicted_in_flight, 1);
    drop(rest);
    // Every slot is cut, the evicted guard's among them.
    c.sweep();
    assert_eq!(c.lock(0).slots.capacity(), 0);
    let _new = c.register(plain(200, None));
    drop(evicted);
    assert_eq!(c.infer(None), Inferred::SoleInFlight(context(200)));
    assert_eq!(c.stats().in_flight, 1);
}

#[test]
fn one_record_per_request_in_112_bytes() {
    assert!(std::mem::size_of::<Record>() <= 112);
    let (c, _) = correlator(CorrelateSettings::default());
    let guard = c.register(plain(1, Some("one")));
    drop(guard);
    let shard = c.lock(0);
    // The finished request moved from its slot to `recent`: no copy left in the slot.
    assert_eq!((shard.recent.len(), shard.live, shard.ids.len()), (1, 0, 1));
    assert!(shard.slots.iter().all(|record| record.state == 0));
}

#[test]
fn a_remembered_tracestate_is_its_own_copy() {
    let (c, _) = correlator(CorrelateSettings::default());
    let head = bytes::Bytes::from_static(b"GET / HTTP/1.1\r\ntracestate: k=v\r\n\r\n");
    let state = HeaderValue::from_maybe_shared(head.slice(28..31)).unwrap();
    let mut parent = context(1);
    parent.trace_state = Some(state.clone());
    drop(c.register(Registration {
        request_id: Some(b"ts"),
        context: parent.clone(),
        candidate: true,
    }));
    assert_eq!(c.infer(Some(b"ts")), Inferred::RequestId(parent));
    let shard = c.lock(0);
    let record = shard.recent.front().unwrap();
    let kept = record.trace_state.as_deref().unwrap();
    assert_eq!(kept, &state);
    assert_ne!(kept.as_bytes().as_ptr(), state.as_bytes().as_ptr());
}

#[tokio::test]
async fn the_periodic_sweep_forgets_ids_and_ends_with_the_correlator() {
    let (c, clock) = correlator(CorrelateSettings::default());
    drop(c.register(plain(1, Some("id"))));
    clock.advance(10 * SEC);
    let sweeper = c
        .sweep_periodically(Duration::from_millis(5))
        .expect("inside a runtime");
    // Waits for the sweeper (not timing it): up to a generous deadline.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while c.stats().request_ids > 0 {
        assert!(tokio::time::Instant::now() < deadline, "never swept");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(c);
    tokio::time::timeout(Duration::from_secs(20), sweeper)
        .await
        .expect("the sweeper ends with the correlator")
        .unwrap();
}

#[test]
fn no_sweeper_outside_a_runtime() {
    let (c, _) = correlator(CorrelateSettings::default());
    assert!(c.sweep_periodically(SWEEP_PERIOD).is_none());
}
