import CEventTLS

/// One worker's access log: records are serialised into a buffer and written in batches, never a line split.
/// The buffer is written when it passes `flushBytes`, 100 ms after its first line (a timer on the worker's loop),
/// and when the worker drains, reloads (SIGHUP) and ends; so no write(2) per request.
final class AccessLogWriter {
    static let flushBytes = 32 * 1024
    static let flushDelayMs = 100

    private(set) var log: AccessLog
    /// Grows to `flushBytes` and a line once records are written; small while the log is off.
    let buffer: LogLineBuffer
    private var timer: OpaquePointer?
    private var timerArmed = false

    /// `base`: the worker's event loop, for the flush timer; without one, every record is written at once.
    init(log: AccessLog, base: OpaquePointer?) {
        self.log = log
        buffer = LogLineBuffer(capacity: log.enabled ? Self.flushBytes + 4096 : 64)
        if let base {
            timer = mtls_evtimer_new(base, accessLogFlushCallback, Unmanaged.passUnretained(self).toOpaque())
        }
    }

    deinit { detach() }

    func write(_ record: AccessRecord) {
        guard log.enabled else { return }
        if log.json {
            buffer.appendJSON(record)
        } else {
            buffer.appendText(record)
        }
        buffer.byte(10)
        if buffer.count >= Self.flushBytes || timer == nil {
            flush()
        } else if !timerArmed {
            timerArmed = true
            _ = mtls_evtimer_add_ms(timer, Self.flushDelayMs)
        }
    }

    /// Writes what is buffered.
    func flush() {
        if timerArmed, let timer {
            event_del(timer)
        }
        timerArmed = false
        guard buffer.count > 0 else { return }
        log.write(buffer.base, count: buffer.count)
        buffer.removeAll()
    }

    /// After a reload: what is buffered goes to the log it was written for, what follows to `next`.
    func replace(with next: AccessLog) {
        flush()
        log = next
    }

    /// Writes what is buffered and lets go of the timer; call before the event loop is freed. Records written
    /// after this are written at once.
    func detach() {
        flush()
        if let timer { event_free(timer) }
        timer = nil
    }

    fileprivate func timerFired() {
        timerArmed = false
        flush()
    }
}

private func accessLogFlushCallback(_ fd: Int32, _ what: Int16, _ ctx: UnsafeMutableRawPointer?) {
    Unmanaged<AccessLogWriter>.fromOpaque(ctx!).takeUnretainedValue().timerFired()
}
