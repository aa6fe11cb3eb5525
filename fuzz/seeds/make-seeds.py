#!/usr/bin/env python3
"""Writes the seed corpora under fuzz/corpus/ (run from the repository root:
python3 fuzz/seeds/make-seeds.py). Seeds are small: real query/response
shapes, the snapshot golden files, Consul API bodies, hosts and resolv files."""
import gzip, json, os, struct

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(ROOT, "corpus")
REPO = os.path.dirname(ROOT)


def write(target, name, data):
    path = os.path.join(CORPUS, target)
    os.makedirs(path, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(path, name), "wb") as out:
        out.write(data)


def wire_name(name):
    out = b""
    for label in name.strip(".").split("."):
        if label:
            out += bytes([len(label)]) + label.encode()
    return out + b"\0"


OPT = bytes([0, 0, 41, 0x04, 0xD0, 0, 0, 0x80, 0, 0, 0])  # EDNS 1232, DO
OPT_PLAIN = bytes([0, 0, 41, 0x10, 0x00, 0, 0, 0, 0, 0, 0])  # EDNS 4096


def query(name, qtype=1, opt=None, ident=0x1234, flags=0x0100):
    header = struct.pack(">HHHHHH", ident, flags, 1, 0, 0, 1 if opt else 0)
    return header + wire_name(name) + struct.pack(">HH", qtype, 1) + (opt or b"")


def response(name, records, rcode=0, owner=b"\xc0\x0c", extra=b"", arcount=0):
    """records: (type, rdata, ttl)."""
    header = struct.pack(">HHHHHH", 0x1234, 0x8180 | rcode, 1, len(records), 0, arcount)
    body = wire_name(name) + struct.pack(">HH", records[0][0] if records else 1, 1)
    for rtype, rdata, ttl in records:
        body += owner + struct.pack(">HHIH", rtype, 1, ttl, len(rdata)) + rdata
    return header + body + extra


def fast(flags, q, rest):
    return bytes([flags]) + struct.pack(">H", len(q)) + q + rest


# --- fast_path: plain queries (dig-style: RD, with and without EDNS) and responses.
a1, a2, a3 = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]), bytes([10, 0, 0, 3])
aaaa = bytes.fromhex("20010db8000000000000000000000001")
cases = {
    "web-a": (0, query("web.service.consul"), response("web.service.consul", [(1, a1, 0), (1, a2, 0)])),
    "web-a-ttl": (0, query("Web.Service.Consul"), response("web.service.consul", [(1, a1, 30), (1, a2, 30), (1, a3, 30)])),
    "fwd-a-countdown": (1, query("example.com"), response("example.com", [(1, a1, 300)])),
    "fwd-aaaa": (1, query("example.com", 28, OPT), response("example.com", [(28, aaaa, 60), (28, aaaa, 60)], extra=OPT, arcount=1)),
    "literal-owner": (0, query("db.service.consul"), response("db.service.consul", [(1, a1, 5), (1, a2, 5)], owner=wire_name("db.service.consul"))),
    "nxdomain-soa": (1, query("nope.example.com"), response("nope.example.com", [], rcode=3)
                     + b""),
    "edns-plain": (0, query("node1.node.consul", 1, OPT_PLAIN), response("node1.node.consul", [(1, a1, 10)], extra=OPT_PLAIN, arcount=1)),
    "srv": (0, query("_web._tcp.service.consul", 33), response("_web._tcp.service.consul", [(33, struct.pack(">HHH", 1, 1, 8080) + wire_name("node1.node.dc1.consul"), 0)])),
    "ptr": (1, query("1.0.0.10.in-addr.arpa", 12), response("1.0.0.10.in-addr.arpa", [(12, wire_name("host.example"), 600)])),
}
for name, (flags, q, r) in cases.items():
    write("fast_path", name, fast(flags, q, r))
# Synthesized responses: RCODE byte, ANCOUNT byte, raw records.
rec = lambda rtype, rdata, ttl: b"\xc0\x0c" + struct.pack(">HHIH", rtype, 1, ttl, len(rdata)) + rdata
write("fast_path", "synth-a", fast(2, query("web.service.consul"), bytes([0x80, 2]) + rec(1, a1, 5) + rec(1, a2, 5)))
write("fast_path", "synth-countdown", fast(3, query("example.org", 28), bytes([0x80, 1]) + rec(28, aaaa, 100)))
write("fast_path", "query-only", fast(0, query("a.b.c.d.e.f.g"), b""))

# --- consul_name: byte 0 = qtype index (A, AAAA, SRV, ANY, TXT, PTR, SOA, NS).
A, AAAA, SRV, ANY, TXT, PTR, SOA, NS = range(8)
names = [
    (A, "consul."), (SOA, "consul"), (NS, "Consul."),
    (A, "web.service.consul"), (SRV, "web.service.consul."), (AAAA, "WEB.Service.CONSUL."),
    (A, "primary.web.service.consul"), (A, "v1.primary.web.service.dc2.consul"),
    (SRV, "_web._tcp.service.consul"), (SRV, "_web._primary.service.dc2.consul"),
    (SRV, "_web._tcp.consul"), (SRV, "_web._tcp.dc2.consul"),
    (A, "web.service.east.dc.consul"), (A, "web.service.a.b.consul"),
    (A, "node1.node.consul"), (A, "node1.rack2.node.dc1.consul"), (ANY, "node1.node.dc1.dc.consul"),
    (A, "0a000001.addr.consul"), (AAAA, "20010db8000000000000000000000001.addr.dc1.consul"),
    (A, "0a00001.addr.consul"), (TXT, "web.service.consul"),
    (A, "geo.query.consul"), (A, "web.connect.consul"), (A, "web.ingress.consul"), (A, "web.virtual.consul"),
    (A, "service.consul"), (A, "web.consul"), (A, "we%b.service.consul"), (A, "b\\.c.node.consul"),
    (A, "*.web.service.dc2.consul"), (A, "*.node1.node.dc2.consul"),
    (A, "example.com."), (PTR, "1.0.0.10.in-addr.arpa."), (A, "bücher.service.consul"),
]
for index, (qtype, name) in enumerate(names):
    write("consul_name", f"name-{index:02}", bytes([qtype]) + name.encode())

# --- snapshot_decode: the golden envelopes; snapshot_json: their payloads.
data = os.path.join(REPO, "crates", "snapshot", "tests", "data")
for file in sorted(os.listdir(data)):
    if file.endswith(".bin"):
        blob = open(os.path.join(data, file), "rb").read()
        write("snapshot_decode", file, blob)
        if file.startswith("good-"):
            start = 50 + (64 if blob[9] & 1 else 0)
            payload = gzip.decompress(blob[start:])
            write("snapshot_json", file.replace(".bin", ".json"), b"\x00" + payload)
            write("snapshot_json", file.replace(".bin", "-signed.json"), b"\x01" + payload)
write("snapshot_json", "empty.json", b"\x00{}")
write("snapshot_json", "minimal.json", b'\x00{"generation":1,"consul_index":1,"created_unix_ms":0,"publisher":"p","datacenter":"dc1","services":{},"nodes":{}}')

# --- consul_models: byte 0 picks ServiceEntry list, checks, CatalogNode, KvPair list, NodeInfo, AgentService.
node = {"ID": "40e4a748-2192-161a-0510-9bf59fe950b5", "Node": "node-a", "Address": "10.0.0.1",
        "Datacenter": "dc1", "TaggedAddresses": {"lan": "10.0.0.1", "wan": "198.18.0.1"}, "Meta": {"rack": "r1"}}
service = {"ID": "web-1", "Service": "web", "Tags": ["primary", "v1"], "Address": "",
           "TaggedAddresses": {"lan_ipv4": {"Address": "10.0.0.1", "Port": 8080}},
           "Meta": None, "Port": 8080, "Weights": {"Passing": 10, "Warning": 1}, "EnableTagOverride": False}
checks = [{"Node": "node-a", "CheckID": "serfHealth", "Name": "Serf Health Status", "Status": "passing",
           "ServiceID": "", "ServiceName": ""},
          {"Node": "node-a", "CheckID": "service:web-1", "Status": "warning", "ServiceID": "web-1", "ServiceName": "web"}]
entries = [{"Node": node, "Service": service, "Checks": checks},
           {"Node": dict(node, Node="node-b", Address="fd00::2"), "Service": dict(service, Address="fd00::5", Weights=None),
            "Checks": [dict(checks[0], Status="critical")]},
           {"Node": None, "Service": None, "Checks": None}]
write("consul_models", "health-service", b"\x00" + json.dumps(entries).encode())
write("consul_models", "health-service-empty", b"\x00[]")
write("consul_models", "checks", b"\x01" + json.dumps(checks + [dict(checks[0], Status="maintenance")]).encode())
write("consul_models", "catalog-node", b"\x02" + json.dumps({"Node": node, "Services": {"web-1": service}}).encode())
write("consul_models", "kv", b"\x03" + json.dumps([{"LockIndex": 1, "Key": "dnsfront/snapshot", "Flags": 0,
        "Value": "RE5TRlNOQVA=", "CreateIndex": 10, "ModifyIndex": 12, "Session": "adf4238a-882b-9ddc-4a9d-5b6758e4159e"},
        {"Key": "empty", "Value": None, "CreateIndex": 1, "ModifyIndex": 1, "LockIndex": 0, "Flags": 0}]).encode())
write("consul_models", "node-info", b"\x04" + json.dumps(node).encode())
write("consul_models", "agent-service", b"\x05" + json.dumps(service).encode())

# --- hosts_file
write("hosts_file", "etc-hosts", """127.0.0.1\tlocalhost
127.0.1.1\tbuild-01.example.internal build-01

# The following lines are desirable for IPv6 capable hosts
::1     localhost ip6-localhost ip6-loopback
fe00::0 ip6-localnet
ff02::1 ip6-allnodes
""")
write("hosts_file", "addn-hosts", "10.0.0.5 db.internal. DB-Alias # primary\n10.0.0.6 db.internal\r\nfd00::7 cache.internal cache\n")
write("hosts_file", "blocklist", "0.0.0.0 ads.example\n0.0.0.0 tracker.example.\n:: ads.example\n")
write("hosts_file", "malformed", "10.0.0.300 bad\nnot-an-ip host\n10.0.0.8 good bad..name _srv.ok -dash\n10.0.0.9\n\t \n#only comment\n")

# --- resolv_file
write("resolv_file", "deploy-example", open(os.path.join(REPO, "deploy", "examples", "resolv.conf"), "rb").read())
write("resolv_file", "systemd-resolved", "# generated\nnameserver 127.0.0.53\noptions edns0 trust-ad\nsearch example.internal\n")
write("resolv_file", "mixed", "nameserver 10.0.0.2 ; comment\r\nnameserver\tfe80::1%eth0\nnameserver not-an-ip\n  nameserver   2001:db8::53  # x\nnameserver# none\n")

# --- control_request: one JSON line each.
for index, line in enumerate([
    {"cmd": "explain", "name": "web.service.consul"},
    {"cmd": "explain", "name": "_web._tcp.service.consul", "type": "SRV"},
    {"cmd": "stats"}, {"cmd": "reload"},
]):
    write("control_request", f"request-{index}", json.dumps(line) + "\n")
write("control_request", "unknown", '{"cmd":"shutdown"}\n')

# --- tcp_frames: byte 0 = schedule length, the schedule (bytes per read, 0 = read
# dropped half-way), then the stream of length-prefixed queries.
def framed(*messages):
    return b"".join(struct.pack(">H", len(m)) + m for m in messages)


def frames(schedule, stream):
    return bytes([len(schedule)]) + bytes(schedule) + stream


pipelined = framed(query("web.service.consul"), query("example.org", 28, OPT),
                   query("_web._tcp.service.consul", 33))
write("tcp_frames", "one-query", frames([], framed(query("web.service.consul"))))
write("tcp_frames", "pipelined", frames([], pipelined))
write("tcp_frames", "byte-by-byte", frames([1] * 40, pipelined))
write("tcp_frames", "dropped-reads", frames([0, 1, 0, 1, 0, 3, 0, 20, 0, 0, 7], pipelined))
write("tcp_frames", "split-prefix", frames([1, 0, 1, 5], framed(query("a.b"))))
write("tcp_frames", "truncated-body", frames([], framed(query("web.service.consul"))[:-3]))
write("tcp_frames", "truncated-prefix", frames([], framed(query("x.y")) + b"\x00"))
write("tcp_frames", "too-short", frames([], b"\x00\x0b" + bytes(11)))
write("tcp_frames", "too-long", frames([], b"\x10\x01" + bytes(64)))
write("tcp_frames", "largest", frames([255, 0, 255], b"\x10\x00" + bytes(4096)))
write("tcp_frames", "empty", b"")
