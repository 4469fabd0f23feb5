/**
 * What more than one socklab script needs. First the lab's part: framing
 * a TCP byte stream into lines, sending every byte, line formats, names,
 * text cleaning, and the chat room's rules (a core without sockets that
 * the TCP and the UDP server each wrap). Then the tools around it: the
 * console, colors, flags, errors, passwords and limits.
 *
 * @module
 */

import { createHash, timingSafeEqual } from "node:crypto";
import process from "node:process";
import * as readline from "node:readline";
import { parseArgs } from "@std/cli/parse-args";
import * as stdColors from "@std/fmt/colors";

/** The port the lab uses, for TCP and for UDP. */
export const DEFAULT_PORT = 9999;

// ---------------------------------------------------------------------------
// Framing: a TCP byte stream into lines
// ---------------------------------------------------------------------------

/** The longest line (in bytes, without its line end) a peer may send. */
export const MAX_LINE_BYTES = 4096;
/** Marks the place where a peer sent a line longer than the limit. */
export const LINE_TOO_LONG: unique symbol = Symbol("line too long");
/** A line of text, or the marker of a line that was too long and dropped. */
export type Frame = string | typeof LINE_TOO_LONG;

const LF = 0x0a;
const CR = 0x0d;
const NOTHING = new Uint8Array(0);
// Decodes whole lines only, never part of a character: it keeps no state.
const decoder = new TextDecoder();
const encoder = new TextEncoder();

/**
 * Splits a byte stream into lines. TCP delivers bytes, not messages: one
 * read may hold half a line, several lines, or half of a UTF-8 character,
 * so bytes are kept until a line end comes. `\n`, `\r\n` and a bare `\r`
 * end a line. A line over `maxLineBytes` is reported once as
 * {@linkcode LINE_TOO_LONG} and dropped up to its end, so memory stays
 * bounded whatever a peer sends. Invalid UTF-8 becomes U+FFFD.
 */
export class LineFramer {
  #kept = NOTHING; // the start of a line whose end has not come yet
  #dropping = false; // inside a line that was too long
  #afterCR = false;

  constructor(readonly maxLineBytes: number = MAX_LINE_BYTES) {}

  /** Bytes kept for the next read: the start of a line. */
  get keptBytes(): number {
    return this.#kept.length;
  }

  /** Takes one read's bytes: @returns the lines they complete, in order */
  push(chunk: Uint8Array): Frame[] {
    const lines: Frame[] = [];
    // The LF of a CRLF split between two reads: the CR ended the line.
    let start = this.#afterCR && chunk[0] === LF ? 1 : 0;
    this.#afterCR = false;
    let cr = -2; // the next CR (-1: none), looked for again once passed
    while (true) {
      const lf = chunk.indexOf(LF, start);
      if (cr !== -1 && cr < start) cr = chunk.indexOf(CR, start);
      const end = cr >= 0 && (lf < 0 || cr < lf) ? cr : lf;
      if (end < 0) break;
      this.#endLine(chunk.subarray(start, end), lines);
      start = end + 1;
      if (end === cr && start === chunk.length) this.#afterCR = true;
      else if (end === cr && chunk[start] === LF) start++;
    }
    this.#keep(chunk.subarray(start), lines);
    return lines;
  }

  /** The stream ended: @returns its last line, if it had no line end */
  end(): Frame[] {
    const lines: Frame[] = [];
    if (this.#kept.length > 0) this.#endLine(NOTHING, lines);
    return lines;
  }

  #endLine(last: Uint8Array, lines: Frame[]): void {
    this.#keep(last, lines);
    if (!this.#dropping) lines.push(decoder.decode(this.#kept));
    this.#kept = NOTHING;
    this.#dropping = false;
  }

  #keep(piece: Uint8Array, lines: Frame[]): void {
    if (this.#dropping) return;
    if (this.#kept.length + piece.length > this.maxLineBytes) {
      lines.push(LINE_TOO_LONG);
      this.#dropping = true;
      this.#kept = NOTHING;
    } else if (this.#kept.length === 0) {
      this.#kept = piece.slice(); // a copy: the caller reuses its buffer
    } else {
      const joined = new Uint8Array(this.#kept.length + piece.length);
      joined.set(this.#kept);
      joined.set(piece, this.#kept.length);
      this.#kept = joined;
    }
  }
}

/**
 * Sends every byte: one `write()` may take only part of the buffer, so
 * write the rest until nothing is left.
 * @returns how many writes it took
 */
export async function writeAll(
  writer: { write(bytes: Uint8Array): Promise<number> },
  bytes: Uint8Array,
): Promise<number> {
  let writes = 0;
  for (let sent = 0; sent < bytes.length; writes++) {
    sent += await writer.write(bytes.subarray(sent));
  }
  return writes;
}

/** Encodes text as one UTF-8 line, with its `\n`. */
export function encodeLine(text: string): Uint8Array {
  return encoder.encode(text + "\n");
}

/** Prints one step of the socket story, for `--trace`; undefined when off. */
export type Trace = ((step: string) => void) | undefined;

// ---------------------------------------------------------------------------
// Text cleaning, line formats and names
// ---------------------------------------------------------------------------

// Terminal escape sequences (CSI, OSC, two-byte ESC), then the control
// characters left: C0, DEL, C1, and the bidirectional overrides.
const ESCAPES =
  // deno-lint-ignore no-control-regex -- matching control bytes is the point
  /\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[ -~]?/g;
// deno-lint-ignore no-control-regex -- matching control bytes is the point
const CONTROLS = /[\x00-\x08\x0a-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]/g;
// deno-lint-ignore no-control-regex -- matching control bytes is the point
const UNSAFE = /[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]/;

/**
 * Removes what could clear a screen, move the cursor or forge a line:
 * escape sequences and control characters. Tabs become spaces. Printable
 * Unicode (accents, Devanagari, CJK, emoji) passes unchanged.
 */
export function cleanText(text: string): string {
  if (!UNSAFE.test(text)) return text; // most lines: one test, no copy
  return text.replace(ESCAPES, "").replace(CONTROLS, "").replaceAll("\t", " ");
}

/** `<NAME> text`: a message from NAME. */
export const messageLine = (name: string, text: string) => `<${name}> ${text}`;
/** `* text`: a notice from the server. */
export const noticeLine = (text: string) => `* ${text}`;
/** `! text`: an error, to one client. */
export const errorLine = (text: string) => `! ${text}`;

/** Lines both sides of a protocol know, defined once. */
export const SAYS = {
  passwordNeeded: noticeLine(
    "this server needs a password: send /auth PASSWORD",
  ),
  authenticateFirst: "authenticate first: /auth PASSWORD",
  wrongPassword: "wrong password",
  joinFirst: "this chat needs a password: /join NAME PASSWORD",
  shuttingDown: noticeLine("server shutting down"),
  bye: noticeLine("bye"),
  pong: noticeLine("pong"),
};

/** What a line typed into a chat is: a message, or a command. */
export type ChatInput =
  | { kind: "empty" }
  | { kind: "message"; text: string }
  | { kind: "command"; command: string; rest: string };

/**
 * Reads a line typed into a chat, cleaned: `/cmd rest` is a command (its
 * name in lower case), `//text` the message `/text`, a blank line nothing.
 */
export function parseChatInput(rawLine: string): ChatInput {
  const line = cleanText(rawLine).trimEnd();
  if (line.trim() === "") return { kind: "empty" };
  if (line.startsWith("//")) return { kind: "message", text: line.slice(1) };
  if (!line.startsWith("/")) return { kind: "message", text: line };
  const [command, rest] = splitFirstWord(line);
  return { kind: "command", command: command.toLowerCase(), rest };
}

/** Splits `NAME TEXT` into the first word and the rest. */
export function splitFirstWord(text: string): [string, string] {
  const space = text.indexOf(" ");
  if (space < 0) return [text, ""];
  return [text.slice(0, space), text.slice(space + 1).trim()];
}

/**
 * Checks a chat name: 1 to 24 ASCII letters, digits, `-`, `_`, `.` (ASCII
 * only, so nobody passes for someone else with a look-alike letter).
 * @returns why the name is not valid, or undefined when it is
 */
export function nameProblem(name: string): string | undefined {
  if (name === "") return "a name cannot be empty";
  if (name.length > 24) {
    return `name "${name.slice(0, 24)}..." is too long (24 characters at most)`;
  }
  if (!/^[A-Za-z0-9._-]+$/.test(name)) {
    return `name "${name}" is not valid: use letters, digits, "-", "_" or "."`;
  }
}

/** Names are unique ignoring case: this is the form compared. */
export const nameKey = (name: string) => name.toLowerCase();

/** The stock of the inventory service: each item's name and quantity. */
export type Stock = Record<string, number>;
/** One reply of the inventory service, as a JSON line. */
export type InventoryReply =
  | { ok: true; message?: string; inventory?: Stock }
  | { ok: false; error: string };
/** What both sides of the inventory protocol know. */
export const INVENTORY = {
  actions: ["add", "remove", "view", "help"],
  maxQuantity: 1_000_000_000,
  maxItemLength: 64,
  help:
    'send one request per line: "add ITEM QUANTITY", "remove ITEM QUANTITY", ' +
    '"view", "help", or the same as JSON: {"action":"add","item":"Soap","quantity":200}, {"action":"view"}',
};

// ---------------------------------------------------------------------------
// The chat room's rules, without sockets ("sans-I/O")
// ---------------------------------------------------------------------------

/** Where the room's lines go: its transport writes them to sockets. */
export interface RoomOutput<Member extends { name: string }> {
  send(member: Member, line: string): void;
  /** One line to every member but `except`: encoded once for all. */
  broadcast(line: string, except?: Member): void;
  /** The member asked to leave: send its last lines, then close. */
  quit(member: Member): void;
  /** A chat line for the server's console (a message, /me, /msg to it). */
  show(line: string): void;
  log(text: string): void;
}

/** How a room behaves. */
export interface RoomOptions {
  /** What the room is, after "welcome to socklab chat, ". */
  mode: string;
  /** The operator's name, reserved for the server's console, if any. */
  operator?: string;
  /** Joins and leaves are announced up to this many members. @default 100 */
  announceLimit?: number;
  /** Help for the transport's own commands (UDP: /join, /ping). */
  moreHelp?: string[];
}

const HELP = [
  "commands:",
  "  /nick NAME       choose your name (1 to 24 letters, digits, - _ .)",
  "  /who             list who is online",
  "  /msg NAME TEXT   send TEXT to NAME alone",
  '  /me TEXT         an action: "/me waves" shows "* NAME waves"',
  "  /quit            leave the chat",
  '  //TEXT           send a message that starts with "/"',
];

/**
 * The chat's rules, for any transport: names and guests, the commands,
 * join and leave notices. Lines go in ({@linkcode ChatRoom.handle}); what
 * to send to whom comes out through {@linkcode RoomOutput}.
 */
export class ChatRoom<Member extends { name: string }> {
  /** The members, by name (ignoring case), in the order they came. */
  readonly members = new Map<string, Member>();
  #guests = 0;

  constructor(
    readonly out: RoomOutput<Member>,
    readonly options: RoomOptions,
  ) {}

  /** Lets a member in, under `name` (checked first) or as guest-N. */
  join(member: Member, name?: string): void {
    member.name = name ?? this.#guestName();
    this.members.set(nameKey(member.name), member);
    this.out.log(`${member.name} joined`);
    const [operator = ""] = this.#operator();
    // A big room is counted, not listed: /who lists it on demand.
    const online = this.#announces()
      ? [...this.#names().filter((n) => n !== member.name), ...this.#operator()]
        .join(", ") || "no one else"
      : `${this.members.size - 1} others${
        operator && ` and ${operator}`
      }; /who lists them`;
    const pick = name === undefined ? ": pick a name with /nick NAME" : "";
    this.#tell(member, `welcome to socklab chat, ${this.options.mode}`);
    this.#tell(member, `online: ${online}`);
    this.#tell(
      member,
      `you are ${member.name}${pick}; /help lists the commands`,
    );
    if (this.#announces()) {
      this.out.broadcast(noticeLine(`${member.name} joined`), member);
    }
  }

  /** One line from a member: a message to everyone else, or a command. */
  handle(member: Member, line: string): void {
    const input = parseChatInput(line);
    if (input.kind === "empty") return;
    if (input.kind === "message") return this.say(member, input.text);
    const { command, rest } = input;
    switch (command) {
      case "/nick":
        return this.#rename(member, rest);
      case "/who":
        return this.out.send(member, this.whoLine());
      case "/msg":
        return this.#whisper(member, rest);
      case "/me":
        if (rest === "") return this.#error(member, "usage: /me TEXT");
        this.out.show(noticeLine(`${member.name} ${rest}`));
        return this.out.broadcast(noticeLine(`${member.name} ${rest}`), member);
      case "/help":
        for (const help of [...HELP, ...this.options.moreHelp ?? []]) {
          this.#tell(member, help);
        }
        return;
      case "/quit":
      case "/leave":
        this.out.send(member, SAYS.bye);
        return this.out.quit(member);
      default:
        this.#error(
          member,
          `unknown command "${command}": /help lists the commands`,
        );
    }
  }

  /** A message to everyone but its sender. */
  say(member: Member, text: string): void {
    const line = messageLine(member.name, text);
    this.out.show(line);
    this.out.broadcast(line, member);
  }

  /** The member has gone (`reason` says why): tell the others. */
  leave(member: Member, reason: string): void {
    if (this.members.get(nameKey(member.name)) !== member) return;
    this.members.delete(nameKey(member.name));
    this.out.log(`${member.name} left (${reason})`);
    if (reason === "shutdown" || !this.#announces()) return;
    const plain = ["quit", "closed", "reset"].includes(reason) ||
      reason.startsWith("error");
    this.out.broadcast(
      noticeLine(`${member.name} left${plain ? "" : ` (${reason})`}`),
    );
  }

  /** Why `member` cannot take `name`, or undefined when it can. */
  nameProblem(name: string, member?: Member): string | undefined {
    if (name === "") return "usage: /nick NAME";
    const { operator = "" } = this.options;
    if (nameKey(name) === nameKey(operator)) {
      return `name "${name}" is reserved for the operator`;
    }
    const holder = this.members.get(nameKey(name));
    if (holder && holder !== member) return `name "${name}" is taken`;
    return nameProblem(name);
  }

  /** `* online (3): Amey, Karan, server (operator)` */
  whoLine(): string {
    const everyone = [...this.#names(), ...this.#operator()];
    return noticeLine(
      `online (${everyone.length}): ${everyone.join(", ") || "no one"}`,
    );
  }

  #rename(member: Member, name: string): void {
    const problem = this.nameProblem(name, member);
    if (problem) return this.#error(member, problem);
    const old = member.name;
    if (old === name) return this.#tell(member, `you are already ${name}`);
    this.members.delete(nameKey(old));
    member.name = name;
    this.members.set(nameKey(name), member);
    this.out.log(`${old} is now known as ${name}`);
    this.out.broadcast(noticeLine(`${old} is now known as ${name}`));
  }

  #whisper(member: Member, rest: string): void {
    const [name, text] = splitFirstWord(rest);
    if (name === "" || text === "") {
      return this.#error(member, "usage: /msg NAME TEXT");
    }
    const line = `[private] ${messageLine(member.name, text)}`;
    if (nameKey(name) === nameKey(this.options.operator ?? "")) {
      return this.out.show(line);
    }
    const target = this.members.get(nameKey(name));
    if (!target) return this.#error(member, `no one named "${name}" is online`);
    this.out.send(target, line);
  }

  #tell(member: Member, text: string): void {
    this.out.send(member, noticeLine(text));
  }

  #error(member: Member, text: string): void {
    this.out.send(member, errorLine(text));
  }

  #guestName(): string {
    let name;
    do name = `guest-${++this.#guests}`; while (this.nameProblem(name));
    return name;
  }

  #announces(): boolean {
    return this.members.size <= (this.options.announceLimit ?? 100);
  }

  #names(): string[] {
    return [...this.members.values()].map((member) => member.name);
  }

  #operator(): string[] {
    return this.options.operator ? [`${this.options.operator} (operator)`] : [];
  }
}

// ---------------------------------------------------------------------------
// The console: lines typed below, lines printed above
// ---------------------------------------------------------------------------

/**
 * The program's console, on Node's `readline` (built into Deno). On a
 * terminal, the line being typed stays at the bottom, with history and
 * the usual keys, and printed lines go above it; on a pipe, lines are
 * just read and printed. Printed lines wait for the end of the current
 * turn of the event loop, so a busy server writes its console once a turn.
 */
export class LineConsole {
  /** Both stdin and stdout are a terminal. */
  readonly terminal = Deno.stdin.isTerminal() && Deno.stdout.isTerminal();
  /** Called on Ctrl-C at the terminal. */
  onInterrupt: () => unknown = () => Deno.exit(130);
  #rl?: readline.Interface;
  #lines?: AsyncIterator<string>;
  #pending: string[] = [];
  #muted = false;
  #ended = false;

  /** @param prompt shown before the line being typed, on a terminal */
  constructor(readonly prompt = "> ") {}

  /** Prints one line, above the line being typed. */
  print(line: string): void {
    if (this.#pending.push(line) === 1) setTimeout(() => this.#flush(), 0);
  }

  /** The next line typed or piped in (after `prompt`); undefined at the end. */
  async next(prompt = this.prompt): Promise<string | undefined> {
    const rl = this.#open();
    this.#flush();
    rl.setPrompt(paintDim(prompt));
    if (this.terminal && !this.#ended) rl.prompt(true);
    const { value, done } = await this.#lines!.next();
    rl.setPrompt(paintDim(this.prompt));
    return done ? undefined : value;
  }

  /** Hands each line to `onLine` in turn, until input ends. */
  async readLines(onLine: (line: string) => unknown): Promise<void> {
    for (let line; (line = await this.next()) !== undefined;) {
      await onLine(line);
    }
  }

  /** Asks for a secret at the terminal, not echoed; undefined elsewhere. */
  async askSecret(question: string): Promise<string | undefined> {
    if (!this.terminal) return undefined;
    this.#open();
    this.#flush();
    process.stdout.write(question);
    this.#muted = true;
    const answer = await this.next("");
    this.#muted = false;
    // readline keeps typed lines for the Up key: not this one.
    const kept = (this.#rl as unknown as { history: string[] }).history;
    if (answer && kept[0] === answer) kept.shift();
    process.stdout.write("\n");
    return answer;
  }

  /** Gives the terminal back: printed lines out, prompt gone, input closed. */
  close(): void {
    this.#flush();
    if (this.#ended) return;
    if (this.#rl && this.terminal) process.stdout.write("\r\x1b[K");
    this.#rl?.close();
  }

  #open(): readline.Interface {
    if (this.#rl) return this.#rl;
    // A reader that went away (`| head -1`) must not crash the program.
    process.stdout.on("error", () => {});
    const output = this.terminal ? process.stdout : undefined;
    const { stdin: input } = process;
    const rl = readline.createInterface({
      input,
      output,
      terminal: this.terminal,
    });
    // readline echoes what is typed through this: muted for a secret.
    const hook = rl as unknown as { _writeToOutput(text: string): void };
    const echo = hook._writeToOutput.bind(rl);
    hook._writeToOutput = (text) => this.#muted || echo(text);
    rl.on("SIGINT", () => this.onInterrupt());
    rl.on("close", () => this.#ended = true); // Ctrl-D, or the end of a pipe
    this.#lines = rl[Symbol.asyncIterator]();
    return this.#rl = rl;
  }

  #flush(): void {
    if (this.#pending.length === 0) return;
    const text = this.#pending.join("\n") + "\n";
    this.#pending = [];
    if (!this.#rl || !this.terminal || this.#ended) return writeOut(text);
    readline.clearLine(process.stdout, 0);
    readline.cursorTo(process.stdout, 0);
    process.stdout.write(text);
    this.#rl.prompt(true);
  }
}

/** Writes to stdout; a closed pipe is ignored (nobody reads any more). */
function writeOut(text: string): void {
  try {
    const bytes = encoder.encode(text);
    for (let sent = 0; sent < bytes.length;) {
      sent += Deno.stdout.writeSync(bytes.subarray(sent));
    }
  } catch {
    // The program goes on, as it does when its input ends.
  }
}

// ---------------------------------------------------------------------------
// Colors
// ---------------------------------------------------------------------------

type Paint = (text: string) => string;
// The std module is JavaScript without types: typed here, where it enters.
const colors = stdColors as unknown as Record<string, Paint> & {
  setColorEnabled(enabled: boolean): void;
};
const NAME_COLORS = ["green", "yellow", "blue", "magenta", "cyan"]
  .flatMap((c) => [c, `bright${c[0].toUpperCase()}${c.slice(1)}`]);

/** Colors only for a terminal, and never when NO_COLOR is set. */
export function chooseColors(): void {
  colors.setColorEnabled(Deno.stdout.isTerminal() && !Deno.noColor);
}

/** Paints a line from a chat server: each name its own color, always. */
export function paintChatLine(line: string): string {
  const message = /^(\[private\] )?<([^>\s]{1,64})> (.*)$/s.exec(line);
  if (message) {
    const [, secret, name, text] = message;
    let hash = 0;
    for (const c of nameKey(name)) hash = (hash * 31 + c.charCodeAt(0)) >>> 0;
    const paint = colors[NAME_COLORS[hash % NAME_COLORS.length]];
    return `${secret ? colors.magenta(secret) : ""}<${
      colors.bold(paint(name))
    }> ${text}`;
  }
  if (line.startsWith("* ")) return colors.dim(line);
  return line.startsWith("! ") ? colors.red(line) : line;
}

/** Paints an error of ours, and a secondary text (hints, prompts). */
export const paintError: Paint = (text) => colors.red(text);
export const paintDim: Paint = (text) => colors.dim(text);

// ---------------------------------------------------------------------------
// Flags: a table per script, read with @std/cli's parseArgs
// ---------------------------------------------------------------------------

/** A misuse of a script's flags: printed with the usage, exit code 2. */
export class UsageError extends Error {
  override name = "UsageError";
}

/**
 * One row of a script's flag table: an alias, a default, and what the
 * value is: on/off, a port, a number in a range (whole unless "number"),
 * one of some choices, or any text.
 */
export type FlagRow = {
  short?: string;
  default?: string;
  on?: true;
  port?: true;
  range?: readonly [min: number, max: number, kind?: "number"];
  choices?: readonly string[];
};

/** What `parseFlags` read: `_` holds the positional arguments. */
export type Flags = { _: string[]; help: boolean; [flag: string]: unknown };

/**
 * Reads a script's arguments with its flag table (`--help`, `-h` added).
 * @throws {UsageError} for an unknown flag, a bad value, an extra argument
 */
export function parseFlags(
  args: string[],
  table: Record<string, FlagRow>,
  positionals = Infinity,
): Flags {
  const spec = {
    string: [] as string[],
    boolean: ["help"],
    alias: { h: "help" } as Record<string, string>,
    default: {} as Record<string, string>,
  };
  for (const [name, row] of Object.entries(table)) {
    (row.on ? spec.boolean : spec.string).push(name);
    if (row.short) spec.alias[row.short] = name;
    if (row.default) spec.default[name] = row.default;
  }
  const parsed = parseArgs(args, { ...spec, unknown: refuseUnknown }) as Flags;
  if (parsed._.length > positionals) {
    throw new UsageError(`Unexpected argument "${parsed._[positionals]}"`);
  }
  for (const [name, row] of Object.entries(table)) {
    const text = parsed[name];
    if (typeof text === "string") parsed[name] = checkFlag(name, row, text);
  }
  return { ...parsed, _: parsed._.map(String) };
}

function refuseUnknown(arg: string): true {
  if (/^-\d/.test(arg)) {
    throw new UsageError(`Invalid value "${arg}": no negative numbers`);
  }
  if (arg.startsWith("-") && arg !== "-") {
    throw new UsageError(`Unknown option "${arg.split("=")[0]}"`);
  }
  return true;
}

function checkFlag(name: string, row: FlagRow, text: string): string | number {
  if (row.port) return parsePort(text);
  const bad = `Invalid --${name} "${text}": use`;
  if (row.choices && !row.choices.includes(text)) {
    throw new UsageError(`${bad} one of ${row.choices.join(", ")}`);
  }
  if (!row.range) return text;
  const [min, max, kind] = row.range;
  const pattern = kind ? /^\d+(\.\d+)?$|^\.\d+$/ : /^\d+$/;
  const value = Number(text);
  if (pattern.test(text) && value >= min && value <= max) return value;
  throw new UsageError(
    `${bad} ${kind ? "a number" : "a whole number"} from ${min} to ${max}`,
  );
}

/** @throws {UsageError} unless `text` is a whole number from 0 to 65535 */
export function parsePort(text: string): number {
  if (/^\d+$/.test(text) && Number(text) <= 65535) return Number(text);
  throw new UsageError(
    `Invalid port "${text}": use a whole number from 0 to 65535`,
  );
}

/** Checks a --name flag. @throws {UsageError} for an invalid name */
export function nameFlag(value: unknown): string | undefined {
  if (value === undefined) return undefined;
  const problem = nameProblem(String(value));
  if (problem) throw new UsageError(`Invalid --name: ${problem}`);
  return String(value);
}

/**
 * Reads the script's arguments with `parse`. A misuse prints one line and
 * the usage, and exits 2; `--help` prints the usage and exits 0.
 */
export function argsOrExit<Options extends { help: boolean }>(
  parse: (args: string[]) => Options,
  usage: string,
): Options {
  try {
    const options = parse(Deno.args);
    if (!options.help) return options;
    console.log(usage);
    Deno.exit(0);
  } catch (error) {
    if (!(error instanceof UsageError)) throw error;
    console.error(`${error.message}\n${usage}`);
    Deno.exit(2);
  }
}

// ---------------------------------------------------------------------------
// Errors, signals, stopping, addresses
// ---------------------------------------------------------------------------

const REASONS: [new (...args: never[]) => Error, string][] = [
  [
    Deno.errors.ConnectionRefused,
    "connection refused (is the server running, and on this port?)",
  ],
  [Deno.errors.ConnectionReset, "connection reset"],
  [Deno.errors.ConnectionAborted, "connection aborted"],
  [
    Deno.errors.AddrInUse,
    "address already in use (is another server running on this port?)",
  ],
  [Deno.errors.AddrNotAvailable, "address not available on this machine"],
  [
    Deno.errors.PermissionDenied,
    "permission denied (ports below 1024 need administrator rights; or run with --allow-net)",
  ],
  [Deno.errors.TimedOut, "timed out"],
];

/** Says in words why a network operation failed (refused, reset, ...). */
export function networkReason(error: unknown): string {
  const known = REASONS.find(([kind]) => error instanceof kind);
  if (known) return known[1];
  const message = error instanceof Error ? error.message : String(error);
  if (/lookup|resolve|name or service|nodename|no such host/i.test(message)) {
    return "unknown host";
  }
  return /unreachable/i.test(message) ? "network unreachable" : message;
}

/** Is this the error a read or accept gets when we closed the socket? */
export function isClosedByUs(error: unknown): boolean {
  return error instanceof Deno.errors.BadResource ||
    error instanceof Deno.errors.Interrupted;
}

/** Calls `stop` on Ctrl-C, and on SIGTERM (SIGBREAK on Windows). */
export function onStopSignals(stop: () => void): void {
  Deno.addSignalListener("SIGINT", stop);
  Deno.addSignalListener(
    Deno.build.os === "windows" ? "SIGBREAK" : "SIGTERM",
    stop,
  );
}

/** Stops the program with a clear message when Deno's UDP API is missing. */
export function requireUdp(): void {
  if (typeof Deno.listenDatagram === "function") return;
  console.error(
    "UDP needs Deno's unstable net API: run with --unstable-net, for example: " +
      "deno run -A --unstable-net udp_server.ts",
  );
  Deno.exit(1);
}

/** A server that stops once, however often it is asked (Ctrl-C, /quit, SIGTERM). */
export abstract class Stoppable {
  #stopped?: Promise<void>;
  get stopping(): boolean {
    return this.#stopped !== undefined;
  }
  stop(): Promise<void> {
    return this.#stopped ??= this.shutDown();
  }
  /** The server's own way to stop, run once. */
  protected abstract shutDown(): Promise<void>;
}

/** A log line with the time: `14:03:27 Karan joined`. */
export function logLine(text: string): string {
  return `${new Date().toTimeString().slice(0, 8)} ${text}`;
}

/** `HOST:PORT` of an address. */
export function addressText(address: Deno.Addr): string {
  const { hostname, port } = address as Deno.NetAddr;
  return `${hostname}:${port}`;
}

/**
 * The banner lines that tell how to reach a server bound to `host`: from
 * the LAN when it listens on every interface (listing this PC's addresses
 * needs `--allow-sys=networkInterfaces`), and from this PC.
 */
export function connectionHints(
  host: string,
  commandsFor: (address: string) => string,
): string[] {
  if (host !== "0.0.0.0" && host !== "::") {
    return ["Connect with:", `  ${commandsFor(host)}`];
  }
  const allowed = Deno.permissions.querySync({
    name: "sys",
    kind: "networkInterfaces",
  });
  const lan = allowed.state !== "granted" ? undefined : [
    ...new Set(
      Deno.networkInterfaces().filter((nic) => nic.family === "IPv4").map((
        nic,
      ) => nic.address),
    ),
  ].filter((address) => !address.startsWith("127."));
  const lines = lan === undefined
    ? [
      "(Run with --allow-sys=networkInterfaces to list this PC's LAN addresses.)",
    ]
    : lan.length === 0
    ? ["This PC has no LAN address: only programs on it can connect."]
    : [
      "From another PC on this LAN:",
      ...lan.map((address) => `  ${commandsFor(address)}`),
    ];
  return [...lines, "From this PC:", `  ${commandsFor("127.0.0.1")}`];
}

// ---------------------------------------------------------------------------
// Beyond the lab: passwords, rate limits, idle peers
// ---------------------------------------------------------------------------

/** The environment variable that can hold the password. */
export const PASSWORD_VARIABLE = "SOCKLAB_PASSWORD";

/** The password from --password, or else from SOCKLAB_PASSWORD. */
export function passwordFrom(flag: unknown): string | undefined {
  let password = flag === undefined ? undefined : String(flag);
  try {
    password ??= Deno.env.get(PASSWORD_VARIABLE) || undefined;
  } catch {
    // No permission to read it (--allow-env=SOCKLAB_PASSWORD): none.
  }
  if (password === "") throw new UsageError("The password cannot be empty");
  return password;
}

/**
 * Compares a password with the expected one in constant time: both are
 * hashed first, so neither the time taken nor the lengths tell anything.
 */
export function passwordMatches(given: string, expected: string): boolean {
  const digest = (text: string) => createHash("sha256").update(text).digest();
  return timingSafeEqual(digest(given), digest(expected));
}

/**
 * A rate limit that allows bursts (a token bucket): `burst` tokens,
 * refilled at `rate` a second, one per line or datagram. The first one
 * dropped gets a warning; a peer that goes on for `burst` more without a
 * second's pause is told to go.
 */
export class RateLimit {
  #tokens: number;
  #last = performance.now();
  #dropped = 0;
  #lastDrop = -Infinity;

  constructor(readonly rate: number, readonly burst: number) {
    this.#tokens = burst;
  }

  check(now = performance.now()): "pass" | "warn" | "drop" | "disconnect" {
    this.#tokens = Math.min(
      this.burst,
      this.#tokens + (now - this.#last) * this.rate / 1000,
    );
    this.#last = now;
    if (this.#tokens >= 1) {
      this.#tokens -= 1;
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
 * Checks a few times per `timeoutMs` for peers silent that long, and
 * hands each to `drop`: the one idle sweep of every service.
 * @returns the timer, to clear when the server stops
 */
export function sweepIdle<Peer extends { lastHeard: number }>(
  timeoutMs: number,
  peers: () => Iterable<Peer>,
  drop: (peer: Peer) => void,
): ReturnType<typeof setInterval> | undefined {
  if (timeoutMs <= 0) return undefined;
  return setInterval(() => {
    const oldest = performance.now() - timeoutMs;
    for (const peer of [...peers()]) if (peer.lastHeard < oldest) drop(peer);
  }, Math.min(1000, Math.max(50, timeoutMs / 4)));
}
