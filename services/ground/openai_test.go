package ground

import (
	"context"
	"encoding/json"
	"image/color"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/groundmesh/groundmesh/internal/events"
	"github.com/groundmesh/groundmesh/model"
)

func chatBody(parts ...map[string]any) string {
	b, _ := json.Marshal(map[string]any{"model": "groundmesh", "messages": []any{
		map[string]any{"role": "system", "content": "You locate things."},
		map[string]any{"role": "user", "content": parts},
	}})
	return string(b)
}

func TestChatCompletionsRefusals(t *testing.T) {
	g := &recordingGrounder{}
	h, err := NewHTTPHandler(HTTPConfig{Tokens: []string{"k"}, Limits: Limits{MaxImageBytes: 3000, MaxPixels: 64 * 64, MaxExpressionBytes: 40}}, g)
	if err != nil {
		t.Fatal(err)
	}
	okImg := scene(t, 40, 30, 5, 5, color.RGBA{200, 0, 0, 255})
	img := dataURI("image/png", okImg)
	text := map[string]any{"type": "text", "text": "the red square"}
	imagePart := func(b []byte) map[string]any {
		return map[string]any{"type": "image_url", "image_url": map[string]any{"url": dataURI("image/png", b)}}
	}
	bigImg := make([]byte, 3001)
	copy(bigImg, okImg)
	image := map[string]any{"type": "image_url", "image_url": map[string]any{"url": img}}
	cases := []struct {
		name, auth, body string
		status           int
		code, msg        string
	}{
		{"no token", "", chatBody(text, image), 401, CodeUnauthorized, "missing bearer token"},
		{"string content", "Bearer k", `{"model":"groundmesh","messages":[{"role":"user","content":"where is the red square?"}]}`, 400, CodeBadRequest, "the user message has no image"},
		{"no user message", "Bearer k", `{"model":"groundmesh","messages":[{"role":"system","content":"hi"}]}`, 400, CodeBadRequest, "no user message"},
		{"two images", "Bearer k", chatBody(text, image, image), 400, CodeBadRequest, "has 2 images; send exactly one"},
		{"no text", "Bearer k", chatBody(image), 400, CodeBadExpression, "no expression"},
		{"url image", "Bearer k", chatBody(text, map[string]any{"type": "image_url", "image_url": map[string]any{"url": "https://example.com/a.png"}}), 400, CodeBadRequest, "image must be a data URI"},
		{"audio part", "Bearer k", chatBody(text, image, map[string]any{"type": "input_audio"}), 400, CodeBadRequest, `type "input_audio"`},
		// The service's limits hold on this endpoint as on /v1/ground.
		{"image bytes", "Bearer k", chatBody(text, imagePart(bigImg)), 413, CodeImageTooLarge, "image too large: 3001 bytes, the limit is 3000"},
		{"decompression bomb", "Bearer k", chatBody(text, imagePart(pngHeader(100000, 100000))), 413, CodeTooManyPixels, "100000x100000 is 10000000000 pixels"},
		{"truncated png", "Bearer k", chatBody(text, imagePart(okImg[:20])), 400, CodeBadImage, "image does not decode"},
		{"expression length", "Bearer k", chatBody(map[string]any{"type": "text", "text": strings.Repeat("red ", 11)}, image), 400, CodeExpressionTooLong, "expression is 44 bytes long, the limit is 40"},
		{"control character", "Bearer k", chatBody(map[string]any{"type": "text", "text": "red\x00square"}, image), 400, CodeBadExpression, "control character U+0000"},
		{"stream", "Bearer k", `{"model":"groundmesh","stream":true,"messages":[]}`, 400, CodeBadRequest, "stream: true is not supported"},
		{"malformed export model", "Bearer k", strings.Replace(chatBody(text, image), `"model":"groundmesh"`, `"model":"ck@gguf"`, 1), 400, CodeBadRequest, "<checkpoint>@<format>-<dtype>"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			req := httptest.NewRequest("POST", "/v1/chat/completions", strings.NewReader(c.body))
			if c.auth != "" {
				req.Header.Set("Authorization", c.auth)
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			var out struct {
				Error struct{ Message, Type, Code string } `json:"error"`
			}
			if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil {
				t.Fatal(err)
			}
			if rec.Code != c.status || out.Error.Code != c.code || !strings.Contains(out.Error.Message, c.msg) {
				t.Fatalf("got %d %+v, want %d %s %q", rec.Code, out.Error, c.status, c.code, c.msg)
			}
		})
	}
	if g.n.Load() != 0 {
		t.Fatal("a refused request reached the grounder")
	}
}

// TestOpenAIClientLibrary: the openai package from npm, installed by the
// test, asks /v1/chat/completions with an image_url part and gets a box it
// can parse, the one the real GoMLX plugin gives for the same question.
func TestOpenAIClientLibrary(t *testing.T) {
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatal("node not found on PATH: this test runs the openai npm package (apt-get install nodejs npm)")
	}
	npm, err := exec.LookPath("npm")
	if err != nil {
		t.Fatal("npm not found on PATH: this test installs the openai npm package (apt-get install npm)")
	}
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	install := exec.CommandContext(ctx, npm, "install", "--no-audit", "--no-fund", "--silent", "--prefix", dir, "openai@4")
	if out, err := install.CombinedOutput(); err != nil {
		t.Fatalf("npm install openai@4: %v\n%s", err, out)
	}

	svc, ref := pluginService(t, "ck-openai")
	h, err := NewHTTPHandler(HTTPConfig{Tokens: []string{"sk-test"}}, svc)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)

	png := scene(t, 64, 64, 30, 8, color.RGBA{220, 40, 40, 255})
	script := `import OpenAI from 'openai';
const image = {type: 'image_url', image_url: {url: process.env.IMAGE}};
const ask = (key) => new OpenAI({apiKey: key, baseURL: process.env.BASE, maxRetries: 0}).chat.completions.create({
  model: 'groundmesh',
  messages: [{role: 'user', content: [{type: 'text', text: 'the red square'}, image]}],
});
const r = await ask('sk-test');
let status = 0;
try { await ask('sk-wrong'); } catch (e) { status = e.status; }
console.log(JSON.stringify({content: r.choices[0].message.content, model: r.model, finish: r.choices[0].finish_reason, wrongKeyStatus: status}));
`
	path := filepath.Join(dir, "ask.mjs")
	if err := os.WriteFile(path, []byte(script), 0o644); err != nil {
		t.Fatal(err)
	}
	run := exec.CommandContext(ctx, node, path)
	run.Dir = dir
	run.Env = append(os.Environ(), "BASE="+srv.URL+"/v1", "IMAGE="+dataURI("image/png", png))
	out, err := run.Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		t.Fatalf("node: %v\n%s\n%s", err, out, stderr)
	}
	var got struct {
		Content, Model, Finish string
		WrongKeyStatus         int
	}
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("script output %q: %v", out, err)
	}
	box, err := model.ParseBox(got.Content)
	if err != nil {
		t.Fatalf("the client got %q, not a box: %v", got.Content, err)
	}
	want, err := svc.Ground(ctx, events.GroundRequested{Image: png, Expression: "the red square"})
	if err != nil {
		t.Fatal(err)
	}
	if got.Content != want.Text || [4]float64(box) != want.Boxes[0].Norm || got.Model != ref.CheckpointID || got.Finish != "stop" {
		t.Fatalf("client got %+v (box %v); the service answers %q from %s", got, box, want.Text, ref.CheckpointID)
	}
	if got.WrongKeyStatus != http.StatusUnauthorized {
		t.Fatalf("a wrong key gave status %d, want 401", got.WrongKeyStatus)
	}
}
