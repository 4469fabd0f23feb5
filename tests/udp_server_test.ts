/**
 * udp_server.ts driven in-process over real UDP sockets on 127.0.0.1.
 * @module
 */

import {
  assert,
  assertEquals,
  assertMatch,
  assertNotEquals,
} from "@std/assert";
import { MONTH_ERROR, MONTH_INTRO, MONTHS } from "../udp_server.ts";
import { startUdpServer, UdpPeer, WAIT_MS } from "./helpers.ts";

/**
 * A chat datagram padded with spaces, as udp_client.ts pads its /join: an
 * address that has not joined gets back no more bytes than it sent.
 */
const padded = (text: string) => text.padEnd(1200);

Deno.test("month service answers 1 to 12 with their names and 0 with bye", async () => {
  await using service = startUdpServer({ service: "month" });
  await using peer = new UdpPeer(service.port);
  for (let month = 1; month <= 12; month++) {
    assertEquals(
      await peer.ask(`${month}\n`),
      `${month}: ${MONTHS[month - 1]}`,
    );
  }
  assertEquals(await peer.ask("0"), "bye");
  assertEquals(await peer.ask("007"), "7: July");
});

Deno.test("month service answers anything else with an error, and a first greeting with an intro", async (t) => {
  await using service = startUdpServer({ service: "month" });
  await using greeter = new UdpPeer(service.port);
  assertEquals(
    await greeter.ask("Hello, I just want to use your service"),
    MONTH_INTRO,
  );
  assertEquals(await greeter.ask("abc"), MONTH_ERROR, "the intro comes once");

  await using peer = new UdpPeer(service.port);
  for (const bad of ["13", "-1", "2.5", "", " ", "1e1", "9".repeat(400)]) {
    await t.step(`"${bad.slice(0, 12)}"`, async () => {
      assertEquals(await peer.ask(bad), MONTH_ERROR);
    });
  }
  assertEquals(await peer.ask("3"), "3: March", "still answering");
});

Deno.test("every service answers a datagram that is not UTF-8 or too long with an error", async () => {
  for (const service of ["month", "echo", "chat"] as const) {
    await using server = startUdpServer({ service, maxDatagram: 100 });
    await using peer = new UdpPeer(server.port);
    assertEquals(
      // Big enough for the error: the chat answers a stranger with no more.
      await peer.ask(new Uint8Array([0x33, 0xff, 0xfe, ...Array(40).fill(32)])),
      "! datagram is not valid UTF-8 text",
      service,
    );
    assertEquals(
      await peer.ask("x".repeat(101)),
      "! datagram too long: 100 bytes at most",
      service,
    );
    assertNotEquals(
      await peer.ask("x".repeat(100)),
      "! datagram too long: 100 bytes at most",
    );
  }
});

Deno.test("echo service sends every datagram back unchanged", async () => {
  await using service = startUdpServer({ service: "echo" });
  await using peer = new UdpPeer(service.port);
  for (
    const text of [
      "hello",
      "two\nlines",
      "tab\there",
      "नमस्ते 你好 👋",
      "x".repeat(1200),
    ]
  ) {
    assertEquals(await peer.ask(text), text);
  }
});

const WELCOME =
  "* welcome to socklab chat, a UDP group chat: each datagram you send goes to everyone";

/** Sends /join NAME and takes the room's three welcome lines. */
async function join(peer: UdpPeer, name: string): Promise<string[]> {
  await peer.send(padded(`/join ${name}`));
  return [
    await peer.datagrams.next(),
    await peer.datagrams.next(),
    await peer.datagrams.next(),
  ];
}

Deno.test("chat relays each datagram to every other peer as <NAME> text", async () => {
  await using chat = startUdpServer();
  await using amey = new UdpPeer(chat.port);
  await using karan = new UdpPeer(chat.port);

  assertEquals(await join(amey, "amey"), [
    WELCOME,
    "* online: no one else",
    "* you are amey; /help lists the commands",
  ]);
  assertEquals((await join(karan, "Karan"))[1], "* online: amey");
  assertEquals(await amey.datagrams.next(), "* Karan joined");

  await amey.send("hello Karan\n");
  assertEquals(await karan.datagrams.next(), "<amey> hello Karan");
  // The sender gets no copy: the next datagram it gets answers its /ping.
  assertEquals(await amey.ask("/ping"), "* pong");
  assertEquals(await amey.ask("/who"), "* online (2): amey, Karan");
  assertEquals(
    await amey.ask("/join again"),
    "! you already joined as amey (/nick NAME changes it)",
  );
});

Deno.test("chat hands each line of a datagram to the room: /msg and /me work over UDP", async () => {
  await using chat = startUdpServer();
  await using amey = new UdpPeer(chat.port);
  await using karan = new UdpPeer(chat.port);
  await using lina = new UdpPeer(chat.port);
  await join(amey, "amey");
  await join(karan, "karan");
  await join(lina, "lina");
  await amey.datagrams.waitFor("* lina joined");
  await karan.datagrams.waitFor("* lina joined");

  await amey.send("/msg karan just you\n/me waves\n");
  assertEquals(await karan.datagrams.next(), "[private] <amey> just you");
  assertEquals(await karan.datagrams.next(), "* amey waves");
  assertEquals(await lina.datagrams.next(), "* amey waves", "no private line");
  assertEquals(
    await amey.ask("/msg nobody hi"),
    '! no one named "nobody" is online',
  );
});

Deno.test("chat joins a peer that sends text without /join as guest-N", async () => {
  await using chat = startUdpServer();
  await using amey = new UdpPeer(chat.port);
  await join(amey, "amey");
  await using stranger = new UdpPeer(chat.port);

  await stranger.send(padded("hi all"));
  assertEquals(await stranger.datagrams.next(), WELCOME);
  assertEquals(await stranger.datagrams.next(), "* online: amey");
  assertEquals(
    await stranger.datagrams.next(),
    "* you are guest-1: pick a name with /nick NAME; /help lists the commands",
  );
  assertEquals(await amey.datagrams.next(), "* guest-1 joined");
  assertEquals(await amey.datagrams.next(), "<guest-1> hi all");
  await stranger.send("/nick lina");
  assertEquals(await amey.datagrams.next(), "* guest-1 is now known as lina");
});

Deno.test("chat joins a stranger whose first datagram is /nick NAME under that name", async () => {
  await using chat = startUdpServer();
  await using amey = new UdpPeer(chat.port);
  await join(amey, "amey");
  await using karan = new UdpPeer(chat.port);
  assertEquals(await karan.ask(padded("/nick karan")), WELCOME);
  await karan.datagrams.waitFor("* you are karan; /help lists the commands");
  assertEquals(await amey.datagrams.next(), "* karan joined");
});

Deno.test("chat names follow the TCP chat's rules", async () => {
  await using chat = startUdpServer();
  await using amey = new UdpPeer(chat.port);
  await using other = new UdpPeer(chat.port);
  await join(amey, "AMEY");

  assertEquals(await other.ask(padded("/join amey")), '! name "amey" is taken');
  assertEquals(
    await other.ask(padded("/join bad name")),
    '! name "bad name" is not valid: use letters, digits, "-", "_" or "."',
  );
  assertEquals(
    await other.ask(padded("/join " + "n".repeat(25))),
    `! name "${"n".repeat(24)}..." is too long (24 characters at most)`,
  );
  assertEquals(await other.ask("/leave"), "* bye", "leaving before joining");
  assertEquals(await other.ask(padded("/ping")), "* pong");
  assertEquals(
    await amey.ask("/who"),
    "* online (1): AMEY",
    "other never joined",
  );
  assertEquals(
    await amey.ask("/frobnicate"),
    '! unknown command "/frobnicate": /help lists the commands',
  );
  assertEquals(await amey.ask("/help"), "* commands:");
  const help = [];
  for (let i = 0; i < 8; i++) help.push(await amey.datagrams.next());
  assertEquals(help.slice(-2), [
    "*   /join NAME  join the chat",
    "*   /ping            check that the server hears you (* pong)",
  ]);
});

Deno.test("chat with a password: /join NAME PASSWORD, and text before it is refused", async () => {
  await using chat = startUdpServer({ password: "secret" });
  await using peer = new UdpPeer(chat.port);
  const joinFirst = "! this chat needs a password: /join NAME PASSWORD";
  assertEquals(await peer.ask(padded("hello")), joinFirst);
  assertEquals(await peer.ask(padded("/join")), joinFirst);
  assertEquals(await peer.ask(padded("/join amey")), joinFirst);
  assertEquals(await peer.ask(padded("/join amey wrong")), "! wrong password");
  await chat.log.waitFor(/127\.0\.0\.1:\d+ sent a wrong password$/);
  assertEquals((await join(peer, "amey secret"))[0], WELCOME);
  assert(!chat.log.all.some((line) => line.includes("secret")));
});

Deno.test("chat /leave and /quit say bye and tell the others", async () => {
  await using chat = startUdpServer();
  await using amey = new UdpPeer(chat.port);
  await using karan = new UdpPeer(chat.port);
  await using lina = new UdpPeer(chat.port);
  await join(amey, "amey");
  await join(karan, "karan");
  await join(lina, "lina");
  await amey.datagrams.waitFor("* lina joined");
  await karan.datagrams.waitFor("* lina joined");

  assertEquals(await karan.ask("/leave"), "* bye");
  assertEquals(await amey.datagrams.next(), "* karan left");
  assertEquals(await lina.datagrams.waitFor(/karan/), "* karan left");
  assertEquals(await lina.ask("/quit"), "* bye");
  assertEquals(await amey.datagrams.next(), "* lina left");
  assertEquals(await amey.ask("/who"), "* online (1): amey");
  await chat.log.waitFor(/karan left \(quit\)$/);
});

Deno.test("chat drops a peer silent for longer than the peer timeout", async () => {
  await using chat = startUdpServer({ peerTimeoutMs: 300, rateLimit: 0 });
  await using silent = new UdpPeer(chat.port);
  await using talker = new UdpPeer(chat.port);
  await join(silent, "silent");
  await join(talker, "talker");

  // The talker keeps itself alive with /who until the notice comes.
  let notice;
  for (
    const deadline = Date.now() + WAIT_MS;
    !notice && Date.now() < deadline;
  ) {
    const reply = await talker.ask("/who");
    if (!reply.startsWith("* online (")) notice = reply;
  }
  assertEquals(notice, "* silent left (timed out)");
  assertEquals(
    await talker.datagrams.next(),
    "* online (1): talker",
    "the last /who's answer",
  );
  await chat.log.waitFor(/silent left \(timed out\)$/);
});

Deno.test("chat goes on after a send to a peer that has gone (ICMP port unreachable)", async () => {
  await using chat = startUdpServer();
  await using amey = new UdpPeer(chat.port);
  await join(amey, "amey");
  await using gone = new UdpPeer(chat.port);
  await join(gone, "gone");
  await amey.datagrams.next(); // * gone joined
  await gone[Symbol.asyncDispose]();

  for (let i = 0; i < 3; i++) await amey.send(`anyone there? ${i}`);
  assertEquals(await amey.ask("/ping"), "* pong");
  await using late = new UdpPeer(chat.port);
  assertMatch(await late.ask(padded("/join late")), /^\* welcome/);
});

Deno.test("--drop drops incoming datagrams and logs each drop", async () => {
  await using service = startUdpServer({ service: "echo", dropRate: 1 });
  await using peer = new UdpPeer(service.port);
  await peer.send("lost");
  assertMatch(
    await service.log.waitFor(/dropped/),
    /dropped a datagram from 127\.0\.0\.1:\d+ \(--drop\)$/,
  );
  assertEquals(peer.datagrams.all, []);
});

Deno.test("--delay delays each reply and logs it; replies can overtake each other", async () => {
  await using service = startUdpServer({
    service: "echo",
    maxDelayMs: 200,
    seed: 7,
  });
  await using peer = new UdpPeer(service.port);
  const sent = Array.from({ length: 20 }, (_, i) => `n${i}`);
  for (const text of sent) await peer.send(text);
  const received = [];
  for (let i = 0; i < sent.length; i++) {
    received.push(await peer.datagrams.next());
  }
  assertEquals([...received].sort(), [...sent].sort(), "every reply arrives");
  assertNotEquals(
    received,
    sent,
    "with these delays, some replies overtake others",
  );
  assertMatch(
    service.log.all[0],
    /delaying a reply to 127\.0\.0\.1:\d+ by \d+ ms \(--delay\)$/,
  );
});

Deno.test("--seed makes drops repeat exactly", async () => {
  // The month service logs each datagram it gets: asked, or dropped.
  const fates = async () => {
    await using service = startUdpServer({
      service: "month",
      dropRate: 0.5,
      seed: 42,
    });
    await using peer = new UdpPeer(service.port);
    const pattern = [];
    for (let i = 1; i <= 20; i++) {
      await peer.send(String(i % 12 + 1));
      const line = await service.log.waitFor(/dropped|asked/);
      pattern.push(line.includes("dropped") ? "dropped" : "answered");
    }
    return pattern;
  };
  const first = await fates();
  assertEquals(await fates(), first);
  assert(first.includes("dropped") && first.includes("answered"));
});

Deno.test("--trace logs each socket step: bind, recvfrom, sendto, close", async () => {
  await using traced = startUdpServer({ service: "echo", trace: true });
  await using peer = new UdpPeer(traced.port);
  assertEquals(await peer.ask("hi"), "hi");
  const at = `127\\.0\\.0\\.1:${peer.port}`;
  assertMatch(traced.log.all[0], /^\d\d:\d\d:\d\d bind 127\.0\.0\.1:\d+$/);
  await traced.log.waitFor(new RegExp(` recvfrom ${at}: 2 bytes$`));
  await traced.log.waitFor(new RegExp(` sendto ${at}: 2 bytes$`));
  await traced.stop();
  await traced.log.waitFor(/ close$/);

  await using quiet = startUdpServer({ service: "echo" });
  await using other = new UdpPeer(quiet.port);
  assertEquals(await other.ask("hi"), "hi");
  assertEquals(
    quiet.log.all.filter((line) => /bind|recvfrom|sendto/.test(line)),
    [],
  );
});
