package ground

import "github.com/prometheus/client_golang/prometheus"

// metrics are the service's Prometheus metrics, in a registry of its own
// so that tests and several services in one process do not collide.
type metrics struct {
	reg       *prometheus.Registry
	requests  *prometheus.CounterVec
	latency   prometheus.Histogram
	batchSize prometheus.Histogram
	queueWait prometheus.Histogram
	calls     prometheus.Counter
}

func newMetrics(queued func() float64) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "groundmesh_ground_requests_total",
			Help: "Grounding requests answered, by outcome: ok or the reason code.",
		}, []string{"code"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "groundmesh_ground_request_seconds",
			Help:    "Time services/ground spent on a request, from receiving it to its answer.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 15),
		}),
		batchSize: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "groundmesh_ground_batch_size",
			Help:    "Requests answered by one plugin Generate call.",
			Buckets: []float64{1, 2, 4, 8, 16, 32, 64},
		}),
		queueWait: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "groundmesh_ground_queue_wait_seconds",
			Help:    "Time a request waited in its model's queue before its batch started.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 15),
		}),
		calls: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "groundmesh_ground_generate_calls_total",
			Help: "Plugin Generate calls made.",
		}),
	}
	m.reg.MustRegister(m.requests, m.latency, m.batchSize, m.queueWait, m.calls,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "groundmesh_ground_queued_requests",
			Help: "Requests waiting for a batch, over every loaded model.",
		}, queued))
	return m
}

// Gatherer reads the service's metrics, for a /metrics that serves them
// with others (the gateway's).
func (s *Service) Gatherer() prometheus.Gatherer { return s.metrics.reg }
