#!/usr/bin/env -S deno run --allow-net --allow-env=SOCKLAB_PASSWORD
/**
 * socklab UDP client for udp_server.ts's chat, month service (a question
 * is asked again when a datagram is lost) and echo (like `ping`). The lab's
 * steps, in this file's order: create a UDP socket and bind it (any free
 * port), send to the server, receive from it, close. `--trace` shows each.
 *
 * ```sh
 * deno run -A udp_client.ts [HOST] [--service chat|month|echo] [--name NAME]
 * deno run -A udp_client.ts --service month 3
 * deno run -A udp_client.ts --service echo --count 10 --interval 200 --trace
 * ```
 *
 * @module
 */

import { lookup } from "node:dns/promises";
import {
  addressText,
  argsOrExit,
  cleanText,
  DEFAULT_PORT,
  encodeLine,
  errorLine,
  type FlagRow,
  hostArgument,
  LineConsole,
  nameFlag,
  nameProblem,
  networkReason,
  onStopSignals,
  paintChatLine,
  paintDim,
  paintError,
  parseFlags,
  PASSWORD_VARIABLE,
  passwordFrom,
  requireUdp,
  SAYS,
  type Trace,
  UsageError,
} from "./shared.ts";

const SERVICES = ["chat", "month", "echo"] as const;

/** What the UDP client was asked to do. */
export interface UdpClientOptions {
  host: string; // the server's host name or address
  port: number;
  service: typeof SERVICES[number];
  name?: string; // chat: the name to join with
  question?: string; // month: one question to ask, then exit
  timeoutMs: number; // how long to wait for each reply
  retries: number; // how many times to send again when no reply comes
  count?: number; // echo: how many datagrams to send, like ping
  intervalMs: number; // echo: time between two datagrams
  keepaliveMs: number; // chat: time between two keepalives
  password?: string; // chat: from --password or SOCKLAB_PASSWORD
  trace: boolean; // print each socket step
  help: boolean;
}

// The most a datagram holds over IPv4; a bigger one (IPv6) is cut short.
const MAX_REPLY = 65_507;
const TOO_BIG = errorLine(`a reply over ${MAX_REPLY} bytes came: dropped`);

/** IPv6 has many spellings of an address: the shortest, as Deno gives it. */
const shortest = (ip: string) =>
  URL.parse(`http://[${ip}]`)?.hostname.slice(1, -1) ?? ip;

/**
 * A UDP socket that talks to one server, with the client's options. A
 * reply goes to the request that waits for it; any other (late,
 * duplicated, a chat line) to `onOther`.
 */
export class UdpLink {
  /** Gets the replies that no request waits for: late ones, by default. */
  onOther = (reply: string) =>
    this.note(`ignored a late reply: "${cleanText(reply)}"`);
  /** Pads each datagram with spaces to this size (the chat's join). */
  padTo = 0;
  readonly target: string; // HOST:PORT of the server, as given
  readonly #socket: Deno.DatagramConn;
  readonly #trace: Trace;
  // The reply a request waits for, and what to do when it comes.
  #waiter?: { matches(reply: string): boolean; resolve(reply: string): void };
  #closed = false;
  readonly #decoder = new TextDecoder();

  /** Looks up the server's address (once), then creates the socket. */
  static async open(options: UdpClientOptions, note: (text: string) => void) {
    const { host, port } = options, family = host.includes(":") ? 6 : 4;
    const hostname = shortest((await lookup(host, { family })).address);
    return new UdpLink({ transport: "udp", hostname, port }, options, note);
  }

  private constructor(
    readonly server: Deno.NetAddr, // the exact address replies come from
    readonly options: UdpClientOptions,
    readonly note: (text: string) => void, // retries, late replies, trace
  ) {
    this.target = `${options.host}:${options.port}`;
    this.#trace = options.trace ? note : undefined;
    // Create a UDP socket and bind it to any free port (0): the kernel
    // picks one, and the server's replies come back to it.
    const hostname = server.hostname.includes(":") ? "::" : "0.0.0.0";
    this.#socket = Deno.listenDatagram({ hostname, port: 0, transport: "udp" });
    this.#trace?.(`bind ${addressText(this.#socket.addr)}`);
    this.#receiveLoop();
  }

  /** Sends one line as one datagram (padded, if `padTo` says so). */
  async send(line: string): Promise<void> {
    let datagram = encodeLine(line);
    const padding = this.padTo - datagram.length; // counted in bytes
    if (padding > 0) datagram = encodeLine(line + " ".repeat(padding));
    this.#trace?.(`sendto ${this.target}: ${datagram.length} bytes`);
    // Send: one datagram to one address; it may never arrive.
    await this.#socket.send(datagram, this.server);
  }

  async #receiveLoop(): Promise<void> {
    // One byte over the longest reply tells one that the kernel cut short.
    const buffer = new Uint8Array(MAX_REPLY + 1);
    while (!this.#closed) {
      let datagram, from;
      try {
        // Receive: one whole datagram and the address it came from.
        [datagram, from] = await this.#socket.receive(buffer);
      } catch (error) {
        if (this.#closed) return;
        // Windows reports here an ICMP "port unreachable": the server's
        // port is closed. The request's timeout says the rest.
        this.onOther(errorLine(networkReason(error)));
        continue;
      }
      const { hostname, port } = from as Deno.NetAddr;
      this.#trace?.(`recvfrom ${addressText(from)}: ${datagram.length} bytes`);
      // Anyone can send to our port: only the server's exact address counts.
      if (hostname !== this.server.hostname || port !== this.server.port) {
        this.#trace?.(`ignored: ${addressText(from)} is not the server`);
        continue;
      }
      const text = datagram.length > MAX_REPLY
        ? TOO_BIG
        : this.#decoder.decode(datagram).replace(/\r?\n$/, "");
      for (const reply of text.split(/\r\n?|\n/)) this.#dispatch(reply);
    }
  }

  #dispatch(reply: string): void {
    const waiter = this.#waiter;
    // A reply cut short ends the wait too: the same would come again.
    if (!waiter || !(reply === TOO_BIG || waiter.matches(reply))) {
      return this.onOther(reply);
    }
    this.#waiter = undefined; // a copy of the reply is not news either
    waiter.resolve(reply);
  }

  /**
   * Sends a request and waits for a reply that `matches`; sends it again
   * when none comes in time (UDP may lose the request or the reply).
   * @returns the reply, or undefined after the last try
   */
  async ask(
    request: string,
    matches: (reply: string) => boolean,
  ): Promise<string | undefined> {
    const { timeoutMs, retries } = this.options;
    const again = `no reply in ${timeoutMs} ms, asking again`;
    for (let attempt = 0; attempt <= retries; attempt++) {
      if (attempt > 0) this.note(`${again} (${attempt} of ${retries})`);
      const reply = new Promise<string | undefined>((resolve) => {
        const timer = setTimeout(() => resolve(undefined), timeoutMs);
        const answered = (line: string) => (clearTimeout(timer), resolve(line));
        this.#waiter = { matches, resolve: answered };
      });
      await this.send(request);
      const answer = await reply;
      if (answer !== undefined) return answer;
    }
    this.#waiter = undefined;
    return undefined;
  }

  /** What to print when no reply came after the last try. */
  get noReply(): string {
    return `no reply from ${this.target} (UDP does not guarantee delivery)`;
  }

  /** Close: the port is free again. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#trace?.("close");
    this.#socket.close();
  }
}

// ---------------------------------------------------------------------------
// The month service
// ---------------------------------------------------------------------------

/**
 * Which reply answers a month question: `3: March` answers "3" (so a late
 * answer to another question never passes for it), `bye` "0", and an error
 * a number out of range.
 */
export function answersMonthQuestion(
  question: string,
): (reply: string) => boolean {
  const number = /^\d+$/.test(question) ? Number(question) : -1;
  if (number === 0) return (reply) => reply === SAYS.monthBye;
  if (number >= 1 && number <= 12) return (r) => r.startsWith(`${number}: `);
  return (reply) => reply.startsWith("! ");
}

/** One question, one answer: prints `March`, exits 0 (1 without one). */
async function monthOnce(link: UdpLink, out: LineConsole): Promise<number> {
  const question = link.options.question!;
  const answer = await link.ask(question, answersMonthQuestion(question));
  if (answer === undefined || answer.startsWith("! ")) {
    console.error(paintError(cleanText(answer ?? link.noReply)));
    return 1;
  }
  out.print(cleanText(answer.replace(/^\d+: /, "")));
  return 0;
}

/** The lab's loop: ask for a number, show its month, until 0. */
async function monthLoop(link: UdpLink, out: LineConsole): Promise<number> {
  for (let line; (line = await out.next()) !== undefined;) {
    const question = line.trim();
    if (!/^-?\d+$/.test(question)) {
      out.print(paintError("Please enter a whole number, like 3 (0 to quit)"));
      continue;
    }
    const answer = await link.ask(question, answersMonthQuestion(question));
    const shown = answer === undefined ? link.noReply : cleanText(answer);
    out.print(answer?.startsWith("! ") ? paintError(shown) : shown);
    if (answer === SAYS.monthBye) break;
  }
  return 0;
}

// ---------------------------------------------------------------------------
// The echo service
// ---------------------------------------------------------------------------

/** The lines of ping's summary. */
function echoSummary(target: string, sent: number, times: number[]): string[] {
  const loss = sent === 0 ? 0 : Math.round((1 - times.length / sent) * 100);
  const lines = [
    `--- ${target} echo statistics ---`,
    `${sent} sent, ${times.length} received, ${loss}% loss`,
  ];
  if (times.length === 0) return lines;
  const avg = times.reduce((a, b) => a + b, 0) / times.length;
  const ms = [Math.min(...times), avg, Math.max(...times)]
    .map((time) => time.toFixed(3)).join("/");
  return [...lines, `round trip min/avg/max = ${ms} ms`];
}

/** Like ping: numbered datagrams, one line per echo, then a summary. */
async function echoPing(link: UdpLink, out: LineConsole): Promise<number> {
  const { count, intervalMs, timeoutMs } = link.options;
  const sentAt = new Map<number, number>();
  const roundTrips = new Map<number, number>(); // by seq, the first echo's
  const finish = () => {
    const times = [...roundTrips.values()];
    echoSummary(link.target, sentAt.size, times).forEach((l) => out.print(l));
    return times.length > 0 ? 0 : 1;
  };
  onStopSignals(() => end(finish(), out, link));
  const { promise: done, resolve: allAnswered } = Promise.withResolvers<void>();
  link.onOther = (reply) => {
    if (reply.startsWith("! ")) return out.print(paintError(cleanText(reply)));
    const seq = Number(/^echo seq=(\d+)$/.exec(reply)?.[1]);
    const start = sentAt.get(seq);
    if (start === undefined) return;
    const time = (performance.now() - start).toFixed(3);
    const copy = roundTrips.has(seq) ? " (duplicate)" : "";
    if (!copy) roundTrips.set(seq, Number(time));
    out.print(`reply from ${link.target}: seq=${seq} time=${time} ms${copy}`);
    if (roundTrips.size === count) allAnswered();
  };

  const every = `one every ${intervalMs} ms`;
  out.print(`ECHO ${link.target}: ${count} datagram(s), ${every}`);
  for (let seq = 1; seq <= count!; seq++) {
    sentAt.set(seq, performance.now());
    await link.send(`echo seq=${seq}`).catch(() => {});
    if (seq < count!) await sleep(intervalMs);
  }
  // Wait for the last replies, at most one timeout.
  await Promise.race([done, sleep(timeoutMs)]);
  return finish();
}

/** Sends each line typed or piped, and shows its echo and round trip. */
async function echoLines(link: UdpLink, out: LineConsole): Promise<number> {
  await out.readLines(async (line) => {
    const start = performance.now();
    const echo = await link.ask(line, (echo) => echo === line);
    if (echo !== line) return out.print(paintError(echo ?? link.noReply));
    const time = (performance.now() - start).toFixed(3);
    out.print(`${cleanText(echo)} ${paintDim(`(${time} ms)`)}`);
  });
  return 0;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

// ---------------------------------------------------------------------------
// The chat
// ---------------------------------------------------------------------------

const JOIN_FIRST = errorLine(SAYS.joinFirst);

/** Joins, then sends what you type while printing what arrives. */
async function chat(link: UdpLink, out: LineConsole): Promise<number> {
  const name = link.options.name ??
    (Deno.stdin.isTerminal() ? await askName(out) : undefined);
  let keepalivesUnanswered = 0;
  const { promise: finished, resolve: ended } = Promise.withResolvers<number>();
  const show = (reply: string) => out.print(paintChatLine(cleanText(reply)));
  const shown = (reply: string) => {
    // The answers to keepalives are not news: do not show them.
    if (reply === SAYS.pong && keepalivesUnanswered > 0) {
      return void keepalivesUnanswered--;
    }
    show(reply);
    if (reply === SAYS.shuttingDown) {
      console.error(paintError(`The server "${link.target}" shut down`));
      ended(1);
    }
  };
  const leave = async () => {
    const bye = await link.ask("/leave", (r) => r === SAYS.bye)
      .catch(() => undefined);
    if (bye) show(bye);
    ended(0);
  };

  // Join. What comes with the answer waits for it: the welcome goes first.
  const early: string[] = [];
  link.onOther = (reply) => early.push(reply);
  const joined = await join(link, name, out);
  if (joined === undefined) return fail(link.noReply);
  [joined, ...early].forEach(show);
  if (joined === JOIN_FIRST) {
    const how = `give it with --password or ${PASSWORD_VARIABLE}, and a --name`;
    return fail(`The chat needs a password: ${how}`);
  }
  // A join sent again, its welcome lost, is told it is in already.
  const inAlready = joined.startsWith(errorLine(SAYS.alreadyJoined));
  if (joined.startsWith("! ") && !inAlready) return 1;
  link.onOther = shown;

  const keepalive = setInterval(() => {
    keepalivesUnanswered++;
    link.send("/ping").catch(() => {});
  }, link.options.keepaliveMs);
  onStopSignals(leave);
  out.onInterrupt = leave;
  out.readLines(async (line) => {
    if (/^\/(leave|quit)$/i.test(line.trim())) return await leave();
    await link.send(line).catch((error) =>
      out.print(paintError(`Cannot send: ${networkReason(error)}`))
    );
  }).then(leave);
  const code = await finished;
  clearInterval(keepalive);
  return code;
}

/**
 * Sends /join NAME (/join: a guest), padded: the server sends an address
 * that has not joined no more than it got. Asks for a password if needed.
 */
async function join(
  link: UdpLink,
  name: string | undefined,
  out: LineConsole,
): Promise<string | undefined> {
  const answers = (r: string) =>
    r.startsWith(SAYS.welcome) || r.startsWith("! ");
  const request = (password?: string) =>
    !name ? "/join" : password ? `/join ${name} ${password}` : `/join ${name}`;
  const ask = (password = link.options.password) =>
    link.ask(request(password), answers);
  link.padTo = 1200; // the server's default --max-datagram
  let joined = await ask();
  // A server with a lower --max-datagram says how much it takes.
  const tooLong = errorLine(SAYS.datagramTooLong);
  const most = joined?.startsWith(tooLong) && /(\d+) bytes/.exec(joined)?.[1];
  if (most) {
    link.padTo = Number(most);
    joined = await ask();
  }
  if (joined === JOIN_FIRST && name && !link.options.password) {
    const password = await out.askSecret("Password: ");
    if (password) joined = await ask(password);
  }
  link.padTo = 0; // joined (or not): no more padding
  return joined;
}

const NAME_PROMPT = "Your name (Enter for a guest name): ";

/** Asks for a name at the terminal until it is valid; Enter for a guest. */
async function askName(out: LineConsole): Promise<string | undefined> {
  while (true) {
    const answer = (await out.next(NAME_PROMPT))?.trim();
    if (!answer) return undefined;
    const problem = nameProblem(answer);
    if (!problem) return answer;
    out.print(paintError(problem));
  }
}

/** Says why the chat could not begin: @returns the exit code, 1 */
const fail = (why: string) => (console.error(paintError(why)), 1);

// ---------------------------------------------------------------------------
// The program: flags, usage, main
// ---------------------------------------------------------------------------

const MONTH_PROMPT = "Enter a month number (0 to quit): ";

const FLAGS: Record<string, FlagRow> = {
  port: { short: "p", port: true, default: String(DEFAULT_PORT) },
  service: { short: "s", choices: SERVICES, default: "chat" },
  name: { short: "n" },
  timeout: { range: [1, 600_000], default: "1000" },
  retries: { range: [0, 100], default: "3" },
  count: { range: [1, 1_000_000] },
  interval: { range: [0, 3_600_000], default: "1000" },
  keepalive: { range: [0.1, 86_400, "number"], default: "20" },
  password: {},
  trace: { on: true },
};

const USAGE = `socklab UDP client

USAGE:
  deno run -A udp_client.ts [HOST] [OPTIONS]
  deno run -A udp_client.ts [HOST] --service month [NUMBER]
  (outside this folder, add --unstable-net: deno run -A --unstable-net udp_client.ts)

  HOST                     The server's address (default localhost)
  NUMBER                   Month service: ask once, print the answer, exit

OPTIONS:
  -p, --port <PORT>        The server's port (default ${DEFAULT_PORT})
  -s, --service <SERVICE>  chat, month or echo (default chat)
  -n, --name <NAME>        Chat: your name (without it, you are asked)
      --timeout <MS>       Wait this long for each reply (default 1000)
      --retries <N>        Then send again, up to N times (default 3)
      --count <N>          Echo: send N numbered datagrams, like ping
      --interval <MS>      Echo: between two of them (default 1000)
      --keepalive <SECONDS> Chat: tell the server you are there (default 20)
      --password <SECRET>  Chat: the password; or set SOCKLAB_PASSWORD; or you are asked
      --trace              Print each socket step (bind, sendto, recvfrom, close) to stderr
  -h, --help               Show this help

Piped input works in every service: each line is a chat message, a month
number or a datagram to echo.`;

/** Reads the UDP client's arguments. @throws {UsageError} when misused */
export function parseUdpClientArgs(args: string[]): UdpClientOptions {
  const flags = parseFlags(args, FLAGS, 2);
  const service = flags.service as UdpClientOptions["service"];
  const [host, question] = hostAndQuestion(flags._, service);
  return {
    host,
    port: flags.port as number,
    service,
    name: nameFlag(flags.name),
    question,
    timeoutMs: flags.timeout as number,
    retries: flags.retries as number,
    count: flags.count as number | undefined,
    intervalMs: flags.interval as number,
    keepaliveMs: (flags.keepalive as number) * 1000,
    password: passwordFrom(flags.password),
    trace: flags.trace as boolean,
    help: flags.help,
  };
}

/** Splits the positional arguments into the host and a month question. */
function hostAndQuestion(
  [first = "localhost", second]: string[],
  service: string,
): [string, string | undefined] {
  if (service !== "month" && second !== undefined) {
    throw new UsageError(`Unexpected argument "${second}"`);
  }
  // One argument: a number is the question, anything else the host.
  const [host, question] = service !== "month" || second !== undefined
    ? [first, second]
    : /^[+-]?\d+(\.\d+)?$/.test(first)
    ? ["localhost", first]
    : [first, undefined];
  if (question !== undefined && !/^-?\d+$/.test(question)) {
    throw new UsageError(`Invalid month "${question}": give a whole number`);
  }
  return [hostArgument(host, "udp_client.ts"), question];
}

/** Closes the socket and the console, then exits with `code`. */
async function end(code: number, out: LineConsole, link?: UdpLink) {
  link?.close(); // first: nothing more is sent while the console closes
  await out.close(); // 1 s at most, on a console not read
  Deno.exit(code);
}

async function main(): Promise<void> {
  const options = argsOrExit(parseUdpClientArgs, USAGE);
  requireUdp();
  const month = options.service === "month";
  const out = new LineConsole(month ? MONTH_PROMPT : "> ");
  // Notes go beside the program's output: dimmed above the prompt on a
  // terminal, to stderr elsewhere, so stdout stays the program's output.
  const note = (text: string) =>
    out.terminal ? out.print(paintDim(text)) : console.error(text);
  let link: UdpLink | undefined;
  out.onInterrupt = () => end(130, out, link);
  const run = options.service === "chat"
    ? chat
    : options.service === "echo"
    ? (options.count === undefined ? echoLines : echoPing)
    : (options.question === undefined ? monthLoop : monthOnce);
  let code;
  try {
    link = await UdpLink.open(options, note);
    code = await run(link, out);
  } catch (error) {
    const unknown = (error as { code?: string }).code === "ENOTFOUND";
    const reason = unknown ? "unknown host" : networkReason(error);
    const where = `"${options.host}:${options.port}" (UDP)`;
    console.error(`Cannot reach ${where}: ${reason}`);
    code = 1;
  }
  await end(code, out, link);
}

if (import.meta.main) main();
