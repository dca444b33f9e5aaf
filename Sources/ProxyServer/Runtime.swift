import CEventTLS
import HTTP1
import ProxyConfig
import TLS

/// Everything the data path needs, built from a validated configuration before any socket opens, then
/// shared read-only by every worker: the router, and one TLS context per (certificate, trust settings).
public final class ProxyRuntime: @unchecked Sendable {
    public let config: ProxyConfiguration
    public let router: Router
    public let limits: HeadLimits
    /// Counts reloads: connections made under an earlier runtime are never pooled under this one.
    public let generation: Int
    /// When this runtime was built (its files read), as a Unix time.
    public let loadedAt: Int = currentEpochSeconds()
    /// Users of the forward listener, when `[proxy] auth_file` is set.
    public let proxyUsers: ProxyCredentials?
    /// `Proxy-Authorization` values for corporate proxies, by credentials file.
    let egressAuthorizations: [String: String]
    /// The local CA for intercepting CONNECT tunnels to mTLS routes, when `[intercept]` is set.
    public let localCA: LocalCA?
    /// Loaded certificates of each identity, in config order.
    public let credentials: [String: [Credential]]
    private let contexts: [ContextKey: ClientTLSContext]
    /// The contexts of each route, by position in `config.routes`, resolved at load so a request needs no hashing:
    /// the plain one for its trust settings and, for an mTLS route, one per certificate of its identity. Routes
    /// with the same trust settings and identity share one entry of `routeContexts` (a table of 100,000 routes
    /// keeps a handful).
    private let routeContexts: [RouteContexts]
    private let routeContextIndex: [Int32]
    /// The plain context of `[upstream]` trust settings, for requests no route matched.
    private let upstreamContext: ClientTLSContext?

    struct RouteContexts {
        var trust: TrustSettings
        var identity: String?
        var credentials: [Credential]
        var prefer: CertificatePreference
        var plain: ClientTLSContext?
        /// By certificate index; nil where the context could not be built.
        var byCertificate: [ClientTLSContext?]
    }

    struct ContextGroup: Hashable {
        var trust: TrustSettings
        var identity: String?
    }

    struct ContextKey: Hashable {
        var identity: String?
        /// Index into the identity's certificates.
        var certificate: Int
        var trust: TrustSettings
    }

    public init(config: ProxyConfiguration, generation: Int = 0) throws {
        self.config = config
        self.generation = generation
        self.router = config.router
        self.limits = HeadLimits(maxHeadBytes: config.proxy.maxHeaderBytes)
        // Every file the config names is read before anything is reported, so `check` and a failed reload name
        // every missing or broken file at once, each with its key and line (as the loader does for values).
        let problems = ConfigProblems(file: config.file)
        if !config.tlsProviders.isEmpty {
            // Before any key: a store: key may need them.
            do {
                try ProviderKeys.load(providers: config.tlsProviders)
            } catch let error as ProviderLoadError {
                throw ConfigError(file: config.file, key: "tls.providers", message: error.description)
            }
        }
        var credentials: [String: [Credential]] = [:]
        for identity in config.identities {
            var loaded: [Credential] = []
            for source in identity.certificates {
                problems.collect {
                    do {
                        loaded.append(try Credential.load(source))
                    } catch let error as TLSSetupError {
                        throw ConfigError(file: config.file, key: Self.keyPath(for: error, source: source), message: error.description)
                    }
                }
            }
            if loaded.count == identity.certificates.count { credentials[identity.name] = loaded }
        }
        self.credentials = credentials
        var users: ProxyCredentials?
        if let authFile = config.proxy.authFile {
            problems.collect {
                guard let text = ConfigLoader.readTextFile(authFile) else {
                    throw ConfigError(file: config.file, key: "proxy.auth_file", message: "cannot read \(authFile): \(String(cString: strerror(mtls_errno())))")
                }
                do {
                    users = try ProxyCredentials.parse(text, file: authFile)
                } catch let error as ConfigError {
                    throw ConfigError(file: config.file, key: "proxy.auth_file", message: "\(authFile): \(error.key): \(error.message)")
                }
            }
        }
        proxyUsers = users
        // The corporate proxies' credentials, one `user:password` line per file; never logged or quoted.
        var authorizations: [String: String] = [:]
        for (egress, key) in Self.egressSettings(of: config) {
            guard let file = egress.corporateProxy?.credentialsFile, authorizations[file] == nil else { continue }
            problems.collect {
                guard let text = ConfigLoader.readTextFile(file) else {
                    throw ConfigError(file: config.file, key: key, message: "cannot read \(file): \(String(cString: strerror(mtls_errno())))")
                }
                switch EgressCredentials.authorization(fileText: text) {
                case .success(let value): authorizations[file] = value
                case .failure(let problem): throw ConfigError(file: config.file, key: key, message: "\(file): \(problem.description)")
                }
            }
        }
        egressAuthorizations = authorizations
        var ca: LocalCA?
        if let intercept = config.intercept {
            problems.collect {
                do {
                    ca = try LocalCA.load(certPath: intercept.caCert, keyPath: intercept.caKey)
                } catch let error as TLSSetupError {
                    let key: String
                    if case .invalidKey = error { key = "intercept.ca_key" } else { key = "intercept.ca_cert" }
                    throw ConfigError(file: config.file, key: key, message: "\(error.description) (create the local CA with `mtls-proxy ca init`)")
                }
            }
        }
        localCA = ca

        // Every trust setting in use, with every certificate of every identity that may be presented under it.
        var contexts: [ContextKey: ClientTLSContext] = [:]
        var failedTrusts: Set<TrustSettings> = []  // a broken ca_file is reported once, where it is set
        var trusts: [(TrustSettings, String)] = [(config.upstream.trust, "upstream")]
        for route in config.routes { trusts.append((route.trust, "route[\(route.index)]")) }
        for (trust, where_) in trusts {
            let plainKey = ContextKey(identity: nil, certificate: 0, trust: trust)
            if contexts[plainKey] == nil, !failedTrusts.contains(trust) {
                let built = problems.collect {
                    do {
                        contexts[plainKey] = try ClientTLSContext(trust: trust, credential: nil, identityName: nil)
                    } catch let error as TLSSetupError {
                        if case .policy(let key, _) = error {
                            throw ConfigError(file: config.file, key: "\(where_).\(key)", message: error.description)
                        }
                        throw ConfigError(file: config.file, key: "\(where_).ca_file", message: error.description)
                    }
                }
                if !built { failedTrusts.insert(trust) }
            }
        }
        for route in config.routes {
            guard case .mtls(let identity) = route.action else { continue }
            for (i, credential) in (credentials[identity] ?? []).enumerated() {
                let key = ContextKey(identity: identity, certificate: i, trust: route.trust)
                if contexts[key] != nil || failedTrusts.contains(route.trust) { continue }
                problems.collect {
                    do {
                        contexts[key] = try ClientTLSContext(trust: route.trust, credential: credential, identityName: identity)
                    } catch let error as TLSSetupError {
                        throw ConfigError(file: config.file, key: credential.source.configKey, message: error.description)
                    }
                }
            }
        }
        try problems.throwIfAny(text: ConfigLoader.readTextFile(config.file) ?? "")
        self.contexts = contexts
        upstreamContext = contexts[ContextKey(identity: nil, certificate: 0, trust: config.upstream.trust)]
        var shared: [RouteContexts] = []
        var groups: [ContextGroup: Int32] = [:]
        routeContextIndex = config.routes.map { route in
            var identity: String?
            if case .mtls(let name) = route.action { identity = name }
            let group = ContextGroup(trust: route.trust, identity: identity)
            if let known = groups[group] { return known }
            let list = identity.flatMap { credentials[$0] } ?? []
            shared.append(RouteContexts(trust: route.trust, identity: identity, credentials: list,
                                        prefer: identity.flatMap { config.identity(named: $0)?.prefer } ?? .newest,
                                        plain: contexts[ContextKey(identity: nil, certificate: 0, trust: route.trust)],
                                        byCertificate: list.indices.map { contexts[ContextKey(identity: identity, certificate: $0, trust: route.trust)] }))
            groups[group] = Int32(shared.count - 1)
            return Int32(shared.count - 1)
        }
        routeContexts = shared
    }

    /// Every egress setting with the key of its credentials file, for messages.
    static func egressSettings(of config: ProxyConfiguration) -> [(Egress, String)] {
        [(config.upstream.egress, "upstream.proxy_credentials_file")]
            + config.routes.map { ($0.egress, "route[\($0.index)].proxy_credentials_file") }
    }

    /// The `Proxy-Authorization` value for a corporate proxy, nil when it has no credentials file.
    func authorization(for proxy: EgressProxy) -> String? {
        proxy.credentialsFile.flatMap { egressAuthorizations[$0] }
    }

    /// Every CRL loaded, once per (file, issuer), from every context that checks revocation.
    public var crls: [CRLSummary] {
        var seen = Set<String>()
        return contexts.values.flatMap(\.crls).filter { seen.insert("\($0.file)\u{0}\($0.issuer)\u{0}\($0.lastUpdate)").inserted }
            .sorted { ($0.file, $0.issuer) < ($1.file, $1.issuer) }
    }

    /// The CRLs that `trust` checks against (files in its `crl_files`).
    public func crls(for trust: TrustSettings) -> [CRLSummary] {
        guard trust.revocation != .off else { return [] }
        let files = Set(trust.crlFiles)
        return crls.filter { files.contains($0.file) }
    }

    static func keyPath(for error: TLSSetupError, source: CertificateSource) -> String {
        // A PKCS#12 bundle is one file, under one key: whatever is wrong with it is said there.
        if case .pkcs12 = source.files { return "\(source.configKey).p12" }
        switch error {
        case .invalidKey: return "\(source.configKey).key"
        case .unreadable(let path, _): return path == source.key ? "\(source.configKey).key" : "\(source.configKey).cert"
        case .keyMismatch: return source.configKey
        default: return "\(source.configKey).cert"
        }
    }

    /// The index of the certificate an identity presents at `now`, nil when none is valid.
    public func activeCertificate(identity: String, at now: Int = currentEpochSeconds()) -> Int? {
        guard let list = credentials[identity] else { return nil }
        if list.count == 1 { return list[0].validity.isValid(at: now) ? 0 : nil }  // the common case, per request
        let prefer = config.identity(named: identity)?.prefer ?? .newest
        return CertificateSelection.active(list.map(\.validity), at: now, prefer: prefer)
    }

    /// The active certificate, expiry health and next switch of an identity.
    public func status(identity: String, at now: Int = currentEpochSeconds(), warnDays: Int? = nil) -> IdentityStatus {
        let list = credentials[identity] ?? []
        let prefer = config.identity(named: identity)?.prefer ?? .newest
        return IdentityStatus.evaluate(list.map(\.validity), prefer: prefer, at: now, warnDays: warnDays ?? config.proxy.warnDays)
    }

    /// The active credential of every identity at `now`, by name (nil: none valid).
    public func activeCredentials(at now: Int = currentEpochSeconds()) -> [String: Credential?] {
        var result: [String: Credential?] = [:]
        for identity in config.identities {
            result[identity.name] = activeCertificate(identity: identity.name, at: now).map { credentials[identity.name]![$0] }
        }
        return result
    }

    /// Every file the runtime was built from: the config, certificates, keys, password files and CA bundles.
    /// A change to any of them is a reason to reload.
    public var sourceFiles: [String] { Self.sourceFiles(of: config) }

    /// The files a configuration names, whether or not a runtime could be built from it (a reload that failed
    /// because a key is missing still watches for that key).
    public static func sourceFiles(of config: ProxyConfiguration) -> [String] {
        var files = [ConfigLoader.absolutePath(config.file)]
        for identity in config.identities {
            for source in identity.certificates {
                switch source.files {
                case .pem(let cert, let key, let password):
                    // A token's certificate or key is no file; the PIN files of their pin-source are.
                    if source.tokenCert == nil { files.append(cert) }
                    if source.tokenKey == nil && source.storeKey == nil { files.append(key) }
                    if let uri = source.storeKey, uri.hasPrefix("file:") { files.append(String(uri.dropFirst(5))) }
                    for uri in [source.tokenCert, source.tokenKey].compactMap({ $0 }) {
                        if case .file(let path)? = uri.pinSource { files.append(path) }
                    }
                    if case .file(let path)? = password { files.append(path) }
                case .pkcs12(let path, let password):
                    files.append(path)
                    if case .file(let p)? = password { files.append(p) }
                }
            }
        }
        var cas = config.routes.compactMap(\.trust.caFile)
        if let ca = config.upstream.trust.caFile { cas.append(ca) }
        files += cas
        // A new CRL file reloads the runtime: its contexts, sessions and pooled connections are made anew.
        files += config.upstream.trust.crlFiles + config.routes.flatMap(\.trust.crlFiles)
        if let intercept = config.intercept { files += [intercept.caCert, intercept.caKey] }
        if let authFile = config.proxy.authFile { files.append(authFile) }
        files += egressSettings(of: config).compactMap { $0.0.corporateProxy?.credentialsFile }
        var seen = Set<String>()
        return files.filter { seen.insert($0).inserted }
    }

    /// Warnings about key files readable by others, one per file: every private key the proxy reads (identity
    /// keys and bundles, the interception CA's key), every key password file and `[proxy] auth_file`, checked
    /// the same way.
    public var keyPermissionWarnings: [String] {
        var seen = Set<String>()
        var warnings: [String] = []
        for identity in config.identities {
            for credential in credentials[identity.name] ?? [] {
                if seen.insert(credential.source.key).inserted, let warning = credential.keyPermissionWarning {
                    warnings.append("identity \(identity.name): \(warning)")
                }
                if let file = credential.passwordFile, seen.insert(file).inserted,
                   let warning = KeyFilePermissions.warning(path: file, what: "key password file") {
                    warnings.append("identity \(identity.name): \(warning)")
                }
            }
        }
        if let intercept = config.intercept, seen.insert(intercept.caKey).inserted,
           let warning = KeyFilePermissions.warning(path: intercept.caKey, what: "local CA private key") {
            warnings.append("[intercept] ca_key: \(warning)")
        }
        // Password hashes: sha256 entries are unsalted and quick to try offline.
        if let authFile = config.proxy.authFile, seen.insert(authFile).inserted,
           let warning = KeyFilePermissions.warning(path: authFile, what: "password hash file") {
            warnings.append("[proxy] auth_file: \(warning)")
        }
        for (egress, key) in Self.egressSettings(of: config) {
            if let file = egress.corporateProxy?.credentialsFile, seen.insert(file).inserted,
               let warning = KeyFilePermissions.warning(path: file, what: "proxy credentials file") {
                warnings.append("\(key): \(warning)")
            }
        }
        return warnings
    }

    public enum ContextChoice {
        case context(ClientTLSContext)
        /// An mTLS route whose identity has no currently valid certificate.
        case noValidCertificate(identity: String, lastExpiry: Int?)
    }

    /// The TLS context for a routing decision that goes upstream (`tls` or `mtls`).
    public func context(for match: RouteMatch, at now: Int = currentEpochSeconds()) -> ContextChoice {
        if let resolved = resolvedContext(for: match, at: now) { return .context(resolved) }
        switch match.action {
        case .mtls(let identity):
            guard let index = activeCertificate(identity: identity, at: now),
                  let ctx = contexts[ContextKey(identity: identity, certificate: index, trust: match.trust)] else {
                let expiry = credentials[identity]?.map(\.validity.notAfter).max()
                return .noValidCertificate(identity: identity, lastExpiry: expiry)
            }
            return .context(ctx)
        case .tls, .deny:
            if let ctx = contexts[ContextKey(identity: nil, certificate: 0, trust: match.trust)] { return .context(ctx) }
            // Unreachable: every trust setting in the config has a plain context.
            return .noValidCertificate(identity: "(none)", lastExpiry: nil)
        }
    }
}

extension ProxyRuntime {
    /// The context from the tables resolved at load, when they cover `match` (its route and trust settings as
    /// loaded); nil sends the caller to the general lookup, which also explains a missing certificate.
    @inline(__always)
    func resolvedContext(for match: RouteMatch, at now: Int) -> ClientTLSContext? {
        guard let routeIndex = match.routeIndex else {
            if case .tls = match.action, match.trust == config.upstream.trust { return upstreamContext }
            return nil
        }
        // Route indexes are 1-based positions in the file; a route built elsewhere is looked up by its index.
        let direct = routeIndex - 1
        let found = direct >= 0 && direct < config.routes.count && config.routes[direct].index == routeIndex
            ? direct : config.routes.firstIndex { $0.index == routeIndex }
        guard let found else { return nil }
        let position = Int(routeContextIndex[found])
        // The entry's fields are read in place, not copied out as a whole.
        guard routeContexts[position].trust == match.trust else { return nil }
        switch match.action {
        case .tls, .deny:
            return routeContexts[position].plain
        case .mtls(let identity):
            guard identity == routeContexts[position].identity else { return nil }
            let active: Int?
            if routeContexts[position].credentials.count == 1 {
                active = routeContexts[position].credentials[0].validity.isValid(at: now) ? 0 : nil
            } else {
                active = CertificateSelection.active(routeContexts[position].credentials.map(\.validity), at: now,
                                                     prefer: routeContexts[position].prefer)
            }
            guard let active, active < routeContexts[position].byCertificate.count else { return nil }
            return routeContexts[position].byCertificate[active]
        }
    }
}

public func currentEpochSeconds() -> Int {
    var ts = timespec()
    clock_gettime(CLOCK_REALTIME, &ts)
    return Int(ts.tv_sec)
}

/// Wall-clock milliseconds since 1970, for the time of access records.
func currentEpochMillis() -> Int {
    var ts = timespec()
    clock_gettime(CLOCK_REALTIME, &ts)
    return Int(ts.tv_sec) * 1000 + Int(ts.tv_nsec) / 1_000_000
}

/// Monotonic milliseconds, for durations.
func monotonicMillis() -> Int {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Int(ts.tv_sec) * 1000 + Int(ts.tv_nsec) / 1_000_000
}

func monotonicMicros() -> Int {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Int(ts.tv_sec) * 1_000_000 + Int(ts.tv_nsec) / 1000
}
