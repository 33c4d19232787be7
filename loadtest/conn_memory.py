"""Holds N connections to each server in turn and reports the server's RSS
per connection: connected with nothing sent, then idle keep-alive after one
request each. Used by loadtest/conn-memory.sh.

    python3 loadtest/conn_memory.py N NAME=HOST:PORT=PID ...

A server's RSS is the VmRSS of PID and of its child processes (nginx's
worker). Output: a markdown table on stdout, progress on stderr.
"""
import json
import socket
import sys
import time
import urllib.parse


def beacon_query():
    """A realistic EventLogging beacon, encoded as encodeURIComponent does."""
    capsule = {
        "event": {
            "action": "click",
            "editingSessionId": "4f9a2c1e8b7d6a5f3c2b1a09",
            "isOversample": False,
            "pageTitle": "Special:Search",
            "pageNs": -1,
            "userEditCount": 1234,
            "platform": "desktop",
            "integration": "page",
            "mechanism": "click",
            "editor_interface": "visualeditor",
            "timing": 412,
        },
        "schema": "EditAttemptStep",
        "revision": 18530416,
        "webHost": "en.wikipedia.org",
        "wiki": "enwiki",
    }
    text = json.dumps(capsule, separators=(",", ":"))
    return urllib.parse.quote(text, safe="!'()*-._~") + ";"


def rss_kb(pid):
    """VmRSS of pid and its descendants, in KB."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return total


def settle(pid, seconds=1.5):
    time.sleep(seconds)
    return rss_kb(pid)


def read_head(sock):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed before the answer")
        data += chunk
    status = data.split(b" ", 2)[1]
    if not status.startswith(b"2"):
        raise ConnectionError(f"answered {status.decode()}")
    return data


def request(addr, query):
    return (f"GET /beacon/event?{query} HTTP/1.1\r\nHost: {addr}\r\n"
            "User-Agent: Mozilla/5.0 (X11; Linux x86_64) conn-memory\r\n\r\n").encode()


def measure(name, host, port, pid, n, query):
    addr = f"{host}:{port}"
    req = request(addr, query)
    # Warm-up: what a server allocates once (threads, pools, the producer)
    # is not per connection.
    for _ in range(3):
        warm = [socket.create_connection((host, port)) for _ in range(200)]
        for s in warm:
            s.sendall(req)
        for s in warm:
            read_head(s)
            s.close()
    before = settle(pid)
    socks = []
    for i in range(n):
        socks.append(socket.create_connection((host, port), timeout=10))
        if (i + 1) % 2500 == 0:
            print(f"conn-memory: {name}: {i + 1} connected", file=sys.stderr)
    connected = settle(pid, 3)
    for s in socks:
        s.sendall(req)
    for s in socks:
        read_head(s)
    idle = settle(pid, 3)
    # Every connection still open: nothing was closed by the server.
    for s in socks:
        s.setblocking(False)
        try:
            if s.recv(1) == b"":
                raise ConnectionError(f"{name} closed an idle connection during the measurement")
        except BlockingIOError:
            pass
    for s in socks:
        s.close()
    print(f"conn-memory: {name}: before {before} KB, connected {connected} KB, "
          f"idle keep-alive {idle} KB", file=sys.stderr)
    return before, connected, idle


def main():
    n = int(sys.argv[1])
    query = beacon_query()
    print(f"conn-memory: beacon query {len(query)} bytes", file=sys.stderr)
    rows = []
    for spec in sys.argv[2:]:
        name, hostport, pid = spec.split("=")
        host, port = hostport.rsplit(":", 1)
        rows.append((name, *measure(name, host, int(port), int(pid), n, query)))
        time.sleep(2)
    print(f"{n} connections per server; KB per connection = (RSS after - RSS before) / {n}.\n")
    print("| server | RSS before, MB | connected, nothing sent: RSS MB | KB per connection "
          "| idle keep-alive after one request: RSS MB | KB per connection |")
    print("|---|---|---|---|---|---|")
    for name, before, connected, idle in rows:
        print(f"| {name} | {before / 1024:.1f} | {connected / 1024:.1f} | {(connected - before) / n:.2f} "
              f"| {idle / 1024:.1f} | {(idle - before) / n:.2f} |")


if __name__ == "__main__":
    main()
