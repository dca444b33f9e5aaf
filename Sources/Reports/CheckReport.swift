import ProxyConfig

/// What `mtls-proxy check --format json` and `certs --format json` print: plain values with stable names
/// (snake_case in the JSON, see docs/check-json.md). Built by the command line from the loaded runtime;
/// nothing here touches files or OpenSSL.
public struct CheckReport: Codable, Equatable, Sendable {
    public static let schemaName = "mtls-proxy.check/1"

    public var schema = Self.schemaName
    public var generatedAt: String
    public var config: String
    /// False when the config, a certificate or a key could not be loaded; `errors` says why.
    public var valid: Bool
    public var errors: [ConfigProblem]
    public var listen: String?
    public var unmatched: String?
    public var identities: [IdentityReport]
    /// Present when [intercept] is configured.
    public var localCA: LocalCAReport?
    public var routes: [RouteReport]
    /// Identities no route names (their expiry still counts in the verdict and the alerts).
    public var unusedIdentities: [String]
    public var warnings: [String]
    public var verdict: Verdict

    public init(generatedAt: String, config: String, valid: Bool, errors: [ConfigProblem] = [], listen: String? = nil,
                unmatched: String? = nil, identities: [IdentityReport] = [], localCA: LocalCAReport? = nil,
                routes: [RouteReport] = [], unusedIdentities: [String] = [], warnings: [String] = [], verdict: Verdict) {
        self.generatedAt = generatedAt
        self.config = config
        self.valid = valid
        self.errors = errors
        self.listen = listen
        self.unmatched = unmatched
        self.identities = identities
        self.localCA = localCA
        self.routes = routes
        self.unusedIdentities = unusedIdentities
        self.warnings = warnings
        self.verdict = verdict
    }
}

public struct ConfigProblem: Codable, Equatable, Sendable {
    public var file: String
    public var line: Int?
    public var key: String
    public var message: String

    public init(_ error: ConfigError) {
        file = error.file
        line = error.line
        key = error.key
        message = error.message
    }
}

/// The verdict and the exit code `check` ends with (the same with and without --format json).
public struct Verdict: Codable, Equatable, Sendable {
    public enum Status: String, Codable, Sendable {
        case ok
        case configError = "config_error"
        case expiringWithoutSuccessor = "expiring_without_successor"
        case noValidCertificate = "no_valid_certificate"
    }

    /// What makes `check` exit non-zero (`--fail-on`).
    public enum FailOn: String, Codable, Sendable, CaseIterable {
        /// Any finding: 1 for a config error, 2 for an expiring certificate, 3 for an identity with none valid
        /// (for cron and monitoring).
        case warning
        /// Only what `run` refuses to start with: a config, certificate or key that cannot be loaded (1). For
        /// start-up gates such as the systemd unit's ExecStartPre, since `run` serves every other route while one
        /// certificate nears its end or an identity has none valid yet.
        case error
    }

    public var status: Status
    public var exitCode: Int
    public var warnDays: Int
    public var failOn: FailOn

    public init(status: Status, warnDays: Int, failOn: FailOn = .warning) {
        self.status = status
        self.warnDays = warnDays
        self.failOn = failOn
        switch status {
        case .ok: exitCode = 0
        case .configError: exitCode = 1
        case .expiringWithoutSuccessor: exitCode = failOn == .error ? 0 : 2
        case .noValidCertificate: exitCode = failOn == .error ? 0 : 3
        }
    }

    public init(worst: IdentityStatus.Health, warnDays: Int, failOn: FailOn = .warning) {
        switch worst {
        case .ok: self.init(status: .ok, warnDays: warnDays, failOn: failOn)
        case .expiringWithoutSuccessor: self.init(status: .expiringWithoutSuccessor, warnDays: warnDays, failOn: failOn)
        case .noValidCertificate: self.init(status: .noValidCertificate, warnDays: warnDays, failOn: failOn)
        }
    }
}

public struct IdentityReport: Codable, Equatable, Sendable {
    public var name: String
    public var prefer: String
    public var health: Verdict.Status
    /// 1-based index of the certificate presented now, if any.
    public var active: Int?
    public var daysLeft: Int?
    /// The next change of the presented certificate (`certificate` absent: nothing valid from then on).
    public var next: NextChange?
    public var certificates: [CertificateReport]

    public init(name: String, prefer: String, status: IdentityStatus, certificates: [CertificateReport]) {
        self.name = name
        self.prefer = prefer
        switch status.health {
        case .ok: health = .ok
        case .expiringWithoutSuccessor: health = .expiringWithoutSuccessor
        case .noValidCertificate: health = .noValidCertificate
        }
        active = status.active.map { $0 + 1 }
        daysLeft = status.secondsLeft.map(wholeDays)
        next = status.next.map { NextChange(at: UTCTime.rfc3339($0.at), atUnix: $0.at, certificate: $0.index.map { $0 + 1 }) }
        self.certificates = certificates
    }
}

public struct NextChange: Codable, Equatable, Sendable {
    public var at: String
    public var atUnix: Int
    public var certificate: Int?
}

/// The X.509 facts of one certificate, as the command line reads them.
public struct CertificateFacts: Equatable, Sendable {
    public var subject: String
    public var issuer: String
    public var serial: String
    public var notBefore: Int
    public var notAfter: Int
    public var sha256: String

    public init(subject: String, issuer: String, serial: String, notBefore: Int, notAfter: Int, sha256: String) {
        self.subject = subject
        self.issuer = issuer
        self.serial = serial
        self.notBefore = notBefore
        self.notAfter = notAfter
        self.sha256 = sha256
    }

    public var validity: CertificateValidity { CertificateValidity(notBefore: notBefore, notAfter: notAfter) }
}

public struct CertificateReport: Codable, Equatable, Sendable {
    public enum State: String, Codable, Sendable {
        /// Presented now.
        case active
        /// Valid now but not presented (another valid one is preferred).
        case valid
        /// Not valid yet, and not the next one to be presented.
        case staged
        /// Not valid yet; presented from `takes_over_at` on.
        case next
        case expired
    }

    /// 1-based, in config order.
    public var index: Int
    public var state: State
    public var subject: String
    public var issuer: String
    public var serial: String
    public var notBefore: String
    public var notAfter: String
    public var notBeforeUnix: Int
    public var notAfterUnix: Int
    /// Whole days until notAfter; negative once expired.
    public var daysLeft: Int
    public var sha256: String
    public var file: String
    /// When this certificate starts being presented, if it is not yet and ever will be.
    public var takesOverAt: String?

    public init(index: Int, state: State, facts: CertificateFacts, file: String, takesOverAt: Int?, now: Int) {
        self.index = index
        self.state = state
        subject = facts.subject
        issuer = facts.issuer
        serial = facts.serial
        notBefore = UTCTime.rfc3339(facts.notBefore)
        notAfter = UTCTime.rfc3339(facts.notAfter)
        notBeforeUnix = facts.notBefore
        notAfterUnix = facts.notAfter
        daysLeft = wholeDays(facts.notAfter - now)
        sha256 = facts.sha256
        self.file = file
        self.takesOverAt = takesOverAt.map(UTCTime.rfc3339)
    }

    /// The state of certificate `index` of an identity at `now`.
    public static func state(of index: Int, _ certificates: [CertificateValidity], status: IdentityStatus, now: Int) -> State {
        if index == status.active { return .active }
        if index == status.next?.index { return .next }
        let c = certificates[index]
        if c.notAfter <= now { return .expired }
        if c.notBefore > now { return .staged }
        return .valid
    }
}

public struct LocalCAReport: Codable, Equatable, Sendable {
    public var certFile: String
    public var keyFile: String
    /// Why the CA could not be loaded (not made yet: `mtls-proxy ca init`); the other fields are then absent.
    public var error: String?
    public var subject: String?
    public var notBefore: String?
    public var notAfter: String?
    public var notAfterUnix: Int?
    public var daysLeft: Int?
    public var sha256: String?

    public init(certFile: String, keyFile: String, facts: CertificateFacts?, error: String?, now: Int) {
        self.certFile = certFile
        self.keyFile = keyFile
        self.error = error
        if let facts {
            subject = facts.subject
            notBefore = UTCTime.rfc3339(facts.notBefore)
            notAfter = UTCTime.rfc3339(facts.notAfter)
            notAfterUnix = facts.notAfter
            daysLeft = wholeDays(facts.notAfter - now)
            sha256 = facts.sha256
        }
    }
}

public struct RouteReport: Codable, Equatable, Sendable {
    public var index: Int
    public var name: String?
    public var label: String
    public var host: String
    public var port: Int?
    public var path: String?
    /// How `path` matches: "segment" (whole segments, the default) or "string"; nil without a path.
    public var pathPrefixMatch: String?
    /// "mtls", "tls" or "deny".
    public var action: String
    public var identity: String?
    public var connect: String?
    /// `protocol`: "http/1.1", "h2" or "auto".
    public var `protocol`: String?
    /// How the upstream is trusted (absent for `deny`): what `check` prints under the route, every setting.
    public var trust: RouteTrustReport?

    /// `crls`: the CRLs the route's `crl_files` loaded (the caller knows them; this module reads no file).
    public init(_ route: Route, crls: [CRLReport] = []) {
        index = route.index
        name = route.name
        label = route.label
        host = route.host.description
        port = route.port
        path = route.pathPrefix
        pathPrefixMatch = route.pathPrefix == nil ? nil : route.pathPrefixMatch.rawValue
        switch route.action {
        case .mtls(let id):
            action = "mtls"
            identity = id
        case .tls: action = "tls"
        case .deny: action = "deny"
        }
        connect = route.connect?.description
        `protocol` = route.action == .deny ? nil : route.httpProtocol.rawValue
        if route.action != .deny { trust = RouteTrustReport(route.trust, crls: crls) }
    }
}

/// A route's trust settings in `check --format json`: verification, pins, revocation, OCSP stapling, TLS policy.
public struct RouteTrustReport: Codable, Equatable, Sendable {
    /// "chain" (CA chain and host name) or "pin-only".
    public var verify: String
    /// The CA bundle; absent for the system trust store.
    public var caFile: String?
    /// RFC 7469 pins (base64 of the SHA-256 of the SubjectPublicKeyInfo), in config order.
    public var pins: [String]
    public var pinReportOnly: Bool
    /// "off", "soft" or "hard".
    public var revocation: String
    /// "chain" (every certificate but the trust anchor) or "leaf".
    public var revocationScope: String
    /// The CRL files checked (none when revocation is off).
    public var crlFiles: [String]
    /// Whether CRLs are fetched from distribution points (false when revocation is off).
    public var crlFetch: Bool
    /// The CRLs loaded from `crl_files` (none when revocation is off).
    public var crls: [CRLReport]
    public var requireOcspStaple: Bool
    /// "required", "requested" (checked when stapled) or "not_requested".
    public var ocspStaple: String
    public var tlsPolicy: TLSPolicyReport

    public init(_ t: TrustSettings, crls: [CRLReport] = []) {
        verify = t.verify.rawValue
        caFile = t.caFile
        pins = t.pins.map(EgressCredentials.base64Encode)
        pinReportOnly = t.pinReportOnly
        revocation = t.revocation.rawValue
        revocationScope = t.revocationScope.rawValue
        crlFiles = t.checkedCRLFiles
        crlFetch = t.fetchesCRLs
        self.crls = t.revocation == .off ? [] : crls
        requireOcspStaple = t.requireOCSPStaple
        ocspStaple = t.requireOCSPStaple ? "required" : t.wantsOCSPStaple ? "requested" : "not_requested"
        tlsPolicy = TLSPolicyReport(minVersion: t.minTLS.rawValue, maxVersion: t.maxTLS.rawValue, ciphers: t.ciphers,
                                    ciphersuites: t.cipherSuites, groups: t.groups, signatureAlgorithms: t.signatureAlgorithms)
    }
}

/// The TLS policy in effect (defaults written out): versions, TLS 1.2 ciphers and TLS 1.3 suites by OpenSSL name,
/// groups, signature algorithms (empty: OpenSSL's own list).
public struct TLSPolicyReport: Codable, Equatable, Sendable {
    public var minVersion: String
    public var maxVersion: String
    public var ciphers: [String]
    public var ciphersuites: [String]
    public var groups: [String]
    public var signatureAlgorithms: [String]
}

/// One CRL a route checks against: as `check` prints it.
public struct CRLReport: Codable, Equatable, Sendable {
    public var file: String
    public var issuer: String
    /// How many certificates it lists.
    public var revoked: Int
    public var nextUpdate: String?
    public var nextUpdateUnix: Int?
    /// Past its nextUpdate: hard mode refuses what it covers.
    public var stale: Bool

    public init(file: String, issuer: String, revoked: Int, nextUpdate: Int?, now: Int) {
        self.file = file
        self.issuer = issuer
        self.revoked = revoked
        self.nextUpdate = nextUpdate.map(UTCTime.rfc3339)
        nextUpdateUnix = nextUpdate
        stale = nextUpdate.map { $0 <= now } ?? false
    }
}

/// Floor division: -1 for anything up to a day past.
func wholeDays(_ seconds: Int) -> Int {
    seconds >= 0 ? seconds / 86_400 : -((-seconds + 86_399) / 86_400)
}

/// What `mtls-proxy certs --format json` prints: the identities (all, or the one named) and the local CA.
public struct CertsReport: Codable, Equatable, Sendable {
    public static let schemaName = "mtls-proxy.certs/1"

    public var schema = Self.schemaName
    public var generatedAt: String
    public var config: String
    public var identities: [IdentityReport]
    public var localCA: LocalCAReport?

    public init(generatedAt: String, config: String, identities: [IdentityReport], localCA: LocalCAReport?) {
        self.generatedAt = generatedAt
        self.config = config
        self.identities = identities
        self.localCA = localCA
    }
}

/// The warning `check` gives for an identity that no route names.
public func unusedIdentityWarning(_ name: String) -> String {
    "identity \(name) is used by no route: it is never presented, yet its certificates are loaded and checked, and "
        + "their expiry counts in check's exit code and in the expiry alerts; remove it, or add a route with identity = \"\(name)\""
}
