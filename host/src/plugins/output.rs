//! Capped capture of a guest's stdout and stderr.
//!
//! wasip2 guests may print; what they print goes into the run's log, up to
//! a cap. Past the cap bytes are counted and dropped rather than failing
//! the write: a chatty plugin should not crash on a full log (wasmtime's
//! `MemoryOutputPipe` traps instead).

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// A shared, capped byte buffer that a guest writes to.
#[derive(Clone)]
pub(crate) struct CappedOutput(Arc<Mutex<Captured>>);

#[derive(Default)]
struct Captured {
    bytes: Vec<u8>,
    cap: usize,
    dropped: u64,
}

impl CappedOutput {
    pub(crate) fn new(cap: usize) -> Self {
        CappedOutput(Arc::new(Mutex::new(Captured { cap, ..Captured::default() })))
    }

    fn push(&self, data: &[u8]) {
        let mut c = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let room = c.cap.saturating_sub(c.bytes.len());
        let take = room.min(data.len());
        c.bytes.extend_from_slice(&data[..take]);
        c.dropped += (data.len() - take) as u64;
    }

    /// What was captured, as text, and how many bytes were dropped.
    pub(crate) fn take(&self) -> (String, u64) {
        let mut c = self.0.lock().unwrap_or_else(|e| e.into_inner());
        (String::from_utf8_lossy(&std::mem::take(&mut c.bytes)).into_owned(), std::mem::take(&mut c.dropped))
    }

    /// The last `n` bytes captured, as text (for trap messages).
    pub(crate) fn tail(&self, n: usize) -> String {
        let c = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let start = c.bytes.len().saturating_sub(n);
        String::from_utf8_lossy(&c.bytes[start..]).trim().to_string()
    }
}

impl IsTerminal for CappedOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CappedOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for CappedOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for CappedOutput {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for CappedOutput {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_past_the_cap_are_counted_not_kept() {
        let out = CappedOutput::new(4);
        out.push(b"abc");
        out.push(b"defg");
        assert_eq!(out.take(), ("abcd".to_string(), 3));
    }
}
