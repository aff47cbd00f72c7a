//! Property: whatever the chunking of the producer's writes (empty writes included), the
//! number of readers and their read sizes, every reader gets exactly the bytes written,
//! with back pressure on and off.

use std::io::{self, Read, Write};

use proptest::prelude::*;

use crate::support::{never, with_and_without_backpressure, TempCache};

fn chunks() -> impl Strategy<Value = Vec<Vec<u8>>> {
    prop::collection::vec(
        prop_oneof![
            1 => Just(Vec::new()),
            4 => prop::collection::vec(any::<u8>(), 1..512),
            1 => prop::collection::vec(any::<u8>(), 512..16384),
            // Longer than a piece kept in memory for readers close behind (64 KiB).
            1 => prop::collection::vec(any::<u8>(), 65536..140_000),
        ],
        0..24,
    )
}

/// Reads `stream` to its end with reads of the given sizes, in turn.
fn read_with_sizes(stream: &mut streamcache::Stream, sizes: &[usize]) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; sizes.iter().copied().max().unwrap_or(1)];
    for size in sizes.iter().cycle() {
        let n = stream.read(&mut buf[..*size])?;
        if n == 0 {
            return Ok(out);
        }
        assert!(n <= *size);
        out.extend_from_slice(&buf[..n]);
    }
    unreachable!("cycle never ends")
}

fn every_reader_gets_the_bytes_written(
    backpressure: bool,
    chunks: &[Vec<u8>],
    read_sizes: &[Vec<usize>],
) {
    let c = TempCache::new(backpressure);
    let expected: Vec<u8> = chunks.concat();
    let (go, gate) = std::sync::mpsc::channel::<()>();
    let producer = {
        let chunks = chunks.to_vec();
        move |w: &mut streamcache::Writer| {
            gate.recv().map_err(io::Error::other)?;
            for chunk in &chunks {
                // A write stores the whole buffer or fails, empty buffers included.
                let n = w.write(chunk)?;
                assert_eq!(n, chunk.len(), "a write never stores part of its buffer");
            }
            Ok(())
        }
    };
    let (first, created) = c.cache.find_or_create("key", producer).unwrap();
    assert!(created);
    let mut streams = vec![first];
    for _ in 1..read_sizes.len() {
        let (stream, created) = c.cache.find_or_create("key", never).unwrap();
        assert!(!created, "later readers join the running producer");
        streams.push(stream);
    }
    go.send(()).unwrap();
    let outputs: Vec<Vec<u8>> = std::thread::scope(|s| {
        let handles: Vec<_> = streams
            .into_iter()
            .zip(read_sizes)
            .map(|(mut stream, sizes)| {
                s.spawn(move || {
                    let out = read_with_sizes(&mut stream, sizes).expect("reads succeed");
                    stream.wait().expect("the producer succeeds");
                    out
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, out) in outputs.iter().enumerate() {
        assert!(
            *out == expected,
            "reader {i} got {} bytes, expected {}",
            out.len(),
            expected.len()
        );
    }
    // A reader of the complete entry gets the same bytes too.
    let (mut late, created) = c.cache.find_or_create("key", never).unwrap();
    assert!(!created);
    let out = read_with_sizes(&mut late, &read_sizes[0]).unwrap();
    late.wait().unwrap();
    assert!(out == expected, "a late reader got {} bytes", out.len());
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 48,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn every_reader_gets_exactly_the_bytes_written(
        chunks in chunks(),
        read_sizes in prop::collection::vec(
            prop::collection::vec(1usize..20_000, 1..6),
            1..8,
        ),
    ) {
        with_and_without_backpressure(|backpressure| {
            every_reader_gets_the_bytes_written(backpressure, &chunks, &read_sizes);
        });
    }
}
