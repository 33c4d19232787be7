//! systemd: tells the service manager where beacond is in its life
//! (`sd_notify`, for `Type=notify` units).
//!
//! Owns the notification socket's protocol: `READY=1` once the listeners are
//! bound and the sink (producer, spool) is up, `STOPPING=1` when the drain
//! starts, `WATCHDOG=1` at half the unit's `WatchdogSec` from a task on the
//! runtime that serves requests (so a wedged runtime stops the pings and
//! systemd restarts the process), and `STATUS=` with a one-line summary that
//! `systemctl status` shows. Without `NOTIFY_SOCKET` (not started by systemd)
//! every call is a no-op.
//!
//! `READY=1` does not wait for the broker: whether traffic should come is
//! `/readyz`'s answer to the load balancer, which changes while the process
//! runs; systemd's "started" means serving.
//!
//! Must never: block a runtime worker (each datagram is sent from a blocking
//! thread), fail start-up or shutdown because the manager cannot be told.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;

/// How often `STATUS=` is refreshed when no watchdog asks for more.
const STATUS_INTERVAL: Duration = Duration::from_secs(10);

/// The service manager, as the environment names it.
#[derive(Debug, Clone)]
pub struct ServiceManager {
    /// `NOTIFY_SOCKET` is set.
    enabled: bool,
    /// `WATCHDOG_USEC` (for this process), when set.
    watchdog: Option<Duration>,
    /// A failed send is logged once, not at every ping.
    warned: Arc<AtomicBool>,
}

impl ServiceManager {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID`.
    pub fn from_env() -> Self {
        Self {
            enabled: std::env::var_os("NOTIFY_SOCKET").is_some_and(|s| !s.is_empty()),
            watchdog: sd_notify::watchdog_enabled().filter(|d| !d.is_zero()),
            warned: Arc::default(),
        }
    }

    /// Nobody to tell (the default of an embedded service).
    pub fn disabled() -> Self {
        Self {
            enabled: false,
            watchdog: None,
            warned: Arc::default(),
        }
    }

    /// Whether a service manager listens.
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// `READY=1` with a status line.
    pub async fn ready(&self, status: String) {
        self.send(vec![Message::Ready, Message::Status(status)])
            .await;
    }

    /// `STOPPING=1` with a status line.
    pub async fn stopping(&self, status: String) {
        self.send(vec![Message::Stopping, Message::Status(status)])
            .await;
    }

    /// Starts the task that sends `WATCHDOG=1` at half the watchdog interval
    /// (when the unit has one) and refreshes `STATUS=` from `status`, on the
    /// current runtime. It ends when `stop` is set.
    pub fn spawn_heartbeat(
        &self,
        status: impl Fn() -> String + Send + 'static,
        stop: Arc<AtomicBool>,
    ) {
        if !self.enabled {
            return;
        }
        let period = self
            .watchdog
            .map_or(STATUS_INTERVAL, |w| (w / 2).max(Duration::from_millis(1)));
        let watchdog = self.watchdog.is_some();
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut since_status = STATUS_INTERVAL;
            loop {
                tick.tick().await;
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let mut messages = Vec::with_capacity(2);
                if watchdog {
                    messages.push(Message::Watchdog);
                }
                since_status += period;
                if since_status >= STATUS_INTERVAL {
                    since_status = Duration::ZERO;
                    messages.push(Message::Status(status()));
                }
                if !messages.is_empty() {
                    this.send(messages).await;
                }
            }
        });
    }

    async fn send(&self, messages: Vec<Message>) {
        if !self.enabled {
            return;
        }
        let warned = self.warned.clone();
        let sent = tokio::task::spawn_blocking(move || {
            let states: Vec<NotifyState<'_>> = messages.iter().map(Message::state).collect();
            sd_notify::notify(&states)
        })
        .await;
        let error = match sent {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        };
        if !warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                error,
                "cannot notify the service manager (NOTIFY_SOCKET); going on"
            );
        }
    }
}

/// One line of a notification.
#[derive(Debug)]
enum Message {
    Ready,
    Stopping,
    Watchdog,
    Status(String),
}

impl Message {
    fn state(&self) -> NotifyState<'_> {
        match self {
            Message::Ready => NotifyState::Ready,
            Message::Stopping => NotifyState::Stopping,
            Message::Watchdog => NotifyState::Watchdog,
            Message::Status(s) => NotifyState::Status(one_line(s)),
        }
    }
}

/// A status is one line: cut at the first line break.
fn one_line(s: &str) -> &str {
    s.split(['\n', '\r']).next().unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_is_one_line() {
        assert_eq!(one_line("ready; spool 0\nsecond"), "ready; spool 0");
        assert_eq!(one_line("plain"), "plain");
        assert_eq!(one_line(""), "");
    }
}
