//! dnsfront-dns
