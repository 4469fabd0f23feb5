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
 * @param launcher a command to run it with, such as `taskset -c 1`
 */
export async function startScript(
  script: string,
  args: string[],
  launcher: string[] = [],
): Promise<StartedServer> {
  const [program, ...before] = [...launcher, Deno.execPath()];
  const child = new Deno.Command(program, {
    args: [
      ...before,
      "run",
      "-A",
      script,
      "--host",
      "127.0.0.1",
      "--port",
      "0",
      ...args,
    ],
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

/** Which cores the bench and the server run on, with --pin. */
export interface Pinning {
  /** The server's core (the last one). */
  serverCore: number;
  /** The bench's cores (the others), as taskset writes a list: "0-2". */
  benchCores: string;
  /** `taskset -c N`: what starts a process on the server's core. */
  launcher: string[];
}

let pinning: Promise<Pinning> | undefined;

/**
 * Moves this process (every thread) off the last core, once, and says how
 * to start the server on it: so the two do not take turns on one core,
 * and the server's CPU time is its own work, not waiting on the bench's.
 * @throws {Error} where that cannot be done (one core, no taskset)
 */
export function pinApart(): Promise<Pinning> {
  return pinning ??= pinOffLastCore();
}

async function pinOffLastCore(): Promise<Pinning> {
  const cores = navigator.hardwareConcurrency;
  if (cores < 2) throw new Error("--pin needs two cores or more");
  const serverCore = cores - 1;
  const benchCores = serverCore === 1 ? "0" : `0-${serverCore - 1}`;
  try {
    const { success } = await new Deno.Command("taskset", {
      args: ["-a", "-p", "-c", benchCores, String(Deno.pid)],
      stdout: "null",
      stderr: "null",
    }).output();
    if (!success) throw new Error("taskset failed");
  } catch {
    throw new Error(
      "--pin needs taskset (Linux, util-linux) and the right to use it",
    );
  }
  return {
    serverCore,
    benchCores,
    launcher: ["taskset", "-c", String(serverCore)],
  };
}

/** What the kernel says of a process's CPU time at one moment. */
export interface CpuSample {
  /** User + system seconds of the whole process, in 10 ms ticks. */
  seconds: number;
  /** Each live thread's time on a CPU, in nanosecond steps, by thread id. */
  threads: Map<string, number>;
}

/** A process's CPU time now, from /proc (Linux); undefined elsewhere. */
export function cpuSample(pid: number | undefined): CpuSample | undefined {
  if (pid === undefined) return undefined;
  try {
    const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    const seconds = (Number(fields[11]) + Number(fields[12])) / 100;
    return { seconds, threads: threadSeconds(pid) };
  } catch {
    return undefined;
  }
}

/**
 * Each thread's `se.sum_exec_runtime` from /proc/PID/task/TID/sched:
 * /proc/PID/stat counts in 10 ms ticks, too coarse for a short run.
 * Empty where the kernel does not show it.
 */
function threadSeconds(pid: number): Map<string, number> {
  const threads = new Map<string, number>();
  try {
    for (const task of Deno.readDirSync(`/proc/${pid}/task`)) {
      const sched = Deno.readTextFileSync(
        `/proc/${pid}/task/${task.name}/sched`,
      );
      const ms = /se\.sum_exec_runtime\s*:\s*([\d.]+)/.exec(sched)?.[1];
      if (ms !== undefined) threads.set(task.name, Number(ms) / 1000);
    }
  } catch {
    threads.clear();
  }
  return threads;
}

/**
 * CPU seconds used between two samples: to the nanosecond when every
 * thread of the first is still alive at the second (a thread that ended
 * takes its time with it), else in 10 ms ticks.
 */
export function cpuSecondsBetween(
  before: CpuSample | undefined,
  after: CpuSample | undefined,
): number | undefined {
  if (before === undefined || after === undefined) return undefined;
  const precise = before.threads.size > 0 &&
    [...before.threads.keys()].every((id) => after.threads.has(id));
  if (!precise) return after.seconds - before.seconds;
  let used = 0;
  for (const [id, seconds] of after.threads) {
    used += seconds - (before.threads.get(id) ?? 0);
  }
  return used;
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

/** A number rounded to `digits` decimals, or undefined. */
export function optionalRound(
  value: number | undefined,
  digits = 3,
): number | undefined {
  return value === undefined ? undefined : round(value, digits);
}
