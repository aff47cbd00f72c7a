//! `Stream::send_to`: the zero-copy path into files, pipes and sockets, and its fallback
//! (spec 6.3), each with back pressure on and off.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;

use streamcache::{Cache, Stream, Writer};

use crate::support::{random_bytes, with_and_without_backpressure, TempCache};

const SIZE: usize = 10 << 20;

/// A producer that writes `content` in many small writes of varying sizes (1 byte to
/// 8 KiB), as a reader returning part of each request would make it do.
fn small_writes(content: Vec<u8>) -> impl FnOnce(&mut Writer) -> io::Result<()> + Send {
    move |w| {
        let sizes = random_bytes(content.len() / 512 + 1);
        let mut rest = content.as_slice();
        for size in sizes.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let n = (usize::from(*size) * 32 + 1).min(rest.len());
            w.write_all(&rest[..n])?;
            rest = &rest[n..];
        }
        Ok(())
    }
}

/// A fresh entry of `content` written by `small_writes`, and its first stream.
fn entry(c: &TempCache, content: &[u8]) -> Stream {
    let (stream, created) = c
        .cache
        .find_or_create("blob", small_writes(content.to_vec()))
        .unwrap();
    assert!(created);
    stream
}

// ported from internal/streamcache/sendfile_test.go: TestReader_WriteTo (destination is a file)
#[test]
fn send_to_a_file_copies_every_byte_with_sendfile() {
    with_and_without_backpressure(|backpressure| {
        let c = TempCache::new(backpressure);
        let content = random_bytes(SIZE);
        let mut stream = entry(&c, &content);
        let out_dir = tempfile::tempdir().unwrap();
        let out_path = out_dir.path().join("out");
        let out = File::create(&out_path).unwrap();

        let n = stream.send_to(&out).expect("send_to succeeds");
        stream.wait().expect("the producer succeeds");
        assert_eq!(n, SIZE as u64);
        assert_eq!(stream.position(), SIZE as u64);
        drop(out);
        assert!(
            fs::read(&out_path).unwrap() == content,
            "the file holds the entry"
        );
        assert_eq!(
            c.cache.stats().sendfile_bytes,
            SIZE as u64,
            "every byte went through sendfile"
        );
    });
}

// ported from internal/streamcache/sendfile_test.go: TestReader_WriteTo_EAGAIN
#[test]
fn send_to_a_non_blocking_pipe_waits_for_room_and_loses_nothing() {
    with_and_without_backpressure(|backpressure| {
        let c = TempCache::new(backpressure);
        let content = random_bytes(SIZE);
        let (mut stream, created) = c
            .cache
            .find_or_create("blob", crate::support::produce(content.clone()))
            .unwrap();
        assert!(created);
        // One write, so the producer finishes without waiting for this reader.
        stream.wait().expect("the producer succeeds");

        let (pipe_out, pipe_in) = rustix::pipe::pipe().unwrap();
        let mut pipe_out = File::from(pipe_out);
        rustix::fs::fcntl_setfl(&pipe_in, rustix::fs::OFlags::NONBLOCK).unwrap();
        let drainer = std::thread::spawn(move || {
            let mut got = Vec::new();
            pipe_out.read_to_end(&mut got).map(|_| got)
        });
        let n = stream.send_to(&pipe_in).expect("send_to succeeds");
        drop(pipe_in);
        let got = drainer.join().unwrap().unwrap();
        assert_eq!(n, SIZE as u64);
        assert!(got == content, "all bytes arrive intact");
        assert_eq!(
            c.cache.stats().sendfile_bytes,
            SIZE as u64,
            "a full pipe is waited on, not a reason to fall back"
        );
    });
}

#[test]
fn send_to_a_unix_socket_follows_a_live_producer() {
    with_and_without_backpressure(|backpressure| {
        let c = TempCache::new(backpressure);
        let content = random_bytes(SIZE);
        let mut stream = entry(&c, &content);
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let receiver = std::thread::spawn(move || {
            let mut got = Vec::new();
            theirs.read_to_end(&mut got).map(|_| got)
        });
        let n = stream.send_to(&ours).expect("send_to succeeds");
        stream.wait().expect("the producer succeeds");
        drop(ours);
        let got = receiver.join().unwrap().unwrap();
        assert_eq!(n, SIZE as u64);
        assert!(got == content, "the socket carried every byte in order");
        assert_eq!(c.cache.stats().sendfile_bytes, SIZE as u64);
    });
}

// ported from internal/streamcache/sendfile_test.go: TestReader_WriteTo (fallback case)
#[test]
fn send_to_falls_back_to_copying_when_sendfile_refuses_the_destination() {
    with_and_without_backpressure(|backpressure| {
        let c = TempCache::new(backpressure);
        let content = random_bytes(SIZE);
        let mut stream = entry(&c, &content);
        let out_dir = tempfile::tempdir().unwrap();
        let out_path = out_dir.path().join("appended");
        fs::write(&out_path, b"header:").unwrap();
        // sendfile(2) fails with EINVAL on a destination opened with O_APPEND.
        let out = OpenOptions::new().append(true).open(&out_path).unwrap();

        let n = stream.send_to(&out).expect("the fallback copy succeeds");
        stream.wait().expect("the producer succeeds");
        drop(out);
        assert_eq!(n, SIZE as u64);
        let got = fs::read(&out_path).unwrap();
        assert!(
            got[..7] == *b"header:" && got[7..] == content,
            "bytes appended intact"
        );
        assert_eq!(c.cache.stats().sendfile_bytes, 0, "sendfile moved nothing");
    });
}

#[test]
fn send_to_from_the_disabled_cache_copies_through_the_pipe() {
    let cache = Cache::disabled();
    let content = random_bytes(1 << 20);
    let (mut stream, created) = cache
        .find_or_create("blob", small_writes(content.clone()))
        .unwrap();
    assert!(created);
    let (ours, mut theirs) = UnixStream::pair().unwrap();
    let receiver = std::thread::spawn(move || {
        let mut got = Vec::new();
        theirs.read_to_end(&mut got).map(|_| got)
    });
    let n = stream.send_to(&ours).unwrap();
    stream.wait().unwrap();
    drop(ours);
    assert_eq!(n, content.len() as u64);
    assert!(receiver.join().unwrap().unwrap() == content);
}

#[test]
fn send_to_reports_a_failed_producer_after_delivering_what_it_wrote() {
    with_and_without_backpressure(|backpressure| {
        let c = TempCache::new(backpressure);
        let (mut stream, _) = c
            .cache
            .find_or_create("blob", |w| {
                w.write_all(b"partial")?;
                Err(io::Error::other("producer gave up"))
            })
            .unwrap();
        let out_dir = tempfile::tempdir().unwrap();
        let out_path = out_dir.path().join("out");
        let out = File::create(&out_path).unwrap();
        let err = stream
            .send_to(&out)
            .expect_err("a failed entry is not a success");
        assert_eq!(err.to_string(), "producer gave up");
        assert_eq!(fs::read(&out_path).unwrap(), b"partial");
        assert_eq!(stream.wait().unwrap_err().to_string(), "producer gave up");
    });
}

#[test]
fn send_to_leaves_when_its_destination_hangs_up_during_a_quiet_producer() {
    with_and_without_backpressure(|backpressure| {
        let tc = TempCache::new(backpressure);
        let (release, gate) = std::sync::mpsc::channel::<()>();
        let (wrote, written) = std::sync::mpsc::channel::<io::Result<()>>();
        let (mut stream, _) = tc
            .cache
            .find_or_create("quiet", move |w| {
                w.write_all(b"first")?;
                // Quiet until the test says so, then try to write again.
                let _ = gate.recv();
                let second = w.write_all(b"second");
                let _ = wrote.send(
                    second
                        .as_ref()
                        .map(|_| ())
                        .map_err(|e| io::Error::new(e.kind(), e.to_string())),
                );
                second
            })
            .unwrap();
        let (ours, peer) = UnixStream::pair().unwrap();
        let sender = std::thread::spawn(move || {
            let result = stream.send_to(&ours);
            drop(stream);
            result
        });
        // The peer reads the first bytes, then hangs up while the producer is quiet.
        let mut peer = peer;
        let mut first = [0u8; 5];
        peer.read_exact(&mut first).unwrap();
        assert_eq!(&first, b"first");
        drop(peer);
        let err = sender.join().unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe, "{err}");
        // That was the only reader: the producer's next write finds nobody.
        release.send(()).unwrap();
        let second = written.recv().unwrap().unwrap_err();
        assert_eq!(second.kind(), io::ErrorKind::BrokenPipe, "{second}");
    });
}

/// Entries closer than 1 MiB to their end go through `send_to`'s own pipe (splice) rather
/// than straight `sendfile`: check that path on a complete small entry, into a socket
/// (zero copy) and into a file opened to append (which takes no splice: plain copy).
#[test]
fn send_to_splices_a_small_entry_and_falls_back_to_copying_for_an_append_only_file() {
    with_and_without_backpressure(|backpressure| {
        let c = TempCache::new(backpressure);
        let content = random_bytes(100 << 10);
        let mut first = entry(&c, &content);
        let mut all = Vec::new();
        first.read_to_end(&mut all).unwrap();
        first.wait().unwrap();
        assert_eq!(all, content);

        // Into a socket: every byte spliced.
        let before = c.cache.stats().sendfile_bytes;
        let (mut hit, created) = c
            .cache
            .find_or_create("blob", |_| unreachable!("the entry is complete"))
            .unwrap();
        assert!(!created, "a hit");
        let (tx, mut rx) = UnixStream::pair().unwrap();
        let drainer = std::thread::spawn(move || {
            let mut got = Vec::new();
            rx.read_to_end(&mut got).unwrap();
            got
        });
        assert_eq!(hit.send_to(&tx).unwrap(), content.len() as u64);
        drop(tx);
        assert_eq!(drainer.join().unwrap(), content);
        assert_eq!(
            c.cache.stats().sendfile_bytes - before,
            content.len() as u64,
            "the socket got every byte without a user-space copy"
        );

        // Into a file opened to append: splice refuses, the bytes are copied plainly.
        let before = c.cache.stats().sendfile_bytes;
        let (mut hit, _) = c
            .cache
            .find_or_create("blob", |_| unreachable!("the entry is complete"))
            .unwrap();
        let out_dir = tempfile::tempdir().unwrap();
        let out_path = out_dir.path().join("appended");
        fs::write(&out_path, b"header:").unwrap();
        let out = OpenOptions::new().append(true).open(&out_path).unwrap();
        assert_eq!(hit.send_to(&out).unwrap(), content.len() as u64);
        drop(out);
        let got = fs::read(&out_path).unwrap();
        assert!(
            got[..7] == *b"header:" && got[7..] == content,
            "bytes appended intact"
        );
        assert_eq!(
            c.cache.stats().sendfile_bytes,
            before,
            "nothing was spliced"
        );
    });
}
