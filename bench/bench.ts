#!/usr/bin/env -S deno run -A
/**
 * socklab's load benchmark for the TCP chat: N clients each send M
 * messages to the room; every other client must receive each one, whole
 * and in order. It reports deliveries a second, delivery latency, losses,
 * the server's CPU time per 1,000 deliveries and its memory.
 *
 * ```sh
 * deno task bench                                  # 50 clients x 200 messages
 * deno task bench --clients 5000 --messages 1 --senders 1
 * deno task bench --command "ncat -l --chat 127.0.0.1 {port}"
 * deno task bench --compare "ncat -l --chat 127.0.0.1 {port}" --pin
 * ```
 *
 * @module
 */

import {
  cpuSample,
  cpuSecondsBetween,
  percentile,
  pinApart,
  round,
  startScript,
} from "./measure.ts";
import {
  argsOrExit,
  LINE_TOO_LONG,
  LineFramer,
  parseFlags,
  parsePort,
  UsageError,
  wholeFlag,
  writeAll,
} from "../shared.ts";

const USAGE = `socklab bench: load on a TCP chat relay

USAGE:
  deno task bench [OPTIONS]

OPTIONS:
      --clients <N>      Clients connected at once (default 50)
      --messages <N>     Messages each sender sends (default 200)
      --senders <N>      How many of the clients send (default: all)
      --rate <N>         Messages a second per sender; 0 is as fast as possible (default 0)
      --warmup <N>       Messages each sender sends first, not measured (default:
                         as many as --messages: the same load once, to warm up)
      --iterative        The same load against server.ts --iterative
      --host <HOST>      Bench a server already running there (with --port)
      --port <PORT>      Its port
      --command <CMD>    Start another line-based relay instead, e.g.
                         "ncat -l --chat 127.0.0.1 {port}" ({port}: a free port)
      --compare <CMD>    Run server.ts and the relay CMD starts in turn, --rounds
                         times each, and compare their medians
      --rounds <N>       Rounds of --compare (default 5)
      --pin              Run the server on a core of its own, the bench on the
                         others (Linux, with taskset): steadier CPU figures
      --timeout <S>      Give up waiting for deliveries after S seconds (default 120);
                         a run also ends once nothing more has come for 1 s
      --json             Print one machine-readable line instead of the report
  -h, --help             Show this help`;

/**
 * Rounds of --compare: one run swings by a third on a busy machine, the
 * median of five alternating runs far less.
 */
const DEFAULT_ROUNDS = 5;

/** What to run. */
export interface BenchOptions {
  clients: number;
  messages: number;
  senders: number;
  rate: number;
  warmup: number;
  iterative: boolean;
  host?: string;
  port?: number;
  command?: string;
  /** A relay's command line to compare server.ts with. */
  compare?: string;
  rounds: number;
  pin: boolean;
  timeoutMs: number;
  json: boolean;
  help: boolean;
}

/** @throws {UsageError} for a bad flag */
export function parseBenchArgs(args: string[]): BenchOptions {
  const flags = parseFlags(args, {
    positionals: 0,
    string: [
      "clients",
      "messages",
      "senders",
      "rate",
      "warmup",
      "host",
      "port",
      "command",
      "compare",
      "rounds",
      "timeout",
    ],
    boolean: ["iterative", "json", "pin", "help"],
    alias: { h: "help" },
    default: {
      clients: "50",
      messages: "200",
      rate: "0",
      timeout: "120",
    },
  });
  const clients = wholeFlag(flags, "clients", 2, 20_000);
  const messages = wholeFlag(flags, "messages", 1, 1_000_000);
  const external = flags.host !== undefined || flags.port !== undefined;
  if (external && (flags.host === undefined || flags.port === undefined)) {
    throw new UsageError("--host and --port go together");
  }
  if (external && flags.command !== undefined) {
    throw new UsageError(
      "--command starts a relay: leave out --host and --port",
    );
  }
  const compare = flags.compare === undefined
    ? undefined
    : String(flags.compare);
  if (compare !== undefined && (external || flags.command !== undefined)) {
    throw new UsageError(
      "--compare starts both relays itself: leave out --host, --port and --command",
    );
  }
  if (compare !== undefined && flags.iterative) {
    throw new UsageError(
      "--compare measures the concurrent server: leave out --iterative",
    );
  }
  if (external && flags.pin) {
    throw new UsageError(
      "--pin starts the server on a core of its own: leave out --host and --port",
    );
  }
  if (compare === undefined && flags.rounds !== undefined) {
    throw new UsageError("--rounds goes with --compare");
  }
  return {
    clients,
    messages,
    senders: flags.senders === undefined
      ? clients
      : Math.min(clients, wholeFlag(flags, "senders", 1, 20_000)),
    rate: wholeFlag(flags, "rate", 0, 1_000_000),
    // By default the same load once: the JIT has then compiled the
    // server's busy code, as in a server that has been running.
    warmup: flags.warmup === undefined
      ? messages
      : wholeFlag(flags, "warmup", 0, 1_000_000),
    iterative: flags.iterative === true,
    host: flags.host === undefined ? undefined : String(flags.host),
    port: flags.port === undefined ? undefined : parsePort(flags.port),
    command: flags.command === undefined ? undefined : String(flags.command),
    compare,
    rounds: flags.rounds === undefined
      ? DEFAULT_ROUNDS
      : wholeFlag(flags, "rounds", 1, 100),
    pin: flags.pin === true,
    timeoutMs: wholeFlag(flags, "timeout", 1, 86_400) * 1000,
    json: flags.json === true,
    help: flags.help === true,
  };
}

// ---------------------------------------------------------------------------
// The server under test, and what the kernel says of its CPU and memory
// ---------------------------------------------------------------------------

/** A relay the bench talks to, and (when it started it) its process. */
interface Target {
  host: string;
  port: number;
  pid?: number;
  label: string;
  notes: string[];
  stop(): Promise<void>;
}

async function startTarget(options: BenchOptions): Promise<Target> {
  if (options.host !== undefined && options.port !== undefined) {
    return {
      host: options.host,
      port: options.port,
      label: `${options.host}:${options.port}`,
      notes: [],
      stop: async () => {},
    };
  }
  const pinning = options.pin ? await pinApart() : undefined;
  const target = options.command === undefined
    ? await startSocklab(options, pinning?.launcher)
    : await startCommand(options.command, pinning?.launcher);
  if (pinning) {
    target.notes.push(
      `pinned: the server runs on core ${pinning.serverCore} alone, the bench on core ${pinning.benchCores}`,
    );
  }
  return target;
}

/** Starts server.ts with the flood limit and client cap raised for the load. */
async function startSocklab(
  options: BenchOptions,
  launcher?: string[],
): Promise<Target> {
  const raised = [
    "--rate-limit",
    "0",
    "--max-clients",
    String(options.clients + 10),
    "--max-pending",
    String(64 * 1024 * 1024),
  ];
  const flags = [
    ...raised,
    "--quiet",
    ...(options.iterative ? ["--iterative"] : []),
  ];
  const server = await startScript("server.ts", flags, launcher);
  return {
    host: "127.0.0.1",
    port: server.port,
    pid: server.pid,
    label: `server.ts${options.iterative ? " --iterative" : ""}`,
    notes: [
      `server.ts started with ${
        raised.join(" ")
      } --quiet: a burst is far above the default flood limit (20 lines a second), a big room above the default client cap (1000), and the bench's clients (all in one busy process) read slower than the server sends, past the default 1 MiB of unread output`,
    ],
    stop: server.stop,
  };
}

/** Starts another relay from a command line, on a free port. */
async function startCommand(
  command: string,
  launcher: string[] = [],
): Promise<Target> {
  const probe = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (probe.addr as Deno.NetAddr).port;
  probe.close();
  const [program, ...args] = [
    ...launcher,
    ...command.replaceAll("{port}", String(port)).split(/\s+/),
  ];
  let child: Deno.ChildProcess;
  try {
    child = new Deno.Command(program, {
      args,
      stdin: "null",
      stdout: "null",
      stderr: "inherit",
    }).spawn();
  } catch (error) {
    if (!(error instanceof Deno.errors.NotFound)) throw error;
    throw new Error(`cannot start "${command}": no program "${program}" here`);
  }
  // It prints no banner: wait until the kernel shows its port listening.
  // (Not by connecting: a connection closed at once can kill ncat --chat.)
  for (let tries = 0; !isListening(port); tries++) {
    if (tries > 200) throw new Error(`"${command}" did not listen on ${port}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return {
    host: "127.0.0.1",
    port,
    pid: child.pid,
    label: command,
    notes: [],
    stop: async () => {
      child.kill("SIGTERM");
      await child.status;
    },
  };
}

/** Is a TCP port in the LISTEN state on this machine (Linux's /proc)? */
function isListening(port: number): boolean {
  const hex = `:${port.toString(16).toUpperCase().padStart(4, "0")} `;
  for (const table of ["/proc/net/tcp", "/proc/net/tcp6"]) {
    try {
      const rows = Deno.readTextFileSync(table).split("\n");
      if (rows.some((row) => row.includes(hex) && / 0A /.test(row))) {
        return true;
      }
    } catch {
      // No such table here.
    }
  }
  return false;
}

/** A memory figure of a process from /proc, in KiB (VmRSS, or VmHWM: its peak). */
function memoryKiB(
  pid: number | undefined,
  field: "VmRSS" | "VmHWM",
): number | undefined {
  if (pid === undefined) return undefined;
  try {
    const status = Deno.readTextFileSync(`/proc/${pid}/status`);
    return Number(new RegExp(`${field}:\\s+(\\d+)`).exec(status)?.[1]);
  } catch {
    return undefined;
  }
}

// ---------------------------------------------------------------------------
// The clients
// ---------------------------------------------------------------------------

/** A message carries its sender, its number and its send time. */
const MESSAGE = /\bb (\d+) (\d+) (\d+\.\d+) x+$/;

/** A warm-up message is the same with "w": counted, not measured. */
const WARMUP = /(^|\s)w \d/;
const PADDING = "x".repeat(32);

/**
 * A line sent once everyone is connected; when all have it, everything
 * the joins caused (a "joined" notice to everyone, for each) has arrived,
 * and the measured run starts on a quiet room.
 */
const BARRIER = "bench: everyone is here";

/** What the receivers saw. */
class Tally {
  delivered = 0;
  /** When the last message arrived (performance.now()). */
  lastDeliveryAt = 0;
  garbled = 0;
  outOfOrder = 0;
  latencies: number[] = [];
  #allDelivered?: () => void;
  readonly done: Promise<void>;
  warmupsDelivered = 0;
  #warmedUp?: () => void;
  /** Settles when every warm-up message has arrived. */
  readonly warmedUp: Promise<void>;

  constructor(readonly expected: number, readonly warmupExpected = 0) {
    this.done = new Promise((resolve) => this.#allDelivered = resolve);
    if (expected === 0) this.#allDelivered!();
    this.warmedUp = new Promise((resolve) => this.#warmedUp = resolve);
    if (warmupExpected === 0) this.#warmedUp!();
  }

  recordWarmup(): void {
    if (++this.warmupsDelivered >= this.warmupExpected) this.#warmedUp!();
  }

  record(latency: number): void {
    this.lastDeliveryAt = performance.now();
    this.delivered++;
    this.latencies.push(latency);
    if (this.delivered >= this.expected) this.#allDelivered!();
  }
}

/** One bench client: a connection, and a loop that checks what arrives. */
class BenchClient {
  readonly #nextFrom = new Map<number, number>();
  readonly welcomed: Promise<void>;
  #welcome?: () => void;
  /** Settles when the barrier line has arrived (see runBench). */
  readonly barrier: Promise<void>;
  #passBarrier?: () => void;
  readonly closed: Promise<void>;

  constructor(
    readonly index: number,
    readonly conn: Deno.Conn,
    readonly tally: Tally,
  ) {
    this.welcomed = new Promise((resolve) => this.#welcome = resolve);
    this.barrier = new Promise((resolve) => this.#passBarrier = resolve);
    this.closed = this.#receive();
  }

  async #receive(): Promise<void> {
    const framer = new LineFramer(64 * 1024);
    const buffer = new Uint8Array(64 * 1024);
    try {
      for (let count; (count = await this.conn.read(buffer)) !== null;) {
        const now = performance.now();
        for (const frame of framer.push(buffer.subarray(0, count))) {
          if (frame === LINE_TOO_LONG) this.tally.garbled++;
          else this.#check(frame, now);
        }
      }
    } catch {
      // Closed at the end of the run.
    }
  }

  #check(line: string, now: number): void {
    // The first line (socklab's welcome, ncat's announce) says the relay
    // has accepted this client.
    this.#welcome!();
    if (line.endsWith(BARRIER)) return this.#passBarrier!();
    // Not a message (a notice)? Some relays, like ncat --chat, prefix only
    // the first line of each read they forward: the rest come bare.
    if (WARMUP.test(line)) return this.tally.recordWarmup();
    if (!/(^|\s)b \d/.test(line)) return;
    const match = MESSAGE.exec(line);
    if (!match) {
      this.tally.garbled++;
      return;
    }
    const [sender, seq, sentAt] = [
      Number(match[1]),
      Number(match[2]),
      Number(match[3]),
    ];
    const expected = this.#nextFrom.get(sender) ?? 0;
    if (seq !== expected) this.tally.outOfOrder++;
    this.#nextFrom.set(sender, seq + 1);
    this.tally.record(now - sentAt);
  }

  /**
   * Sends `count` messages, at `rate` a second (0: all at once), tagged
   * "b", or "w" for a warm-up.
   */
  async send(count: number, rate: number, tag = "b"): Promise<void> {
    const encoder = new TextEncoder();
    const line = (seq: number) =>
      `${tag} ${this.index} ${seq} ${
        performance.now().toFixed(3)
      } ${PADDING}\n`;
    if (rate === 0) {
      // As fast as possible: many lines per write.
      for (let seq = 0; seq < count; seq += 100) {
        let chunk = "";
        for (let i = seq; i < Math.min(count, seq + 100); i++) chunk += line(i);
        await writeAll(this.conn, encoder.encode(chunk));
      }
      return;
    }
    const start = performance.now();
    for (let seq = 0; seq < count; seq++) {
      const due = start + (seq * 1000) / rate;
      const wait = due - performance.now();
      if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
      await writeAll(this.conn, encoder.encode(line(seq)));
    }
  }

  close(): void {
    try {
      this.conn.close();
    } catch {
      // Already closed.
    }
  }
}

const CONNECT_BATCH = 8;

async function connectAll(
  target: Target,
  count: number,
  tally: Tally,
): Promise<BenchClient[]> {
  const clients: BenchClient[] = [];
  // A few at a time: some relays (ncat) listen with a short backlog, and
  // a connection the backlog drops waits a second or more to try again.
  for (let first = 0; first < count; first += CONNECT_BATCH) {
    const batch = await Promise.all(
      Array.from(
        { length: Math.min(CONNECT_BATCH, count - first) },
        async (_, i) => {
          const conn = await Deno.connect({
            hostname: target.host,
            port: target.port,
          });
          return new BenchClient(first + i, conn, tally);
        },
      ),
    );
    clients.push(...batch);
    await Promise.all(batch.map((client) => client.welcomed));
  }
  return clients;
}

// ---------------------------------------------------------------------------
// The run and the report
// ---------------------------------------------------------------------------

/** The numbers of one run. */
export interface BenchReport {
  target: string;
  clients: number;
  senders: number;
  messages: number;
  rate: number;
  /** Messages each sender sent first, not measured. */
  warmup: number;
  expected: number;
  delivered: number;
  lost: number;
  garbled: number;
  outOfOrder: number;
  seconds: number;
  deliveriesPerSecond: number;
  latencyMs: { p50: number; p95: number; p99: number; max: number };
  serverCpuSeconds?: number;
  cpuMsPer1000Deliveries?: number;
  memoryKiB: {
    idle?: number;
    connected?: number;
    peak?: number;
    perClient?: number;
  };
  notes: string[];
}

/** @returns true when `promise` settled first, false when time ran out */
async function withTimeout(promise: Promise<unknown>, ms: number) {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<boolean>((resolve) => {
    timer = setTimeout(() => resolve(false), ms);
  });
  const settled = await Promise.race([promise.then(() => true), timeout]);
  clearTimeout(timer);
  return settled;
}

/**
 * How long a run waits with nothing arriving before it gives up on the
 * rest: a relay that loses messages (ncat --chat does) never delivers
 * them all.
 */
const QUIET_MS = 1000;

/**
 * Waits until `all` settles, or nothing more has arrived (by `arrived`)
 * for QUIET_MS, or `timeoutMs` has passed.
 * @returns how the wait ended
 */
async function awaitDeliveries(
  all: Promise<void>,
  arrived: () => number,
  timeoutMs: number,
): Promise<"all" | "quiet" | "timeout"> {
  const deadline = performance.now() + timeoutMs;
  while (true) {
    const seen = arrived();
    const left = Math.max(0, deadline - performance.now());
    const window = Math.min(QUIET_MS, left);
    if (await withTimeout(all, window)) return "all";
    // Quiet only after a whole window: one the deadline cut short is not.
    if (window < QUIET_MS) return "timeout";
    if (arrived() === seen) return "quiet";
  }
}

/** `done/total (N%)`, for the progress line. */
function share(done: number, total: number): string {
  return `${done}/${total} (${Math.floor((100 * done) / Math.max(1, total))}%)`;
}

/**
 * The warm-up: a load like the measured one (by default the same) that
 * nobody times. A JavaScript server runs its code slowly at first, until
 * the JIT has compiled it; the figures are for a server that has been
 * running.
 */
async function warmUp(
  senders: BenchClient[],
  options: BenchOptions,
  tally: Tally,
): Promise<string[]> {
  if (options.warmup === 0) return [];
  await Promise.all(
    senders.map((client) => client.send(options.warmup, options.rate, "w")),
  );
  const ended = await awaitDeliveries(
    tally.warmedUp,
    () => tally.warmupsDelivered,
    options.timeoutMs,
  );
  if (ended === "all") return [];
  return [
    `warm-up: ${tally.warmupsDelivered} of ${tally.warmupExpected} messages delivered before it ${
      ended === "quiet" ? "went quiet" : "timed out"
    }`,
  ];
}

/** Runs the bench against a chat relay (concurrent). */
export async function runBench(
  options: BenchOptions,
  progress?: (text: string) => void,
): Promise<BenchReport> {
  const target = await startTarget(options);
  let ticker: ReturnType<typeof setInterval> | undefined;
  try {
    const idle = memoryKiB(target.pid, "VmRSS");
    const receivers = options.clients - 1;
    const expected = options.senders * options.messages * receivers;
    const tally = new Tally(
      expected,
      options.senders * options.warmup * receivers,
    );
    const clients = await connectAll(target, options.clients, tally);
    await writeAll(clients[0].conn, new TextEncoder().encode(`${BARRIER}\n`));
    const barrier = Promise.all(
      clients.slice(1).map((client) => client.barrier),
    );
    if (!(await withTimeout(barrier, options.timeoutMs))) {
      throw new Error("the relay did not pass a line to every client in time");
    }
    const connected = memoryKiB(target.pid, "VmRSS");
    let measuring = false;
    ticker = setInterval(
      () =>
        progress?.(
          measuring
            ? `deliveries ${share(tally.delivered, expected)}`
            : `warm-up, not measured: ${
              share(tally.warmupsDelivered, tally.warmupExpected)
            }`,
        ),
      500,
    );
    const warmupNotes = await warmUp(
      clients.slice(0, options.senders),
      options,
      tally,
    );
    measuring = true;
    const cpuBefore = cpuSample(target.pid);
    const start = performance.now();
    const senders = clients.slice(0, options.senders);
    await Promise.all(
      senders.map((client) => client.send(options.messages, options.rate)),
    );
    const ended = await awaitDeliveries(
      tally.done,
      () => tally.delivered,
      options.timeoutMs,
    );
    const cpuAfter = cpuSample(target.pid);
    // Up to the last delivery: not the quiet second after a loss.
    const end = tally.delivered > 0 ? tally.lastDeliveryAt : performance.now();
    const seconds = (end - start) / 1000;
    const peak = memoryKiB(target.pid, "VmHWM");
    clients.forEach((client) => client.close());
    await Promise.all(clients.map((client) => client.closed));
    const sorted = tally.latencies.sort((a, b) => a - b);
    const cpu = cpuSecondsBetween(cpuBefore, cpuAfter);
    return {
      target: target.label,
      clients: options.clients,
      senders: options.senders,
      messages: options.messages,
      rate: options.rate,
      warmup: options.warmup,
      expected,
      delivered: tally.delivered,
      lost: Math.max(0, expected - tally.delivered),
      garbled: tally.garbled,
      outOfOrder: tally.outOfOrder,
      seconds: round(seconds),
      deliveriesPerSecond: Math.round(tally.delivered / seconds),
      latencyMs: {
        p50: round(percentile(sorted, 50)),
        p95: round(percentile(sorted, 95)),
        p99: round(percentile(sorted, 99)),
        max: round(sorted.at(-1) ?? 0),
      },
      serverCpuSeconds: cpu === undefined ? undefined : round(cpu, 4),
      cpuMsPer1000Deliveries: cpu === undefined || tally.delivered === 0
        ? undefined
        : round((cpu * 1e6) / tally.delivered, 3),
      memoryKiB: {
        idle,
        connected,
        peak,
        perClient: idle !== undefined && connected !== undefined
          ? round((connected - idle) / options.clients, 1)
          : undefined,
      },
      notes: [
        ...target.notes,
        ...warmupNotes,
        ...(ended === "all" ? [] : [
          `not every message arrived: the run ended ${
            ended === "quiet"
              ? `when nothing more came for ${QUIET_MS / 1000} s`
              : `at the timeout (${options.timeoutMs / 1000} s)`
          }; the time and rate above run to the last delivery`,
        ]),
      ],
    };
  } finally {
    clearInterval(ticker);
    await target.stop();
  }
}

/** The iterative server: clients wait in the backlog and are served in turn. */
export async function runIterative(
  options: BenchOptions,
  progress?: (text: string) => void,
) {
  const target = await startTarget(options);
  try {
    const start = performance.now();
    const waits: number[] = [];
    let served = 0;
    await Promise.all(
      Array.from({ length: options.clients }, async (_, index) => {
        const connectedAt = performance.now();
        const conn = await Deno.connect({
          hostname: target.host,
          port: target.port,
        });
        const tally = new Tally(0);
        const client = new BenchClient(index, conn, tally);
        await client.welcomed;
        waits.push(performance.now() - connectedAt);
        await client.send(options.messages, options.rate);
        await writeAll(conn, new TextEncoder().encode("/quit\n"));
        await client.closed;
        client.close();
        progress?.(`served ${++served}/${options.clients}`);
      }),
    );
    const seconds = (performance.now() - start) / 1000;
    const sorted = waits.sort((a, b) => a - b);
    return {
      target: target.label,
      clients: options.clients,
      messages: options.messages,
      seconds: round(seconds),
      messagesPerSecond: Math.round(
        (options.clients * options.messages) / seconds,
      ),
      waitInBacklogMs: {
        p50: round(percentile(sorted, 50)),
        p99: round(percentile(sorted, 99)),
        max: round(sorted.at(-1) ?? 0),
      },
      notes: target.notes,
    };
  } finally {
    await target.stop();
  }
}

/** The median of some figures, and their range. */
export interface Spread {
  median: number;
  min: number;
  max: number;
}

function spread(values: number[]): Spread {
  const sorted = [...values].sort((a, b) => a - b);
  return {
    median: percentile(sorted, 50),
    min: sorted[0],
    max: sorted[sorted.length - 1],
  };
}

/** One relay's runs in a comparison. */
export interface RelayRuns {
  target: string;
  cpuMsPer1000Deliveries?: Spread;
  deliveriesPerSecond: Spread;
  latencyP99Ms: Spread;
  /** Over all its runs. */
  lost: number;
  garbled: number;
  notes: string[];
  runs: BenchReport[];
}

/** server.ts and another relay, run in turn. */
export interface Comparison {
  rounds: number;
  relays: RelayRuns[];
  /** server.ts's median CPU per delivery over the other relay's. */
  cpuRatio?: number;
}

/** Each kind of note once: the first of those that differ only in numbers. */
function distinctNotes(notes: string[]): string[] {
  const byKind = new Map<string, string>();
  for (const note of notes) {
    const kind = note.replace(/\d+/g, "N");
    if (!byKind.has(kind)) byKind.set(kind, note);
  }
  return [...byKind.values()];
}

function relayRuns(runs: BenchReport[]): RelayRuns {
  const cpu = runs.map((run) => run.cpuMsPer1000Deliveries);
  const sum = (count: (run: BenchReport) => number) =>
    runs.reduce((total, run) => total + count(run), 0);
  return {
    target: runs[0].target,
    cpuMsPer1000Deliveries: cpu.every((value) => value !== undefined)
      ? spread(cpu as number[])
      : undefined,
    deliveriesPerSecond: spread(runs.map((run) => run.deliveriesPerSecond)),
    latencyP99Ms: spread(runs.map((run) => run.latencyMs.p99)),
    lost: sum((run) => run.lost),
    garbled: sum((run) => run.garbled),
    notes: distinctNotes(runs.flatMap((run) => run.notes)),
    runs,
  };
}

/**
 * Runs server.ts, then the relay `options.compare` starts, then server.ts
 * again, and so on: each run on a fresh process, so both meet the same
 * changes in the machine's load.
 */
export async function runComparison(
  options: BenchOptions,
  progress?: (text: string) => void,
): Promise<Comparison> {
  const commands = [undefined, options.compare];
  const runs: BenchReport[][] = commands.map(() => []);
  for (let round = 1; round <= options.rounds; round++) {
    for (const [index, command] of commands.entries()) {
      // The program's name alone: the line must fit a narrow terminal.
      const name = command?.trim().split(/\s+/)[0].split("/").at(-1);
      const label = `round ${round}/${options.rounds}, ${name ?? "server.ts"}`;
      runs[index].push(
        await runBench(
          { ...options, command, compare: undefined },
          progress && ((text) => progress(`${label}: ${text}`)),
        ),
      );
    }
  }
  const relays = runs.map(relayRuns);
  const [ours, theirs] = relays.map((relay) =>
    relay.cpuMsPer1000Deliveries?.median
  );
  return {
    rounds: options.rounds,
    relays,
    cpuRatio: ours !== undefined && theirs
      ? round(ours / theirs, 2)
      : undefined,
  };
}

function formatComparison(comparison: Comparison): string[] {
  const [ours, theirs] = comparison.relays;
  const first = ours.runs[0];
  const lines = [
    `socklab bench: server.ts and "${theirs.target}" in turn, ${
      comparison.rounds === 1 ? "1 run" : `${comparison.rounds} runs`
    } each`,
    loadLine(first),
  ];
  const range = ({ min, max }: Spread) => `${min} to ${max}`;
  for (const relay of comparison.relays) {
    lines.push(relay.target);
    if (relay.cpuMsPer1000Deliveries) {
      lines.push(
        `  server CPU   ${relay.cpuMsPer1000Deliveries.median} ms per 1,000 deliveries (median; ${
          range(relay.cpuMsPer1000Deliveries)
        })`,
      );
    }
    lines.push(
      `  deliveries   ${
        relay.deliveriesPerSecond.median.toLocaleString("en")
      } a second (median), latency p99 ${relay.latencyP99Ms.median} ms (median)`,
      `  lost ${relay.lost}, garbled ${relay.garbled} (all runs)`,
      ...relay.notes.map((note) => `  note: ${note}`),
    );
  }
  if (comparison.cpuRatio !== undefined) {
    lines.push(
      `server.ts's CPU per delivery is ${comparison.cpuRatio} times that of "${theirs.target}" (medians)`,
    );
  }
  return lines;
}

/** What was sent, and how fast. */
function loadLine(report: BenchReport): string {
  const pace = report.rate === 0
    ? "as fast as possible"
    : `${report.rate} a second each`;
  return `${report.clients} clients, ${report.senders} sending ${report.messages} messages ${pace} (after ${report.warmup} not measured, to warm up)`;
}

function formatReport(report: BenchReport): string[] {
  const mib = (kib?: number) =>
    kib === undefined ? "n/a" : `${(kib / 1024).toFixed(1)} MiB`;
  const lines = [
    `socklab bench: ${report.target}`,
    loadLine(report),
    `deliveries   ${report.delivered.toLocaleString("en")} of ${
      report.expected.toLocaleString("en")
    } in ${report.seconds} s = ${
      report.deliveriesPerSecond.toLocaleString("en")
    } a second`,
    `latency      p50 ${report.latencyMs.p50} ms, p95 ${report.latencyMs.p95} ms, p99 ${report.latencyMs.p99} ms, max ${report.latencyMs.max} ms`,
    `lost ${report.lost}, garbled ${report.garbled}, out of order ${report.outOfOrder}`,
  ];
  if (report.serverCpuSeconds !== undefined) {
    lines.push(
      `server CPU   ${report.serverCpuSeconds} s = ${report.cpuMsPer1000Deliveries} ms per 1,000 deliveries`,
    );
  }
  if (report.memoryKiB.idle !== undefined) {
    lines.push(
      `server RSS   idle ${
        mib(report.memoryKiB.idle)
      }, with ${report.clients} clients ${
        mib(report.memoryKiB.connected)
      } (${report.memoryKiB.perClient} KiB a client), peak ${
        mib(report.memoryKiB.peak)
      }`,
    );
  }
  return [...lines, ...report.notes.map((note) => `note: ${note}`)];
}

async function main(): Promise<void> {
  const options = argsOrExit(parseBenchArgs, USAGE);
  // A line redrawn in place: only on a terminal, never into a log.
  const progress = options.json || !Deno.stderr.isTerminal()
    ? undefined
    : (text: string) =>
      // "\x1b[K" clears what a longer line before left.
      Deno.stderr.writeSync(new TextEncoder().encode(`\r${text}\x1b[K`));
  try {
    if (options.iterative) {
      const report = await runIterative(options, progress);
      if (options.json) return console.log(JSON.stringify(report));
      if (progress) console.error("");
      console.log(
        `socklab bench: ${report.target}, ${report.clients} clients x ${report.messages} messages, one client at a time`,
      );
      console.log(
        `all served in ${report.seconds} s (${
          report.messagesPerSecond.toLocaleString("en")
        } messages a second)`,
      );
      console.log(
        `wait in the backlog before the welcome: p50 ${report.waitInBacklogMs.p50} ms, p99 ${report.waitInBacklogMs.p99} ms, max ${report.waitInBacklogMs.max} ms`,
      );
      report.notes.forEach((note) => console.log(`note: ${note}`));
      return;
    }
    if (options.compare !== undefined) {
      const comparison = await runComparison(options, progress);
      if (options.json) return console.log(JSON.stringify(comparison));
      if (progress) console.error("");
      formatComparison(comparison).forEach((line) => console.log(line));
      // Only server.ts is held to losing nothing.
      const [ours] = comparison.relays;
      if (ours.lost > 0 || ours.garbled > 0) Deno.exit(1);
      return;
    }
    const report = await runBench(options, progress);
    if (options.json) return console.log(JSON.stringify(report));
    if (progress) console.error("");
    formatReport(report).forEach((line) => console.log(line));
    if (report.lost > 0 || report.garbled > 0) Deno.exit(1);
  } catch (error) {
    console.error(`bench failed: ${(error as Error).message}`);
    Deno.exit(1);
  }
}

if (import.meta.main) main();
