import CEventTLS
import HTTP1
import ProxyConfig
import TLS
#if canImport(Glibc)
import Glibc
#endif

/// What a `Proxy-Authorization` check comes to.
enum AuthOutcome: Equatable {
    case allowed
    case denied
    /// Too many failures from this client address lately: refused without checking (429).
    case limited(retryAfterSeconds: Int)
    /// Every hashing thread is busy and the queue is full: refused without checking (503).
    case busy
}

/// Checks `Proxy-Authorization: Basic` against the users of `[proxy] auth_file`, one per worker, on its loop.
///
/// bcrypt is slow on purpose, so it never runs on the loop: the hash goes to `PasswordHashing` (a few threads
/// with a bounded queue) and the answer comes back to the worker's loop. Header values already accepted are
/// remembered (a bounded set), so a good client hashes once. Failures are counted per client address
/// (`AuthFailureLimiter`, shared by the workers): past the limit, that address is refused (429) without any
/// hashing until the window passes. sha256 entries are checked inline (a microsecond).
final class ProxyAuthenticator {
    let users: ProxyCredentials
    private let hashing: PasswordHashing
    private let limiter: AuthFailureLimiter

    init(users: ProxyCredentials, hashing: PasswordHashing, limiter: AuthFailureLimiter) {
        self.users = users
        self.hashing = hashing
        self.limiter = limiter
    }

    /// The outcome now, or nil when the check went to the hashing threads: `completion` then runs later on
    /// `worker`'s loop thread.
    func check(_ header: String?, peer: String, worker: Worker, completion: @escaping (AuthOutcome) -> Void) -> AuthOutcome? {
        guard let header else { return .denied }
        // Verified before, on any worker, against the entry the user still has: never hashed nor limited again
        // (a neighbour on the same address reaching the failure limit does not lock this client out).
        if let known = limiter.verified(header), users.users[known.user] == known.hash { return .allowed }
        let client = Self.clientAddress(peer: peer)
        let now = monotonicMillis()
        // An address with no failure lately and no check in progress goes ahead of the others in the hashing
        // queue: wrong passwords from many addresses cannot keep a first-time good client out.
        let clean = limiter.isClean(client, now: now)
        if let wait = limiter.admit(client, now: now) { return .limited(retryAfterSeconds: wait) }
        guard let (user, password) = ProxyCredentials.basicCredentials(header), let hash = users.users[user],
              !password.contains(0) else {
            limiter.finished(client, ok: false, now: now)
            return .denied
        }
        switch hash {
        case .sha256(let hex):
            let ok = constantTimeEqual(Self.sha256Hex(password), hex)
            limiter.finished(client, ok: ok, now: now)
            if ok { limiter.remember(header, user: user, hash: hash) }
            return ok ? .allowed : .denied
        case .bcrypt(let stored):
            let limiter = self.limiter
            let queued = hashing.submit(work: {
                Self.bcrypt(password, stored).map { constantTimeEqual($0, stored) } ?? false
            }, preferred: clean, deliverTo: worker) { result in
                guard let ok = result else {
                    // Dropped from the queue for a check from a clean address: not counted as a failure.
                    limiter.cancelled(client)
                    completion(.busy)
                    return
                }
                limiter.finished(client, ok: ok, now: monotonicMillis())
                if ok { limiter.remember(header, user: user, hash: hash) }
                completion(ok ? .allowed : .denied)
            }
            if !queued {
                limiter.cancelled(client)
                return .busy
            }
            return nil
        }
    }

    /// What the failure limit counts by: "1.2.3.4:5678" → "1.2.3.4", an IPv4-mapped IPv6 peer as its IPv4
    /// address, and any other IPv6 peer by its /64 ("[2001:db8:1:2::7]:5678" → "2001:db8:1:2::/64"), since one
    /// host usually holds a whole /64 and could otherwise try from fresh addresses without end. Link-local
    /// (fe80::/10) and loopback peers keep their full address (every host on a link shares fe80::/64).
    static func clientAddress(peer: String) -> String {
        var host = Substring(peer)
        if let colon = host.lastIndex(of: ":") { host = host[..<colon] }
        if host.hasPrefix("["), host.hasSuffix("]") { host = host.dropFirst().dropLast() }
        if let percent = host.firstIndex(of: "%") { host = host[..<percent] }  // a zone index
        guard let ip = IPAddress(String(host)), ip.isV6 else { return String(host) }
        let b = ip.bytes
        if b[0..<10].allSatisfy({ $0 == 0 }) && b[10] == 0xFF && b[11] == 0xFF {
            return b[12...].map { String($0) }.joined(separator: ".")
        }
        let linkLocal = b[0] == 0xFE && b[1] & 0xC0 == 0x80
        if linkLocal || b[0..<15].allSatisfy({ $0 == 0 }) { return String(host) }
        let groups = stride(from: 0, to: 8, by: 2).map { String(UInt16(b[$0]) << 8 | UInt16(b[$0 + 1]), radix: 16) }
        return groups.joined(separator: ":") + "::/64"
    }

    static func sha256Hex(_ bytes: [UInt8]) -> String {
        MessageDigest.sha256(bytes).map { b in (b < 16 ? "0" : "") + String(b, radix: 16) }.joined()
    }

    /// crypt(3) with the stored hash as its salt: libcrypt computes bcrypt ($2a$/$2b$/$2y$). Thread-safe
    /// (crypt_r with its own data).
    static func bcrypt(_ password: [UInt8], _ stored: String) -> String? {
        let data = UnsafeMutablePointer<crypt_data>.allocate(capacity: 1)
        defer { data.deallocate() }
        memset(data, 0, MemoryLayout<crypt_data>.size)
        let key = password.map { CChar(bitPattern: $0) } + [0]
        guard let result = crypt_r(key, stored, data) else { return nil }
        return String(cString: result)
    }
}

func constantTimeEqual(_ a: String, _ b: String) -> Bool {
    let x = Array(a.utf8), y = Array(b.utf8)
    guard x.count == y.count else { return false }
    var difference: UInt8 = 0
    for i in 0..<x.count { difference |= x[i] ^ y[i] }
    return difference == 0
}

/// Failed authentications per client address in a sliding window. An address with `limit` failures (checks
/// in progress count as failures until they end) in the last `windowMillis` is refused until the oldest
/// failure leaves the window. Pure: time comes in as an argument. At most `maxAddresses` are tracked; past
/// that the oldest entries go.
struct FailureWindow {
    let limit: Int
    let windowMillis: Int
    let maxAddresses: Int
    private var failures: [String: [Int]] = [:]
    private var pending: [String: Int] = [:]

    init(limit: Int = 10, windowMillis: Int = 60_000, maxAddresses: Int = 10_000) {
        self.limit = limit
        self.windowMillis = windowMillis
        self.maxAddresses = maxAddresses
    }

    /// nil: go ahead (the check counts as pending until `finished`); else the seconds to wait.
    mutating func admit(_ client: String, now: Int) -> Int? {
        let recent = (failures[client] ?? []).filter { now - $0 < windowMillis }
        failures[client] = recent.isEmpty ? nil : recent
        if recent.count + (pending[client] ?? 0) >= limit {
            let oldest = recent.first ?? now
            return max(1, (oldest + windowMillis - now + 999) / 1000)
        }
        pending[client, default: 0] += 1
        return nil
    }

    /// No failure of `client` in the window and no check of it in progress.
    func isClean(_ client: String, now: Int) -> Bool {
        pending[client] == nil && !(failures[client] ?? []).contains { now - $0 < windowMillis }
    }

    mutating func finished(_ client: String, ok: Bool, now: Int) {
        cancelled(client)
        guard !ok else { return }
        if failures[client] == nil && failures.count >= maxAddresses {
            // Forget the addresses whose last failure is oldest.
            let cutoff = failures.values.compactMap(\.last).sorted()[failures.count / 2]
            failures = failures.filter { ($0.value.last ?? 0) > cutoff }
        }
        var list = failures[client] ?? []
        list.append(now)
        if list.count > limit { list.removeFirst(list.count - limit) }
        failures[client] = list
    }

    mutating func cancelled(_ client: String) {
        if let n = pending[client] { pending[client] = n > 1 ? n - 1 : nil }
    }

    var trackedAddresses: Int { failures.count }
}

/// `FailureWindow` shared by every worker, behind a lock, and the `Proxy-Authorization` values already verified
/// (with the user and hash they matched, so that a changed or removed entry is checked again): a verified
/// client is exempt from the limit whichever worker its connection lands on.
final class AuthFailureLimiter: @unchecked Sendable {
    private var window: FailureWindow
    private var verifiedHeaders: [String: (user: String, hash: ProxyCredentials.Hash)] = [:]
    static let maxVerified = 4096
    private let lock = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)

    init(window: FailureWindow = FailureWindow()) {
        self.window = window
        pthread_mutex_init(lock, nil)
    }

    deinit {
        pthread_mutex_destroy(lock)
        lock.deallocate()
    }

    private func locked<R>(_ body: (inout FailureWindow) -> R) -> R {
        pthread_mutex_lock(lock)
        defer { pthread_mutex_unlock(lock) }
        return body(&window)
    }

    func admit(_ client: String, now: Int) -> Int? { locked { $0.admit(client, now: now) } }
    func finished(_ client: String, ok: Bool, now: Int) { locked { $0.finished(client, ok: ok, now: now) } }
    func cancelled(_ client: String) { locked { $0.cancelled(client) } }
    func isClean(_ client: String, now: Int) -> Bool { locked { $0.isClean(client, now: now) } }

    func verified(_ header: String) -> (user: String, hash: ProxyCredentials.Hash)? {
        pthread_mutex_lock(lock)
        defer { pthread_mutex_unlock(lock) }
        return verifiedHeaders[header]
    }

    func remember(_ header: String, user: String, hash: ProxyCredentials.Hash) {
        pthread_mutex_lock(lock)
        defer { pthread_mutex_unlock(lock) }
        if verifiedHeaders.count >= Self.maxVerified { verifiedHeaders.removeAll() }
        verifiedHeaders[header] = (user, hash)
    }
}

/// A few threads that compute password hashes away from the event loops, with a bounded queue. Each result
/// goes back to the worker that asked, through `Worker.post` (which queues it under a lock and wakes the loop
/// through its eventfd). The threads run at a lower priority than the loops, so hashing never starves them.
final class PasswordHashing: @unchecked Sendable {
    private struct Job {
        let work: () -> Bool
        let worker: Worker
        /// nil: dropped from the queue unchecked (to make room for a preferred check).
        let done: (Bool?) -> Void
    }

    let capacity: Int
    /// Checks from client addresses with no recent failure: served first.
    private var preferredQueue: [Job] = []
    private var queue: [Job] = []
    private var stopping = false
    private var threads: [pthread_t] = []
    private let threadCount: Int
    private let lock = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let wake = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)

    /// `threads` defaults to one fewer than the cores (at least one), leaving a core to the loops. The threads
    /// start with the first job: a proxy without bcrypt users has none.
    init(threads count: Int? = nil, capacity: Int = 64) {
        self.capacity = capacity
        pthread_mutex_init(lock, nil)
        pthread_cond_init(wake, nil)
        let cores = Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))
        threadCount = count ?? max(1, min(4, cores - 1))
    }

    /// Called with `lock` held.
    private func startThreads() {
        for _ in 0..<threadCount {
            var tid = pthread_t()
            let me = Unmanaged.passRetained(self).toOpaque()
            pthread_create(&tid, nil, { arg in
                let pool = Unmanaged<PasswordHashing>.fromOpaque(arg!).takeRetainedValue()
                // Linux applies nice per thread: hashing yields to the event loops.
                setpriority(__priority_which_t(PRIO_PROCESS.rawValue), 0, 10)
                pool.serve()
                return nil
            }, me)
            threads.append(tid)
        }
    }

    deinit {
        pthread_cond_destroy(wake)
        pthread_mutex_destroy(lock)
        wake.deallocate()
        lock.deallocate()
    }

    /// Queues `work`; `done` runs with its result on `worker`'s loop. false when the queue is full. A
    /// `preferred` check is served before the others and, when the queue is full, takes the place of the newest
    /// other one (whose `done` then gets nil).
    func submit(work: @escaping () -> Bool, preferred: Bool = false, deliverTo worker: Worker,
                done: @escaping (Bool?) -> Void) -> Bool {
        var dropped: Job?
        pthread_mutex_lock(lock)
        let accepted: Bool
        if stopping {
            accepted = false
        } else if preferredQueue.count + queue.count < capacity {
            accepted = true
        } else if preferred, let last = queue.popLast() {
            dropped = last
            accepted = true
        } else {
            accepted = false
        }
        if accepted {
            if threads.isEmpty { startThreads() }
            let job = Job(work: work, worker: worker, done: done)
            if preferred { preferredQueue.append(job) } else { queue.append(job) }
            pthread_cond_signal(wake)
        }
        pthread_mutex_unlock(lock)
        if let dropped {
            let done = dropped.done
            dropped.worker.post { done(nil) }
        }
        return accepted
    }

    /// Drops the checks still queued (their connections are gone with the loops), ends the threads once the
    /// checks in progress are done, and waits for them.
    func shutdown() {
        pthread_mutex_lock(lock)
        stopping = true
        preferredQueue.removeAll()
        queue.removeAll()
        pthread_cond_broadcast(wake)
        let started = threads
        threads.removeAll()
        pthread_mutex_unlock(lock)
        for tid in started { pthread_join(tid, nil) }
    }

    var queued: Int {
        pthread_mutex_lock(lock)
        defer { pthread_mutex_unlock(lock) }
        return preferredQueue.count + queue.count
    }

    private func serve() {
        while true {
            pthread_mutex_lock(lock)
            while preferredQueue.isEmpty && queue.isEmpty && !stopping { pthread_cond_wait(wake, lock) }
            if preferredQueue.isEmpty && queue.isEmpty && stopping {
                pthread_mutex_unlock(lock)
                return
            }
            let job = preferredQueue.isEmpty ? queue.removeFirst() : preferredQueue.removeFirst()
            pthread_mutex_unlock(lock)
            let result = job.work()
            let done = job.done
            job.worker.post { done(result) }
        }
    }
}

extension AuthOutcome {
    /// The answer to a request that is not allowed: 407 with a challenge, 429 past the failure limit, 503 when
    /// the hashing queue is full. Never quotes the credentials.
    func refusal(credentialsSent: Bool) -> (ProxyErrorResponse, [(String, String)]) {
        let challenge = ("Proxy-Authenticate", "Basic realm=\"mtls-proxy\", charset=\"UTF-8\"")
        switch self {
        case .limited(let seconds):
            return (ProxyErrorResponse(status: 429, errorType: .httpRequestDenied,
                                       details: "too many failed proxy authentications from this address",
                                       advice: "Check the proxy credentials; retry after \(seconds) s."),
                    [("Retry-After", String(seconds))])
        case .busy:
            return (ProxyErrorResponse(status: 503, errorType: .httpRequestDenied,
                                       details: "too many proxy authentications in progress",
                                       advice: "Retry in a moment."),
                    [("Retry-After", "1")])
        case .allowed, .denied:
            return (ProxyErrorResponse(status: 407, errorType: .httpRequestDenied,
                                       details: credentialsSent ? "wrong proxy credentials" : "proxy authentication required",
                                       advice: "Send Proxy-Authorization: Basic with a user of the proxy's auth_file (for example http://USER:PASSWORD@proxy:3128 in HTTP_PROXY)."),
                    [challenge])
        }
    }
}
