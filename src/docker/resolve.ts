/**
 * Turn what a user typed (`3f2a1b`, `web`, `/web`, a full id) into one container, with Docker's
 * precedence: full id, then exact name, then unique id prefix.
 */
import { ValidationError } from "../errors.ts";
import type { ContainerSummary, DockerClient } from "./client.ts";

/** Id prefixes shorter than this are refused: too easy to hit the wrong container. */
export const MIN_PREFIX = 3;

/** Candidates listed in an "ambiguous" message before "and N more". */
const MAX_LISTED = 5;

/** Pick the one container `ref` names among `containers` (pure; see {@link resolveContainer}). */
export function matchContainer(containers: ContainerSummary[], ref: string): ContainerSummary {
  const wanted = ref.trim();
  if (!wanted) throw new ValidationError("container reference is empty");
  const byId = containers.find((c) => c.id === wanted);
  if (byId) return byId;
  const name = wanted.replace(/^\//, "");
  const byName = containers.find((c) => c.names.includes(name));
  if (byName) return byName;
  const byPrefix = containers.filter((c) => c.id.startsWith(wanted));
  if (byPrefix.length === 0) throw new ValidationError(`no container matches "${ref}"`);
  if (wanted.length < MIN_PREFIX) {
    throw new ValidationError(
      `"${ref}" is too short for a container id prefix: use at least ${MIN_PREFIX} characters or the name`,
    );
  }
  if (byPrefix.length === 1) return byPrefix[0];
  throw new ValidationError(`"${ref}" matches ${byPrefix.length} containers: ${listCandidates(byPrefix)}`);
}

function listCandidates(list: ContainerSummary[]): string {
  const shown = list.slice(0, MAX_LISTED).map((c) => `${c.id.slice(0, 12)} (${c.names[0] ?? "no name"})`);
  if (list.length > MAX_LISTED) shown.push(`and ${list.length - MAX_LISTED} more`);
  return shown.join(", ");
}

/**
 * Find the container `ref` names among all containers, running or not: its full id, its name (with
 * or without the leading `/`) or a unique id prefix of at least {@link MIN_PREFIX} characters.
 * Unknown or ambiguous references are ValidationErrors; Docker failures stay DockerErrors.
 */
export async function resolveContainer(
  client: Pick<DockerClient, "listContainers">,
  ref: string,
  signal?: AbortSignal,
): Promise<ContainerSummary> {
  const containers = await client.listContainers({ all: true, signal });
  return matchContainer(containers, ref);
}
