/** labcheck's colors: only at a terminal, and never with NO_COLOR. @module */

import * as stdColors from "@std/fmt/colors";

type Paint = (text: string) => string;
// The std module is JavaScript without types: typed here, where it enters.
const colors = stdColors as unknown as Record<string, Paint> & {
  setColorEnabled(on: boolean): void;
};
colors.setColorEnabled(Deno.stdout.isTerminal() && !Deno.noColor);

export const { bold, dim, green, red, yellow } = colors;
