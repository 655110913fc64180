//! The mailer: drains the outbox over SMTP with lettre.
//!
//! Each due entry is sent on a pooled connection; the server's acceptance
//! is recorded (and flushed) before the next entry, so a crash never makes
//! the mailer send an accepted email again, except within the instant
//! between the server's reply and that write. Every message carries a
//! stable `Message-ID` (`<outbox-ID.run-RUN@schoolbell>`) so a receiving
//! system can drop such a duplicate. A refusal the server calls permanent
//! fails the entry; anything else is retried with exponential backoff
//! until `max_attempts`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::transport::smtp::{PoolConfig, SmtpTransport};
use lettre::{Message, Transport};
use serde::Deserialize;

use super::{Delivery, OutboxEntry};
use crate::store::{self, Backend};

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
    transport: SmtpTransport,
    from: Mailbox,
    config: EmailConfig,
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
                Some(lettre::transport::smtp::client::Certificate::from_pem(&pem).map_err(|e| {
                    Error::Config(format!("tls_certificate {}: not a PEM certificate: {e}", path.display()))
                })?)
            }
        };
        let tls = |host: &str| {
            let mut builder = TlsParameters::builder(host.to_string());
            if let Some(cert) = &pinned {
                builder = builder.add_root_certificate(cert.clone());
            }
            builder.build().map_err(|e| Error::Config(format!("cannot set up TLS for {host}: {e}")))
        };
        let tls = match config.tls {
            TlsMode::None => Tls::None,
            TlsMode::Starttls => Tls::Required(tls(&config.smtp_host)?),
            TlsMode::Tls => Tls::Wrapper(tls(&config.smtp_host)?),
        };
        let mut builder = SmtpTransport::builder_dangerous(&config.smtp_host)
            .port(config.smtp_port)
            .tls(tls)
            .timeout(Some(Duration::from_secs(config.timeout_secs)))
            .pool_config(PoolConfig::new().max_size(config.pool_size.max(1)));
        match (&config.username, password) {
            (Some(user), Some(password)) => builder = builder.credentials(Credentials::new(user.clone(), password)),
            (Some(_), None) => {
                return Err(Error::Config("`username` is set but `password_secret` is not".into()));
            }
            _ => {}
        }
        Ok(Some(Mailer { transport: builder.build(), from, config: config.clone() }))
    }

    /// Sends every entry due at `now`, oldest first, recording each
    /// outcome durably as it goes.
    pub fn deliver_due(&self, store: &dyn Backend, now: DateTime<Utc>) -> Result<Delivered, Error> {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let mut delivered = Delivered::default();
        loop {
            let mut due = store.outbox_due(now, 256)?.into_iter();
            // The first alone: when the server is down, one attempt says so.
            let Some(first) = due.next() else { return Ok(delivered) };
            if !self.attempt(store, now, first, &mut delivered)? {
                return Ok(delivered);
            }
            // The rest over the pool's connections at once: each SMTP
            // exchange mostly waits on the network.
            let rest: Vec<(u64, OutboxEntry)> = due.collect();
            let next = AtomicUsize::new(0);
            let stop = AtomicBool::new(false);
            let shared = std::sync::Mutex::new((Delivered::default(), None::<Error>));
            std::thread::scope(|scope| {
                for _ in 0..self.config.pool_size.max(1) {
                    scope.spawn(|| {
                        let mut mine = Delivered::default();
                        let mut failure = None;
                        while !stop.load(Ordering::SeqCst) {
                            let Some(item) = rest.get(next.fetch_add(1, Ordering::SeqCst)) else { break };
                            match self.attempt(store, now, item.clone(), &mut mine) {
                                Ok(true) => {}
                                Ok(false) => stop.store(true, Ordering::SeqCst),
                                Err(e) => {
                                    stop.store(true, Ordering::SeqCst);
                                    failure = Some(e);
                                }
                            }
                        }
                        let mut all = shared.lock().unwrap_or_else(|e| e.into_inner());
                        all.0.add(mine);
                        if all.1.is_none() {
                            all.1 = failure;
                        }
                    });
                }
            });
            let (pass, failure) = shared.into_inner().unwrap_or_else(|e| e.into_inner());
            delivered.add(pass);
            if let Some(e) = failure {
                return Err(e);
            }
            if delivered.unreachable {
                return Ok(delivered);
            }
        }
    }

    /// Sends one entry and records the outcome durably. False when the
    /// server could not be reached (the rest would fail the same way and
    /// stay due).
    fn attempt(
        &self,
        store: &dyn Backend,
        now: DateTime<Utc>,
        (oid, mut entry): (u64, OutboxEntry),
        delivered: &mut Delivered,
    ) -> Result<bool, Error> {
        let was_due = entry.next_attempt;
        entry.attempts += 1;
        match self.send(oid, &entry) {
            Ok(()) => {
                entry.status = Delivery::Sent;
                entry.sent_at = Some(Utc::now());
                entry.last_error = None;
                store.update_outbox(oid, &entry, was_due, None)?;
                delivered.sent += 1;
                Ok(true)
            }
            Err(Failure { message, permanent, connection }) => {
                tracing::warn!(outbox = oid, to = %entry.to, "Email not sent: {message}");
                entry.last_error = Some(message);
                let next = if permanent || entry.attempts >= self.config.max_attempts {
                    entry.status = Delivery::Failed;
                    delivered.failed += 1;
                    None
                } else {
                    entry.next_attempt = now + self.backoff(entry.attempts);
                    delivered.retrying += 1;
                    Some(entry.next_attempt)
                };
                store.update_outbox(oid, &entry, was_due, next)?;
                delivered.unreachable |= connection;
                Ok(!connection)
            }
        }
    }

    /// Delivers what is due every `poll` until `stop` is set: the server's
    /// mail loop, on a thread of its own because SMTP calls block.
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

    fn send(&self, oid: u64, entry: &OutboxEntry) -> Result<(), Failure> {
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
        self.transport.send(&message).map(|_| ()).map_err(|e| Failure {
            message: e.to_string(),
            permanent: e.is_permanent(),
            connection: !e.is_permanent() && !e.is_transient(),
        })
    }
}

struct Failure {
    message: String,
    permanent: bool,
    connection: bool,
}
