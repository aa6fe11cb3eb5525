# Registers this node's dnsfront with its local Consul agent, with a script
# check running `dnsfront check`, so the fleet's resolvers show in Consul's UI
# and in /v1/health/state/critical. `dnsfront check` exits 0 (passing),
# 1 (warning: e.g. a dead upstream beside a live one, Consul unreachable while
# serving stale data) or 2 (critical: e.g. the listen socket does not answer),
# which is Consul's script-check convention; its output becomes the check's notes.
#
# Install (on every node that runs dnsfront):
#   cp consul-service-dnsfront.hcl /etc/consul.d/dnsfront.hcl
#   cp sudoers-dnsfront-check /etc/sudoers.d/dnsfront-check && chmod 0440 /etc/sudoers.d/dnsfront-check
#   consul reload
# The agent must allow local script checks (agent config):
#   enable_local_script_checks = true
# (never enable_script_checks: that lets the HTTP API register scripts).
#
# Why sudo: the agent runs as `consul`; `dnsfront check` talks to the running
# server over /run/dnsfront/control.sock (mode 0600: root and the service user)
# and reads the Consul token the service gets through LoadCredential=
# (root-only). The sudoers rule allows exactly this read-only command.
# With an ACL-enabled agent, the agent's token needs service:write on "dnsfront".
service {
  name = "dnsfront"
  id   = "dnsfront"
  tags = ["dns", "resolver"]
  # The resolver answers the node itself; other nodes do not query it.
  address = "127.0.0.1"
  port    = 53
  meta = {
    role = "node-resolver"
  }
  check {
    id       = "dnsfront-check"
    name     = "dnsfront check"
    args     = ["/usr/bin/sudo", "-n", "/usr/bin/dnsfront", "check", "--config", "/etc/dnsfront/dnsfront.toml"]
    interval = "30s"
    # Every probe of `dnsfront check` is bounded by 2 s; a few run one after another.
    timeout = "25s"
    # A resolver that stays critical is worth a page, but one failed run is not.
    success_before_passing  = 1
    failures_before_critical = 2
  }
}
