/**
 * labcheck's checks of the UDP programs: the month service, and the chat
 * relay. UDP may lose a datagram, so each request is sent again when no
 * answer comes (4 tries, 1 s each).
 * @module
 */

import { pause, token, UdpPeer } from "./peer.ts";
import { quote, type Report } from "./report.ts";

const UDP = "UDP: a chat relay, the month service, echo";
const MONTHS = [
  "January",
  "February",
  "March",
  "April",
  "May",
  "June",
  "July",
  "August",
  "September",
  "October",
  "November",
  "December",
]; // deno-fmt-ignore
/** After a datagram, how long duplicates of it may take to come. */
const QUIET_MS = 1000;

type Target = { host: string; port: number };

/** Does `line` name the month `number` (1 to 12)? */
const names = (line: string, number: number) =>
  line.toLowerCase().includes(MONTHS[number - 1].toLowerCase());

/** The month service's checks. */
export async function checkMonth(report: Report, target: Target) {
  const peer = new UdpPeer(target.host, target.port);
  const other = new UdpPeer(target.host, target.port);
  try {
    await monthChecks(report, target, peer, other);
  } finally {
    peer.close();
    other.close();
  }
}

async function monthChecks(
  report: Report,
  { host, port }: Target,
  peer: UdpPeer,
  other: UdpPeer,
): Promise<void> {
  // Only the month asked for counts: a late answer to an earlier request
  // (UDP asks again) is not taken for this one.
  const ask = (from: UdpPeer, number: number) =>
    from.ask(String(number), (line) => names(line, number));
  const last = (from: UdpPeer) => quote(from.lines.kept.at(-1) ?? "nothing");
  if (await peer.ask("1") === undefined) {
    const [elsewhere] = peer.elsewhere;
    const what = peer.sendError
      ? `cannot send to ${host}:${port}: ${peer.sendError}`
      : elsewhere
      ? `the answers came from ${elsewhere}, not from ${host}:${port}, where the requests went`
      : `no answer from ${host}:${port} to "1" in 4 tries`;
    report.fail(
      "answers",
      what,
      "answer each datagram from the socket it came to, with sendto() to the address recvfrom() gave",
      UDP,
    );
    return report.skip("the other checks", "they need a server that answers");
  }
  const wrong: string[] = [];
  for (let number = 1; number <= 12; number++) {
    if (await ask(peer, number) === undefined) {
      wrong.push(`"${number}" got ${last(peer)}`);
    }
  }
  if (wrong.length === 0) report.pass("months", "1 to 12 give the right names");
  else {
    report.fail(
      "months",
      wrong.slice(0, 3).join(", "),
      "month N is the list's entry N - 1: count from 0",
      UDP,
    );
  }
  if (!await badRequests(report, peer, ask)) {
    return report.skip("the other checks", "the server stopped answering");
  }
  const [mine, theirs] = await Promise.all([ask(peer, 2), ask(other, 11)]);
  if (mine && theirs) {
    report.pass(
      "two clients",
      "two clients asking at once each get their own answer",
    );
  } else {
    report.fail(
      "two clients",
      `asking "2" and "11" at once got ${last(peer)} and ${last(other)}`,
      "answer each datagram to the address it came from (recvfrom), not to the last client",
      UDP,
    );
  }
  await peer.send("7" + " ".repeat(1199));
  if (await ask(peer, 4) !== undefined) {
    report.pass("big datagram", "a 1200-byte datagram does not stop it");
  } else {
    report.fail(
      "big datagram",
      'after a 1200-byte datagram, it no longer answered "4"',
      "receive with a buffer as big as the biggest datagram you take, and refuse what is bigger",
      UDP,
    );
  }
}

/** Bad requests: none stops the server, and no number outside 1 to 12
 * gets a month. @returns whether the server still answers */
async function badRequests(
  report: Report,
  peer: UdpPeer,
  ask: (from: UdpPeer, number: number) => Promise<string | undefined>,
): Promise<boolean> {
  const check = "bad requests";
  const bad: [string, Uint8Array | string][] = [
    ['"0"', "0"],
    ['"13"', "13"],
    ['"-1"', "-1"],
    ['"abc"', "abc"],
    ["an empty datagram", ""],
    ["bytes that are not UTF-8", new Uint8Array([0xff, 0xfe, 0x80])],
  ]; // deno-fmt-ignore
  const named: string[] = [];
  for (const [what, datagram] of bad) {
    const start = peer.lines.total;
    await peer.send(datagram);
    if (await ask(peer, 5) === undefined) {
      report.fail(
        check,
        [`after ${what}, it no longer answered "5"`, ...named].join("; "),
        "check a request before you use it, and answer a bad one with an error: one datagram must never stop the server",
        UDP,
      );
      return false;
    }
    // What came before the answer to "5" answered the bad request.
    const answers = peer.lines.since(start).filter((line) => !names(line, 5));
    const month = answers.find((line) =>
      MONTHS.some((_, i) => names(line, i + 1))
    );
    if (/^"-?\d+"$/.test(what) && month) {
      named.push(`${what} got ${quote(month)}`);
    }
  }
  if (named.length === 0) {
    report.pass(
      check,
      "0, 13, -1, abc, an empty datagram and non-UTF-8 bytes do not stop it",
    );
  } else {
    report.fail(
      check,
      named.join(", "),
      "a number outside 1 to 12 gets an error, not a month (in Python, MONTHS[-1] is the last month)",
      UDP,
    );
  }
  return true;
}

/** The UDP chat relay's checks. */
export async function checkUdpChat(report: Report, target: Target) {
  const peers = ["lcAmey", "lcKaran", "lcLata"].map(() =>
    new UdpPeer(target.host, target.port)
  );
  try {
    await udpChatChecks(report, target, peers);
  } finally {
    for (const peer of peers) peer.close();
  }
}

async function udpChatChecks(
  report: Report,
  { host, port }: Target,
  [a, b, c]: UdpPeer[],
): Promise<void> {
  // Each joins: socklab's relay takes /join NAME; a plain one, any datagram.
  for (
    const [peer, name] of [[a, "lcAmey"], [b, "lcKaran"], [
      c,
      "lcLata",
    ]] as const
  ) {
    await peer.send(`/join ${name}`);
  }
  const relays = async (from: UdpPeer, to: UdpPeer[]) => {
    const sent = token();
    await from.send(`hello ${sent}`);
    const got = await Promise.all(to.map((peer) => peer.lines.has(sent, 2000)));
    return { sent, all: got.every(Boolean) };
  };
  let first;
  for (let i = 0; i < 4 && !first?.all; i++) first = await relays(a, [b, c]);
  if (!first?.all) {
    report.fail(
      "relays",
      b.elsewhere.size + c.elsewhere.size > 0
        ? `datagrams came from ${
          [...b.elsewhere, ...c.elsewhere][0]
        }, not from ${host}:${port}, where the peers send`
        : `a datagram sent to ${host}:${port} did not reach the other 2 peers in 4 tries`,
      "keep the address of each peer that sends, and send each datagram to all the others",
      UDP,
    );
    return report.skip("the other checks", "they need a relay that relays");
  }
  report.pass("relays", "a datagram reaches the other peers");
  await pause(QUIET_MS); // duplicates, if any, have come
  const counts = [b, c].map((peer) => peer.lines.count(first.sent));
  if (counts.every((count) => count === 1)) {
    report.pass("exactly once", "each other peer got it exactly once");
  } else {
    report.fail(
      "exactly once",
      `the other peers got it ${counts.join(" and ")} times`,
      "keep each peer once: add an address only if it is not in the list yet",
      UDP,
    );
  }
  if (a.lines.count(first.sent) > 0) {
    report.note("echo", "the sender got its own datagram back");
  }
  const second = await relays(a, [c]); // a's second datagram or more
  const reply = await relays(b, [a, c]);
  await pause(QUIET_MS);
  const twice = [
    c.lines.count(second.sent),
    a.lines.count(reply.sent),
    c.lines.count(reply.sent),
  ];
  if (second.all && reply.all && twice.every((count) => count === 1)) {
    report.pass(
      "no duplicates",
      "a peer's second datagram is not duplicated to anyone",
    );
  } else {
    report.fail(
      "no duplicates",
      `after a peer sent again, lines arrived ${Math.max(...twice)} times`,
      "a peer that sends again is the same peer: look its address up before adding it",
      UDP,
    );
  }
  c.close(); // gone, without a word: UDP cannot tell
  const after = await relays(a, [b]);
  const back = await relays(b, [a]);
  if (after.all && back.all) {
    report.pass(
      "peers that go away",
      "the relay goes on after a peer went away",
    );
  } else {
    report.fail(
      "peers that go away",
      "after a peer went away, the others' datagrams were no longer relayed",
      "a sendto() to a peer that has gone may fail: catch the error, and go on with the others",
      UDP,
    );
  }
}
