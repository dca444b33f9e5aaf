import ProxyConfig
import Reports

/// The status page: every identity's certificates on a timeline, the routes with their traffic, the process.
/// One self-contained XHTML-compatible HTML document (inline SVG, one `<style>` element allowed by its hash,
/// no script, no external resource), rendered from a `StatusModel`. Pure: the same model gives the same bytes.
///
/// What only a running proxy knows (the process, traffic per route, the refresh) sits between `<!--live-->` and
/// `<!--/live-->`; the offline report (`certs --html`) is the same document without those parts.
public enum StatusPage {
    /// How often the live page reloads itself (a meta refresh: the page has no script).
    public static let refreshSeconds = 15

    public static let liveStart = "<!--live-->"
    public static let liveEnd = "<!--/live-->"

    /// The page's only style. Its SHA-256 (base64) goes into the Content-Security-Policy.
    public static let stylesheet = """

    body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
    header,main,footer{max-width:1240px;margin:0 auto;padding:0 18px}
    header{padding-top:14px}
    h1{font-size:21px;margin:6px 0}
    h2{font-size:17px;margin:22px 0 8px;border-bottom:1px solid #d5d9e0;padding-bottom:4px}
    h3{font-size:15px;margin:0 0 6px}
    .sub{color:#5b6473}
    .card{background:#fff;border:1px solid #dde1e7;border-radius:6px;padding:12px 14px;margin:10px 0}
    table{border-collapse:collapse;width:100%;margin:6px 0}
    th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #eceef2;vertical-align:top}
    th{font-weight:600;color:#3b4452;background:#f1f3f6}
    td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
    code,.mono{font-family:"DejaVu Sans Mono",Menlo,Consolas,monospace;font-size:12.5px;overflow-wrap:anywhere}
    .badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600;border:1px solid}
    .ok{color:#116329;background:#e6f4ea;border-color:#a8d5b5}
    .warn{color:#7a4b00;background:#fff4d6;border-color:#f0c869}
    .bad{color:#a11d1d;background:#fde8e8;border-color:#f0a8a8}
    .muted{color:#6b7280;background:#f1f3f6;border-color:#d5d9e0}
    .facts{display:flex;flex-wrap:wrap;gap:4px 22px;margin:4px 0 8px}
    .facts div span{color:#5b6473}
    svg.timeline{width:100%;height:auto;display:block;margin:6px 0}
    svg .bar-active{fill:#2f9e44}
    svg .bar-valid{fill:#8bc34a}
    svg .bar-next,svg .bar-staged{fill:#4c8bf5}
    svg .bar-expired{fill:#b0b6bf}
    svg .warnwin{fill:#f59f00;fill-opacity:.85}
    svg .today{stroke:#d6336c;stroke-width:2}
    svg .takeover{stroke:#1c4fd0;stroke-width:2;stroke-dasharray:4 3}
    svg .axis{stroke:#c3c8d0}
    svg text{font-size:11px;fill:#1d2330}
    svg text.on-bar{fill:#fff;font-weight:600}
    svg text.today-label{fill:#d6336c;font-weight:600}
    svg text.takeover-label{fill:#1c4fd0;font-weight:600}
    .failure{color:#a11d1d}
    td.host{min-width:13em}
    .last-failure{min-width:20em}
    .legend{color:#5b6473;font-size:12px}
    .sw{display:inline-block;width:12px;height:10px;border-radius:2px;margin:0 4px 0 10px;vertical-align:baseline}
    .sw-active{background:#2f9e44}.sw-staged{background:#4c8bf5}.sw-expired{background:#b0b6bf}.sw-warn{background:#f59f00}
    .sw-today{background:#d6336c;width:3px}.sw-takeover{border-left:2px dashed #1c4fd0;width:0}
    footer{color:#6b7280;font-size:12px;padding:18px}

    """

    /// The policy the admin response sends: nothing may load, only the page's own style applies.
    public static func contentSecurityPolicy(styleHash: String) -> String {
        metaContentSecurityPolicy(styleHash: styleHash) + "; frame-ancestors 'none'"
    }

    /// The same policy as the page carries in a `<meta>` (which cannot say frame-ancestors), so that the offline
    /// report is as strict when opened from a file.
    public static func metaContentSecurityPolicy(styleHash: String) -> String {
        "default-src 'none'; style-src 'sha256-\(styleHash)'; img-src 'none'; base-uri 'none'; form-action 'none'"
    }

    public static func render(_ model: StatusModel, styleHash: String) -> String {
        var page = HTMLWriter()
        page.raw("<!DOCTYPE html>\n<html xmlns=\"http://www.w3.org/1999/xhtml\" lang=\"en\">\n<head>\n")
        page.raw("<meta charset=\"utf-8\"/>\n")
        page.raw("<meta http-equiv=\"Content-Security-Policy\" content=\"\(escape(metaContentSecurityPolicy(styleHash: styleHash)))\"/>\n")
        page.raw("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"/>\n")
        if model.live != nil {
            page.raw("\(liveStart)<meta http-equiv=\"refresh\" content=\"\(refreshSeconds)\"/>\n\(liveEnd)")
        }
        page.raw("<title>mtls-proxy status</title>\n<style>\(stylesheet)</style>\n</head>\n<body>\n")
        header(&page, model)
        page.raw("<main>\n")
        if let live = model.live {
            page.raw(liveStart)
            process(&page, live, now: model.generatedAt)
            page.raw(liveEnd)
        }
        identities(&page, model)
        routes(&page, model)
        if let ca = model.localCA { localCA(&page, ca) }
        page.raw("</main>\n<footer>Read-only. Certificates, routes and dates come from the configuration")
        if model.live != nil {
            page.raw("\(liveStart); traffic from this process's counters, refreshed every \(refreshSeconds) s\(liveEnd)")
        }
        page.raw(". No key, PIN, query string or header value is shown.</footer>\n</body>\n</html>\n")
        return page.text
    }

    // MARK: sections

    private static func header(_ page: inout HTMLWriter, _ model: StatusModel) {
        page.raw("<header>\n<h1>mtls-proxy status</h1>\n<div class=\"sub\">")
        page.raw("config <code>\(escape(model.config))</code> · generated <time data-volatile=\"generated\" datetime=\"\(UTCTime.rfc3339(model.generatedAt))\">\(displayTime(model.generatedAt))</time>")
        page.raw(" · warning window \(model.warnDays) days")
        page.raw(model.live == nil ? " · offline report (no live figures)" : "")
        page.raw("</div>\n")
        let worst = model.identities.map(\.report.health).max(by: { severity($0) < severity($1) })
        page.raw("<p id=\"summary\">")
        let count = model.identities.count
        page.raw("\(count) \(count == 1 ? "identity" : "identities"), \(model.routes.count) \(model.routes.count == 1 ? "route" : "routes"). ")
        if let worst, worst != .ok {
            let names = model.identities.filter { $0.report.health != .ok }.map { escape($0.report.name) }
            page.raw("<span class=\"badge \(healthClass(worst))\">attention</span> \(names.joined(separator: ", "))")
        } else {
            page.raw("<span class=\"badge ok\">all identities covered</span>")
        }
        page.raw("</p>\n</header>\n")
    }

    private static func process(_ page: inout HTMLWriter, _ live: LiveFigures, now: Int) {
        page.raw("<section id=\"process\">\n<h2>Process</h2>\n<div class=\"card\">\n<div class=\"facts\">\n")
        fact(&page, "version", escape(live.version))
        fact(&page, "commit", "<code>\(escape(live.commit))</code>")
        fact(&page, "started", displayTime(live.startedAt))
        fact(&page, "uptime", "<span data-volatile=\"uptime\">\(duration(now - live.startedAt))</span>")
        fact(&page, "workers", "\(live.workers)")
        fact(&page, "client connections", "<span data-volatile=\"connections\">\(live.connections)</span>")
        let ready = live.notReady.map { "<span class=\"badge bad\">not ready</span> \(escape($0))" } ?? "<span class=\"badge ok\">ready</span>"
        fact(&page, "readiness", "<span id=\"readiness\">\(ready)</span>")
        page.raw("</div>\n<h3>Idle pooled upstream connections</h3>\n")
        if live.pools.isEmpty {
            page.raw("<p class=\"sub\" id=\"pools\">none</p>\n")
        } else {
            page.raw("<table id=\"pools\"><thead><tr><th>upstream</th><th class=\"num\">idle</th></tr></thead><tbody>\n")
            for pool in live.pools {
                page.raw("<tr><td><code>\(escape(pool.upstream))</code></td><td class=\"num\">\(pool.idle)</td></tr>\n")
            }
            page.raw("</tbody></table>\n")
        }
        page.raw("<h3>Config loads</h3>\n<table id=\"reloads\"><thead><tr><th>time</th><th>trigger</th><th>result</th></tr></thead><tbody>\n")
        for reload in live.reloads {
            page.raw("<tr data-success=\"\(reload.success)\"><td>\(displayTime(reload.at))</td><td>\(escape(reload.reason))</td><td>")
            if reload.success {
                page.raw("<span class=\"badge ok\">applied</span>")
            } else {
                page.raw("<span class=\"badge bad\">failed</span> <span class=\"failure\">\(escape(reload.error ?? ""))</span> (the previous config still serves)")
            }
            page.raw("</td></tr>\n")
        }
        page.raw("</tbody></table>\n</div>\n</section>\n")
    }

    private static func identities(_ page: inout HTMLWriter, _ model: StatusModel) {
        page.raw("<section id=\"identities\">\n<h2>Identities</h2>\n")
        page.raw("<div class=\"legend\">Timelines:<span class=\"sw sw-active\"></span>presented now<span class=\"sw sw-staged\"></span>staged")
        page.raw("<span class=\"sw sw-expired\"></span>expired<span class=\"sw sw-warn\"></span>last \(model.warnDays) days (warning window)")
        page.raw("<span class=\"sw sw-today\"></span>today<span class=\"sw sw-takeover\"></span>takeover. Hover a bar for its subject and serial.</div>\n")
        if model.identities.isEmpty { page.raw("<p class=\"sub\">No identity is configured.</p>\n") }
        for panel in model.identities {
            let r = panel.report
            page.raw("<div class=\"card identity\" data-identity=\"\(escape(r.name))\" data-health=\"\(r.health.rawValue)\">\n")
            page.raw("<h3>\(escape(r.name)) <span class=\"badge \(healthClass(r.health))\">\(healthText(r.health))</span></h3>\n")
            page.raw("<div class=\"facts\">\n")
            if let days = r.daysLeft {
                fact(&page, "presents", "#\(r.active ?? 0), \(daysPhrase(days))")
            } else {
                fact(&page, "presents", "<span class=\"failure\">no currently valid certificate</span>")
            }
            if let next = r.next {
                let what = next.certificate.map { "#\($0) takes over" } ?? "nothing valid"
                fact(&page, "next change", "\(displayTime(next.atUnix)): \(what)")
            }
            let readiness: String
            if panel.holdsReadinessBack {
                readiness = "<span class=\"badge bad\">holds readiness back</span> (when admin.ready_requires_valid_identities is set)"
            } else if panel.routes.isEmpty {
                readiness = "no route names it"
            } else {
                readiness = "<span class=\"badge ok\">ready</span>"
            }
            fact(&page, "readiness", readiness)
            fact(&page, "preference", escape(r.prefer))
            let routes = panel.routes.isEmpty ? "none" : panel.routes.map { "<span class=\"route-ref\">\(escape($0))</span>" }.joined(separator: ", ")
            fact(&page, "routes", routes)
            let kinds = Set(panel.keys.map(\.kind))
            fact(&page, "keys", kinds.isEmpty ? "none" : kinds.map(\.rawValue).sorted().joined(separator: " and "))
            page.raw("</div>\n")
            timeline(&page, panel, now: model.generatedAt, warnDays: model.warnDays)
            certificateTable(&page, panel)
            page.raw("</div>\n")
        }
        page.raw("</section>\n")
    }

    private static func certificateTable(_ page: inout HTMLWriter, _ panel: IdentityPanel) {
        page.raw("<table class=\"certificates\"><thead><tr><th>#</th><th>state</th><th>serial</th><th>subject</th><th>valid from</th><th>valid until</th><th class=\"num\">days left</th><th>key</th></tr></thead><tbody>\n")
        for (i, c) in panel.report.certificates.enumerated() {
            page.raw("<tr data-serial=\"\(escape(c.serial))\"><td>\(c.index)</td><td>\(stateText(c))")
            if let unix = panel.takeover(i) { page.raw("<br/><span class=\"takeover-text\">takes over \(displayTime(unix))</span>") }
            page.raw("</td><td><code>\(escape(c.serial))</code></td><td>\(escape(c.subject))<br/><span class=\"sub\">issuer \(escape(c.issuer))</span></td>")
            page.raw("<td>\(displayTime(c.notBeforeUnix))</td><td>\(displayTime(c.notAfterUnix))</td><td class=\"num\">\(c.daysLeft)</td>")
            if i < panel.keys.count {
                let key = panel.keys[i]
                page.raw("<td data-key-kind=\"\(key.kind.rawValue)\">\(key.kind.rawValue) <code>\(escape(key.text))</code>")
                if let available = key.available {
                    page.raw("<br/><span class=\"sub\" data-token=\"\(available ? "available" : "unavailable")\">\(available ? "signing" : "unavailable: the proxy retries it")</span>")
                }
                page.raw("</td>")
            } else {
                page.raw("<td></td>")
            }
            page.raw("</tr>\n")
        }
        page.raw("</tbody></table>\n")
    }

    // MARK: the timeline

    static let width = 1000.0
    static let margin = 14.0
    static let rowHeight = 26.0
    static let top = 30.0

    /// One SVG per identity: a bar per certificate from notBefore to notAfter, its last `warnDays` shaded, a line
    /// at today and one at each staged certificate's takeover. Every mark carries its dates as data- attributes.
    private static func timeline(_ page: inout HTMLWriter, _ panel: IdentityPanel, now: Int, warnDays: Int) {
        let certificates = panel.report.certificates
        guard !certificates.isEmpty else {
            page.raw("<p class=\"sub\">No certificate configured.</p>\n")
            return
        }
        // Geometry from the hour, so that pages rendered seconds apart draw the same picture.
        let today = now - now % 3600
        var start = min(certificates.map(\.notBeforeUnix).min()!, today)
        var end = max(certificates.map(\.notAfterUnix).max()!, today)
        let span0 = max(end - start, 86_400)
        start -= span0 / 40
        end = start + span0 + span0 / 20
        let span = Double(end - start)
        func x(_ t: Int) -> Double { margin + (Double(t - start) / span) * (width - 2 * margin) }
        let height = top + rowHeight * Double(certificates.count) + 20
        page.raw("<svg class=\"timeline\" xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 \(num(width)) \(num(height))\" width=\"\(num(width))\" height=\"\(num(height))\" role=\"img\" aria-label=\"certificate timeline of identity \(escape(panel.report.name))\">\n")
        page.raw("<line class=\"axis\" x1=\"\(num(margin))\" y1=\"\(num(top - 6))\" x2=\"\(num(width - margin))\" y2=\"\(num(top - 6))\"/>\n")
        page.raw("<text x=\"\(num(margin))\" y=\"12\">\(displayDate(start))</text>\n")
        page.raw("<text x=\"\(num(width - margin))\" y=\"12\" text-anchor=\"end\">\(displayDate(end))</text>\n")
        for (i, c) in certificates.enumerated() {
            let y = top + rowHeight * Double(i)
            let x0 = x(c.notBeforeUnix), x1 = x(c.notAfterUnix)
            var attributes = "class=\"mark state-\(c.state.rawValue)\" data-index=\"\(c.index)\" data-serial=\"\(escape(c.serial))\" data-state=\"\(c.state.rawValue)\" data-not-before=\"\(c.notBefore)\" data-not-after=\"\(c.notAfter)\" data-days-left=\"\(c.daysLeft)\""
            if let at = c.takesOverAt { attributes += " data-takes-over-at=\"\(at)\"" }
            page.raw("<g \(attributes)>\n")
            page.raw("<title>#\(c.index) \(stateText(c)): \(escape(c.subject)), serial \(escape(c.serial)), valid \(displayTime(c.notBeforeUnix)) to \(displayTime(c.notAfterUnix)) (\(daysPhrase(c.daysLeft)))</title>\n")
            page.raw("<rect class=\"bar-\(c.state.rawValue)\" x=\"\(num(x0))\" y=\"\(num(y))\" width=\"\(num(max(x1 - x0, 2)))\" height=\"\(num(rowHeight - 8))\" rx=\"3\"/>\n")
            let warnFrom = max(c.notBeforeUnix, c.notAfterUnix - warnDays * 86_400)
            page.raw("<rect class=\"warnwin\" data-warn-from=\"\(UTCTime.rfc3339(warnFrom))\" x=\"\(num(x(warnFrom)))\" y=\"\(num(y))\" width=\"\(num(max(x1 - x(warnFrom), 1)))\" height=\"\(num(rowHeight - 8))\"/>\n")
            let label = "#\(c.index) \(stateText(c)) · serial \(shortSerial(c.serial)) · \(daysPhrase(c.daysLeft))"
            // The label goes on the bar when it fits, else beside it (on the side with room).
            let labelWidth = Double(label.count) * 6.2
            if x1 - x0 > labelWidth + 10 {
                page.raw("<text class=\"on-bar\" x=\"\(num(x0 + 6))\" y=\"\(num(y + 13))\">\(escape(label))</text>\n")
            } else if x1 + labelWidth + 6 < width {
                page.raw("<text x=\"\(num(x1 + 6))\" y=\"\(num(y + 13))\">\(escape(label))</text>\n")
            } else {
                page.raw("<text x=\"\(num(x0 - 6))\" y=\"\(num(y + 13))\" text-anchor=\"end\">\(escape(label))</text>\n")
            }
            page.raw("</g>\n")
            if let at = c.takesOverAt, let unix = panel.takeover(i) {
                let tx = x(unix)
                page.raw("<g class=\"takeover-mark\" data-index=\"\(c.index)\" data-at=\"\(at)\"><title>#\(c.index) takes over at \(displayTime(unix))</title>")
                page.raw("<line class=\"takeover\" x1=\"\(num(tx))\" y1=\"\(num(top - 10))\" x2=\"\(num(tx))\" y2=\"\(num(height - 14))\"/>")
                let anchor = tx > width - 200 ? " text-anchor=\"end\"" : ""
                page.raw("<text class=\"takeover-label\" x=\"\(num(anchor.isEmpty ? tx + 4 : tx - 4))\" y=\"\(num(top - 10))\"\(anchor)>takes over \(displayDate(unix))</text></g>\n")
            }
        }
        let tx = x(today)
        page.raw("<g class=\"today-mark\" data-at=\"\(UTCTime.rfc3339(now))\"><title>today, \(displayTime(now))</title>")
        page.raw("<line class=\"today\" x1=\"\(num(tx))\" y1=\"\(num(top - 6))\" x2=\"\(num(tx))\" y2=\"\(num(height - 12))\"/>")
        let anchor = tx > width - 160 ? " text-anchor=\"end\"" : ""
        page.raw("<text class=\"today-label\" x=\"\(num(anchor.isEmpty ? tx + 4 : tx - 4))\" y=\"\(num(height - 3))\"\(anchor)>today \(displayDate(now))</text></g>\n")
        page.raw("</svg>\n")
    }

    // MARK: routes, local CA

    private static func routes(_ page: inout HTMLWriter, _ model: StatusModel) {
        page.raw("<section id=\"routes\">\n<h2>Routes</h2>\n<div class=\"card\">\n")
        if let live = model.live {
            page.raw("\(liveStart)<p class=\"sub\">Requests and errors (5xx answers) over the last \(duration(live.windowSeconds)).</p>\n\(liveEnd)")
        }
        page.raw("<table id=\"route-table\"><thead><tr><th>route</th><th>host</th><th>port</th><th>path</th><th>action</th><th>identity</th><th>egress</th>")
        if model.live != nil {
            page.raw("\(liveStart)<th class=\"num\">requests</th><th class=\"num\">errors</th><th>last upstream failure</th>\(liveEnd)")
        }
        page.raw("</tr></thead><tbody>\n")
        for row in model.routes {
            let r = row.report
            page.raw("<tr class=\"route\" data-route=\"\(escape(r.label))\" data-index=\"\(r.index)\">")
            page.raw("<td>\(escape(r.label))</td><td class=\"host\"><code>\(escape(r.host))</code></td><td>\(r.port.map(String.init) ?? "any")</td>")
            page.raw("<td>\(r.path.map { "<code>\(escape($0))</code>" } ?? "any")</td><td>\(escape(r.action))</td>")
            page.raw("<td>\(r.identity.map(escape) ?? "—")</td><td>\(escape(row.egress))</td>")
            if let live = model.live {
                let traffic = live.traffic[r.label] ?? RouteTraffic(requests: 0, errors: 0)
                page.raw(liveStart)
                page.raw("<td class=\"num\" data-requests=\"\(traffic.requests)\">\(traffic.requests)</td>")
                let rate = traffic.requests > 0 ? " (\(percent(traffic.errors, traffic.requests)))" : ""
                page.raw("<td class=\"num\" data-errors=\"\(traffic.errors)\">\(traffic.errors)\(rate)</td><td>")
                if let failure = traffic.lastFailure {
                    page.raw("<div class=\"failure last-failure\" data-at=\"\(UTCTime.rfc3339(failure.at))\" data-status=\"\(failure.status)\">\(displayTime(failure.at)) · \(failure.status)<br/><code>\(escape(failure.proxyStatus))</code></div>")
                } else {
                    page.raw("none")
                }
                page.raw("</td>\(liveEnd)")
            }
            page.raw("</tr>\n")
        }
        page.raw("</tbody></table>\n</div>\n</section>\n")
    }

    private static func localCA(_ page: inout HTMLWriter, _ ca: LocalCAReport) {
        page.raw("<section id=\"local-ca\">\n<h2>Local CA (interception)</h2>\n<div class=\"card\"><div class=\"facts\">\n")
        fact(&page, "certificate", "<code>\(escape(ca.certFile))</code>")
        if let error = ca.error {
            fact(&page, "state", "<span class=\"badge bad\">\(escape(error))</span>")
        } else {
            fact(&page, "subject", escape(ca.subject ?? ""))
            if let notAfter = ca.notAfterUnix, let days = ca.daysLeft {
                let cls = days < 0 ? "bad" : days < 30 ? "warn" : "ok"
                fact(&page, "expires", "<span data-not-after=\"\(ca.notAfter ?? "")\">\(displayTime(notAfter))</span> <span class=\"badge \(cls)\">\(daysPhrase(days))</span>")
            }
        }
        page.raw("</div></div>\n</section>\n")
    }

    // MARK: pieces

    private static func fact(_ page: inout HTMLWriter, _ name: String, _ valueHTML: String) {
        page.raw("<div><span>\(name):</span> \(valueHTML)</div>\n")
    }

    static func severity(_ s: Verdict.Status) -> Int {
        switch s {
        case .ok: return 0
        case .expiringWithoutSuccessor: return 2
        case .noValidCertificate: return 3
        case .configError: return 4
        }
    }

    static func healthClass(_ s: Verdict.Status) -> String {
        switch s {
        case .ok: return "ok"
        case .expiringWithoutSuccessor: return "warn"
        case .noValidCertificate, .configError: return "bad"
        }
    }

    static func healthText(_ s: Verdict.Status) -> String {
        switch s {
        case .ok: return "covered"
        case .expiringWithoutSuccessor: return "expiring, no successor staged"
        case .noValidCertificate: return "no valid certificate"
        case .configError: return "config error"
        }
    }

    static func stateText(_ c: CertificateReport) -> String {
        switch c.state {
        case .active: return "active"
        case .valid: return "valid, not presented"
        case .next: return "staged (next)"
        case .staged: return "staged"
        case .expired: return "expired"
        }
    }

    static func daysPhrase(_ days: Int) -> String {
        if days < 0 { return "expired \(-days) \(-days == 1 ? "day" : "days") ago" }
        return "\(days) \(days == 1 ? "day" : "days") left"
    }

    static func shortSerial(_ serial: String) -> String {
        serial.count > 12 ? String(serial.prefix(10)) + "…" : serial
    }

    static func percent(_ part: Int, _ whole: Int) -> String {
        let tenths = (part * 1000 + whole / 2) / whole
        return "\(tenths / 10).\(tenths % 10)%"
    }

    /// `3d 4h`, `2h 5m`, `42s`.
    static func duration(_ seconds: Int) -> String {
        let s = max(seconds, 0)
        if s >= 86_400 { return "\(s / 86_400)d \(s % 86_400 / 3600)h" }
        if s >= 3600 { return "\(s / 3600)h \(s % 3600 / 60)m" }
        if s >= 60 { return "\(s / 60)m \(s % 60)s" }
        return "\(s)s"
    }

    /// `2027-03-01 12:00 UTC`.
    static func displayTime(_ epoch: Int) -> String {
        let t = UTCTime.rfc3339(epoch)
        return String(t.prefix(10)) + " " + String(t.dropFirst(11).prefix(5)) + " UTC"
    }

    static func displayDate(_ epoch: Int) -> String { String(UTCTime.rfc3339(epoch).prefix(10)) }

    static func num(_ v: Double) -> String {
        let tenths = Int((v * 10).rounded())
        let sign = tenths < 0 ? "-" : ""
        let a = abs(tenths)
        return a % 10 == 0 ? "\(sign)\(a / 10)" : "\(sign)\(a / 10).\(a % 10)"
    }

    /// Text made safe for an element's content or a quoted attribute, and for a strict XML parser: markup
    /// characters become references; control characters XML does not allow become U+FFFD.
    public static func escape(_ s: String) -> String {
        var out = ""
        out.reserveCapacity(s.utf8.count)
        for scalar in s.unicodeScalars {
            switch scalar {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "\"": out += "&quot;"
            case "'": out += "&#39;"
            case "\t", "\n", "\r": out.unicodeScalars.append(scalar)
            default:
                let v = scalar.value
                if v < 0x20 || (0x7F...0x9F).contains(v) || v == 0xFFFE || v == 0xFFFF {
                    out += "\u{FFFD}"
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
        }
        return out
    }

    /// Standard base64 with padding (for the style hash in the Content-Security-Policy).
    public static func base64(_ bytes: [UInt8]) -> String {
        let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")
        var out = ""
        var i = 0
        while i < bytes.count {
            let b0 = Int(bytes[i]), b1 = i + 1 < bytes.count ? Int(bytes[i + 1]) : 0, b2 = i + 2 < bytes.count ? Int(bytes[i + 2]) : 0
            out.append(alphabet[b0 >> 2])
            out.append(alphabet[((b0 & 3) << 4) | (b1 >> 4)])
            out.append(i + 1 < bytes.count ? alphabet[((b1 & 15) << 2) | (b2 >> 6)] : "=")
            out.append(i + 2 < bytes.count ? alphabet[b2 & 63] : "=")
            i += 3
        }
        return out
    }

    /// The offline report: the page rendered from the same model with its live parts removed.
    public static func withoutLiveParts(_ html: String) -> String {
        let bytes = Array(html.utf8), open = Array(liveStart.utf8), close = Array(liveEnd.utf8)
        func find(_ needle: [UInt8], from: Int) -> Int? {
            guard needle.count <= bytes.count else { return nil }
            var i = from
            while i + needle.count <= bytes.count {
                if bytes[i] == needle[0] && Array(bytes[i..<i + needle.count]) == needle { return i }
                i += 1
            }
            return nil
        }
        var out: [UInt8] = []
        var at = 0
        while let start = find(open, from: at) {
            out += bytes[at..<start]
            guard let end = find(close, from: start + open.count) else { return String(decoding: out, as: UTF8.self) }
            at = end + close.count
        }
        out += bytes[at...]
        return String(decoding: out, as: UTF8.self)
    }
}

/// Collects the page's text.
struct HTMLWriter {
    var text = ""
    init() { text.reserveCapacity(32_768) }
    mutating func raw(_ s: String) { text += s }
}
