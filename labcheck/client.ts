/**
 * labcheck's checks of a chat client: labcheck is the server. It runs the
 * client's command, types into its stdin, and reads what it prints.
 * @module
 */

import { cutInCharacter, Lines, readLines, TcpPeer } from "./peer.ts";
import { token, UTF8_TEXT, within } from "./peer.ts";
import { LESSONS, quote, type Report } from "./report.ts";

const PROTOCOL = "The protocol";
const READING = "Reading the code";
/** A client started by a command may take a while to start (deno, java). */
const CONNECT_MS = 20_000;
const SHOW_MS = 3000; // how long a line may take to show
const EXIT_MS = 5000; // how long the client may take to notice a close
const SPIN_LINES = 50; // lines printed after the close that make a spin

/** The client checks, each a line in `report`. */
export async function checkClient(report: Report, command: string) {
  using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { port } = listener.addr as Deno.NetAddr;
  const words = splitCommand(command)
    .map((word) => word.replaceAll("{host}", "127.0.0.1"))
    .map((word) => word.replaceAll("{port}", String(port)));
  let child;
  try {
    child = new Deno.Command(words[0], {
      args: words.slice(1),
      // `deno task` runs in socklab's folder: the command, where it was typed.
      cwd: Deno.env.get("INIT_CWD") ?? Deno.cwd(),
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
      // As at a terminal: Python flushes each print, nobody paints.
      env: { PYTHONUNBUFFERED: "1", NO_COLOR: "1" },
    }).spawn();
  } catch (error) {
    return report.fail(
      "starts",
      `cannot run ${quote(words[0])}: ${(error as Error).message}`,
      "give --client the command that starts your client, with {host} and {port}",
      "Checking your own program: labcheck",
    );
  }
  const program = new Program(child);
  // A client that asks for a name before it connects takes this line; one
  // that asks after, too; others send it as a first message.
  await program.type("lcname");
  try {
    await new ClientChecks(report, program).run(listener);
  } finally {
    program.stop();
  }
}

/**
 * Splits a command line into words as a POSIX shell does, without running
 * one: '...' is taken as it is, "..." and \ escape the next character.
 */
export function splitCommand(command: string): string[] {
  const words: string[] = [];
  let word: string | undefined;
  let quote = "";
  for (let i = 0; i < command.length; i++) {
    const c = command[i];
    const escapes = c === "\\" && quote !== "'" &&
      (quote === "" || /["\\$`]/.test(command[i + 1]));
    if (escapes) word = (word ?? "") + command[++i];
    else if (c === quote) quote = "";
    else if (quote === "" && (c === '"' || c === "'")) {
      [quote, word] = [c, word ?? ""];
    } else if (quote === "" && /\s/.test(c)) {
      if (word !== undefined) words.push(word);
      word = undefined;
    } else word = (word ?? "") + c;
  }
  if (word !== undefined) words.push(word);
  return words;
}

/** Programs started and not yet stopped: a signal to labcheck stops them. */
const running = new Set<Program>();
/** Stops every client labcheck started (Ctrl-C, or labcheck's time limit). */
export function stopClients(): void {
  for (const program of running) program.stop();
}

/** A process and all it started (Linux: its descendants, from /proc). */
function processTree(pid: number): number[] {
  const children = new Map<number, number[]>();
  try {
    for (const entry of Deno.readDirSync("/proc")) {
      if (!/^\d+$/.test(entry.name)) continue;
      const stat = Deno.readTextFileSync(`/proc/${entry.name}/stat`);
      const parent = Number(
        stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1],
      );
      children.set(parent, [...children.get(parent) ?? [], Number(entry.name)]);
    }
  } catch {
    // No /proc (macOS, Windows), or a process that ended meanwhile.
  }
  const tree = [pid];
  for (let i = 0; i < tree.length; i++) {
    tree.push(...children.get(tree[i]) ?? []);
  }
  return tree;
}

/** The client under test: its input, its output, and whether it runs. */
class Program {
  readonly stdout = new Lines();
  readonly stderr = new Lines();
  readonly #input: WritableStreamDefaultWriter<Uint8Array>;
  exitCode?: number;
  readonly exited: Promise<void>;

  constructor(readonly child: Deno.ChildProcess) {
    this.#input = child.stdin.getWriter();
    running.add(this);
    readLines(child.stdout, this.stdout).then(() => this.stdout.end());
    readLines(child.stderr, this.stderr).then(() => this.stderr.end());
    this.exited = child.status.then((status) => {
      this.exitCode = status.code;
      this.stdout.wake();
    });
  }

  /** Types a line into the client (a closed stdin is ignored). */
  async type(line: string): Promise<void> {
    const written = this.#input.write(new TextEncoder().encode(line + "\n"));
    await within(written.catch(() => {}), 2000);
  }

  /** The client's last words on stderr, for a failure's message. */
  lastError(): string {
    const last = this.stderr.kept.filter((line) => line.trim()).at(-1);
    return last ? ` (it printed ${quote(last, 100)} on stderr)` : "";
  }

  /** Seconds of CPU the client has used, where the system tells (Linux). */
  cpuSeconds(): number | undefined {
    try {
      const stat = Deno.readTextFileSync(`/proc/${this.child.pid}/stat`);
      const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      return (Number(fields[11]) + Number(fields[12])) / 100; // utime, stime
    } catch {
      return undefined;
    }
  }

  /** Kills the client, and what it started (`sh client.sh`, `go run`). */
  stop(): void {
    running.delete(this);
    this.#input.close().catch(() => {});
    const [, ...started] = processTree(this.child.pid);
    try {
      this.child.kill("SIGKILL");
    } catch {
      // It has exited.
    }
    for (const pid of started) {
      try {
        Deno.kill(pid, "SIGKILL");
      } catch {
        // It has exited.
      }
    }
  }
}

class ClientChecks {
  server?: TcpPeer; // labcheck's end of the client's connection
  receiving = true; // false once it has shown it no longer receives
  constructor(readonly report: Report, readonly program: Program) {}

  /** Did a line with `sent` show in the client's output in time? */
  shows(sent: string, ms = SHOW_MS): Promise<boolean> {
    return this.program.stdout.has(sent, ms);
  }

  async run(listener: Deno.Listener): Promise<void> {
    const { report, program } = this;
    const accepting = listener.accept();
    const conn = await within(
      Promise.race([accepting, program.exited.then(() => undefined)]),
      CONNECT_MS,
    ).catch(() => undefined);
    if (!conn) {
      const why = program.exitCode === undefined
        ? `did not connect in ${CONNECT_MS / 1000} s`
        : `exited (code ${program.exitCode}) without connecting`;
      return report.fail(
        "connects",
        `the client ${why}${program.lastError()}`,
        "connect to the host and port given on the command line",
        "Quick start",
      );
    }
    const server = this.server = TcpPeer.accepted(conn);
    report.pass("connects", "the client connected");
    await server.write("* welcome to labcheck's chat server\n");
    if (!await this.typed()) return;
    if (!await this.printsWhileWaiting()) {
      return report.skip(
        "the other output checks",
        "they need a client that prints while it waits for input",
      );
    }
    await this.inPieces();
    await this.escapes();
    await this.splitCharacter();
    await this.serverCloses();
  }

  async typed(): Promise<boolean> {
    const sent = token();
    await this.program.type(`hello ${sent}`);
    if (await this.server!.lines.has(sent, 5000)) {
      this.report.pass(
        "sends",
        "a line typed into the client reached the server",
      );
      return true;
    }
    this.report.fail(
      "sends",
      `a line typed into the client did not reach the server in 5 s${this.program.lastError()}`,
      'send each line the user types, with its "\\n"',
      PROTOCOL,
    );
    return false;
  }

  async printsWhileWaiting(): Promise<boolean> {
    const [answer, incoming] = [token(), token()];
    // An answer to what it sent: a client that takes turns prints it, and
    // then waits for input again.
    await this.server!.write(`<lcServer> got it ${answer}\n`);
    if (!await this.shows(answer)) {
      this.report.fail(
        "receives",
        "a line from the server never showed in the client's output",
        "print each line the server sends",
        PROTOCOL,
      );
      return false;
    }
    await this.server!.write(`<lcServer> hello ${incoming}\n`);
    if (await this.shows(incoming)) {
      this.report.pass(
        "no turns",
        "a line from the server shows while the client waits for input",
      );
      return true;
    }
    this.report.fail(
      "no turns",
      "a line from the server did not show while the client waited for input: it takes turns",
      "read the socket and the keyboard at once: a thread for each, select(), or async tasks",
      READING,
    );
    return false;
  }

  async inPieces(): Promise<void> {
    const [start, end] = [token(), token()];
    await this.server!.writeInPieces([
      `<lcServer> split ${start}-`,
      `-${end} whole\n`,
    ]);
    const output = this.program.stdout;
    const whole = () => output.with(start).some((line) => line.includes(end));
    await output.until(() => whole() || output.count(end) > 0, SHOW_MS);
    if (whole()) {
      return this.report.pass(
        "in pieces",
        "a line the server wrote in two pieces showed as one line",
      );
    }
    this.report.fail(
      "in pieces",
      output.count(start) > 0
        ? "a line the server wrote in two pieces showed as two lines"
        : "a line the server wrote in two pieces did not show",
      'print a line only once its "\\n" has come: TCP may cut a line anywhere',
      PROTOCOL,
    );
  }

  async escapes(): Promise<void> {
    const sent = token();
    await this.server!.write(
      `<lcServer> ${sent} \x1b[2J\x1b]0;hacked\x07 end\n`,
    );
    await this.shows(sent);
    const [line] = this.program.stdout.with(sent);
    if (line === undefined) return;
    this.report.note(
      "escapes",
      line.includes("\x1b")
        ? "the client prints escape sequences as they come: a peer can clear the screen or retitle the window (socklab's clients remove them)"
        : "the client removes escape sequences from what it prints",
    );
  }

  async splitCharacter(): Promise<void> {
    const [sent, after] = [token(), token()];
    const line = `<lcServer> utf8 ${sent} ${UTF8_TEXT}\n`;
    await this.server!.writeInPieces(cutInCharacter(line));
    await this.server!.write(`<lcServer> after ${after}\n`);
    const output = this.program.stdout;
    await this.shows(after);
    const intact = output.with(sent).some((line) => line.includes(UTF8_TEXT));
    const goesOn = output.count(after) > 0;
    if (intact && goesOn) {
      return this.report.pass(
        "split character",
        "a UTF-8 character split across writes shows intact, and the client goes on",
      );
    }
    this.receiving = goesOn;
    const [got] = output.with(sent);
    const what = !goesOn
      ? `after a UTF-8 character split across writes, the client showed nothing more${this.program.lastError()}`
      : `a UTF-8 character split across writes showed garbled: ${
        quote(got ?? "")
      }`;
    this.report.fail(
      "split character",
      what,
      LESSONS.splitCharacter,
      PROTOCOL,
    );
  }

  async serverCloses(): Promise<void> {
    const { program, report } = this;
    const check = "server closes";
    if (program.exitCode !== undefined) {
      return report.skip(
        check,
        `the client had exited already (code ${program.exitCode})`,
      );
    }
    if (!this.receiving) {
      return report.skip(check, "the client no longer receives (see above)");
    }
    const [out, err] = [program.stdout.total, program.stderr.total];
    const cpu = program.cpuSeconds();
    this.server!.close();
    const start = performance.now();
    const printed = () =>
      program.stdout.total - out + program.stderr.total - err;
    // It exits, or goes on; a spinning one is known soon.
    const spun = () => printed() > SPIN_LINES * 100;
    const exited = () => program.exitCode !== undefined;
    // (Its output may end a moment before its exit is known: then, wait.)
    const spinning = program.stdout.until(() => exited() || spun(), EXIT_MS)
      .then(async (yes) => {
        if (!yes) await within(program.exited, EXIT_MS);
      });
    await within(Promise.race([program.exited, spinning]), EXIT_MS);
    if (program.exitCode !== undefined) {
      return report.pass(
        check,
        `the client exits when the server closes (code ${program.exitCode})`,
      );
    }
    const seconds = (performance.now() - start) / 1000;
    const used = cpu === undefined ? undefined : program.cpuSeconds()! - cpu;
    const lesson =
      'recv() that returns nothing (b"" in Python) means the server has closed: say so, and stop';
    const busy = seconds >= 1 && (used ?? 0) > seconds / 2; // a CPU, half
    if (printed() > SPIN_LINES || busy) {
      const what = printed() > SPIN_LINES
        ? `printed ${printed()} lines in ${
          seconds < 1 ? "under a second" : `${seconds.toFixed(0)} s`
        }`
        : `used ${Math.round(100 * used! / seconds)}% of a CPU`;
      return report.fail(
        check,
        `after the server closed, the client spins: it ${what}`,
        lesson,
        PROTOCOL,
      );
    }
    // What it printed since: a message, or the traceback of a crash.
    const said = [...program.stdout.since(out), ...program.stderr.since(err)]
      .filter((line) => line.trim() !== "");
    const crash = said.find((line) =>
      /Traceback|^\w*(Error|Exception)\b/.test(line)
    );
    if (crash) {
      return report.fail(
        check,
        `when the server closed, the client crashed: ${quote(crash)}`,
        lesson,
        PROTOCOL,
      );
    }
    if (said.length > 0) {
      return report.pass(
        check,
        `the client says the server closed: ${quote(said.at(-1)!)}`,
      );
    }
    report.fail(
      check,
      `the client did not notice the server closed, in ${EXIT_MS / 1000} s`,
      lesson,
      PROTOCOL,
    );
  }
}
