/**
 * Typed errors. Only main.ts prints them and exits; the core throws or returns them.
 * Exit codes: 2 for usage and validation problems, 1 for runtime failures.
 */

/** Base of every error the program reports on purpose. */
export class AppError extends Error {
  /** Process exit code main.ts uses for this error. */
  readonly exitCode: number;
  constructor(message: string, opts: { exitCode?: number; cause?: unknown } = {}) {
    super(message, { cause: opts.cause });
    this.name = new.target.name;
    this.exitCode = opts.exitCode ?? 1;
  }
}

/** Something the user gave is wrong (exit 2). */
abstract class UsageError extends AppError {
  constructor(message: string, opts: { cause?: unknown } = {}) {
    super(message, { exitCode: 2, cause: opts.cause });
  }
}

/** Bad flags, env values or option combinations (exit 2). */
export class ConfigError extends UsageError {}

/** Bad user input: ACL lines, container names, rule lists (exit 2). */
export class ValidationError extends UsageError {}

/** A peer over HTTP could not be reached or answered with an error (exit 1). */
abstract class PeerError extends AppError {
  /** HTTP status when the peer answered, undefined when it was not reached. */
  readonly status?: number;
  constructor(message: string, opts: { cause?: unknown; status?: number } = {}) {
    super(message, { exitCode: 1, cause: opts.cause });
    this.status = opts.status;
  }
}

/** Consul could not be reached or answered with an error (exit 1). */
export class ConsulError extends PeerError {}

/** Docker could not be reached or answered with an error (exit 1). */
export class DockerError extends PeerError {}

/** Putting rules into a namespace failed (exit 1). */
export class ApplyError extends AppError {}

/** A template could not be read, compiled or rendered (exit 1). */
export class TemplateError extends AppError {}

/** One line for an error and its causes: `outer: inner: innermost`. */
export function describeError(err: unknown): string {
  const parts: string[] = [];
  let cur: unknown = err;
  for (let depth = 0; cur !== undefined && cur !== null && depth < 6; depth++) {
    const msg = cur instanceof Error ? cur.message : String(cur);
    if (msg && !parts.some((p) => p.includes(msg))) parts.push(msg);
    cur = cur instanceof Error ? cur.cause : undefined;
  }
  return parts.join(": ");
}
