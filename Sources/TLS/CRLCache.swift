import CEventTLS
import ProxyConfig
#if canImport(Glibc)
import Glibc
#endif

/// CRLs fetched from certificates' distribution points (`crl_fetch = true`), by URL, shared by every worker and
/// the fetcher thread. The verification asks for the CRLs of a certificate's distribution points and notes the
/// URLs it wants; the fetcher (ProxyServer's `CRLFetcher`) fetches what is wanted and due, off the request path,
/// and stores what it got here. OpenSSL checks each CRL (issuer, signature, dates) when it uses it, so a CRL is
/// kept as fetched. `generation` moves with every new CRL, so connections verified before it can be retired.
public final class CRLCache: @unchecked Sendable {
    public static let shared = CRLCache()

    public struct Entry: Sendable {
        public var url: String
        public var issuer: String?
        public var lastUpdate: Int?
        public var nextUpdate: Int?
        /// When a CRL was last fetched and parsed, as a Unix time.
        public var lastSuccess: Int?
        /// The last attempt's error, nil when it succeeded.
        public var lastError: String?
        public var lastAttempt: Int?
        /// When to fetch again: ahead of nextUpdate after a success, soon after a failure.
        public var due: Int
    }

    private var entries: [String: Entry] = [:]
    private var crls: [String: OpaquePointer] = [:]
    /// When each URL was last wanted or looked up by a verification (a count of those events, not a time).
    private var lastUse: [String: Int] = [:]
    private var useClock = 0
    private let lock = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private var generationValue = 0
    /// At most this many distribution points are kept (fetched, refreshed, shown in the metrics) at once: a newly
    /// wanted one takes the place of the one least recently used. At most `maxURLsPerChain` are followed for one
    /// chain (a hostile chain could name any number).
    public static let maxURLs = 64
    static let maxURLsPerChain = 8

    init() { pthread_mutex_init(lock, nil) }

    private func locked<T>(_ body: () -> T) -> T {
        pthread_mutex_lock(lock)
        defer { pthread_mutex_unlock(lock) }
        return body()
    }

    /// Moves with every newly stored CRL.
    public var generation: Int { locked { generationValue } }

    /// Notes that verification wants `url` (fetched as soon as the fetcher runs, if not known yet). When
    /// `maxURLs` are known, the one least recently used is forgotten to make room.
    public func want(_ url: String) {
        locked {
            touch(url)
            guard entries[url] == nil else { return }
            if entries.count >= Self.maxURLs, let oldest = entries.keys.min(by: { lastUse[$0, default: 0] < lastUse[$1, default: 0] }) {
                entries[oldest] = nil
                lastUse[oldest] = nil
                if let crl = crls.removeValue(forKey: oldest) { X509_CRL_free(crl) }
            }
            entries[url] = Entry(url: url, due: 0)
        }
    }

    /// (Under the lock.)
    private func touch(_ url: String) {
        useClock += 1
        lastUse[url] = useClock
    }

    /// Whether `url` is wanted (or would be, once wanted) and its first fetch has not ended yet: no CRL, no failure.
    public func awaitingFirstFetch(_ url: String) -> Bool {
        locked {
            guard let e = entries[url] else { return true }
            return e.lastAttempt == nil && crls[url] == nil
        }
    }

    /// Forgets every URL and CRL: a reload turned crl_fetch off. What was fetched before is not used again, and
    /// the metrics stop naming it; fetching starts anew if it is turned on again.
    public func reset() {
        locked {
            for crl in crls.values { X509_CRL_free(crl) }
            crls = [:]
            entries = [:]
            lastUse = [:]
            generationValue += 1
        }
    }

    /// The URLs due for a fetch at `now`.
    public func due(at now: Int) -> [String] {
        locked { entries.values.filter { $0.due <= now }.map(\.url).sorted() }
    }

    public var snapshot: [Entry] { locked { entries.values.sorted { $0.url < $1.url } } }

    public func entry(_ url: String) -> Entry? { locked { entries[url] } }

    /// Stores the CRL fetched from `url` (DER or PEM); false, with the failure recorded, when it is not a CRL.
    @discardableResult
    public func store(_ body: [UInt8], from url: String, at now: Int, retryAfter: Int) -> Bool {
        let parsed: OpaquePointer? = body.withUnsafeBytes { raw -> OpaquePointer? in
            guard let bio = BIO_new_mem_buf(raw.baseAddress, Int32(raw.count)) else { return nil }
            defer { BIO_free(bio) }
            if let crl = PEM_read_bio_X509_CRL(bio, nil, nil, nil) { return crl }
            guard let der = BIO_new_mem_buf(raw.baseAddress, Int32(raw.count)) else { return nil }
            defer { BIO_free(der) }
            return d2i_X509_CRL_bio(der, nil)
        }
        _ = OpenSSLErrors.drain()
        guard let crl = parsed else {
            failed(url, "not a CRL (\(body.count) bytes, neither DER nor PEM)", at: now, retryAfter: retryAfter)
            return false
        }
        let last = X509_CRL_get0_lastUpdate(crl).map { Certificate.epoch($0) }
        let next = X509_CRL_get0_nextUpdate(crl).map { Certificate.epoch($0) }
        let issuer = Certificate.nameString(X509_CRL_get_issuer(crl))
        locked {
            // A URL forgotten meanwhile (`reset`) is not brought back by a fetch that was under way.
            guard var e = entries[url] else {
                X509_CRL_free(crl)
                return
            }
            // The same CRL again (its CA has not published the next one yet): nothing was verified against less
            // than it, so connections verified before stay in use (the generation does not move).
            let unchanged = crls[url].map { X509_CRL_match($0, crl) == 0 } ?? false
            if let old = crls[url] { X509_CRL_free(old) }
            crls[url] = crl
            e.issuer = issuer
            e.lastUpdate = last
            e.nextUpdate = next
            e.lastSuccess = now
            e.lastAttempt = now
            e.lastError = nil
            e.due = Self.refreshTime(lastUpdate: last, nextUpdate: next, now: now, retryAfter: retryAfter)
            entries[url] = e
            if !unchanged { generationValue += 1 }
        }
        return true
    }

    /// Records a failed fetch of `url`; the CRL fetched before, if any, stays in use until its nextUpdate.
    public func failed(_ url: String, _ error: String, at now: Int, retryAfter: Int) {
        locked {
            guard var e = entries[url] else { return }
            e.lastError = error
            e.lastAttempt = now
            e.due = now + retryAfter
            entries[url] = e
        }
    }

    /// When to fetch again after a CRL with these dates: a fifth of its validity before nextUpdate (at most an
    /// hour before); after `retryAfter` when it names no nextUpdate or is stale. A CRL already inside that window
    /// (fetched late, or its CA publishes the next one only at nextUpdate) is asked for again after a quarter of
    /// the time left, between a second and `retryAfter`: not every second until the next one appears.
    public static func refreshTime(lastUpdate: Int?, nextUpdate: Int?, now: Int, retryAfter: Int) -> Int {
        guard let next = nextUpdate, next > now else { return now + retryAfter }
        let span = max(0, next - (lastUpdate ?? now))
        let planned = next - min(3600, span / 5)
        if planned > now { return planned }
        return now + max(1, min(retryAfter, (next - now) / 4))
    }

    /// The CRL held for `url`, with a reference for the caller (a verification looking it up: `url` is in use).
    func crl(for url: String) -> OpaquePointer? {
        locked {
            if entries[url] != nil { touch(url) }
            guard let crl = crls[url], X509_CRL_up_ref(crl) == 1 else { return nil }
            return crl
        }
    }

    /// What the cache knows about `urls`, for a "CRL unavailable" message; `followed`, the points followed for
    /// the chain (when it verifies apart from revocation), tells a point past `maxURLsPerChain` from one not
    /// fetched yet.
    func status(of urls: [String], followed: [String]? = nil) -> String {
        guard !urls.isEmpty else { return "the certificate names no http:// or https:// CRL distribution point" }
        return locked {
            urls.map { url in
                if let followed, !followed.contains(url) {
                    return "\(url): not followed (the proxy follows the first \(Self.maxURLsPerChain) distribution points of a chain)"
                }
                guard let e = entries[url] else { return "\(url): not fetched" }
                if let error = e.lastError { return "\(url): \(error)" }
                if e.lastSuccess == nil { return "\(url): being fetched" }
                return "\(url): fetched"
            }.joined(separator: "; ")
        }
    }

    /// The http:// and https:// URLs of a certificate's CRL distribution points (full names), at most two.
    static func distributionPoints(_ x509: OpaquePointer) -> [String] {
        var urls: [String] = []
        for i: Int32 in 0..<8 where urls.count < 2 {
            let length = mtls_X509_crl_dp_uri(x509, i, nil, 0)
            if length < 0 { break }
            var buffer = [CChar](repeating: 0, count: Int(length) + 1)
            guard mtls_X509_crl_dp_uri(x509, i, &buffer, Int32(buffer.count)) == length else { continue }
            let url = String(decoding: buffer.prefix(Int(length)).map { UInt8(bitPattern: $0) }, as: UTF8.self)
            let lower = url.lowercased()
            if (lower.hasPrefix("http://") || lower.hasPrefix("https://")) && !url.utf8.contains(where: { $0 < 0x21 || $0 > 0x7E }) { urls.append(url) }
        }
        return urls
    }
}
