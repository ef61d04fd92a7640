// Package federation holds the pure parts of cluster peering: the peer
// token, the checks a peering must pass (names, overlapping ranges), the
// plan that turns a peer's exported services into local imported services
// with VIPs from the local VIP range, and the choice of endpoints for a
// service's global name. Nothing here does I/O; the manager (package
// cluster) stores peers and runs the link.
package federation
