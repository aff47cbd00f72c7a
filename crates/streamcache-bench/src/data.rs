//! The data every workload writes, and the producers that write it.

use std::io::{self, Write};
use std::sync::{Arc, Mutex};
use std::time::Instant;

pub(crate) const KIB: u64 = 1 << 10;
pub(crate) const MIB: u64 = 1 << 20;
pub(crate) const GIB: u64 = 1 << 30;
/// The producer's write size and the readers' buffer size.
pub(crate) const CHUNK: usize = 64 << 10;

/// One 1 MiB buffer of splitmix64 output (seed `0x5eed`, each 64-bit value stored
/// little-endian), made once per process.
pub(crate) fn buffer() -> Arc<[u8]> {
    let mut state: u64 = 0x5eed;
    let mut out = Vec::with_capacity(MIB as usize);
    while out.len() < MIB as usize {
        out.extend_from_slice(&splitmix64(&mut state).to_le_bytes());
    }
    out.into()
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// When a producer ran: from its first instruction to its return.
pub(crate) type Span = Arc<Mutex<Option<(Instant, Instant)>>>;

/// Writes `size` bytes as consecutive 64 KiB slices of `data` (offset mod 1 MiB) and
/// records when it ran in `span`. `after_write` sees the running total after every write.
pub(crate) fn produce(
    w: &mut impl Write,
    data: &[u8],
    size: u64,
    span: &Span,
    mut after_write: impl FnMut(u64),
) -> io::Result<()> {
    let start = Instant::now();
    let mut written = 0u64;
    while written < size {
        let at = (written % data.len() as u64) as usize;
        let n = (CHUNK as u64)
            .min(size - written)
            .min((data.len() - at) as u64) as usize;
        w.write_all(&data[at..at + n])?;
        written += n as u64;
        after_write(written);
    }
    let end = Instant::now();
    if let Ok(mut slot) = span.lock() {
        *slot = Some((start, end));
    }
    Ok(())
}

/// A producer closure for the cache: `size` bytes of `data`, timed into `span`.
pub(crate) fn producer(
    data: &Arc<[u8]>,
    size: u64,
    span: &Span,
) -> impl FnOnce(&mut streamcache::Writer) -> io::Result<()> + Send + 'static {
    let data = Arc::clone(data);
    let span = Arc::clone(span);
    move |w| produce(w, &data, size, &span, |_| {})
}

/// Parses a size such as `4G`, `256M`, `64KiB` or `1048576` (binary units).
pub(crate) fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" | "kb" => KIB,
        "m" | "mib" | "mb" => MIB,
        "g" | "gib" | "gb" => GIB,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// A size for people: `1 GiB`, `64 MiB`, `4 KiB`.
pub(crate) fn show_size(n: u64) -> String {
    if n >= GIB && n & (GIB - 1) == 0 {
        format!("{} GiB", n / GIB)
    } else if n >= MIB && n & (MIB - 1) == 0 {
        format!("{} MiB", n / MIB)
    } else if n >= KIB && n & (KIB - 1) == 0 {
        format!("{} KiB", n / KIB)
    } else {
        format!("{n} B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_matches_the_published_sequence() {
        // First outputs for seed 0, as published with the algorithm.
        let mut s = 0u64;
        assert_eq!(splitmix64(&mut s), 0xe220_a839_7b1d_cdaf);
        assert_eq!(splitmix64(&mut s), 0x6e78_9e6a_a1b9_65f4);
    }

    #[test]
    fn buffer_is_one_mib_of_little_endian_outputs_from_seed_5eed() {
        let b = buffer();
        assert_eq!(b.len() as u64, MIB);
        let mut s = 0x5eed;
        let first = splitmix64(&mut s);
        assert_eq!(b[..8], first.to_le_bytes());
        let second = splitmix64(&mut s);
        assert_eq!(b[8..16], second.to_le_bytes());
    }

    #[test]
    fn produce_writes_consecutive_64k_slices_modulo_one_mib() {
        let data = buffer();
        let span: Span = Arc::default();
        let mut out = Vec::new();
        let mut writes = Vec::new();
        produce(&mut out, &data, MIB + 3 * KIB, &span, |n| writes.push(n)).unwrap();
        assert_eq!(out.len() as u64, MIB + 3 * KIB);
        assert_eq!(&out[..MIB as usize], &data[..]);
        assert_eq!(&out[MIB as usize..], &data[..3 * KIB as usize]);
        assert_eq!(writes.len(), 17);
        assert_eq!(writes[0], 64 * KIB);
        assert!(span.lock().unwrap().is_some());
    }

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("4G"), Some(4 * GIB));
        assert_eq!(parse_size("256MiB"), Some(256 * MIB));
        assert_eq!(parse_size("64k"), Some(64 * KIB));
        assert_eq!(parse_size("100"), Some(100));
        assert_eq!(parse_size("1T"), None);
        assert_eq!(parse_size("G"), None);
        assert_eq!(show_size(GIB), "1 GiB");
        assert_eq!(show_size(64 * MIB), "64 MiB");
    }
}
