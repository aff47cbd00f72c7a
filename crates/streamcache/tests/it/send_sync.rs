//! The public types can cross threads and tasks. These checks fail at compile time.

use streamcache::{Cache, Config, Error, Stats, Stream, Writer};

fn send_sync<T: Send + Sync>() {}

#[cfg(feature = "tokio")]
fn send_static<T: Send + 'static>(_: &T) {}

fn unpin<T: Unpin>() {}

#[test]
fn the_public_types_are_send_and_sync() {
    send_sync::<Cache>();
    send_sync::<Stream>();
    send_sync::<Writer>();
    send_sync::<Error>();
    send_sync::<Config>();
    send_sync::<Stats>();
    unpin::<Stream>();
}

#[cfg(feature = "testing")]
#[test]
fn the_testing_types_are_send_and_sync() {
    send_sync::<streamcache::testing::LoggingCache>();
    send_sync::<streamcache::testing::LogEntry>();
}

#[cfg(feature = "tokio")]
#[test]
fn the_wait_async_future_is_send_and_static() {
    let cache = Cache::disabled();
    let (stream, _) = cache.find_or_create("key", |_| Ok(())).unwrap();
    let waiting = stream.wait_async();
    send_static(&waiting);
    // The future does not borrow the stream.
    drop(stream);
    let outcome = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(waiting);
    outcome.unwrap();
}
