package main

import (
	"os"
	"os/exec"
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
		} `yaml:"services"`
	}
	if err := yaml.Unmarshal(b, &f); err != nil {
		t.Fatalf("compose.yaml: %v", err)
	}
	for _, name := range []string{"postgres", "temporal", "temporal-ui", "jaeger", "worker", "gateway"} {
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
}
