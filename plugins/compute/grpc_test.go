package compute_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"reflect"
	"strings"
	"testing"

	"github.com/hashicorp/go-plugin"

	"github.com/groundmesh/groundmesh/plugins/compute"
	"github.com/groundmesh/groundmesh/plugins/compute/computetest"
)

// dispense serves impl over an in-process go-plugin gRPC connection and
// returns the host side.
func dispense(t *testing.T, impl compute.Backend) compute.Backend {
	t.Helper()
	client, _ := plugin.TestPluginGRPCConn(t, false, map[string]plugin.Plugin{
		compute.PluginName: &compute.GRPCPlugin{Impl: impl},
	})
	// Close asks the server to stop (go-plugin's controller); stopping it
	// here as well would race inside go-plugin.
	t.Cleanup(func() { client.Close() })
	raw, err := client.Dispense(compute.PluginName)
	if err != nil {
		t.Fatal(err)
	}
	b, ok := raw.(compute.Backend)
	if !ok {
		t.Fatalf("dispensed %T", raw)
	}
	return b
}

// The whole contract survives the gRPC round trip.
func TestGRPCConformance(t *testing.T) {
	computetest.RunConformance(t, computetest.Harness{
		New: func(t *testing.T) compute.Backend {
			return dispense(t, computetest.NewToy(computetest.ToyOptions{}))
		},
	})
}

// failing returns err from every method.
type failing struct{ err error }

func (f failing) Describe(context.Context) (compute.Description, error) {
	return compute.Description{}, f.err
}
func (f failing) Train(context.Context, compute.TrainRequest, func(compute.TrainProgress) error) (compute.TrainResult, error) {
	return compute.TrainResult{}, f.err
}
func (f failing) Load(context.Context, compute.LoadRequest) (compute.LoadResult, error) {
	return compute.LoadResult{}, f.err
}
func (f failing) Prefill(context.Context, compute.PrefillRequest) (compute.ForwardResult, error) {
	return compute.ForwardResult{}, f.err
}
func (f failing) Decode(context.Context, compute.DecodeRequest) (compute.ForwardResult, error) {
	return compute.ForwardResult{}, f.err
}
func (f failing) Generate(context.Context, compute.GenerateRequest) (compute.GenerateResult, error) {
	return compute.GenerateResult{}, f.err
}
func (f failing) ReleaseCache(context.Context, string, string) error { return f.err }
func (f failing) Unload(context.Context, string) error               { return f.err }

func TestGRPCErrorMapping(t *testing.T) {
	cases := []struct {
		err  error
		want error
	}{
		{fmt.Errorf("steps 0: %w", compute.ErrInvalidArgument), compute.ErrInvalidArgument},
		{fmt.Errorf("session s9: %w", compute.ErrNotFound), compute.ErrNotFound},
		{fmt.Errorf("open ckpt: %w", os.ErrNotExist), compute.ErrNotFound},
		{fmt.Errorf("cache full: %w", compute.ErrFailedPrecondition), compute.ErrFailedPrecondition},
		{fmt.Errorf("no training here: %w", compute.ErrUnimplemented), compute.ErrUnimplemented},
		{fmt.Errorf("cuda oom: %w", compute.ErrResourceExhausted), compute.ErrResourceExhausted},
		{fmt.Errorf("stopped: %w", context.Canceled), context.Canceled},
	}
	for _, c := range cases {
		b := dispense(t, failing{c.err})
		ctx := context.Background()
		calls := map[string]error{}
		_, calls["describe"] = b.Describe(ctx)
		_, calls["train"] = b.Train(ctx, compute.TrainRequest{}, nil)
		_, calls["load"] = b.Load(ctx, compute.LoadRequest{})
		_, calls["prefill"] = b.Prefill(ctx, compute.PrefillRequest{})
		_, calls["decode"] = b.Decode(ctx, compute.DecodeRequest{})
		_, calls["generate"] = b.Generate(ctx, compute.GenerateRequest{})
		calls["release"] = b.ReleaseCache(ctx, "s", "c")
		calls["unload"] = b.Unload(ctx, "s")
		for op, err := range calls {
			if !errors.Is(err, c.want) {
				t.Errorf("%s returning %q: got %v; want an error wrapping %v", op, c.err, err, c.want)
				continue
			}
			if !strings.Contains(err.Error(), c.err.Error()) {
				t.Errorf("%s: message %q lost the plugin's %q", op, err, c.err)
			}
		}
	}
	// An error of no known class stays an error of no known class.
	b := dispense(t, failing{errors.New("something odd")})
	_, err := b.Describe(context.Background())
	if err == nil || !strings.Contains(err.Error(), "something odd") {
		t.Fatalf("unknown error: %v", err)
	}
	for _, s := range []error{compute.ErrInvalidArgument, compute.ErrNotFound, compute.ErrPluginCrashed} {
		if errors.Is(err, s) {
			t.Errorf("unknown error %v maps to %v", err, s)
		}
	}
}

// Large images and logits cross the connection packed, unchanged.
func TestGRPCRoundTripValues(t *testing.T) {
	b := dispense(t, echo{})
	img := compute.Image{Size: 2, Pixels: []float32{0, -1.5, 3.25, 1e-7, 7, 8, 9, 10, 11, 12, 13, -0}}
	r, err := b.Prefill(context.Background(), compute.PrefillRequest{
		Session: "s", Batch: []compute.Sequence{{Tokens: []int32{1, 2, 3}, Images: []compute.Image{img}}}, WantAttention: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	if r.CacheID != "s/3" || len(r.Logits) != 1 || len(r.Logits[0]) != len(img.Pixels) {
		t.Fatalf("got %+v", r)
	}
	for i, v := range img.Pixels {
		if r.Logits[0][i] != v {
			t.Errorf("value %d: %v, want %v", i, r.Logits[0][i], v)
		}
	}
	if len(r.Attention) != 1 || r.Attention[0][0] != 3 {
		t.Errorf("attention %v", r.Attention)
	}
	if want := []compute.HeadBox{{Box: [4]float32{0.125, 0.25, 0.5, 0.75}, Score: 0.5, OK: true}}; !reflect.DeepEqual(r.HeadBoxes, want) {
		t.Errorf("head boxes %+v, want %+v", r.HeadBoxes, want)
	}
	r, err = b.Decode(context.Background(), compute.DecodeRequest{Session: "s", CacheID: "c", Tokens: []int32{4}})
	if err != nil {
		t.Fatal(err)
	}
	if r.Attention != nil {
		t.Errorf("attention %v without WantAttention", r.Attention)
	}
	g, err := b.Generate(context.Background(), compute.GenerateRequest{Session: "s", Batch: []compute.Sequence{{Tokens: []int32{1}}, {Tokens: []int32{2}}}})
	if err != nil {
		t.Fatal(err)
	}
	want := []compute.GeneratedAnswer{
		{Tokens: []int32{1}, Finish: "eos", Head: compute.HeadBox{Box: [4]float32{0.125, 0.25, 0.5, 0.75}, Score: 0.5, Exists: 0.875, OK: true}},
		{Tokens: []int32{2}, Finish: "length"},
	}
	if !reflect.DeepEqual(g.Answers, want) {
		t.Errorf("generate answers %+v, want %+v (the head's answer travels with the first, none with the second)", g.Answers, want)
	}
}

// echo returns its first image's pixels as logits.
type echo struct{ failing }

func (echo) Prefill(_ context.Context, req compute.PrefillRequest) (compute.ForwardResult, error) {
	s := req.Batch[0]
	out := compute.ForwardResult{CacheID: fmt.Sprintf("%s/%d", req.Session, len(s.Tokens)), Logits: [][]float32{s.Images[0].Pixels},
		HeadBoxes: []compute.HeadBox{{Box: [4]float32{0.125, 0.25, 0.5, 0.75}, Score: 0.5, OK: true}}}
	if req.WantAttention {
		out.Attention = [][]float32{{float32(len(s.Tokens))}}
	}
	return out, nil
}

// Generate answers each sequence with its tokens; the first carries a head
// box, the second none.
func (echo) Generate(_ context.Context, req compute.GenerateRequest) (compute.GenerateResult, error) {
	var out compute.GenerateResult
	for i, s := range req.Batch {
		a := compute.GeneratedAnswer{Tokens: s.Tokens, Finish: "length"}
		if i == 0 {
			a.Finish, a.Head = "eos", compute.HeadBox{Box: [4]float32{0.125, 0.25, 0.5, 0.75}, Score: 0.5, Exists: 0.875, OK: true}
		}
		out.Answers = append(out.Answers, a)
	}
	return out, nil
}

func (echo) Decode(_ context.Context, req compute.DecodeRequest) (compute.ForwardResult, error) {
	return compute.ForwardResult{CacheID: req.CacheID, Logits: [][]float32{{1}}}, nil
}
