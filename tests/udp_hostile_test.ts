/**
 * The UDP scripts under hostile peers: a stranger that tries to make the
 * chat a reflector, a peer that packs hundreds of lines into a datagram,
 * and, against udp_client.ts, servers that forge, oversize or poison their
 * replies, or lose a welcome.
 * @module
 */

import { assert, assertEquals, assertMatch } from "@std/assert";
import {
  LineQueue,
  Spawned,
  startUdpServer,
  UdpPeer,
  WAIT_MS,
} from "./helpers.ts";

const WELCOME =
  "* welcome to socklab chat, a UDP group chat: each datagram you send goes to everyone";

/** Padded with spaces, as udp_client.ts pads its /join: room for a reply. */
const padded = (text: string, size = 1200) => text.padEnd(size);

/** The bytes a datagram held (UdpPeer removes its final "\n"). */
const sizeOf = (datagram: string) =>
  new TextEncoder().encode(datagram).length + 1;

/** Joins the chat as `name` and waits for the last line of the welcome. */
async function join(peer: UdpPeer, name: string, size?: number) {
  await peer.send(padded(`/join ${name}`, size));
  await peer.datagrams.waitFor(/^\* you are /);
}

/** The exit code, within `ms`; a process still running then is killed. */
async function exitCode(child: Spawned, ms = WAIT_MS): Promise<number> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`the process did not exit within ${ms} ms`));
    }, ms);
  });
  try {
    return (await Promise.race([child.status(), late])).code;
  } finally {
    clearTimeout(timer);
  }
}

/**
 * A server we write by hand, to send udp_client.ts what no real server
 * would: each datagram it gets goes to `requests` (its final "\n" removed,
 * and `sizes` keeps its length), and `reply` answers the last sender.
 */
class FakeServer {
  readonly requests = new LineQueue();
  readonly sizes: number[] = [];
  readonly socket: Deno.DatagramConn;
  client?: Deno.NetAddr;
  readonly #loop: Promise<void>;

  constructor(hostname = "127.0.0.1") {
    this.socket = Deno.listenDatagram({ hostname, port: 0, transport: "udp" });
    this.#loop = this.#receive();
  }

  get port(): number {
    return (this.socket.addr as Deno.NetAddr).port;
  }

  /** Sends text or bytes to the client, from `socket` (this server's). */
  async reply(message: string | Uint8Array, socket = this.socket) {
    const bytes = typeof message === "string"
      ? new TextEncoder().encode(message)
      : message;
    await socket.send(bytes, this.client!);
  }

  async #receive(): Promise<void> {
    try {
      while (true) {
        const [data, from] = await this.socket.receive();
        this.client = from as Deno.NetAddr;
        this.sizes.push(data.length);
        this.requests.push(new TextDecoder().decode(data).replace(/\n$/, ""));
      }
    } catch {
      // Closed.
    }
    this.requests.end();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    this.socket.close();
    await this.#loop;
  }
}

/** Runs udp_client.ts against HOST:port, with input piped from the test. */
function spawnClient(host: string, port: number, args: string[]): Spawned {
  const where = [host, "--port", String(port)];
  return Spawned.script("udp_client.ts", [...where, ...args], {
    stdin: "piped",
  });
}

/** A UDP socket bound to `hostname`, or undefined where it cannot be. */
function bindOrSkip(hostname: string, port = 0): Deno.DatagramConn | undefined {
  try {
    return Deno.listenDatagram({ hostname, port, transport: "udp" });
  } catch {
    console.log(`skipping the part on ${hostname}: it cannot be bound here`);
    return undefined;
  }
}

// ---------------------------------------------------------------------------
// udp_server.ts: amplification and the line rate limit
// ---------------------------------------------------------------------------

Deno.test("UDP chat sends a stranger's datagram of 200 /help lines back no more bytes than it held", async () => {
  // No rate limit: the rule alone must hold (with it, 40 lines would pass).
  await using chat = startUdpServer({ rateLimit: 0 });
  await using amey = new UdpPeer(chat.port);
  await join(amey, "amey");
  await using stranger = new UdpPeer(chat.port);

  const attack = "/help\n".repeat(200); // 1200 bytes, 9 help lines each
  await stranger.send(attack);
  // The first /help joined it as a guest: what it gets now is not held.
  await stranger.send("/ping");
  let total = 0;
  for (let reply; (reply = await stranger.datagrams.next()) !== "* pong";) {
    total += sizeOf(reply);
    assert(total <= attack.length, `${total} bytes for ${attack.length}`);
  }
  assertEquals(stranger.datagrams.all[0], WELCOME, "what fits goes, in order");
  assertEquals(await amey.datagrams.next(), "* guest-1 joined");
});

Deno.test("UDP chat answers a stranger's tiny datagrams with nothing bigger: errors, pong and the rate limit's warning are held back", async (t) => {
  await t.step("not UTF-8 (1 byte) and /ping (5 bytes)", async () => {
    await using chat = startUdpServer();
    await using stranger = new UdpPeer(chat.port);
    await stranger.send(new Uint8Array([0xff])); // the error has 35 bytes
    await chat.log.waitFor(/is not UTF-8 text$/);
    await stranger.send("/ping"); // "* pong\n" has 7
    await stranger.send(padded("/ping"));
    assertEquals(await stranger.datagrams.next(), "* pong");
    assertEquals(stranger.datagrams.all, ["* pong"], "one pong: the padded");
  });
  await t.step("over the rate limit with empty datagrams", async () => {
    await using chat = startUdpServer({ rateLimit: 1, burst: 1, trace: true });
    await using stranger = new UdpPeer(chat.port);
    const at = `127.0.0.1:${stranger.port}`;
    await stranger.send(""); // takes the one token
    await stranger.send(""); // over: the 63-byte warning is held back
    await chat.log.waitFor(/is over the rate limit: lines dropped$/);
    await chat.log.waitFor(new RegExp(`held back \\d+ bytes for ${at}$`));
    assert(!chat.log.all.some((line) => line.includes(`sendto ${at}`)));
  });
});

Deno.test("UDP chat's rate limit counts lines: one datagram of 30 lines from a joined peer relays at most the burst", async () => {
  await using chat = startUdpServer({ rateLimit: 10, burst: 10 });
  await using amey = new UdpPeer(chat.port);
  await using karan = new UdpPeer(chat.port);
  await using lina = new UdpPeer(chat.port);
  await join(amey, "amey");
  await join(karan, "karan");
  await join(lina, "lina");

  const lines = Array.from({ length: 30 }, (_, i) => `line ${i}`);
  await amey.send(lines.join("\n") + "\n");
  assertEquals(
    await amey.datagrams.waitFor(/^! /),
    "! slow down: at most 10 lines a second; the rest are dropped",
  );
  // Lina's line comes after all that amey's datagram let through.
  await lina.send("end");
  await karan.datagrams.waitFor("<lina> end");
  const relayed = karan.datagrams.all.filter((line) =>
    line.startsWith("<amey>")
  );
  assert(relayed.length >= 1 && relayed.length <= 10, `${relayed.length}`);
  assertEquals(
    relayed,
    lines.slice(0, relayed.length).map((l) => `<amey> ${l}`),
  );
});

Deno.test("UDP chat: /join alone joins as a guest", async () => {
  await using chat = startUdpServer();
  await using peer = new UdpPeer(chat.port);
  assertEquals(await peer.ask(padded("/join")), WELCOME);
  assertMatch(
    await peer.datagrams.waitFor(/^\* you are /),
    /^\* you are guest-1: pick a name with \/nick NAME/,
  );
});

// ---------------------------------------------------------------------------
// udp_client.ts against hostile and lossy servers
// ---------------------------------------------------------------------------

Deno.test("udp_client.ts takes replies only from the server's exact address: forged answers from another host or port are ignored", async () => {
  await using server = new FakeServer();
  await using client = spawnClient("127.0.0.1", server.port, [
    "--service",
    "month",
    "3",
    "--trace",
    "--timeout",
    "60000", // no retry while the test runs
  ]);
  assertEquals(await server.requests.next(), "3");

  // The same port on another host: a port check alone would take it.
  const otherHost = bindOrSkip("127.0.0.2", server.port);
  const otherPort = bindOrSkip("127.0.0.1")!;
  try {
    for (const forger of [otherHost, otherPort]) {
      if (!forger) continue;
      await server.reply("3: Forged\n", forger);
      const { hostname, port } = forger.addr as Deno.NetAddr;
      const ignored = `ignored: ${hostname}:${port} is not the server`;
      await client.stderr.waitFor(ignored);
    }
  } finally {
    otherHost?.close();
    otherPort.close();
  }
  await server.reply("3: March\n");
  assertEquals(await exitCode(client), 0);
  assertEquals(client.stdout.all, ["March"]);
});

Deno.test("udp_client.ts says in one line that a reply was too big to take, and goes on without waiting for it", async () => {
  const probe = bindOrSkip("::1");
  if (!probe) return; // only IPv6 carries a datagram over 65,507 bytes
  probe.close();
  await using server = new FakeServer("::1");
  await using client = spawnClient("::1", server.port, [
    "--service",
    "month",
    "--timeout",
    "60000", // a wait for the cut reply would outlast the test
  ]);
  await client.type("3");
  assertEquals(await server.requests.next(), "3");
  const huge = new TextEncoder().encode("3: " + "x".repeat(65_523) + "\n");
  await server.reply(huge); // 65,527 bytes: the most UDP over IPv6 carries
  await client.stdout.waitFor("! a reply over 65507 bytes came: dropped");

  await client.type("4");
  assertEquals(await server.requests.next(), "4", "no retry of 3");
  await server.reply("4: April\n");
  assertEquals(await client.stdout.next(), "4: April");
  await client.type("0");
  assertEquals(await server.requests.next(), "0");
  await server.reply("bye\n");
  assertEquals(await exitCode(client), 0);
  assertEquals(client.stdout.all, [
    "! a reply over 65507 bytes came: dropped",
    "4: April",
    "bye",
  ]);
});

// deno-lint-ignore no-control-regex -- finding control bytes is the point
const CONTROL = /[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]/;

Deno.test("udp_client.ts prints a server's escape sequences and control characters cleaned", async (t) => {
  const poison = "\x1b[2J\x1b[1;1H\x1b]0;owned\x07\x00\x08\u009b\u202e";
  await t.step("month: the answer", async () => {
    await using server = new FakeServer();
    await using client = spawnClient("127.0.0.1", server.port, [
      "--service",
      "month",
      "3",
    ]);
    assertEquals(await server.requests.next(), "3");
    await server.reply(`3: ${poison}Mar${poison}ch\n`);
    assertEquals(await exitCode(client), 0);
    assertEquals(client.stdout.all, ["March"]);
  });
  await t.step("chat: the welcome and a message", async () => {
    await using server = new FakeServer();
    await using client = spawnClient("127.0.0.1", server.port, [
      "--name",
      "amey",
    ]);
    assertEquals((await server.requests.next()).trimEnd(), "/join amey");
    await server.reply(`* welcome to socklab chat, ${poison}a fake\n`);
    await server.reply(`<eve> ${poison}\x1b[31mred\x1b[0m text\n`);
    await client.stdout.waitFor("<eve> red text");
    await client.endInput();
    assertEquals(await server.requests.next(), "/leave");
    await server.reply("* bye\n");
    assertEquals(await exitCode(client), 0);
    assertEquals(client.stdout.all, [
      "* welcome to socklab chat, a fake",
      "<eve> red text",
      "* bye",
    ]);
    assert(!client.stdout.all.some((line) => CONTROL.test(line)));
  });
});

Deno.test("udp_client.ts joins when its welcome is lost and the /join sent again is told it is in already", async () => {
  await using server = new FakeServer();
  await using client = spawnClient("127.0.0.1", server.port, [
    "--name",
    "amey",
    "--timeout",
    "200",
  ]);
  // The first /join is "lost": no answer. It comes again, padded.
  assertEquals((await server.requests.next()).trimEnd(), "/join amey");
  assertEquals((await server.requests.next()).trimEnd(), "/join amey");
  assertEquals(server.sizes, [1200, 1200], "padded: room for the welcome");
  await server.reply("! you already joined as amey (/nick NAME changes it)\n");
  await client.type("hi");
  assertEquals(await server.requests.next(), "hi");
  assertEquals(server.sizes.at(-1), 3, "joined: no more padding");
  await client.endInput();
  assertEquals(await server.requests.next(), "/leave");
  await server.reply("* bye\n");
  assertEquals(await exitCode(client), 0);
});

Deno.test("udp_client.ts joins a server whose --max-datagram is below its padding, and a guest sees its welcome", async () => {
  await using chat = startUdpServer({ maxDatagram: 300 });
  await using amey = new UdpPeer(chat.port);
  await join(amey, "amey", 300);
  await using bot = spawnClient("127.0.0.1", chat.port, ["--name", "bot"]);
  assertEquals(await amey.datagrams.next(), "* bot joined");
  await using guest = spawnClient("127.0.0.1", chat.port, []);
  assertEquals(await amey.datagrams.next(), "* guest-1 joined");
  assertMatch(await guest.stdout.waitFor(/^\* you are/), /^\* you are guest-1/);
  await bot.endInput();
  await guest.endInput();
  assertEquals(await exitCode(bot), 0);
  assertEquals(await exitCode(guest), 0);
  assertEquals(bot.stdout.all[0], WELCOME);
});

Deno.test("udp_client.ts knows its server's replies however the IPv6 address is spelled", async () => {
  const probe = bindOrSkip("::1");
  if (!probe) return;
  probe.close();
  await using server = new FakeServer("::1");
  await using client = spawnClient("0:0:0:0:0:0:0:01", server.port, [
    "--service",
    "month",
    "3",
  ]);
  assertEquals(await server.requests.next(), "3");
  await server.reply("3: March\n"); // it comes from "::1"
  assertEquals(await exitCode(client), 0);
  assertEquals(client.stdout.all, ["March"]);
});

Deno.test("udp_client.ts HOST:PORT is a usage error that says how to give the port", async () => {
  await using client = Spawned.script("udp_client.ts", ["127.0.0.1:9999"]);
  assertEquals(await exitCode(client), 2);
  assertEquals(
    client.stderr.all[0],
    'Invalid host "127.0.0.1:9999": give the port with --port: use "udp_client.ts 127.0.0.1 --port 9999"',
  );
});
