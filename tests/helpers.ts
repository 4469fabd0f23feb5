/**
 * Test helpers: a line-reading TCP client, a log to wait on, and spawned
 * scripts whose output can be waited on line by line. Every wait has a
 * time limit ({@linkcode withTimeout}), so a missing line, a process that
 * does not exit or a peer that does not answer fails the test with a
 * message naming what it waited for, instead of hanging it.
 *
 * @module
 */

import { encodeLine, LINE_TOO_LONG, LineFramer } from "../shared.ts";
import { ChatServer, InventoryServer, type ServerOptions } from "../server.ts";
import { UdpServer, type UdpServerOptions } from "../udp_server.ts";

/** How long a test waits for a line before it fails. */
export const WAIT_MS = 10_000;

/**
 * Waits for `promise`, for at most `ms`.
 * @param what what is awaited, for the message: "server.ts to exit"
 * @throws when the time is up: "timed out after 10000 ms waiting for ..."
 */
export async function withTimeout<T>(
  promise: PromiseLike<T>,
  ms: number,
  what: string,
): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeUp = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)),
      ms,
    );
  });
  try {
    return await Promise.race([promise, timeUp]);
  } finally {
    clearTimeout(timer);
  }
}

/** The repository root, where the scripts are. */
export const ROOT = new URL("..", import.meta.url).pathname;

/**
 * Lines that arrive over time, to be taken in order or waited for.
 * Taking a line removes it, so each line is matched once.
 */
export class LineQueue {
  #lines: string[] = [];
  #ended = false;
  #waiter?: () => void;
  /** Every line seen so far, taken or not. */
  readonly all: string[] = [];

  push(line: string): void {
    this.#lines.push(line);
    this.all.push(line);
    this.#wake();
  }

  end(): void {
    this.#ended = true;
    this.#wake();
  }

  #wake(): void {
    this.#waiter?.();
    this.#waiter = undefined;
  }

  /** Takes the next line. @throws when none comes in time */
  async next(timeoutMs = WAIT_MS): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    while (this.#lines.length === 0) {
      if (this.#ended) throw new Error("the stream ended; no line came");
      await this.#waitUntil(deadline, "a line");
    }
    return this.#lines.shift()!;
  }

  /**
   * Takes lines until one matches, and returns it.
   * @throws when none matches in time, listing the lines seen
   */
  async waitFor(
    pattern: RegExp | string,
    timeoutMs = WAIT_MS,
  ): Promise<string> {
    const matches = (line: string) =>
      typeof pattern === "string" ? line === pattern : pattern.test(line);
    const deadline = Date.now() + timeoutMs;
    while (true) {
      const index = this.#lines.findIndex(matches);
      if (index >= 0) {
        const [line] = this.#lines.splice(0, index + 1).slice(-1);
        return line;
      }
      if (this.#ended) {
        throw new Error(
          `the stream ended without ${pattern}; saw:\n${this.#seen()}`,
        );
      }
      await this.#waitUntil(deadline, String(pattern));
    }
  }

  /** Resolves when the stream has ended. */
  async waitForEnd(timeoutMs = WAIT_MS): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!this.#ended) await this.#waitUntil(deadline, "the end");
  }

  get ended(): boolean {
    return this.#ended;
  }

  /** The last lines seen, shortened, for an error message. */
  #seen(): string {
    return this.all.slice(-20).map((line) =>
      line.length > 160 ? line.slice(0, 160) + "..." : line
    ).join("\n");
  }

  async #waitUntil(deadline: number, what: string): Promise<void> {
    const left = deadline - Date.now();
    if (left <= 0) {
      throw new Error(
        `timed out waiting for ${what}; saw:\n${this.#seen()}`,
      );
    }
    let timer: ReturnType<typeof setTimeout> | undefined;
    await new Promise<void>((resolve) => {
      this.#waiter = resolve;
      timer = setTimeout(resolve, left);
    });
    clearTimeout(timer);
  }
}

/** Reads a byte stream into a queue of lines until it ends. */
export async function pumpLines(
  read: (buffer: Uint8Array) => Promise<number | null>,
  queue: LineQueue,
): Promise<void> {
  const framer = new LineFramer(1 << 20);
  const buffer = new Uint8Array(64 * 1024);
  try {
    for (let count; (count = await read(buffer)) !== null;) {
      for (const frame of framer.push(buffer.subarray(0, count))) {
        if (frame !== LINE_TOO_LONG) queue.push(frame);
      }
    }
    for (const frame of framer.end()) {
      if (frame !== LINE_TOO_LONG) queue.push(frame);
    }
  } catch {
    // A reset or our own close ends the stream like an end of file.
  }
  queue.end();
}

/** A raw TCP client, like nc: bytes out, lines in. */
export class TestClient {
  readonly lines = new LineQueue();
  readonly #pump: Promise<void>;

  private constructor(readonly conn: Deno.Conn, readonly port: number) {
    this.#pump = pumpLines((buffer) => conn.read(buffer), this.lines);
  }

  static async connect(port: number): Promise<TestClient> {
    const conn = await withTimeout(
      Deno.connect({ hostname: "127.0.0.1", port }),
      WAIT_MS,
      `a connection to 127.0.0.1:${port}`,
    );
    return new TestClient(conn, port);
  }

  /** Connects with TLS, trusting `caCert` (PEM). */
  static async connectTls(port: number, caCert: string): Promise<TestClient> {
    const conn = await withTimeout(
      Deno.connectTls({ hostname: "127.0.0.1", port, caCerts: [caCert] }),
      WAIT_MS,
      `a TLS connection to 127.0.0.1:${port}`,
    );
    try {
      await withTimeout(
        conn.handshake(),
        WAIT_MS,
        `the TLS handshake with 127.0.0.1:${port}`,
      );
    } catch (error) {
      conn.close();
      throw error;
    }
    return new TestClient(conn, port);
  }

  /**
   * Connects and waits for the welcome, so the server has admitted this
   * client (as guest-N) before the test goes on.
   */
  static async join(port: number, name?: string): Promise<TestClient> {
    const client = await TestClient.connect(port);
    await client.lines.waitFor(/^\* you are guest-\d+/);
    if (name) {
      await client.send(`/nick ${name}`);
      await client.lines.waitFor(new RegExp(`is now known as ${name}$`));
    }
    return client;
  }

  /** Sends one line, with its `\n`. */
  async send(line: string): Promise<void> {
    await this.write(encodeLine(line));
  }

  /** Sends bytes as they are. */
  async write(bytes: Uint8Array | string): Promise<void> {
    const data = typeof bytes === "string"
      ? new TextEncoder().encode(bytes)
      : bytes;
    const what = `127.0.0.1:${this.port} to take ${data.length} bytes`;
    await withTimeout(
      (async () => {
        for (let sent = 0; sent < data.length;) {
          sent += await this.conn.write(data.subarray(sent));
        }
      })(),
      WAIT_MS,
      what,
    );
  }

  /** Takes the next line. */
  next(): Promise<string> {
    return this.lines.next();
  }

  /** Waits until the server closes the connection. */
  async closedByServer(): Promise<void> {
    await this.lines.waitForEnd();
    await this.#pumped();
  }

  #pumped(): Promise<void> {
    const what = `the reads from 127.0.0.1:${this.port} to end`;
    return withTimeout(this.#pump, WAIT_MS, what);
  }

  close(): void {
    try {
      this.conn.close();
    } catch {
      // Already closed.
    }
  }

  async [Symbol.asyncDispose](): Promise<void> {
    this.close();
    await this.#pumped();
  }
}

/** Connects `count` clients at once; `await using` closes them all. */
export async function connectAll(port: number, count: number) {
  const clients: TestClient[] = [];
  const group = {
    clients,
    async [Symbol.asyncDispose]() {
      await Promise.all(clients.map((client) => client[Symbol.asyncDispose]()));
    },
  };
  const connecting = Array.from(
    { length: count },
    async () => clients.push(await TestClient.connect(port)),
  );
  const results = await Promise.allSettled(connecting);
  const failed = results.find((result) => result.status === "rejected");
  if (failed) {
    await group[Symbol.asyncDispose]();
    throw failed.reason;
  }
  return group;
}

/** How a script is spawned: its standard input and extra environment. */
type SpawnOptions = {
  stdin?: "piped" | "null";
  env?: Record<string, string>;
  cwd?: string; // the repository's root unless set
};

/**
 * A spawned script, with its output as queues of lines. `await using`
 * kills it (SIGKILL) and waits for it, even when the test fails.
 */
export class Spawned {
  readonly stdout = new LineQueue();
  readonly stderr = new LineQueue();
  /** The command line, for messages: `server.ts --port 0`. */
  readonly label: string;
  readonly #child: Deno.ChildProcess;
  readonly #writer?: WritableStreamDefaultWriter<Uint8Array>;
  readonly #readers: ReadableStreamDefaultReader<Uint8Array>[];
  readonly #pumps: Promise<void>[];

  /** Runs `program` (Deno itself by default) with `args`. */
  constructor(
    args: string[],
    options: SpawnOptions = {},
    program: string = Deno.execPath(),
  ) {
    const name = program === Deno.execPath() ? "deno" : program;
    this.label = [name, ...args].join(" ").replace(/^deno run -A /, "")
      .slice(0, 120);
    this.#child = new Deno.Command(program, {
      args,
      cwd: options.cwd ?? ROOT,
      stdin: options.stdin ?? "null",
      stdout: "piped",
      stderr: "piped",
      env: { NO_COLOR: "1", ...options.env },
    }).spawn();
    if (options.stdin === "piped") {
      this.#writer = this.#child.stdin.getWriter();
    }
    this.#readers = [this.#child.stdout, this.#child.stderr].map((stream) =>
      stream.getReader()
    );
    this.#pumps = [
      pumpStream(this.#readers[0], this.stdout),
      pumpStream(this.#readers[1], this.stderr),
    ];
  }

  /** Runs `deno run -A SCRIPT ARGS...` from the repository root. */
  static script(
    script: string,
    args: string[] = [],
    options: SpawnOptions = {},
  ): Spawned {
    return new Spawned(["run", "-A", script, ...args], options);
  }

  get pid(): number {
    return this.#child.pid;
  }

  /** Types a line on the script's standard input. */
  async type(line: string): Promise<void> {
    await withTimeout(
      this.#writer!.write(encodeLine(line)),
      WAIT_MS,
      `${this.label} to read its input`,
    );
  }

  /** Ends the script's standard input (Ctrl-D, or the end of a pipe). */
  async endInput(): Promise<void> {
    await withTimeout(
      this.#writer!.close(),
      WAIT_MS,
      `${this.label} to read the end of its input`,
    );
  }

  kill(signal: Deno.Signal = "SIGTERM"): void {
    try {
      this.#child.kill(signal);
    } catch {
      // Already exited.
    }
  }

  /**
   * Waits for the exit and all output, for at most `timeoutMs` each.
   * @throws when the script does not exit in time (it is left running:
   * `await using` kills it)
   */
  async status(timeoutMs: number = WAIT_MS): Promise<Deno.CommandStatus> {
    const status = await withTimeout(
      this.#child.status,
      timeoutMs,
      `${this.label} to exit`,
    );
    await withTimeout(
      Promise.all(this.#pumps),
      timeoutMs,
      `the output of ${this.label} to end`,
    );
    return status;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    this.kill("SIGKILL");
    try {
      if (this.#writer) {
        await withTimeout(this.#writer.close(), WAIT_MS, "stdin to close");
      }
    } catch {
      // Already closed, or the process is gone.
    }
    try {
      await this.status();
    } finally {
      // A child of the script may hold its output open: stop reading it.
      for (const reader of this.#readers) reader.cancel().catch(() => {});
    }
  }
}

async function pumpStream(
  reader: ReadableStreamDefaultReader<Uint8Array>,
  queue: LineQueue,
): Promise<void> {
  let pending: Uint8Array = new Uint8Array(0);
  await pumpLines(async (buffer) => {
    if (pending.length === 0) {
      const { value, done } = await reader.read();
      if (done) return null;
      pending = value;
    }
    const count = Math.min(pending.length, buffer.length);
    buffer.set(pending.subarray(0, count));
    pending = pending.subarray(count);
    return count;
  }, queue);
}

/** The port a spawned server prints in its banner. */
export async function bannerPort(server: Spawned): Promise<number> {
  let banner;
  try {
    banner = await server.stdout.waitFor(/listening on \S+:\d+/);
  } catch (error) {
    const stderr = server.stderr.all.join("\n");
    const why = (error as Error).message;
    throw new Error(
      `${server.label} printed no banner: ${why}\nstderr:\n${stderr}`,
    );
  }
  return Number(/:(\d+)/.exec(banner.split("listening on ")[1])![1]);
}

/** A port where nothing listens (it was free a moment ago). */
export function closedPort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { port } = listener.addr as Deno.NetAddr;
  listener.close();
  return port;
}

/** Is this program on the PATH? */
export function hasProgram(name: string): boolean {
  try {
    const { success } = new Deno.Command("sh", {
      args: ["-c", `command -v ${name}`],
      stdout: "null",
      stderr: "null",
    }).outputSync();
    return success;
  } catch {
    return false;
  }
}

/**
 * Starts an in-process server on a free port of 127.0.0.1; its console
 * lines go to `console`. `await using` stops it.
 */
export function startServer(options: Partial<ServerOptions> = {}) {
  const console = new LineQueue();
  const server = ChatServer.start({
    host: "127.0.0.1",
    port: 0,
    print: (line) => console.push(line),
    ...options,
  });
  return { ...inProcess(server, console), console };
}

/**
 * A server running in the test's process, its log, and its port; `stop()`
 * stops it (within a time limit), and so does `await using`.
 */
function inProcess<
  Server extends { addr: Deno.NetAddr; stop(): Promise<void> },
>(
  server: Server,
  log: LineQueue,
) {
  const { port } = server.addr;
  const stop = () =>
    withTimeout(server.stop(), WAIT_MS, `the server on port ${port} to stop`);
  return { server, log, port, stop, [Symbol.asyncDispose]: stop };
}

/**
 * A UDP socket on 127.0.0.1, like `nc -u`: datagrams out, and each
 * datagram in as one entry of `datagrams` (its final "\n" removed).
 */
export class UdpPeer {
  readonly datagrams = new LineQueue();
  readonly socket: Deno.DatagramConn;
  readonly #loop: Promise<void>;

  constructor(readonly serverPort: number) {
    this.socket = Deno.listenDatagram({
      hostname: "127.0.0.1",
      port: 0,
      transport: "udp",
    });
    this.#loop = this.#receive();
  }

  /** This peer's port, as the server sees it. */
  get port(): number {
    return (this.socket.addr as Deno.NetAddr).port;
  }

  /** Sends one datagram: text (as it is) or bytes. */
  async send(message: string | Uint8Array): Promise<void> {
    const bytes = typeof message === "string"
      ? new TextEncoder().encode(message)
      : message;
    const to = { transport: "udp", hostname: "127.0.0.1" } as const;
    await withTimeout(
      this.socket.send(bytes, { ...to, port: this.serverPort }),
      WAIT_MS,
      `a datagram to be sent to 127.0.0.1:${this.serverPort}`,
    );
  }

  /** Sends a datagram and takes the next datagram that comes. */
  async ask(message: string | Uint8Array): Promise<string> {
    await this.send(message);
    return await this.datagrams.next();
  }

  async #receive(): Promise<void> {
    const decoder = new TextDecoder();
    try {
      while (true) {
        const [data] = await this.socket.receive();
        this.datagrams.push(decoder.decode(data).replace(/\n$/, ""));
      }
    } catch {
      // Closed.
    }
    this.datagrams.end();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    try {
      this.socket.close();
    } catch {
      // Already closed.
    }
    await withTimeout(this.#loop, WAIT_MS, "the UDP peer's socket to close");
  }
}

/**
 * Starts an in-process UDP server on a free port of 127.0.0.1; its log
 * lines go to `log`. `await using` stops it.
 */
export function startUdpServer(options: Partial<UdpServerOptions> = {}) {
  const log = new LineQueue();
  const server = UdpServer.start({
    host: "127.0.0.1",
    port: 0,
    print: (line) => log.push(line),
    ...options,
  });
  return inProcess(server, log);
}

/**
 * Starts an in-process inventory server on a free port of 127.0.0.1; its
 * log lines go to `log`. `await using` stops it.
 */
export async function startInventory(
  options: Partial<ServerOptions> = {},
) {
  const log = new LineQueue();
  const server = await InventoryServer.start({
    host: "127.0.0.1",
    port: 0,
    print: (line) => log.push(line),
    ...options,
  });
  return inProcess(server, log);
}

/**
 * Makes a self-signed leaf certificate for localhost and 127.0.0.1 with
 * openssl, the README's recipe, in a new temporary folder.
 * @returns the paths of cert.pem and key.pem, and the certificate's text
 */
export async function makeCertificate() {
  const folder = await Deno.makeTempDir();
  const certFile = `${folder}/cert.pem`;
  const keyFile = `${folder}/key.pem`;
  await using openssl = new Spawned(
    [
      "req",
      "-x509",
      "-newkey",
      "rsa:2048",
      "-nodes",
      "-days",
      "30",
      "-keyout",
      keyFile,
      "-out",
      certFile,
      "-subj",
      "/CN=localhost",
      "-addext",
      "basicConstraints=critical,CA:FALSE",
      "-addext",
      "subjectAltName=DNS:localhost,IP:127.0.0.1",
    ],
    {},
    "openssl",
  );
  const { success } = await openssl.status(30_000);
  if (!success) throw new Error(openssl.stderr.all.join("\n"));
  return { folder, certFile, keyFile, cert: await Deno.readTextFile(certFile) };
}

/** The resident memory of a process, in KiB (Linux), or undefined. */
export function residentKiB(pid: number): number | undefined {
  try {
    const status = Deno.readTextFileSync(`/proc/${pid}/status`);
    return Number(/VmRSS:\s+(\d+)/.exec(status)?.[1]);
  } catch {
    return undefined;
  }
}
