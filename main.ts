/**
 * egresstrator: puts egress firewall rules in Docker containers' network namespaces, from ACLs in Consul.
 * The only place that reads Deno.args, prints errors and calls Deno.exit.
 */
import { runCli } from "./src/cli.ts";
import { AppError, describeError } from "./src/errors.ts";
import { processOut } from "./src/commands/io.ts";

async function main(): Promise<number> {
  const shutdown = new AbortController();
  const stop = () => shutdown.abort(new Error("interrupted"));
  for (const sig of ["SIGINT", "SIGTERM"] as const) Deno.addSignalListener(sig, stop);
  const debug = Deno.args.includes("--debug") ||
    /^(1|true|yes|on)$/i.test(Deno.env.get("EGRESSTRATOR_DEBUG") ?? "");
  try {
    return await runCli(Deno.args, { ...processOut, env: Deno.env.toObject(), signal: shutdown.signal });
  } catch (err) {
    // A usage error commander already printed would otherwise be printed twice.
    const printed = err instanceof AppError && err.cause instanceof Error &&
      err.cause.name === "CommanderError";
    if (!printed) processOut.stderr(`egresstrator: ${describeError(err)}\n`);
    if (debug && err instanceof Error && err.stack) processOut.stderr(`${err.stack}\n`);
    return err instanceof AppError ? err.exitCode : 1;
  } finally {
    for (const sig of ["SIGINT", "SIGTERM"] as const) Deno.removeSignalListener(sig, stop);
  }
}

Deno.exit(await main());
