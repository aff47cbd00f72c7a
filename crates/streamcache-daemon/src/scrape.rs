//! The `/metrics` listener: a small HTTP/1.0 responder for Prometheus, which also
//! serves a status page for people at `/` (see `status`).
//!
//! Whoever can reach the address can connect, so no client may hold up another. Each
//! scrape is answered on a thread of its own, at most [`MAX_SCRAPES`] at once; the
//! accept loop answers the next ones `503` itself, at once, so a flood costs no threads.
//! A request must arrive whole within `request_timeout`: the deadline is on the whole
//! request, not on each read, because a client that sends one byte now and then would
//! otherwise never reach a per-read timeout and keep its thread for ever. A client still
//! sending at the deadline gets `408`.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::metrics::prometheus;
use crate::state::Daemon;
use crate::status::status_page;

/// Scrapes answered at once. Prometheus scrapes one target once per interval; a few
/// more leave room for a person with `curl`.
pub(crate) const MAX_SCRAPES: usize = 4;

/// The largest request head (request line and headers) read.
const MAX_HEAD: usize = 64 << 10;

/// Binds the `/metrics` listener.
pub(crate) fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(addr)
}

/// Serves `/metrics` on `listener` until the process ends.
pub(crate) fn serve(listener: TcpListener, daemon: Arc<Daemon>) {
    let in_flight = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        let stream = match conn {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "metrics accept failed");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let Some(slot) = Slot::take(&in_flight) else {
            turn_away(&stream);
            continue;
        };
        let d = Arc::clone(&daemon);
        // If the thread cannot start, the slot goes with the closure.
        let spawned = std::thread::Builder::new()
            .name("streamcache-scrape".into())
            .spawn(move || {
                if let Err(e) = answer(&stream, &d) {
                    tracing::debug!(error = %e, "metrics request failed");
                }
                // Free before the client sees the end: a client that has read the
                // whole answer and its end may count on the place being free.
                drop(slot);
                close_gently(&stream);
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start a metrics thread");
        }
    }
}

/// One of the [`MAX_SCRAPES`] places, given back on drop.
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(in_flight: &Arc<AtomicUsize>) -> Option<Slot> {
        in_flight
            .fetch_update(Relaxed, Relaxed, |n| (n < MAX_SCRAPES).then_some(n + 1))
            .ok()
            .map(|_| Slot(Arc::clone(in_flight)))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// Answers a scrape over the limit on the accept loop's thread, without reading it.
fn turn_away(stream: &TcpStream) {
    tracing::debug!(
        max = MAX_SCRAPES,
        "too many scrapes at once; one is turned away"
    );
    // A new socket's send buffer is empty, so this small write cannot wait;
    // non-blocking makes sure the accept loop never does.
    if stream.set_nonblocking(true).is_ok() {
        let _ = write_response(
            stream,
            "503 Service Unavailable",
            "text/plain",
            &format!("too many scrapes at once (at most {MAX_SCRAPES})\n"),
        );
        close_gently(stream);
    }
}

fn answer(stream: &TcpStream, daemon: &Daemon) -> io::Result<()> {
    let timeout = daemon.settings.request_timeout;
    stream.set_write_timeout(Some(timeout))?;
    let head = match read_head(stream, Instant::now() + timeout) {
        Ok(head) => head,
        Err(e) => {
            let (status, body) = match e.kind() {
                io::ErrorKind::TimedOut => {
                    ("408 Request Timeout", "request not received in time\n")
                }
                _ => ("400 Bad Request", "bad request\n"),
            };
            write_response(stream, status, "text/plain", body)?;
            return Err(e);
        }
    };
    let request_line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let request_line = String::from_utf8_lossy(request_line);
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    match (method, path) {
        ("GET", "/metrics") => write_response(
            stream,
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            &prometheus(daemon),
        ),
        ("GET", "/") | ("GET", "/index.html") => write_response(
            stream,
            "200 OK",
            "text/html; charset=utf-8",
            &status_page(daemon),
        ),
        ("GET", _) => write_response(stream, "404 Not Found", "text/plain", "not found\n"),
        _ => write_response(stream, "405 Method Not Allowed", "text/plain", "only GET\n"),
    }
}

/// Reads up to the blank line that ends the request head, all of it before `deadline`.
/// A client that closes its side early gets an answer to what it sent.
fn read_head(stream: &TcpStream, deadline: Instant) -> io::Result<Vec<u8>> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = end_of_head(&head) {
            head.truncate(end);
            return Ok(head);
        }
        if head.len() > MAX_HEAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "request head too large",
            ));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "request not received in time",
            ));
        }
        stream.set_read_timeout(Some(left))?;
        match (&*stream).read(&mut buf) {
            Ok(0) => return Ok(head),
            Ok(n) => head.extend_from_slice(&buf[..n]),
            // The deadline is checked at the top of the loop.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(e),
        }
    }
}

fn end_of_head(head: &[u8]) -> Option<usize> {
    let crlf = head
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4);
    let lf = head.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn write_response(
    mut stream: &TcpStream,
    status: &str,
    content_type: &str,
    body: &str,
) -> io::Result<()> {
    let response = format!(
        "HTTP/1.0 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes())?;
    stream.flush()
}

/// Ends our side after the response, then reads what the client sent that was not
/// read yet (a turned-away request, the rest of a trickle): closing a socket with
/// unread bytes resets the connection, and a reset can reach the client before it has
/// read the response. Only what has arrived is read; the socket's read timeout (or
/// non-blocking mode, on the accept loop) keeps this from waiting long.
fn close_gently(mut stream: &TcpStream) {
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let _ = stream.set_nonblocking(true);
    let mut sink = [0u8; 4096];
    while let Ok(n) = stream.read(&mut sink) {
        if n == 0 {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_head_ends_at_the_first_blank_line_in_either_line_ending() {
        assert_eq!(end_of_head(b"GET / HTTP/1.0\r\nA: b\r\n\r\nrest"), Some(24));
        assert_eq!(end_of_head(b"GET / HTTP/1.0\n\nrest"), Some(16));
        assert_eq!(end_of_head(b"GET / HTTP/1.0\r\nA: b"), None);
    }
}
