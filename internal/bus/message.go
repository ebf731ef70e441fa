package bus

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"
	"go.opentelemetry.io/otel/propagation"

	"github.com/groundmesh/groundmesh/internal/events"
)

// DefaultPropagator writes and reads W3C trace context (traceparent,
// tracestate) and baggage in message metadata. It does not depend on the
// process-wide propagator, which is a no-op unless telemetry set one.
var DefaultPropagator propagation.TextMapPropagator = propagation.NewCompositeTextMapPropagator(
	propagation.TraceContext{}, propagation.Baggage{})

// NewMessage builds the message Publish sends: payload marshalled to JSON
// (a []byte or json.RawMessage payload is taken as already encoded), a new
// UUID, and metadata holding meta plus schema_version, event_type (= topic),
// correlation_id (meta's, else the payload's "correlation_id" field, else
// the one in ctx) and the trace context of ctx (traceparent). The outbox uses
// it too, so that both paths write the same metadata.
func NewMessage(ctx context.Context, topic string, payload any, meta map[string]string) (*message.Message, error) {
	if topic == "" {
		return nil, fmt.Errorf("build message: empty topic")
	}
	var body []byte
	switch p := payload.(type) {
	case json.RawMessage:
		body = p
	case []byte:
		body = p
	default:
		b, err := json.Marshal(payload)
		if err != nil {
			return nil, fmt.Errorf("build %s message: marshal payload: %w", topic, err)
		}
		body = b
	}
	msg := message.NewMessage(uuid.NewString(), body)
	for k, v := range meta {
		msg.Metadata.Set(k, v)
	}
	if msg.Metadata.Get(events.MetaSchemaVersion) == "" {
		msg.Metadata.Set(events.MetaSchemaVersion, events.SchemaVersion)
	}
	msg.Metadata.Set(events.MetaEventType, topic)
	if msg.Metadata.Get(events.MetaPublishedAt) == "" {
		msg.Metadata.Set(events.MetaPublishedAt, time.Now().UTC().Format(time.RFC3339Nano))
	}
	if msg.Metadata.Get(events.MetaCorrelationID) == "" {
		if id := payloadCorrelationID(body); id != "" {
			msg.Metadata.Set(events.MetaCorrelationID, id)
		} else if id := CorrelationID(ctx); id != "" {
			msg.Metadata.Set(events.MetaCorrelationID, id)
		}
	}
	DefaultPropagator.Inject(ctx, propagation.MapCarrier(msg.Metadata))
	return msg, nil
}

// payloadCorrelationID reads a top-level "correlation_id" string field.
func payloadCorrelationID(body []byte) string {
	var v struct {
		CorrelationID string `json:"correlation_id"`
	}
	if json.Unmarshal(body, &v) != nil {
		return ""
	}
	return v.CorrelationID
}
