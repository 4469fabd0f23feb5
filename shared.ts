/** What socklab's scripts share: the lab's part, then its tools. @module */
// deno-lint-ignore-file no-control-regex -- see "Text cleaning"

import { createHash, timingSafeEqual } from "node:crypto";
import { stdin, stdout } from "node:process";
import * as readline from "node:readline";
import { Writable } from "node:stream";
import { parseArgs } from "@std/cli/parse-args";
import * as stdColors from "@std/fmt/colors";

export const DEFAULT_PORT = 9999; // the lab's port, for TCP and for UDP

// --- Framing: a TCP byte stream into lines ---
export const MAX_LINE_BYTES = 4096; // a peer's longest line (bounds memory)
/** Stands where a peer sent a line longer than the limit (it is dropped). */
export const LINE_TOO_LONG: unique symbol = Symbol("line too long");
export type Frame = string | typeof LINE_TOO_LONG;
const [LF, CR, NOTHING] = [0x0a, 0x0d, new Uint8Array(0)];
// The decoder decodes whole lines only, never part of a character: no state.
const [decoder, encoder] = [new TextDecoder(), new TextEncoder()];
/** Splits a TCP byte stream into lines (LF, CRLF or CR end them). A read may
 * hold half a line, several, or half a character. One too long is dropped. */
export class LineFramer {
  #kept = NOTHING; // the start of a line whose end has not come yet
  #dropping = false; // inside a line that was too long
  #afterCR = false; // the last read ended with a CR
  constructor(readonly maxLineBytes: number = MAX_LINE_BYTES) {}
  keptBytes = () => this.#kept.length; // for --trace
  /** Takes one read's bytes: @returns the lines they complete, in order */
  push(chunk: Uint8Array): Frame[] {
    const lines: Frame[] = [];
    // The LF of a CRLF split between two reads: the CR ended the line.
    let start = this.#afterCR && chunk[0] === LF ? 1 : 0;
    this.#afterCR = chunk.at(-1) === CR; // a CR always ends a line
    let cr = -2; // the next CR (-1: none), looked for again once passed
    while (true) {
      const lf = chunk.indexOf(LF, start);
      if (cr !== -1 && cr < start) cr = chunk.indexOf(CR, start);
      const end = cr >= 0 && (lf < 0 || cr < lf) ? cr : lf;
      if (end < 0) break;
      this.#endLine(chunk.subarray(start, end), lines);
      start = end + (end === cr && chunk[end + 1] === LF ? 2 : 1);
    }
    this.#keep(chunk.subarray(start), lines);
    return lines;
  }
  /** The stream ended: @returns its last line, if it had no line end */
  end(): Frame[] {
    return this.#kept.length > 0 ? this.push(new Uint8Array([LF])) : [];
  }
  #endLine(last: Uint8Array, lines: Frame[]): void {
    // Most lines lie whole in one read: decoded from there, no copy.
    const whole = this.#kept.length === 0 && !this.#dropping;
    if (whole && last.length <= this.maxLineBytes) {
      return void lines.push(decoder.decode(last));
    }
    this.#keep(last, lines);
    if (!this.#dropping) lines.push(decoder.decode(this.#kept));
    this.#kept = NOTHING;
    this.#dropping = false;
  }
  #keep(piece: Uint8Array, lines: Frame[]): void {
    if (this.#dropping) return;
    const size = this.#kept.length + piece.length;
    if (size > this.maxLineBytes) {
      this.#dropping = true;
      this.#kept = NOTHING;
      return void lines.push(LINE_TOO_LONG);
    }
    const kept = new Uint8Array(size); // a copy: the caller reuses its buffer
    kept.set(this.#kept);
    kept.set(piece, this.#kept.length);
    this.#kept = kept;
  }
}
type Writer = { write(bytes: Uint8Array): Promise<number> };
/** Sends every byte: a `write()` may take only a part. @returns the writes */
export async function writeAll(writer: Writer, bytes: Uint8Array) {
  let writes = 0;
  for (let sent = 0; sent < bytes.length; writes++) {
    sent += await writer.write(bytes.subarray(sent));
  }
  return writes;
}
export const encodeLine = (text: string) => encoder.encode(text + "\n");
/** Prints one step of the socket story, for `--trace`; undefined when off. */
export type Trace = ((step: string) => void) | undefined;

// --- Text cleaning, line formats and names ---
// Terminal escapes (CSI, OSC, two-byte ESC), then the controls left: C0, DEL,
// C1, the bidi overrides. (Matching them is the point: no-control-regex off.)
const ESCAPES =
  /\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[ -~]?/;
const CONTROLS = /[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]/;
const UNSAFE = new RegExp(`${ESCAPES.source}|${CONTROLS.source}`, "g");
/** Strips escapes and controls, tabs become spaces; Unicode passes as is. */
export function cleanText(text: string): string {
  return text.replace(UNSAFE, (unsafe) => unsafe === "\t" ? " " : "");
}
// The line formats: a message from NAME, a notice, an error to one client.
export const messageLine = (name: string, text: string) => `<${name}> ${text}`;
export const noticeLine = (text: string) => `* ${text}`;
export const errorLine = (text: string) => `! ${text}`;
/** Lines both sides of a protocol know. */
export const SAYS = {
  passwordNeeded: "* this server needs a password: send /auth PASSWORD",
  authenticateFirst: "authenticate first: /auth PASSWORD",
  wrongPassword: "wrong password",
  joinFirst: "this chat needs a password: /join NAME PASSWORD",
  shuttingDown: "* server shutting down",
  bye: "* bye",
  pong: "* pong",
  welcome: "* welcome to socklab chat", // then ", " and what the room is
  alreadyJoined: "you already joined as", // UDP: then the name
  datagramTooLong: "datagram too long:", // UDP: then how long it may be
  monthBye: "bye", // the month service's answer to 0
};
/** What both sides of the inventory protocol know. */
export const INVENTORY = {
  actions: ["add", "remove", "view", "help"],
  maxQuantity: 1_000_000_000,
  maxItemLength: 64,
  help: 'send one request per line: "add ITEM QUANTITY", ' +
    '"remove ITEM QUANTITY", "view", "help", or the same as JSON: ' +
    '{"action":"add","item":"Soap","quantity":200}, {"action":"view"}',
};
/** The inventory's stock, and one reply of its service (a JSON line). */
export type Stock = Record<string, number>;
export type InventoryReply =
  | { ok: true; message?: string; inventory?: Stock }
  | { ok: false; error: string };
type ChatInput =
  | { kind: "empty" }
  | { kind: "message"; text: string }
  | { kind: "command"; command: string; rest: string };
/** A chat line, cleaned: `/cmd rest` a command, `//text` the message `/text`. */
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
  const [first, ...rest] = text.split(" ");
  return [first, rest.join(" ").trim()];
}
/** Why `name` is not a valid name (1 to 24 of A-Z a-z 0-9 - _ .), if not. */
export function nameProblem(name: string): string | undefined {
  if (name === "") return "a name cannot be empty";
  if (name.length > 24) {
    return `name "${name.slice(0, 24)}..." is too long (24 characters at most)`;
  }
  // ASCII only, so no one passes for another with a look-alike letter.
  if (!/^[A-Za-z0-9._-]+$/.test(name)) {
    return `name "${name}" is not valid: use letters, digits, "-", "_" or "."`;
  }
}
/** Names are unique ignoring case: this is the form compared. */
export const nameKey = (name: string) => name.toLowerCase();

// --- The chat room's rules, without sockets ("sans-I/O") ---
/** Where the room's lines go: its transport writes them to sockets. */
export interface RoomOutput<Member> {
  send(member: Member, line: string): void;
  broadcast(line: string, except?: Member): void;
  quit(member: Member): void; // the member asked to leave
  show(line: string): void; // a chat line for the server's console
  log(text: string): void;
}
const HELP = `commands:
  /nick NAME       choose your name (1 to 24 letters, digits, - _ .)
  /who             list who is online
  /msg NAME TEXT   send TEXT to NAME alone
  /me TEXT         an action: "/me waves" shows "* NAME waves"
  /quit            leave the chat
  //TEXT           send a message that starts with "/"`.split("\n");
const SEE_HELP = "/help lists the commands";
/** The chat's rules for any transport: lines in, {@linkcode RoomOutput} out. */
export class ChatRoom<Member extends { name: string }> {
  readonly members = new Map<string, Member>(); // by nameKey, in join order
  #guests = 0;
  constructor(
    readonly out: RoomOutput<Member>,
    readonly options: {
      mode: string; // what the room is, shown in the welcome
      operator?: string; // the server console's name, reserved
      announceLimit?: number; // joins and leaves are told up to this size
      moreHelp?: string[]; // help for the transport's commands (UDP: /join)
    },
  ) {}
  /** Lets a member in, under `name` (checked first) or as guest-N. */
  join(member: Member, name?: string): void {
    member.name = name ?? this.#guestName();
    this.members.set(nameKey(member.name), member);
    this.out.log(`${member.name} joined`);
    // A big room is counted, not listed (and not walked): /who lists it.
    const counted = [`${this.members.size - 1} others`, ...this.#operator()];
    const others = () => this.#names().filter((n) => n !== member.name);
    const online = this.#announces()
      ? [...others(), ...this.#operator()].join(", ") || "no one else"
      : `${counted.join(" and ")}; /who lists them`;
    const pick = name === undefined ? ": pick a name with /nick NAME" : "";
    this.out.send(member, `${SAYS.welcome}, ${this.options.mode}`);
    this.#tell(member, `online: ${online}`);
    this.#tell(member, `you are ${member.name}${pick}; ${SEE_HELP}`);
    if (this.#announces()) this.#announce(`${member.name} joined`, member);
  }
  /** One line from a member: a message to everyone else, or a command. */
  handle(member: Member, line: string): void {
    const input = parseChatInput(line);
    if (input.kind === "empty") return;
    if (input.kind === "message") {
      const said = messageLine(member.name, input.text);
      this.out.show(said);
      return this.out.broadcast(said, member);
    }
    const { command, rest } = input;
    if (command === "/nick") return this.#rename(member, rest);
    if (command === "/who") return this.out.send(member, this.whoLine());
    if (command === "/msg") return this.#whisper(member, rest);
    if (command === "/me") return this.#act(member, rest);
    if (command === "/help") {
      const help = [...HELP, ...this.options.moreHelp ?? []];
      for (const text of help) this.#tell(member, text);
    } else if (command === "/quit" || command === "/leave") {
      this.out.send(member, SAYS.bye);
      this.out.quit(member);
    } else {
      this.#error(member, `unknown command "${command}": ${SEE_HELP}`);
    }
  }
  /** The member has gone (`reason` says why): tell the others. */
  leave(member: Member, reason: string): void {
    if (this.members.get(nameKey(member.name)) !== member) return;
    const told = this.#announces(); // counted with it in, as its join was
    this.members.delete(nameKey(member.name));
    this.out.log(`${member.name} left (${reason})`);
    if (reason === "shutdown" || !told) return;
    // The usual ways to leave need no reason in the notice.
    const plain = /^(quit|closed|reset)$|^error/.test(reason);
    this.#announce(`${member.name} left${plain ? "" : ` (${reason})`}`);
  }
  /** Why `member` cannot take `name`, or undefined when it can. */
  nameProblem(name: string, member?: Member): string | undefined {
    if (name === "") return "usage: /nick NAME";
    const reserved = `name "${name}" is reserved for the operator`;
    if (this.#isOperator(name)) return reserved;
    const holder = this.members.get(nameKey(name));
    if (holder && holder !== member) return `name "${name}" is taken`;
    return nameProblem(name);
  }
  /** `* online (3): Amey, Karan, server (operator)` */
  whoLine(): string {
    const everyone = [...this.#names(), ...this.#operator()];
    const names = everyone.join(", ") || "no one";
    return noticeLine(`online (${everyone.length}): ${names}`);
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
    this.#announce(`${old} is now known as ${name}`);
  }
  #act(member: Member, action: string): void {
    if (action === "") return this.#error(member, "usage: /me TEXT");
    this.out.show(noticeLine(`${member.name} ${action}`));
    this.#announce(`${member.name} ${action}`, member);
  }
  #whisper(member: Member, rest: string): void {
    const [name, text] = splitFirstWord(rest);
    if (!name || !text) return this.#error(member, "usage: /msg NAME TEXT");
    const line = `[private] ${messageLine(member.name, text)}`;
    if (this.#isOperator(name)) return this.out.show(line);
    const target = this.members.get(nameKey(name));
    if (!target) return this.#error(member, `no one named "${name}" is online`);
    this.out.send(target, line);
  }
  #guestName(): string {
    let name;
    do name = `guest-${++this.#guests}`; while (this.nameProblem(name));
    return name;
  }
  #tell = (to: Member, text: string) => this.out.send(to, noticeLine(text));
  #announce = (text: string, except?: Member) =>
    this.out.broadcast(noticeLine(text), except);
  #error = (to: Member, text: string) => this.out.send(to, errorLine(text));
  #announces = () => this.members.size <= (this.options.announceLimit ?? 100);
  #names = () => [...this.members.values()].map((member) => member.name);
  #isOperator = (name: string) =>
    nameKey(name) === nameKey(this.options.operator ?? "");
  #operator = () =>
    this.options.operator ? [`${this.options.operator} (operator)`] : [];
}

// --- The console: lines typed below, lines printed above, in colors ---
// A console not read (a pipe, a full FIFO, a paused terminal: issue 14) stalls
// nothing: one async write at a time; past a cap, lines are dropped, counted.
const MAX_PENDING = 256 * 1024; // characters of printed lines, line ends too
const droppedLine = (count: number) =>
  `(${count} console lines dropped: the console was not read)\n`;
/** The console, on `node:readline`: printed lines go above the typed one. */
export class LineConsole {
  readonly terminal = Deno.stdin.isTerminal() && Deno.stdout.isTerminal();
  onInterrupt: () => unknown = () => Deno.exit(130); // Ctrl-C at a terminal
  #rl?: readline.Interface;
  #lines?: AsyncIterator<string>;
  #pending = ""; // printed lines, not yet written
  #dropped = 0; // lines dropped since the last ones were written
  #out = ""; // readline's text (prompt, echo), not yet written
  #writing = false; // a write is in flight: what comes waits for it
  #written = Promise.resolve(); // when what was given so far is written
  #muted = false;
  #ended = false;
  constructor(readonly prompt = "> ") {}
  /** Prints a line once this turn of the event loop ends: one write a turn. */
  print(line: string): void {
    if (this.#pending.length >= MAX_PENDING) return void this.#dropped++;
    if (this.#pending === "") setTimeout(() => this.#send(), 0);
    this.#pending += line + "\n";
  }
  /** The next line typed or piped in (after `prompt`); undefined at the end. */
  async next(prompt = this.prompt): Promise<string | undefined> {
    const rl = this.#open();
    this.#send(); // the lines printed so far go out before the prompt
    rl.setPrompt(paintDim(prompt));
    if (this.terminal && !this.#ended) rl.prompt(true);
    const { value, done } = await this.#lines!.next();
    rl.setPrompt(paintDim(this.prompt));
    return done ? undefined : value;
  }
  async readLines(each: (line: string) => unknown): Promise<void> {
    for (let line; (line = await this.next()) !== undefined;) await each(line);
  }
  /** Asks for a secret at the terminal, not echoed; undefined elsewhere. */
  async askSecret(question: string): Promise<string | undefined> {
    if (!this.terminal) return undefined;
    const answering = this.next(question); // it draws the question at once
    this.#muted = true; // and what is typed from now on is not echoed
    const answer = await answering.finally(() => this.#muted = false);
    this.#send("\n");
    // readline keeps typed lines for the Up key: not this one.
    const { history } = this.#rl as unknown as { history: string[] };
    if (answer && history[0] === answer) history.shift();
    return answer;
  }
  /** Gives the terminal back: prompt gone, printed lines out, input closed.
   * On a console not read it gives up after 1 s: the caller then exits. */
  async close(): Promise<void> {
    const open = this.#rl && !this.#ended;
    this.#ended = true; // from now on the prompt is not drawn again
    this.#send(open && this.terminal ? "\r\x1b[K" : ""); // its line cleared
    const late = new Promise((done) => setTimeout(done, 1000));
    await Promise.race([this.#written, late]); // exit follows: timer left as is
    // rl.close() would wait for an unread stdout; Deno.exit leaves raw mode.
    if (open && !this.#writing) this.#rl!.close();
  }
  #open(): readline.Interface {
    if (this.#rl) return this.#rl;
    // readline's drawing (prompt, echo) waits its turn too; muted for a secret.
    const write = (chunk: unknown, _: unknown, done: () => void) => {
      if (!this.#muted) this.#send(String(chunk));
      done();
    };
    const screen = Object.defineProperty(new Writable({ write }), "columns", {
      get: () => stdout.columns, // where a long typed line wraps
    });
    const { terminal } = this, output = terminal ? screen : undefined;
    const rl = readline.createInterface({ input: stdin, output, terminal });
    rl.on("SIGINT", () => this.onInterrupt());
    rl.on("close", () => this.#ended = true); // Ctrl-D, or the end of a pipe
    this.#lines = rl[Symbol.asyncIterator]();
    return this.#rl = rl;
  }
  /** Writes what waits, with `text`; while a write is in flight, after it. */
  #send(text = ""): void {
    this.#out += text;
    if (!this.#writing) this.#written = this.#write();
  }
  async #write(): Promise<void> {
    this.#writing = true; // at once: what comes from here on waits
    for (let text; (text = this.#take()) !== "";) {
      // A closed pipe (| head -1) is ignored: nobody reads any more.
      await writeAll(Deno.stdout, encoder.encode(text)).catch(() => {});
    }
    this.#writing = false;
  }
  /** What waits, as one text: printed lines (and drops) above the prompt. */
  #take(): string {
    if (this.#dropped > 0) this.#pending += droppedLine(this.#dropped);
    const atPrompt = this.#pending && this.terminal && this.#rl && !this.#ended;
    this.#out += (atPrompt ? "\r\x1b[K" : "") + this.#pending;
    [this.#pending, this.#dropped] = ["", 0];
    if (atPrompt) this.#rl!.prompt(true); // redrawn: into #out, as it waits
    const out = this.#out;
    this.#out = "";
    return out;
  }
}
// Colors: those of the std module, which is JavaScript without types.
type Paint = (text: string) => string;
type Colors = Record<string, Paint> & { setColorEnabled(on: boolean): void };
const colors = stdColors as unknown as Colors;
const NAME_COLORS = ["green", "yellow", "blue", "magenta", "cyan"]
  .flatMap((hue) => [hue, `bright${hue[0].toUpperCase()}${hue.slice(1)}`]);
/** Paints an error of ours, and a secondary text (hints, prompts). */
export const { red: paintError, dim: paintDim } = colors;
// Colors only for a terminal, and never when NO_COLOR is set.
colors.setColorEnabled(Deno.stdout.isTerminal() && !Deno.noColor);
/** Paints a line from a chat server: each name its own color, always. */
export function paintChatLine(line: string): string {
  if (line.startsWith("* ")) return colors.dim(line);
  if (line.startsWith("! ")) return colors.red(line);
  const message = /^(\[private\] )?<([^>\s]{1,64})> (.*)$/s.exec(line);
  if (!message) return line;
  const [, secret, name, text] = message;
  let hash = 0;
  for (const c of nameKey(name)) hash = (hash * 31 + c.charCodeAt(0)) >>> 0;
  const paint = colors[NAME_COLORS[hash % NAME_COLORS.length]];
  const tag = secret ? colors.magenta(secret) : "";
  return `${tag}<${colors.bold(paint(name))}> ${text}`;
}

// --- Flags: a table per script, read with @std/cli's parseArgs ---
/** A misuse of a script's flags: printed with the usage, exit code 2. */
export class UsageError extends Error {
  override name = "UsageError";
}
/** A flag: its alias, default, and value (on/off, port, range, choices). */
export type FlagRow = {
  short?: string;
  default?: string;
  on?: true;
  port?: true;
  range?: readonly [min: number, max: number, kind?: "number"];
  choices?: readonly string[];
};
type Flags = { _: string[]; help: boolean; [flag: string]: unknown };
/** Reads the arguments with a flag table. @throws {UsageError} for a misuse */
export function parseFlags(
  args: string[],
  table: Record<string, FlagRow>,
  positionals = Infinity,
): Flags {
  const boolean = ["help"], string: string[] = [];
  const alias: Record<string, string> = { h: "help" };
  for (const [name, row] of Object.entries(table)) {
    (row.on ? boolean : string).push(name);
    if (row.short) alias[row.short] = name;
  }
  const spec = { boolean, string, alias, unknown: refuseUnknown };
  const parsed = parseArgs(args, spec) as Flags;
  if (parsed._.length > positionals) {
    throw new UsageError(`Unexpected argument "${parsed._[positionals]}"`);
  }
  for (const [name, row] of Object.entries(table)) {
    const text = parsed[name] ?? row.default; // a default is checked too
    if (typeof text === "string") parsed[name] = checkFlag(name, row, text);
  }
  return { ...parsed, _: parsed._.map(String) };
}
function refuseUnknown(arg: string): true {
  if (!arg.startsWith("-") || arg === "-") return true; // a positional
  const negative = `Invalid value "${arg}": no negative numbers`;
  if (/^-\d/.test(arg)) throw new UsageError(negative);
  throw new UsageError(`Unknown option "${arg.split("=")[0]}"`);
}
function checkFlag(name: string, row: FlagRow, text: string): string | number {
  const bad = `Invalid ${row.port ? "port" : `--${name}`} "${text}": use`;
  if (row.choices && !row.choices.includes(text)) {
    throw new UsageError(`${bad} one of ${row.choices.join(", ")}`);
  }
  const range: FlagRow["range"] = row.port ? [0, 65535] : row.range;
  if (!range) return text;
  const [min, max, kind] = range;
  const pattern = kind ? /^\d+(\.\d+)?$|^\.\d+$/ : /^\d+$/;
  if (pattern.test(text) && +text >= min && +text <= max) return +text;
  const what = kind ? "a number" : "a whole number";
  throw new UsageError(`${bad} ${what} from ${min} to ${max}`);
}
/** The HOST argument: a name or an address. @throws {UsageError} if not */
export function hostArgument(text: string, script: string): string {
  const host = text.replace(/^\[(.*)\]$/, "$1"); // [::1] is ::1
  // A name or IPv4 address (no colon), or an IPv6 one (two colons at least).
  if (/^[\w.-]+$|^[\da-f.]*:[\da-f.]*:[\w.:%]*$/i.test(host)) return host;
  // 127.0.0.1:9999, [::1]:9999: the port has a flag of its own.
  const [, name, port] = /^\[?([^\]/]+?)\]?:(\d+)$/.exec(text) ?? [];
  const fix = port
    ? `give the port with --port: use "${script} ${name} --port ${port}"`
    : "use a name or an address, such as 192.168.0.101";
  throw new UsageError(`Invalid host "${text}": ${fix}`);
}
/** Checks a --name flag. @throws {UsageError} for an invalid name */
export function nameFlag(value: unknown): string | undefined {
  if (value === undefined) return undefined;
  const problem = nameProblem(String(value));
  if (problem) throw new UsageError(`Invalid --name: ${problem}`);
  return String(value);
}
/** Reads `Deno.args`: `--help` prints the usage, a misuse also, exit 0, 2. */
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

// --- Errors, signals, stopping, addresses ---
const REASONS: Record<string, string> = {
  ConnectionRefused:
    "connection refused (is the server running, and on this port?)",
  ConnectionReset: "connection reset",
  ConnectionAborted: "connection aborted",
  AddrInUse: "address already in use (is another server running on this port?)",
  AddrNotAvailable: "address not available on this machine",
  PermissionDenied: "permission denied (ports below 1024 need " +
    "administrator rights; or run with --allow-net)",
  TimedOut: "timed out",
};
/** Says in words why a network operation failed (refused, reset, ...). */
export function networkReason(error: unknown): string {
  const name = error instanceof Error ? error.name : "";
  const message = error instanceof Error ? error.message : String(error);
  if (Object.hasOwn(REASONS, name)) return REASONS[name];
  const unknownHost = /lookup|resolve|name or service|nodename|no such host/i;
  if (unknownHost.test(message)) return "unknown host";
  return /unreachable/i.test(message) ? "network unreachable" : message;
}
/** Is this the error a read or accept gets when we closed the socket? */
export const isClosedByUs = (error: unknown) =>
  error instanceof Deno.errors.BadResource ||
  error instanceof Deno.errors.Interrupted;
/** Calls `stop` on Ctrl-C, and on SIGTERM (SIGBREAK on Windows). */
export function onStopSignals(stop: () => void): void {
  Deno.addSignalListener("SIGINT", stop);
  const windows = Deno.build.os === "windows";
  Deno.addSignalListener(windows ? "SIGBREAK" : "SIGTERM", stop);
}
/** Stops the program with a clear message when Deno's UDP API is missing. */
export function requireUdp(): void {
  if (typeof Deno.listenDatagram === "function") return;
  const needs = "UDP needs Deno's unstable net API: run with --unstable-net";
  const example = "deno run -A --unstable-net udp_server.ts";
  console.error(`${needs}, for example: ${example}`);
  Deno.exit(1);
}
/** A server that stops once (its own `shutDown`), however often asked. */
export abstract class Stoppable {
  #stopped?: Promise<void>;
  get stopping(): boolean {
    return this.#stopped !== undefined;
  }
  stop(): Promise<void> {
    return this.#stopped ??= this.shutDown();
  }
  protected abstract shutDown(): Promise<void>;
}
/** A log line with the time: `14:03:27 Karan joined`. */
export const logLine = (text: string) =>
  `${new Date().toTimeString().slice(0, 8)} ${text}`;
export function addressText(address: Deno.Addr): string {
  const { hostname, port } = address as Deno.NetAddr;
  return `${hostname}:${port}`;
}
type Commands = (address: string) => string; // how to connect to `address`
/** Banner lines: how to reach `host` from the LAN, and from this PC. */
export function connectionHints(host: string, commandsFor: Commands): string[] {
  const hint = (address: string) => `  ${commandsFor(address)}`;
  if (host !== "0.0.0.0" && host !== "::") return ["Connect with:", hint(host)];
  const here = ["From this PC:", hint("127.0.0.1")];
  const sys = { name: "sys", kind: "networkInterfaces" } as const;
  if (Deno.permissions.querySync(sys).state !== "granted") {
    const allow = "--allow-sys=networkInterfaces";
    return [`(Run with ${allow} to list this PC's LAN addresses.)`, ...here];
  }
  const lan = Deno.networkInterfaces()
    .filter((nic) => nic.family === "IPv4" && !nic.address.startsWith("127."))
    .map((nic) => hint(nic.address));
  const none = "This PC has no LAN address: only programs on it can connect.";
  if (lan.length === 0) return [none, ...here];
  return ["From another PC on this LAN:", ...new Set(lan), ...here];
}

// --- Beyond the lab: passwords, rate limits, idle peers ---
export const PASSWORD_VARIABLE = "SOCKLAB_PASSWORD";
/** The password from --password, or else from SOCKLAB_PASSWORD. */
export function passwordFrom(flag: unknown): string | undefined {
  if (flag === "") throw new UsageError("The password cannot be empty");
  if (flag !== undefined) return String(flag);
  try {
    return Deno.env.get(PASSWORD_VARIABLE) || undefined;
  } catch { /* no permission to read it (--allow-env=SOCKLAB_PASSWORD) */ }
}
/** Compares passwords in constant time: hashed, so lengths tell nothing. */
export function passwordMatches(given: string, expected: string): boolean {
  const digest = (text: string) => createHash("sha256").update(text).digest();
  return timingSafeEqual(digest(given), digest(expected));
}
/** A token bucket: `burst` tokens, `rate` more a second, one per line. */
export class RateLimit {
  #tokens = Infinity; // a full bucket: wait() caps it at `burst`
  #last = performance.now();
  #lastDrop = -Infinity;
  constructor(readonly rate: number, readonly burst: number) {}
  /** For TCP pacing: 0 with a token taken, else the ms until one is there. */
  wait(now = performance.now()): number {
    if (this.rate === 0) return 0; // --rate-limit 0: no limit
    const refill = Math.max(0, now - this.#last) * this.rate / 1000;
    this.#tokens = Math.min(this.burst, this.#tokens + refill);
    this.#last = now;
    if (this.#tokens < 1) return (1 - this.#tokens) * 1000 / this.rate;
    this.#tokens -= 1;
    return 0;
  }
  /** For UDP: "pass", or a drop: "warn" if the last drop is over 1 s old. */
  check(now = performance.now()): "pass" | "warn" | "drop" {
    if (this.wait(now) === 0) return "pass";
    const quiet = now - this.#lastDrop > 1000;
    this.#lastDrop = now;
    return quiet ? "warn" : "drop";
  }
}
/** The one idle sweep: hands peers silent for `timeoutMs` to `drop`. */
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
