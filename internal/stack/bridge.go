package stack

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/groundmesh/groundmesh/internal/bus"
	"github.com/groundmesh/groundmesh/internal/events"
	"github.com/groundmesh/groundmesh/workflows"
)

// registerBridge consumes every service's answers for the workflow bridge.
// Handler names are consumer groups: keep them stable.
func registerBridge(b *bus.Bus, br *workflows.Bridge) error {
	for _, svc := range workflows.CommandServices {
		if err := b.Handle("bridge-progress-"+svc, svc+".progress", bus.Typed(func(ctx context.Context, p events.Progress, msg *message.Message) error {
			// The worker travels in metadata, so that a bridge older than
			// the field still decodes the payload.
			p.Worker = msg.Metadata.Get(events.MetaWorker)
			return br.HandleProgress(ctx, p)
		})); err != nil {
			return fmt.Errorf("register bridge: %w", err)
		}
		if err := b.Handle("bridge-completed-"+svc, svc+".completed", func(ctx context.Context, msg *message.Message) error {
			if !json.Valid(msg.Payload) {
				return bus.Permanent(fmt.Errorf("%s.completed: payload is not JSON", svc))
			}
			return br.HandleCompleted(ctx, json.RawMessage(msg.Payload))
		}); err != nil {
			return fmt.Errorf("register bridge: %w", err)
		}
		if err := b.Handle("bridge-failed-"+svc, svc+".failed", bus.Typed(func(ctx context.Context, f events.Failed, msg *message.Message) error {
			f.Worker = msg.Metadata.Get(events.MetaWorker)
			return br.HandleFailed(ctx, f)
		})); err != nil {
			return fmt.Errorf("register bridge: %w", err)
		}
	}
	return nil
}
