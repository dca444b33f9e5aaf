import ArgumentParser
import ProxyConfig
import ProxyServer
import Reports

struct Certs: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show or export the certificates an identity presents, for a service's allowlist.",
        usage: """
        mtls-proxy certs [--config <file>] [<identity>]
                         [--pem [--all] | --ics | --html | --format text|json]
        """,
        discussion: """
        Without --pem, a summary. With --pem, exactly the PEM of the identity's active certificate (leaf first, \
        then its chain), ready to upload or redirect into a file; with --all, of every configured certificate. \
        Private keys are never printed.

        With --ics, an iCalendar file (RFC 5545) with an event at each certificate's expiry and at each staged \
        certificate's takeover, each with reminders 30 and 7 days before: \
        mtls-proxy certs --ics > expiry.ics, then import it.

        With --html, the admin listener's status page without its live figures, from the config alone: every \
        identity's certificates on a timeline, and the routes (mtls-proxy certs --html > certificates.html). \
        See docs/status-page.md.
        """)

    @OptionGroup var options: ConfigOption

    @Argument(help: "The identity (default: every identity; --pem needs one when there are several).")
    var identity: String?

    @Flag(help: "Print PEM instead of a summary.")
    var pem = false

    @Flag(help: "Every configured certificate, not only the active one.")
    var all = false

    @Flag(help: "Print an iCalendar file of expiry and takeover dates, with reminders.")
    var ics = false

    @Flag(help: "Print the status page (HTML) of the identities and routes, without live figures.")
    var html = false

    @Option(help: "text (a summary) or json (for scripts; schema in docs/check-json.md).")
    var format: OutputFormat = .text

    func validate() throws {
        if [pem, ics, html, format == .json].filter({ $0 }).count > 1 {
            throw ValidationError("--pem, --ics, --html and --format json are alternatives: choose one")
        }
        if html && identity != nil {
            throw ValidationError("--html shows every identity: drop the identity name")
        }
    }

    func run() throws {
        let runtime = try options.loadRuntime()
        let config = runtime.config
        var names = config.identities.map(\.name)
        if let identity {
            guard names.contains(identity) else {
                printError("mtls-proxy: no identity \"\(identity)\" in \(config.file); defined: \(names.joined(separator: ", "))")
                throw ExitCode(1)
            }
            names = [identity]
        } else if pem && names.count > 1 {
            printError("mtls-proxy: name the identity to export (\(names.joined(separator: ", ")))")
            throw ExitCode(1)
        }
        let now = currentEpochSeconds()
        let identities = config.identities.filter { names.contains($0.name) }
        if format == .json {
            try RuntimeReport.printJSON(CertsReport(
                generatedAt: ReportTime.rfc3339(now), config: config.file,
                identities: identities.map { RuntimeReport.identity(runtime, $0, now: now, warnDays: config.proxy.warnDays) },
                localCA: RuntimeReport.localCA(runtime, now: now)))
            return
        }
        if html {
            print(StatusReport.page(runtime, now: now, live: nil), terminator: "")
            return
        }
        if ics {
            let events = identities.flatMap { identity in
                ExpiryCalendar.events(identity: identity.name, certificates: (runtime.credentials[identity.name] ?? []).map {
                    ExpiryCalendar.Certificate(identity: identity.name, facts: CertificateFacts($0.leaf), file: $0.source.cert)
                }, prefer: identity.prefer, now: now)
            }
            var all = events
            if identity == nil, let ca = runtime.localCA, let file = config.intercept?.caCert {
                all.append(ExpiryCalendar.localCAEvent(facts: CertificateFacts(ca.certificate), file: file))
            }
            print(ICalendar.render(all, stamp: now), terminator: "")
            return
        }
        for name in names {
            let credentials = runtime.credentials[name] ?? []
            let active = runtime.activeCertificate(identity: name, at: now)
            let chosen = all ? Array(credentials.indices) : (active.map { [$0] } ?? [])
            if pem {
                guard !chosen.isEmpty else {
                    printError("mtls-proxy: identity \(name) has no currently valid certificate; --all exports every configured one")
                    throw ExitCode(3)
                }
                for i in chosen {
                    for certificate in credentials[i].chain { print(certificate.pem, terminator: "") }
                }
                continue
            }
            print("identity \(name)")
            for i in chosen.isEmpty ? Array(credentials.indices) : chosen {
                let leaf = credentials[i].leaf
                print("  #\(i + 1)\(i == active ? " (active)" : "")  \(leaf.subject)")
                print("      serial \(leaf.serialHex)")
                print("      valid \(formatDate(leaf.notBefore)) to \(formatDate(leaf.notAfter)) (\(daysLeftPhrase(leaf.notAfter - now)))")
                print("      sha256 \(leaf.sha256Fingerprint)")
                print("      file \(credentials[i].source.cert)")
            }
            if active == nil { print("  no currently valid certificate") }
        }
    }
}
