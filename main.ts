/**
 * egresstrator: puts egress firewall rules in Docker containers' network namespaces, from ACLs in Consul.
 * The only place that reads Deno.args, prints errors and calls Deno.exit.
 *
 * Run as `egresstrator runtime <runc args>` (or installed under the name `egresstrator-runtime`) it is the
 * OCI runtime gate; that path loads none of the CLI, so passing calls on to runc stays cheap. Run as
 * `egresstrator hook` (an OCI createRuntime hook, e.g. in Podman's hooks.d) it reads the container's state
 * on stdin and does the gate's work from inside the runtime, just as cheaply.
 */
import { AppError, describeError } from "./src/errors.ts";
import { processOut } from "./src/cli/commands/io.ts";

function isRuntime(): boolean {
  const exe = Deno.execPath().split("/").pop() ?? "";
  return Deno.args[0] === "runtime" || exe === "egresstrator-runtime";
}

async function gate(): Promise<number> {
  const { runGate } = await import("./src/gate/runtime.ts");
  const argv = Deno.args[0] === "runtime" ? Deno.args.slice(1) : Deno.args;
  return await runGate(argv, Deno.env.toObject());
}

async function hook(): Promise<number> {
  const { runHook } = await import("./src/gate/hook.ts");
  return await runHook(await new Response(Deno.stdin.readable).text(), Deno.env.toObject());
}

async function cli(): Promise<number> {
  const { runCli } = await import("./src/cli/program.ts");
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

Deno.exit(await (isRuntime() ? gate() : Deno.args[0] === "hook" ? hook() : cli()));
