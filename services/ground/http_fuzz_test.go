package ground

import (
	"bytes"
	"context"
	"encoding/json"
	"image/color"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/groundmesh/groundmesh/internal/events"
)

// fuzzGrounder and fuzzPromoter keep what reached them.
type fuzzGrounder struct {
	calls int
	req   events.GroundRequested
}

func (g *fuzzGrounder) Ground(_ context.Context, req events.GroundRequested) (events.GroundCompleted, error) {
	g.calls++
	g.req = req
	return events.GroundCompleted{Text: "[0.100, 0.200, 0.300, 0.400]", ModelVersion: "ck"}, nil
}

type fuzzPromoter struct {
	calls             int
	alias, checkpoint string
}

func (p *fuzzPromoter) PromoteModel(_ context.Context, alias string, m ModelSpec) (events.ModelPromoted, error) {
	p.calls++
	p.alias, p.checkpoint = alias, m.CheckpointID
	return events.ModelPromoted{Alias: alias, CheckpointID: m.CheckpointID, ModelVersion: m.String()}, nil
}

var fuzzRoutes = []string{"/v1/ground", "/v1/chat/completions", "/v1/models/promote"}

// FuzzHTTPRequest sends arbitrary bodies and content types to each route
// of the grounding API, authenticated, with a grounder and a promoter that
// always succeed. A request is either answered 200 after reaching the
// grounder (or promoter) exactly once, with a request that passes the
// service's own checks, or refused with a 4xx whose JSON body carries a
// reason code of that status, having reached nothing. No input is a 5xx.
func FuzzHTTPRequest(f *testing.F) {
	lim := Limits{MaxImageBytes: 3000, MaxPixels: 64 * 64, MaxExpressionBytes: 40}
	img := scene(f, 40, 30, 5, 5, color.RGBA{200, 0, 0, 255})
	uri := dataURI("image/png", img)
	js := func(v any) []byte {
		b, err := json.Marshal(v)
		if err != nil {
			f.Fatal(err)
		}
		return b
	}
	var mp bytes.Buffer
	mw := multipart.NewWriter(&mp)
	if err := mw.SetBoundary("XyZ"); err != nil {
		f.Fatal(err)
	}
	fw, _ := mw.CreateFormFile("image", "a.png")
	fw.Write(img)
	mw.WriteField("expression", "the red square")
	mw.WriteField("timeout_ms", "500")
	mw.WriteField("attention", "true")
	mw.Close()
	const mpType = "multipart/form-data; boundary=XyZ"

	f.Add(uint8(0), "application/json", js(GroundRequest{Image: uri, Expression: "the red square", TimeoutMS: 100}))
	f.Add(uint8(0), "", js(GroundRequest{ImageKey: "images/a.png", Expression: "the circle", Attention: true}))
	f.Add(uint8(0), mpType, mp.Bytes())
	f.Add(uint8(0), mpType, mp.Bytes()[:mp.Len()/2])
	f.Add(uint8(0), "application/json", []byte(`{"image": "data:image/png;base64,!!", "expression": "x"}`))
	f.Add(uint8(0), "application/json", []byte(`{"image_key": "k", "expression": "x", "timeout_ms": -1}`))
	f.Add(uint8(0), "application/json", []byte(`{"image_key": "k", "expression": "x"} {"image_key": "k"}`))
	f.Add(uint8(0), "text/plain", []byte(`{}`))
	f.Add(uint8(1), "application/json", js(map[string]any{"model": "groundmesh", "messages": []any{
		map[string]any{"role": "user", "content": []any{
			map[string]any{"type": "image_url", "image_url": map[string]any{"url": uri}},
			map[string]any{"type": "text", "text": "the red square"},
		}},
	}}))
	f.Add(uint8(1), "application/json", []byte(`{"messages": [{"role": "user", "content": "hello"}], "n": 2}`))
	f.Add(uint8(1), "application/json", []byte(`{"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}`))
	f.Add(uint8(2), "application/json", []byte(`{"checkpoint_id": "k", "alias": "staging"}`))
	f.Add(uint8(2), "application/json", []byte(`{"alias": "staging"}`))
	f.Add(uint8(2), "application/json", []byte(`{"checkpoint_id": "k@gguf-q8_0", "backend": "ggml"}`))
	f.Add(uint8(0), "application/json", []byte(`{"checkpoint_id": "k@", "expression": "x", "image_key": "a"}`))
	f.Add(uint8(2), "", []byte(`null`))

	f.Fuzz(func(t *testing.T, route uint8, contentType string, body []byte) {
		g, p := &fuzzGrounder{}, &fuzzPromoter{}
		h, err := NewHTTPHandler(HTTPConfig{Tokens: []string{"s3cret"}, Limits: lim, Promoter: p}, g)
		if err != nil {
			t.Fatal(err)
		}
		path := fuzzRoutes[int(route)%len(fuzzRoutes)]
		r := httptest.NewRequest(http.MethodPost, path, bytes.NewReader(body))
		r.Header.Set("Authorization", "Bearer s3cret")
		if contentType != "" {
			r.Header.Set("Content-Type", contentType)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)

		reached := g.calls + p.calls
		if w.Code == http.StatusOK {
			if reached != 1 {
				t.Fatalf("%s %q: 200 with %d calls behind it", path, body, reached)
			}
			if g.calls == 1 {
				if err := lim.WithDefaults().CheckRequest(g.req); err != nil {
					t.Fatalf("%s %q: the grounder got a request the service refuses: %v (%+v)", path, body, err, g.req)
				}
			}
			if p.calls == 1 && (p.alias == "" || p.checkpoint == "") {
				t.Fatalf("%s %q: promoted alias %q checkpoint %q", path, body, p.alias, p.checkpoint)
			}
			return
		}
		if reached != 0 {
			t.Fatalf("%s %q: status %d after %d calls", path, body, w.Code, reached)
		}
		if w.Code < 400 || w.Code >= 500 {
			t.Fatalf("%s %q (Content-Type %q): status %d, want a 4xx: %s", path, body, contentType, w.Code, w.Body)
		}
		var code, msg string
		if path == "/v1/chat/completions" {
			var e struct {
				Error struct {
					Message, Code string
				} `json:"error"`
			}
			if err := json.Unmarshal(w.Body.Bytes(), &e); err != nil {
				t.Fatalf("%s %q: error body %q: %v", path, body, w.Body, err)
			}
			code, msg = e.Error.Code, e.Error.Message
		} else {
			var e ErrorBody
			if err := json.Unmarshal(w.Body.Bytes(), &e); err != nil {
				t.Fatalf("%s %q: error body %q: %v", path, body, w.Body, err)
			}
			code, msg = e.Code, e.Error
		}
		if code == "" || msg == "" || HTTPStatus(code) != w.Code {
			t.Fatalf("%s %q: status %d with code %q (status %d) and message %q", path, body, w.Code, code, HTTPStatus(code), msg)
		}
	})
}
