"""An HTTP/2 upstream on the `h2` library for Tests/e2e/test_h2_upstream.py: TLS on 127.0.0.1 (ALPN h2, http/1.1),
a client certificate of the test CA REQUIRED and verified, and a count of streams per connection per client
subject (GET /_stats). Paths say what to answer, including faults sent on cue:

  /hello                 200 "hello <subject>" with content-length
  /echo                  the request body back (and its SHA-256 in x-body-sha256); 100 Continue first when asked
  /bytes/N               N deterministic bytes, no content-length (the proxy re-frames them as chunks)
  /sized/N               the same with content-length
  /slow/MS               waits MS milliseconds, then 200 "slow"
  /trailers              a body, then a trailer section (x-checksum)
  /echo-trailers         200 without content-length: a JSON body of the request's trailer fields and its te field,
                         then a trailer section (grpc-status 0, x-echoed: how many request trailer fields came)
  /framing-trailers      200 without content-length, "hello", then a trailer section of fields a trailer section
                         may not carry through the proxy (set-cookie, host, authorization...) and x-fine
  /sized-trailers        200 with content-length 5, "hello", then a trailer section (x-checksum)
  /rst-before            RST_STREAM INTERNAL_ERROR before any head
  /rst-after             the head and some DATA, then RST_STREAM INTERNAL_ERROR
  /refuse                RST_STREAM REFUSED_STREAM before any head
  /goaway                the first time: GOAWAY (last stream = the one before this) and close, so this stream was
                         not processed; after that, 200 "after goaway"
  /goaway-after          the full answer, then GOAWAY NO_ERROR and close
  /big-header            a header list of 128 KiB
  /push                  a PUSH_PROMISE (forbidden: the proxy said SETTINGS_ENABLE_PUSH = 0)
  /short                 content-length 10 with 5 bytes of DATA
  /drop                  the head and some DATA, then the TCP connection is cut
  /early-413             413 as soon as the request head arrives, before its body
  /1xx-flood             5000 interim (103) heads, then 200
  /_stats                JSON {subject: [streams of each connection]}; /_reset clears it
  /_sni_stats            JSON {SNI name: {subject: [streams of each connection]}}
  /whoami/TAG, /ka/TAG/N, /download?size=N   what the client drivers of Tests/e2e/clients ask (the client matrix)

A client that selects no protocol in ALPN gets HTTP/1.1 (one request per connection): a WebSocket upgrade is
answered 101 and echoed (x-upstream-protocol: http/1.1), anything else 200 "http/1.1 <path>". With --http11-only
the server offers only http/1.1 in ALPN.

Usage: h2server.py --port P --cert C --key K --ca CA [--max-streams N] [--http11-only]
"""
import argparse, asyncio, base64, hashlib, json, sys

import h2tls
import h2.config, h2.connection, h2.events, h2.errors, h2.exceptions, h2.settings

STATS = {}  # subject -> list of stream counts, one per connection
SNI_STATS = {}  # SNI name -> subject -> list of stream counts, one per connection
SNI_NAMES = {}  # id(SSL object) -> the SNI name it was asked for
GOAWAY_AFTER = set()


def body_bytes(n):
    block = bytes(range(256)) * 64
    out = bytearray()
    while len(out) < n:
        out += block
    return bytes(out[:n])


class HTTP11Protocol(asyncio.Protocol):
    """One HTTP/1.1 exchange: a WebSocket upgrade (101, then every byte echoed), or a short 200."""

    def __init__(self, transport, subject):
        self.transport = transport
        self.subject = subject
        self.buffer = b""
        self.relaying = False

    def data_received(self, data):
        if self.relaying:
            self.transport.write(data)
            return
        self.buffer += data
        if b"\r\n\r\n" not in self.buffer:
            return
        head, rest = self.buffer.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        path = lines[0].split(" ")[1]
        headers = {}
        for line in lines[1:]:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
        if headers.get("upgrade", "").lower() == "websocket":
            accept = base64.b64encode(hashlib.sha1((headers.get("sec-websocket-key", "") + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
            self.transport.write(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                                  f"Sec-WebSocket-Accept: {accept}\r\nx-upstream-protocol: http/1.1\r\n\r\n").encode())
            self.relaying = True
            if rest:
                self.transport.write(rest)
            return
        body = f"http/1.1 {path}\n".encode()
        self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: " + str(len(body)).encode()
                             + b"\r\nx-upstream-protocol: http/1.1\r\nConnection: close\r\n\r\n" + body)
        self.transport.close()


class H2Protocol(asyncio.Protocol):
    def __init__(self, max_streams, max_header_list):
        self.max_header_list = max_header_list
        config = h2.config.H2Configuration(client_side=False, header_encoding="utf-8", validate_inbound_headers=False)
        self.conn = h2.connection.H2Connection(config=config)
        self.max_streams = max_streams
        self.transport = None
        self.requests = {}
        self.windows = {}  # stream id -> asyncio.Event set when the window grows
        self.counter = None
        self.closed = False

    def connection_made(self, transport):
        self.transport = transport
        cert = transport.get_extra_info("peercert") or {}
        subject = ",".join(f"{k}={v}" for rdn in cert.get("subject", ()) for k, v in rdn)
        self.subject = subject
        self.http11 = None
        if transport.get_extra_info("ssl_object").selected_alpn_protocol() != "h2":
            self.http11 = HTTP11Protocol(transport, subject)
            return
        STATS.setdefault(subject, []).append(0)
        self.counter = len(STATS[subject]) - 1
        self.sni = SNI_NAMES.pop(id(transport.get_extra_info("ssl_object")), None) or "-"
        SNI_STATS.setdefault(self.sni, {}).setdefault(subject, []).append(0)
        self.sni_counter = len(SNI_STATS[self.sni][subject]) - 1
        self.conn.initiate_connection()
        self.conn.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.max_streams,
                                   h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: self.max_header_list})
        self.flush()

    def connection_lost(self, exc):
        self.closed = True
        for event in self.windows.values():
            event.set()

    def flush(self):
        data = self.conn.data_to_send()
        if data and not self.closed:
            self.transport.write(data)

    def data_received(self, data):
        if self.http11:
            self.http11.data_received(data)
            return
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            self.flush()
            self.transport.close()
            return
        for event in events:
            if isinstance(event, h2.events.RequestReceived):
                STATS[self.subject][self.counter] += 1
                SNI_STATS[self.sni][self.subject][self.sni_counter] += 1
                headers = dict(event.headers)
                self.requests[event.stream_id] = dict(headers=headers, body=bytearray())
                if headers.get(":path") == "/early-413":
                    # Answered before the body arrives, as a server refusing an upload does.
                    self.requests[event.stream_id]["started"] = True
                    self.conn.send_headers(event.stream_id, [(":status", "413"), ("content-length", "9")])
                    self.conn.send_data(event.stream_id, b"too big\n\n", end_stream=True)
                elif headers.get("expect", "").lower() == "100-continue":
                    self.conn.send_headers(event.stream_id, [(":status", "100")])
                if event.stream_ended:
                    self.start(event.stream_id)
            elif isinstance(event, h2.events.DataReceived):
                if event.stream_id in self.requests:
                    self.requests[event.stream_id]["body"] += event.data
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                if event.stream_ended:
                    self.start(event.stream_id)
            elif isinstance(event, h2.events.TrailersReceived):
                if event.stream_id in self.requests:
                    self.requests[event.stream_id]["trailers"] = list(event.headers)
                if event.stream_ended:
                    self.start(event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                if event.stream_id in self.requests and not self.requests[event.stream_id].get("started"):
                    self.start(event.stream_id)
            elif isinstance(event, h2.events.WindowUpdated):
                for ev in self.windows.values():
                    ev.set()
            elif isinstance(event, h2.events.StreamReset):
                self.requests.pop(event.stream_id, None)
                ev = self.windows.get(event.stream_id)
                if ev:
                    ev.set()
        self.flush()

    def start(self, stream_id):
        request = self.requests.get(stream_id)
        if request is None or request.get("started"):
            return
        request["started"] = True
        asyncio.ensure_future(self.answer(stream_id, request))

    async def send_body(self, stream_id, data, end=True):
        offset = 0
        while offset < len(data):
            if self.closed or stream_id not in self.requests:
                return False
            window = min(self.conn.local_flow_control_window(stream_id), self.conn.max_outbound_frame_size)
            if window <= 0:
                event = self.windows.setdefault(stream_id, asyncio.Event())
                event.clear()
                await event.wait()
                continue
            piece = data[offset:offset + window]
            offset += len(piece)
            self.conn.send_data(stream_id, piece, end_stream=end and offset == len(data))
            self.flush()
        if end and not data:
            self.conn.end_stream(stream_id)
            self.flush()
        return True

    async def answer(self, stream_id, request):
        headers = request["headers"]
        path, _, query = headers.get(":path", "/").partition("?")
        for prefix in ("/eu/", "/autoh2/", "/rt/", "/ms/"):  # other routes (path prefixes) reach the same paths
            if path.startswith(prefix):
                path = path[len(prefix) - 1:]
        method = headers.get(":method", "GET")
        try:
            await self.route(stream_id, path, method, headers, bytes(request["body"]), query)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError, KeyError):
            pass
        self.flush()

    async def route(self, stream_id, path, method, headers, body, query=""):
        def respond(status, fields=(), end=False):
            self.conn.send_headers(stream_id, [(":status", str(status))] + list(fields), end_stream=end)
            self.flush()

        if path == "/_stats":
            data = json.dumps(STATS).encode()
            respond(200, [("content-type", "application/json"), ("content-length", str(len(data)))])
            await self.send_body(stream_id, data)
        elif path == "/_sni_stats":
            data = json.dumps(SNI_STATS).encode()
            respond(200, [("content-type", "application/json"), ("content-length", str(len(data)))])
            await self.send_body(stream_id, data)
        elif path == "/_reset":
            STATS.clear()
            STATS.setdefault(self.subject, []).append(0)
            self.counter = 0
            respond(204, end=True)
        elif path == "/hello":
            data = f"hello {self.subject} {method}\n".encode()
            fields = [("content-length", str(len(data)))]
            respond(200, fields + [("x-client-subject", self.subject)], end=method == "HEAD")
            if method != "HEAD":
                await self.send_body(stream_id, data)
        elif path.startswith("/whoami/") or path.startswith("/ka/"):
            data = f"{path.split('/')[2]} {self.subject}\n".encode()
            respond(200, [("content-length", str(len(data)))])
            await self.send_body(stream_id, data)
        elif path == "/download":
            n = int(dict(p.split("=", 1) for p in query.split("&") if "=" in p).get("size", "0"))
            respond(200, [("content-length", str(n)), ("content-type", "application/octet-stream")])
            await self.send_body(stream_id, body_bytes(n))
        elif path == "/echo":
            digest = hashlib.sha256(body).hexdigest()
            seen = [("x-seen-expect", headers["expect"])] if "expect" in headers else []
            respond(200, [("content-length", str(len(body))), ("x-body-sha256", digest)] + seen)
            await self.send_body(stream_id, body)
        elif path.startswith("/bytes/"):
            respond(200, [("content-type", "application/octet-stream")])
            await self.send_body(stream_id, body_bytes(int(path.split("/")[2])))
        elif path.startswith("/sized/"):
            n = int(path.split("/")[2])
            respond(200, [("content-length", str(n))])
            await self.send_body(stream_id, body_bytes(n))
        elif path.startswith("/slow/"):
            await asyncio.sleep(int(path.split("/")[2]) / 1000)
            respond(200, [("content-length", "4")])
            await self.send_body(stream_id, b"slow")
        elif path == "/trailers":
            respond(200)
            await self.send_body(stream_id, b"with trailers\n", end=False)
            self.conn.send_headers(stream_id, [("x-checksum", "abc")], end_stream=True)
        elif path == "/echo-trailers":
            trailers = self.requests.get(stream_id, {}).get("trailers", [])
            data = json.dumps({"trailers": trailers, "te": headers.get("te"), "body": body.decode("latin-1")}).encode()
            respond(200, [("content-type", "application/json")])
            await self.send_body(stream_id, data, end=False)
            self.conn.send_headers(stream_id, [("grpc-status", "0"), ("x-echoed", str(len(trailers)))], end_stream=True)
        elif path == "/framing-trailers":
            respond(200)
            await self.send_body(stream_id, b"hello", end=False)
            self.conn.send_headers(stream_id, [("set-cookie", "a=b"), ("host", "evil.test"), ("authorization", "Bearer x"),
                                               ("proxy-authenticate", "Basic"), ("trailer", "x-fine"), ("location", "/evil"),
                                               ("content-type", "text/evil"), ("x-fine", "1")], end_stream=True)
        elif path == "/sized-trailers":
            respond(200, [("content-length", "5")])
            await self.send_body(stream_id, b"hello", end=False)
            self.conn.send_headers(stream_id, [("x-checksum", "abc")], end_stream=True)
        elif path == "/rst-before" or path == "/refuse":
            code = h2.errors.ErrorCodes.REFUSED_STREAM if path == "/refuse" else h2.errors.ErrorCodes.INTERNAL_ERROR
            self.conn.reset_stream(stream_id, code)
        elif path == "/rst-after":
            respond(200, [("content-length", "100000")])
            await self.send_body(stream_id, b"x" * 1000, end=False)
            await asyncio.sleep(0.05)
            self.conn.reset_stream(stream_id, h2.errors.ErrorCodes.INTERNAL_ERROR)
        elif path == "/goaway" and "/goaway" in GOAWAY_AFTER:
            respond(200, [("content-length", "13")])
            await self.send_body(stream_id, b"after goaway\n")
        elif path == "/goaway":
            GOAWAY_AFTER.add("/goaway")
            self.conn.close_connection(error_code=h2.errors.ErrorCodes.NO_ERROR, last_stream_id=max(0, stream_id - 2))
            self.flush()
            self.transport.close()
        elif path == "/goaway-after":
            respond(200, [("content-length", "4")])
            await self.send_body(stream_id, b"done")
            self.conn.close_connection(error_code=h2.errors.ErrorCodes.NO_ERROR)
            self.flush()
            self.transport.close()
        elif path == "/big-header":
            respond(200, [("x-big", "v" * (128 * 1024)), ("content-length", "0")], end=True)
        elif path == "/push":
            # h2 itself refuses to push to a client that disabled push: write the frame by hand.
            payload = (2).to_bytes(4, "big")
            frame = len(payload).to_bytes(3, "big") + bytes([0x5, 0x4]) + stream_id.to_bytes(4, "big") + payload
            self.transport.write(frame)
            respond(200, [("content-length", "2")])
            await self.send_body(stream_id, b"ok")
        elif path == "/drop":
            respond(200, [("content-length", "100000")])
            await self.send_body(stream_id, b"y" * 2000, end=False)
            await asyncio.sleep(0.05)
            self.transport.abort()
        elif path == "/1xx-flood":
            for _ in range(5000):
                self.conn.send_headers(stream_id, [(":status", "103"), ("link", "</x.css>; rel=preload")])
            self.flush()
            respond(200, [("content-length", "2")])
            await self.send_body(stream_id, b"ok")
        elif path == "/short":
            respond(200, [("content-length", "10")])
            self.conn.send_data(stream_id, b"12345", end_stream=True)
        else:
            respond(404, [("content-length", "0")], end=True)


def main():
    parser = argparse.ArgumentParser()
    h2tls.add_arguments(parser)
    parser.add_argument("--http11-only", action="store_true")
    parser.add_argument("--max-header-list", type=int, default=200_000)
    args = parser.parse_args()
    ctx = h2tls.server_context(args, ["http/1.1"] if args.http11_only else ["h2", "http/1.1"], SNI_NAMES)
    loop = asyncio.new_event_loop()
    server = loop.run_until_complete(loop.create_server(lambda: H2Protocol(args.max_streams, args.max_header_list), "127.0.0.1", args.port, ssl=ctx))
    print("listening", flush=True)
    try:
        loop.run_forever()
    finally:
        server.close()


if __name__ == "__main__":
    main()
