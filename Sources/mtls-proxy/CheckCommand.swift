import ArgumentParser
import ProxyConfig
import ProxyServer
import Reports
import TLS

struct Check: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Validate the config, load every certificate and key, show when each expires.",
        usage: """
        mtls-proxy check [--config <file>] [--warn-days <days>]
                         [--wide | --format text|json]
                         [--fail-on warning|error]
        """,
        discussion: """
        Every mistake in the config is reported (file:line: key: message), not only the first. The \
        certificate table fits 80 columns, each certificate's details under its row; --wide prints one row \
        per certificate with every column.

        Exit codes, for cron and CI (the same with --format json):
          0  the config is valid and no certificate is about to expire
          1  the config, a certificate or a key could not be loaded
          2  an identity's active certificate expires within --warn-days
             and no successor is staged
          3  an identity has no currently valid certificate

        With --fail-on error, for start-up gates such as the systemd unit, only 1
        counts: 2 and 3 become 0 (the report still says why), as `run` serves.
        """)

    @OptionGroup var options: ConfigOption

    @Option(help: ArgumentHelp("Warn when an active certificate expires within this many days with no successor staged.",
                               valueName: "days"))
    var warnDays: Int = 30

    @Option(help: "text (a table) or json (for scripts; schema in docs/check-json.md).")
    var format: OutputFormat = .text

    @Flag(help: "The certificate table with every column on one row per certificate (wider than 80 columns).")
    var wide = false

    @Option(help: ArgumentHelp("warning: exit 1, 2 or 3 on any finding (cron, monitoring). error: exit non-zero only when `run` would refuse the config (start-up gates such as the systemd unit).",
                               valueName: "level"))
    var failOn: Verdict.FailOn = .warning

    func validate() throws {
        // The same range as [proxy] warn_days.
        guard (0...3650).contains(warnDays) else { throw ValidationError("--warn-days takes 0 to 3650 days, not \(warnDays)") }
        if wide && format == .json { throw ValidationError("--wide is for the text table; --format json has every field already") }
    }

    func run() throws {
        if format == .json {
            let now = currentEpochSeconds()
            switch options.runtime() {
            case .failure(let error):
                try RuntimeReport.printJSON(RuntimeReport.failure(error, warnDays: warnDays, now: now, failOn: failOn))
                throw ExitCode(1)
            case .success(let runtime):
                let report = RuntimeReport.check(runtime, identities: runtime.config.identities, warnDays: warnDays, now: now,
                                                 failOn: failOn)
                try RuntimeReport.printJSON(report)
                if report.verdict.exitCode != 0 { throw ExitCode(Int32(report.verdict.exitCode)) }
                return
            }
        }
        let runtime = try options.loadRuntime()
        let config = runtime.config
        let now = currentEpochSeconds()
        let paths = PathDisplay(configPath: config.file)
        print("config \(config.file): OK")
        print("listen \(config.proxy.listen), hosts no route names: \(config.proxy.unmatched.rawValue), \(config.routes.count) route(s)")

        var verdicts: [String] = []
        var worst = IdentityStatus.Health.ok
        var certificates: [CertificateLine] = []
        for identity in config.identities {
            let credentials = runtime.credentials[identity.name] ?? []
            let status = runtime.status(identity: identity.name, at: now, warnDays: warnDays)
            let validity = credentials.map(\.validity)
            worst = max(worst, status.health)
            for (i, credential) in credentials.enumerated() {
                certificates.append(CertificateLine(
                    identity: identity.name, index: i, credential: credential,
                    state: CertificateStateText(of: i, validity, status: status, prefer: identity.prefer, now: now)))
            }
            verdicts.append(verdict(identity.name, status, credentials: credentials.map(\.leaf.serialHex)))
        }
        if config.identities.isEmpty {
            print("\nno identities configured")
        } else {
            print("")
            print(wide ? Self.wideTable(certificates, now: now, paths: paths) : Self.foldedTable(certificates, now: now, paths: paths))
            print("")
            for line in verdicts { print(wide ? line : Self.foldedVerdict(line)) }
        }
        if let ca = runtime.localCA {
            let cert = ca.certificate
            print("local CA \(paths.path(config.intercept?.caCert ?? "")): valid until \(formatDate(cert.notAfter)) (\(daysLeftPhrase(cert.notAfter - now)))")
        }
        for warning in runtime.keyPermissionWarnings { print("warning: \(paths.text(warning))") }
        // Named, not counted: an identity kept for a route to come is not a failure (the exit code stays).
        for name in config.unusedIdentities { print("warning: \(unusedIdentityWarning(name))") }
        print("")
        for route in config.routes {
            var line = "\(route.label): \(route.action)"
            if let p = route.port { line += ", port \(p)" }
            if let p = route.pathPrefix { line += ", path \(p)" }
            if let c = route.connect { line += ", connect \(c)" }
            if route.action != .deny && route.httpProtocol != .http11 { line += ", protocol \(route.httpProtocol.rawValue)" }
            print(line)
            guard route.action != .deny else { continue }
            printTrust(route.trust, runtime: runtime, now: now)
        }
        let exitCode = Verdict(worst: worst, warnDays: warnDays, failOn: failOn).exitCode
        if exitCode != 0 { throw ExitCode(Int32(exitCode)) }
    }

    /// A route's trust beyond the defaults: pin-only named plainly, pins, revocation and each CRL's state.
    func printTrust(_ t: TrustSettings, runtime: ProxyRuntime, now: Int) {
        if t.verify == .pinOnly {
            print("  PIN-ONLY: no CA chain, host name or dates are checked; only the server's key against \(t.pins.count) pin(s)")
        } else if !t.pins.isEmpty {
            print("  pins: \(TrustDescription.pins(t))")
        }
        if t.requireOCSPStaple { print("  ocsp staple: \(TrustDescription.ocsp(t))") }
        if t.revocation != .off {
            print("  revocation: \(TrustDescription.revocation(t))")
            for crl in runtime.crls(for: t) {
                let next = crl.nextUpdate.map { formatDate($0) } ?? "none"
                let state = crl.isStale(at: now) ? "STALE since \(next)" : "next update \(next)"
                print("    CRL \(crl.file): issuer \(crl.issuer), \(crl.revokedCount) revoked, \(state)")
            }
        }
        if t.minTLS != .tls12 || t.maxTLS != .tls13 || t.ciphers != TLSPolicyDefaults.ciphers || t.cipherSuites != TLSPolicyDefaults.cipherSuites
            || t.groups != TLSPolicyDefaults.groups || !t.signatureAlgorithms.isEmpty {
            print("  tls policy: \(TrustDescription.policy(t))")
        }
    }

    struct CertificateLine {
        var identity: String
        var index: Int
        var credential: Credential
        var state: CertificateStateText
    }

    /// One row per certificate, every column: as wide as its longest subject, issuer and path.
    static func wideTable(_ certificates: [CertificateLine], now: Int, paths: PathDisplay) -> String {
        var rows = [["IDENTITY", "CERT", "STATE", "NOT BEFORE", "NOT AFTER", "DAYS LEFT", "SERIAL", "SUBJECT", "ISSUER", "SHA-256", "FILE"]]
        for c in certificates {
            let leaf = c.credential.leaf
            rows.append([c.identity, "#\(c.index + 1)", c.state.full, formatDate(leaf.notBefore), formatDate(leaf.notAfter),
                         daysLeft(leaf.notAfter - now), leaf.serialHex, leaf.subject, leaf.issuer, leaf.sha256Fingerprint,
                         paths.path(c.credential.source.cert)])
        }
        return table(rows)
    }

    /// Within 80 columns: a row per certificate with what changes (state, expiry), and under it the details,
    /// each long value folded onto the lines below it.
    static func foldedTable(_ certificates: [CertificateLine], now: Int, paths: PathDisplay) -> String {
        var rows = [["IDENTITY", "CERT", "STATE", "NOT AFTER", "DAYS LEFT"]]
        for c in certificates {
            let leaf = c.credential.leaf
            rows.append([c.identity, "#\(c.index + 1)", c.state.word, formatDate(leaf.notAfter), daysLeft(leaf.notAfter - now)])
        }
        let lines = table(rows).split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        var out = [lines[0]]
        for (n, (c, row)) in zip(certificates, lines.dropFirst()).enumerated() {
            let leaf = c.credential.leaf
            if n > 0 { out.append("") }  // a blank line between one certificate's details and the next row
            out.append(row)
            var details: [(String, String)] = []
            if let detail = c.state.detail { details.append(("state", "\(c.state.word), \(detail)")) }
            details += [("not before", formatDate(leaf.notBefore)), ("serial", leaf.serialHex), ("subject", leaf.subject),
                        ("issuer", leaf.issuer), ("sha256", leaf.sha256Fingerprint), ("file", paths.path(c.credential.source.cert))]
            for (label, value) in details {
                out += foldedField(label, value, indent: 4, labelWidth: 12)
            }
        }
        return out.joined(separator: "\n")
    }

    /// A verdict within 80 columns: each clause after the first ("; #2 takes over at ...") on a line of its own,
    /// indented, and a clause still too long broken between words.
    static func foldedVerdict(_ line: String, width: Int = 80) -> String {
        var out: [String] = []
        for (i, clause) in line.components(separatedBy: "; ").enumerated() {
            var rest = Substring(i == 0 ? clause : "  " + clause)
            while rest.count > width, let space = rest.prefix(width + 1).lastIndex(of: " "),
                  rest[rest.startIndex..<space].contains(where: { $0 != " " }) {
                out.append(String(rest[..<space]))
                rest = "    " + rest[rest.index(after: space)...]
            }
            out.append(String(rest))
        }
        return out.joined(separator: "\n")
    }

    func verdict(_ name: String, _ status: IdentityStatus, credentials serials: [String]) -> String {
        var line: String
        switch status.health {
        case .noValidCertificate:
            line = "\(name): NO VALID CERTIFICATE: its routes answer 502 until one is staged"
        case .expiringWithoutSuccessor:
            line = "\(name): WARNING: presents #\(status.active! + 1) (serial \(serials[status.active!])), which expires in \(daysLeft(status.secondsLeft ?? 0)) days, and no successor is staged"
        case .ok:
            line = "\(name): presents #\(status.active! + 1) (serial \(serials[status.active!])), \(daysLeft(status.secondsLeft ?? 0)) days left"
        }
        if let next = status.next {
            if let index = next.index {
                line += "; #\(index + 1) takes over at \(formatDate(next.at))"
            } else {
                line += "; nothing valid after \(formatDate(next.at))"
            }
        }
        return line
    }
}

extension Verdict.FailOn: ExpressibleByArgument {}
