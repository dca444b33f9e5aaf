#!/usr/bin/env python3
"""1 GiB through the proxy each way, with curl, checking the bytes and that the proxy's memory stays flat:
bodies stream with backpressure instead of being buffered."""
import os, subprocess, sys, tempfile, unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from fixture import Fixture, proxy_section, route, tear_down  # noqa: E402

GIB = 1 << 30
# Peak RSS may grow by at most this much while 1 GiB passes: a few watermark-sized buffers, not the body.
ALLOWED_GROWTH_KIB = 32 * 1024
ENV = {}


def setUpModule():
    with Fixture("mtls-proxy-large-", ports=("proxy", "files")) as fx:
        fx.python_upstream("files", ca="ca", require=True)
        proxy = fx.proxy("proxy", proxy_section(fx.ports["proxy"]) + harness.US_IDENTITY
                         + route("files.mygreatbank.test", identity="us", connect=fx.ports["files"]))
    ENV.update(fx.env(proxy=proxy, url=f"http://127.0.0.1:{fx.ports['proxy']}"))


def tearDownModule():
    tear_down(ENV)


def measure(run):
    """Runs `run` and returns (its result, baseline RSS KiB, peak RSS KiB during the run)."""
    pid = ENV["proxy"].pid
    # Warm up: one small exchange so the pool, TLS context and allocator arenas exist before the baseline.
    subprocess.run(["curl", "-sS", "-o", "/dev/null", "-x", ENV["url"], "http://files.mygreatbank.test/download?size=1000000"],
                   check=True, env=harness.clean_env())
    baseline = harness.rss_kib(pid)
    if not harness.reset_peak_rss(pid):
        raise unittest.SkipTest("cannot reset the peak RSS counter on this kernel")
    result = run()
    return result, baseline, harness.peak_rss_kib(pid)


class LargeBodies(unittest.TestCase):
    def test_1GiB_download_streams_with_flat_memory(self):
        def run():
            return subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{size_download}", "-x", ENV["url"],
                                   f"http://files.mygreatbank.test/download?size={GIB}"],
                                  capture_output=True, env=harness.clean_env(), timeout=600)
        r, baseline, peak = measure(run)
        self.assertEqual(r.stdout.decode(), f"200 {GIB}", r.stderr.decode())
        print(f"\n  1 GiB download: RSS baseline {baseline} KiB, peak {peak} KiB, growth {peak - baseline} KiB", file=sys.stderr)
        self.assertLess(peak - baseline, ALLOWED_GROWTH_KIB)

    def test_1GiB_chunked_upload_streams_with_flat_memory(self):
        def run():
            zeros = subprocess.Popen(["head", "-c", str(GIB), "/dev/zero"], stdout=subprocess.PIPE)
            # -T - streams standard input as a chunked PUT.
            r = subprocess.run(["curl", "-sS", "-x", ENV["url"], "-T", "-", "http://files.mygreatbank.test/echo"],
                               stdin=zeros.stdout, capture_output=True, env=harness.clean_env(), timeout=600)
            zeros.wait()
            zeros.stdout.close()
            return r
        r, baseline, peak = measure(run)
        # sha256 of 1 GiB of zero bytes
        self.assertEqual(r.stdout.decode().strip(),
                         f"{GIB} 49bc20df15e412a64472421e13fe86ff1c5165e18b2afccf160d4dc19fe68a14", r.stderr.decode())
        print(f"\n  1 GiB upload: RSS baseline {baseline} KiB, peak {peak} KiB, growth {peak - baseline} KiB", file=sys.stderr)
        self.assertLess(peak - baseline, ALLOWED_GROWTH_KIB)


if __name__ == "__main__":
    harness.run_suite()
