import Testing
@testable import ProxyConfig

/// The pure pieces behind the expiry alerts, the key-permission warning, the health check's config discovery
/// and the [admin]/[log] keys for operations.
@Suite struct CertificateCoverageTests {
    let day = 86_400

    @Test func noValidCertificateHasNoCoverage() {
        #expect(CertificateCoverage.end([], at: 1000) == nil)
        #expect(CertificateCoverage.end([CertificateValidity(notBefore: 0, notAfter: 500)], at: 1000) == nil)
        #expect(CertificateCoverage.end([CertificateValidity(notBefore: 2000, notAfter: 5000)], at: 1000) == nil)
    }

    @Test func aLoneCertificateCoversUntilItExpires() {
        #expect(CertificateCoverage.end([CertificateValidity(notBefore: 0, notAfter: 30 * day)], at: day) == 30 * day)
    }

    @Test func aStagedSuccessorValidAtExpiryExtendsTheCoverage() {
        let certs = [CertificateValidity(notBefore: 0, notAfter: 30 * day),
                     CertificateValidity(notBefore: 20 * day, notAfter: 400 * day),
                     CertificateValidity(notBefore: 390 * day, notAfter: 800 * day)]
        #expect(CertificateCoverage.end(certs, at: day) == 800 * day)
    }

    @Test func aGapEndsTheCoverage() {
        // The successor starts one second after the active one expires (notAfter is exclusive).
        let certs = [CertificateValidity(notBefore: 0, notAfter: 30 * day),
                     CertificateValidity(notBefore: 30 * day + 1, notAfter: 400 * day)]
        #expect(CertificateCoverage.end(certs, at: day) == 30 * day)
        let touching = [CertificateValidity(notBefore: 0, notAfter: 30 * day),
                        CertificateValidity(notBefore: 30 * day, notAfter: 400 * day)]
        #expect(CertificateCoverage.end(touching, at: day) == 400 * day)
    }

    @Test func anOlderLongerCertificateIsCounted() {
        let certs = [CertificateValidity(notBefore: 0, notAfter: 500 * day),
                     CertificateValidity(notBefore: 10 * day, notAfter: 40 * day)]
        #expect(CertificateCoverage.end(certs, at: 20 * day) == 500 * day)
    }
}

@Suite struct KeyFileAccessTests {
    @Test func ownerOnlyIsFine() {
        #expect(KeyFileAccess.warning(path: "k", mode: 0o100600, fileGroup: 5, processGroups: [10]) == nil)
        #expect(KeyFileAccess.warning(path: "k", mode: 0o400, fileGroup: 5, processGroups: [10]) == nil)
    }

    @Test func everyoneIsAlwaysWarned() {
        let w = KeyFileAccess.warning(path: "/k.key", mode: 0o644, fileGroup: 10, processGroups: [10])
        #expect(w == "private key /k.key is readable by everyone (mode 644); chmod 600 it")
    }

    @Test func theProxysOwnGroupMayRead() {
        // A Kubernetes Secret under fsGroup: root:fsGroup 0440, the proxy runs with fsGroup.
        #expect(KeyFileAccess.warning(path: "k", mode: 0o440, fileGroup: 10001, processGroups: [10001]) == nil)
        #expect(KeyFileAccess.warning(path: "k", mode: 0o640, fileGroup: 10001, processGroups: [0, 10001]) == nil)
    }

    @Test func anotherGroupOrAWritableGroupIsWarned() {
        let other = KeyFileAccess.warning(path: "k", mode: 0o440, fileGroup: 7, processGroups: [10001])
        #expect(other?.contains("readable by its group (mode 440, group 7") == true)
        #expect(KeyFileAccess.warning(path: "k", mode: 0o660, fileGroup: 10001, processGroups: [10001]) != nil)
    }

    @Test func theWarningNamesTheAccessThatIsWrong() {
        // The proxy runs with the file's group, which may write it: the reason is the write, not the group.
        let writable = KeyFileAccess.warning(path: "k", mode: 0o660, fileGroup: 10001, processGroups: [10001])
        #expect(writable == "private key k is writable by its group (mode 660, group 10001, one the proxy runs with); chmod 640 it, or 600")
        // Only others' write bit: not "readable by everyone".
        #expect(KeyFileAccess.warning(path: "k", mode: 0o602, fileGroup: 5, processGroups: [10]) == "private key k is writable by everyone (mode 602); chmod 600 it")
        #expect(KeyFileAccess.warning(path: "k", mode: 0o606, fileGroup: 5, processGroups: [10]) == "private key k is readable and writable by everyone (mode 606); chmod 600 it")
        // Another group that may only write it.
        #expect(KeyFileAccess.warning(path: "k", mode: 0o620, fileGroup: 7, processGroups: [10]) == "private key k is writable by its group (mode 620, group 7, which the proxy does not run with); chmod 600 it, or give it to the proxy's own group read-only")
    }
}

@Suite struct RunningProcessConfigTests {
    @Test func findsTheConfigOfARunCommandLine() {
        #expect(RunningProcessConfig.configPath(commandLine: ["/usr/local/bin/mtls-proxy", "run", "--config", "/etc/x.conf"]) == "/etc/x.conf")
        #expect(RunningProcessConfig.configPath(commandLine: ["mtls-proxy", "run", "-c", "x.conf"]) == "x.conf")
        #expect(RunningProcessConfig.configPath(commandLine: ["mtls-proxy", "run", "--config=/a b.conf"]) == "/a b.conf")
    }

    @Test func ignoresOtherProcessesAndCommands() {
        #expect(RunningProcessConfig.configPath(commandLine: ["/sbin/init"]) == nil)
        #expect(RunningProcessConfig.configPath(commandLine: ["nginx", "run", "--config", "x"]) == nil)
        #expect(RunningProcessConfig.configPath(commandLine: ["mtls-proxy", "run"]) == nil)
        #expect(RunningProcessConfig.configPath(commandLine: ["mtls-proxy", "check", "--config", "x"]) == nil)
        #expect(RunningProcessConfig.configPath(commandLine: ["mtls-proxy", "run", "--config"]) == nil)
        #expect(RunningProcessConfig.configPath(commandLine: []) == nil)
    }

    @Test func splitsProcCmdline() {
        let bytes = Array("mtls-proxy\u{0}run\u{0}--config\u{0}/x\u{0}".utf8)
        #expect(RunningProcessConfig.arguments(procCmdline: bytes) == ["mtls-proxy", "run", "--config", "/x"])
        #expect(RunningProcessConfig.arguments(procCmdline: []) == [])
    }
}

@Suite struct AdminAndLogKeyTests {
    @Test func readinessGateIsOffByDefault() throws {
        #expect(try load("[admin]\nlisten = \"127.0.0.1:9901\"\n").admin?.readyRequiresValidIdentities == false)
        #expect(try load("[admin]\nlisten = \"127.0.0.1:9901\"\nready_requires_valid_identities = true\n").admin?.readyRequiresValidIdentities == true)
    }

    @Test func readinessGateMustBeABoolean() {
        #expect(throws: ConfigError.self) { try load("[admin]\nlisten = \"127.0.0.1:9901\"\nready_requires_valid_identities = 1\n") }
    }

    @Test func operationalFormat() throws {
        #expect(try load("").log.operationalFormat == .text)
        #expect(try load("[log]\noperational_format = \"json\"\n").log.operationalFormat == .json)
        do {
            _ = try load("[log]\noperational_format = \"xml\"\n")
            Issue.record("xml accepted")
        } catch let e as ConfigError {
            #expect(e.key == "log.operational_format")
            #expect(e.message == "expected \"json\" or \"text\", got \"xml\"")
        }
    }
}
