#!/usr/bin/env python3
"""The access log as written by a running proxy: JSON lines that parse, buffered per worker and written in
batches, and never lost: not when the proxy is stopped right after a request, nor when the file is rotated
(renamed, then SIGHUP reopens it)."""
import json, os, signal, socket, subprocess, sys, tempfile, time, unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from fixture import tear_down, with_upstream  # noqa: E402

ENV = {}


def setUpModule():
    ENV.update(with_upstream("mtls-proxy-accesslog-"))


def tearDownModule():
    tear_down(ENV)


def start(name, workers=2, log=None):
    """A proxy of its own, JSON access log to `<name>.log` (or `log`); returns (process, port, log path)."""
    d, port = ENV["dir"], harness.free_port()
    log = log or f"{d}/{name}.log"
    with open(f"{d}/{name}.conf", "w") as f:
        f.write(f"""
[proxy]
listen = "127.0.0.1:{port}"
workers = {workers}
[log]
access = "{log}"
format = "json"
{harness.US_IDENTITY}[[route]]
name = "bank \\"API\\" café"
host = "api.mygreatbank.test"
identity = "us"
connect = "127.0.0.1:{ENV['up']}"
""")
    p = harness.start_proxy(ENV["procs"], f"{d}/{name}.conf", f"{d}/{name}.out", port)
    return p, port, log


def get(port, path, close=False):
    """One request through the proxy on a raw socket; returns the status line once the whole response is in."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(f"GET http://api.mygreatbank.test{path} HTTP/1.1\r\nHost: api.mygreatbank.test\r\n"
                  f"{'Connection: close' if close else 'Connection: keep-alive'}\r\n\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data:
            c = s.recv(65536)
            if not c:
                break
            data += c
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(next((l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")), b"0"))
        while len(body) < length:
            c = s.recv(65536)
            if not c:
                break
            body += c
        return head.split(b"\r\n")[0].decode()


def records(path):
    """Every line parsed as JSON (a line that does not parse fails the test)."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        text = f.read()
    assert text == "" or text.endswith("\n"), f"a line was split: {text[-200:]!r}"
    return [json.loads(line) for line in text.splitlines()]


def wait_for(predicate, timeout=15.0):
    return harness.wait_until(predicate, timeout, step=0.05)


class AccessLogLines(unittest.TestCase):
    def test_a_request_then_sigterm_at_once_leaves_its_line_in_the_file(self):
        p, port, log = start("sigterm")
        for i in range(5):
            self.assertIn(" 200 ", get(port, f"/whoami?i={i}"))
        self.assertIn(" 200 ", get(port, "/last-before-sigterm", close=True))
        p.send_signal(signal.SIGTERM)  # no pause: the line may still be in the worker's buffer
        self.assertEqual(p.wait(timeout=60), 0)
        paths = [r["path"] for r in records(log)]
        self.assertEqual(paths.count("/whoami"), 5, paths)
        self.assertIn("/last-before-sigterm", paths)

    def test_lines_appear_without_the_proxy_stopping_and_parse_with_escapes_intact(self):
        p, port, log = start("batched")
        for _ in range(20):
            self.assertIn(" 200 ", get(port, "/whoami"))
        self.assertTrue(wait_for(lambda: len(records(log)) == 20), records(log))  # the 100 ms flush
        r = records(log)[-1]
        self.assertEqual(r["route"], 'bank "API" café')
        self.assertEqual(r["identity"], "us")
        self.assertEqual(r["status"], 200)
        self.assertEqual(r["host"], "api.mygreatbank.test")
        self.assertNotIn("?", r["path"])
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=60)

    def test_rotation_rename_then_sighup_reopens_the_file_and_loses_no_line(self):
        p, port, log = start("rotate")
        for _ in range(3):
            self.assertIn(" 200 ", get(port, "/before-rotation"))
        os.rename(log, log + ".1")
        # Lines still buffered when the file is renamed go to the renamed file (they were written for it).
        self.assertIn(" 200 ", get(port, "/still-before-sighup", close=True))
        p.send_signal(signal.SIGHUP)
        self.assertTrue(wait_for(lambda: "reloaded (SIGHUP)" in harness.read(f"{ENV['dir']}/rotate.out")),
                        harness.read(f"{ENV['dir']}/rotate.out"))
        for _ in range(4):
            self.assertIn(" 200 ", get(port, "/after-rotation"))
        p.send_signal(signal.SIGTERM)
        self.assertEqual(p.wait(timeout=60), 0)
        old = [r["path"] for r in records(log + ".1")]
        new = [r["path"] for r in records(log)]
        self.assertEqual(old.count("/before-rotation"), 3, old)
        self.assertIn("/still-before-sighup", old)
        self.assertNotIn("/after-rotation", old)
        self.assertEqual(new, ["/after-rotation"] * 4)


    def test_a_log_that_cannot_be_reopened_does_not_stop_a_reload_and_loses_no_line(self):
        logs = f"{ENV['dir']}/logs"
        os.makedirs(logs)
        p, port, log = start("unreopenable", log=f"{logs}/access.log")
        self.assertIn(" 200 ", get(port, "/before"))
        os.rename(logs, logs + ".old")
        with open(logs, "w") as f:  # a file where the folder was: opening logs/access.log fails, even as root
            f.write("")
        p.send_signal(signal.SIGHUP)
        out = f"{ENV['dir']}/unreopenable.out"
        self.assertTrue(wait_for(lambda: "reloaded (SIGHUP)" in harness.read(out)), harness.read(out))
        self.assertIn("cannot reopen the access log", harness.read(out))
        self.assertIn(" 200 ", get(port, "/after"))
        p.send_signal(signal.SIGTERM)
        self.assertEqual(p.wait(timeout=60), 0)
        self.assertEqual([r["path"] for r in records(f"{logs}.old/access.log")], ["/before", "/after"])


if __name__ == "__main__":
    harness.run_suite()
