// Drives the unmodified `posthog-node` and `@segment/analytics-node` SDKs against a Sluice edge.
//
// usage: node node_sdks.js <posthog|segment> <host> <key> <count> <prefix>
//
// Makes <count> calls cycling through every call type of the SDK, each with its own identity
// `<prefix>-<i>`, flushes, and prints one JSON object on stdout:
// {"sent": [{"call": …, "id": …, "event_id": null}], "errors": [{"status": …, "message": …}]}
// (these SDKs do not return the message IDs they generate; `errors` is what the SDK emitted on
// its `error` event, expected empty unless the key is wrong).
'use strict';

const [sdk, host, key, countArg, prefix] = process.argv.slice(2);
const count = Number(countArg);
const errors = [];

async function runPosthog() {
  const { PostHog } = require('posthog-node');
  // Small batches and a short retry delay so the run spans several requests and a lost answer
  // is resent quickly (both are ordinary client options).
  const client = new PostHog(key, { host, flushAt: 50, flushInterval: 200, fetchRetryDelay: 200, fetchRetryCount: 3 });
  client.on('error', (err) => errors.push({ status: err.status ?? null, message: String(err.message ?? err) }));
  const calls = ['capture', 'identify', 'alias', 'groupIdentify'];
  const sent = [];
  for (let i = 0; i < count; i++) {
    const call = calls[i % calls.length];
    const id = `${prefix}-${i}`;
    if (call === 'capture') client.capture({ distinctId: id, event: 'node signup', properties: { seq: i } });
    else if (call === 'identify') client.identify({ distinctId: id, properties: { seq: i, plan: 'pro' } });
    else if (call === 'alias') client.alias({ distinctId: id, alias: `${id}-new` });
    else client.groupIdentify({ groupType: 'company', groupKey: `c-${i}`, properties: { seats: i }, distinctId: id });
    sent.push({ call, id, event_id: null });
  }
  await client.shutdown(60000);
  return sent;
}

async function runSegment() {
  const { Analytics } = require('@segment/analytics-node');
  const client = new Analytics({ writeKey: key, host, flushAt: 50, flushInterval: 200, maxRetries: 5 });
  client.on('error', (err) => errors.push({ status: null, code: err.code, message: String(err.reason ?? err) }));
  const calls = ['track', 'identify', 'page', 'screen', 'group', 'alias'];
  const sent = [];
  for (let i = 0; i < count; i++) {
    const call = calls[i % calls.length];
    const userId = `${prefix}-${i}`;
    if (call === 'track') client.track({ userId, event: 'Node Signed Up', properties: { seq: i } });
    else if (call === 'identify') client.identify({ userId, traits: { seq: i } });
    else if (call === 'page') client.page({ userId, category: 'Docs', name: 'Home', properties: { seq: i } });
    else if (call === 'screen') client.screen({ userId, name: 'Main', properties: { seq: i } });
    else if (call === 'group') client.group({ userId, groupId: `g-${i}`, traits: { seats: i } });
    else client.alias({ userId, previousId: `${userId}-old` });
    sent.push({ call, id: userId, event_id: null });
  }
  await client.closeAndFlush({ timeout: 60000 });
  return sent;
}

(sdk === 'posthog' ? runPosthog() : runSegment()).then(
  (sent) => console.log(JSON.stringify({ sent, errors })),
  (err) => {
    console.error(err);
    process.exit(1);
  },
);
