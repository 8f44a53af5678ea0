"""A slow-client flood, run as its own process: ``--count`` connections to ``--port`` that each send half an HTTP
request and then hold it, until stdin closes.

    python tests/e2e/slow_client_flood.py --port 8080 --count 10000 --source 127.0.0.2

Connects from ``--source`` (another loopback address: its ephemeral ports are its own, so the flood neither runs
out of them nor takes them from other clients of 127.0.0.1 on a shared machine), without blocking (a full accept
queue must not stall the flood), prints ``opened N`` once every
connection has been made and its half request written (or has failed: ``failed`` counts those), then waits.
The kernel keeps the sockets of connections the server closed, so the process holds all ``--count``
descriptors for its whole life, as an attacker would.
"""

from __future__ import annotations

import argparse
import errno
import selectors
import socket
import sys
import time

HALF_REQUEST = b"POST / HTTP/1.1\r\nHost: flood\r\nContent-Type: application/json\r\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--source", default="127.0.0.2", help="loopback address to connect from")
    parser.add_argument("--timeout-s", type=float, default=30.0)
    args = parser.parse_args()
    selector = selectors.DefaultSelector()
    held: list[socket.socket] = []
    failed = 0
    reasons: dict[str, int] = {}
    for _ in range(args.count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((args.source, 0))
        sock.setblocking(False)
        code = sock.connect_ex(("127.0.0.1", args.port))
        if code not in (0, errno.EINPROGRESS):
            failed += 1
            reasons[errno.errorcode.get(code, str(code))] = reasons.get(errno.errorcode.get(code, str(code)), 0) + 1
            sock.close()
            continue
        held.append(sock)
        selector.register(sock, selectors.EVENT_WRITE)
    pending = len(held)
    deadline = time.monotonic() + args.timeout_s
    while pending and time.monotonic() < deadline:
        for key, _ in selector.select(timeout=1):
            ready = key.fileobj
            if not isinstance(ready, socket.socket):
                continue
            selector.unregister(ready)
            pending -= 1
            try:
                error = ready.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if error == 0:
                    ready.send(HALF_REQUEST)
                else:
                    failed += 1
                    reasons[errno.errorcode.get(error, str(error))] = (
                        reasons.get(errno.errorcode.get(error, str(error)), 0) + 1
                    )
            except OSError as exc:
                failed += 1
                reasons[type(exc).__name__] = reasons.get(type(exc).__name__, 0) + 1
    print(f"opened {len(held)} failed {failed} pending {pending} {reasons}", flush=True)
    sys.stdin.read()  # hold everything until the test closes our stdin
    for sock in held:
        sock.close()


if __name__ == "__main__":
    main()
