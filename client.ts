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
  chooseColors,
  DEFAULT_PORT,
  encodeLine,
  type Frame,
  isClosedByUs,
  LINE_TOO_LONG,
  LineConsole,
  LineFramer,
  nameProblem,
  networkReason,
  paintChatLine,
  paintDim,
  paintError,
  parseFlags,
  parsePort,
  UsageError,
  writeAll,
} from "./shared.ts";

/** How long a silent server is waited for before telling why it may be. */
const NO_WELCOME_HINT_MS = 1500;

/** How long to wait for the server to close after we asked to leave. */
const LEAVE_TIMEOUT_MS = 3000;

const USAGE = `socklab TCP chat client

USAGE:
  deno run -A client.ts [HOST] [OPTIONS]

  HOST                The server's address (default localhost), e.g. 192.168.0.101

OPTIONS:
  -p, --port <PORT>   The server's port (default ${DEFAULT_PORT})
  -n, --name <NAME>   Your name in the chat (without it, you are asked)
  -h, --help          Show this help

In the chat, /help lists the commands. Leave with /quit, Ctrl-D or Ctrl-C.
Lines piped in are sent one by one: printf 'hi\\n' | deno run -A client.ts --name bot`;

/** What the client was asked to do. */
export interface ClientOptions {
  /** The server's host name or address. @default "localhost" */
  host: string;
  /** The server's port. @default 9999 */
  port: number;
  /** The name to ask for; undefined means ask the user. */
  name?: string;
  /** Print the usage and stop. */
  help: boolean;
}

/**
 * Reads the client's arguments.
 * @throws {UsageError} for a bad flag or argument
 */
export function parseClientArgs(args: string[]): ClientOptions {
  const flags = parseFlags(args, {
    string: ["port", "name"],
    boolean: ["help"],
    alias: { p: "port", n: "name", h: "help" },
    default: { port: String(DEFAULT_PORT) },
  });
  if (flags._.length > 1) {
    throw new UsageError(`Unexpected argument "${flags._[1]}"`);
  }
  const name = flags.name === undefined ? undefined : String(flags.name);
  const invalid = name === undefined ? undefined : nameProblem(name);
  if (invalid) throw new UsageError(`Invalid --name: ${invalid}`);
  return {
    host: flags._[0] ?? "localhost",
    port: parsePort(flags.port),
    name,
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
      if (frame !== LINE_TOO_LONG) this.console.print(paintChatLine(frame));
    }
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
export async function connect(host: string, port: number): Promise<Deno.Conn> {
  try {
    return await Deno.connect({ hostname: host, port });
  } catch (error) {
    throw new Error(
      `Cannot connect to "${host}:${port}": ${networkReason(error)}`,
    );
  }
}

async function main(): Promise<void> {
  const options = argsOrExit(parseClientArgs, USAGE);
  chooseColors();

  let conn;
  try {
    conn = await connect(options.host, options.port);
  } catch (error) {
    console.error((error as Error).message);
    Deno.exit(1);
  }

  const name = options.name ??
    (Deno.stdin.isTerminal() ? askName() : undefined);
  const session = new ChatSession(
    conn,
    `${options.host}:${options.port}`,
    new LineConsole(),
  );
  Deno.addSignalListener("SIGINT", () => session.leave());

  if (name) await session.send(`/nick ${name}`).catch(() => {});
  // Typing and receiving run at the same time: no turn-taking.
  session.console.readLines((line) => sendLine(session, line))
    .then(() => session.leave());
  session.stop(await session.receive());
}

if (import.meta.main) main();
