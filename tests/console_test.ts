/**
 * Hostile conditions for the console (issue 14): a server whose stdout
 * nobody reads goes on relaying, accepting and stopping; and the rate
 * limit's `wait()`, which paces a TCP reader.
 * @module
 */

import { assertAlmostEquals, assertEquals, assertMatch } from "@std/assert";
import { RateLimit } from "../shared.ts";
import { closedPort, ROOT, TestClient } from "./helpers.ts";

Deno.test("RateLimit.wait takes a token when there is one, else says how long until one is", () => {
  const limit = new RateLimit(10, 2); // a token every 100 ms, 2 at most
  // `now` as a server passes it, from a whole millisecond: exact sums.
  const t = Math.ceil(performance.now()) + 1_000;
  assertEquals(limit.wait(t), 0, "the burst: first token");
  assertEquals(limit.wait(t), 0, "the burst: second token");
  assertAlmostEquals(limit.wait(t), 100, 1e-6, "empty: a token in 100 ms");
  assertAlmostEquals(limit.wait(t), 100, 1e-6, "a wait takes nothing");
  assertAlmostEquals(limit.wait(t + 50), 50, 1e-6);
  assertEquals(limit.wait(t + 100), 0, "the token has come: taken");
  assertAlmostEquals(limit.wait(t + 125), 75, 1e-6);
  assertEquals(limit.wait(t + 60_000), 0, "a long pause refills the burst");
  assertEquals(limit.wait(t + 60_000), 0, "...but no more than the burst");
  assertAlmostEquals(limit.wait(t + 60_000), 100, 1e-6);
  const shared = new RateLimit(10, 1);
  const s = Math.ceil(performance.now()) + 1_000;
  assertEquals(shared.check(s), "pass");
  assertAlmostEquals(
    shared.wait(s),
    100,
    1e-6,
    "check() and wait(): one bucket",
  );
  assertEquals(shared.wait(s + 100), 0);
  assertEquals(shared.check(s + 100), "warn");
  const unlimited = new RateLimit(0, 1); // --rate-limit 0: no limit
  for (let i = 0; i < 5; i++) assertEquals(unlimited.wait(), 0);
});

const LINES = 8_000; // of 100 bytes: 800 KB of chat, far over a pipe's 64 KiB

/** `promise`, or a failure that says what did not happen in time. */
async function within<T>(ms: number, what: string, promise: Promise<T>) {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`${what}: not within ${ms} ms`)),
      ms,
    );
  });
  try {
    return await Promise.race([promise, late]);
  } finally {
    clearTimeout(timer);
  }
}

/** Joins as soon as the server accepts: its banner is on the unread stdout. */
async function joinOnceUp(port: number): Promise<TestClient> {
  const deadline = Date.now() + 10_000;
  while (true) {
    try {
      return await TestClient.join(port);
    } catch (error) {
      if (!(error instanceof Deno.errors.ConnectionRefused)) throw error;
      if (Date.now() > deadline) throw new Error("the server never listened");
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }
}

/** A chat server with stdout piped and not read (`--rate-limit 0`: a flood). */
function spawnServer() {
  const port = closedPort();
  const args = ["run", "-A", "server.ts", "--host", "127.0.0.1"];
  const child = new Deno.Command(Deno.execPath(), {
    args: [...args, "--port", String(port), "--rate-limit", "0"],
    cwd: ROOT,
    stdin: "null",
    stdout: "piped", // read only at the end
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).spawn();
  const stderr = new Response(child.stderr).text(); // read, told on failure
  return { child, port, stderr, clients: [] as TestClient[] };
}
type Server = ReturnType<typeof spawnServer>;

/**
 * Floods the room with chat lines, which the server prints on the console
 * nobody reads: the other client must still get every one of them.
 */
async function flood(server: Server): Promise<void> {
  const sender = await joinOnceUp(server.port);
  server.clients.push(sender);
  const receiver = await TestClient.join(server.port);
  server.clients.push(receiver);
  const lines = Array.from(
    { length: LINES },
    (_, i) => `${i} `.padEnd(99, "x"),
  );
  const sent = sender.write(lines.join("\n") + "\n");
  for (const line of lines) {
    const got = await receiver.lines.waitFor(/^</, 5_000).catch((error) => {
      throw new Error(`relaying stopped (the console blocked it?): ${error}`);
    });
    assertEquals(got, `<guest-1> ${line}`);
  }
  await sent;
}

/** Stops the server for good, whatever happened, and closes what is open. */
async function cleanUp(server: Server): Promise<void> {
  for (const client of server.clients) await client[Symbol.asyncDispose]();
  try {
    server.child.kill("SIGKILL");
  } catch {
    // It has exited.
  }
  await server.child.status;
  await server.child.stdout.cancel().catch(() => {});
  const stderr = await server.stderr;
  if (stderr) console.error(`the server's stderr:\n${stderr}`);
}

Deno.test("a console nobody reads stalls nothing: the server relays, accepts, stops on SIGTERM, and counts what it dropped", async () => {
  const server = spawnServer();
  try {
    await flood(server);
    await using third = await within(
      1_000,
      "a third client's welcome",
      TestClient.join(server.port),
    );
    await third.send("still here");
    const receiver = server.clients[1];
    await receiver.lines.waitFor("<guest-3> still here", 1_000);
    server.child.kill("SIGTERM");
    // Only now is stdout read: its end comes when the server has exited.
    const output = new Response(server.child.stdout).text();
    const status = await within(
      3_000,
      "the exit after SIGTERM",
      server.child.status,
    );
    assertEquals([status.code, status.signal], [0, null]);
    const text = await within(3_000, "the end of stdout", output);
    assertMatch(
      text,
      /^\(\d+ console lines dropped: the console was not read\)$/m,
    );
  } finally {
    await cleanUp(server);
  }
});

Deno.test("a console nobody ever reads does not keep Ctrl-C (SIGINT) from stopping the server", async () => {
  const server = spawnServer();
  try {
    await flood(server);
    server.child.kill("SIGINT");
    // close() gives up on the console after about 1 s; stdout stays unread.
    const status = await within(
      3_000,
      "the exit after SIGINT",
      server.child.status,
    );
    assertEquals([status.code, status.signal], [0, null]);
  } finally {
    await cleanUp(server);
  }
});
