package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/groundmesh/groundmesh/internal/dataset"
	"github.com/groundmesh/groundmesh/internal/events"
	"github.com/groundmesh/groundmesh/internal/stack"
	"github.com/groundmesh/groundmesh/model"
	"github.com/groundmesh/groundmesh/services/ground"
	"github.com/groundmesh/groundmesh/services/synth"
	"github.com/groundmesh/groundmesh/workflows"
)

// groundEnv is the grounding API's part of the environment.
type groundEnv struct {
	APITokens          string // GROUNDMESH_API_TOKENS: comma-separated bearer tokens
	MaxImageBytes      string // GROUNDMESH_GROUND_MAX_IMAGE_BYTES
	MaxPixels          string // GROUNDMESH_GROUND_MAX_PIXELS
	MaxExpressionBytes string // GROUNDMESH_GROUND_MAX_EXPRESSION_BYTES
	MaxBatch           string // GROUNDMESH_GROUND_MAX_BATCH
	MaxDelay           string // GROUNDMESH_GROUND_MAX_DELAY (a Go duration)
	MaxQueue           string // GROUNDMESH_GROUND_MAX_QUEUE
	Timeout            string // GROUNDMESH_GROUND_TIMEOUT (a Go duration)
	ExportBackends     string // GROUNDMESH_GROUND_EXPORT_BACKENDS: format=backend,...
}

func readGroundEnv() groundEnv {
	return groundEnv{
		APITokens:          os.Getenv("GROUNDMESH_API_TOKENS"),
		MaxImageBytes:      os.Getenv("GROUNDMESH_GROUND_MAX_IMAGE_BYTES"),
		MaxPixels:          os.Getenv("GROUNDMESH_GROUND_MAX_PIXELS"),
		MaxExpressionBytes: os.Getenv("GROUNDMESH_GROUND_MAX_EXPRESSION_BYTES"),
		MaxBatch:           os.Getenv("GROUNDMESH_GROUND_MAX_BATCH"),
		MaxDelay:           os.Getenv("GROUNDMESH_GROUND_MAX_DELAY"),
		MaxQueue:           os.Getenv("GROUNDMESH_GROUND_MAX_QUEUE"),
		Timeout:            os.Getenv("GROUNDMESH_GROUND_TIMEOUT"),
		ExportBackends:     os.Getenv("GROUNDMESH_GROUND_EXPORT_BACKENDS"),
	}
}

// config parses the grounding settings; unset ones keep their defaults.
func (g groundEnv) config() (stack.GroundConfig, error) {
	var c stack.GroundConfig
	for _, t := range strings.Split(g.APITokens, ",") {
		if t = strings.TrimSpace(t); t != "" {
			c.APITokens = append(c.APITokens, t)
		}
	}
	ints := []struct {
		name, v string
		dst     *int
	}{
		{"GROUNDMESH_GROUND_MAX_IMAGE_BYTES", g.MaxImageBytes, &c.Limits.MaxImageBytes},
		{"GROUNDMESH_GROUND_MAX_PIXELS", g.MaxPixels, &c.Limits.MaxPixels},
		{"GROUNDMESH_GROUND_MAX_EXPRESSION_BYTES", g.MaxExpressionBytes, &c.Limits.MaxExpressionBytes},
		{"GROUNDMESH_GROUND_MAX_BATCH", g.MaxBatch, &c.Batch.MaxBatch},
		{"GROUNDMESH_GROUND_MAX_QUEUE", g.MaxQueue, &c.Batch.MaxQueue},
	}
	for _, f := range ints {
		if f.v == "" {
			continue
		}
		n, err := strconv.Atoi(f.v)
		if err != nil || n <= 0 {
			return c, fmt.Errorf("%s=%q: want a positive integer", f.name, f.v)
		}
		*f.dst = n
	}
	durs := []struct {
		name, v string
		dst     *time.Duration
	}{
		{"GROUNDMESH_GROUND_MAX_DELAY", g.MaxDelay, &c.Batch.MaxDelay},
		{"GROUNDMESH_GROUND_TIMEOUT", g.Timeout, &c.Timeout},
	}
	for _, f := range durs {
		if f.v == "" {
			continue
		}
		d, err := time.ParseDuration(f.v)
		if err != nil || d <= 0 {
			return c, fmt.Errorf("%s=%q: want a positive duration such as 5ms", f.name, f.v)
		}
		*f.dst = d
	}
	for _, kv := range strings.Split(g.ExportBackends, ",") {
		if kv = strings.TrimSpace(kv); kv == "" {
			continue
		}
		format, backend, ok := strings.Cut(kv, "=")
		if !ok || format == "" || backend == "" {
			return c, fmt.Errorf("GROUNDMESH_GROUND_EXPORT_BACKENDS=%q: want format=backend pairs, comma-separated, such as gguf=ggml", g.ExportBackends)
		}
		if c.ExportBackends == nil {
			c.ExportBackends = map[string]string{}
		}
		c.ExportBackends[format] = backend
	}
	return c, nil
}

// newToken returns a random bearer token.
func newToken() (string, error) {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("generate API token: %w", err)
	}
	return "gm-" + hex.EncodeToString(b), nil
}

// demoGround asks the gateway where the referent of one test REC record of
// the pipeline's synth set is, and prints the answer beside the truth. The
// set's manifest and dataset root come from services/synth (Describe), not
// its tables; the grounding service learns of the run from train's facts
// on the bus, so it first waits, a bounded time, until the service knows
// the run's final checkpoint.
func demoGround(ctx context.Context, s *stack.Stack, token string, pr workflows.PipelineResult) error {
	if s.Services.Synth == nil {
		return errors.New("this process runs no synth service to describe the synth set")
	}
	set, err := s.Services.Synth.Describe(ctx, events.SynthDescribeRequested{SynthSetID: pr.SynthSetID})
	if err != nil {
		return fmt.Errorf("synth set %s: %w", pr.SynthSetID, err)
	}
	manifestKey, root := set.ManifestKey, set.DatasetRoot
	if err := waitForModel(ctx, s, pr, demoModelWait); err != nil {
		return err
	}
	m, err := synth.OpenManifest(s.Blob, manifestKey)
	if err != nil {
		return err
	}
	var rec *model.Record
	errFound := errors.New("found")
	err = synth.ReadRecords(ctx, s.Blob, m, func(r *model.Record) bool {
		return r.Task == "rec" && r.Split == "test" && len(r.Answer.Phrases) > 0 && len(r.Answer.Boxes) > 0 && len(r.Images) == 1
	}, func(r *model.Record) error {
		rec = r
		return errFound
	})
	if err != nil && !errors.Is(err, errFound) {
		return err
	}
	if rec == nil {
		return errors.New("no test REC record in the synth set")
	}
	path := filepath.Join(root, filepath.FromSlash(rec.Images[0].Path))
	img, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read image: %w", err)
	}
	mediaType := "image/png"
	if ext := strings.ToLower(filepath.Ext(path)); ext == ".jpg" || ext == ".jpeg" {
		mediaType = "image/jpeg"
	}
	body, _ := json.Marshal(map[string]any{
		"image":      "data:" + mediaType + ";base64," + base64.StdEncoding.EncodeToString(img),
		"expression": rec.Answer.Phrases[0],
	})
	req, err := http.NewRequestWithContext(ctx, "POST", s.GatewayURL()+"/v1/ground", strings.NewReader(string(body)))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+token)
	start := time.Now()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("POST /v1/ground: %w", err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("POST /v1/ground: %s: %s", resp.Status, strings.TrimSpace(string(raw)))
	}
	var res events.GroundCompleted
	if err := json.Unmarshal(raw, &res); err != nil || len(res.Boxes) == 0 {
		return fmt.Errorf("POST /v1/ground: answer %q: %v", raw, err)
	}
	truth := rec.Answer.Boxes[0]
	p := res.Boxes[0].Pixel
	iou := dataset.Box{X1: p[0], Y1: p[1], X2: p[2], Y2: p[3]}.IoU(dataset.Box{X1: truth[0], Y1: truth[1], X2: truth[2], Y2: truth[3]})
	fmt.Println("\ngrounding through the gateway (POST /v1/ground, bearer token):")
	fmt.Printf("  image:       %s (%dx%d)\n", path, res.Width, res.Height)
	fmt.Printf("  expression:  %q\n", rec.Answer.Phrases[0])
	fmt.Printf("  answer:      %s -> pixel box [%.0f, %.0f, %.0f, %.0f]; truth [%.0f, %.0f, %.0f, %.0f], IoU %.2f\n",
		res.Text, p[0], p[1], p[2], p[3], truth[0], truth[1], truth[2], truth[3], iou)
	fmt.Printf("  model:       %s (run %s, %s step %d)\n", res.ModelVersion, res.RunID, res.Stage, res.Step)
	fmt.Printf("  latency:     %.1f ms in services/ground, %s over HTTP and the %s bus\n", res.LatencyMS, time.Since(start).Round(time.Millisecond), s.Bus.Kind())
	return nil
}

// demoModelWait bounds how long the demo waits for the grounding service
// to learn of the model it trained.
const demoModelWait = time.Minute

// waitForModel waits until the grounding service knows the pipeline's
// final checkpoint (its run's train.completed fact consumed), at most
// limit.
func waitForModel(ctx context.Context, s *stack.Stack, res workflows.PipelineResult, limit time.Duration) error {
	final := res.Checkpoints[finalStage(res.Checkpoints)]
	if s.Services.Ground == nil || final == "" {
		return nil
	}
	deadline := time.Now().Add(limit)
	for {
		_, err := s.Services.Ground.Checkpoint(ctx, final)
		if err == nil {
			return nil
		}
		var ge *ground.Error
		if !errors.As(err, &ge) || !ge.Pending() {
			return fmt.Errorf("the grounding service on checkpoint %s: %w", final, err)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the grounding service has not learned of checkpoint %s within %v (train's facts travel over the bus; is its consumer running?): %w", final, limit, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// finalStage is the last stage of a run's checkpoints ("stage3": the
// names sort in order).
func finalStage(byStage map[string]string) string {
	last := ""
	for st := range byStage {
		last = max(last, st)
	}
	return last
}

// cmdPromote points an alias (production by default) at a checkpoint:
// grounding requests that name no checkpoint are served by it from then on.
func cmdPromote(ctx context.Context, e env, args []string) error {
	fs := flag.NewFlagSet("promote", flag.ContinueOnError)
	alias := fs.String("alias", "production", "the alias to point at the checkpoint")
	backend := fs.String("backend", "", "the compute backend that serves it (default: the run's, or for an export the format's export backend)")
	dataDir := fs.String("data-dir", e.DataDir, "data directory")
	verbose := fs.Bool("v", false, "log to stderr")
	id, rest := splitPositional(args)
	if err := fs.Parse(rest); err != nil {
		return errUsage
	}
	if id == "" {
		fmt.Fprintln(os.Stderr, "usage: groundmesh promote CHECKPOINT_ID[@FORMAT-DTYPE] [--alias production] [--backend NAME]")
		return errUsage
	}
	m, err := ground.ParseModel(id)
	if err != nil {
		return err
	}
	m.Backend = *backend
	s, done, err := offline(ctx, e, *dataDir, *verbose)
	if err != nil {
		return err
	}
	defer done()
	p, err := s.Services.Ground.PromoteModel(ctx, *alias, m)
	if err != nil {
		return err
	}
	what := "checkpoint " + p.CheckpointID
	if p.Format != "" {
		what = fmt.Sprintf("%s (the %s export in %s of checkpoint %s, %s)", p.ModelVersion, p.Format, p.Dtype, p.CheckpointID, p.ExportBlobKey)
	}
	if p.Backend != "" {
		what += " on " + p.Backend
	}
	fmt.Printf("%s -> %s (run %s, %s step %d), promoted %s\n", p.Alias, what, p.RunID, p.Stage, p.Step, p.PromotedAt.Format(time.RFC3339))
	return nil
}
