//! Integration tests of `streamcache` through its public API: one binary, one module per
//! area. Tests that need root (a real tmpfs) fail without it; CI runs as root.

mod admission;
#[cfg(feature = "tokio")]
mod asynchronous;
mod budget;
mod cache;
mod disk_full;
mod durable;
mod empty_read;
mod hostile;
#[cfg(feature = "testing")]
mod logging;
mod memory;
mod props;
#[cfg(feature = "remote")]
mod remote;
#[cfg(feature = "remote")]
mod s3;
mod seek;
mod send_sync;
mod sendfile;
mod support;
