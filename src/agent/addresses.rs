//! The addresses instances' haproxy binds. With `instances.vip_interface` set, an
//! address the host lacks is added to that interface (/32 or /128) before haproxy needs
//! it, and removed once no instance binds it any more. Each instance records the
//! addresses it added in `RUN/<id>/addresses`; an address still bound by another
//! instance passes to that instance's record instead of being removed.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Mutex;

use super::daemons::{rendered_config, run_captured};
use super::ids::InstanceId;
use super::store::{Daemon, InstanceStore};
use crate::fsutil::{remove_durable, write_atomic};

/// The IP addresses of `bind` lines in an haproxy configuration (wildcards, unix sockets
/// and other address families are not addresses to manage).
pub fn haproxy_bind_ips(config: &str) -> BTreeSet<IpAddr> {
    let mut ips = BTreeSet::new();
    for line in config.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("bind") {
            continue;
        }
        let Some(list) = words.next() else { continue };
        for item in list.split(',') {
            let item = item
                .strip_prefix("ipv4@")
                .or_else(|| item.strip_prefix("ipv6@"))
                .unwrap_or(item);
            let host = if let Some(rest) = item.strip_prefix('[') {
                rest.split(']').next().unwrap_or("")
            } else if item.matches(':').count() > 1 {
                // Bare IPv6: the port follows the last colon.
                item.rsplit_once(':').map(|(h, _)| h).unwrap_or("")
            } else {
                item.split(':').next().unwrap_or("")
            };
            if let Ok(ip) = host.parse::<IpAddr>()
                && !ip.is_unspecified()
            {
                ips.insert(ip);
            }
        }
    }
    ips
}

pub struct AddressManager {
    pub interface: String,
    pub ip_bin: PathBuf,
    pub store: InstanceStore,
    /// Address changes touch other instances' records: one at a time.
    lock: Mutex<()>,
}

impl AddressManager {
    pub fn new(interface: String, ip_bin: PathBuf, store: InstanceStore) -> AddressManager {
        AddressManager {
            interface,
            ip_bin,
            store,
            lock: Mutex::new(()),
        }
    }

    fn record_path(&self, id: &InstanceId) -> PathBuf {
        self.store.run_dir(id).join("addresses")
    }

    fn read_record(&self, id: &InstanceId) -> BTreeSet<IpAddr> {
        std::fs::read_to_string(self.record_path(id))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    fn write_record(&self, id: &InstanceId, ips: &BTreeSet<IpAddr>) -> Result<(), String> {
        let path = self.record_path(id);
        if ips.is_empty() {
            return remove_durable(&path).map(|_| ()).map_err(|e| e.to_string());
        }
        let text: String = ips.iter().map(|ip| format!("{ip}\n")).collect();
        write_atomic(&path, text.as_bytes(), 0o640).map_err(|e| format!("{}: {e}", path.display()))
    }

    fn ip(&self, args: &[&str]) -> Result<String, String> {
        run_captured(&self.ip_bin, args).map_err(|e| format!("ip {}: {e}", args.join(" ")))
    }

    fn host_addresses(&self) -> Result<BTreeSet<IpAddr>, String> {
        let text = self.ip(&["-o", "addr", "show"])?;
        Ok(text
            .lines()
            .filter_map(|l| {
                let mut w = l
                    .split_whitespace()
                    .skip_while(|w| *w != "inet" && *w != "inet6");
                w.next()?;
                w.next()?.split('/').next()?.parse().ok()
            })
            .collect())
    }

    fn prefix(ip: &IpAddr) -> String {
        match ip {
            IpAddr::V4(_) => format!("{ip}/32"),
            IpAddr::V6(_) => format!("{ip}/128"),
        }
    }

    /// Brings the addresses of instance `id` in line with its rendered haproxy
    /// configuration (`None`: it binds nothing any more). Returns what changed.
    pub fn sync(&self, id: &InstanceId, rendered: Option<&str>) -> Result<String, String> {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let desired = rendered.map(haproxy_bind_ips).unwrap_or_default();
        let mut ours = self.read_record(id);
        let mut log = Vec::new();
        let host = self.host_addresses()?;
        for ip in desired.iter().filter(|ip| !host.contains(ip)) {
            let mut args = vec!["addr", "add"];
            let prefix = Self::prefix(ip);
            args.extend([prefix.as_str(), "dev", self.interface.as_str()]);
            if ip.is_ipv6() {
                args.push("nodad");
            }
            self.ip(&args)?;
            ours.insert(*ip);
            log.push(format!("address {ip} added to {}", self.interface));
        }
        let unused: Vec<IpAddr> = ours.difference(&desired).copied().collect();
        for ip in unused {
            ours.remove(&ip);
            match self.other_user(id, &ip) {
                Some(other) => {
                    let mut theirs = self.read_record(&other);
                    theirs.insert(ip);
                    self.write_record(&other, &theirs)?;
                }
                None => {
                    let prefix = Self::prefix(&ip);
                    self.ip(&["addr", "del", &prefix, "dev", &self.interface])?;
                    log.push(format!("address {ip} removed from {}", self.interface));
                }
            }
        }
        if self.store.run_dir(id).is_dir() {
            self.write_record(id, &ours)?;
        }
        Ok(log.join("\n"))
    }

    /// Another instance whose rendered haproxy configuration binds `ip`.
    fn other_user(&self, id: &InstanceId, ip: &IpAddr) -> Option<InstanceId> {
        self.store
            .list()
            .ok()?
            .into_iter()
            .filter(|o| o != id)
            .find(|o| {
                std::fs::read_to_string(rendered_config(&self.store, o, Daemon::Haproxy))
                    .map(|c| haproxy_bind_ips(&c).contains(ip))
                    .unwrap_or(false)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_addresses() {
        let cfg = "frontend a\n    bind 192.0.2.10:80,192.0.2.11:81 ssl crt /x\n    bind *:8080\n    bind :9090\n    bind [2001:db8::1]:443\n    bind ipv6@2001:db8::2:80\n    bind 0.0.0.0:1\n    bind /run/x.sock\n    # bind 192.0.2.99:1\nbackend b\n    server s 192.0.2.50:80\n";
        let ips: Vec<String> = haproxy_bind_ips(cfg)
            .iter()
            .map(|i| i.to_string())
            .collect();
        assert_eq!(
            ips,
            ["192.0.2.10", "192.0.2.11", "2001:db8::1", "2001:db8::2"]
        );
    }
}
