/**
 * Hostile peers against real server processes, for a bounded time: random
 * bytes, endless lines, half lines and abrupt closes, while a well-behaved
 * pair keeps chatting. The pair must lose nothing; the server must live on
 * with bounded memory. The randomness is seeded, so a failure repeats.
 * @module
 */

import { assert, assertMatch } from "@std/assert";
import { seededRandom } from "../udp_server.ts";
import {
  bannerPort,
  residentKiB,
  Spawned,
  TestClient,
  UdpPeer,
  WAIT_MS,
  withTimeout,
} from "./helpers.ts";

const LOCAL = ["--host", "127.0.0.1", "--port", "0"];

/** How many messages the well-behaved pair exchanges. */
const PAIR_MESSAGES = 200;

/** Memory growth a server may show under the fuzzers, in KiB. */
const MAX_GROWTH_KIB = 64 * 1024;

function randomBytes(random: () => number, length: number): Uint8Array {
  return Uint8Array.from({ length }, () => Math.floor(random() * 256));
}

/** One hostile TCP peer: it does a random bad thing, then vanishes. */
async function tcpVandal(port: number, random: () => number): Promise<void> {
  let conn: Deno.Conn | undefined;
  const kind = Math.floor(random() * 4);
  try {
    await withTimeout(vandalize(), WAIT_MS, `vandal ${kind} to be done`);
  } catch {
    // The server may close a vandal first: that is its right. One it
    // stops reading is closed below.
  } finally {
    try {
      conn?.close();
    } catch {
      // Already closed.
    }
  }

  async function vandalize(): Promise<void> {
    conn = await Deno.connect({ hostname: "127.0.0.1", port });
    if (kind === 0) {
      // Random bytes, control characters and escapes included.
      await conn.write(randomBytes(random, 1 + Math.floor(random() * 8192)));
    } else if (kind === 1) {
      // An endless line: a megabyte without a line end.
      await conn.write(new Uint8Array(1 << 20).fill(0x78));
    } else if (kind === 2) {
      // Half a line, half a UTF-8 character, then gone.
      await conn.write(new Uint8Array([0x68, 0x69, 0xe0, 0xa4]));
    } else {
      // Many lines at once, some of them commands.
      const lines = ["/nick", "/msg", "/me", "//", "/who", "/kick x", "\r\r\n"];
      await conn.write(new TextEncoder().encode(lines.join("\n").repeat(50)));
    }
  }
}

Deno.test("fuzz: the TCP chat survives hostile peers, the pair loses nothing, memory stays bounded", async () => {
  await using server = Spawned.script("server.ts", [
    ...LOCAL,
    "--rate-limit",
    "0",
  ]);
  const port = await bannerPort(server);
  await using amey = await TestClient.join(port, "amey");
  await using karan = await TestClient.join(port, "karan");
  const before = residentKiB(server.pid);
  const random = seededRandom(2026);

  // Each message of the pair goes while four vandals do their worst.
  for (let i = 0; i < PAIR_MESSAGES; i++) {
    const [from, to] = i % 2 === 0 ? [amey, karan] : [karan, amey];
    const vandals = Array.from({ length: 4 }, () => tcpVandal(port, random));
    await from.send(`message ${i} नमस्ते`);
    // The vandals' lines are relayed too: take the pair's own.
    const line = await to.lines.waitFor(/^<(amey|karan)> /);
    assertMatch(line, new RegExp(`^<(amey|karan)> message ${i} नमस्ते$`));
    await Promise.all(vandals);
  }

  // Every vandal is gone: the server removes each, in its own time.
  let online;
  do {
    await amey.send("/who");
    online = await amey.lines.waitFor(/^\* online/);
  } while (online !== "* online (3): amey, karan, server (operator)");
  const after = residentKiB(server.pid);
  if (before !== undefined && after !== undefined) {
    assert(
      after - before < MAX_GROWTH_KIB,
      `the server grew by ${after - before} KiB`,
    );
  }
});

Deno.test("fuzz: the UDP chat survives random datagrams, the pair loses nothing, memory stays bounded", async () => {
  // No rate limit: every random datagram reaches the parser.
  await using server = Spawned.script("udp_server.ts", [
    ...LOCAL,
    "--rate-limit",
    "0",
  ]);
  const port = await bannerPort(server);
  await using amey = new UdpPeer(port);
  await using karan = new UdpPeer(port);
  // Padded, as udp_client.ts pads it: room for the welcome.
  assertMatch(await amey.ask("/join amey".padEnd(1200)), /^\* welcome/);
  assertMatch(await karan.ask("/join karan".padEnd(1200)), /^\* welcome/);
  await amey.datagrams.waitFor("* karan joined");
  const before = residentKiB(server.pid);
  const random = seededRandom(7);

  for (let i = 0; i < PAIR_MESSAGES; i++) {
    const [from, to] = i % 2 === 0 ? [amey, karan] : [karan, amey];
    // A new socket for each message: a new peer sending random datagrams.
    await using vandal = new UdpPeer(port);
    for (let j = 0; j < 20; j++) {
      await vandal.send(randomBytes(random, Math.floor(random() * 2000)));
    }
    await from.send(`message ${i}`);
    // Vandals whose bytes happen to be text are relayed too: skip them.
    const line = await to.datagrams.waitFor(/^<(amey|karan)> /);
    assertMatch(line, new RegExp(`^<(amey|karan)> message ${i}$`));
  }

  await amey.send("/who");
  assertMatch(
    await amey.datagrams.waitFor(/^\* online/),
    /^\* online \(\d+\): amey, karan/,
  );
  const after = residentKiB(server.pid);
  if (before !== undefined && after !== undefined) {
    assert(
      after - before < MAX_GROWTH_KIB,
      `the server grew by ${after - before} KiB`,
    );
  }
});
