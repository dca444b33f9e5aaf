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
import argparse, socket, ssl, struct, threading


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
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"r" * 1000)
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return
            if path == "/truncated-chunked":
                conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
                return
            if path == "/too-long":
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloEXTRA")
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
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--ca")
    p.add_argument("--max-tls")
    a = p.parse_args()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(a.cert, a.key)
    if a.ca:
        ctx.load_verify_locations(a.ca)
        ctx.verify_mode = ssl.CERT_OPTIONAL
    if a.max_tls == "1.1":
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", a.port))
    s.listen(64)
    while True:
        raw, _ = s.accept()
        threading.Thread(target=serve, args=(ctx.wrap_socket(raw, server_side=True, do_handshake_on_connect=False),), daemon=True).start()


if __name__ == "__main__":
    main()
