//! Unit tests of the memory broker.

use super::*;

#[derive(Default)]
struct Collect(Mutex<Vec<Delivery>>);
impl DeliverySink for Collect {
    fn deliver(&self, d: Delivery) {
        self.0.lock().push(d);
    }
}

fn raw(s: &str) -> Arc<RawValue> {
    Arc::from(RawValue::from_string(s.to_owned()).unwrap())
}

const KEEP: Retention = Retention {
    size: 3,
    ttl: Duration::from_secs(60),
};

fn offsets(h: &History) -> Vec<u64> {
    h.publications.iter().map(|p| p.offset).collect()
}

#[tokio::test]
async fn offsets_history_and_recovery_window() {
    let sink = Arc::new(Collect::default());
    let b = MemoryBroker::new(sink.clone());
    b.subscribe("c").await.unwrap();
    for i in 1..=5 {
        let pos = b
            .publish("c", raw(&i.to_string()), None, None, KEEP)
            .await
            .unwrap();
        assert_eq!(pos.offset, i);
    }
    assert_eq!(sink.0.lock().len(), 5);
    let all = b.history("c", HistoryQuery::default(), KEEP).await.unwrap();
    assert_eq!(offsets(&all), [3, 4, 5]);
    let q = |since| HistoryQuery {
        since: Some(since),
        limit: None,
    };
    let h = b.history("c", q(2), KEEP).await.unwrap();
    assert!(h.complete);
    assert_eq!(offsets(&h), [3, 4, 5]);
    assert!(
        !b.history("c", q(1), KEEP).await.unwrap().complete,
        "4 is out of the window"
    );
    assert!(b.history("c", q(5), KEEP).await.unwrap().complete);
    assert!(
        !b.history("c", q(6), KEEP).await.unwrap().complete,
        "future offset"
    );
    let last2 = HistoryQuery {
        since: None,
        limit: Some(2),
    };
    assert_eq!(offsets(&b.history("c", last2, KEEP).await.unwrap()), [4, 5]);
}

#[tokio::test]
async fn ttl_expires_history_and_idle_channels_get_a_new_epoch() {
    let b = MemoryBroker::new(Arc::new(Collect::default()));
    let short = Retention {
        size: 10,
        ttl: Duration::from_millis(30),
    };
    let first = b.publish("c", raw("1"), None, None, short).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let h = b
        .history("c", HistoryQuery::default(), short)
        .await
        .unwrap();
    assert!(h.publications.is_empty());
    assert_eq!(b.sweep_once(), 0, "nothing left to keep");
    let again = b.publish("c", raw("2"), None, None, short).await.unwrap();
    assert_eq!(again.offset, 1);
    assert_ne!(again.epoch, first.epoch);
}

fn limited(limits: MemoryLimits) -> Arc<MemoryBroker> {
    MemoryBroker::with_limits(
        Arc::new(Collect::default()),
        limits,
        Arc::new(Metrics::new()),
    )
}

#[tokio::test]
async fn reads_never_create_channels() {
    let b = MemoryBroker::new(Arc::new(Collect::default()));
    let since = HistoryQuery {
        since: Some(0),
        limit: None,
    };
    let h = b.history("x", since, KEEP).await.unwrap();
    assert!(h.complete && h.publications.is_empty());
    assert!(b.presence("y").await.unwrap().is_empty());
    b.unsubscribe("z").await.unwrap();
    b.presence_remove("w", "k1", true).await.unwrap();
    assert_eq!(b.channel_count(), 0);
    assert_eq!(b.holds("x"), Some(false));
    b.publish("x", raw("1"), None, None, KEEP).await.unwrap();
    assert_eq!(b.holds("x"), Some(true));
}

#[tokio::test]
async fn channel_cap_evicts_the_least_recently_used_idle_channel() {
    let b = limited(MemoryLimits::new(2, 0));
    let a1 = b.publish("a", raw("1"), None, None, KEEP).await.unwrap();
    b.publish("b", raw("1"), None, None, KEEP).await.unwrap();
    b.publish("a", raw("2"), None, None, KEEP).await.unwrap(); // a is now newer than b
    b.publish("c", raw("1"), None, None, KEEP).await.unwrap();
    assert_eq!(b.channel_count(), 2);
    assert_eq!(b.holds("b"), Some(false), "b was the least recently used");
    let a = b.history("a", HistoryQuery::default(), KEEP).await.unwrap();
    assert_eq!(
        (a.position.epoch.clone(), offsets(&a)),
        (a1.epoch, vec![1, 2])
    );
    // Subscribed channels are never evicted; with every channel in use, creation fails.
    b.subscribe("a").await.unwrap();
    b.subscribe("c").await.unwrap();
    let refused = b.publish("d", raw("1"), None, None, KEEP).await;
    assert!(matches!(refused, Err(BrokerError::OverCapacity(_))));
    assert!(matches!(
        b.subscribe("d").await,
        Err(BrokerError::OverCapacity(_))
    ));
    assert_eq!(b.history_bytes(), 3 * entry_cost(&raw("1"), None, None));
}

#[tokio::test]
async fn history_byte_cap_drops_the_least_recently_used_history() {
    let cost = entry_cost(&raw("1"), None, None);
    let b = limited(MemoryLimits::new(0, 3 * cost));
    let first = b.publish("a", raw("1"), None, None, KEEP).await.unwrap();
    b.subscribe("s").await.unwrap();
    let s1 = b.publish("s", raw("1"), None, None, KEEP).await.unwrap();
    b.publish("b", raw("1"), None, None, KEEP).await.unwrap();
    assert_eq!(b.history_bytes(), 3 * cost);
    b.publish("c", raw("1"), None, None, KEEP).await.unwrap();
    assert_eq!(b.history_bytes(), 3 * cost, "a's history made room");
    assert_eq!(b.holds("a"), Some(false), "nothing else kept a");
    let again = b.publish("a", raw("2"), None, None, KEEP).await.unwrap();
    assert_ne!(
        again.epoch, first.epoch,
        "a forgotten channel starts a new epoch"
    );
    // s was next: its history went, but its subscribers keep its stream.
    let q = HistoryQuery {
        since: Some(0),
        limit: None,
    };
    let h = b.history("s", q, KEEP).await.unwrap();
    assert_eq!(h.position, s1);
    assert!(!h.complete, "offset 1 is gone: recovery must say so");
    assert!(b.history_bytes() <= 3 * cost);
}

#[tokio::test]
async fn namespace_cap_evicts_only_its_namespace() {
    let cost = entry_cost(&raw("1"), None, None);
    let mut limits = MemoryLimits::new(0, 0);
    limits.namespace_history_bytes.insert("n".into(), 2 * cost);
    let b = limited(limits);
    b.publish("keep", raw("1"), None, None, KEEP).await.unwrap();
    for name in ["n:1", "n:2", "n:3", "n:4"] {
        b.publish(name, raw("1"), None, None, KEEP).await.unwrap();
    }
    assert_eq!(b.history_bytes(), 3 * cost);
    assert_eq!(b.holds("keep"), Some(true));
    assert_eq!(b.holds("n:2"), Some(false));
    assert_eq!(b.holds("n:4"), Some(true));
}

#[tokio::test]
async fn accounting_follows_trimming_and_expiry() {
    let b = limited(MemoryLimits::new(0, 1 << 20));
    let short = Retention {
        size: 2,
        ttl: Duration::from_millis(30),
    };
    for i in 0..5 {
        b.publish("c", raw(&i.to_string()), Some("ada".into()), None, short)
            .await
            .unwrap();
    }
    assert_eq!(
        b.history_bytes(),
        2 * entry_cost(&raw("1"), Some("ada"), None)
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(b.sweep_once(), 0);
    assert_eq!(b.history_bytes(), 0);
    let none = Retention {
        size: 0,
        ttl: Duration::from_secs(1),
    };
    b.publish("d", raw("1"), None, None, none).await.unwrap();
    assert_eq!(b.history_bytes(), 0, "nothing retained, nothing counted");
}

#[tokio::test]
async fn presence_and_announcements() {
    let sink = Arc::new(Collect::default());
    let b = MemoryBroker::new(sink.clone());
    b.subscribe("c").await.unwrap();
    let e = PresenceEntry {
        client: "k1".into(),
        user: Some("ada".into()),
        info: None,
    };
    b.presence_add("c", e.clone(), true).await.unwrap();
    b.presence_add("c", e, false).await.unwrap();
    assert_eq!(b.presence("c").await.unwrap().len(), 1);
    b.presence_remove("c", "k1", true).await.unwrap();
    b.presence_remove("c", "k1", true).await.unwrap();
    assert!(b.presence("c").await.unwrap().is_empty());
    let kinds: Vec<_> = sink
        .0
        .lock()
        .iter()
        .map(|d| matches!(d, Delivery::Join { .. }))
        .collect();
    assert_eq!(kinds, [true, false], "one join, one leave");
}

#[tokio::test]
async fn keys_are_stored_delivered_and_counted() {
    let sink = Arc::new(Collect::default());
    let b = MemoryBroker::with_limits(
        sink.clone(),
        MemoryLimits::new(10, 1 << 20),
        Arc::new(Metrics::new()),
    );
    b.subscribe("c").await.unwrap();
    b.publish("c", raw("1"), None, Some("EURUSD".into()), KEEP)
        .await
        .unwrap();
    b.publish("c", raw("2"), None, None, KEEP).await.unwrap();
    let h = b.history("c", HistoryQuery::default(), KEEP).await.unwrap();
    let keys: Vec<_> = h.publications.iter().map(|p| p.key.as_deref()).collect();
    assert_eq!(keys, [Some("EURUSD"), None]);
    let delivered: Vec<_> = sink
        .0
        .lock()
        .iter()
        .filter_map(|d| match d {
            Delivery::Publication { publication, .. } => Some(publication.key.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(delivered, [Some("EURUSD".into()), None]);
    assert_eq!(
        b.history_bytes(),
        entry_cost(&raw("1"), None, Some("EURUSD")) + entry_cost(&raw("2"), None, None),
        "a key counts against the history budget"
    );
}
