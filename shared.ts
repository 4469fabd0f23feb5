/**
 * What more than one socklab script needs: line framing over a TCP byte
 * stream, text cleaning, the chat's line formats and names, colors for
 * printing chat lines, flag checks, and the addresses a neighbour can use.
 *
 * ```ts
 * import { LineFramer } from "./shared.ts";
 * ```
 *
 * @module
 */

import * as stdColors from "@std/fmt/colors";
import { parseArgs } from "@std/cli/parse-args";

// ---------------------------------------------------------------------------
// Framing: turning a byte stream into lines
// ---------------------------------------------------------------------------

/** The longest line (in bytes, without its line end) a peer may send. */
export const MAX_LINE_BYTES = 4096;

/** Marks the place where a peer sent a line longer than the limit. */
export const LINE_TOO_LONG: unique symbol = Symbol("line too long");

/** A line of text, or the marker of a line that was too long and dropped. */
export type Frame = string | typeof LINE_TOO_LONG;

const LF = 0x0a;
const CR = 0x0d;

/**
 * Splits a byte stream into lines. TCP delivers bytes, not messages: one
 * read may hold half a line, several lines, or half of a multi-byte UTF-8
 * character, so bytes are kept until a line end arrives. `\n`, `\r\n` and
 * a bare `\r` all end a line. A line over `maxLineBytes` is reported once
 * as {@linkcode LINE_TOO_LONG} and its bytes are dropped until its end, so
 * memory stays bounded whatever a peer sends. Invalid UTF-8 becomes U+FFFD.
 */
export class LineFramer {
  #pieces: Uint8Array[] = [];
  #size = 0;
  #dropping = false;
  #afterCR = false;
  #decoder = new TextDecoder();

  /** @param maxLineBytes the longest line kept, in bytes */
  constructor(readonly maxLineBytes: number = MAX_LINE_BYTES) {}

  /**
   * Takes the bytes of one read (which may be reused by the caller).
   * @returns the frames completed by these bytes, in order
   */
  push(chunk: Uint8Array): Frame[] {
    const frames: Frame[] = [];
    let start = 0;
    for (let i = 0; i < chunk.length; i++) {
      const byte = chunk[i];
      if (byte === LF && this.#afterCR) {
        // The LF of a CRLF: the CR already ended the line.
        this.#afterCR = false;
        start = i + 1;
        continue;
      }
      this.#afterCR = byte === CR;
      if (byte !== LF && byte !== CR) continue;
      this.#keep(chunk.subarray(start, i), frames);
      if (this.#dropping) this.#dropping = false;
      else frames.push(this.#takeLine());
      start = i + 1;
    }
    this.#keep(chunk.subarray(start), frames);
    return frames;
  }

  /**
   * Called when the stream ends.
   * @returns the last line if it had no line end, else nothing
   */
  end(): Frame[] {
    const unfinished = this.#size > 0 && !this.#dropping;
    const frames = unfinished ? [this.#takeLine()] : [];
    this.#dropping = false;
    this.#pieces = [];
    this.#size = 0;
    return frames;
  }

  #keep(piece: Uint8Array, frames: Frame[]): void {
    if (piece.length === 0 || this.#dropping) return;
    if (this.#size + piece.length > this.maxLineBytes) {
      this.#dropping = true;
      this.#pieces = [];
      this.#size = 0;
      frames.push(LINE_TOO_LONG);
      return;
    }
    // Copy: the caller reuses its read buffer for the next read.
    this.#pieces.push(piece.slice());
    this.#size += piece.length;
  }

  #takeLine(): string {
    const bytes = this.#pieces.length === 1
      ? this.#pieces[0]
      : concatBytes(this.#pieces, this.#size);
    this.#pieces = [];
    this.#size = 0;
    return this.#decoder.decode(bytes);
  }
}

/** Joins byte arrays into one. */
export function concatBytes(pieces: Uint8Array[], total?: number): Uint8Array {
  const size = total ?? pieces.reduce((sum, piece) => sum + piece.length, 0);
  const joined = new Uint8Array(size);
  let offset = 0;
  for (const piece of pieces) {
    joined.set(piece, offset);
    offset += piece.length;
  }
  return joined;
}

/**
 * Sends every byte: one `write()` may take only part of the buffer, so
 * write the rest until nothing is left.
 */
export async function writeAll(
  writer: { write(bytes: Uint8Array): Promise<number> },
  bytes: Uint8Array,
): Promise<void> {
  let sent = 0;
  while (sent < bytes.length) {
    sent += await writer.write(bytes.subarray(sent));
  }
}

const encoder = new TextEncoder();

/** Encodes text as one UTF-8 line, with its `\n`. */
export function encodeLine(text: string): Uint8Array {
  return encoder.encode(text + "\n");
}

// ---------------------------------------------------------------------------
// Text cleaning
// ---------------------------------------------------------------------------

// Terminal escape sequences (CSI, OSC, and two-byte ESC sequences), then
// the control characters left: C0, DEL, C1, and the bidirectional
// overrides that can make text read backwards.
const ESCAPE_SEQUENCES =
  // deno-lint-ignore no-control-regex -- matching control bytes is the point
  /\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[ -~]?/g;
const CONTROL_CHARACTERS =
  // deno-lint-ignore no-control-regex -- matching control bytes is the point
  /[\x00-\x08\x0a-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]/g;

/**
 * Removes what could clear a screen, move the cursor or forge a line:
 * escape sequences and control characters. Tabs become spaces. Printable
 * Unicode (accents, Devanagari, CJK, emoji) passes unchanged.
 */
export function cleanText(text: string): string {
  return text.replace(ESCAPE_SEQUENCES, "").replace(CONTROL_CHARACTERS, "")
    .replaceAll("\t", " ");
}

// ---------------------------------------------------------------------------
// Line formats of the chat protocol
// ---------------------------------------------------------------------------

/** `<NAME> text`: a message from NAME. */
export function messageLine(name: string, text: string): string {
  return `<${name}> ${text}`;
}

/** `* text`: a notice from the server. */
export function noticeLine(text: string): string {
  return `* ${text}`;
}

/** `! text`: an error, sent to one client. */
export function errorLine(text: string): string {
  return `! ${text}`;
}

/** `[private] <NAME> text`: a private message from NAME. */
export function privateLine(name: string, text: string): string {
  return `[private] ${messageLine(name, text)}`;
}

/** What a received chat line is, for printing it. */
export type ChatLine =
  | { kind: "message"; name: string; text: string }
  | { kind: "private"; name: string; text: string }
  | { kind: "notice"; text: string }
  | { kind: "error"; text: string }
  | { kind: "other"; text: string };

const MESSAGE = /^<([^>\s]{1,64})> ?(.*)$/s;
const PRIVATE_PREFIX = "[private] ";

/** Tells which of the protocol's formats a line from the server has. */
export function parseChatLine(line: string): ChatLine {
  const isPrivate = line.startsWith(PRIVATE_PREFIX);
  const body = isPrivate ? line.slice(PRIVATE_PREFIX.length) : line;
  const message = MESSAGE.exec(body);
  if (message) {
    const [, name, text] = message;
    return { kind: isPrivate ? "private" : "message", name, text };
  }
  if (line.startsWith("* ")) return { kind: "notice", text: line.slice(2) };
  if (line.startsWith("! ")) return { kind: "error", text: line.slice(2) };
  return { kind: "other", text: line };
}

// ---------------------------------------------------------------------------
// Names
// ---------------------------------------------------------------------------

/** The longest name, in characters. */
export const MAX_NAME_LENGTH = 24;

const NAME = /^[A-Za-z0-9._-]+$/;

/**
 * Checks a chat name: 1 to 24 of ASCII letters, digits, `-`, `_`, `.`.
 * (ASCII only, so no one can pass for someone else with a look-alike
 * letter from another script.)
 * @returns why the name is not valid, or `undefined` when it is
 */
export function nameProblem(name: string): string | undefined {
  if (name.length === 0) return "a name cannot be empty";
  if (name.length > MAX_NAME_LENGTH) {
    return `name "${
      name.slice(0, MAX_NAME_LENGTH)
    }..." is too long (${MAX_NAME_LENGTH} characters at most)`;
  }
  if (!NAME.test(name)) {
    return `name "${name}" is not valid: use letters, digits, "-", "_" or "."`;
  }
  return undefined;
}

/** The form of a name used to compare names, ignoring case. */
export function nameKey(name: string): string {
  return name.toLowerCase();
}

// ---------------------------------------------------------------------------
// Colors
// ---------------------------------------------------------------------------

type Paint = (text: string) => string;

// The std module is plain JavaScript without types: type what we use here.
const colors = stdColors as {
  setColorEnabled(enabled: boolean): void;
  bold: Paint;
  dim: Paint;
  red: Paint;
  green: Paint;
  yellow: Paint;
  blue: Paint;
  magenta: Paint;
  cyan: Paint;
  brightGreen: Paint;
  brightBlue: Paint;
  brightMagenta: Paint;
  brightCyan: Paint;
  brightYellow: Paint;
};

/** Colors only for a terminal, and never when NO_COLOR is set. */
export function chooseColors(): void {
  colors.setColorEnabled(Deno.stdout.isTerminal() && !Deno.noColor);
}

const NAME_PAINTS: Paint[] = [
  colors.green,
  colors.yellow,
  colors.blue,
  colors.magenta,
  colors.cyan,
  colors.brightGreen,
  colors.brightBlue,
  colors.brightMagenta,
  colors.brightCyan,
  colors.brightYellow,
];

/** Paints a name in its own color: the same name, the same color, always. */
export function paintName(name: string): string {
  let hash = 0;
  for (const char of nameKey(name)) {
    hash = (hash * 31 + char.codePointAt(0)!) >>> 0;
  }
  return colors.bold(NAME_PAINTS[hash % NAME_PAINTS.length](name));
}

/** Paints a line from a chat server for a terminal. */
export function paintChatLine(line: string): string {
  const parsed = parseChatLine(line);
  switch (parsed.kind) {
    case "message":
      return `<${paintName(parsed.name)}> ${parsed.text}`;
    case "private":
      return `${colors.magenta("[private]")} <${
        paintName(parsed.name)
      }> ${parsed.text}`;
    case "notice":
      return colors.dim(line);
    case "error":
      return colors.red(line);
    case "other":
      return line;
  }
}

/** Paints an error message of ours for the terminal. */
export function paintError(text: string): string {
  return colors.red(text);
}

/** Paints a secondary text (hints, timestamps) for the terminal. */
export function paintDim(text: string): string {
  return colors.dim(text);
}

// ---------------------------------------------------------------------------
// Flags and errors
// ---------------------------------------------------------------------------

/** A misuse of a script's flags: printed with the usage, exit code 2. */
export class UsageError extends Error {
  override name = "UsageError";
}

/**
 * Reads a port flag.
 * @throws {UsageError} unless it is a whole number from 0 to 65535
 */
export function parsePort(value: unknown): number {
  const text = String(value);
  const port = Number(text);
  if (!/^\d+$/.test(text) || port > 65535) {
    throw new UsageError(
      `Invalid port "${text}": use a whole number from 0 to 65535`,
    );
  }
  return port;
}

/** Which flags a script takes, as `parseArgs` from `@std/cli` wants them. */
export interface FlagSpec {
  string?: string[];
  boolean?: string[];
  alias?: Record<string, string>;
  default?: Record<string, string | boolean>;
}

/** Flags as parsed: positional arguments in `_`, flags by their long name. */
export interface ParsedFlags {
  _: string[];
  [flag: string]: unknown;
}

/**
 * Parses a script's arguments.
 * @throws {UsageError} for a flag the script does not take
 */
export function parseFlags(args: string[], spec: FlagSpec): ParsedFlags {
  const parsed: { _: unknown[]; [flag: string]: unknown } = parseArgs(args, {
    ...spec,
    unknown: (arg: string) => {
      if (arg.startsWith("-") && arg !== "-") {
        throw new UsageError(`Unknown option "${arg.split("=")[0]}"`);
      }
      return true;
    },
  });
  return { ...parsed, _: parsed._.map(String) };
}

/** The exit code for a misuse of flags. */
export const EXIT_USAGE = 2;

/**
 * Prints a usage error and the usage, then exits with code 2.
 * @param message what was wrong
 * @param usage the script's usage text
 */
export function exitWithUsage(message: string, usage: string): never {
  console.error(message);
  console.error(usage);
  Deno.exit(EXIT_USAGE);
}

/**
 * Says in words why a network operation failed: the errors a user can
 * meet (refused, reset, unknown host, address in use) get a plain reason.
 */
export function networkReason(error: unknown): string {
  if (error instanceof Deno.errors.ConnectionRefused) {
    return "connection refused (is the server running, and on this port?)";
  }
  if (error instanceof Deno.errors.ConnectionReset) return "connection reset";
  if (error instanceof Deno.errors.ConnectionAborted) {
    return "connection aborted";
  }
  if (error instanceof Deno.errors.AddrInUse) {
    return "address already in use (is another server running on this port?)";
  }
  if (error instanceof Deno.errors.AddrNotAvailable) {
    return "address not available on this machine";
  }
  if (error instanceof Deno.errors.PermissionDenied) {
    return "permission denied (ports below 1024 need administrator rights; " +
      "or run with --allow-net)";
  }
  if (error instanceof Deno.errors.TimedOut) return "timed out";
  const message = error instanceof Error ? error.message : String(error);
  if (/lookup|resolve|name or service|nodename|no such host/i.test(message)) {
    return "unknown host";
  }
  if (/unreachable/i.test(message)) return "network unreachable";
  return message;
}

/** Is this error one the network gives when a peer goes away? */
export function isDisconnect(error: unknown): boolean {
  return error instanceof Deno.errors.ConnectionReset ||
    error instanceof Deno.errors.ConnectionAborted ||
    error instanceof Deno.errors.BrokenPipe ||
    error instanceof Deno.errors.NotConnected ||
    error instanceof Deno.errors.UnexpectedEof;
}

/** Is this error the one a read gets when we closed the socket ourselves? */
export function isClosedByUs(error: unknown): boolean {
  return error instanceof Deno.errors.BadResource ||
    error instanceof Deno.errors.Interrupted;
}

// ---------------------------------------------------------------------------
// Addresses a neighbour can use
// ---------------------------------------------------------------------------

/**
 * The IPv4 addresses of this machine that others on the LAN can reach
 * (loopback aside). Empty when interfaces cannot be listed.
 */
export function lanAddresses(): string[] {
  try {
    const addresses = Deno.networkInterfaces()
      .filter((nic) => nic.family === "IPv4" && !nic.address.startsWith("127."))
      .map((nic) => nic.address);
    return [...new Set(addresses)];
  } catch {
    return [];
  }
}

/**
 * The addresses to show in a startup banner for a server bound to `host`:
 * the LAN addresses when it listens on all interfaces, else just `host`.
 */
export function reachableAddresses(host: string): string[] {
  const everywhere = host === "0.0.0.0" || host === "::" || host === "[::]";
  if (!everywhere) return [host];
  return [...lanAddresses(), "127.0.0.1"];
}

/** A clock time for log lines, like `14:03:27`. */
export function clockTime(date: Date = new Date()): string {
  return date.toTimeString().slice(0, 8);
}
