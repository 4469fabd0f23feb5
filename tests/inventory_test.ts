/**
 * The inventory service: in-process over real sockets, as real processes
 * (with kill -9 and a restart), the client's menu and one-shot use, and nc.
 * @module
 */

import {
  assert,
  assertEquals,
  assertMatch,
  assertNotEquals,
} from "@std/assert";
import {
  bannerPort,
  closedPort,
  connectAll,
  hasProgram,
  Spawned,
  startInventory,
  TestClient,
  WAIT_MS,
} from "./helpers.ts";

const LOCAL = ["--host", "127.0.0.1", "--port", "0"];

/** Sends one request line and parses the JSON line that answers it. */
async function request(client: TestClient, line: string) {
  await client.send(line);
  return JSON.parse(await client.next());
}

Deno.test("inventory answers add, view and remove as JSON", async () => {
  await using service = await startInventory();
  await using client = await TestClient.connect(service.port);

  assertEquals(
    await request(client, '{"action":"add","item":"Soap","quantity":200}'),
    {
      ok: true,
      message: "Added 200 Soap(s) to the inventory.",
      inventory: { Soap: 200 },
    },
  );
  assertEquals(await request(client, '{"action":"view"}'), {
    ok: true,
    inventory: { Soap: 200 },
  });
  assertEquals(
    await request(client, '{"action":"remove","item":"Soap","quantity":180}'),
    {
      ok: true,
      message: "Removed 180 Soap(s) from the inventory.",
      inventory: { Soap: 20 },
    },
  );
  assertEquals(
    await request(client, '{"action":"remove","item":"Soap","quantity":50}'),
    {
      ok: false,
      error: "only 20 Soap in stock",
    },
  );
  assertEquals(
    await request(client, '{"action":"remove","item":"Soap","quantity":20}'),
    {
      ok: true,
      message: "Removed 20 Soap(s) from the inventory.",
      inventory: {},
    },
  );
  assertEquals(
    await request(client, '{"action":"remove","item":"Soap","quantity":1}'),
    {
      ok: false,
      error: "no Soap in stock",
    },
  );
});

Deno.test("inventory takes the same requests as text commands, for nc users", async () => {
  await using service = await startInventory();
  await using client = await TestClient.connect(service.port);

  assertEquals((await request(client, "add Soap 200")).inventory, {
    Soap: 200,
  });
  assertEquals(await request(client, "add Green Tea 5"), {
    ok: true,
    message: "Added 5 Green Tea(s) to the inventory.",
    inventory: { Soap: 200, "Green Tea": 5 },
  });
  assertEquals(await request(client, "VIEW"), {
    ok: true,
    inventory: { Soap: 200, "Green Tea": 5 },
  });
  assertEquals((await request(client, "remove Soap 50")).inventory, {
    Soap: 150,
    "Green Tea": 5,
  });
  const help = await request(client, "help");
  assertEquals(help.ok, true);
  assertMatch(help.message, /add ITEM QUANTITY/);
});

Deno.test("inventory serves many requests per connection and one connection per request", async () => {
  await using service = await startInventory();
  await using pipelined = await TestClient.connect(service.port);
  // Many requests in one write: each gets its own reply, in order.
  await pipelined.write("add Pen 1\nadd Pen 2\nadd Pen 3\nview\n");
  const replies = [];
  for (let i = 0; i < 4; i++) replies.push(JSON.parse(await pipelined.next()));
  assertEquals(replies.map((reply) => reply.inventory.Pen), [1, 3, 6, 6]);

  for (let i = 0; i < 5; i++) {
    await using once = await TestClient.connect(service.port);
    assertEquals((await request(once, "add Pen 1")).inventory.Pen, 7 + i);
  }
});

Deno.test("inventory ends with exactly 2000 after 20 clients each add 1 unit 100 times at once", async () => {
  await using service = await startInventory();
  await using group = await connectAll(service.port, 20);
  await Promise.all(group.clients.map(async (client) => {
    for (let i = 0; i < 100; i++) {
      assertEquals(
        (await request(client, '{"action":"add","item":"Soap","quantity":1}'))
          .ok,
        true,
      );
    }
  }));
  assertEquals(await request(group.clients[0], "view"), {
    ok: true,
    inventory: { Soap: 2000 },
  });
});

Deno.test("inventory answers each bad request with an error, changes nothing, and keeps the connection", async (t) => {
  await using service = await startInventory({ maxLineBytes: 200 });
  await using client = await TestClient.connect(service.port);
  await request(client, "add Soap 10");
  const quantityError =
    "the quantity must be a whole number from 1 to 1000000000";

  const cases: [string, string][] = [
    [
      "{bad",
      "malformed JSON: Expected property name or '}' in JSON at position 1 (line 1 column 2)",
    ],
    [
      '{"action":"add",',
      "malformed JSON: Expected double-quoted property name in JSON at position 16 (line 1 column 17)",
    ],
    ["[1,2]", 'a request must be a JSON object, like {"action":"view"}'],
    ['"view"', 'a request must be a JSON object, like {"action":"view"}'],
    ["42", 'a request must be a JSON object, like {"action":"view"}'],
    ["null", 'a request must be a JSON object, like {"action":"view"}'],
    ["{}", 'missing "action"'],
    ['{"action":7}', '"action" must be a string'],
    ['{"action":"fly"}', 'unknown action "fly": use add, remove, view, help'],
    ['{"action":"add","quantity":1}', 'missing "item"'],
    ['{"action":"add","item":"Soap"}', 'missing "quantity"'],
    ['{"action":"add","item":5,"quantity":1}', '"item" must be a string'],
    ['{"action":"add","item":"Soap","quantity":"5"}', quantityError],
    ['{"action":"add","item":"Soap","quantity":0}', quantityError],
    ['{"action":"add","item":"Soap","quantity":-3}', quantityError],
    ['{"action":"add","item":"Soap","quantity":1.5}', quantityError],
    ['{"action":"add","item":"Soap","quantity":1000000001}', quantityError],
    ['{"action":"add","item":"Soap","quantity":1e400}', quantityError],
    ['{"action":"add","item":"","quantity":1}', "an item name cannot be empty"],
    [
      '{"action":"add","item":"   ","quantity":1}',
      "an item name cannot be empty",
    ],
    [
      `{"action":"add","item":"${"x".repeat(65)}","quantity":1}`,
      "an item name is 64 characters at most",
    ],
    [
      '{"action":"add","item":"So\\u001b[2Jap","quantity":1}',
      "an item name cannot hold control characters",
    ],
    ["add Soap many", quantityError],
    ["add Soap 0", quantityError],
    ["add Soap", "usage: add ITEM QUANTITY"],
    ["remove", "usage: remove ITEM QUANTITY"],
    ["fly away", 'unknown action "fly": use add, remove, view, help'],
    ["x".repeat(300), "request too long (over 200 bytes)"],
  ];
  for (const [line, error] of cases) {
    await t.step(line.slice(0, 40), async () => {
      assertEquals(await request(client, line), { ok: false, error });
    });
  }
  assertEquals(await request(client, "view"), {
    ok: true,
    inventory: { Soap: 10 },
  }, "nothing changed");
});

Deno.test("inventory refuses an add that would pass Number.MAX_SAFE_INTEGER", async () => {
  const folder = await Deno.makeTempDir();
  const data = `${folder}/stock.json`;
  await Deno.writeTextFile(
    data,
    JSON.stringify({ Gold: Number.MAX_SAFE_INTEGER - 10 }),
  );
  await using service = await startInventory({ dataFile: data });
  await using client = await TestClient.connect(service.port);
  assertEquals(await request(client, "add Gold 11"), {
    ok: false,
    error: "cannot add: Gold would pass 9007199254740991 in stock",
  });
  assertEquals((await request(client, "add Gold 10")).inventory, {
    Gold: Number.MAX_SAFE_INTEGER,
  });
  await Deno.remove(folder, { recursive: true });
});

Deno.test("--data keeps the stock across restarts; a missing file starts empty", async () => {
  const folder = await Deno.makeTempDir();
  const data = `${folder}/stock.json`;
  {
    await using service = await startInventory({ dataFile: data });
    await using client = await TestClient.connect(service.port);
    assertEquals(await request(client, "view"), { ok: true, inventory: {} });
    await request(client, "add Soap 200");
    await request(client, "add Green Tea 5");
    // Saved before the reply was sent: the file holds it already.
    assertEquals(JSON.parse(await Deno.readTextFile(data)), {
      Soap: 200,
      "Green Tea": 5,
    });
  }
  await using again = await startInventory({ dataFile: data });
  await using client = await TestClient.connect(again.port);
  assertEquals(await request(client, "view"), {
    ok: true,
    inventory: { Soap: 200, "Green Tea": 5 },
  });
  await Deno.remove(folder, { recursive: true });
});

/** The names in a folder, sorted. */
async function namesIn(folder: string): Promise<string[]> {
  const names = [];
  for await (const entry of Deno.readDir(folder)) names.push(entry.name);
  return names.sort();
}

Deno.test("--data saves each change by renaming a new file over the old one, and leaves no temporary file", async () => {
  const folder = await Deno.makeTempDir();
  try {
    const data = `${folder}/stock.json`;
    await Deno.writeTextFile(data, '{"Soap": 1}\n');
    await using service = await startInventory({ dataFile: data });
    await using client = await TestClient.connect(service.port);
    // What the folder holds with the server running (a lock file, say):
    // after each save it holds that again, and no more.
    const files = await namesIn(folder);
    const changes: [string, Record<string, number>][] = [
      ["add Soap 199", { Soap: 200 }],
      ["add Green Tea 5", { Soap: 200, "Green Tea": 5 }],
      ["remove Soap 200", { "Green Tea": 5 }],
    ];
    for (const [line, stock] of changes) {
      const { ino } = await Deno.stat(data);
      assertEquals((await request(client, line)).inventory, stock);
      // Saved before the reply: the file holds the new stock, whole.
      assertEquals(JSON.parse(await Deno.readTextFile(data)), stock, line);
      assertNotEquals(
        (await Deno.stat(data)).ino,
        ino,
        `${line}: a new file took the old one's name (it was not rewritten in place)`,
      );
      assertEquals(await namesIn(folder), files, "no temporary file is left");
    }
    // Changes from many clients at once: still one whole file, no leftovers.
    await using group = await connectAll(service.port, 5);
    await Promise.all(
      group.clients.map((other) => request(other, "add Pen 1")),
    );
    assertEquals(JSON.parse(await Deno.readTextFile(data)), {
      "Green Tea": 5,
      Pen: 5,
    });
    assertEquals(await namesIn(folder), files);
  } finally {
    await Deno.remove(folder, { recursive: true });
  }
});

Deno.test("a change that cannot be saved is refused with an error, and undone: a following view does not show it", async () => {
  const folder = await Deno.makeTempDir();
  try {
    const data = `${folder}/stock.json`;
    await using service = await startInventory({ dataFile: data });
    await using client = await TestClient.connect(service.port);
    assertEquals((await request(client, "add Soap 5")).inventory, { Soap: 5 });
    const files = await namesIn(folder);
    // The data file's name now belongs to a folder, so the rename over it
    // fails. (Tests run as root, where permission bits stop no write.)
    await Deno.remove(data);
    await Deno.mkdir(data);
    const refused = "cannot save the inventory: it is a folder";
    assertEquals(await request(client, "add Soap 7"), {
      ok: false,
      error: refused,
    });
    assertEquals(await request(client, "add Green Tea 2"), {
      ok: false,
      error: refused,
    });
    assertEquals(await request(client, "remove Soap 5"), {
      ok: false,
      error: refused,
    }, "a remove that would empty the item, refused too");
    assertEquals(await request(client, "view"), {
      ok: true,
      inventory: { Soap: 5 },
    });
    await using other = await TestClient.connect(service.port);
    assertEquals((await request(other, "view")).inventory, { Soap: 5 });
    assertMatch(
      await service.log.waitFor(/cannot save/),
      /cannot save: it is a folder$/,
    );

    // Once the file can be saved again, the next change is saved, without
    // the refused ones.
    await Deno.remove(data);
    assertEquals((await request(client, "add Soap 1")).inventory, { Soap: 6 });
    assertEquals(JSON.parse(await Deno.readTextFile(data)), { Soap: 6 });
    assertEquals(await namesIn(folder), files, "no temporary file is left");
  } finally {
    await Deno.remove(folder, { recursive: true });
  }
});

Deno.test("server.ts refuses to start on a corrupt or unreadable data file, and leaves it as it is", async (t) => {
  const folder = await Deno.makeTempDir();
  const cases: [string, string, RegExp][] = [
    [
      "not JSON",
      '{"Soap": 20',
      /^Cannot load ".*": not valid JSON \(.*\)\. The file was left as it is\.$/,
    ],
    [
      "an array",
      "[1, 2]",
      /: not a JSON object like \{"Soap": 200\}\. The file was left as it is\.$/,
    ],
    [
      "a bad quantity",
      '{"Soap": -4}',
      /: "Soap" has -4, not a whole number of 1 or more\./,
    ],
  ];
  for (const [what, content, message] of cases) {
    await t.step(what, async () => {
      const data = `${folder}/${what.replaceAll(" ", "-")}.json`;
      await Deno.writeTextFile(data, content);
      await using server = Spawned.script("server.ts", [
        ...LOCAL,
        "--service",
        "inventory",
        "--data",
        data,
      ]);
      assertEquals((await server.status()).code, 1);
      assertEquals(server.stderr.all.length, 1);
      assertMatch(server.stderr.all[0], message);
      assertEquals(
        await Deno.readTextFile(data),
        content,
        "the file is unchanged",
      );
    });
  }
  await t.step("a folder", async () => {
    await using server = Spawned.script("server.ts", [
      ...LOCAL,
      "--service",
      "inventory",
      "--data",
      folder,
    ]);
    assertEquals((await server.status()).code, 1);
    assertEquals(server.stderr.all, [
      `Cannot read "${folder}": it is a folder`,
    ]);
  });
  await Deno.remove(folder, { recursive: true });
});

Deno.test("kill -9 during a stream of adds loses no acknowledged add", async () => {
  const folder = await Deno.makeTempDir();
  const data = `${folder}/stock.json`;
  const args = [...LOCAL, "--service", "inventory", "--data", data];
  const acknowledged = [0, 0, 0, 0];
  {
    await using server = Spawned.script("server.ts", args);
    const port = await bannerPort(server);
    await using group = await connectAll(port, acknowledged.length);
    let killed = false;
    const streams = group.clients.map(async (client, k) => {
      // Each client adds 1 of its own item, again and again, counting acks.
      while (true) {
        await client.send(`add item-${k} 1`).catch(() => {});
        const reply = await client.next().catch(() => undefined);
        if (reply === undefined) return;
        assertEquals(JSON.parse(reply).ok, true);
        acknowledged[k]++;
        if (!killed && acknowledged.reduce((a, b) => a + b) >= 400) {
          killed = true;
          server.kill("SIGKILL");
        }
      }
    });
    await Promise.all(streams);
    assertEquals((await server.status()).signal, "SIGKILL");
  }
  const saved = JSON.parse(await Deno.readTextFile(data));
  await using restarted = Spawned.script("server.ts", args);
  const port = await bannerPort(restarted);
  await using client = await TestClient.connect(port);
  const { inventory } = await request(client, "view");
  assertEquals(inventory, saved, "the restarted server loads the file");
  acknowledged.forEach((count, k) => {
    // Every acknowledged add is there; at most the one in flight more.
    const stored = inventory[`item-${k}`] ?? 0;
    assert(
      stored >= count && stored <= count + 1,
      `item-${k}: ${stored} stored, ${count} acknowledged`,
    );
  });
  await Deno.remove(folder, { recursive: true });
});

Deno.test("server.ts --service inventory prints its banner and stops cleanly on SIGTERM", async () => {
  await using server = Spawned.script("server.ts", [
    ...LOCAL,
    "--service",
    "inventory",
  ]);
  const port = await bannerPort(server);
  assertEquals(
    server.stdout.all[0],
    `socklab inventory service (concurrent: every client at once) listening on 127.0.0.1:${port}`,
  );
  assertEquals(
    await server.stdout.waitFor(/^ {2}deno/),
    `  deno run -A client.ts 127.0.0.1 --port ${port} --service inventory    or    nc 127.0.0.1 ${port}`,
  );
  await server.stdout.waitFor(/lives in memory/);
  server.kill("SIGTERM");
  assertEquals((await server.status()).code, 0);
});

/** Runs server.ts --service inventory with `flags`, on a free port. */
function spawnInventory(flags: string[]): Spawned {
  return Spawned.script("server.ts", [
    ...LOCAL,
    "--service",
    "inventory",
    ...flags,
  ]);
}

Deno.test("server.ts --service inventory --iterative answers one client at a time; the next one's requests wait, then are answered", async () => {
  await using server = spawnInventory(["--iterative"]);
  const port = await bannerPort(server);
  assertMatch(server.stdout.all[0], /\(iterative: one client at a time\)/);
  await using first = await TestClient.connect(port);
  assertEquals((await request(first, "add Soap 1")).inventory, { Soap: 1 });

  // The second connects and asks while the first is served: it waits in
  // the backlog, and the first's views never see its add.
  await using second = await TestClient.connect(port);
  await second.send("add Soap 10");
  for (let i = 0; i < 5; i++) {
    assertEquals(await request(first, "view"), {
      ok: true,
      inventory: { Soap: 1 },
    });
  }
  assertEquals(second.lines.all, [], "the second client waits unserved");

  first.close();
  await server.stdout.waitFor(/waiting for the next client in the backlog$/);
  assertEquals(JSON.parse(await second.next()), {
    ok: true,
    message: "Added 10 Soap(s) to the inventory.",
    inventory: { Soap: 11 },
  });
});

Deno.test("server.ts --service inventory --idle-timeout disconnects a silent client with a JSON error, and keeps an active one", async () => {
  await using server = spawnInventory(["--idle-timeout", "1"]);
  const port = await bannerPort(server);
  await using idle = await TestClient.connect(port);
  await using busy = await TestClient.connect(port);
  assertEquals((await request(idle, "add Soap 1")).ok, true);
  // The busy client keeps asking until the idle one is gone.
  const deadline = Date.now() + WAIT_MS;
  while (!idle.lines.ended && Date.now() < deadline) {
    assertEquals(await request(busy, "view"), {
      ok: true,
      inventory: { Soap: 1 },
    });
    if (idle.lines.all.length > 1) break;
  }
  assertEquals(JSON.parse(await idle.next()), {
    ok: false,
    error: "idle for 1 s: disconnecting",
  });
  await idle.closedByServer();
  await server.stdout.waitFor(/127\.0\.0\.1:\d+ disconnected \(idle\)$/);
  assertEquals((await request(busy, "add Soap 2")).inventory, { Soap: 3 });
});

Deno.test("server.ts --service inventory --max-clients refuses the client over the limit with a JSON error, until a place comes free", async () => {
  await using server = spawnInventory(["--max-clients", "2"]);
  const port = await bannerPort(server);
  await using one = await TestClient.connect(port);
  await using two = await TestClient.connect(port);
  // A reply to each: both are being served.
  assertEquals((await request(one, "add Soap 1")).ok, true);
  assertEquals((await request(two, "add Soap 1")).ok, true);

  await using three = await TestClient.connect(port);
  assertEquals(JSON.parse(await three.next()), {
    ok: false,
    error: "server full",
  });
  await three.closedByServer();
  await server.stdout.waitFor(/refused 127\.0\.0\.1:\d+: server full$/);

  one.close();
  await server.stdout.waitFor(/disconnected \(closed\)$/);
  await using four = await TestClient.connect(port);
  assertEquals((await request(four, "view")).inventory, { Soap: 2 });
});

/** Runs client.ts --service inventory against 127.0.0.1:port. */
function spawnInventoryClient(port: number, words: string[] = []): Spawned {
  return Spawned.script("client.ts", [
    "127.0.0.1",
    "--port",
    String(port),
    "--service",
    "inventory",
    ...words,
  ], {
    stdin: "piped",
  });
}

Deno.test("client.ts --service inventory: the lab's menu, asking again on bad answers", async () => {
  await using service = await startInventory();
  await using client = spawnInventoryClient(service.port);
  for (
    const line of [
      "9",
      "1",
      "",
      "Soap",
      "many",
      "0",
      "200",
      "1",
      "Green Tea",
      "5",
      "3",
      "Soap",
      "50",
      "2",
      "4",
    ]
  ) {
    await client.type(line);
  }
  assertEquals((await client.status()).code, 0);
  const menu = [
    "",
    "1. Add item",
    "2. View inventory",
    "3. Remove item",
    "4. Exit",
  ];
  const table = [
    "Item       Quantity",
    "---------  --------",
    "Green Tea         5",
    "Soap            150",
  ];
  assertEquals(client.stdout.all, [
    `socklab inventory at 127.0.0.1:${service.port}`,
    ...menu,
    "Please choose 1, 2, 3 or 4.",
    ...menu,
    "Please enter an item name.",
    "Please enter a whole number from 1 to 1000000000.",
    "Please enter a whole number from 1 to 1000000000.",
    "Added 200 Soap(s) to the inventory.",
    "Item  Quantity",
    "----  --------",
    "Soap       200",
    ...menu,
    "Added 5 Green Tea(s) to the inventory.",
    "Item       Quantity",
    "---------  --------",
    "Green Tea         5",
    "Soap            200",
    ...menu,
    "Removed 50 Soap(s) from the inventory.",
    ...table,
    ...menu,
    ...table,
    ...menu,
  ]);
});

Deno.test("client.ts --service inventory one-shot: prints the reply; exit 0, or 1 on an error", async (t) => {
  await using service = await startInventory();
  await t.step("add", async () => {
    await using client = spawnInventoryClient(service.port, [
      "add",
      "Green",
      "Tea",
      "5",
    ]);
    assertEquals((await client.status()).code, 0);
    assertEquals(client.stdout.all, [
      "Added 5 Green Tea(s) to the inventory.",
      "Item       Quantity",
      "---------  --------",
      "Green Tea         5",
    ]);
  });
  await t.step("view", async () => {
    await using client = spawnInventoryClient(service.port, ["view"]);
    assertEquals((await client.status()).code, 0);
    assertEquals(client.stdout.all.at(-1), "Green Tea         5");
  });
  await t.step("remove more than there is", async () => {
    await using client = spawnInventoryClient(service.port, [
      "remove",
      "Green",
      "Tea",
      "6",
    ]);
    assertEquals((await client.status()).code, 1);
    assertEquals(client.stderr.all, ["Error: only 5 Green Tea in stock"]);
  });
  await t.step("no server", async () => {
    const port = closedPort();
    await using client = spawnInventoryClient(port, ["view"]);
    assertEquals((await client.status()).code, 1);
    assertMatch(
      client.stderr.all[0],
      /^Cannot connect to "127\.0\.0\.1:\d+": connection refused/,
    );
  });
});

const NC_MISSING = !hasProgram("nc");
if (NC_MISSING) {
  console.log(
    "skipping the inventory nc test: nc (netcat-openbsd) is not installed; .ci/run installs it",
  );
}

Deno.test({
  name: "nc is an inventory client with the text commands",
  ignore: NC_MISSING,
  async fn() {
    await using server = Spawned.script("server.ts", [
      ...LOCAL,
      "--service",
      "inventory",
    ]);
    const port = await bannerPort(server);
    await using nc = new Spawned(["-N", "127.0.0.1", String(port)], {
      stdin: "piped",
    }, "nc");
    await nc.type("add Soap 200");
    await nc.type("remove Soap 500");
    await nc.type("view");
    await nc.endInput();
    assertEquals((await nc.status()).code, 0);
    assertEquals(nc.stdout.all, [
      '{"ok":true,"message":"Added 200 Soap(s) to the inventory.","inventory":{"Soap":200}}',
      '{"ok":false,"error":"only 200 Soap in stock"}',
      '{"ok":true,"inventory":{"Soap":200}}',
    ]);
  },
});
