//! The process-wide budget for bytes held by unfinished HTTP/1 request heads
//! (`MESHTRACE_MAX_PENDING_HEAD_BYTES`).
//!
//! Each connection's head is bounded by the head limit and timeout
//! ([`HeadGuard`](super::head::HeadGuard)); many connections each holding an unfinished head
//! just under the limit still add up. A head that ends in the read that began it is never
//! charged (the common path takes no lock); one that spans reads registers here
//! ([`HeadBudget::register`]) and charges its bytes to one atomic total. When a charge takes
//! the total past the budget, the largest pending heads are marked and their connections woken
//! until the unmarked ones fit; a marked connection's guard answers `431` and closes, which
//! releases its bytes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Waker;

use futures::task::AtomicWaker;

/// The budget shared by every HTTP/1 connection of the process.
#[derive(Debug)]
pub struct HeadBudget {
    limit: usize,
    /// Bytes charged by all registered heads, marked ones included until they release them.
    total: AtomicUsize,
    next_id: AtomicU64,
    pending: Mutex<HashMap<u64, Arc<PendingHead>>>,
}

/// One unfinished head, as the budget sees it.
#[derive(Debug, Default)]
struct PendingHead {
    bytes: AtomicUsize,
    /// Chosen to make room: its connection must answer 431 and close.
    evicted: AtomicBool,
    task: AtomicWaker,
}

impl HeadBudget {
    /// `limit`: the most bytes unfinished heads may hold together (`0` is no budget: `None`).
    pub fn new(limit: usize) -> Option<Arc<Self>> {
        (limit > 0).then(|| {
            Arc::new(HeadBudget {
                limit,
                total: AtomicUsize::new(0),
                next_id: AtomicU64::new(0),
                pending: Mutex::new(HashMap::new()),
            })
        })
    }

    /// A head that did not end in its first read, holding `bytes` so far.
    pub fn register(self: &Arc<Self>, bytes: usize) -> PendingCharge {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let head = Arc::new(PendingHead::default());
        self.lock().insert(id, head.clone());
        let mut charge = PendingCharge {
            budget: self.clone(),
            id,
            head,
            charged: 0,
        };
        charge.set(bytes);
        charge
    }

    /// Bytes charged now (marked heads included until they release them).
    pub fn total(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<PendingHead>>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The total went past the budget: marks and wakes the largest unmarked heads until the
    /// unmarked ones fit.
    fn make_room(&self) {
        let pending = self.lock();
        let mut sizes: Vec<(usize, u64)> = pending
            .iter()
            .filter(|(_, head)| !head.evicted.load(Ordering::Relaxed))
            .map(|(id, head)| (head.bytes.load(Ordering::Relaxed), *id))
            .collect();
        let chosen = largest_over(&mut sizes, self.limit);
        for (_, id) in chosen.iter() {
            if let Some(head) = pending.get(id) {
                head.evicted.store(true, Ordering::Relaxed);
                head.task.wake();
            }
        }
        if !chosen.is_empty() {
            tracing::debug!(
                evicted = chosen.len(),
                total = self.total(),
                limit = self.limit,
                "unfinished request heads over the budget"
            );
        }
    }
}

/// Sorts `heads` (bytes, id) largest first and returns the ids of the fewest largest ones
/// whose removal brings the rest to at most `limit` bytes.
fn largest_over(heads: &mut Vec<(usize, u64)>, limit: usize) -> &[(usize, u64)] {
    let mut rest: usize = heads.iter().map(|(bytes, _)| bytes).sum();
    heads.sort_unstable_by(|a, b| b.cmp(a));
    let mut taken = 0;
    while rest > limit && taken < heads.len() {
        rest -= heads[taken].0;
        taken += 1;
    }
    heads.truncate(taken);
    heads
}

/// The charge of one pending head; dropping it releases the bytes and unregisters the head.
#[derive(Debug)]
pub struct PendingCharge {
    budget: Arc<HeadBudget>,
    id: u64,
    head: Arc<PendingHead>,
    charged: usize,
}

impl PendingCharge {
    /// The head now holds `bytes`; may choose heads (this one too) to evict.
    pub fn set(&mut self, bytes: usize) {
        self.head.bytes.store(bytes, Ordering::Relaxed);
        let total = if bytes >= self.charged {
            let added = bytes - self.charged;
            self.budget.total.fetch_add(added, Ordering::Relaxed) + added
        } else {
            let removed = self.charged - bytes;
            self.budget.total.fetch_sub(removed, Ordering::Relaxed) - removed
        };
        self.charged = bytes;
        if total > self.budget.limit {
            self.budget.make_room();
        }
    }

    /// Whether this head was chosen to make room; otherwise `waker` is woken when it is.
    pub fn evicted(&self, waker: &Waker) -> bool {
        self.head.task.register(waker);
        self.is_evicted()
    }

    /// Whether this head was chosen to make room.
    pub fn is_evicted(&self) -> bool {
        self.head.evicted.load(Ordering::Relaxed)
    }
}

impl Drop for PendingCharge {
    fn drop(&mut self) {
        self.budget.lock().remove(&self.id);
        self.budget.total.fetch_sub(self.charged, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chosen(heads: &[usize], limit: usize) -> Vec<u64> {
        let mut heads: Vec<_> = heads.iter().zip(0..).map(|(b, id)| (*b, id)).collect();
        largest_over(&mut heads, limit)
            .iter()
            .map(|(_, id)| *id)
            .collect()
    }

    #[test]
    fn the_largest_heads_go_first_until_the_rest_fit() {
        assert_eq!(chosen(&[10, 40, 18], 64), vec![1]);
        assert_eq!(chosen(&[30, 40, 20, 25], 50), vec![1, 0]);
        assert_eq!(chosen(&[10, 20], 30), Vec::<u64>::new());
        assert_eq!(chosen(&[100], 10), vec![0]);
        assert_eq!(chosen(&[], 10), Vec::<u64>::new());
    }

    #[test]
    fn charges_add_up_and_are_released_on_drop() {
        let budget = HeadBudget::new(100).unwrap();
        let mut a = budget.register(30);
        let b = budget.register(20);
        assert_eq!(budget.total(), 50);
        a.set(60);
        assert_eq!(budget.total(), 80);
        assert!(!a.is_evicted() && !b.is_evicted());
        drop(a);
        assert_eq!(budget.total(), 20);
        drop(b);
        assert_eq!(budget.total(), 0);
        assert!(budget.lock().is_empty());
    }

    #[test]
    fn going_over_marks_the_largest_and_wakes_it() {
        let budget = HeadBudget::new(64).unwrap();
        let big = budget.register(40);
        let mut small = budget.register(10);
        let other = budget.register(10);
        let woken = Arc::new(CountWaker::default());
        let waker = Waker::from(woken.clone());
        assert!(!big.evicted(&waker));
        small.set(18);
        assert!(big.is_evicted(), "the largest head is chosen");
        assert!(!small.is_evicted() && !other.is_evicted());
        assert_eq!(woken.0.load(Ordering::Relaxed), 1);
        // Until it releases its bytes, further charges choose no one else.
        small.set(20);
        assert!(!small.is_evicted() && !other.is_evicted());
        drop(big);
        assert_eq!(budget.total(), 30);
    }

    #[derive(Default)]
    struct CountWaker(AtomicUsize);

    impl std::task::Wake for CountWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn no_budget_when_zero() {
        assert!(HeadBudget::new(0).is_none());
    }
}
