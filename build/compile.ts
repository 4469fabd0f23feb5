#!/usr/bin/env -S deno run --allow-read --allow-write --allow-run --allow-env
/**
 * Builds socklab's programs into single executables for lab PCs, with
 * `deno compile`: one file per program and platform, in `dist/`, that runs
 * with nothing installed.
 *
 * ```sh
 * deno task compile                                  # every program, every platform
 * deno task compile --program client --target x86_64-pc-windows-msvc
 * deno task compile --native                         # this machine's platform only
 * ```
 *
 * @module
 */

import { argsOrExit, type FlagRow, parseFlags, UsageError } from "../shared.ts";

/** The platforms of lab PCs, as Deno names them. */
export const TARGETS = [
  "x86_64-unknown-linux-gnu",
  "aarch64-unknown-linux-gnu",
  "x86_64-pc-windows-msvc",
  "x86_64-apple-darwin",
  "aarch64-apple-darwin",
] as const;

/** The programs, and the permissions each carries: what it needs, no more. */
export const PROGRAMS: Record<string, { script: string; flags: string[] }> = {
  server: {
    script: "server.ts",
    // Read: --tls-cert, --tls-key, --data. Write: --data and its temporary file.
    flags: [
      "--allow-net",
      "--allow-sys=networkInterfaces",
      "--allow-env=SOCKLAB_PASSWORD",
      "--allow-read",
      "--allow-write",
    ],
  },
  client: {
    script: "client.ts",
    // Read: --ca.
    flags: ["--allow-net", "--allow-env=SOCKLAB_PASSWORD", "--allow-read"],
  },
  "udp-server": {
    script: "udp_server.ts",
    flags: [
      "--allow-net",
      "--allow-sys=networkInterfaces",
      "--allow-env=SOCKLAB_PASSWORD",
      "--unstable-net",
    ],
  },
  "udp-client": {
    script: "udp_client.ts",
    flags: ["--allow-net", "--allow-env=SOCKLAB_PASSWORD", "--unstable-net"],
  },
};

const USAGE =
  `socklab compile: one executable per program and platform, for lab PCs

USAGE:
  deno task compile [OPTIONS]

OPTIONS:
      --program <NAME>   Build only this program (server, client, udp-server,
                         udp-client); may be given more than once
      --target <TRIPLE>  Build only for this platform; may be given more than once:
                         ${TARGETS.join("\n                         ")}
      --native           Build only for this machine's platform (${Deno.build.target})
      --out <FOLDER>     Where to put the files (default dist)
  -h, --help             Show this help

Deno downloads its small runtime for each platform the first time. Offline,
set DENORT_BIN to a runtime downloaded elsewhere, and build for its platform
only (--target, or --native): see the README, "Shipping to lab PCs".`;

/** What to build. */
export interface CompileOptions {
  programs: string[];
  targets: string[];
  outDir: string;
  help: boolean;
}

const FLAGS = {
  program: {},
  target: {},
  native: { on: true },
  out: { default: "dist" },
} satisfies Record<string, FlagRow>;

/**
 * Reads the compile task's arguments.
 * @throws {UsageError} for an unknown program or target
 */
export function parseCompileArgs(args: string[]): CompileOptions {
  const flags = parseFlags(args, FLAGS, 0);
  const programs = everyValue(args, "program");
  for (const program of programs) {
    if (!(program in PROGRAMS)) {
      throw new UsageError(
        `Unknown program "${program}": use ${Object.keys(PROGRAMS).join(", ")}`,
      );
    }
  }
  const targets = flags.native === true
    ? [Deno.build.target]
    : everyValue(args, "target");
  for (const target of targets) {
    if (!(TARGETS as readonly string[]).includes(target)) {
      throw new UsageError(
        `Unknown target "${target}": use ${TARGETS.join(", ")}`,
      );
    }
  }
  return {
    programs: programs.length > 0 ? programs : Object.keys(PROGRAMS),
    targets: targets.length > 0 ? targets : [...TARGETS],
    outDir: String(flags.out),
    help: flags.help,
  };
}

/**
 * Every value of a flag that may be given more than once (--program,
 * --target), in order: `parseFlags` keeps the last one only. Read as
 * parseArgs reads a text flag: `--flag=VALUE`, or `--flag VALUE` unless
 * VALUE looks like a flag (then the value is empty); nothing after `--`.
 */
function everyValue(args: string[], flag: "program" | "target"): string[] {
  const values: string[] = [];
  for (let i = 0; i < args.length && args[i] !== "--"; i++) {
    if (args[i].startsWith(`--${flag}=`)) {
      values.push(args[i].slice(flag.length + 3));
    } else if (args[i] === `--${flag}`) {
      const next = args[i + 1];
      const isValue = next !== undefined &&
        (!next.startsWith("-") || next === "-");
      values.push(isValue ? next : "");
      if (isValue) i++;
    }
  }
  return values;
}

/** The file name a person knows to copy, like socklab-client-x86_64-pc-windows-msvc.exe. */
export function binaryName(program: string, target: string): string {
  const exe = target.includes("windows") ? ".exe" : "";
  return `socklab-${program}-${target}${exe}`;
}

/** The deno compile arguments for one program and platform. */
export function compileArgs(
  program: string,
  target: string,
  outDir: string,
): string[] {
  const { script, flags } = PROGRAMS[program];
  return [
    "compile",
    "--no-check", // checked once, before
    ...flags,
    "--target",
    target,
    "--output",
    `${outDir}/${binaryName(program, target)}`,
    script,
  ];
}

/** Says in one line why `deno compile` failed, from what it printed. */
export function compileFailure(stderr: string, target: string): string {
  if (/Could not find denort/.test(stderr)) {
    return `DENORT_BIN is not a file: "${Deno.env.get("DENORT_BIN")}"`;
  }
  if (/error sending request|dns error|download/i.test(stderr)) {
    return `cannot download Deno's runtime for ${target} (no internet?): ` +
      "set DENORT_BIN to one downloaded elsewhere (see the README)";
  }
  // deno-lint-ignore no-control-regex -- removing color codes
  const plain = stderr.replace(/\x1b\[[0-9;]*m/g, "").trim().split("\n");
  return plain.find((line) => /error/i.test(line)) ?? plain.at(-1) ?? "";
}

async function run(args: string[]) {
  const output = await new Deno.Command(Deno.execPath(), {
    args,
    stdout: "piped",
    stderr: "piped",
  }).output();
  return {
    ok: output.success,
    stderr: new TextDecoder().decode(output.stderr),
  };
}

function megabytes(bytes: number): string {
  return `${(bytes / 1e6).toFixed(1)} MB`;
}

async function main(): Promise<void> {
  const options = argsOrExit(parseCompileArgs, USAGE);
  const denort = Deno.env.get("DENORT_BIN");
  if (denort && options.targets.length > 1) {
    console.error(
      `DENORT_BIN is the runtime of one platform: add --target (its platform) or --native`,
    );
    Deno.exit(2);
  }
  // The programs' type check, once for every platform.
  const scripts = options.programs.map((program) => PROGRAMS[program].script);
  console.log(`Checking ${scripts.join(", ")}`);
  const check = await run(["check", ...scripts]);
  if (!check.ok) {
    console.error(check.stderr);
    Deno.exit(1);
  }
  await Deno.mkdir(options.outDir, { recursive: true });
  if (denort) console.log(`Using the runtime in DENORT_BIN: ${denort}`);
  let failures = 0;
  for (const target of options.targets) {
    for (const program of options.programs) {
      const file = `${options.outDir}/${binaryName(program, target)}`;
      const result = await run(compileArgs(program, target, options.outDir));
      if (result.ok) {
        const { size } = await Deno.stat(file);
        console.log(`built  ${file}  ${megabytes(size)}`);
      } else {
        failures++;
        console.error(
          `failed ${file}: ${compileFailure(result.stderr, target)}`,
        );
      }
    }
  }
  const total = options.targets.length * options.programs.length;
  console.log(`${total - failures} of ${total} built in ${options.outDir}/`);
  Deno.exit(failures === 0 ? 0 : 1);
}

if (import.meta.main) main();
