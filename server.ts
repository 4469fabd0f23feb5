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
  clockTime,
  concatBytes,
  connectionHints,
  DEFAULT_PORT,
  encodeLine,
  errorLine,
  type Frame,
  isClosedByUs,
  isDisconnect,
  LINE_TOO_LONG,
  LineConsole,
  LineFramer,
  MAX_LINE_BYTES,
  messageLine,
  nameKey,
  nameProblem,
  networkReason,
  noticeLine,
  onStopSignals,
  parseChatInput,
  parseFlags,
  parsePort,
  privateLine,
  splitFirstWord,
  UsageError,
  writeAll,
} from "./shared.ts";

/** The most bytes waiting to be sent to one client before it is dropped. */
export const MAX_PENDING_BYTES = 1024 * 1024;

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
  -h, --help          Show this help

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
  /** Prints one line of the console (log lines and chat lines). */
  print: (line: string) => void;
}

/** Why a client left. */
export type LeaveReason =
  | "quit"
  | "closed"
  | "reset"
  | "kicked"
  | "too slow"
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

  /** @returns false when the client has too much waiting already */
  send(bytes: Uint8Array): boolean {
    if (this.#finishing || this.#failed) return true;
    if (this.#pendingBytes + bytes.length > this.maxPendingBytes) return false;
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
      const batch = concatBytes(this.#pending, this.#pendingBytes);
      this.#pending = [];
      this.#pendingBytes = 0;
      try {
        // Send: a write may take only part of the batch; writeAll loops.
        await writeAll(this.conn, batch);
      } catch (error) {
        this.#failed = true;
        this.#pending = [];
        this.onWriteError(error);
        return;
      }
    }
  }
}

/** One connected client. */
class Client {
  /** Set once, when the client leaves, with the reason. */
  leftBecause?: LeaveReason;
  /** Settles when the connection is closed. */
  closed?: Promise<void>;
  readonly outbox: Outbox;

  constructor(
    readonly conn: Deno.Conn,
    public name: string,
    readonly address: string,
    maxPendingBytes: number,
    onWriteError: (client: Client, error: unknown) => void,
  ) {
    this.outbox = new Outbox(
      conn,
      maxPendingBytes,
      (error) => onWriteError(this, error),
    );
  }
}

/** A running chat server. */
export class ChatServer {
  readonly options: ServerOptions;
  readonly listener: Deno.Listener;
  /** Settles when the server has stopped. */
  readonly finished: Promise<void>;
  #clients = new Map<string, Client>();
  #guestNumber = 0;
  #stopping?: Promise<void>;

  private constructor(options: ServerOptions, listener: Deno.Listener) {
    this.options = options;
    this.listener = listener;
    this.finished = options.iterative
      ? this.#acceptOneAtATime()
      : this.#acceptEveryone();
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
      maxLineBytes: MAX_LINE_BYTES,
      maxPendingBytes: MAX_PENDING_BYTES,
      print: (line) => console.log(line),
      ...options,
    };
    // Create, bind and listen: the kernel now queues connecting clients.
    const listener = Deno.listen({ hostname: full.host, port: full.port });
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
  // Accept: the concurrent server and the iterative server
  // -------------------------------------------------------------------------

  /** Concurrent: serve each client as soon as it connects. */
  async #acceptEveryone(): Promise<void> {
    for (let conn; (conn = await this.#accept());) {
      // Not awaited: the next accept happens while this client is served.
      this.#serve(conn);
    }
  }

  /** Iterative: serve one client until it leaves, then accept the next. */
  async #acceptOneAtATime(): Promise<void> {
    for (let conn; (conn = await this.#accept());) {
      await this.#serve(conn);
      if (!this.#stopping) {
        this.#log("waiting for the next client in the backlog");
      }
    }
  }

  /**
   * Accept: take the next connection from the kernel's queue.
   * @returns the connection, or undefined once the server is stopping
   */
  async #accept(): Promise<Deno.Conn | undefined> {
    while (!this.#stopping) {
      try {
        return await this.listener.accept();
      } catch (error) {
        if (this.#stopping || isClosedByUs(error)) return undefined;
        // Out of file descriptors, for example: wait a little, go on.
        this.#log(`cannot accept a connection: ${networkReason(error)}`);
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
    }
    return undefined;
  }

  // -------------------------------------------------------------------------
  // Serving one client: welcome, receive loop, leave
  // -------------------------------------------------------------------------

  async #serve(conn: Deno.Conn): Promise<void> {
    const client = this.#admit(conn);
    const reason = await this.#receiveLines(client);
    this.#leave(client, reason);
    await client.closed;
  }

  #admit(conn: Deno.Conn): Client {
    const peer = conn.remoteAddr as Deno.NetAddr;
    const address = `${peer.hostname}:${peer.port}`;
    const client = new Client(
      conn,
      this.#nextGuestName(),
      address,
      this.options.maxPendingBytes,
      (client, error) => this.#leave(client, leaveReasonOf(error)),
    );
    this.#log(`connection from ${address}`);
    const others = this.names;
    this.#clients.set(nameKey(client.name), client);
    this.#log(`${client.name} joined from ${address}`);
    if (this.options.iterative) {
      this.#log(
        `serving ${client.name} alone; other clients wait in the backlog until it leaves`,
      );
    }
    this.#sendWelcome(client, others);
    this.#broadcast(noticeLine(`${client.name} joined`), client);
    return client;
  }

  #nextGuestName(): string {
    let name;
    do {
      name = `guest-${++this.#guestNumber}`;
    } while (this.#isTaken(name));
    return name;
  }

  #sendWelcome(client: Client, others: string[]): void {
    const operator = `${this.options.operatorName} (operator)`;
    const mode = this.options.iterative
      ? "an iterative server: one client at a time, so it is just you and the operator"
      : "a group chat: each line you send goes to everyone";
    this.#sendTo(client, noticeLine(`welcome to socklab chat, ${mode}`));
    this.#sendTo(
      client,
      noticeLine(`online: ${[...others, operator].join(", ")}`),
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
    const buffer = new Uint8Array(16 * 1024);
    const framer = new LineFramer(this.options.maxLineBytes);
    try {
      while (!client.leftBecause) {
        const count = await client.conn.read(buffer);
        if (count === null) {
          // The client closed its side: handle a last line without "\n".
          this.#handleFrames(client, framer.end());
          return "closed";
        }
        this.#handleFrames(client, framer.push(buffer.subarray(0, count)));
      }
      return client.leftBecause;
    } catch (error) {
      return client.leftBecause ?? leaveReasonOf(error);
    }
  }

  #handleFrames(client: Client, frames: Frame[]): void {
    for (const frame of frames) {
      if (client.leftBecause) return;
      if (frame === LINE_TOO_LONG) {
        this.#sendTo(
          client,
          errorLine(
            `line too long (over ${this.options.maxLineBytes} bytes): it was not sent`,
          ),
        );
        this.#log(`${client.name} sent a line that was too long`);
      } else {
        this.#handleLine(client, frame);
      }
    }
  }

  /** Closes the client's connection after its last lines are sent. */
  #leave(client: Client, reason: LeaveReason): void {
    if (client.leftBecause) return;
    client.leftBecause = reason;
    this.#clients.delete(nameKey(client.name));
    this.#log(`${client.name} left (${reason})`);
    if (reason !== "shutdown") {
      const why = reason === "kicked" || reason === "too slow"
        ? ` (${reason})`
        : "";
      this.#broadcast(noticeLine(`${client.name} left${why}`));
    }
    client.closed = closeAfterFlush(client);
  }

  // -------------------------------------------------------------------------
  // The protocol: messages and commands
  // -------------------------------------------------------------------------

  #handleLine(client: Client, line: string): void {
    const input = parseChatInput(line);
    if (input.kind === "empty") return;
    if (input.kind === "message") return this.#relay(client, input.text);
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
      default:
        this.#sendTo(
          client,
          errorLine(`unknown command "${command}": /help lists the commands`),
        );
    }
  }

  /** A message to everyone else (the sender does not get it back). */
  #relay(client: Client, text: string): void {
    const line = messageLine(client.name, text);
    this.#print(line);
    this.#broadcast(line, client);
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
    const bytes = encodeLine(line);
    for (const client of [...this.#clients.values()]) {
      if (client !== except) this.#sendBytes(client, bytes);
    }
  }

  #sendBytes(client: Client, bytes: Uint8Array): void {
    if (client.leftBecause) return;
    if (!client.outbox.send(bytes)) this.#leave(client, "too slow");
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
  stop(): Promise<void> {
    this.#stopping ??= this.#stop();
    return this.#stopping;
  }

  /** Stops the server when a `using` block ends (in tests). */
  [Symbol.asyncDispose](): Promise<void> {
    return this.stop();
  }

  async #stop(): Promise<void> {
    this.#log("shutting down");
    try {
      this.listener.close();
    } catch {
      // Already closed.
    }
    const clients = [...this.#clients.values()];
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
  try {
    client.conn.close();
  } catch {
    // Already closed.
  }
}

/** The leave reason for an error from a client's socket. */
function leaveReasonOf(error: unknown): LeaveReason {
  if (isDisconnect(error)) return "reset";
  return `error: ${networkReason(error)}`;
}

// ---------------------------------------------------------------------------
// The program
// ---------------------------------------------------------------------------

/**
 * Reads the server's flags.
 * @throws {UsageError} for a bad flag
 */
export function parseServerArgs(
  args: string[],
): Partial<ServerOptions> & { help: boolean } {
  const flags = parseFlags(args, {
    string: ["port", "host", "name"],
    boolean: ["iterative", "help"],
    alias: { p: "port", n: "name", i: "iterative", h: "help" },
    default: { port: String(DEFAULT_PORT), host: "0.0.0.0", name: "server" },
  });
  if (flags._.length > 0) {
    throw new UsageError(`Unexpected argument "${flags._[0]}"`);
  }
  const operatorName = String(flags.name);
  const invalid = nameProblem(operatorName);
  if (invalid) throw new UsageError(`Invalid --name: ${invalid}`);
  return {
    help: flags.help === true,
    port: parsePort(flags.port),
    host: String(flags.host),
    operatorName,
    iterative: flags.iterative === true,
  };
}

/** The banner: where the server listens and how others can connect. */
export function bannerLines(server: ChatServer): string[] {
  const { hostname, port } = server.addr;
  const mode = server.options.iterative
    ? "iterative: one client at a time"
    : "concurrent: every client at once";
  const portFlag = port === DEFAULT_PORT ? "" : ` --port ${port}`;
  return [
    `socklab chat server (${mode}) listening on ${hostname}:${port}`,
    ...connectionHints(
      hostname,
      (address) =>
        `deno run -A client.ts ${address}${portFlag}    or    nc ${address} ${port}`,
    ),
    `Type here to chat as "${server.options.operatorName}"; /who, /kick NAME, /quit. Ctrl-C stops the server.`,
  ];
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

async function main(): Promise<void> {
  const options = argsOrExit(parseServerArgs, USAGE);
  const terminal = new LineConsole();
  let server;
  try {
    server = ChatServer.start({
      ...options,
      print: (line) => terminal.print(line),
    });
  } catch (error) {
    console.error(
      `Cannot listen on "${options.host}:${options.port}": ${
        networkReason(error)
      }`,
    );
    Deno.exit(1);
  }
  bannerLines(server).forEach((line) => terminal.print(line));
  onStopSignals(() => server.stop());
  readConsole(terminal, server);
  await server.finished;
  await server.stop();
  terminal.restore();
  Deno.exit(0);
}

if (import.meta.main) main();
