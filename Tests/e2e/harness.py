"""Shared pieces of the end-to-end suites: a throwaway PKI, real upstream servers (nginx, the Python TLS server,
a loopback DNS server), the proxy process, and free loopback ports. Everything listens on 127.0.0.1 only."""
import json, os, re, shutil, signal, socket, ssl, struct, subprocess, sys, tempfile, threading, time
import urllib.error, urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
HERE = os.path.dirname(os.path.abspath(__file__))


# The config lines most suites share: trust the test CA for upstreams, and identity "us" (fusion-us) from the PKI
# that make_pki writes to pki/ beside the config.
def us_identity(dns_port=None):
    """The [upstream] table (test CA; the loopback DNS server on `dns_port` as nameserver, if given) and identity
    "us", as config lines."""
    nameservers = f'nameservers = ["127.0.0.1:{dns_port}"]\n' if dns_port is not None else ""
    return f'[upstream]\nca_file = "pki/ca.pem"\n{nameservers}[identities.us]\ncert = "pki/fusion-us.pem"\nkey = "pki/fusion-us.key"\n'


US_IDENTITY = us_identity()

# A whole config: the above, and one route sending api.mygreatbank.test with identity "us".
US_API_CONFIG = "\n" + US_IDENTITY + """[[route]]
host = "api.mygreatbank.test"
identity = "us"
"""

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def make_pki(directory):
    """The test PKI (scripts/lib/pki.sh make_pki) in `directory`: a copy of the one in $MTLS_TEST_PKI when that is
    set (scripts/test makes it once for every suite of a run, each suite getting its own copy to issue more
    certificates and CRLs from), else made here."""
    template = os.environ.get("MTLS_TEST_PKI")
    if template and os.path.isfile(os.path.join(template, "ca.pem")):
        shutil.copytree(template, directory, dirs_exist_ok=True)
        return
    subprocess.run(["bash", "-c", f"source '{ROOT}/scripts/lib/pki.sh' && make_pki '{directory}'"], check=True)


def pki_shell(*commands, cwd=None):
    """Runs shell `commands`, one a line, with the functions of scripts/lib/pki.sh (pki_cert_dated, utc_in, ...)
    defined; in `cwd` if given. A failing script fails the caller."""
    script = f"source '{ROOT}/scripts/lib/pki.sh'\n" + "\n".join(commands)
    subprocess.run(["bash", "-c", script], check=True, cwd=cwd)


def clean_env(**extra):
    """The environment for client processes: no proxy settings leaking in from outside."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")}
    env.update(extra)
    return env


class ThreadedServer:
    """A listening socket on 127.0.0.1 that hands each accepted connection to `handle(sock)` on a thread of its own."""

    def __init__(self, backlog=64):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(backlog)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                raw, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.handle, args=(raw,), daemon=True).start()

    def handle(self, sock):
        raise NotImplementedError


def read_head(conn, buf=b""):
    """Reads from `conn` until the end of a message head; returns (head, the bytes after it), or (None, what was
    read) when the peer closed first. `buf` holds bytes already read."""
    while b"\r\n\r\n" not in buf:
        data = conn.recv(65536)
        if not data:
            return None, buf
        buf += data
    head, rest = buf.split(b"\r\n\r\n", 1)
    return head, rest


def read_response(s, pause_after_head=0.0):
    """Reads one Content-Length response from `s`; returns (head, body). With `pause_after_head`, the reader
    stops for that long once the head is in, as a client that is slow to read the body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed before the head ended: {data[:200]!r}")
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    if pause_after_head:
        time.sleep(pause_after_head)  # everything the upstream sent piles up in the proxy and the kernel
    while len(body) < length:
        chunk = s.recv(262144)
        if not chunk:
            raise AssertionError(f"connection closed after {len(body)} of {length} body bytes")
        body += chunk
    return head, body


class TLSUpstream(ThreadedServer):
    """A TLS server on 127.0.0.1 that requires a client certificate of the test CA (`client_ca`), as the upstreams
    the proxy exists for do. `serve(conn)` gets each connection after its handshake; errors end the connection."""

    def __init__(self, pki, cert="server", client_ca="ca", backlog=64):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(f"{pki}/{cert}.pem", f"{pki}/{cert}.key")
        self.ctx.load_verify_locations(f"{pki}/{client_ca}.pem")
        self.ctx.verify_mode = ssl.CERT_REQUIRED
        super().__init__(backlog)

    def handle(self, raw):
        try:
            conn = self.ctx.wrap_socket(raw, server_side=True)
        except (OSError, ssl.SSLError):
            raw.close()
            return
        try:
            self.serve(conn)
        except (OSError, ssl.SSLError):
            pass
        finally:
            try:
                conn.close()
            except OSError:
                pass

    def serve(self, conn):
        raise NotImplementedError


class Processes:
    """Starts processes and stops every one of them, whatever happens."""

    def __init__(self):
        self.procs = []

    def start(self, args, **kw):
        p = subprocess.Popen(args, start_new_session=True, **kw)
        self.procs.append(p)
        return p

    def stop_all(self):
        for p in reversed(self.procs):
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for p in reversed(self.procs):
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        self.procs.clear()


def start_python_upstream(procs, pki, port, cert="server", ca=None, require=False, max_tls=None):
    args = [sys.executable, os.path.join(HERE, "upstream.py"), "--port", str(port),
            "--cert", f"{pki}/{cert}.pem", "--key", f"{pki}/{cert}.key"]
    if ca:
        args += ["--ca", f"{pki}/{ca}.pem"]
    if require:
        args.append("--require-client-cert")
    if max_tls:
        args += ["--max-tls", max_tls]
    procs.start(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port(port)



def start_recorder(procs, pki, port, log, optional_client_cert=False):
    """The recording TLS upstream (recorder.py): each request it receives becomes one JSON line in `log`."""
    args = [sys.executable, os.path.join(HERE, "recorder.py"), "--port", str(port),
            "--cert", f"{pki}/server.pem", "--key", f"{pki}/server.key", "--ca", f"{pki}/ca.pem"]
    if optional_client_cert:
        args.append("--optional-client-cert")
    procs.start(args + ["--log", log])
    wait_for_port(port)


def recorded_requests(log, settle):
    """What the recorder wrote to `log`, after `settle` seconds for the last request to land; [] if nothing yet."""
    time.sleep(settle)
    if not os.path.exists(log):
        return []
    return [json.loads(line) for line in read(log).splitlines()]


def folder_with_pki(prefix):
    """A new temporary folder with a fresh PKI in its pki/; returns the folder."""
    d = tempfile.mkdtemp(prefix=prefix)
    make_pki(f"{d}/pki")
    return d


def pki_and_upstream(prefix):
    """A temporary folder with a fresh PKI in pki/ and a Python mTLS upstream (client certificates from the test
    CA required) on a free port; returns dict(dir, procs, up, ...) for the suite's ENV. The same as
    fixture.with_upstream, which suites use with fixture.tear_down."""
    import fixture
    return fixture.with_upstream(prefix)

NGINX_CONF = """
{user}
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    default_type text/plain;
    ssl_certificate {pki}/server.pem;
    ssl_certificate_key {pki}/server.key;
    ssl_client_certificate {pki}/ca.pem;
    # A web service that trusts callers only by their client certificate.
    server {{
        listen 127.0.0.1:{mtls_port} ssl;
        server_name api.mygreatbank.test;
        ssl_verify_client on;
{mtls_locations}
    }}
    # A service that needs no client certificate; it reports one if it gets one anyway.
    server {{
        listen 127.0.0.1:{tls_port} ssl;
        server_name status.example.com;
        ssl_verify_client optional;
        location / {{
            add_header X-Client-Subject $ssl_client_s_dn always;
            add_header X-Client-Verify $ssl_client_verify always;
            return 200 "status ok\\n";
        }}
    }}
}}
"""


# The mTLS service's default location: it greets the client by its certificate's subject.
NGINX_MTLS_LOCATIONS = """        location / {
            add_header X-Client-Subject $ssl_client_s_dn always;
            add_header X-Client-Verify $ssl_client_verify always;
            return 200 "hello $ssl_client_s_dn\\n";
        }"""


def start_nginx(procs, directory, pki, mtls_port, tls_port, mtls_locations=None):
    """nginx on loopback with the PKI in `pki`: on `mtls_port` a service that requires a client certificate of the
    test CA (`ssl_verify_client on`), answering as `mtls_locations` says (nginx directives inside its server
    block; by default NGINX_MTLS_LOCATIONS); on `tls_port` one that needs none."""
    for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        os.makedirs(f"{directory}/{sub}", exist_ok=True)
    conf = f"{directory}/nginx.conf"
    with open(conf, "w") as f:
        f.write(NGINX_CONF.format(user="user root;" if os.geteuid() == 0 else "", dir=directory, pki=pki,
                                  mtls_port=mtls_port, tls_port=tls_port,
                                  mtls_locations=mtls_locations or NGINX_MTLS_LOCATIONS))
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    procs.start([nginx, "-c", conf, "-p", directory], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port(mtls_port)
    wait_for_port(tls_port)


class LoopbackDNS:
    """A minimal DNS server on 127.0.0.1: names under .loopback.test resolve to 127.0.0.1, all else is NXDOMAIN.
    It lets the tests exercise the proxy's asynchronous resolver without any packet leaving loopback."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.queries = []
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while True:
            try:
                data, addr = self.sock.recvfrom(512)
            except OSError:
                return
            if len(data) < 12:
                continue
            qid, flags, qd = struct.unpack(">HHH", data[:6])
            i, labels = 12, []
            while i < len(data) and data[i] != 0:
                n = data[i]
                labels.append(data[i + 1:i + 1 + n].decode("ascii", "replace"))
                i += n + 1
            question = data[12:i + 5]
            qtype = struct.unpack(">H", data[i + 1:i + 3])[0] if i + 3 <= len(data) else 0
            name = ".".join(labels).lower()
            self.queries.append((name, qtype))
            if name.endswith(".loopback.test"):
                if qtype == 1:
                    answer = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + socket.inet_aton("127.0.0.1")
                    reply = struct.pack(">HHHHHH", qid, 0x8180, 1, 1, 0, 0) + question + answer
                else:
                    reply = struct.pack(">HHHHHH", qid, 0x8180, 1, 0, 0, 0) + question
            else:
                reply = struct.pack(">HHHHHH", qid, 0x8183, 1, 0, 0, 0) + question
            self.sock.sendto(reply, addr)

    def close(self):
        self.sock.close()



def send_raw(port, data, wait):
    """Sends raw bytes to 127.0.0.1:port and reads until the peer closes or `wait` seconds pass; returns
    (everything received as latin-1 text, whether the peer closed or reset the connection)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=wait)
    s.sendall(data)
    received, closed = b"", False
    deadline = time.time() + wait
    while time.time() < deadline:
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            break
        except ConnectionResetError:
            closed = True
            break
        if not chunk:
            closed = True
            break
        received += chunk
    s.close()
    return received.decode("latin-1"), closed


def wait_until(predicate, timeout, step):
    """Polls `predicate` every `step` seconds for up to `timeout`; returns its first truthy value, else its last."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    return predicate()


def bcrypt_hash(password, cost):
    """A bcrypt hash of `password` with `cost` (4 to 17), as `htpasswd -B` writes it ($2y$...), for auth_file
    entries. Made by htpasswd (Debian apache2-utils, which scripts/lib/deps.sh installs), not Python's crypt
    module, which Python 3.13 no longer has. None when htpasswd is missing (the caller skips, by name)."""
    htpasswd = shutil.which("htpasswd")
    if not htpasswd:
        return None
    # -i: the password on stdin, not in the process list.
    r = subprocess.run([htpasswd, "-niBC", str(cost), "user"], input=password + "\n", capture_output=True, text=True,
                       check=True, timeout=60)
    return r.stdout.strip().split(":", 1)[1]


def write_file(path, text, mode=None):
    """Writes `text` to `path` (chmod to `mode` if given); returns the path."""
    with open(path, "w") as f:
        f.write(text)
    if mode is not None:
        os.chmod(path, mode)
    return path


def run_cli(*args, timeout, **kw):
    """Runs the proxy binary with `args`, output captured as text."""
    return subprocess.run([proxy_binary(), *args], capture_output=True, text=True, timeout=timeout, **kw)


def init_local_ca(directory, config):
    """`ca init` for `config`, whose [intercept] keeps its CA in `directory`/state; fails the set-up if it fails."""
    os.makedirs(f"{directory}/state")
    init = subprocess.run([proxy_binary(), "ca", "init", "--config", config], capture_output=True, text=True)
    assert init.returncode == 0, init.stderr


def http_get(port, path, timeout=5):
    """GET http://127.0.0.1:port/path (the admin listener); returns (status, body), for error statuses too."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()

def proxy_binary():
    return os.environ.get("MTLS_PROXY_BIN") or os.path.join(ROOT, ".build", "debug", "mtls-proxy")


def start_proxy(procs, config_path, log_path, port, env=None):
    """`mtls-proxy run` with `config_path`, its output appended to `log_path`, `env` added to its environment;
    returns once it listens on `port`."""
    with open(log_path, "ab") as log:
        p = procs.start([proxy_binary(), "run", "--config", config_path], stdout=log, stderr=subprocess.STDOUT,
                        env=dict(os.environ, **env) if env else None)
    wait_for_port(port)
    return p


def _status_kib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def rss_kib(pid):
    return _status_kib(pid, "VmRSS")


def peak_rss_kib(pid):
    return _status_kib(pid, "VmHWM")


def reset_peak_rss(pid):
    """Linux lets the peak (VmHWM) be reset by writing 5 to clear_refs."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def read(path):
    with open(path) as f:
        return f.read()


def metric(text, name, absent=None, **labels):
    """The value of the series `name` with (at least) these `labels` in a Prometheus text exposition; `absent`
    if there is none."""
    for line in text.splitlines():
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', m.group(3) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            return float(m.group(4))
    return absent


def json_log_lines(path):
    """The JSON lines of a proxy's output (access log lines), parsed; other lines are passed over."""
    return [json.loads(line) for line in read(path).splitlines() if line.startswith("{")]


def run_suite():
    """Runs the calling module's unittest suite and prints its tally: passed, failed and skipped counted apart,
    each skipped test named with its reason (a skip is never counted as a pass). Exits 1 on any failure."""
    import unittest
    result = unittest.main(module="__main__", exit=False, verbosity=2).result

    def test_id(test):  # a failing subtest counts against the test that holds it, once
        return getattr(test, "test_case", test).id()

    failed_ids = {test_id(t) for t, _ in result.failures + result.errors}
    failed_ids |= {test_id(t) for t in getattr(result, "unexpectedSuccesses", [])}
    skipped_ids = {test_id(t) for t, _ in result.skipped} - failed_ids
    skipped_ids |= {test_id(t) for t, _ in getattr(result, "expectedFailures", [])} - failed_ids
    for test, reason in result.skipped:
        if test_id(test) in skipped_ids:
            print(f"skipped: {test.id()}: {reason}")
    failed, skipped = len(failed_ids), len(skipped_ids)
    passed = max(0, result.testsRun - failed - skipped)
    print(f"{passed} passed, {failed} failed, {skipped} skipped")
    sys.exit(1 if failed or result.testsRun == 0 else 0)
