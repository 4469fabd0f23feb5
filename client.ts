#!/usr/bin/env -S deno run --allow-net --allow-read --allow-env=SOCKLAB_PASSWORD
/**
 * socklab TCP client, for the chat and the inventory service. Its socket
 * steps, in the order this file shows them: create a socket and connect
 * it, send a line, receive lines, close. In the chat, sending what you
 * type and receiving what others say run at once: nobody takes turns.
 *
 * ```sh
 * deno run -A client.ts [HOST] [--port 9999] [--name NAME]
 * deno run -A client.ts [HOST] --service inventory [add Soap 200 | view]
 * ```
 *
 * @module
 */

import {
  addressText,
  argsOrExit,
  cleanText,
  DEFAULT_PORT,
  encodeLine,
  errorLine,
  hostArgument,
  INVENTORY,
  isClosedByUs,
  LINE_TOO_LONG,
  LineConsole,
  LineFramer,
  nameFlag,
  nameProblem,
  networkReason,
  paintChatLine,
  paintDim,
  paintError,
  parseFlags,
  PASSWORD_VARIABLE,
  passwordFrom,
  SAYS,
  UsageError,
  writeAll,
} from "./shared.ts";
import type { FlagRow, Frame, Trace } from "./shared.ts";

const NO_WELCOME_HINT_MS = 1500; // then a silent server is told why it may be
const LEAVE_TIMEOUT_MS = 3000; // how long Ctrl-C waits for the server's "* bye"
/** A TLS record's start (type 20-23, version 3.x): no text line has it. */
const looksLikeTls = (bytes: Uint8Array) =>
  bytes[0] >= 20 && bytes[0] <= 23 && bytes[1] === 3 && bytes[2] <= 4;
const MAY_BE_TLS = "the server may speak TLS: try --tls";

// Step 1: create a socket and connect it to the server -----------------------

/** Creates a TCP socket and connects it. @throws {Error} saying why not */
export async function connect(
  host: string,
  port: number,
  tls?: { caCerts?: string[] },
  trace?: Trace,
): Promise<Deno.Conn> {
  let conn;
  try {
    conn = tls
      ? await Deno.connectTls({ hostname: host, port, ...tls })
      : await Deno.connect({ hostname: host, port });
    // TLS: the handshake checks the certificate now, not at the first read.
    if ("handshake" in conn) await conn.handshake();
  } catch (error) {
    conn?.close();
    const reason = tlsReason(error) ?? networkReason(error);
    throw new Error(`Cannot connect to "${host}:${port}": ${reason}`);
  }
  const [to, from] = [conn.remoteAddr, conn.localAddr].map(addressText);
  trace?.(`connect ${to} from ${from}`);
  return conn;
}

// Steps 2 to 4: send a line, receive lines, close ----------------------------

/** A connected socket carrying lines; `target` names it in messages. */
class LineConnection {
  // A TLS server answers our first line, plain text, with a TLS alert, or
  // closes or resets the connection without a word: what these catch.
  sent = 0;
  #heard = false;

  constructor(
    readonly conn: Deno.Conn,
    readonly target: string,
    readonly trace?: Trace,
    readonly maxLineBytes = 64 * 1024,
  ) {}

  /** Send: one line, every byte of it (a write may take only a part). */
  async send(line: string): Promise<void> {
    const bytes = encodeLine(line);
    const writes = await writeAll(this.conn, bytes).catch(() => 0);
    if (!writes) return; // the server has gone: the next read says why
    this.sent += bytes.length;
    const how = writes === 1 ? "all sent" : `in ${writes} writes`;
    this.trace?.(`write ${bytes.length} bytes to ${this.#peer} (${how})`);
  }

  /** Receive: TCP delivers bytes, so the framer keeps them until a line
   * end comes (a read may hold half a line, or many). */
  async *lines(): AsyncGenerator<Frame> {
    const framer = new LineFramer(this.maxLineBytes);
    const buffer = new Uint8Array(16 * 1024);
    while (true) {
      const count = await this.conn.read(buffer)
        .catch((error) => isClosedByUs(error) ? null : this.#lost(error));
      if (count === null) break;
      const lines = framer.push(buffer.subarray(0, count));
      const lineWord = lines.length === 1 ? "line" : "lines";
      const whole = `${lines.length} whole ${lineWord}`;
      const kept = `${framer.keptBytes()} bytes kept for the next read`;
      this.trace?.(`read ${count} bytes from ${this.#peer}: ${whole}, ${kept}`);
      if (!this.#heard && looksLikeTls(buffer)) throw this.#maybeTls();
      this.#heard = true;
      yield* lines;
    }
    this.trace?.(`read end of stream from ${this.#peer}: the server closed`);
    if (!this.#heard && this.sent) throw this.#maybeTls();
    yield* framer.end();
  }

  /** Close: the socket (a read still waiting then ends quietly). */
  close(): void {
    this.conn.close();
    this.trace?.("close");
  }

  // Small helpers: errors that name the server, and its address.
  serverError(what: string): Error {
    return new Error(`The server "${this.target}" ${what}`);
  }
  #maybeTls = () => new Error(`Cannot talk to "${this.target}": ${MAY_BE_TLS}`);
  get #peer(): string {
    return addressText(this.conn.remoteAddr);
  }
  #lost = (error: unknown): never => {
    const reset = error instanceof Deno.errors.ConnectionReset;
    if (reset && !this.#heard && this.sent) throw this.#maybeTls();
    const reason = networkReason(error);
    throw new Error(`Connection to "${this.target}" lost: ${reason}`);
  };
}

// The chat: typing and receiving at the same time ----------------------------

/** One chat connection: a loop receives, another sends what you type. */
class ChatSession {
  #admitted = Promise.withResolvers<void>(); // typing waits for the welcome
  #isIn = false;
  #leaving = false; // we sent /quit: the server's "* bye" ends us, exit 0
  #stopping = false; // a second stop waits: the first ends the program

  constructor(
    readonly connection: LineConnection,
    readonly io: LineConsole,
    readonly options: ReturnType<typeof parseClientArgs>,
  ) {}

  /** Runs the chat: join, then type and receive at the same time. */
  async run(): Promise<never> {
    // Ctrl-C: readline's key in raw mode, else a signal.
    this.io.onInterrupt = () => this.leave(true);
    Deno.addSignalListener("SIGINT", () => this.leave(true));
    await this.join();
    this.type();
    return await this.receive();
  }

  /** Join: a first `/nick` at once joins under it, with one welcome. */
  async join(): Promise<void> {
    const { password, name } = this.options;
    if (password) await this.connection.send(`/auth ${password}`);
    if (name) await this.connection.send(`/nick ${name}`);
  }

  /** Receive: print each whole line from the server as it arrives. */
  async receive(): Promise<never> {
    const hint = this.#hintIfNoWelcome();
    try {
      for await (const line of this.connection.lines()) {
        clearTimeout(hint);
        if (line === LINE_TOO_LONG) continue;
        await this.#show(cleanText(line));
        // It answered our /quit: it has read every line we sent.
        if (this.#leaving && line === SAYS.bye) return await this.stop(0);
      }
      // Closed with no "* bye": kicked, flooding, too slow, shut down.
      throw this.connection.serverError("closed the connection");
    } catch (error) {
      return await this.stop(1, (error as Error).message);
    }
  }

  /** Send each line typed or piped in, once in; at /quit or their end, leave. */
  async type(): Promise<void> {
    await this.#admitted.promise;
    let line;
    while (!this.#leaving && (line = await this.io.next()) !== undefined) {
      if (/^\/(quit|leave)$/i.test(line.trim())) break;
      await this.connection.send(line);
    }
    await this.leave();
  }

  /** Leave: /quit, then the end of our stream; we wait as long as the server
   * takes, so no line is lost. Ctrl-C (`now`): 3 s at most, then exit 130. */
  async leave(now = false): Promise<void> {
    if (now && (this.#leaving || !this.#isIn)) return await this.stop(130);
    if (now) setTimeout(() => this.stop(130), LEAVE_TIMEOUT_MS);
    if (this.#leaving) return;
    this.#leaving = true;
    await this.connection.send("/quit");
    await this.connection.conn.closeWrite().catch(() => {});
  }

  /** Close: the socket and the console, then end the program. */
  async stop(code: number, error?: string): Promise<never> {
    if (this.#stopping) return await new Promise<never>(() => {});
    this.#stopping = this.#leaving = true; // and nothing more is sent
    this.connection.close();
    await this.io.close(); // 1 s at most, on a console not read
    if (error) console.error(paintError(cleanText(error)));
    Deno.exit(code);
  }

  /** Prints a server's line, cleaned: it cannot move our cursor. */
  async #show(line: string): Promise<void> {
    if (!this.#isIn && PASSWORD_LINES.includes(line)) {
      return await answerPassword(this, line);
    }
    this.#isIn = true;
    this.#admitted.resolve();
    this.io.print(paintChatLine(line));
  }

  /** Silence: an iterative server busy with another client, or a TLS one
   * awaiting a handshake; 5 blank bytes (a TLS header) make that one refuse. */
  #hintIfNoWelcome() {
    const hint = "No welcome yet: an iterative server serves one at a time.";
    return setTimeout(() => {
      if (!this.connection.sent) this.connection.send(" ".repeat(5));
      if (Deno.stdout.isTerminal()) this.io.print(paintDim(hint));
    }, NO_WELCOME_HINT_MS);
  }
}

/** Why an answer will not do, or undefined when it will. */
type Problem = (answer: string) => string | undefined;

/** Asks until `problem` finds none; @returns the answer, or undefined */
async function askUntil(io: LineConsole, question: string, problem: Problem) {
  while (true) {
    const answer = (await io.next(question))?.trim();
    const found = answer === undefined ? undefined : problem(answer);
    if (!found) return answer;
    console.log(paintError(found));
  }
}

// The inventory client: one request, one reply, on one connection ------------

/** An inventory reply: `ok`, then fields of any type a server may send. */
type Reply = { ok: boolean; [field: string]: unknown };

/** Sends requests, and reads each one's reply: the next line back. */
class InventoryClient {
  #replies?: AsyncGenerator<Frame>;

  constructor(
    readonly connection: LineConnection,
    readonly io: LineConsole,
    public password?: string,
  ) {}

  /** One request, one reply (beyond the lab: the password, if wanted). */
  async request(line: string): Promise<Reply> {
    const reply = await this.#exchange(line);
    if (reply.ok || reply.error !== SAYS.authenticateFirst) return reply;
    this.password ??= await askPassword(this);
    const auth = await this.#exchange(`/auth ${this.password}`);
    if (!auth.ok) throw this.connection.serverError("refused the password");
    return await this.#exchange(line);
  }

  async #exchange(line: string): Promise<Reply> {
    await this.connection.send(line);
    this.#replies ??= this.connection.lines();
    const { value, done } = await this.#replies.next();
    if (done) throw this.connection.serverError("closed the connection");
    try {
      const reply = typeof value === "string" ? JSON.parse(value) : undefined;
      if (typeof reply?.ok === "boolean") return reply;
    } catch {
      // Not JSON: said just below.
    }
    throw this.connection.serverError("sent a reply this client cannot read");
  }
}

/** Any JSON value as text, cleaned: a server may send any type, any bytes. */
const shown = (value: unknown) =>
  cleanText(typeof value === "string" ? value : JSON.stringify(value));

/** The stock as an aligned table, items in alphabetical order. */
export function stockTable(stock: object): string[] {
  const rows = Object.entries(stock).map((row) => row.map(shown));
  rows.sort(([a], [b]) => a.localeCompare(b));
  if (rows.length === 0) return ["(the inventory is empty)"];
  const [itemWidth, countWidth] = [4, 8].map((least, column) =>
    Math.max(least, ...rows.map((row) => textWidth(row[column])))
  );
  const row = ([item, count]: string[]) =>
    item + " ".repeat(itemWidth - textWidth(item) + 2) +
    " ".repeat(countWidth - textWidth(count)) + count;
  const rule = ["-".repeat(itemWidth), "-".repeat(countWidth)];
  return [["Item", "Quantity"], rule, ...rows].map(row);
}

/** Columns a text takes: wide (CJK, emoji) characters two, marks none. */
const textWidth = (text: string) =>
  text.replace(/\p{M}|[\u200b-\u200f]/gu, "").replace(WIDE, "  ").length;
const WIDE =
  /[\u1100-\u115f\u2e80-\ua4cf\uac00-\ud7a3\uf900-\ufaff\ufe30-\ufe4f\uff00-\uff60\uffe0-\uffe6]|[\u{1f300}-\u{1faff}\u{20000}-\u{3fffd}]/gu;

/** Prints a reply: its message and stock, or its error. @returns exit code */
function printReply({ ok, message, error, inventory: stock }: Reply): number {
  if (!ok) {
    console.error(paintError(`Error: ${shown(error ?? "no reason given")}`));
    return 1;
  }
  if (message !== undefined && message !== "") console.log(shown(message));
  const isStock = stock && typeof stock === "object" && !Array.isArray(stock);
  if (isStock) console.log(stockTable(stock).join("\n"));
  else if (stock !== undefined) console.log(shown(stock)); // as sent
  return 0;
}

const itemProblem = (item: string) =>
  item ? undefined : "Please enter an item name.";
const quantityProblem = (text: string) =>
  /^\d+$/.test(text) && +text >= 1 && +text <= INVENTORY.maxQuantity
    ? undefined
    : `Please enter a whole number from 1 to ${INVENTORY.maxQuantity}.`;

/** The lab's menu: add, view, remove, exit; asks again on a bad answer. */
async function inventoryMenu(client: InventoryClient): Promise<number> {
  const { io, connection } = client;
  console.log(`socklab inventory at ${connection.target}`);
  while (true) {
    console.log("\n1. Add item\n2. View inventory\n3. Remove item\n4. Exit");
    const choice = (await io.next("Choose 1-4: "))?.trim();
    if (choice === undefined || choice === "4") return 0;
    if (choice === "2") {
      printReply(await client.request('{"action":"view"}'));
    } else if (choice === "1" || choice === "3") {
      const item = await askUntil(io, "Item name: ", itemProblem);
      const quantity = item &&
        await askUntil(io, "Quantity: ", quantityProblem);
      if (!quantity) return 0; // the end of input
      const action = choice === "1" ? "add" : "remove";
      const request = { action, item, quantity: Number(quantity) };
      printReply(await client.request(JSON.stringify(request)));
    } else {
      console.log(paintError("Please choose 1, 2, 3 or 4."));
    }
  }
}

/** Runs the inventory client: one request, or the menu. @returns exit code */
async function inventory(client: InventoryClient, request?: string) {
  try {
    if (request === undefined) return await inventoryMenu(client);
    return printReply(await client.request(request));
  } catch (error) {
    console.error(paintError((error as Error).message));
    return 1;
  }
}

// Beyond the lab: TLS and a password -----------------------------------------

/** Says in words what a TLS error from rustls means, if it is one. */
function tlsReason(error: unknown): string | undefined {
  const message = error instanceof Error ? error.message : String(error);
  if (/UnknownIssuer|peer certificate: (BadSignature|Other)/.test(message)) {
    return "the server's TLS certificate is not trusted (for a self-signed certificate, give it with --ca cert.pem)";
  }
  if (/NotValidForName|not valid for name/.test(message)) {
    return "the server's TLS certificate is not for this host name (connect with a name or address it lists)";
  }
  if (/expired|not ?valid ?yet/i.test(message)) {
    return "the server's TLS certificate has expired or is not valid yet";
  }
  if (/InvalidContentType|corrupt message|WrongVersion/i.test(message)) {
    return "the server does not speak TLS (leave out --tls and --ca)";
  }
  if (!/certificate/i.test(message)) return undefined;
  return `TLS certificate problem: ${message}`;
}

/** What a chat server says before it lets in a client without a password. */
const PASSWORD_LINES = [
  SAYS.passwordNeeded,
  errorLine(SAYS.wrongPassword),
  errorLine(SAYS.authenticateFirst),
];

/** Until the chat server lets us in, it may want a password: send it. */
async function answerPassword(session: ChatSession, line: string) {
  const { io, options } = session;
  // Our /nick sent before /auth is refused: it goes again after.
  if (line === errorLine(SAYS.authenticateFirst)) return;
  io.print(paintChatLine(line));
  if (line === SAYS.passwordNeeded && options.password) return; // sent
  const refused = options.password !== undefined; // we sent one: wrong
  options.password = await askPassword(session, refused)
    .catch((error) => session.stop(1, error.message));
  await session.join();
}

type Session = { io: LineConsole; connection: LineConnection };
/** Asks for the password, no echo. @throws {Error} with no terminal */
async function askPassword({ io, connection }: Session, refused = false) {
  const password = await io.askSecret("Password: ");
  if (password) return password;
  if (refused) throw connection.serverError("refused the password");
  const how = `give it with --password or ${PASSWORD_VARIABLE}`;
  throw connection.serverError(`needs a password: ${how}`);
}

// Flags, usage and main ------------------------------------------------------

const FLAGS: Record<string, FlagRow> = {
  port: { short: "p", default: String(DEFAULT_PORT), port: true },
  name: { short: "n" },
  service: { short: "s", default: "chat", choices: ["chat", "inventory"] },
  tls: { on: true },
  ca: {},
  password: {},
  trace: { on: true },
};

const USAGE = `socklab TCP chat client

USAGE:
  deno run -A client.ts [HOST] [OPTIONS]
  deno run -A client.ts [HOST] --service inventory [add ITEM N | remove ITEM N | view]

  HOST                    The server's address (default localhost), e.g. 192.168.0.101, without :PORT

OPTIONS:
  -p, --port <PORT>       The server's port (default ${DEFAULT_PORT})
  -n, --name <NAME>       Your name in the chat (without it, you are asked)
  -s, --service <NAME>    chat or inventory (default chat)
      --tls               Speak TLS, and check the server's certificate
      --ca <FILE>         Trust this certificate (a self-signed server's); implies --tls
      --password <SECRET> The server's password; or set ${PASSWORD_VARIABLE}; or you are asked
      --trace             Print each socket step as it happens: connect, write, read, close
  -h, --help              Show this help

In the chat, /help lists the commands. Leave with /quit, Ctrl-D or Ctrl-C: exit
code 0 once the server confirms (all you sent has arrived), 1 if it closes first.
Lines piped in are sent one by one: printf 'hi\\n' | deno run -A client.ts --name bot

The inventory service shows a menu; with a request after the flags, it
sends that one request, prints the reply and exits (1 on an error reply).`;

/** Reads the client's arguments. @throws {UsageError} for a misuse */
export function parseClientArgs(args: string[]) {
  const flags = parseFlags(args, FLAGS);
  const service = flags.service as "chat" | "inventory";
  // Inventory: `[HOST] add Soap 200`; the first word tells which is which.
  const words = [...flags._];
  const hasHost = words.length > 0 && !(service === "inventory" &&
    INVENTORY.actions.includes(words[0].toLowerCase()));
  const host = hasHost
    ? hostArgument(words.shift()!, "client.ts")
    : "localhost";
  if (words.length > 0 && service === "chat") {
    throw new UsageError(`Unexpected argument "${words[0]}"`);
  }
  return {
    host,
    port: flags.port as number,
    service,
    name: nameFlag(flags.name),
    request: words.length > 0 ? words.join(" ") : undefined,
    tls: flags.tls === true || flags.ca !== undefined,
    caFile: flags.ca === undefined ? undefined : String(flags.ca),
    password: passwordFrom(flags.password),
    help: flags.help,
    trace: flags.trace === true,
  };
}

async function main(): Promise<void> {
  const options = argsOrExit(parseClientArgs, USAGE);
  const { host, port, tls, caFile } = options;
  // The console: lines typed or piped in below, lines printed above.
  const io = new LineConsole();
  // --trace: at a terminal, dimmed above the typed line; else on stderr.
  const print = Deno.stdout.isTerminal() ? io.print.bind(io) : console.error;
  const dim = (step: string) => print(paintDim(step));
  const trace: Trace = options.trace ? dim : undefined;
  // A failure to start: one line (cleaned: it may quote a certificate).
  const fail = (message: string): never => {
    console.error(cleanText(message));
    Deno.exit(1);
  };
  const why = (error: Error) =>
    error instanceof Deno.errors.NotFound
      ? "no such file or folder"
      : error.message;
  const caCerts = caFile === undefined ? undefined : [
    await Deno.readTextFile(caFile)
      .catch((error) => fail(`Cannot read "${caFile}": ${why(error)}`)),
  ];
  const chat = options.service === "chat";
  if (chat && Deno.stdin.isTerminal() && !options.name) {
    const question = "Your name (Enter for a guest name): ";
    const problem = (name: string) => name ? nameProblem(name) : undefined;
    options.name = await askUntil(io, question, problem) || undefined;
  }
  const conn = await connect(host, port, tls ? { caCerts } : undefined, trace)
    .catch((error) => fail(error.message));
  // An inventory reply holds the whole stock: allow long lines, bounded.
  const maxLine = chat ? 64 * 1024 : 16 * 1024 * 1024;
  const target = `${host}:${port}`;
  const connection = new LineConnection(conn, target, trace, maxLine);
  if (chat) await new ChatSession(connection, io, options).run();
  const client = new InventoryClient(connection, io, options.password);
  const code = await inventory(client, options.request);
  connection.close();
  await io.close();
  Deno.exit(code);
}

if (import.meta.main) main();
