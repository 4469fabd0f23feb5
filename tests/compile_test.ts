/**
 * `deno task compile`: its arguments, the permissions each binary carries,
 * and (where Deno's runtime can be had) a compiled server and client that
 * chat. Offline, without DENORT_BIN, that last test is skipped and says why.
 * @module
 */

import { assert, assertEquals, assertMatch, assertThrows } from "@std/assert";
import {
  binaryName,
  compileArgs,
  compileFailure,
  parseCompileArgs,
  PROGRAMS,
  TARGETS,
} from "../build/compile.ts";
import { UsageError } from "../shared.ts";
import { bannerPort, Spawned, TestClient } from "./helpers.ts";

/** How long one `deno compile` may take: it may download Deno's runtime. */
const COMPILE_MS = 300_000;

Deno.test("compile builds every program for every platform by default, or fewer when asked", () => {
  const all = parseCompileArgs([]);
  assertEquals(all.programs, ["server", "client", "udp-server", "udp-client"]);
  assertEquals(all.targets, [...TARGETS]);
  assertEquals(all.outDir, "dist");
  const one = parseCompileArgs([
    "--program",
    "client",
    "--target",
    "x86_64-pc-windows-msvc",
  ]);
  assertEquals([one.programs, one.targets], [["client"], [
    "x86_64-pc-windows-msvc",
  ]]);
  assertEquals(parseCompileArgs(["--native"]).targets, [Deno.build.target]);
  const two = parseCompileArgs(["--program", "server", "--program=client"]);
  assertEquals(two.programs, ["server", "client"]);
  assertThrows(
    () => parseCompileArgs(["--program", "game"]),
    UsageError,
    'Unknown program "game"',
  );
  assertThrows(
    () => parseCompileArgs(["--target", "sparc-sun-solaris"]),
    UsageError,
    "Unknown target",
  );
});

Deno.test("compiled files are named so a person knows which to copy", () => {
  assertEquals(
    binaryName("client", "x86_64-pc-windows-msvc"),
    "socklab-client-x86_64-pc-windows-msvc.exe",
  );
  assertEquals(
    binaryName("udp-server", "aarch64-apple-darwin"),
    "socklab-udp-server-aarch64-apple-darwin",
  );
});

Deno.test("each binary carries the permissions its program needs and no more", () => {
  const flagsOf = (program: string) =>
    compileArgs(program, "x86_64-unknown-linux-gnu", "dist").filter((arg) =>
      /^--(allow|unstable)/.test(arg)
    );
  assertEquals(flagsOf("server"), [
    "--allow-net",
    "--allow-sys=networkInterfaces",
    "--allow-env=SOCKLAB_PASSWORD",
    "--allow-read",
    "--allow-write",
  ]);
  assertEquals(flagsOf("client"), [
    "--allow-net",
    "--allow-env=SOCKLAB_PASSWORD",
    "--allow-read",
  ]);
  assertEquals(flagsOf("udp-server"), [
    "--allow-net",
    "--allow-sys=networkInterfaces",
    "--allow-env=SOCKLAB_PASSWORD",
    "--unstable-net",
  ]);
  assertEquals(flagsOf("udp-client"), [
    "--allow-net",
    "--allow-env=SOCKLAB_PASSWORD",
    "--unstable-net",
  ]);
  assertEquals(
    compileArgs("udp-client", "x86_64-apple-darwin", "out").slice(-5),
    [
      "--target",
      "x86_64-apple-darwin",
      "--output",
      "out/socklab-udp-client-x86_64-apple-darwin",
      "udp_client.ts",
    ],
  );
  assert(
    Object.keys(PROGRAMS).every((program) =>
      compileArgs(program, TARGETS[0], "d").includes("--no-check")
    ),
  );
});

Deno.test("a failed runtime download is one clear line", () => {
  const offline =
    "error: Writing deno compile executable\nCaused by:\n 1: error sending request for url (https://example/denort.zip): dns error";
  assertEquals(
    compileFailure(offline, "x86_64-pc-windows-msvc"),
    "cannot download Deno's runtime for x86_64-pc-windows-msvc (no internet?): set DENORT_BIN to one downloaded elsewhere (see the README)",
  );
});

Deno.test("deno task compile type checks, then gets as far as the runtime for each file", async () => {
  const out = await Deno.makeTempDir();
  await using task = new Spawned([
    "task",
    "compile",
    "--program",
    "client",
    "--target",
    "x86_64-pc-windows-msvc",
    "--out",
    out,
  ]);
  const status = await task.status(COMPILE_MS);
  const file = `${out}/socklab-client-x86_64-pc-windows-msvc.exe`;
  assertEquals(task.stdout.all[0], "Checking client.ts");
  if (status.code === 0) {
    assertMatch(
      task.stdout.all[1],
      new RegExp(`^built {2}${file} {2}\\d+\\.\\d MB$`),
    );
  } else {
    // Offline: the module graph and the check passed; the download did not.
    assertEquals(task.stderr.all.filter((line) => line.startsWith("failed")), [
      `failed ${file}: cannot download Deno's runtime for x86_64-pc-windows-msvc (no internet?): set DENORT_BIN to one downloaded elsewhere (see the README)`,
    ]);
  }
  assertEquals(
    task.stdout.all.at(-1),
    `${status.code === 0 ? 1 : 0} of 1 built in ${out}/`,
  );
  await Deno.remove(out, { recursive: true });
});

/** Builds server and client for this machine; the reason when it cannot. */
async function buildNative(): Promise<{ dir: string } | { skip: string }> {
  const dir = await Deno.makeTempDir();
  for (const program of ["server", "client"]) {
    await using build = new Spawned(
      compileArgs(program, Deno.build.target, dir),
    );
    const { success } = await build.status(COMPILE_MS);
    if (!success) {
      await Deno.remove(dir, { recursive: true });
      return {
        skip: compileFailure(build.stderr.all.join("\n"), Deno.build.target),
      };
    }
  }
  return { dir };
}

const native = await buildNative();
if ("skip" in native) {
  console.log(`skipping the compiled-binary test: ${native.skip}`);
}

Deno.test({
  name: "a compiled server and client: --help, then a short chat",
  ignore: "skip" in native,
  async fn() {
    if (!("dir" in native)) return;
    const path = (program: string) =>
      `${native.dir}/${binaryName(program, Deno.build.target)}`;
    await using help = new Spawned(["--help"], {}, path("client"));
    assertEquals((await help.status()).code, 0);
    assertMatch(help.stdout.all.join("\n"), /USAGE:/);

    await using server = new Spawned(["--host", "127.0.0.1", "--port", "0"], {
      stdin: "piped",
    }, path("server"));
    const port = await bannerPort(server);
    await using watcher = await TestClient.join(port, "watcher");
    await using client = new Spawned(
      ["127.0.0.1", "--port", String(port), "--name", "binary"],
      { stdin: "piped" },
      path("client"),
    );
    await client.type("hello from a compiled client");
    assertEquals(
      await watcher.lines.waitFor(/^</),
      "<binary> hello from a compiled client",
    );
    await client.endInput();
    assertEquals((await client.status()).code, 0);
    await Deno.remove(native.dir, { recursive: true });
  },
});
