'use strict';
// The Node clients of the client matrix. `http`: Node's own http/https modules, with the proxy from HTTP_PROXY or
// HTTPS_PROXY used the way such code does it (absolute-form requests to the proxy; CONNECT then TLS for https).
// `undici`: undici's fetch with a ProxyAgent from the same variables (what Node's fetch does), else its Agent.
// Prints one JSON object: per operation its status, body, and what it measured, or the error.
// `fetch`: Node's global fetch, configured by the environment only.
// Usage: node node_clients.js http|undici|fetch   (env: BASE, TAG, UPLOAD, DOWNLOAD_SIZE, CA)
const crypto = require('crypto');
const fs = require('fs');
const http = require('http');
const https = require('https');
const net = require('net');
const tls = require('tls');

const BASE = process.env.BASE, TAG = process.env.TAG, UPLOAD = process.env.UPLOAD;
const SIZE = Number(process.env.DOWNLOAD_SIZE);
const CA = process.env.CA ? fs.readFileSync(process.env.CA) : undefined;
const POST_BODY = Buffer.from(JSON.stringify({ client: TAG, items: [1, 2, 3] }));
const base = new URL(BASE);
const proxyText = base.protocol === 'https:' ? (process.env.HTTPS_PROXY || process.env.https_proxy)
                                             : (process.env.HTTP_PROXY || process.env.http_proxy);
const proxy = proxyText ? new URL(proxyText) : null;

function nodeHttpClient() {
  let agent;
  if (base.protocol === 'https:') {
    class TunnelAgent extends https.Agent {
      createConnection(options, cb) {
        if (!proxy) return tls.connect({ ...options, ca: CA, servername: base.hostname }, undefined);
        const port = base.port || 443;
        const req = http.request({ host: proxy.hostname, port: proxy.port, method: 'CONNECT', path: `${base.hostname}:${port}`,
                                   headers: { Host: `${base.hostname}:${port}` } });
        req.on('connect', (res, socket) => {
          if (res.statusCode !== 200) return cb(new Error(`CONNECT answered ${res.statusCode}`));
          const s = tls.connect({ socket, servername: base.hostname, ca: CA });
          s.once('secureConnect', () => cb(null, s));
          s.once('error', cb);
        });
        req.on('error', cb);
        req.end();
      }
    }
    agent = new TunnelAgent({ keepAlive: true, maxSockets: 1 });
  } else {
    agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  }
  const mod = base.protocol === 'https:' ? https : http;
  return function call(method, path, { headers = {}, body, file, expect } = {}) {
    const target = new URL(path, BASE);
    const opts = { method, agent, headers: { ...headers } };
    if (proxy && base.protocol === 'http:') {
      Object.assign(opts, { host: proxy.hostname, port: proxy.port, path: target.href });
      opts.headers.Host = target.host;
    } else {
      Object.assign(opts, { host: target.hostname, port: target.port || (base.protocol === 'https:' ? 443 : 80),
                            path: target.pathname + target.search, servername: target.hostname, ca: CA });
    }
    if (file) opts.headers['Content-Length'] = fs.statSync(file).size;
    if (expect) opts.headers.Expect = '100-continue';
    return new Promise((resolve, reject) => {
      const req = mod.request(opts, (res) => {
        const h = crypto.createHash('sha256');
        let n = 0;
        const parts = [];
        res.on('data', (d) => { n += d.length; h.update(d); if (parts.length < 64) parts.push(d); });
        res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, bytes: n, sha256: h.digest('hex'),
                                      body: Buffer.concat(parts).toString('utf8', 0, 2000), socket: res.socket }));
        res.on('error', reject);
      });
      req.on('error', reject);
      req.setTimeout(60000, () => req.destroy(new Error('timeout')));
      const send = () => {
        if (file) fs.createReadStream(file).pipe(req);
        else req.end(body);
      };
      if (expect) req.on('continue', send); else send();
    });
  };
}

function undiciClient() {
  const undici = require('undici');
  const dispatcher = proxy ? new undici.ProxyAgent({ uri: proxy.href, requestTls: { ca: CA } })
                           : new undici.Agent({ connect: { ca: CA } });
  return async function call(method, path, { headers = {}, body, file } = {}) {
    const res = await undici.fetch(new URL(path, BASE), { method, headers, dispatcher,
                                                          body: file ? fs.readFileSync(file) : body });
    const h = crypto.createHash('sha256');
    let n = 0;
    const parts = [];
    for await (const d of res.body) { n += d.length; h.update(d); if (parts.length < 64) parts.push(Buffer.from(d)); }
    return { status: res.status, headers: Object.fromEntries(res.headers), bytes: n, sha256: h.digest('hex'),
             body: Buffer.concat(parts).toString('utf8', 0, 2000) };
  };
}

// Node's own fetch, with nothing but the environment: NODE_USE_ENV_PROXY=1 (on Node versions that have it) for the
// proxy, NODE_EXTRA_CA_CERTS for the local CA.
function globalFetchClient() {
  return async function call(method, path, { headers = {}, body, file } = {}) {
    const res = await fetch(new URL(path, BASE), { method, headers, body: file ? fs.readFileSync(file) : body });
    const h = crypto.createHash('sha256');
    let n = 0;
    const parts = [];
    for await (const d of res.body) { n += d.length; h.update(d); if (parts.length < 64) parts.push(Buffer.from(d)); }
    return { status: res.status, headers: Object.fromEntries(res.headers), bytes: n, sha256: h.digest('hex'),
             body: Buffer.concat(parts).toString('utf8', 0, 2000) };
  };
}

async function main() {
  const which = process.argv[2];
  const call = which === 'undici' ? undiciClient() : which === 'fetch' ? globalFetchClient() : nodeHttpClient();
  const ops = {
    get: async () => { const r = await call('GET', `/whoami/${TAG}`); return { status: r.status, body: r.body }; },
    post: async () => {
      const r = await call('POST', '/echo', { headers: { 'Content-Type': 'application/json' }, body: POST_BODY });
      return { status: r.status, body: r.body };
    },
    upload: async () => {
      // undici (and so fetch) refuses an Expect field ("expect header not supported"): the body goes without one.
      const r = await call('POST', '/echo', { file: UPLOAD, expect: which === 'http' });
      return { status: r.status, body: r.body, expect: r.headers['x-seen-expect'] };
    },
    keepalive: async () => {
      const a = await call('GET', `/ka/${TAG}/1`);
      // undici hands the connection back to its pool a moment after the body ends; a request sent at once opens
      // another connection (it does so against any server). A short pause lets it reuse the first.
      if (which !== 'http') await new Promise((r) => setTimeout(r, 100));
      const b = await call('GET', `/ka/${TAG}/2`);
      return { statuses: [a.status, b.status] };
    },
    download: async () => {
      const r = await call('GET', `/download?size=${SIZE}`);
      return { status: r.status, bytes: r.bytes, sha256: r.sha256 };
    },
  };
  const results = {};
  for (const [name, op] of Object.entries(ops)) {
    try { results[name] = await op(); } catch (e) {
      results[name] = { error: `${e.name}: ${e.message}${e.cause ? ` (cause: ${e.cause.code || ''} ${e.cause.message})` : ''}` };
    }
  }
  console.log(JSON.stringify(results));
  process.exit(0);
}
main();
