package synth

import "math/bits"

// Randomness in synthesis is derived, never shared: every sample draws from
// its own generator seeded by (set seed, image id, task, sample index), so
// that the output does not depend on how images are scheduled over workers.
// A local splitmix64 generator keeps the stream stable across Go
// releases (math/rand/v2 makes no such promise for its helpers).

const (
	fnvOffset = 14695981039346656037
	fnvPrime  = 1099511628211
)

// seedHash folds strings and integers into a 64-bit seed (FNV-1a, then a
// splitmix64 finalizer so that nearby inputs give unrelated seeds).
type seedHash uint64

func newSeedHash(seed int64) seedHash {
	return seedHash(fnvOffset).int(uint64(seed))
}

func (h seedHash) str(s string) seedHash {
	x := uint64(h)
	for i := 0; i < len(s); i++ {
		x ^= uint64(s[i])
		x *= fnvPrime
	}
	// Separator so that ("ab","c") and ("a","bc") differ.
	x ^= 0xff
	x *= fnvPrime
	return seedHash(x)
}

func (h seedHash) int(v uint64) seedHash {
	x := uint64(h)
	for i := 0; i < 8; i++ {
		x ^= v & 0xff
		x *= fnvPrime
		v >>= 8
	}
	return seedHash(x)
}

func (h seedHash) sum() uint64 { return mix64(uint64(h)) }

func mix64(z uint64) uint64 {
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}

// rng is a splitmix64 generator: small, fast, and good enough for choosing
// templates and objects.
type rng struct{ s uint64 }

func newRNG(seed uint64) *rng { return &rng{s: seed} }

func (r *rng) next() uint64 {
	r.s += 0x9e3779b97f4a7c15
	return mix64(r.s)
}

// intn returns a value in [0, n); n must be > 0.
func (r *rng) intn(n int) int {
	// Lemire's multiply-shift; the tiny bias is irrelevant here.
	hi, _ := bits.Mul64(r.next(), uint64(n))
	return int(hi)
}

// float returns a value in [0, 1).
func (r *rng) float() float64 { return float64(r.next()>>11) / (1 << 53) }

// shuffle shuffles s in place (Fisher-Yates).
func shuffle[T any](r *rng, s []T) {
	for i := len(s) - 1; i > 0; i-- {
		j := r.intn(i + 1)
		s[i], s[j] = s[j], s[i]
	}
}
