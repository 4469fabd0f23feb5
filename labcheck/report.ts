/**
 * labcheck's report: one line a check (✔ passed, ✘ failed, a note, or
 * skipped), then a summary; or, with `--json`, one line at the end.
 * @module
 */

import { cleanText } from "../shared.ts";
import { bold, dim, green, red, yellow } from "./colors.ts";

/** What a check found. */
export type Outcome = "pass" | "fail" | "note" | "skip";

/** One check's line: what it checked and what it found. */
export type Finding = {
  check: string; // the check's name, as the README lists it
  outcome: Outcome;
  text: string; // what happened
  lesson?: string; // a failure: what to learn from it
  readme?: string; // the README section that explains it
};

const MARKS: Record<Outcome, string> = {
  pass: "✔",
  fail: "✘",
  note: "note:",
  skip: "skipped:",
};

/** Lessons that more than one mode teaches. */
export const LESSONS = {
  splitCharacter:
    "decode whole lines, not each recv(): a UTF-8 character can be cut between two reads",
};

/** Shows what a program printed or sent, cleaned and cut short. */
export function quote(text: string, most = 60): string {
  // Also the line and paragraph separators and direction marks, which
  // cleanText passes (they are valid text), but which break a report line.
  const clean = cleanText(text).replace(
    /[\u2028\u2029\u200e\u200f\u061c]/g,
    "",
  );
  const short = clean.length > most ? clean.slice(0, most) + "..." : clean;
  return JSON.stringify(short);
}

/** The findings of one run, printed as they come unless `json`. */
export class Report {
  readonly findings: Finding[] = [];
  constructor(readonly title: string, readonly json: boolean) {
    if (!json) console.log(bold(title));
  }

  pass(check: string, text: string): void {
    this.#add({ check, outcome: "pass", text });
  }
  /** A failure: what happened, the lesson, and where the README explains it. */
  fail(check: string, text: string, lesson: string, readme: string): void {
    this.#add({ check, outcome: "fail", text, lesson, readme });
  }
  /** The program cannot be reached: the first check fails. */
  cannotConnect(where: string, error: unknown): void {
    const why = error instanceof Error ? error.message : String(error);
    this.fail(
      "connects",
      `cannot connect to ${where}: ${why}`,
      "start the server first, and give labcheck its address and port",
      "Quick start",
    );
  }
  note(check: string, text: string): void {
    this.#add({ check, outcome: "note", text });
  }
  skip(check: string, text: string): void {
    this.#add({ check, outcome: "skip", text });
  }

  get failed(): number {
    return this.findings.filter((f) => f.outcome === "fail").length;
  }

  /** The summary (or the JSON line): @returns the exit code */
  finish(): number {
    const count = (outcome: Outcome) =>
      this.findings.filter((f) => f.outcome === outcome).length;
    const summary = {
      passed: count("pass"),
      failed: count("fail"),
      notes: count("note"),
      skipped: count("skip"),
    };
    if (this.json) {
      const { title, findings } = this;
      console.log(JSON.stringify({ title, ...summary, findings }));
    } else {
      const parts = [`${summary.passed} passed`, `${summary.failed} failed`];
      if (summary.notes) parts.push(`${summary.notes} notes`);
      if (summary.skipped) parts.push(`${summary.skipped} skipped`);
      const paint = summary.failed ? red : green;
      console.log(paint(`\n${parts.join(", ")}`));
    }
    return summary.failed > 0 ? 1 : 0;
  }

  #add(finding: Finding): void {
    this.findings.push(finding);
    if (this.json) return;
    const { outcome, text, lesson, readme } = finding;
    const mark = MARKS[outcome];
    const paint = { pass: green, fail: red, note: yellow, skip: dim }[outcome];
    const why = lesson ? `: ${lesson} (README: ${readme})` : "";
    console.log(`${paint(mark)} ${text}${why}`);
  }
}
