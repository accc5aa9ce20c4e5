// Drives the unmodified posthog-js in Debian's headless chromium (through playwright-core, which
// uses /usr/bin/chromium and never downloads a browser) on a page this script serves.
//
// usage: node browser_posthog.js <edge url> <direct edge url> <key> <count> <prefix>
//
// Phase 1: the page makes <count> calls cycling through capture, setPersonProperties, group and
// alias, each tagged `<prefix>-<i>`, and a second posthog instance with a wrong key captures a
// few events (to <direct edge url>, so the test's proxy loses no answer of its). Prints {"phase":"sent","sent":[{"call","id","event_id":null}]} and waits for a line
// `unload` on stdin (the test answers once phase 1 is in the sink).
// Phase 2: the page captures <count>/10 more events (`<prefix>-u<i>`) and navigates away, so
// posthog-js sends them on unload with navigator.sendBeacon (which the test sees at its proxy:
// playwright reports no requests of an unloading page). Prints
// {"phase":"unloaded","sent":[…],"errors":[{"status":…}]}, the errors from the wrong-key instance.
'use strict';

const http = require('http');
const fs = require('fs');
const os = require('os');
const path = require('path');
const readline = require('readline');
const { chromium } = require('playwright-core');

const [edge, direct, key, countArg, prefix] = process.argv.slice(2);
const count = Number(countArg);
const bundle = fs.readFileSync(require.resolve('posthog-js/dist/array.full.no-external.js'));

const page_html = `<!doctype html><html><head><script src="/posthog.js"></script></head><body><script>
  const options = {
    api_host: ${JSON.stringify(edge)},
    autocapture: false, capture_pageview: false, capture_pageleave: false, disable_session_recording: true,
    advanced_disable_flags: true, disable_surveys: true, disable_web_experiments: true,
    capture_performance: false, capture_exceptions: false, persistence: 'memory',
    request_queue_config: { flush_interval_ms: 300 },
    // Headless Chromium says HeadlessChrome, which posthog-js drops as a bot unless told not to.
    opt_out_useragent_filter: true,
    // posthog-js drops what exceeds 10 events/s (burst 100) on the client; this page sends hundreds at once.
    rate_limiting: { events_per_second: 1000, events_burst_limit: 1000 },
    bootstrap: { distinctID: ${JSON.stringify(prefix + 'user')} },
  };
  window.requestErrors = [];
  posthog.init(${JSON.stringify(key)}, options);
  posthog.init('wrong-key', { ...options, api_host: ${JSON.stringify(direct)}, on_request_error: (r) => window.requestErrors.push({ status: r.statusCode }) }, 'bad');
</script></body></html>`;

function serve() {
  const server = http.createServer((req, res) => {
    if (req.url.startsWith('/posthog.js')) {
      res.writeHead(200, { 'Content-Type': 'application/javascript' });
      res.end(bundle);
    } else if (req.url === '/' || req.url.startsWith('/?')) {
      res.writeHead(200, { 'Content-Type': 'text/html' });
      res.end(page_html);
    } else {
      res.writeHead(404);
      res.end();
    }
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)));
}

async function main() {
  const server = await serve();
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'sluice-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: '/usr/bin/chromium',
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  const page = context.pages()[0] ?? (await context.newPage());
  if (process.env.SDK_DEBUG) page.on('console', (m) => console.error('console:', m.text()));
  await page.goto(`http://127.0.0.1:${server.address().port}/`);

  const calls = ['capture', 'setPersonProperties', 'group', 'alias'];
  const sent = await page.evaluate(({ count, prefix, calls }) => {
    const sent = [];
    for (let i = 0; i < count; i++) {
      const call = calls[i % calls.length];
      const id = `${prefix}-${i}`;
      if (call === 'capture') posthog.capture('js signup', { test_id: id, seq: i });
      else if (call === 'setPersonProperties') posthog.setPersonProperties({ test_id: id, seq: i });
      else if (call === 'group') posthog.group('company', `c-${i}`, { test_id: id, seq: i });
      else posthog.alias(id);
      sent.push({ call, id, event_id: null });
    }
    for (let i = 0; i < 3; i++) posthog.bad.capture('refused', { n: i });
    return sent;
  }, { count, prefix, calls });
  console.log(JSON.stringify({ phase: 'sent', sent }));

  const lines = readline.createInterface({ input: process.stdin });
  for await (const line of lines) if (line.trim() === 'unload') break;

  const errors = await page.evaluate(() => window.requestErrors);
  const unloadCount = Math.max(1, Math.floor(count / 10));
  const last = await page.evaluate(({ n, prefix }) => {
    const sent = [];
    for (let i = 0; i < n; i++) {
      const id = `${prefix}-u${i}`;
      posthog.capture('js unload', { test_id: id, seq: i });
      sent.push({ call: 'unload', id, event_id: null });
    }
    return sent;
  }, { n: unloadCount, prefix });
  await page.goto('about:blank');
  // The beacon leaves with the old page; give the browser a moment to hand it to the network.
  await new Promise((r) => setTimeout(r, 1000));
  console.log(JSON.stringify({ phase: 'unloaded', sent: last, errors }));
  await context.close();
  server.close();
  fs.rmSync(profile, { recursive: true, force: true });
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
