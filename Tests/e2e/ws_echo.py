#!/usr/bin/env python3
"""A TLS upstream that requires a client certificate and answers a WebSocket upgrade (101), then echoes every
byte back. It puts the client certificate's CN in the 101 response (X-Client-Subject)."""
import base64, hashlib, ssl

from tlsserver import options, serve_forever


def serve(conn):
    try:
        conn.do_handshake()
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = conn.recv(4096)
            if not chunk:
                return
            head += chunk
        head, rest = head.split(b"\r\n\r\n", 1)
        headers = {}
        for line in head.decode("latin-1").split("\r\n")[1:]:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
        cn = "none"
        for rdn in (conn.getpeercert() or {}).get("subject", ()):
            for k, v in rdn:
                if k == "commonName":
                    cn = v
        if headers.get("upgrade", "").lower() != "websocket" or "upgrade" not in headers.get("connection", "").lower():
            conn.sendall(b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return
        accept = base64.b64encode(hashlib.sha1((headers["sec-websocket-key"] + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
        conn.sendall(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      f"Sec-WebSocket-Accept: {accept}\r\nX-Client-Subject: {cn}\r\n\r\n").encode())
        if rest:
            conn.sendall(rest)
        while True:
            data = conn.recv(65536)
            if not data:
                return
            conn.sendall(data)
    except (OSError, ssl.SSLError):
        pass
    finally:
        conn.close()


def main():
    serve_forever(options(), serve)


if __name__ == "__main__":
    main()
