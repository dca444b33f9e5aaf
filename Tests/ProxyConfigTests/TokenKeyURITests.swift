import Testing
@testable import ProxyConfig

/// RFC 7512 `pkcs11:` URIs for identity keys: module-path and pin-source honoured, pin-value refused.
@Suite struct TokenKeyURITests {
    @Test func parsesPathAndQueryAttributes() throws {
        let uri = try TokenKeyURI.parse("pkcs11:token=fusion;object=us-2026;type=private?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/mtls-proxy/us.pin").get()
        #expect(uri.objectURI == "pkcs11:token=fusion;object=us-2026;type=private")
        #expect(uri.modulePath == "/usr/lib/softhsm/libsofthsm2.so")
        #expect(uri.pinSource == .file("/etc/mtls-proxy/us.pin"))
        let env = try TokenKeyURI.parse("PKCS11:id=%01;type=private?pin-source=env:US_PIN&module-path=%2Fopt%2Fp11.so").get()
        #expect(env.pinSource == .environment("US_PIN"))
        #expect(env.modulePath == "/opt/p11.so")
        #expect(try TokenKeyURI.parse("pkcs11:object=k?pin-source=file:///run/pin").get().pinSource == .file("/run/pin"))
    }

    @Test func refusesSecretsAndMistakes() {
        #expect(TokenKeyURI.parse("pkcs11:object=k;pin-value=1234") == .failure(.pinValue))
        #expect(TokenKeyURI.parse("pkcs11:object=k?PIN-VALUE=1234") == .failure(.pinValue))
        #expect(TokenKeyURI.parse("pkcs11:token=fusion") == .failure(.noObject))
        #expect(TokenKeyURI.parse("pkcs11:object=k?module-path=libsofthsm2.so") == .failure(.relativeModulePath))
        #expect(TokenKeyURI.parse("pkcs11:object=k?pin-source=|/bin/echo 1234") == .failure(.badPinSource))
        #expect(TokenKeyURI.parse("pkcs11:object=k?pin-source=file:relative") == .failure(.badPinSource))
        #expect(TokenKeyURI.parse("pkcs11:object=%zz") == .failure(.badAttribute("object")))
        #expect(TokenKeyURI.parse("/etc/key.pem") == .failure(.notPKCS11))
        #expect(!TokenKeyURI.Problem.pinValue.description.contains("1234"))
    }

    @Test func identityKeysMayBeTokenURIs() throws {
        let c = try load("""
            [identities.us]
            cert = "us.pem"
            key = "pkcs11:token=fusion;object=us;type=private?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/us.pin"
            """)
        let source = c.identities[0].certificates[0]
        #expect(source.cert == "/etc/mtls-proxy/us.pem")
        #expect(source.key.hasPrefix("pkcs11:"))  // not resolved as a path
        #expect(source.tokenKey?.pinSource == .file("/etc/us.pin"))
        let e = configError("[identities.us]\ncert = \"us.pem\"\nkey = \"pkcs11:object=us;pin-value=1234\"\n")
        #expect(e?.key == "identities.us.key")
        #expect(e?.message.contains("pin-source") == true)
        let p = configError("[identities.us]\ncert = \"us.pem\"\nkey = \"pkcs11:object=us\"\nkey_password_file = \"x\"\n")
        #expect(p?.key == "identities.us.key_password_file")
    }

    @Test func identityCertificatesMayBeTokenURIsOfTypeCert() throws {
        let c = try load("""
            [identities.us]
            cert = "pkcs11:token=fusion;object=us;type=cert"
            key = "pkcs11:token=fusion;object=us;type=private?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/us.pin"
            """)
        let source = c.identities[0].certificates[0]
        #expect(source.cert == "pkcs11:token=fusion;object=us;type=cert")  // not resolved as a path
        let cert = try #require(source.tokenCert)
        #expect(cert.objectType == "cert")
        #expect(cert.modulePath == nil)
        let inherited = cert.inheriting(from: try #require(source.tokenKey))
        #expect(inherited.modulePath == "/usr/lib/softhsm/libsofthsm2.so")
        #expect(inherited.pinSource == .file("/etc/us.pin"))
        #expect(inherited.objectURI == "pkcs11:token=fusion;object=us;type=cert")
        let wrongType = configError("[identities.us]\ncert = \"pkcs11:object=us;type=private\"\nkey = \"us.key\"\n")
        #expect(wrongType?.key == "identities.us.cert")
        #expect(wrongType?.message.contains("type=cert") == true)
        let pin = configError("[identities.us]\ncert = \"pkcs11:object=us;type=cert;pin-value=1234\"\nkey = \"us.key\"\n")
        #expect(pin?.key == "identities.us.cert")
        #expect(pin?.message.contains("1234") == false)
    }

    @Test func providerKeysAndTheProvidersTheyNeed() throws {
        let c = try load("""
            [tls]
            providers = ["default", "tpm2"]
            [identities.us]
            cert = "us.pem"
            key = "store:handle:0x81000001"
            """)
        #expect(c.tlsProviders == ["default", "tpm2"])
        #expect(c.identities[0].certificates[0].storeKey == "handle:0x81000001")
        #expect(c.identities[0].certificates[0].key == "store:handle:0x81000001")  // not resolved as a path
        #expect(configError("[tls]\nproviders = [\"tpm2\"]\n")?.key == "tls.providers")
        #expect(configError("[tls]\nproviders = [\"default\", \"Bad Name\"]\n")?.key == "tls.providers[2]")
        let secret = configError("[identities.us]\ncert = \"us.pem\"\nkey = \"store:file:/k.pem?pass=hunter2\"\n")
        #expect(secret?.key == "identities.us.key")
        #expect(secret?.message.contains("hunter2") == false)
        #expect(configError("[identities.us]\ncert = \"us.pem\"\nkey = \"store:file:/etc/compass/k.pem\"\n") == nil)
    }

    /// A token URI with a misspelled scheme is not a file to look for: read as a path, it was echoed, PIN and all,
    /// in every "cannot read" (log, `check`, the status page's reload row). It is a config error that names the
    /// file and key and what is expected, and quotes nothing of the value but a scheme made of letters.
    @Test func aMisspelledTokenURIIsRefusedWithoutEchoingItsPIN() throws {
        let pin = "8361"
        for (key, value) in [("key", "pkcs1:token=x;object=y?pin-value=\(pin)"), ("key", "pkcs11x:object=y;pin-value=\(pin)"),
                             ("key", "PKCS#11:object=y?pin-value=\(pin)"), ("key", "pkcs 11:object=y?pin-value=\(pin)"),
                             ("key", "object=y?pin-value=\(pin)"), ("key", "keys/us.key?pin-value=\(pin)"),
                             ("cert", "pkcs11:object=c?pin-value=\(pin)"), ("cert", "pkcs1:object=c?pin-source=env:X&pin-value=\(pin)")] {
            let other = key == "key" ? "cert = \"us.pem\"" : "key = \"us.key\""
            let e = try #require(configError("[identities.us]\n\(other)\n\(key) = \"\(value)\"\n"), "\(value)")
            #expect(e.key == "identities.us.\(key)", "\(e.description)")
            #expect(e.file == "proxy.conf")
            #expect(!e.description.contains(pin), "\(e.description)")
            #expect(!e.description.contains("pin-value="), "\(e.description)")
            #expect(e.message.contains("expected"), "\(e.description)")
        }
        // The same in a [[identities.NAME.certificates]] entry and in a p12 value.
        let staged = try #require(configError("[[identities.us.certificates]]\ncert = \"us.pem\"\nkey = \"pkcs1:object=y?pin-value=\(pin)\"\n"))
        #expect(staged.key == "identities.us.certificates[1].key" && !staged.description.contains(pin), "\(staged.description)")
        let p12 = try #require(configError("[identities.us]\np12 = \"pkcs12:bundle?pin-value=\(pin)\"\n"))
        #expect(p12.key == "identities.us.p12" && !p12.description.contains(pin), "\(p12.description)")
        // Paths that merely contain a colon or a question mark elsewhere stay paths.
        let fine = try load("[identities.us]\ncert = \"certs/us:2026.pem\"\nkey = \"/etc/keys/us?.key\"\n")
        #expect(fine.identities[0].certificates[0].key == "/etc/keys/us?.key")
    }
}

/// Every key whose value holds a credential or names where one is kept (an identity's cert, key, p12 and their
/// password files or variables, the local CA's key, the client password file, the corporate proxy's credentials
/// file) refuses a value holding a PIN, and a URI read as a path, the same way: naming file and key, quoting
/// nothing of the value. Read as paths, such values were echoed whole in "cannot read" errors.
@Suite struct CredentialKeysTests {
    static let pin = "8361"
    static let values = ["pkcs11:object=k;pin-value=\(pin)", "pkcs1:token=x;object=y?pin-value=\(pin)", "keys/ca.key?pin-value=\(pin)"]

    /// (config with VALUE where the value goes, the key the error names)
    static let places: [(config: String, key: String)] = [
        ("[intercept]\nca_cert = \"ca.pem\"\nca_key = \"VALUE\"\n", "intercept.ca_key"),
        ("[intercept]\nca_cert = \"VALUE\"\nca_key = \"ca.key\"\n", "intercept.ca_cert"),
        ("[identities.us]\ncert = \"us.pem\"\nkey = \"us.key\"\nkey_password_file = \"VALUE\"\n", "identities.us.key_password_file"),
        ("[identities.us]\ncert = \"us.pem\"\nkey = \"us.key\"\nkey_password_env = \"VALUE\"\n", "identities.us.key_password_env"),
        ("[identities.us]\np12 = \"us.p12\"\np12_password_file = \"VALUE\"\n", "identities.us.p12_password_file"),
        ("[identities.us]\np12 = \"us.p12\"\np12_password_env = \"VALUE\"\n", "identities.us.p12_password_env"),
        ("[proxy]\nauth_file = \"VALUE\"\n", "proxy.auth_file"),
        ("[upstream]\nproxy = \"http://127.0.0.1:3129\"\nproxy_credentials_file = \"VALUE\"\n", "upstream.proxy_credentials_file"),
        ("[[route]]\nhost = \"a.example.com\"\naction = \"tls\"\nproxy = \"http://127.0.0.1:3129\"\nproxy_credentials_file = \"VALUE\"\n",
         "route[1].proxy_credentials_file"),
    ]

    @Test func aPINInAnyCredentialKeyIsRefusedWithoutEchoingIt() {
        for place in Self.places {
            for value in Self.values {
                let config = place.config.replacing("VALUE", with: value)
                guard let e = configError(config) else {
                    Issue.record("accepted: \(config)")
                    continue
                }
                #expect(e.key == place.key, "\(e.description)")
                #expect(e.file == "proxy.conf")
                #expect(!e.description.contains(Self.pin), "\(e.description)")
                #expect(!e.description.contains("pin-value="), "\(e.description)")
            }
        }
    }

    @Test func plainPathsAndVariableNamesStayAccepted() throws {
        let c = try load("""
            [proxy]
            auth_file = "clients:2026.htpasswd"
            [upstream]
            proxy = "http://127.0.0.1:3129"
            proxy_credentials_file = "corp.cred"
            [intercept]
            ca_cert = "state/local-ca.pem"
            ca_key = "state/local-ca.key"
            [identities.us]
            cert = "us.pem"
            key = "us.key"
            key_password_file = "us.pass"
            [identities.eu]
            p12 = "eu.p12"
            p12_password_env = "EU_P12_PASSWORD"
            """)
        #expect(c.proxy.authFile == "/etc/mtls-proxy/clients:2026.htpasswd")
        #expect(c.intercept?.caKey == "/etc/mtls-proxy/state/local-ca.key")
    }
}
