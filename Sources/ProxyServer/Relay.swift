import CEventTLS
import ProxyConfig
import TLS

/// Moves bytes both ways between two endpoints until both directions have ended: a CONNECT tunnel, or a
/// connection after `101 Switching Protocols`. Backpressure: a side stops reading while the other holds too
/// much unsent. Half-close is carried through: when one side ends (EOF), what it sent is delivered, the other
/// side's write half is shut after a flush of every layer (close_notify on TLS, then FIN), and the other
/// direction goes on until it ends too, or nothing moves either way for the idle timeout.
/// It owns both endpoints from `start` on and frees them when it ends.
final class Relay: EventHandler {
    private struct Side {
        var endpoint: Endpoint
        var bytesIn = 0
        /// This side sent EOF: nothing more will be read from it.
        var readEnded = false
        /// Its write half is being shut, or is shut.
        var writeShutting = false
        var writeShut = false
    }

    private var sides: [Side]
    private var freed = false
    private let idleTimeout: TimeSpan
    private let onEnd: (_ bytesAToB: Int, _ bytesBToA: Int) -> Void
    /// When bytes last moved either way: the tunnel is idle only when both directions are.
    private var lastActivity = monotonicMillis()
    /// Polls a TLS filter's lower layer while it flushes (libevent reports no drain below the filter).
    private var flushTimer: OpaquePointer?
    private let base: OpaquePointer

    init(base: OpaquePointer, _ a: Endpoint, _ b: Endpoint, idleTimeout: TimeSpan, onEnd: @escaping (Int, Int) -> Void) {
        self.base = base
        self.sides = [Side(endpoint: a), Side(endpoint: b)]
        self.idleTimeout = idleTimeout
        self.onEnd = onEnd
    }

    func start() {
        for side in sides {
            let bev = side.endpoint.bev
            setCallbacks(bev)
            bufferevent_setwatermark(bev, Int16(EV_READ), 0, Worker.readHighWatermark)
            bufferevent_setwatermark(bev, Int16(EV_WRITE), Worker.writeLowWatermark, 0)
            mtls_bufferevent_set_timeouts_ms(bev, idleTimeout.milliseconds, 0)
            bufferevent_enable(bev, Int16(EV_READ | EV_WRITE))
        }
        // Bytes that arrived before the switch (a client that did not wait, the rest of an upstream read).
        pump(from: 0)
        pump(from: 1)
    }

    private func index(_ bev: OpaquePointer) -> Int? {
        if sides[0].endpoint.bev == bev { return 0 }
        if sides[1].endpoint.bev == bev { return 1 }
        return nil
    }

    private func pump(from i: Int) {
        guard !freed else { return }
        let source = sides[i].endpoint, destination = sides[1 - i].endpoint
        let input = source.input
        let n = evbuffer_get_length(input)
        if n > 0 {
            if sides[1 - i].writeShutting {
                evbuffer_drain(input, n)  // the other side can take nothing more
            } else {
                evbuffer_remove_buffer(input, destination.output, n)
                sides[i].bytesIn += n
                lastActivity = monotonicMillis()
            }
        }
        if evbuffer_get_length(destination.output) >= Worker.writeHighWatermark {
            bufferevent_disable(source.bev, Int16(EV_READ))
        }
    }

    override func readable(_ bev: OpaquePointer) {
        guard let i = index(bev) else { return }
        pump(from: i)
    }

    override func writable(_ bev: OpaquePointer) {
        guard !freed, let i = index(bev) else { return }
        if sides[i].writeShutting {
            continueShutting(i)
            return
        }
        // `bev` has room again: let the other side read.
        let other = 1 - i
        if !sides[other].readEnded {
            bufferevent_enable(sides[other].endpoint.bev, Int16(EV_READ))
            pump(from: other)
        }
    }

    override func event(_ bev: OpaquePointer, _ what: Int16) {
        guard !freed, let i = index(bev) else { return }
        let flags = Int32(what)
        if flags & BEV_EVENT_TIMEOUT != 0 && flags & BEV_EVENT_ERROR == 0 {
            // One side has been quiet for idle_timeout. A download through a tunnel keeps the client quiet for
            // long: close only when nothing has moved either way for that long.
            if monotonicMillis() - lastActivity < idleTimeout.milliseconds {
                if !sides[i].readEnded { bufferevent_enable(bev, Int16(EV_READ)) }  // libevent stopped on the timeout
                return
            }
            close(reset: false)
            return
        }
        if flags & BEV_EVENT_EOF != 0 && flags & BEV_EVENT_ERROR == 0 || flags & BEV_EVENT_ERROR != 0 && Self.isBareEOF(bev) {
            // Side i finished sending: deliver what it sent, then shut the other side's write half.
            pump(from: i)
            sides[i].readEnded = true
            bufferevent_disable(bev, Int16(EV_READ))
            startShutting(1 - i)
            return
        }
        close(reset: true)
    }

    /// OpenSSL 3 reports a TLS peer's FIN without close_notify as an error; for a relay it is that side's end.
    private static func isBareEOF(_ bev: OpaquePointer) -> Bool {
        var sawUnexpectedEOF = false
        for entry in OpenSSLErrors.drain(bufferevent: bev, threadQueueToo: false) {
            if entry.isPseudo { continue }
            if !entry.isUnexpectedEOF { return false }
            sawUnexpectedEOF = true
        }
        return sawUnexpectedEOF
    }

    private func startShutting(_ i: Int) {
        guard !sides[i].writeShutting else { return }
        sides[i].writeShutting = true
        bufferevent_setwatermark(sides[i].endpoint.bev, Int16(EV_WRITE), 0, 0)
        continueShutting(i)
    }

    private func continueShutting(_ i: Int) {
        guard !freed, !sides[i].writeShut else { return }
        switch sides[i].endpoint.flushStep() {
        case .pending(let belowTop):
            if belowTop { armFlushTimer() }
        case .shut:
            sides[i].writeShut = true
            // Both directions have ended: each side sent EOF and had the other's bytes flushed to it.
            if sides[0].writeShut && sides[1].writeShut { close(reset: false) }
        }
    }

    private func armFlushTimer() {
        if flushTimer == nil { flushTimer = makeTimer(base: base) }
        _ = mtls_evtimer_add_ms(flushTimer, 5)
    }

    override func timerFired() {
        for i in 0..<2 where sides[i].writeShutting && !sides[i].writeShut {
            continueShutting(i)
        }
    }

    /// Frees both sides now.
    func close(reset: Bool = false) {
        guard !freed else { return }
        freed = true
        if let flushTimer {
            event_free(flushTimer)
            self.flushTimer = nil
        }
        for i in sides.indices { sides[i].endpoint.free(reset: reset) }
        onEnd(sides[0].bytesIn, sides[1].bytesIn)
    }
}
