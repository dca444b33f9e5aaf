import HTTP1

/// The whole configuration, validated, immutable once built. Paths are absolute (resolved against the
/// config file's folder).
public struct ProxyConfiguration: Sendable {
    public var file: String
    public var proxy: ProxySettings
    public var upstream: UpstreamSettings
    /// Identities in name order.
    public var identities: [Identity]
    /// Routes in file order; the first that matches decides.
    public var routes: [Route]
    /// Fixed-upstream (sidecar) listeners.
    public var listeners: [FixedListener]
    public var admin: AdminSettings?
    public var log: LogSettings
    /// Interception of CONNECT tunnels to mTLS routes; nil (the default) means off.
    public var intercept: InterceptSettings?
    /// `[tls] providers`: OpenSSL 3 providers loaded before any key (e.g. `["default", "tpm2"]`); empty means
    /// OpenSSL's defaults.
    public var tlsProviders: [String] = []

    public init(file: String, proxy: ProxySettings, upstream: UpstreamSettings, identities: [Identity], routes: [Route],
                listeners: [FixedListener] = [], admin: AdminSettings? = nil, log: LogSettings = LogSettings()) {
        self.file = file
        self.proxy = proxy
        self.upstream = upstream
        self.identities = identities
        self.routes = routes
        self.listeners = listeners
        self.admin = admin
        self.log = log
        self.intercept = nil
    }

    public func identity(named name: String) -> Identity? {
        identities.first { $0.name == name }
    }

    /// Identities that some route names (`identity = ...`).
    public var routedIdentities: Set<String> {
        Set(routes.compactMap { route in
            if case .mtls(let identity) = route.action { return identity }
            return nil
        })
    }

    /// Identities no route names, in name order: loaded, checked and alerted on, yet never presented.
    public var unusedIdentities: [String] {
        let routed = routedIdentities
        return identities.map(\.name).filter { !routed.contains($0) }
    }

    public var router: Router { Router(routes: routes, unmatched: proxy.unmatched, upstream: upstream) }
}

public enum UnmatchedPolicy: String, Sendable {
    case deny
    case tls
}

public struct ProxySettings: Sendable {
    public var listen: HostPort = HostPort(host: "127.0.0.1", port: 3128)
    /// Event-loop threads; 0 means one per core.
    public var workers: Int = 0
    public var unmatched: UnmatchedPolicy = .deny
    /// Client address ranges allowed to connect. Empty means loopback only.
    public var allowClients: [CIDR] = []
    public var maxHeaderBytes: Int = 64 * 1024
    /// Users allowed to use the forward listener (Proxy-Authorization: Basic); nil means no authentication.
    public var authFile: String?
    /// How long a client connection may be idle between requests, or stall while sending a body.
    public var clientTimeout: TimeSpan = .seconds(60)
    /// Time allowed from the first byte of a request head to its end (slow-header clients get 408).
    public var headerTimeout: TimeSpan = .seconds(10)
    /// Open client connections across all workers and listeners; past it, new ones get 503 and are closed.
    public var maxConnections: Int = 10_000
    /// How long in-flight requests may take to finish after SIGTERM before the proxy exits anyway.
    public var drainTimeout: TimeSpan = .seconds(30)
    /// Warn (log, metric) this many days before the active certificate of an identity expires with no successor.
    public var warnDays: Int = 30
    /// `rewrite_https_location`: on the forward listener, a `Location`/`Content-Location` of `https://HOST/...` where
    /// HOST has an `mtls` route is turned into `http://HOST/...`, so a client following it comes back through the
    /// proxy and its certificate (default off).
    public var rewriteHTTPSLocation: Bool = false

    public init() {}
}

public enum TLSVersionSetting: String, Sendable, Hashable {
    case tls12 = "1.2"
    case tls13 = "1.3"
}

/// What decides whether an upstream server is trusted, and how the TLS connection to it is made. Part of the
/// pool key (through the TLS context built from it): connections, sessions and contexts are never shared
/// between two different settings.
///
/// A route match carries a copy on every request: the TLS policy, pins and revocation settings (`Checks`) sit in
/// one shared immutable box (copied on write), so a copy costs one reference, not one per list. They read and
/// write as its own fields (`trust.maxTLS`, `trust.pins = ...`) through one key-path member lookup.
@dynamicMemberLookup
public struct TrustSettings: Sendable, Hashable {
    /// PEM bundle; nil means the system trust store.
    public var caFile: String?
    /// `tls_min_version` (also spelled `min_tls`).
    public var minTLS: TLSVersionSetting
    @usableFromInline var box = Box.defaults

    /// The settings beyond the CA bundle and minimum version.
    public struct Checks: Sendable, Hashable {
        /// `tls_max_version`.
        public var maxTLS: TLSVersionSetting = .tls13
        /// `tls_ciphers`: the TLS 1.2 cipher list, by OpenSSL name.
        public var ciphers: [String] = TLSPolicyDefaults.ciphers
        /// `tls_ciphersuites`: the TLS 1.3 cipher suites.
        public var cipherSuites: [String] = TLSPolicyDefaults.cipherSuites
        /// `tls_groups`: key exchange groups (curves), in order of preference.
        public var groups: [String] = TLSPolicyDefaults.groups
        /// `tls_signature_algorithms`; empty means OpenSSL's own list.
        public var signatureAlgorithms: [String] = []
        /// `verify`: the chain and name (the default), or only the pinned key (self-signed services).
        public var verify: ServerVerification = .chain
        /// `pin_spki_sha256`: SHA-256 digests of DER SubjectPublicKeyInfo, as 32 raw bytes each. Empty: no pinning.
        public var pins: [[UInt8]] = []
        /// `pin_report_only`: a mismatch is logged and counted, not refused.
        public var pinReportOnly: Bool = false
        /// `revocation`; `.off` unless CRLs are given.
        public var revocation: RevocationMode = .off
        /// `crl_files`: PEM or DER CRLs (absolute paths).
        public var crlFiles: [String] = []
        /// `require_ocsp_staple`: the server must staple a valid OCSP response for its certificate.
        public var requireOCSPStaple: Bool = false
        /// `crl_fetch`: CRLs are also fetched over HTTP(S) from the CRL distribution points of the certificates
        /// checked.
        public var crlFetch: Bool = false
        /// `revocation_scope`: which certificates of the server's chain are checked against CRLs.
        public var revocationScope: RevocationScope = .chain

        public init() {}
    }

    @usableFromInline final class Box: Sendable {
        @usableFromInline let checks: Checks
        @usableFromInline init(_ checks: Checks) { self.checks = checks }
        static let defaults = Box(Checks())
    }

    /// Each field of `Checks` as a field of the settings: read in place, written into a new box (copy on write).
    @inlinable public subscript<Value>(dynamicMember field: WritableKeyPath<Checks, Value>) -> Value {
        get { box.checks[keyPath: field] }
        set {
            var checks = box.checks
            checks[keyPath: field] = newValue
            box = Box(checks)
        }
    }

    /// Whether the CRLs of the certificates' distribution points are fetched and checked: `crl_fetch` with
    /// revocation on (off, nothing is checked whatever `crl_fetch` and `crl_files` say).
    public var fetchesCRLs: Bool { self.crlFetch && self.revocation != .off }
    /// The CRL files checked: `crl_files` with revocation on, else none.
    public var checkedCRLFiles: [String] { self.revocation != .off ? self.crlFiles : [] }
    /// Whether the proxy asks for a stapled OCSP response (and checks one when it comes).
    public var wantsOCSPStaple: Bool { self.verify == .chain && (self.requireOCSPStaple || self.revocation != .off) }
    /// Whether the proxy checks the server beyond a CA chain (pins, pin-only, revocation, a required staple):
    /// checks a blind tunnel, where the client's own TLS runs end to end, would skip.
    public var checksBeyondChain: Bool {
        !self.pins.isEmpty || self.verify == .pinOnly || self.revocation != .off || self.requireOCSPStaple
    }

    public init(caFile: String?, minTLS: TLSVersionSetting) {
        self.caFile = caFile
        self.minTLS = minTLS
    }

    public static func == (a: TrustSettings, b: TrustSettings) -> Bool {
        a.caFile == b.caFile && a.minTLS == b.minTLS && (a.box === b.box || a.box.checks == b.box.checks)
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(caFile)
        hasher.combine(minTLS)
        hasher.combine(box.checks)
    }
}

/// How the upstream's certificate is checked.
public enum ServerVerification: String, Sendable, Hashable {
    /// Chain to a trusted CA and the URL's host name (then pins, if any).
    case chain
    /// Only the leaf's public key against `pin_spki_sha256`: no chain, no name, no dates.
    case pinOnly = "pin-only"
}

/// Which certificates of the server's chain revocation covers.
public enum RevocationScope: String, Sendable, Hashable {
    /// Every certificate but the trust anchor, each against its issuer's CRL (the default).
    case chain
    /// The server's own certificate only (a CA whose intermediates' CRL is not published).
    case leaf
}

/// What to do when a needed CRL is missing or stale. A revoked certificate is refused in every mode but `off`.
public enum RevocationMode: String, Sendable, Hashable {
    case off
    /// Missing or stale CRL: logged, counted, allowed.
    case soft
    /// Missing or stale CRL: refused ("CRL unavailable").
    case hard
}

/// The TLS policy when a route and `[upstream]` say nothing (see docs/upstream-trust.md): close to Mozilla's
/// "intermediate" guidance, for a client. TLS 1.2 ciphers are AEAD with forward secrecy only.
public enum TLSPolicyDefaults {
    public static let ciphers = [
        "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
        "DHE-RSA-AES128-GCM-SHA256", "DHE-RSA-AES256-GCM-SHA384", "DHE-RSA-CHACHA20-POLY1305",
    ]
    public static let cipherSuites = ["TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"]
    public static let groups = ["X25519", "P-256", "P-384"]
}

public struct Timeouts: Sendable, Hashable {
    public var connect: TimeSpan
    /// Until the first byte of the response (and between reads after that).
    public var response: TimeSpan
    /// How long a pooled connection may sit idle.
    public var idle: TimeSpan
    /// `h2_ping_interval`: an HTTP/2 connection with no stream that has heard nothing from the server for this
    /// long is sent a PING (nil: `"off"`, never).
    public var h2PingInterval: TimeSpan?
    /// `h2_ping_timeout`: how long the server has to answer that PING before the connection is retired.
    public var h2PingTimeout: TimeSpan

    public static let defaultH2PingInterval = TimeSpan.seconds(30)
    public static let defaultH2PingTimeout = TimeSpan.seconds(5)

    public init(connect: TimeSpan, response: TimeSpan, idle: TimeSpan, h2PingInterval: TimeSpan? = Timeouts.defaultH2PingInterval,
                h2PingTimeout: TimeSpan = Timeouts.defaultH2PingTimeout) {
        self.connect = connect
        self.response = response
        self.idle = idle
        self.h2PingInterval = h2PingInterval
        self.h2PingTimeout = h2PingTimeout
    }
}

public struct UpstreamSettings: Sendable {
    public var trust = TrustSettings(caFile: nil, minTLS: .tls12)
    public var timeouts = Timeouts(connect: .seconds(5), response: .seconds(60), idle: .seconds(90))
    public var maxIdlePerHost = 64
    /// Whether upstream names may resolve to loopback, private, link-local and other non-public addresses.
    public var allowPrivate = false
    /// DNS servers to ask instead of those in /etc/resolv.conf; empty means the system's.
    public var nameservers: [HostPort] = []
    /// Which path spellings routes accept by default (`merge_slashes`, `escaped_slashes`); strict unless set.
    public var pathRules = PathRules()
    /// `proxy`: how connections leave the host unless a route says otherwise (direct by default).
    public var egress: Egress = .direct
    /// `protocol`: the HTTP version spoken to upstream servers unless a route says otherwise (HTTP/1.1 by default).
    public var httpProtocol: UpstreamProtocol = .http11
    /// `h2_connections`: HTTP/2 connections per connection key before exchanges wait for a free stream.
    public var h2Connections = 4

    public init() {}
}

/// `protocol = "http/1.1" | "h2" | "auto"`: which HTTP version the proxy speaks to the upstream, offered in
/// ALPN. `auto` offers both and uses what the server selects (HTTP/1.1 when it selects nothing).
public enum UpstreamProtocol: String, Sendable, Hashable, CaseIterable {
    case http11 = "http/1.1"
    case h2 = "h2"
    case auto = "auto"

    /// The ALPN protocol names offered, most preferred first.
    public var alpn: [String] {
        switch self {
        case .http11: return ["http/1.1"]
        case .h2: return ["h2"]
        case .auto: return ["h2", "http/1.1"]
        }
    }

    /// How `explain` and `check` name it.
    public var phrase: String {
        switch self {
        case .http11: return "HTTP/1.1"
        case .h2: return "HTTP/2 (h2 in ALPN; the server must select it)"
        case .auto: return "HTTP/2 or HTTP/1.1, as the server selects in ALPN (h2, http/1.1 offered)"
        }
    }
}

/// Request-path spellings a route accepts beyond the strict canonical form (see the request path normaliser).
/// Both are off by default: `//` and `%2F`/`%5C` are refused with 400.
public struct PathRules: Sendable, Hashable {
    public enum EscapedSlashes: String, Sendable, Hashable {
        /// `%2F` and `%5C` are refused (the default).
        case refuse
        /// `%2F` and `%5C` are forwarded as they are and matched literally, as data inside a segment.
        case keep
    }

    /// Empty segments are merged (`//a///b` is routed and forwarded as `/a/b`) instead of refused.
    public var mergeSlashes: Bool
    public var escapedSlashes: EscapedSlashes

    public init(mergeSlashes: Bool = false, escapedSlashes: EscapedSlashes = .refuse) {
        self.mergeSlashes = mergeSlashes
        self.escapedSlashes = escapedSlashes
    }

    /// The config keys that set these rules, for messages: `merge_slashes = true`, `escaped_slashes = "keep"`.
    public var configText: String {
        var parts: [String] = []
        if mergeSlashes { parts.append("merge_slashes = true") }
        if escapedSlashes == .keep { parts.append("escaped_slashes = \"keep\"") }
        return parts.isEmpty ? "strict" : parts.joined(separator: ", ")
    }
}

/// Where a password comes from: never the config file itself.
public enum SecretSource: Sendable, Hashable, CustomStringConvertible {
    /// The first line of a file.
    case file(String)
    /// An environment variable.
    case environment(String)

    public var description: String {
        switch self {
        case .file(let path): return "file \(path)"
        case .environment(let name): return "environment variable \(name)"
        }
    }
}

/// One certificate and its key: PEM files, or a PKCS#12 bundle.
public struct CertificateSource: Sendable, Hashable {
    public enum Files: Sendable, Hashable {
        case pem(cert: String, key: String, keyPassword: SecretSource?)
        case pkcs12(path: String, password: SecretSource?)
    }

    public var files: Files
    /// Where it was configured, e.g. `identities.us` or `identities.us.certificates[2]`, for error messages.
    public var configKey: String

    public init(files: Files, configKey: String) {
        self.files = files
        self.configKey = configKey
    }

    public init(cert: String, key: String, configKey: String) {
        self.init(files: .pem(cert: cert, key: key, keyPassword: nil), configKey: configKey)
    }

    /// The file that holds the certificate (the PEM file or the bundle).
    public var cert: String {
        switch files {
        case .pem(let cert, _, _): return cert
        case .pkcs12(let path, _): return path
        }
    }

    /// The OSSL_STORE URI of `key = "store:URI"` (a key held by a provider, e.g. a TPM's); nil otherwise.
    public var storeKey: String? {
        guard case .pem(_, let key, _) = files, key.hasPrefix("store:") else { return nil }
        return String(key.dropFirst(6))
    }

    /// The certificate's `pkcs11:` URI when it is read from a PKCS#11 token; nil for a certificate file.
    public var tokenCert: TokenKeyURI? {
        guard case .pem(let cert, _, _) = files, TokenKeyURI.isTokenURI(cert) else { return nil }
        return try? TokenKeyURI.parse(cert).get()
    }

    /// The key's `pkcs11:` URI when it lives on a PKCS#11 token; nil for a key file.
    public var tokenKey: TokenKeyURI? {
        guard case .pem(_, let key, _) = files, TokenKeyURI.isTokenURI(key) else { return nil }
        return try? TokenKeyURI.parse(key).get()
    }

    /// The file that holds the private key (or, for a token key, its `pkcs11:` URI).
    public var key: String {
        switch files {
        case .pem(_, let key, _): return key
        case .pkcs12(let path, _): return path
        }
    }
}

/// A client identity the proxy can present: one or more certificates (staged for rotation), one active at a time.
public struct Identity: Sendable, Hashable {
    public var name: String
    public var certificates: [CertificateSource]
    public var prefer: CertificatePreference

    public init(name: String, certificates: [CertificateSource], prefer: CertificatePreference = .newest) {
        self.name = name
        self.certificates = certificates
        self.prefer = prefer
    }
}

public enum RouteAction: Sendable, Hashable, CustomStringConvertible {
    /// TLS presenting this identity's certificate.
    case mtls(identity: String)
    /// TLS without a client certificate.
    case tls
    case deny

    public var description: String {
        switch self {
        case .mtls(let identity): return "mtls (identity \(identity))"
        case .tls: return "tls (no client certificate)"
        case .deny: return "deny"
        }
    }
}

public enum HostPattern: Sendable, Hashable, CustomStringConvertible {
    case exact(String)
    /// `*.example.com`: any name ending in `.example.com`, not `example.com` itself.
    case subdomains(of: String)
    case any

    public static func parse(_ text: String) -> HostPattern? {
        var lower = text.asciiLowercasedForConfig
        // "api.example.com." names the same host as "api.example.com"; requests are matched without the dot.
        let utf8 = lower.utf8
        if utf8.count > 1, utf8.last == UInt8(ascii: "."), utf8.first != UInt8(ascii: "[") { lower.removeLast() }
        if lower == "*" { return .any }
        if lower.utf8.starts(with: "*.".utf8) {
            let base = String(Substring(lower.utf8.dropFirst(2)))
            guard isValidHostName(base) else { return nil }
            return .subdomains(of: base)
        }
        if lower.utf8.first == UInt8(ascii: "[") && lower.utf8.last == UInt8(ascii: "]") {
            // Requests spell an IPv6 literal one way (RFC 5952); so does the route.
            guard let inner = IPv6Literal.canonical(lower.utf8.dropFirst().dropLast()) else { return nil }
            return .exact(inner)
        }
        if lower.utf8.contains(UInt8(ascii: ":")) {
            guard let canonical = IPv6Literal.canonical(lower.utf8) else { return nil }
            return .exact(canonical)
        }
        guard isValidHostName(lower) || IPAddress(lower) != nil else { return nil }
        return .exact(lower)
    }

    /// - Parameter host: the request's host in canonical form: lower case, no trailing dot.
    public func matches(_ host: String) -> Bool {
        switch self {
        case .any: return true
        case .exact(let name): return host == name
        case .subdomains(let base):
            // Hosts and patterns are ASCII (both are checked when read): compare bytes, without making "." + base.
            // Anything else keeps the character-wise reading.
            var hostText = host, baseText = base
            let byBytes: Bool? = hostText.withUTF8 { h in
                baseText.withUTF8 { b -> Bool? in
                    for c in h where c >= 0x80 { return nil }
                    for c in b where c >= 0x80 { return nil }
                    guard h.count > b.count + 1 else { return false }
                    let dot = h.count - b.count - 1
                    guard h[dot] == UInt8(ascii: ".") else { return false }
                    for k in 0..<b.count where h[dot + 1 + k] != b[k] { return false }
                    return true
                }
            }
            return byBytes ?? (host.count > base.count + 1 && host.hasSuffix("." + base))
        }
    }

    public var description: String {
        switch self {
        case .any: return "*"
        case .exact(let name): return name
        case .subdomains(let base): return "*." + base
        }
    }

    /// Labels of 1 to 63 lower-case letters, digits, '-' and '_', 253 bytes at most.
    static func isValidHostName(_ s: String) -> Bool {
        let utf8 = s.utf8
        guard !utf8.isEmpty, utf8.count <= 253 else { return false }
        var label = 0
        for c in utf8 {
            if c == UInt8(ascii: ".") {
                guard label > 0 else { return false }
                label = 0
                continue
            }
            guard (c >= 0x61 && c <= 0x7A) || (c >= 0x30 && c <= 0x39) || c == 0x2D || c == 0x5F else { return false }
            label += 1
            guard label <= 63 else { return false }
        }
        return label > 0
    }
}

/// How a route's `path` prefix is compared with the request's canonical path (`path_prefix_match`).
public enum PathPrefixMatch: String, Sendable, Hashable {
    /// Whole segments (the default): `/payments/eu` matches `/payments/eu` and `/payments/eu/...`, not
    /// `/payments/europe`. A prefix ending in `/` matches what lies below it.
    case segment
    /// A plain string prefix: `/payments/eu` also matches `/payments/europe`.
    case string

    /// Whether `path` (a canonical request path) starts with `prefix` under this rule, compared byte by byte.
    /// Both start with `/` (the loader and the path normaliser see to it); anything else never matches.
    public func matches(prefix: String, path: Substring) -> Bool {
        var prefix = prefix, path = path
        return prefix.withUTF8 { pre in
            path.withUTF8 { p in
                guard pre.first == UInt8(ascii: "/"), p.count >= pre.count else { return false }
                for i in 0..<pre.count where p[i] != pre[i] { return false }
                if self == .string || p.count == pre.count || pre.last == UInt8(ascii: "/") { return true }
                return p[pre.count] == UInt8(ascii: "/")
            }
        }
    }

    /// How `explain` names the rule.
    public var phrase: String { self == .segment ? "whole segments" : "string prefix" }
}

public struct Route: Sendable, Hashable {
    /// 1-based position in the file.
    public var index: Int { didSet { label = Route.label(index: index, name: name, host: host) } }
    public var name: String? { didSet { label = Route.label(index: index, name: name, host: host) } }
    public var host: HostPattern { didSet { label = Route.label(index: index, name: name, host: host) } }
    public var port: Int?
    public var pathPrefix: String?
    /// How `pathPrefix` is compared: whole segments unless the route says `path_prefix_match = "string"`.
    public var pathPrefixMatch: PathPrefixMatch
    public var action: RouteAction
    /// Dial this address instead of resolving the host; SNI, certificate check and Host stay the URL's host.
    public var connect: HostPort?
    public var trust: TrustSettings
    public var timeouts: Timeouts
    /// Let this route's host resolve to a non-public address (the SSRF guard is off for it).
    public var allowPrivate: Bool
    /// Path spellings this route accepts beyond the strict canonical form; inherited from `[upstream]`.
    public var pathRules: PathRules
    /// Direct, or through a corporate proxy; inherited from `[upstream] proxy`.
    public var egress: Egress
    /// The HTTP version spoken to the upstream; inherited from `[upstream] protocol`.
    public var httpProtocol: UpstreamProtocol
    /// HTTP/2 connections per connection key; inherited from `[upstream] h2_connections`.
    public var h2Connections: Int

    public init(index: Int, name: String? = nil, host: HostPattern, port: Int? = nil, pathPrefix: String? = nil,
                pathPrefixMatch: PathPrefixMatch = .segment, action: RouteAction, connect: HostPort? = nil, trust: TrustSettings, timeouts: Timeouts, allowPrivate: Bool = false,
                pathRules: PathRules = PathRules(), egress: Egress = .direct, httpProtocol: UpstreamProtocol = .http11,
                h2Connections: Int = 4) {
        self.egress = egress
        self.httpProtocol = httpProtocol
        self.h2Connections = h2Connections
        self.allowPrivate = allowPrivate
        self.pathRules = pathRules
        self.index = index
        self.name = name
        self.host = host
        self.port = port
        self.pathPrefix = pathPrefix
        self.pathPrefixMatch = pathPrefixMatch
        self.action = action
        self.connect = connect
        self.trust = trust
        self.timeouts = timeouts
        self.label = Route.label(index: index, name: name, host: host)
    }

    /// How logs and error messages name the route: its `name`, else its position and host. Made once, when the
    /// route is (logs and metrics read it on every request).
    public private(set) var label: String

    /// A name that can be quoted in a message as it is: no quote, backslash, control or format character, at most 64
    /// characters (a message naming the route by a longer or stranger one names it route[N] only).
    static func isPrintableName(_ name: String) -> Bool {
        !name.isEmpty && name.count <= 64 && name.unicodeScalars.allSatisfy {
            $0.value >= 0x20 && !(0x7F...0x9F).contains($0.value) && $0 != "\"" && $0 != "\\"
                && $0.properties.generalCategory != .format  // no bidirectional overrides or invisible characters
        }
    }

    static func label(index: Int, name: String?, host: HostPattern) -> String {
        if let name { return name }
        return "route[\(index)] \(host)"
    }
}

extension String {
    var asciiLowercasedForConfig: String {
        let utf8 = self.utf8
        guard utf8.contains(where: { $0 >= 0x41 && $0 <= 0x5A }) else { return self }
        return String(unsafeUninitializedCapacity: utf8.count) { buffer in
            var k = 0
            for c in utf8 {
                buffer[k] = (c >= 0x41 && c <= 0x5A) ? c | 0x20 : c
                k += 1
            }
            return k
        }
    }
}

/// A listener that sends every request it receives (origin form, `GET /path`) to one upstream, for tools that
/// take a base URL but cannot use a proxy. The route table still decides identity, tls or deny.
public struct FixedListener: Sendable, Hashable {
    public var listen: HostPort
    /// The upstream's host name (lower case) and port.
    public var host: String
    public var port: Int
    public var allowClients: [CIDR]
    /// `listener[N]`, for messages.
    public var configKey: String
    /// `rewrite_location`: `Location` and `Content-Location` naming the upstream are rewritten to the listener's
    /// own address, so that clients following redirects stay on the listener (default on).
    public var rewriteLocation: Bool

    public init(listen: HostPort, host: String, port: Int, allowClients: [CIDR] = [], configKey: String,
                rewriteLocation: Bool = true) {
        self.listen = listen
        self.host = host
        self.port = port
        self.allowClients = allowClients
        self.configKey = configKey
        self.rewriteLocation = rewriteLocation
    }

    public var upstreamURL: String { port == 443 ? "https://\(host)" : "https://\(host):\(port)" }
}

/// The admin endpoint: / (the status page), /healthz, /readyz, /metrics.
public struct AdminSettings: Sendable, Hashable {
    public var listen: HostPort
    public var allowClients: [CIDR]
    /// `/readyz` answers 503 while an identity that a route names has no valid certificate.
    public var readyRequiresValidIdentities = false

    public init(listen: HostPort, allowClients: [CIDR] = []) {
        self.listen = listen
        self.allowClients = allowClients
    }
}

public struct LogSettings: Sendable, Hashable {
    public enum Access: Sendable, Hashable {
        case stdout
        case off
        case file(String)
    }

    public enum Format: String, Sendable, Hashable {
        case json
        case text
    }

    public enum Level: String, Sendable, Hashable, CaseIterable {
        case trace, debug, info, notice, warning, error, critical
    }

    public var access: Access = .stdout
    public var format: Format = .json
    public var level: Level = .info
    /// The proxy's own (operational) log lines on stderr: text, or one JSON object a line for log shippers.
    public var operationalFormat: Format = .text

    public init() {}
}

/// The local CA that intercepted tunnels are terminated with.
public struct InterceptSettings: Sendable, Hashable {
    public var caCert: String
    public var caKey: String
    /// Validity of the leaf certificates minted per host.
    public var leafValidity: TimeSpan

    public init(caCert: String, caKey: String, leafValidity: TimeSpan = .seconds(86_400)) {
        self.caCert = caCert
        self.caKey = caKey
        self.leafValidity = leafValidity
    }
}
