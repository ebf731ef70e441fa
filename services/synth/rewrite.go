package synth

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode"

	"go.opentelemetry.io/otel/attribute"
	"golang.org/x/time/rate"
)

// Rewriter paraphrases prompt templates. Build calls it once per template
// before generating (not once per sample), keeps only paraphrases that
// preserve every {slot} and add no digits, brackets or image tags, and falls
// back to the template on any error. Box text and answers are slot values or
// answer templates, which are never sent: a rewriter cannot change them.
type Rewriter interface {
	// Name identifies the rewriter (endpoint and model) in the set's
	// parameters.
	Name() string
	// Paraphrase returns up to n paraphrases of text.
	Paraphrase(ctx context.Context, text string, n int) ([]string, error)
}

// RewriteStats reports what the rewriter contributed.
type RewriteStats struct {
	Rewriter  string `json:"rewriter"`
	Templates int    `json:"templates"` // templates sent
	Accepted  int    `json:"accepted"`  // paraphrases added
	Rejected  int    `json:"rejected"`  // paraphrases that failed validation
	Fallbacks int    `json:"fallbacks"` // templates kept alone because the call failed
}

// promptTemplates compiles the prompt templates and, with a rewriter,
// extends each list with validated paraphrases.
func (b *builder) promptTemplates(ctx context.Context) (templateSet, *RewriteStats, error) {
	set, err := compileAll(promptTemplates)
	if err != nil {
		return nil, nil, err
	}
	rw := b.opts.Rewriter
	if rw == nil {
		return set, nil, nil
	}
	ctx, span := tracer.Start(ctx, "synth.rewriteTemplates")
	defer span.End()
	st := &RewriteStats{Rewriter: rw.Name()}
	keys := make([]string, 0, len(set))
	for k := range set {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		base := set[k]
		have := map[string]bool{}
		for _, t := range base {
			have[t.src] = true
		}
		for _, t := range base {
			st.Templates++
			out, err := rw.Paraphrase(ctx, t.src, rewriteVariants)
			if err != nil {
				if ctx.Err() != nil {
					return nil, nil, fmt.Errorf("rewrite templates: %w", ctx.Err())
				}
				st.Fallbacks++
				b.opts.Logger.Warn("rewrite failed, keeping template", "template", t.src, "err", err)
				continue
			}
			for _, p := range out {
				nt, ok := validParaphrase(t, p)
				if !ok || have[nt.src] {
					st.Rejected++
					continue
				}
				have[nt.src] = true
				set[k] = append(set[k], nt)
				st.Accepted++
			}
		}
	}
	span.SetAttributes(attribute.Int("rewrite.accepted", st.Accepted), attribute.Int("rewrite.fallbacks", st.Fallbacks))
	return set, st, nil
}

const rewriteVariants = 3

// validParaphrase accepts p only if it keeps exactly t's slots and adds
// nothing that could pass for an answer (digits, brackets, image tags).
func validParaphrase(t template, p string) (template, bool) {
	p = strings.TrimSpace(p)
	if p == "" || len(p) > 3*len(t.src)+60 || strings.ContainsAny(p, "[]<>\n\r") {
		return template{}, false
	}
	origDigits := strings.IndexFunc(t.src, unicode.IsDigit) >= 0
	if !origDigits && strings.IndexFunc(p, unicode.IsDigit) >= 0 {
		return template{}, false
	}
	nt, err := compileTemplate(p)
	if err != nil || nt.slotSet() != t.slotSet() {
		return template{}, false
	}
	for _, lit := range nt.lits {
		if strings.Contains(lit, "}") {
			return template{}, false
		}
	}
	return nt, true
}

// RewriterConfig configures an HTTPRewriter.
type RewriterConfig struct {
	// URL is the base of an OpenAI-compatible API: requests go to
	// POST {URL}/v1/chat/completions. Required.
	URL string
	// Model is sent as "model" (default "default").
	Model string
	// APIKey, when set, is sent as a bearer token.
	APIKey string
	// CacheDir holds responses keyed by the hash of the input (default:
	// no disk cache). The service uses <DataDir>/synth/rewrite-cache.
	CacheDir string
	// RatePerSecond limits requests (default 2); Burst is the bucket size
	// (default 1).
	RatePerSecond float64
	Burst         int
	// MaxRetries after the first try on 429, 5xx and transport errors
	// (default 4); Backoff is the first wait, doubled each retry up to 10s
	// (default 500ms). A Retry-After header takes precedence.
	MaxRetries int
	Backoff    time.Duration
	// Timeout bounds one request (default 30s).
	Timeout time.Duration
	// HTTPClient (default: a client with Timeout).
	HTTPClient *http.Client
	// Logger (default: discard).
	Logger *slog.Logger
}

// HTTPRewriter paraphrases through an OpenAI-compatible chat endpoint.
type HTTPRewriter struct {
	cfg     RewriterConfig
	limiter *rate.Limiter
	client  *http.Client
}

// NewRewriter validates cfg and returns a rewriter.
func NewRewriter(cfg RewriterConfig) (*HTTPRewriter, error) {
	cfg.URL = strings.TrimRight(strings.TrimSpace(cfg.URL), "/")
	if cfg.URL == "" {
		return nil, errors.New("new rewriter: empty URL")
	}
	if !strings.HasPrefix(cfg.URL, "http://") && !strings.HasPrefix(cfg.URL, "https://") {
		return nil, fmt.Errorf("new rewriter: URL %q: want http or https", cfg.URL)
	}
	if cfg.Model == "" {
		cfg.Model = "default"
	}
	if cfg.RatePerSecond == 0 {
		cfg.RatePerSecond = 2
	}
	if cfg.RatePerSecond < 0 {
		return nil, fmt.Errorf("new rewriter: rate %v: must be positive", cfg.RatePerSecond)
	}
	if cfg.Burst <= 0 {
		cfg.Burst = 1
	}
	if cfg.MaxRetries == 0 {
		cfg.MaxRetries = 4
	}
	if cfg.MaxRetries < 0 {
		cfg.MaxRetries = 0
	}
	if cfg.Backoff <= 0 {
		cfg.Backoff = 500 * time.Millisecond
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 30 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	client := cfg.HTTPClient
	if client == nil {
		client = &http.Client{Timeout: cfg.Timeout}
	}
	return &HTTPRewriter{cfg: cfg, limiter: rate.NewLimiter(rate.Limit(cfg.RatePerSecond), cfg.Burst), client: client}, nil
}

// Name returns "<url>#<model>".
func (h *HTTPRewriter) Name() string { return h.cfg.URL + "#" + h.cfg.Model }

// rewriteInstruction is versioned through the cache key: changing it
// invalidates cached paraphrases.
const rewriteInstruction = "You paraphrase instructions for a vision-language dataset. " +
	"Rewrite the user's instruction in %d different ways with the same meaning. " +
	"Keep every placeholder in curly braces, such as {expr} or {box}, exactly as written, each once. " +
	"Do not add numbers, brackets or new facts. Reply with one paraphrase per line and nothing else."

type chatRequest struct {
	Model       string        `json:"model"`
	Messages    []chatMessage `json:"messages"`
	Temperature float64       `json:"temperature"`
}

type chatMessage struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

type chatResponse struct {
	Choices []struct {
		Message chatMessage `json:"message"`
	} `json:"choices"`
}

// Paraphrase returns up to n paraphrases of text, from the cache when the
// same input was paraphrased before.
func (h *HTTPRewriter) Paraphrase(ctx context.Context, text string, n int) ([]string, error) {
	ctx, span := tracer.Start(ctx, "synth.Rewriter.Paraphrase")
	defer span.End()
	key := h.cacheKey(text, n)
	if out, ok := h.cached(key); ok {
		span.SetAttributes(attribute.Bool("rewrite.cache_hit", true))
		return out, nil
	}
	body, err := json.Marshal(chatRequest{
		Model: h.cfg.Model, Temperature: 0.7,
		Messages: []chatMessage{
			{Role: "system", Content: fmt.Sprintf(rewriteInstruction, n)},
			{Role: "user", Content: text},
		},
	})
	if err != nil {
		return nil, fmt.Errorf("paraphrase: encode request: %w", err)
	}
	var lastErr error
	wait := h.cfg.Backoff
	for attempt := 0; attempt <= h.cfg.MaxRetries; attempt++ {
		if attempt > 0 {
			select {
			case <-time.After(wait):
			case <-ctx.Done():
				return nil, fmt.Errorf("paraphrase: %w", ctx.Err())
			}
			wait = min(2*wait, 10*time.Second)
		}
		if err := h.limiter.Wait(ctx); err != nil {
			return nil, fmt.Errorf("paraphrase: rate limit: %w", err)
		}
		out, retryAfter, retry, err := h.call(ctx, body)
		if err == nil {
			lines := parseParaphrases(out, n)
			h.store(key, lines)
			return lines, nil
		}
		lastErr = err
		if !retry {
			break
		}
		if retryAfter > 0 {
			wait = retryAfter
		}
		h.cfg.Logger.Debug("rewrite retry", "attempt", attempt+1, "err", err)
	}
	span.RecordError(lastErr)
	return nil, fmt.Errorf("paraphrase: %w", lastErr)
}

func (h *HTTPRewriter) call(ctx context.Context, body []byte) (content string, retryAfter time.Duration, retry bool, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, h.cfg.URL+"/v1/chat/completions", bytes.NewReader(body))
	if err != nil {
		return "", 0, false, fmt.Errorf("build request: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	if h.cfg.APIKey != "" {
		req.Header.Set("Authorization", "Bearer "+h.cfg.APIKey)
	}
	resp, err := h.client.Do(req)
	if err != nil {
		return "", 0, ctx.Err() == nil, fmt.Errorf("post chat completion: %w", err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return "", 0, true, fmt.Errorf("read chat completion: %w", err)
	}
	if resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500 {
		if s, perr := strconv.Atoi(resp.Header.Get("Retry-After")); perr == nil && s >= 0 {
			retryAfter = time.Duration(s) * time.Second
		}
		return "", retryAfter, true, fmt.Errorf("chat completion: status %d", resp.StatusCode)
	}
	if resp.StatusCode != http.StatusOK {
		return "", 0, false, fmt.Errorf("chat completion: status %d: %s", resp.StatusCode, truncateStr(string(data), 200))
	}
	var cr chatResponse
	if err := json.Unmarshal(data, &cr); err != nil {
		return "", 0, false, fmt.Errorf("decode chat completion: %w", err)
	}
	if len(cr.Choices) == 0 || strings.TrimSpace(cr.Choices[0].Message.Content) == "" {
		return "", 0, false, errors.New("chat completion: no content")
	}
	return cr.Choices[0].Message.Content, 0, false, nil
}

// parseParaphrases splits a reply into lines, dropping list markers and
// quotes.
func parseParaphrases(s string, n int) []string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		l = strings.TrimSpace(l)
		l = strings.TrimLeft(l, "-*•0123456789.) ")
		l = strings.Trim(l, "\"'` ")
		if l != "" {
			out = append(out, l)
		}
		if len(out) == n {
			break
		}
	}
	return out
}

func (h *HTTPRewriter) cacheKey(text string, n int) string {
	sum := sha256.Sum256([]byte(h.cfg.Model + "\x00" + rewriteInstruction + "\x00" + strconv.Itoa(n) + "\x00" + text))
	return hex.EncodeToString(sum[:])
}

func (h *HTTPRewriter) cachePath(key string) string {
	return filepath.Join(h.cfg.CacheDir, key[:2], key+".json")
}

func (h *HTTPRewriter) cached(key string) ([]string, bool) {
	if h.cfg.CacheDir == "" {
		return nil, false
	}
	data, err := os.ReadFile(h.cachePath(key))
	if err != nil {
		return nil, false
	}
	var out []string
	if json.Unmarshal(data, &out) != nil {
		return nil, false
	}
	return out, true
}

func (h *HTTPRewriter) store(key string, lines []string) {
	if h.cfg.CacheDir == "" {
		return
	}
	p := h.cachePath(key)
	data, _ := json.Marshal(lines)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		h.cfg.Logger.Warn("rewrite cache", "err", err)
		return
	}
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		h.cfg.Logger.Warn("rewrite cache", "err", err)
		return
	}
	if err := os.Rename(tmp, p); err != nil {
		h.cfg.Logger.Warn("rewrite cache", "err", err)
	}
}

func truncateStr(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}
