//! Byte-level mutations of a valid input, shared by the targets: flipped bits, replaced,
//! inserted and deleted bytes, truncation, duplicated and spliced ranges, and "interesting"
//! values (edge-case integers, huge numbers, invalid UTF-8, target-specific tokens).

use rand::rngs::SmallRng;
use rand::Rng;

/// Numbers and bytes that break parsers more often than random ones.
pub const INTERESTING_TEXT: &[&str] = &[
    "0",
    "-1",
    "-0",
    "1e999999",
    "-1e-999999",
    "1.7976931348623157e309",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775809",
    "18446744073709551616",
    "340282366920938463463374607431768211456",
    "NaN",
    "Infinity",
    "0.000000000000000000000000000000000000000000000000001",
    "\u{0}",
    "\u{feff}",
    "\u{10ffff}",
    "\\u0000",
    "\\ud800",
    "\\udfff\\ud800",
    "\"",
    "\\",
    "\n",
    "\r\n",
    "null",
    "true",
];

/// Invalid UTF-8 sequences.
pub const INVALID_UTF8: &[&[u8]] = &[
    b"\xff",
    b"\xfe\xff",
    b"\xc0\x80",
    b"\xed\xa0\x80",
    b"\xf4\x90\x80\x80",
    b"\xe2\x82",
    b"\x80",
];

/// Little-endian and big-endian encodings of edge-case integers (lengths, counts).
fn interesting_word(rng: &mut SmallRng) -> Vec<u8> {
    let v: u64 = match rng.random_range(0..10) {
        0 => 0,
        1 => 1,
        2 => 0x7f,
        3 => 0xff,
        4 => 0xffff,
        5 => 0x7fff_ffff,
        6 => 0xffff_ffff,
        7 => u64::MAX,
        8 => 1 << rng.random_range(0..64),
        _ => rng.random(),
    };
    let width = [1usize, 2, 4, 8][rng.random_range(0..4)];
    if rng.random_bool(0.5) {
        v.to_le_bytes()[..width].to_vec()
    } else {
        v.to_be_bytes()[8 - width..].to_vec()
    }
}

/// Applies 1..=`max_ops` random mutations to `data`; `tokens` are inserted whole by some of
/// them (grammar words, delimiters of the target's format).
pub fn mutate(rng: &mut SmallRng, data: &mut Vec<u8>, max_ops: usize, tokens: &[&[u8]]) {
    let ops = rng.random_range(1..=max_ops.max(1));
    for _ in 0..ops {
        mutate_once(rng, data, tokens);
    }
}

fn pos(rng: &mut SmallRng, len: usize) -> usize {
    if len == 0 {
        0
    } else {
        rng.random_range(0..=len)
    }
}

fn mutate_once(rng: &mut SmallRng, data: &mut Vec<u8>, tokens: &[&[u8]]) {
    let len = data.len();
    match rng.random_range(0..13) {
        // Flip one bit.
        0 if len > 0 => {
            let i = rng.random_range(0..len);
            data[i] ^= 1 << rng.random_range(0..8);
        }
        // Replace a byte.
        1 if len > 0 => {
            let i = rng.random_range(0..len);
            data[i] = rng.random();
        }
        // Insert random bytes.
        2 => {
            let at = pos(rng, len);
            let n = rng.random_range(1..=8);
            let bytes: Vec<u8> = (0..n).map(|_| rng.random()).collect();
            data.splice(at..at, bytes);
        }
        // Delete a range.
        3 if len > 0 => {
            let at = rng.random_range(0..len);
            let n = rng.random_range(1..=(len - at).min(16));
            data.drain(at..at + n);
        }
        // Truncate.
        4 if len > 0 => data.truncate(rng.random_range(0..len)),
        // Duplicate a range in place (repetition: longer lists, deeper nesting).
        5 if len > 0 => {
            let a = rng.random_range(0..len);
            let b = rng.random_range(a..=len.min(a + 64));
            let chunk = data[a..b].to_vec();
            let times = rng.random_range(1..=4);
            for _ in 0..times {
                data.splice(b..b, chunk.iter().copied());
            }
        }
        // Move a range elsewhere (splice within the input).
        6 if len > 1 => {
            let a = rng.random_range(0..len);
            let b = rng.random_range(a..=len.min(a + 32));
            let chunk = data[a..b].to_vec();
            let at = pos(rng, len);
            data.splice(at..at, chunk);
        }
        // An interesting number or text.
        7 => {
            let t = INTERESTING_TEXT[rng.random_range(0..INTERESTING_TEXT.len())];
            let at = pos(rng, len);
            data.splice(at..at, t.bytes());
        }
        // Invalid UTF-8.
        8 => {
            let t = INVALID_UTF8[rng.random_range(0..INVALID_UTF8.len())];
            let at = pos(rng, len);
            data.splice(at..at, t.iter().copied());
        }
        // An edge-case integer overwriting bytes (lengths, counts, varints).
        9 if len > 0 => {
            let w = interesting_word(rng);
            let at = rng.random_range(0..len);
            for (i, b) in w.into_iter().enumerate() {
                if let Some(slot) = data.get_mut(at + i) {
                    *slot = b;
                }
            }
        }
        // A token of the target's format.
        10 | 11 if !tokens.is_empty() => {
            let t = tokens[rng.random_range(0..tokens.len())];
            let at = pos(rng, len);
            data.splice(at..at, t.iter().copied());
        }
        // Swap two bytes.
        12 if len > 1 => {
            let a = rng.random_range(0..len);
            let b = rng.random_range(0..len);
            data.swap(a, b);
        }
        _ => {
            let at = pos(rng, len);
            data.insert(at.min(data.len()), rng.random());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn mutations_change_inputs_and_stay_bounded() {
        let mut rng = SmallRng::seed_from_u64(9);
        let seed = b"{\"hello\": {\"publisher\": \"p\", \"tables\": [\"sys\"]}}".to_vec();
        let mut changed = 0;
        for _ in 0..2000 {
            let mut d = seed.clone();
            mutate(&mut rng, &mut d, 8, &[b"[", b"{"]);
            changed += usize::from(d != seed);
            assert!(d.len() < seed.len() + 8 * 300, "{}", d.len());
        }
        assert!(changed > 1800, "{changed}");
    }
}
