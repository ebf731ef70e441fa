package infer

import (
	"context"
	"errors"
	"fmt"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"

	"github.com/groundmesh/groundmesh/model"
	"github.com/groundmesh/groundmesh/plugins/compute"
)

// OpenRequest names a checkpoint to serve.
type OpenRequest struct {
	// ModelConfig is the JSON of the run's model.Config.
	ModelConfig []byte
	// TokenizerPath and CheckpointPath are local files the host reads
	// and (the checkpoint) the backend loads.
	TokenizerPath, CheckpointPath string
	// Device is passed to Load; "" is the backend's default.
	Device string
	// Dtype is what the backend holds the weights in (LoadRequest.Dtype,
	// one the backend declares); "" is float32, or a GGUF export's own.
	Dtype string
}

// Session is a checkpoint loaded on a backend, ready to answer.
type Session struct {
	// Generator answers prompts with the loaded weights.
	Generator *model.Generator
	// Config is the model's architecture.
	Config model.Config
	// CanAttention is true when the backend returns attention maps.
	CanAttention bool

	backend compute.Backend
	id      string
}

// Open loads a checkpoint on backend: the config and tokenizer are read
// and checked against what the backend declares before anything loads.
func Open(ctx context.Context, backend compute.Backend, req OpenRequest) (_ *Session, err error) {
	ctx, span := tracer.Start(ctx, "infer.Open")
	defer func() {
		if err != nil {
			span.RecordError(err)
			span.SetStatus(codes.Error, err.Error())
		}
		span.End()
	}()
	span.SetAttributes(attribute.String("checkpoint", req.CheckpointPath))
	if backend == nil {
		return nil, errors.New("open model: no backend")
	}
	mc, err := model.ParseConfig(req.ModelConfig)
	if err != nil {
		return nil, fmt.Errorf("open model: config: %w", err)
	}
	if req.TokenizerPath == "" {
		return nil, errors.New("open model: no tokenizer recorded")
	}
	tok, err := model.LoadTokenizerFile(req.TokenizerPath)
	if err != nil {
		return nil, fmt.Errorf("open model: tokenizer: %w", err)
	}
	desc, err := backend.Describe(ctx)
	if err != nil {
		return nil, fmt.Errorf("describe backend: %w", err)
	}
	if err := mc.Unsupported(desc.Backend, desc.Features); err != nil {
		return nil, fmt.Errorf("open model: %w", err)
	}
	if err := compute.CheckDtype(desc.Backend, req.Dtype, desc.Dtypes); err != nil {
		return nil, fmt.Errorf("open model: %w", err)
	}
	loaded, err := backend.Load(ctx, compute.LoadRequest{ModelConfig: req.ModelConfig, Checkpoint: req.CheckpointPath, Device: req.Device, Dtype: req.Dtype})
	if err != nil {
		return nil, fmt.Errorf("load checkpoint: %w", err)
	}
	gen, err := model.NewGenerator(backend, loaded.Session, tok, mc)
	if err != nil {
		_ = backend.Unload(context.WithoutCancel(ctx), loaded.Session)
		return nil, fmt.Errorf("open model: %w", err)
	}
	return &Session{Generator: gen, Config: mc, CanAttention: desc.CanAttention, backend: backend, id: loaded.Session}, nil
}

// Close unloads the checkpoint.
func (s *Session) Close(ctx context.Context) error {
	if err := s.backend.Unload(ctx, s.id); err != nil {
		return fmt.Errorf("unload session %s: %w", s.id, err)
	}
	return nil
}
