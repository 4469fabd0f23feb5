/**
 * The inventory's data file when saves fail, when two servers want it,
 * and when a save was killed; and the bounds on what the stock holds.
 */

import { assert, assertEquals, assertMatch } from "@std/assert";
import { bannerPort, Spawned, startInventory, TestClient } from "./helpers.ts";

/** Sends one request and parses its JSON reply. */
async function ask(client: TestClient, request: string) {
  await client.send(request);
  return JSON.parse(await client.next());
}

async function fileStock(path: string) {
  return JSON.parse(await Deno.readTextFile(path));
}

Deno.test("after a failed save the file and memory agree: a refused change is in neither, every acknowledged one in both", async () => {
  const folder = await Deno.makeTempDir();
  const dataFile = `${folder}/stock.json`;
  try {
    await using service = await startInventory({ dataFile });
    await using one = await TestClient.connect(service.port);
    await using two = await TestClient.connect(service.port);
    assertEquals((await ask(one, "add Soap 5")).ok, true);
    // A folder where the temporary file goes: the next saves fail, even
    // for root.
    await Deno.mkdir(`${dataFile}.tmp`);
    await Deno.writeTextFile(`${dataFile}.tmp/keep`, "");
    await Promise.all([one.send("add Tea 3"), two.send("add Rice 2")]);
    for (const client of [one, two]) {
      const reply = JSON.parse(await client.next());
      assertEquals(reply.ok, false);
      assertMatch(reply.error, /^cannot save the inventory: /);
    }
    assertEquals((await ask(two, "view")).inventory, { Soap: 5 });
    assertEquals(await fileStock(dataFile), { Soap: 5 });
    await Deno.remove(`${dataFile}.tmp`, { recursive: true });
    assertEquals((await ask(two, "add Rice 2")).inventory, {
      Soap: 5,
      Rice: 2,
    });
    assertEquals(await fileStock(dataFile), { Soap: 5, Rice: 2 });
    const left = [...Deno.readDirSync(folder)].map((entry) => entry.name);
    assertEquals(left.sort(), ["stock.json", "stock.json.lock"]);
  } finally {
    await Deno.remove(folder, { recursive: true });
  }
});

Deno.test("two servers cannot share a data file; once the first is killed, the next may take it", async () => {
  const folder = await Deno.makeTempDir();
  const dataFile = `${folder}/stock.json`;
  const args = ["--service", "inventory", "--data", dataFile, "--port", "0"];
  try {
    // A temporary file left by a save that was killed: removed at start.
    await Deno.writeTextFile(`${dataFile}.tmp`, "{");
    await using first = Spawned.script("server.ts", args);
    await bannerPort(first);
    assert(
      !(await exists(`${dataFile}.tmp`)),
      "the old temporary file is gone",
    );
    await using second = Spawned.script("server.ts", args);
    assertEquals((await second.status()).code, 1);
    assertEquals(
      second.stderr.all.join("\n"),
      `Cannot use "${dataFile}": another server is using it (it holds "${dataFile}.lock")`,
    );
    first.kill("SIGKILL");
    await first.status();
    await using third = Spawned.script("server.ts", args);
    await bannerPort(third);
  } finally {
    await Deno.remove(folder, { recursive: true });
  }
});

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}

Deno.test("the stock holds at most 1000 items, and no item whose name shows nothing", async () => {
  await using service = await startInventory();
  await using client = await TestClient.connect(service.port);
  const adds = Array.from({ length: 1001 }, (_, i) => `add item${i} 1\n`);
  await client.write(adds.join(""));
  let last;
  for (let i = 0; i < 1001; i++) last = JSON.parse(await client.next());
  assertEquals(last, {
    ok: false,
    error: "the inventory holds 1000 different items at most",
  });
  assertEquals(Object.keys(service.server.stock).length, 1000);
  const invisible = await ask(client, "add \u200b\u200d 5");
  assertEquals(invisible, {
    ok: false,
    error: "an item name needs a visible character",
  });
});
