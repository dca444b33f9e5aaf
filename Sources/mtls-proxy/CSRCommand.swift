import ArgumentParser
import Foundation
import ProxyConfig
import ProxyServer
import Reports
import TLS

struct CSR: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "csr",
        abstract: "Make a new key and a certificate signing request to renew an identity.",
        usage: """
        mtls-proxy csr [--config <file>] <identity> --out <dir>
                       [--rsa <bits> | --key-uri <uri>]
        """,
        discussion: """
        Writes DIR/IDENTITY-DATE.key (mode 600) and DIR/IDENTITY-DATE.csr with the subject of the identity's \
        active certificate, and prints the config lines that stage the certificate once the CA has issued it. \
        With --key-uri, the request is signed by an existing key on a PKCS#11 token (RFC 7512 URI with \
        module-path and pin-source), which never leaves it: only DIR/IDENTITY-DATE.csr is written. \
        Existing files are never overwritten.
        """)

    @OptionGroup var options: ConfigOption

    @Argument(help: "The identity to renew.")
    var identity: String

    @Option(help: ArgumentHelp("The folder for the key and the request (made if missing, mode 700).", valueName: "dir"))
    var out: String

    @Option(help: ArgumentHelp("Make an RSA key of this size (2048 or 3072) instead of EC P-256.", valueName: "bits"))
    var rsa: Int?

    @Option(help: ArgumentHelp("Sign the request with this key on a PKCS#11 token instead of making a key file (pkcs11:...?module-path=...&pin-source=file:...).", valueName: "uri"))
    var keyURI: String?

    func validate() throws {
        if let keyURI {
            if rsa != nil { throw ValidationError("--rsa makes a new key file; --key-uri uses a key already on a token: not both") }
            if case .failure(let problem) = TokenKeyURI.parse(keyURI) { throw ValidationError("--key-uri: \(problem.description)") }
        }
        if let rsa, !KeyAlgorithm.rsaSizes.contains(rsa) {
            throw ValidationError("--rsa takes 2048 or 3072, not \(rsa)")
        }
    }

    func run() throws {
        let runtime = try options.loadRuntime()
        let config = runtime.config
        guard let credentials = runtime.credentials[identity], !credentials.isEmpty else {
            printError("mtls-proxy: no identity \"\(identity)\" in \(config.file); defined: \(config.identities.map(\.name).joined(separator: ", "))")
            throw ExitCode(1)
        }
        let now = currentEpochSeconds()
        // The subject to renew: the active certificate's, else the most recently issued one's.
        let template: Credential
        if let active = runtime.activeCertificate(identity: identity, at: now) {
            template = credentials[active]
        } else {
            template = credentials.max { $0.leaf.notBefore < $1.leaf.notBefore }!
            printError("mtls-proxy: identity \(identity) has no currently valid certificate; using the subject of #\(credentials.firstIndex { $0 === template }! + 1)")
        }
        let algorithm: KeyAlgorithm = rsa.map { .rsa(bits: $0) } ?? .ecP256
        let tokenKey = keyURI.flatMap { try? TokenKeyURI.parse($0).get() }
        let tokenAlgorithm = tokenKey.flatMap { try? PrivateKey.onToken($0).algorithm }
        var folder = ConfigLoader.absolutePath(out)
        while folder.count > 1 && folder.hasSuffix("/") { folder.removeLast() }  // --out certs/ is certs
        let base = "\(folder)/\(identity)-\(UTCTime.compactDate(now))"
        let keyPath = base + ".key", csrPath = base + ".csr", certPath = base + ".pem"
        do {
            try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true,
                                                    attributes: [.posixPermissions: 0o700])
            for path in (tokenKey == nil ? [keyPath, csrPath] : [csrPath]) where FileManager.default.fileExists(atPath: path) {
                throw RenewalFileExists(path: path)
            }
            if let tokenKey {
                let key = try PrivateKey.onToken(tokenKey)
                try CertificateRequest.writeNewFile(try CertificateRequest.make(subjectOf: template.leaf, key: key), to: csrPath, mode: 0o644)
            } else {
                let key = try PrivateKey.generate(algorithm)
                let request = try CertificateRequest.make(subjectOf: template.leaf, key: key)
                try CertificateRequest.writeNewFile(key.pkcs8PEM, to: keyPath, mode: 0o600)
                try CertificateRequest.writeNewFile(request, to: csrPath, mode: 0o644)
            }
        } catch {
            printError("mtls-proxy: \(error)")
            throw ExitCode(1)
        }
        // A token key stays on the token: the staged certificate names its URI where a file key names its path.
        let (keyLine, stagedKey) = tokenKey.map { ("\($0)  (on the token, \(tokenAlgorithm ?? "key"))", "\($0)") }
            ?? ("\(keyPath)  (\(algorithm), mode 600)", keyPath)
        print("""
        private key  \(keyLine)
        request      \(csrPath)
        subject      \(template.leaf.subject)

        Send the request to the CA that issued \(identity)'s certificate (issuer \(template.leaf.issuer)).
        Save the certificate it returns as \(certPath), then stage it by
        adding these lines to \(ConfigLoader.absolutePath(config.file)):

        [[identities.\(identity).certificates]]
        cert = "\(certPath)"
        key = "\(stagedKey)"

        `mtls-proxy check` then shows it staged; the proxy presents it from its notBefore on
        (prefer = "newest", the default) and reloads by itself when the config changes.
        """)
    }
}

struct RenewalFileExists: Error, CustomStringConvertible {
    var path: String
    var description: String { "\(path) already exists: it is never overwritten (move it away, or choose another --out)" }
}
