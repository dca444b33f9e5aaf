#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import HTTP1
import TOMLKit

/// Reads a TOML config file into a validated `ProxyConfiguration`. Every mistake names the file, the line, the
/// key and what was expected, and one read reports every mistake it finds (see `ConfigProblems`); nothing
/// half-valid comes out.
public enum ConfigLoader {
    /// Where the config is looked for when neither --config nor `MTLS_PROXY_CONFIG` names it, in order.
    public static let searchPaths = ["proxy.conf", "/etc/mtls-proxy/proxy.conf"]

    /// The config file to use when none is given: the first of `searchPaths` that exists, or nil.
    public static func defaultPath() -> String? {
        searchPaths.first { access($0, F_OK) == 0 }
    }

    /// Loads `file`, then applies the environment overrides (see `EnvironmentOverrides`).
    public static func load(file: String, environment: [String: String] = [:]) throws -> ProxyConfiguration {
        let absolute = absolutePath(file)
        let text: String
        switch readText(absolute) {
        case .success(let read): text = read
        case .failure(let failure): throw ConfigError(file: file, key: "", message: "cannot read the config file: \(failure)")
        }
        var config = try parse(text, file: file, baseDirectory: directory(of: absolute))
        try EnvironmentOverrides.apply(environment, to: &config)
        return config
    }

    public static func parse(_ text: String, file: String, baseDirectory: String) throws -> ProxyConfiguration {
        if let problem = TOMLKeyCheck.firstProblem(text) {
            throw ConfigError(file: file, key: "", message: "line \(problem.line): \(problem.message)")
        }
        let root: TOMLTable
        do {
            root = try TOMLTable(string: text)
        } catch let error as TOMLParseError {
            throw ConfigError(file: file, key: "", message: "line \(error.source.begin.line), column \(error.source.begin.column): \(error.description)")
        }
        // TOMLKit never frees a parsed document; its tree is emptied (freed) once everything is read from it.
        defer { root.clear() }
        let problems = ConfigProblems(file: file)
        let reader = TableReader(table: root, path: "", file: file, base: baseDirectory, problems: problems)
        try reader.allowOnly(["proxy", "upstream", "identities", "route", "listener", "admin", "log", "intercept", "tls"])

        var proxy = ProxySettings()
        problems.collect { if let t = try reader.table("proxy") {
            try t.allowOnly(["listen", "workers", "unmatched", "allow_clients", "max_header_bytes", "warn_days", "drain_timeout",
                             "header_timeout", "max_connections", "auth_file", "client_timeout",
                             "rewrite_https_location"])
            if let b = try t.bool("rewrite_https_location") { proxy.rewriteHTTPSLocation = b }
            if let d = try t.duration("client_timeout") { proxy.clientTimeout = d }
            proxy.authFile = try t.credentialPath("auth_file", expected: "the path of the clients' password file (htpasswd)")
            if let d = try t.duration("header_timeout") { proxy.headerTimeout = d }
            if let n = try t.int("max_connections") {
                guard n >= 1 && n <= 1_000_000 else { throw t.error("max_connections", "expected 1 to 1000000, got \(n)") }
                proxy.maxConnections = n
            }
            if let d = try t.duration("drain_timeout") { proxy.drainTimeout = d }
            if let days = try t.int("warn_days") {
                guard days >= 0 && days <= 3650 else { throw t.error("warn_days", "expected 0 to 3650 days, got \(days)") }
                proxy.warnDays = days
            }
            if let listen = try t.string("listen") {
                guard let hp = HostPort.parse(listen) else {
                    throw t.error("listen", "expected an address and port such as \"127.0.0.1:3128\" or \"[::1]:3128\", got \"\(listen)\"")
                }
                proxy.listen = hp
            }
            if let workers = try t.int("workers") {
                guard workers >= 0 && workers <= 256 else { throw t.error("workers", "expected 0 (one per core) to 256, got \(workers)") }
                proxy.workers = workers
            }
            if let unmatched = try t.string("unmatched") {
                guard let policy = UnmatchedPolicy(rawValue: unmatched) else {
                    throw t.error("unmatched", "expected \"deny\" or \"tls\", got \"\(unmatched)\"")
                }
                proxy.unmatched = policy
            }
            proxy.allowClients = try readAllowClients(t)
            if let max = try t.int("max_header_bytes") {
                guard max >= 1024 && max <= 1024 * 1024 else {
                    throw t.error("max_header_bytes", "expected 1024 to 1048576, got \(max)")
                }
                proxy.maxHeaderBytes = max
            }
        } }
        problems.collect { try requireLoopbackOrAllowList(proxy.listen, proxy.allowClients, file: file, key: "proxy") }

        var upstream = UpstreamSettings()
        // `[upstream] allow_private = false` written out: the user asked for the SSRF guard by name.
        var upstreamGuardSet = false
        problems.collect { if let t = try reader.table("upstream") {
            try t.allowOnly(Set(["connect_timeout", "response_timeout", "idle_timeout", "max_idle_per_host",
                             "nameservers", "allow_private", "proxy", "proxy_credentials_file", "protocol", "h2_connections",
                             "h2_ping_interval", "h2_ping_timeout"]).union(pathRuleKeys).union(trustKeys))
            upstream.httpProtocol = try readProtocol(t, inherited: upstream.httpProtocol)
            upstream.h2Connections = try readH2Connections(t, inherited: upstream.h2Connections)
            if let allow = try t.bool("allow_private") { upstream.allowPrivate = allow }
            upstreamGuardSet = try t.bool("allow_private") == false
            upstream.egress = try readEgress(t, inherited: .direct)
            if let proxy = upstream.egress.corporateProxy, upstreamGuardSet {
                throw t.error("allow_private", EgressGuards.guardUnseen(proxy))
            }
            if let list = try t.stringArray("nameservers") {
                upstream.nameservers = try list.enumerated().map { i, text in
                    if let hp = HostPort.parse(text), hp.port > 0 { return hp }
                    if let ip = IPAddress(text) { return HostPort(host: ip.isV6 ? ip.description : text, port: 53) }
                    throw t.error("nameservers[\(i + 1)]", "expected a numeric address such as \"127.0.0.53\" or \"[::1]:53\", got \"\(text)\"")
                }
            }
            upstream.pathRules = try readPathRules(t, defaults: upstream.pathRules)
            upstream.trust = try readTrust(t, defaults: upstream.trust)
            upstream.timeouts = try readTimeouts(t, defaults: upstream.timeouts)
            if let n = try t.int("max_idle_per_host") {
                guard n >= 0 && n <= 10_000 else { throw t.error("max_idle_per_host", "expected 0 to 10000, got \(n)") }
                upstream.maxIdlePerHost = n
            }
        } }

        var identities: [Identity] = []
        // Identities with a mistake of their own: routes that name them are not blamed for it.
        var brokenIdentities: [Identity] = []
        if let t = try reader.table("identities") {
            for name in t.keys.sorted() {
                let read = problems.collect {
                    guard let it = try t.table(name) else { throw t.error(name, "expected a table [identities.\(name)]") }
                    guard isValidIdentityName(name) else {
                        throw t.error(name, "identity names use letters, digits, '-' and '_'")
                    }
                    identities.append(try readIdentity(it, name: name))
                }
                if !read { brokenIdentities.append(Identity(name: name, certificates: [])) }
            }
        }

        var routes: [Route] = []
        for (i, rt) in try reader.arrayOfTables("route").enumerated() {
            // Mistakes in a named route say its name: route "payments-eu" (route[2]).identity.
            if let name = rt.table["name"]?.string, Route.isPrintableName(name) {
                problems.label(rt.path, as: "route \"\(name)\" (\(rt.path))")
            }
            problems.collect {
                routes.append(try readRoute(rt, index: i + 1, upstream: upstream, identities: identities + brokenIdentities,
                                            upstreamGuardSet: upstreamGuardSet))
            }
        }
        for (route, first) in repeatedRouteLabels(routes) {
            let place = TOMLKeyLocator(text).line(of: "route[\(first)].name").map { "\(file):\($0)" } ?? file
            problems.record(ConfigError(file: file, key: "route[\(route.index)].name", message:
                "\"\(route.label)\" already labels route[\(first)] (\(place)); a name labels one route's traffic in the "
                + "access log, the metrics and the status page: give each route its own"))
        }
        var listeners: [FixedListener] = []
        for lt in try reader.arrayOfTables("listener") { problems.collect {
            try lt.allowOnly(["listen", "upstream", "allow_clients", "rewrite_location"])
            guard let listenText = try lt.string("listen") else { throw lt.error("listen", "missing: the address to listen on, such as \"127.0.0.1:9001\"") }
            guard let listen = HostPort.parse(listenText) else {
                throw lt.error("listen", "expected an address and port such as \"127.0.0.1:9001\", got \"\(listenText)\"")
            }
            guard let upstreamText = try lt.string("upstream") else {
                throw lt.error("upstream", "missing: the service to send every request to, such as \"https://api.example.com\"")
            }
            guard let (host, port) = parseUpstreamURL(upstreamText) else {
                throw lt.error("upstream", "expected https://HOST or https://HOST:PORT (no path), got \"\(upstreamText)\"")
            }
            let allow = try readAllowClients(lt)
            try requireLoopbackOrAllowList(listen, allow, file: file, key: lt.path)
            if listen == proxy.listen || listeners.contains(where: { $0.listen == listen }) {
                throw lt.error("listen", "\(listen) is already used by another listener")
            }
            listeners.append(FixedListener(listen: listen, host: host, port: port, allowClients: allow, configKey: lt.path,
                                           rewriteLocation: try lt.bool("rewrite_location") ?? true))
        } }

        var admin: AdminSettings?
        problems.collect { if let at = try reader.table("admin") {
            try at.allowOnly(["listen", "allow_clients", "ready_requires_valid_identities"])
            guard let text = try at.string("listen") else { throw at.error("listen", "missing: the admin address, such as \"127.0.0.1:9901\"") }
            guard let listen = HostPort.parse(text) else {
                throw at.error("listen", "expected an address and port such as \"127.0.0.1:9901\", got \"\(text)\"")
            }
            let allow = try readAllowClients(at)
            try requireLoopbackOrAllowList(listen, allow, file: file, key: "admin")
            admin = AdminSettings(listen: listen, allowClients: allow)
            admin?.readyRequiresValidIdentities = try at.bool("ready_requires_valid_identities") ?? false
        } }

        var log = LogSettings()
        problems.collect { if let lt = try reader.table("log") {
            try lt.allowOnly(["access", "format", "level", "operational_format"])
            if let access = try lt.string("access") {
                switch access {
                case "stdout": log.access = .stdout
                case "off": log.access = .off
                case "": throw lt.error("access", "expected \"stdout\", \"off\" or a file path")
                default: log.access = .file(lt.resolve(access))
                }
            }
            if let format = try lt.string("format") {
                guard let f = LogSettings.Format(rawValue: format) else { throw lt.error("format", "expected \"json\" or \"text\", got \"\(format)\"") }
                log.format = f
            }
            if let level = try lt.string("level") {
                guard let l = LogSettings.Level(rawValue: level) else {
                    throw lt.error("level", "expected one of \(LogSettings.Level.allCases.map(\.rawValue).joined(separator: ", ")), got \"\(level)\"")
                }
                log.level = l
            }
            if let format = try lt.string("operational_format") {
                guard let f = LogSettings.Format(rawValue: format) else {
                    throw lt.error("operational_format", "expected \"json\" or \"text\", got \"\(format)\"")
                }
                log.operationalFormat = f
            }
        } }
        var config = ProxyConfiguration(file: file, proxy: proxy, upstream: upstream, identities: identities, routes: routes.compacted(),
                                        listeners: listeners, admin: admin, log: log)
        problems.collect { if let it = try reader.table("intercept") {
            try it.allowOnly(["ca_cert", "ca_key", "leaf_validity"])
            guard let cert = try it.credentialPath("ca_cert", expected: "the local CA certificate file (PEM)") else {
                throw it.error("ca_cert", "missing: the local CA certificate (PEM) the workflows trust")
            }
            guard let key = try it.credentialPath("ca_key", expected: "the local CA's private key file (PEM)") else {
                throw it.error("ca_key", "missing: the local CA's private key (PEM)")
            }
            var settings = InterceptSettings(caCert: cert, caKey: key)
            if let validity = try it.duration("leaf_validity") {
                guard validity.milliseconds >= 3_600_000 && validity.milliseconds <= 30 * 86_400_000 else {
                    throw it.error("leaf_validity", "expected 1h to 30 days (\"720h\"), got \(validity)")
                }
                settings.leafValidity = validity
            }
            config.intercept = settings
        } }
        problems.collect { try EgressGuards.refuseLoops(config) }
        problems.collect { if let tt = try reader.table("tls") {
            try tt.allowOnly(["providers"])
            let names = try tt.stringArray("providers") ?? []
            for (i, name) in names.enumerated() where name.isEmpty || !name.utf8.allSatisfy({ ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x61 && $0 <= 0x7A) || $0 == 0x2D || $0 == 0x5F }) {
                throw tt.error("providers[\(i + 1)]", "expected an OpenSSL provider name such as \"default\" or \"tpm2\", got \"\(name)\"")
            }
            // Naming providers replaces OpenSSL's implicit default: TLS itself needs "default" (or "fips").
            if !names.isEmpty, !names.contains("default"), !names.contains("fips") {
                throw tt.error("providers", "include \"default\" (TLS needs it once providers are named), e.g. [\"default\", \"tpm2\"]")
            }
            config.tlsProviders = names
        } }
        try problems.throwIfAny(text: text)
        return config
    }

    static func readAllowClients(_ t: TableReader) throws -> [CIDR] {
        guard let list = try t.stringArray("allow_clients") else { return [] }
        return try list.enumerated().map { i, text in
            guard let cidr = CIDR.parse(text) else {
                throw t.error("allow_clients[\(i + 1)]", "expected an address range such as \"10.0.0.0/8\", got \"\(text)\"")
            }
            return cidr
        }
    }

    /// Security by default: only loopback clients unless the config names the ranges allowed to connect.
    static func requireLoopbackOrAllowList(_ listen: HostPort, _ allow: [CIDR], file: String, key: String) throws {
        if !(IPAddress(listen.host)?.isLoopback ?? false) && allow.isEmpty {
            throw ConfigError(file: file, key: "\(key).listen",
                              message: "\(listen) is not a loopback address; set \(key).allow_clients (address ranges allowed to connect) to listen there")
        }
    }

    /// `https://host` or `https://host:port`, nothing after.
    public static func parseUpstreamURL(_ text: String) -> (String, Int)? {
        guard text.lowercased().hasPrefix("https://") else { return nil }
        var rest = String(text.dropFirst(8))
        if rest.hasSuffix("/") { rest.removeLast() }
        guard !rest.isEmpty, !rest.contains("/"), !rest.contains("@"), !rest.contains("?"), !rest.contains("#") else { return nil }
        var host = rest
        var port = 443
        if rest.hasPrefix("[") {
            guard let close = rest.firstIndex(of: "]") else { return nil }
            host = String(rest[rest.index(after: rest.startIndex)..<close])
            let after = rest[rest.index(after: close)...]
            if !after.isEmpty {
                guard after.hasPrefix(":"), let p = Int(after.dropFirst()), p > 0, p <= 65535 else { return nil }
                port = p
            }
            guard let canonical = IPv6Literal.canonical(host.utf8) else { return nil }
            return (canonical, port)
        }
        if let colon = rest.lastIndex(of: ":") {
            host = String(rest[..<colon])
            guard let p = Int(rest[rest.index(after: colon)...]), p > 0, p <= 65535 else { return nil }
            port = p
        }
        host = host.asciiLowercasedForConfig
        if host.count > 1, host.hasSuffix(".") { host.removeLast() }  // the same host, as requests are matched
        guard HostPattern.isValidHostName(host) || IPAddress(host) != nil else { return nil }
        return (host, port)
    }

    static let certificateKeys: Set<String> = ["cert", "key", "key_password_file", "key_password_env", "p12",
                                                "p12_password_file", "p12_password_env"]

    static func readIdentity(_ t: TableReader, name: String) throws -> Identity {
        try t.allowOnly(certificateKeys.union(["certificates", "prefer"]))
        var sources: [CertificateSource] = []
        if let single = try readCertificate(t, configKey: t.path, required: false) {
            sources.append(single)
        }
        for ct in try t.arrayOfTables("certificates") {
            try ct.allowOnly(certificateKeys)
            sources.append(try readCertificate(ct, configKey: ct.path, required: true)!)
        }
        guard !sources.isEmpty else {
            throw ConfigError(file: t.file, key: t.path, message: "an identity needs cert and key, or p12 (or [[\(t.path).certificates]] entries)")
        }
        var prefer = CertificatePreference.newest
        if let p = try t.string("prefer") {
            guard let value = CertificatePreference(rawValue: p) else {
                throw t.error("prefer", "expected \"newest\" (present the most recently issued valid certificate) or \"oldest\", got \"\(p)\"")
            }
            prefer = value
        }
        return Identity(name: name, certificates: sources, prefer: prefer)
    }

    /// Each named route whose name is already another route's label (its name, or the `route[N] host` an unnamed
    /// route is labelled by), with the position of that route. Unnamed labels are unique by their position.
    static func repeatedRouteLabels(_ routes: [Route]) -> [(route: Route, first: Int)] {
        var firstByName: [String: Int] = [:]
        var repeated: [(route: Route, first: Int)] = []
        for route in routes {
            guard let name = route.name else { continue }
            if let first = firstByName[name] {
                repeated.append((route, first))
            } else if name.hasPrefix("route["), let other = routes.first(where: { $0.name == nil && $0.label == name }) {
                repeated.append((route, other.index))  // rare: only a name spelled like a default label is looked for
            } else {
                firstByName[name] = route.index
            }
        }
        return repeated
    }

    /// cert + key (+ key_password_file or key_password_env), or p12 (+ p12_password_file or p12_password_env).
    static func readCertificate(_ t: TableReader, configKey: String, required: Bool) throws -> CertificateSource? {
        for (name, what) in [("cert", "a certificate file (PEM) path or a pkcs11: URI (type=cert)"), ("p12", "a PKCS#12 bundle path"),
                             ("key", "a key file (PEM) path, a pkcs11: URI (RFC 7512) or store:URI")] {
            if let text = try t.string(name),
               let problem = CredentialValue.problem(text, tokenURIAllowed: name != "p12", storeURIAllowed: name == "key") {
                throw t.error(name, "expected \(what); \(problem)")
            }
        }
        let p12 = try t.path("p12")
        let cert: String?
        if let text = try t.string("cert"), TokenKeyURI.isTokenURI(text) {
            // A certificate read from a PKCS#11 token (the URI stays as written, it is not a path).
            switch TokenKeyURI.parse(text) {
            case .failure(let problem): throw t.error("cert", problem.description)
            case .success(let uri):
                if let type = uri.objectType, type != "cert" {
                    throw t.error("cert", "the URI names an object of type=\(type): a certificate on a token is type=cert")
                }
            }
            cert = text
        } else {
            cert = try t.path("cert")
        }
        let key: String?
        if let text = try t.string("key"), TokenKeyURI.isTokenURI(text) {
            // A key on a PKCS#11 token: the URI stays as written (it is not a path).
            switch TokenKeyURI.parse(text) {
            case .failure(let problem): throw t.error("key", problem.description)
            case .success: break
            }
            if try t.secretKeysPresent(["key_password_file", "key_password_env"]) {
                throw t.error("key_password_file", "a token key's PIN comes from the URI's pin-source (file:/path or env:NAME)")
            }
            key = text
        } else if let text = try t.string("key"), text.hasPrefix("store:") {
            // A key an OpenSSL 3 provider holds (OSSL_STORE URI), e.g. a TPM key: loaded through [tls] providers.
            let lower = text.lowercased()
            guard text.count > 6, !["pin-value", "?pass", "&pass", ";pass"].contains(where: { lower.contains($0) }) else {
                throw t.error("key", "expected store:URI, such as store:handle:0x81000001 or store:file:/etc/mtls-proxy/us.tss2.pem, with no password in it")
            }
            if try t.secretKeysPresent(["key_password_file", "key_password_env"]) {
                throw t.error("key_password_file", "not supported with a store: key")
            }
            key = text
        } else {
            key = try t.path("key")
        }
        if let p12 {
            if cert != nil || key != nil { throw t.error("p12", "a PKCS#12 bundle holds the certificate and key: set p12, or cert and key, not both") }
            if try t.string("key_password_file") != nil || t.string("key_password_env") != nil {
                throw t.error("p12", "use p12_password_file or p12_password_env for a bundle")
            }
            return CertificateSource(files: .pkcs12(path: p12, password: try secret(t, "p12_password")), configKey: configKey)
        }
        if cert == nil && key == nil {
            if try t.secretKeysPresent(["key_password_file", "key_password_env", "p12_password_file", "p12_password_env"]) {
                throw t.error("cert", "missing: a password is set but no cert and key (or p12)")
            }
            if required { throw t.error("cert", "missing: the certificate file (PEM, leaf first) and its key, or p12") }
            return nil
        }
        guard let cert else { throw t.error("cert", "missing: the certificate file (PEM, leaf first) that goes with key") }
        guard let key else { throw t.error("key", "missing: the private key file (PEM) that goes with cert") }
        if try t.secretKeysPresent(["p12_password_file", "p12_password_env"]) {
            throw t.error("p12_password_file", "only for a p12 bundle; an encrypted PEM key uses key_password_file or key_password_env")
        }
        return CertificateSource(files: .pem(cert: cert, key: key, keyPassword: try secret(t, "key_password")), configKey: configKey)
    }

    static func secret(_ t: TableReader, _ prefix: String) throws -> SecretSource? {
        let file = try t.credentialPath("\(prefix)_file", expected: "the path of a file holding the password")
        let env = try t.credentialVariable("\(prefix)_env")
        switch (file, env) {
        case (nil, nil): return nil
        case (let f?, nil): return .file(f)
        case (nil, let e?): return .environment(e)
        case (_?, _?): throw t.error("\(prefix)_env", "set \(prefix)_file or \(prefix)_env, not both")
        }
    }

    /// The keys of a `[[route]]` (made once: a table of 100,000 routes reads them 100,000 times).
    static let routeKeys: Set<String> = Set(["name", "host", "port", "path", "path_prefix_match", "identity", "action", "connect",
                                             "connect_timeout", "response_timeout", "idle_timeout", "allow_private",
                                             "proxy", "proxy_credentials_file", "protocol", "h2_connections",
                                             "h2_ping_interval", "h2_ping_timeout"])
        .union(pathRuleKeys).union(trustKeys).union(pinKeys)

    static func readRoute(_ t: TableReader, index: Int, upstream: UpstreamSettings, identities: [Identity],
                          upstreamGuardSet: Bool = false) throws -> Route {
        try t.allowOnly(routeKeys)
        let pathRules = try readPathRules(t, defaults: upstream.pathRules)
        guard let hostText = try t.string("host") else {
            throw t.error("host", "missing: every route names a host (\"api.example.com\", \"*.example.com\" or \"*\")")
        }
        guard let host = HostPattern.parse(hostText) else {
            throw t.error("host", "expected a host name, \"*.example.com\" or \"*\", got \"\(hostText)\"")
        }
        var port: Int?
        if let p = try t.int("port") {
            guard p >= 1 && p <= 65535 else { throw t.error("port", "expected 1 to 65535, got \(p)") }
            port = p
        }
        var pathPrefix: String?
        if let p = try t.string("path") {
            guard p.hasPrefix("/") else { throw t.error("path", "expected a path prefix starting with /, got \"\(p)\"") }
            pathPrefix = try canonicalPathPrefix(p, rules: pathRules, t)
        }
        var prefixMatch = PathPrefixMatch.segment
        if let text = try t.string("path_prefix_match") {
            guard let rule = PathPrefixMatch(rawValue: text) else {
                throw t.error("path_prefix_match", "expected \"segment\" (whole path segments, the default) or \"string\" (a plain string prefix), got \"\(text)\"")
            }
            guard pathPrefix != nil else {
                throw t.error("path_prefix_match", "says how the route's path prefix is matched, but the route has no path")
            }
            prefixMatch = rule
        }
        let identity = try t.string("identity")
        let actionText = try t.string("action")
        let action: RouteAction
        switch (identity, actionText) {
        case (let id?, nil):
            guard identities.contains(where: { $0.name == id }) else {
                let known = identities.map(\.name).joined(separator: ", ")
                throw t.error("identity", "unknown identity \"\(id)\"; defined: \(known.isEmpty ? "none" : known)")
            }
            action = .mtls(identity: id)
        case (nil, "tls"?): action = .tls
        case (nil, "deny"?): action = .deny
        case (nil, "mtls"?): throw t.error("action", "an mtls route names its identity: identity = \"...\" (and no action)")
        case (nil, let other?): throw t.error("action", "expected \"tls\" or \"deny\", got \"\(other)\"")
        case (_?, _?): throw t.error("action", "a route sets identity (mTLS) or action (\"tls\"/\"deny\"), not both")
        case (nil, nil): throw t.error("identity", "missing: set identity = \"NAME\" for mTLS, or action = \"tls\" or \"deny\"")
        }
        var connect: HostPort?
        if let c = try t.string("connect") {
            guard let hp = HostPort.parse(c), hp.port > 0 else {
                throw t.error("connect", "expected a numeric address and port such as \"127.0.0.1:18443\", got \"\(c)\"")
            }
            connect = hp
        }
        let trust = try readTrust(t, defaults: upstream.trust, route: true)
        let timeouts = try readTimeouts(t, defaults: upstream.timeouts)
        let egress = try readEgress(t, inherited: upstream.egress)
        if let proxy = egress.corporateProxy, action != .deny {
            // Settings whose guard a corporate proxy would quietly void are refused, not ignored.
            if connect != nil { throw t.error("connect", EgressGuards.connectThroughProxy(proxy)) }
            let routeGuard = try t.bool("allow_private")
            if routeGuard == false { throw t.error("allow_private", EgressGuards.guardUnseen(proxy)) }
            let routeNamesProxy = try t.string("proxy") != nil
            if routeGuard == nil && upstreamGuardSet && routeNamesProxy {
                throw t.error("proxy", "[upstream] allow_private = false is set; " + EgressGuards.guardUnseen(proxy))
            }
        }
        // Naming the address to dial is an explicit choice: the guard does not second-guess it.
        let allowPrivate = try t.bool("allow_private") ?? upstream.allowPrivate
        // A name labels the route in logs, metrics and the status page: an empty one labels nothing.
        let name = try t.string("name")
        if name == "" { throw t.error("name", "empty; give the route a name, or leave name out (it is then called route[\(index)])") }
        return Route(index: index, name: name, host: host, port: port, pathPrefix: pathPrefix,
                     pathPrefixMatch: prefixMatch, action: action, connect: connect, trust: trust, timeouts: timeouts, allowPrivate: allowPrivate || connect != nil,
                     pathRules: pathRules, egress: egress, httpProtocol: try readProtocol(t, inherited: upstream.httpProtocol),
                     h2Connections: try readH2Connections(t, inherited: upstream.h2Connections))
    }

    /// `h2_connections = N` (1 to 64) in `[upstream]` or a route: HTTP/2 connections per connection key.
    static func readH2Connections(_ t: TableReader, inherited: Int) throws -> Int {
        guard let n = try t.int("h2_connections") else { return inherited }
        guard n >= 1 && n <= 64 else {
            throw t.error("h2_connections", "expected 1 to 64 (HTTP/2 connections per upstream and identity before requests wait for a free stream), got \(n)")
        }
        return n
    }

    /// `protocol = "http/1.1" | "h2" | "auto"` in `[upstream]` or a route; a route inherits `[upstream]`'s.
    static func readProtocol(_ t: TableReader, inherited: UpstreamProtocol) throws -> UpstreamProtocol {
        guard let text = try t.string("protocol") else { return inherited }
        guard let value = UpstreamProtocol(rawValue: text) else {
            throw t.error("protocol", "expected \"http/1.1\" (the default), \"h2\" (HTTP/2, which the server must select in ALPN) or \"auto\" (HTTP/2 when the server selects it, else HTTP/1.1), got \"\(text)\"")
        }
        return value
    }

    // MARK: egress (see Egress)

    /// `proxy = "direct" | "http://HOST:PORT"` and `proxy_credentials_file`, in `[upstream]` or a route. A route
    /// inherits `[upstream]`'s; its credentials only while it names the same proxy (a password for one proxy
    /// is never sent to another).
    static func readEgress(_ t: TableReader, inherited: Egress) throws -> Egress {
        let credentials = try t.credentialPath("proxy_credentials_file", expected: "the path of a file holding user:password")
        guard let text = try t.string("proxy") else {
            guard let credentials else { return inherited }
            guard case .proxy(var proxy) = inherited else {
                throw t.error("proxy_credentials_file", "set with proxy = \"http://HOST:PORT\" (the corporate proxy they are for); connections here go direct")
            }
            proxy.credentialsFile = credentials
            return .proxy(proxy)
        }
        if text == "direct" {
            if credentials != nil { throw t.error("proxy_credentials_file", "proxy = \"direct\" sends no credentials anywhere; remove proxy_credentials_file") }
            return .direct
        }
        switch EgressProxy.parse(text) {
        case .failure(let problem):
            // The text is not quoted: a URL with user:password in it holds a secret.
            throw t.error("proxy", problem.description)
        case .success(var proxy):
            if let credentials {
                proxy.credentialsFile = credentials
            } else if let outer = inherited.corporateProxy, outer.sameAddress(as: proxy) {
                proxy.credentialsFile = outer.credentialsFile
            }
            return .proxy(proxy)
        }
    }

    // MARK: request-path rules (see PathNormalizer)

    static let pathRuleKeys: Set<String> = ["merge_slashes", "escaped_slashes"]

    /// `merge_slashes = true` and `escaped_slashes = "refuse" | "keep"`, in `[upstream]` or a route.
    static func readPathRules(_ t: TableReader, defaults: PathRules) throws -> PathRules {
        var rules = defaults
        if let merge = try t.bool("merge_slashes") { rules.mergeSlashes = merge }
        if let text = try t.string("escaped_slashes") {
            guard let value = PathRules.EscapedSlashes(rawValue: text) else {
                throw t.error("escaped_slashes", "expected \"refuse\" (400 for %2F and %5C, the default) or \"keep\" (forward them as they are), got \"\(text)\"")
            }
            rules.escapedSlashes = value
        }
        return rules
    }

    /// Requests are matched on their canonical path, so a prefix is written in that form too: `/%61dmin` is
    /// `/admin`, and a prefix no request could have (`/a/../b`, `//x`) is a mistake.
    static func canonicalPathPrefix(_ prefix: String, rules: PathRules, _ t: TableReader) throws -> String {
        var allowing: PathNormalizer.Relaxations = []
        if rules.escapedSlashes == .keep { allowing.insert(.keepEscapedSlashes) }
        switch PathNormalizer.normalize(prefix[...], allowing: allowing) {
        case .success(let canonical): return canonical.path
        case .failure(let refusal):
            let hint = refusal.relaxation == nil ? "" : " (requests with it are refused unless the route relaxes the rule; see escaped_slashes)"
            throw t.error("path", "\(refusal.description)\(hint): no request is matched on \"\(prefix)\"")
        }
    }

    /// Keys of the trust settings and TLS policy, in `[upstream]` and routes.
    static let trustKeys: Set<String> = ["ca_file", "min_tls", "tls_min_version", "tls_max_version", "tls_ciphers",
                                         "tls_ciphersuites", "tls_groups", "tls_signature_algorithms", "revocation", "crl_files", "crl_fetch", "require_ocsp_staple",
                                         "revocation_scope"]
    /// Keys of pinning, in routes only: a pin names one service's key.
    static let pinKeys: Set<String> = ["verify", "pin_spki_sha256", "pin_report_only"]

    /// The trust settings of `[upstream]` (`route: false`) or a route, over `defaults`. Names in the TLS policy
    /// are checked against OpenSSL when the runtime builds the context (`ClientTLSContext`), not here.
    static func readTrust(_ t: TableReader, defaults: TrustSettings, route: Bool = false) throws -> TrustSettings {
        var trust = defaults
        if let ca = try t.string("ca_file") {
            trust.caFile = ca.isEmpty ? nil : t.resolve(ca)
        }
        func version(_ key: String) throws -> TLSVersionSetting? {
            guard let v = try t.string(key) else { return nil }
            guard let version = TLSVersionSetting(rawValue: v) else { throw t.error(key, "expected \"1.2\" or \"1.3\", got \"\(v)\"") }
            return version
        }
        if try t.string("min_tls") != nil && t.string("tls_min_version") != nil {
            throw t.error("tls_min_version", "set tls_min_version or its older spelling min_tls, not both")
        }
        if let v = try version("min_tls") { trust.minTLS = v }
        if let v = try version("tls_min_version") { trust.minTLS = v }
        if let v = try version("tls_max_version") { trust.maxTLS = v }
        if trust.minTLS == .tls13 && trust.maxTLS == .tls12 {
            throw t.error("tls_max_version", "is 1.2, below tls_min_version 1.3: no TLS version is left")
        }
        func names(_ key: String, allowEmpty: Bool) throws -> [String]? {
            guard let list = try t.stringArray(key) else { return nil }
            if list.isEmpty && !allowEmpty { throw t.error(key, "expected at least one name") }
            for (i, name) in list.enumerated() where name.isEmpty || name.contains(where: { $0 == ":" || $0 == "," || $0 == " " || $0 == "!" }) {
                throw t.error("\(key)[\(i + 1)]", "expected one OpenSSL name per element (no ':', ',', '!' or spaces), got \"\(name)\"")
            }
            var seen = Set<String>()
            for (i, name) in list.enumerated() where !seen.insert(name.lowercased()).inserted {
                throw t.error("\(key)[\(i + 1)]", "\"\(name)\" is listed twice")
            }
            return list
        }
        if let list = try names("tls_ciphers", allowEmpty: true) { trust.ciphers = list }
        if let list = try names("tls_ciphersuites", allowEmpty: false) { trust.cipherSuites = list }
        if let list = try names("tls_groups", allowEmpty: false) { trust.groups = list }
        if let list = try names("tls_signature_algorithms", allowEmpty: true) { trust.signatureAlgorithms = list }
        if trust.ciphers.isEmpty && trust.minTLS == .tls12 {
            throw t.error("tls_ciphers", "is empty, which leaves TLS 1.2 without ciphers: set tls_min_version = \"1.3\" instead")
        }

        if let files = try t.stringArray("crl_files") {
            trust.crlFiles = try files.enumerated().map { i, file in
                guard !file.isEmpty else { throw t.error("crl_files[\(i + 1)]", "expected a file path, got an empty string") }
                return t.resolve(file)
            }
            if try t.string("revocation") == nil && trust.revocation == .off { trust.revocation = .soft }
        }
        if let require = try t.bool("require_ocsp_staple") { trust.requireOCSPStaple = require }
        if let fetch = try t.bool("crl_fetch") {
            trust.crlFetch = fetch
            if fetch && t.table["revocation"] == nil && trust.revocation == .off { trust.revocation = .soft }
        }
        if let text = try t.string("revocation") {
            guard let mode = RevocationMode(rawValue: text) else {
                throw t.error("revocation", "expected \"off\", \"soft\" (a missing or stale CRL is logged and allowed) or \"hard\" (refused), got \"\(text)\"")
            }
            trust.revocation = mode
        }
        if let text = try t.string("revocation_scope") {
            guard let scope = RevocationScope(rawValue: text) else {
                throw t.error("revocation_scope", "expected \"chain\" (every certificate of the server's chain against its issuer's CRL) or \"leaf\" (the server's certificate only), got \"\(text)\"")
            }
            trust.revocationScope = scope
        }
        if trust.revocation != .off && trust.crlFiles.isEmpty && !trust.crlFetch {
            throw t.error("revocation", "is \"\(trust.revocation.rawValue)\" but no CRL is given: set crl_files = [\"...\"] or crl_fetch = true")
        }
        if trust.revocation == .off && !trust.crlFiles.isEmpty && t.table["crl_files"] != nil {
            throw t.error("crl_files", "CRLs are given but revocation = \"off\": remove one of them")
        }

        guard route else { return trust }
        if let pins = try t.stringArray("pin_spki_sha256") {
            guard !pins.isEmpty else { throw t.error("pin_spki_sha256", "expected at least one pin (base64 of a SHA-256 digest)") }
            trust.pins = try pins.enumerated().map { i, pin in
                guard let bytes = ProxyCredentials.base64Decode(pin[...]), bytes.count == 32 else {
                    throw t.error("pin_spki_sha256[\(i + 1)]", "expected base64 of a SHA-256 digest (44 characters ending in '='), as `mtls-proxy pins` prints it, got \"\(pin)\"")
                }
                return bytes
            }
        }
        if let reportOnly = try t.bool("pin_report_only") {
            guard !trust.pins.isEmpty else { throw t.error("pin_report_only", "is set but the route has no pin_spki_sha256") }
            trust.pinReportOnly = reportOnly
        }
        if let text = try t.string("verify") {
            guard let mode = ServerVerification(rawValue: text) else {
                throw t.error("verify", "expected \"chain\" (the CA chain and host name, the default) or \"pin-only\" (only the pinned key), got \"\(text)\"")
            }
            trust.verify = mode
        }
        if trust.verify == .pinOnly {
            if trust.pins.isEmpty { throw t.error("verify", "\"pin-only\" needs pin_spki_sha256: with no pin nothing would be checked") }
            if trust.pinReportOnly { throw t.error("pin_report_only", "cannot go with verify = \"pin-only\": the pin is all that is checked") }
            if t.table["revocation"] != nil || t.table["crl_files"] != nil || t.table["crl_fetch"] != nil, trust.revocation != .off {
                throw t.error("revocation", "cannot go with verify = \"pin-only\": there is no verified chain to check against CRLs")
            }
            trust.revocation = .off  // inherited from [upstream]: does not apply to a pinned self-signed key
            trust.crlFiles = []
            trust.crlFetch = false
            if t.table["require_ocsp_staple"] != nil && trust.requireOCSPStaple {
                throw t.error("require_ocsp_staple", "cannot go with verify = \"pin-only\": there is no verified chain to check a staple against")
            }
            trust.requireOCSPStaple = false
        }
        return trust
    }

    static func readTimeouts(_ t: TableReader, defaults: Timeouts) throws -> Timeouts {
        var timeouts = defaults
        if let d = try t.duration("connect_timeout") { timeouts.connect = d }
        if let d = try t.duration("response_timeout") { timeouts.response = d }
        if let d = try t.duration("idle_timeout") { timeouts.idle = d }
        let pingIntervalExpected = "expected \"off\" or a duration of at least 100ms such as \"30s\" (how long an idle HTTP/2 connection may be silent before a PING checks it)"
        if let value = t.table["h2_ping_interval"], value.int != nil || value.double != nil {
            throw t.error("h2_ping_interval", "\(pingIntervalExpected); durations are strings with a unit, got a number")
        }
        if t.table["h2_ping_interval"] != nil, let text = try t.string("h2_ping_interval") {
            if text == "off" {
                timeouts.h2PingInterval = nil
            } else {
                guard let d = TimeSpan.parse(text), d.milliseconds >= 100 else {
                    throw t.error("h2_ping_interval", "\(pingIntervalExpected), got \"\(text)\"")
                }
                timeouts.h2PingInterval = d
            }
        }
        if let d = try t.duration("h2_ping_timeout") { timeouts.h2PingTimeout = d }
        return timeouts
    }

    static func isValidIdentityName(_ name: String) -> Bool {
        !name.isEmpty && name.utf8.allSatisfy { ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x41 && $0 <= 0x5A) || ($0 >= 0x61 && $0 <= 0x7A) || $0 == 0x2D || $0 == 0x5F }
    }

    // MARK: files

    public static func absolutePath(_ path: String) -> String {
        if path.hasPrefix("/") { return path }
        var buffer = [CChar](repeating: 0, count: 4096)
        guard getcwd(&buffer, buffer.count) != nil else { return path }
        let cwd = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return path.hasPrefix("./") ? cwd + "/" + path.dropFirst(2) : cwd + "/" + path
    }

    static func directory(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        return slash == path.startIndex ? "/" : String(path[..<slash])
    }

    /// The largest text file read (a config of 100,000 routes is about 8 MiB).
    public static let maxTextFileBytes = 16 * 1024 * 1024

    public static func readTextFile(_ path: String) -> String? {
        try? readText(path).get()
    }

    /// Why a text file could not be read.
    public enum ReadFailure: Error, CustomStringConvertible {
        case system(errno: Int32)
        case tooLarge

        public var description: String {
            switch self {
            case .system(let code): return String(cString: strerror(code))
            case .tooLarge: return "the file is larger than \(maxTextFileBytes >> 20) MiB"
            }
        }
    }

    public static func readText(_ path: String) -> Result<String, ReadFailure> {
        guard let f = fopen(path, "rb") else { return .failure(.system(errno: errno)) }
        defer { fclose(f) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = fread(&chunk, 1, chunk.count, f)
            if n > 0 { bytes.append(contentsOf: chunk[0..<n]) }
            if n < chunk.count { break }
            if bytes.count > maxTextFileBytes { return .failure(.tooLarge) }
        }
        if ferror(f) != 0 { return .failure(.system(errno: errno)) }
        return .success(String(decoding: bytes, as: UTF8.self))
    }
}

/// A TOML table with the key path it sits at, for typed reads that fail with the file and key named. A value
/// of the wrong type (or a duration or path that does not parse) is recorded in `problems` and read as absent,
/// so reading goes on and every such mistake is reported; other mistakes are thrown by the caller.
struct TableReader {
    let table: TOMLTable
    let path: String
    let file: String
    let base: String
    let problems: ConfigProblems

    var keys: [String] { table.keys }

    func keyPath(_ key: String) -> String { path.isEmpty ? key : "\(path).\(key)" }

    func error(_ key: String, _ message: String) -> ConfigError {
        ConfigError(file: file, key: keyPath(key), message: message)
    }

    /// Records every key not in `allowed`, with the nearest allowed one when a typo is likely.
    func allowOnly(_ allowed: Set<String>) throws {
        // TOMLKit's `keys` copies every key into memory it never frees: when the table holds only allowed keys
        // (counting them is enough), it is not called.
        var present = 0
        for key in allowed where table.contains(key: key) { present += 1 }
        if present == table.count { return }
        for key in table.keys.sorted() where !allowed.contains(key) {
            let hint = NearestKey.suggestion(for: key, among: allowed).map { "did you mean `\($0)`? " } ?? ""
            var unknown = error(key, "unknown key; \(hint)expected one of: \(allowed.sorted().joined(separator: ", "))")
            unknown.unknownKey = true
            problems.record(unknown)
        }
    }

    private func typeName(_ value: TOMLValueConvertible) -> String {
        switch value.type {
        case .string: return "a string"
        case .int: return "an integer"
        case .double: return "a number"
        case .bool: return "a boolean"
        case .table: return "a table"
        case .array: return "an array"
        default: return "a date or time"
        }
    }

    /// Records the mistake at `key` and reads the value as absent.
    private func wrong<T>(_ key: String, _ message: String) -> T? {
        problems.record(error(key, message))
        return nil
    }

    func string(_ key: String) throws -> String? {
        guard let value = table[key] else { return nil }
        guard let s = value.string else { return wrong(key, "expected a string, got \(typeName(value))") }
        return s
    }

    func int(_ key: String) throws -> Int? {
        guard let value = table[key] else { return nil }
        guard let i = value.int else { return wrong(key, "expected an integer, got \(typeName(value))") }
        return i
    }

    func secretKeysPresent(_ keys: [String]) throws -> Bool {
        keys.contains { table[$0] != nil }
    }

    func bool(_ key: String) throws -> Bool? {
        guard let value = table[key] else { return nil }
        guard let b = value.bool else { return wrong(key, "expected true or false, got \(typeName(value))") }
        return b
    }

    func duration(_ key: String) throws -> TimeSpan? {
        guard let value = table[key] else { return nil }
        if value.int != nil || value.double != nil {
            return wrong(key, "durations are strings with a unit: write \(key) = \"\(value.int.map(String.init) ?? "5")s\" "
                         + "(also \"250ms\", \"2m\", \"1h\"), got \(typeName(value))")
        }
        guard let text = try string(key) else { return nil }
        guard let span = TimeSpan.parse(text), span.milliseconds > 0 else {
            return wrong(key, "expected a positive duration such as \"250ms\", \"5s\", \"2m\" or \"1h\", got \"\(text)\"")
        }
        return span
    }

    /// The file path of a key that holds a credential or names where one is kept (a password file, the local CA's
    /// key), resolved as `path` does; a value holding a PIN, or shaped like a URI, is refused without quoting it
    /// (`CredentialValue`). `what` says what is expected.
    func credentialPath(_ key: String, expected what: String) throws -> String? {
        if let text = try string(key), let problem = CredentialValue.problem(text, tokenURIAllowed: false) {
            throw error(key, "expected \(what); \(problem)")
        }
        return try path(key)
    }

    /// The name of the environment variable a secret is read from, refused without quoting it when it is not one.
    func credentialVariable(_ key: String) throws -> String? {
        guard let text = try string(key) else { return nil }
        guard !text.isEmpty else { throw error(key, "expected the name of an environment variable") }
        if let problem = CredentialValue.variableNameProblem(text) {
            throw error(key, "expected the name of an environment variable; \(problem)")
        }
        return text
    }

    /// A file path, resolved against the config file's folder.
    func path(_ key: String) throws -> String? {
        guard let text = try string(key) else { return nil }
        guard !text.isEmpty else { return wrong(key, "expected a file path, got an empty string") }
        return resolve(text)
    }

    /// `path` against the config file's folder, spelled the short way (`FilePathSpelling`).
    func resolve(_ path: String) -> String {
        FilePathSpelling.normalised(path.hasPrefix("/") ? path : "\(base)/\(path)")
    }

    func stringArray(_ key: String) throws -> [String]? {
        guard let value = table[key] else { return nil }
        guard let array = value.array else { return wrong(key, "expected an array of strings, got \(typeName(value))") }
        var strings: [String] = []
        for (i, element) in array.enumerated() {
            guard let s = element.string else { return wrong("\(key)[\(i + 1)]", "expected a string, got \(typeName(element))") }
            strings.append(s)
        }
        return strings
    }

    func table(_ key: String) throws -> TableReader? {
        guard let value = table[key] else { return nil }
        guard let t = value.table else { return wrong(key, "expected a table, got \(typeName(value))") }
        return TableReader(table: t, path: keyPath(key), file: file, base: base, problems: problems)
    }

    /// `[[key]]` entries, each with a 1-based index in its key path.
    func arrayOfTables(_ key: String) throws -> [TableReader] {
        guard let value = table[key] else { return [] }
        guard let array = value.array else {
            problems.record(error(key, "expected [[\(keyPath(key))]] tables, got \(typeName(value))"))
            return []
        }
        var tables: [TableReader] = []
        for (i, element) in array.enumerated() {
            guard let t = element.table else {
                problems.record(error("\(key)[\(i + 1)]", "expected a table, got \(typeName(element))"))
                continue
            }
            tables.append(TableReader(table: t, path: "\(keyPath(key))[\(i + 1)]", file: file, base: base, problems: problems))
        }
        return tables
    }
}
