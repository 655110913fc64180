//! The connection under lettre, sending a message's body and its closing
//! dot as one write. lettre writes and flushes them apart, so with
//! `TCP_NODELAY` each message costs the server an extra segment and an
//! extra wakeup. Commands and replies pass through as they are, but for
//! one: where the server offers `PIPELINING` (RFC 2920), the `RSET`
//! between two messages goes out with the next message's `MAIL` instead
//! of as a round trip of its own (lettre sends a command and waits for
//! its reply, so only a command sent here can ride along), and its reply
//! is taken off the stream here.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use lettre::transport::smtp::client::AsyncTokioStream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What the mailer and the stream under its lettre connection share.
#[derive(Debug, Default)]
pub(super) struct Pipeline {
    /// The server's `EHLO` reply offered `PIPELINING`.
    offered: AtomicBool,
    /// An `RSET` waits to go out with the next command.
    rset: AtomicBool,
}

impl Pipeline {
    /// Sends `RSET` with the next command, if the server pipelines; false
    /// if it does not, and the caller sends it alone.
    pub(super) fn rset_ahead(&self) -> bool {
        let offered = self.offered.load(Ordering::SeqCst);
        if offered {
            self.rset.store(true, Ordering::SeqCst);
        }
        offered
    }
}

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
    pipeline: Arc<Pipeline>,
    /// `EHLO` went out: its reply, gathered until its last line.
    hello: Option<Vec<u8>>,
    /// A pipelined `RSET` went out: its reply comes first, and stays here.
    rset_reply: bool,
    /// Read past the end of the `RSET` reply: lettre's, handed on first.
    ahead: Vec<u8>,
}

impl<S> Coalesced<S> {
    pub(super) fn new(inner: S) -> Self {
        Coalesced {
            inner,
            out: Vec::new(),
            sent: 0,
            data_sent: false,
            in_body: false,
            pipeline: Arc::default(),
            hello: None,
            rset_reply: false,
            ahead: Vec::new(),
        }
    }

    /// What the mailer uses to send `RSET` ahead.
    pub(super) fn pipeline(&self) -> Arc<Pipeline> {
        self.pipeline.clone()
    }

    /// Takes the pipelined `RSET`'s reply off the front of what was read
    /// into `ahead` once it is all there (clearing `rset_reply`); an error
    /// if it refused.
    fn take_rset_reply(&mut self) -> io::Result<()> {
        let Some(end) = reply_end(&self.ahead) else { return Ok(()) };
        if !self.ahead.starts_with(b"2") {
            let reply = String::from_utf8_lossy(&self.ahead[..end]).trim_end().to_string();
            return Err(io::Error::other(format!("the server refused RSET: {reply}")));
        }
        self.ahead.drain(..end);
        self.rset_reply = false;
        Ok(())
    }

    /// Notes `PIPELINING` in the `EHLO` reply read so far.
    fn hear_hello(&mut self, read: &[u8]) {
        let Some(reply) = self.hello.as_mut() else { return };
        reply.extend_from_slice(read);
        if reply_end(reply).is_some() {
            let offered = reply
                .split(|b| *b == b'\n')
                .any(|line| line.get(4..).is_some_and(|k| k.trim_ascii().eq_ignore_ascii_case(b"PIPELINING")));
            self.pipeline.offered.store(offered, Ordering::SeqCst);
            self.hello = None;
        }
    }
}

/// Where the first reply in `read` ends (after its last line: a code and a
/// space, not a dash), if it is all there.
fn reply_end(read: &[u8]) -> Option<usize> {
    let mut start = 0;
    while let Some(n) = read[start..].iter().position(|b| *b == b'\n') {
        let line = &read[start..start + n + 1];
        start += n + 1;
        if line.get(3) != Some(&b'-') {
            return Some(start);
        }
    }
    None
}

impl<S: AsyncRead + Unpin> AsyncRead for Coalesced<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        while this.rset_reply {
            let mut chunk = [0u8; 1024];
            let mut read = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
            }
            this.ahead.extend_from_slice(read.filled());
            this.take_rset_reply()?;
        }
        let before = buf.filled().len();
        if this.ahead.is_empty() {
            ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        } else {
            let n = this.ahead.len().min(buf.remaining());
            buf.put_slice(&this.ahead[..n]);
            this.ahead.drain(..n);
        }
        if this.hello.is_some() {
            let read = buf.filled()[before..].to_vec();
            this.hear_hello(&read);
        }
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
        if this.sent == 0 && !this.in_body && !this.out.is_empty() {
            if this.pipeline.rset.swap(false, Ordering::SeqCst) {
                this.out.splice(0..0, *b"RSET\r\n");
                this.rset_reply = true;
            }
            let command = this.out.get(..5).unwrap_or_default();
            if command.eq_ignore_ascii_case(b"EHLO ") {
                this.hello = Some(Vec::new());
            }
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
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    /// `command` from the client, `reply` from the server: what the server
    /// read, and what the client read back.
    async fn exchange(
        c: &mut Coalesced<DuplexStream>,
        server: &mut DuplexStream,
        command: &[u8],
        reply: &[u8],
    ) -> (Vec<u8>, Vec<u8>) {
        let mut buf = [0u8; 256];
        c.write_all(command).await.unwrap();
        c.flush().await.unwrap();
        let n = server.read(&mut buf).await.unwrap();
        let heard = buf[..n].to_vec();
        server.write_all(reply).await.unwrap();
        let n = c.read(&mut buf).await.unwrap();
        (heard, buf[..n].to_vec())
    }

    /// The body and its dot reach the server in one read; a refused DATA
    /// holds nothing back.
    #[tokio::test]
    async fn a_body_and_its_dot_go_out_together_and_a_refused_data_holds_nothing() {
        let (client, mut server) = tokio::io::duplex(4096);
        let mut c = Coalesced::new(client);
        let mut buf = [0u8; 256];

        let (heard, _) = exchange(&mut c, &mut server, b"DATA\r\n", b"354 go ahead\r\n").await;
        assert_eq!(heard, b"DATA\r\n");
        c.write_all(b"Subject: x\r\n\r\nbody\r\n").await.unwrap();
        c.flush().await.unwrap();
        c.write_all(b"\r\n.\r\n").await.unwrap();
        c.flush().await.unwrap();
        let n = server.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"Subject: x\r\n\r\nbody\r\n\r\n.\r\n", "one write");

        exchange(&mut c, &mut server, b"DATA\r\n", b"554 no\r\n").await;
        c.write_all(b"RSET\r\n").await.unwrap();
        c.flush().await.unwrap();
        let n = server.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"RSET\r\n", "sent at its flush");
    }

    /// Where `EHLO` offers PIPELINING, an RSET asked for goes out in the
    /// same write as the next command, and lettre reads only that
    /// command's reply; a refused RSET is an error, not a reply to MAIL.
    #[tokio::test]
    async fn a_pipelined_rset_rides_with_mail_and_its_reply_never_reaches_lettre() {
        let (client, mut server) = tokio::io::duplex(4096);
        let mut c = Coalesced::new(client);
        let pipeline = c.pipeline();
        let mut buf = [0u8; 256];
        assert!(!pipeline.rset_ahead(), "nothing offered yet");

        let offer = b"250-sink.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n";
        let (_, heard) = exchange(&mut c, &mut server, b"EHLO bell\r\n", offer).await;
        assert_eq!(heard, offer);
        assert!(pipeline.rset_ahead(), "PIPELINING was offered");

        let mail = b"MAIL FROM:<bell@district.test>\r\n";
        let (sent, heard) = exchange(&mut c, &mut server, mail, b"250 reset\r\n250 sender ok\r\n").await;
        assert_eq!(sent, b"RSET\r\nMAIL FROM:<bell@district.test>\r\n", "one write");
        assert_eq!(heard, b"250 sender ok\r\n");

        assert!(pipeline.rset_ahead());
        c.write_all(b"MAIL FROM:<bell@district.test>\r\n").await.unwrap();
        c.flush().await.unwrap();
        let _ = server.read(&mut buf).await.unwrap();
        server.write_all(b"503 not now\r\n250 sender ok\r\n").await.unwrap();
        let refused = c.read(&mut buf).await.unwrap_err();
        assert!(refused.to_string().contains("refused RSET: 503 not now"), "{refused}");
    }

    #[tokio::test]
    async fn without_pipelining_offered_no_rset_is_held_for_the_next_command() {
        let (client, mut server) = tokio::io::duplex(4096);
        let mut c = Coalesced::new(client);
        let mut buf = [0u8; 256];
        exchange(&mut c, &mut server, b"EHLO bell\r\n", b"250-sink.test\r\n250 8BITMIME\r\n").await;
        assert!(!c.pipeline().rset_ahead(), "the caller sends RSET itself");
        c.write_all(b"RSET\r\n").await.unwrap();
        c.flush().await.unwrap();
        let n = server.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"RSET\r\n");
    }
}
