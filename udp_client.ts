#!/usr/bin/env -S deno run --allow-net --unstable-net
/**
 * socklab UDP client, for udp_server.ts's three services: the chat relay,
 * the month service (each question waits for its own answer, and asks
 * again when a datagram is lost), and echo (round trips and loss, like
 * `ping`).
 *
 * ```sh
 * deno run -A udp_client.ts [HOST] [--service chat|month|echo] [--name NAME]
 * deno run -A udp_client.ts --service month 3
 * deno run -A udp_client.ts --service echo --count 10 --interval 200
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
  LineConsole,
  nameProblem,
  networkReason,
  onStopSignals,
  paintChatLine,
  paintDim,
  paintError,
  parseChoice,
  parseFlags,
  parseNumberFlag,
  parsePort,
  PASSWORD_VARIABLE,
  passwordFrom,
  requireUdp,
  UDP_SERVICES,
  type UdpService,
  UsageError,
  wholeFlag,
} from "./shared.ts";

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
  -h, --help               Show this help

Piped input works in every service: each line is a chat message, a month
number or a datagram to echo.`;

/** What the UDP client was asked to do. */
export interface UdpClientOptions {
  /** The server's host name or address. @default "localhost" */
  host: string;
  /** The server's port. @default 9999 */
  port: number;
  /** The service. @default "chat" */
  service: UdpService;
  /** Chat: the name to join with. */
  name?: string;
  /** Month service: one question to ask, then exit. */
  question?: string;
  /** How long to wait for each reply, in ms. @default 1000 */
  timeoutMs: number;
  /** How many times to send again when no reply comes. @default 3 */
  retries: number;
  /** Echo: how many datagrams to send, like ping. */
  count?: number;
  /** Echo: time between two datagrams, in ms. @default 1000 */
  intervalMs: number;
  /** Chat: time between two keepalives, in ms. @default 20000 */
  keepaliveMs: number;
  /** Chat: the password, from --password or SOCKLAB_PASSWORD. */
  password?: string;
  /** Print the usage and stop. */
  help: boolean;
}

/**
 * Reads the UDP client's arguments.
 * @throws {UsageError} for a bad flag or argument
 */
export function parseUdpClientArgs(args: string[]): UdpClientOptions {
  const flags = parseFlags(args, {
    string: [
      "port",
      "service",
      "name",
      "timeout",
      "retries",
      "count",
      "interval",
      "keepalive",
      "password",
    ],
    boolean: ["help"],
    alias: { p: "port", s: "service", n: "name", h: "help" },
    default: {
      port: String(DEFAULT_PORT),
      service: "chat",
      timeout: "1000",
      retries: "3",
      interval: "1000",
      keepalive: "20",
    },
  });
  const service = parseChoice("service", flags.service, UDP_SERVICES);
  const [host, question] = hostAndQuestion(flags._, service);
  const name = flags.name === undefined ? undefined : String(flags.name);
  const invalid = name === undefined ? undefined : nameProblem(name);
  if (invalid) throw new UsageError(`Invalid --name: ${invalid}`);
  return {
    host,
    port: parsePort(flags.port),
    service,
    name,
    question,
    timeoutMs: wholeFlag(flags, "timeout", 1, 600_000),
    retries: wholeFlag(flags, "retries", 0, 100),
    count: flags.count === undefined
      ? undefined
      : wholeFlag(flags, "count", 1, 1e6),
    intervalMs: wholeFlag(flags, "interval", 0, 3_600_000),
    keepaliveMs: parseNumberFlag("keepalive", flags.keepalive, {
      min: 0.1,
      max: 86_400,
    }) * 1000,
    password: passwordFrom(flags.password),
    help: flags.help === true,
  };
}

/** Splits the positional arguments into the host and a month question. */
function hostAndQuestion(
  positional: string[],
  service: string,
): [string, string | undefined] {
  const max = service === "month" ? 2 : 1;
  if (positional.length > max) {
    throw new UsageError(`Unexpected argument "${positional[max]}"`);
  }
  if (service !== "month") return [positional[0] ?? "localhost", undefined];
  // One argument: a number is the question, anything else the host.
  const [host, question] = positional.length === 2
    ? positional
    : /^[+-]?\d+(\.\d+)?$/.test(positional[0] ?? "")
    ? ["localhost", positional[0]]
    : [positional[0] ?? "localhost", undefined];
  if (question !== undefined && !/^-?\d+$/.test(question)) {
    throw new UsageError(`Invalid month "${question}": give a whole number`);
  }
  return [host, question];
}

// ---------------------------------------------------------------------------
// The socket: requests out, replies in
// ---------------------------------------------------------------------------

/** A reply that is expected, and what to do when it comes. */
interface Waiter {
  matches: (reply: string) => boolean;
  resolve: (reply: string | undefined) => void;
}

/**
 * A UDP socket that talks to one server. Each reply goes to the request
 * waiting for it, if it matches; any other reply (late, duplicated, or
 * unasked, like chat messages) goes to `onOther`.
 */
export class UdpLink {
  /** Gets the replies that no request waits for. */
  onOther: (reply: string) => void = () => {};
  readonly server: Deno.NetAddr;
  readonly #socket: Deno.DatagramConn;
  #waiter?: Waiter;
  #closed = false;
  #decoder = new TextDecoder();

  constructor(host: string, port: number) {
    this.server = { transport: "udp", hostname: host, port };
    // Create a socket and bind it to any free port: the server replies there.
    this.#socket = Deno.listenDatagram({
      hostname: host.includes(":") ? "::" : "0.0.0.0",
      port: 0,
      transport: "udp",
    });
    this.#receiveLoop();
  }

  /** `HOST:PORT` of the server. */
  get target(): string {
    return `${this.server.hostname}:${this.server.port}`;
  }

  /** Send: one line as one datagram. It may never arrive. */
  async send(line: string): Promise<void> {
    await this.#socket.send(encodeLine(line), this.server);
  }

  /**
   * Waits for a reply that `matches`.
   * @returns the reply, or undefined when none came in time
   */
  waitFor(
    matches: (reply: string) => boolean,
    timeoutMs: number,
  ): Promise<string | undefined> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => finish(undefined), timeoutMs);
      const finish = (reply: string | undefined) => {
        clearTimeout(timer);
        if (this.#waiter === waiter) this.#waiter = undefined;
        resolve(reply);
      };
      const waiter = { matches, resolve: finish };
      this.#waiter = waiter;
    });
  }

  /**
   * Sends a request and waits for its own reply; sends it again when none
   * comes in time (UDP may lose the request or the reply).
   * @returns the reply, or undefined after the last try
   */
  async ask(
    request: string,
    matches: (reply: string) => boolean,
    { timeoutMs, retries, onRetry }: {
      timeoutMs: number;
      retries: number;
      onRetry?: (attempt: number) => void;
    },
  ): Promise<string | undefined> {
    for (let attempt = 0; attempt <= retries; attempt++) {
      if (attempt > 0) onRetry?.(attempt);
      const reply = this.waitFor(matches, timeoutMs);
      await this.send(request);
      const answer = await reply;
      if (answer !== undefined) return answer;
    }
    return undefined;
  }

  close(): void {
    this.#closed = true;
    try {
      this.#socket.close();
    } catch {
      // Already closed.
    }
  }

  async #receiveLoop(): Promise<void> {
    while (!this.#closed) {
      let datagram: Uint8Array;
      let from: Deno.NetAddr;
      try {
        // Receive: one datagram, and the address it came from.
        const [data, address] = await this.#socket.receive();
        datagram = data;
        from = address as Deno.NetAddr;
      } catch (error) {
        if (this.#closed) return;
        // Windows reports here an ICMP "port unreachable": the server's
        // port is closed. The request's timeout says the rest.
        this.onOther(`! ${networkReason(error)}`);
        continue;
      }
      if (from.port !== this.server.port) continue; // not from the server
      const text = this.#decoder.decode(datagram).replace(/\r?\n$/, "");
      for (const reply of text.split(/\r\n|\r|\n/)) this.#dispatch(reply);
    }
  }

  #dispatch(reply: string): void {
    const waiter = this.#waiter;
    if (waiter?.matches(reply)) waiter.resolve(reply);
    else this.onOther(reply);
  }
}

/** What to print when no reply came after the last try. */
function noReply(link: UdpLink): string {
  return `no reply from ${link.target} (UDP does not guarantee delivery)`;
}

// ---------------------------------------------------------------------------
// The month service
// ---------------------------------------------------------------------------

/**
 * Which reply answers a month question: `3: March` answers "3" (the
 * number is in the reply, so a late answer to another question never
 * passes for this one), `bye` answers "0", and an error answers a number
 * out of range.
 */
export function answersMonthQuestion(
  question: string,
): (reply: string) => boolean {
  if (/^\d+$/.test(question)) {
    const number = Number(question);
    if (number === 0) return (reply) => reply === "bye";
    if (number >= 1 && number <= 12) {
      return (reply) => reply.startsWith(`${number}: `);
    }
  }
  return (reply) => reply.startsWith("! ");
}

async function askMonth(
  link: UdpLink,
  options: UdpClientOptions,
  question: string,
  note: (text: string) => void,
): Promise<string | undefined> {
  return await link.ask(question, answersMonthQuestion(question), {
    timeoutMs: options.timeoutMs,
    retries: options.retries,
    onRetry: (attempt) =>
      note(
        `no reply in ${options.timeoutMs} ms, asking again (${attempt} of ${options.retries})`,
      ),
  });
}

/** One question, one answer: prints `March`, exits 0 (1 without one). */
async function monthOnce(
  link: UdpLink,
  options: UdpClientOptions,
  question: string,
): Promise<number> {
  const note = (text: string) => console.error(paintDim(text));
  const answer = await askMonth(link, options, question, note);
  if (answer === undefined) {
    console.error(noReply(link));
    return 1;
  }
  if (answer.startsWith("! ")) {
    console.error(paintError(cleanText(answer)));
    return 1;
  }
  console.log(cleanText(answer.replace(/^\d+: /, "")));
  return 0;
}

/** The lab's loop: ask for a number, show its month, until 0. */
async function monthLoop(
  link: UdpLink,
  options: UdpClientOptions,
): Promise<number> {
  const terminal = new LineConsole("Enter a month number (0 to quit): ");
  const note = (text: string) => terminal.note(text);
  link.onOther = (reply) => note(`ignored a late reply: "${cleanText(reply)}"`);
  await terminal.readLines(async (line) => {
    const question = line.trim();
    if (!/^-?\d+$/.test(question)) {
      return terminal.print(
        paintError("Please enter a whole number, like 3 (0 to quit)"),
      );
    }
    const answer = await askMonth(link, options, question, note);
    if (answer === undefined) return terminal.print(noReply(link));
    const shown = cleanText(answer);
    terminal.print(answer.startsWith("! ") ? paintError(shown) : shown);
    if (answer === "bye") {
      terminal.restore();
      Deno.exit(0);
    }
  });
  return 0;
}

// ---------------------------------------------------------------------------
// The echo service
// ---------------------------------------------------------------------------

/** Round trips, in ms, and how many were sent. */
export interface EchoStats {
  sent: number;
  roundTrips: number[];
}

/** The lines of ping's summary. */
export function echoSummary(target: string, stats: EchoStats): string[] {
  const received = stats.roundTrips.length;
  const loss = stats.sent === 0
    ? 0
    : Math.round((1 - received / stats.sent) * 100);
  const lines = [
    `--- ${target} echo statistics ---`,
    `${stats.sent} sent, ${received} received, ${loss}% loss`,
  ];
  if (received > 0) {
    const min = Math.min(...stats.roundTrips);
    const max = Math.max(...stats.roundTrips);
    const avg = stats.roundTrips.reduce((a, b) => a + b, 0) / received;
    lines.push(
      `round trip min/avg/max = ${min.toFixed(3)}/${avg.toFixed(3)}/${
        max.toFixed(3)
      } ms`,
    );
  }
  return lines;
}

/** Like ping: numbered datagrams, one line per echo, then a summary. */
async function echoPing(
  link: UdpLink,
  options: UdpClientOptions,
  count: number,
): Promise<number> {
  const sentAt = new Map<number, number>();
  const answered = new Set<number>();
  const stats: EchoStats = { sent: 0, roundTrips: [] };
  const finish = () => {
    echoSummary(link.target, stats).forEach((line) => console.log(line));
    Deno.exit(stats.roundTrips.length > 0 ? 0 : 1);
  };
  onStopSignals(finish);
  let allAnswered: () => void = () => {};
  link.onOther = (reply) => {
    const seq = Number(/^echo seq=(\d+)$/.exec(reply)?.[1]);
    const start = sentAt.get(seq);
    if (start === undefined) return;
    const time = performance.now() - start;
    const duplicate = answered.has(seq);
    if (!duplicate) {
      answered.add(seq);
      stats.roundTrips.push(time);
    }
    console.log(
      `reply from ${link.target}: seq=${seq} time=${time.toFixed(3)} ms${
        duplicate ? " (duplicate)" : ""
      }`,
    );
    if (answered.size === count) allAnswered();
  };

  console.log(
    `ECHO ${link.target}: ${count} datagram(s), one every ${options.intervalMs} ms`,
  );
  const done = new Promise<void>((resolve) => allAnswered = resolve);
  for (let seq = 1; seq <= count; seq++) {
    sentAt.set(seq, performance.now());
    stats.sent++;
    await link.send(`echo seq=${seq}`).catch(() => {});
    if (seq < count) await sleep(options.intervalMs);
  }
  // Wait for the last replies, at most one timeout.
  await Promise.race([done, sleep(options.timeoutMs)]);
  finish();
  return 0;
}

/** Sends each line typed or piped, and shows its echo and round trip. */
async function echoLines(
  link: UdpLink,
  options: UdpClientOptions,
): Promise<number> {
  const terminal = new LineConsole();
  link.onOther = (reply) =>
    terminal.note(`ignored a late reply: "${cleanText(reply)}"`);
  await terminal.readLines(async (line) => {
    const start = performance.now();
    const echo = await link.ask(line, (reply) => reply === line, {
      timeoutMs: options.timeoutMs,
      retries: options.retries,
      onRetry: (attempt) =>
        terminal.note(`no echo yet, sending again (${attempt})`),
    });
    if (echo === undefined) return terminal.print(noReply(link));
    const time = (performance.now() - start).toFixed(3);
    terminal.print(`${cleanText(echo)} ${paintDim(`(${time} ms)`)}`);
  });
  return 0;
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// ---------------------------------------------------------------------------
// The chat
// ---------------------------------------------------------------------------

/** The chat relay's answer to a join without the password it needs. */
const JOIN_FIRST = "! this chat needs a password: /join NAME PASSWORD";

/** Joins, then sends what you type while printing what arrives. */
async function chat(link: UdpLink, options: UdpClientOptions) {
  const name = options.name ??
    (Deno.stdin.isTerminal() ? askName() : undefined);
  const terminal = new LineConsole();
  let keepalivesUnanswered = 0;
  link.onOther = (reply) => {
    // The answers to keepalives are not news: do not show them.
    if (reply === "* pong" && keepalivesUnanswered > 0) {
      keepalivesUnanswered--;
      return;
    }
    terminal.print(paintChatLine(cleanText(reply)));
    if (reply === "* server shutting down") {
      end(1, `The server "${link.target}" shut down`);
    }
  };
  const end = (code: number, error?: string) => {
    terminal.restore();
    if (error) console.error(paintError(error));
    link.close();
    Deno.exit(code);
  };
  const leave = async () => {
    const bye = await link.ask("/leave", (reply) => reply === "* bye", {
      timeoutMs: options.timeoutMs,
      retries: options.retries,
    }).catch(() => undefined);
    if (bye) terminal.print(paintChatLine(bye));
    end(0);
  };

  // Join with a name, or check that the server answers: a first message
  // without a name joins as HOST:PORT.
  let password = options.password;
  const join = () =>
    link.ask(
      !name
        ? "/ping"
        : password
        ? `/join ${name} ${password}`
        : `/join ${name}`,
      (reply) => /^\* (welcome|pong$)|^! /.test(reply),
      { timeoutMs: options.timeoutMs, retries: options.retries },
    );
  let joined = await join();
  if (joined === JOIN_FIRST && name && !password) {
    password = askSecret("Password:");
    if (password) joined = await join();
  }
  if (joined === undefined) return end(1, noReply(link));
  if (joined !== "* pong") terminal.print(paintChatLine(cleanText(joined)));
  if (joined === JOIN_FIRST) {
    return end(
      1,
      `The chat needs a password: give it with --password or ${PASSWORD_VARIABLE}, and a --name`,
    );
  }
  if (joined.startsWith("! ")) return end(1);

  setInterval(() => {
    keepalivesUnanswered++;
    link.send("/ping").catch(() => {});
  }, options.keepaliveMs);
  onStopSignals(leave);
  await terminal.readLines(async (line) => {
    if (line.trim().toLowerCase() === "/leave") return leave();
    await link.send(line).catch((error) =>
      terminal.print(paintError(`Cannot send: ${networkReason(error)}`))
    );
  });
  await leave();
}

async function main(): Promise<void> {
  const options = argsOrExit(parseUdpClientArgs, USAGE);
  requireUdp();
  chooseColors();
  let link;
  try {
    link = new UdpLink(options.host, options.port);
  } catch (error) {
    console.error(`Cannot open a UDP socket: ${networkReason(error)}`);
    Deno.exit(1);
  }
  let code = 0;
  try {
    if (options.service === "chat") await chat(link, options);
    else if (options.service === "echo") {
      code = options.count === undefined
        ? await echoLines(link, options)
        : await echoPing(link, options, options.count);
    } else {
      code = options.question === undefined
        ? await monthLoop(link, options)
        : await monthOnce(link, options, options.question);
    }
  } catch (error) {
    console.error(
      `Cannot reach "${link.target}" (UDP): ${networkReason(error)}`,
    );
    code = 1;
  }
  link.close();
  Deno.exit(code);
}

if (import.meta.main) main();
