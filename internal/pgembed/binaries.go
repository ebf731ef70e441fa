package pgembed

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// ErrNoPostgres is returned (wrapped) when no PostgreSQL server binaries can
// be found on the machine.
var ErrNoPostgres = errors.New("no PostgreSQL server binaries (initdb, pg_ctl, postgres) found")

// serverBinaries are the programs a private cluster needs, all from one folder.
var serverBinaries = []string{"initdb", "pg_ctl", "postgres"}

// defaultBinGlobs are where distributions install the server binaries, which
// they often leave off PATH (Debian and Ubuntu, RHEL, source builds).
var defaultBinGlobs = []string{
	"/usr/lib/postgresql/*/bin",
	"/usr/pgsql-*/bin",
	"/usr/local/pgsql/bin",
	"/opt/homebrew/opt/postgresql@*/bin",
	"/usr/local/opt/postgresql@*/bin",
}

// findBinDir returns a folder holding initdb, pg_ctl and postgres: binDir
// when given, else the folder of initdb on pathEnv (following symlinks, so
// that /usr/local/bin/initdb leads to /usr/lib/postgresql/15/bin), else the
// newest match of globs.
func findBinDir(binDir, pathEnv string, globs []string) (string, error) {
	if binDir != "" {
		if missing := missingIn(binDir); len(missing) > 0 {
			return "", fmt.Errorf("%w in %s (missing %s): install them (apt install postgresql)", ErrNoPostgres, binDir, strings.Join(missing, ", "))
		}
		return binDir, nil
	}
	var tried []string
	for _, dir := range filepath.SplitList(pathEnv) {
		if dir == "" {
			continue
		}
		p := filepath.Join(dir, "initdb")
		if !isExecutable(p) {
			continue
		}
		if real, err := filepath.EvalSymlinks(p); err == nil {
			if d := filepath.Dir(real); len(missingIn(d)) == 0 {
				return d, nil
			}
		}
		if len(missingIn(dir)) == 0 {
			return dir, nil
		}
		tried = append(tried, dir)
	}
	var candidates []string
	for _, g := range globs {
		m, _ := filepath.Glob(g)
		candidates = append(candidates, m...)
	}
	// Newest major version first: /usr/lib/postgresql/16/bin before .../9.6/bin.
	sort.SliceStable(candidates, func(i, j int) bool {
		return versionOf(candidates[i]) > versionOf(candidates[j])
	})
	for _, d := range candidates {
		if len(missingIn(d)) == 0 {
			return d, nil
		}
		tried = append(tried, d)
	}
	where := "PATH or " + strings.Join(globs, ", ")
	if len(tried) > 0 {
		where += " (incomplete: " + strings.Join(tried, ", ") + ")"
	}
	return "", fmt.Errorf("%w in %s: install the PostgreSQL server (apt install postgresql) or set DATABASE_URL", ErrNoPostgres, where)
}

func missingIn(dir string) []string {
	var missing []string
	for _, b := range serverBinaries {
		if !isExecutable(filepath.Join(dir, b)) {
			missing = append(missing, b)
		}
	}
	return missing
}

func isExecutable(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular() && st.Mode().Perm()&0o111 != 0
}

// versionOf reads the first number-like path element ("15", "9.6", "pgsql-16").
func versionOf(dir string) float64 {
	for _, part := range strings.Split(dir, string(filepath.Separator)) {
		part = strings.TrimPrefix(strings.TrimPrefix(part, "pgsql-"), "postgresql@")
		if v, err := strconv.ParseFloat(part, 64); err == nil {
			return v
		}
	}
	return 0
}
