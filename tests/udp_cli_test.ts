/**
 * udp_server.ts and udp_client.ts as real processes, and nc -u as a
 * third-party UDP client.
 * @module
 */

import { assert, assertEquals, assertMatch } from "@std/assert";
import { MONTHS } from "../udp_server.ts";
import {
  bannerPort,
  hasProgram,
  Spawned,
  startUdpServer,
  TestClient,
  UdpPeer,
} from "./helpers.ts";

const LOCAL = ["--host", "127.0.0.1", "--port", "0"];

/** A /join padded as udp_client.ts pads it: room for the welcome. */
const joinLine = (name: string) => `/join ${name}`.padEnd(1200);

/** Runs udp_client.ts against 127.0.0.1:port, with input piped from the test. */
function spawnUdpClient(port: number, args: string[]): Spawned {
  return Spawned.script("udp_client.ts", [
    "127.0.0.1",
    "--port",
    String(port),
    ...args,
  ], {
    stdin: "piped",
  });
}

/** A UDP port where nothing listens (it was free a moment ago). */
function closedUdpPort(): number {
  const socket = Deno.listenDatagram({
    hostname: "127.0.0.1",
    port: 0,
    transport: "udp",
  });
  const { port } = socket.addr as Deno.NetAddr;
  socket.close();
  return port;
}

/** A port number free for both TCP and UDP on 127.0.0.1 a moment ago. */
function freeTcpAndUdpPort(): number {
  for (let tries = 0; tries < 20; tries++) {
    using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const { port } = listener.addr;
    try {
      Deno.listenDatagram({ hostname: "127.0.0.1", port, transport: "udp" })
        .close();
      return port;
    } catch {
      // Taken for UDP: try another.
    }
  }
  throw new Error("no port number is free for both TCP and UDP");
}

Deno.test("udp_server.ts and udp_client.ts print their usage with --help and exit 0", async () => {
  for (const script of ["udp_server.ts", "udp_client.ts"]) {
    await using run = Spawned.script(script, ["--help"]);
    assertEquals((await run.status()).code, 0);
    assertMatch(
      run.stdout.all.join("\n"),
      /USAGE:[\s\S]*--unstable-net[\s\S]*--service <SERVICE>/,
    );
  }
});

Deno.test("a bad UDP flag gets one clear line, the usage, and exit code 2", async (t) => {
  const cases: [string, string[], string][] = [
    [
      "udp_server.ts",
      ["--service", "time"],
      'Invalid --service "time": use one of chat, month, echo',
    ],
    [
      "udp_server.ts",
      ["--drop", "1.5"],
      'Invalid --drop "1.5": use a number from 0 to 1',
    ],
    [
      "udp_server.ts",
      ["--delay", "-5"],
      'Invalid value "-5": no negative numbers',
    ],
    [
      "udp_server.ts",
      ["--peer-timeout", "soon"],
      'Invalid --peer-timeout "soon": use a number from 0.1 to 86400',
    ],
    [
      "udp_client.ts",
      ["--timeout", "0"],
      'Invalid --timeout "0": use a whole number from 1 to 600000',
    ],
    [
      "udp_client.ts",
      ["--service", "month", "host", "March"],
      'Invalid month "March": give a whole number',
    ],
    [
      "udp_client.ts",
      ["--service", "month", "2.5"],
      'Invalid month "2.5": give a whole number',
    ],
  ];
  for (const [script, args, message] of cases) {
    await t.step(`${script} ${args.join(" ")}`, async () => {
      await using run = Spawned.script(script, args);
      assertEquals((await run.status()).code, 2);
      assertEquals(run.stderr.all[0], message);
    });
  }
});

Deno.test("udp_server.ts prints its service, address and the commands to reach it", async () => {
  await using server = Spawned.script("udp_server.ts", [
    ...LOCAL,
    "--service",
    "month",
    "--drop",
    "0.25",
    "--delay",
    "100",
    "--seed",
    "3",
  ]);
  const port = await bannerPort(server);
  assertEquals(
    server.stdout.all[0],
    `socklab UDP month service listening on 127.0.0.1:${port}`,
  );
  assertEquals(
    await server.stdout.waitFor(/^ {2}deno/),
    `  deno run -A udp_client.ts 127.0.0.1 --port ${port} --service month    or    nc -u 127.0.0.1 ${port}`,
  );
  assertEquals(
    await server.stdout.waitFor(/^Simulating/),
    "Simulating an unreliable network: dropping 25% of datagrams, delaying replies by up to 100 ms (seed 3)",
  );
});

Deno.test("udp_server.ts stops cleanly on Ctrl-C and tells the chat's peers", async () => {
  await using server = Spawned.script("udp_server.ts", LOCAL);
  const port = await bannerPort(server);
  await using peer = new UdpPeer(port);
  assertMatch(await peer.ask(joinLine("amey")), /^\* welcome/);
  server.kill("SIGINT");
  assertEquals(
    await peer.datagrams.waitFor(/shutting/),
    "* server shutting down",
  );
  assertEquals((await server.status()).code, 0);
  assertEquals(server.stderr.all, []);
});

Deno.test("udp_client.ts --service month 3 prints March and exits 0", async () => {
  await using service = startUdpServer({ service: "month" });
  await using client = spawnUdpClient(service.port, [
    "--service",
    "month",
    "3",
  ]);
  assertEquals((await client.status()).code, 0);
  assertEquals(client.stdout.all, ["March"]);
});

Deno.test("udp_client.ts one-shot month: an error reply or no reply exits 1", async (t) => {
  await t.step("13 gets the server's error", async () => {
    await using service = startUdpServer({ service: "month" });
    await using client = spawnUdpClient(service.port, [
      "--service",
      "month",
      "13",
    ]);
    assertEquals((await client.status()).code, 1);
    assertEquals(client.stderr.all, [
      "! send a whole number from 1 to 12 (0 ends)",
    ]);
  });
  await t.step(
    "no server: retries, then says UDP does not guarantee delivery",
    async () => {
      const port = closedUdpPort();
      await using client = spawnUdpClient(port, [
        "--service",
        "month",
        "3",
        "--timeout",
        "100",
        "--retries",
        "2",
      ]);
      assertEquals((await client.status()).code, 1);
      assertEquals(client.stderr.all, [
        "no reply in 100 ms, asking again (1 of 2)",
        "no reply in 100 ms, asking again (2 of 2)",
        `no reply from 127.0.0.1:${port} (UDP does not guarantee delivery)`,
      ]);
    },
  );
});

const ALL_ANSWERS = [...MONTHS.map((month, i) => `${i + 1}: ${month}`), "bye"];
const ALL_QUESTIONS = [
  "1",
  "2",
  "3",
  "4",
  "5",
  "6",
  "7",
  "8",
  "9",
  "10",
  "11",
  "12",
  "0",
];

/**
 * Starts `udp_server.ts --service month` with `serverFlags`, pipes the
 * questions 1 to 12 then 0 into the month client with `clientFlags`, and
 * checks that each answer is the right one, in order.
 * @returns what the server and the client printed on the side
 */
async function askEveryMonth(serverFlags: string[], clientFlags: string[]) {
  await using server = Spawned.script("udp_server.ts", [
    ...LOCAL,
    "--service",
    "month",
    ...serverFlags,
  ]);
  const port = await bannerPort(server);
  await using client = spawnUdpClient(port, [
    "--service",
    "month",
    ...clientFlags,
  ]);
  for (const question of ALL_QUESTIONS) await client.type(question);
  assertEquals((await client.status()).code, 0);
  assertEquals(client.stdout.all, ALL_ANSWERS);
  return { serverLog: server.stdout.all, clientNotes: client.stderr.all };
}

Deno.test("month client answers every question right through its retries when half the datagrams are lost", async () => {
  // With this seed, one question is dropped 9 times in a row: 10 retries.
  const { serverLog, clientNotes } = await askEveryMonth(
    ["--drop", "0.5", "--seed", "1"],
    ["--timeout", "150", "--retries", "10"],
  );
  assert(
    clientNotes.some((line) => /asking again/.test(line)),
    "some questions were asked again",
  );
  assert(serverLog.some((line) => /dropped a datagram/.test(line)));
});

Deno.test("month client never takes a late reply for the answer to another question", async () => {
  const { clientNotes } = await askEveryMonth(
    ["--delay", "400", "--seed", "5"],
    ["--timeout", "100", "--retries", "20"],
  );
  assert(
    clientNotes.some((line) => /ignored a late reply/.test(line)),
    "late replies came, and were ignored",
  );
});

Deno.test("month client re-asks on input that is not a number, without sending it", async () => {
  await using service = startUdpServer({ service: "month" });
  await using client = spawnUdpClient(service.port, ["--service", "month"]);
  for (const line of ["march", "2.5", "", "4", "0"]) await client.type(line);
  assertEquals((await client.status()).code, 0);
  assertEquals(client.stdout.all, [
    "Please enter a whole number, like 3 (0 to quit)",
    "Please enter a whole number, like 3 (0 to quit)",
    "Please enter a whole number, like 3 (0 to quit)",
    "4: April",
    "bye",
  ]);
  assertEquals(
    service.log.all.filter((line) => /asked/.test(line)).length,
    2,
    "only 4 and 0 were sent",
  );
});

Deno.test("echo client pings like ping: a line per reply, then the summary", async (t) => {
  await t.step("every reply", async () => {
    await using service = startUdpServer({ service: "echo" });
    await using client = spawnUdpClient(service.port, [
      "--service",
      "echo",
      "--count",
      "3",
      "--interval",
      "20",
    ]);
    assertEquals((await client.status()).code, 0);
    const lines = client.stdout.all;
    assertEquals(
      lines[0],
      `ECHO 127.0.0.1:${service.port}: 3 datagram(s), one every 20 ms`,
    );
    for (let seq = 1; seq <= 3; seq++) {
      assertMatch(
        lines[seq],
        new RegExp(
          `^reply from 127\\.0\\.0\\.1:\\d+: seq=${seq} time=\\d+\\.\\d{3} ms$`,
        ),
      );
    }
    assertEquals(lines[4], `--- 127.0.0.1:${service.port} echo statistics ---`);
    assertEquals(lines[5], "3 sent, 3 received, 0% loss");
    assertMatch(
      lines[6],
      /^round trip min\/avg\/max = \d+\.\d{3}\/\d+\.\d{3}\/\d+\.\d{3} ms$/,
    );
  });
  await t.step("all lost", async () => {
    await using service = startUdpServer({ service: "echo", dropRate: 1 });
    await using client = spawnUdpClient(service.port, [
      "--service",
      "echo",
      "--count",
      "2",
      "--interval",
      "10",
      "--timeout",
      "100",
    ]);
    assertEquals((await client.status()).code, 1);
    assertEquals(client.stdout.all.slice(-2), [
      `--- 127.0.0.1:${service.port} echo statistics ---`,
      "2 sent, 0 received, 100% loss",
    ]);
  });
});

Deno.test("echo client sends each piped line and shows its echo", async () => {
  await using service = startUdpServer({ service: "echo" });
  await using client = spawnUdpClient(service.port, ["--service", "echo"]);
  await client.type("hello");
  await client.type("नमस्ते");
  await client.endInput();
  assertEquals((await client.status()).code, 0);
  assertEquals(client.stdout.all.length, 2);
  assertMatch(client.stdout.all[0], /^hello \(\d+\.\d{3} ms\)$/);
  assertMatch(client.stdout.all[1], /^नमस्ते \(\d+\.\d{3} ms\)$/);
});

/** Joins the chat as `name` and takes the three welcome lines. */
async function join(peer: UdpPeer, name: string): Promise<void> {
  assertMatch(await peer.ask(joinLine(name)), /^\* welcome/);
  await peer.datagrams.waitFor(/^\* you are /);
}

Deno.test("chat client joins, sends piped lines, shows what arrives, and leaves at the end", async () => {
  await using chat = startUdpServer();
  await using amey = new UdpPeer(chat.port);
  await join(amey, "amey");
  await using bot = spawnUdpClient(chat.port, ["--name", "bot"]);
  assertEquals(await amey.datagrams.next(), "* bot joined");
  await amey.send("hello bot");
  assertEquals(await bot.stdout.waitFor(/^</), "<amey> hello bot");

  await bot.type("hi");
  await bot.type("bye");
  await bot.endInput();
  assertEquals(await amey.datagrams.next(), "<bot> hi");
  assertEquals(await amey.datagrams.next(), "<bot> bye");
  assertEquals(await amey.datagrams.next(), "* bot left");
  assertEquals((await bot.status()).code, 0);
  assertEquals(bot.stdout.all.at(-1), "* bye");
});

Deno.test("chat client keeps itself in the chat with keepalives, and hides their answers", async () => {
  await using chat = startUdpServer({ peerTimeoutMs: 400, rateLimit: 0 });
  await using bot = spawnUdpClient(chat.port, [
    "--name",
    "bot",
    "--keepalive",
    "0.1",
  ]);
  await chat.log.waitFor(/bot joined/);
  await using amey = new UdpPeer(chat.port);
  await join(amey, "amey");
  // For three peer timeouts, bot (silent but for keepalives) stays in.
  for (const end = Date.now() + 1200; Date.now() < end;) {
    assertEquals(await amey.ask("/who"), "* online (2): bot, amey");
  }
  await bot.endInput();
  assertEquals((await bot.status()).code, 0);
  assert(!bot.stdout.all.includes("* pong"), "keepalive answers are not shown");
});

Deno.test("chat client with no server exits 1 after its retries", async () => {
  const port = closedUdpPort();
  await using client = spawnUdpClient(port, [
    "--name",
    "amey",
    "--timeout",
    "100",
    "--retries",
    "1",
  ]);
  assertEquals((await client.status()).code, 1);
  assertEquals(
    client.stderr.all.at(-1),
    `no reply from 127.0.0.1:${port} (UDP does not guarantee delivery)`,
  );
});

Deno.test("chat client says so and exits 1 when the server shuts down", async () => {
  await using chat = startUdpServer();
  await using client = spawnUdpClient(chat.port, ["--name", "kim"]);
  await chat.log.waitFor(/kim joined/);
  await chat.stop();
  assertEquals((await client.status()).code, 1);
  assertEquals(client.stdout.all.at(-1), "* server shutting down");
  assertEquals(client.stderr.all, [
    `The server "127.0.0.1:${chat.port}" shut down`,
  ]);
});

const NC_MISSING = !hasProgram("nc");
if (NC_MISSING) {
  console.log(
    "skipping the nc -u tests: nc (netcat-openbsd) is not installed; .ci/run installs it",
  );
}

Deno.test({
  name: "nc -u is a UDP chat client (joined as guest-N) and a month client",
  ignore: NC_MISSING,
  async fn() {
    await using chat = startUdpServer();
    await using amey = new UdpPeer(chat.port);
    await join(amey, "amey");
    await using nc = new Spawned(["-u", "127.0.0.1", String(chat.port)], {
      stdin: "piped",
    }, "nc");
    await nc.type("hello from nc");
    assertEquals(await amey.datagrams.next(), "* guest-1 joined");
    assertEquals(await amey.datagrams.next(), "<guest-1> hello from nc");
    // Its welcome was held back (bigger than its datagram); it is in now.
    await nc.type("/who");
    assertEquals(
      await nc.stdout.waitFor(/^\* online/),
      "* online (2): amey, guest-1",
    );
    await amey.send("hello nc");
    assertEquals(await nc.stdout.waitFor(/^</), "<amey> hello nc");

    await using months = startUdpServer({ service: "month" });
    await using ncMonth = new Spawned(
      ["-u", "127.0.0.1", String(months.port)],
      { stdin: "piped" },
      "nc",
    );
    await ncMonth.type("Hello, I just want to use your service");
    assertMatch(await ncMonth.stdout.next(), /^\* month service:/);
    await ncMonth.type("3");
    assertEquals(await ncMonth.stdout.next(), "3: March");
    await ncMonth.type("13");
    assertEquals(
      await ncMonth.stdout.next(),
      "! send a whole number from 1 to 12 (0 ends)",
    );
  },
});

Deno.test("udp_client.ts --trace prints each socket step on stderr, and none without it", async () => {
  await using service = startUdpServer({ service: "month" });
  const at = `127.0.0.1:${service.port}`;
  await using traced = spawnUdpClient(service.port, [
    "--service",
    "month",
    "3",
    "--trace",
  ]);
  assertEquals((await traced.status()).code, 0);
  assertEquals(traced.stdout.all, ["March"], "stdout stays the answer");
  assertMatch(traced.stderr.all[0], /^bind 0\.0\.0\.0:\d+$/);
  assertEquals(traced.stderr.all.slice(1), [
    `sendto ${at}: 2 bytes`,
    `recvfrom ${at}: 9 bytes`,
    "close",
  ]);

  await using quiet = spawnUdpClient(service.port, ["--service", "month", "3"]);
  assertEquals((await quiet.status()).code, 0);
  assertEquals(quiet.stderr.all, []);
});

Deno.test("udp_server.ts --trace logs bind, recvfrom and sendto as they happen", async () => {
  await using server = Spawned.script("udp_server.ts", [
    ...LOCAL,
    "--service",
    "echo",
    "--trace",
  ]);
  assertMatch(
    await server.stdout.next(),
    /^\d\d:\d\d:\d\d bind 127\.0\.0\.1:\d+$/,
  );
  const port = await bannerPort(server);
  await using peer = new UdpPeer(port);
  assertEquals(await peer.ask("hi"), "hi");
  const at = `127\\.0\\.0\\.1:${peer.port}`;
  await server.stdout.waitFor(new RegExp(` recvfrom ${at}: 2 bytes$`));
  await server.stdout.waitFor(new RegExp(` sendto ${at}: 2 bytes$`));
});

Deno.test("server.ts (TCP) and udp_server.ts (UDP) share one port number, and both answer", async () => {
  const port = freeTcpAndUdpPort();
  const here = ["--host", "127.0.0.1", "--port", String(port)];
  await using tcp = Spawned.script("server.ts", here, { stdin: "piped" });
  assertEquals(await bannerPort(tcp), port);
  await using udp = Spawned.script("udp_server.ts", [
    ...here,
    "--service",
    "month",
  ]);
  assertEquals(await bannerPort(udp), port);

  await using amey = await TestClient.join(port, "amey");
  await using karan = await TestClient.join(port, "karan");
  await amey.send("hello over TCP");
  assertEquals(await karan.lines.waitFor(/^</), "<amey> hello over TCP");
  await using peer = new UdpPeer(port);
  assertEquals(await peer.ask("3"), "3: March");
  assertEquals(tcp.stderr.all, []);
  assertEquals(udp.stderr.all, []);
});
