package stack

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/uuid"
	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.temporal.io/sdk/client"

	"github.com/groundmesh/groundmesh/services/ground"
	"github.com/groundmesh/groundmesh/workflows"
)

// newGateway is the HTTP gateway: start and inspect pipelines, read
// reports, ask for grounding (/v1/, bearer tokens), health and readiness.
// Every request carries a server span (otelhttp) that the Temporal
// interceptor continues into the workflow and the bus into services/ground.
// healthz answers "ok" while Postgres answers a ping, 503 otherwise.
func (s *Stack) healthz(w http.ResponseWriter, r *http.Request) {
	if err := s.Pool.Ping(r.Context()); err != nil {
		http.Error(w, "postgres: "+err.Error(), http.StatusServiceUnavailable)
		return
	}
	fmt.Fprintln(w, "ok")
}

func newGateway(s *Stack) (http.Handler, error) {
	mux := http.NewServeMux()
	api, err := ground.NewHTTPHandler(ground.HTTPConfig{
		Tokens: s.cfg.Ground.APITokens, TokenHelp: s.cfg.Ground.TokenHelp,
		Limits: s.Services.Ground.Limits(), Timeout: s.cfg.Ground.Timeout,
		Promoter: s.Services.Ground,
	}, s.groundClient)
	if err != nil {
		return nil, fmt.Errorf("grounding API: %w", err)
	}
	mux.Handle("/v1/", api)
	mux.Handle("GET /metrics", s.metricsHandler())
	mux.Handle("GET /ground", ground.PageHandler())
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
		defer cancel()
		out := map[string]string{"postgres": "ok", "bus": s.Bus.Kind()}
		status := http.StatusOK
		if err := s.Pool.Ping(ctx); err != nil {
			out["postgres"], status = err.Error(), http.StatusServiceUnavailable
		}
		select {
		case <-s.Bus.Running():
		default:
			out["bus"], status = "not running", http.StatusServiceUnavailable
		}
		// No trained model yet is not a failure of the gateway: the
		// grounding API answers no_model until a pipeline has trained one.
		if m, err := s.Services.Ground.Model(ctx); err == nil {
			out["model"] = m.Version()
		} else {
			out["model"] = "none (" + err.Error() + ")"
		}
		writeJSON(w, status, out)
	})
	mux.HandleFunc("GET /healthz", s.healthz)
	mux.HandleFunc("POST /api/pipelines", func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		if err != nil {
			http.Error(w, "read body: "+err.Error(), http.StatusBadRequest)
			return
		}
		if len(strings.TrimSpace(string(body))) == 0 {
			body = []byte("{}")
		}
		var in workflows.PipelineInput
		if err := json.Unmarshal(body, &in); err != nil {
			http.Error(w, "pipeline input: "+err.Error(), http.StatusBadRequest)
			return
		}
		// Validate here too so a bad request is a 400 with the field named,
		// not a failed workflow.
		if err := in.WithDefaults().Validate(); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		id := "pipeline-" + time.Now().UTC().Format("20060102-150405") + "-" + uuid.NewString()[:8]
		run, err := s.Temporal.ExecuteWorkflow(r.Context(), client.StartWorkflowOptions{ID: id, TaskQueue: workflows.TaskQueue}, workflows.PipelineWorkflowName, json.RawMessage(body))
		if err != nil {
			http.Error(w, "start pipeline: "+err.Error(), http.StatusBadGateway)
			return
		}
		writeJSON(w, http.StatusAccepted, map[string]string{"workflow_id": run.GetID(), "run_id": run.GetRunID()})
	})
	mux.HandleFunc("GET /api/pipelines/{id}", func(w http.ResponseWriter, r *http.Request) {
		id := r.PathValue("id")
		desc, err := s.Temporal.DescribeWorkflowExecution(r.Context(), id, "")
		if err != nil {
			http.Error(w, "describe: "+err.Error(), http.StatusNotFound)
			return
		}
		out := map[string]any{"workflow_id": id, "status": desc.GetWorkflowExecutionInfo().GetStatus().String()}
		if desc.GetWorkflowExecutionInfo().GetCloseTime() != nil {
			var res workflows.PipelineResult
			if err := s.Temporal.GetWorkflow(r.Context(), id, "").Get(r.Context(), &res); err != nil {
				out["error"] = err.Error()
			} else {
				out["result"] = res
			}
		}
		writeJSON(w, http.StatusOK, out)
	})
	mux.HandleFunc("GET /reports/{run}/{file}", func(w http.ResponseWriter, r *http.Request) {
		run, name := r.PathValue("run"), r.PathValue("file")
		for _, part := range []string{run, name} {
			if strings.ContainsAny(part, `/\`) || strings.Contains(part, "..") {
				http.Error(w, "bad report name", http.StatusBadRequest)
				return
			}
		}
		p, err := s.Blob.LocalPath("reports/" + run + "/" + name)
		if errors.Is(err, fs.ErrNotExist) {
			http.NotFound(w, r)
			return
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		http.ServeFile(w, r, filepath.Clean(p))
	})
	return otelhttp.NewHandler(mux, "gateway", otelhttp.WithSpanNameFormatter(func(_ string, r *http.Request) string {
		return r.Method + " " + r.URL.Path
	})), nil
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v) // the status line is out; a write error has nowhere to go
}
