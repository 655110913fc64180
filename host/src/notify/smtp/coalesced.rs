//! The connection under lettre, sending a message's body and its closing
//! dot as one write. lettre writes and flushes them apart, so with
//! `TCP_NODELAY` each message costs the server an extra segment and an
//! extra wakeup.
//!
//! Where the server offers `PIPELINING` (RFC 2920), a message's envelope
//! goes out as one command group too: lettre sends a command and waits for
//! its reply, so `MAIL` and `RCPT` are held here and answered at once, and
//! go out with `DATA` (and the `RSET` before them, that the mailer asks
//! for), one round trip instead of four. Their real replies are taken off
//! the stream here; the first refusal among them reaches lettre as the
//! reply to `DATA`, with its own code, so a refused recipient fails its
//! message as it would unpipelined.

use std::collections::VecDeque;
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

/// A reply the server owes for a command that went out ahead, which
/// lettre does not read.
#[derive(Debug, Clone, Copy)]
enum Owed {
    /// The `RSET` the mailer asked for: a refusal breaks the connection.
    Rset,
    /// `MAIL` or `RCPT`, answered to lettre when it was written: a refusal
    /// is handed on as the reply to `DATA`.
    Envelope,
}

/// What lettre reads for an envelope command held for `DATA`.
const HELD: &[u8] = b"250 2.0.0 Goes out with DATA\r\n";

/// Buffers writes until a flush; holds a message body's flush until its
/// closing `\r\n.\r\n` is written too. Dot-stuffing keeps that sequence
/// out of any body, so it ends one exactly.
#[derive(Debug)]
pub(super) struct Coalesced<S> {
    inner: S,
    out: Vec<u8>,
    sent: usize,
    /// Where the command written now starts in `out`; before it, the
    /// envelope commands held for `DATA`.
    command: usize,
    /// How many envelope commands `out` holds.
    held: usize,
    /// `DATA` went out; its reply says whether a body follows.
    data_sent: bool,
    /// The server said 354: what is written now is the body.
    in_body: bool,
    pipeline: Arc<Pipeline>,
    /// `EHLO` went out: its reply, gathered until its last line.
    hello: Option<Vec<u8>>,
    /// Replies owed for commands sent ahead, in order: they come before
    /// the reply lettre waits for, and stay here.
    owed: VecDeque<Owed>,
    /// The first envelope command the server refused: lettre reads it in
    /// place of `DATA`'s reply.
    refused: Option<Vec<u8>>,
    /// What lettre reads next, made here: replies to held commands, or a
    /// refusal.
    answered: Vec<u8>,
    /// Read from the server past the replies taken off here: lettre's.
    ahead: Vec<u8>,
    /// The server took `DATA` although it refused the envelope (no server
    /// keeping to RFC 2920 does, with one recipient): it waits for a body
    /// that must not go, so the connection ends.
    spoiled: bool,
}

impl<S> Coalesced<S> {
    pub(super) fn new(inner: S) -> Self {
        Coalesced {
            inner,
            out: Vec::new(),
            sent: 0,
            command: 0,
            held: 0,
            data_sent: false,
            in_body: false,
            pipeline: Arc::default(),
            hello: None,
            owed: VecDeque::new(),
            refused: None,
            answered: Vec::new(),
            ahead: Vec::new(),
            spoiled: false,
        }
    }

    /// What the mailer uses to send `RSET` ahead.
    pub(super) fn pipeline(&self) -> Arc<Pipeline> {
        self.pipeline.clone()
    }

    /// Takes the owed replies off the front of what was read, once each
    /// is all there; an error if the server refused an `RSET`.
    fn take_owed(&mut self) -> io::Result<()> {
        while let Some(owed) = self.owed.front().copied() {
            let Some(end) = reply_end(&self.ahead) else { return Ok(()) };
            let reply: Vec<u8> = self.ahead.drain(..end).collect();
            self.owed.pop_front();
            if reply.starts_with(b"2") {
                continue;
            }
            match owed {
                Owed::Rset => {
                    let reply = String::from_utf8_lossy(&reply).trim_end().to_string();
                    return Err(io::Error::other(format!("the server refused RSET: {reply}")));
                }
                Owed::Envelope => {
                    self.refused.get_or_insert(reply);
                }
            }
        }
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

fn starts_with(command: &[u8], verb: &[u8]) -> bool {
    command.get(..verb.len()).is_some_and(|c| c.eq_ignore_ascii_case(verb))
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

/// Hands `from` on into `buf`, as much as fits.
fn hand_on(from: &mut Vec<u8>, buf: &mut ReadBuf<'_>) {
    let n = from.len().min(buf.remaining());
    buf.put_slice(&from[..n]);
    from.drain(..n);
}

impl<S: AsyncRead + Unpin> Coalesced<S> {
    /// Reads what the server sent into `ahead`.
    fn fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut chunk = [0u8; 1024];
        let mut read = ReadBuf::new(&mut chunk);
        ready!(Pin::new(&mut self.inner).poll_read(cx, &mut read))?;
        if read.filled().is_empty() {
            return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
        }
        self.ahead.extend_from_slice(read.filled());
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Coalesced<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.answered.is_empty() {
            hand_on(&mut this.answered, buf);
            return Poll::Ready(Ok(()));
        }
        this.take_owed()?;
        while !this.owed.is_empty() {
            ready!(this.fill(cx))?;
            this.take_owed()?;
        }
        if this.refused.is_some() {
            // DATA's own reply goes too: lettre reads the refusal instead.
            let end = loop {
                match reply_end(&this.ahead) {
                    Some(end) => break end,
                    None => ready!(this.fill(cx))?,
                }
            };
            this.spoiled = this.ahead[0] == b'3';
            this.ahead.drain(..end);
            this.answered = this.refused.take().unwrap_or_default();
            this.data_sent = false;
            hand_on(&mut this.answered, buf);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        if this.ahead.is_empty() {
            ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        } else {
            hand_on(&mut this.ahead, buf);
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
        if this.sent == 0 && !this.in_body {
            if this.out.len() == this.command {
                // Nothing written since the held commands (or at all).
                return Poll::Ready(Ok(()));
            }
            if this.spoiled {
                return Poll::Ready(Err(io::Error::other(
                    "the server took DATA for a message whose envelope it refused; this connection is closed",
                )));
            }
            let command = &this.out[this.command..];
            let mail = starts_with(command, b"MAIL FROM:");
            if this.pipeline.offered.load(Ordering::SeqCst) && (mail || starts_with(command, b"RCPT TO:")) {
                if mail {
                    // A new envelope: whatever was held before it never went.
                    this.out.drain(..this.command);
                    this.held = 0;
                }
                this.held += 1;
                this.command = this.out.len();
                this.answered.extend_from_slice(HELD);
                return Poll::Ready(Ok(()));
            }
            if starts_with(command, b"EHLO ") {
                this.hello = Some(Vec::new());
            }
            this.data_sent = command.eq_ignore_ascii_case(b"DATA\r\n");
            if this.pipeline.rset.swap(false, Ordering::SeqCst) {
                this.out.splice(0..0, *b"RSET\r\n");
                this.owed.push_back(Owed::Rset);
            }
            this.owed.extend(std::iter::repeat_n(Owed::Envelope, this.held));
            this.held = 0;
        }
        while this.sent < this.out.len() {
            let n = ready!(Pin::new(&mut this.inner).poll_write(cx, &this.out[this.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            this.sent += n;
        }
        this.in_body = false;
        this.out.clear();
        this.sent = 0;
        this.command = 0;
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

    /// Whether nothing has reached `server` (yet).
    fn nothing_sent(server: &mut DuplexStream) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut buf = [0u8; 16];
        Pin::new(server).poll_read(&mut cx, &mut ReadBuf::new(&mut buf)).is_pending()
    }

    /// What lettre writes and reads for one message's envelope (`MAIL`,
    /// `RCPT` and `DATA`, each waiting for its reply), against a server
    /// that reads what came in one write and answers `replies`: what the
    /// server read, and lettre's reply to `DATA`.
    async fn envelope(
        c: &mut Coalesced<DuplexStream>,
        server: &mut DuplexStream,
        replies: &[u8],
    ) -> (Vec<u8>, Vec<u8>) {
        let mut buf = [0u8; 512];
        for command in [&b"MAIL FROM:<bell@district.test>\r\n"[..], b"RCPT TO:<ada@district.test>\r\n"] {
            c.write_all(command).await.unwrap();
            c.flush().await.unwrap();
            let n = c.read(&mut buf).await.unwrap();
            assert_eq!(&buf[..n], HELD, "answered here");
            assert!(nothing_sent(server), "held for DATA");
        }
        exchange(c, server, b"DATA\r\n", replies).await
    }

    /// Where `EHLO` offers PIPELINING, a message's envelope and the RSET
    /// asked for before it go out in one write with DATA, and lettre
    /// reads only DATA's reply; a refused RSET is an error, not a reply.
    #[tokio::test]
    async fn a_pipelined_envelope_goes_out_with_data_and_lettre_reads_only_its_reply() {
        let (client, mut server) = tokio::io::duplex(4096);
        let mut c = Coalesced::new(client);
        let pipeline = c.pipeline();
        assert!(!pipeline.rset_ahead(), "nothing offered yet");

        let offer = b"250-sink.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n";
        let (_, heard) = exchange(&mut c, &mut server, b"EHLO bell\r\n", offer).await;
        assert_eq!(heard, offer);
        assert!(pipeline.rset_ahead(), "PIPELINING was offered");

        let replies = b"250 reset\r\n250 sender ok\r\n250 recipient ok\r\n354 go ahead\r\n";
        let (sent, heard) = envelope(&mut c, &mut server, replies).await;
        assert_eq!(
            sent, b"RSET\r\nMAIL FROM:<bell@district.test>\r\nRCPT TO:<ada@district.test>\r\nDATA\r\n",
            "one write"
        );
        assert_eq!(heard, b"354 go ahead\r\n");
        let (sent, heard) = exchange(&mut c, &mut server, b"body\r\n.\r\n", b"250 queued\r\n").await;
        assert_eq!((&sent[..], &heard[..]), (&b"body\r\n.\r\n"[..], &b"250 queued\r\n"[..]));

        assert!(pipeline.rset_ahead());
        let mut buf = [0u8; 256];
        for command in [&b"MAIL FROM:<bell@district.test>\r\n"[..], b"RCPT TO:<ada@district.test>\r\n", b"DATA\r\n"] {
            c.write_all(command).await.unwrap();
            c.flush().await.unwrap();
        }
        let n = c.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], [HELD, HELD].concat(), "MAIL's and RCPT's");
        let _ = server.read(&mut buf).await.unwrap();
        server.write_all(b"503 not now\r\n250 sender ok\r\n250 recipient ok\r\n354 go\r\n").await.unwrap();
        let refused = c.read(&mut buf).await.unwrap_err();
        assert!(refused.to_string().contains("refused RSET: 503 not now"), "{refused}");
    }

    /// A stream whose server offered PIPELINING, and that server.
    async fn pipelining() -> (Coalesced<DuplexStream>, DuplexStream) {
        let (client, mut server) = tokio::io::duplex(4096);
        let mut c = Coalesced::new(client);
        exchange(&mut c, &mut server, b"EHLO bell\r\n", b"250-sink.test\r\n250 PIPELINING\r\n").await;
        (c, server)
    }

    /// A recipient refused in a pipelined envelope reaches lettre as the
    /// reply to DATA, with its own code (permanent or not), and the next
    /// message goes on the same connection.
    #[tokio::test]
    async fn a_refused_recipient_reaches_lettre_as_the_reply_to_data() {
        let (mut c, mut server) = pipelining().await;

        let replies = b"250 sender ok\r\n550 5.1.1 no such user\r\n554 5.5.1 no valid recipients\r\n";
        let (_, heard) = envelope(&mut c, &mut server, replies).await;
        assert_eq!(heard, b"550 5.1.1 no such user\r\n");

        assert!(c.pipeline().rset_ahead());
        let replies = b"250 reset\r\n250 sender ok\r\n250 recipient ok\r\n354 go ahead\r\n";
        let (sent, heard) = envelope(&mut c, &mut server, replies).await;
        assert!(sent.starts_with(b"RSET\r\nMAIL FROM:"), "{}", String::from_utf8_lossy(&sent));
        assert_eq!(heard, b"354 go ahead\r\n", "no body was held back");
    }

    /// A server that takes DATA after refusing the only recipient waits
    /// for a body that must not go: lettre reads the refusal, and the
    /// connection takes nothing more.
    #[tokio::test]
    async fn data_taken_after_a_refused_envelope_ends_the_connection() {
        let (mut c, mut server) = pipelining().await;

        let replies = b"250 sender ok\r\n451 4.3.0 try later\r\n354 go ahead\r\n";
        let (_, heard) = envelope(&mut c, &mut server, replies).await;
        assert_eq!(heard, b"451 4.3.0 try later\r\n");
        c.write_all(b"RSET\r\n").await.unwrap();
        let closed = c.flush().await.unwrap_err();
        assert!(closed.to_string().contains("connection is closed"), "{closed}");
        assert!(nothing_sent(&mut server));
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
