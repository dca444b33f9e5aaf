#!/usr/bin/env python3
"""The side-by-side benchmark behind scripts/bench. Everything listens on 127.0.0.1 and is stopped at the end.

Systems, each presenting the same EC P-256 client certificate to the same upstream and verifying it with SNI:
  mtls-proxy fwd    forward mode (absolute-form requests, as with HTTP_PROXY), 1 worker
  mtls-proxy side   sidecar listener (origin form), same process
  mtls-proxy 2w     forward mode, 2 workers
  nginx             1 worker, proxy_pass https with an upstream keepalive pool and session reuse
  haproxy           nbthread 1, server ... ssl crt ... verify required sni, http-reuse always
  stunnel           client mode, one TLS connection per client connection (scenario 2 only)

The h2 scenario (`--h2-only`) puts an HTTP/2 nginx upstream (same certificate checks) behind:
  mtls-proxy h2     forward mode, the route with protocol = "h2", 1 worker
  haproxy h2        nbthread 1, server ... ssl alpn h2 (HTTP/2 to the server), http-reuse always
nginx 1.22 has no HTTP/2 to its upstreams (proxy_http_version 2 needs 1.29.4 or later): it is left out, said so.
"""
import http.client, json, os, re, resource, shutil, signal, socket, statistics, subprocess, sys, tempfile, time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "Tests", "e2e"))
import harness  # noqa: E402

QUICK = "--quick" in sys.argv
# `--instructions-only` (callgrind: instructions and allocations per request), `--syscalls-only` (strace) and
# `--memory-only` (idle connections) run just that part, without the req/s rounds; they combine.
ONLY = {flag[2:-5] for flag in sys.argv[1:] if flag in ("--instructions-only", "--syscalls-only", "--memory-only", "--routes-only", "--h2-only",
                                                                 "--h2-instructions-only")}
# The routes scenario (`--routes-only`): tables of these sizes; not part of the default run (100,000 routes under
# callgrind take a few minutes).
ROUTE_SIZES = [10, 1000, 10000] if QUICK else [10, 1000, 10000, 100000]
# With a --*-only mode, `--mtls-only` leaves nginx and HAProxy out (their figures do not change between runs).
MTLS_ONLY = "--mtls-only" in sys.argv
ROUNDS = 2 if QUICK else 5
DURATION = 2 if QUICK else 3
HOST = "api.mygreatbank.test"
LOG_ON = "mtls-proxy fwd, log on"  # the same as `mtls-proxy fwd`, with the JSON access log written to a file
OUT = []


def say(line=""):
    print(line, flush=True)
    OUT.append(line)


def table(title, header, rows):
    say()
    say(f"## {title}")
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    for r in [header] + rows:
        say("  ".join(str(c).ljust(widths[i]) for i, c in enumerate(r)).rstrip())


def ratio(value, base):
    return f"{value / base:.2f}" if base else "-"


class Bench:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="mtls-proxy-bench-")
        self.pki = f"{self.dir}/pki"
        harness.make_pki(self.pki)
        self.procs = harness.Processes()
        self.ports = {k: harness.free_port() for k in
                      ("up", "fwd", "side", "fwd2", "fwdlog", "nginx", "haproxy", "stunnel", "admin", "admin2", "admin3",
                       "uph2", "fwdh2", "adminh2", "haproxyh2")}
        # A listener that accepts nothing: the HTTP/2 upstream's `/hold` proxies to it, so that a request there is
        # held open with no answer (the memory-per-stream scenario).
        self.silent = socket.socket()
        self.silent.bind(("127.0.0.1", 0))
        self.silent.listen(4096)
        self.ports["silent"] = self.silent.getsockname()[1]
        with open(f"{self.dir}/big.bin", "wb") as f:
            f.write(os.urandom(10 << 20))
        with open(f"{self.dir}/body100", "w") as f:
            f.write("x" * 99 + "\n")
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    # ---------------------------------------------------------------- set-up
    def start_upstream(self):
        d, p = self.dir, self.pki
        conf = f"""
{"user root;" if os.geteuid() == 0 else ""}
worker_processes 1;
daemon off;
pid {d}/up.pid;
error_log {d}/up-error.log error;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {d}/up-body;
    client_max_body_size 0;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    server {{
        listen 127.0.0.1:{self.ports['up']} ssl;
        server_name {HOST};
        ssl_certificate {p}/server.pem;
        ssl_certificate_key {p}/server.key;
        ssl_client_certificate {p}/ca.pem;
        ssl_verify_client on;
        ssl_session_cache shared:SSL:10m;
        location = / {{ default_type text/plain; return 200 "{"x" * 99}\n"; }}
        location = /big {{ default_type application/octet-stream; alias {d}/big.bin; }}
        location = /upload {{ client_body_buffer_size 1m; proxy_pass http://127.0.0.1:{self.ports['up']}/sink; proxy_request_buffering off; }}
        location = /sink {{ return 200 "ok\\n"; }}
    }}
    # The same service over HTTP/2 (the h2 scenario).
    server {{
        listen 127.0.0.1:{self.ports['uph2']} ssl http2;
        server_name {HOST};
        ssl_certificate {p}/server.pem;
        ssl_certificate_key {p}/server.key;
        ssl_client_certificate {p}/ca.pem;
        ssl_verify_client on;
        ssl_session_cache shared:SSL:10m;
        http2_max_requests 1000000;
        keepalive_timeout 300s;
        location = / {{ default_type text/plain; return 200 "{"x" * 99}\n"; }}
        location = /big {{ default_type application/octet-stream; alias {d}/big.bin; }}
        location = /hold {{ proxy_pass http://127.0.0.1:{self.ports['silent']}; proxy_read_timeout 300s; }}
    }}
}}
"""
        # /upload reads the whole body (nginx proxies it to its own /sink over plain HTTP on loopback... which
        # would need a plain listener); keep it simple: nginx discards the body of a `return`.
        conf = conf.replace(f"proxy_pass http://127.0.0.1:{self.ports['up']}/sink; proxy_request_buffering off;", 'return 200 "ok\\n";')
        os.makedirs(f"{d}/up-body", exist_ok=True)
        with open(f"{d}/up.conf", "w") as f:
            f.write(conf)
        self.procs.start(["nginx", "-c", f"{d}/up.conf", "-p", d], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        harness.wait_for_port(self.ports["up"])

    def mtls_config(self, listen, workers, admin, sidecar=None, idle="90s", log="off", h2=False):
        side = f'\n[[listener]]\nlisten = "127.0.0.1:{sidecar}"\nupstream = "https://{HOST}"\n' if sidecar else ""
        return f"""
[proxy]
listen = "127.0.0.1:{listen}"
workers = {workers}
[admin]
listen = "127.0.0.1:{admin}"
[log]
access = "{log}"
format = "json"
[upstream]
ca_file = "{self.pki}/ca.pem"
max_idle_per_host = 4096
idle_timeout = "{idle}"
[identities.bench]
cert = "{self.pki}/fusion-us.pem"
key = "{self.pki}/fusion-us.key"
{side}
[[route]]
host = "*.mygreatbank.test"
identity = "bench"
connect = "127.0.0.1:{self.ports['uph2' if h2 else 'up']}"
{'protocol = "h2"' if h2 else ''}
"""

    def start_mtls(self, name, workers, listen, admin, sidecar=None, wrapper=(), idle="90s", binary=None, log="off", h2=False):
        """`log`: "off", or "file" for the JSON access log written to a file, as users run it."""
        path = f"{self.dir}/{name}.conf"
        if log == "file":
            log = f"{self.dir}/{name}-access.log"
        with open(path, "w") as f:
            f.write(self.mtls_config(listen, workers, admin, sidecar, idle, log, h2=h2))
        log = open(f"{self.dir}/{name}.log", "ab")
        p = self.procs.start([*wrapper, binary or os.environ["MTLS_PROXY_BIN"], "run", "--config", path], stdout=log, stderr=log)
        harness.wait_for_port(listen, timeout=60)
        if sidecar:
            harness.wait_for_port(sidecar, timeout=60)
        return p

    def nginx_config(self, wrapped=False):
        d, p = self.dir, self.pki
        return f"""
{"user root;" if os.geteuid() == 0 else ""}
worker_processes 1;
{"master_process off;" if wrapped else ""}
daemon off;
pid {d}/nginx-proxy.pid;
error_log {d}/nginx-proxy-error.log error;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {d}/np-body;
    proxy_temp_path {d}/np-proxy;
    client_max_body_size 0;
    keepalive_requests 1000000;
    upstream bank {{ server 127.0.0.1:{self.ports['up']}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{self.ports['nginx']};
        location / {{
            proxy_pass https://bank;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host {HOST};
            proxy_request_buffering off;
            proxy_buffering off;
            proxy_ssl_certificate {p}/fusion-us.pem;
            proxy_ssl_certificate_key {p}/fusion-us.key;
            proxy_ssl_trusted_certificate {p}/ca.pem;
            proxy_ssl_verify on;
            proxy_ssl_server_name on;
            proxy_ssl_name {HOST};
            proxy_ssl_session_reuse on;
        }}
    }}
}}
"""

    def start_nginx(self, wrapper=()):
        for sub in ("np-body", "np-proxy"):
            os.makedirs(f"{self.dir}/{sub}", exist_ok=True)
        with open(f"{self.dir}/nginx-proxy.conf", "w") as f:
            f.write(self.nginx_config(wrapped=bool(wrapper)))
        p = self.procs.start([*wrapper, "nginx", "-c", f"{self.dir}/nginx-proxy.conf", "-p", self.dir],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        harness.wait_for_port(self.ports["nginx"], timeout=60)
        return p

    def start_haproxy(self, wrapper=(), h2=False):
        port = self.ports["haproxyh2" if h2 else "haproxy"]
        upstream = self.ports["uph2" if h2 else "up"]
        alpn = " alpn h2" if h2 else ""
        with open(f"{self.pki}/fusion-us.both.pem", "w") as f:
            f.write(harness.read(f"{self.pki}/fusion-us.pem") + harness.read(f"{self.pki}/fusion-us.key"))
        conf = f"""
global
    nbthread 1
    maxconn 8000
defaults
    mode http
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    timeout http-keep-alive 300s
    http-reuse always
frontend fe
    bind 127.0.0.1:{port}
    default_backend bank
backend bank
    http-request set-header Host {HOST}
    server s1 127.0.0.1:{upstream} ssl crt {self.pki}/fusion-us.both.pem ca-file {self.pki}/ca.pem verify required sni str({HOST}) verifyhost {HOST} pool-max-conn 4096{alpn}
"""
        cfg = f"{self.dir}/haproxy{'-h2' if h2 else ''}.cfg"
        with open(cfg, "w") as f:
            f.write(conf)
        p = self.procs.start([*wrapper, "haproxy", "-db", "-f", cfg],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        harness.wait_for_port(port, timeout=60)
        return p

    def start_stunnel(self):
        conf = f"""
foreground = yes
pid =
[bank]
client = yes
accept = 127.0.0.1:{self.ports['stunnel']}
connect = 127.0.0.1:{self.ports['up']}
cert = {self.pki}/fusion-us.pem
key = {self.pki}/fusion-us.key
CAfile = {self.pki}/ca.pem
verifyChain = yes
checkHost = {HOST}
sni = {HOST}
"""
        with open(f"{self.dir}/stunnel.conf", "w") as f:
            f.write(conf)
        p = self.procs.start(["stunnel4", f"{self.dir}/stunnel.conf"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        harness.wait_for_port(self.ports["stunnel"])
        return p

    # ---------------------------------------------------------------- load
    def wrk(self, port, forward, close=False, connections=32):
        script = f"{self.dir}/wrk-{'fwd' if forward else 'rev'}{'-close' if close else ''}.lua"
        with open(script, "w") as f:
            path = f"http://{HOST}/" if forward else "/"
            f.write(f'wrk.path = "{path}"\nwrk.headers["Host"] = "{HOST}"\n')
            if close:
                f.write('wrk.headers["Connection"] = "close"\n')
        r = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{DURATION}s", "--latency", "-s", script,
                            f"http://127.0.0.1:{port}/"], capture_output=True, text=True)
        rps = float(re.search(r"Requests/sec:\s+([\d.]+)", r.stdout).group(1))
        lat = dict(re.findall(r"^\s+(50|99)%\s+([\d.]+\w+)", r.stdout, re.M))
        errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", r.stdout)
        return rps, lat.get("50", "-"), lat.get("99", "-"), errors.group(0) if errors else ""

    def throughput(self, port, forward, upload):
        url = f"http://{HOST}/upload" if upload else f"http://{HOST}/big"
        base = ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}"]
        if forward:
            base += ["-x", f"http://127.0.0.1:{port}", url]
        else:
            base += ["-H", f"Host: {HOST}", f"http://127.0.0.1:{port}/{'upload' if upload else 'big'}"]
        if upload:
            base[1:1] = ["-T", f"{self.dir}/big.bin", "-H", "Expect:"]
        n = 8 if QUICK else 20
        start = time.time()
        for _ in range(n):
            code = subprocess.run(base, capture_output=True, text=True, env=harness.clean_env()).stdout
            assert code == "200", code
        return n * 10 / (time.time() - start)

    def keepalive_requests(self, port, forward, n):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        path = f"http://{HOST}/" if forward else "/"
        for _ in range(n):
            conn.request("GET", path, headers={"Host": HOST})
            r = conn.getresponse()
            body = r.read()
            assert r.status == 200, f"port {port}: {r.status} {body[:300]!r}"
        conn.close()

    def metrics(self, admin_port):
        with socket.create_connection(("127.0.0.1", admin_port)) as s:
            s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
            data = b""
            while True:
                c = s.recv(65536)
                if not c:
                    break
                data += c
        values = {}
        for line in data.decode().split("\r\n\r\n", 1)[1].splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                values[name] = float(value)
        return values

    # ---------------------------------------------------------------- scenarios
    def run(self):
        say(f"# mtls-proxy benchmark, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
        if ONLY:
            say(f"machine: {os.cpu_count()} cores; only: {', '.join(sorted(ONLY))}")
            return self.run_only()
        say(f"machine: {os.cpu_count()} cores; {ROUNDS} rounds of {DURATION}s per system; upstream nginx 1 worker, ssl_verify_client on")
        self.start_upstream()
        self.start_mtls("fwd", 1, self.ports["fwd"], self.ports["admin"], sidecar=self.ports["side"])
        self.start_mtls("fwd2", 2, self.ports["fwd2"], self.ports["admin2"])
        self.start_mtls("fwdlog", 1, self.ports["fwdlog"], self.ports["admin3"], log="file")
        self.start_nginx()
        self.start_haproxy()
        self.start_stunnel()
        systems = [("nginx", self.ports["nginx"], False), ("haproxy", self.ports["haproxy"], False),
                   ("mtls-proxy fwd", self.ports["fwd"], True), ("mtls-proxy side", self.ports["side"], False),
                   ("mtls-proxy 2w", self.ports["fwd2"], True)]
        for _, port, fwd in systems + [("", self.ports["fwdlog"], True)]:
            self.keepalive_requests(port, fwd, 50)  # warm pools and sessions

        results = {}
        for scenario, close in (("keep-alive", False), ("close", True)):
            rows = systems + ([("stunnel", self.ports["stunnel"], False)] if close else [])
            samples = {name: [] for name, _, _ in rows}
            lat = {}
            for _ in range(ROUNDS):
                for name, port, fwd in rows:  # interleaved: each round runs every system once
                    rps, p50, p99, err = self.wrk(port, fwd, close=close)
                    samples[name].append(rps)
                    lat[name] = (p50, p99, err)
            results[scenario] = {k: statistics.median(v) for k, v in samples.items()}
            base = results[scenario]["nginx"]
            table(f"{'1' if not close else '2'}. small requests, {'keep-alive client connections' if not close else 'Connection: close (one request per client connection)'} (wrk, 32 connections)",
                  ["system", "req/s median", "min..max", "p50", "p99", "vs nginx", "errors"],
                  [[n, f"{results[scenario][n]:.0f}", f"{min(samples[n]):.0f}..{max(samples[n]):.0f}", lat[n][0], lat[n][1],
                    ratio(results[scenario][n], base), lat[n][2]] for n, _, _ in rows])
        self.cpu_split([("mtls-proxy fwd", self.ports["fwd"]), ("mtls-proxy 2w", self.ports["fwd2"])])

        rows = []
        tp = {}
        for name, port, fwd in systems[:4]:
            down = self.throughput(port, fwd, upload=False)
            up = self.throughput(port, fwd, upload=True)
            tp[name] = (down, up)
        for name in tp:
            rows.append([name, f"{tp[name][0]:.0f}", ratio(tp[name][0], tp["nginx"][0]), f"{tp[name][1]:.0f}", ratio(tp[name][1], tp["nginx"][1])])
        table("3. large bodies, 10 MiB each, sequential (curl)", ["system", "download MiB/s", "vs nginx", "upload MiB/s", "vs nginx"], rows)
        results["bodies"] = tp

        results["syscalls"] = self.syscalls(systems[:3] + [(LOG_ON, self.ports["fwdlog"], True)])
        results["memory"] = self.memory()
        results["handshakes"] = self.handshakes()
        self.procs.stop_all()
        results["instructions"] = self.instructions()
        self.summary(results)

    def upstream_connections(self, port, pids):
        """Established TCP connections to 127.0.0.1:`port` (the upstream) held by the processes `pids`."""
        out = subprocess.run(["ss", "-Htnp", "state", "established", "dst", f"127.0.0.1:{port}"], capture_output=True, text=True).stdout
        return len([l for l in out.splitlines() if any(f"pid={p}," in l for p in pids)])

    def h2(self):
        """HTTP/2 to the upstream: 32 keep-alive client connections through each system to one HTTP/2 nginx that
        requires the client certificate; req/s, upstream connections used, syscalls per request, RSS; then
        instructions and allocations per request (callgrind) and memory per stream."""
        self.start_upstream()
        proxy = self.start_mtls("fwdh2", 1, self.ports["fwdh2"], self.ports["adminh2"], h2=True)
        systems = [("mtls-proxy h2", self.ports["fwdh2"], True)]
        if not MTLS_ONLY:
            self.start_haproxy(h2=True)
            systems.append(("haproxy h2", self.ports["haproxyh2"], False))
        for _, port, fwd in systems:
            self.keepalive_requests(port, fwd, 50)
        samples = {name: [] for name, _, _ in systems}
        conns, lat = {}, {}
        for _ in range(ROUNDS):
            for name, port, fwd in systems:
                holder = {}
                pids = self.pids_on(port)
                def sample():
                    time.sleep(DURATION / 2)
                    holder["n"] = self.upstream_connections(self.ports["uph2"], pids)
                import threading
                t = threading.Thread(target=sample)
                t.start()
                rps, p50, p99, err = self.wrk(port, fwd)
                t.join()
                samples[name].append(rps)
                conns[name] = max(conns.get(name, 0), holder.get("n", 0))
                lat[name] = (p50, p99, err)
        syscalls = {}
        n = 2000
        for name, port, fwd in systems:
            total, _, _ = self.traced(port, lambda: self.keepalive_requests(port, fwd, n))
            syscalls[name] = total / n
        rss = {"mtls-proxy h2": harness.rss_kib(proxy.pid)}
        rss.update({name: max(harness.rss_kib(p) for p in self.pids_on(port)) for name, port, _ in systems[1:]})
        out = {name: {"rps": statistics.median(samples[name]), "upstream_connections": conns[name],
                      "syscalls_per_request": syscalls[name], "rss_kib": rss.get(name)} for name, _, _ in systems}
        base = out.get("haproxy h2", out["mtls-proxy h2"])["rps"]
        table("h2. small requests over HTTP/2 to the upstream (wrk, 32 keep-alive client connections; nginx upstream with "
              f"http2 and ssl_verify_client on; {self.nginx_h2_note()})",
              ["system", "req/s median", "min..max", "p50", "p99", "vs haproxy h2", "upstream connections", "syscalls/request", "RSS KiB", "errors"],
              [[name, f"{out[name]['rps']:.0f}", f"{min(samples[name]):.0f}..{max(samples[name]):.0f}", lat[name][0], lat[name][1],
                ratio(out[name]["rps"], base), str(conns[name]), f"{syscalls[name]:.2f}", str(rss.get(name, "-")), lat[name][2]]
               for name, _, _ in systems])
        self.procs.stop_all()
        self.procs = harness.Processes()
        return {"systems": out, "instructions": self.h2_instructions(), "memory": self.h2_memory()}

    @staticmethod
    def nginx_h2_note():
        """Why nginx has no row in the h2 tables: Debian's nginx cannot speak HTTP/2 to an upstream."""
        r = subprocess.run(["nginx", "-v"], capture_output=True, text=True)
        version = (re.search(r"nginx/([\d.]+)", r.stderr + r.stdout) or re.search("(.*)", "unknown")).group(1)
        return f"nginx {version} is left out: it has no HTTP/2 to upstreams (proxy_http_version 2 needs nginx 1.29.4 or later)"

    def callgrind_requests(self, proc, port, fwd, n, dump, keep_as=None):
        """Instructions and calls to the malloc family over exactly `n` requests on one warm keep-alive connection
        to the process `proc` running under callgrind (its dump file `dump`): counters zeroed once warm, dumped
        after the `n` requests."""
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        path = f"http://{HOST}/" if fwd else "/"

        def requests_(k):
            for _ in range(k):
                conn.request("GET", path, headers={"Host": HOST})
                r = conn.getresponse()
                r.read()
                assert r.status == 200, r.status

        requests_(50)
        subprocess.run(["callgrind_control", "-z", str(proc.pid)], capture_output=True)
        requests_(n)
        subprocess.run(["callgrind_control", "-d", str(proc.pid)], capture_output=True)
        conn.close()
        time.sleep(1)
        dump = f"{dump}.1"
        if not os.path.exists(dump):
            return 0, 0
        if keep_as:
            shutil.copy(dump, keep_as)
        return callgrind_totals(dump)

    def h2_instructions(self):
        """The h2 scenario under callgrind: user-space instructions and allocations per request over exactly N
        requests on one warm keep-alive client connection (one stream at a time on one upstream HTTP/2 connection),
        for mtls-proxy (`protocol = "h2"`) and HAProxy (`alpn h2`); the profile of mtls-proxy."""
        n = 500 if QUICK else 2000
        keep = os.path.join(ROOT, "bench", "results", time.strftime("callgrind-h2-%Y-%m-%d-%H%M", time.gmtime()))
        os.makedirs(keep, exist_ok=True)
        out, allocs, rows = {}, {}, []
        for name in ("haproxy h2", "mtls-proxy h2"):
            if MTLS_ONLY and not name.startswith("mtls-proxy"):
                continue
            self.procs = harness.Processes()
            self.start_upstream()
            slug = name.replace(" ", "_")
            cg = f"{self.dir}/callgrind-{slug}.out"
            wrapper = ("valgrind", "--tool=callgrind", f"--callgrind-out-file={cg}")
            if name == "haproxy h2":
                proc, port, fwd = self.start_haproxy(wrapper, h2=True), self.ports["haproxyh2"], False
            else:
                stripped = f"{keep}/mtls-proxy-nodebug"
                shutil.copy(os.environ["MTLS_PROXY_BIN"], stripped)
                subprocess.run(["strip", "--strip-debug", stripped], check=True)
                proc = self.start_mtls("cg-h2", 1, self.ports["fwdh2"], self.ports["adminh2"], wrapper=wrapper, binary=stripped, h2=True)
                port, fwd = self.ports["fwdh2"], True
            total, mallocs = self.callgrind_requests(proc, port, fwd, n, cg, keep_as=f"{keep}/{slug}.callgrind")
            self.procs.stop_all()
            out[name], allocs[name] = total / n, mallocs / n
        base = out.get("haproxy h2", 0)
        for name in out:
            rows.append([name, f"{out[name]:,.0f}", ratio(out[name], base), f"{allocs[name]:.1f}"])
        rows.append(["nginx", "-", "-", "-"])
        table(f"h2a. user-space instructions and allocations per request over HTTP/2 to the upstream (callgrind, {n} requests "
              f"on one warm keep-alive client connection; {self.nginx_h2_note()})",
              ["system", "instructions/request", "vs haproxy h2", "allocations/request"], rows)
        self.profile(f"{keep}/mtls-proxy_h2.callgrind", "mtls-proxy h2", n)
        say(f"callgrind dumps kept in {os.path.relpath(keep, ROOT)}")
        self.procs = harness.Processes()
        return {"instructions": out, "allocations": allocs}

    def h2_streams_opened(self):
        """Streams the mtls-proxy of the h2 scenario opened so far, from its metrics (every route)."""
        return sum(v for k, v in self.metrics(self.ports["adminh2"]).items() if k.startswith("mtls_proxy_h2_upstream_streams_total"))

    def h2_memory(self):
        """Memory per HTTP/2 stream: N client connections, each first answered once and left open (so they count
        in the baseline), then each sends one request that stays in flight; RSS growth / N. Two cases, each on a
        fresh instance (a freed heap would hide the growth): `held`, the upstream holds the answer (its `/hold`
        proxies to a listener that never answers): what an open stream costs; `slow reader`, a 10 MiB download
        whose client reads nothing (receive buffer 4 KiB): what a stream holds when its client is slow, which
        flow control bounds (the stream's window, plus what the client side holds up to its watermark).
        RSS is sampled twice, 1.5 s apart: a bounded stream does not grow between them."""
        n = 50 if QUICK else 100
        out, rows = {}, []
        systems = [("mtls-proxy h2", self.ports["fwdh2"], True)] + ([] if MTLS_ONLY else [("haproxy h2", self.ports["haproxyh2"], False)])
        for case, path in (("held", "/hold"), ("slow reader", "/big")):
            for name, port, fwd in systems:
                self.procs = harness.Processes()
                self.start_upstream()
                if name == "haproxy h2":
                    self.start_haproxy(h2=True)
                else:
                    self.start_mtls("memh2", 1, port, self.ports["adminh2"], h2=True)
                self.keepalive_requests(port, fwd, 50)
                pid = max(self.pids_on(port))
                target = (lambda p: f"http://{HOST}{p}") if fwd else (lambda p: p)
                socks = []
                for _ in range(n):
                    s = socket.socket()
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                    s.connect(("127.0.0.1", port))
                    s.sendall(f"GET {target('/')} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
                    data = b""
                    while not data.endswith(b"x\n"):
                        c = s.recv(4096)
                        if not c:
                            break
                        data += c
                    socks.append(s)
                time.sleep(0.5)
                streams0 = self.h2_streams_opened() if fwd else None
                before = harness.rss_kib(pid)
                for s in socks:
                    s.sendall(f"GET {target(path)} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
                # Sampled every 0.5 s until it has not grown by more than 1 % of the growth for 2 s (a slow
                # reader's stream fills the client's socket buffers first, then the proxy's), at most `limit` s.
                samples_, limit = [], 6 if QUICK else 15
                start = time.time()
                while time.time() - start < limit:
                    time.sleep(0.5)
                    samples_.append(harness.rss_kib(pid))
                    if len(samples_) >= 5 and samples_[-1] - samples_[-5] <= 0.01 * max(1, samples_[-1] - before):
                        break
                mid = samples_[min(3, len(samples_) - 1)]
                after = samples_[-1]
                settled = time.time() - start
                opened = "-"
                if fwd:
                    opened = f"{self.h2_streams_opened() - streams0:.0f}"
                for s in socks:
                    s.close()
                self.procs.stop_all()
                per, per_mid = (after - before) * 1024 / n, (mid - before) * 1024 / n
                out[f"{name}, {case}"] = per
                rows.append([name, case, str(n), opened, f"{before:,}", f"{mid - before:,}", f"{after - before:,} ({settled:.1f} s)",
                             f"{per_mid / 1024:,.1f}", f"{per / 1024:,.1f}"])
        table(f"h2m. memory per stream ({n} client connections answered once and left open, then each sends one request that stays "
              "in flight; RSS growth / N after 2 s and once it stopped growing; `held`: the upstream holds the answer; `slow reader`: "
              "a 10 MiB download the client does not read (receive buffer 4 KiB); mtls-proxy's stream window is 256 KiB, "
              "its client-side write watermark 256 KiB)",
              ["system", "case", "streams", "opened (metrics)", "RSS before KiB", "growth 2 s KiB", "growth settled KiB", "KiB/stream 2 s",
               "KiB/stream settled"], rows)
        self.procs = harness.Processes()
        return out

    def run_only(self):
        """The measurements a developer repeats while working: no req/s rounds, no comparison table of targets."""
        results = {}
        if "h2" in ONLY:
            results["h2"] = self.h2()
            self.procs.stop_all()
            self.procs = harness.Processes()
        elif "h2-instructions" in ONLY:
            results["h2"] = {"instructions": self.h2_instructions()}
            self.procs.stop_all()
            self.procs = harness.Processes()
        if "syscalls" in ONLY or "memory" in ONLY:
            self.start_upstream()
            self.start_mtls("fwd", 1, self.ports["fwd"], self.ports["admin"])
            self.start_mtls("fwdlog", 1, self.ports["fwdlog"], self.ports["admin3"], log="file")
            systems = [("mtls-proxy fwd", self.ports["fwd"], True), (LOG_ON, self.ports["fwdlog"], True)]
            if not MTLS_ONLY:
                self.start_nginx()
                self.start_haproxy()
                systems[:0] = [("nginx", self.ports["nginx"], False), ("haproxy", self.ports["haproxy"], False)]
            for _, port, fwd in systems:
                self.keepalive_requests(port, fwd, 50)
            if "syscalls" in ONLY:
                results["syscalls"] = self.syscalls(systems)
            if "memory" in ONLY:
                results["memory"] = self.memory()
            self.procs.stop_all()
        if "instructions" in ONLY:
            results["instructions"] = self.instructions()
        if "routes" in ONLY:
            self.procs = harness.Processes()
            results["routes"] = self.routes()
            self.procs.stop_all()
        self.save(results)

    # ---------------------------------------------------------------- routes scenario
    def routes_config(self, n, listen, admin):
        """`n` routes as an egress allowlist grows: host+path routes to one service each, one wildcard deny per
        ten, and the route the requests go to last (every earlier route is passed over by a scan)."""
        lines = [f"""[proxy]
listen = "127.0.0.1:{listen}"
workers = 1
[admin]
listen = "127.0.0.1:{admin}"
[log]
access = "off"
[upstream]
ca_file = "{self.pki}/ca.pem"
[identities.bench]
cert = "{self.pki}/fusion-us.pem"
key = "{self.pki}/fusion-us.key"
"""]
        for i in range(n - 1):
            if i % 10 == 9:
                lines.append(f'[[route]]\nhost = "*.zone{i}.mygreatbank.test"\naction = "deny"\n')
            else:
                lines.append(f'[[route]]\nhost = "svc{i}.mygreatbank.test"\npath = "/api/v{i % 3}"\nidentity = "bench"\n')
        lines.append(f'[[route]]\nhost = "{HOST}"\npath = "/"\nidentity = "bench"\nconnect = "127.0.0.1:{self.ports["up"]}"\n')
        path = f"{self.dir}/routes-{n}.conf"
        with open(path, "w") as f:
            f.write("\n".join(lines))
        return path

    @staticmethod
    def timed_child(argv):
        """(wall seconds, CPU seconds, peak RSS in KiB, exit status) of one command run to its end."""
        start = time.monotonic()
        p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        return time.monotonic() - start, usage.ru_utime + usage.ru_stime, usage.ru_maxrss, p.returncode

    @staticmethod
    def proc_cpu_seconds(pid):
        fields = harness.read(f"/proc/{pid}/stat").rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def proc_rss_kib(pid):
        for line in harness.read(f"/proc/{pid}/status").splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def routes(self):
        """Per table size: `check` and start-up time, resident memory, CPU per request from /proc over 2,000
        keep-alive requests to the last route, and user-space instructions per request under callgrind."""
        self.start_upstream()
        binary = os.environ["MTLS_PROXY_BIN"]
        keep = os.path.join(ROOT, "bench", "results", time.strftime("callgrind-%Y-%m-%d-%H%M", time.gmtime()))
        os.makedirs(keep, exist_ok=True)
        stripped = f"{keep}/mtls-proxy-nodebug"
        shutil.copy(binary, stripped)
        subprocess.run(["strip", "--strip-debug", stripped], check=True)
        n_req = 500 if QUICK else 2000
        rows, out = [], {}
        for n in ROUTE_SIZES:
            conf = self.routes_config(n, self.ports["fwd"], self.ports["admin"])
            check_s, check_cpu, check_rss, code = self.timed_child([binary, "check", "--config", conf])
            assert code == 0, f"check exited {code} for {n} routes"
            start = time.monotonic()
            log = open(f"{self.dir}/routes-{n}.log", "ab")
            proc = self.procs.start([binary, "run", "--config", conf], stdout=log, stderr=log)
            harness.wait_for_port(self.ports["fwd"], timeout=120)
            start_s = time.monotonic() - start
            start_cpu = self.proc_cpu_seconds(proc.pid)
            rss_start = self.proc_rss_kib(proc.pid)
            self.keepalive_requests(self.ports["fwd"], True, 50)
            cpu0 = self.proc_cpu_seconds(proc.pid)
            self.keepalive_requests(self.ports["fwd"], True, n_req)
            cpu_us = (self.proc_cpu_seconds(proc.pid) - cpu0) / n_req * 1e6
            rss = self.proc_rss_kib(proc.pid)
            self.procs.stop_all()
            self.procs = harness.Processes()
            self.start_upstream()
            # callgrind, instrumenting only the measured requests (loading 100,000 routes instrumented takes long).
            cg = f"{self.dir}/callgrind-routes-{n}.out"
            proc = self.procs.start(["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={cg}",
                                     stripped, "run", "--config", conf], stdout=log, stderr=log)
            harness.wait_for_port(self.ports["fwd"], timeout=600)
            conn = http.client.HTTPConnection("127.0.0.1", self.ports["fwd"], timeout=300)

            def requests_(k):
                for _ in range(k):
                    conn.request("GET", f"http://{HOST}/", headers={"Host": HOST})
                    r = conn.getresponse()
                    r.read()
                    assert r.status == 200, r.status

            requests_(50)
            subprocess.run(["callgrind_control", "-i", "on", str(proc.pid)], capture_output=True)
            requests_(50)
            subprocess.run(["callgrind_control", "-z", str(proc.pid)], capture_output=True)
            requests_(n_req)
            subprocess.run(["callgrind_control", "-d", str(proc.pid)], capture_output=True)
            conn.close()
            time.sleep(1)
            total, mallocs = callgrind_totals(f"{cg}.1") if os.path.exists(f"{cg}.1") else (0, 0)
            if os.path.exists(f"{cg}.1"):
                shutil.copy(f"{cg}.1", f"{keep}/routes-{n}.callgrind")
            self.procs.stop_all()
            self.procs = harness.Processes()
            self.start_upstream()
            out[n] = {"check_s": check_s, "check_cpu_s": check_cpu, "check_rss_kib": check_rss, "start_s": start_s,
                      "start_cpu_s": start_cpu, "rss_start_kib": rss_start,
                      "rss_kib": rss, "cpu_us": cpu_us, "instructions": total / n_req, "allocations": mallocs / n_req}
            base = out[ROUTE_SIZES[0]]
            rows.append([f"{n:,}", f"{check_s:.2f} s ({check_cpu:.2f})", f"{start_s:.2f} s ({start_cpu:.2f})", f"{rss / 1024:.1f} MiB",
                         f"{(rss - base['rss_kib']) * 1024 / max(n - ROUTE_SIZES[0], 1):,.0f} B" if n != ROUTE_SIZES[0] else "-",
                         f"{check_rss / 1024:.1f} MiB", f"{cpu_us:.0f} µs", f"{total / n_req:,.0f}",
                         ratio(total / n_req, base["instructions"]), f"{mallocs / n_req:.1f}"])
        table(f"routes: N host+path routes (one wildcard deny per ten), {n_req} keep-alive requests to the last route, 1 worker",
              ["routes", "check wall (CPU)", "start wall (CPU)", "RSS", "RSS/route", "check peak RSS", "CPU/request", "instructions/request",
               "vs 10 routes", "allocations/request"], rows)
        say(f"callgrind dumps kept in {os.path.relpath(keep, ROOT)}")
        return out

    def traced(self, port, work):
        """Runs `work()` under `strace -c -f` over every thread of what listens on `port`; returns (total, {call: n})
        and `work`'s result."""
        pids = self.pids_on(port)
        tids = [int(t) for p in pids for t in os.listdir(f"/proc/{p}/task")]
        trace = f"{self.dir}/strace-{port}-{time.time():.0f}.txt"
        st = subprocess.Popen(["strace", "-c", "-f", "-o", trace] + sum([["-p", str(t)] for t in tids], []),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)
        result = work()
        time.sleep(0.3)
        st.send_signal(signal.SIGINT)
        st.wait()
        total = 0
        calls = {}
        for line in harness.read(trace).splitlines():
            fields = line.split()
            # % time, seconds, usecs/call, calls, [errors,] syscall (or "total")
            if len(fields) >= 5 and fields[3].isdigit():
                if fields[-1] == "total":
                    total = int(fields[3])
                else:
                    calls[fields[-1]] = int(fields[3])
        return total, calls, result

    def syscalls(self, systems):
        n = 2000
        rows, load_rows = [], []
        out = {}
        for name, port, fwd in systems:
            self.keepalive_requests(port, fwd, 100)
            total, calls, _ = self.traced(port, lambda: self.keepalive_requests(port, fwd, n))
            out[name] = total / n
            top = sorted(calls.items(), key=lambda kv: -kv[1])
            rows.append([name, f"{total / n:.2f}", ", ".join(f"{k} {v / n:.2f}" for k, v in top if v / n >= 0.01)])
        table(f"4b. syscalls per request (strace -c -f over every thread, {n} requests on one keep-alive client connection)",
              ["system", "syscalls/request", "per request, by call"], rows)
        # The same under load: 32 keep-alive connections at once, where one epoll_wait serves several of them.
        for name, port, fwd in systems:
            total, calls, requests = self.traced(port, lambda: self.wrk_requests(port, fwd, seconds=4))
            if requests <= 0:
                continue
            out[name + " under load"] = total / requests
            top = sorted(calls.items(), key=lambda kv: -kv[1])
            load_rows.append([name, f"{requests}", f"{total / requests:.2f}",
                              ", ".join(f"{k} {v / requests:.2f}" for k, v in top if v / requests >= 0.01)])
        table("4b. syscalls per request under load (strace -c -f while wrk runs 32 keep-alive connections for 4 s; "
              "strace slows every system alike, so only the counts per request matter)",
              ["system", "requests", "syscalls/request", "per request, by call"], load_rows)
        return out

    def cpu_split(self, systems):
        """Where the two cores go while wrk drives one keep-alive and one close round against each system: the
        proxy, the upstream nginx, wrk, and what is left idle. It says what limits a second worker here."""
        tick = os.sysconf("SC_CLK_TCK")

        def cpu(pids):
            total = 0
            for pid in pids:
                try:
                    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
                    total += int(fields[11]) + int(fields[12])
                except OSError:
                    pass
            return total / tick

        def machine():
            fields = [int(x) for x in open("/proc/stat").readline().split()[1:]]
            return sum(fields) / tick, (fields[3] + fields[4]) / tick  # all, idle + iowait

        rows = []
        upstream = self.pids_on(self.ports["up"])
        for name, port in systems:
            for close in (False, True):
                proxy = self.pids_on(port)
                p0, u0, w0, (all0, idle0) = cpu(proxy), cpu(upstream), resource.getrusage(resource.RUSAGE_CHILDREN), machine()
                rps, _, _, _ = self.wrk(port, True, close=close)
                p1, u1, w1, (all1, idle1) = cpu(proxy), cpu(upstream), resource.getrusage(resource.RUSAGE_CHILDREN), machine()
                span = all1 - all0  # core-seconds that passed, summed over the cores
                wrk_cpu = (w1.ru_utime + w1.ru_stime) - (w0.ru_utime + w0.ru_stime)
                share = lambda x: f"{100 * x / span * os.cpu_count():.0f} %"  # noqa: E731  (of one core)
                rows.append([name, "close" if close else "keep-alive", f"{rps:.0f}", share(p1 - p0), share(u1 - u0), share(wrk_cpu),
                             f"{100 * (1 - (idle1 - idle0) / span):.0f} %"])
        table("2w. where the cores go (one wrk round each; CPU in % of one core; the machine has "
              f"{os.cpu_count()} cores, shared by the proxy, the upstream and the load generator)",
              ["system", "round", "req/s", "proxy", "upstream nginx", "wrk", "machine busy"], rows)

    def wrk_requests(self, port, forward, seconds):
        """Requests wrk completed in `seconds` over 32 keep-alive connections."""
        script = f"{self.dir}/wrk-count-{'fwd' if forward else 'rev'}.lua"
        with open(script, "w") as f:
            path = f"http://{HOST}/" if forward else "/"
            f.write(f'wrk.path = "{path}"\nwrk.headers["Host"] = "{HOST}"\n')
        r = subprocess.run(["wrk", "-t1", "-c32", f"-d{seconds}s", "-s", script, f"http://127.0.0.1:{port}/"],
                           capture_output=True, text=True)
        m = re.search(r"(\d+) requests in", r.stdout)
        return int(m.group(1)) if m else 0

    def pids_on(self, port):
        r = subprocess.run(["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True).stdout
        return sorted(set(int(p) for p in re.findall(r"pid=(\d+)", r)))

    def memory(self):
        # Idle client keep-alive connections.
        rows = []
        out = {}
        count = 500 if QUICK else 2000
        systems = [("nginx", self.ports["nginx"], False), ("haproxy", self.ports["haproxy"], False),
                   ("mtls-proxy fwd", self.ports["fwd"], True)]
        for name, port, fwd in systems[2:] if MTLS_ONLY else systems:
            pid = max(self.pids_on(port))  # nginx: the worker
            before = harness.rss_kib(pid)
            socks = []
            path = f"http://{HOST}/" if fwd else "/"
            # One request per connection, one connection at a time, each then left open and idle: so that the
            # upstream side stays at one pooled connection and only the client connections are counted.
            for _ in range(count):
                s = socket.create_connection(("127.0.0.1", port))
                s.sendall(f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
                data = b""
                while not data.endswith(b"x\n"):  # the 100-byte body ends in "x\n"
                    c = s.recv(4096)
                    if not c:
                        break
                    data += c
                socks.append(s)
            time.sleep(0.5)
            after = harness.rss_kib(pid)
            for s in socks:
                s.close()
            per = (after - before) * 1024 / count
            out[name] = per
            rows.append([name, f"{per:.0f}"])
        table(f"5a. memory per idle client keep-alive connection ({count} held open after one request each, made one at a time; RSS growth / count)",
              ["system", "bytes per connection"], rows)
        # Pooled upstream TLS connections of mtls-proxy: one per distinct host (p1..pN.mygreatbank.test, all
        # dialled to the same upstream), made one after another on one client connection, then left idle.
        # A fresh instance, so that memory freed by earlier scenarios does not hide the growth.
        pool_port, pool_admin = harness.free_port(), harness.free_port()
        self.start_mtls("pool", 1, pool_port, pool_admin)
        pid = self.pids_on(pool_port)[0]
        conn = http.client.HTTPConnection("127.0.0.1", pool_port, timeout=30)
        for i in range(20):  # warm-up: allocator arenas and TLS state
            conn.request("GET", f"http://warm{i}.mygreatbank.test/")
            conn.getresponse().read()
        before = harness.rss_kib(pid)
        m0 = self.metrics(pool_admin)
        for i in range(200):
            conn.request("GET", f"http://p{i}.mygreatbank.test/")
            r = conn.getresponse()
            r.read()
            assert r.status == 200, r.status
        conn.close()
        time.sleep(0.5)
        after = harness.rss_kib(pid)
        m1 = self.metrics(pool_admin)
        pooled = m1.get("mtls_proxy_upstream_connections_active", 0) - m0.get("mtls_proxy_upstream_connections_active", 0)
        per_pooled = (after - before) * 1024 / pooled if pooled > 0 else 0
        table("5b. memory per pooled upstream TLS connection (mtls-proxy; 200 hosts, one pooled connection each, idle)",
              ["new pooled connections", "RSS growth KiB", "bytes per pooled connection"], [[f"{pooled:.0f}", after - before, f"{per_pooled:.0f}"]])
        out["pooled"] = per_pooled
        return out

    def handshakes(self):
        admin = self.ports["admin"]
        m0 = self.metrics(admin)
        self.keepalive_requests(self.ports["fwd"], True, 1000)
        m1 = self.metrics(admin)
        full = lambda m: m.get('mtls_proxy_tls_handshakes_total{kind="full"}', 0)  # noqa: E731
        resumed = lambda m: m.get('mtls_proxy_tls_handshakes_total{kind="resumed"}', 0)  # noqa: E731
        steady = (full(m1) - full(m0), resumed(m1) - resumed(m0))
        # After idling out: a second instance with a 1 s idle timeout.
        port, admin2 = harness.free_port(), harness.free_port()
        self.start_mtls("idle", 1, port, admin2, idle="1s")
        self.keepalive_requests(port, True, 10)
        time.sleep(2.5)
        a0 = self.metrics(admin2)
        for _ in range(10):
            self.keepalive_requests(port, True, 100)
            time.sleep(1.5)
        a1 = self.metrics(admin2)
        idled = (full(a1) - full(a0), resumed(a1) - resumed(a0))
        table("6. upstream TLS handshakes (mtls-proxy, from its metrics)", ["phase", "requests", "full", "resumed"],
              [["steady state, keep-alive", 1000, f"{steady[0]:.0f}", f"{steady[1]:.0f}"],
               ["after the pool idled out (10 bursts of 100, 1.5 s apart, idle_timeout 1 s)", 1000, f"{idled[0]:.0f}", f"{idled[1]:.0f}"]])
        return {"steady": steady, "idled": idled}

    def instructions(self):
        """User-space instructions and allocations per request under callgrind, over exactly N requests on one
        warm keep-alive connection. Allocations are the calls to the malloc family (malloc, calloc, realloc,
        posix_memalign, aligned_alloc, memalign) that callgrind counts in the same window: Swift objects, arrays
        and strings, OpenSSL's and libevent's buffers all come from there; nginx mostly carves from its pools."""
        n = 1000 if QUICK else 2000
        out = {}
        allocs = {}
        rows = []
        keep = os.path.join(ROOT, "bench", "results", time.strftime("callgrind-%Y-%m-%d-%H%M", time.gmtime()))
        os.makedirs(keep, exist_ok=True)
        for name in ("nginx", "haproxy", "mtls-proxy fwd", LOG_ON, "mtls-proxy side"):
            if MTLS_ONLY and not name.startswith("mtls-proxy"):
                continue
            self.procs = harness.Processes()
            self.start_upstream()
            slug = name.replace(" ", "_").replace(",", "")
            cg = f"{self.dir}/callgrind-{slug}.out"
            wrapper = ("valgrind", "--tool=callgrind", f"--callgrind-out-file={cg}")
            if name == "nginx":
                proc, port, fwd = self.start_nginx(wrapper), self.ports["nginx"], False
            elif name == "haproxy":
                proc, port, fwd = self.start_haproxy(wrapper), self.ports["haproxy"], False
            else:
                # valgrind 3.19 cannot read the DWARF 5 of the toolchain: profile a copy without debug info.
                stripped = f"{keep}/mtls-proxy-nodebug"
                shutil.copy(os.environ["MTLS_PROXY_BIN"], stripped)
                subprocess.run(["strip", "--strip-debug", stripped], check=True)
                proc = self.start_mtls(f"cg-{slug}", 1, self.ports["fwd"], self.ports["admin"], wrapper=wrapper, binary=stripped,
                                       log="file" if name == LOG_ON else "off", sidecar=self.ports["side"])
                # The sidecar row: the same instance's fixed listener, requests in origin form.
                port, fwd = (self.ports["side"], False) if name == "mtls-proxy side" else (self.ports["fwd"], True)
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
            path = f"http://{HOST}/" if fwd else "/"

            def requests_(k):
                for _ in range(k):
                    conn.request("GET", path, headers={"Host": HOST})
                    r = conn.getresponse()
                    r.read()
                    assert r.status == 200

            requests_(50)
            # Zero the counters once warm, run exactly n requests, dump: the dump holds just those n.
            subprocess.run(["callgrind_control", "-z", str(proc.pid)], capture_output=True)
            requests_(n)
            subprocess.run(["callgrind_control", "-d", str(proc.pid)], capture_output=True)
            conn.close()
            time.sleep(1)
            dump = f"{cg}.1"
            total, mallocs = callgrind_totals(dump) if os.path.exists(dump) else (0, 0)
            if os.path.exists(dump):
                shutil.copy(dump, f"{keep}/{slug}.callgrind")
            self.procs.stop_all()
            out[name] = total / n
            allocs[name] = mallocs / n
            rows.append([name, f"{total / n:,.0f}", ratio(total / n, out.get("nginx", 0)), f"{mallocs / n:.1f}"])
        table(f"4a. user-space instructions and allocations per request (callgrind, {n} requests on one warm keep-alive connection)",
              ["system", "instructions/request", "vs nginx", "allocations/request"], rows)
        say(f"access log (JSON to a file) adds {out[LOG_ON] - out['mtls-proxy fwd']:,.0f} instructions and "
            f"{allocs[LOG_ON] - allocs['mtls-proxy fwd']:.1f} allocations per request")
        self.profile(f"{keep}/mtls-proxy_fwd.callgrind", "mtls-proxy fwd, log off", n)
        say(f"callgrind dumps kept in {os.path.relpath(keep, ROOT)} (callgrind_annotate <dump> | swift demangle --simplified)")
        out["allocations"] = allocs
        return out

    def profile(self, dump, title, n, top=30):
        """The most expensive functions (self cost), demangled, for the record of where the instructions go."""
        if not os.path.exists(dump) or not shutil.which("callgrind_annotate"):
            return
        text = subprocess.run(["callgrind_annotate", "--threshold=100", dump], capture_output=True, text=True).stdout
        if shutil.which("swift"):
            text = subprocess.run(["swift", "demangle", "--simplified"], input=text, capture_output=True, text=True).stdout or text
        lines = text.splitlines()
        try:
            first = next(i for i, l in enumerate(lines) if "file:function" in l) + 1
        except StopIteration:
            return
        say()
        say(f"## profile: {title}, top {top} functions by own instructions per request (callgrind_annotate)")
        by_object = {}
        for l in lines[first:]:
            m = re.match(r"\s*([\d,]+) \(\s*([\d.]+)%\)\s+.*\[(.*)\]$", l)
            if m and float(m.group(2)) <= 50:
                obj = os.path.basename(m.group(3))
                by_object[obj] = by_object.get(obj, 0) + int(m.group(1).replace(",", ""))
        say("  by object: " + ", ".join(f"{k} {v / n:,.0f}" for k, v in sorted(by_object.items(), key=lambda kv: -kv[1])))
        shown = 0
        for l in lines[first:]:
            m = re.match(r"\s*([\d,]+) \(\s*([\d.]+)%\)\s+(.*)$", l)
            # callgrind_annotate 3.19 puts the thread's root frames (clone, the worker's loop) at ~100%: skip them.
            if not m or float(m.group(2)) > 50:
                continue
            name = re.sub(r"^\?\?\?:|^\S+\.[chS]:", "", m.group(3))
            name = re.sub(r" \[[^\]]*/([^/\]]+)\]$", r" [\1]", name)
            say(f"  {int(m.group(1).replace(',', '')) / n:>9,.0f}  {m.group(2):>5}%  {name[:150]}")
            shown += 1
            if shown == top:
                break

    def summary(self, r):
        ka, cl, body = r["keep-alive"], r["close"], r["bodies"]
        ins, sc, mem, hs = r["instructions"], r["syscalls"], r["memory"], r["handshakes"]

        def check(ok):
            return "met" if ok else "NOT met"

        side_ratios = [ka["mtls-proxy side"] / ka["mtls-proxy fwd"], cl["mtls-proxy side"] / cl["mtls-proxy fwd"],
                       body["mtls-proxy side"][0] / body["mtls-proxy fwd"][0], body["mtls-proxy side"][1] / body["mtls-proxy fwd"][1],
                       ins["mtls-proxy fwd"] / ins["mtls-proxy side"]]

        rows = [
            ["access log adds <= 5k instructions/request", f"{ins[LOG_ON] - ins['mtls-proxy fwd']:,.0f} ({ins[LOG_ON]:,.0f} on, {ins['mtls-proxy fwd']:,.0f} off)", check(ins[LOG_ON] - ins["mtls-proxy fwd"] <= 5000)],
            ["access log: no write syscall per request", f"{sc[LOG_ON]:.2f} vs {sc['mtls-proxy fwd']:.2f} syscalls/request (log on vs off)", check(sc[LOG_ON] - sc["mtls-proxy fwd"] < 0.5)],
            ["allocations/request (fwd, warm keep-alive) = 0", f"{ins['allocations']['mtls-proxy fwd']:.1f} (nginx {ins['allocations']['nginx']:.1f})", check(ins["allocations"]["mtls-proxy fwd"] < 0.5)],
            ["instructions/request (fwd) <= 0.6 x nginx", f"{ins['mtls-proxy fwd']:,.0f} vs {ins['nginx']:,.0f} = {ins['mtls-proxy fwd'] / ins['nginx']:.2f}x", check(ins["mtls-proxy fwd"] <= 0.6 * ins["nginx"])],
            # The target counts epoll waits amortised across connections: the verdict reads the figure under load.
            ["syscalls/request (fwd) <= 4.5, under load", f"{sc.get('mtls-proxy fwd under load', 0):.2f} under load (nginx {sc.get('nginx under load', 0):.2f}, haproxy {sc.get('haproxy under load', 0):.2f}); "
             f"{sc['mtls-proxy fwd']:.2f} on one connection (nginx {sc['nginx']:.2f}, haproxy {sc['haproxy']:.2f})",
             check(0 < sc.get("mtls-proxy fwd under load", 0) <= 4.5)],
            ["keep-alive req/s >= 1.2 x haproxy", f"{ka['mtls-proxy fwd']:.0f} vs {ka['haproxy']:.0f} = {ka['mtls-proxy fwd'] / ka['haproxy']:.2f}x", check(ka["mtls-proxy fwd"] >= 1.2 * ka["haproxy"])],
            ["close req/s >= 1.2 x haproxy", f"{cl['mtls-proxy fwd']:.0f} vs {cl['haproxy']:.0f} = {cl['mtls-proxy fwd'] / cl['haproxy']:.2f}x", check(cl["mtls-proxy fwd"] >= 1.2 * cl["haproxy"])],
            ["close req/s >= 3 x stunnel", f"{cl['mtls-proxy fwd']:.0f} vs {cl['stunnel']:.0f} = {cl['mtls-proxy fwd'] / cl['stunnel']:.2f}x", check(cl["mtls-proxy fwd"] >= 3 * cl["stunnel"])],
            ["download MiB/s >= 1.0 x haproxy", f"{body['mtls-proxy fwd'][0]:.0f} vs {body['haproxy'][0]:.0f} = {body['mtls-proxy fwd'][0] / body['haproxy'][0]:.2f}x", check(body["mtls-proxy fwd"][0] >= body["haproxy"][0])],
            ["upload MiB/s >= 1.0 x haproxy", f"{body['mtls-proxy fwd'][1]:.0f} vs {body['haproxy'][1]:.0f} = {body['mtls-proxy fwd'][1] / body['haproxy'][1]:.2f}x", check(body["mtls-proxy fwd"][1] >= body["haproxy"][1])],
            ["idle client connection <= 1 KiB", f"{mem['mtls-proxy fwd']:.0f} bytes (nginx {mem['nginx']:.0f})", check(mem["mtls-proxy fwd"] <= 1024)],
            ["pooled upstream connection <= 16 KiB", f"{mem['pooled']:.0f} bytes", check(0 < mem["pooled"] <= 16 * 1024)],
            ["2 workers >= 1.0 x 1 worker, keep-alive and close", f"{ka['mtls-proxy 2w'] / ka['mtls-proxy fwd']:.2f}x, {cl['mtls-proxy 2w'] / cl['mtls-proxy fwd']:.2f}x",
             check(ka["mtls-proxy 2w"] >= ka["mtls-proxy fwd"] and cl["mtls-proxy 2w"] >= cl["mtls-proxy fwd"])],
            ["sidecar within 5 % of forward (keep-alive, close, download, upload; instructions fwd/side)", ", ".join(f"{x:.2f}" for x in side_ratios), check(all(abs(x - 1) <= 0.05 for x in side_ratios))],
            ["0 full handshakes / 1000 at steady state", f"{hs['steady'][0]:.0f} full, {hs['steady'][1]:.0f} resumed", check(hs["steady"][0] == 0)],
            ["after idling out: resumed, not full", f"{hs['idled'][0]:.0f} full, {hs['idled'][1]:.0f} resumed", check(hs["idled"][0] == 0 and hs["idled"][1] > 0)],
        ]
        table("Targets", ["target", "measured", "verdict"], rows)
        self.save(r)

    def save(self, r):
        os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
        path = os.path.join(ROOT, "bench", "results", time.strftime("%Y-%m-%d-%H%M.txt", time.gmtime()))
        with open(path, "w") as f:
            f.write("\n".join(OUT) + "\n")
        with open(path.replace(".txt", ".json"), "w") as f:
            json.dump(r, f, indent=1, default=str)
        print(f"\nsaved {path}")


def callgrind_totals(dump):
    """(instructions, calls to the malloc family) in a callgrind dump. Function names are compressed: the
    first `fn=(id) name` or `cfn=(id) name` names an id, later lines give just `(id)`."""
    names = {}
    total = mallocs = 0
    callee = None
    alloc = {"malloc", "calloc", "realloc", "posix_memalign", "aligned_alloc", "memalign"}
    for line in harness.read(dump).splitlines():
        if line.startswith("summary:"):
            total = int(line.split()[1])
        elif line.startswith(("fn=(", "cfn=(")):
            m = re.match(r"c?fn=\((\d+)\)(?: (.*))?$", line)
            if m.group(2):
                names[m.group(1)] = m.group(2)
            if line.startswith("cfn="):
                callee = names.get(m.group(1))
        elif line.startswith("calls=") and callee in alloc:
            mallocs += int(line[6:].split()[0])
    return total, mallocs


if __name__ == "__main__":
    b = Bench()
    try:
        b.run()
    finally:
        b.procs.stop_all()
        shutil.rmtree(b.dir, ignore_errors=True)
