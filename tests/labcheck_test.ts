/**
 * labcheck, run as a user runs it (`deno run -A labcheck/labcheck.ts`):
 * socklab's own programs pass every check, and each small broken python3
 * program in labcheck_faults/ fails exactly the checks of its one fault.
 */

import { assert, assertEquals, assertMatch } from "@std/assert";
import { splitCommand } from "../labcheck/client.ts";
import {
  bannerPort,
  closedPort,
  hasProgram,
  ROOT,
  Spawned,
  startInventory,
  startServer,
  startUdpServer,
} from "./helpers.ts";

const HAS_PYTHON = hasProgram("python3");
/** labcheck's own limit is 180 s; a run here takes under 40. */
const RUN_MS = 120_000;

type Finding = { check: string; outcome: string; text: string };
type Result = {
  code: number;
  findings: Finding[];
  stdout: string;
  stderr: string;
};

/** Runs labcheck with `args` and `--json`: its exit code and findings. */
async function labcheck(...args: string[]): Promise<Result> {
  await using run = Spawned.script("labcheck/labcheck.ts", [...args, "--json"]);
  const { code } = await run.status(RUN_MS);
  const stdout = run.stdout.all.join("\n");
  const stderr = run.stderr.all.join("\n");
  const json = run.stdout.all.find((line) => line.startsWith("{"));
  assert(json, `labcheck printed no JSON line:\n${stdout}\n${stderr}`);
  return { code, findings: JSON.parse(json!).findings, stdout, stderr };
}

/** The checks that ended with `outcome`, in order. */
const checks = (result: Result, outcome = "fail") =>
  result.findings.filter((f) => f.outcome === outcome).map((f) => f.check);

/** Asserts that nothing failed, and shows what did if something did. */
function assertAllPass(result: Result, least: number): void {
  const failed = result.findings.filter((f) => f.outcome === "fail");
  assertEquals(failed, [], JSON.stringify(result.findings, null, 1));
  assert(checks(result, "pass").length >= least, result.stdout);
  assertEquals(result.code, 0);
}

/** Starts a python3 fault program on a free port: `await using` kills it. */
async function startFault(file: string) {
  const program = new Spawned(
    [`${ROOT}tests/labcheck_faults/${file}`, "0"],
    {},
    "python3",
  );
  const port = await bannerPort(program);
  return {
    address: `127.0.0.1:${port}`,
    [Symbol.asyncDispose]: () => program[Symbol.asyncDispose](),
  };
}

Deno.test("labcheck: socklab's chat server passes every chat check", async () => {
  await using server = startServer({ quiet: true });
  const result = await labcheck("--chat", `127.0.0.1:${server.port}`);
  assertAllPass(result, 13);
});

Deno.test("labcheck: socklab's iterative server is served in turn", async () => {
  await using server = startServer({ quiet: true, iterative: true });
  const result = await labcheck(
    "--chat",
    `127.0.0.1:${server.port}`,
    "--iterative",
  );
  assertAllPass(result, 6);
  assert(checks(result, "pass").includes("in turn"));
});

Deno.test("labcheck: a concurrent check of an iterative server fails", async () => {
  await using server = startServer({ quiet: true, iterative: true });
  const result = await labcheck("--chat", `127.0.0.1:${server.port}`);
  assertEquals(result.code, 1);
  assert(checks(result).length > 0, result.stdout);
});

Deno.test("labcheck: socklab's UDP relay, month service and inventory pass", async (t) => {
  await t.step("udp-chat", async () => {
    await using relay = startUdpServer();
    assertAllPass(await labcheck("--udp-chat", `127.0.0.1:${relay.port}`), 4);
  });
  await t.step("month", async () => {
    await using month = startUdpServer({ service: "month" });
    assertAllPass(await labcheck("--month", `127.0.0.1:${month.port}`), 4);
  });
  await t.step("inventory", async () => {
    await using inventory = await startInventory();
    const result = await labcheck("--inventory", `127.0.0.1:${inventory.port}`);
    assertAllPass(result, 6);
    // labcheck takes its items away again.
    assertEquals(inventory.server.stock, {});
  });
});

Deno.test("labcheck: socklab's client passes every client check", async () => {
  const command =
    `${Deno.execPath()} run -A ${ROOT}client.ts {host} --port {port}`;
  const result = await labcheck("--client", command);
  assertAllPass(result, 6);
  // It cleans escape sequences: the note says so.
  const note = result.findings.find((f) => f.check === "escapes");
  assertMatch(note?.text ?? "", /removes escape sequences/);
});

// Each broken program, and the checks its one fault fails.
const FAULTS: [string, string, string[]][] = [
  ["chat", "chat_ok.py", []],
  ["chat", "chat_recv_as_message.py", [
    "in pieces",
    "two in one write",
    "split character",
    "long line",
  ]],
  ["chat", "chat_broadcast_raises.py", ["vanishing client"]],
  ["chat", "chat_dies_on_reset.py", ["vanishing client"]],
  ["chat", "chat_blocking_broadcast.py", ["slow reader"]],
  ["month", "month_ok.py", []],
  ["month", "month_crash.py", ["bad requests"]],
  ["month", "month_off_by_one.py", ["bad requests"]],
  ["udp-chat", "udp_duplicates.py", ["no duplicates"]],
];
for (const [mode, file, expected] of FAULTS) {
  Deno.test({
    name: `labcheck --${mode} on ${file} fails ${
      expected.join(", ") || "nothing"
    }`,
    ignore: !HAS_PYTHON,
    async fn() {
      await using fault = await startFault(file);
      const result = await labcheck(`--${mode}`, fault.address);
      assertEquals(checks(result), expected, result.stdout);
      assertEquals(result.code, expected.length > 0 ? 1 : 0);
    },
  });
}

const CLIENT_FAULTS: [string, string[]][] = [
  ["client_ok.py", []],
  ["client_line_per_recv.py", ["in pieces", "split character"]],
  ["client_utf8_crash.py", ["split character"]],
  ["client_spins.py", ["server closes"]],
  ["client_lockstep.py", ["no turns"]],
];
for (const [file, expected] of CLIENT_FAULTS) {
  Deno.test({
    name: `labcheck --client on ${file} fails ${
      expected.join(", ") || "nothing"
    }`,
    ignore: !HAS_PYTHON,
    async fn() {
      const command =
        `python3 ${ROOT}tests/labcheck_faults/${file} {host} {port}`;
      const result = await labcheck("--client", command);
      assertEquals(checks(result), expected, result.stdout);
    },
  });
}

Deno.test("labcheck: a failure names the lesson and the README section", async () => {
  await using fault = await startFault("chat_recv_as_message.py");
  await using run = Spawned.script("labcheck/labcheck.ts", [
    "--chat",
    fault.address,
  ]);
  assertEquals((await run.status(RUN_MS)).code, 1);
  const report = run.stdout.all.join("\n");
  assertMatch(
    report,
    /✘ a line sent in two pieces arrived as two messages: TCP is a byte stream, so keep bytes until "\\n" \(README: The protocol\)/,
  );
  assertMatch(report, /\d+ passed, 4 failed/);
  // Every README section a report names is in the README.
  const readme = await Deno.readTextFile(`${ROOT}README.md`);
  for (const [, section] of report.matchAll(/\(README: ([^)]+)\)/g)) {
    assert(readme.includes(`# ${section}\n`), `no README section "${section}"`);
  }
});

Deno.test("labcheck: a dead server gets one clear line, exit 1, no stack trace", async () => {
  const port = closedPort();
  const result = await labcheck("--chat", `127.0.0.1:${port}`);
  assertEquals(result.code, 1);
  assertEquals(checks(result), ["connects"]);
  assertMatch(result.findings[0].text, /cannot connect .*connection refused/);
  assertEquals(result.stderr, "");
});

Deno.test("labcheck: a silent UDP service ends the run quickly", async () => {
  const silent = Deno.listenDatagram({
    hostname: "127.0.0.1",
    port: 0,
    transport: "udp",
  });
  try {
    const { port } = silent.addr as Deno.NetAddr;
    const result = await labcheck("--month", `127.0.0.1:${port}`);
    assertEquals(result.code, 1);
    assertEquals(checks(result), ["answers"]);
  } finally {
    silent.close();
  }
});

Deno.test("labcheck: what a client under test prints is cleaned in the report", async () => {
  // A "client" that prints an escape sequence on stderr and exits at once.
  const command =
    `python3 -c "import sys;sys.stderr.write('\\x1b[2Jboom {port}\\n')"`;
  await using run = Spawned.script("labcheck/labcheck.ts", [
    "--client",
    command,
  ]);
  assertEquals((await run.status(RUN_MS)).code, 1);
  const report = run.stdout.all.join("\n");
  assertMatch(report, /exited \(code 0\) without connecting .*boom/);
  assert(!report.includes("\x1b"), report);
});

Deno.test("labcheck: --help, and a bad command line exits 2", async (t) => {
  await t.step("--help", async () => {
    await using run = Spawned.script("labcheck/labcheck.ts", ["--help"]);
    assertEquals((await run.status()).code, 0);
    assertMatch(run.stdout.all.join("\n"), /--chat <HOST:PORT>/);
  });
  for (
    const [args, message] of [
      [[], /Say what to check/],
      [["--chat", "9999"], /Invalid address "9999": use HOST:PORT/],
      [["--chat", "a:1", "--month", "a:2"], /one program at a time/],
      [["--client", "python3 client.py"], /needs \{port\}/],
      [["--month", "a:1", "--iterative"], /--iterative goes with --chat/],
    ] as const
  ) {
    await t.step(args.join(" ") || "(nothing)", async () => {
      await using run = Spawned.script("labcheck/labcheck.ts", [...args]);
      assertEquals((await run.status()).code, 2);
      assertMatch(run.stderr.all.join("\n"), message);
    });
  }
});

Deno.test("labcheck --client splits its command as a shell would", () => {
  assertEquals(splitCommand(`python3 -c "print(\\"a b\\")" {port}`), [
    "python3",
    "-c",
    'print("a b")',
    "{port}",
  ]);
  assertEquals(splitCommand(`a 'b c' "d'e" my\\ client.py --x="1 2" ""`), [
    "a",
    "b c",
    "d'e",
    "my client.py",
    "--x=1 2",
    "",
  ]);
});

Deno.test({
  name: "labcheck --client stops what the client started, too",
  ignore: !HAS_PYTHON || Deno.build.os !== "linux",
  async fn() {
    // sh starts python3, which never exits (it spins): both must go.
    const client = `${ROOT}tests/labcheck_faults/client_spins.py`;
    const command = `sh -c 'python3 ${client} "$0" "$1"; true' {host} {port}`;
    const result = await labcheck("--client", command);
    assertEquals(checks(result), ["server closes"], result.stdout);
    const left = new Deno.Command("pgrep", { args: ["-f", client] })
      .outputSync();
    assertEquals(new TextDecoder().decode(left.stdout), "", "still running");
  },
});
