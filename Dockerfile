# The helper image for `--mode helper` (EGRESSTRATOR_IMAGE): iptables and ip6tables, nothing else.
# egresstrator starts it briefly in a container's network namespace with Cmd ["sh", "-c", <script>]
# and NET_ADMIN, so there is no ENTRYPOINT and no CMD.
#
#   docker build -t egresstrator/helper:latest - < Dockerfile
# (stdin: no build context is needed, and the repository with .tools/ would be a large one)
FROM debian:bookworm-slim

# iptables 1.8.9 with both backends; iptables-restore defaults to nf_tables (update-alternatives).
RUN apt-get update \
  && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends iptables \
  && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb

LABEL org.opencontainers.image.title="egresstrator-helper" \
  org.opencontainers.image.description="iptables for egresstrator's helper mode (run with sh -c)" \
  org.opencontainers.image.source="https://github.com/egresstrator/egresstrator" \
  org.egresstrator.image="helper"
