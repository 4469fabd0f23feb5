#!/usr/bin/env -S deno run --allow-net --allow-sys=networkInterfaces
/**
 * socklab TCP chat server: a group chat that relays every line to everyone
 * else. By default it serves every client at once (the concurrent server);
 * with `--iterative` it serves one client at a time while the others wait
 * (the iterative server). The operator types into the server's console and
 * takes part in the chat.
 *
 * ```sh
 * deno run -A server.ts [--port 9999] [--host 0.0.0.0] [--name server] [--iterative]
 * ```
 *
 * @module
 */

import {
  argsOrExit,
  cleanText,
  clockTime,
  connectionHints,
  copyPlainLine,
  CR,
  decodeLine,
  DEFAULT_PORT,
  encodeLine,
  errorLine,
  type Frame,
  type InventoryReply,
  isClosedByUs,
  isDisconnect,
  LF,
  LINE_TOO_LONG,
  LineConsole,
  LineFramer,
  type LineSink,
  MAX_ITEM_LENGTH,
  MAX_LINE_BYTES,
  MAX_QUANTITY,
  messageLine,
  nameKey,
  nameProblem,
  networkReason,
  noticeLine,
  onStopSignals,
  parseChatInput,
  parseChoice,
  type ParsedFlags,
  parseFlags,
  parseNumberFlag,
  parsePort,
  passwordFrom,
  passwordMatches,
  privateLine,
  splitFirstWord,
  type Stock,
  Stoppable,
  TCP_SERVICES,
  TokenBucket,
  UsageError,
  writeAll,
} from "./shared.ts";

/** The most bytes waiting to be sent to one client before it is dropped. */
export const MAX_PENDING_BYTES = 1024 * 1024;

/** The read buffer of each chat connection. */
const READ_BUFFER_BYTES = 4096;

/** The read buffer of a connection that is sending a burst. */
const BURST_BUFFER_BYTES = 64 * 1024;

/** How long a leaving client may take to receive its last lines. */
const FINAL_FLUSH_MS = 3000;

const USAGE = `socklab TCP chat server

USAGE:
  deno run -A server.ts [OPTIONS]

OPTIONS:
  -p, --port <PORT>   Port to listen on (default ${DEFAULT_PORT}; 0 picks a free one)
      --host <HOST>   Address to listen on (default 0.0.0.0: every interface)
  -n, --name <NAME>   The operator's name in the chat (default "server")
  -i, --iterative     Serve one client at a time; the others wait their turn
  -q, --quiet         Chat: keep the room's messages off the console (log lines only)
  -s, --service <chat|inventory>  The service (default chat)
      --data <FILE>   Inventory: keep the stock in FILE, saved after every change
  -h, --help          Show this help

SECURITY (see the README):
      --tls-cert <FILE>          Speak TLS, with this certificate (PEM)
      --tls-key <FILE>           ... and its private key (PEM)
      --password <SECRET>        Clients must send "/auth SECRET" first; or set
                                 SOCKLAB_PASSWORD, which stays out of the process list

LIMITS (the defaults never bother normal use):
      --max-line <BYTES>         Longest line a client may send (default 4096)
      --max-clients <N>          Connections at once (default 1000)
      --max-pending <BYTES>      Unread output before a client is dropped (default 1048576)
      --rate-limit <N>           Chat: lines a second per client; 0 is no limit (default 20)
      --burst <N>                Chat: lines at once above the rate (default 40)
      --idle-timeout <SECONDS>   Disconnect clients silent this long (default: never)

CONSOLE (what you type into the server):
  TEXT                Send TEXT to every client, as <NAME> TEXT
  /who                List who is online
  /kick NAME          Disconnect NAME
  /quit               Tell every client and stop (Ctrl-C does the same)`;

/** How a server runs. */
export interface ServerOptions {
  /** Address to listen on. @default "0.0.0.0" */
  host: string;
  /** Port to listen on; 0 picks a free one. @default 9999 */
  port: number;
  /** The operator's name, reserved for the console. @default "server" */
  operatorName: string;
  /** Serve one client at a time. @default false */
  iterative: boolean;
  /** The longest line a client may send, in bytes. @default 4096 */
  maxLineBytes: number;
  /** Bytes waiting for one client before it is dropped. @default 1 MiB */
  maxPendingBytes: number;
  /** Connections at once; the next one is told the server is full. @default 1000 */
  maxClients: number;
  /** Lines a second each client may send; 0 turns the limit off. @default 20 */
  rateLimit: number;
  /** Lines a client may send at once before the rate limit. @default 40 */
  burst: number;
  /** Clients silent this long are disconnected; 0 is never. @default 0 */
  idleTimeoutMs: number;
  /** The password clients must send with /auth first, if any. */
  password?: string;
  /** A certificate and its key (PEM), to speak TLS. */
  tls?: { cert: string; key: string };
  /** Keep the room's messages off the console (log lines only). @default false */
  quiet?: boolean;
  /**
   * Joins and leaves are announced to everyone while the room has at most
   * this many clients; in a bigger room they would flood every screen (and
   * cost everyone a line for each arrival). @default 100
   */
  announceLimit?: number;
  /** Prints one line of the console (log lines and chat lines). */
  print: (line: string) => void;
}

/** The limits that never bother normal use, and their defaults. */
export const LIMITS = {
  maxLineBytes: MAX_LINE_BYTES,
  maxPendingBytes: MAX_PENDING_BYTES,
  maxClients: 1000,
  rateLimit: 20,
  burst: 40,
  idleTimeoutMs: 0,
};

/** Wrong passwords a connection may send before it is closed. */
const PASSWORD_TRIES = 3;

/** Why a client left. */
export type LeaveReason =
  | "quit"
  | "closed"
  | "reset"
  | "kicked"
  | "too slow"
  | "flooding"
  | "idle"
  | "wrong password"
  | "shutdown"
  | `error: ${string}`;

/**
 * What is waiting to be sent to one client. Each client has its own, so a
 * client that reads slowly delays nobody else, and it is capped, so such a
 * client cannot make the server's memory grow without bound. Lines queued
 * during one turn of the event loop go out in one write.
 */
class Outbox {
  #pending: Uint8Array[] = [];
  #pendingBytes = 0;
  #finishing = false;
  #failed = false;
  #wake?: () => void;
  /** Settles when the last queued byte is written, or writing failed. */
  readonly drained: Promise<void>;

  constructor(
    readonly conn: Deno.Conn,
    readonly maxPendingBytes: number,
    readonly onWriteError: (error: unknown) => void,
  ) {
    this.drained = this.#writeLoop();
  }

  /**
   * @param force queue it even past the cap (a last line)
   * @returns false when the client has too much waiting already
   */
  send(bytes: Uint8Array, force = false): boolean {
    if (this.#finishing || this.#failed) return true;
    const full = this.#pendingBytes + bytes.length > this.maxPendingBytes;
    if (full && !force) return false;
    this.#pending.push(bytes);
    this.#pendingBytes += bytes.length;
    this.#wakeWriter();
    return true;
  }

  /** Takes no more lines; the writer sends what is queued, then stops. */
  finish(): void {
    this.#finishing = true;
    this.#wakeWriter();
  }

  #wakeWriter(): void {
    this.#wake?.();
    this.#wake = undefined;
  }

  async #writeLoop(): Promise<void> {
    while (true) {
      if (this.#pending.length === 0) {
        if (this.#finishing) return;
        await new Promise<void>((resolve) => this.#wake = resolve);
        continue;
      }
      let spare: Uint8Array | undefined;
      let batch = this.#takeSideBySide();
      if (batch === undefined) {
        spare = joinBuffers.take();
        batch = this.#takeJoined(spare);
      }
      try {
        // Send: a write may take only part of the batch; writeAll loops.
        await writeAll(this.conn, batch);
      } catch (error) {
        this.#failed = true;
        this.#pending = [];
        this.onWriteError(error);
        return;
      } finally {
        if (spare) joinBuffers.give(spare);
      }
    }
  }

  /**
   * The pieces at the head of the queue that lie side by side in one
   * buffer (relayed messages do: see {@linkcode RelayBuffer}), taken off
   * as one view, without copying; or undefined when the head piece is a
   * small one apart, better joined with the next by a copy.
   */
  #takeSideBySide(): Uint8Array | undefined {
    let batch = this.#pending[0];
    let count = 1;
    while (
      count < this.#pending.length && follows(batch, this.#pending[count])
    ) {
      batch = new Uint8Array(
        batch.buffer,
        batch.byteOffset,
        batch.length + this.#pending[count].length,
      );
      count++;
    }
    const lone = count === 1 && this.#pending.length > 1;
    if (lone && batch.length < joinBuffers.bufferBytes) return undefined;
    this.#pending.splice(0, count);
    this.#pendingBytes -= batch.length;
    return batch;
  }

  /** As many whole pieces as `spare` holds, copied into it. */
  #takeJoined(spare: Uint8Array): Uint8Array {
    let size = 0;
    let count = 0;
    for (const piece of this.#pending) {
      if (size + piece.length > spare.length) break;
      spare.set(piece, size);
      size += piece.length;
      count++;
    }
    this.#pending.splice(0, count);
    this.#pendingBytes -= size;
    return spare.subarray(0, size);
  }
}

/** Does `next` start where `piece` ends, in the same buffer? */
function follows(piece: Uint8Array, next: Uint8Array): boolean {
  return next.buffer === piece.buffer &&
    next.byteOffset === piece.byteOffset + piece.length;
}

/**
 * Where the messages of a read are gathered, once for all recipients,
 * one after the other in a big buffer: an outbox that holds several of
 * them in a row writes them as one piece, with no copy.
 */
class RelayBuffer {
  #buffer = new Uint8Array(0);
  #start = 0;
  #used = 0;

  constructor(readonly bufferBytes: number) {}

  /** Is nothing gathered since the last take? */
  get empty(): boolean {
    return this.#used === this.#start;
  }

  fits(size: number): boolean {
    return this.#used + size <= this.#buffer.length;
  }

  /** A fresh buffer; the old one lives on while outboxes hold views of it. */
  renew(): void {
    this.#buffer = new Uint8Array(this.bufferBytes);
    this.#start = this.#used = 0;
  }

  /** Copies in `bytes` (check that they fit first). */
  add(bytes: Uint8Array): void {
    this.#buffer.set(bytes, this.#used);
    this.#used += bytes.length;
  }

  /**
   * Copies in `<NAME> `, then the line at `bytes[start..]` and a line end,
   * if that line is a plain message (see {@linkcode copyPlainLine}; check
   * that `maxLineBytes` and more fit first).
   * @returns the index of the line's LF in `bytes`, or -1, having added
   *   nothing, if it is not
   */
  addPlainLine(
    prefix: Uint8Array,
    bytes: Uint8Array,
    start: number,
    maxLineBytes: number,
  ): number {
    const buffer = this.#buffer;
    let used = this.#used;
    for (let i = 0; i < prefix.length; i++) buffer[used++] = prefix[i];
    const lf = copyPlainLine(bytes, start, maxLineBytes, buffer, used);
    if (lf < 0) return -1;
    used += lf - start - (bytes[lf - 1] === CR ? 1 : 0);
    buffer[used++] = LF;
    this.#used = used;
    return lf;
  }

  /** What was gathered since the last take, as a view. */
  take(): Uint8Array {
    const gathered = this.#buffer.subarray(this.#start, this.#used);
    this.#start = this.#used;
    return gathered;
  }
}

/**
 * Spare buffers to join an outbox's queued pieces into one write. They
 * are reused because a fresh buffer costs the kernel a zeroed page for
 * every 4 KiB, and a burst needs thousands of joins; the few kept are
 * all the memory they hold once the burst is over.
 */
class BufferPool {
  #spare: Uint8Array[] = [];

  constructor(readonly bufferBytes: number, readonly keep: number) {}

  take(): Uint8Array {
    return this.#spare.pop() ?? new Uint8Array(this.bufferBytes);
  }

  give(buffer: Uint8Array): void {
    if (this.#spare.length < this.keep) this.#spare.push(buffer);
  }
}

const joinBuffers = new BufferPool(64 * 1024, 64);

const burstBuffers = new BufferPool(BURST_BUFFER_BYTES, 64);

/**
 * A connection's read buffer. Most clients send a line now and then, and
 * hold a small one; one that fills it is sending a burst, and borrows a
 * big one (fewer reads, so fewer and bigger sends to everyone) until its
 * reads are small again.
 */
class ReadBuffer {
  #small = new Uint8Array(READ_BUFFER_BYTES);
  #big?: Uint8Array;

  /** The buffer for the next read. */
  get bytes(): Uint8Array {
    return this.#big ?? this.#small;
  }

  /** Grows or shrinks after a read of `count` bytes, once it is handled. */
  fit(count: number): void {
    if (!this.#big && count === this.#small.length) {
      this.#big = burstBuffers.take();
    } else if (this.#big && count < READ_BUFFER_BYTES / 2) {
      this.release();
    }
  }

  /** Gives back the big buffer, if it has one. */
  release(): void {
    if (this.#big) burstBuffers.give(this.#big);
    this.#big = undefined;
  }
}

const encoder = new TextEncoder();

/** One connected client. */
class Client {
  /** Its name in the chat, once admitted (after /auth, with a password). */
  name = "";
  /** Set once, when the client leaves, with the reason. */
  leftBecause?: LeaveReason;
  /** Settles when the connection is closed. */
  closed?: Promise<void>;
  /** When its last line came (performance.now()), for --idle-timeout. */
  lastHeard = performance.now();
  wrongPasswords = 0;
  readonly outbox: Outbox;
  #prefix = new Uint8Array();
  #prefixName = "";

  constructor(
    readonly conn: Deno.Conn,
    readonly address: string,
    maxPendingBytes: number,
    onWriteError: (client: Client, error: unknown) => void,
    readonly flood?: FloodGuard,
  ) {
    this.outbox = new Outbox(
      conn,
      maxPendingBytes,
      (error) => onWriteError(this, error),
    );
  }

  /** Its name once admitted, its address before. */
  get label(): string {
    return this.name || this.address;
  }

  /** `<NAME> ` as bytes: what starts each of its messages. */
  get messagePrefix(): Uint8Array {
    if (this.#prefixName !== this.name) {
      this.#prefix = encoder.encode(messageLine(this.name, ""));
      this.#prefixName = this.name;
    }
    return this.#prefix;
  }
}

/** What to do with a line under the flood limit. */
type FloodVerdict = "pass" | "warn" | "drop" | "disconnect";

/**
 * The flood limit of one client: lines beyond the rate (after a burst) are
 * dropped, with one warning; a client that goes on dropping lines for
 * `burst` lines, without a second's pause, is disconnected.
 */
class FloodGuard {
  #bucket: TokenBucket;
  #dropped = 0;
  #lastDrop = -Infinity;

  constructor(readonly rate: number, readonly burst: number) {
    this.#bucket = new TokenBucket(rate, burst);
  }

  check(now = performance.now()): FloodVerdict {
    if (this.#bucket.take(now)) {
      if (now - this.#lastDrop > 1000) this.#dropped = 0;
      return "pass";
    }
    this.#lastDrop = now;
    this.#dropped++;
    if (this.#dropped === 1) return "warn";
    return this.#dropped > this.burst ? "disconnect" : "drop";
  }
}

/**
 * Accept: takes each connection from the kernel's queue (the backlog) and
 * serves it, until the listener is closed. The concurrent server and the
 * iterative server differ in one `await`: the iterative server waits until
 * a client is served before it accepts the next; the concurrent one goes
 * straight back to accept while each client is served.
 */
async function acceptConnections(
  listener: Deno.Listener,
  { iterative, serve, log, stopping }: {
    iterative: boolean;
    serve: (conn: Deno.Conn) => Promise<void>;
    log: (text: string) => void;
    stopping: () => boolean;
  },
): Promise<void> {
  while (true) {
    let conn;
    try {
      conn = await listener.accept();
    } catch (error) {
      if (isClosedByUs(error)) return; // the server is stopping
      // Out of file descriptors, for example: wait a little, go on.
      log(`cannot accept a connection: ${networkReason(error)}`);
      await new Promise((resolve) => setTimeout(resolve, 100));
      continue;
    }
    if (iterative) {
      await serve(conn);
      if (!stopping()) log("waiting for the next client in the backlog");
    } else {
      serve(conn);
    }
  }
}

/** A running chat server. */
export class ChatServer extends Stoppable {
  readonly options: ServerOptions;
  readonly listener: Deno.Listener;
  /** Settles when the server has stopped. */
  readonly finished: Promise<void>;
  /** The clients in the chat, by name (ignoring case). */
  #clients = new Map<string, Client>();
  /** Every connection, in the chat or not yet (before /auth). */
  #connections = new Set<Client>();
  #guestNumber = 0;
  /** Messages of the read being handled, and who sent them. */
  #relayBuffer = new RelayBuffer(256 * 1024);
  #relayedFrom?: Client;
  /** When the read being handled came (performance.now()). */
  #readAt = 0;
  #idleSweeper?: ReturnType<typeof setInterval>;

  private constructor(options: ServerOptions, listener: Deno.Listener) {
    super();
    this.options = options;
    this.listener = listener;
    if (options.idleTimeoutMs > 0) {
      const every = Math.min(1000, options.idleTimeoutMs / 4);
      this.#idleSweeper = setInterval(() => this.#dropIdleClients(), every);
    }
    this.finished = acceptConnections(listener, {
      iterative: options.iterative,
      serve: (conn) => this.#serve(conn),
      log: (text) => this.#log(text),
      stopping: () => this.stopping,
    });
  }

  /**
   * Creates the listening socket (socket, bind and listen in one call)
   * and starts accepting clients.
   */
  static start(options: Partial<ServerOptions> = {}): ChatServer {
    const full: ServerOptions = {
      host: "0.0.0.0",
      port: DEFAULT_PORT,
      operatorName: "server",
      iterative: false,
      ...LIMITS,
      print: (line) => console.log(line),
      ...options,
    };
    // Create, bind and listen: the kernel now queues connecting clients.
    const listener = listen(full);
    return new ChatServer(full, listener);
  }

  /** The address actually bound (port 0 becomes a real port). */
  get addr(): Deno.NetAddr {
    return this.listener.addr as Deno.NetAddr;
  }

  /** The names of the connected clients, in the order they came. */
  get names(): string[] {
    return [...this.#clients.values()].map((client) => client.name);
  }

  // -------------------------------------------------------------------------
  // Serving one client: welcome, receive loop, leave
  // -------------------------------------------------------------------------

  async #serve(conn: Deno.Conn): Promise<void> {
    const address = addressOf(conn);
    this.#log(`connection from ${address}`);
    if (this.#connections.size >= this.options.maxClients) {
      return await refuseFull(
        conn,
        errorLine("server full"),
        (text) => this.#log(text),
      );
    }
    const { rateLimit, burst } = this.options;
    const client = new Client(
      conn,
      address,
      this.options.maxPendingBytes,
      (client, error) => this.#leave(client, leaveReasonOf(error)),
      rateLimit > 0 ? new FloodGuard(rateLimit, burst) : undefined,
    );
    this.#connections.add(client);
    if (this.options.password) {
      this.#sendTo(
        client,
        noticeLine("this server needs a password: send /auth PASSWORD"),
      );
    } else {
      this.#admit(client);
    }
    const reason = await this.#receiveLines(client);
    this.#leave(client, reason);
    await client.closed;
  }

  /** Lets a client into the chat, under a guest name. */
  #admit(client: Client): void {
    client.name = this.#nextGuestName();
    const others = this.#clients.size;
    this.#clients.set(nameKey(client.name), client);
    this.#log(`${client.name} joined from ${client.address}`);
    if (this.options.iterative) {
      this.#log(
        `serving ${client.name} alone; other clients wait in the backlog until it leaves`,
      );
    }
    this.#sendWelcome(client, others);
    if (this.#announces()) {
      this.#broadcast(noticeLine(`${client.name} joined`), client);
    }
  }

  /** Does the room announce joins and leaves at its size? */
  #announces(): boolean {
    return this.#clients.size <= (this.options.announceLimit ?? 100);
  }

  #nextGuestName(): string {
    let name;
    do {
      name = `guest-${++this.#guestNumber}`;
    } while (this.#isTaken(name));
    return name;
  }

  #sendWelcome(client: Client, others: number): void {
    const operator = `${this.options.operatorName} (operator)`;
    // A big room is counted, not listed: /who lists it on demand.
    const online = this.#announces()
      ? [...this.names.filter((name) => name !== client.name), operator]
        .join(", ")
      : `${others} others and ${operator}; /who lists them`;
    const mode = this.options.iterative
      ? "an iterative server: one client at a time, so it is just you and the operator"
      : "a group chat: each line you send goes to everyone";
    this.#sendTo(client, noticeLine(`welcome to socklab chat, ${mode}`));
    this.#sendTo(
      client,
      noticeLine(`online: ${online}`),
    );
    this.#sendTo(
      client,
      noticeLine(
        `you are ${client.name}: pick a name with /nick NAME; /help lists the commands`,
      ),
    );
  }

  /**
   * Receive: read bytes as they come and handle each complete line.
   * @returns why the loop ended
   */
  async #receiveLines(client: Client): Promise<LeaveReason> {
    const buffer = new ReadBuffer();
    const framer = new LineFramer(this.options.maxLineBytes);
    const sink: LineSink = {
      line: (bytes, start, end) => this.#handleLine(client, bytes, start, end),
      tooLong: () => this.#handleTooLong(client),
      lines: (bytes, start, maxLineBytes) =>
        this.#relayPlainLines(client, bytes, start, maxLineBytes),
    };
    try {
      while (!client.leftBecause) {
        const count = await client.conn.read(buffer.bytes);
        if (count === null) {
          // The client closed its side: handle a last line without "\n".
          this.#handleRead(framer, sink);
          return "closed";
        }
        this.#handleRead(framer, sink, buffer.bytes.subarray(0, count));
        buffer.fit(count);
      }
      return client.leftBecause;
    } catch (error) {
      return client.leftBecause ?? leaveReasonOf(error);
    } finally {
      buffer.release();
    }
  }

  /** Handles the lines a read completes (the last one if `chunk` is none). */
  #handleRead(framer: LineFramer, sink: LineSink, chunk?: Uint8Array): void {
    this.#readAt = performance.now();
    try {
      if (chunk) framer.feed(chunk, sink);
      else framer.finish(sink);
    } finally {
      this.#sendRelayed();
    }
  }

  #handleTooLong(client: Client): void {
    if (client.leftBecause) return;
    client.lastHeard = this.#readAt;
    this.#sendTo(
      client,
      errorLine(
        `line too long (over ${this.options.maxLineBytes} bytes): it was not sent`,
      ),
    );
    this.#log(`${client.label} sent a line that was too long`);
  }

  /** One line from a client: `bytes` from `start` to `end`. */
  #handleLine(
    client: Client,
    bytes: Uint8Array,
    start: number,
    end: number,
  ): void {
    if (client.leftBecause) return;
    client.lastHeard = this.#readAt;
    if (!client.name) {
      this.#authenticate(client, decodeLine(bytes.subarray(start, end)));
    } else if (!this.#withinFloodLimit(client)) {
      return;
    } else {
      this.#handleInput(client, decodeLine(bytes.subarray(start, end)));
    }
  }

  /** Applies the flood limit to one line: false when it is dropped. */
  #withinFloodLimit(client: Client): boolean {
    const verdict = client.flood?.check() ?? "pass";
    if (verdict === "warn") {
      const { rateLimit } = this.options;
      this.#sendTo(
        client,
        errorLine(
          `slow down: at most ${rateLimit} lines a second; lines beyond that are dropped`,
        ),
      );
      this.#log(`${client.label} is flooding: lines dropped`);
    } else if (verdict === "disconnect") {
      this.#sendTo(client, errorLine("disconnected for flooding"));
      this.#leave(client, "flooding");
    }
    return verdict === "pass";
  }

  /** Before /auth with the right password, a client may do nothing else. */
  #authenticate(client: Client, line: string): void {
    const input = parseChatInput(line);
    if (input.kind === "empty") return;
    if (input.kind !== "command" || input.command !== "/auth") {
      return this.#sendTo(
        client,
        errorLine("authenticate first: /auth PASSWORD"),
      );
    }
    // The password itself is never logged.
    if (passwordMatches(input.rest, this.options.password ?? "")) {
      this.#log(`${client.address} authenticated`);
      return this.#admit(client);
    }
    client.wrongPasswords++;
    this.#log(
      `${client.address} sent a wrong password (${client.wrongPasswords} of ${PASSWORD_TRIES})`,
    );
    this.#sendTo(client, errorLine("wrong password"));
    if (client.wrongPasswords >= PASSWORD_TRIES) {
      this.#sendTo(
        client,
        errorLine("too many wrong passwords: disconnecting"),
      );
      this.#leave(client, "wrong password");
    }
  }

  #dropIdleClients(): void {
    const oldest = performance.now() - this.options.idleTimeoutMs;
    for (const client of [...this.#connections]) {
      if (client.lastHeard >= oldest) continue;
      const seconds = this.options.idleTimeoutMs / 1000;
      this.#sendTo(client, errorLine(`idle for ${seconds} s: disconnecting`));
      this.#leave(client, "idle");
    }
  }

  /** Closes the client's connection after its last lines are sent. */
  #leave(client: Client, reason: LeaveReason): void {
    if (client.leftBecause) return;
    client.leftBecause = reason;
    this.#connections.delete(client);
    this.#log(`${client.label} left (${reason})`);
    const inChat = this.#clients.get(nameKey(client.name)) === client;
    if (inChat) this.#clients.delete(nameKey(client.name));
    if (inChat && reason !== "shutdown" && this.#announces()) {
      const plain = ["quit", "closed", "reset"].includes(reason);
      const why = plain || reason.startsWith("error") ? "" : ` (${reason})`;
      this.#broadcast(noticeLine(`${client.name} left${why}`));
    }
    client.closed = closeAfterFlush(client);
  }

  // -------------------------------------------------------------------------
  // The protocol: messages and commands
  // -------------------------------------------------------------------------

  /** A message or a command, as the client typed it. */
  #handleInput(client: Client, line: string): void {
    const input = parseChatInput(line);
    if (input.kind === "empty") return;
    if (input.kind === "message") return this.#relay(client, input.text);
    // What a command does comes after the messages sent before it.
    this.#sendRelayed();
    const { command, rest } = input;
    switch (command) {
      case "/nick":
        return this.#rename(client, rest);
      case "/who":
        return this.#sendTo(client, this.#whoLine());
      case "/msg":
        return this.#sendPrivate(client, rest);
      case "/me":
        return this.#act(client, rest);
      case "/help":
        return HELP_LINES.forEach((text) => this.#sendTo(client, text));
      case "/quit":
        this.#sendTo(client, noticeLine("bye"));
        return this.#leave(client, "quit");
      case "/auth":
        return this.#sendTo(
          client,
          noticeLine(
            this.options.password
              ? "you are in already"
              : "this server needs no password",
          ),
        );
      default:
        this.#sendTo(
          client,
          errorLine(`unknown command "${command}": /help lists the commands`),
        );
    }
  }

  /**
   * A message to everyone else (the sender does not get it back). The
   * messages of one read are sent together, encoded once for everyone:
   * one piece in each outbox, however many lines the read held.
   */
  #relay(client: Client, text: string): void {
    const line = messageLine(client.name, text);
    if (!this.options.quiet) this.#print(line);
    const bytes = encodeLine(line);
    if (!this.#roomFor(client, bytes.length)) {
      return this.#broadcastBytes(bytes, client);
    }
    this.#relayBuffer.add(bytes);
  }

  /**
   * The fast path of a busy room: the plain messages at the start of
   * `bytes[start..]` go out as they came, after the sender's `<NAME> `,
   * never decoded, with no work per line beyond finding its end and
   * copying it once. It takes only clients the server neither limits nor
   * echoes on its console; the lines it leaves take the usual way.
   * @returns where it stopped
   */
  #relayPlainLines(
    client: Client,
    bytes: Uint8Array,
    start: number,
    maxLineBytes: number,
  ): number {
    const fast = client.name && !client.flood && this.options.quiet &&
      !client.leftBecause;
    if (!fast) return start;
    const prefix = client.messagePrefix;
    let next = start;
    while (next < bytes.length) {
      const rest = Math.min(maxLineBytes, bytes.length - next);
      if (!this.#roomFor(client, prefix.length + rest + 1)) break;
      const lf = this.#relayBuffer.addPlainLine(
        prefix,
        bytes,
        next,
        maxLineBytes,
      );
      if (lf < 0) break;
      next = lf + 1;
    }
    // Only whole lines count as being heard, as on the usual way.
    if (next > start) client.lastHeard = this.#readAt;
    return next;
  }

  /**
   * Makes room in the relay buffer for `size` bytes from `client`, sending
   * what it holds if need be.
   * @returns false if they cannot fit even in an empty one
   */
  #roomFor(client: Client, size: number): boolean {
    if (!this.#relayBuffer.fits(size)) {
      this.#sendRelayed();
      if (size > this.#relayBuffer.bufferBytes) return false;
      this.#relayBuffer.renew();
    }
    this.#relayedFrom = client;
    return true;
  }

  /** Sends the messages gathered from one read, if any. */
  #sendRelayed(): void {
    if (this.#relayBuffer.empty) return;
    this.#broadcastBytes(this.#relayBuffer.take(), this.#relayedFrom);
  }

  #rename(client: Client, newName: string): void {
    const problem = this.#nameProblem(newName, client);
    if (problem) return this.#sendTo(client, errorLine(problem));
    const oldName = client.name;
    if (oldName === newName) {
      return this.#sendTo(client, noticeLine(`you are already ${newName}`));
    }
    this.#clients.delete(nameKey(oldName));
    client.name = newName;
    this.#clients.set(nameKey(newName), client);
    this.#log(`${oldName} is now known as ${newName}`);
    this.#broadcast(noticeLine(`${oldName} is now known as ${newName}`));
  }

  /** Why `name` cannot be taken by `client`, or undefined if it can. */
  #nameProblem(name: string, client: Client): string | undefined {
    if (name === "") return "usage: /nick NAME";
    const invalid = nameProblem(name);
    if (invalid) return invalid;
    if (nameKey(name) === nameKey(this.options.operatorName)) {
      return `name "${name}" is reserved for the operator`;
    }
    const holder = this.#clients.get(nameKey(name));
    if (holder && holder !== client) return `name "${name}" is taken`;
    return undefined;
  }

  #isTaken(name: string): boolean {
    return this.#clients.has(nameKey(name)) ||
      nameKey(name) === nameKey(this.options.operatorName);
  }

  #whoLine(): string {
    const operator = `${this.options.operatorName} (operator)`;
    const everyone = [...this.names, operator];
    return noticeLine(`online (${everyone.length}): ${everyone.join(", ")}`);
  }

  #sendPrivate(client: Client, rest: string): void {
    const [name, text] = splitFirstWord(rest);
    if (name === "" || text === "") {
      return this.#sendTo(client, errorLine("usage: /msg NAME TEXT"));
    }
    const line = privateLine(client.name, text);
    if (nameKey(name) === nameKey(this.options.operatorName)) {
      return this.#print(line);
    }
    const target = this.#clients.get(nameKey(name));
    if (!target) {
      return this.#sendTo(
        client,
        errorLine(`no one named "${name}" is online`),
      );
    }
    this.#sendTo(target, line);
  }

  #act(client: Client, action: string): void {
    if (action === "") {
      return this.#sendTo(client, errorLine("usage: /me TEXT"));
    }
    const line = noticeLine(`${client.name} ${action}`);
    this.#print(line);
    this.#broadcast(line, client);
  }

  // -------------------------------------------------------------------------
  // Send: to one client, or to everyone
  // -------------------------------------------------------------------------

  #sendTo(client: Client, line: string): void {
    this.#sendBytes(client, encodeLine(line));
  }

  /** Sends a line to every client but `except`, encoded once for all. */
  #broadcast(line: string, except?: Client): void {
    this.#broadcastBytes(encodeLine(line), except);
  }

  #broadcastBytes(bytes: Uint8Array, except?: Client): void {
    // The Map itself, not a copy: a client that leaves meanwhile is skipped.
    for (const client of this.#clients.values()) {
      if (client !== except) this.#sendBytes(client, bytes);
    }
  }

  #sendBytes(client: Client, bytes: Uint8Array): void {
    if (client.leftBecause) return;
    if (client.outbox.send(bytes)) return;
    // Past the cap: a last line, beyond it (it may never be read), then out.
    client.outbox.send(
      encodeLine(errorLine("too much unread output: disconnecting")),
      true,
    );
    this.#leave(client, "too slow");
  }

  // -------------------------------------------------------------------------
  // The operator's console
  // -------------------------------------------------------------------------

  /** Handles one line typed at the server's console. */
  operatorSays(line: string): void {
    const input = parseChatInput(line);
    if (input.kind === "empty") return;
    if (input.kind === "message") return this.#operatorMessage(input.text);
    const { command, rest } = input;
    switch (command) {
      case "/who":
        return this.#print(this.#whoLine());
      case "/kick":
        return this.#kick(rest);
      case "/quit":
        this.stop();
        return;
      case "/help":
        return this.#print(
          "* console: TEXT to send to everyone, /who, /kick NAME, /quit",
        );
      default:
        this.#print(
          errorLine(
            `unknown command "${command}": try /who, /kick NAME, /quit`,
          ),
        );
    }
  }

  #operatorMessage(text: string): void {
    if (this.#clients.size === 0) {
      return this.#print("* no one is connected to hear that");
    }
    this.#broadcast(messageLine(this.options.operatorName, text));
  }

  #kick(name: string): void {
    if (name === "") return this.#print(errorLine("usage: /kick NAME"));
    const client = this.#clients.get(nameKey(name));
    if (!client) return this.#print(errorLine(`no one named "${name}"`));
    this.#sendTo(client, noticeLine("you were kicked by the operator"));
    this.#leave(client, "kicked");
  }

  // -------------------------------------------------------------------------
  // Close: a graceful stop
  // -------------------------------------------------------------------------

  /**
   * Stops accepting, tells every client the server is shutting down, and
   * closes each connection once its last lines are sent.
   */
  protected override async shutDown(): Promise<void> {
    this.#log("shutting down");
    clearInterval(this.#idleSweeper);
    try {
      this.listener.close();
    } catch {
      // Already closed.
    }
    const clients = [...this.#connections];
    for (const client of clients) {
      this.#sendTo(client, noticeLine("server shutting down"));
      this.#leave(client, "shutdown");
    }
    await Promise.all(clients.map((client) => client.closed));
    await this.finished;
    this.#log("stopped");
  }

  // -------------------------------------------------------------------------
  // The console's output
  // -------------------------------------------------------------------------

  /** A chat line the operator sees. */
  #print(line: string): void {
    this.options.print(line);
  }

  /** A log line, with its time. */
  #log(text: string): void {
    this.options.print(`${clockTime()} ${text}`);
  }
}

const HELP_LINES = [
  "commands:",
  "  /nick NAME       choose your name (1 to 24 letters, digits, - _ .)",
  "  /who             list who is online",
  "  /msg NAME TEXT   send TEXT to NAME alone",
  '  /me TEXT         an action: "/me waves" shows "* NAME waves"',
  "  /quit            leave the chat",
  '  //TEXT           send a message that starts with "/"',
].map(noticeLine);

/** Sends what is queued for a client (waiting at most a few seconds), then closes. */
async function closeAfterFlush(client: Client): Promise<void> {
  client.outbox.finish();
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<void>((resolve) => {
    timer = setTimeout(resolve, FINAL_FLUSH_MS);
  });
  await Promise.race([client.outbox.drained, timeout]);
  clearTimeout(timer);
  // Close: release the socket; the client sees the end of the stream.
  closeQuietly(client.conn);
}

/** Closes a connection that may be closed already. */
function closeQuietly(conn: Deno.Conn): void {
  try {
    conn.close();
  } catch {
    // Already closed.
  }
}

/** `HOST:PORT` of a connection's peer. */
function addressOf(conn: Deno.Conn): string {
  const peer = conn.remoteAddr as Deno.NetAddr;
  return `${peer.hostname}:${peer.port}`;
}

/**
 * Creates the listening socket: plain TCP, or TLS when a certificate is
 * given (the handshake then happens on each connection's first read).
 */
function listen(
  options: { host: string; port: number; tls?: { cert: string; key: string } },
): Deno.Listener {
  const { host: hostname, port, tls } = options;
  return tls
    ? Deno.listenTls({ hostname, port, cert: tls.cert, key: tls.key })
    : Deno.listen({ hostname, port });
}

/** Tells a connection over the --max-clients limit, and closes it. */
async function refuseFull(
  conn: Deno.Conn,
  reply: string,
  log: (text: string) => void,
): Promise<void> {
  log(`refused ${addressOf(conn)}: server full`);
  try {
    await writeAll(conn, encodeLine(reply));
  } catch {
    // It has gone already.
  }
  closeQuietly(conn);
}

/** The leave reason for an error from a client's socket. */
function leaveReasonOf(error: unknown): LeaveReason {
  if (isDisconnect(error)) return "reset";
  return `error: ${networkReason(error)}`;
}

// ---------------------------------------------------------------------------
// The inventory service: one JSON request and one JSON reply per line
// ---------------------------------------------------------------------------

/** A valid request to the inventory service. */
export type InventoryRequest =
  | { action: "add" | "remove"; item: string; quantity: number }
  | { action: "view" }
  | { action: "help" };

const ACTIONS = ["add", "remove", "view", "help"];

const INVENTORY_HELP = 'send one request per line: "add ITEM QUANTITY", ' +
  '"remove ITEM QUANTITY", "view", "help", or the same as JSON: ' +
  '{"action":"add","item":"Soap","quantity":200}, {"action":"view"}';

/** A request that cannot be served, with the reason for the client. */
class BadRequest extends Error {}

/**
 * Reads one request line: a JSON object, or the same as text for nc users
 * (`add Green Tea 5`: the quantity is the last word).
 * @throws {BadRequest} with the reason, for anything else
 */
export function parseInventoryRequest(line: string): InventoryRequest {
  const text = line.trim();
  // JSON is never eval'ed or unpickled: it is data, and only data.
  const looksLikeJson = /^[[{"\d-]|^(true|false|null)$/.test(text);
  return looksLikeJson ? requestFromJson(text) : requestFromWords(text);
}

function requestFromJson(text: string): InventoryRequest {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (error) {
    throw new BadRequest(`malformed JSON: ${(error as Error).message}`);
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new BadRequest(
      'a request must be a JSON object, like {"action":"view"}',
    );
  }
  const fields = value as Record<string, unknown>;
  const action = fields.action;
  if (action === undefined) throw new BadRequest('missing "action"');
  if (typeof action !== "string") {
    throw new BadRequest('"action" must be a string');
  }
  if (action === "view") return { action };
  if (action === "help") return { action };
  if (action !== "add" && action !== "remove") throw unknownAction(action);
  if (fields.item === undefined) throw new BadRequest('missing "item"');
  if (fields.quantity === undefined) throw new BadRequest('missing "quantity"');
  return {
    action,
    item: checkItem(fields.item),
    quantity: checkQuantity(fields.quantity),
  };
}

function requestFromWords(text: string): InventoryRequest {
  const words = text.split(/\s+/);
  const action = words[0].toLowerCase();
  if (action === "view") return { action };
  if (action === "help") return { action };
  if (action !== "add" && action !== "remove") throw unknownAction(words[0]);
  if (words.length < 3) {
    throw new BadRequest(`usage: ${action} ITEM QUANTITY`);
  }
  const quantity = words.at(-1)!;
  if (!/^\d+$/.test(quantity)) throw badQuantity();
  return {
    action,
    item: checkItem(words.slice(1, -1).join(" ")),
    quantity: checkQuantity(Number(quantity)),
  };
}

function unknownAction(action: string): BadRequest {
  const shown = action.length > 20 ? action.slice(0, 20) + "..." : action;
  return new BadRequest(
    `unknown action "${shown}": use ${ACTIONS.join(", ")}`,
  );
}

function checkItem(item: unknown): string {
  if (typeof item !== "string") throw new BadRequest('"item" must be a string');
  const name = item.trim();
  if (name === "") throw new BadRequest("an item name cannot be empty");
  if ([...name].length > MAX_ITEM_LENGTH) {
    throw new BadRequest(
      `an item name is ${MAX_ITEM_LENGTH} characters at most`,
    );
  }
  if (cleanText(name) !== name) {
    throw new BadRequest("an item name cannot hold control characters");
  }
  return name;
}

function checkQuantity(quantity: unknown): number {
  const valid = typeof quantity === "number" && Number.isInteger(quantity) &&
    quantity >= 1 && quantity <= MAX_QUANTITY;
  if (!valid) throw badQuantity();
  return quantity as number;
}

function badQuantity(): BadRequest {
  return new BadRequest(
    `the quantity must be a whole number from 1 to ${MAX_QUANTITY}`,
  );
}

/**
 * The stock and the rules that change it. Every change is checked first,
 * so a request either applies whole or changes nothing.
 */
export class Inventory {
  readonly #items: Map<string, number>;

  constructor(stock: Stock = {}) {
    this.#items = new Map(Object.entries(stock));
  }

  /** The stock as a plain object, for JSON. */
  get stock(): Stock {
    return Object.fromEntries(this.#items);
  }

  /**
   * Adds `quantity` of `item`.
   * @throws {BadRequest} when the total would pass the safe integer limit
   */
  add(item: string, quantity: number): string {
    const total = (this.#items.get(item) ?? 0) + quantity;
    if (total > Number.MAX_SAFE_INTEGER) {
      throw new BadRequest(
        `cannot add: ${item} would pass ${Number.MAX_SAFE_INTEGER} in stock`,
      );
    }
    this.#items.set(item, total);
    return `Added ${quantity} ${item}(s) to the inventory.`;
  }

  /**
   * Removes `quantity` of `item`; an item that reaches 0 leaves.
   * @throws {BadRequest} when there is not that much in stock
   */
  remove(item: string, quantity: number): string {
    const have = this.#items.get(item) ?? 0;
    if (have === 0) throw new BadRequest(`no ${item} in stock`);
    if (have < quantity) throw new BadRequest(`only ${have} ${item} in stock`);
    if (have === quantity) this.#items.delete(item);
    else this.#items.set(item, have - quantity);
    return `Removed ${quantity} ${item}(s) from the inventory.`;
  }
}

/** How an inventory server runs. */
export interface InventoryOptions {
  /** Address to listen on. @default "0.0.0.0" */
  host: string;
  /** Port to listen on; 0 picks a free one. @default 9999 */
  port: number;
  /** Serve one client at a time. @default false */
  iterative: boolean;
  /** The longest request line, in bytes. @default 4096 */
  maxLineBytes: number;
  /** Connections at once; the next one is told the server is full. @default 1000 */
  maxClients: number;
  /** Connections silent this long are closed; 0 is never. @default 0 */
  idleTimeoutMs: number;
  /** The password clients must send with /auth first, if any. */
  password?: string;
  /** A certificate and its key (PEM), to speak TLS. */
  tls?: { cert: string; key: string };
  /** The file that keeps the stock; without one, it lives in memory. */
  dataFile?: string;
  /** Prints one log line. */
  print: (line: string) => void;
}

/** One connection to the inventory service. */
interface Customer {
  conn: Deno.Conn;
  address: string;
  lastHeard: number;
  authenticated: boolean;
  wrongPasswords: number;
}

/** A running inventory server. */
export class InventoryServer extends Stoppable {
  readonly options: InventoryOptions;
  readonly listener: Deno.Listener;
  /** Settles when the server has stopped accepting. */
  readonly finished: Promise<void>;
  readonly #inventory: Inventory;
  readonly #dataFile?: DataFile;
  readonly #connections = new Set<Customer>();
  #idleSweeper?: ReturnType<typeof setInterval>;

  private constructor(
    options: InventoryOptions,
    listener: Deno.Listener,
    inventory: Inventory,
  ) {
    super();
    this.options = options;
    this.listener = listener;
    this.#inventory = inventory;
    if (options.idleTimeoutMs > 0) {
      const every = Math.min(1000, options.idleTimeoutMs / 4);
      this.#idleSweeper = setInterval(() => this.#closeIdle(), every);
    }
    if (options.dataFile) this.#dataFile = new DataFile(options.dataFile);
    this.finished = acceptConnections(listener, {
      iterative: options.iterative,
      serve: (conn) => this.#serve(conn),
      log: (text) => this.#log(text),
      stopping: () => this.stopping,
    });
  }

  /**
   * Loads the stock from the data file, if any, then creates, binds and
   * listens.
   * @throws {DataFileError} when the data file cannot be read or is corrupt
   */
  static async start(
    options: Partial<InventoryOptions> = {},
  ): Promise<InventoryServer> {
    const full: InventoryOptions = {
      host: "0.0.0.0",
      port: DEFAULT_PORT,
      iterative: false,
      maxLineBytes: LIMITS.maxLineBytes,
      maxClients: LIMITS.maxClients,
      idleTimeoutMs: LIMITS.idleTimeoutMs,
      print: (line) => console.log(line),
      ...options,
    };
    const stock = full.dataFile ? await loadStock(full.dataFile) : {};
    // Create, bind and listen.
    const listener = listen(full);
    return new InventoryServer(full, listener, new Inventory(stock));
  }

  /** The address actually bound (port 0 becomes a real port). */
  get addr(): Deno.NetAddr {
    return this.listener.addr as Deno.NetAddr;
  }

  /** One connection: any number of requests, each answered in turn. */
  async #serve(conn: Deno.Conn): Promise<void> {
    const address = addressOf(conn);
    this.#log(`connection from ${address}`);
    if (this.#connections.size >= this.options.maxClients) {
      const full = JSON.stringify(failure("server full"));
      return await refuseFull(conn, full, (text) => this.#log(text));
    }
    const customer: Customer = {
      conn,
      address,
      lastHeard: performance.now(),
      authenticated: !this.options.password,
      wrongPasswords: 0,
    };
    this.#connections.add(customer);
    const buffer = new Uint8Array(16 * 1024);
    const framer = new LineFramer(this.options.maxLineBytes);
    let reason = "closed";
    try {
      // Receive: bytes, framed into request lines.
      reading: for (let count; (count = await conn.read(buffer)) !== null;) {
        for (const frame of framer.push(buffer.subarray(0, count))) {
          await this.#answer(customer, frame);
          if (customer.wrongPasswords >= PASSWORD_TRIES) {
            reason = "wrong password";
            break reading;
          }
        }
      }
      if (reason === "closed") {
        for (const frame of framer.end()) await this.#answer(customer, frame);
      }
    } catch (error) {
      reason = this.stopping ? "shutdown" : leaveReasonOf(error);
    }
    this.#connections.delete(customer);
    this.#log(`${address} disconnected (${reason})`);
    closeQuietly(conn);
  }

  /** Answers one request line with one JSON line. */
  async #answer(customer: Customer, frame: Frame): Promise<void> {
    if (frame !== LINE_TOO_LONG && frame.trim() === "") return;
    customer.lastHeard = performance.now();
    const reply = frame === LINE_TOO_LONG
      ? failure(`request too long (over ${this.options.maxLineBytes} bytes)`)
      : !customer.authenticated
      ? this.#authenticate(customer, frame)
      : /^\/auth\b/i.test(frame.trim())
      ? { ok: true as const, message: "authenticated already" }
      : await this.#serveRequest(customer.address, frame);
    // Send: the reply, after the change is safely on disk.
    await writeAll(customer.conn, encodeLine(JSON.stringify(reply)));
  }

  /** Before /auth with the right password, a client may do nothing else. */
  #authenticate(customer: Customer, line: string): InventoryReply {
    const [command, password] = splitFirstWord(line.trim());
    if (command.toLowerCase() !== "/auth") {
      return failure("authenticate first: /auth PASSWORD");
    }
    if (passwordMatches(password, this.options.password ?? "")) {
      customer.authenticated = true;
      this.#log(`${customer.address} authenticated`);
      return { ok: true, message: "authenticated" };
    }
    customer.wrongPasswords++;
    this.#log(
      `${customer.address} sent a wrong password (${customer.wrongPasswords} of ${PASSWORD_TRIES})`,
    );
    return failure("wrong password");
  }

  #closeIdle(): void {
    const oldest = performance.now() - this.options.idleTimeoutMs;
    for (const customer of this.#connections) {
      if (customer.lastHeard >= oldest) continue;
      this.#log(`${customer.address} was idle: closing`);
      const idle = failure(
        `idle for ${this.options.idleTimeoutMs / 1000} s: disconnecting`,
      );
      writeAll(customer.conn, encodeLine(JSON.stringify(idle)))
        .catch(() => {})
        .finally(() => closeQuietly(customer.conn));
      this.#connections.delete(customer);
    }
  }

  async #serveRequest(address: string, line: string): Promise<InventoryReply> {
    let request;
    try {
      request = parseInventoryRequest(line);
    } catch (error) {
      if (error instanceof BadRequest) return failure(error.message);
      throw error;
    }
    const inventory = this.#inventory;
    if (request.action === "help") return { ok: true, message: INVENTORY_HELP };
    if (request.action === "view") {
      return { ok: true, inventory: inventory.stock };
    }
    const { action, item, quantity } = request;
    let message;
    try {
      message = action === "add"
        ? inventory.add(item, quantity)
        : inventory.remove(item, quantity);
    } catch (error) {
      if (error instanceof BadRequest) return failure(error.message);
      throw error;
    }
    try {
      await this.#dataFile?.save(() => inventory.stock);
    } catch (error) {
      // Not saved, so not done: undo the change and say why.
      if (action === "add") inventory.remove(item, quantity);
      else inventory.add(item, quantity);
      this.#log(`cannot save: ${(error as Error).message}`);
      return failure(`cannot save the inventory: ${(error as Error).message}`);
    }
    this.#log(`${address}: ${message}`);
    return { ok: true, message, inventory: inventory.stock };
  }

  /** Stops accepting, lets the last saves finish, closes every connection. */
  protected override async shutDown(): Promise<void> {
    this.#log("shutting down");
    clearInterval(this.#idleSweeper);
    this.listener.close();
    await this.finished;
    await this.#dataFile?.idle();
    for (const { conn } of this.#connections) {
      closeQuietly(conn);
    }
    this.#log("stopped");
  }

  #log(text: string): void {
    this.options.print(`${clockTime()} ${text}`);
  }
}

function failure(error: string): InventoryReply {
  return { ok: false, error };
}

// ---------------------------------------------------------------------------
// The data file: saved after every change, so nothing acknowledged is lost
// ---------------------------------------------------------------------------

/** The data file cannot be used: the message says why. */
export class DataFileError extends Error {}

/**
 * Reads the stock from `path`. A missing file is an empty stock.
 * @throws {DataFileError} when the file cannot be read or is not a stock
 */
export async function loadStock(path: string): Promise<Stock> {
  let text;
  try {
    text = await Deno.readTextFile(path);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return {};
    throw new DataFileError(`Cannot read "${path}": ${fileReason(error)}`);
  }
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch (error) {
    throw corrupt(path, `not valid JSON (${(error as Error).message})`);
  }
  if (typeof data !== "object" || data === null || Array.isArray(data)) {
    throw corrupt(path, 'not a JSON object like {"Soap": 200}');
  }
  for (const [item, quantity] of Object.entries(data)) {
    const valid = typeof quantity === "number" &&
      Number.isSafeInteger(quantity) &&
      quantity >= 1;
    if (!valid) {
      throw corrupt(
        path,
        `"${item}" has ${
          JSON.stringify(quantity)
        }, not a whole number of 1 or more`,
      );
    }
  }
  return data as Stock;
}

function corrupt(path: string, why: string): DataFileError {
  return new DataFileError(
    `Cannot load "${path}": ${why}. The file was left as it is.`,
  );
}

function fileReason(error: unknown): string {
  if (error instanceof Deno.errors.PermissionDenied) {
    return "permission denied (run with -A, or --allow-read and --allow-write)";
  }
  if (error instanceof Deno.errors.IsADirectory) return "it is a folder";
  return (error as Error).message;
}

/**
 * Saves the stock to a file so that a crash (even kill -9) at any moment
 * loses no change that was acknowledged: write a temporary file in the
 * same folder, flush it to the disk, then rename it over the old one. A
 * rename is atomic: the file is always either the old stock or the new.
 * Changes that come while a save runs are saved together in the next one.
 */
class DataFile {
  #waiting: { resolve: () => void; reject: (error: Error) => void }[] = [];
  #saving?: Promise<void>;

  constructor(readonly path: string) {}

  /**
   * Resolves once a save that includes the stock as it is now is on disk.
   * @param snapshot gives the stock at the moment the save starts
   */
  save(snapshot: () => Stock): Promise<void> {
    const saved = new Promise<void>((resolve, reject) => {
      this.#waiting.push({ resolve, reject });
    });
    this.#saving ??= this.#saveAll(snapshot);
    return saved;
  }

  /** Resolves when no save is running. */
  async idle(): Promise<void> {
    await this.#saving;
  }

  async #saveAll(snapshot: () => Stock): Promise<void> {
    while (this.#waiting.length > 0) {
      const batch = this.#waiting;
      this.#waiting = [];
      try {
        await this.#write(JSON.stringify(snapshot(), null, 2) + "\n");
        batch.forEach((waiter) => waiter.resolve());
      } catch (error) {
        const failed = new Error(fileReason(error));
        batch.forEach((waiter) => waiter.reject(failed));
      }
    }
    this.#saving = undefined;
  }

  async #write(text: string): Promise<void> {
    const temporary = `${this.path}.${Deno.pid}.tmp`;
    const file = await Deno.open(temporary, {
      write: true,
      create: true,
      truncate: true,
    });
    try {
      await writeAll(file, new TextEncoder().encode(text));
      await file.sync();
    } finally {
      file.close();
    }
    await Deno.rename(temporary, this.path);
  }
}

// ---------------------------------------------------------------------------
// The program
// ---------------------------------------------------------------------------

/**
 * Reads the server's flags.
 * @throws {UsageError} for a bad flag
 */
export function parseServerArgs(args: string[]): ServerArgs {
  const flags = parseFlags(args, {
    positionals: 0,
    string: [
      "port",
      "host",
      "name",
      "service",
      "data",
      "tls-cert",
      "tls-key",
      "password",
      ...Object.keys(LIMIT_FLAGS),
    ],
    boolean: ["iterative", "quiet", "help"],
    alias: {
      p: "port",
      n: "name",
      i: "iterative",
      q: "quiet",
      s: "service",
      h: "help",
    },
    default: {
      port: String(DEFAULT_PORT),
      host: "0.0.0.0",
      name: "server",
      service: "chat",
    },
  });
  const operatorName = String(flags.name);
  const invalid = nameProblem(operatorName);
  if (invalid) throw new UsageError(`Invalid --name: ${invalid}`);
  const service = parseChoice("service", flags.service, TCP_SERVICES);
  const dataFile = flags.data === undefined ? undefined : String(flags.data);
  if (dataFile !== undefined && service !== "inventory") {
    throw new UsageError("--data goes with --service inventory");
  }
  if (dataFile === "") throw new UsageError("--data needs a file name");
  const certFile = flags["tls-cert"] as string | undefined;
  const keyFile = flags["tls-key"] as string | undefined;
  if ((certFile === undefined) !== (keyFile === undefined)) {
    throw new UsageError("--tls-cert and --tls-key go together");
  }
  return {
    help: flags.help === true,
    service,
    port: parsePort(flags.port),
    host: String(flags.host),
    operatorName,
    iterative: flags.iterative === true,
    quiet: flags.quiet === true,
    dataFile,
    tlsFiles: certFile && keyFile ? { certFile, keyFile } : undefined,
    password: passwordFrom(flags.password),
    ...parseLimits(flags),
  };
}

/** The limit flags: each option's name, and the flag's unit and range. */
const LIMIT_FLAGS = {
  "max-line": { option: "maxLineBytes", min: 16, max: 1 << 24, scale: 1 },
  "max-pending": {
    option: "maxPendingBytes",
    min: 1024,
    max: 1 << 30,
    scale: 1,
  },
  "max-clients": { option: "maxClients", min: 1, max: 1_000_000, scale: 1 },
  "rate-limit": { option: "rateLimit", min: 0, max: 1_000_000, scale: 1 },
  burst: { option: "burst", min: 1, max: 1_000_000, scale: 1 },
  "idle-timeout": { option: "idleTimeoutMs", min: 0, max: 86_400, scale: 1000 },
} as const;

/** Reads the limit flags given; the others keep their defaults. */
function parseLimits(flags: ParsedFlags): Partial<typeof LIMITS> {
  const limits: Partial<Record<keyof typeof LIMITS, number>> = {};
  for (
    const [flag, { option, min, max, scale }] of Object.entries(LIMIT_FLAGS)
  ) {
    if (flags[flag] === undefined) continue;
    const whole = scale === 1;
    limits[option] = parseNumberFlag(flag, flags[flag], { min, max, whole }) *
      scale;
  }
  return limits;
}

/** What server.ts was asked to do. */
export interface ServerArgs extends Partial<typeof LIMITS> {
  help: boolean;
  service: typeof TCP_SERVICES[number];
  host: string;
  port: number;
  operatorName: string;
  iterative: boolean;
  quiet: boolean;
  dataFile?: string;
  tlsFiles?: { certFile: string; keyFile: string };
  password?: string;
}

/** The banner: where the server listens and how others can connect. */
export function bannerLines(server: ChatServer | InventoryServer): string[] {
  const { hostname, port } = server.addr;
  const mode = server.options.iterative
    ? "iterative: one client at a time"
    : "concurrent: every client at once";
  const inventory = server instanceof InventoryServer;
  const flags = `${port === DEFAULT_PORT ? "" : ` --port ${port}`}${
    inventory ? " --service inventory" : ""
  }`;
  const title = inventory ? "inventory service" : "chat server";
  const { tls, password } = server.options;
  const clientFlags = tls ? `${flags} --tls --ca CERT.pem` : flags;
  const ncCommand = (address: string) =>
    tls
      ? `openssl s_client -quiet -connect ${address}:${port}`
      : `nc ${address} ${port}`;
  return [
    `socklab ${title} (${mode}) listening on ${hostname}:${port}` +
    (tls ? ", with TLS" : ""),
    ...connectionHints(
      hostname,
      (address) =>
        `deno run -A client.ts ${address}${clientFlags}    or    ${
          ncCommand(address)
        }`,
    ),
    ...(password
      ? ["A password is set: clients must send /auth PASSWORD first."]
      : []),
    server instanceof InventoryServer
      ? inventoryStorageLine(server.options.dataFile)
      : `Type here to chat as "${server.options.operatorName}"; /who, /kick NAME, /quit. Ctrl-C stops the server.`,
  ];
}

function inventoryStorageLine(dataFile?: string): string {
  return dataFile
    ? `The stock is kept in "${dataFile}", saved after every change. Ctrl-C stops the server.`
    : "The stock lives in memory and is lost when the server stops (--data FILE keeps it). Ctrl-C stops the server.";
}

/**
 * Feeds the lines typed at the console to the server until input ends.
 * Ctrl-C on a raw terminal arrives as a key: it stops the server.
 */
async function readConsole(terminal: LineConsole, server: ChatServer) {
  const ending = await terminal.readLines((line) => server.operatorSays(line));
  if (ending === "interrupt") return server.stop();
  terminal.print(`${clockTime()} console input ended; the server goes on`);
}

/** Reads the certificate and key files, or exits with a clear message. */
async function readTlsFiles(
  { certFile, keyFile }: { certFile: string; keyFile: string },
): Promise<{ cert: string; key: string }> {
  const read = async (file: string) => {
    try {
      return await Deno.readTextFile(file);
    } catch (error) {
      console.error(`Cannot read "${file}": ${fileReason(error)}`);
      Deno.exit(1);
    }
  };
  return { cert: await read(certFile), key: await read(keyFile) };
}

async function main(): Promise<void> {
  const options = argsOrExit(parseServerArgs, USAGE);
  // The chat's operator types into the console; the inventory has none.
  const terminal = options.service === "chat" ? new LineConsole() : undefined;
  const print = (line: string) =>
    terminal ? terminal.print(line) : console.log(line);
  const tls = options.tlsFiles && await readTlsFiles(options.tlsFiles);
  let server;
  try {
    server = options.service === "chat"
      ? ChatServer.start({ ...options, tls, print })
      : await InventoryServer.start({ ...options, tls, print });
  } catch (error) {
    console.error(
      error instanceof DataFileError
        ? error.message
        : `Cannot listen on "${options.host}:${options.port}": ${
          networkReason(error)
        }`,
    );
    Deno.exit(1);
  }
  // Ready for Ctrl-C before the banner tells anyone the server is up.
  onStopSignals(() => server.stop());
  bannerLines(server).forEach(print);
  if (terminal && server instanceof ChatServer) readConsole(terminal, server);
  await server.finished;
  await server.stop();
  terminal?.restore();
  Deno.exit(0);
}

if (import.meta.main) main();
