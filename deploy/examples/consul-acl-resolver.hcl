# Consul ACL policy for `dnsfront serve` (every node).
#   consul acl policy create -name dnsfront-resolver -rules @consul-acl-resolver.hcl
#   consul acl token create -description "dnsfront resolver" -policy-name dnsfront-resolver
# service:read + node:read: /v1/health/service/NAME and /v1/catalog/node/NAME.
# key:read on the prefix dnsfront/hosts: the snapshot (dnsfront/hosts), its pointer
# (dnsfront/hosts.pointer) and the kill switch (dnsfront/hosts-stop). Names the token
# cannot read look like unknown names.
service_prefix "" {
  policy = "read"
}
node_prefix "" {
  policy = "read"
}
key_prefix "dnsfront/hosts" {
  policy = "read"
}
