//! ACL policies as Consul evaluates them, for the endpoints the simulator
//! serves: each token carries rules per resource (`service`, `node`, `key`,
//! `session`, `agent`, `operator`), exact or by prefix, each `deny`, `read`
//! or `write`. As in Consul, an exact rule wins over prefix rules, the longest
//! prefix wins among those, `write` implies `read`, and anything no rule
//! covers is denied (`acl.default_policy = deny`).
//!
//! What a missing permission does follows Consul: reads of lists and of
//! catalog/health data are *filtered* (entries the token may not read are
//! left out, with `X-Consul-Results-Filtered-By-ACLs: true`); a KV read or
//! write, a session call, `/v1/agent/self` or an operator call is refused with
//! 403 `Permission denied: token with AccessorID '…' lacks permission
//! '<resource>:<access>' on "<name>"`. An unknown token is 403 `ACL not found`
//! on every endpoint except `/v1/status/*`.

use std::fmt;

/// A resource kind of Consul's ACL rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    /// `service` / `service_prefix`.
    Service,
    /// `node` / `node_prefix`.
    Node,
    /// `key` / `key_prefix`.
    Key,
    /// `session` / `session_prefix` (by node name).
    Session,
    /// `agent` / `agent_prefix` (by node name).
    Agent,
    /// `operator` (no name).
    Operator,
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Service => "service",
            Self::Node => "node",
            Self::Key => "key",
            Self::Session => "session",
            Self::Agent => "agent",
            Self::Operator => "operator",
        })
    }
}

/// A rule's policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    /// Nothing.
    Deny,
    /// Read.
    Read,
    /// Read and write.
    Write,
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Deny => "deny",
            Self::Read => "read",
            Self::Write => "write",
        })
    }
}

#[derive(Debug, Clone)]
struct Rule {
    resource: Resource,
    name: String,
    prefix: bool,
    access: Access,
}

/// The rules one token carries (its policies merged).
#[derive(Debug, Clone, Default)]
pub struct AclPolicy {
    /// Every permission (`global-management`).
    management: bool,
    rules: Vec<Rule>,
}

impl AclPolicy {
    /// No rule: everything denied (until rules are added).
    pub fn new() -> Self {
        Self::default()
    }

    /// Everything allowed, as the bootstrap token's `global-management` policy.
    pub fn management() -> Self {
        Self {
            management: true,
            rules: Vec::new(),
        }
    }

    fn rule(mut self, resource: Resource, name: &str, prefix: bool, access: Access) -> Self {
        self.rules.push(Rule {
            resource,
            name: name.to_owned(),
            prefix,
            access,
        });
        self
    }

    /// `service "NAME" { policy = … }`.
    pub fn service(self, name: &str, access: Access) -> Self {
        self.rule(Resource::Service, name, false, access)
    }

    /// `service_prefix "PREFIX" { policy = … }`.
    pub fn service_prefix(self, prefix: &str, access: Access) -> Self {
        self.rule(Resource::Service, prefix, true, access)
    }

    /// `node "NAME" { policy = … }`.
    pub fn node(self, name: &str, access: Access) -> Self {
        self.rule(Resource::Node, name, false, access)
    }

    /// `node_prefix "PREFIX" { policy = … }`.
    pub fn node_prefix(self, prefix: &str, access: Access) -> Self {
        self.rule(Resource::Node, prefix, true, access)
    }

    /// `key "NAME" { policy = … }`.
    pub fn key(self, name: &str, access: Access) -> Self {
        self.rule(Resource::Key, name, false, access)
    }

    /// `key_prefix "PREFIX" { policy = … }`.
    pub fn key_prefix(self, prefix: &str, access: Access) -> Self {
        self.rule(Resource::Key, prefix, true, access)
    }

    /// `session_prefix "PREFIX" { policy = … }` (by node name).
    pub fn session_prefix(self, prefix: &str, access: Access) -> Self {
        self.rule(Resource::Session, prefix, true, access)
    }

    /// `agent_prefix "PREFIX" { policy = … }` (by node name).
    pub fn agent_prefix(self, prefix: &str, access: Access) -> Self {
        self.rule(Resource::Agent, prefix, true, access)
    }

    /// `operator = "…"`.
    pub fn operator(self, access: Access) -> Self {
        self.rule(Resource::Operator, "", true, access)
    }

    /// Parses Consul's rule language, the subset the simulator models:
    /// `service|node|key|session|agent[_prefix] "NAME" { policy = "read" }`
    /// blocks, `operator = "read"`, and `#` comments.
    pub fn parse(rules: &str) -> Result<Self, String> {
        let text: String = rules
            .lines()
            .map(|line| line.split('#').next().unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n");
        let mut tokens = text
            .split(|c: char| c.is_whitespace() || c == '{' || c == '}' || c == '=')
            .filter(|token| !token.is_empty());
        let mut policy = Self::new();
        let unquote = |token: Option<&str>| -> Result<String, String> {
            let token = token.ok_or("unexpected end of the rules")?;
            token
                .strip_prefix('"')
                .and_then(|token| token.strip_suffix('"'))
                .map(str::to_owned)
                .ok_or_else(|| format!("expected a quoted string, got {token}"))
        };
        let access = |text: &str| match text {
            "read" => Ok(Access::Read),
            "write" => Ok(Access::Write),
            "deny" => Ok(Access::Deny),
            other => Err(format!("unknown policy {other:?}")),
        };
        while let Some(word) = tokens.next() {
            if word == "operator" {
                policy = policy.operator(access(&unquote(tokens.next())?)?);
                continue;
            }
            let (kind, prefix) = match word.strip_suffix("_prefix") {
                Some(kind) => (kind, true),
                None => (word, false),
            };
            let resource = match kind {
                "service" => Resource::Service,
                "node" => Resource::Node,
                "key" => Resource::Key,
                "session" => Resource::Session,
                "agent" => Resource::Agent,
                other => return Err(format!("unknown rule {other:?}")),
            };
            let name = unquote(tokens.next())?;
            if tokens.next() != Some("policy") {
                return Err(format!("expected policy in the {word} {name:?} block"));
            }
            let granted = access(&unquote(tokens.next())?)?;
            policy = policy.rule(resource, &name, prefix, granted);
        }
        Ok(policy)
    }

    /// Whether the policy grants `wanted` on `resource` `name`.
    pub fn allows(&self, resource: Resource, name: &str, wanted: Access) -> bool {
        if self.management {
            return true;
        }
        let rules = || self.rules.iter().filter(|rule| rule.resource == resource);
        let exact = rules().find(|rule| !rule.prefix && rule.name == name);
        let granted = exact
            .or_else(|| {
                rules()
                    .filter(|rule| rule.prefix && name.starts_with(&rule.name))
                    .max_by_key(|rule| rule.name.len())
            })
            .map_or(Access::Deny, |rule| rule.access);
        granted >= wanted
    }
}

/// A known token: its accessor ID (named in denials) and its policy.
#[derive(Debug, Clone)]
pub(crate) struct AclToken {
    pub(crate) accessor: String,
    pub(crate) policy: AclPolicy,
}

impl AclToken {
    pub(crate) fn new(policy: AclPolicy) -> Self {
        Self {
            accessor: crate::state::node_id_for(&format!("{:x}", rand::random::<u64>())),
            policy,
        }
    }

    /// `Err(403 Permission denied …)` unless the token grants `access` on `name`.
    pub(crate) fn require(
        &self,
        resource: Resource,
        name: &str,
        access: Access,
    ) -> Result<(), String> {
        if self.policy.allows(resource, name, access) {
            Ok(())
        } else {
            Err(denial(&self.accessor, resource, access, name))
        }
    }
}

/// The 403 body Consul sends for a missing permission.
pub(crate) fn denial(accessor: &str, resource: Resource, access: Access, name: &str) -> String {
    format!(
        "Permission denied: token with AccessorID '{accessor}' lacks permission '{resource}:{access}' on \"{name}\""
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_rules_win_then_the_longest_prefix_and_write_implies_read() {
        let policy = AclPolicy::new()
            .key_prefix("", Access::Read)
            .key_prefix("dnsfront/", Access::Write)
            .key("dnsfront/secret", Access::Deny);
        assert!(policy.allows(Resource::Key, "anything", Access::Read));
        assert!(!policy.allows(Resource::Key, "anything", Access::Write));
        assert!(policy.allows(Resource::Key, "dnsfront/hosts", Access::Write));
        assert!(policy.allows(Resource::Key, "dnsfront/hosts", Access::Read));
        assert!(!policy.allows(Resource::Key, "dnsfront/secret", Access::Read));
        assert!(!policy.allows(Resource::Service, "web", Access::Read));
        assert!(AclPolicy::management().allows(Resource::Operator, "", Access::Write));
    }

    #[test]
    fn rules_parse_from_consul_s_language() {
        let policy = AclPolicy::parse(
            "# resolver\nservice_prefix \"\" {\n  policy = \"read\"\n}\nkey \"a/b\" { policy = \"write\" }\noperator = \"read\"\n",
        )
        .expect("parses");
        assert!(policy.allows(Resource::Service, "web", Access::Read));
        assert!(!policy.allows(Resource::Service, "web", Access::Write));
        assert!(policy.allows(Resource::Key, "a/b", Access::Write));
        assert!(!policy.allows(Resource::Key, "a/bc", Access::Read));
        assert!(policy.allows(Resource::Operator, "", Access::Read));
        assert!(AclPolicy::parse("acl = \"write\"").is_err());
        assert!(AclPolicy::parse("key \"x\" { policy = \"all\" }").is_err());
    }
}
