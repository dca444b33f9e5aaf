#if canImport(Glibc)
import Glibc
#endif

/// Failures a debug build makes on request (`MTLS_PROXY_TEST_FAULT`), for the end-to-end tests of paths that no
/// peer can provoke from outside, such as libevent failing to make a bufferevent. Release builds ignore the
/// variable: these are constants there.
enum TestFaults {
    #if DEBUG
    private static let requested = getenv("MTLS_PROXY_TEST_FAULT").map { String(cString: $0) } ?? ""
    /// The hand-over of an upstream connection's socket to a relay after `101 Switching Protocols` fails.
    static let upstreamHandOverFails = requested == "upstream-handover"
    /// `run` pauses 2 s after the workers serve and before the main loop takes reload requests (SIGHUP, the
    /// file watcher): the moment in which a reload asked for as soon as the port answers lands.
    static let slowStart = requested == "slow-start"
    /// At most 4 exchanges wait per key for an HTTP/2 stream (instead of `H2Pool.maxWaitingPerKey`'s 1024), so
    /// that a test reaches the limit with a handful of clients.
    static let smallH2Queue = requested == "h2-queue-4"
    #else
    static let upstreamHandOverFails = false
    static let slowStart = false
    static let smallH2Queue = false
    #endif

    /// What the log says at start when a fault is on, so that a test can tell the build honours it.
    static var announcement: String? {
        if upstreamHandOverFails { return "test fault on (MTLS_PROXY_TEST_FAULT): upstream hand-overs after 101 fail" }
        if slowStart { return "test fault on (MTLS_PROXY_TEST_FAULT): the main loop starts 2 s late" }
        if smallH2Queue { return "test fault on (MTLS_PROXY_TEST_FAULT): the h2 wait queue holds 4 streams per key" }
        return nil
    }
}
