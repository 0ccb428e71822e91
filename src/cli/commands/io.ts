/** What commands write to: stdout for results, stderr for problems and summaries. */
export interface Out {
  stdout(text: string): void;
  stderr(text: string): void;
}

/** Write to the process streams (main.ts passes this in). */
export const processOut: Out = {
  stdout: (t) => writeAll(Deno.stdout, t),
  stderr: (t) => writeAll(Deno.stderr, t),
};

function writeAll(w: { writeSync(p: Uint8Array): number }, text: string) {
  let buf = new TextEncoder().encode(text);
  while (buf.length > 0) buf = buf.subarray(w.writeSync(buf));
}
