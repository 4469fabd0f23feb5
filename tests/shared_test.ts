/**
 * The shared module's pieces on their own: framing, cleaning, names,
 * flags, and the chat room's rules without any socket.
 * @module
 */

import { assertEquals, assertThrows } from "@std/assert";
import {
  ChatRoom,
  cleanText,
  type Frame,
  LINE_TOO_LONG,
  LineFramer,
  nameKey,
  nameProblem,
  parseChatInput,
  parseFlags,
  UsageError,
} from "../shared.ts";
import { parseClientArgs } from "../client.ts";
import { parseServerArgs } from "../server.ts";
import { parseUdpServerArgs, seededRandom } from "../udp_server.ts";

const bytes = (text: string) => new TextEncoder().encode(text);

/** Feeds the chunks in turn, then ends the stream. */
function frame(chunks: (string | Uint8Array)[], max?: number): Frame[] {
  const framer = new LineFramer(max);
  const frames = chunks.flatMap((chunk) =>
    framer.push(typeof chunk === "string" ? bytes(chunk) : chunk)
  );
  return [...frames, ...framer.end()];
}

Deno.test("LineFramer joins a line split over reads and splits reads holding many lines", () => {
  assertEquals(frame(["hel", "lo", "\n"]), ["hello"]);
  assertEquals(frame(["a\nb\nc\n"]), ["a", "b", "c"]);
  assertEquals(frame(["a\nb", "c\nd"]), ["a", "bc", "d"]);
});

Deno.test("LineFramer accepts LF, CRLF (even split) and a bare CR as line ends", () => {
  assertEquals(frame(["a\r\nb\rc\n"]), ["a", "b", "c"]);
  assertEquals(frame(["a\r", "\nb\n"]), ["a", "b"]);
  assertEquals(frame(["a\n\nb\n"]), ["a", "", "b"]);
});

Deno.test("LineFramer decodes a UTF-8 character split between reads", () => {
  const line = bytes("नमस्ते 😀\n");
  const chunks = Array.from(line, (byte) => new Uint8Array([byte]));
  assertEquals(frame(chunks), ["नमस्ते 😀"]);
});

Deno.test("LineFramer does not keep a buffer the caller reuses", () => {
  const framer = new LineFramer();
  const buffer = bytes("abc");
  framer.push(buffer);
  buffer.set(bytes("xyz"));
  assertEquals(framer.push(bytes("\n")), ["abc"]);
});

Deno.test("LineFramer reports an over-long line once, drops it, and goes on", () => {
  assertEquals(frame(["12345678901\nok\n"], 10), [LINE_TOO_LONG, "ok"]);
  assertEquals(frame(["123456", "789012", "345\nok\n"], 10), [
    LINE_TOO_LONG,
    "ok",
  ]);
  assertEquals(frame(["1234567890\n"], 10), ["1234567890"]);
  assertEquals(frame(["x".repeat(50)], 10), [LINE_TOO_LONG]);
});

Deno.test("LineFramer gives a last line without a line end at the end of the stream", () => {
  assertEquals(frame(["a\nlast"]), ["a", "last"]);
  assertEquals(frame(["a\n"]), ["a"]);
});

Deno.test("cleanText removes escape sequences and control characters, keeps Unicode", () => {
  assertEquals(cleanText("\x1b[2J\x1b[Hhi"), "hi");
  assertEquals(cleanText("red \x1b[31mtext\x1b[0m"), "red text");
  assertEquals(cleanText("title\x1b]0;pwned\x07!"), "title!");
  assertEquals(cleanText("bell\x07 back\bspace"), "bell backspace");
  assertEquals(cleanText("a\tb"), "a b");
  assertEquals(cleanText("evil\u202etxt.exe"), "eviltxt.exe");
  assertEquals(cleanText("café नमस्ते 你好 👋"), "café नमस्ते 你好 👋");
});

Deno.test("nameProblem accepts 1 to 24 of letters, digits, - _ . and nothing else", () => {
  for (const name of ["a", "Karan", "guest-7", "a.b_c-9", "x".repeat(24)]) {
    assertEquals(nameProblem(name), undefined, name);
  }
  for (const name of ["", "x".repeat(25), "two words", "k@ran", "ünï", "<b>"]) {
    assertEquals(typeof nameProblem(name), "string", name);
  }
  assertEquals(nameKey("AMEY"), nameKey("amey"));
});

/** A chat room with no sockets: what it says to whom, as text. */
function roomWithTranscript(operator?: string) {
  const said: string[] = [];
  const room = new ChatRoom<{ name: string }>({
    send: (member, line) => said.push(`${member.name} <- ${line}`),
    broadcast: (line, except) =>
      said.push(`all${except ? ` but ${except.name}` : ""} <- ${line}`),
    quit: (member) => said.push(`${member.name} quits`),
    show: (line) => said.push(`console <- ${line}`),
    log: () => {},
  }, { mode: "a test room", operator, announceLimit: 2 });
  return { room, said };
}

Deno.test("ChatRoom, without a socket, says which lines go to whom", () => {
  const { room, said } = roomWithTranscript("teacher");
  const amey = { name: "" }, karan = { name: "" };
  room.join(amey, "amey");
  room.join(karan);
  assertEquals(karan.name, "guest-1");
  said.length = 0;
  room.handle(karan, "/nick Karan");
  room.handle(amey, "hi");
  room.handle(amey, "/msg karan psst");
  room.handle(amey, "/msg teacher hello");
  room.handle(karan, "/me waves");
  room.handle(karan, "/nick AMEY");
  room.handle(karan, "/quit");
  assertEquals(said, [
    "all <- * guest-1 is now known as Karan",
    "console <- <amey> hi",
    "all but amey <- <amey> hi",
    "Karan <- [private] <amey> psst",
    "console <- [private] <amey> hello",
    "console <- * Karan waves",
    "all but Karan <- * Karan waves",
    'Karan <- ! name "AMEY" is taken',
    "Karan <- * bye",
    "Karan quits",
  ]);
  said.length = 0;
  room.leave(karan, "quit");
  room.leave(karan, "quit");
  assertEquals(said, ["all <- * Karan left"], "a leave is told once");
  assertEquals(
    room.nameProblem("Teacher"),
    'name "Teacher" is reserved for the operator',
  );
});

Deno.test("ChatRoom welcomes by name or as a guest, and counts a big room", () => {
  const { room, said } = roomWithTranscript();
  room.join({ name: "" }, "amey");
  assertEquals(said.slice(0, 3), [
    "amey <- * welcome to socklab chat, a test room",
    "amey <- * online: no one else",
    "amey <- * you are amey; /help lists the commands",
  ]);
  room.join({ name: "" });
  said.length = 0;
  const third = { name: "" };
  room.join(third);
  assertEquals(said, [
    "guest-2 <- * welcome to socklab chat, a test room",
    "guest-2 <- * online: 2 others; /who lists them",
    "guest-2 <- * you are guest-2: pick a name with /nick NAME; /help lists the commands",
  ], "past the announce limit: counted, not listed, and not announced");
  assertEquals(room.whoLine(), "* online (3): amey, guest-1, guest-2");
});

Deno.test("flags: ports are checked, unknown options refused, defaults given", () => {
  const port = (text: string) =>
    parseFlags(["--port", text], { port: { port: true } }).port;
  assertEquals([port("0"), port("65535")], [0, 65535]);
  for (const bad of ["-1", "65536", "1e3", "", "abc", "80.5"]) {
    assertThrows(() => port(bad), UsageError);
  }
  assertThrows(
    () => parseFlags(["--nope"], {}),
    UsageError,
    'Unknown option "--nope"',
  );
  assertThrows(
    () => parseFlags(["one", "two"], {}, 1),
    UsageError,
    'Unexpected argument "two"',
  );
  assertEquals(parseFlags(["one"], {}, 1)._, ["one"]);
  const table = {
    rate: { range: [0, 10] },
    drop: { range: [0, 1, "number"] },
  } as const;
  assertEquals(parseFlags(["--rate", "7", "--drop", ".5"], table).rate, 7);
  assertThrows(
    () => parseFlags(["--rate", "11"], table),
    UsageError,
    'Invalid --rate "11": use a whole number from 0 to 10',
  );
  assertThrows(() => parseFlags(["--drop", "2"], table), UsageError);
  for (const parse of [parseServerArgs, parseUdpServerArgs]) {
    assertThrows(
      () => parse(["extra"]),
      UsageError,
      'Unexpected argument "extra"',
    );
  }
  assertEquals(parseClientArgs([]), {
    host: "localhost",
    port: 9999,
    service: "chat",
    name: undefined,
    request: undefined,
    tls: false,
    caFile: undefined,
    password: undefined,
    help: false,
    trace: false,
  });
  const oneShot = parseClientArgs([
    "-s",
    "inventory",
    "add",
    "Green",
    "Tea",
    "5",
  ]);
  assertEquals([oneShot.host, oneShot.request], [
    "localhost",
    "add Green Tea 5",
  ]);
  const withHost = parseClientArgs([
    "10.0.0.5",
    "--service",
    "inventory",
    "view",
  ]);
  assertEquals([withHost.host, withHost.request], ["10.0.0.5", "view"]);
  assertEquals(
    parseClientArgs(["10.0.0.5", "-p", "7000", "-n", "amey"]).port,
    7000,
  );
  assertEquals(parseServerArgs(["--iterative", "--name", "teacher"]), {
    help: false,
    service: "chat",
    port: 9999,
    host: "0.0.0.0",
    operatorName: "teacher",
    iterative: true,
    quiet: false,
    dataFile: undefined,
    tlsFiles: undefined,
    password: undefined,
    tracing: false,
  });
  assertThrows(
    () => parseServerArgs(["--data", "x.json"]),
    UsageError,
    "--data goes with --service inventory",
  );
});

Deno.test("LineFramer finds the same lines whatever the read sizes", () => {
  // Against a plain split of the whole stream: seeded random text of
  // letters, spaces, multi-byte characters and every kind of line end,
  // cut into random reads.
  const random = seededRandom(7);
  const alphabet = ["a", "b", " ", "é", "€", "👋", "\r", "\n", "\r\n"];
  for (let round = 0; round < 200; round++) {
    let text = "";
    for (let i = 0; i < 60; i++) {
      text += alphabet[Math.floor(random() * alphabet.length)];
    }
    const stream = new TextEncoder().encode(text);
    const chunks = [];
    for (let start = 0; start < stream.length;) {
      const size = 1 + Math.floor(random() * 8);
      chunks.push(stream.slice(start, start + size));
      start += size;
    }
    const expected = text.split(/\r\n|\r|\n/);
    if (expected.at(-1) === "") expected.pop();
    assertEquals(frame(chunks), expected, JSON.stringify(text));
  }
});

Deno.test("parseChatInput tells messages, commands and blank lines apart", () => {
  assertEquals(parseChatInput("hi there "), {
    kind: "message",
    text: "hi there",
  });
  assertEquals(parseChatInput("//etc/passwd"), {
    kind: "message",
    text: "/etc/passwd",
  });
  assertEquals(parseChatInput("/MSG amey  hi"), {
    kind: "command",
    command: "/msg",
    rest: "amey  hi",
  });
  assertEquals(parseChatInput(" \x1b[2J "), { kind: "empty" });
});
