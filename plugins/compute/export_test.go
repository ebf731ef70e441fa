package compute

import "net"

// HostAddr is the address the host's current plugin process serves on
// (go-plugin's reattach config), for tests that dial it themselves.
func HostAddr(h *Host) net.Addr {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.proc == nil {
		return nil
	}
	if rc := h.proc.client.ReattachConfig(); rc != nil {
		return rc.Addr
	}
	return nil
}
