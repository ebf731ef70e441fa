package testutil

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// PurgeNATS empties the JetStream streams of topics on this machine's NATS
// server (internal/bus names a topic's stream gm_<topic, '.' as '_'>). A
// new consumer group reads a stream from its start, so a test that makes
// one purges what earlier runs left first.
func PurgeNATS(tb testing.TB, topics ...string) {
	tb.Helper()
	nc, err := nats.Connect(nats.DefaultURL)
	if err != nil {
		tb.Fatalf("connect to NATS at %s: %v", nats.DefaultURL, err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		tb.Fatal(err)
	}
	for _, topic := range topics {
		s, err := js.Stream(context.Background(), "gm_"+strings.ReplaceAll(topic, ".", "_"))
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			continue
		}
		if err != nil {
			tb.Fatal(err)
		}
		if err := s.Purge(context.Background()); err != nil {
			tb.Fatal(err)
		}
	}
}
