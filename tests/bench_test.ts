/**
 * The benchmarks, run small: their reports are checked for what they
 * count, never for speed (the figures live in the README).
 * @module
 */

import { assert, assertEquals, assertMatch, assertThrows } from "@std/assert";
import { parseBenchArgs } from "../bench/bench.ts";
import { UsageError } from "../shared.ts";
import { hasProgram, Spawned, WAIT_MS, withTimeout } from "./helpers.ts";

/**
 * How long a bench run may take: the longest, --compare with two rounds,
 * takes about 20 s on the project's machine.
 */
const BENCH_MS = 120_000;

/** Runs a bench script with --json and parses each line it prints. */
async function benchJson(script: string, args: string[]) {
  await using run = new Spawned(["run", "-A", script, ...args, "--json"]);
  const status = await run.status(BENCH_MS);
  assertEquals(status.code, 0, run.stderr.all.join("\n"));
  return run.stdout.all.map((line) => JSON.parse(line));
}

Deno.test("deno task bench, small: every message reaches every other client, whole and in order", async () => {
  const [report] = await benchJson("bench/bench.ts", [
    "--clients",
    "4",
    "--messages",
    "25",
    "--warmup",
    "5",
  ]);
  assertEquals(report.target, "server.ts");
  assertEquals(
    report.warmup,
    5,
    "a warm-up of 5 messages a sender, not counted",
  );
  assertEquals(report.expected, 4 * 25 * 3);
  assertEquals(report.delivered, report.expected);
  assertEquals([report.lost, report.garbled, report.outOfOrder], [0, 0, 0]);
  assert(report.deliveriesPerSecond > 0);
  assert(
    report.latencyMs.p50 <= report.latencyMs.p99 &&
      report.latencyMs.p99 <= report.latencyMs.max,
  );
  assertEquals(report.connect, "all", "every connection opened at once");
  assertMatch(report.notes[0], /with its defaults but --rate-limit 0: /);
  assert(
    !/--quiet|--max-pending|--max-clients/.test(report.notes[0]),
    "a small load needs no other flag raised",
  );
  assertEquals(report.notes.length, 1, "the warm-up arrived in full");
  if (Deno.build.os === "linux") {
    assert(
      report.memoryKiB.idle > 0 &&
        report.memoryKiB.peak >= report.memoryKiB.idle,
    );
    assert(report.serverCpuSeconds >= 0);
  }
});

Deno.test("deno task bench --rate and --senders pace and limit the senders", async () => {
  const [report] = await benchJson("bench/bench.ts", [
    "--clients",
    "3",
    "--senders",
    "1",
    "--messages",
    "5",
    "--rate",
    "50",
  ]);
  assertEquals(report.expected, 5 * 2);
  assertEquals(report.delivered, 10);
  assertEquals(report.warmup, 5, "by default the warm-up is the same load");
  assert(report.seconds >= 0.08, "5 messages at 50 a second take about 0.1 s");
});

Deno.test("deno task bench --connect batched connects 8 at a time, and raises --max-pending only for a burst above it", async () => {
  const [report] = await benchJson("bench/bench.ts", [
    "--clients",
    "2",
    "--messages",
    "10000",
    "--warmup",
    "0",
    "--connect",
    "batched",
  ]);
  assertEquals(report.connect, "batched");
  assertEquals([report.delivered, report.lost], [20000, 0]);
  assertMatch(
    report.notes[0],
    /--rate-limit 0 --max-pending \d+: .*more than the default 1 MiB/,
  );
});

Deno.test("deno task bench --iterative serves the clients one at a time", async () => {
  const [report] = await benchJson("bench/bench.ts", [
    "--clients",
    "3",
    "--messages",
    "5",
    "--iterative",
  ]);
  assertEquals(report.target, "server.ts --iterative");
  assertEquals(report.clients, 3);
  assert(report.waitInBacklogMs.max >= report.waitInBacklogMs.p50);
});

Deno.test({
  name: "deno task bench --command drives another relay (ncat --chat)",
  ignore: !hasProgram("ncat"),
  async fn() {
    const [report] = await benchJson("bench/bench.ts", [
      "--clients",
      "3",
      "--messages",
      "5",
      "--command",
      "ncat -l --chat 127.0.0.1 {port}",
    ]);
    assertEquals(report.target, "ncat -l --chat 127.0.0.1 {port}");
    assertEquals(report.expected, 30);
    assert(report.delivered > 0);
  },
});

/**
 * A relay that welcomes each client and passes on the bench's barrier
 * line; the other lines it drops, or, trickling, passes on one at a time,
 * every 200 ms.
 */
function startFaultyRelay(mode: "drop" | "trickle") {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const conns: Deno.Conn[] = [];
  const queue: { line: string; from: Deno.Conn }[] = [];
  const relayTo = async (from: Deno.Conn, text: string) => {
    const bytes = new TextEncoder().encode(text);
    for (const other of conns) {
      if (other !== from) await other.write(bytes).catch(() => 0);
    }
  };
  const trickle = setInterval(() => {
    const next = queue.shift();
    if (next) relayTo(next.from, `${next.line}\n`);
  }, 200);
  const serving = (async () => {
    for await (const conn of listener) {
      conns.push(conn);
      await conn.write(new TextEncoder().encode("* welcome\n"));
      (async () => {
        const buffer = new Uint8Array(65536);
        try {
          for (let n; (n = await conn.read(buffer)) !== null;) {
            const text = new TextDecoder().decode(buffer.subarray(0, n));
            if (text.includes("bench:")) await relayTo(conn, text);
            else if (mode === "trickle") {
              const lines = text.split("\n").filter((line) => line);
              queue.push(...lines.map((line) => ({ line, from: conn })));
            }
          }
        } catch {
          // The bench closed it.
        }
      })();
    }
  })();
  return {
    port: (listener.addr as Deno.NetAddr).port,
    async [Symbol.asyncDispose]() {
      clearInterval(trickle);
      listener.close();
      conns.forEach((conn) => conn.close());
      await withTimeout(
        serving.catch(() => {}),
        WAIT_MS,
        "the faulty relay to stop",
      );
    },
  };
}

Deno.test("deno task bench says when a relay loses its warm-up and its messages", async () => {
  await using relay = startFaultyRelay("drop");
  const [report] = await benchJson("bench/bench.ts", [
    "--clients",
    "3",
    "--messages",
    "2",
    "--warmup",
    "2",
    "--host",
    "127.0.0.1",
    "--port",
    String(relay.port),
  ]);
  assertEquals([report.delivered, report.lost], [0, 12]);
  assertEquals(report.notes, [
    "warm-up: 0 of 12 messages delivered before it went quiet",
    "not every message arrived: the run ended when nothing more came for 1 s; the time and rate above run to the last delivery",
  ]);
});

Deno.test("deno task bench stops at --timeout a relay that delivers, but too slowly", async () => {
  await using relay = startFaultyRelay("trickle");
  const [report] = await benchJson("bench/bench.ts", [
    "--clients",
    "3",
    "--messages",
    "20",
    "--warmup",
    "0",
    "--timeout",
    "2",
    "--host",
    "127.0.0.1",
    "--port",
    String(relay.port),
  ]);
  assert(
    report.seconds > 1,
    "lines kept coming, one every 200 ms, so a quiet second never came",
  );
  assert(report.lost > 0);
  assertEquals(report.notes, [
    "not every message arrived: the run ended at the timeout (2 s); the time and rate above run to the last delivery",
  ]);
});

Deno.test("deno task bench --compare runs server.ts and another relay in turn, and compares their medians", async () => {
  // The other relay: a second server.ts, started by its command line.
  const other =
    `${Deno.execPath()} run -A server.ts --host 127.0.0.1 --port {port} --quiet --rate-limit 0`;
  const [comparison] = await benchJson("bench/bench.ts", [
    "--clients",
    "3",
    "--messages",
    "10",
    "--warmup",
    "2",
    "--compare",
    other,
    "--rounds",
    "2",
  ]);
  assertEquals(comparison.rounds, 2);
  assertEquals(
    comparison.relays.map((relay: { target: string }) => relay.target),
    ["server.ts", other],
  );
  for (const relay of comparison.relays) {
    assertEquals(relay.runs.length, 2, "one run a round");
    assertEquals([relay.lost, relay.garbled], [0, 0]);
    assertEquals(
      relay.runs.map((run: { delivered: number }) => run.delivered),
      [60, 60],
    );
    const { min, median, max } = relay.deliveriesPerSecond;
    assert(min <= median && median <= max);
  }
  if (Deno.build.os === "linux") {
    const [ours, theirs] = comparison.relays.map((
      relay: { cpuMsPer1000Deliveries: { median: number } },
    ) => relay.cpuMsPer1000Deliveries.median);
    assertEquals(
      comparison.cpuRatio,
      Number((ours / theirs).toFixed(2)),
    );
  }
});

Deno.test("deno task bench --compare prints a report a person reads", async () => {
  await using run = new Spawned([
    "run",
    "-A",
    "bench/bench.ts",
    "--clients",
    "2",
    "--messages",
    "3",
    "--warmup",
    "1",
    "--compare",
    `${Deno.execPath()} run -A server.ts --host 127.0.0.1 --port {port} --quiet --rate-limit 0`,
    "--rounds",
    "1",
  ]);
  assertEquals(
    (await run.status(BENCH_MS)).code,
    0,
    run.stderr.all.join("\n"),
  );
  const report = run.stdout.all.join("\n");
  assertMatch(
    report,
    /server\.ts and ".*server\.ts --host.*" in turn, 1 run each/,
  );
  assertMatch(report, /^ {2}lost 0, garbled 0 \(all runs\)$/m);
  if (Deno.build.os === "linux") {
    assertMatch(report, /ms per 1,000 deliveries \(median; /);
    assertMatch(report, /CPU per delivery is [\d.]+ times that of/);
  }
});

Deno.test({
  name:
    "deno task bench on a terminal redraws one progress line, naming the round and the relay",
  ignore: !hasProgram("script"),
  async fn() {
    // script(1) gives the bench a terminal. At 5 messages a second, each
    // warm-up and run lasts about a second: past the 500 ms of a redraw.
    const bench = [
      Deno.execPath(),
      "run -A bench/bench.ts --clients 2 --messages 5 --rate 5 --rounds 1",
      `--compare '${Deno.execPath()} run -A server.ts --port {port} --quiet'`,
    ].join(" ");
    await using run = new Spawned(
      ["-qfec", `stty cols 80; ${bench}`, "/dev/null"],
      {},
      "script",
    );
    assertEquals(
      (await run.status(BENCH_MS)).code,
      0,
      run.stdout.all.join("\n"),
    );
    // The line reader here splits at "\r" too: each redraw is a line.
    const redraws = run.stdout.all.filter((line) => line.startsWith("round "));
    const ours = redraws.filter((part) =>
      part.startsWith("round 1/1, server.ts: ")
    );
    const theirs = redraws.filter((part) =>
      part.startsWith("round 1/1, deno: ")
    );
    assert(ours.length > 0 && theirs.length > 0, redraws.join(" | "));
    const clearToEnd = "\x1b[K";
    for (const part of redraws) {
      assert(part.endsWith(clearToEnd), `${part}: not cleared to its end`);
      assertMatch(
        part.slice(0, -clearToEnd.length),
        /^round 1\/1, (server\.ts|deno): (warm-up, not measured:|deliveries) \d+\/\d+ \(\d+%\)$/,
      );
    }
  },
});

Deno.test("deno task bench: --compare, --rounds and --pin are checked", () => {
  assertEquals(parseBenchArgs(["--compare", "ncat -l {port}"]).rounds, 5);
  assertThrows(
    () => parseBenchArgs(["--rounds", "3"]),
    UsageError,
    "--rounds goes with --compare",
  );
  assertThrows(
    () => parseBenchArgs(["--compare", "x", "--command", "y"]),
    UsageError,
    "leave out --host, --port and --command",
  );
  assertThrows(
    () => parseBenchArgs(["--compare", "x", "--iterative"]),
    UsageError,
    "leave out --iterative",
  );
  assertThrows(
    () => parseBenchArgs(["--pin", "--host", "127.0.0.1", "--port", "9999"]),
    UsageError,
    "--pin starts the server",
  );
  assertThrows(
    () => parseBenchArgs(["--compare", "x", "--rounds", "0"]),
    UsageError,
  );
  assertEquals(parseBenchArgs([]).connect, "all");
  assertEquals(
    parseBenchArgs(["--compare", "ncat -l {port}"]).connect,
    "batched",
    "a relay's backlog may be short",
  );
  assertThrows(
    () => parseBenchArgs(["--connect", "slowly"]),
    UsageError,
    'Invalid --connect "slowly": use one of all, batched',
  );
  assertThrows(
    () => parseBenchArgs(["--clients", "1"]),
    UsageError,
    'Invalid --clients "1": use a whole number from 2 to 20000',
  );
});

Deno.test({
  name: "deno task bench --pin runs the server on a core of its own",
  ignore: Deno.build.os !== "linux" || !hasProgram("taskset") ||
    navigator.hardwareConcurrency < 2,
  async fn() {
    const [report] = await benchJson("bench/bench.ts", [
      "--clients",
      "3",
      "--messages",
      "5",
      "--pin",
    ]);
    assertEquals(report.delivered, 30);
    const last = navigator.hardwareConcurrency - 1;
    assertEquals(
      report.notes.at(-1),
      `pinned: the server runs on core ${last} alone, the bench on core ${
        last === 1 ? "0" : `0-${last - 1}`
      }`,
    );
  },
});

Deno.test("deno task bench --pin without taskset says what it needs", async () => {
  const empty = await Deno.makeTempDir();
  try {
    await using run = new Spawned(
      ["run", "-A", "bench/bench.ts", "--clients", "2", "--pin"],
      { env: { PATH: empty } },
    );
    assertEquals((await run.status()).code, 1);
    assertMatch(
      run.stderr.all.join("\n"),
      /^bench failed: --pin needs (taskset|two cores)/m,
    );
  } finally {
    await Deno.remove(empty);
  }
});

Deno.test("deno task bench --command names a program that is not there", async () => {
  await using run = new Spawned([
    "run",
    "-A",
    "bench/bench.ts",
    "--command",
    "no-such-relay -l {port}",
  ]);
  assertEquals((await run.status()).code, 1);
  assertEquals(run.stderr.all, [
    'bench failed: cannot start "no-such-relay -l {port}": no program "no-such-relay" here',
  ]);
});

Deno.test("deno task bench:udp, small: echo and month answer every request", async () => {
  const reports = await benchJson("bench/bench_udp.ts", [
    "--clients",
    "2",
    "--requests",
    "20",
  ]);
  assertEquals(reports.map((report) => report.service), ["echo", "month"]);
  for (const report of reports) {
    assertEquals([report.sent, report.answered, report.lossPercent], [
      40,
      40,
      0,
    ]);
    assert(report.roundTripMs.p50 <= report.roundTripMs.max);
  }
});

Deno.test("deno task bench:udp --drop measures the loss it causes", async () => {
  const [report] = await benchJson("bench/bench_udp.ts", [
    "--service",
    "echo",
    "--clients",
    "1",
    "--requests",
    "40",
    "--drop",
    "1",
    "--timeout",
    "20",
  ]);
  assertEquals([report.sent, report.answered, report.lossPercent], [
    40,
    0,
    100,
  ]);
});
