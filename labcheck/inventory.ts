/**
 * labcheck's checks of an inventory server that speaks socklab's JSON-lines
 * protocol: one JSON request a line, one JSON reply a line. It works on
 * items of its own (`labcheck-...`), and removes them at the end.
 * @module
 */

import { TcpPeer, token } from "./peer.ts";
import { quote, type Report } from "./report.ts";

const INVENTORY = "The inventory service";
const REPLY_MS = 5000;
const CLIENTS = 20;
const ADDS = 50;
const CONCURRENT_MS = 30_000; // for all their adds

type Target = { host: string; port: number };
type Reply = {
  ok?: unknown;
  error?: unknown;
  inventory?: Record<string, unknown>;
};

/** One connection that asks and waits for each reply in turn. */
class Asker {
  #answered = 0;
  constructor(readonly peer: TcpPeer) {}
  static async connect({ host, port }: Target) {
    return new Asker(await TcpPeer.connect(host, port));
  }
  /** Sends `text` (one line or more, in `pieces`): @returns the replies */
  async send(pieces: string[], replies = 1): Promise<(Reply | string)[]> {
    const start = this.#answered;
    await this.peer.writeInPieces(pieces);
    const { lines } = this.peer;
    const wanted = start + replies;
    await lines.until(() => lines.total >= wanted, REPLY_MS);
    this.#answered = lines.total;
    return lines.since(start).slice(0, replies).map(parse);
  }
  async ask(request: object): Promise<Reply | string | undefined> {
    return (await this.send([JSON.stringify(request) + "\n"]))[0];
  }
  /** The quantity of `item` in a `view`, 0 if none, undefined if no view. */
  async quantity(item: string): Promise<number | undefined> {
    const reply = await this.ask({ action: "view" });
    if (typeof reply !== "object" || !reply.inventory) return undefined;
    return Number(reply.inventory[item] ?? 0);
  }
}

/** A reply as JSON, or the line itself if it is not JSON. */
function parse(line: string): Reply | string {
  try {
    const value = JSON.parse(line);
    return value && typeof value === "object" ? value : line;
  } catch {
    return line;
  }
}

const show = (reply: Reply | string | undefined) =>
  reply === undefined
    ? "no reply"
    : quote(typeof reply === "string" ? reply : JSON.stringify(reply), 80);

/** The inventory checks. */
export async function checkInventory(report: Report, target: Target) {
  let asker;
  try {
    asker = await Asker.connect(target);
  } catch (error) {
    return report.cannotConnect(`${target.host}:${target.port}`, error);
  }
  report.pass("connects", "a client connected");
  const item = `labcheck-${token()}`;
  const counted = `labcheck-${token()}`;
  try {
    if (!await protocol(report, asker, item)) return;
    await pieces(report, asker, item);
    await concurrent(report, target, asker, counted);
    await badRequests(report, asker, item);
  } finally {
    for (const name of [item, counted]) {
      const left = await asker.quantity(name).catch(() => undefined);
      if (left) {
        await asker.ask({ action: "remove", item: name, quantity: left });
      }
    }
    asker.peer.close();
  }
}

async function protocol(report: Report, asker: Asker, item: string) {
  const problems: string[] = [];
  const expect = (
    what: string,
    reply: Reply | string | undefined,
    ok: boolean,
    has?: number,
  ) => {
    const good = typeof reply === "object" && reply.ok === ok &&
      (ok || typeof reply.error === "string") &&
      (has === undefined || reply.inventory?.[item] === has);
    if (!good) problems.push(`${what} got ${show(reply)}`);
  };
  expect('"view"', await asker.ask({ action: "view" }), true);
  expect(
    "adding 5",
    await asker.ask({ action: "add", item, quantity: 5 }),
    true,
    5,
  );
  expect(
    "removing 2",
    await asker.ask({ action: "remove", item, quantity: 2 }),
    true,
    3,
  );
  expect(
    "removing 10 of 3",
    await asker.ask({ action: "remove", item, quantity: 10 }),
    false,
  );
  expect('"help"', await asker.ask({ action: "help" }), true);
  const left = await asker.quantity(item);
  if (left !== 3) {
    problems.push(`"view" then showed ${left ?? "no stock"}, not 3`);
  }
  if (problems.length === 0) {
    report.pass(
      "protocol",
      "view, add, remove and help get the protocol's answers",
    );
    return true;
  }
  report.fail(
    "protocol",
    problems.slice(0, 2).join("; "),
    'answer each request line with one JSON line: {"ok":true,...} or {"ok":false,"error":"..."}',
    INVENTORY,
  );
  report.skip("the other checks", "they need the protocol's answers");
  return false;
}

async function pieces(report: Report, asker: Asker, item: string) {
  const request = JSON.stringify({ action: "add", item, quantity: 1 }) + "\n";
  const [split] = await asker.send([request.slice(0, 12), request.slice(12)]);
  if (typeof split === "object" && split.ok === true) {
    report.pass("in pieces", "a request split across writes is answered once");
  } else {
    report.fail(
      "in pieces",
      `a request split across two writes got ${show(split)}`,
      'TCP is a byte stream: keep bytes until "\\n", then parse the line',
      INVENTORY,
    );
  }
  const both = await asker.send([request + request], 2);
  const left = await asker.quantity(item);
  if (
    both.length === 2 &&
    both.every((r) => typeof r === "object" && r.ok === true) && left === 6
  ) {
    report.pass(
      "two in one write",
      "two requests in one write get two answers",
    );
  } else {
    report.fail(
      "two in one write",
      `two requests in one write got ${both.length} answer(s), and the stock ${
        left ?? "?"
      }, not 6`,
      'one recv() may hold many requests: split what arrives at each "\\n"',
      INVENTORY,
    );
  }
}

async function concurrent(
  report: Report,
  target: Target,
  main: Asker, // the first connection, which asks for the total
  item: string,
) {
  const check = "many clients";
  const connecting = Array.from(
    { length: CLIENTS },
    () => Asker.connect(target),
  );
  const connected = await Promise.allSettled(connecting);
  const askers = connected.flatMap((c) =>
    c.status === "fulfilled" ? [c.value] : []
  );
  let late = false; // past the deadline: every asker stops
  const timer = setTimeout(() => late = true, CONCURRENT_MS);
  await Promise.all(askers.map(async (asker) => {
    for (let i = 0; i < ADDS && !late; i++) {
      await asker.ask({ action: "add", item, quantity: 1 });
    }
  }));
  clearTimeout(timer);
  for (const asker of askers) asker.peer.close();
  const total = await main.quantity(item);
  const expected = CLIENTS * ADDS;
  if (total === expected) {
    return report.pass(
      check,
      `${CLIENTS} clients × ${ADDS} adds end with exactly ${total}`,
    );
  }
  const lesson = askers.length < CLIENTS || late
    ? "serve every client at once (a thread or task each), and take a listen backlog of more than 1"
    : "apply changes one at a time (a lock, or one task that owns the stock), so none is lost";
  const what = askers.length < CLIENTS
    ? `only ${askers.length} of ${CLIENTS} clients could connect at once`
    : late
    ? `${CLIENTS} clients × ${ADDS} adds were not done in ${
      CONCURRENT_MS / 1000
    } s (the stock: ${total ?? "no answer"})`
    : `${CLIENTS} clients × ${ADDS} adds ended with ${
      total ?? "no answer"
    }, not ${expected}`;
  report.fail(check, what, lesson, INVENTORY);
}

async function badRequests(report: Report, asker: Asker, item: string) {
  const before = await asker.quantity(item);
  const bad = [
    "not json",
    "[1, 2]",
    '{"action":"fly"}',
    '{"action":"add","quantity":3}',
    JSON.stringify({ action: "add", item, quantity: -5 }),
    JSON.stringify({ action: "add", item, quantity: "abc" }),
    JSON.stringify({ action: "remove", item }),
  ]; // deno-fmt-ignore
  const unanswered: string[] = [];
  for (const request of bad) {
    const [reply] = await asker.send([request + "\n"]);
    const refused = typeof reply === "object" && reply.ok === false;
    if (!refused) unanswered.push(`${quote(request)} got ${show(reply)}`);
    if (!asker.peer.open) break;
  }
  const after = asker.peer.open ? await asker.quantity(item) : undefined;
  if (unanswered.length === 0 && after === before) {
    return report.pass(
      "bad requests",
      "bad requests get an error and change nothing",
    );
  }
  const what = !asker.peer.open
    ? "after a bad request, the server closed the connection"
    : after !== before
    ? `bad requests changed the stock from ${before} to ${after}`
    : unanswered.slice(0, 2).join("; ");
  report.fail(
    "bad requests",
    what,
    'check every field before you use it, and answer {"ok":false,"error":"..."}: the stock stays as it was',
    INVENTORY,
  );
}
