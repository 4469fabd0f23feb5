/**
 * The shared module's pieces, and the client's line editor, on their own.
 * @module
 */

import { assertEquals, assertThrows } from "@std/assert";
import {
  cleanText,
  copyPlainLine,
  type Frame,
  LINE_TOO_LONG,
  LineEditor,
  LineFramer,
  nameKey,
  nameProblem,
  parseChatInput,
  parseChatLine,
  parseFlags,
  parsePort,
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

Deno.test("parseChatLine tells messages, private messages, notices and errors apart", () => {
  assertEquals(parseChatLine("<amey> hi <there>"), {
    kind: "message",
    name: "amey",
    text: "hi <there>",
  });
  assertEquals(parseChatLine("[private] <amey> psst"), {
    kind: "private",
    name: "amey",
    text: "psst",
  });
  assertEquals(parseChatLine("* amey joined"), {
    kind: "notice",
    text: "amey joined",
  });
  assertEquals(parseChatLine('! name "x" is taken'), {
    kind: "error",
    text: 'name "x" is taken',
  });
  assertEquals(parseChatLine("plain"), { kind: "other", text: "plain" });
});

Deno.test("flags: ports are checked, unknown options refused, defaults given", () => {
  assertEquals(parsePort("0"), 0);
  assertEquals(parsePort("65535"), 65535);
  for (const bad of ["-1", "65536", "1e3", "", "abc", "80.5"]) {
    assertThrows(() => parsePort(bad), UsageError);
  }
  assertThrows(
    () => parseFlags(["--nope"], {}),
    UsageError,
    'Unknown option "--nope"',
  );
  assertThrows(
    () => parseFlags(["one", "two"], { positionals: 1 }),
    UsageError,
    'Unexpected argument "two"',
  );
  assertEquals(parseFlags(["one"], { positionals: 1 })._, ["one"]);
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
  });
  assertThrows(
    () => parseServerArgs(["--data", "x.json"]),
    UsageError,
    "--data goes with --service inventory",
  );
});

Deno.test("LineEditor edits a line in raw mode and reports Enter, Ctrl-C and Ctrl-D", () => {
  const editor = new LineEditor();
  assertEquals(editor.feed(bytes("helo")), []);
  editor.feed(bytes("\x7flo"));
  assertEquals(editor.text, "hello");
  assertEquals(editor.feed(bytes(" world\r")), [{
    kind: "line",
    text: "hello world",
  }]);
  assertEquals(editor.text, "");
  editor.feed(bytes("one two\x17"));
  assertEquals(editor.text, "one ");
  editor.feed(bytes("\x15"));
  assertEquals(editor.text, "");
  editor.feed(bytes("a\x1b[Db\x1bOAc"));
  assertEquals(editor.text, "abc", "arrow keys are ignored, not typed");
  assertEquals(
    editor.feed(bytes("\x04")),
    [],
    "Ctrl-D only ends an empty line",
  );
  assertEquals(editor.feed(bytes("\x03")), [{ kind: "interrupt" }]);
  editor.feed(bytes("\x15"));
  assertEquals(editor.feed(bytes("\x04")), [{ kind: "end" }]);
  const split = bytes("é");
  editor.feed(split.subarray(0, 1));
  editor.feed(split.subarray(1));
  assertEquals(editor.text, "é");
  editor.feed(bytes("👋\x7f"));
  assertEquals(editor.text, "é", "backspace removes a whole character");
});

Deno.test("LineEditor shows the end of a line too long for the terminal", () => {
  const editor = new LineEditor("> ");
  editor.feed(bytes("x".repeat(100) + "END"));
  const shown = editor.render(40);
  assertEquals(shown.startsWith("\r\x1b[K"), true);
  assertEquals(shown.endsWith("END"), true);
  assertEquals(shown.includes("…"), true);
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

Deno.test("copyPlainLine copies only lines that parseChatInput passes on as they are", () => {
  const plain = [
    "hello",
    "a",
    "x = 1 + 2; {ok}",
    "~tilde at both ends~",
    " lead",
  ];
  const other = [
    "",
    " ",
    "trailing ",
    "/me waves",
    "//slash",
    "tab\there",
    "\x1b[31mred",
    "héllo",
    "del\x7f",
    "cr\rinside",
  ];
  const into = new Uint8Array(64);
  /** The line copied from `text` at `start`, or undefined. */
  const copied = (text: string, start = 0, maxLineBytes = 40) => {
    const line = bytes(text);
    const lf = copyPlainLine(line, start, maxLineBytes, into, 3);
    if (lf < 0) return undefined;
    assertEquals(line[lf], 0x0a, "it returns where the LF is");
    const end = line[lf - 1] === 0x0d ? lf - 1 : lf;
    return new TextDecoder().decode(into.subarray(3, 3 + end - start));
  };
  for (const line of plain) {
    assertEquals(copied(`${line}\n`), line);
    assertEquals(copied(`${line}\r\nmore`), line);
    assertEquals(parseChatInput(line), { kind: "message", text: line });
  }
  for (const line of other) {
    assertEquals(copied(`${line}\n`), undefined, JSON.stringify(line));
  }
  assertEquals(copied("no line end yet"), undefined);
  assertEquals(copied("a bare CR\r"), undefined, "the framer decides");
  assertEquals(copied("x".repeat(40) + "\n"), "x".repeat(40));
  assertEquals(copied("x".repeat(41) + "\n"), undefined, "too long");
  // A line in the middle of a read, as the server copies it.
  assertEquals(copied("/cmd\nplain\nnext", 5), "plain");
});
