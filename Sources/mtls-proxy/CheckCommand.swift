import ArgumentParser
import ProxyConfig
import ProxyServer
import Reports

struct Check: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Validate the config, load every certificate and key, show when each expires.",
        usage: """
        mtls-proxy check [--config <file>] [--warn-days <days>]
                         [--format text|json] [--fail-on warning|error]
        """,
        discussion: """
        Every mistake in the config is reported (file:line: key: message), not only the first.

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

    @Option(help: ArgumentHelp("warning: exit 1, 2 or 3 on any finding (cron, monitoring). error: exit non-zero only when `run` would refuse the config (start-up gates such as the systemd unit).",
                               valueName: "level"))
    var failOn: Verdict.FailOn = .warning

    func validate() throws {
        // The same range as [proxy] warn_days.
        guard (0...3650).contains(warnDays) else { throw ValidationError("--warn-days takes 0 to 3650 days, not \(warnDays)") }
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
        print("config \(config.file): OK")
        print("listen \(config.proxy.listen), hosts no route names: \(config.proxy.unmatched.rawValue), \(config.routes.count) route(s)")

        var rows: [[String]] = [["IDENTITY", "CERT", "STATE", "NOT BEFORE", "NOT AFTER", "DAYS LEFT", "SERIAL", "SUBJECT", "ISSUER", "SHA-256"]]
        var verdicts: [String] = []
        var worst = IdentityStatus.Health.ok
        for identity in config.identities {
            let credentials = runtime.credentials[identity.name] ?? []
            let status = runtime.status(identity: identity.name, at: now, warnDays: warnDays)
            worst = max(worst, status.health)
            for (i, credential) in credentials.enumerated() {
                let leaf = credential.leaf
                var state: String
                if i == status.active { state = "active" }
                else if i == status.next?.index, let at = status.next?.at { state = "next from \(formatDate(at))" }
                else if leaf.notAfter <= now { state = "expired" }
                else if leaf.notBefore > now { state = "staged" }
                else { state = "valid" }
                rows.append([identity.name, "#\(i + 1)", state, formatDate(leaf.notBefore), formatDate(leaf.notAfter),
                             daysLeft(leaf.notAfter - now), leaf.serialHex, leaf.subject, leaf.issuer, leaf.sha256Fingerprint])
            }
            verdicts.append(verdict(identity.name, status, credentials: credentials.map(\.leaf.serialHex)))
        }
        if config.identities.isEmpty {
            print("\nno identities configured")
        } else {
            print("")
            print(table(rows))
            print("")
            for line in verdicts { print(line) }
        }
        if let ca = runtime.localCA {
            let cert = ca.certificate
            print("local CA \(config.intercept?.caCert ?? ""): valid until \(formatDate(cert.notAfter)) (\(daysLeftPhrase(cert.notAfter - now)))")
        }
        for warning in runtime.keyPermissionWarnings { print("warning: \(warning)") }
        print("")
        for route in config.routes {
            var line = "\(route.label): \(route.action)"
            if let p = route.port { line += ", port \(p)" }
            if let p = route.pathPrefix { line += ", path \(p)" }
            if let c = route.connect { line += ", connect \(c)" }
            print(line)
        }
        let exitCode = Verdict(worst: worst, warnDays: warnDays, failOn: failOn).exitCode
        if exitCode != 0 { throw ExitCode(Int32(exitCode)) }
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
