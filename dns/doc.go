// Package dns is the node's service discovery resolver.
//
// A Server answers, from Records the caller translates out of the cluster
// map (RecordsFromMap):
//
//   - <service>.<domain>: the service's VIP (TTL 60 s: stable);
//   - <task>.<domain>: the task's IP (TTL 5 s: tasks move);
//   - tasks.<service>.<domain>: every running task's IP (TTL 5 s);
//   - the reverse (PTR) names of those addresses.
//
// Names are case-insensitive. A known name without data of the asked type
// answers NOERROR with no records; unknown names in the domain answer
// NXDOMAIN; both carry the zone's SOA (negative TTL 5 s). Update swaps the
// whole set atomically. UDP answers are cut to the client's buffer (512
// bytes without EDNS, at most 1232) with TC set, so clients retry over TCP.
//
// Names outside the domain are forwarded to the host's resolvers, read from
// resolv.conf and re-read when it changes, with a time budget after which
// the client gets SERVFAIL. A resolver that is one of our own listen
// addresses is skipped; one that forwards back to us (a stub resolver on
// 127.0.0.x configured with this server) is found by probing it with a
// random name and watching for that name to come back, at load, every few
// minutes and when the forwarding slots run out. At most 512 queries are
// forwarded at once, at most 64 of them from one client address, so one
// task flooding slow external names fails its own queries, not everyone's.
//
// ResolvConf renders the resolv.conf of a task and Resolve is the client
// side, for the CLI.
package dns
