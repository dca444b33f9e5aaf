import ProxyConfig
import Testing
@testable import TLS
@testable import ProxyServer

/// The pure parts of CRL fetching: which URLs are fetched, what answer is a CRL body, when to fetch again.
@Suite struct CRLFetcherTests {
    @Test func onlyPlainHTTPURLsWithAHostAreFetched() {
        #expect(CRLFetcher.parse("http://crl.example.com/ca.crl")! == ("crl.example.com", 80, "/ca.crl"))
        #expect(CRLFetcher.parse("HTTP://127.0.0.1:8080/a/b.crl")! == ("127.0.0.1", 8080, "/a/b.crl"))
        #expect(CRLFetcher.parse("http://[::1]:81/x")! == ("::1", 81, "/x"))
        #expect(CRLFetcher.parse("http://crl.example.com")! == ("crl.example.com", 80, "/"))
        #expect(CRLFetcher.parse("https://crl.example.com/ca.crl") == nil)
        #expect(CRLFetcher.parse("ldap://crl.example.com/cn=ca") == nil)
        #expect(CRLFetcher.parse("http://user@crl.example.com/ca.crl") == nil)
        #expect(CRLFetcher.parse("http://crl.example.com:0/ca.crl") == nil)
        #expect(CRLFetcher.parse("http://crl.example.com:99999/ca.crl") == nil)
        #expect(CRLFetcher.parse("http:///ca.crl") == nil)
        #expect(CRLFetcher.parse("http://crl.example.com/a b") == nil)
    }

    @Test func httpsURLsAreFetchedOverTLSOnTheirOwnDefaultPort() {
        let a = CRLFetcher.parseLocation("https://crl.example.com/ca.crl")
        #expect(a?.tls == true && a?.host == "crl.example.com" && a?.port == 443 && a?.path == "/ca.crl")
        let b = CRLFetcher.parseLocation("HTTPS://[::1]:8443/x.crl")
        #expect(b?.tls == true && b?.host == "::1" && b?.port == 8443)
        #expect(CRLFetcher.parseLocation("http://crl.example.com/ca.crl")?.tls == false)
        #expect(CRLFetcher.parseLocation("https://user@crl.example.com/ca.crl") == nil)
        #expect(CRLFetcher.parseLocation("https:///ca.crl") == nil)
        #expect(CRLFetcher.parseLocation("ftp://crl.example.com/ca.crl") == nil)
    }

    @Test func anHTTPSDistributionPointIsRefusedByTheAddressGuardBeforeAnyConnection() {
        // The literal loopback address: refused by the guard with allow_private off; nothing is dialled.
        guard case .failure(let e) = CRLFetcher.fetch("https://127.0.0.1:9/ca.crl", settings: CRLFetcher.Settings()) else {
            Issue.record("a loopback https:// point was fetched with allow_private off")
            return
        }
        #expect(e.text.contains("loopback") && e.text.contains("allow_private is off"))
    }

    @Test func onlyA200BodyIsKept() {
        func body(_ text: String) -> [UInt8]? {
            if case .success(let b) = CRLFetcher.parseResponse(Array(text.utf8), from: "x") { return b }
            return nil
        }
        #expect(body("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcdef") == Array("abc".utf8))
        #expect(body("HTTP/1.0 200 OK\r\n\r\nxyz") == Array("xyz".utf8))
        #expect(body("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n") == nil)
        #expect(body("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc") == nil)  // cut short
        #expect(body("HTTP/1.1 200 OK\r\n\r\n") == nil)
        #expect(body("garbage") == nil)
        if case .failure(let e) = CRLFetcher.parseResponse(Array("HTTP/1.1 503 x\r\n\r\n".utf8), from: "h:80") {
            #expect(e.text == "HTTP 503 from h:80")
        } else {
            Issue.record("a 503 was taken")
        }
    }

    @Test func aResetForgetsWhatWasFetchedAndAFetchUnderWayDoesNotBringItBack() {
        let cache = CRLCache.shared
        let url = "http://crl.example.com/reset-test.crl"
        cache.want(url)
        #expect(cache.entry(url) != nil && cache.awaitingFirstFetch(url))
        let generation = cache.generation
        cache.reset()
        #expect(cache.entry(url) == nil)
        #expect(cache.generation > generation)
        // The fetcher stores an answer for a URL no longer wanted: dropped, not kept.
        cache.failed(url, "HTTP 404 from crl.example.com:80", at: 100, retryAfter: 30)
        #expect(cache.entry(url) == nil)
    }

    @Test func aFullCacheTakesANewPointInPlaceOfTheOneLeastRecentlyUsed() {
        // A long-running proxy meets more distribution points than it keeps (sharded CRLs, a CA's new URLs, a
        // chain naming many): the cap must not shut out every point met after the first `maxURLs`.
        let cache = CRLCache()
        let url = { (i: Int) in "http://crl.example.com/\(i).crl" }
        for i in 0..<CRLCache.maxURLs { cache.want(url(i)) }
        // A verification looks up every point but the first again.
        for i in 1..<CRLCache.maxURLs { _ = cache.crl(for: url(i)) }
        let newcomer = "http://crl.example.com/new.crl"
        #expect(cache.awaitingFirstFetch(newcomer), "hard mode would refuse at once instead of waiting for its fetch")
        cache.want(newcomer)
        #expect(cache.entry(newcomer) != nil, "a newly wanted point is never fetched once the cache is full")
        #expect(cache.entry(url(0)) == nil)
        #expect(cache.entry(url(1)) != nil)
        #expect(cache.snapshot.count == CRLCache.maxURLs)
    }

    @Test func crlFetchWithRevocationOffEverywhereFetchesNothing() throws {
        // A reload that turns revocation off but leaves `crl_fetch = true` in [upstream]: nothing uses the CRLs,
        // so none is kept, refreshed or shown in the metrics (whose staleness alert would fire for nothing).
        func config(_ route: String) throws -> ProxyConfiguration {
            try ConfigLoader.parse("""
            [proxy]
            listen = "127.0.0.1:8080"
            [upstream]
            crl_fetch = true
            revocation = "off"
            [[route]]
            host = "a.test"
            action = "tls"
            \(route)
            """, file: "t.conf", baseDirectory: "/tmp")
        }
        #expect(!CRLFetcher.fetches(try config("")))
        #expect(CRLFetcher.fetches(try config("revocation = \"hard\"")))
        #expect(CRLFetcher.fetches(try config("revocation = \"soft\"")))
    }

    @Test func refreshedAheadOfNextUpdate() {
        // A day-long CRL: an hour before nextUpdate.
        #expect(CRLCache.refreshTime(lastUpdate: 0, nextUpdate: 86_400, now: 100, retryAfter: 30) == 86_400 - 3600)
        // A 10-minute CRL: two minutes before.
        #expect(CRLCache.refreshTime(lastUpdate: 0, nextUpdate: 600, now: 10, retryAfter: 30) == 480)
        // Stale, or no nextUpdate: retried after retryAfter.
        #expect(CRLCache.refreshTime(lastUpdate: 0, nextUpdate: 50, now: 100, retryAfter: 30) == 130)
        #expect(CRLCache.refreshTime(lastUpdate: 0, nextUpdate: nil, now: 100, retryAfter: 30) == 130)
        // Never in the past.
        #expect(CRLCache.refreshTime(lastUpdate: 0, nextUpdate: 101, now: 100, retryAfter: 30) == 101)
        // Already inside the window (an hour-long CRL fetched with 2 minutes left): in 30 s, not in a second;
        // sooner as nextUpdate nears.
        #expect(CRLCache.refreshTime(lastUpdate: 0, nextUpdate: 3720, now: 3600, retryAfter: 30) == 3630)
        #expect(CRLCache.refreshTime(lastUpdate: 0, nextUpdate: 3620, now: 3600, retryAfter: 30) == 3605)
    }
}
