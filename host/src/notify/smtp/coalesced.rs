//! The connection under lettre, sending a message's body and its closing
//! dot as one write. lettre writes and flushes them apart, so with
//! `TCP_NODELAY` each message costs the server an extra segment and an
//! extra wakeup. Commands and replies pass through as they are.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use lettre::transport::smtp::client::AsyncTokioStream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Buffers writes until a flush; holds a message body's flush until its
/// closing `\r\n.\r\n` is written too. Dot-stuffing keeps that sequence
/// out of any body, so it ends one exactly.
#[derive(Debug)]
pub(super) struct Coalesced<S> {
    inner: S,
    out: Vec<u8>,
    sent: usize,
    /// `DATA` went out; its reply says whether a body follows.
    data_sent: bool,
    /// The server said 354: what is written now is the body.
    in_body: bool,
}

impl<S> Coalesced<S> {
    pub(super) fn new(inner: S) -> Self {
        Coalesced { inner, out: Vec::new(), sent: 0, data_sent: false, in_body: false }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Coalesced<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        if this.data_sent && buf.filled().len() > before {
            // A 3xx reply to DATA (354) lets the body through; anything
            // else refused it, and no body follows.
            this.in_body = buf.filled()[before] == b'3';
            this.data_sent = false;
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Coalesced<S> {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.get_mut().out.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.sent == 0 && this.in_body && !this.out.ends_with(b"\r\n.\r\n") {
            // The body without its dot: it goes out with the dot.
            return Poll::Ready(Ok(()));
        }
        while this.sent < this.out.len() {
            let n = ready!(Pin::new(&mut this.inner).poll_write(cx, &this.out[this.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            this.sent += n;
        }
        if this.in_body {
            this.in_body = false;
        } else if this.out.eq_ignore_ascii_case(b"DATA\r\n") {
            this.data_sent = true;
        }
        this.out.clear();
        this.sent = 0;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // What is held goes out first.
        self.in_body = false;
        ready!(self.as_mut().poll_flush(cx))?;
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<S: AsyncTokioStream> AsyncTokioStream for Coalesced<S> {
    fn peer_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.inner.peer_addr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// The body and its dot reach the server in one read; a refused DATA
    /// holds nothing back.
    #[tokio::test]
    async fn a_body_and_its_dot_go_out_together_and_a_refused_data_holds_nothing() {
        let (client, mut server) = tokio::io::duplex(4096);
        let mut c = Coalesced::new(client);
        let mut buf = [0u8; 256];

        c.write_all(b"DATA\r\n").await.unwrap();
        c.flush().await.unwrap();
        let n = server.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"DATA\r\n");
        server.write_all(b"354 go ahead\r\n").await.unwrap();
        let _ = c.read(&mut buf).await.unwrap();
        c.write_all(b"Subject: x\r\n\r\nbody\r\n").await.unwrap();
        c.flush().await.unwrap();
        c.write_all(b"\r\n.\r\n").await.unwrap();
        c.flush().await.unwrap();
        let n = server.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"Subject: x\r\n\r\nbody\r\n\r\n.\r\n", "one write");

        c.write_all(b"DATA\r\n").await.unwrap();
        c.flush().await.unwrap();
        let _ = server.read(&mut buf).await.unwrap();
        server.write_all(b"554 no\r\n").await.unwrap();
        let _ = c.read(&mut buf).await.unwrap();
        c.write_all(b"RSET\r\n").await.unwrap();
        c.flush().await.unwrap();
        let n = server.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"RSET\r\n", "sent at its flush");
    }
}
