#!/usr/bin/env -S deno run -A --unstable-net
/**
 * socklab's UDP benchmark: request rate, loss and round-trip time against
 * udp_server.ts's echo and month services. Each client sends a request,
 * waits for its reply (or a timeout, which counts as a loss), then sends
 * the next: a closed loop, as the month client works.
 *
 * ```sh
 * deno task bench:udp                       # echo, then month
 * deno task bench:udp --service month --clients 20 --requests 500
 * ```
 *
 * @module
 */

import {
  cpuSample,
  cpuSecondsBetween,
  optionalRound,
  percentile,
  round,
  startScript,
} from "./measure.ts";
import { argsOrExit, type FlagRow, parseFlags } from "../shared.ts";

const FLAGS = {
  service: { choices: ["echo", "month", "both"], default: "both" },
  clients: { range: [1, 1000], default: "10" },
  requests: { range: [1, 1_000_000], default: "1000" },
  timeout: { range: [1, 60_000], default: "1000" },
  drop: { range: [0, 1, "number"], default: "0" },
  json: { on: true },
} satisfies Record<string, FlagRow>;

const USAGE = `socklab bench:udp: request rate, loss and round trips over UDP

USAGE:
  deno task bench:udp [OPTIONS]

OPTIONS:
      --service <NAME>   echo, month, or both (default both)
      --clients <N>      Sockets sending at once (default 10)
      --requests <N>     Requests each client sends (default 1000)
      --timeout <MS>     A reply later than this counts as lost (default 1000)
      --drop <P>         Start the server with --drop P, to see loss measured
      --json             One machine-readable line per service
  -h, --help             Show this help`;

/** What to run. */
export interface UdpBenchOptions {
  services: ("echo" | "month")[];
  clients: number;
  requests: number;
  timeoutMs: number;
  drop: number;
  json: boolean;
  help: boolean;
}

/** @throws {UsageError} for a bad flag */
export function parseUdpBenchArgs(args: string[]): UdpBenchOptions {
  const flags = parseFlags(args, FLAGS, 0);
  const service = flags.service as "echo" | "month" | "both";
  return {
    services: service === "both" ? ["echo", "month"] : [service],
    clients: flags.clients as number,
    requests: flags.requests as number,
    timeoutMs: flags.timeout as number,
    drop: flags.drop as number,
    json: flags.json === true,
    help: flags.help,
  };
}

/** The numbers of one service's run. */
export interface UdpBenchReport {
  service: string;
  clients: number;
  sent: number;
  answered: number;
  lossPercent: number;
  seconds: number;
  requestsPerSecond: number;
  roundTripMs: { p50: number; p95: number; p99: number; max: number };
  serverCpuSeconds?: number;
  notes: string[];
}

/** Starts udp_server.ts for a service, with the rate limit off. */
async function startServer(service: string, drop: number) {
  const flags = [
    "--rate-limit",
    "0",
    ...(drop > 0 ? ["--drop", String(drop)] : []),
  ];
  const server = await startScript("udp_server.ts", [
    "--service",
    service,
    ...flags,
  ]);
  const note = `udp_server.ts started with ${
    flags.join(" ")
  }: the default rate limit (20 datagrams a second a peer) is far below this load`;
  return { ...server, note };
}

/** One client's closed loop: a request, its reply or a timeout, the next. */
async function clientLoop(
  port: number,
  service: string,
  index: number,
  options: UdpBenchOptions,
  roundTrips: number[],
): Promise<number> {
  const socket = Deno.listenDatagram({
    hostname: "127.0.0.1",
    port: 0,
    transport: "udp",
  });
  const server: Deno.NetAddr = {
    transport: "udp",
    hostname: "127.0.0.1",
    port,
  };
  const encoder = new TextEncoder();
  const decoder = new TextDecoder();
  let answered = 0;
  let waiting: { expect: string; resolve: (ok: boolean) => void } | undefined;
  const receiving = (async () => {
    try {
      while (true) {
        const [data] = await socket.receive();
        const reply = decoder.decode(data).trimEnd();
        if (waiting && reply.startsWith(waiting.expect)) waiting.resolve(true);
      }
    } catch {
      // Closed at the end.
    }
  })();
  try {
    for (let seq = 0; seq < options.requests; seq++) {
      // Month: "3" answers "3: March"; echo: the request itself.
      const month = (seq % 12) + 1;
      const request = service === "month" ? String(month) : `e ${index} ${seq}`;
      const expect = service === "month" ? `${month}: ` : request;
      const start = performance.now();
      let timer: ReturnType<typeof setTimeout> | undefined;
      const replied = new Promise<boolean>((resolve) => {
        waiting = { expect, resolve };
        timer = setTimeout(() => resolve(false), options.timeoutMs);
      });
      await socket.send(encoder.encode(request), server);
      const ok = await replied;
      clearTimeout(timer);
      waiting = undefined;
      if (ok) {
        answered++;
        roundTrips.push(performance.now() - start);
      }
    }
  } finally {
    socket.close();
    await receiving;
  }
  return answered;
}

/** Runs the closed-loop load against one service. */
export async function runUdpBench(
  service: "echo" | "month",
  options: UdpBenchOptions,
): Promise<UdpBenchReport> {
  const server = await startServer(service, options.drop);
  try {
    const roundTrips: number[] = [];
    const cpuBefore = cpuSample(server.pid);
    const start = performance.now();
    const answered = await Promise.all(
      Array.from(
        { length: options.clients },
        (_, i) => clientLoop(server.port, service, i, options, roundTrips),
      ),
    );
    const seconds = (performance.now() - start) / 1000;
    const cpuAfter = cpuSample(server.pid);
    const sent = options.clients * options.requests;
    const total = answered.reduce((a, b) => a + b, 0);
    const sorted = roundTrips.sort((a, b) => a - b);
    return {
      service,
      clients: options.clients,
      sent,
      answered: total,
      lossPercent: round((100 * (sent - total)) / sent),
      seconds: round(seconds),
      requestsPerSecond: Math.round(total / seconds),
      roundTripMs: {
        p50: round(percentile(sorted, 50)),
        p95: round(percentile(sorted, 95)),
        p99: round(percentile(sorted, 99)),
        max: round(sorted.at(-1) ?? 0),
      },
      serverCpuSeconds: optionalRound(cpuSecondsBetween(cpuBefore, cpuAfter)),
      notes: [server.note],
    };
  } finally {
    await server.stop();
  }
}

async function main(): Promise<void> {
  const options = argsOrExit(parseUdpBenchArgs, USAGE);
  for (const service of options.services) {
    const report = await runUdpBench(service, options);
    if (options.json) {
      console.log(JSON.stringify(report));
      continue;
    }
    const rtt = report.roundTripMs;
    console.log(
      `socklab bench:udp: the ${service} service, ${report.clients} clients x ${options.requests} requests, one at a time each`,
    );
    console.log(
      `answered     ${report.answered} of ${report.sent} in ${report.seconds} s = ${report.requestsPerSecond} a second; loss ${report.lossPercent}%`,
    );
    console.log(
      `round trip   p50 ${rtt.p50} ms, p95 ${rtt.p95} ms, p99 ${rtt.p99} ms, max ${rtt.max} ms`,
    );
    if (report.serverCpuSeconds !== undefined) {
      console.log(`server CPU   ${report.serverCpuSeconds} s`);
    }
    report.notes.forEach((note) => console.log(`note: ${note}`));
  }
}

if (import.meta.main) main();
