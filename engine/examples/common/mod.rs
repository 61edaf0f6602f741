//! What the rate examples (`int8_rate`, `attention_rate`) share: their whole-number arguments and
//! their values.

/// Argument `i` of the command line as a whole number, `default` where it is absent; anything else
/// ends the program with `usage`, whose first word is the program's name (exit status 2).
pub fn whole_number(i: usize, default: usize, usage: &str) -> usize {
    std::env::args().nth(i).map_or(default, |s| {
        s.parse().unwrap_or_else(|_| {
            let program = usage.split(' ').next().unwrap_or_default();
            eprintln!("{program}: {s:?} is not a whole number (usage: {usage})");
            std::process::exit(2)
        })
    })
}

/// A deterministic source of values in `[-1, 1)`.
pub fn values() -> impl FnMut() -> f32 {
    let mut seed = 1u64;
    move || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}
