#!/usr/bin/env -S deno run --allow-net --allow-sys=networkInterfaces --unstable-net
/**
 * socklab UDP server: a group chat relay, the "month of the year" service,
 * or an echo service, on one UDP socket. UDP has no connections: each
 * datagram arrives alone, with the address it came from, and may be lost
 * or reordered. `--drop` and `--delay` make that visible on demand.
 *
 * ```sh
 * deno run -A udp_server.ts [--port 9999] [--service chat|month|echo] [--drop 0.2] [--delay 500]
 * ```
 *
 * @module
 */

import {
  argsOrExit,
  cleanText,
  clockTime,
  connectionHints,
  DEFAULT_PORT,
  encodeLine,
  errorLine,
  messageLine,
  nameKey,
  nameProblem,
  networkReason,
  noticeLine,
  onStopSignals,
  parseChatInput,
  parseChoice,
  parseFlags,
  parseNumberFlag,
  parsePort,
  passwordFrom,
  passwordMatches,
  requireUdp,
  splitFirstWord,
  Stoppable,
  TokenBucket,
  UDP_SERVICES,
  type UdpService,
  wholeFlag,
} from "./shared.ts";

/** The names of the months, for the month service. */
export const MONTHS = [
  "January",
  "February",
  "March",
  "April",
  "May",
  "June",
  "July",
  "August",
  "September",
  "October",
  "November",
  "December",
];

/** The month service's answer to anything but a number from 0 to 12. */
export const MONTH_ERROR = errorLine(
  "send a whole number from 1 to 12 (0 ends)",
);

/** The month service's answer to a first datagram that is not a number. */
export const MONTH_INTRO = noticeLine(
  "month service: send a month number from 1 to 12 and get its name back " +
    '(3 gets "3: March"); 0 ends',
);

/** How many peers the month service remembers having seen. */
const MAX_REMEMBERED_PEERS = 10_000;

/** A peer's rate limit, and when it was last warned. */
interface PeerRate {
  bucket: TokenBucket;
  warnedAt: number;
}

const USAGE = `socklab UDP server: chat relay, month service, echo

USAGE:
  deno run -A udp_server.ts [OPTIONS]
  (outside this folder, add --unstable-net: deno run -A --unstable-net udp_server.ts)

OPTIONS:
  -p, --port <PORT>            Port to listen on (default ${DEFAULT_PORT}; 0 picks a free one)
      --host <HOST>            Address to listen on (default 0.0.0.0: every interface)
  -s, --service <SERVICE>      chat, month or echo (default chat)
      --peer-timeout <SECONDS> Chat: drop peers silent this long (default 60)
      --max-datagram <BYTES>   Longest datagram accepted (default 1200)
      --drop <P>               Drop each incoming datagram with probability P (0 to 1)
      --delay <MS>             Delay each reply by up to MS milliseconds, at random
      --seed <N>               Make --drop and --delay repeatable
      --password <SECRET>      Chat: peers join with "/join NAME SECRET"; or set
                               SOCKLAB_PASSWORD (kept out of the process list)
      --max-peers <N>          Chat: peers at once (default 1000)
      --rate-limit <N>         Datagrams a second per peer; 0 is no limit (default 20)
      --burst <N>              Datagrams at once above the rate (default 40)
  -h, --help                   Show this help

SERVICES:
  chat    "/join NAME", then each datagram goes to every other peer as <NAME> text;
          /who, /nick NAME, /ping, /leave, /help. A peer that sends text without
          joining is joined as HOST:PORT, so "nc -u HOST PORT" works.
  month   "3" gets "3: March"; "0" gets "bye"; anything else gets an error.
  echo    Every datagram is sent back unchanged.`;

/** How a UDP server runs. */
export interface UdpServerOptions {
  /** Address to listen on. @default "0.0.0.0" */
  host: string;
  /** Port to listen on; 0 picks a free one. @default 9999 */
  port: number;
  /** The service. @default "chat" */
  service: UdpService;
  /** Chat peers silent this long are dropped. @default 60000 */
  peerTimeoutMs: number;
  /** The longest datagram accepted, in bytes. @default 1200 */
  maxDatagram: number;
  /** The probability that an incoming datagram is dropped. @default 0 */
  dropRate: number;
  /** Each reply is delayed by up to this many milliseconds. @default 0 */
  maxDelayMs: number;
  /** Seeds the random choices of drop and delay, to repeat them. */
  seed?: number;
  /** Chat: the password peers must give with /join NAME PASSWORD. */
  password?: string;
  /** Chat: peers at once. @default 1000 */
  maxPeers: number;
  /** Datagrams a second each peer may send; 0 is no limit. @default 20 */
  rateLimit: number;
  /** Datagrams a peer may send at once above the rate. @default 40 */
  burst: number;
  /** Prints one log line. */
  print: (line: string) => void;
}

/** A chat peer: a name at an address. */
interface Peer {
  name: string;
  address: Deno.NetAddr;
  lastHeard: number;
}

/** A running UDP server. */
export class UdpServer extends Stoppable {
  readonly options: UdpServerOptions;
  readonly socket: Deno.DatagramConn;
  /** Settles when the receive loop has ended. */
  readonly finished: Promise<void>;
  #random: () => number;
  #peers = new Map<string, Peer>();
  #seenPeers = new Set<string>();
  #rates = new Map<string, PeerRate>();
  #delayedReplies = new Set<ReturnType<typeof setTimeout>>();
  #sweeper?: ReturnType<typeof setInterval>;
  #decoder = new TextDecoder("utf-8", { fatal: true });

  private constructor(options: UdpServerOptions, socket: Deno.DatagramConn) {
    super();
    this.options = options;
    this.socket = socket;
    this.#random = options.seed === undefined
      ? Math.random
      : seededRandom(options.seed);
    if (options.service === "chat") {
      const every = Math.min(1000, Math.max(50, options.peerTimeoutMs / 4));
      this.#sweeper = setInterval(() => this.#dropSilentPeers(), every);
    }
    this.finished = this.#receiveLoop();
  }

  /** Creates the socket and binds it: UDP has no listen and no accept. */
  static start(options: Partial<UdpServerOptions> = {}): UdpServer {
    const full: UdpServerOptions = {
      host: "0.0.0.0",
      port: DEFAULT_PORT,
      service: "chat",
      peerTimeoutMs: 60_000,
      maxDatagram: 1200,
      dropRate: 0,
      maxDelayMs: 0,
      maxPeers: 1000,
      rateLimit: 20,
      burst: 40,
      print: (line) => console.log(line),
      ...options,
    };
    // Create and bind: from now on, datagrams to this port are queued.
    const socket = Deno.listenDatagram({
      hostname: full.host,
      port: full.port,
      transport: "udp",
    });
    return new UdpServer(full, socket);
  }

  /** The address actually bound (port 0 becomes a real port). */
  get addr(): Deno.NetAddr {
    return this.socket.addr as Deno.NetAddr;
  }

  /** The names of the chat's peers. */
  get names(): string[] {
    return [...this.#peers.values()].map((peer) => peer.name);
  }

  // -------------------------------------------------------------------------
  // Receive: one datagram at a time, from anyone
  // -------------------------------------------------------------------------

  async #receiveLoop(): Promise<void> {
    while (!this.stopping) {
      // One byte more than the limit, to tell a datagram that is too long.
      const buffer = new Uint8Array(this.options.maxDatagram + 1);
      let datagram: Uint8Array;
      let from: Deno.NetAddr;
      try {
        // Receive: one whole datagram, and the address it came from.
        const [data, address] = await this.socket.receive(buffer);
        datagram = data;
        from = address as Deno.NetAddr;
      } catch (error) {
        if (this.stopping) return;
        // Windows reports here that an earlier reply could not be
        // delivered (ICMP port unreachable): that peer is gone, go on.
        this.#log(`receive failed: ${networkReason(error)}`);
        continue;
      }
      this.#handleDatagram(datagram, from);
    }
  }

  #handleDatagram(datagram: Uint8Array, from: Deno.NetAddr): void {
    const peer = addressKey(from);
    if (this.options.dropRate > 0 && this.#random() < this.options.dropRate) {
      this.#log(`dropped a datagram from ${peer} (--drop)`);
      return;
    }
    if (!this.#withinRateLimit(from)) return;
    if (datagram.length > this.options.maxDatagram) {
      this.#log(`datagram from ${peer} too long`);
      return this.#reply(
        from,
        errorLine(
          `datagram too long: ${this.options.maxDatagram} bytes at most`,
        ),
      );
    }
    let text;
    try {
      text = this.#decoder.decode(datagram);
    } catch {
      this.#log(`datagram from ${peer} is not UTF-8 text`);
      return this.#reply(from, errorLine("datagram is not valid UTF-8 text"));
    }
    switch (this.options.service) {
      case "echo":
        return this.#reply(from, datagram.slice());
      case "month":
        return this.#answerMonth(from, text);
      case "chat":
        return this.#chat(from, text);
    }
  }

  /**
   * Applies the per-peer rate limit: false when the datagram is dropped.
   * A peer over the limit is told so at most once a second.
   */
  #withinRateLimit(from: Deno.NetAddr): boolean {
    const { rateLimit, burst } = this.options;
    if (rateLimit <= 0) return true;
    const key = addressKey(from);
    let rate = this.#rates.get(key);
    if (!rate) {
      // Remember a bounded number of peers: forget the oldest.
      if (this.#rates.size >= MAX_REMEMBERED_PEERS) {
        this.#rates.delete(this.#rates.keys().next().value!);
      }
      rate = { bucket: new TokenBucket(rateLimit, burst), warnedAt: -Infinity };
      this.#rates.set(key, rate);
    }
    const now = performance.now();
    if (rate.bucket.take(now)) return true;
    if (now - rate.warnedAt > 1000) {
      rate.warnedAt = now;
      this.#log(`${key} is over the rate limit: datagrams dropped`);
      this.#reply(
        from,
        errorLine(
          `slow down: at most ${rateLimit} datagrams a second; the rest are dropped`,
        ),
      );
    }
    return false;
  }

  // -------------------------------------------------------------------------
  // The month service
  // -------------------------------------------------------------------------

  #answerMonth(from: Deno.NetAddr, text: string): void {
    const request = text.trim();
    const firstTime = this.#firstTimeFrom(from);
    const answer = monthAnswer(request, firstTime);
    this.#log(
      `${addressKey(from)} asked "${shorten(cleanText(request))}": ${answer}`,
    );
    this.#reply(from, answer);
  }

  /** Remembers peers (a bounded number) to greet the new ones. */
  #firstTimeFrom(from: Deno.NetAddr): boolean {
    const key = addressKey(from);
    if (this.#seenPeers.has(key)) return false;
    if (this.#seenPeers.size >= MAX_REMEMBERED_PEERS) {
      const oldest = this.#seenPeers.values().next().value!;
      this.#seenPeers.delete(oldest);
    }
    this.#seenPeers.add(key);
    return true;
  }

  // -------------------------------------------------------------------------
  // The chat relay
  // -------------------------------------------------------------------------

  #chat(from: Deno.NetAddr, text: string): void {
    const peer = this.#peers.get(addressKey(from));
    if (peer) peer.lastHeard = Date.now();
    // A datagram usually holds one line (nc -u adds a "\n"); it may hold more.
    for (const line of text.split(/\r\n|\r|\n/)) {
      this.#chatLine(from, line);
    }
  }

  #chatLine(from: Deno.NetAddr, line: string): void {
    const input = parseChatInput(line);
    if (input.kind === "empty") return;
    const peer = this.#peers.get(addressKey(from));
    if (input.kind === "message") {
      if (peer) return this.#relay(peer, input.text);
      if (this.options.password) return this.#reply(from, JOIN_FIRST);
      const joined = this.#join(from, addressKey(from));
      if (joined) this.#relay(joined, input.text);
      return;
    }
    const { command, rest } = input;
    switch (command) {
      case "/join":
        if (peer) {
          return this.#reply(
            from,
            errorLine(
              `you already joined as ${peer.name} (/nick NAME changes it)`,
            ),
          );
        }
        return this.#joinAs(from, rest);
      case "/nick":
        if (peer) return this.#rename(peer, rest);
        return this.options.password
          ? this.#reply(from, JOIN_FIRST)
          : this.#joinAs(from, rest);
      case "/leave":
        if (!peer) return this.#reply(from, errorLine("you have not joined"));
        this.#reply(from, noticeLine("bye"));
        return this.#leave(peer, "leave");
      case "/who":
        return this.#reply(from, this.#whoLine());
      case "/ping":
        return this.#reply(from, noticeLine("pong"));
      case "/help":
        return UDP_HELP_LINES.forEach((help) => this.#reply(from, help));
      default:
        this.#reply(
          from,
          errorLine(`unknown command "${command}": /help lists the commands`),
        );
    }
  }

  /** `/join NAME`, or `/join NAME PASSWORD` when the chat has one. */
  #joinAs(from: Deno.NetAddr, rest: string): void {
    const [name, password] = this.options.password
      ? splitFirstWord(rest)
      : [rest, ""];
    const problem = this.#nameProblem(name);
    if (problem) return this.#reply(from, errorLine(problem));
    if (this.options.password) {
      if (password === "") return this.#reply(from, JOIN_FIRST);
      // The password itself is never logged.
      if (!passwordMatches(password, this.options.password)) {
        this.#log(`${addressKey(from)} sent a wrong password`);
        return this.#reply(from, errorLine("wrong password"));
      }
    }
    this.#join(from, name);
  }

  /** Adds a peer to the chat, unless it is full. */
  #join(from: Deno.NetAddr, name: string): Peer | undefined {
    if (this.#peers.size >= this.options.maxPeers) {
      this.#log(`refused ${addressKey(from)}: chat full`);
      this.#reply(from, errorLine("chat full"));
      return undefined;
    }
    const peer = { name, address: from, lastHeard: Date.now() };
    const others = this.names;
    this.#peers.set(addressKey(from), peer);
    this.#log(`${name} joined from ${addressKey(from)}`);
    const chosen = name !== addressKey(from);
    this.#reply(
      from,
      noticeLine(
        `welcome to socklab UDP chat, ${name}: each datagram you send goes to everyone; /help lists the commands`,
      ),
    );
    this.#reply(from, noticeLine(`online: ${[...others, name].join(", ")}`));
    if (!chosen) {
      this.#reply(
        from,
        noticeLine(`you are ${name}: pick a name with /nick NAME`),
      );
    }
    this.#broadcast(noticeLine(`${name} joined`), peer);
    return peer;
  }

  #nameProblem(name: string, self?: Peer): string | undefined {
    if (name === "") return "usage: /join NAME";
    const invalid = nameProblem(name);
    if (invalid) return invalid;
    const holder = [...this.#peers.values()].find((peer) =>
      nameKey(peer.name) === nameKey(name)
    );
    if (holder && holder !== self) return `name "${name}" is taken`;
    return undefined;
  }

  #rename(peer: Peer, newName: string): void {
    const problem = this.#nameProblem(newName, peer);
    if (problem) return this.#reply(peer.address, errorLine(problem));
    const oldName = peer.name;
    peer.name = newName;
    this.#log(`${oldName} is now known as ${newName}`);
    this.#broadcast(noticeLine(`${oldName} is now known as ${newName}`));
  }

  #relay(peer: Peer, text: string): void {
    const line = messageLine(peer.name, text);
    this.options.print(line);
    this.#broadcast(line, peer);
  }

  #whoLine(): string {
    const names = this.names;
    return noticeLine(
      `online (${names.length}): ${names.join(", ") || "no one"}`,
    );
  }

  #leave(peer: Peer, reason: "leave" | "timed out"): void {
    this.#peers.delete(addressKey(peer.address));
    this.#log(`${peer.name} left (${reason})`);
    const why = reason === "leave" ? "" : ` (${reason})`;
    this.#broadcast(noticeLine(`${peer.name} left${why}`));
  }

  #dropSilentPeers(): void {
    const oldest = Date.now() - this.options.peerTimeoutMs;
    for (const peer of [...this.#peers.values()]) {
      if (peer.lastHeard < oldest) this.#leave(peer, "timed out");
    }
  }

  // -------------------------------------------------------------------------
  // Send: one datagram per reply
  // -------------------------------------------------------------------------

  #broadcast(line: string, except?: Peer): void {
    const datagram = encodeLine(line);
    for (const peer of this.#peers.values()) {
      if (peer !== except) this.#reply(peer.address, datagram);
    }
  }

  /** Sends a datagram (a line, or bytes), after the --delay if any. */
  #reply(to: Deno.NetAddr, message: string | Uint8Array): void {
    const datagram = typeof message === "string"
      ? encodeLine(message)
      : message;
    if (this.options.maxDelayMs <= 0) {
      this.#send(to, datagram);
      return;
    }
    const delay = Math.floor(this.#random() * this.options.maxDelayMs);
    this.#log(`delaying a reply to ${addressKey(to)} by ${delay} ms (--delay)`);
    const timer = setTimeout(() => {
      this.#delayedReplies.delete(timer);
      this.#send(to, datagram);
    }, delay);
    this.#delayedReplies.add(timer);
  }

  async #send(to: Deno.NetAddr, datagram: Uint8Array): Promise<void> {
    try {
      // Send: one datagram, to one address. It may never arrive.
      await this.socket.send(datagram, to);
    } catch (error) {
      // A peer that has gone (or a network that is down) costs one log
      // line, never the receive loop.
      if (!this.stopping) {
        this.#log(`cannot send to ${addressKey(to)}: ${networkReason(error)}`);
      }
    }
  }

  // -------------------------------------------------------------------------
  // Close
  // -------------------------------------------------------------------------

  /** Tells the chat's peers, then closes the socket. */
  protected override async shutDown(): Promise<void> {
    this.#log("shutting down");
    clearInterval(this.#sweeper);
    this.#delayedReplies.forEach((timer) => clearTimeout(timer));
    const goodbye = encodeLine(noticeLine("server shutting down"));
    await Promise.all(
      [...this.#peers.values()].map((peer) =>
        this.#send(peer.address, goodbye)
      ),
    );
    // Close: release the port; the pending receive ends with an error.
    this.socket.close();
    await this.finished;
    this.#log("stopped");
  }

  #log(text: string): void {
    this.options.print(`${clockTime()} ${text}`);
  }
}

const JOIN_FIRST = errorLine(
  "this chat needs a password: /join NAME PASSWORD",
);

const UDP_HELP_LINES = [
  "commands:",
  "  /join NAME    join the chat as NAME",
  "  /nick NAME    change your name",
  "  /who          list who is in the chat",
  "  /ping         check that the server hears you (answer: * pong)",
  "  /leave        leave the chat",
  '  //TEXT        send a message that starts with "/"',
].map(noticeLine);

/**
 * The month service's answer to one request: `N: Month` for 1 to 12,
 * `bye` for 0, the intro for a peer's first request when it is words, not
 * a number (a greeting), and an error for anything else (13, -1, 2.5,
 * abc, an empty datagram, a 400-digit number).
 */
export function monthAnswer(request: string, firstTime: boolean): string {
  if (/^\d+$/.test(request)) {
    // A 400-digit number becomes Infinity here: out of range, not a crash.
    const number = Number(request);
    if (number === 0) return "bye";
    if (number >= 1 && number <= 12) return `${number}: ${MONTHS[number - 1]}`;
  }
  const words = request !== "" && !NUMBER_LIKE.test(request);
  return firstTime && words ? MONTH_INTRO : MONTH_ERROR;
}

// Text that reads as a number, whole or not: "-1", "2.5", "1e3".
const NUMBER_LIKE = /^[+-]?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?$/i;

/** `HOST:PORT` of an address. */
function addressKey(address: Deno.NetAddr): string {
  return `${address.hostname}:${address.port}`;
}

function shorten(text: string): string {
  return text.length > 40 ? text.slice(0, 40) + "..." : text;
}

/**
 * A small seeded random number generator (mulberry32), so `--seed` makes
 * drops and delays the same in every run.
 */
export function seededRandom(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let mixed = Math.imul(state ^ (state >>> 15), state | 1);
    mixed ^= mixed + Math.imul(mixed ^ (mixed >>> 7), mixed | 61);
    return ((mixed ^ (mixed >>> 14)) >>> 0) / 4294967296;
  };
}

// ---------------------------------------------------------------------------
// The program
// ---------------------------------------------------------------------------

/**
 * Reads the UDP server's flags.
 * @throws {UsageError} for a bad flag
 */
export function parseUdpServerArgs(
  args: string[],
): Partial<UdpServerOptions> & { help: boolean } {
  const flags = parseFlags(args, {
    positionals: 0,
    string: [
      "port",
      "host",
      "service",
      "peer-timeout",
      "max-datagram",
      "drop",
      "delay",
      "seed",
      "password",
      "max-peers",
      "rate-limit",
      "burst",
    ],
    boolean: ["help"],
    alias: { p: "port", s: "service", h: "help" },
    default: {
      port: String(DEFAULT_PORT),
      host: "0.0.0.0",
      service: "chat",
      "peer-timeout": "60",
      "max-datagram": "1200",
      drop: "0",
      delay: "0",
      "max-peers": "1000",
      "rate-limit": "20",
      burst: "40",
    },
  });
  const seconds = parseNumberFlag("peer-timeout", flags["peer-timeout"], {
    min: 0.1,
    max: 86_400,
  });
  return {
    help: flags.help === true,
    port: parsePort(flags.port),
    host: String(flags.host),
    service: parseChoice("service", flags.service, UDP_SERVICES),
    peerTimeoutMs: Math.round(seconds * 1000),
    maxDatagram: wholeFlag(flags, "max-datagram", 1, 65_507),
    dropRate: parseNumberFlag("drop", flags.drop, { min: 0, max: 1 }),
    maxDelayMs: wholeFlag(flags, "delay", 0, 60_000),
    password: passwordFrom(flags.password),
    maxPeers: wholeFlag(flags, "max-peers", 1, 1_000_000),
    rateLimit: wholeFlag(flags, "rate-limit", 0, 1_000_000),
    burst: wholeFlag(flags, "burst", 1, 1_000_000),
    seed: flags.seed === undefined
      ? undefined
      : wholeFlag(flags, "seed", 0, 2 ** 32 - 1),
  };
}

/** The banner: the service, where it listens, and how to reach it. */
export function bannerLines(server: UdpServer): string[] {
  const { hostname, port } = server.addr;
  const { service, dropRate, maxDelayMs, seed } = server.options;
  const flags = `${port === DEFAULT_PORT ? "" : ` --port ${port}`}${
    service === "chat" ? "" : ` --service ${service}`
  }`;
  const lines = [
    `socklab UDP ${service} service listening on ${hostname}:${port}`,
    ...connectionHints(
      hostname,
      (address) =>
        `deno run -A udp_client.ts ${address}${flags}    or    nc -u ${address} ${port}`,
    ),
  ];
  if (dropRate > 0 || maxDelayMs > 0) {
    lines.push(
      `Simulating an unreliable network: dropping ${
        Math.round(dropRate * 100)
      }% of datagrams, delaying replies by up to ${maxDelayMs} ms` +
        (seed === undefined ? "" : ` (seed ${seed})`),
    );
  }
  lines.push("Ctrl-C stops the server.");
  return lines;
}

async function main(): Promise<void> {
  const options = argsOrExit(parseUdpServerArgs, USAGE);
  requireUdp();
  let server;
  try {
    server = UdpServer.start(options);
  } catch (error) {
    console.error(
      `Cannot listen on "${options.host}:${options.port}" (UDP): ${
        networkReason(error)
      }`,
    );
    Deno.exit(1);
  }
  // Ready for Ctrl-C before the banner tells anyone the server is up.
  onStopSignals(() => server.stop());
  bannerLines(server).forEach((line) => console.log(line));
  await server.finished;
  await server.stop();
  Deno.exit(0);
}

if (import.meta.main) main();
