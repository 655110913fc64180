//! The mailer: drains the outbox over SMTP with lettre.
//!
//! It keeps its own set of long-lived lettre connections (`pool_size`),
//! each a tokio TCP stream with `TCP_NODELAY`, secured with STARTTLS or
//! TLS as configured and logged in once; messages on one connection are
//! separated by `RSET`. Where the server offers `PIPELINING`, the `RSET`,
//! `MAIL`, `RCPT` and `DATA` of a message go out in one write (two round
//! trips a message instead of five; see `coalesced`); a connection that
//! breaks is replaced, and one is
//! closed after `max_messages_per_connection`. `max_per_second` paces the
//! whole set for relays that throttle. Why not lettre's own pool: lettre
//! 0.11.23 writes a message's body and its final `.` in two writes on a
//! socket without `TCP_NODELAY`, so every message waits for the server's
//! delayed ACK (about 40 ms): 22 emails/s on one connection. The upstream
//! fix (lettre PR 1159) is not in a release; once one has it, go back to
//! `AsyncSmtpTransport` with its pool.
//!
//! Outcomes are written in batches, with one flush per batch, before the
//! pass reports them: a crash never makes the mailer send an accepted
//! email again, except for those the server accepted in the last few
//! milliseconds (`RECORD_WITHIN`, and the flush), whose outcomes were not
//! yet on disk. Every message carries a stable `Message-ID`
//! (`<outbox-ID.run-RUN@schoolbell>`) so a receiving system can drop such
//! a duplicate. A refusal the server calls permanent fails the entry;
//! anything else is retried with exponential backoff until `max_attempts`.

mod coalesced;
mod outcomes;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use lettre::Message;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, AsyncTokioStream, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use serde::Deserialize;

use coalesced::{Coalesced, Pipeline};
use outcomes::Handoff;

use super::{Delivery, OutboxEntry};
use crate::store::{self, Backend};

/// The longest an accepted email's outcome waits to be written: the
/// window in which a host that dies sends it again.
const RECORD_WITHIN: Duration = Duration::from_millis(20);
/// Outcomes that make a batch due at once; a batch (all that waits) is
/// written in one transaction with one flush.
const RECORD_BATCH: usize = 256;

/// Due emails read and sent a page at a time. Between pages the senders
/// wait for the last outcomes' flush and the next read, so a fast server
/// gets larger pages: a page is sized to take about `PAGE_TIME` at the
/// pace of the one before, inside the claim another host's mailer
/// respects on a shared store (five minutes). `PAGE_MIN` is the page size
/// this had before pages grew; a relay throttled by `max_per_second`
/// starts, and stays, at a page it sends within `PAGE_TIME` (see
/// [`first_page`]).
const PAGE_MIN: usize = 1024;
const PAGE_MAX: usize = 8192;
const PAGE_TIME: Duration = Duration::from_secs(60);

/// The first page, and the least: `PAGE_MIN`, or what `max_per_second`
/// lets go in `PAGE_TIME` where that is less, so that no page, not even
/// the first, outlasts a shared store's claim on a throttled relay.
fn first_page(max_per_second: u32) -> usize {
    match max_per_second {
        0 => PAGE_MIN,
        n => (n as usize).saturating_mul(PAGE_TIME.as_secs() as usize).clamp(1, PAGE_MIN),
    }
}

/// How the connection to the SMTP server is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    /// Plain SMTP: only for a relay on the same host or a trusted network.
    None,
    /// Upgrade with STARTTLS, and refuse to send if the server cannot.
    #[default]
    Starttls,
    /// TLS from the first byte (SMTPS, usually port 465).
    Tls,
}

/// The `[email]` section of `schoolbell.toml`.
#[derive(Debug, Clone, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct EmailConfig {
    /// The SMTP server. Empty: emails wait in the outbox, unsent.
    pub smtp_host: String,
    /// Its port.
    pub smtp_port: u16,
    /// How the connection is secured. The server's certificate is always
    /// verified, against the system's roots or `tls_certificate`.
    pub tls: TlsMode,
    /// A PEM certificate to trust for this server, such as a district's
    /// own relay with a self-signed one: pinned, it is trusted in addition
    /// to the system's roots. Nothing turns verification off.
    pub tls_certificate: Option<std::path::PathBuf>,
    /// The SMTP user name, if the server wants one.
    pub username: Option<String>,
    /// The stored secret holding the SMTP password
    /// (`schoolbell secret set NAME --file FILE`).
    pub password_secret: Option<String>,
    /// The sender, such as `Schoolbell <schoolbell@district.example>`.
    pub from: String,
    /// Attempts per email before it is marked failed.
    pub max_attempts: u32,
    /// The first retry's delay; each next one doubles, up to six hours.
    pub retry_base_secs: u64,
    /// The domains notification groups and plugins may address mail to
    /// directly, such as `district.org`. Users' addresses and those in the
    /// district's records are always allowed.
    pub allowed_domains: Vec<String>,
    /// Days sent and failed emails stay in the outbox; then they are purged.
    pub retention_days: u32,
    /// Connections kept open to the server.
    pub pool_size: u32,
    /// How long one SMTP command may take.
    pub timeout_secs: u64,
    /// Messages sent on one connection before it is closed and a new one
    /// opened (servers limit them, such as Postfix's 100 by default).
    pub max_messages_per_connection: u32,
    /// Messages per second at most, over all connections, for a relay
    /// that throttles (such as Office 365's 30 a minute per mailbox). 0:
    /// as fast as the server takes them.
    pub max_per_second: u32,
}

impl Default for EmailConfig {
    fn default() -> Self {
        EmailConfig {
            smtp_host: String::new(),
            smtp_port: 25,
            tls: TlsMode::default(),
            tls_certificate: None,
            username: None,
            password_secret: None,
            from: "Schoolbell <schoolbell@localhost>".into(),
            max_attempts: 8,
            retry_base_secs: 60,
            allowed_domains: Vec::new(),
            retention_days: 30,
            pool_size: 4,
            timeout_secs: 30,
            max_messages_per_connection: 100,
            max_per_second: 0,
        }
    }
}

/// Errors of the mailer as a whole (one email's failure is recorded on it).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration cannot work.
    #[error("[email] in schoolbell.toml: {0}")]
    Config(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] store::Error),
}

/// What one pass delivered.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    /// Accepted by the server.
    pub sent: u64,
    /// Failed this time; tried again later.
    pub retrying: u64,
    /// Failed for good.
    pub failed: u64,
    /// The server could not be reached: the pass stopped early.
    pub unreachable: bool,
}

impl Delivered {
    fn add(&mut self, other: Delivered) {
        self.sent += other.sent;
        self.retrying += other.retrying;
        self.failed += other.failed;
        self.unreachable |= other.unreachable;
    }
}

/// Sends outbox entries.
pub struct Mailer {
    from: Mailbox,
    config: EmailConfig,
    /// For STARTTLS and TLS: the server's name and the roots to trust.
    tls: Option<TlsParameters>,
    /// A native TLS connector for TLS from the first byte.
    wrapper: Option<tokio_native_tls::TlsConnector>,
    credentials: Option<Credentials>,
    /// One per connection: a runtime of its own, driven by the thread that
    /// sends on it, so a reply wakes no other thread; and the connection,
    /// kept open for the next pass.
    slots: Vec<std::sync::Mutex<Slot>>,
    /// When the next message may go, under `max_per_second`.
    next_slot: std::sync::Mutex<std::time::Instant>,
}

struct Slot {
    runtime: tokio::runtime::Runtime,
    conn: Option<Connection>,
}

/// One long-lived SMTP connection.
struct Connection {
    smtp: AsyncSmtpConnection,
    sent: u32,
    /// Sends `RSET` with the next envelope where the server pipelines; none
    /// under STARTTLS, which upgrades lettre's own stream.
    pipeline: Option<Arc<Pipeline>>,
}

/// One entry's outcome, written with its batch.
struct Outcome {
    oid: u64,
    entry: OutboxEntry,
    was_due: DateTime<Utc>,
    result: Result<(), Failure>,
}

impl Mailer {
    /// A mailer for `config`, or `None` when no SMTP host is set.
    pub fn new(config: &EmailConfig, password: Option<String>) -> Result<Option<Mailer>, Error> {
        if config.smtp_host.is_empty() {
            return Ok(None);
        }
        let from: Mailbox = config
            .from
            .parse()
            .map_err(|e| Error::Config(format!("`from = \"{}\"` is not a mailbox: {e}", config.from)))?;
        let pinned = match &config.tls_certificate {
            None => None,
            Some(path) => {
                let pem = std::fs::read(path)
                    .map_err(|e| Error::Config(format!("tls_certificate {}: {e}", path.display())))?;
                Some(pem)
            }
        };
        let host = &config.smtp_host;
        let (tls, wrapper) = match config.tls {
            TlsMode::None => (None, None),
            TlsMode::Starttls => {
                let mut builder = TlsParameters::builder(host.clone());
                if let Some(pem) = &pinned {
                    let cert = lettre::transport::smtp::client::Certificate::from_pem(pem)
                        .map_err(|e| Error::Config(format!("tls_certificate: not a PEM certificate: {e}")))?;
                    builder = builder.add_root_certificate(cert);
                }
                let params =
                    builder.build().map_err(|e| Error::Config(format!("cannot set up TLS for {host}: {e}")))?;
                (Some(params), None)
            }
            TlsMode::Tls => {
                let mut builder = native_tls::TlsConnector::builder();
                if let Some(pem) = &pinned {
                    let cert = native_tls::Certificate::from_pem(pem)
                        .map_err(|e| Error::Config(format!("tls_certificate: not a PEM certificate: {e}")))?;
                    builder.add_root_certificate(cert);
                }
                let connector =
                    builder.build().map_err(|e| Error::Config(format!("cannot set up TLS for {host}: {e}")))?;
                (None, Some(tokio_native_tls::TlsConnector::from(connector)))
            }
        };
        let credentials = match (&config.username, password) {
            (Some(user), Some(password)) => Some(Credentials::new(user.clone(), password)),
            (Some(_), None) => {
                return Err(Error::Config("`username` is set but `password_secret` is not".into()));
            }
            _ => None,
        };
        let slots = (0..config.pool_size.max(1))
            .map(|_| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| Error::Config(format!("cannot start the mailer's runtime: {e}")))?;
                Ok(std::sync::Mutex::new(Slot { runtime, conn: None }))
            })
            .collect::<Result<Vec<_>, Error>>()?;
        Ok(Some(Mailer {
            from,
            config: config.clone(),
            tls,
            wrapper,
            credentials,
            slots,
            next_slot: std::sync::Mutex::new(std::time::Instant::now()),
        }))
    }

    /// Sends every entry due at `now`, oldest first, recording each
    /// outcome durably: a batch at a time, one flush per batch.
    pub fn deliver_due(&self, store: &dyn Backend, now: DateTime<Utc>) -> Result<Delivered, Error> {
        let mut delivered = Delivered::default();
        let mut probed = false;
        let least = first_page(self.config.max_per_second);
        let mut page = least;
        loop {
            let mut due = store.outbox_due(now, page)?;
            if due.is_empty() {
                return Ok(delivered);
            }
            // What this host claimed and, the server not answering, does
            // not send: released for any host's next attempt.
            let claimed: Vec<u64> = due.iter().map(|(id, _)| *id).collect();
            // The first alone, once: when the server is down, one attempt
            // says so.
            if !probed {
                probed = true;
                let first = due.remove(0);
                if !self.send_and_record(store, now, vec![first], &mut delivered)? {
                    store.release_outbox(&claimed)?;
                    return Ok(delivered);
                }
                if due.is_empty() {
                    continue;
                }
            }
            let (count, started) = (due.len(), std::time::Instant::now());
            if !self.send_and_record(store, now, due, &mut delivered)? {
                store.release_outbox(&claimed)?;
                return Ok(delivered);
            }
            let per_page = count as f64 * PAGE_TIME.as_secs_f64() / started.elapsed().as_secs_f64().max(1e-3);
            page = (per_page as usize).clamp(least, PAGE_MAX);
        }
    }

    /// Sends `entries` and records their outcomes: written while the rest
    /// are still being sent, in batches of `RECORD_BATCH` or what came within
    /// `RECORD_WITHIN`, with one flush each, and counted
    /// in `delivered` only once flushed. False when the server could not be
    /// reached.
    fn send_and_record(
        &self,
        store: &dyn Backend,
        now: DateTime<Utc>,
        entries: Vec<(u64, OutboxEntry)>,
        delivered: &mut Delivered,
    ) -> Result<bool, Error> {
        let outcomes = Handoff::new(RECORD_BATCH, RECORD_WITHIN);
        let (recorded, reachable) = std::thread::scope(|scope| {
            let recorder = scope.spawn(|| -> Result<(Delivered, bool), Error> {
                let mut pass = Delivered::default();
                let mut reachable = true;
                // A batch is written when it is full or when its oldest
                // outcome has waited RECORD_WITHIN: a host that dies between
                // the server's reply and the flush sends that much again.
                while let Some(batch) = outcomes.next() {
                    reachable &= self.record(store, now, batch, &mut pass)?;
                }
                Ok((pass, reachable))
            });
            self.send_batch(entries, &outcomes);
            outcomes.close();
            recorder.join().unwrap_or_else(|_| Err(Error::Config("the outbox recorder panicked".into())))
        })?;
        delivered.add(recorded);
        Ok(reachable)
    }

    /// Sends `entries` over the connections at once, each on a thread of
    /// its own (building messages costs CPU; each SMTP exchange mostly
    /// waits on the network), handing each outcome to `done`; stops early
    /// when the server cannot be reached, leaving the rest due.
    fn send_batch(&self, entries: Vec<(u64, OutboxEntry)>, done: &Handoff<Outcome>) {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let next = AtomicUsize::new(0);
        let unreachable = AtomicBool::new(false);
        let workers = self.slots.len().min(entries.len());
        let work = |slot: &std::sync::Mutex<Slot>| {
            let mut slot = slot.lock().unwrap_or_else(|e| e.into_inner());
            let Slot { runtime, conn } = &mut *slot;
            runtime.block_on(async {
                while !unreachable.load(Ordering::SeqCst) {
                    let Some((oid, entry)) = entries.get(next.fetch_add(1, Ordering::SeqCst)) else { break };
                    let mut entry = entry.clone();
                    let was_due = entry.next_attempt;
                    entry.attempts += 1;
                    let result = self.send(conn, *oid, &entry).await;
                    if result.as_ref().is_err_and(|f| f.connection) {
                        unreachable.store(true, Ordering::SeqCst);
                    }
                    done.push(Outcome { oid: *oid, entry, was_due, result });
                }
            })
        };
        std::thread::scope(|scope| {
            for slot in &self.slots[..workers] {
                scope.spawn(|| work(slot));
            }
        });
    }

    /// Sends one message on `conn`, opening (or reopening) it as needed:
    /// a connection that broke since its last use is replaced once.
    async fn send(&self, conn: &mut Option<Connection>, oid: u64, entry: &OutboxEntry) -> Result<(), Failure> {
        let (envelope, bytes) = self.message(oid, entry)?;
        self.pace().await;
        for fresh in [false, true] {
            let reused = conn.is_some();
            if conn.as_ref().is_some_and(|c| c.sent >= self.config.max_messages_per_connection.max(1))
                && let Some(mut old) = conn.take()
            {
                let _ = old.smtp.quit().await;
            }
            if conn.is_none() {
                let (smtp, pipeline) = self.connect().await?;
                *conn = Some(Connection { smtp, sent: 0, pipeline });
            }
            let Some(c) = conn.as_mut() else { unreachable!("a connection was just opened") };
            let timeout = Duration::from_secs(self.config.timeout_secs.max(1));
            let exchange = async {
                if c.sent > 0 && !c.pipeline.as_ref().is_some_and(|p| p.rset_ahead()) {
                    c.smtp.command(lettre::transport::smtp::commands::Rset).await?;
                }
                c.smtp.send(&envelope, &bytes).await
            };
            let sent = match tokio::time::timeout(timeout, exchange).await {
                Ok(r) => r.map_err(|e| Failure::from_smtp(&e)),
                Err(_) => Err(Failure::connection("the server did not answer in time".into())),
            };
            match sent {
                Ok(_) => {
                    c.sent += 1;
                    return Ok(());
                }
                // A reused connection the server closed meanwhile: open
                // a new one and try once more.
                Err(f) if f.connection && reused && !fresh => {
                    *conn = None;
                }
                Err(f) => {
                    if f.connection || c.smtp.has_broken() {
                        *conn = None;
                    }
                    return Err(f);
                }
            }
        }
        Err(Failure::connection("the server closed the connection".into()))
    }

    /// Waits for this message's turn under `max_per_second`.
    async fn pace(&self) {
        if self.config.max_per_second == 0 {
            return;
        }
        let gap = Duration::from_secs(1) / self.config.max_per_second;
        let slot = {
            let mut next = self.next_slot.lock().unwrap_or_else(|e| e.into_inner());
            let slot = (*next).max(std::time::Instant::now());
            *next = slot + gap;
            slot
        };
        tokio::time::sleep_until(slot.into()).await;
    }

    /// Opens, secures and logs in a connection.
    async fn connect(&self) -> Result<(AsyncSmtpConnection, Option<Arc<Pipeline>>), Failure> {
        let timeout = Duration::from_secs(self.config.timeout_secs.max(1));
        let host = self.config.smtp_host.as_str();
        let unreachable = |e: &dyn std::fmt::Display| Failure::connection(format!("cannot reach {host}: {e}"));
        let tcp = tokio::time::timeout(timeout, tokio::net::TcpStream::connect((host, self.config.smtp_port)))
            .await
            .map_err(|_| unreachable(&"timed out"))?
            .map_err(|e| unreachable(&e))?;
        // Without it each message waits out the server's delayed ACK.
        tcp.set_nodelay(true).map_err(|e| unreachable(&e))?;
        let hello = ClientId::default();
        let (pipeline, stream): (_, Box<dyn AsyncTokioStream>) = match &self.wrapper {
            Some(connector) => {
                let stream = Coalesced::new(Wrapped(
                    tokio::time::timeout(timeout, connector.connect(host, tcp))
                        .await
                        .map_err(|_| unreachable(&"the TLS handshake timed out"))?
                        .map_err(|e| Failure::connection(format!("TLS with {host} failed: {e}")))?,
                ));
                (Some(stream.pipeline()), Box::new(stream))
            }
            // STARTTLS upgrades the stream it is given, which must stay lettre's.
            None if self.tls.is_some() => (None, Box::new(tcp)),
            None => {
                let stream = Coalesced::new(tcp);
                (Some(stream.pipeline()), Box::new(stream))
            }
        };
        let setup = async {
            let mut smtp = AsyncSmtpConnection::connect_with_transport(stream, &hello).await?;
            if let Some(params) = &self.tls {
                smtp.starttls(params.clone(), &hello).await?;
            }
            if let Some(credentials) = &self.credentials {
                smtp.auth(&[Mechanism::Plain, Mechanism::Login], credentials).await?;
            }
            Ok::<_, lettre::transport::smtp::Error>(smtp)
        };
        match tokio::time::timeout(timeout, setup).await {
            Ok(Ok(smtp)) => Ok((smtp, pipeline)),
            Ok(Err(e)) => {
                let mut f = Failure::from_smtp(&e);
                // A server that cannot secure or log in this connection will
                // not for the next message either.
                f.connection = true;
                Err(f)
            }
            Err(_) => Err(unreachable(&"the server did not greet in time")),
        }
    }

    /// Writes a batch's outcomes with one flush; false when the server
    /// could not be reached (the rest would fail the same way and stay due).
    fn record(
        &self,
        store: &dyn Backend,
        now: DateTime<Utc>,
        outcomes: Vec<Outcome>,
        delivered: &mut Delivered,
    ) -> Result<bool, Error> {
        let mut reachable = true;
        let mut writes = Vec::with_capacity(outcomes.len());
        let mut pass = Delivered::default();
        for Outcome { oid, mut entry, was_due, result } in outcomes {
            let next = match result {
                Ok(()) => {
                    entry.status = Delivery::Sent;
                    let sent = Utc::now();
                    entry.sent_at = Some(sent);
                    crate::metrics::email_sent((sent - entry.created).to_std().unwrap_or_default());
                    entry.last_error = None;
                    pass.sent += 1;
                    None
                }
                Err(Failure { message, permanent, connection }) => {
                    tracing::warn!(outbox = oid, "Email not sent: {message}");
                    crate::metrics::smtp_error(connection);
                    entry.last_error = Some(message);
                    reachable &= !connection;
                    pass.unreachable |= connection;
                    if permanent || entry.attempts >= self.config.max_attempts {
                        entry.status = Delivery::Failed;
                        pass.failed += 1;
                        None
                    } else {
                        entry.next_attempt = now + self.backoff(entry.attempts);
                        pass.retrying += 1;
                        Some(entry.next_attempt)
                    }
                }
            };
            writes.push((oid, entry, was_due, next));
        }
        crate::store::patiently(store, "emails' outcomes", || store.update_outbox_batch(&writes))?;
        // Due entries are pending; those that ended moved on.
        super::tally::ended(writes.iter().map(|(_, e, _, _)| e.status).filter(|s| *s != Delivery::Pending));
        delivered.add(pass);
        Ok(reachable)
    }

    /// Delivers what is due every `poll` until `stop` is set: the server's
    /// mail loop, on a thread of its own.
    pub fn serve(&self, store: &dyn Backend, stop: &std::sync::atomic::AtomicBool, poll: Duration) {
        use std::sync::atomic::Ordering;
        while !stop.load(Ordering::SeqCst) {
            match self.deliver_due(store, Utc::now()) {
                Ok(d) if d.sent + d.retrying + d.failed > 0 => {
                    tracing::info!(sent = d.sent, retrying = d.retrying, failed = d.failed, "Outbox delivered.");
                }
                Ok(_) => {}
                Err(e) => tracing::error!("Outbox delivery failed: {e}"),
            }
            let until = std::time::Instant::now() + poll;
            while !stop.load(Ordering::SeqCst) && std::time::Instant::now() < until {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// The delay before attempt `attempts + 1`.
    fn backoff(&self, attempts: u32) -> chrono::Duration {
        let secs = self.config.retry_base_secs.max(1).saturating_mul(1 << attempts.saturating_sub(1).min(20));
        chrono::Duration::seconds(secs.min(6 * 3600) as i64)
    }

    /// The message for an entry, with its stable `Message-ID`.
    fn message(&self, oid: u64, entry: &OutboxEntry) -> Result<(lettre::address::Envelope, Vec<u8>), Failure> {
        let to: Mailbox = entry.to.parse().map_err(|e| Failure {
            message: format!("`{}` is not an email address: {e}", entry.to),
            permanent: true,
            connection: false,
        })?;
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(entry.subject.clone())
            .message_id(Some(format!("<outbox-{oid}.run-{}@schoolbell>", entry.run)))
            .body(entry.body.clone())
            .map_err(|e| Failure {
                message: format!("cannot build the message: {e}"),
                permanent: true,
                connection: false,
            })?;
        Ok((message.envelope().clone(), message.formatted()))
    }
}

impl Drop for Mailer {
    fn drop(&mut self) {
        // Say goodbye on the connections still open.
        for slot in &self.slots {
            let mut slot = slot.lock().unwrap_or_else(|e| e.into_inner());
            let Slot { runtime, conn } = &mut *slot;
            if let Some(mut c) = conn.take() {
                runtime.block_on(async {
                    let _ = c.smtp.quit().await;
                });
            }
        }
    }
}

/// A TLS stream as lettre takes an existing connection: for TLS from the
/// first byte over a socket with `TCP_NODELAY` set.
#[derive(Debug)]
struct Wrapped(tokio_native_tls::TlsStream<tokio::net::TcpStream>);

impl tokio::io::AsyncRead for Wrapped {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Wrapped {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl AsyncTokioStream for Wrapped {
    fn peer_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.0.get_ref().get_ref().get_ref().peer_addr()
    }
}

#[derive(Debug)]
struct Failure {
    message: String,
    permanent: bool,
    connection: bool,
}

impl Failure {
    fn connection(message: String) -> Failure {
        Failure { message, permanent: false, connection: true }
    }

    fn from_smtp(e: &lettre::transport::smtp::Error) -> Failure {
        Failure {
            message: e.to_string(),
            permanent: e.is_permanent(),
            connection: !e.is_permanent() && !e.is_transient(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_throttled_relay_gets_pages_it_sends_within_the_page_time() {
        assert_eq!(first_page(0), PAGE_MIN, "unthrottled: the usual first page");
        assert_eq!(first_page(1), 60, "1 email/s: a minute's worth");
        assert_eq!(first_page(3), 180);
        assert_eq!(first_page(100), PAGE_MIN, "fast enough: never more than the usual first page");
        assert_eq!(first_page(u32::MAX), PAGE_MIN);
    }
}
