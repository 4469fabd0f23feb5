/**
 * server.ts and client.ts as real processes, as a user runs them, and
 * third-party peers (nc, python3) against the server.
 * @module
 */

import { assert, assertEquals, assertMatch } from "@std/assert";
import {
  bannerPort,
  closedPort,
  hasProgram,
  Spawned,
  startServer,
  TestClient,
  WAIT_MS,
  withTimeout,
} from "./helpers.ts";

const LOCAL = ["--host", "127.0.0.1", "--port", "0"];

/** Runs client.ts against 127.0.0.1:port, with input piped from the test. */
function spawnClient(port: number, name?: string): Spawned {
  const nameFlags = name ? ["--name", name] : [];
  return Spawned.script("client.ts", [
    "127.0.0.1",
    "--port",
    String(port),
    ...nameFlags,
  ], {
    stdin: "piped",
  });
}

Deno.test("server.ts and client.ts print their usage with --help and exit 0", async () => {
  for (const script of ["server.ts", "client.ts"]) {
    await using run = Spawned.script(script, ["--help"]);
    const status = await run.status();
    assertEquals(status.code, 0);
    assertMatch(run.stdout.all.join("\n"), /USAGE:[\s\S]*--port <PORT>/);
  }
});

Deno.test("a bad flag gets one clear line, the usage, and exit code 2", async (t) => {
  const cases: [string, string[], string][] = [
    [
      "server.ts",
      ["--port", "70000"],
      'Invalid port "70000": use a whole number from 0 to 65535',
    ],
    ["server.ts", ["--colour"], 'Unknown option "--colour"'],
    [
      "server.ts",
      ["--name", "bad name"],
      'Invalid --name: name "bad name" is not valid: use letters, digits, "-", "_" or "."',
    ],
    [
      "client.ts",
      ["--port", "http"],
      'Invalid port "http": use a whole number from 0 to 65535',
    ],
    ["client.ts", ["host1", "host2"], 'Unexpected argument "host2"'],
  ];
  for (const [script, args, message] of cases) {
    await t.step(`${script} ${args.join(" ")}`, async () => {
      await using run = Spawned.script(script, args);
      const status = await run.status();
      assertEquals(status.code, 2);
      assertEquals(run.stderr.all[0], message);
      assertEquals(
        run.stderr.all[1],
        "socklab TCP chat " + script.replace(".ts", ""),
      );
    });
  }
});

Deno.test("server.ts prints where it listens and the commands to connect", async () => {
  await using server = Spawned.script("server.ts", LOCAL, { stdin: "piped" });
  const port = await bannerPort(server);
  assert(port > 0);
  assertEquals(
    await server.stdout.waitFor(/^ {2}deno run/),
    `  deno run -A client.ts 127.0.0.1 --port ${port}    or    nc 127.0.0.1 ${port}`,
  );
});

Deno.test("server.ts cannot listen on a port in use: one line, exit 1", async () => {
  const taken = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { port } = taken.addr as Deno.NetAddr;
  try {
    await using server = Spawned.script("server.ts", [
      "--host",
      "127.0.0.1",
      "--port",
      String(port),
    ]);
    const status = await server.status();
    assertEquals(status.code, 1);
    assertEquals(server.stderr.all, [
      `Cannot listen on "127.0.0.1:${port}": address already in use (is another server running on this port?)`,
    ]);
  } finally {
    taken.close();
  }
});

Deno.test("the operator's console chats with the room (concurrent server)", async () => {
  await using server = Spawned.script("server.ts", [
    ...LOCAL,
    "--name",
    "teacher",
  ], { stdin: "piped" });
  const port = await bannerPort(server);
  await using amey = await TestClient.join(port, "amey");
  await using karan = await TestClient.join(port, "karan");

  await server.type("hello class");
  assertEquals(await amey.lines.waitFor(/^</), "<teacher> hello class");
  assertEquals(await karan.lines.waitFor(/^</), "<teacher> hello class");
  await amey.send("hello teacher");
  assertEquals(await server.stdout.waitFor(/^</), "<amey> hello teacher");
  await server.type("/who");
  assertEquals(
    await server.stdout.waitFor(/online/),
    "* online (3): amey, karan, teacher (operator)",
  );
  await server.type("/kick karan");
  await karan.closedByServer();
  assertMatch(
    await server.stdout.waitFor(/karan left/),
    /^\d\d:\d\d:\d\d karan left \(kicked\)$/,
  );
});

Deno.test("the operator's console is a one-to-one chat with the client served (iterative server)", async () => {
  await using server = Spawned.script("server.ts", [...LOCAL, "--iterative"], {
    stdin: "piped",
  });
  const port = await bannerPort(server);
  assertMatch(server.stdout.all[0], /iterative/);
  await using first = await TestClient.join(port, "first");
  await server.stdout.waitFor(
    /serving guest-\d+ alone; other clients wait in the backlog/,
  );
  await using second = await TestClient.connect(port);
  await second.send("/nick second");
  await second.send("I was here early");

  await server.type("hi first");
  assertEquals(await first.lines.waitFor(/^</), "<server> hi first");
  await first.send("bye");
  assertEquals(await server.stdout.waitFor(/^</), "<first> bye");
  first.close();
  assertMatch(await server.stdout.waitFor(/left/), /first left \(closed\)/);
  await server.stdout.waitFor(/waiting for the next client/);
  assertEquals(await server.stdout.waitFor(/^</), "<second> I was here early");
  await server.type("hi second");
  assertEquals(await second.lines.waitFor(/^</), "<server> hi second");
});

for (
  const [how, stop] of [
    ["SIGTERM", (server: Spawned) => server.kill("SIGTERM")],
    ["SIGINT (Ctrl-C)", (server: Spawned) => server.kill("SIGINT")],
    ["/quit at the console", (server: Spawned) => server.type("/quit")],
  ] as const
) {
  Deno.test(`server.ts shuts down gracefully on ${how}: clients told, exit 0`, async () => {
    await using server = Spawned.script("server.ts", LOCAL, { stdin: "piped" });
    const port = await bannerPort(server);
    await using amey = await TestClient.join(port, "amey");
    await using karan = await TestClient.join(port, "karan");

    await stop(server);
    for (const client of [amey, karan]) {
      assertEquals(
        await client.lines.waitFor(/shutting/),
        "* server shutting down",
      );
      await client.closedByServer();
    }
    const status = await server.status();
    assertEquals(status.code, 0);
    assertMatch(server.stdout.all.at(-1)!, /stopped$/);
    assertEquals(server.stderr.all, []);
  });
}

Deno.test("server.ts goes on without a console when stdin is empty or ends", async () => {
  await using server = Spawned.script("server.ts", LOCAL, { stdin: "null" });
  const port = await bannerPort(server);
  await server.stdout.waitFor(/console input ended; the server goes on/);
  await using amey = await TestClient.join(port, "amey");
  await using karan = await TestClient.join(port, "karan");
  await amey.send("still here");
  assertEquals(await karan.lines.waitFor(/^</), "<amey> still here");
  server.kill("SIGTERM");
  assertEquals((await server.status()).code, 0);
});

Deno.test("server announces a client whose process is killed", async () => {
  await using room = startServer();
  await using amey = await TestClient.join(room.port, "amey");
  await using client = spawnClient(room.port, "doomed");
  await amey.lines.waitFor(/doomed joined/);
  client.kill("SIGKILL");
  assertEquals((await client.status()).signal, "SIGKILL");
  assertEquals(await amey.lines.waitFor(/left/), "* doomed left");
});

Deno.test("server removes a client whose connection is reset (python3, SO_LINGER 0)", async () => {
  await using room = startServer();
  await using amey = await TestClient.join(room.port, "amey");
  // A peer we did not write: it sends a TCP RST instead of a clean close.
  const python = `
import socket, struct, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10)
s.sendall(b"/nick resetter\\n")
seen = b""
while b"you are resetter" not in seen:
    seen += s.recv(4096)
s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
s.close()
`;
  await using resetter = new Spawned(
    ["-c", python, String(room.port)],
    {},
    "python3",
  );
  assertEquals(
    (await resetter.status()).code,
    0,
    resetter.stderr.all.join("\n"),
  );
  assertEquals(await amey.lines.waitFor(/left/), "* resetter left");
  await room.console.waitFor(/resetter left \(reset\)$/);
});

Deno.test("client.ts sends piped lines, shows what arrives, and leaves cleanly at the end", async () => {
  await using room = startServer();
  await using amey = await TestClient.join(room.port, "amey");
  await using bot = spawnClient(room.port, "bot");
  await amey.lines.waitFor(/^\* bot joined$/);
  // Lines arrive while the client has typed nothing: no turn-taking.
  await amey.send("hello bot");
  assertEquals(await bot.stdout.waitFor(/^</), "<amey> hello bot");

  await bot.type("hi");
  await bot.type("bye");
  await bot.endInput();
  assertEquals(await amey.lines.waitFor(/^</), "<bot> hi");
  assertEquals(await amey.next(), "<bot> bye");
  assertEquals(await amey.next(), "* bot left");
  const status = await bot.status();
  assertEquals(status.code, 0);
  assertEquals(bot.stderr.all, []);
  assertEquals(bot.stdout.all.at(-1), "* bye");
});

Deno.test("client.ts with no --name and piped input stays a guest", async () => {
  await using room = startServer();
  await using amey = await TestClient.join(room.port, "amey");
  await using guest = spawnClient(room.port);
  await guest.type("just passing");
  await guest.endInput();
  assertMatch(await amey.lines.waitFor(/^</), /^<guest-\d+> just passing$/);
  assertEquals((await guest.status()).code, 0);
});

Deno.test("client.ts --name joins under that name with one welcome, no rename", async () => {
  await using room = startServer();
  await using amey = await TestClient.join(room.port, "amey");
  await using kim = spawnClient(room.port, "kim");
  // The name goes in the first line: the room never sees a guest-N.
  assertEquals(await amey.next(), "* kim joined");
  assertEquals(
    await kim.stdout.waitFor(/^\* you are/),
    "* you are kim; /help lists the commands",
  );
  await kim.type("hello");
  assertEquals(await amey.next(), "<kim> hello");
  await kim.endInput();
  assertEquals(await amey.next(), "* kim left");
  assertEquals((await kim.status()).code, 0);
  assertEquals(kim.stdout.all.filter((line) => /welcome/.test(line)).length, 1);
  assertEquals(kim.stdout.all.filter((line) => /known as/.test(line)), []);
});

Deno.test("client.ts sends every piped line, in order, then leaves", async () => {
  // The server's flood limit is off: this bot sends 100 lines at once.
  await using room = startServer({ rateLimit: 0 });
  await using amey = await TestClient.join(room.port, "amey");
  await using bot = spawnClient(room.port, "bot");
  const lines = Array.from({ length: 100 }, (_, i) => `line ${i + 1}`);
  for (const line of lines) await bot.type(line);
  await bot.endInput();
  await amey.lines.waitFor(/^\* bot joined$/);
  for (const line of lines) assertEquals(await amey.next(), `<bot> ${line}`);
  assertEquals(await amey.next(), "* bot left");
  assertEquals((await bot.status()).code, 0);
});

Deno.test("client.ts --trace prints each socket step: a line split over reads is kept, then printed whole", async () => {
  // A server of the test's own, to choose how the bytes are cut.
  using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { port } = listener.addr;
  await using client = Spawned.script("client.ts", [
    "127.0.0.1",
    "--port",
    String(port),
    "--name",
    "tr",
    "--trace",
  ], { stdin: "piped" });
  using conn = await withTimeout(
    listener.accept(),
    WAIT_MS,
    "client.ts to connect",
  );
  const peer = `127.0.0.1:${port}`;
  assertMatch(
    await client.stderr.next(),
    new RegExp(`^connect ${peer} from 127\\.0\\.0\\.1:\\d+$`),
  );
  assertEquals(
    await client.stderr.next(),
    `write 9 bytes to ${peer} (all sent)`,
  );
  const send = (text: string) =>
    withTimeout(
      conn.write(new TextEncoder().encode(text)),
      WAIT_MS,
      `client.ts to take "${text}"`,
    );
  // Each piece is sent once the client has read the one before.
  await send("hel");
  assertEquals(
    await client.stderr.next(),
    `read 3 bytes from ${peer}: 0 whole lines, 3 bytes kept for the next read`,
  );
  await send("lo\nwor");
  assertEquals(
    await client.stderr.next(),
    `read 6 bytes from ${peer}: 1 whole line, 3 bytes kept for the next read`,
  );
  assertEquals(await client.stdout.next(), "hello");
  await send("ld\n");
  assertEquals(
    await client.stderr.next(),
    `read 3 bytes from ${peer}: 1 whole line, 0 bytes kept for the next read`,
  );
  assertEquals(await client.stdout.next(), "world");
  conn.close();
  assertEquals((await client.status()).code, 1);
  assertEquals(client.stderr.all.slice(-3), [
    `read end of stream from ${peer}: the server closed`,
    "close",
    `The server "${peer}" closed the connection`,
  ]);
});

Deno.test("client.ts explains a failed connection in one line and exits 1", async (t) => {
  await t.step("connection refused", async () => {
    const port = closedPort();
    await using client = Spawned.script("client.ts", [
      "127.0.0.1",
      "--port",
      String(port),
    ]);
    assertEquals((await client.status()).code, 1);
    assertEquals(client.stderr.all, [
      `Cannot connect to "127.0.0.1:${port}": connection refused (is the server running, and on this port?)`,
    ]);
  });
  await t.step("unknown host", async () => {
    await using client = Spawned.script("client.ts", ["no-such-host.invalid"]);
    assertEquals((await client.status()).code, 1);
    assertEquals(client.stderr.all, [
      `Cannot connect to "no-such-host.invalid:9999": unknown host`,
    ]);
  });
});

Deno.test("client.ts says so and exits 1 when the server closes the connection", async (t) => {
  await t.step("kicked", async () => {
    await using room = startServer();
    await using client = spawnClient(room.port, "kim");
    await room.console.waitFor(/ kim joined$/);
    room.server.operatorSays("/kick kim");
    assertEquals((await client.status()).code, 1);
    assertEquals(client.stdout.all.at(-1), "* you were kicked by the operator");
    assertEquals(client.stderr.all, [
      `The server "127.0.0.1:${room.port}" closed the connection`,
    ]);
  });
  await t.step("server shut down", async () => {
    await using room = startServer();
    await using client = spawnClient(room.port, "kim");
    await room.console.waitFor(/ kim joined$/);
    await room.stop();
    assertEquals((await client.status()).code, 1);
    assertEquals(client.stdout.all.at(-1), "* server shutting down");
    assertEquals(client.stderr.all, [
      `The server "127.0.0.1:${room.port}" closed the connection`,
    ]);
  });
});

const NC_MISSING = !hasProgram("nc");
if (NC_MISSING) {
  console.log(
    "skipping the nc test: nc (netcat-openbsd) is not installed; .ci/run installs it",
  );
}

Deno.test({
  name: "nc (netcat-openbsd) is a complete client of server.ts",
  ignore: NC_MISSING,
  async fn() {
    await using server = Spawned.script("server.ts", LOCAL, { stdin: "piped" });
    const port = await bannerPort(server);
    await using amey = await TestClient.join(port, "amey");
    // -N: after the end of input, shut down the sending side (a half-close).
    await using nc = new Spawned(["-N", "127.0.0.1", String(port)], {
      stdin: "piped",
    }, "nc");
    assertMatch(await nc.stdout.next(), /^\* welcome/);
    await nc.type("/nick netcat");
    await amey.lines.waitFor(/known as netcat/);
    await nc.type("hello from nc");
    assertEquals(await amey.lines.waitFor(/^</), "<netcat> hello from nc");
    await amey.send("hello nc");
    assertEquals(await nc.stdout.waitFor(/^</), "<amey> hello nc");
    await nc.endInput();
    assertEquals(await amey.lines.waitFor(/left/), "* netcat left");
    assertEquals((await nc.status()).code, 0);
  },
});

const TELNET_MISSING = !hasProgram("telnet");
const NCAT_MISSING = !hasProgram("ncat");
if (TELNET_MISSING || NCAT_MISSING) {
  console.log(
    "skipping the telnet and ncat chat test: it needs telnet (inetutils-telnet) and ncat",
  );
}

Deno.test({
  name:
    "telnet and ncat are chat clients of server.ts: a line typed in one reaches the other",
  ignore: TELNET_MISSING || NCAT_MISSING,
  async fn() {
    await using server = Spawned.script("server.ts", LOCAL, { stdin: "piped" });
    const port = await bannerPort(server);
    // Peers we did not write; telnet ends each line with "\r\n".
    await using telnet = new Spawned(["127.0.0.1", String(port)], {
      stdin: "piped",
    }, "telnet");
    await telnet.stdout.waitFor(/^\* you are guest-\d+: pick a name/);
    await using ncat = new Spawned(["127.0.0.1", String(port)], {
      stdin: "piped",
    }, "ncat");
    await ncat.stdout.waitFor(/^\* you are guest-\d+: pick a name/);

    await telnet.type("/nick tel");
    assertMatch(
      await ncat.stdout.waitFor(/known as tel$/),
      /^\* guest-\d+ is now known as tel$/,
    );
    await ncat.type("/nick nc");
    assertMatch(
      await telnet.stdout.waitFor(/known as nc$/),
      /^\* guest-\d+ is now known as nc$/,
    );
    await telnet.type("hello from telnet");
    assertEquals(await ncat.stdout.waitFor(/^</), "<tel> hello from telnet");
    await ncat.type("hello from ncat");
    assertEquals(await telnet.stdout.waitFor(/^</), "<nc> hello from ncat");
  },
});

Deno.test("server.ts --trace logs each socket step: listen, accept, read, write, close", async () => {
  await using server = Spawned.script("server.ts", [...LOCAL, "--trace"], {
    stdin: "piped",
  });
  const port = await bannerPort(server);
  assertMatch(server.stdout.all[0], /listen 127\.0\.0\.1:\d+: the kernel/);
  await using amey = await TestClient.connect(port);
  await server.stdout.waitFor(/ accept 127\.0\.0\.1:\d+$/);
  // A first line and half of the next: the framer keeps the half.
  await amey.write("/nick amey\nhel");
  await server.stdout.waitFor(
    /read 14 bytes from 127\.0\.0\.1:\d+: 1 whole line\(s\), 3 bytes kept for the next read$/,
  );
  await server.stdout.waitFor(/ write \d+ bytes to amey \(all sent\)$/);
  await amey.write("lo\n/quit\n");
  await server.stdout.waitFor(/read 9 bytes from amey: 2 whole line\(s\)/);
  await server.stdout.waitFor(/ close amey: quit$/);
});

Deno.test("server.ts --iterative --trace: what a client in the backlog typed comes in one read once it is accepted", async () => {
  // The README's walkthrough: Amey is served, Karan (nc) waits and types.
  await using server = Spawned.script("server.ts", [
    ...LOCAL,
    "--iterative",
    "--trace",
  ], { stdin: "piped" });
  const port = await bannerPort(server);
  await using amey = await TestClient.join(port, "amey");
  await using karan = await TestClient.connect(port);
  await karan.write("/nick karan\n");
  await karan.write("hello, is anyone there?\n");
  await amey.send("/who"); // a round trip: Karan's bytes have arrived by now
  await amey.lines.waitFor(/^\* online/);
  assertEquals(karan.lines.all, [], "Karan was served before Amey left");
  await amey.send("/quit");
  await server.stdout.waitFor(
    /read 36 bytes from 127\.0\.0\.1:\d+: 2 whole line\(s\), 0 bytes kept for the next read$/,
  );
  await karan.lines.waitFor(/^\* you are karan;/);
  await server.stdout.waitFor(/^<karan> hello, is anyone there\?$/);
});

Deno.test("server.ts without --trace logs no socket steps", async () => {
  await using server = Spawned.script("server.ts", LOCAL, { stdin: "piped" });
  const port = await bannerPort(server);
  await using amey = await TestClient.join(port, "amey");
  await amey.send("/quit");
  await server.stdout.waitFor(/amey left \(quit\)$/);
  assertEquals(
    server.stdout.all.filter((line) =>
      / (accept|read|write|close) /.test(line)
    ),
    [],
  );
});
