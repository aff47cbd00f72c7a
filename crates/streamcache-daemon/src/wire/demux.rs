//! The client's side of a reply: a demultiplexer that turns the daemon's bytes, in
//! whatever pieces they arrive, into events, and checks the order of the frames.

use std::io;

use crate::wire::error::WireError;
use crate::wire::frame::{parse_header, Kind, HEADER_LEN};
use crate::wire::reply::{decode_response, decode_trailer, ExitStatus, Status};

/// One thing the client learns from the daemon's reply.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// The response header.
    Response(Status, String),
    /// A piece of the command's stdout (a frame may arrive in several pieces).
    Stdout(&'a [u8]),
    /// A piece of the command's stderr.
    Stderr(&'a [u8]),
    /// How the command ended.
    Exit(ExitStatus),
    /// The cache's verdict; the last frame of a reply.
    Trailer(Result<(), String>),
}

/// What a [`Demux`] expects next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// This many more bytes of a frame header.
    Header(usize),
    /// This many more bytes of the payload of a frame of this kind.
    Payload {
        /// The frame's kind.
        kind: Kind,
        /// Payload bytes still to come.
        remaining: usize,
    },
}

/// Splits the daemon's reply into [`Event`]s, whatever the chunking of the input.
///
/// Data frames are passed on in pieces as they arrive, without buffering; control
/// frames are collected whole (they are small). The order of frames is checked: one
/// response header first, then output and at most one exit frame, then one trailer.
#[derive(Debug, Default)]
pub struct Demux {
    header: [u8; HEADER_LEN],
    header_len: usize,
    current: Option<(Kind, usize)>,
    control: Vec<u8>,
    seen_response: bool,
    seen_exit: bool,
    finished: bool,
}

impl Demux {
    /// A demultiplexer at the start of a reply.
    pub fn new() -> Demux {
        Demux::default()
    }

    /// Whether the trailer has been seen: the reply is complete.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// What the next input bytes are: the rest of a frame header, or payload.
    pub fn next(&self) -> Next {
        match self.current {
            Some((kind, remaining)) => Next::Payload { kind, remaining },
            None => Next::Header(HEADER_LEN - self.header_len),
        }
    }

    /// Records that `n` bytes of the current stdout payload were passed on without
    /// going through [`Demux::feed`] (the client splices them from the socket into its
    /// stdout). `n` must not exceed what [`Demux::next`] reported.
    ///
    /// # Errors
    ///
    /// [`WireError::Invalid`] if the current frame is not stdout or is shorter than `n`.
    pub fn skip_stdout(&mut self, n: usize) -> Result<(), WireError> {
        match self.current {
            Some((Kind::Stdout, remaining)) if n <= remaining => {
                self.current = Some((Kind::Stdout, remaining - n));
                if remaining == n {
                    self.current = None;
                }
                Ok(())
            }
            _ => Err(WireError::invalid(
                "spliced bytes",
                "not inside a stdout frame",
            )),
        }
    }

    /// Feeds the next bytes of the reply, calling `sink` for each event. The sink's
    /// error stops the feed and is returned as [`WireError::Io`].
    ///
    /// # Errors
    ///
    /// A [`WireError`] for an unknown or oversized frame, a frame out of order, bytes
    /// after the trailer, or a malformed control payload.
    pub fn feed<F>(&mut self, mut data: &[u8], mut sink: F) -> Result<(), WireError>
    where
        F: FnMut(Event<'_>) -> io::Result<()>,
    {
        while !data.is_empty() {
            if self.finished {
                return Err(WireError::Trailing(data.len()));
            }
            let Some((kind, remaining)) = self.current else {
                let take = (HEADER_LEN - self.header_len).min(data.len());
                self.header[self.header_len..self.header_len + take].copy_from_slice(&data[..take]);
                self.header_len += take;
                data = &data[take..];
                if self.header_len == HEADER_LEN {
                    self.header_len = 0;
                    let (kind, len) = parse_header(&self.header)?;
                    self.check_order(kind)?;
                    self.current = Some((kind, len));
                    self.control.clear();
                    if len == 0 {
                        self.finish_frame(kind, &mut sink)?;
                    }
                }
                continue;
            };
            let take = remaining.min(data.len());
            let (piece, rest) = data.split_at(take);
            data = rest;
            let left = remaining - take;
            self.current = Some((kind, left));
            match kind {
                Kind::Stdout => sink(Event::Stdout(piece))?,
                Kind::Stderr => sink(Event::Stderr(piece))?,
                _ => self.control.extend_from_slice(piece),
            }
            if left == 0 {
                self.finish_frame(kind, &mut sink)?;
            }
        }
        Ok(())
    }

    fn check_order(&mut self, kind: Kind) -> Result<(), WireError> {
        let ok = match kind {
            Kind::Response => !self.seen_response,
            Kind::Stdout | Kind::Stderr => self.seen_response && !self.seen_exit,
            Kind::Exit => self.seen_response && !self.seen_exit,
            Kind::Trailer => self.seen_response,
            _ => false,
        };
        if !ok {
            return Err(WireError::Unexpected(kind));
        }
        match kind {
            Kind::Response => self.seen_response = true,
            Kind::Exit => self.seen_exit = true,
            _ => {}
        }
        Ok(())
    }

    fn finish_frame<F>(&mut self, kind: Kind, sink: &mut F) -> Result<(), WireError>
    where
        F: FnMut(Event<'_>) -> io::Result<()>,
    {
        self.current = None;
        match kind {
            Kind::Stdout | Kind::Stderr => {}
            Kind::Response => {
                let (status, message) = decode_response(&self.control)?;
                sink(Event::Response(status, message))?;
            }
            Kind::Exit => sink(Event::Exit(ExitStatus::decode(&self.control)?))?,
            Kind::Trailer => {
                let verdict = decode_trailer(&self.control)?;
                self.finished = true;
                sink(Event::Trailer(verdict))?;
            }
            other => return Err(WireError::Unexpected(other)),
        }
        Ok(())
    }
}

#[cfg(test)]
pub(super) mod tests;
