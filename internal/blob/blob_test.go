package blob

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestKeysCannotEscapeTheRoot: a key with "..", an absolute path that
// would leave the root, or the root itself is refused by Path, Put and
// Open, and nothing is written outside the root.
func TestKeysCannotEscapeTheRoot(t *testing.T) {
	parent := t.TempDir()
	l, err := NewLocal(filepath.Join(parent, "root"))
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"../escape", "a/../../escape", "..", "/", "", "a/..", `..\escape`, "a/b/../../../escape"} {
		if p, err := l.Path(key); err == nil {
			t.Errorf("Path(%q) = %s, want refused", key, p)
		}
		if _, _, err := l.Put(key, strings.NewReader("x")); err == nil {
			t.Errorf("Put(%q) succeeded, want refused", key)
		}
		if f, err := l.Open(key); err == nil {
			f.Close()
			t.Errorf("Open(%q) succeeded, want refused", key)
		}
	}
	// A leading slash names a key under the root, not the filesystem root.
	p, err := l.Path("/etc/passwd")
	if err != nil || !strings.HasPrefix(p, l.Root+string(filepath.Separator)) {
		t.Errorf("Path(/etc/passwd) = %q, %v; want a path under the root", p, err)
	}
	if _, err := os.Stat(filepath.Join(parent, "escape")); err == nil {
		t.Error("a file was written outside the root")
	}
}
