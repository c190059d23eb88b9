//! Which shard (broker) an aggregate belongs to (docs/SCALING.md): the same
//! function as the broker's and libsnapbus's `sb_shard_of`, so all agree.

/// The shard, `0..shard_count`, that owns `aggregate` among `shard_count`
/// brokers: Lamping and Veach's jump consistent hash of the FNV-1a 64 hash
/// of the name's bytes. `shard_count` 0 or 1 gives 0 (a broker reporting
/// `shard_count` 0 takes every aggregate).
pub fn shard_of(aggregate: &str, shard_count: u32) -> u32 {
    if shard_count <= 1 {
        return 0;
    }
    let mut key: u64 = 0xcbf2_9ce4_8422_2325;
    for &c in aggregate.as_bytes() {
        key ^= u64::from(c);
        key = key.wrapping_mul(0x0100_0000_01b3);
    }
    let (mut b, mut j): (i64, i64) = (-1, 0);
    while j < i64::from(shard_count) {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1i64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    b as u32
}

#[cfg(test)]
mod tests {
    use super::shard_of;

    // The vectors of tests/unit/test_shard.c and the Python client's tests.
    const COUNTS: [u32; 8] = [1, 2, 3, 4, 7, 16, 100, 1000];
    const VECTORS: [(&str, [u32; 8]); 7] = [
        ("", [0, 1, 1, 1, 1, 13, 90, 266]),
        ("a", [0, 1, 2, 2, 2, 12, 31, 163]),
        ("order/1", [0, 0, 2, 2, 4, 14, 61, 881]),
        ("order/2", [0, 1, 2, 2, 2, 2, 41, 661]),
        ("customer/42", [0, 1, 1, 1, 1, 13, 90, 579]),
        ("\u{e9}", [0, 1, 2, 2, 5, 5, 19, 393]),
        (
            "a/very/long/aggregate/name/with/parts",
            [0, 1, 1, 3, 3, 14, 67, 631],
        ),
    ];

    #[test]
    fn same_answers_as_c_and_python() {
        for (name, want) in VECTORS.iter() {
            for (n, w) in COUNTS.iter().zip(want.iter()) {
                assert_eq!(shard_of(name, *n), *w, "shard_of({:?}, {})", name, n);
            }
        }
        assert_eq!(shard_of("x", 0), 0);
    }
}
