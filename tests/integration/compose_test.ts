/**
 * docker compose as users run it (Debian's docker-compose, `DOCKER_HOST` at a private dockerd): a project
 * whose `web` service opts in through `environment:` and whose `worker` service does not, brought `up` with
 * `--scale web=3`, `restart`ed and taken `down`, with the daemon following that dockerd. Proven with
 * traffic to an httpd the test runs on the project's (external) network; 10.50.x.x is never dialed.
 */
import assert from "node:assert/strict";
import {
  BUSYBOX_IMAGE,
  containerIp,
  dockerCli,
  HELPER_IMAGE,
  RUN_ID,
  TEST_LABEL,
  withDocker,
} from "../support/docker.ts";
import { canConnect, helpersLeft, iptablesIn, logsFor, ruleLines, waitFor } from "../support/egresstrator.ts";
import { getStatus, withLive } from "../support/live.ts";
import type { CliResult } from "../support/run_cli.ts";

/** The compose file: what the README's example shows, on the test's network. */
function composeFile(network: string): string {
  return `version: "2.4"
services:
  web:
    image: ${BUSYBOX_IMAGE}
    command: ["sleep", "3600"]
    stop_grace_period: 1s
    environment:
      EGRESSTRATOR_ENABLE: "1"
      EGRESSTRATOR_ACL: other
    labels:
      ${TEST_LABEL}: "${RUN_ID}"
  worker:
    image: ${BUSYBOX_IMAGE}
    command: ["sleep", "3600"]
    stop_grace_period: 1s
    environment:
      EGRESSTRATOR_ACL: other
    labels:
      ${TEST_LABEL}: "${RUN_ID}"
networks:
  default:
    external: true
    name: ${network}
`;
}

Deno.test("compose: up --scale web=3, restart, down: every opted-in replica enforced, the rest untouched, nothing left", async () => {
  await withLive({ images: [BUSYBOX_IMAGE, HELPER_IMAGE] }, async (env) => {
    const { d } = env;
    const net = await d.createNetwork();
    const server = await d.run({ cmd: ["httpd", "-f", "-p", "8080"], network: net.name });
    const ip = await containerIp(server.id, net.name, d.host);
    await env.put("srv", `${ip}/32:tcp/8080\n`);
    await env.put("other", "10.50.128.0/24:tcp/443\n");
    // Helper mode: "nothing left behind" covers the helper containers too.
    const daemon = await env.daemon(["--mode", "helper", "-i", HELPER_IMAGE]);
    await daemon.waitForLog((e) => e.msg === "connected to docker", 30_000, "connected to docker");

    const dir = await Deno.makeTempDir({ prefix: "egt-compose-" });
    const project = `egt${crypto.randomUUID().slice(0, 8)}`;
    await Deno.writeTextFile(`${dir}/docker-compose.yml`, composeFile(net.name));
    const compose = async (...args: string[]): Promise<CliResult> => {
      const out = await new Deno.Command("docker-compose", {
        args: ["-p", project, ...args],
        cwd: dir,
        env: { DOCKER_HOST: d.host },
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
        signal: AbortSignal.timeout(120_000),
      }).output();
      const dec = new TextDecoder();
      const r = { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
      assert.equal(r.code, 0, `docker-compose ${args.join(" ")}: ${r.stderr}`);
      return r;
    };
    const containers = async (service: string) => {
      const r = await dockerCli([
        "ps",
        "-q",
        "--no-trunc",
        "--filter",
        `label=com.docker.compose.project=${project}`,
        "--filter",
        `label=com.docker.compose.service=${service}`,
      ], { host: d.host });
      return r.stdout.split("\n").filter(Boolean);
    };
    const name = (id: string) => withDocker(d.host, async (c) => (await c.inspectContainer(id)).name);
    const reaches = (id: string) => canConnect(id, ip, 8080, d.host);
    try {
      await compose("up", "-d", "--scale", "web=3");
      const web = await containers("web");
      const worker = await containers("worker");
      assert.equal(web.length, 3, "three web replicas");
      assert.equal(worker.length, 1);
      const webNames = await Promise.all(web.map(name));

      const enforcedAll = async (times: number, what: string) => {
        await waitFor(
          () => webNames.every((n) => logsFor(daemon, "applied", n).length >= times),
          60_000,
          `an applied line (x${times}) for each web replica ${what}`,
        );
        for (const id of web) {
          const r = await reaches(id);
          assert.equal(r.ok, false, `web replica ${id.slice(0, 12)} ${what} reaches the protected server`);
        }
        const w = await reaches(worker[0]);
        assert.equal(w.ok, true, `the worker (no opt-in) ${what} is blocked: ${w.detail}`);
        assert.deepEqual(ruleLines(await iptablesIn(worker[0], "ipv4", d.host)), [], "worker: no rules");
      };
      await enforcedAll(1, "after up");

      // restart: every container gets a new namespace, so the rules go with the old one and come back.
      await compose("restart", "-t", "1");
      assert.deepEqual((await containers("web")).sort(), [...web].sort(), "restart keeps the containers");
      await enforcedAll(2, "after restart");
      assert.deepEqual(await helpersLeft(undefined, d.host), [], "helpers left while running");

      await compose("down", "-t", "1");
      assert.deepEqual([...await containers("web"), ...await containers("worker")], [], "down removes all");
      await waitFor(
        async () => !(await getStatus(env.listen)).containers.some((c) => web.includes(c.id)),
        20_000,
        "the removed replicas gone from /status",
      );
      assert.deepEqual(await helpersLeft(undefined, d.host), [], "helpers left after down");
      assert.equal((await daemon.stop()).code, 0);
      assert.deepEqual(await helpersLeft(undefined, d.host), [], "helpers left after the daemon stopped");
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  });
});
