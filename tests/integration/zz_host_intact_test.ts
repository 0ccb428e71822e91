/**
 * The suite leaves the host as it found it: `docker0`, the iptables and ip6tables filter tables,
 * /etc/docker/daemon.json, net.netfilter.nf_log_all_netns and the top of /sys/fs/cgroup are compared with what
 * scripts/test.sh saved before `deno test` started
 * (tests/support/host_state.ts).
 *
 * Named zz_ to run last: `deno test tests/` runs the files of a directory in path order, one after the other
 * (not with --parallel), so every other integration test has finished and cleaned up by then. The unit tests
 * after it touch neither Docker nor iptables nor /etc.
 *
 * The main dockerd holds rules for test networks only while they exist, so the comparison is retried for a
 * while, in case the last cleanup is still under way; a leak stays and fails it, naming what differs.
 */
import { captureHostState, diffHostState, HOST_BEFORE_ENV, type HostState } from "../support/host_state.ts";
import { docker, TEST_LABEL } from "../support/docker.ts";

const SETTLE_MS = 30_000;

/** Labelled test containers and networks still on the main dockerd (ours or another test run's). */
async function testObjectsLeft(): Promise<string[]> {
  const c = docker();
  try {
    const filters = { label: [TEST_LABEL] };
    const containers = await c.listContainers({ all: true, filters });
    const networks = await c.rawJson<{ Name: string; Labels: Record<string, string> }[]>({
      what: "list test networks",
      path: "/networks",
      query: { filters: JSON.stringify(filters) },
    });
    return [
      ...containers.map((x) => `container ${x.names.join(",")} (${TEST_LABEL}=${x.labels[TEST_LABEL]})`),
      ...(networks ?? []).map((n) => `network ${n.Name} (${TEST_LABEL}=${n.Labels[TEST_LABEL]})`),
    ];
  } finally {
    c.close();
  }
}

Deno.test("host: docker0, the iptables/ip6tables filter tables, daemon.json, nf_log_all_netns and /sys/fs/cgroup are as before the suite", async () => {
  const file = Deno.env.get(HOST_BEFORE_ENV);
  if (!file) {
    throw new Error(
      `${HOST_BEFORE_ENV} is not set: run the suite with scripts/test.sh, or save the state first with ` +
        `\`deno run -A tests/support/host_state.ts <file>\` and set ${HOST_BEFORE_ENV}=<file>`,
    );
  }
  const before = JSON.parse(await Deno.readTextFile(file)) as HostState;
  const deadline = Date.now() + SETTLE_MS;
  let diff = diffHostState(before, await captureHostState());
  while (diff.length > 0 && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 500));
    diff = diffHostState(before, await captureHostState());
  }
  if (diff.length === 0) return;
  const left = await testObjectsLeft();
  throw new Error(
    `the host differs from before the suite (${file}), still after ${SETTLE_MS / 1000} s:\n` +
      diff.map((d) => `  ${d}`).join("\n") +
      (left.length ? `\ntest objects still on the main dockerd:\n  ${left.join("\n  ")}` : ""),
  );
});
