package ground

import (
	"bytes"
	"context"
	"fmt"
	"html"
	"image/color"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/groundmesh/groundmesh/internal/events"
)

func chromium(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("CHROMIUM"); p != "" {
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Fatal("chromium not found: install it (apt-get install -y chromium) or set CHROMIUM")
	return ""
}

// TestPageDrawsTheAnswer drives the page in headless Chromium: it asks the
// API (the real GoMLX plugin behind it) about an image and draws the box
// and the attention heat map on a canvas; the box read back from the
// canvas's pixels is the answer's, at the page's scale.
func TestPageDrawsTheAnswer(t *testing.T) {
	bin := chromium(t)
	svc, ref := pluginService(t, "page")
	api, err := NewHTTPHandler(HTTPConfig{Tokens: []string{"page-token"}}, svc)
	if err != nil {
		t.Fatal(err)
	}
	png := scene(t, 96, 64, 20, 12, color.RGBA{220, 40, 40, 255})
	mux := http.NewServeMux()
	mux.Handle("/v1/", api)
	mux.Handle("GET /ground", PageHandler())
	mux.HandleFunc("GET /test/scene.png", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "image/png")
		w.Write(png)
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)

	want, err := svc.Ground(context.Background(), events.GroundRequested{Image: png, Expression: "the red square", Attention: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(want.Attention) == 0 {
		t.Fatal("the plugin returned no attention: the heat map cannot be checked")
	}

	profile := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	url := srv.URL + "/ground#src=/test/scene.png&expression=the%20red%20square&token=page-token&attention=1"
	cmd := exec.CommandContext(ctx, bin, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
		"--user-data-dir="+profile, "--virtual-time-budget=20000", "--dump-dom", url)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("chromium: %v\n%s", err, stderr.String())
	}
	dom := stdout.String()
	attr := func(name string) string {
		m := regexp.MustCompile(`<body[^>]*\s` + name + `="([^"]*)"`).FindStringSubmatch(dom)
		if m == nil {
			return ""
		}
		return html.UnescapeString(m[1])
	}
	if st := attr("data-state"); st != "done" {
		status := regexp.MustCompile(`<p id="status"[^>]*>([^<]*)<`).FindStringSubmatch(dom)
		t.Fatalf("page state %q (status %v)", st, status)
	}
	scale, _ := strconv.Atoi(attr("data-scale"))
	if scale != 5 { // 480 / 96
		t.Fatalf("scale %d", scale)
	}
	var drawn [4]float64
	if _, err := fmt.Sscanf(attr("data-drawn-box"), "%g,%g,%g,%g", &drawn[0], &drawn[1], &drawn[2], &drawn[3]); err != nil {
		t.Fatalf("drawn box %q: %v", attr("data-drawn-box"), err)
	}
	for i, v := range want.Boxes[0].Pixel {
		if math.Abs(drawn[i]-math.Round(v*float64(scale))) > 1 {
			t.Fatalf("drawn box %v, the answer's %v at scale %d", drawn, want.Boxes[0].Pixel, scale)
		}
	}
	if cells, _ := strconv.Atoi(attr("data-heat-cells")); cells != len(want.Attention) {
		t.Fatalf("heat map cells %d, attention values %d", cells, len(want.Attention))
	}
	if !strings.Contains(dom, want.Text) || !strings.Contains(dom, ref.CheckpointID) {
		t.Fatal("the page does not show the answer's text and model version")
	}
}
