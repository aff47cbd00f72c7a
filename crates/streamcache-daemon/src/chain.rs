//! How the daemon prints an error for a person: the error, then each of its causes,
//! `outer: cause: root cause`, as anyhow's `{:#}` does.
//!
//! An error's `Display` says what went wrong at its own level and leaves the cause to
//! `source()` (the daemon's `WireError` does, and so does the library's
//! `streamcache::Error`), so `{}` alone would drop the cause: print [`Chain`] instead.

use std::error::Error;
use std::fmt;

/// Displays an error followed by its chain of sources, each once.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Chain<'a>(pub(crate) &'a (dyn Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot store the entry")]
    struct Outer(#[source] io::Error);

    #[test]
    fn every_cause_is_printed_once_after_the_error() {
        let inner = io::Error::new(io::ErrorKind::StorageFull, "no space left");
        let outer = Outer(inner);
        assert_eq!(
            Chain(&outer).to_string(),
            "cannot store the entry: no space left"
        );
        let plain = io::Error::other("just this");
        assert_eq!(Chain(&plain).to_string(), "just this");
    }

    #[test]
    fn an_error_of_the_library_keeps_its_cause() {
        let e = streamcache::Error::from_io(io::Error::other("sh ended with exit code 3"));
        let text = Chain(&e).to_string();
        assert!(text.contains("sh ended with exit code 3"), "{text}");
    }
}
