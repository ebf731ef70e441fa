package ground

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"time"

	"github.com/groundmesh/groundmesh/internal/events"
)

// The OpenAI-compatible endpoint: POST /v1/chat/completions with the
// image as an image_url content part (a data URI) and the referring
// expression as the text of the last user message. The assistant's answer
// is the box as the model writes it ("[0.125, 0.406, 0.328, 0.609]"), so a
// stock OpenAI client gets a parsable box; the pixel boxes and the model
// version ride along in the non-standard field "groundmesh".

type chatRequest struct {
	Model    string        `json:"model"`
	Messages []chatMessage `json:"messages"`
	// Accepted and ignored: decoding is greedy under the box grammar.
	Temperature *float64 `json:"temperature,omitempty"`
	TopP        *float64 `json:"top_p,omitempty"`
	MaxTokens   *int     `json:"max_tokens,omitempty"`
	N           *int     `json:"n,omitempty"`
	Stream      bool     `json:"stream,omitempty"`
	User        string   `json:"user,omitempty"`
}

type chatMessage struct {
	Role    string          `json:"role"`
	Content json.RawMessage `json:"content"`
}

type chatPart struct {
	Type     string `json:"type"`
	Text     string `json:"text,omitempty"`
	ImageURL *struct {
		URL    string `json:"url"`
		Detail string `json:"detail,omitempty"`
	} `json:"image_url,omitempty"`
}

type chatResponse struct {
	ID      string       `json:"id"`
	Object  string       `json:"object"`
	Created int64        `json:"created"`
	Model   string       `json:"model"`
	Choices []chatChoice `json:"choices"`
	Usage   chatUsage    `json:"usage"`
	// Groundmesh is the full grounding answer.
	Groundmesh events.GroundCompleted `json:"groundmesh"`
}

type chatChoice struct {
	Index        int               `json:"index"`
	Message      map[string]string `json:"message"`
	FinishReason string            `json:"finish_reason"`
}

type chatUsage struct {
	PromptTokens     int `json:"prompt_tokens"`
	CompletionTokens int `json:"completion_tokens"`
	TotalTokens      int `json:"total_tokens"`
}

// chatModelAlias names the default model in "model"; any other value is a
// checkpoint id, or "<checkpoint>@<format>-<dtype>" for its export.
const chatModelAlias = "groundmesh"

func writeOpenAIError(w http.ResponseWriter, code, msg string) {
	status := HTTPStatus(code)
	if status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="groundmesh"`)
	}
	typ := "invalid_request_error"
	switch {
	case status == http.StatusUnauthorized:
		typ = "authentication_error"
	case status == http.StatusTooManyRequests:
		typ = "rate_limit_error"
	case status >= 500:
		typ = "server_error"
	}
	writeJSON(w, status, map[string]any{"error": map[string]any{"message": msg, "type": typ, "code": code, "param": nil}})
}

func (h *httpAPI) chatCompletions(w http.ResponseWriter, r *http.Request) {
	req, err := h.parseChat(r)
	if err != nil {
		writeOpenAIError(w, CodeOf(err), err.Error())
		return
	}
	ev, err := h.chatRequest(req)
	if err != nil {
		writeOpenAIError(w, CodeOf(err), err.Error())
		return
	}
	if err := h.cfg.Limits.CheckRequest(ev); err != nil {
		writeOpenAIError(w, CodeOf(err), err.Error())
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), h.cfg.Timeout)
	defer cancel()
	res, err := h.g.Ground(ctx, ev)
	if err != nil {
		writeOpenAIError(w, CodeOf(err), err.Error())
		return
	}
	writeJSON(w, http.StatusOK, chatResponse{
		ID: "chatcmpl-" + res.CorrelationID, Object: "chat.completion", Created: time.Now().Unix(), Model: res.ModelVersion,
		Choices:    []chatChoice{{Index: 0, Message: map[string]string{"role": "assistant", "content": res.Text}, FinishReason: "stop"}},
		Groundmesh: res,
	})
}

func (h *httpAPI) parseChat(r *http.Request) (chatRequest, error) {
	var req chatRequest
	body, err := h.readBody(r)
	if err != nil {
		return req, err
	}
	if err := json.Unmarshal(body, &req); err != nil {
		return req, newError(CodeBadRequest, "request body: %v", err)
	}
	return req, nil
}

// chatRequest turns the last user message into a grounding request.
func (h *httpAPI) chatRequest(req chatRequest) (events.GroundRequested, error) {
	var ev events.GroundRequested
	if req.Stream {
		return ev, newError(CodeBadRequest, "stream: true is not supported; the answer is one box")
	}
	if req.N != nil && *req.N != 1 {
		return ev, newError(CodeBadRequest, "n is %d; only 1 is supported", *req.N)
	}
	if req.Model != "" && req.Model != chatModelAlias {
		ev.CheckpointID = req.Model
		if _, err := ParseModel(req.Model); err != nil {
			return ev, err
		}
	}
	var last *chatMessage
	for i := range req.Messages {
		if req.Messages[i].Role == "user" {
			last = &req.Messages[i]
		}
	}
	if last == nil {
		return ev, newError(CodeBadRequest, "messages: no user message; send one with the image as an image_url part and the expression as text")
	}
	var text string
	if err := json.Unmarshal(last.Content, &text); err == nil {
		return ev, newError(CodeBadRequest, "messages: the user message has no image; send content as parts: {\"type\": \"image_url\", \"image_url\": {\"url\": \"data:image/png;base64,...\"}} and {\"type\": \"text\", \"text\": \"the red square\"}")
	}
	var parts []chatPart
	if err := json.Unmarshal(last.Content, &parts); err != nil {
		return ev, newError(CodeBadRequest, "messages: user content must be a string or a list of parts: %v", err)
	}
	var texts []string
	images := 0
	for i, p := range parts {
		switch p.Type {
		case "text":
			texts = append(texts, p.Text)
		case "image_url":
			if p.ImageURL == nil || p.ImageURL.URL == "" {
				return ev, newError(CodeBadRequest, "messages: content part %d: image_url without url", i)
			}
			images++
			b, err := h.dataURI(p.ImageURL.URL)
			if err != nil {
				return ev, err
			}
			ev.Image = b
		default:
			return ev, newError(CodeBadRequest, "messages: content part %d: type %q (want text or image_url)", i, p.Type)
		}
	}
	if images != 1 {
		return ev, newError(CodeBadRequest, "messages: the user message has %d images; send exactly one", images)
	}
	ev.Expression = strings.Join(texts, " ")
	if strings.TrimSpace(ev.Expression) == "" {
		return ev, newError(CodeBadExpression, "no expression: put what to find in a text part of the user message")
	}
	return ev, nil
}
