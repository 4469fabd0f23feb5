/**
 * labcheck's peers: a TCP connection and a UDP socket that keep what they
 * receive as lines, and a watcher for a program's output. Every wait has a
 * time limit, so a silent or dead program ends a check, never the run.
 * @module
 */

import { type Frame, LINE_TOO_LONG, LineFramer } from "../shared.ts";
import { addressText, networkReason } from "../shared.ts";
import net from "node:net";

/** The longest line a peer keeps whole; a longer one is counted, not kept. */
const MAX_LINE = 64 * 1024;
/** Lines kept for a check to look at (the oldest go first). */
const KEPT_LINES = 5000;
/** A token labcheck makes: `lc` four hex digits `x` a count (`lc3fa9x12`). */
const TOKEN = /lc[0-9a-f]{4}x\d+/g;

const run = crypto.getRandomValues(new Uint16Array(1))[0].toString(16)
  .padStart(4, "0");
let made = 0;
/** A new unique token: lines are told apart by the tokens they carry. */
export const token = () => `lc${run}x${++made}`;

/** A UTF-8 text with an emoji, which a split write cuts in two. */
export const UTF8_TEXT = "✓ नमस्ते 😀 done";
/** `line`'s bytes in two pieces, cut inside its emoji's 4 bytes. */
export function cutInCharacter(line: string): [Uint8Array, Uint8Array] {
  const bytes = new TextEncoder().encode(line);
  const cut = bytes.indexOf(0xf0) + 2;
  return [bytes.subarray(0, cut), bytes.subarray(cut)];
}

/** Settles after `ms`: for the pause that splits a write in two. */
export const pause = (ms: number) =>
  new Promise<void>((resolve) => setTimeout(resolve, ms));

/** Waits for `promise` at most `ms`; then `undefined`. */
export async function within<T>(
  promise: Promise<T>,
  ms: number,
): Promise<T | undefined> {
  let timer;
  const late = new Promise<undefined>((done) =>
    timer = setTimeout(() => done(undefined), ms)
  );
  try {
    return await Promise.race([promise, late]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Lines as they arrive, with the count of each token seen, and waits
 * that end when a condition holds, the stream ends, or the time is up.
 */
export class Lines {
  readonly kept: string[] = [];
  readonly tokens = new Map<string, number>();
  bytes = 0; // all received, lines or not
  total = 0; // lines received, kept or not
  ended = false;
  #waiters = new Set<() => void>();

  add(line: string): void {
    this.total++;
    // The oldest go in bulk: one shift a line would cost a copy a line.
    if (this.kept.push(line) > 2 * KEPT_LINES) this.kept.splice(0, KEPT_LINES);
    for (const [found] of line.matchAll(TOKEN)) {
      this.tokens.set(found, (this.tokens.get(found) ?? 0) + 1);
    }
    this.wake();
  }
  /** How many lines held `tokenText`. */
  count(tokenText: string): number {
    return this.tokens.get(tokenText) ?? 0;
  }
  /** The lines that hold `tokenText`. */
  with(tokenText: string): string[] {
    return this.kept.filter((line) => line.includes(tokenText));
  }
  end(): void {
    this.ended = true;
    this.wake();
  }
  wake(): void {
    for (const waiter of [...this.#waiters]) waiter();
  }
  /** Waits until `holds()` is true: @returns false at the time limit */
  async until(holds: () => boolean, ms: number): Promise<boolean> {
    if (holds()) return true;
    if (this.ended) return false; // nothing more will come
    let wake = () => {};
    const done = new Promise<boolean>((resolve) => {
      wake = () => {
        if (holds()) resolve(true);
        else if (this.ended) resolve(false);
      };
      this.#waiters.add(wake);
    });
    const result = await within(done, ms);
    this.#waiters.delete(wake);
    return result ?? holds();
  }
  /** The lines that came after the first `count` (as `total` counted). */
  since(count: number): string[] {
    const fresh = this.total - count;
    return fresh > 0 ? this.kept.slice(-Math.min(fresh, this.kept.length)) : [];
  }
  /** Waits for a token: @returns false if it did not come in time */
  has(tokenText: string, ms: number): Promise<boolean> {
    return this.until(() => this.count(tokenText) > 0, ms);
  }
}

/**
 * Reads a stream (a connection, a program's output) into `lines`, line
 * by line: @returns why it ended, if by an error
 */
export async function readLines(
  stream: ReadableStream<Uint8Array>,
  lines: Lines,
): Promise<string | undefined> {
  const framer = new LineFramer(MAX_LINE);
  const add = (frames: Frame[]) => {
    for (const line of frames) lines.add(line === LINE_TOO_LONG ? "" : line);
  };
  try {
    for await (const chunk of stream) {
      lines.bytes += chunk.length;
      add(framer.push(chunk));
      lines.wake(); // bytes came, lines or not
    }
    add(framer.end());
  } catch (error) {
    return networkReason(error);
  }
}

/** Counts a stream's bytes, and drops them: @returns why it ended, if by an error */
async function countBytes(
  stream: ReadableStream<Uint8Array>,
  lines: Lines,
): Promise<string | undefined> {
  try {
    for await (const chunk of stream) {
      lines.bytes += chunk.length;
      lines.wake();
    }
  } catch (error) {
    return networkReason(error);
  }
}

/** What a TCP peer reads of what it receives. */
export type Reading = "lines" | "bytes" | "nothing";

/** A line decoded as a terminal would show its bytes. */
const decode = (bytes: Uint8Array) => new TextDecoder().decode(bytes);

/** A TCP connection to the program under test. */
export class TcpPeer {
  readonly lines = new Lines();
  /** Why the connection ended ("closed by the server", "reset"), once it has. */
  endedBecause?: string;
  #closedByUs = false;

  private constructor(readonly conn: Deno.Conn, reading: Reading) {
    (conn as Deno.TcpConn).setNoDelay?.(true); // each write leaves at once
    if (reading !== "nothing") this.#read(reading);
  }

  /** A connection labcheck's own server accepted. */
  static accepted(conn: Deno.Conn): TcpPeer {
    return new TcpPeer(conn, "lines");
  }

  /**
   * Connects, or throws an Error saying why not. A peer reads lines, or
   * only counts bytes (cheap, for a flood), or reads nothing.
   */
  static async connect(
    host: string,
    port: number,
    { reading = "lines" as Reading, ms = 5000 } = {},
  ): Promise<TcpPeer> {
    const connecting = Deno.connect({ hostname: host, port });
    const conn = await within(connecting, ms).catch((error) => {
      throw new Error(`cannot connect: ${networkReason(error)}`);
    });
    if (!conn) {
      connecting.then((late) => late.close(), () => {});
      throw new Error(`cannot connect: no answer in ${ms / 1000} s`);
    }
    return new TcpPeer(conn, reading);
  }

  get open(): boolean {
    return this.endedBecause === undefined;
  }

  /** Writes text or bytes, all of them: @returns false if it failed */
  async write(data: string | Uint8Array, ms = 5000): Promise<boolean> {
    const bytes = typeof data === "string"
      ? new TextEncoder().encode(data)
      : data;
    const writing = (async () => {
      for (let sent = 0; sent < bytes.length;) {
        sent += await this.conn.write(bytes.subarray(sent));
      }
      return true;
    })().catch(() => false);
    return await within(writing, ms) ?? false;
  }

  /** Writes `data` in pieces, with a pause between them. */
  async writeInPieces(pieces: (string | Uint8Array)[], gapMs = 200) {
    for (const [i, piece] of pieces.entries()) {
      if (i > 0) await pause(gapMs);
      if (!await this.write(piece)) return false;
    }
    return true;
  }

  /** Waits until the server ends the connection: @returns false if not */
  ends(ms: number): Promise<boolean> {
    return this.lines.until(() => !this.open, ms);
  }

  /**
   * Leaves politely: closes its side (the server reads the end of the
   * stream), waits a moment for the server to close its own, then closes.
   */
  async leaves(ms = 2000): Promise<void> {
    await this.conn.closeWrite().catch(() => {});
    await this.ends(ms);
    this.close();
  }

  close(): void {
    this.#closedByUs = true;
    try {
      this.conn.close();
    } catch {
      // Closed already.
    }
  }

  async #read(reading: Reading): Promise<void> {
    const failed = reading === "lines"
      ? await readLines(this.conn.readable, this.lines)
      : await countBytes(this.conn.readable, this.lines);
    this.endedBecause = this.#closedByUs
      ? "closed by labcheck"
      : failed ?? "closed by the server";
    this.lines.end();
  }
}

/**
 * A client that resets its connection (a TCP RST, as from a program that
 * crashed with bytes unread). Deno's own sockets cannot send one;
 * `node:net`'s `resetAndDestroy` can.
 */
export class ResettingPeer {
  private constructor(readonly socket: net.Socket) {
    socket.on("error", () => {}); // it is going anyway
  }
  static async connect(host: string, port: number): Promise<ResettingPeer> {
    const socket = net.connect(port, host);
    const connected = new Promise((resolve, reject) => {
      socket.once("connect", () => resolve(true));
      socket.once("error", reject);
    });
    if (!await within(connected, 5000).catch(() => false)) {
      socket.destroy();
      throw new Error("cannot connect");
    }
    return new ResettingPeer(socket);
  }
  write(text: string): Promise<boolean> {
    return new Promise((resolve) =>
      this.socket.write(text, (e) => resolve(!e))
    );
  }
  close(): void {
    this.socket.resetAndDestroy();
  }
}

/** A UDP socket that sends to the program under test, and keeps its replies. */
export class UdpPeer {
  readonly lines = new Lines();
  readonly socket: Deno.DatagramConn;
  /** Where datagrams came from that were not the target (host:port). */
  readonly elsewhere = new Set<string>();
  sendError?: string; // why the last send failed, if it did
  #target: Deno.NetAddr;

  constructor(host: string, port: number) {
    const hostname = host.includes(":") ? "::" : "0.0.0.0";
    this.socket = Deno.listenDatagram({ hostname, port: 0, transport: "udp" });
    this.#target = { transport: "udp", hostname: host, port };
    this.#receive();
  }

  /** Sends one datagram: @returns false if it could not be sent */
  async send(data: string | Uint8Array): Promise<boolean> {
    const bytes = typeof data === "string"
      ? new TextEncoder().encode(data)
      : data;
    return await this.socket.send(bytes, this.#target).then(
      () => true,
      (error) => {
        this.sendError = networkReason(error);
        return false;
      },
    );
  }

  /**
   * Sends `request` until a reply that `answers` comes (UDP may lose
   * either): @returns that reply, or undefined after `tries`
   */
  async ask(
    request: string | Uint8Array,
    answers: (line: string) => boolean = () => true,
    { tries = 4, ms = 1000 } = {},
  ): Promise<string | undefined> {
    for (let i = 0; i < tries; i++) {
      const start = this.lines.total;
      const fresh = () => this.lines.since(start).find(answers);
      await this.send(request);
      if (await this.lines.until(() => fresh() !== undefined, ms)) {
        return fresh();
      }
    }
  }

  close(): void {
    try {
      this.socket.close();
    } catch {
      // Closed already.
    }
  }

  async #receive(): Promise<void> {
    try {
      for await (const [bytes, from] of this.socket) {
        // A reply counts only from the address asked, as a client's would.
        const { hostname, port } = from as Deno.NetAddr;
        const ip = /^[\d.]+$|:/.test(this.#target.hostname);
        const same = port === this.#target.port &&
          (!ip || hostname === this.#target.hostname.replace(/^\[|\]$/g, ""));
        if (!same) {
          this.elsewhere.add(addressText(from));
          continue;
        }
        this.lines.bytes += bytes.length;
        const text = decode(bytes).replace(/\r?\n$/, "");
        for (const line of text.split(/\r?\n/)) this.lines.add(line);
      }
    } catch {
      // Closed by labcheck, or an error the next send will meet.
    }
    this.lines.end();
  }
}
