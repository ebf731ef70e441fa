package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// TestComposeFileIsValid validates compose.yaml with `docker compose config`
// where the compose plugin exists, and always structurally: the services
// the production layout needs, their images or builds, and the groundmesh
// environment every groundmesh container gets.
func TestComposeFileIsValid(t *testing.T) {
	if _, err := exec.LookPath("docker"); err == nil {
		if exec.Command("docker", "compose", "version").Run() == nil {
			out, err := exec.Command("docker", "compose", "-f", "../../compose.yaml", "config", "-q").CombinedOutput()
			if err != nil {
				t.Fatalf("docker compose config: %v\n%s", err, out)
			}
		}
	}
	b, err := os.ReadFile("../../compose.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Services map[string]struct {
			Image       string            `yaml:"image"`
			Build       any               `yaml:"build"`
			Command     []string          `yaml:"command"`
			Environment map[string]string `yaml:"environment"`
			Volumes     []string          `yaml:"volumes"`
		} `yaml:"services"`
	}
	if err := yaml.Unmarshal(b, &f); err != nil {
		t.Fatalf("compose.yaml: %v", err)
	}
	for _, name := range []string{"postgres", "temporal", "temporal-ui", "jaeger", "prometheus", "worker", "gateway"} {
		svc, ok := f.Services[name]
		if !ok {
			t.Errorf("compose.yaml lacks service %q", name)
			continue
		}
		if svc.Image == "" && svc.Build == nil {
			t.Errorf("service %q has neither image nor build", name)
		}
	}
	for _, name := range []string{"worker", "gateway"} {
		env := f.Services[name].Environment
		for _, k := range []string{"DATABASE_URL", "TEMPORAL_ADDRESS", "OTEL_EXPORTER_OTLP_ENDPOINT", "GROUNDMESH_DATA_DIR"} {
			if env[k] == "" {
				t.Errorf("service %q: %s is not set", name, k)
			}
		}
		if len(f.Services[name].Command) < 2 || f.Services[name].Command[0] != "groundmesh" {
			t.Errorf("service %q: command %v does not run groundmesh", name, f.Services[name].Command)
		}
	}

	// Prometheus scrapes the ports the gateway and the workers serve
	// GET /metrics on, from a config file that compose mounts.
	workerMetrics := ""
	for i, a := range f.Services["worker"].Command {
		if a == "--metrics" && i+1 < len(f.Services["worker"].Command) {
			workerMetrics = f.Services["worker"].Command[i+1]
		}
	}
	gatewayAddr := ""
	for i, a := range f.Services["gateway"].Command {
		if a == "--addr" && i+1 < len(f.Services["gateway"].Command) {
			gatewayAddr = f.Services["gateway"].Command[i+1]
		}
	}
	if workerMetrics == "" || gatewayAddr == "" {
		t.Fatalf("worker --metrics %q, gateway --addr %q: both must be set", workerMetrics, gatewayAddr)
	}
	var mount string
	for _, v := range f.Services["prometheus"].Volumes {
		if strings.HasSuffix(strings.TrimSuffix(v, ":ro"), ":/etc/prometheus/prometheus.yml") {
			mount = strings.SplitN(v, ":", 2)[0]
		}
	}
	pb, err := os.ReadFile(filepath.Join("../..", mount))
	if mount == "" || err != nil {
		t.Fatalf("prometheus config %q: %v", mount, err)
	}
	var prom struct {
		ScrapeConfigs []struct {
			JobName       string `yaml:"job_name"`
			StaticConfigs []struct {
				Targets []string `yaml:"targets"`
			} `yaml:"static_configs"`
			DNSSDConfigs []struct {
				Names []string `yaml:"names"`
				Port  int      `yaml:"port"`
			} `yaml:"dns_sd_configs"`
		} `yaml:"scrape_configs"`
	}
	if err := yaml.Unmarshal(pb, &prom); err != nil {
		t.Fatalf("%s: %v", mount, err)
	}
	var targets []string
	for _, sc := range prom.ScrapeConfigs {
		for _, st := range sc.StaticConfigs {
			targets = append(targets, st.Targets...)
		}
		for _, d := range sc.DNSSDConfigs {
			for _, n := range d.Names {
				targets = append(targets, fmt.Sprintf("%s:%d", n, d.Port))
			}
		}
	}
	for _, want := range []string{"gateway" + gatewayAddr, "worker" + workerMetrics} {
		if !slices.Contains(targets, want) {
			t.Errorf("prometheus scrapes %v, not %s", targets, want)
		}
	}
}
