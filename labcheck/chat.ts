/**
 * labcheck's checks of a TCP chat server: it relays each line to the
 * others, whole, however TCP cuts it up, and no client can stop or stall
 * it. With `--iterative`, the server is expected to serve one client at a
 * time, and the checks become "serves clients in turn".
 * @module
 */

import { cutInCharacter, type Reading, ResettingPeer } from "./peer.ts";
import { TcpPeer, token, UTF8_TEXT } from "./peer.ts";
import { LESSONS, quote, type Report } from "./report.ts";

const PROTOCOL = "The protocol";
const CONCURRENT = "Iterative and concurrent servers: what to observe";
const HOSTILE = "Hostile peers: what protects each promise";
/** How long a relayed line may take to arrive. */
const RELAY_MS = 3000;
/**
 * The slow-reader check: what the others send while one does not read.
 * A blocking server on Linux stalls after about 3.9 MB (the kernel's
 * buffers for the slow reader), so 6 MiB shows it. More senders at once
 * would fill every reader's queue in a burst, and a server that drops
 * readers that fall 1 MiB behind (socklab's, the lab's good answer)
 * would drop them all.
 */
const FLOOD_SENDERS = 8;
const FLOOD_LINE_BYTES = 4000;
const FLOOD_BYTES = 6 * 1024 * 1024;
const FLOOD_WINDOW = 128; // lines sent that `b` has not heard yet, at most
/** ... how long the others may hear nothing before it is a stall, and
 * how long the whole flood may take. */
const STALL_MS = 5000;
const FLOOD_MS = 60_000;

type Target = { host: string; port: number };

/** The chat checks, each a line in `report`. */
export async function checkChat(
  report: Report,
  target: Target,
  iterative: boolean,
): Promise<void> {
  const peers: TcpPeer[] = [];
  // A client: connects, and says a name (servers that ask take it, others
  // relay it as a first message).
  const join = async (name: string, reading: Reading = "lines") => {
    const peer = await TcpPeer.connect(target.host, target.port, { reading });
    peers.push(peer);
    await peer.write(`${name}\n`);
    return peer;
  };
  try {
    const chat = new ChatChecks(report, target, join);
    await (iterative ? chat.inTurn() : chat.all());
  } catch (error) {
    if (peers.length === 0) {
      report.cannotConnect(`${target.host}:${target.port}`, error);
    } else {
      report.fail(
        "later clients",
        `client ${peers.length + 1} could not connect (${
          (error as Error).message
        }) while ${peers.length} were connected`,
        "accept every client, with a listen backlog of more than 1 (an iterative server keeps the others waiting: check it with --iterative)",
        CONCURRENT,
      );
      report.skip("the other checks", "a client could not connect");
    }
  } finally {
    for (const peer of peers) peer.close();
  }
}

type Join = (name: string, reading?: Reading) => Promise<TcpPeer>;

/** 4 KiB of random bytes, with line ends, a NUL and invalid UTF-8 in them. */
function randomBytes(): Uint8Array {
  const bytes = crypto.getRandomValues(new Uint8Array(4096));
  bytes.set([0xff, 0xfe, 0x0a, 0xc3, 0x28, 0x0a, 0x00, 0x0a], 100);
  return bytes;
}

class ChatChecks {
  constructor(
    readonly report: Report,
    readonly target: Target,
    readonly join: Join,
  ) {}

  /** Sends a new token from `from`: @returns whether all of `to` got it */
  async relays(from: TcpPeer, to: TcpPeer[], ms = RELAY_MS) {
    const sent = token();
    await from.write(`hello ${sent}\n`);
    const got = await Promise.all(to.map((peer) => peer.lines.has(sent, ms)));
    return { sent, all: got.every(Boolean), count: got.filter(Boolean).length };
  }

  /** Like `relays`, tried again: a server may take a moment to take a name. */
  async settles(from: TcpPeer, to: TcpPeer[], tries = 4) {
    let result;
    for (let i = 0; i < tries; i++) {
      result = await this.relays(from, to);
      if (result.all) break;
    }
    return result!;
  }

  /** The concurrent server's checks, in an order where one fault cannot
   * spoil the checks after it. */
  async all(): Promise<void> {
    const { report } = this;
    const [a, b, c] = [
      await this.join("lcAmey"),
      await this.join("lcKaran"),
      await this.join("lcLata"),
    ];
    report.pass("connects", "3 clients connected");
    const first = await this.settles(a, [b, c]);
    if (!first.all) {
      const closed = [a, b, c].find((peer) => !peer.open);
      const echo = a.lines.count(first.sent) > 0 && first.count === 0;
      report.fail(
        "relays",
        closed
          ? `the server closed a client's connection (${closed.endedBecause})`
          : echo
          ? "a line came back to its sender, and reached no other client: an echo server? (one that serves one client at a time: check it with --iterative)"
          : `a line from one client reached ${first.count} of the 2 others in 12 s`,
        "send each line the server receives to every other client",
        PROTOCOL,
      );
      return report.skip("the other checks", "they need a server that relays");
    }
    report.pass("relays", "a line from one client reached the others");
    if (a.lines.count(first.sent) > 0) {
      report.note("echo", "the sender got its own line back (fine, if meant)");
    }
    await this.severalAtOnce(a, b, c);
    await this.twiceInARow(a, b);
    await this.inPieces(a, b);
    await this.twoLinesInOneWrite(a, b);
    await this.splitCharacter(a, b);
    await this.longLine(a, b);
    // From here on clients leave: first, does that harm the others?
    if (!await this.vanishes(a, b, c)) {
      return this.report.skip(
        "the checks where clients leave",
        "a client that left harmed the others (see above)",
      );
    }
    await this.fifty(a, b);
    await this.survives(
      a,
      b,
      "random bytes and invalid UTF-8",
      async () => {
        const garbage = await this.join("lcGarbage");
        await garbage.write(randomBytes());
        await garbage.leaves();
      },
      "decode with errors replaced, and never let one client's bytes end the server",
    );
    await this.survives(
      a,
      b,
      "a client that left in the middle of a line",
      async () => {
        const leaver = await this.join("lcLeaver");
        await leaver.write(`unfinished ${token()}`);
        await leaver.leaves();
      },
      'a connection can end without a last "\\n": when recv() returns nothing, close that client and go on',
    );
    await c.leaves(); // fewer to relay the flood to
    await this.slowReader(a, b);
  }

  async severalAtOnce(a: TcpPeer, b: TcpPeer, c: TcpPeer): Promise<void> {
    const fromB = await this.relays(b, [a, c]);
    const fromC = await this.relays(c, [a, b]);
    if (fromB.all && fromC.all) {
      return this.report.pass("several at once", "3 clients all talk at once");
    }
    this.report.fail(
      "several at once",
      "with 3 clients connected, a line from the second or third reached not all the others",
      "serve each client in its own thread or task, so all are served at once (or check with --iterative)",
      CONCURRENT,
    );
  }

  async twiceInARow(a: TcpPeer, b: TcpPeer): Promise<void> {
    const [one, two] = [token(), token()];
    await a.write(`first ${one}\n`);
    await b.lines.has(one, RELAY_MS);
    await a.write(`second ${two}\n`);
    if (await b.lines.has(two, RELAY_MS)) {
      return this.report.pass(
        "twice in a row",
        "a client can send twice in a row",
      );
    }
    this.report.fail(
      "twice in a row",
      "a client's second line in a row reached no one",
      "never wait for another client's turn: read from each client on its own",
      CONCURRENT,
    );
  }

  async inPieces(a: TcpPeer, b: TcpPeer): Promise<void> {
    const [start, end] = [token(), token()];
    await a.writeInPieces([`split ${start}-`, `-${end} whole\n`]);
    const whole = () => b.lines.with(start).some((line) => line.includes(end));
    await b.lines.until(() => whole() || b.lines.count(end) > 0, RELAY_MS);
    if (whole()) {
      return this.report.pass(
        "in pieces",
        "a line written in two pieces arrived whole",
      );
    }
    const seen = b.lines.count(start) > 0 && b.lines.count(end) > 0;
    this.report.fail(
      "in pieces",
      seen
        ? "a line sent in two pieces arrived as two messages"
        : "a line sent in two pieces did not arrive",
      'TCP is a byte stream, so keep bytes until "\\n"',
      PROTOCOL,
    );
  }

  async twoLinesInOneWrite(a: TcpPeer, b: TcpPeer): Promise<void> {
    const [one, two] = [token(), token()];
    await a.write(`one ${one}\ntwo ${two}\n`);
    await b.lines.has(two, RELAY_MS);
    const [first] = b.lines.with(one);
    const [second] = b.lines.with(two);
    // Lenient about the prefix (`<name> `, `name: `, none): the same for both.
    const prefix = (line: string, text: string) =>
      line.slice(0, line.indexOf(text)).replace(/\d/g, "0");
    const same = first !== undefined && second !== undefined &&
      first !== second &&
      prefix(first, `one ${one}`) === prefix(second, `two ${two}`);
    if (same) {
      return this.report.pass(
        "two in one write",
        "two lines in one write arrived as two messages",
      );
    }
    const what = first === undefined || second === undefined
      ? "two lines sent in one write did not both arrive"
      : `two lines sent in one write arrived as one message (${
        quote(first)
      }, then ${quote(second)})`;
    this.report.fail(
      "two in one write",
      what,
      'one recv() may hold many lines: split what arrives at each "\\n"',
      PROTOCOL,
    );
  }

  async splitCharacter(a: TcpPeer, b: TcpPeer): Promise<void> {
    const sent = token();
    await a.writeInPieces(cutInCharacter(`utf8 ${sent} ${UTF8_TEXT}\n`));
    await b.lines.has(sent, RELAY_MS);
    const lines = b.lines.with(sent);
    if (lines.some((line) => line.includes(`${sent} ${UTF8_TEXT}`))) {
      return this.report.pass(
        "split character",
        "a UTF-8 character split across writes arrived intact",
      );
    }
    const alive = (await this.relays(a, [b])).all;
    const what = lines.length > 0
      ? `a UTF-8 character split across writes arrived garbled: ${
        quote(lines.join(" | "))
      }`
      : `a line with a UTF-8 character split across writes did not arrive${
        alive ? "" : ", and the server relays no more"
      }`;
    this.report.fail(
      "split character",
      what,
      LESSONS.splitCharacter,
      PROTOCOL,
    );
  }

  async longLine(a: TcpPeer, b: TcpPeer): Promise<void> {
    const [start, end] = [token(), token()];
    const line = `long ${start} ${"x".repeat(3000 - 20)} ${end}`;
    await a.write(line + "\n");
    await b.lines.until(
      () => b.lines.count(end) > 0 || b.lines.ended,
      RELAY_MS,
    );
    if (b.lines.with(start).some((got) => got.includes(line))) {
      return this.report.pass("long line", "a 3000-byte line arrived whole");
    }
    const pieces = b.lines.kept.filter((got) => /x{20}/.test(got)).length;
    this.report.fail(
      "long line",
      b.lines.count(start) > 0
        ? `a 3000-byte line did not arrive whole (${pieces} pieces)`
        : "a 3000-byte line did not arrive",
      'a line can be longer than one recv(): keep reading until "\\n"',
      PROTOCOL,
    );
  }

  async fifty(a: TcpPeer, b: TcpPeer): Promise<void> {
    const more: TcpPeer[] = [];
    for (let i = 0; i < 48; i++) more.push(await this.join(`lcGuest${i}`));
    const result = await this.settles(a, [b, ...more], 3);
    await Promise.all(more.map((peer) => peer.leaves()));
    if (result.all) {
      return this.report.pass(
        "fifty clients",
        "50 clients all received one message",
      );
    }
    this.report.fail(
      "fifty clients",
      `with 50 clients connected, ${result.count} of 49 received one message`,
      "every connected client must get each line: keep them all in one list, and serve them all at once",
      CONCURRENT,
    );
  }

  /** After `event`, a line from `a` must still reach `b`. */
  async survives(
    a: TcpPeer,
    b: TcpPeer,
    what: string,
    event: () => Promise<void>,
    lesson: string,
  ): Promise<void> {
    await event();
    const check = `survives ${what}`;
    if ((await this.settles(a, [b], 2)).all) {
      return this.report.pass(check, `survives ${what}`);
    }
    this.report.fail(
      check,
      `after ${what}, the server relayed nothing more`,
      lesson,
      HOSTILE,
    );
  }

  async slowReader(a: TcpPeer, b: TcpPeer): Promise<void> {
    const check = "slow reader";
    const slow = await this.join("lcSlow", "nothing");
    // The server has taken it in once the others hear from it.
    await this.settles(slow, [a, b], 2);
    const senders = [];
    for (let i = 0; i < FLOOD_SENDERS; i++) {
      senders.push(await this.join(`lcFlood${i}`, "bytes"));
    }
    // Each sender's lines carry its token, and its last line another.
    const [marks, ends] = [senders.map(token), senders.map(token)];
    const lines = Math.ceil(FLOOD_BYTES / FLOOD_SENDERS / FLOOD_LINE_BYTES);
    const filler = "y".repeat(FLOOD_LINE_BYTES - 30);
    let sent = 0; // flood lines sent, by all
    const heard = () =>
      marks.reduce((sum, mark) => sum + b.lines.count(mark), 0);
    // Never far ahead of what `b` has heard: a server that drops a reader
    // who falls behind (the lab's good answer) must not drop `b`.
    const caughtUp = () => sent - heard() < FLOOD_WINDOW;
    senders.forEach(async (sender, i) => {
      const piece = `${marks[i]} ${filler}\n`.repeat(16); // 16 lines
      for (let n = 0; n < lines; n += 16) {
        if (!await b.lines.until(caughtUp, STALL_MS)) return;
        sent += 16;
        if (!await sender.write(piece, STALL_MS)) return;
      }
      await sender.write(`end ${ends[i]}\n`);
    });
    // Progress: flood lines keep coming to `b` until every sender's end has.
    const done = () => ends.every((end) => b.lines.count(end) > 0);
    const deadline = performance.now() + FLOOD_MS;
    let stalled = false;
    while (!done() && !stalled && performance.now() < deadline) {
      const before = heard();
      stalled = !await b.lines.until(
        () => heard() > before || done(),
        STALL_MS,
      );
    }
    const megabytes = (heard() * FLOOD_LINE_BYTES / 1e6).toFixed(1);
    const cut = senders.filter((sender) => !sender.open).length;
    slow.close(); // lets a server that was stuck on it go on
    await Promise.all(senders.map((sender) => sender.leaves()));
    if (cut > 0) {
      const why =
        `the server disconnected ${cut} of the ${FLOOD_SENDERS} clients that sent fast (a flood limit?)`;
      return this.report.skip(check, why);
    }
    if (!done() && !stalled) {
      return this.report.skip(
        check,
        `${megabytes} MB took longer than ${FLOOD_MS / 1000} s`,
      );
    }
    if (!stalled) {
      const text = "one client that stops reading does not stall the others";
      return this.report.pass(check, text);
    }
    this.report.fail(
      check,
      `one client that stopped reading stalled the others: after ${megabytes} MB they heard nothing for ${
        STALL_MS / 1000
      } s`,
      "a blocking send to a slow reader stops everyone: give each client its own queue, and drop one that falls too far behind",
      "Limits",
    );
  }

  /** A client vanishes (its bytes unread), then one resets (a TCP RST):
   * @returns whether the others went on as before */
  async vanishes(a: TcpPeer, b: TcpPeer, c: TcpPeer): Promise<boolean> {
    const check = "vanishing client";
    for (const how of ["vanished", "reset"] as const) {
      const sent = token();
      const gone = how === "vanished"
        ? await this.join("lcGone", "nothing")
        : await ResettingPeer.connect(this.target.host, this.target.port);
      await gone.write(`lcGone\nhello ${sent}\n`);
      await b.lines.has(sent, RELAY_MS); // it is in
      // Once `b` has a's second line, the server has sent `gone` the first.
      await this.relays(a, [b]);
      await this.relays(a, [b]);
      gone.close(); // without a word, its bytes unread; or with a reset
      let heard = 0;
      for (let i = 0; i < 3 && a.open; i++) {
        if ((await this.relays(a, [b, c])).all) heard++;
      }
      if (a.open && heard === 3) continue;
      const after = `after a client ${how}`;
      const what = await this.stopped()
        ? `${after}, the server stopped: a new client cannot connect`
        : !a.open
        ? `${after}, the next sender was disconnected`
        : `${after}, ${3 - heard} of the next sender's 3 lines reached no one`;
      this.report.fail(
        check,
        what,
        "a send to, or a receive from, a client that has gone fails: catch the error, drop that client alone, and go on",
        HOSTILE,
      );
      return false; // the checks after it would meet the same fault
    }
    const text = "a client that vanishes or resets disconnects no one else";
    this.report.pass(check, text);
    return true;
  }

  /** Has the server stopped (a new client cannot connect)? */
  async stopped(): Promise<boolean> {
    try {
      (await this.join("lcProbe")).close();
      return false;
    } catch {
      return true;
    }
  }

  /** `--iterative`: one client at a time, the next when it leaves. */
  async inTurn(): Promise<void> {
    const { report } = this;
    const first = await this.join("lcFirst");
    report.pass("connects", "a client connected");
    if (!await this.served(first)) {
      report.fail(
        "serves a client",
        "a client that connected and sent a line got nothing back in 5 s (a relay sends nothing to a client alone: without --iterative, labcheck checks a concurrent server)",
        "reply to the client, or labcheck cannot see it being served",
        CONCURRENT,
      );
      return report.skip("the other checks", "they need a server that answers");
    }
    report.pass("serves a client", "a client is served");
    const second = await this.join("lcSecond");
    await second.write(`hello ${token()}\n`);
    const early = await second.lines.until(() => second.lines.bytes > 0, 1500);
    first.close();
    if (early) {
      report.fail(
        "in turn",
        "a second client was served while the first was still connected",
        "an iterative server serves one client to the end before it accepts the next (without --iterative, labcheck checks a concurrent one)",
        CONCURRENT,
      );
    } else if (await this.served(second)) {
      report.pass(
        "in turn",
        "serves clients in turn: the next once the first has gone",
      );
    } else {
      return report.fail(
        "in turn",
        "after the first client left, the next one was never served",
        "after a client leaves, go back to accept() for the next one",
        CONCURRENT,
      );
    }
    const events: [string, (peer: TcpPeer) => Promise<void>][] = [
      ["a client that vanished", (peer) => Promise.resolve(peer.close())],
      ["random bytes and invalid UTF-8", async (peer) => {
        await peer.write(randomBytes());
        peer.close();
      }],
      ["a client that left in the middle of a line", async (peer) => {
        await peer.write("unfinished");
        peer.close();
      }],
    ];
    let current = second;
    for (const [what, event] of events) {
      const next = await this.join("lcNext");
      await event(current);
      const check = `survives ${what}`;
      if (await this.served(next)) report.pass(check, `survives ${what}`);
      else {
        report.fail(
          check,
          `after ${what}, the next client was never served`,
          "one client's end, however it comes, must not end the server: close it and accept the next",
          HOSTILE,
        );
        return;
      }
      current = next;
    }
  }

  /** Has `peer` got anything from the server (after a line of its own)? */
  async served(peer: TcpPeer): Promise<boolean> {
    if (peer.lines.bytes > 0) return true;
    await peer.write(`hello ${token()}\n`);
    return await peer.lines.until(() => peer.lines.bytes > 0, 5000);
  }
}
