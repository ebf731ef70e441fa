package events

import (
	"fmt"
	"regexp"
)

// DefaultQueue is the command queue of a request that names none: its
// command goes to "<svc>.requested", as before queues existed.
const DefaultQueue = "default"

// queuePattern is what a queue name may be: it becomes part of a topic,
// a NATS stream and subject, and a consumer group, so no dots; and of the
// Postgres bus's table names, which Postgres cuts at 63 bytes:
// "watermill_offsets_ingest.requested." leaves 28.
var queuePattern = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,27}$`)

// ValidQueue reports why q is not a queue name ("" and DefaultQueue are).
func ValidQueue(q string) error {
	if q == "" || q == DefaultQueue || queuePattern.MatchString(q) {
		return nil
	}
	return fmt.Errorf("queue %q: want lower-case letters, digits, '-' or '_', at most 28, starting with a letter or digit", q)
}

// CommandTopic is the topic a command for service goes to on queue: a
// queue is a capability ("train-cuda", "synth"), and only the workers
// started with that queue consume its topics. The default queue ("" or
// DefaultQueue) is "<service>.requested"; any other is
// "<service>.requested.<queue>".
func CommandTopic(service, queue string) string {
	if queue == "" || queue == DefaultQueue {
		return service + ".requested"
	}
	return service + ".requested." + queue
}
