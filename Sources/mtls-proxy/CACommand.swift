import ArgumentParser
import Foundation
import ProxyConfig
import TLS

struct CA: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ca",
        abstract: "The local CA for intercepting HTTPS_PROXY tunnels to mTLS routes ([intercept] in the config).",
        discussion: "`mtls-proxy ca init` makes it; `mtls-proxy ca --pem` prints the certificate to install in the workflow's trust store.",
        subcommands: [Init.self])

    @OptionGroup var options: ConfigOption

    @Flag(help: "Print the local CA certificate (PEM).")
    var pem = false

    func run() throws {
        let settings = try Self.settings(options)
        let ca: LocalCA
        do {
            ca = try LocalCA.load(certPath: settings.caCert, keyPath: settings.caKey)
        } catch {
            printError("mtls-proxy: \(error) (make it with `mtls-proxy ca init`)")
            throw ExitCode(1)
        }
        if pem {
            print(ca.certificate.pem, terminator: "")
        } else {
            print("local CA \(PathDisplay(configPath: options.path).path(settings.caCert))")
            print("  subject \(ca.certificate.subject)")
            print("  valid   \(formatDate(ca.certificate.notBefore)) to \(formatDate(ca.certificate.notAfter))")
            print("  sha256  \(ca.certificate.sha256Fingerprint)")
        }
    }

    static func settings(_ options: ConfigOption) throws -> InterceptSettings {
        guard let settings = try options.loadConfiguration().intercept else {
            printError("mtls-proxy: \(options.path) has no [intercept] section (ca_cert, ca_key)")
            throw ExitCode(1)
        }
        return settings
    }

    struct Init: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Make the local CA at [intercept] ca_cert and ca_key (the key readable only by its owner).")

        @OptionGroup var options: ConfigOption

        @Option(help: "The CA's validity in days.")
        var days = 825

        func run() throws {
            let settings = try CA.settings(options)
            let paths = PathDisplay(configPath: options.path)
            for path in [settings.caCert, settings.caKey] where FileManager.default.fileExists(atPath: path) {
                printError(paths.text("mtls-proxy: \(path) already exists: the local CA is made once; `mtls-proxy ca --config \(shellWord(options.path))` shows it. To make a new one, remove \(settings.caCert) and \(settings.caKey) first, then give the workflows the new certificate (mtls-proxy ca --config \(shellWord(options.path)) --pem)."))
                throw ExitCode(1)
            }
            do {
                // The folders of ca_cert and ca_key (often a state/ folder that does not exist yet), as `csr`
                // makes its --out folder: readable only by the owner, since one holds the CA's key.
                for path in [settings.caKey, settings.caCert] {
                    let folder = (path as NSString).deletingLastPathComponent
                    if !folder.isEmpty && !FileManager.default.fileExists(atPath: folder) {
                        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true,
                                                                attributes: [.posixPermissions: 0o700])
                    }
                }
                let ca = try LocalCA.create(certPath: settings.caCert, keyPath: settings.caKey, days: days)
                print(paths.text("made local CA \(settings.caCert) (key \(settings.caKey), mode 600)"))
                print("  sha256 \(ca.certificate.sha256Fingerprint)")
                print("install it in the workflow's trust store: mtls-proxy ca --config \(shellWord(options.path)) --pem > mtls-proxy-ca.pem")
            } catch {
                printError("mtls-proxy: \(error)")
                throw ExitCode(1)
            }
        }
    }
}
