#!/usr/bin/env -S deno run --allow-net --allow-sys=networkInterfaces --allow-env=SOCKLAB_PASSWORD
/**
 * socklab UDP server: a chat relay, the month service or echo. The lab's
 * steps, in this file's order: create a UDP socket and bind it (no listen,
 * no accept), receive from, send to, close. `--trace` prints each step;
 * `--drop` and `--delay` show what UDP does not guarantee.
 *
 * ```sh
 * deno run -A udp_server.ts [--port 9999] [--service chat|month|echo] [--trace]
 * deno run -A udp_server.ts --service month --drop 0.3 --delay 500 --seed 1
 * nc -u 127.0.0.1 9999
 * ```
 *
 * @module
 */

import {
  addressText,
  argsOrExit,
  ChatRoom,
  cleanText,
  connectionHints,
  DEFAULT_PORT,
  encodeLine,
  errorLine,
  type FlagRow,
  LineConsole,
  logLine,
  networkReason,
  noticeLine,
  onStopSignals,
  parseChatInput,
  parseFlags,
  passwordFrom,
  passwordMatches,
  RateLimit,
  requireUdp,
  type RoomOutput,
  SAYS,
  splitFirstWord,
  Stoppable,
  sweepIdle,
  type Trace,
} from "./shared.ts";

const SERVICES = ["chat", "month", "echo"] as const;
const A_MESSAGE = { command: "", rest: "" }; // a chat line that is no command

/** How a UDP server runs. Its defaults are the flag table's (FLAGS). */
export interface UdpServerOptions {
  host: string; // the address to listen on; "0.0.0.0" is every interface
  port: number; // 0 picks a free one
  service: typeof SERVICES[number];
  peerTimeoutMs: number; // chat peers silent this long are dropped
  maxDatagram: number; // the longest datagram accepted, in bytes
  dropRate: number; // --drop: the probability an incoming datagram is lost
  maxDelayMs: number; // --delay: each reply waits up to this long, at random
  seed?: number; // makes drops and delays the same in every run
  password?: string; // chat: peers join with /join NAME PASSWORD
  maxPeers: number; // chat: peers at once
  rateLimit: number; // chat lines (else datagrams) a second per address; 0: none
  burst: number; // lines (datagrams) at once above the rate
  trace: boolean; // log each socket step: bind, recvfrom, sendto, close
  print: (line: string) => void; // prints one log line
}

// A chat peer: a name at an address, and when it was last heard.
type Peer = { name: string; address: Deno.NetAddr; lastHeard: number };
/** An address that sent a datagram: its rate limit, if it asked a month. */
interface Sender {
  address: Deno.NetAddr;
  key: string; // HOST:PORT
  limit?: RateLimit;
  asked: boolean;
}

/** A running UDP server. */
export class UdpServer extends Stoppable {
  static readonly #utf8 = new TextDecoder("utf-8", { fatal: true });
  readonly finished: Promise<void>; // settles when receiving has ended
  readonly #trace: Trace;
  readonly #peers = new Map<string, Peer>(); // chat peers, by HOST:PORT
  readonly #room: ChatRoom<Peer>;
  readonly #senders = new Map<string, Sender>();
  readonly #random: () => number;
  readonly #delayed = new Set<ReturnType<typeof setTimeout>>();
  readonly #sweeper?: ReturnType<typeof setInterval>;
  // While a stranger's datagram is handled: what its replies may still use.
  #budget?: { key: string; left: number };

  /** Creates the socket, binds it, and starts receiving. */
  static start(options: Partial<UdpServerOptions> = {}): UdpServer {
    // The defaults are the flag table's, so they are written once.
    const full: UdpServerOptions = {
      ...optionsFrom(parseFlags([], FLAGS)),
      print: (line) => console.log(line),
      ...options,
    };
    // Create a UDP socket and bind it to the port: there is no listen and
    // no accept; datagrams sent to this port now wait for receive().
    const { host: hostname, port } = full;
    const socket = Deno.listenDatagram({ hostname, port, transport: "udp" });
    const server = new UdpServer(full, socket);
    server.#trace?.(`bind ${addressText(socket.addr)}`);
    return server;
  }

  private constructor(
    readonly options: UdpServerOptions,
    readonly socket: Deno.DatagramConn,
  ) {
    super();
    this.#trace = options.trace ? (step) => this.#log(step) : undefined;
    this.#room = new ChatRoom(this.#roomOutput(), {
      mode: "a UDP group chat: each datagram you send goes to everyone",
      moreHelp: [
        `  /join NAME${options.password ? " PASSWORD" : ""}  join the chat`,
        "  /ping            check that the server hears you (* pong)",
      ],
    });
    const { seed } = options;
    this.#random = seed === undefined ? Math.random : seededRandom(seed);
    const peers = () => this.#peers.values();
    const timedOut = (peer: Peer) => this.#drop(peer, "timed out");
    if (options.service === "chat") {
      this.#sweeper = sweepIdle(options.peerTimeoutMs, peers, timedOut);
    }
    this.finished = this.#receiveLoop();
  }

  /** The address actually bound (port 0 becomes a real port). */
  get addr(): Deno.NetAddr {
    return this.socket.addr as Deno.NetAddr;
  }

  async #receiveLoop(): Promise<void> {
    // One byte over the limit tells a datagram that is too long. Reused:
    // what outlives a turn of the loop is copied.
    const buffer = new Uint8Array(this.options.maxDatagram + 1);
    while (!this.stopping) {
      let datagram, from;
      try {
        // Receive: one whole datagram and the address it came from.
        [datagram, from] = await this.socket.receive(buffer);
      } catch (error) {
        if (this.stopping) return;
        // Windows reports here an ICMP "port unreachable": a peer is gone.
        this.#log(`receive failed: ${networkReason(error)}`);
        continue;
      }
      this.#trace?.(`recvfrom ${addressText(from)}: ${datagram.length} bytes`);
      this.#handle(datagram, from as Deno.NetAddr);
      this.#budget = undefined; // a stranger's budget is for one datagram
    }
  }

  /** Checks a datagram, then hands it to the service. */
  #handle(datagram: Uint8Array, from: Deno.NetAddr): void {
    const sender = this.#sender(from), { key } = sender;
    const { service, maxDatagram } = this.options;
    // A chat address that has not joined may be forged: all we send back
    // for its datagram is at most its size, so we never flood a victim.
    const stranger = service === "chat" && !this.#peers.has(key);
    this.#budget = stranger ? { key, left: datagram.length } : undefined;
    if (this.#lost(key) || !this.#withinRateLimit(sender)) return;
    if (datagram.length > maxDatagram) {
      this.#log(`datagram from ${key} too long`);
      const most = `${maxDatagram} bytes at most`;
      return this.#error(from, `${SAYS.datagramTooLong} ${most}`);
    }
    let text;
    try {
      text = UdpServer.#utf8.decode(datagram); // fatal: the peer is told
    } catch {
      this.#log(`datagram from ${key} is not UTF-8 text`);
      return this.#error(from, "datagram is not valid UTF-8 text");
    }
    if (service === "echo") return this.#send(from, datagram.slice());
    if (service === "month") return this.#answerMonth(sender, text);
    // The rate limit counts lines (the datagram paid for the first).
    const lines = text.split(/\r\n?|\n/).filter((line) => /\S/.test(line));
    for (const [i, line] of lines.entries()) {
      if (i > 0 && !this.#withinRateLimit(sender)) return;
      this.#chatLine(sender, line);
    }
  }

  #answerMonth(sender: Sender, text: string): void {
    const request = text.trim();
    const answer = monthAnswer(request, !sender.asked);
    sender.asked = true;
    const asked = cleanText(request).slice(0, 40); // the log stays short
    this.#log(`${sender.key} asked "${asked}": ${answer}`);
    this.#send(sender.address, answer);
  }

  /**
   * One chat line. UDP's own commands, `/join` and `/ping`, are answered
   * here; the room has the rules for the rest. A stranger that sends
   * anything else joins as a guest, so `nc -u` works without a /join.
   */
  #chatLine(sender: Sender, line: string): void {
    const { address: from, key } = sender;
    const input = parseChatInput(line);
    if (input.kind === "empty") return;
    const peer = this.#peers.get(key);
    if (peer) peer.lastHeard = performance.now();
    const { command, rest } = input.kind === "command" ? input : A_MESSAGE;
    if (command === "/ping") return this.#send(from, SAYS.pong);
    // A stranger's /nick NAME joins as NAME, as /join NAME does.
    if (command === "/join" || (command === "/nick" && !peer)) {
      if (!peer) return this.#joinAs(sender, rest);
      const already = `${SAYS.alreadyJoined} ${peer.name}`;
      return this.#error(from, `${already} (/nick NAME changes it)`);
    }
    if (peer) return this.#room.handle(peer, line);
    // Leaving before joining: joining only to leave would tell everyone.
    if (/^\/(quit|leave)$/.test(command)) return this.#send(from, SAYS.bye);
    if (this.options.password) return this.#error(from, SAYS.joinFirst);
    const guest = this.#join(sender);
    if (guest) this.#room.handle(guest, line);
  }

  /** `/join NAME` (and PASSWORD, if the chat has one); `/join` for a guest. */
  #joinAs(sender: Sender, rest: string): void {
    const { password } = this.options;
    const [name, given] = password ? splitFirstWord(rest) : [rest, ""];
    const problem = name === "" ? undefined : this.#room.nameProblem(name);
    if (problem) return this.#error(sender.address, problem);
    if (password && !this.#passwordAccepted(sender, given)) return;
    this.#join(sender, name || undefined);
  }

  /** Lets a peer into the room, as `name` or a guest, unless it is full. */
  #join({ address, key }: Sender, name?: string): Peer | undefined {
    if (this.#peers.size >= this.options.maxPeers) {
      this.#log(`refused ${key}: chat full`);
      return void this.#error(address, "chat full");
    }
    const peer = { name: "", address, lastHeard: performance.now() };
    this.#peers.set(key, peer);
    this.#room.join(peer, name);
    return peer;
  }

  /** The peer has gone: it left, or it timed out. */
  #drop(peer: Peer, reason: string): void {
    this.#peers.delete(addressText(peer.address));
    this.#room.leave(peer, reason);
  }

  /** Where the room's lines go: one datagram per line, per peer. */
  #roomOutput(): RoomOutput<Peer> {
    return {
      send: (peer, line) => this.#send(peer.address, line),
      broadcast: (line, except) => {
        const datagram = encodeLine(line); // encoded once for everyone
        for (const peer of this.#peers.values()) {
          if (peer !== except) this.#send(peer.address, datagram);
        }
      },
      quit: (peer) => this.#drop(peer, "quit"),
      show: (line) => this.options.print(line),
      log: (text) => this.#log(text),
    };
  }

  #error(to: Deno.NetAddr, text: string): void {
    this.#send(to, errorLine(text));
  }

  /** Sends a line (or bytes) as one datagram, after the --delay if any. */
  #send(to: Deno.NetAddr, data: string | Uint8Array): void {
    const datagram = typeof data === "string" ? encodeLine(data) : data;
    if (!this.#fits(to, datagram)) return;
    const delay = this.#delayFor(to);
    if (delay === 0) return void this.#sendNow(to, datagram);
    const timer = setTimeout(() => {
      this.#delayed.delete(timer);
      this.#sendNow(to, datagram);
    }, delay);
    this.#delayed.add(timer);
  }

  async #sendNow(to: Deno.NetAddr, datagram: Uint8Array): Promise<void> {
    try {
      this.#trace?.(`sendto ${addressText(to)}: ${datagram.length} bytes`);
      // Send: one datagram to one address; it may never arrive.
      await this.socket.send(datagram, to);
    } catch (error) {
      // A peer that has gone costs one log line, never the receive loop.
      if (this.stopping) return;
      this.#log(`cannot send to ${addressText(to)}: ${networkReason(error)}`);
    }
  }

  /** Tells the chat's peers, then closes the socket. */
  protected override async shutDown(): Promise<void> {
    this.#log("shutting down");
    clearInterval(this.#sweeper);
    this.#delayed.forEach((timer) => clearTimeout(timer));
    const goodbye = encodeLine(SAYS.shuttingDown);
    const peers = [...this.#peers.values()];
    await Promise.all(peers.map((p) => this.#sendNow(p.address, goodbye)));
    // Close: release the port; the pending receive ends with an error.
    this.#trace?.("close");
    this.socket.close();
    await this.finished;
    this.#log("stopped");
  }

  #log(text: string): void {
    this.options.print(logLine(text));
  }

  // -------------------------------------------------------------------------
  // Beyond the lab: rate limits, the password, --drop and --delay
  // -------------------------------------------------------------------------

  /** What is known of an address: 10 000 are kept, the oldest forgotten. */
  #sender(from: Deno.NetAddr): Sender {
    const key = addressText(from), senders = this.#senders;
    let sender = senders.get(key);
    if (sender) return sender;
    if (senders.size >= 10_000) senders.delete(senders.keys().next().value!);
    const { rateLimit, burst } = this.options;
    const limit = rateLimit > 0 ? new RateLimit(rateLimit, burst) : undefined;
    sender = { address: from, key, limit, asked: false };
    senders.set(key, sender);
    return sender;
  }

  /** False when the datagram is over the limit and dropped. */
  #withinRateLimit(sender: Sender): boolean {
    const verdict = sender.limit?.check() ?? "pass";
    // UDP has no connection to close: a flood is only dropped, told once.
    if (verdict !== "warn") return verdict === "pass";
    const unit = this.options.service === "chat" ? "lines" : "datagrams";
    this.#log(`${sender.key} is over the rate limit: ${unit} dropped`);
    const most = `at most ${this.options.rateLimit} ${unit} a second`;
    this.#error(sender.address, `slow down: ${most}; the rest are dropped`);
    return false;
  }

  /** Charges a reply to a stranger's budget: false when it is held back. */
  #fits(to: Deno.NetAddr, { length }: Uint8Array): boolean {
    const budget = this.#budget;
    if (!budget || addressText(to) !== budget.key) return true;
    const fits = length <= budget.left;
    if (fits) budget.left -= length;
    else this.#trace?.(`held back ${length} bytes for ${budget.key}`);
    return fits;
  }

  /** Checks a /join's password (never logged): false when refused. */
  #passwordAccepted(sender: Sender, given: string): boolean {
    if (given && passwordMatches(given, this.options.password!)) return true;
    if (given !== "") this.#log(`${sender.key} sent a wrong password`);
    this.#error(sender.address, given ? SAYS.wrongPassword : SAYS.joinFirst);
    return false;
  }

  /** --drop: is this incoming datagram lost, as on a bad network? */
  #lost(key: string): boolean {
    const { dropRate } = this.options;
    if (dropRate <= 0 || this.#random() >= dropRate) return false;
    this.#log(`dropped a datagram from ${key} (--drop)`);
    return true;
  }

  /** --delay: how long to hold a reply, at random (0: send it now). */
  #delayFor(to: Deno.NetAddr): number {
    if (this.options.maxDelayMs <= 0) return 0;
    const delay = Math.floor(this.#random() * this.options.maxDelayMs);
    const where = addressText(to);
    this.#log(`delaying a reply to ${where} by ${delay} ms (--delay)`);
    return delay;
  }
}

// ---------------------------------------------------------------------------
// The month service's rule, without sockets
// ---------------------------------------------------------------------------

/** The names of the months, for the month service. */
export const MONTHS =
  "January February March April May June July August September October November December"
    .split(" ");

/** The month service's answer to anything but a number from 0 to 12. */
export const MONTH_ERROR = errorLine(
  "send a whole number from 1 to 12 (0 ends)",
);

/** The month service's answer to a first datagram that is not a number. */
export const MONTH_INTRO = noticeLine(
  "month service: send a month number from 1 to 12 and get its name back " +
    '(3 gets "3: March"); 0 ends',
);

// Text that reads as a number, whole or not: "-1", "2.5", "1e3".
const NUMBER_LIKE = /^[+-]?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?$/i;

/**
 * The month service's answer: `N: Month` for 1 to 12, `bye` for 0, the
 * intro for a first request that is words (a greeting), else an error.
 */
export function monthAnswer(request: string, firstTime: boolean): string {
  if (/^\d+$/.test(request)) {
    // A 400-digit number becomes Infinity here: out of range, not a crash.
    const number = Number(request);
    if (number === 0) return SAYS.monthBye;
    if (number >= 1 && number <= 12) return `${number}: ${MONTHS[number - 1]}`;
  }
  const words = request !== "" && !NUMBER_LIKE.test(request);
  return firstTime && words ? MONTH_INTRO : MONTH_ERROR;
}

/** A seeded random number generator (mulberry32): `--seed` repeats runs. */
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
// The program: flags, usage, banner, main
// ---------------------------------------------------------------------------

const FLAGS: Record<string, FlagRow> = {
  port: { short: "p", port: true, default: String(DEFAULT_PORT) },
  host: { default: "0.0.0.0" },
  service: { short: "s", choices: SERVICES, default: "chat" },
  "peer-timeout": { range: [0.1, 86_400, "number"], default: "60" },
  "max-datagram": { range: [1, 65_507], default: "1200" },
  drop: { range: [0, 1, "number"], default: "0" },
  delay: { range: [0, 60_000], default: "0" },
  seed: { range: [0, 2 ** 32 - 1] },
  password: {},
  "max-peers": { range: [1, 1_000_000], default: "1000" },
  "rate-limit": { range: [0, 1_000_000], default: "20" },
  burst: { range: [1, 1_000_000], default: "40" },
  trace: { on: true },
};

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
      --rate-limit <N>         Chat lines (month, echo: datagrams) a second per peer;
                               0 is no limit (default 20)
      --burst <N>              Lines (datagrams) at once above the rate (default 40)
      --trace                  Log each socket step: bind, recvfrom, sendto, close
  -h, --help                   Show this help

SERVICES:
  chat    "/join NAME" (/join or any text: guest-N), then each line goes to everyone
  month   "3" gets "3: March"; "0" gets "bye"; anything else gets an error
  echo    Every datagram is sent back unchanged`;

/** Reads the UDP server's flags. @throws {UsageError} for a bad flag */
export function parseUdpServerArgs(
  args: string[],
): Partial<UdpServerOptions> & { help: boolean } {
  const flags = parseFlags(args, FLAGS, 0);
  const password = passwordFrom(flags.password);
  return { ...optionsFrom(flags), password, help: flags.help };
}

/** The server's options that the flags set (all but the password). */
function optionsFrom(
  flags: ReturnType<typeof parseFlags>,
): Omit<UdpServerOptions, "print"> {
  return {
    port: flags.port as number,
    host: flags.host as string,
    service: flags.service as UdpServerOptions["service"],
    peerTimeoutMs: Math.round((flags["peer-timeout"] as number) * 1000),
    maxDatagram: flags["max-datagram"] as number,
    dropRate: flags.drop as number,
    maxDelayMs: flags.delay as number,
    seed: flags.seed as number | undefined,
    maxPeers: flags["max-peers"] as number,
    rateLimit: flags["rate-limit"] as number,
    burst: flags.burst as number,
    trace: flags.trace as boolean,
  };
}

/** The banner: the service, where it listens, and how to reach it. */
export function bannerLines(server: UdpServer): string[] {
  const { hostname, port } = server.addr;
  const { service, dropRate, maxDelayMs, seed } = server.options;
  const flags = (port === DEFAULT_PORT ? "" : ` --port ${port}`) +
    (service === "chat" ? "" : ` --service ${service}`);
  const reach = (address: string) =>
    `deno run -A udp_client.ts ${address}${flags}    or    nc -u ${address} ${port}`;
  const drops = `dropping ${Math.round(dropRate * 100)}% of datagrams`;
  const delays = `delaying replies by up to ${maxDelayMs} ms`;
  const seeded = seed === undefined ? "" : ` (seed ${seed})`;
  const unreliable = `Simulating an unreliable network: ${drops}, ${delays}`;
  return [
    `socklab UDP ${service} service listening on ${hostname}:${port}`,
    ...connectionHints(hostname, reach),
    ...(dropRate > 0 || maxDelayMs > 0 ? [unreliable + seeded] : []),
    "Ctrl-C stops the server.",
  ];
}

async function main(): Promise<void> {
  const options = argsOrExit(parseUdpServerArgs, USAGE);
  requireUdp();
  const terminal = new LineConsole(); // a stalled console cannot stop it
  const print = (line: string) => terminal.print(line);
  let server;
  try {
    server = UdpServer.start({ ...options, print });
  } catch (error) {
    const where = `${options.host}:${options.port}`;
    console.error(`Cannot listen on "${where}" (UDP): ${networkReason(error)}`);
    Deno.exit(1);
  }
  // Ready for Ctrl-C before the banner tells anyone the server is up.
  onStopSignals(() => server.stop());
  bannerLines(server).forEach(print);
  await server.finished;
  await server.stop();
  await terminal.close();
  Deno.exit(0);
}

if (import.meta.main) main();
