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

import { createHash, timingSafeEqual } from "node:crypto";
import * as stdColors from "@std/fmt/colors";
import { parseArgs } from "@std/cli/parse-args";
import { promptSecret } from "@std/cli/prompt-secret";

/** The port the lab uses, for TCP and for UDP. */
export const DEFAULT_PORT = 9999;

/** The services of udp_server.ts. */
export const UDP_SERVICES = ["chat", "month", "echo"] as const;

/** One of the services of udp_server.ts. */
export type UdpService = typeof UDP_SERVICES[number];

// ---------------------------------------------------------------------------
// Framing: turning a byte stream into lines
// ---------------------------------------------------------------------------

/** The longest line (in bytes, without its line end) a peer may send. */
export const MAX_LINE_BYTES = 4096;

/** Marks the place where a peer sent a line longer than the limit. */
export const LINE_TOO_LONG: unique symbol = Symbol("line too long");

/** A line of text, or the marker of a line that was too long and dropped. */
export type Frame = string | typeof LINE_TOO_LONG;

// One decoder for every framer: it decodes whole lines, never a stream,
// so it keeps no state between calls (and each connection saves one).
const lineDecoder = new TextDecoder();

/** Decodes a line's bytes as UTF-8 (invalid bytes become U+FFFD). */
export function decodeLine(bytes: Uint8Array): string {
  return lineDecoder.decode(bytes);
}

/** Receives the lines a {@linkcode LineFramer} finds. */
export interface LineSink {
  /**
   * A complete line: `bytes` from `start` to `end` (its line end left
   * out), valid until the caller reuses the buffer it read into.
   */
  line(bytes: Uint8Array, start: number, end: number): void;
  /** A line over the limit was dropped. */
  tooLong(): void;
  /**
   * Optional: takes as many whole lines as it can at once from `bytes`,
   * starting at `start` (the start of a line), skipping the framer's work
   * for each; lines over `maxLineBytes` are left to the framer.
   * @returns where it stopped: the framer goes on from there
   */
  lines?(bytes: Uint8Array, start: number, maxLineBytes: number): number;
}

/** Line feed and carriage return, as bytes. */
export const LF = 0x0a;
export const CR = 0x0d;

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
  /** @param maxLineBytes the longest line kept, in bytes */
  constructor(readonly maxLineBytes: number = MAX_LINE_BYTES) {}

  /**
   * Takes the bytes of one read (which may be reused by the caller).
   * @returns the frames completed by these bytes, in order
   */
  push(chunk: Uint8Array): Frame[] {
    const frames: Frame[] = [];
    this.feed(chunk, collect(frames));
    return frames;
  }

  /**
   * Called when the stream ends.
   * @returns the last line if it had no line end, else nothing
   */
  end(): Frame[] {
    const frames: Frame[] = [];
    this.finish(collect(frames));
    return frames;
  }

  /**
   * {@linkcode LineFramer.push}, handing each line to `sink` as bytes,
   * with no copy when it lies whole in `chunk`: a busy server makes no
   * garbage per line.
   */
  feed(chunk: Uint8Array, sink: LineSink): void {
    // The LF of a CRLF split between reads: the CR ended the line.
    let start = this.#afterCR && chunk[0] === LF ? 1 : 0;
    this.#afterCR = false;
    // Line ends are found by indexOf (native, fast), one kind at a time,
    // and looked for again only once passed (-1: there is none after).
    let nextLF = -2;
    let nextCR = -2;
    while (true) {
      if (sink.lines && this.#size === 0 && !this.#dropping) {
        start = sink.lines(chunk, start, this.maxLineBytes);
      }
      if (nextLF !== -1 && nextLF < start) nextLF = chunk.indexOf(LF, start);
      if (nextCR !== -1 && nextCR < start) nextCR = chunk.indexOf(CR, start);
      if (nextLF < 0 && nextCR < 0) break;
      const atLF = nextCR < 0 || (nextLF >= 0 && nextLF < nextCR);
      const end = atLF ? nextLF : nextCR;
      this.#endLine(chunk, start, end, sink);
      start = end + 1;
      if (!atLF) {
        if (start === chunk.length) this.#afterCR = true;
        else if (chunk[start] === LF) start++;
      }
    }
    this.#keep(chunk.subarray(start), sink);
  }

  /** {@linkcode LineFramer.end}, handing the last line to `sink`. */
  finish(sink: LineSink): void {
    if (this.#size > 0 && !this.#dropping) this.#takeLine(sink);
    this.#dropping = false;
    this.#pieces = [];
    this.#size = 0;
  }

  /** `chunk[start, end)` ends a line: complete, or it was too long. */
  #endLine(chunk: Uint8Array, start: number, end: number, sink: LineSink) {
    if (this.#size === 0 && !this.#dropping) {
      // The whole line is in this read: hand it over from there, no copy.
      if (end - start > this.maxLineBytes) sink.tooLong();
      else sink.line(chunk, start, end);
      return;
    }
    this.#keep(chunk.subarray(start, end), sink);
    if (this.#dropping) this.#dropping = false;
    else this.#takeLine(sink);
  }

  #keep(piece: Uint8Array, sink: LineSink): void {
    if (piece.length === 0 || this.#dropping) return;
    if (this.#size + piece.length > this.maxLineBytes) {
      this.#dropping = true;
      this.#pieces = [];
      this.#size = 0;
      sink.tooLong();
      return;
    }
    // Copy: the caller reuses its read buffer for the next read.
    this.#pieces.push(piece.slice());
    this.#size += piece.length;
  }

  #takeLine(sink: LineSink): void {
    const bytes = this.#pieces.length === 1
      ? this.#pieces[0]
      : concatBytes(this.#pieces, this.#size);
    this.#pieces = [];
    this.#size = 0;
    sink.line(bytes, 0, bytes.length);
  }
}

/** A sink that decodes each line into `frames`. */
function collect(frames: Frame[]): LineSink {
  return {
    line: (bytes, start, end) =>
      frames.push(lineDecoder.decode(bytes.subarray(start, end))),
    tooLong: () => frames.push(LINE_TOO_LONG),
  };
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
    sent += await writer.write(sent === 0 ? bytes : bytes.subarray(sent));
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
  // Most lines hold nothing to remove: one test, then no copies.
  if (!UNSAFE.test(text)) return text;
  return text.replace(ESCAPE_SEQUENCES, "").replace(CONTROL_CHARACTERS, "")
    .replaceAll("\t", " ");
}

// Any character that cleanText removes or replaces.
// deno-lint-ignore no-control-regex -- matching control bytes is the point
const UNSAFE = /[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]/;

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

/** What a line typed into a chat is: a message, or a command. */
export type ChatInput =
  | { kind: "empty" }
  | { kind: "message"; text: string }
  | { kind: "command"; command: string; rest: string };

/**
 * Reads a line typed into a chat (after cleaning it): `/cmd rest` is a
 * command (its name in lower case), `//text` is the message `/text`, any
 * other line is a message, and a blank line is nothing.
 */
export function parseChatInput(rawLine: string): ChatInput {
  const line = cleanText(rawLine).trimEnd();
  if (line.trim() === "") return { kind: "empty" };
  if (line.startsWith("//")) return { kind: "message", text: line.slice(1) };
  if (!line.startsWith("/")) return { kind: "message", text: line };
  const space = line.indexOf(" ");
  const command = (space < 0 ? line : line.slice(0, space)).toLowerCase();
  const rest = space < 0 ? "" : line.slice(space + 1).trim();
  return { kind: "command", command, rest };
}

/**
 * Copies the line at `bytes[start..]` into `into` at `at` if it is a plain
 * message: one that {@linkcode parseChatInput} would pass on unchanged
 * (printable ASCII only, not a command, no trailing space). A server can
 * then relay its bytes as they came, without decoding, cleaning and
 * encoding them again: most chat lines are like this. One pass checks,
 * copies and finds the line end (LF or CRLF), within `maxLineBytes`.
 * @returns the index of the line's LF in `bytes`, or -1 (having perhaps
 *   written past `at`) if it is not a plain message or has no line end yet
 */
export function copyPlainLine(
  bytes: Uint8Array,
  start: number,
  maxLineBytes: number,
  into: Uint8Array,
  at: number,
): number {
  if (bytes[start] === SLASH) return -1;
  const bound = Math.min(bytes.length, start + maxLineBytes);
  let end = start;
  while (end < bound) {
    const byte = bytes[end];
    if (byte < SPACE || byte > TILDE) break;
    into[at++] = byte;
    end++;
  }
  if (end === start || bytes[end - 1] === SPACE) return -1;
  if (bytes[end] === LF) return end;
  return bytes[end] === CR && bytes[end + 1] === LF ? end + 1 : -1;
}

const SPACE = 0x20;
const SLASH = 0x2f;
const TILDE = 0x7e;

/** Splits `NAME TEXT` (as /msg takes it) into the name and the text. */
export function splitFirstWord(text: string): [string, string] {
  const space = text.indexOf(" ");
  if (space < 0) return [text, ""];
  return [text.slice(0, space), text.slice(space + 1).trim()];
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
// The inventory service's replies
// ---------------------------------------------------------------------------

/** The services of server.ts. */
export const TCP_SERVICES = ["chat", "inventory"] as const;

/** The most of one item a request may add or remove. */
export const MAX_QUANTITY = 1_000_000_000;

/** The longest item name, in characters. */
export const MAX_ITEM_LENGTH = 64;

/** The stock: each item's name and quantity. */
export type Stock = Record<string, number>;

/** One reply of the inventory service, as a JSON line. */
export type InventoryReply =
  | { ok: true; message?: string; inventory?: Stock }
  | { ok: false; error: string };

// ---------------------------------------------------------------------------
// Servers that stop once
// ---------------------------------------------------------------------------

/**
 * A server that stops once, however often it is asked (Ctrl-C, /quit and
 * SIGTERM may all come), and when a `using` block ends in a test.
 */
export abstract class Stoppable {
  #stopping = false;
  #stopped?: Promise<void>;

  /** Has it begun to stop? (True from the first moment of shutDown.) */
  get stopping(): boolean {
    return this.#stopping;
  }

  /** Stops; every later call gets the same promise. */
  stop(): Promise<void> {
    if (!this.#stopped) {
      this.#stopping = true;
      this.#stopped = this.shutDown();
    }
    return this.#stopped;
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.stop();
  }

  /** The server's own way to stop, run once. */
  protected abstract shutDown(): Promise<void>;
}

// ---------------------------------------------------------------------------
// Limits and passwords
// ---------------------------------------------------------------------------

/**
 * A rate limit that allows bursts: `burst` tokens, refilled at `rate` a
 * second; each line (or datagram) takes one, and none is left in a flood.
 */
export class TokenBucket {
  #tokens: number;
  #last: number;

  constructor(
    readonly rate: number,
    readonly burst: number,
    now = performance.now(),
  ) {
    this.#tokens = burst;
    this.#last = now;
  }

  /** @returns true when a token was taken, false when there is none */
  take(now = performance.now()): boolean {
    const refill = (now - this.#last) * this.rate / 1000;
    this.#tokens = Math.min(this.burst, this.#tokens + refill);
    this.#last = now;
    if (this.#tokens < 1) return false;
    this.#tokens -= 1;
    return true;
  }
}

/**
 * Compares a password with the expected one in constant time: both are
 * hashed first, so neither the time taken nor the lengths tell anything.
 */
export function passwordMatches(given: string, expected: string): boolean {
  const digest = (text: string) => createHash("sha256").update(text).digest();
  return timingSafeEqual(digest(given), digest(expected));
}

/** The environment variable that can hold the password. */
export const PASSWORD_VARIABLE = "SOCKLAB_PASSWORD";

/**
 * The password from --password, or else from the SOCKLAB_PASSWORD
 * environment variable, which keeps it out of the process list.
 */
export function passwordFrom(flag: unknown): string | undefined {
  const password = flag === undefined ? readPasswordVariable() : String(flag);
  if (password === "") throw new UsageError("The password cannot be empty");
  return password;
}

function readPasswordVariable(): string | undefined {
  try {
    return Deno.env.get(PASSWORD_VARIABLE) || undefined;
  } catch {
    // No permission to read it (run with --allow-env=SOCKLAB_PASSWORD).
    return undefined;
  }
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
// The terminal: the line you type, kept apart from the lines that arrive
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
 * so the program keeps the line itself: printable text, Backspace, Ctrl-U
 * (clear), Ctrl-W (delete a word), Enter, Ctrl-C and Ctrl-D.
 */
export class LineEditor {
  #text = "";
  #decoder = new TextDecoder();

  /** Shows `*` for each character typed, for a password. */
  masked = false;

  /** @param prompt shown before the line being typed */
  constructor(public prompt = "> ") {}

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
    const chars = Array.from(this.#text).map((c) => this.masked ? "*" : c);
    let shown = "";
    let width = 0;
    for (let i = chars.length - 1; i >= 0; i--) {
      width += textWidth(chars[i]);
      if (width > room) {
        shown = "…" + shown;
        break;
      }
      shown = chars[i] + shown;
    }
    return `\r\x1b[K${paintDim(this.prompt)}${shown}`;
  }
}

/** Columns a text takes on a terminal (wide characters take two). */
export function textWidth(text: string): number {
  let width = 0;
  for (const char of text) width += charWidth(char);
  return width;
}

// Characters that take no column (combining marks, joiners, variation
// selectors) and the emoji below U+1F000 that take two.
const ZERO_WIDTH = /^[\p{M}\u200b-\u200f\ufe00-\ufe0f]$/u;
const WIDE_SYMBOLS =
  /^[\u231a\u231b\u23e9-\u23ec\u23f0\u23f3\u25fd\u25fe\u2614\u2615\u2648-\u2653\u267f\u2693\u26a1\u26aa\u26ab\u26bd\u26be\u26c4\u26c5\u26ce\u26d4\u26ea\u26f2\u26f3\u26f5\u26fa\u26fd\u2705\u270a\u270b\u2728\u274c\u274e\u2753-\u2755\u2757\u2795-\u2797\u27b0\u27bf\u2b1b\u2b1c\u2b50\u2b55]$/;

/** Columns a character takes: East Asian wide characters and emoji take 2. */
function charWidth(char: string): number {
  if (ZERO_WIDTH.test(char)) return 0;
  if (WIDE_SYMBOLS.test(char)) return 2;
  const code = char.codePointAt(0)!;
  const wide = (code >= 0x1100 && code <= 0x115f) ||
    (code >= 0x2e80 && code <= 0xa4cf) || (code >= 0xac00 && code <= 0xd7a3) ||
    (code >= 0xf900 && code <= 0xfaff) || (code >= 0xfe30 && code <= 0xfe4f) ||
    (code >= 0xff00 && code <= 0xff60) || (code >= 0xffe0 && code <= 0xffe6) ||
    (code >= 0x1f300 && code <= 0x1faff) || (code >= 0x20000);
  return wide ? 2 : 1;
}

function writeOut(text: string): void {
  const bytes = encoder.encode(text);
  try {
    for (let sent = 0; sent < bytes.length;) {
      sent += Deno.stdout.writeSync(bytes.subarray(sent));
    }
  } catch {
    // Nobody reads our output any more (a closed pipe): the program goes
    // on, as it does when its input ends.
  }
}

function terminalColumns(): number {
  try {
    return Deno.consoleSize().columns;
  } catch {
    return 80;
  }
}

/**
 * The lines of standard input, one at a time, as a pipe or a terminal in
 * its usual (cooked) mode gives them. A line over 64 KiB is skipped.
 */
export class StdinLines {
  #framer = new LineFramer(64 * 1024);
  #lines: string[] = [];
  #ended = false;
  #buffer = new Uint8Array(16 * 1024);

  /** @returns the next line, or undefined at the end of input */
  async next(): Promise<string | undefined> {
    while (this.#lines.length === 0 && !this.#ended) {
      const count = await Deno.stdin.read(this.#buffer);
      const frames = count === null
        ? this.#framer.end()
        : this.#framer.push(this.#buffer.subarray(0, count));
      if (count === null) this.#ended = true;
      for (const frame of frames) {
        if (frame !== LINE_TOO_LONG) this.#lines.push(frame);
      }
    }
    return this.#lines.shift();
  }
}

/**
 * The program's console: lines printed while the user types. On a
 * terminal, the line being typed stays at the bottom and printed lines go
 * above it; on a pipe, lines are just read and printed.
 */
export class LineConsole {
  /** The line editor, when both stdin and stdout are a terminal. */
  readonly editor?: LineEditor;
  #secretWaiter?: { prompt: string; resolve: (answer: string) => void };

  /** @param prompt shown before the line being typed, on a terminal */
  constructor(prompt = "> ") {
    if (Deno.stdin.isTerminal() && Deno.stdout.isTerminal()) {
      this.editor = new LineEditor(prompt);
    }
  }

  /** Prints one line above the line being typed. */
  print(line: string): void {
    if (!this.editor) return writeOut(line + "\n");
    writeOut(`\r\x1b[K${line}\n${this.editor.render(terminalColumns())}`);
  }

  /**
   * Prints a secondary line (a retry, a late reply): dimmed, above the
   * prompt on a terminal; to stderr otherwise, apart from the output.
   */
  note(text: string): void {
    if (this.editor) return this.print(paintDim(text));
    console.error(text);
  }

  /**
   * Reads lines typed or piped in, passing each to `onLine` in turn.
   * @returns how input ended: `end` (Ctrl-D, the end of a pipe) or
   * `interrupt` (Ctrl-C, which a raw terminal sends as a key)
   */
  async readLines(
    onLine: (line: string) => void | Promise<void>,
  ): Promise<"end" | "interrupt"> {
    try {
      return this.editor
        ? await this.#readTyped(this.editor, onLine)
        : await this.#readPiped(onLine);
    } catch {
      // No usable stdin at all (a service manager, for example).
      return "end";
    } finally {
      this.restore();
    }
  }

  async #readTyped(
    editor: LineEditor,
    onLine: (line: string) => void | Promise<void>,
  ): Promise<"end" | "interrupt"> {
    const buffer = new Uint8Array(1024);
    Deno.stdin.setRaw(true);
    writeOut(editor.render(terminalColumns()));
    for (let count; (count = await Deno.stdin.read(buffer)) !== null;) {
      for (const event of editor.feed(buffer.subarray(0, count))) {
        if (event.kind !== "line") return event.kind;
        const secret = this.#secretWaiter;
        if (secret) {
          this.#secretWaiter = undefined;
          [editor.prompt, editor.masked] = [secret.prompt, false];
          writeOut("\r\x1b[K");
          secret.resolve(event.text);
          continue;
        }
        // Leave the line on the screen as it was sent.
        writeOut(`\r\x1b[K${paintDim(editor.prompt)}${event.text}\n`);
        await onLine(event.text);
      }
      writeOut(editor.render(terminalColumns()));
    }
    return "end";
  }

  /**
   * Asks for a secret on the terminal while lines are being read: the next
   * line typed is the answer, shown as `*` and never printed.
   * @returns the answer, or undefined when there is no terminal to ask on
   */
  readSecret(question: string): Promise<string | undefined> {
    const editor = this.editor;
    if (!editor) return Promise.resolve(undefined);
    return new Promise((resolve) => {
      this.#secretWaiter = { prompt: editor.prompt, resolve };
      [editor.prompt, editor.masked] = [question, true];
      writeOut(editor.render(terminalColumns()));
    });
  }

  async #readPiped(
    onLine: (line: string) => void | Promise<void>,
  ): Promise<"end"> {
    const input = new StdinLines();
    for (let line; (line = await input.next()) !== undefined;) {
      await onLine(line);
    }
    return "end";
  }

  /** Gives the terminal back as it was: no prompt, raw mode off. */
  restore(): void {
    if (!this.editor) return;
    writeOut("\r\x1b[K");
    try {
      Deno.stdin.setRaw(false);
    } catch {
      // stdin is already closed.
    }
  }
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
  /** Flags that may be given more than once (their values make a list). */
  collect?: string[];
  alias?: Record<string, string>;
  default?: Record<string, string | boolean>;
  /** The most positional arguments; more is a usage error. @default any */
  positionals?: number;
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
  const { positionals, ...parseSpec } = spec;
  const parsed: { _: unknown[]; [flag: string]: unknown } = parseArgs(args, {
    ...parseSpec,
    unknown: (arg: string) => {
      if (/^-\d/.test(arg)) {
        throw new UsageError(`Invalid value "${arg}": no negative numbers`);
      }
      if (arg.startsWith("-") && arg !== "-") {
        throw new UsageError(`Unknown option "${arg.split("=")[0]}"`);
      }
      return true;
    },
  });
  if (positionals !== undefined && parsed._.length > positionals) {
    throw new UsageError(`Unexpected argument "${parsed._[positionals]}"`);
  }
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
 * Reads a script's arguments with its parser. A misuse prints one line
 * and the usage, and exits 2; `--help` prints the usage and exits 0.
 */
export function argsOrExit<Options extends { help: boolean }>(
  parse: (args: string[]) => Options,
  usage: string,
): Options {
  let options: Options;
  try {
    options = parse(Deno.args);
  } catch (error) {
    if (error instanceof UsageError) exitWithUsage(error.message, usage);
    throw error;
  }
  if (options.help) {
    console.log(usage);
    Deno.exit(0);
  }
  return options;
}

/**
 * Reads a flag that takes one of a few words.
 * @throws {UsageError} for any other value
 */
export function parseChoice<Choice extends string>(
  flag: string,
  value: unknown,
  choices: readonly Choice[],
): Choice {
  const text = String(value);
  if ((choices as readonly string[]).includes(text)) return text as Choice;
  throw new UsageError(
    `Invalid --${flag} "${text}": use one of ${choices.join(", ")}`,
  );
}

/**
 * Reads a flag that takes a number from `min` to `max`.
 * @throws {UsageError} for anything else
 */
export function parseNumberFlag(
  flag: string,
  value: unknown,
  { min, max, whole = false }: { min: number; max: number; whole?: boolean },
): number {
  const text = String(value);
  const number = Number(text);
  const pattern = whole ? /^\d+$/ : /^\d+(\.\d+)?$|^\.\d+$/;
  if (!pattern.test(text) || number < min || number > max) {
    const kind = whole ? "a whole number" : "a number";
    throw new UsageError(
      `Invalid --${flag} "${text}": use ${kind} from ${min} to ${max}`,
    );
  }
  return number;
}

/** Reads a flag that takes a whole number from `min` to `max`. */
export function wholeFlag(
  flags: ParsedFlags,
  flag: string,
  min: number,
  max: number,
): number {
  return parseNumberFlag(flag, flags[flag], { min, max, whole: true });
}

/**
 * Asks for a chat name on the terminal until it is a valid one.
 * @returns the name, or `undefined` for an empty answer (a guest name)
 */
export function askName(): string | undefined {
  while (true) {
    const answer = prompt("Your name (Enter for a guest name):")?.trim();
    if (!answer) return undefined;
    const problem = nameProblem(answer);
    if (!problem) return answer;
    console.log(paintError(problem));
  }
}

/** Asks for a secret on a terminal, without echo; undefined elsewhere. */
export function askSecret(question: string): string | undefined {
  if (!Deno.stdin.isTerminal()) return undefined;
  const ask = promptSecret as (
    message: string,
    options?: { mask?: string },
  ) => string | null;
  return ask(question, { mask: "*" }) ?? undefined;
}

/**
 * Stops the program with a clear message when Deno's UDP API is missing:
 * it is still unstable, so it needs `--unstable-net` (this folder's
 * deno.json turns it on for scripts run from here).
 */
export function requireUdp(): void {
  if (typeof Deno.listenDatagram === "function") return;
  console.error(
    "UDP needs Deno's unstable net API: run with --unstable-net, for " +
      "example: deno run -A --unstable-net udp_server.ts",
  );
  Deno.exit(1);
}

/** Calls `stop` on Ctrl-C, and on SIGTERM (SIGBREAK on Windows). */
export function onStopSignals(stop: () => void): void {
  const signals: Deno.Signal[] = Deno.build.os === "windows"
    ? ["SIGINT", "SIGBREAK"]
    : ["SIGINT", "SIGTERM"];
  for (const signal of signals) Deno.addSignalListener(signal, stop);
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
  const tls = tlsReason(message);
  if (tls) return tls;
  if (/lookup|resolve|name or service|nodename|no such host/i.test(message)) {
    return "unknown host";
  }
  if (/unreachable/i.test(message)) return "network unreachable";
  return message;
}

/** Says in words what a TLS error message from rustls means, if it is one. */
function tlsReason(message: string): string | undefined {
  if (
    /UnknownIssuer|invalid peer certificate: (BadSignature|Other)/.test(message)
  ) {
    return "the server's TLS certificate is not trusted (for a self-signed " +
      "certificate, give it with --ca cert.pem)";
  }
  if (/NotValidForName/.test(message)) {
    return "the server's TLS certificate is not for this host name (connect " +
      "with a name or address it lists)";
  }
  if (/Expired|NotValidYet/.test(message)) {
    return "the server's TLS certificate has expired or is not valid yet";
  }
  if (/InvalidContentType|corrupt message|WrongVersion/i.test(message)) {
    return "the server does not speak TLS (leave out --tls and --ca)";
  }
  if (/invalid peer certificate|certificate/i.test(message)) {
    return `TLS certificate problem: ${message}`;
  }
  return undefined;
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
 * (loopback aside), or `undefined` when the program may not list them
 * (it needs `--allow-sys=networkInterfaces`; it does not ask, so that a
 * server never stops at a permission prompt).
 */
export function lanAddresses(): string[] | undefined {
  const permission = { name: "sys", kind: "networkInterfaces" } as const;
  if (Deno.permissions.querySync(permission).state !== "granted") {
    return undefined;
  }
  const addresses = Deno.networkInterfaces()
    .filter((nic) => nic.family === "IPv4" && !nic.address.startsWith("127."))
    .map((nic) => nic.address);
  return [...new Set(addresses)];
}

/**
 * The lines of a startup banner that tell how to reach a server bound to
 * `host`: from another PC of the LAN (when it listens on every
 * interface), and from this PC.
 * @param commandsFor the commands that reach one address
 */
export function connectionHints(
  host: string,
  commandsFor: (address: string) => string,
): string[] {
  const everywhere = host === "0.0.0.0" || host === "::";
  if (!everywhere) return ["Connect with:", `  ${commandsFor(host)}`];
  const lan = lanAddresses();
  const lines = lan === undefined
    ? [
      "(Run with --allow-sys=networkInterfaces to list this PC's LAN addresses.)",
    ]
    : lan.length === 0
    ? ["This PC has no LAN address: only programs on it can connect."]
    : [
      "From another PC on this LAN:",
      ...lan.map((a) => `  ${commandsFor(a)}`),
    ];
  return [...lines, "From this PC:", `  ${commandsFor("127.0.0.1")}`];
}

/** A clock time for log lines, like `14:03:27`. */
export function clockTime(date: Date = new Date()): string {
  return date.toTimeString().slice(0, 8);
}
