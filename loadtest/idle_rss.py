#!/usr/bin/env python3
"""Server RSS per idle subscribed connection.

Opens N raw WebSocket connections to a running nilecast (simulator off, so nothing
flows), subscribes each to /inventory on one of 100 products, reads every reply, then
compares the server's VmRSS before and after. Loopback only; bounded by N.

    SIMULATE_RATE=0 target/release/nilecast &
    python3 loadtest/idle_rss.py 5000 $(pgrep -f target/release/nilecast)
"""
import base64
import json
import os
import resource
import socket
import sys
import time

HOST, PORT = "127.0.0.1", int(os.environ.get("WEBSOCKET_PORT", "4001"))


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        return int(next(line for line in status if line.startswith("VmRSS")).split()[1])


def masked_text_frame(obj):
    payload = json.dumps(obj).encode()
    assert len(payload) < 126
    mask = os.urandom(4)
    return bytes([0x81, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def main():
    n, pid = int(sys.argv[1]), int(sys.argv[2])
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    before = rss_kib(pid)
    sockets = []
    for i in range(n):
        s = socket.create_connection((HOST, PORT))
        key = base64.b64encode(os.urandom(16)).decode()
        s.sendall(
            f"GET /ws HTTP/1.1\r\nHost: {HOST}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        s.sendall(masked_text_frame({"ns": "/inventory", "event": "inventory:subscribe", "data": {"productIds": [f"p-{i % 100}"]}}))
        sockets.append(s)
    for s in sockets:
        received = b""
        while b"subscribed" not in received:
            received += s.recv(65536)
    # A measurement, not a test: give the allocator a moment to settle before reading RSS.
    time.sleep(2)
    after = rss_kib(pid)
    print(f"{n} idle subscribed connections: server RSS {before} KiB -> {after} KiB, "
          f"{(after - before) * 1024 / n:.0f} bytes per connection")


if __name__ == "__main__":
    main()
