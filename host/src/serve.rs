//! `schoolbell serve`: the scheduler, the worker pool and the HTTP API in
//! one process, until SIGTERM or Ctrl-C. Shutdown is graceful: no new runs
//! start, running ones are asked to stop (and interrupted after the grace
//! period), and whatever did not finish is marked interrupted, never lost.

use std::sync::Arc;

use anyhow::{Context, Result};
use schoolbell::app::App;

/// Whether the API may listen on `addr` as configured: on loopback always;
/// elsewhere only with TLS, or when the operator says the network is
/// protected otherwise.
fn check_listen(addr: std::net::SocketAddr, tls: bool, insecure: bool) -> Result<()> {
    if addr.ip().is_loopback() || tls || insecure {
        return Ok(());
    }
    anyhow::bail!(
        "refusing to serve tokens and student records in clear on {addr}: set [api] tls_cert and tls_key in schoolbell.toml, listen on 127.0.0.1 behind a TLS proxy, or pass --insecure-listen if the network is protected otherwise"
    )
}

/// The TLS settings of `[api]`, when both files are set.
async fn tls_config(app: &App) -> Result<Option<axum_server::tls_rustls::RustlsConfig>> {
    let api = &app.config().api;
    let (cert, key) = match (&api.tls_cert, &api.tls_key) {
        (None, None) => return Ok(None),
        (Some(c), Some(k)) => (c.clone(), k.clone()),
        _ => anyhow::bail!("[api] tls_cert and tls_key go together: set both, or neither"),
    };
    // One process-wide crypto provider: ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = axum_server::tls_rustls::RustlsConfig::from_pem_file(&cert, &key).await.with_context(|| {
        format!("cannot read the API's TLS certificate {} and key {}", cert.display(), key.display())
    })?;
    Ok(Some(config))
}

pub(crate) fn run(
    app: Arc<App>,
    listen: Option<String>,
    insecure: bool,
    logging: crate::logging::Logging,
) -> Result<()> {
    let data = app.data_dir().context("serve needs a data directory")?.to_path_buf();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        // On a shared store, other hosts' runs are running now: a run is
        // settled when its lease lapses instead.
        let interrupted = if app.storage().shared() { 0 } else { app.engine().recover()? };
        if interrupted > 0 {
            tracing::warn!(interrupted, "Runs left running by the last process were marked interrupted.");
        }
        let addr = listen.unwrap_or_else(|| app.config().api.listen.clone());
        let tls = tls_config(&app).await?;
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("cannot listen on {addr}; pick another with --listen or `[api] listen`"))?;
        let local = listener.local_addr()?;
        check_listen(local, tls.is_some(), insecure)?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let info = serde_json::json!({ "pid": std::process::id(), "listen": local.to_string(), "scheme": scheme });
        std::fs::write(data.join("serve.json"), info.to_string())?;
        println!(
            "schoolbell serving on {scheme}://{local} (API: {scheme}://{local}/api/v1/openapi.json); SIGTERM or Ctrl-C stops it"
        );
        tracing::info!(%local, "Serving.");

        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let socket = data.join(crate::local::SOCKET);
        let local_cli = tokio::spawn(serve_cli(app.clone(), bind_socket(&socket)?, stop_rx.clone()));
        let scheduler = tokio::spawn(app.engine().serve(stop_rx.clone()));
        let mut api_stop = stop_rx.clone();
        let router = schoolbell::api::router(app.clone());
        let handle = axum_server::Handle::new();
        let stopper = handle.clone();
        tokio::spawn(async move {
            let _ = api_stop.wait_for(|stop| *stop).await;
            stopper.graceful_shutdown(Some(std::time::Duration::from_secs(10)));
        });
        let api = match tls {
            None => {
                let mut server = axum_server::from_tcp(listener.into_std()?).handle(handle);
                bounded_connections(server.http_builder(), &app);
                let service = router.into_make_service_with_connect_info::<std::net::SocketAddr>();
                tokio::spawn(async move { server.serve(service).await })
            }
            Some(tls) => {
                let mut server = axum_server::from_tcp_rustls(listener.into_std()?, tls).handle(handle);
                bounded_connections(server.http_builder(), &app);
                let service = router.into_make_service_with_connect_info::<std::net::SocketAddr>();
                tokio::spawn(async move { server.serve(service).await })
            }
        };
        let mail_stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mail = match app.outbox().mailer()? {
            Some(mailer) => {
                let (app, stop) = (app.clone(), mail_stop.clone());
                Some(std::thread::spawn(move || app.outbox().serve(&mailer, &stop)))
            }
            None => {
                tracing::warn!("No [email] smtp_host is set: emails wait in the outbox unsent.");
                None
            }
        };

        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut hangup = signal(SignalKind::hangup())?;
        // Under systemd (`Type=notify`): ready once the API listens and
        // the scheduler runs. Elsewhere there is no socket and this does nothing.
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = tokio::signal::ctrl_c() => break,
                _ = hangup.recv() => reload(&app, &logging),
            }
        }
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
        tracing::info!("Shutting down.");
        let _ = stop_tx.send(true);
        let _ = scheduler.await;
        let _ = api.await;
        mail_stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(mail) = mail {
            let _ = mail.join();
        }
        let _ = local_cli.await;
        let _ = std::fs::remove_file(&socket);
        let _ = std::fs::remove_file(data.join("serve.json"));
        app.flush()?;
        say("schoolbell stopped");
        Ok(())
    })
}

/// `SIGHUP`: the rules and the log filter again from their files; keys
/// that need a restart are named in the log, and left as they were.
fn reload(app: &App, logging: &crate::logging::Logging) {
    match app.reload() {
        Ok(done) => {
            logging.reload(&done.log);
            tracing::info!(rules = done.rules, "Reloaded the rules and [log] filter (SIGHUP).");
            if !done.restart.is_empty() {
                tracing::warn!(
                    keys = %done.restart.join(", "),
                    "These changed keys take effect only after a restart: {}",
                    done.restart.join(", ")
                );
            }
        }
        Err(e) => tracing::error!("Reload (SIGHUP) failed; nothing changed: {e}"),
    }
}

/// The CLI's socket, readable and writable by this account only.
fn bind_socket(path: &std::path::Path) -> Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    // A socket left by a server that was killed: nothing listens on it.
    let _ = std::fs::remove_file(path);
    let listener =
        tokio::net::UnixListener::bind(path).with_context(|| format!("cannot listen on {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Runs the commands CLIs send over the socket, one thread each, until stopped.
async fn serve_cli(app: Arc<App>, listener: tokio::net::UnixListener, mut stop: tokio::sync::watch::Receiver<bool>) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!("CLI socket: {e}");
                    continue;
                }
            },
            _ = stop.wait_for(|stop| *stop) => break,
        };
        let app = app.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            if tokio::io::BufReader::new(read).read_line(&mut line).await.is_err() {
                return;
            }
            let Ok(request) = serde_json::from_str::<crate::local::Request>(&line) else { return };
            // A plain thread: the command may start a runtime of its own
            // (`task run-now --wait`), which a runtime's thread may not.
            let (tx, rx) = tokio::sync::oneshot::channel();
            std::thread::spawn(move || {
                let _ = tx.send(crate::local::run(&app, request));
            });
            let Ok(response) = rx.await else { return };
            let mut answer = serde_json::to_vec(&response).unwrap_or_default();
            answer.push(b'\n');
            let _ = write.write_all(&answer).await;
        });
    }
}

/// Prints a line for whoever started the server. A closed stdout (the
/// starter went away) must not take the server down with it.
fn say(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// A client must send a request's headers within `[api]
/// header_read_timeout_secs`, and a kept-alive connection that stays idle
/// that long is closed: a client dribbling a byte a second (slowloris)
/// cannot hold a connection, and so a worker, for ever.
fn bounded_connections(
    builder: &mut hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>,
    app: &schoolbell::app::App,
) {
    let limit = std::time::Duration::from_secs(app.config().api.header_read_timeout_secs.max(1));
    builder.http1().timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(limit);
}
