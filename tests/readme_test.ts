/**
 * The README's "What to copy" programs, as a student copies them: each
 * saved alone in an empty folder (no deno.json, no shared.ts) and run.
 * @module
 */

import { assertEquals } from "@std/assert";
import {
  closedPort,
  ROOT,
  Spawned,
  TestClient,
  UdpPeer,
  WAIT_MS,
} from "./helpers.ts";

/** The `ts` code blocks of the README's "What to copy", in order. */
async function programsToCopy(): Promise<string[]> {
  const readme = await Deno.readTextFile(`${ROOT}README.md`);
  const part = readme.slice(readme.indexOf("**What to copy.**"));
  const blocks = [...part.matchAll(/```ts\n([\s\S]*?)```/g)];
  return blocks.slice(0, 2).map(([, code]) => code);
}

/**
 * Saves `code` alone in a new folder, on a free port instead of 9999,
 * and runs it with `flags`, until it says it listens.
 */
async function runAlone(name: string, code: string, flags: string[]) {
  const folder = await Deno.makeTempDir();
  const port = closedPort();
  await Deno.writeTextFile(
    `${folder}/${name}`,
    code.replaceAll("9999", String(port)),
  );
  const program = new Spawned(["run", ...flags, name], { cwd: folder });
  await program.stdout.waitFor(/^listening on port \d+$/, 3 * WAIT_MS);
  return {
    port,
    async [Symbol.asyncDispose]() {
      await program[Symbol.asyncDispose]();
      await Deno.remove(folder, { recursive: true });
    },
  };
}

const [iterative, month] = await programsToCopy();

Deno.test("README: the iterative server to copy frames lines, and serves one client at a time", async () => {
  await using server = await runAlone("lab_server.ts", iterative, [
    "--allow-net",
  ]);
  await using amey = await TestClient.connect(server.port);
  // A line in two pieces, two lines in one write, a character cut in two.
  await amey.write("hel");
  await amey.write("lo\r\nsecond\n");
  await amey.write(new Uint8Array([0xc3]));
  await amey.write(new Uint8Array([0xa9, 0x0a]));
  assertEquals(await amey.next(), "you said: hello");
  assertEquals(await amey.next(), "you said: second");
  assertEquals(await amey.next(), "you said: é");
  // Karan waits in the backlog while Amey is served.
  await using karan = await TestClient.connect(server.port);
  await karan.send("waiting");
  await amey.send("ping");
  assertEquals(await amey.next(), "you said: ping");
  assertEquals(karan.lines.all, [], "Karan was served before Amey left");
  amey.close();
  assertEquals(await karan.next(), "you said: waiting");
  // A line with no end in sight is not kept: the connection is closed.
  await karan.write("x".repeat(5000));
  await karan.closedByServer();
});

Deno.test("README: without the one await, the same server serves clients at once", async () => {
  const concurrent = iterative.replace("await serve(conn);", "serve(conn);");
  await using server = await runAlone("lab_server.ts", concurrent, [
    "--allow-net",
  ]);
  await using amey = await TestClient.connect(server.port);
  await using karan = await TestClient.connect(server.port);
  await karan.send("not waiting");
  assertEquals(await karan.next(), "you said: not waiting");
  await amey.send("still here");
  assertEquals(await amey.next(), "you said: still here");
});

Deno.test("README: the UDP month service to copy answers 1 to 12, and nothing else as a month", async () => {
  await using server = await runAlone("month_server.ts", month, [
    "--allow-net",
    "--unstable-net",
  ]);
  await using peer = new UdpPeer(server.port);
  assertEquals(await peer.ask("3"), "3: March");
  assertEquals(await peer.ask("12\n"), "12: December");
  for (const wrong of ["0", "13", "-1", "abc", ""]) {
    assertEquals(await peer.ask(wrong), "send a month number from 1 to 12");
  }
});
