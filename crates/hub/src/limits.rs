//! Connection limits: total and per IP address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use parking_lot::Mutex;

/// Which limit refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LimitError {
    /// `limits.max_connections`.
    Total,
    /// `limits.max_connections_per_ip`.
    PerIp,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// Counts open connections; a [`ConnectionPermit`] gives its slot back when dropped.
#[derive(Debug)]
pub(crate) struct ConnectionLimits {
    counts: Mutex<Counts>,
    max: usize,
    max_per_ip: usize,
}

/// One open connection's slot.
#[derive(Debug)]
pub(crate) struct ConnectionPermit {
    limits: Arc<ConnectionLimits>,
    ip: IpAddr,
}

impl ConnectionLimits {
    /// `max_per_ip == 0` means no per-IP limit.
    pub(crate) fn new(max: usize, max_per_ip: usize) -> Self {
        Self {
            counts: Mutex::new(Counts::default()),
            max,
            max_per_ip,
        }
    }

    /// Takes a slot for a connection from `ip`.
    pub(crate) fn acquire(self: &Arc<Self>, ip: IpAddr) -> Result<ConnectionPermit, LimitError> {
        let mut c = self.counts.lock();
        if c.total >= self.max {
            return Err(LimitError::Total);
        }
        let n = c.per_ip.entry(ip).or_insert(0);
        if self.max_per_ip > 0 && *n >= self.max_per_ip {
            return Err(LimitError::PerIp);
        }
        *n += 1;
        c.total += 1;
        Ok(ConnectionPermit {
            limits: self.clone(),
            ip,
        })
    }

    /// Open connections.
    pub(crate) fn open(&self) -> usize {
        self.counts.lock().total
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut c = self.limits.counts.lock();
        c.total -= 1;
        if let Some(n) = c.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                c.per_ip.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_and_release() {
        let l = Arc::new(ConnectionLimits::new(3, 2));
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let p1 = l.acquire(a).unwrap();
        let _p2 = l.acquire(a).unwrap();
        assert_eq!(l.acquire(a).unwrap_err(), LimitError::PerIp);
        let _p3 = l.acquire(b).unwrap();
        assert_eq!(l.acquire(b).unwrap_err(), LimitError::Total);
        drop(p1);
        assert_eq!(l.open(), 2);
        assert!(l.acquire(a).is_ok());
    }
}
