#!/usr/bin/env -S deno run --allow-net --allow-sys=networkInterfaces
/**
 * socklab TCP server: the lab's group chat, which relays each line to all
 * the others, and its inventory service. Concurrent, or with `--iterative`
 * one client at a time while the others wait in the backlog.
 *
 * ```sh
 * deno run -A server.ts [--port 9999] [--iterative] [--service inventory]
 * ```
 *
 * Its socket steps, in order: 1. create, bind, listen (`listen`); 2. accept
 * (`acceptLoop`); 3. receive (`receiveLines`); 4. the protocol (`handleLine`,
 * which the chat hands to shared.ts's chat room); 5. send (`send`); 6. close
 * (`close`). Then the operator's console, what goes beyond the lab (limits,
 * password, TLS, the outbox), the inventory service, and `main`.
 * @module
 */

// From shared.ts: the lab's part first, then the program's tools and limits.
import { encodeLine, type Frame, LineFramer, writeAll } from "./shared.ts";
import { LINE_TOO_LONG, MAX_LINE_BYTES, type Trace } from "./shared.ts";
import { ChatRoom, errorLine, messageLine, noticeLine } from "./shared.ts";
import { cleanText, nameKey, parseChatInput, SAYS } from "./shared.ts";
import { INVENTORY, type InventoryReply, type Stock } from "./shared.ts";
import { addressText, DEFAULT_PORT, LineConsole, logLine } from "./shared.ts";
import { argsOrExit, type FlagRow, nameFlag, parseFlags } from "./shared.ts";
import { connectionHints, onStopSignals, UsageError } from "./shared.ts";
import { isClosedByUs, networkReason, Stoppable } from "./shared.ts";
import { passwordFrom, passwordMatches, splitFirstWord } from "./shared.ts";
import { RateLimit, sweepIdle } from "./shared.ts";

// --- 1. Create, bind, listen ------------------------------------------------

/** Creates a TCP socket, binds it to `host:port` and listens: one call in
 * Deno. The kernel then queues connections (the backlog) until `accept`. */
export function listen({ host, port, tls }: ServerOptions): Deno.Listener {
  if (tls) return Deno.listenTls({ hostname: host, port, ...tls });
  return Deno.listen({ hostname: host, port });
}

// --- 2. Accept --------------------------------------------------------------

// Takes each connection from the backlog and serves it. The iterative and
// the concurrent server differ by one `await`: the iterative one serves a
// client to the end before it accepts the next.
async function acceptLoop(server: TcpServer): Promise<void> {
  while (true) {
    let conn;
    try {
      conn = await server.listener.accept();
    } catch (error) {
      if (isClosedByUs(error)) return; // the server is stopping
      // A client that reset before its accept is gone: take the next one.
      // Out of file descriptors: wait a little for some to close.
      if (!/os error (23|24)\b/.test(String(error))) continue;
      server.log(`cannot accept a connection: ${networkReason(error)}`);
      await sleep(100);
      continue;
    }
    server.options.trace?.(`accept ${addressText(conn.remoteAddr)}`);
    // With a password or TLS, clients get in at once, then take turns
    // (beyond the lab: one that never gets in must not block the others).
    if (server.options.iterative && !server.takesTurns) {
      await server.serve(conn);
      const next = "waiting for the next client in the backlog";
      if (!server.stopping) server.log(next);
    } else {
      server.serve(conn);
    }
  }
}

// --- 3. Receive -------------------------------------------------------------

/** One connection: its socket, and what the server knows of it. */
class Client {
  readonly address: string; // host:port
  readonly host: string;
  readonly outbox: Outbox;
  name = ""; // its name in the chat; empty until it joins
  lastHeard = performance.now(); // when its last line came, for --idle-timeout
  leftBecause?: string; // set once, when it leaves, with the reason
  readonly closed = Promise.withResolvers<void>(); // its socket is closed
  greeted = false; // past TLS (if any), told what comes next
  admitted = false; // past TLS and the password (if any)
  admitTimer?: ReturnType<typeof setTimeout>; // closes it if it is too slow
  wrongPasswords = 0;
  readonly rate: RateLimit; // --rate-limit: how fast its lines are read
  nameTimer?: ReturnType<typeof setTimeout>; // chat: joins it as a guest
  constructor(readonly conn: Deno.Conn, options: ServerOptions) {
    this.address = addressText(conn.remoteAddr);
    this.host = (conn.remoteAddr as Deno.NetAddr).hostname;
    const label = () => this.name || this.address;
    const { maxPendingBytes, trace, rateLimit, burst } = options;
    this.outbox = new Outbox(conn, maxPendingBytes, label, trace);
    this.rate = new RateLimit(rateLimit, burst);
  }
}
type Handled = void | Promise<void>;

// Receive: hands each whole line to the server; returns why the connection
// ended. TCP is a byte stream: a read may hold half a line or many, so a
// LineFramer keeps bytes until a line end arrives.
async function receiveLines(server: TcpServer, client: Client) {
  const { maxLineBytes, trace } = server.options;
  const framer = new LineFramer(maxLineBytes);
  let buffer = new Uint8Array(1024);
  try {
    while (!client.leftBecause) {
      const count = await client.conn.read(buffer);
      if (count === null) break; // the client closed its side
      client.lastHeard = performance.now();
      const lines = framer.push(buffer.subarray(0, count));
      trace?.(
        `read ${count} bytes from ${client.name || client.address}: ` +
          `${lines.length} whole line(s), ${framer.keptBytes()} bytes kept for the next read`,
      );
      await handleAll(server, client, lines);
      // A read that fills the buffer is a burst: read more at a time.
      if (count === buffer.length && count < 16384) {
        buffer = new Uint8Array(count * 4);
      }
    }
    await handleAll(server, client, framer.end()); // a last line without "\n"
    return client.leftBecause ?? "closed";
  } catch (error) {
    if (client.leftBecause) return client.leftBecause;
    // The errors a socket gets when its peer goes away:
    const gone = /^(Connection(Reset|Aborted)|BrokenPipe|UnexpectedEof)$/;
    if (gone.test((error as Error).name)) return "reset";
    return `error: ${networkReason(error)}`;
  }
}

// Awaits only the promises (the inventory's saves): the chat handles a
// read's lines in one go, so what they send leaves together.
async function handleAll(server: TcpServer, client: Client, lines: Frame[]) {
  for (const line of lines) {
    const handled = server.onLine(client, line);
    if (handled) await handled;
  }
}

// --- The TCP server: each connection from accept to close -------------------

// What the chat and the inventory share; each says what a line means.
abstract class TcpServer extends Stoppable {
  readonly options: ServerOptions;
  readonly listener: Deno.Listener;
  readonly finished: Promise<void>; // settles when it stops accepting
  readonly #clients = new Set<Client>();
  // Wrong passwords by address, and when it may try again (authenticate).
  readonly guesses = new Map<string, { wrong: number; nextTry: number }>();
  readonly takesTurns: boolean; // iterative with a password or TLS: see letIn
  readonly #idleSweep;
  #turn = Promise.resolve(); // iterative: settles when the last in line goes
  protected readonly pacesAll: boolean = true; // else only before /auth

  // Creates, binds and listens (step 1), then accepts clients.
  protected constructor(options: Partial<ServerOptions>) {
    super();
    this.options = { ...DEFAULTS, ...options };
    this.listener = listen(this.options);
    const { iterative, password, tls, idleTimeoutMs } = this.options;
    this.takesTurns = iterative && !!(password || tls);
    const idle = `idle for ${idleTimeoutMs / 1000} s`; // --idle-timeout
    this.#idleSweep = sweepIdle(
      idleTimeoutMs,
      () => this.#clients,
      (client) => this.disconnect(client, idle, "idle"),
    );
    this.finished = acceptLoop(this);
  }
  /** The address actually bound (port 0 becomes a real port). */
  get addr(): Deno.NetAddr {
    return this.listener.addr as Deno.NetAddr;
  }
  /** One client, from accept to close. */
  async serve(conn: Deno.Conn): Promise<void> {
    const client = new Client(conn, this.options);
    this.log(`connection from ${client.address}`);
    const { maxClients, maxPerAddress, password } = this.options;
    let fromHost = 0; // connections from its address
    for (const { host } of this.#clients) if (host === client.host) fromHost++;
    const full = this.#clients.size >= maxClients;
    if (full) return await refuse(this, client, "server full");
    const tooMany = "too many connections from your address";
    if (fromHost >= maxPerAddress) return await refuse(this, client, tooMany);
    this.#clients.add(client);
    client.admitTimer = setTimeout(() => {
      // Before the TLS handshake nothing can be said: just close.
      if (!client.greeted) closeQuietly(client.conn);
      this.disconnect(client, "too slow to get in");
    }, this.options.admitTimeoutMs);
    let noTls; // TLS: the handshake comes first; why it failed, if it did
    try {
      if ("handshake" in conn) await (conn as Deno.TlsConn).handshake();
    } catch (error) {
      noTls = client.leftBecause ?? `no TLS handshake: ${networkReason(error)}`;
    }
    client.greeted = true;
    if (!noTls && password) this.askPassword(client);
    else if (!noTls) await this.letIn(client);
    const reason = noTls ?? await receiveLines(this, client);
    this.close(client, reason);
    await client.closed.promise;
  }
  /** Past TLS and the password: a client may now use the service. */
  letIn(client: Client): Handled {
    clearTimeout(client.admitTimer);
    client.admitted = true;
    if (!this.takesTurns) return this.admit(client);
    // Iterative: its lines wait (unread) until the one before it has gone.
    const turn = this.#turn;
    this.#turn = turn.then(() => client.closed.promise);
    return turn.then(() => {
      if (!client.leftBecause) this.admit(client);
    });
  }
  /** A line: too long, before the password, or the service's to handle. */
  onLine(client: Client, line: Frame): Handled {
    if (client.leftBecause) return;
    // The flood limit: a client over --rate-limit is read more slowly, so
    // TCP slows its sender down; no line is lost.
    const wait = client.admitted && !this.pacesAll ? 0 : client.rate.wait();
    if (wait > 0) return sleep(wait).then(() => this.onLine(client, line));
    if (line === LINE_TOO_LONG) {
      const who = client.name || client.address;
      this.log(`${who} sent a line that was too long`);
      return this.sendError(client, this.tooLong);
    }
    if (!client.admitted) return authenticate(this, client, line);
    return this.handleLine(client, line);
  }

  // --- 4. The protocol: what a line means is the service's ------------------

  /** A client may now use the service (no password, or it gave it). */
  abstract admit(client: Client): void;
  protected askPassword(_client: Client): void {} // with --password
  protected abstract handleLine(client: Client, line: string): Handled;
  /** An error, in the service's words: `! text`, or a JSON reply. */
  abstract readonly errorText: (text: string) => string;
  protected abstract readonly tooLong: string; // for a line that is too long

  // --- 5. Send --------------------------------------------------------------

  // Send: into the client's outbox, which writes in the background, so a
  // slow reader delays nobody. One with too much unread output is dropped.
  send(client: Client, bytes: Uint8Array): void {
    if (client.leftBecause || client.outbox.send(bytes)) return;
    const tooSlow = this.errorText("too much unread output: disconnecting");
    client.outbox.send(encodeLine(tooSlow), true);
    this.close(client, "too slow");
  }
  sendLine(client: Client, line: string): void {
    this.send(client, encodeLine(line));
  }
  sendError(client: Client, text: string): void {
    this.sendLine(client, this.errorText(text));
  }

  // --- 6. Close -------------------------------------------------------------

  /** Closes a client's connection once its last lines are sent. */
  close(client: Client, reason: string): void {
    if (client.leftBecause) return;
    client.leftBecause = reason;
    clearTimeout(client.admitTimer);
    this.#clients.delete(client);
    this.left(client, reason);
    client.outbox.close(reason).then(client.closed.resolve);
  }
  disconnect(client: Client, why: string, reason = why): void {
    this.sendError(client, `${why}: disconnecting`);
    this.close(client, reason);
  }
  protected left(client: Client, reason: string): void {
    this.log(`${client.address} disconnected (${reason})`);
  }
  /** Stops accepting, tells every client, closes each once its lines are out. */
  protected override async shutDown(): Promise<void> {
    this.log("shutting down");
    closeQuietly(this.listener);
    clearInterval(this.#idleSweep);
    await this.beforeShutdown();
    const clients = [...this.#clients];
    for (const client of clients) {
      if (this.goodbye) this.sendLine(client, this.goodbye);
      this.close(client, "shutdown");
    }
    await Promise.all(clients.map((client) => client.closed.promise));
    await this.finished;
    this.log("stopped");
  }
  protected async beforeShutdown(): Promise<void> {} // e.g. finish saving
  protected readonly goodbye?: string; // the chat says it stops
  log = (text: string) => this.options.print(logLine(text));
}

function closeQuietly(socket: { close(): void }): void {
  try {
    socket.close();
  } catch { /* closed already */ }
}

// --- 4. The chat's protocol: the chat room's rules over TCP -----------------

const CONSOLE_COMMANDS = "/who, /kick NAME, /quit"; // the operator's
/** A running chat server: each line goes to the chat room (shared.ts). */
export class ChatServer extends TcpServer {
  readonly room = new ChatRoom<Client>({
    send: (client, line) => this.sendLine(client, line),
    broadcast: (line, except) => this.#broadcast(line, except),
    quit: (client) => this.close(client, "quit"),
    show: (line) => this.options.quiet || this.options.print(line),
    log: (text) => this.log(text),
  }, {
    mode: this.options.iterative
      ? "an iterative server: one client at a time, so it is just you and the operator"
      : "a group chat: each line you send goes to everyone",
    operator: this.options.operatorName,
    announceLimit: this.options.announceLimit,
  });
  #batch: string[] = [];
  #batchSkips?: Client;
  /** Creates, binds and listens, then accepts clients. */
  static start(options: Partial<ServerOptions> = {}): ChatServer {
    return new ChatServer(options);
  }
  // A client joins on its first line, or as a guest if none comes soon:
  // one whose first line is `/nick NAME` (client.ts) joins under that name.
  admit(client: Client): void {
    const join = () => this.#join(client);
    client.nameTimer = setTimeout(join, this.options.nameWaitMs);
  }
  protected override askPassword(client: Client): void {
    this.sendLine(client, SAYS.passwordNeeded);
  }
  #join(client: Client, name?: string): void {
    clearTimeout(client.nameTimer);
    client.nameTimer = undefined;
    this.room.join(client, name);
    if (!this.options.iterative) return;
    const others = "other clients wait in the backlog until it leaves";
    this.log(`serving ${client.name} alone; ${others}`);
  }
  /** The protocol: the first line may name the client; then, the room's rules. */
  protected handleLine(client: Client, line: string): void {
    const input = parseChatInput(line);
    if (client.nameTimer) {
      const named = input.kind === "command" && input.command === "/nick";
      const problem = named ? this.room.nameProblem(input.rest) : "";
      if (problem) this.sendError(client, problem);
      this.#join(client, named && !problem ? input.rest : undefined);
      if (named) return;
    }
    if (input.kind === "command" && input.command === "/auth") {
      return this.sendLine(client, noticeLine("you are in already"));
    }
    this.room.handle(client, line);
  }
  // Send to everyone but `except`. A read's lines are gathered, encoded
  // once for all, and go as one piece into each client's outbox.
  #broadcast(line: string, except?: Client): void {
    if (except !== this.#batchSkips) this.#sendBatch();
    if (this.#batch.push(line) === 1) queueMicrotask(() => this.#sendBatch());
    this.#batchSkips = except;
  }
  #sendBatch(): void {
    if (this.#batch.length === 0) return;
    const text = this.#batch.join("\n");
    const [bytes, skip] = [encodeLine(text), this.#batchSkips];
    this.#batch = [];
    for (const client of this.room.members.values()) {
      if (client !== skip) this.send(client, bytes);
    }
  }
  /** A line to one client comes after the room's lines sent before it. */
  override sendLine(client: Client, line: string): void {
    this.#sendBatch();
    super.sendLine(client, line);
  }
  readonly errorText = errorLine;
  protected readonly tooLong =
    `line too long (over ${this.options.maxLineBytes} bytes): it was not sent`;

  /** Close: the room tells the others the client left. */
  protected override left(client: Client, reason: string): void {
    clearTimeout(client.nameTimer);
    if (client.name) this.room.leave(client, reason);
    else this.log(`${client.address} left (${reason})`);
  }
  /** Every connection is told, joined yet or not. */
  protected override readonly goodbye = SAYS.shuttingDown;

  // --- The operator's console -----------------------------------------------

  /** One line typed at the server's console: a message, or a command. */
  operatorSays(line: string): void {
    const input = parseChatInput(line);
    const { print, operatorName } = this.options;
    if (input.kind === "empty") return;
    if (input.kind === "message") {
      const unheard = "* no one is connected to hear that";
      if (this.room.members.size === 0) return print(unheard);
      return this.#broadcast(messageLine(operatorName, input.text));
    }
    const { command, rest } = input;
    if (command === "/who") return print(this.room.whoLine());
    if (command === "/kick") {
      const client = this.room.members.get(nameKey(rest));
      if (rest === "") return print(errorLine("usage: /kick NAME"));
      if (!client) return print(errorLine(`no one named "${rest}"`));
      this.sendLine(client, noticeLine("you were kicked by the operator"));
      return this.close(client, "kicked");
    }
    if (command === "/quit") return void this.stop();
    if (command === "/help") {
      return print(`* console: TEXT to send to everyone, ${CONSOLE_COMMANDS}`);
    }
    print(errorLine(`unknown command "${command}": try ${CONSOLE_COMMANDS}`));
  }
}

// --- Beyond the lab: options and limits, password, TLS, the outbox ----------
// The lab's steps are all above; what follows keeps real clients in check.

/** How a server runs, with its defaults. */
const DEFAULTS = {
  host: "0.0.0.0",
  port: DEFAULT_PORT, // 0 picks a free port
  operatorName: "server", // reserved for the console
  iterative: false, // serve one client at a time
  maxLineBytes: MAX_LINE_BYTES,
  maxPendingBytes: 1024 * 1024, // unread bytes before a client is dropped
  maxClients: 1000,
  rateLimit: 20, // lines read a second per client (0: no limit), and a burst
  burst: 40,
  idleTimeoutMs: 0, // silent connections are closed after this (0: never)
  maxPerAddress: 64, // connections at once from one address
  admitTimeoutMs: 30_000, // to finish TLS and /auth, or it is closed
  guessWaitMs: 1000, // a wrong password's wait, doubled each time up to 32×
  nameWaitMs: 250, // chat: how long a new client may take to send /nick
  announceLimit: 100, // chat: joins and leaves are told up to this many
  quiet: false, // chat: keep the room's messages off the console
  print: (line: string) => console.log(line),
};
/** The options of both services: the defaults, and what has none. */
export type ServerOptions = typeof DEFAULTS & {
  password?: string;
  tls?: { cert: string; key: string }; // TLS: certificate and key, as PEM
  dataFile?: string; // inventory: the file that keeps the stock
  trace?: Trace; // prints each socket step, for study (--trace)
};
/** Tells a connection it cannot come in (`why`), and closes it. */
async function refuse(server: TcpServer, client: Client, why: string) {
  server.log(`refused ${client.address}: ${why}`);
  const told = writeAll(client.conn, encodeLine(server.errorText(why)));
  await Promise.race([told, sleep(1000)]).catch(() => {}); // gone already
  closeQuietly(client.conn);
}
function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Wrong passwords a connection may send before it is closed. */
const PASSWORD_TRIES = 3;
// Before `/auth` with the right password, a client may do nothing else.
// Against guessing, each wrong password makes its address wait longer (1 s,
// 2 s, 4 s, up to 32 s) before its next try, however many connections it
// opens. A right one clears the address.
function authenticate(server: TcpServer, client: Client, line: string) {
  const [command, given] = splitFirstWord(line.trim());
  if (command === "") return;
  if (command.toLowerCase() !== "/auth") {
    return server.sendError(client, SAYS.authenticateFirst);
  }
  const { guesses, options } = server;
  const now = performance.now();
  const guess = guesses.get(client.host) ?? { wrong: 0, nextTry: now };
  const wait = Math.ceil((guess.nextTry - now) / 1000);
  if (wait > 0) {
    const tooMany = "too many wrong passwords from your address";
    return server.sendError(client, `${tooMany}: try again in ${wait} s`);
  }
  // The password itself is never logged.
  if (passwordMatches(given, options.password ?? "")) {
    server.log(`${client.address} authenticated`);
    guesses.delete(client.host);
    return server.letIn(client);
  }
  if (guesses.size >= 10_000) guesses.clear(); // stays bounded
  guess.wrong++;
  guess.nextTry = now + options.guessWaitMs * 2 ** Math.min(guess.wrong - 1, 5);
  guesses.set(client.host, guess);
  client.wrongPasswords++;
  const tries = `${client.wrongPasswords} of ${PASSWORD_TRIES}`;
  server.log(`${client.address} sent a wrong password (${tries})`);
  server.sendError(client, SAYS.wrongPassword);
  if (client.wrongPasswords < PASSWORD_TRIES) return;
  server.disconnect(client, "too many wrong passwords", "wrong password");
}
/** How long a leaving client may take to receive its last lines. */
const FINAL_FLUSH_MS = 3000;
/** A queued piece's objects, counted with its bytes against --max-pending. */
const PIECE_COST = 128;
/** Why the outbox: each client has its own, so a slow reader delays nobody
 * else, and it is capped, so such a client cannot grow the server's memory
 * without bound. What a turn of the event loop queues goes in one write. */
export class Outbox {
  #pending: Uint8Array[] = [];
  #unsent = 0; // what is queued or being written, with PIECE_COST each
  #writing?: Promise<void>;
  #joined = new Uint8Array(0); // joins big writes, reused
  #stopped = false; // closing, or the client has gone
  constructor(
    readonly conn: Deno.Conn,
    readonly maxPendingBytes: number,
    readonly label: () => string,
    readonly trace: Trace,
  ) {}
  /** False when too much is waiting already; `force` passes the cap. */
  send(bytes: Uint8Array, force = false): boolean {
    if (this.#stopped) return true;
    const cost = bytes.length + PIECE_COST;
    if (!force && this.#unsent + cost > this.maxPendingBytes) return false;
    this.#pending.push(bytes);
    this.#unsent += cost;
    this.#writing ??= this.#writeQueued();
    return true;
  }
  get halfFull(): boolean {
    return this.#unsent > this.maxPendingBytes / 2;
  }
  emptied = async () => await this.#writing;
  /** Takes no more; sends what is queued (a few seconds at most), then closes. */
  async close(reason: string): Promise<void> {
    this.#stopped = true;
    const timer = setTimeout(() => closeQuietly(this.conn), FINAL_FLUSH_MS);
    await this.#writing;
    clearTimeout(timer);
    // Close: release the socket; the client sees the end of the stream.
    closeQuietly(this.conn);
    this.trace?.(`close ${this.label()}: ${reason}`);
  }
  // All the pieces in one buffer, in order: one write, not one each. Over
  // 4 KiB, into this outbox's own buffer, kept for the next time: a fresh
  // big buffer for each write doubled the burst's CPU (bench/README.md).
  #join(pieces: Uint8Array[]): Uint8Array {
    if (pieces.length === 1) return pieces[0];
    const size = pieces.reduce((sum, piece) => sum + piece.length, 0);
    const big = size > 4096;
    if (big && this.#joined.length < size) this.#joined = new Uint8Array(size);
    const joined = big ? this.#joined.subarray(0, size) : new Uint8Array(size);
    let offset = 0;
    for (const piece of pieces) {
      joined.set(piece, offset);
      offset += piece.length;
    }
    return joined;
  }
  async #writeQueued(): Promise<void> {
    await endOfTurn(); // what every read of this turn sends goes too
    while (this.#pending.length > 0) {
      const pieces = this.#pending;
      this.#pending = [];
      const bytes = this.#join(pieces);
      try {
        const count = await writeAll(this.conn, bytes);
        const how = count > 1 ? `sent in ${count} writes` : "all sent";
        this.trace?.(`write ${bytes.length} bytes to ${this.label()} (${how})`);
      } catch {
        this.#stopped = true; // gone: its receive loop says why
        this.#pending = [];
      }
      this.#unsent -= bytes.length + pieces.length * PIECE_COST;
    }
    this.#writing = undefined;
  }
}

let turnEnds: Promise<void> | undefined;
/** Settles once the event loop's turn ends: one timer for all who wait. */
function endOfTurn(): Promise<void> {
  return turnEnds ??= new Promise((resolve) =>
    setTimeout(() => resolve(turnEnds = undefined), 0)
  );
}

// --- The inventory service: one request and one JSON reply per line ---------

type Change = { action: "add" | "remove"; item: string; quantity: number };
type InventoryRequest = Change | { action: "view" } | { action: "help" };
/** A request that cannot be served, with the reason for the client. */
class BadRequest extends Error {}
/** Refuses the request unless `condition` holds (TypeScript then knows it). */
function check(condition: unknown, problem: string): asserts condition {
  if (!condition) throw new BadRequest(problem);
}
// A request is a JSON object, or the same as words for nc users (`add Green
// Tea 5`): both give the same fields, checked here once. Why JSON, not
// pickle: JSON is data only, never run.
function parseRequest(line: string): InventoryRequest {
  const text = line.trim();
  const json = /^[[{"\d-]|^(true|false|null)$/.test(text);
  const { action, item, quantity } = json ? fromJson(text) : fromWords(text);
  const { actions, maxItemLength: max, maxQuantity: most } = INVENTORY;
  check(action !== undefined, 'missing "action"');
  check(typeof action === "string", '"action" must be a string');
  if (action === "view" || action === "help") return { action };
  const shown = action.length > 20 ? action.slice(0, 20) + "..." : action;
  const unknown = `unknown action "${shown}": use ${actions.join(", ")}`;
  check(action === "add" || action === "remove", unknown);
  check(item !== undefined, 'missing "item"');
  check(quantity !== undefined, 'missing "quantity"');
  check(typeof item === "string", '"item" must be a string');
  const name = item.trim();
  check(name !== "", "an item name cannot be empty");
  // Not zero-width characters alone; the length is in characters, not UTF-16.
  check(/[^\p{Cf}\p{Z}]/u.test(name), "an item name needs a visible character");
  check([...name].length <= max, `an item name is ${max} characters at most`);
  const clean = cleanText(name) === name;
  check(clean, "an item name cannot hold control characters");
  const whole = typeof quantity === "number" && Number.isInteger(quantity);
  const range = `the quantity must be a whole number from 1 to ${most}`;
  check(whole && quantity >= 1 && quantity <= most, range);
  return { action, item: name, quantity };
}

function fromJson(text: string): Record<string, unknown> {
  let value;
  try {
    value = JSON.parse(text);
  } catch (error) {
    throw new BadRequest(`malformed JSON: ${(error as Error).message}`);
  }
  const object = !!value && typeof value === "object" && !Array.isArray(value);
  check(object, 'a request must be a JSON object, like {"action":"view"}');
  return value;
}
/** `add Green Tea 5` as the fields of the same request in JSON. */
function fromWords(text: string): Record<string, unknown> {
  const words = text.split(/\s+/);
  const lower = words[0].toLowerCase(); // words are not case-sensitive
  const action = INVENTORY.actions.includes(lower) ? lower : words[0];
  const change = action === "add" || action === "remove";
  check(!change || words.length >= 3, `usage: ${action} ITEM QUANTITY`);
  const last = words.at(-1)!;
  const quantity = /^\d+$/.test(last) ? Number(last) : NaN;
  return { action, item: words.slice(1, -1).join(" "), quantity };
}

/** The most items the stock holds: each reply carries the whole stock. */
const MAX_ITEMS = 1000;
/** A change, the address it came from, and its reply once it is saved. */
type Queued = [Change, string, PromiseWithResolvers<InventoryReply>];
/** A running inventory server: the same sockets, another protocol. */
export class InventoryServer extends TcpServer {
  protected override readonly pacesAll = false; // a request waits its save
  #stock = new Map<string, number>(); // as on disk: shows a change once saved
  #dataFile?: DataFile;
  #queued: Queued[] = []; // changes for the next save
  #committing?: Promise<void>;
  /** Takes the data file, if any (or throws a FileError); listens. */
  static async start(options: Partial<ServerOptions> = {}) {
    const path = options.dataFile;
    const [file, stock] = path ? await DataFile.open(path) : [];
    const server = new InventoryServer(options);
    server.#dataFile = file;
    server.#stock = new Map(Object.entries(stock ?? {}));
    return server;
  }
  get stock(): Stock {
    return Object.fromEntries(this.#stock);
  }
  /** After /auth with the right password: a reply says so. */
  admit(client: Client): void {
    const reply = JSON.stringify({ ok: true, message: "authenticated" });
    if (this.options.password) this.sendLine(client, reply);
  }
  /** Answers one request line with one JSON line, once a change is saved. */
  protected async handleLine(client: Client, line: string): Promise<void> {
    if (line.trim() === "") return;
    // Its replies wait unread: answer no more until they are out.
    if (client.outbox.halfFull) await client.outbox.emptied();
    const reply = await this.#answer(client.address, line).catch((error) => {
      if (error instanceof BadRequest) return failure(error.message);
      throw error;
    });
    this.sendLine(client, JSON.stringify(reply));
  }
  async #answer(address: string, line: string): Promise<InventoryReply> {
    if (/^\s*\/auth\b/i.test(line)) {
      return { ok: true, message: "authenticated already" };
    }
    const request = parseRequest(line);
    if (request.action === "help") return { ok: true, message: INVENTORY.help };
    if (request.action === "view") return { ok: true, inventory: this.stock };
    const done = Promise.withResolvers<InventoryReply>();
    this.#queued.push([request, address, done]);
    this.#committing ??= this.#commitQueued();
    return await done.promise; // once it is saved, or refused
  }
  // The changes queued meanwhile are applied to a copy of the stock and
  // saved together; only then is the copy the stock and each one done. A
  // failed save changes nothing, so memory and file always agree.
  async #commitQueued(): Promise<void> {
    while (this.#queued.length > 0) {
      const batch = this.#queued.splice(0); // all queued so far
      const next = new Map(this.#stock);
      const replies = batch.map(([change]) => applyChange(next, change));
      const inventory = Object.fromEntries(next);
      const problem = await this.#dataFile?.save(inventory);
      if (problem) this.log(`cannot save: ${problem}`);
      else this.#stock = next;
      const unsaved = failure(`cannot save the inventory: ${problem}`);
      batch.forEach(([, address, done], i) => {
        if (!replies[i].ok) return done.resolve(replies[i]);
        if (problem) return done.resolve(unsaved);
        this.log(`${address}: ${replies[i].message}`);
        done.resolve({ ...replies[i], inventory });
      });
    }
    this.#committing = undefined;
  }
  readonly errorText = (text: string) => JSON.stringify(failure(text));
  protected readonly tooLong =
    `request too long (over ${this.options.maxLineBytes} bytes)`;
  protected override async beforeShutdown(): Promise<void> {
    await this.#committing;
    this.#dataFile?.lock.close(); // lets the lock go
  }
}

/** Adds or removes in `stock`, or says why not: all of a change, or none. */
function applyChange(
  stock: Map<string, number>,
  { action, item, quantity }: Change,
): InventoryReply {
  const before = stock.get(item) ?? 0;
  const after = action === "add" ? before + quantity : before - quantity;
  const most = Number.MAX_SAFE_INTEGER;
  if (after > most) {
    return failure(`cannot add: ${item} would pass ${most} in stock`);
  }
  if (before === 0 && after < 0) return failure(`no ${item} in stock`);
  if (after < 0) return failure(`only ${before} ${item} in stock`);
  if (before === 0 && stock.size >= MAX_ITEMS) {
    return failure(`the inventory holds ${MAX_ITEMS} different items at most`);
  }
  // An item that reaches 0 leaves the stock.
  if (after === 0) stock.delete(item);
  else stock.set(item, after);
  const [verb, to] = action === "add" ? ["Added", "to"] : ["Removed", "from"];
  const message = `${verb} ${quantity} ${item}(s) ${to} the inventory.`;
  return { ok: true, message };
}
function failure(error: string): InventoryReply {
  return { ok: false, error };
}

// --- The data file: each change is saved before it is acknowledged ----------

/** A file (the data file, a PEM file) cannot be used: the message says why. */
export class FileError extends Error {}

/** Reads the stock (a missing file is an empty one), or a FileError. */
async function loadStock(path: string): Promise<Stock> {
  const left = "The file was left as it is.";
  const corrupt = (why: string) =>
    new FileError(`Cannot load "${path}": ${cleanText(why)}. ${left}`);
  let data;
  try {
    data = JSON.parse(await Deno.readTextFile(path));
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return {};
    if (error instanceof SyntaxError) {
      throw corrupt(`not valid JSON (${error.message})`);
    }
    throw new FileError(`Cannot read "${path}": ${fileReason(error)}`);
  }
  const object = !!data && typeof data === "object" && !Array.isArray(data);
  if (!object) throw corrupt('not a JSON object like {"Soap": 200}');
  for (const [item, quantity] of Object.entries(data)) {
    if (Number.isSafeInteger(quantity) && (quantity as number) >= 1) continue;
    const has = `${JSON.stringify(item)} has ${JSON.stringify(quantity)}`;
    throw corrupt(`${has}, not a whole number of 1 or more`);
  }
  return data;
}
function fileReason(error: unknown): string {
  if (error instanceof Deno.errors.PermissionDenied) {
    return "permission denied (run with -A, or --allow-read and --allow-write)";
  }
  if (error instanceof Deno.errors.IsADirectory) return "it is a folder";
  if (error instanceof Deno.errors.NotFound) return "no such file or folder";
  return (error as Error).message;
}

// The stock's file, for one server alone (a lock, `FILE.lock`, that the
// system lets go when the process ends, even on kill -9). A save writes a
// temporary file, flushes it to the disk, and renames it over the old one:
// a rename is atomic, so the file is always the old stock or the new.
class DataFile {
  private constructor(readonly path: string, readonly lock: Deno.FsFile) {}
  /** Takes the file for this server, and its stock; or a FileError. */
  static async open(path: string): Promise<[DataFile, Stock]> {
    const cannot = (why: string) =>
      new FileError(`Cannot use "${path}": ${why}`);
    const lock = await Deno.open(`${path}.lock`, { write: true, create: true })
      .catch((error) => Promise.reject(cannot(fileReason(error))));
    try {
      if (!await lock.tryLock(true)) {
        throw cannot(`another server is using it (it holds "${path}.lock")`);
      }
      await Deno.remove(`${path}.tmp`).catch(() => {}); // a killed save's
      return [new DataFile(path, lock), await loadStock(path)];
    } catch (error) {
      lock.close();
      throw error;
    }
  }
  /** Saves `stock`: @returns undefined once it is on disk, else why not */
  async save(stock: Stock): Promise<string | undefined> {
    const temporary = `${this.path}.tmp`;
    try {
      const text = JSON.stringify(stock, null, 2) + "\n";
      await Deno.writeTextFile(temporary, text);
      using file = await Deno.open(temporary, { write: true });
      await file.sync(); // on the disk, not just in the kernel's cache
      await Deno.rename(temporary, this.path);
    } catch (error) {
      await Deno.remove(temporary).catch(() => {});
      return fileReason(error);
    }
  }
}

// --- The program: flags, usage, banner, main --------------------------------

/** A flag; a limit flag also names the option it sets, and its unit (ms). */
type ServerFlag = FlagRow & { option?: keyof ServerOptions; unit?: number };

const FLAGS: Record<string, ServerFlag> = {
  port: { short: "p", port: true, default: String(DEFAULT_PORT) },
  host: { default: "0.0.0.0" },
  name: { short: "n", default: "server" },
  iterative: { short: "i", on: true },
  quiet: { short: "q", on: true },
  trace: { on: true },
  service: { short: "s", choices: ["chat", "inventory"], default: "chat" },
  data: {},
  "tls-cert": {},
  "tls-key": {},
  password: {},
  "max-line": { range: [16, 1 << 24], option: "maxLineBytes" },
  "max-clients": { range: [1, 1_000_000], option: "maxClients" },
  "max-per-address": { range: [1, 1_000_000], option: "maxPerAddress" },
  "max-pending": { range: [1024, 1 << 30], option: "maxPendingBytes" },
  "rate-limit": { range: [0, 1_000_000], option: "rateLimit" },
  burst: { range: [1, 1_000_000], option: "burst" },
  "idle-timeout": { range: [0, 86_400], option: "idleTimeoutMs", unit: 1000 },
};

const USAGE = `socklab TCP chat server

USAGE:
  deno run -A server.ts [OPTIONS]

OPTIONS:
  -p, --port <PORT>   Port to listen on (default ${DEFAULT_PORT}; 0 picks a free one)
      --host <HOST>   Address to listen on (default 0.0.0.0: every interface)
  -n, --name <NAME>   The operator's name in the chat (default "server")
  -i, --iterative     Serve one client at a time; the others wait their turn
  -q, --quiet         Chat: keep the room's messages off the console (log lines only)
      --trace         Print each socket step as it happens (accept, read, write, close)
  -s, --service <chat|inventory>  The service (default chat)
      --data <FILE>   Inventory: keep the stock in FILE, saved after every change
  -h, --help          Show this help

SECURITY AND LIMITS (see the README; the default limits never bother normal use):
      --tls-cert <FILE> --tls-key <FILE>  Speak TLS with this certificate and key (PEM)
      --password <SECRET>        Clients must send "/auth SECRET" first; or set
                                 SOCKLAB_PASSWORD, which stays out of the process list
      --max-line <BYTES>         Longest line a client may send (default 4096)
      --max-clients <N>          Connections at once (default 1000)
      --max-per-address <N>      Connections at once from one address (default 64)
      --max-pending <BYTES>      Unread output before a client is dropped (default 1048576)
      --rate-limit <N>           Lines read a second per client (chat, and before /auth);
                                 faster senders are slowed down; 0 is no limit (default 20)
      --burst <N>                Chat: lines at once above the rate (default 40)
      --idle-timeout <SECONDS>   Disconnect clients silent this long (default: never)

At the server's console, TEXT goes to every client as <NAME> TEXT; /who lists
who is online, /kick NAME disconnects NAME, /quit tells all and stops (as Ctrl-C).`;

/** Reads the server's flags. @throws {UsageError} for a bad flag */
export function parseServerArgs(args: string[]) {
  const flags = parseFlags(args, FLAGS, 0);
  const { data: dataFile, "tls-cert": certFile, "tls-key": keyFile } =
    flags as Record<string, string | undefined>;
  if (dataFile !== undefined && flags.service !== "inventory") {
    throw new UsageError("--data goes with --service inventory");
  }
  if (dataFile === "") throw new UsageError("--data needs a file name");
  if ((certFile === undefined) !== (keyFile === undefined)) {
    throw new UsageError("--tls-cert and --tls-key go together");
  }
  // Only the limits given: the others keep the server's defaults.
  const limits: Record<string, number> = {};
  for (const [flag, { option, unit = 1 }] of Object.entries(FLAGS)) {
    const value = flags[flag] as number | undefined;
    if (option && value !== undefined) limits[option] = value * unit;
  }
  return {
    help: flags.help,
    service: flags.service as "chat" | "inventory",
    port: flags.port as number,
    host: flags.host as string,
    operatorName: nameFlag(flags.name),
    iterative: flags.iterative === true,
    quiet: flags.quiet === true,
    dataFile,
    tlsFiles: certFile && keyFile ? [certFile, keyFile] : undefined,
    password: passwordFrom(flags.password),
    tracing: flags.trace === true,
    ...limits as Partial<ServerOptions>,
  };
}
/** The banner: where the server listens and how others can connect. */
export function bannerLines(server: ChatServer | InventoryServer): string[] {
  const { hostname, port } = server.addr;
  const { iterative, tls, password, operatorName, dataFile } = server.options;
  const inventory = server instanceof InventoryServer;
  // The client's flags: only those that differ from its defaults.
  const flags = (port === DEFAULT_PORT ? "" : ` --port ${port}`) +
    (inventory ? " --service inventory" : "") +
    (tls ? " --tls --ca CERT.pem" : "");
  const commands = (address: string) =>
    `deno run -A client.ts ${address}${flags}    or    ` +
    (tls ? `openssl s_client -quiet -connect ${address}:` : `nc ${address} `) +
    port;
  const mode = iterative
    ? "iterative: one client at a time"
    : "concurrent: every client at once";
  const title = inventory ? "inventory service" : "chat server";
  const where = `${hostname}:${port}${tls ? ", with TLS" : ""}`;
  const auth = "A password is set: clients must send /auth PASSWORD first.";
  const use = !inventory
    ? `Type here to chat as "${operatorName}"; ${CONSOLE_COMMANDS}.`
    : dataFile
    ? `The stock is kept in "${dataFile}", saved after every change.`
    : "The stock lives in memory and is lost when the server stops (--data FILE keeps it).";
  return [
    `socklab ${title} (${mode}) listening on ${where}`,
    ...connectionHints(hostname, commands),
    ...(password ? [auth] : []),
    `${use} Ctrl-C stops the server.`,
  ];
}

async function main(): Promise<void> {
  const { tlsFiles, tracing, ...options } = argsOrExit(parseServerArgs, USAGE);
  const terminal = new LineConsole();
  const print = (line: string) => terminal.print(line);
  const trace = tracing ? (step: string) => print(logLine(step)) : undefined;
  let server;
  try {
    const read = (file: string) =>
      Deno.readTextFile(file).catch((error) => {
        throw new FileError(`Cannot read "${file}": ${fileReason(error)}`);
      });
    const [cert, key] = await Promise.all((tlsFiles ?? []).map(read));
    const tls = tlsFiles && { cert, key }; // an empty file: listenTls says so
    // Both services start the same way; the chat's start is not async.
    const Service = options.service === "chat" ? ChatServer : InventoryServer;
    server = await Service.start({ ...options, tls, print, trace });
  } catch (error) {
    const where = `"${options.host}:${options.port}"`;
    if (error instanceof FileError) console.error(error.message);
    else console.error(`Cannot listen on ${where}: ${networkReason(error)}`);
    Deno.exit(1);
  }
  // Ready for Ctrl-C before the banner tells anyone the server is up.
  onStopSignals(() => server.stop());
  terminal.onInterrupt = () => server.stop();
  trace?.(`listen ${addressText(server.addr)}: the kernel queues clients now`);
  bannerLines(server).forEach(print);
  if (server instanceof ChatServer) {
    const ended = "console input ended; the server goes on";
    terminal.readLines((line) => server.operatorSays(line))
      .then(() => server.stopping || print(logLine(ended)));
  }
  await server.finished.then(() => server.stop());
  await terminal.close();
  Deno.exit(0);
}

if (import.meta.main) main();
