# Consul ACL policy for `dnsfront publish` (Consul server nodes only).
#   consul acl policy create -name dnsfront-publisher -rules @consul-acl-publisher.hcl
#   consul acl token create -description "dnsfront publisher" -policy-name dnsfront-publisher
# service:read + node:read: the whole catalog goes into the snapshot (a token that
# cannot see everything publishes a partial snapshot: the guards may refuse it).
# agent:read: /v1/agent/self (node name as identity, datacenter).
# key:write on the prefix dnsfront/hosts: the snapshot, its pointer
# dnsfront/hosts.pointer, its lock key dnsfront/hosts.lock, and reading the kill
# switch dnsfront/hosts-stop.
# session:write: the lock session, created on the agent's own node.
service_prefix "" {
  policy = "read"
}
node_prefix "" {
  policy = "read"
}
agent_prefix "" {
  policy = "read"
}
key_prefix "dnsfront/hosts" {
  policy = "write"
}
session_prefix "" {
  policy = "write"
}
