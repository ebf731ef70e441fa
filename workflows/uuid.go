package workflows

import (
	"crypto/sha256"
	"fmt"
)

// uuidFromString derives a stable RFC 4122 version-5-shaped UUID from s, so
// that ids computed inside workflows are deterministic across replays.
func uuidFromString(s string) string {
	h := sha256.Sum256([]byte("groundmesh:" + s))
	h[6] = (h[6] & 0x0f) | 0x50
	h[8] = (h[8] & 0x3f) | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", h[0:4], h[4:6], h[6:8], h[8:10], h[10:16])
}
