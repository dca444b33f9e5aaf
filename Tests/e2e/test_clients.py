#!/usr/bin/env python3
"""Every common HTTP client, used as workflows use it, through the proxy to an mTLS upstream:

- the client matrix: curl, wget, Python requests, urllib, httpx, aiohttp, Node's http module and undici's fetch,
  Java's HttpClient, Go's net/http, git smart HTTP (clone, push) and pip from a local index; each through
  HTTP_PROXY, through interception (HTTPS_PROXY and the local CA) and through a sidecar listener; each doing a
  GET, a POST with a body, a large upload with `Expect: 100-continue`, two requests on one connection and a
  streamed download with a checksum. One named test per (client, mode); a client that is not installed is
  skipped, by name. The table of results is printed at the end.
- redirects through a sidecar listener stay on the listener (`Location` rewrite), and on the forward path
  with `rewrite_https_location`;
- a forward request for one of the proxy's own listeners is refused with a 403 that names NO_PROXY;
- Node's fetch (undici ProxyAgent) with an http:// URL, which tunnels to port 80; the same on raw sockets:
  plain requests inside a CONNECT to port 80 (keep-alive, path-scoped routes, Host, absolute form), TLS inside
  it refused, plain HTTP inside a CONNECT to port 443 refused by name.
"""
import hashlib, http.client, io, json, os, random, shutil, socket, ssl, subprocess, sys, tempfile, time, unittest, zipfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from fixture import Fixture, loopback, proxy_section, route, table, tear_down  # noqa: E402

CLIENTS_DIR = os.path.join(harness.HERE, "clients")
UPLOAD_SIZE = 4 * 1024 * 1024
DOWNLOAD_SIZE = 8 * 1024 * 1024
BLOCK = bytes(range(256)) * 256  # upstream.py's download pattern
DOWNLOAD_SHA = hashlib.sha256((BLOCK * (DOWNLOAD_SIZE // len(BLOCK) + 1))[:DOWNLOAD_SIZE]).hexdigest()
SUBJECT = "fusion-us"
MODES = ("http_proxy", "intercept", "sidecar")
ENV = {}
MATRIX = {}  # (client, mode) -> "pass" | "fail: ..." | "skip: ..."

# The mTLS service (nginx with `ssl_verify_client on`) writes absolute redirects, as nginx does by default; on its
# real port 443 it names no port, hence port_in_redirect off here, where it listens on a test port.
NGINX_LOCATIONS = """        port_in_redirect off;
        location = /old { return 301 /v1/new; }
        location = /described {
            add_header Content-Location https://api.mygreatbank.test/v1/described.json always;
            return 200 "described\\n";
        }
        location = /elsewhere { return 302 https://status.example.com/v1/new; }
        location / {
            add_header X-Client-Subject $ssl_client_s_dn always;
            return 200 "hello $ssl_client_s_dn $request_uri\\n";
        }"""


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 16), b""):
            h.update(b)
    return h.hexdigest()


def make_wheel(directory, payload):
    """A minimal pure-Python wheel (no build tools needed) with `payload` as a data file, stored uncompressed."""
    name = "mtlsdemo-1.0-py3-none-any.whl"
    files = {
        "mtlsdemo/__init__.py": b"VERSION = '1.0'\n",
        "mtlsdemo/data.bin": payload,
        "mtlsdemo-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: mtlsdemo\nVersion: 1.0\n",
        "mtlsdemo-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: mtls-proxy-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    import base64
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append("mtlsdemo-1.0.dist-info/RECORD,,")
    files["mtlsdemo-1.0.dist-info/RECORD"] = ("\n".join(record) + "\n").encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for path, data in files.items():
            z.writestr(path, data)
    wheel = buf.getvalue()
    os.makedirs(f"{directory}/mtlsdemo", exist_ok=True)
    with open(f"{directory}/mtlsdemo/{name}", "wb") as f:
        f.write(wheel)
    with open(f"{directory}/mtlsdemo/index.html", "w") as f:
        f.write(f'<!DOCTYPE html><html><body><a href="{name}#sha256={hashlib.sha256(wheel).hexdigest()}">{name}</a></body></html>\n')
    with open(f"{directory}/index.html", "w") as f:
        f.write('<!DOCTYPE html><html><body><a href="mtlsdemo/">mtlsdemo</a></body></html>\n')


def git(*args, cwd=None, env=None, check=True):
    r = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    if check and r.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)}: {r.stderr.strip()[-500:]}")
    return r


def setUpModule():
    with Fixture("mtls-proxy-clients-", ports=("proxy", "plain", "files", "nginx", "nginx_tls", "sidecar", "api_sidecar",
                                               "api_raw")) as fx:
        d, ports = fx.dir, fx.ports
        # The upstream: a pip index and git repository behind mutual TLS, next to upstream.py's paths.
        rnd = random.Random(12)
        make_wheel(f"{d}/simple", rnd.randbytes(2 * 1024 * 1024))
        os.makedirs(f"{d}/git")
        if shutil.which("git"):
            genv = harness.clean_env(HOME=d, GIT_CONFIG_NOSYSTEM="1", GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t",
                                     GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
            git("init", "-q", "--bare", "-b", "main", f"{d}/git/repo.git", env=genv)
            git("config", "http.receivepack", "true", cwd=f"{d}/git/repo.git", env=genv)
            git("init", "-q", "-b", "main", f"{d}/seed", env=genv)
            with open(f"{d}/seed/README", "w") as f:
                f.write("seed\n")
            git("add", "README", cwd=f"{d}/seed", env=genv)
            git("commit", "-q", "-m", "seed", cwd=f"{d}/seed", env=genv)
            git("push", "-q", f"{d}/git/repo.git", "main", cwd=f"{d}/seed", env=genv)
        fx.tls_script("client_upstream.py", "files", "--git-root", f"{d}/git", "--pip-root", f"{d}/simple",
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        fx.nginx(mtls="nginx", mtls_locations=NGINX_LOCATIONS)
        routes = (harness.US_IDENTITY
                  + route("files.mygreatbank.test", path="/private/", action="deny")
                  + route("files.mygreatbank.test", identity="us", connect=ports["files"])
                  + route("api.mygreatbank.test", identity="us", connect=ports["nginx"])
                  + route("*", action="deny"))
        fx.write("proxy.conf", proxy_section(ports["proxy"], workers=2, rewrite_https_location=True, intercept=True)
                 + table("[[listener]]", listen=loopback(ports["sidecar"]), upstream="https://files.mygreatbank.test")
                 + table("[[listener]]", listen=loopback(ports["api_sidecar"]), upstream="https://api.mygreatbank.test")
                 + table("[[listener]]", listen=loopback(ports["api_raw"]), upstream="https://api.mygreatbank.test",
                         rewrite_location=False)
                 + routes)
        # A proxy as configured by default: no interception (so no local CA anywhere), no Location rewrite.
        fx.write("plain.conf", proxy_section(ports["plain"]) + routes)
        local_ca = fx.local_ca("proxy.conf", export="local-ca.pem")
        fx.proxy("proxy", wait=("sidecar", "api_sidecar", "api_raw"))
        fx.proxy("plain")
        with open(f"{d}/upload.bin", "wb") as f:
            f.write(rnd.randbytes(UPLOAD_SIZE))
    ENV.update(fx.env(proxy=f"http://127.0.0.1:{ports['proxy']}", plain=f"http://127.0.0.1:{ports['plain']}",
                      local_ca=local_ca, upload=f"{d}/upload.bin", upload_sha=sha256_file(f"{d}/upload.bin"),
                      started=time.time()))


def tearDownModule():
    tear_down(ENV, remove=True)  # downloads, clones and builds: tens of MB per run
    if MATRIX:
        clients = list(dict.fromkeys(c for c, _ in MATRIX))
        print("\nclient matrix (" + ", ".join(MODES) + f"), {time.time() - ENV.get('started', time.time()):.0f} s:",
              file=sys.stderr)
        for c in clients:
            cells = [MATRIX.get((c, m), "-") for m in MODES]
            print(f"  {c:13} " + " | ".join(x.split(":")[0] for x in cells), file=sys.stderr)
            for m, x in zip(MODES, cells):
                if x not in ("pass", "-"):
                    print(f"      {m}: {x}", file=sys.stderr)


def access_records(log="proxy.log"):
    """The access records so far. The proxy writes its access log in batches (at most 100 ms late), so this waits
    until the file has stopped growing for 250 ms (at most 3 s) before it reads."""
    path = f"{ENV['dir']}/{log}"
    deadline = time.time() + 3
    size, quiet_since = -1, time.time()
    while time.time() < deadline:
        now = os.path.getsize(path) if os.path.exists(path) else 0
        if now != size:
            size, quiet_since = now, time.time()
        elif time.time() - quiet_since >= 0.25:
            break
        time.sleep(0.05)
    out = []
    for line in harness.read(path).splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out


def records_for(fragment, expected, log="proxy.log"):
    """The access records whose path contains `fragment`, waiting (a little) until there are `expected` of them."""
    deadline = time.time() + 5
    while True:
        found = [r for r in access_records(log) if fragment in r["path"]]
        if len(found) >= expected or time.time() > deadline:
            return found
        time.sleep(0.1)


# MARK: how each mode is set up for a client

# Trust settings a machine may carry in its environment; they would override what a test gives a client (requests
# and pip take REQUESTS_CA_BUNDLE or CURL_CA_BUNDLE over a session's verify= or pip's --cert).
CA_VARIABLES = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE", "SSL_CERT_DIR", "NODE_EXTRA_CA_CERTS", "GIT_SSL_CAINFO")


def client_env(**extra):
    env = {k: v for k, v in harness.clean_env().items() if k not in CA_VARIABLES and not k.startswith("PIP_")}
    env.update(extra)
    return env


def mode_setup(mode):
    """BASE URL, environment (as users set it) and CA file for a mode."""
    p = ENV["ports"]
    if mode == "http_proxy":
        return "http://files.mygreatbank.test", client_env(HTTP_PROXY=ENV["proxy"], http_proxy=ENV["proxy"]), None
    if mode == "intercept":
        return "https://files.mygreatbank.test", client_env(HTTPS_PROXY=ENV["proxy"], https_proxy=ENV["proxy"]), ENV["local_ca"]
    return f"http://127.0.0.1:{p['sidecar']}", client_env(), None


def post_body_variants(tag):
    # Python, Java and Go write the JSON with spaces, JavaScript without.
    return [json.dumps({"client": tag, "items": [1, 2, 3]}).encode(),
            json.dumps({"client": tag, "items": [1, 2, 3]}, separators=(",", ":")).encode()]


def run_driver(args, env, timeout=120):
    r = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout)
    lines = [l for l in r.stdout.splitlines() if l.startswith("{")]
    if not lines:
        raise AssertionError(f"{args[0]} printed no result (exit {r.returncode}): {r.stderr.strip()[-800:]}")
    return json.loads(lines[-1])


# MARK: the clients

def available_python(module):
    def check(mode=None):
        r = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True)
        return None if r.returncode == 0 else f"Python {module} is not installed"
    return check


def available_command(name, *probe):
    def check(mode=None):
        if not shutil.which(name):
            return f"{name} is not installed"
        if probe:
            r = subprocess.run(probe, capture_output=True, env=node_env({}))
            if r.returncode != 0:
                return f"{' '.join(probe[:3])} failed: {r.stderr.decode(errors='replace').strip()[-200:]}"
        return None
    return check


def node_env(env):
    # Debian's node-undici lives in /usr/share/nodejs, which only Debian's own node searches.
    env = dict(env)
    env["NODE_PATH"] = ":".join(x for x in (env.get("NODE_PATH"), "/usr/share/nodejs") if x)
    return env


def driver_env(mode, tag):
    base, env, ca = mode_setup(mode)
    env.update(BASE=base, TAG=tag, UPLOAD=ENV["upload"], DOWNLOAD_SIZE=str(DOWNLOAD_SIZE), CA=ca or "")
    return env


def run_python(lib):
    def run(mode, tag):
        return run_driver([sys.executable, os.path.join(CLIENTS_DIR, "py_clients.py"), lib], driver_env(mode, tag))
    return run


def run_node(which):
    def run(mode, tag):
        env = node_env(driver_env(mode, tag))
        if which == "fetch":
            env["NODE_USE_ENV_PROXY"] = "1"
            if env["CA"]:
                env["NODE_EXTRA_CA_CERTS"] = env["CA"]
        return run_driver(["node", os.path.join(CLIENTS_DIR, "node_clients.js"), which], env)
    return run


def available_node_fetch(mode=None):
    """Node's fetch reads HTTP_PROXY/HTTPS_PROXY only with NODE_USE_ENV_PROXY=1, on Node versions that have it;
    through a sidecar listener it needs no proxy at all."""
    if not shutil.which("node"):
        return "node is not installed"
    if mode == "sidecar":
        return None
    version = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    helptext = subprocess.run(["node", "--help"], capture_output=True, text=True).stdout
    if "NODE_USE_ENV_PROXY" not in helptext:
        return f"node {version} has no NODE_USE_ENV_PROXY: its fetch ignores {'HTTP_PROXY' if mode == 'http_proxy' else 'HTTPS_PROXY'}"
    return None


def compiled(kind):
    """Builds the Java or Go driver once per run, into the suite's folder."""
    key = f"built_{kind}"
    if key not in ENV:
        out = f"{ENV['dir']}/{kind}-build"
        os.makedirs(out, exist_ok=True)
        if kind == "java":
            r = subprocess.run(["javac", "-d", out, os.path.join(CLIENTS_DIR, "JavaClient.java")], capture_output=True, text=True, timeout=180)
        else:
            r = subprocess.run(["go", "build", "-o", f"{out}/go_client", os.path.join(CLIENTS_DIR, "go_client.go")],
                               capture_output=True, text=True, timeout=300, cwd=out,
                               env=harness.clean_env(GOFLAGS="-mod=mod", GO111MODULE="on"))
        if r.returncode != 0:
            raise AssertionError(f"building the {kind} client failed: {r.stderr[-800:]}")
        ENV[key] = out
    return ENV[key]


def run_java(api):
    def run(mode, tag):
        env = driver_env(mode, tag)
        props = []
        host, port = "127.0.0.1", str(ENV["ports"]["proxy"])
        if mode == "http_proxy":
            props = [f"-Dhttp.proxyHost={host}", f"-Dhttp.proxyPort={port}"]
        elif mode == "intercept":
            props = [f"-Dhttps.proxyHost={host}", f"-Dhttps.proxyPort={port}"]
        return run_driver(["java", *props, "-cp", compiled("java"), "JavaClient", api], env)
    return run


def run_go(mode, tag):
    return run_driver([f"{compiled('go')}/go_client"], driver_env(mode, tag))


def curl_like(tool):
    """curl and wget, driven per operation from here, with the proxy variables in their environment."""
    def run(mode, tag):
        base, env, ca = mode_setup(mode)
        work = tempfile.mkdtemp(dir=ENV["dir"], prefix=f"{tool}-")
        body_file = f"{work}/post.json"
        with open(body_file, "wb") as f:
            f.write(post_body_variants(tag)[0])

        def call(urls, extra=(), out=None):
            """Statuses, first body and response headers of one invocation over `urls` (one connection when it can)."""
            heads, bodies = f"{work}/heads", f"{work}/body"
            for p in (heads, bodies):
                if os.path.exists(p):
                    os.remove(p)
            if tool == "curl":
                args = ["curl", "-sS", "--max-time", "60", "-D", heads, *extra]
                if ca:
                    args += ["--cacert", ca]
                for u in urls:
                    args += ["-o", out or bodies, u]
                r = subprocess.run(args, env=env, capture_output=True, text=True, timeout=90)
                text = harness.read(heads) if os.path.exists(heads) else ""
            else:
                args = ["wget", "-S", "--timeout=60", "--tries=1", "-O", out or bodies, *extra]
                if ca:
                    args.append(f"--ca-certificate={ca}")
                r = subprocess.run(args + list(urls), env=env, capture_output=True, text=True, timeout=90)
                text = r.stderr
            if r.returncode != 0:
                raise RuntimeError(f"{tool} exit {r.returncode}: {r.stderr.strip()[-300:]}")
            statuses, headers = [], {}
            for line in text.splitlines():
                line = line.strip()
                if line.startswith("HTTP/"):
                    code = int(line.split()[1])
                    if code >= 200 and "connection established" not in line.lower():  # not the CONNECT's answer
                        statuses.append(code)
                elif ":" in line:
                    k, v = line.split(":", 1)
                    headers[k.strip().lower()] = v.strip()
            body = harness.read(out or bodies) if not out and os.path.exists(bodies) else ""
            return statuses, body[:2000], headers

        def op(fn):
            try:
                return fn()
            except Exception as e:  # noqa: BLE001 - reported per operation
                return {"error": str(e)}

        def get():
            s, b, _ = call([f"{base}/whoami/{tag}"])
            return {"status": s[-1], "body": b}

        def post():
            extra = ["--data-binary", f"@{body_file}", "-H", "Content-Type: application/json"] if tool == "curl" else \
                [f"--post-file={body_file}", "--header=Content-Type: application/json"]
            s, b, _ = call([f"{base}/echo"], extra)
            return {"status": s[-1], "body": b}

        def upload():
            extra = ["--data-binary", f"@{ENV['upload']}", "-H", "Expect: 100-continue"] if tool == "curl" else \
                [f"--post-file={ENV['upload']}", "--header=Expect: 100-continue"]
            s, b, h = call([f"{base}/echo"], extra)
            return {"status": s[-1], "body": b, "expect": h.get("x-seen-expect")}

        def keepalive():
            s, _, _ = call([f"{base}/ka/{tag}/1", f"{base}/ka/{tag}/2"])
            return {"statuses": s}

        def download():
            path = f"{work}/download.bin"
            s, _, _ = call([f"{base}/download?size={DOWNLOAD_SIZE}"], out=path)
            return {"status": s[-1], "bytes": os.path.getsize(path), "sha256": sha256_file(path)}

        return {"get": op(get), "post": op(post), "upload": op(upload), "keepalive": op(keepalive), "download": op(download)}
    return run


def run_git(mode, tag):
    """git smart HTTP: ls-remote (GET), clone (GET + POST upload-pack, one connection), push of a 3 MiB file
    (POST receive-pack), and a fresh clone of what was pushed, compared byte for byte."""
    base, env, ca = mode_setup(mode)
    work = tempfile.mkdtemp(dir=ENV["dir"], prefix="git-")
    env.update(HOME=work, GIT_CONFIG_NOSYSTEM="1", GIT_TERMINAL_PROMPT="0", GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    if ca:
        env["GIT_SSL_CAINFO"] = ca
    url = f"{base}/git/repo.git"
    results = {}

    def op(name, fn):
        try:
            results[name] = fn()
        except Exception as e:  # noqa: BLE001
            results[name] = {"error": str(e)}

    def get():
        r = git("ls-remote", url, env=env)
        return {"status": 200 if "refs/heads/main" in r.stdout else 0, "body": None, "note": "ls-remote"}
    first = before = len(access_records())

    def post():
        git("clone", "-q", url, f"{work}/c1", env=env)
        return {"status": 200, "body": None, "note": "clone (POST git-upload-pack)"}

    payload = random.Random(tag).randbytes(3 * 1024 * 1024)

    def upload():
        with open(f"{work}/c1/big.bin", "wb") as f:
            f.write(payload)
        git("add", "big.bin", cwd=f"{work}/c1", env=env)
        git("commit", "-q", "-m", f"big file from {tag}", cwd=f"{work}/c1", env=env)
        git("push", "-q", "origin", f"HEAD:refs/heads/{tag}", cwd=f"{work}/c1", env=env)
        return {"status": 200, "body": None, "note": "push (POST git-receive-pack)"}

    def keepalive():
        clone = [r for r in access_records()[before:] if "/git/repo.git/" in r["path"]]
        by_client = {}
        for r in clone:
            by_client.setdefault(r["client"], []).append(r["path"])
        return {"statuses": [200, 200] if any(len(v) >= 2 for v in by_client.values()) else [],
                "note": f"requests per client connection: {sorted(len(v) for v in by_client.values())}", "checked": True}

    def download():
        git("clone", "-q", "--branch", tag, url, f"{work}/c2", env=env)
        path = f"{work}/c2/big.bin"
        return {"status": 200, "bytes": os.path.getsize(path), "sha256": sha256_file(path),
                "expected_sha256": hashlib.sha256(payload).hexdigest()}

    op("get", get)
    op("post", post)
    op("upload", upload)
    op("keepalive", keepalive)
    op("download", download)
    results["identities"] = sorted({str(r["identity"]) for r in access_records()[first:] if "/git/repo.git/" in r["path"]})
    return results


def run_pip(mode, tag):
    """pip from a local index: the index page (GET), the wheel (a streamed download that pip checks against the
    index's sha256), both on one connection. pip neither posts nor uploads: those operations are not applicable."""
    base, env, ca = mode_setup(mode)
    work = tempfile.mkdtemp(dir=ENV["dir"], prefix="pip-")
    env = {k: v for k, v in env.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    args = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--no-cache-dir", "--no-deps",
            "--no-input", "--target", f"{work}/t", "--index-url", f"{base}/simple/", "--timeout", "60"]
    if base.startswith("http://"):
        args += ["--trusted-host", base.split("//")[1].split(":")[0].split("/")[0]]
    if ca:
        args += ["--cert", ca]
    before = len(access_records())
    r = subprocess.run(args + ["mtlsdemo==1.0"], env=env, capture_output=True, text=True, timeout=180)
    if r.returncode != 0:
        err = {"error": f"pip exit {r.returncode}: {r.stderr.strip()[-500:]}"}
        return {"get": err, "download": err, "keepalive": err}
    records = [x for x in access_records()[before:] if x["path"].startswith("/simple/")]
    index = [x for x in records if x["path"] == "/simple/mtlsdemo/"]
    clients = {x["client"] for x in records}
    data = f"{work}/t/mtlsdemo/data.bin"
    with zipfile.ZipFile(f"{ENV['dir']}/simple/mtlsdemo/mtlsdemo-1.0-py3-none-any.whl") as z:
        expected = hashlib.sha256(z.read("mtlsdemo/data.bin")).hexdigest()
    return {
        "get": {"status": index[0]["status"] if index else 0, "body": None, "note": "index page"},
        "identities": sorted({str(x["identity"]) for x in records}),
        "keepalive": {"statuses": [200, 200] if len(records) >= 2 and len(clients) == 1 else [],
                      "note": f"{len(records)} requests over {len(clients)} connection(s)", "checked": True},
        "download": {"status": 200, "bytes": os.path.getsize(data), "sha256": sha256_file(data), "expected_sha256": expected},
    }


CLIENTS = [
    # name, availability check (None when available, else why not), runner
    ("curl", available_command("curl"), curl_like("curl")),
    ("wget", available_command("wget"), curl_like("wget")),
    ("requests", available_python("requests"), run_python("requests")),
    ("urllib", lambda mode=None: None, run_python("urllib")),
    ("httpx", available_python("httpx"), run_python("httpx")),
    ("aiohttp", available_python("aiohttp"), run_python("aiohttp")),
    ("node_http", available_command("node"), run_node("http")),
    ("undici", available_command("node", "node", "-e", "require('undici')"), run_node("undici")),
    ("node_fetch", available_node_fetch, run_node("fetch")),
    ("java", available_command("javac"), run_java("httpclient")),
    ("java_urlconn", available_command("javac"), run_java("urlconnection")),
    ("go", available_command("go"), run_go),
    ("git", lambda mode=None: None if shutil.which("git") and os.path.exists(f"{ENV['dir']}/git/repo.git") else "git is not installed", run_git),
    ("pip", available_python("pip"), run_pip),
]


def check_results(client, mode, tag, results, first_record):
    """What went wrong, per operation, in words."""
    problems = []
    if "setup" in results:
        return [f"setup: {results['setup']}"]
    get = results.get("get", {})
    if get.get("error") or get.get("status") != 200 or (
            get.get("body") is not None and f"hello {SUBJECT} GET /whoami/{tag}" not in get["body"]):
        problems.append(f"get: {get}")
    if "post" in results:
        post = results["post"]
        wanted = [f"{len(b)} {hashlib.sha256(b).hexdigest()}" for b in post_body_variants(tag)]
        if post.get("error") or post.get("status") != 200 or (post.get("body") is not None and (post.get("body") or "").strip() not in wanted):
            problems.append(f"post: {post}")
    if "upload" in results:
        up = results["upload"]
        if up.get("error") or up.get("status") != 200 or (
                up.get("body") is not None and (up.get("body") or "").strip() != f"{UPLOAD_SIZE} {ENV['upload_sha']}"):
            problems.append(f"upload: {up}")
        elif "expect" in up and client not in ("undici", "node_fetch") and (up.get("expect") or "").lower() != "100-continue":
            problems.append(f"upload: the upstream saw Expect {up.get('expect')!r}, not 100-continue")
    ka = results.get("keepalive", {})
    if ka.get("error") or ka.get("statuses") != [200, 200]:
        problems.append(f"keepalive: {ka}")
    elif not ka.get("checked") and ka.get("reuses", True):
        # The second request came over a client connection that had already carried a request of this test
        # (the first one, or an earlier one when the client pools several connections).
        records_for(f"/ka/{tag}/2", 1)
        mine = access_records()[first_record:]
        second = next((i for i, r in enumerate(mine) if r["path"] == f"/ka/{tag}/2"), None)
        if second is None or mine[second]["client"] not in {r["client"] for r in mine[:second]}:
            problems.append(f"keepalive: /ka/{tag}/2 came over a new connection "
                            f"({[(r['client'], r['path']) for r in mine]})")
    dl = results.get("download", {})
    if dl.get("error") or dl.get("status") != 200 or dl.get("sha256") != dl.get("expected_sha256", DOWNLOAD_SHA):
        problems.append(f"download: {dl}")
    # The upstream saw the route's certificate on every request this test made.
    if "identities" in results and results["identities"] != ["us"]:
        problems.append(f"identities presented: {results['identities']}")
    mine = access_records()[first_record:]
    if not mine:
        problems.append("no access record for this test's requests")
    wrong = [r for r in mine if r.get("identity") != "us"]
    if wrong:
        problems.append(f"requests without the route's identity: {[(r['path'], r['identity']) for r in wrong]}")
    return problems


class ClientMatrix(unittest.TestCase):
    """Filled in below: test_<client>_<mode>."""


def make_test(client, available, runner, mode):
    def test(self):
        why = available(mode)
        if why:
            MATRIX[(client, mode)] = f"skip: {why}"
            self.skipTest(why)
        tag = f"{client}-{mode}"
        first_record = len(access_records())
        try:
            results = runner(mode, tag)
        except Exception as e:
            MATRIX[(client, mode)] = f"fail: {e}"
            raise
        problems = check_results(client, mode, tag, results, first_record)
        MATRIX[(client, mode)] = "pass" if not problems else "fail: " + "; ".join(p[:300] for p in problems)
        self.assertEqual(problems, [], f"{client} through {mode}")
    test.__doc__ = f"{client} through {mode}"
    return test


for _name, _available, _runner in CLIENTS:
    for _mode in MODES:
        setattr(ClientMatrix, f"test_{_name}_{_mode}", make_test(_name, _available, _runner, _mode))


def curl(*args, env=None):
    return subprocess.run(["curl", "-sS", "--max-time", "30", *args], capture_output=True, text=True, env=env or harness.clean_env())


class Redirects(unittest.TestCase):
    def test_curl_follows_an_absolute_redirect_and_stays_on_the_sidecar_listener(self):
        port = ENV["ports"]["api_sidecar"]
        before = len(access_records())
        r = curl("-i", "-L", f"http://127.0.0.1:{port}/old")
        self.assertIn("HTTP/1.1 301", r.stdout, r.stderr)
        self.assertIn(f"Location: http://127.0.0.1:{port}/v1/new\n", r.stdout)
        self.assertIn("hello CN=fusion-us,O=mtls-proxy test /v1/new", r.stdout, r.stderr)
        records = [x for x in access_records()[before:] if x["path"] in ("/old", "/v1/new")]
        self.assertEqual([(x["path"], x["identity"], x["status"], x["listener"]) for x in records],
                         [("/old", "us", 301, "listener[2]"), ("/v1/new", "us", 200, "listener[2]")])

    def test_python_requests_follows_it_too_under_the_name_it_used(self):
        import requests
        port = ENV["ports"]["api_sidecar"]
        r = requests.get(f"http://localhost:{port}/old", timeout=30, proxies={"http": None, "https": None})
        self.assertEqual(r.status_code, 200)
        self.assertEqual([h.headers["Location"] for h in r.history], [f"http://localhost:{port}/v1/new"])
        self.assertIn("hello CN=fusion-us", r.text)

    def test_content_location_is_rewritten_and_other_hosts_are_not(self):
        port = ENV["ports"]["api_sidecar"]
        r = curl("-i", f"http://127.0.0.1:{port}/described")
        self.assertIn(f"Content-Location: http://127.0.0.1:{port}/v1/described.json\n", r.stdout)
        r = curl("-i", f"http://127.0.0.1:{port}/elsewhere")
        self.assertIn("Location: https://status.example.com/v1/new\n", r.stdout)

    def test_rewrite_location_false_passes_the_redirect_unchanged(self):
        r = curl("-i", f"http://127.0.0.1:{ENV['ports']['api_raw']}/old")
        self.assertIn("HTTP/1.1 301", r.stdout)
        self.assertIn("Location: https://api.mygreatbank.test/v1/new\n", r.stdout)

    def test_forward_path_turns_https_into_http_only_with_rewrite_https_location(self):
        r = curl("-i", "-L", "http://api.mygreatbank.test/old", env=harness.clean_env(http_proxy=ENV["proxy"]))
        self.assertIn("Location: http://api.mygreatbank.test/v1/new\n", r.stdout)
        self.assertIn("hello CN=fusion-us,O=mtls-proxy test /v1/new", r.stdout)
        r = curl("-i", "http://api.mygreatbank.test/elsewhere", env=harness.clean_env(http_proxy=ENV["proxy"]))
        self.assertIn("Location: https://status.example.com/v1/new\n", r.stdout)  # no mtls route: left alone
        r = curl("-i", "http://api.mygreatbank.test/old", env=harness.clean_env(http_proxy=ENV["plain"]))
        self.assertIn("Location: https://api.mygreatbank.test/v1/new\n", r.stdout)  # off by default


class OwnListeners(unittest.TestCase):
    def test_a_request_for_the_sidecar_through_http_proxy_gets_a_403_naming_no_proxy(self):
        port = ENV["ports"]["sidecar"]
        r = curl("-i", f"http://127.0.0.1:{port}/whoami", env=harness.clean_env(http_proxy=ENV["proxy"]))
        self.assertIn("HTTP/1.1 403", r.stdout, r.stderr)
        self.assertIn("this proxy's own address", r.stdout)
        self.assertIn("listener[1]", r.stdout)
        self.assertIn("NO_PROXY", r.stdout)
        self.assertIn("Proxy-Status: mtls-proxy; error=http_request_denied", r.stdout)

    def test_python_requests_too_and_no_proxy_fixes_it(self):
        port = ENV["ports"]["sidecar"]
        env = harness.clean_env(HTTP_PROXY=ENV["proxy"])
        code = ("import requests,sys; r=requests.get(sys.argv[1], timeout=30); print(r.status_code); print(r.text)")
        r = subprocess.run([sys.executable, "-c", code, f"http://localhost:{port}/whoami"], env=env, capture_output=True, text=True)
        self.assertTrue(r.stdout.startswith("403"), r.stdout + r.stderr)
        self.assertIn("NO_PROXY", r.stdout)
        env["NO_PROXY"] = "127.0.0.1,localhost"
        r = subprocess.run([sys.executable, "-c", code, f"http://localhost:{port}/whoami"], env=env, capture_output=True, text=True)
        self.assertTrue(r.stdout.startswith("200"), r.stdout + r.stderr)
        self.assertIn(f"hello {SUBJECT}", r.stdout)

    def test_the_forward_listener_itself(self):
        r = curl("-i", f"http://127.0.0.1:{ENV['ports']['proxy']}/", env=harness.clean_env(http_proxy=ENV["proxy"]))
        self.assertIn("HTTP/1.1 403", r.stdout)
        self.assertIn("[proxy] listen", r.stdout)


class InterceptedConnectionClose(unittest.TestCase):
    """urllib sends `Connection: close` with every request; through interception the answer must still arrive whole."""

    def test_connection_close_inside_an_intercepted_tunnel_delivers_the_whole_response(self):
        r = curl("-i", "--cacert", ENV["local_ca"], "-H", "Connection: close", "https://files.mygreatbank.test/whoami/close",
                 env=client_env(https_proxy=ENV["proxy"]))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("hello fusion-us GET /whoami/close", r.stdout)


class PlainHTTPInsideConnect(unittest.TestCase):
    """Node's fetch (undici ProxyAgent) tunnels even http:// URLs: CONNECT host:80, then plain HTTP inside."""

    def test_node_fetch_with_proxyagent_and_an_http_url_reaches_the_mtls_route_without_a_local_ca(self):
        why = available_command("node", "node", "-e", "require('undici')")()
        if why:
            self.skipTest(why)
        code = ("const {fetch, ProxyAgent} = require('undici');"
                "fetch('http://files.mygreatbank.test/whoami', {dispatcher: new ProxyAgent(process.argv[1])})"
                ".then(async r => console.log(r.status, r.headers.get('x-client-subject'), await r.text()))"
                ".catch(e => { console.log('error', e.message, e.cause && e.cause.message); process.exit(1); });")
        r = subprocess.run(["node", "-e", code, ENV["plain"]], env=node_env(client_env()), capture_output=True, text=True, timeout=60)
        self.assertTrue(r.stdout.startswith("200 fusion-us"), r.stdout + r.stderr)
        records = [x for x in access_records("plain.log") if x["host"] == "files.mygreatbank.test" and x["path"] == "/whoami"]
        self.assertTrue(records and records[-1]["identity"] == "us", records)

    # The same on raw sockets: what undici sends, and what it must not be confused with.

    def tunnel(self, proxy_port, target):
        """A socket with CONNECT `target` answered; returns it and the answer's status line."""
        s = socket.create_connection(("127.0.0.1", proxy_port), timeout=30)
        s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(1)
            if not chunk:
                break
            head += chunk
        return s, head.split(b"\r\n")[0].decode()

    def plain_request(self, s, target="/whoami", host="files.mygreatbank.test", method="GET"):
        s.sendall(f"{method} {target} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: raw\r\n\r\n".encode())
        r = http.client.HTTPResponse(s, method=method)
        r.begin()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()

    def tunnel_records(self, log, path):
        return [x for x in access_records(log) if x["host"] == "files.mygreatbank.test" and x["path"] == path]

    def test_two_keep_alive_plain_requests_in_a_connect_to_80_both_carry_the_route_certificate(self):
        s, status = self.tunnel(ENV["ports"]["plain"], "files.mygreatbank.test:80")
        with s:
            self.assertEqual(status, "HTTP/1.1 200 Connection established")
            for _ in range(2):
                code, headers, _ = self.plain_request(s, "/whoami?n=1")
                self.assertEqual((code, headers.get("x-client-subject")), (200, SUBJECT), headers)
        records = self.tunnel_records("plain.log", "/whoami")[-2:]
        self.assertEqual(len(records), 2, records)
        for r in records:
            self.assertEqual((r.get("tunnel"), r["identity"], r["status"], r["scheme"], r["port"]), ("plain", "us", 200, "http", 443), r)
        self.assertTrue(records[1]["reused"], records)  # the pool serves the tunnel's requests like any others
        self.assertNotIn("n=1", harness.read(f"{ENV['dir']}/plain.log"))  # no query string in any log

    def test_a_path_scoped_deny_route_applies_per_request_inside_the_tunnel(self):
        s, status = self.tunnel(ENV["ports"]["plain"], "files.mygreatbank.test:80")
        with s:
            self.assertEqual(status, "HTTP/1.1 200 Connection established")
            code, _, body = self.plain_request(s, "/private/report")
            self.assertEqual(code, 403, body)
            self.assertIn(b"denied by", body)
            code, headers, _ = self.plain_request(s, "/whoami")  # same tunnel, another path: served
            self.assertEqual((code, headers.get("x-client-subject")), (200, SUBJECT))
        records = self.tunnel_records("plain.log", "/private/report")
        self.assertTrue(records and records[-1]["status"] == 403 and records[-1].get("tunnel") == "plain", records)

    def test_host_naming_another_host_or_an_absolute_target_goes_to_the_connect_host(self):
        s, status = self.tunnel(ENV["ports"]["plain"], "files.mygreatbank.test:80")
        with s:
            self.assertEqual(status, "HTTP/1.1 200 Connection established")
            # Routed by the CONNECT host, as interception does; the upstream sees Host rewritten to it.
            code, headers, _ = self.plain_request(s, "/whoami", host="api.mygreatbank.test")
            self.assertEqual((code, headers.get("x-client-subject"), headers.get("x-seen-host")),
                             (200, SUBJECT, "files.mygreatbank.test"), headers)
            code, headers, _ = self.plain_request(s, "http://files.mygreatbank.test/whoami")
            self.assertEqual((code, headers.get("x-client-subject")), (200, SUBJECT), headers)

    def test_tls_inside_a_connect_to_80_without_interception_is_refused_clearly(self):
        s, status = self.tunnel(ENV["ports"]["plain"], "files.mygreatbank.test:80")
        self.assertEqual(status, "HTTP/1.1 200 Connection established")
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        with self.assertRaises((ssl.SSLError, OSError)):
            with ctx.wrap_socket(s, server_hostname="files.mygreatbank.test") as t:
                t.sendall(b"GET / HTTP/1.1\r\nHost: files.mygreatbank.test\r\n\r\n")
                if not t.recv(1):
                    raise OSError("closed")
        s.close()
        deadline = time.time() + 10
        while "TLS was sent inside a CONNECT to port 80 of files.mygreatbank.test" not in harness.read(f"{ENV['dir']}/plain.log"):
            self.assertLess(time.time(), deadline, "no clear log line for TLS inside a CONNECT to port 80")
            time.sleep(0.1)

    def test_plain_http_inside_a_connect_to_443_is_refused_by_name(self):
        s, status = self.tunnel(ENV["ports"]["proxy"], "files.mygreatbank.test:443")  # interception is on here
        with s:
            self.assertEqual(status, "HTTP/1.1 200 Connection established")
            code, _, body = self.plain_request(s, "/whoami")
        self.assertEqual(code, 400, body)
        self.assertIn(b"plain HTTP was sent inside a CONNECT to port 443 of files.mygreatbank.test", body)
        log = harness.read(f"{ENV['dir']}/proxy.log")
        self.assertNotIn("TLS with the client failed: http request", log)
        self.assertNotIn("does the workflow trust the local CA", log)

    def test_tls_inside_a_connect_to_443_is_still_intercepted(self):
        s, status = self.tunnel(ENV["ports"]["proxy"], "files.mygreatbank.test:443")
        self.assertEqual(status, "HTTP/1.1 200 Connection established")
        ctx = ssl.create_default_context(cafile=ENV["local_ca"])
        with ctx.wrap_socket(s, server_hostname="files.mygreatbank.test") as t:
            code, headers, _ = self.plain_request(t, "/whoami")
        self.assertEqual((code, headers.get("x-client-subject")), (200, SUBJECT))


if __name__ == "__main__":
    harness.run_suite()
