//! Failed sign-ins, counted per client address and per user name: after
//! [`FREE_FAILURES`] failures within a minute, each further attempt waits,
//! [`FIRST_WAIT`] and then twice as long each time, up to [`MAX_WAIT`]. Password guessing through
//! the sign-in form and token guessing through `Authorization: Bearer`
//! meet the same counts. What it holds is bounded: at most [`MAX_KEYS`]
//! addresses and names, the oldest forgotten first.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures a minute that cost nothing.
pub(crate) const FREE_FAILURES: u32 = 5;
/// The window failures are counted in.
const WINDOW: Duration = Duration::from_secs(60);
/// The first wait.
const FIRST_WAIT: Duration = Duration::from_secs(30);
/// The longest wait.
const MAX_WAIT: Duration = Duration::from_secs(15 * 60);
/// The most addresses and names remembered at once.
const MAX_KEYS: usize = 10_000;

/// What is remembered of one address or name.
#[derive(Debug, Clone, Copy)]
struct Failures {
    /// The first failure of the current window.
    since: Instant,
    /// Failures in the window.
    count: u32,
    /// When the next attempt may be made.
    wait_until: Option<Instant>,
}

/// The failed sign-ins of the service.
#[derive(Default)]
pub(crate) struct Throttle {
    keys: Mutex<HashMap<String, Failures>>,
}

/// What a failure did to its window, for the audit log.
#[derive(Debug, PartialEq)]
pub(crate) enum Counted {
    /// The first failure of a window: audited on its own.
    First {
        /// Failures the window before this one held past its first, which
        /// were not audited one by one.
        earlier: u32,
    },
    /// A further failure in the window, counted, not audited.
    Again,
    /// The failure that starts the waits: audited with the window's count.
    Throttled(u32),
}

impl Throttle {
    /// How long `keys` must still wait before another attempt, if any must.
    pub(crate) fn wait(&self, keys: &[String], now: Instant) -> Option<Duration> {
        let held = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        keys.iter().filter_map(|k| held.get(k)?.wait_until).filter(|until| *until > now).max().map(|until| until - now)
    }

    /// Counts a failure against each of `keys`; what it did to the first
    /// key's window (the address's) says what to audit.
    pub(crate) fn failed(&self, keys: &[String], now: Instant) -> Counted {
        let mut held = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        if held.len() + keys.len() > MAX_KEYS {
            held.retain(|_, f| f.wait_until.is_some_and(|u| u > now) || now.duration_since(f.since) < WINDOW);
            while held.len() + keys.len() > MAX_KEYS {
                let oldest = held.iter().min_by_key(|(_, f)| f.since).map(|(k, _)| k.clone());
                let Some(oldest) = oldest else { break };
                held.remove(&oldest);
            }
        }
        let mut counted = None;
        for key in keys {
            let f = held.entry(key.clone()).or_insert(Failures { since: now, count: 0, wait_until: None });
            let mut earlier = 0;
            if now.duration_since(f.since) >= WINDOW && f.wait_until.is_none_or(|u| u <= now) {
                earlier = f.count.saturating_sub(1);
                *f = Failures { since: now, count: 0, wait_until: None };
            }
            f.count += 1;
            let c = match f.count {
                1 => Counted::First { earlier },
                n if n < FREE_FAILURES => Counted::Again,
                n => {
                    let doubling = (n - FREE_FAILURES).min(16);
                    let wait = (FIRST_WAIT * (1u32 << doubling)).min(MAX_WAIT);
                    f.wait_until = Some(now + wait);
                    if n == FREE_FAILURES { Counted::Throttled(n) } else { Counted::Again }
                }
            };
            counted.get_or_insert(c);
        }
        counted.unwrap_or(Counted::Again)
    }

    /// A success: the user name's count starts again (the address's
    /// stays, so one good account does not launder guesses at others).
    pub(crate) fn succeeded(&self, name_key: &str) {
        self.keys.lock().unwrap_or_else(|e| e.into_inner()).remove(name_key);
    }
}

/// The key of a client address.
pub(crate) fn address(from: &str) -> String {
    format!("address {from}")
}

/// The key of a user name.
pub(crate) fn user_name(name: &str) -> String {
    format!("user {name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_failures_a_minute_then_waits_that_double() {
        let t = Throttle::default();
        let keys = [address("10.0.0.1"), user_name("sam")];
        let start = Instant::now();
        assert_eq!(t.failed(&keys, start), Counted::First { earlier: 0 });
        for _ in 1..4 {
            assert_eq!(t.failed(&keys, start), Counted::Again);
        }
        assert_eq!(t.wait(&keys, start), None);
        assert_eq!(t.failed(&keys, start), Counted::Throttled(5));
        assert_eq!(t.wait(&keys, start), Some(FIRST_WAIT));
        t.failed(&keys, start);
        assert_eq!(t.wait(&keys, start), Some(FIRST_WAIT * 2));
        // Another address guessing the same name waits too.
        assert!(t.wait(&[address("10.0.0.2"), user_name("sam")], start).is_some());
        // Later, with the wait over, the count starts again and says how
        // many failures went unaudited.
        let later = start + Duration::from_secs(121);
        assert_eq!(t.failed(&keys, later), Counted::First { earlier: 5 });
    }

    #[test]
    fn what_it_holds_is_bounded() {
        let t = Throttle::default();
        let now = Instant::now();
        for i in 0..MAX_KEYS + 50 {
            t.failed(&[address(&i.to_string())], now);
        }
        assert!(t.keys.lock().unwrap().len() <= MAX_KEYS);
    }
}
