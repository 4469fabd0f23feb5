/**
 * TLS, passwords, limits and terminal safety, for every server.
 * @module
 */

import { assert, assertEquals, assertMatch } from "@std/assert";
import { passwordMatches } from "../shared.ts";
import {
  bannerPort,
  closedPort,
  hasProgram,
  makeCertificate,
  residentKiB,
  Spawned,
  startInventory,
  startServer,
  startUdpServer,
  TestClient,
  UdpPeer,
  WAIT_MS,
  withTimeout,
} from "./helpers.ts";

const LOCAL = ["--host", "127.0.0.1", "--port", "0"];
const OPENSSL_MISSING = !hasProgram("openssl");
if (OPENSSL_MISSING) {
  console.log(
    "skipping the TLS tests: openssl is not installed; .ci/run installs it",
  );
}

// ---------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------

Deno.test({
  name:
    "TLS chat: server.ts --tls-cert/--tls-key, client.ts --ca, and openssl s_client",
  ignore: OPENSSL_MISSING,
  async fn(t) {
    const { folder, certFile, keyFile, cert } = await makeCertificate();
    await using server = Spawned.script("server.ts", [
      ...LOCAL,
      "--tls-cert",
      certFile,
      "--tls-key",
      keyFile,
    ]);
    const port = await bannerPort(server);
    assertMatch(
      server.stdout.all[0],
      /listening on 127\.0\.0\.1:\d+, with TLS$/,
    );
    await using amey = await TestClient.connectTls(port, cert);
    await amey.lines.waitFor(/^\* you are/);
    await amey.send("/nick amey");

    await t.step("client.ts with --ca joins and chats", async () => {
      await using client = Spawned.script(
        "client.ts",
        [
          "127.0.0.1",
          "--port",
          String(port),
          "--ca",
          certFile,
          "--name",
          "tlsbot",
        ],
        { stdin: "piped" },
      );
      await amey.lines.waitFor(/tlsbot joined/);
      await client.type("hello over TLS");
      assertEquals(await amey.lines.waitFor(/^</), "<tlsbot> hello over TLS");
      await client.endInput();
      assertEquals((await client.status()).code, 0);
    });

    await t.step("openssl s_client is a TLS client of server.ts", async () => {
      await using openssl = new Spawned(
        [
          "s_client",
          "-quiet",
          "-verify_return_error",
          "-CAfile",
          certFile,
          "-connect",
          `127.0.0.1:${port}`,
        ],
        { stdin: "piped" },
        "openssl",
      );
      await openssl.stdout.waitFor(/^\* you are guest/);
      await openssl.type("/nick ossl");
      await amey.lines.waitFor(/known as ossl/);
      await openssl.type("hello from openssl");
      assertEquals(await amey.lines.waitFor(/^</), "<ossl> hello from openssl");
      await amey.send("hello openssl");
      assertEquals(await openssl.stdout.waitFor(/^</), "<amey> hello openssl");
    });

    await t.step(
      "a certificate that is not trusted is a clear error, exit 1",
      async () => {
        await using client = Spawned.script("client.ts", [
          "127.0.0.1",
          "--port",
          String(port),
          "--tls",
        ]);
        assertEquals((await client.status()).code, 1);
        assertEquals(client.stderr.all, [
          `Cannot connect to "127.0.0.1:${port}": the server's TLS certificate is not trusted (for a self-signed certificate, give it with --ca cert.pem)`,
        ]);
      },
    );
    await Deno.remove(folder, { recursive: true });
  },
});

Deno.test({
  name:
    "TLS: client.ts --tls against a plain server says it does not speak TLS",
  async fn() {
    await using room = startServer();
    await using client = Spawned.script("client.ts", [
      "127.0.0.1",
      "--port",
      String(room.port),
      "--tls",
    ]);
    assertEquals((await client.status()).code, 1);
    assertEquals(client.stderr.all, [
      `Cannot connect to "127.0.0.1:${room.port}": the server does not speak TLS (leave out --tls and --ca)`,
    ]);
  },
});

Deno.test({
  name: "TLS inventory: one-shot client.ts --ca",
  ignore: OPENSSL_MISSING,
  async fn() {
    const { folder, certFile, keyFile } = await makeCertificate();
    await using server = Spawned.script("server.ts", [
      ...LOCAL,
      "--service",
      "inventory",
      "--tls-cert",
      certFile,
      "--tls-key",
      keyFile,
    ]);
    const port = await bannerPort(server);
    await using client = Spawned.script("client.ts", [
      "127.0.0.1",
      "--port",
      String(port),
      "--service",
      "inventory",
      "--ca",
      certFile,
      "add",
      "Soap",
      "3",
    ]);
    assertEquals((await client.status()).code, 0);
    assertEquals(client.stdout.all[0], "Added 3 Soap(s) to the inventory.");
    await Deno.remove(folder, { recursive: true });
  },
});

Deno.test("server.ts: --tls-cert without --tls-key, or a missing file, is a clear error", async (t) => {
  await t.step("one without the other", async () => {
    await using server = Spawned.script("server.ts", [
      "--tls-cert",
      "cert.pem",
    ]);
    assertEquals((await server.status()).code, 2);
    assertEquals(server.stderr.all[0], "--tls-cert and --tls-key go together");
  });
  await t.step("a missing file", async () => {
    await using server = Spawned.script("server.ts", [
      ...LOCAL,
      "--tls-cert",
      "nope.pem",
      "--tls-key",
      "nope.pem",
    ]);
    assertEquals((await server.status()).code, 1);
    assertEquals(
      server.stderr.all[0],
      `Cannot read "nope.pem": no such file or folder`,
    );
  });
  await t.step("empty files: no plain TCP in place of TLS", async () => {
    const empty = await Deno.makeTempFile({ suffix: ".pem" });
    await using server = Spawned.script("server.ts", [
      ...LOCAL,
      ...["--tls-cert", empty, "--tls-key", empty],
    ]);
    assertEquals((await server.status()).code, 1);
    assertMatch(server.stderr.all[0], /^Cannot listen on .*certificate/i);
    await Deno.remove(empty);
  });
});

Deno.test("client.ts: a missing --ca file is one clear line, exit 1", async () => {
  await using client = Spawned.script("client.ts", [
    "127.0.0.1",
    ...["--port", String(closedPort()), "--tls", "--ca", "nope.pem"],
  ]);
  assertEquals((await client.status()).code, 1);
  assertEquals(client.stderr.all, [
    `Cannot read "nope.pem": no such file or folder`,
  ]);
});

// ---------------------------------------------------------------------------
// Passwords
// ---------------------------------------------------------------------------

Deno.test("passwordMatches compares exactly", () => {
  assert(passwordMatches("s3cret", "s3cret"));
  assert(!passwordMatches("s3cret", "s3cre"));
  assert(!passwordMatches("", "s3cret"));
  assert(!passwordMatches("S3CRET", "s3cret"));
});

Deno.test("chat with a password: nothing before /auth, three wrong tries close, never logged", async (t) => {
  // No wait after a wrong password here: that has a test of its own.
  await using room = startServer({ password: "open sesame", guessWaitMs: 0 });
  await using member = await TestClient.connect(room.port);
  assertEquals(
    await member.next(),
    "* this server needs a password: send /auth PASSWORD",
  );
  await member.send("/auth open sesame");
  await member.lines.waitFor(/^\* you are guest/);

  await t.step("every other line gets: authenticate first", async () => {
    await using stranger = await TestClient.connect(room.port);
    await stranger.next();
    for (const line of ["hello", "/nick sneaky", "/who", "/quit"]) {
      await stranger.send(line);
      assertEquals(
        await stranger.next(),
        "! authenticate first: /auth PASSWORD",
      );
    }
  });
  await t.step("the third wrong password closes the connection", async () => {
    await using guesser = await TestClient.connect(room.port);
    await guesser.next();
    for (const guess of ["one", "two", "three"]) {
      await guesser.send(`/auth ${guess}`);
      assertEquals(await guesser.next(), "! wrong password");
    }
    assertEquals(
      await guesser.next(),
      "! too many wrong passwords: disconnecting",
    );
    await guesser.closedByServer();
  });
  await member.send("/who");
  assertEquals(
    await member.lines.waitFor(/^\* online/),
    "* online (2): guest-1, server (operator)",
  );
  assertEquals(
    member.lines.all.filter((line) => /joined|left/.test(line)),
    [],
    "strangers never entered the room",
  );
  assert(
    !room.console.all.some((line) =>
      /open sesame|one|two|three/.test(line.replace(/\d\d:\d\d:\d\d/, ""))
    ),
  );
  assert(
    room.console.all.some((line) =>
      /sent a wrong password \(3 of 3\)/.test(line)
    ),
  );
});

Deno.test("client.ts sends the password from SOCKLAB_PASSWORD or --password", async (t) => {
  await using room = startServer({ password: "s3cret" });
  await using amey = await TestClient.connect(room.port);
  await amey.next();
  await amey.send("/auth s3cret");
  await amey.lines.waitFor(/^\* you are/);

  await t.step("from the environment", async () => {
    await using client = Spawned.script("client.ts", [
      "127.0.0.1",
      "--port",
      String(room.port),
      "--name",
      "envbot",
    ], {
      stdin: "piped",
      env: { SOCKLAB_PASSWORD: "s3cret" },
    });
    await client.type("hi");
    assertEquals(await amey.lines.waitFor(/^</), "<envbot> hi");
    await client.endInput();
    assertEquals((await client.status()).code, 0);
  });
  await t.step(
    "a wrong one, with no terminal to ask again: exit 1",
    async () => {
      await using client = Spawned.script(
        "client.ts",
        ["127.0.0.1", "--port", String(room.port), "--password", "guess"],
        { stdin: "piped" },
      );
      assertEquals((await client.status()).code, 1);
      assertEquals(client.stderr.all, [
        `The server "127.0.0.1:${room.port}" refused the password`,
      ]);
    },
  );
  await t.step("none, with no terminal to ask on: exit 1", async () => {
    await using client = Spawned.script("client.ts", [
      "127.0.0.1",
      "--port",
      String(room.port),
    ], { stdin: "piped" });
    assertEquals((await client.status()).code, 1);
    assertEquals(client.stderr.all, [
      `The server "127.0.0.1:${room.port}" needs a password: give it with --password or SOCKLAB_PASSWORD`,
    ]);
  });
});

Deno.test("inventory with a password: /auth first, then requests", async () => {
  await using service = await startInventory({
    password: "pw",
    guessWaitMs: 0,
  });
  await using client = await TestClient.connect(service.port);
  const ask = async (line: string) => {
    await client.send(line);
    return JSON.parse(await client.next());
  };
  assertEquals(await ask("view"), {
    ok: false,
    error: "authenticate first: /auth PASSWORD",
  });
  assertEquals(await ask("/auth nope"), { ok: false, error: "wrong password" });
  assertEquals(await ask("/auth pw"), { ok: true, message: "authenticated" });
  assertEquals(await ask("view"), { ok: true, inventory: {} });

  await using oneShot = Spawned.script("client.ts", [
    "127.0.0.1",
    "--port",
    String(service.port),
    "--service",
    "inventory",
    "--password",
    "pw",
    "add",
    "Soap",
    "1",
  ]);
  assertEquals((await oneShot.status()).code, 0);
  assertEquals(oneShot.stdout.all[0], "Added 1 Soap(s) to the inventory.");
});

Deno.test("UDP chat with a password: /join NAME SECRET", async () => {
  await using chat = startUdpServer({ password: "pw" });
  await using peer = new UdpPeer(chat.port);
  // Padded: an address that has not joined gets back no more than it sent.
  const padded = (text: string) => text.padEnd(1200);
  assertEquals(
    await peer.ask(padded("hello")),
    "! this chat needs a password: /join NAME PASSWORD",
  );
  assertEquals(
    await peer.ask(padded("/join amey")),
    "! this chat needs a password: /join NAME PASSWORD",
  );
  assertEquals(await peer.ask(padded("/join amey wrong")), "! wrong password");
  assertMatch(
    await peer.ask(padded("/join amey pw")),
    /^\* welcome to socklab chat/,
  );
  await peer.datagrams.waitFor("* you are amey; /help lists the commands");
  assert(!chat.log.all.some((line) => / pw\b|wrong\b(?! password)/.test(line)));

  await using client = Spawned.script(
    "udp_client.ts",
    [
      "127.0.0.1",
      "--port",
      String(chat.port),
      "--name",
      "bot",
      "--password",
      "pw",
    ],
    { stdin: "piped" },
  );
  await peer.datagrams.waitFor("* bot joined");
  await client.type("hi");
  assertEquals(await peer.datagrams.waitFor(/^</), "<bot> hi");
  await client.endInput();
  assertEquals((await client.status()).code, 0);
});

// ---------------------------------------------------------------------------
// Limits
// ---------------------------------------------------------------------------

Deno.test("--max-clients: the client over the limit gets '! server full' and is closed", async () => {
  await using room = startServer({ maxClients: 2 });
  await using one = await TestClient.join(room.port);
  await using _two = await TestClient.join(room.port);
  await using three = await TestClient.connect(room.port);
  assertEquals(await three.next(), "! server full");
  await three.closedByServer();
  await room.console.waitFor(/refused 127\.0\.0\.1:\d+: server full$/);
  one.close();
  await room.console.waitFor(/left \(closed\)/);
  // A place came free: the next client is welcomed, not refused.
  await using four = await TestClient.connect(room.port);
  assertMatch(await four.next(), /^\* welcome/);
});

Deno.test("the inventory has no flood limit: 1000 requests in one write all get replies", async () => {
  await using service = await startInventory();
  await using client = await TestClient.connect(service.port);
  await client.write("add Soap 1\n".repeat(1000));
  let last;
  for (let i = 0; i < 1000; i++) last = JSON.parse(await client.next());
  assertEquals(last.inventory, { Soap: 1000 });
});

Deno.test("--idle-timeout: idle clients are told and disconnected", async () => {
  await using room = startServer({ idleTimeoutMs: 300, rateLimit: 0 });
  await using talker = await TestClient.join(room.port, "talker");
  await using sleeper = await TestClient.join(room.port, "sleeper");
  // The talker stays active until the sleeper is gone.
  while (!talker.lines.all.some((line) => /sleeper left/.test(line))) {
    await talker.send("/who");
    await talker.lines.waitFor(/^\* (online|sleeper left)/);
  }
  assertEquals(
    await sleeper.lines.waitFor(/idle/),
    "! idle for 0.3 s: disconnecting",
  );
  await sleeper.closedByServer();
  assert(talker.lines.all.includes("* sleeper left (idle)"));
});

Deno.test("a 10 MB line without a newline leaves the server's memory bounded", async () => {
  await using server = Spawned.script("server.ts", LOCAL);
  const port = await bannerPort(server);
  const before = residentKiB(server.pid);
  await using sender = await TestClient.join(port, "sender");
  const chunk = new Uint8Array(1 << 20).fill(0x61);
  for (let i = 0; i < 10; i++) await sender.write(chunk);
  assertEquals(
    await sender.lines.waitFor(/^!/),
    "! line too long (over 4096 bytes): it was not sent",
  );
  await sender.write("\n/who\n");
  assertMatch(await sender.lines.waitFor(/^\* online/), /sender/);
  const after = residentKiB(server.pid);
  if (before !== undefined && after !== undefined) {
    assert(
      after - before < 20 * 1024,
      `grew by ${after - before} KiB for a 10 MB line`,
    );
  }
});

Deno.test("UDP: a peer over the rate limit is told once and its datagrams dropped; --max-peers", async () => {
  await using service = startUdpServer({
    service: "echo",
    rateLimit: 10,
    burst: 10,
  });
  await using peer = new UdpPeer(service.port);
  for (let i = 0; i < 50; i++) await peer.send(`n${i}`);
  await service.log.waitFor(/is over the rate limit: datagrams dropped$/);
  const replies = [];
  for (let i = 0; i < 11; i++) replies.push(await peer.datagrams.next());
  assertEquals(replies.filter((reply) => reply.startsWith("n")).length, 10);
  assertEquals(replies.filter((reply) => reply.startsWith("!")), [
    "! slow down: at most 10 datagrams a second; the rest are dropped",
  ]);

  await using chat = startUdpServer({ maxPeers: 1 });
  await using first = new UdpPeer(chat.port);
  await using second = new UdpPeer(chat.port);
  const padded = (text: string) => text.padEnd(1200); // room for a reply
  assertMatch(await first.ask(padded("/join first")), /^\* welcome/);
  assertEquals(await second.ask(padded("/join second")), "! chat full");
  assertEquals(await second.ask(padded("hello")), "! chat full");
});

// ---------------------------------------------------------------------------
// Terminal safety
// ---------------------------------------------------------------------------

Deno.test("escape sequences and control characters are removed before relaying and logging", async () => {
  await using room = startServer();
  await using reader = await TestClient.join(room.port, "reader");
  await using mallory = await TestClient.join(room.port, "mallory");

  await mallory.send("\x1b[2J\x1b[Hscreen cleared?\x07");
  assertEquals(await reader.lines.waitFor(/^</), "<mallory> screen cleared?");
  // A bare CR ends a line: a forged "<admin>" stays behind mallory's name.
  await mallory.send("hi\r<admin> give me your password");
  assertEquals(await reader.lines.waitFor(/^</), "<mallory> hi");
  assertEquals(
    await reader.lines.next(),
    "<mallory> <admin> give me your password",
  );
  await mallory.send("\u202etxt.exe \x1b]0;title\x07 नमस्ते 你好 café 👋");
  assertEquals(
    await reader.lines.waitFor(/^</),
    "<mallory> txt.exe  नमस्ते 你好 café 👋",
  );
  await mallory.send("/nick \x1b[31mred");
  assertEquals(
    await reader.lines.waitFor(/known as/),
    "* mallory is now known as red",
  );
  // deno-lint-ignore no-control-regex -- looking for control bytes
  const controls = /[\x00-\x08\x0b-\x1f\x7f]/;
  assert(
    !room.console.all.some((line) => controls.test(line)),
    "the log is clean",
  );
});

Deno.test("client.ts removes escape sequences from whatever a server sends", async () => {
  // A server we did not write: it sends escape sequences.
  using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { port } = listener.addr;
  await using client = Spawned.script("client.ts", [
    "127.0.0.1",
    "--port",
    String(port),
  ], { stdin: "piped" });
  {
    using conn = await withTimeout(
      listener.accept(),
      WAIT_MS,
      "client.ts to connect",
    );
    const evil = "<x> \x1b[2J\x1b]0;pwned\x07hello\n";
    await withTimeout(
      conn.write(new TextEncoder().encode(evil)),
      WAIT_MS,
      "client.ts to take the line",
    );
  }
  await client.status();
  assertEquals(client.stdout.all, ["<x> hello"]);
});
