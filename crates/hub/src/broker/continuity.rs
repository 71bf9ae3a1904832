//! Whether a networked broker's stream still continues what a node delivered.
//!
//! A node remembers, per channel, the epoch and offset of the last publication it delivered.
//! Offsets are gap-free per epoch, so the next one must be exactly one more. After a Redis
//! failover the promoted replica may lack the last publications the old master acknowledged
//! (replication is asynchronous): it would hand out those offsets again, in the same epoch,
//! for different publications. A node that sees its stream go backwards calls that a
//! [regression](Live::Regressed): the channel moves to a new epoch and its subscribers are
//! reset, never served a second publication under an offset they already have.

use super::Publication;

/// What to do with a publication that arrived on the live (pub/sub) stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Live {
    /// The next one: deliver it.
    Deliver,
    /// Already delivered (it was also read from history during a catch-up): drop it.
    Duplicate,
    /// Publications after this offset are missing: fill from history first.
    Gap(u64),
    /// The channel is in another epoch now (Redis lost its data): reset the subscribers.
    NewEpoch,
    /// An epoch this node already retired after a regression: drop it.
    Stale,
    /// The stream went backwards within one epoch: the master lost acknowledged
    /// publications.
    Regressed,
}

/// A channel's delivery position on one node.
#[derive(Debug, Clone, Copy)]
pub(super) struct Seen<'a> {
    /// Epoch of the last delivered publication.
    pub epoch: &'a str,
    /// Offset of the last delivered publication.
    pub last: u64,
    /// Highest offset received on the current pub/sub connection in this epoch (0: none).
    /// One connection receives a channel's publications in offset order (the broker's
    /// scripts assign and publish in one step, one script at a time), so an offset at or
    /// below it can only come from a server whose stream was rewound.
    pub live: u64,
    /// An epoch given up after a regression; its late messages are dropped.
    pub retired: Option<&'a str>,
}

/// Judges a live publication `(epoch, offset)` against what the node has seen.
pub(super) fn judge_live(seen: Seen<'_>, epoch: &str, offset: u64) -> Live {
    if seen.retired == Some(epoch) {
        return Live::Stale;
    }
    if epoch != seen.epoch {
        return Live::NewEpoch;
    }
    if offset <= seen.live {
        return Live::Regressed;
    }
    if offset <= seen.last {
        return Live::Duplicate;
    }
    match seen.last.checked_add(1) {
        Some(next) if offset == next => Live::Deliver,
        _ => Live::Gap(seen.last),
    }
}

/// What a catch-up (after a reconnect, or to fill a gap) finds in the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CatchUp {
    /// Nothing was missed.
    UpToDate,
    /// The missed publications are in history: deliver them.
    Fill,
    /// The missed publications are gone, or the epoch changed: reset the subscribers.
    Lost,
    /// The broker is behind the node in the same epoch, or holds another publication under
    /// the node's last offset: the stream regressed (see the module documentation).
    Regressed,
}

/// Judges the broker's position `(epoch, offset)` and retained `history` (oldest first)
/// against the node's last delivered `(seen_epoch, last)` and, when it still has it, the
/// last delivered publication itself.
pub(super) fn judge_catch_up(
    seen_epoch: &str,
    last: u64,
    delivered: Option<&Publication>,
    epoch: &str,
    offset: u64,
    history: &[Publication],
) -> CatchUp {
    if epoch != seen_epoch {
        return CatchUp::Lost;
    }
    if offset < last {
        return CatchUp::Regressed;
    }
    // The same offset with other content: the lost publications were replaced by new ones
    // before this node looked. Only detectable while that entry is retained.
    if let (Some(mine), Some(theirs)) = (delivered, history.iter().find(|p| p.offset == last)) {
        if !same(mine, theirs) {
            return CatchUp::Regressed;
        }
    }
    if offset == last {
        return CatchUp::UpToDate;
    }
    let next = last.saturating_add(1);
    if history.iter().any(|p| p.offset == next) {
        CatchUp::Fill
    } else {
        CatchUp::Lost
    }
}

/// Whether two publications are the same one (same offset, data, publisher and key).
pub(super) fn same(a: &Publication, b: &Publication) -> bool {
    a.offset == b.offset && a.data.get() == b.data.get() && a.from == b.from && a.key == b.key
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::value::RawValue;

    use super::*;

    fn publication(offset: u64, data: &str) -> Publication {
        Publication {
            offset,
            data: Arc::from(RawValue::from_string(data.to_owned()).unwrap()),
            from: None,
            key: None,
        }
    }

    fn seen(last: u64, live: u64) -> Seen<'static> {
        Seen {
            epoch: "e1",
            last,
            live,
            retired: None,
        }
    }

    #[test]
    fn live_stream_in_order_is_delivered() {
        assert_eq!(judge_live(seen(4, 4), "e1", 5), Live::Deliver);
        assert_eq!(judge_live(seen(0, 0), "e1", 1), Live::Deliver);
        assert_eq!(judge_live(seen(4, 4), "e1", 7), Live::Gap(4));
        assert_eq!(judge_live(seen(u64::MAX, 0), "e1", 3), Live::Duplicate);
    }

    #[test]
    fn history_overlap_is_a_duplicate_not_a_regression() {
        // Caught up to 9 from history after a reconnect; the connection has only seen 6 so
        // far, so 7..=9 arriving now are the same publications again.
        assert_eq!(judge_live(seen(9, 6), "e1", 7), Live::Duplicate);
        assert_eq!(judge_live(seen(9, 6), "e1", 9), Live::Duplicate);
        assert_eq!(judge_live(seen(9, 6), "e1", 10), Live::Deliver);
    }

    #[test]
    fn live_stream_going_backwards_is_a_regression() {
        assert_eq!(judge_live(seen(10, 10), "e1", 8), Live::Regressed);
        assert_eq!(judge_live(seen(10, 10), "e1", 10), Live::Regressed);
    }

    #[test]
    fn epochs_change_or_are_stale() {
        assert_eq!(judge_live(seen(10, 10), "e2", 1), Live::NewEpoch);
        let retired = Seen {
            retired: Some("e0"),
            ..seen(0, 0)
        };
        assert_eq!(judge_live(retired, "e0", 11), Live::Stale);
        assert_eq!(judge_live(retired, "e1", 1), Live::Deliver);
    }

    #[test]
    fn catch_up_decisions() {
        let history = [
            publication(9, "9"),
            publication(10, "10"),
            publication(11, "11"),
        ];
        let ten = publication(10, "10");
        let up =
            |last, delivered, offset| judge_catch_up("e1", last, delivered, "e1", offset, &history);
        assert_eq!(up(11, None, 11), CatchUp::UpToDate);
        assert_eq!(up(10, Some(&ten), 11), CatchUp::Fill);
        assert_eq!(up(5, None, 11), CatchUp::Lost, "6 is not retained");
        assert_eq!(
            judge_catch_up("e0", 10, None, "e1", 11, &history),
            CatchUp::Lost
        );
    }

    #[test]
    fn catch_up_behind_the_node_is_a_regression() {
        // The node delivered up to 12; the promoted replica only has 11.
        let history = [publication(11, "11")];
        assert_eq!(
            judge_catch_up("e1", 12, None, "e1", 11, &history),
            CatchUp::Regressed
        );
    }

    #[test]
    fn catch_up_with_other_content_at_the_last_offset_is_a_regression() {
        // The replica lost 10 and 11, then took new publications 10' and 11'.
        let history = [publication(9, "9"), publication(10, "\"other\"")];
        let mine = publication(10, "10");
        assert_eq!(
            judge_catch_up("e1", 10, Some(&mine), "e1", 10, &history),
            CatchUp::Regressed
        );
        let history = [publication(9, "9"), publication(10, "10")];
        assert_eq!(
            judge_catch_up("e1", 10, Some(&mine), "e1", 10, &history),
            CatchUp::UpToDate
        );
    }
}
