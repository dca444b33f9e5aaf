#if canImport(Glibc)
import Glibc
#endif
import Logging
import Testing
@testable import ProxyServer

/// The pure pieces of the operations work: /proc parsing, sd_notify messages and addresses, operational log
/// lines, the readiness query.
@Suite struct ProcessSampleTests {
    // A real /proc/self/stat line, with a command name holding a space and a parenthesis.
    let stat = "4242 (mtls proxy)) S 1 4242 4242 0 -1 4194560 1200 0 0 0 250 150 0 0 20 0 3 0 5000 123456789 2048 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0 0 0 0"

    @Test func parsesCPUMemoryAndStart() throws {
        let parsed = try #require(ProcessSample.parse(stat: stat, bootTime: 1_700_000_000, ticksPerSecond: 100, pageSize: 4096))
        #expect(parsed.cpu == 4.0)          // (250 + 150) / 100
        #expect(parsed.rss == 2048 * 4096)
        #expect(parsed.vsize == 123_456_789)
        #expect(parsed.start == 1_700_000_050)  // boot + 5000 / 100
    }

    @Test func rejectsGarbage() {
        #expect(ProcessSample.parse(stat: "", bootTime: 0, ticksPerSecond: 100, pageSize: 4096) == nil)
        #expect(ProcessSample.parse(stat: "1 (x) S 1 2", bootTime: 0, ticksPerSecond: 100, pageSize: 4096) == nil)
        #expect(ProcessSample.parse(stat: stat, bootTime: 0, ticksPerSecond: 0, pageSize: 4096) == nil)
    }

    @Test func bootTime() {
        #expect(ProcessSample.bootTime(procStat: "cpu  1 2 3\nbtime 1700000000\nprocesses 5\n") == 1_700_000_000)
        #expect(ProcessSample.bootTime(procStat: "cpu 1\n") == nil)
    }

    @Test func exposition() {
        let text = ProcessSample(cpuSeconds: 1.5, residentBytes: 10, virtualBytes: 20, startTimeSeconds: 1_700_000_000,
                                 openFDs: 7, maxFDs: nil).exposition()
        #expect(text.contains("# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total 1.5\n"))
        #expect(text.contains("process_start_time_seconds 1700000000\n"))
        #expect(text.contains("process_open_fds 7\n"))
        #expect(!text.contains("process_max_fds"))
    }

    @Test func theCurrentProcess() throws {
        let sample = try #require(ProcessSample.current())
        #expect(sample.residentBytes > 0)
        #expect(sample.openFDs >= 3)
    }
}

@Suite struct SystemdNotifyTests {
    @Test func messageIsOneKeyValueALine() {
        #expect(SystemdNotifier.message([("READY", "1"), ("STATUS", "serving\n2 routes")]) == "READY=1\nSTATUS=serving 2 routes\n")
    }

    @Test func addresses() throws {
        let (path, pathLength) = try #require(SystemdNotifier.address("/run/systemd/notify"))
        #expect(path.sun_family == sa_family_t(AF_UNIX))
        #expect(Int(pathLength) == 2 + "/run/systemd/notify".utf8.count + 1)
        let (abstract, abstractLength) = try #require(SystemdNotifier.address("@notify"))
        #expect(Int(abstractLength) == 2 + 7)  // the leading NUL and the name, no terminator
        #expect(withUnsafeBytes(of: abstract.sun_path) { $0[0] } == 0)
        #expect(SystemdNotifier.address("") == nil)
        #expect(SystemdNotifier.address("relative") == nil)
        #expect(SystemdNotifier.address("/" + String(repeating: "x", count: 200)) == nil)
    }

    @Test func withoutASocketNothingIsSent() {
        let notifier = SystemdNotifier(socketPath: nil)
        #expect(!notifier.isEnabled)
        #expect(!notifier.send([("READY", "1")]))
    }
}

@Suite struct OperationalLogFormatTests {
    @Test func journalTextHasPriorityAndNoTime() {
        let line = OperationalLogFormat(json: false, journal: true)
            .line(level: .warning, label: "mtls-proxy", message: "two\nlines", metadata: [:], epochMillis: 0)
        #expect(line == "<4>warning mtls-proxy: two lines\n")
    }

    @Test func plainTextHasTime() {
        let line = OperationalLogFormat(json: false, journal: false)
            .line(level: .info, label: "mtls-proxy", message: "hi", metadata: ["k": "v"], epochMillis: 1_000)
        #expect(line == "1970-01-01T00:00:01.000Z info mtls-proxy: k=v hi\n")
    }

    @Test func json() {
        let format = OperationalLogFormat(json: true, journal: false)
        #expect(format.line(level: .error, label: "l", message: "a \"b\"", metadata: [:], epochMillis: 0)
                == "{\"time\":\"1970-01-01T00:00:00.000Z\",\"level\":\"error\",\"logger\":\"l\",\"message\":\"a \\\"b\\\"\"}\n")
        #expect(OperationalLogFormat(json: true, journal: true).line(level: .info, label: "l", message: "m", metadata: [:], epochMillis: 0)
                == "{\"level\":\"info\",\"logger\":\"l\",\"message\":\"m\"}\n")
    }

    @Test func quoting() {
        #expect(OperationalLogFormat.quoted("a\u{1}b\\c\td") == "\"a\\u0001b\\\\c\\td\"")
    }

    @Test func journalStreamMatch() {
        #expect(OperationalLogFormat.matches("8:12345", device: 8, inode: 12345))
        #expect(!OperationalLogFormat.matches("8:12345", device: 8, inode: 1))
        #expect(!OperationalLogFormat.matches("junk", device: 8, inode: 12345))
        #expect(!OperationalLogFormat.stderrIsJournal(nil))
    }

    @Test func priorities() {
        #expect(OperationalLogFormat.priority(.critical) == 2)
        #expect(OperationalLogFormat.priority(.notice) == 5)
        #expect(OperationalLogFormat.priority(.trace) == 7)
    }
}

@Suite struct ReadinessQueryTests {
    @Test func verbose() {
        #expect(ReadinessReport.wantsVerbose(query: "verbose"))
        #expect(ReadinessReport.wantsVerbose(query: "verbose=1"))
        #expect(ReadinessReport.wantsVerbose(query: "a=b&verbose=true"))
        #expect(!ReadinessReport.wantsVerbose(query: nil))
        #expect(!ReadinessReport.wantsVerbose(query: "verbose=0"))
        #expect(!ReadinessReport.wantsVerbose(query: "verbosely"))
    }
}
