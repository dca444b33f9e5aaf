import ProxyConfig
#if canImport(Glibc)
import Glibc
#endif

/// The standard `process_*` series every Prometheus client library exports, read from /proc at each scrape:
/// CPU seconds, resident and virtual memory, open and maximum file descriptors, start time.
struct ProcessSample: Equatable {
    var cpuSeconds: Double
    var residentBytes: Int
    var virtualBytes: Int
    /// nil where /proc/stat is hidden (systemd's ProcSubset=pid): no boot time to count from.
    var startTimeSeconds: Double?
    var openFDs: Int
    var maxFDs: Int?

    /// Parses /proc/self/stat. The command name (field 2) is in parentheses and may hold spaces or ")", so
    /// fields are counted from the last ")". Clock ticks and page size come from the caller (sysconf).
    static func parse(stat: String, bootTime: Int, ticksPerSecond: Int, pageSize: Int) -> (cpu: Double, rss: Int, vsize: Int, start: Double)? {
        guard let close = stat.lastIndex(of: ")") else { return nil }
        // After ")": field 3 (state) is at index 0, so field n is at index n - 3.
        let fields = stat[stat.index(after: close)...].split(separator: " ", omittingEmptySubsequences: true)
        func field(_ n: Int) -> Int? { n - 3 < fields.count ? Int(fields[n - 3]) : nil }
        guard ticksPerSecond > 0, let utime = field(14), let stime = field(15), let start = field(22),
              let vsize = field(23), let rss = field(24) else { return nil }
        let hz = Double(ticksPerSecond)
        return (Double(utime + stime) / hz, rss * pageSize, vsize, Double(bootTime) + Double(start) / hz)
    }

    /// The `btime` line of /proc/stat: the boot time in seconds since 1970.
    static func bootTime(procStat: String) -> Int? {
        for line in procStat.split(separator: "\n") where line.hasPrefix("btime ") {
            return Int(line.dropFirst(6).trimmingCharacters(in: " "))
        }
        return nil
    }

    /// The current process, or nil where /proc is not there.
    static func current() -> ProcessSample? {
        let boot = ConfigLoader.readTextFile("/proc/stat").flatMap(bootTime(procStat:))
        guard let stat = ConfigLoader.readTextFile("/proc/self/stat"),
              let parsed = parse(stat: stat, bootTime: boot ?? 0, ticksPerSecond: sysconf(Int32(_SC_CLK_TCK)),
                                 pageSize: sysconf(Int32(_SC_PAGESIZE))) else { return nil }
        var limit = rlimit()
        let maxFDs = getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit) == 0 && limit.rlim_cur != rlim_t.max ? Int(limit.rlim_cur) : nil
        return ProcessSample(cpuSeconds: parsed.cpu, residentBytes: parsed.rss, virtualBytes: parsed.vsize,
                             startTimeSeconds: boot == nil ? nil : parsed.start, openFDs: countOpenFDs(), maxFDs: maxFDs)
    }

    /// Entries of /proc/self/fd, less the one the count itself opens.
    static func countOpenFDs() -> Int {
        guard let dir = opendir("/proc/self/fd") else { return 0 }
        var count = 0
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name != "." && name != ".." { count += 1 }
        }
        closedir(dir)
        return max(0, count - 1)
    }

    /// Prometheus text exposition, HELP and TYPE included.
    func exposition() -> String {
        func series(_ name: String, _ type: String, _ help: String, _ value: String) -> String {
            "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n\(name) \(value)\n"
        }
        var out = series("process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.", format(cpuSeconds))
        out += series("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.", String(residentBytes))
        out += series("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.", String(virtualBytes))
        if let startTimeSeconds {
            out += series("process_start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds.", format(startTimeSeconds))
        }
        out += series("process_open_fds", "gauge", "Number of open file descriptors.", String(openFDs))
        if let maxFDs { out += series("process_max_fds", "gauge", "Maximum number of open file descriptors.", String(maxFDs)) }
        return out
    }

    private func format(_ value: Double) -> String {
        value == value.rounded() ? String(Int(value)) : String(value)
    }
}

private extension Substring {
    func trimmingCharacters(in character: Character) -> Substring {
        var s = self
        while s.first == character { s = s.dropFirst() }
        while s.last == character { s = s.dropLast() }
        return s
    }
}
