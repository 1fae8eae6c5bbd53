//! An opt-in wall-clock profile of the CPU kernels, for benchmarks: where a training step's
//! time goes, kernel by kernel, with GEMMs included in the kernel that calls them.
//!
//! Off by default; [`enable`] turns it on for the process. A disabled [`scope`] costs one
//! atomic load. Times are self times on the calling thread: a scope opened inside another
//! (the fold inside a conv's backward, say) is subtracted from its parent.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

static ENABLED: AtomicBool = AtomicBool::new(false);
static TOTALS: Mutex<Option<HashMap<&'static str, (usize, f64)>>> = Mutex::new(None);

thread_local! {
    /// Open scopes on this thread: their start and the time spent in their children.
    static OPEN: RefCell<Vec<(Instant, f64)>> = const { RefCell::new(Vec::new()) };
}

/// Starts recording scopes (for the whole process).
pub fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

/// A running measurement, recorded under its label when dropped.
#[must_use = "the scope measures until it is dropped"]
pub struct Scope(Option<&'static str>);

/// Measures from now until the returned value is dropped, under `label`.
pub fn scope(label: &'static str) -> Scope {
    if !ENABLED.load(Ordering::Relaxed) {
        return Scope(None);
    }
    OPEN.with(|open| open.borrow_mut().push((Instant::now(), 0.0)));
    Scope(Some(label))
}

impl Drop for Scope {
    fn drop(&mut self) {
        let Some(label) = self.0 else { return };
        let Some((start, children)) = OPEN.with(|open| open.borrow_mut().pop()) else { return };
        let elapsed = start.elapsed().as_secs_f64();
        OPEN.with(|open| {
            if let Some(parent) = open.borrow_mut().last_mut() {
                parent.1 += elapsed;
            }
        });
        let mut totals = TOTALS.lock().unwrap_or_else(|e| e.into_inner());
        let entry = totals.get_or_insert_with(HashMap::new).entry(label).or_insert((0, 0.0));
        entry.0 += 1;
        entry.1 += elapsed - children;
    }
}

/// One label's totals since the last [`take`].
#[derive(Clone, Debug)]
pub struct Entry {
    pub label: &'static str,
    pub calls: usize,
    pub self_seconds: f64,
}

/// The totals recorded so far, longest first, and a fresh start.
pub fn take() -> Vec<Entry> {
    let totals = TOTALS.lock().unwrap_or_else(|e| e.into_inner()).take().unwrap_or_default();
    let mut entries: Vec<Entry> =
        totals.into_iter().map(|(label, (calls, self_seconds))| Entry { label, calls, self_seconds }).collect();
    entries.sort_by(|a, b| b.self_seconds.total_cmp(&a.self_seconds));
    entries
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_scopes_record_self_time() {
        enable();
        take();
        {
            let _outer = scope("test.outer");
            std::thread::sleep(std::time::Duration::from_millis(30));
            let _inner = scope("test.inner");
            std::thread::sleep(std::time::Duration::from_millis(30));
        }
        let entries = take();
        let get = |l: &str| entries.iter().find(|e| e.label == l).unwrap().clone();
        let (outer, inner) = (get("test.outer"), get("test.inner"));
        assert_eq!((outer.calls, inner.calls), (1, 1));
        assert!(inner.self_seconds >= 0.03 && outer.self_seconds >= 0.03, "{outer:?} {inner:?}");
        assert!(outer.self_seconds < 0.055, "the inner scope's time must not count for the outer: {outer:?}");
    }
}
