#!/usr/bin/env python3
"""A TLS upstream that requires a client certificate and records every request it parses, raw, one JSON line
each, to --log. It answers each request with a small 200. Used to check that the proxy never turns one client
request into two upstream requests (request smuggling)."""
import json, ssl, threading

from tlsserver import options, serve_forever


def serve(conn, log, lock):
    buf = b""

    def fill():
        nonlocal buf
        data = conn.recv(65536)
        if not data:
            raise EOFError
        buf += data

    try:
        conn.do_handshake()
        # The client certificate's CN, if one was presented (with --optional-client-cert it may not be).
        peer = conn.getpeercert() or {}
        client = next((v for rdn in peer.get("subject", ()) for k, v in rdn if k == "commonName"), None)
        while True:
            while b"\r\n\r\n" not in buf:
                fill()
            head, buf = buf.split(b"\r\n\r\n", 1)
            lines = head.split(b"\r\n")
            headers = {}
            for line in lines[1:]:
                k, _, v = line.partition(b":")
                headers.setdefault(k.strip().lower(), []).append(v.strip())
            body = b""
            if b"transfer-encoding" in headers:
                while True:
                    while b"\r\n" not in buf:
                        fill()
                    size_line, buf = buf.split(b"\r\n", 1)
                    size = int(size_line.split(b";")[0], 16)
                    while len(buf) < size + 2:
                        fill()
                    body += buf[:size]
                    buf = buf[size + 2:]
                    if size == 0:
                        break
            elif b"content-length" in headers:
                n = int(headers[b"content-length"][0])
                while len(buf) < n:
                    fill()
                body, buf = buf[:n], buf[n:]
            record = {"request_line": lines[0].decode("latin-1"), "headers": {k.decode("latin-1"): [x.decode("latin-1") for x in v] for k, v in headers.items()},
                      "body": body.decode("latin-1"), "client": client}
            with lock:
                log.write(json.dumps(record) + "\n")
                log.flush()
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
    except (EOFError, OSError, ssl.SSLError, ValueError):
        pass
    finally:
        conn.close()


def main():
    args = options(lambda p: p.add_argument("--log", required=True))
    log, lock = open(args.log, "a"), threading.Lock()
    serve_forever(args, lambda conn: serve(conn, log, lock))


if __name__ == "__main__":
    main()
