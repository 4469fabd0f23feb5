#!/usr/bin/env -S deno run --allow-net
/**
 * socklab TCP chat client: connects to server.ts (or any line-based chat),
 * and reads from the server and from the keyboard at the same time, so
 * messages appear while you type and nobody has to take turns.
 *
 * ```sh
 * deno run -A client.ts [HOST] [--port 9999] [--name NAME]
 * ```
 *
 * @module
 */

import {
  argsOrExit,
  askName,
  askSecret,
  chooseColors,
  cleanText,
  DEFAULT_PORT,
  encodeLine,
  type Frame,
  type InventoryReply,
  isClosedByUs,
  LINE_TOO_LONG,
  LineConsole,
  LineFramer,
  MAX_QUANTITY,
  nameProblem,
  networkReason,
  paintChatLine,
  paintDim,
  paintError,
  parseChoice,
  parseFlags,
  parsePort,
  PASSWORD_VARIABLE,
  passwordFrom,
  StdinLines,
  type Stock,
  TCP_SERVICES,
  textWidth,
  UsageError,
  writeAll,
} from "./shared.ts";

/** What the chat server says when it needs a password, or got a wrong one. */
const PASSWORD_NEEDED = "* this server needs a password: send /auth PASSWORD";
const WRONG_PASSWORD = "! wrong password";

/** How long a silent server is waited for before telling why it may be. */
const NO_WELCOME_HINT_MS = 1500;

/** How long to wait for the server to close after we asked to leave. */
const LEAVE_TIMEOUT_MS = 3000;

const USAGE = `socklab TCP chat client

USAGE:
  deno run -A client.ts [HOST] [OPTIONS]
  deno run -A client.ts [HOST] --service inventory [add ITEM N | remove ITEM N | view]

  HOST                   The server's address (default localhost), e.g. 192.168.0.101

OPTIONS:
  -p, --port <PORT>      The server's port (default ${DEFAULT_PORT})
  -n, --name <NAME>      Your name in the chat (without it, you are asked)
  -s, --service <NAME>   chat or inventory (default chat)
      --tls              Speak TLS, and check the server's certificate
      --ca <FILE>        Trust this certificate (a self-signed server's); implies --tls
      --password <SECRET> The server's password; or set SOCKLAB_PASSWORD; or you are asked
  -h, --help             Show this help

In the chat, /help lists the commands. Leave with /quit, Ctrl-D or Ctrl-C.
Lines piped in are sent one by one: printf 'hi\\n' | deno run -A client.ts --name bot

The inventory service shows a menu; with a request after the flags, it
sends that one request, prints the reply and exits (1 on an error reply).`;

/** What the client was asked to do. */
export interface ClientOptions {
  /** The server's host name or address. @default "localhost" */
  host: string;
  /** The server's port. @default 9999 */
  port: number;
  /** The service. @default "chat" */
  service: typeof TCP_SERVICES[number];
  /** The name to ask for; undefined means ask the user. */
  name?: string;
  /** Inventory: one request (like `add Soap 200`) to send, then exit. */
  request?: string;
  /** Speak TLS, and check the server's certificate. */
  tls: boolean;
  /** A certificate file to trust (a self-signed server's). */
  caFile?: string;
  /** The password, from --password or SOCKLAB_PASSWORD. */
  password?: string;
  /** Print the usage and stop. */
  help: boolean;
}

const INVENTORY_ACTIONS = ["add", "remove", "view", "help"];

/**
 * Reads the client's arguments.
 * @throws {UsageError} for a bad flag or argument
 */
export function parseClientArgs(args: string[]): ClientOptions {
  const flags = parseFlags(args, {
    string: ["port", "name", "service", "ca", "password"],
    boolean: ["help", "tls"],
    alias: { p: "port", n: "name", s: "service", h: "help" },
    default: { port: String(DEFAULT_PORT), service: "chat" },
  });
  const service = parseChoice("service", flags.service, TCP_SERVICES);
  const name = flags.name === undefined ? undefined : String(flags.name);
  const invalid = name === undefined ? undefined : nameProblem(name);
  if (invalid) throw new UsageError(`Invalid --name: ${invalid}`);
  // Inventory: `[HOST] add Soap 200`; the first word tells which is which.
  const words = [...flags._];
  const hasHost = words.length > 0 &&
    !(service === "inventory" &&
      INVENTORY_ACTIONS.includes(words[0].toLowerCase()));
  const host = hasHost ? words.shift()! : "localhost";
  if (words.length > 0 && service === "chat") {
    throw new UsageError(`Unexpected argument "${words[0]}"`);
  }
  return {
    host,
    port: parsePort(flags.port),
    service,
    name,
    request: words.length > 0 ? words.join(" ") : undefined,
    tls: flags.tls === true || flags.ca !== undefined,
    caFile: flags.ca === undefined ? undefined : String(flags.ca),
    password: passwordFrom(flags.password),
    help: flags.help === true,
  };
}

// ---------------------------------------------------------------------------
// The chat session
// ---------------------------------------------------------------------------

/** How the program ends: its exit code, and a message for an error. */
interface Ending {
  code: number;
  error?: string;
}

/** A connected client: one loop receives, another sends what you type. */
class ChatSession {
  /** Set when we asked to leave, so the server closing is expected. */
  leaving = false;
  /** The password sent with /auth, if any. */
  password?: string;
  /** The name to take with /nick, once in. */
  name?: string;
  #stopped = false;

  constructor(
    readonly conn: Deno.Conn,
    readonly target: string,
    readonly console: LineConsole,
  ) {}

  /** Send: one line to the server. */
  async send(line: string): Promise<void> {
    await writeAll(this.conn, encodeLine(line));
  }

  /** Sends /quit once; the server answers and closes the connection. */
  async leave(): Promise<void> {
    if (this.leaving) return;
    this.leaving = true;
    try {
      await this.send("/quit");
    } catch {
      // The connection is already gone: nothing left to leave.
    }
    setTimeout(() => this.stop({ code: 0 }), LEAVE_TIMEOUT_MS);
  }

  /**
   * Receive: print each line from the server as it arrives.
   * @returns how the program ends once the connection is closed
   */
  async receive(): Promise<Ending> {
    const buffer = new Uint8Array(16 * 1024);
    const framer = new LineFramer(64 * 1024);
    const hint = this.#hintIfNoWelcome();
    try {
      for (let count; (count = await this.conn.read(buffer)) !== null;) {
        clearTimeout(hint);
        this.#printFrames(framer.push(buffer.subarray(0, count)));
      }
      this.#printFrames(framer.end());
    } catch (error) {
      if (this.leaving || isClosedByUs(error)) return { code: 0 };
      return {
        code: 1,
        error: `Connection to "${this.target}" lost: ${networkReason(error)}`,
      };
    }
    if (this.leaving) return { code: 0 };
    return {
      code: 1,
      error: `The server "${this.target}" closed the connection`,
    };
  }

  /**
   * A connection an iterative server has not accepted yet is silent: after
   * a moment, tell a person at a terminal why.
   */
  #hintIfNoWelcome(): ReturnType<typeof setTimeout> | undefined {
    if (!Deno.stdout.isTerminal()) return undefined;
    return setTimeout(() => {
      this.console.print(paintDim(
        `Connected to "${this.target}", no welcome yet: the server may be ` +
          "serving someone else (an iterative server takes one client at a " +
          "time). What you type is kept until your turn.",
      ));
    }, NO_WELCOME_HINT_MS);
  }

  #printFrames(frames: Frame[]): void {
    for (const frame of frames) {
      if (frame === LINE_TOO_LONG) continue;
      // Whoever the server is, its lines cannot move our cursor.
      const line = cleanText(frame);
      this.console.print(paintChatLine(line));
      if (line === PASSWORD_NEEDED && !this.password) this.#askPassword();
      if (line === WRONG_PASSWORD) this.#askPassword();
    }
  }

  /** Asks for the password without echo, and sends it with /auth. */
  async #askPassword(): Promise<void> {
    const password = await this.console.readSecret("Password: ");
    if (password === undefined) {
      const error = this.password
        ? `The server "${this.target}" refused the password`
        : `The server "${this.target}" needs a password: give it with --password or ${PASSWORD_VARIABLE}`;
      return this.stop({ code: 1, error });
    }
    this.password = password;
    await this.send(`/auth ${password}`).catch(() => {});
    // A /nick sent before /auth was refused: send it again.
    if (this.name) await this.send(`/nick ${this.name}`).catch(() => {});
  }

  /** Closes the connection and ends the program. */
  stop({ code, error }: Ending): void {
    if (this.#stopped) return;
    this.#stopped = true;
    this.console.restore();
    try {
      this.conn.close();
    } catch {
      // Already closed.
    }
    if (error) console.error(paintError(error));
    Deno.exit(code);
  }
}

async function sendLine(session: ChatSession, line: string): Promise<void> {
  if (line.trim().toLowerCase() === "/quit") return session.leave();
  // A send can fail when the server has gone: the receive loop reports it.
  await session.send(line).catch(() => {});
}

/**
 * Create a socket and connect it to the server.
 * @throws {Error} with a one-line reason when that fails
 */
export async function connect(
  host: string,
  port: number,
  tls?: { caCerts?: string[] },
): Promise<Deno.Conn> {
  let conn;
  try {
    if (!tls) return await Deno.connect({ hostname: host, port });
    conn = await Deno.connectTls({ hostname: host, port, ...tls });
    // Check the server's certificate now, not at the first read.
    await conn.handshake();
    return conn;
  } catch (error) {
    if (conn) closeQuietly(conn);
    throw new Error(
      `Cannot connect to "${host}:${port}": ${networkReason(error)}`,
    );
  }
}

function closeQuietly(conn: Deno.Conn): void {
  try {
    conn.close();
  } catch {
    // Already closed.
  }
}

/** Reads the --ca file, or exits with a clear message. */
async function trustedCertificates(caFile?: string) {
  if (caFile === undefined) return undefined;
  try {
    return [await Deno.readTextFile(caFile)];
  } catch (error) {
    console.error(`Cannot read "${caFile}": ${(error as Error).message}`);
    Deno.exit(1);
  }
}

// ---------------------------------------------------------------------------
// The inventory service: one request, one reply, on one connection
// ---------------------------------------------------------------------------

/**
 * A connection to the inventory service: each request is one line, and
 * its reply the next line that comes back.
 */
class InventoryConnection {
  // A reply holds the whole stock: allow long lines, still bounded.
  #framer = new LineFramer(16 * 1024 * 1024);
  #lines: string[] = [];
  #buffer = new Uint8Array(64 * 1024);

  constructor(
    readonly conn: Deno.Conn,
    readonly target: string,
    public password?: string,
  ) {}

  /**
   * Sends one request and reads its reply. When the server asks for a
   * password first, sends it (asking for it on a terminal), then the
   * request again.
   * @throws {Error} with a one-line reason when the connection fails
   */
  async request(line: string): Promise<InventoryReply> {
    const reply = await this.#exchange(line);
    if (reply.ok || reply.error !== AUTHENTICATE_FIRST) return reply;
    this.password ??= askSecret("Password:");
    if (this.password === undefined) {
      throw new Error(
        `The server "${this.target}" needs a password: give it with --password or ${PASSWORD_VARIABLE}`,
      );
    }
    await this.authenticate();
    return await this.#exchange(line);
  }

  /** Sends the password with /auth. @throws {Error} when it is refused */
  async authenticate(): Promise<void> {
    const reply = await this.#exchange(`/auth ${this.password}`);
    if (!reply.ok) {
      throw new Error(`The server "${this.target}" refused the password`);
    }
  }

  async #exchange(line: string): Promise<InventoryReply> {
    try {
      await writeAll(this.conn, encodeLine(line));
      const reply = JSON.parse(await this.#nextLine());
      if (typeof reply?.ok !== "boolean") throw new SyntaxError('no "ok"');
      return reply;
    } catch (error) {
      if (error instanceof SyntaxError) {
        throw new Error(
          `The server "${this.target}" sent a reply that is not the inventory's JSON`,
        );
      }
      throw error;
    }
  }

  async #nextLine(): Promise<string> {
    while (this.#lines.length === 0) {
      let count;
      try {
        count = await this.conn.read(this.#buffer);
      } catch (error) {
        throw new Error(
          `Connection to "${this.target}" lost: ${networkReason(error)}`,
        );
      }
      if (count === null) {
        throw new Error(`The server "${this.target}" closed the connection`);
      }
      for (const frame of this.#framer.push(this.#buffer.subarray(0, count))) {
        if (frame !== LINE_TOO_LONG) this.#lines.push(frame);
      }
    }
    return this.#lines.shift()!;
  }
}

/** The inventory's reply to a request before /auth. */
const AUTHENTICATE_FIRST = "authenticate first: /auth PASSWORD";

/** The stock as an aligned table, items in alphabetical order. */
export function stockTable(stock: Stock): string[] {
  const items = Object.keys(stock).sort((a, b) => a.localeCompare(b));
  if (items.length === 0) return ["(the inventory is empty)"];
  const itemWidth = Math.max(4, ...items.map(textWidth));
  const counts = items.map((item) => String(stock[item]));
  const countWidth = Math.max(8, ...counts.map((count) => count.length));
  const padItem = (text: string) =>
    text + " ".repeat(itemWidth - textWidth(text));
  return [
    `${padItem("Item")}  ${"Quantity".padStart(countWidth)}`,
    `${"-".repeat(itemWidth)}  ${"-".repeat(countWidth)}`,
    ...items.map((item, i) =>
      `${padItem(item)}  ${counts[i].padStart(countWidth)}`
    ),
  ];
}

/** Prints a reply: its message and stock, or its error (exit code 1). */
function printReply(reply: InventoryReply): number {
  if (!reply.ok) {
    console.error(paintError(`Error: ${reply.error}`));
    return 1;
  }
  if (reply.message) console.log(reply.message);
  if (reply.inventory) {
    stockTable(reply.inventory).forEach((line) => console.log(line));
  }
  return 0;
}

const MENU = `
1. Add item
2. View inventory
3. Remove item
4. Exit`;

/** Asks a question; on a terminal, the question is shown first. */
async function ask(input: StdinLines, question: string) {
  if (Deno.stdin.isTerminal()) {
    await writeAll(Deno.stdout, new TextEncoder().encode(question));
  }
  return (await input.next())?.trim();
}

/** Asks for an item name until one is given. */
async function askItem(input: StdinLines): Promise<string | undefined> {
  while (true) {
    const item = await ask(input, "Item name: ");
    if (item === undefined || item !== "") return item;
    console.log(paintError("Please enter an item name."));
  }
}

/** Asks for a quantity until it is a whole number in range. */
async function askQuantity(input: StdinLines): Promise<number | undefined> {
  while (true) {
    const text = await ask(input, "Quantity: ");
    if (text === undefined) return undefined;
    const quantity = Number(text);
    if (/^\d+$/.test(text) && quantity >= 1 && quantity <= MAX_QUANTITY) {
      return quantity;
    }
    console.log(
      paintError(`Please enter a whole number from 1 to ${MAX_QUANTITY}.`),
    );
  }
}

/** The lab's menu: add, view, remove, exit; asks again on a bad answer. */
async function inventoryMenu(connection: InventoryConnection): Promise<number> {
  const input = new StdinLines();
  console.log(`socklab inventory at ${connection.target}`);
  while (true) {
    console.log(MENU);
    const choice = await ask(input, "Choose 1-4: ");
    if (choice === undefined || choice === "4") return 0;
    if (choice === "2") {
      printReply(await connection.request(JSON.stringify({ action: "view" })));
      continue;
    }
    if (choice !== "1" && choice !== "3") {
      console.log(paintError("Please choose 1, 2, 3 or 4."));
      continue;
    }
    const item = await askItem(input);
    const quantity = item === undefined ? undefined : await askQuantity(input);
    if (quantity === undefined) return 0;
    const action = choice === "1" ? "add" : "remove";
    printReply(
      await connection.request(JSON.stringify({ action, item, quantity })),
    );
  }
}

/** Runs the inventory client: one request, or the menu. */
async function inventory(conn: Deno.Conn, options: ClientOptions) {
  const connection = new InventoryConnection(
    conn,
    `${options.host}:${options.port}`,
    options.password,
  );
  try {
    if (options.password) await connection.authenticate();
    return options.request === undefined
      ? await inventoryMenu(connection)
      : printReply(await connection.request(options.request));
  } catch (error) {
    console.error(paintError((error as Error).message));
    return 1;
  }
}

async function main(): Promise<void> {
  const options = argsOrExit(parseClientArgs, USAGE);
  chooseColors();

  const tls = options.tls
    ? { caCerts: await trustedCertificates(options.caFile) }
    : undefined;
  let conn;
  try {
    conn = await connect(options.host, options.port, tls);
  } catch (error) {
    console.error((error as Error).message);
    Deno.exit(1);
  }
  if (options.service === "inventory") {
    const code = await inventory(conn, options);
    conn.close();
    Deno.exit(code);
  }

  const name = options.name ??
    (Deno.stdin.isTerminal() ? askName() : undefined);
  const session = new ChatSession(
    conn,
    `${options.host}:${options.port}`,
    new LineConsole(),
  );
  Deno.addSignalListener("SIGINT", () => session.leave());

  session.password = options.password;
  session.name = name;
  if (options.password) {
    await session.send(`/auth ${options.password}`).catch(() => {});
  }
  if (name) await session.send(`/nick ${name}`).catch(() => {});
  // Typing and receiving run at the same time: no turn-taking.
  session.console.readLines((line) => sendLine(session, line))
    .then(() => session.leave());
  session.stop(await session.receive());
}

if (import.meta.main) main();
