//! Operations: `/health` (the database answers within [`HEALTH_TIMEOUT`]), `/ready`
//! (migrations ran and keys are loaded, and the server is not shutting down), the
//! per-operation request metrics (`prometheus-client`: requests by operation and outcome
//! code, latency histograms by operation, build information, uptime) and the request log
//! line (operation, outcome code, latency, client address or its /64).
//!
//! What this module is not: the counters of the other subsystems (`server::Metrics`,
//! exported by `http::metrics` next to these).

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde::Serialize;

use crate::server::Server;
use crate::store::admin::AdminStore;

/// How long `/health` waits for the database.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    operation: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Operation {
    operation: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Build {
    version: String,
}

type Latency = Family<Operation, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 1 ms to about 16 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// Lifecycle flags and the per-operation metrics.
pub struct OpsState {
    pub started: Instant,
    shutting_down: AtomicBool,
    /// Woken when the shutdown begins (long-lived streams end then).
    stop: tokio::sync::Notify,
    registry: Registry,
    requests: Family<Outcome, Counter>,
    latency: Latency,
    uptime: Gauge,
}

impl std::fmt::Debug for OpsState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpsState").finish_non_exhaustive()
    }
}

impl Default for OpsState {
    fn default() -> Self {
        // Requirement: OPS-METRICS-1
        let mut registry = Registry::default();
        let requests = Family::<Outcome, Counter>::default();
        registry.register(
            "phoenix_requests",
            "Requests per operation (service/operation) and outcome code (OK or the error code)",
            requests.clone(),
        );
        let latency: Latency = Family::new_with_constructor(latency_histogram);
        registry.register(
            "phoenix_request_duration_seconds",
            "Time to answer a request, per operation",
            latency.clone(),
        );
        let build = Family::<Build, Gauge>::default();
        build
            .get_or_create(&Build {
                version: env!("CARGO_PKG_VERSION").to_string(),
            })
            .set(1);
        registry.register("phoenix_build_info", "The server's version", build);
        let uptime = Gauge::default();
        registry.register(
            "phoenix_uptime_seconds",
            "Seconds since the server started",
            uptime.clone(),
        );
        Self {
            started: Instant::now(),
            shutting_down: AtomicBool::new(false),
            stop: tokio::sync::Notify::new(),
            registry,
            requests,
            latency,
            uptime,
        }
    }
}

impl OpsState {
    /// Count one answered request.
    pub fn observe(&self, operation: &str, code: &str, elapsed: Duration) {
        self.requests
            .get_or_create(&Outcome {
                operation: operation.to_string(),
                code: code.to_string(),
            })
            .inc();
        self.latency
            .get_or_create(&Operation {
                operation: operation.to_string(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// The metrics in the Prometheus text format (without the OpenMetrics `# EOF`).
    pub fn encode(&self) -> String {
        self.uptime
            .set(i64::try_from(self.started.elapsed().as_secs()).unwrap_or(i64::MAX));
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            tracing::error!("cannot encode the request metrics");
            return String::new();
        }
        out.lines()
            .filter(|line| *line != "# EOF")
            .map(|line| format!("{line}\n"))
            .collect()
    }

    // Requirement: OPS-HEALTH-2
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        self.stop.notify_waiters();
    }

    /// Completes once the shutdown has begun.
    pub async fn stopping(&self) {
        loop {
            let notified = self.stop.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.shutting_down() {
                return;
            }
            notified.await;
        }
    }

    pub fn shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }
}

/// One check of `/health` or `/ready`.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The body of `/health` and `/ready`.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub status: &'static str,
    pub checks: Vec<Check>,
}

impl Status {
    fn of(checks: Vec<Check>) -> Self {
        let ok = checks.iter().all(|c| c.ok);
        Self {
            status: if ok { "ok" } else { "failing" },
            checks,
        }
    }

    pub fn ok(&self) -> bool {
        self.status == "ok"
    }
}

// Requirement: OPS-HEALTH-1
/// `/health`: the database answers a trivial query within [`HEALTH_TIMEOUT`].
pub async fn health(server: &Server) -> Status {
    let database = match tokio::time::timeout(HEALTH_TIMEOUT, AdminStore::ping(&server.store)).await
    {
        Ok(Ok(())) => Check {
            name: "database",
            ok: true,
            error: None,
        },
        Ok(Err(e)) => Check {
            name: "database",
            ok: false,
            error: Some(crate::store::admin::describe(&e)),
        },
        Err(_) => Check {
            name: "database",
            ok: false,
            error: Some(format!("no answer within {} s", HEALTH_TIMEOUT.as_secs())),
        },
    };
    Status::of(vec![database])
}

// Requirement: OPS-HEALTH-2
/// `/ready`: a server exists only after its migrations ran and its keys were loaded, so
/// it is ready once it serves, until it begins shutting down.
pub fn ready(server: &Server) -> Status {
    let shutting_down = server.metrics.ops.shutting_down();
    Status::of(vec![Check {
        name: "accepting requests",
        ok: !shutting_down,
        error: shutting_down.then(|| "shutting down".to_string()),
    }])
}

// Requirement: OPS-LOG-2
/// The client address as logged: an IPv4 address, or the /64 of an IPv6 address.
pub fn log_address(ip: Option<IpAddr>) -> String {
    match ip {
        None => "-".into(),
        Some(IpAddr::V4(v4)) => v4.to_string(),
        Some(IpAddr::V6(v6)) => {
            let s = v6.segments();
            let prefix = std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0);
            format!("{prefix}/64")
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ipv6_addresses_are_logged_as_their_64() {
        // Requirement: OPS-LOG-2
        assert_eq!(
            log_address(Some("2001:db8:1:2:3:4:5:6".parse().unwrap())),
            "2001:db8:1:2::/64"
        );
        assert_eq!(log_address(Some("192.0.2.7".parse().unwrap())), "192.0.2.7");
        assert_eq!(log_address(None), "-");
    }

    #[test]
    fn request_metrics_have_counts_and_buckets() {
        // Requirement: OPS-METRICS-1
        let ops = OpsState::default();
        ops.observe("as/register", "OK", Duration::from_millis(3));
        ops.observe("as/register", "USER_EXISTS", Duration::from_millis(1));
        let text = ops.encode();
        assert!(
            text.contains("phoenix_requests_total{operation=\"as/register\",code=\"OK\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "phoenix_request_duration_seconds_bucket{le=\"0.004\",operation=\"as/register\"} 2"
            ) || text.contains(
                "phoenix_request_duration_seconds_bucket{operation=\"as/register\",le=\"0.004\"} 2"
            ),
            "{text}"
        );
        assert!(text.contains("phoenix_build_info{version="), "{text}");
        assert!(!text.contains("# EOF"));
    }
}
