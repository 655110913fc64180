//! The store's pooled connections, each driven by the thread that uses it.
//!
//! `deadpool-postgres` runs every connection as a task on a shared runtime:
//! a statement then hops from the calling thread to that task and its
//! answer hops back, two wake-ups a round trip, and on two cores the hops
//! and the runtime's threads cost about as much as the statements (a
//! profile of the queue on PostgreSQL: 18% in the connection threads, 22%
//! idle between hops). Here each connection has its own single-threaded
//! runtime, and a caller runs its statements *and* the connection on it, on
//! its own thread, as the synchronous `postgres` crate does: the socket is
//! written and read where the statement is made.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use deadpool::managed::{Metrics, RecycleError, RecycleResult};
use deadpool_postgres::ClientWrapper;
use tokio_postgres::Socket;

use super::tls::{Stream, Tls};

/// Makes and checks the pool's connections.
pub(super) struct Connector {
    pub(super) pg: tokio_postgres::Config,
    pub(super) tls: Tls,
}

/// A connection could not be made.
#[derive(Debug, thiserror::Error)]
pub(super) enum ConnectError {
    #[error(transparent)]
    Driver(#[from] tokio_postgres::Error),
    #[error("cannot start a connection's runtime: {0}")]
    Runtime(std::io::Error),
}

pub(super) type Pool = deadpool::managed::Pool<Connector>;
pub(super) type PoolError = deadpool::managed::PoolError<ConnectError>;

/// One connection: its client, the connection itself (the half that
/// reads and writes the socket), and the runtime both run on.
pub(super) struct Conn {
    client: ClientWrapper,
    /// `None` once it ended: the client is closed then, and the pool drops it.
    connection: Option<Pin<Box<tokio_postgres::Connection<Socket, Stream>>>>,
    /// `None` only while dropping.
    runtime: Option<tokio::runtime::Runtime>,
}

impl Conn {
    /// Runs `work` with the client to its end on the calling thread,
    /// driving the connection meanwhile. Blocks; may be called from a
    /// multi-threaded runtime's task (it steps aside from the runtime as
    /// `block_in_place` does), not from a single-threaded runtime's.
    pub(super) fn drive<T>(&mut self, work: impl AsyncFnOnce(&mut ClientWrapper) -> T) -> T {
        let Conn { client, connection, runtime } = self;
        let Some(runtime) = runtime else { unreachable!("a connection's runtime goes only when it is dropped") };
        tokio::task::block_in_place(|| {
            runtime.block_on(async {
                let mut work = std::pin::pin!(work(client));
                std::future::poll_fn(|cx| {
                    // The connection sends what the work asks and hands
                    // back the answers; once it ends, the work's waiting
                    // requests fail, so the work ends too.
                    step(connection, cx);
                    work.as_mut().poll(cx)
                })
                .await
            })
        })
    }

    /// Whether the connection ended while it sat in the pool (the server
    /// restarted, or closed it): nobody drove it meanwhile, so it reads
    /// what came, without waiting. A statement sent on a connection that
    /// is found closed only then cannot tell whether it took effect.
    fn ended(&mut self) -> bool {
        // The work yields once: the runtime looks at the socket, and the
        // connection reads what came.
        self.drive(async |_| tokio::task::yield_now().await);
        self.connection.is_none() || self.client.is_closed()
    }
}

/// Polls the connection once, dropping it if it ended.
fn step(
    connection: &mut Option<Pin<Box<tokio_postgres::Connection<Socket, Stream>>>>,
    cx: &mut std::task::Context<'_>,
) {
    if let Some(c) = connection
        && let Poll::Ready(ended) = c.as_mut().poll(cx)
    {
        if let Err(e) = ended {
            tracing::debug!("A database connection ended: {e}");
        }
        *connection = None;
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // Without waiting: the connection may be dropped on a runtime's thread.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl deadpool::managed::Manager for Connector {
    type Type = Conn;
    type Error = ConnectError;

    async fn create(&self) -> Result<Conn, ConnectError> {
        let runtime =
            tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(ConnectError::Runtime)?;
        // The socket belongs to the runtime it is made on.
        let (client, connection) = tokio::task::block_in_place(|| runtime.block_on(self.pg.connect(self.tls.clone())))?;
        // The wrapper aborts its connection's task when dropped; this
        // connection has none, so it gets one that does nothing.
        let nothing = runtime.spawn(async {});
        Ok(Conn {
            client: ClientWrapper::new(client, nothing),
            connection: Some(Box::pin(connection)),
            runtime: Some(runtime),
        })
    }

    async fn recycle(&self, conn: &mut Conn, _: &Metrics) -> RecycleResult<ConnectError> {
        if conn.ended() {
            return Err(RecycleError::message("the connection was closed"));
        }
        Ok(())
    }
}
