//! Message ids and times: the ObjectId layout of docs/protocol.md §3 and `create_time`.
//!
//! Layout (12 bytes, shown as 24 lowercase hex): 4-byte big-endian unix seconds, then 64
//! bits: 20 bits of microseconds within the second, 8 bits of shard, 12 bits drawn at
//! random when the shard starts, 24 bits of per-shard counter. Ids therefore sort by
//! creation time to the microsecond, are unique across shards (shard byte), restarts
//! (random bits, and time) and, for one shard, strictly increase. Microseconds, not
//! milliseconds, because two pushes a backend makes one after the other can land on two
//! shards within one millisecond, and "oldest first" must still hold for them: a request's
//! round trip is always longer than a microsecond, and every shard reads the same clock.

use std::cell::Cell;

/// A 12-byte message id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MsgId(pub [u8; 12]);

impl MsgId {
    pub fn hex(&self) -> [u8; 24] {
        let mut out = [0u8; 24];
        crate::text::hex_into(&self.0, &mut out);
        out
    }

    pub fn to_hex_string(&self) -> String {
        // Hex digits are ASCII.
        self.hex().iter().map(|&b| char::from(b)).collect()
    }

    /// Parses 24 hex characters (either case).
    pub fn parse(s: &str) -> Option<MsgId> {
        let b = s.as_bytes();
        if b.len() != 24 {
            return None;
        }
        let mut out = [0u8; 12];
        for (i, pair) in b.chunks_exact(2).enumerate() {
            out[i] = (crate::text::hex_val(pair[0])? << 4) | crate::text::hex_val(pair[1])?;
        }
        Some(MsgId(out))
    }

    pub fn unix_secs(&self) -> u32 {
        u32::from_be_bytes([self.0[0], self.0[1], self.0[2], self.0[3]])
    }

    /// Microseconds within the creation second (the top 20 of the next 64 bits).
    fn micros_in_second(&self) -> u32 {
        u32::from_be_bytes([0, self.0[4], self.0[5], self.0[6]]) >> 4
    }

    /// Unix milliseconds of creation.
    pub fn unix_millis(&self) -> u64 {
        u64::from(self.unix_secs()) * 1000 + u64::from(self.micros_in_second() / 1000)
    }
}

/// Per-shard id source (single-threaded: lives inside one shard).
pub struct IdGen {
    shard: u8,
    /// 12 random bits, in the low bits.
    random: u16,
    counter: Cell<u32>,
}

impl IdGen {
    pub fn new(shard: u8) -> IdGen {
        let mut seed = [0u8; 5];
        // A failing OS RNG only weakens restart-uniqueness; time still differs.
        let _ = getrandom::getrandom(&mut seed);
        IdGen {
            shard,
            random: u16::from_be_bytes([seed[0], seed[1]]) & 0x0fff,
            counter: Cell::new(u32::from_be_bytes([0, seed[2], seed[3], seed[4]])),
        }
    }

    /// A new id for the current time.
    pub fn next(&self) -> MsgId {
        self.at_micros(now_micros())
    }

    pub fn at(&self, unix_millis: u64) -> MsgId {
        self.at_micros(unix_millis.saturating_mul(1000))
    }

    pub fn at_micros(&self, unix_micros: u64) -> MsgId {
        let c = self.counter.get().wrapping_add(1) & 0x00ff_ffff;
        self.counter.set(c);
        let secs = u32::try_from(unix_micros / 1_000_000).unwrap_or(u32::MAX);
        // Below 1,000,000: fits in 20 bits.
        let micros = unix_micros % 1_000_000;
        let low = (micros << 44)
            | (u64::from(self.shard) << 36)
            | (u64::from(self.random) << 24)
            | u64::from(c);
        let mut id = [0u8; 12];
        id[..4].copy_from_slice(&secs.to_be_bytes());
        id[4..].copy_from_slice(&low.to_be_bytes());
        MsgId(id)
    }
}

pub fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

pub fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

pub fn now_secs() -> u64 {
    now_millis() / 1000
}

/// `YYYY-MM-DD HH:MM:SS` of `unix_secs` at `offset_secs` east of UTC.
pub fn format_time(unix_secs: i64, offset_secs: i64) -> String {
    let t = unix_secs + offset_secs;
    let days = t.div_euclid(86400);
    let sod = t.rem_euclid(86400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        sod / 3600,
        (sod % 3600) / 60,
        sod % 60
    )
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (H. Hinnant's method).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    // d is 1..=31 and m is 1..=12 by construction.
    (
        y,
        u32::try_from(m).unwrap_or(1),
        u32::try_from(d).unwrap_or(1),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn original_example_time() {
        // 612b7239 is the id of the original document's example, created 2021-08-29 19:40:41 +08:00.
        let id = MsgId::parse("612b723970fb1b158c7f8c72").expect("hex");
        assert_eq!(
            format_time(i64::from(id.unix_secs()), 8 * 3600),
            "2021-08-29 19:40:41"
        );
        assert_eq!(format_time(0, 0), "1970-01-01 00:00:00");
        assert_eq!(format_time(951_782_400, 0), "2000-02-29 00:00:00");
        assert_eq!(format_time(-1, 0), "1969-12-31 23:59:59");
    }

    #[test]
    fn ids_are_unique_ordered_and_round_trip() {
        let g = IdGen::new(3);
        let a = g.at(1_700_000_000_123);
        let b = g.at(1_700_000_000_123);
        let c = g.at(1_700_000_000_124);
        assert!(a < b && b < c);
        assert_eq!(a.unix_millis(), 1_700_000_000_123);
        // Two shards one microsecond apart sort by time, not by shard.
        let later_on_a_lower_shard = IdGen::new(0).at_micros(1_700_000_000_123_001);
        let first = IdGen::new(9).at_micros(1_700_000_000_123_000);
        assert!(first < later_on_a_lower_shard);
        assert_eq!(first.unix_millis(), 1_700_000_000_123);
        assert_eq!(
            IdGen::new(9).at_micros(1_700_000_000_999_999).unix_millis(),
            1_700_000_000_999
        );
        assert_eq!(
            (u16::from_be_bytes([first.0[6], first.0[7]]) >> 4) & 0xff,
            9
        );
        let hex = a.to_hex_string();
        assert_eq!(hex.len(), 24);
        assert!(hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        assert_eq!(MsgId::parse(&hex), Some(a));
        assert_eq!(MsgId::parse(&hex.to_uppercase()), Some(a));
        assert_eq!(MsgId::parse("xyz"), None);
        assert_eq!(MsgId::parse("zz2b723970fb1b158c7f8c72"), None);
    }
}
