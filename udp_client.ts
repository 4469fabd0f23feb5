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

import {
  addressText,
  argsOrExit,
  chooseColors,
  cleanText,
  DEFAULT_PORT,
  encodeLine,
  errorLine,
  type FlagRow,
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

/**
 * A UDP socket that talks to one server. A reply goes to the request that
 * waits for it; any other (late, duplicated, a chat line) to `onOther`.
 */
export class UdpLink {
  /** Gets the replies that no request waits for. */
  onOther: (reply: string) => void = () => {};
  readonly server: Deno.NetAddr;
  readonly target: string; // HOST:PORT of the server
  readonly #socket: Deno.DatagramConn;
  // The reply a request waits for, and what to do when it comes.
  #waiter?: { matches(reply: string): boolean; resolve(reply: string): void };
  #closed = false;
  readonly #decoder = new TextDecoder();

  constructor(host: string, port: number, readonly trace?: Trace) {
    this.server = { transport: "udp", hostname: host, port };
    this.target = addressText(this.server);
    // Create a UDP socket and bind it to any free port (0): the kernel
    // picks one, and the server's replies come back to it.
    const hostname = host.includes(":") ? "::" : "0.0.0.0";
    this.#socket = Deno.listenDatagram({ hostname, port: 0, transport: "udp" });
    trace?.(`bind ${addressText(this.#socket.addr)}`);
    this.#receiveLoop();
  }

  /** Sends one line as one datagram. */
  async send(line: string): Promise<void> {
    const datagram = encodeLine(line);
    this.trace?.(`sendto ${this.target}: ${datagram.length} bytes`);
    // Send: one datagram to one address; it may never arrive.
    await this.#socket.send(datagram, this.server);
  }

  async #receiveLoop(): Promise<void> {
    while (!this.#closed) {
      let datagram, from;
      try {
        // Receive: one whole datagram and the address it came from.
        [datagram, from] = await this.#socket.receive();
      } catch (error) {
        if (this.#closed) return;
        // Windows reports here an ICMP "port unreachable": the server's
        // port is closed. The request's timeout says the rest.
        this.onOther(errorLine(networkReason(error)));
        continue;
      }
      this.trace?.(`recvfrom ${addressText(from)}: ${datagram.length} bytes`);
      if ((from as Deno.NetAddr).port !== this.server.port) continue;
      const text = this.#decoder.decode(datagram).replace(/\r?\n$/, "");
      for (const reply of text.split(/\r\n?|\n/)) this.#dispatch(reply);
    }
  }

  #dispatch(reply: string): void {
    const waiter = this.#waiter;
    if (!waiter?.matches(reply)) return this.onOther(reply);
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
    options: UdpClientOptions,
    onRetry?: (attempt: number) => void,
  ): Promise<string | undefined> {
    for (let attempt = 0; attempt <= options.retries; attempt++) {
      if (attempt > 0) onRetry?.(attempt);
      const reply = new Promise<string | undefined>((resolve) => {
        const timer = setTimeout(() => resolve(undefined), options.timeoutMs);
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

  /** Close: the port is free again. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.trace?.("close");
    this.#socket.close();
  }
}

/** What to print when no reply came after the last try. */
function noReply(link: UdpLink): string {
  return `no reply from ${link.target} (UDP does not guarantee delivery)`;
}

/** Where a client's output goes: stdout for results, notes beside. */
interface Output {
  console: LineConsole;
  note: (text: string) => void; // retries, late replies, trace
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
  if (/^\d+$/.test(question)) {
    const number = Number(question);
    if (number === 0) return (reply) => reply === "bye";
    if (number >= 1 && number <= 12) return (r) => r.startsWith(`${number}: `);
  }
  return (reply) => reply.startsWith("! ");
}

function askMonth(
  link: UdpLink,
  options: UdpClientOptions,
  question: string,
  { note }: Output,
): Promise<string | undefined> {
  const { timeoutMs: ms, retries } = options;
  const again = (n: number) =>
    note(`no reply in ${ms} ms, asking again (${n} of ${retries})`);
  return link.ask(question, answersMonthQuestion(question), options, again);
}

/** One question, one answer: prints `March`, exits 0 (1 without one). */
async function monthOnce(
  link: UdpLink,
  options: UdpClientOptions,
  out: Output,
): Promise<number> {
  const answer = await askMonth(link, options, options.question!, out);
  if (answer === undefined || answer.startsWith("! ")) {
    console.error(paintError(cleanText(answer ?? noReply(link))));
    return 1;
  }
  out.console.print(cleanText(answer.replace(/^\d+: /, "")));
  return 0;
}

/** The lab's loop: ask for a number, show its month, until 0. */
async function monthLoop(
  link: UdpLink,
  options: UdpClientOptions,
  out: Output,
): Promise<number> {
  link.onOther = (reply) =>
    out.note(`ignored a late reply: "${cleanText(reply)}"`);
  for (let line; (line = await out.console.next()) !== undefined;) {
    const question = line.trim();
    if (!/^-?\d+$/.test(question)) {
      const hint = "Please enter a whole number, like 3 (0 to quit)";
      out.console.print(paintError(hint));
      continue;
    }
    const answer = await askMonth(link, options, question, out);
    const shown = answer === undefined ? noReply(link) : cleanText(answer);
    out.console.print(answer?.startsWith("! ") ? paintError(shown) : shown);
    if (answer === "bye") break;
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
async function echoPing(
  link: UdpLink,
  options: UdpClientOptions,
  { console: out }: Output,
): Promise<number> {
  const count = options.count!;
  const sentAt = new Map<number, number>();
  const answered = new Set<number>();
  const roundTrips: number[] = [];
  const finish = () => {
    const summary = echoSummary(link.target, sentAt.size, roundTrips);
    summary.forEach((line) => out.print(line));
    return roundTrips.length > 0 ? 0 : 1;
  };
  onStopSignals(() => end(finish(), out, link));
  const { promise: done, resolve: allAnswered } = Promise.withResolvers<void>();
  link.onOther = (reply) => {
    const seq = Number(/^echo seq=(\d+)$/.exec(reply)?.[1]);
    const start = sentAt.get(seq);
    if (start === undefined) return;
    const time = (performance.now() - start).toFixed(3);
    const duplicate = answered.has(seq);
    if (!duplicate) roundTrips.push(Number(time));
    answered.add(seq);
    const copy = duplicate ? " (duplicate)" : "";
    out.print(`reply from ${link.target}: seq=${seq} time=${time} ms${copy}`);
    if (answered.size === count) allAnswered();
  };

  const every = `one every ${options.intervalMs} ms`;
  out.print(`ECHO ${link.target}: ${count} datagram(s), ${every}`);
  for (let seq = 1; seq <= count; seq++) {
    sentAt.set(seq, performance.now());
    await link.send(`echo seq=${seq}`).catch(() => {});
    if (seq < count) await sleep(options.intervalMs);
  }
  // Wait for the last replies, at most one timeout.
  await Promise.race([done, sleep(options.timeoutMs)]);
  return finish();
}

/** Sends each line typed or piped, and shows its echo and round trip. */
async function echoLines(
  link: UdpLink,
  options: UdpClientOptions,
  { console: out, note }: Output,
): Promise<number> {
  link.onOther = (reply) => note(`ignored a late reply: "${cleanText(reply)}"`);
  await out.readLines(async (line) => {
    const start = performance.now();
    const again = (n: number) => note(`no echo yet, sending again (${n})`);
    const echo = await link.ask(line, (echo) => echo === line, options, again);
    if (echo === undefined) return out.print(noReply(link));
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
async function chat(
  link: UdpLink,
  options: UdpClientOptions,
  { console: out }: Output,
): Promise<number> {
  const name = options.name ??
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
    const bye = await link.ask("/leave", (r) => r === SAYS.bye, options)
      .catch(() => undefined);
    if (bye) show(bye);
    ended(0);
  };

  // Join (a guest only checks that the server answers, with /ping). What
  // comes with the answer waits for it, so the welcome is shown first.
  const early: string[] = [];
  link.onOther = (reply) => early.push(reply);
  const joined = await join(link, options, name, out);
  if (joined === undefined) return fail(noReply(link));
  [joined, ...early].filter((line) => line !== SAYS.pong).forEach(show);
  if (joined === JOIN_FIRST) {
    const how = `give it with --password or ${PASSWORD_VARIABLE}, and a --name`;
    return fail(`The chat needs a password: ${how}`);
  }
  if (joined.startsWith("! ")) return 1;
  link.onOther = shown;

  const keepalive = setInterval(() => {
    keepalivesUnanswered++;
    link.send("/ping").catch(() => {});
  }, options.keepaliveMs);
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

/** Sends /join (or /ping, for a guest); asks for a password if needed. */
async function join(
  link: UdpLink,
  options: UdpClientOptions,
  name: string | undefined,
  out: LineConsole,
): Promise<string | undefined> {
  const answers = (reply: string) => /^\* (welcome|pong$)|^! /.test(reply);
  const request = (password?: string) =>
    !name ? "/ping" : password ? `/join ${name} ${password}` : `/join ${name}`;
  const joined = await link.ask(request(options.password), answers, options);
  if (joined !== JOIN_FIRST || !name || options.password) return joined;
  const password = await out.askSecret("Password: ");
  return password
    ? await link.ask(request(password), answers, options)
    : joined;
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
  return [host, question];
}

/** Closes the console and the socket, then exits with `code`. */
function end(code: number, console: LineConsole, link: UdpLink): never {
  console.close();
  link.close();
  Deno.exit(code);
}

async function main(): Promise<void> {
  const options = argsOrExit(parseUdpClientArgs, USAGE);
  requireUdp();
  chooseColors();
  const month = options.service === "month";
  const out = new LineConsole(month ? MONTH_PROMPT : "> ");
  // Notes go beside the program's output: dimmed above the prompt on a
  // terminal, to stderr elsewhere, so stdout stays the program's output.
  const note = (text: string) =>
    out.terminal ? out.print(paintDim(text)) : console.error(text);
  const trace = options.trace ? note : undefined;
  out.onInterrupt = () => end(130, out, link);
  let link: UdpLink;
  try {
    link = new UdpLink(options.host, options.port, trace);
  } catch (error) {
    console.error(`Cannot open a UDP socket: ${networkReason(error)}`);
    Deno.exit(1);
  }
  const run = options.service === "chat"
    ? chat
    : options.service === "echo"
    ? (options.count === undefined ? echoLines : echoPing)
    : (options.question === undefined ? monthLoop : monthOnce);
  let code;
  try {
    code = await run(link, options, { console: out, note });
  } catch (error) {
    const reason = networkReason(error);
    console.error(`Cannot reach "${link.target}" (UDP): ${reason}`);
    code = 1;
  }
  end(code, out, link);
}

if (import.meta.main) main();
