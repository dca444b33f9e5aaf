#if canImport(Glibc)
import Glibc
#endif

/// The config file a running `mtls-proxy run` was started with, read from its command line (`/proc/PID/cmdline`).
/// A container's health check runs beside the proxy (PID 1) but not with its arguments: this is how
/// `mtls-proxy health` checks the config the container actually runs when `--config` was given. Pure parsing.
public enum RunningProcessConfig {
    /// `--config PATH`, `--config=PATH` or `-c PATH` of an `mtls-proxy ... run` command line, else nil.
    public static func configPath(commandLine: [String]) -> String? {
        guard let program = commandLine.first, program.split(separator: "/").last == "mtls-proxy",
              commandLine.contains("run") else { return nil }
        var i = 1
        while i < commandLine.count {
            let arg = commandLine[i]
            if arg == "--" { return nil }
            if (arg == "--config" || arg == "-c"), i + 1 < commandLine.count { return commandLine[i + 1] }
            if arg.hasPrefix("--config=") { return String(arg.dropFirst("--config=".count)) }
            i += 1
        }
        return nil
    }

    /// Splits a /proc cmdline (NUL-separated, NUL-terminated) into arguments.
    public static func arguments(procCmdline: [UInt8]) -> [String] {
        guard !procCmdline.isEmpty else { return [] }
        return procCmdline.split(separator: 0, omittingEmptySubsequences: false).dropLast(procCmdline.last == 0 ? 1 : 0)
            .map { String(decoding: $0, as: UTF8.self) }
    }

    /// The config path of process `pid` when it is `mtls-proxy run --config ...`, made absolute against its
    /// working directory. nil when it is not, or /proc cannot tell.
    public static func ofProcess(_ pid: Int32 = 1) -> String? {
        guard let text = ConfigLoader.readTextFile("/proc/\(pid)/cmdline"),
              let path = configPath(commandLine: arguments(procCmdline: Array(text.utf8))) else { return nil }
        if path.hasPrefix("/") { return path }
        var buffer = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/\(pid)/cwd", &buffer, buffer.count - 1)
        guard n > 0 else { return nil }
        let cwd = String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return cwd + "/" + path
    }
}
