/** Pick the applier a Config asks for. */
import type { Config } from "../config/config.ts";
import type { Logger } from "../log.ts";
import type { Applier } from "./applier.ts";
import { denoRunner, kernelHasIPv6 } from "./applier.ts";
import { NsenterApplier } from "./nsenter.ts";
import { HelperApplier, type HelperDocker } from "./helper.ts";

/** nsenter by default; the helper container when --mode helper (or --image) is set. */
export function makeApplier(
  config: Config,
  docker: HelperDocker,
  log: Logger,
  ipv6: boolean = kernelHasIPv6(),
): Applier {
  const timeoutMs = config.helperTimeoutMs;
  if (config.mode === "helper") {
    return new HelperApplier(docker, { image: config.image!, timeoutMs, log, ipv6 });
  }
  return new NsenterApplier(denoRunner, { ipv6, timeoutMs });
}
