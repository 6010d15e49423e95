//! `/status`: a background sampler reads `/proc` every `status.interval` and publishes a
//! serialised snapshot; requests only clone the latest bytes, never touch `/proc`.
//!
//! Fields (the seed's names and JSON types): `network_tx`, `network_rx` (bytes/s over the
//! last interval, all interfaces but loopback), `active_node`, `haproxy_count`,
//! `stunnel_count` (strings), `hostname`, `fencing_daemon_status`, `user_cpu`,
//! `system_cpu`, `software_irq` (fractions of all CPU time over the interval), `load`
//! (three strings); then `topology`, `role`, `topology_status`, and the extras
//! `memory_total`, `memory_available`, `disk_total`, `disk_available` (bytes, state
//! directory's file system), `uptime` (seconds), `instance_count`, `agent_cert_not_after`,
//! `sampled_at`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use serde::Serialize;

use super::store::{Daemon, InstanceStore, running_pid};

/// CPU time counters from the first line of `/proc/stat`, in clock ticks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTimes {
    pub user: u64,
    pub system: u64,
    pub softirq: u64,
    pub total: u64,
}

pub fn parse_proc_stat(text: &str) -> Option<CpuTimes> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    if v.len() < 7 {
        return None;
    }
    // user nice system idle iowait irq softirq steal guest guest_nice; guest time is
    // already counted in user, so the total stops at steal.
    let total = v.iter().take(8).sum();
    Some(CpuTimes {
        user: v[0] + v[1],
        system: v[2],
        softirq: v[6],
        total,
    })
}

/// Received and transmitted bytes summed over every interface except loopback.
pub fn parse_net_dev(text: &str) -> (u64, u64) {
    text.lines()
        .skip(2)
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            if name.trim() == "lo" {
                return None;
            }
            let f: Vec<u64> = rest
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            Some((*f.first()?, *f.get(8)?))
        })
        .fold((0, 0), |(rx, tx), (r, t)| (rx + r, tx + t))
}

pub fn parse_loadavg(text: &str) -> [String; 3] {
    let mut it = text.split_whitespace().map(str::to_owned);
    [
        it.next().unwrap_or_else(|| "0.00".into()),
        it.next().unwrap_or_else(|| "0.00".into()),
        it.next().unwrap_or_else(|| "0.00".into()),
    ]
}

/// (MemTotal, MemAvailable) in bytes.
pub fn parse_meminfo(text: &str) -> (u64, u64) {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .unwrap_or(0)
    };
    (field("MemTotal:"), field("MemAvailable:"))
}

#[derive(Debug, Serialize)]
pub struct StatusSnapshot {
    pub network_tx: f64,
    pub network_rx: f64,
    pub active_node: u8,
    pub haproxy_count: String,
    pub stunnel_count: String,
    pub hostname: String,
    pub fencing_daemon_status: &'static str,
    pub user_cpu: f64,
    pub system_cpu: f64,
    pub software_irq: f64,
    pub load: [String; 3],
    pub topology: &'static str,
    pub role: &'static str,
    pub topology_status: &'static str,
    pub memory_total: u64,
    pub memory_available: u64,
    pub disk_total: u64,
    pub disk_available: u64,
    pub uptime: f64,
    pub instance_count: usize,
    pub agent_cert_not_after: String,
    pub sampled_at: String,
}

/// The latest serialised snapshot.
pub type StatusCache = ArcSwap<Bytes>;

struct Previous {
    at: Instant,
    cpu: CpuTimes,
    net: (u64, u64),
}

/// Reads the system and instance facts.
pub struct Sampler {
    store: InstanceStore,
    state_dir: PathBuf,
    cert_not_after: Arc<dyn Fn() -> i64 + Send + Sync>,
    previous: Option<Previous>,
}

impl Sampler {
    pub fn new(
        store: InstanceStore,
        state_dir: PathBuf,
        cert_not_after: Arc<dyn Fn() -> i64 + Send + Sync>,
    ) -> Sampler {
        Sampler {
            store,
            state_dir,
            cert_not_after,
            previous: None,
        }
    }

    /// Takes one sample. Rates and fractions cover the time since the previous sample
    /// (zero on the first).
    pub fn sample(&mut self) -> StatusSnapshot {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let now = Instant::now();
        let cpu = parse_proc_stat(&read("/proc/stat")).unwrap_or_default();
        let net = parse_net_dev(&read("/proc/net/dev"));
        let (mut user_cpu, mut system_cpu, mut software_irq, mut network_rx, mut network_tx) =
            (0.0, 0.0, 0.0, 0.0, 0.0);
        if let Some(prev) = &self.previous {
            let total = cpu.total.saturating_sub(prev.cpu.total) as f64;
            if total > 0.0 {
                user_cpu = cpu.user.saturating_sub(prev.cpu.user) as f64 / total;
                system_cpu = cpu.system.saturating_sub(prev.cpu.system) as f64 / total;
                software_irq = cpu.softirq.saturating_sub(prev.cpu.softirq) as f64 / total;
            }
            let secs = now.duration_since(prev.at).as_secs_f64();
            if secs > 0.0 {
                network_rx = net.0.saturating_sub(prev.net.0) as f64 / secs;
                network_tx = net.1.saturating_sub(prev.net.1) as f64 / secs;
            }
        }
        self.previous = Some(Previous { at: now, cpu, net });

        let (memory_total, memory_available) = parse_meminfo(&read("/proc/meminfo"));
        let (disk_total, disk_available) = nix::sys::statvfs::statvfs(&self.state_dir)
            .map(|s| {
                let frag = s.fragment_size();
                (s.blocks() * frag, s.blocks_available() * frag)
            })
            .unwrap_or((0, 0));
        let ids = self.store.list().unwrap_or_default();
        let count = |d: Daemon| {
            ids.iter()
                .filter(|id| running_pid(&self.store.pid_file(id, d), d.name()).is_some())
                .count()
        };
        StatusSnapshot {
            network_tx,
            network_rx,
            active_node: 1,
            haproxy_count: count(Daemon::Haproxy).to_string(),
            stunnel_count: count(Daemon::Stunnel).to_string(),
            hostname: nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_default(),
            // No fencing daemon runs in a SINGLE topology, so there is nothing failing.
            fencing_daemon_status: "OK",
            user_cpu,
            system_cpu,
            software_irq,
            load: parse_loadavg(&read("/proc/loadavg")),
            topology: "SINGLE",
            role: "STANDALONE",
            topology_status: "OK",
            memory_total,
            memory_available,
            disk_total,
            disk_available,
            uptime: read("/proc/uptime")
                .split_whitespace()
                .next()
                .and_then(|u| u.parse().ok())
                .unwrap_or(0.0),
            instance_count: ids.len(),
            agent_cert_not_after: crate::certs::format_unix((self.cert_not_after)()),
            sampled_at: crate::certs::format_unix(crate::certs::now_unix()),
        }
    }

    /// Samples into `cache` now and then every `interval`, forever.
    pub async fn run(mut self, cache: Arc<StatusCache>, interval: Duration) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let (sampler, snapshot) = tokio::task::spawn_blocking(move || {
                let s = self.sample();
                (self, s)
            })
            .await
            .expect("the status sampler panicked");
            self = sampler;
            cache.store(Arc::new(Bytes::from(
                serde_json::to_vec(&snapshot).unwrap_or_default(),
            )));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_parsers() {
        let stat = "cpu  100 5 50 800 10 2 8 0 30 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n";
        let c = parse_proc_stat(stat).unwrap();
        assert_eq!(
            c,
            CpuTimes {
                user: 105,
                system: 50,
                softirq: 8,
                total: 975
            }
        );
        assert!(parse_proc_stat("intr 1 2 3").is_none());

        let dev = "Inter-|   Receive |  Transmit\n face |bytes packets errs drop fifo frame compressed multicast|bytes\n    lo: 999 1 0 0 0 0 0 0 999 1 0 0 0 0 0 0\n  eth0: 100 1 0 0 0 0 0 0 40 1 0 0 0 0 0 0\n  eth1: 20 1 0 0 0 0 0 0 2 1 0 0 0 0 0 0\n";
        assert_eq!(parse_net_dev(dev), (120, 42));
        assert_eq!(
            parse_loadavg("0.13 0.12 0.10 1/100 42\n"),
            ["0.13", "0.12", "0.10"]
        );
        assert_eq!(
            parse_meminfo("MemTotal:  1000 kB\nMemFree: 1 kB\nMemAvailable:  500 kB\n"),
            (1_024_000, 512_000)
        );
    }

    #[test]
    fn sample_has_seed_fields_with_seed_types() {
        let dir = tempfile::tempdir().unwrap();
        let store = InstanceStore::new(dir.path(), dir.path());
        let mut s = Sampler::new(store, dir.path().to_path_buf(), Arc::new(|| 0));
        s.sample();
        let v = serde_json::to_value(s.sample()).unwrap();
        for k in [
            "network_tx",
            "network_rx",
            "user_cpu",
            "system_cpu",
            "software_irq",
        ] {
            assert!(v[k].is_f64(), "{k}");
        }
        for k in [
            "haproxy_count",
            "stunnel_count",
            "hostname",
            "fencing_daemon_status",
        ] {
            assert!(v[k].is_string(), "{k}");
        }
        assert_eq!(v["active_node"], 1);
        assert_eq!(v["load"].as_array().unwrap().len(), 3);
        assert!(v["load"][0].is_string());
        assert!(v["memory_total"].as_u64().unwrap() > 0);
    }
}
