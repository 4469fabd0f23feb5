/**
 * What both benchmarks need: a socklab server started as its own process
 * (its port read from its banner), and what the kernel says of a
 * process's CPU time and memory.
 *
 * @module
 */

/** A server started by a benchmark. */
export interface StartedServer {
  port: number;
  pid: number;
  stop(): Promise<void>;
}

/**
 * Runs `deno run -A SCRIPT ARGS` from the repository root, waits for the
 * port in its banner, and keeps reading its log, so that a full pipe
 * never blocks the server.
 */
export async function startScript(
  script: string,
  args: string[],
): Promise<StartedServer> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", script, "--host", "127.0.0.1", "--port", "0", ...args],
    cwd: new URL("..", import.meta.url).pathname,
    stdin: "null",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const log = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  let port = 0;
  while (!port) {
    const { value, done } = await log.read();
    if (done) throw new Error(`${script} stopped before it listened`);
    text += value;
    port = Number(/listening on [\d.]+:(\d+)/.exec(text)?.[1] ?? 0);
  }
  (async () => {
    while (!(await log.read()).done);
  })();
  return {
    port,
    pid: child.pid,
    stop: async () => {
      child.kill("SIGTERM");
      await child.status;
    },
  };
}

/** CPU seconds a process has used (user + system), from /proc (Linux). */
export function cpuSeconds(pid: number | undefined): number | undefined {
  if (pid === undefined) return undefined;
  try {
    const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return (Number(fields[11]) + Number(fields[12])) / 100;
  } catch {
    return undefined;
  }
}

/** The value at percentile `p` of sorted numbers (0 when there are none). */
export function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return 0;
  const index = Math.min(
    sorted.length - 1,
    Math.floor((p / 100) * sorted.length),
  );
  return sorted[index];
}

/** A number rounded to `digits` decimals. */
export function round(value: number, digits = 3): number {
  return Number(value.toFixed(digits));
}
