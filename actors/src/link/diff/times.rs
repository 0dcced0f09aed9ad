//! The link's time per source: each source's publication time, held the same on both ends
//! of a link and updated by a frame's [`Stamps`]. Every machine republishes every interval,
//! so every frame moves nearly every time; a source the link already knows is named by its
//! position in the list both ends keep (a run of zeros on the wire), not by its name.
//!
//! Both ends change the list in the same steps: times moved in place, sources gone removed
//! (the rest keep their order), new sources appended.

use std::collections::HashSet;

use indexmap::map::Entry;
use indexmap::IndexMap;

use super::gaps::{GapReader, GapWriter};
use crate::generation::NameHasher;
use crate::link::wire::Stamps;
use crate::link::LinkError;

/// The most sources a link keeps a time for: a child that stamps ever new names without
/// unstamping them cannot grow a parent's list without bound (the link is dropped and
/// starts over). A cluster of 70 machines names 70; a TLA's link to a SQL node one per
/// machine of the fleet.
const MAX_LINK_SOURCES: usize = if cfg!(test) { 1_000 } else { 1 << 22 };

/// Source name → publication time (unix ms), in the link's order.
#[derive(Default)]
pub(super) struct SourceTimes {
    list: IndexMap<String, i64, NameHasher>,
}

impl SourceTimes {
    pub(super) fn clear(&mut self) {
        self.list.clear();
    }

    pub(super) fn get(&self, source: &str) -> Option<i64> {
        self.list.get(source).copied()
    }

    /// The encoder's side: makes the list `now`'s (each source once, at its time) and
    /// returns the stamps that take the parent's list there. Times travel as distances back
    /// from `sealed_at_ms`, which are small.
    pub(super) fn restamp<'a>(
        &mut self,
        now: impl IntoIterator<Item = (&'a str, i64)>,
        sealed_at_ms: i64,
    ) -> Stamps {
        let mut seen = vec![false; self.list.len()];
        let mut moved: Vec<(usize, i64)> = Vec::new();
        let mut new: IndexMap<&str, i64, NameHasher> = IndexMap::default();
        for (source, ms) in now {
            match self.list.get_full_mut(source) {
                Some((at, _, held)) => {
                    if !seen[at] && *held != ms {
                        moved.push((at, sealed_at_ms.wrapping_sub(ms)));
                        *held = ms;
                    }
                    seen[at] = true;
                }
                None => {
                    new.entry(source).or_insert(ms);
                }
            }
        }
        moved.sort_unstable_by_key(|&(at, _)| at);
        let mut gone = Vec::new();
        if seen.iter().any(|s| !s) {
            let mut i = 0;
            self.list.retain(|name, _| {
                let keep = seen[i];
                i += 1;
                if !keep {
                    gone.push(name.clone());
                }
                keep
            });
        }
        let mut gaps = GapWriter::default();
        let (moved, moved_back) = moved
            .into_iter()
            .map(|(at, back)| (gaps.gap(at) as u32, back))
            .unzip();
        let new = new
            .into_iter()
            .map(|(source, ms)| {
                self.list.insert(source.to_string(), ms);
                (source.to_string(), sealed_at_ms.wrapping_sub(ms))
            })
            .collect();
        Stamps {
            moved,
            moved_back,
            gone,
            new,
        }
    }

    /// The decoder's side: applies `stamps` as [`restamp`](Self::restamp) made them.
    pub(super) fn apply(&mut self, stamps: Stamps, sealed_at_ms: i64) -> Result<(), LinkError> {
        let time = |source: &dyn std::fmt::Display, back: i64| {
            sealed_at_ms.checked_sub(back).ok_or_else(|| {
                LinkError::Protocol(format!("the time of source {source} is out of range"))
            })
        };
        if stamps.moved.len() != stamps.moved_back.len() {
            return Err(LinkError::Protocol(format!(
                "{} moved sources with {} times",
                stamps.moved.len(),
                stamps.moved_back.len()
            )));
        }
        let mut positions = GapReader::default();
        for (&gap, &back) in stamps.moved.iter().zip(&stamps.moved_back) {
            let len = self.list.len();
            let at = positions.position(gap, len).map_err(|at| {
                LinkError::Protocol(format!(
                    "a moved source's position {at} is out of range (the link holds {len})"
                ))
            })?;
            if let Some((_, held)) = self.list.get_index_mut(at) {
                *held = time(&format_args!("at position {at}"), back)?;
            }
        }
        if !stamps.gone.is_empty() {
            let gone: HashSet<&str> = stamps.gone.iter().map(String::as_str).collect();
            self.list.retain(|name, _| !gone.contains(name.as_str()));
        }
        for (source, back) in stamps.new {
            if self.list.len() >= MAX_LINK_SOURCES {
                return Err(LinkError::Protocol(format!(
                    "the link names more than {MAX_LINK_SOURCES} sources"
                )));
            }
            match self.list.entry(source) {
                Entry::Occupied(e) => {
                    return Err(LinkError::Protocol(format!(
                        "source '{}' is stamped as new but the link holds it",
                        e.key()
                    )))
                }
                Entry::Vacant(e) => {
                    let ms = time(&format_args!("'{}'", e.key()), back)?;
                    e.insert(ms);
                }
            }
        }
        Ok(())
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.list.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn restamped(enc: &mut SourceTimes, dec: &mut SourceTimes, now: &[(&str, i64)]) -> Stamps {
        let stamps = enc.restamp(now.iter().copied(), 10_000);
        dec.apply(stamps.clone(), 10_000).expect("apply");
        // In the same order (IndexMap's `==` ignores order).
        assert!(
            enc.list.iter().eq(dec.list.iter()),
            "both ends hold the same list"
        );
        stamps
    }

    #[test]
    fn known_sources_travel_by_position_and_both_ends_stay_in_step() {
        let (mut enc, mut dec) = (SourceTimes::default(), SourceTimes::default());
        let s = restamped(
            &mut enc,
            &mut dec,
            &[("a", 1), ("b", 2), ("c", 3), ("a", 1)],
        );
        assert_eq!(
            s.new,
            vec![
                ("a".into(), 9_999),
                ("b".into(), 9_998),
                ("c".into(), 9_997)
            ]
        );
        // Every time moves: positions 0, 1, 2 as gaps of zero; names do not travel.
        let s = restamped(&mut enc, &mut dec, &[("c", 13), ("a", 11), ("b", 12)]);
        assert_eq!(
            (s.moved, s.moved_back),
            (vec![0, 0, 0], vec![9_989, 9_988, 9_987])
        );
        assert!(s.new.is_empty() && s.gone.is_empty());
        // Only c moves; b goes; d is new (after the rest).
        let s = restamped(&mut enc, &mut dec, &[("a", 11), ("c", 23), ("d", 4)]);
        assert_eq!((s.moved, s.gone), (vec![2], vec!["b".to_string()]));
        assert_eq!(s.new, vec![("d".into(), 9_996)]);
        assert_eq!(dec.get("c"), Some(23));
        // A source that appears twice keeps its first time, as the parts' times are checked
        // against it.
        let s = restamped(&mut enc, &mut dec, &[("d", 5), ("d", 6)]);
        assert_eq!((s.moved, s.moved_back), (vec![2], vec![9_995]));
        assert_eq!(s.gone, vec!["a".to_string(), "c".to_string()]);
        assert_eq!(dec.get("d"), Some(5));
        assert_eq!(dec.len(), 1);
    }

    #[test]
    fn refuses_positions_past_the_list_new_names_it_holds_and_unpaired_times() {
        let mut dec = SourceTimes::default();
        let ok = Stamps {
            new: vec![("a".into(), 0), ("b".into(), 0)],
            ..Stamps::default()
        };
        dec.apply(ok.clone(), 10).expect("two new sources");
        let past = Stamps {
            moved: vec![1, 0],
            moved_back: vec![0, 0],
            ..Stamps::default()
        };
        let again = Stamps {
            new: vec![("b".into(), 0)],
            ..Stamps::default()
        };
        let unpaired = Stamps {
            moved: vec![0],
            ..Stamps::default()
        };
        let early = Stamps {
            moved: vec![0],
            moved_back: vec![i64::MIN],
            ..Stamps::default()
        };
        for (bad, why) in [
            (past, "out of range"),
            (again, "the link holds it"),
            (unpaired, "1 moved sources with 0 times"),
            (early, "out of range"),
        ] {
            let e = dec.apply(bad, 10).expect_err(why).to_string();
            assert!(e.contains(why), "{e}");
        }
        let many = Stamps {
            new: (0..=MAX_LINK_SOURCES)
                .map(|i| (format!("s{i}"), 0))
                .collect(),
            ..Stamps::default()
        };
        let e = SourceTimes::default()
            .apply(many, 10)
            .expect_err("too many");
        assert!(e.to_string().contains("more than"), "{e}");
    }
}
