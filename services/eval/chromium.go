package eval

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// ChromiumPath finds the Chromium binary: $CHROMIUM, else chromium or
// chromium-browser on PATH.
func ChromiumPath() (string, error) {
	if p := os.Getenv("CHROMIUM"); p != "" {
		return p, nil
	}
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p, nil
		}
	}
	return "", errors.New("chromium not found: install it (apt-get install -y chromium) or set CHROMIUM")
}

// Screenshot opens an HTML file in headless Chromium, saves a PNG of the
// page (1200 x 2000) to pngPath and returns the DOM as Chromium rendered it,
// so that a test can check what a person would see.
func Screenshot(ctx context.Context, htmlPath, pngPath string) (dom string, err error) {
	bin, err := ChromiumPath()
	if err != nil {
		return "", err
	}
	abs, err := filepath.Abs(htmlPath)
	if err != nil {
		return "", fmt.Errorf("screenshot %s: %w", htmlPath, err)
	}
	pngAbs, err := filepath.Abs(pngPath)
	if err != nil {
		return "", fmt.Errorf("screenshot %s: %w", htmlPath, err)
	}
	profile, err := os.MkdirTemp("", "groundmesh-chromium-*")
	if err != nil {
		return "", fmt.Errorf("screenshot %s: %w", htmlPath, err)
	}
	defer os.RemoveAll(profile)
	base := []string{
		"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--disable-dev-shm-usage", "--hide-scrollbars",
		"--user-data-dir=" + profile, "--window-size=1200,2000",
	}
	run := func(extra ...string) ([]byte, error) {
		args := append(append(append([]string{}, base...), extra...), "file://"+abs)
		cmd := exec.CommandContext(ctx, bin, args...)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err != nil {
			return nil, fmt.Errorf("run %s: %w: %s", bin, err, lastLines(stderr.String(), 5))
		}
		return stdout.Bytes(), nil
	}
	if _, err := run("--screenshot=" + pngAbs); err != nil {
		return "", fmt.Errorf("screenshot %s: %w", htmlPath, err)
	}
	if st, err := os.Stat(pngAbs); err != nil || st.Size() == 0 {
		return "", fmt.Errorf("screenshot %s: no image written to %s", htmlPath, pngAbs)
	}
	out, err := run("--dump-dom")
	if err != nil {
		return "", fmt.Errorf("dump dom of %s: %w", htmlPath, err)
	}
	return string(out), nil
}

func lastLines(s string, n int) string {
	lines := bytes.Split(bytes.TrimSpace([]byte(s)), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}
