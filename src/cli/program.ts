/**
 * The commander program: turns argv + env into a Config and dispatches to a command.
 * Global options are accepted before and after the subcommand.
 */
import { Command, CommanderError, Option } from "@commander-js/extra-typings";
import { addGlobalOptions, collectRaw } from "./options.ts";
import type { Config } from "../config/config.ts";
import { loadConfig } from "../config/load.ts";
import { ConfigError } from "../errors.ts";
import { createLogger } from "../log.ts";
import { startDaemon } from "../daemon/daemon.ts";
import { clearCommand, setCommand } from "./commands/set_clear.ts";
import { statusCommand } from "./commands/status.ts";
import { runtimeConfigCommand, shimText } from "./commands/runtime_config.ts";
import type { Out } from "./commands/io.ts";
import { renderCommand } from "./commands/render.ts";
import { validateCommand } from "./commands/validate.ts";
import { suggestCommand } from "./commands/suggest.ts";
import { VERSION } from "../version.ts";

/** What the CLI needs from its surroundings (main.ts passes the real ones). */
export interface CliIO extends Out {
  env: Record<string, string | undefined>;
  /** Aborted on SIGINT/SIGTERM. */
  signal: AbortSignal;
}

// deno-lint-ignore no-explicit-any
type AnyCommand = Command<any, any, any>;

function configFrom(cmd: AnyCommand, io: CliIO): Promise<Config> {
  return loadConfig(collectRaw(cmd, io.env));
}

const DESCRIPTION = `Set egress rules in network namespaces.
Enable egresstrator with EGRESSTRATOR_ENABLE=1 in your container.
Specify egress rules with EGRESSTRATOR_ACL=myservice,otherservice

With no command, runs the daemon: follows Docker's events and applies rules to every opted-in container.
As dockerd's OCI runtime, 'egresstrator runtime <runc args>' enforces before a container's first instruction (see runtime-config and the README).`;

function buildProgram(io: CliIO, done: (code: number) => void): AnyCommand {
  const program = new Command("egresstrator")
    .description(DESCRIPTION)
    .version(VERSION, "-v, --version", "print the version")
    .helpOption("-h, --help", "show help")
    .showHelpAfterError("(run egresstrator --help for usage)")
    .exitOverride()
    .configureOutput({ writeOut: (s) => io.stdout(s), writeErr: (s) => io.stderr(s) });
  addGlobalOptions(program);
  program.action(async (_opts, cmd) => {
    const config = await configFrom(cmd, io);
    const log = createLogger({ level: config.logLevel, format: config.logFormat });
    const daemon = await startDaemon(config, log, io.signal);
    const hup = () => void daemon.reload();
    Deno.addSignalListener("SIGHUP", hup);
    try {
      await daemon.done;
    } finally {
      Deno.removeSignalListener("SIGHUP", hup);
    }
    done(0);
  });

  const sub = (name: string, summary: string) => {
    const c = program.command(name).description(summary).helpOption("-h, --help", "show help").exitOverride();
    c.configureOutput({ writeOut: (s) => io.stdout(s), writeErr: (s) => io.stderr(s) });
    c.addHelpText("after", "\nGlobal options (see egresstrator --help) are accepted here too.");
    return addGlobalOptions(c, true);
  };

  sub("render", "print the iptables-restore text for an ACL list; changes nothing")
    .argument("[container]", "container id, id prefix or name (its EGRESSTRATOR_ACL is the list)")
    .option("-r, --rules <list>", "comma-separated ACL keys the container is allowed")
    .option("--json", "print the model the template receives instead of the text")
    .addOption(new Option("--family <family>", "address family to render").choices(["ipv4", "ipv6", "all"]))
    .action(async (container, opts, cmd) => {
      done(await renderCommand(await configFrom(cmd, io), { ...opts, container }, io, io.signal));
    });

  sub("validate", "check every ACL key and the services they name; exit 2 on errors")
    .option(
      "--resolve",
      "also look up each DNS name in a rule from this host (a warning when it does not resolve)",
    )
    .action(async (opts, cmd) =>
      done(
        await validateCommand(await configFrom(cmd, io), io, io.signal, { resolve: opts.resolve === true }),
      )
    );

  sub("status", "show what a running daemon enforces (from its --listen socket)")
    .option("--json", "print the daemon's /status JSON")
    .action(async (opts, cmd) => done(await statusCommand(await configFrom(cmd, io), opts, io)));

  sub(
    "suggest",
    "print ACL lines that would let through what a container was refused lately (asks the daemon)",
  )
    .argument("<container>", "container id, id prefix or name (as the daemon's status shows it)")
    .option("--no-services", "print addresses, never <tag>.<service> names from Consul's catalog")
    .action(async (container, opts, cmd) => {
      const config = await configFrom(cmd, io);
      done(await suggestCommand(config, { container, services: opts.services }, io, io.signal));
    });

  sub("runtime-config", "register the runtime gate in dockerd's daemon.json (or remove it)")
    .option("--daemon-json <file>", "dockerd's config file", "/etc/docker/daemon.json")
    .option("--binary <path>", "absolute path of the egresstrator binary", "/usr/local/bin/egresstrator")
    .option("--shim <path>", "the runtime shim to register (default: egresstrator-runtime beside --binary)")
    .option("--default", "make it dockerd's default-runtime (every container goes through the gate)")
    .option("--remove", "remove the runtime (and default-runtime when it is ours)")
    .action(async (opts) =>
      done(
        await runtimeConfigCommand({
          daemonJson: opts.daemonJson,
          binary: opts.binary,
          shim: opts.shim,
          makeDefault: opts.default,
          remove: opts.remove,
        }, io),
      )
    );

  sub("runtime-shim", "print the OCI runtime shim runtime-config registers (install it beside the binary)")
    .action(async () => {
      io.stdout(await shimText());
      done(0);
    });

  sub("set", "Set egress rules on specified container")
    .argument("[container]", "container id, id prefix or name")
    .option("-a, --all", "every running container that opts in")
    .option("-r, --rules <list>", "ACL keys to apply instead of the container's EGRESSTRATOR_ACL")
    .action(async (container, opts, cmd) => {
      done(await setCommand(await configFrom(cmd, io), { ...opts, container }, io, io.signal));
    });

  sub("clear", "Clear egress rules on specified container")
    .argument("[container]", "container id, id prefix or name")
    .option("-a, --all", "every running container that opts in")
    .action(async (container, opts, cmd) => {
      done(await clearCommand(await configFrom(cmd, io), { ...opts, container }, io, io.signal));
    });
  return program;
}

/** Parse argv and run the command. Returns the exit code; throws AppError for main.ts to print. */
export async function runCli(argv: string[], io: CliIO): Promise<number> {
  let code = 0;
  const program = buildProgram(io, (c) => (code = c));
  try {
    await program.parseAsync(argv, { from: "user" });
  } catch (err) {
    if (err instanceof CommanderError) {
      // help and version are "errors" with exit code 0; usage errors were already printed.
      if (err.exitCode === 0) return 0;
      throw new ConfigError(err.message.replace(/^error: /, ""), { cause: err });
    }
    throw err;
  }
  return code;
}
