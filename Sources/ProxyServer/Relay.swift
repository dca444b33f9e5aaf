import CEventTLS
import ProxyConfig

/// Moves bytes both ways between two bufferevents until either side closes: a CONNECT tunnel, or a connection
/// after `101 Switching Protocols`. Backpressure: a side stops reading while the other holds too much unsent.
/// It owns both bufferevents from `start` on and frees them when it ends.
final class Relay {
    private var a: OpaquePointer?
    private var b: OpaquePointer?
    private let idleTimeout: TimeSpan
    private let onEnd: (_ bytesAToB: Int, _ bytesBToA: Int) -> Void
    private var aToB = 0
    private var bToA = 0
    private var ending = false
    /// When bytes last moved either way: the tunnel is idle only when both directions are.
    private var lastActivity = monotonicMillis()

    init(_ a: OpaquePointer, _ b: OpaquePointer, idleTimeout: TimeSpan, onEnd: @escaping (Int, Int) -> Void) {
        self.a = a
        self.b = b
        self.idleTimeout = idleTimeout
        self.onEnd = onEnd
    }

    func start() {
        guard let a, let b else { return }
        let me = Unmanaged.passUnretained(self).toOpaque()
        for bev in [a, b] {
            bufferevent_setcb(bev, relayReadCallback, relayWriteCallback, relayEventCallback, me)
            bufferevent_setwatermark(bev, Int16(EV_READ), 0, Worker.readHighWatermark)
            bufferevent_setwatermark(bev, Int16(EV_WRITE), Worker.writeLowWatermark, 0)
            mtls_bufferevent_set_timeouts_ms(bev, idleTimeout.milliseconds, 0)
            bufferevent_enable(bev, Int16(EV_READ | EV_WRITE))
        }
        // Bytes that arrived before the switch (a client that did not wait, the rest of an upstream read).
        pump(from: a)
        pump(from: b)
    }

    private func other(_ bev: OpaquePointer) -> OpaquePointer? { bev == a ? b : a }

    fileprivate func pump(from source: OpaquePointer) {
        guard !ending, let destination = other(source) else { return }
        let input = bufferevent_get_input(source)
        let n = evbuffer_get_length(input)
        if n > 0 {
            evbuffer_remove_buffer(input, bufferevent_get_output(destination), n)
            if source == a { aToB += n } else { bToA += n }
            lastActivity = monotonicMillis()
        }
        if evbuffer_get_length(bufferevent_get_output(destination)) >= Worker.writeHighWatermark {
            bufferevent_disable(source, Int16(EV_READ))
        }
    }

    fileprivate func drained(_ bev: OpaquePointer) {
        if ending {
            if let a, evbuffer_get_length(bufferevent_get_output(a)) > 0 { return }
            if let b, evbuffer_get_length(bufferevent_get_output(b)) > 0 { return }
            close()
            return
        }
        // `bev` has room again: let the other side read.
        if let source = other(bev) {
            bufferevent_enable(source, Int16(EV_READ))
            pump(from: source)
        }
    }

    fileprivate func event(_ bev: OpaquePointer, _ what: Int16) {
        guard !ending else {
            close()
            return
        }
        if Int32(what) & BEV_EVENT_TIMEOUT != 0 && Int32(what) & BEV_EVENT_ERROR == 0 {
            // One side has been quiet for idle_timeout. A download through a tunnel keeps the client quiet for
            // long: close only when nothing has moved either way for that long.
            if monotonicMillis() - lastActivity < idleTimeout.milliseconds {
                bufferevent_enable(bev, Int16(EV_READ))  // libevent stopped reading on the timeout
                return
            }
        }
        if Int32(what) & BEV_EVENT_EOF != 0 {
            // One side finished: deliver what it sent, let the other side's queue drain, then close both.
            pump(from: bev)
            ending = true
            for side in [a, b] { if let side { bufferevent_disable(side, Int16(EV_READ)) } }
            if let dest = other(bev) {
                bufferevent_setwatermark(dest, Int16(EV_WRITE), 0, 0)
                if evbuffer_get_length(bufferevent_get_output(dest)) > 0 { return }
            }
        }
        close()
    }

    /// Frees both sides now.
    func close() {
        guard a != nil || b != nil else { return }
        for side in [a, b] {
            if let side {
                bufferevent_setcb(side, nil, nil, nil, nil)
                bufferevent_free(side)
            }
        }
        a = nil
        b = nil
        onEnd(aToB, bToA)
    }
}

private func relayReadCallback(_ bev: OpaquePointer?, _ ctx: UnsafeMutableRawPointer?) {
    guard let bev else { return }
    Unmanaged<Relay>.fromOpaque(ctx!).takeUnretainedValue().pump(from: bev)
}

private func relayWriteCallback(_ bev: OpaquePointer?, _ ctx: UnsafeMutableRawPointer?) {
    guard let bev else { return }
    Unmanaged<Relay>.fromOpaque(ctx!).takeUnretainedValue().drained(bev)
}

private func relayEventCallback(_ bev: OpaquePointer?, _ what: Int16, _ ctx: UnsafeMutableRawPointer?) {
    guard let bev else { return }
    Unmanaged<Relay>.fromOpaque(ctx!).takeUnretainedValue().event(bev, what)
}
