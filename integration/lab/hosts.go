package lab

import (
	"fmt"
	"net/netip"
)

// AddLANHost creates a plain host on the LAN (no warren node): a server
// the nodes reach over the LAN, such as a private registry. Its addresses
// are 192.168.100.150 and up; Close kills what runs in it.
func (l *Lab) AddLANHost(name string) (*Host, error) {
	l.mu.Lock()
	idx := len(l.hosts)
	l.mu.Unlock()
	if idx >= 40 {
		return nil, fmt.Errorf("lab: at most 40 LAN hosts")
	}
	ip := netip.AddrFrom4([4]byte{192, 168, 100, byte(150 + idx)})
	h, err := l.addHost(name, ip)
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	l.hosts = append(l.hosts, h)
	l.mu.Unlock()
	return h, nil
}

// Dir is the host's working directory in the lab (logs of Background).
func (h *Host) Dir() string { return h.dir }
