package workflows

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/mock"
	"go.temporal.io/sdk/activity"
	tlog "go.temporal.io/sdk/log"
	"go.temporal.io/sdk/testsuite"

	"github.com/groundmesh/groundmesh/internal/events"
	"github.com/groundmesh/groundmesh/internal/testutil"
)

// The input's queues reach each stage's command; a stage without one
// goes to the default queue (an empty Queue, as before queues existed).
func TestPipelineRoutesStagesToTheirQueues(t *testing.T) {
	env := newEnv(t)
	var asked []CommandInput
	env.OnActivity((&Activities{}).Command, mock.Anything, mock.Anything).Return(fakeServices(&asked))
	var in PipelineInput
	if err := json.Unmarshal([]byte(`{"queues": {"synth": "synth", "train": "train-cuda", "eval": "default"}}`), &in); err != nil {
		t.Fatal(err)
	}
	env.ExecuteWorkflow(Pipeline, in)
	if err := env.GetWorkflowError(); err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, c := range asked {
		got[c.Service] = c.Queue
	}
	want := map[string]string{"ingest": "", "synth": "synth", "train": "train-cuda", "eval": "default"}
	for svc, q := range want {
		if got[svc] != q {
			t.Errorf("%s command on queue %q, want %q (all: %v)", svc, got[svc], q, got)
		}
	}
}

func TestPipelineInputRejectsBadQueues(t *testing.T) {
	for input, want := range map[string]string{
		`{"queues": {"deploy": "x"}}`:          `queues["deploy"]: want a stage`,
		`{"queues": {"train": "GPU.0"}}`:       `queues["train"]: queue "GPU.0": want lower-case`,
		`{"queues": {"train": "-cuda"}}`:       `queues["train"]: queue "-cuda"`,
		`{"queues": {"synth": "a b", "x": 1}}`: `pipeline input`,
	} {
		var in PipelineInput
		if err := json.Unmarshal([]byte(input), &in); err != nil {
			t.Fatal(err)
		}
		err := in.WithDefaults().Validate()
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want an error with %q", input, err, want)
		}
	}
}

type recordingPub struct {
	mu     sync.Mutex
	topics []string
}

func (p *recordingPub) Publish(_ context.Context, topic string, _ any, _ map[string]string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.topics = append(p.topics, topic)
	return nil
}

type fixedDirectory struct {
	ids   []string
	asked []string
}

func (d *fixedDirectory) Serving(_ context.Context, service, queue string) ([]string, error) {
	d.asked = append(d.asked, service+"@"+queue)
	return d.ids, nil
}

// The Command activity publishes to the queue's topic, and asks the
// worker directory who serves it: with nobody, it still publishes (a
// worker may start later) and says so.
func TestCommandPublishesToTheQueueTopic(t *testing.T) {
	for _, c := range []struct {
		queue, topic string
		ids          []string
	}{
		{"", "train.requested", []string{"w1"}},
		{"default", "train.requested", []string{"w1"}},
		{"train-cuda", "train.requested.train-cuda", nil},
	} {
		var s testsuite.WorkflowTestSuite
		var logs testutil.SyncBuffer
		s.SetLogger(tlog.NewStructuredLogger(slog.New(slog.NewTextHandler(&logs, nil))))
		env := s.NewTestActivityEnvironment()
		pub, dir := &recordingPub{}, &fixedDirectory{ids: c.ids}
		env.RegisterActivity(&Activities{Pub: pub, Tokens: &memTokens{m: map[string]Pending{}, done: map[string]bool{}}, Workers: dir})
		_, err := env.ExecuteActivity(CommandActivityName, CommandInput{Service: "train", Queue: c.queue, Payload: json.RawMessage(`{"run_id": "r"}`)})
		if !errors.Is(err, activity.ErrResultPending) {
			t.Errorf("queue %q: activity returned %v, want it pending", c.queue, err)
		}
		warned := strings.Contains(logs.String(), "no live worker serves train on queue")
		if warned != (len(c.ids) == 0) {
			t.Errorf("queue %q with workers %v: warned %v; log:\n%s", c.queue, c.ids, warned, logs.String())
		}
		if len(pub.topics) != 1 || pub.topics[0] != c.topic {
			t.Errorf("queue %q: published to %v, want %s", c.queue, pub.topics, c.topic)
		}
		wantAsked := "train@" + c.queue
		if c.queue == "" {
			wantAsked = "train@" + events.DefaultQueue
		}
		if len(dir.asked) != 1 || dir.asked[0] != wantAsked {
			t.Errorf("queue %q: directory asked %v, want %s", c.queue, dir.asked, wantAsked)
		}
	}
	var s testsuite.WorkflowTestSuite
	env := s.NewTestActivityEnvironment()
	env.RegisterActivity(&Activities{Pub: &recordingPub{}, Tokens: &memTokens{m: map[string]Pending{}, done: map[string]bool{}}})
	_, err := env.ExecuteActivity(CommandActivityName, CommandInput{Service: "train", Queue: "Bad.Queue", Payload: json.RawMessage(`{}`)})
	if err == nil || !strings.Contains(err.Error(), `queue "Bad.Queue"`) {
		t.Errorf("a bad queue: %v, want an error naming it", err)
	}
}
