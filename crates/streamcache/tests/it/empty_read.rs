//! An empty read returns 0 and changes nothing, on every flavour of stream, sync and
//! async: a bypassed stream (the first occurrence of a key under the default
//! `min_occurrences = 1`), a cached one, and a disabled cache's.

use std::io::{Read, Write};

use streamcache::{Cache, Lookup, Stream};

use crate::support::TempCache;

const SIZE: usize = 3 << 20;

fn producer(w: &mut streamcache::Writer) -> std::io::Result<()> {
    for i in 0..SIZE / 1000 {
        w.write_all(&[(i % 251) as u8; 1000])?;
    }
    w.write_all(&[7u8; SIZE % 1000])
}

fn expected() -> Vec<u8> {
    let mut bytes = Vec::with_capacity(SIZE);
    for i in 0..SIZE / 1000 {
        bytes.extend_from_slice(&[(i % 251) as u8; 1000]);
    }
    bytes.extend_from_slice(&[7u8; SIZE % 1000]);
    bytes
}

/// The three flavours, each with the lookup it must report.
fn flavours(run: impl Fn(Stream, &str)) {
    let bypassed = TempCache::with(|cfg| cfg.min_occurrences = 1);
    let (stream, lookup) = bypassed.cache.lookup("k", producer).unwrap();
    assert_eq!(lookup, Lookup::Bypass);
    run(stream, "bypassed");

    let cached = TempCache::new(true);
    let (stream, lookup) = cached.cache.lookup("k", producer).unwrap();
    assert_eq!(lookup, Lookup::Miss);
    run(stream, "cached");

    let (stream, lookup) = Cache::disabled().lookup("k", producer).unwrap();
    assert_eq!(lookup, Lookup::Bypass);
    run(stream, "disabled");
}

#[test]
fn an_empty_read_returns_zero_and_the_stream_goes_on_to_its_last_byte() {
    flavours(|mut stream, flavour| {
        let mut start = [0u8; 1000];
        stream.read_exact(&mut start).unwrap();
        assert_eq!(
            stream.read(&mut []).unwrap(),
            0,
            "{flavour}: the empty read"
        );
        assert_eq!(
            stream.position(),
            1000,
            "{flavour}: nothing delivered by it"
        );
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).unwrap();
        let mut all = start.to_vec();
        all.extend_from_slice(&rest);
        assert_eq!(
            all.len(),
            SIZE,
            "{flavour}: every byte after the empty read"
        );
        assert!(all == expected(), "{flavour}: the right bytes");
        stream.wait().unwrap();
        // And at the end, an empty read still changes nothing.
        assert_eq!(stream.read(&mut []).unwrap(), 0, "{flavour}");
        assert_eq!(
            stream.read(&mut [0u8; 16]).unwrap(),
            0,
            "{flavour}: end-of-file"
        );
    });
}

#[cfg(feature = "tokio")]
mod asynchronous {
    use tokio::io::AsyncReadExt;

    use super::{flavours, SIZE};

    #[test]
    fn an_empty_async_read_returns_zero_and_the_stream_goes_on_to_its_last_byte() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        flavours(|mut stream, flavour| {
            runtime.block_on(async {
                let mut start = [0u8; 1000];
                stream.read_exact(&mut start).await.unwrap();
                // What a full `ReadBuf` amounts to.
                assert_eq!(stream.read(&mut []).await.unwrap(), 0, "{flavour}");
                assert_eq!(stream.position(), 1000, "{flavour}");
                let mut rest = Vec::new();
                stream.read_to_end(&mut rest).await.unwrap();
                assert_eq!(
                    rest.len() + 1000,
                    SIZE,
                    "{flavour}: every byte after the empty read"
                );
                stream.wait_async().await.unwrap();
            });
        });
    }
}
