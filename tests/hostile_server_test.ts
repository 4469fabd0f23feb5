/**
 * server.ts against hostile peers: floods, reset loops, connections that
 * never get in, raw TCP to a TLS server, password guessing. The hostile
 * peer is python3 on 127.0.0.2, so its address is not the test client's.
 */

import { assert, assertEquals } from "@std/assert";
import { Outbox } from "../server.ts";
import {
  closedPort,
  makeCertificate,
  Spawned,
  startServer,
  TestClient,
  UdpPeer,
  WAIT_MS,
} from "./helpers.ts";

/**
 * Runs a python3 hostile peer; `await using` kills it. `line()` waits for
 * the next line it prints (what it reports).
 */
function hostile(script: string, ...args: string[]) {
  const child = new Deno.Command("python3", {
    args: ["-c", script, ...args],
    stdout: "piped",
  }).spawn();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  return {
    async line(): Promise<string> {
      while (!text.includes("\n")) {
        const { value, done } = await withLimit(reader.read(), "its output");
        if (done) throw new Error(`the hostile peer ended: "${text}"`);
        text += value;
      }
      const line = text.slice(0, text.indexOf("\n"));
      text = text.slice(line.length + 1);
      return line;
    },
    async [Symbol.asyncDispose]() {
      try {
        child.kill();
      } catch {
        // It ended already.
      }
      await reader.cancel();
      await withLimit(child.status, "the hostile peer to stop");
    },
  };
}

function withLimit<T>(promise: Promise<T>, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const limit = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out: ${what}`)), WAIT_MS);
  });
  return Promise.race([promise, limit]).finally(() => clearTimeout(timer));
}

let probes = 0;

/**
 * How long a client takes to get in, in ms. It names itself at once, as
 * client.ts does, so the chat's quarter second of waiting for a name is not
 * in the figure: what a hostile peer adds is.
 */
async function timeToJoin(port: number): Promise<number> {
  const start = performance.now();
  await using client = await TestClient.connect(port);
  const name = `probe${++probes}`;
  await client.send(`/nick ${name}`);
  await client.lines.waitFor(new RegExp(`^\\* you are ${name};`));
  return performance.now() - start;
}

const RESET_LOOP = `
import socket, struct, sys, time
port, end, n = int(sys.argv[1]), time.time() + float(sys.argv[2]), 0
while time.time() < end:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.bind(("127.0.0.2", 0))
    try:
        s.connect(("127.0.0.1", port)); n += 1
    except OSError:
        pass
    s.close()
    if n == 50:
        print("resetting", flush=True)
print(n, flush=True)
`;

Deno.test("a client gets in within 1 s while a peer connects and resets in a tight loop", async () => {
  await using room = startServer();
  await using peer = hostile(RESET_LOOP, String(room.port), "3");
  assertEquals(await peer.line(), "resetting");
  for (let i = 0; i < 3; i++) {
    const ms = await timeToJoin(room.port);
    assert(ms < 1000, `the welcome took ${Math.round(ms)} ms`);
  }
  assert(Number(await peer.line()) > 100, "the loop did reset connections");
});

const HOLD = `
import socket, sys, time
port, count, replies = int(sys.argv[1]), int(sys.argv[2]), []
held = []
for _ in range(count):
    s = socket.socket(); s.bind(("127.0.0.2", 0)); s.connect(("127.0.0.1", port))
    s.settimeout(0.5); held.append(s)
for s in held:
    try:
        replies.append(s.recv(200).decode(errors="replace").split("\\n")[0])
    except OSError:
        replies.append("")
print("\\n".join(replies), flush=True)
time.sleep(30)
`;

Deno.test("one address cannot take every place: past --max-per-address it is refused, others still get in", async () => {
  await using room = startServer({ maxClients: 30, maxPerAddress: 20 });
  // Silent connections from 127.0.0.2: each joins as a guest after the
  // name wait; 25 of them would leave 5 places if nothing stopped them.
  await using peer = hostile(HOLD, String(room.port), "25");
  const replies = [];
  for (let i = 0; i < 25; i++) replies.push(await peer.line());
  const refused = replies.filter((line) =>
    line === "! too many connections from your address"
  );
  assertEquals(refused.length, 5);
  const ms = await timeToJoin(room.port);
  assert(ms < 1000, `the welcome took ${Math.round(ms)} ms`);
});

Deno.test("a flood is slowed down, not cut: 100 lines at once all arrive, in order, at the rate", async () => {
  await using room = startServer({ rateLimit: 100, burst: 10 });
  await using watcher = await TestClient.join(room.port, "watcher");
  await using flooder = await TestClient.join(room.port, "flooder");
  const start = performance.now();
  await flooder.write(
    Array.from({ length: 100 }, (_, i) => `line ${i}\n`).join(""),
  );
  for (let i = 0; i < 100; i++) {
    assertEquals(
      await watcher.lines.waitFor(/^<flooder>/),
      `<flooder> line ${i}`,
    );
  }
  // The burst (less the /nick) passes at once, the other 91 at 100 a second.
  const ms = performance.now() - start;
  assert(ms > 700, `100 lines passed in ${Math.round(ms)} ms`);
  await flooder.send("/who");
  assertEquals(
    await flooder.lines.waitFor(/^\* online/),
    "* online (3): watcher, flooder, server (operator)",
  );
});

Deno.test("lines sent before /auth are slowed down too", async () => {
  await using room = startServer({
    password: "s3cret",
    rateLimit: 10,
    burst: 2,
  });
  await using guesser = await TestClient.connect(room.port);
  await guesser.lines.waitFor(/needs a password/);
  const start = performance.now();
  await guesser.write("hello\n".repeat(12));
  for (let i = 0; i < 12; i++) {
    await guesser.lines.waitFor(/authenticate first/);
  }
  // 2 at once, then 10 at 10 a second.
  const ms = performance.now() - start;
  assert(ms > 800, `12 replies came in ${Math.round(ms)} ms`);
});

Deno.test("a connection that does not get in (no /auth) is closed after the admit timeout, in iterative mode too", async () => {
  await using room = startServer({
    password: "s3cret",
    iterative: true,
    admitTimeoutMs: 300,
  });
  await using silent = await TestClient.connect(room.port);
  await silent.lines.waitFor(/needs a password/);
  await using next = await TestClient.connect(room.port);
  await next.lines.waitFor(/needs a password/);
  await next.send("/auth s3cret");
  await next.lines.waitFor(/^\* you are guest-/);
  assertEquals(
    await silent.lines.waitFor(/^!/),
    "! too slow to get in: disconnecting",
  );
  await silent.closedByServer();
  await room.console.waitFor(/left \(too slow to get in\)/);
});

Deno.test("raw TCP to a TLS server never joins the room", async (t) => {
  const tls = await makeCertificate();
  try {
    await using room = startServer({
      tls: { cert: tls.cert, key: await Deno.readTextFile(tls.keyFile) },
      admitTimeoutMs: 500,
    });
    await t.step(
      "one that sends nothing gives its place back at the admit timeout",
      async () => {
        // Deno keeps the socket itself open until the handshake ends or
        // the peer closes (denoland/deno#14547): the place is what counts.
        await using _plain = await TestClient.connect(room.port);
        await room.console.waitFor(/left \(too slow to get in\)/);
      },
    );
    await t.step("one that sends text is closed at once", async () => {
      await using plain = await TestClient.connect(room.port);
      await plain.send("hello");
      await plain.closedByServer();
      await room.console.waitFor(/left \(no TLS handshake/);
    });
    assertEquals(room.server.room.members.size, 0, "no one joined");
    assert(!room.console.all.some((line) => / joined$/.test(line)));
  } finally {
    await Deno.remove(tls.folder, { recursive: true });
  }
});

Deno.test("guessing: after a wrong password, its address waits before the next try, on any connection", async () => {
  await using room = startServer({ password: "s3cret" });
  await using first = await TestClient.connect(room.port);
  await first.lines.waitFor(/needs a password/);
  await first.send("/auth guess0");
  assertEquals(await first.lines.waitFor(/^!/), "! wrong password");
  // Ten connections at once, each with a guess: none is even checked.
  const others = await Promise.all(
    Array.from({ length: 10 }, () => TestClient.connect(room.port)),
  );
  try {
    for (const [i, client] of others.entries()) {
      await client.lines.waitFor(/needs a password/);
      await client.send(i === 9 ? "/auth s3cret" : `/auth guess${i + 1}`);
      assertEquals(
        await client.lines.waitFor(/^!/),
        "! too many wrong passwords from your address: try again in 1 s",
      );
    }
  } finally {
    for (const client of others) await client[Symbol.asyncDispose]();
  }
});

Deno.test("the output cap counts each queued piece's objects, not only its bytes", () => {
  // A client that reads nothing: its socket takes no write.
  const stalled = { write: () => new Promise<number>(() => {}) };
  const outbox = new Outbox(
    stalled as unknown as Deno.Conn,
    10_000,
    () => "x",
    undefined,
  );
  let taken = 0;
  while (taken < 1000 && outbox.send(new Uint8Array(10))) taken++;
  // 10 bytes and 128 for the piece: 72 fit in 10,000; bytes alone, 1000.
  assertEquals(taken, 72);
});

Deno.test("piped input loses no line at the default limits: seq 1 100 | client.ts --name bot", async () => {
  await using room = startServer();
  await using watcher = await TestClient.join(room.port, "watcher");
  await using bot = Spawned.script(
    "client.ts",
    ["127.0.0.1", "--port", String(room.port), "--name", "bot"],
    { stdin: "piped" },
  );
  for (let i = 1; i <= 100; i++) await bot.type(String(i));
  await bot.endInput();
  for (let i = 1; i <= 100; i++) {
    assertEquals(await watcher.lines.waitFor(/^<bot>/), `<bot> ${i}`);
  }
  assertEquals((await bot.status()).code, 0);
});

/** Connects once the spawned server listens, within the time limit. */
async function connectWhenUp(port: number): Promise<TestClient> {
  const deadline = Date.now() + WAIT_MS;
  while (true) {
    try {
      return await TestClient.connect(port);
    } catch (error) {
      if (Date.now() > deadline) throw error;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }
}

for (
  const mode of [[], ["--iterative"], ["--service", "inventory"], [
    "--service",
    "inventory",
    "--iterative",
  ]]
) {
  Deno.test(`a server with a stalled console keeps serving and stops on SIGTERM within 3 s: server.ts ${mode.join(" ") || "(chat)"}`, async () => {
    const port = closedPort();
    const flags = ["--rate-limit", "0", ...mode];
    await using server = spawnUnread("server.ts", port, flags);
    {
      await using client = await connectWhenUp(port);
      const inventory = mode.includes("inventory");
      // Enough log lines to fill the pipe many times over.
      const lines = Array.from(
        { length: 3000 },
        (_, i) =>
          inventory ? `add item${i % 50} 1` : `line ${i} ${"x".repeat(80)}`,
      );
      await client.write(lines.join("\n") + "\n");
      if (inventory) {
        for (let i = 0; i < 3000; i++) await client.next();
      } else {
        // Iterative: the next client is served once this one has gone.
        if (mode.includes("--iterative")) client.close();
        await using _other = await TestClient.join(port);
      }
    }
    await server.stopsWithin(3000);
  });
}

Deno.test("iterative with a password: one that never authenticates keeps no one waiting; those who get in take turns", async () => {
  await using room = startServer({ password: "s3cret", iterative: true });
  await using silent = await TestClient.connect(room.port);
  await silent.lines.waitFor(/needs a password/);
  const start = performance.now();
  await using first = await TestClient.connect(room.port);
  await first.lines.waitFor(/needs a password/);
  await first.send("/auth s3cret");
  await first.lines.waitFor(/^\* you are guest-/);
  const ms = performance.now() - start;
  assert(ms < 1000, `the welcome took ${Math.round(ms)} ms`);
  // The next one gets in at once too, then waits its turn, unread.
  await using second = await TestClient.connect(room.port);
  await second.lines.waitFor(/needs a password/);
  await second.send("/auth s3cret");
  await second.send("hello from second");
  await first.send("/quit");
  await first.closedByServer();
  await second.lines.waitFor(/^\* you are guest-/);
  await room.console.waitFor(
    /^\S+ <guest-\d+> hello from second$|<guest-\d+> hello from second/,
  );
});

Deno.test("udp_server.ts with a stalled console keeps answering and stops on SIGTERM within 3 s", async () => {
  const port = closedPort();
  // A console line for every datagram (--trace): the pipe fills.
  const flags = ["--service", "echo", "--rate-limit", "0", "--trace"];
  await using server = spawnUnread("udp_server.ts", port, flags);
  {
    await udpPortTaken(port);
    await using peer = new UdpPeer(port);
    for (let i = 0; i < 3000; i++) {
      await peer.send(`echo ${i} ${"x".repeat(80)}`);
    }
    // UDP may drop some of a flood: ask until the question comes back.
    let answered = false;
    for (let tries = 0; tries < 10 && !answered; tries++) {
      await peer.send("still there?");
      answered = await peer.datagrams.waitFor(/^still there\?$/, 1000)
        .then(() => true, () => false);
    }
    assert(answered, "the server stopped answering");
  }
  await server.stopsWithin(3000);
});

/** Waits until a server has bound this UDP port (binding it then fails). */
async function udpPortTaken(port: number): Promise<void> {
  const deadline = Date.now() + WAIT_MS;
  while (true) {
    try {
      const hostname = "127.0.0.1";
      Deno.listenDatagram({ hostname, port, transport: "udp" }).close();
    } catch {
      return; // taken: the server is up
    }
    assert(Date.now() < deadline, "the UDP server did not start");
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/**
 * Spawns a server whose stdout is piped and never read, so its console
 * stalls once the pipe is full; `await using` kills it.
 */
function spawnUnread(script: string, port: number, flags: string[]) {
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      script,
      "--host",
      "127.0.0.1",
      "--port",
      `${port}`,
      ...flags,
    ],
    stdout: "piped",
    stderr: "null",
    stdin: "null",
  }).spawn();
  return {
    /** SIGTERM: it must exit with 0 within `ms`. */
    async stopsWithin(ms: number): Promise<void> {
      const start = performance.now();
      child.kill("SIGTERM");
      const status = await withLimit(child.status, `${script} to stop`);
      const took = performance.now() - start;
      assert(took < ms, `${script} took ${Math.round(took)} ms to stop`);
      assertEquals(status.code, 0);
    },
    async [Symbol.asyncDispose]() {
      try {
        child.kill("SIGKILL");
      } catch {
        // It has stopped.
      }
      await child.stdout.cancel();
      await withLimit(child.status, `${script} to be killed`);
    },
  };
}
