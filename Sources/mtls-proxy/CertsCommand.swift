import ArgumentParser
import ProxyConfig
import ProxyServer
import Reports

struct Certs: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show or export the certificates an identity presents, for a service's allowlist.",
        usage: """
        mtls-proxy certs [--config <file>] [<identity>]
                         [--pem] [--all | --staged | --serial <hex>]
                         [--ics | --html | --format text|json]
        """,
        discussion: """
        Without --pem, a summary with each certificate's state: active, staged (and when it takes over), \
        superseded (valid, but another is presented) or expired. With --pem, exactly the PEM of the \
        identity's active certificate (leaf first, then its chain), ready to upload or redirect into a file; \
        with --all, of every configured certificate; with --staged, of the staged ones only (next year's, to \
        upload before it takes over); with --serial, of the one with that serial number (hex, any case, \
        colons allowed). Private keys are never printed.

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

    @Flag(help: "Only the staged certificates: not valid yet, or waiting to take over.")
    var staged = false

    @Option(help: ArgumentHelp("Only the certificate with this serial number (hex, any case, colons allowed).", valueName: "hex"))
    var serial: String?

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
        if [all, staged, serial != nil].filter({ $0 }).count > 1 {
            throw ValidationError("--all, --staged and --serial are alternatives: choose one")
        }
        if (staged || serial != nil) && (ics || html || format == .json) {
            throw ValidationError("--staged and --serial choose what the summary or --pem shows; --ics, --html and --format json show every certificate")
        }
        if let serial, SerialNumber.canonical(serial) == nil {
            throw ValidationError("--serial takes a serial number in hex (as openssl x509 -serial prints it; colons allowed), not \"\(serial)\"")
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
        } else if pem && names.count > 1 && serial == nil {
            printError("mtls-proxy: name the identity to export (\(names.joined(separator: ", ")))")
            throw ExitCode(1)
        }
        let now = currentEpochSeconds()
        let identities = config.identities.filter { names.contains($0.name) }
        if format == .json {
            try RuntimeReport.printJSON(CertsReport(
                generatedAt: UTCTime.rfc3339(now), config: config.file,
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
                all.append(ExpiryCalendar.localCAEvent(facts: CertificateFacts(ca.certificate), file: file, now: now))
            }
            print(ICalendar.render(all, stamp: now), terminator: "")
            return
        }
        var serialFound = false
        var printedLeaves = Set<String>()
        var stagedFound = false
        for name in names {
            let credentials = runtime.credentials[name] ?? []
            let validity = credentials.map(\.validity)
            let prefer = config.identity(named: name)?.prefer ?? .newest
            let status = runtime.status(identity: name, at: now)
            let states = credentials.indices.map { CertificateStateText(of: $0, validity, status: status, prefer: prefer, now: now) }
            let active = status.active
            let chosen: [Int]
            if let serial {
                let wanted = SerialNumber.canonical(serial)
                chosen = credentials.indices.filter { SerialNumber.canonical(credentials[$0].leaf.serialHex) == wanted }
                if chosen.isEmpty { continue }
                serialFound = true
            } else if staged {
                chosen = credentials.indices.filter { states[$0].word == "staged" }
                // Named, an identity without one is an error; over every identity, those without one are left out.
                if chosen.isEmpty && identity == nil { continue }
                guard !chosen.isEmpty else {
                    printError("mtls-proxy: identity \(name) has no staged certificate (one not valid yet, or waiting to take over); certs \(name) --all lists its certificates")
                    throw ExitCode(1)
                }
                stagedFound = true
            } else {
                chosen = all ? Array(credentials.indices) : (active.map { [$0] } ?? [])
            }
            if pem {
                guard !chosen.isEmpty else {
                    printError("mtls-proxy: identity \(name) has no currently valid certificate; --all exports every configured one")
                    throw ExitCode(3)
                }
                // The same certificate configured twice (for two identities, say) is printed once.
                for i in chosen where printedLeaves.insert(credentials[i].leaf.sha256Fingerprint).inserted {
                    for certificate in credentials[i].chain { print(certificate.pem, terminator: "") }
                }
                continue
            }
            print("identity \(name)")
            for i in chosen.isEmpty ? Array(credentials.indices) : chosen {
                let leaf = credentials[i].leaf
                print("  #\(i + 1) \(states[i].full)  \(leaf.subject)")
                print("      serial \(leaf.serialHex)")
                print("      valid \(formatDate(leaf.notBefore)) to \(formatDate(leaf.notAfter)) (\(daysLeftPhrase(leaf.notAfter - now)))")
                print("      sha256 \(leaf.sha256Fingerprint)")
                print("      file \(PathDisplay(configPath: config.file).path(credentials[i].source.cert))")
            }
            if active == nil { print("  no currently valid certificate") }
        }
        if staged && identity == nil && !stagedFound {
            printError("mtls-proxy: no identity has a staged certificate (one not valid yet, or waiting to take over); certs --all lists every certificate")
            throw ExitCode(1)
        }
        if let serial, !serialFound {
            let known = names.flatMap { name in
                (runtime.credentials[name] ?? []).enumerated().map { "\($1.leaf.serialHex) (\(name) #\($0 + 1))" }
            }
            let whose = identity.map { "of identity \($0)" } ?? "configured"
            printError("mtls-proxy: no certificate \(whose) has serial \(serial); the serials: \(known.joined(separator: ", "))")
            throw ExitCode(1)
        }
    }
}

/// Certificate serial numbers as people type them: hex in any case, with or without colons, leading zeros
/// or a 0x prefix. The canonical form is upper-case hex without leading zeros ("0" for zero).
enum SerialNumber {
    static func canonical(_ text: String) -> String? {
        var hex = Substring(text.filter { $0 != ":" })
        if hex.hasPrefix("0x") || hex.hasPrefix("0X") { hex = hex.dropFirst(2) }
        guard !hex.isEmpty, hex.count <= 128, hex.allSatisfy({ $0.isHexDigit && $0.isASCII }) else { return nil }
        let trimmed = hex.drop { $0 == "0" }
        return trimmed.isEmpty ? "0" : trimmed.uppercased()
    }
}
