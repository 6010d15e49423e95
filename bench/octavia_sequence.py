"""Times Octavia's own call sequence for creating a load balancer with a TLS-terminated
listener against one amphora agent (applianced's API 1.0, or Octavia's amphora agent).

Octavia's `HaproxyAmphoraLoadBalancerDriver.update_amphora_listeners` runs as Octavia's
controller runs it (version discovery, info, certificate md5 and upload, crt-list,
details, the rendered configuration, reload); a round ends when haproxy on the listener's
port presents the listener's certificate. The load balancer is then deleted through the
same driver (not timed). Prints {"median_ms", "p99_ms", "rounds"} as JSON.

    octavia_sequence.py SETTINGS.json
"""

import json
import socket
import ssl
import statistics
import sys
import time
import uuid

from oslo_config import cfg

from octavia.common import config as octavia_config  # noqa: F401
from octavia.common import constants
from octavia.common import data_models as dm
from octavia.amphorae.drivers.haproxy import rest_api_driver
from octavia.certificates.manager import local as local_cert_manager


def presented(port):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=2),
                             server_hostname="bench.example") as s:
            return s.getpeercert(binary_form=True)
    except OSError:
        return None


def main():
    s = json.load(open(sys.argv[1]))
    cfg.CONF([], project="octavia")
    o = cfg.CONF.set_override
    o("client_cert", s["client_pem"], group="haproxy_amphora")
    o("server_ca", s["ca"], group="haproxy_amphora")
    o("bind_port", s["port"], group="haproxy_amphora")
    o("base_path", s["base_path"], group="haproxy_amphora")
    o("base_cert_dir", s["base_cert_dir"], group="haproxy_amphora")
    o("connection_max_retries", 1, group="haproxy_amphora")
    o("rest_request_read_timeout", 60, group="haproxy_amphora")
    # This host allows 20,000 descriptors; Octavia's default 50,000 connections would
    # need 125,000 (the amphora image raises the limit).
    o("default_connection_limit", 5000, group="haproxy_amphora")
    o("cert_manager", "local_cert_manager", group="certificates")
    o("storage_path", s["storage"], group="certificates")

    cert_pem = open(s["cert"]).read()
    leaf = cert_pem[: cert_pem.index("-----END CERTIFICATE-----") + 26]
    der = ssl.PEM_cert_to_DER_cert(leaf)
    ref = local_cert_manager.LocalCertManager.store_cert(
        None, leaf.encode(), open(s["key"]).read().encode())

    driver = rest_api_driver.HaproxyAmphoraLoadBalancerDriver()
    # Octavia sizes haproxy's TLS session cache from the free memory an amphora reports
    # (a VM of about 1 GiB); on this host either agent would report gigabytes, and the
    # cache would take them. Without the memory figures both get haproxy's default.
    get_details = driver.clients["1.0"].get_details

    def details_without_memory(amp):
        d = get_details(amp)
        d.pop("memory", None)
        return d

    driver.clients["1.0"].get_details = details_without_memory
    times = []
    for _ in range(s["rounds"]):
        amp = dm.Amphora(id=s["amphora_id"], lb_network_ip="127.0.0.1",
                         status=constants.AMPHORA_ALLOCATED)
        lb = dm.LoadBalancer(id=str(uuid.uuid4()), project_id="bench",
                             vip=dm.Vip(ip_address="127.0.0.1"), amphorae=[amp],
                             topology=constants.TOPOLOGY_SINGLE, enabled=True,
                             listeners=[], additional_vips=[])
        pool = dm.Pool(id=str(uuid.uuid4()), project_id="bench",
                       protocol=constants.PROTOCOL_HTTP,
                       lb_algorithm=constants.LB_ALGORITHM_ROUND_ROBIN, enabled=True,
                       provisioning_status=constants.ACTIVE, members=[], load_balancer=lb)
        pool.members.append(dm.Member(id=str(uuid.uuid4()), project_id="bench",
                                      ip_address="127.0.0.1", protocol_port=9,
                                      weight=1, enabled=True, backup=False,
                                      provisioning_status=constants.ACTIVE, pool=pool))
        listener = dm.Listener(id=str(uuid.uuid4()), project_id="bench",
                               protocol=constants.PROTOCOL_TERMINATED_HTTPS,
                               protocol_port=s["listener_port"], load_balancer=lb,
                               default_pool=pool, pools=[pool], enabled=True,
                               l7policies=[], insert_headers={}, connection_limit=-1,
                               peer_port=1025, tls_certificate_id=ref, sni_containers=[],
                               provisioning_status=constants.ACTIVE)
        pool.listeners = [listener]
        lb.listeners.append(listener)
        started = time.monotonic()
        driver.update_amphora_listeners(lb, amp)
        deadline = started + 30
        while presented(s["listener_port"]) != der:
            if time.monotonic() > deadline:
                sys.exit("haproxy never presented the listener's certificate")
            time.sleep(0.005)
        times.append((time.monotonic() - started) * 1000)
        driver.delete(listener)
        deadline = time.monotonic() + 30
        while presented(s["listener_port"]) is not None and time.monotonic() < deadline:
            time.sleep(0.02)
    times.sort()
    print(json.dumps({
        "median_ms": round(statistics.median(times), 2),
        "p99_ms": round(times[min(len(times) - 1, int(len(times) * 0.99))], 2),
        "rounds": len(times),
    }))


if __name__ == "__main__":
    main()
