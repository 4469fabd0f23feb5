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
  chooseColors,
  cleanText,
  DEFAULT_PORT,
  encodeLine,
  errorLine,
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
import type { FlagRow, Frame, InventoryReply, Stock, Trace } from "./shared.ts";

/** The services of server.ts this client speaks. */
const TCP_SERVICES = ["chat", "inventory"] as const;
/** How long a silent server is waited for before telling why it may be. */
const NO_WELCOME_HINT_MS = 1500;
/** How long to wait for the server to close after we asked to leave. */
const LEAVE_TIMEOUT_MS = 3000;

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
    if (!tls) conn = await Deno.connect({ hostname: host, port });
    else {
      conn = await Deno.connectTls({ hostname: host, port, ...tls });
      // The handshake checks the certificate now, not at the first read.
      await conn.handshake();
    }
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
  constructor(
    readonly conn: Deno.Conn,
    readonly target: string,
    readonly trace?: Trace,
    readonly maxLineBytes = 64 * 1024,
  ) {}

  /** Send: one line, every byte of it (a write may take only a part). */
  async send(line: string): Promise<void> {
    const bytes = encodeLine(line);
    const writes = await writeAll(this.conn, bytes).catch(this.#lost);
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
      const kept = `${framer.keptBytes} bytes kept for the next read`;
      this.trace?.(`read ${count} bytes from ${this.#peer}: ${whole}, ${kept}`);
      yield* lines;
    }
    this.trace?.(`read end of stream from ${this.#peer}: the server closed`);
    yield* framer.end();
  }

  /** Close: the socket (a read still waiting then ends quietly). */
  close(): void {
    this.conn.close();
    this.trace?.("close");
  }

  serverError(what: string): Error {
    return new Error(`The server "${this.target}" ${what}`);
  }

  get #peer(): string {
    return addressText(this.conn.remoteAddr);
  }

  #lost = (error: unknown): never => {
    const reason = networkReason(error);
    throw new Error(`Connection to "${this.target}" lost: ${reason}`);
  };
}

// The chat: typing and receiving at the same time ----------------------------

/** One chat connection: a loop receives, another sends what you type. */
class ChatSession {
  /** Set once we asked to leave: the server closing is then expected. */
  leaving = false;
  /** Resolved once the server lets us in: typing waits for it. */
  #admitted = Promise.withResolvers<void>();
  #isIn = false;

  constructor(
    readonly connection: LineConnection,
    readonly io: LineConsole,
    readonly options: ClientOptions,
  ) {}

  /** Runs the chat: join, then type and receive at the same time. */
  async run(): Promise<never> {
    // Ctrl-C leaves as /quit does: readline's key in raw mode, else a signal.
    this.io.onInterrupt = () => this.leave();
    Deno.addSignalListener("SIGINT", () => this.leave());
    await this.join();
    this.type();
    return await this.receive();
  }

  /** Join: a first `/nick` at once joins under it, with one welcome. */
  async join(): Promise<void> {
    const { password, name } = this.options;
    if (password) await this.send(`/auth ${password}`);
    if (name) await this.send(`/nick ${name}`);
  }

  /** Send: a failure means the server has gone; the receive loop says so. */
  send(line: string): Promise<void> {
    return this.connection.send(line).catch(() => {});
  }

  /** Receive: print each whole line from the server as it arrives. */
  async receive(): Promise<never> {
    const hint = this.#hintIfNoWelcome();
    try {
      for await (const line of this.connection.lines()) {
        clearTimeout(hint);
        if (line !== LINE_TOO_LONG) await this.#show(cleanText(line));
      }
      throw this.connection.serverError("closed the connection");
    } catch (error) {
      if (this.leaving) this.stop(0);
      this.stop(1, (error as Error).message);
    }
  }

  /** Send each line typed or piped in, once in; at their end, leave. */
  async type(): Promise<void> {
    await this.#admitted.promise;
    await this.io.readLines((line) =>
      line.trim().toLowerCase() === "/quit" ? this.leave() : this.send(line)
    );
    await this.leave();
  }

  /** Sends /quit once: the server says bye and closes the connection. */
  async leave(): Promise<void> {
    if (this.leaving) return;
    this.leaving = true;
    setTimeout(() => this.stop(0), LEAVE_TIMEOUT_MS);
    await this.send("/quit");
  }

  /** Close: the socket and the console, then end the program. */
  stop(code: number, error?: string): never {
    this.connection.close();
    this.io.close();
    if (error) console.error(paintError(error));
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

  /** An iterative server busy with another client is silent: say why. */
  #hintIfNoWelcome() {
    if (!Deno.stdout.isTerminal()) return undefined;
    const hint = `Connected to "${this.connection.target}", no welcome yet: ` +
      "the server may be serving someone else (an iterative server takes " +
      "one client at a time). What you type is kept until your turn.";
    return setTimeout(() => this.io.print(paintDim(hint)), NO_WELCOME_HINT_MS);
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

/** Asks for a chat name at the terminal; Enter: a guest name. */
async function askName(io: LineConsole): Promise<string | undefined> {
  const question = "Your name (Enter for a guest name): ";
  const problem = (name: string) => name ? nameProblem(name) : undefined;
  return (await askUntil(io, question, problem)) || undefined;
}

// The inventory client: one request, one reply, on one connection ------------

/** Sends requests, and reads each one's reply: the next line back. */
class InventoryClient {
  #replies?: AsyncGenerator<Frame>;

  constructor(
    readonly connection: LineConnection,
    readonly io: LineConsole,
    public password?: string,
  ) {}

  /** One request, one reply (beyond the lab: the password, if wanted). */
  async request(line: string): Promise<InventoryReply> {
    const reply = await this.#exchange(line);
    if (reply.ok || reply.error !== SAYS.authenticateFirst) return reply;
    this.password ??= await askPassword(this.io, this.connection, false);
    const auth = await this.#exchange(`/auth ${this.password}`);
    if (!auth.ok) throw this.connection.serverError("refused the password");
    return await this.#exchange(line);
  }

  async #exchange(line: string): Promise<InventoryReply> {
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
    throw this.connection.serverError(
      "sent a reply that is not the inventory's JSON",
    );
  }
}

/** The stock as an aligned table, items in alphabetical order. */
export function stockTable(stock: Stock): string[] {
  const items = Object.keys(stock).sort((a, b) => a.localeCompare(b));
  if (items.length === 0) return ["(the inventory is empty)"];
  const itemWidth = Math.max(4, ...items.map(textWidth));
  const counts = items.map((item) => String(stock[item]));
  const countWidth = Math.max(8, ...counts.map((count) => count.length));
  const row = (item: string, count: string) =>
    item + " ".repeat(itemWidth - textWidth(item) + 2) +
    count.padStart(countWidth);
  return [
    row("Item", "Quantity"),
    row("-".repeat(itemWidth), "-".repeat(countWidth)),
    ...items.map((item, i) => row(item, counts[i])),
  ];
}

/** Columns a text takes: wide (CJK, emoji) characters two, marks none. */
const textWidth = (text: string) =>
  text.replace(/\p{M}|[\u200b-\u200f]/gu, "").replace(WIDE, "  ").length;
const WIDE =
  /[\u1100-\u115f\u2e80-\ua4cf\uac00-\ud7a3\uf900-\ufaff\ufe30-\ufe4f\uff00-\uff60\uffe0-\uffe6]|[\u{1f300}-\u{1faff}\u{20000}-\u{3fffd}]/gu;

/** Prints a reply: its message and stock, or its error. @returns exit code */
function printReply(reply: InventoryReply): number {
  if (!reply.ok) {
    console.error(paintError(`Error: ${reply.error}`));
    return 1;
  }
  if (reply.message) console.log(reply.message);
  if (reply.inventory) console.log(stockTable(reply.inventory).join("\n"));
  return 0;
}

const MENU = `
1. Add item
2. View inventory
3. Remove item
4. Exit`;

const itemProblem = (item: string) =>
  item ? undefined : "Please enter an item name.";
const quantityProblem = (text: string) =>
  /^\d+$/.test(text) && +text >= 1 && +text <= INVENTORY.maxQuantity
    ? undefined
    : `Please enter a whole number from 1 to ${INVENTORY.maxQuantity}.`;

/** The lab's menu: add, view, remove, exit; asks again on a bad answer. */
async function inventoryMenu(client: InventoryClient): Promise<number> {
  const { io } = client;
  console.log(`socklab inventory at ${client.connection.target}`);
  while (true) {
    console.log(MENU);
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
  if (/NotValidForName/.test(message)) {
    return "the server's TLS certificate is not for this host name (connect with a name or address it lists)";
  }
  if (/Expired|NotValidYet/.test(message)) {
    return "the server's TLS certificate has expired or is not valid yet";
  }
  if (/InvalidContentType|corrupt message|WrongVersion/i.test(message)) {
    return "the server does not speak TLS (leave out --tls and --ca)";
  }
  if (!/certificate/i.test(message)) return undefined;
  return `TLS certificate problem: ${message}`;
}

async function trustedCertificates(caFile?: string) {
  if (caFile === undefined) return undefined;
  try {
    return [await Deno.readTextFile(caFile)];
  } catch (error) {
    console.error(`Cannot read "${caFile}": ${(error as Error).message}`);
    Deno.exit(1);
  }
}

/** What a chat server says before it lets in a client without a password. */
const PASSWORD_LINES = [
  SAYS.passwordNeeded,
  errorLine(SAYS.wrongPassword),
  errorLine(SAYS.authenticateFirst),
];

/** Until the chat server lets us in, it may want a password: send it. */
async function answerPassword(session: ChatSession, line: string) {
  const { io, options, connection } = session;
  // Our /nick sent before /auth is refused: it goes again after.
  if (line === errorLine(SAYS.authenticateFirst)) return;
  io.print(paintChatLine(line));
  if (line === SAYS.passwordNeeded && options.password) return; // sent
  const refused = options.password !== undefined;
  options.password = await askPassword(io, connection, refused)
    .catch((error) => session.stop(1, error.message));
  await session.join();
}

/** Asks for the password, no echo. @throws {Error} with no terminal */
async function askPassword(
  io: LineConsole,
  connection: LineConnection,
  refused: boolean,
): Promise<string> {
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
  service: { short: "s", default: "chat", choices: TCP_SERVICES },
  tls: { on: true },
  ca: {},
  password: {},
  trace: { on: true },
};

const USAGE = `socklab TCP chat client

USAGE:
  deno run -A client.ts [HOST] [OPTIONS]
  deno run -A client.ts [HOST] --service inventory [add ITEM N | remove ITEM N | view]

  HOST                    The server's address (default localhost), e.g. 192.168.0.101

OPTIONS:
  -p, --port <PORT>       The server's port (default ${DEFAULT_PORT})
  -n, --name <NAME>       Your name in the chat (without it, you are asked)
  -s, --service <NAME>    chat or inventory (default chat)
      --tls               Speak TLS, and check the server's certificate
      --ca <FILE>         Trust this certificate (a self-signed server's); implies --tls
      --password <SECRET> The server's password; or set ${PASSWORD_VARIABLE}; or you are asked
      --trace             Print each socket step as it happens: connect, write, read, close
  -h, --help              Show this help

In the chat, /help lists the commands. Leave with /quit, Ctrl-D or Ctrl-C.
Lines piped in are sent one by one: printf 'hi\\n' | deno run -A client.ts --name bot

The inventory service shows a menu; with a request after the flags, it
sends that one request, prints the reply and exits (1 on an error reply).`;

/** What the client was asked to do. */
export type ClientOptions = ReturnType<typeof parseClientArgs>;

/** Reads the client's arguments. @throws {UsageError} for a misuse */
export function parseClientArgs(args: string[]) {
  const flags = parseFlags(args, FLAGS);
  const service = flags.service as typeof TCP_SERVICES[number];
  // Inventory: `[HOST] add Soap 200`; the first word tells which is which.
  const words = [...flags._];
  const hasHost = words.length > 0 && !(service === "inventory" &&
    INVENTORY.actions.includes(words[0].toLowerCase()));
  const host = hasHost ? words.shift()! : "localhost";
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

/** `--trace`: at a terminal, dimmed above the typed line; else on stderr. */
function tracer(io: LineConsole): Trace {
  if (!Deno.stdout.isTerminal()) return (step) => console.error(step);
  return (step) => io.print(paintDim(step));
}

async function main(): Promise<void> {
  const options = argsOrExit(parseClientArgs, USAGE);
  chooseColors();
  // The console: lines typed or piped in below, lines printed above.
  const io = new LineConsole();
  const trace = options.trace ? tracer(io) : undefined;
  const caCerts = await trustedCertificates(options.caFile);
  const chat = options.service === "chat";
  if (chat && Deno.stdin.isTerminal()) options.name ??= await askName(io);
  const { host, port, tls } = options;
  const conn = await connect(host, port, tls ? { caCerts } : undefined, trace)
    .catch((error) => {
      console.error(error.message);
      Deno.exit(1);
    });
  // An inventory reply holds the whole stock: allow long lines, bounded.
  const maxLine = chat ? 64 * 1024 : 16 * 1024 * 1024;
  const target = `${host}:${port}`;
  const connection = new LineConnection(conn, target, trace, maxLine);
  if (chat) await new ChatSession(connection, io, options).run();
  const client = new InventoryClient(connection, io, options.password);
  const code = await inventory(client, options.request);
  connection.close();
  io.close();
  Deno.exit(code);
}

if (import.meta.main) main();
