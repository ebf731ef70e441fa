package compute

import (
	"context"
	"errors"
	"fmt"
	"io"

	"google.golang.org/grpc"

	"github.com/groundmesh/groundmesh/plugins/compute/proto/computev1"
)

// grpcClient is the host side of protocol v1: a Backend that calls a plugin
// over gRPC and turns status codes back into this package's sentinels.
type grpcClient struct {
	client computev1.ComputeClient
}

var _ Backend = (*grpcClient)(nil)

func newGRPCClient(conn grpc.ClientConnInterface) *grpcClient {
	return &grpcClient{client: computev1.NewComputeClient(conn)}
}

func (c *grpcClient) Describe(ctx context.Context) (Description, error) {
	r, err := c.client.Describe(ctx, &computev1.DescribeRequest{})
	if err != nil {
		return Description{}, fromStatus("describe", err)
	}
	return describeFromPB(r), nil
}

func (c *grpcClient) Train(ctx context.Context, req TrainRequest, progress func(TrainProgress) error) (TrainResult, error) {
	// A progress error must stop the plugin's training: cancelling the
	// stream's context cancels the server side's context.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := c.client.Train(ctx, trainRequestToPB(req))
	if err != nil {
		return TrainResult{}, fromStatus("train", err)
	}
	var (
		result    TrainResult
		gotResult bool
	)
	for {
		ev, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return TrainResult{}, fromStatus("train", err)
		}
		switch e := ev.GetEvent().(type) {
		case *computev1.TrainEvent_Progress:
			if progress == nil {
				continue
			}
			if err := progress(progressFromPB(e.Progress)); err != nil {
				cancel()
				return TrainResult{}, fmt.Errorf("compute train: progress: %w", err)
			}
		case *computev1.TrainEvent_Result:
			result, gotResult = resultFromPB(e.Result), true
		}
	}
	if !gotResult {
		return TrainResult{}, fmt.Errorf("compute train: stream ended without a result")
	}
	return result, nil
}

func (c *grpcClient) Load(ctx context.Context, req LoadRequest) (LoadResult, error) {
	r, err := c.client.Load(ctx, &computev1.LoadRequest{
		ModelConfig: req.ModelConfig, Checkpoint: req.Checkpoint, Device: req.Device, Dtype: req.Dtype,
	})
	if err != nil {
		return LoadResult{}, fromStatus("load", err)
	}
	return LoadResult{Session: r.GetSession()}, nil
}

func (c *grpcClient) Prefill(ctx context.Context, req PrefillRequest) (ForwardResult, error) {
	r, err := c.client.Prefill(ctx, &computev1.PrefillRequest{
		Session: req.Session, Batch: sequencesToPB(req.Batch), WantAttention: req.WantAttention, HeadOnly: req.HeadOnly,
	})
	if err != nil {
		return ForwardResult{}, fromStatus("prefill", err)
	}
	out, err := forwardFromPB(r)
	if err != nil {
		return ForwardResult{}, fmt.Errorf("compute prefill: decode response: %w", err)
	}
	return out, nil
}

func (c *grpcClient) Decode(ctx context.Context, req DecodeRequest) (ForwardResult, error) {
	r, err := c.client.Decode(ctx, &computev1.DecodeRequest{
		Session: req.Session, CacheId: req.CacheID, Tokens: req.Tokens, WantAttention: req.WantAttention,
	})
	if err != nil {
		return ForwardResult{}, fromStatus("decode", err)
	}
	out, err := forwardFromPB(r)
	if err != nil {
		return ForwardResult{}, fmt.Errorf("compute decode: decode response: %w", err)
	}
	return out, nil
}

func (c *grpcClient) ReleaseCache(ctx context.Context, session, cacheID string) error {
	_, err := c.client.ReleaseCache(ctx, &computev1.ReleaseCacheRequest{Session: session, CacheId: cacheID})
	return fromStatus("release cache", err)
}

func (c *grpcClient) Unload(ctx context.Context, session string) error {
	_, err := c.client.Unload(ctx, &computev1.UnloadRequest{Session: session})
	return fromStatus("unload", err)
}

func (c *grpcClient) Generate(ctx context.Context, req GenerateRequest) (GenerateResult, error) {
	r, err := c.client.Generate(ctx, generateRequestToPB(req))
	if err != nil {
		return GenerateResult{}, fromStatus("generate", err)
	}
	out, err := generateResultFromPB(r)
	if err != nil {
		return GenerateResult{}, fmt.Errorf("compute generate: decode response: %w", err)
	}
	return out, nil
}
