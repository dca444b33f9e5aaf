#!/usr/bin/env python3
"""The Python clients of the client matrix, each used as a workflow would: proxies from HTTP_PROXY/HTTPS_PROXY (the
libraries read the environment themselves), the CA from CA when set. Prints one JSON object: per operation its
status, body, and what the operation measured, or the error.

Usage: py_clients.py requests|urllib|httpx|aiohttp   (env: BASE, TAG, UPLOAD, DOWNLOAD_SIZE, CA)"""
import hashlib, json, os, sys, traceback

BASE, TAG, UPLOAD = os.environ["BASE"], os.environ["TAG"], os.environ["UPLOAD"]
SIZE = int(os.environ["DOWNLOAD_SIZE"])
CA = os.environ.get("CA") or None
POST_BODY = json.dumps({"client": TAG, "items": [1, 2, 3]}).encode()


def upload_chunks():
    with open(UPLOAD, "rb") as f:
        while True:
            b = f.read(1 << 16)
            if not b:
                return
            yield b


def with_requests(extra):
    import requests
    s = requests.Session()
    verify = CA or True
    def get():
        r = s.get(f"{BASE}/whoami/{TAG}", verify=verify, timeout=60)
        return {"status": r.status_code, "body": r.text}
    def post():
        r = s.post(f"{BASE}/echo", data=POST_BODY, headers={"Content-Type": "application/json"}, verify=verify, timeout=60)
        return {"status": r.status_code, "body": r.text}
    def upload():
        with open(UPLOAD, "rb") as f:
            r = s.post(f"{BASE}/echo", data=f, headers={"Expect": "100-continue"}, verify=verify, timeout=60)
        return {"status": r.status_code, "body": r.text, "expect": r.headers.get("X-Seen-Expect")}
    def keepalive():
        return {"statuses": [s.get(f"{BASE}/ka/{TAG}/{i}", verify=verify, timeout=60).status_code for i in (1, 2)]}
    def download():
        h, n = hashlib.sha256(), 0
        with s.get(f"{BASE}/download?size={SIZE}", stream=True, verify=verify, timeout=60) as r:
            for chunk in r.iter_content(1 << 16):
                h.update(chunk)
                n += len(chunk)
            return {"status": r.status_code, "bytes": n, "sha256": h.hexdigest()}
    return {"get": get, "post": post, "upload": upload, "keepalive": keepalive, "download": download}


def with_urllib(extra):
    import ssl, urllib.request
    ctx = ssl.create_default_context(cafile=CA) if CA else None
    opener = urllib.request.build_opener(urllib.request.ProxyHandler(), urllib.request.HTTPSHandler(context=ctx))
    def call(path, data=None, headers=None):
        req = urllib.request.Request(f"{BASE}{path}", data=data, headers=headers or {}, method="POST" if data is not None else "GET")
        return opener.open(req, timeout=60)
    def get():
        with call(f"/whoami/{TAG}") as r:
            return {"status": r.status, "body": r.read().decode()}
    def post():
        with call("/echo", POST_BODY, {"Content-Type": "application/json"}) as r:
            return {"status": r.status, "body": r.read().decode()}
    def upload():
        with open(UPLOAD, "rb") as f, call("/echo", f, {"Expect": "100-continue", "Content-Length": str(os.path.getsize(UPLOAD))}) as r:
            return {"status": r.status, "body": r.read().decode(), "expect": r.headers.get("X-Seen-Expect")}
    def keepalive():
        # urllib opens a connection per request: nothing to reuse. Reported as such.
        out = []
        for i in (1, 2):
            with call(f"/ka/{TAG}/{i}") as r:
                r.read()
                out.append(r.status)
        return {"statuses": out, "reuses": False}
    def download():
        h, n = hashlib.sha256(), 0
        with call(f"/download?size={SIZE}") as r:
            while True:
                b = r.read(1 << 16)
                if not b:
                    break
                h.update(b)
                n += len(b)
            return {"status": r.status, "bytes": n, "sha256": h.hexdigest()}
    return {"get": get, "post": post, "upload": upload, "keepalive": keepalive, "download": download}


def with_httpx(extra):
    import httpx
    c = httpx.Client(verify=CA or True, timeout=60, trust_env=True)
    def get():
        r = c.get(f"{BASE}/whoami/{TAG}")
        return {"status": r.status_code, "body": r.text}
    def post():
        r = c.post(f"{BASE}/echo", content=POST_BODY, headers={"Content-Type": "application/json"})
        return {"status": r.status_code, "body": r.text}
    def upload():
        r = c.post(f"{BASE}/echo", content=upload_chunks(),
                   headers={"Expect": "100-continue", "Content-Length": str(os.path.getsize(UPLOAD))})
        return {"status": r.status_code, "body": r.text, "expect": r.headers.get("X-Seen-Expect")}
    def keepalive():
        return {"statuses": [c.get(f"{BASE}/ka/{TAG}/{i}").status_code for i in (1, 2)]}
    def download():
        h, n = hashlib.sha256(), 0
        with c.stream("GET", f"{BASE}/download?size={SIZE}") as r:
            for b in r.iter_bytes(1 << 16):
                h.update(b)
                n += len(b)
            return {"status": r.status_code, "bytes": n, "sha256": h.hexdigest()}
    return {"get": get, "post": post, "upload": upload, "keepalive": keepalive, "download": download}


def with_aiohttp(extra):
    import asyncio, ssl, aiohttp
    ssl_ctx = ssl.create_default_context(cafile=CA) if CA else None
    loop = asyncio.new_event_loop()
    session = None

    async def open_session():
        return aiohttp.ClientSession(trust_env=True, timeout=aiohttp.ClientTimeout(total=60),
                                     connector=aiohttp.TCPConnector(ssl=ssl_ctx if ssl_ctx else True, limit=1))
    session = loop.run_until_complete(open_session())

    def run(coro):
        return lambda: loop.run_until_complete(coro())
    async def get():
        async with session.get(f"{BASE}/whoami/{TAG}") as r:
            return {"status": r.status, "body": await r.text()}
    async def post():
        async with session.post(f"{BASE}/echo", data=POST_BODY, headers={"Content-Type": "application/json"}) as r:
            return {"status": r.status, "body": await r.text()}
    async def upload():
        with open(UPLOAD, "rb") as f:
            async with session.post(f"{BASE}/echo", data=f, expect100=True) as r:
                return {"status": r.status, "body": await r.text(), "expect": r.headers.get("X-Seen-Expect")}
    async def keepalive():
        out = []
        for i in (1, 2):
            async with session.get(f"{BASE}/ka/{TAG}/{i}") as r:
                await r.read()
                out.append(r.status)
        return {"statuses": out}
    async def download():
        h, n = hashlib.sha256(), 0
        async with session.get(f"{BASE}/download?size={SIZE}") as r:
            async for b in r.content.iter_chunked(1 << 16):
                h.update(b)
                n += len(b)
            return {"status": r.status, "bytes": n, "sha256": h.hexdigest()}
    extra["_close"] = lambda: loop.run_until_complete(session.close())
    return {"get": run(get), "post": run(post), "upload": run(upload), "keepalive": run(keepalive), "download": run(download)}


def main():
    extra = {}
    which = {"requests": with_requests, "urllib": with_urllib, "httpx": with_httpx, "aiohttp": with_aiohttp}[sys.argv[1]]
    results = {}
    try:
        ops = which(extra)
    except Exception as e:  # noqa: BLE001 - reported, not raised
        print(json.dumps({"setup": {"error": f"{type(e).__name__}: {e}"}}))
        return
    for name in ("get", "post", "upload", "keepalive", "download"):
        try:
            results[name] = ops[name]()
        except Exception as e:  # noqa: BLE001
            results[name] = {"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc(limit=3)[-600:]}
    if "_close" in extra:
        extra["_close"]()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
