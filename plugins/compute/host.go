package compute

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
)

// HostConfig configures a Host.
type HostConfig struct {
	// Path is the plugin binary (e.g. groundmesh-gomlx). Required.
	Path string
	// Args are the plugin's command-line arguments.
	Args []string
	// Env is added to the environment the plugin inherits from the host;
	// entries here win over the host's.
	Env []string
	// StartTimeout bounds starting the plugin and its handshake. Default 30s.
	StartTimeout time.Duration
	// MaxRestarts is how many times in a row the host restarts a crashed
	// plugin before it gives up; a successful call resets the count.
	// Default 3; negative means never restart.
	MaxRestarts int
	// StderrLines is how many of the plugin's last stderr lines are kept for
	// crash reports. Default 64.
	StderrLines int
	// Logger receives the host's and the plugin's log lines. Default: discard.
	Logger *slog.Logger
	// SHA256 pins the plugin binary: go-plugin checks the file's sha256
	// (hex) before every start and refuses a binary that does not match.
	// Empty: the first word of "<Path>.sha256" when that file exists (make
	// plugins writes it), else no check.
	SHA256 string
}

// ErrChecksum is wrapped by starts refused because the plugin binary does
// not match its pinned sha256.
var ErrChecksum = errors.New("plugin binary does not match its sha256")

func (c *HostConfig) setDefaults() error {
	if c.Path == "" {
		return fmt.Errorf("compute host: config: Path is required")
	}
	if c.StartTimeout == 0 {
		c.StartTimeout = 30 * time.Second
	}
	if c.StartTimeout < 0 {
		return fmt.Errorf("compute host: config: StartTimeout %v is negative", c.StartTimeout)
	}
	if c.MaxRestarts == 0 {
		c.MaxRestarts = 3
	}
	if c.MaxRestarts < 0 {
		c.MaxRestarts = 0
	}
	if c.StderrLines <= 0 {
		c.StderrLines = 64
	}
	if c.SHA256 == "" {
		b, err := os.ReadFile(c.Path + ".sha256")
		switch {
		case err == nil:
			if f := strings.Fields(string(b)); len(f) > 0 {
				c.SHA256 = f[0]
			} else {
				return fmt.Errorf("compute host: config: %s.sha256 is empty", c.Path)
			}
		case !errors.Is(err, os.ErrNotExist):
			return fmt.Errorf("compute host: config: read %s.sha256: %w", c.Path, err)
		}
	}
	if c.SHA256 != "" {
		if sum, err := hex.DecodeString(c.SHA256); err != nil || len(sum) != sha256.Size {
			return fmt.Errorf("compute host: config: SHA256 %q of %s: want 64 hex digits", c.SHA256, c.Path)
		}
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// Host runs a backend plugin as a child process and is itself a Backend.
// It supervises the process: a crash during a call becomes a *CrashError
// (wrapping ErrPluginCrashed) with the plugin's stderr tail and exit status,
// and the next call restarts the plugin. Sessions and caches die with the
// process that held them: calls on them return ErrPluginCrashed and the
// caller loads again. A Host is safe for concurrent use.
type Host struct {
	cfg    HostConfig
	logger *slog.Logger

	mu       sync.Mutex
	proc     *hostProcess
	gen      uint64 // generation of the newest process
	restarts int    // consecutive restarts without a successful call
	closed   bool
}

// hostProcess is one plugin process.
type hostProcess struct {
	gen     uint64
	client  *plugin.Client
	cmd     *exec.Cmd
	backend Backend
	stderr  *lineRing
	pid     int

	once    sync.Once // reports the crash once
	crashed bool      // guarded by Host.mu
}

var _ Backend = (*Host)(nil)

// NewHost starts the plugin and waits for its handshake.
func NewHost(cfg HostConfig) (*Host, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	h := &Host{cfg: cfg, logger: cfg.Logger.With("plugin_path", cfg.Path)}
	h.mu.Lock()
	defer h.mu.Unlock()
	p, err := h.start()
	if err != nil {
		return nil, err
	}
	h.proc = p
	return h, nil
}

// start launches a new plugin process; h.mu is held.
func (h *Host) start() (*hostProcess, error) {
	h.gen++
	ring := newLineRing(h.cfg.StderrLines)
	ring.forward = func(line string) { logPluginLine(h.logger, line) }
	cmd := exec.Command(h.cfg.Path, h.cfg.Args...)
	cmd.Env = append(os.Environ(), h.cfg.Env...)
	dieWithParent(cmd)
	var secure *plugin.SecureConfig
	if h.cfg.SHA256 != "" {
		sum, _ := hex.DecodeString(h.cfg.SHA256) // checked in setDefaults
		secure = &plugin.SecureConfig{Checksum: sum, Hash: sha256.New()}
	}
	client := plugin.NewClient(&plugin.ClientConfig{
		SecureConfig:     secure,
		HandshakeConfig:  Handshake,
		VersionedPlugins: PluginSets(nil),
		Cmd:              cmd,
		SkipHostEnv:      true, // cmd.Env already holds it, with ours last so ours win
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		AutoMTLS:         true,
		StartTimeout:     h.cfg.StartTimeout,
		Stderr:           ring.writer(),
		SyncStderr:       ring.writer(),
		SyncStdout:       ring.writer(),
		GRPCDialOptions:  dialOptions(),
		Logger: hclog.New(&hclog.LoggerOptions{
			Name:   "compute-plugin",
			Level:  hclog.Info,
			Output: &slogWriter{logger: h.logger},
		}),
	})
	p := &hostProcess{gen: h.gen, client: client, cmd: cmd, stderr: ring}
	fail := func(err error) (*hostProcess, error) {
		client.Kill()
		ce := &CrashError{Op: "start", Path: h.cfg.Path, ExitStatus: exitStatus(cmd), StderrTail: ring.Tail(), Err: err}
		if cmd.Process != nil {
			ce.PID = cmd.Process.Pid
		}
		return nil, ce
	}
	rpc, err := client.Client()
	if errors.Is(err, plugin.ErrChecksumsDoNotMatch) {
		client.Kill()
		sum, _, serr := FileSHA256(h.cfg.Path)
		if serr != nil {
			sum = "unreadable (" + serr.Error() + ")"
		}
		return nil, fmt.Errorf("start plugin %s: %w: the file's sha256 is %s, pinned %s (HostConfig.SHA256 or %s.sha256): rebuild it with `make plugins` or fix the pin",
			h.cfg.Path, ErrChecksum, sum, h.cfg.SHA256, h.cfg.Path)
	}
	if err != nil {
		return fail(err)
	}
	raw, err := rpc.Dispense(PluginName)
	if err != nil {
		return fail(err)
	}
	b, ok := raw.(Backend)
	if !ok {
		return fail(fmt.Errorf("plugin dispensed %T, not a compute.Backend", raw))
	}
	p.backend = b
	if rc := client.ReattachConfig(); rc != nil {
		p.pid = rc.Pid
	}
	h.logger.Info("compute plugin started", "pid", p.pid, "generation", p.gen)
	return p, nil
}

// acquire returns a live plugin process, restarting a dead one.
func (h *Host) acquire(ctx context.Context) (*hostProcess, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return nil, fmt.Errorf("compute host: closed: %w", ErrFailedPrecondition)
	}
	if h.proc != nil && !h.proc.client.Exited() {
		return h.proc, nil
	}
	if old := h.proc; old != nil {
		if !old.crashed {
			old.crashed = true
			h.logger.Warn("compute plugin exited between calls", "pid", old.pid, "exit", exitStatus(old.cmd),
				"stderr_tail", strings.Join(lastN(old.stderr.Tail(), 8), "\n"))
		}
		old.client.Kill()
		h.proc = nil
	}
	if h.restarts >= h.cfg.MaxRestarts {
		return nil, fmt.Errorf("compute host: plugin %s crashed %d times in a row; not restarting: %w",
			h.cfg.Path, h.restarts+1, ErrPluginCrashed)
	}
	// Back off a little so that a plugin that dies on every start does not spin.
	if h.restarts > 0 {
		delay := min(50*time.Millisecond<<(h.restarts-1), 2*time.Second)
		select {
		case <-time.After(delay):
		case <-ctx.Done():
			return nil, fmt.Errorf("compute host: restart: %w", ctx.Err())
		}
	}
	h.restarts++
	p, err := h.start()
	if err != nil {
		return nil, err
	}
	h.logger.Warn("compute plugin restarted", "pid", p.pid, "generation", p.gen, "restarts", h.restarts)
	h.proc = p
	return p, nil
}

func (h *Host) succeeded() {
	h.mu.Lock()
	h.restarts = 0
	h.mu.Unlock()
}

// crashWait bounds how long a failed call waits for the process to be seen
// as exited: go-plugin notices an exit within ~10 ms.
const crashWait = 500 * time.Millisecond

// check turns a failed call's error into a *CrashError when the plugin died.
func (h *Host) check(ctx context.Context, op string, p *hostProcess, err error) error {
	if err == nil {
		h.succeeded()
		return nil
	}
	if ctx.Err() != nil && !p.client.Exited() {
		return err
	}
	unreachable := errors.Is(err, ErrPluginCrashed)
	exited := p.client.Exited()
	if unreachable && !exited {
		deadline := time.Now().Add(crashWait)
		for !exited && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
			exited = p.client.Exited()
		}
	}
	if !exited && !unreachable {
		return err // an ordinary error from a live plugin
	}
	status := "unreachable; killed"
	if exited {
		status = exitStatus(p.cmd)
	} else {
		// Alive but its connection is gone: end it so the next call restarts.
		p.client.Kill()
	}
	ce := &CrashError{Op: op, Path: h.cfg.Path, PID: p.pid, ExitStatus: status, StderrTail: p.stderr.Tail(), Err: err}
	h.mu.Lock()
	if !p.crashed {
		p.crashed = true
		h.logger.Error("compute plugin crashed", "op", op, "pid", p.pid, "exit", status,
			"stderr_tail", strings.Join(lastN(ce.StderrTail, 8), "\n"))
	}
	h.mu.Unlock()
	return ce
}

// Session ids handed out by a Host carry the plugin generation that owns
// them ("<gen>:<plugin session>"), so that a session of a dead plugin is
// recognised instead of being sent to its successor.
func (h *Host) sessionFor(op string, p *hostProcess, session string) (string, error) {
	genStr, id, ok := strings.Cut(session, ":")
	gen, err := strconv.ParseUint(genStr, 10, 64)
	if !ok || err != nil {
		return "", fmt.Errorf("compute %s: session %q: not issued by this host: %w", op, session, ErrNotFound)
	}
	if gen != p.gen {
		return "", &CrashError{Op: op, Path: h.cfg.Path, Err: fmt.Errorf(
			"session %q belonged to plugin generation %d, which is gone (now %d): load again", session, gen, p.gen)}
	}
	return id, nil
}

// Describe implements Backend.
func (h *Host) Describe(ctx context.Context) (Description, error) {
	p, err := h.acquire(ctx)
	if err != nil {
		return Description{}, err
	}
	d, err := p.backend.Describe(ctx)
	return d, h.check(ctx, "describe", p, err)
}

// Train implements Backend.
func (h *Host) Train(ctx context.Context, req TrainRequest, progress func(TrainProgress) error) (TrainResult, error) {
	p, err := h.acquire(ctx)
	if err != nil {
		return TrainResult{}, err
	}
	r, err := p.backend.Train(ctx, req, progress)
	return r, h.check(ctx, "train", p, err)
}

// Load implements Backend.
func (h *Host) Load(ctx context.Context, req LoadRequest) (LoadResult, error) {
	p, err := h.acquire(ctx)
	if err != nil {
		return LoadResult{}, err
	}
	r, err := p.backend.Load(ctx, req)
	if err = h.check(ctx, "load", p, err); err != nil {
		return LoadResult{}, err
	}
	return LoadResult{Session: strconv.FormatUint(p.gen, 10) + ":" + r.Session}, nil
}

// Prefill implements Backend.
func (h *Host) Prefill(ctx context.Context, req PrefillRequest) (ForwardResult, error) {
	p, err := h.acquire(ctx)
	if err != nil {
		return ForwardResult{}, err
	}
	if req.Session, err = h.sessionFor("prefill", p, req.Session); err != nil {
		return ForwardResult{}, err
	}
	r, err := p.backend.Prefill(ctx, req)
	return r, h.check(ctx, "prefill", p, err)
}

// Decode implements Backend.
func (h *Host) Decode(ctx context.Context, req DecodeRequest) (ForwardResult, error) {
	p, err := h.acquire(ctx)
	if err != nil {
		return ForwardResult{}, err
	}
	if req.Session, err = h.sessionFor("decode", p, req.Session); err != nil {
		return ForwardResult{}, err
	}
	r, err := p.backend.Decode(ctx, req)
	return r, h.check(ctx, "decode", p, err)
}

// Generate implements Backend.
func (h *Host) Generate(ctx context.Context, req GenerateRequest) (GenerateResult, error) {
	p, err := h.acquire(ctx)
	if err != nil {
		return GenerateResult{}, err
	}
	if req.Session, err = h.sessionFor("generate", p, req.Session); err != nil {
		return GenerateResult{}, err
	}
	r, err := p.backend.Generate(ctx, req)
	return r, h.check(ctx, "generate", p, err)
}

// ReleaseCache implements Backend. Releasing a cache of a crashed plugin
// succeeds: it is already gone.
func (h *Host) ReleaseCache(ctx context.Context, session, cacheID string) error {
	p, err := h.acquire(ctx)
	if err != nil {
		return err
	}
	id, err := h.sessionFor("release cache", p, session)
	if errors.Is(err, ErrPluginCrashed) {
		return nil
	}
	if err != nil {
		return err
	}
	return h.check(ctx, "release cache", p, p.backend.ReleaseCache(ctx, id, cacheID))
}

// Unload implements Backend. Unloading a session of a crashed plugin
// succeeds: it is already gone.
func (h *Host) Unload(ctx context.Context, session string) error {
	p, err := h.acquire(ctx)
	if err != nil {
		return err
	}
	id, err := h.sessionFor("unload", p, session)
	if errors.Is(err, ErrPluginCrashed) {
		return nil
	}
	if err != nil {
		return err
	}
	return h.check(ctx, "unload", p, p.backend.Unload(ctx, id))
}

// PID returns the process id of the current plugin process, 0 if none runs.
// Tests use it to kill the plugin.
func (h *Host) PID() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.proc == nil || h.proc.client.Exited() {
		return 0
	}
	return h.proc.pid
}

// StderrTail returns the last lines the current (or last) plugin process
// wrote to stderr.
func (h *Host) StderrTail() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.proc == nil {
		return nil
	}
	return h.proc.stderr.Tail()
}

// Close ends the plugin process (gracefully, then by force after 2 s) and
// makes every later call fail.
func (h *Host) Close() error {
	h.mu.Lock()
	p := h.proc
	h.proc = nil
	h.closed = true
	h.mu.Unlock()
	if p != nil {
		p.client.Kill()
	}
	return nil
}

// exitStatus describes how cmd ended; "" while it runs. Read it only after
// the go-plugin client reports Exited (which orders it after cmd.Wait).
func exitStatus(cmd *exec.Cmd) string {
	if cmd == nil || cmd.ProcessState == nil {
		return ""
	}
	return cmd.ProcessState.String()
}

func lastN(lines []string, n int) []string {
	if len(lines) > n {
		return lines[len(lines)-n:]
	}
	return lines
}

// lineRing keeps the last lines written by any of its writers, and hands
// each line to forward when it is set.
type lineRing struct {
	mu      sync.Mutex
	lines   []string
	max     int
	forward func(line string)
}

func newLineRing(n int) *lineRing { return &lineRing{max: n} }

// writer returns an io.Writer that splits its input into lines for the ring;
// each writer assembles its own partial line.
func (r *lineRing) writer() io.Writer { return &lineWriter{ring: r} }

func (r *lineRing) add(line string) {
	if r.forward != nil {
		r.forward(line)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.lines) == r.max {
		copy(r.lines, r.lines[1:])
		r.lines = r.lines[:r.max-1]
	}
	r.lines = append(r.lines, line)
}

// Tail returns a copy of the kept lines, oldest first.
func (r *lineRing) Tail() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.lines...)
}

type lineWriter struct {
	mu   sync.Mutex
	ring *lineRing
	buf  []byte
}

// maxLine bounds a line without a newline (a runaway write).
const maxLine = 16 << 10

func (w *lineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			break
		}
		w.ring.add(strings.TrimRight(string(w.buf[:i]), "\r"))
		w.buf = w.buf[i+1:]
	}
	if len(w.buf) > maxLine {
		w.ring.add(string(w.buf))
		w.buf = nil
	}
	return len(p), nil
}

// logPluginLine logs one line of the plugin's stderr on the host's logger:
// a log/slog JSON record ({"level": "INFO", "msg": ...}, what Go plugins
// write) at its own level with its message and fields, anything else at
// Info as it is. Without it the plugin's own logs (checkpoints saved,
// stage summaries) would only surface in a crash's stderr tail.
func logPluginLine(logger *slog.Logger, line string) {
	var rec map[string]any
	if json.Unmarshal([]byte(line), &rec) != nil || rec["msg"] == nil {
		logger.Info("plugin stderr", "line", line)
		return
	}
	var level slog.Level
	if lv, ok := rec["level"].(string); !ok || level.UnmarshalText([]byte(lv)) != nil {
		level = slog.LevelInfo
	}
	msg, _ := rec["msg"].(string)
	attrs := make([]slog.Attr, 0, len(rec))
	for k, v := range rec {
		if k != "time" && k != "level" && k != "msg" {
			attrs = append(attrs, slog.Any("plugin."+k, v))
		}
	}
	slices.SortFunc(attrs, func(a, b slog.Attr) int { return strings.Compare(a.Key, b.Key) })
	logger.LogAttrs(context.Background(), level, "plugin: "+msg, attrs...)
}

// slogWriter forwards go-plugin's hclog output, one line per record.
type slogWriter struct {
	logger *slog.Logger
}

func (w *slogWriter) Write(p []byte) (int, error) {
	for _, line := range strings.Split(strings.TrimRight(string(p), "\n"), "\n") {
		if line != "" {
			w.logger.Info(line)
		}
	}
	return len(p), nil
}
