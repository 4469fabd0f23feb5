#!/usr/bin/env -S deno run -A
/**
 * labcheck: tests a student's own chat server, UDP server or chat client,
 * and says which lesson of the socket lab it misses.
 *
 * ```sh
 * deno task labcheck --chat 127.0.0.1:5000
 * deno task labcheck --client "python3 client.py {host} {port}"
 * ```
 * @module
 */

import { argsOrExit, type FlagRow, onStopSignals } from "../shared.ts";
import { parseFlags, UsageError } from "../shared.ts";
import { checkChat } from "./chat.ts";
import { checkClient, stopClients } from "./client.ts";
import { checkInventory } from "./inventory.ts";
import { Report } from "./report.ts";
import { checkMonth, checkUdpChat } from "./udp.ts";

/** The longest a whole run may take: then it stops, whatever it waits for. */
const RUN_LIMIT_MS = 180_000;

const FLAGS: Record<string, FlagRow> = {
  chat: {},
  "udp-chat": {},
  month: {},
  client: {},
  inventory: {},
  iterative: { on: true },
  json: { on: true },
};
const MODES = ["chat", "udp-chat", "month", "client", "inventory"] as const;
type Mode = typeof MODES[number];

const USAGE =
  `labcheck: checks your own socket lab program, and names what it misses

USAGE:
  deno task labcheck --chat HOST:PORT [--iterative]
  deno task labcheck --udp-chat HOST:PORT
  deno task labcheck --month HOST:PORT
  deno task labcheck --client "COMMAND {host} {port}"
  deno task labcheck --inventory HOST:PORT

OPTIONS:
      --chat <HOST:PORT>      A TCP chat server (start it first)
      --iterative             ... that serves one client at a time (the lab's task 1)
      --udp-chat <HOST:PORT>  A UDP chat relay
      --month <HOST:PORT>     A UDP month service ("3" gets March)
      --client <COMMAND>      A chat client: labcheck runs COMMAND against a server
                              of its own, with {host} and {port} filled in
      --inventory <HOST:PORT> A server of socklab's JSON-lines inventory protocol
      --json                  Print one JSON line at the end, not the report
  -h, --help                  Show this help

Each check prints ✔, ✘ with what happened and the lesson, or a note. The exit
code is 0 when nothing failed, 1 when a check failed, 2 for a bad command line.`;

/** What to check: the mode, its target, and how to report. */
export function parseLabcheckArgs(args: string[]) {
  const flags = parseFlags(args, FLAGS, 0);
  const given = MODES.filter((mode) => flags[mode] !== undefined);
  if (flags.help) return { help: true } as const;
  if (given.length !== 1) {
    throw new UsageError(
      given.length === 0
        ? "Say what to check: --chat, --udp-chat, --month, --client or --inventory"
        : `Check one program at a time, not ${
          given.map((m) => `--${m}`).join(" and ")
        }`,
    );
  }
  const mode: Mode = given[0];
  const value = String(flags[mode]);
  if (flags.iterative && mode !== "chat") {
    throw new UsageError("--iterative goes with --chat");
  }
  const json = flags.json === true;
  const iterative = flags.iterative === true;
  if (mode === "client") {
    if (!value.includes("{port}")) {
      throw new UsageError(
        `--client needs {port} in its command, like "python3 client.py {host} {port}"`,
      );
    }
    return { help: false, mode, command: value, json, iterative } as const;
  }
  return { help: false, mode, ...hostAndPort(value), json, iterative } as const;
}

/** `127.0.0.1:5000` or `[::1]:5000`. @throws {UsageError} if not */
function hostAndPort(text: string): { host: string; port: number } {
  const [, host, port] = /^\[?([^\]]+?)\]?:(\d+)$/.exec(text) ?? [];
  if (!host || Number(port) > 65535 || Number(port) === 0) {
    throw new UsageError(
      `Invalid address "${text}": use HOST:PORT, like 127.0.0.1:9999`,
    );
  }
  return { host, port: Number(port) };
}

async function main(): Promise<void> {
  const options = argsOrExit(parseLabcheckArgs, USAGE);
  if (options.help) return; // argsOrExit has printed the usage
  const { mode, json } = options;
  const what = options.mode === "client"
    ? `the client "${options.command}"`
    : `${options.host}:${options.port}`;
  const report = new Report(`labcheck --${mode}: ${what}`, json);
  const checks = () => {
    if (options.mode === "client") return checkClient(report, options.command);
    const target = { host: options.host, port: options.port };
    if (mode === "chat") return checkChat(report, target, options.iterative);
    if (mode === "udp-chat") return checkUdpChat(report, target);
    if (mode === "month") return checkMonth(report, target);
    return checkInventory(report, target);
  };
  // Ctrl-C or a kill: the client under test goes too.
  onStopSignals(() => {
    stopClients();
    Deno.exit(130);
  });
  const timer = setTimeout(() => {
    stopClients();
    report.fail(
      "time limit",
      `labcheck stopped after ${RUN_LIMIT_MS / 1000} s`,
      "a check waited too long: the program may be stuck",
      "Checking your own program: labcheck",
    );
    Deno.exit(report.finish());
  }, RUN_LIMIT_MS);
  await checks();
  clearTimeout(timer);
  Deno.exit(report.finish());
}

if (import.meta.main) main();
