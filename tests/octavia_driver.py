"""Drives a real `applianced agent` with OpenStack Octavia's own controller code.

Run by tests/octavia.rs with the Python of a virtualenv holding the `octavia` package:
Octavia's `HaproxyAmphoraLoadBalancerDriver` (with its jinja templater rendering the
haproxy configuration) and its `AmphoraAPIClient1_0` talk to the agent over mutual TLS
on loopback, exactly as Octavia's controller workers do, and every step is checked
against the real haproxy the agent runs.

    octavia_driver.py lifecycle|heartbeat SETTINGS.json

Exits 0 when every check holds; otherwise prints what failed and exits 1.
"""

import hashlib
import http.server
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid

from oslo_config import cfg

# Registers every option of Octavia (haproxy_amphora, certificates, health_manager...).
from octavia.common import config as octavia_config  # noqa: F401
from octavia.common import constants
from octavia.common import data_models as dm
from octavia.amphorae.drivers.haproxy import rest_api_driver
from octavia.amphorae.drivers.haproxy import exceptions as driver_exc
from octavia.amphorae.backends.health_daemon import status_message
from octavia.certificates.manager import local as local_cert_manager

CONF = cfg.CONF


def log(*args):
    print("[octavia-driver]", *args, flush=True)


def fail(message):
    log("FAILED:", message)
    sys.exit(1)


def check(condition, message):
    if not condition:
        fail(message)
    log("ok:", message)


def configure(s):
    CONF([], project="octavia")
    o = CONF.set_override
    o("client_cert", s["client_cert"], group="haproxy_amphora")
    o("server_ca", s["ca"], group="haproxy_amphora")
    o("bind_port", s["agent_port"], group="haproxy_amphora")
    o("base_path", "/var/lib/octavia", group="haproxy_amphora")
    o("base_cert_dir", "/var/lib/octavia/certs", group="haproxy_amphora")
    # One attempt per call: a retry would be a failure of this agent.
    o("connection_max_retries", 1, group="haproxy_amphora")
    o("connection_retry_interval", 1, group="haproxy_amphora")
    o("rest_request_conn_timeout", 10, group="haproxy_amphora")
    o("rest_request_read_timeout", 60, group="haproxy_amphora")
    o("connection_logging", True, group="haproxy_amphora")
    o("cert_manager", "local_cert_manager", group="certificates")
    o("storage_path", s["cert_storage"], group="certificates")
    o("heartbeat_key", s.get("heartbeat_key", "insecure"), group="health_manager")


class Member(http.server.BaseHTTPRequestHandler):
    body = b"hello from the member\n"

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


def start_member():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Member)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server.server_address[1]


def http_get(port, tls=False, attempts=50):
    """GET / through haproxy; returns (body, peer certificate DER or None)."""
    last = None
    for _ in range(attempts):
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            der = None
            if tls:
                ctx = ssl.create_default_context()
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
                sock = ctx.wrap_socket(sock, server_hostname="www.example.com")
                der = sock.getpeercert(binary_form=True)
            sock.sendall(b"GET / HTTP/1.0\r\nHost: www.example.com\r\n\r\n")
            data = b""
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
            sock.close()
            if b" 200 " in data.split(b"\r\n", 1)[0]:
                return data.split(b"\r\n\r\n", 1)[1], der
            last = data[:200]
        except OSError as e:
            last = e
        time.sleep(0.1)
    fail(f"no 200 from haproxy on port {port}: {last!r}")


def refused(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return False
    except OSError:
        return True


def pem_der(path):
    text = open(path).read()
    return ssl.PEM_cert_to_DER_cert(text[: text.index("-----END CERTIFICATE-----") + 25])


def issue(s, name, cn, *extra):
    prefix = os.path.join(s["work"], name)
    subprocess.run(
        [s["bin"], "pki", "issue", "--dir", s["ca_dir"], "--cn", cn, *extra, "--out", prefix],
        check=True,
        capture_output=True,
    )
    return prefix + ".crt", prefix + ".key"


def store_tls_cert(s, name):
    crt, key = issue(s, name, "www.example.com", "--server", "--san", "www.example.com")
    cert_pem = open(crt).read()
    leaf = cert_pem[: cert_pem.index("-----END CERTIFICATE-----") + 26]
    ref = local_cert_manager.LocalCertManager.store_cert(
        None, leaf.encode(), open(key).read().encode()
    )
    return ref, pem_der(crt)


def objects(s, member_port):
    amp = dm.Amphora(
        id=s["amphora_id"], lb_network_ip="127.0.0.1", status=constants.AMPHORA_ALLOCATED
    )
    lb = dm.LoadBalancer(
        id=s["lb_id"],
        project_id="project-1",
        vip=dm.Vip(ip_address="127.0.0.1"),
        amphorae=[amp],
        topology=constants.TOPOLOGY_SINGLE,
        enabled=True,
        listeners=[],
        additional_vips=[],
    )
    amp.load_balancer = lb
    return amp, lb


def listener(lb, protocol, port, member_port, tls_ref=None):
    lid = str(uuid.uuid4())
    pool = dm.Pool(
        id=str(uuid.uuid4()),
        project_id="project-1",
        protocol=constants.PROTOCOL_HTTP,
        lb_algorithm=constants.LB_ALGORITHM_ROUND_ROBIN,
        enabled=True,
        provisioning_status=constants.ACTIVE,
        members=[],
        load_balancer=lb,
    )
    pool.members.append(
        dm.Member(
            id=str(uuid.uuid4()),
            project_id="project-1",
            ip_address="127.0.0.1",
            protocol_port=member_port,
            weight=1,
            enabled=True,
            backup=False,
            provisioning_status=constants.ACTIVE,
            pool=pool,
        )
    )
    li = dm.Listener(
        id=lid,
        project_id="project-1",
        protocol=protocol,
        protocol_port=port,
        load_balancer=lb,
        default_pool=pool,
        pools=[pool],
        enabled=True,
        l7policies=[],
        insert_headers={},
        connection_limit=-1,
        peer_port=1025,
        tls_certificate_id=tls_ref,
        sni_containers=[],
        provisioning_status=constants.ACTIVE,
    )
    pool.listeners = [li]
    lb.listeners.append(li)
    return li


def lifecycle(s):
    configure(s)
    driver = rest_api_driver.HaproxyAmphoraLoadBalancerDriver()
    client = driver.clients["1.0"]
    member_port = start_member()
    amp, lb = objects(s, member_port)

    # Version discovery (GET //), as the controller's first call.
    driver.check(amp)
    check(amp.api_version == "1.0", f"version discovery finds API 1.0 (got {amp.api_version})")
    info = driver.get_info(amp)
    check(info["haproxy_version"].split(".")[0].isdigit(), f"info has a haproxy version: {info}")

    # 1. A load balancer with an HTTP listener.
    http_listener = listener(lb, constants.PROTOCOL_HTTP, s["http_port"], member_port)
    driver.update_amphora_listeners(lb, amp)
    body, _ = http_get(s["http_port"])
    check(body == Member.body, "the HTTP listener serves the member through haproxy")
    status = client.get_all_listeners(amp)
    check(
        {"status": "ACTIVE", "uuid": http_listener.id, "type": "HTTP"} in status,
        f"GET /1.0/listeners lists the HTTP listener: {status}",
    )
    config = client.get(amp, f"loadbalancer/{lb.id}/haproxy")
    check(
        config.status_code == 200 and f"frontend {http_listener.id}" in config.text,
        "GET of the haproxy configuration answers it",
    )
    # Idempotent: the same update again (Octavia retries after a read timeout).
    driver.update_amphora_listeners(lb, amp)
    check(http_get(s["http_port"])[0] == Member.body, "the same update again changes nothing")

    # 2. A TLS-terminated listener with a certificate.
    ref, der = store_tls_cert(s, "tls-1")
    tls_listener = listener(
        lb, constants.PROTOCOL_TERMINATED_HTTPS, s["https_port"], member_port, tls_ref=ref
    )
    driver.update_amphora_listeners(lb, amp)
    body, presented = http_get(s["https_port"], tls=True)
    check(body == Member.body, "the TERMINATED_HTTPS listener serves the member")
    check(presented == der, "haproxy presents the listener's certificate")
    check(http_get(s["http_port"])[0] == Member.body, "the HTTP listener still serves")
    md5 = client.get_cert_md5sum(amp, lb.id, f"{hashlib.sha1(der_to_pem_leaf(s, 'tls-1')).hexdigest()}.pem")
    check(md5 is not None, "GET of a certificate answers its md5")

    # 3. Update: the listener gets another certificate.
    ref2, der2 = store_tls_cert(s, "tls-2")
    tls_listener.tls_certificate_id = ref2
    driver.update_amphora_listeners(lb, amp)
    _, presented = http_get(s["https_port"], tls=True)
    check(presented == der2, "after the update haproxy presents the new certificate")

    # 4. Rotation of the agent's own certificate (certificate then key, as Octavia sends it).
    crt, key = issue(s, "agent-2", s["amphora_id"], "--server", "--san", s["amphora_id"])
    new_agent_pem = (open(crt).read().split("-----END CERTIFICATE-----")[0]
                     + "-----END CERTIFICATE-----\n" + open(key).read())
    driver.upload_cert_amp(amp, new_agent_pem.encode())
    ctx = ssl.create_default_context(cafile=s["ca"])
    ctx.check_hostname = False
    ctx.load_cert_chain(s["client_cert"])
    with ctx.wrap_socket(socket.create_connection(("127.0.0.1", s["agent_port"])),
                         server_hostname=s["amphora_id"]) as sock:
        presented = sock.getpeercert(binary_form=True)
    check(presented == pem_der(crt), "new connections get the rotated agent certificate")
    driver.clients["1.0"].session.close()
    check(driver.get_info(amp)["api_version"] == "1.0", "Octavia's client talks to the rotated certificate")

    # 5. Delete the TLS listener.
    driver.delete(tls_listener)
    check(refused(s["https_port"]) or wait_refused(s["https_port"]), "the deleted listener's port is closed")
    check(http_get(s["http_port"])[0] == Member.body, "the HTTP listener still serves")
    status = client.get_all_listeners(amp)
    check([x["uuid"] for x in status] == [http_listener.id], f"one listener left: {status}")

    # 6. Delete the load balancer (its last listener).
    driver.delete(http_listener)
    check(wait_refused(s["http_port"]), "the load balancer's port is closed")
    check(client.get_all_listeners(amp) == [], "no listener is left")
    r = client.session.get(
        client._base_url("127.0.0.1", "1.0") + f"loadbalancer/{lb.id}/haproxy",
        verify=s["ca"],
    )
    check(
        r.status_code == 404 and r.headers["content-type"].startswith("application/json"),
        "the deleted load balancer is a JSON 404",
    )
    # Deleting again is fine for Octavia's client (it ignores 404, and gets 200).
    client.delete_listener(amp, lb.id)

    # Errors Octavia's client branches on.
    bad = "global\n    daemon\nfrontend f\n    bind 127.0.0.1:1 nonsense-option\n"
    try:
        client.upload_config(amp, lb.id, bad)
        fail("an invalid configuration was accepted")
    except driver_exc.InvalidRequest:
        log("ok: an invalid configuration is an InvalidRequest (400)")
    try:
        client.upload_cert_pem(amp, lb.id, "broken.pem", b"-----BEGIN CERTIFICATE-----\nnope\n")
        fail("a broken PEM was accepted")
    except driver_exc.InvalidRequest:
        log("ok: a broken PEM is an InvalidRequest (400)")
    # Octavia's client reads 413 as success: an oversized body must be an error it sees.
    r = client.session.put(
        client._base_url("127.0.0.1", "1.0") + f"loadbalancer/{lb.id}/certificates/big.pem",
        data=b"x" * (s["max_body_bytes"] + 1),
        verify=s["ca"],
    )
    check(r.status_code == 400 and "larger" in r.json()["details"],
          f"an oversized body is a 400 for Octavia's client: {r.status_code} {r.text}")
    log("all lifecycle checks passed")


def der_to_pem_leaf(s, name):
    pem = open(os.path.join(s["work"], name + ".crt")).read()
    return pem[: pem.index("-----END CERTIFICATE-----") + 26].encode()


def wait_refused(port, seconds=10):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if refused(port):
            return True
        time.sleep(0.1)
    return False


def heartbeat(s):
    configure(s)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", s["heartbeat_port"]))
    sock.settimeout(2)
    driver = rest_api_driver.HaproxyAmphoraLoadBalancerDriver()
    member_port = start_member()
    amp, lb = objects(s, member_port)
    li = listener(lb, constants.PROTOCOL_HTTP, s["http_port"], member_port)
    driver.update_amphora_listeners(lb, amp)
    for _ in range(3):
        http_get(s["http_port"])
    deadline = time.time() + 30
    seen = None
    while time.time() < deadline:
        try:
            data, _ = sock.recvfrom(65536)
        except socket.timeout:
            continue
        msg = status_message.unwrap_envelope(data, s["heartbeat_key"])
        seen = msg
        entry = msg["listeners"].get(li.id)
        if entry and entry["status"] == "OPEN":
            check(msg["id"] == s["amphora_id"], "the heartbeat names the amphora")
            check(msg["ver"] == 3, "message version 3")
            pool = msg["pools"].get(f"{li.default_pool.id}:{li.id}")
            check(pool is not None and pool["status"] == "UP", f"the pool is UP: {msg['pools']}")
            member = li.default_pool.members[0].id
            check(member in pool["members"], f"the member is reported: {pool}")
            log("ok: listener", li.id, "OPEN, stats", entry["stats"])
            break
    else:
        fail(f"no heartbeat reported the listener OPEN; last: {seen}")
    # A wrong key does not verify.
    data, _ = sock.recvfrom(65536)
    try:
        status_message.unwrap_envelope(data, "another key")
        fail("a heartbeat verified with the wrong key")
    except Exception:
        log("ok: a wrong key does not verify")
    driver.delete(li)
    log("all heartbeat checks passed")


def main():
    mode, settings = sys.argv[1], json.load(open(sys.argv[2]))
    {"lifecycle": lifecycle, "heartbeat": heartbeat}[mode](settings)


if __name__ == "__main__":
    main()
