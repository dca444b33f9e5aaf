import CEventTLS
#if canImport(Glibc)
import Glibc
#endif

/// Where token signatures are made when a handshake runs as an OpenSSL ASYNC job (contexts with a token key set
/// `SSL_MODE_ASYNC`): the job hands the signature to one of two signing threads, registers an eventfd with the
/// job's wait context and pauses; `SSL_connect` returns `SSL_ERROR_WANT_ASYNC`, the worker's loop waits on that
/// fd with the other connections, and the thread writes it when the signature is made; the next `SSL_connect`
/// resumes the job, which takes the signature. A slow token then delays only its own handshakes.
///
/// A connection given up while its signature is being made keeps its SSL, cut off its socket, until the eventfd
/// says the signature is made; the job is then resumed to its end and the SSL freed (`AbandonedHandshake`), so
/// OpenSSL reuses the job. An SSL freed with its job still paused (a worker that stops first, a command line
/// that gives up) leaves the job unreclaimed: the wait context's clean-up marks the request abandoned and the
/// thread closes the eventfd when it finishes. The signature works only on copies, never on OpenSSL's buffers.
final class TokenSigningThreads: @unchecked Sendable {
    static let shared = TokenSigningThreads()

    /// Requests queued beyond this are refused at once (a token that stopped answering must not gather an
    /// unbounded queue of handshakes).
    static let capacity = 256
    static let threadCount = 2

    private let lock = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let wake = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    private var queue: [Request] = []
    private var started = false

    /// One signature asked of a thread: its input, its result, and the eventfd that says it is done.
    final class Request: @unchecked Sendable {
        let operation: TokenSigner.Operation
        let signer: TokenSigner
        let fd: Int32
        let lock = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
        var done = false
        var abandoned = false
        var result: [UInt8]?
        var error: String?

        init(_ operation: TokenSigner.Operation, signer: TokenSigner, fd: Int32) {
            self.operation = operation
            self.signer = signer
            self.fd = fd
            pthread_mutex_init(lock, nil)
        }

        deinit {
            pthread_mutex_destroy(lock)
            lock.deallocate()
        }

        var isDone: Bool {
            pthread_mutex_lock(lock)
            defer { pthread_mutex_unlock(lock) }
            return done
        }

        /// On the signing thread.
        func finish(result: [UInt8]?, error: String?) {
            pthread_mutex_lock(lock)
            self.result = result
            self.error = error
            done = true
            let closeNow = abandoned
            if !closeNow {
                var one: UInt64 = 1
                _ = write(fd, &one, 8)
            }
            pthread_mutex_unlock(lock)
            if closeNow { close(fd) }
        }

        /// The wait context let the fd go (its SSL was freed, or the job took the result): closed now if the
        /// thread is done with it, else by the thread when it is.
        func release() {
            pthread_mutex_lock(lock)
            let closeNow = done
            abandoned = true
            pthread_mutex_unlock(lock)
            if closeNow { close(fd) }
        }
    }

    private init() {
        pthread_mutex_init(lock, nil)
        pthread_cond_init(wake, nil)
    }

    /// Called inside an ASYNC job: queues the signature, pauses the job until it is made, and returns it (nil
    /// with an error on OpenSSL's queue, raised on this thread, when it failed or could not be queued).
    func sign(_ operation: TokenSigner.Operation, with signer: TokenSigner, pausing waitContext: OpaquePointer) -> [UInt8]? {
        let fd = eventfd(0, Int32(EFD_NONBLOCK | EFD_CLOEXEC))
        guard fd >= 0 else { return signer.signHere(operation).result }
        let request = Request(operation, signer: signer, fd: fd)
        // The wait context holds a reference until it lets the fd go (clean-up: SSL freed mid-signature).
        let key = Unmanaged.passRetained(request).toOpaque()
        guard ASYNC_WAIT_CTX_set_wait_fd(waitContext, key, fd, key, { _, _, _, custom in
            guard let custom else { return }
            Unmanaged<Request>.fromOpaque(custom).takeRetainedValue().release()
        }) == 1 else {
            Unmanaged<Request>.fromOpaque(key).release()
            close(fd)
            return signer.signHere(operation).result
        }
        if !enqueue(request) {
            request.finish(result: nil, error: "too many handshakes waiting for the token's signatures (\(Self.capacity))")
        }
        while !request.isDone {
            _ = ASYNC_pause_job()
        }
        finishWaiting(request, key: key, waitContext: waitContext)
        if let error = request.error { mtls_token_raise(error) }
        return request.result
    }

    /// Takes the fd out of the wait context and lets it go (the clean-up is not called for a cleared fd).
    private func finishWaiting(_ request: Request, key: UnsafeMutableRawPointer, waitContext: OpaquePointer) {
        _ = ASYNC_WAIT_CTX_clear_fd(waitContext, key)
        Unmanaged<Request>.fromOpaque(key).takeRetainedValue().release()
    }

    private func enqueue(_ request: Request) -> Bool {
        pthread_mutex_lock(lock)
        defer { pthread_mutex_unlock(lock) }
        guard queue.count < Self.capacity else { return false }
        if !started {
            started = true
            for _ in 0..<Self.threadCount {
                var tid = pthread_t()
                let me = Unmanaged.passRetained(self).toOpaque()
                pthread_create(&tid, nil, { arg in
                    Unmanaged<TokenSigningThreads>.fromOpaque(arg!).takeRetainedValue().serve()
                    return nil
                }, me)
                pthread_detach(tid)
            }
        }
        queue.append(request)
        pthread_cond_signal(wake)
        return true
    }

    /// A handshake given up while its signature waits in the queue (its connection was closed): the signature is
    /// not made, the request is finished with an error at once, so that the token's time goes to handshakes that
    /// still want it and the paused job ends (`AbandonedHandshake`). Nothing when a thread already took it.
    func giveUp(signatureFD fd: Int32) {
        pthread_mutex_lock(lock)
        let index = queue.firstIndex { $0.fd == fd }
        let request = index.map { queue.remove(at: $0) }
        pthread_mutex_unlock(lock)
        request?.finish(result: nil, error: "the handshake was given up before its signature")
    }

    private func serve() -> Never {
        while true {
            pthread_mutex_lock(lock)
            while queue.isEmpty { pthread_cond_wait(wake, lock) }
            let request = queue.removeFirst()
            pthread_mutex_unlock(lock)
            let outcome = request.signer.signHere(request.operation, raise: false)
            ERR_clear_error()
            request.finish(result: outcome.result, error: outcome.error)
        }
    }
}
