//! The signed UDP heartbeat Octavia's health manager expects (message version 3): every
//! `heartbeat_interval`, one datagram to the next address of `controller_ip_port_list`
//! (round robin): the JSON message, zlib-compressed (level 9), followed by the hex
//! HMAC-SHA256 of the compressed bytes under `heartbeat_key`.
//!
//! ```text
//! {"id": AMPHORA_ID, "seq": N, "ver": 3,
//!  "listeners": {LISTENER_ID: {"status": "OPEN", "stats": {"tx", "rx", "conns", "totconns", "ereq"}}},
//!  "pools": {"POOL_ID:LISTENER_ID": {"status": "UP", "members": {MEMBER_ID: "UP"}}}}
//! ```
//! Listeners and pools come from `show stat` on each load balancer's stats socket
//! (`RUN/<lb>/octavia-stats.sock`); `tx`, `rx`, `totconns` and `ereq` are deltas since
//! the previous message, `conns` the current sessions, as Octavia's own agent sends them.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use serde_json::{Map, Value, json};

use crate::agent::store::{Daemon, InstanceStore, running_pid};

use super::translate::STATS_SOCKET;

/// Message format version (Octavia's `MSG_VER`).
pub const MSG_VER: u64 = 3;
/// Largest `show stat` answer read from one socket.
const MAX_STATS_BYTES: u64 = 8 * 1024 * 1024;

/// What the sender needs; replaced at run time by `PUT /1.0/config`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeartbeatSettings {
    pub amphora_id: String,
    pub key: String,
    pub interval: Duration,
    pub controllers: Vec<SocketAddr>,
}

/// Absolute counters of one listener at the previous message.
#[derive(Debug, Clone, Copy, Default)]
struct Counters {
    bin: u64,
    bout: u64,
    stot: u64,
    ereq: u64,
}

/// One row of `show stat`, by column name.
type Row = HashMap<String, String>;

/// Parses haproxy's `show stat` CSV (header line `# pxname,svname,...`).
pub fn parse_stats(csv: &str) -> Vec<Row> {
    let mut lines = csv.lines();
    let Some(header) = lines.next().and_then(|h| h.strip_prefix("# ")) else {
        return Vec::new();
    };
    let columns: Vec<&str> = header.split(',').collect();
    lines
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            columns
                .iter()
                .zip(l.split(','))
                .map(|(c, v)| ((*c).to_string(), v.to_string()))
                .collect()
        })
        .collect()
}

/// Builds the message body from every load balancer's rows; updates `previous`.
fn build_message(
    amphora_id: &str,
    seq: u64,
    stats: &[Vec<Row>],
    previous: &mut HashMap<String, Counters>,
) -> Value {
    let num = |row: &Row, key: &str| -> u64 {
        row.get(key)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let text = |row: &Row, key: &str| row.get(key).cloned().unwrap_or_default();
    let mut listeners = Map::new();
    let mut pools: Map<String, Value> = Map::new();
    for rows in stats {
        for row in rows {
            let pxname = text(row, "pxname");
            let svname = text(row, "svname");
            if svname == "FRONTEND" {
                let now = Counters {
                    bin: num(row, "bin"),
                    bout: num(row, "bout"),
                    stot: num(row, "stot"),
                    ereq: num(row, "ereq"),
                };
                let last = previous.insert(pxname.clone(), now).unwrap_or_default();
                // A restarted haproxy starts its counters again: the delta is the value.
                let delta = |n: u64, l: u64| if n >= l { n - l } else { n };
                listeners.insert(
                    pxname,
                    json!({
                        "status": text(row, "status"),
                        "stats": {
                            "tx": delta(now.bout, last.bout),
                            "rx": delta(now.bin, last.bin),
                            "conns": num(row, "scur"),
                            "totconns": delta(now.stot, last.stot),
                            "ereq": delta(now.ereq, last.ereq),
                        }
                    }),
                );
                continue;
            }
            // Octavia's pools are backends named POOL_ID:LISTENER_ID; the prometheus
            // exporter's internal proxy is not billed traffic.
            if !pxname.contains(':') || pxname.contains("prometheus") {
                continue;
            }
            let pool = pools
                .entry(pxname)
                .or_insert_with(|| json!({"status": "", "members": {}}));
            if svname == "BACKEND" {
                pool["status"] = Value::String(text(row, "status"));
            } else {
                let mut status = text(row, "status");
                // haproxy reports a drained member as UP with weight 0.
                if status == "UP" && text(row, "weight") == "0" {
                    status = "DRAIN".into();
                }
                pool["members"][svname] = Value::String(status);
            }
        }
    }
    json!({
        "id": amphora_id,
        "seq": seq,
        "listeners": listeners,
        "pools": pools,
        "ver": MSG_VER,
    })
}

/// Compresses and signs a message: zlib(JSON) followed by hex(HMAC-SHA256(key, zlib)).
pub fn wrap_envelope(message: &Value, key: &str) -> Vec<u8> {
    use flate2::Compression;
    use flate2::write::ZlibEncoder;
    let json = serde_json::to_vec(message).unwrap_or_default();
    let mut encoder = ZlibEncoder::new(Vec::with_capacity(json.len()), Compression::new(9));
    // Writing to a Vec cannot fail.
    let _ = encoder.write_all(&json);
    let mut payload = encoder.finish().unwrap_or_default();
    let tag = aws_lc_rs::hmac::sign(
        &aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, key.as_bytes()),
        &payload,
    );
    payload.extend_from_slice(crate::certs::hex(tag.as_ref()).as_bytes());
    payload
}

/// One command on an haproxy stats socket, its answer bounded in size and time.
pub fn query_socket(socket: &Path, command: &str) -> std::io::Result<String> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(format!("{command}\n").as_bytes())?;
    let mut out = String::new();
    stream.take(MAX_STATS_BYTES).read_to_string(&mut out)?;
    Ok(out)
}

/// The sender: runs until the task is dropped.
pub struct Sender {
    pub store: InstanceStore,
    pub settings: Arc<ArcSwap<Option<HeartbeatSettings>>>,
}

impl Sender {
    pub async fn run(self) {
        let mut seq = 0u64;
        let mut next = 0usize;
        let previous = Arc::new(std::sync::Mutex::new(HashMap::new()));
        loop {
            let settings = self.settings.load_full();
            let Some(settings) = settings.as_ref().clone() else {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            };
            if !settings.controllers.is_empty() {
                let store = self.store.clone();
                let prev = previous.clone();
                let s = settings.clone();
                let this_seq = seq;
                let target = settings.controllers[next % settings.controllers.len()];
                next = next.wrapping_add(1);
                seq += 1;
                let sent = tokio::task::spawn_blocking(move || {
                    let stats: Vec<Vec<Row>> = store
                        .list()
                        .unwrap_or_default()
                        .iter()
                        // Only running load balancers are reported, as Octavia's agent does.
                        .filter(|id| running_pid(&store.pid_file(id, Daemon::Haproxy), "haproxy").is_some())
                        .map(|id| store.run_dir(id).join(STATS_SOCKET))
                        .filter(|sock| sock.exists())
                        .filter_map(|sock| match query_socket(&sock, "show stat") {
                            Ok(csv) => Some(parse_stats(&csv)),
                            Err(e) => {
                                tracing::warn!(socket = %sock.display(), error = %e, "heartbeat: cannot read haproxy stats");
                                None
                            }
                        })
                        .collect();
                    let mut prev = prev.lock().unwrap_or_else(|e| e.into_inner());
                    let message = build_message(&s.amphora_id, this_seq, &stats, &mut prev);
                    let envelope = wrap_envelope(&message, &s.key);
                    let bind: SocketAddr = match target {
                        SocketAddr::V4(_) => "0.0.0.0:0".parse().expect("address"),
                        SocketAddr::V6(_) => "[::]:0".parse().expect("address"),
                    };
                    UdpSocket::bind(bind).and_then(|sock| sock.send_to(&envelope, target))
                })
                .await;
                match sent {
                    Ok(Ok(_)) => tracing::debug!(%target, seq = this_seq, "heartbeat sent"),
                    Ok(Err(e)) => tracing::warn!(%target, error = %e, "heartbeat not sent"),
                    Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
                }
            }
            tokio::time::sleep(settings.interval).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATS: &str = "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status,weight,\n\
        listener-1,FRONTEND,,,2,5,100,10,1000,2000,0,0,1,,,,,OPEN,,\n\
        pool-1:listener-1,member-a,0,0,1,1,,5,500,1000,,0,,0,0,0,0,UP,1,\n\
        pool-1:listener-1,member-b,0,0,0,0,,5,500,1000,,0,,0,0,0,0,UP,0,\n\
        pool-1:listener-1,BACKEND,0,0,1,1,,10,1000,2000,0,0,,0,0,0,0,UP,1,\n\
        prometheus-exporter-internal:x,BACKEND,0,0,0,0,,0,0,0,0,0,,0,0,0,0,UP,0,\n";

    #[test]
    fn message_from_stats_with_deltas() {
        let rows = parse_stats(STATS);
        assert_eq!(rows.len(), 5);
        let mut previous = HashMap::new();
        let m = build_message("amp-1", 7, std::slice::from_ref(&rows), &mut previous);
        assert_eq!(m["id"], "amp-1");
        assert_eq!(m["seq"], 7);
        assert_eq!(m["ver"], 3);
        let l = &m["listeners"]["listener-1"];
        assert_eq!(l["status"], "OPEN");
        assert_eq!(l["stats"]["conns"], 2);
        assert_eq!(l["stats"]["totconns"], 10);
        assert_eq!(l["stats"]["rx"], 1000);
        assert_eq!(l["stats"]["tx"], 2000);
        assert_eq!(l["stats"]["ereq"], 1);
        let p = &m["pools"]["pool-1:listener-1"];
        assert_eq!(p["status"], "UP");
        assert_eq!(p["members"]["member-a"], "UP");
        assert_eq!(p["members"]["member-b"], "DRAIN");
        assert!(m["pools"].get("prometheus-exporter-internal:x").is_none());
        // The next message carries what changed since.
        let more = STATS.replace(
            ",10,1000,2000,0,0,1,,,,,OPEN",
            ",13,1500,2000,0,0,1,,,,,OPEN",
        );
        let m = build_message("amp-1", 8, &[parse_stats(&more)], &mut previous);
        let s = &m["listeners"]["listener-1"]["stats"];
        assert_eq!(
            (s["totconns"].as_u64(), s["rx"].as_u64(), s["tx"].as_u64()),
            (Some(3), Some(500), Some(0))
        );
    }

    #[test]
    fn envelope_is_zlib_then_hex_hmac() {
        use flate2::read::ZlibDecoder;
        let m = json!({"id": "amp-1", "seq": 0, "listeners": {}, "pools": {}, "ver": 3});
        let e = wrap_envelope(&m, "insecure");
        let (payload, tag) = e.split_at(e.len() - 64);
        let expected = aws_lc_rs::hmac::sign(
            &aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, b"insecure"),
            payload,
        );
        assert_eq!(tag, crate::certs::hex(expected.as_ref()).as_bytes());
        let mut json = String::new();
        ZlibDecoder::new(payload).read_to_string(&mut json).unwrap();
        assert_eq!(serde_json::from_str::<Value>(&json).unwrap(), m);
        // Another key, another tag.
        assert_ne!(&wrap_envelope(&m, "other")[e.len() - 64..], tag);
    }
}
