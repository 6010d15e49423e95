//! The network of the `netns` backend: a bridge the controller manages (its address the
//! subnet's first), and for each appliance a network namespace joined to it by a veth
//! pair: `BRIDGE.SLOT` on the bridge, `eth0` with the slot's address inside, the bridge
//! as default gateway. Bridge ports are isolated from each other (appliances cannot
//! reach one another), and an nftables table lets appliances reach the host only at the
//! controller's appliance listeners. Everything through iproute2 and nft, idempotent.

use std::net::Ipv4Addr;
use std::process::Command;

/// Where appliances' namespaces are joined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Netns {
    pub bridge: String,
    pub network: Ipv4Addr,
    pub prefix: u8,
}

impl Netns {
    /// The bridge's address: the subnet's first.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }

    /// The address of a slot: the one after the gateway plus the slot, below the
    /// broadcast address.
    pub fn address(&self, slot: u32) -> Option<Ipv4Addr> {
        let size = 1u32 << (32 - self.prefix);
        let offset = slot.checked_add(2)?;
        (offset < size - 1).then(|| Ipv4Addr::from(u32::from(self.network) + offset))
    }

    /// The namespace of a slot.
    pub fn namespace(&self, slot: u32) -> String {
        format!("{}-{slot}", self.bridge)
    }

    /// The host side of a slot's veth pair (a bridge port).
    fn port(&self, slot: u32) -> String {
        format!("{}.{slot}", self.bridge)
    }

    fn table(&self) -> String {
        format!("applianced-{}", self.bridge)
    }

    /// Makes the bridge (with its address, up) and the host's rules for it: appliances
    /// reach the host only on `open_ports` of the bridge's address (the controller's
    /// appliance listeners), and nothing is forwarded from the bridge.
    pub fn ensure_bridge(&self, open_ports: &[u16]) -> Result<(), String> {
        let b = self.bridge.as_str();
        if !link_exists(b) {
            ip(&["link", "add", "name", b, "type", "bridge"])?;
        }
        let cidr = format!("{}/{}", self.gateway(), self.prefix);
        ip(&["addr", "replace", &cidr, "dev", b])?;
        ip(&["link", "set", b, "up"])?;
        let ports = if open_ports.is_empty() {
            String::new()
        } else {
            let list: Vec<String> = open_ports.iter().map(u16::to_string).collect();
            format!(
                "iifname \"{b}\" ip daddr {} tcp dport {{ {} }} accept\n",
                self.gateway(),
                list.join(", ")
            )
        };
        let table = self.table();
        // Made anew as a whole: `delete` of a missing table fails, so it is added first.
        let rules = format!(
            "table inet {table} {{}}\n\
             delete table inet {table}\n\
             table inet {table} {{\n\
             chain input {{\n\
             type filter hook input priority 0; policy accept;\n\
             iifname \"{b}\" ct state established,related accept\n\
             {ports}\
             iifname \"{b}\" drop\n\
             }}\n\
             chain forward {{\n\
             type filter hook forward priority 0; policy accept;\n\
             iifname \"{b}\" drop\n\
             oifname \"{b}\" drop\n\
             }}\n\
             }}\n"
        );
        run_stdin("nft", &["-f", "-"], &rules)
    }

    /// Makes the slot's namespace and veth pair (idempotent): `eth0` with `address`
    /// inside, up, routed through the bridge; its host side an isolated bridge port.
    pub fn ensure_namespace(&self, slot: u32) -> Result<String, String> {
        let ns = self.namespace(slot);
        let port = self.port(slot);
        let address = self
            .address(slot)
            .ok_or_else(|| format!("slot {slot} is beyond the subnet"))?;
        if !namespace_exists(&ns) {
            // A port left from a namespace that is gone would clash with the new one.
            delete_link(&port)?;
            ip(&["netns", "add", &ns])?;
        }
        if !link_exists(&port) {
            ip(&[
                "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ])?;
        }
        ip(&["link", "set", &port, "master", &self.bridge])?;
        ip(&["link", "set", &port, "up"])?;
        run("bridge", &["link", "set", "dev", &port, "isolated", "on"])?;
        let cidr = format!("{address}/{}", self.prefix);
        ip(&["-n", &ns, "addr", "replace", &cidr, "dev", "eth0"])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        ip(&[
            "-n",
            &ns,
            "route",
            "replace",
            "default",
            "via",
            &self.gateway().to_string(),
        ])?;
        Ok(ns)
    }

    /// Removes the slot's namespace (its `eth0` and so the veth pair go with it) and
    /// the host side if anything kept it.
    pub fn remove_namespace(&self, slot: u32) -> Result<(), String> {
        let ns = self.namespace(slot);
        if namespace_exists(&ns) {
            ip(&["netns", "del", &ns])?;
        }
        delete_link(&self.port(slot))
    }
}

/// Whether a named network namespace exists (`ip netns add` makes `/run/netns/NAME`).
pub fn namespace_exists(name: &str) -> bool {
    std::path::Path::new("/run/netns").join(name).exists()
}

/// Whether a network interface exists in the controller's namespace.
pub fn link_exists(name: &str) -> bool {
    std::path::Path::new("/sys/class/net").join(name).exists()
}

/// Deletes a network interface if it exists. The host side of a veth pair goes away on
/// its own, a moment after its namespace: gone meanwhile is as good as deleted.
fn delete_link(name: &str) -> Result<(), String> {
    if !link_exists(name) {
        return Ok(());
    }
    match ip(&["link", "del", name]) {
        Err(_) if !link_exists(name) => Ok(()),
        other => other,
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    run("ip", args)
}

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    run_stdin(program, args, "")
}

/// Runs a network tool; its error output is the error.
fn run_stdin(program: &str, args: &[&str], input: &str) -> Result<(), String> {
    use std::io::Write;
    let mut child = Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .map_err(|e| format!("{program}: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_names_of_slots() {
        let n = Netns {
            bridge: "apl0".into(),
            network: "10.213.0.0".parse().unwrap(),
            prefix: 29,
        };
        assert_eq!(n.gateway(), Ipv4Addr::new(10, 213, 0, 1));
        assert_eq!(n.address(0), Some(Ipv4Addr::new(10, 213, 0, 2)));
        assert_eq!(n.address(4), Some(Ipv4Addr::new(10, 213, 0, 6)));
        // .7 is the broadcast address.
        assert_eq!(n.address(5), None);
        assert_eq!(n.namespace(3), "apl0-3");
        assert_eq!(n.port(3), "apl0.3");
    }
}
