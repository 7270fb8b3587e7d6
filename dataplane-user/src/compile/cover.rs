//! Port ranges as LPM prefixes.

/// The fewest prefixes covering `a..=b` in a 16-bit space: (first port, prefix length 0..=16).
/// Bits run from the most significant, as in the big-endian LPM keys.
pub fn cover(a: u16, b: u16) -> Vec<(u16, u8)> {
    let (mut x, b) = (a as u32, b as u32);
    let mut out = Vec::new();
    while x <= b {
        // The largest aligned block starting at x that stays inside the range.
        let mut k = if x == 0 {
            16
        } else {
            x.trailing_zeros().min(16)
        };
        while x + (1 << k) - 1 > b {
            k -= 1;
        }
        out.push((x as u16, (16 - k) as u8));
        x += 1 << k;
    }
    out
}

/// Adjacent intervals with the same value merged: input sorted and disjoint.
pub fn merge_adjacent(v: Vec<(u16, u16, u32)>) -> Vec<(u16, u16, u32)> {
    let mut out: Vec<(u16, u16, u32)> = Vec::with_capacity(v.len());
    for (a, b, val) in v {
        match out.last_mut() {
            Some(last) if last.2 == val && last.1 as u32 + 1 == a as u32 => last.1 = b,
            _ => out.push((a, b, val)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// How many prefixes cover each port.
    fn counts(prefixes: &[(u16, u8)]) -> Vec<u8> {
        let mut c = vec![0u8; 65536];
        for &(start, len) in prefixes {
            let size = 1usize << (16 - len);
            assert_eq!(start as usize % size, 0, "prefix start must be aligned");
            c[start as usize..start as usize + size]
                .iter_mut()
                .for_each(|x| *x += 1);
        }
        c
    }

    #[test]
    fn known_sizes() {
        assert_eq!(cover(0, 65535), vec![(0, 0)]);
        assert_eq!(cover(16384, 32767), vec![(16384, 2)]);
        assert_eq!(cover(36000, 59999).len(), 11);
        assert_eq!(cover(1, 65534).len(), 30);
        assert_eq!(cover(5060, 5060), vec![(5060, 16)]);
        assert_eq!(cover(65535, 65535), vec![(65535, 16)]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        /// Every port is covered exactly once inside the range and never outside it.
        #[test]
        fn exact_cover(a in any::<u16>(), b in any::<u16>()) {
            let (a, b) = (a.min(b), a.max(b));
            let p = cover(a, b);
            prop_assert!(p.len() <= 30);
            let c = counts(&p);
            for port in 0..=u16::MAX {
                let want = u8::from((a..=b).contains(&port));
                prop_assert_eq!(c[port as usize], want, "port {}", port);
            }
        }
    }
}
