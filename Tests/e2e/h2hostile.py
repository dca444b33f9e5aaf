"""A hostile HTTP/2 upstream for Tests/e2e/test_h2_upstream_attacks.py: TLS on 127.0.0.1 (ALPN h2), a client
certificate of the test CA REQUIRED and verified, and faults sent on cue by path (frames the `h2` library will
not send are written by hand). Every stream and every RST_STREAM the proxy sends is recorded with the client
subject and the SNI name of the connection it came on (GET /_log, JSON; /_clear empties it): "reset" as the h2
library reports it, "raw-reset" for every RST_STREAM frame read off the connection (also on closed streams).

  /headers               200 with the request's header list (pseudo-fields too) as JSON
  /sized/N               N bytes with content-length
  /nolen/N               N bytes without content-length (the proxy re-frames them as chunks)
  /slow/MS               waits MS milliseconds, then 200 "slow"
  /hang                  reads the request (and its body), never answers
  /data-before-headers   a DATA frame on the stream before any HEADERS
  /over-cl               content-length 5, then 10 bytes of DATA
  /trailers-no-end       a head, DATA, then a trailer HEADERS without END_STREAM
  /continuation-flood    HEADERS without END_HEADERS, then 2000 CONTINUATION frames
  /hpack-bomb            a 10-byte header block that expands to 800 KB (one dynamic-table entry indexed 200 times)
  /status-101            :status 101 (forbidden in HTTP/2), then 200
  /rst-after-100         100 Continue, then RST_STREAM INTERNAL_ERROR
  /rst-no-error          the whole response (END_STREAM), then RST_STREAM NO_ERROR before the request body ends
  /goaway-keep           GOAWAY (last stream = this one: it was processed), then the answer on the same connection
  /goaway-zero-always    GOAWAY last stream 0 every time, the connection left open: nothing is ever processed
  /nolen-drop            a head without content-length, 1000 bytes, then the TCP connection cut (no close_notify)
  /mute                  200 with the connection's number, then that connection goes mute: it reads on, keeps TCP
                         open and never writes again (no PING ACK, no answer): a black hole
  /drop-after-request    as soon as the request's HEADERS are read: the TCP connection cut (no response, no
                         close_notify)
  /goaway-drop           as soon as the request's HEADERS are read: GOAWAY ENHANCE_YOUR_CALM (last stream = this
                         one: it may have been processed), then the TCP connection cut
  /refuse-first          the first time since /_clear: RST_STREAM REFUSED_STREAM, and that connection refuses it
                         every time after; on any other connection 200 with the connection's number

  /ping-mode/M           200, then this connection answers the PINGs it gets as M says: goaway-close (GOAWAY
                         ENHANCE_YOUR_CALM naming the last stream it took, instead of the ACK, then the TCP
                         connection closed, as a PING-policing gRPC server does), goaway-open (that GOAWAY, the
                         connection left open, no ACK); either with -MS: MS milliseconds after the PING; eof-MS
                         (no ACK, the connection closed MS milliseconds after the PING, without GOAWAY); late-MS (the ACK MS milliseconds late), wrong (an ACK with
                         other opaque data), flood (2000 unsolicited PING ACKs, then the real one)
  /refuse-always         RST_STREAM REFUSED_STREAM, every time, on every connection

  /git/...               with --git-root DIR: git's smart HTTP (`git http-backend` as CGI over the repositories
                         in DIR), for a real client's clone and push through the proxy

Every PING the proxy sends is recorded too (event "ping", with the connection).

With --silent the server completes the TLS handshake (ALPN h2) and then says nothing at all: no SETTINGS.
With --goaway-at-once every connection sends its SETTINGS and, in the same write, GOAWAY (last stream 0), and is
left open: nothing is ever processed.

Usage: h2hostile.py --port P --cert C --key K --ca CA [--max-streams N] [--silent] [--goaway-at-once] [--git-root DIR]
"""
import argparse, asyncio, json, os

import h2tls
import h2.config, h2.connection, h2.events, h2.errors, h2.exceptions, h2.settings

LOG = []  # {"event": "stream"|"reset"|"ping", "path", "subject", "sni", "conn", "code"}
GIT_ROOT = [None]
REFUSING = {"cleared"}  # connections that refused /refuse-first; "cleared": the next one refuses (set by /_clear)
SNI_NAMES = {}
CONNECTIONS = [0]


def frame(kind, flags, stream_id, payload):
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream_id.to_bytes(4, "big") + payload


class Hostile(asyncio.Protocol):
    def __init__(self, max_streams, silent=False, goaway_at_once=False):
        self.silent = silent
        self.goaway_at_once = goaway_at_once
        config = h2.config.H2Configuration(client_side=False, header_encoding="utf-8", validate_inbound_headers=False,
                                           validate_outbound_headers=False, normalize_outbound_headers=False)
        self.conn = h2.connection.H2Connection(config=config)
        self.max_streams = max_streams
        self.requests = {}
        self.closed = False
        # The frames as they arrive, read apart from the h2 library (which says nothing of a RST_STREAM for a stream
        # it has closed): every RST_STREAM is recorded as "raw-reset".
        self.raw = bytearray()
        self.preface = 24
        self.muted = False
        self.ping_mode = None
        self.last_stream = 0

    def connection_made(self, transport):
        self.transport = transport
        cert = transport.get_extra_info("peercert") or {}
        self.subject = ",".join(f"{k}={v}" for rdn in cert.get("subject", ()) for k, v in rdn)
        self.sni = SNI_NAMES.pop(id(transport.get_extra_info("ssl_object")), None) or "-"
        CONNECTIONS[0] += 1
        self.number = CONNECTIONS[0]
        if self.silent:
            return
        self.conn.initiate_connection()
        self.conn.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.max_streams})
        if self.goaway_at_once:
            self.transport.write(self.conn.data_to_send() + frame(0x7, 0, 0, (0).to_bytes(8, "big")))
            self.record("connection", 0)
        self.flush()

    def connection_lost(self, exc):
        self.closed = True

    def flush(self):
        data = self.conn.data_to_send()
        if data and not self.closed:
            self.transport.write(data)

    def record(self, event, stream_id, **extra):
        path = self.requests.get(stream_id, {}).get("headers", {}).get(":path", "?")
        LOG.append(dict(event=event, path=path, subject=self.subject, sni=self.sni, conn=self.number, stream=stream_id, **extra))

    def scan_frames(self, data):
        self.raw += data
        if self.preface:
            taken = min(self.preface, len(self.raw))
            del self.raw[:taken]
            self.preface -= taken
        while len(self.raw) >= 9:
            length = int.from_bytes(self.raw[:3], "big")
            if len(self.raw) < 9 + length:
                break
            kind, stream_id = self.raw[3], int.from_bytes(self.raw[5:9], "big") & 0x7FFFFFFF
            if kind == 0x3 and length == 4:
                self.record("raw-reset", stream_id, code=int.from_bytes(self.raw[9:13], "big"))
            del self.raw[:9 + length]

    def data_received(self, data):
        if self.silent or self.muted:
            return
        self.scan_frames(data)
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            self.flush()
            self.transport.close()
            return
        for event in events:
            if isinstance(event, h2.events.RequestReceived):
                headers = [(k, v) for k, v in event.headers]
                self.requests[event.stream_id] = dict(headers=dict(headers), list=headers, body=bytearray())
                self.record("stream", event.stream_id)
                self.last_stream = max(self.last_stream, event.stream_id)
                path = dict(headers).get(":path", "")
                if path in ("/rst-no-error",):
                    self.conn.send_headers(event.stream_id, [(":status", "200"), ("content-length", "4")])
                    self.conn.send_data(event.stream_id, b"done", end_stream=True)
                    self.flush()
                    asyncio.get_event_loop().call_later(0.1, self.rst, event.stream_id, h2.errors.ErrorCodes.NO_ERROR)
                elif path in ("/drop-after-request", "/goaway-drop"):
                    if path == "/drop-after-request":
                        self.transport.abort()
                        return
                    # The GOAWAY goes out first (abort would drop it from the buffer); nothing is read after it.
                    self.flush()
                    self.transport.write(frame(0x7, 0, 0, event.stream_id.to_bytes(4, "big")
                                               + int(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM).to_bytes(4, "big")))
                    self.muted = True
                    asyncio.get_event_loop().call_later(0.1, self.transport.abort)
                    return
                elif path == "/rst-after-100":
                    self.conn.send_headers(event.stream_id, [(":status", "100")])
                    self.flush()
                    asyncio.get_event_loop().call_later(0.1, self.rst, event.stream_id, h2.errors.ErrorCodes.INTERNAL_ERROR)
                if event.stream_ended:
                    self.start(event.stream_id)
            elif isinstance(event, h2.events.DataReceived):
                if event.stream_id in self.requests:
                    self.requests[event.stream_id]["body"] += event.data
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                if event.stream_ended:
                    self.start(event.stream_id)
            elif isinstance(event, h2.events.StreamReset):
                self.record("reset", event.stream_id, code=int(event.error_code))
            elif isinstance(event, h2.events.PingReceived):
                self.record("ping", 0)
                if self.ping_mode:
                    self.misanswer_ping(event.ping_data)
                    return
        self.flush()

    def misanswer_ping(self, opaque):
        """Answers a PING as `ping_mode` says (h2 queued the right ACK: it is dropped or sent late)."""
        pending = self.conn.data_to_send()
        mode = self.ping_mode
        if mode.startswith("goaway"):
            self.transport.write(pending.replace(frame(0x6, 0x1, 0, opaque), b""))
            delay = int(mode.split("-")[2]) / 1000 if mode.count("-") == 2 else 0
            asyncio.get_event_loop().call_later(delay, self.goaway_for_ping, mode.startswith("goaway-close"))
        elif mode.startswith("eof-"):
            self.transport.write(pending.replace(frame(0x6, 0x1, 0, opaque), b""))
            asyncio.get_event_loop().call_later(int(mode[4:]) / 1000, self.transport.close)
        elif mode.startswith("late-"):
            self.transport.write(pending.replace(frame(0x6, 0x1, 0, opaque), b""))
            asyncio.get_event_loop().call_later(int(mode[5:]) / 1000, self.raw_if_open, frame(0x6, 0x1, 0, opaque))
        elif mode == "wrong":
            self.transport.write(pending.replace(frame(0x6, 0x1, 0, opaque), frame(0x6, 0x1, 0, b"WRONGWRO")))
        elif mode == "flood":
            self.transport.write(frame(0x6, 0x1, 0, b"unasked!") * 2000 + pending)

    def goaway_for_ping(self, close):
        self.raw_if_open(frame(0x7, 0, 0, self.last_stream.to_bytes(4, "big") + (0xb).to_bytes(4, "big")))
        if close and not self.closed:
            self.transport.close()
            self.closed = True

    def raw_if_open(self, data):
        if not self.closed:
            self.transport.write(data)

    def rst(self, stream_id, code):
        try:
            self.conn.reset_stream(stream_id, code)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError, KeyError):
            # h2 will not reset a stream it considers closed: write the frame by hand.
            if not self.closed:
                self.transport.write(frame(0x3, 0, stream_id, int(code).to_bytes(4, "big")))
        self.flush()

    def start(self, stream_id):
        request = self.requests[stream_id]
        if request.get("started"):
            return
        request["started"] = True
        asyncio.ensure_future(self.answer(stream_id, request))

    async def send_body(self, stream_id, data, end=True):
        offset = 0
        while offset < len(data):
            if self.closed:
                return
            window = min(self.conn.local_flow_control_window(stream_id), self.conn.max_outbound_frame_size)
            if window <= 0:
                await asyncio.sleep(0.01)
                continue
            piece = data[offset:offset + window]
            offset += len(piece)
            self.conn.send_data(stream_id, piece, end_stream=end and offset == len(data))
            self.flush()
            await asyncio.sleep(0)

    async def git_http_backend(self, sid, request, respond):
        """Runs `git http-backend` (CGI) for the request and sends its answer."""
        headers = request["headers"]
        target = headers[":path"][len("/git"):]
        path_info, _, query = target.partition("?")
        env = dict(os.environ, GIT_PROJECT_ROOT=GIT_ROOT[0], GIT_HTTP_EXPORT_ALL="1", REQUEST_METHOD=headers[":method"],
                   PATH_INFO=path_info, QUERY_STRING=query, CONTENT_TYPE=headers.get("content-type", ""),
                   CONTENT_LENGTH=str(len(request["body"])), REMOTE_ADDR="127.0.0.1", REMOTE_USER="proxy")
        for name in ("content-encoding", "git-protocol"):
            if name in headers:
                env["HTTP_" + name.upper().replace("-", "_")] = headers[name]
        proc = await asyncio.create_subprocess_exec("git", "http-backend", env=env, stdin=asyncio.subprocess.PIPE,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
        out, _ = await proc.communicate(bytes(request["body"]))
        head, _, body = out.partition(b"\r\n\r\n") if b"\r\n\r\n" in out else out.partition(b"\n\n")
        status, fields = 200, []
        for line in head.decode("latin-1").splitlines():
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.split()[0])
            elif name:
                fields.append((name.strip().lower(), value.strip()))
        respond(status, fields + [("content-length", str(len(body)))])
        await self.send_body(sid, body)

    async def answer(self, stream_id, request):
        try:
            await self.route(stream_id, request)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError, KeyError):
            pass
        self.flush()

    async def route(self, sid, request):
        headers = request["headers"]
        path = headers.get(":path", "/")
        raw = self.transport.write

        def respond(status, fields=(), end=False):
            self.conn.send_headers(sid, [(":status", str(status))] + list(fields), end_stream=end)
            self.flush()

        if path == "/_log":
            data = json.dumps(LOG).encode()
            respond(200, [("content-length", str(len(data)))])
            await self.send_body(sid, data)
        elif path == "/_clear":
            LOG.clear()
            REFUSING.clear()
            REFUSING.add("cleared")
            respond(204, end=True)
        elif path == "/headers":
            data = json.dumps(dict(fields=request["list"], subject=self.subject, sni=self.sni, conn=self.number)).encode()
            respond(200, [("content-length", str(len(data)))])
            await self.send_body(sid, data)
        elif path.startswith("/sized/"):
            n = int(path.split("/")[2])
            respond(200, [("content-length", str(n))])
            await self.send_body(sid, bytes(range(256)) * (n // 256) + bytes(n % 256))
        elif path.startswith("/slow/"):
            await asyncio.sleep(int(path.split("/")[2]) / 1000)
            respond(200, [("content-length", "4")])
            self.conn.send_data(sid, b"slow", end_stream=True)
        elif path.startswith("/nolen/"):
            n = int(path.split("/")[2])
            respond(200)
            await self.send_body(sid, bytes(range(256)) * (n // 256) + bytes(n % 256))
        elif path == "/hang" or path in ("/rst-no-error", "/rst-after-100"):
            pass
        elif path == "/data-before-headers":
            raw(frame(0x0, 0, sid, b"early"))
            respond(200, [("content-length", "2")])
            self.conn.send_data(sid, b"ok", end_stream=True)
        elif path == "/over-cl":
            respond(200, [("content-length", "5")])
            self.conn.send_data(sid, b"0123456789", end_stream=True)
        elif path == "/trailers-no-end":
            respond(200)
            self.conn.send_data(sid, b"body\n")
            self.flush()
            # HEADERS (type 1) with END_HEADERS (0x4) only: a trailer section that does not end the stream.
            # 0x00 literal without indexing (the encoder's table stays in step), new name "x-t", value "1".
            raw(frame(0x1, 0x4, sid, b"\x00\x03x-t\x011"))
            await asyncio.sleep(2)
        elif path == "/continuation-flood":
            raw(frame(0x1, 0x0, sid, b"\x88"))  # :status 200, END_HEADERS not set
            flood = b"".join(frame(0x9, 0x0, sid, b"\x00\x01a\x01b") for _ in range(2000))
            raw(flood)
            await asyncio.sleep(2)
        elif path == "/hpack-bomb":
            respond(200, [("content-length", "0")] + [("x-bomb", "v" * 4000)] * 200, end=True)
        elif path == "/status-101":
            respond(101)
            respond(200, [("content-length", "2")])
            self.conn.send_data(sid, b"ok", end_stream=True)
        elif path == "/goaway-keep":
            raw(frame(0x7, 0, 0, sid.to_bytes(4, "big") + (0).to_bytes(4, "big")))
            await asyncio.sleep(0.1)
            respond(200, [("content-length", "4")])
            self.conn.send_data(sid, b"kept", end_stream=True)
        elif path == "/goaway-zero-always":
            raw(frame(0x7, 0, 0, (0).to_bytes(4, "big") + (0).to_bytes(4, "big")))
        elif path.startswith("/git/") and GIT_ROOT[0]:
            await self.git_http_backend(sid, request, respond)
        elif path == "/mute":
            data = json.dumps(dict(conn=self.number)).encode()
            respond(200, [("content-length", str(len(data)))])
            await self.send_body(sid, data)
            self.flush()
            self.muted = True
        elif path == "/refuse-first":
            if "cleared" in REFUSING or self.number in REFUSING:
                REFUSING.discard("cleared")
                REFUSING.add(self.number)
                self.rst(sid, h2.errors.ErrorCodes.REFUSED_STREAM)
            else:
                data = json.dumps(dict(conn=self.number)).encode()
                respond(200, [("content-length", str(len(data)))])
                await self.send_body(sid, data)
        elif path.startswith("/ping-mode/"):
            data = json.dumps(dict(conn=self.number)).encode()
            respond(200, [("content-length", str(len(data)))])
            await self.send_body(sid, data)
            self.ping_mode = path[len("/ping-mode/"):]
        elif path == "/refuse-always":
            self.rst(sid, h2.errors.ErrorCodes.REFUSED_STREAM)
        elif path == "/nolen-drop":
            respond(200)
            self.conn.send_data(sid, b"z" * 1000)
            self.flush()
            await asyncio.sleep(0.1)
            self.transport.abort()
        else:
            respond(404, [("content-length", "0")], end=True)


def main():
    parser = argparse.ArgumentParser()
    h2tls.add_arguments(parser)
    parser.add_argument("--silent", action="store_true")
    parser.add_argument("--goaway-at-once", action="store_true")
    parser.add_argument("--git-root")
    args = parser.parse_args()
    GIT_ROOT[0] = args.git_root
    ctx = h2tls.server_context(args, ["h2"], SNI_NAMES)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    loop.run_until_complete(loop.create_server(lambda: Hostile(args.max_streams, args.silent, args.goaway_at_once), "127.0.0.1", args.port, ssl=ctx))
    print("listening", flush=True)
    loop.run_forever()


if __name__ == "__main__":
    main()
