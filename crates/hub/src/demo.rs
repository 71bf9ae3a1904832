//! The built-in demo feed behind `/ticker`: random-walk prices on `ticker:prices`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::value::RawValue;

use crate::Hub;

/// The channel the demo ticker publishes to.
pub const TICKER_CHANNEL: &str = "ticker:prices";

/// Time between two rounds of ticks.
pub const TICK_INTERVAL: Duration = Duration::from_millis(500);

const SYMBOLS: [(&str, f64); 5] = [
    ("ACME", 101.25),
    ("GLOBEX", 48.10),
    ("INITECH", 12.75),
    ("UMBRELLA", 230.00),
    ("HOOLI", 77.40),
];

#[derive(Serialize)]
struct Tick<'a> {
    symbol: &'a str,
    price: f64,
    change: f64,
    ts: u64,
}

/// Publishes one tick per symbol every [`TICK_INTERVAL`] through the normal publish path
/// until the hub shuts down. Each tick is keyed by its symbol, so a new subscriber gets
/// every symbol's latest price at once and a slow one the newest price of each.
pub(crate) async fn run_ticker(hub: Hub) {
    let mut prices: Vec<f64> = SYMBOLS.iter().map(|(_, p)| *p).collect();
    let mut shutdown = hub.shared.shutdown_signal();
    let mut interval = tokio::time::interval(TICK_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = shutdown.wait_for(|down| *down) => return,
        }
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        for ((symbol, _), price) in SYMBOLS.iter().zip(prices.iter_mut()) {
            let (next, change) = step(*price, rand::random::<f64>());
            *price = next;
            let tick = Tick {
                symbol,
                price: next,
                change,
                ts,
            };
            let Ok(data) = serde_json::to_string(&tick).map(RawValue::from_string) else {
                continue;
            };
            let Ok(data) = data else { continue };
            if let Err(e) = hub
                .publish_with_key(TICKER_CHANNEL, data, Some(symbol))
                .await
            {
                tracing::warn!(error = %e.message, "demo ticker publish failed");
            }
        }
    }
}

/// One random-walk step: a move of at most ±0.5 % from a uniform `u` in [0, 1), rounded to
/// cents and kept above one cent. Returns the new price and the change.
fn step(price: f64, u: f64) -> (f64, f64) {
    let moved = price * (1.0 + (u - 0.5) * 0.01);
    let next = ((moved * 100.0).round() / 100.0).max(0.01);
    let change = ((next - price) * 100.0).round() / 100.0;
    (next, change)
}

#[cfg(test)]
mod tests {
    use super::step;

    #[test]
    fn steps_stay_small_and_positive() {
        for i in 0..100 {
            let u = f64::from(i) / 100.0;
            let (next, change) = step(100.0, u);
            assert!((99.49..=100.51).contains(&next), "{next}");
            assert!((next - 100.0 - change).abs() < 1e-9);
        }
        assert_eq!(step(0.01, 0.0).0, 0.01);
    }
}
