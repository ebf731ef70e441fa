package synth_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/groundmesh/groundmesh/internal/blob"
	"github.com/groundmesh/groundmesh/internal/dataset"
	"github.com/groundmesh/groundmesh/model"
	"github.com/groundmesh/groundmesh/services/synth"
	"github.com/groundmesh/groundmesh/services/synth/synthtest"
)

// chatServer speaks the OpenAI chat completions API. fail decides, per
// request number (1-based), whether to answer with an error status.
type chatServer struct {
	t        *testing.T
	requests atomic.Int64
	fail     func(n int64) int // status to fail with, 0 for success
	mu       sync.Mutex
	bodies   []map[string]any
}

func (c *chatServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n := c.requests.Add(1)
	if r.Method != http.MethodPost || r.URL.Path != "/v1/chat/completions" || r.Header.Get("Content-Type") != "application/json" {
		http.Error(w, "bad request line", http.StatusBadRequest)
		return
	}
	var body struct {
		Model    string `json:"model"`
		Messages []struct {
			Role    string `json:"role"`
			Content string `json:"content"`
		} `json:"messages"`
	}
	if err := json.NewDecoder(r.Body).Decode(&body); err != nil || len(body.Messages) != 2 || body.Messages[1].Role != "user" {
		http.Error(w, "bad body", http.StatusBadRequest)
		return
	}
	c.mu.Lock()
	c.bodies = append(c.bodies, map[string]any{"model": body.Model, "user": body.Messages[1].Content})
	c.mu.Unlock()
	if st := c.fail(n); st != 0 {
		if st == http.StatusTooManyRequests {
			w.Header().Set("Retry-After", "0")
		}
		http.Error(w, "try later", st)
		return
	}
	text := body.Messages[1].Content
	lower := strings.ToLower(text[:1]) + text[1:]
	// Two good paraphrases, then three a validator must reject where the
	// template has slots: a slot dropped, a box-like insertion, an image tag.
	reply := strings.Join([]string{
		"1. Please, " + lower,
		"2. Kindly answer this: " + lower,
		"3. Tell me something.",
		"4. [0.100, 0.200, 0.300, 0.400] " + text,
		"5. <image> " + text,
	}, "\n")
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprintf(w, `{"id":"x","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":%q},"finish_reason":"stop"}]}`, reply)
}

func newChatServer(t *testing.T, fail func(n int64) int) (*chatServer, *httptest.Server) {
	cs := &chatServer{t: t, fail: fail}
	srv := httptest.NewServer(cs)
	t.Cleanup(srv.Close)
	return cs, srv
}

func TestRewriterRetriesAndCaches(t *testing.T) {
	// 429, then 500, then success.
	cs, srv := newChatServer(t, func(n int64) int {
		switch n {
		case 1:
			return http.StatusTooManyRequests
		case 2:
			return http.StatusInternalServerError
		}
		return 0
	})
	cache := t.TempDir()
	cfg := synth.RewriterConfig{URL: srv.URL, Model: "tiny", CacheDir: cache, RatePerSecond: 1000, Backoff: time.Millisecond}
	rw, err := synth.NewRewriter(cfg)
	if err != nil {
		t.Fatal(err)
	}
	got, err := rw.Paraphrase(context.Background(), "Where is {expr}?", 3)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"Please, where is {expr}?", "Kindly answer this: where is {expr}?", "Tell me something."}; !reflect.DeepEqual(got, want) {
		t.Fatalf("paraphrases %q, want %q", got, want)
	}
	if n := cs.requests.Load(); n != 3 {
		t.Fatalf("%d requests, want 3 (429, 500, 200)", n)
	}
	if cs.bodies[2]["model"] != "tiny" || cs.bodies[2]["user"] != "Where is {expr}?" {
		t.Fatalf("request body %v", cs.bodies[2])
	}
	// Cached: neither the same rewriter nor a new one over the same cache
	// directory calls again.
	if _, err := rw.Paraphrase(context.Background(), "Where is {expr}?", 3); err != nil {
		t.Fatal(err)
	}
	rw2, _ := synth.NewRewriter(cfg)
	again, err := rw2.Paraphrase(context.Background(), "Where is {expr}?", 3)
	if err != nil || !reflect.DeepEqual(again, got) {
		t.Fatalf("cached paraphrases %q, %v", again, err)
	}
	if n := cs.requests.Load(); n != 3 {
		t.Fatalf("%d requests after cache hits, want 3", n)
	}
}

func TestRewriterGivesUpAfterRetries(t *testing.T) {
	cs, srv := newChatServer(t, func(int64) int { return http.StatusInternalServerError })
	rw, err := synth.NewRewriter(synth.RewriterConfig{URL: srv.URL, RatePerSecond: 1000, MaxRetries: 2, Backoff: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rw.Paraphrase(context.Background(), "Describe {box}.", 3); err == nil {
		t.Fatal("paraphrase succeeded against a failing server")
	}
	if n := cs.requests.Load(); n != 3 {
		t.Fatalf("%d requests, want 1 + 2 retries", n)
	}
	for _, bad := range []string{"", "ftp://x", "localhost:8080"} {
		if _, err := synth.NewRewriter(synth.RewriterConfig{URL: bad}); err == nil {
			t.Fatalf("URL %q accepted", bad)
		}
	}
}

func TestRewriterRateLimit(t *testing.T) {
	_, srv := newChatServer(t, func(int64) int { return 0 })
	rw, err := synth.NewRewriter(synth.RewriterConfig{URL: srv.URL, RatePerSecond: 10, Burst: 1})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	for i := range 4 {
		if _, err := rw.Paraphrase(context.Background(), fmt.Sprintf("Prompt %c {expr}.", 'a'+i), 2); err != nil {
			t.Fatal(err)
		}
	}
	if el := time.Since(start); el < 250*time.Millisecond {
		t.Fatalf("4 requests at 10/s took %v, want >= 300ms", el)
	}
}

func buildRecords(t *testing.T, ds *dataset.Dataset, root string, opts synth.BuildOptions) (synth.Manifest, map[string]*model.Record) {
	t.Helper()
	b, err := blob.NewLocal(root)
	if err != nil {
		t.Fatal(err)
	}
	m, err := synth.Build(context.Background(), ds, opts, b, "rw", nil)
	if err != nil {
		t.Fatal(err)
	}
	recs := map[string]*model.Record{}
	if err := synth.ReadRecords(context.Background(), b, m, nil, func(r *model.Record) error { recs[r.ID] = r; return nil }); err != nil {
		t.Fatal(err)
	}
	return m, recs
}

// With a rewriter, prompts change but no answer, box or image does; the
// invalid paraphrases are rejected.
func TestBuildWithRewriterKeepsAnswersAndBoxes(t *testing.T) {
	dir := t.TempDir()
	ds, err := synthtest.World(filepath.Join(dir, "world"), synthtest.Options{Seed: 6, Images: 30, Size: 96})
	if err != nil {
		t.Fatal(err)
	}
	opts := synth.BuildOptions{DatasetID: "rw", Seed: 3, Samples: 1500}
	base, plain := buildRecords(t, ds, filepath.Join(dir, "plain"), opts)

	_, srv := newChatServer(t, func(int64) int { return 0 })
	rw, err := synth.NewRewriter(synth.RewriterConfig{URL: srv.URL, RatePerSecond: 1000, CacheDir: filepath.Join(dir, "cache")})
	if err != nil {
		t.Fatal(err)
	}
	opts.Rewriter = rw
	m, rewritten := buildRecords(t, ds, filepath.Join(dir, "rewritten"), opts)
	if m.Rewrite == nil || m.Rewrite.Accepted == 0 || m.Rewrite.Rejected == 0 || m.Rewrite.Fallbacks != 0 {
		t.Fatalf("rewrite stats %+v: want accepted and rejected paraphrases", m.Rewrite)
	}
	if m.Params.RewriterName == "" || m.ContentHash == base.ContentHash {
		t.Fatalf("rewritten set not distinguished: rewriter %q, hash equal %v", m.Params.RewriterName, m.ContentHash == base.ContentHash)
	}
	changed, same := 0, 0
	for id, p := range plain {
		r := rewritten[id]
		// A rewritten prompt can turn a duplicate into a non-duplicate (or
		// back), and a redraw picks other objects: compare the records that
		// drew the same sources.
		if r == nil || !reflect.DeepEqual(r.Images, p.Images) || !reflect.DeepEqual(r.Lineage, p.Lineage) {
			continue
		}
		same++
		if !reflect.DeepEqual(r.Answer, p.Answer) || len(r.Conversations) != len(p.Conversations) {
			t.Fatalf("%s: answer changed by the rewriter: %+v -> %+v", id, p.Answer, r.Answer)
		}
		for i, c := range r.Conversations {
			pc := p.Conversations[i]
			if !reflect.DeepEqual(boxRe.FindAllString(c.Value, -1), boxRe.FindAllString(pc.Value, -1)) {
				t.Fatalf("%s: boxes changed: %q -> %q", id, pc.Value, c.Value)
			}
			if strings.Count(c.Value, "<image>") != strings.Count(pc.Value, "<image>") {
				t.Fatalf("%s: image tags changed: %q -> %q", id, pc.Value, c.Value)
			}
			if c.From != "human" {
				continue
			}
			// ("Tell me something." is valid for a template without slots.)
			if strings.Contains(c.Value, "[0.100, 0.200, 0.300, 0.400]") {
				t.Fatalf("%s: a rejected paraphrase was used: %q", id, c.Value)
			}
			if strings.Contains(c.Value, "Please, ") || strings.Contains(c.Value, "Kindly answer this: ") {
				changed++
			}
		}
	}
	if same < len(plain)*8/10 {
		t.Fatalf("only %d of %d records drew the same sources", same, len(plain))
	}
	if changed < len(plain)/10 {
		t.Fatalf("only %d of %d prompts rewritten", changed, len(plain))
	}
}

// A rewriter that always fails leaves the templates: the set is the one
// built without a rewriter.
func TestBuildFallsBackToTemplates(t *testing.T) {
	dir := t.TempDir()
	ds, err := synthtest.World(filepath.Join(dir, "world"), synthtest.Options{Seed: 6, Images: 20, Size: 96})
	if err != nil {
		t.Fatal(err)
	}
	opts := synth.BuildOptions{DatasetID: "fb", Seed: 3, Samples: 800}
	base, _ := buildRecords(t, ds, filepath.Join(dir, "plain"), opts)
	_, srv := newChatServer(t, func(int64) int { return http.StatusInternalServerError })
	rw, err := synth.NewRewriter(synth.RewriterConfig{URL: srv.URL, RatePerSecond: 1000, MaxRetries: -1})
	if err != nil {
		t.Fatal(err)
	}
	opts.Rewriter = rw
	m, _ := buildRecords(t, ds, filepath.Join(dir, "fallback"), opts)
	if m.Rewrite == nil || m.Rewrite.Fallbacks == 0 || m.Rewrite.Fallbacks != m.Rewrite.Templates || m.Rewrite.Accepted != 0 {
		t.Fatalf("rewrite stats %+v: want every template to fall back", m.Rewrite)
	}
	if m.ContentHash != base.ContentHash {
		t.Fatal("falling back to templates changed the records")
	}
}
