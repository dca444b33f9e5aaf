"""The accept loop shared by the small TLS test servers (faulty.py, recorder.py, ws_echo.py): command-line
options, a server context that asks for a client certificate, and one thread per connection."""
import argparse, socket, ssl, threading


def options(extra=None):
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--ca", help="CA that client certificates must chain to")
    p.add_argument("--optional-client-cert", action="store_true", help="ask for a client certificate without requiring one")
    p.add_argument("--max-tls", choices=["1.1"], help="offer only TLS 1.0 and 1.1")
    if extra:
        extra(p)
    return p.parse_args()


def serve_forever(args, handle):
    """Accepts on 127.0.0.1:args.port and runs handle(tls_connection) on a thread per connection; the
    handshake happens in that thread, on the handler's first read or do_handshake()."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args.cert, args.key)
    if args.ca:
        ctx.load_verify_locations(args.ca)
        ctx.verify_mode = ssl.CERT_OPTIONAL if args.optional_client_cert else ssl.CERT_REQUIRED
    if args.max_tls == "1.1":
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", args.port))
    s.listen(64)
    while True:
        raw, _ = s.accept()
        conn = ctx.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
        threading.Thread(target=handle, args=(conn,), daemon=True).start()
