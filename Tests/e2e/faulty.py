#!/usr/bin/env python3
"""A TLS upstream that misbehaves on purpose, chosen by path:
  /close-after-request  reads the request, closes without answering
  /reset-mid            announces 100000 bytes, sends 1000, resets the connection
  /truncated-chunked    sends one chunk of a chunked body, then closes
  /too-long             announces 5 bytes, sends 10
  /garbage              answers with bytes that are not HTTP
  /reuse-trap           answers 200 on a fresh connection; on a reused one, closes without answering (as a
                        server does that times the connection out just as the proxy reuses it)
  anything else         200 "fine", keep-alive
Options: --max-tls 1.1 to offer only TLS 1.0/1.1; --cert/--key choose the server certificate."""
import socket, ssl, struct, time

from tlsserver import options, serve_forever


def serve(conn):
    try:
        conn.do_handshake()
        buf = b""
        served = 0
        while True:
            while b"\r\n\r\n" not in buf:
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
            head, buf = buf.split(b"\r\n\r\n", 1)
            path = head.split(b" ")[1].decode()
            if b"content-length" in head.lower():
                n = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                while len(buf) < n:
                    buf += conn.recv(65536)
                buf = buf[n:]
            served += 1
            if path == "/reuse-trap":
                if served > 1:
                    return
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfine\n")
                continue
            if path == "/close-after-request":
                return
            if path == "/reset-mid":
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"r" * 1000)
                # A reset discards what the kernel has not sent yet: Nagle may still hold the record (the session
                # tickets sent before it not yet acknowledged). Let it go out first, so that the cut is mid-body.
                time.sleep(0.3)
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return
            if path == "/truncated-chunked":
                conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
                return
            if path == "/too-long":
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloEXTRA")
                continue
            if path == "/interim-flood":
                # Thousands of interim responses, then a final one: each would be queued for the client.
                conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n" * 5000 + b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfine\n")
                continue
            if path == "/garbage":
                conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
                return
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfine\n")
    except (OSError, ssl.SSLError):
        pass
    finally:
        conn.close()


def main():
    args = options()
    args.optional_client_cert = True
    serve_forever(args, serve)


if __name__ == "__main__":
    main()
