/**
 * The chat server, driven in-process over real sockets on 127.0.0.1.
 * @module
 */

import { assert, assertEquals, assertMatch } from "@std/assert";
import { startServer, TestClient, WAIT_MS, withTimeout } from "./helpers.ts";
import { seededRandom } from "../udp_server.ts";

Deno.test("server relays a message to every other client, not back to its sender", async () => {
  await using room = startServer();
  const { port } = room;
  await using amey = await TestClient.join(port, "amey");
  await using karan = await TestClient.join(port, "karan");
  await using lina = await TestClient.join(port, "lina");

  await amey.send("hello, everyone");
  assertEquals(await karan.lines.waitFor(/^</), "<amey> hello, everyone");
  assertEquals(await lina.lines.waitFor(/^</), "<amey> hello, everyone");
  // Lines are handled in order: by the answer to /who, an echo of the
  // message would have come.
  await amey.send("/who");
  await amey.lines.waitFor(/^\* online/);
  assertEquals(amey.lines.all.filter((line) => line.startsWith("<")), []);
  assertEquals(
    await room.console.waitFor(/^</),
    "<amey> hello, everyone",
    "the operator sees the room's messages",
  );
});

Deno.test("server announces joins, renames and leaves to the others", async () => {
  await using room = startServer();
  await using amey = await TestClient.join(room.port, "amey");
  await using karan = await TestClient.connect(room.port);

  assertMatch(await amey.lines.next(), /^\* guest-\d+ joined$/);
  await karan.send("/nick Karan");
  assertMatch(await amey.lines.next(), /^\* guest-\d+ is now known as Karan$/);
  assertMatch(
    await karan.lines.waitFor(/known as/),
    /is now known as Karan$/,
    "the renamed client is told too",
  );
  await karan.send("/quit");
  await karan.lines.waitFor("* bye");
  await karan.closedByServer();
  assertEquals(await amey.lines.next(), "* Karan left");
  await room.console.waitFor(/Karan left \(quit\)$/);
});

Deno.test("server welcomes a client with who is online, a guest name and how to get help", async () => {
  await using room = startServer({ operatorName: "teacher" });
  await using _amey = await TestClient.join(room.port, "amey");
  await using guest = await TestClient.connect(room.port);

  assertMatch(await guest.next(), /^\* welcome/);
  assertEquals(await guest.next(), "* online: amey, teacher (operator)");
  assertMatch(
    await guest.next(),
    /^\* you are guest-\d+: pick a name with \/nick NAME; \/help lists the commands$/,
  );
});

Deno.test("server gives each unnamed client its own guest name", async () => {
  await using room = startServer();
  await using one = await TestClient.connect(room.port);
  await using two = await TestClient.connect(room.port);
  await using three = await TestClient.connect(room.port);
  const names = [];
  for (const client of [one, two, three]) {
    names.push(
      /you are (guest-\d+)/.exec(await client.lines.waitFor(/you are/))![1],
    );
  }
  assertEquals(new Set(names).size, 3);
});

Deno.test("the next guest skips a guest name someone took with /nick", async () => {
  await using room = startServer();
  await using first = await TestClient.connect(room.port);
  assertMatch(await first.lines.waitFor(/^\* you are/), /^\* you are guest-1:/);
  // guest-2 would be the next guest's name: first takes it by hand.
  await first.send("/nick guest-2");
  await first.lines.waitFor("* guest-1 is now known as guest-2");
  await using next = await TestClient.connect(room.port);
  assertMatch(
    await next.lines.waitFor(/^\* you are/),
    /^\* you are guest-3: pick a name with \/nick NAME/,
  );
  await next.send("/who");
  assertEquals(
    await next.lines.waitFor(/^\* online/),
    "* online (3): guest-2, guest-3, server (operator)",
  );
});

Deno.test("server refuses names that are taken, reserved or invalid", async (t) => {
  await using room = startServer();
  await using amey = await TestClient.join(room.port, "AMEY");
  await using karan = await TestClient.join(room.port, "karan");

  const cases: [string, string][] = [
    ["/nick amey", '! name "amey" is taken'],
    ["/nick Server", '! name "Server" is reserved for the operator'],
    [
      "/nick bad name",
      '! name "bad name" is not valid: use letters, digits, "-", "_" or "."',
    ],
    [
      "/nick k@ran",
      '! name "k@ran" is not valid: use letters, digits, "-", "_" or "."',
    ],
    [
      "/nick " + "x".repeat(25),
      `! name "${"x".repeat(24)}..." is too long (24 characters at most)`,
    ],
    ["/nick", "! usage: /nick NAME"],
  ];
  for (const [command, error] of cases) {
    await t.step(command.slice(0, 20), async () => {
      await karan.send(command);
      assertEquals(await karan.next(), error);
    });
  }
  await karan.send("/nick a.b_c-9");
  assertEquals(
    await amey.lines.waitFor(/known as a/),
    "* karan is now known as a.b_c-9",
  );
});

Deno.test("server sends /msg to one client only, marked private", async () => {
  await using room = startServer();
  await using amey = await TestClient.join(room.port, "amey");
  await using karan = await TestClient.join(room.port, "karan");
  await using lina = await TestClient.join(room.port, "lina");

  await amey.send("/msg KARAN see you at 5");
  assertEquals(
    await karan.lines.waitFor(/private/),
    "[private] <amey> see you at 5",
  );
  await amey.send("for all");
  assertEquals(await lina.lines.waitFor(/^</), "<amey> for all");
  // Each connection's lines come in order: a copy of the private line
  // would have reached lina before "for all".
  assertEquals(
    lina.lines.all.filter((line) => line.includes("see you at 5")),
    [],
    "a third client does not see the private line",
  );

  await amey.send("/msg nobody hi");
  assertEquals(
    await amey.lines.waitFor(/^!/),
    '! no one named "nobody" is online',
  );
  assertEquals(
    amey.lines.all.filter((line) => line.includes("see you at 5")),
    [],
    "the sender gets no copy",
  );
  await amey.send("/msg karan");
  assertEquals(await amey.lines.waitFor(/^!/), "! usage: /msg NAME TEXT");
  await amey.send("/msg server hi operator");
  assertEquals(
    await room.console.waitFor(/private/),
    "[private] <amey> hi operator",
  );
});

Deno.test("server turns /me into an action notice and // into a message starting with /", async () => {
  await using room = startServer();
  await using amey = await TestClient.join(room.port, "amey");
  await using karan = await TestClient.join(room.port, "Karan");

  await karan.send("/me waves");
  assertEquals(await amey.lines.waitFor(/waves/), "* Karan waves");
  await karan.send("//etc/hosts is a file");
  assertEquals(await amey.lines.waitFor(/^</), "<Karan> /etc/hosts is a file");
  await karan.send("/dance");
  assertEquals(
    await karan.lines.waitFor(/^!/),
    '! unknown command "/dance": /help lists the commands',
  );
  await karan.send("/help");
  assertEquals(await karan.lines.waitFor(/^\* /), "* commands:");
  await karan.send("/me");
  assertEquals(await karan.lines.waitFor(/^!/), "! usage: /me TEXT");
});

Deno.test("server frames lines whatever pieces TCP delivers them in", async (t) => {
  await using room = startServer();
  await using reader = await TestClient.join(room.port, "reader");
  await using writer = await TestClient.join(room.port, "writer");
  const bytes = (text: string) => new TextEncoder().encode(text);

  await t.step(
    "a line split over several writes arrives once, whole",
    async () => {
      await writer.write("hel");
      await writer.write("lo wor");
      await writer.write("ld\n");
      assertEquals(await reader.lines.waitFor(/^</), "<writer> hello world");
    },
  );
  await t.step("many lines in one write arrive as many messages", async () => {
    await writer.write("one\ntwo\r\nthree\n");
    assertEquals(await reader.lines.waitFor(/^</), "<writer> one");
    assertEquals(await reader.next(), "<writer> two");
    assertEquals(await reader.next(), "<writer> three");
  });
  await t.step(
    "a UTF-8 character split between writes arrives whole",
    async () => {
      const line = bytes("नमस्ते 你好 👋\n");
      for (const byte of line) await writer.write(new Uint8Array([byte]));
      assertEquals(await reader.lines.waitFor(/^</), "<writer> नमस्ते 你好 👋");
    },
  );
  await t.step("CRLF split between writes ends one line", async () => {
    await writer.write("crlf\r");
    await writer.write("\nnext\n");
    assertEquals(await reader.lines.waitFor(/^</), "<writer> crlf");
    assertEquals(await reader.next(), "<writer> next");
  });
  await t.step("invalid UTF-8 becomes U+FFFD and is not fatal", async () => {
    await writer.write(new Uint8Array([0x61, 0xff, 0x62, 0x0a]));
    assertEquals(await reader.lines.waitFor(/^</), "<writer> a\ufffdb");
  });
});

Deno.test("server relays a read mixing plain, non-ASCII, unsafe and command lines in order", async (t) => {
  // Every line is decoded and cleaned (plain ones pass unchanged), and the
  // read's lines go out together. One write holds them all, so one read does.
  const burst = [
    "plain one",
    "héllo wörld 👋",
    "\x1b[31mred\x1b[0m and a\ttab",
    "trailing spaces   ",
    "/me waves",
    "//slash",
    "plain two",
    "   ",
    "plain three",
  ].join("\n") + "\n";
  const expected = [
    "<writer> plain one",
    "<writer> héllo wörld 👋",
    "<writer> red and a tab",
    "<writer> trailing spaces",
    "* writer waves",
    "<writer> /slash",
    "<writer> plain two",
    "<writer> plain three",
  ];
  for (const quiet of [true, false]) {
    await t.step(
      quiet ? "quiet server" : "server printing the room",
      async () => {
        await using room = startServer({ quiet });
        await using reader = await TestClient.join(room.port, "reader");
        await using writer = await TestClient.join(room.port, "writer");
        await writer.write(burst);
        const received = [await reader.lines.waitFor(/plain one$/)];
        while (received.length < expected.length) {
          received.push(await reader.next());
        }
        assertEquals(received, expected);
        if (!quiet) {
          assertEquals(
            await room.console.waitFor(/plain three/),
            expected.at(-1),
          );
        }
      },
    );
  }
});

Deno.test("a flood limit never reached changes nothing the room relays, whatever the reads", async () => {
  // With no flood limit (the bench's flag) and with one never reached (as
  // a default server runs), the same seeded random stream, cut into random
  // writes, must come out the same.
  const random = seededRandom(11);
  const pick = <T>(items: T[]) => items[Math.floor(random() * items.length)];
  const kinds = [
    () => `plain ${Math.floor(random() * 1e6)}`,
    () => "trailing ",
    () => "/me waves",
    () => "//slash",
    () => "/unknown",
    () => "héllo 👋",
    () => "\x1b[31mred\x1b[0m\ttab",
    () => "",
    () => "   ",
    () => "x".repeat(150 + Math.floor(random() * 100)), // over the limit sometimes
  ];
  const ends = ["\n", "\n", "\r\n", "\r"];
  let stream = "";
  for (let i = 0; i < 600; i++) stream += pick(kinds)() + pick(ends);
  stream += "the end\n";
  const bytes = new TextEncoder().encode(stream);

  const relayed = async (rateLimit: number) => {
    await using room = startServer({
      quiet: true,
      maxLineBytes: 200,
      rateLimit,
      burst: rateLimit,
    });
    await using reader = await TestClient.join(room.port, "reader");
    await using writer = await TestClient.join(room.port, "writer");
    for (let at = 0; at < bytes.length;) {
      const size = 1 + Math.floor(random() * 300);
      await writer.write(bytes.subarray(at, at + size));
      at += size;
    }
    await reader.lines.waitFor(/the end$/);
    return reader.lines.all.filter((line) => /^(<|\*) ?writer/.test(line));
  };
  const unlimited = await relayed(0);
  const limited = await relayed(1_000_000);
  assert(unlimited.length > 300, `only ${unlimited.length} lines relayed`);
  assertEquals(unlimited, limited);
});

Deno.test("server relays a line of 300,000 bytes, in order, with a raised --max-line", async () => {
  await using room = startServer({ quiet: true, maxLineBytes: 1 << 20 });
  await using reader = await TestClient.join(room.port, "reader");
  await using writer = await TestClient.join(room.port, "writer");
  const big = "x".repeat(300_000);
  await writer.write(`before\n${big}\nafter\n`);
  assertEquals(await reader.lines.waitFor(/before$/), "<writer> before");
  assertEquals(await reader.next(), `<writer> ${big}`);
  assertEquals(await reader.next(), "<writer> after");
});

Deno.test("server discards a line over the limit, keeps the connection and its memory bounded", async () => {
  await using room = startServer({ maxLineBytes: 100 });
  await using reader = await TestClient.join(room.port, "reader");
  await using writer = await TestClient.join(room.port, "writer");

  await writer.write("x".repeat(1_000_000) + "\nafter\n");
  assertEquals(
    await writer.lines.waitFor(/^!/),
    "! line too long (over 100 bytes): it was not sent",
  );
  assertEquals(await reader.lines.waitFor(/^</), "<writer> after");
});

Deno.test("server removes and announces a client that vanishes without /quit", async (t) => {
  await using room = startServer();
  await using amey = await TestClient.join(room.port, "amey");

  await t.step("a closed connection", async () => {
    await using karan = await TestClient.join(room.port, "karan");
    karan.close();
    assertEquals(await amey.lines.waitFor(/left/), "* karan left");
    await room.console.waitFor(/karan left \(closed\)/);
  });
  await t.step("a half-closed connection still gets its answers", async () => {
    await using lina = await TestClient.join(room.port, "lina");
    await lina.send("/who");
    await lina.conn.closeWrite();
    assertMatch(await lina.lines.waitFor(/^\* online/), /lina/);
    await lina.closedByServer();
    assertEquals(await amey.lines.waitFor(/left/), "* lina left");
  });
  await t.step("a last line without a newline is still relayed", async () => {
    await using omar = await TestClient.join(room.port, "omar");
    await omar.write("no newline");
    await omar.conn.closeWrite();
    assertEquals(await amey.lines.waitFor(/^</), "<omar> no newline");
    await omar.closedByServer();
  });
  await amey.send("/who");
  assertEquals(
    await amey.lines.waitFor(/^\* online/),
    "* online (2): amey, server (operator)",
  );
});

Deno.test("server drops a client that stops reading, without delaying the others", async () => {
  await using room = startServer({ maxPendingBytes: 64 * 1024, rateLimit: 0 });
  // The sleeper connects and never reads: its socket buffers fill, then
  // what the server keeps for it passes the cap.
  using _sleeper = await withTimeout(
    Deno.connect({ hostname: "127.0.0.1", port: room.port }),
    WAIT_MS,
    "a connection to the server",
  );
  await room.console.waitFor(/guest-\d+ joined/);
  await using talker = await TestClient.join(room.port, "talker");
  await using listener = await TestClient.join(room.port, "listener");

  const line = "y".repeat(4000);
  let leftNotice;
  for (let i = 0; i < 20_000 && !leftNotice; i++) {
    await talker.send(line);
    // The listener gets every line, and at some point the notice.
    const received = await listener.next();
    if (received.startsWith("* ")) leftNotice = received;
    else assertEquals(received, `<talker> ${line}`);
  }
  assertMatch(leftNotice!, /^\* guest-\d+ left \(too slow\)$/);
  await room.console.waitFor(/guest-\d+ left \(too slow\)$/);
});

Deno.test("iterative server serves one client at a time, then the next, with its early lines", async () => {
  await using room = startServer({ iterative: true });
  await using first = await TestClient.join(room.port, "first");
  await room.console.waitFor(/serving first|serving guest-\d+ alone/);

  // The second client connects and types while the first is served.
  await using second = await TestClient.connect(room.port);
  await second.send("/nick second");
  await second.send("typed while waiting");

  await first.send("hello operator");
  assertEquals(await room.console.waitFor(/^</), "<first> hello operator");
  room.server.operatorSays("hello first");
  assertEquals(await first.lines.waitFor(/^</), "<server> hello first");
  assertEquals(second.lines.all.length, 0, "the second client waits unserved");

  await first.send("/quit");
  await first.closedByServer();
  await room.console.waitFor(/waiting for the next client/);
  assertMatch(await second.lines.next(), /^\* welcome/);
  assertEquals(
    await room.console.waitFor(/^</),
    "<second> typed while waiting",
  );
  room.server.operatorSays("your turn");
  assertEquals(await second.lines.waitFor(/^</), "<server> your turn");
});

Deno.test("operator console talks to the room, lists and kicks clients", async () => {
  await using room = startServer({ operatorName: "teacher" });
  await using amey = await TestClient.join(room.port, "amey");
  await using karan = await TestClient.join(room.port, "karan");

  room.server.operatorSays("welcome, class");
  assertEquals(await amey.lines.waitFor(/^</), "<teacher> welcome, class");
  assertEquals(await karan.lines.waitFor(/^</), "<teacher> welcome, class");
  room.server.operatorSays("/who");
  assertEquals(
    await room.console.waitFor(/online/),
    "* online (3): amey, karan, teacher (operator)",
  );
  room.server.operatorSays("/kick KARAN");
  assertEquals(
    await karan.lines.waitFor(/kicked/),
    "* you were kicked by the operator",
  );
  await karan.closedByServer();
  assertEquals(await amey.lines.waitFor(/left/), "* karan left (kicked)");
  room.server.operatorSays("/kick nobody");
  assertEquals(await room.console.waitFor(/^!/), '! no one named "nobody"');
  room.server.operatorSays("/bogus");
  assertMatch(await room.console.waitFor(/^!/), /unknown command "\/bogus"/);
});

Deno.test("server stop tells every client, closes them, and finishes", async () => {
  await using room = startServer();
  await using amey = await TestClient.join(room.port, "amey");
  await using karan = await TestClient.join(room.port, "karan");

  await room.stop();
  for (const client of [amey, karan]) {
    assertEquals(
      await client.lines.waitFor(/shutting/),
      "* server shutting down",
    );
    await client.closedByServer();
  }
  await withTimeout(room.server.finished, WAIT_MS, "the accept loop to end");
  await assertRefused(room.port);
});

async function assertRefused(port: number): Promise<void> {
  try {
    const conn = await withTimeout(
      Deno.connect({ hostname: "127.0.0.1", port }),
      WAIT_MS,
      `a connection to 127.0.0.1:${port} (or its refusal)`,
    );
    conn.close();
  } catch (error) {
    assert(error instanceof Deno.errors.ConnectionRefused);
    return;
  }
  throw new Error("the server still accepts connections");
}

Deno.test("a room bigger than the announce limit stops announcing joins and leaves", async () => {
  await using room = startServer({ announceLimit: 2 });
  await using amey = await TestClient.join(room.port, "amey");
  await using _karan = await TestClient.join(room.port, "karan");
  assertEquals(await amey.next(), "* guest-2 joined");
  assertEquals(await amey.next(), "* guest-2 is now known as karan");
  await using _third = await TestClient.join(room.port);
  await using fourth = await TestClient.join(room.port);
  fourth.close();
  await room.console.waitFor(/guest-4 left \(closed\)/);
  // The joins and the leave were logged, not announced: amey's next line
  // answers its /who.
  await amey.send("/who");
  assertEquals(
    await amey.next(),
    "* online (4): amey, karan, guest-3, server (operator)",
  );
  assertEquals(
    room.console.all.filter((line) => / guest-[34] (joined|left)/.test(line))
      .map((line) => line.replace(/^\d\d:\d\d:\d\d /, "")),
    ["guest-3 joined", "guest-4 joined", "guest-4 left (closed)"],
    "the log still shows every join and leave",
  );
});

Deno.test({
  name:
    "the leave that brings a big room back to the announce limit is not announced, as its join was not",
  async fn() {
    await using room = startServer({ announceLimit: 2 });
    await using amey = await TestClient.join(room.port, "amey");
    await using _karan = await TestClient.join(room.port, "karan");
    assertEquals(await amey.next(), "* guest-2 joined");
    assertEquals(await amey.next(), "* guest-2 is now known as karan");
    await using third = await TestClient.join(room.port);
    third.close();
    await room.console.waitFor(/guest-3 left \(closed\)/);
    await amey.send("/who");
    assertEquals(
      await amey.next(),
      "* online (3): amey, karan, server (operator)",
    );
  },
});

Deno.test("in a room bigger than the announce limit, the welcome counts the others and points to /who", async () => {
  await using room = startServer({ announceLimit: 2 });
  await using _amey = await TestClient.join(room.port, "amey");
  await using _karan = await TestClient.join(room.port, "karan");
  await using third = await TestClient.connect(room.port);
  assertMatch(await third.next(), /^\* welcome/);
  assertEquals(
    await third.next(),
    "* online: 2 others and server (operator); /who lists them",
  );
  assertMatch(await third.next(), /^\* you are guest-3:/);
  await third.send("/who");
  assertEquals(
    await third.lines.waitFor(/^\* online/),
    "* online (4): amey, karan, guest-3, server (operator)",
  );
});

Deno.test("an iterative server that stops does not say it waits for the next client", async () => {
  await using room = startServer({ iterative: true });
  await using amey = await TestClient.join(room.port, "amey");
  await room.stop();
  await amey.closedByServer();
  const shutdown = room.console.all.findIndex((line) =>
    /shutting down/.test(line)
  );
  assert(shutdown >= 0);
  assertEquals(
    room.console.all.slice(shutdown).filter((line) =>
      /waiting for the next/.test(line)
    ),
    [],
  );
});

Deno.test("server stop tells a client that has not joined yet, too", async () => {
  await using room = startServer({ nameWaitMs: 10_000 });
  await using waiting = await TestClient.connect(room.port);
  await room.console.waitFor(/connection from/);
  await room.stop();
  assertEquals(await waiting.next(), "* server shutting down");
  await waiting.closedByServer();
});
