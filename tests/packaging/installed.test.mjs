// signaling-client as a project installs it from its npm tarball, against a live server: run by
// test_npm_package.py with `node --test` in a scratch project, SIGNALING_URL naming the server.
import assert from "node:assert/strict";
import { test } from "node:test";

import { join, SignalingError } from "signaling-client";

const URL = process.env.SIGNALING_URL;

/** Resolves with the `detail` of the first `type` event of `session` that `accept` takes. */
function next(session, type, accept = () => true) {
  return new Promise((resolve) => {
    const listener = ({ detail }) => {
      if (!accept(detail)) return;
      session.removeEventListener(type, listener);
      resolve(detail);
    };
    session.addEventListener(type, listener);
  });
}

test("two peers exchange envelopes, by stream, and see each other come and go", async () => {
  const alice = await join(URL, "npm-room", { peerId: "alice" });
  const aliceStreams = next(alice, "receive-mode");
  const bobJoins = next(alice, "peer-joined");
  const bob = await join(URL, "npm-room", { peerId: "bob" });
  assert.deepEqual(await bobJoins, { peerId: "bob", meta: null });
  assert.deepEqual([...bob.peers], ["alice"]);
  assert.deepEqual(await aliceStreams, { mode: "stream", reason: "stream-open" });

  const offer = next(alice, "message");
  assert.deepEqual(await bob.send("alice", "offer", { sdp: "v=0" }), { seq: 2 });
  assert.deepEqual(
    { ...(await offer), ts: 0 },
    { seq: 2, from: "bob", type: "offer", data: { sdp: "v=0" }, ts: 0 },
  );
  assert.deepEqual(await alice.broadcast("hello", null), { delivered_to: ["bob"], mailbox_full: [] });

  const bobLeaves = next(alice, "peer-left");
  await bob.leave();
  assert.deepEqual(await bobLeaves, { peerId: "bob", reason: "left" });
  assert.equal(bob.state, "closed");
  await alice.leave();
});

test("a refused join rejects with the server's code", async () => {
  const alice = await join(URL, "npm-taken", { peerId: "alice" });
  await assert.rejects(join(URL, "npm-taken", { peerId: "alice" }), (error) => {
    assert.ok(error instanceof SignalingError);
    assert.equal(error.status, 409);
    assert.equal(error.code, "peer_id_taken");
    return true;
  });
  await alice.leave();
});

test("an unreachable service rejects with network_error", async () => {
  await assert.rejects(join("http://127.0.0.1:9", "r"), { name: "SignalingError", code: "network_error", status: 0 });
});
