// Package dns is the node's service discovery resolver.
//
// A Server answers, from Records the caller translates out of the cluster
// map, <service>.<domain> with the service's VIP, <task>.<domain> with the
// task's IP and tasks.<service>.<domain> with every running task's IP, and
// the reverse (PTR) names of those addresses. Names outside the domain are
// forwarded to the host's own resolvers, read from resolv.conf and re-read
// when it changes; a resolver that is this server, or forwards back to it,
// is detected and skipped. ResolvConf renders the resolv.conf of a task and
// Resolve is the client side for the CLI.
package dns
