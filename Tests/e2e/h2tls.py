"""What the loopback HTTP/2 test servers (`h2server.py`, `h2hostile.py`) share: their command line's common
options and their TLS context, which requires and verifies the client certificate and records the SNI name each
connection asked for."""
import ssl


def add_arguments(parser):
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--max-streams", type=int, default=100)


def server_context(args, alpn, sni_names):
    """A server context for `args`' certificate, trusting client certificates from `args.ca` only and requiring
    one; offers `alpn`; puts each connection's SNI name in `sni_names` by id of its SSL object."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args.cert, args.key)
    ctx.load_verify_locations(args.ca)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.set_alpn_protocols(alpn)
    ctx.sni_callback = lambda ssl_object, name, _ctx: sni_names.__setitem__(id(ssl_object), name)
    return ctx
