import Foundation

/// A throwaway PKI made with the project's own script (openssl CLI) at test time; nothing is committed.
final class TestPKI: @unchecked Sendable {
    static let shared = TestPKI()

    let dir: String

    private init() {
        let base = FileManager.default.temporaryDirectory.appendingPathComponent("mtls-proxy-tlstests-\(getpid())").path
        dir = base
        let repo = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
        _ = TestPKI.shell("source '\(repo)/scripts/lib/pki.sh' && make_pki '\(base)'")
    }

    func path(_ name: String) -> String { "\(dir)/\(name)" }

    @discardableResult
    static func shell(_ command: String) -> (status: Int32, output: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/bash")
        process.arguments = ["-c", command]
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = FileHandle.nullDevice
        try? process.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: data, as: UTF8.self))
    }

    func write(_ name: String, _ text: String) -> String {
        let p = path(name)
        precondition(FileManager.default.createFile(atPath: p, contents: Data(text.utf8)), "cannot write \(p)")
        return p
    }

    func read(_ name: String) -> String {
        (try? String(contentsOfFile: path(name), encoding: .utf8)) ?? ""
    }
}
