/**
 * The least a Deno relay can do, to measure the floor under server.ts:
 * the whole lines of each read go to every other client, gathered into one
 * write per client per turn of the event loop. No names, no rules, no
 * limits, no console: not a chat server, a yardstick.
 *
 * ```sh
 * deno task bench --compare "deno run -A bench/floor_relay.ts {port}"
 * ```
 * @module
 */

import { writeAll } from "../shared.ts";

const clients = new Set<Deno.Conn>();
const queued = new Map<Deno.Conn, Uint8Array[]>();

/** Queues bytes for a client; the first in a turn schedules the writes. */
function queue(client: Deno.Conn, bytes: Uint8Array): void {
  if (queued.size === 0) setTimeout(writeQueued, 0);
  const pieces = queued.get(client);
  if (pieces) pieces.push(bytes);
  else queued.set(client, [bytes]);
}

/** One write per client of all that this turn queued for it. */
function writeQueued(): void {
  for (const [client, pieces] of queued) {
    const size = pieces.reduce((sum, piece) => sum + piece.length, 0);
    const joined = new Uint8Array(size);
    let offset = 0;
    for (const piece of pieces) {
      joined.set(piece, offset);
      offset += piece.length;
    }
    writeAll(client, joined).catch(() => {}); // gone: its read loop ends
  }
  queued.clear();
}

/** Reads a client; whole lines go to the others, a partial one waits. */
async function serve(conn: Deno.Conn): Promise<void> {
  clients.add(conn);
  queue(conn, new TextEncoder().encode("* welcome\n")); // the bench waits for it
  let kept = new Uint8Array(0);
  const buffer = new Uint8Array(16384);
  try {
    for (let count; (count = await conn.read(buffer)) !== null;) {
      const data = new Uint8Array(kept.length + count);
      data.set(kept);
      data.set(buffer.subarray(0, count), kept.length);
      const end = data.lastIndexOf(0x0a) + 1;
      kept = data.slice(end);
      if (end === 0) continue;
      const lines = data.subarray(0, end);
      for (const other of clients) if (other !== conn) queue(other, lines);
    }
  } catch {
    // Reset: the client is gone.
  }
  clients.delete(conn);
  conn.close();
}

if (import.meta.main) {
  const port = Number(Deno.args[0] ?? 9999);
  const listener = Deno.listen({ hostname: "127.0.0.1", port });
  console.log(`floor relay listening on 127.0.0.1:${port}`);
  for await (const conn of listener) serve(conn);
}
