//! Input mutations without coverage feedback: bit flips, byte changes, inserts and deletes, truncation,
//! splices of two inputs, interesting integers (as text and as little-endian binary), each target's
//! tokens, repeated chunks and awkward UTF-8. Several are stacked on one input.

/// A small, fast, seedable generator (SplitMix64): the same seed gives the same inputs.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Numbers that sit on the edges of integer and float parsing, written as text.
const NUMBERS: &[&str] = &[
    "0",
    "1",
    "-1",
    "-0",
    "00",
    "01",
    "7",
    "127",
    "128",
    "255",
    "256",
    "65535",
    "65536",
    "2147483647",
    "2147483648",
    "-2147483648",
    "4294967295",
    "4294967296",
    "9007199254740993",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775808",
    "18446744073709551615",
    "18446744073709551616",
    "340282366920938463463374607431768211456",
    "1e308",
    "1e309",
    "-1e309",
    "5e-324",
    "1.5",
    "0.1234567890123456789",
    "+1",
    ".5",
    "1.",
    "1e5",
    "NaN",
    "nan",
    "inf",
    "-inf",
    "infinity",
    "0x10",
    "1_000",
];

/// Integers that sit on the edges of binary length and count fields.
const BINARY: &[u64] = &[
    0,
    1,
    2,
    3,
    0x7f,
    0x80,
    0xff,
    0x100,
    0x7fff,
    0x8000,
    0xffff,
    0x1_0000,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    0x1_0000_0000,
    0x7fff_ffff_ffff_ffff,
    0x8000_0000_0000_0000,
    u64::MAX,
];

/// Byte sequences that text readers treat specially: line and field ends, quotes, a byte-order mark,
/// the gzip magic, invalid or truncated UTF-8, non-ASCII whitespace and control characters.
const AWKWARD: &[&[u8]] = &[
    b"\n",
    b"\r\n",
    b"\r",
    b"\t",
    b" ",
    b"\0",
    b"\"",
    b"'",
    b"\\",
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b"\xEF\xBB\xBF",
    b"\x1f\x8b",
    b"\xff",
    b"\xfe",
    b"\xc3",
    b"\xe2\x80",
    b"\xed\xa0\x80",
    b"\xc3\xa9",
    b"\xc3\x83\xc2\xa9",
    b"\xc2\xa0",
    b"\xe2\x80\xa8",
    b"\xe3\x80\x80",
    b"\x7f",
    b"\x1b",
    b"\xf0\x9f\x99\x82",
];

/// One input mutated by 1 to 8 stacked mutations, at most `max_len` bytes long. `pool` holds the
/// other inputs (for splices); `tokens` are the target's own keywords.
pub fn mutate(
    rng: &mut Rng,
    input: &[u8],
    pool: &[Vec<u8>],
    tokens: &[&[u8]],
    max_len: usize,
) -> Vec<u8> {
    let mut out = input.to_vec();
    let n = 1 << rng.below(4);
    for _ in 0..n {
        mutate_once(rng, &mut out, pool, tokens);
        out.truncate(max_len);
    }
    out
}

fn mutate_once(rng: &mut Rng, d: &mut Vec<u8>, pool: &[Vec<u8>], tokens: &[&[u8]]) {
    let len = d.len();
    match rng.below(14) {
        // A bit flipped.
        0 if len > 0 => {
            let i = rng.below(len);
            d[i] ^= 1 << rng.below(8);
        }
        // A byte replaced by any byte.
        1 if len > 0 => {
            let i = rng.below(len);
            d[i] = rng.next_u64() as u8;
        }
        // Random bytes inserted.
        2 => {
            let at = rng.below(len + 1);
            let k = 1 + rng.below(8);
            let bytes: Vec<u8> = (0..k).map(|_| rng.next_u64() as u8).collect();
            d.splice(at..at, bytes);
        }
        // A range deleted (short or long).
        3 if len > 0 => {
            let at = rng.below(len);
            let k = if rng.below(4) == 0 {
                1 + rng.below(len - at)
            } else {
                1 + rng.below(16.min(len - at))
            };
            d.drain(at..at + k);
        }
        // Truncated.
        4 if len > 0 => d.truncate(rng.below(len)),
        // The head of this input and the tail of another.
        5 if !pool.is_empty() => {
            let other = rng.pick(pool);
            let cut = rng.below(len + 1);
            let from = rng.below(other.len() + 1);
            d.truncate(cut);
            d.extend_from_slice(&other[from..]);
        }
        // A number (a run of digits, or a place) replaced by an edge value.
        6 => {
            let num = rng.pick(NUMBERS).as_bytes();
            let at = rng.below(len + 1);
            match (at..len).find(|&i| d[i].is_ascii_digit()) {
                Some(s) => {
                    let e = (s..len).find(|&i| !d[i].is_ascii_digit()).unwrap_or(len);
                    d.splice(s..e, num.iter().copied());
                }
                None => {
                    d.splice(at..at, num.iter().copied());
                }
            }
        }
        // A little-endian integer of 1, 2, 4 or 8 bytes written over the input.
        7 if len > 0 => {
            let width = 1 << rng.below(4);
            let mut v = *rng.pick(BINARY);
            if rng.below(2) == 0 {
                v = v.wrapping_add(rng.below(3) as u64).wrapping_sub(1);
            }
            let at = rng.below(len);
            for (k, b) in v.to_le_bytes().iter().take(width).enumerate() {
                if at + k < len {
                    d[at + k] = *b;
                }
            }
        }
        // One of the target's tokens inserted or written over the input.
        8 | 9 if !tokens.is_empty() => {
            let t = *rng.pick(tokens);
            let at = rng.below(len + 1);
            if rng.below(2) == 0 {
                d.splice(at..at, t.iter().copied());
            } else {
                let end = (at + t.len()).min(len);
                d.splice(at..end, t.iter().copied());
            }
        }
        // Awkward bytes inserted.
        10 => {
            let t = *rng.pick(AWKWARD);
            let at = rng.below(len + 1);
            d.splice(at..at, t.iter().copied());
        }
        // A chunk repeated elsewhere (a whole line when the start is a line start).
        11 if len > 0 => {
            let s = rng.below(len);
            let e = s + 1 + rng.below((len - s).min(256));
            let chunk = d[s..e].to_vec();
            let at = rng.below(len + 1);
            d.splice(at..at, chunk);
        }
        // A whole line repeated or removed.
        12 if len > 0 => {
            let starts: Vec<usize> = std::iter::once(0)
                .chain((0..len).filter(|&i| d[i] == b'\n').map(|i| i + 1))
                .filter(|&i| i < len)
                .collect();
            let s = *rng.pick(&starts);
            let e = (s..len).find(|&i| d[i] == b'\n').map_or(len, |i| i + 1);
            if rng.below(2) == 0 {
                let line = d[s..e].to_vec();
                d.splice(s..s, line);
            } else {
                d.drain(s..e);
            }
        }
        // The input cut in two and the halves swapped.
        13 if len > 1 => {
            let at = 1 + rng.below(len - 1);
            d.rotate_left(at);
        }
        _ => {
            let at = rng.below(len + 1);
            d.insert(at, rng.next_u64() as u8);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_inputs_and_lengths_stay_capped() {
        let pool = vec![b"1\tone\n2\ttwo\n".to_vec(), b"{\"id\": 3}\n".to_vec()];
        let run = |seed| {
            let mut rng = Rng::new(seed);
            (0..2000)
                .map(|i| mutate(&mut rng, &pool[i % 2], &pool, &[b"Q0"], 64))
                .collect::<Vec<_>>()
        };
        let a = run(7);
        assert_eq!(a, run(7));
        assert_ne!(a, run(8));
        assert!(a.iter().all(|m| m.len() <= 64));
        // The mutations reach beyond the seeds: many distinct inputs, some longer, some shorter.
        let distinct: std::collections::HashSet<&Vec<u8>> = a.iter().collect();
        assert!(distinct.len() > 1500, "{}", distinct.len());
        assert!(a.iter().any(|m| m.len() > 20) && a.iter().any(|m| m.len() < 5));
    }
}
