"""An HTTP/2 client for the robustness tests (httpx and h2, from the venv the tests make).

    h2probe.py put URL SIZE CA CERT KEY     PUT SIZE bytes with httpx over HTTP/2; prints
                                            "<http version> <status>"
    h2probe.py idle HOST PORT CA CERT KEY   one GET /status over a raw h2 connection, then
                                            idle (answering PINGs) until the server sends
                                            GOAWAY or closes; prints the seconds idle
                                            before that and the PINGs received ("never" after 30 s)
"""

import socket
import ssl
import sys
import time


def put(url, size, ca, cert, key):
    import httpx

    ctx = ssl.create_default_context(cafile=ca)
    ctx.load_cert_chain(cert, key)
    with httpx.Client(http2=True, verify=ctx, timeout=20) as client:
        r = client.put(url, content=b"x" * int(size))
        print(r.http_version, r.status_code)


def idle(host, port, ca, cert, key):
    import h2.config
    import h2.connection
    import h2.events
    import h2.exceptions

    ctx = ssl.create_default_context(cafile=ca)
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["h2"])
    sock = ctx.wrap_socket(socket.create_connection((host, int(port))), server_hostname=host)
    assert sock.selected_alpn_protocol() == "h2", sock.selected_alpn_protocol()
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    conn.send_headers(1, [(":method", "GET"), (":path", "/status"), (":authority", host),
                          (":scheme", "https")], end_stream=True)
    sock.sendall(conn.data_to_send())
    done_at = None
    pings = 0
    # The server's keep-alive PINGs are answered (h2 does it) while the client idles.
    sock.settimeout(1)
    deadline = time.monotonic() + 30
    while True:
        if time.monotonic() > deadline:
            print(f"never {pings}")
            return
        try:
            data = sock.recv(65536)
        except TimeoutError:
            continue
        if not data:
            break
        closed = False
        try:
            events = conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            # Frames after the server's GOAWAY (its shutdown PING) in the same read.
            if conn.state_machine.state == h2.connection.ConnectionState.CLOSED:
                break
            raise
        for event in events:
            if isinstance(event, h2.events.StreamEnded) and event.stream_id == 1:
                done_at = time.monotonic()
            if isinstance(event, h2.events.PingReceived):
                pings += 1
            if isinstance(event, h2.events.ConnectionTerminated):
                closed = True
        if closed:
            break
        out = conn.data_to_send()
        if out:
            try:
                sock.sendall(out)
            except OSError:
                break
    assert done_at is not None, "no answer to GET /status"
    print(f"{time.monotonic() - done_at:.2f} {pings}")


if __name__ == "__main__":
    {"put": put, "idle": idle}[sys.argv[1]](*sys.argv[2:])
