//! What a district's monitoring asks of the service: whether it is ready
//! to work (`GET /readyz`), and the gauges of `GET /metrics`, read at each
//! scrape. Neither needs a user: both tell counts and states, never records.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use super::{App, lock};
use crate::notify::Delivery;

/// The scheduler loop ticks at least this often while it is well, so a
/// loop that has not ticked for [`STALE_TICK`] is stuck.
pub(super) const HEARTBEAT: Duration = Duration::from_secs(2);
/// How long since its last tick the scheduler still counts as ready.
pub const STALE_TICK: Duration = Duration::from_secs(10);
/// How long an answer from the SMTP server is reused: a load balancer that
/// polls every second must not open a connection to the relay each time.
const SMTP_CHECK_TTL: Duration = Duration::from_secs(10);
/// How long the SMTP server has to greet.
const SMTP_CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// One part of the service and how it is.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Part {
    /// `store`, `scheduler` or `smtp`.
    pub name: &'static str,
    /// Whether it is well.
    pub ok: bool,
    /// What was found, in a sentence.
    pub detail: String,
}

/// The answer to "is it ready": every part, and whether all are well.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Readiness {
    /// All parts are well.
    pub ready: bool,
    /// Each part.
    pub parts: Vec<Part>,
}

/// The health service.
pub struct Health<'a> {
    pub(super) app: &'a App,
}

impl Health<'_> {
    /// Whether the store answers, the scheduler loop has ticked within
    /// [`STALE_TICK`], and (when one is configured) the SMTP server greets.
    /// Blocks for up to a few seconds (the SMTP check); call it off the
    /// async threads.
    pub fn ready(&self) -> Readiness {
        let app = self.app;
        let mut parts = Vec::new();
        parts.push(match app.store.queued_after(None) {
            Ok(_) => Part { name: "store", ok: true, detail: "the store answers".into() },
            Err(e) => Part { name: "store", ok: false, detail: format!("the store does not answer: {e}") },
        });
        parts.push(match *lock(&app.engine.last_tick) {
            Some(t) if t.elapsed() <= STALE_TICK => {
                Part { name: "scheduler", ok: true, detail: format!("ticked {} ms ago", t.elapsed().as_millis()) }
            }
            Some(t) => Part {
                name: "scheduler",
                ok: false,
                detail: format!(
                    "the scheduler loop last ticked {} s ago (more than {} s): it is stuck; see the log",
                    t.elapsed().as_secs(),
                    STALE_TICK.as_secs()
                ),
            },
            None => Part { name: "scheduler", ok: false, detail: "the scheduler loop has not started yet".into() },
        });
        let email = &app.config.email;
        if !email.smtp_host.is_empty() {
            let greets = email.tls != crate::notify::smtp::TlsMode::Tls;
            parts.push(self.smtp(&email.smtp_host, email.smtp_port, greets));
        }
        Readiness { ready: parts.iter().all(|p| p.ok), parts }
    }

    /// Whether the SMTP server greets, from a check made within the last
    /// [`SMTP_CHECK_TTL`] or a new one.
    fn smtp(&self, host: &str, port: u16, greets: bool) -> Part {
        let mut cached = lock(&self.app.engine.smtp_check);
        if let Some((at, part)) = &*cached
            && at.elapsed() < SMTP_CHECK_TTL
        {
            return part.clone();
        }
        // The probe is unauthenticated: it says whether the server answers,
        // never its banner (software and version) or where it is; the
        // log has the rest for the operator.
        let part = match greet(host, port, greets) {
            Ok(_) => Part { name: "smtp", ok: true, detail: "ok".into() },
            Err(e) => {
                tracing::warn!(%host, port, error = %e, "The SMTP server does not answer.");
                Part { name: "smtp", ok: false, detail: "unreachable".into() }
            }
        };
        *cached = Some((Instant::now(), part.clone()));
        part
    }

    /// Counts the outbox by status in the store, and keeps the figures for
    /// the gauges to move from: once a process, and at each retention
    /// sweep where hosts share the store (another host's sends are not
    /// this one's to see).
    pub(crate) fn count_outbox(&self) -> Result<[i64; 3], crate::store::Error> {
        let mut counts = [0i64; 3];
        let mut after = None;
        loop {
            let page = self.app.store.outbox(after, 1000)?;
            let Some((last, _)) = page.last() else { break };
            after = Some(*last);
            for (_, entry) in &page {
                counts[crate::notify::tally::slot(entry.status)] += 1;
            }
        }
        crate::notify::tally::set(counts);
        Ok(counts)
    }

    /// Reads the figures the metrics show as gauges and sets them: queue
    /// depth and the oldest due run's wait, the outbox by status, the
    /// store's size, the scheduler's last tick.
    pub fn observe(&self) -> Result<(), crate::store::Error> {
        let app = self.app;
        let now = app.now();
        let mut oldest = Duration::ZERO;
        if let Some((_, id)) = app.store.queued_after(None)?
            && let Some(run) = app.store.run(id)?
        {
            // The queue is kept by priority and due time, so its head is
            // the run that should have started first.
            let due = run.fire_time.unwrap_or(run.queued_at).max(run.queued_at);
            oldest = (now - due).to_std().unwrap_or_default();
        }
        let counts = match crate::notify::tally::get() {
            Some(counts) => counts,
            None => self.count_outbox()?,
        };
        let outbox: std::collections::BTreeMap<&'static str, u64> =
            [Delivery::Pending, Delivery::Sent, Delivery::Failed]
                .iter()
                .map(|d| (d.as_str(), counts[crate::notify::tally::slot(*d)].max(0) as u64))
                .collect();
        crate::metrics::set(&crate::metrics::Gauges {
            queue_depth: app.store.queue_len(),
            queue_oldest: oldest,
            outbox,
            store_bytes: app.store.size_on_disk()?,
            tick_age: lock(&app.engine.last_tick).map(|t| t.elapsed()),
        });
        Ok(())
    }
}

/// Connects to an SMTP server and reads its greeting (a `220` line), or
/// only connects when the greeting comes inside TLS (`greets` false).
fn greet(host: &str, port: u16, greets: bool) -> Result<String, String> {
    let addr = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host} resolves to no address"))?;
    let mut stream = TcpStream::connect_timeout(&addr, SMTP_CHECK_TIMEOUT).map_err(|e| e.to_string())?;
    if !greets {
        return Ok("accepts connections (TLS from the first byte)".into());
    }
    stream.set_read_timeout(Some(SMTP_CHECK_TIMEOUT)).map_err(|e| e.to_string())?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line).map_err(|e| format!("no greeting: {e}"))?;
    let _ = stream.write_all(b"QUIT\r\n");
    if line.starts_with("220") { Ok(line) } else { Err(format!("it greeted with `{}`, not 220", line.trim())) }
}
