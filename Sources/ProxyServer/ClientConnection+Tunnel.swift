import CEventTLS
import HTTP1
import ProxyConfig
import TLS

/// The client connection's tunnels and relays: CONNECT (blind, opened then intercepted or served in plain, or
/// refused) and the hand-over after `101 Switching Protocols`. `TunnelSetup` decides; this carries the decision
/// out on the connection's resources. Each tunnel resource is the payload of the machine's state while it lives
/// (`ClientTunnelResources`), handed to the machine when it is made and back when it is done with.
extension ClientConnection {
    // MARK: upgrades

    /// After `101 Switching Protocols`: the head goes to the client, then bytes flow both ways between the
    /// client and this upstream connection until both directions end. The connection never returns to the pool.
    func switchProtocols(upgrade: String) {
        guard let upstream else { return }
        machine.responseKeepAlive(false)
        exchange.writeSwitchHead(to: output, upgrade: upgrade)
        let timeout = exchange.match?.timeouts.idle ?? runtime.config.upstream.timeouts.idle
        // The reference is dropped only once the hand-over succeeded: until then the connection is this one's to
        // close (`switchToRelay` ends it when it fails, and so would `teardown`).
        guard let detached = upstream.switchToRelay() else {
            teardown(reset: true)
            return
        }
        self.upstream = nil
        startRelay(with: detached, idleTimeout: timeout)
    }

    /// Hands the client's side and `other` to a relay, which the machine holds from then on (`.relaying`); the
    /// access record is written when it ends.
    func startRelay(with other: Endpoint, idleTimeout: TimeSpan) {
        guard client.makeBufferevent(base: worker.base) else {
            var other = other
            other.free(reset: true)
            teardown(reset: true)
            return
        }
        mtls_bufferevent_set_timeouts_ms(client.bev, 0, 0)
        if let timer {
            event_free(timer)
            self.timer = nil
        }
        let relay = Relay(base: worker.base, client.handOver(), other, idleTimeout: idleTimeout) { [unowned self] fromClient, toClient in
            // Ended by itself (the machine hands it back and closes), or closed by `teardown`, which took it from
            // the machine already: either way the record is written and the connection ends.
            _ = self.machine.relayEnded()
            self.finish(.relayed(fromClient: fromClient, toClient: toClient))
        }
        machine.relayStarted(relay)
        relay.start()
    }

    // MARK: CONNECT

    /// CONNECT host:port: `TunnelSetup` decides; this carries the decision out.
    func startTunnel(_ head: RequestHead) {
        let setup = TunnelSetup.decide(target: head.target, router: runtime.router,
                                       interceptionEnabled: runtime.localCA != nil && runtime.config.intercept != nil)
        exchange.record.describe(setup)
        exchange.match = setup.match
        switch setup.mode {
        case .refuse(let response):
            finish(.answered(response, close: true))
        case .blind:
            dialTunnel(host: setup.host, port: setup.port, match: setup.match!)
        case .open(let inside):
            openTunnel(OpenedTunnel(host: setup.host, port: setup.port, inside: inside))
        }
    }

    func dialTunnel(host: String, port: Int, match: RouteMatch) {
        // The client stays read while the tunnel is dialled: its EOF or reset ends the dial at once (the machine
        // aborts, and the teardown cancels the dialler), and bytes it sends before the 200 wait in the input for
        // the relay (`clientReadable` leaves them there).
        let dialer = TunnelDialer(worker: worker, host: host, port: port, connect: match.connect, allowPrivate: match.allowPrivate,
                                  timeout: match.timeouts.connect, egress: match.egress) {
            [unowned self] outcome in
            // The dialler reports once, from the loop, and has let go of its own resources (a cancelled one never
            // reports): the machine hands it back, and the CONNECT goes on to a relay or to its answer.
            guard self.machine.tunnelDialled() != nil else {
                if case .connected(let b) = outcome { bufferevent_free(b) }
                return
            }
            if case .connected(let upstreamBev) = outcome {
                self.exchange.record.status = 200
                TunnelSetup.established.withUnsafeBytes { _ = evbuffer_add(self.output, $0.baseAddress, $0.count) }
                self.startRelay(with: Endpoint(bev: upstreamBev), idleTimeout: match.timeouts.idle)
            } else if let response = ConnectFailures.response(for: outcome, host: host, port: port, timeouts: match.timeouts) {
                self.finish(.answered(response, close: true))
            }
        }
        guard let dialer else {
            finish(.answered(ProxyErrorResponse(status: 502, errorType: .proxyInternalError, details: "could not start a connection to \(host):\(port)"),
                             close: true))
            return
        }
        machine.tunnelDialling(dialer)
    }

    /// Answers 200 to a tunnel whose first bytes will say how it is served (`TunnelSetup.Inside`). What
    /// interception needs (a leaf minted for the host) is made first, so that a failure is still answered in HTTP.
    func openTunnel(_ opened: OpenedTunnel) {
        if case .intercept = opened.inside.tls, let failure = opened.prepareInterception(worker: worker) {
            finish(.answered(failure, close: true))
            return
        }
        guard evbuffer_get_length(input) == 0 else {
            finish(.answered(ProxyErrorResponse(status: 400, errorType: .httpRequestError, details: "bytes after CONNECT before the tunnel was established"),
                             close: true))
            return
        }
        TunnelSetup.established.withUnsafeBytes { _ = evbuffer_add(output, $0.baseAddress, $0.count) }
        exchange.record.status = 200
        machine.tunnelOpened(opened)
    }

    /// The client's first bytes inside an opened tunnel: a TLS ClientHello or a plain HTTP request.
    func serveOpenedTunnel() {
        guard evbuffer_get_length(input) > 0, let first = evbuffer_pullup(input, 1), let opened = machine.tunnelBytesArrived() else { return }
        switch opened.inside.service(firstByte: first[0]) {
        case .intercept:
            intercept(opened)
        case .plainRequests:
            // The CONNECT itself is not logged; each request inside is, with "tunnel": "plain". No TLS layer:
            // the requests are read from the socket as on the forward listener.
            exchange = Exchange()
            machine.servingInsideTunnel(as: .plainTunnel(host: opened.host))
            readHeads()
        case .refuse(let response, let answerInPlain):
            worker.logger.info("tunnel to \(opened.host):\(opened.port) from \(peer) closed: \(response.details)")
            if answerInPlain {
                finish(.answered(response, close: true))
            } else {
                // The client speaks TLS: an HTTP answer would mean nothing to it. The record says why.
                finish(.refusedWithoutAnswer(response))
            }
        }
    }

    /// Terminates the client's TLS with the leaf minted for the tunnel's host, and serves the requests inside
    /// like any other: upstream verification, the route's identity, pooling.
    func intercept(_ opened: OpenedTunnel) {
        guard opened.startTLS(on: &client, base: worker.base) else {
            worker.logger.info("intercepted tunnel to \(opened.host) from \(peer): TLS with the client could not be started")
            teardown(reset: false)
            return
        }
        // The CONNECT itself is not logged; each request inside is, with intercepted: true.
        exchange = Exchange()
        machine.servingInsideTunnel(as: .intercepted(host: opened.host, port: opened.port))
        start()  // enabling the filter makes it read the ClientHello already in the socket's input
    }
}

/// The server's tunnel resources, as the connection's machine holds them.
enum ClientTunnelResources: TunnelResources {
    typealias Dialer = TunnelDialer
    typealias Opened = OpenedTunnel
    typealias Relay = ByteRelay
}

/// `Relay` under a name the conformance above can use (inside it, `Relay` names the associated type).
typealias ByteRelay = Relay
