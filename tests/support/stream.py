#!/usr/bin/env python3
"""Long-lived TCP streams whose every byte can be checked at the far end.

The stream is a sequence of 8-byte big-endian words, each the offset it
starts at, so a lost, repeated or reordered byte changes a word.

  stream.py serve PORT SECONDS REPORT
      Accepts connections; on each, writes 4 KiB every 5 ms for SECONDS,
      then closes. Appends {"sent": BYTES} or {"error": ...} per
      connection to the file REPORT.
  stream.py recv HOST PORT CONNECTIONS
      Opens CONNECTIONS connections at once, reads each to its end and
      prints one JSON object per connection: bytes received, whether every
      word was right, the longest wait between two reads once data flows,
      in milliseconds, and the error that ended it, if any.
"""

import json
import socket
import struct
import sys
import threading
import time

CHUNK = 4096
PERIOD = 0.005


def pattern(offset, size):
    return struct.pack(">%dQ" % (size // 8), *range(offset, offset + size, 8))


def serve(port, seconds, report):
    lock = threading.Lock()

    def stream(conn):
        sent, error = 0, None
        try:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                conn.sendall(pattern(sent, CHUNK))
                sent += CHUNK
                time.sleep(PERIOD)
        except OSError as e:
            error = repr(e)
        finally:
            conn.close()
        with lock, open(report, "a") as f:
            f.write(json.dumps({"sent": sent, "error": error}) + "\n")

    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("0.0.0.0", port))
    listener.listen(64)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=stream, args=(conn,), daemon=True).start()


def receive(host, port, results, i):
    got, in_order, max_gap, error, pending = 0, True, 0.0, None, b""
    try:
        s = socket.create_connection((host, port), timeout=10)
        last = None
        while True:
            data = s.recv(65536)
            now = time.monotonic()
            if last is not None:
                max_gap = max(max_gap, now - last)
            last = now
            if not data:
                break
            pending += data
            whole = len(pending) - len(pending) % 8
            if pending[:whole] != pattern(got, whole):
                in_order = False
            got += whole
            pending = pending[whole:]
        s.close()
    except OSError as e:
        error = repr(e)
    results[i] = {
        "received": got + len(pending),
        "in_order": in_order and not pending,
        "max_gap_ms": round(max_gap * 1000, 1),
        "error": error,
    }


def main():
    if sys.argv[1] == "serve":
        serve(int(sys.argv[2]), float(sys.argv[3]), sys.argv[4])
    else:
        host, port, n = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
        results = [None] * n
        threads = [
            threading.Thread(target=receive, args=(host, port, results, i))
            for i in range(n)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for r in results:
            print(json.dumps(r))


main()
