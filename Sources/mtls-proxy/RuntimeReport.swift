import ArgumentParser
import Foundation
import ProxyConfig
import ProxyServer
import Reports
import TLS

/// How `check` and `certs` print: a table for people, or JSON for scripts (schema in docs/check-json.md).
enum OutputFormat: String, ExpressibleByArgument, CaseIterable {
    case text, json
}

/// Builds the JSON reports from a loaded runtime.
enum RuntimeReport {
    static func identity(_ runtime: ProxyRuntime, _ identity: Identity, now: Int, warnDays: Int) -> IdentityReport {
        StatusReport.identity(runtime, identity, now: now, warnDays: warnDays)
    }

    static func localCA(_ runtime: ProxyRuntime, now: Int) -> LocalCAReport? {
        StatusReport.localCA(runtime, now: now)
    }

    static func check(_ runtime: ProxyRuntime, identities: [Identity], warnDays: Int, now: Int,
                      failOn: Verdict.FailOn = .warning) -> CheckReport {
        let config = runtime.config
        let reports = identities.map { identity(runtime, $0, now: now, warnDays: warnDays) }
        let worst = identities.map { runtime.status(identity: $0.name, at: now, warnDays: warnDays).health }.max() ?? .ok
        return CheckReport(generatedAt: UTCTime.rfc3339(now), config: config.file, valid: true,
                           listen: config.proxy.listen.description, unmatched: config.proxy.unmatched.rawValue,
                           identities: reports, localCA: localCA(runtime, now: now), routes: config.routes.map { route in
                               RouteReport(route, crls: runtime.crls(for: route.trust).map {
                                   CRLReport(file: $0.file, issuer: $0.issuer, revoked: $0.revokedCount, nextUpdate: $0.nextUpdate, now: now)
                               })
                           },
                           unusedIdentities: config.unusedIdentities,
                           warnings: runtime.keyPermissionWarnings + config.unusedIdentities.map(unusedIdentityWarning),
                           verdict: Verdict(worst: worst, warnDays: warnDays, failOn: failOn))
    }

    static func failure(_ error: ConfigError, warnDays: Int, now: Int, failOn: Verdict.FailOn = .warning) -> CheckReport {
        CheckReport(generatedAt: UTCTime.rfc3339(now), config: error.file, valid: false,
                    errors: error.all.map(ConfigProblem.init), verdict: Verdict(status: .configError, warnDays: warnDays, failOn: failOn))
    }

    static func printJSON(_ value: some Encodable) throws {
        let encoder = JSONEncoder()
        encoder.keyEncodingStrategy = .convertToSnakeCase
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        print(String(decoding: try encoder.encode(value), as: UTF8.self))
    }
}
