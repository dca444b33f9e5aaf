import ProxyConfig
import TLS

/// What `/readyz?verbose` says about certificates, and which identities hold readiness back when
/// `[admin] ready_requires_valid_identities` is set.
enum ReadinessReport {
    /// One identity's line: `identity=NAME state=STATE ...`, key=value pairs for grep and log parsers.
    struct Line: Equatable {
        var identity: String
        var health: IdentityStatus.Health
        var serial: String?
        var notAfter: Int?
        var secondsLeft: Int?
        /// The next switch of the presented certificate: when, and to which serial (nil: to none).
        var nextSwitch: (at: Int, serial: String?)?
        var namedByRoute: Bool
        /// The active certificate's key when it is on a token: its object URI (no query, so no PIN source) and
        /// whether it signs (false from a failed signature until a retry succeeds).
        var token: (key: String, available: Bool)? = nil

        static func == (a: Line, b: Line) -> Bool { a.text == b.text }

        static func stateName(_ health: IdentityStatus.Health) -> String {
            switch health {
            case .ok: return "ok"
            case .expiringWithoutSuccessor: return "expiring_without_successor"
            case .noValidCertificate: return "no_valid_certificate"
            }
        }

        var text: String {
            var s = "identity=\(identity) state=\(Self.stateName(health))"
            if let serial { s += " serial=\(serial)" }
            if let notAfter { s += " not_after=\(UTCTime.iso8601(millis: notAfter * 1000))" }
            if let secondsLeft { s += " days_left=\(secondsLeft / 86_400)" }
            if let next = nextSwitch { s += " next_switch=\(UTCTime.iso8601(millis: next.at * 1000)) next_serial=\(next.serial ?? "none")" }
            s += " routed=\(namedByRoute ? "yes" : "no")"
            if let token { s += " key=\(token.key) token=\(token.available ? "available" : "unavailable")" }
            return s
        }
    }

    /// `?verbose` or `?verbose=1|true|yes` (any other value, or none, is the short answer).
    static func wantsVerbose(query: String?) -> Bool {
        guard let query else { return false }
        return query.split(separator: "&").contains { item in
            let parts = item.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            guard parts.first == "verbose" else { return false }
            return parts.count == 1 || ["", "1", "true", "yes"].contains(parts[1].lowercased())
        }
    }

    static func lines(_ runtime: ProxyRuntime, at now: Int) -> [Line] {
        let routed = runtime.config.routedIdentities
        return runtime.config.identities.map { identity in
            let status = runtime.status(identity: identity.name, at: now)
            let credentials = runtime.credentials[identity.name] ?? []
            let leaf = status.active.map { credentials[$0].leaf }
            let next = status.next.map { (at: $0.at, serial: $0.index.map { credentials[$0].leaf.serialHex }) }
            let signer = status.active.flatMap { credentials[$0].key.tokenSigner }
            return Line(identity: identity.name, health: status.health, serial: leaf?.serialHex, notAfter: leaf?.notAfter,
                        secondsLeft: status.secondsLeft, nextSwitch: next, namedByRoute: routed.contains(identity.name),
                        token: signer.map { ($0.keyLabel, $0.isAvailable) })
        }
    }

    static func identities(_ runtime: ProxyRuntime, at now: Int) -> String {
        lines(runtime, at: now).map { $0.text + "\n" }.joined() + revocation(runtime, at: now).map { $0 + "\n" }.joined()
    }

    /// One line per route that checks revocation: `route=route[N] revocation=MODE crls=N stale=N next_update=...`
    /// (the earliest nextUpdate of its CRLs). A stale CRL does not change readiness: soft mode allows, hard
    /// mode refuses per request, with its own Proxy-Status.
    static func revocation(_ runtime: ProxyRuntime, at now: Int) -> [String] {
        runtime.config.routes.filter { $0.trust.revocation != .off && $0.action != .deny }.map { route in
            let crls = runtime.crls(for: route.trust)
            var s = "route=route[\(route.index)] revocation=\(route.trust.revocation.rawValue) crls=\(crls.count) stale=\(crls.filter { $0.isStale(at: now) }.count)"
            if let next = crls.compactMap(\.nextUpdate).min() { s += " next_update=\(UTCTime.iso8601(millis: next * 1000))" }
            return s
        }
    }

    /// Identities a route names that have no valid certificate now, in config order.
    static func identitiesWithoutCertificate(_ runtime: ProxyRuntime, at now: Int) -> [String] {
        lines(runtime, at: now).filter { $0.namedByRoute && $0.health == .noValidCertificate }.map(\.identity)
    }
}
