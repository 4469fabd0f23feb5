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
  chooseColors,
  encodeLine,
  exitWithUsage,
  type Frame,
  isClosedByUs,
  LINE_TOO_LONG,
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

/** The port the lab uses. */
export const DEFAULT_PORT = 9999;

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
// The line you type, kept apart from the lines that arrive
// ---------------------------------------------------------------------------

/** What a key press in the line editor amounts to. */
export type EditorEvent =
  | { kind: "line"; text: string }
  | { kind: "interrupt" }
  | { kind: "end" };

// Keys that send escape sequences (arrows, Home, F1...): not supported,
// so they are ignored rather than typed into the line.
// deno-lint-ignore no-control-regex -- matching escape sequences is the point
const KEY_SEQUENCE = /\x1b(?:\[[0-9;?]*[ -/]*[@-~]|O.|.)?/g;

/**
 * A small line editor for a terminal in raw mode. The terminal's own line
 * editing cannot redraw what you were typing after a message is printed,
 * so the client keeps the line itself: printable text, Backspace, Ctrl-U
 * (clear), Ctrl-W (delete a word), Enter, Ctrl-C and Ctrl-D.
 */
export class LineEditor {
  #text = "";
  #decoder = new TextDecoder();

  /** @param prompt shown before the line being typed */
  constructor(readonly prompt = "> ") {}

  /** The line typed so far. */
  get text(): string {
    return this.#text;
  }

  /**
   * Takes the bytes of key presses.
   * @returns the lines finished, and whether to interrupt or end
   */
  feed(bytes: Uint8Array): EditorEvent[] {
    const typed = this.#decoder.decode(bytes, { stream: true })
      .replace(KEY_SEQUENCE, "");
    const events: EditorEvent[] = [];
    for (const char of typed) {
      const event = this.#press(char);
      if (event) events.push(event);
    }
    return events;
  }

  #press(char: string): EditorEvent | undefined {
    switch (char) {
      case "\r":
      case "\n": {
        const text = this.#text;
        this.#text = "";
        return { kind: "line", text };
      }
      case "\x03":
        return { kind: "interrupt" };
      case "\x04":
        return this.#text === "" ? { kind: "end" } : undefined;
      case "\x7f":
      case "\b":
        this.#text = Array.from(this.#text).slice(0, -1).join("");
        return undefined;
      case "\x15":
        this.#text = "";
        return undefined;
      case "\x17":
        this.#text = this.#text.replace(/\S*\s*$/, "");
        return undefined;
      default:
        if (char >= " " && char !== "\x7f") this.#text += char;
        return undefined;
    }
  }

  /**
   * The prompt and the typed line, fitted into `columns` (the start of a
   * long line is cut), ready to overwrite the current terminal row.
   */
  render(columns: number): string {
    const room = Math.max(columns - this.prompt.length - 2, 8);
    const chars = Array.from(this.#text);
    let shown = "";
    let width = 0;
    for (let i = chars.length - 1; i >= 0; i--) {
      width += charWidth(chars[i]);
      if (width > room) {
        shown = "…" + shown;
        break;
      }
      shown = chars[i] + shown;
    }
    return `\r\x1b[K${paintDim(this.prompt)}${shown}`;
  }
}

/** Columns a character takes: East Asian wide characters and emoji take 2. */
function charWidth(char: string): number {
  const code = char.codePointAt(0)!;
  const wide = (code >= 0x1100 && code <= 0x115f) ||
    (code >= 0x2e80 && code <= 0xa4cf) || (code >= 0xac00 && code <= 0xd7a3) ||
    (code >= 0xf900 && code <= 0xfaff) || (code >= 0xfe30 && code <= 0xfe4f) ||
    (code >= 0xff00 && code <= 0xff60) || (code >= 0xffe0 && code <= 0xffe6) ||
    (code >= 0x1f300 && code <= 0x1faff) || (code >= 0x20000);
  return wide ? 2 : 1;
}

// ---------------------------------------------------------------------------
// The screen
// ---------------------------------------------------------------------------

const encoder = new TextEncoder();

/** Prints what arrives, keeping the line being typed at the bottom. */
class Screen {
  constructor(readonly editor?: LineEditor) {}

  /** Prints one line above the line being typed. */
  print(line: string): void {
    if (!this.editor) return writeOut(line + "\n");
    writeOut(`\r\x1b[K${line}\n${this.editor.render(columns())}`);
  }

  /** Redraws the line being typed. */
  redraw(): void {
    if (this.editor) writeOut(this.editor.render(columns()));
  }

  /** Leaves the line being typed on the screen, as sent. */
  keepTyped(text: string): void {
    if (this.editor) {
      writeOut(`\r\x1b[K${paintDim(this.editor.prompt)}${text}\n`);
    }
  }
}

function writeOut(text: string): void {
  const bytes = encoder.encode(text);
  for (let sent = 0; sent < bytes.length;) {
    sent += Deno.stdout.writeSync(bytes.subarray(sent));
  }
}

function columns(): number {
  try {
    return Deno.consoleSize().columns;
  } catch {
    return 80;
  }
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
    readonly screen: Screen,
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
    try {
      for (let count; (count = await this.conn.read(buffer)) !== null;) {
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

  #printFrames(frames: Frame[]): void {
    for (const frame of frames) {
      if (frame !== LINE_TOO_LONG) this.screen.print(paintChatLine(frame));
    }
  }

  /** Closes the connection and ends the program. */
  stop({ code, error }: Ending): void {
    if (this.#stopped) return;
    this.#stopped = true;
    if (this.screen.editor) {
      writeOut("\r\x1b[K");
      Deno.stdin.setRaw(false);
    }
    try {
      this.conn.close();
    } catch {
      // Already closed.
    }
    if (error) console.error(paintError(error));
    Deno.exit(code);
  }
}

/** Sends each typed line; Ctrl-C or Ctrl-D leaves. */
async function sendTyped(session: ChatSession, editor: LineEditor) {
  const buffer = new Uint8Array(1024);
  session.screen.redraw();
  for (let count; (count = await Deno.stdin.read(buffer)) !== null;) {
    for (const event of editor.feed(buffer.subarray(0, count))) {
      if (event.kind !== "line") return session.leave();
      session.screen.keepTyped(event.text);
      await sendLine(session, event.text);
    }
    session.screen.redraw();
  }
  await session.leave();
}

/** Sends each piped line, then leaves once all are sent. */
async function sendPiped(session: ChatSession) {
  const buffer = new Uint8Array(16 * 1024);
  const framer = new LineFramer(64 * 1024);
  for (let count; (count = await Deno.stdin.read(buffer)) !== null;) {
    for (const frame of framer.push(buffer.subarray(0, count))) {
      if (frame !== LINE_TOO_LONG) await sendLine(session, frame);
    }
  }
  for (const frame of framer.end()) {
    if (frame !== LINE_TOO_LONG) await sendLine(session, frame);
  }
  await session.leave();
}

async function sendLine(session: ChatSession, line: string): Promise<void> {
  if (line.trim().toLowerCase() === "/quit") return session.leave();
  // A send can fail when the server has gone: the receive loop reports it.
  await session.send(line).catch(() => {});
}

/** Asks for a name on the terminal until it is a valid one, or empty. */
function askName(): string | undefined {
  while (true) {
    const answer = prompt("Your name (Enter for a guest name):")?.trim();
    if (!answer) return undefined;
    const problem = nameProblem(answer);
    if (!problem) return answer;
    console.log(paintError(problem));
  }
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
  let options;
  try {
    options = parseClientArgs(Deno.args);
  } catch (error) {
    if (error instanceof UsageError) exitWithUsage(error.message, USAGE);
    throw error;
  }
  if (options.help) {
    console.log(USAGE);
    return;
  }
  chooseColors();

  let conn;
  try {
    conn = await connect(options.host, options.port);
  } catch (error) {
    console.error((error as Error).message);
    Deno.exit(1);
  }

  const typing = Deno.stdin.isTerminal() && Deno.stdout.isTerminal();
  const name = options.name ??
    (Deno.stdin.isTerminal() ? askName() : undefined);
  const editor = typing ? new LineEditor() : undefined;
  const session = new ChatSession(
    conn,
    `${options.host}:${options.port}`,
    new Screen(editor),
  );
  Deno.addSignalListener("SIGINT", () => session.leave());

  if (name) await session.send(`/nick ${name}`).catch(() => {});
  if (editor) {
    Deno.stdin.setRaw(true);
    sendTyped(session, editor);
  } else {
    sendPiped(session);
  }
  session.stop(await session.receive());
}

if (import.meta.main) main();
