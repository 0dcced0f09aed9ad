//! Ascending positions as the link carries them (patched rows, parts the parent holds,
//! sources whose time moves): each as its distance from the position after the previous
//! one, so "every position" is a run of zeros, which compresses to nothing.

/// The sending side.
#[derive(Default)]
pub(super) struct GapWriter {
    next: usize,
}

impl GapWriter {
    /// `at`'s gap; positions come ascending.
    pub(super) fn gap(&mut self, at: usize) -> usize {
        let gap = at - self.next;
        self.next = at + 1;
        gap
    }
}

/// The receiving side.
#[derive(Default)]
pub(super) struct GapReader {
    next: usize,
}

impl GapReader {
    /// The position `gap` names among `len`; past the end, `Err` with that position.
    pub(super) fn position(&mut self, gap: u32, len: usize) -> Result<usize, usize> {
        let at = self.next.saturating_add(gap as usize);
        if at >= len {
            return Err(at);
        }
        self.next = at + 1;
        Ok(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip_and_none_past_the_end() {
        let positions = [0, 1, 2, 7, 8, 20];
        let mut w = GapWriter::default();
        let gaps: Vec<u32> = positions.iter().map(|&p| w.gap(p) as u32).collect();
        assert_eq!(gaps, vec![0, 0, 0, 4, 0, 11]);
        let mut r = GapReader::default();
        let back: Vec<usize> = gaps
            .iter()
            .map(|&g| r.position(g, 21).expect("in range"))
            .collect();
        assert_eq!(back, positions);
        assert_eq!(r.position(0, 21), Err(21));
        assert_eq!(
            GapReader::default().position(u32::MAX, 3),
            Err(u32::MAX as usize)
        );
    }
}
