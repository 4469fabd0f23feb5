/**
 * client.ts against hostile and broken peers: servers of the test's own
 * that send escape sequences, odd JSON, TLS, half lines and resets, or
 * that close, stall or never confirm; and how the client leaves, with
 * which exit code. Every client is a real process on a real socket.
 * @module
 */

import { assert, assertEquals, assertMatch } from "@std/assert";
import { writeAll } from "../shared.ts";
import { parseClientArgs } from "../client.ts";
import {
  bannerPort,
  hasProgram,
  LineQueue,
  makeCertificate,
  pumpLines,
  Spawned,
  startServer,
  TestClient,
  WAIT_MS,
} from "./helpers.ts";

/** The longest Ctrl-C waits for the server to confirm (client.ts). */
const LEAVE_TIMEOUT_MS = 3000;
// deno-lint-ignore no-control-regex -- looking for control bytes
const CONTROLS = /[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]/;

/** Settles as `promise` does, or fails once `ms` have passed. */
async function withTimeout<T>(
  promise: Promise<T>,
  what: string,
  ms = WAIT_MS,
): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out: ${what}`)), ms);
  });
  try {
    return await Promise.race([promise, late]);
  } finally {
    clearTimeout(timer);
  }
}

/** A spawned script's exit, within a time limit. */
function exited(run: Spawned, ms = WAIT_MS): Promise<Deno.CommandStatus> {
  return withTimeout(run.status(), "the process to exit", ms);
}

/** One connection accepted by a fake server: lines in, text out. */
class Peer {
  readonly lines = new LineQueue();
  readonly pumped: Promise<void>;
  constructor(readonly conn: Deno.Conn) {
    this.pumped = pumpLines((buffer) => conn.read(buffer), this.lines);
  }
  async write(text: string | Uint8Array): Promise<void> {
    const bytes = typeof text === "string"
      ? new TextEncoder().encode(text)
      : text;
    await writeAll(this.conn, bytes);
  }
  close(): void {
    try {
      this.conn.close();
    } catch {
      // Closed already.
    }
  }
}

/**
 * A server of the test's own on a free port of 127.0.0.1: it plays
 * `serve` with each connection, then closes it. `await using` stops it
 * and fails the test if a `serve` failed.
 */
function fakeServer(serve: (peer: Peer) => Promise<void>) {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const peers: Peer[] = [];
  const served: Promise<void>[] = [];
  const accepting = (async () => {
    try {
      for await (const conn of listener) {
        const peer = new Peer(conn);
        peers.push(peer);
        served.push(serve(peer).finally(() => peer.close()));
      }
    } catch {
      // The listener was closed: the test is over.
    }
  })();
  return {
    port: listener.addr.port,
    async [Symbol.asyncDispose]() {
      listener.close();
      for (const peer of peers) peer.close();
      await accepting;
      await withTimeout(Promise.all(served), "the fake server to finish");
      await Promise.all(peers.map((peer) => peer.pumped));
    },
  };
}

/** client.ts against 127.0.0.1:port, input piped from the test. */
function client(port: number, args: string[] = []): Spawned {
  return Spawned.script("client.ts", [
    "127.0.0.1",
    "--port",
    String(port),
    ...args,
  ], { stdin: "piped" });
}

/** A python3 program as a peer: its first line of output is its port. */
async function python(code: string, args: string[] = []) {
  const run = new Spawned(["-c", code, ...args], { stdin: "piped" }, "python3");
  const port = Number(await run.stdout.next());
  return { run, port };
}

const PYTHON_MISSING = !hasProgram("python3");
const STDBUF_MISSING = !hasProgram("stdbuf");
const OPENSSL_MISSING = !hasProgram("openssl");
if (PYTHON_MISSING || OPENSSL_MISSING || STDBUF_MISSING) {
  console.log(
    "skipping some hostile-peer tests: python3, openssl or stdbuf (coreutils) is not installed; .ci/run installs the first two",
  );
}

// ---------------------------------------------------------------------------
// What a server sends never reaches the terminal uncleaned
// ---------------------------------------------------------------------------

Deno.test("inventory client prints a hostile server's replies cleaned, whatever their JSON types", async (t) => {
  let reply = "";
  // Answers each request line with `reply`, as an inventory server would.
  await using server = fakeServer(async (peer) => {
    await peer.lines.next();
    await peer.write(reply + "\n");
    await peer.lines.waitForEnd();
  });
  const view = async (json: unknown) => {
    reply = JSON.stringify(json);
    await using run = client(server.port, ["--service", "inventory", "view"]);
    const { code } = await exited(run);
    const output = [...run.stdout.all, ...run.stderr.all];
    assert(!output.some((line) => CONTROLS.test(line)), output.join("\n"));
    assert(!output.some((line) => line.includes("[object")), output.join("\n"));
    return { code, stdout: run.stdout.all, stderr: run.stderr.all };
  };

  await t.step(
    "escape sequences in the message, item names and counts",
    async () => {
      const { code, stdout } = await view({
        ok: true,
        message: "\x1b[2J\x1b]0;pwned\x07Added\u202e",
        inventory: {
          "\x1b[31mSoap": { n: 1 },
          "Tea\r<teacher> hi": "5\x1b[0m",
          Rice: 7,
        },
      });
      assertEquals(code, 0);
      assertEquals(stdout, [
        "Added",
        "Item             Quantity",
        "---------------  --------",
        "Rice                    7",
        'Soap              {"n":1}',
        "Tea<teacher> hi         5",
      ]);
    },
  );
  await t.step("an error that is an object, not a string", async () => {
    const { code, stderr } = await view({
      ok: false,
      error: { code: 7, text: "\x1b[2Jno" },
    });
    assertEquals(code, 1);
    assertEquals(stderr, ['Error: {"code":7,"text":"\\u001b[2Jno"}']);
  });
  await t.step("a number for a message, a list for the stock", async () => {
    const { code, stdout } = await view({
      ok: true,
      message: 42,
      inventory: ["a\x1b[1mb"],
    });
    assertEquals(code, 0);
    assertEquals(stdout, ["42", '["a\\u001b[1mb"]']);
  });
  await t.step("an error with no reason", async () => {
    const { code, stderr } = await view({ ok: false });
    assertEquals(code, 1);
    assertEquals(stderr, ["Error: no reason given"]);
  });
});

Deno.test({
  name:
    "client.ts says in words that a certificate is for another name, and prints none of the escape sequences in that name",
  ignore: OPENSSL_MISSING,
  async fn() {
    // A certificate for another name, and that name holds an escape.
    const folder = await Deno.makeTempDir();
    const [certFile, keyFile] = [`${folder}/cert.pem`, `${folder}/key.pem`];
    await Deno.writeTextFile(
      `${folder}/evil.cnf`,
      "[req]\ndistinguished_name=dn\n[dn]\n[ext]\n" +
        "basicConstraints=critical,CA:FALSE\n" +
        "subjectAltName=DNS:evil\x1b[2J.example.com\n",
    );
    const made = await new Deno.Command("openssl", {
      args: ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"]
        .concat(["-keyout", keyFile, "-out", certFile, "-subj", "/CN=evil"])
        .concat(["-config", `${folder}/evil.cnf`, "-extensions", "ext"]),
      stdout: "null",
      stderr: "null",
    }).output();
    assert(made.success);
    await using server = Spawned.script("server.ts", [
      ...["--host", "127.0.0.1", "--port", "0"],
      ...["--tls-cert", certFile, "--tls-key", keyFile],
    ]);
    const port = await bannerPort(server);
    await using run = client(port, ["--ca", certFile, "--name", "x"]);
    assertEquals((await exited(run)).code, 1);
    assertEquals(run.stderr.all, [
      `Cannot connect to "127.0.0.1:${port}": the server's TLS certificate is not for this host name (connect with a name or address it lists)`,
    ]);
    await Deno.remove(folder, { recursive: true });
  },
});

// ---------------------------------------------------------------------------
// A malformed HOST is a usage error
// ---------------------------------------------------------------------------

Deno.test("client.ts HOST:PORT or a malformed host gets one clear line, the usage, and exit code 2", async (t) => {
  const cases: [string[], string][] = [
    [
      ["127.0.0.1:9999"],
      'Invalid host "127.0.0.1:9999": give the port with --port: use "client.ts 127.0.0.1 --port 9999"',
    ],
    [
      ["[::1]:9999"],
      'Invalid host "[::1]:9999": give the port with --port: use "client.ts ::1 --port 9999"',
    ],
    [
      ["--service", "inventory", "lab-pc:9999", "view"],
      'Invalid host "lab-pc:9999": give the port with --port: use "client.ts lab-pc --port 9999"',
    ],
    [
      ["http://127.0.0.1"],
      'Invalid host "http://127.0.0.1": use a name or an address, such as 192.168.0.101',
    ],
    [
      ["lab pc"],
      'Invalid host "lab pc": use a name or an address, such as 192.168.0.101',
    ],
    [[""], 'Invalid host "": use a name or an address, such as 192.168.0.101'],
  ];
  for (const [args, message] of cases) {
    await t.step(args.join(" ") || '""', async () => {
      await using run = Spawned.script("client.ts", args);
      assertEquals((await exited(run)).code, 2);
      assertEquals(run.stderr.all.slice(0, 2), [
        message,
        "socklab TCP chat client",
      ]);
    });
  }
  await t.step("names and addresses pass; [::1] is ::1", () => {
    for (
      const host of ["lab-pc.local", "192.168.0.101", "::1", "fe80::1%eth0"]
    ) {
      assertEquals(parseClientArgs([host]).host, host);
    }
    assertEquals(parseClientArgs(["[::1]"]).host, "::1");
  });
});

// ---------------------------------------------------------------------------
// A plain client against a TLS server says to try --tls
// ---------------------------------------------------------------------------

Deno.test({
  name:
    "client.ts without --tls against a TLS server says: the server may speak TLS: try --tls",
  ignore: OPENSSL_MISSING || PYTHON_MISSING,
  async fn(t) {
    const { folder, certFile, keyFile } = await makeCertificate();
    await using server = Spawned.script("server.ts", [
      ...["--host", "127.0.0.1", "--port", "0"],
      ...["--tls-cert", certFile, "--tls-key", keyFile],
    ]);
    const port = await bannerPort(server);
    const said = (port: number) => [
      `Cannot talk to "127.0.0.1:${port}": the server may speak TLS: try --tls`,
    ];
    const tries: [string, string[]][] = [
      ["chat: its first line gets a TLS alert", ["--name", "kim"]],
      ["chat with no name: the client speaks after a silence", []],
      ["inventory: one request", ["--service", "inventory", "view"]],
    ];
    for (const [what, args] of tries) {
      await t.step(what, async () => {
        await using run = client(port, args);
        assertEquals((await exited(run)).code, 1);
        assertEquals(run.stdout.all, []);
        assertEquals(run.stderr.all, said(port));
      });
    }
    await t.step(
      "python3's TLS (OpenSSL), which resets the connection",
      async () => {
        const { run: tls, port } = await python(
          `
import socket, ssl, sys
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(sys.argv[1], sys.argv[2])
server = socket.create_server(("127.0.0.1", 0))
print(server.getsockname()[1], flush=True)
conn, _ = server.accept()
try:
    context.wrap_socket(conn, server_side=True)
except (ssl.SSLError, OSError) as error:
    print(type(error).__name__, flush=True)
conn.close()
`,
          [certFile, keyFile],
        );
        await using _tls = tls;
        await using run = client(port, ["--name", "kim"]);
        assertEquals((await exited(run)).code, 1);
        assertEquals(run.stderr.all, said(port));
        assertMatch(await tls.stdout.next(), /Error$/);
      },
    );
    await t.step({
      name: "openssl s_server, which closes without a word",
      ignore: STDBUF_MISSING,
      async fn() {
        // stdbuf: s_server's output reaches the pipe as each line is made.
        await using tls = new Spawned(
          [
            ...["-oL", "openssl", "s_server", "-accept", "127.0.0.1:0"],
            ...["-naccept", "1", "-cert", certFile, "-key", keyFile],
          ],
          {},
          "stdbuf",
        );
        const accept = await tls.stdout.waitFor(/^ACCEPT /);
        const port = Number(accept.split(":").at(-1));
        await using run = client(port, ["--name", "kim"]);
        assertEquals((await exited(run)).code, 1);
        assertEquals(run.stderr.all, said(port));
        assertEquals((await exited(tls)).code, 0);
      },
    });
    await Deno.remove(folder, { recursive: true });
  },
});

// ---------------------------------------------------------------------------
// Leaving: exit 0 only once the server confirmed /quit
// ---------------------------------------------------------------------------

Deno.test("printf 'a\\nb\\n' | client.ts --name bot delivers both lines, leaves, and exits 0", async () => {
  await using room = startServer();
  await using amey = await TestClient.join(room.port, "amey");
  const command = `printf 'a\\nb\\n' | "${Deno.execPath()}" run -A ` +
    `client.ts 127.0.0.1 --port ${room.port} --name bot`;
  await using run = new Spawned(["-c", command], {}, "sh");
  assertEquals((await exited(run)).code, 0);
  assertEquals(run.stderr.all, []);
  assertEquals(run.stdout.all.at(-1), "* bye");
  await amey.lines.waitFor("* bot joined");
  assertEquals(await amey.next(), "<bot> a");
  assertEquals(await amey.next(), "<bot> b");
  assertEquals(await amey.next(), "* bot left");
  await room.console.waitFor(/ bot left \(quit\)$/);
});

Deno.test("client.ts /quit exits 0, the server sees it leave, and lines after /quit are not sent", async () => {
  await using room = startServer();
  await using amey = await TestClient.join(room.port, "amey");
  await using run = client(room.port, ["--name", "kim"]);
  await amey.lines.waitFor("* kim joined");
  await run.type("hello");
  await run.type("/QUIT ");
  await run.type("after the end");
  // The input stays open: /quit alone ends the client.
  assertEquals((await exited(run)).code, 0);
  assertEquals(run.stderr.all, []);
  assertEquals(await amey.next(), "<kim> hello");
  assertEquals(await amey.next(), "* kim left");
  await room.console.waitFor(/ kim left \(quit\)$/);
  assert(!room.console.all.some((line) => line.includes("after the end")));
});

Deno.test("client.ts on Ctrl-C (SIGINT) leaves at once with /quit, exits 0, and the server sees it leave", async () => {
  await using room = startServer();
  await using run = client(room.port, ["--name", "kim"]);
  await run.stdout.waitFor(/^\* you are kim/);
  run.kill("SIGINT");
  // Far less than the leave timeout: the server's "* bye" ended it.
  assertEquals((await exited(run, LEAVE_TIMEOUT_MS - 1000)).code, 0);
  assertEquals(run.stderr.all, []);
  assertEquals(run.stdout.all.at(-1), "* bye");
  await room.console.waitFor(/ kim left \(quit\)$/);
});

Deno.test("client.ts on a second Ctrl-C stops at once when the server does not confirm: exit 130", async () => {
  // A server that takes every line and never answers /quit.
  const quitSeen = Promise.withResolvers<void>();
  const testOver = Promise.withResolvers<void>();
  await using server = fakeServer(async (peer) => {
    await peer.write("* you are kim\n");
    await peer.lines.waitFor("/quit");
    quitSeen.resolve();
    await testOver.promise; // no close, not even at the end of the stream
  });
  await using run = client(server.port, ["--name", "kim"]);
  await run.stdout.waitFor("* you are kim");
  run.kill("SIGINT");
  try {
    await withTimeout(quitSeen.promise, "the server to get /quit");
    run.kill("SIGINT");
    assertEquals((await exited(run, LEAVE_TIMEOUT_MS - 1000)).code, 130);
    assertEquals(run.stderr.all, []);
  } finally {
    testOver.resolve();
  }
});

Deno.test("client.ts disconnected after its input ended exits 1 with the reason, not 0", async () => {
  // Reads up to /quit, then drops the client instead of saying "* bye".
  await using server = fakeServer(async (peer) => {
    await peer.write("* you are bot\n");
    await peer.lines.waitFor("/quit");
    await peer.write("! disconnected for flooding\n");
  });
  await using run = client(server.port, ["--name", "bot"]);
  await run.type("hi");
  await run.endInput();
  assertEquals((await exited(run)).code, 1);
  assertEquals(run.stdout.all.at(-1), "! disconnected for flooding");
  assertEquals(run.stderr.all, [
    `The server "127.0.0.1:${server.port}" closed the connection`,
  ]);
});

Deno.test("client.ts ends its stream after /quit: a server that does not know /quit closes, and the client exits 1, unconfirmed", async () => {
  // Takes every line, answers none, and closes at the end of the stream.
  await using server = fakeServer(async (peer) => {
    await peer.write("* you are bot\n");
    await peer.lines.waitForEnd();
  });
  await using run = client(server.port, ["--name", "bot"]);
  await run.type("hi");
  await run.endInput();
  assertEquals((await exited(run)).code, 1);
  assertEquals(run.stderr.all, [
    `The server "127.0.0.1:${server.port}" closed the connection`,
  ]);
});

Deno.test("client.ts does not take a '* bye' it did not ask for as a normal end: exit 1", async () => {
  await using server = fakeServer(async (peer) => {
    await peer.lines.waitFor("/nick kim"); // read: closing now is no reset
    await peer.write("* you are kim\n* bye\n");
  });
  await using run = client(server.port, ["--name", "kim"]);
  assertEquals((await exited(run)).code, 1);
  assertEquals(run.stdout.all, ["* you are kim", "* bye"]);
  assertEquals(run.stderr.all, [
    `The server "127.0.0.1:${server.port}" closed the connection`,
  ]);
});

Deno.test({
  name:
    "client.ts waits for a server slower than its leave timeout: every piped line arrives, then exit 0",
  ignore: PYTHON_MISSING,
  async fn() {
    // A peer we did not write, slow on purpose: it reads nothing for
    // longer than the client's leave timeout, then everything at once.
    const { run: slow, port } = await python(
      `
import socket, sys, time
server = socket.create_server(("127.0.0.1", 0))
print(server.getsockname()[1], flush=True)
conn, _ = server.accept()
conn.sendall(b"* you are bot\\n")
time.sleep(float(sys.argv[1]))
seen = b""
while not seen.endswith(b"/quit\\n"):
    chunk = conn.recv(4096)
    if not chunk:
        break
    seen += chunk
print(seen.decode(), end="", flush=True)
conn.sendall(b"* bye\\n")
conn.close()
`,
      [String((LEAVE_TIMEOUT_MS + 1000) / 1000)],
    );
    await using _slow = slow;
    await using run = client(port, ["--name", "bot"]);
    await run.type("a");
    await run.type("b");
    await run.endInput();
    assertEquals((await exited(run)).code, 0);
    assertEquals(run.stdout.all, ["* you are bot", "* bye"]);
    assertEquals((await exited(slow)).code, 0);
    assertEquals(slow.stdout.all.slice(1), ["/nick bot", "a", "b", "/quit"]);
  },
});

// ---------------------------------------------------------------------------
// A server that goes away mid-line
// ---------------------------------------------------------------------------

Deno.test("client.ts against a server that closes mid-line: prints the half line, exit 1", async () => {
  await using server = fakeServer(async (peer) => {
    await peer.lines.waitFor("/nick kim"); // read: closing now is no reset
    await peer.write("* you are kim\n<amey> half a li");
  });
  await using run = client(server.port, ["--name", "kim"]);
  assertEquals((await exited(run)).code, 1);
  assertEquals(run.stdout.all, ["* you are kim", "<amey> half a li"]);
  assertEquals(run.stderr.all, [
    `The server "127.0.0.1:${server.port}" closed the connection`,
  ]);
});

Deno.test({
  name:
    "client.ts against a server that resets mid-line (python3, SO_LINGER 0): one line, exit 1",
  ignore: PYTHON_MISSING,
  async fn() {
    const { run: resetter, port } = await python(`
import socket, struct
server = socket.create_server(("127.0.0.1", 0))
print(server.getsockname()[1], flush=True)
conn, _ = server.accept()
conn.recv(4096)
conn.sendall(b"* you are kim\\n")
input()  # the test says when the client has shown the line
conn.sendall(b"<amey> half a li")
conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
conn.close()
`);
    await using _resetter = resetter;
    await using run = client(port, ["--name", "kim"]);
    await run.stdout.waitFor("* you are kim");
    await resetter.type("go");
    assertEquals((await exited(run)).code, 1);
    assertEquals(run.stdout.all, ["* you are kim"]);
    assertEquals(run.stderr.all, [
      `Connection to "127.0.0.1:${port}" lost: connection reset`,
    ]);
  },
});
