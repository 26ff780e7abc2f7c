//! A connection that moves no byte, either way, for a while is closed:
//! a client that opens connections and stops (half-sent headers, a body
//! that never ends, an idle keep-alive) cannot hold them for ever.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use std::future::Future;

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::{Instant, Sleep},
};

/// `inner`, failing reads and writes with `TimedOut` once no byte has
/// moved for `timeout`. Unpin (the timer is boxed), as servers want.
///
/// A byte moving only notes the time: the timer is left where it is, and
/// when it fires early (bytes moved since it was set) it is set again for
/// `timeout` after the last of them. Resetting it at every read and write
/// had the timer re-registered each time: 300 to 480 user-space
/// instructions per review on a kept-alive connection (callgrind:
/// ImageReview 39,524 -> 39,217, AdmissionReview 86,701 -> 86,217).
pub struct IdleTimeout<T> {
    inner: T,
    deadline: Pin<Box<Sleep>>,
    timeout: Duration,
    last_moved: Instant,
}

impl<T> IdleTimeout<T> {
    pub fn new(inner: T, timeout: Duration) -> Self {
        let now = Instant::now();
        Self {
            inner,
            deadline: Box::pin(tokio::time::sleep_until(now + timeout)),
            timeout,
            last_moved: now,
        }
    }

    fn moved(&mut self) {
        self.last_moved = Instant::now();
    }

    /// Whether the connection has been idle for `timeout`, polled when
    /// the inner stream is not ready (so the task wakes when it would be).
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        loop {
            if self.deadline.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let due = self.last_moved + self.timeout;
            if due <= Instant::now() {
                return Poll::Ready(expired());
            }
            // Bytes moved since the timer was set: set it for `timeout`
            // after the last, and poll it again to register the waker.
            self.deadline.as_mut().reset(due);
        }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }
}

fn expired() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "no bytes moved: idle connection closed",
    )
}

impl<T: AsyncRead + Unpin> AsyncRead for IdleTimeout<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    self.moved();
                }
                Poll::Ready(result)
            }
            Poll::Pending => self.poll_idle(cx).map(Err),
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleTimeout<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, data) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.moved();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => self.poll_idle(cx).map(Err),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_silent_peer_is_cut_off_and_a_talking_one_is_not() {
        let (client, server) = tokio::io::duplex(64);
        let mut server = IdleTimeout::new(server, Duration::from_secs(5));
        let mut client = client;
        let talker = tokio::spawn(async move {
            for _ in 0..4 {
                tokio::time::sleep(Duration::from_secs(3)).await;
                client.write_all(b"x").await.unwrap();
            }
            // Then silence, with the connection left open.
            tokio::time::sleep(Duration::from_secs(3600)).await;
            drop(client);
        });
        let mut buf = [0u8; 1];
        for _ in 0..4 {
            server.read_exact(&mut buf).await.expect("3 s apart: alive");
        }
        let started = Instant::now();
        let err = server.read_exact(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        talker.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_written_keep_a_connection_alive_as_bytes_read_do() {
        let (client, server) = tokio::io::duplex(64);
        let server = IdleTimeout::new(server, Duration::from_secs(5));
        let (mut reader, mut writer) = tokio::io::split(server);
        let mut client = client;
        // The client reads what the server writes and never writes itself.
        let drain = tokio::spawn(async move {
            let mut buf = [0u8; 8];
            while client.read(&mut buf).await.is_ok_and(|n| n > 0) {}
        });
        let started = Instant::now();
        let read = tokio::spawn(async move {
            let mut buf = [0u8; 1];
            let err = reader.read_exact(&mut buf).await.unwrap_err();
            (err.kind(), started.elapsed())
        });
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_secs(3)).await;
            writer.write_all(b"x").await.expect("3 s apart: alive");
        }
        // The last byte moved at 12 s: the waiting read fails 5 s later.
        let (kind, after) = read.await.unwrap();
        assert_eq!(kind, io::ErrorKind::TimedOut);
        assert_eq!(after, Duration::from_secs(17));
        drain.abort();
    }
}
