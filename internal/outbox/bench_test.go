package outbox_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/groundmesh/groundmesh/internal/bus"
	"github.com/groundmesh/groundmesh/internal/outbox"
)

type discard struct{}

func (discard) Publish(string, ...*message.Message) error { return nil }

// BenchmarkOutboxRelay measures how fast the relay drains committed outbox
// rows: to a publisher that drops them (the relay's own cost) and to the
// Postgres bus (watermill-sql, one INSERT per topic run of a batch).
func BenchmarkOutboxRelay(b *testing.B) {
	for _, batch := range []int{100, 500} {
		for _, target := range []string{"discard", "postgres-bus"} {
			b.Run(fmt.Sprintf("to=%s/batch=%d", target, batch), func(b *testing.B) {
				ctx := context.Background()
				pool := testPool(b)
				var pub outbox.Publisher = discard{}
				if target == "postgres-bus" {
					bs, err := bus.New(ctx, bus.Config{}, pool)
					if err != nil {
						b.Fatal(err)
					}
					defer bs.Close()
					pub = bs.Publisher()
				}
				relay, err := outbox.NewRelay(outbox.RelayConfig{BatchSize: batch}, pool, pub)
				if err != nil {
					b.Fatal(err)
				}
				// Rows as Add writes them, inserted in bulk outside the timer.
				if _, err := pool.Exec(ctx, `
					INSERT INTO outbox (topic, payload, metadata)
					SELECT CASE WHEN i % 10 = 0 THEN 'train.progress' ELSE 'checkpoint.saved' END,
						jsonb_build_object('checkpoint_id', gen_random_uuid(), 'run_id', 'r1', 'stage', 'stage2',
							'step', i, 'loss', 0.5, 'blob_key', 'ckpt/' || i, 'sha256', md5(i::text)),
						jsonb_build_object('schema_version', '1', 'event_type', 'checkpoint.saved',
							'traceparent', '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01')
					FROM generate_series(1, $1) AS i`, b.N); err != nil {
					b.Fatal(err)
				}
				b.ResetTimer()
				start := time.Now()
				n, err := relay.Flush(ctx)
				elapsed := time.Since(start)
				b.StopTimer()
				if err != nil {
					b.Fatal(err)
				}
				if n != b.N {
					b.Fatalf("relayed %d of %d", n, b.N)
				}
				b.ReportMetric(float64(n)/elapsed.Seconds(), "msgs/s")
			})
		}
	}
}
