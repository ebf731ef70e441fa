package probe

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/groundmesh/groundmesh/plugins/gomlx"
)

// knobs are the GROUNDMESH_PROBE_* settings (the package doc lists them);
// a zero field means the probe's own default.
type knobs struct {
	Steps  int // GROUNDMESH_PROBE_STEPS
	Images int // GROUNDMESH_PROBE_IMAGES
	Log    bool

	// The backend: a plugin binary, or the in-process one's engine and
	// the settings its plugin main would read.
	Plugin       string
	Engine       string
	GoMLXOptions string // GROUNDMESH_GOMLX_OPTIONS, else GOMLX_BACKEND's "go:" options
	Device       string // GROUNDMESH_LIBTORCH_DEVICE, libtorch only
	Threads      int    // GROUNDMESH_LIBTORCH_THREADS, libtorch only

	// The grounder probe's model config and train request.
	Width     int
	CellWords bool
	NoNorm    bool
	Stem      int
	Sigma     float64
	TextDepth int
	Grid      *int // nil: the default config's grounder_grid_depth
	Batch     int
	LR        float64
	Objective string

	// The grounder probe's items and scoring.
	Colour   bool
	Bare     bool
	TrainAcc bool
	Dump     string
}

// readKnobs reads the knobs through getenv (os.Getenv in the tests) and
// refuses a value that does not parse, naming its variable.
func readKnobs(getenv func(string) string) (knobs, error) {
	k := knobs{
		Log: getenv("GROUNDMESH_PROBE_LOG") != "", Plugin: getenv("GROUNDMESH_PROBE_PLUGIN"),
		Engine: getenv("GROUNDMESH_PROBE_ENGINE"), GoMLXOptions: getenv("GROUNDMESH_GOMLX_OPTIONS"),
		CellWords: getenv("GROUNDMESH_PROBE_CELLWORDS") != "", NoNorm: getenv("GROUNDMESH_PROBE_NONORM") != "",
		Objective: getenv("GROUNDMESH_PROBE_OBJECTIVE"),
		Colour:    getenv("GROUNDMESH_PROBE_COLOUR") != "", Bare: getenv("GROUNDMESH_PROBE_BARE") != "",
		TrainAcc: getenv("GROUNDMESH_PROBE_TRAINACC") != "", Dump: getenv("GROUNDMESH_PROBE_DUMP"),
	}
	var errs []error
	count := func(name string, dst *int, zeroOK bool) {
		v := getenv(name)
		if v == "" {
			return
		}
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 || n == 0 && !zeroOK {
			want := "a positive integer"
			if zeroOK {
				want = "an integer >= 0"
			}
			errs = append(errs, fmt.Errorf("%s=%q: want %s", name, v, want))
			return
		}
		*dst = n
	}
	number := func(name string, dst *float64) {
		v := getenv(name)
		if v == "" {
			return
		}
		f, err := strconv.ParseFloat(v, 64)
		if err != nil || !(f > 0) {
			errs = append(errs, fmt.Errorf("%s=%q: want a positive number", name, v))
			return
		}
		*dst = f
	}
	count("GROUNDMESH_PROBE_STEPS", &k.Steps, false)
	count("GROUNDMESH_PROBE_IMAGES", &k.Images, false)
	count("GROUNDMESH_PROBE_WIDTH", &k.Width, false)
	count("GROUNDMESH_PROBE_STEM", &k.Stem, true)
	count("GROUNDMESH_PROBE_TEXTDEPTH", &k.TextDepth, true)
	count("GROUNDMESH_PROBE_BATCH", &k.Batch, false)
	number("GROUNDMESH_PROBE_SIGMA", &k.Sigma)
	number("GROUNDMESH_PROBE_LR", &k.LR)
	if getenv("GROUNDMESH_PROBE_GRID") != "" {
		k.Grid = new(int)
		count("GROUNDMESH_PROBE_GRID", k.Grid, true)
	}
	switch k.Engine {
	case "", gomlx.EngineGoMLX, gomlx.EngineLibtorch:
	default:
		errs = append(errs, fmt.Errorf("GROUNDMESH_PROBE_ENGINE=%q: want %s or %s", k.Engine, gomlx.EngineGoMLX, gomlx.EngineLibtorch))
	}
	if k.Plugin != "" && k.Engine != "" {
		// A plugin binary is built for one engine; naming another here
		// would be silently ignored.
		errs = append(errs, errors.New("GROUNDMESH_PROBE_PLUGIN and GROUNDMESH_PROBE_ENGINE both set: the plugin binary decides the engine"))
	}
	if v, ok := strings.CutPrefix(getenv("GOMLX_BACKEND"), "go:"); ok && k.GoMLXOptions == "" {
		// As the plugin's main reads it (the Makefile exports it).
		k.GoMLXOptions = v
	}
	if k.Engine == gomlx.EngineLibtorch {
		k.Device = getenv("GROUNDMESH_LIBTORCH_DEVICE")
		count("GROUNDMESH_LIBTORCH_THREADS", &k.Threads, true)
	}
	return k, errors.Join(errs...)
}

// steps is Steps, or def.
func (k knobs) steps(def int) int {
	if k.Steps > 0 {
		return k.Steps
	}
	return def
}

// images is Images, or the demo's 6,000 scene images.
func (k knobs) images() int {
	if k.Images > 0 {
		return k.Images
	}
	return 6000
}
